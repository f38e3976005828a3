//! Shared plumbing for the benchmarks: child processes pinned to a CPU, l4relay and HAProxy
//! configs, running the bench tool and judging its JSON, medians of the rounds that counted.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const RELAY: &str = env!("CARGO_BIN_EXE_l4relay");

/// The bench tool, next to l4relay in the target directory. It is a package of its own (bench/),
/// so `cargo bench` does not build it for these benches: the first use runs `cargo build` for it
/// with the profile l4relay was built with (a no-op when it is up to date; cargo has released
/// its lock by the time a bench runs).
pub static BENCH: LazyLock<PathBuf> = LazyLock::new(build_bench_tool);

/// Prefixes of the variables cargo sets for the target it builds or runs.
const CARGO_SET_FOR_TARGETS: &[&str] = &[
    "CARGO_MANIFEST_",
    "CARGO_PKG_",
    "CARGO_CRATE_",
    "CARGO_BIN_",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "CARGO_RUSTC_CURRENT_DIR",
    "CARGO_CFG_",
    "OUT_DIR",
];

fn build_bench_tool() -> PathBuf {
    let relay = Path::new(RELAY);
    let tool = relay.with_file_name(format!("l4relay-bench{}", std::env::consts::EXE_SUFFIX));
    // `cargo bench` builds into target/release with the bench profile, `cargo test --benches`
    // into target/debug; a custom profile has a directory of its name.
    let profile_dir = relay.parent().and_then(Path::file_name);
    let profile = match profile_dir.and_then(OsStr::to_str) {
        Some("release") => "bench",
        Some("debug") => "dev",
        Some(other) => other,
        None => panic!("{RELAY}: not in a profile directory"),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut build = Command::new(cargo);
    // Not what cargo set for this bench (CARGO_MANIFEST_DIR, CARGO_PKG_NAME, ...): build scripts
    // that watch those (ring's) would take them for a changed environment and rebuild, here and
    // again at the next `cargo bench`.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if CARGO_SET_FOR_TARGETS.iter().any(|p| name.starts_with(p)) {
            build.env_remove(&*name);
        }
    }
    let status = build
        .args([
            "build",
            "--quiet",
            "--package",
            "l4relay-bench",
            "--profile",
            profile,
        ])
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .status()
        .expect("run cargo to build l4relay-bench");
    assert!(
        status.success(),
        "cargo build --package l4relay-bench failed"
    );
    assert!(
        tool.is_file(),
        "{} missing after the build (a --target-dir or --target the build did not see?): \
         build it with `cargo build --profile {profile} --package l4relay-bench`",
        tool.display()
    );
    tool
}

pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// True when run by `cargo bench` (`cargo test --benches` runs bench binaries without it).
pub fn benchmarking() -> bool {
    std::env::args().any(|a| a == "--bench")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Where results go: target/bench/.
pub fn out_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../bench");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn work_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("l4relay-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A child process killed (by its own pid) when dropped.
pub struct Proc(pub Child);

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listening on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn pinned(cpu: u32, program: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new("taskset");
    c.args(["-c", &cpu.to_string()]).arg(program);
    c.stdout(Stdio::null()).stderr(Stdio::null());
    c
}

/// The bench tool's upstream server on CPU 1.
pub fn upstream(mode: &str) -> (Proc, u16) {
    let port = free_port();
    let child = pinned(1, &*BENCH)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--mode",
            mode,
        ])
        .spawn()
        .unwrap();
    wait_for_port(port);
    (Proc(child), port)
}

/// l4relay on CPU 0, one worker, access log off (unless `extra_global` sets `log_format`), in
/// front of `upstream`; `extra_global` goes into [global], `extra_admin` into [admin].
pub fn l4relay(upstream: u16, dir: &Path, extra_global: &str, extra_admin: &str) -> (Proc, u16) {
    l4relay_with(upstream, dir, extra_global, extra_admin, "", "")
}

pub fn haproxy_installed() -> bool {
    Command::new("haproxy")
        .arg("-v")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// HAProxy 2.x in tcp mode on CPU 0, one thread, optionally with splice forced both ways.
pub fn haproxy(upstream: u16, dir: &Path, splice: bool) -> (Proc, u16) {
    let splice_opts = if splice {
        "    option splice-request\n    option splice-response\n"
    } else {
        ""
    };
    haproxy_with(upstream, dir, "", "", splice_opts)
}

/// Like `haproxy`, with `bind_opts` appended to the `bind` line (` ssl crt FILE`),
/// `server_opts` to the `server` line (` ssl verify required ca-file FILE`) and `listen_extra`
/// (whole lines) to the `listen` section.
pub fn haproxy_with(
    upstream: u16,
    dir: &Path,
    bind_opts: &str,
    server_opts: &str,
    listen_extra: &str,
) -> (Proc, u16) {
    let port = free_port();
    let config = dir.join(format!("haproxy-{port}.cfg"));
    std::fs::write(
        &config,
        format!(
            "global\n    nbthread 1\n    maxconn 5000\ndefaults\n    mode tcp\n    timeout connect 3s\n    timeout client 60s\n    timeout server 60s\n\
             listen bench\n    bind 127.0.0.1:{port}{bind_opts}\n    backlog 4096\n{listen_extra}    server s1 127.0.0.1:{upstream}{server_opts}\n"
        ),
    )
    .unwrap();
    let child = pinned(0, "haproxy")
        .args(["-db", "-f"])
        .arg(&config)
        .spawn()
        .unwrap();
    wait_for_port(port);
    (Proc(child), port)
}

/// Runs `l4relay-bench MODE ARGS... --json -` on CPU 1 against `port`, measuring `pid`: its
/// report, or why the round does not count (see `judge`).
pub fn bench_tool(mode: &str, port: u16, pid: Option<u32>, args: &[&str]) -> Round<Value> {
    let mut load = pinned(1, &*BENCH);
    load.args([
        mode,
        "--quiet",
        "--json",
        "-",
        "--target",
        &format!("127.0.0.1:{port}"),
    ])
    .args(args);
    if let Some(pid) = pid {
        load.args(["--pid", &pid.to_string()]);
    }
    let out = load
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run l4relay-bench: {e}"))?;
    judge(out.status.code(), &out.stdout, &out.stderr)
}

/// One round's outcome: its figures, or why it was dropped.
pub type Round<T> = Result<T, String>;

/// Whether one run of the load tool counts: it exited 0, printed a JSON report, and the report
/// shows no failure (errors of any kind, interrupted, failed streams, lost requests, connections
/// not opened or closed early). A run that lost work measures a different load than the others,
/// so its figures stay out of the medians. `exit` is `None` when the tool died of a signal.
pub fn judge(exit: Option<i32>, stdout: &[u8], stderr: &[u8]) -> Round<Value> {
    let said = || {
        let text = String::from_utf8_lossy(stderr);
        let line = text
            .lines()
            .rev()
            .find(|l| l.contains("error"))
            .or_else(|| text.lines().rev().find(|l| !l.trim().is_empty()))
            .map(|l| format!(": {}", short(l.trim())));
        line.unwrap_or_default()
    };
    match exit {
        Some(0) => {}
        Some(code) => return Err(format!("load tool exited with status {code}{}", said())),
        None => return Err(format!("load tool killed by a signal{}", said())),
    }
    let j: Value = serde_json::from_slice(stdout)
        .map_err(|e| format!("load tool printed no JSON report ({e}){}", said()))?;
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let e = &j["errors"];
    if n(&e["total"]) > 0 {
        let kinds: Vec<String> = ["refused", "reset", "timeout", "short", "other"]
            .iter()
            .filter(|k| n(&e[**k]) > 0)
            .map(|k| format!("{k} {}", n(&e[*k])))
            .collect();
        let first = e["samples"]
            .as_object()
            .and_then(|s| s.iter().next())
            .map(|(k, m)| format!("; first {k}: {}", short(m.as_str().unwrap_or_default())))
            .unwrap_or_default();
        return Err(format!(
            "{} errors ({}){first}",
            n(&e["total"]),
            kinds.join(", ")
        ));
    }
    if j["interrupted"].as_bool() == Some(true) {
        return Err("load tool was interrupted".into());
    }
    let r = &j["result"];
    if n(&r["streams_failed"]) > 0 {
        return Err(format!("{} streams failed", n(&r["streams_failed"])));
    }
    if let (Some(connected), Some(streams)) =
        (r["streams_connected"].as_u64(), r["streams"].as_u64())
    {
        if connected < streams {
            return Err(format!("{connected} of {streams} streams connected"));
        }
    }
    if n(&r["lost"]) > 0 {
        return Err(format!("{} requests lost", n(&r["lost"])));
    }
    if let (Some(opened), Some(count)) = (r["opened"].as_u64(), r["count"].as_u64()) {
        if opened < count {
            return Err(format!("{opened} of {count} connections opened"));
        }
    }
    if n(&r["closed_during_hold"]) > 0 {
        return Err(format!(
            "{} connections closed during the hold",
            n(&r["closed_during_hold"])
        ));
    }
    Ok(j)
}

/// A reason cut to a table cell's length.
fn short(s: &str) -> String {
    const MAX: usize = 100;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Every round of one cell (a proxy in a scenario), good or failed, in order. Medians and spreads
/// come from the good rounds only; the failed ones are counted and their reasons shown.
#[derive(Debug, Clone)]
pub struct Rounds<T>(pub Vec<Round<T>>);

impl<T> Default for Rounds<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<T> Rounds<T> {
    pub fn push(&mut self, round: Round<T>) {
        self.0.push(round);
    }

    pub fn total(&self) -> usize {
        self.0.len()
    }

    pub fn good(&self) -> usize {
        self.0.iter().filter(|r| r.is_ok()).count()
    }

    /// Distinct reasons of the failed rounds, each with how often it happened.
    pub fn reasons(&self) -> Vec<String> {
        let mut seen: Vec<(&str, usize)> = Vec::new();
        for why in self.0.iter().filter_map(|r| r.as_ref().err()) {
            match seen.iter_mut().find(|(w, _)| *w == why) {
                Some((_, n)) => *n += 1,
                None => seen.push((why, 1)),
            }
        }
        seen.into_iter()
            .map(|(w, n)| {
                if n == 1 {
                    w.to_string()
                } else {
                    format!("{w} (×{n})")
                }
            })
            .collect()
    }

    /// One figure from each good round that has it.
    pub fn values(&self, figure: impl Fn(&T) -> Option<f64>) -> Vec<f64> {
        self.0
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .filter_map(figure)
            .filter(|v| v.is_finite())
            .collect()
    }

    /// The median of a figure over the good rounds; `None` when no good round has it.
    pub fn median(&self, figure: impl Fn(&T) -> Option<f64>) -> Option<f64> {
        let v = self.values(figure);
        (!v.is_empty()).then(|| median(&v))
    }

    /// `""` when every round counted; otherwise ` * (n of m rounds; k failed dropped: why)`.
    pub fn mark(&self) -> String {
        let failed = self.total() - self.good();
        if failed == 0 {
            return String::new();
        }
        format!(
            " * ({} of {} rounds; {failed} failed dropped: {})",
            self.good(),
            self.total(),
            self.reasons().join("; ")
        )
    }

    /// A table cell: `median (min–max)` over the good rounds with `mark()`, `—` with the reasons
    /// when no round counted, `–` when the figure does not apply (good rounds, none has it).
    pub fn show(&self, figure: impl Fn(&T) -> Option<f64>, fmt: impl Fn(f64) -> String) -> String {
        if self.good() == 0 {
            return if self.total() == 0 {
                "–".into()
            } else {
                format!(
                    "— (no good round of {}: {})",
                    self.total(),
                    self.reasons().join("; ")
                )
            };
        }
        format!("{}{}", self.figure(figure, fmt), self.mark())
    }

    /// `median (min–max)` of a figure over the good rounds, without the mark; `–` when none
    /// has it.
    pub fn figure(
        &self,
        figure: impl Fn(&T) -> Option<f64>,
        fmt: impl Fn(f64) -> String,
    ) -> String {
        let v = self.values(figure);
        if v.is_empty() {
            return "–".into();
        }
        let (lo, hi) = spread(&v);
        let m = fmt(median(&v));
        if v.len() == 1 || fmt(lo) == fmt(hi) {
            m
        } else {
            format!("{m} ({}–{})", fmt(lo), fmt(hi))
        }
    }

    /// The figure for a JSON report: good rounds' samples, their median and spread (null when no
    /// round counted), rounds run and used, and why the others were dropped.
    pub fn json(&self, figure: impl Fn(&T) -> Option<f64>) -> Value {
        let v = self.values(figure);
        let (median, min, max) = if v.is_empty() {
            (None, None, None)
        } else {
            let (lo, hi) = spread(&v);
            (Some(median(&v)), Some(lo), Some(hi))
        };
        serde_json::json!({
            "samples": v, "median": median, "min": min, "max": max,
            "rounds": self.total(), "good_rounds": self.good(), "dropped": self.reasons(),
        })
    }
}

pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn spread(values: &[f64]) -> (f64, f64) {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

/// Where Debian's nginx keeps its stream module (package libnginx-mod-stream).
pub const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// nginx with its stream module (a dynamic module on Debian), or why it can't run.
pub fn nginx_available() -> Result<(), String> {
    let installed = Command::new("nginx")
        .arg("-v")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !installed {
        return Err("nginx is not installed (apt-get install nginx)".into());
    }
    if !Path::new(NGINX_STREAM_MODULE).exists() {
        return Err(format!(
            "nginx has no stream module at {NGINX_STREAM_MODULE} (apt-get install libnginx-mod-stream)"
        ));
    }
    Ok(())
}

/// nginx's stream module on CPU 0: one process (no master, so the pid is the one doing the
/// work), copying both ways, in front of `upstream`.
pub fn nginx(upstream: u16, dir: &Path) -> (Proc, u16) {
    nginx_with(upstream, dir, "", "")
}

/// Like `nginx`, with `listen_opts` appended to the `listen` directive (` ssl`) and
/// `server_extra` (whole directives) added to the stream `server` block.
pub fn nginx_with(upstream: u16, dir: &Path, listen_opts: &str, server_extra: &str) -> (Proc, u16) {
    let port = free_port();
    let config = dir.join(format!("nginx-{port}.conf"));
    std::fs::write(
        &config,
        format!(
            "load_module {NGINX_STREAM_MODULE};\ndaemon off;\nmaster_process off;\nworker_processes 1;\n\
             worker_rlimit_nofile 20000;\npid {dir}/nginx-{port}.pid;\nerror_log stderr crit;\n\
             events {{\n    worker_connections 20000;\n}}\n\
             stream {{\n    server {{\n        listen 127.0.0.1:{port}{listen_opts} backlog=4096;\n\
                     proxy_connect_timeout 3s;\n        proxy_timeout 60s;\n{server_extra}\
                     proxy_pass 127.0.0.1:{upstream};\n    }}\n}}\n",
            dir = dir.display()
        ),
    )
    .unwrap();
    let child = pinned(0, "nginx")
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg("stderr")
        .arg("-c")
        .arg(&config)
        .spawn()
        .unwrap();
    wait_for_port(port);
    (Proc(child), port)
}

/// Like `l4relay`, with `listener_extra` appended to the `[[listener]]` table and `pool_extra`
/// to the `[[pool]]` table (before its server), e.g. their `[listener.tls]` / `[pool.tls]`.
pub fn l4relay_with(
    upstream: u16,
    dir: &Path,
    extra_global: &str,
    extra_admin: &str,
    listener_extra: &str,
    pool_extra: &str,
) -> (Proc, u16) {
    l4relay_binary_with(
        Path::new(RELAY),
        upstream,
        dir,
        extra_global,
        extra_admin,
        listener_extra,
        pool_extra,
    )
}

/// Like `l4relay_with`, running the l4relay binary at `binary` (another build of it, e.g. with
/// another crypto provider).
pub fn l4relay_binary_with(
    binary: &Path,
    upstream: u16,
    dir: &Path,
    extra_global: &str,
    extra_admin: &str,
    listener_extra: &str,
    pool_extra: &str,
) -> (Proc, u16) {
    let port = free_port();
    let config = dir.join(format!("l4relay-{port}.toml"));
    // The access log is off unless `extra_global` sets its format.
    let log = if extra_global.contains("log_format") {
        ""
    } else {
        "log_format = \"off\"\n"
    };
    // The admin listener is off unless `extra_admin` gives its address.
    let admin = if extra_admin.contains("listen") {
        ""
    } else {
        "listen = \"off\"\n"
    };
    std::fs::write(
        &config,
        format!(
            "[global]\nworkers = 1\n{log}{extra_global}\n[admin]\n{admin}{extra_admin}\n\n\
             [[listener]]\nname = \"bench\"\nlisten = \"127.0.0.1:{port}\"\npool = \"p\"\nbacklog = 4096\n{listener_extra}\n\n\
             [[pool]]\nname = \"p\"\n{pool_extra}\n  [[pool.server]]\n  address = \"127.0.0.1:{upstream}\"\n"
        ),
    )
    .unwrap();
    let child = pinned(0, binary)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    wait_for_port(port);
    (Proc(child), port)
}

/// The bench tool's upstream server on CPU 1, answering over TLS with `cert` and `key`.
pub fn upstream_tls(mode: &str, cert: &Path, key: &Path) -> (Proc, u16) {
    upstream_tls_with(mode, cert, key, &[])
}

/// Like `upstream_tls`, with more `serve` arguments (`--tls-version`, `--json FILE`, ...).
pub fn upstream_tls_with(mode: &str, cert: &Path, key: &Path, extra: &[&str]) -> (Proc, u16) {
    let port = free_port();
    let child = pinned(1, &*BENCH)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--mode",
            mode,
        ])
        .arg("--tls-cert")
        .arg(cert)
        .arg("--tls-key")
        .arg(key)
        .args(extra)
        .spawn()
        .unwrap();
    wait_for_port(port);
    (Proc(child), port)
}

/// Ends `serve` with SIGTERM and returns the summary it wrote to `json` (its `--json FILE`)
/// as it exited.
pub fn serve_summary(mut serve: Proc, json: &Path) -> Round<Value> {
    let pid = libc::pid_t::try_from(serve.pid()).map_err(|e| e.to_string())?;
    // SAFETY: kill(2) on our own child's pid, which is not yet reaped (Proc waits on drop), so
    // the pid cannot have been reused.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        return Err(format!(
            "cannot signal serve: {}",
            std::io::Error::last_os_error()
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match serve.0.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => return Err("serve did not exit within 10 s of SIGTERM".into()),
            Err(e) => return Err(format!("waiting for serve: {e}")),
        }
    }
    let text = std::fs::read_to_string(json)
        .map_err(|e| format!("serve wrote no summary to {}: {e}", json.display()))?;
    let _ = std::fs::remove_file(json);
    serde_json::from_str(&text).map_err(|e| format!("serve's summary is not JSON: {e}"))
}

/// A figure with three significant digits or so, as the reports show them: 1234, 12.3, 1.23.
pub fn fmt(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}
