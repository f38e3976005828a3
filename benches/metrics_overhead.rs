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
    // (variant, gbit/s samples, conn/s samples)
    let mut gbit = [Vec::new(), Vec::new()];
    let mut rate = [Vec::new(), Vec::new()];
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
            if let Some(json) = bench_tool("throughput", port, Some(relay.pid()), &args) {
                gbit[v].extend(json["result"]["total_gbit_per_s"].as_f64());
            }
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
            if let Some(json) = bench_tool("rate", port, Some(relay.pid()), &args) {
                rate[v].extend(json["result"]["conn_per_s"].as_f64());
            }
        }
    }
    eprintln!();
    let diff = |a: f64, b: f64| (a / b - 1.0) * 100.0;
    let md = format!(
        "Metrics on vs off, median of {rounds} interleaved runs of {seconds} s (min–max); l4relay on CPU 0, load on CPU 1.\n\n\
         | | metrics on | metrics off | on vs off |\n|---|---|---|---|\n\
         | throughput, 8 streams up (Gbit/s) | {:.2} ({:.2}–{:.2}) | {:.2} ({:.2}–{:.2}) | {:+.1} % |\n\
         | connection rate, 32 concurrent (conn/s) | {:.0} ({:.0}–{:.0}) | {:.0} ({:.0}–{:.0}) | {:+.1} % |\n",
        median(&gbit[0]), spread(&gbit[0]).0, spread(&gbit[0]).1,
        median(&gbit[1]), spread(&gbit[1]).0, spread(&gbit[1]).1,
        diff(median(&gbit[0]), median(&gbit[1])),
        median(&rate[0]), spread(&rate[0]).0, spread(&rate[0]).1,
        median(&rate[1]), spread(&rate[1]).0, spread(&rate[1]).1,
        diff(median(&rate[0]), median(&rate[1])),
    );
    println!("{md}");
    let out = out_dir();
    std::fs::write(out.join("metrics_overhead.md"), &md).unwrap();
    let json = serde_json::json!({
        "rounds": rounds, "seconds": seconds,
        "throughput_gbit_per_s": {"on": gbit[0], "off": gbit[1]},
        "conn_per_s": {"on": rate[0], "off": rate[1]},
    });
    std::fs::write(
        out.join("metrics_overhead.json"),
        serde_json::to_string_pretty(&json).unwrap(),
    )
    .unwrap();
    let _ = std::fs::remove_dir_all(&work);
}
