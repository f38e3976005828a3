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

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Pool, Server};
use crate::config::Balance;

/// Rotates ties between equally loaded servers in least-connections.
static TIE_BREAK: AtomicUsize = AtomicUsize::new(0);

pub fn choose(
    pool: &Pool,
    client: IpAddr,
    eligible: &dyn Fn(usize, &Server) -> bool,
) -> Option<usize> {
    let servers = &pool.servers;
    let candidates = || servers.iter().enumerate().filter(|(i, s)| eligible(*i, s));
    match pool.balance {
        Balance::First => candidates().map(|(i, _)| i).next(),
        Balance::RoundRobin => {
            // Held for one pass over the pool's servers, once per new connection.
            let mut running = pool
                .round_robin
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let mut total = 0i64;
            let mut best: Option<usize> = None;
            for (i, server) in candidates() {
                running[i] += i64::from(server.weight);
                total += i64::from(server.weight);
                if best.is_none_or(|b| running[i] > running[b]) {
                    best = Some(i);
                }
            }
            let best = best?;
            running[best] -= total;
            Some(best)
        }
        Balance::LeastConnections => {
            let n = servers.len();
            let start = TIE_BREAK.fetch_add(1, Ordering::Relaxed) % n.max(1);
            let mut best: Option<(usize, &Server)> = None;
            for k in 0..n {
                let i = (start + k) % n;
                let server = &servers[i];
                if !eligible(i, server) {
                    continue;
                }
                if best.is_none_or(|(_, b)| less_loaded(server, b)) {
                    best = Some((i, server));
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
            Some(if less_loaded(b.1, a.1) { b.0 } else { a.0 })
        }
        Balance::SourceHash => {
            let key = hash_ip(client);
            candidates()
                .map(|(i, s)| (i, rendezvous_score(key, s)))
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(i, _)| i)
        }
    }
}

/// a/weight(a) < b/weight(b), without division.
fn less_loaded(a: &Server, b: &Server) -> bool {
    u64::from(a.active()) * u64::from(b.weight) < u64::from(b.active()) * u64::from(a.weight)
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
fn rendezvous_score(client_key: u64, server: &Server) -> f64 {
    let mut h = fnv1a(client_key, server.name.as_bytes());
    h = match server.addr.ip() {
        IpAddr::V4(ip) => fnv1a(h, &ip.octets()),
        IpAddr::V6(ip) => fnv1a(h, &ip.octets()),
    };
    h = fnv1a(h, &server.addr.port().to_be_bytes());
    let mixed = splitmix64(h);
    let unit = ((mixed >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -f64::from(server.weight) / unit.ln()
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
