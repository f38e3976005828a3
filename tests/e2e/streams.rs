//! Long streams in the operator's view, against the real relay: the live-connection table
//! (`GET /connections`, its filters, `POST /connections/{id}/close`), the timeouts shaped for
//! streams (first byte, idle per side, maximum lifetime), the access-log lines written while a
//! connection is open (`log_open`, `log_progress`), and the first-byte and silence histograms.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::*;
use l4relay::protocol::proxy_protocol::encode_v2;
use l4relay::protocol::vpce::VpceId;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "streams-test-token-0123";

/// What a test upstream does with each connection.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Reads and discards; never answers.
    Silent,
    /// Waits, then writes one line, then echoes.
    AnswerAfter(Duration),
    /// Writes one byte at once, then reads and discards without answering again.
    OneByteThenSilent,
}

async fn upstream(behaviour: Behaviour) -> SocketAddr {
    let listener = upstream_listener();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                match behaviour {
                    Behaviour::Silent => {}
                    Behaviour::AnswerAfter(delay) => {
                        tokio::time::sleep(delay).await;
                        if stream.write_all(b"answer\n").await.is_err() {
                            return;
                        }
                        let (mut r, mut w) = stream.split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                        return;
                    }
                    Behaviour::OneByteThenSilent => {
                        if stream.write_all(b"!").await.is_err() {
                            return;
                        }
                    }
                }
                let _ = tokio::io::copy(&mut stream, &mut tokio::io::sink()).await;
            });
        }
    });
    addr
}

/// A relay with an admin listener (and token) in front of `servers`; `listener_extra` goes into
/// the `[[listener]]` table.
fn relay_with_admin(
    servers: &[SocketAddr],
    listener_extra: &str,
) -> (RelayProcess, SocketAddr, SocketAddr) {
    let (relay, [listen, admin]) = start_relay(|[listen, admin]| {
        config(listen, servers, listener_extra, "").replace(
            "listen = \"off\"",
            &format!("listen = \"{admin}\"\ntoken = \"{TOKEN}\""),
        )
    });
    (relay, listen, admin)
}

async fn connections(admin: SocketAddr, query: &str) -> Value {
    let (code, body) = admin_request(admin, "GET", &format!("/connections{query}"), None).await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Polls `GET /connections{query}` until `wanted` holds (up to `STEP_LIMIT`); the last answer.
async fn connections_until(
    admin: SocketAddr,
    query: &str,
    wanted: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + STEP_LIMIT;
    loop {
        let table = connections(admin, query).await;
        if wanted(&table) {
            return table;
        }
        assert!(
            Instant::now() < deadline,
            "never as wanted: /connections{query}:\n{table:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Connects with a PROXY v2 header naming `client` (and `vpce`), then exchanges `hello`.
async fn proxied(listen: SocketAddr, client: &str, vpce: Option<&str>) -> TcpStream {
    let mut stream = connect(listen).await;
    let mut header = Vec::new();
    let vpce = vpce.map(|v| VpceId::parse(v).unwrap());
    encode_v2(client.parse().unwrap(), listen, vpce.as_ref(), &mut header);
    stream.write_all(&header).await.unwrap();
    exchange(&mut stream, b"hello").await;
    stream
}

/// Writes `bytes` and reads their echo.
async fn exchange(stream: &mut TcpStream, bytes: &[u8]) {
    stream.write_all(bytes).await.unwrap();
    let mut echoed = vec![0u8; bytes.len()];
    tokio::time::timeout(STEP_LIMIT, stream.read_exact(&mut echoed))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(echoed, bytes);
}

/// A series of histogram `name` (`suffix`: _count, _sum or _bucket with `le`) with `label`.
async fn histogram(
    admin: SocketAddr,
    name: &str,
    suffix: &str,
    label: (&str, &str),
    le: Option<&str>,
) -> f64 {
    let mut labels = vec![label];
    labels.extend(le.map(|le| ("le", le)));
    metric(admin, &format!("{name}{suffix}"), &labels).await
}

fn ids(table: &Value) -> Vec<u64> {
    table["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_u64().unwrap())
        .collect()
}

/// Reads until the relay closes the connection (EOF or reset), within `STEP_LIMIT`.
async fn closed_by_relay(stream: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + STEP_LIMIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => panic!("the relay did not close the connection"),
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_are_listed_filtered_and_closed_by_id() {
    let (server, _) = echo_server().await;
    let (relay, listen, admin) = relay_with_admin(
        &[server],
        "proxy_protocol = \"v2\"\nallow_vpce = [\"vpce-0aaa\", \"vpce-0bbb\"]",
    );
    let mut first = proxied(listen, "10.1.2.3:40001", Some("vpce-0aaa")).await;
    let mut second = proxied(listen, "10.9.9.9:40002", Some("vpce-0bbb")).await;
    let mut third = proxied(listen, "10.1.7.7:40003", Some("vpce-0bbb")).await;
    exchange(&mut second, b"more bytes").await;

    // Everything a connection shows: who, where, how much, how long silent, how relayed.
    let table = connections_until(admin, "", |t| {
        t["open"] == 3
            && t["connections"]
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c["phase"] == "relaying" && !c["source"].is_null())
    })
    .await;
    assert_eq!(table["matched"], 3);
    assert_eq!(table["order"], "longest");
    let all = table["connections"].as_array().unwrap();
    let one = &all[0];
    assert_eq!(one["listener"], "test");
    assert_eq!(one["client"], "10.1.2.3:40001");
    assert_eq!(one["vpce"], "vpce-0aaa");
    assert_eq!(one["pool"], "p");
    assert_eq!(one["server"], "s0");
    assert_eq!(one["server_addr"], server.to_string());
    assert!(
        one["source"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{one}"
    );
    assert_eq!(one["bytes_c2s"], 5);
    assert_eq!(one["bytes_s2c"], 5);
    assert!(
        ["splice", "copy"].contains(&one["mode"].as_str().unwrap()),
        "{one}"
    );
    assert_eq!(one["closing"], false);
    assert!(one["age_s"].as_f64().unwrap() >= one["idle_c2s_s"].as_f64().unwrap());
    assert!(one["since"].as_str().unwrap().ends_with('Z'));
    assert_eq!(all[1]["bytes_c2s"], 15, "{:#}", all[1]);
    let ages: Vec<f64> = all.iter().map(|c| c["age_s"].as_f64().unwrap()).collect();
    assert!(
        ages.windows(2).all(|w| w[0] >= w[1]),
        "longest first: {ages:?}"
    );
    let (a, b, c) = (ids(&table)[0], ids(&table)[1], ids(&table)[2]);

    // Filters and order.
    assert_eq!(ids(&connections(admin, "?order=newest&limit=1").await), [c]);
    assert_eq!(
        ids(&connections(admin, "?client=10.1.0.0/16").await),
        [a, c]
    );
    assert_eq!(ids(&connections(admin, "?client=10.9.9.9").await), [b]);
    assert_eq!(
        ids(&connections(admin, "?vpce=vpce-0bbb&order=newest").await),
        [c, b]
    );
    assert_eq!(
        ids(&connections(admin, "?pool=p&server=s0&listener=test").await),
        [a, b, c]
    );
    let none = connections(admin, "?listener=other").await;
    assert_eq!(
        (none["open"].as_u64(), none["matched"].as_u64()),
        (Some(3), Some(0))
    );
    let (code, body) = admin_request(admin, "GET", "/connections?limit=zero", None).await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("limit"), "{body}");

    // Closing one: a POST with the token; the others are untouched.
    let path = format!("/connections/{a}/close");
    assert_eq!(admin_request(admin, "POST", &path, None).await.0, 401);
    assert_eq!(
        admin_request(admin, "POST", &path, Some("wrong")).await.0,
        401
    );
    assert_eq!(admin_request(admin, "GET", &path, Some(TOKEN)).await.0, 405);
    let (code, body) = admin_request(admin, "POST", &path, Some(TOKEN)).await;
    assert_eq!(code, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (answer["id"].as_u64(), &answer["closing"]),
        (Some(a), &Value::Bool(true))
    );
    closed_by_relay(&mut first).await;
    let line = log_for(&relay, "10.1.2.3:40001").await;
    assert_eq!(field(&line, "end"), Some("admin_closed"), "{line}");
    assert_eq!(field(&line, "bytes_c2s"), Some("5"), "{line}");
    connections_until(admin, "", |t| ids(t) == [b, c]).await;
    exchange(&mut second, b"still here").await;
    exchange(&mut third, b"me too").await;

    assert_eq!(
        admin_request(admin, "POST", &path, Some(TOKEN)).await.0,
        404,
        "already closed"
    );
    assert_eq!(
        admin_request(admin, "POST", "/connections/nine/close", Some(TOKEN))
            .await
            .0,
        400
    );
    assert_eq!(
        admin_request(admin, "POST", "/connections/1/open", Some(TOKEN))
            .await
            .0,
        404
    );
    drop((second, third));
    connections_until(admin, "", |t| t["open"] == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_meets_first_byte_timeout() {
    let silent = upstream(Behaviour::Silent).await;
    let (relay, listen, admin) = relay_with_admin(&[silent], "first_byte_timeout = \"300ms\"");
    let (client, stream) = open("127.0.0.1", listen).await;
    let mut stream = stream.unwrap();
    stream.write_all(b"request").await.unwrap();
    let started = Instant::now();
    closed_by_relay(&mut stream).await;
    assert!(
        started.elapsed() >= Duration::from_millis(290),
        "{:?}",
        started.elapsed()
    );
    let line = log_for(&relay, &client).await;
    assert_eq!(field(&line, "end"), Some("first_byte_timeout"), "{line}");
    assert_eq!(field(&line, "bytes_s2c"), Some("0"), "{line}");
    assert_eq!(
        metric(admin, "l4relay_first_byte_seconds_count", &[("pool", "p")]).await,
        0.0,
        "no first byte, no sample"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_byte_histogram_times_the_server_and_the_silence_histogram_the_gaps() {
    let slow = upstream(Behaviour::AnswerAfter(Duration::from_millis(300))).await;
    let (relay, listen, admin) = relay_with_admin(&[slow], "first_byte_timeout = \"10s\"");
    let mut stream = connect(listen).await;
    let mut line = [0u8; 7];
    stream.read_exact(&mut line).await.unwrap();
    assert_eq!(&line, b"answer\n");
    // A silence of its own making: 600 ms with nothing either way.
    tokio::time::sleep(Duration::from_millis(600)).await;
    exchange(&mut stream, b"ping").await;
    stream.shutdown().await.unwrap();
    closed_by_relay(&mut stream).await;
    relay.wait_for_log_lines(1, STEP_LIMIT).await;

    let first = |suffix, le| {
        histogram(
            admin,
            "l4relay_first_byte_seconds",
            suffix,
            ("pool", "p"),
            le,
        )
    };
    assert_eq!(first("_count", None).await, 1.0);
    assert!(
        first("_sum", None).await >= 0.29,
        "the server waited 300 ms"
    );
    assert_eq!(first("_bucket", Some("0.25")).await, 0.0);
    let silent = |suffix, le| {
        histogram(
            admin,
            "l4relay_silent_gap_seconds",
            suffix,
            ("listener", "test"),
            le,
        )
    };
    assert_eq!(silent("_count", None).await, 1.0);
    assert!(
        silent("_sum", None).await >= 0.59,
        "the 600 ms pause is the longest silence"
    );
    assert_eq!(silent("_bucket", Some("0.5")).await, 0.0);
    assert_eq!(
        silent("_bucket", Some("350")).await,
        1.0,
        "the NLB's bound is a bucket"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_meets_idle_timeout_server_while_its_client_talks() {
    let stalled = upstream(Behaviour::OneByteThenSilent).await;
    let (relay, listen, _admin) = relay_with_admin(
        &[stalled],
        "idle_timeout = \"30s\"\nidle_timeout_server = \"400ms\"\nfirst_byte_timeout = \"5s\"",
    );
    let (client, stream) = open("127.0.0.1", listen).await;
    let mut stream = stream.unwrap();
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte).await.unwrap();
    // The client keeps talking, so the connection is never idle both ways.
    let started = Instant::now();
    let talker = async {
        loop {
            if stream.write_all(b"tick").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            if started.elapsed() > STEP_LIMIT {
                return;
            }
        }
    };
    tokio::time::timeout(STEP_LIMIT, talker).await.ok();
    let line = log_for(&relay, &client).await;
    assert_eq!(field(&line, "end"), Some("idle_timeout"), "{line}");
    assert_eq!(field(&line, "detail"), Some("server_silent"), "{line}");
    assert!(started.elapsed() >= Duration::from_millis(390));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_lifetime_ends_even_a_busy_connection() {
    let (server, _) = echo_server().await;
    let (relay, listen, _admin) = relay_with_admin(&[server], "max_lifetime = \"500ms\"");
    let (client, stream) = open("127.0.0.1", listen).await;
    let mut stream = stream.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 4];
    loop {
        assert!(
            started.elapsed() < STEP_LIMIT,
            "still open after {STEP_LIMIT:?}"
        );
        if stream.write_all(b"busy").await.is_err() {
            break;
        }
        match tokio::time::timeout(STEP_LIMIT, stream.read_exact(&mut buf)).await {
            Ok(Ok(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
            _ => break,
        }
    }
    assert!(started.elapsed() >= Duration::from_millis(490));
    let line = log_for(&relay, &client).await;
    assert_eq!(field(&line, "end"), Some("max_lifetime"), "{line}");
    let duration: f64 = field(&line, "duration_ms").unwrap().parse().unwrap();
    assert!(duration >= 500.0, "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_stream_logs_its_opening_and_its_progress_before_it_ends() {
    let (server, _) = echo_server().await;
    let (relay, listen, _admin) =
        relay_with_admin(&[server], "log_open = true\nlog_progress = \"200ms\"");
    let (client, stream) = open("127.0.0.1", listen).await;
    let mut stream = stream.unwrap();
    exchange(&mut stream, b"first").await;
    let opened = log_for(&relay, &client).await;
    assert_eq!(field(&opened, "end"), Some("open"), "{opened}");
    assert_eq!(field(&opened, "server"), Some("s0"), "{opened}");
    assert_eq!(field(&opened, "bytes_s2c"), Some("0"), "{opened}");

    // Progress lines while it is open, with the bytes so far.
    let progress = |log: &str| -> Vec<String> {
        log.lines()
            .filter(|l| {
                field(l, "client") == Some(client.as_str()) && field(l, "end") == Some("progress")
            })
            .map(str::to_string)
            .collect()
    };
    assert!(
        eventually(STEP_LIMIT, || progress(&relay.access_log()).len() >= 2).await,
        "no progress lines:\n{}",
        relay.access_log()
    );
    let lines = progress(&relay.access_log());
    assert_eq!(field(&lines[0], "bytes_c2s"), Some("5"), "{}", lines[0]);
    assert_eq!(field(&lines[0], "bytes_s2c"), Some("5"), "{}", lines[0]);
    let age = |l: &str| field(l, "duration_ms").unwrap().parse::<f64>().unwrap();
    assert!(
        age(&lines[0]) >= 200.0 && age(&lines[1]) >= age(&lines[0]) + 150.0,
        "{lines:?}"
    );

    stream.shutdown().await.unwrap();
    closed_by_relay(&mut stream).await;
    let closed = log_where(&relay, "the close", |l| {
        field(l, "client") == Some(client.as_str()) && field(l, "end") == Some("client_closed")
    })
    .await;
    assert_eq!(field(&closed, "bytes_c2s"), Some("5"), "{closed}");
    // The connection is counted once, whatever lines it wrote.
    let relayed = relay
        .access_log()
        .lines()
        .filter(|l| field(l, "client") == Some(client.as_str()))
        .filter(|l| !["open", "progress"].contains(&field(l, "end").unwrap()))
        .count();
    assert_eq!(relayed, 1);
}

#[test]
fn timeouts_and_log_keys_are_checked_by_the_config_check() {
    let dir = scratch_dir("streams-check");
    let path = dir.join("l4relay.toml");
    let text = config(
        "127.0.0.1:1".parse().unwrap(),
        &["127.0.0.1:2".parse().unwrap()],
        "first_byte_timeout = \"0s\"\nmax_lifetime = \"soon\"\nlog_open = \"yes\"\nidle_timeout_server = \"5m\"\nlog_progress = \"60s\"",
        "",
    );
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    for key in ["first_byte_timeout", "max_lifetime", "log_open"] {
        assert!(
            stderr.contains(&format!("listener[0].{key}")),
            "{key}:\n{stderr}"
        );
    }
    assert!(
        !stderr.contains("idle_timeout_server") && !stderr.contains("log_progress"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
