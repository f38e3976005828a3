//! DNS for servers given by host name: resolve at start without blocking it, re-resolve as the
//! answer's TTL says, and turn each answer into the pool's set of addresses for that name.
//!
//! One refresher task per name runs on the control thread, with hickory's async resolver
//! (/etc/resolv.conf, or the pool's `nameservers`), never getaddrinfo. Its own cache is off: the
//! TTL the relay honours is the record's, clamped to `dns_min_ttl`..`dns_max_ttl`. A and AAAA
//! are asked together and every address is a server of the pool.
//!
//! A failed resolution (timeout, SERVFAIL, NXDOMAIN, an empty answer, or only public addresses
//! under `require_private`) keeps the last good addresses for `dns_hold`, retrying every
//! `dns_min_ttl`; after that the addresses go. Adding and removing servers is the pool's
//! (`Pool::set_addresses`).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::lookup::Lookup;
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::{ResolveError, TokioResolver};

use crate::upstream::pool::state::Reason;
use crate::upstream::pool::Pool;
use crate::upstream::pool::ServerConfig;

/// How the names of a pool's servers are resolved and re-resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Record TTLs are clamped to [min_ttl, max_ttl] to schedule the next resolution.
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    /// On resolver failure, the last good addresses are kept for this long.
    pub hold: Duration,
    /// Connections to an address DNS no longer returns are closed after this long; None: they
    /// end on their own.
    pub removed_grace: Option<Duration>,
    /// Per query (two attempts per nameserver).
    pub timeout: Duration,
    /// Empty: /etc/resolv.conf.
    pub nameservers: Vec<SocketAddr>,
    /// Refuse addresses that are not private (RFC 1918, RFC 4193, 100.64/10, loopback).
    pub require_private: bool,
}

/// True for addresses that never leave a private network: RFC 1918, RFC 6598 (100.64/10),
/// RFC 4193 (fc00::/7), and loopback (local setups and tests).
pub fn is_private(ip: std::net::IpAddr) -> bool {
    match ip.to_canonical() {
        std::net::IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_private() || v4.is_loopback() || (a == 100 && (b & 0xc0) == 64)
        }
        std::net::IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00 || v6.is_loopback(),
    }
}

/// A server name of a pool and what DNS last said about it.
pub struct NameState {
    /// Index of the server in the pool's config.
    pub config_index: usize,
    pub server_name: Arc<str>,
    pub host: Arc<str>,
    pub port: u16,
    record: Mutex<Record>,
}

#[derive(Debug, Clone, Default)]
struct Record {
    /// The addresses in use (the private ones, under `require_private`).
    addresses: Vec<IpAddr>,
    /// Addresses of the last answer that `require_private` refused.
    refused: Vec<IpAddr>,
    /// The last good answer's TTL (its smallest record's), as received.
    ttl: Option<Duration>,
    /// When the next resolution is due.
    next: Option<Instant>,
    last_result: Option<&'static str>,
    last_error: Option<String>,
    last_good: Option<SystemTime>,
    /// Since when resolutions have failed; None while they succeed.
    failing_since: Option<Instant>,
    /// Whether any answer (good or bad) has arrived.
    answered: bool,
}

impl NameState {
    /// `carried`: the same name in the pool this one replaces (a reload); its answer is kept.
    pub fn new(
        config_index: usize,
        server: &ServerConfig,
        host: &str,
        port: u16,
        carried: Option<&NameState>,
    ) -> NameState {
        NameState {
            config_index,
            server_name: Arc::from(server.name.as_str()),
            host: Arc::from(host),
            port,
            record: Mutex::new(carried.map(|c| c.lock().clone()).unwrap_or_default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The addresses in use now.
    pub fn addresses(&self) -> Vec<IpAddr> {
        self.lock().addresses.clone()
    }

    pub fn answered(&self) -> bool {
        self.lock().answered
    }

    /// The name as /status shows it.
    pub fn status(&self) -> serde_json::Value {
        let r = self.lock();
        let now = Instant::now();
        serde_json::json!({
            "server": &*self.server_name,
            "host": &*self.host,
            "port": self.port,
            "addresses": r.addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "refused": r.refused.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "ttl_secs": r.ttl.map(|t| t.as_secs()),
            "next_resolution_in_secs": r.next.map(|n| (n.saturating_duration_since(now).as_secs_f64() * 10.0).round() / 10.0),
            "last_result": r.last_result,
            "error": r.last_error,
            "last_good": r.last_good.map(crate::observe::access_log::rfc3339),
            "failing_for_secs": r.failing_since.map(|s| now.duration_since(s).as_secs()),
        })
    }
}

/// Starts resolving `pool.names[index]` on the current runtime, until the pool stops.
pub fn spawn(pool: Arc<Pool>, index: usize) {
    tokio::spawn(refresh(pool, index));
}

async fn refresh(pool: Arc<Pool>, index: usize) {
    let mut stop = pool.stopped();
    let name = &pool.names[index];
    let resolver = match resolver(&pool.config.dns) {
        Ok(resolver) => resolver,
        Err(e) => {
            tracing::error!(pool = %pool.name, server = %name.server_name, "cannot resolve {}: {e}", name.host);
            let first = {
                let mut r = name.lock();
                r.last_error = Some(e);
                r.last_result = Some("error");
                !std::mem::replace(&mut r.answered, true)
            };
            pool.metrics.count_dns("error");
            if first {
                pool.name_answered();
            }
            return;
        }
    };
    // A name carried over a reload waits for its answer's refresh time.
    let mut due = name.lock().next.unwrap_or_else(Instant::now);
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(due.into()) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        let answer = tokio::select! {
            answer = lookup(&resolver, &name.host) => answer,
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        due = apply(&pool, index, answer);
    }
}

fn resolver(dns: &DnsConfig) -> Result<TokioResolver, String> {
    let mut builder = if dns.nameservers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| format!("reading /etc/resolv.conf: {e}"))?
    } else {
        let servers: Vec<NameServerConfig> = dns
            .nameservers
            .iter()
            .flat_map(|addr| {
                // TCP only for answers too large for UDP.
                [
                    NameServerConfig::new(*addr, Protocol::Udp),
                    NameServerConfig::new(*addr, Protocol::Tcp),
                ]
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, Vec::new(), servers),
            TokioConnectionProvider::default(),
        )
    };
    let options = builder.options_mut();
    options.timeout = dns.timeout;
    options.attempts = 2;
    // The relay schedules by the records' TTLs itself; a cache would hand back old answers
    // when dns_max_ttl is below a record's TTL.
    options.cache_size = 0;
    Ok(builder.build())
}

/// What one record type's query returned.
#[derive(Debug)]
enum Family {
    Records {
        addresses: Vec<IpAddr>,
        ttl: Duration,
    },
    NoRecords {
        nxdomain: bool,
    },
    Failed {
        kind: &'static str,
        text: String,
    },
}

async fn lookup(resolver: &TokioResolver, host: &str) -> [Family; 2] {
    let (v4, v6) = tokio::join!(
        resolver.lookup(host, RecordType::A),
        resolver.lookup(host, RecordType::AAAA)
    );
    [family(v4), family(v6)]
}

fn family(result: Result<Lookup, ResolveError>) -> Family {
    match result {
        Ok(lookup) => {
            let mut addresses = Vec::new();
            let mut ttl: Option<u32> = None;
            for record in lookup.records() {
                // CNAMEs count towards the TTL: the chain is only as fresh as its shortest link.
                ttl = Some(ttl.map_or(record.ttl(), |t| t.min(record.ttl())));
                match record.data() {
                    RData::A(a) => addresses.push(IpAddr::V4(a.0)),
                    RData::AAAA(aaaa) => addresses.push(IpAddr::V6(aaaa.0)),
                    _ => {}
                }
            }
            addresses.sort();
            addresses.dedup();
            if addresses.is_empty() {
                Family::NoRecords { nxdomain: false }
            } else {
                Family::Records {
                    addresses,
                    ttl: Duration::from_secs(u64::from(ttl.unwrap_or(0))),
                }
            }
        }
        Err(e) => classify(&e),
    }
}

fn classify(e: &ResolveError) -> Family {
    let Some(proto) = e.proto() else {
        return Family::Failed {
            kind: "error",
            text: e.to_string(),
        };
    };
    match proto.kind() {
        ProtoErrorKind::NoRecordsFound { response_code, .. } => match *response_code {
            ResponseCode::NXDomain => Family::NoRecords { nxdomain: true },
            ResponseCode::NoError => Family::NoRecords { nxdomain: false },
            ResponseCode::ServFail => Family::Failed {
                kind: "servfail",
                text: "the nameserver answered SERVFAIL".to_string(),
            },
            other => Family::Failed {
                kind: "error",
                text: format!("the nameserver answered {other}"),
            },
        },
        ProtoErrorKind::Timeout => Family::Failed {
            kind: "timeout",
            text: "no answer from the nameservers (timeout)".to_string(),
        },
        _ => Family::Failed {
            kind: "error",
            text: e.to_string(),
        },
    }
}

/// What an answer means for the name, from its two queries: a usable set of addresses, or
/// why not.
#[derive(Debug, PartialEq)]
struct Verdict {
    accepted: Vec<IpAddr>,
    refused: Vec<IpAddr>,
    ttl: Option<Duration>,
    /// None: a good answer. Else a `telemetry::DNS_RESULTS` word and the text to show.
    failure: Option<(&'static str, String)>,
}

fn judge(answer: [Family; 2], require_private: bool) -> Verdict {
    let mut fresh = Vec::new();
    let mut ttl: Option<Duration> = None;
    let mut failure = None;
    let mut nxdomain = false;
    for family in answer {
        match family {
            Family::Records { addresses, ttl: t } => {
                fresh.extend(addresses);
                ttl = Some(ttl.map_or(t, |old| old.min(t)));
            }
            Family::NoRecords { nxdomain: nx } => nxdomain |= nx,
            Family::Failed { kind, text } => {
                failure.get_or_insert((kind, text));
            }
        }
    }
    if failure.is_none() && fresh.is_empty() {
        failure = Some(if nxdomain {
            ("nxdomain", "no such name (NXDOMAIN)".to_string())
        } else {
            ("empty", "no A or AAAA records".to_string())
        });
    }
    let (accepted, refused): (Vec<IpAddr>, Vec<IpAddr>) = fresh
        .into_iter()
        .partition(|ip| !require_private || is_private(*ip));
    if failure.is_none() && accepted.is_empty() && !refused.is_empty() {
        failure = Some(("public_refused", public_refused(&refused)));
    }
    Verdict {
        accepted,
        refused,
        ttl,
        failure,
    }
}

fn public_refused(refused: &[IpAddr]) -> String {
    let list: Vec<String> = refused.iter().map(|a| a.to_string()).collect();
    format!(
        "public address refused: private DNS zone missing? ({})",
        list.join(", ")
    )
}

/// Records an answer, updates the pool's servers, and returns when to resolve next.
fn apply(pool: &Arc<Pool>, index: usize, answer: [Family; 2]) -> Instant {
    let dns = &pool.config.dns;
    let name = &pool.names[index];
    let verdict = judge(answer, dns.require_private);
    let result = verdict.failure.as_ref().map_or("ok", |f| f.0);
    pool.metrics.count_dns(result);
    let now = Instant::now();
    let host = &name.host;

    let mut record = name.lock();
    let first = !std::mem::replace(&mut record.answered, true);
    record.last_result = Some(result);
    record.refused = verdict.refused.clone();
    // Some: the pool's addresses for this name become these, removed ones for this reason.
    let mut new_set: Option<(Vec<IpAddr>, String)> = None;
    let wait = match verdict.failure {
        None => {
            if record.failing_since.take().is_some() {
                tracing::info!(pool = %pool.name, server = %name.server_name, "{host} resolves again");
            }
            if !verdict.refused.is_empty() {
                tracing::warn!(pool = %pool.name, server = %name.server_name, "{host}: {}", public_refused(&verdict.refused));
            }
            record.last_error =
                (!verdict.refused.is_empty()).then(|| public_refused(&verdict.refused));
            record.last_good = Some(SystemTime::now());
            record.ttl = verdict.ttl;
            record.addresses = verdict.accepted.clone();
            new_set = Some((
                verdict.accepted,
                format!("DNS gone: {host} no longer resolves to it"),
            ));
            verdict
                .ttl
                .unwrap_or(dns.min_ttl)
                .clamp(dns.min_ttl, dns.max_ttl)
        }
        Some((_, text)) => {
            let since = *record.failing_since.get_or_insert(now);
            let held = !record.addresses.is_empty();
            if record.last_error.as_deref() != Some(text.as_str()) {
                if held {
                    tracing::warn!(pool = %pool.name, server = %name.server_name, "{host}: {text}; keeping its last good addresses for up to {:?}", dns.hold);
                } else {
                    tracing::warn!(pool = %pool.name, server = %name.server_name, "{host}: {text}");
                }
            }
            record.last_error = Some(text.clone());
            if !held {
                // Nothing to keep: whatever part of the answer was usable is better than none.
                if !verdict.accepted.is_empty() {
                    record.addresses = verdict.accepted.clone();
                    new_set = Some((verdict.accepted, format!("DNS gone: {text}")));
                }
            } else if now.duration_since(since) >= dns.hold {
                tracing::warn!(pool = %pool.name, server = %name.server_name, "{host}: failing for longer than dns_hold ({:?}): dropping its last good addresses", dns.hold);
                record.addresses = verdict.accepted.clone();
                new_set = Some((
                    verdict.accepted,
                    format!("DNS gone: {text} (for longer than dns_hold)"),
                ));
            }
            dns.min_ttl
        }
    };
    let next = now + wait;
    record.next = Some(next);
    drop(record);

    if let Some((addresses, why)) = new_set {
        pool.set_addresses(index, &addresses, &Reason::new("dns", why));
    }
    if first {
        pool.name_answered();
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(ips: &[&str], ttl: u64) -> Family {
        Family::Records {
            addresses: ips.iter().map(|a| a.parse().unwrap()).collect(),
            ttl: Duration::from_secs(ttl),
        }
    }

    #[test]
    fn both_families_count_and_the_smallest_ttl_wins() {
        let v = judge(
            [records(&["10.0.0.1"], 30), records(&["fd00::1"], 10)],
            true,
        );
        assert_eq!(v.failure, None);
        assert_eq!(v.accepted.len(), 2);
        assert_eq!(v.ttl, Some(Duration::from_secs(10)));
    }

    #[test]
    fn empty_nxdomain_and_failures() {
        let none = || Family::NoRecords { nxdomain: false };
        assert_eq!(judge([none(), none()], false).failure.unwrap().0, "empty");
        let nx = || Family::NoRecords { nxdomain: true };
        assert_eq!(judge([nx(), nx()], false).failure.unwrap().0, "nxdomain");
        let servfail = Family::Failed {
            kind: "servfail",
            text: "x".into(),
        };
        // A failure in one family makes the whole answer a failure, even with records in the
        // other: the last good set is kept rather than half of it dropped.
        let v = judge([records(&["10.0.0.1"], 5), servfail], false);
        assert_eq!(v.failure.unwrap().0, "servfail");
        assert_eq!(v.accepted.len(), 1);
        // AAAA empty for an IPv4-only name is normal.
        assert_eq!(
            judge([records(&["10.0.0.1"], 5), none()], false).failure,
            None
        );
    }

    #[test]
    fn require_private_refuses_public_addresses() {
        let v = judge(
            [
                records(&["8.8.8.8", "10.1.2.3"], 5),
                Family::NoRecords { nxdomain: false },
            ],
            true,
        );
        assert_eq!(v.failure, None);
        assert_eq!(v.accepted, vec!["10.1.2.3".parse::<IpAddr>().unwrap()]);
        assert_eq!(v.refused, vec!["8.8.8.8".parse::<IpAddr>().unwrap()]);
        let v = judge(
            [
                records(&["8.8.8.8"], 5),
                Family::NoRecords { nxdomain: false },
            ],
            true,
        );
        let (kind, text) = v.failure.unwrap();
        assert_eq!(kind, "public_refused");
        assert!(text.contains("private DNS zone missing?"), "{text}");
        assert!(v.accepted.is_empty());
        let v = judge(
            [
                records(&["8.8.8.8"], 5),
                Family::NoRecords { nxdomain: false },
            ],
            false,
        );
        assert_eq!(v.failure, None, "without require_private any address goes");
    }

    #[test]
    fn private_ranges() {
        for private in [
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "127.0.0.5",
            "fd12::1",
            "fc00::1",
            "::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_private(private.parse().unwrap()), "{private}");
        }
        for public in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "100.63.255.255",
            "20.1.2.3",
            "2001:4860::8888",
            "fe80::1",
        ] {
            assert!(!is_private(public.parse().unwrap()), "{public}");
        }
    }
}
