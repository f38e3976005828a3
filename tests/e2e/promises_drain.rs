//! The end of the process (issue 21, item 13): connections still open at the drain deadline are
//! closed spread over `drain.close_spread`, not all at once; the drain asks systemd for time
//! enough (`EXTEND_TIMEOUT_USEC`, checked against the drain config); and SIGINT exits at once,
//! open connections or not.

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant, SystemTime};

use crate::support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connections open at the drain deadline.
const OPEN: usize = 40;
const ANNOUNCE: Duration = Duration::from_millis(100);
const DEADLINE: Duration = Duration::from_millis(300);
const SPREAD: Duration = Duration::from_secs(3);
/// How late a close may be seen here after the relay made it, on a busy machine.
const LATE: Duration = Duration::from_secs(1);

/// The test's end of `$NOTIFY_SOCKET`: waits for the datagram that contains `want`.
fn notify_message(socket: &UnixDatagram, want: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no {want} within {limit:?}; got {seen:?}");
        socket.set_read_timeout(Some(left)).unwrap();
        let mut buf = [0u8; 4096];
        match socket.recv(&mut buf) {
            Ok(n) => {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                if message.contains(want) {
                    return message;
                }
                seen.push(message);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("notify socket: {e}"),
        }
    }
}

/// Opens a connection through the relay and checks that it relays.
async fn open_relayed(listen: SocketAddr) -> (TcpStream, SocketAddr) {
    let mut stream = connect(listen).await;
    stream.write_all(b"hi").await.unwrap();
    let mut back = [0u8; 2];
    stream.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"hi");
    let local = stream.local_addr().unwrap();
    (stream, local)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_spreads_the_last_closes_and_asks_systemd_for_time_enough() {
    let (server, _) = echo_server().await;
    let dir = scratch_dir("notify");
    let notify_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let (mut relay, [listen]) = start_relay_with(
        Launch {
            shell_prefix: None,
            envs: &[("NOTIFY_SOCKET", notify_path.to_str().unwrap())],
        },
        |[listen]| {
            format!(
                "[drain]\nannounce = \"{}ms\"\ndeadline = \"{}ms\"\nclose_spread = \"{}ms\"\n\n{}",
                ANNOUNCE.as_millis(),
                DEADLINE.as_millis(),
                SPREAD.as_millis(),
                config(listen, &[server], "", "")
            )
        },
    );
    notify_message(&notify, "READY=1", Duration::from_secs(5));

    let mut waiting = Vec::with_capacity(OPEN);
    for _ in 0..OPEN {
        let (mut stream, _) = open_relayed(listen).await;
        waiting.push(tokio::spawn(async move {
            let mut rest = Vec::new();
            // A close or a reset: either way, when it came is what counts.
            let _ = stream.read_to_end(&mut rest).await;
            SystemTime::now()
        }));
    }

    relay.signal("TERM");
    let signalled = Instant::now();
    // systemd waits this long from the message for the process to exit (its value against
    // the drain config: `drain_asks_systemd_for_the_whole_drain`).
    let extended = extend_timeout(&notify);
    let drain = ANNOUNCE + DEADLINE + SPREAD;

    let mut closed = Vec::with_capacity(OPEN);
    for task in waiting {
        let at = tokio::time::timeout(drain + Duration::from_secs(20), task)
            .await
            .expect("every connection closed by the drain")
            .unwrap();
        closed.push(at);
    }
    let code = relay.wait_exit(extended.saturating_sub(signalled.elapsed()));
    assert_eq!(
        code,
        Some(0),
        "the relay did not exit 0 within EXTEND_TIMEOUT_USEC of its message:\n{}",
        relay.stderr()
    );

    // Closes begin at the deadline (by the relay's own log) and end within the spread.
    let deadline_at = logged_at(&relay, "drain deadline: closing")
        .unwrap_or_else(|| panic!("no drain deadline logged:\n{}", relay.stderr()));
    let offsets: Vec<Duration> = closed
        .iter()
        .map(|at| {
            // The log's timestamp is the moment before the closes begin; a few ms of slack for
            // the two clocks' reading order.
            at.duration_since(deadline_at - Duration::from_millis(5))
                .unwrap_or_else(|_| panic!("a connection closed before the drain deadline"))
        })
        .collect();
    let first = *offsets.iter().min().unwrap();
    let last = *offsets.iter().max().unwrap();
    assert!(
        last <= SPREAD + LATE,
        "the last close came {last:?} after the deadline (spread {SPREAD:?})"
    );
    // Evenly spread, not at once: over 40 uniform draws the first and last are more than half
    // the window apart but for a chance of 40 × 2^-39, and at most one quarter of the window
    // goes without a close but for a chance of 6 × 2^-40. Closed all at once, they would fall
    // within a few milliseconds of each other, in one quarter.
    assert!(
        last - first >= SPREAD / 2,
        "closes spread over {:?} only (close_spread {SPREAD:?}): {offsets:?}",
        last - first
    );
    let quarters = (0..4)
        .filter(|q| {
            let (from, to) = (SPREAD * *q / 4, SPREAD * (*q + 1) / 4);
            offsets.iter().any(|o| *o >= from && *o < to)
        })
        .count();
    assert!(
        quarters >= 3,
        "closes in {quarters} quarter(s) of the spread only: {offsets:?}"
    );
    let log = relay.access_log();
    assert_eq!(
        log.lines()
            .filter(|l| field(l, "end") == Some("drain_deadline"))
            .count(),
        OPEN,
        "{log}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// The time the relay asks systemd for when a drain begins (`EXTEND_TIMEOUT_USEC`).
fn extend_timeout(notify: &UnixDatagram) -> Duration {
    let extend = notify_message(notify, "EXTEND_TIMEOUT_USEC=", Duration::from_secs(5));
    extend
        .lines()
        .find_map(|l| l.strip_prefix("EXTEND_TIMEOUT_USEC="))
        .and_then(|v| v.trim().parse().ok())
        .map(Duration::from_micros)
        .unwrap_or_else(|| panic!("no number in {extend:?}"))
}

/// `EXTEND_TIMEOUT_USEC` covers announce + deadline + close_spread. Phases of different,
/// long lengths, so that one left out (the shortest is 37 s) or counted twice shows beyond the
/// margin the relay may add for its final exit (at most the 30 s the systemd unit allows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_asks_systemd_for_the_whole_drain() {
    let (server, _) = echo_server().await;
    let dir = scratch_dir("notify");
    let notify_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let (mut relay, [_]) = start_relay_with(
        Launch {
            shell_prefix: None,
            envs: &[("NOTIFY_SOCKET", notify_path.to_str().unwrap())],
        },
        |[listen]| {
            format!(
                "[drain]\nannounce = \"61s\"\ndeadline = \"127s\"\nclose_spread = \"37s\"\n\n{}",
                config(listen, &[server], "", "")
            )
        },
    );
    notify_message(&notify, "READY=1", Duration::from_secs(5));
    relay.signal("TERM");
    notify_message(&notify, "STOPPING=1", Duration::from_secs(5));
    let extended = extend_timeout(&notify);
    let drain = Duration::from_secs(61 + 127 + 37);
    assert!(
        extended >= drain && extended <= drain + Duration::from_secs(30),
        "EXTEND_TIMEOUT_USEC={}: the drain takes {drain:?}",
        extended.as_micros()
    );
    // A second SIGTERM ends the wait.
    relay.wait_for_stderr("SIGTERM: draining", Duration::from_secs(5));
    relay.signal("TERM");
    assert_eq!(relay.wait_exit(Duration::from_secs(10)), Some(0));
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_exits_at_once_with_connections_open() {
    let (server, _) = echo_server().await;
    // The default drain: 65 s of announce before the listeners would even close.
    let (mut relay, [listen]) = start_relay(|[listen]| config(listen, &[server], "", ""));
    let mut idle = Vec::new();
    for _ in 0..5 {
        idle.push(open_relayed(listen).await.0);
    }
    // And one in mid-transfer: a writer that never stops by itself.
    let (mut reader, mut writer) = open_relayed(listen).await.0.into_split();
    let busy = tokio::spawn(async move {
        let chunk = vec![7u8; 64 * 1024];
        while writer.write_all(&chunk).await.is_ok() {}
    });
    let drain_reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while matches!(reader.read(&mut buf).await, Ok(n) if n > 0) {}
    });

    relay.signal("INT");
    let signalled = Instant::now();
    // At once: well under a second on an idle machine; 2 s leaves room for a busy one and is
    // still far below the 65 s a drain would announce for.
    let code = relay.wait_exit(Duration::from_secs(2));
    let took = signalled.elapsed();
    assert!(
        code.is_some(),
        "still running 2 s after SIGINT:\n{}",
        relay.stderr()
    );
    assert!(
        relay.stderr().contains("SIGINT: exiting now"),
        "{}",
        relay.stderr()
    );
    eprintln!("exited {took:?} after SIGINT with code {code:?}");
    // The process is gone, so are its sockets: every client sees its connection end.
    for mut stream in idle {
        let mut rest = Vec::new();
        let ended = tokio::time::timeout(STEP_LIMIT, stream.read_to_end(&mut rest)).await;
        assert!(ended.is_ok(), "a connection outlived the relay");
    }
    tokio::time::timeout(STEP_LIMIT, busy)
        .await
        .expect("the busy writer's connection ended")
        .unwrap();
    tokio::time::timeout(STEP_LIMIT, drain_reader)
        .await
        .expect("the busy reader's connection ended")
        .unwrap();
}
