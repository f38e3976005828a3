//! What `/readyz` says and why: not ready while draining, while a worker is stuck, while a
//! listener's default pool has no server up, and while the process is at `max_connections`.
//!
//! The limit is the process's (`global.max_connections`), not a listener's: `/readyz` speaks for
//! the instance, and a relay whose every new client is reset should get none from its load
//! balancer. A listener at its own limit refuses only that listener's clients; taking the whole
//! instance out for it would refuse the other listeners' clients too. `/status` and
//! `l4relay_connections_active` against `l4relay_connections_limit` show those.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::daemon::State;
use crate::lifecycle::Phase;

/// The process limit as readiness sees it, with hysteresis: not ready from the moment every slot
/// is taken, ready again once at most 95 % are (`READY_AGAIN`), so that a relay hovering at the
/// limit does not flap in and out of its target group with every connection that closes.
#[derive(Default)]
pub struct Saturation(AtomicBool);

/// Ready again at this share of the limit (numerator over 20: 19/20 = 95 %).
const READY_AGAIN_TWENTIETHS: usize = 19;

impl Saturation {
    /// Whether the limit holds readiness back, given the active connections and the limit now.
    fn at_limit(&self, active: usize, max: Option<usize>) -> bool {
        let Some(max) = max else {
            self.0.store(false, Ordering::Relaxed);
            return false;
        };
        let saturated = if active >= max {
            true
        } else if active.saturating_mul(20) <= max.saturating_mul(READY_AGAIN_TWENTIETHS) {
            false
        } else {
            self.0.load(Ordering::Relaxed)
        };
        self.0.store(saturated, Ordering::Relaxed);
        saturated
    }
}

/// The most connections open at which a saturated relay is ready again.
fn ready_again_at(max: usize) -> usize {
    max.saturating_mul(READY_AGAIN_TWENTIETHS) / 20
}

/// Ready: not draining, no worker stuck, every listener's default pool has a server that may
/// take a connection, and the process not at its connection limit.
pub fn readiness(state: &State) -> Result<(), String> {
    let phase = *state.sessions.phase.borrow();
    if phase != Phase::Running {
        return Err("draining".to_string());
    }
    // New connections hashed to a stuck worker's socket would wait in its accept queue.
    if let Some((index, silent)) = state.heartbeats.stuck() {
        return Err(stuck(index, silent));
    }
    let limit = &state.sessions.limit;
    let (active, max) = (limit.active(), limit.max());
    if state.saturation.at_limit(active, max) {
        let max = max.unwrap_or(usize::MAX);
        return Err(format!(
            "at max_connections: {active} of {max} open, new clients are refused; ready again at {} or fewer",
            ready_again_at(max)
        ));
    }
    for slot in state.listeners.load().iter() {
        let settings = slot.settings.load();
        if !settings.pool.has_server_up() {
            return Err(format!(
                "listener \"{}\": pool \"{}\" has no server up",
                settings.name, settings.pool.name
            ));
        }
    }
    Ok(())
}

pub fn stuck(index: usize, silent: Duration) -> String {
    format!(
        "worker-{index} stuck: its event loop has not run for {:.1}s",
        silent.as_secs_f64()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saturation_has_hysteresis() {
        let s = Saturation::default();
        let max = Some(40);
        assert!(!s.at_limit(39, max));
        assert!(s.at_limit(40, max), "every slot taken");
        assert!(s.at_limit(41, max), "over a lowered limit");
        assert!(s.at_limit(39, max), "one free is not enough");
        assert!(!s.at_limit(38, max), "95 % of 40");
        assert!(!s.at_limit(39, max), "and stays ready below the limit");
        assert_eq!(ready_again_at(40), 38);

        // Small limits: ready again as soon as one slot is free.
        let s = Saturation::default();
        assert!(s.at_limit(1, Some(1)));
        assert!(!s.at_limit(0, Some(1)));
        assert_eq!(ready_again_at(10), 9);
        assert!(s.at_limit(10, Some(10)));
        assert!(!s.at_limit(9, Some(10)));

        // No limit, or a raised one: never saturated.
        assert!(!s.at_limit(usize::MAX - 1, None));
        assert!(s.at_limit(10, Some(10)));
        assert!(!s.at_limit(10, Some(100)));
    }
}
