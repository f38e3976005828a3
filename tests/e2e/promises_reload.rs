//! A SIGHUP swaps the access rules and limits of a listener that stays open (issue 21, item
//! 13): `allow`, `deny`, `allow_vpce`, `proxy_protocol_from`, the listener, per-source,
//! per-VPC-endpoint and process limits. A tightened rule applies to the very first connection
//! accepted after the reload (no retry loop here: a relay that applied it late fails), a
//! loosened one lets the same client in again, and a connection established before keeps
//! relaying under the settings it started with.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::proxy_header::{aws_tlv, proxy_v2};
use crate::support::*;

const VPCE_A: &str = "vpce-0aaaaaaaaaaaaaaa1";
const VPCE_B: &str = "vpce-0bbbbbbbbbbbbbbb2";
const RELOAD_LIMIT: Duration = Duration::from_secs(10);

/// The listener's rules before and between the tightened ones: they admit every client below, with limits set (so the per-client counts are kept from the start).
const OPEN: &[(&str, &str)] = &[
    ("proxy_protocol", "\"v2\""),
    ("proxy_protocol_from", "[\"127.0.0.0/8\"]"),
    ("allow", "[\"192.0.2.0/24\"]"),
    ("deny", "[]"),
    (
        "allow_vpce",
        "[\"vpce-0aaaaaaaaaaaaaaa1\", \"vpce-0bbbbbbbbbbbbbbb2\"]",
    ),
    ("max_connections_per_source", "5"),
    ("max_connections_per_vpce", "5"),
];

/// The config: the open rules with `changes` (key, value) made, plus `global` lines.
fn rules_config(
    admin: SocketAddr,
    listen: SocketAddr,
    server: SocketAddr,
    changes: &[(&str, &str)],
    global: &str,
) -> String {
    let mut listener = String::new();
    for (key, value) in OPEN {
        let value = changes
            .iter()
            .find(|(k, _)| k == key)
            .map_or(*value, |(_, v)| v);
        listener.push_str(&format!("{key} = {value}\n"));
    }
    for (key, value) in changes {
        if !OPEN.iter().any(|(k, _)| k == key) {
            listener.push_str(&format!("{key} = {value}\n"));
        }
    }
    format!(
        "{global}\n{}",
        config_with_admin(admin, listen, &[server], &listener, "")
    )
}

/// Writes `text` as the config, sends SIGHUP and waits until the relay says the reload number
/// `n` is done (it logs that once the new settings are in place).
async fn reload(relay: &mut RelayProcess, text: &str, n: usize) {
    relay.write_config(text).unwrap();
    relay.signal("HUP");
    let done = eventually(RELOAD_LIMIT, || {
        let stderr = relay.stderr();
        stderr.contains("still running the previous config")
            || stderr.matches("reload: done").count() >= n
    })
    .await;
    let stderr = relay.stderr();
    assert!(
        done && stderr.matches("reload: done").count() >= n,
        "reload {n} not done within {RELOAD_LIMIT:?}:\n{stderr}\nconfig:\n{text}"
    );
}

/// A tightened setting: what it is, the keys changed, `[global]` lines, and the `detail` of the
/// refusal it brings.
type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str, &'a str);

/// A PROXY v2 header from 192.0.2.`host`:`port` through `vpce`.
fn header(host: u8, port: u16, vpce: &str) -> Vec<u8> {
    proxy_v2(
        &format!("192.0.2.{host}:{port}"),
        "198.51.100.1:443",
        &[aws_tlv(vpce)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_rules_and_limits_on_a_live_listener_at_once() {
    let (server, _) = echo_server().await;
    let (mut relay, [listen, admin]) =
        start_relay(|[listen, admin]| rules_config(admin, listen, server, &[], ""));
    let open = rules_config(admin, listen, server, &[], "");

    // Held across every reload: it counts under the limits (one connection of 192.0.2.1,
    // one of VPCE_A, one on the listener and the process) and must keep relaying.
    let mut established = try_relayed(listen, None, &header(1, 1000, VPCE_A))
        .await
        .expect("relayed under the open rules");

    let cases: &[Case] = &[
        (
            "allow narrowed",
            &[("allow", "[\"198.51.100.0/24\"]")],
            "",
            "allow",
        ),
        ("deny added", &[("deny", "[\"192.0.2.0/28\"]")], "", "deny"),
        (
            "allow_vpce narrowed",
            &[("allow_vpce", "[\"vpce-0bbbbbbbbbbbbbbb2\"]")],
            "",
            "allow_vpce",
        ),
        (
            "proxy_protocol_from narrowed",
            &[("proxy_protocol_from", "[\"127.0.0.2/32\"]")],
            "",
            "proxy_protocol_from",
        ),
        (
            "listener limit set",
            &[("max_connections", "1")],
            "",
            "listener",
        ),
        (
            "per-source limit lowered",
            &[("max_connections_per_source", "1")],
            "",
            "per_source",
        ),
        (
            "per-VPC-endpoint limit lowered",
            &[("max_connections_per_vpce", "1")],
            "",
            "per_vpce",
        ),
        (
            "process limit lowered",
            &[],
            "[global]\nmax_connections = 1\n",
            "process",
        ),
    ];
    let mut reloads = 0;
    let mut port = 2000;
    for (what, changes, global, detail) in cases {
        reloads += 1;
        reload(
            &mut relay,
            &rules_config(admin, listen, server, changes, global),
            reloads,
        )
        .await;

        // The first connection after the reload is refused by the tightened rule. The
        // per-VPC-endpoint case comes from another source, so that only the endpoint is shared
        // with the established connection.
        port += 1;
        let host = if *detail == "per_vpce" { 2 } else { 1 };
        let mark = log_mark(&relay);
        let (socket, _) = expect_reset(
            "127.0.0.1",
            listen,
            &[header(host, port, VPCE_A), b"probe".to_vec()].concat(),
            false,
            what,
        )
        .await;
        // Refused before the header is read (by proxy_protocol_from, or at accept by a
        // limit), the client is the socket; otherwise the header's source.
        let client = match *detail {
            "proxy_protocol_from" | "listener" | "process" => socket,
            _ => format!("192.0.2.{host}:{port}"),
        };
        let line = log_since(&relay, mark, &client).await;
        assert_fields(
            &line,
            &[
                (
                    "end",
                    Some(
                        if matches!(*detail, "listener" | "process" | "per_source" | "per_vpce") {
                            "refused_limit"
                        } else {
                            "refused_rule"
                        },
                    ),
                ),
                ("detail", Some(detail)),
            ],
        );
        // What the tightened rule does not cover still gets through.
        match *detail {
            "proxy_protocol_from" => {
                let other = try_relayed(listen, Some("127.0.0.2"), &header(1, port + 500, VPCE_A))
                    .await
                    .unwrap_or_else(|| panic!("{what}: a peer inside the new list was refused"));
                finish(other, what).await;
            }
            "allow_vpce" => {
                let other = try_relayed(listen, None, &header(1, port + 500, VPCE_B))
                    .await
                    .unwrap_or_else(|| panic!("{what}: the endpoint still listed was refused"));
                finish(other, what).await;
            }
            "per_source" => {
                let other = try_relayed(listen, None, &header(3, port + 500, VPCE_B))
                    .await
                    .unwrap_or_else(|| panic!("{what}: another source was refused"));
                finish(other, what).await;
            }
            _ => {}
        }
        // Established before, it relays on.
        assert_echo(&mut established, b"still here", what).await;

        // Loosened again: the same client is admitted by the first connection after it.
        reloads += 1;
        reload(&mut relay, &open, reloads).await;
        port += 1;
        let again = try_relayed(listen, None, &header(host, port, VPCE_A))
            .await
            .unwrap_or_else(|| panic!("{what}: still refused after the rules were loosened"));
        finish(again, what).await;
    }
    finish(established, "established").await;
    assert_eq!(
        metric(admin, "l4relay_config_reloads_total", &[("result", "ok")]).await,
        reloads as f64
    );
}
