//! How bytes move, as the README promises (issue 21, item 13): `relay = "auto"` switches a
//! bulk direction to splice (seen in `l4relay_pipes`: pipes exist only once something spliced)
//! while small exchanges never take a pipe; a kernel that refuses splice makes the relay fall
//! back to copying, counted in `l4relay_splice_fallbacks_total`; an upstream that stops
//! reading stops the relay reading from the client (backpressure, memory bounded) and every
//! byte arrives in order once it reads again; IPv6 listeners and upstreams.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Sends `len` payload bytes through `listen` to an echo server while reading them back;
/// asserts they come back complete and in order.
async fn bulk_echo(listen: SocketAddr, seed: u64, len: u64) {
    let (mut r, mut w) = connect(listen).await.into_split();
    let writer = tokio::spawn(async move {
        let digest = send_payload(&mut w, seed, len).await;
        w.shutdown().await.unwrap();
        digest
    });
    let (n, got) = tokio::time::timeout(Duration::from_secs(60), receive_all(&mut r))
        .await
        .expect("the echo in time")
        .expect("read the echo");
    assert_eq!(n, len, "echoed bytes");
    assert_eq!(got, writer.await.unwrap(), "the echo differs");
}

/// `l4relay_pipes` (in use, pooled) once no pipe is in use any more: the pipes the relay has
/// made so far, since pooled ones are kept (up to 64 per worker).
async fn pipes_at_rest(admin: SocketAddr) -> f64 {
    let deadline = Instant::now() + STEP_LIMIT;
    loop {
        let text = metrics_text(admin).await;
        let value = |state| {
            sample_in(&text, "l4relay_pipes", &[("state", state)])
                .unwrap_or_else(|| panic!("no l4relay_pipes{{state=\"{state}\"}}:\n{text}"))
        };
        if value("in_use") == 0.0 {
            return value("pooled");
        }
        assert!(Instant::now() < deadline, "pipes still in use:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(l4relay_no_splice, ignore = "the copy-only build never splices")]
async fn auto_switches_bulk_to_splice_and_leaves_small_exchanges_copied() {
    let (server, _) = echo_server().await;
    let (_relay, [auto, copy, admin]) = start_relay(|[auto, copy, admin]| {
        assemble_config(
            Some(admin),
            &[
                listener("auto", auto, "p", "relay = \"auto\""),
                listener("copy", copy, "p", "relay = \"copy\""),
            ],
            &[pool("p", &[server], "")],
        )
    });
    assert_eq!(pipes_at_rest(admin).await, 0.0, "pipes before any traffic");

    // Small exchanges under auto: no read fills the 64 KiB copy buffer, so no pipe is taken.
    for i in 0..50u64 {
        let mut stream = connect(auto).await;
        let message = format!("request {i}: {}", "x".repeat(100));
        assert_echo(&mut stream, message.as_bytes(), "small exchange").await;
        finish(stream, "small exchange").await;
    }
    assert_eq!(
        pipes_at_rest(admin).await,
        0.0,
        "auto took a pipe for small exchanges"
    );
    // Bulk under copy: never a pipe, so the pipes below can only come from splicing.
    bulk_echo(copy, 1, 16 << 20).await;
    assert_eq!(pipes_at_rest(admin).await, 0.0, "copy took a pipe");

    // Bulk under auto: reads fill the buffer, the directions move to splice and borrow pipes
    // (given back to the pool when the connection ends).
    bulk_echo(auto, 2, 16 << 20).await;
    let pooled = pipes_at_rest(admin).await;
    eprintln!("pipes pooled after one bulk connection under auto: {pooled}");
    assert!(pooled >= 1.0, "auto never switched to splice");
    for listener in ["auto", "copy"] {
        assert_eq!(
            metric(
                admin,
                "l4relay_splice_fallbacks_total",
                &[("listener", listener)]
            )
            .await,
            0.0,
            "splice works here: no fallback on {listener}"
        );
    }
}

// ---- a kernel that refuses splice ----

/// Makes splice(2) fail with EINVAL in the calling thread and in every process it starts from
/// now on (a seccomp filter, inherited across fork and exec), as a kernel or sandbox without
/// splice for these descriptors would. The relay's splice from a TCP socket cannot otherwise
/// fail with the errors it falls back on (EINVAL, ENOSYS, EOPNOTSUPP): Linux splices every TCP
/// socket. Err says why the filter could not be installed.
fn refuse_splice_in_this_thread() -> Result<(), String> {
    // Classic BPF over struct seccomp_data, whose first field is the system call number. No
    // architecture check: the filter only turns one call into an error, never allows
    // anything, so a foreign ABI's call of the same number failing too is harmless.
    // (The BPF constants' integer type differs between libc targets; the field is a u16.)
    let stmt = |code: u16, k: u32| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let ld_nr = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    let ret_k = (libc::BPF_RET | libc::BPF_K) as u16;
    let filter = [
        stmt(ld_nr, 0),
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: libc::SYS_splice as u32,
        },
        stmt(
            ret_k,
            libc::SECCOMP_RET_ERRNO | (libc::EINVAL as u32 & libc::SECCOMP_RET_DATA),
        ),
        stmt(ret_k, libc::SECCOMP_RET_ALLOW),
    ];
    let program = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl with integer arguments; NO_NEW_PRIVS (required to install a filter without
    // CAP_SYS_ADMIN) only ever restricts this thread and its children.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(format!(
            "PR_SET_NO_NEW_PRIVS: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `program` points to `filter`, both alive for the call; the kernel copies the
    // filter. Without SECCOMP_FILTER_FLAG_TSYNC it applies to this thread (and what it
    // starts) only, not to the test's other threads.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &program as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        return Err(format!(
            "PR_SET_SECCOMP: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(l4relay_no_splice, ignore = "the copy-only build never splices")]
async fn refused_splice_falls_back_to_copy_and_is_counted() {
    const CONNECTIONS: u64 = 5;
    let (server, _) = echo_server().await;
    // A thread of its own starts the relay under the filter, and ends with it.
    let started = std::thread::spawn(move || {
        refuse_splice_in_this_thread()?;
        Ok::<_, String>(start_relay(|[listen, admin]| {
            config_with_admin(admin, listen, &[server], "relay = \"splice\"", "")
        }))
    })
    .join()
    .unwrap();
    let (relay, [listen, admin]) = match started {
        Ok(started) => started,
        Err(why) if !under_ci() => {
            eprintln!("skipped: cannot install a seccomp filter here ({why})");
            return;
        }
        Err(why) => panic!("cannot install a seccomp filter ({why}); CI must allow it"),
    };

    for seed in 0..CONNECTIONS {
        bulk_echo(listen, seed, 1 << 20).await;
    }
    // Each connection's two directions tried splice once, were refused, and copied the rest
    // (every byte came back above). Counted when the connections end.
    let deadline = Instant::now() + STEP_LIMIT;
    loop {
        let fallbacks = metric(
            admin,
            "l4relay_splice_fallbacks_total",
            &[("listener", "test")],
        )
        .await;
        if fallbacks >= (2 * CONNECTIONS) as f64 {
            assert_eq!(fallbacks, (2 * CONNECTIONS) as f64);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{fallbacks} splice fallbacks counted for {CONNECTIONS} connections"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = relay
        .wait_for_log_lines(CONNECTIONS as usize, STEP_LIMIT)
        .await
        .join("\n");
    assert_eq!(
        log.lines()
            .filter(|l| field(l, "end") == Some("client_closed")
                && field(l, "bytes_s2c") == Some("1048576"))
            .count() as u64,
        CONNECTIONS,
        "{log}"
    );
}

// ---- an upstream that stops reading ----

/// What the client has sent so far (bytes the kernel took), and the digest of all of it.
struct Sender {
    sent: Arc<AtomicU64>,
    done: tokio::task::JoinHandle<[u8; 32]>,
}

/// Writes `len` payload bytes to `stream` in 64 KiB writes, counting them, then half-closes.
fn send_counted(mut w: tokio::net::tcp::OwnedWriteHalf, len: u64) -> Sender {
    let sent = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&sent);
    let done = tokio::spawn(async move {
        let mut payload = Payload::new(99);
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            payload.fill(&mut buf[..n]);
            hasher.update(&buf[..n]);
            w.write_all(&buf[..n]).await.expect("write to the relay");
            counter.fetch_add(n as u64, Ordering::Relaxed);
            left -= n as u64;
        }
        w.shutdown().await.unwrap();
        hasher.finalize().into()
    });
    Sender { sent, done }
}

/// Waits until `sent` has not grown for a whole second (a busy machine only slows the
/// filling of the buffers; it does not stop it for that long), up to `limit`.
async fn until_stalled(sent: &AtomicU64, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut last = sent.load(Ordering::Relaxed);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = sent.load(Ordering::Relaxed);
        if now > 0 && now == last {
            return true;
        }
        last = now;
    }
    false
}

/// A server that accepts one connection and reads nothing until told to; then reads to the
/// end and reports (bytes, SHA-256).
async fn stalled_server() -> (
    SocketAddr,
    oneshot::Sender<()>,
    oneshot::Receiver<(u64, [u8; 32])>,
) {
    let listener = upstream_listener();
    let addr = listener.local_addr().unwrap();
    let (go, start_reading) = oneshot::channel::<()>();
    let (report, received) = oneshot::channel();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let _ = start_reading.await;
        let _ = report.send(receive_all(&mut stream).await.expect("read from the relay"));
    });
    (addr, go, received)
}

/// A server that never reads makes the relay stop reading from the client: the client's
/// writes stall long before all is sent, the relay's memory does not grow with what waits, and
/// once the server reads, every byte arrives, in order.
async fn server_backpressure(mode: &str) {
    // Far more than the kernel's socket buffers on the way can hold (a few MiB each here).
    const TOTAL: u64 = 128 << 20;
    const MAX_STALLED: u64 = TOTAL / 2;
    const MAX_RSS_GROWTH_KIB: u64 = 16 * 1024;
    let (server, go, received) = stalled_server().await;
    let (relay, [listen, admin]) = start_relay(|[listen, admin]| {
        config_with_admin(admin, listen, &[server], &format!("relay = \"{mode}\""), "")
    });
    metrics_text(admin).await;
    let rss_before = rss_kib(relay.pid());

    let (mut r, w) = connect(listen).await.into_split();
    let sender = send_counted(w, TOTAL);
    assert!(
        until_stalled(&sender.sent, Duration::from_secs(60)).await,
        "{mode}: the client's writes never stalled: the relay reads on without its server"
    );
    let stalled_at = sender.sent.load(Ordering::Relaxed);
    let rss = rss_kib(relay.pid());
    eprintln!(
        "{mode}: the client's writes stalled after {} KiB of {} KiB; relay RSS {rss_before} -> \
         {rss} KiB",
        stalled_at / 1024,
        TOTAL / 1024
    );
    assert!(
        stalled_at <= MAX_STALLED,
        "{mode}: {stalled_at} bytes taken while the server read nothing"
    );
    assert!(
        rss.saturating_sub(rss_before) <= MAX_RSS_GROWTH_KIB,
        "{mode}: relay RSS grew from {rss_before} to {rss} KiB while the server read nothing"
    );

    go.send(()).unwrap();
    let digest = tokio::time::timeout(Duration::from_secs(120), sender.done)
        .await
        .expect("the client finishes once the server reads")
        .unwrap();
    let (n, got) = tokio::time::timeout(Duration::from_secs(60), received)
        .await
        .expect("the server reads to the end")
        .unwrap();
    assert_eq!(n, TOTAL, "{mode}: bytes the server received");
    assert_eq!(got, digest, "{mode}: the bytes differ or came out of order");
    // The server closes after reading: the relay passes that on.
    let mut rest = Vec::new();
    tokio::time::timeout(STEP_LIMIT, r.read_to_end(&mut rest))
        .await
        .expect("the end passed on")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_stops_reading_stops_the_relay_reading() {
    for mode in ["splice", "copy"] {
        server_backpressure(mode).await;
    }
}

// ---- IPv6 ----

/// ::1 to listen on (a port the kernel found free a moment ago); None, with why, when this
/// host has no IPv6 loopback.
fn ipv6_loopback() -> Result<SocketAddr, String> {
    std::net::TcpListener::bind("[::1]:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("cannot bind [::1]:0: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_listener_and_upstream() {
    if let Err(why) = ipv6_loopback() {
        assert!(!under_ci(), "no IPv6 loopback ({why}); CI must provide ::1");
        eprintln!("skipped: no IPv6 loopback ({why})");
        return;
    }
    let upstream = TcpListener::bind("[::1]:0").await.unwrap();
    let server = upstream.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = upstream.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    let chosen = std::cell::Cell::new(None);
    let (relay, [admin]) = start_relay(|[admin]| {
        let listen = ipv6_loopback().expect("::1 was there a moment ago");
        chosen.set(Some(listen));
        config_with_admin(
            admin,
            listen,
            &[server],
            "",
            "  [pool.health]\n  check = \"tcp\"\n  interval = \"200ms\"\n  rise = 1\n",
        )
    });
    let listen = chosen.get().unwrap();

    let stream = TcpStream::connect(listen).await.expect("connect to [::1]");
    let client = stream.local_addr().unwrap();
    let (mut r, mut w) = stream.into_split();
    let writer = tokio::spawn(async move {
        let digest = send_payload(&mut w, 6, 4 << 20).await;
        w.shutdown().await.unwrap();
        digest
    });
    let (n, got) = receive_all(&mut r).await.unwrap();
    assert_eq!((n, got), (4 << 20, writer.await.unwrap()));

    let line = log_for(&relay, client).await;
    assert_fields(
        &line,
        &[
            ("server_addr", Some(server.to_string().as_str())),
            ("end", Some("client_closed")),
            ("bytes_s2c", Some("4194304")),
        ],
    );
    assert!(client.is_ipv6(), "{client}");
    // Health checks reach the IPv6 server too.
    let status = get_status(admin).await;
    let server_json = &servers_json(&status, "p", "s0")[0];
    assert_eq!(server_json["state"], "up", "{server_json}");
}
