//! `latency`: request latency over persistent connections.
//!
//! Open loop (`--rate R`): request j of the run is due at `start + j/R`, and
//! connection c sends requests j ≡ c (mod C), so the aggregate load is evenly
//! spaced. Latency is measured from a request's *intended* send time, not from
//! when it was actually written: if the relay stalls, requests that should have
//! gone out during the stall are charged the time they waited, instead of
//! silently not being sent (coordinated omission). Requests may therefore be
//! pipelined on a connection; replies come back in order, so each reply is
//! matched to the oldest outstanding request.
//!
//! Sends are timed with a timerfd per connection: tokio's timers have 1 ms
//! granularity, which would add up to a millisecond of phantom latency to
//! every request on a loopback path that takes tens of microseconds.
//!
//! Closed loop (`--rate 0`): each connection sends the next request as soon as
//! the previous reply arrives; this finds the saturation req/s.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::net::{within, BResult, BenchError, Dialer, ErrKind, ErrorCounts};
use crate::procfs::mono_ns;
use crate::report::{new_histogram, Percentiles, Report, Table};
use crate::run::{join_all, stop_pair, ActiveGuard, Coordinator, Stop, Woke};
use crate::units::{fmt_duration, per_sec};
use crate::{protocol, ClientCtx, CpuMark};

pub struct LatencyConfig {
    pub connections: usize,
    /// Requests per second over all connections; 0 = closed loop.
    pub rate: u64,
    pub duration: Duration,
    pub warmup: Duration,
    pub size: u32,
}

const NS: u64 = 1_000_000_000;
/// Most requests written in one syscall when a connection is behind schedule.
const MAX_BATCH: u64 = 64;
const RECONNECT_BACKOFF: Duration = Duration::from_millis(50);

/// The open-loop send schedule of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub start_ns: u64,
    pub rate: u64,
    pub conns: u64,
    pub conn: u64,
}

impl Schedule {
    /// Intended send time of this connection's i-th request. Computed from
    /// the global index rather than by adding an interval, so rounding never
    /// accumulates into drift.
    pub fn intended(&self, i: u64) -> u64 {
        let j = (self.conn + i * self.conns) as u128;
        self.start_ns + (j * NS as u128 / self.rate as u128) as u64
    }

    /// Index of this connection's first request due at or after `t`.
    pub fn first_at_or_after(&self, t: u64) -> u64 {
        if t <= self.start_ns {
            return 0;
        }
        let j = ((t - self.start_ns) as u128 * self.rate as u128 / NS as u128) as u64;
        let mut i = j.saturating_sub(self.conn) / self.conns;
        while self.intended(i) < t {
            i += 1;
        }
        while i > 0 && self.intended(i - 1) >= t {
            i -= 1;
        }
        i
    }

    /// How many requests from index `from` on are due by `now` and before
    /// `end`, at most `cap`.
    pub fn due(&self, from: u64, now: u64, end: u64, cap: u64) -> u64 {
        let mut k = 0;
        while k < cap {
            let t = self.intended(from + k);
            if t > now || t >= end {
                break;
            }
            k += 1;
        }
        k
    }
}

#[derive(Debug, Serialize)]
pub struct LatencyResult {
    pub connections: usize,
    /// Target req/s; 0 = closed loop (saturation).
    pub target_rate: u64,
    pub open_loop: bool,
    pub size_bytes: u32,
    /// Requests whose reply arrived, among those scheduled (open loop) or
    /// sent (closed loop) inside the window.
    pub requests: u64,
    pub req_per_s: f64,
    /// Requests never answered: lost with a failed connection, not sent while
    /// reconnecting, or still outstanding at the end.
    pub lost: u64,
    /// Open loop: from intended send time to reply. Closed loop: send to reply.
    pub latency: Percentiles,
    /// Open loop only: how late the client wrote each request relative to
    /// its schedule. Large values mean the client (or a blocked socket) fell
    /// behind; the latency figures already include that wait.
    pub send_lag: Option<Percentiles>,
}

struct Shared {
    hist: Mutex<Histogram<u64>>,
    lag: Mutex<Histogram<u64>>,
    completed: AtomicU64,
    lost: AtomicU64,
    errors: ErrorCounts,
    warm_end_ns: u64,
    end_ns: u64,
    io_ns: u64,
}

impl Shared {
    fn in_window(&self, t: u64) -> bool {
        t >= self.warm_end_ns && t < self.end_ns
    }
}

pub async fn run(cfg: LatencyConfig, ctx: ClientCtx) -> Result<(), String> {
    let started_ms = crate::report::unix_ms_now();
    let mut coord = Coordinator::new(ctx.quiet);

    let connects: Vec<_> = (0..cfg.connections)
        .map(|_| {
            let d = ctx.dialer.clone();
            tokio::spawn(async move { d.connect_with_header().await })
        })
        .collect();
    let errors = ErrorCounts::default();
    let conns: Vec<Option<TcpStream>> = coord
        .interruptible(join_all(connects, ctx.dialer.connect_timeout * 2))
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.map_err(|e| errors.add(&e)).ok())
        .chain(std::iter::repeat_with(|| None))
        .take(cfg.connections)
        .collect();
    let connected = conns.iter().filter(|c| c.is_some()).count();

    coord.reset_clock();
    // A short lead so every worker has armed its timer before the first send.
    let lead = Duration::from_millis(5);
    let (now_i, now_ns) = (Instant::now(), mono_ns());
    let start_ns = now_ns + lead.as_nanos() as u64;
    let warm_end_ns = start_ns + cfg.warmup.as_nanos() as u64;
    let end_ns = warm_end_ns + cfg.duration.as_nanos() as u64;
    let warm_end = now_i + lead + cfg.warmup;
    let end = warm_end + cfg.duration;
    let shared = Arc::new(Shared {
        hist: Mutex::new(new_histogram()),
        lag: Mutex::new(new_histogram()),
        completed: AtomicU64::new(0),
        lost: AtomicU64::new(0),
        errors,
        warm_end_ns,
        end_ns,
        io_ns: ctx.dialer.io_timeout.as_nanos() as u64,
    });
    let size = cfg.size as usize;
    let per_batch = if cfg.rate > 0 {
        MAX_BATCH.min(((1 << 20) / size as u64).max(1))
    } else {
        1
    };
    let one = protocol::encode_request(cfg.size, cfg.size, false);
    let batch: Arc<[u8]> = one.repeat(per_batch as usize).into();

    let (stop_handle, stop) = stop_pair();
    let handles: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(c, s)| {
            let w = Worker {
                dialer: ctx.dialer.clone(),
                shared: shared.clone(),
                batch: batch.clone(),
                per_batch,
                size: size as u64,
                sched: (cfg.rate > 0).then_some(Schedule {
                    start_ns,
                    rate: cfg.rate,
                    conns: cfg.connections as u64,
                    conn: c as u64,
                }),
                _guard: coord.active.enter(),
            };
            tokio::spawn(w.run(s, stop.clone()))
        })
        .collect();

    let mut last = (Instant::now(), 0u64);
    let mut line = |phase: &str| {
        let now = Instant::now();
        let done = shared.completed.load(Relaxed);
        let rate = per_sec(done - last.1, (now - last.0).as_secs_f64());
        last = (now, done);
        let p99 = {
            let h = lock(&shared.hist);
            if h.is_empty() {
                String::from("-")
            } else {
                format!("{:.1}us", h.value_at_quantile(0.99) as f64 / 1000.0)
            }
        };
        format!(
            "{rate:9.0} req/s  p99 {p99}  errors {}  lost {}{phase}",
            shared.errors.total(),
            shared.lost.load(Relaxed)
        )
    };
    let mut woke = coord.until(warm_end, || line("  (warmup)")).await;
    let mark_a = CpuMark::take(ctx.pid);
    if woke == Woke::Deadline {
        woke = coord.until(end, || line("")).await;
    }
    let mark_b = CpuMark::take(ctx.pid);
    if woke == Woke::Deadline {
        // Replies to the last requests are still in flight: give them up to
        // the I/O timeout rather than dropping the slowest ones from the tail.
        coord
            .until(
                end + ctx.dialer.io_timeout + Duration::from_millis(100),
                || line("  (draining)"),
            )
            .await;
    }
    stop_handle.raise();
    join_all(handles, Duration::from_secs(2)).await;
    coord.progress.finish();

    let secs = (mark_b.at - mark_a.at).as_secs_f64();
    let latency = Percentiles::from_ns(&lock(&shared.hist));
    let requests = latency.count;
    let mut warnings = Vec::new();
    if connected < cfg.connections {
        warnings.push(format!(
            "only {connected} of {} connections opened at start",
            cfg.connections
        ));
    }
    let req_per_s = per_sec(requests, secs);
    if cfg.rate > 0 && !coord.interrupted && req_per_s < cfg.rate as f64 * 0.99 {
        warnings.push(format!(
            "achieved {req_per_s:.0} req/s, below the target {}: the target or the client is saturated",
            cfg.rate
        ));
    }
    let (client_cpu_s, client_cores, mut proxy) =
        CpuMark::window(&mark_a, &mark_b, ctx.pid, &mut warnings);
    if let Some(p) = proxy.as_mut() {
        if requests > 0 {
            p.cpu_us_per_request = Some(p.cpu_s * 1e6 / requests as f64);
        }
    }
    let result = LatencyResult {
        connections: cfg.connections,
        target_rate: cfg.rate,
        open_loop: cfg.rate > 0,
        size_bytes: cfg.size,
        requests,
        req_per_s,
        lost: shared.lost.load(Relaxed),
        latency,
        send_lag: (cfg.rate > 0).then(|| Percentiles::from_ns(&lock(&shared.lag))),
    };

    let mut head = Table::kv();
    let load = if cfg.rate > 0 {
        format!("{} req/s open loop", cfg.rate)
    } else {
        "saturation (closed loop)".to_string()
    };
    head.kv_row(
        "latency",
        format!(
            "{} connections, {load}, {} B requests, {} measured after {} warmup{}",
            cfg.connections,
            cfg.size,
            fmt_duration(Duration::from_secs_f64(secs)),
            fmt_duration(cfg.warmup),
            if coord.interrupted {
                " (interrupted)"
            } else {
                ""
            }
        ),
    );
    head.kv_row("target", ctx.target_label());
    head.kv_row(
        "requests",
        format!(
            "{} ({:.0} req/s), lost {}",
            result.requests, result.req_per_s, result.lost
        ),
    );
    let mut lat = Table::new(&Percentiles::HEADER);
    lat.row(result.latency.row("request"));
    if let Some(lag) = &result.send_lag {
        lat.row(lag.row("send lag"));
    }
    let mut tail = Table::kv();
    let report = Report {
        mode: "latency",
        warmup_s: cfg.warmup.as_secs_f64(),
        measured_s: secs,
        interrupted: coord.interrupted,
        errors: shared.errors.summary(),
        client_cpu_s,
        client_cores,
        proxy,
        warnings,
        started_unix_ms: started_ms,
        ..ctx.report_base(result)
    };
    crate::report::append_common(&mut tail, &report);
    if let Some(v) = report.proxy.as_ref().and_then(|p| p.cpu_us_per_request) {
        tail.kv_row("proxy CPU per request", format!("{v:.2} us"));
    }
    ctx.output.emit(&[head, lat, tail], &report)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Worker {
    dialer: Arc<Dialer>,
    shared: Arc<Shared>,
    /// `per_batch` copies of the request, so a late connection catches up in one write.
    batch: Arc<[u8]>,
    per_batch: u64,
    size: u64,
    sched: Option<Schedule>,
    _guard: ActiveGuard,
}

enum ConnEnd {
    /// Schedule (or window) finished and every reply arrived.
    Done,
    Stopped,
    Failed(BenchError),
}

impl Worker {
    async fn run(self, first: Option<TcpStream>, mut stop: Stop) {
        let timer = match (&self.sched, TimerFd::new()) {
            (None, _) => None,
            (Some(_), Ok(t)) => Some(t),
            (Some(_), Err(e)) => {
                self.shared
                    .errors
                    .add(&BenchError::new(ErrKind::Other, format!("timerfd: {e}")));
                return;
            }
        };
        let mut stream = first;
        let mut next = 0u64;
        loop {
            let s = match stream.take() {
                Some(s) => s,
                None => {
                    if mono_ns() >= self.shared.end_ns {
                        return;
                    }
                    match stop.run(self.dialer.connect_with_header()).await {
                        None => return,
                        Some(Ok(s)) => {
                            self.skip_missed(&mut next);
                            s
                        }
                        Some(Err(e)) => {
                            self.shared.errors.add(&e);
                            if !stop.sleep(RECONNECT_BACKOFF).await {
                                return;
                            }
                            continue;
                        }
                    }
                }
            };
            let end = match (&self.sched, &timer) {
                (Some(sched), Some(timer)) => {
                    self.open_loop(s, sched, timer, &mut next, &mut stop).await
                }
                _ => self.closed_loop(s, &mut stop).await,
            };
            match end {
                ConnEnd::Done | ConnEnd::Stopped => return,
                ConnEnd::Failed(e) => {
                    self.shared.errors.add(&e);
                    if !stop.sleep(RECONNECT_BACKOFF).await {
                        return;
                    }
                }
            }
        }
    }

    /// After a reconnect, requests whose time passed while disconnected were
    /// never sent: count them as lost and resume with the next one due.
    fn skip_missed(&self, next: &mut u64) {
        if let Some(sched) = &self.sched {
            let now = mono_ns();
            let resume = sched.first_at_or_after(now).max(*next);
            let missed = (*next..resume)
                .filter(|&i| sched.intended(i) < self.shared.end_ns)
                .count();
            self.shared.lost.fetch_add(missed as u64, Relaxed);
            *next = resume;
        }
    }

    async fn open_loop(
        &self,
        mut s: TcpStream,
        sched: &Schedule,
        timer: &TimerFd,
        next_i: &mut u64,
        stop: &mut Stop,
    ) -> ConnEnd {
        let sh = &self.shared;
        let io = self.dialer.io_timeout;
        let (mut rd, mut wr) = s.split();
        // (intended, sent) of each request awaiting its reply, oldest first.
        // Writer and reader are polled by the same task, so these are never
        // contended; Mutex/atomics only keep the task `Send`.
        let queue: Mutex<VecDeque<(u64, u64)>> = Mutex::new(VecDeque::new());
        let writer_done = AtomicBool::new(false);
        let next = AtomicU64::new(*next_i);

        let writer = async {
            loop {
                let i = next.load(Relaxed);
                let t = sched.intended(i);
                if t >= sh.end_ns {
                    return Ok(());
                }
                if mono_ns() < t {
                    timer.sleep_until(t).await?;
                }
                let now = mono_ns();
                let k = sched.due(i, now, sh.end_ns, self.per_batch).max(1);
                {
                    let mut lag = lock(&sh.lag);
                    let mut q = lock(&queue);
                    for j in i..i + k {
                        let t = sched.intended(j);
                        q.push_back((t, now));
                        if sh.in_window(t) {
                            lag.saturating_record(now.saturating_sub(t).max(1));
                        }
                    }
                }
                next.store(i + k, Relaxed);
                within(
                    io,
                    "request write",
                    wr.write_all(&self.batch[..(k * self.size) as usize]),
                )
                .await?;
            }
        };
        let reader = async {
            let mut buf = vec![0u8; 64 * 1024];
            let mut partial = 0u64;
            loop {
                if writer_done.load(Relaxed) && lock(&queue).is_empty() {
                    return Ok(());
                }
                // Time out on the oldest outstanding request; with none
                // outstanding just re-check periodically.
                let oldest = lock(&queue).front().map(|&(_, sent)| sent);
                let wait = match oldest {
                    Some(sent) => Duration::from_nanos((sent + sh.io_ns).saturating_sub(mono_ns())),
                    None => io,
                };
                let n = match tokio::time::timeout(wait, rd.read(&mut buf)).await {
                    Err(_) => {
                        if oldest.is_some() {
                            return Err(BenchError::timeout("reply"));
                        }
                        continue;
                    }
                    Ok(r) => r.map_err(BenchError::from)?,
                };
                if n == 0 {
                    return Err(BenchError::short("reply"));
                }
                let now = mono_ns();
                partial += n as u64;
                let mut q = lock(&queue);
                let mut h: Option<std::sync::MutexGuard<'_, Histogram<u64>>> = None;
                while partial >= self.size {
                    let Some((intended, _)) = q.pop_front() else {
                        return Err(BenchError::new(
                            ErrKind::Other,
                            "reply bytes without a request",
                        ));
                    };
                    partial -= self.size;
                    sh.completed.fetch_add(1, Relaxed);
                    if sh.in_window(intended) {
                        h.get_or_insert_with(|| lock(&sh.hist))
                            .saturating_record(now.saturating_sub(intended).max(1));
                    }
                }
            }
        };
        let mut writer = std::pin::pin!(writer);
        let mut reader = std::pin::pin!(reader);
        let first: Option<BResult<bool>> = tokio::select! {
            biased;
            _ = stop.wait() => None,
            r = &mut writer => Some(r.map(|_| true)),
            r = &mut reader => Some(r.map(|_| false)),
        };
        let end = match first {
            None => ConnEnd::Stopped,
            Some(Err(e)) => ConnEnd::Failed(e),
            Some(Ok(false)) => ConnEnd::Done,
            Some(Ok(true)) => {
                writer_done.store(true, Relaxed);
                if lock(&queue).is_empty() {
                    ConnEnd::Done
                } else {
                    match stop.run(&mut reader).await {
                        None => ConnEnd::Stopped,
                        Some(Ok(())) => ConnEnd::Done,
                        Some(Err(e)) => ConnEnd::Failed(e),
                    }
                }
            }
        };
        *next_i = next.load(Relaxed);
        sh.lost.fetch_add(lock(&queue).len() as u64, Relaxed);
        end
    }

    async fn closed_loop(&self, mut s: TcpStream, stop: &mut Stop) -> ConnEnd {
        let sh = &self.shared;
        let io = self.dialer.io_timeout;
        let req = &self.batch[..self.size as usize];
        let mut buf = vec![0u8; (self.size as usize).min(256 * 1024)];
        let work = async {
            loop {
                let sent = mono_ns();
                if sent >= sh.end_ns {
                    return Ok(());
                }
                within(io, "request write", s.write_all(req)).await?;
                let mut got = 0u64;
                while got < self.size {
                    let want = ((self.size - got) as usize).min(buf.len());
                    let n = within(io, "reply read", s.read(&mut buf[..want])).await?;
                    if n == 0 {
                        return Err(BenchError::short("reply"));
                    }
                    got += n as u64;
                }
                let now = mono_ns();
                sh.completed.fetch_add(1, Relaxed);
                if sh.in_window(sent) {
                    lock(&sh.hist).saturating_record((now - sent).max(1));
                }
            }
        };
        match stop.run(work).await {
            None => ConnEnd::Stopped,
            Some(Ok(())) => ConnEnd::Done,
            Some(Err(e)) => {
                sh.lost.fetch_add(1, Relaxed);
                ConnEnd::Failed(e)
            }
        }
    }
}

/// A one-shot CLOCK_MONOTONIC timer with nanosecond resolution, driven by
/// the tokio reactor.
struct TimerFd(AsyncFd<OwnedFd>);

impl TimerFd {
    fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the fd is owned below.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a freshly created descriptor nobody else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // The deprecated constructor, because its replacement needs tokio
        // 1.51.6+/1.53.3+; `owned` is ours and stays open as long as the AsyncFd.
        #[allow(deprecated)]
        let fd = AsyncFd::with_interest(owned, tokio::io::Interest::READABLE)?;
        Ok(Self(fd))
    }

    /// Sleeps until CLOCK_MONOTONIC reaches `ns` (returns at once if past).
    async fn sleep_until(&self, ns: u64) -> io::Result<()> {
        let fd = self.0.as_raw_fd();
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (ns / NS) as libc::time_t,
                tv_nsec: (ns % NS) as libc::c_long,
            },
        };
        // SAFETY: valid fd and itimerspec; re-arming also clears any stale expiry count.
        if unsafe {
            libc::timerfd_settime(fd, libc::TFD_TIMER_ABSTIME, &spec, std::ptr::null_mut())
        } != 0
        {
            return Err(io::Error::last_os_error());
        }
        loop {
            let mut guard = self.0.readable().await?;
            let mut expirations = 0u64;
            // SAFETY: reading 8 bytes into a u64, as timerfd requires.
            let r = unsafe { libc::read(fd, &mut expirations as *mut u64 as *mut libc::c_void, 8) };
            if r == 8 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock {
                return Err(e);
            }
            guard.clear_ready();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(rate: u64, conns: u64, conn: u64) -> Schedule {
        Schedule {
            start_ns: 1_000,
            rate,
            conns,
            conn,
        }
    }

    #[test]
    fn aggregate_is_evenly_spaced() {
        // 1000 req/s over 4 connections: together they cover every millisecond slot.
        let mut all: Vec<u64> = (0..4)
            .flat_map(|c| (0..250).map(move |i| sched(1000, 4, c).intended(i)))
            .collect();
        all.sort();
        for (j, t) in all.iter().enumerate() {
            assert_eq!(*t, 1_000 + j as u64 * 1_000_000);
        }
    }

    #[test]
    fn no_drift_with_fractional_intervals() {
        // 3 req/s: intervals of 333_333_333.3 ns must not lose time.
        let s = sched(3, 1, 0);
        assert_eq!(s.intended(3), 1_000 + NS);
        assert_eq!(s.intended(3_000_000), 1_000 + 1_000_000 * NS);
        assert_eq!(s.intended(1), 1_000 + 333_333_333);
    }

    #[test]
    fn count_in_window_matches_rate() {
        let (rate, conns) = (10_000, 32);
        let window = (1_000 + NS, 1_000 + 3 * NS);
        let n: usize = (0..conns)
            .map(|c| {
                let s = sched(rate, conns, c);
                let first = s.first_at_or_after(window.0);
                (first..).take_while(|&i| s.intended(i) < window.1).count()
            })
            .sum();
        assert_eq!(n, 20_000);
    }

    #[test]
    fn first_at_or_after_is_exact() {
        for (rate, conns, conn) in [(7, 3, 2), (10_000, 32, 5), (1, 1, 0), (999_983, 17, 16)] {
            let s = sched(rate, conns, conn);
            for t in [0, 1_000, 1_001, 5 * NS / 7, NS, 3 * NS + 12_345, 10 * NS] {
                let i = s.first_at_or_after(t);
                assert!(s.intended(i) >= t);
                assert!(
                    i == 0 || s.intended(i - 1) < t,
                    "rate {rate} conn {conn} t {t}"
                );
            }
        }
    }

    #[test]
    fn due_counts_backlog_and_respects_end_and_cap() {
        let s = sched(1000, 1, 0);
        // 10.5 ms after start: requests 0..=10 are due.
        assert_eq!(s.due(0, 1_000 + 10_500_000, u64::MAX, 64), 11);
        assert_eq!(s.due(4, 1_000 + 10_500_000, u64::MAX, 64), 7);
        assert_eq!(s.due(0, 1_000 + 10_500_000, u64::MAX, 5), 5);
        assert_eq!(s.due(0, 1_000 + 10_500_000, 1_000 + 3_000_000, 64), 3);
        assert_eq!(s.due(0, 999, u64::MAX, 64), 0);
    }

    #[tokio::test]
    async fn timerfd_wakes_at_the_deadline() {
        let t = TimerFd::new().unwrap();
        let target = mono_ns() + 3_000_000;
        t.sleep_until(target).await.unwrap();
        let now = mono_ns();
        assert!(now >= target);
        // Already past: returns immediately.
        t.sleep_until(now - 1).await.unwrap();
    }
}
