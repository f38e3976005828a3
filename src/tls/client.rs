//! Originating TLS to a pool's servers: verification against system roots, a CA file, or
//! deliberately nothing, the server name sent, and the handshake. Each server's session store
//! is `resumption`'s.

use std::io;
use std::net::IpAddr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, HandshakeKind, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;

use super::*;
/// `[pool.tls]`: TLS originated to the pool's servers, with its files read.
#[derive(Debug, Clone)]
pub struct PoolTls {
    /// The pool's config; each server connects with its own copy (`for_server`), which has the
    /// server's own session store.
    pub client: Arc<rustls::ClientConfig>,
    /// Server name sent and verified; None: each server's host name (for an IP address, no SNI
    /// and the certificate must list the address).
    pub sni: Option<String>,
    /// False: any certificate is accepted (warned about).
    pub verify: bool,
    pub min_version: MinVersion,
    pub alpn: Vec<String>,
    /// `session_cache`: TLS 1.3 tickets each server keeps for resumption; 0: no resumption.
    pub session_cache: usize,
}

impl PoolTls {
    /// The client config of one server of the pool: `client`, with the server's own session
    /// store (see `resumption`).
    pub fn for_server(&self) -> Arc<ClientConfig> {
        super::resumption::server_client_config(&self.client, self.session_cache)
    }
}

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

/// Whether `stream`'s handshake resumed a stored session (TLS 1.3 ticket, TLS 1.2 session ID
/// or ticket) rather than doing a full one.
pub fn resumed(stream: &Originated) -> bool {
    stream.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed)
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
