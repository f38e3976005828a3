//! Access rules and per-client limits: allow and deny on the socket peer, on the source a PROXY
//! header names and on its VPC endpoint ID; headers from peers outside `proxy_protocol_from`;
//! limits per VPC endpoint and per source address.

use tokio::io::AsyncWriteExt;

use crate::support::proxy_header::*;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_and_deny_on_the_socket_peer() {
    let (server, accepted) = echo_server().await;
    let (relay, [listen_allow, listen_deny]) = start_relay(|[listen_allow, listen_deny]| {
        assemble_config(
            None,
            &[
                listener("allow", listen_allow, "p", "allow = [\"127.0.0.1/32\"]"),
                // 127.0.0.2 is in both lists: deny wins.
                listener(
                    "deny",
                    listen_deny,
                    "p",
                    "allow = [\"127.0.0.0/8\"]\ndeny = [\"127.0.0.2/32\", \"127.0.0.3\"]",
                ),
            ],
            &[pool("p", &[server], "")],
        )
    });

    let cases = [
        (
            "allow: 127.0.0.2 not in the list",
            listen_allow,
            "127.0.0.2",
            Some("allow"),
        ),
        (
            "allow: 127.0.0.1 in the list",
            listen_allow,
            "127.0.0.1",
            None,
        ),
        (
            "deny: 127.0.0.2 in both lists",
            listen_deny,
            "127.0.0.2",
            Some("deny"),
        ),
        (
            "deny: 127.0.0.3 as a bare address",
            listen_deny,
            "127.0.0.3",
            Some("deny"),
        ),
        (
            "deny: 127.0.0.1 only allowed",
            listen_deny,
            "127.0.0.1",
            None,
        ),
    ];
    let mut relayed = 0;
    for (what, listen, from, refused_by) in cases {
        match refused_by {
            Some(rule) => {
                let mark = log_mark(&relay);
                let (client, _) = expect_reset(from, listen, b"hello", false, what).await;
                let line = log_since(&relay, mark, &client).await;
                assert_fields(
                    &line,
                    &[
                        ("end", Some("refused_rule")),
                        ("detail", Some(rule)),
                        ("server", Some("-")),
                    ],
                );
            }
            None => {
                let mark = log_mark(&relay);
                let mut stream = connect_from(from, listen).await;
                let client = socket_client(&stream);
                assert_echo(&mut stream, b"hello", what).await;
                finish(stream, what).await;
                relayed += 1;
                let line = log_since(&relay, mark, &client).await;
                assert_fields(&line, &[("end", Some("client_closed"))]);
            }
        }
    }
    // Refused connections never reached the server (the last one was accepted after them).
    assert_eq!(accepted.get(), relayed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_rules_apply_to_the_proxy_source_and_vpce() {
    let (server, accepted) = echo_server().await;
    let allowed_vpce = "vpce-0123456789abcdef0";
    let (relay, [listen_vpce, listen_cidr]) = start_relay(|[listen_vpce, listen_cidr]| {
        assemble_config(
            None,
        &[
            listener(
                "vpce",
                listen_vpce,
                "p",
                // Listed in upper case: the config lowercases IDs, as AWS writes them.
                "proxy_protocol = \"v2\"\nallow_vpce = [\"vpce-0123456789ABCDEF0\", \"vpce-1111111111111111a\"]",
            ),
            // The socket peer (127.0.0.1) is outside this list: only the PROXY source counts.
            listener(
                "cidr",
                listen_cidr,
                "p",
                "proxy_protocol = \"v2\"\nallow = [\"192.0.2.0/24\", \"2001:db8::/32\"]\ndeny = [\"192.0.2.66/32\"]",
            ),
        ],
        &[pool("p", &[server], "")],
    )
    });

    let cases = [
        (
            "allowed VPC endpoint",
            listen_vpce,
            proxy_v2(
                "192.0.2.1:2001",
                "198.51.100.1:443",
                &[aws_tlv(allowed_vpce)],
            ),
            "192.0.2.1:2001",
            None,
        ),
        (
            "another VPC endpoint",
            listen_vpce,
            proxy_v2(
                "192.0.2.1:2002",
                "198.51.100.1:443",
                &[aws_tlv("vpce-99999999999999999")],
            ),
            "192.0.2.1:2002",
            Some("allow_vpce"),
        ),
        (
            "no VPC endpoint TLV",
            listen_vpce,
            proxy_v2("192.0.2.1:2003", "198.51.100.1:443", &[]),
            "192.0.2.1:2003",
            Some("allow_vpce"),
        ),
        (
            "LOCAL (health check) has no VPC endpoint",
            listen_vpce,
            v2(VERSION_LOCAL, UNSPEC, &[]),
            "",
            Some("allow_vpce"),
        ),
        (
            "PROXY source inside allow",
            listen_cidr,
            proxy_v2("192.0.2.10:3001", "198.51.100.1:443", &[]),
            "192.0.2.10:3001",
            None,
        ),
        (
            "PROXY source outside allow",
            listen_cidr,
            proxy_v2("198.51.100.7:3002", "198.51.100.1:443", &[]),
            "198.51.100.7:3002",
            Some("allow"),
        ),
        (
            "PROXY source in deny",
            listen_cidr,
            proxy_v2("192.0.2.66:3003", "198.51.100.1:443", &[]),
            "192.0.2.66:3003",
            Some("deny"),
        ),
        (
            "IPv6 PROXY source inside allow",
            listen_cidr,
            proxy_v2("[2001:db8::5]:3004", "[2001:db8::443]:443", &[]),
            "[2001:db8::5]:3004",
            None,
        ),
        (
            "IPv6 PROXY source outside allow",
            listen_cidr,
            proxy_v2("[2001:db9::5]:3005", "[2001:db8::443]:443", &[]),
            "[2001:db9::5]:3005",
            Some("allow"),
        ),
        (
            "IPv4-mapped IPv6 PROXY source, matched as IPv4",
            listen_cidr,
            proxy_v2("[::ffff:192.0.2.11]:3006", "[::ffff:198.51.100.1]:443", &[]),
            "[::ffff:192.0.2.11]:3006",
            None,
        ),
        (
            "IPv4-mapped IPv6 PROXY source in deny",
            listen_cidr,
            proxy_v2("[::ffff:192.0.2.66]:3007", "[::ffff:198.51.100.1]:443", &[]),
            "[::ffff:192.0.2.66]:3007",
            Some("deny"),
        ),
    ];
    let mut relayed = 0;
    for (what, listen, header, client, refused_by) in cases {
        match refused_by {
            Some(rule) => {
                let mark = log_mark(&relay);
                let (socket, _) = expect_reset("127.0.0.1", listen, &header, false, what).await;
                let client = if client.is_empty() {
                    socket
                } else {
                    client.to_string()
                };
                let line = log_since(&relay, mark, &client).await;
                assert_fields(
                    &line,
                    &[("end", Some("refused_rule")), ("detail", Some(rule))],
                );
            }
            None => {
                let mut stream = connect(listen).await;
                stream.write_all(&header).await.unwrap();
                assert_echo(&mut stream, b"hello", what).await;
                finish(stream, what).await;
                relayed += 1;
                let line = log_for(&relay, client).await;
                assert_fields(&line, &[("end", Some("client_closed"))]);
            }
        }
    }
    let line = log_for(&relay, "192.0.2.1:2001").await;
    assert_fields(&line, &[("vpce", Some(allowed_vpce))]);
    let line = log_for(&relay, "192.0.2.1:2002").await;
    assert_fields(&line, &[("vpce", Some("vpce-99999999999999999"))]);
    assert_eq!(accepted.get(), relayed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_header_from_a_peer_outside_proxy_protocol_from_is_refused() {
    let (server, accepted) = echo_server().await;
    let (relay, [listen]) = start_relay(|[listen]| {
        config(
            listen,
            &[server],
            "proxy_protocol = \"v2\"\nproxy_protocol_from = [\"127.0.0.1/32\"]",
            "",
        )
    });
    let header = proxy_v2("192.0.2.1:4001", "198.51.100.1:443", &[]);

    let mark = log_mark(&relay);
    let (outsider_addr, _) =
        expect_reset("127.0.0.3", listen, &header, false, "peer 127.0.0.3").await;
    let line = log_since(&relay, mark, &outsider_addr).await;
    assert_fields(
        &line,
        &[
            ("end", Some("refused_rule")),
            ("detail", Some("proxy_protocol_from")),
        ],
    );

    let mut trusted = connect_from("127.0.0.1", listen).await;
    trusted.write_all(&header).await.unwrap();
    assert_echo(&mut trusted, b"hello", "peer 127.0.0.1").await;
    finish(trusted, "peer 127.0.0.1").await;
    let line = log_for(&relay, "192.0.2.1:4001").await;
    assert_fields(&line, &[("end", Some("client_closed"))]);
    assert_eq!(accepted.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_vpce_limit() {
    let (server, _) = echo_server().await;
    let (relay, [listen]) = start_relay(|[listen]| {
        config(
            listen,
            &[server],
            "proxy_protocol = \"v2\"\nmax_connections_per_vpce = 2",
            "",
        )
    });
    let (a, b) = ("vpce-0aaaaaaaaaaaaaaa1", "vpce-0bbbbbbbbbbbbbbb2");
    // Distinct PROXY sources, so nothing but the VPC endpoint ties them together.
    let header = |port: u16, vpce: &str| {
        proxy_v2(
            &format!("192.0.2.{}:{port}", port % 200),
            "198.51.100.1:443",
            &[aws_tlv(vpce)],
        )
    };

    let first = try_relayed(listen, None, &header(5001, a))
        .await
        .expect("1st on A");
    let second = try_relayed(listen, None, &header(5002, a))
        .await
        .expect("2nd on A");
    assert!(
        try_relayed(listen, None, &header(5003, a)).await.is_none(),
        "3rd concurrent on A is refused"
    );
    let line = log_for(&relay, "192.0.2.3:5003").await;
    assert_fields(
        &line,
        &[
            ("vpce", Some(a)),
            ("end", Some("refused_limit")),
            ("detail", Some("per_vpce")),
        ],
    );
    let other = try_relayed(listen, None, &header(5004, b))
        .await
        .expect("B is accepted");

    // Closing one on A frees a slot once the relay has seen the close.
    finish(first, "1st on A").await;
    let again = relayed_eventually(listen, None, &header(5005, a)).await;

    for stream in [second, other, again] {
        finish(stream, "held").await;
    }
    // Earlier attempts with this source may have been refused before the relay saw the close.
    let line = log_where(&relay, "relayed 192.0.2.5:5005", |l| {
        field(l, "client") == Some("192.0.2.5:5005") && field(l, "end") == Some("client_closed")
    })
    .await;
    assert_fields(&line, &[("vpce", Some(a))]);
    let line = log_for(&relay, "192.0.2.4:5004").await;
    assert_fields(&line, &[("vpce", Some(b)), ("end", Some("client_closed"))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_source_limit() {
    let (server, _) = echo_server().await;
    let (relay, [listen, listen_pp]) = start_relay(|[listen, listen_pp]| {
        assemble_config(
            None,
            &[
                listener("plain", listen, "p", "max_connections_per_source = 2"),
                // Behind a PROXY header, the limit is on the header's source, not the socket peer.
                listener(
                    "pp",
                    listen_pp,
                    "p",
                    "proxy_protocol = \"v2\"\nmax_connections_per_source = 2",
                ),
            ],
            &[pool("p", &[server], "")],
        )
    });

    let first = try_relayed(listen, Some("127.0.0.1"), b"")
        .await
        .expect("1st");
    let second = try_relayed(listen, Some("127.0.0.1"), b"")
        .await
        .expect("2nd");
    let mark = log_mark(&relay);
    let (third_client, _) =
        expect_reset("127.0.0.1", listen, b"probe", false, "3rd from 127.0.0.1").await;
    let line = log_since(&relay, mark, &third_client).await;
    assert_fields(
        &line,
        &[
            ("end", Some("refused_limit")),
            ("detail", Some("per_source")),
        ],
    );
    let other = try_relayed(listen, Some("127.0.0.2"), b"")
        .await
        .expect("another source is accepted");
    finish(first, "1st").await;
    let again = relayed_eventually(listen, Some("127.0.0.1"), b"").await;

    // PROXY sources: three headers naming 192.0.2.9, all from the socket 127.0.0.1.
    let from_9 = |port: u16| proxy_v2(&format!("192.0.2.9:{port}"), "198.51.100.1:443", &[]);
    let p1 = try_relayed(listen_pp, None, &from_9(6001))
        .await
        .expect("1st 192.0.2.9");
    let p2 = try_relayed(listen_pp, None, &from_9(6002))
        .await
        .expect("2nd 192.0.2.9");
    assert!(
        try_relayed(listen_pp, None, &from_9(6003)).await.is_none(),
        "3rd from 192.0.2.9 is refused"
    );
    let line = log_for(&relay, "192.0.2.9:6003").await;
    assert_fields(
        &line,
        &[
            ("end", Some("refused_limit")),
            ("detail", Some("per_source")),
        ],
    );
    let p3 = try_relayed(
        listen_pp,
        None,
        &proxy_v2("192.0.2.10:6004", "198.51.100.1:443", &[]),
    )
    .await
    .expect("another PROXY source from the same socket peer is accepted");

    for stream in [second, other, again, p1, p2, p3] {
        finish(stream, "held").await;
    }
}
