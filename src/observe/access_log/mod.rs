//! The access log: one line per client connection, written when it closes.
//!
//! A connection's line is formatted on its worker, into that worker's own buffer (a
//! thread-local: sessions never leave their worker, so no lock and no wake-up of anything per
//! connection). The buffer is written in one system call when it passes `access_log_buffer`,
//! and by a timer on the worker every `access_log_flush` (so an idle relay shows its lines
//! within that time), as nginx's `access_log ... buffer= flush=` does; and at exit, when each
//! worker writes what it holds before the process ends.
//!
//! Writes never wait (see `sink`). While the sink is full, a worker keeps its lines, up to
//! `HOLD` buffers, then drops new ones; a failed write (the reader gone, a full disk) drops
//! the lines it held. Either way the lines are counted (`l4relay_access_log_dropped_total`),
//! said once on stderr, and said again when the sink takes lines again; the log goes on.

mod format;
mod sink;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::runtime::Handle;

use crate::observe::telemetry;
use crate::protocol::vpce::VpceId;
pub use format::Rfc3339;
use sink::{Flushed, Pending, Sink};
pub use sink::{Target, JOURNAL_SOCKET};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
    Off,
}

/// How the access log is written (`[global] log_format`, `log_skip_empty`, `access_log*`).
#[derive(Debug, Clone)]
pub struct Settings {
    pub format: LogFormat,
    /// Leave out connections that carried no payload either way.
    pub skip_empty: bool,
    pub target: Target,
    /// A worker writes its buffer when it holds this many bytes...
    pub buffer: usize,
    /// ...or when this long has passed.
    pub flush: Duration,
}

/// While the sink is full, a worker holds up to this many buffers' worth of lines before it
/// drops new ones.
const HOLD: usize = 16;

/// Everything known about a connection when it ends.
#[derive(Debug, Clone)]
pub struct Record {
    pub start: SystemTime,
    pub listener: Arc<str>,
    pub client: SocketAddr,
    /// The client as the PROXY header named it, when there was one.
    pub vpce: Option<VpceId>,
    pub sni: Option<Box<str>>,
    pub pool: Option<Arc<str>>,
    pub server: Option<Arc<str>>,
    pub server_addr: Option<SocketAddr>,
    pub connect_time: Option<Duration>,
    pub duration: Duration,
    pub bytes_client_to_server: u64,
    pub bytes_server_to_client: u64,
    /// How it ended: client_closed, server_closed, client_reset, idle_timeout, ...
    pub end: &'static str,
    /// The finer reason for refusals and PROXY header errors (which rule, which limit, ...).
    pub detail: Option<&'static str>,
}

#[derive(Clone)]
pub struct AccessLog {
    inner: Option<Arc<Inner>>,
    skip_empty: bool,
    /// Kept for `dropped()` when the log is off (always 0 then).
    dropped: Arc<AtomicU64>,
}

struct Inner {
    format: LogFormat,
    sink: Sink,
    buffer: usize,
    flush: Duration,
    dropped: Arc<AtomicU64>,
    /// A write failed and none has succeeded since; `dropped` when it began.
    failing: AtomicBool,
    failing_since: AtomicU64,
    /// Lines are dropped because the sink stays full; `dropped` when that began.
    overflowing: AtomicBool,
    overflowing_since: AtomicU64,
}

impl AccessLog {
    /// Opens the target (unless the format is `Off`); an error says why it cannot be used.
    pub fn start(settings: &Settings) -> Result<AccessLog, String> {
        let dropped = Arc::new(AtomicU64::new(0));
        if settings.format == LogFormat::Off {
            return Ok(AccessLog {
                inner: None,
                skip_empty: settings.skip_empty,
                dropped,
            });
        }
        let sink = Sink::open(settings.target.clone()).map_err(|e| match &settings.target {
            Target::Journald => {
                format!("access_log = \"journald\": cannot reach journald at {JOURNAL_SOCKET}: {e}")
            }
            target => format!("access_log: cannot open {target}: {e}"),
        })?;
        Ok(AccessLog {
            inner: Some(Arc::new(Inner {
                format: settings.format,
                sink,
                buffer: settings.buffer,
                flush: settings.flush,
                dropped: Arc::clone(&dropped),
                failing: AtomicBool::new(false),
                failing_since: AtomicU64::new(0),
                overflowing: AtomicBool::new(false),
                overflowing_since: AtomicU64::new(0),
            })),
            skip_empty: settings.skip_empty,
            dropped,
        })
    }

    /// Adds the connection's line to this worker's buffer.
    pub fn log(&self, record: Record) {
        let Some(inner) = &self.inner else { return };
        if self.skip_empty
            && record.bytes_client_to_server == 0
            && record.bytes_server_to_client == 0
        {
            return;
        }
        with_local(inner, |local| local.push(&record));
    }

    /// Starts the timer that writes a worker's buffer every `access_log_flush`; it lasts as
    /// long as the worker's runtime. Lines logged on a thread without one are written at once.
    pub fn start_flushing(&self, worker: &Handle) {
        let Some(inner) = self.inner.clone() else {
            return;
        };
        worker.spawn(async move {
            with_local(&inner, |local| local.timed = true);
            let mut every = tokio::time::interval(inner.flush);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                with_local(&inner, Local::flush);
            }
        });
    }

    /// Reopens a file target (SIGUSR1, after logrotate moved it); Ok(None) when the log goes
    /// elsewhere or is off.
    pub fn reopen(&self) -> std::io::Result<Option<PathBuf>> {
        let Some(inner) = &self.inner else {
            return Ok(None);
        };
        let reopened = inner.sink.reopen()?.map(|p| p.to_path_buf());
        // A new file is a fresh start for a sink that was failing (a removed directory).
        if reopened.is_some() {
            inner.recovered();
        }
        Ok(reopened)
    }

    /// Where the log goes: None when it is off.
    pub fn target(&self) -> Option<&Target> {
        self.inner.as_ref().map(|i| i.sink.target())
    }

    /// Lines dropped: the sink full for too long, or failing.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Writes what this thread's buffer holds, waiting up to `limit` for room if the sink is full:
/// a worker's last act before it exits. What is still left then is counted as dropped.
pub fn flush_thread(limit: Duration) {
    let deadline = std::time::Instant::now() + limit;
    LOCAL.with(|cell| {
        let Ok(mut slot) = cell.try_borrow_mut() else {
            return;
        };
        let Some(local) = slot.as_mut() else { return };
        loop {
            local.flush();
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let done = local.pending.lines == 0 && !local.blocked;
            if done || left.is_zero() || !local.log.sink.wait_writable(left) {
                break;
            }
        }
        if local.pending.lines > 0 {
            let n = local.pending.lines;
            local.log.dropped.fetch_add(n as u64, Ordering::Relaxed);
            tracing::warn!(
                "access log: {n} line(s) not written at exit: {} did not take them within {limit:?}",
                local.log.sink.target()
            );
            local.pending = Pending::default();
        }
    });
}

/// One worker's lines, waiting to be written.
struct Local {
    log: Arc<Inner>,
    pending: Pending,
    /// The sink was full at the last attempt: wait for the timer before trying again.
    blocked: bool,
    /// A flush timer runs on this thread.
    timed: bool,
    /// Journald: the line, before it becomes the entry's MESSAGE.
    message: Vec<u8>,
}

thread_local! {
    static LOCAL: RefCell<Option<Local>> = const { RefCell::new(None) };
}

/// Runs `f` on this thread's buffer for `log`, making it if needed.
fn with_local(log: &Arc<Inner>, f: impl FnOnce(&mut Local)) {
    LOCAL.with(|cell| {
        let Ok(mut slot) = cell.try_borrow_mut() else {
            // Only reachable by logging from within a flush; nothing does.
            log.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let current = slot.as_ref().is_some_and(|l| Arc::ptr_eq(&l.log, log));
        if !current {
            // Another access log's (tests start several): write its lines first.
            if let Some(old) = slot.as_mut() {
                old.flush();
            }
            *slot = Some(Local {
                log: Arc::clone(log),
                pending: Pending {
                    buf: Vec::with_capacity(log.buffer + 4096),
                    ..Pending::default()
                },
                blocked: false,
                timed: false,
                message: Vec::new(),
            });
        }
        if let Some(local) = slot.as_mut() {
            f(local);
        }
    });
}

impl Local {
    fn push(&mut self, record: &Record) {
        let log = &*self.log;
        if self.pending.buf.len() >= log.buffer.saturating_mul(HOLD) {
            log.overflow();
            return;
        }
        let buf = &mut self.pending.buf;
        if log.sink.is_journal() {
            self.message.clear();
            line(log.format, record, &mut self.message);
            format::journal(record, &self.message, buf);
            self.pending.ends.push(buf.len());
        } else {
            line(log.format, record, buf);
            buf.push(b'\n');
        }
        self.pending.lines += 1;
        let full = buf.len() >= log.buffer;
        if !self.timed || (full && !self.blocked) {
            self.flush();
        }
    }

    /// Writes what this worker holds; after a full sink, this is the timer's retry.
    fn flush(&mut self) {
        if self.pending.lines == 0 && !self.blocked {
            return;
        }
        let had = self.pending.lines;
        match self.log.sink.flush(&mut self.pending) {
            Flushed::Done => {
                self.blocked = false;
                self.log.recovered();
                if had > 0 {
                    self.log.drained();
                }
            }
            Flushed::Full => {
                self.blocked = true;
                self.log.recovered();
            }
            Flushed::Failed { error, dropped } => {
                self.blocked = false;
                self.log.failed(&error, dropped);
            }
        }
    }
}

fn line(format: LogFormat, record: &Record, out: &mut Vec<u8>) {
    match format {
        LogFormat::Json => format::json(record, out),
        LogFormat::Text | LogFormat::Off => format::text(record, out),
    }
}

impl Inner {
    /// A write failed: the lines are counted, and the first failure of a run is said.
    fn failed(&self, error: &std::io::Error, lines: usize) {
        let before = self.dropped.fetch_add(lines as u64, Ordering::Relaxed);
        metrics::counter!(telemetry::ACCESS_LOG_WRITE_ERRORS).increment(1);
        if !self.failing.swap(true, Ordering::AcqRel) {
            self.failing_since.store(before, Ordering::Relaxed);
            tracing::error!(
                "access log: cannot write to {}: {error}; dropping its lines (counted in \
                 l4relay_access_log_dropped_total) until it takes them again",
                self.sink.target()
            );
        }
    }

    /// A write succeeded: if writes were failing, say that they no longer are.
    fn recovered(&self) {
        if self.failing.load(Ordering::Relaxed) && self.failing.swap(false, Ordering::AcqRel) {
            let lost =
                self.dropped.load(Ordering::Relaxed) - self.failing_since.load(Ordering::Relaxed);
            tracing::warn!(
                "access log: {} takes lines again; {lost} line(s) dropped meanwhile",
                self.sink.target()
            );
        }
    }

    /// A worker's hold is full: the line is dropped and counted, the first of a run said.
    fn overflow(&self) {
        let before = self.dropped.fetch_add(1, Ordering::Relaxed);
        if !self.overflowing.load(Ordering::Relaxed)
            && !self.overflowing.swap(true, Ordering::AcqRel)
        {
            self.overflowing_since.store(before, Ordering::Relaxed);
            tracing::warn!(
                "access log: {} is not taking lines as fast as they come: dropping new ones \
                 (counted in l4relay_access_log_dropped_total) until it catches up",
                self.sink.target()
            );
        }
    }

    /// A worker wrote all it held: if lines were being dropped, say how many.
    fn drained(&self) {
        if self.overflowing.load(Ordering::Relaxed)
            && self.overflowing.swap(false, Ordering::AcqRel)
        {
            let lost = self.dropped.load(Ordering::Relaxed)
                - self.overflowing_since.load(Ordering::Relaxed);
            tracing::warn!(
                "access log: {} caught up; {lost} line(s) dropped meanwhile",
                self.sink.target()
            );
        }
    }
}

/// UTC time as 2026-11-24T01:55:12.123Z.
pub fn rfc3339(time: SystemTime) -> String {
    Rfc3339(time).to_string()
}
