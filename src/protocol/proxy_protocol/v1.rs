//! Version 1, the text form: "PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\n".

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use super::*;

#[derive(Clone, Copy)]
pub(super) enum V1Family {
    V4,
    V6,
}

const V1_PROTOCOLS: [&[u8]; 3] = [b"TCP4", b"TCP6", b"UNKNOWN"];

/// `buf` starts with "PROXY ".
pub(super) fn parse_v1(buf: &[u8]) -> Result<Parsed, Error> {
    // The CRLF must end within MAX_V1_LEN bytes, so nothing past that is looked at.
    let window = v1_window(buf);
    let body = window.get(V1_PREFIX.len()..).unwrap_or_default();
    let window_is_full = buf.len() >= MAX_V1_LEN;

    // A lone CR or LF anywhere, even in the ignored tail of an UNKNOWN line, is rejected: the
    // spec forbids ending the line with one, and accepting it elsewhere would let two parsers
    // disagree on where the header ends.
    let Some(line_end) = body.iter().position(|&b| b == b'\r' || b == b'\n') else {
        if window_is_full {
            return Err(Error::V1NoCrlf);
        }
        check_v1_partial(body)?;
        return Ok(Parsed::Incomplete);
    };
    let line = body.get(..line_end).unwrap_or_default();
    match (body.get(line_end), body.get(line_end + 1)) {
        (Some(&b'\r'), Some(&b'\n')) => {
            let addresses = parse_v1_line(line)?;
            let header = Header {
                version: Version::V1,
                command: Command::Proxy,
                addresses,
                vpce_id: None,
                azure_link_id: None,
            };
            Ok(Parsed::Complete {
                header,
                len: V1_PREFIX.len() + line_end + 2,
            })
        }
        // The CR is the last byte of the window: its LF would be byte 108.
        (Some(&b'\r'), None) if window_is_full => Err(Error::V1NoCrlf),
        (Some(&b'\r'), None) => {
            parse_v1_line(line)?;
            Ok(Parsed::Incomplete)
        }
        _ => Err(Error::V1BadField("line ending (lone CR or LF)")),
    }
}

pub(super) fn v1_window(buf: &[u8]) -> &[u8] {
    buf.get(..buf.len().min(MAX_V1_LEN)).unwrap_or_default()
}

/// Parses the text between "PROXY " and the CRLF.
fn parse_v1_line(line: &[u8]) -> Result<Option<(SocketAddr, SocketAddr)>, Error> {
    let mut fields = line.split(|&b| b == b' ');
    let family = match fields.next() {
        Some(b"TCP4") => V1Family::V4,
        Some(b"TCP6") => V1Family::V6,
        // The spec has the receiver ignore whatever follows UNKNOWN up to the CRLF.
        Some(b"UNKNOWN") => return Ok(None),
        _ => return Err(Error::V1BadField("protocol")),
    };
    let mut next_field = |name| fields.next().ok_or(Error::V1BadField(name));
    let source = parse_v1_address(next_field("source address")?, family)
        .ok_or(Error::V1BadField("source address"))?;
    let destination = parse_v1_address(next_field("destination address")?, family)
        .ok_or(Error::V1BadField("destination address"))?;
    let source_port =
        parse_v1_port(next_field("source port")?).ok_or(Error::V1BadField("source port"))?;
    let destination_port = parse_v1_port(next_field("destination port")?)
        .ok_or(Error::V1BadField("destination port"))?;
    if fields.next().is_some() {
        return Err(Error::V1BadField("trailing data"));
    }
    Ok(Some((
        SocketAddr::new(source, source_port),
        SocketAddr::new(destination, destination_port),
    )))
}

/// Checks a line that has no CR or LF yet: every finished field must be valid, and the last one,
/// still growing, must be the beginning of a valid field.
fn check_v1_partial(body: &[u8]) -> Result<(), Error> {
    let field_count = body.split(|&b| b == b' ').count();
    let mut family = V1Family::V4;
    for (index, field) in body.split(|&b| b == b' ').enumerate() {
        let growing = index + 1 == field_count;
        match index {
            0 if growing => {
                if !V1_PROTOCOLS.iter().any(|known| known.starts_with(field)) {
                    return Err(Error::V1BadField("protocol"));
                }
            }
            0 => match field {
                b"TCP4" => family = V1Family::V4,
                b"TCP6" => family = V1Family::V6,
                b"UNKNOWN" => return Ok(()),
                _ => return Err(Error::V1BadField("protocol")),
            },
            1 | 2 => {
                let valid = if growing {
                    v1_address_may_continue(field, family)
                } else {
                    parse_v1_address(field, family).is_some()
                };
                if !valid {
                    let name = if index == 1 {
                        "source address"
                    } else {
                        "destination address"
                    };
                    return Err(Error::V1BadField(name));
                }
            }
            3 | 4 => {
                // A port with no leading zeros stays valid as it grows until it does not, so a
                // growing port is checked like a finished one (empty is the only extra case).
                if !(growing && field.is_empty()) && parse_v1_port(field).is_none() {
                    let name = if index == 3 {
                        "source port"
                    } else {
                        "destination port"
                    };
                    return Err(Error::V1BadField(name));
                }
            }
            _ => return Err(Error::V1BadField("trailing data")),
        }
    }
    Ok(())
}

pub(super) fn parse_v1_address(field: &[u8], family: V1Family) -> Option<IpAddr> {
    let text = std::str::from_utf8(field).ok()?;
    // std rejects IPv4 octets with leading zeros, as the spec requires (no octal ambiguity).
    match family {
        V1Family::V4 => Ipv4Addr::from_str(text).ok().map(IpAddr::V4),
        V1Family::V6 => Ipv6Addr::from_str(text).ok().map(IpAddr::V6),
    }
}

/// Whether some continuation of `prefix` is a valid address of `family`. Rather than a second
/// hand-written grammar, the std parser is asked about `prefix` plus each of a few endings; every
/// completable prefix is completed by at least one of them (end the current group or octet, then
/// pad with zero groups or octets, or with "::").
pub(super) fn v1_address_may_continue(prefix: &[u8], family: V1Family) -> bool {
    const V4_ENDINGS: &[&[u8]] = &[
        b"", b"0", b".0", b"0.0", b".0.0", b"0.0.0", b".0.0.0", b"0.0.0.0",
    ];
    const V6_ENDINGS: &[&[u8]] = &[
        b"",
        b"0",
        b":",
        b"::",
        b":0",
        b"0:0",
        b":0:0",
        b"0:0:0",
        b":0:0:0",
        b"0:0:0:0",
        b":0:0:0:0",
        b"0:0:0:0:0",
        b":0:0:0:0:0",
        b"0:0:0:0:0:0",
        b":0:0:0:0:0:0",
        b"0:0:0:0:0:0:0",
        b":0:0:0:0:0:0:0",
        b"0:0:0:0:0:0:0:0",
        // A trailing dotted IPv4 part, as in "::ffff:192.0.2.1".
        b".0",
        b"0.0",
        b".0.0",
        b"0.0.0",
        b".0.0.0",
        b"0.0.0.0",
    ];
    // Longest textual IPv6 address with a dotted tail, "ffff:...:ffff:255.255.255.255".
    const MAX_ADDRESS_TEXT: usize = 45;
    let endings = match family {
        V1Family::V4 => V4_ENDINGS,
        V1Family::V6 => V6_ENDINGS,
    };
    let mut candidate = [0u8; MAX_ADDRESS_TEXT + 16];
    endings.iter().any(|ending| {
        let total = prefix.len() + ending.len();
        let Some(slot) = candidate.get_mut(..total) else {
            return false;
        };
        let (head, tail) = slot.split_at_mut(prefix.len());
        head.copy_from_slice(prefix);
        tail.copy_from_slice(ending);
        parse_v1_address(slot, family).is_some()
    })
}

/// Decimal 0..=65535, digits only (no sign), no leading zeros.
fn parse_v1_port(field: &[u8]) -> Option<u16> {
    let all_digits = !field.is_empty() && field.iter().all(u8::is_ascii_digit);
    let leading_zero = field.len() > 1 && field.first() == Some(&b'0');
    if !all_digits || leading_zero || field.len() > 5 {
        return None;
    }
    field.iter().try_fold(0u16, |port, &digit| {
        port.checked_mul(10)?.checked_add(u16::from(digit - b'0'))
    })
}
