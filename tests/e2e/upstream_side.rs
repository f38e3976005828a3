//! The relay's side of an upstream connection: the PROXY header it sends (v1 and v2, byte for
//! byte against the spec's layout) and the pool's source address.

use tokio::io::AsyncWriteExt;

use crate::support::proxy_header::*;
use crate::support::*;

// ---------------------------------------------------------------------------------------------
// 5. The PROXY header sent upstream

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_proxy_v2_is_byte_exact() {
    let (server, _, mut received) = recording_server().await;
    let (_relay, [listen_plain, listen_pp, listen_sni]) = start_relay(
        |[listen_plain, listen_pp, listen_sni]| {
            assemble_config(
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
    )
        },
    );
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
    let (_relay, [listen_plain, listen_pp]) = start_relay(|[listen_plain, listen_pp]| {
        assemble_config(
            None,
            &[
                listener("plain", listen_plain, "p", ""),
                listener("pp", listen_pp, "p", "proxy_protocol = \"v2\""),
            ],
            &[pool("p", &[server], "send_proxy = \"v1\"")],
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
    let (relay, [listen_bound, listen_default]) = start_relay(|[listen_bound, listen_default]| {
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
