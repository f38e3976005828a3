//! Terminating TLS on a listener: its certificates chosen by the client's SNI, client
//! certificates (mTLS), and the handshake.

use std::pin::Pin;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpStream;

use super::*;
use crate::protocol::name_table::NameTable;
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
