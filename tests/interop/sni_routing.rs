//! SNI routing with TLS passed through: curl asks for a.test and b.test at the same relay
//! address and reaches two nginx TLS servers, each verified by curl against the CA; a name no
//! route has follows `route_fallback` (the listener's pool, or refused).

use std::net::SocketAddr;

use crate::certs::Ca;
use crate::clients::curl;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_reaches_two_nginx_tls_servers_by_name_and_unknown_names_follow_route_fallback() {
    let dir = crate::peers::Scratch::new("interop-sni");
    let ca = Ca::new(&dir, "sni");
    let leaves = [
        ("a", ca.leaf("a", &["a.test"])),
        ("b", ca.leaf("b", &["b.test"])),
        ("default", ca.leaf("default", &["default.test"])),
    ];
    let (_nginx, addrs) = crate::nginx::start(&dir, 3, |addrs| {
        leaves
            .iter()
            .zip(addrs)
            .map(|((name, leaf), addr)| {
                format!(
                    "    server {{ listen {addr} ssl; ssl_certificate {}; ssl_certificate_key {}; location / {{ return 200 'server={name} sni=$ssl_server_name\\n'; }} }}\n",
                    leaf.cert.display(),
                    leaf.key.display()
                )
            })
            .collect()
    })
    .await;

    let listener = |name: &str, addr: SocketAddr, fallback: &str| {
        format!(
            "[[listener]]\nname = \"{name}\"\nlisten = \"{addr}\"\npool = \"default\"\nroute_fallback = \"{fallback}\"\n  [[listener.route]]\n  server_names = [\"a.test\"]\n  pool = \"a\"\n  [[listener.route]]\n  server_names = [\"b.test\"]\n  pool = \"b\"\n\n"
        )
    };
    let pools: Vec<String> = ["a", "b", "default"]
        .iter()
        .zip(&addrs)
        .map(|(name, addr)| {
            format!("[[pool]]\nname = \"{name}\"\n  [[pool.server]]\n  address = \"{addr}\"\n\n")
        })
        .collect();
    let (relay, [to_pool, refuse]) = start_relay(|[to_pool, refuse]| {
        assemble_config(
            None,
            &[
                listener("to_pool", to_pool, "pool"),
                listener("refuse", refuse, "refuse"),
            ],
            &pools,
        )
    });
    let ca_file = ca.file.display().to_string();
    let https = |name: &str, addr: SocketAddr| {
        vec![
            "--cacert".to_string(),
            ca_file.clone(),
            "--resolve".to_string(),
            format!("{name}:{}:{}", addr.port(), addr.ip()),
            format!("https://{name}:{}/", addr.port()),
        ]
    };
    let run = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(&args).await
    };

    for listener in [to_pool, refuse] {
        for name in ["a", "b"] {
            let host = format!("{name}.test");
            let ran = run(https(&host, listener)).await;
            assert!(ran.ok(), "{host} via {listener}: {}", ran.shown());
            assert_eq!(ran.stdout.trim(), format!("server={name} sni={host}"));
        }
    }
    let routed = || {
        relay
            .access_log()
            .lines()
            .filter(|l| field(l, "sni").is_some_and(|s| s == "a.test" || s == "b.test"))
            .count()
    };
    eventually(STEP_LIMIT, || routed() == 4).await;
    assert_eq!(routed(), 4, "{}", relay.access_log());

    // c.test has no route: the listener's own pool (whose certificate is default.test, so
    // curl is told not to check the name), or refused.
    let mut args = https("c.test", to_pool);
    args.insert(0, "--insecure".into());
    let ran = run(args).await;
    assert!(ran.ok(), "{}", ran.shown());
    assert_eq!(ran.stdout.trim(), "server=default sni=c.test");

    let mark = log_mark(&relay);
    let ran = run(https("c.test", refuse)).await;
    assert!(!ran.ok(), "{}", ran.shown());
    let find = || {
        relay
            .access_log()
            .lines()
            .skip(mark)
            .find(|l| field(l, "listener") == Some("refuse"))
            .map(str::to_string)
    };
    eventually(STEP_LIMIT, || find().is_some()).await;
    let line = find().expect("a line for the refused name");
    assert_eq!(field(&line, "end"), Some("refused_rule"), "{line}");
    assert_eq!(field(&line, "detail"), Some("no_route"), "{line}");
    assert_eq!(field(&line, "sni"), Some("c.test"), "{line}");
}
