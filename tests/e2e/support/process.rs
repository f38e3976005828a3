//! The built `l4relay` binary as a child process: started on a config whose listen addresses
//! this module picks (again, if one was taken before the relay bound it), killed by its own pid
//! when dropped. Also: scratch directories, polling with a deadline, and prerequisites outside
//! cargo.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_l4relay");

/// How long the relay may take to say it is relaying.
const START_LIMIT: Duration = Duration::from_secs(20);

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

// ---- prerequisites outside cargo ----

/// True when the tests run under CI (`CI` set to anything but "" or "false").
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
}

/// Fails the test, saying what is missing, unless `prerequisite` holds. Tests with a
/// prerequisite beyond cargo (root, network namespaces, promtool) are `#[ignore]`d with it as the
/// reason, so a default run lists them as ignored instead of passing them unrun; run with
/// `--ignored` (as CI does), they must not pass without proving anything either.
pub fn require(what: &str, prerequisite: Result<(), String>) {
    if let Err(why) = prerequisite {
        panic!(
            "prerequisite missing: {what} ({why}){}",
            if under_ci() {
                "; CI must provide it"
            } else {
                "; install it, or leave this ignored test out of the run"
            }
        );
    }
}

/// Whether `program` runs with `args` and exits 0: Ok, or why not.
pub fn runs(program: &str, args: &[&str]) -> Result<(), String> {
    match Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
    {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run {program}: {e}")),
    }
}

/// promtool (Debian/Ubuntu package `prometheus`).
pub fn require_promtool() {
    require(
        "promtool (apt-get install prometheus)",
        runs("promtool", &["--version"]),
    );
}

// ---- listen addresses ----

/// An address nothing listens on, for a config that is only checked or a server that must
/// refuse connections: a port the kernel chose, released at once.
pub fn unused_addr() -> SocketAddr {
    let listener = StdListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().unwrap()
}

/// A listen address of its own for a relay: a loopback address no other test (in this process,
/// or likely in another) uses, with a port the kernel found free on it a moment ago.
///
/// Not a port on 127.0.0.1: the relay binds with SO_REUSEPORT, so two relays handed the same
/// port (tests in parallel, or test runs in parallel) would both start and silently share each
/// other's connections; and on 127.0.0.1 the tests' own outgoing connections take ports too.
/// The port can still be taken before the relay binds it: `start_relay` then picks again. Used
/// directly only for peers a test starts itself (which retry on their own) and for addresses a
/// relay binds later, on a reload.
pub fn listen_addr() -> SocketAddr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
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

// ---- the relay process ----

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

/// How to run the relay beyond its config.
#[derive(Default, Clone, Copy)]
pub struct Launch<'a> {
    /// A shell snippet run before exec (e.g. "ulimit -n 256").
    pub shell_prefix: Option<&'a str>,
    /// Extra environment variables.
    pub envs: &'a [(&'a str, &'a str)],
}

/// Starts the relay on the config `build` makes around `N` fresh listen addresses (listeners,
/// admin and health listeners: everything the relay binds), and waits until it says it is
/// relaying. If the relay could not bind one of them because something took the port in the
/// moment between choosing and binding ("address already in use"), it picks `N` new ones and
/// starts again.
pub fn start_relay<const N: usize>(
    build: impl FnMut([SocketAddr; N]) -> String,
) -> (RelayProcess, [SocketAddr; N]) {
    start_relay_with(Launch::default(), build)
}

/// `start_relay`, run as `launch` says.
pub fn start_relay_with<const N: usize>(
    launch: Launch,
    mut build: impl FnMut([SocketAddr; N]) -> String,
) -> (RelayProcess, [SocketAddr; N]) {
    const ATTEMPTS: usize = 5;
    let mut last = String::new();
    for _ in 0..ATTEMPTS {
        let addrs: [SocketAddr; N] = std::array::from_fn(|_| listen_addr());
        match RelayProcess::try_start(&build(addrs), launch) {
            Ok(relay) => return (relay, addrs),
            // "address already in use" as the relay words it, or the OS's "Address ...".
            Err(stderr) if stderr.to_lowercase().contains("address already in use") => {
                last = stderr
            }
            Err(stderr) => panic!("l4relay exited before relaying:\n{stderr}"),
        }
    }
    panic!("l4relay found a listen address taken {ATTEMPTS} times in a row:\n{last}");
}

/// A running `l4relay` process, killed (by its own pid) when dropped.
pub struct RelayProcess {
    pub child: Child,
    pub dir: PathBuf,
    pub config_path: PathBuf,
}

impl RelayProcess {
    /// Starts `l4relay run` on `config`; waits until it says it is relaying. Err(its stderr)
    /// if it exits first.
    fn try_start(config: &str, launch: Launch) -> Result<RelayProcess, String> {
        let dir = scratch_dir("relay");
        let config_path = dir.join("l4relay.toml");
        std::fs::write(&config_path, quick_log_flush(config)).unwrap();
        let stdout = std::fs::File::create(dir.join("stdout")).unwrap();
        let stderr = std::fs::File::create(dir.join("stderr")).unwrap();
        let mut command = match launch.shell_prefix {
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
        command.envs(launch.envs.iter().copied());
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
        let deadline = Instant::now() + START_LIMIT;
        while !relay.stderr().contains("relaying on") {
            if let Ok(Some(status)) = relay.child.try_wait() {
                // Dropped without a panic in flight: its directory goes, nothing is printed.
                return Err(format!("exit {status}\n{}", relay.stderr()));
            }
            assert!(
                Instant::now() < deadline,
                "l4relay not relaying within {START_LIMIT:?}:\n{}",
                relay.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(relay)
    }

    /// Writes a new config for a reload, with the quick access-log flush the first one got (a
    /// reload that changed it would be refused: it takes a restart).
    pub fn write_config(&self, config: impl AsRef<str>) -> std::io::Result<()> {
        std::fs::write(&self.config_path, quick_log_flush(config.as_ref()))
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
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "access log: {} lines; unusual ones:\n{}\nthe last ones:\n{}",
                lines.len(),
                unusual.join("\n"),
                lines[lines.len().saturating_sub(5)..].join("\n")
            );
        }
    }
}

/// The bench tool is a package of its own (bench/): `cargo test` at the workspace root builds it
/// next to l4relay.
pub static BENCH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let path = std::path::Path::new(BIN).with_file_name("l4relay-bench");
    assert!(
        path.is_file(),
        "{} not built: run `cargo test` at the workspace root (or `cargo build -p l4relay-bench`)",
        path.display()
    );
    path.to_str().unwrap().to_owned()
});
