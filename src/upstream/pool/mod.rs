//! Upstream pools: the servers a listener relays to, and choosing one for each connection.
//!
//! A `Pool` is shared by every worker thread. Each `Server` counts its active connections in an
//! atomic, which both the per-server limit and least-connections read; a `ServerLease` holds one
//! of those counts for as long as a connection to that server lives.
//!
//! The server set changes while the pool runs: a server given by host name is one `Server` per
//! address its name resolves to, and DNS answers add and remove them (`crate::upstream::dns`). The set is
//! an `ArcSwap` snapshot, so choosing a server takes no lock beyond round-robin's short one.
//! Each server's state (up, down, draining, and why: `state`) is set in the background by health
//! checks (`crate::upstream::health`), DNS and the admin endpoints, and by passive detection on failed
//! connects; the relay path reads one atomic per server.
//!
//! Which servers may take a connection: those that are up, not draining, not removed by DNS,
//! under their `max_connections`, and not already tried for this client. Backups are
//! considered only when no primary qualifies.
//!
//! Background work (a checker task per server, a refresher per DNS name) runs on the control
//! thread from `Pool::start` to `Pool::stop`.

pub mod balance;
mod settings;
pub use settings::{OnDown, PoolConfig, ServerAddress, ServerConfig};
pub mod state;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::lifecycle::quiet::Quiet;
use crate::observe::telemetry::SERVER_STATES;
use crate::protocol::proxy_protocol::SendProxy;
use crate::relay::sockopt::Keepalive;
use crate::upstream::connect::AttemptResult;
use crate::upstream::dns::NameState;
use crate::upstream::egress::{Egress, SourceClaim, Sources, Verdict};
use crate::upstream::health::InitState;
use crate::upstream::metrics::{PoolMetrics, ServerMetrics};
use crate::upstream::pool::balance::Balance;
use state::{Change, Health, LastCheck, Reason, Status};

/// Identifies a server for the life of the process (indexes do not survive a DNS change).
pub type ServerId = u64;

static NEXT_SERVER_ID: AtomicU64 = AtomicU64::new(1);

/// Weights are kept in thousandths, so slow start can ramp even a weight-1 server smoothly.
const WEIGHT_SCALE: u64 = 1000;

pub struct Server {
    pub id: ServerId,
    /// From the config; several servers share it when a name resolves to several addresses.
    pub name: Arc<str>,
    /// The host name this address was resolved from (SNI and Host header of health checks).
    pub host: Option<Arc<str>>,
    pub addr: SocketAddr,
    pub weight: u32,
    pub backup: bool,
    max_connections: Option<u32>,
    active: AtomicU32,
    /// `status.usable()`, readable without the lock.
    usable: AtomicBool,
    status: Mutex<Status>,
    /// Slow start: when the ramp began, in `clock_ms()` + 1; 0 when not ramping.
    ramp_start: AtomicU64,
    slow_start: Duration,
    /// Smooth weighted round-robin's running weight; changed only under the pool's round-robin
    /// mutex (atomic only so that `Server` is shared freely).
    rr_current: AtomicI64,
    /// Consecutive failed connects in live traffic (passive detection).
    connect_failures: AtomicU32,
    /// True: open connections must close (see `CloseSignal`).
    closing: watch::Sender<bool>,
    /// Whether this pool ever closes this server's connections.
    can_close: bool,
    /// Connections and check results per source address of the pool.
    pub(crate) sources: Arc<Sources>,
    /// `[pool.tls]`: the pool's TLS client config with this address's own session store, so
    /// addresses behind one name resume apart and a removed one's sessions go with it.
    pub tls_client: Option<Arc<rustls::ClientConfig>>,
    pub metrics: Arc<ServerMetrics>,
}

impl Server {
    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    /// May take new connections: up, not draining, not removed.
    pub fn is_usable(&self) -> bool {
        self.usable.load(Ordering::Relaxed)
    }

    /// A copy of the server's state, for /status and tests.
    pub fn status(&self) -> Status {
        self.lock_status().clone()
    }

    fn lock_status(&self) -> MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_removed(&self) -> bool {
        self.lock_status().removed.is_some()
    }

    /// Completes when this server's open connections must close.
    pub fn close_signal(&self) -> Quiet {
        if !self.can_close {
            return Quiet::never();
        }
        let mut closing = self.closing.subscribe();
        Quiet::new(async move {
            if closing.wait_for(|close| *close).await.is_err() {
                // The server is gone, so nothing will ask its connections to close.
                std::future::pending::<()>().await;
            }
        })
    }

    /// The weight balancing uses now, in thousandths: the configured one, or less while the
    /// server ramps up after coming back (slow start).
    fn effective_weight(&self, clock: &mut Clock) -> u64 {
        let full = u64::from(self.weight) * WEIGHT_SCALE;
        let start = self.ramp_start.load(Ordering::Relaxed);
        if start == 0 {
            return full;
        }
        let ramp = self.slow_start.as_millis().max(1) as u64;
        let elapsed = clock.now_ms().saturating_sub(start - 1);
        if elapsed >= ramp {
            // Several threads may store this; all store the same.
            self.ramp_start.store(0, Ordering::Relaxed);
            return full;
        }
        (full * elapsed / ramp).max(1)
    }

    fn has_room(&self) -> bool {
        self.max_connections.is_none_or(|max| self.active() < max)
    }

    /// Takes one connection slot, unless the server filled up since it was chosen.
    fn lease(self: &Arc<Self>) -> Option<ServerLease> {
        let before = self.active.fetch_add(1, Ordering::AcqRel);
        if self.max_connections.is_some_and(|max| before >= max) {
            self.active.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        self.metrics.active.increment(1.0);
        Some(ServerLease {
            server: Arc::clone(self),
            source: None,
        })
    }
}

/// Milliseconds since the first call: the time base of slow start.
fn clock_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Reads the clock at most once per pick, and only if some server is ramping.
#[derive(Default)]
struct Clock(Option<u64>);

impl Clock {
    fn now_ms(&mut self) -> u64 {
        *self.0.get_or_insert_with(clock_ms)
    }
}

/// One active connection's claim on a server (and on the source address it left from);
/// released on drop.
pub struct ServerLease {
    server: Arc<Server>,
    source: Option<SourceClaim>,
}

impl ServerLease {
    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }

    /// Keeps the connection's place on its source address for as long as the lease.
    pub fn hold_source(&mut self, claim: SourceClaim) {
        self.source = Some(claim);
    }
}

impl Drop for ServerLease {
    fn drop(&mut self) {
        self.server.active.fetch_sub(1, Ordering::AcqRel);
        self.server.metrics.active.decrement(1.0);
    }
}

pub struct Pool {
    pub name: Arc<str>,
    pub balance: Balance,
    pub connect_timeout: Duration,
    pub retries: u32,
    pub keepalive: Keepalive,
    pub send_proxy: SendProxy,
    /// The source addresses connections leave from, and their port range.
    pub egress: Arc<Egress>,
    pub metrics: PoolMetrics,
    /// The whole config (health checks and DNS read it).
    pub config: PoolConfig,
    servers: ArcSwap<Vec<Arc<Server>>>,
    /// Held for one pass over the servers by round-robin (its running weights).
    round_robin: Mutex<()>,
    /// Serialises changes of the server set.
    set_change: Mutex<()>,
    /// Bumped whenever a server's usability changes or a first answer (check, DNS) arrives:
    /// what clients waiting for the first answers watch.
    changed: watch::Sender<u64>,
    /// Servers awaiting their first check, plus names awaiting their first DNS answer.
    pending: AtomicUsize,
    /// How long a client waits for those first answers.
    first_wait: Duration,
    /// Metric handles per configured server name.
    server_metrics: HashMap<String, Arc<ServerMetrics>>,
    /// One per server given by host name.
    pub(crate) names: Vec<NameState>,
    /// Servers an operator set draining, by config name: addresses DNS adds later inherit it.
    draining: Mutex<Vec<String>>,
    /// The TLS client config of TLS checks (an error if it could not be built).
    pub(crate) tls: Option<Result<Arc<rustls::ClientConfig>, String>>,
    /// True: background tasks end (the pool was replaced by a reload, or the process exits).
    stop: watch::Sender<bool>,
}

impl Pool {
    /// Builds a pool without resolving anything: servers given by IP address exist at once,
    /// those given by name once `start`'s DNS refresh has answered. From `previous` (the pool of
    /// the same name before a reload) it takes the state of servers that stay (same name and
    /// address) and the last DNS answers of names that stay, so a reload does not send every
    /// server back to "unknown".
    pub fn build(config: &PoolConfig, previous: Option<&Pool>) -> Pool {
        let egress = Arc::new(Egress::new(&config.sources));
        let source_labels: Vec<String> = (0..egress.slots()).map(|i| egress.label(i)).collect();
        let server_metrics: HashMap<String, Arc<ServerMetrics>> = config
            .servers
            .iter()
            .map(|s| {
                let by_name = matches!(s.address, ServerAddress::Name { .. });
                let metrics = ServerMetrics::new(
                    &config.name,
                    &s.name,
                    by_name,
                    config.tls.is_some(),
                    &source_labels,
                );
                (s.name.clone(), Arc::new(metrics))
            })
            .collect();
        let previous_servers = previous.map(|p| p.servers()).unwrap_or_default();
        // Health carries over only between generations that both check: a pool without checks
        // calls every server up, which says nothing about it.
        let carry_health =
            config.health.is_some() && previous.is_some_and(|p| p.config.health.is_some());
        let status_for = |name: &str, addr: SocketAddr| {
            let old = previous_servers
                .iter()
                .find(|s| *s.name == *name && s.addr == addr && !s.is_removed())
                .map(|s| s.status());
            let mut status = Status::new(initial_health(config));
            if let Some(old) = old {
                if carry_health {
                    status = old.clone();
                }
                status.draining = old.draining;
            }
            status
        };
        // The per-source counts of a server that stays go on, with its connections, as long
        // as the sources do.
        let same_sources = previous.is_some_and(|p| p.egress.addrs() == egress.addrs());
        let sources_for = |name: &str, addr: SocketAddr| {
            previous_servers
                .iter()
                .filter(|_| same_sources)
                .find(|s| *s.name == *name && s.addr == addr && !s.is_removed())
                .map(|s| Arc::clone(&s.sources))
        };

        let mut servers = Vec::new();
        let mut names = Vec::new();
        for (index, server) in config.servers.iter().enumerate() {
            let metrics = &server_metrics[&server.name];
            match &server.address {
                ServerAddress::Ip(addr) => servers.push(new_server(
                    config,
                    (&egress, sources_for(&server.name, *addr)),
                    server,
                    metrics,
                    *addr,
                    None,
                    status_for(&server.name, *addr),
                )),
                ServerAddress::Name { host, port } => {
                    let carried = previous.and_then(|p| {
                        p.names.iter().find(|n| {
                            *n.server_name == server.name && *n.host == **host && n.port == *port
                        })
                    });
                    let name = NameState::new(index, server, host, *port, carried);
                    for ip in name.addresses() {
                        let addr = SocketAddr::new(ip, *port);
                        let status = status_for(&server.name, addr);
                        servers.push(new_server(
                            config,
                            (&egress, sources_for(&server.name, addr)),
                            server,
                            metrics,
                            addr,
                            Some(Arc::clone(&name.host)),
                            status,
                        ));
                    }
                    names.push(name);
                }
            }
        }
        let pending = servers
            .iter()
            .filter(|s| s.status().health == Health::Unknown)
            .count()
            + names.iter().filter(|n| !n.answered()).count();
        let mut first_wait = Duration::ZERO;
        if let Some(health) = &config.health {
            first_wait += health.timeout;
        }
        if !names.is_empty() {
            // Two attempts per query.
            first_wait += config.dns.timeout * 2;
        }
        let tls = config
            .health
            .as_ref()
            .and_then(|h| h.tls.as_ref().map(|tls| (h, tls)))
            .map(|(h, tls)| {
                crate::upstream::health::tls::client_config(
                    tls,
                    h.check == crate::upstream::health::CheckKind::Http,
                )
            });
        if let Some(Err(e)) = &tls {
            tracing::error!(pool = %config.name, "TLS health checks cannot run: {e}");
        }
        let draining = previous
            .map(|p| p.lock_draining().clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|name| config.servers.iter().any(|s| s.name == *name))
            .collect();
        let pool = Pool {
            name: Arc::from(config.name.as_str()),
            balance: config.balance,
            connect_timeout: config.connect_timeout,
            retries: config.retries,
            keepalive: config.keepalive.clone(),
            send_proxy: config.send_proxy,
            egress,
            metrics: PoolMetrics::new(&config.name),
            config: config.clone(),
            servers: ArcSwap::from_pointee(servers),
            round_robin: Mutex::new(()),
            set_change: Mutex::new(()),
            changed: watch::Sender::new(0),
            pending: AtomicUsize::new(pending),
            first_wait,
            server_metrics,
            names,
            draining: Mutex::new(draining),
            tls,
            stop: watch::Sender::new(false),
        };
        for server in pool.servers().iter() {
            let mut status = server.lock_status();
            server.usable.store(status.usable(), Ordering::Relaxed);
            status.was_usable |= status.usable();
            pool.update_closing(server, &status);
        }
        pool
    }

    /// Starts the background work on the current runtime (the control thread's): a health
    /// checker per server, a DNS refresher per name.
    pub fn start(self: &Arc<Self>) {
        if self.config.health.is_some() {
            for server in self.servers().iter() {
                crate::upstream::health::spawn(Arc::clone(self), Arc::clone(server));
            }
        }
        for index in 0..self.names.len() {
            crate::upstream::dns::spawn(Arc::clone(self), index);
        }
        self.publish();
    }

    /// Ends the background work.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Turns true when the pool's background work must end.
    pub fn stopped(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// A snapshot of the current servers, in config order.
    pub fn servers(&self) -> Arc<Vec<Arc<Server>>> {
        self.servers.load_full()
    }

    /// The pool as /status shows it.
    pub fn status(&self) -> serde_json::Value {
        let mut clock = Clock::default();
        let servers: Vec<serde_json::Value> = self
            .servers()
            .iter()
            .map(|s| {
                let status = s.status();
                let last_check = status.last_check.as_ref().map(|c| {
                    serde_json::json!({
                        "result": c.result,
                        "detail": c.detail,
                        "latency_ms": (c.latency.as_secs_f64() * 1e6).round() / 1e3,
                        "at": crate::observe::access_log::rfc3339(c.at),
                    })
                });
                let effective = if s.is_usable() {
                    s.effective_weight(&mut clock) as f64 / WEIGHT_SCALE as f64
                } else {
                    0.0
                };
                serde_json::json!({
                    "name": &*s.name,
                    "address": s.addr.to_string(),
                    "host": s.host.as_deref(),
                    "state": status.shown_state(),
                    "reason": status.shown_reason(),
                    "since": crate::observe::access_log::rfc3339(status.shown_since()),
                    "health": match status.health {
                        Health::Up => "up",
                        Health::Down => "down",
                        Health::Unknown => "unknown",
                    },
                    "active": s.active(),
                    "weight": s.weight,
                    "effective_weight": (effective * 1000.0).round() / 1000.0,
                    "backup": s.backup,
                    "max_connections": s.max_connections,
                    "last_check": last_check,
                    "sources": s.sources.status(),
                })
            })
            .collect();
        let dns: Vec<serde_json::Value> = self.names.iter().map(NameState::status).collect();
        serde_json::json!({
            "name": &*self.name,
            "balance": self.balance.as_str(),
            "health_check": self.config.health.as_ref().map(|h| h.check.as_str()),
            "servers": servers,
            "dns": dns,
            "egress": self.egress.status(),
        })
    }

    /// True when some server could take a connection now.
    pub fn has_server_up(&self) -> bool {
        self.servers.load().iter().any(|s| s.is_usable())
    }

    /// Chooses a server for a client and leases a slot on it. `tried` lists servers this
    /// client already failed to connect to; they are avoided while others qualify.
    pub fn pick(&self, client: IpAddr, tried: &[ServerId]) -> Option<ServerLease> {
        let servers = self.servers.load();
        for pass in Pass::ALL {
            // A chosen server can fill up between the choice and the lease (another thread
            // won the race); choose again among the rest, at most once per server.
            let mut full: u64 = 0;
            for _ in 0..servers.len().min(64) {
                let eligible = |i: usize, s: &Server| {
                    pass.admits(s, tried)
                        && s.is_usable()
                        && s.has_room()
                        && (i >= 64 || full & (1 << i) == 0)
                };
                let Some(index) = balance::choose(self, &servers, client, &eligible) else {
                    break;
                };
                match servers[index].lease() {
                    Some(lease) => return Some(lease),
                    None if index < 64 => full |= 1 << index,
                    None => {}
                }
            }
        }
        None
    }

    /// Like `pick`, but while servers still await their first check (or names their first
    /// DNS answer), a client waits for those answers, up to the check (and DNS) timeout,
    /// rather than being refused just after a start or reload.
    pub async fn pick_or_wait(&self, client: IpAddr, tried: &[ServerId]) -> Option<ServerLease> {
        if let Some(lease) = self.pick(client, tried) {
            return Some(lease);
        }
        if self.pending.load(Ordering::Acquire) == 0 {
            return None;
        }
        let deadline = tokio::time::Instant::now() + self.first_wait;
        let mut changed = self.changed.subscribe();
        loop {
            changed.borrow_and_update();
            if let Some(lease) = self.pick(client, tried) {
                return Some(lease);
            }
            if self.pending.load(Ordering::Acquire) == 0 {
                return None;
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                _ => return self.pick(client, tried),
            }
        }
    }

    /// Passive detection: counts a live connect attempt's result; `passive_fall` failures in a
    /// row take the server down before its next check would. A relaxed atomic per attempt; the
    /// state lock only at the transition. A failure for want of a local resource (descriptors,
    /// ports) is the relay's, not the server's: it counts for nothing.
    pub fn record_connect(&self, server: &Server, result: AttemptResult) {
        if matches!(result, AttemptResult::Local(_)) {
            return;
        }
        if result == AttemptResult::Ok {
            if server.connect_failures.load(Ordering::Relaxed) != 0 {
                server.connect_failures.store(0, Ordering::Relaxed);
            }
            return;
        }
        let Some(fall) = self
            .config
            .health
            .as_ref()
            .map(|h| h.passive_fall)
            .filter(|f| *f > 0)
        else {
            return;
        };
        let failures = server.connect_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures == fall {
            server.connect_failures.store(0, Ordering::Relaxed);
            let reason = Reason::new(
                "passive",
                format!(
                    "{failures} connects in a row failed in live traffic (last: {})",
                    result.as_str()
                ),
            );
            self.update(server, |status| status.observe_passive_failure(reason));
        }
    }

    /// Applies a health check's result, made through the pool's source `source`; returns
    /// whether the server is changing state (the next check then comes at the fast interval).
    /// A check that could not run for want of a local resource, or that failed through one
    /// source while another's checks pass, is shown but leaves the server's state alone.
    pub(crate) fn record_check(
        &self,
        server: &Server,
        source: usize,
        result: Result<(), Reason>,
        latency: Duration,
    ) -> bool {
        let Some(health) = &self.config.health else {
            return false;
        };
        let kind = result.as_ref().err().map_or("ok", |r| r.kind);
        server.metrics.count_check(kind);
        self.metrics.check_time.record(latency.as_secs_f64());
        let (rise, fall) = (health.rise, health.fall);
        let verdict = server.sources.observe_check(source, &result);
        let mut changing = false;
        self.update(server, |status| {
            status.last_check = Some(LastCheck {
                result: kind,
                detail: result.as_ref().err().map(|r| r.text.clone()),
                latency,
                at: SystemTime::now(),
            });
            if verdict == Verdict::SourceOnly {
                changing = status.changing();
                return None;
            }
            let change = status.observe_check(result, rise, fall);
            changing = status.changing();
            change
        });
        changing
    }

    /// Sets every address of the server named `name` draining (no new connections, open ones
    /// finish) or back to ready. The number of addresses changed; None: no such server.
    pub fn set_draining(&self, name: &str, draining: bool) -> Option<usize> {
        if !self.config.servers.iter().any(|s| s.name == name) {
            return None;
        }
        {
            let mut names = self.lock_draining();
            names.retain(|n| n != name);
            if draining {
                names.push(name.to_string());
            }
        }
        let mut changed = 0;
        for server in self.servers().iter().filter(|s| *s.name == *name) {
            self.update(server, |status| {
                if status.draining.is_some() != draining {
                    status.draining = draining.then(SystemTime::now);
                    changed += 1;
                }
                None
            });
        }
        if changed > 0 {
            tracing::info!(pool = %self.name, server = %name, "{} by an operator", if draining { "draining" } else { "ready" });
        }
        Some(changed)
    }

    /// Makes `addresses` the addresses of the DNS name `names[index]`: new ones become servers
    /// (checked before they get traffic when the pool has health checks), missing ones stop
    /// taking connections and leave the set once their connections have ended (closed after
    /// `dns_removed_grace` when it is set).
    pub(crate) fn set_addresses(
        self: &Arc<Self>,
        index: usize,
        addresses: &[IpAddr],
        why: &Reason,
    ) {
        let name = &self.names[index];
        let config = &self.config.servers[name.config_index];
        let guard = self.set_change.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.servers();
        let mut next: Vec<Arc<Server>> = Vec::with_capacity(current.len() + addresses.len());
        let mut removed = Vec::new();
        for server in current.iter() {
            let is_removed = server.is_removed();
            let ours = *server.name == *config.name && server.host.is_some();
            if ours && !is_removed && !addresses.contains(&server.addr.ip()) {
                removed.push(Arc::clone(server));
            }
            // Removed servers stay listed (state down, reason shown) until their last
            // connection has ended.
            let gone = is_removed || (ours && !addresses.contains(&server.addr.ip()));
            if !gone || server.active() > 0 {
                next.push(Arc::clone(server));
            }
        }
        let mut added = Vec::new();
        for ip in addresses {
            let addr = SocketAddr::new(*ip, name.port);
            let known = next
                .iter()
                .any(|s| *s.name == *config.name && s.addr == addr && !s.is_removed());
            if !known {
                // New addresses are checked before they take traffic, whatever init_state says.
                let health = if self.config.health.is_some() {
                    Health::Unknown
                } else {
                    Health::Up
                };
                let mut status = Status::new(health);
                if self.lock_draining().contains(&config.name) {
                    status.draining = Some(SystemTime::now());
                }
                let server = new_server(
                    &self.config,
                    (&self.egress, None),
                    config,
                    &self.server_metrics[&config.name],
                    addr,
                    Some(Arc::clone(&name.host)),
                    status,
                );
                {
                    let mut status = server.lock_status();
                    server.usable.store(status.usable(), Ordering::Relaxed);
                    status.was_usable |= status.usable();
                }
                if health == Health::Unknown {
                    self.pending.fetch_add(1, Ordering::AcqRel);
                }
                added.push(Arc::clone(&server));
                next.push(server);
            }
        }
        // Config order, then address order, so "first" and /status stay predictable.
        let order: HashMap<&str, usize> = self
            .config
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
        next.sort_by_key(|s| (order.get(&*s.name).copied().unwrap_or(usize::MAX), s.addr));
        self.servers.store(Arc::new(next));
        drop(guard);

        for server in &removed {
            tracing::info!(pool = %self.name, server = %server.name, address = %server.addr, active = server.active(), "address removed: {}", why.text);
            self.update(server, |status| {
                status.removed = Some((SystemTime::now(), why.clone()));
                None
            });
            if let Some(grace) = self.config.dns.removed_grace {
                let server = Arc::clone(server);
                tokio::spawn(async move {
                    tokio::time::sleep(grace).await;
                    if server.active() > 0 {
                        tracing::info!(server = %server.name, address = %server.addr, "dns_removed_grace over: closing {} connection(s)", server.active());
                    }
                    server.closing.send_replace(true);
                });
            }
        }
        for server in &added {
            tracing::info!(pool = %self.name, server = %server.name, address = %server.addr, "address added");
            if self.config.health.is_some() {
                crate::upstream::health::spawn(Arc::clone(self), Arc::clone(server));
            }
        }
        if let Some(gauge) = &self.server_metrics[&config.name].dns_addresses {
            gauge.set(addresses.len() as f64);
        }
        self.changed.send_modify(|n| *n += 1);
        self.publish();
    }

    fn lock_draining(&self) -> MutexGuard<'_, Vec<String>> {
        self.draining.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A name got its first DNS answer (good or bad): clients no longer wait for it.
    pub(crate) fn name_answered(&self) {
        self.pending.fetch_sub(1, Ordering::AcqRel);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Changes a server's state under its lock, then brings everything that derives from it
    /// up to date: the usable flag, slow start, the close signal, waiting clients, metrics, log.
    fn update(&self, server: &Server, change: impl FnOnce(&mut Status) -> Option<Change>) {
        let mut status = server.lock_status();
        let was_pending = status.health == Health::Unknown && status.removed.is_none();
        let shown_before = status.shown_state();
        let transition = change(&mut status);
        let shown_changed = status.shown_state() != shown_before;
        let is_pending = status.health == Health::Unknown && status.removed.is_none();
        let usable = status.usable();
        let was_usable = server.usable.swap(usable, Ordering::AcqRel);
        if usable && !was_usable {
            if status.was_usable && !self.config.slow_start.is_zero() {
                server.ramp_start.store(clock_ms() + 1, Ordering::Relaxed);
            }
            status.was_usable = true;
        }
        self.update_closing(server, &status);
        let reason = status.reason.as_ref().map(|r| r.text.clone());
        drop(status);

        if was_pending && !is_pending {
            self.pending.fetch_sub(1, Ordering::AcqRel);
        }
        if usable != was_usable || was_pending != is_pending {
            self.changed.send_modify(|n| *n += 1);
        }
        if let Some(Change { to, .. }) = transition {
            match to {
                Health::Up => {
                    tracing::info!(pool = %self.name, server = %server.name, address = %server.addr, "server up")
                }
                Health::Down => {
                    tracing::warn!(pool = %self.name, server = %server.name, address = %server.addr, "server down: {}", reason.as_deref().unwrap_or("-"))
                }
                Health::Unknown => {}
            }
        }
        if shown_changed {
            self.publish();
        }
    }

    /// `on_down = "close"`: a down server's connections close; they may stay once it is up.
    fn update_closing(&self, server: &Server, status: &Status) {
        if self.config.on_down == OnDown::Close && status.removed.is_none() {
            let close = status.health == Health::Down;
            server
                .closing
                .send_if_modified(|c| std::mem::replace(c, close) != close);
        }
    }

    /// Sets the per-server gauges: addresses in each state, and up = at least one up.
    fn publish(&self) {
        if *self.stop.borrow() {
            return;
        }
        let servers = self.servers();
        for (name, metrics) in &self.server_metrics {
            let mut counts = [0u32; SERVER_STATES.len()];
            for server in servers.iter().filter(|s| *s.name == **name) {
                let state = server.lock_status().shown_state();
                if let Some(i) = SERVER_STATES.iter().position(|s| *s == state) {
                    counts[i] += 1;
                }
            }
            for (gauge, count) in metrics.states.iter().zip(counts) {
                gauge.set(f64::from(count));
            }
            metrics.up.set(if counts[0] > 0 { 1.0 } else { 0.0 });
        }
    }

    /// Sets a server up or down as if checks had said so; for tests.
    #[cfg(test)]
    pub(crate) fn set_up(&self, server: &Server, up: bool) {
        self.update(server, |status| {
            status.health = if up { Health::Up } else { Health::Down };
            None
        });
    }
}

fn initial_health(config: &PoolConfig) -> Health {
    match &config.health {
        None => Health::Up,
        Some(h) if h.init_state == InitState::Up => Health::Up,
        Some(_) => Health::Unknown,
    }
}

/// `egress`: the pool's sources, and the slots a server that stays across a reload had.
fn new_server(
    pool: &PoolConfig,
    egress: (&Arc<Egress>, Option<Arc<Sources>>),
    config: &ServerConfig,
    metrics: &Arc<ServerMetrics>,
    addr: SocketAddr,
    host: Option<Arc<str>>,
    status: Status,
) -> Arc<Server> {
    let can_close =
        pool.on_down == OnDown::Close || (host.is_some() && pool.dns.removed_grace.is_some());
    Arc::new(Server {
        id: NEXT_SERVER_ID.fetch_add(1, Ordering::Relaxed),
        name: Arc::from(config.name.as_str()),
        host,
        addr,
        weight: config.weight,
        backup: config.backup,
        max_connections: config.max_connections,
        active: AtomicU32::new(0),
        usable: AtomicBool::new(false),
        status: Mutex::new(status),
        ramp_start: AtomicU64::new(0),
        slow_start: pool.slow_start,
        rr_current: AtomicI64::new(0),
        connect_failures: AtomicU32::new(0),
        closing: watch::Sender::new(false),
        can_close,
        sources: egress
            .1
            .unwrap_or_else(|| Arc::new(Sources::new(egress.0, &metrics.sources))),
        tls_client: pool.tls.as_ref().map(|tls| tls.for_server()),
        metrics: Arc::clone(metrics),
    })
}

/// The order in which servers are considered for a connection.
#[derive(Clone, Copy)]
enum Pass {
    UntriedPrimaries,
    UntriedBackups,
    /// Everything was tried: a retry on the same server beats giving up.
    AnyPrimary,
    AnyBackup,
}

impl Pass {
    const ALL: [Pass; 4] = [
        Pass::UntriedPrimaries,
        Pass::UntriedBackups,
        Pass::AnyPrimary,
        Pass::AnyBackup,
    ];

    fn admits(self, server: &Server, tried: &[ServerId]) -> bool {
        match self {
            Pass::UntriedPrimaries => !server.backup && !tried.contains(&server.id),
            Pass::UntriedBackups => server.backup && !tried.contains(&server.id),
            Pass::AnyPrimary => !server.backup,
            Pass::AnyBackup => server.backup,
        }
    }
}

#[cfg(test)]
mod tests;
