//! A TLS-terminating listener against curl and `openssl s_client` (OpenSSL, not rustls, on the
//! other side): the certificate verifies against its CA (and not against another), TLS 1.3 and
//! 1.2 are negotiated as configured, TLS 1.1 is refused, ALPN is agreed or refused, and a
//! client certificate is required (mTLS) and refused without one. Behind the relay, nginx
//! answers in plain HTTP.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::certs::{Ca, Leaf};
use crate::clients::{curl, curl_tls_version, s_client, Ran};
use crate::support::*;

const NAME: &str = "relay.test";
const BODY: &str = "hello from nginx";

struct Setup {
    relay: RelayProcess,
    admin: SocketAddr,
    /// Listeners: "tls" (1.2+, ALPN http/1.1), "tls13" (1.3 only), "mtls" (client CA).
    tls: SocketAddr,
    tls13: SocketAddr,
    mtls: SocketAddr,
    ca: PathBuf,
    /// A CA that signed nothing the relay serves.
    other_ca: PathBuf,
    client: Leaf,
    /// A client certificate from a CA the relay does not trust.
    stranger: Leaf,
    _nginx: crate::peers::Peer,
    /// Last: dropped after the programs that use it.
    _dir: crate::peers::Scratch,
}

async fn setup() -> Setup {
    let dir = crate::peers::Scratch::new("interop-tls");
    let ca = Ca::new(&dir, "server");
    let other_ca = Ca::new(&dir, "other");
    let client_ca = Ca::new(&dir, "client");
    let server = ca.leaf("relay", &[NAME]);
    let client = client_ca.leaf("client", &["client.test"]);
    let stranger = other_ca.leaf("stranger", &["stranger.test"]);
    let (nginx, addrs) = crate::nginx::start(&dir, 1, |addrs| {
        format!(
            "    server {{ listen {}; location / {{ return 200 '{BODY}\\n'; }} }}",
            addrs[0]
        )
    })
    .await;
    let keys = format!(
        "  cert = \"{}\"\n  key = \"{}\"\n",
        server.cert.display(),
        server.key.display()
    );
    let listener = |name: &str, addr: SocketAddr, extra: &str| {
        format!(
            "[[listener]]\nname = \"{name}\"\nlisten = \"{addr}\"\npool = \"nginx\"\n  [listener.tls]\n{keys}{extra}\n"
        )
    };
    let (relay, [tls, tls13, mtls, admin]) = start_relay(|[tls, tls13, mtls, admin]| {
        assemble_config(
            Some(admin),
            &[
                listener(
                    "tls",
                    tls,
                    "  min_version = \"1.2\"\n  alpn = [\"http/1.1\"]\n",
                ),
                listener("tls13", tls13, "  min_version = \"1.3\"\n"),
                listener(
                    "mtls",
                    mtls,
                    &format!(
                        "  client_ca = \"{}\"\n  client_auth = \"required\"\n",
                        client_ca.file.display()
                    ),
                ),
            ],
            &[format!(
                "[[pool]]\nname = \"nginx\"\n  [[pool.server]]\n  address = \"{}\"\n",
                addrs[0]
            )],
        )
    });
    Setup {
        relay,
        admin,
        tls,
        tls13,
        mtls,
        ca: ca.file.clone(),
        other_ca: other_ca.file.clone(),
        client,
        stranger,
        _nginx: nginx,
        _dir: dir,
    }
}

/// curl's arguments for `https://relay.test:port/` at `addr`, verifying against `ca`.
fn https(addr: SocketAddr, ca: &std::path::Path) -> Vec<String> {
    vec![
        "-v".into(),
        "--resolve".into(),
        format!("{NAME}:{}:{}", addr.port(), addr.ip()),
        "--cacert".into(),
        ca.display().to_string(),
        format!("https://{NAME}:{}/", addr.port()),
    ]
}

async fn curl_with(base: Vec<String>, extra: &[&str]) -> Ran {
    let mut args: Vec<&str> = extra.to_vec();
    args.extend(base.iter().map(String::as_str));
    curl(&args).await
}

/// The access log's length once every connection the relay has counted is in it. Workers write
/// their lines at their next flush, so a line of an earlier step could otherwise land after the
/// mark and be taken for the next step's.
async fn settled_mark(s: &Setup) -> usize {
    let deadline = std::time::Instant::now() + STEP_LIMIT;
    loop {
        let counted: f64 = metrics_text(s.admin)
            .await
            .lines()
            .filter(|l| l.starts_with("l4relay_connections_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        let lines = log_mark(&s.relay);
        if lines as f64 >= counted {
            return lines;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{counted} connections counted, {lines} logged after {STEP_LIMIT:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The access-log line of the next connection to `listener` after line `mark`.
async fn next_line(relay: &RelayProcess, mark: usize, listener: &str) -> String {
    let find = || {
        relay
            .access_log()
            .lines()
            .skip(mark)
            .find(|l| field(l, "listener") == Some(listener))
            .map(str::to_string)
    };
    eventually(STEP_LIMIT, || find().is_some()).await;
    find().unwrap_or_else(|| {
        panic!(
            "no access-log line for listener {listener} after line {mark}:\n{}",
            relay.access_log()
        )
    })
}

/// `openssl s_client` to `addr` as relay.test, verifying against `ca`, sending one HTTP
/// request.
async fn openssl(addr: SocketAddr, ca: &std::path::Path, extra: &[&str]) -> Ran {
    let connect = addr.to_string();
    let ca = ca.display().to_string();
    let mut args = vec![
        "-connect",
        &connect,
        "-servername",
        NAME,
        "-CAfile",
        &ca,
        "-verify_return_error",
        "-ign_eof",
    ];
    args.extend_from_slice(extra);
    s_client(
        &args,
        b"GET / HTTP/1.1\r\nHost: relay.test\r\nConnection: close\r\n\r\n",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_and_openssl_negotiate_the_configured_tls_versions_and_verify_the_certificate() {
    let s = setup().await;

    for (flags, version) in [
        (["--tlsv1.3", "--tls-max", "1.3"], "TLSv1.3"),
        (["--tlsv1.2", "--tls-max", "1.2"], "TLSv1.2"),
    ] {
        let ran = curl_with(https(s.tls, &s.ca), &flags).await;
        assert!(ran.ok(), "{version}: {}", ran.shown());
        assert_eq!(ran.stdout.trim(), BODY, "{}", ran.shown());
        assert_eq!(
            curl_tls_version(&ran.stderr),
            Some(version),
            "{}",
            ran.shown()
        );
    }

    // Verified for real: curl refuses the same certificate against another CA.
    let mark = settled_mark(&s).await;
    let ran = curl_with(https(s.tls, &s.other_ca), &[]).await;
    assert_eq!(ran.code, Some(60), "{}", ran.shown());
    assert!(
        ran.stderr.contains("SSL certificate problem"),
        "{}",
        ran.shown()
    );
    let line = next_line(&s.relay, mark, "tls").await;
    assert_eq!(field(&line, "end"), Some("tls_handshake_error"), "{line}");

    // TLS 1.1, offered by clients willing to (OpenSSL's security level 0): refused.
    let mark = settled_mark(&s).await;
    let ran = curl_with(
        https(s.tls, &s.ca),
        &[
            "--tlsv1.1",
            "--tls-max",
            "1.1",
            "--ciphers",
            "DEFAULT@SECLEVEL=0",
        ],
    )
    .await;
    assert!(!ran.ok(), "TLS 1.1 accepted: {}", ran.shown());
    assert!(curl_tls_version(&ran.stderr).is_none(), "{}", ran.shown());
    let line = next_line(&s.relay, mark, "tls").await;
    assert_eq!(field(&line, "end"), Some("tls_handshake_error"), "{line}");
    assert_eq!(field(&line, "detail"), Some("tls_incompatible"), "{line}");

    let mark = settled_mark(&s).await;
    let ran = openssl(s.tls, &s.ca, &["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"]).await;
    assert!(
        !ran.stdout.contains(BODY),
        "TLS 1.1 accepted: {}",
        ran.shown()
    );
    let line = next_line(&s.relay, mark, "tls").await;
    assert_eq!(field(&line, "detail"), Some("tls_incompatible"), "{line}");

    // openssl verifies the chain and negotiates each version the listener allows.
    for (flag, version) in [("-tls1_3", "TLSv1.3"), ("-tls1_2", "TLSv1.2")] {
        let ran = openssl(s.tls, &s.ca, &[flag]).await;
        assert!(ran.stdout.contains(BODY), "{version}: {}", ran.shown());
        assert!(
            ran.stdout.contains("Verify return code: 0 (ok)"),
            "{}",
            ran.shown()
        );
        assert!(
            ran.stdout.contains(&format!("Protocol  : {version}"))
                || ran.stdout.contains(&format!("New, {version}, Cipher")),
            "{version}: {}",
            ran.shown()
        );
    }

    // min_version = "1.3": a client capped at 1.2 is refused, 1.3 goes through.
    let mark = settled_mark(&s).await;
    let ran = curl_with(https(s.tls13, &s.ca), &["--tlsv1.2", "--tls-max", "1.2"]).await;
    assert!(
        !ran.ok(),
        "TLS 1.2 accepted by a 1.3-only listener: {}",
        ran.shown()
    );
    let line = next_line(&s.relay, mark, "tls13").await;
    assert_eq!(field(&line, "detail"), Some("tls_incompatible"), "{line}");
    let ran = curl_with(https(s.tls13, &s.ca), &["--tlsv1.3"]).await;
    assert!(ran.ok(), "{}", ran.shown());
    assert_eq!(curl_tls_version(&ran.stderr), Some("TLSv1.3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_is_agreed_with_curl_and_openssl_and_refused_without_a_common_protocol() {
    let s = setup().await;
    let ran = curl_with(https(s.tls, &s.ca), &["--http1.1"]).await;
    assert!(ran.ok(), "{}", ran.shown());
    assert!(
        ran.stderr.contains("ALPN: server accepted http/1.1")
            || ran.stderr.contains("ALPN, server accepted to use http/1.1"),
        "{}",
        ran.shown()
    );

    let ran = openssl(s.tls, &s.ca, &["-alpn", "h2,http/1.1"]).await;
    assert!(
        ran.stdout.contains("ALPN protocol: http/1.1"),
        "{}",
        ran.shown()
    );
    assert!(ran.stdout.contains(BODY), "{}", ran.shown());

    // Only h2 offered; the listener speaks http/1.1 only: refused.
    let mark = settled_mark(&s).await;
    let ran = openssl(s.tls, &s.ca, &["-alpn", "h2"]).await;
    assert!(!ran.stdout.contains(BODY), "{}", ran.shown());
    let line = next_line(&s.relay, mark, "tls").await;
    assert_eq!(field(&line, "end"), Some("tls_handshake_error"), "{line}");
    assert_eq!(field(&line, "detail"), Some("tls_incompatible"), "{line}");

    // A listener without ALPN settings: the client's offer is ignored, none is agreed.
    let ran = openssl(s.tls13, &s.ca, &["-alpn", "h2"]).await;
    assert!(ran.stdout.contains("No ALPN negotiated"), "{}", ran.shown());
    assert!(ran.stdout.contains(BODY), "{}", ran.shown());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_is_required_and_one_from_another_ca_is_refused() {
    let s = setup().await;
    let cert = s.client.cert.display().to_string();
    let key = s.client.key.display().to_string();
    let ran = curl_with(https(s.mtls, &s.ca), &["--cert", &cert, "--key", &key]).await;
    assert!(ran.ok(), "{}", ran.shown());
    assert_eq!(ran.stdout.trim(), BODY);

    let ran = openssl(s.mtls, &s.ca, &["-cert", &cert, "-key", &key]).await;
    assert!(ran.stdout.contains(BODY), "{}", ran.shown());

    for tls in ["1.3", "1.2"] {
        let mark = settled_mark(&s).await;
        let ran = curl_with(https(s.mtls, &s.ca), &["--tls-max", tls]).await;
        assert!(!ran.ok(), "no certificate, TLS {tls}: {}", ran.shown());
        assert!(!ran.stdout.contains(BODY), "{}", ran.shown());
        let line = next_line(&s.relay, mark, "mtls").await;
        assert_eq!(field(&line, "end"), Some("refused_rule"), "{line}");
        assert_eq!(
            field(&line, "detail"),
            Some("client_certificate_missing"),
            "{line}"
        );
    }

    let mark = settled_mark(&s).await;
    let (cert, key) = (
        s.stranger.cert.display().to_string(),
        s.stranger.key.display().to_string(),
    );
    let ran = openssl(s.mtls, &s.ca, &["-cert", &cert, "-key", &key]).await;
    assert!(!ran.stdout.contains(BODY), "{}", ran.shown());
    let line = next_line(&s.relay, mark, "mtls").await;
    assert_eq!(field(&line, "end"), Some("refused_rule"), "{line}");
    assert_eq!(
        field(&line, "detail"),
        Some("client_certificate_invalid"),
        "{line}"
    );
}
