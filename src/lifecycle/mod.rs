//! Where the process is in its life, and the cheap futures sessions wait on for it.
//!
//! A leaf: it imports nothing else of the crate, so every subsystem may use it (as ztunnel's
//! `drain.rs`). The daemon moves the phase forward; listeners, sessions and the admin endpoints
//! read it.

pub mod quiet;

/// Where the process is in its life. Ordered: each phase follows the one before.
///
/// As an NLB wants it: SIGTERM makes the relay report not-ready while it keeps accepting
/// (`Announcing`), then it stops accepting and lets connections finish (`Stopped`), then closes
/// what is still open at the drain deadline (`Closing`), then exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Running,
    /// Draining, still accepting: not ready, so the load balancer stops sending.
    Announcing,
    /// Listeners closed; established connections run on.
    Stopped,
    /// Past the drain deadline: connections are being closed.
    Closing,
    Exit,
}
