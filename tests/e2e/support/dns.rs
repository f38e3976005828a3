//! A test DNS server on loopback (UDP, RFC 1035): it answers A queries for `svc.test` from a
//! zone the test changes (records, TTL, SERVFAIL, or silence), NXDOMAIN for other names.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;

/// How the test DNS server answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Answer,
    ServFail,
    /// No answer at all: the resolver times out.
    Silent,
}

pub struct Zone {
    pub mode: Mode,
    /// A records of `svc.test`; AAAA queries get an empty answer.
    pub a: Vec<Ipv4Addr>,
    pub ttl: u32,
    /// A queries for `svc.test` received.
    pub a_queries: usize,
}

pub type SharedZone = Arc<Mutex<Zone>>;

/// Serves `zone` on 127.0.0.1 over UDP.
pub async fn dns_server(zone: SharedZone) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let reply = answer(&buf[..n], &mut zone.lock().unwrap());
            if let Some(reply) = reply {
                let _ = socket.send_to(&reply, from).await;
            }
        }
    });
    addr
}

/// The reply to one query (RFC 1035 4.1), or None to stay silent.
fn answer(query: &[u8], zone: &mut Zone) -> Option<Vec<u8>> {
    if query.len() < 12 || query[4..6] != [0, 1] {
        return None;
    }
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *query.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*query.get(i)?, *query.get(i + 1)?]);
    let question = query.get(12..i + 4)?;
    let ours = labels.join(".") == "svc.test";
    if ours && qtype == 1 {
        zone.a_queries += 1;
    }
    let (rcode, records): (u8, Vec<Ipv4Addr>) = match zone.mode {
        Mode::Silent => return None,
        Mode::ServFail => (2, Vec::new()),
        Mode::Answer if !ours => (3, Vec::new()),
        Mode::Answer if qtype == 1 => (0, zone.a.clone()),
        Mode::Answer => (0, Vec::new()),
    };
    let mut reply = Vec::with_capacity(512);
    reply.extend_from_slice(&query[0..2]);
    // QR, the query's RD, RA, and the rcode.
    reply.push(0x80 | (query[2] & 0x01));
    reply.push(0x80 | rcode);
    reply.extend_from_slice(&[0, 1]);
    reply.extend_from_slice(&(records.len() as u16).to_be_bytes());
    reply.extend_from_slice(&[0, 0, 0, 0]);
    reply.extend_from_slice(question);
    for ip in records {
        reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        reply.extend_from_slice(&zone.ttl.to_be_bytes());
        reply.extend_from_slice(&[0, 4]);
        reply.extend_from_slice(&ip.octets());
    }
    Some(reply)
}

pub fn zone(mode: Mode, a: &[&str], ttl: u32) -> SharedZone {
    Arc::new(Mutex::new(Zone {
        mode,
        a: a.iter().map(|ip| ip.parse().unwrap()).collect(),
        ttl,
        a_queries: 0,
    }))
}

pub fn set_zone(zone: &SharedZone, mode: Mode, a: &[&str], ttl: u32) {
    let mut z = zone.lock().unwrap();
    z.mode = mode;
    z.a = a.iter().map(|ip| ip.parse().unwrap()).collect();
    z.ttl = ttl;
}
