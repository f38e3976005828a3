//! Floods and slowloris: 10,000 connections at a time that send nothing, or a byte a second,
//! before their PROXY header or ClientHello. Every one must be closed at `handshake_timeout`,
//! the well-behaved clients beside them must all be served, and the relay's descriptors must
//! return to where they were.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const ATTACKERS: usize = 10_000;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// Accept-queue wait and scheduling on a loaded 2-core machine, on top of the timeout.
const SLACK: Duration = Duration::from_millis(2500);
const LEGIT_LOOPS: usize = 8;
const LEGIT_PAUSE: Duration = Duration::from_millis(10);
const LEGIT_REQUEST: usize = 100;

/// What an attacker sends, one byte a second, or nothing at all.
#[derive(Clone, Copy)]
enum Attack {
    Silent,
    /// A PROXY v1 header that never ends.
    DribbleProxy,
    /// A TLS record header announcing a ClientHello that never comes.
    DribbleHello,
}

impl Attack {
    fn bytes(self) -> &'static [u8] {
        match self {
            Attack::Silent => b"",
            Attack::DribbleProxy => b"PROXY TCP4 192.0.2.1 192.0.2.2 1234 443\r\n",
            Attack::DribbleHello => &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc],
        }
    }
}

#[derive(Default)]
struct AttackTally {
    opened: AtomicU64,
    closed_in_time: AtomicU64,
    closed_late: AtomicU64,
    never_closed: AtomicU64,
    connect_failed: AtomicU64,
    slowest_ms: AtomicU64,
}

/// Opens a connection, behaves like `attack` and waits for the relay to end it; repeats until
/// `until`. Each attempt is bounded: a connection still open 10 s after connecting counts as
/// never closed.
async fn attacker(
    target: SocketAddr,
    source: IpAddr,
    attack: Attack,
    until: Instant,
    tally: Arc<AttackTally>,
) {
    while Instant::now() < until {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(source, 0)).unwrap();
        let mut stream =
            match tokio::time::timeout(Duration::from_secs(5), socket.connect(target)).await {
                Ok(Ok(stream)) => stream,
                _ => {
                    tally.connect_failed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
        tally.opened.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let mut next_byte = attack.bytes().iter();
        let mut buf = [0u8; 64];
        let closed = loop {
            tokio::select! {
                read = stream.read(&mut buf) => match read {
                    Ok(0) | Err(_) => break Some(started.elapsed()),
                    Ok(_) => {} // nothing is expected before the handshake; keep waiting
                },
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    if let Some(&byte) = next_byte.next() {
                        if stream.write_all(&[byte]).await.is_err() {
                            break Some(started.elapsed());
                        }
                    }
                    if started.elapsed() > Duration::from_secs(10) {
                        break None;
                    }
                }
            }
        };
        match closed {
            Some(after) => {
                let ms = after.as_millis() as u64;
                tally.slowest_ms.fetch_max(ms, Ordering::Relaxed);
                if after <= HANDSHAKE_TIMEOUT + SLACK {
                    tally.closed_in_time.fetch_add(1, Ordering::Relaxed);
                } else {
                    tally.closed_late.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {
                tally.never_closed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// One legitimate exchange on a fresh connection: PROXY v1 header, 100 bytes, their echo.
async fn legit_exchange(target: SocketAddr) -> Option<Duration> {
    let started = Instant::now();
    let exchange = async {
        let socket = TcpSocket::new_v4().ok()?;
        socket
            .bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 20)), 0))
            .ok()?;
        let mut stream: TcpStream = socket.connect(target).await.ok()?;
        let mut request = b"PROXY TCP4 198.51.100.7 192.0.2.2 40000 443\r\n".to_vec();
        request.extend(std::iter::repeat_n(b'r', LEGIT_REQUEST));
        stream.write_all(&request).await.ok()?;
        let mut reply = [0u8; LEGIT_REQUEST];
        stream.read_exact(&mut reply).await.ok()?;
        (reply == [b'r'; LEGIT_REQUEST]).then_some(())
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
        .map(|()| started.elapsed())
}

/// Runs `LEGIT_LOOPS` clients, each an exchange every `LEGIT_PAUSE`, for `length`; returns the
/// latencies and the number of failed exchanges.
async fn legit_traffic(target: SocketAddr, length: Duration) -> (Vec<Duration>, usize) {
    let until = Instant::now() + length;
    let loops: Vec<_> = (0..LEGIT_LOOPS)
        .map(|_| {
            tokio::spawn(async move {
                let (mut latencies, mut failed) = (Vec::new(), 0);
                while Instant::now() < until {
                    match legit_exchange(target).await {
                        Some(latency) => latencies.push(latency),
                        None => failed += 1,
                    }
                    tokio::time::sleep(LEGIT_PAUSE).await;
                }
                (latencies, failed)
            })
        })
        .collect();
    let (mut all, mut failed) = (Vec::new(), 0);
    for l in loops {
        let (latencies, f) = l.await.unwrap();
        all.extend(latencies);
        failed += f;
    }
    (all, failed)
}

fn summary(name: &str, latencies: &mut [Duration]) -> Duration {
    let p50 = quantile(latencies, 0.50);
    let p99 = quantile(latencies, 0.99);
    let max = quantile(latencies, 1.0);
    eprintln!(
        "{name}: {} exchanges, p50 {p50:?}, p99 {p99:?}, max {max:?}",
        latencies.len()
    );
    p99
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_and_slowloris_are_closed_at_handshake_timeout_and_legit_clients_are_served() {
    let nofile = raise_nofile(ATTACKERS as u64 + 4000);
    assert!(
        nofile >= ATTACKERS as u64 + 1000,
        "need {} descriptors for the attackers, RLIMIT_NOFILE allows {nofile}",
        ATTACKERS + 1000
    );
    let (server, _) = echo_server().await;
    let (pp, sni) = (free_addr(), free_addr());
    let text = format!(
        "[admin]\nlisten = \"off\"\n\n\
         [[listener]]\nname = \"pp\"\nlisten = \"{pp}\"\npool = \"p\"\nproxy_protocol = \"v1\"\n\
         handshake_timeout = \"2s\"\nbacklog = 4096\n\n\
         [[listener]]\nname = \"sni\"\nlisten = \"{sni}\"\npool = \"p\"\nhandshake_timeout = \"2s\"\n\
         backlog = 4096\n  [[listener.route]]\n  server_names = [\"a.test\"]\n  pool = \"p\"\n\n\
         [[pool]]\nname = \"p\"\n  [[pool.server]]\n  address = \"{server}\"\n"
    );
    let relay = RelayProcess::start(&text);

    // Baseline: legitimate traffic alone.
    let (mut quiet, quiet_failed) = legit_traffic(pp, Duration::from_secs(3)).await;
    assert_eq!(
        quiet_failed, 0,
        "legitimate exchanges failed without attack"
    );
    let quiet_p99 = summary("without attack", &mut quiet);
    let fds_before = relay.open_fds();
    let rss_before = rss_kib(relay.pid());

    // The attack: 10,000 slots, each reconnecting as soon as the relay ends its connection, for
    // 7 s; started over the first second so the accept queue is not the only thing measured.
    let attack_length = Duration::from_secs(7);
    let attack_start = Instant::now();
    let until = attack_start + attack_length;
    let tally = Arc::new(AttackTally::default());
    let attackers: Vec<_> = (0..ATTACKERS)
        .map(|i| {
            let tally = Arc::clone(&tally);
            let (target, attack) = match i % 4 {
                0 => (pp, Attack::Silent),
                1 => (pp, Attack::DribbleProxy),
                2 => (sni, Attack::Silent),
                _ => (sni, Attack::DribbleHello),
            };
            let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % 8) as u8));
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_micros(100 * i as u64)).await;
                attacker(target, source, attack, until, tally).await
            })
        })
        .collect();
    // Measure once the flood is established, until it stops.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let fds_under_attack = relay.open_fds();
    let rss_under_attack = rss_kib(relay.pid());
    let (mut attacked, attacked_failed) =
        legit_traffic(pp, attack_length - Duration::from_millis(1500)).await;
    for a in attackers {
        a.await.unwrap();
    }
    let attack_p99 = summary("under attack", &mut attacked);

    let t = &tally;
    let opened = t.opened.load(Ordering::Relaxed);
    eprintln!(
        "attack: {opened} connections opened ({} connect failures), {} closed within {:?}, {} late, \
         {} never closed, slowest {} ms; relay fds {fds_before} -> {fds_under_attack}, \
         RSS {rss_before} -> {rss_under_attack} KiB; p99 {quiet_p99:?} -> {attack_p99:?}",
        t.connect_failed.load(Ordering::Relaxed),
        t.closed_in_time.load(Ordering::Relaxed),
        HANDSHAKE_TIMEOUT + SLACK,
        t.closed_late.load(Ordering::Relaxed),
        t.never_closed.load(Ordering::Relaxed),
        t.slowest_ms.load(Ordering::Relaxed),
    );
    assert_eq!(
        attacked_failed, 0,
        "legitimate exchanges failed under attack"
    );
    assert!(
        opened >= ATTACKERS as u64,
        "the flood never reached {ATTACKERS} connections"
    );
    assert!(
        fds_under_attack > fds_before + ATTACKERS / 2,
        "the relay did not hold the flood ({fds_under_attack} fds)"
    );
    assert_eq!(t.never_closed.load(Ordering::Relaxed), 0);
    assert_eq!(
        t.closed_late.load(Ordering::Relaxed),
        0,
        "attackers closed after handshake_timeout + {SLACK:?}"
    );
    assert!(
        eventually(Duration::from_secs(10), || relay.open_fds() <= fds_before).await,
        "relay fds {} after the attack, {fds_before} before",
        relay.open_fds()
    );
    // Each worker writes its lines at its next flush (every 20 ms here), not at the close.
    let timeouts = || {
        relay
            .access_log()
            .lines()
            .filter(|l| l.contains("handshake_timeout"))
            .count() as u64
    };
    eventually(Duration::from_secs(10), || timeouts() >= opened).await;
    let timeouts = timeouts();
    assert_eq!(
        timeouts, opened,
        "every attacker is logged as a handshake timeout"
    );
}
