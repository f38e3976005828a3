//! End-to-end TLS through the built binary: termination on listeners, origination to pools,
//! both at once (re-encryption), client certificates (mTLS), certificates chosen by SNI and
//! routing on the handshake's SNI, a PROXY v2 header before the handshake, half-close carried
//! as close_notify, and certificates re-read on SIGHUP.
//!
//! Every certificate is generated here with rcgen (throwaway CAs, server and client
//! certificates), and every TLS peer is a real rustls client or server verifying what it is
//! told to verify.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// How long any single network step may take before the test fails.
const IO_LIMIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Certificates.

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A throwaway certificate authority; it writes its certificates beside its own PEM file.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    file: PathBuf,
    dir: PathBuf,
}

/// A certificate signed by a `Ca`, as PEM files and as rustls values.
struct Leaf {
    cert_file: PathBuf,
    key_file: PathBuf,
    der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Leaf {
    fn key(&self) -> PrivateKeyDer<'static> {
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
    fn new(dir: &Path, name: &str) -> Ca {
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
    fn leaf(&self, file: &str, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = CertificateParams::new(names).unwrap();
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

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        roots
    }
}

// ---------------------------------------------------------------------------------------------
// TLS peers.

/// A client trusting `roots`, presenting `identity` when asked for a certificate.
fn client_config(roots: RootCertStore, identity: Option<&Leaf>) -> Arc<ClientConfig> {
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
    let verifier = Arc::new(AnyCertificate(provider.signature_verification_algorithms));
    Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth(),
    )
}

#[derive(Debug)]
struct AnyCertificate(rustls::crypto::WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

type ClientTls = tokio_rustls::client::TlsStream<TcpStream>;

/// A TCP connection to `to`, with its local address (the `client=` of its access-log line).
async fn connect(to: SocketAddr) -> (TcpStream, SocketAddr) {
    let stream = tokio::time::timeout(IO_LIMIT, TcpStream::connect(to))
        .await
        .expect("connect in time")
        .expect("connect to the relay");
    stream.set_nodelay(true).unwrap();
    let local = stream.local_addr().unwrap();
    (stream, local)
}

/// Connects from a port bound first, so the `client=` of the access log is known even when
/// the relay refuses so fast that its reset beats `connect` returning.
async fn connect_maybe_refused(to: SocketAddr) -> (std::io::Result<TcpStream>, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let local = socket.local_addr().unwrap();
    let stream = tokio::time::timeout(IO_LIMIT, socket.connect(to))
        .await
        .expect("connect in time");
    (stream, local)
}

/// A TLS handshake as `name` over `tcp`.
async fn handshake(
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
    let (tcp, local) = connect(to).await;
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
async fn assert_echo<S: AsyncRead + AsyncWrite + Unpin>(
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
}

/// What an upstream test server saw of one connection, once it is over.
#[derive(Debug)]
struct Seen {
    /// The SNI of the TLS handshake (None: none sent, or not TLS).
    sni: Option<String>,
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
                    None => serve(tcp, behaviour, None).await,
                    Some(config) => match TlsAcceptor::from(config).accept(tcp).await {
                        Err(_) => return,
                        Ok(stream) => {
                            let sni = stream.get_ref().1.server_name().map(str::to_string);
                            serve(stream, behaviour, sni).await
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
) -> Seen {
    let (mut r, mut w) = tokio::io::split(stream);
    match behaviour {
        Behaviour::Echo => {
            let copied = tokio::io::copy(&mut r, &mut w).await;
            if copied.is_ok() {
                let _ = w.shutdown().await;
            }
            Seen {
                sni,
                received: copied.as_ref().map_or(0, |n| *n),
                clean_end: copied.is_ok(),
            }
        }
        Behaviour::ReplyAfterEnd(len) => {
            let received = receive_all(&mut r).await;
            if received.is_ok() {
                send_payload(&mut w, 7, len).await;
                let _ = w.shutdown().await;
            }
            Seen {
                sni,
                received: received.as_ref().map_or(0, |(n, _)| *n),
                clean_end: received.is_ok(),
            }
        }
    }
}

fn server_config(leaf: &Leaf) -> Arc<ServerConfig> {
    Arc::new(
        ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der.clone()], leaf.key())
            .unwrap(),
    )
}

async fn next_seen(rx: &mut mpsc::UnboundedReceiver<Seen>, what: &str) -> Seen {
    tokio::time::timeout(IO_LIMIT, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("{what}: the upstream saw no connection end in time"))
        .expect("upstream running")
}

// ---------------------------------------------------------------------------------------------
// The relay.

fn listener(name: &str, listen: SocketAddr, pool: &str, extra: &str) -> String {
    format!(
        "[[listener]]\nname = \"{name}\"\nlisten = \"{listen}\"\npool = \"{pool}\"\n{extra}\n\n"
    )
}

fn pool(name: &str, servers: &[SocketAddr], extra: &str) -> String {
    let mut text = format!("[[pool]]\nname = \"{name}\"\n{extra}\n");
    for (i, server) in servers.iter().enumerate() {
        text.push_str(&format!(
            "  [[pool.server]]\n  name = \"{name}-{i}\"\n  address = \"{server}\"\n"
        ));
    }
    text.push('\n');
    text
}

/// `[listener.tls]` with `leaf` as the certificate, plus `extra` keys.
fn listener_tls(leaf: &Leaf, extra: &str) -> String {
    format!(
        "  [listener.tls]\n  cert = \"{}\"\n  key = \"{}\"\n{extra}\n",
        leaf.cert_file.display(),
        leaf.key_file.display()
    )
}

fn relay_config(admin: Option<SocketAddr>, listeners: &[String], pools: &[String]) -> String {
    let admin = admin.map_or("off".to_string(), |a| a.to_string());
    format!(
        "[admin]\nlisten = \"{admin}\"\n\n{}{}",
        listeners.concat(),
        pools.concat()
    )
}

/// A listen address of its own (see tests/edge.rs): a loopback address no other relay uses.
fn listen_addr() -> SocketAddr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let ip = Ipv4Addr::new(
        127,
        250 + (std::process::id() % 5) as u8,
        (n / 250) as u8,
        (n % 250 + 1) as u8,
    );
    let probe = std::net::TcpListener::bind((ip, 0)).expect("bind a loopback address");
    probe.local_addr().unwrap()
}

/// Starts a relay on a config built around fresh listen addresses, again if the port was
/// taken in between.
fn start_relay<T>(build: impl Fn() -> (String, T)) -> (RelayProcess, T) {
    const ATTEMPTS: usize = 3;
    for attempt in 1..=ATTEMPTS {
        let (config, addresses) = build();
        match std::panic::catch_unwind(|| RelayProcess::start(&config)) {
            Ok(relay) => return (relay, addresses),
            Err(panic) => {
                let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
                if attempt == ATTEMPTS || !message.contains("Address already in use") {
                    std::panic::resume_unwind(panic);
                }
            }
        }
    }
    unreachable!()
}

/// The access-log line of the connection from `client`, once it is written.
async fn log_line(relay: &RelayProcess, client: impl std::fmt::Display) -> String {
    let needle = format!(" client={client} ");
    let found = eventually(IO_LIMIT, || relay.access_log().contains(&needle)).await;
    let log = relay.access_log();
    assert!(found, "no access-log line for {client}:\n{log}");
    log.lines()
        .find(|l| l.contains(&needle))
        .unwrap()
        .to_string()
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
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
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
    let (relay, listen) = start_relay(|| {
        let listen = listen_addr();
        let config = relay_config(
            None,
            &[listener("tls", listen, "p", &listener_tls(&cert, ""))],
            &[pool("p", &[echo], "")],
        );
        (config, listen)
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

    let line = log_line(&relay, local).await;
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
    let (mut relay, (by_name, by_ip, untrusted)) = start_relay(|| {
        let (by_name, by_ip, untrusted) = (listen_addr(), listen_addr(), listen_addr());
        let named = format!("  [pool.tls]\n  sni = \"upstream.test\"\n  ca_file = \"{ca_file}\"\n");
        let ip = format!("  [pool.tls]\n  ca_file = \"{ca_file}\"\n");
        let config = relay_config(
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
        );
        (config, (by_name, by_ip, untrusted))
    });

    // The pool's sni: sent, and the certificate verified against it.
    let (mut client, local) = connect(by_name).await;
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
    assert_fields(&log_line(&relay, local).await, &["end=client_closed"]);

    // An IP-literal server without sni: no SNI sent, the certificate's IP address verified.
    let (mut client, _) = connect(by_ip).await;
    assert_echo(&mut client, b"by address", "server given by IP").await;
    drop(client);
    let got = next_seen(&mut seen, "by IP").await;
    assert_eq!(got.sni, None, "no SNI for an IP address");

    // A certificate from an unknown CA: refused, the client closed, the reason logged.
    let (client, local) = connect_maybe_refused(untrusted).await;
    match client {
        Ok(mut client) => assert_refused(&mut client, "untrusted server certificate").await,
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    let line = log_line(&relay, local).await;
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
    let (relay, listen) = start_relay(|| {
        let listen = listen_addr();
        let config = relay_config(
            None,
            &[listener("both", listen, "p", &listener_tls(&front, ""))],
            &[pool(
                "p",
                &[server],
                &format!("  [pool.tls]\n  sni = \"upstream.test\"\n  ca_file = \"{ca_file}\"\n"),
            )],
        );
        (config, listen)
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
        &log_line(&relay, local).await,
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
    let (relay, (required, optional)) = start_relay(|| {
        let (required, optional) = (listen_addr(), listen_addr());
        let mtls = |mode: &str| {
            listener_tls(
                &cert,
                &format!("  client_ca = \"{ca_file}\"\n  client_auth = \"{mode}\"\n"),
            )
        };
        let config = relay_config(
            None,
            &[
                listener("required", required, "p", &mtls("required")),
                listener("optional", optional, "p", &mtls("optional")),
            ],
            &[pool("p", &[echo], "")],
        );
        (config, (required, optional))
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
        let (tcp, local) = connect(required).await;
        if let Ok(mut tls) = handshake(tcp, "relay.test", client_config(roots(), identity)).await {
            assert_refused(&mut tls, who).await;
        }
        assert_fields(
            &log_line(&relay, local).await,
            &["end=refused_rule", detail],
        );
    }

    // client_auth = "optional": no certificate is fine, an untrusted one is not.
    let (mut tls, _) = tls_connect(optional, "relay.test", client_config(roots(), None)).await;
    assert_echo(&mut tls, b"anonymous", "optional client auth").await;
    let (tcp, local) = connect(optional).await;
    if let Ok(mut tls) = handshake(tcp, "relay.test", client_config(roots(), Some(&stranger))).await
    {
        assert_refused(&mut tls, "optional, untrusted certificate").await;
    }
    assert_fields(
        &log_line(&relay, local).await,
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
    let (_relay, listen) = start_relay(|| {
        let listen = listen_addr();
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
        let config = relay_config(
            None,
            &[listener("sni", listen, "D", &tls)],
            &[
                pool("A", &[server_a], ""),
                pool("B", &[server_b], ""),
                pool("D", &[server_d], ""),
            ],
        );
        (config, listen)
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
    let (relay, listen) = start_relay(|| {
        let listen = listen_addr();
        let extra = format!(
            "proxy_protocol = \"v2\"\nallow = [\"203.0.113.0/24\"]\n{}",
            listener_tls(&cert, "")
        );
        let config = relay_config(
            None,
            &[listener("pp", listen, "p", &extra)],
            &[pool("p", &[echo], "")],
        );
        (config, listen)
    });

    // PROXY v2, TCP over IPv4, from 203.0.113.7:40000 to 10.0.0.1:443, by hand.
    let mut header = vec![
        0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x21, 0x11, 0x00,
        0x0C,
    ];
    header.extend_from_slice(&[203, 0, 113, 7, 10, 0, 0, 1]);
    header.extend_from_slice(&40000u16.to_be_bytes());
    header.extend_from_slice(&443u16.to_be_bytes());
    let (mut tcp, _) = connect(listen).await;
    tcp.write_all(&header).await.unwrap();
    let mut tls = handshake(tcp, "relay.test", client_config(ca.roots(), None))
        .await
        .expect("TLS after the PROXY header");
    assert_echo(&mut tls, b"behind an NLB", "PROXY then TLS").await;
    tls.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = tls.read_to_end(&mut rest).await;

    let line = log_line(&relay, "203.0.113.7:40000").await;
    assert_fields(&line, &["sni=relay.test", "end=client_closed"]);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_is_carried_as_close_notify() {
    let dir = scratch_dir("tls-half-close");
    let ca = Ca::new(&dir, "main");
    let front = ca.leaf("front", &["relay.test"]);
    let back = ca.leaf("back", &["upstream.test"]);
    const REQUEST: u64 = 1 << 20;
    const REPLY: u64 = 3 << 20;
    let (plain, mut plain_seen) = upstream(None, Behaviour::ReplyAfterEnd(REPLY)).await;
    let (tls_server, mut tls_seen) =
        upstream(Some(server_config(&back)), Behaviour::ReplyAfterEnd(REPLY)).await;
    let ca_file = ca.file.display().to_string();
    let (_relay, (terminating, originating)) = start_relay(|| {
        let (terminating, originating) = (listen_addr(), listen_addr());
        let config = relay_config(
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
        );
        (config, (terminating, originating))
    });
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
    let (mut client, _) = connect(originating).await;
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
    let (mut relay, (listen, admin)) = start_relay(|| {
        let (listen, admin) = (listen_addr(), listen_addr());
        let config = relay_config(
            Some(admin),
            &[listener("tls", listen, "p", &tls_table)],
            &[pool("p", &[echo], "")],
        );
        (config, (listen, admin))
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
    let metrics = http_get(admin, "/metrics").await;
    assert!(
        metrics.contains("l4relay_config_reloads_total{result=\"error\"} 1"),
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
    let (l0, l1, server) = (free_addr(), free_addr(), free_addr());
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
