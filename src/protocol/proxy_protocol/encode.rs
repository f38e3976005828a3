//! Encoding a header to send to an upstream (`send_proxy`), v1 or v2.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::*;
use crate::protocol::vpce::VpceId;

/// Appends "PROXY TCP4 ...\r\n" (or TCP6) to `out`.
///
/// When one address is IPv4 and the other IPv6, the IPv4 one is written as its v4-mapped IPv6
/// form (::ffff:a.b.c.d) under TCP6, as HAProxy does: a line needs one family, and UNKNOWN would
/// make the receiver drop the client's address, which is the whole point of the header.
pub fn encode_v1(src: SocketAddr, dst: SocketAddr, out: &mut Vec<u8>) {
    out.extend_from_slice(V1_PREFIX);
    match same_family(src, dst) {
        SameFamily::V4(source, destination) => {
            out.extend_from_slice(b"TCP4 ");
            push_display(out, source);
            out.push(b' ');
            push_display(out, destination);
        }
        SameFamily::V6(source, destination) => {
            out.extend_from_slice(b"TCP6 ");
            push_ipv6_hex_groups(out, source);
            out.push(b' ');
            push_ipv6_hex_groups(out, destination);
        }
    }
    out.push(b' ');
    push_display(out, src.port());
    out.push(b' ');
    push_display(out, dst.port());
    out.extend_from_slice(b"\r\n");
}

/// Appends a v2 PROXY header for TCP over IPv4 or IPv6 to `out`, with the AWS VPC endpoint ID
/// TLV when `vpce_id` is given. Mixed families are written as IPv6 with the IPv4 address
/// v4-mapped, as [`encode_v1`] does.
///
/// A `VpceId` is valid by construction, so what is sent is what [`parse`] accepts.
pub fn encode_v2(src: SocketAddr, dst: SocketAddr, vpce_id: Option<&VpceId>, out: &mut Vec<u8>) {
    // Bounded by VpceId::MAX_LEN, so the length always fits the u16 fields.
    let tlv_len = vpce_id.map_or(0, |id| TLV_HEADER_LEN + 1 + id.len());
    let family = same_family(src, dst);
    let (family_byte, addresses_len) = match family {
        SameFamily::V4(..) => (V2_TCP4, V2_ADDRESSES_LEN_INET),
        SameFamily::V6(..) => (V2_TCP6, V2_ADDRESSES_LEN_INET6),
    };
    out.extend_from_slice(&V2_SIGNATURE);
    out.push((V2_VERSION << 4) | V2_COMMAND_PROXY);
    out.push(family_byte);
    out.extend_from_slice(&u16_len(addresses_len + tlv_len).to_be_bytes());
    match family {
        SameFamily::V4(source, destination) => {
            out.extend_from_slice(&source.octets());
            out.extend_from_slice(&destination.octets());
        }
        SameFamily::V6(source, destination) => {
            out.extend_from_slice(&source.octets());
            out.extend_from_slice(&destination.octets());
        }
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    if let Some(id) = vpce_id {
        out.push(TLV_TYPE_AWS);
        out.extend_from_slice(&u16_len(1 + id.len()).to_be_bytes());
        out.push(AWS_SUBTYPE_VPCE_ID);
        out.extend_from_slice(id.as_bytes());
    }
}

/// Appends a v2 LOCAL header (UNSPEC family, no addresses) to `out`, for connections the relay
/// makes on its own behalf, such as health checks.
pub fn encode_v2_local(out: &mut Vec<u8>) {
    out.extend_from_slice(&V2_SIGNATURE);
    out.push((V2_VERSION << 4) | V2_COMMAND_LOCAL);
    out.push(0x00);
    out.extend_from_slice(&[0, 0]);
}

enum SameFamily {
    V4(Ipv4Addr, Ipv4Addr),
    V6(Ipv6Addr, Ipv6Addr),
}

fn same_family(src: SocketAddr, dst: SocketAddr) -> SameFamily {
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(source), IpAddr::V4(destination)) => SameFamily::V4(source, destination),
        (source, destination) => SameFamily::V6(to_ipv6(source), to_ipv6(destination)),
    }
}

fn to_ipv6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Callers only pass lengths bounded well below 64 KiB; saturating keeps this total anyway.
fn u16_len(len: usize) -> u16 {
    u16::try_from(len).unwrap_or(u16::MAX)
}

fn push_display(out: &mut Vec<u8>, value: impl fmt::Display) {
    use std::io::Write;
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{value}");
}

/// Writes hex groups with the longest run of two or more zero groups as "::" (RFC 5952). std's
/// Display writes v4-mapped addresses with a dotted tail, which the v1 spec's "sets of 4
/// hexadecimal digits" does not allow and strict receivers reject.
pub(super) fn push_ipv6_hex_groups(out: &mut Vec<u8>, ip: Ipv6Addr) {
    let groups = ip.segments();
    let mut longest_zero_run = 0..0;
    let mut run_start = None;
    for (index, &group) in groups.iter().chain(std::iter::once(&1)).enumerate() {
        match (group == 0, run_start) {
            (true, None) => run_start = Some(index),
            (false, Some(start)) => {
                if index - start > longest_zero_run.len() {
                    longest_zero_run = start..index;
                }
                run_start = None;
            }
            _ => {}
        }
    }
    if longest_zero_run.len() < 2 {
        longest_zero_run = 0..0;
    }
    let mut index = 0;
    while index < groups.len() {
        if index == longest_zero_run.start && !longest_zero_run.is_empty() {
            out.extend_from_slice(b"::");
            index = longest_zero_run.end;
            continue;
        }
        if index > 0 && index != longest_zero_run.end {
            out.push(b':');
        }
        if let Some(group) = groups.get(index) {
            push_display(out, format_args!("{group:x}"));
        }
        index += 1;
    }
}
