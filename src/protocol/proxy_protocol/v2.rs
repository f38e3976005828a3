//! Version 2, the binary form: a 16-byte fixed part, then addresses and TLVs (the AWS VPC
//! endpoint ID and the Azure Private Link LINKID among them).

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};

use super::*;
use crate::protocol::vpce::VpceId;

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
pub(super) fn parse_v2(buf: &[u8]) -> Result<Parsed, Error> {
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
