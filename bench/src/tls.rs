//! `--tls`: TLS in the client modes that support it (`throughput`, `rate`) and in `serve`,
//! with rustls on ring, as the relay itself uses.
//!
//! Clients do not verify the target's certificate (a benchmark's is self-signed; the handshake's
//! signatures are still checked, so the cost is a real client's) and resume no sessions: every
//! connection makes a full handshake, so `rate --tls` measures full handshakes per second.
//! `serve --tls-cert --tls-key` answers over TLS with the rustls server defaults (TLS 1.2 and
//! 1.3, session tickets as rustls issues them) and counts its full and resumed handshakes.
//!
//! `--tls-version` and `--tls-ciphers` narrow what a client offers and what `serve` accepts, so
//! a comparison with other proxies runs one version and one cipher suite on every leg: the side
//! the benchmark controls decides, whatever the proxy in the middle would allow.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ServerConfig, SupportedCipherSuite, SupportedProtocolVersion};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// `--tls-version`: the one TLS version offered (client) or accepted (`serve`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Version {
    #[value(name = "1.2")]
    Tls12,
    #[value(name = "1.3")]
    Tls13,
}

impl Version {
    fn rustls(self) -> &'static SupportedProtocolVersion {
        match self {
            Version::Tls12 => &rustls::version::TLS12,
            Version::Tls13 => &rustls::version::TLS13,
        }
    }
}

/// `--tls-ciphers`: the cipher suites offered or accepted, in the order given.
#[derive(Debug, Clone)]
pub struct Suites(pub Vec<SupportedCipherSuite>);

/// The names a suite answers to: rustls's (`TLS13_AES_128_GCM_SHA256`) and the IANA one
/// (`TLS_AES_128_GCM_SHA256`; the same as rustls's for TLS 1.2 suites).
fn suite_names(suite: SupportedCipherSuite) -> [String; 2] {
    let rustls_name = format!("{:?}", suite.suite());
    let iana = rustls_name.replacen("TLS13_", "TLS_", 1);
    [rustls_name, iana]
}

/// Parses a comma list of cipher suite names (case-insensitive) among the provider's.
pub fn parse_suites(list: &str) -> Result<Suites, String> {
    let known = &l4relay::tls::provider().cipher_suites;
    let mut out = Vec::new();
    for name in list.split(',').map(str::trim) {
        let suite = known
            .iter()
            .find(|s| {
                suite_names(**s)
                    .iter()
                    .any(|n| n.eq_ignore_ascii_case(name))
            })
            .ok_or_else(|| {
                let all: Vec<String> = known.iter().map(|s| suite_names(*s)[1].clone()).collect();
                format!("unknown cipher suite {name:?} (known: {})", all.join(", "))
            })?;
        if !out.contains(suite) {
            out.push(*suite);
        }
    }
    Ok(Suites(out))
}

/// What `--tls-version` and `--tls-ciphers` leave of the defaults.
#[derive(Debug, Clone, Default)]
pub struct Offer {
    pub version: Option<Version>,
    pub suites: Option<Suites>,
}

impl Offer {
    /// The provider with only the chosen suites, and the versions to enable; an error when the
    /// two leave nothing to negotiate.
    fn narrow(
        &self,
    ) -> Result<(Arc<CryptoProvider>, Vec<&'static SupportedProtocolVersion>), String> {
        let mut provider = (*l4relay::tls::provider()).clone();
        if let Some(Suites(suites)) = &self.suites {
            provider.cipher_suites = suites.clone();
        }
        let versions = match self.version {
            Some(v) => vec![v.rustls()],
            None => vec![&rustls::version::TLS13, &rustls::version::TLS12],
        };
        if let Some(v) = self.version {
            provider.cipher_suites.retain(|s| s.version() == v.rustls());
            if provider.cipher_suites.is_empty() {
                return Err(format!(
                    "--tls-ciphers has no TLS {} suite",
                    if v == Version::Tls12 { "1.2" } else { "1.3" }
                ));
            }
        }
        Ok((Arc::new(provider), versions))
    }
}

/// What a client needs to speak TLS to the target.
pub struct ClientTls {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl ClientTls {
    /// `sni`: the name to send; None sends none (the name is then the target's address).
    /// `offer`: the version and suites offered.
    pub fn new(
        sni: Option<&str>,
        target: std::net::IpAddr,
        offer: &Offer,
    ) -> Result<ClientTls, String> {
        let (provider, versions) = offer.narrow()?;
        let verifier = Arc::new(l4relay::tls::AcceptAnyCertificate {
            algorithms: provider.signature_verification_algorithms,
        });
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&versions)
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

/// The server config of `serve --tls-cert FILE --tls-key FILE`, accepting what `offer` leaves.
pub fn server_config(cert: &Path, key: &Path, offer: &Offer) -> Result<Arc<ServerConfig>, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    let (provider, versions) = offer.narrow()?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
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

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::CipherSuite;

    const TLS12_ECDSA: &str = "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256";

    #[test]
    fn suites_by_rustls_or_iana_name() {
        let s = parse_suites("TLS_AES_128_GCM_SHA256").unwrap();
        assert_eq!(s.0.len(), 1);
        assert_eq!(s.0[0].suite(), CipherSuite::TLS13_AES_128_GCM_SHA256);
        let s = parse_suites("tls13_aes_128_gcm_sha256, TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256")
            .unwrap();
        let got: Vec<CipherSuite> = s.0.iter().map(|s| s.suite()).collect();
        assert_eq!(
            got,
            [
                CipherSuite::TLS13_AES_128_GCM_SHA256,
                CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
            ]
        );
        let err = parse_suites("ECDHE-RSA-AES128-GCM-SHA256").unwrap_err();
        assert!(err.contains("unknown cipher suite"), "{err}");
        assert!(
            err.contains("TLS_AES_128_GCM_SHA256"),
            "lists the known: {err}"
        );
    }

    #[test]
    fn a_version_without_its_suites_is_refused() {
        let offer = Offer {
            version: Some(Version::Tls12),
            suites: Some(parse_suites("TLS_AES_128_GCM_SHA256").unwrap()),
        };
        let err = offer.narrow().unwrap_err();
        assert!(err.contains("no TLS 1.2 suite"), "{err}");
        // Suites of the other version are dropped, the version's own kept.
        let offer = Offer {
            version: Some(Version::Tls13),
            suites: Some(parse_suites(&format!("{TLS12_ECDSA},TLS_AES_128_GCM_SHA256")).unwrap()),
        };
        let (provider, versions) = offer.narrow().unwrap();
        assert_eq!(versions.len(), 1);
        assert_eq!(provider.cipher_suites.len(), 1);
    }

    /// A server pinned to `server` and a client offering `client`, over loopback: the version
    /// and suite negotiated, or the handshake's error.
    fn handshake(
        server: Offer,
        client: Offer,
    ) -> Result<(rustls::ProtocolVersion, CipherSuite), String> {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("l4relay-bench-tls-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["bench.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let server = server_config(&cert_path, &key_path, &server).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let client = ClientTls::new(Some("bench.test"), [127, 0, 0, 1].into(), &client).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let accept = async {
                let (s, _) = listener.accept().await.map_err(|e| e.to_string())?;
                let tls = tokio_rustls::TlsAcceptor::from(server)
                    .accept(s)
                    .await
                    .map_err(|e| e.to_string())?;
                let c = tls.get_ref().1;
                Ok::<_, String>((
                    c.protocol_version().unwrap(),
                    c.negotiated_cipher_suite().unwrap().suite(),
                ))
            };
            let connect = async {
                let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
                client.connect(tcp).await.map_err(|e| e.to_string())
            };
            let (server, client) = tokio::join!(accept, connect);
            client?;
            server
        })
    }

    #[test]
    fn client_and_server_negotiate_only_what_they_are_pinned_to() {
        let tls12 = || Offer {
            version: Some(Version::Tls12),
            suites: Some(parse_suites(TLS12_ECDSA).unwrap()),
        };
        let tls13 = || Offer {
            version: Some(Version::Tls13),
            suites: Some(parse_suites("TLS_AES_128_GCM_SHA256").unwrap()),
        };
        // An unpinned client and server would agree on TLS 1.3 and AES-256 first.
        assert_eq!(
            handshake(Offer::default(), Offer::default()).unwrap(),
            (
                rustls::ProtocolVersion::TLSv1_3,
                CipherSuite::TLS13_AES_256_GCM_SHA384
            )
        );
        assert_eq!(
            handshake(tls12(), Offer::default()).unwrap(),
            (
                rustls::ProtocolVersion::TLSv1_2,
                CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            )
        );
        assert_eq!(
            handshake(Offer::default(), tls13()).unwrap(),
            (
                rustls::ProtocolVersion::TLSv1_3,
                CipherSuite::TLS13_AES_128_GCM_SHA256
            )
        );
        assert!(handshake(tls12(), tls13()).is_err(), "nothing in common");
    }
}
