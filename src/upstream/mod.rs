//! The server side of a connection: pools of servers and how one is picked (balance, health,
//! weights, limits), connecting with a timeout and retries, and the background work that keeps a
//! pool current (active health checks, DNS re-resolution by TTL). Where connections leave from
//! (`egress`: source addresses and their ports) and what the relay's own resources running out
//! means (`local`: never the server's fault) are theirs too.

pub mod connect;
pub mod dns;
pub mod egress;
pub mod health;
pub mod local;
pub mod metrics;
pub mod pool;
