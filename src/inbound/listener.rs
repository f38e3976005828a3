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

use ipnet::IpNet;

use crate::inbound::preamble::ProxyProtocol;
use crate::inbound::route::RouteFallback;
use crate::protocol::name_table::NameTable;
use crate::protocol::vpce::VpceId;
use crate::relay::sockopt::Keepalive;
use crate::tls::ListenerTls;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::inbound::limits::{ClientLimits, Limit};
use crate::inbound::metrics::ListenerMetrics;
use crate::inbound::progress::StreamTimeouts;
use crate::inbound::session::{self, End, Session};
use crate::inbound::Shared;
use crate::relay;
use crate::upstream::pool::Pool;

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub name: String,
    pub listen: SocketAddr,
    /// Index into `Config::pools`.
    pub pool: usize,
    pub proxy_protocol: ProxyProtocol,
    /// Peers allowed to send a PROXY header; empty means any peer.
    pub proxy_protocol_from: Vec<IpNet>,
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
    pub allow_vpce: Vec<VpceId>,
    /// None: only the process-wide limit applies.
    pub max_connections: Option<usize>,
    /// Concurrent connections per client address (the PROXY source when there is one).
    pub max_connections_per_source: Option<usize>,
    /// Concurrent connections per VPC endpoint ID.
    pub max_connections_per_vpce: Option<usize>,
    /// SNI routes to pools (indexes into `Config::pools`); empty: no ClientHello is read.
    pub routes: NameTable,
    /// What happens to a connection no route matches.
    pub route_fallback: RouteFallback,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    /// For long streams: the timeouts of a relaying connection (see `progress`).
    pub streams: StreamTimeouts,
    /// An access-log line when the connection is established (`end=open`).
    pub log_open: bool,
    /// An access-log line every this often while it lasts (`end=progress`).
    pub log_progress: Option<Duration>,
    pub backlog: u32,
    pub keepalive: Keepalive,
    pub relay: relay::Mode,
    /// `[listener.tls]`: TLS terminated here; None: bytes pass through as they come.
    pub tls: Option<ListenerTls>,
}

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
                survive_panic(slot.addr, || admit(client, peer, &slot, &shared));
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

/// Admits one accepted connection: the process and listener limits, then its session, spawned
/// on this thread. Refusals are logged here, in the loop, so they cost no task.
fn admit(client: TcpStream, peer: SocketAddr, slot: &ListenerSlot, shared: &Arc<Shared>) {
    let settings = slot.settings.load_full();
    let Some(process) = shared.limit.try_acquire() else {
        session::refuse(
            client,
            peer,
            &settings,
            shared,
            End::RefusedLimit("process"),
        );
        return;
    };
    let Some(listener) = slot.limit.try_acquire() else {
        session::refuse(
            client,
            peer,
            &settings,
            shared,
            End::RefusedLimit("listener"),
        );
        return;
    };
    let limits = slot.client_limits.clone();
    let session = Session::run(
        client,
        peer,
        settings,
        limits,
        Arc::clone(shared),
        [process, listener],
    );
    tokio::spawn(session);
}

/// Runs `handle` for one accepted connection, catching a panic in it. A panic there is a bug,
/// but letting it end the accept loop would be worse than the bug: this worker's listening
/// socket would stay open, and the kernel would keep queueing its SO_REUSEPORT share of new
/// connections on it, never to be accepted. What `handle` touches is left consistent by
/// unwinding (permits are released by their Drop, counters are atomics, the settings are
/// behind an ArcSwap), which is why asserting unwind safety is sound here.
fn survive_panic(listener: SocketAddr, handle: impl FnOnce()) {
    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(handle)) {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(%listener, "bug: admitting a connection panicked ({what}); accepting goes on");
    }
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
    fn a_panic_while_admitting_leaves_the_loop_running() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut after = false;
        survive_panic(addr, || panic!("injected"));
        survive_panic(addr, || after = true);
        assert!(after);
    }

    /// The worker runtimes (current_thread, as in daemon.rs) keep running other tasks, such as
    /// the accept loops, when one session task panics.
    #[test]
    fn a_panicking_session_task_does_not_stop_the_worker() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let session = tokio::spawn(async { panic!("injected session panic") });
            assert!(session.await.unwrap_err().is_panic());
            let next = tokio::spawn(async { 42 });
            assert_eq!(next.await.unwrap(), 42);
        });
    }

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
