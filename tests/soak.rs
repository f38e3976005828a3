//! Soak: a bounded mixed load with reloads and server flaps, then a check that nothing leaked.
//! Ignored in the default test run; run it with
//!
//! ```sh
//! SOAK_SECONDS=1200 cargo test --release --test soak -- --ignored --nocapture
//! ```
//!
//! (`.ci/soak.sh` runs it for two minutes.) For SOAK_SECONDS (default 1200), at once: bulk
//! streams (random sizes up to 4 MiB, echoed, each checked by length and SHA-256, ending with a
//! half-close), churn (one small exchange per connection), idle connections held throughout and
//! checked at the end, client resets mid-stream, and malformed PROXY headers; a SIGHUP every 3 s
//! (alternating two configs) and, every 4 s, one of the two upstream servers stops listening for
//! 2 s.
//!
//! Asserted: no stream corrupted; every failed churn exchange or incomplete bulk stream is one the
//! relay logged as reset by a server that stopped listening (which resets what was still in its
//! accept queue), at most one per load task per flap; every malformed header closed; every idle
//! connection alive; every reload applied; the relay's descriptors and RSS bounded throughout;
//! afterwards its active-connection gauge back to zero, its descriptors at their baseline plus
//! exactly its pooled pipes, its RSS near the baseline taken after a warm-up.

// The end-to-end tests' support module: this binary uses a part of it.
#[allow(dead_code, unused_imports)]
#[path = "e2e/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const HEADER: &[u8] = b"PROXY TCP4 198.51.100.7 192.0.2.2 40000 443\r\n";
const MALFORMED: &[&[u8]] = &[
    b"PROXY TCP9 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n",
    b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff",
    b"\r\n\r\n\0\r\nQUIT\n\x99\x11\x00\x0c",
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 and a very long tail that never ends with a line break ............................................",
];
/// Load tasks of each kind, and idle connections held throughout.
const BULK: u64 = 4;
const CHURN: usize = 4;
const IDLE: usize = 200;
/// Connections open at once at most: the idle ones, one per load task (bulk, churn, resets,
/// malformed headers) and the health checks of the two servers.
const MAX_CONNECTIONS: usize = IDLE + BULK as usize + CHURN + 2 + 2;
/// Descriptors the relay may hold at its peak beyond its baseline: two sockets per connection,
/// two pipes (four descriptors) per connection moving data, and up to 64 pooled pipes per worker
/// thread (2 workers here).
const MAX_EXTRA_FDS: usize = 2 * MAX_CONNECTIONS + 4 * (BULK as usize + CHURN + 2) + 2 * 64 * 2;
/// RSS the relay may gain over its warm baseline, at its peak or at the end.
const MAX_RSS_GROWTH_KIB: u64 = 16 * 1024;

#[derive(Default)]
struct Tally {
    bulk_ok: AtomicU64,
    bulk_bytes: AtomicU64,
    bulk_incomplete: AtomicU64,
    corrupted: AtomicU64,
    churn_ok: AtomicU64,
    churn_failed: AtomicU64,
    resets: AtomicU64,
    malformed_closed: AtomicU64,
    malformed_open: AtomicU64,
    reloads: AtomicU64,
    flaps: AtomicU64,
}

/// An echo server that can stop listening and start again on the same port.
struct FlappingServer {
    addr: SocketAddr,
    listening: Arc<AtomicBool>,
}

impl FlappingServer {
    async fn start() -> FlappingServer {
        let first = listen_reusable("127.0.0.1:0".parse().unwrap()).expect("bind 127.0.0.1:0");
        let addr = first.local_addr().unwrap();
        let listening = Arc::new(AtomicBool::new(true));
        let flag = Arc::clone(&listening);
        tokio::spawn(async move {
            let mut first = Some(first);
            loop {
                if !flag.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                // Its own port again: taken meanwhile (as an outgoing connection's), try again.
                let listener = match first.take().map_or_else(|| listen_reusable(addr), Ok) {
                    Ok(listener) => listener,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                // Accept until told to stop; the connections already made run on.
                while flag.load(Ordering::SeqCst) {
                    let accepted =
                        tokio::time::timeout(Duration::from_millis(50), listener.accept()).await;
                    if let Ok(Ok((mut stream, _))) = accepted {
                        tokio::spawn(async move {
                            let (mut r, mut w) = stream.split();
                            let _ = tokio::io::copy(&mut r, &mut w).await;
                            let _ = w.shutdown().await;
                        });
                    }
                }
            }
        });
        FlappingServer { addr, listening }
    }
}

/// A listener with SO_REUSEADDR (it listens again while accepted connections linger).
fn listen_reusable(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

async fn connect_with_header(relay: SocketAddr) -> Option<TcpStream> {
    let mut stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(relay))
        .await
        .ok()?
        .ok()?;
    stream.write_all(HEADER).await.ok()?;
    Some(stream)
}

/// One bulk stream: `len` bytes echoed, half-closed, checked. None when the stream did not
/// complete (a failure, not a corruption).
async fn bulk_once(relay: SocketAddr, seed: u64, len: u64) -> Option<bool> {
    let stream = connect_with_header(relay).await?;
    let (mut r, mut w) = stream.into_split();
    let sender = tokio::spawn(async move {
        let digest = try_send_payload(&mut w, seed, len).await;
        let _ = w.shutdown().await;
        digest
    });
    let received = tokio::time::timeout(Duration::from_secs(60), receive_all(&mut r)).await;
    let sent = sender.await.ok()?.ok()?;
    let (n, digest) = received.ok()?.ok()?;
    if n != len {
        // Shorter is a broken stream, longer a corrupted one.
        return if n > len { Some(false) } else { None };
    }
    Some(digest == sent)
}

async fn exchange(stream: &mut TcpStream, data: &[u8]) -> bool {
    if stream.write_all(data).await.is_err() {
        return false;
    }
    let mut back = vec![0u8; data.len()];
    matches!(
        tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut back)).await,
        Ok(Ok(_))
    ) && back == data
}

fn relay_config(
    listen: SocketAddr,
    admin: SocketAddr,
    servers: &[SocketAddr],
    handshake: &str,
    idle_timeout: Duration,
) -> String {
    // Longer than the soak: the idle connections are held throughout and checked at the end.
    let idle_timeout = idle_timeout.as_secs();
    let mut text = format!(
        "[global]\nworkers = 2\n\n[admin]\nlisten = \"{admin}\"\n\n\
         [[listener]]\nname = \"soak\"\nlisten = \"{listen}\"\npool = \"p\"\nproxy_protocol = \"any\"\n\
         handshake_timeout = \"{handshake}\"\nidle_timeout = \"{idle_timeout}s\"\nbacklog = 4096\n\n\
         [[pool]]\nname = \"p\"\nbalance = \"round-robin\"\nconnect_timeout = \"1s\"\nretries = 2\n\
         \x20 [pool.health]\n  check = \"tcp\"\n  interval = \"500ms\"\n  timeout = \"300ms\"\n  rise = 1\n  fall = 1\n"
    );
    for (i, s) in servers.iter().enumerate() {
        text.push_str(&format!(
            "  [[pool.server]]\n  name = \"s{i}\"\n  address = \"{s}\"\n"
        ));
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "soak: minutes long; SOAK_SECONDS=1200 cargo test --release --test soak -- --ignored --nocapture"]
async fn soak_mixed_load_with_reloads_and_flaps() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1200);
    raise_nofile(8192);
    let servers = [FlappingServer::start().await, FlappingServer::start().await];
    let server_addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let idle_timeout = Duration::from_secs(seconds + 300);
    let (relay, [listen, admin]) = start_relay(|[listen, admin]| {
        relay_config(listen, admin, &server_addrs, "2s", idle_timeout)
    });
    let configs = [
        relay_config(listen, admin, &server_addrs, "2s", idle_timeout),
        relay_config(listen, admin, &server_addrs, "3s", idle_timeout),
    ];
    let pid = relay.pid();
    let (rss_start, fds_start) = (rss_kib(pid), relay.open_fds());

    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();

    // Bulk streams with half-close.
    for worker in 0..BULK {
        let tally = Arc::clone(&tally);
        tasks.push(tokio::spawn(async move {
            let mut seeds = Payload::new(worker + 1);
            while Instant::now() < until {
                let mut word = [0u8; 8];
                seeds.fill(&mut word);
                let seed = u64::from_le_bytes(word);
                let len = seed % (4 << 20) + 1;
                match bulk_once(listen, seed, len).await {
                    Some(true) => {
                        tally.bulk_ok.fetch_add(1, Ordering::Relaxed);
                        tally.bulk_bytes.fetch_add(len, Ordering::Relaxed);
                    }
                    Some(false) => {
                        tally.corrupted.fetch_add(1, Ordering::Relaxed);
                    }
                    None => {
                        tally.bulk_incomplete.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    // Churn: one small exchange per connection.
    for _ in 0..CHURN {
        let tally = Arc::clone(&tally);
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                let ok = match connect_with_header(listen).await {
                    Some(mut s) => exchange(&mut s, &[7u8; 200]).await,
                    None => false,
                };
                let counter = if ok {
                    &tally.churn_ok
                } else {
                    &tally.churn_failed
                };
                counter.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    // Resets mid-stream.
    {
        let tally = Arc::clone(&tally);
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                if let Some(mut s) = connect_with_header(listen).await {
                    let _ = s.write_all(&[1u8; 50_000]).await;
                    // Linger 0: the close sends a RST.
                    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                    drop(s);
                    tally.resets.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    // Malformed PROXY headers: the relay must close them.
    {
        let tally = Arc::clone(&tally);
        tasks.push(tokio::spawn(async move {
            let mut i = 0usize;
            while Instant::now() < until {
                if let Ok(Ok(mut s)) =
                    tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(listen)).await
                {
                    let _ = s.write_all(MALFORMED[i % MALFORMED.len()]).await;
                    let mut buf = [0u8; 64];
                    let closed = matches!(
                        tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await,
                        Ok(Ok(0) | Err(_))
                    );
                    let counter = if closed {
                        &tally.malformed_closed
                    } else {
                        &tally.malformed_open
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    // Reloads every 3 s.
    {
        let tally = Arc::clone(&tally);
        let path = relay.config_path.clone();
        let configs = configs.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0usize;
            while Instant::now() + Duration::from_secs(3) < until {
                tokio::time::sleep(Duration::from_secs(3)).await;
                n += 1;
                std::fs::write(&path, support::quick_log_flush(&configs[n % 2])).unwrap();
                let _ = std::process::Command::new("kill")
                    .args(["-s", "HUP", &pid.to_string()])
                    .status();
                tally.reloads.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Server flaps: every 4 s one server stops listening for 2 s.
    {
        let tally = Arc::clone(&tally);
        let flags: Vec<_> = servers.iter().map(|s| Arc::clone(&s.listening)).collect();
        tasks.push(tokio::spawn(async move {
            let mut n = 0usize;
            while Instant::now() + Duration::from_secs(4) < until {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let flag = &flags[n % flags.len()];
                flag.store(false, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(2)).await;
                flag.store(true, Ordering::SeqCst);
                n += 1;
                tally.flaps.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Idle connections held throughout.
    let mut idle = Vec::new();
    for _ in 0..IDLE {
        if let Some(mut s) = connect_with_header(listen).await {
            if exchange(&mut s, b"hello").await {
                idle.push(s);
            }
        }
    }
    assert!(
        idle.len() >= IDLE * 95 / 100,
        "only {} idle connections",
        idle.len()
    );

    // The baseline under load, once warmed up (allocator arenas, pooled pipes and buffers).
    tokio::time::sleep(Duration::from_secs(seconds.min(30) / 3)).await;
    let rss_warm = rss_kib(pid);
    let mut rss_peak = rss_warm;
    let mut fds_peak = 0;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss_peak = rss_peak.max(rss_kib(pid));
        fds_peak = fds_peak.max(relay.open_fds());
        let elapsed = started.elapsed().as_secs();
        if elapsed % 60 == 0 {
            let t = &tally;
            eprintln!(
                "{elapsed}s: bulk {} ok / {} incomplete / {} corrupted, churn {} ok / {} failed, RSS {} KiB, fds {}",
                t.bulk_ok.load(Ordering::Relaxed),
                t.bulk_incomplete.load(Ordering::Relaxed),
                t.corrupted.load(Ordering::Relaxed),
                t.churn_ok.load(Ordering::Relaxed),
                t.churn_failed.load(Ordering::Relaxed),
                rss_kib(pid),
                relay.open_fds()
            );
        }
    }
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(90), task)
            .await
            .expect("a load task did not finish in time")
            .unwrap();
    }
    let mut idle_ok = 0;
    for s in &mut idle {
        if exchange(s, b"still there").await {
            idle_ok += 1;
        }
    }
    let idle_count = idle.len();
    drop(idle);

    // No leak: gauge, descriptors and memory back to their baseline.
    let active = || metric(admin, "l4relay_connections_active", &[("listener", "soak")]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while active().await != 0.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let gauge = active().await;
    let fds_back = fds_back_to(&relay, admin, fds_start, Duration::from_secs(30)).await;
    let (rss_end, fds_end) = (rss_kib(pid), relay.open_fds());
    // Every reload sent applied (the last one may still be under way).
    let reloads_sent = tally.reloads.load(Ordering::Relaxed) as f64;
    let reloads_ok = || metric(admin, "l4relay_config_reloads_total", &[("result", "ok")]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while reloads_ok().await < reloads_sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reloads_ok = reloads_ok().await;
    let reloads_failed = sample_in(
        &metrics_text(admin).await,
        "l4relay_config_reloads_total",
        &[("result", "error")],
    )
    .unwrap_or(0.0);

    // How the relay saw the connections end: a server that stopped listening resets what was
    // still in its accept queue (end=server_reset), the one cause of failures allowed.
    let mut ends = std::collections::BTreeMap::<String, u64>::new();
    for line in relay.access_log().lines() {
        if let Some(end) = field(line, "end") {
            *ends.entry(end.to_string()).or_default() += 1;
        }
    }
    eprintln!("access log ends: {ends:?}");
    let server_resets = ends.get("server_reset").copied().unwrap_or(0);

    let t = &tally;
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let (churn_failed, bulk_incomplete, flaps) = (
        load(&t.churn_failed),
        load(&t.bulk_incomplete),
        load(&t.flaps),
    );
    eprintln!(
        "soak {seconds}s: bulk {} streams ok ({} MiB, each checked), {bulk_incomplete} \
         incomplete, {} corrupted; churn {} ok / {churn_failed} failed; {} resets; malformed \
         headers {} closed / {} left open; idle {idle_ok}/{idle_count} alive at the end; \
         {reloads_sent} reloads sent ({reloads_ok} ok, {reloads_failed} failed), {flaps} flaps; \
         RSS start {rss_start} / warm {rss_warm} / peak {rss_peak} / end {rss_end} KiB; fds \
         start {fds_start} / peak {fds_peak} / end {fds_end}; active gauge {gauge}",
        load(&t.bulk_ok),
        load(&t.bulk_bytes) >> 20,
        load(&t.corrupted),
        load(&t.churn_ok),
        load(&t.resets),
        load(&t.malformed_closed),
        load(&t.malformed_open),
    );
    assert_eq!(load(&t.corrupted), 0, "corrupted streams");
    assert!(load(&t.bulk_ok) > 0, "no bulk stream completed");
    assert!(load(&t.churn_ok) > 0, "no churn exchange completed");
    assert!(
        flaps >= (seconds / 4).saturating_sub(1),
        "{flaps} flaps in {seconds} s: the servers hardly flapped"
    );
    assert!(
        churn_failed + bulk_incomplete <= server_resets,
        "{churn_failed} churn exchanges failed and {bulk_incomplete} bulk streams broke, more \
         than the {server_resets} connections the flapping servers reset: {ends:?}"
    );
    assert!(
        server_resets <= flaps * (BULK + CHURN as u64 + 1),
        "{server_resets} connections reset by servers in {flaps} flaps: more than one per load \
         task per flap"
    );
    assert_eq!(load(&t.malformed_open), 0, "malformed headers left open");
    assert!(load(&t.malformed_closed) > 0, "no malformed header sent");
    assert_eq!(idle_ok, idle_count, "idle connections lost");
    assert!(
        reloads_sent >= (seconds / 3) as f64 - 2.0,
        "{reloads_sent} reloads in {seconds} s"
    );
    assert_eq!(
        (reloads_ok, reloads_failed),
        (reloads_sent, 0.0),
        "reloads applied (ok, failed) of {reloads_sent} sent"
    );
    assert!(
        fds_peak <= fds_start + MAX_EXTRA_FDS,
        "relay fds peaked at {fds_peak}: {fds_start} at start, {MAX_EXTRA_FDS} more allowed for \
         {MAX_CONNECTIONS} connections and pooled pipes"
    );
    assert!(
        rss_peak <= rss_warm + MAX_RSS_GROWTH_KIB,
        "relay RSS peaked at {rss_peak} KiB, {rss_warm} KiB warm"
    );
    assert_eq!(gauge, 0.0, "active-connection gauge not back to 0");
    if let Err(e) = fds_back {
        panic!("after the soak: {e}");
    }
    assert!(
        rss_end <= rss_warm + MAX_RSS_GROWTH_KIB,
        "relay RSS {rss_end} KiB after the soak, {rss_warm} KiB warm"
    );
}
