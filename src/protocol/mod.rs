//! Wire formats a connection opens with, parsed without I/O: the PROXY protocol header (v1 and
//! v2, with the AWS VPC endpoint TLV) and the TLS ClientHello's server name, plus the table that
//! matches server names against configured patterns.
//!
//! Nothing here reads a socket or knows the config: the inbound path feeds these parsers the
//! bytes it peeked, and the upstream path asks the encoder for the header it sends.

pub mod name_table;
pub mod proxy_protocol;
pub mod sni;
pub mod vpce;
