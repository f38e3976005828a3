//! Bulk throughput: a direct connection vs l4relay (splice, copy, auto) vs HAProxy in tcp mode
//! (copy, and splice forced both ways) when `haproxy` is installed, in one run.
//!
//! The proxy under test is pinned to CPU 0, the load (the bench tool's client and its upstream
//! server) to CPU 1. Scenarios are interleaved and repeated; the table shows the median and the
//! spread (min–max) of Gbit/s and the proxy's CPU-seconds per GB. Results also go to
//! `target/bench/throughput.json` and `.md`.
//!
//!     cargo bench --bench throughput
//!     ROUNDS=5 SECONDS=5 cargo bench --bench throughput     # longer, steadier
//!
//! Traffic stays on 127.0.0.1; every run is bounded by its duration.

mod support;

use std::path::Path;

use support::*;

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

    fn start(self, upstream: u16, dir: &Path) -> (Option<Proc>, u16) {
        match self {
            Proxy::Direct => (None, upstream),
            Proxy::L4relay(mode) => {
                let (p, port) = l4relay(upstream, dir, &format!("relay = \"{mode}\""), "");
                (Some(p), port)
            }
            Proxy::Haproxy { splice } => {
                let (p, port) = haproxy(upstream, dir, splice);
                (Some(p), port)
            }
        }
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

fn run_once(proxy: Proxy, case: Case, seconds: u64, dir: &Path) -> Option<(f64, Option<f64>)> {
    let mode = match case.direction {
        "up" => "sink",
        "down" => "source",
        _ => "echo",
    };
    let (_server, upstream_port) = upstream(mode);
    let (proxy_proc, port) = proxy.start(upstream_port, dir);
    let streams = case.streams.to_string();
    let duration = format!("{seconds}s");
    let args = [
        "--streams",
        &streams,
        "--direction",
        case.direction,
        "--duration",
        &duration,
        "--warmup",
        "500ms",
    ];
    let json = bench_tool(
        "throughput",
        port,
        proxy_proc.as_ref().map(Proc::pid),
        &args,
    )?;
    Some((
        json["result"]["total_gbit_per_s"].as_f64()?,
        json["proxy"]["cpu_s_per_gb"].as_f64(),
    ))
}

fn main() {
    if !benchmarking() {
        return;
    }
    let rounds = env_or("ROUNDS", 3);
    let seconds = env_or("SECONDS", 3);
    let work = work_dir();

    let mut proxies = vec![
        Proxy::Direct,
        Proxy::L4relay("splice"),
        Proxy::L4relay("copy"),
        Proxy::L4relay("auto"),
    ];
    if haproxy_installed() {
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
                    results[c][p].cpu_per_gb.extend(cpu);
                }
            }
        }
    }
    eprintln!();

    let mut md = format!(
        "Throughput, Gbit/s: median of {rounds} runs of {seconds} s (min–max), and the proxy's CPU-seconds per GB. \
         Proxy on CPU 0, load on CPU 1, loopback.\n\n| case | {} |\n|---|{}\n",
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
                    format!("; {:.2} s/GB", median(&s.cpu_per_gb))
                };
                format!("{:.1} ({lo:.1}–{hi:.1}){cpu}", median(&s.gbit))
            })
            .collect();
        md.push_str(&format!(
            "| {} ×{} | {} |\n",
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
    let out = out_dir();
    std::fs::write(out.join("throughput.md"), &md).unwrap();
    let json = serde_json::json!({"rounds": rounds, "seconds": seconds, "cases": json_cases});
    std::fs::write(
        out.join("throughput.json"),
        serde_json::to_string_pretty(&json).unwrap(),
    )
    .unwrap();
    eprintln!("wrote {}", out.join("throughput.{md,json}").display());
    let _ = std::fs::remove_dir_all(&work);
}
