//! The admin listener's safety, against the built binary: the token re-read by SIGHUP, reloads
//! that refuse what they cannot apply, the admin addresses moved by a reload, the connection
//! cap, the Host and Origin checks, the POST endpoints off off loopback without a token (the
//! container image's config included), and what `check` says about it all.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const OLD_TOKEN: &str = "old-token-0123456789abcdef";
const NEW_TOKEN: &str = "new-token-fedcba9876543210";

/// A raw request to `addr` with the given extra header lines: (status, body).
async fn request(addr: SocketAddr, head: &str) -> (u16, String) {
    raw_request(addr, head.as_bytes()).await
}

async fn post(admin: SocketAddr, token: Option<&str>) -> u16 {
    admin_request(admin, "POST", "/pools/p/servers/s0/ready", token)
        .await
        .0
}

/// A relay config with `admin_table` as its whole `[admin]` table, and `global` lines.
fn with_admin(listen: SocketAddr, server: SocketAddr, global: &str, admin_table: &str) -> String {
    config(listen, &[server], "", "").replace(
        "[admin]\nlisten = \"off\"\n",
        &format!("[global]\n{global}\n\n[admin]\n{admin_table}\n"),
    )
}

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Counts lines of stderr containing `text`.
fn count(relay: &RelayProcess, text: &str) -> usize {
    relay.stderr().matches(text).count()
}

/// Sends SIGHUP and waits for the reload's outcome line: true for `reload: done`.
async fn reload(relay: &mut RelayProcess) -> bool {
    let (done, failed) = (
        count(relay, "reload: done"),
        count(relay, "still running the previous config"),
    );
    relay.signal("HUP");
    let finished = eventually(STEP_LIMIT, || {
        count(relay, "reload: done") > done
            || count(relay, "still running the previous config") > failed
    })
    .await;
    assert!(finished, "no reload outcome:\n{}", relay.stderr());
    count(relay, "reload: done") > done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_rotation_by_sighup() {
    let (server, _) = echo_server().await;
    let dir = scratch_dir("token");
    let token_file = dir.join("admin.token");
    write_private(&token_file, &format!("{OLD_TOKEN}\n"));
    let (mut relay, [_, admin]) = start_relay(|[listen, admin]| {
        with_admin(
            listen,
            server,
            "",
            &format!(
                "listen = \"{admin}\"\ntoken_file = \"{}\"",
                token_file.display()
            ),
        )
    });
    assert_eq!(post(admin, Some(OLD_TOKEN)).await, 200);
    assert_eq!(post(admin, Some(NEW_TOKEN)).await, 401);
    assert_eq!(post(admin, None).await, 401);

    // Rotate the file, reload: the old token is revoked, the new one works, no restart.
    write_private(&token_file, &format!("{NEW_TOKEN}\n"));
    assert!(reload(&mut relay).await, "{}", relay.stderr());
    assert_eq!(
        post(admin, Some(OLD_TOKEN)).await,
        401,
        "the old token still works"
    );
    assert_eq!(
        post(admin, Some(NEW_TOKEN)).await,
        200,
        "the new token is refused"
    );

    // The scheme is case-insensitive (RFC 7235).
    let (code, body) = request(
        admin,
        &format!("POST /pools/p/servers/s0/drain HTTP/1.1\r\nHost: {admin}\r\nAuthorization: bearer {NEW_TOKEN}\r\n\r\n"),
    )
    .await;
    assert_eq!(code, 200, "{body}");

    // An unreadable token file refuses the reload: the running token stays.
    std::fs::remove_file(&token_file).unwrap();
    assert!(!reload(&mut relay).await);
    assert_eq!(post(admin, Some(NEW_TOKEN)).await, 200);

    let log = relay.stderr();
    assert!(
        !log.contains(OLD_TOKEN) && !log.contains(NEW_TOKEN),
        "a token in the log:\n{log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_refuses_what_needs_a_restart() {
    let (first, _) = named_server("first").await;
    let (second, _) = named_server("second").await;
    let with = |listen: SocketAddr,
                admin: SocketAddr,
                server: SocketAddr,
                global: &str,
                listener: &str| {
        config(listen, &[server], listener, "").replace(
            "[admin]\nlisten = \"off\"\n",
            &format!("[global]\nworkers = 2\n{global}\n\n[admin]\nlisten = \"{admin}\"\n"),
        )
    };
    let (mut relay, [listen, admin]) =
        start_relay(|[listen, admin]| with(listen, admin, first, "", ""));
    let base = |server: SocketAddr, global: &str, listener: &str| {
        with(listen, admin, server, global, listener)
    };
    assert_eq!(which_server(listen).await.1, "first");

    // Each start-only key with a live change beside it: the whole reload is refused, each key
    // named, and the live change is not applied either.
    let refused: [(&str, &str, &str); 6] = [
        ("workers = 3", "", "global.workers: 2 -> 3"),
        ("log_level = \"debug\"", "", "global.log_level"),
        ("log_format = \"json\"", "", "global.log_format"),
        ("log_skip_empty = true", "", "global.log_skip_empty"),
        ("", "backlog = 100", "backlog: 4096 -> 100"),
        ("", "keepalive_idle = \"30s\"", "keepalive_idle: 60s -> 30s"),
    ];
    for (global, listener, named) in refused {
        let text =
            base(second, global, listener).replace("workers = 2\nworkers = 3", "workers = 3");
        relay.write_config(text).unwrap();
        assert!(!reload(&mut relay).await, "{named}: reload done");
        let log = relay.stderr();
        assert!(
            log.lines()
                .any(|l| l.contains("reload: ") && l.contains(named) && l.contains("restart")),
            "{named} not named:\n{log}"
        );
        assert_eq!(which_server(listen).await.1, "first", "{named}: applied");
    }
    relay
        .write_config(base(second, "", "").replace(
            &format!("listen = \"{admin}\"\n"),
            &format!("listen = \"{admin}\"\nmetrics = false\n"),
        ))
        .unwrap();
    assert!(!reload(&mut relay).await);
    assert!(relay.stderr().contains("admin.metrics: true -> false"));
    let errors = metric(
        admin,
        "l4relay_config_reloads_total",
        &[("result", "error")],
    )
    .await;
    assert_eq!(errors, 7.0);

    // Without them, the same change applies.
    relay.write_config(base(second, "", "")).unwrap();
    assert!(reload(&mut relay).await, "{}", relay.stderr());
    assert_eq!(which_server(listen).await.1, "second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_moves_the_admin_listeners() {
    let (server, _) = echo_server().await;
    let (mut relay, [listen, admin]) = start_relay(|[listen, admin]| {
        with_admin(listen, server, "", &format!("listen = \"{admin}\""))
    });
    // Bound only by the reload below, which cannot pick again: chosen as late as possible.
    let (moved, health) = (listen_addr(), listen_addr());
    assert_eq!(get_status(admin).await["phase"], "running");

    relay
        .write_config(with_admin(
            listen,
            server,
            "",
            &format!("listen = \"{moved}\"\nhealth_listen = \"{health}\""),
        ))
        .unwrap();
    assert!(reload(&mut relay).await, "{}", relay.stderr());
    assert_eq!(get_status(moved).await["phase"], "running");
    assert_eq!(admin_request(health, "GET", "/readyz", None).await.0, 200);
    assert_eq!(admin_request(health, "GET", "/status", None).await.0, 404);
    let closed = eventually(STEP_LIMIT, || std::net::TcpStream::connect(admin).is_err()).await;
    assert!(closed, "the old admin address still accepts");

    // An address that cannot be bound refuses the reload; the listeners stay as they were.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    relay
        .write_config(with_admin(
            listen,
            server,
            "",
            &format!("listen = \"{moved}\"\nhealth_listen = \"{taken_addr}\""),
        ))
        .unwrap();
    assert!(!reload(&mut relay).await);
    assert!(relay
        .stderr()
        .contains(&format!("cannot listen on {taken_addr} (health)")));
    assert_eq!(admin_request(health, "GET", "/readyz", None).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_connections_are_capped() {
    const CAP: usize = 64;
    const IDLE: usize = 100;
    let (server, _) = echo_server().await;
    let (_relay, [_, admin, health]) = start_relay(|[listen, admin, health]| {
        with_admin(
            listen,
            server,
            "",
            &format!("listen = \"{admin}\"\nhealth_listen = \"{health}\""),
        )
    });

    // Idle connections that send nothing: the first CAP are held (until the request deadline),
    // the rest are answered 503 at once and closed.
    let mut idle = Vec::new();
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(admin).await.expect("connect to admin"));
    }
    // The health listener has a cap of its own: the load balancer still gets its answer.
    assert_eq!(admin_request(health, "GET", "/readyz", None).await.0, 200);

    let answers = futures_all(idle.into_iter().map(|mut stream| async move {
        let mut answer = String::new();
        let read =
            tokio::time::timeout(Duration::from_secs(30), stream.read_to_string(&mut answer));
        let _ = read
            .await
            .expect("every connection ends, held ones at the deadline");
        answer
    }))
    .await;
    let busy = answers
        .iter()
        .filter(|a| a.starts_with("HTTP/1.1 503") && a.ends_with("too many admin connections\n"))
        .count();
    let held = answers.iter().filter(|a| a.is_empty()).count();
    assert_eq!((busy, held), (IDLE - CAP, CAP), "{answers:?}");

    // Counted, and the listener serves again once the idle ones are gone.
    let refused = metric(
        admin,
        "l4relay_admin_connections_refused_total",
        &[("listener", "admin")],
    )
    .await;
    assert_eq!(refused, (IDLE - CAP) as f64);
}

/// Awaits every future, concurrently.
async fn futures_all<F: std::future::Future<Output = String> + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<String> {
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_and_origin_checks_keep_browsers_out() {
    let (server, _) = echo_server().await;
    let (_relay, [_, admin, health]) = start_relay(|[listen, admin, health]| {
        with_admin(
            listen,
            server,
            "",
            &format!("listen = \"{admin}\"\nhealth_listen = \"{health}\"\nhost_names = [\"relay-1.internal\"]"),
        )
    });
    let get = |addr: SocketAddr, path: &'static str, host: &'static str| async move {
        let host = if host.is_empty() {
            String::new()
        } else {
            format!("Host: {host}\r\n")
        };
        request(addr, &format!("GET {path} HTTP/1.1\r\n{host}\r\n"))
            .await
            .0
    };
    // A rebound name reaches nothing worth reading ...
    for path in ["/status", "/metrics"] {
        assert_eq!(get(admin, path, "attacker.example").await, 403, "{path}");
        assert_eq!(
            get(admin, path, "attacker.example:9090").await,
            403,
            "{path}"
        );
    }
    // ... while health checks answer any Host (load balancers send their own) ...
    for path in ["/healthz", "/readyz"] {
        assert_eq!(get(admin, path, "attacker.example").await, 200, "{path}");
        assert_eq!(get(health, path, "attacker.example").await, 200, "{path}");
    }
    // ... and addresses, localhost, listed names and no Host at all pass.
    for host in [
        "127.0.0.1",
        "10.0.3.7:9090",
        "[::1]:9090",
        "localhost",
        "LOCALHOST:9090",
        "relay-1.internal:9090",
        "",
    ] {
        assert_eq!(get(admin, "/status", host).await, 200, "Host: {host}");
    }
    let (code, _) = request(admin, "GET /status HTTP/1.0\r\n\r\n").await;
    assert_eq!(code, 200, "HTTP/1.0 without Host");

    // A page's POST (it carries Origin) is refused even where POSTs are open (loopback).
    let post = |extra: &'static str| async move {
        let head = format!("POST /pools/p/servers/s0/ready HTTP/1.1\r\nHost: {admin}\r\n{extra}Content-Length: 0\r\n\r\n");
        request(admin, &head).await
    };
    assert_eq!(post("").await.0, 200);
    let (code, body) = post("Origin: http://attacker.example\r\n").await;
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        request(
            admin,
            "POST /pools/p/servers/s0/ready HTTP/1.1\r\nHost: attacker.example\r\n\r\n"
        )
        .await
        .0,
        403
    );
}

// ---- the POST endpoints off loopback, and `check` ----

/// Runs `check` on `text`: (exit code, stderr).
fn check(text: &str) -> (i32, String) {
    let dir = scratch_dir("check");
    let path = dir.join("l4relay.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The image's config, made as the Dockerfile makes it from the bundled one.
fn container_config() -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let dockerfile = std::fs::read_to_string(format!("{root}/Dockerfile")).unwrap();
    assert!(
        dockerfile.contains(r#"sed 's/"127\.0\.0\.1:9090"/"0.0.0.0:9090"/' config/l4relay.toml > l4relay.container.toml"#),
        "the Dockerfile no longer makes its config this way: update this test"
    );
    std::fs::read_to_string(format!("{root}/config/l4relay.toml"))
        .unwrap()
        .replace("\"127.0.0.1:9090\"", "\"0.0.0.0:9090\"")
}

#[test]
fn check_says_the_posts_are_off_off_loopback_without_a_token() {
    let (code, stderr) = check(&container_config());
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("warning: ")
            && stderr.contains(
                "admin.listen: the admin listener on 0.0.0.0:9090 is reachable from the network"
            )
            && stderr.contains(
                "POST endpoints (drain or ready a server) are OFF until token or token_file is set"
            ),
        "{stderr}"
    );

    let with_token =
        container_config().replace("[admin]\n", "[admin]\ntoken = \"0123456789abcdef-token\"\n");
    let (code, stderr) = check(&with_token);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("its POST endpoints need the token"),
        "{stderr}"
    );
    assert!(!stderr.contains("OFF"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_container_config_leaves_no_state_change_open() {
    // The image's config as it stands, on addresses of this test's own.
    let (server, _) = echo_server().await;
    let (relay, [_, admin]) = start_relay(|[listen, admin]| {
        container_config()
            .replace("0.0.0.0:9090", &format!("0.0.0.0:{}", admin.port()))
            .replace("127.0.0.1:8443", &listen.to_string())
            .replace("127.0.0.1:9000", &server.to_string())
    });
    let admin: SocketAddr = format!("127.0.0.1:{}", admin.port()).parse().unwrap();
    let (code, body) = admin_request(admin, "POST", "/pools/local/servers/echo/drain", None).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("the POST endpoints are off"), "{body}");
    assert_eq!(get_status(admin).await["phase"], "running");
    assert!(
        relay
            .stderr()
            .contains("are OFF until token or token_file is set"),
        "not said at start:\n{}",
        relay.stderr()
    );
}

#[test]
fn check_warns_about_proxy_protocol_without_proxy_protocol_from() {
    let listener = |extra: &str| {
        format!(
            "[[listener]]\nname = \"nlb\"\nlisten = \"127.0.0.1:8443\"\npool = \"p\"\nproxy_protocol = \"v2\"\n{extra}\n\n[[pool]]\nname = \"p\"\n  [[pool.server]]\n  address = \"127.0.0.1:9000\"\n"
        )
    };
    let (code, stderr) = check(&listener(
        "allow_vpce = [\"vpce-0123456789abcdef0\"]\nmax_connections_per_source = 10",
    ));
    assert_eq!(code, 0, "{stderr}");
    let warning = stderr
        .lines()
        .find(|l| l.contains("listener[0].proxy_protocol_from"))
        .unwrap_or_else(|| panic!("no proxy_protocol_from warning:\n{stderr}"));
    assert!(
        warning.starts_with("warning: ")
            && warning.contains("can send a PROXY header naming any address and VPC endpoint")
            && warning.contains("allow_vpce, max_connections_per_source"),
        "{warning}"
    );

    let (code, stderr) = check(&listener(
        "allow_vpce = [\"vpce-0123456789abcdef0\"]\nproxy_protocol_from = [\"10.0.0.0/24\"]",
    ));
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("proxy_protocol_from"), "{stderr}");
}

#[test]
fn check_warns_about_a_token_file_others_can_read() {
    let dir = scratch_dir("token-mode");
    let token_file = dir.join("admin.token");
    std::fs::write(&token_file, "0123456789abcdef-token\n").unwrap();
    let text = format!(
        "[admin]\ntoken_file = \"{}\"\n\n[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:8443\"\npool = \"p\"\n\n[[pool]]\nname = \"p\"\n  [[pool.server]]\n  address = \"127.0.0.1:9000\"\n",
        token_file.display()
    );
    for (mode, warned) in [(0o644, true), (0o640, true), (0o600, false), (0o400, false)] {
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(mode)).unwrap();
        let (code, stderr) = check(&text);
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(
            stderr.contains(&format!(
                "admin.token_file: {} can be read or written by group or others (mode {mode:04o})",
                token_file.display()
            )),
            warned,
            "mode {mode:o}: {stderr}"
        );
        assert!(!stderr.contains("0123456789abcdef-token"), "{stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
