//! `rate`: connection churn. Each of C workers loops: connect, send one
//! framed request, read the reply, wait for the server to close, close.
//! Reports completed connections per second, errors by kind, and connect
//! and whole-transaction latency percentiles.
//!
//! The server closes first (request flag `CLOSE`), so TIME_WAIT accumulates
//! on the server side; the client's ephemeral ports are freed at once and a
//! long run at tens of thousands of connections per second does not run dry.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::net::{within, BResult, BenchError, Dialer, ErrKind, ErrorCounts};
use crate::report::{new_histogram, Percentiles, Report, Table};
use crate::run::{join_all, stop_pair, ActiveGuard, Coordinator, Stop, Woke};
use crate::units::{fmt_duration, per_sec};
use crate::{protocol, ClientCtx, CpuMark};

pub struct RateConfig {
    pub concurrency: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub request: u32,
    pub reply: u32,
}

/// Pause after a failed attempt so a dead target is not hammered in a tight
/// loop; the errors are still counted.
const ERROR_BACKOFF: Duration = Duration::from_millis(10);

#[derive(Debug, Serialize)]
pub struct RateResult {
    pub concurrency: usize,
    pub request_bytes: u32,
    pub reply_bytes: u32,
    /// Connections completed (connect to server close) inside the window.
    pub connections: u64,
    pub conn_per_s: f64,
    pub connect_latency: Percentiles,
    /// Connect start to server close: the whole short-lived connection.
    pub transaction_latency: Percentiles,
}

struct Shared {
    errors: ErrorCounts,
    completed: AtomicU64,
    connect: Mutex<Histogram<u64>>,
    transaction: Mutex<Histogram<u64>>,
    warm_end: Instant,
    end: Instant,
}

pub async fn run(cfg: RateConfig, ctx: ClientCtx) -> Result<(), String> {
    let started_ms = crate::report::unix_ms_now();
    let mut coord = Coordinator::new(ctx.quiet);
    let t0 = Instant::now();
    let warm_end = t0 + cfg.warmup;
    let end = warm_end + cfg.duration;
    let shared = Arc::new(Shared {
        errors: ErrorCounts::default(),
        completed: AtomicU64::new(0),
        connect: Mutex::new(new_histogram()),
        transaction: Mutex::new(new_histogram()),
        warm_end,
        end,
    });
    let request: Arc<[u8]> = protocol::encode_request(cfg.request, cfg.reply, true).into();
    let (stop_handle, stop) = stop_pair();
    let handles: Vec<_> = (0..cfg.concurrency)
        .map(|_| {
            let w = Worker {
                dialer: ctx.dialer.clone(),
                request: request.clone(),
                reply: cfg.reply as u64,
                shared: shared.clone(),
                _guard: coord.active.enter(),
            };
            tokio::spawn(w.run(stop.clone()))
        })
        .collect();

    let mut last = (t0, 0u64);
    let mut line = |phase: &str| {
        let now = Instant::now();
        let done = shared.completed.load(Relaxed);
        let rate = per_sec(done - last.1, (now - last.0).as_secs_f64());
        last = (now, done);
        format!("{rate:9.0} conn/s  errors {}{phase}", shared.errors.total())
    };
    let woke = coord.until(warm_end, || line("  (warmup)")).await;
    let mark_a = CpuMark::take(ctx.pid);
    if woke == Woke::Deadline {
        coord.until(end, || line("")).await;
    }
    let mark_b = CpuMark::take(ctx.pid);
    stop_handle.raise();
    join_all(handles, Duration::from_secs(2)).await;
    coord.progress.finish();

    let secs = (mark_b.at - mark_a.at).as_secs_f64();
    let connect = Percentiles::from_ns(&shared.connect.lock().unwrap_or_else(|p| p.into_inner()));
    let transaction =
        Percentiles::from_ns(&shared.transaction.lock().unwrap_or_else(|p| p.into_inner()));
    let connections = transaction.count;
    let mut warnings = Vec::new();
    let (client_cpu_s, client_cores, mut proxy) =
        CpuMark::window(&mark_a, &mark_b, ctx.pid, &mut warnings);
    if let Some(p) = proxy.as_mut() {
        if connections > 0 {
            p.cpu_us_per_conn = Some(p.cpu_s * 1e6 / connections as f64);
        }
    }
    let errors = shared.errors.summary();
    if errors.timeout > 0 && connections == 0 {
        warnings.push("every attempt timed out: rate needs `l4relay-bench serve` (echo or sink) behind the target".into());
    }
    let result = RateResult {
        concurrency: cfg.concurrency,
        request_bytes: cfg.request,
        reply_bytes: cfg.reply,
        connections,
        conn_per_s: per_sec(connections, secs),
        connect_latency: connect,
        transaction_latency: transaction,
    };

    let mut head = Table::kv();
    head.kv_row(
        "rate",
        format!(
            "{} workers, request {} B, reply {} B, {} measured after {} warmup{}",
            cfg.concurrency,
            cfg.request,
            cfg.reply,
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
        "connections",
        format!("{} ({:.0} conn/s)", result.connections, result.conn_per_s),
    );
    let mut lat = Table::new(&Percentiles::HEADER);
    lat.row(result.connect_latency.row("connect"));
    lat.row(result.transaction_latency.row("transaction"));
    let mut tail = Table::kv();
    let report = Report {
        mode: "rate",
        warmup_s: cfg.warmup.as_secs_f64(),
        measured_s: secs,
        interrupted: coord.interrupted,
        errors,
        client_cpu_s,
        client_cores,
        proxy,
        warnings,
        started_unix_ms: started_ms,
        ..ctx.report_base(result)
    };
    crate::report::append_common(&mut tail, &report);
    if let Some(v) = report.proxy.as_ref().and_then(|p| p.cpu_us_per_conn) {
        tail.kv_row("proxy CPU per conn", format!("{v:.1} us"));
    }
    ctx.output.emit(&[head, lat, tail], &report)
}

struct Worker {
    dialer: Arc<Dialer>,
    request: Arc<[u8]>,
    reply: u64,
    shared: Arc<Shared>,
    _guard: ActiveGuard,
}

impl Worker {
    async fn run(self, mut stop: Stop) {
        let mut buf = vec![0u8; (self.reply as usize).clamp(4096, 256 * 1024)];
        let mut out = Vec::with_capacity(self.request.len() + 128);
        while !stop.is_raised() {
            match stop.run(self.one(&mut buf, &mut out)).await {
                None => break,
                Some(Ok((t0, connect, total))) => {
                    let s = &self.shared;
                    s.completed.fetch_add(1, Relaxed);
                    if t0 >= s.warm_end && t0 + total <= s.end {
                        lock(&s.connect).saturating_record(connect.as_nanos() as u64);
                        lock(&s.transaction).saturating_record(total.as_nanos() as u64);
                    }
                }
                Some(Err(e)) => {
                    self.shared.errors.add(&e);
                    if !stop.sleep(ERROR_BACKOFF).await {
                        break;
                    }
                }
            }
        }
    }

    /// One connection: returns (start, connect time, total time).
    async fn one(
        &self,
        buf: &mut [u8],
        out: &mut Vec<u8>,
    ) -> BResult<(Instant, Duration, Duration)> {
        let io = self.dialer.io_timeout;
        let t0 = Instant::now();
        let mut s = self.dialer.connect().await?;
        let connected = t0.elapsed();
        out.clear();
        if let Some(h) = self.dialer.proxy_header(&s)? {
            out.extend_from_slice(&h);
        }
        match self.dialer.tls() {
            None => {
                // Header and request in one write, as a load balancer's first segment would
                // carry them.
                out.extend_from_slice(&self.request);
                within(io, "request write", s.write_all(out)).await?;
                self.reply(&mut s, buf).await?;
            }
            Some(tls) => {
                // The header in the clear, then the handshake, then the request.
                if !out.is_empty() {
                    within(io, "PROXY header write", s.write_all(out)).await?;
                }
                let mut s = within(io, "TLS handshake", tls.connect(s)).await?;
                within(io, "request write", s.write_all(&self.request)).await?;
                self.reply(&mut s, buf).await?;
            }
        }
        Ok((t0, connected, t0.elapsed()))
    }

    /// Reads the reply, then the server's close.
    async fn reply<S: AsyncRead + Unpin>(&self, s: &mut S, buf: &mut [u8]) -> BResult<()> {
        let io = self.dialer.io_timeout;
        let mut got = 0u64;
        while got < self.reply {
            let n = within(io, "reply read", s.read(buf)).await?;
            if n == 0 {
                return Err(BenchError::short("reply"));
            }
            got += n as u64;
        }
        if got > self.reply {
            return Err(BenchError::new(
                ErrKind::Other,
                "reply longer than requested",
            ));
        }
        if within(io, "server close", s.read(buf)).await? != 0 {
            return Err(BenchError::new(
                ErrKind::Other,
                "data after the reply (is the target an l4relay-bench serve?)",
            ));
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
