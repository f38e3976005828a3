//! Certificate chains, keys and CA files read from PEM, and the system roots.

use std::io;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

use super::*;
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
