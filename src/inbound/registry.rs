//! The live-connection table: every connection being served now, as the admin API lists it
//! (`GET /connections`) and closes it (`POST /connections/{id}/close`).
//!
//! A session registers itself when it starts and fills its `Entry` in as it learns things: who
//! the client is, the route, the server, then its bytes and last-byte times while it relays.
//! The admin (on the control thread) reads entries; it never waits on a worker, and a worker
//! never waits on it:
//!
//! - Registering and deregistering take no lock and wake no thread. Each worker thread hands
//!   `Opened` and `Closed` events to the registry through a queue of its own (an unbounded
//!   lock-free `mpsc` queue, in a thread-local): a push is an atomic or two on memory only that
//!   worker writes. The control thread collects the queues into its table when the table is read,
//!   and once a second so the queues stay short.
//! - What changes while a connection relays is a few atomics in its entry, written by its session
//!   alone (relaxed stores, where it already looks at its byte counts: once per wake-up that moved
//!   bytes), read by the admin when asked. Nothing per byte.
//! - Closing by id sets a flag in the entry and wakes the session's task through the waker it
//!   left there (locked once when the relay starts, and by the admin when it closes).
//!
//! The table exists only when someone can read it: with no admin listener, `register` returns
//! None and costs nothing.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

use ipnet::IpNet;

use crate::observe::access_log::rfc3339;
use crate::protocol::vpce::VpceId;

/// Where a connection is on its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// PROXY header, TLS handshake (listener TLS), ClientHello (routes).
    Handshake = 0,
    /// Picking a server, connecting (with retries), PROXY header and TLS to the server.
    Connecting = 1,
    /// Relaying both ways.
    Relaying = 2,
    /// The client sent its FIN (passed on); the server's direction still flows.
    ClientFin = 3,
    /// The server sent its FIN (passed on); the client's direction still flows.
    ServerFin = 4,
}

impl Phase {
    pub const ALL: [Phase; 5] = [
        Phase::Handshake,
        Phase::Connecting,
        Phase::Relaying,
        Phase::ClientFin,
        Phase::ServerFin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Handshake => "handshake",
            Phase::Connecting => "connecting",
            Phase::Relaying => "relaying",
            Phase::ClientFin => "client_fin",
            Phase::ServerFin => "server_fin",
        }
    }

    fn from_u8(value: u8) -> Phase {
        Phase::ALL
            .get(usize::from(value))
            .copied()
            .unwrap_or(Phase::Handshake)
    }
}

/// How a relaying connection moves its bytes (`relay::Running::mode`), or `-` before it relays.
const MODES: [&str; 4] = ["-", "copy", "splice", "tls"];

/// Who the client is, once the PROXY header (if any) has been read.
struct Identity {
    client: SocketAddr,
    vpce: Option<VpceId>,
}

/// Where it is routed.
struct Route {
    sni: Option<Box<str>>,
    pool: Arc<str>,
}

/// The server it is connected to.
struct Upstream {
    server: Arc<str>,
    addr: SocketAddr,
}

/// One live connection. Written by its session only; read by the admin.
pub struct Entry {
    pub id: u64,
    pub listener: Arc<str>,
    started: Instant,
    identity: OnceLock<Identity>,
    route: OnceLock<Route>,
    upstream: OnceLock<Upstream>,
    /// The local address of the server socket (the egress address the server sees).
    source: OnceLock<SocketAddr>,
    phase: AtomicU8,
    /// Index into `MODES`.
    mode: AtomicU8,
    /// Payload bytes (client → server, server → client), as of the session's last look.
    bytes: [AtomicU64; 2],
    /// When each direction last moved a byte (or the relay started), in ms after `started`.
    last_byte_ms: [AtomicU64; 2],
    close: CloseRequest,
}

impl Entry {
    fn new(id: u64, listener: Arc<str>, started: Instant) -> Entry {
        Entry {
            id,
            listener,
            started,
            identity: OnceLock::new(),
            route: OnceLock::new(),
            upstream: OnceLock::new(),
            source: OnceLock::new(),
            phase: AtomicU8::new(Phase::Handshake as u8),
            mode: AtomicU8::new(0),
            bytes: [AtomicU64::new(0), AtomicU64::new(0)],
            last_byte_ms: [AtomicU64::new(0), AtomicU64::new(0)],
            close: CloseRequest::default(),
        }
    }

    pub fn set_identity(&self, client: SocketAddr, vpce: Option<&VpceId>) {
        let _ = self.identity.set(Identity {
            client,
            vpce: vpce.cloned(),
        });
    }

    pub fn set_route(&self, sni: Option<&str>, pool: &Arc<str>) {
        let _ = self.route.set(Route {
            sni: sni.map(Box::from),
            pool: Arc::clone(pool),
        });
    }

    pub fn set_upstream(&self, server: &Arc<str>, addr: SocketAddr) {
        let _ = self.upstream.set(Upstream {
            server: Arc::clone(server),
            addr,
        });
    }

    pub fn set_source(&self, source: SocketAddr) {
        let _ = self.source.set(source);
    }

    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Relaxed))
    }

    /// `mode`: "copy", "splice" or "tls".
    pub fn set_mode(&self, mode: &str) {
        let index = MODES.iter().position(|m| *m == mode).unwrap_or(0);
        self.mode.store(index as u8, Ordering::Relaxed);
    }

    /// The relay started `at`: the last-byte clocks of both directions start from it.
    pub fn set_relaying(&self, at: Instant) {
        let ms = self.ms_at(at);
        for last in &self.last_byte_ms {
            last.store(ms, Ordering::Relaxed);
        }
        self.set_phase(Phase::Relaying);
    }

    /// What the relay has moved so far, and when each direction last moved (None: not since
    /// the last call).
    pub fn set_progress(&self, bytes: (u64, u64), moved_at: [Option<Instant>; 2]) {
        self.bytes[0].store(bytes.0, Ordering::Relaxed);
        self.bytes[1].store(bytes.1, Ordering::Relaxed);
        for (last, at) in self.last_byte_ms.iter().zip(moved_at) {
            if let Some(at) = at {
                last.store(self.ms_at(at), Ordering::Relaxed);
            }
        }
    }

    fn ms_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.started).as_millis() as u64
    }

    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }

    pub fn client(&self) -> Option<SocketAddr> {
        self.identity.get().map(|i| i.client)
    }

    pub fn vpce(&self) -> Option<&str> {
        self.identity.get().and_then(|i| i.vpce.as_deref())
    }

    pub fn pool(&self) -> Option<&str> {
        self.route.get().map(|r| &*r.pool)
    }

    pub fn server(&self) -> Option<&str> {
        self.upstream.get().map(|u| &*u.server)
    }

    /// True once the admin asked this connection to close.
    pub fn closing(&self) -> bool {
        self.close.requested.load(Ordering::Acquire)
    }

    /// Asks the session to close the connection (`end=admin_closed`).
    fn request_close(&self) {
        self.close.requested.store(true, Ordering::Release);
        let waker = self.close.waker.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(waker) = waker.as_ref() {
            waker.wake_by_ref();
        }
    }

    /// Completes once the admin has asked this connection to close.
    pub fn close_requested(&self) -> CloseRequested<'_> {
        CloseRequested {
            entry: self,
            registered: None,
        }
    }

    /// The entry as `GET /connections` shows it; times relative to `now` (and `wall`, the same
    /// moment on the system clock).
    pub fn to_json(&self, now: Instant, wall: SystemTime) -> serde_json::Value {
        let age = self.age(now);
        let relaying = self.phase() as u8 >= Phase::Relaying as u8;
        let idle = |direction: usize| {
            relaying.then(|| {
                let last =
                    Duration::from_millis(self.last_byte_ms[direction].load(Ordering::Relaxed));
                round_ms(age.saturating_sub(last))
            })
        };
        let identity = self.identity.get();
        let route = self.route.get();
        let upstream = self.upstream.get();
        serde_json::json!({
            "id": self.id,
            "listener": &*self.listener,
            "client": identity.map(|i| i.client.to_string()),
            "vpce": identity.and_then(|i| i.vpce.as_deref()),
            "sni": route.and_then(|r| r.sni.as_deref()),
            "pool": route.map(|r| &*r.pool),
            "server": upstream.map(|u| &*u.server),
            "server_addr": upstream.map(|u| u.addr.to_string()),
            "source": self.source.get().map(|s| s.to_string()),
            "since": rfc3339(wall.checked_sub(age).unwrap_or(wall)),
            "age_s": round_ms(age),
            "bytes_c2s": self.bytes[0].load(Ordering::Relaxed),
            "bytes_s2c": self.bytes[1].load(Ordering::Relaxed),
            "idle_c2s_s": idle(0),
            "idle_s2c_s": idle(1),
            "mode": MODES[usize::from(self.mode.load(Ordering::Relaxed)).min(MODES.len() - 1)],
            "phase": self.phase().as_str(),
            "closing": self.closing(),
        })
    }
}

/// Seconds with millisecond precision, for JSON.
fn round_ms(d: Duration) -> f64 {
    d.as_millis() as f64 / 1e3
}

#[derive(Default)]
struct CloseRequest {
    requested: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

/// The future of `Entry::close_requested`: cheap to poll on every wake-up of a relay (an atomic
/// load and a waker comparison); the waker is stored once per task.
pub struct CloseRequested<'a> {
    entry: &'a Entry,
    registered: Option<Waker>,
}

impl Future for CloseRequested<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if !this
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            let waker = cx.waker().clone();
            // Stored before the flag is read: a close requested after this store wakes the
            // task; one requested before it is seen below.
            *this
                .entry
                .close
                .waker
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(waker.clone());
            this.registered = Some(waker);
        }
        if this.entry.closing() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// What a worker tells the registry.
enum Event {
    Opened(Arc<Entry>),
    Closed(u64),
}

/// A worker thread's way into one registry.
struct WorkerQueue {
    registry: u64,
    worker: u64,
    next: u64,
    events: Sender<Event>,
}

thread_local! {
    /// One per registry this thread has registered connections with (one, in the daemon).
    static QUEUES: RefCell<Vec<WorkerQueue>> = const { RefCell::new(Vec::new()) };
}

/// Connection ids are numbered per worker thread, so workers never share a counter: the n-th
/// connection of worker w (of `stride`) is `(n - 1) * stride + w + 1`, small numbers that
/// interleave. A thread beyond `stride` (none in the daemon, whose workers are known) numbers
/// its connections from `2^48 * (w + 1)` up. Both stay below 2^53, so JavaScript reads them
/// exactly.
fn connection_id(worker: u64, stride: u64, n: u64) -> u64 {
    if worker < stride {
        (n - 1) * stride + worker + 1
    } else {
        ((worker + 1) << 48) + n
    }
}

/// Distinguishes registries in the workers' thread-locals (tests run several in one process).
static NEXT_REGISTRY: AtomicU64 = AtomicU64::new(1);

/// Every live connection of the process (see the module doc).
pub struct Registry {
    key: u64,
    enabled: bool,
    /// Worker threads that have registered a connection so far.
    workers: AtomicU64,
    /// How many worker threads are expected (the id scheme's stride).
    stride: u64,
    /// One queue per worker thread; locked by the collector and once per new worker thread.
    queues: Mutex<Vec<Receiver<Event>>>,
    /// The connections, by id; only the control thread locks it (collecting and reading).
    table: Mutex<HashMap<u64, Arc<Entry>>>,
}

/// A session's place in the registry; its drop takes the connection out.
pub struct Registration {
    entry: Arc<Entry>,
    registry: u64,
}

impl Registration {
    pub fn entry(&self) -> &Arc<Entry> {
        &self.entry
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let id = self.entry.id;
        // On the thread that registered (a session never leaves its worker). If the thread-local
        // is already gone (the thread is exiting), the collector finds the entry orphaned.
        let _ = QUEUES.try_with(|queues| {
            if let Some(queue) = queues.borrow().iter().find(|q| q.registry == self.registry) {
                let _ = queue.events.send(Event::Closed(id));
            }
        });
    }
}

/// Which connections `select` returns.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub listener: Option<String>,
    pub pool: Option<String>,
    pub server: Option<String>,
    /// The client (PROXY source) is in this network.
    pub client: Option<IpNet>,
    pub vpce: Option<String>,
    pub phase: Option<Phase>,
}

impl Filter {
    pub fn matches(&self, entry: &Entry) -> bool {
        let same = |wanted: &Option<String>, actual: Option<&str>| {
            wanted.as_deref().is_none_or(|w| actual == Some(w))
        };
        same(&self.listener, Some(&entry.listener))
            && same(&self.pool, entry.pool())
            && same(&self.server, entry.server())
            && same(&self.vpce, entry.vpce())
            && self.client.is_none_or(|net| {
                entry
                    .client()
                    .is_some_and(|c| net.contains(&c.ip().to_canonical()))
            })
            && self.phase.is_none_or(|p| entry.phase() == p)
    }
}

/// The order of `select`'s answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// Oldest first: the longest-lived connections.
    #[default]
    Longest,
    /// Youngest first.
    Newest,
}

/// What `select` found.
pub struct Selection {
    /// Connections in the table.
    pub total: usize,
    /// Of those, how many match the filter.
    pub matched: usize,
    /// The first `limit` of them in the order asked.
    pub entries: Vec<Arc<Entry>>,
}

impl Registry {
    /// `enabled`: false when nothing can read the table (no admin listener); `workers`: the
    /// threads that will register connections.
    pub fn new(enabled: bool, workers: usize) -> Arc<Registry> {
        Arc::new(Registry {
            key: NEXT_REGISTRY.fetch_add(1, Ordering::Relaxed),
            enabled,
            workers: AtomicU64::new(0),
            stride: workers.max(1) as u64,
            queues: Mutex::new(Vec::new()),
            table: Mutex::new(HashMap::new()),
        })
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Enters a connection accepted at `started` on `listener`; None when the table is off.
    pub fn register(&self, listener: &Arc<str>, started: Instant) -> Option<Registration> {
        if !self.enabled {
            return None;
        }
        QUEUES.with(|queues| {
            let mut queues = queues.borrow_mut();
            let index = match queues.iter().position(|q| q.registry == self.key) {
                Some(index) => index,
                None => {
                    let (events, receiver) = channel();
                    lock(&self.queues).push(receiver);
                    queues.push(WorkerQueue {
                        registry: self.key,
                        worker: self.workers.fetch_add(1, Ordering::Relaxed),
                        next: 0,
                        events,
                    });
                    queues.len() - 1
                }
            };
            let queue = &mut queues[index];
            queue.next += 1;
            let id = connection_id(queue.worker, self.stride, queue.next);
            let entry = Arc::new(Entry::new(id, Arc::clone(listener), started));
            queue.events.send(Event::Opened(Arc::clone(&entry))).ok()?;
            Some(Registration {
                entry,
                registry: self.key,
            })
        })
    }

    /// Brings the table up to date with what the workers queued; returns it, locked.
    fn collect(&self) -> MutexGuard<'_, HashMap<u64, Arc<Entry>>> {
        let mut table = lock(&self.table);
        let queues = lock(&self.queues);
        // A connection opens and closes on one thread, so its two events are in one queue, in
        // order.
        for queue in queues.iter() {
            while let Ok(event) = queue.try_recv() {
                match event {
                    Event::Opened(entry) => {
                        table.insert(entry.id, entry);
                    }
                    Event::Closed(id) => {
                        table.remove(&id);
                    }
                }
            }
        }
        table
    }

    /// Collects the workers' queues, so they stay short while nobody reads the table; the
    /// daemon calls it every second.
    pub fn tidy(&self) {
        let mut table = self.collect();
        // Entries whose session ended without saying so (its thread was exiting).
        table.retain(|_, entry| Arc::strong_count(entry) > 1);
    }

    /// Connections open now.
    pub fn len(&self) -> usize {
        self.collect()
            .values()
            .filter(|e| Arc::strong_count(e) > 1)
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The connections matching `filter`, oldest or newest first, at most `limit`.
    pub fn select(&self, filter: &Filter, order: Order, limit: usize) -> Selection {
        let (total, mut found) = {
            let table = self.collect();
            let found: Vec<Arc<Entry>> = table
                .values()
                .filter(|e| Arc::strong_count(e) > 1 && filter.matches(e))
                .cloned()
                .collect();
            (table.len(), found)
        };
        let matched = found.len();
        let key = |e: &Arc<Entry>| (e.started, e.id);
        let compare = |a: &Arc<Entry>, b: &Arc<Entry>| match order {
            Order::Longest => key(a).cmp(&key(b)),
            Order::Newest => key(b).cmp(&key(a)),
        };
        if limit < found.len() {
            if limit > 0 {
                found.select_nth_unstable_by(limit - 1, compare);
            }
            found.truncate(limit);
        }
        found.sort_unstable_by(compare);
        Selection {
            total,
            matched,
            entries: found,
        }
    }

    /// Asks connection `id` to close; its entry, or None if no such connection is open.
    pub fn close(&self, id: u64) -> Option<Arc<Entry>> {
        let entry = self.collect().get(&id).cloned()?;
        if Arc::strong_count(&entry) <= 2 {
            // Only the table and this copy: the session has ended.
            return None;
        }
        entry.request_close();
        Some(entry)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn ids_interleave_and_never_meet() {
        assert_eq!(
            [(0, 1), (1, 1), (0, 2), (1, 2), (0, 3)].map(|(w, n)| connection_id(w, 2, n)),
            [1, 2, 3, 4, 5]
        );
        assert_eq!(connection_id(0, 1, 7), 7);
        let beyond = connection_id(2, 2, 1);
        assert!(beyond > connection_id(1, 2, 1 << 40) && beyond < 1 << 53);
    }

    #[test]
    fn a_disabled_registry_registers_nothing() {
        let registry = Registry::new(false, 2);
        assert!(registry.register(&name("l"), Instant::now()).is_none());
        assert!(registry.is_empty());
    }

    #[test]
    fn connections_come_and_go() {
        let registry = Registry::new(true, 2);
        let a = registry.register(&name("a"), Instant::now()).unwrap();
        let b = registry.register(&name("b"), Instant::now()).unwrap();
        assert_ne!(a.entry().id, b.entry().id);
        assert_eq!(registry.len(), 2);
        drop(a);
        assert_eq!(registry.len(), 1);
        let selection = registry.select(&Filter::default(), Order::Longest, 10);
        assert_eq!(selection.entries.len(), 1);
        assert_eq!(&*selection.entries[0].listener, "b");
        drop(b);
        registry.tidy();
        assert!(registry.is_empty());
    }

    #[test]
    fn workers_number_their_connections_apart() {
        let registry = Registry::new(true, 2);
        let here = registry.register(&name("l"), Instant::now()).unwrap();
        let registry2 = Arc::clone(&registry);
        let there =
            std::thread::spawn(move || registry2.register(&name("l"), Instant::now()).unwrap())
                .join()
                .unwrap();
        assert_eq!((here.entry().id, there.entry().id), (1, 2));
        assert_eq!(registry.len(), 2);
        // Dropped on another thread than it was registered on (a session never is): its close
        // may be collected before its opening, and the entry is known closed all the same.
        drop(there);
        assert_eq!(registry.len(), 1);
        registry.tidy();
        assert_eq!(lock(&registry.table).len(), 1);
        drop(here);
        assert!(registry.is_empty());
    }

    #[test]
    fn filters_and_orders() {
        let registry = Registry::new(true, 2);
        let t0 = Instant::now();
        let pool = name("p");
        let entries: Vec<Registration> = (0..5u8)
            .map(|i| {
                let r = registry
                    .register(
                        &name(if i % 2 == 0 { "even" } else { "odd" }),
                        t0 + Duration::from_secs(u64::from(i)),
                    )
                    .unwrap();
                r.entry().set_identity(
                    SocketAddr::from(([10, 0, 0, i], 1000)),
                    (i == 3)
                        .then(|| VpceId::parse("vpce-0123").unwrap())
                        .as_ref(),
                );
                r.entry().set_route(None, &pool);
                r.entry().set_upstream(
                    &name(&format!("s{}", i % 2)),
                    "127.0.0.1:1".parse().unwrap(),
                );
                r
            })
            .collect();
        let ids = |s: Selection| -> Vec<u64> { s.entries.iter().map(|e| e.id).collect() };
        let all: Vec<u64> = entries.iter().map(|r| r.entry().id).collect();

        let longest = registry.select(&Filter::default(), Order::Longest, 2);
        assert_eq!((longest.total, longest.matched), (5, 5));
        assert_eq!(ids(longest), [all[0], all[1]]);
        assert_eq!(
            ids(registry.select(&Filter::default(), Order::Newest, 3)),
            [all[4], all[3], all[2]]
        );
        assert_eq!(
            registry
                .select(&Filter::default(), Order::Newest, 0)
                .entries
                .len(),
            0
        );

        let odd = Filter {
            listener: Some("odd".into()),
            ..Filter::default()
        };
        assert_eq!(
            ids(registry.select(&odd, Order::Longest, 10)),
            [all[1], all[3]]
        );
        let by_server = Filter {
            server: Some("s0".into()),
            ..Filter::default()
        };
        assert_eq!(
            ids(registry.select(&by_server, Order::Longest, 10)),
            [all[0], all[2], all[4]]
        );
        let by_client = Filter {
            client: Some("10.0.0.2/31".parse().unwrap()),
            ..Filter::default()
        };
        assert_eq!(
            ids(registry.select(&by_client, Order::Longest, 10)),
            [all[2], all[3]]
        );
        let by_vpce = Filter {
            vpce: Some("vpce-0123".into()),
            pool: Some("p".into()),
            ..Filter::default()
        };
        assert_eq!(ids(registry.select(&by_vpce, Order::Longest, 10)), [all[3]]);
        let by_pool = Filter {
            pool: Some("other".into()),
            ..Filter::default()
        };
        assert_eq!(registry.select(&by_pool, Order::Longest, 10).matched, 0);
        let by_phase = Filter {
            phase: Some(Phase::Handshake),
            ..Filter::default()
        };
        assert_eq!(registry.select(&by_phase, Order::Longest, 10).matched, 5);
    }

    #[test]
    fn the_json_says_what_the_session_published() {
        let registry = Registry::new(true, 2);
        let t0 = Instant::now();
        let r = registry.register(&name("l"), t0).unwrap();
        let entry = r.entry();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let json = entry.to_json(t0 + Duration::from_secs(1), wall);
        assert_eq!(json["phase"], "handshake");
        assert_eq!(json["client"], serde_json::Value::Null);
        assert_eq!(json["idle_s2c_s"], serde_json::Value::Null);
        assert_eq!(json["since"], "1970-01-01T00:01:39.000Z");

        entry.set_identity("10.0.0.9:4000".parse().unwrap(), None);
        entry.set_route(Some("api.example"), &name("p"));
        entry.set_upstream(&name("s"), "10.1.0.1:443".parse().unwrap());
        entry.set_source("10.2.0.1:40000".parse().unwrap());
        entry.set_relaying(t0 + Duration::from_secs(2));
        entry.set_mode("splice");
        entry.set_progress((10, 0), [Some(t0 + Duration::from_secs(3)), None]);
        let json = entry.to_json(t0 + Duration::from_millis(7500), wall);
        assert_eq!(json["phase"], "relaying");
        assert_eq!(json["mode"], "splice");
        assert_eq!(json["client"], "10.0.0.9:4000");
        assert_eq!(json["sni"], "api.example");
        assert_eq!(json["server_addr"], "10.1.0.1:443");
        assert_eq!(json["source"], "10.2.0.1:40000");
        assert_eq!(json["bytes_c2s"], 10);
        assert_eq!(json["age_s"], 7.5);
        assert_eq!(json["idle_c2s_s"], 4.5);
        assert_eq!(json["idle_s2c_s"], 5.5);
        assert_eq!(json["closing"], false);
    }

    #[tokio::test]
    async fn a_close_request_wakes_the_waiting_session() {
        let registry = Registry::new(true, 2);
        let r = registry.register(&name("l"), Instant::now()).unwrap();
        let id = r.entry().id;
        let entry = Arc::clone(r.entry());
        let waiting = tokio::spawn(async move {
            entry.close_requested().await;
            r
        });
        tokio::task::yield_now().await;
        assert!(registry.close(id + 1000).is_none(), "no such connection");
        assert!(registry.close(id).is_some());
        let r = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken in time")
            .unwrap();
        assert!(r.entry().closing());
        drop(r);
        assert!(
            registry.close(id).is_none(),
            "closed connections cannot be closed again"
        );
    }
}
