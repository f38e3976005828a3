//! End-to-end tests of the `l4relay-bench` binary: start `serve` on a free
//! loopback port, run every client mode against it for about a second, and
//! check the JSON each run writes. Every wait has a deadline and every child
//! process is killed on drop, so a broken build fails instead of hanging.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_l4relay-bench");
/// Generous: the test suite shares two cores with parallel tests and builds.
const CLIENT_DEADLINE: Duration = Duration::from_secs(60);

/// A `serve` child on 127.0.0.1 with a kernel-chosen port.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(mode: &str) -> Server {
        Server::start_with(mode, &[])
    }

    /// `serve --mode MODE EXTRA...`.
    fn start_with(mode: &str, extra: &[&str]) -> Server {
        // --duration bounds the server even if the test process dies without dropping it.
        let mut child = Command::new(BIN)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--mode",
                mode,
                "--duration",
                "300s",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!("serve did not announce its address");
            }
        };
        // "listening on 127.0.0.1:PORT mode MODE"
        let addr = line
            .split_whitespace()
            .nth(2)
            .unwrap_or_default()
            .to_string();
        assert!(
            addr.starts_with("127.0.0.1:"),
            "unexpected serve banner {line:?}"
        );
        Server { child, addr }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn json_path() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "l4relay-bench-test-{}-{}.json",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ))
}

/// Runs a client mode with `--json`, waits for it under a deadline, and
/// returns the parsed document.
fn run_client(args: &[&str]) -> Value {
    let path = json_path();
    let mut child = Command::new(BIN)
        .args(args)
        .args(["--quiet", "--json", path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn client");
    let deadline = Instant::now() + CLIENT_DEADLINE;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?} did not finish within {CLIENT_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
    assert!(status.success(), "{args:?} failed: {status}\n{stderr}");
    let text = std::fs::read_to_string(&path).expect("JSON output written");
    let _ = std::fs::remove_file(&path);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON ({e}):\n{text}"))
}

fn u(v: &Value, ptr: &str) -> u64 {
    v.pointer(ptr)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{ptr} missing or not an integer in {v:#}"))
}

fn f(v: &Value, ptr: &str) -> f64 {
    v.pointer(ptr)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{ptr} missing or not a number in {v:#}"))
}

fn assert_clean(v: &Value, mode: &str) {
    assert_eq!(v["tool"], "l4relay-bench");
    assert_eq!(v["mode"], mode);
    assert_eq!(u(v, "/errors/total"), 0, "errors in {v:#}");
    assert_eq!(v["interrupted"], false);
    assert!(f(v, "/measured_s") > 0.5, "{v:#}");
}

const SHORT: [&str; 4] = ["--duration", "1s", "--warmup", "200ms"];

#[test]
fn throughput_all_directions() {
    let sink = Server::start("sink");
    let source = Server::start("source");
    let echo = Server::start("echo");

    let up = run_client(
        &[
            &[
                "throughput",
                "--target",
                &sink.addr,
                "--streams",
                "2",
                "--pid",
                &sink.pid(),
            ][..],
            &SHORT,
        ]
        .concat(),
    );
    assert_clean(&up, "throughput");
    assert!(u(&up, "/result/up/bytes") > 0);
    assert!(f(&up, "/result/up/gbit_per_s") > 0.0);
    assert!(up["result"]["down"].is_null());
    assert_eq!(u(&up, "/result/streams_connected"), 2);
    assert!(f(&up, "/proxy/cpu_s") >= 0.0);
    assert!(up.pointer("/proxy/cpu_s_per_gb").is_some(), "{up:#}");

    let down = run_client(
        &[
            &[
                "throughput",
                "--target",
                &source.addr,
                "--direction",
                "down",
            ][..],
            &SHORT,
        ]
        .concat(),
    );
    assert_clean(&down, "throughput");
    assert!(u(&down, "/result/down/bytes") > 0);
    assert!(down["result"]["up"].is_null());

    let both = run_client(
        &[
            &[
                "throughput",
                "--target",
                &echo.addr,
                "--direction",
                "both",
                "--streams",
                "2",
                "--proxy-v2",
            ][..],
            &SHORT,
        ]
        .concat(),
    );
    assert_clean(&both, "throughput");
    assert!(u(&both, "/result/up/bytes") > 0);
    assert!(u(&both, "/result/down/bytes") > 0);
    assert_eq!(both["proxy_v2"], true);
}

#[test]
fn rate_against_echo() {
    let echo = Server::start("echo");
    let v = run_client(
        &[
            &[
                "rate",
                "--target",
                &echo.addr,
                "--concurrency",
                "4",
                "--pid",
                &echo.pid(),
            ][..],
            &SHORT,
        ]
        .concat(),
    );
    assert_clean(&v, "rate");
    assert!(u(&v, "/result/connections") > 0);
    assert!(f(&v, "/result/conn_per_s") > 0.0);
    assert_eq!(
        u(&v, "/result/connections"),
        u(&v, "/result/connect_latency/count")
    );
    assert!(f(&v, "/result/transaction_latency/p50_us") >= f(&v, "/result/connect_latency/p50_us"));
    assert!(v.pointer("/proxy/cpu_us_per_conn").is_some(), "{v:#}");

    // Reply size independent of request size, with PROXY v2 + VPC endpoint TLV stripped by serve.
    let v = run_client(
        &[
            &[
                "rate",
                "--target",
                &echo.addr,
                "--concurrency",
                "2",
                "--request",
                "12",
                "--reply",
                "64KiB",
                "--proxy-v2",
                "--vpce",
                "vpce-0123456789abcdef0",
            ][..],
            &SHORT,
        ]
        .concat(),
    );
    assert_clean(&v, "rate");
    assert!(u(&v, "/result/connections") > 0);
    assert_eq!(v["vpce"], "vpce-0123456789abcdef0");
}

#[test]
fn latency_open_and_closed_loop() {
    let echo = Server::start("echo");
    let v = run_client(
        &[
            &[
                "latency",
                "--target",
                &echo.addr,
                "--connections",
                "4",
                "--rate",
                "1000",
                "--pid",
                &echo.pid(),
            ][..],
            &SHORT,
        ]
        .concat(),
    );
    assert_clean(&v, "latency");
    assert_eq!(v["result"]["open_loop"], true);
    let n = u(&v, "/result/requests");
    // 1000/s for 1 s: the schedule fixes the count, give or take the window edges.
    assert!((900..=1100).contains(&n), "requests {n}");
    assert_eq!(u(&v, "/result/lost"), 0);
    let p50 = f(&v, "/result/latency/p50_us");
    let p99 = f(&v, "/result/latency/p99_us");
    let max = f(&v, "/result/latency/max_us");
    assert!(p50 > 0.0 && p50 <= p99 && p99 <= max, "{v:#}");
    assert!(v.pointer("/proxy/cpu_us_per_request").is_some());

    let v = run_client(
        &[
            &[
                "latency",
                "--target",
                &echo.addr,
                "--connections",
                "2",
                "--rate",
                "0",
            ][..],
            &SHORT,
        ]
        .concat(),
    );
    assert_clean(&v, "latency");
    assert_eq!(v["result"]["open_loop"], false);
    assert!(u(&v, "/result/requests") > 100);
    assert!(f(&v, "/result/req_per_s") > 100.0);
}

#[test]
fn idle_counts_connections_and_fds() {
    let echo = Server::start("echo");
    let v = run_client(&[
        "idle",
        "--target",
        &echo.addr,
        "--count",
        "50",
        "--burst",
        "4KiB",
        "--hold",
        "300ms",
        "--settle",
        "100ms",
        "--pid",
        &echo.pid(),
        "--sources",
        "127.0.0.1-127.0.0.2",
    ]);
    assert_eq!(v["mode"], "idle");
    assert_eq!(u(&v, "/errors/total"), 0, "{v:#}");
    assert_eq!(u(&v, "/result/opened"), 50);
    assert_eq!(u(&v, "/result/bursts_ok"), 50);
    assert_eq!(u(&v, "/result/alive_after_hold"), 50);
    let stages: Vec<&str> = v["result"]["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(
        stages,
        ["before", "after_open", "after_burst", "end_of_hold"]
    );
    // serve holds exactly one fd per accepted connection.
    let fds = f(&v, "/result/per_connection/fds_after_open");
    assert!((fds - 1.0).abs() < 0.05, "fds per connection {fds}");
    assert!(f(&v, "/result/per_connection/rss_bytes_after_burst") > 0.0);
    assert_eq!(v["result"]["sources"].as_array().unwrap().len(), 2);
}

#[test]
fn dead_target_is_counted_not_fatal() {
    // Bind then drop to get a port with (almost certainly) no listener.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let target = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let v = run_client(&[
        "rate",
        "--target",
        &target,
        "--concurrency",
        "2",
        "--duration",
        "500ms",
        "--warmup",
        "0s",
    ]);
    assert!(u(&v, "/errors/refused") > 0, "{v:#}");
    assert_eq!(u(&v, "/result/connections"), 0);
    let v = run_client(&[
        "throughput",
        "--target",
        &target,
        "--duration",
        "500ms",
        "--warmup",
        "0s",
    ]);
    assert_eq!(u(&v, "/errors/refused"), 1);
    let v = run_client(&[
        "latency",
        "--target",
        &target,
        "--connections",
        "2",
        "--duration",
        "500ms",
        "--warmup",
        "0s",
    ]);
    assert!(u(&v, "/errors/refused") >= 2);
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn echo_preserves_half_close() {
    let echo = Server::start("echo");
    let mut s = TcpStream::connect(&echo.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8 + 1).collect();
    // Write from another thread: the echo may block until we read.
    let mut w = s.try_clone().unwrap();
    let sent = payload.clone();
    let writer = std::thread::spawn(move || {
        w.write_all(&sent).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    s.read_to_end(&mut back)
        .expect("echo finishes and closes after our FIN");
    writer.join().unwrap();
    assert_eq!(back.len(), payload.len());
    assert!(back == payload, "echoed bytes differ");
}

/// A TLS echo `serve` pinned to TLS 1.2 and one suite counts each handshake, full or resumed, and
/// reports them in its exit summary (`--json`), which the TLS bench reads for the share of
/// sessions a relay resumes towards its upstream.
#[test]
fn serve_counts_full_and_resumed_handshakes() {
    use std::sync::Arc;

    let dir = json_path().with_extension("d");
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["bench.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let summary = dir.join("summary.json");
    let mut echo = Server::start_with(
        "echo",
        &[
            "--tls-cert",
            cert_path.to_str().unwrap(),
            "--tls-key",
            key_path.to_str().unwrap(),
            "--tls-version",
            "1.2",
            "--tls-ciphers",
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            "--json",
            summary.to_str().unwrap(),
        ],
    );

    // The bench's own client resumes nothing: full handshakes, as many as it connected.
    let v = run_client(&[
        "rate",
        "--target",
        &echo.addr,
        "--tls",
        "--tls-version",
        "1.2",
        "--concurrency",
        "2",
        "--duration",
        "600ms",
        "--warmup",
        "0s",
    ]);
    assert_clean(&v, "rate");
    let bench_connections = u(&v, "/result/connections");
    assert!(bench_connections > 0);

    // A client that keeps its session: the first connection is full, the others resumed.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let config = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    for _ in 0..3 {
        let name = "bench.test".try_into().unwrap();
        let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
        let tcp = TcpStream::connect(&echo.addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(b"ping").unwrap();
        let mut back = [0u8; 4];
        tls.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"ping");
        assert_eq!(
            tls.conn.negotiated_cipher_suite().unwrap().suite(),
            rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        );
        tls.conn.send_close_notify();
        let _ = tls.flush();
    }

    // SIGTERM: serve ends its loop and writes the summary.
    let status = Command::new("kill")
        .args(["-TERM", &echo.pid()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    while echo.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "serve did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = std::fs::read_to_string(&summary).expect("serve wrote its summary");
    let _ = std::fs::remove_dir_all(&dir);
    let s: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(s["tls"], true);
    // The bench client may leave a handshake unfinished when its run ends.
    let full = u(&s, "/tls_full_handshakes");
    assert!(
        full > bench_connections && full <= u(&s, "/connections"),
        "{s:#}"
    );
    assert_eq!(u(&s, "/tls_resumed_handshakes"), 2, "{s:#}");
    assert_eq!(u(&s, "/tls_failed_handshakes"), 0, "{s:#}");
}

#[test]
fn rejects_bad_arguments() {
    for args in [
        &["rate", "--target", "127.0.0.1:1", "--vpce", "vpce-1"][..],
        &["rate", "--target", "127.0.0.1:1", "--request", "4"][..],
        &[
            "throughput",
            "--target",
            "127.0.0.1:1",
            "--duration",
            "soon",
        ][..],
        &["latency", "--target", "not-an-address"][..],
    ] {
        let out = Command::new(BIN)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(!out.success(), "{args:?} should be rejected");
    }
}
