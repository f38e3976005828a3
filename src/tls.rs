//! TLS for relayed traffic, with rustls on the ring provider: terminating it on listeners
//! (`[listener.tls]`) and originating it to servers (`[pool.tls]`).
//!
//! This module owns what TLS needs beyond bytes: reading certificate chains and keys from PEM
//! files and checking that they belong together, choosing a listener's certificate by the
//! client's SNI (`CertificateSet`), verifying client certificates (mTLS) and servers' certificates
//! (system roots, a CA file, or deliberately nothing), the two handshakes a session performs
//! (`terminate`, `originate`), and naming a failed handshake in one word for the access log.
//! Relaying the decrypted stream is `relay::stream`'s; what a failure means for the connection is
//! the session's.
//!
//! The builders run when the config is loaded: a `Config` that exists holds certificates that
//! were readable, parsed and matched to their keys at that moment. A reload (SIGHUP) reads the
//! files again; if one is missing or bad, the reload is refused like any other config error and
//! the running generation keeps its certificates. Each generation has its own rustls configs, so
//! connections keep the certificate they were established with.

use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme, SupportedProtocolVersion,
};
use tokio::net::TcpStream;

use crate::relay::stream::{Pooled, Transport};
use crate::route::Routes;

/// A client connection with TLS terminated by the relay.
pub type Terminated = tokio_rustls::server::TlsStream<TcpStream>;
/// A server connection with TLS originated by the relay.
pub type Originated = tokio_rustls::client::TlsStream<TcpStream>;

/// The crypto provider of every TLS config in the process: ring, the quickest to build.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())))
}

/// The lowest TLS version a listener or pool accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinVersion {
    Tls12,
    Tls13,
}

impl MinVersion {
    fn versions(self) -> &'static [&'static SupportedProtocolVersion] {
        static BOTH: [&SupportedProtocolVersion; 2] =
            [&rustls::version::TLS13, &rustls::version::TLS12];
        static TLS13_ONLY: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        match self {
            MinVersion::Tls12 => &BOTH,
            MinVersion::Tls13 => &TLS13_ONLY,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Files.

/// A certificate chain (leaf first) and its private key, checked to belong together.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub certified: Arc<CertifiedKey>,
}

/// The certificates of a PEM file, in order; an error unless there is at least one.
pub fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_file(path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not PEM certificates: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{}: no certificate (expected PEM \"BEGIN CERTIFICATE\" blocks, the server's first)",
            path.display()
        ));
    }
    Ok(chain)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 RSA or SEC1 EC).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!(
            "{}: no private key (expected PEM \"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\")",
            path.display()
        ),
        e => format!("{}: not a PEM private key: {e}", path.display()),
    })
}

/// Certificate, key and CA files are small; anything larger is not one.
const MAX_FILE: u64 = 1 << 20;

/// Reads a regular file of at most `MAX_FILE` bytes: a device or a FIFO named by mistake (or by a
/// fuzzer) must not hang or exhaust a config load.
fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let cannot = |e: io::Error| format!("cannot read {}: {e}", path.display());
    let file = std::fs::File::open(path).map_err(cannot)?;
    let meta = file.metadata().map_err(cannot)?;
    if !meta.is_file() {
        return Err(format!("{}: not a regular file", path.display()));
    }
    let mut data = Vec::new();
    file.take(MAX_FILE + 1)
        .read_to_end(&mut data)
        .map_err(cannot)?;
    if data.len() as u64 > MAX_FILE {
        return Err(format!("{}: larger than 1 MiB", path.display()));
    }
    Ok(data)
}

/// Makes a signing key of `key` and checks that it is the key of the chain's leaf certificate.
pub fn identity(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Identity, String> {
    let signing = provider()
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| format!("unusable private key: {e}"))?;
    let certified = CertifiedKey::new(chain.clone(), signing);
    match certified.keys_match() {
        // A key that cannot tell its public half is accepted: the handshake will show.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => {
            return Err(
                "the private key does not belong to the certificate (the first in the cert file)"
                    .to_string(),
            )
        }
    }
    Ok(Identity {
        chain,
        key,
        certified: Arc::new(certified),
    })
}

/// The DNS names (subjectAltName) of a leaf certificate, lowercase; wildcards as "*.name".
pub fn dns_names(leaf: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let cert = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| format!("cannot parse the certificate: {e}"))?;
    Ok(cert
        .valid_dns_names()
        .map(|name| name.to_ascii_lowercase())
        .collect())
}

/// The CA certificates of a PEM file; an error unless it holds at least one.
pub fn load_ca_file(path: &Path) -> Result<RootCertStore, String> {
    let pem = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not PEM certificates: {e}", path.display()))?;
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!("{}: no usable CA certificate", path.display()));
    }
    Ok(roots)
}

/// The system's CA store (/etc/ssl), loaded once per process.
pub fn system_roots() -> Result<Arc<RootCertStore>, String> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for error in &found.errors {
                tracing::warn!("system CA store: {error}");
            }
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                Err("no CA certificates in the system store: install ca-certificates, or set ca_file".to_string())
            } else {
                Ok(Arc::new(roots))
            }
        })
        .clone()
}

// ---------------------------------------------------------------------------------------------
// Listeners: terminating TLS.

/// A listener's certificates and the names each serves: the client's SNI picks one, exact names
/// before wildcards (the matching of `route::Routes`); no SNI or no match gets the default.
#[derive(Debug, Default)]
pub struct CertificateSet {
    names: Routes,
    keys: Vec<Arc<CertifiedKey>>,
    default: usize,
}

impl CertificateSet {
    /// Adds a certificate; its index, for `name` and `set_default`.
    pub fn add(&mut self, key: Arc<CertifiedKey>) -> usize {
        self.keys.push(key);
        self.keys.len() - 1
    }

    /// Serves `name` ("host" or "*.domain") with certificate `index`; false if another
    /// certificate already serves it.
    pub fn name(&mut self, name: &str, index: usize) -> bool {
        self.names.insert(name, index)
    }

    pub fn set_default(&mut self, index: usize) {
        self.default = index;
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl ResolvesServerCert for CertificateSet {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let index = hello
            .server_name()
            .and_then(|name| {
                // rustls hands the name over lowercase already; a route table needs it so.
                if name.bytes().any(|b| b.is_ascii_uppercase()) {
                    self.names.find(&name.to_ascii_lowercase())
                } else {
                    self.names.find(name)
                }
            })
            .unwrap_or(self.default);
        self.keys.get(index).cloned()
    }
}

/// Client-certificate authentication on a listener.
pub struct ClientAuth {
    pub roots: RootCertStore,
    /// False: a client without a certificate is served too (one that presents an untrusted
    /// certificate is still refused).
    pub required: bool,
}

/// The rustls config a listener accepts with.
pub fn server_config(
    certificates: CertificateSet,
    min_version: MinVersion,
    alpn: &[String],
    client_auth: Option<ClientAuth>,
) -> Result<Arc<ServerConfig>, String> {
    let provider = provider();
    let verifier = match client_auth {
        None => WebPkiClientVerifier::no_client_auth(),
        Some(auth) => {
            let builder =
                WebPkiClientVerifier::builder_with_provider(Arc::new(auth.roots), provider.clone());
            let builder = if auth.required {
                builder
            } else {
                builder.allow_unauthenticated()
            };
            builder
                .build()
                .map_err(|e| format!("client certificate verification: {e}"))?
        }
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(min_version.versions())
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(certificates));
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(Arc::new(config))
}

/// The server side of a client's TLS handshake, to await. On a failure rustls sends the client
/// an alert saying why, and the socket closes after it. Boxed: a TLS session is large, and the
/// session futures of plain connections should not carry room for one.
pub fn terminate(
    config: &Arc<ServerConfig>,
    client: TcpStream,
) -> Pin<Box<tokio_rustls::server::Accept<TcpStream>>> {
    Box::pin(tokio_rustls::TlsAcceptor::from(Arc::clone(config)).accept(client))
}

// ---------------------------------------------------------------------------------------------
// Pools: originating TLS.

/// How a pool checks its servers' certificates.
pub enum Verify {
    /// Against the system's CA store.
    SystemRoots,
    /// Against the CAs of a file.
    Roots(RootCertStore),
    /// Not at all (`verify = false`).
    Off,
}

/// The rustls config a pool connects to its servers with.
pub fn client_config(
    verify: Verify,
    identity: Option<Identity>,
    min_version: MinVersion,
    alpn: &[String],
) -> Result<Arc<ClientConfig>, String> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(min_version.versions())
        .map_err(|e| format!("TLS setup: {e}"))?;
    let builder = match verify {
        Verify::SystemRoots => builder.with_root_certificates(system_roots()?),
        Verify::Roots(roots) => builder.with_root_certificates(roots),
        Verify::Off => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate {
                algorithms: provider.signature_verification_algorithms,
            })),
    };
    let mut config = match identity {
        Some(identity) => builder
            .with_client_auth_cert(identity.chain, identity.key)
            .map_err(|e| format!("client certificate: {e}"))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(Arc::new(config))
}

/// The name a server's certificate must carry: `sni`, else the host name the server was
/// resolved from, else its IP address (then no SNI is sent, and the certificate must list the
/// address).
pub fn server_name(
    sni: Option<&str>,
    host: Option<&str>,
    ip: IpAddr,
) -> Result<ServerName<'static>, String> {
    match sni.or(host) {
        Some(name) => ServerName::try_from(name.to_string())
            .map_err(|_| format!("\"{name}\" is not a valid TLS server name")),
        None => Ok(ServerName::IpAddress(ip.into())),
    }
}

/// Performs the client side of the TLS handshake with a server. Boxed, as `terminate`.
pub async fn originate(
    config: &Arc<ClientConfig>,
    name: ServerName<'static>,
    server: TcpStream,
) -> io::Result<Box<Originated>> {
    let connect = tokio_rustls::TlsConnector::from(Arc::clone(config)).connect(name, server);
    Box::pin(connect).await.map(Box::new)
}

/// `verify = false`: any certificate, any name; the handshake's signatures are still checked,
/// so the peer at least holds the key of the certificate it sent.
#[derive(Debug)]
pub struct AcceptAnyCertificate {
    pub algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

// ---------------------------------------------------------------------------------------------
// Handshake failures.

/// Why a handshake failed, for the access log's `detail` (a small, fixed set of words).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The peer presented no certificate where one is required (mTLS).
    NoCertificate,
    /// The peer's certificate did not verify; how.
    BadCertificate(&'static str),
    /// Anything else: protocol, alert, I/O.
    Other(&'static str),
}

impl Failure {
    pub fn of(error: &io::Error) -> Failure {
        let tls = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        match tls {
            Some(rustls::Error::NoCertificatesPresented) => Failure::NoCertificate,
            Some(rustls::Error::InvalidCertificate(e)) => Failure::BadCertificate(match e {
                CertificateError::UnknownIssuer => "tls_certificate_unknown_issuer",
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => {
                    "tls_certificate_name_mismatch"
                }
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    "tls_certificate_expired"
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    "tls_certificate_not_yet_valid"
                }
                _ => "tls_certificate_invalid",
            }),
            Some(rustls::Error::AlertReceived(_)) => Failure::Other("tls_alert"),
            Some(rustls::Error::PeerIncompatible(_) | rustls::Error::NoApplicationProtocol) => {
                Failure::Other("tls_incompatible")
            }
            Some(_) => Failure::Other("tls_protocol_error"),
            None => Failure::Other(match error.kind() {
                io::ErrorKind::UnexpectedEof => "tls_closed",
                io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe => "tls_reset",
                // Not a TLS record at all (e.g. plain HTTP to a TLS listener).
                io::ErrorKind::InvalidData => "tls_protocol_error",
                _ => "tls_io_error",
            }),
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Failure::NoCertificate => "tls_no_certificate",
            Failure::BadCertificate(label) | Failure::Other(label) => label,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TLS streams as relay transports.

// The relay reads a TLS stream through a pooled buffer, as a plain socket: rustls hands out one
// record's plaintext (16 KiB at most) at a time, and copying a few of them into one buffer to
// write them on with one syscall costs less CPU than a write per record (measured: about a third
// less per GB on the decrypting direction).

impl Transport for Pooled<Box<Terminated>> {
    fn socket(&self) -> &TcpStream {
        self.get_ref().get_ref().0
    }

    fn wants_flush(&self) -> bool {
        self.get_ref().get_ref().1.wants_write()
    }
}

impl Transport for Pooled<Box<Originated>> {
    fn socket(&self) -> &TcpStream {
        self.get_ref().get_ref().0
    }

    fn wants_flush(&self) -> bool {
        self.get_ref().get_ref().1.wants_write()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_have_short_labels() {
        let wrap = |e: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, e);
        assert_eq!(
            Failure::of(&wrap(rustls::Error::NoCertificatesPresented)),
            Failure::NoCertificate
        );
        assert_eq!(
            Failure::of(&wrap(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer
            )))
            .label(),
            "tls_certificate_unknown_issuer"
        );
        assert_eq!(
            Failure::of(&io::Error::from(io::ErrorKind::UnexpectedEof)).label(),
            "tls_closed"
        );
        assert_eq!(
            Failure::of(&io::Error::from(io::ErrorKind::ConnectionReset)).label(),
            "tls_reset"
        );
    }

    #[test]
    fn server_names() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            server_name(None, None, ip).unwrap(),
            ServerName::IpAddress(ip.into())
        );
        assert_eq!(
            server_name(None, Some("a.example.com"), ip)
                .unwrap()
                .to_str(),
            "a.example.com"
        );
        assert_eq!(
            server_name(Some("b.example.com"), Some("a.example.com"), ip)
                .unwrap()
                .to_str(),
            "b.example.com"
        );
    }
}
