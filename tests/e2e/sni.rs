//! SNI routing with a real rustls ClientHello: routes to pools by exact and wildcard names, a
//! ClientHello in several segments or records, after a PROXY header, and `route_fallback`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::support::proxy_header::*;
use crate::support::*;

const ROUTES: &str = "[[listener.route]]\nserver_names = [\"api.example.com\", \"*.apps.example.com\"]\npool = \"other\"\n\n[[listener.route]]\nserver_names = [\"special.apps.example.com\"]\npool = \"default\"\n";

struct SniSetup {
    relay: RelayProcess,
    listen: SocketAddr,
    listen_strict: SocketAddr,
    /// Expects a PROXY v2 header, then routes on the ClientHello after it.
    listen_pp: SocketAddr,
    default: (Accepted, mpsc::UnboundedReceiver<Received>),
    other: (Accepted, mpsc::UnboundedReceiver<Received>),
}

async fn sni_setup() -> SniSetup {
    let (default_addr, default_accepted, default_rx) = recording_server().await;
    let (other_addr, other_accepted, other_rx) = recording_server().await;
    let (relay, [listen, listen_strict, listen_pp]) =
        start_relay(|[listen, listen_strict, listen_pp]| {
            assemble_config(
                None,
                &[
                    listener(
                        "pp",
                        listen_pp,
                        "default",
                        &format!("proxy_protocol = \"v2\"\n{ROUTES}"),
                    ),
                    listener(
                        "sni",
                        listen,
                        "default",
                        &format!("route_fallback = \"pool\"\n{ROUTES}"),
                    ),
                    listener(
                        "strict",
                        listen_strict,
                        "default",
                        &format!("route_fallback = \"refuse\"\n{ROUTES}"),
                    ),
                ],
                &[
                    pool("default", &[default_addr], ""),
                    pool("other", &[other_addr], ""),
                ],
            )
        });
    SniSetup {
        relay,
        listen,
        listen_strict,
        listen_pp,
        default: (default_accepted, default_rx),
        other: (other_accepted, other_rx),
    }
}

impl SniSetup {
    /// Sends `bytes` in `parts` (split points), half-closes, and returns which pool's server got
    /// them; asserts they arrived byte for byte and the log line says so.
    async fn route(
        &mut self,
        what: &str,
        listen: SocketAddr,
        bytes: &[u8],
        splits: &[usize],
        expected_pool: &str,
        expected_sni: &str,
    ) {
        let mark = log_mark(&self.relay);
        let mut stream = connect(listen).await;
        let client = socket_client(&stream);
        let mut start = 0;
        for &at in splits.iter().chain(std::iter::once(&bytes.len())) {
            stream.write_all(&bytes[start..at]).await.unwrap();
            stream.flush().await.unwrap();
            if at != bytes.len() {
                // A stimulus, not synchronisation: let this part leave as its own segment and
                // the relay parse it before the rest exists.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            start = at;
        }
        finish(stream, what).await;
        let got = tokio::select! {
            got = self.default.1.recv() => ("default", got.unwrap()),
            got = self.other.1.recv() => ("other", got.unwrap()),
            _ = tokio::time::sleep(IO_LIMIT) => panic!("{what}: no server received it"),
        };
        assert_eq!(got.0, expected_pool, "{what}: routed to the wrong pool");
        assert_eq!(
            got.1.bytes.len(),
            bytes.len(),
            "{what}: length at the server"
        );
        assert!(got.1.bytes == bytes, "{what}: bytes differ at the server");
        let line = log_since(&self.relay, mark, &client).await;
        assert_fields(
            &line,
            &[
                ("sni", Some(expected_sni)),
                ("pool", Some(expected_pool)),
                ("end", Some("client_closed")),
            ],
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_routes_client_hellos_to_pools() {
    let mut setup = sni_setup().await;
    let listen = setup.listen;
    let http = b"GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n".to_vec();
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        (
            "exact name",
            client_hello("api.example.com"),
            "other",
            "api.example.com",
        ),
        (
            "exact name, upper case",
            client_hello("API.Example.COM"),
            "other",
            "api.example.com",
        ),
        (
            "wildcard",
            client_hello("x1.apps.example.com"),
            "other",
            "x1.apps.example.com",
        ),
        (
            "exact beats wildcard",
            client_hello("special.apps.example.com"),
            "default",
            "special.apps.example.com",
        ),
        (
            "wildcard is one label",
            client_hello("a.b.apps.example.com"),
            "default",
            "a.b.apps.example.com",
        ),
        (
            "no match",
            client_hello("www.example.com"),
            "default",
            "www.example.com",
        ),
        (
            "no SNI (IP address)",
            client_hello("192.0.2.1"),
            "default",
            "-",
        ),
        ("not TLS", http, "default", "-"),
    ];
    for (what, bytes, pool, sni) in &cases {
        setup.route(what, listen, bytes, &[], pool, sni).await;
    }
    assert_eq!(setup.other.0.get(), 3);
    assert_eq!(setup.default.0.get(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_client_hello_in_several_segments_still_routes() {
    let mut setup = sni_setup().await;
    let listen = setup.listen;
    let hello = client_hello("api.example.com");
    let mid = hello.len() / 2;
    setup
        .route(
            "split in two",
            listen,
            &hello,
            &[mid],
            "other",
            "api.example.com",
        )
        .await;
    let hello = client_hello("y.apps.example.com");
    setup
        .route(
            "inside the record header, then mid-message",
            listen,
            &hello,
            &[3, 60],
            "other",
            "y.apps.example.com",
        )
        .await;
    let hello = client_hello("www.example.com");
    setup
        .route(
            "split, no match",
            listen,
            &hello,
            &[1],
            "default",
            "www.example.com",
        )
        .await;
    // One ClientHello carried in two TLS records (valid TLS, if rare), each its own segment.
    let hello = two_records(&client_hello("w.apps.example.com"), 30);
    setup
        .route(
            "two TLS records",
            listen,
            &hello,
            &[5 + 30 + 2],
            "other",
            "w.apps.example.com",
        )
        .await;
}

/// Re-frames a ClientHello sent in one TLS record as two records, the first carrying `first`
/// bytes of the handshake message.
fn two_records(record: &[u8], first: usize) -> Vec<u8> {
    let (header, message) = record.split_at(5);
    assert_eq!(
        message.len(),
        usize::from(u16::from_be_bytes([header[3], header[4]]))
    );
    let mut out = Vec::new();
    for part in [&message[..first], &message[first..]] {
        out.extend_from_slice(&header[..3]);
        out.extend_from_slice(&u16::try_from(part.len()).unwrap().to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// A PROXY header, then the ClientHello: the header is consumed, the ClientHello routed on and
/// passed on byte for byte, whether both come in one write or in pieces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_routing_after_a_proxy_header() {
    let mut setup = sni_setup().await;
    let vpce = "vpce-0123456789abcdef0";
    for (what, port, name, splits, expected_pool) in [
        ("one write", 7101u16, "api.example.com", vec![], "other"),
        (
            "one write, no match",
            7102,
            "www.example.com",
            vec![],
            "default",
        ),
        (
            "header, then a split ClientHello",
            7103,
            "z.apps.example.com",
            vec![1, 40],
            "other",
        ),
    ] {
        let client = format!("192.0.2.80:{port}");
        let header = proxy_v2(&client, "198.51.100.1:443", &[aws_tlv(vpce)]);
        let hello = client_hello(name);
        let bytes = [&header[..], &hello].concat();
        let mut stream = connect(setup.listen_pp).await;
        let mut start = 0;
        for at in splits.iter().map(|s| s + header.len()).chain([bytes.len()]) {
            stream.write_all(&bytes[start..at]).await.unwrap();
            if at != bytes.len() {
                // A stimulus, not synchronisation: separate segments.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            start = at;
        }
        finish(stream, what).await;
        let got = tokio::select! {
            got = setup.default.1.recv() => ("default", got.unwrap()),
            got = setup.other.1.recv() => ("other", got.unwrap()),
            _ = tokio::time::sleep(IO_LIMIT) => panic!("{what}: no server received it"),
        };
        assert_eq!(got.0, expected_pool, "{what}: routed to the wrong pool");
        assert!(
            got.1.bytes == hello,
            "{what}: the server must get the ClientHello alone, intact"
        );
        let line = log_for(&setup.relay, &client).await;
        assert_fields(
            &line,
            &[
                ("vpce", Some(vpce)),
                ("sni", Some(name)),
                ("pool", Some(expected_pool)),
                ("end", Some("client_closed")),
                ("bytes_c2s", Some(&hello.len().to_string())),
            ],
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_fallback_refuse() {
    let mut setup = sni_setup().await;
    let strict = setup.listen_strict;

    for (what, bytes, sni) in [
        (
            "no match",
            client_hello("www.example.com"),
            "www.example.com",
        ),
        ("no SNI", client_hello("192.0.2.1"), "-"),
        ("not TLS", b"GET / HTTP/1.1\r\n\r\n".to_vec(), "-"),
    ] {
        let mark = log_mark(&setup.relay);
        let (client, _) = expect_reset("127.0.0.1", strict, &bytes, false, what).await;
        let line = log_since(&setup.relay, mark, &client).await;
        assert_fields(
            &line,
            &[
                ("sni", Some(sni)),
                ("pool", Some("-")),
                ("end", Some("refused_rule")),
                ("detail", Some("no_route")),
            ],
        );
    }
    // A routed name still works on the strict listener; and it is the only connection made.
    setup
        .route(
            "matching name",
            strict,
            &client_hello("api.example.com"),
            &[],
            "other",
            "api.example.com",
        )
        .await;
    assert_eq!(setup.other.0.get(), 1);
    assert_eq!(setup.default.0.get(), 0);
}
