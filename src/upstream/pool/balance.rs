//! The balancing algorithms: given which servers qualify, choose one.
//!
//! - round-robin: smooth weighted round-robin (nginx's): each pick adds every candidate's
//!   weight to its running total, takes the largest and subtracts the sum from it, which spreads
//!   a heavy server's turns evenly instead of in bursts;
//! - least-connections: fewest active connections per unit of weight, ties rotated;
//! - random-two: the less loaded of two random candidates (power of two choices), which avoids
//!   the herd that pure least-connections causes across many relays with stale views;
//! - source-hash: weighted rendezvous hashing of the client address, so a client keeps its
//!   server while the server set changes, and only the clients of a removed server move;
//! - first: the first candidate in config order, so servers fill up one after another.
//!
//! Every weighted algorithm uses the server's effective weight, which is below the configured
//! one while a server that came back ramps up (slow start).

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::{Clock, Pool, Server};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastConnections,
    RandomTwo,
    SourceHash,
    First,
}

impl Balance {
    /// The name the config uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round-robin",
            Balance::LeastConnections => "least-connections",
            Balance::RandomTwo => "random-two",
            Balance::SourceHash => "source-hash",
            Balance::First => "first",
        }
    }
}

/// Rotates ties between equally loaded servers in least-connections.
static TIE_BREAK: AtomicUsize = AtomicUsize::new(0);

/// Chooses among `servers` (the pool's current set); an index into it.
pub fn choose(
    pool: &Pool,
    servers: &[Arc<Server>],
    client: IpAddr,
    eligible: &dyn Fn(usize, &Server) -> bool,
) -> Option<usize> {
    let candidates = || servers.iter().enumerate().filter(|(i, s)| eligible(*i, s));
    let mut clock = Clock::default();
    match pool.balance {
        Balance::First => candidates().map(|(i, _)| i).next(),
        Balance::RoundRobin => {
            // Held for one pass over the pool's servers, once per new connection; it guards
            // every server's running weight.
            let _running = pool
                .round_robin
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let mut total = 0i64;
            let mut best: Option<(usize, i64)> = None;
            for (i, server) in candidates() {
                let weight = server.effective_weight(&mut clock) as i64;
                let running = server.rr_current.load(Ordering::Relaxed) + weight;
                server.rr_current.store(running, Ordering::Relaxed);
                total += weight;
                if best.is_none_or(|(_, b)| running > b) {
                    best = Some((i, running));
                }
            }
            let (best, running) = best?;
            servers[best]
                .rr_current
                .store(running - total, Ordering::Relaxed);
            Some(best)
        }
        Balance::LeastConnections => {
            let n = servers.len();
            let start = TIE_BREAK.fetch_add(1, Ordering::Relaxed) % n.max(1);
            let mut best: Option<(usize, Load)> = None;
            for k in 0..n {
                let i = (start + k) % n;
                let server = &servers[i];
                if !eligible(i, server) {
                    continue;
                }
                let load = Load::of(server, &mut clock);
                if best.is_none_or(|(_, b)| load.less_than(b)) {
                    best = Some((i, load));
                }
            }
            best.map(|(i, _)| i)
        }
        Balance::RandomTwo => {
            let count = candidates().count();
            if count == 0 {
                return None;
            }
            let first = fastrand::usize(..count);
            let second = if count > 1 {
                (first + 1 + fastrand::usize(..count - 1)) % count
            } else {
                first
            };
            let a = candidates().nth(first)?;
            let b = candidates().nth(second)?;
            let (load_a, load_b) = (Load::of(a.1, &mut clock), Load::of(b.1, &mut clock));
            Some(if load_b.less_than(load_a) { b.0 } else { a.0 })
        }
        Balance::SourceHash => {
            let key = hash_ip(client);
            candidates()
                .map(|(i, s)| {
                    let weight = s.effective_weight(&mut clock) as f64;
                    (i, rendezvous_score(key, s, weight))
                })
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(i, _)| i)
        }
    }
}

/// A server's active connections and effective weight, read once per choice.
#[derive(Clone, Copy)]
struct Load {
    active: u64,
    weight: u64,
}

impl Load {
    fn of(server: &Server, clock: &mut Clock) -> Load {
        Load {
            active: u64::from(server.active()),
            weight: server.effective_weight(clock),
        }
    }

    /// active/weight < other.active/other.weight, without division.
    fn less_than(self, other: Load) -> bool {
        self.active * other.weight < other.active * self.weight
    }
}

fn hash_ip(ip: IpAddr) -> u64 {
    // Map IPv4 and its IPv4-mapped IPv6 form to the same key.
    let bytes = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    fnv1a(0xcbf2_9ce4_8422_2325, &bytes)
}

/// Weighted rendezvous (highest random weight): -weight / ln(u), u uniform in (0, 1) from a
/// stable hash of (client, server). Stable across processes and versions, unlike std's hasher,
/// so every relay in a fleet maps a client to the same server.
fn rendezvous_score(client_key: u64, server: &Server, weight: f64) -> f64 {
    let mut h = fnv1a(client_key, server.name.as_bytes());
    h = match server.addr.ip() {
        IpAddr::V4(ip) => fnv1a(h, &ip.octets()),
        IpAddr::V6(ip) => fnv1a(h, &ip.octets()),
    };
    h = fnv1a(h, &server.addr.port().to_be_bytes());
    let mixed = splitmix64(h);
    let unit = ((mixed >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -weight / unit.ln()
}

fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
