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
