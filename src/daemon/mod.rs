//! The running daemon: worker threads, listening sockets, signals, drain and reload.
//!
//! Each worker thread runs a single-threaded tokio runtime with its own accept loop per listener
//! (SO_REUSEPORT), and the sessions it accepts stay on that thread: no task migrates, so
//! per-thread pools of pipes and buffers need no lock. The main thread runs the control plane:
//! signals, reload, drain, and the systemd watchdog.
//!
//! Lifecycle, as an NLB wants it (see `Phase`): SIGTERM makes the relay report not-ready while
//! it keeps accepting for `drain.announce`, then it stops accepting and lets connections finish
//! until `drain.deadline`, then closes the rest spread over `drain.close_spread`, then exits 0.
//! A second SIGTERM, or SIGINT at any time, exits at once. SIGHUP reloads the config; SIGUSR1
//! reopens the access-log file.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::inbound::Shared;
use crate::lifecycle::Phase;
use crate::observe::access_log::{self, AccessLog};
mod admin;
mod connections;
mod heartbeat;
mod notify;
pub mod platform;
mod readiness;
mod status_page;
use crate::config::{Config, Drain};
use crate::inbound::limits::Limit;
use crate::inbound::listener::ListenerConfig;
use crate::inbound::listener::{self, ListenerSettings, ListenerSlot};
use crate::inbound::metrics::ListenerMetrics;
use crate::inbound::registry::Registry;
use crate::observe::telemetry;
use crate::relay;
use crate::relay::sockopt;
use crate::upstream::pool::Pool;
use admin::Admin;
use heartbeat::Heartbeats;
use notify::Notifier;

/// What the control plane and the admin endpoints share with the workers.
pub struct State {
    /// What every listener and session shares: the process limit, the access log, the phase.
    pub sessions: Arc<Shared>,
    /// The listeners of the running config, for readiness and /status.
    pub listeners: ArcSwap<Vec<Arc<ListenerSlot>>>,
    /// The drain settings of the running config.
    pub drain: ArcSwap<Drain>,
    /// One per worker: a stuck worker fails the watchdog, /healthz and /readyz.
    pub heartbeats: Arc<Heartbeats>,
    /// Whether /readyz holds back for the process connection limit (with hysteresis).
    pub(crate) saturation: readiness::Saturation,
}

struct Worker {
    handle: Handle,
    thread: std::thread::JoinHandle<()>,
}

pub struct Daemon {
    config: Config,
    state: Arc<State>,
    workers: Vec<Worker>,
    slots: HashMap<SocketAddr, Arc<ListenerSlot>>,
    pools: Vec<Arc<Pool>>,
    notifier: Notifier,
    options: Options,
    /// Set once the admin listeners start; a reload swaps its access rules.
    admin: Option<Arc<Admin>>,
    admin_listeners: admin::Listeners,
}

/// Runs the daemon until it has drained or been told to exit. Errors are startup failures
/// (a listener that cannot bind, no worker thread).
/// How the daemon was started.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Bind listening addresses even when another process listens on them with SO_REUSEPORT
    /// (the binary-upgrade procedure: start beside the old process, then drain it).
    pub takeover: bool,
}

pub fn run(config: Config, options: Options) -> Result<(), String> {
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    raise_fd_limit(config.global.max_connections);
    let prometheus = telemetry::install(config.admin.metrics);
    let worker_count = match config.global.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let state = Arc::new(State {
        sessions: Arc::new(Shared::new(
            Limit::new(Some(config.global.max_connections)),
            AccessLog::start(&config.global.access_log_settings())?,
            Registry::new(worker_count),
        )),
        listeners: ArcSwap::from_pointee(Vec::new()),
        drain: ArcSwap::from_pointee(config.drain.clone()),
        heartbeats: Heartbeats::new(worker_count),
        saturation: readiness::Saturation::default(),
    });
    let workers = (0..worker_count)
        .map(|i| start_worker(i, state.sessions.phase.subscribe()))
        .collect::<Result<Vec<_>, _>>()?;
    for (index, worker) in workers.iter().enumerate() {
        state.heartbeats.start(index, &worker.handle);
        state.sessions.access_log.start_flushing(&worker.handle);
    }

    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the control runtime: {e}"))?;
    let result = control.block_on(async {
        let mut daemon = Daemon {
            config,
            state,
            workers,
            slots: HashMap::new(),
            pools: Vec::new(),
            options,
            notifier: Notifier::from_env(),
            admin: None,
            admin_listeners: admin::Listeners::default(),
        };
        let signals = Signals::install()?;
        daemon.apply_initial()?;
        daemon.tidy_registry();
        daemon.start_admin(prometheus)?;
        // Announced once everything listens, admin included: scripts (and the tests) take this
        // line, like READY=1, to mean every configured address accepts.
        daemon.announce();
        daemon.notifier.ready();
        daemon.control(signals).await;
        Ok::<_, String>(daemon)
    });
    let daemon = result?;
    daemon.state.sessions.phase.send_replace(Phase::Exit);
    for worker in daemon.workers {
        let _ = worker.thread.join();
    }
    Ok(())
}

/// Raises the soft RLIMIT_NOFILE to the hard limit, as a relay needs two descriptors per
/// connection (plus pipes while splicing); warns when even that cannot cover `max_connections`.
fn raise_fd_limit(max_connections: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the valid, exclusively borrowed `limit`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads one valid rlimit; raising the soft limit up to the hard one
        // needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    let needed = (max_connections as u64)
        .saturating_mul(2)
        .saturating_add(256);
    if limit.rlim_cur < needed {
        tracing::warn!(
            "open-file limit {} is below the {needed} that max_connections = {max_connections} needs \
             (2 per connection + 256); raise LimitNOFILE or lower max_connections",
            limit.rlim_cur
        );
    }
}

fn start_worker(index: usize, mut phase: watch::Receiver<Phase>) -> Result<Worker, String> {
    let (handle_tx, handle_rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(format!("worker-{index}"))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("worker {index}: cannot start runtime: {e}");
                    return;
                }
            };
            let _ = handle_tx.send(runtime.handle().clone());
            runtime.block_on(async move {
                let _ = phase.wait_for(|p| *p == Phase::Exit).await;
            });
            // The lines this worker still holds, before the process ends.
            access_log::flush_thread(EXIT_FLUSH);
            // Dropping the runtime drops whatever sessions remain, closing their sockets.
        })
        .map_err(|e| format!("cannot start worker thread: {e}"))?;
    let handle = handle_rx
        .recv()
        .map_err(|_| format!("worker {index} failed to start its runtime"))?;
    Ok(Worker { handle, thread })
}

/// How long a worker waits at exit for a full access-log sink to take its last lines.
const EXIT_FLUSH: Duration = Duration::from_secs(1);

struct Signals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
    /// SIGUSR1: reopen the access-log file (logrotate's postrotate).
    user1: Signal,
}

impl Signals {
    fn install() -> Result<Signals, String> {
        let install =
            |kind| signal(kind).map_err(|e| format!("cannot install signal handlers: {e}"));
        Ok(Signals {
            terminate: install(SignalKind::terminate())?,
            interrupt: install(SignalKind::interrupt())?,
            hangup: install(SignalKind::hangup())?,
            user1: install(SignalKind::user_defined1())?,
        })
    }
}

impl Daemon {
    fn apply_initial(&mut self) -> Result<(), String> {
        let config = self.config.clone();
        self.apply(&config)
    }

    fn announce(&self) {
        tracing::info!(
            "l4relay {} relaying on {} listener(s) with {} worker(s)",
            env!("CARGO_PKG_VERSION"),
            self.slots.len(),
            self.workers.len()
        );
        for slot in self.slots.values() {
            let settings = slot.settings.load();
            tracing::info!(listener = %settings.name, address = %slot.addr, pool = %settings.pool.name, "listening");
        }
    }

    /// Collects the workers' connection-table queues a few times a second, so they stay short
    /// and closed connections' entries are freed while nobody reads the table.
    fn tidy_registry(&self) {
        let registry = Arc::clone(&self.state.sessions.registry);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(250));
            loop {
                every.tick().await;
                registry.tidy();
            }
        });
    }

    /// Binds the admin (and health) listeners and serves them on this, the control, thread.
    fn start_admin(&mut self, prometheus: Option<PrometheusHandle>) -> Result<(), String> {
        if let Some(handle) = prometheus.clone() {
            // The exporter keeps histogram samples until upkeep folds them into buckets; without
            // it, memory would grow with every connection while nobody scrapes.
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(5));
                loop {
                    every.tick().await;
                    handle.run_upkeep();
                }
            });
        }
        admin::describe_metrics();
        let admin = Arc::new(Admin {
            state: Arc::clone(&self.state),
            prometheus,
            workers: self.workers.iter().map(|w| w.handle.clone()).collect(),
            access: ArcSwap::from_pointee(admin::Access::new(&self.config.admin)),
        });
        let bound = self.admin_listeners.bind(&self.config.admin)?;
        self.admin_listeners.commit(bound, &admin);
        self.admin = Some(admin);
        Ok(())
    }

    async fn control(&mut self, mut signals: Signals) {
        let watchdog = notify::watchdog_interval();
        let ping = watchdog.map_or(Duration::from_secs(3600), |d| d / 2);
        let mut watchdog_tick = tokio::time::interval(ping);
        // A control thread held up (a long reload) pings once when free, not in a burst.
        watchdog_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stuck_after = heartbeat::watchdog_threshold(ping);
        loop {
            tokio::select! {
                _ = signals.terminate.recv() => {
                    self.drain(&mut signals).await;
                    return;
                }
                _ = signals.interrupt.recv() => {
                    tracing::info!("SIGINT: exiting now");
                    self.notifier.stopping("exiting");
                    return;
                }
                _ = signals.hangup.recv() => self.reload(),
                _ = signals.user1.recv() => self.reopen_access_log(),
                _ = watchdog_tick.tick(), if watchdog.is_some() => {
                    if self.workers_respond(stuck_after) {
                        self.notifier.watchdog();
                    }
                }
            }
        }
    }

    /// True unless a worker has stopped beating: a stuck worker withholds the watchdog ping
    /// (systemd then restarts the relay). Reads the heartbeats; never waits on a worker.
    fn workers_respond(&self, stuck_after: Duration) -> bool {
        match self.state.heartbeats.silent_for(stuck_after) {
            None => true,
            Some((index, silent)) => {
                tracing::error!(
                    "worker-{index} has not run for {:.1}s: withholding the watchdog ping",
                    silent.as_secs_f64()
                );
                false
            }
        }
    }

    async fn drain(&mut self, signals: &mut Signals) {
        let drain = self.state.drain.load_full();
        tracing::info!(
            "SIGTERM: draining: not ready now, accepting for {:?} more, then waiting up to {:?} for {} connection(s)",
            drain.announce,
            drain.deadline,
            self.state.sessions.limit.active()
        );
        self.notifier.stopping("draining");
        self.notifier.extend_timeout(
            drain.announce + drain.deadline + drain.close_spread + Duration::from_secs(5),
        );
        self.state.sessions.phase.send_replace(Phase::Announcing);
        metrics::gauge!(telemetry::DRAINING).set(1.0);

        let now_or_on_signal = async {
            tokio::select! {
                _ = signals.terminate.recv() => {}
                _ = signals.interrupt.recv() => {}
            }
        };
        tokio::pin!(now_or_on_signal);

        tokio::select! {
            _ = tokio::time::sleep(drain.announce) => {}
            _ = &mut now_or_on_signal => return self.exit_now(),
        }
        self.state.sessions.phase.send_replace(Phase::Stopped);
        for slot in self.slots.values() {
            slot.stop.send_replace(true);
        }
        tracing::info!(
            "drain: listeners closed, {} connection(s) still open",
            self.state.sessions.limit.active()
        );

        tokio::select! {
            _ = self.connections_closed(drain.deadline) => {}
            _ = &mut now_or_on_signal => return self.exit_now(),
        }
        let open = self.state.sessions.limit.active();
        if open > 0 {
            tracing::info!(
                "drain deadline: closing {open} connection(s) over {:?}",
                drain.close_spread
            );
            self.state.sessions.phase.send_replace(Phase::Closing);
            // Spread, so the clients of a draining relay don't all reconnect at once.
            let registry = Arc::clone(&self.state.sessions.registry);
            tokio::select! {
                _ = self.connections_closed(drain.close_spread + Duration::from_secs(1)) => {}
                _ = registry.close_all(drain.close_spread) => {}
                _ = &mut now_or_on_signal => return self.exit_now(),
            }
        }
        tracing::info!("drained: exiting");
    }

    /// SIGUSR1: the access-log file anew, after logrotate moved the old one away.
    fn reopen_access_log(&self) {
        let log = &self.state.sessions.access_log;
        match log.reopen() {
            Ok(Some(path)) => tracing::info!("SIGUSR1: reopened the access log {}", path.display()),
            Ok(None) => match log.target() {
                Some(target) => {
                    tracing::info!("SIGUSR1: the access log goes to {target}: nothing to reopen")
                }
                None => tracing::info!("SIGUSR1: the access log is off: nothing to reopen"),
            },
            Err(e) => tracing::error!(
                "SIGUSR1: cannot reopen the access log: {e}; writing on to the file open until now"
            ),
        }
    }

    fn exit_now(&self) {
        tracing::info!(
            "second signal during drain: exiting now with {} connection(s) open",
            self.state.sessions.limit.active()
        );
    }

    /// Waits until no connection is open, at most `limit`.
    async fn connections_closed(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        let mut poll = tokio::time::interval(Duration::from_millis(50));
        while self.state.sessions.limit.active() > 0 && tokio::time::Instant::now() < deadline {
            poll.tick().await;
        }
    }

    fn reload(&mut self) {
        self.notifier.reloading();
        let path = self.config.path.clone();
        tracing::info!("SIGHUP: reloading {}", path.display());
        let result = match Config::load(&path) {
            Err(errors) => {
                for e in &errors {
                    tracing::error!("reload: {e}");
                }
                Err(format!("{} error(s) in {}", errors.len(), path.display()))
            }
            Ok(config) => {
                for warning in &config.warnings {
                    tracing::warn!("{warning}");
                }
                self.reload_with(&config).map(|()| self.config = config)
            }
        };
        let outcome = match result {
            Ok(()) => {
                tracing::info!("reload: done");
                "ok"
            }
            Err(e) => {
                tracing::error!("reload: {e}; still running the previous config");
                "error"
            }
        };
        metrics::counter!(telemetry::CONFIG_RELOADS, "result" => outcome).increment(1);
        self.notifier.ready();
    }

    /// Applies a reloaded config, or nothing of it: a change only a restart can apply refuses
    /// the reload (saying which), and so does an admin address that cannot be bound. The admin
    /// token and host names are swapped in with the rest.
    fn reload_with(&mut self, config: &Config) -> Result<(), String> {
        let restart_only = self.config.restart_only_changes(config);
        if !restart_only.is_empty() {
            for change in &restart_only {
                tracing::error!("reload: {change}");
            }
            return Err(format!(
                "refused: {} change(s) need a restart (configuration.md: What a reload changes)",
                restart_only.len()
            ));
        }
        let admin_sockets = self.admin_listeners.bind(&config.admin)?;
        self.apply(config)?;
        if let Some(admin) = &self.admin {
            self.admin_listeners.commit(admin_sockets, admin);
            admin
                .access
                .store(Arc::new(admin::Access::new(&config.admin)));
        }
        Ok(())
    }

    /// Makes `config` the running one: new pools, listener settings swapped in place, new
    /// addresses bound, removed ones closed. Binds first, so a failure changes nothing.
    fn apply(&mut self, config: &Config) -> Result<(), String> {
        // Pools of this generation; each takes over the server states and DNS answers of its
        // predecessor of the same name. Their checks and DNS refresh start once the new config
        // is certain to be applied (below).
        let pools: Vec<Arc<Pool>> = config
            .pools
            .iter()
            .map(|p| {
                let previous = self.pools.iter().find(|old| *old.name == p.name);
                Arc::new(Pool::build(p, previous.map(|old| &**old)))
            })
            .collect();
        let settings_for = |l: &ListenerConfig| ListenerSettings {
            name: Arc::from(l.name.as_str()),
            metrics: ListenerMetrics::new(&l.name, &l.allow_vpce),
            config: l.clone(),
            pool: Arc::clone(&pools[l.pool]),
            pools: pools.clone(),
            relay: relay::Settings {
                mode: l.relay,
                pipe_size: config.global.pipe_size,
                buffer_size: config.global.buffer_size,
            },
        };

        let mut bound = Vec::new();
        for l in config
            .listeners
            .iter()
            .filter(|l| !self.slots.contains_key(&l.listen))
        {
            if !self.options.takeover {
                sockopt::ensure_unused(l.listen).map_err(|e| {
                    format!(
                        "listener \"{}\": cannot listen on {}: {e}",
                        l.name, l.listen
                    )
                })?;
            }
            let sockets = (0..self.workers.len())
                .map(|_| sockopt::bind_listener(l.listen, l.backlog, &l.keepalive))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    format!(
                        "listener \"{}\": cannot listen on {}: {e}",
                        l.name, l.listen
                    )
                })?;
            bound.push((l, sockets));
        }

        for l in &config.listeners {
            if let Some(slot) = self.slots.get(&l.listen) {
                slot.update(settings_for(l));
            }
        }
        for (l, sockets) in bound {
            let slot = ListenerSlot::new(settings_for(l));
            for (socket, worker) in sockets.into_iter().zip(&self.workers) {
                let (slot, shared) = (Arc::clone(&slot), Arc::clone(&self.state.sessions));
                worker.handle.spawn(async move {
                    match TcpListener::from_std(socket) {
                        Ok(listener) => listener::accept_loop(listener, slot, shared).await,
                        Err(e) => {
                            tracing::error!(address = %slot.addr, "cannot register listener: {e}")
                        }
                    }
                });
            }
            self.slots.insert(l.listen, slot);
        }
        self.slots.retain(|addr, slot| {
            let keep = config.listeners.iter().any(|l| l.listen == *addr);
            if !keep {
                tracing::info!(address = %addr, "listener removed: closing it; its connections run on");
                slot.stop.send_replace(true);
            }
            keep
        });
        self.state
            .sessions
            .limit
            .set_max(Some(config.global.max_connections));
        self.state
            .listeners
            .store(Arc::new(self.slots.values().cloned().collect()));
        for slot in self.slots.values() {
            let limit = slot.limit.max().unwrap_or(config.global.max_connections);
            metrics::gauge!(telemetry::CONNECTIONS_LIMIT, "listener" => slot.settings.load().name.to_string()).set(limit as f64);
        }
        self.state.drain.store(Arc::new(config.drain.clone()));
        // Background work: the old generation's checks and DNS refreshers end, the new one's
        // start (on this, the control thread).
        for old in &self.pools {
            old.stop();
        }
        for pool in &pools {
            pool.start();
        }
        self.pools = pools;
        Ok(())
    }
}
