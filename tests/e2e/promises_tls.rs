//! TLS promises of the README without a test of their own (issue 21, item 13): a pool's client
//! certificate (`[pool.tls] cert`/`key`), the pool's PROXY header sent in the clear before its
//! handshake, the default SNI taken from a server's host name, a server that stalls the
//! handshake (`detail=tls_timeout`), a listener's `min_version = "1.3"` refusing TLS 1.2 and
//! its `alpn` refusing a client with nothing in common. The interop suite covers the last two
//! with openssl and curl as clients; here the client is rustls, in-process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::proxy_header::proxy_v2;
use crate::support::*;
use crate::tls::{
    assert_echo as tls_echo, client_config, handshake, listener_tls, provider, server_config, Ca,
    Leaf,
};
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

/// What a TLS upstream saw of one connection, reported once its handshake is over.
#[derive(Debug)]
struct Seen {
    /// The PROXY header read in the clear before the handshake (servers that expect one).
    proxy: Option<Vec<u8>>,
    sni: Option<String>,
    /// The certificate the relay presented, if any.
    client_cert: Option<CertificateDer<'static>>,
    /// Why the handshake failed, if it did.
    error: Option<String>,
}

/// A TLS echo server on loopback; with `proxy_first`, it reads a PROXY v2 header in the clear
/// before the handshake.
async fn tls_server(
    config: Arc<ServerConfig>,
    proxy_first: bool,
) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let listener = upstream_listener();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let (config, tx) = (Arc::clone(&config), tx.clone());
            tokio::spawn(async move {
                let mut proxy = None;
                if proxy_first {
                    // Signature (12), version/command, family, length (2), then the block.
                    let mut fixed = [0u8; 16];
                    if tcp.read_exact(&mut fixed).await.is_err() {
                        return;
                    }
                    let len = u16::from_be_bytes([fixed[14], fixed[15]]) as usize;
                    let mut header = fixed.to_vec();
                    header.resize(16 + len, 0);
                    if tcp.read_exact(&mut header[16..]).await.is_err() {
                        return;
                    }
                    proxy = Some(header);
                }
                match TlsAcceptor::from(config).accept(tcp).await {
                    Err(e) => {
                        let _ = tx.send(Seen {
                            proxy,
                            sni: None,
                            client_cert: None,
                            error: Some(e.to_string()),
                        });
                    }
                    Ok(stream) => {
                        let session = stream.get_ref().1;
                        let _ = tx.send(Seen {
                            proxy,
                            sni: session.server_name().map(str::to_string),
                            client_cert: session.peer_certificates().map(|c| c[0].clone()),
                            error: None,
                        });
                        let (mut r, mut w) = tokio::io::split(stream);
                        if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                            let _ = w.shutdown().await;
                        }
                    }
                }
            });
        }
    });
    (addr, rx)
}

async fn next_seen(rx: &mut mpsc::UnboundedReceiver<Seen>, what: &str) -> Seen {
    tokio::time::timeout(STEP_LIMIT, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("{what}: the server saw no handshake in time"))
        .expect("server running")
}

/// A server that requires a client certificate issued by `client_ca`.
fn mtls_server_config(leaf: &Leaf, client_ca: &Ca) -> Arc<ServerConfig> {
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(client_ca.roots()),
        provider(),
    )
    .build()
    .unwrap();
    Arc::new(
        ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![leaf.der.clone()], leaf.key())
            .unwrap(),
    )
}

/// `[pool.tls]` trusting `ca`, plus `extra` keys.
fn pool_tls(ca: &Ca, extra: &str) -> String {
    format!(
        "  [pool.tls]\n  ca_file = \"{}\"\n{extra}",
        ca.file.display()
    )
}

/// Writes `message` through a plain client connection and expects it echoed.
async fn plain_echo(listen: SocketAddr, message: &[u8], what: &str) -> SocketAddr {
    let mut stream = connect(listen).await;
    let local = stream.local_addr().unwrap();
    assert_echo(&mut stream, message, what).await;
    finish(stream, what).await;
    local
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_tls_presents_its_client_certificate() {
    let dir = scratch_dir("pool-client-cert");
    let ca = Ca::new(&dir, "server");
    let client_ca = Ca::new(&dir, "client");
    let server_leaf = ca.leaf("upstream", &["upstream.test"]);
    let identity = client_ca.leaf("relay-client", &["relay.client.test"]);
    let (server, mut seen) = tls_server(mtls_server_config(&server_leaf, &client_ca), false).await;
    let (relay, [with_cert, without]) = start_relay(|[with_cert, without]| {
        let sni = "  sni = \"upstream.test\"\n";
        assemble_config(
            None,
            &[
                listener("with-cert", with_cert, "identified", ""),
                listener("without", without, "anonymous", ""),
            ],
            &[
                pool(
                    "identified",
                    &[server],
                    &pool_tls(
                        &ca,
                        &format!(
                            "{sni}  cert = \"{}\"\n  key = \"{}\"\n",
                            identity.cert_file.display(),
                            identity.key_file.display()
                        ),
                    ),
                ),
                pool(
                    "anonymous",
                    &[server],
                    &format!("retries = 0\n{}", pool_tls(&ca, sni)),
                ),
            ],
        )
    });

    plain_echo(with_cert, b"who am I", "with a client certificate").await;
    let got = next_seen(&mut seen, "with a client certificate").await;
    assert_eq!(got.error, None);
    assert_eq!(
        got.client_cert.as_ref(),
        Some(&identity.der),
        "the server saw the pool's certificate"
    );

    // Without one, the server refuses: nothing is relayed. (Under TLS 1.3 the server's
    // refusal comes after the relay's side of the handshake has finished, so the relay may
    // see it as the server's end rather than a failed connect.)
    let mut stream = connect(without).await;
    let local = stream.local_addr().unwrap();
    let _ = stream.write_all(b"anyone?").await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(STEP_LIMIT, stream.read(&mut buf))
        .await
        .expect("refused in time");
    assert!(matches!(read, Ok(0) | Err(_)), "relayed: {read:?}");
    let got = next_seen(&mut seen, "without a client certificate").await;
    assert!(
        got.error.is_some(),
        "the server accepted no certificate: {got:?}"
    );
    assert_eq!(got.client_cert, None);
    let line = log_for(&relay, local).await;
    assert_eq!(field(&line, "bytes_s2c"), Some("0"), "{line}");
    assert!(
        matches!(
            field(&line, "end"),
            Some("connect_failed" | "server_error" | "server_reset")
        ),
        "{line}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_tls_sends_the_proxy_header_before_the_handshake() {
    let dir = scratch_dir("pool-proxy-tls");
    let ca = Ca::new(&dir, "main");
    let leaf = ca.leaf("upstream", &["upstream.test"]);
    let (server, mut seen) = tls_server(server_config(&leaf), true).await;
    let (relay, [listen]) = start_relay(|[listen]| {
        config(
            listen,
            &[server],
            "",
            &format!(
                "send_proxy = \"v2\"\n{}",
                pool_tls(&ca, "  sni = \"upstream.test\"\n")
            ),
        )
    });
    let client = plain_echo(listen, b"header, then TLS", "PROXY v2 then TLS").await;
    let got = next_seen(&mut seen, "PROXY v2 then TLS").await;
    assert_eq!(got.error, None, "the handshake after the header");
    assert_eq!(got.sni.as_deref(), Some("upstream.test"));
    // Byte for byte the header of this client to this listener, built by hand.
    let expected = proxy_v2(&client.to_string(), &listen.to_string(), &[]);
    assert_eq!(got.proxy.as_deref(), Some(expected.as_slice()));
    let line = log_for(&relay, client).await;
    assert_eq!(field(&line, "end"), Some("client_closed"), "{line}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_tls_sends_the_server_host_name_as_sni_by_default() {
    let dir = scratch_dir("pool-default-sni");
    let ca = Ca::new(&dir, "main");
    // Only the name: verified against it, so a wrong or missing SNI-and-name fails.
    let leaf = ca.leaf("svc", &["svc.test"]);
    let (server, mut seen) = tls_server(server_config(&leaf), false).await;
    let zone = zone(Mode::Answer, &["127.0.0.1"], 60);
    let dns = dns_server(zone).await;
    let (relay, [listen]) = start_relay(|[listen]| {
        format!(
            "[admin]\nlisten = \"off\"\n\n[[listener]]\nname = \"test\"\nlisten = \"{listen}\"\npool = \"p\"\n\n[[pool]]\nname = \"p\"\nnameservers = [\"{dns}\"]\n{}  [[pool.server]]\n  name = \"svc\"\n  address = \"svc.test:{}\"\n",
            pool_tls(&ca, ""),
            server.port()
        )
    });
    // The name resolves in the background: a client that arrives first finds no server.
    let deadline = Instant::now() + STEP_LIMIT;
    let client = loop {
        let mut stream = connect(listen).await;
        let local = stream.local_addr().unwrap();
        if stream.write_all(b"by name").await.is_ok() {
            let mut back = [0u8; 7];
            if let Ok(Ok(_)) = tokio::time::timeout(STEP_LIMIT, stream.read_exact(&mut back)).await
            {
                assert_eq!(&back, b"by name");
                finish(stream, "by name").await;
                break local;
            }
        }
        assert!(
            Instant::now() < deadline,
            "svc.test never served:\n{}",
            relay.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let got = next_seen(&mut seen, "by name").await;
    assert_eq!(got.error, None);
    assert_eq!(got.sni.as_deref(), Some("svc.test"));
    let line = log_for(&relay, client).await;
    assert_eq!(field(&line, "server"), Some("svc"), "{line}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stalls_the_handshake_is_a_tls_timeout() {
    const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
    let dir = scratch_dir("pool-tls-stall");
    let ca = Ca::new(&dir, "main");
    // Accepts, reads the ClientHello, never answers.
    let listener = upstream_listener();
    let server = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut hello = [0u8; 512];
            let _ = stream.read(&mut hello).await;
            held.push(stream);
        }
    });
    let (relay, [listen, admin]) = start_relay(|[listen, admin]| {
        config_with_admin(
            admin,
            listen,
            &[server],
            "",
            &format!(
                "connect_timeout = \"{}ms\"\nretries = 0\n{}",
                CONNECT_TIMEOUT.as_millis(),
                pool_tls(&ca, "  sni = \"upstream.test\"\n")
            ),
        )
    });
    let started = Instant::now();
    let mut stream = connect(listen).await;
    let local = stream.local_addr().unwrap();
    let _ = stream.write_all(b"hello?").await;
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(STEP_LIMIT, stream.read(&mut buf))
        .await
        .expect("given up on in time");
    let took = started.elapsed();
    assert!(matches!(read, Ok(0) | Err(_)), "relayed: {read:?}");
    assert!(
        took >= CONNECT_TIMEOUT,
        "given up after {took:?}, before connect_timeout ({CONNECT_TIMEOUT:?})"
    );
    let line = log_for(&relay, local).await;
    assert_fields(
        &line,
        &[
            ("end", Some("connect_failed")),
            ("detail", Some("tls_timeout")),
        ],
    );
    assert_eq!(
        metric(
            admin,
            "l4relay_upstream_connections_total",
            &[("server", "s0"), ("result", "timeout")]
        )
        .await,
        1.0
    );
    let mut relay = relay;
    relay.wait_for_stderr(
        &format!("TLS handshake with {server} timed out after"),
        STEP_LIMIT,
    );
    let _ = std::fs::remove_dir_all(dir);
}

// ---- the listener's min_version and alpn ----

/// A client trusting `ca` that speaks only `versions` and offers `alpn`.
fn client_with(
    ca: &Ca,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&str],
) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

/// Connects to `listen` and completes a TLS handshake with `config`: the client's address,
/// and the stream or the handshake's error.
async fn tls_attempt(
    listen: SocketAddr,
    config: Arc<ClientConfig>,
) -> (SocketAddr, std::io::Result<crate::tls::ClientTls>) {
    let tcp = connect(listen).await;
    let local = tcp.local_addr().unwrap();
    (local, handshake(tcp, "relay.test", config).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_min_version_and_alpn_refuse_what_they_should() {
    use rustls::version::{TLS12, TLS13};
    let dir = scratch_dir("listener-tls-versions");
    let ca = Ca::new(&dir, "main");
    let leaf = ca.leaf("relay", &["relay.test"]);
    let (server, _) = echo_server().await;
    let (relay, [default, only13, alpn]) = start_relay(|[default, only13, alpn]| {
        assemble_config(
            None,
            &[
                listener("default", default, "p", &listener_tls(&leaf, "")),
                listener(
                    "only13",
                    only13,
                    "p",
                    &listener_tls(&leaf, "  min_version = \"1.3\"\n"),
                ),
                listener(
                    "alpn",
                    alpn,
                    "p",
                    &listener_tls(&leaf, "  alpn = [\"http/1.1\"]\n"),
                ),
            ],
            &[pool("p", &[server], "")],
        )
    });
    let refused = |line: &str| {
        assert_fields(
            line,
            &[
                ("end", Some("tls_handshake_error")),
                ("detail", Some("tls_incompatible")),
            ],
        )
    };

    // TLS 1.2 only: served by default (so this client can speak it), refused by 1.3.
    let (_, tls) = tls_attempt(default, client_with(&ca, &[&TLS12], &[])).await;
    let mut tls = tls.expect("TLS 1.2 on a default listener");
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    tls_echo(&mut tls, b"1.2 welcome", "TLS 1.2 by default").await;
    let (local, tls) = tls_attempt(only13, client_with(&ca, &[&TLS12], &[])).await;
    let error = tls.expect_err("TLS 1.2 refused by min_version = 1.3");
    assert!(error.to_string().contains("ProtocolVersion"), "{error}");
    refused(&log_for(&relay, local).await);
    let (_, tls) = tls_attempt(only13, client_config(ca.roots(), None)).await;
    let mut tls = tls.expect("TLS 1.3 on min_version 1.3");
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    tls_echo(&mut tls, b"1.3 welcome", "TLS 1.3").await;

    // ALPN: nothing in common is refused; a protocol in common is agreed; no ALPN at all is
    // served without.
    let (local, tls) = tls_attempt(alpn, client_with(&ca, &[&TLS13, &TLS12], &["h2"])).await;
    let error = tls.expect_err("a client offering only h2 refused");
    assert!(
        error.to_string().contains("NoApplicationProtocol"),
        "{error}"
    );
    refused(&log_for(&relay, local).await);
    let (_, tls) = tls_attempt(alpn, client_with(&ca, &[&TLS13], &["h2", "http/1.1"])).await;
    let mut tls = tls.expect("a client offering http/1.1 served");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    tls_echo(&mut tls, b"GET / HTTP/1.1\r\n\r\n", "ALPN agreed").await;
    let (_, tls) = tls_attempt(alpn, client_with(&ca, &[&TLS13], &[])).await;
    let mut tls = tls.expect("a client without ALPN served");
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    tls_echo(&mut tls, b"no ALPN", "no ALPN").await;
    let _ = std::fs::remove_dir_all(dir);
}
