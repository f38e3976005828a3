//! Floods and slowloris: thousands of connections at a time (2,500 per CPU, at most 10,000)
//! that send nothing, or a byte a second, before their PROXY header or ClientHello. Every one
//! must be closed at `handshake_timeout` (as the relay's access log times it), the well-behaved
//! clients beside them must all be served without waiting behind the flood, the relay's memory
//! per connection held must stay small, and its descriptors must return to where they were.
//!
//! Its own test binary: the attackers take most of this process's descriptors and the machine's
//! CPUs, which the other end-to-end tests, run in parallel in one process, would lack (cargo
//! runs test binaries one after another).

// The end-to-end tests' support module: this binary uses a part of it.
#[allow(dead_code, unused_imports)]
#[path = "e2e/support/mod.rs"]
mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// How late after `handshake_timeout` the relay may end a connection, by its own clock (its
/// access log's duration_ms): a timer firing late on a busy machine.
const RELAY_SLACK: Duration = Duration::from_millis(1500);
/// How late an attacker may see its end, by its own clock: `RELAY_SLACK` plus the wait in the
/// accept queue before the relay's clock starts, on a loaded 2-core machine. Still well short of
/// "never" (10 s after connecting).
const CLIENT_SLACK: Duration = Duration::from_secs(5);
/// Relay memory per connection it holds: a socket, a task and a small handshake buffer. A relay
/// that allocated its 64 KiB relay buffer at accept would need twice this.
const MAX_RSS_PER_HELD_CONNECTION_KIB: u64 = 32;
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
                if after <= HANDSHAKE_TIMEOUT + CLIENT_SLACK {
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
/// latencies and the number of failed exchanges. On a runtime of their own, so that what they
/// measure is the relay, not the attackers' tasks queued ahead of them in the test's scheduler.
async fn legit_traffic(target: SocketAddr, length: Duration) -> (Vec<Duration>, usize) {
    tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(legit_loops(target, length))
    })
    .await
    .unwrap()
}

async fn legit_loops(target: SocketAddr, length: Duration) -> (Vec<Duration>, usize) {
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

/// The `q` quantile (0..=1) of `samples`, sorting them in place; zero when empty.
pub fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let index = ((samples.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
    samples[index]
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

/// `per_cpu` attackers for each CPU this process may use, within `min..=max`: a flood that
/// loads any machine about as much.
fn per_cpu(per_cpu: usize, min: usize, max: usize) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (per_cpu * cpus).clamp(min, max)
}

/// Access-log lines of `end` with their duration_ms.
fn logged_durations(relay: &RelayProcess, end: &str) -> Vec<Duration> {
    relay
        .access_log()
        .lines()
        .filter(|l| field(l, "end") == Some(end))
        .map(|l| {
            let ms: f64 = field(l, "duration_ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no duration_ms in {l}"));
            Duration::from_secs_f64(ms / 1e3)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_and_slowloris_are_closed_at_handshake_timeout_and_legit_clients_are_served() {
    let attackers_n = per_cpu(1_500, 2_000, 10_000);
    let nofile = raise_nofile(attackers_n as u64 + 4000);
    assert!(
        nofile >= attackers_n as u64 + 1000,
        "need {} descriptors for the attackers, RLIMIT_NOFILE allows {nofile}",
        attackers_n + 1000
    );
    let (server, _) = echo_server().await;
    let (relay, [pp, sni, admin]) = start_relay(|[pp, sni, admin]| {
        format!(
            "[admin]\nlisten = \"{admin}\"\n\n\
             [[listener]]\nname = \"pp\"\nlisten = \"{pp}\"\npool = \"p\"\nproxy_protocol = \"v1\"\n\
             handshake_timeout = \"2s\"\nbacklog = 4096\n\n\
             [[listener]]\nname = \"sni\"\nlisten = \"{sni}\"\npool = \"p\"\nhandshake_timeout = \"2s\"\n\
             backlog = 4096\n  [[listener.route]]\n  server_names = [\"a.test\"]\n  pool = \"p\"\n\n\
             [[pool]]\nname = \"p\"\n  [[pool.server]]\n  address = \"{server}\"\n"
        )
    });
    // The baseline before anything is relayed: no pipes pooled yet.
    metrics_text(admin).await;
    let fds_baseline = relay.open_fds();

    // Legitimate traffic alone.
    let (mut quiet, quiet_failed) = legit_traffic(pp, Duration::from_secs(3)).await;
    assert_eq!(
        quiet_failed, 0,
        "legitimate exchanges failed without attack"
    );
    let quiet_p99 = summary("without attack", &mut quiet);
    let fds_before = relay.open_fds();
    let rss_before = rss_kib(relay.pid());

    // The attack: a slot per attacker, each reconnecting as soon as the relay ends its
    // connection, for 7 s; the slots start evenly over the first handshake_timeout, so that the
    // flood is a steady stream rather than waves of reconnects all timed out at once.
    let attack_length = Duration::from_secs(7);
    let attack_start = Instant::now();
    let until = attack_start + attack_length;
    let tally = Arc::new(AttackTally::default());
    let attackers: Vec<_> = (0..attackers_n)
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
                tokio::time::sleep(HANDSHAKE_TIMEOUT * i as u32 / attackers_n as u32).await;
                attacker(target, source, attack, until, tally).await
            })
        })
        .collect();
    // The relay's peaks while the flood lasts, sampled every 100 ms.
    let attack_over = Arc::new(AtomicBool::new(false));
    let peaks = {
        let (pid, over) = (relay.pid(), Arc::clone(&attack_over));
        tokio::spawn(async move {
            let (mut fds, mut rss) = (0, 0);
            while !over.load(Ordering::Relaxed) && Instant::now() < until {
                let open = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
                fds = fds.max(open);
                rss = rss.max(rss_kib(pid));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (fds, rss)
        })
    };
    // Legitimate traffic once the relay holds at least half the flood, until it stops.
    let established = eventually(attack_length / 2, || {
        relay.open_fds() > fds_before + attackers_n / 2
    })
    .await;
    let (mut attacked, attacked_failed) =
        legit_traffic(pp, until.saturating_duration_since(Instant::now())).await;
    for a in attackers {
        a.await.unwrap();
    }
    attack_over.store(true, Ordering::Relaxed);
    let (fds_peak, rss_peak) = peaks.await.unwrap();
    let attack_p99 = summary("under attack", &mut attacked);
    let attack_p50 = quantile(&mut attacked, 0.5);

    let t = &tally;
    let opened = t.opened.load(Ordering::Relaxed);
    let held = fds_peak.saturating_sub(fds_before);
    let rss_per_held = rss_peak.saturating_sub(rss_before) / held.max(1) as u64;
    eprintln!(
        "attack: {attackers_n} attackers; {opened} connections opened ({} connect failures), {} \
         closed within {:?}, {} late, {} never closed, slowest {} ms; relay fds {fds_before} -> \
         peak {fds_peak}, RSS {rss_before} -> peak {rss_peak} KiB ({rss_per_held} KiB per \
         connection held); p99 {quiet_p99:?} -> {attack_p99:?}",
        t.connect_failed.load(Ordering::Relaxed),
        t.closed_in_time.load(Ordering::Relaxed),
        HANDSHAKE_TIMEOUT + CLIENT_SLACK,
        t.closed_late.load(Ordering::Relaxed),
        t.never_closed.load(Ordering::Relaxed),
        t.slowest_ms.load(Ordering::Relaxed),
    );
    assert!(
        established,
        "the relay never held half the flood ({} fds, {fds_before} before)",
        relay.open_fds()
    );
    assert!(
        opened >= attackers_n as u64,
        "the flood never reached {attackers_n} connections"
    );
    assert_eq!(
        attacked_failed, 0,
        "legitimate exchanges failed under attack"
    );
    assert!(!attacked.is_empty(), "no legitimate exchange under attack");
    // Served beside the flood, not behind it: a relay that made legitimate clients wait for
    // attackers to time out would take handshake_timeout for most of them. A few wait for a
    // burst of attackers ahead of them in the accept queue, on a loaded machine up to about
    // handshake_timeout; none waits longer than an attacker is held.
    assert!(
        attack_p50 < HANDSHAKE_TIMEOUT / 4 && attack_p99 < HANDSHAKE_TIMEOUT + RELAY_SLACK,
        "legitimate exchanges under attack: p50 {attack_p50:?}, p99 {attack_p99:?} (without: p99 \
         {quiet_p99:?})"
    );
    assert!(
        rss_per_held <= MAX_RSS_PER_HELD_CONNECTION_KIB,
        "relay RSS {rss_before} -> {rss_peak} KiB holding {held} connections: {rss_per_held} KiB each"
    );
    assert_eq!(t.never_closed.load(Ordering::Relaxed), 0);
    assert_eq!(
        t.closed_late.load(Ordering::Relaxed),
        0,
        "attackers saw their end later than handshake_timeout + {CLIENT_SLACK:?}"
    );
    // Each worker writes its lines at its next flush (every 20 ms here), not at the close.
    let logged = || {
        relay
            .access_log()
            .lines()
            .filter(|l| l.contains("handshake_timeout"))
            .count() as u64
    };
    eventually(Duration::from_secs(10), || logged() >= opened).await;
    // Each attacker ended at handshake_timeout by the relay's own clock, and is logged so.
    let durations = logged_durations(&relay, "handshake_timeout");
    assert_eq!(
        durations.len() as u64,
        opened,
        "every attacker is logged as a handshake timeout"
    );
    let early = durations
        .iter()
        .filter(|d| **d < HANDSHAKE_TIMEOUT - Duration::from_millis(5))
        .count();
    let late = durations
        .iter()
        .filter(|d| **d > HANDSHAKE_TIMEOUT + RELAY_SLACK)
        .count();
    assert_eq!(
        (early, late),
        (0, 0),
        "ended before handshake_timeout, or after it + {RELAY_SLACK:?} (longest {:?})",
        durations.iter().max()
    );
    if let Err(e) = fds_back_to(&relay, admin, fds_baseline, Duration::from_secs(10)).await {
        panic!("after the attack: {e}");
    }
}
