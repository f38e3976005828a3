//! Shared plumbing for the benchmarks: child processes pinned to a CPU, l4relay and HAProxy
//! configs, running the bench tool and reading its JSON, medians.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

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
    let port = free_port();
    let config = dir.join(format!("haproxy-{port}.cfg"));
    let splice_opts = if splice {
        "    option splice-request\n    option splice-response\n"
    } else {
        ""
    };
    std::fs::write(
        &config,
        format!(
            "global\n    nbthread 1\n    maxconn 5000\ndefaults\n    mode tcp\n    timeout connect 3s\n    timeout client 60s\n    timeout server 60s\n\
             listen bench\n    bind 127.0.0.1:{port}\n    backlog 4096\n{splice_opts}    server s1 127.0.0.1:{upstream}\n"
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

/// Runs `l4relay-bench MODE ARGS... --json -` on CPU 1 against `port`, measuring `pid`.
pub fn bench_tool(
    mode: &str,
    port: u16,
    pid: Option<u32>,
    args: &[&str],
) -> Option<serde_json::Value> {
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
    let out = load.stdout(Stdio::piped()).output().ok()?;
    serde_json::from_slice(&out.stdout).ok()
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
    let port = free_port();
    let config = dir.join(format!("nginx-{port}.conf"));
    std::fs::write(
        &config,
        format!(
            "load_module {NGINX_STREAM_MODULE};\ndaemon off;\nmaster_process off;\nworker_processes 1;\n\
             worker_rlimit_nofile 20000;\npid {dir}/nginx-{port}.pid;\nerror_log stderr crit;\n\
             events {{\n    worker_connections 20000;\n}}\n\
             stream {{\n    server {{\n        listen 127.0.0.1:{port} backlog=4096;\n\
                     proxy_connect_timeout 3s;\n        proxy_timeout 60s;\n\
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
    let port = free_port();
    let config = dir.join(format!("l4relay-{port}.toml"));
    // The access log is off unless `extra_global` sets its format.
    let log = if extra_global.contains("log_format") {
        ""
    } else {
        "log_format = \"off\"\n"
    };
    std::fs::write(
        &config,
        format!(
            "[global]\nworkers = 1\n{log}{extra_global}\n[admin]\nlisten = \"off\"\n{extra_admin}\n\n\
             [[listener]]\nname = \"bench\"\nlisten = \"127.0.0.1:{port}\"\npool = \"p\"\nbacklog = 4096\n{listener_extra}\n\n\
             [[pool]]\nname = \"p\"\n{pool_extra}\n  [[pool.server]]\n  address = \"127.0.0.1:{upstream}\"\n"
        ),
    )
    .unwrap();
    let child = pinned(0, RELAY)
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
        .spawn()
        .unwrap();
    wait_for_port(port);
    (Proc(child), port)
}
