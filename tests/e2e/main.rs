//! End-to-end tests: the built `l4relay` (and `l4relay-bench`) binaries as child processes,
//! driven over real sockets on loopback (or in network namespaces a test creates). One test
//! binary, one module per area, so that the suite links once; see tests/README.md for how to
//! run a part of it, and the tests that need more than cargo.

mod support;
mod support_tests;

// A connection's first moments.
mod access;
mod handshake_timeout;
mod proxy_protocol;
mod sni;
mod tls;

// Relaying, upstreams and limits.
mod dns;
mod egress;
mod egress_netns;
mod health;
mod limits;
mod local_faults;
mod pools;
mod relay;
mod upstream_side;

// The process: config, lifecycle, observability.
mod admin_safety;
mod check;
mod dashboard;
mod lifecycle;
mod logging;
mod observability;
mod platform;
mod status_page;
mod streams;

// The README's promises that had no test of their own (issue 21, item 13).
mod promises_dns;
mod promises_drain;
mod promises_observe;
mod promises_relay;
mod promises_reload;
mod promises_tls;

// Namespaces and upgrades (root), the bench tool.
mod netns;
mod upgrade;
