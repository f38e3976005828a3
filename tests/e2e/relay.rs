//! End-to-end relay behaviour against the built binary: bulk integrity on each relay path,
//! many concurrent connections, half-close, resets, idle timeout.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::*;
use socket2::SockRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// A server that sends `len` bytes from `seed` while receiving everything the client sends;
/// reports (bytes received, digest) for each connection.
async fn exchange_server(
    seed: u64,
    len: u64,
) -> (SocketAddr, mpsc::UnboundedReceiver<(u64, [u8; 32])>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let (mut r, mut w) = stream.into_split();
                let sender = tokio::spawn(async move {
                    send_payload(&mut w, seed, len).await;
                    w.shutdown().await.unwrap();
                });
                let received = receive_all(&mut r).await.expect("server receive");
                sender.await.unwrap();
                let _ = tx.send(received);
            });
        }
    });
    (addr, rx)
}

async fn both_ways_at_once(relay_mode: &str) {
    const LEN: u64 = 256 << 20;
    let (server, mut server_got) = exchange_server(2, LEN).await;
    let (relay, [listen]) =
        start_relay(|[listen]| config(listen, &[server], &format!("relay = \"{relay_mode}\""), ""));

    let stream = TcpStream::connect(listen).await.unwrap();
    let (mut r, mut w) = stream.into_split();
    let sender = tokio::spawn(async move {
        let digest = send_payload(&mut w, 1, LEN).await;
        w.shutdown().await.unwrap();
        digest
    });
    let (client_bytes, client_digest) =
        tokio::time::timeout(Duration::from_secs(120), receive_all(&mut r))
            .await
            .expect("transfer finished in time")
            .unwrap();
    let sent_digest = sender.await.unwrap();
    let (server_bytes, server_digest) = server_got.recv().await.unwrap();

    assert_eq!(client_bytes, LEN);
    assert_eq!(
        client_digest,
        payload_digest(2, LEN),
        "server → client stream corrupted"
    );
    assert_eq!(server_bytes, LEN);
    assert_eq!(
        server_digest, sent_digest,
        "client → server stream corrupted"
    );

    let log = relay.wait_for_log_lines(1, Duration::from_secs(5)).await;
    assert!(
        log[0].contains(&format!("bytes_c2s={LEN} bytes_s2c={LEN}")),
        "{}",
        log[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_both_ways_splice() {
    both_ways_at_once("splice").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_both_ways_copy() {
    both_ways_at_once("copy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_both_ways_auto() {
    both_ways_at_once("auto").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_connections_every_byte_verified() {
    let (server, accepted) = echo_server().await;
    let (relay, [listen]) = start_relay(|[listen]| config(listen, &[server], "backlog = 2048", ""));
    let mut tasks = Vec::new();
    for i in 0..1000u64 {
        tasks.push(tokio::spawn(async move {
            // Sizes from 0 to ~1 MiB, skewed small like real traffic.
            let len = match i % 10 {
                0 => 1 << 20,
                1..=3 => 64 << 10,
                _ => i * 37 % 4096,
            };
            let stream = TcpStream::connect(listen).await.expect("connect");
            let (mut r, mut w) = stream.into_split();
            let sender = tokio::spawn(async move {
                let digest = send_payload(&mut w, i, len).await;
                w.shutdown().await.unwrap();
                digest
            });
            let (got, digest) = receive_all(&mut r).await.expect("receive");
            assert_eq!(got, len, "connection {i}: length");
            assert_eq!(digest, sender.await.unwrap(), "connection {i}: content");
        }));
    }
    let deadline = tokio::time::timeout(Duration::from_secs(120), async {
        for task in tasks {
            task.await.unwrap();
        }
    });
    deadline.await.expect("all connections done in time");
    assert_eq!(accepted.get(), 1000);
    let lines = relay
        .wait_for_log_lines(1000, Duration::from_secs(10))
        .await;
    assert!(lines
        .iter()
        .all(|l| l.contains("end=client_closed") || l.contains("end=server_closed")));
}

/// One side shuts down its write; the other keeps sending and everything still arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_both_ways() {
    // The server reads until the client's FIN, then sends a reply, then closes.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                stream.read_to_end(&mut request).await.unwrap();
                let reply = format!("got {} bytes", request.len()).into_bytes();
                let mut big = vec![0u8; 4 << 20];
                Payload::new(9).fill(&mut big);
                stream.write_all(&reply).await.unwrap();
                stream.write_all(&big).await.unwrap();
                stream.shutdown().await.unwrap();
            });
        }
    });
    for mode in ["splice", "copy"] {
        let (_relay, [listen]) =
            start_relay(|[listen]| config(listen, &[server], &format!("relay = \"{mode}\""), ""));

        // Client half-closes first: it still receives the whole reply after its FIN.
        let mut client = TcpStream::connect(listen).await.unwrap();
        client.write_all(&[7u8; 100_000]).await.unwrap();
        client.shutdown().await.unwrap();
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();
        assert!(
            reply.starts_with(b"got 100000 bytes"),
            "{mode}: {:?}",
            &reply[..20]
        );
        assert_eq!(reply.len(), 16 + (4 << 20), "{mode}");

        // Server half-closes first: the client's stream after the server's FIN still arrives.
        let (server2, mut got) = half_closing_server().await;
        let (_relay2, [listen2]) = start_relay(|[listen2]| {
            config(listen2, &[server2], &format!("relay = \"{mode}\""), "")
        });
        let mut client = TcpStream::connect(listen2).await.unwrap();
        let mut greeting = Vec::new();
        client.read_to_end(&mut greeting).await.unwrap();
        assert_eq!(greeting, b"hello, then FIN", "{mode}");
        let sent = send_payload(&mut client, 5, 8 << 20).await;
        client.shutdown().await.unwrap();
        let (n, digest) = got.recv().await.unwrap();
        assert_eq!(
            (n, digest),
            (8 << 20, sent),
            "{mode}: data after the server's FIN"
        );
    }
}

/// Writes a greeting, shuts down its write side, then reads everything the client sends.
async fn half_closing_server() -> (SocketAddr, mpsc::UnboundedReceiver<(u64, [u8; 32])>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                stream.write_all(b"hello, then FIN").await.unwrap();
                stream.shutdown().await.unwrap();
                let _ = tx.send(receive_all(&mut stream).await.unwrap());
            });
        }
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_reset_reaches_the_client_and_client_reset_closes_the_server() {
    // Server: read one message, then reset (SO_LINGER 0) if it says "reset", else say it holds
    // the connection and wait for its end.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = listener.local_addr().unwrap();
    let (held_tx, mut held_rx) = mpsc::unbounded_channel::<()>();
    let (closed_tx, mut closed_rx) = mpsc::unbounded_channel::<Instant>();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (held_tx, closed_tx) = (held_tx.clone(), closed_tx.clone());
            tokio::spawn(async move {
                let mut buf = [0u8; 5];
                stream.read_exact(&mut buf).await.unwrap();
                if &buf == b"reset" {
                    SockRef::from(&stream)
                        .set_linger(Some(Duration::ZERO))
                        .unwrap();
                    drop(stream);
                } else {
                    let _ = held_tx.send(());
                    // Wait for the relay to pass the client's reset on.
                    let mut rest = [0u8; 1];
                    let _ = stream.read(&mut rest).await;
                    let _ = closed_tx.send(Instant::now());
                }
            });
        }
    });
    let (relay, [listen]) = start_relay(|[listen]| config(listen, &[server], "", ""));

    let mut client = TcpStream::connect(listen).await.unwrap();
    client.write_all(b"reset").await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1];
    let result = tokio::time::timeout(Duration::from_secs(1), client.read(&mut buf)).await;
    match result {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        other => panic!("client did not see the server's reset within 1s: {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(1));

    let client = TcpStream::connect(listen).await.unwrap();
    let mut client = client;
    client.write_all(b"holdx").await.unwrap();
    // The relay has connected upstream and passed the message on before the client resets.
    tokio::time::timeout(STEP_LIMIT, held_rx.recv())
        .await
        .expect("the message reached the server in time")
        .unwrap();
    SockRef::from(&client)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    let reset_at = Instant::now();
    drop(client);
    let closed_at = tokio::time::timeout(Duration::from_secs(2), closed_rx.recv())
        .await
        .expect("server side closed after the client's reset")
        .unwrap();
    assert!(closed_at.duration_since(reset_at) < Duration::from_secs(1));
    let lines = relay.wait_for_log_lines(2, Duration::from_secs(5)).await;
    assert!(
        lines.iter().any(|l| l.contains("end=server_reset")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("end=client_reset")),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_silent_connections_but_not_slow_ones() {
    let (server, _) = echo_server().await;
    let (relay, [listen]) =
        start_relay(|[listen]| config(listen, &[server], "idle_timeout = \"2s\"", ""));

    // Silent: closed by the relay after about 2 s.
    let mut silent = TcpStream::connect(listen).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(6), silent.read(&mut buf))
        .await
        .expect("idle connection closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0);
    // Not before the timeout by the client's clock (which starts first); how soon after it, by
    // the relay's (the access log, below).
    let idle = started.elapsed();
    assert!(
        idle >= Duration::from_millis(1900),
        "closed after {idle:?}, before the 2 s timeout"
    );

    // A byte a second for 5 s (past the 2 s timeout): never cut, every byte echoed.
    let mut slow = TcpStream::connect(listen).await.unwrap();
    for i in 0..5u8 {
        slow.write_all(&[i]).await.unwrap();
        let mut echoed = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(2), slow.read_exact(&mut echoed))
            .await
            .expect("echo in time")
            .expect("slow stream still open");
        assert_eq!(echoed[0], i);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    slow.shutdown().await.unwrap();
    let mut rest = Vec::new();
    slow.read_to_end(&mut rest).await.unwrap();
    let lines = relay.wait_for_log_lines(2, Duration::from_secs(5)).await;
    assert!(lines[0].contains("end=idle_timeout"), "{}", lines[0]);
    let ms: f64 = field(&lines[0], "duration_ms").unwrap().parse().unwrap();
    assert!(
        (1990.0..3000.0).contains(&ms),
        "the relay ended the silent connection after {ms} ms: {}",
        lines[0]
    );
    assert!(
        lines[1].contains("end=client_closed") && lines[1].contains("bytes_c2s=5"),
        "{}",
        lines[1]
    );
}

/// The kernel's timer for the TCP socket from `local_port` to `remote`, as /proc/net/tcp shows
/// it: 0 none, 1 retransmit, 2 keepalive, 3 TIME_WAIT, 4 zero-window probe.
fn tcp_timer(local_port: u16, remote: SocketAddr) -> Option<u8> {
    let remote_hex = format!("0100007F:{:04X}", remote.port());
    let local_suffix = format!(":{local_port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .ok()?
        .lines()
        .skip(1)
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(1)?.ends_with(&local_suffix) && *fields.get(2)? == remote_hex)
                .then(|| u8::from_str_radix(fields.get(5)?.split(':').next()?, 16).ok())
                .flatten()
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_keepalive_is_set_once_a_connection_lasts() {
    // The server socket gets the pool's keepalive options at the session's first tick, a
    // second in (a short connection never pays for them): the keepalive timer then runs.
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = upstream.local_addr().unwrap();
    let (relay, [listen]) = start_relay(|[listen]| {
        config(
            listen,
            &[server],
            "",
            "keepalive_idle = \"30s\"\nkeepalive_interval = \"5s\"\nkeepalive_count = 3",
        )
    });
    let mut client = connect(listen).await;
    let (mut accepted, relay_side) = upstream.accept().await.unwrap();
    // Traffic both ways first, so that the socket is established and idle.
    client.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    accepted.read_exact(&mut buf).await.unwrap();
    accepted.write_all(b"pong").await.unwrap();
    client.read_exact(&mut buf).await.unwrap();

    let started = Instant::now();
    let keepalive = eventually(Duration::from_secs(5), || {
        tcp_timer(relay_side.port(), server) == Some(2)
    })
    .await;
    assert!(
        keepalive,
        "no keepalive timer on the relay's server socket within 5 s (timer {:?}):\n{}",
        tcp_timer(relay_side.port(), server),
        relay.stderr()
    );
    eprintln!(
        "keepalive timer seen {:?} after the first exchange",
        started.elapsed()
    );
}
