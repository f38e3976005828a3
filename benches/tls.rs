//! TLS on one core: the throughput and handshake rate of l4relay terminating TLS, originating
//! it, and both at once, beside the plain splice path.
//!
//! The relay is pinned to CPU 0 with one worker; the load (the bench tool's client and its
//! upstream server) to CPU 1. Certificates are generated at start (rcgen: a CA and an ECDSA
//! P-256 server certificate for "bench.test"); the relay verifies the upstream's certificate
//! against that CA when it originates, the bench client does not verify the relay's (it still
//! checks the handshake's signatures).
//!
//! - throughput: one stream, up and down, Gbit/s and the relay's CPU-seconds per GB;
//! - handshake rate: `rate` mode (connect, 100 B request, 100 B reply, close) with 32 workers:
//!   connections per second and the relay's CPU per connection. Terminating, every connection
//!   is a full handshake (the client resumes nothing); originating, the relay resumes TLS 1.3
//!   sessions with the upstream as rustls does by default.
//!
//! Scenarios are interleaved and repeated; tables show the median (min–max). Results also go to
//! `target/bench/tls.json` and `.md`.
//!
//!     cargo bench --bench tls
//!     ROUNDS=5 SECONDS=5 cargo bench --bench tls

mod support;

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use support::*;

#[derive(Clone, Copy, PartialEq)]
enum Scenario {
    /// Plain TCP both sides, relay = "splice".
    Splice,
    /// TLS from the client, terminated; plain to the server.
    Terminate,
    /// Plain from the client; TLS originated to the server.
    Originate,
    /// Both: terminated, then re-encrypted.
    Both,
}

impl Scenario {
    const ALL: [Scenario; 4] = [
        Scenario::Splice,
        Scenario::Terminate,
        Scenario::Originate,
        Scenario::Both,
    ];

    fn label(self) -> &'static str {
        match self {
            Scenario::Splice => "plain (splice)",
            Scenario::Terminate => "terminate",
            Scenario::Originate => "originate",
            Scenario::Both => "terminate + originate",
        }
    }

    fn client_tls(self) -> bool {
        matches!(self, Scenario::Terminate | Scenario::Both)
    }

    fn server_tls(self) -> bool {
        matches!(self, Scenario::Originate | Scenario::Both)
    }
}

struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn pki(dir: &Path) -> Pki {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "l4relay bench CA");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["bench.test".to_string()])
        .unwrap()
        .signed_by(&key, &*ca)
        .unwrap();
    let pki = Pki {
        ca: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&pki.ca, ca.pem()).unwrap();
    std::fs::write(&pki.cert, cert.pem()).unwrap();
    std::fs::write(&pki.key, key.serialize_pem()).unwrap();
    pki
}

/// Starts the upstream (`mode`) and the relay for `scenario`; returns them and the relay's port.
fn start(scenario: Scenario, mode: &str, pki: &Pki, dir: &Path) -> (Proc, Proc, u16) {
    let (server, upstream_port) = if scenario.server_tls() {
        upstream_tls(mode, &pki.cert, &pki.key)
    } else {
        upstream(mode)
    };
    let listener = if scenario.client_tls() {
        format!(
            "  [listener.tls]\n  cert = \"{}\"\n  key = \"{}\"\n",
            pki.cert.display(),
            pki.key.display()
        )
    } else {
        String::new()
    };
    let pool = if scenario.server_tls() {
        format!(
            "  [pool.tls]\n  sni = \"bench.test\"\n  ca_file = \"{}\"\n",
            pki.ca.display()
        )
    } else {
        String::new()
    };
    let global = if scenario == Scenario::Splice {
        "relay = \"splice\""
    } else {
        ""
    };
    let (relay, port) = l4relay_with(upstream_port, dir, global, "", &listener, &pool);
    (server, relay, port)
}

fn client_args(scenario: Scenario, args: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    if scenario.client_tls() {
        all.extend(["--tls", "--sni", "bench.test"].map(String::from));
    }
    all
}

/// One round's figures: the measurement, the relay's CPU per unit of it, its cores busy.
#[derive(Clone, Copy)]
struct Figures {
    value: f64,
    cpu: Option<f64>,
    cores: Option<f64>,
}

/// One throughput run: Gbit/s, relay CPU-s per GB.
fn throughput(
    scenario: Scenario,
    direction: &str,
    seconds: u64,
    pki: &Pki,
    dir: &Path,
) -> Round<Figures> {
    let mode = if direction == "up" { "sink" } else { "source" };
    let (_server, relay, port) = start(scenario, mode, pki, dir);
    let duration = format!("{seconds}s");
    let args = client_args(
        scenario,
        &[
            "--streams",
            "1",
            "--direction",
            direction,
            "--duration",
            &duration,
            "--warmup",
            "500ms",
        ],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let json = bench_tool("throughput", port, Some(relay.pid()), &args)?;
    Ok(Figures {
        value: json["result"]["total_gbit_per_s"]
            .as_f64()
            .ok_or("no total_gbit_per_s in the report")?,
        cpu: json["proxy"]["cpu_s_per_gb"].as_f64(),
        cores: json["proxy"]["cores"].as_f64(),
    })
}

/// One rate run: connections/s, relay CPU µs per connection.
fn rate(scenario: Scenario, seconds: u64, pki: &Pki, dir: &Path) -> Round<Figures> {
    let (_server, relay, port) = start(scenario, "echo", pki, dir);
    let duration = format!("{seconds}s");
    let args = client_args(
        scenario,
        &[
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
        ],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let json = bench_tool("rate", port, Some(relay.pid()), &args)?;
    Ok(Figures {
        value: json["result"]["conn_per_s"]
            .as_f64()
            .ok_or("no conn_per_s in the report")?,
        cpu: json["proxy"]["cpu_us_per_conn"].as_f64(),
        cores: json["proxy"]["cores"].as_f64(),
    })
}

type Samples = Rounds<Figures>;

/// `median (min–max)` over the good rounds, the relay's CPU, and the mark of dropped rounds;
/// `—` and why when no round counted.
fn cell(s: &Samples, digits: usize, cpu_unit: &str, cores: bool) -> String {
    if s.good() == 0 {
        return s.show(|f| Some(f.value), |_| String::new());
    }
    let value = s.figure(|f| Some(f.value), |v| format!("{v:.digits$}"));
    let mut extra = String::new();
    if let Some(cpu) = s.median(|f| f.cpu) {
        extra.push_str(&format!("; {cpu:.2} {cpu_unit}"));
    }
    if let Some(c) = s.median(|f| f.cores).filter(|_| cores) {
        extra.push_str(&format!("; {c:.2} cores"));
    }
    format!("{value}{extra}{}", s.mark())
}

fn json(s: &Samples) -> serde_json::Value {
    serde_json::json!({
        "values": s.json(|f| Some(f.value)),
        "relay_cpu": s.json(|f| f.cpu),
        "relay_cores": s.json(|f| f.cores),
    })
}

fn main() {
    if !benchmarking() {
        return;
    }
    let rounds = env_or("ROUNDS", 3);
    let seconds = env_or("SECONDS", 3);
    let work = work_dir();
    let pki = pki(&work);
    let directions = ["up", "down"];
    let scenarios = Scenario::ALL;

    let mut bulk = vec![vec![Samples::default(); scenarios.len()]; directions.len()];
    let mut handshakes = vec![Samples::default(); scenarios.len()];
    for round in 1..=rounds {
        // Interleaved: every scenario once per measurement per round, so drift hits all alike.
        for (d, direction) in directions.iter().enumerate() {
            for (s, scenario) in scenarios.iter().enumerate() {
                eprint!(
                    "\rround {round}/{rounds}: throughput {direction} {} ...            ",
                    scenario.label()
                );
                let round = throughput(*scenario, direction, seconds, &pki, &work);
                if let Err(why) = &round {
                    eprintln!(
                        "\nthroughput {direction} {}: round dropped: {why}",
                        scenario.label()
                    );
                }
                bulk[d][s].push(round);
            }
        }
        for (s, scenario) in scenarios.iter().enumerate() {
            eprint!(
                "\rround {round}/{rounds}: rate {} ...                  ",
                scenario.label()
            );
            let round = rate(*scenario, seconds, &pki, &work);
            if let Err(why) = &round {
                eprintln!("\nrate {}: round dropped: {why}", scenario.label());
            }
            handshakes[s].push(round);
        }
    }
    eprintln!();

    let header = format!(
        "| | {} |\n|---|{}\n",
        scenarios
            .iter()
            .map(|s| s.label())
            .collect::<Vec<_>>()
            .join(" | "),
        "---|".repeat(scenarios.len())
    );
    let mut md = format!(
        "TLS on one core: relay on CPU 0 (one worker), load on CPU 1, loopback; median of the good rounds among {rounds} runs of {seconds} s (min–max); a round whose load tool failed or counted errors is dropped, and a cell that lost one is marked `*` with how many rounds it used and why (`—` when none counted). \
         ECDSA P-256 certificate, rustls (ring).\n\nThroughput, one stream, Gbit/s; relay CPU-seconds per GB:\n\n{header}"
    );
    for (d, direction) in directions.iter().enumerate() {
        let cells: Vec<String> = bulk[d].iter().map(|s| cell(s, 2, "s/GB", false)).collect();
        md.push_str(&format!("| {direction} | {} |\n", cells.join(" | ")));
    }
    md.push_str(&format!(
        "\nConnections per second (connect, 100 B each way, close; 32 workers; each TLS client connection a full handshake); relay CPU µs per connection; relay cores busy:\n\n{header}"
    ));
    let cells: Vec<String> = handshakes.iter().map(|s| cell(s, 0, "µs", true)).collect();
    md.push_str(&format!("| conn/s | {} |\n", cells.join(" | ")));
    println!("{md}");

    let report = serde_json::json!({
        "rounds": rounds,
        "seconds": seconds,
        "scenarios": scenarios.iter().map(|s| s.label()).collect::<Vec<_>>(),
        "throughput": directions.iter().zip(&bulk).map(|(d, per)| serde_json::json!({
            "direction": d,
            "gbit_per_s": per.iter().map(json).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "rate": handshakes.iter().map(json).collect::<Vec<_>>(),
    });
    let out = out_dir();
    std::fs::write(out.join("tls.md"), &md).unwrap();
    std::fs::write(
        out.join("tls.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
    eprintln!("wrote {}", out.join("tls.{md,json}").display());
    let _ = std::fs::remove_dir_all(&work);
}
