//! The live-connection table: every connection relaying now, as the admin API lists it
//! (`GET /connections`) and closes it (`POST /connections/{id}/close`), and as the drain closes
//! what is still open at its deadline.
//!
//! A session registers itself when it starts relaying, with what it knows by then (the client,
//! its VPC endpoint, the route, the server), and keeps its `Entry`'s bytes and last-byte times
//! up to date. The control thread reads entries; it never waits on a worker, and a worker never
//! waits on it:
//!
//! - Registering and deregistering take no lock and wake no thread. Each worker thread hands
//!   `Opened` and `Closed` events to the registry through a queue of its own (an unbounded
//!   lock-free `mpsc` queue, in a thread-local): a push is an atomic or two on memory only that
//!   worker writes. The control thread collects the queues into its table when the table is read,
//!   and a few times a second so the queues stay short.
//! - What changes while a connection relays is a few atomics in its entry, written by its session
//!   alone (relaxed stores, where it already looks at its byte counts: once per wake-up that moved
//!   bytes), read when asked. Nothing per byte.
//! - Closing sets the reason in the entry and wakes the session's task through the waker it left
//!   there (stored once when the relay starts; locked again only by whoever closes it).
//!
//! Closing through the table is also how the drain ends the connections still open at its
//! deadline (`close_all`), so a session needs no watcher of its own for that.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

use ipnet::IpNet;

use crate::observe::access_log::rfc3339;
use crate::protocol::vpce::VpceId;

/// Where a relaying connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Both directions flow.
    Relaying = 0,
    /// The client sent its FIN (passed on); the server's direction still flows.
    ClientFin = 1,
    /// The server sent its FIN (passed on); the client's direction still flows.
    ServerFin = 2,
}

impl Phase {
    pub const ALL: [Phase; 3] = [Phase::Relaying, Phase::ClientFin, Phase::ServerFin];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Relaying => "relaying",
            Phase::ClientFin => "client_fin",
            Phase::ServerFin => "server_fin",
        }
    }

    /// The phase of a relay whose ended directions (client → server, server → client) are
    /// `done`.
    pub fn of(done: (bool, bool)) -> Phase {
        match done {
            (true, false) => Phase::ClientFin,
            (false, true) => Phase::ServerFin,
            _ => Phase::Relaying,
        }
    }

    fn from_u8(value: u8) -> Phase {
        Phase::ALL
            .get(usize::from(value))
            .copied()
            .unwrap_or(Phase::Relaying)
    }
}

/// How a relaying connection moves its bytes (`relay::Running::mode`).
const MODES: [&str; 3] = ["copy", "splice", "tls"];

/// Why a connection is asked to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CloseReason {
    /// `POST /connections/{id}/close`.
    Admin = 1,
    /// Still open at the drain deadline.
    Drain = 2,
}

/// What a session knows when it starts relaying: its entry's fixed part.
pub struct Connection {
    pub listener: Arc<str>,
    /// When it was accepted.
    pub started: Instant,
    /// The real client: the PROXY header's source when there was one.
    pub client: SocketAddr,
    pub vpce: Option<VpceId>,
    pub sni: Option<Box<str>>,
    pub pool: Arc<str>,
    pub server: Arc<str>,
    pub server_addr: SocketAddr,
}

/// One relaying connection. Written by its session only; read by the control thread.
pub struct Entry {
    pub id: u64,
    pub connection: Connection,
    /// The local address of the server socket (the egress address the server sees).
    source: OnceLock<SocketAddr>,
    phase: AtomicU8,
    /// Index into `MODES`.
    mode: AtomicU8,
    /// A `CloseReason`, or 0.
    close: AtomicU8,
    /// When each direction last moved a byte (or the relay started), in ms after `started`.
    last_byte_ms: [AtomicU32; 2],
    /// Payload bytes (client → server, server → client), as of the session's last look.
    bytes: [AtomicU64; 2],
    /// The session's task, to wake when it must close.
    waker: Mutex<Option<Waker>>,
}

impl Entry {
    fn new(id: u64, connection: Connection, relaying_since: Instant) -> Entry {
        let since = ms_between(connection.started, relaying_since);
        Entry {
            id,
            connection,
            source: OnceLock::new(),
            phase: AtomicU8::new(Phase::Relaying as u8),
            mode: AtomicU8::new(0),
            close: AtomicU8::new(0),
            last_byte_ms: [AtomicU32::new(since), AtomicU32::new(since)],
            bytes: [AtomicU64::new(0), AtomicU64::new(0)],
            waker: Mutex::new(None),
        }
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

    /// What the relay has moved so far, and when each direction last moved (None: not since
    /// the last call).
    pub fn set_progress(&self, bytes: (u64, u64), moved_at: [Option<Instant>; 2]) {
        self.bytes[0].store(bytes.0, Ordering::Relaxed);
        self.bytes[1].store(bytes.1, Ordering::Relaxed);
        for (last, at) in self.last_byte_ms.iter().zip(moved_at) {
            if let Some(at) = at {
                last.store(ms_between(self.connection.started, at), Ordering::Relaxed);
            }
        }
    }

    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.connection.started)
    }

    /// The reason it was asked to close, if it was.
    pub fn closing(&self) -> Option<CloseReason> {
        match self.close.load(Ordering::Acquire) {
            1 => Some(CloseReason::Admin),
            2 => Some(CloseReason::Drain),
            _ => None,
        }
    }

    /// Asks the session to close the connection; the first reason given stands.
    fn request_close(&self, reason: CloseReason) {
        let _ = self
            .close
            .compare_exchange(0, reason as u8, Ordering::AcqRel, Ordering::Acquire);
        if let Some(waker) = lock(&self.waker).as_ref() {
            waker.wake_by_ref();
        }
    }

    /// Completes, with the reason, once the connection is asked to close.
    pub fn close_requested(&self) -> CloseRequested<'_> {
        CloseRequested {
            entry: Some(self),
            registered: None,
        }
    }

    /// The entry as `GET /connections` shows it; times relative to `now` (and `wall`, the same
    /// moment on the system clock).
    pub fn to_json(&self, now: Instant, wall: SystemTime) -> serde_json::Value {
        let c = &self.connection;
        let age = self.age(now);
        let silent = |direction: usize| {
            let last = self.last_byte_ms[direction].load(Ordering::Relaxed);
            seconds(age.saturating_sub(Duration::from_millis(u64::from(last))))
        };
        serde_json::json!({
            "id": self.id,
            "listener": &*c.listener,
            "client": c.client.to_string(),
            "vpce": c.vpce.as_deref(),
            "sni": c.sni.as_deref(),
            "pool": &*c.pool,
            "server": &*c.server,
            "server_addr": c.server_addr.to_string(),
            "source": self.source.get().map(|s| s.to_string()),
            "since": rfc3339(wall.checked_sub(age).unwrap_or(wall)),
            "age_s": seconds(age),
            "bytes_c2s": self.bytes[0].load(Ordering::Relaxed),
            "bytes_s2c": self.bytes[1].load(Ordering::Relaxed),
            "idle_c2s_s": silent(0),
            "idle_s2c_s": silent(1),
            "mode": MODES[usize::from(self.mode.load(Ordering::Relaxed)).min(MODES.len() - 1)],
            "phase": self.phase().as_str(),
            "closing": self.closing().is_some(),
        })
    }
}

/// Milliseconds from `from` to `to`, saturating (49 days fit).
fn ms_between(from: Instant, to: Instant) -> u32 {
    u32::try_from(to.saturating_duration_since(from).as_millis()).unwrap_or(u32::MAX)
}

/// Seconds with millisecond precision, for JSON.
fn seconds(d: Duration) -> f64 {
    d.as_millis() as f64 / 1e3
}

/// The future of `Entry::close_requested` (or of none, never completing): cheap to poll on
/// every wake-up of a relay, an atomic load and a waker comparison; the waker is stored once
/// per task.
pub struct CloseRequested<'a> {
    entry: Option<&'a Entry>,
    registered: Option<Waker>,
}

impl CloseRequested<'_> {
    /// For a connection without an entry.
    pub fn never() -> CloseRequested<'static> {
        CloseRequested {
            entry: None,
            registered: None,
        }
    }
}

impl Future for CloseRequested<'_> {
    type Output = CloseReason;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<CloseReason> {
        let this = self.get_mut();
        let Some(entry) = this.entry else {
            return Poll::Pending;
        };
        if !this
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            let waker = cx.waker().clone();
            // Stored before the reason is read: a close asked after this store wakes the task;
            // one asked before it is seen below.
            *lock(&entry.waker) = Some(waker.clone());
            this.registered = Some(waker);
        }
        match entry.closing() {
            Some(reason) => Poll::Ready(reason),
            None => Poll::Pending,
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

/// Every relaying connection of the process (see the module doc).
pub struct Registry {
    key: u64,
    /// Worker threads that have registered a connection so far.
    workers: AtomicU64,
    /// How many worker threads are expected (the id scheme's stride).
    stride: u64,
    /// One queue per worker thread; locked by the collector and once per new worker thread.
    queues: Mutex<Vec<Receiver<Event>>>,
    /// The connections, by id; only the control thread locks it (collecting and reading).
    table: Mutex<HashMap<u64, Arc<Entry>>>,
    /// Set once the drain closes everything: connections that start relaying later are closed
    /// as soon as they are collected.
    closing_all: AtomicBool,
}

/// A session's place in the registry; its drop takes the connection out.
pub struct Registration {
    entry: Arc<Entry>,
    registry: u64,
}

impl Registration {
    pub fn entry(&self) -> &Entry {
        &self.entry
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let id = self.entry.id;
        // On the thread that registered (a session never leaves its worker). Should the
        // thread-local be gone already (the thread is exiting), readers still skip the entry:
        // nobody but the table holds it.
        let _ = QUEUES.try_with(|queues| {
            if let Some(queue) = queues.borrow().iter().find(|q| q.registry == self.registry) {
                let _ = queue.events.send(Event::Closed(id));
            }
        });
    }
}

/// An entry the table still holds whose session has ended without saying so.
fn ended(entry: &Arc<Entry>) -> bool {
    Arc::strong_count(entry) == 1
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
        let c = &entry.connection;
        let same = |wanted: &Option<String>, actual: Option<&str>| {
            wanted.as_deref().is_none_or(|w| actual == Some(w))
        };
        same(&self.listener, Some(&c.listener))
            && same(&self.pool, Some(&c.pool))
            && same(&self.server, Some(&c.server))
            && same(&self.vpce, c.vpce.as_deref())
            && self
                .client
                .is_none_or(|net| net.contains(&c.client.ip().to_canonical()))
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
    /// Connections relaying now.
    pub total: usize,
    /// Of those, how many match the filter.
    pub matched: usize,
    /// The first `limit` of them in the order asked.
    pub entries: Vec<Arc<Entry>>,
}

impl Registry {
    /// `workers`: the threads that will register connections.
    pub fn new(workers: usize) -> Arc<Registry> {
        Arc::new(Registry {
            key: NEXT_REGISTRY.fetch_add(1, Ordering::Relaxed),
            workers: AtomicU64::new(0),
            stride: workers.max(1) as u64,
            queues: Mutex::new(Vec::new()),
            table: Mutex::new(HashMap::new()),
            closing_all: AtomicBool::new(false),
        })
    }

    /// Enters a connection that starts relaying at `now`. None only if the registry is gone.
    pub fn register(&self, connection: Connection, now: Instant) -> Option<Registration> {
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
            let entry = Arc::new(Entry::new(id, connection, now));
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
                        if self.closing_all.load(Ordering::Relaxed) {
                            entry.request_close(CloseReason::Drain);
                        }
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

    /// Collects the workers' queues, so they stay short (and closed connections' entries are
    /// freed) while nobody reads the table; the daemon calls it a few times a second.
    pub fn tidy(&self) {
        drop(self.collect());
    }

    /// Connections relaying now.
    pub fn len(&self) -> usize {
        self.collect().values().filter(|e| !ended(e)).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The connections matching `filter`, oldest or newest first, at most `limit`.
    pub fn select(&self, filter: &Filter, order: Order, limit: usize) -> Selection {
        let (total, mut found) = {
            let mut table = self.collect();
            table.retain(|_, e| !ended(e));
            let found: Vec<Arc<Entry>> = table
                .values()
                .filter(|e| filter.matches(e))
                .cloned()
                .collect();
            (table.len(), found)
        };
        let matched = found.len();
        let key = |e: &Arc<Entry>| (e.connection.started, e.id);
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

    /// Asks connection `id` to close; its entry, or None if no such connection is relaying.
    pub fn close(&self, id: u64) -> Option<Arc<Entry>> {
        let entry = self.collect().get(&id).filter(|e| !ended(e)).cloned()?;
        entry.request_close(CloseReason::Admin);
        Some(entry)
    }

    /// The drain's last step: asks every relaying connection to close (`end=drain_deadline`),
    /// one after the other in random order, evenly over `spread`, so their clients do not all
    /// reconnect at once; then, at once, every connection that starts relaying later (it was
    /// still being set up). Runs until dropped.
    pub async fn close_all(&self, spread: Duration) {
        let start = tokio::time::Instant::now();
        let mut order: Vec<Arc<Entry>> = {
            let table = self.collect();
            self.closing_all.store(true, Ordering::Relaxed);
            table.values().filter(|e| !ended(e)).cloned().collect()
        };
        fastrand::shuffle(&mut order);
        let mut closed = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        loop {
            tick.tick().await;
            let share = if spread.is_zero() {
                1.0
            } else {
                (start.elapsed().as_secs_f64() / spread.as_secs_f64()).min(1.0)
            };
            let due = ((order.len() as f64 * share).ceil() as usize).min(order.len());
            for entry in &order[closed..due] {
                entry.request_close(CloseReason::Drain);
            }
            closed = due;
            // Latecomers are closed as they are collected.
            self.tidy();
        }
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

    fn connection(listener: &str, started: Instant, client: SocketAddr) -> Connection {
        Connection {
            listener: name(listener),
            started,
            client,
            vpce: None,
            sni: None,
            pool: name("p"),
            server: name("s0"),
            server_addr: "127.0.0.1:1".parse().unwrap(),
        }
    }

    fn register(registry: &Registry, listener: &str) -> Registration {
        let now = Instant::now();
        registry
            .register(
                connection(listener, now, "10.0.0.1:1".parse().unwrap()),
                now,
            )
            .unwrap()
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
    fn connections_come_and_go() {
        let registry = Registry::new(2);
        let a = register(&registry, "a");
        let b = register(&registry, "b");
        assert_ne!(a.entry().id, b.entry().id);
        assert_eq!(registry.len(), 2);
        drop(a);
        assert_eq!(registry.len(), 1);
        let selection = registry.select(&Filter::default(), Order::Longest, 10);
        assert_eq!(selection.entries.len(), 1);
        assert_eq!(&*selection.entries[0].connection.listener, "b");
        drop(selection);
        drop(b);
        registry.tidy();
        assert!(lock(&registry.table).is_empty(), "closed entries are freed");
    }

    #[test]
    fn workers_number_their_connections_apart() {
        let registry = Registry::new(2);
        let here = register(&registry, "l");
        let registry2 = Arc::clone(&registry);
        let there = std::thread::spawn(move || register(&registry2, "l"))
            .join()
            .unwrap();
        assert_eq!((here.entry().id, there.entry().id), (1, 2));
        assert_eq!(registry.len(), 2);
        // Dropped on another thread than it was registered on (a session never is): its close
        // may be collected before its opening, and the entry is known ended all the same.
        drop(there);
        assert_eq!(registry.len(), 1);
        drop(here);
        assert!(registry.is_empty());
    }

    #[test]
    fn filters_and_orders() {
        let registry = Registry::new(2);
        let t0 = Instant::now();
        let entries: Vec<Registration> = (0..5u8)
            .map(|i| {
                let started = t0 + Duration::from_secs(u64::from(i));
                let mut c = connection(
                    if i % 2 == 0 { "even" } else { "odd" },
                    started,
                    SocketAddr::from(([10, 0, 0, i], 1000)),
                );
                c.vpce = (i == 3).then(|| VpceId::parse("vpce-0123").unwrap());
                c.server = name(&format!("s{}", i % 2));
                registry.register(c, started).unwrap()
            })
            .collect();
        entries[4].entry().set_phase(Phase::ClientFin);
        let ids = |s: Selection| -> Vec<u64> { s.entries.iter().map(|e| e.id).collect() };
        let all: Vec<u64> = entries.iter().map(|r| r.entry().id).collect();
        let only = |f: fn(&mut Filter)| {
            let mut filter = Filter::default();
            f(&mut filter);
            ids(registry.select(&filter, Order::Longest, 10))
        };

        let longest = registry.select(&Filter::default(), Order::Longest, 2);
        assert_eq!((longest.total, longest.matched), (5, 5));
        assert_eq!(ids(longest), [all[0], all[1]]);
        assert_eq!(
            ids(registry.select(&Filter::default(), Order::Newest, 3)),
            [all[4], all[3], all[2]]
        );
        assert!(registry
            .select(&Filter::default(), Order::Newest, 0)
            .entries
            .is_empty());
        assert_eq!(only(|f| f.listener = Some("odd".into())), [all[1], all[3]]);
        assert_eq!(
            only(|f| f.server = Some("s0".into())),
            [all[0], all[2], all[4]]
        );
        assert_eq!(
            only(|f| f.client = Some("10.0.0.2/31".parse().unwrap())),
            [all[2], all[3]]
        );
        assert_eq!(
            only(|f| {
                f.vpce = Some("vpce-0123".into());
                f.pool = Some("p".into());
            }),
            [all[3]]
        );
        assert!(only(|f| f.pool = Some("other".into())).is_empty());
        assert_eq!(only(|f| f.phase = Some(Phase::ClientFin)), [all[4]]);
    }

    #[test]
    fn the_json_says_what_the_session_published() {
        let registry = Registry::new(1);
        let t0 = Instant::now();
        let mut c = connection("l", t0, "10.0.0.9:4000".parse().unwrap());
        c.sni = Some("api.example".into());
        c.server_addr = "10.1.0.1:443".parse().unwrap();
        let r = registry.register(c, t0 + Duration::from_secs(2)).unwrap();
        let entry = r.entry();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let json = entry.to_json(t0 + Duration::from_secs(3), wall);
        assert_eq!(json["since"], "1970-01-01T00:01:37.000Z");
        assert_eq!(
            json["idle_s2c_s"], 1.0,
            "counted from the start of the relay"
        );
        assert_eq!(json["source"], serde_json::Value::Null);

        entry.set_source("10.2.0.1:40000".parse().unwrap());
        entry.set_mode("splice");
        entry.set_phase(Phase::ServerFin);
        entry.set_progress((10, 0), [Some(t0 + Duration::from_secs(3)), None]);
        let json = entry.to_json(t0 + Duration::from_millis(7500), wall);
        assert_eq!(json["phase"], "server_fin");
        assert_eq!(json["mode"], "splice");
        assert_eq!(json["client"], "10.0.0.9:4000");
        assert_eq!(json["sni"], "api.example");
        assert_eq!(json["vpce"], serde_json::Value::Null);
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
        let registry = Registry::new(1);
        let r = register(&registry, "l");
        let id = r.entry().id;
        let waiting = tokio::spawn(async move {
            let reason = r.entry().close_requested().await;
            (reason, r)
        });
        tokio::task::yield_now().await;
        assert!(registry.close(id + 1000).is_none(), "no such connection");
        assert!(registry.close(id).is_some());
        let (reason, r) = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken in time")
            .unwrap();
        assert_eq!(reason, CloseReason::Admin);
        assert_eq!(r.entry().closing(), Some(CloseReason::Admin));
        drop(r);
        assert!(
            registry.close(id).is_none(),
            "closed connections cannot be closed again"
        );
        let never = CloseRequested::never();
        assert!(tokio::time::timeout(Duration::from_millis(20), never)
            .await
            .is_err());
    }

    #[tokio::test]
    async fn the_drain_closes_everyone_spread_out_and_latecomers_at_once() {
        let registry = Registry::new(1);
        let early: Vec<Registration> = (0..100).map(|_| register(&registry, "l")).collect();
        let closing =
            |set: &[Registration]| set.iter().filter(|r| r.entry().closing().is_some()).count();
        let spread = Duration::from_millis(1000);
        let started = Instant::now();
        let drain = {
            let registry = Arc::clone(&registry);
            tokio::spawn(async move { registry.close_all(spread).await })
        };
        tokio::time::sleep(Duration::from_millis(400)).await;
        // The share closed follows the time passed (whenever the closer got to run).
        let (share, elapsed) = (closing(&early), started.elapsed());
        assert!(share < 100, "all closed at once");
        assert!(
            share as f64 <= (elapsed.as_secs_f64() / spread.as_secs_f64() * 100.0).ceil(),
            "{share} closed after {elapsed:?}"
        );
        let late = register(&registry, "l");
        let deadline = Instant::now() + Duration::from_secs(5);
        while late.entry().closing().is_none() || closing(&early) < 100 {
            assert!(
                Instant::now() < deadline,
                "not all closed: {}",
                closing(&early)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            started.elapsed() >= Duration::from_millis(990),
            "closed faster than the spread"
        );
        assert_eq!(late.entry().closing(), Some(CloseReason::Drain));
        assert!(early
            .iter()
            .all(|r| r.entry().closing() == Some(CloseReason::Drain)));
        drain.abort();
    }
}
