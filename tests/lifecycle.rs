//! Lifecycle against the built binary: drain on SIGTERM under load, reload on SIGHUP under a
//! steady stream of new connections, and the systemd notifications in order.

mod common;

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
        .await
        .ok()?
        .ok()?;
    response.split(' ').nth(1)?.parse().ok()
}

/// Sends `len` bytes paced over about `over` while reading the echo back; returns whether the
/// echo matched byte for byte.
async fn paced_echo_transfer(addr: SocketAddr, seed: u64, len: u64, over: Duration) -> bool {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut r, mut w) = stream.into_split();
    let writer = tokio::spawn(async move {
        let mut payload = Payload::new(seed);
        let mut hasher = Sha256::new();
        let chunk_len = 1 << 20;
        let chunks = len / chunk_len;
        let pause = over / chunks as u32;
        let mut buf = vec![0u8; chunk_len as usize];
        for _ in 0..chunks {
            payload.fill(&mut buf);
            hasher.update(&buf);
            w.write_all(&buf).await.expect("paced write");
            tokio::time::sleep(pause).await;
        }
        w.shutdown().await.unwrap();
        <[u8; 32]>::from(hasher.finalize())
    });
    let received = receive_all(&mut r).await;
    let sent = writer.await.unwrap();
    matches!(received, Ok((n, digest)) if n == len && digest == sent)
}

/// True if a fresh connection gets its byte echoed through the relay.
async fn echo_works(addr: SocketAddr) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream.write_all(b"?").await.ok()?;
        let mut b = [0u8; 1];
        stream.read_exact(&mut b).await.ok()?;
        Some(())
    };
    tokio::time::timeout(Duration::from_secs(3), attempt)
        .await
        .ok()
        .flatten()
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_under_load() {
    let (server, _) = echo_server().await;
    let (listen, admin) = (free_addr(), free_addr());
    let config = config(listen, &[server], "", "").replace(
        "[admin]\nlisten = \"off\"",
        &format!("[drain]\nannounce = \"2s\"\ndeadline = \"10s\"\nclose_spread = \"1s\"\n\n[admin]\nlisten = \"{admin}\""),
    );
    let mut relay = RelayProcess::start(&config);
    assert_eq!(http_status(admin, "/readyz").await, Some(200));

    // Three 200 MiB transfers paced over ~4 s: in flight across the whole announce phase and
    // past the moment the listener closes.
    let transfers: Vec<_> = (0..3)
        .map(|i| {
            tokio::spawn(paced_echo_transfer(
                listen,
                i,
                200 << 20,
                Duration::from_secs(4),
            ))
        })
        .collect();
    // A straggler that never ends by itself.
    let mut straggler = TcpStream::connect(listen).await.unwrap();
    straggler.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    straggler.read_exact(&mut b).await.unwrap();

    relay.signal("TERM");
    let term_at = Instant::now();
    // Announce: not ready, still accepting.
    assert!(
        eventually(Duration::from_secs(1), || relay
            .stderr()
            .contains("SIGTERM: draining"))
        .await
    );
    assert_eq!(http_status(admin, "/readyz").await, Some(503));
    assert!(
        echo_works(listen).await,
        "a new connection during announce failed"
    );
    assert!(
        term_at.elapsed() < Duration::from_secs(2),
        "announce checks took too long to be meaningful"
    );

    // After announce: refused.
    let mut refused = false;
    while term_at.elapsed() < Duration::from_secs(5) {
        if TcpStream::connect(listen).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "listener still accepting after the announce phase");
    assert!(
        term_at.elapsed() >= Duration::from_millis(1900),
        "closed before announce ended"
    );

    for t in transfers {
        assert!(
            t.await.unwrap(),
            "a transfer in flight did not complete byte-exact"
        );
    }
    // The straggler is closed after the deadline (10 s after the listener closed), within the
    // spread. The deadline is generous so that the transfers finish first even on a busy machine.
    let mut rest = Vec::new();
    let closed =
        tokio::time::timeout(Duration::from_secs(16), straggler.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "straggler not closed");
    let at = term_at.elapsed();
    assert!(
        at >= Duration::from_secs(12) && at < Duration::from_secs(15),
        "straggler closed at {at:?}"
    );
    assert_eq!(
        relay.wait_exit(Duration::from_secs(5)),
        Some(0),
        "exit code:\n{}",
        relay.stderr()
    );
    let log = relay.access_log();
    assert!(
        log.lines().any(|l| l.contains("end=drain_deadline")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_exits_at_once() {
    let (server, _) = echo_server().await;
    let listen = free_addr();
    let mut relay = RelayProcess::start(&config(listen, &[server], "", ""));
    let _open = TcpStream::connect(listen).await.unwrap();
    relay.signal("TERM");
    assert!(
        eventually(Duration::from_secs(2), || relay
            .stderr()
            .contains("SIGTERM: draining"))
        .await
    );
    relay.signal("TERM");
    assert_eq!(relay.wait_exit(Duration::from_secs(3)), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_a_steady_stream_of_connections() {
    let (a, _) = named_server("a").await;
    let (b, _) = named_server("b").await;
    let (listen, extra, admin) = (free_addr(), free_addr(), free_addr());
    let base = |server: SocketAddr, with_extra: bool| {
        let mut text = format!(
            "[admin]\nlisten = \"{admin}\"\n\n[[listener]]\nname = \"main\"\nlisten = \"{listen}\"\npool = \"p\"\n"
        );
        if with_extra {
            text.push_str(&format!(
                "\n[[listener]]\nname = \"extra\"\nlisten = \"{extra}\"\npool = \"p\"\n"
            ));
        }
        text.push_str(&format!(
            "\n[[pool]]\nname = \"p\"\n  [[pool.server]]\n  address = \"{server}\"\n"
        ));
        text
    };
    let mut relay = RelayProcess::start(&base(a, false));

    // A few hundred new connections a second, each reading which server answered.
    let failures = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (failures, done, stop) = (Arc::clone(&failures), Arc::clone(&done), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(3));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let attempt = tokio::time::timeout(Duration::from_secs(3), async {
                    let mut stream = TcpStream::connect(listen).await.ok()?;
                    let mut name = [0u8; 2];
                    stream.read_exact(&mut name).await.ok()?;
                    Some(name[0])
                });
                match attempt.await {
                    Ok(Some(name)) => seen.push(name),
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            seen
        })
    };
    // An in-flight transfer across both reloads.
    let transfer = tokio::spawn(async move {
        let mut stream = TcpStream::connect(listen).await.unwrap();
        let mut greeting = [0u8; 2];
        stream.read_exact(&mut greeting).await.unwrap();
        let (mut r, mut w) = stream.into_split();
        let writer = tokio::spawn(async move {
            let mut payload = Payload::new(77);
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            for _ in 0..64 {
                payload.fill(&mut buf);
                hasher.update(&buf);
                w.write_all(&buf).await.unwrap();
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            w.shutdown().await.unwrap();
            <[u8; 32]>::from(hasher.finalize())
        });
        let got = receive_all(&mut r).await.unwrap();
        (greeting, got, writer.await.unwrap())
    });
    assert!(
        eventually(Duration::from_secs(5), || done.load(Ordering::Relaxed)
            > 100)
        .await
    );

    // Reload 1: the pool moves to server b, and a listener is added.
    std::fs::write(&relay.config_path, base(b, true)).unwrap();
    relay.signal("HUP");
    relay.wait_for_stderr("reload: done", Duration::from_secs(5));
    assert!(
        echo_greeting(extra).await == Some(*b"b\n"),
        "the added listener does not serve"
    );
    let before = done.load(Ordering::Relaxed);
    assert!(
        eventually(Duration::from_secs(5), || done.load(Ordering::Relaxed)
            > before + 100)
        .await
    );

    // Reload 2: invalid; nothing changes.
    std::fs::write(&relay.config_path, "[[listener]]\nname = 1\n").unwrap();
    relay.signal("HUP");
    relay.wait_for_stderr("still running the previous config", Duration::from_secs(5));
    let before = done.load(Ordering::Relaxed);
    assert!(
        eventually(Duration::from_secs(5), || done.load(Ordering::Relaxed)
            > before + 100)
        .await
    );
    assert_eq!(
        echo_greeting(extra).await,
        Some(*b"b\n"),
        "an invalid reload changed the listeners"
    );

    // Reload 3: the added listener is removed again.
    std::fs::write(&relay.config_path, base(b, false)).unwrap();
    relay.signal("HUP");
    assert!(
        eventually(Duration::from_secs(5), || relay
            .stderr()
            .matches("reload: done")
            .count()
            >= 2)
        .await
    );
    assert!(
        eventually(Duration::from_secs(5), || std::net::TcpStream::connect(
            extra
        )
        .is_err())
        .await
    );

    stop.store(true, Ordering::Relaxed);
    let seen = load.await.unwrap();
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "connections failed during reloads"
    );
    let first_b = seen
        .iter()
        .position(|&n| n == b'b')
        .expect("the new pool took effect");
    assert!(seen[..first_b].iter().all(|&n| n == b'a'));
    assert!(
        seen[first_b..].iter().all(|&n| n == b'b'),
        "old pool used after the reload"
    );
    let (greeting, (n, digest), sent) = transfer.await.unwrap();
    assert_eq!(
        &greeting, b"a\n",
        "the in-flight transfer started on the old server"
    );
    assert_eq!(
        (n, digest),
        (64 << 20, sent),
        "the in-flight transfer did not complete byte-exact"
    );

    let status = http_get_body(admin, "/metrics").await;
    assert!(
        status.contains("l4relay_config_reloads_total{result=\"ok\"} 2"),
        "{status}"
    );
    assert!(
        status.contains("l4relay_config_reloads_total{result=\"error\"} 1"),
        "{status}"
    );
}

async fn echo_greeting(addr: SocketAddr) -> Option<[u8; 2]> {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let mut name = [0u8; 2];
        stream.read_exact(&mut name).await.ok()?;
        Some(name)
    };
    tokio::time::timeout(Duration::from_secs(3), attempt)
        .await
        .ok()
        .flatten()
}

async fn http_get_body(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_notifications_arrive_in_order() {
    let (server, _) = echo_server().await;
    let listen = free_addr();
    let dir = scratch_dir("notify");
    let socket_path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let config = config(listen, &[server], "", "").replace(
        "[admin]",
        "[drain]\nannounce = \"100ms\"\ndeadline = \"1s\"\n\n[admin]",
    );
    let mut relay = RelayProcess::start_with(
        &config,
        None,
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let mut messages: Vec<String> = Vec::new();
    let receive_until = |want: &str, messages: &mut Vec<String>| {
        let mut buf = [0u8; 4096];
        loop {
            let n = socket
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("waiting for {want}: {e}; got {messages:?}"));
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            let found = message.contains(want);
            messages.push(message);
            if found {
                return;
            }
        }
    };
    receive_until("READY=1", &mut messages);
    receive_until("WATCHDOG=1", &mut messages);
    relay.signal("HUP");
    receive_until("RELOADING=1", &mut messages);
    receive_until("READY=1", &mut messages);
    relay.signal("TERM");
    receive_until("STOPPING=1", &mut messages);
    receive_until("EXTEND_TIMEOUT_USEC=", &mut messages);
    assert_eq!(relay.wait_exit(Duration::from_secs(5)), Some(0));

    let order: Vec<&str> = messages
        .iter()
        .filter_map(|m| {
            ["READY=1", "RELOADING=1", "STOPPING=1"]
                .into_iter()
                .find(|k| m.contains(k))
        })
        .collect();
    assert_eq!(
        order,
        ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"],
        "{messages:?}"
    );
    let reloading = messages.iter().find(|m| m.contains("RELOADING=1")).unwrap();
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    let _ = std::fs::remove_dir_all(&dir);
}
