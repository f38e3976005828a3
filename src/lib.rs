//! l4relay: a layer-4 TCP relay daemon.
//!
//! The subsystems follow one connection's path, left to right:
//!
//! ```text
//! inbound ──────────────────────────────▶ upstream ─────────────▶ relay ──────▶ observe
//! accept, PROXY header, access rules,     pool picks a server,    splice |      access-log line,
//! limits, TLS terminate, SNI route        connect + retry,        copy | TLS    counters published
//!   (parsers: protocol; TLS: tls)           PROXY out, TLS originate
//! ```
//!
//! | module | owns |
//! |---|---|
//! | [`inbound`] | the accept loop (`listener`), the `session` that walks a connection through the path top to bottom, the `preamble` (PROXY header and ClientHello peek), `access` rules, `limits`, the `route` fallback, the `progress` a relaying connection watches (its stream timeouts), the `registry` of relaying connections, the listener's metrics |
//! | [`protocol`] | wire formats without I/O: `proxy_protocol` (v1, v2, encode), `sni` (ClientHello), `vpce` (the VPC endpoint ID), `name_table` (server-name patterns) |
//! | [`upstream`] | `pool` (servers, `balance`, state), `connect` (timeout, retries), `health` checks and `dns` re-resolution in the background, the pool's metrics |
//! | [`tls`] | rustls: `certificates`, `expiry`, `server` (terminate), `client` (originate), `failure` names |
//! | [`relay`] | moving bytes both ways with half-close (`direction`), the splice `pipe` pool, copy `buffer`s, TLS `stream`s, socket options (`sockopt`) |
//! | [`observe`] | Prometheus names and recorder (`telemetry`), the `access_log`, diagnostics (`logging`) |
//! | [`lifecycle`] | the process `Phase` and `quiet` futures for rare events; a leaf |
//! | [`config`] | the TOML file, one module per section, into validated settings; `check` |
//! | [`daemon`] | workers, signals, reload, drain, systemd `notify`, worker `heartbeat`s, the `admin` HTTP endpoints (with `connections` and the `status_page`) |
//!
//! Layering (checked by a unit test, `layers`): `protocol` and `lifecycle` import nothing of the
//! crate; the runtime subsystems import only those below them (`inbound` → `upstream` → `tls` →
//! `relay`, with `observe` beside them and knowing none of them); each owns its small settings
//! types, and `config` builds them without any of them knowing `config`; `daemon` is the only
//! module that knows every other.
//! `docs/` holds the user's reference; the bench tool is its own crate.

pub mod config;
pub mod daemon;
pub mod inbound;
pub mod lifecycle;
pub mod observe;
pub mod protocol;
pub mod relay;
pub mod tls;
pub mod upstream;

#[cfg(test)]
mod layers;
