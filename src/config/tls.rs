//! `[listener.tls]` (terminate) and `[pool.tls]` (originate): certificate, key and CA files are
//! read and turned into rustls configs here, so a bad file fails `check` and a reload.

use std::path::Path;
use std::sync::Arc;

use super::reader::{At, Diagnostics, Section};
use super::values::{parse_host_name, values};
use crate::protocol::name_table::{self};
use crate::tls::{self, ClientAuthMode, ListenerTls, MinVersion, PoolTls};

/// `[listener.tls]` and its `[[listener.tls.certificate]]`s, files read; None when it has
/// errors (reported).
///
/// The listener's own `cert` and `key` are the default certificate, served when the client's
/// SNI matches no other (or there is none); without them, the first entry is. An entry serves
/// its `server_names`, or else the DNS names of its certificate. Explicit names must be unique;
/// a name taken from a certificate that another certificate also carries stays with the one
/// that names it explicitly, else with the first.
pub(super) fn read_listener_tls(
    s: &mut Section<'_, '_>,
    diag: &mut Diagnostics<'_>,
) -> Option<ListenerTls> {
    let errors_before = diag.errors.len();
    let cert = s.string(diag, "cert");
    let key = s.string(diag, "key");
    let min_version = read_min_version(s, diag);
    let alpn = read_alpn(s, diag);
    let client_ca = s.string(diag, "client_ca");
    let client_auth = s.choice(
        diag,
        "client_auth",
        &[
            ("required", Some(ClientAuthMode::Required)),
            ("optional", Some(ClientAuthMode::Optional)),
        ],
        None,
    );

    let mut set = tls::CertificateSet::default();
    let mut certificates = 0;
    // Names taken from the entries' certificates, after the explicit ones; the listener's own
    // certificate's last, as it is served anyway for names nobody else has.
    let mut implicit: Vec<(usize, Vec<String>)> = Vec::new();
    let mut own = None;
    let mut default = None;
    if let Some((identity, names)) = read_certificate(s, diag, cert, key) {
        let index = set.add(Arc::clone(&identity.certified));
        certificates += 1;
        default = Some(index);
        own = Some((index, names));
    }
    let mut explicit: Vec<(usize, Vec<At<String>>)> = Vec::new();
    for mut entry in s.tables(diag, "certificate") {
        let cert = entry.required_string(diag, "cert");
        let key = entry.required_string(diag, "key");
        let names = entry.list(diag, "server_names", name_table::parse_server_name);
        if let Some((identity, dns_names)) = read_certificate(&entry, diag, cert, key) {
            let index = set.add(Arc::clone(&identity.certified));
            certificates += 1;
            default.get_or_insert(index);
            if !names.is_empty() {
                for name in &names {
                    if !dns_names.is_empty() && !certificate_covers(&dns_names, &name.value) {
                        diag.warn(
                            &name.span,
                            &name.key,
                            format!("\"{}\" is not among the certificate's names ({}): clients that verify will refuse it", name.value, dns_names.join(", ")),
                        );
                    }
                }
                explicit.push((index, names));
            } else if dns_names.is_empty() {
                diag.error(
                    &entry.span(),
                    &entry.key_path("server_names"),
                    "the certificate carries no DNS name (subjectAltName): list the names it serves",
                );
            } else {
                implicit.push((index, dns_names));
            }
        }
        entry.finish(diag);
    }
    for (index, names) in explicit {
        for name in names {
            if !set.name(&name.value, index) {
                diag.error(
                    &name.span,
                    &name.key,
                    format!(
                        "\"{}\" is already served by another certificate",
                        name.value
                    ),
                );
            }
        }
    }
    for (index, names) in implicit.into_iter().chain(own) {
        for name in names {
            set.name(&name, index);
        }
    }
    match default {
        Some(index) => set.set_default(index),
        None if diag.errors.len() == errors_before => diag.error(
            &s.span(),
            s.path(),
            "needs a certificate: cert and key, or [[listener.tls.certificate]] entries",
        ),
        None => {}
    }

    let client_auth = match (&client_ca, client_auth) {
        (None, None) => None,
        (None, Some(_)) => {
            diag.error(
                &s.span(),
                &s.key_path("client_auth"),
                "needs client_ca, the CAs that client certificates must chain to",
            );
            None
        }
        (Some(_), mode) => Some(mode.unwrap_or(ClientAuthMode::Required)),
    };
    let client_roots = client_ca.and_then(|at| {
        tls::load_ca_file(Path::new(&at.value))
            .map_err(|message| diag.error(&at.span, &at.key, message))
            .ok()
    });
    if diag.errors.len() != errors_before {
        return None;
    }
    let verifier = client_roots
        .zip(client_auth)
        .map(|(roots, mode)| tls::ClientAuth {
            roots,
            required: mode == ClientAuthMode::Required,
        });
    match tls::server_config(set, min_version, &alpn, verifier) {
        Ok(server) => Some(ListenerTls {
            server,
            min_version,
            alpn,
            client_auth,
            certificates,
        }),
        Err(message) => {
            diag.error(&s.span(), s.path(), message);
            None
        }
    }
}

/// Whether a certificate with DNS names `names` is valid for `name` (itself a name or a
/// "*." wildcard), as a client checks it: equal, or under a wildcard by one label.
pub(super) fn certificate_covers(names: &[String], name: &str) -> bool {
    names.iter().any(|have| {
        have == name
            || have.strip_prefix("*.").is_some_and(|parent| {
                !name.starts_with("*.")
                    && name.split_once('.').is_some_and(|(_, rest)| rest == parent)
            })
    })
}

/// `[pool.tls]`, files read; None when it has errors (reported).
pub(super) fn read_pool_tls(
    s: &mut Section<'_, '_>,
    diag: &mut Diagnostics<'_>,
) -> Option<PoolTls> {
    let errors_before = diag.errors.len();
    let sni = s.string(diag, "sni");
    let verify = s.bool(diag, "verify", true);
    let ca_file = s.string(diag, "ca_file");
    let cert = s.string(diag, "cert");
    let key = s.string(diag, "key");
    let min_version = read_min_version(s, diag);
    let alpn = read_alpn(s, diag);
    let session_cache = s.integer(
        diag,
        "session_cache",
        0..=MAX_SESSIONS,
        tls::DEFAULT_SESSIONS as u64,
    ) as usize;
    if let Some(at) = &sni {
        if let Err(message) = parse_host_name(&at.value) {
            diag.error(&at.span, &at.key, message);
        }
    }
    let identity = read_certificate(s, diag, cert, key).map(|(identity, _)| identity);
    let verification = match (verify, ca_file) {
        (true, None) => tls::Verify::SystemRoots,
        (true, Some(at)) => match tls::load_ca_file(Path::new(&at.value)) {
            Ok(roots) => tls::Verify::Roots(roots),
            Err(message) => {
                diag.error(&at.span, &at.key, message);
                tls::Verify::Off
            }
        },
        (false, Some(at)) => {
            diag.error(
                &at.span,
                &at.key,
                "has no effect with verify = false: set one or the other",
            );
            tls::Verify::Off
        }
        (false, None) => {
            diag.warn(
                &s.span(),
                &s.key_path("verify"),
                "TLS to this pool's servers is NOT verified (verify = false): anyone on the path can impersonate a server and read the traffic",
            );
            tls::Verify::Off
        }
    };
    if diag.errors.len() != errors_before {
        return None;
    }
    match tls::client_config(verification, identity, min_version, &alpn) {
        Ok(client) => Some(PoolTls {
            client,
            sni: sni.map(|at| at.value.to_ascii_lowercase()),
            verify,
            min_version,
            alpn,
            session_cache,
        }),
        Err(message) => {
            diag.error(&s.span(), s.path(), message);
            None
        }
    }
}

/// The most `session_cache` allows: a server sends a couple of tickets per handshake, so more
/// than this many would only be reached by a burst this large, and each ticket is a few hundred
/// bytes per server.
const MAX_SESSIONS: u64 = 1024;

/// A `cert` and `key` pair (both or neither) read and matched, with the certificate's DNS
/// names; None when absent or bad (reported at the file's key).
pub(super) fn read_certificate(
    s: &Section<'_, '_>,
    diag: &mut Diagnostics<'_>,
    cert: Option<At<String>>,
    key: Option<At<String>>,
) -> Option<(tls::Identity, Vec<String>)> {
    let (cert, key) = match (cert, key) {
        (None, None) => return None,
        (Some(cert), Some(key)) => (cert, key),
        (Some(_), None) => {
            diag.error(&s.span(), &s.key_path("key"), "cert needs its key");
            return None;
        }
        (None, Some(_)) => {
            diag.error(&s.span(), &s.key_path("cert"), "key needs its cert");
            return None;
        }
    };
    let chain = tls::read_chain(Path::new(&cert.value))
        .map_err(|message| diag.error(&cert.span, &cert.key, message))
        .ok();
    if let Some(warning) = chain.as_deref().and_then(|chain| {
        tls::expiry_warning(Path::new(&cert.value), chain, std::time::SystemTime::now())
    }) {
        diag.warn(&cert.span, &cert.key, warning);
    }
    let private = tls::read_key(Path::new(&key.value))
        .map_err(|message| diag.error(&key.span, &key.key, message))
        .ok();
    let (chain, private) = (chain?, private?);
    let names = match chain.first().map(tls::dns_names) {
        Some(Ok(names)) => names,
        Some(Err(message)) => {
            diag.error(&cert.span, &cert.key, format!("{}: {message}", cert.value));
            return None;
        }
        None => Vec::new(),
    };
    match tls::identity(chain, private) {
        Ok(identity) => Some((identity, names)),
        Err(message) => {
            diag.error(&key.span, &key.key, format!("{message}: {}", cert.value));
            None
        }
    }
}

/// `min_version`: "1.2" (the default: TLS 1.2 and 1.3) or "1.3".
pub(super) fn read_min_version(s: &mut Section<'_, '_>, diag: &mut Diagnostics<'_>) -> MinVersion {
    s.choice(
        diag,
        "min_version",
        &[("1.2", MinVersion::Tls12), ("1.3", MinVersion::Tls13)],
        MinVersion::Tls12,
    )
}

/// `alpn`: protocol names, in order of preference, e.g. ["h2", "http/1.1"].
pub(super) fn read_alpn(s: &mut Section<'_, '_>, diag: &mut Diagnostics<'_>) -> Vec<String> {
    values(s.list(diag, "alpn", |v| {
        if !v.is_empty() && v.len() <= 255 && v.bytes().all(|b| b.is_ascii_graphic()) {
            Ok(v.to_string())
        } else {
            Err(format!(
                "\"{v}\" is not an ALPN protocol name, e.g. \"h2\", \"http/1.1\""
            ))
        }
    }))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::super::test_support::{parse, MINIMAL};
    use super::super::Config;
    use super::*;

    /// Certificate and key files for `names`, self-signed, in a fresh directory.
    fn cert_files(names: &[&str]) -> (PathBuf, PathBuf) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "l4relay-config-tls-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert_file, key_file)
    }

    fn with_tls(listener_tls: &str, pool_tls: &str) -> String {
        format!(
            "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:8443\"\npool = \"p\"\n{listener_tls}\n\n\
             [[pool]]\nname = \"p\"\n{pool_tls}\n  [[pool.server]]\n  address = \"127.0.0.1:9000\"\n"
        )
    }

    #[test]
    fn tls_keys_with_their_defaults() {
        let (cert, key) = cert_files(&["relay.test"]);
        let (a_cert, a_key) = cert_files(&["a.test"]);
        let text = with_tls(
            &format!(
                "  [listener.tls]\n  cert = \"{}\"\n  key = \"{}\"\n  client_ca = \"{}\"\n\
                 \x20 [[listener.tls.certificate]]\n  cert = \"{}\"\n  key = \"{}\"\n",
                cert.display(),
                key.display(),
                cert.display(),
                a_cert.display(),
                a_key.display()
            ),
            "  [pool.tls]\n  sni = \"Upstream.Example.com\"\n  alpn = [\"http/1.1\"]\n  min_version = \"1.3\"\n",
        );
        let c = parse(&text).unwrap();
        let tls = c.listeners[0].tls.as_ref().unwrap();
        assert_eq!(tls.min_version, MinVersion::Tls12);
        assert!(tls.alpn.is_empty());
        assert_eq!(tls.client_auth, Some(ClientAuthMode::Required));
        assert_eq!(tls.certificates, 2);
        let pool = c.pools[0].tls.as_ref().unwrap();
        assert_eq!(pool.sni.as_deref(), Some("upstream.example.com"));
        assert!(pool.verify);
        assert_eq!(pool.min_version, MinVersion::Tls13);
        assert_eq!(pool.alpn, vec!["http/1.1".to_string()]);
        assert_eq!(pool.session_cache, tls::DEFAULT_SESSIONS);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);

        let c = parse(MINIMAL).unwrap();
        assert!(c.listeners[0].tls.is_none() && c.pools[0].tls.is_none());
        remove_cert_files(&[cert, a_cert]);
    }

    fn remove_cert_files(files: &[PathBuf]) {
        for file in files {
            let _ = std::fs::remove_dir_all(file.parent().unwrap());
        }
    }

    #[test]
    fn tls_errors_and_warnings() {
        let (cert, key) = cert_files(&["relay.test"]);
        let (bare_cert, bare_key) = cert_files(&[]);
        let text = with_tls(
            &format!(
                "  [listener.tls]\n  cert = \"{}\"\n  min_version = \"1.1\"\n  alpn = [\"\"]\n  client_auth = \"optional\"\n\
                 \x20 [[listener.tls.certificate]]\n  cert = \"{}\"\n  key = \"{}\"\n  server_names = [\"a.test\"]\n\
                 \x20 [[listener.tls.certificate]]\n  cert = \"{}\"\n  key = \"{}\"\n  server_names = [\"A.test\"]\n\
                 \x20 [[listener.tls.certificate]]\n  cert = \"{}\"\n  key = \"{}\"\n",
                cert.display(),
                cert.display(),
                key.display(),
                cert.display(),
                key.display(),
                bare_cert.display(),
                bare_key.display(),
            ),
            &format!(
                "  [pool.tls]\n  sni = \"10.0.0.1\"\n  verify = false\n  ca_file = \"{}\"\n  key = \"/nonexistent/key.pem\"\n",
                cert.display()
            ),
        );
        assert!(certificate_covers(&["*.a.test".into()], "x.a.test"));
        assert!(!certificate_covers(&["*.a.test".into()], "a.test"));
        assert!(!certificate_covers(&["*.a.test".into()], "x.y.a.test"));
        assert!(certificate_covers(&["*.a.test".into()], "*.a.test"));
        assert!(!certificate_covers(&["a.test".into()], "*.a.test"));
        let errors = parse(&text).unwrap_err();
        let expect = [
            "listener[0].tls.min_version: \"1.1\" is not one of \"1.2\", \"1.3\"",
            "listener[0].tls.alpn[0]: \"\" is not an ALPN protocol name",
            "listener[0].tls.key: cert needs its key",
            "listener[0].tls.certificate[1].server_names[0]: \"a.test\" is already served",
            "listener[0].tls.certificate[2].server_names: the certificate carries no DNS name",
            "listener[0].tls.client_auth: needs client_ca",
            "pool[0].tls.sni: \"10.0.0.1\" is not a host name",
            "pool[0].tls.ca_file: has no effect with verify = false",
            "pool[0].tls.cert: key needs its cert",
        ];
        for e in expect {
            assert!(
                errors.iter().any(|got| got.contains(e)),
                "missing {e:?} in {errors:#?}"
            );
        }
        assert_eq!(errors.len(), expect.len(), "{errors:#?}");

        let (other_cert, _) = cert_files(&["other.test"]);
        let text = with_tls(
            &format!(
                "  [listener.tls]\n  cert = \"{}\"\n  key = \"/nonexistent/key.pem\"\n\
                 \x20 [[listener.tls.certificate]]\n  cert = \"{}\"\n  key = \"{}\"\n",
                cert.display(),
                other_cert.display(),
                key.display(),
            ),
            "  [pool.tls]\n  verify = false\n",
        );
        let errors = parse(&text).unwrap_err();
        assert!(
            errors[0].contains("listener[0].tls.key: cannot read /nonexistent/key.pem"),
            "{errors:#?}"
        );
        assert!(
            errors[1]
                .contains("listener[0].tls.certificate[0].key: the private key does not belong"),
            "{errors:#?}"
        );
        assert_eq!(errors.len(), 2, "{errors:#?}");

        let text = with_tls(
            &format!(
                "  [listener.tls]\n  cert = \"{cert}\"\n  key = \"{key}\"\n\
                 \x20 [[listener.tls.certificate]]\n  cert = \"{cert}\"\n  key = \"{key}\"\n  server_names = [\"other.test\"]\n",
                cert = cert.display(),
                key = key.display()
            ),
            "  [pool.tls]\n  verify = false\n",
        );
        let c = Config::parse(Path::new("t.toml"), &text).unwrap();
        assert!(
            c.warnings.iter().any(
                |w| w.key == "listener[0].tls.certificate[0].server_names[0]"
                    && w.message
                        .contains("not among the certificate's names (relay.test)")
            ),
            "{:?}",
            c.warnings
        );
        assert!(
            c.warnings
                .iter()
                .any(|w| w.key == "pool[0].tls.verify" && w.message.contains("NOT verified")),
            "{:?}",
            c.warnings
        );
        assert!(!c.pools[0].tls.as_ref().unwrap().verify);
        remove_cert_files(&[cert, bare_cert, other_cert]);
    }

    #[test]
    fn session_cache_is_bounded_and_zero_turns_resumption_off() {
        let pool =
            |value: &str| with_tls("", &format!("  [pool.tls]\n  session_cache = {value}\n"));
        for (value, sessions) in [("0", 0), ("1", 1), ("32", 32), ("1024", 1024)] {
            let c = parse(&pool(value)).unwrap();
            assert_eq!(c.pools[0].tls.as_ref().unwrap().session_cache, sessions);
        }
        for (value, message) in [
            ("1025", "must be an integer from 0 to 1024"),
            ("-1", "must be an integer from 0 to 1024"),
            ("\"8\"", "expected an integer, found a string"),
            ("true", "expected an integer, found a boolean"),
        ] {
            let text = pool(value);
            let line = 1 + text
                .lines()
                .position(|l| l.contains("session_cache"))
                .unwrap();
            let errors = parse(&text).unwrap_err();
            assert_eq!(errors.len(), 1, "{value}: {errors:#?}");
            assert!(
                errors[0].starts_with(&format!("t.toml:{line}:"))
                    && errors[0].contains("pool[0].tls.session_cache: ")
                    && errors[0].contains(message),
                "{value}: {errors:#?}"
            );
        }
    }
}
