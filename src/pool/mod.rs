//! Upstream pools: the servers a listener relays to, and choosing one for each connection.
//!
//! A `Pool` is shared by every worker thread. Each `Server` counts its active connections in an
//! atomic, which both the per-server limit and least-connections read; a `ServerLease` holds one
//! of those counts for as long as a connection to that server lives. Servers given by host name
//! are resolved when the pool is built (live re-resolution belongs to the DNS refresher).
//!
//! Which servers may take a connection: those that are up, not draining, under their
//! `max_connections`, and not already tried for this client. Backups are considered only when no
//! primary qualifies.

mod balance;

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{Balance, Keepalive, PoolConfig, SendProxy, ServerAddress, ServerConfig};
use crate::telemetry::{PoolMetrics, ServerMetrics};

pub struct Server {
    /// From the config; several servers share it when a name resolves to several addresses.
    pub name: Arc<str>,
    pub addr: SocketAddr,
    pub weight: u32,
    pub backup: bool,
    max_connections: Option<u32>,
    active: AtomicU32,
    up: AtomicBool,
    pub metrics: ServerMetrics,
}

impl Server {
    fn new(pool: &str, config: &ServerConfig, addr: SocketAddr) -> Server {
        let metrics = ServerMetrics::new(pool, &config.name);
        metrics.up.set(1.0);
        Server {
            name: Arc::from(config.name.as_str()),
            addr,
            weight: config.weight,
            backup: config.backup,
            max_connections: config.max_connections,
            active: AtomicU32::new(0),
            up: AtomicBool::new(true),
            metrics,
        }
    }

    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
        self.metrics.up.set(if up { 1.0 } else { 0.0 });
    }

    fn has_room(&self) -> bool {
        self.max_connections.is_none_or(|max| self.active() < max)
    }

    /// Takes one connection slot, unless the server filled up since it was chosen.
    fn lease(self: &Arc<Self>) -> Option<ServerLease> {
        let before = self.active.fetch_add(1, Ordering::AcqRel);
        if self.max_connections.is_some_and(|max| before >= max) {
            self.active.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        self.metrics.active.increment(1.0);
        Some(ServerLease {
            server: Arc::clone(self),
        })
    }
}

/// One active connection's claim on a server; released on drop.
pub struct ServerLease {
    server: Arc<Server>,
}

impl ServerLease {
    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }
}

impl Drop for ServerLease {
    fn drop(&mut self) {
        self.server.active.fetch_sub(1, Ordering::AcqRel);
        self.server.metrics.active.decrement(1.0);
    }
}

pub struct Pool {
    pub name: Arc<str>,
    pub balance: Balance,
    pub connect_timeout: Duration,
    pub retries: u32,
    pub keepalive: Keepalive,
    pub send_proxy: SendProxy,
    pub source: Option<IpAddr>,
    pub metrics: PoolMetrics,
    servers: Vec<Arc<Server>>,
    /// Smooth weighted round-robin state: one running weight per server.
    round_robin: Mutex<Vec<i64>>,
}

impl Pool {
    /// Builds a pool, resolving host names once. A name that does not resolve leaves no server
    /// behind it (logged); the pool still serves from the others.
    pub fn build(config: &PoolConfig) -> Pool {
        let mut servers = Vec::new();
        for server in &config.servers {
            match &server.address {
                ServerAddress::Ip(addr) => {
                    servers.push(Arc::new(Server::new(&config.name, server, *addr)))
                }
                ServerAddress::Name { host, port } => {
                    match (host.as_str(), *port).to_socket_addrs() {
                        Ok(addrs) => {
                            let mut unique: Vec<SocketAddr> = Vec::new();
                            for addr in addrs {
                                if !unique.contains(&addr) {
                                    unique.push(addr);
                                }
                            }
                            servers.extend(
                                unique
                                    .into_iter()
                                    .map(|addr| Arc::new(Server::new(&config.name, server, addr))),
                            );
                        }
                        Err(e) => {
                            tracing::error!(pool = %config.name, server = %server.name, "cannot resolve {host}: {e}")
                        }
                    }
                }
            }
        }
        Pool::from_servers(config, servers)
    }

    fn from_servers(config: &PoolConfig, servers: Vec<Arc<Server>>) -> Pool {
        Pool {
            name: Arc::from(config.name.as_str()),
            balance: config.balance,
            connect_timeout: config.connect_timeout,
            retries: config.retries,
            keepalive: config.keepalive.clone(),
            send_proxy: config.send_proxy,
            source: config.source,
            metrics: PoolMetrics::new(&config.name),
            round_robin: Mutex::new(vec![0; servers.len()]),
            servers,
        }
    }

    pub fn servers(&self) -> &[Arc<Server>] {
        &self.servers
    }

    /// The pool as /status shows it.
    pub fn status(&self) -> serde_json::Value {
        let servers: Vec<serde_json::Value> = self
            .servers
            .iter()
            .map(|s| {
                serde_json::json!({
                    "name": &*s.name,
                    "address": s.addr.to_string(),
                    "state": if s.is_up() { "up" } else { "down" },
                    "active": s.active(),
                    "weight": s.weight,
                    "backup": s.backup,
                    "max_connections": s.max_connections,
                })
            })
            .collect();
        serde_json::json!({
            "name": &*self.name,
            "balance": self.balance.as_str(),
            "servers": servers,
        })
    }

    /// True when some server could take a connection now.
    pub fn has_server_up(&self) -> bool {
        self.servers.iter().any(|s| s.is_up())
    }

    /// Chooses a server for a client and leases a slot on it. `tried` lists servers (by index)
    /// this client already failed to connect to; they are avoided while others qualify.
    pub fn pick(&self, client: IpAddr, tried: &[usize]) -> Option<(usize, ServerLease)> {
        for pass in Pass::ALL {
            // A chosen server can fill up between the choice and the lease (another thread
            // won the race); choose again among the rest, at most once per server.
            let mut full: u64 = 0;
            for _ in 0..self.servers.len().min(64) {
                let eligible = |i: usize, s: &Server| {
                    pass.admits(i, s, tried)
                        && s.is_up()
                        && s.has_room()
                        && (i >= 64 || full & (1 << i) == 0)
                };
                let Some(index) = balance::choose(self, client, &eligible) else {
                    break;
                };
                match self.servers[index].lease() {
                    Some(lease) => return Some((index, lease)),
                    None if index < 64 => full |= 1 << index,
                    None => {}
                }
            }
        }
        None
    }
}

/// The order in which servers are considered for a connection.
#[derive(Clone, Copy)]
enum Pass {
    UntriedPrimaries,
    UntriedBackups,
    /// Everything was tried: a retry on the same server beats giving up.
    AnyPrimary,
    AnyBackup,
}

impl Pass {
    const ALL: [Pass; 4] = [
        Pass::UntriedPrimaries,
        Pass::UntriedBackups,
        Pass::AnyPrimary,
        Pass::AnyBackup,
    ];

    fn admits(self, index: usize, server: &Server, tried: &[usize]) -> bool {
        match self {
            Pass::UntriedPrimaries => !server.backup && !tried.contains(&index),
            Pass::UntriedBackups => server.backup && !tried.contains(&index),
            Pass::AnyPrimary => !server.backup,
            Pass::AnyBackup => server.backup,
        }
    }
}

#[cfg(test)]
mod tests;
