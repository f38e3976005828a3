//! Test support: the built `l4relay` binary as a child process, connecting to it and finding
//! a connection's access-log line, upstream servers on loopback, deterministic random
//! payloads, and polling with a deadline.
#![allow(dead_code)]

use std::io::Read;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const BIN: &str = env!("CARGO_BIN_EXE_l4relay");

/// A loopback address with a port that was free a moment ago.
pub fn free_addr() -> SocketAddr {
    let listener = StdListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().unwrap()
}

pub fn scratch_dir(name: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "l4relay-test-{}-{}-{}",
        std::process::id(),
        name,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Polls `condition` every 10 ms until it holds or `limit` passes; returns whether it held.
pub async fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A running `l4relay` process, killed (by its own pid) when dropped.
pub struct RelayProcess {
    pub child: Child,
    pub dir: PathBuf,
    pub config_path: PathBuf,
}

impl RelayProcess {
    /// Starts `l4relay run` on `config` and waits until it reports that it is relaying.
    pub fn start(config: &str) -> RelayProcess {
        Self::start_with_shell_prefix(config, None)
    }

    /// Like `start`, with a shell snippet run before exec (e.g. "ulimit -n 256").
    pub fn start_with_shell_prefix(config: &str, prefix: Option<&str>) -> RelayProcess {
        Self::start_with(config, prefix, &[])
    }

    /// Like `start`, with a shell prefix and extra environment variables.
    pub fn start_with(config: &str, prefix: Option<&str>, envs: &[(&str, &str)]) -> RelayProcess {
        let dir = scratch_dir("relay");
        let config_path = dir.join("l4relay.toml");
        std::fs::write(&config_path, quick_log_flush(config)).unwrap();
        let stdout = std::fs::File::create(dir.join("stdout")).unwrap();
        let stderr = std::fs::File::create(dir.join("stderr")).unwrap();
        let mut command = match prefix {
            None => {
                let mut c = Command::new(BIN);
                c.arg("run").arg("--config").arg(&config_path);
                c
            }
            Some(prefix) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("{prefix}; exec \"$0\" run --config \"$1\""))
                    .arg(BIN)
                    .arg(&config_path);
                c
            }
        };
        command.envs(envs.iter().copied());
        let child = command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn l4relay");
        let mut relay = RelayProcess {
            child,
            dir,
            config_path,
        };
        relay.wait_for_stderr("relaying on", Duration::from_secs(20));
        relay
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("stdout")).unwrap_or_default()
    }

    /// Blocks until stderr contains `text`; panics with the log if it does not in time.
    pub fn wait_for_stderr(&mut self, text: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.stderr().contains(text) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "l4relay exited ({status}) before logging {text:?}:\n{}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {text:?} within {limit:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until the access log has at least `n` lines.
    pub async fn wait_for_log_lines(&self, n: usize, limit: Duration) -> Vec<String> {
        let ok = eventually(limit, || self.access_log().lines().count() >= n).await;
        let lines: Vec<String> = self.access_log().lines().map(str::to_string).collect();
        assert!(
            ok,
            "expected {n} access-log lines, got {}:\n{}",
            lines.len(),
            lines.join("\n")
        );
        lines
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg("-s")
            .arg(name)
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit; its exit code, or None if it is still running at `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status.code().unwrap_or(-1));
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// CPU time (user + system) the process has used so far.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_millis(ticks * 1000 / clock_ticks_per_second())
    }

    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

/// Workers write their access-log lines every `access_log_flush` (1 s by default); tests read
/// each line as soon as it is written, so they get 20 ms unless the config sets its own.
pub fn quick_log_flush(config: &str) -> String {
    const QUICK: &str = "access_log_flush = \"20ms\"\n";
    if config.contains("access_log_flush") {
        return config.to_string();
    }
    match config.find("[global]\n") {
        Some(at) => {
            let after = at + "[global]\n".len();
            format!("{}{QUICK}{}", &config[..after], &config[after..])
        }
        None => format!("[global]\n{QUICK}\n{config}"),
    }
}

fn clock_ticks_per_second() -> u64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(100)
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("relay stderr:\n{}", self.stderr());
            let log = self.access_log();
            let unusual: Vec<&str> = log
                .lines()
                .filter(|l| !l.contains("end=client_closed"))
                .take(20)
                .collect();
            eprintln!(
                "access log: {} lines; unusual ones:\n{}",
                log.lines().count(),
                unusual.join("\n")
            );
        }
    }
}

/// How long a shared helper waits for one network step (a connect, an access-log line) before
/// it fails the test.
pub const STEP_LIMIT: Duration = Duration::from_secs(10);

/// Connects to `to` (a relay's listener) with TCP_NODELAY; the test fails unless it succeeds
/// within `STEP_LIMIT`.
pub async fn connect(to: SocketAddr) -> TcpStream {
    let stream = tokio::time::timeout(STEP_LIMIT, TcpStream::connect(to))
        .await
        .expect("connect in time")
        .expect("connect to the relay");
    stream.set_nodelay(true).unwrap();
    stream
}

/// Connects from a chosen loopback address (127.0.0.x), port chosen by the kernel at bind
/// time, so the `client=` the relay logs is known even when the connect itself fails: a relay
/// that refuses at once can reset the connection before `connect` returns. Returns that
/// address and the connect's result (within `STEP_LIMIT`).
pub async fn open(ip: &str, to: SocketAddr) -> (String, std::io::Result<TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(ip.parse().unwrap(), 0))
        .expect("bind a loopback source address");
    let client = socket.local_addr().unwrap().to_string();
    let stream = tokio::time::timeout(STEP_LIMIT, socket.connect(to))
        .await
        .expect("connect in time");
    if let Ok(stream) = &stream {
        stream.set_nodelay(true).unwrap();
    }
    (client, stream)
}

/// `open`, expecting the connect to succeed.
pub async fn connect_from(ip: &str, to: SocketAddr) -> TcpStream {
    open(ip, to).await.1.expect("connect to the relay")
}

// ---- the access log ----

/// The value of `key=` in an access-log line.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
}

/// How many lines the access log has: a mark to search from for the next connection's line.
/// Client ports are reused (another listener, or after TIME_WAIT reuse on loopback), so a
/// socket-named client is looked up only in lines written after its connection was opened.
pub fn log_mark(relay: &RelayProcess) -> usize {
    relay.access_log().lines().count()
}

/// Waits for the access-log line whose `client=` is `client` (unique in the whole log, like
/// sources named in PROXY headers); returns it.
pub async fn log_for(relay: &RelayProcess, client: impl std::fmt::Display) -> String {
    log_since(relay, 0, client).await
}

/// Waits (up to `STEP_LIMIT`) for the first access-log line from line `mark` on whose
/// `client=` is `client`; returns it.
pub async fn log_since(
    relay: &RelayProcess,
    mark: usize,
    client: impl std::fmt::Display,
) -> String {
    let client = client.to_string();
    let found = |log: &str| {
        log.lines()
            .skip(mark)
            .find(|l| field(l, "client") == Some(client.as_str()))
            .map(str::to_string)
    };
    eventually(STEP_LIMIT, || found(&relay.access_log()).is_some()).await;
    found(&relay.access_log()).unwrap_or_else(|| {
        panic!(
            "no access-log line for client={client} after line {mark}:\n{}",
            relay.access_log()
        )
    })
}

/// Waits (up to `STEP_LIMIT`) for the first access-log line that satisfies `wanted`.
pub async fn log_where(relay: &RelayProcess, what: &str, wanted: impl Fn(&str) -> bool) -> String {
    let found = |log: &str| log.lines().find(|l| wanted(l)).map(str::to_string);
    eventually(STEP_LIMIT, || found(&relay.access_log()).is_some()).await;
    found(&relay.access_log())
        .unwrap_or_else(|| panic!("no access-log line for {what}:\n{}", relay.access_log()))
}

/// A minimal config: one listener to one pool of `servers`, plus `extra` lines appended to the
/// listener and pool tables through the placeholders.
pub fn config(
    listen: SocketAddr,
    servers: &[SocketAddr],
    listener_extra: &str,
    pool_extra: &str,
) -> String {
    let mut text = format!(
        "[admin]\nlisten = \"off\"\n\n[[listener]]\nname = \"test\"\nlisten = \"{listen}\"\npool = \"p\"\n{listener_extra}\n\n[[pool]]\nname = \"p\"\n{pool_extra}\n"
    );
    for (i, server) in servers.iter().enumerate() {
        text.push_str(&format!(
            "  [[pool.server]]\n  name = \"s{i}\"\n  address = \"{server}\"\n"
        ));
    }
    text
}

/// Counts connections an upstream test server accepted.
#[derive(Clone, Default)]
pub struct Accepted(pub Arc<AtomicU64>);

impl Accepted {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A loopback listener with a deep accept queue: tokio's default (1024) overflows when a test
/// opens a thousand connections at once, and an overflowing upstream resets connections.
pub fn upstream_listener() -> TcpListener {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    socket.listen(4096).unwrap()
}

/// An echo server: writes back what it reads, passes the FIN on once everything is written.
pub async fn echo_server() -> (SocketAddr, Accepted) {
    let listener = upstream_listener();
    let addr = listener.local_addr().unwrap();
    let accepted = Accepted::default();
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            count.0.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    (addr, accepted)
}

/// A server that writes `name` and a newline on accept, then echoes.
pub async fn named_server(name: &'static str) -> (SocketAddr, Accepted) {
    let listener = upstream_listener();
    let addr = listener.local_addr().unwrap();
    let accepted = Accepted::default();
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            count.0.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(announce_then_echo(stream, name));
        }
    });
    (addr, accepted)
}

/// What `named_server` and `Upstream` do with a connection: write `name` and a newline, then
/// echo, passing the FIN on once everything is written.
async fn announce_then_echo(mut stream: TcpStream, name: &'static str) {
    if stream
        .write_all(format!("{name}\n").as_bytes())
        .await
        .is_err()
    {
        return;
    }
    let (mut r, mut w) = stream.split();
    let _ = tokio::io::copy(&mut r, &mut w).await;
    let _ = w.shutdown().await;
}

/// Connects through the relay and reads the name a `named_server` announces.
pub async fn which_server(relay: SocketAddr) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(relay).await.expect("connect to relay");
    let mut name = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("server name in time")
            .expect("read server name");
        assert!(n == 1, "connection closed before the server named itself");
        if byte[0] == b'\n' {
            break;
        }
        name.push(byte[0]);
    }
    (stream, String::from_utf8(name).unwrap())
}

/// A deterministic pseudo-random byte stream (xorshift64*), cheap even in debug builds.
pub struct Payload {
    state: u64,
}

impl Payload {
    pub fn new(seed: u64) -> Payload {
        Payload {
            state: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
        }
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            let word = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

/// Writes `len` payload bytes from `seed` to `w` in random-sized writes; returns their SHA-256.
pub async fn send_payload(w: &mut (impl AsyncWriteExt + Unpin), seed: u64, len: u64) -> [u8; 32] {
    try_send_payload(w, seed, len).await.expect("write payload")
}

/// Reads to EOF; returns (bytes read, SHA-256 of them).
pub async fn receive_all(r: &mut (impl AsyncReadExt + Unpin)) -> std::io::Result<(u64, [u8; 32])> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok((total, hasher.finalize().into()));
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
}

/// SHA-256 of `len` payload bytes from `seed`, as `send_payload` produces them.
pub fn payload_digest(seed: u64, len: u64) -> [u8; 32] {
    let mut payload = Payload::new(seed);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = len;
    let mut sizes = Payload::new(seed ^ 0x5555);
    while left > 0 {
        let mut size_bytes = [0u8; 4];
        sizes.fill(&mut size_bytes);
        let n = (u32::from_le_bytes(size_bytes) as u64 % buf.len() as u64 + 1).min(left) as usize;
        payload.fill(&mut buf[..n]);
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    hasher.finalize().into()
}

pub fn read_to_string_lossy(mut r: impl Read) -> String {
    let mut s = String::new();
    let _ = r.read_to_string(&mut s);
    s
}

// ---- upstreams that stop and restart, and the admin API (health and DNS tests) ----

/// An upstream that announces its name then echoes, and can be stopped (its port then
/// refuses connections) and started again on the same address.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: &'static str,
    pub accepted: Accepted,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Upstream {
    pub async fn start(name: &'static str) -> Upstream {
        Self::start_at("127.0.0.1:0".parse().unwrap(), name).await
    }

    pub async fn start_at(addr: SocketAddr, name: &'static str) -> Upstream {
        let listener = bind_reusable(addr);
        let upstream = Upstream {
            addr: listener.local_addr().unwrap(),
            name,
            accepted: Accepted::default(),
            task: std::sync::Mutex::new(None),
        };
        upstream.serve(listener);
        upstream
    }

    pub fn serve(&self, listener: TcpListener) {
        let (name, count) = (self.name, self.accepted.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                count.0.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(announce_then_echo(stream, name));
            }
        });
        *self.task.lock().unwrap() = Some(task);
    }

    /// Closes the listening socket: new connections are refused; open ones go on.
    pub async fn stop(&self) {
        let task = self.task.lock().unwrap().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    pub fn restart(&self) {
        self.serve(bind_reusable(self.addr));
    }
}

pub fn bind_reusable(addr: SocketAddr) -> TcpListener {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(addr).unwrap();
    socket.listen(1024).unwrap()
}

/// Connects through the relay and reads the name the server announces; None when the relay
/// closes the connection instead.
pub async fn try_which(relay: SocketAddr) -> Option<(TcpStream, String)> {
    let mut stream = TcpStream::connect(relay).await.ok()?;
    let mut name = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("an answer in time")
            .ok()?;
        if n == 0 {
            return None;
        }
        if byte[0] == b'\n' {
            return Some((stream, String::from_utf8(name).unwrap()));
        }
        name.push(byte[0]);
    }
}

/// One HTTP/1.1 request to the admin listener: (status, body).
pub async fn admin_request(
    admin: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let mut stream = TcpStream::connect(admin).await.expect("connect to admin");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    (status, body)
}

pub async fn get_status(admin: SocketAddr) -> serde_json::Value {
    let (code, body) = admin_request(admin, "GET", "/status", None).await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

pub fn pool_json<'a>(status: &'a serde_json::Value, pool: &str) -> &'a serde_json::Value {
    status["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == pool)
        .unwrap_or_else(|| panic!("no pool {pool} in {status}"))
}

/// The /status entries of a pool's server (one per address), in order.
pub fn servers_json(
    status: &serde_json::Value,
    pool: &str,
    server: &str,
) -> Vec<serde_json::Value> {
    pool_json(status, pool)["servers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["name"] == server)
        .cloned()
        .collect()
}

/// The value of the metric line `name{...}` carrying every label pair given; 0 when absent.
pub async fn metric(admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (code, text) = admin_request(admin, "GET", "/metrics", None).await;
    assert_eq!(code, 200);
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

// ---- load-test helpers (floods, slow peers) ----

/// The `q` quantile (0..=1) of `samples`, sorting them in place; zero when empty.
pub fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let index = ((samples.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
    samples[index]
}

/// Raises this process's soft RLIMIT_NOFILE towards `want` (capped at the hard limit);
/// returns the soft limit now in force.
pub fn raise_nofile(want: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the valid, exclusively borrowed `limit`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 0;
    }
    let target = want.min(limit.rlim_max);
    if limit.rlim_cur < target {
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads one valid rlimit; raising the soft limit up to the hard one
        // needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    limit.rlim_cur
}

/// Resident memory of process `pid` in KiB (VmRSS), 0 if it cannot be read.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Like `send_payload`, but a write error is returned rather than a panic (for load where a
/// broken connection is an outcome to count, not a test failure).
pub async fn try_send_payload(
    w: &mut (impl AsyncWriteExt + Unpin),
    seed: u64,
    len: u64,
) -> std::io::Result<[u8; 32]> {
    let mut payload = Payload::new(seed);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = len;
    let mut sizes = Payload::new(seed ^ 0x5555);
    while left > 0 {
        let mut size_bytes = [0u8; 4];
        sizes.fill(&mut size_bytes);
        let n = (u32::from_le_bytes(size_bytes) as u64 % buf.len() as u64 + 1).min(left) as usize;
        payload.fill(&mut buf[..n]);
        hasher.update(&buf[..n]);
        w.write_all(&buf[..n]).await?;
        left -= n as u64;
    }
    Ok(hasher.finalize().into())
}

/// A relay config of whole tables: the admin listener (or none), then the listeners (with
/// their `[[listener.route]]` tables), which must all come before the pools.
pub fn assemble_config(
    admin: Option<SocketAddr>,
    listeners: &[String],
    pools: &[String],
) -> String {
    let admin = admin.map_or("off".to_string(), |a| a.to_string());
    format!(
        "[admin]\nlisten = \"{admin}\"\n\n{}{}",
        listeners.concat(),
        pools.concat()
    )
}

/// A listen address of its own for a relay: a loopback address no other test (in this process,
/// or likely in another) uses, with a port free on it a moment ago.
///
/// Not `free_addr()` on 127.0.0.1: the relay binds with SO_REUSEPORT, so two relays handed the
/// same port (tests in parallel, or test runs in parallel) would both start and silently share
/// each other's connections.
pub fn listen_addr() -> SocketAddr {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let ip = std::net::Ipv4Addr::new(
        127,
        100 + (std::process::id() % 150) as u8,
        (n / 250) as u8,
        (n % 250 + 1) as u8,
    );
    let probe = StdListener::bind((ip, 0)).expect("bind a loopback address");
    probe.local_addr().unwrap()
}
