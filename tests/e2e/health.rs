//! End-to-end upstream health: active checks (tcp, http, tls) flipping servers down and up in
//! bounded time, passive detection, backups, slow start, operator drain through the admin API,
//! `on_down = "close"`, and health state surviving a reload. The built binary runs against
//! upstreams on loopback; every wait polls /status with a deadline.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

const TOKEN: &str = "test-token-0123456789abcdef";

/// One listener on pool "p" with `servers` (name, address, extra lines), the admin listener
/// with a POST token, and `[pool.health]` when `health` is not empty.
fn relay_config(
    admin: SocketAddr,
    listen: SocketAddr,
    pool_extra: &str,
    health: &str,
    servers: &[(&str, SocketAddr, &str)],
) -> String {
    let mut text = format!(
        "[admin]\nlisten = \"{admin}\"\ntoken = \"{TOKEN}\"\n\n[[listener]]\nname = \"test\"\nlisten = \"{listen}\"\npool = \"p\"\n\n[[pool]]\nname = \"p\"\n{pool_extra}\n"
    );
    if !health.is_empty() {
        text.push_str(&format!("  [pool.health]\n{health}\n"));
    }
    for (name, addr, extra) in servers {
        text.push_str(&format!(
            "  [[pool.server]]\n  name = \"{name}\"\n  address = \"{addr}\"\n{extra}\n"
        ));
    }
    text
}

async fn server_state(admin: SocketAddr, pool: &str, server: &str) -> String {
    let status = get_status(admin).await;
    servers_json(&status, pool, server)
        .first()
        .map_or("absent".to_string(), |s| {
            s["state"].as_str().unwrap_or("").to_string()
        })
}

/// Polls /status until the server's first address is in `state`; returns how long it took.
async fn wait_state(
    admin: SocketAddr,
    pool: &str,
    server: &str,
    state: &str,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        if server_state(admin, pool, server).await == state {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{pool}/{server} not {state} within {limit:?}: {}",
            get_status(admin).await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Down within interval × fall, up within interval × rise, each plus this much for the relay's
/// scheduling on a busy machine (jitter, the fast interval and check time are inside the
/// products), timed by the relay's own `since` in /status.
const SLACK: Duration = Duration::from_millis(700);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_goes_down_within_fall_checks_and_back_up_within_rise() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let (relay, [admin, listen]) = start_relay(|[admin, listen]| {
        let health = "check = \"tcp\"\ninterval = \"200ms\"\nfast_interval = \"100ms\"\njitter = \"20ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 3\npassive_fall = 0";
        relay_config(
            admin,
            listen,
            "",
            health,
            &[("a", a.addr, ""), ("b", b.addr, "")],
        )
    });
    wait_state(admin, "p", "a", "up", Duration::from_secs(5)).await;
    wait_state(admin, "p", "b", "up", Duration::from_secs(5)).await;

    a.stop().await;
    let stopped = SystemTime::now();
    wait_state(admin, "p", "a", "down", Duration::from_secs(10)).await;
    let status = get_status(admin).await;
    let a_status = &servers_json(&status, "p", "a")[0];
    assert_eq!(a_status["reason"], "connection refused", "{status}");
    // When it went down, as the relay reports it: a test polling late on a busy machine does
    // not count.
    let down_after = since(a_status).duration_since(stopped).unwrap_or_default();
    assert!(
        down_after <= Duration::from_millis(600) + SLACK,
        "down {down_after:?} after the stop: {status}"
    );

    // Back, but not up until `rise` checks passed: until /status says up, no client may
    // reach it.
    a.restart();
    let restarted = SystemTime::now();
    let mut reached_a = 0;
    for _ in 0..2000 {
        let (_stream, name) = try_which(listen).await.expect("b serves");
        let state_after = server_state(admin, "p", "a").await;
        if name == "a" {
            assert_eq!(state_after, "up", "a client reached a while it was down");
            reached_a += 1;
        }
        if reached_a >= 3 {
            break;
        }
    }
    assert_eq!(reached_a, 3, "clients go to a again once it is up");
    let status = get_status(admin).await;
    let up_after = since(&servers_json(&status, "p", "a")[0])
        .duration_since(restarted)
        .unwrap_or_default();
    assert!(
        up_after <= Duration::from_millis(400) + SLACK,
        "up {up_after:?} after the restart: {status}"
    );
    assert!(relay.stderr().contains("server down"), "{}", relay.stderr());
    assert_eq!(
        metric(
            admin,
            "l4relay_server_state",
            &[("server", "a"), ("state", "up")]
        )
        .await,
        1.0
    );
    assert!(
        metric(
            admin,
            "l4relay_health_checks_total",
            &[("server", "a"), ("result", "refused")]
        )
        .await
            >= 3.0
    );
}

/// Request heads an `http_upstream` received, in order, each with whether its gate was open
/// when the head arrived.
type Heads = Arc<std::sync::Mutex<Vec<(String, bool)>>>;

/// An HTTP server answering every request with the status in `code`, once `gate` is open;
/// records request heads.
async fn http_upstream(
    code: Arc<AtomicU16>,
    heads: Heads,
    gate: watch::Receiver<bool>,
) -> SocketAddr {
    let listener = upstream_listener();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let (code, heads, mut gate) = (Arc::clone(&code), Arc::clone(&heads), gate.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let open = *gate.borrow();
                heads
                    .lock()
                    .unwrap()
                    .push((String::from_utf8_lossy(&head).into_owned(), open));
                if gate.wait_for(|open| *open).await.is_err() {
                    return;
                }
                let code = code.load(Ordering::SeqCst);
                let response = format!(
                    "HTTP/1.1 {code} Whatever\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

/// A gate already open, and its sender (kept: a dropped sender ends `wait_for`).
fn open_gate() -> (watch::Sender<bool>, watch::Receiver<bool>) {
    watch::channel(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_checks_accept_configured_statuses_and_show_the_firewall_reason() {
    let code = Arc::new(AtomicU16::new(401));
    let heads = Heads::default();
    let (_gate, open) = open_gate();
    let server = http_upstream(Arc::clone(&code), Arc::clone(&heads), open).await;
    let (_relay, [admin, listen]) = start_relay(|[admin, listen]| {
        let health = "check = \"http\"\npath = \"/openai/models\"\nhost = \"myres.openai.azure.com\"\nstatuses = [\"401\"]\nfirewall_statuses = [\"403\"]\ninterval = \"100ms\"\ntimeout = \"500ms\"\nrise = 1\nfall = 1";
        relay_config(admin, listen, "", health, &[("aoai", server, "")])
    });
    wait_state(admin, "p", "aoai", "up", Duration::from_secs(5)).await;
    {
        let heads = heads.lock().unwrap();
        assert!(
            heads[0].0.starts_with("GET /openai/models HTTP/1.1\r\n")
                && heads[0].0.contains("\r\nHost: myres.openai.azure.com\r\n"),
            "{heads:?}"
        );
    }

    let reason = |status: serde_json::Value| {
        servers_json(&status, "p", "aoai")[0]["reason"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    code.store(503, Ordering::SeqCst);
    wait_state(admin, "p", "aoai", "down", Duration::from_secs(5)).await;
    assert_eq!(
        reason(get_status(admin).await),
        "HTTP status 503 (expected 401)"
    );

    code.store(403, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = get_status(admin).await;
        let shown = reason(status.clone());
        if shown.contains("refused by upstream firewall") {
            assert_eq!(servers_json(&status, "p", "aoai")[0]["state"], "down");
            assert_eq!(
                shown,
                "refused by upstream firewall: HTTP 403 (egress not allowlisted?)"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no firewall reason: {status}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        metric(
            admin,
            "l4relay_health_checks_total",
            &[("server", "aoai"), ("result", "firewall")]
        )
        .await
            >= 1.0
    );

    // 200 is a fine status, but not one this check accepts.
    code.store(200, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !reason(get_status(admin).await).starts_with("HTTP status 200") {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    code.store(401, Ordering::SeqCst);
    wait_state(admin, "p", "aoai", "up", Duration::from_secs(5)).await;
    // With the check up, a client gets through to it.
    let mut client = TcpStream::connect(listen).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    client.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_arriving_before_the_first_check_has_answered_waits_for_it() {
    // The upstream holds every answer until the test opens its gate, so the first check cannot
    // have answered when the client arrives.
    let heads = Heads::default();
    let (gate, closed) = watch::channel(false);
    let server = http_upstream(Arc::new(AtomicU16::new(200)), Arc::clone(&heads), closed).await;
    // One check, answered well within its timeout (which is also how long a client may wait).
    let health = "check = \"http\"\npath = \"/check\"\ninterval = \"60s\"\ntimeout = \"20s\"";
    let (relay, [admin, listen]) = start_relay(|[admin, listen]| {
        relay_config(admin, listen, "", health, &[("web", server, "")])
    });
    let arrived = |path: &str| {
        let heads = heads.lock().unwrap();
        heads
            .iter()
            .find(|(head, _)| head.starts_with(&format!("GET {path} ")))
            .map(|(_, gate_open)| *gate_open)
    };
    assert!(
        eventually(STEP_LIMIT, || arrived("/check").is_some()).await,
        "no health check reached the upstream"
    );

    // The client is inside the relay while its only server is still unknown.
    let mut client = connect(listen).await;
    client
        .write_all(b"GET /client HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let deadline = Instant::now() + STEP_LIMIT;
    loop {
        let status = get_status(admin).await;
        if status["connections"]["active"] == 1 {
            assert_eq!(
                servers_json(&status, "p", "web")[0]["state"],
                "unknown",
                "the client arrived after the first check: {status}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the relay holds no client: {status}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The check answers; the client is served by the server, which its request reached only
    // after the check's answer was let go.
    gate.send_replace(true);
    let mut answer = String::new();
    tokio::time::timeout(STEP_LIMIT, client.read_to_string(&mut answer))
        .await
        .expect("answered in time")
        .unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "refused instead of waiting: {answer:?}"
    );
    assert_eq!(
        arrived("/client"),
        Some(true),
        "the client's request reached the server before its first check answered"
    );
    drop(client);
    let log = relay.wait_for_log_lines(1, Duration::from_secs(5)).await;
    assert!(log[0].contains("server=web"), "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_send_a_proxy_v2_local_header_when_the_pool_sends_proxy_headers() {
    let listener = upstream_listener();
    let server = listener.local_addr().unwrap();
    let (_relay, _) = start_relay(|[admin, listen]| {
        relay_config(
            admin,
            listen,
            "send_proxy = \"v2\"",
            "check = \"tcp\"\ninterval = \"100ms\"",
            &[("s", server, "")],
        )
    });
    let (mut stream, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
        .await
        .expect("a check connected")
        .unwrap();
    let mut header = [0u8; 16];
    stream.read_exact(&mut header).await.unwrap();
    assert_eq!(&header[..12], b"\r\n\r\n\0\r\nQUIT\n", "the v2 signature");
    assert_eq!(
        header[12], 0x20,
        "LOCAL: a health check, not a relayed client"
    );
}

/// A listening socket that never accepts, with its accept queue full: connects to it time out,
/// like a host that silently drops packets.
async fn blackhole() -> (SocketAddr, socket2::Socket, Vec<TcpStream>) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(1).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let mut queued = Vec::new();
    for _ in 0..20 {
        match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => queued.push(stream),
            _ => return (addr, socket, queued),
        }
    }
    panic!("the accept queue of {addr} never filled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_detection_marks_a_blackholed_server_down_before_its_next_check() {
    let (hole, _socket, _queued) = blackhole().await;
    let b = Upstream::start("b").await;
    let (relay, [admin, listen]) = start_relay(|[admin, listen]| {
        // Checks every 10 s: far longer than the test; only live traffic can notice in time.
        let health = "check = \"tcp\"\ninterval = \"10s\"\ntimeout = \"300ms\"\nrise = 1\nfall = 3\ninit_state = \"up\"\npassive_fall = 3";
        relay_config(
            admin,
            listen,
            "connect_timeout = \"200ms\"\nretries = 1",
            health,
            &[("hole", hole, ""), ("b", b.addr, "")],
        )
    });
    assert_eq!(server_state(admin, "p", "hole").await, "up");

    let started = Instant::now();
    let mut clients = 0;
    while server_state(admin, "p", "hole").await != "down" {
        let (_stream, name) = try_which(listen).await.expect("retried on b");
        assert_eq!(name, "b");
        clients += 1;
        assert!(clients <= 10, "still up after {clients} clients");
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let status = get_status(admin).await;
    let reason = servers_json(&status, "p", "hole")[0]["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        reason.contains("3 connects in a row failed in live traffic (last: timeout)"),
        "{reason}"
    );
    // Once down it gets no more attempts: new clients go straight to b.
    let timeouts = metric(
        admin,
        "l4relay_upstream_connections_total",
        &[("server", "hole"), ("result", "timeout")],
    )
    .await;
    assert_eq!(timeouts, 3.0);
    for _ in 0..5 {
        let (_stream, name) = try_which(listen).await.unwrap();
        assert_eq!(name, "b");
    }
    let timeouts_after = metric(
        admin,
        "l4relay_upstream_connections_total",
        &[("server", "hole"), ("result", "timeout")],
    )
    .await;
    assert_eq!(timeouts_after, 3.0, "a down server got connect attempts");
    drop(relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_take_over_when_the_primaries_are_down_and_give_back() {
    let primary = Upstream::start("primary").await;
    let backup = Upstream::start("backup").await;
    let (relay, [admin, listen]) = start_relay(|[admin, listen]| {
        let health = "check = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 2\npassive_fall = 0";
        relay_config(
            admin,
            listen,
            "",
            health,
            &[
                ("primary", primary.addr, ""),
                ("backup", backup.addr, "  backup = true"),
            ],
        )
    });
    wait_state(admin, "p", "primary", "up", Duration::from_secs(5)).await;
    wait_state(admin, "p", "backup", "up", Duration::from_secs(5)).await;
    for _ in 0..5 {
        assert_eq!(try_which(listen).await.unwrap().1, "primary");
    }

    primary.stop().await;
    wait_state(admin, "p", "primary", "down", Duration::from_secs(5)).await;
    for _ in 0..5 {
        assert_eq!(try_which(listen).await.unwrap().1, "backup");
    }

    primary.restart();
    wait_state(admin, "p", "primary", "up", Duration::from_secs(5)).await;
    for _ in 0..5 {
        assert_eq!(try_which(listen).await.unwrap().1, "primary");
    }
    assert_eq!(admin_request(admin, "GET", "/readyz", None).await.0, 200);

    // Nothing up: the client is closed at once, logged and counted.
    primary.stop().await;
    backup.stop().await;
    wait_state(admin, "p", "primary", "down", Duration::from_secs(5)).await;
    wait_state(admin, "p", "backup", "down", Duration::from_secs(5)).await;
    let started = Instant::now();
    assert!(try_which(listen).await.is_none());
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    let lines = relay.access_log();
    assert!(
        eventually(Duration::from_secs(5), || relay
            .access_log()
            .contains("end=no_server"))
        .await,
        "{lines}"
    );
    assert!(
        metric(
            admin,
            "l4relay_connections_total",
            &[("listener", "test"), ("outcome", "no_server")]
        )
        .await
            >= 1.0
    );
    let (code, body) = admin_request(admin, "GET", "/readyz", None).await;
    assert_eq!(code, 503, "{body}");

    // One server back: ready again.
    backup.restart();
    wait_state(admin, "p", "backup", "up", Duration::from_secs(5)).await;
    let (code, body) = admin_request(admin, "GET", "/readyz", None).await;
    assert_eq!(code, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_start_ramps_the_share_of_a_server_coming_back() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let (_relay, [admin, listen]) = start_relay(|[admin, listen]| {
        let health = "check = \"tcp\"\ninterval = \"100ms\"\nfast_interval = \"50ms\"\ntimeout = \"100ms\"\nrise = 1\nfall = 1\npassive_fall = 0";
        relay_config(
            admin,
            listen,
            "balance = \"round-robin\"\nslow_start = \"2s\"",
            health,
            &[("a", a.addr, ""), ("b", b.addr, "")],
        )
    });
    wait_state(admin, "p", "b", "up", Duration::from_secs(5)).await;
    wait_state(admin, "p", "a", "up", Duration::from_secs(5)).await;
    b.stop().await;
    wait_state(admin, "p", "b", "down", Duration::from_secs(5)).await;
    b.restart();
    wait_state(admin, "p", "b", "up", Duration::from_secs(5)).await;
    // b's return as the relay reports it, which is when its ramp starts.
    let back = since(&servers_json(&get_status(admin).await, "p", "b")[0]);
    let since_back = move || SystemTime::now().duration_since(back).unwrap_or_default();

    // Connections for the 2 s ramp and a little after, timed from b's return.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while since_back() < Duration::from_millis(2600) {
                let at = since_back();
                let (stream, name) = try_which(listen).await.expect("served");
                drop(stream);
                seen.push((at, name));
            }
            seen
        }));
    }
    let mut seen = Vec::new();
    for task in tasks {
        seen.extend(task.await.unwrap());
    }
    let share = |from: u64, to: u64| {
        let window: Vec<_> = seen
            .iter()
            .filter(|(t, _)| (from..to).contains(&(t.as_millis() as u64)))
            .collect();
        assert!(window.len() >= 20, "too few connections in {from}..{to} ms");
        window.iter().filter(|(_, n)| n == "b").count() as f64 / window.len() as f64
    };
    let (early, late, after) = (share(0, 500), share(1300, 1900), share(2150, 2600));
    // Weight ramps linearly over 2 s: b's round-robin share is w/(1+w), about 0.11 in the
    // first half second, 0.4 late in the ramp, 0.5 after it.
    assert!(early < 0.25, "early share {early}");
    assert!(late > early + 0.1, "late share {late} vs early {early}");
    assert!((0.4..=0.6).contains(&after), "share after the ramp {after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_through_the_admin_stops_new_connections_while_open_ones_finish() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let (_relay, [admin, listen]) = start_relay(|[admin, listen]| {
        relay_config(
            admin,
            listen,
            "",
            "",
            &[("a", a.addr, ""), ("b", b.addr, "")],
        )
    });
    let mut held = loop {
        let (stream, name) = try_which(listen).await.unwrap();
        if name == "a" {
            break stream;
        }
    };

    let path = "/pools/p/servers/a/drain";
    assert_eq!(admin_request(admin, "POST", path, None).await.0, 401);
    assert_eq!(
        admin_request(admin, "POST", path, Some("wrong-token-0123456789"))
            .await
            .0,
        401
    );
    assert_eq!(admin_request(admin, "GET", path, Some(TOKEN)).await.0, 405);
    assert_eq!(
        admin_request(admin, "POST", "/pools/p/servers/zz/drain", Some(TOKEN))
            .await
            .0,
        404
    );
    let (code, body) = admin_request(admin, "POST", path, Some(TOKEN)).await;
    assert_eq!(code, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["addresses_changed"], 1);

    let status = get_status(admin).await;
    let a_status = &servers_json(&status, "p", "a")[0];
    assert_eq!(a_status["state"], "draining", "{status}");
    assert_eq!(a_status["active"], 1);
    for _ in 0..20 {
        assert_eq!(try_which(listen).await.unwrap().1, "b");
    }
    // The open connection to a still works.
    held.write_all(b"ping").await.unwrap();
    let mut pong = [0u8; 4];
    held.read_exact(&mut pong).await.unwrap();
    assert_eq!(&pong, b"ping");

    let (code, _) = admin_request(admin, "POST", "/pools/p/servers/a/ready", Some(TOKEN)).await;
    assert_eq!(code, 200);
    let mut reached_a = false;
    for _ in 0..20 {
        reached_a |= try_which(listen).await.unwrap().1 == "a";
    }
    assert!(reached_a, "ready: a takes connections again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_down_close_closes_the_connections_of_a_server_that_goes_down() {
    let a = Upstream::start("a").await;
    let (relay, [admin, listen]) = start_relay(|[admin, listen]| {
        let health =
            "check = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\nrise = 1\nfall = 1";
        relay_config(
            admin,
            listen,
            "on_down = \"close\"",
            health,
            &[("a", a.addr, "")],
        )
    });
    wait_state(admin, "p", "a", "up", Duration::from_secs(5)).await;
    let (mut stream, _) = try_which(listen).await.unwrap();
    a.stop().await;
    wait_state(admin, "p", "a", "down", Duration::from_secs(5)).await;
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the relay kept the connection: {closed:?}"
    );
    let log = relay.wait_for_log_lines(1, Duration::from_secs(5)).await;
    assert!(log[0].contains("end=server_down"), "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_servers_health_state() {
    let a = Upstream::start("a").await;
    let (mut relay, [admin, listen]) = start_relay(|[admin, listen]| {
        // Slow checks and rise 3: a server the reload forgot would be "unknown" for seconds.
        let health = "check = \"tcp\"\ninterval = \"2s\"\ntimeout = \"200ms\"\nrise = 3\nfall = 3";
        relay_config(admin, listen, "", health, &[("a", a.addr, "")])
    });
    wait_state(admin, "p", "a", "up", Duration::from_secs(5)).await;
    let (code, _) = admin_request(admin, "POST", "/pools/p/servers/a/drain", Some(TOKEN)).await;
    assert_eq!(code, 200);
    relay.signal("HUP");
    relay.wait_for_stderr("reload: done", Duration::from_secs(10));
    let status = get_status(admin).await;
    let a_status = &servers_json(&status, "p", "a")[0];
    assert_eq!(a_status["state"], "draining", "{status}");
    assert_eq!(a_status["health"], "up", "{status}");
    let (code, _) = admin_request(admin, "POST", "/pools/p/servers/a/ready", Some(TOKEN)).await;
    assert_eq!(code, 200);
    assert_eq!(try_which(listen).await.unwrap().1, "a");
}

const CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBnDCCAUGgAwIBAgIUKaG7Wtt5ZOb2X3eCw8mkFY5DGgIwCgYIKoZIzj0EAwIw
GjEYMBYGA1UEAwwPbDRyZWxheSB0ZXN0IENBMCAXDTI2MTEyNDAyNDk0M1oYDzIx
MjYxMDMxMDI0OTQzWjAaMRgwFgYDVQQDDA9sNHJlbGF5IHRlc3QgQ0EwWTATBgcq
hkjOPQIBBggqhkjOPQMBBwNCAATr3w/0huE7OEq2VI9BbKQxelI8V/QPHFFFL3vG
x05pGnNc6rWRV7MBJGRm4m8V0qlVpEq13LlqXrgpXxxe7SIJo2MwYTAdBgNVHQ4E
FgQU7yfgftZ0DktBdIXCcG9Lim2InikwHwYDVR0jBBgwFoAU7yfgftZ0DktBdIXC
cG9Lim2InikwDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8BAf8EBAMCAQYwCgYIKoZI
zj0EAwIDSQAwRgIhANZj7KbC0jstcDPlUJtmi0y68EmWqnzQqi7KWyg8/2H0AiEA
9hTwofnhAdcAuxY/4U1IrV0RgminzHWFNFS+iGn6/us=
-----END CERTIFICATE-----
";

/// For "localhost" and 127.0.0.1, signed by `CA_PEM`, valid until 2126.
const SERVER_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBwjCCAWigAwIBAgIUKPG/M0BhCbKbgd14iCY9zeO3nWAwCgYIKoZIzj0EAwIw
GjEYMBYGA1UEAwwPbDRyZWxheSB0ZXN0IENBMCAXDTI2MTEyNDAyNDk0M1oYDzIx
MjYxMDMxMDI0OTQzWjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIB
BggqhkjOPQMBBwNCAASqHgX/z/rePGrjTP6ktVh2JRkygJPtTiz7du57QbOzTgo0
xJxeHSU6lLI3Gs9RARxK+QYuGDUbn1c4Rpr5eC91o4GPMIGMMBoGA1UdEQQTMBGC
CWxvY2FsaG9zdIcEfwAAATAJBgNVHRMEAjAAMA4GA1UdDwEB/wQEAwIHgDATBgNV
HSUEDDAKBggrBgEFBQcDATAdBgNVHQ4EFgQUao2Ya7UaiZp8+A1gKNisCsIaHmEw
HwYDVR0jBBgwFoAU7yfgftZ0DktBdIXCcG9Lim2InikwCgYIKoZIzj0EAwIDSAAw
RQIhALyRTjo0FnLePhreZ+TOm2CFPmNA8SMrvcDfj8QHKoMdAiBHPSondon8AVwK
Y9W6+4YxYUrvvLTerXiw4Ap9+yytNw==
-----END CERTIFICATE-----
";

const SERVER_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgbnBW6CofGsWI5VHZ
+KlKGnDA22V0kubsuJr5Py0E4OqhRANCAASqHgX/z/rePGrjTP6ktVh2JRkygJPt
Tiz7du57QbOzTgo0xJxeHSU6lLI3Gs9RARxK+QYuGDUbn1c4Rpr5eC91
-----END PRIVATE KEY-----
";

/// A TLS server with the test certificate; after the handshake it answers an HTTP request,
/// if one comes, with 401 (as Azure OpenAI answers a keyless one).
async fn tls_upstream() -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(SERVER_PEM.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(SERVER_KEY.as_bytes()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = upstream_listener();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tls
                    .write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_checks_verify_the_certificate_and_its_name() {
    let server = tls_upstream().await;
    let dir = scratch_dir("tls");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, CA_PEM).unwrap();
    let ca = ca.display();
    let (_relay, [admin, _]) = start_relay(|[admin, listen]| {
        let check = |sni: &str, extra: &str| {
            format!("  [pool.health]\n  check = \"tls\"\n  sni = \"{sni}\"\n  interval = \"100ms\"\n  timeout = \"1s\"\n  rise = 1\n  fall = 1\n{extra}\n  [[pool.server]]\n  name = \"tls\"\n  address = \"{server}\"\n")
        };
        let mut config = relay_config(admin, listen, "", "", &[]);
        config.push_str(&check("localhost", &format!("  ca_file = \"{ca}\"")));
        for (pool, body) in [
        ("wrong-name", check("other.example", &format!("  ca_file = \"{ca}\""))),
        ("system-roots", check("localhost", "")),
        ("unverified", check("other.example", "  verify = false")),
        (
            "https",
            format!("  [pool.health]\n  check = \"http\"\n  tls = true\n  sni = \"localhost\"\n  ca_file = \"{ca}\"\n  statuses = [\"401\"]\n  interval = \"100ms\"\n  timeout = \"1s\"\n  rise = 1\n  fall = 1\n  [[pool.server]]\n  name = \"tls\"\n  address = \"{server}\"\n"),
        ),
    ] {
        config.push_str(&format!("\n[[pool]]\nname = \"{pool}\"\n{body}"));
    }
        config
    });
    wait_state(admin, "p", "tls", "up", Duration::from_secs(5)).await;
    wait_state(admin, "https", "tls", "up", Duration::from_secs(5)).await;
    wait_state(admin, "unverified", "tls", "up", Duration::from_secs(5)).await;
    wait_state(admin, "wrong-name", "tls", "down", Duration::from_secs(5)).await;
    wait_state(admin, "system-roots", "tls", "down", Duration::from_secs(5)).await;
    let status = get_status(admin).await;
    let reason = |pool: &str| {
        servers_json(&status, pool, "tls")[0]["reason"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert!(
        reason("wrong-name")
            .starts_with("TLS: invalid peer certificate: certificate not valid for name"),
        "{}",
        reason("wrong-name")
    );
    assert!(
        reason("system-roots").starts_with("TLS: "),
        "{}",
        reason("system-roots")
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn check_warns_about_unverified_tls_checks() {
    let dir = scratch_dir("check");
    let path = dir.join("l4relay.toml");
    let text = relay_config(
        unused_addr(),
        unused_addr(),
        "",
        "check = \"tls\"\nverify = false",
        &[("x", "127.0.0.1:9".parse().unwrap(), "")],
    );
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning:") && stderr.contains("verify = false"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
