//! Bulk throughput: a direct connection vs l4relay (splice, copy) vs HAProxy in tcp mode (copy and
//! forced splice, when `haproxy` is installed), in one run.
//!
//! The relay under test is pinned to CPU 0, the load (the bench tool's client and its upstream
//! server) to CPU 1. Scenarios are interleaved and repeated; the table shows the median and the
//! spread (min–max) of Gbit/s and of the relay's CPU seconds per GB. Results also go to
//! `target/bench/throughput.json` and `.md`.
//!
//!     cargo bench --bench throughput
//!     ROUNDS=5 SECONDS=5 cargo bench --bench throughput     # longer, steadier
//!
//! Traffic stays on 127.0.0.1; every run is bounded by its duration.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const RELAY: &str = env!("CARGO_BIN_EXE_l4relay");
const BENCH: &str = env!("CARGO_BIN_EXE_l4relay-bench");

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed (by its own pid) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listening on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Proxy {
    Direct,
    L4relay(&'static str),
    Haproxy { splice: bool },
}

impl Proxy {
    fn label(self) -> String {
        match self {
            Proxy::Direct => "direct".into(),
            Proxy::L4relay(mode) => format!("l4relay {mode}"),
            Proxy::Haproxy { splice: false } => "haproxy copy".into(),
            Proxy::Haproxy { splice: true } => "haproxy splice".into(),
        }
    }

    /// Starts the proxy on CPU 0 in front of `upstream`; returns it and the port to load.
    fn start(self, upstream: u16, dir: &Path) -> (Option<Proc>, u16) {
        let port = free_port();
        let child = match self {
            Proxy::Direct => return (None, upstream),
            Proxy::L4relay(mode) => {
                let config = dir.join(format!("l4relay-{port}.toml"));
                std::fs::write(
                    &config,
                    format!(
                        "[global]\nworkers = 1\nrelay = \"{mode}\"\nlog_format = \"off\"\n[admin]\nlisten = \"off\"\n\
                         [[listener]]\nname = \"bench\"\nlisten = \"127.0.0.1:{port}\"\npool = \"p\"\n\
                         [[pool]]\nname = \"p\"\n  [[pool.server]]\n  address = \"127.0.0.1:{upstream}\"\n"
                    ),
                )
                .unwrap();
                Command::new("taskset")
                    .args(["-c", "0", RELAY, "run", "--config"])
                    .arg(&config)
                    .env("RUST_LOG", "warn")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            }
            Proxy::Haproxy { splice } => {
                let config = dir.join(format!("haproxy-{port}.cfg"));
                let splice_opts = if splice {
                    "    option splice-request\n    option splice-response\n"
                } else {
                    ""
                };
                std::fs::write(
                    &config,
                    format!(
                        "global\n    nbthread 1\n    maxconn 10000\ndefaults\n    mode tcp\n    timeout connect 3s\n    timeout client 60s\n    timeout server 60s\n\
                         listen bench\n    bind 127.0.0.1:{port}\n{splice_opts}    server s1 127.0.0.1:{upstream}\n"
                    ),
                )
                .unwrap();
                Command::new("taskset")
                    .args(["-c", "0", "haproxy", "-db", "-f"])
                    .arg(&config)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            }
        };
        wait_for_port(port);
        (Some(Proc(child)), port)
    }
}

#[derive(Clone, Copy)]
struct Case {
    direction: &'static str,
    streams: u32,
}

#[derive(Default, Clone)]
struct Samples {
    gbit: Vec<f64>,
    cpu_per_gb: Vec<f64>,
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn spread(values: &[f64]) -> (f64, f64) {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

fn run_once(proxy: Proxy, case: Case, seconds: u64, dir: &Path) -> Option<(f64, Option<f64>)> {
    let server_mode = match case.direction {
        "up" => "sink",
        "down" => "source",
        _ => "echo",
    };
    let upstream_port = free_port();
    let _server = Proc(
        Command::new("taskset")
            .args([
                "-c",
                "1",
                BENCH,
                "serve",
                "--listen",
                &format!("127.0.0.1:{upstream_port}"),
                "--mode",
                server_mode,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_port(upstream_port);
    let (proxy_proc, port) = proxy.start(upstream_port, dir);
    let mut load = Command::new("taskset");
    load.args(["-c", "1", BENCH, "throughput", "--quiet", "--json", "-"])
        .args(["--target", &format!("127.0.0.1:{port}")])
        .args([
            "--streams",
            &case.streams.to_string(),
            "--direction",
            case.direction,
        ])
        .args(["--duration", &format!("{seconds}s"), "--warmup", "500ms"]);
    if let Some(p) = &proxy_proc {
        load.args(["--pid", &p.0.id().to_string()]);
    }
    let out = load.stderr(Stdio::null()).output().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let gbit = json["result"]["total_gbit_per_s"].as_f64()?;
    let cpu = json["proxy"]["cpu_s_per_gb"].as_f64();
    Some((gbit, cpu))
}

fn main() {
    // `cargo test --benches` runs this binary without --bench: nothing to measure then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rounds = env_or("ROUNDS", 3);
    let seconds = env_or("SECONDS", 3);
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../bench");
    std::fs::create_dir_all(&out_dir).unwrap();
    let work = std::env::temp_dir().join(format!("l4relay-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();

    let haproxy = Command::new("haproxy")
        .arg("-v")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    let mut proxies = vec![
        Proxy::Direct,
        Proxy::L4relay("splice"),
        Proxy::L4relay("copy"),
        Proxy::L4relay("auto"),
    ];
    if haproxy {
        proxies.push(Proxy::Haproxy { splice: false });
        proxies.push(Proxy::Haproxy { splice: true });
    } else {
        eprintln!("haproxy is not installed (apt-get install haproxy): comparing without it");
    }
    let cases = [
        Case {
            direction: "up",
            streams: 1,
        },
        Case {
            direction: "down",
            streams: 1,
        },
        Case {
            direction: "up",
            streams: 8,
        },
        Case {
            direction: "down",
            streams: 8,
        },
    ];

    let mut results: Vec<Vec<Samples>> = vec![vec![Samples::default(); proxies.len()]; cases.len()];
    for round in 1..=rounds {
        for (c, case) in cases.iter().enumerate() {
            // Interleaved: every proxy once per case per round, so drift hits all alike.
            for (p, proxy) in proxies.iter().enumerate() {
                eprint!(
                    "\rround {round}/{rounds}: {} {} x{} ...            ",
                    proxy.label(),
                    case.direction,
                    case.streams
                );
                if let Some((gbit, cpu)) = run_once(*proxy, *case, seconds, &work) {
                    results[c][p].gbit.push(gbit);
                    if let Some(cpu) = cpu {
                        results[c][p].cpu_per_gb.push(cpu);
                    }
                }
            }
        }
    }
    eprintln!();

    let mut md = format!(
        "Throughput, Gbit/s (median of {rounds}, min–max) and proxy CPU-seconds per GB; proxy on CPU 0, load on CPU 1, loopback.\n\n\
         | case | {} |\n|---|{}\n",
        proxies.iter().map(|p| p.label()).collect::<Vec<_>>().join(" | "),
        "---|".repeat(proxies.len())
    );
    let mut json_cases = Vec::new();
    for (c, case) in cases.iter().enumerate() {
        let cells: Vec<String> = results[c]
            .iter()
            .map(|s| {
                let (lo, hi) = spread(&s.gbit);
                let cpu = if s.cpu_per_gb.is_empty() {
                    String::new()
                } else {
                    format!(", {:.2} s/GB", median(&s.cpu_per_gb))
                };
                format!("{:.1} ({lo:.1}–{hi:.1}){cpu}", median(&s.gbit))
            })
            .collect();
        md.push_str(&format!(
            "| {} x{} | {} |\n",
            case.direction,
            case.streams,
            cells.join(" | ")
        ));
        let per_proxy: Vec<serde_json::Value> = proxies
            .iter()
            .zip(&results[c])
            .map(|(p, s)| {
                serde_json::json!({
                    "proxy": p.label(), "gbit_per_s": s.gbit, "median_gbit_per_s": median(&s.gbit),
                    "cpu_s_per_gb": s.cpu_per_gb, "median_cpu_s_per_gb": median(&s.cpu_per_gb),
                })
            })
            .collect();
        json_cases.push(serde_json::json!({"direction": case.direction, "streams": case.streams, "results": per_proxy}));
    }
    println!("{md}");
    std::fs::write(out_dir.join("throughput.md"), &md).unwrap();
    let json = serde_json::json!({"rounds": rounds, "seconds": seconds, "cases": json_cases});
    std::fs::write(
        out_dir.join("throughput.json"),
        serde_json::to_string_pretty(&json).unwrap(),
    )
    .unwrap();
    eprintln!("wrote {}", out_dir.join("throughput.{md,json}").display());
    let _ = std::fs::remove_dir_all(&work);
}
