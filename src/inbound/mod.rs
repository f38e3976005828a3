//! The client side of a connection, from accept to the relay: the listener's accept loop, the
//! preamble (PROXY header and ClientHello peek), access rules, limits, the route to a pool, and
//! the session that walks a connection through those stages top to bottom.

pub mod access;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod preamble;
pub mod progress;
pub mod registry;
pub mod route;
pub mod session;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::lifecycle::Phase;
use crate::observe::access_log::AccessLog;
use limits::Limit;
use registry::Registry;

/// What every listener and session of the process shares.
pub struct Shared {
    /// The process-wide connection limit (`global.max_connections`).
    pub limit: Arc<Limit>,
    pub access_log: AccessLog,
    /// The live connections, for the admin API (off without an admin listener).
    pub registry: Arc<Registry>,
    /// Moved forward by the daemon; sessions close at `Phase::Closing`.
    pub phase: watch::Sender<Phase>,
    /// `drain.close_spread` of the running config, in milliseconds: sessions still open at the
    /// drain deadline close at a random point within it.
    close_spread_ms: AtomicU64,
}

impl Shared {
    pub fn new(
        limit: Arc<Limit>,
        access_log: AccessLog,
        registry: Arc<Registry>,
        close_spread: Duration,
    ) -> Shared {
        let shared = Shared {
            limit,
            access_log,
            registry,
            phase: watch::Sender::new(Phase::Running),
            close_spread_ms: AtomicU64::new(0),
        };
        shared.set_close_spread(close_spread);
        shared
    }

    pub fn close_spread(&self) -> Duration {
        Duration::from_millis(self.close_spread_ms.load(Ordering::Relaxed))
    }

    pub fn set_close_spread(&self, spread: Duration) {
        let ms = u64::try_from(spread.as_millis()).unwrap_or(u64::MAX);
        self.close_spread_ms.store(ms, Ordering::Relaxed);
    }
}
