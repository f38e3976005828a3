//! `idle`: what an open connection costs the relay. Opens N connections
//! (bounded in flight), optionally pushes a burst through each and reads it
//! back from the echo upstream, then holds them idle. The relay's RSS and fd
//! count (`--pid`) and the kernel's TCP socket memory are sampled before
//! opening, after opening, after the bursts and at the end of the hold, and
//! reported as deltas per connection.
//!
//! Bursts matter because a relay's per-connection buffers are typically
//! allocated or grown on first data; the after-open figure alone would
//! understate memory under real traffic.

use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::net::{loopback_sources, within, BResult, BenchError, ErrorCounts};
use crate::procfs;
use crate::report::{Report, Table};
use crate::run::{join_all, stop_pair, Coordinator};
use crate::units::{fmt_bytes, fmt_duration};
use crate::ClientCtx;

pub struct IdleConfig {
    pub count: usize,
    pub hold: Duration,
    pub burst: Option<u64>,
    pub open_concurrency: usize,
    pub settle: Duration,
    /// `--sources` was given, so never pick source addresses automatically.
    pub explicit_sources: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// before, after_open, after_burst, end_of_hold
    pub stage: &'static str,
    /// Seconds since the start of the run.
    pub at_s: f64,
    pub connections_open: u64,
    /// VmRSS of --pid.
    pub rss_bytes: Option<u64>,
    /// Open fds of --pid.
    pub fds: Option<u64>,
    /// TCP sockets in use in this network namespace (client, relay and upstream sides).
    pub tcp_inuse: Option<u64>,
    /// Kernel TCP socket memory in this network namespace (sockstat mem pages × page size).
    pub tcp_mem_bytes: Option<u64>,
}

/// Deltas from the `before` sample divided by connections opened.
#[derive(Debug, Default, Serialize)]
pub struct PerConnection {
    pub rss_bytes_after_open: Option<f64>,
    pub rss_bytes_after_burst: Option<f64>,
    pub fds_after_open: Option<f64>,
    pub tcp_sockets_after_open: Option<f64>,
    pub tcp_mem_bytes_after_open: Option<f64>,
    pub tcp_mem_bytes_after_burst: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct IdleResult {
    pub count: usize,
    pub opened: u64,
    pub burst_bytes: Option<u64>,
    pub bursts_ok: u64,
    pub hold_s: f64,
    /// Connections still open at the end of the hold (not closed or reset by the relay).
    pub alive_after_hold: u64,
    pub closed_during_hold: u64,
    /// Local source addresses used (empty: the kernel's choice).
    pub sources: Vec<String>,
    pub samples: Vec<Sample>,
    pub per_connection: PerConnection,
}

pub async fn run(cfg: IdleConfig, mut ctx: ClientCtx) -> Result<(), String> {
    let started_ms = crate::report::unix_ms_now();
    let mut warnings = Vec::new();

    // One local address can reach one (address, port) from about as many
    // connections as there are ephemeral ports; beyond ~80% of that, spread
    // over more loopback addresses.
    let ports = procfs::ephemeral_port_count();
    let budget = (ports * 8 / 10).max(1) as usize;
    let is_loopback_v4 = matches!(ctx.target.ip(), IpAddr::V4(v4) if v4.is_loopback());
    if !cfg.explicit_sources && cfg.count > budget {
        if is_loopback_v4 {
            let n = cfg.count.div_ceil(budget);
            ctx.dialer = Arc::new(ctx.dialer.with_sources(loopback_sources(n)));
        } else {
            warnings.push(format!(
                "{} connections from one address exceed ~{budget} ephemeral ports; pass --sources",
                cfg.count
            ));
        }
    }
    let fd_limit = procfs::raise_nofile_limit();
    if cfg.count as u64 + 64 > fd_limit {
        return Err(format!(
            "--count {} needs that many file descriptors but RLIMIT_NOFILE is {fd_limit} (raise it with ulimit -n)",
            cfg.count
        ));
    }
    if ctx.pid.is_none() {
        warnings.push("no --pid: only kernel socket memory is reported".into());
    }

    let mut coord = Coordinator::new(ctx.quiet);
    let t0 = coord.started;
    let errors = Arc::new(ErrorCounts::default());
    let (stop_handle, stop) = stop_pair();
    let mut samples = vec![sample("before", t0, 0, ctx.pid)];

    // Open.
    let opened = Arc::new(AtomicU64::new(0));
    let sem = Arc::new(Semaphore::new(cfg.open_concurrency));
    let handles: Vec<_> = (0..cfg.count)
        .map(|_| {
            let (dialer, sem, errors, opened, mut stop) = (
                ctx.dialer.clone(),
                sem.clone(),
                errors.clone(),
                opened.clone(),
                stop.clone(),
            );
            let guard = coord.active.enter();
            tokio::spawn(async move {
                let _guard = guard;
                let _permit = stop.run(sem.acquire_owned()).await?.ok()?;
                match stop.run(dialer.connect_with_header()).await? {
                    Ok(s) => {
                        opened.fetch_add(1, Relaxed);
                        Some(s)
                    }
                    Err(e) => {
                        errors.add(&e);
                        None
                    }
                }
            })
        })
        .collect();
    let waves = cfg.count.div_ceil(cfg.open_concurrency) as u32;
    let open_deadline =
        Instant::now() + (ctx.dialer.connect_timeout + ctx.dialer.io_timeout) * (waves + 1);
    coord
        .until(open_deadline, || {
            format!(
                "opening {}/{}  errors {}",
                opened.load(Relaxed),
                cfg.count,
                errors.total()
            )
        })
        .await;
    stop_handle.raise_if(coord.interrupted);
    let mut streams: Vec<TcpStream> = join_all(handles, Duration::from_secs(2))
        .await
        .into_iter()
        .flatten()
        .collect();
    let n_open = streams.len() as u64;
    settle(&mut coord, cfg.settle, n_open).await;
    samples.push(sample("after_open", t0, n_open, ctx.pid));

    // Burst.
    let mut bursts_ok = 0;
    if let (Some(burst), false) = (cfg.burst, coord.interrupted) {
        let done = Arc::new(AtomicU64::new(0));
        let payload: Arc<[u8]> = vec![0u8; burst.min(1 << 20) as usize].into();
        let handles: Vec<_> = streams
            .drain(..)
            .map(|s| {
                let (sem, errors, done, payload, io, mut stop) = (
                    sem.clone(),
                    errors.clone(),
                    done.clone(),
                    payload.clone(),
                    ctx.dialer.io_timeout,
                    stop.clone(),
                );
                let guard = coord.active.enter();
                tokio::spawn(async move {
                    let _guard = guard;
                    let _permit = stop.run(sem.acquire_owned()).await?.ok()?;
                    let mut s = s;
                    match stop.run(echo_burst(&mut s, burst, &payload, io)).await? {
                        Ok(()) => {
                            done.fetch_add(1, Relaxed);
                            Some((s, true))
                        }
                        Err(e) => {
                            errors.add(&e);
                            None
                        }
                    }
                })
            })
            .collect();
        let waves = n_open.div_ceil(cfg.open_concurrency as u64) as u32;
        let deadline = Instant::now() + ctx.dialer.io_timeout * 2 * (waves + 1);
        coord
            .until(deadline, || {
                format!(
                    "bursting {}/{n_open}  errors {}",
                    done.load(Relaxed),
                    errors.total()
                )
            })
            .await;
        stop_handle.raise_if(coord.interrupted);
        for (s, ok) in join_all(handles, Duration::from_secs(2))
            .await
            .into_iter()
            .flatten()
        {
            bursts_ok += ok as u64;
            streams.push(s);
        }
        settle(&mut coord, cfg.settle, streams.len() as u64).await;
        samples.push(sample("after_burst", t0, streams.len() as u64, ctx.pid));
    }

    // Hold.
    let hold_start = Instant::now();
    let hold_end = hold_start + cfg.hold;
    let held = streams.len();
    coord
        .hold(hold_end, || {
            let left = hold_end.saturating_duration_since(Instant::now());
            format!(
                "holding {held} connections, {}s left",
                left.as_secs_f64().round()
            )
        })
        .await;
    let hold_s = hold_start.elapsed().as_secs_f64();
    let (alive, closed) = check_alive(&streams);
    samples.push(sample("end_of_hold", t0, alive, ctx.pid));
    drop(streams);
    coord.progress.finish();

    if alive < held as u64 {
        warnings.push(format!(
            "{closed} of {held} connections were closed by the peer during the hold"
        ));
    }
    if n_open < cfg.count as u64 {
        warnings.push(format!("only {n_open} of {} connections opened", cfg.count));
    }
    let per_connection = per_connection(&samples, n_open);
    let result = IdleResult {
        count: cfg.count,
        opened: n_open,
        burst_bytes: cfg.burst,
        bursts_ok,
        hold_s,
        alive_after_hold: alive,
        closed_during_hold: closed,
        sources: ctx.dialer.sources().iter().map(|s| s.to_string()).collect(),
        samples,
        per_connection,
    };

    let mut head = Table::kv();
    head.kv_row(
        "idle",
        format!(
            "{} connections, burst {}, hold {}{}",
            cfg.count,
            cfg.burst
                .map_or("none".to_string(), |b| fmt_bytes(b as f64)),
            fmt_duration(cfg.hold),
            if coord.interrupted {
                " (interrupted)"
            } else {
                ""
            }
        ),
    );
    head.kv_row("target", ctx.target_label());
    if !result.sources.is_empty() {
        head.kv_row(
            "sources",
            format!(
                "{} addresses from {}",
                result.sources.len(),
                result.sources[0]
            ),
        );
    }
    head.kv_row(
        "opened",
        format!("{n_open}, bursts ok {bursts_ok}, alive after hold {alive}"),
    );
    let opt = |v: Option<u64>, f: &dyn Fn(u64) -> String| v.map_or("-".to_string(), f);
    let mut t = Table::new(&[
        "stage",
        "open",
        "relay RSS",
        "relay fds",
        "TCP sockets",
        "TCP mem",
    ]);
    for s in &result.samples {
        t.row([
            s.stage.to_string(),
            s.connections_open.to_string(),
            opt(s.rss_bytes, &|v| fmt_bytes(v as f64)),
            opt(s.fds, &|v| v.to_string()),
            opt(s.tcp_inuse, &|v| v.to_string()),
            opt(s.tcp_mem_bytes, &|v| fmt_bytes(v as f64)),
        ]);
    }
    let pc = &result.per_connection;
    let mut per = Table::new(&["per connection", "after open", "after burst"]);
    let f = |v: Option<f64>, fmt: &dyn Fn(f64) -> String| v.map_or("-".to_string(), fmt);
    per.row([
        "relay RSS".to_string(),
        f(pc.rss_bytes_after_open, &fmt_bytes),
        f(pc.rss_bytes_after_burst, &fmt_bytes),
    ]);
    per.row([
        "relay fds".to_string(),
        f(pc.fds_after_open, &|v| format!("{v:.2}")),
        "-".to_string(),
    ]);
    per.row([
        "TCP sockets".to_string(),
        f(pc.tcp_sockets_after_open, &|v| format!("{v:.2}")),
        "-".to_string(),
    ]);
    per.row([
        "kernel TCP mem".to_string(),
        f(pc.tcp_mem_bytes_after_open, &fmt_bytes),
        f(pc.tcp_mem_bytes_after_burst, &fmt_bytes),
    ]);
    let mut tail = Table::kv();
    let report = Report {
        mode: "idle",
        warmup_s: 0.0,
        measured_s: hold_s,
        interrupted: coord.interrupted,
        errors: errors.summary(),
        warnings,
        started_unix_ms: started_ms,
        ..ctx.report_base(result)
    };
    crate::report::append_common(&mut tail, &report);
    ctx.output.emit(&[head, t, per, tail], &report)
}

async fn settle(coord: &mut Coordinator, settle: Duration, open: u64) {
    let until = Instant::now() + settle;
    coord
        .hold(until, || format!("settling, {open} connections open"))
        .await;
}

fn sample(stage: &'static str, t0: Instant, open: u64, pid: Option<u32>) -> Sample {
    let sock = procfs::tcp_sockstat().ok();
    Sample {
        stage,
        at_s: t0.elapsed().as_secs_f64(),
        connections_open: open,
        rss_bytes: pid.and_then(|p| procfs::rss_bytes(p).ok()),
        fds: pid.and_then(|p| procfs::fd_count(p).ok()),
        tcp_inuse: sock.map(|s| s.inuse),
        tcp_mem_bytes: sock.map(|s| s.mem_bytes),
    }
}

fn per_connection(samples: &[Sample], opened: u64) -> PerConnection {
    let find = |stage: &str| samples.iter().find(|s| s.stage == stage);
    let Some(before) = find("before") else {
        return PerConnection::default();
    };
    if opened == 0 {
        return PerConnection::default();
    }
    let delta = |s: Option<&Sample>, pick: fn(&Sample) -> Option<u64>| {
        let (a, b) = (pick(before)?, pick(s?)?);
        Some((b as f64 - a as f64) / opened as f64)
    };
    let open = find("after_open");
    let burst = find("after_burst");
    PerConnection {
        rss_bytes_after_open: delta(open, |s| s.rss_bytes),
        rss_bytes_after_burst: delta(burst, |s| s.rss_bytes),
        fds_after_open: delta(open, |s| s.fds),
        tcp_sockets_after_open: delta(open, |s| s.tcp_inuse),
        tcp_mem_bytes_after_open: delta(open, |s| s.tcp_mem_bytes),
        tcp_mem_bytes_after_burst: delta(burst, |s| s.tcp_mem_bytes),
    }
}

/// Writes `burst` bytes and reads as many back, concurrently so a burst
/// larger than the socket buffers cannot deadlock against the echo.
async fn echo_burst(s: &mut TcpStream, burst: u64, payload: &[u8], io: Duration) -> BResult<()> {
    let (mut r, mut w) = s.split();
    let send = async {
        let mut left = burst;
        while left > 0 {
            let k = left.min(payload.len() as u64) as usize;
            within(io, "burst write", w.write_all(&payload[..k])).await?;
            left -= k as u64;
        }
        Ok::<(), BenchError>(())
    };
    let recv = async {
        let mut buf = vec![0u8; payload.len().min(64 * 1024)];
        let mut got = 0u64;
        while got < burst {
            let n = within(io, "burst read", r.read(&mut buf)).await?;
            if n == 0 {
                return Err(BenchError::short("burst echo"));
            }
            got += n as u64;
        }
        Ok(())
    };
    tokio::try_join!(send, recv).map(|_| ())
}

/// (alive, closed): peeks each socket without blocking. A connection the
/// relay closed or reset reads EOF or an error; a live idle one would block.
/// Uses recv(MSG_PEEK) directly because tokio's try_read reports
/// WouldBlock without asking the kernel until the reactor saw readiness.
fn check_alive(streams: &[TcpStream]) -> (u64, u64) {
    let mut alive = 0;
    let mut closed = 0;
    let mut b = [0u8; 1];
    for s in streams {
        // SAFETY: valid fd and a 1-byte buffer; MSG_PEEK leaves the data queued.
        let r = unsafe {
            libc::recv(
                s.as_raw_fd(),
                b.as_mut_ptr() as *mut libc::c_void,
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        let would_block =
            r < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock;
        if r > 0 || would_block {
            alive += 1;
        } else {
            closed += 1;
        }
    }
    (alive, closed)
}

impl crate::run::StopHandle {
    /// Cancels setup tasks once the coordinator saw SIGINT/SIGTERM.
    fn raise_if(&self, cond: bool) {
        if cond {
            self.raise();
        }
    }
}
