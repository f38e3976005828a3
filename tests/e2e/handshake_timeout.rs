//! `handshake_timeout`: a client that is silent, or stops halfway through its PROXY header or
//! ClientHello, is reset at the deadline; a well-formed client after them is relayed.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::support::proxy_header::*;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_timeout_closes_silent_and_partial_clients() {
    let (server, accepted) = echo_server().await;
    let routes = "route_fallback = \"pool\"\n[[listener.route]]\nserver_names = [\"api.example.com\"]\npool = \"p\"\n";
    let (relay, [listen_pp, listen_sni]) = start_relay(|[listen_pp, listen_sni]| {
        assemble_config(
            None,
            &[
                listener(
                    "pp",
                    listen_pp,
                    "p",
                    "proxy_protocol = \"any\"\nhandshake_timeout = \"1s\"",
                ),
                listener(
                    "sni",
                    listen_sni,
                    "p",
                    &format!("handshake_timeout = \"1s\"\n{routes}"),
                ),
            ],
            &[pool("p", &[server], "")],
        )
    });

    let half_v2 = proxy_v2("192.0.2.1:1000", "198.51.100.1:443", &[])[..20].to_vec();
    let half_v1 = b"PROXY TCP4 192.0.2.1 ".to_vec();
    // The first 3 bytes of a TLS record header: a ClientHello that never completes.
    let half_hello = vec![0x16, 0x03, 0x01];
    let cases = [
        ("silent, PROXY listener", "pp", listen_pp, Vec::new()),
        ("half a v2 header", "pp", listen_pp, half_v2),
        ("half a v1 line", "pp", listen_pp, half_v1),
        ("silent, SNI listener", "sni", listen_sni, Vec::new()),
        ("half a ClientHello", "sni", listen_sni, half_hello),
    ];
    let tasks: Vec<_> = cases
        .into_iter()
        .map(|(what, name, listen, bytes)| {
            tokio::spawn(async move {
                // Not before the timeout by the client's clock (which starts first); how soon
                // after it, by the relay's (the access log, below).
                let (client, took) = expect_reset("127.0.0.1", listen, &bytes, false, what).await;
                assert!(
                    took >= Duration::from_millis(900),
                    "{what}: closed after {took:?}, before the 1 s timeout"
                );
                (what, name, client)
            })
        })
        .collect();
    for task in tasks {
        let (what, name, client) = task.await.unwrap();
        // Concurrent connections to the two listeners may share a client port.
        let line = log_where(&relay, what, |l| {
            field(l, "client") == Some(client.as_str()) && field(l, "listener") == Some(name)
        })
        .await;
        assert_fields(
            &line,
            &[
                ("end", Some("handshake_timeout")),
                ("detail", None),
                ("pool", Some("-")),
                ("server", Some("-")),
            ],
        );
        let ms: f64 = field(&line, "duration_ms").unwrap().parse().unwrap();
        assert!(
            (990.0..2000.0).contains(&ms),
            "{what}: the relay ended it after {ms} ms, expected about 1 s: {line}"
        );
    }
    // A well-formed client after them is relayed, and only it reached the server.
    let mut stream = connect(listen_pp).await;
    stream.write_all(b"PROXY UNKNOWN\r\n").await.unwrap();
    assert_echo(&mut stream, b"on time", "on time").await;
    finish(stream, "on time").await;
    assert_eq!(accepted.get(), 1);
}
