//! PROXY protocol v1 and v2 (HAProxy's `proxy-protocol.txt`): parsing the header a load balancer
//! puts in front of a client connection, and encoding one for an upstream.
//!
//! This module owns the wire format only. It reads from a byte buffer the caller fills and never
//! looks past the end of the header: whatever follows is payload, even if it looks like a second
//! header (an AWS NLB forwards a header a client already sent). Reading from the socket, timeouts
//! and deciding what to do with the addresses belong to the session code.
//!
//! Beyond the addresses it extracts the two TLVs a PrivateLink deployment keys on: the AWS VPC
//! endpoint ID (type 0xEA) and the Azure Private Link LINKID (type 0xEE). Other TLVs are bounds
//! checked and skipped; a CRC32C TLV (0x03) is skipped, not verified.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::str::FromStr;

use super::vpce::VpceId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendProxy {
    Off,
    V1,
    V2,
}

/// Longest v1 line the spec allows, CRLF included ("PROXY UNKNOWN" with two full IPv6 addresses).
pub const MAX_V1_LEN: usize = 107;
/// Longest v2 header accepted: the 16-byte fixed part plus a 4 KiB address and TLV block. The
/// format allows 64 KiB, but no sender needs that, and the bound keeps the read buffer small.
pub const MAX_V2_LEN: usize = V2_FIXED_LEN + 4096;

const V1_PREFIX: &[u8] = b"PROXY ";
/// Shortest valid v1 line, "PROXY UNKNOWN\r\n"; also shorter than any v2 header.
const MIN_HEADER_LEN: usize = 15;

const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
const V2_FIXED_LEN: usize = 16;
const V2_VERSION: u8 = 0x2;
const V2_COMMAND_LOCAL: u8 = 0x0;
const V2_COMMAND_PROXY: u8 = 0x1;

const V2_TCP4: u8 = 0x11;
const V2_TCP6: u8 = 0x21;
const V2_ADDRESSES_LEN_INET: usize = 4 + 4 + 2 + 2;
const V2_ADDRESSES_LEN_INET6: usize = 16 + 16 + 2 + 2;
const V2_ADDRESSES_LEN_UNIX: usize = 108 + 108;

const TLV_HEADER_LEN: usize = 3;
const TLV_TYPE_AWS: u8 = 0xEA;
const AWS_SUBTYPE_VPCE_ID: u8 = 0x01;
const TLV_TYPE_AZURE: u8 = 0xEE;
const AZURE_SUBTYPE_LINK_ID: u8 = 0x01;

/// Which header versions a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    V1,
    V2,
    /// Either version, told apart by the first byte.
    Any,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// The connection is relayed on behalf of a client. Every v1 header is this.
    Proxy,
    /// The load balancer opened the connection itself (a health check): use the socket's own
    /// addresses.
    Local,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: Version,
    pub command: Command,
    /// (source, destination) of the original connection; None for v2 LOCAL, v2 UNSPEC/AF_UNIX, v1 UNKNOWN
    ///
    /// Also None for UDP over IPv4/IPv6 (v2 family bytes 0x12 and 0x22): the header is accepted,
    /// but a TCP relay has no use for a datagram flow's addresses.
    pub addresses: Option<(SocketAddr, SocketAddr)>,
    /// AWS TLV 0xEA subtype 0x01: ASCII VPC endpoint ID, validated (printable ASCII, <= 64 bytes)
    pub vpce_id: Option<VpceId>,
    /// Azure Private Link TLV 0xEE subtype 0x01: LINKID, u32 little-endian
    pub azure_link_id: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// The bytes so far are a valid beginning of a header; read more (see [`bytes_needed`]).
    Incomplete,
    /// `len` is the exact header length: `buf[len..]` is payload.
    Complete { header: Header, len: usize },
}

/// Why a header was rejected. The connection should be closed: the spec requires it, and a
/// sender that gets the format wrong cannot be trusted for the addresses either.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// `Accept::Any`: the bytes begin neither header version.
    NotProxy,
    /// The bytes do not begin the signature of the one version the listener accepts.
    BadSignature,
    /// The bytes begin the signature of the version the listener does not accept (for example
    /// an NLB sending v2 to a listener configured for v1).
    VersionNotAccepted,
    /// v2: the version nibble of byte 12 (the whole byte is carried) is not 2.
    BadVersion(u8),
    /// v2: the command nibble of byte 12 (the whole byte is carried) is neither LOCAL nor PROXY.
    BadCommand(u8),
    /// v2: byte 13 is not one of the family/transport pairs the spec defines.
    BadFamily(u8),
    /// v2: the declared header length (carried) exceeds [`MAX_V2_LEN`].
    TooLong(usize),
    /// v2: the declared length is shorter than the address block of the family.
    LengthOverrun { family: u8, declared: usize },
    /// v2: a TLV runs past the end of the declared length.
    TlvOverrun,
    /// v2: the AWS VPC endpoint ID is empty, longer than 64 bytes or not printable ASCII.
    BadVpceId,
    /// v2: the Azure LINKID TLV does not hold exactly 4 bytes.
    BadAzureLinkId,
    /// v2: the VPC endpoint ID or Azure LINKID (TLV type carried) appears twice; an access rule
    /// could otherwise be checked against one and logged against the other.
    DuplicateTlv(u8),
    /// v1: no CRLF within the first [`MAX_V1_LEN`] bytes.
    V1NoCrlf,
    /// v1: the named field (or the line ending) is malformed.
    V1BadField(&'static str),
    /// The peer closed the connection before a complete header. `parse` never returns this (it
    /// cannot know the stream ended); it is here so the session code reports an EOF during
    /// `Parsed::Incomplete` with the same type and metric labels as every other header error.
    Truncated,
}

impl Error {
    /// A short, fixed, snake_case label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::NotProxy => "not_proxy",
            Error::BadSignature => "bad_signature",
            Error::VersionNotAccepted => "version_not_accepted",
            Error::BadVersion(_) => "bad_version",
            Error::BadCommand(_) => "bad_command",
            Error::BadFamily(_) => "bad_family",
            Error::TooLong(_) => "too_long",
            Error::LengthOverrun { .. } => "length_overrun",
            Error::TlvOverrun => "tlv_overrun",
            Error::BadVpceId => "bad_vpce_id",
            Error::BadAzureLinkId => "bad_azure_link_id",
            Error::DuplicateTlv(_) => "duplicate_tlv",
            Error::V1NoCrlf => "v1_no_crlf",
            Error::V1BadField(_) => "v1_bad_field",
            Error::Truncated => "truncated",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotProxy => f.write_str("not a PROXY protocol header"),
            Error::BadSignature => f.write_str("PROXY header: bad signature"),
            Error::VersionNotAccepted => {
                f.write_str("PROXY header of a version this listener does not accept")
            }
            Error::BadVersion(byte) => {
                write!(f, "PROXY v2: unsupported version (byte 0x{byte:02x})")
            }
            Error::BadCommand(byte) => write!(f, "PROXY v2: unknown command (byte 0x{byte:02x})"),
            Error::BadFamily(byte) => {
                write!(f, "PROXY v2: unknown address family/transport 0x{byte:02x}")
            }
            Error::TooLong(len) => write!(
                f,
                "PROXY v2: header of {len} bytes exceeds the limit of {MAX_V2_LEN}"
            ),
            Error::LengthOverrun { family, declared } => write!(
                f,
                "PROXY v2: declared length {declared} is shorter than the address block of family 0x{family:02x}"
            ),
            Error::TlvOverrun => f.write_str("PROXY v2: TLV runs past the end of the header"),
            Error::BadVpceId => f.write_str("PROXY v2: invalid AWS VPC endpoint ID"),
            Error::BadAzureLinkId => f.write_str("PROXY v2: Azure LINKID TLV is not 4 bytes"),
            Error::DuplicateTlv(kind) => write!(f, "PROXY v2: duplicate TLV 0x{kind:02x}"),
            Error::V1NoCrlf => write!(f, "PROXY v1: no CRLF within {MAX_V1_LEN} bytes"),
            Error::V1BadField(field) => write!(f, "PROXY v1: bad {field}"),
            Error::Truncated => f.write_str("connection closed inside the PROXY header"),
        }
    }
}

impl std::error::Error for Error {}

/// Parse from the start of `buf` (bytes received so far). `len` = exact header length; bytes
/// after it are payload and must not be interpreted.
///
/// `Incomplete` is returned only while more bytes could still make a valid header; anything that
/// can already be seen to be wrong is an error at once.
pub fn parse(buf: &[u8], accept: Accept) -> Result<Parsed, Error> {
    match accept {
        Accept::V1 => match signature_match(buf, V1_PREFIX) {
            SignatureMatch::Mismatch if signature_match(buf, &V2_SIGNATURE).is_plausible() => {
                Err(Error::VersionNotAccepted)
            }
            SignatureMatch::Mismatch => Err(Error::BadSignature),
            SignatureMatch::Prefix => Ok(Parsed::Incomplete),
            SignatureMatch::Full => parse_v1(buf),
        },
        Accept::V2 => match signature_match(buf, &V2_SIGNATURE) {
            SignatureMatch::Mismatch if signature_match(buf, V1_PREFIX).is_plausible() => {
                Err(Error::VersionNotAccepted)
            }
            SignatureMatch::Mismatch => Err(Error::BadSignature),
            SignatureMatch::Prefix => Ok(Parsed::Incomplete),
            SignatureMatch::Full => parse_v2(buf),
        },
        Accept::Any => {
            // The two signatures differ in their first byte, so one byte picks the version.
            let (signature, parse_version): (&[u8], fn(&[u8]) -> _) = match buf.first() {
                None => return Ok(Parsed::Incomplete),
                Some(&first) if first == V2_SIGNATURE[0] => (&V2_SIGNATURE, parse_v2),
                Some(_) => (V1_PREFIX, parse_v1),
            };
            match signature_match(buf, signature) {
                SignatureMatch::Mismatch => Err(Error::NotProxy),
                SignatureMatch::Prefix => Ok(Parsed::Incomplete),
                SignatureMatch::Full => parse_version(buf),
            }
        }
    }
}

/// How many bytes `buf` should hold before `parse` is called again, counted from the start of
/// the stream. It never exceeds the length of the header being received, so a caller reading
/// exactly up to it never consumes payload: for v2 it is 16, then exactly 16 + the declared
/// length; for v1 (whose end is only known at the CRLF) it is one more byte than `buf` holds, or
/// the length of the line once its CRLF is in `buf`. Once `parse` reports `Complete`, this is
/// the header length.
pub fn bytes_needed(buf: &[u8]) -> usize {
    match buf.first() {
        None => MIN_HEADER_LEN,
        Some(&first) if first == V2_SIGNATURE[0] => match buf.get(14..V2_FIXED_LEN) {
            Some(&[high, low]) => V2_FIXED_LEN + usize::from(u16::from_be_bytes([high, low])),
            _ => V2_FIXED_LEN,
        },
        Some(_) => match v1_window(buf).windows(2).position(|pair| pair == b"\r\n") {
            Some(cr) => cr + 2,
            None => buf.len().saturating_add(1).max(MIN_HEADER_LEN),
        },
    }
}

enum SignatureMatch {
    Mismatch,
    /// `buf` is shorter than the signature and matches it so far.
    Prefix,
    Full,
}

impl SignatureMatch {
    fn is_plausible(&self) -> bool {
        !matches!(self, SignatureMatch::Mismatch)
    }
}

fn signature_match(buf: &[u8], signature: &[u8]) -> SignatureMatch {
    let compared = buf.len().min(signature.len());
    if buf.get(..compared) != signature.get(..compared) {
        SignatureMatch::Mismatch
    } else if compared < signature.len() {
        SignatureMatch::Prefix
    } else {
        SignatureMatch::Full
    }
}

// ---------------------------------------------------------------------------------------------
// Version 1: "PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\n"

#[derive(Clone, Copy)]
enum V1Family {
    V4,
    V6,
}

const V1_PROTOCOLS: [&[u8]; 3] = [b"TCP4", b"TCP6", b"UNKNOWN"];

/// `buf` starts with "PROXY ".
fn parse_v1(buf: &[u8]) -> Result<Parsed, Error> {
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

fn v1_window(buf: &[u8]) -> &[u8] {
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

fn parse_v1_address(field: &[u8], family: V1Family) -> Option<IpAddr> {
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
fn v1_address_may_continue(prefix: &[u8], family: V1Family) -> bool {
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

// ---------------------------------------------------------------------------------------------
// Version 2: 16-byte fixed part, then addresses and TLVs.

/// The family/transport byte values the spec defines.
#[derive(Clone, Copy)]
enum V2Family {
    Unspec,
    Tcp4,
    Udp4,
    Tcp6,
    Udp6,
    UnixStream,
    UnixDatagram,
}

impl V2Family {
    fn from_byte(byte: u8) -> Option<V2Family> {
        Some(match byte {
            0x00 => V2Family::Unspec,
            V2_TCP4 => V2Family::Tcp4,
            0x12 => V2Family::Udp4,
            V2_TCP6 => V2Family::Tcp6,
            0x22 => V2Family::Udp6,
            0x31 => V2Family::UnixStream,
            0x32 => V2Family::UnixDatagram,
            _ => return None,
        })
    }

    /// Size of the address block, or None when it has no defined layout (UNSPEC).
    fn addresses_len(self) -> Option<usize> {
        match self {
            V2Family::Unspec => None,
            V2Family::Tcp4 | V2Family::Udp4 => Some(V2_ADDRESSES_LEN_INET),
            V2Family::Tcp6 | V2Family::Udp6 => Some(V2_ADDRESSES_LEN_INET6),
            V2Family::UnixStream | V2Family::UnixDatagram => Some(V2_ADDRESSES_LEN_UNIX),
        }
    }
}

/// `buf` starts with the 12-byte signature. Every field is checked as soon as its bytes are
/// present, so a bad header is rejected without waiting for the rest of it.
fn parse_v2(buf: &[u8]) -> Result<Parsed, Error> {
    let Some(&version_command) = buf.get(12) else {
        return Ok(Parsed::Incomplete);
    };
    if version_command >> 4 != V2_VERSION {
        return Err(Error::BadVersion(version_command));
    }
    let command = match version_command & 0x0F {
        V2_COMMAND_LOCAL => Command::Local,
        V2_COMMAND_PROXY => Command::Proxy,
        _ => return Err(Error::BadCommand(version_command)),
    };
    let Some(&family_byte) = buf.get(13) else {
        return Ok(Parsed::Incomplete);
    };
    let family = V2Family::from_byte(family_byte).ok_or(Error::BadFamily(family_byte))?;
    let Some(&[high, low]) = buf.get(14..V2_FIXED_LEN) else {
        return Ok(Parsed::Incomplete);
    };
    let declared = usize::from(u16::from_be_bytes([high, low]));
    let header_len = V2_FIXED_LEN + declared;
    if header_len > MAX_V2_LEN {
        return Err(Error::TooLong(header_len));
    }
    // What has arrived of the address and TLV block, never reaching past the header.
    let block = buf
        .get(V2_FIXED_LEN..buf.len().min(header_len))
        .unwrap_or_default();
    let complete = buf.len() >= header_len;

    let mut header = Header {
        version: Version::V2,
        command,
        addresses: None,
        vpce_id: None,
        azure_link_id: None,
    };
    // LOCAL: the spec has the receiver discard the whole block, family included, and use the
    // real endpoints. UNSPEC: the address information has no defined layout, so neither it nor
    // anything after it can be read. Both are skipped by the declared length alone.
    let addresses_len = match (command, family.addresses_len()) {
        (Command::Local, _) | (Command::Proxy, None) => {
            return Ok(if complete {
                Parsed::Complete {
                    header,
                    len: header_len,
                }
            } else {
                Parsed::Incomplete
            });
        }
        (Command::Proxy, Some(addresses_len)) => addresses_len,
    };
    let length_overrun = Error::LengthOverrun {
        family: family_byte,
        declared,
    };
    if declared < addresses_len {
        return Err(length_overrun);
    }
    let tlvs = block.get(addresses_len..).unwrap_or_default();
    read_tlvs(tlvs, declared - addresses_len, &mut header)?;
    if !complete {
        return Ok(Parsed::Incomplete);
    }
    // Cannot fail after the length check, but if it did, falling back to no addresses would
    // silently hand access rules the load balancer's address instead of the client's.
    header.addresses = match family {
        V2Family::Tcp4 => Some(decode_v4_addresses(block).ok_or(length_overrun)?),
        V2Family::Tcp6 => Some(decode_v6_addresses(block).ok_or(length_overrun)?),
        _ => None,
    };
    Ok(Parsed::Complete {
        header,
        len: header_len,
    })
}

fn decode_v4_addresses(block: &[u8]) -> Option<(SocketAddr, SocketAddr)> {
    let source: [u8; 4] = take_array(block, 0)?;
    let destination: [u8; 4] = take_array(block, 4)?;
    let source_port = u16::from_be_bytes(take_array(block, 8)?);
    let destination_port = u16::from_be_bytes(take_array(block, 10)?);
    Some((
        SocketAddr::V4(SocketAddrV4::new(source.into(), source_port)),
        SocketAddr::V4(SocketAddrV4::new(destination.into(), destination_port)),
    ))
}

fn decode_v6_addresses(block: &[u8]) -> Option<(SocketAddr, SocketAddr)> {
    let source: [u8; 16] = take_array(block, 0)?;
    let destination: [u8; 16] = take_array(block, 16)?;
    let source_port = u16::from_be_bytes(take_array(block, 32)?);
    let destination_port = u16::from_be_bytes(take_array(block, 34)?);
    Some((
        SocketAddr::V6(SocketAddrV6::new(source.into(), source_port, 0, 0)),
        SocketAddr::V6(SocketAddrV6::new(
            destination.into(),
            destination_port,
            0,
            0,
        )),
    ))
}

fn take_array<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// Walks the TLVs in `available`, the part of the TLV region that has arrived so far; the region
/// is `region_len` bytes long. A TLV not fully arrived ends the walk without error as long as it
/// fits in the region.
fn read_tlvs(available: &[u8], region_len: usize, header: &mut Header) -> Result<(), Error> {
    let mut offset = 0;
    while offset < region_len {
        let remaining = region_len - offset;
        if remaining < TLV_HEADER_LEN {
            return Err(Error::TlvOverrun);
        }
        let Some(&[kind, high, low]) = available.get(offset..offset + TLV_HEADER_LEN) else {
            return Ok(());
        };
        let value_len = usize::from(u16::from_be_bytes([high, low]));
        if value_len > remaining - TLV_HEADER_LEN {
            return Err(Error::TlvOverrun);
        }
        let value_start = offset + TLV_HEADER_LEN;
        let Some(value) = available.get(value_start..value_start + value_len) else {
            return Ok(());
        };
        read_tlv(kind, value, header)?;
        offset = value_start + value_len;
    }
    Ok(())
}

fn read_tlv(kind: u8, value: &[u8], header: &mut Header) -> Result<(), Error> {
    match (kind, value.split_first()) {
        (TLV_TYPE_AWS, Some((&AWS_SUBTYPE_VPCE_ID, vpce_id))) => {
            if header.vpce_id.is_some() {
                return Err(Error::DuplicateTlv(kind));
            }
            header.vpce_id = Some(VpceId::from_bytes(vpce_id).ok_or(Error::BadVpceId)?);
        }
        (TLV_TYPE_AZURE, Some((&AZURE_SUBTYPE_LINK_ID, link_id))) => {
            if header.azure_link_id.is_some() {
                return Err(Error::DuplicateTlv(kind));
            }
            let link_id: [u8; 4] = link_id.try_into().map_err(|_| Error::BadAzureLinkId)?;
            header.azure_link_id = Some(u32::from_le_bytes(link_id));
        }
        // Other types, other AWS/Azure subtypes and empty values carry nothing we act on.
        _ => {}
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Encoding, for sending a header to an upstream.

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
fn push_ipv6_hex_groups(out: &mut Vec<u8>, ip: Ipv6Addr) {
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

#[cfg(test)]
mod tests {
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
            0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54,
            0x0A, // signature
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
            0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x20, 0x00,
            0x00, 0x00,
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
}
