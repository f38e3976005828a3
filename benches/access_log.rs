//! What the access log costs per short connection (issue 15): l4relay auto with the log off and
//! on, in alternating pairs of runs, each pair's ratio on/off, and the median of the ratios.
//!
//! On a shared machine the load of other tenants drifts by more than the log costs; interleaved
//! rounds (as `compare` runs them) then leave a spread wider than the difference. Alternating
//! the two in pairs and taking the median of the per-pair ratios cancels that drift. The relay
//! is pinned to CPU 0, the load (`l4relay-bench rate`, 32 workers, 100 B each way, and its
//! upstream) to CPU 1, as in `compare`. The log goes to a file (`access_log`), text lines, the
//! default buffer and flush interval.
//!
//!     cargo bench --bench access_log
//!     PAIRS=16 SECONDS=3 cargo bench --bench access_log
//!
//! Results go to `target/bench/access_log.{md,json}`.

mod support;

use serde_json::json;
use support::*;

fn cpu_per_connection(log: Option<&std::path::Path>, seconds: u64) -> Round<f64> {
    let dir = work_dir();
    let (_server, upstream_port) = upstream("echo");
    let global = match log {
        None => "relay = \"auto\"".to_string(),
        Some(path) => format!(
            "relay = \"auto\"\nlog_format = \"text\"\naccess_log = \"{}\"",
            path.display()
        ),
    };
    let (relay, port) = l4relay(upstream_port, &dir, &global, "");
    let duration = format!("{seconds}s");
    let args = [
        "--concurrency",
        "32",
        "--request",
        "100",
        "--reply",
        "100",
        "--duration",
        &duration,
        "--warmup",
        "500ms",
    ];
    let j = bench_tool("rate", port, Some(relay.pid()), &args)?;
    j["proxy"]["cpu_us_per_conn"]
        .as_f64()
        .ok_or_else(|| "no proxy cpu_us_per_conn in the report".into())
}

fn main() {
    if !benchmarking() {
        return;
    }
    let pairs = env_or("PAIRS", 8);
    let seconds = env_or("SECONDS", 2);
    let dir = work_dir();
    let log = dir.join("access.log");
    // A pair is a round: (off, on) µs/conn, or why either run of it failed.
    let mut pairs_run: Rounds<(f64, f64)> = Rounds::default();
    for pair in 0..pairs {
        // Alternate which goes first, so that a drift within a pair favours neither.
        let order = if pair % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        let mut got = [Err(String::new()), Err(String::new())];
        for logged in order {
            let _ = std::fs::remove_file(&log);
            got[usize::from(logged)] = cpu_per_connection(logged.then_some(log.as_path()), seconds);
        }
        let [a, b] = got;
        let round = match (a, b) {
            (Ok(a), Ok(b)) => Ok((a, b)),
            (Err(why), _) => Err(format!("log off: {why}")),
            (_, Err(why)) => Err(format!("log on: {why}")),
        };
        match &round {
            Ok((a, b)) => eprintln!(
                "pair {}: log off {a:.1}, on {b:.1} µs/conn, ratio {:.3}",
                pair + 1,
                b / a
            ),
            Err(why) => eprintln!("pair {}: dropped: {why}", pair + 1),
        }
        pairs_run.push(round);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let (off, on, ratio) = (
        |p: &(f64, f64)| Some(p.0),
        |p: &(f64, f64)| Some(p.1),
        |p: &(f64, f64)| Some(p.1 / p.0),
    );
    let md = format!(
        "l4relay auto, short connections (32 workers, 100 B each way), proxy pinned to CPU 0, \
         load to CPU 1: {} of {} pairs of {seconds} s runs, log off and on alternating; a pair \
         where either run's load tool failed or counted errors is dropped.\n\n\
         | access log | proxy CPU µs/conn (median) |\n|---|---|\n| off | {} |\n| on (text, file) | {} |\n\n\
         Ratio on/off: median **{}**; target ≤ 1.05.\n",
        pairs_run.good(),
        pairs_run.total(),
        pairs_run.show(off, |v| format!("{v:.1}")),
        pairs_run.show(on, |v| format!("{v:.1}")),
        pairs_run.show(ratio, |v| format!("{v:.3}")),
    );
    println!("{md}");
    let out = out_dir();
    std::fs::write(out.join("access_log.md"), &md).unwrap();
    let json = json!({
        "pairs": pairs_run.total(), "good_pairs": pairs_run.good(), "seconds": seconds,
        "dropped": pairs_run.reasons(),
        "cpu_us_per_conn_off": pairs_run.json(off), "cpu_us_per_conn_on": pairs_run.json(on),
        "ratio": pairs_run.json(ratio),
    });
    std::fs::write(
        out.join("access_log.json"),
        serde_json::to_string_pretty(&json).unwrap(),
    )
    .unwrap();
    eprintln!("wrote {}", out.join("access_log.{md,json}").display());
}
