//! The relay's own side of upstream connections, on loopback: running out of file descriptors
//! is the relay's condition, never the server's; a TLS server that never reads the handshake
//! costs one connect timeout; connections spread over a pool's source addresses, and health
//! checks through each source name the one an upstream firewall refuses; `check` warns when a
//! listener's limit exceeds what the sources can carry. (Port exhaustion under a narrowed port
//! range and a first write that is never read are in `egress_netns.rs`, in a namespace.)

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// Sends "ping" and reads the echo; Ok when it came back, Err when the relay closed or reset
/// the connection first.
async fn ping(addr: SocketAddr, limit: Duration) -> Result<TcpStream, String> {
    let attempt = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        stream
            .write_all(b"ping")
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut back = [0u8; 4];
        stream
            .read_exact(&mut back)
            .await
            .map_err(|e| format!("read: {e}"))?;
        Ok(stream)
    };
    tokio::time::timeout(limit, attempt)
        .await
        .unwrap_or_else(|_| Err("no answer in time".to_string()))
}

/// The relay's open-file limit in the descriptor test.
const FD_LIMIT: usize = 96;

/// How many of the descriptor numbers below the limit the relay holds (one it inherited above
/// the limit does not stand in the way of a new one).
fn fds_below_limit(relay: &RelayProcess) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", relay.pid()))
        .map(|dir| {
            dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<usize>().ok())
                .filter(|&fd| fd < FD_LIMIT)
                .count()
        })
        .unwrap_or(0)
}

/// The fewest descriptors the relay held over a few health-check intervals: what stays held,
/// without the moments a check or a refused client holds one more.
async fn steady_fds(relay: &RelayProcess) -> usize {
    let mut floor = usize::MAX;
    for _ in 0..30 {
        floor = floor.min(fds_below_limit(relay));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    floor
}

/// The state /status gives the pool's first server.
async fn server_state(admin: SocketAddr) -> String {
    let status = get_status(admin).await;
    pool_json(&status, "p")["servers"][0]["state"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_server_stays_up_and_service_comes_back() {
    raise_nofile(4096);
    let (server, _) = echo_server().await;
    // "idle" holds descriptors the way idle connections to a health listener do: accepted,
    // waiting for a PROXY header that never comes.
    let (mut relay, [main, idle, admin]) = start_relay_with(
        Launch {
            shell_prefix: Some("ulimit -n 96"), // FD_LIMIT
            envs: &[],
        },
        |[main, idle, admin]| {
            format!(
                "[global]\nworkers = 1\n\n[admin]\nlisten = \"{admin}\"\n\n\
                 [[listener]]\nname = \"main\"\nlisten = \"{main}\"\npool = \"p\"\n\n\
                 [[listener]]\nname = \"idle\"\nlisten = \"{idle}\"\npool = \"p\"\nproxy_protocol = \"v1\"\n\
                 allow = [\"127.0.0.0/8\"]\nhandshake_timeout = \"60s\"\n\n\
                 [[pool]]\nname = \"p\"\nconnect_timeout = \"2s\"\nretries = 2\n\
                 \x20 [[pool.server]]\n  name = \"echo\"\n  address = \"{server}\"\n\
                 \x20 [pool.health]\n  check = \"tcp\"\n  interval = \"100ms\"\n  timeout = \"500ms\"\n  rise = 1\n  fall = 2\n  passive_fall = 3\n"
            )
        },
    );
    assert!(
        eventually_async(STEP_LIMIT, || server_state(admin), |s| s == "up").await,
        "the server never came up"
    );
    for _ in 0..5 {
        ping(main, STEP_LIMIT)
            .await
            .expect("relayed before the flood");
    }

    // Every descriptor taken. Relayed connections take two each, an idle one one: the fill
    // ends with none free (a client waits in the backlog) or one (a client's connect fails for
    // want of a second). Health checks and refused clients hold one for a moment, so the fill
    // can also stop early; idle connections then take what stays free.
    let local_refusals = |log: &str| {
        log.lines()
            .filter(|l| l.contains("end=connect_failed") && l.contains("detail=local_resource"))
            .count()
    };
    let paused = format!("(out of resources; connections wait in the backlog) listener={main}");
    let spare = TcpStream::connect(idle).await.unwrap();
    let mut held = Vec::new();
    for attempt in 0.. {
        assert!(attempt < 200, "the relay never ran out of descriptors");
        match ping(main, Duration::from_secs(2)).await {
            Ok(stream) => held.push(stream),
            Err(_) if local_refusals(&relay.access_log()) > 0 => break,
            // Waiting in the backlog, given up: accepted later, it ends at once.
            Err(_) if relay.stderr().contains(&paused) => break,
            // Only slow (a loaded machine): go on filling.
            Err(_) => {}
        }
    }
    let mut idle_held = Vec::new();
    let deadline = Instant::now() + STEP_LIMIT;
    loop {
        let floor = steady_fds(&relay).await;
        if floor >= FD_LIMIT {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{floor} of {FD_LIMIT} descriptors held after topping up"
        );
        idle_held.push(TcpStream::connect(idle).await.unwrap());
        eventually(STEP_LIMIT, || fds_below_limit(&relay) > floor).await;
    }
    eprintln!(
        "{} relayed and {} idle connections hold {} descriptors",
        held.len(),
        idle_held.len(),
        fds_below_limit(&relay)
    );
    relay.wait_for_stderr("health check could not run", STEP_LIMIT);

    // Clients of the main listener wait in the backlog. One descriptor frees: each client in
    // turn is accepted on it, and its connect fails for want of a second one.
    let waiting: Vec<_> = (0..10)
        .map(|_| tokio::spawn(ping(main, Duration::from_secs(60))))
        .collect();
    let before = local_refusals(&relay.access_log());
    drop(spare);
    assert!(
        eventually(STEP_LIMIT, || local_refusals(&relay.access_log())
            >= before + 3)
        .await,
        "fewer than 3 clients refused with detail=local_resource:\n{}",
        relay.access_log()
    );

    // The flood ends: the server was never blamed, and service comes back by itself.
    drop(held);
    drop(idle_held);
    let mut refused = 0;
    for client in waiting {
        if client.await.unwrap().is_err() {
            refused += 1;
        }
    }
    let stderr = relay.stderr();
    assert!(
        stderr.contains("out of local resources (EMFILE"),
        "no episode logged:\n{stderr}"
    );
    assert!(
        !stderr.contains("server down"),
        "the server was blamed:\n{stderr}"
    );
    assert_eq!(server_state(admin).await, "up");
    let server = [("pool", "p"), ("server", "echo")];
    assert_eq!(metric(admin, "l4relay_server_up", &server).await, 1.0);
    let emfile = metric(
        admin,
        "l4relay_local_resource_errors_total",
        &[("kind", "emfile")],
    )
    .await;
    let local_checks = metric(
        admin,
        "l4relay_health_checks_total",
        &[("server", "echo"), ("result", "local")],
    )
    .await;
    let refusals = metric(
        admin,
        "l4relay_refusals_total",
        &[("listener", "main"), ("reason", "local_resource")],
    )
    .await;
    let failed_attempts = metric(
        admin,
        "l4relay_upstream_connections_total",
        &[("server", "echo"), ("result", "error")],
    )
    .await;
    eprintln!(
        "{refused} of 10 waiting clients refused; emfile errors {emfile}, checks not run {local_checks}, refusals {refusals}"
    );
    assert!(emfile >= 3.0 && local_checks >= 1.0 && refusals >= 3.0);
    assert_eq!(
        failed_attempts, 0.0,
        "a local failure counted under the server"
    );
    let status = get_status(admin).await;
    let local = &status["local_resources"];
    assert!(
        local["errors_total"]["emfile"].as_u64() >= Some(1)
            && local["last_error"]["kind"] == "emfile",
        "{local}"
    );

    for _ in 0..20 {
        ping(main, STEP_LIMIT)
            .await
            .expect("relayed after the flood");
    }
    // Closed by the next connect (a health check's, here) after a quiet second.
    relay.wait_for_stderr("local resources available again", STEP_LIMIT);
    let status = get_status(admin).await;
    assert_eq!(status["local_resources"]["exhausted"], false, "{status}");
}

/// Polls the async `probe` until `wanted` holds of its value, up to `limit`.
async fn eventually_async<T, F, Fut>(limit: Duration, probe: F, wanted: impl Fn(&T) -> bool) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let deadline = Instant::now() + limit;
    loop {
        if wanted(&probe().await) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_server_that_never_reads_the_handshake_costs_one_connect_timeout() {
    // Accepts, then neither reads nor writes.
    let listener = upstream_listener();
    let server = listener.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let (relay, [listen, admin]) = start_relay(|[listen, admin]| {
        format!(
            "[admin]\nlisten = \"{admin}\"\n\n\
             [[listener]]\nname = \"l\"\nlisten = \"{listen}\"\npool = \"p\"\n\n\
             [[pool]]\nname = \"p\"\nconnect_timeout = \"500ms\"\nretries = 0\nsend_proxy = \"v2\"\n\
             \x20 [pool.tls]\n  verify = false\n\
             \x20 [[pool.server]]\n  name = \"mute\"\n  address = \"{server}\"\n"
        )
    });
    let started = Instant::now();
    let (client, stream) = open("127.0.0.1", listen).await;
    let mut stream = stream.expect("connect to the relay");
    let _ = stream.write_all(b"hello").await;
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(STEP_LIMIT, stream.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the relay kept the client waiting: {closed:?}"
    );
    let took = started.elapsed();
    let line = log_for(&relay, &client).await;
    assert!(
        line.contains("end=connect_failed") && line.contains("detail=tls_timeout"),
        "{line}"
    );
    eprintln!("refused after {took:?} (connect_timeout 500ms)");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let timeouts = metric(
        admin,
        "l4relay_upstream_connections_total",
        &[("server", "mute"), ("result", "timeout")],
    )
    .await;
    assert_eq!(timeouts, 1.0);
    holder.abort();
}

/// An upstream that writes the address a connection came from, then echoes.
async fn tell_peer_server() -> SocketAddr {
    let listener = upstream_listener();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, peer)) = listener.accept().await {
            tokio::spawn(async move {
                if stream
                    .write_all(format!("{}\n", peer.ip()).as_bytes())
                    .await
                    .is_ok()
                {
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
        }
    });
    addr
}

/// Reads one line ("127.0.0.2\n") from a relayed connection.
async fn read_line(stream: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while tokio::time::timeout(STEP_LIMIT, stream.read_exact(&mut byte))
        .await
        .expect("a line in time")
        .is_ok()
    {
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    String::from_utf8(line).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_spread_over_the_source_addresses() {
    let server = tell_peer_server().await;
    let (_relay, [listen, admin]) = start_relay(|[listen, admin]| {
        format!(
            "[admin]\nlisten = \"{admin}\"\n\n\
             [[listener]]\nname = \"l\"\nlisten = \"{listen}\"\npool = \"p\"\n\n\
             [[pool]]\nname = \"p\"\nsource = [\"127.0.0.2\", \"127.0.0.3\"]\n\
             \x20 [[pool.server]]\n  name = \"s\"\n  address = \"{server}\"\n"
        )
    });
    let mut held = Vec::new();
    let mut from = Vec::new();
    for _ in 0..10 {
        let mut stream = connect(listen).await;
        from.push(read_line(&mut stream).await);
        held.push(stream);
    }
    let count = |ip: &str| from.iter().filter(|f| *f == ip).count();
    assert_eq!((count("127.0.0.2"), count("127.0.0.3")), (5, 5), "{from:?}");
    for source in ["127.0.0.2", "127.0.0.3"] {
        let labels = [("pool", "p"), ("source", source), ("server", "s")];
        assert_eq!(
            metric(admin, "l4relay_source_connections", &labels).await,
            5.0
        );
    }
    let status = get_status(admin).await;
    let pool = pool_json(&status, "p");
    assert_eq!(pool["egress"]["sources"][1], "127.0.0.3");
    let range = &status["ephemeral_port_range"];
    assert_eq!(
        pool["egress"]["ports_per_destination"], range["ports"],
        "{status}"
    );
    let sources = &pool["servers"][0]["sources"];
    assert_eq!(
        (sources[0]["active"].as_u64(), sources[1]["active"].as_u64()),
        (Some(5), Some(5)),
        "{sources}"
    );
    drop(held);
    let labels = [("source", "127.0.0.2"), ("server", "s")];
    let mut drained = false;
    let deadline = Instant::now() + STEP_LIMIT;
    while Instant::now() < deadline && !drained {
        drained = metric(admin, "l4relay_source_connections", &labels).await == 0.0;
    }
    assert!(
        drained,
        "the closed connections still counted on their source"
    );
}

/// An HTTP server behind a firewall that admits 127.0.0.2 only: 403 to anyone else, 200 with
/// the caller's address as the body to it.
async fn allowlisting_server() -> SocketAddr {
    let listener: TcpListener = upstream_listener();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, peer)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let ip = peer.ip().to_string();
                let response = if ip == "127.0.0.2" {
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{ip}",
                        ip.len()
                    )
                } else {
                    "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_string()
                };
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_the_firewall_refuses_is_named_and_left_out_the_server_stays_up() {
    let server = allowlisting_server().await;
    let (relay, [listen, admin]) = start_relay(|[listen, admin]| {
        format!(
            "[admin]\nlisten = \"{admin}\"\n\n\
             [[listener]]\nname = \"l\"\nlisten = \"{listen}\"\npool = \"p\"\n\n\
             [[pool]]\nname = \"p\"\nsource = [\"127.0.0.2\", \"127.0.0.3\"]\n\
             \x20 [[pool.server]]\n  name = \"aoai\"\n  address = \"{server}\"\n\
             \x20 [pool.health]\n  check = \"http\"\n  path = \"/openai/models\"\n  statuses = [\"200\"]\n\
             \x20 firewall_statuses = [\"403\"]\n  interval = \"100ms\"\n  rise = 2\n  fall = 2\n"
        )
    });
    let settled = |status: &serde_json::Value| {
        let server = &pool_json(status, "p")["servers"][0];
        let sources = &server["sources"];
        server["state"] == "up"
            && sources[0]["check"] == "passing"
            && sources[1]["check"] == "failing"
    };
    let status = {
        let deadline = Instant::now() + STEP_LIMIT;
        loop {
            let status = get_status(admin).await;
            if settled(&status) || Instant::now() >= deadline {
                break status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    assert!(settled(&status), "{status:#}\n{}", relay.stderr());
    let refused = &pool_json(&status, "p")["servers"][0]["sources"][1];
    assert_eq!(refused["source"], "127.0.0.3");
    assert_eq!(refused["excluded"], true);
    assert_eq!(refused["last_check"]["result"], "firewall");
    let detail = refused["last_check"]["detail"].as_str().unwrap_or("");
    assert!(
        detail.contains("refused by upstream firewall: HTTP 403")
            && detail.contains("from source 127.0.0.3"),
        "{detail}"
    );

    // Live traffic leaves only from the address the firewall admits.
    for _ in 0..10 {
        let mut stream = connect(listen).await;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: aoai\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        tokio::time::timeout(STEP_LIMIT, stream.read_to_string(&mut response))
            .await
            .expect("a response in time")
            .unwrap();
        assert!(
            response.starts_with("HTTP/1.1 200") && response.ends_with("127.0.0.2"),
            "{response}"
        );
    }
    assert!(
        !relay.stderr().contains("server down"),
        "{}",
        relay.stderr()
    );
}

#[test]
fn check_warns_when_the_limit_exceeds_what_the_sources_can_carry() {
    let dir = scratch_dir("egress-check");
    let path = dir.join("l4relay.toml");
    let text = |sources: &str, max: u32| {
        format!(
            "[[listener]]\nname = \"edge\"\nlisten = \"127.0.0.1:8443\"\npool = \"aoai\"\nmax_connections = {max}\n\n\
             [[pool]]\nname = \"aoai\"\nsource = [{sources}]\n\
             \x20 [[pool.server]]\n  address = \"myres.openai.azure.com:443\"\n"
        )
    };
    let check = |config: String| {
        std::fs::write(&path, config).unwrap();
        let out = std::process::Command::new(BIN)
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = check(text("\"10.0.1.10\", \"10.0.1.11\"", 90_000));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("warning:")
            && stderr.contains("listener[0].max_connections")
            && stderr.contains("2 source address(es) (pool[0].source)")
            && stderr.contains("net.ipv4.ip_local_port_range"),
        "{stderr}"
    );
    let (code, stderr) = check(text("\"10.0.1.10\", \"10.0.1.11\"", 1000));
    assert_eq!((code, stderr.as_str()), (Some(0), ""));
    let _ = std::fs::remove_dir_all(&dir);
}
