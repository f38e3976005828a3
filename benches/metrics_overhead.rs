//! What the Prometheus exporter costs on the relay path: throughput and connection rate with
//! metrics on vs off, interleaved in one run (proxy on CPU 0, load on CPU 1).
//!
//!     cargo bench --bench metrics_overhead
//!     ROUNDS=7 SECONDS=5 cargo bench --bench metrics_overhead
//!
//! Writes target/bench/metrics_overhead.{md,json}.

mod support;

use support::*;

fn main() {
    if !benchmarking() {
        return;
    }
    let rounds = env_or("ROUNDS", 5);
    let seconds = env_or("SECONDS", 3);
    let work = work_dir();
    let duration = format!("{seconds}s");
    let variants = [
        ("metrics on", "metrics = true"),
        ("metrics off", "metrics = false"),
    ];
    // Per variant (on, off): every round's Gbit/s and conn/s, or why it was dropped.
    let mut gbit: [Rounds<f64>; 2] = Default::default();
    let mut rate: [Rounds<f64>; 2] = Default::default();
    for round in 1..=rounds {
        for (v, (label, admin)) in variants.iter().enumerate() {
            eprint!("\rround {round}/{rounds}: {label} ...          ");
            let (_sink, sink_port) = upstream("sink");
            let (relay, port) = l4relay(sink_port, &work, "", admin);
            let args = [
                "--streams",
                "8",
                "--direction",
                "up",
                "--duration",
                &duration,
                "--warmup",
                "500ms",
            ];
            let round = bench_tool("throughput", port, Some(relay.pid()), &args).and_then(|j| {
                j["result"]["total_gbit_per_s"]
                    .as_f64()
                    .ok_or_else(|| "no total_gbit_per_s in the report".to_string())
            });
            if let Err(why) = &round {
                eprintln!("\n{label} throughput: round dropped: {why}");
            }
            gbit[v].push(round);
            drop(relay);
            let (_echo, echo_port) = upstream("echo");
            let (relay, port) = l4relay(echo_port, &work, "", admin);
            let args = [
                "--concurrency",
                "32",
                "--duration",
                &duration,
                "--warmup",
                "500ms",
            ];
            let round = bench_tool("rate", port, Some(relay.pid()), &args).and_then(|j| {
                j["result"]["conn_per_s"]
                    .as_f64()
                    .ok_or_else(|| "no conn_per_s in the report".to_string())
            });
            if let Err(why) = &round {
                eprintln!("\n{label} rate: round dropped: {why}");
            }
            rate[v].push(round);
        }
    }
    eprintln!();
    let diff = |r: &[Rounds<f64>; 2]| match (r[0].median(|v| Some(*v)), r[1].median(|v| Some(*v))) {
        (Some(a), Some(b)) => format!("{:+.1} %", (a / b - 1.0) * 100.0),
        _ => "—".into(),
    };
    let show = |r: &Rounds<f64>, digits: usize| r.show(|v| Some(*v), |v| format!("{v:.digits$}"));
    let md = format!(
        "Metrics on vs off, median of the good rounds among {rounds} interleaved runs of {seconds} s (min–max); \
         l4relay on CPU 0, load on CPU 1. A round whose load tool failed or counted errors is dropped; a cell \
         that lost one is marked `*` with how many rounds it used and why (`—` when none counted).\n\n\
         | | metrics on | metrics off | on vs off |\n|---|---|---|---|\n\
         | throughput, 8 streams up (Gbit/s) | {} | {} | {} |\n\
         | connection rate, 32 concurrent (conn/s) | {} | {} | {} |\n",
        show(&gbit[0], 2),
        show(&gbit[1], 2),
        diff(&gbit),
        show(&rate[0], 0),
        show(&rate[1], 0),
        diff(&rate),
    );
    println!("{md}");
    let out = out_dir();
    std::fs::write(out.join("metrics_overhead.md"), &md).unwrap();
    let figure = |v: &f64| Some(*v);
    let json = serde_json::json!({
        "rounds": rounds, "seconds": seconds,
        "throughput_gbit_per_s": {"on": gbit[0].json(figure), "off": gbit[1].json(figure)},
        "conn_per_s": {"on": rate[0].json(figure), "off": rate[1].json(figure)},
    });
    std::fs::write(
        out.join("metrics_overhead.json"),
        serde_json::to_string_pretty(&json).unwrap(),
    )
    .unwrap();
    let _ = std::fs::remove_dir_all(&work);
}
