//! A pool's settings, as the config file gives them and `config` builds them: the servers,
//! how one is picked, connect timeouts and retries, and the DNS, health and TLS settings.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::protocol::proxy_protocol::SendProxy;
use crate::relay::sockopt::Keepalive;
use crate::tls::PoolTls;
use crate::upstream::dns::DnsConfig;
use crate::upstream::health::HealthConfig;
use crate::upstream::pool::balance::Balance;

#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub name: String,
    pub balance: Balance,
    pub connect_timeout: Duration,
    pub retries: u32,
    pub keepalive: Keepalive,
    /// PROXY protocol header sent to servers, carrying the real client.
    pub send_proxy: SendProxy,
    /// Local addresses outgoing connections are bound to (the stable egress addresses an
    /// upstream allowlists), spread over; empty: the kernel chooses.
    pub sources: Vec<IpAddr>,
    pub servers: Vec<ServerConfig>,
    /// A server coming back ramps its weight from almost nothing to full over this long; zero:
    /// off.
    pub slow_start: Duration,
    /// What happens to a server's open connections when it goes down.
    pub on_down: OnDown,
    pub dns: DnsConfig,
    /// Active (and passive) health checking; None: every server counts as up.
    pub health: Option<HealthConfig>,
    /// `[pool.tls]`: TLS originated to the servers; None: plain TCP.
    pub tls: Option<PoolTls>,
}

/// What becomes of the connections of a server that health checks mark down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDown {
    /// They run to their end.
    Keep,
    /// They are closed at once.
    Close,
}

/// Where a server is: a literal socket address, or a name resolved by the runtime.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServerAddress {
    Ip(SocketAddr),
    Name { host: String, port: u16 },
}

impl std::fmt::Display for ServerAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerAddress::Ip(addr) => write!(f, "{addr}"),
            ServerAddress::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub name: String,
    pub address: ServerAddress,
    pub weight: u32,
    pub backup: bool,
    /// None: unlimited.
    pub max_connections: Option<u32>,
}
