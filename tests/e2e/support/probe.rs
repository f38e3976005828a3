//! Clients that expect the relay to relay them or refuse them (by a reset, wherever it shows
//! first), and a server that records what each connection sent it: for the tests of a
//! connection's first moments (PROXY headers, access rules, SNI routing, the upstream side).

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::log::field;
use super::net::{open, upstream_listener, Accepted};

/// How long any single network step of these clients may take before the test fails.
pub const IO_LIMIT: Duration = Duration::from_secs(5);

pub fn is_reset(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe)
}

/// Connects from `from`, sends `bytes` (then half-closes if asked) and expects the relay to
/// reset the connection, wherever the reset shows first: at connect, on the write or on the
/// read. Returns the client address the relay saw, and the time from connect to reset.
pub async fn expect_reset(
    from: &str,
    to: SocketAddr,
    bytes: &[u8],
    half_close: bool,
    what: &str,
) -> (String, Duration) {
    let started = Instant::now();
    let (client, stream) = open(from, to).await;
    let mut stream = match stream {
        Ok(stream) => stream,
        Err(e) if is_reset(&e) => return (client, started.elapsed()),
        Err(e) => panic!("{what}: connect: {e}"),
    };
    if let Err(e) = stream.write_all(bytes).await {
        assert!(is_reset(&e), "{what}: write: {e}");
        return (client, started.elapsed());
    }
    if half_close {
        if let Err(e) = stream.shutdown().await {
            assert!(is_reset(&e), "{what}: shutdown: {e}");
            return (client, started.elapsed());
        }
    }
    let mut buf = [0u8; 256];
    match tokio::time::timeout(IO_LIMIT, stream.read(&mut buf)).await {
        Err(_) => panic!("{what}: still open after {IO_LIMIT:?}"),
        Ok(Ok(0)) => panic!("{what}: closed with a FIN, expected a reset"),
        Ok(Ok(n)) => panic!("{what}: received {n} bytes {:?}", &buf[..n]),
        Ok(Err(e)) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{what}: {e}"),
    }
    (client, started.elapsed())
}

/// The `client=` value the relay logs for a connection it knows only by its socket.
pub fn socket_client(stream: &TcpStream) -> String {
    stream.local_addr().unwrap().to_string()
}

/// Writes `payload` and reads it back from an echo server through the relay.
pub async fn assert_echo(stream: &mut TcpStream, payload: &[u8], what: &str) {
    stream.write_all(payload).await.expect("write payload");
    let mut got = vec![0u8; payload.len()];
    tokio::time::timeout(IO_LIMIT, stream.read_exact(&mut got))
        .await
        .unwrap_or_else(|_| panic!("{what}: no echo within {IO_LIMIT:?}"))
        .unwrap_or_else(|e| panic!("{what}: reading the echo: {e}"));
    assert_eq!(got, payload, "{what}: echo differs");
}

/// Half-closes and waits for the server's FIN, so the relay ends (and logs) the session.
pub async fn finish(mut stream: TcpStream, what: &str) {
    stream.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    tokio::time::timeout(IO_LIMIT, stream.read_to_end(&mut rest))
        .await
        .unwrap_or_else(|_| panic!("{what}: no FIN within {IO_LIMIT:?}"))
        .unwrap_or_else(|e| panic!("{what}: closing: {e}"));
    assert!(rest.is_empty(), "{what}: unexpected bytes {rest:?}");
}

/// Connects (from `from`, if given), writes `preamble` and a probe, and waits for the probe's
/// echo: Some(stream) when relayed, None when the relay closed or reset the connection.
pub async fn try_relayed(to: SocketAddr, from: Option<&str>, preamble: &[u8]) -> Option<TcpStream> {
    let mut stream = match open(from.unwrap_or("127.0.0.1"), to).await.1 {
        Ok(stream) => stream,
        Err(e) if is_reset(&e) => return None,
        Err(e) => panic!("connect: {e}"),
    };
    let mut first = preamble.to_vec();
    first.extend_from_slice(b"probe");
    if let Err(e) = stream.write_all(&first).await {
        assert!(is_reset(&e), "write: {e}");
        return None;
    }
    let mut got = [0u8; 5];
    match tokio::time::timeout(IO_LIMIT, stream.read_exact(&mut got)).await {
        Err(_) => panic!("neither relayed nor refused within {IO_LIMIT:?}"),
        Ok(Ok(_)) => {
            assert_eq!(&got, b"probe");
            Some(stream)
        }
        // A reset; or EOF when the write already reported it.
        Ok(Err(e)) if is_reset(&e) || e.kind() == ErrorKind::UnexpectedEof => None,
        Ok(Err(e)) => panic!("reading the probe: {e}"),
    }
}

/// Retries `try_relayed` until a connection is relayed (the relay has seen an earlier close).
pub async fn relayed_eventually(to: SocketAddr, from: Option<&str>, preamble: &[u8]) -> TcpStream {
    let deadline = Instant::now() + IO_LIMIT;
    loop {
        if let Some(stream) = try_relayed(to, from, preamble).await {
            return stream;
        }
        assert!(
            Instant::now() < deadline,
            "still refused {IO_LIMIT:?} after a slot was freed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What an upstream server received on one connection, up to the relay's FIN.
#[derive(Debug)]
pub struct Received {
    pub peer: SocketAddr,
    pub bytes: Vec<u8>,
}

/// A server that records everything each connection sends until EOF, reports it, then closes.
pub async fn recording_server() -> (SocketAddr, Accepted, mpsc::UnboundedReceiver<Received>) {
    let listener = upstream_listener();
    let addr = listener.local_addr().unwrap();
    let accepted = Accepted::default();
    let count = accepted.clone();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, peer)) = listener.accept().await {
            count.0.fetch_add(1, Ordering::SeqCst);
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut bytes = Vec::new();
                let _ = stream.read_to_end(&mut bytes).await;
                let _ = tx.send(Received { peer, bytes });
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, accepted, rx)
}

pub async fn next_received(rx: &mut mpsc::UnboundedReceiver<Received>, what: &str) -> Received {
    tokio::time::timeout(IO_LIMIT, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("{what}: the server received nothing within {IO_LIMIT:?}"))
        .expect("server running")
}

/// Asserts each `key=value` of `expected` in `line`; `None` means the field is absent.
pub fn assert_fields(line: &str, expected: &[(&str, Option<&str>)]) {
    for &(key, value) in expected {
        assert_eq!(field(line, key), value, "field {key} in: {line}");
    }
}

/// The exact bytes a rustls client sends first: its ClientHello for `server_name`.
pub fn client_hello(server_name: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string()).unwrap();
    let mut connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    while connection.wants_write() {
        connection.write_tls(&mut out).unwrap();
    }
    assert_eq!(out[0], 0x16, "a TLS handshake record");
    out
}
