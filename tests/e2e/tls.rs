//! End-to-end TLS through the built binary: termination on listeners, origination to pools,
//! both at once (re-encryption), client certificates (mTLS), certificates chosen by SNI and
//! routing on the handshake's SNI, a PROXY v2 header before the handshake, half-close carried
//! as close_notify, and certificates re-read on SIGHUP.
//!
//! Every certificate is generated here with rcgen (throwaway CAs, server and client
//! certificates), and every TLS peer is a real rustls client or server verifying what it is
//! told to verify.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// How long any single network step may take before the test fails.
pub(crate) const IO_LIMIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Certificates.

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A throwaway certificate authority; it writes its certificates beside its own PEM file.
pub(crate) struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pub(crate) file: PathBuf,
    dir: PathBuf,
}

/// A certificate signed by a `Ca`, as PEM files and as rustls values.
pub(crate) struct Leaf {
    pub(crate) cert_file: PathBuf,
    pub(crate) key_file: PathBuf,
    pub(crate) der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Leaf {
    pub(crate) fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    /// Makes this certificate and key the content of `cert` and `key` (the files a relay
    /// config names).
    fn install(&self, cert: &Path, key: &Path) {
        std::fs::copy(&self.key_file, key).unwrap();
        std::fs::copy(&self.cert_file, cert).unwrap();
    }
}

impl Ca {
    pub(crate) fn new(dir: &Path, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("l4relay {name} test CA"));
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let file = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&file, issuer.pem()).unwrap();
        Ca {
            issuer,
            file,
            dir: dir.to_path_buf(),
        }
    }

    /// A certificate for `names` (DNS names or IP addresses) in `{file}.pem` and `{file}.key`.
    pub(crate) fn leaf(&self, file: &str, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        self.sign(file, CertificateParams::new(names).unwrap())
    }

    /// Like `leaf`, valid until `days` days from now (negative: expired that long ago).
    fn leaf_expiring(&self, file: &str, names: &[&str], days: i64) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        let offset = Duration::from_secs(days.unsigned_abs() * 86_400);
        let until = if days >= 0 {
            now + offset
        } else {
            now - offset
        };
        params.not_after = rcgen::date_time_ymd(1970, 1, 1) + until;
        self.sign(file, params)
    }

    fn sign(&self, file: &str, params: CertificateParams) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &*self.issuer).unwrap();
        let cert_file = self.dir.join(format!("{file}.pem"));
        let key_file = self.dir.join(format!("{file}.key"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        Leaf {
            cert_file,
            key_file,
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }

    pub(crate) fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        roots
    }
}

// ---------------------------------------------------------------------------------------------
// TLS peers.

/// A client trusting `roots`, presenting `identity` when asked for a certificate.
pub(crate) fn client_config(roots: RootCertStore, identity: Option<&Leaf>) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match identity {
        Some(leaf) => builder
            .with_client_auth_cert(vec![leaf.der.clone()], leaf.key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    })
}

/// A client that accepts any certificate, to look at which one the relay chose.
fn looking_client() -> Arc<ClientConfig> {
    let provider = provider();
    // The relay's own verifier for `verify = false` pools (and its health checks).
    let verifier = Arc::new(l4relay::tls::AcceptAnyCertificate {
        algorithms: provider.signature_verification_algorithms,
    });
    Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth(),
    )
}

pub(crate) type ClientTls = tokio_rustls::client::TlsStream<TcpStream>;

/// A TLS handshake as `name` over `tcp`.
pub(crate) async fn handshake(
    tcp: TcpStream,
    name: &str,
    config: Arc<ClientConfig>,
) -> std::io::Result<ClientTls> {
    let name = ServerName::try_from(name.to_string()).unwrap();
    tokio::time::timeout(IO_LIMIT, TlsConnector::from(config).connect(name, tcp))
        .await
        .expect("TLS handshake in time")
}

/// Connects to `to` and completes a TLS handshake as `name`.
async fn tls_connect(
    to: SocketAddr,
    name: &str,
    config: Arc<ClientConfig>,
) -> (ClientTls, SocketAddr) {
    let tcp = connect(to).await;
    let local = tcp.local_addr().unwrap();
    let tls = handshake(tcp, name, config)
        .await
        .unwrap_or_else(|e| panic!("TLS handshake as {name}: {e}"));
    (tls, local)
}

/// The certificate the peer presented.
fn peer_certificate(tls: &ClientTls) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().expect("a certificate")[0].clone()
}

/// Writes `message` and reads it back from an echo server (also through a named server,
/// whose first line is skipped by the caller).
pub(crate) async fn assert_echo<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    message: &[u8],
    what: &str,
) {
    stream.write_all(message).await.unwrap();
    stream.flush().await.unwrap();
    let mut back = vec![0u8; message.len()];
    tokio::time::timeout(IO_LIMIT, stream.read_exact(&mut back))
        .await
        .unwrap_or_else(|_| panic!("{what}: no echo in time"))
        .unwrap_or_else(|e| panic!("{what}: no echo: {e}"));
    assert_eq!(back, message, "{what}");
}

/// Reads the line a `named_server` starts with.
async fn first_line<S: AsyncRead + Unpin>(stream: &mut S) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let n = tokio::time::timeout(IO_LIMIT, stream.read(&mut byte))
            .await
            .expect("the server's name in time")
            .expect("the server's name");
        assert_eq!(n, 1, "closed before the server named itself");
        if byte[0] == b'\n' {
            return String::from_utf8(line).unwrap();
        }
        line.push(byte[0]);
    }
}

/// Expects the relay to refuse: whatever the client writes, nothing comes back but an end
/// (a TLS alert, a reset, or a close).
async fn assert_refused<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, what: &str) {
    let _ = stream.write_all(b"anyone there?").await;
    let _ = stream.flush().await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(IO_LIMIT, stream.read(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("{what}: neither refused nor answered in time"));
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "{what}: got an answer: {read:?}"
    );
}

/// What an upstream test server does with a connection.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Writes back what it reads; passes the end on once everything is written.
    Echo,
    /// Reads until the client's end, then writes this many payload bytes (seed 7) and ends.
    ReplyAfterEnd(u64),
    /// Writes this many payload bytes (seed 7) and ends its side first, then reads until the
    /// client's end.
    ReplyFirst(u64),
}

/// What an upstream test server saw of one connection, once it is over.
#[derive(Debug)]
struct Seen {
    /// The SNI of the TLS handshake (None: none sent, or not TLS).
    sni: Option<String>,
    /// The ALPN protocol the handshake agreed on (None: none, or not TLS).
    alpn: Option<String>,
    /// Bytes read before the end.
    received: u64,
    /// The client's end arrived cleanly: a FIN (plain) or close_notify (TLS).
    clean_end: bool,
}

/// An upstream server on loopback: TLS with `tls`, else plain.
async fn upstream(
    tls: Option<Arc<ServerConfig>>,
    behaviour: Behaviour,
) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let listener = upstream_listener();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (tls, tx) = (tls.clone(), tx.clone());
            tokio::spawn(async move {
                let seen = match tls {
                    None => serve(tcp, behaviour, None, None).await,
                    Some(config) => match TlsAcceptor::from(config).accept(tcp).await {
                        Err(_) => return,
                        Ok(stream) => {
                            let session = stream.get_ref().1;
                            let sni = session.server_name().map(str::to_string);
                            let alpn = session
                                .alpn_protocol()
                                .map(|p| String::from_utf8_lossy(p).into_owned());
                            serve(stream, behaviour, sni, alpn).await
                        }
                    },
                };
                let _ = tx.send(seen);
            });
        }
    });
    (addr, rx)
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    behaviour: Behaviour,
    sni: Option<String>,
    alpn: Option<String>,
) -> Seen {
    let (mut r, mut w) = tokio::io::split(stream);
    let (received, clean_end) = match behaviour {
        Behaviour::Echo => {
            let copied = tokio::io::copy(&mut r, &mut w).await;
            if copied.is_ok() {
                let _ = w.shutdown().await;
            }
            (copied.as_ref().map_or(0, |n| *n), copied.is_ok())
        }
        Behaviour::ReplyAfterEnd(len) => {
            let received = receive_all(&mut r).await;
            if received.is_ok() {
                send_payload(&mut w, 7, len).await;
                let _ = w.shutdown().await;
            }
            (received.as_ref().map_or(0, |(n, _)| *n), received.is_ok())
        }
        Behaviour::ReplyFirst(len) => {
            send_payload(&mut w, 7, len).await;
            w.shutdown().await.expect("the server ends its side");
            let received = receive_all(&mut r).await;
            (received.as_ref().map_or(0, |(n, _)| *n), received.is_ok())
        }
    };
    Seen {
        sni,
        alpn,
        received,
        clean_end,
    }
}

pub(crate) fn server_config(leaf: &Leaf) -> Arc<ServerConfig> {
    server_config_with_alpn(leaf, &[])
}

/// A server that agrees on one of `alpn` (in its order of preference) with a client that
/// offers ALPN, and refuses one that offers none of them.
fn server_config_with_alpn(leaf: &Leaf, alpn: &[&str]) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der.clone()], leaf.key())
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

async fn next_seen(rx: &mut mpsc::UnboundedReceiver<Seen>, what: &str) -> Seen {
    tokio::time::timeout(IO_LIMIT, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("{what}: the upstream saw no connection end in time"))
        .expect("upstream running")
}

// ---------------------------------------------------------------------------------------------
// The relay.

/// `[listener.tls]` with `leaf` as the certificate, plus `extra` keys.
pub(crate) fn listener_tls(leaf: &Leaf, extra: &str) -> String {
    format!(
        "  [listener.tls]\n  cert = \"{}\"\n  key = \"{}\"\n{extra}\n",
        leaf.cert_file.display(),
        leaf.key_file.display()
    )
}

fn assert_fields(line: &str, fields: &[&str]) {
    for field in fields {
        assert!(
            line.split_whitespace().any(|f| f == *field),
            "no {field} in: {line}"
        );
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(IO_LIMIT, stream.read_to_string(&mut response))
        .await
        .expect("admin answers in time")
        .unwrap();
    response
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn termination_relays_verified_bytes_both_ways() {
    let dir = scratch_dir("tls-terminate");
    let ca = Ca::new(&dir, "main");
    let cert = ca.leaf("relay", &["relay.test"]);
    let (echo, _) = echo_server().await;
    let (relay, [listen]) = start_relay(|[listen]| {
        assemble_config(
            None,
            &[listener("tls", listen, "p", &listener_tls(&cert, ""))],
            &[pool("p", &[echo], "")],
        )
    });

    let (tls, local) = tls_connect(listen, "relay.test", client_config(ca.roots(), None)).await;
    assert_eq!(peer_certificate(&tls), cert.der);
    const LEN: u64 = 4 << 20;
    let (mut r, mut w) = tokio::io::split(tls);
    let send = async {
        let digest = send_payload(&mut w, 1, LEN).await;
        // close_notify and FIN: the echo then ends its side, and the relay passes that on.
        w.shutdown().await.unwrap();
        digest
    };
    let (sent, received) = tokio::join!(send, async {
        tokio::time::timeout(Duration::from_secs(30), receive_all(&mut r))
            .await
            .expect("echo in time")
    });
    let (n, digest) = received.expect("the echo, ended by close_notify");
    assert_eq!(n, LEN);
    assert_eq!(digest, sent, "bytes changed on the way");

    let line = log_for(&relay, local).await;
    assert_fields(
        &line,
        &[
            "sni=relay.test",
            "end=client_closed",
            "bytes_c2s=4194304",
            "bytes_s2c=4194304",
        ],
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origination_verifies_the_server_and_sends_its_name() {
    let dir = scratch_dir("tls-originate");
    let ca = Ca::new(&dir, "main");
    let other_ca = Ca::new(&dir, "other");
    let good = ca.leaf("upstream", &["upstream.test", "127.0.0.1"]);
    let impostor = other_ca.leaf("impostor", &["upstream.test"]);
    let (server, mut seen) = upstream(Some(server_config(&good)), Behaviour::Echo).await;
    let (bad, _) = upstream(Some(server_config(&impostor)), Behaviour::Echo).await;
    let ca_file = ca.file.display().to_string();
    let (mut relay, [by_name, by_ip, untrusted]) = start_relay(|[by_name, by_ip, untrusted]| {
        let named = format!("  [pool.tls]\n  sni = \"upstream.test\"\n  ca_file = \"{ca_file}\"\n");
        let ip = format!("  [pool.tls]\n  ca_file = \"{ca_file}\"\n");
        assemble_config(
            None,
            &[
                listener("by-name", by_name, "named", ""),
                listener("by-ip", by_ip, "ip", ""),
                listener("untrusted", untrusted, "impostor", ""),
            ],
            &[
                pool("named", &[server], &named),
                pool("ip", &[server], &ip),
                pool("impostor", &[bad], &named),
            ],
        )
    });

    // The pool's sni: sent, and the certificate verified against it.
    let mut client = connect(by_name).await;
    let local = client.local_addr().unwrap();
    assert_echo(&mut client, b"hello over TLS", "sni = upstream.test").await;
    client.shutdown().await.unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    let got = next_seen(&mut seen, "by name").await;
    assert_eq!(got.sni.as_deref(), Some("upstream.test"));
    assert!(
        got.clean_end,
        "the client's FIN reached the server as close_notify"
    );
    assert_fields(&log_for(&relay, local).await, &["end=client_closed"]);

    // An IP-literal server without sni: no SNI sent, the certificate's IP address verified.
    let mut client = connect(by_ip).await;
    assert_echo(&mut client, b"by address", "server given by IP").await;
    drop(client);
    let got = next_seen(&mut seen, "by IP").await;
    assert_eq!(got.sni, None, "no SNI for an IP address");

    // A certificate from an unknown CA: refused, the client closed, the reason logged.
    let (local, client) = open("127.0.0.1", untrusted).await;
    match client {
        Ok(mut client) => assert_refused(&mut client, "untrusted server certificate").await,
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    let line = log_for(&relay, local).await;
    assert_fields(
        &line,
        &[
            "end=connect_failed",
            "detail=tls_certificate_unknown_issuer",
        ],
    );
    relay.wait_for_stderr("TLS handshake with", IO_LIMIT);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_and_originate_at_once() {
    let dir = scratch_dir("tls-both");
    let ca = Ca::new(&dir, "main");
    let front = ca.leaf("front", &["relay.test"]);
    let back = ca.leaf("back", &["upstream.test"]);
    let (server, mut seen) = upstream(Some(server_config(&back)), Behaviour::Echo).await;
    let ca_file = ca.file.display().to_string();
    let (relay, [listen]) = start_relay(|[listen]| {
        assemble_config(
            None,
            &[listener("both", listen, "p", &listener_tls(&front, ""))],
            &[pool(
                "p",
                &[server],
                &format!("  [pool.tls]\n  sni = \"upstream.test\"\n  ca_file = \"{ca_file}\"\n"),
            )],
        )
    });

    let (tls, local) = tls_connect(listen, "relay.test", client_config(ca.roots(), None)).await;
    const LEN: u64 = 2 << 20;
    let (mut r, mut w) = tokio::io::split(tls);
    let send = async {
        let digest = send_payload(&mut w, 3, LEN).await;
        w.shutdown().await.unwrap();
        digest
    };
    let (sent, received) = tokio::join!(send, async {
        tokio::time::timeout(Duration::from_secs(30), receive_all(&mut r))
            .await
            .expect("echo in time")
    });
    let (n, digest) = received.expect("the echo, ended by close_notify");
    assert_eq!((n, digest), (LEN, sent), "re-encrypted both ways intact");
    let got = next_seen(&mut seen, "re-encrypted").await;
    assert_eq!(got.sni.as_deref(), Some("upstream.test"));
    assert!(got.clean_end);
    assert_eq!(got.received, LEN);
    assert_fields(
        &log_for(&relay, local).await,
        &["sni=relay.test", "end=client_closed", "bytes_c2s=2097152"],
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_accepted_and_refused() {
    let dir = scratch_dir("tls-mtls");
    let ca = Ca::new(&dir, "main");
    let other_ca = Ca::new(&dir, "other");
    let cert = ca.leaf("relay", &["relay.test"]);
    let member = ca.leaf("member", &["client.test"]);
    let stranger = other_ca.leaf("stranger", &["client.test"]);
    let (echo, _) = echo_server().await;
    let ca_file = ca.file.display().to_string();
    let (relay, [required, optional]) = start_relay(|[required, optional]| {
        let mtls = |mode: &str| {
            listener_tls(
                &cert,
                &format!("  client_ca = \"{ca_file}\"\n  client_auth = \"{mode}\"\n"),
            )
        };
        assemble_config(
            None,
            &[
                listener("required", required, "p", &mtls("required")),
                listener("optional", optional, "p", &mtls("optional")),
            ],
            &[pool("p", &[echo], "")],
        )
    });
    let roots = || ca.roots();

    // A certificate from the CA: accepted.
    let (mut tls, _) = tls_connect(
        required,
        "relay.test",
        client_config(roots(), Some(&member)),
    )
    .await;
    assert_echo(&mut tls, b"with a member's certificate", "mTLS").await;

    // None, or one from another CA: refused (with TLS 1.3 the client learns it on its first
    // read), and logged as the client-certificate rule refusing it.
    for (who, identity, detail) in [
        ("no certificate", None, "detail=client_certificate_missing"),
        (
            "another CA's certificate",
            Some(&stranger),
            "detail=client_certificate_invalid",
        ),
    ] {
        let tcp = connect(required).await;
        let local = tcp.local_addr().unwrap();
        if let Ok(mut tls) = handshake(tcp, "relay.test", client_config(roots(), identity)).await {
            assert_refused(&mut tls, who).await;
        }
        assert_fields(&log_for(&relay, local).await, &["end=refused_rule", detail]);
    }

    // client_auth = "optional": no certificate is fine, an untrusted one is not.
    let (mut tls, _) = tls_connect(optional, "relay.test", client_config(roots(), None)).await;
    assert_echo(&mut tls, b"anonymous", "optional client auth").await;
    let tcp = connect(optional).await;
    let local = tcp.local_addr().unwrap();
    if let Ok(mut tls) = handshake(tcp, "relay.test", client_config(roots(), Some(&stranger))).await
    {
        assert_refused(&mut tls, "optional, untrusted certificate").await;
    }
    assert_fields(
        &log_for(&relay, local).await,
        &["end=refused_rule", "detail=client_certificate_invalid"],
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_chooses_the_certificate_and_the_route() {
    let dir = scratch_dir("tls-sni");
    let ca = Ca::new(&dir, "main");
    let default = ca.leaf("default", &["default.test"]);
    let a = ca.leaf("a", &["a.test"]);
    let b = ca.leaf("b", &["b.test", "*.b.test"]);
    let (server_a, _) = named_server("A").await;
    let (server_b, _) = named_server("B").await;
    let (server_d, _) = named_server("D").await;
    let (_relay, [listen]) = start_relay(|[listen]| {
        let tls = format!(
            "{}  [[listener.tls.certificate]]\n  cert = \"{}\"\n  key = \"{}\"\n\
             \x20 [[listener.tls.certificate]]\n  cert = \"{}\"\n  key = \"{}\"\n  server_names = [\"b.test\", \"*.b.test\"]\n\
             \x20 [[listener.route]]\n  server_names = [\"a.test\"]\n  pool = \"A\"\n\
             \x20 [[listener.route]]\n  server_names = [\"b.test\"]\n  pool = \"B\"\n",
            listener_tls(&default, ""),
            a.cert_file.display(),
            a.key_file.display(),
            b.cert_file.display(),
            b.key_file.display(),
        );
        assemble_config(
            None,
            &[listener("sni", listen, "D", &tls)],
            &[
                pool("A", &[server_a], ""),
                pool("B", &[server_b], ""),
                pool("D", &[server_d], ""),
            ],
        )
    });

    // A name from the certificate's own SANs, verified against the CA like any client would.
    let (mut tls, _) = tls_connect(listen, "a.test", client_config(ca.roots(), None)).await;
    assert_eq!(peer_certificate(&tls), a.der, "a.test");
    assert_eq!(
        first_line(&mut tls).await,
        "A",
        "routed on the handshake's SNI"
    );

    for (name, cert, pool) in [
        ("b.test", &b, "B"),
        ("x.b.test", &b, "D"),
        ("other.test", &default, "D"),
    ] {
        let (mut tls, _) = tls_connect(listen, name, looking_client()).await;
        assert_eq!(peer_certificate(&tls), cert.der, "certificate for {name}");
        assert_eq!(first_line(&mut tls).await, pool, "pool for {name}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_v2_header_then_tls() {
    let dir = scratch_dir("tls-proxy");
    let ca = Ca::new(&dir, "main");
    let cert = ca.leaf("relay", &["relay.test"]);
    let (echo, _) = echo_server().await;
    let (relay, [listen]) = start_relay(|[listen]| {
        let extra = format!(
            "proxy_protocol = \"v2\"\nallow = [\"203.0.113.0/24\"]\n{}",
            listener_tls(&cert, "")
        );
        assemble_config(
            None,
            &[listener("pp", listen, "p", &extra)],
            &[pool("p", &[echo], "")],
        )
    });

    // PROXY v2, TCP over IPv4, from 203.0.113.7:40000 to 10.0.0.1:443, by hand.
    let mut header = vec![
        0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x21, 0x11, 0x00,
        0x0C,
    ];
    header.extend_from_slice(&[203, 0, 113, 7, 10, 0, 0, 1]);
    header.extend_from_slice(&40000u16.to_be_bytes());
    header.extend_from_slice(&443u16.to_be_bytes());
    let mut tcp = connect(listen).await;
    tcp.write_all(&header).await.unwrap();
    let mut tls = handshake(tcp, "relay.test", client_config(ca.roots(), None))
        .await
        .expect("TLS after the PROXY header");
    assert_echo(&mut tls, b"behind an NLB", "PROXY then TLS").await;
    tls.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = tls.read_to_end(&mut rest).await;

    let line = log_for(&relay, "203.0.113.7:40000").await;
    assert_fields(&line, &["sni=relay.test", "end=client_closed"]);
    let _ = std::fs::remove_dir_all(dir);
}

/// The half-close tests' relay: a terminating listener in front of a plain server and a plain
/// listener in front of a TLS server, both servers behaving as `behaviour`.
struct HalfClose {
    dir: std::path::PathBuf,
    ca: Ca,
    relay: RelayProcess,
    terminating: SocketAddr,
    originating: SocketAddr,
    plain_seen: mpsc::UnboundedReceiver<Seen>,
    tls_seen: mpsc::UnboundedReceiver<Seen>,
}

async fn half_close_setup(name: &str, behaviour: Behaviour) -> HalfClose {
    let dir = scratch_dir(name);
    let ca = Ca::new(&dir, "main");
    let front = ca.leaf("front", &["relay.test"]);
    let back = ca.leaf("back", &["upstream.test"]);
    let (plain, plain_seen) = upstream(None, behaviour).await;
    let (tls_server, tls_seen) = upstream(Some(server_config(&back)), behaviour).await;
    let ca_file = ca.file.display().to_string();
    let (relay, [terminating, originating]) = start_relay(|[terminating, originating]| {
        assemble_config(
            None,
            &[
                listener("terminate", terminating, "plain", &listener_tls(&front, "")),
                listener("originate", originating, "tls", ""),
            ],
            &[
                pool("plain", &[plain], ""),
                pool(
                    "tls",
                    &[tls_server],
                    &format!(
                        "  [pool.tls]\n  sni = \"upstream.test\"\n  ca_file = \"{ca_file}\"\n"
                    ),
                ),
            ],
        )
    });
    HalfClose {
        dir,
        ca,
        relay,
        terminating,
        originating,
        plain_seen,
        tls_seen,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_is_carried_as_close_notify() {
    const REQUEST: u64 = 1 << 20;
    const REPLY: u64 = 3 << 20;
    let HalfClose {
        dir,
        ca,
        relay: _relay,
        terminating,
        originating,
        mut plain_seen,
        mut tls_seen,
    } = half_close_setup("tls-half-close", Behaviour::ReplyAfterEnd(REPLY)).await;
    let reply_digest = payload_digest(7, REPLY);

    // TLS client: its close_notify reaches the plain server as a FIN; the whole reply comes
    // back afterwards, ended by the relay's close_notify (a bare FIN would be an error here).
    let (tls, _) = tls_connect(terminating, "relay.test", client_config(ca.roots(), None)).await;
    let (mut r, mut w) = tokio::io::split(tls);
    send_payload(&mut w, 5, REQUEST).await;
    w.shutdown().await.unwrap();
    let received = tokio::time::timeout(Duration::from_secs(30), receive_all(&mut r))
        .await
        .expect("reply in time")
        .expect("the whole reply, then close_notify");
    assert_eq!(received, (REPLY, reply_digest));
    let got = next_seen(&mut plain_seen, "plain server").await;
    assert!(got.clean_end && got.received == REQUEST, "{got:?}");

    // Plain client: its FIN reaches the TLS server as close_notify (rustls would report a
    // truncation otherwise, and the server would not reply); the reply comes back whole.
    let mut client = connect(originating).await;
    send_payload(&mut client, 5, REQUEST).await;
    client.shutdown().await.unwrap();
    let received = tokio::time::timeout(Duration::from_secs(30), receive_all(&mut client))
        .await
        .expect("reply in time")
        .expect("the whole reply, then FIN");
    assert_eq!(received, (REPLY, reply_digest));
    let got = next_seen(&mut tls_seen, "TLS server").await;
    assert!(got.clean_end && got.received == REQUEST, "{got:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_reloaded_on_sighup() {
    let dir = scratch_dir("tls-reload");
    let ca = Ca::new(&dir, "main");
    let (cert_file, key_file) = (dir.join("relay.pem"), dir.join("relay.key"));
    let first = ca.leaf("first", &["relay.test"]);
    let second = ca.leaf("second", &["relay.test"]);
    first.install(&cert_file, &key_file);
    let (echo, _) = echo_server().await;
    let tls_table = format!(
        "  [listener.tls]\n  cert = \"{}\"\n  key = \"{}\"\n",
        cert_file.display(),
        key_file.display()
    );
    let (mut relay, [listen, admin]) = start_relay(|[listen, admin]| {
        assemble_config(
            Some(admin),
            &[listener("tls", listen, "p", &tls_table)],
            &[pool("p", &[echo], "")],
        )
    });
    let client = || client_config(ca.roots(), None);

    let (mut established, _) = tls_connect(listen, "relay.test", client()).await;
    assert_eq!(peer_certificate(&established), first.der);
    assert_echo(&mut established, b"before", "first certificate").await;

    // A new certificate: new connections get it, the established one runs on.
    second.install(&cert_file, &key_file);
    relay.signal("HUP");
    relay.wait_for_stderr("reload: done", IO_LIMIT);
    let (mut renewed, _) = tls_connect(listen, "relay.test", client()).await;
    assert_eq!(peer_certificate(&renewed), second.der, "new connections");
    assert_echo(&mut renewed, b"after", "second certificate").await;
    assert_echo(&mut established, b"still here", "established connection").await;

    // A broken file: the reload is refused, saying where; the running certificate stays.
    std::fs::write(&cert_file, "-----BEGIN CERTIFICATE-----\nnot base64!\n").unwrap();
    relay.signal("HUP");
    relay.wait_for_stderr("still running the previous config", IO_LIMIT);
    let stderr = relay.stderr();
    let reported = stderr.lines().any(|l| {
        l.contains("reload: ") && l.contains("listener[0].tls.cert") && l.contains("relay.pem")
    });
    assert!(reported, "no located reload error:\n{stderr}");
    let (mut kept, _) = tls_connect(listen, "relay.test", client()).await;
    assert_eq!(peer_certificate(&kept), second.der, "after a bad reload");
    assert_echo(&mut kept, b"kept", "kept certificate").await;
    assert_echo(&mut established, b"and still", "established connection").await;

    // A missing key (the certificate repaired): refused in the same way, naming the file.
    second.install(&cert_file, &key_file);
    std::fs::remove_file(&key_file).unwrap();
    relay.signal("HUP");
    let refused_twice = eventually(IO_LIMIT, || {
        relay
            .stderr()
            .matches("still running the previous config")
            .count()
            >= 2
    })
    .await;
    let stderr = relay.stderr();
    assert!(
        refused_twice,
        "the second reload was not refused:\n{stderr}"
    );
    let reported = stderr.lines().any(|l| {
        l.contains("reload: ")
            && l.contains("listener[0].tls.key: cannot read")
            && l.contains("relay.key")
            && l.contains("No such file")
    });
    assert!(reported, "no located error for the missing key:\n{stderr}");
    let (mut kept, _) = tls_connect(listen, "relay.test", client()).await;
    assert_eq!(peer_certificate(&kept), second.der, "after a missing key");
    assert_echo(&mut kept, b"kept again", "kept certificate").await;
    assert_echo(&mut established, b"and on", "established connection").await;
    let metrics = http_get(admin, "/metrics").await;
    assert!(
        metrics.contains("l4relay_config_reloads_total{result=\"error\"} 2"),
        "{metrics}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn check_reports_certificate_files_and_unverified_pools() {
    let dir = scratch_dir("tls-check");
    let ca = Ca::new(&dir, "main");
    let a = ca.leaf("a", &["a.test"]);
    let b = ca.leaf("b", &["b.test"]);
    let (l0, l1, server) = (unused_addr(), unused_addr(), unused_addr());
    let missing = dir.join("missing.pem");
    let broken = format!(
        "{}{}{}",
        listener(
            "missing",
            l0,
            "p",
            &format!(
                "  [listener.tls]\n  cert = \"{}\"\n  key = \"{}\"\n",
                missing.display(),
                a.key_file.display()
            )
        ),
        listener(
            "mismatch",
            l1,
            "p",
            &format!(
                "  [listener.tls]\n  cert = \"{}\"\n  key = \"{}\"\n  client_auth = \"optional\"\n",
                a.cert_file.display(),
                b.key_file.display()
            )
        ),
        pool("p", &[server], "  [pool.tls]\n  verify = false\n"),
    );
    let check = |text: &str| {
        let path = dir.join("l4relay.toml");
        std::fs::write(&path, format!("[admin]\nlisten = \"off\"\n\n{text}")).unwrap();
        let out = std::process::Command::new(BIN)
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };

    let (code, stderr) = check(&broken);
    assert_eq!(code, Some(1), "{stderr}");
    for expected in [
        "l4relay.toml:9:10: listener[0].tls.cert: cannot read",
        "listener[1].tls.key: the private key does not belong to the certificate",
        "listener[1].tls.client_auth: needs client_ca",
        "3 error(s)",
    ] {
        assert!(stderr.contains(expected), "no {expected:?} in:\n{stderr}");
    }

    let valid = format!(
        "{}{}",
        listener(
            "ok",
            l0,
            "p",
            &listener_tls(
                &a,
                "  min_version = \"1.3\"\n  alpn = [\"h2\", \"http/1.1\"]\n"
            )
        ),
        pool("p", &[server], "  [pool.tls]\n  verify = false\n")
    );
    let (code, stderr) = check(&valid);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("warning:")
            && stderr.contains("pool[0].tls.verify")
            && stderr.contains("NOT verified"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_from_the_server_side_is_carried_too() {
    const REPLY: u64 = 3 << 20;
    const REQUEST: u64 = 1 << 20;
    let HalfClose {
        dir,
        ca,
        relay,
        terminating,
        originating,
        mut plain_seen,
        mut tls_seen,
    } = half_close_setup("tls-server-half-close", Behaviour::ReplyFirst(REPLY)).await;
    let reply_digest = payload_digest(7, REPLY);

    // A plain server ends first: its FIN reaches the TLS client as close_notify after the whole
    // reply (a bare FIN would be an error for the client here); the client then still sends.
    let (tls, local) =
        tls_connect(terminating, "relay.test", client_config(ca.roots(), None)).await;
    let (mut r, mut w) = tokio::io::split(tls);
    let received = tokio::time::timeout(Duration::from_secs(30), receive_all(&mut r))
        .await
        .expect("reply in time")
        .expect("the whole reply, then close_notify");
    assert_eq!(received, (REPLY, reply_digest));
    send_payload(&mut w, 5, REQUEST).await;
    w.shutdown().await.unwrap();
    let got = next_seen(&mut plain_seen, "plain server").await;
    assert!(got.clean_end && got.received == REQUEST, "{got:?}");
    assert_fields(
        &log_for(&relay, local).await,
        &[
            "end=server_closed",
            "bytes_c2s=1048576",
            "bytes_s2c=3145728",
        ],
    );

    // A TLS server ends first: its close_notify reaches the plain client as a FIN after the
    // whole reply; the client's request still reaches the server, ended by close_notify.
    let mut client = connect(originating).await;
    let local = client.local_addr().unwrap();
    let received = tokio::time::timeout(Duration::from_secs(30), receive_all(&mut client))
        .await
        .expect("reply in time")
        .expect("the whole reply, then FIN");
    assert_eq!(received, (REPLY, reply_digest));
    send_payload(&mut client, 5, REQUEST).await;
    client.shutdown().await.unwrap();
    let got = next_seen(&mut tls_seen, "TLS server").await;
    assert!(got.clean_end && got.received == REQUEST, "{got:?}");
    assert_fields(&log_for(&relay, local).await, &["end=server_closed"]);
    let _ = std::fs::remove_dir_all(dir);
}

/// How far a client goes into its TLS handshake with the relay's listener.
enum Stall {
    /// Opens TCP and sends nothing.
    Silent,
    /// Sends its ClientHello, then nothing more (the relay answers and waits for Finished).
    AfterClientHello,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_timeout_covers_the_tls_handshake() {
    let dir = scratch_dir("tls-handshake-timeout");
    let ca = Ca::new(&dir, "main");
    let cert = ca.leaf("relay", &["relay.test"]);
    let (echo, accepted) = echo_server().await;
    let (relay, [listen]) = start_relay(|[listen]| {
        let extra = format!("handshake_timeout = \"500ms\"\n{}", listener_tls(&cert, ""));
        assemble_config(
            None,
            &[listener("tls", listen, "p", &extra)],
            &[pool("p", &[echo], "")],
        )
    });

    for stall in [Stall::Silent, Stall::AfterClientHello] {
        let what = match stall {
            Stall::Silent => "silent client",
            Stall::AfterClientHello => "client stalled after its ClientHello",
        };
        let mut tcp = connect(listen).await;
        let local = tcp.local_addr().unwrap();
        let started = std::time::Instant::now();
        if let Stall::AfterClientHello = stall {
            let name = ServerName::try_from("relay.test").unwrap();
            let mut tls = rustls::ClientConnection::new(looking_client(), name).unwrap();
            let mut hello = Vec::new();
            tls.write_tls(&mut hello).unwrap();
            tcp.write_all(&hello).await.unwrap();
        }
        // Whatever the relay sends (its handshake messages), then the end.
        let mut buf = vec![0u8; 16 * 1024];
        let mut answered = 0;
        loop {
            match tokio::time::timeout(IO_LIMIT, tcp.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("{what}: still open after {IO_LIMIT:?}"))
            {
                Ok(0) | Err(_) => break,
                Ok(n) => answered += n,
            }
        }
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_secs(4),
            "{what}: closed after {took:?}, handshake_timeout is 500ms"
        );
        if let Stall::AfterClientHello = stall {
            assert!(
                answered > 0,
                "{what}: the relay did not answer the ClientHello"
            );
        }
        assert_fields(&log_for(&relay, local).await, &["end=handshake_timeout"]);
    }
    // Not TLS at all (plain HTTP to a TLS listener): refused at once, and said so.
    let mut tcp = connect(listen).await;
    let local = tcp.local_addr().unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: relay.test\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(IO_LIMIT, tcp.read_to_end(&mut answer))
        .await
        .expect("plain HTTP refused in time");
    assert_fields(
        &log_for(&relay, local).await,
        &["end=tls_handshake_error", "detail=tls_not_tls"],
    );
    assert_eq!(accepted.get(), 0, "no server was connected to");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upstream_handshake_is_a_failed_connect() {
    let dir = scratch_dir("tls-upstream-failure");
    let ca = Ca::new(&dir, "main");
    let other_ca = Ca::new(&dir, "other");
    let good = ca.leaf("upstream", &["upstream.test"]);
    let impostor = other_ca.leaf("impostor", &["upstream.test"]);
    let (untrusted, _) = upstream(Some(server_config(&impostor)), Behaviour::Echo).await;
    // Plain TCP where TLS is expected: it greets with a line, which is no TLS record.
    let (plain, _) = named_server("plain").await;
    let (trusted, mut seen) = upstream(Some(server_config(&good)), Behaviour::Echo).await;
    let ca_file = ca.file.display().to_string();
    let (relay, [listen, failing, admin]) = start_relay(|[listen, failing, admin]| {
        let tls = format!("  [pool.tls]\n  sni = \"upstream.test\"\n  ca_file = \"{ca_file}\"\n");
        // Checks once an hour: only live traffic can take the failing servers down in time.
        let health = "  [pool.health]\n  check = \"tcp\"\n  interval = \"1h\"\n  init_state = \"up\"\n  passive_fall = 2\n";
        assemble_config(
            Some(admin),
            &[
                listener("retried", listen, "p", ""),
                listener("failing", failing, "bad", ""),
            ],
            &[
                pool(
                    "p",
                    &[untrusted, plain, trusted],
                    &format!("balance = \"first\"\nretries = 2\n{tls}{health}"),
                ),
                pool(
                    "bad",
                    &[untrusted, plain],
                    &format!("balance = \"first\"\nretries = 1\n{tls}"),
                ),
            ],
        )
    });
    let attempts = |server: &'static str, result: &'static str| async move {
        metric(
            admin,
            "l4relay_upstream_connections_total",
            &[("pool", "p"), ("server", server), ("result", result)],
        )
        .await
    };

    // The untrusted server, then the plain one, fail; the third server relays. Each failure
    // is a failed connect attempt of its server, none a success.
    for round in 1..=2u32 {
        let mut client = connect(listen).await;
        let local = client.local_addr().unwrap();
        assert_echo(
            &mut client,
            b"third time lucky",
            "retried on the trusted server",
        )
        .await;
        drop(client);
        next_seen(&mut seen, "the trusted server").await;
        let line = log_for(&relay, local).await;
        assert_fields(&line, &["server=p-2"]);
        for server in ["p-0", "p-1"] {
            assert_eq!(
                attempts(server, "error").await,
                f64::from(round),
                "{server}"
            );
            assert_eq!(attempts(server, "ok").await, 0.0, "{server}");
        }
        assert_eq!(attempts("p-2", "ok").await, f64::from(round));
        let retries = metric(admin, "l4relay_upstream_retries_total", &[("pool", "p")]).await;
        assert_eq!(retries, f64::from(2 * round));
    }

    // Two failed handshakes in a row: passive health took both servers down, so the next
    // client goes straight to the trusted one.
    let status = get_status(admin).await;
    for server in ["p-0", "p-1"] {
        let json = &servers_json(&status, "p", server)[0];
        assert_eq!(json["state"], "down", "{json}");
        let reason = json["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("2 connects in a row failed in live traffic (last: error)"),
            "{reason}"
        );
    }
    let mut client = connect(listen).await;
    assert_echo(
        &mut client,
        b"straight there",
        "only the trusted server is up",
    )
    .await;
    drop(client);
    for server in ["p-0", "p-1"] {
        assert_eq!(
            attempts(server, "error").await,
            2.0,
            "{server} was tried again"
        );
    }

    // Every server fails: the last failure's reason is the connection's detail, and stderr
    // says what each handshake met.
    let (local, client) = open("127.0.0.1", failing).await;
    if let Ok(mut client) = client {
        assert_refused(&mut client, "no server completes the handshake").await;
    }
    assert_fields(
        &log_for(&relay, local).await,
        &["end=connect_failed", "detail=tls_not_tls"],
    );
    let mut relay = relay;
    relay.wait_for_stderr(
        &format!("connect failed after 2 attempt(s), last to {plain}: tls_not_tls"),
        IO_LIMIT,
    );
    let stderr = relay.stderr();
    for (server, why) in [
        (
            untrusted,
            "(tls_certificate_unknown_issuer): invalid peer certificate: UnknownIssuer",
        ),
        (
            plain,
            "(tls_not_tls): received corrupt message of type InvalidContentType",
        ),
    ] {
        let line = format!("TLS handshake with {server} failed {why}");
        assert!(
            stderr.lines().any(|l| l.contains(&line)),
            "no handshake failure of {server} ({why}) in:\n{stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_alpn_is_offered_to_the_servers() {
    let dir = scratch_dir("tls-alpn");
    let ca = Ca::new(&dir, "main");
    let back = ca.leaf("back", &["upstream.test"]);
    let (server, mut seen) = upstream(
        Some(server_config_with_alpn(&back, &["h2", "http/1.1"])),
        Behaviour::Echo,
    )
    .await;
    let ca_file = ca.file.display().to_string();
    let (relay, [offering, silent, mismatched]) = start_relay(|[offering, silent, mismatched]| {
        let tls = |alpn: &str| {
            format!("  [pool.tls]\n  sni = \"upstream.test\"\n  ca_file = \"{ca_file}\"\n{alpn}")
        };
        assemble_config(
            None,
            &[
                listener("offering", offering, "offering", ""),
                listener("silent", silent, "silent", ""),
                listener("mismatched", mismatched, "mismatched", ""),
            ],
            &[
                pool(
                    "offering",
                    &[server],
                    &tls("  alpn = [\"spdy/3\", \"http/1.1\"]\n"),
                ),
                pool("silent", &[server], &tls("")),
                pool("mismatched", &[server], &tls("  alpn = [\"h3\"]\n")),
            ],
        )
    });

    for (listen, expected) in [(offering, Some("http/1.1")), (silent, None)] {
        let mut client = connect(listen).await;
        assert_echo(&mut client, b"which protocol?", "ALPN").await;
        drop(client);
        let got = next_seen(&mut seen, "ALPN").await;
        assert_eq!(got.alpn.as_deref(), expected, "pool of {listen}");
    }

    // Nothing in common: the server refuses the handshake, and the log says so.
    let (local, client) = open("127.0.0.1", mismatched).await;
    if let Ok(mut client) = client {
        assert_refused(&mut client, "no common ALPN protocol").await;
    }
    assert_fields(
        &log_for(&relay, local).await,
        &["end=connect_failed", "detail=tls_alert"],
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unverified_pool_is_warned_about_at_start_and_accepts_any_certificate() {
    let dir = scratch_dir("tls-unverified");
    let other_ca = Ca::new(&dir, "other");
    let impostor = other_ca.leaf("impostor", &["somewhere.else"]);
    let (server, mut seen) = upstream(Some(server_config(&impostor)), Behaviour::Echo).await;
    let (relay, [listen]) = start_relay(|[listen]| {
        assemble_config(
            None,
            &[listener("l", listen, "p", "")],
            &[pool(
                "p",
                &[server],
                "  [pool.tls]\n  sni = \"upstream.test\"\n  verify = false\n",
            )],
        )
    });
    let stderr = relay.stderr();
    assert!(
        stderr.lines().any(|l| l.contains("WARN")
            && l.contains("pool[0].tls.verify")
            && l.contains("NOT verified")),
        "no warning at start:\n{stderr}"
    );
    let mut client = connect(listen).await;
    assert_echo(&mut client, b"to whoever answers", "verify = false").await;
    drop(client);
    assert_eq!(
        next_seen(&mut seen, "unverified").await.sni.as_deref(),
        Some("upstream.test")
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn check_warns_of_certificates_that_expire_soon_or_have_expired() {
    let dir = scratch_dir("tls-expiry");
    let ca = Ca::new(&dir, "main");
    let soon = ca.leaf_expiring("soon", &["relay.test"], 10);
    let expired = ca.leaf_expiring("expired", &["client.test"], -2);
    let fine = ca.leaf_expiring("fine", &["relay.test"], 90);
    let (l0, l1, server) = (unused_addr(), unused_addr(), unused_addr());
    let text = format!(
        "[admin]\nlisten = \"off\"\n\n{}{}{}",
        listener("soon", l0, "p", &listener_tls(&soon, "")),
        listener("fine", l1, "p", &listener_tls(&fine, "")),
        pool(
            "p",
            &[server],
            &format!(
                "  [pool.tls]\n  cert = \"{}\"\n  key = \"{}\"\n",
                expired.cert_file.display(),
                expired.key_file.display()
            )
        ),
    );
    let path = dir.join("l4relay.toml");
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let warned = |key: &str, file: &Path, what: &str| {
        stderr.lines().any(|l| {
            l.starts_with("warning:")
                && l.contains(key)
                && l.contains(&file.display().to_string())
                && l.contains(what)
        })
    };
    // 10 days less the moments since the certificate was made: 9 or 10 whole days.
    assert!(
        ["expires in 9 day(s), on ", "expires in 10 day(s), on "]
            .iter()
            .any(|what| warned("listener[0].tls.cert", &soon.cert_file, what)),
        "{stderr}"
    );
    assert!(
        warned("pool[0].tls.cert", &expired.cert_file, "expired on "),
        "{stderr}"
    );
    assert!(
        !stderr.contains(&fine.cert_file.display().to_string()),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
