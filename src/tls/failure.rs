//! A failed handshake named in one word for the access log (`detail=`).

use std::io;

use rustls::CertificateError;

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
