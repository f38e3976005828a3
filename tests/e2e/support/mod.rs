//! Test support for the end-to-end tests: the built `l4relay` binary as a child process
//! (`process`), clients and upstream servers on loopback (`net`), deterministic payloads
//! (`payload`), the access log (`log`), the admin API and its metrics (`admin`), config text
//! (`config`), a DNS server (`dns`), load-test measurements (`load`), and, for the tests
//! of a connection's first moments, PROXY headers built by hand (`proxy_header`) and clients that
//! expect to be relayed or refused (`probe`).
//!
//! Everything but `proxy_header` is re-exported here: a test module starts with
//! `use crate::support::*;`. The test binaries of their own (`tests/floods.rs`, `tests/soak.rs`)
//! include this module by path.

pub mod admin;
pub mod config;
pub mod dns;
pub mod load;
pub mod log;
pub mod net;
pub mod payload;
pub mod probe;
pub mod process;
pub mod proxy_header;

pub use admin::*;
pub use config::*;
pub use dns::*;
pub use load::*;
pub use log::*;
pub use net::*;
pub use payload::*;
pub use probe::*;
pub use process::*;
