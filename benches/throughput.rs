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

/// Every round of one (case, proxy) pair: Gbit/s and CPU-s per GB, or why it was dropped.
type Samples = Rounds<(f64, Option<f64>)>;

/// One round: Gbit/s, and the proxy's CPU-seconds per GB when there is a proxy.
fn run_once(proxy: Proxy, case: Case, seconds: u64, dir: &Path) -> Round<(f64, Option<f64>)> {
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
    Ok((
        json["result"]["total_gbit_per_s"]
            .as_f64()
            .ok_or("no total_gbit_per_s in the report")?,
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
                let round = run_once(*proxy, *case, seconds, &work);
                if let Err(why) = &round {
                    eprintln!(
                        "\n{} {} x{}: round dropped: {why}",
                        proxy.label(),
                        case.direction,
                        case.streams
                    );
                }
                results[c][p].push(round);
            }
        }
    }
    eprintln!();

    let mut md = format!(
        "Throughput, Gbit/s: median of the good rounds among {rounds} runs of {seconds} s (min–max), and the proxy's CPU-seconds per GB. \
         A round whose load tool failed or counted errors is dropped; a cell that lost one is marked `*` with how many rounds it used and why (`—` when none counted). \
         Proxy on CPU 0, load on CPU 1, loopback.\n\n| case | {} |\n|---|{}\n",
        proxies.iter().map(|p| p.label()).collect::<Vec<_>>().join(" | "),
        "---|".repeat(proxies.len())
    );
    let mut json_cases = Vec::new();
    for (c, case) in cases.iter().enumerate() {
        let cells: Vec<String> = results[c]
            .iter()
            .map(|s| {
                if s.good() == 0 {
                    return s.show(|r| Some(r.0), |_| String::new());
                }
                let gbit = s.figure(|r| Some(r.0), |v| format!("{v:.1}"));
                let cpu = s
                    .median(|r| r.1)
                    .map(|c| format!("; {c:.2} s/GB"))
                    .unwrap_or_default();
                format!("{gbit}{cpu}{}", s.mark())
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
                    "proxy": p.label(), "gbit_per_s": s.json(|r| Some(r.0)),
                    "cpu_s_per_gb": s.json(|r| r.1),
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
