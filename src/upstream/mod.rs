//! The server side of a connection: pools of servers and how one is picked (balance, health,
//! weights, limits), connecting with a timeout and retries, and the background work that keeps a
//! pool current (active health checks, DNS re-resolution by TTL).

pub mod connect;
pub mod dns;
pub mod health;
pub mod metrics;
pub mod pool;
