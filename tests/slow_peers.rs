//! Slow peers: clients that never read must not make the relay buffer what their servers send.
//! Backpressure has to reach the server (its writes stop), and the relay's memory per such
//! connection stays at its fixed in-flight buffer, whatever the server would send.
//!
//! A test binary of its own: it parks about 2 GB in kernel socket buffers (1,000 stalled
//! streams), which on a small machine reaches `net.ipv4.tcp_mem`'s limit. Linux then resets
//! sockets that close with unsent data (`TCP: out of memory` in dmesg): inside the e2e binary,
//! that reset the admin answers of tests running beside it. Cargo runs test binaries one after
//! another, so on its own it has the kernel's TCP memory to itself.

#[allow(dead_code, unused_imports)]
#[path = "e2e/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

const CLIENTS: usize = 1_000;
/// The bound asserted per connection: the relay's copy buffer (64 KiB) or pipe bookkeeping, with
/// room for allocator and task overhead; far below what the servers try to send.
const MAX_RSS_PER_CONNECTION_KIB: u64 = 300;

/// A server that writes an endless stream to every connection, counting what the kernel took.
async fn endless_server(sent: Arc<AtomicU64>) -> SocketAddr {
    let listener = upstream_listener();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let sent = Arc::clone(&sent);
            tokio::spawn(async move {
                let chunk = vec![0x5au8; 64 * 1024];
                // Ends when the relay closes the connection (the test drops its clients).
                while stream.write_all(&chunk).await.is_ok() {
                    sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
            });
        }
    });
    addr
}

/// A client with a small receive buffer that connects and then never reads.
async fn never_reading_client(target: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    tokio::time::timeout(Duration::from_secs(10), socket.connect(target))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// Waits until `sent` stops growing (by at most 0.1% over a whole second: a loaded machine that
/// only slows the filling of the buffers does not look stalled), up to `limit`.
async fn until_stalled(sent: &AtomicU64, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut last = sent.load(Ordering::Relaxed);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = sent.load(Ordering::Relaxed);
        if now > 0 && now - last <= now / 1000 {
            return true;
        }
        last = now;
    }
    false
}

async fn slow_clients_keep_memory_bounded(mode: &str) {
    let sent = Arc::new(AtomicU64::new(0));
    let server = endless_server(Arc::clone(&sent)).await;
    let (relay, [listen, admin]) = start_relay(|[listen, admin]| {
        config_with_admin(
            admin,
            listen,
            &[server],
            &format!("relay = \"{mode}\"\nbacklog = 4096"),
            "",
        )
    });
    // The baseline before anything is relayed: no pipes pooled yet.
    metrics_text(admin).await;
    let rss_before = rss_kib(relay.pid());
    let fds_before = relay.open_fds();

    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        clients.push(never_reading_client(listen).await);
    }
    assert!(
        until_stalled(&sent, Duration::from_secs(30)).await,
        "{mode}: the servers never stopped sending: no backpressure"
    );
    // Stalled for good: the relay is not reading on the clients' behalf.
    let stalled_at = sent.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = sent.load(Ordering::Relaxed);
    let rss = rss_kib(relay.pid());
    let per_connection = rss.saturating_sub(rss_before) / CLIENTS as u64;
    eprintln!(
        "{mode}: {CLIENTS} never-reading clients; servers sent {} KiB per connection \
         ({} KiB more in the last 2 s); relay RSS {rss_before} -> {rss} KiB = {per_connection} KiB \
         per connection; fds {fds_before} -> {}",
        stalled_at / 1024 / CLIENTS as u64,
        (later - stalled_at) / 1024,
        relay.open_fds()
    );
    // A relay reading on the clients' behalf keeps the servers sending at loopback speed (GB
    // in 2 s); what trickles in after the stall is the kernel growing socket buffers
    // (autotuning), a few tens of KiB per connection on a busy machine.
    assert!(
        later - stalled_at <= stalled_at / 10,
        "{mode}: the servers kept sending ({stalled_at} -> {later} bytes)"
    );
    assert!(
        per_connection < MAX_RSS_PER_CONNECTION_KIB,
        "{mode}: {per_connection} KiB of relay RSS per never-reading client"
    );

    // Once they leave, the relay holds what it held before, plus the pipes it pooled (which it
    // reports): no descriptor more.
    drop(clients);
    if let Err(e) = fds_back_to(&relay, admin, fds_before, Duration::from_secs(10)).await {
        panic!("{mode}: after the clients left: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_reading_clients_do_not_make_the_relay_buffer_the_stream() {
    raise_nofile(3 * CLIENTS as u64 + 1000);
    for mode in ["splice", "copy"] {
        slow_clients_keep_memory_bounded(mode).await;
    }
}
