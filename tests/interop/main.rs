//! Interop: l4relay between the programs users run around it, started for real on loopback.
//!
//! Every other end-to-end test talks to the relay through clients and servers written in this
//! project, which agree with it because the same hands wrote both. Here the peers are HAProxy
//! (the NLB stand-in), nginx (plain, PROXY protocol and TLS upstreams), curl and
//! `openssl s_client` (TLS clients), dnsmasq and unbound (the pool's nameservers), Prometheus
//! (scraping `/metrics`) and iperf3 (bulk both ways): the Debian packages, installed by
//! `.ci/run`. A missing program fails its test with the `apt-get install` line; nothing is
//! skipped.
//!
//! One binary of its own (`cargo test --test interop`) because it needs those packages; it
//! runs in the default `cargo test` too. Each peer runs in the foreground with its own config in
//! the test's scratch directory, on ports the kernel chose, and is ended by its pid when the
//! test ends, failed or not.

#[allow(dead_code, unused_imports)]
#[path = "../e2e/support/mod.rs"]
mod support;

mod bulk;
mod certs;
mod clients;
mod dns;
mod nginx;
mod peers;
mod prometheus;
mod proxy_protocol;
mod sni_routing;
mod tls_origination;
mod tls_termination;
