//! The PROXY protocol on a listener, against the built binary: v1 and v2 byte vectors
//! (well-formed and malformed), and a second header after the first being payload.
//!
//! Every PROXY header here is built by hand from the spec's byte layout (`support::proxy_header`),
//! never with the relay's own encoder, so a bug shared by the relay's parser and encoder cannot
//! hide.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::proxy_header::*;
use crate::support::*;

// ---------------------------------------------------------------------------------------------
// 1. PROXY protocol vectors.

/// Well-formed v2 headers: the relay reads exactly the header, logs the client it names, and
/// relays the payload after it intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_v2_vectors_end_to_end() {
    let (server, accepted) = echo_server().await;
    let (relay, [listen]) =
        start_relay(|[listen]| config(listen, &[server], "proxy_protocol = \"v2\"", ""));

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
    let (relay, [listen]) =
        start_relay(|[listen]| config(listen, &[server], "proxy_protocol = \"v1\"", ""));

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
    let (relay, [listen_v2, listen_v1, listen_any]) =
        start_relay(|[listen_v2, listen_v1, listen_any]| {
            assemble_config(
                None,
                &[
                    listener("v2", listen_v2, "p", "proxy_protocol = \"v2\""),
                    listener("v1", listen_v1, "p", "proxy_protocol = \"v1\""),
                    listener("any", listen_any, "p", "proxy_protocol = \"any\""),
                ],
                &[pool("p", &[server], "")],
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
    let (relay, [listen_v2, listen_any]) = start_relay(|[listen_v2, listen_any]| {
        assemble_config(
            None,
            &[
                listener("v2", listen_v2, "p", "proxy_protocol = \"v2\""),
                listener("any", listen_any, "p", "proxy_protocol = \"any\""),
            ],
            &[pool("p", &[server], "")],
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
