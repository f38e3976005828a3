//! TLS origination to nginx: plain clients (curl) in, TLS from the relay to nginx. nginx
//! reports what it saw of the handshake (the SNI, the version, the ALPN protocol, the relay's
//! client certificate, which nginx verifies); a pool trusting the wrong CA, or expecting
//! another name, is refused with the `detail` that says so.

use std::net::SocketAddr;

use crate::certs::Ca;
use crate::clients::curl;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_sends_sni_verifies_nginx_against_its_ca_and_refuses_a_wrong_ca_or_name() {
    let dir = crate::peers::Scratch::new("interop-origin");
    let ca = Ca::new(&dir, "origin");
    let other_ca = Ca::new(&dir, "other");
    let client_ca = Ca::new(&dir, "relay-client");
    let origin = ca.leaf("origin", &["origin.test"]);
    let relay_client = client_ca.leaf("relay-client", &["relay.client.test"]);
    let (_nginx, addrs) = crate::nginx::start(&dir, 1, |addrs| {
        format!(
            "    server {{
        listen {} ssl;
        ssl_certificate {};
        ssl_certificate_key {};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_client_certificate {};
        ssl_verify_client optional;
        location / {{ return 200 'sni=$ssl_server_name protocol=$ssl_protocol alpn=$ssl_alpn_protocol client_verify=$ssl_client_verify client=$ssl_client_s_dn\\n'; }}
    }}",
            addrs[0],
            origin.cert.display(),
            origin.key.display(),
            client_ca.file.display(),
        )
    })
    .await;

    let listener = |name: &str, addr: SocketAddr| {
        format!("[[listener]]\nname = \"{name}\"\nlisten = \"{addr}\"\npool = \"{name}\"\n\n")
    };
    let pool = |name: &str, tls: String| {
        format!(
            "[[pool]]\nname = \"{name}\"\nretries = 0\n  [pool.tls]\n{tls}  [[pool.server]]\n  name = \"nginx\"\n  address = \"{}\"\n\n",
            addrs[0]
        )
    };
    let (relay, [good, wrong_ca, wrong_name]) = start_relay(|[good, wrong_ca, wrong_name]| {
        assemble_config(
            None,
            &[
                listener("good", good),
                listener("wrong_ca", wrong_ca),
                listener("wrong_name", wrong_name),
            ],
            &[
                pool(
                    "good",
                    format!(
                        "  sni = \"origin.test\"\n  ca_file = \"{}\"\n  alpn = [\"http/1.1\"]\n  cert = \"{}\"\n  key = \"{}\"\n",
                        ca.file.display(),
                        relay_client.cert.display(),
                        relay_client.key.display()
                    ),
                ),
                pool(
                    "wrong_ca",
                    format!(
                        "  sni = \"origin.test\"\n  ca_file = \"{}\"\n",
                        other_ca.file.display()
                    ),
                ),
                pool(
                    "wrong_name",
                    format!(
                        "  sni = \"elsewhere.test\"\n  ca_file = \"{}\"\n",
                        ca.file.display()
                    ),
                ),
            ],
        )
    });

    let ran = curl(&[&format!("http://{good}/")]).await;
    assert!(ran.ok(), "{}", ran.shown());
    let body = ran.stdout.trim();
    for expected in [
        "sni=origin.test",
        "protocol=TLSv1.3",
        "alpn=http/1.1",
        "client_verify=SUCCESS",
        "CN=relay.client.test",
    ] {
        assert!(
            body.contains(expected),
            "nginx saw {body:?}, not {expected}"
        );
    }

    for (addr, listener, detail) in [
        (wrong_ca, "wrong_ca", "tls_certificate_unknown_issuer"),
        (wrong_name, "wrong_name", "tls_certificate_name_mismatch"),
    ] {
        let mark = log_mark(&relay);
        let ran = curl(&[&format!("http://{addr}/")]).await;
        assert!(!ran.ok(), "{listener}: {}", ran.shown());
        assert!(!ran.stdout.contains("sni="), "{listener}: {}", ran.shown());
        let find = || {
            relay
                .access_log()
                .lines()
                .skip(mark)
                .find(|l| field(l, "listener") == Some(listener))
                .map(str::to_string)
        };
        eventually(STEP_LIMIT, || find().is_some()).await;
        let line = find().unwrap_or_else(|| panic!("no line for {listener}"));
        assert_eq!(field(&line, "end"), Some("connect_failed"), "{line}");
        assert_eq!(field(&line, "detail"), Some(detail), "{line}");
    }
}

/// Upstream session resumption, on by default: through a pool to nginx, the first connection
/// is a full handshake and the next ones resume (TLS 1.3 tickets, and TLS 1.2 against a server
/// that speaks only 1.2), as both nginx (`$ssl_session_reused`) and the relay's
/// `l4relay_upstream_tls_handshakes_total` say; with `session_cache = 0`, none resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_resumes_sessions_to_nginx_after_the_first_handshake_unless_the_cache_is_off() {
    let dir = crate::peers::Scratch::new("interop-resume");
    let ca = Ca::new(&dir, "origin");
    let origin = ca.leaf("origin", &["origin.test"]);
    let (nginx, addrs) = crate::nginx::start(&dir, 2, |addrs| {
        let server = |addr: SocketAddr, protocols: &str| {
            format!(
                "    server {{
        listen {addr} ssl;
        ssl_certificate {};
        ssl_certificate_key {};
        ssl_protocols {protocols};
        ssl_session_cache shared:resume:1m;
        ssl_session_tickets on;
        location / {{ return 200 'reused=$ssl_session_reused protocol=$ssl_protocol\\n'; }}
    }}
",
                origin.cert.display(),
                origin.key.display(),
            )
        };
        server(addrs[0], "TLSv1.2 TLSv1.3") + &server(addrs[1], "TLSv1.2")
    })
    .await;

    let pool = |name: &str, server: SocketAddr, extra: &str| {
        format!(
            "[[pool]]\nname = \"{name}\"\nretries = 0\n  [pool.tls]\n  sni = \"origin.test\"\n  ca_file = \"{}\"\n{extra}  [[pool.server]]\n  name = \"nginx\"\n  address = \"{server}\"\n\n",
            ca.file.display()
        )
    };
    let cases = [
        ("tls13", addrs[0], "", "TLSv1.3"),
        ("tls12", addrs[1], "", "TLSv1.2"),
        ("off", addrs[0], "  session_cache = 0\n", "TLSv1.3"),
    ];
    let (_relay, [admin, tls13, tls12, off]) = start_relay(|[admin, tls13, tls12, off]| {
        let listens = [tls13, tls12, off];
        assemble_config(
            Some(admin),
            &cases
                .iter()
                .zip(listens)
                .map(|((name, ..), listen)| listener(name, listen, name, ""))
                .collect::<Vec<_>>(),
            &cases
                .iter()
                .map(|(name, server, extra, _)| pool(name, *server, extra))
                .collect::<Vec<_>>(),
        )
    });

    const CONNECTIONS: usize = 4;
    for ((name, _, extra, protocol), listen) in cases.iter().zip([tls13, tls12, off]) {
        let resumes = extra.is_empty();
        for n in 0..CONNECTIONS {
            let ran = curl(&[&format!("http://{listen}/")]).await;
            assert!(ran.ok(), "{name} #{n}: {}\n{}", ran.shown(), nginx.output());
            let body = ran.stdout.trim();
            let reused = if resumes && n > 0 { "r" } else { "." };
            assert_eq!(
                body,
                format!("reused={reused} protocol={protocol}"),
                "{name}: connection #{n} as nginx saw it"
            );
        }
        let mut counts = [0.0; 2];
        for (count, kind) in counts.iter_mut().zip(["full", "resumed"]) {
            *count = metric(
                admin,
                "l4relay_upstream_tls_handshakes_total",
                &[("pool", name), ("server", "nginx"), ("kind", kind)],
            )
            .await;
        }
        let (full, resumed) = (counts[0], counts[1]);
        let expected = if resumes {
            (1.0, (CONNECTIONS - 1) as f64)
        } else {
            (CONNECTIONS as f64, 0.0)
        };
        assert_eq!(
            (full, resumed),
            expected,
            "{name}: (full, resumed) handshakes"
        );
    }
}

/// Two servers behind one name (one SNI, `origin.test`) that do not share ticket keys, as the
/// front ends behind an Azure name need not: each keeps its own sessions, so round-robin over
/// them resumes with each after its first handshake, rather than offering one's tickets to the
/// other (which refuses them and makes every handshake full).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_behind_one_name_that_do_not_share_ticket_keys_each_resume_their_own_sessions() {
    let dir = crate::peers::Scratch::new("interop-resume-apart");
    let ca = Ca::new(&dir, "origin");
    let origin = ca.leaf("origin", &["origin.test"]);
    // A session cache zone each: nginx keeps its ticket keys there, so a zone apiece means
    // keys apiece.
    let (nginx, addrs) = crate::nginx::start(&dir, 2, |addrs| {
        addrs
            .iter()
            .enumerate()
            .map(|(i, addr)| {
                format!(
                    "    server {{
        listen {addr} ssl;
        ssl_certificate {};
        ssl_certificate_key {};
        ssl_protocols TLSv1.3;
        ssl_session_cache shared:apart{i}:1m;
        ssl_session_tickets on;
        location / {{ return 200 'server={i} reused=$ssl_session_reused\\n'; }}
    }}
",
                    origin.cert.display(),
                    origin.key.display(),
                )
            })
            .collect()
    })
    .await;
    let (_relay, [admin, listen]) = start_relay(|[admin, listen]| {
        let mut pool = format!(
            "[[pool]]\nname = \"apart\"\nbalance = \"round-robin\"\nretries = 0\n  [pool.tls]\n  sni = \"origin.test\"\n  ca_file = \"{}\"\n",
            ca.file.display()
        );
        for (i, addr) in addrs.iter().enumerate() {
            pool.push_str(&format!(
                "  [[pool.server]]\n  name = \"nginx-{i}\"\n  address = \"{addr}\"\n"
            ));
        }
        assemble_config(
            Some(admin),
            &[listener("apart", listen, "apart", "")],
            &[pool],
        )
    });

    const ROUNDS: usize = 3;
    let mut seen = Vec::new();
    for _ in 0..ROUNDS * addrs.len() {
        let ran = curl(&[&format!("http://{listen}/")]).await;
        assert!(ran.ok(), "{}\n{}", ran.shown(), nginx.output());
        seen.push(ran.stdout.trim().to_string());
    }
    let mut expected = Vec::new();
    for round in 0..ROUNDS {
        for server in 0..addrs.len() {
            let reused = if round == 0 { "." } else { "r" };
            expected.push(format!("server={server} reused={reused}"));
        }
    }
    // Round-robin's first pick may be either server: compare as sets per round.
    for (round, (seen, expected)) in seen
        .chunks(addrs.len())
        .zip(expected.chunks(addrs.len()))
        .enumerate()
    {
        let (mut seen, mut expected) = (seen.to_vec(), expected.to_vec());
        seen.sort();
        expected.sort();
        assert_eq!(seen, expected, "round {round}, as nginx saw it");
    }
    for server in ["nginx-0", "nginx-1"] {
        for (kind, expected) in [("full", 1.0), ("resumed", (ROUNDS - 1) as f64)] {
            let count = metric(
                admin,
                "l4relay_upstream_tls_handshakes_total",
                &[("pool", "apart"), ("server", server), ("kind", kind)],
            )
            .await;
            assert_eq!(count, expected, "{server}: {kind} handshakes");
        }
    }
}
