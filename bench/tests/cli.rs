//! The bench tool's command line against the daemon's config: a size, a duration or a VPC
//! endpoint ID is accepted or refused, with the same message, by both. Also a short throughput
//! run with a PROXY v2 header against the tool's own `serve`, and `serve` stripping the headers
//! the library encodes.
//!
//! Running these (`cargo test` at the workspace root) is also what builds
//! target/debug/l4relay-bench next to target/debug/l4relay for the daemon's end-to-end tests.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use l4relay::config::{parse_duration, parse_size, Config};
use l4relay::protocol::proxy_protocol;
use l4relay::protocol::vpce::VpceId;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_l4relay-bench");
/// Generous: the suite shares two cores with parallel tests and builds.
const DEADLINE: Duration = Duration::from_secs(60);

/// Runs the tool to completion under [`DEADLINE`].
fn run(args: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn l4relay-bench");
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("{args:?} did not finish within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every error of a minimal config with `global` added to [global] and `listener` to its
/// listener, one a line; empty when the config is valid.
fn config_errors(global: &str, listener: &str) -> String {
    let text = format!(
        "[global]\n{global}\n\n\
         [[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:8443\"\npool = \"p\"\n\
         proxy_protocol = \"v2\"\n{listener}\n\n\
         [[pool]]\nname = \"p\"\n  [[pool.server]]\n  address = \"127.0.0.1:9000\"\n"
    );
    match Config::parse(Path::new("t.toml"), &text) {
        Ok(_) => String::new(),
        Err(errors) => errors.iter().map(|e| format!("{e}\n")).collect(),
    }
}

#[test]
fn sizes_and_durations_read_as_in_a_config_file() {
    // Accepted by both: serve exits by itself after --duration.
    let out = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--chunk",
        "1MiB",
        "--duration",
        "100ms",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let errors = config_errors("buffer_size = \"1MiB\"", "idle_timeout = \"100ms\"");
    assert_eq!(errors, "");

    // Refused by both, with the library's message.
    for (flag, value, key, message) in [
        (
            "--chunk",
            "1MB",
            "buffer_size",
            parse_size("1MB").unwrap_err(),
        ),
        (
            "--chunk",
            "1.5MiB",
            "buffer_size",
            parse_size("1.5MiB").unwrap_err(),
        ),
        (
            "--duration",
            "10",
            "idle_timeout",
            parse_duration("10").unwrap_err(),
        ),
        (
            "--duration",
            "1.5s",
            "idle_timeout",
            parse_duration("1.5s").unwrap_err(),
        ),
    ] {
        let out = run(&["serve", "--listen", "127.0.0.1:0", flag, value]);
        assert_eq!(out.status.code(), Some(2), "{flag} {value} accepted");
        assert!(stderr(&out).contains(&message), "{}", stderr(&out));
        let line = format!("{key} = \"{value}\"");
        let errors = if key == "buffer_size" {
            config_errors(&line, "")
        } else {
            config_errors("", &line)
        };
        assert!(errors.contains(&message), "config: {errors}");
    }
}

#[test]
fn vpce_ids_read_as_in_allow_vpce() {
    let id = "vpce-0123456789abcdef0";
    // Accepted: a dead target is counted in the report, not fatal.
    let out = run(&[
        "rate",
        "--target",
        "127.0.0.1:1",
        "--duration",
        "10ms",
        "--warmup",
        "0s",
        "--quiet",
        "--proxy-v2",
        "--vpce",
        id,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(config_errors("", &format!("allow_vpce = [\"{id}\"]")), "");

    let message = VpceId::parse("vpce-xyz").unwrap_err();
    let out = run(&[
        "rate",
        "--target",
        "127.0.0.1:1",
        "--proxy-v2",
        "--vpce",
        "vpce-xyz",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains(&message), "{}", stderr(&out));
    let errors = config_errors("", "allow_vpce = [\"vpce-xyz\"]");
    assert!(errors.contains(&message), "config: {errors}");
}

/// An echo `serve` on a kernel-chosen loopback port, killed on drop.
struct Serve {
    child: Child,
    addr: SocketAddr,
}

impl Serve {
    fn echo() -> Serve {
        // --duration bounds it even if the test process dies without dropping it.
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--mode", "echo"])
            .args(["--duration", "120s"])
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
        let Ok(line) = rx.recv_timeout(Duration::from_secs(20)) else {
            let _ = child.kill();
            panic!("serve did not announce its address");
        };
        // "listening on 127.0.0.1:PORT mode echo"
        let addr = line.split_whitespace().nth(2).unwrap_or_default().parse();
        let addr = addr.unwrap_or_else(|_| panic!("unexpected serve banner {line:?}"));
        Serve { child, addr }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn short_throughput_run_with_proxy_v2() {
    let serve = Serve::echo();
    let target = serve.addr.to_string();
    let out = run(&[
        "throughput",
        "--target",
        &target,
        "--direction",
        "both",
        "--duration",
        "500ms",
        "--warmup",
        "100ms",
        "--chunk",
        "64KiB",
        "--proxy-v2",
        "--vpce",
        "vpce-0123456789ABCDEF0",
        "--quiet",
        "--json",
        "-",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v["mode"], "throughput");
    assert_eq!(v["errors"]["total"], 0, "{v:#}");
    assert_eq!(v["proxy_v2"], true);
    // Kept as VpceId keeps it: lowercase, as a config's allow_vpce and the access log have it.
    assert_eq!(v["vpce"], "vpce-0123456789abcdef0");
    assert_eq!(v["result"]["streams_connected"], 1, "{v:#}");
    // Echoed bytes: they went up through the header `serve` stripped. (A window this short on a
    // loaded machine may see no write of the up side complete, so up is not checked.)
    let down = v["result"]["down"]["bytes"].as_u64().unwrap_or(0);
    assert!(down > 0, "{v:#}");
}

#[test]
fn serve_strips_the_headers_the_library_encodes() {
    let serve = Serve::echo();
    let client: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let vpce = VpceId::parse("vpce-0123456789abcdef0").unwrap();
    let mut v1 = Vec::new();
    proxy_protocol::encode_v1(client, serve.addr, &mut v1);
    let mut v2 = Vec::new();
    proxy_protocol::encode_v2(client, serve.addr, Some(&vpce), &mut v2);
    let mut local = Vec::new();
    proxy_protocol::encode_v2_local(&mut local);
    for header in [v1, v2, local, Vec::new()] {
        let mut s = TcpStream::connect(serve.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&[&header[..], b"hello"].concat()).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).unwrap();
        assert_eq!(back, b"hello", "after a header of {} bytes", header.len());
    }
}
