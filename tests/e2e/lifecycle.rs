//! Lifecycle against the built binary: drain on SIGTERM under load, reload on SIGHUP under a
//! steady stream of new connections, the systemd notifications in order, and the watchdog ping
//! withheld while one worker thread is stuck.

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
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

/// What the relay logs as its drain goes from phase to phase.
const DRAINING: &str = "SIGTERM: draining";
const LISTENERS_CLOSED: &str = "drain: listeners closed";
const DEADLINE: &str = "drain deadline: closing";
/// The drain's phases in `drain_under_load`, and how late the relay may end one by its own log
/// on a busy machine.
const ANNOUNCE: Duration = Duration::from_secs(2);
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
const LATE: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_under_load() {
    let (server, _) = echo_server().await;
    let (mut relay, [listen, admin]) = start_relay(|[listen, admin]| {
        format!(
            "[drain]\nannounce = \"{}s\"\ndeadline = \"{}s\"\nclose_spread = \"1s\"\n\n{}",
            ANNOUNCE.as_secs(),
            DRAIN_DEADLINE.as_secs(),
            config_with_admin(admin, listen, &[server], "", "")
        )
    });
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
    // Announce: not ready, still accepting. The echo proves the listener still accepted after
    // the drain began, however long these checks took on a busy machine; when the announce
    // phase ended is timed by the relay's own log below.
    relay.wait_for_stderr(DRAINING, Duration::from_secs(10));
    assert_eq!(http_status(admin, "/readyz").await, Some(503));
    assert!(
        echo_works(listen).await,
        "a new connection during announce failed:\n{}",
        relay.stderr()
    );

    // After announce: refused.
    relay.wait_for_stderr(LISTENERS_CLOSED, Duration::from_secs(10));
    assert!(
        TcpStream::connect(listen).await.is_err(),
        "listener still accepting after the announce phase"
    );
    let announced = logged_between(&relay, DRAINING, LISTENERS_CLOSED);
    assert!(
        announced >= ANNOUNCE && announced < ANNOUNCE + LATE,
        "listeners closed {announced:?} after the drain began (announce {ANNOUNCE:?})"
    );

    for t in transfers {
        assert!(
            t.await.unwrap(),
            "a transfer in flight did not complete byte-exact"
        );
    }
    // The straggler is closed at the deadline (10 s after the listener closed), within the
    // spread. The deadline is generous so that the transfers finish first even on a busy machine.
    let mut rest = Vec::new();
    let closed =
        tokio::time::timeout(Duration::from_secs(30), straggler.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "straggler not closed:\n{}", relay.stderr());
    assert!(
        logged_at(&relay, DEADLINE).is_some(),
        "the straggler was closed before the drain deadline:\n{}",
        relay.stderr()
    );
    let deadline_at = logged_between(&relay, LISTENERS_CLOSED, DEADLINE);
    assert!(
        deadline_at >= DRAIN_DEADLINE && deadline_at < DRAIN_DEADLINE + LATE,
        "drain deadline {deadline_at:?} after the listeners closed (deadline {DRAIN_DEADLINE:?})"
    );
    assert_eq!(
        relay.wait_exit(Duration::from_secs(10)),
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
    let (mut relay, [listen]) = start_relay(|[listen]| config(listen, &[server], "", ""));
    let _open = TcpStream::connect(listen).await.unwrap();
    relay.signal("TERM");
    relay.wait_for_stderr(DRAINING, Duration::from_secs(10));
    relay.signal("TERM");
    // At once: the default drain announces for 65 s before it even stops accepting.
    assert_eq!(relay.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(
        relay
            .stderr()
            .contains("second signal during drain: exiting now"),
        "{}",
        relay.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_a_steady_stream_of_connections() {
    let (a, _) = named_server("a").await;
    let (b, _) = named_server("b").await;
    let base = |[listen, extra, admin]: [SocketAddr; 3], server: SocketAddr, with_extra: bool| {
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
    // `extra`, a loopback address of its own like the others, is bound at the first reload.
    let (mut relay, addrs) = start_relay(|addrs| base(addrs, a, false));
    let [listen, extra, admin] = addrs;

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
    relay.write_config(base(addrs, b, true)).unwrap();
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
    relay.write_config("[[listener]]\nname = 1\n").unwrap();
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
    relay.write_config(base(addrs, b, false)).unwrap();
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
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

/// The test's end of `$NOTIFY_SOCKET`: the datagrams l4relay sends to systemd.
struct NotifySocket {
    socket: UnixDatagram,
    dir: PathBuf,
    path: PathBuf,
    /// Every message received so far, in order.
    messages: Vec<String>,
}

impl NotifySocket {
    fn bind() -> NotifySocket {
        let dir = scratch_dir("notify");
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        NotifySocket {
            socket,
            dir,
            path,
            messages: Vec::new(),
        }
    }

    fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// The next message, or None when none arrives before `deadline`.
    fn next_before(&mut self, deadline: Instant) -> Option<String> {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())?;
        self.socket.set_read_timeout(Some(left)).unwrap();
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.messages.push(message.clone());
                Some(message)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("notify socket: {e}"),
        }
    }

    /// Receives until a message containing `want` arrives; panics if none does within `limit`.
    fn receive_until(&mut self, want: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            match self.next_before(deadline) {
                Some(message) if message.contains(want) => return,
                Some(_) => {}
                None => panic!("no {want} within {limit:?}; got {:?}", self.messages),
            }
        }
    }

    /// The messages already queued, without waiting for more.
    fn take_queued(&mut self) -> Vec<String> {
        self.socket.set_nonblocking(true).unwrap();
        let mut queued = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.socket.recv(&mut buf) {
            queued.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        self.socket.set_nonblocking(false).unwrap();
        self.messages.extend(queued.iter().cloned());
        queued
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_notifications_arrive_in_order() {
    let (server, _) = echo_server().await;
    let mut notify = NotifySocket::bind();
    let (mut relay, [_]) = start_relay_with(
        Launch {
            shell_prefix: None,
            envs: &[
                ("NOTIFY_SOCKET", notify.path()),
                ("WATCHDOG_USEC", "400000"),
            ],
        },
        |[listen]| {
            config(listen, &[server], "", "").replace(
                "[admin]",
                "[drain]\nannounce = \"100ms\"\ndeadline = \"1s\"\n\n[admin]",
            )
        },
    );
    let limit = Duration::from_secs(5);
    notify.receive_until("READY=1", limit);
    notify.receive_until("WATCHDOG=1", limit);
    relay.signal("HUP");
    notify.receive_until("RELOADING=1", limit);
    notify.receive_until("READY=1", limit);
    relay.signal("TERM");
    notify.receive_until("STOPPING=1", limit);
    notify.receive_until("EXTEND_TIMEOUT_USEC=", limit);
    assert_eq!(relay.wait_exit(Duration::from_secs(5)), Some(0));

    let messages = &notify.messages;
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
}

// ---- a stuck worker and the systemd watchdog ----

/// What the control thread logs when a worker does not answer its watchdog probe.
const NO_RESPONSE: &str = "worker-0 has not run for";

/// The id of the thread of process `pid` named `name` (as `std::thread::Builder::name` sets it).
fn thread_named(pid: u32, name: &str) -> Option<libc::pid_t> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .filter_map(Result::ok)
        .find_map(|task| {
            let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
            if comm.trim_end() != name {
                return None;
            }
            task.file_name().to_str()?.parse().ok()
        })
}

/// Every thread of process `pid` with its scheduler state ('S', 'R', ..., 't' when stopped by
/// a tracer).
fn thread_states(pid: u32) -> Vec<(libc::pid_t, char)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| {
            let tid = task.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            let state = stat[stat.rfind(')')? + 2..].chars().next()?;
            Some((tid, state))
        })
        .collect()
}

/// One thread of another process stopped with ptrace (PTRACE_SEIZE, then PTRACE_INTERRUPT)
/// while the other threads of that process run on. Dropping it lets the thread run again, so
/// a failing assertion never leaves the relay half-frozen (or unreapable: a traced thread's
/// exit waits for its tracer).
///
/// ptrace attaches a tracee to the tracing *thread*, not the process: create, resume and drop
/// a `StoppedThread` on one thread, never from async code that may move between threads.
struct StoppedThread {
    tid: libc::pid_t,
    /// A signal that stopped the thread before our interrupt did, handed back at the detach.
    signal: libc::c_int,
    stopped: bool,
}

impl StoppedThread {
    /// Stops thread `tid`; Err only when it cannot be traced at all (PTRACE_SEIZE failed).
    fn stop(tid: libc::pid_t) -> std::io::Result<StoppedThread> {
        let none = std::ptr::null_mut::<libc::c_void>();
        // SAFETY: PTRACE_SEIZE with no options: addr and data are not dereferenced.
        if unsafe { libc::ptrace(libc::PTRACE_SEIZE, tid, none, none) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // Attached from here on: the guard detaches on every path, panics included.
        let mut thread = StoppedThread {
            tid,
            signal: 0,
            stopped: false,
        };
        if let Err(e) = thread.interrupt(Duration::from_secs(5)) {
            panic!("cannot stop thread {tid}: {e}");
        }
        Ok(thread)
    }

    /// PTRACE_INTERRUPT, then waits (polling, up to `limit`) until the thread reports its stop.
    fn interrupt(&mut self, limit: Duration) -> Result<(), String> {
        let none = std::ptr::null_mut::<libc::c_void>();
        // SAFETY: PTRACE_INTERRUPT on our seized tracee; addr and data are unused.
        if unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, self.tid, none, none) } != 0 {
            return Err(format!(
                "PTRACE_INTERRUPT: {}",
                std::io::Error::last_os_error()
            ));
        }
        let deadline = Instant::now() + limit;
        loop {
            let mut status = 0;
            // SAFETY: waitpid writes one c_int into the valid, exclusively borrowed `status`.
            // __WALL: the tracee is a thread, not a child process of ours.
            let waited =
                unsafe { libc::waitpid(self.tid, &mut status, libc::__WALL | libc::WNOHANG) };
            if waited == self.tid {
                if !libc::WIFSTOPPED(status) {
                    return Err(format!("wait status {status:#x} is not a stop"));
                }
                if status >> 16 != libc::PTRACE_EVENT_STOP {
                    // A signal-delivery stop came first: the signal is the thread's, not ours.
                    self.signal = libc::WSTOPSIG(status);
                }
                self.stopped = true;
                return Ok(());
            }
            if waited != 0 {
                return Err(format!("waitpid: {}", std::io::Error::last_os_error()));
            }
            if Instant::now() >= deadline {
                return Err(format!("no stop within {limit:?}"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Lets the thread run again (PTRACE_DETACH, which needs it stopped).
    fn detach(&mut self) -> Result<(), String> {
        if !self.stopped {
            self.interrupt(Duration::from_secs(5))?;
        }
        // SAFETY: PTRACE_DETACH on our stopped tracee; data is the signal to deliver (0: none),
        // passed as a pointer-sized integer as the call expects.
        let detached = unsafe {
            libc::ptrace(
                libc::PTRACE_DETACH,
                self.tid,
                std::ptr::null_mut::<libc::c_void>(),
                self.signal as usize as *mut libc::c_void,
            )
        };
        if detached != 0 {
            return Err(format!(
                "PTRACE_DETACH: {}",
                std::io::Error::last_os_error()
            ));
        }
        self.tid = 0;
        Ok(())
    }

    fn resume(mut self) {
        let tid = self.tid;
        if let Err(e) = self.detach() {
            panic!("cannot resume thread {tid}: {e}");
        }
    }
}

impl Drop for StoppedThread {
    fn drop(&mut self) {
        if self.tid != 0 {
            if let Err(e) = self.detach() {
                eprintln!("could not detach from thread {}: {e}", self.tid);
            }
        }
    }
}

/// Issue 7: the watchdog ping must prove that every worker runtime still runs, so a worker
/// stuck in a busy loop or a blocking call gets the process restarted by systemd. One worker
/// thread is stopped with ptrace (the rest of the process runs on, which a SIGSTOP or a
/// debugger's all-stop mode would not allow); the pings stop until it runs again.
#[test]
fn a_stuck_worker_withholds_the_watchdog_ping() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (server, _) = runtime.block_on(echo_server());
    let mut notify = NotifySocket::bind();
    // WatchdogSec=300ms: a ping every 150 ms (half the interval, as sd_watchdog_enabled(3)
    // advises). WATCHDOG_PID names the process the watchdog is meant for, as systemd sets it:
    // the shell's pid, which `exec` hands on to l4relay.
    let (relay, [listen, admin]) = start_relay_with(
        Launch {
            shell_prefix: Some("WATCHDOG_PID=$$; export WATCHDOG_PID"),
            envs: &[
                ("NOTIFY_SOCKET", notify.path()),
                ("WATCHDOG_USEC", "300000"),
            ],
        },
        |[listen, admin]| {
            format!(
                "[global]\nworkers = 2\n\n{}",
                config_with_admin(admin, listen, &[server], "", "")
            )
        },
    );
    let pid = relay.pid();
    for _ in 0..3 {
        notify.receive_until("WATCHDOG=1", Duration::from_secs(5));
    }

    let failed_probes = |relay: &RelayProcess| relay.stderr().matches(NO_RESPONSE).count();
    let probes_before_stop = failed_probes(&relay);
    let worker = thread_named(pid, "worker-0").expect("l4relay has a thread named worker-0");
    // Declared after `relay`, so dropped (detached) before the relay is killed and reaped.
    // Not skipped when ptrace is refused: the relay is this process's child, which a process
    // may trace unless kernel.yama.ptrace_scope is 2 or more (root or CAP_SYS_PTRACE needed) or
    // another tracer (strace, gdb) holds it.
    let stopped = StoppedThread::stop(worker)
        .unwrap_or_else(|e| panic!("PTRACE_SEIZE of worker-0 (thread {worker}): {e}"));
    let states = thread_states(pid);
    let frozen: Vec<_> = states
        .iter()
        .filter(|(_, s)| matches!(s, 't' | 'T'))
        .collect();
    assert_eq!(
        frozen,
        [&(worker, 't')],
        "exactly worker-0 should be stopped: {states:?}"
    );

    // Half a second after the stop (two missed heartbeats, WatchdogSec/2 raised to that
    // floor) the next watchdog tick logs and withholds its ping. Pings sent before may still be
    // queued: drop them. Every tick from here on comes after the stop was noticed.
    let noticed = runtime.block_on(eventually(Duration::from_secs(10), || {
        failed_probes(&relay) > probes_before_stop
    }));
    assert!(noticed, "no {NO_RESPONSE:?} within 10 s of the stop");
    notify.take_queued();
    let probes_before = failed_probes(&relay);
    let window_start = Instant::now();

    // Meanwhile the rest of the process works: the control thread serves the admin listener,
    // and worker-1 relays. SO_REUSEPORT hashes each connection to one worker's socket, so of
    // 32 connections each lands on worker-1 with probability 1/2: that none does (2^-32) is
    // not a case to wait for. Those on worker-0 wait in its accept queue until it runs again.
    let mut echoes = tokio::task::JoinSet::new();
    runtime.block_on(async {
        let limit = Duration::from_secs(5);
        // Liveness and readiness fail, naming the worker, once it has missed 2 s of beats.
        for path in ["/healthz", "/readyz"] {
            let deadline = Instant::now() + limit;
            loop {
                let (code, body) =
                    tokio::time::timeout(limit, admin_request(admin, "GET", path, None))
                        .await
                        .unwrap_or_else(|_| panic!("{path} answers while a worker is stopped"));
                if code == 503 && body.contains("worker-0 stuck: its event loop has not run for") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{path} did not report worker-0 stuck within {limit:?}: {code} {body}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // /metrics asks every worker for its pipe counts and gives a stopped one 1 s.
        let (code, _) = tokio::time::timeout(limit, admin_request(admin, "GET", "/metrics", None))
            .await
            .expect("/metrics answers while a worker is stopped");
        assert_eq!(code, 200);

        for _ in 0..32 {
            let mut stream = TcpStream::connect(listen).await.expect("connect");
            stream.write_all(b"?").await.unwrap();
            echoes.spawn(async move {
                let mut b = [0u8; 1];
                stream.read_exact(&mut b).await.map(|_| b[0])
            });
        }
        let first = tokio::time::timeout(limit, echoes.join_next())
            .await
            .expect("a connection relayed by worker-1 while worker-0 is stopped");
        assert_eq!(first.unwrap().unwrap().expect("echo"), b'?');
    });

    // That no ping arrives can only be shown over a window of time. This one lasts ten
    // watchdog intervals (3 s; systemd gives up after one) and until at least two more ticks
    // have withheld their ping, so the control thread is seen to keep ticking and withholding,
    // not merely to be slow.
    let quiet_for = Duration::from_secs(3);
    loop {
        let enough_probes = failed_probes(&relay) >= probes_before + 2;
        if window_start.elapsed() >= quiet_for && enough_probes {
            break;
        }
        assert!(
            window_start.elapsed() < Duration::from_secs(15),
            "the control thread stopped probing: {} failed probe(s) in {:?}",
            failed_probes(&relay) - probes_before,
            window_start.elapsed()
        );
        if let Some(message) = notify.next_before(Instant::now() + Duration::from_millis(100)) {
            assert!(
                !message.contains("WATCHDOG=1"),
                "WATCHDOG=1 {:?} into the stop of worker-0",
                window_start.elapsed()
            );
        }
    }
    assert_eq!(
        thread_states(pid).iter().find(|(t, _)| *t == worker),
        Some(&(worker, 't'))
    );

    let mut relayed_meanwhile = 1;
    runtime.block_on(async {
        while let Some(echo) = echoes.try_join_next() {
            assert_eq!(echo.unwrap().expect("echo"), b'?');
            relayed_meanwhile += 1;
        }
    });

    // Running again, worker-0 beats, the pings resume, liveness and readiness recover, and it
    // serves the connections it queued.
    stopped.resume();
    notify.receive_until("WATCHDOG=1", Duration::from_secs(5));
    runtime.block_on(async {
        for path in ["/healthz", "/readyz"] {
            let (code, body) = admin_request(admin, "GET", path, None).await;
            assert_eq!(code, 200, "{path} after the resume: {body}");
        }
    });
    runtime.block_on(async {
        let all = async {
            while let Some(echo) = echoes.join_next().await {
                assert_eq!(echo.unwrap().expect("echo"), b'?');
            }
        };
        tokio::time::timeout(Duration::from_secs(10), all)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "worker-0 did not serve the connections queued for it ({} of 32)",
                    32 - relayed_meanwhile
                )
            });
    });
}
