//! PROXY protocol headers built by hand from the spec's byte layout (HAProxy's
//! proxy-protocol.txt), never with the relay's own encoder, so that a bug shared by the relay's
//! parser and encoder cannot hide.

use std::net::{IpAddr, SocketAddr};

pub const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
pub const VERSION_PROXY: u8 = 0x21;
pub const VERSION_LOCAL: u8 = 0x20;
pub const TCP4: u8 = 0x11;
pub const TCP6: u8 = 0x21;
pub const UNSPEC: u8 = 0x00;

/// Signature, version/command, family, big-endian length, then `block` (addresses and TLVs).
pub fn v2(version_command: u8, family: u8, block: &[u8]) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(version_command);
    out.push(family);
    out.extend_from_slice(&u16::try_from(block.len()).unwrap().to_be_bytes());
    out.extend_from_slice(block);
    out
}

pub fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
    out.extend_from_slice(value);
    out
}

/// AWS TLV 0xEA, subtype 0x01 (VPC endpoint ID).
pub fn aws_tlv(vpce: &str) -> Vec<u8> {
    let mut value = vec![0x01];
    value.extend_from_slice(vpce.as_bytes());
    tlv(0xEA, &value)
}

/// The address block for TCP over IPv4 or IPv6: src, dst, src port, dst port.
pub fn address_block(src: SocketAddr, dst: SocketAddr) -> (u8, Vec<u8>) {
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
pub fn proxy_v2(src: &str, dst: &str, tlvs: &[Vec<u8>]) -> Vec<u8> {
    let (family, mut block) = address_block(src.parse().unwrap(), dst.parse().unwrap());
    for t in tlvs {
        block.extend_from_slice(t);
    }
    v2(VERSION_PROXY, family, &block)
}

/// The four address bytes of an IPv4 socket address (the listeners under test are IPv4).
pub fn octets(addr: SocketAddr) -> [u8; 4] {
    match addr.ip() {
        IpAddr::V4(ip) => ip.octets(),
        IpAddr::V6(_) => panic!("IPv4 listeners only"),
    }
}
