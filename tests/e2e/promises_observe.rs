//! Admin and observability settings the README promises (issue 21, item 13): `token_file` read
//! at start (its rotation by SIGHUP is the admin tests' own), `metrics = false`,
//! `log_skip_empty`, `log_format = "off"`, and the `vpce` metric label bounded by the
//! allowlist (`other` for every ID not in it).

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::proxy_header::{aws_tlv, proxy_v2};
use crate::support::*;

const DRAIN_PATH: &str = "/pools/p/servers/s0/drain";
const READY_PATH: &str = "/pools/p/servers/s0/ready";

/// Relays one short exchange (`payload`, or nothing: connect and close) from a fresh
/// connection; returns its client address.
async fn exchange(listen: SocketAddr, payload: &[u8]) -> SocketAddr {
    let mut stream = connect(listen).await;
    let local = stream.local_addr().unwrap();
    if !payload.is_empty() {
        assert_echo(&mut stream, payload, "exchange").await;
    }
    finish(stream, "exchange").await;
    local
}

/// Waits until the relay has counted `n` relayed connections on listener "test" (counted
/// when each ends, before its access-log line is handed to the log writer).
async fn relayed_count(admin: SocketAddr, n: usize) {
    let deadline = std::time::Instant::now() + STEP_LIMIT;
    loop {
        let count = metric(
            admin,
            "l4relay_connections_total",
            &[("listener", "test"), ("outcome", "relayed")],
        )
        .await;
        if count >= n as f64 {
            assert_eq!(count, n as f64);
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{count} of {n} connections counted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_file_is_read_at_start() {
    let (server, _) = echo_server().await;
    let dir = scratch_dir("token-file");
    let token_path = dir.join("admin.token");
    let token = "rotate-me-0123456789abcdef";
    // The first line is the token; what follows it is not part of it.
    std::fs::write(&token_path, format!("{token}\nnot the token\n")).unwrap();
    let (relay, [listen, admin]) = start_relay(|[listen, admin]| {
        config_with_admin(admin, listen, &[server], "", "").replacen(
            "[admin]\n",
            &format!("[admin]\ntoken_file = \"{}\"\n", token_path.display()),
            1,
        )
    });
    assert!(!std::fs::read_to_string(&relay.config_path)
        .unwrap()
        .contains(token));

    for (what, sent) in [
        ("no token", None),
        ("a wrong token", Some("rotate-me-0123456789abcdeX")),
        (
            "the whole file",
            Some("rotate-me-0123456789abcdef not the token"),
        ),
    ] {
        let (code, body) = admin_request(admin, "POST", DRAIN_PATH, sent).await;
        assert_eq!(code, 401, "POST with {what}: {body}");
    }
    let status = get_status(admin).await;
    assert_eq!(servers_json(&status, "p", "s0")[0]["state"], "up");

    let (code, body) = admin_request(admin, "POST", DRAIN_PATH, Some(token)).await;
    assert_eq!(code, 200, "POST with the file's token: {body}");
    let status = get_status(admin).await;
    assert_eq!(
        servers_json(&status, "p", "s0")[0]["state"],
        "draining",
        "{status}"
    );
    let (code, body) = admin_request(admin, "POST", READY_PATH, Some(token)).await;
    assert_eq!(code, 200, "{body}");
    exchange(listen, b"served again").await;

    // `check` reads it too: a token file that cannot be read is an error at its key.
    let config = std::fs::read_to_string(&relay.config_path).unwrap();
    let missing = dir.join("missing.token");
    let checked = dir.join("check.toml");
    std::fs::write(
        &checked,
        config.replace(
            &token_path.display().to_string(),
            &missing.display().to_string(),
        ),
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&checked)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("admin.token_file: cannot read"), "{stderr}");
    drop(relay);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_false_answers_404_and_still_relays() {
    let (server, _) = echo_server().await;
    let (relay, [listen, admin]) = start_relay(|[listen, admin]| {
        config_with_admin(admin, listen, &[server], "", "").replacen(
            "[admin]\n",
            "[admin]\nmetrics = false\n",
            1,
        )
    });
    let client = exchange(listen, b"counted nowhere").await;
    let line = log_for(&relay, client).await;
    assert_eq!(field(&line, "end"), Some("client_closed"), "{line}");
    let (code, body) = admin_request(admin, "GET", "/metrics", None).await;
    assert_eq!(code, 404, "{body}");
    // The rest of the admin API stays.
    let (code, _) = admin_request(admin, "GET", "/healthz", None).await;
    assert_eq!(code, 200);
    let (code, _) = admin_request(admin, "GET", "/readyz", None).await;
    assert_eq!(code, 200);
    let status = get_status(admin).await;
    assert_eq!(servers_json(&status, "p", "s0")[0]["state"], "up");
}

/// An empty connection (an NLB TCP health check: connect, close), then one that carries bytes:
/// with `log_skip_empty` only the second is logged; without it, both (so that the first
/// would show here if the setting did nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_skip_empty_leaves_out_connections_without_payload() {
    let (server, _) = echo_server().await;
    for skip in [true, false] {
        let (relay, [listen, admin]) = start_relay(|[listen, admin]| {
            format!(
                "[global]\nlog_skip_empty = {skip}\n\n{}",
                config_with_admin(admin, listen, &[server], "", "")
            )
        });
        let empty = exchange(listen, b"").await;
        // The empty connection is over (counted) before the next one begins, so its line, if
        // it were written, would come first.
        relayed_count(admin, 1).await;
        let with_bytes = exchange(listen, b"payload").await;
        let line = log_for(&relay, with_bytes).await;
        assert_eq!(field(&line, "bytes_c2s"), Some("7"), "{line}");
        relayed_count(admin, 2).await;
        let log = relay.access_log();
        let empty_line = log
            .lines()
            .find(|l| field(l, "client") == Some(empty.to_string().as_str()));
        if skip {
            assert_eq!(empty_line, None, "log_skip_empty = true:\n{log}");
            assert_eq!(log.lines().count(), 1, "{log}");
        } else {
            let empty_line = empty_line.unwrap_or_else(|| panic!("no empty line:\n{log}"));
            assert_fields(
                empty_line,
                &[
                    ("bytes_c2s", Some("0")),
                    ("bytes_s2c", Some("0")),
                    ("end", Some("client_closed")),
                ],
            );
        }
    }
}

/// `log_format = "off"`: connections relay and are counted, and nothing is written to stdout,
/// even by the time the process has exited. The same steps with `text` write every line, so
/// a format that still logged would show here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_off_writes_no_access_log() {
    const CONNECTIONS: usize = 5;
    let (server, _) = echo_server().await;
    for format in ["off", "text"] {
        let (mut relay, [listen, admin]) = start_relay(|[listen, admin]| {
            format!(
                "[global]\nlog_format = \"{format}\"\n\n[drain]\nannounce = \"10ms\"\ndeadline = \"1s\"\n\n{}",
                config_with_admin(admin, listen, &[server], "", "")
            )
        });
        for i in 0..CONNECTIONS {
            exchange(listen, format!("message {i}").as_bytes()).await;
        }
        relayed_count(admin, CONNECTIONS).await;
        if format == "text" {
            relay.wait_for_log_lines(CONNECTIONS, STEP_LIMIT).await;
        }
        relay.signal("TERM");
        assert_eq!(
            relay.wait_exit(Duration::from_secs(10)),
            Some(0),
            "{}",
            relay.stderr()
        );
        let lines = relay.access_log().lines().count();
        match format {
            "off" => assert_eq!(lines, 0, "log_format = off:\n{}", relay.access_log()),
            _ => assert_eq!(lines, CONNECTIONS, "{}", relay.access_log()),
        }
    }
}

/// `l4relay_vpce_connections_total`'s `vpce` label: an ID of the listener's `allow_vpce`, or
/// `other`, so that a client cannot mint series by sending IDs of its own (counted before
/// the rules, refused ones too). An ID added to the allowlist by a reload gets its own series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vpce_label_is_bounded_by_the_allowlist() {
    let (server, _) = echo_server().await;
    let listed = "vpce-0aaaaaaaaaaaaaaa1";
    let unlisted = [
        "vpce-0bbbbbbbbbbbbbbb2",
        "vpce-0ccccccccccccccc3",
        "vpce-0ddddddddddddddd4",
    ];
    let build = |[listen, open, admin]: [SocketAddr; 3], allow_vpce: &str| {
        assemble_config(
            Some(admin),
            &[
                listener(
                    "listed",
                    listen,
                    "p",
                    &format!("proxy_protocol = \"v2\"\nallow_vpce = [{allow_vpce}]"),
                ),
                // No allowlist of endpoints: every ID is `other` here.
                listener(
                    "open",
                    open,
                    "p",
                    "proxy_protocol = \"v2\"\nallow = [\"192.0.2.0/24\"]",
                ),
            ],
            &[pool("p", &[server], "")],
        )
    };
    let (mut relay, addrs) = start_relay(|addrs| build(addrs, &format!("\"{listed}\"")));
    let [listen, open, admin] = addrs;
    let header = |port: u16, vpce: &str| {
        proxy_v2(
            &format!("192.0.2.1:{port}"),
            "198.51.100.1:443",
            &[aws_tlv(vpce)],
        )
    };

    let relayed = try_relayed(listen, None, &header(1, listed))
        .await
        .expect("the listed endpoint is relayed");
    finish(relayed, "listed").await;
    for (i, id) in unlisted.iter().enumerate() {
        assert!(
            try_relayed(listen, None, &header(10 + i as u16, id))
                .await
                .is_none(),
            "{id} is not listed"
        );
        let relayed = try_relayed(open, None, &header(20 + i as u16, id))
            .await
            .expect("relayed on the open listener");
        finish(relayed, id).await;
    }
    // Counted at the refusal, or when the relayed ones end: wait for the last.
    log_for(&relay, "192.0.2.1:22").await;

    let text = metrics_text(admin).await;
    let count = |listener: &str, vpce: &str| {
        sample_in(
            &text,
            "l4relay_vpce_connections_total",
            &[("listener", listener), ("vpce", vpce)],
        )
    };
    assert_eq!(count("listed", listed), Some(1.0), "{text}");
    assert_eq!(count("listed", "other"), Some(3.0), "{text}");
    assert_eq!(count("open", "other"), Some(3.0), "{text}");
    for id in unlisted {
        for listener in ["listed", "open"] {
            assert_eq!(count(listener, id), None, "a series for {id} on {listener}");
        }
    }

    // Listed by a reload: its own series from then on.
    relay
        .write_config(build(addrs, &format!("\"{listed}\", \"{}\"", unlisted[0])))
        .unwrap();
    relay.signal("HUP");
    relay.wait_for_stderr("reload: done", STEP_LIMIT);
    let relayed = try_relayed(listen, None, &header(30, unlisted[0]))
        .await
        .expect("listed by the reload");
    finish(relayed, "newly listed").await;
    log_for(&relay, "192.0.2.1:30").await;
    let text = metrics_text(admin).await;
    assert_eq!(
        sample_in(
            &text,
            "l4relay_vpce_connections_total",
            &[("listener", "listed"), ("vpce", unlisted[0])]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample_in(
            &text,
            "l4relay_vpce_connections_total",
            &[("listener", "listed"), ("vpce", "other")]
        ),
        Some(3.0),
        "{text}"
    );
}
