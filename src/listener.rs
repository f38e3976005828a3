//! Listeners: the accept loops, one per listener per worker thread.
//!
//! Every worker owns its own SO_REUSEPORT socket for each listener address, so accepting takes no
//! lock and the kernel spreads connections across workers. A `ListenerSlot` is what outlives a
//! reload: the address, the connection count against the listener's limit, and the current
//! settings, swapped atomically when a new config is loaded. An accept loop reads the settings
//! once per connection; a connection keeps the settings it started with.
//!
//! Accept errors that mean "out of resources" (EMFILE, ENFILE, ENOBUFS, ENOMEM) pause the loop
//! with a growing backoff: the backlog holds the waiting connections, the loop never exits and
//! never spins, and accepting resumes by itself once descriptors are free again.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::ListenerConfig;
use crate::daemon::Shared;
use crate::limits::{ClientLimits, Limit};
use crate::pool::Pool;
use crate::relay;
use crate::session::{self, End, Session};
use crate::telemetry::ListenerMetrics;

/// A listener's settings for one config generation.
pub struct ListenerSettings {
    pub name: Arc<str>,
    pub config: ListenerConfig,
    /// The default pool.
    pub pool: Arc<Pool>,
    /// Every pool of this generation, for SNI routes (indexed like `Config::pools`).
    pub pools: Vec<Arc<Pool>>,
    pub relay: relay::Settings,
    pub metrics: ListenerMetrics,
}

/// A listening address and what survives a reload with it.
pub struct ListenerSlot {
    pub addr: SocketAddr,
    pub settings: ArcSwap<ListenerSettings>,
    pub limit: Arc<Limit>,
    pub client_limits: ClientLimits,
    /// Set to true to stop this slot's accept loops (address removed, or draining).
    pub stop: watch::Sender<bool>,
}

impl ListenerSlot {
    pub fn new(settings: ListenerSettings) -> Arc<ListenerSlot> {
        Arc::new(ListenerSlot {
            addr: settings.config.listen,
            limit: Limit::new(settings.config.max_connections),
            client_limits: ClientLimits::new(),
            settings: ArcSwap::from_pointee(settings),
            stop: watch::Sender::new(false),
        })
    }

    pub fn update(&self, settings: ListenerSettings) {
        self.limit.set_max(settings.config.max_connections);
        self.settings.store(Arc::new(settings));
    }
}

/// Accepts connections until the slot is stopped, spawning a session for each on this thread.
pub async fn accept_loop(listener: TcpListener, slot: Arc<ListenerSlot>, shared: Arc<Shared>) {
    let mut stop = slot.stop.subscribe();
    let mut backoff = Backoff::default();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.wait_for(|stopped| *stopped) => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((client, peer)) => {
                backoff.reset();
                let settings = slot.settings.load_full();
                let Some(process) = shared.limit.try_acquire() else {
                    session::refuse(
                        client,
                        peer,
                        &settings,
                        &shared,
                        End::RefusedLimit("process"),
                    );
                    continue;
                };
                let Some(listener) = slot.limit.try_acquire() else {
                    session::refuse(
                        client,
                        peer,
                        &settings,
                        &shared,
                        End::RefusedLimit("listener"),
                    );
                    continue;
                };
                let limits = slot.client_limits.clone();
                let session = Session::run(
                    client,
                    peer,
                    settings,
                    limits,
                    Arc::clone(&shared),
                    [process, listener],
                );
                tokio::spawn(session);
            }
            Err(e) if is_out_of_resources(&e) => {
                let pause = backoff.next();
                if backoff.should_log() {
                    tracing::warn!(listener = %slot.addr, "accept paused for {pause:?}: {e} (out of resources; connections wait in the backlog)");
                }
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.wait_for(|stopped| *stopped) => break,
                }
            }
            // The connection died in the backlog (ECONNABORTED) and the like: not our problem.
            Err(e) => tracing::debug!(listener = %slot.addr, "accept: {e}"),
        }
    }
    tracing::debug!(listener = %slot.addr, "accept loop stopped");
}

fn is_out_of_resources(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// 10 ms doubling to 1 s; logging at most once a second while it lasts.
#[derive(Default)]
struct Backoff {
    current: Option<Duration>,
    last_log: Option<Instant>,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    fn next(&mut self) -> Duration {
        let next = self.current.map_or(Self::FIRST, |d| (d * 2).min(Self::MAX));
        self.current = Some(next);
        next
    }

    fn should_log(&mut self) -> bool {
        let now = Instant::now();
        let due = self
            .last_log
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1));
        if due {
            self.last_log = Some(now);
        }
        due
    }

    fn reset(&mut self) {
        self.current = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_a_ceiling_and_resets() {
        let mut b = Backoff::default();
        let steps: Vec<Duration> = (0..9).map(|_| b.next()).collect();
        assert_eq!(steps[0], Duration::from_millis(10));
        assert_eq!(steps[1], Duration::from_millis(20));
        assert_eq!(steps[8], Duration::from_secs(1));
        b.reset();
        assert_eq!(b.next(), Duration::from_millis(10));
    }
}
