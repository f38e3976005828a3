//! `--tls`: TLS in the client modes that support it (`throughput`, `rate`) and in `serve`,
//! with rustls on ring, as the relay itself uses.
//!
//! Clients do not verify the target's certificate (a benchmark's is self-signed; the handshake's
//! signatures are still checked, so the cost is a real client's) and resume no sessions: every
//! connection makes a full handshake, so `rate --tls` measures full handshakes per second.
//! `serve --tls-cert --tls-key` answers over TLS with the rustls server defaults (TLS 1.2 and
//! 1.3, session tickets as rustls issues them).

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What a client needs to speak TLS to the target.
pub struct ClientTls {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl ClientTls {
    /// `sni`: the name to send; None sends none (the name is then the target's address).
    pub fn new(sni: Option<&str>, target: std::net::IpAddr) -> Result<ClientTls, String> {
        let provider = l4relay::tls::provider();
        let verifier = Arc::new(l4relay::tls::AcceptAnyCertificate {
            algorithms: provider.signature_verification_algorithms,
        });
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.resumption = rustls::client::Resumption::disabled();
        let name = match sni {
            Some(name) => ServerName::try_from(name.to_string())
                .map_err(|_| format!("--sni {name:?} is not a valid server name"))?,
            None => ServerName::IpAddress(target.into()),
        };
        Ok(ClientTls {
            config: Arc::new(config),
            name,
        })
    }

    /// The client side of a handshake over `tcp`.
    pub async fn connect(&self, tcp: TcpStream) -> io::Result<Conn> {
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&self.config));
        let tls = connector.connect(self.name.clone(), tcp).await?;
        Ok(Conn::Tls(Box::new(tls)))
    }
}

/// The server config of `serve --tls-cert FILE --tls-key FILE`.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    let config = ServerConfig::builder_with_provider(l4relay::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
    Ok(Arc::new(config))
}

/// A client connection: plain, or TLS.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
