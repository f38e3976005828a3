//! l4relay: a layer-4 TCP relay daemon.
//!
//! One connection's path, one module a stage:
//!
//! ```text
//! accept (listener) ─▶ access rules ─▶ route ─▶ pool picks a server (pool)
//!   ─▶ connect, retry another (connect) ─▶ relay both ways (relay: splice | copy | TLS)
//!   ─▶ close: one access-log line (access_log)
//! ```
//!
//! `session` walks a connection through those stages top to bottom. Around it: `config` (load,
//! validate, `check`), `daemon` (workers, signals, drain, reload), `limits`, `notify` (systemd)
//! and `sockopt`; in the background, per pool, `health` (active checks) and `dns` (re-resolution
//! by TTL) keep the pool's servers and their states current. `tls` terminates TLS on listeners
//! that have certificates (after the PROXY header, before routing) and originates it to pools
//! that ask for it (after the PROXY header out).

pub mod access_log;
pub mod admin;
pub mod config;
pub mod connect;
pub mod daemon;
pub mod dns;
pub mod handshake;
pub mod health;
pub mod heartbeat;
pub mod limits;
pub mod listener;
pub mod logging;
pub mod notify;
pub mod pool;
pub mod proxy_protocol;
pub mod quiet;
pub mod relay;
pub mod route;
pub mod session;
pub mod sni;
pub mod sockopt;
pub mod telemetry;
pub mod tls;
