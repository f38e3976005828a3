//! Egress limits that need a network namespace of their own, where this test may change the
//! kernel's per-namespace settings (never the host's):
//!
//! - Two source addresses and one destination under a narrowed `net.ipv4.ip_local_port_range`
//!   (20 ports): connections past one source's range leave from the second; past both, the
//!   client is refused with `detail=source_ports_exhausted`; the server stays up; once
//!   connections close, new ones relay again.
//! - A server that never reads, behind tiny TCP buffers (`net.ipv4.tcp_wmem`/`tcp_rmem`): the
//!   relay's first write to it (the client's first 16 KiB) is bounded by the connect timeout
//!   (`detail=write_timeout`) instead of holding the connection forever.
//!
//! Everything (relay, servers, clients) runs inside the namespace, addresses 10.78.0.0/24 on
//! its loopback device. The namespace is deleted when the test ends, also on failure. Skipped,
//! saying why, where namespaces can't be created.

use crate::support::BENCH;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const RELAY: &str = env!("CARGO_BIN_EXE_l4relay");

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A namespace of this test's, with its loopback up; deleted on drop.
struct Namespace {
    name: String,
}

impl Namespace {
    fn create(role: &str) -> Result<Namespace, String> {
        let name = format!("l4re-{}-{role}", std::process::id());
        run("ip", &["netns", "add", &name])?;
        let ns = Namespace { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    fn ip(&self, args: &[&str]) -> Result<String, String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Sets a per-namespace sysctl (written inside the namespace) and reads it back.
    fn sysctl(&self, key: &str, value: &str) -> String {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let script = format!("echo '{value}' > {path} && cat {path}");
        run("ip", &["netns", "exec", &self.name, "sh", "-c", &script])
            .unwrap_or_else(|e| panic!("{key}: {e}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Starts `program` in the namespace; killed by its pid on drop.
    fn spawn(&self, program: &str, args: &[&str], stderr: std::path::PathBuf) -> NsProcess {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .stdin(Stdio::null())
            .stderr(File::create(&stderr).unwrap());
        let stdout = stderr.with_extension("out");
        command.stdout(File::create(&stdout).unwrap());
        NsProcess {
            child: command.spawn().expect("spawn in namespace"),
            stderr,
            stdout,
        }
    }

    /// Runs `f` on a thread whose network namespace is this one.
    fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let handle = File::open(&path).expect("open namespace");
            // SAFETY: setns with a valid descriptor for a network namespace changes only this
            // thread's network namespace; the thread is ours and ends with `f`.
            let rc = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("namespace thread")
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

struct NsProcess {
    child: Child,
    stderr: std::path::PathBuf,
    stdout: std::path::PathBuf,
}

impl NsProcess {
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn access_log(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn wait_for_stderr(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.stderr().contains(text) {
            assert!(Instant::now() < deadline, "no {text:?}:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NsProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "stderr:\n{}\naccess log (last 20):\n{}",
                self.stderr(),
                self.access_log()
                    .lines()
                    .rev()
                    .take(20)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}

/// A namespace of the test's own; a missing prerequisite fails the (ignored by default) test.
fn namespace_or_skip(role: &str) -> Option<Namespace> {
    let ns = Namespace::create(role);
    let why = ns.as_ref().err().cloned();
    crate::support::require(
        "network namespaces (root, iproute2)",
        why.map_or(Ok(()), Err),
    );
    ns.ok()
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("l4relay-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One HTTP/1.0 GET to the admin listener (from inside the namespace); the body.
fn admin_get(admin: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect_timeout(&admin, Duration::from_secs(3)).expect("admin");
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

/// The value of `name{...}` carrying every label pair given; 0 when absent.
fn metric(admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    admin_get(admin, "/metrics")
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Connects from a fixed port (ports of the narrowed range are for the relay), sends a byte,
/// reads its echo: the stream when relayed, None when the relay refused.
fn relayed(relay: SocketAddr, local_port: u16) -> Option<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
    socket.set_reuse_address(true).ok()?;
    let local: SocketAddr = SocketAddr::new(relay.ip(), local_port);
    socket.bind(&local.into()).ok()?;
    socket
        .connect_timeout(&relay.into(), Duration::from_secs(3))
        .ok()?;
    let mut stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(b"x").ok()?;
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(1) => Some(stream),
        _ => None,
    }
}

#[test]
#[ignore = "needs root and ip (iproute2): run with --ignored"]
fn past_one_sources_ports_the_next_source_past_all_refused_with_the_reason() {
    let Some(ns) = namespace_or_skip("ports") else {
        return;
    };
    for ip in ["10.78.0.1/32", "10.78.0.10/32", "10.78.0.11/32"] {
        ns.ip(&["addr", "add", ip, "dev", "lo"]).unwrap();
    }
    // 20 ports per (source, destination); health checks' TIME_WAIT ports come back after 1 s.
    assert_eq!(
        ns.sysctl("net.ipv4.ip_local_port_range", "40000 40019"),
        "40000 40019"
    );
    ns.sysctl("net.ipv4.tcp_tw_reuse", "1");
    let dir = scratch("egress-ports");
    let _server = ns.spawn(
        &BENCH,
        &["serve", "--listen", "10.78.0.1:9000", "--mode", "echo"],
        dir.join("server.err"),
    );
    let config = "[admin]\nlisten = \"10.78.0.1:9090\"\n\n\
         [[listener]]\nname = \"ns\"\nlisten = \"10.78.0.1:8443\"\npool = \"p\"\nmax_connections = 100\n\n\
         [[pool]]\nname = \"p\"\nsource = [\"10.78.0.10\", \"10.78.0.11\"]\nconnect_timeout = \"1s\"\nretries = 2\n\
         \x20 [[pool.server]]\n  name = \"aoai\"\n  address = \"10.78.0.1:9000\"\n\
         \x20 [pool.health]\n  check = \"tcp\"\n  interval = \"1s\"\n  timeout = \"500ms\"\n  rise = 1\n  fall = 2\n  passive_fall = 3\n";
    let path = dir.join("relay.toml");
    std::fs::write(&path, crate::support::quick_log_flush(config)).unwrap();
    let relay = ns.spawn(
        RELAY,
        &["run", "--config", path.to_str().unwrap()],
        dir.join("relay.err"),
    );
    relay.wait_for_stderr("relaying on");
    relay.wait_for_stderr("server up");

    let relay_addr: SocketAddr = "10.78.0.1:8443".parse().unwrap();
    let admin: SocketAddr = "10.78.0.1:9090".parse().unwrap();
    let (held_count, refused_at, status, metrics) = ns.enter(move || {
        let mut held = Vec::new();
        let mut refused_at = None;
        for i in 0..60u16 {
            match relayed(relay_addr, 20000 + i) {
                Some(stream) => held.push(stream),
                None => {
                    refused_at = Some(i);
                    break;
                }
            }
        }
        let status: serde_json::Value =
            serde_json::from_str(&admin_get(admin, "/status")).expect("/status JSON");
        let metrics = [
            metric(admin, "l4relay_server_up", &[("server", "aoai")]),
            metric(
                admin,
                "l4relay_local_resource_errors_total",
                &[("kind", "eaddrnotavail")],
            ),
            metric(
                admin,
                "l4relay_refusals_total",
                &[("reason", "source_ports_exhausted")],
            ),
            metric(
                admin,
                "l4relay_source_connections",
                &[("source", "10.78.0.10"), ("server", "aoai")],
            ),
            metric(
                admin,
                "l4relay_source_connections",
                &[("source", "10.78.0.11"), ("server", "aoai")],
            ),
        ];
        (held.len(), refused_at, status, metrics)
    });
    eprintln!(
        "{held_count} relayed through 2 sources x 20 ports; refused at attempt {refused_at:?}; metrics {metrics:?}"
    );
    assert!(
        held_count > 20,
        "no connection past one source's 20 ports: {held_count}"
    );
    assert!(held_count <= 40, "{held_count} connections from 40 ports?");
    assert!(refused_at.is_some(), "never refused");
    // Lines are written at each worker's flush (every 20 ms here).
    let refused_line = || {
        relay
            .access_log()
            .lines()
            .find(|l| l.contains("end=connect_failed"))
            .map(str::to_string)
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while refused_line().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let line = refused_line().unwrap_or_default();
    assert!(line.contains("detail=source_ports_exhausted"), "{line:?}");

    // Visible: the port range, per-source counts, the errors; the server was never blamed.
    assert_eq!(status["ephemeral_port_range"]["ports"], 20, "{status}");
    let pool = &status["pools"][0];
    assert_eq!(pool["egress"]["ports_per_destination"], 20);
    let server = &pool["servers"][0];
    assert_eq!(server["state"], "up", "{server}");
    let active: Vec<u64> = server["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["active"].as_u64().unwrap())
        .collect();
    assert_eq!(active.iter().sum::<u64>(), held_count as u64, "{server}");
    assert!(active.iter().all(|&n| n > 0 && n <= 20), "{active:?}");
    let [up, exhausted, refusals, first, second] = metrics;
    assert_eq!(up, 1.0);
    assert!(exhausted >= 2.0, "eaddrnotavail {exhausted}");
    assert!(refusals >= 1.0);
    assert_eq!(first + second, held_count as f64);
    let stderr = relay.stderr();
    assert!(
        stderr.contains("over 80% of the 20 local ports"),
        "no warning at 80%:\n{stderr}"
    );
    assert!(
        stderr.contains("EADDRNOTAVAIL: every local port"),
        "{stderr}"
    );
    assert!(!stderr.contains("server down"), "{stderr}");

    // The held connections closed with the thread above. Their ports wait in TIME_WAIT on
    // the relay's side (it closed first), reusable after a second with tcp_tw_reuse = 1: new
    // connections relay again, with no restart and no server state to recover.
    let again = ns.enter(move || {
        // Ports come back from TIME_WAIT one by one, so count successes, not a run of them.
        let deadline = Instant::now() + Duration::from_secs(20);
        let (mut port, mut relayed_again) = (21000, 0);
        while relayed_again < 5 && Instant::now() < deadline {
            port += 1;
            if relayed(relay_addr, port).is_some() {
                relayed_again += 1;
            } else {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        relayed_again
    });
    assert_eq!(again, 5, "after the connections closed");
    drop(relay);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A TLS ClientHello of `total` bytes in one record, for `name`, padded (extension 21) before
/// the server-name extension.
fn client_hello(name: &str, total: usize) -> Vec<u8> {
    let name = name.as_bytes();
    let mut sni = vec![0x00, 0x00];
    let list = 3 + name.len();
    sni.extend_from_slice(&((list + 2) as u16).to_be_bytes());
    sni.extend_from_slice(&(list as u16).to_be_bytes());
    sni.push(0);
    sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sni.extend_from_slice(name);
    // Record header 5, handshake header 4, version 2, random 32, session id 1, one suite 4,
    // compression 2, extensions length 2, padding extension header 4.
    let fixed = 5 + 4 + 2 + 32 + 1 + 4 + 2 + 2 + 4;
    let padding = total - fixed - sni.len();
    let mut extensions = vec![0x00, 0x15];
    extensions.extend_from_slice(&(padding as u16).to_be_bytes());
    extensions.extend(std::iter::repeat_n(0u8, padding));
    extensions.extend_from_slice(&sni);
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[7u8; 32]);
    body.extend_from_slice(&[0, 0x00, 0x02, 0x13, 0x01, 0x01, 0x00]);
    body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    body.extend_from_slice(&extensions);
    let mut handshake = vec![0x01];
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    assert_eq!(record.len(), total);
    record
}

#[test]
#[ignore = "needs root and ip (iproute2): run with --ignored"]
fn a_first_write_the_server_never_reads_ends_at_the_connect_timeout() {
    let Some(ns) = namespace_or_skip("write") else {
        return;
    };
    ns.ip(&["addr", "add", "10.78.0.1/32", "dev", "lo"])
        .unwrap();
    // Buffers of one page: the client's first 16 KiB do not fit between the relay and a
    // server that never reads.
    ns.sysctl("net.ipv4.tcp_wmem", "4096 4096 4096");
    ns.sysctl("net.ipv4.tcp_rmem", "4096 4096 4096");
    let dir = scratch("egress-write");
    let config = "[admin]\nlisten = \"10.78.0.1:9090\"\n\n\
         [[listener]]\nname = \"ns\"\nlisten = \"10.78.0.1:8443\"\npool = \"p\"\n\
         \x20 [[listener.route]]\n  server_names = [\"routed.test\"]\n  pool = \"p\"\n\n\
         [[pool]]\nname = \"p\"\nconnect_timeout = \"500ms\"\nretries = 0\n\
         \x20 [[pool.server]]\n  name = \"mute\"\n  address = \"10.78.0.1:9000\"\n";
    let path = dir.join("relay.toml");
    std::fs::write(&path, crate::support::quick_log_flush(config)).unwrap();
    let relay = ns.spawn(
        RELAY,
        &["run", "--config", path.to_str().unwrap()],
        dir.join("relay.err"),
    );
    let (took, ended, timeouts) = ns.enter(|| {
        // The server: accepts, never reads.
        let listener = TcpListener::bind("10.78.0.1:9000").unwrap();
        let holder = std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming().take(1) {
                held.push(stream);
            }
            std::thread::sleep(Duration::from_secs(20));
            drop(held);
        });
        let relay_addr: SocketAddr = "10.78.0.1:8443".parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut client = loop {
            if let Ok(s) = TcpStream::connect(relay_addr) {
                break s;
            }
            assert!(Instant::now() < deadline, "relay not listening");
            std::thread::sleep(Duration::from_millis(20));
        };
        // A ClientHello of 16,000 bytes (a padding extension before the server name): the
        // relay reads it all to route it, and must send it all on.
        let hello = client_hello("routed.test", 16_000);
        let started = Instant::now();
        // Small buffers make this slow; the relay may reset the connection before it is done.
        let _ = client.write_all(&hello);
        client
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        let mut buf = [0u8; 16];
        let ended = !matches!(client.read(&mut buf), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock);
        let took = started.elapsed();
        let admin: SocketAddr = "10.78.0.1:9090".parse().unwrap();
        let timeouts = metric(
            admin,
            "l4relay_upstream_connections_total",
            &[("server", "mute"), ("result", "timeout")],
        );
        drop(holder);
        (took, ended, timeouts)
    });
    eprintln!("the relay ended the connection after {took:?} (connect_timeout 500ms)");
    assert!(ended, "the relay held the connection for 15 s");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !relay.access_log().contains("end=connect_failed") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = relay.access_log();
    assert!(
        log.contains("end=connect_failed detail=write_timeout"),
        "{log}"
    );
    assert_eq!(timeouts, 1.0, "the server's attempt is a timeout");
    drop(relay);
    let _ = std::fs::remove_dir_all(&dir);
}
