//! Diagnostics on stderr through `tracing`; `RUST_LOG` overrides the config's `log_level`.
//! (The access log, one line per connection, goes elsewhere: see `access_log`.)
//!
//! Logging never blocks the thread that logs. A formatted line goes into a bounded queue, and a
//! thread of its own (`stderr`) writes it; that thread may wait on a stderr nobody reads, no
//! worker does. When the queue is full the line is dropped and counted
//! (`l4relay_diagnostics_dropped_total`), and once stderr takes lines again the writer says how
//! many were lost. Why a thread rather than non-blocking writes: fd 2's open file description
//! is shared (with the shell or supervisor that started us, often with stdout of the same pipe),
//! and setting `O_NONBLOCK` on it would change it for all of them; `MSG_DONTWAIT` works only on
//! sockets and reopening `/proc/self/fd/2` only on pipes, while one thread handles every kind
//! of stderr alike. Diagnostics are few (repeats are limited, below), so handing a line to
//! another thread costs nothing that matters.
//!
//! Repeats: a warning about one connection (an event with a `client` field: "no server
//! available", a failed TLS handshake to a server) can come once per connection during an
//! outage. Of one cause (the same place in the code, the same fields but `client`), the first
//! in a 10 s window is shown and the others are counted (`l4relay_diagnostics_suppressed_total`)
//! and summarised when the window ends: "no server available listener=a pool=p: 1,532 more
//! times in the last 10 s". Every connection still has its access-log line.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use tracing::callsite::Identifier;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::observe::access_log::Rfc3339;
use crate::observe::telemetry;

/// Lines waiting for stderr before new ones are dropped.
const QUEUE: usize = 1024;
/// How long repeats of one cause are counted before they are summarised.
const WINDOW: Duration = Duration::from_secs(10);
/// Causes tracked at once; beyond, new causes are shown unlimited (the queue still bounds them).
const CAUSES: usize = 1024;
/// How often the writer looks for windows that have ended.
const SWEEP: Duration = Duration::from_secs(1);

/// The field that makes an event one about a single connection.
const CLIENT: &str = "client";

static DIAGNOSTICS: OnceLock<Arc<Diagnostics>> = OnceLock::new();

pub fn init(config_level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(config_level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let diagnostics = Diagnostics::start();
    let _ = DIAGNOSTICS.set(Arc::clone(&diagnostics));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(Queued(Arc::clone(&diagnostics)))
        .with_ansi(ansi)
        .with_target(false);
    tracing_subscriber::registry()
        .with(filter)
        .with(Repeats(diagnostics))
        .with(fmt)
        .init();
}

/// Writes what is queued (and the summaries of repeats counted so far), waiting at most
/// `limit`: the last thing before the process exits.
pub fn flush(limit: Duration) {
    if let Some(d) = DIAGNOSTICS.get() {
        let summaries = d.windows.sweep(None);
        if !summaries.is_empty() {
            d.send(summaries);
        }
        d.wait_written(limit);
    }
}

struct Diagnostics {
    queue: SyncSender<Vec<u8>>,
    /// Lines queued so far; `written` catches up with it.
    queued: AtomicU64,
    written: Mutex<u64>,
    written_changed: Condvar,
    /// Lines dropped because the queue was full.
    dropped: AtomicU64,
    windows: Windows,
}

impl Diagnostics {
    fn start() -> Arc<Diagnostics> {
        let (queue, lines) = sync_channel(QUEUE);
        let d = Arc::new(Diagnostics {
            queue,
            queued: AtomicU64::new(0),
            written: Mutex::new(0),
            written_changed: Condvar::new(),
            dropped: AtomicU64::new(0),
            windows: Windows::default(),
        });
        let writer = Arc::clone(&d);
        let started = std::thread::Builder::new()
            .name("stderr".into())
            .spawn(move || writer.write_lines(lines, Stderr));
        if let Err(e) = started {
            // Nothing is written then, and every line counts as dropped; say it the only way
            // left.
            eprintln!("l4relay: cannot start the stderr writer thread: {e}");
        }
        d
    }

    /// Queues a line without waiting: dropped and counted if the queue is full.
    fn send(&self, line: Vec<u8>) {
        match self.queue.try_send(line) {
            Ok(()) => {
                self.queued.fetch_add(1, Ordering::Release);
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(telemetry::DIAGNOSTICS_DROPPED).increment(1);
            }
        }
    }

    fn wait_written(&self, limit: Duration) {
        let target = self.queued.load(Ordering::Acquire);
        let deadline = Instant::now() + limit;
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        while *written < target {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            written = self
                .written_changed
                .wait_timeout(written, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The writer thread: batches what is queued into one write, adds the summaries of ended
    /// windows and, once the queue is empty again, how many lines were dropped.
    fn write_lines(&self, lines: Receiver<Vec<u8>>, mut out: impl Out) {
        let mut batch = Vec::with_capacity(64 << 10);
        let mut reported = 0;
        loop {
            batch.clear();
            let mut count = 0u64;
            let mut drained = true;
            match lines.recv_timeout(SWEEP) {
                Ok(line) => {
                    batch.extend_from_slice(&line);
                    count += 1;
                    while batch.len() < 64 << 10 {
                        match lines.try_recv() {
                            Ok(line) => {
                                batch.extend_from_slice(&line);
                                count += 1;
                            }
                            Err(_) => break,
                        }
                    }
                    drained = batch.len() < 64 << 10;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            batch.extend_from_slice(&self.windows.sweep(Some(Instant::now())));
            let dropped = self.dropped.load(Ordering::Relaxed);
            if drained && dropped > reported {
                let _ = writeln!(
                    Utf8(&mut batch),
                    "{} {:>5} {} diagnostic line(s) dropped: stderr was not taking them \
                     (l4relay_diagnostics_dropped_total)",
                    Rfc3339(SystemTime::now()),
                    "WARN",
                    thousands(dropped - reported)
                );
                reported = dropped;
            }
            metrics::counter!(telemetry::DIAGNOSTICS_SUPPRESSED)
                .absolute(self.windows.suppressed.load(Ordering::Relaxed));
            if !batch.is_empty() {
                out.write_all(&batch);
            }
            if count > 0 {
                let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
                *written += count;
                self.written_changed.notify_all();
            }
        }
    }
}

/// Where the writer thread writes: stderr, or a buffer in tests.
trait Out {
    /// Writes all of `bytes`, waiting as long as it takes; gives up on an error.
    fn write_all(&mut self, bytes: &[u8]);
}

struct Stderr;

impl Out for Stderr {
    fn write_all(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            // SAFETY: `bytes` is valid for its length; fd 2 is the process's stderr.
            let n = unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
            if n > 0 {
                bytes = &bytes[n as usize..];
                continue;
            }
            let error = io::Error::last_os_error();
            match error.kind() {
                io::ErrorKind::Interrupted => {}
                // Someone else made the shared description non-blocking: wait for room.
                io::ErrorKind::WouldBlock => {
                    let mut pfd = libc::pollfd {
                        fd: 2,
                        events: libc::POLLOUT,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd.
                    unsafe { libc::poll(&mut pfd, 1, 1000) };
                }
                // Closed or broken: nowhere to say it.
                _ => return,
            }
        }
    }
}

/// The `MakeWriter` of the fmt layer: each event, formatted, becomes one queued line.
struct Queued(Arc<Diagnostics>);

impl<'a> MakeWriter<'a> for Queued {
    type Writer = QueuedLine<'a>;

    fn make_writer(&'a self) -> QueuedLine<'a> {
        QueuedLine(&self.0)
    }
}

struct QueuedLine<'a>(&'a Diagnostics);

impl io::Write for QueuedLine<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.send(buf.to_vec());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The layer that holds back repeats of a per-connection warning.
struct Repeats(Arc<Diagnostics>);

impl<S: Subscriber> Layer<S> for Repeats {
    fn event_enabled(&self, event: &Event<'_>, _: Context<'_, S>) -> bool {
        let meta = event.metadata();
        // Level order: ERROR < WARN < INFO; only warnings and errors about one connection.
        if *meta.level() > Level::WARN || meta.fields().field(CLIENT).is_none() {
            return true;
        }
        let mut cause = CauseHash(DefaultHasher::new());
        event.record(&mut cause);
        let key = (meta.callsite(), cause.0.finish());
        let admitted = self
            .0
            .windows
            .admit(key, *meta.level(), Instant::now(), || describe(event));
        if let Some(summary) = admitted.summary {
            self.0.send(summary);
        }
        admitted.show
    }
}

/// Repeats counted per cause, each in its window.
#[derive(Default)]
struct Windows {
    open: Mutex<HashMap<(Identifier, u64), Window>>,
    suppressed: AtomicU64,
}

struct Window {
    started: Instant,
    until: Instant,
    level: Level,
    /// The cause, as the summary names it: the message and the fields but `client`.
    what: String,
    suppressed: u64,
}

struct Admitted {
    show: bool,
    /// The summary of this cause's previous window, if it ended with repeats not yet said.
    summary: Option<Vec<u8>>,
}

impl Windows {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(Identifier, u64), Window>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn admit(
        &self,
        key: (Identifier, u64),
        level: Level,
        now: Instant,
        what: impl FnOnce() -> String,
    ) -> Admitted {
        let mut open = self.lock();
        let mut summary = None;
        if let Some(window) = open.get_mut(&key) {
            if now < window.until {
                window.suppressed += 1;
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                return Admitted {
                    show: false,
                    summary: None,
                };
            }
            if window.suppressed > 0 {
                let mut line = Vec::new();
                window.summarise(&mut line, now);
                summary = Some(line);
            }
            window.started = now;
            window.until = now + WINDOW;
            window.suppressed = 0;
        } else if open.len() < CAUSES {
            open.insert(
                key,
                Window {
                    started: now,
                    until: now + WINDOW,
                    level,
                    what: what(),
                    suppressed: 0,
                },
            );
        }
        Admitted {
            show: true,
            summary,
        }
    }

    /// Closes the windows that ended by `now` (all of them, for None), returning the summary
    /// lines of those with repeats.
    fn sweep(&self, now: Option<Instant>) -> Vec<u8> {
        let mut out = Vec::new();
        self.lock().retain(|_, window| {
            let ended = now.is_none_or(|now| now >= window.until);
            if ended && window.suppressed > 0 {
                window.summarise(&mut out, now.unwrap_or_else(Instant::now));
            }
            !ended
        });
        out
    }
}

impl Window {
    /// "...: 1,532 more time(s) in the last 10 s": the window's length, or less if it was
    /// cut short (at exit).
    fn summarise(&self, out: &mut Vec<u8>, now: Instant) {
        let seconds = now.saturating_duration_since(self.started).min(WINDOW);
        let _ = writeln!(
            Utf8(out),
            "{} {:>5} {}: {} more time(s) in the last {} s, not shown (one line per cause every \
             {} s; every connection has its access-log line)",
            Rfc3339(SystemTime::now()),
            self.level.as_str(),
            self.what,
            thousands(self.suppressed),
            seconds.as_secs().max(1),
            WINDOW.as_secs(),
        );
    }
}

/// Hashes an event's fields, `client` aside: its cause.
struct CauseHash(DefaultHasher);

impl Visit for CauseHash {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() != CLIENT {
            field.name().hash(&mut self.0);
            value.hash(&mut self.0);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() != CLIENT {
            field.name().hash(&mut self.0);
            let _ = write!(HashWriter(&mut self.0), "{value:?}");
        }
    }
}

struct HashWriter<'a>(&'a mut DefaultHasher);

impl fmt::Write for HashWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.write(s.as_bytes());
        Ok(())
    }
}

/// The message and the fields but `client`, as the fmt layer shows them.
fn describe(event: &Event<'_>) -> String {
    struct Describe(String, String);
    impl Visit for Describe {
        fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
            match field.name() {
                "message" => {
                    let _ = write!(self.0, "{value:?}");
                }
                CLIENT => {}
                name => {
                    let _ = write!(self.1, " {name}={value:?}");
                }
            }
        }
    }
    let mut d = Describe(String::new(), String::new());
    event.record(&mut d);
    d.0 + &d.1
}

/// 1532 as "1,532".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `fmt::Write` into a byte buffer.
struct Utf8<'a>(&'a mut Vec<u8>);

impl fmt::Write for Utf8<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1532), "1,532");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn levels_order_as_the_filter_assumes() {
        assert!(Level::INFO > Level::WARN);
        assert!(Level::ERROR < Level::WARN);
    }

    /// A writer that keeps what it is given, for the fmt layer in tests.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Out for Captured {
        fn write_all(&mut self, bytes: &[u8]) {
            self.0.lock().unwrap().extend_from_slice(bytes);
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// A subscriber like `init`'s, whose writer thread writes into `Captured`.
    fn subscriber(captured: &Captured) -> (impl Subscriber + Send + Sync, Arc<Diagnostics>) {
        let (queue, lines) = sync_channel(QUEUE);
        let d = Arc::new(Diagnostics {
            queue,
            queued: AtomicU64::new(0),
            written: Mutex::new(0),
            written_changed: Condvar::new(),
            dropped: AtomicU64::new(0),
            windows: Windows::default(),
        });
        let (writer, out) = (Arc::clone(&d), captured.clone());
        std::thread::spawn(move || writer.write_lines(lines, out));
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(Queued(Arc::clone(&d)))
            .with_ansi(false)
            .with_target(false);
        let subscriber = tracing_subscriber::registry()
            .with(EnvFilter::new("info"))
            .with(Repeats(Arc::clone(&d)))
            .with(fmt);
        (subscriber, d)
    }

    #[test]
    fn repeats_of_a_per_connection_warning_are_shown_once_then_summarised() {
        let captured = Captured::default();
        let (subscriber, d) = subscriber(&captured);
        tracing::subscriber::with_default(subscriber, || {
            for port in 0..1532 {
                let client = format!("10.0.0.1:{port}");
                tracing::warn!(pool = "aoai", client = %client, "no server available");
                tracing::warn!(pool = "other", client = %client, "no server available");
            }
            // Not about a connection: never held back.
            for _ in 0..3 {
                tracing::error!("reload: 1 error(s) in l4relay.toml");
            }
        });
        let summaries = d.windows.sweep(None);
        d.send(summaries);
        d.wait_written(Duration::from_secs(10));
        let text = captured.text();
        let shown = |what: &str| text.lines().filter(|l| l.contains(what)).count();
        assert_eq!(shown("pool=\"aoai\""), 2, "{text}");
        assert_eq!(shown("pool=\"other\""), 2, "{text}");
        assert_eq!(shown("reload: 1 error(s)"), 3, "{text}");
        let summary = text
            .lines()
            .find(|l| l.contains("1,531 more time(s)") && l.contains("pool=\"aoai\""))
            .unwrap_or_else(|| panic!("no summary:\n{text}"));
        assert!(summary.contains(" WARN no server available"), "{summary}");
        assert!(!summary.contains("10.0.0.1"), "{summary}");
        assert_eq!(d.windows.suppressed.load(Ordering::Relaxed), 2 * 1531);
    }

    #[test]
    fn a_cause_is_shown_again_when_its_window_has_ended() {
        let windows = Windows::default();
        let key = |n| (tracing::callsite::Identifier(&CALLSITE), n);
        let t0 = Instant::now();
        let admit = |n, at| windows.admit(key(n), Level::WARN, at, || "boom".into());
        assert!(admit(1, t0).show);
        assert!(!admit(1, t0 + Duration::from_secs(1)).show);
        assert!(admit(2, t0 + Duration::from_secs(1)).show, "another cause");
        let again = admit(1, t0 + WINDOW);
        assert!(again.show);
        let summary = String::from_utf8(again.summary.unwrap()).unwrap();
        assert!(summary.contains("boom: 1 more time(s)"), "{summary}");
        // Nothing held back in the new window: nothing to summarise at its end.
        assert!(windows.sweep(Some(t0 + WINDOW * 3)).is_empty());
        assert!(windows.lock().is_empty());
    }

    static CALLSITE: TestCallsite = TestCallsite;
    static TEST_METADATA: tracing::Metadata<'static> = tracing::Metadata::new(
        "test",
        "l4relay",
        tracing::Level::WARN,
        None,
        None,
        None,
        tracing::field::FieldSet::new(&[], tracing::callsite::Identifier(&CALLSITE)),
        tracing::metadata::Kind::EVENT,
    );
    struct TestCallsite;
    impl tracing::Callsite for TestCallsite {
        fn set_interest(&self, _: tracing::subscriber::Interest) {}
        fn metadata(&self) -> &tracing::Metadata<'_> {
            &TEST_METADATA
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_and_says_so_once_it_drains() {
        let (queue, lines) = sync_channel(2);
        let d = Diagnostics {
            queue,
            queued: AtomicU64::new(0),
            written: Mutex::new(0),
            written_changed: Condvar::new(),
            dropped: AtomicU64::new(0),
            windows: Windows::default(),
        };
        // Nobody writes yet: two lines fit, the rest are dropped.
        for i in 0..5 {
            d.send(format!("line {i}\n").into_bytes());
        }
        assert_eq!(d.dropped.load(Ordering::Relaxed), 3);
        let d = Arc::new(d);
        let captured = Captured::default();
        let (writer, out) = (Arc::clone(&d), captured.clone());
        std::thread::spawn(move || writer.write_lines(lines, out));
        d.wait_written(Duration::from_secs(10));
        let reported = eventually_contains(&captured, "3 diagnostic line(s) dropped");
        assert!(reported, "{}", captured.text());
        assert!(captured.text().starts_with("line 0\nline 1\n"));
    }

    fn eventually_contains(captured: &Captured, what: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if captured.text().contains(what) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}
