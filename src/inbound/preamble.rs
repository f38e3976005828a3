//! What a client sends before relaying starts: a PROXY protocol header, and (on listeners that
//! route by SNI) the start of a TLS ClientHello.
//!
//! The PROXY header is read exactly: each read asks for no more than `bytes_needed` says the
//! header can still have, so the first payload byte stays in the socket for the relay. The
//! ClientHello, by contrast, is payload: the bytes read to find the server name are kept and
//! sent to the server before relaying begins, so it receives them byte for byte. Both reads are
//! bounded in size here and in time by the caller (`handshake_timeout`).

use std::net::SocketAddr;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::protocol::proxy_protocol::{self, Accept, Command, Header, Parsed};
use crate::protocol::sni::{self, Peeked};
use crate::protocol::vpce::VpceId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocol {
    Off,
    V1,
    V2,
    Any,
}

/// Who the client is: the socket's peer, or what the PROXY header said.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    pub addr: SocketAddr,
    /// The address the client connected to (the PROXY header's destination when there is one).
    pub local: SocketAddr,
    /// AWS VPC endpoint ID from the PROXY v2 TLV.
    pub vpce: Option<VpceId>,
    /// Azure Private Link LINKID from the PROXY v2 TLV.
    pub azure_link_id: Option<u32>,
}

impl ClientIdentity {
    pub fn from_socket(peer: SocketAddr, local: SocketAddr) -> Self {
        ClientIdentity {
            addr: peer,
            local,
            vpce: None,
            azure_link_id: None,
        }
    }
}

/// Why a handshake failed; `reason()` is the label it is counted and logged under.
#[derive(Debug)]
pub enum HandshakeError {
    Proxy(proxy_protocol::Error),
    /// The client closed (or reset) before the header was complete.
    Closed,
}

impl HandshakeError {
    pub fn reason(&self) -> &'static str {
        match self {
            HandshakeError::Proxy(e) => e.reason(),
            HandshakeError::Closed => "closed",
        }
    }
}

/// Reads exactly one PROXY protocol header. A v2 LOCAL header (the NLB's health checks) or one
/// without addresses (UNSPEC, UNKNOWN) leaves the socket's own addresses as the identity.
pub async fn read_proxy_header(
    stream: &mut TcpStream,
    accept: Accept,
    peer: SocketAddr,
    local: SocketAddr,
) -> Result<ClientIdentity, HandshakeError> {
    let mut buf = Vec::with_capacity(256);
    loop {
        let want = proxy_protocol::bytes_needed(&buf).min(proxy_protocol::MAX_V2_LEN);
        if want <= buf.len() {
            // The parser needs nothing more yet did not finish: it will report why.
            return match proxy_protocol::parse(&buf, accept) {
                Ok(Parsed::Complete { header, .. }) => Ok(identity(header, peer, local)),
                Ok(Parsed::Incomplete) => {
                    Err(HandshakeError::Proxy(proxy_protocol::Error::Truncated))
                }
                Err(e) => Err(HandshakeError::Proxy(e)),
            };
        }
        let filled = buf.len();
        buf.resize(want, 0);
        let n = match stream.read(&mut buf[filled..]).await {
            Ok(0) | Err(_) => return Err(HandshakeError::Closed),
            Ok(n) => n,
        };
        buf.truncate(filled + n);
        match proxy_protocol::parse(&buf, accept) {
            Ok(Parsed::Incomplete) => continue,
            Ok(Parsed::Complete { header, len }) => {
                debug_assert_eq!(len, buf.len(), "read past the PROXY header");
                return Ok(identity(header, peer, local));
            }
            Err(e) => return Err(HandshakeError::Proxy(e)),
        }
    }
}

fn identity(header: Header, peer: SocketAddr, local: SocketAddr) -> ClientIdentity {
    let (addr, local) = match (header.command, header.addresses) {
        (Command::Proxy, Some((source, destination))) => (source, destination),
        _ => (peer, local),
    };
    ClientIdentity {
        addr,
        local,
        vpce: header.vpce_id,
        azure_link_id: header.azure_link_id,
    }
}

/// What the first bytes of the stream said about TLS.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// A ClientHello, with its server name if it had one.
    Tls { server_name: Option<String> },
    /// Not TLS, or a ClientHello too broken to route on: the default route applies.
    Other,
    /// A ClientHello longer than `sni::MAX_CLIENT_HELLO`: it may well name a server, but not
    /// within what the relay reads, so it cannot be routed on (the listener's `route_fallback`
    /// decides, with this as the reason).
    TooLong,
}

/// Reads until the ClientHello is complete (or the stream is clearly not TLS); the bytes read
/// are left in `buf`, to be sent to the server first.
pub async fn read_client_hello(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Result<Hello, HandshakeError> {
    loop {
        match sni::parse_client_hello(buf) {
            Ok(Peeked::ClientHello { server_name }) => return Ok(Hello::Tls { server_name }),
            Ok(Peeked::NotTls) => return Ok(Hello::Other),
            Err(sni::Error::TooLong) => return Ok(Hello::TooLong),
            Err(e) => {
                tracing::debug!("ClientHello not routable: {e}");
                return Ok(Hello::Other);
            }
            Ok(Peeked::Incomplete) => {}
        }
        let filled = buf.len();
        if filled >= sni::MAX_CLIENT_HELLO {
            // The parser says TooLong before this; kept so no path reads past the limit.
            return Ok(Hello::TooLong);
        }
        buf.resize(sni::MAX_CLIENT_HELLO, 0);
        let n = match stream.read(&mut buf[filled..]).await {
            Ok(0) | Err(_) => return Err(HandshakeError::Closed),
            Ok(n) => n,
        };
        buf.truncate(filled + n);
    }
}
