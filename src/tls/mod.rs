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
use std::time::{Duration, SystemTime};

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

use crate::protocol::name_table::NameTable;
use crate::relay::stream::{Pooled, Transport};

/// `[listener.tls]`, with its files read: certificates parsed and matched to their keys, the
/// client CA loaded. Reloading the config reads them again.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    /// What the listener accepts with: certificates by SNI, versions, ALPN, client auth.
    pub server: Arc<rustls::ServerConfig>,
    pub min_version: MinVersion,
    pub alpn: Vec<String>,
    /// None: no client certificate is asked for.
    pub client_auth: Option<ClientAuthMode>,
    /// Certificates, the default one included.
    pub certificates: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthMode {
    /// A client without a trusted certificate is refused.
    Required,
    /// A client may present no certificate; one it presents must be trusted.
    Optional,
}

/// `[pool.tls]`: TLS originated to the pool's servers, with its files read.
#[derive(Debug, Clone)]
pub struct PoolTls {
    pub client: Arc<rustls::ClientConfig>,
    /// Server name sent and verified; None: each server's host name (for an IP address, no SNI
    /// and the certificate must list the address).
    pub sni: Option<String>,
    /// False: any certificate is accepted (warned about).
    pub verify: bool,
    pub min_version: MinVersion,
    pub alpn: Vec<String>,
}

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
// Certificate expiry.

/// How close to its notAfter a certificate is warned about when it is loaded.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// The end of a certificate's validity (notAfter), as the certificate states it, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotAfter {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

impl NotAfter {
    /// Seconds since the Unix epoch.
    pub fn unix(&self) -> i64 {
        let days = days_from_civil(self.year, self.month, self.day);
        days * 86_400 + i64::from(self.hour * 3600 + self.minute * 60 + self.second)
    }
}

impl std::fmt::Display for NotAfter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

/// The notAfter of a DER certificate: a walk over the outer SEQUENCE and the TBSCertificate's
/// fields up to its validity (RFC 5280 4.1; rustls-webpki checks validity but does not expose
/// it). Every length is checked against what is left; anything unexpected is an error.
pub fn not_after(cert: &[u8]) -> Result<NotAfter, &'static str> {
    const INTEGER: u8 = 0x02;
    const SEQUENCE: u8 = 0x30;
    const VERSION: u8 = 0xa0; // [0] EXPLICIT, constructed
    const UTC_TIME: u8 = 0x17;
    const GENERALIZED_TIME: u8 = 0x18;
    fn expect<'a>(input: &mut &'a [u8], tag: u8) -> Result<&'a [u8], &'static str> {
        match der_element(input)? {
            (found, contents) if found == tag => Ok(contents),
            _ => Err("not an X.509 certificate"),
        }
    }
    let mut input = cert;
    let mut certificate = expect(&mut input, SEQUENCE)?;
    let mut tbs = expect(&mut certificate, SEQUENCE)?;
    if tbs.first() == Some(&VERSION) {
        der_element(&mut tbs)?;
    }
    expect(&mut tbs, INTEGER)?; // serialNumber
    expect(&mut tbs, SEQUENCE)?; // signature algorithm
    expect(&mut tbs, SEQUENCE)?; // issuer
    let mut validity = expect(&mut tbs, SEQUENCE)?;
    der_element(&mut validity)?; // notBefore
    match der_element(&mut validity)? {
        (UTC_TIME, time) => parse_time(time, 2),
        (GENERALIZED_TIME, time) => parse_time(time, 4),
        _ => Err("the validity's notAfter is not a time"),
    }
}

/// Splits the next DER element (tag, length, contents) off `input`: its tag and contents.
fn der_element<'a>(input: &mut &'a [u8]) -> Result<(u8, &'a [u8]), &'static str> {
    const TRUNCATED: &str = "truncated DER";
    let (&tag, rest) = input.split_first().ok_or(TRUNCATED)?;
    if tag & 0x1f == 0x1f {
        return Err("unexpected multi-byte DER tag");
    }
    let (&first, rest) = rest.split_first().ok_or(TRUNCATED)?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        // Long form: 1 to 4 length bytes (0x80 alone, the indefinite length, is not DER).
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return Err("bad DER length");
        }
        let (bytes, rest) = rest.split_at(count);
        let len = bytes
            .iter()
            .fold(0usize, |len, b| len << 8 | usize::from(*b));
        (len, rest)
    };
    if rest.len() < len {
        return Err(TRUNCATED);
    }
    let (contents, rest) = rest.split_at(len);
    *input = rest;
    Ok((tag, contents))
}

/// A UTCTime ("YYMMDDHHMMSSZ", `year_digits` 2: 50–99 are 19xx) or GeneralizedTime
/// ("YYYYMMDDHHMMSSZ", 4), the forms RFC 5280 allows in certificates.
fn parse_time(time: &[u8], year_digits: usize) -> Result<NotAfter, &'static str> {
    const BAD: &str = "the notAfter time is not in the form RFC 5280 requires";
    let (digits, zone) = time.split_at(time.len().saturating_sub(1));
    if zone != b"Z" || digits.len() != year_digits + 10 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(BAD);
    }
    let number = |at: usize, len: usize| {
        digits[at..at + len]
            .iter()
            .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'))
    };
    let year = i64::from(number(0, year_digits));
    let year = match year_digits {
        2 if year >= 50 => 1900 + year,
        2 => 2000 + year,
        _ => year,
    };
    let field = |i: usize| number(year_digits + 2 * i, 2);
    let time = NotAfter {
        year,
        month: field(0),
        day: field(1),
        hour: field(2),
        minute: field(3),
        second: field(4),
    };
    let valid = (1..=12).contains(&time.month)
        && (1..=31).contains(&time.day)
        && time.hour < 24
        && time.minute < 60
        && time.second < 61;
    if valid {
        Ok(time)
    } else {
        Err(BAD)
    }
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar (H. Hinnant's
/// days_from_civil).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * i64::from((month + 9) % 12) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// A warning when a certificate of the chain in `path` has expired at `now` or expires within
/// `EXPIRY_WARNING` of it (the one that expires first); None otherwise. A certificate whose
/// validity cannot be read gets none: rustls accepted it, and its peers will judge it.
pub fn expiry_warning(
    path: &Path,
    chain: &[CertificateDer<'_>],
    now: SystemTime,
) -> Option<String> {
    let now = match now.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(since) => since.as_secs() as i64,
        Err(before) => -(before.duration().as_secs() as i64),
    };
    let (position, ends) = chain
        .iter()
        .enumerate()
        .filter_map(|(i, cert)| not_after(cert).ok().map(|ends| (i, ends)))
        .min_by_key(|(_, ends)| ends.unix())?;
    let which = match position {
        0 => "the certificate".to_string(),
        n => format!("certificate {} of the file (an intermediate)", n + 1),
    };
    let left = ends.unix() - now;
    if left < 0 {
        Some(format!(
            "{}: {which} expired on {ends}: peers that verify it refuse it; renew it",
            path.display()
        ))
    } else if left < EXPIRY_WARNING.as_secs() as i64 {
        Some(format!(
            "{}: {which} expires in {} day(s), on {ends}: renew it",
            path.display(),
            left / 86_400
        ))
    } else {
        None
    }
}

// ---------------------------------------------------------------------------------------------
// Listeners: terminating TLS.

/// A listener's certificates and the names each serves: the client's SNI picks one, exact names
/// before wildcards (the matching of `protocol::name_table::NameTable`); no SNI or no match gets the default.
#[derive(Debug, Default)]
pub struct CertificateSet {
    names: NameTable,
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
            // The first bytes are no TLS record: plain HTTP to a TLS listener, a plain TCP
            // server where TLS was expected.
            Some(rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)) => {
                Failure::Other("tls_not_tls")
            }
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
            Failure::of(&wrap(rustls::Error::InvalidMessage(
                rustls::InvalidMessage::InvalidContentType
            )))
            .label(),
            "tls_not_tls"
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

    /// A certificate valid until `year-month-day 12:34:56` UTC, as DER.
    fn certificate_until(year: i32, month: u8, day: u8) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap();
        params.not_after =
            rcgen::date_time_ymd(year, month, day) + Duration::from_secs(12 * 3600 + 34 * 60 + 56);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn not_after_of_utc_and_generalized_times() {
        // Up to 2049 a certificate says UTCTime, from 2050 GeneralizedTime (RFC 5280).
        let utc = not_after(&certificate_until(2049, 12, 31)).unwrap();
        assert_eq!(utc.to_string(), "2049-12-31 12:34:56 UTC");
        assert_eq!(utc.unix(), 2_524_566_896);
        let generalized = not_after(&certificate_until(2050, 1, 1)).unwrap();
        assert_eq!(generalized.to_string(), "2050-01-01 12:34:56 UTC");
        assert_eq!(generalized.unix(), 2_524_653_296);
        let past = not_after(&certificate_until(1999, 3, 1)).unwrap();
        assert_eq!(past.unix(), 920_291_696);
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 2, 29), 11_016);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
    }

    #[test]
    fn not_after_refuses_what_is_not_a_certificate() {
        let cert = certificate_until(2049, 12, 31);
        // Every truncation is an error, never a panic or a read past the end.
        for len in 0..cert.len() {
            assert!(not_after(&cert[..len]).is_err(), "{len} bytes");
        }
        for bad in [
            &b""[..],
            &[0x30, 0x80, 0x00, 0x00],             // indefinite length
            &[0x30, 0x85, 1, 0, 0, 0, 0],          // 5 length bytes
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff], // longer than the input
            &[0x1f, 0x01, 0x00],                   // multi-byte tag
            &[0x30, 0x03, 0x02, 0x01, 0x00],       // no TBSCertificate
            &[0x04, 0x00],                         // not a SEQUENCE
        ] {
            assert!(not_after(bad).is_err(), "{bad:?}");
        }
        // A time in a form RFC 5280 does not allow.
        for time in [
            &b"491231123456"[..],
            b"4912311234Z",
            b"491331123456Z",
            b"4912311234+0",
        ] {
            assert!(parse_time(time, 2).is_err(), "{time:?}");
        }
        assert!(parse_time(b"20491231123456Z", 4).is_ok());
    }

    #[test]
    fn expiry_is_warned_within_30_days_and_after() {
        let path = Path::new("/etc/l4relay/tls/a.pem");
        let chain = [CertificateDer::from(certificate_until(2030, 6, 15))];
        let ends = SystemTime::UNIX_EPOCH
            + Duration::from_secs(not_after(&chain[0]).unwrap().unix() as u64);
        let day = Duration::from_secs(86_400);
        assert_eq!(expiry_warning(path, &chain, ends - 31 * day), None);
        assert_eq!(
            expiry_warning(path, &chain, ends - 10 * day).as_deref(),
            Some("/etc/l4relay/tls/a.pem: the certificate expires in 10 day(s), on 2030-06-15 12:34:56 UTC: renew it")
        );
        assert_eq!(
            expiry_warning(path, &chain, ends + day).as_deref(),
            Some("/etc/l4relay/tls/a.pem: the certificate expired on 2030-06-15 12:34:56 UTC: peers that verify it refuse it; renew it")
        );
        // An intermediate that ends first is the one named.
        let chain = [
            CertificateDer::from(certificate_until(2031, 1, 1)),
            CertificateDer::from(certificate_until(2030, 6, 15)),
        ];
        let warning = expiry_warning(path, &chain, ends - day).unwrap();
        assert!(warning.contains("certificate 2 of the file"), "{warning}");
        // Unreadable: no warning (the handshake is the judge).
        assert_eq!(
            expiry_warning(path, &[CertificateDer::from(vec![0x30, 0x00])], ends),
            None
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
