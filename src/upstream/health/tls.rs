//! TLS client configuration for health checks: rustls with the ring provider, verifying
//! against the system's CA store (/etc/ssl, read once per process) or a configured CA file, or
//! not verifying at all when the pool says `verify = false` (the handshake's signatures are
//! still checked, so the check still proves a TLS server answered).
//!
//! The pieces are shared with live traffic's TLS (`crate::tls`); the check's own settings
//! (`[pool.health]` `sni`, `verify`, `ca_file`) are separate from `[pool.tls]`.

use std::sync::Arc;

use rustls::ClientConfig;

use crate::tls::{self, AcceptAnyCertificate};
use crate::upstream::health::TlsCheck;

pub use crate::tls::load_ca_file;

/// The client config for a pool's TLS checks; `http` offers ALPN "http/1.1".
pub fn client_config(tls: &TlsCheck, http: bool) -> Result<Arc<ClientConfig>, String> {
    let provider = tls::provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let mut config = if !tls.verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate {
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth()
    } else {
        let roots = match &tls.ca_file {
            Some(path) => Arc::new(load_ca_file(path)?),
            None => tls::system_roots()?,
        };
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    if http {
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
    }
    Ok(Arc::new(config))
}
