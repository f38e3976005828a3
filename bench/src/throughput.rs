//! `throughput`: bulk transfer over N long-lived connections.
//!
//! up = client writes (target is sink or echo; echoed bytes are drained but
//! not counted), down = client reads (target is source), both = writes and
//! reads at once (target is echo). Bytes are counted at the client after
//! the warmup; 256 KiB buffers keep syscalls per byte low enough for one
//! core to drive 20+ Gbit/s over loopback.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::net::{within, BResult, BenchError, ErrorCounts};
use crate::report::{Report, Table};
use crate::run::{join_all, stop_pair, ActiveGuard, Coordinator, Stop};
use crate::tls::Conn;
use crate::units::{fmt_duration, fmt_gb, gbit_per_s};
use crate::{ClientCtx, CpuMark};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Up,
    Down,
    Both,
}

impl Direction {
    fn sends(self) -> bool {
        self != Direction::Down
    }
    fn receives(self) -> bool {
        self != Direction::Up
    }
}

pub struct ThroughputConfig {
    pub streams: usize,
    pub direction: Direction,
    pub duration: Duration,
    pub warmup: Duration,
    pub chunk: usize,
}

#[derive(Default)]
struct Counters {
    up: AtomicU64,
    down: AtomicU64,
}

#[derive(Debug, Serialize)]
pub struct DirResult {
    pub bytes: u64,
    pub gbit_per_s: f64,
    /// Slowest and fastest single stream, to show unfairness between streams.
    pub stream_min_gbit_per_s: f64,
    pub stream_max_gbit_per_s: f64,
}

#[derive(Debug, Serialize)]
pub struct ThroughputResult {
    pub streams: usize,
    pub streams_connected: usize,
    /// Streams that ended with an error before the end of the run.
    pub streams_failed: u64,
    pub direction: Direction,
    pub chunk_bytes: usize,
    pub up: Option<DirResult>,
    pub down: Option<DirResult>,
    pub total_gbit_per_s: f64,
}

pub async fn run(cfg: ThroughputConfig, ctx: ClientCtx) -> Result<(), String> {
    let errors = Arc::new(ErrorCounts::default());
    let mut coord = Coordinator::new(ctx.quiet);
    let started_ms = crate::report::unix_ms_now();

    let connects: Vec<_> = (0..cfg.streams)
        .map(|_| {
            let d = ctx.dialer.clone();
            tokio::spawn(async move { d.open().await })
        })
        .collect();
    let conns = coord
        .interruptible(join_all(connects, ctx.dialer.connect_timeout * 2))
        .await
        .unwrap_or_default();
    let mut streams = Vec::new();
    for c in conns {
        match c {
            Ok(s) => streams.push(s),
            Err(e) => errors.add(&e),
        }
    }
    let connected = streams.len();

    coord.reset_clock();
    let (stop_handle, stop) = stop_pair();
    let failed = Arc::new(AtomicU64::new(0));
    let counters: Vec<Arc<Counters>> = (0..connected)
        .map(|_| Arc::new(Counters::default()))
        .collect();
    let handles: Vec<_> = streams
        .into_iter()
        .zip(&counters)
        .map(|(s, c)| {
            let w = Worker {
                dir: cfg.direction,
                chunk: cfg.chunk,
                io_timeout: ctx.dialer.io_timeout,
                counters: c.clone(),
                errors: errors.clone(),
                failed: failed.clone(),
                _guard: coord.active.enter(),
            };
            tokio::spawn(w.run(s, stop.clone()))
        })
        .collect();

    let totals = |cs: &[Arc<Counters>]| -> (u64, u64) {
        cs.iter().fold((0, 0), |(u, d), c| {
            (u + c.up.load(Relaxed), d + c.down.load(Relaxed))
        })
    };
    let t0 = Instant::now();
    let warm_end = t0 + cfg.warmup;
    let end = warm_end + cfg.duration;
    let mut last = (t0, 0u64, 0u64);
    let mut line = |phase: &str| {
        let now = Instant::now();
        let (u, d) = totals(&counters);
        let secs = (now - last.0).as_secs_f64();
        let mut text = String::new();
        if cfg.direction.sends() {
            text.push_str(&format!("up {:7.2} Gbit/s  ", gbit_per_s(u - last.1, secs)));
        }
        if cfg.direction.receives() {
            text.push_str(&format!(
                "down {:7.2} Gbit/s  ",
                gbit_per_s(d - last.2, secs)
            ));
        }
        text.push_str(&format!(
            "streams {}/{}  errors {}{}",
            connected as u64 - failed.load(Relaxed),
            cfg.streams,
            errors.total(),
            phase
        ));
        last = (now, u, d);
        text
    };

    let mut woke = coord.until(warm_end, || line("  (warmup)")).await;
    let mark_a = CpuMark::take(ctx.pid);
    let per_stream_a: Vec<(u64, u64)> = counters
        .iter()
        .map(|c| (c.up.load(Relaxed), c.down.load(Relaxed)))
        .collect();
    if woke == crate::run::Woke::Deadline {
        woke = coord.until(end, || line("")).await;
    }
    let mark_b = CpuMark::take(ctx.pid);
    let per_stream_b: Vec<(u64, u64)> = counters
        .iter()
        .map(|c| (c.up.load(Relaxed), c.down.load(Relaxed)))
        .collect();
    let _ = woke;
    stop_handle.raise();
    join_all(handles, Duration::from_secs(2)).await;
    coord.progress.finish();

    let secs = (mark_b.at - mark_a.at).as_secs_f64();
    let deltas: Vec<(u64, u64)> = per_stream_a
        .iter()
        .zip(&per_stream_b)
        .map(|(a, b)| (b.0 - a.0, b.1 - a.1))
        .collect();
    let dir_result = |pick: fn(&(u64, u64)) -> u64| {
        let bytes: u64 = deltas.iter().map(pick).sum();
        let rates = deltas.iter().map(|d| gbit_per_s(pick(d), secs));
        DirResult {
            bytes,
            gbit_per_s: gbit_per_s(bytes, secs),
            stream_min_gbit_per_s: if deltas.is_empty() {
                0.0
            } else {
                rates.clone().fold(f64::INFINITY, f64::min)
            },
            stream_max_gbit_per_s: rates.fold(0.0, f64::max),
        }
    };
    let up = cfg.direction.sends().then(|| dir_result(|d| d.0));
    let down = cfg.direction.receives().then(|| dir_result(|d| d.1));
    let total_bytes = up.as_ref().map_or(0, |d| d.bytes) + down.as_ref().map_or(0, |d| d.bytes);

    let mut warnings = Vec::new();
    if connected < cfg.streams {
        warnings.push(format!(
            "only {connected} of {} streams connected",
            cfg.streams
        ));
    }
    if let Some(d) = &down {
        if d.bytes == 0 && connected > 0 && secs > 0.0 {
            warnings.push("no data received: down/both need a target that sends (serve --mode source or echo)".into());
        }
    }
    let (client_cpu_s, client_cores, mut proxy) =
        CpuMark::window(&mark_a, &mark_b, ctx.pid, &mut warnings);
    if let Some(p) = proxy.as_mut() {
        if total_bytes > 0 {
            p.cpu_s_per_gb = Some(p.cpu_s / (total_bytes as f64 / 1e9));
        }
    }

    let result = ThroughputResult {
        streams: cfg.streams,
        streams_connected: connected,
        streams_failed: failed.load(Relaxed),
        direction: cfg.direction,
        chunk_bytes: cfg.chunk,
        total_gbit_per_s: gbit_per_s(total_bytes, secs),
        up,
        down,
    };

    let mut head = Table::kv();
    head.kv_row(
        "throughput",
        format!(
            "{} streams, {:?}, {} measured after {} warmup{}",
            cfg.streams,
            cfg.direction,
            fmt_duration(Duration::from_secs_f64(secs)),
            fmt_duration(cfg.warmup),
            if coord.interrupted {
                " (interrupted)"
            } else {
                ""
            }
        )
        .to_lowercase(),
    );
    head.kv_row("target", ctx.target_label());
    let mut t = Table::new(&["direction", "bytes", "Gbit/s", "stream min", "stream max"]);
    for (name, d) in [("up", &result.up), ("down", &result.down)] {
        if let Some(d) = d {
            t.row([
                name.to_string(),
                fmt_gb(d.bytes),
                format!("{:.2}", d.gbit_per_s),
                format!("{:.2}", d.stream_min_gbit_per_s),
                format!("{:.2}", d.stream_max_gbit_per_s),
            ]);
        }
    }
    if result.up.is_some() && result.down.is_some() {
        t.row([
            "total".to_string(),
            fmt_gb(total_bytes),
            format!("{:.2}", result.total_gbit_per_s),
            String::new(),
            String::new(),
        ]);
    }
    let mut tail = Table::kv();
    tail.kv_row(
        "streams",
        format!("{connected} connected, {} failed", result.streams_failed),
    );
    let report = Report {
        mode: "throughput",
        warmup_s: cfg.warmup.as_secs_f64(),
        measured_s: secs,
        interrupted: coord.interrupted,
        errors: errors.summary(),
        client_cpu_s,
        client_cores,
        proxy,
        warnings,
        started_unix_ms: started_ms,
        ..ctx.report_base(result)
    };
    crate::report::append_common(&mut tail, &report);
    if let Some(p) = &report.proxy {
        if let Some(v) = p.cpu_s_per_gb {
            tail.kv_row("proxy CPU per GB", format!("{v:.3} CPU-s/GB"));
        }
    }
    ctx.output.emit(&[head, t, tail], &report)
}

struct Worker {
    dir: Direction,
    chunk: usize,
    io_timeout: Duration,
    counters: Arc<Counters>,
    errors: Arc<ErrorCounts>,
    failed: Arc<AtomicU64>,
    _guard: ActiveGuard,
}

impl Worker {
    async fn run(self, conn: Conn, stop: Stop) {
        match conn {
            // A TcpStream splits into borrowed halves without a lock.
            Conn::Plain(mut s) => {
                let (r, w) = s.split();
                self.pump(r, w, stop).await
            }
            Conn::Tls(s) => {
                let (r, w) = tokio::io::split(s);
                self.pump(r, w, stop).await
            }
        }
    }

    async fn pump<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        self,
        mut r: R,
        mut w: W,
        mut stop: Stop,
    ) {
        let io = self.io_timeout;
        let c = &self.counters;
        let send = async {
            let buf = vec![0u8; self.chunk];
            loop {
                let n = within(io, "write", w.write(&buf)).await?;
                c.up.fetch_add(n as u64, Relaxed);
            }
        };
        let res = stop
            .run(async {
                match self.dir {
                    Direction::Up => tokio::select! {
                        res = send => res,
                        res = discard(&mut r, self.chunk) => res,
                    },
                    Direction::Down => receive(&mut r, self.chunk, io, &c.down).await,
                    Direction::Both => tokio::select! {
                        res = send => res,
                        res = receive(&mut r, self.chunk, io, &c.down) => res,
                    },
                }
            })
            .await;
        if let Some(Err(e)) = res {
            self.errors.add(&e);
            self.failed.fetch_add(1, Relaxed);
        }
    }
}

async fn receive<R: AsyncRead + Unpin>(
    r: &mut R,
    chunk: usize,
    io: Duration,
    count: &AtomicU64,
) -> BResult<()> {
    let mut buf = vec![0u8; chunk];
    loop {
        let n = within(io, "read", r.read(&mut buf)).await?;
        if n == 0 {
            return Err(BenchError::short("stream"));
        }
        count.fetch_add(n as u64, Relaxed);
    }
}

/// In `up` mode an echo target sends everything back; reading it keeps the
/// echo from stalling. A sink sends nothing, so there is no read timeout,
/// and EOF just waits for the writer to notice the close.
async fn discard<R: AsyncRead + Unpin>(r: &mut R, chunk: usize) -> BResult<()> {
    let mut buf = vec![0u8; chunk];
    loop {
        if r.read(&mut buf).await? == 0 {
            return std::future::pending().await;
        }
    }
}
