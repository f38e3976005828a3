//! PROXY protocol v2 (HAProxy spec, section 2.2) as AWS load balancers send
//! it: the client side encodes the header a PrivateLink NLB would prepend,
//! and `serve` recognises and strips v1/v2 headers so it works both directly
//! and behind a relay that forwards or regenerates them.

use std::net::{IpAddr, SocketAddr};

/// The fixed 12-byte v2 signature.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Version 2, command PROXY.
const VER_CMD_PROXY: u8 = 0x21;
const FAM_TCP4: u8 = 0x11;
const FAM_TCP6: u8 = 0x21;
/// PP2_TYPE_AWS and its VPC endpoint id subtype.
pub const PP2_TYPE_AWS: u8 = 0xEA;
pub const PP2_SUBTYPE_AWS_VPCE_ID: u8 = 0x01;

/// Encodes a v2 PROXY header for a TCP connection from `src` to `dst`,
/// optionally carrying the AWS VPC endpoint id TLV.
///
/// Mixed families (one side IPv4, the other IPv6) are sent as TCP6 with the
/// IPv4 side v4-mapped, because the address block has a single family.
pub fn encode(src: SocketAddr, dst: SocketAddr, vpce: Option<&str>) -> Vec<u8> {
    let tlv_len = vpce.map_or(0, |v| 3 + 1 + v.len());
    let mut out = Vec::with_capacity(16 + 36 + tlv_len);
    out.extend_from_slice(&SIGNATURE);
    out.push(VER_CMD_PROXY);
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(FAM_TCP4);
            out.extend_from_slice(&((12 + tlv_len) as u16).to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            out.push(FAM_TCP6);
            out.extend_from_slice(&((36 + tlv_len) as u16).to_be_bytes());
            out.extend_from_slice(&to_v6(s).octets());
            out.extend_from_slice(&to_v6(d).octets());
        }
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    if let Some(v) = vpce {
        out.push(PP2_TYPE_AWS);
        out.extend_from_slice(&((1 + v.len()) as u16).to_be_bytes());
        out.push(PP2_SUBTYPE_AWS_VPCE_ID);
        out.extend_from_slice(v.as_bytes());
    }
    out
}

fn to_v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Checks a VPC endpoint id is something a TLV can carry and a relay can log.
pub fn validate_vpce(v: &str) -> Result<(), String> {
    if v.is_empty() || v.len() > 255 {
        return Err("VPC endpoint id must be 1..=255 characters".into());
    }
    if !v.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("VPC endpoint id must be printable ASCII without spaces".into());
    }
    Ok(())
}

/// What the first bytes of a connection say about a PROXY header.
#[derive(Debug, PartialEq, Eq)]
pub enum Preamble {
    /// Not enough bytes yet to tell.
    NeedMore,
    /// No PROXY header; application data starts at byte 0.
    Absent,
    /// A v1 or v2 header of this many bytes; application data follows it.
    Header(usize),
    /// Looks like a PROXY header but is malformed.
    Invalid,
}

/// Longest v1 line the spec allows, CRLF included.
const V1_MAX: usize = 107;

/// Classifies the start of a connection. Decides as early as possible so a
/// plain client sending a single byte is not kept waiting.
pub fn detect(buf: &[u8]) -> Preamble {
    const V1: &[u8] = b"PROXY ";
    if buf.is_empty() {
        return Preamble::NeedMore;
    }
    let n = buf.len().min(SIGNATURE.len());
    if buf[..n] == SIGNATURE[..n] {
        if buf.len() < 16 {
            return Preamble::NeedMore;
        }
        if buf[12] >> 4 != 2 {
            return Preamble::Invalid;
        }
        let len = 16 + u16::from_be_bytes([buf[14], buf[15]]) as usize;
        return if buf.len() >= len {
            Preamble::Header(len)
        } else {
            Preamble::NeedMore
        };
    }
    let n = buf.len().min(V1.len());
    if buf[..n] == V1[..n] {
        if buf.len() < V1.len() {
            return Preamble::NeedMore;
        }
        let window = &buf[..buf.len().min(V1_MAX)];
        return match window.windows(2).position(|w| w == b"\r\n") {
            Some(p) => Preamble::Header(p + 2),
            None if buf.len() >= V1_MAX => Preamble::Invalid,
            None => Preamble::NeedMore,
        };
    }
    Preamble::Absent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp4_with_vpce_byte_exact() {
        let src: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let dst: SocketAddr = "127.0.0.2:9000".parse().unwrap();
        let got = encode(src, dst, Some("vpce-0123456789abcdef0"));
        let mut want: Vec<u8> = vec![
            0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54,
            0x0A, // signature
            0x21, // v2, PROXY
            0x11, // AF_INET, STREAM
            0x00, 0x26, // 12 address bytes + 3 TLV header + 1 subtype + 22 id = 38
            127, 0, 0, 1, // src addr
            127, 0, 0, 2, // dst addr
            0x9C, 0x40, // src port 40000
            0x23, 0x28, // dst port 9000
            0xEA, // PP2_TYPE_AWS
            0x00, 0x17, // TLV length 23
            0x01, // PP2_SUBTYPE_AWS_VPCE_ID
        ];
        want.extend_from_slice(b"vpce-0123456789abcdef0");
        assert_eq!(got, want);
        assert_eq!(detect(&got), Preamble::Header(got.len()));
    }

    #[test]
    fn tcp4_without_tlv_byte_exact() {
        let src: SocketAddr = "10.1.2.3:1".parse().unwrap();
        let dst: SocketAddr = "192.0.2.1:443".parse().unwrap();
        let got = encode(src, dst, None);
        let want: Vec<u8> = vec![
            0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x21, 0x11,
            0x00, 0x0C, 10, 1, 2, 3, 192, 0, 2, 1, 0x00, 0x01, 0x01, 0xBB,
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn tcp6_byte_exact() {
        let src: SocketAddr = "[::1]:1234".parse().unwrap();
        let dst: SocketAddr = "[2001:db8::7]:80".parse().unwrap();
        let got = encode(src, dst, Some("vpce-1"));
        assert_eq!(&got[..12], &SIGNATURE);
        assert_eq!(got[12], 0x21);
        assert_eq!(got[13], 0x21);
        assert_eq!(u16::from_be_bytes([got[14], got[15]]), 36 + 3 + 1 + 6);
        let mut src_ip = [0u8; 16];
        src_ip[15] = 1;
        assert_eq!(&got[16..32], &src_ip);
        let mut dst_ip = [0u8; 16];
        dst_ip[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        dst_ip[15] = 7;
        assert_eq!(&got[32..48], &dst_ip);
        assert_eq!(&got[48..52], &[0x04, 0xD2, 0x00, 0x50]);
        assert_eq!(&got[52..56], &[0xEA, 0x00, 0x07, 0x01]);
        assert_eq!(&got[56..], b"vpce-1");
        assert_eq!(got.len(), 16 + 36 + 3 + 7);
    }

    #[test]
    fn mixed_families_map_v4() {
        let src: SocketAddr = "127.0.0.1:5".parse().unwrap();
        let dst: SocketAddr = "[::1]:6".parse().unwrap();
        let got = encode(src, dst, None);
        assert_eq!(got[13], 0x21);
        assert_eq!(
            &got[16..32],
            &"::ffff:127.0.0.1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
    }

    #[test]
    fn detect_partial_and_plain() {
        let hdr = encode(
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
            None,
        );
        for cut in 0..hdr.len() {
            assert_eq!(detect(&hdr[..cut]), Preamble::NeedMore, "cut {cut}");
        }
        let mut with_data = hdr.clone();
        with_data.extend_from_slice(b"hello");
        assert_eq!(detect(&with_data), Preamble::Header(hdr.len()));
        assert_eq!(detect(&[0u8]), Preamble::Absent);
        assert_eq!(detect(b"GET / HTTP/1.1\r\n"), Preamble::Absent);
        assert_eq!(detect(b"\r\n\r\nX"), Preamble::Absent);
        let mut bad_version = hdr;
        bad_version[12] = 0x11;
        assert_eq!(detect(&bad_version), Preamble::Invalid);
    }

    #[test]
    fn detect_v1() {
        let line = b"PROXY TCP4 192.0.2.1 192.0.2.2 5000 80\r\ndata";
        assert_eq!(detect(line), Preamble::Header(line.len() - 4));
        assert_eq!(detect(b"PROX"), Preamble::NeedMore);
        assert_eq!(detect(b"PROXY TCP4 1.2.3.4"), Preamble::NeedMore);
        assert_eq!(detect(&[b'P'; 200][..]), Preamble::Absent);
        let mut long = b"PROXY ".to_vec();
        long.extend_from_slice(&[b'x'; 200]);
        assert_eq!(detect(&long), Preamble::Invalid);
    }

    #[test]
    fn vpce_validation() {
        assert!(validate_vpce("vpce-0123456789abcdef0").is_ok());
        assert!(validate_vpce("").is_err());
        assert!(validate_vpce("vpce 1").is_err());
        assert!(validate_vpce(&"a".repeat(256)).is_err());
    }
}
