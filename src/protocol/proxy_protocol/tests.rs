//! The PROXY protocol parser and encoder against hand-built vectors.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::encode::push_ipv6_hex_groups;
use super::v1::{parse_v1_address, v1_address_may_continue, V1Family};
use super::*;

const SIGNATURE: [u8; 12] = V2_SIGNATURE;
const ALL_ACCEPTS: [Accept; 3] = [Accept::V1, Accept::V2, Accept::Any];

fn v2(version_command: u8, family: u8, block: &[u8]) -> Vec<u8> {
    let mut out = SIGNATURE.to_vec();
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

fn aws_tlv(vpce_id: &[u8]) -> Vec<u8> {
    tlv(0xEA, &[&[0x01], vpce_id].concat())
}

/// 192.0.2.1:56324 -> 198.51.100.1:443
const V4_BLOCK: [u8; 12] = [192, 0, 2, 1, 198, 51, 100, 1, 0xDC, 0x04, 0x01, 0xBB];
const VPCE: &[u8] = b"vpce-0123456789abcdef0";

fn v4_pair() -> (SocketAddr, SocketAddr) {
    (
        "192.0.2.1:56324".parse().unwrap(),
        "198.51.100.1:443".parse().unwrap(),
    )
}

fn v6_block() -> Vec<u8> {
    let source: Ipv6Addr = "2001:db8::1".parse().unwrap();
    let destination: Ipv6Addr = "2001:db8:ffff::443".parse().unwrap();
    [
        &source.octets()[..],
        &destination.octets(),
        &50000u16.to_be_bytes(),
        &443u16.to_be_bytes(),
    ]
    .concat()
}

fn v6_pair() -> (SocketAddr, SocketAddr) {
    (
        "[2001:db8::1]:50000".parse().unwrap(),
        "[2001:db8:ffff::443]:443".parse().unwrap(),
    )
}

fn complete(buf: &[u8], accept: Accept) -> (Header, usize) {
    match parse(buf, accept) {
        Ok(Parsed::Complete { header, len }) => (header, len),
        other => panic!("expected a complete header from {buf:02x?}, got {other:?}"),
    }
}

fn error(buf: &[u8], accept: Accept) -> Error {
    match parse(buf, accept) {
        Err(error) => error,
        other => panic!("expected an error from {buf:02x?}, got {other:?}"),
    }
}

fn accepts_for(buf: &[u8]) -> [Accept; 2] {
    if buf.starts_with(&SIGNATURE) {
        [Accept::V2, Accept::Any]
    } else {
        [Accept::V1, Accept::Any]
    }
}

/// Every valid header in these tests, by name; also the seed corpus for the fuzz target.
fn valid_vectors() -> Vec<(&'static str, Vec<u8>)> {
    let noop = tlv(0x04, &[0, 0, 0]);
    let alpn = tlv(0x01, b"h2");
    let unique_id = tlv(0x05, &[0x42; 32]);
    let aws = aws_tlv(VPCE);
    let azure = tlv(0xEE, &[0x01, 0x78, 0x56, 0x34, 0x12]);
    vec![
        ("v2_tcp4", v2(0x21, 0x11, &V4_BLOCK)),
        ("v2_tcp6", v2(0x21, 0x21, &v6_block())),
        ("v2_local_empty", v2(0x20, 0x00, &[])),
        ("v2_local_with_addresses", v2(0x20, 0x11, &V4_BLOCK)),
        ("v2_proxy_unspec", v2(0x21, 0x00, &[])),
        ("v2_udp4", v2(0x21, 0x12, &V4_BLOCK)),
        ("v2_unix_stream", v2(0x21, 0x31, &[0; 216])),
        ("v2_aws_only", v2(0x21, 0x11, &[&V4_BLOCK[..], &aws].concat())),
        (
            "v2_aws_first",
            v2(0x21, 0x11, &[&V4_BLOCK[..], &aws, &noop, &alpn].concat()),
        ),
        (
            "v2_aws_middle",
            v2(0x21, 0x21, &[&v6_block()[..], &alpn, &aws, &unique_id].concat()),
        ),
        (
            "v2_aws_last",
            v2(0x21, 0x11, &[&V4_BLOCK[..], &noop, &unique_id, &aws].concat()),
        ),
        (
            "v2_azure",
            v2(0x21, 0x21, &[&v6_block()[..], &noop, &azure].concat()),
        ),
        (
            "v2_aws_and_azure",
            v2(0x21, 0x11, &[&V4_BLOCK[..], &azure, &aws].concat()),
        ),
        (
            "v1_tcp4",
            b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\n".to_vec(),
        ),
        (
            "v1_tcp6",
            b"PROXY TCP6 2001:db8::1 2001:db8:ffff::443 50000 443\r\n".to_vec(),
        ),
        ("v1_unknown_short", b"PROXY UNKNOWN\r\n".to_vec()),
        (
            "v1_unknown_long",
            b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n".to_vec(),
        ),
        (
            "v1_tcp4_extremes",
            b"PROXY TCP4 255.255.255.255 0.0.0.0 65535 0\r\n".to_vec(),
        ),
    ]
}

#[test]
fn v2_tcp4_as_an_nlb_sends_it() {
    let buf = [
        0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, // signature
        0x21, 0x11, 0x00, 0x0C, // v2 PROXY, TCP4, 12 bytes
        192, 0, 2, 1, 198, 51, 100, 1, 0xDC, 0x04, 0x01, 0xBB,
    ];
    for accept in [Accept::V2, Accept::Any] {
        let (header, len) = complete(&buf, accept);
        assert_eq!(len, 28);
        assert_eq!(header.version, Version::V2);
        assert_eq!(header.command, Command::Proxy);
        assert_eq!(header.addresses, Some(v4_pair()));
        assert_eq!(header.vpce_id, None);
        assert_eq!(header.azure_link_id, None);
    }
}

#[test]
fn v2_tcp6() {
    let buf = v2(0x21, 0x21, &v6_block());
    let (header, len) = complete(&buf, Accept::V2);
    assert_eq!(len, 16 + 36);
    assert_eq!(header.addresses, Some(v6_pair()));
}

#[test]
fn v2_local_health_check_without_address_block() {
    let buf = [
        0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x20, 0x00, 0x00,
        0x00,
    ];
    let (header, len) = complete(&buf, Accept::V2);
    assert_eq!(len, 16);
    assert_eq!(header.command, Command::Local);
    assert_eq!(header.addresses, None);
}

#[test]
fn v2_local_health_check_with_address_block_ignores_it() {
    let buf = v2(0x20, 0x11, &V4_BLOCK);
    let (header, len) = complete(&buf, Accept::Any);
    assert_eq!(len, 28);
    assert_eq!(header.command, Command::Local);
    assert_eq!(header.addresses, None);
    // The block is skipped by length alone: even one too short for the family is fine.
    let (header, len) = complete(&v2(0x20, 0x21, &[0xAA; 5]), Accept::V2);
    assert_eq!((header.addresses, len), (None, 21));
}

#[test]
fn v2_unspec_is_accepted_without_addresses() {
    let (header, len) = complete(&v2(0x21, 0x00, &[]), Accept::V2);
    assert_eq!(
        (header.command, header.addresses, len),
        (Command::Proxy, None, 16)
    );
    // Address information of an unspecified family is skipped, not read as TLVs.
    let (header, len) = complete(&v2(0x21, 0x00, &[0xEA, 0xFF, 0xFF]), Accept::V2);
    assert_eq!((header.addresses, header.vpce_id, len), (None, None, 19));
}

#[test]
fn v2_udp_and_unix_are_accepted_without_addresses() {
    for (family, block) in [
        (0x12, V4_BLOCK.to_vec()),
        (0x22, v6_block()),
        (0x31, vec![0x61; 216]),
        (0x32, vec![0x61; 216]),
    ] {
        let with_vpce = [&block[..], &aws_tlv(VPCE)].concat();
        let (header, len) = complete(&v2(0x21, family, &with_vpce), Accept::V2);
        assert_eq!(header.addresses, None, "family {family:#x}");
        assert_eq!(header.vpce_id.as_deref(), Some("vpce-0123456789abcdef0"));
        assert_eq!(len, 16 + with_vpce.len());
    }
}

#[test]
fn v2_aws_vpce_tlv_exact_bytes() {
    let mut buf = v2(0x21, 0x11, &V4_BLOCK);
    // 0xEA, length 23, subtype 0x01, "vpce-0123456789abcdef0"
    let tlv_bytes = [&[0xEA, 0x00, 0x17, 0x01][..], b"vpce-0123456789abcdef0"].concat();
    buf[15] += u8::try_from(tlv_bytes.len()).unwrap();
    buf.extend_from_slice(&tlv_bytes);
    let (header, len) = complete(&buf, Accept::V2);
    assert_eq!(len, 28 + 26);
    assert_eq!(header.vpce_id.as_deref(), Some("vpce-0123456789abcdef0"));
    assert_eq!(header.addresses, Some(v4_pair()));
}

#[test]
fn v2_aws_tlv_first_middle_last() {
    for name in [
        "v2_aws_first",
        "v2_aws_middle",
        "v2_aws_last",
        "v2_aws_only",
    ] {
        let (_, buf) = valid_vectors()
            .into_iter()
            .find(|(n, _)| *n == name)
            .unwrap();
        let (header, len) = complete(&buf, Accept::V2);
        assert_eq!(len, buf.len(), "{name}");
        assert_eq!(
            header.vpce_id.as_deref(),
            Some("vpce-0123456789abcdef0"),
            "{name}"
        );
        assert!(header.addresses.is_some(), "{name}");
    }
}

#[test]
fn v2_azure_link_id_is_little_endian() {
    let block = [&V4_BLOCK[..], &tlv(0xEE, &[0x01, 0x78, 0x56, 0x34, 0x12])].concat();
    let (header, _) = complete(&v2(0x21, 0x11, &block), Accept::V2);
    assert_eq!(header.azure_link_id, Some(0x1234_5678));
    assert_eq!(header.vpce_id, None);
}

#[test]
fn v2_other_subtypes_and_unknown_tlvs_are_skipped() {
    let block = [
        &V4_BLOCK[..],
        &tlv(0xEA, &[0x02, b'x']), // another AWS subtype
        &tlv(0xEA, &[]),           // no subtype at all
        &tlv(0xEE, &[0x02, 1, 2]), // another Azure subtype
        &tlv(0xEE, &[]),
        &tlv(0x03, &[0, 0, 0, 0]), // CRC32C, not verified
        &tlv(0x20, &[0x01, 0, 0, 0, 0]),
        &tlv(0xF8, &[]),
    ]
    .concat();
    let (header, len) = complete(&v2(0x21, 0x11, &block), Accept::V2);
    assert_eq!(len, 16 + block.len());
    assert_eq!((header.vpce_id, header.azure_link_id), (None, None));
}

#[test]
fn v2_bad_tlv_values() {
    let cases: [(Vec<u8>, Error); 8] = [
        (aws_tlv(b""), Error::BadVpceId),
        (aws_tlv(b"vpce 123"), Error::BadVpceId),
        (aws_tlv(b"vpce-\x00"), Error::BadVpceId),
        (aws_tlv("vpce-é".as_bytes()), Error::BadVpceId),
        (aws_tlv(b"vpc-0123"), Error::BadVpceId),
        (
            aws_tlv(format!("vpce-{}", "a".repeat(60)).as_bytes()),
            Error::BadVpceId,
        ),
        (tlv(0xEE, &[0x01, 1, 2, 3]), Error::BadAzureLinkId),
        (tlv(0xEE, &[0x01, 1, 2, 3, 4, 5]), Error::BadAzureLinkId),
    ];
    for (tlv_bytes, expected) in cases {
        let buf = v2(0x21, 0x11, &[&V4_BLOCK[..], &tlv_bytes].concat());
        assert_eq!(error(&buf, Accept::V2), expected, "{tlv_bytes:02x?}");
    }
    let longest = aws_tlv(format!("vpce-{}", "a".repeat(59)).as_bytes());
    let (header, _) = complete(
        &v2(0x21, 0x11, &[&V4_BLOCK[..], &longest].concat()),
        Accept::V2,
    );
    assert_eq!(header.vpce_id.map(|id| id.len()), Some(64));
}

#[test]
fn v2_duplicate_identity_tlvs_are_rejected() {
    let twice = [&V4_BLOCK[..], &aws_tlv(b"vpce-a"), &aws_tlv(b"vpce-b")].concat();
    assert_eq!(
        error(&v2(0x21, 0x11, &twice), Accept::V2),
        Error::DuplicateTlv(0xEA)
    );
    let azure = tlv(0xEE, &[0x01, 1, 0, 0, 0]);
    let twice = [&V4_BLOCK[..], &azure, &azure].concat();
    assert_eq!(
        error(&v2(0x21, 0x11, &twice), Accept::V2),
        Error::DuplicateTlv(0xEE)
    );
}

#[test]
fn header_followed_by_payload_in_the_same_buffer() {
    for (name, header_bytes) in valid_vectors() {
        // Payload that would be an error if it were read as part of the header.
        let mut buf = header_bytes.clone();
        buf.extend_from_slice(b"\x16\x03\x01\xff\xff\r\n\n\rGET / HTTP/1.1\r\n\r\n");
        for accept in accepts_for(&buf) {
            let (_, len) = complete(&buf, accept);
            assert_eq!(len, header_bytes.len(), "{name}");
            assert_eq!(&buf[len..len + 3], b"\x16\x03\x01", "{name}");
        }
    }
}

#[test]
fn two_headers_back_to_back_only_the_first_is_the_header() {
    let first = v2(0x21, 0x11, &[&V4_BLOCK[..], &aws_tlv(b"vpce-f1")].concat());
    let second = v2(
        0x21,
        0x21,
        &[&v6_block()[..], &aws_tlv(b"vpce-5ec0d")].concat(),
    );
    let buf = [&first[..], &second].concat();
    let (header, len) = complete(&buf, Accept::V2);
    assert_eq!(len, first.len());
    assert_eq!(header.vpce_id.as_deref(), Some("vpce-f1"));
    assert_eq!(header.addresses, Some(v4_pair()));

    let first = b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\n";
    let buf = [&first[..], b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n"].concat();
    let (header, len) = complete(&buf, Accept::V1);
    assert_eq!(len, first.len());
    assert_eq!(header.addresses, Some(v4_pair()));

    let buf = [&first[..], &second].concat();
    assert_eq!(complete(&buf, Accept::Any).1, first.len());
}

#[test]
fn every_prefix_of_a_valid_header_is_incomplete() {
    for (name, buf) in valid_vectors() {
        for accept in accepts_for(&buf) {
            for end in 0..buf.len() {
                assert_eq!(
                    parse(&buf[..end], accept),
                    Ok(Parsed::Incomplete),
                    "{name}, {accept:?}, first {end} bytes"
                );
            }
            assert_eq!(complete(&buf, accept).1, buf.len(), "{name}");
        }
    }
}

#[test]
fn bytes_needed_never_reaches_past_the_header() {
    for (name, buf) in valid_vectors() {
        for end in 0..=buf.len() {
            let needed = bytes_needed(&buf[..end]);
            assert!(needed <= buf.len(), "{name}: {needed} after {end} bytes");
            assert!(
                needed > end || end == buf.len(),
                "{name}: no progress at {end}"
            );
        }
        assert_eq!(bytes_needed(&buf), buf.len(), "{name}");
    }
    let header = v2(0x21, 0x11, &V4_BLOCK);
    assert_eq!(bytes_needed(&[]), 15);
    assert_eq!(bytes_needed(&header[..3]), 16);
    assert_eq!(bytes_needed(&header[..16]), 28);
    // Reading exactly up to bytes_needed, starting from nothing, lands on the header's end.
    let stream = [&header[..], b"payload"].concat();
    let mut have = 0;
    while let Ok(Parsed::Incomplete) = parse(&stream[..have], Accept::V2) {
        have = bytes_needed(&stream[..have]);
    }
    assert_eq!(have, header.len());
}

#[test]
fn v1_tcp4() {
    let buf = b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\nGET / HTTP/1.1\r\n";
    for accept in [Accept::V1, Accept::Any] {
        let (header, len) = complete(buf, accept);
        assert_eq!(len, 45);
        assert_eq!(header.version, Version::V1);
        assert_eq!(header.command, Command::Proxy);
        assert_eq!(header.addresses, Some(v4_pair()));
    }
}

#[test]
fn v1_tcp6() {
    let buf = b"PROXY TCP6 2001:db8::1 2001:db8:ffff::443 50000 443\r\n";
    let (header, len) = complete(buf, Accept::V1);
    assert_eq!(len, buf.len());
    assert_eq!(header.addresses, Some(v6_pair()));
    let mapped = b"PROXY TCP6 ::ffff:192.0.2.1 ::ffff:c633:6401 1 2\r\n";
    let (header, _) = complete(mapped, Accept::V1);
    let (source, destination) = header.addresses.unwrap();
    assert_eq!(
        source.ip(),
        IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped())
    );
    assert_eq!(
        destination.ip(),
        IpAddr::V6(Ipv4Addr::new(198, 51, 100, 1).to_ipv6_mapped())
    );
}

#[test]
fn v1_unknown_has_no_addresses_and_ignores_the_rest_of_the_line() {
    for line in [
        &b"PROXY UNKNOWN\r\n"[..],
        b"PROXY UNKNOWN 192.0.2.1 198.51.100.1 56324 443\r\n",
        b"PROXY UNKNOWN whatever the sender felt like\r\n",
    ] {
        let (header, len) = complete(line, Accept::V1);
        assert_eq!((header.addresses, len), (None, line.len()));
    }
}

#[test]
fn v1_line_length_limit() {
    let line_of = |total: usize| {
        let mut line = b"PROXY UNKNOWN ".to_vec();
        line.resize(total - 2, b'x');
        line.extend_from_slice(b"\r\n");
        line
    };
    assert_eq!(complete(&line_of(107), Accept::V1).1, 107);
    assert_eq!(error(&line_of(108), Accept::V1), Error::V1NoCrlf);
    // CR as the 107th byte: the LF could only be the 108th.
    assert_eq!(error(&line_of(108)[..107], Accept::V1), Error::V1NoCrlf);
    let no_crlf = vec![b'x'; 200];
    let no_crlf = [&b"PROXY UNKNOWN "[..], &no_crlf].concat();
    assert_eq!(parse(&no_crlf[..106], Accept::V1), Ok(Parsed::Incomplete));
    assert_eq!(error(&no_crlf[..107], Accept::V1), Error::V1NoCrlf);
    assert_eq!(error(&no_crlf, Accept::Any), Error::V1NoCrlf);
    // The longest TCP6 line the spec describes fits.
    let longest = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
    assert_eq!(complete(longest, Accept::V1).1, 104);
}

#[test]
fn v1_bad_fields() {
    let cases: &[(&[u8], &str)] = &[
        (
            b"PROXY TCP4  192.0.2.1 198.51.100.1 1 2\r\n",
            "source address",
        ),
        (b"PROXY  TCP4 192.0.2.1 198.51.100.1 1 2\r\n", "protocol"),
        (
            b"PROXY TCP4 192.0.2.1 198.51.100.1 1  2\r\n",
            "destination port",
        ),
        (
            b"PROXY TCP4 192.0.2.1 198.51.100.1 1 2 \r\n",
            "trailing data",
        ),
        (
            b"PROXY TCP4 192.0.2.1 198.51.100.1 1 2 3\r\n",
            "trailing data",
        ),
        (
            b"PROXY TCP4 192.0.2.1 198.51.100.1 1\r\n",
            "destination port",
        ),
        (b"PROXY TCP4 192.0.2.1\r\n", "destination address"),
        (b"PROXY tcp4 192.0.2.1 198.51.100.1 1 2\r\n", "protocol"),
        (b"PROXY TCP5 192.0.2.1 198.51.100.1 1 2\r\n", "protocol"),
        (b"PROXY UDP4 192.0.2.1 198.51.100.1 1 2\r\n", "protocol"),
        (b"PROXY UNKNOWNX\r\n", "protocol"),
        (b"PROXY \r\n", "protocol"),
        (
            b"PROXY TCP4 192.0.2.01 198.51.100.1 1 2\r\n",
            "source address",
        ),
        (b"PROXY TCP4 192.0.2 198.51.100.1 1 2\r\n", "source address"),
        (
            b"PROXY TCP4 192.0.2.256 198.51.100.1 1 2\r\n",
            "source address",
        ),
        (
            b"PROXY TCP4 2001:db8::1 198.51.100.1 1 2\r\n",
            "source address",
        ),
        (
            b"PROXY TCP6 2001:db8::1 198.51.100.1 1 2\r\n",
            "destination address",
        ),
        (
            b"PROXY TCP6 [2001:db8::1] 2001:db8::2 1 2\r\n",
            "source address",
        ),
        (b"PROXY TCP4 192.0.2.1 198.51.100.1 +1 2\r\n", "source port"),
        (b"PROXY TCP4 192.0.2.1 198.51.100.1 -1 2\r\n", "source port"),
        (b"PROXY TCP4 192.0.2.1 198.51.100.1 01 2\r\n", "source port"),
        (
            b"PROXY TCP4 192.0.2.1 198.51.100.1 65536 2\r\n",
            "source port",
        ),
        (
            b"PROXY TCP4 192.0.2.1 198.51.100.1 1 99999\r\n",
            "destination port",
        ),
        (
            b"PROXY TCP4 192.0.2.1 198.51.100.1 1 0x10\r\n",
            "destination port",
        ),
        (
            b"PROXY TCP4 192.0.2.1 198.51.100.1 1 2\n",
            "line ending (lone CR or LF)",
        ),
        (
            b"PROXY TCP4 192.0.2.1 198.51.100.1 1 2\rX\n",
            "line ending (lone CR or LF)",
        ),
        (b"PROXY UNKNOWN a\nb\r\n", "line ending (lone CR or LF)"),
        (
            b"PROXY TCP4 192.0.2.1 198.51.100.1 1 2\r\r\n",
            "line ending (lone CR or LF)",
        ),
    ];
    for (line, field) in cases {
        assert_eq!(
            error(line, Accept::V1),
            Error::V1BadField(field),
            "{}",
            String::from_utf8_lossy(line)
        );
    }
}

#[test]
fn v1_errors_are_reported_before_the_crlf_arrives() {
    let cases: &[&[u8]] = &[
        b"PROXY X",
        b"PROXY TCP44",
        b"PROXY TCP4  ",
        b"PROXY TCP4 1.2.3.256",
        b"PROXY TCP4 01",
        b"PROXY TCP4 1.2.3.4.",
        b"PROXY TCP4 1..",
        b"PROXY TCP4 ::",
        b"PROXY TCP6 1.2.3.4 ",
        b"PROXY TCP6 1:2:3:4:5:6:7:8:",
        b"PROXY TCP6 1:::",
        b"PROXY TCP6 12345",
        b"PROXY TCP6 ::1::",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 00",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 +",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 65536",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443 ",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443000",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 80\r",
        b"PROXY TCP4 1.2.3.4\n",
    ];
    for prefix in cases {
        assert!(
            parse(prefix, Accept::V1).is_err(),
            "{:?}",
            String::from_utf8_lossy(prefix)
        );
    }
    let still_possible: &[&[u8]] = &[
        b"PROXY T",
        b"PROXY UNKNOWN",
        b"PROXY UNKNOWN \x00\xff anything",
        b"PROXY TCP4 1.2.3.",
        b"PROXY TCP4 1.2.3.4 ",
        b"PROXY TCP6 ::ffff:1.2.",
        b"PROXY TCP6 1:2:3:4:5:6:7:",
        b"PROXY TCP6 fe80::",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 6553",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 0 ",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 0 0\r",
    ];
    for prefix in still_possible {
        assert_eq!(
            parse(prefix, Accept::V1),
            Ok(Parsed::Incomplete),
            "{:?}",
            String::from_utf8_lossy(prefix)
        );
    }
}

#[test]
fn every_prefix_of_a_valid_address_may_continue() {
    let v4 = [
        "0.0.0.0",
        "1.2.3.4",
        "10.0.0.1",
        "192.168.100.200",
        "255.255.255.255",
    ];
    let v6 = [
        "::",
        "::1",
        "1::",
        "fe80::1",
        "2001:DB8::a:B:c",
        "0001:0002:0003:0004:0005:0006:0007:0008",
        "1:2:3:4:5:6:7::",
        "1:2:3:4:5:6::8",
        "::2:3:4:5:6:7:8",
        "::ffff:192.0.2.1",
        "64:ff9b::198.51.100.1",
        "1:2:3:4:5:6:255.255.255.255",
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    ];
    for (family, addresses) in [(V1Family::V4, &v4[..]), (V1Family::V6, &v6[..])] {
        for address in addresses {
            assert!(
                parse_v1_address(address.as_bytes(), family).is_some(),
                "{address}"
            );
            for end in 0..=address.len() {
                let prefix = &address.as_bytes()[..end];
                assert!(
                    v1_address_may_continue(prefix, family),
                    "{address} cut at {end}"
                );
            }
        }
    }
    for dead_end in ["1.2.3.4.", "256", "1.2.3.4 ", "01"] {
        assert!(
            !v1_address_may_continue(dead_end.as_bytes(), V1Family::V4),
            "{dead_end}"
        );
    }
    for dead_end in [":::", "1:2:3:4:5:6:7:8:", "12345", "::1::", "1.2.3.4.", "g"] {
        assert!(
            !v1_address_may_continue(dead_end.as_bytes(), V1Family::V6),
            "{dead_end}"
        );
    }
}

#[test]
fn signature_mismatches() {
    assert_eq!(
        error(b"GET / HTTP/1.1\r\n", Accept::V1),
        Error::BadSignature
    );
    assert_eq!(
        error(b"GET / HTTP/1.1\r\n", Accept::V2),
        Error::BadSignature
    );
    // Accept::Any knows at the first byte, and a partial signature waits for more.
    assert_eq!(error(b"G", Accept::Any), Error::NotProxy);
    assert_eq!(error(b"\x16\x03\x01", Accept::Any), Error::NotProxy);
    assert_eq!(parse(b"PRO", Accept::Any), Ok(Parsed::Incomplete));
    assert_eq!(parse(b"", Accept::Any), Ok(Parsed::Incomplete));
    assert_eq!(error(b"PRX", Accept::Any), Error::NotProxy);
    assert_eq!(error(b"PROXY\r\n", Accept::Any), Error::NotProxy);
    assert_eq!(parse(&SIGNATURE[..5], Accept::Any), Ok(Parsed::Incomplete));
    let mut corrupt = v2(0x21, 0x11, &V4_BLOCK);
    corrupt[6] = 0x0D;
    assert_eq!(error(&corrupt, Accept::V2), Error::BadSignature);
    assert_eq!(error(&corrupt, Accept::Any), Error::NotProxy);
    assert_eq!(error(&corrupt[..7], Accept::Any), Error::NotProxy);
    // The other version's signature: most likely a misconfigured listener or balancer.
    assert_eq!(
        error(&v2(0x21, 0x11, &V4_BLOCK), Accept::V1),
        Error::VersionNotAccepted
    );
    assert_eq!(error(b"PROXY TCP4 ", Accept::V2), Error::VersionNotAccepted);
    assert_eq!(error(b"P", Accept::V2), Error::VersionNotAccepted);
}

#[test]
fn v2_malformed_fixed_part() {
    assert_eq!(
        error(&v2(0x11, 0x11, &V4_BLOCK), Accept::V2),
        Error::BadVersion(0x11)
    );
    assert_eq!(
        error(&v2(0x31, 0x11, &V4_BLOCK), Accept::Any),
        Error::BadVersion(0x31)
    );
    assert_eq!(
        error(&v2(0x22, 0x11, &V4_BLOCK), Accept::V2),
        Error::BadCommand(0x22)
    );
    assert_eq!(
        error(&v2(0x2F, 0x11, &V4_BLOCK), Accept::V2),
        Error::BadCommand(0x2F)
    );
    for family in [0x01, 0x02, 0x10, 0x13, 0x20, 0x30, 0x33, 0x41, 0xFF] {
        assert_eq!(
            error(&v2(0x21, family, &V4_BLOCK), Accept::V2),
            Error::BadFamily(family)
        );
    }
    // Each field is judged as soon as its byte is in: the rest need not have arrived.
    assert_eq!(
        error(&v2(0x11, 0x11, &V4_BLOCK)[..13], Accept::V2),
        Error::BadVersion(0x11)
    );
    assert_eq!(
        error(&v2(0x21, 0x13, &V4_BLOCK)[..14], Accept::V2),
        Error::BadFamily(0x13)
    );
}

#[test]
fn v2_declared_length_limits() {
    let mut too_long = v2(0x21, 0x11, &V4_BLOCK);
    too_long[14..16].copy_from_slice(&4097u16.to_be_bytes());
    assert_eq!(
        error(&too_long[..16], Accept::V2),
        Error::TooLong(16 + 4097)
    );
    too_long[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
    assert_eq!(error(&too_long, Accept::V2), Error::TooLong(16 + 65535));
    // 4096 is the largest block accepted.
    let largest = [&V4_BLOCK[..], &tlv(0x04, &[0; 4096 - 12 - 3])].concat();
    let largest = v2(0x21, 0x11, &largest);
    assert_eq!(complete(&largest, Accept::V2).1, MAX_V2_LEN);
}

#[test]
fn v2_length_shorter_than_the_address_block() {
    assert_eq!(
        error(&v2(0x21, 0x11, &V4_BLOCK[..8]), Accept::V2),
        Error::LengthOverrun {
            family: 0x11,
            declared: 8
        }
    );
    assert_eq!(
        error(&v2(0x21, 0x21, &V4_BLOCK), Accept::V2),
        Error::LengthOverrun {
            family: 0x21,
            declared: 12
        }
    );
    assert_eq!(
        error(&v2(0x21, 0x31, &[0; 108]), Accept::V2),
        Error::LengthOverrun {
            family: 0x31,
            declared: 108
        }
    );
    // Known from the 16 fixed bytes alone.
    assert_eq!(
        error(&v2(0x21, 0x11, &[])[..16], Accept::V2),
        Error::LengthOverrun {
            family: 0x11,
            declared: 0
        }
    );
}

#[test]
fn v2_tlv_running_past_the_declared_end() {
    let mut overrun = tlv(0x04, &[0; 4]);
    overrun[2] = 5;
    let buf = v2(0x21, 0x11, &[&V4_BLOCK[..], &overrun].concat());
    assert_eq!(error(&buf, Accept::V2), Error::TlvOverrun);
    // Still an overrun when the payload that follows would supply the missing byte.
    let with_payload = [&buf[..], b"x"].concat();
    assert_eq!(error(&with_payload, Accept::V2), Error::TlvOverrun);
    // Known as soon as the TLV's length is in, before the rest of the header arrives.
    assert_eq!(error(&buf[..28 + 3], Accept::V2), Error::TlvOverrun);
    // One or two bytes left over cannot hold a TLV header.
    for leftover in [&[0x04][..], &[0x04, 0x00]] {
        let buf = v2(0x21, 0x11, &[&V4_BLOCK[..], leftover].concat());
        assert_eq!(error(&buf, Accept::V2), Error::TlvOverrun);
    }
    let ok_then_overrun = [&V4_BLOCK[..], &aws_tlv(VPCE), &[0xEA, 0x00, 0x20, 0x01]].concat();
    assert_eq!(
        error(&v2(0x21, 0x11, &ok_then_overrun), Accept::V2),
        Error::TlvOverrun
    );
}

#[test]
fn round_trip_v1() {
    let pairs = [
        v4_pair(),
        v6_pair(),
        ("[::]:0".parse().unwrap(), "[::1]:65535".parse().unwrap()),
        (
            "[fe80::1:0:0:0]:1".parse().unwrap(),
            "[1:0:0:2:0:0:0:3]:2".parse().unwrap(),
        ),
        (
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"
                .parse()
                .unwrap(),
            "[::ffff:192.0.2.1]:80".parse().unwrap(),
        ),
    ];
    for (source, destination) in pairs {
        let mut out = Vec::new();
        encode_v1(source, destination, &mut out);
        let (header, len) = complete(&out, Accept::V1);
        assert_eq!(len, out.len());
        assert_eq!(header.addresses, Some((source, destination)));
    }
}

#[test]
fn encode_v1_exact_bytes() {
    let (source, destination) = v4_pair();
    let mut out = Vec::new();
    encode_v1(source, destination, &mut out);
    assert_eq!(out, b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\n");

    let (source, destination) = v6_pair();
    out.clear();
    encode_v1(source, destination, &mut out);
    assert_eq!(
        out,
        b"PROXY TCP6 2001:db8::1 2001:db8:ffff::443 50000 443\r\n"
    );

    // Mixed families: the IPv4 side becomes v4-mapped IPv6, written as hex groups only.
    out.clear();
    encode_v1(v4_pair().0, v6_pair().1, &mut out);
    assert_eq!(
        out,
        b"PROXY TCP6 ::ffff:c000:201 2001:db8:ffff::443 56324 443\r\n"
    );
    let (header, _) = complete(&out, Accept::V1);
    let (mapped, _) = header.addresses.unwrap();
    assert_eq!(
        mapped.ip(),
        IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped())
    );
}

#[test]
fn ipv6_hex_groups_compress_the_first_longest_zero_run() {
    let cases = [
        ("::", "::"),
        ("::1", "::1"),
        ("1::", "1::"),
        ("1:0:0:2:0:0:0:3", "1:0:0:2::3"),
        ("1:0:0:2:0:0:3:4", "1::2:0:0:3:4"),
        ("1:0:2:3:4:5:6:7", "1:0:2:3:4:5:6:7"),
        ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),
        (
            "abcd:ef01:2345:6789:abcd:ef01:2345:6789",
            "abcd:ef01:2345:6789:abcd:ef01:2345:6789",
        ),
    ];
    for (input, expected) in cases {
        let mut out = Vec::new();
        push_ipv6_hex_groups(&mut out, input.parse().unwrap());
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }
}

#[test]
fn round_trip_v2() {
    let pairs = [v4_pair(), v6_pair()];
    for (source, destination) in pairs {
        for vpce_id in [None, Some("vpce-0123456789abcdef0")] {
            let mut out = Vec::new();
            let id = vpce_id.map(|id| VpceId::parse(id).unwrap());
            encode_v2(source, destination, id.as_ref(), &mut out);
            let (header, len) = complete(&out, Accept::V2);
            assert_eq!(len, out.len());
            assert_eq!(header.command, Command::Proxy);
            assert_eq!(header.addresses, Some((source, destination)));
            assert_eq!(header.vpce_id.as_deref(), vpce_id);
        }
    }
    // Mixed families come back v4-mapped.
    let mut out = Vec::new();
    encode_v2(v4_pair().0, v6_pair().1, None, &mut out);
    let (header, _) = complete(&out, Accept::V2);
    let expected_source = SocketAddr::new(
        IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped()),
        56324,
    );
    assert_eq!(header.addresses, Some((expected_source, v6_pair().1)));
}

#[test]
fn encode_v2_exact_bytes() {
    let (source, destination) = v4_pair();
    let mut out = Vec::new();
    encode_v2(
        source,
        destination,
        Some(&VpceId::parse("vpce-0123456789abcdef0").unwrap()),
        &mut out,
    );
    let expected = v2(0x21, 0x11, &[&V4_BLOCK[..], &aws_tlv(VPCE)].concat());
    assert_eq!(out, expected);
}

#[test]
fn encode_v2_local_is_a_bare_local_header() {
    let mut out = Vec::new();
    encode_v2_local(&mut out);
    assert_eq!(out, v2(0x20, 0x00, &[]));
    let (header, len) = complete(&out, Accept::Any);
    assert_eq!(
        (header.command, header.addresses, len),
        (Command::Local, None, 16)
    );
}

#[test]
fn reasons_are_distinct_snake_case_labels() {
    let errors = [
        Error::NotProxy,
        Error::BadSignature,
        Error::VersionNotAccepted,
        Error::BadVersion(0),
        Error::BadCommand(0),
        Error::BadFamily(0),
        Error::TooLong(0),
        Error::LengthOverrun {
            family: 0,
            declared: 0,
        },
        Error::TlvOverrun,
        Error::BadVpceId,
        Error::BadAzureLinkId,
        Error::DuplicateTlv(0),
        Error::V1NoCrlf,
        Error::V1BadField("x"),
        Error::Truncated,
    ];
    let mut seen = std::collections::HashSet::new();
    for error in &errors {
        let reason = error.reason();
        assert!(reason
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit()));
        assert!(seen.insert(reason), "duplicate reason {reason}");
        assert!(!error.to_string().is_empty());
    }
}

/// Parses `buf` every way and checks the invariants that hold for any input.
fn parse_all_ways(buf: &[u8]) {
    for accept in ALL_ACCEPTS {
        if let Ok(Parsed::Complete { len, .. }) = parse(buf, accept) {
            assert!(len <= buf.len());
            assert!(len <= MAX_V2_LEN);
        }
    }
    let _ = bytes_needed(buf);
}

#[test]
fn mutations_and_truncations_never_panic() {
    for (_, vector) in valid_vectors() {
        let with_payload = [&vector[..], b"\r\nPROXY TCP4 \x00"].concat();
        for end in 0..=with_payload.len() {
            parse_all_ways(&with_payload[..end]);
        }
        for index in 0..with_payload.len() {
            for mask in [0x01, 0x02, 0x10, 0x80, 0xFF] {
                let mut mutated = with_payload.clone();
                mutated[index] ^= mask;
                parse_all_ways(&mutated);
                parse_all_ways(&mutated[..index + 1]);
            }
            for value in [0x00, b' ', b'\r', b'\n', b'0', b':', b'.', 0xEA, 0xFF] {
                let mut mutated = with_payload.clone();
                mutated[index] = value;
                parse_all_ways(&mutated);
            }
        }
    }
}

/// Writes the vectors as the fuzz target's seed corpus:
/// `FUZZ_CORPUS_DIR=fuzz/corpus cargo test --lib write_fuzz_corpus -- --ignored`
#[test]
#[ignore = "writes files; run by hand to refresh the fuzz corpus"]
fn write_fuzz_corpus() {
    let root = std::env::var("FUZZ_CORPUS_DIR").expect("set FUZZ_CORPUS_DIR");
    let dir = std::path::Path::new(&root).join("proxy_protocol");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in valid_vectors() {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}
