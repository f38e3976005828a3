//! The client side of a connection, from accept to the relay: the listener's accept loop, the
//! preamble (PROXY header and ClientHello peek), access rules, limits, the route to a pool, and
//! the session that walks a connection through those stages top to bottom; while it relays, its
//! progress and stream timeouts, and its entry in the registry of relaying connections.

pub mod access;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod preamble;
pub mod progress;
pub mod registry;
pub mod route;
pub mod session;

use std::sync::Arc;

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
    /// The relaying connections: listed by the admin API, closed through it by the admin and
    /// at the drain deadline.
    pub registry: Arc<Registry>,
    /// Moved forward by the daemon.
    pub phase: watch::Sender<Phase>,
}

impl Shared {
    pub fn new(limit: Arc<Limit>, access_log: AccessLog, registry: Arc<Registry>) -> Shared {
        Shared {
            limit,
            access_log,
            registry,
            phase: watch::Sender::new(Phase::Running),
        }
    }
}
