//! TLS on one core against the OpenSSL-based anchors (issue 20, item 3): l4relay, HAProxy
//! (`mode tcp`) and nginx's stream module terminating TLS (TLS client → proxy → plain server)
//! and originating it (plain client → proxy → TLS server), with the same certificates and the
//! same cipher suites, in one interleaved run.
//!
//! Each proxy runs as a user would run it: l4relay with its default config (its access log on:
//! text lines to stdout, which the bench sends to /dev/null; the admin listener with its
//! metrics on loopback), HAProxy with `bind ... ssl
//! crt` and `server ... ssl verify required ca-file`, nginx with `listen ... ssl` and
//! `proxy_ssl on; proxy_ssl_verify on; proxy_ssl_session_reuse on` (and `ssl_protocols` /
//! `proxy_ssl_protocols TLSv1.2 TLSv1.3`: nginx 1.22's defaults leave TLS 1.3 out). Neither
//! anchor logs. Each proxy is pinned to CPU 0 with one worker or thread, the load (the bench
//! tool's client and its upstream server) to CPU 1, and started afresh for every run.
//!
//! Certificates: a CA and a server certificate for "bench.test" of each key type, ECDSA P-256
//! (rcgen) and RSA 2048 (keys from the `openssl` command, signed with rcgen), the same files
//! for every proxy and for the upstream server. The version and the cipher suite are pinned
//! from the side the bench controls: its client offers only one (terminating), its server
//! accepts only one (originating): TLS_AES_128_GCM_SHA256 for TLS 1.3,
//! ECDHE-ECDSA-AES128-GCM-SHA256 / ECDHE-RSA-AES128-GCM-SHA256 for TLS 1.2.
//!
//! Figures:
//! - handshakes: `rate` mode (connect, 100 B each way, close; 32 workers): connections per
//!   second and the proxy's CPU µs per connection. The client resumes nothing, so terminating
//!   every connection is a full handshake; originating, each proxy resumes its sessions to the
//!   upstream as it does by default, and the upstream server counts full and resumed
//!   handshakes (over the whole run, warmup included): the share resumed is shown.
//! - bulk: one stream each way through TLS, Gbit/s and the proxy's CPU-s per GB, for ECDSA and
//!   TLS 1.3 only (the bulk cipher is the same whatever the key).
//!
//! l4relay's CPU is compared with the best anchor's (the target: ≤ 0.8×). Tables show
//! the median of the good rounds (min–max); results also go to `target/bench/tls.json` and
//! `.md`.
//!
//!     cargo bench --bench tls
//!     ROUNDS=5 SECONDS=5 cargo bench --bench tls                  # longer, steadier
//!     KEYS=ecdsa VERSIONS=1.3 SCENARIOS=terminate cargo bench --bench tls
//!         # subsets: KEYS=ecdsa,rsa  VERSIONS=1.3,1.2
//!         #          SCENARIOS=terminate,originate,bulk (the default), and `both`
//!         #          (terminate and originate at once, handshakes only)
//!     L4RELAY_ALT=/path/to/l4relay cargo bench --bench tls
//!         # another build of l4relay as a column of its own (the crypto provider
//!         # comparison: docs/performance.md)
//!
//! HAProxy and nginx are used when installed (Debian: `apt-get install haproxy nginx
//! libnginx-mod-stream`); the report says when one is not. Traffic stays on 127.0.0.0/8; every
//! run is bounded by its duration and the bench tool's I/O timeouts.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use serde_json::{json, Value};
use support::*;

#[derive(Clone, Copy, PartialEq)]
enum Proxy {
    L4relay,
    /// Another build of l4relay, from `L4RELAY_ALT` (e.g. with aws-lc-rs as its provider).
    L4relayAlt,
    Haproxy,
    Nginx,
}

impl Proxy {
    fn label(self) -> &'static str {
        match self {
            Proxy::L4relay => "l4relay",
            Proxy::L4relayAlt => "l4relay (L4RELAY_ALT)",
            Proxy::Haproxy => "haproxy",
            Proxy::Nginx => "nginx stream",
        }
    }

    fn is_anchor(self) -> bool {
        matches!(self, Proxy::Haproxy | Proxy::Nginx)
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Key {
    Ecdsa,
    Rsa,
}

impl Key {
    fn name(self) -> &'static str {
        match self {
            Key::Ecdsa => "ecdsa",
            Key::Rsa => "rsa",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Key::Ecdsa => "ECDSA P-256",
            Key::Rsa => "RSA 2048",
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Version {
    Tls13,
    Tls12,
}

impl Version {
    /// As `--tls-version` and `VERSIONS` spell it.
    fn name(self) -> &'static str {
        match self {
            Version::Tls13 => "1.3",
            Version::Tls12 => "1.2",
        }
    }

    /// The one suite offered and accepted (IANA name, as the bench tool reads it).
    fn suite(self, key: Key) -> &'static str {
        match (self, key) {
            (Version::Tls13, _) => "TLS_AES_128_GCM_SHA256",
            (Version::Tls12, Key::Ecdsa) => "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            (Version::Tls12, Key::Rsa) => "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Scenario {
    /// TLS from the client, terminated; plain to the server.
    Terminate,
    /// Plain from the client; TLS originated to the server.
    Originate,
    /// Both: terminated, then re-encrypted.
    Both,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Terminate => "terminate",
            Scenario::Originate => "originate",
            Scenario::Both => "both",
        }
    }

    fn client_tls(self) -> bool {
        matches!(self, Scenario::Terminate | Scenario::Both)
    }

    fn server_tls(self) -> bool {
        matches!(self, Scenario::Originate | Scenario::Both)
    }
}

/// One measurement: what runs and how; every proxy runs it once per round.
#[derive(Clone, Copy, PartialEq)]
enum Load {
    /// `rate` mode: handshakes.
    Rate,
    /// `throughput`, one stream, "up" or "down".
    Bulk(&'static str),
}

#[derive(Clone, Copy, PartialEq)]
struct Case {
    load: Load,
    scenario: Scenario,
    key: Key,
    version: Version,
}

impl Case {
    fn label(self) -> String {
        match self.load {
            Load::Rate => format!(
                "{}, {}, TLS {}",
                self.scenario.name(),
                self.key.label(),
                self.version.name()
            ),
            Load::Bulk(direction) => format!("{} {direction}", self.scenario.name()),
        }
    }
}

/// The files of one key type.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// Certificate then key in one file, as HAProxy's `crt` reads them.
    combined: PathBuf,
}

/// A CA and a "bench.test" certificate signed by it, both of key type `kind`.
fn pki(kind: Key, dir: &Path) -> Result<Pki, String> {
    let key_pair = |name: &str| -> Result<KeyPair, String> {
        match kind {
            Key::Ecdsa => KeyPair::generate().map_err(|e| e.to_string()),
            Key::Rsa => {
                // ring (rcgen's backend) signs with RSA keys but cannot make them.
                let path = dir.join(format!("rsa-{name}.pem"));
                let out = Command::new("openssl")
                    .args(["genpkey", "-algorithm", "RSA", "-pkeyopt"])
                    .arg("rsa_keygen_bits:2048")
                    .arg("-out")
                    .arg(&path)
                    .output()
                    .map_err(|e| format!("cannot run openssl: {e}"))?;
                if !out.status.success() {
                    return Err(format!(
                        "openssl genpkey failed: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
                let pem = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
                KeyPair::from_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256)
                    .map_err(|e| e.to_string())
            }
        }
    };
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(
        DnType::CommonName,
        format!("l4relay bench CA ({})", kind.name()),
    );
    let ca = CertifiedIssuer::self_signed(params, key_pair("ca")?).map_err(|e| e.to_string())?;
    let key = key_pair("server")?;
    let cert = CertificateParams::new(vec!["bench.test".to_string()])
        .map_err(|e| e.to_string())?
        .signed_by(&key, &*ca)
        .map_err(|e| e.to_string())?;
    let n = kind.name();
    let pki = Pki {
        ca: dir.join(format!("{n}-ca.pem")),
        cert: dir.join(format!("{n}-cert.pem")),
        key: dir.join(format!("{n}-key.pem")),
        combined: dir.join(format!("{n}-combined.pem")),
    };
    let write = |path: &Path, text: &str| std::fs::write(path, text).map_err(|e| e.to_string());
    write(&pki.ca, &ca.pem())?;
    write(&pki.cert, &cert.pem())?;
    write(&pki.key, &key.serialize_pem())?;
    write(
        &pki.combined,
        &format!("{}{}", cert.pem(), key.serialize_pem()),
    )?;
    Ok(pki)
}

/// `L4RELAY_ALT`: another l4relay binary to run beside this build's, as a column of its own.
fn alt_relay() -> Option<PathBuf> {
    std::env::var_os("L4RELAY_ALT").map(PathBuf::from)
}

/// `proxy` in front of `upstream` for `scenario`, with `pki`'s files.
fn start_proxy(
    proxy: Proxy,
    scenario: Scenario,
    pki: &Pki,
    upstream: u16,
    dir: &Path,
) -> (Proc, u16) {
    let (t, o) = (scenario.client_tls(), scenario.server_tls());
    match proxy {
        Proxy::L4relay | Proxy::L4relayAlt => {
            let listener = if t {
                format!(
                    "  [listener.tls]\n  cert = \"{}\"\n  key = \"{}\"\n",
                    pki.cert.display(),
                    pki.key.display()
                )
            } else {
                String::new()
            };
            let pool = if o {
                format!(
                    "  [pool.tls]\n  sni = \"bench.test\"\n  ca_file = \"{}\"\n",
                    pki.ca.display()
                )
            } else {
                String::new()
            };
            // The daemon's defaults, written out because `l4relay_with` turns them off
            // otherwise: the access log's text lines to stdout (here /dev/null), the admin
            // listener with its metrics on loopback.
            let global = "log_format = \"text\"";
            let admin = format!("listen = \"127.0.0.1:{}\"", free_port());
            let binary = match proxy {
                Proxy::L4relayAlt => alt_relay().expect("L4RELAY_ALT is set"),
                _ => PathBuf::from(RELAY),
            };
            l4relay_binary_with(&binary, upstream, dir, global, &admin, &listener, &pool)
        }
        Proxy::Haproxy => {
            let bind = if t {
                format!(" ssl crt {}", pki.combined.display())
            } else {
                String::new()
            };
            let server = if o {
                format!(
                    " ssl verify required ca-file {} sni str(bench.test) verifyhost bench.test",
                    pki.ca.display()
                )
            } else {
                String::new()
            };
            haproxy_with(upstream, dir, &bind, &server, "")
        }
        Proxy::Nginx => {
            let mut extra = String::new();
            if t {
                extra.push_str(&format!(
                    "        ssl_certificate {};\n        ssl_certificate_key {};\n\
                     \x20       ssl_protocols TLSv1.2 TLSv1.3;\n",
                    pki.cert.display(),
                    pki.key.display()
                ));
            }
            if o {
                extra.push_str(&format!(
                    "        proxy_ssl on;\n        proxy_ssl_verify on;\n\
                     \x20       proxy_ssl_trusted_certificate {};\n\
                     \x20       proxy_ssl_name bench.test;\n        proxy_ssl_server_name on;\n\
                     \x20       proxy_ssl_session_reuse on;\n\
                     \x20       proxy_ssl_protocols TLSv1.2 TLSv1.3;\n",
                    pki.ca.display()
                ));
            }
            nginx_with(upstream, dir, if t { " ssl" } else { "" }, &extra)
        }
    }
}

/// One round's figures.
#[derive(Clone, Copy)]
struct Figures {
    /// conn/s or Gbit/s.
    value: f64,
    /// Proxy CPU µs per connection or CPU-s per GB.
    cpu: Option<f64>,
    cores: Option<f64>,
    /// Originating: the share of the upstream's handshakes that were resumed.
    resumed: Option<f64>,
}

fn run_once(proxy: Proxy, case: Case, seconds: u64, pki: &Pki, dir: &Path) -> Round<Figures> {
    let Case {
        load,
        scenario,
        key,
        version,
    } = case;
    let mode = match load {
        Load::Rate => "echo",
        Load::Bulk("up") => "sink",
        Load::Bulk(_) => "source",
    };
    let summary = dir.join(format!("serve-{}.json", free_port()));
    let (server, upstream_port) = if scenario.server_tls() {
        let extra = [
            "--tls-version",
            version.name(),
            "--tls-ciphers",
            version.suite(key),
            "--json",
            summary.to_str().ok_or("work directory is not UTF-8")?,
        ];
        upstream_tls_with(mode, &pki.cert, &pki.key, &extra)
    } else {
        upstream(mode)
    };
    let (relay, port) = start_proxy(proxy, scenario, pki, upstream_port, dir);
    let duration = format!("{seconds}s");
    let mut args: Vec<&str> = match load {
        Load::Rate => vec!["--concurrency", "32", "--request", "100", "--reply", "100"],
        Load::Bulk(direction) => vec!["--streams", "1", "--direction", direction],
    };
    args.extend(["--duration", &duration, "--warmup", "500ms"]);
    if scenario.client_tls() {
        args.extend([
            "--tls",
            "--sni",
            "bench.test",
            "--tls-version",
            version.name(),
            "--tls-ciphers",
            version.suite(key),
        ]);
    }
    let mode = if load == Load::Rate {
        "rate"
    } else {
        "throughput"
    };
    let j = bench_tool(mode, port, Some(relay.pid()), &args)?;
    let (value, cpu) = match load {
        Load::Rate => (
            j["result"]["conn_per_s"].as_f64(),
            j["proxy"]["cpu_us_per_conn"].as_f64(),
        ),
        Load::Bulk(_) => (
            j["result"]["total_gbit_per_s"].as_f64(),
            j["proxy"]["cpu_s_per_gb"].as_f64(),
        ),
    };
    let mut figures = Figures {
        value: value.ok_or("no rate or throughput in the report")?,
        cpu,
        cores: j["proxy"]["cores"].as_f64(),
        resumed: None,
    };
    drop(relay);
    if scenario.server_tls() {
        let s = serve_summary(server, &summary)?;
        let n = |k: &str| s[k].as_u64().unwrap_or(0);
        let refused = n("tls_failed_handshakes");
        if refused > 0 {
            return Err(format!(
                "the upstream refused {refused} handshakes (version or suite not pinned?)"
            ));
        }
        let (full, resumed) = (n("tls_full_handshakes"), n("tls_resumed_handshakes"));
        if load == Load::Rate && full + resumed > 0 {
            figures.resumed = Some(resumed as f64 / (full + resumed) as f64);
        }
    }
    Ok(figures)
}

type Samples = Rounds<Figures>;

/// l4relay's CPU over the best (lowest) anchor's: `0.72× (haproxy) ✅`, against the 0.8.
fn ratio(cases: &[Samples], proxies: &[Proxy]) -> (String, Option<f64>) {
    let cpu = |p: usize| cases[p].median(|f| f.cpu);
    let Some(ours) = proxies
        .iter()
        .position(|p| *p == Proxy::L4relay)
        .and_then(cpu)
    else {
        return ("–".into(), None);
    };
    let best = proxies
        .iter()
        .enumerate()
        .filter(|(_, p)| p.is_anchor())
        .filter_map(|(i, p)| Some((cpu(i)?, p.label())))
        .min_by(|a, b| a.0.total_cmp(&b.0));
    match best {
        Some((anchor, label)) if anchor > 0.0 => {
            let r = ours / anchor;
            let mark = if r <= 0.8 { "✅" } else { "❌" };
            (format!("{r:.2}× ({label}) {mark}"), Some(r))
        }
        _ => ("– (no anchor ran)".into(), None),
    }
}

/// A markdown table: a row per case, a column per proxy, `cell` for each; with `ratio`, a last
/// column comparing l4relay's CPU with the best anchor's.
fn table(
    cases: &[Case],
    results: &[Vec<Samples>],
    proxies: &[Proxy],
    cell: impl Fn(&Samples) -> String,
    with_ratio: bool,
) -> String {
    let mut md = format!(
        "| | {}{} |\n|---|{}{}\n",
        proxies
            .iter()
            .map(|p| p.label())
            .collect::<Vec<_>>()
            .join(" | "),
        if with_ratio {
            " | l4relay ÷ best anchor (≤ 0.8×)"
        } else {
            ""
        },
        "---:|".repeat(proxies.len()),
        if with_ratio { "---|" } else { "" }
    );
    for (c, case) in cases.iter().enumerate() {
        let cells: Vec<String> = results[c].iter().map(&cell).collect();
        let last = if with_ratio {
            format!(" | {}", ratio(&results[c], proxies).0)
        } else {
            String::new()
        };
        md.push_str(&format!(
            "| {} | {}{last} |\n",
            case.label(),
            cells.join(" | ")
        ));
    }
    md
}

/// Comma list from the environment, each item among `known`; all of `known` by default.
fn env_list<T: Copy>(var: &str, known: &[(&str, T)], default: &[&str]) -> Vec<T> {
    let raw = std::env::var(var).unwrap_or_else(|_| default.join(","));
    let mut out = Vec::new();
    for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match known.iter().find(|(n, _)| n.eq_ignore_ascii_case(item)) {
            Some((_, v)) => out.push(*v),
            None => panic!(
                "{var}: unknown {item:?} (known: {})",
                known.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
            ),
        }
    }
    out
}

fn main() {
    if !benchmarking() {
        return;
    }
    let rounds = env_or("ROUNDS", 3);
    let seconds = env_or("SECONDS", 3);
    let keys = env_list(
        "KEYS",
        &[("ecdsa", Key::Ecdsa), ("rsa", Key::Rsa)],
        &["ecdsa", "rsa"],
    );
    let versions = env_list(
        "VERSIONS",
        &[("1.3", Version::Tls13), ("1.2", Version::Tls12)],
        &["1.3", "1.2"],
    );
    #[derive(Clone, Copy, PartialEq)]
    enum Pick {
        Handshakes(Scenario),
        Bulk,
    }
    let picks = env_list(
        "SCENARIOS",
        &[
            ("terminate", Pick::Handshakes(Scenario::Terminate)),
            ("originate", Pick::Handshakes(Scenario::Originate)),
            ("both", Pick::Handshakes(Scenario::Both)),
            ("bulk", Pick::Bulk),
        ],
        &["terminate", "originate", "bulk"],
    );

    let mut rate_cases = Vec::new();
    for scenario in [Scenario::Terminate, Scenario::Originate, Scenario::Both] {
        if !picks.contains(&Pick::Handshakes(scenario)) {
            continue;
        }
        for key in &keys {
            for version in &versions {
                rate_cases.push(Case {
                    load: Load::Rate,
                    scenario,
                    key: *key,
                    version: *version,
                });
            }
        }
    }
    let mut bulk_cases = Vec::new();
    if picks.contains(&Pick::Bulk) {
        for scenario in [Scenario::Terminate, Scenario::Originate] {
            for direction in ["up", "down"] {
                bulk_cases.push(Case {
                    load: Load::Bulk(direction),
                    scenario,
                    key: Key::Ecdsa,
                    version: Version::Tls13,
                });
            }
        }
    }

    let mut notes = Vec::new();
    let mut proxies = vec![Proxy::L4relay];
    if let Some(alt) = alt_relay() {
        notes.push(format!("l4relay (L4RELAY_ALT) is {}", alt.display()));
        proxies.push(Proxy::L4relayAlt);
    }
    if haproxy_installed() {
        proxies.push(Proxy::Haproxy);
    } else {
        notes.push(
            "haproxy is not installed (apt-get install haproxy): compared without it".to_string(),
        );
    }
    match nginx_available() {
        Ok(()) => proxies.push(Proxy::Nginx),
        Err(why) => notes.push(format!("{why}: compared without nginx")),
    }
    for n in &notes {
        eprintln!("{n}");
    }

    let work = work_dir();
    let mut pkis = Vec::new();
    for key in [Key::Ecdsa, Key::Rsa] {
        let needed = rate_cases.iter().chain(&bulk_cases).any(|c| c.key == key);
        pkis.push(needed.then(|| {
            pki(key, &work).unwrap_or_else(|e| panic!("{} certificates: {e}", key.label()))
        }));
    }
    let pki_of = |key: Key| pkis[key as usize].as_ref().expect("generated above");

    let cases: Vec<Case> = rate_cases.iter().chain(&bulk_cases).copied().collect();
    let runs = cases.len() as u64 * proxies.len() as u64 * rounds;
    // Each run: the warmup, the measurement, and about 0.3 s to start and stop the three
    // processes (a smoke run of 24 took 39 s with SECONDS=1).
    let estimate = runs * (seconds * 1000 + 500 + 300) / 1000;
    eprintln!(
        "{} cases × {} proxies × {rounds} rounds = {runs} runs of {seconds} s: about {} min {} s",
        cases.len(),
        proxies.len(),
        estimate / 60,
        estimate % 60
    );

    let mut results = vec![vec![Samples::default(); proxies.len()]; cases.len()];
    for round in 1..=rounds {
        // Interleaved: every proxy once per case per round, so drift hits all alike.
        for (c, case) in cases.iter().enumerate() {
            for (p, proxy) in proxies.iter().enumerate() {
                eprint!(
                    "\rround {round}/{rounds}: {} / {} ...                    ",
                    case.label(),
                    proxy.label()
                );
                let r = run_once(*proxy, *case, seconds, pki_of(case.key), &work);
                if let Err(why) = &r {
                    eprintln!(
                        "\n{} / {}: round dropped: {why}",
                        case.label(),
                        proxy.label()
                    );
                }
                results[c][p].push(r);
            }
        }
    }
    eprintln!();

    let (rate_results, bulk_results) = results.split_at(rate_cases.len());
    let value =
        |digits: usize| move |s: &Samples| s.show(|f| Some(f.value), |v| format!("{v:.digits$}"));
    let cpu = |s: &Samples| s.show(|f| f.cpu, fmt);
    let cores = |s: &Samples| s.show(|f| f.cores, |v| format!("{v:.2}"));
    let resumed = |s: &Samples| s.show(|f| f.resumed, |v| format!("{:.1} %", v * 100.0));

    let mut md = format!(
        "TLS on one core, l4relay beside HAProxy and nginx: proxy on CPU 0 (one worker or \
         thread), load (client and upstream server) on CPU 1, loopback; median of the good \
         rounds among {rounds} interleaved runs of {seconds} s (min–max); a round whose load \
         tool failed or counted errors is dropped, and a cell that lost one is marked `*` with \
         the reason (`—` when none counted). Each proxy in its default configuration: l4relay's \
         access log on (text to stdout, here /dev/null), the anchors log nothing. Same \
         certificates everywhere; one version and one cipher suite per row, pinned by the \
         bench's client (terminating) and server (originating): TLS 1.3 TLS_AES_128_GCM_SHA256, \
         TLS 1.2 ECDHE-ECDSA-AES128-GCM-SHA256 or ECDHE-RSA-AES128-GCM-SHA256. l4relay uses \
         rustls on ring; HAProxy and nginx OpenSSL.\n\n"
    );
    for n in &notes {
        md.push_str(&format!("Note: {n}\n\n"));
    }
    if !rate_cases.is_empty() {
        md.push_str(
            "Handshakes per second (connect, 100 B each way, close; 32 workers). Terminating, \
             every connection is a full handshake (the client resumes nothing); originating, \
             each proxy resumes its sessions to the upstream as it does by default:\n\n",
        );
        md.push_str(&table(&rate_cases, rate_results, &proxies, value(0), false));
        md.push_str("\nProxy CPU µs per connection (per handshake):\n\n");
        md.push_str(&table(&rate_cases, rate_results, &proxies, cpu, true));
        md.push_str("\nProxy cores busy (1.00: the proxy's core was the limit):\n\n");
        md.push_str(&table(&rate_cases, rate_results, &proxies, cores, false));
        let upstream: Vec<usize> = rate_cases
            .iter()
            .enumerate()
            .filter(|(_, c)| c.scenario.server_tls())
            .map(|(i, _)| i)
            .collect();
        if !upstream.is_empty() {
            md.push_str(
                "\nUpstream handshakes resumed, as counted by the upstream server over the \
                 whole run (warmup included):\n\n",
            );
            let cs: Vec<Case> = upstream.iter().map(|i| rate_cases[*i]).collect();
            let rs: Vec<Vec<Samples>> = upstream.iter().map(|i| rate_results[*i].clone()).collect();
            md.push_str(&table(&cs, &rs, &proxies, resumed, false));
        }
    }
    if !bulk_cases.is_empty() {
        md.push_str(
            "\nBulk through TLS, one stream, Gbit/s; ECDSA P-256 and TLS 1.3 only (the bulk \
             cipher, AES-128-GCM, does not depend on the key):\n\n",
        );
        md.push_str(&table(&bulk_cases, bulk_results, &proxies, value(2), false));
        md.push_str("\nBulk through TLS: proxy CPU-seconds per GB:\n\n");
        md.push_str(&table(&bulk_cases, bulk_results, &proxies, cpu, true));
    }
    println!("{md}");

    let cells: Vec<Value> = cases
        .iter()
        .zip(&results)
        .map(|(case, per)| {
            let (load, direction) = match case.load {
                Load::Rate => ("rate", None),
                Load::Bulk(d) => ("bulk", Some(d)),
            };
            let (_, r) = ratio(per, &proxies);
            json!({
                "case": case.label(),
                "load": load,
                "direction": direction,
                "scenario": case.scenario.name(),
                "key": case.key.name(),
                "tls_version": case.version.name(),
                "cipher_suite": case.version.suite(case.key),
                "l4relay_cpu_over_best_anchor": r,
                "results": proxies.iter().zip(per).map(|(p, s)| json!({
                    "proxy": p.label(),
                    "value": s.json(|f| Some(f.value)),
                    "value_unit": if load == "rate" { "conn/s" } else { "Gbit/s" },
                    "proxy_cpu": s.json(|f| f.cpu),
                    "proxy_cpu_unit": if load == "rate" { "µs/conn" } else { "s/GB" },
                    "proxy_cores": s.json(|f| f.cores),
                    "upstream_resumed_share": s.json(|f| f.resumed),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let report = json!({
        "rounds": rounds,
        "seconds": seconds,
        "proxies": proxies.iter().map(|p| p.label()).collect::<Vec<_>>(),
        "notes": notes,
        "cases": cells,
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
