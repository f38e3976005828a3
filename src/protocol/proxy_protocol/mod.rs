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
use std::net::SocketAddr;

use super::vpce::VpceId;

mod encode;
mod v1;
mod v2;

pub use encode::{encode_v1, encode_v2, encode_v2_local};
use v1::{parse_v1, v1_window};
use v2::parse_v2;

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

#[cfg(test)]
mod tests;
