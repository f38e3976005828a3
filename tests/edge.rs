//! End-to-end edge cases of a connection's first moments, against the built binary: PROXY
//! protocol v1/v2 byte vectors (well-formed and malformed), the handshake timeout, access rules
//! and per-client limits, SNI routing with a real rustls ClientHello, the PROXY header the relay
//! sends upstream, and the pool's source address.
//!
//! Every PROXY header here is built by hand from the spec's byte layout, never with the relay's
//! own encoder, so a bug shared by the relay's parser and encoder cannot hide.

mod common;

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// How long any single network step may take before the test fails.
const IO_LIMIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// PROXY protocol headers, by hand.

const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
const VERSION_PROXY: u8 = 0x21;
const VERSION_LOCAL: u8 = 0x20;
const TCP4: u8 = 0x11;
const TCP6: u8 = 0x21;
const UNSPEC: u8 = 0x00;

/// Signature, version/command, family, big-endian length, then `block` (addresses and TLVs).
fn v2(version_command: u8, family: u8, block: &[u8]) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(version_command);
    out.push(family);
    out.extend_from_slice(&u16::try_from(block.len()).unwrap().to_be_bytes());
    out.extend_from_slice(block);
    out
}

fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
    out.extend_from_slice(value);
    out
}

/// AWS TLV 0xEA, subtype 0x01 (VPC endpoint ID).
fn aws_tlv(vpce: &str) -> Vec<u8> {
    let mut value = vec![0x01];
    value.extend_from_slice(vpce.as_bytes());
    tlv(0xEA, &value)
}

/// The address block for TCP over IPv4 or IPv6: src, dst, src port, dst port.
fn address_block(src: SocketAddr, dst: SocketAddr) -> (u8, Vec<u8>) {
    let mut block = Vec::new();
    let family = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            block.extend_from_slice(&s.octets());
            block.extend_from_slice(&d.octets());
            TCP4
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            block.extend_from_slice(&s.octets());
            block.extend_from_slice(&d.octets());
            TCP6
        }
        _ => panic!("test vectors use one family"),
    };
    block.extend_from_slice(&src.port().to_be_bytes());
    block.extend_from_slice(&dst.port().to_be_bytes());
    (family, block)
}

/// A v2 PROXY header from `src` to `dst` followed by `tlvs` in order.
fn proxy_v2(src: &str, dst: &str, tlvs: &[Vec<u8>]) -> Vec<u8> {
    let (family, mut block) = address_block(src.parse().unwrap(), dst.parse().unwrap());
    for t in tlvs {
        block.extend_from_slice(t);
    }
    v2(VERSION_PROXY, family, &block)
}

// ---------------------------------------------------------------------------------------------
// Configs with several listeners and pools.

fn listener(name: &str, listen: SocketAddr, pool: &str, extra: &str) -> String {
    format!(
        "[[listener]]\nname = \"{name}\"\nlisten = \"{listen}\"\npool = \"{pool}\"\n{extra}\n\n"
    )
}

fn pool(name: &str, servers: &[SocketAddr], extra: &str) -> String {
    let mut text = format!("[[pool]]\nname = \"{name}\"\n{extra}\n");
    for (i, server) in servers.iter().enumerate() {
        text.push_str(&format!(
            "  [[pool.server]]\n  name = \"{name}-{i}\"\n  address = \"{server}\"\n"
        ));
    }
    text.push('\n');
    text
}

fn octets(addr: SocketAddr) -> [u8; 4] {
    match addr.ip() {
        IpAddr::V4(ip) => ip.octets(),
        IpAddr::V6(_) => panic!("IPv4 listeners only"),
    }
}

/// Starts the relay on a config built around fresh listen addresses. The port `listen_addr()`
/// found free can still be taken before the relay binds it (rarely, on these addresses): then
/// the relay exits with "Address already in use", and this builds the config again.
fn start_relay<T>(build: impl Fn() -> (String, T)) -> (RelayProcess, T) {
    const ATTEMPTS: usize = 3;
    for attempt in 1..=ATTEMPTS {
        let (config, addresses) = build();
        let started = std::panic::catch_unwind(|| RelayProcess::start(&config));
        match started {
            Ok(relay) => return (relay, addresses),
            Err(panic) => {
                let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
                if attempt == ATTEMPTS || !message.contains("Address already in use") {
                    std::panic::resume_unwind(panic);
                }
            }
        }
    }
    unreachable!()
}

// ---------------------------------------------------------------------------------------------
// Sockets (`connect`, `open`, `connect_from`: tests/common).

fn is_reset(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe)
}

/// Connects from `from`, sends `bytes` (then half-closes if asked) and expects the relay to
/// reset the connection, wherever the reset shows first: at connect, on the write or on the
/// read. Returns the client address the relay saw, and the time from connect to reset.
async fn expect_reset(
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
fn socket_client(stream: &TcpStream) -> String {
    stream.local_addr().unwrap().to_string()
}

/// Writes `payload` and reads it back from an echo server through the relay.
async fn assert_echo(stream: &mut TcpStream, payload: &[u8], what: &str) {
    stream.write_all(payload).await.expect("write payload");
    let mut got = vec![0u8; payload.len()];
    tokio::time::timeout(IO_LIMIT, stream.read_exact(&mut got))
        .await
        .unwrap_or_else(|_| panic!("{what}: no echo within {IO_LIMIT:?}"))
        .unwrap_or_else(|e| panic!("{what}: reading the echo: {e}"));
    assert_eq!(got, payload, "{what}: echo differs");
}

/// Half-closes and waits for the server's FIN, so the relay ends (and logs) the session.
async fn finish(mut stream: TcpStream, what: &str) {
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
async fn try_relayed(to: SocketAddr, from: Option<&str>, preamble: &[u8]) -> Option<TcpStream> {
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
async fn relayed_eventually(to: SocketAddr, from: Option<&str>, preamble: &[u8]) -> TcpStream {
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
struct Received {
    peer: SocketAddr,
    bytes: Vec<u8>,
}

/// A server that records everything each connection sends until EOF, reports it, then closes.
async fn recording_server() -> (SocketAddr, Accepted, mpsc::UnboundedReceiver<Received>) {
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

async fn next_received(rx: &mut mpsc::UnboundedReceiver<Received>, what: &str) -> Received {
    tokio::time::timeout(IO_LIMIT, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("{what}: the server received nothing within {IO_LIMIT:?}"))
        .expect("server running")
}

// ---------------------------------------------------------------------------------------------
// The access log (`field`, `log_mark`, `log_for`, `log_since`, `log_where`: tests/common).

/// Asserts each `key=value` of `expected` in `line`; `None` means the field is absent.
fn assert_fields(line: &str, expected: &[(&str, Option<&str>)]) {
    for &(key, value) in expected {
        assert_eq!(field(line, key), value, "field {key} in: {line}");
    }
}

// ---------------------------------------------------------------------------------------------
// 1. PROXY protocol vectors.

/// Well-formed v2 headers: the relay reads exactly the header, logs the client it names, and
/// relays the payload after it intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_v2_vectors_end_to_end() {
    let (server, accepted) = echo_server().await;
    let (relay, listen) = start_relay(|| {
        let listen = listen_addr();
        (
            config(listen, &[server], "proxy_protocol = \"v2\"", ""),
            listen,
        )
    });

    // (what, header, expected client= (None: the socket's own peer), expected vpce=)
    let vpce_first = "vpce-0000000000000000a";
    let vpce_middle = "vpce-0000000000000000b";
    let vpce_last = "vpce-0000000000000000c";
    let alpn = tlv(0x01, b"h2");
    let authority = tlv(0x02, b"api.example.com");
    let noop = tlv(0x04, &[0u8; 7]);
    let azure = tlv(0xEE, &[0x01, 0x78, 0x56, 0x34, 0x12]);
    let cases = vec![
        (
            "IPv4",
            proxy_v2("192.0.2.1:56324", "198.51.100.1:443", &[]),
            Some("192.0.2.1:56324"),
            None,
        ),
        (
            "IPv6",
            proxy_v2("[2001:db8::1]:50000", "[2001:db8:ffff::443]:443", &[]),
            Some("[2001:db8::1]:50000"),
            None,
        ),
        (
            "LOCAL with an address block (discarded)",
            {
                let (_, block) = address_block(
                    "10.9.9.9:1111".parse().unwrap(),
                    "10.8.8.8:443".parse().unwrap(),
                );
                v2(VERSION_LOCAL, TCP4, &block)
            },
            None,
            None,
        ),
        (
            "LOCAL, UNSPEC, empty",
            v2(VERSION_LOCAL, UNSPEC, &[]),
            None,
            None,
        ),
        (
            "PROXY UNSPEC with an opaque block",
            v2(VERSION_PROXY, UNSPEC, &[1, 2, 3, 4, 5, 6, 7, 8]),
            None,
            None,
        ),
        (
            "PROXY AF_UNIX stream (no IP addresses)",
            v2(VERSION_PROXY, 0x31, &[b'/'; 216]),
            None,
            None,
        ),
        (
            "the largest header accepted: 4096 bytes after the fixed part",
            {
                let header = proxy_v2(
                    "192.0.2.9:40009",
                    "198.51.100.1:443",
                    &[
                        tlv(0x04, &[0u8; 4096 - 12 - 3 - 26]),
                        aws_tlv("vpce-0000000000000000f"),
                    ],
                );
                assert_eq!(header.len(), 16 + 4096);
                header
            },
            Some("192.0.2.9:40009"),
            Some("vpce-0000000000000000f"),
        ),
        (
            "AWS TLV first",
            proxy_v2(
                "192.0.2.2:40001",
                "198.51.100.1:443",
                &[aws_tlv(vpce_first), alpn.clone(), noop.clone()],
            ),
            Some("192.0.2.2:40001"),
            Some(vpce_first),
        ),
        (
            "AWS TLV in the middle",
            proxy_v2(
                "192.0.2.3:40002",
                "198.51.100.1:443",
                &[alpn.clone(), aws_tlv(vpce_middle), authority.clone()],
            ),
            Some("192.0.2.3:40002"),
            Some(vpce_middle),
        ),
        (
            "AWS TLV last (IPv6)",
            proxy_v2(
                "[2001:db8::2]:40003",
                "[2001:db8::443]:443",
                &[
                    noop.clone(),
                    azure.clone(),
                    authority.clone(),
                    aws_tlv(vpce_last),
                ],
            ),
            Some("[2001:db8::2]:40003"),
            Some(vpce_last),
        ),
    ];

    let mut relayed = 0;
    for (i, (what, header, client, vpce)) in cases.iter().enumerate() {
        // Header and payload in one write, and header dribbled a byte per write.
        for dribble in [false, true] {
            let what = format!("{what} (dribbled: {dribble})");
            let mark = log_mark(&relay);
            let mut stream = connect(listen).await;
            let payload = format!("payload {i} {dribble} \r\n\r\n\0 after the header").into_bytes();
            if dribble {
                for byte in header {
                    stream.write_all(&[*byte]).await.unwrap();
                    stream.flush().await.unwrap();
                }
                assert_echo(&mut stream, &payload, &what).await;
            } else {
                let mut first = header.clone();
                first.extend_from_slice(&payload);
                stream.write_all(&first).await.unwrap();
                let mut got = vec![0u8; payload.len()];
                tokio::time::timeout(IO_LIMIT, stream.read_exact(&mut got))
                    .await
                    .unwrap_or_else(|_| panic!("{what}: no echo"))
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_eq!(got, payload, "{what}: payload after the header");
            }
            let socket = socket_client(&stream);
            finish(stream, &what).await;
            relayed += 1;

            let expected_client = client.map(str::to_string).unwrap_or(socket);
            let line = log_since(&relay, mark, &expected_client).await;
            assert_fields(
                &line,
                &[
                    ("client", Some(&expected_client)),
                    ("vpce", Some(vpce.unwrap_or("-"))),
                    ("end", Some("client_closed")),
                    ("detail", None),
                    ("bytes_c2s", Some(&payload.len().to_string())),
                ],
            );
        }
    }
    assert_eq!(accepted.get(), relayed);
}

/// "PROXY UNKNOWN " + 91 bytes + CRLF: the spec's 107-byte maximum, CRLF included.
const V1_LONGEST: [u8; 107] = {
    let mut line = [b'f'; 107];
    let prefix = b"PROXY UNKNOWN ";
    let mut i = 0;
    while i < prefix.len() {
        line[i] = prefix[i];
        i += 1;
    }
    line[105] = b'\r';
    line[106] = b'\n';
    line
};

/// Well-formed v1 lines: TCP4, TCP6, UNKNOWN (the socket's own addresses).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_v1_vectors_end_to_end() {
    let (server, accepted) = echo_server().await;
    let (relay, listen) = start_relay(|| {
        let listen = listen_addr();
        (
            config(listen, &[server], "proxy_protocol = \"v1\"", ""),
            listen,
        )
    });

    let cases: [(&str, &[u8], Option<&str>); 5] = [
        (
            "TCP4",
            b"PROXY TCP4 192.0.2.10 198.51.100.1 40001 443\r\n",
            Some("192.0.2.10:40001"),
        ),
        (
            "TCP6",
            b"PROXY TCP6 2001:db8::7 2001:db8::1 40002 443\r\n",
            Some("[2001:db8::7]:40002"),
        ),
        ("UNKNOWN", b"PROXY UNKNOWN\r\n", None),
        (
            "UNKNOWN with ignored addresses",
            b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
            None,
        ),
        ("UNKNOWN, 107 bytes: the longest line", &V1_LONGEST, None),
    ];
    assert_eq!(V1_LONGEST.len(), 107);
    for (what, header, client) in cases {
        for dribble in [false, true] {
            let what = format!("{what} (dribbled: {dribble})");
            let mark = log_mark(&relay);
            let mut stream = connect(listen).await;
            // The payload starts like another header: it must not be taken for one.
            let payload = b"PROXY TCP4 1.1.1.1 2.2.2.2 1 2\r\nand more";
            if dribble {
                for byte in header {
                    stream.write_all(&[*byte]).await.unwrap();
                    stream.flush().await.unwrap();
                }
                assert_echo(&mut stream, payload, &what).await;
            } else {
                stream
                    .write_all(&[header, &payload[..]].concat())
                    .await
                    .unwrap();
                let mut got = vec![0u8; payload.len()];
                tokio::time::timeout(IO_LIMIT, stream.read_exact(&mut got))
                    .await
                    .unwrap_or_else(|_| panic!("{what}: no echo"))
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_eq!(&got[..], &payload[..], "{what}");
            }
            let socket = socket_client(&stream);
            finish(stream, &what).await;
            let expected_client = client.map(str::to_string).unwrap_or(socket);
            let line = log_since(&relay, mark, &expected_client).await;
            assert_fields(
                &line,
                &[
                    ("vpce", Some("-")),
                    ("end", Some("client_closed")),
                    ("bytes_c2s", Some(&payload.len().to_string())),
                ],
            );
        }
    }
    assert_eq!(accepted.get(), 10);
}

/// Malformed headers are reset and logged with the parser's reason; a connection already
/// relaying and one opened right after are not affected, and no upstream connection is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_proxy_headers_are_refused_and_logged() {
    let (server, accepted) = echo_server().await;
    let (relay, (listen_v2, listen_v1, listen_any)) = start_relay(|| {
        let (listen_v2, listen_v1, listen_any) = (listen_addr(), listen_addr(), listen_addr());
        (
            assemble_config(
                None,
                &[
                    listener("v2", listen_v2, "p", "proxy_protocol = \"v2\""),
                    listener("v1", listen_v1, "p", "proxy_protocol = \"v1\""),
                    listener("any", listen_any, "p", "proxy_protocol = \"any\""),
                ],
                &[pool("p", &[server], "")],
            ),
            (listen_v2, listen_v1, listen_any),
        )
    });

    // A bystander, relaying before and after the malformed connections.
    let good = proxy_v2("192.0.2.50:5000", "198.51.100.1:443", &[]);
    let mut bystander = connect(listen_v2).await;
    bystander.write_all(&good).await.unwrap();
    assert_echo(&mut bystander, b"before", "bystander").await;

    let v4_block = {
        let (_, block) = address_block(
            "192.0.2.1:1000".parse().unwrap(),
            "198.51.100.1:443".parse().unwrap(),
        );
        block
    };
    let cases: Vec<(&str, SocketAddr, Vec<u8>, bool, &str)> = vec![
        // (what, listener, bytes, then half-close, expected detail)
        (
            "bad signature",
            listen_v2,
            b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n".to_vec(),
            false,
            "bad_signature",
        ),
        (
            "signature off by one bit",
            listen_v2,
            {
                let mut h = good.clone();
                h[11] ^= 0x01;
                h
            },
            false,
            "bad_signature",
        ),
        (
            "truncated: client closes mid-header",
            listen_v2,
            good[..20].to_vec(),
            true,
            "closed",
        ),
        (
            "length overrun: declared length shorter than the IPv4 block",
            listen_v2,
            {
                let mut h = v2(VERSION_PROXY, TCP4, &v4_block[..8]);
                h.extend_from_slice(b"payload!");
                h
            },
            false,
            "length_overrun",
        ),
        (
            "TLV past the end of the header",
            listen_v2,
            {
                // A TLV declaring 10 value bytes where the header leaves room for 2.
                let mut block = v4_block.clone();
                block.extend_from_slice(&[0x04, 0x00, 0x0A, 0xAA, 0xBB]);
                let mut h = v2(VERSION_PROXY, TCP4, &block);
                h.extend_from_slice(&[0xCC; 16]);
                h
            },
            false,
            "tlv_overrun",
        ),
        (
            "invalid VPC endpoint ID",
            listen_v2,
            {
                let mut block = v4_block.clone();
                block.extend_from_slice(&tlv(0xEA, b"\x01vpce-\x07bell"));
                v2(VERSION_PROXY, TCP4, &block)
            },
            false,
            "bad_vpce_id",
        ),
        (
            "two VPC endpoint TLVs",
            listen_v2,
            proxy_v2(
                "192.0.2.1:1000",
                "198.51.100.1:443",
                &[aws_tlv("vpce-01"), aws_tlv("vpce-02")],
            ),
            false,
            "duplicate_tlv",
        ),
        (
            "v1 line to a v2 listener",
            listen_v2,
            b"PROXY TCP4 192.0.2.1 198.51.100.1 1000 443\r\n".to_vec(),
            false,
            "version_not_accepted",
        ),
        (
            "v1 without CRLF within 107 bytes",
            listen_v1,
            {
                let mut h = b"PROXY UNKNOWN ".to_vec();
                h.resize(130, b'x');
                h.extend_from_slice(b"\r\n");
                h
            },
            false,
            "v1_no_crlf",
        ),
        (
            "v1 line of 108 bytes, CRLF included",
            listen_v1,
            {
                let mut h = V1_LONGEST[..105].to_vec();
                h.extend_from_slice(b"f\r\n");
                h
            },
            false,
            "v1_no_crlf",
        ),
        (
            "v1 bad address",
            listen_v1,
            b"PROXY TCP4 192.0.2.300 198.51.100.1 1000 443\r\n".to_vec(),
            false,
            "v1_bad_field",
        ),
        (
            "v2 version nibble 1",
            listen_v2,
            v2(0x11, TCP4, &v4_block),
            false,
            "bad_version",
        ),
        (
            "v2 command nibble 2",
            listen_v2,
            v2(0x22, TCP4, &v4_block),
            false,
            "bad_command",
        ),
        (
            "v2 unknown family 0x13",
            listen_v2,
            v2(VERSION_PROXY, 0x13, &v4_block),
            false,
            "bad_family",
        ),
        (
            "v2 header one byte over 4096",
            listen_v2,
            proxy_v2(
                "192.0.2.1:1000",
                "198.51.100.1:443",
                &[tlv(0x04, &[0u8; 4097 - 12 - 3])],
            ),
            false,
            "too_long",
        ),
        (
            "v2 declared length 65535",
            listen_v2,
            {
                let mut h = V2_SIGNATURE.to_vec();
                h.extend_from_slice(&[VERSION_PROXY, TCP4, 0xFF, 0xFF]);
                h.extend_from_slice(&v4_block);
                h
            },
            false,
            "too_long",
        ),
        (
            "neither version, to an \"any\" listener",
            listen_any,
            b"SSH-2.0-OpenSSH_9.6\r\n".to_vec(),
            false,
            "not_proxy",
        ),
        (
            "truncated v1, to an \"any\" listener",
            listen_any,
            b"PROXY TCP6 2001:db8::1 ".to_vec(),
            true,
            "closed",
        ),
    ];

    for (what, listen, bytes, half_close, detail) in &cases {
        let mark = log_mark(&relay);
        let (client, _) = expect_reset("127.0.0.1", *listen, bytes, *half_close, what).await;
        let line = log_since(&relay, mark, &client).await;
        assert_fields(
            &line,
            &[
                ("end", Some("proxy_header_error")),
                ("detail", Some(detail)),
                ("pool", Some("-")),
                ("server", Some("-")),
            ],
        );

        // Right after: a well-formed connection on the same listener works.
        let mut next = connect(*listen).await;
        let header: &[u8] = if *listen == listen_v1 {
            b"PROXY TCP4 192.0.2.60 198.51.100.1 6000 443\r\n"
        } else {
            &good
        };
        next.write_all(header).await.unwrap();
        assert_echo(&mut next, b"right after", what).await;
        finish(next, what).await;
    }

    assert_echo(&mut bystander, b"after", "bystander").await;
    finish(bystander, "bystander").await;
    // FIFO accept queue: the last good connection was accepted after every malformed one, so
    // had any of those reached the server, the count would be higher.
    assert_eq!(
        accepted.get(),
        1 + cases.len() as u64,
        "only well-formed connections reach the server"
    );
}

/// The NLB does not strip a header the client sent: the second header is payload, byte for
/// byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_proxy_header_is_payload() {
    let (server, _, mut received) = recording_server().await;
    let (relay, (listen_v2, listen_any)) = start_relay(|| {
        let (listen_v2, listen_any) = (listen_addr(), listen_addr());
        (
            assemble_config(
                None,
                &[
                    listener("v2", listen_v2, "p", "proxy_protocol = \"v2\""),
                    listener("any", listen_any, "p", "proxy_protocol = \"any\""),
                ],
                &[pool("p", &[server], "")],
            ),
            (listen_v2, listen_any),
        )
    });

    let outer = proxy_v2(
        "192.0.2.70:7000",
        "198.51.100.1:443",
        &[aws_tlv("vpce-0000000000000000d")],
    );
    let inner = proxy_v2(
        "203.0.113.9:9999",
        "198.51.100.1:443",
        &[aws_tlv("vpce-0000000000000000e")],
    );
    let cases = [
        (
            "v2 then v2",
            listen_v2,
            outer.clone(),
            inner.clone(),
            "192.0.2.70:7000",
        ),
        (
            "v2 then v1",
            listen_any,
            proxy_v2("192.0.2.71:7001", "198.51.100.1:443", &[]),
            b"PROXY TCP4 203.0.113.9 198.51.100.1 9999 443\r\n".to_vec(),
            "192.0.2.71:7001",
        ),
        (
            "v1 then v2",
            listen_any,
            b"PROXY TCP4 192.0.2.72 198.51.100.1 7002 443\r\n".to_vec(),
            inner.clone(),
            "192.0.2.72:7002",
        ),
    ];
    for (what, listen, first, second, client) in cases {
        let mut stream = connect(listen).await;
        let payload = [&second[..], b"then the request"].concat();
        stream
            .write_all(&[&first[..], &payload].concat())
            .await
            .unwrap();
        finish(stream, what).await;
        let got = next_received(&mut received, what).await;
        assert_eq!(
            got.bytes, payload,
            "{what}: the server gets the second header as payload"
        );
        let line = log_for(&relay, client).await;
        let expected_vpce = if what == "v2 then v2" {
            "vpce-0000000000000000d"
        } else {
            "-"
        };
        assert_fields(
            &line,
            &[
                ("vpce", Some(expected_vpce)),
                ("end", Some("client_closed")),
                ("bytes_c2s", Some(&payload.len().to_string())),
            ],
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 2. handshake_timeout

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_timeout_closes_silent_and_partial_clients() {
    let (server, accepted) = echo_server().await;
    let routes = "route_fallback = \"pool\"\n[[listener.route]]\nserver_names = [\"api.example.com\"]\npool = \"p\"\n";
    let (relay, (listen_pp, listen_sni)) = start_relay(|| {
        let (listen_pp, listen_sni) = (listen_addr(), listen_addr());
        let config = assemble_config(
            None,
            &[
                listener(
                    "pp",
                    listen_pp,
                    "p",
                    "proxy_protocol = \"any\"\nhandshake_timeout = \"1s\"",
                ),
                listener(
                    "sni",
                    listen_sni,
                    "p",
                    &format!("handshake_timeout = \"1s\"\n{routes}"),
                ),
            ],
            &[pool("p", &[server], "")],
        );
        (config, (listen_pp, listen_sni))
    });

    let half_v2 = proxy_v2("192.0.2.1:1000", "198.51.100.1:443", &[])[..20].to_vec();
    let half_v1 = b"PROXY TCP4 192.0.2.1 ".to_vec();
    // The first 3 bytes of a TLS record header: a ClientHello that never completes.
    let half_hello = vec![0x16, 0x03, 0x01];
    let cases = [
        ("silent, PROXY listener", "pp", listen_pp, Vec::new()),
        ("half a v2 header", "pp", listen_pp, half_v2),
        ("half a v1 line", "pp", listen_pp, half_v1),
        ("silent, SNI listener", "sni", listen_sni, Vec::new()),
        ("half a ClientHello", "sni", listen_sni, half_hello),
    ];
    let tasks: Vec<_> = cases
        .into_iter()
        .map(|(what, name, listen, bytes)| {
            tokio::spawn(async move {
                let (client, took) = expect_reset("127.0.0.1", listen, &bytes, false, what).await;
                assert!(
                    took >= Duration::from_millis(900) && took <= Duration::from_secs(3),
                    "{what}: closed after {took:?}, expected about 1 s"
                );
                (what, name, client)
            })
        })
        .collect();
    for task in tasks {
        let (what, name, client) = task.await.unwrap();
        // Concurrent connections to the two listeners may share a client port.
        let line = log_where(&relay, what, |l| {
            field(l, "client") == Some(client.as_str()) && field(l, "listener") == Some(name)
        })
        .await;
        assert_fields(
            &line,
            &[
                ("end", Some("handshake_timeout")),
                ("detail", None),
                ("pool", Some("-")),
                ("server", Some("-")),
            ],
        );
    }
    // A well-formed client after them is relayed, and only it reached the server.
    let mut stream = connect(listen_pp).await;
    stream.write_all(b"PROXY UNKNOWN\r\n").await.unwrap();
    assert_echo(&mut stream, b"on time", "on time").await;
    finish(stream, "on time").await;
    assert_eq!(accepted.get(), 1);
}

// ---------------------------------------------------------------------------------------------
// 3. Access rules and per-client limits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_and_deny_on_the_socket_peer() {
    let (server, accepted) = echo_server().await;
    let (relay, (listen_allow, listen_deny)) = start_relay(|| {
        let (listen_allow, listen_deny) = (listen_addr(), listen_addr());
        (
            assemble_config(
                None,
                &[
                    listener("allow", listen_allow, "p", "allow = [\"127.0.0.1/32\"]"),
                    // 127.0.0.2 is in both lists: deny wins.
                    listener(
                        "deny",
                        listen_deny,
                        "p",
                        "allow = [\"127.0.0.0/8\"]\ndeny = [\"127.0.0.2/32\", \"127.0.0.3\"]",
                    ),
                ],
                &[pool("p", &[server], "")],
            ),
            (listen_allow, listen_deny),
        )
    });

    let cases = [
        (
            "allow: 127.0.0.2 not in the list",
            listen_allow,
            "127.0.0.2",
            Some("allow"),
        ),
        (
            "allow: 127.0.0.1 in the list",
            listen_allow,
            "127.0.0.1",
            None,
        ),
        (
            "deny: 127.0.0.2 in both lists",
            listen_deny,
            "127.0.0.2",
            Some("deny"),
        ),
        (
            "deny: 127.0.0.3 as a bare address",
            listen_deny,
            "127.0.0.3",
            Some("deny"),
        ),
        (
            "deny: 127.0.0.1 only allowed",
            listen_deny,
            "127.0.0.1",
            None,
        ),
    ];
    let mut relayed = 0;
    for (what, listen, from, refused_by) in cases {
        match refused_by {
            Some(rule) => {
                let mark = log_mark(&relay);
                let (client, _) = expect_reset(from, listen, b"hello", false, what).await;
                let line = log_since(&relay, mark, &client).await;
                assert_fields(
                    &line,
                    &[
                        ("end", Some("refused_rule")),
                        ("detail", Some(rule)),
                        ("server", Some("-")),
                    ],
                );
            }
            None => {
                let mark = log_mark(&relay);
                let mut stream = connect_from(from, listen).await;
                let client = socket_client(&stream);
                assert_echo(&mut stream, b"hello", what).await;
                finish(stream, what).await;
                relayed += 1;
                let line = log_since(&relay, mark, &client).await;
                assert_fields(&line, &[("end", Some("client_closed"))]);
            }
        }
    }
    // Refused connections never reached the server (the last one was accepted after them).
    assert_eq!(accepted.get(), relayed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_rules_apply_to_the_proxy_source_and_vpce() {
    let (server, accepted) = echo_server().await;
    let allowed_vpce = "vpce-0123456789abcdef0";
    let (relay, (listen_vpce, listen_cidr)) = start_relay(|| {
        let (listen_vpce, listen_cidr) = (listen_addr(), listen_addr());
        (assemble_config(
            None,
        &[
            listener(
                "vpce",
                listen_vpce,
                "p",
                // Listed in upper case: the config lowercases IDs, as AWS writes them.
                "proxy_protocol = \"v2\"\nallow_vpce = [\"vpce-0123456789ABCDEF0\", \"vpce-1111111111111111a\"]",
            ),
            // The socket peer (127.0.0.1) is outside this list: only the PROXY source counts.
            listener(
                "cidr",
                listen_cidr,
                "p",
                "proxy_protocol = \"v2\"\nallow = [\"192.0.2.0/24\", \"2001:db8::/32\"]\ndeny = [\"192.0.2.66/32\"]",
            ),
        ],
        &[pool("p", &[server], "")],
    ), (listen_vpce, listen_cidr))
    });

    let cases = [
        (
            "allowed VPC endpoint",
            listen_vpce,
            proxy_v2(
                "192.0.2.1:2001",
                "198.51.100.1:443",
                &[aws_tlv(allowed_vpce)],
            ),
            "192.0.2.1:2001",
            None,
        ),
        (
            "another VPC endpoint",
            listen_vpce,
            proxy_v2(
                "192.0.2.1:2002",
                "198.51.100.1:443",
                &[aws_tlv("vpce-99999999999999999")],
            ),
            "192.0.2.1:2002",
            Some("allow_vpce"),
        ),
        (
            "no VPC endpoint TLV",
            listen_vpce,
            proxy_v2("192.0.2.1:2003", "198.51.100.1:443", &[]),
            "192.0.2.1:2003",
            Some("allow_vpce"),
        ),
        (
            "LOCAL (health check) has no VPC endpoint",
            listen_vpce,
            v2(VERSION_LOCAL, UNSPEC, &[]),
            "",
            Some("allow_vpce"),
        ),
        (
            "PROXY source inside allow",
            listen_cidr,
            proxy_v2("192.0.2.10:3001", "198.51.100.1:443", &[]),
            "192.0.2.10:3001",
            None,
        ),
        (
            "PROXY source outside allow",
            listen_cidr,
            proxy_v2("198.51.100.7:3002", "198.51.100.1:443", &[]),
            "198.51.100.7:3002",
            Some("allow"),
        ),
        (
            "PROXY source in deny",
            listen_cidr,
            proxy_v2("192.0.2.66:3003", "198.51.100.1:443", &[]),
            "192.0.2.66:3003",
            Some("deny"),
        ),
        (
            "IPv6 PROXY source inside allow",
            listen_cidr,
            proxy_v2("[2001:db8::5]:3004", "[2001:db8::443]:443", &[]),
            "[2001:db8::5]:3004",
            None,
        ),
        (
            "IPv6 PROXY source outside allow",
            listen_cidr,
            proxy_v2("[2001:db9::5]:3005", "[2001:db8::443]:443", &[]),
            "[2001:db9::5]:3005",
            Some("allow"),
        ),
        (
            "IPv4-mapped IPv6 PROXY source, matched as IPv4",
            listen_cidr,
            proxy_v2("[::ffff:192.0.2.11]:3006", "[::ffff:198.51.100.1]:443", &[]),
            "[::ffff:192.0.2.11]:3006",
            None,
        ),
        (
            "IPv4-mapped IPv6 PROXY source in deny",
            listen_cidr,
            proxy_v2("[::ffff:192.0.2.66]:3007", "[::ffff:198.51.100.1]:443", &[]),
            "[::ffff:192.0.2.66]:3007",
            Some("deny"),
        ),
    ];
    let mut relayed = 0;
    for (what, listen, header, client, refused_by) in cases {
        match refused_by {
            Some(rule) => {
                let mark = log_mark(&relay);
                let (socket, _) = expect_reset("127.0.0.1", listen, &header, false, what).await;
                let client = if client.is_empty() {
                    socket
                } else {
                    client.to_string()
                };
                let line = log_since(&relay, mark, &client).await;
                assert_fields(
                    &line,
                    &[("end", Some("refused_rule")), ("detail", Some(rule))],
                );
            }
            None => {
                let mut stream = connect(listen).await;
                stream.write_all(&header).await.unwrap();
                assert_echo(&mut stream, b"hello", what).await;
                finish(stream, what).await;
                relayed += 1;
                let line = log_for(&relay, client).await;
                assert_fields(&line, &[("end", Some("client_closed"))]);
            }
        }
    }
    let line = log_for(&relay, "192.0.2.1:2001").await;
    assert_fields(&line, &[("vpce", Some(allowed_vpce))]);
    let line = log_for(&relay, "192.0.2.1:2002").await;
    assert_fields(&line, &[("vpce", Some("vpce-99999999999999999"))]);
    assert_eq!(accepted.get(), relayed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_header_from_a_peer_outside_proxy_protocol_from_is_refused() {
    let (server, accepted) = echo_server().await;
    let (relay, listen) = start_relay(|| {
        let listen = listen_addr();
        (
            config(
                listen,
                &[server],
                "proxy_protocol = \"v2\"\nproxy_protocol_from = [\"127.0.0.1/32\"]",
                "",
            ),
            listen,
        )
    });
    let header = proxy_v2("192.0.2.1:4001", "198.51.100.1:443", &[]);

    let mark = log_mark(&relay);
    let (outsider_addr, _) =
        expect_reset("127.0.0.3", listen, &header, false, "peer 127.0.0.3").await;
    let line = log_since(&relay, mark, &outsider_addr).await;
    assert_fields(
        &line,
        &[
            ("end", Some("refused_rule")),
            ("detail", Some("proxy_protocol_from")),
        ],
    );

    let mut trusted = connect_from("127.0.0.1", listen).await;
    trusted.write_all(&header).await.unwrap();
    assert_echo(&mut trusted, b"hello", "peer 127.0.0.1").await;
    finish(trusted, "peer 127.0.0.1").await;
    let line = log_for(&relay, "192.0.2.1:4001").await;
    assert_fields(&line, &[("end", Some("client_closed"))]);
    assert_eq!(accepted.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_vpce_limit() {
    let (server, _) = echo_server().await;
    let (relay, listen) = start_relay(|| {
        let listen = listen_addr();
        (
            config(
                listen,
                &[server],
                "proxy_protocol = \"v2\"\nmax_connections_per_vpce = 2",
                "",
            ),
            listen,
        )
    });
    let (a, b) = ("vpce-0aaaaaaaaaaaaaaa1", "vpce-0bbbbbbbbbbbbbbb2");
    // Distinct PROXY sources, so nothing but the VPC endpoint ties them together.
    let header = |port: u16, vpce: &str| {
        proxy_v2(
            &format!("192.0.2.{}:{port}", port % 200),
            "198.51.100.1:443",
            &[aws_tlv(vpce)],
        )
    };

    let first = try_relayed(listen, None, &header(5001, a))
        .await
        .expect("1st on A");
    let second = try_relayed(listen, None, &header(5002, a))
        .await
        .expect("2nd on A");
    assert!(
        try_relayed(listen, None, &header(5003, a)).await.is_none(),
        "3rd concurrent on A is refused"
    );
    let line = log_for(&relay, "192.0.2.3:5003").await;
    assert_fields(
        &line,
        &[
            ("vpce", Some(a)),
            ("end", Some("refused_limit")),
            ("detail", Some("per_vpce")),
        ],
    );
    let other = try_relayed(listen, None, &header(5004, b))
        .await
        .expect("B is accepted");

    // Closing one on A frees a slot once the relay has seen the close.
    finish(first, "1st on A").await;
    let again = relayed_eventually(listen, None, &header(5005, a)).await;

    for stream in [second, other, again] {
        finish(stream, "held").await;
    }
    // Earlier attempts with this source may have been refused before the relay saw the close.
    let line = log_where(&relay, "relayed 192.0.2.5:5005", |l| {
        field(l, "client") == Some("192.0.2.5:5005") && field(l, "end") == Some("client_closed")
    })
    .await;
    assert_fields(&line, &[("vpce", Some(a))]);
    let line = log_for(&relay, "192.0.2.4:5004").await;
    assert_fields(&line, &[("vpce", Some(b)), ("end", Some("client_closed"))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_source_limit() {
    let (server, _) = echo_server().await;
    let (relay, (listen, listen_pp)) = start_relay(|| {
        let (listen, listen_pp) = (listen_addr(), listen_addr());
        (
            assemble_config(
                None,
                &[
                    listener("plain", listen, "p", "max_connections_per_source = 2"),
                    // Behind a PROXY header, the limit is on the header's source, not the socket peer.
                    listener(
                        "pp",
                        listen_pp,
                        "p",
                        "proxy_protocol = \"v2\"\nmax_connections_per_source = 2",
                    ),
                ],
                &[pool("p", &[server], "")],
            ),
            (listen, listen_pp),
        )
    });

    let first = try_relayed(listen, Some("127.0.0.1"), b"")
        .await
        .expect("1st");
    let second = try_relayed(listen, Some("127.0.0.1"), b"")
        .await
        .expect("2nd");
    let mark = log_mark(&relay);
    let (third_client, _) =
        expect_reset("127.0.0.1", listen, b"probe", false, "3rd from 127.0.0.1").await;
    let line = log_since(&relay, mark, &third_client).await;
    assert_fields(
        &line,
        &[
            ("end", Some("refused_limit")),
            ("detail", Some("per_source")),
        ],
    );
    let other = try_relayed(listen, Some("127.0.0.2"), b"")
        .await
        .expect("another source is accepted");
    finish(first, "1st").await;
    let again = relayed_eventually(listen, Some("127.0.0.1"), b"").await;

    // PROXY sources: three headers naming 192.0.2.9, all from the socket 127.0.0.1.
    let from_9 = |port: u16| proxy_v2(&format!("192.0.2.9:{port}"), "198.51.100.1:443", &[]);
    let p1 = try_relayed(listen_pp, None, &from_9(6001))
        .await
        .expect("1st 192.0.2.9");
    let p2 = try_relayed(listen_pp, None, &from_9(6002))
        .await
        .expect("2nd 192.0.2.9");
    assert!(
        try_relayed(listen_pp, None, &from_9(6003)).await.is_none(),
        "3rd from 192.0.2.9 is refused"
    );
    let line = log_for(&relay, "192.0.2.9:6003").await;
    assert_fields(
        &line,
        &[
            ("end", Some("refused_limit")),
            ("detail", Some("per_source")),
        ],
    );
    let p3 = try_relayed(
        listen_pp,
        None,
        &proxy_v2("192.0.2.10:6004", "198.51.100.1:443", &[]),
    )
    .await
    .expect("another PROXY source from the same socket peer is accepted");

    for stream in [second, other, again, p1, p2, p3] {
        finish(stream, "held").await;
    }
}

// ---------------------------------------------------------------------------------------------
// 4. SNI routing

/// The exact bytes a rustls client sends first: its ClientHello for `server_name`.
fn client_hello(server_name: &str) -> Vec<u8> {
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

const ROUTES: &str = "[[listener.route]]\nserver_names = [\"api.example.com\", \"*.apps.example.com\"]\npool = \"other\"\n\n[[listener.route]]\nserver_names = [\"special.apps.example.com\"]\npool = \"default\"\n";

struct SniSetup {
    relay: RelayProcess,
    listen: SocketAddr,
    listen_strict: SocketAddr,
    /// Expects a PROXY v2 header, then routes on the ClientHello after it.
    listen_pp: SocketAddr,
    default: (Accepted, mpsc::UnboundedReceiver<Received>),
    other: (Accepted, mpsc::UnboundedReceiver<Received>),
}

async fn sni_setup() -> SniSetup {
    let (default_addr, default_accepted, default_rx) = recording_server().await;
    let (other_addr, other_accepted, other_rx) = recording_server().await;
    let (relay, (listen, listen_strict, listen_pp)) = start_relay(|| {
        let (listen, listen_strict, listen_pp) = (listen_addr(), listen_addr(), listen_addr());
        (
            assemble_config(
                None,
                &[
                    listener(
                        "pp",
                        listen_pp,
                        "default",
                        &format!("proxy_protocol = \"v2\"\n{ROUTES}"),
                    ),
                    listener(
                        "sni",
                        listen,
                        "default",
                        &format!("route_fallback = \"pool\"\n{ROUTES}"),
                    ),
                    listener(
                        "strict",
                        listen_strict,
                        "default",
                        &format!("route_fallback = \"refuse\"\n{ROUTES}"),
                    ),
                ],
                &[
                    pool("default", &[default_addr], ""),
                    pool("other", &[other_addr], ""),
                ],
            ),
            (listen, listen_strict, listen_pp),
        )
    });
    SniSetup {
        relay,
        listen,
        listen_strict,
        listen_pp,
        default: (default_accepted, default_rx),
        other: (other_accepted, other_rx),
    }
}

impl SniSetup {
    /// Sends `bytes` in `parts` (split points), half-closes, and returns which pool's server got
    /// them; asserts they arrived byte for byte and the log line says so.
    async fn route(
        &mut self,
        what: &str,
        listen: SocketAddr,
        bytes: &[u8],
        splits: &[usize],
        expected_pool: &str,
        expected_sni: &str,
    ) {
        let mark = log_mark(&self.relay);
        let mut stream = connect(listen).await;
        let client = socket_client(&stream);
        let mut start = 0;
        for &at in splits.iter().chain(std::iter::once(&bytes.len())) {
            stream.write_all(&bytes[start..at]).await.unwrap();
            stream.flush().await.unwrap();
            if at != bytes.len() {
                // A stimulus, not synchronisation: let this part leave as its own segment and
                // the relay parse it before the rest exists.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            start = at;
        }
        finish(stream, what).await;
        let got = tokio::select! {
            got = self.default.1.recv() => ("default", got.unwrap()),
            got = self.other.1.recv() => ("other", got.unwrap()),
            _ = tokio::time::sleep(IO_LIMIT) => panic!("{what}: no server received it"),
        };
        assert_eq!(got.0, expected_pool, "{what}: routed to the wrong pool");
        assert_eq!(
            got.1.bytes.len(),
            bytes.len(),
            "{what}: length at the server"
        );
        assert!(got.1.bytes == bytes, "{what}: bytes differ at the server");
        let line = log_since(&self.relay, mark, &client).await;
        assert_fields(
            &line,
            &[
                ("sni", Some(expected_sni)),
                ("pool", Some(expected_pool)),
                ("end", Some("client_closed")),
            ],
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_routes_client_hellos_to_pools() {
    let mut setup = sni_setup().await;
    let listen = setup.listen;
    let http = b"GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n".to_vec();
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        (
            "exact name",
            client_hello("api.example.com"),
            "other",
            "api.example.com",
        ),
        (
            "exact name, upper case",
            client_hello("API.Example.COM"),
            "other",
            "api.example.com",
        ),
        (
            "wildcard",
            client_hello("x1.apps.example.com"),
            "other",
            "x1.apps.example.com",
        ),
        (
            "exact beats wildcard",
            client_hello("special.apps.example.com"),
            "default",
            "special.apps.example.com",
        ),
        (
            "wildcard is one label",
            client_hello("a.b.apps.example.com"),
            "default",
            "a.b.apps.example.com",
        ),
        (
            "no match",
            client_hello("www.example.com"),
            "default",
            "www.example.com",
        ),
        (
            "no SNI (IP address)",
            client_hello("192.0.2.1"),
            "default",
            "-",
        ),
        ("not TLS", http, "default", "-"),
    ];
    for (what, bytes, pool, sni) in &cases {
        setup.route(what, listen, bytes, &[], pool, sni).await;
    }
    assert_eq!(setup.other.0.get(), 3);
    assert_eq!(setup.default.0.get(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_client_hello_in_several_segments_still_routes() {
    let mut setup = sni_setup().await;
    let listen = setup.listen;
    let hello = client_hello("api.example.com");
    let mid = hello.len() / 2;
    setup
        .route(
            "split in two",
            listen,
            &hello,
            &[mid],
            "other",
            "api.example.com",
        )
        .await;
    let hello = client_hello("y.apps.example.com");
    setup
        .route(
            "inside the record header, then mid-message",
            listen,
            &hello,
            &[3, 60],
            "other",
            "y.apps.example.com",
        )
        .await;
    let hello = client_hello("www.example.com");
    setup
        .route(
            "split, no match",
            listen,
            &hello,
            &[1],
            "default",
            "www.example.com",
        )
        .await;
    // One ClientHello carried in two TLS records (valid TLS, if rare), each its own segment.
    let hello = two_records(&client_hello("w.apps.example.com"), 30);
    setup
        .route(
            "two TLS records",
            listen,
            &hello,
            &[5 + 30 + 2],
            "other",
            "w.apps.example.com",
        )
        .await;
}

/// Re-frames a ClientHello sent in one TLS record as two records, the first carrying `first`
/// bytes of the handshake message.
fn two_records(record: &[u8], first: usize) -> Vec<u8> {
    let (header, message) = record.split_at(5);
    assert_eq!(
        message.len(),
        usize::from(u16::from_be_bytes([header[3], header[4]]))
    );
    let mut out = Vec::new();
    for part in [&message[..first], &message[first..]] {
        out.extend_from_slice(&header[..3]);
        out.extend_from_slice(&u16::try_from(part.len()).unwrap().to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// A PROXY header, then the ClientHello: the header is consumed, the ClientHello routed on and
/// passed on byte for byte, whether both come in one write or in pieces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_routing_after_a_proxy_header() {
    let mut setup = sni_setup().await;
    let vpce = "vpce-0123456789abcdef0";
    for (what, port, name, splits, expected_pool) in [
        ("one write", 7101u16, "api.example.com", vec![], "other"),
        (
            "one write, no match",
            7102,
            "www.example.com",
            vec![],
            "default",
        ),
        (
            "header, then a split ClientHello",
            7103,
            "z.apps.example.com",
            vec![1, 40],
            "other",
        ),
    ] {
        let client = format!("192.0.2.80:{port}");
        let header = proxy_v2(&client, "198.51.100.1:443", &[aws_tlv(vpce)]);
        let hello = client_hello(name);
        let bytes = [&header[..], &hello].concat();
        let mut stream = connect(setup.listen_pp).await;
        let mut start = 0;
        for at in splits.iter().map(|s| s + header.len()).chain([bytes.len()]) {
            stream.write_all(&bytes[start..at]).await.unwrap();
            if at != bytes.len() {
                // A stimulus, not synchronisation: separate segments.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            start = at;
        }
        finish(stream, what).await;
        let got = tokio::select! {
            got = setup.default.1.recv() => ("default", got.unwrap()),
            got = setup.other.1.recv() => ("other", got.unwrap()),
            _ = tokio::time::sleep(IO_LIMIT) => panic!("{what}: no server received it"),
        };
        assert_eq!(got.0, expected_pool, "{what}: routed to the wrong pool");
        assert!(
            got.1.bytes == hello,
            "{what}: the server must get the ClientHello alone, intact"
        );
        let line = log_for(&setup.relay, &client).await;
        assert_fields(
            &line,
            &[
                ("vpce", Some(vpce)),
                ("sni", Some(name)),
                ("pool", Some(expected_pool)),
                ("end", Some("client_closed")),
                ("bytes_c2s", Some(&hello.len().to_string())),
            ],
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_fallback_refuse() {
    let mut setup = sni_setup().await;
    let strict = setup.listen_strict;

    for (what, bytes, sni) in [
        (
            "no match",
            client_hello("www.example.com"),
            "www.example.com",
        ),
        ("no SNI", client_hello("192.0.2.1"), "-"),
        ("not TLS", b"GET / HTTP/1.1\r\n\r\n".to_vec(), "-"),
    ] {
        let mark = log_mark(&setup.relay);
        let (client, _) = expect_reset("127.0.0.1", strict, &bytes, false, what).await;
        let line = log_since(&setup.relay, mark, &client).await;
        assert_fields(
            &line,
            &[
                ("sni", Some(sni)),
                ("pool", Some("-")),
                ("end", Some("refused_rule")),
                ("detail", Some("no_route")),
            ],
        );
    }
    // A routed name still works on the strict listener; and it is the only connection made.
    setup
        .route(
            "matching name",
            strict,
            &client_hello("api.example.com"),
            &[],
            "other",
            "api.example.com",
        )
        .await;
    assert_eq!(setup.other.0.get(), 1);
    assert_eq!(setup.default.0.get(), 0);
}

// ---------------------------------------------------------------------------------------------
// 5. The PROXY header sent upstream

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_proxy_v2_is_byte_exact() {
    let (server, _, mut received) = recording_server().await;
    let (_relay, (listen_plain, listen_pp, listen_sni)) = start_relay(|| {
        let (listen_plain, listen_pp, listen_sni) = (listen_addr(), listen_addr(), listen_addr());
        (assemble_config(
            None,
        &[
            listener("plain", listen_plain, "p", ""),
            listener("pp", listen_pp, "p", "proxy_protocol = \"v2\""),
            // Routes by SNI after the PROXY header: the pool "p2" sends the same header kind.
            listener(
                "sni",
                listen_sni,
                "p",
                "proxy_protocol = \"v2\"\n[[listener.route]]\nserver_names = [\"api.example.com\"]\npool = \"p2\"\n",
            ),
        ],
        &[
            pool("p", &[server], "send_proxy = \"v2\""),
            pool("p2", &[server], "send_proxy = \"v2\""),
        ],
    ), (listen_plain, listen_pp, listen_sni))
    });
    let payload = b"the request, after the header".to_vec();

    // No PROXY header in: source = the client's socket, destination = the listener.
    let mut stream = connect_from("127.0.0.2", listen_plain).await;
    let client_port = stream.local_addr().unwrap().port();
    stream.write_all(&payload).await.unwrap();
    finish(stream, "plain").await;
    let got = next_received(&mut received, "plain").await;
    let mut expected = vec![
        0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, // signature
        0x21, // v2, PROXY
        0x11, // TCP over IPv4
        0x00, 0x0C, // 12 bytes of addresses, no TLV
        127, 0, 0, 2, // source: the client
    ];
    expected.extend_from_slice(&octets(listen_plain)); // destination: the listener
    expected.extend_from_slice(&client_port.to_be_bytes());
    expected.extend_from_slice(&listen_plain.port().to_be_bytes());
    expected.extend_from_slice(&payload);
    assert_eq!(got.bytes, expected, "plain client: header + payload");

    // PROXY v2 in with a VPC endpoint and other TLVs: the client's original source and
    // destination, and only the VPC endpoint TLV out.
    let vpce = "vpce-0123456789abcdef0";
    let header_in = proxy_v2(
        "203.0.113.9:41000",
        "198.51.100.20:443",
        &[tlv(0x01, b"h2"), aws_tlv(vpce), tlv(0x04, &[0; 5])],
    );
    let mut stream = connect(listen_pp).await;
    stream
        .write_all(&[&header_in[..], &payload].concat())
        .await
        .unwrap();
    finish(stream, "with vpce").await;
    let got = next_received(&mut received, "with vpce").await;
    let mut expected = V2_SIGNATURE.to_vec();
    expected.extend_from_slice(&[0x21, 0x11]);
    expected.extend_from_slice(&(12u16 + 3 + 1 + 22).to_be_bytes());
    expected.extend_from_slice(&[203, 0, 113, 9, 198, 51, 100, 20]);
    expected.extend_from_slice(&41000u16.to_be_bytes());
    expected.extend_from_slice(&443u16.to_be_bytes());
    expected.extend_from_slice(&[0xEA, 0x00, 23, 0x01]);
    expected.extend_from_slice(vpce.as_bytes());
    expected.extend_from_slice(&payload);
    assert_eq!(got.bytes, expected, "vpce client: header + payload");

    // PROXY v2 IPv6 in: IPv6 out.
    let header_in = proxy_v2("[2001:db8::9]:42000", "[2001:db8::443]:8443", &[]);
    let mut stream = connect(listen_pp).await;
    stream
        .write_all(&[&header_in[..], &payload].concat())
        .await
        .unwrap();
    finish(stream, "IPv6").await;
    let got = next_received(&mut received, "IPv6").await;
    let mut expected = V2_SIGNATURE.to_vec();
    expected.extend_from_slice(&[0x21, 0x21, 0x00, 36]);
    expected.extend_from_slice(
        &"2001:db8::9"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    expected.extend_from_slice(
        &"2001:db8::443"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    expected.extend_from_slice(&42000u16.to_be_bytes());
    expected.extend_from_slice(&8443u16.to_be_bytes());
    expected.extend_from_slice(&payload);
    assert_eq!(got.bytes, expected, "IPv6 client: header + payload");

    // LOCAL in (a health check): the socket's own addresses out.
    let mut stream = connect(listen_pp).await;
    let client_port = stream.local_addr().unwrap().port();
    stream
        .write_all(&[&v2(VERSION_LOCAL, UNSPEC, &[])[..], &payload].concat())
        .await
        .unwrap();
    finish(stream, "LOCAL").await;
    let got = next_received(&mut received, "LOCAL").await;
    let mut expected = V2_SIGNATURE.to_vec();
    expected.extend_from_slice(&[0x21, 0x11, 0x00, 12, 127, 0, 0, 1]);
    expected.extend_from_slice(&octets(listen_pp));
    expected.extend_from_slice(&client_port.to_be_bytes());
    expected.extend_from_slice(&listen_pp.port().to_be_bytes());
    expected.extend_from_slice(&payload);
    assert_eq!(got.bytes, expected, "LOCAL client: header + payload");

    // SNI routing after a PROXY header: the relay's header, then the ClientHello it peeked at.
    let hello = client_hello("api.example.com");
    let header_in = proxy_v2("192.0.2.33:43000", "198.51.100.1:443", &[aws_tlv(vpce)]);
    let mut stream = connect(listen_sni).await;
    stream
        .write_all(&[&header_in[..], &hello].concat())
        .await
        .unwrap();
    finish(stream, "routed").await;
    let got = next_received(&mut received, "routed").await;
    let mut expected = V2_SIGNATURE.to_vec();
    expected.extend_from_slice(&[0x21, 0x11, 0x00, 38, 192, 0, 2, 33, 198, 51, 100, 1]);
    expected.extend_from_slice(&43000u16.to_be_bytes());
    expected.extend_from_slice(&443u16.to_be_bytes());
    expected.extend_from_slice(&[0xEA, 0x00, 23, 0x01]);
    expected.extend_from_slice(vpce.as_bytes());
    expected.extend_from_slice(&hello);
    assert!(
        got.bytes == expected,
        "routed client: header + ClientHello differ"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_proxy_v1_is_byte_exact() {
    let (server, _, mut received) = recording_server().await;
    let (_relay, (listen_plain, listen_pp)) = start_relay(|| {
        let (listen_plain, listen_pp) = (listen_addr(), listen_addr());
        (
            assemble_config(
                None,
                &[
                    listener("plain", listen_plain, "p", ""),
                    listener("pp", listen_pp, "p", "proxy_protocol = \"v2\""),
                ],
                &[pool("p", &[server], "send_proxy = \"v1\"")],
            ),
            (listen_plain, listen_pp),
        )
    });
    let payload = b"the request, after the header".to_vec();

    let mut stream = connect_from("127.0.0.2", listen_plain).await;
    let client_port = stream.local_addr().unwrap().port();
    stream.write_all(&payload).await.unwrap();
    finish(stream, "plain").await;
    let got = next_received(&mut received, "plain").await;
    let expected = [
        format!(
            "PROXY TCP4 127.0.0.2 {} {client_port} {}\r\n",
            listen_plain.ip(),
            listen_plain.port()
        )
        .as_bytes(),
        &payload,
    ]
    .concat();
    assert_eq!(
        String::from_utf8_lossy(&got.bytes),
        String::from_utf8_lossy(&expected),
        "plain client"
    );

    for (what, header_in, line) in [
        (
            "PROXY v2 IPv4 in",
            proxy_v2(
                "203.0.113.9:41000",
                "198.51.100.20:443",
                &[aws_tlv("vpce-0123456789abcdef0")],
            ),
            "PROXY TCP4 203.0.113.9 198.51.100.20 41000 443\r\n",
        ),
        (
            "PROXY v2 IPv6 in",
            proxy_v2("[2001:db8::9]:42000", "[2001:db8:0:0:1::443]:8443", &[]),
            "PROXY TCP6 2001:db8::9 2001:db8::1:0:0:443 42000 8443\r\n",
        ),
    ] {
        let mut stream = connect(listen_pp).await;
        stream
            .write_all(&[&header_in[..], &payload].concat())
            .await
            .unwrap();
        finish(stream, what).await;
        let got = next_received(&mut received, what).await;
        let expected = [line.as_bytes(), &payload].concat();
        assert_eq!(
            String::from_utf8_lossy(&got.bytes),
            String::from_utf8_lossy(&expected),
            "{what}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 6. The pool's source address

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_source_address_binds_upstream_connections() {
    let (server, _, mut received) = recording_server().await;
    let (relay, (listen_bound, listen_default)) = start_relay(|| {
        let (listen_bound, listen_default) = (listen_addr(), listen_addr());
        (
            assemble_config(
                None,
                &[
                    listener("bound", listen_bound, "bound", ""),
                    listener("default", listen_default, "default", ""),
                ],
                &[
                    pool("bound", &[server], "source = \"127.0.0.2\""),
                    pool("default", &[server], ""),
                ],
            ),
            (listen_bound, listen_default),
        )
    });
    for (what, listen, expected_ip) in [
        ("source = 127.0.0.2", listen_bound, "127.0.0.2"),
        ("no source", listen_default, "127.0.0.1"),
        ("source = 127.0.0.2, again", listen_bound, "127.0.0.2"),
    ] {
        let mark = log_mark(&relay);
        let mut stream = connect(listen).await;
        let client = socket_client(&stream);
        stream.write_all(what.as_bytes()).await.unwrap();
        finish(stream, what).await;
        let got = next_received(&mut received, what).await;
        assert_eq!(
            got.peer.ip().to_string(),
            expected_ip,
            "{what}: upstream peer"
        );
        assert_eq!(got.bytes, what.as_bytes(), "{what}: payload");
        let line = log_since(&relay, mark, &client).await;
        assert_fields(&line, &[("end", Some("client_closed"))]);
    }
}
