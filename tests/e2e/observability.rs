//! Metrics, readiness and the access log, scraped from the running binary.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// GET `path` from `addr`, optionally after `prefix` bytes (a PROXY header): (status, body).
async fn http_get(addr: SocketAddr, path: &str, prefix: &[u8]) -> (u16, String) {
    let mut request = prefix.to_vec();
    request.extend_from_slice(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes());
    raw_request(addr, &request).await
}

/// Parses Prometheus text into "name{labels}" → value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn sample(all: &HashMap<String, f64>, key: &str) -> f64 {
    *all.get(key).unwrap_or_else(|| panic!("no sample {key}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_equal_exactly_what_happened() {
    let (server, _) = echo_server().await;
    let dead = unused_addr();
    let (relay, [listen_a, listen_b, admin]) = start_relay(|[listen_a, listen_b, admin]| {
        format!(
        "[admin]\nlisten = \"{admin}\"\n\n\
         [[listener]]\nname = \"a\"\nlisten = \"{listen_a}\"\npool = \"live\"\ndeny = [\"127.0.0.2/32\"]\n\n\
         [[listener]]\nname = \"b\"\nlisten = \"{listen_b}\"\npool = \"dead\"\n\n\
         [[pool]]\nname = \"live\"\n  [[pool.server]]\n  name = \"echo\"\n  address = \"{server}\"\n\
         [[pool]]\nname = \"dead\"\nretries = 0\n  [[pool.server]]\n  name = \"nothing\"\n  address = \"{dead}\"\n"
    )
    });

    const N: u64 = 20;
    const M: u64 = 100_000;
    for i in 0..N {
        let mut stream = TcpStream::connect(listen_a).await.unwrap();
        let sent = send_payload(&mut stream, i, M).await;
        stream.shutdown().await.unwrap();
        let (n, digest) = receive_all(&mut stream).await.unwrap();
        assert_eq!((n, digest), (M, sent));
    }
    const K: u64 = 5;
    for _ in 0..K {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        // The reset can arrive before connect() returns: that is a refusal too.
        if let Ok(mut stream) = socket.connect(listen_a).await {
            let mut buf = [0u8; 1];
            assert!(
                !matches!(stream.read(&mut buf).await, Ok(1)),
                "denied client got data"
            );
        }
    }
    if let Ok(mut failed) = TcpStream::connect(listen_b).await {
        let mut buf = [0u8; 1];
        assert!(!matches!(failed.read(&mut buf).await, Ok(1)));
    }
    relay
        .wait_for_log_lines((N + K + 1) as usize, Duration::from_secs(5))
        .await;

    let (status, text) = http_get(admin, "/metrics", b"").await;
    assert_eq!(status, 200);
    let m = samples(&text);
    assert_eq!(
        sample(
            &m,
            r#"l4relay_connections_total{listener="a",outcome="relayed"}"#
        ),
        N as f64
    );
    assert_eq!(
        sample(
            &m,
            r#"l4relay_connections_total{listener="a",outcome="refused_rule"}"#
        ),
        K as f64
    );
    assert_eq!(
        sample(
            &m,
            r#"l4relay_connections_total{listener="b",outcome="connect_failed"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            r#"l4relay_connections_total{listener="b",outcome="relayed"}"#
        ),
        0.0
    );
    assert_eq!(
        sample(
            &m,
            r#"l4relay_bytes_total{listener="a",direction="client_to_server"}"#
        ),
        (N * M) as f64
    );
    assert_eq!(
        sample(
            &m,
            r#"l4relay_bytes_total{listener="a",direction="server_to_client"}"#
        ),
        (N * M) as f64
    );
    assert_eq!(
        sample(
            &m,
            r#"l4relay_upstream_connections_total{pool="live",server="echo",result="ok"}"#
        ),
        N as f64
    );
    assert_eq!(
        sample(
            &m,
            r#"l4relay_upstream_connections_total{pool="dead",server="nothing",result="refused"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(&m, r#"l4relay_connections_active{listener="a"}"#),
        0.0
    );
    assert_eq!(
        sample(
            &m,
            r#"l4relay_session_duration_seconds_count{listener="a"}"#
        ),
        N as f64
    );
    assert_eq!(
        sample(&m, r#"l4relay_upstream_connect_seconds_count{pool="live"}"#),
        N as f64
    );
    assert_eq!(
        sample(&m, r#"l4relay_server_up{pool="live",server="echo"}"#),
        1.0
    );
    assert_eq!(
        sample(&m, r#"l4relay_refusals_total{listener="a",reason="deny"}"#),
        K as f64
    );
    assert_eq!(
        sample(
            &m,
            r#"l4relay_refusals_total{listener="b",reason="connect_failed"}"#
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histograms_have_the_documented_buckets() {
    let (server, _) = echo_server().await;
    let (relay, [listen, admin]) = start_relay(|[listen, admin]| {
        config(listen, &[server], "", "")
            .replace("listen = \"off\"", &format!("listen = \"{admin}\""))
    });
    let mut stream = TcpStream::connect(listen).await.unwrap();
    stream.write_all(b"x").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
    relay.wait_for_log_lines(1, Duration::from_secs(5)).await;
    let (_, text) = http_get(admin, "/metrics", b"").await;
    let buckets = |metric: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{metric}_bucket{{")))
            .filter_map(|l| {
                l.split("le=\"")
                    .nth(1)?
                    .split('"')
                    .next()
                    .map(str::to_string)
            })
            .collect()
    };
    assert_eq!(
        buckets("l4relay_upstream_connect_seconds"),
        [
            "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
            "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf"
        ]
    );
    let duration = buckets("l4relay_session_duration_seconds");
    assert_eq!(duration.first().map(String::as_str), Some("0.001"));
    assert!(duration.contains(&"3600".to_string()), "{duration:?}");
    let bytes = buckets("l4relay_session_bytes");
    assert_eq!(bytes.first().map(String::as_str), Some("100"));
    assert!(bytes.contains(&"1073741824".to_string()), "{bytes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_stream_shows_in_metrics_before_it_ends() {
    let (server, _) = echo_server().await;
    let (_relay, [listen, admin]) = start_relay(|[listen, admin]| {
        // idle_timeout 8s: the session's tick (1/8 of it) publishes every second.
        config(listen, &[server], "idle_timeout = \"8s\"", "")
            .replace("listen = \"off\"", &format!("listen = \"{admin}\""))
    });
    let mut stream = TcpStream::connect(listen).await.unwrap();
    let chunk = vec![1u8; 1 << 20];
    stream.write_all(&chunk).await.unwrap();
    let mut echoed = vec![0u8; 1 << 20];
    stream.read_exact(&mut echoed).await.unwrap();

    let key = r#"l4relay_bytes_total{listener="test",direction="client_to_server"}"#;
    let mut seen = 0.0;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        let (_, text) = http_get(admin, "/metrics", b"").await;
        seen = samples(&text).get(key).copied().unwrap_or(0.0);
        if seen >= (1 << 20) as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, (1 << 20) as f64, "open stream's bytes not published");
    let (_, status) = http_get(admin, "/status", b"").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["connections"]["active"], 1, "{status}");
    drop(stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_behind_a_proxy_header_on_the_health_listener() {
    let (server, _) = echo_server().await;
    let (_relay, [_, admin, health]) = start_relay(|[listen, admin, health]| {
        config(listen, &[server], "", "").replace(
            "listen = \"off\"",
            &format!("listen = \"{admin}\"\nhealth_listen = \"{health}\""),
        )
    });

    // The NLB's health check on a proxy-protocol target group: v2 LOCAL, then HTTP.
    let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    assert_eq!(
        http_get(health, "/readyz", &local).await,
        (200, "ready\n".to_string())
    );
    // v2 PROXY with addresses.
    let mut proxy = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    proxy.extend_from_slice(&[
        0x21, 0x11, 0x00, 0x0c, 10, 0, 0, 1, 10, 0, 0, 2, 0x30, 0x39, 0x00, 0x50,
    ]);
    assert_eq!(http_get(health, "/readyz", &proxy).await.0, 200);
    assert_eq!(
        http_get(
            health,
            "/healthz",
            b"PROXY TCP4 10.0.0.1 10.0.0.2 12345 80\r\n"
        )
        .await
        .0,
        200
    );
    // The health listener serves nothing else; the admin listener serves everything.
    assert_eq!(http_get(health, "/metrics", b"").await.0, 404);
    assert_eq!(http_get(admin, "/readyz", b"").await.0, 200);
    assert_eq!(http_get(admin, "/nothing", b"").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_access_log_has_one_object_per_connection() {
    let (server, _) = echo_server().await;
    let (relay, [listen]) = start_relay(|[listen]| {
        config(listen, &[server], "", "")
            .replace("[admin]", "[global]\nlog_format = \"json\"\n\n[admin]")
    });
    for i in 0..3u64 {
        let mut stream = TcpStream::connect(listen).await.unwrap();
        send_payload(&mut stream, i, 1000 * (i + 1)).await;
        stream.shutdown().await.unwrap();
        receive_all(&mut stream).await.unwrap();
    }
    let lines = relay.wait_for_log_lines(3, Duration::from_secs(5)).await;
    let mut objects: Vec<serde_json::Value> = lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    // Two workers may log in either order.
    objects.sort_by_key(|v| v["bytes_c2s"].as_u64());
    for (i, v) in objects.iter().enumerate() {
        assert_eq!(v["listener"], "test");
        assert_eq!(v["pool"], "p");
        assert_eq!(v["server"], "s0");
        assert_eq!(v["server_addr"], server.to_string());
        assert_eq!(v["bytes_c2s"], 1000 * (i as u64 + 1));
        assert_eq!(v["bytes_s2c"], 1000 * (i as u64 + 1));
        assert_eq!(v["end"], "client_closed");
        assert!(v["client"].as_str().unwrap().starts_with("127.0.0.1:"));
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
        assert!(v["connect_ms"].as_f64().unwrap() >= 0.0);
        assert!(v["duration_ms"].as_f64().unwrap() >= 0.0);
        assert!(v["vpce"].is_null() && v["sni"].is_null() && v["detail"].is_null());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs promtool (apt-get install prometheus): run with --ignored"]
async fn promtool_accepts_the_exposition() {
    require_promtool();
    let (server, _) = echo_server().await;
    let (relay, [listen, admin]) = start_relay(|[listen, admin]| {
        config(
            listen,
            &[server],
            "proxy_protocol = \"any\"\nallow_vpce = [\"vpce-0123456789abcdef0\"]",
            "",
        )
        .replace("listen = \"off\"", &format!("listen = \"{admin}\""))
    });
    let mut stream = TcpStream::connect(listen).await.unwrap();
    stream
        .write_all(b"PROXY TCP4 10.0.0.1 10.0.0.2 1000 443\r\nhello")
        .await
        .unwrap();
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest).await;
    relay.wait_for_log_lines(1, Duration::from_secs(5)).await;
    let (_, text) = http_get(admin, "/metrics", b"").await;
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool rejected the exposition:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
