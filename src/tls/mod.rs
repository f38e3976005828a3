//! TLS for relayed traffic, with rustls on the ring provider: terminating it on listeners
//! (`[listener.tls]`) and originating it to servers (`[pool.tls]`).
//!
//! This module owns what TLS needs beyond bytes: reading certificate chains and keys from PEM
//! files and checking that they belong together, choosing a listener's certificate by the
//! client's SNI (`CertificateSet`), verifying client certificates (mTLS) and servers' certificates
//! (system roots, a CA file, or deliberately nothing), the two handshakes a session performs
//! (`terminate`, `originate`), each server's store of sessions to resume (`resumption`), and
//! naming a failed handshake in one word for the access log.
//! Relaying the decrypted stream is `relay::stream`'s; what a failure means for the connection is
//! the session's.
//!
//! The builders run when the config is loaded: a `Config` that exists holds certificates that
//! were readable, parsed and matched to their keys at that moment. A reload (SIGHUP) reads the
//! files again; if one is missing or bad, the reload is refused like any other config error and
//! the running generation keeps its certificates. Each generation has its own rustls configs, so
//! connections keep the certificate they were established with.

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::SupportedProtocolVersion;
use tokio::net::TcpStream;

mod certificates;
mod client;
mod expiry;
mod failure;
mod resumption;
mod server;

use crate::relay::stream::{Pooled, Transport};
pub use certificates::{
    dns_names, identity, load_ca_file, read_chain, read_key, system_roots, Identity,
};
pub use client::{
    client_config, originate, resumed, server_name, AcceptAnyCertificate, PoolTls, Verify,
};
pub use expiry::{expiry_warning, not_after, NotAfter, EXPIRY_WARNING};
pub use failure::Failure;
pub use resumption::{ServerSessions, DEFAULT_SESSIONS};
pub use server::{
    server_config, terminate, CertificateSet, ClientAuth, ClientAuthMode, ListenerTls,
};
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
    use std::io;
    use std::net::IpAddr;

    use rustls::pki_types::ServerName;
    use rustls::CertificateError;

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
