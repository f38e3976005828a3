//! Logging under faults, with the built binary: a stderr nobody reads, an access-log reader
//! that goes away and comes back, a rotated file reopened on SIGUSR1, lines of an idle relay
//! and lines still held at exit.

use std::fs::File;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `l4relay run` with the stdout and stderr the test gives it, killed (by its pid) on drop.
struct Relay {
    child: Child,
    dir: PathBuf,
}

impl Relay {
    fn spawn(
        config: &str,
        rust_log: &str,
        stdout: impl Into<Stdio>,
        stderr: impl Into<Stdio>,
    ) -> Relay {
        let dir = scratch_dir("logging");
        let path = dir.join("l4relay.toml");
        std::fs::write(&path, config).unwrap();
        let child = Command::new(BIN)
            .arg("run")
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn l4relay");
        Relay { child, dir }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A pipe, both ends close-on-exec (the child gets its end through `Stdio`).
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new fds into the array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both were just opened and are owned by nothing else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn set_nonblocking(fd: &OwnedFd) {
    // SAFETY: fcntl on an fd we own; the description is ours alone (not shared with the child).
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        assert!(libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) == 0);
    }
}

/// Everything readable from a non-blocking fd now; None at end of file.
fn read_available(fd: &OwnedFd) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        // SAFETY: reading into a valid buffer.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        match n {
            0 if out.is_empty() => return None,
            0 => return Some(out),
            n if n > 0 => out.extend_from_slice(&buf[..n as usize]),
            _ => return Some(out),
        }
    }
}

/// The read end of the relay's stderr, read only when the test says so.
struct StderrPipe {
    read: OwnedFd,
    /// What has been read so far.
    text: String,
}

impl StderrPipe {
    /// Reads until `what` has been seen, within `limit`.
    fn read_until(&mut self, what: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(bytes) = read_available(&self.read) {
                self.text.push_str(&String::from_utf8_lossy(&bytes));
            }
            if self.text.contains(what) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Reads until every writer has closed its end, within `limit`.
    fn read_to_end(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            match read_available(&self.read) {
                None => return true,
                Some(bytes) => self.text.push_str(&String::from_utf8_lossy(&bytes)),
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

/// Writes into the pipe through `filler` (a description of the test's own, non-blocking, so
/// the child's stays blocking) until the kernel takes no more.
fn fill(filler: &File) {
    let mut chunk = [b'#'; 4096];
    chunk[4095] = b'\n';
    loop {
        match (&*filler).write(&chunk) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) => panic!("filling the pipe: {e}"),
        }
    }
}

/// The relay with stderr a pipe the test holds: read until the relay has started, then full
/// and no longer read. Returns the writer that filled it; dropping it and reading lets the
/// relay's stderr flow again.
fn relay_with_stderr_pipe(config: &str, rust_log: &str) -> (Relay, StderrPipe, File, PathBuf) {
    let (read, write) = pipe();
    set_nonblocking(&read);
    let filler = File::options()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/proc/self/fd/{}", write.as_raw_fd()))
        .unwrap();
    let dir = scratch_dir("logging-out");
    let stdout_path = dir.join("stdout");
    let stdout = File::create(&stdout_path).unwrap();
    let mut relay = Relay::spawn(config, rust_log, stdout, write);
    let mut stderr = StderrPipe {
        read,
        text: String::new(),
    };
    if !stderr.read_until("relaying on", Duration::from_secs(20)) {
        let _ = relay.child.kill();
        panic!("the relay did not start:\n{}", stderr.text);
    }
    fill(&filler);
    (relay, stderr, filler, stdout_path)
}

/// One echo through `listen` within `limit`: whether it came back intact.
async fn echo(listen: SocketAddr, payload: &[u8], limit: Duration) -> bool {
    let exchange = async {
        let mut stream = TcpStream::connect(listen).await.ok()?;
        stream.write_all(payload).await.ok()?;
        stream.shutdown().await.ok()?;
        let mut back = Vec::new();
        stream.read_to_end(&mut back).await.ok()?;
        Some(back == payload)
    };
    tokio::time::timeout(limit, exchange)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Connects and closes at once; the relay logs the connection (refused or relayed).
async fn touch(listen: SocketAddr) {
    if let Ok(stream) = TcpStream::connect(listen).await {
        drop(stream);
    }
}

async fn healthz(admin: SocketAddr) -> u16 {
    admin_request(admin, "GET", "/healthz", None).await.0
}

/// A relay of one worker with two listeners: `live` relays to an echo server, `down` to a
/// pool whose only server refuses every connection.
fn two_pools(
    live: SocketAddr,
    down: SocketAddr,
    admin: SocketAddr,
    echo: SocketAddr,
    extra_global: &str,
    extra_down: &str,
) -> String {
    let dead = listen_addr();
    format!(
        "[global]\nworkers = 1\naccess_log_flush = \"20ms\"\n{extra_global}\n\
         [admin]\nlisten = \"{admin}\"\n\n\
         [[listener]]\nname = \"live\"\nlisten = \"{live}\"\npool = \"live\"\n\n\
         [[listener]]\nname = \"down\"\nlisten = \"{down}\"\npool = \"down\"\n{extra_down}\n\n\
         [[pool]]\nname = \"live\"\n  [[pool.server]]\n  address = \"{echo}\"\n\
         [[pool]]\nname = \"down\"\nretries = 0\n  [[pool.server]]\n  address = \"{dead}\"\n"
    )
}

/// The first fault: stderr is a full pipe nobody reads while one pool is down. Each
/// refused client warns; the worker must go on relaying the healthy pool, /healthz must stay
/// 200, and once stderr is read again the repeats come out summarised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_relays_other_pools_while_stderr_is_a_full_pipe_nobody_reads() {
    let (server, _) = echo_server().await;
    let (live, down, admin) = (listen_addr(), listen_addr(), listen_addr());
    let config = two_pools(live, down, admin, server, "", "");
    let (mut relay, mut stderr, filler, log_path) = relay_with_stderr_pipe(&config, "info");

    const REFUSED: usize = 200;
    const RELAYED: usize = 20;
    for i in 0..RELAYED {
        for _ in 0..REFUSED / RELAYED {
            touch(down).await;
        }
        let payload = format!("relayed {i} while stderr is full");
        assert!(
            echo(live, payload.as_bytes(), Duration::from_secs(5)).await,
            "echo {i} through the healthy pool failed while stderr was full"
        );
    }
    assert_eq!(healthz(admin).await, 200, "/healthz with stderr full");
    let logged = eventually(Duration::from_secs(10), || {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        log.lines().filter(|l| l.contains("listener=down")).count() == REFUSED
            && log.lines().filter(|l| l.contains("listener=live")).count() == RELAYED
    })
    .await;
    assert!(
        logged,
        "access log:\n{}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );

    // stderr read again: the first warning, then at exit the summary of the repeats.
    drop(filler);
    relay.signal("INT");
    assert!(
        stderr.read_until("more time(s)", Duration::from_secs(10)),
        "no summary of the repeats:\n{}",
        stderr.text
    );
    assert_eq!(relay.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(stderr.read_to_end(Duration::from_secs(10)));
    let per_connection = stderr
        .text
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("client="))
        .count();
    assert!(
        per_connection < 5,
        "{per_connection} per-connection warnings shown of {REFUSED}:\n{}",
        stderr.text
    );
}

/// Diagnostics stderr cannot take are dropped, not waited for: counted in
/// `l4relay_diagnostics_dropped_total`, and said once stderr takes lines again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diagnostics_stderr_cannot_take_are_counted_and_reported_when_it_drains() {
    let (server, _) = echo_server().await;
    let (live, down, admin) = (listen_addr(), listen_addr(), listen_addr());
    // A PROXY header error is a debug line per connection, not rate-limited (it names no
    // client): at debug level, a flood of them overflows the queue in front of stderr.
    let config = two_pools(
        live,
        down,
        admin,
        server,
        "log_level = \"debug\"",
        "proxy_protocol = \"v2\"",
    );
    let (mut relay, mut stderr, filler, _) = relay_with_stderr_pipe(&config, "debug");

    let mut dropped = 0.0;
    for round in 0..20 {
        for _ in 0..200 {
            if let Ok(mut stream) = TcpStream::connect(down).await {
                let _ = stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await;
            }
        }
        assert!(
            echo(live, b"still relaying", Duration::from_secs(5)).await,
            "round {round}: relaying stopped"
        );
        dropped = metric(admin, "l4relay_diagnostics_dropped_total", &[]).await;
        if dropped > 0.0 {
            break;
        }
    }
    assert!(
        dropped > 0.0,
        "no diagnostic line dropped: the test tests nothing"
    );

    // Reading stderr again: the backlog, then how many were lost.
    drop(filler);
    let reported = stderr.read_until("diagnostic line(s) dropped", Duration::from_secs(20));
    assert!(reported, "drops not reported:\n{}", tail(&stderr.text));
    relay.signal("INT");
    assert_eq!(relay.wait_exit(Duration::from_secs(10)), Some(0));
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A FIFO as stdout: its reader goes away (EPIPE), then another one opens it. The lost lines
/// are counted and said once, and lines flow again to the new reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_stdout_reader_is_counted_and_said_and_the_log_goes_on() {
    let (server, _) = echo_server().await;
    let (listen, admin) = (listen_addr(), listen_addr());
    let dir = scratch_dir("logging-fifo");
    let fifo = dir.join("stdout.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let open_reader = || {
        File::options()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap()
    };
    let reader = open_reader();
    let writer = File::options().write(true).open(&fifo).unwrap();
    let config = format!(
        "[global]\nworkers = 2\naccess_log_flush = \"20ms\"\n[admin]\nlisten = \"{admin}\"\n\n\
         [[listener]]\nname = \"l\"\nlisten = \"{listen}\"\npool = \"p\"\n\n\
         [[pool]]\nname = \"p\"\n  [[pool.server]]\n  address = \"{server}\"\n"
    );
    let stderr_path = dir.join("stderr");
    let relay = Relay::spawn(&config, "info", writer, File::create(&stderr_path).unwrap());
    let stderr = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(
        eventually(Duration::from_secs(20), || stderr().contains("relaying on")).await,
        "{}",
        stderr()
    );

    let received = Arc::new(Mutex::new(String::new()));
    let read_into = |mut reader: &File, into: &Mutex<String>| {
        let mut buf = vec![0u8; 65536];
        if let Ok(n) = reader.read(&mut buf) {
            into.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    };
    assert!(echo(listen, b"first", Duration::from_secs(5)).await);
    let first = eventually(Duration::from_secs(10), || {
        read_into(&reader, &received);
        received.lock().unwrap().lines().count() == 1
    })
    .await;
    assert!(
        first,
        "no line through the FIFO: {:?}",
        received.lock().unwrap()
    );

    // The reader goes away; lines written now fail with EPIPE.
    drop(reader);
    const LOST: usize = 10;
    for _ in 0..LOST {
        assert!(echo(listen, b"unread", Duration::from_secs(5)).await);
    }
    let dropped = metric_reaches(admin, "l4relay_access_log_dropped_total", LOST as f64).await;
    assert_eq!(dropped, LOST as f64, "dropped lines counted:\n{}", stderr());
    let said = stderr()
        .lines()
        .filter(|l| l.contains("access log: cannot write to stdout"))
        .count();
    assert_eq!(said, 1, "said once, not per failed write:\n{}", stderr());
    assert!(stderr().contains("Broken pipe"), "{}", stderr());

    // A new reader: the log goes on, and the relay says how many were lost.
    let reader = open_reader();
    received.lock().unwrap().clear();
    for _ in 0..3 {
        assert!(echo(listen, b"again", Duration::from_secs(5)).await);
    }
    let again = eventually(Duration::from_secs(10), || {
        read_into(&reader, &received);
        received.lock().unwrap().lines().count() == 3
    })
    .await;
    assert!(again, "no lines after the reader came back:\n{}", stderr());
    assert!(
        eventually(Duration::from_secs(5), || stderr().contains(&format!(
            "takes lines again; {LOST} line(s) dropped meanwhile"
        )))
        .await,
        "{}",
        stderr()
    );
    drop(relay);
}

/// Scrapes `name` until it reaches `want` or 10 s pass; its last value.
async fn metric_reaches(admin: SocketAddr, name: &str, want: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let value = metric(admin, name, &[]).await;
        if value >= want || Instant::now() >= deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// logrotate's way: the file is renamed, then SIGUSR1; lines go on to the renamed file until
/// the signal, to a new file at the path after it, and none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_reach_the_new_file_after_sigusr1() {
    let (server, _) = echo_server().await;
    let dir = scratch_dir("logging-rotate");
    let path = dir.join("access.log");
    let (relay, [listen]) = start_relay(|[listen]| {
        format!(
            "[global]\nworkers = 2\naccess_log = \"{}\"\n\n{}",
            path.display(),
            config(listen, &[server], "", "")
        )
    });
    let lines = |p: &Path| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .count()
    };
    for _ in 0..5 {
        assert!(echo(listen, b"before", Duration::from_secs(5)).await);
    }
    assert!(eventually(Duration::from_secs(10), || lines(&path) == 5).await);

    let rotated = dir.join("access.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    for _ in 0..3 {
        assert!(echo(listen, b"between", Duration::from_secs(5)).await);
    }
    assert!(
        eventually(Duration::from_secs(10), || lines(&rotated) == 8).await,
        "lines before SIGUSR1 go on to the renamed file"
    );
    relay.signal("USR1");
    let mut relay = relay;
    relay.wait_for_stderr("SIGUSR1: reopened the access log", Duration::from_secs(10));
    for _ in 0..4 {
        assert!(echo(listen, b"after", Duration::from_secs(5)).await);
    }
    assert!(
        eventually(Duration::from_secs(10), || lines(&path) == 4).await,
        "new file: {} lines:\n{}",
        lines(&path),
        relay.stderr()
    );
    assert_eq!(lines(&rotated), 8);
    assert!(
        std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .all(|l| l.contains("end=client_closed")),
        "whole lines"
    );
}

/// With the default flush interval, a relay that sees one connection and then nothing shows
/// its line within about that interval, not when a buffer fills or at exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_relay_shows_its_lines_within_the_flush_interval() {
    let (server, _) = echo_server().await;
    // The default interval, written out so the test helper leaves it alone.
    let (mut relay, [listen]) = start_relay(|[listen]| {
        format!(
            "[global]\naccess_log_flush = \"1s\"\n\n{}",
            config(listen, &[server], "", "")
        )
    });
    assert!(echo(listen, b"one", Duration::from_secs(5)).await);
    let closed = Instant::now();
    // Generous against a loaded machine; what matters is that the line comes while the relay
    // runs and sees nothing else (no buffer fills, no exit).
    let shown = eventually(Duration::from_secs(5), || {
        relay.access_log().contains("end=client_closed")
    })
    .await;
    let after = closed.elapsed();
    assert!(
        shown,
        "no line within 5 s of the close (flush interval 1 s)"
    );
    eprintln!("line shown {after:?} after the connection closed");
    assert!(
        relay.child.try_wait().unwrap().is_none(),
        "shown while running, not at exit"
    );
}

/// Lines a worker holds when the process exits (SIGTERM, drained) are written before it ends,
/// even with a flush interval far longer than the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_held_at_exit_are_written() {
    let (server, _) = echo_server().await;
    let (mut relay, [listen]) = start_relay(|[listen]| {
        format!(
            "[global]\nworkers = 2\naccess_log_flush = \"60s\"\n\n\
             [drain]\nannounce = \"0s\"\ndeadline = \"5s\"\nclose_spread = \"0s\"\n\n{}",
            config(listen, &[server], "", "")
        )
    });
    const N: usize = 7;
    for _ in 0..N {
        assert!(echo(listen, b"held", Duration::from_secs(5)).await);
    }
    relay.signal("TERM");
    assert_eq!(relay.wait_exit(Duration::from_secs(15)), Some(0));
    let log = relay.access_log();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("end=client_closed"))
            .count(),
        N,
        "{log}"
    );
}

/// `access_log = "journald"`: one datagram per connection to journald's socket, in the native
/// protocol, with the connection's fields as fields. Run in a mount namespace of its own whose
/// /run/systemd/journal is the test's directory, where the test listens as journald would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journald_gets_the_connections_fields() {
    let (server, _) = echo_server().await;
    let listen = listen_addr();
    let dir = scratch_dir("logging-journal");
    let journal = std::os::unix::net::UnixDatagram::bind(dir.join("socket")).unwrap();
    journal
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let config_path = dir.join("l4relay.toml");
    std::fs::write(
        &config_path,
        format!(
            "[global]\nworkers = 2\naccess_log = \"journald\"\naccess_log_flush = \"20ms\"\n\n{}",
            config(listen, &[server], "", "")
        ),
    )
    .unwrap();
    let stderr_path = dir.join("stderr");
    let namespace_ok = Command::new("unshare")
        .args(["-m", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !namespace_ok {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED journald_gets_the_connections_fields: `unshare -m` is not permitted \
             (needs root or CAP_SYS_ADMIN, as in CI)"
        );
        return;
    }
    let child = Command::new("unshare")
        .args(["-m", "sh", "-c"])
        .arg(
            "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal \
             && mount --bind \"$1\" /run/systemd/journal && exec \"$2\" run --config \"$3\"",
        )
        .arg("sh")
        .arg(&dir)
        .arg(BIN)
        .arg(&config_path)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let relay = Relay {
        child,
        dir: dir.clone(),
    };
    let stderr = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(
        eventually(Duration::from_secs(20), || stderr().contains("relaying on")).await,
        "{}",
        stderr()
    );

    let client = TcpStream::connect(listen).await.unwrap();
    let client_addr = client.local_addr().unwrap();
    drop(client);
    assert!(echo(listen, b"to the journal", Duration::from_secs(5)).await);
    let mut entries = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = vec![0u8; 65536];
    while entries.len() < 2 && Instant::now() < deadline {
        if let Ok(n) = journal.recv(&mut buf) {
            entries.push(String::from_utf8(buf[..n].to_vec()).unwrap());
        }
    }
    assert_eq!(entries.len(), 2, "{entries:?}\n{}", stderr());
    let field = |entry: &str, name: &str| {
        entry
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .map(str::to_string)
    };
    let first = entries
        .iter()
        .find(|e| field(e, "L4RELAY_CLIENT") == Some(client_addr.to_string()))
        .unwrap_or_else(|| panic!("no entry for {client_addr}: {entries:?}"));
    assert_eq!(
        field(first, "SYSLOG_IDENTIFIER").as_deref(),
        Some("l4relay")
    );
    assert_eq!(field(first, "L4RELAY_LISTENER").as_deref(), Some("test"));
    assert_eq!(field(first, "L4RELAY_POOL").as_deref(), Some("p"));
    assert_eq!(
        field(first, "L4RELAY_SERVER_ADDR"),
        Some(server.to_string())
    );
    let message = field(first, "MESSAGE").unwrap();
    assert!(
        message.contains(&format!("client={client_addr}")),
        "{message}"
    );
    let echoed = entries.iter().find(|e| !std::ptr::eq(*e, first)).unwrap();
    assert_eq!(field(echoed, "L4RELAY_BYTES_C2S").as_deref(), Some("14"));
    assert_eq!(
        field(echoed, "L4RELAY_END").as_deref(),
        Some("client_closed")
    );
    drop(relay);
}
