//! Active health checks: one task per server, on the control thread, for as long as the server
//! is in its pool and the pool runs.
//!
//! Each task runs a check (`check`: a TCP connect, a TLS handshake, or an HTTP exchange over
//! either), hands the result to the pool, which applies rise and fall (`pool::state`), then
//! waits `interval`, or `fast_interval` while a change is being confirmed, plus a random part of
//! `jitter`. The first check runs at once, so a starting relay knows its servers within one
//! check timeout. Passive detection (failed live connects) lives in the pool; it only needs
//! these checks to bring a server back.
//!
//! Checks leave from the pool's source addresses in turn (`egress`), so an address missing from
//! an upstream's allowlist shows by name; a check that could not run for want of a local
//! resource (descriptors, ports) is shown, logged once, and leaves the server's state alone.

mod check;
mod http;
pub mod tls;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::upstream::pool::{Pool, Server};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckKind {
    /// A TCP connect.
    Tcp,
    /// A TLS handshake.
    Tls,
    /// An HTTP request, over TCP or TLS.
    Http,
}

impl CheckKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::Tcp => "tcp",
            CheckKind::Tls => "tls",
            CheckKind::Http => "http",
        }
    }
}

/// A server's state before its first check has answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitState {
    /// No traffic until the first good check.
    Down,
    /// Traffic at once; `fall` failed checks take it down.
    Up,
}

/// `[pool.health]`.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    pub check: CheckKind,
    pub interval: Duration,
    /// The interval while a server is changing state (a failure while up, a success while
    /// down), so a change is confirmed sooner.
    pub fast_interval: Duration,
    /// For the whole check: connect, handshake, request and response.
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// Up to this much is added to each interval at random, so checks of many servers spread.
    pub jitter: Duration,
    pub init_state: InitState,
    /// Consecutive failed connects in live traffic that mark a server down; 0: off.
    pub passive_fall: u32,
    /// Set for `check = "tls"` and for HTTP checks over TLS.
    pub tls: Option<TlsCheck>,
    /// Set for `check = "http"`.
    pub http: Option<HttpCheck>,
}

#[derive(Debug, Clone)]
pub struct TlsCheck {
    /// Server name sent and verified; None: the server's host name (none for an IP address).
    pub sni: Option<String>,
    /// Verify the certificate chain and name (false: any certificate is accepted).
    pub verify: bool,
    /// PEM CA certificates to verify against instead of the system roots.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct HttpCheck {
    pub method: String,
    pub path: String,
    /// The Host header; None: the server's host name (its address for an IP server).
    pub host: Option<String>,
    /// Statuses that mean up.
    pub statuses: Vec<StatusRange>,
    /// A substring the response must contain (head or first 64 KiB of body).
    pub body: Option<String>,
    /// Statuses that mean "refused by an upstream firewall" (down, with that reason).
    pub firewall_statuses: Vec<StatusRange>,
}

/// HTTP statuses `low..=high`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRange {
    pub low: u16,
    pub high: u16,
}

impl StatusRange {
    pub fn contains(self, status: u16) -> bool {
        (self.low..=self.high).contains(&status)
    }
}

impl std::fmt::Display for StatusRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.low == self.high {
            write!(f, "{}", self.low)
        } else {
            write!(f, "{}-{}", self.low, self.high)
        }
    }
}

/// Starts checking `server` on the current runtime; the task ends when the pool stops or the
/// server leaves it.
pub fn spawn(pool: Arc<Pool>, server: Arc<Server>) {
    tokio::spawn(run(pool, server));
}

async fn run(pool: Arc<Pool>, server: Arc<Server>) {
    let Some(config) = pool.config.health.clone() else {
        return;
    };
    let mut stop = pool.stopped();
    let mut local_logged = false;
    for round in 0u64.. {
        if *stop.borrow() || server.status().removed.is_some() {
            return;
        }
        let started = Instant::now();
        let source = server.sources.for_check(round, server.addr.ip());
        let result = tokio::select! {
            result = check::run(&pool, &server, &config, source) => result,
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        // Once per run of checks that could not run: why the server's state stands still.
        match &result {
            Err(reason) if reason.kind == crate::upstream::egress::LOCAL_CHECK => {
                if !local_logged {
                    local_logged = true;
                    tracing::warn!(pool = %pool.name, server = %server.name, address = %server.addr, "health check could not run, {}", reason.text);
                }
            }
            _ => local_logged = false,
        }
        let changing = pool.record_check(&server, source, result, started.elapsed());
        let interval = if changing {
            config.fast_interval
        } else {
            config.interval
        };
        tokio::select! {
            _ = tokio::time::sleep(interval + jitter(config.jitter)) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
    }
}

/// A random part of `max`, so the checks of many servers drift apart.
fn jitter(max: Duration) -> Duration {
    let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(fastrand::u64(0..=nanos))
}
