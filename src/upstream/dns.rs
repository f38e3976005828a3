//! DNS for servers given by host name: resolve at start without blocking it, re-resolve as the
//! answer's TTL says, and turn each answer into the pool's set of addresses for that name.
//!
//! One refresher task per name runs on the control thread, with hickory's async resolver
//! (/etc/resolv.conf, or the pool's `nameservers`), never getaddrinfo. Its own cache is off: the
//! TTL the relay honours is the answer's, the lowest along the whole CNAME chain, clamped to
//! `dns_min_ttl`..`dns_max_ttl`. A and AAAA are asked together (or one of them, `dns_family`)
//! and every address is a server of the pool.
//!
//! A family that answers is a good answer: when the other one fails (REFUSED, SERVFAIL, a
//! timeout: what dnsmasq without upstreams and some corporate resolvers say to AAAA), the
//! failure is shown in /status and that family keeps its own last good addresses for
//! `dns_hold`. Only when no family produces an address (a failure, NXDOMAIN, an empty answer,
//! or only public addresses under `require_private`) does the name fail: its last good
//! addresses are kept for `dns_hold`, retrying every `dns_min_ttl`; after that they go. Adding
//! and removing servers is the pool's (`Pool::set_addresses`).

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
    /// Which record types are asked for.
    pub family: DnsFamily,
}

/// The address families a name is resolved to (`dns_family`): HAProxy's `resolve-prefer`,
/// nginx's `ipv6=off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DnsFamily {
    /// A only.
    Ipv4,
    /// AAAA only.
    Ipv6,
    /// A and AAAA.
    #[default]
    Any,
}

impl DnsFamily {
    /// Whether query `QUERIES[index]` is asked.
    fn asks(self, index: usize) -> bool {
        match self {
            DnsFamily::Any => true,
            DnsFamily::Ipv4 => index == V4,
            DnsFamily::Ipv6 => index == V6,
        }
    }
}

/// The two queries of a resolution, and the index of each in an `Answer`.
const QUERIES: [(RecordType, &str); 2] = [(RecordType::A, "A"), (RecordType::AAAA, "AAAA")];
const V4: usize = 0;
const V6: usize = 1;

/// The index in `QUERIES` of the query an address comes from.
fn query_of(ip: &IpAddr) -> usize {
    match ip {
        IpAddr::V4(_) => V4,
        IpAddr::V6(_) => V6,
    }
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
    /// The last good answer's TTL (its smallest record's, CNAMEs included), as received.
    ttl: Option<Duration>,
    /// When the next resolution is due.
    next: Option<Instant>,
    last_result: Option<&'static str>,
    last_error: Option<String>,
    last_good: Option<SystemTime>,
    /// Since when resolutions have failed; None while they succeed.
    failing_since: Option<Instant>,
    /// Per query (A, AAAA): since when it has failed, and the latest reason; None while it
    /// answers (records or none) or is not asked.
    query_failing: [Option<(Instant, String)>; 2],
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
        let query_errors: serde_json::Map<String, serde_json::Value> = QUERIES
            .iter()
            .zip(&r.query_failing)
            .filter_map(|((_, query), failing)| {
                let (since, text) = failing.as_ref()?;
                Some((
                    query.to_string(),
                    serde_json::json!({
                        "error": text,
                        "failing_for_secs": now.duration_since(*since).as_secs(),
                    }),
                ))
            })
            .collect();
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
            "query_errors": query_errors,
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
    let family = pool.config.dns.family;
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
    // A name carried over a reload waits for its answer's refresh time, unless dns_family no
    // longer asks for some of its addresses.
    let mut due = {
        let r = name.lock();
        match r.next {
            Some(next) if r.addresses.iter().all(|a| family.asks(query_of(a))) => next,
            _ => Instant::now(),
        }
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(due.into()) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        // A failure dates from the question: the resolver was gone when it was asked, not
        // only once its timeouts ran out.
        let asked = Instant::now();
        let answer = tokio::select! {
            answer = lookup(&resolver, &name.host, family) => answer,
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        due = apply(&pool, index, answer, asked);
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
    // The CNAMEs of a chain stay in the answer, so their TTLs count (hickory's default, relied
    // on here).
    options.preserve_intermediates = true;
    Ok(builder.build())
}

/// What one query (A or AAAA) returned.
#[derive(Debug)]
enum Reply {
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

/// The replies to a resolution's queries, A then AAAA; None for a query `dns_family` does not
/// ask.
type Answer = [Option<Reply>; 2];

async fn lookup(resolver: &TokioResolver, host: &str, family: DnsFamily) -> Answer {
    let ask = |index: usize| async move {
        if !family.asks(index) {
            return None;
        }
        Some(reply(resolver.lookup(host, QUERIES[index].0).await))
    };
    let (v4, v6) = tokio::join!(ask(V4), ask(V6));
    [v4, v6]
}

fn reply(result: Result<Lookup, ResolveError>) -> Reply {
    match result {
        Ok(lookup) => {
            // Every link of a CNAME chain counts towards the TTL: the chain is only as fresh
            // as its shortest link (a 10 s CNAME before a 1-day A record is 10 s). The records
            // carry their own TTLs, CNAMEs included; hickory's deadline is the same minimum,
            // taken too in case a chain's CNAMEs were left out of the records.
            let until_deadline = lookup
                .valid_until()
                .saturating_duration_since(Instant::now());
            let deadline_secs =
                until_deadline.as_secs() + u64::from(until_deadline.subsec_nanos() > 0);
            let mut ttl = deadline_secs;
            let mut addresses = Vec::new();
            for record in lookup.records() {
                ttl = ttl.min(u64::from(record.ttl()));
                match record.data() {
                    RData::A(a) => addresses.push(IpAddr::V4(a.0)),
                    RData::AAAA(aaaa) => addresses.push(IpAddr::V6(aaaa.0)),
                    _ => {}
                }
            }
            addresses.sort();
            addresses.dedup();
            if addresses.is_empty() {
                Reply::NoRecords { nxdomain: false }
            } else {
                Reply::Records {
                    addresses,
                    ttl: Duration::from_secs(ttl),
                }
            }
        }
        Err(e) => classify(&e),
    }
}

fn classify(e: &ResolveError) -> Reply {
    let Some(proto) = e.proto() else {
        return Reply::Failed {
            kind: "error",
            text: e.to_string(),
        };
    };
    match proto.kind() {
        ProtoErrorKind::NoRecordsFound { response_code, .. } => match *response_code {
            ResponseCode::NXDomain => Reply::NoRecords { nxdomain: true },
            ResponseCode::NoError => Reply::NoRecords { nxdomain: false },
            ResponseCode::ServFail => Reply::Failed {
                kind: "servfail",
                text: "the nameserver answered SERVFAIL".to_string(),
            },
            ResponseCode::Refused => Reply::Failed {
                kind: "error",
                text: "the nameserver answered REFUSED".to_string(),
            },
            other => Reply::Failed {
                kind: "error",
                text: format!("the nameserver answered {other}"),
            },
        },
        ProtoErrorKind::Timeout => Reply::Failed {
            kind: "timeout",
            text: "no answer from the nameservers (timeout)".to_string(),
        },
        _ => Reply::Failed {
            kind: "error",
            text: e.to_string(),
        },
    }
}

/// What an answer means for the name: a usable set of addresses, or why not.
#[derive(Debug, PartialEq)]
struct Verdict {
    /// The fresh addresses: those of the queries that returned records.
    accepted: Vec<IpAddr>,
    refused: Vec<IpAddr>,
    ttl: Option<Duration>,
    /// None: a good answer (some query produced a usable address). Else a
    /// `telemetry::DNS_RESULTS` word and the text to show.
    failure: Option<(&'static str, String)>,
    /// Per query (A, AAAA): why it failed, when it did. Beside a good answer from the other
    /// query this is shown, not fatal.
    query_failures: [Option<String>; 2],
}

fn judge(answer: Answer, require_private: bool) -> Verdict {
    let asked: Vec<&str> = QUERIES
        .iter()
        .zip(&answer)
        .filter(|(_, reply)| reply.is_some())
        .map(|((_, query), _)| *query)
        .collect();
    let mut fresh = Vec::new();
    let mut ttl: Option<Duration> = None;
    let mut first_failure = None;
    let mut nxdomain = false;
    let mut query_failures = [None, None];
    for (index, reply) in answer.into_iter().enumerate() {
        match reply {
            None => {}
            Some(Reply::Records { addresses, ttl: t }) => {
                fresh.extend(addresses);
                ttl = Some(ttl.map_or(t, |old| old.min(t)));
            }
            Some(Reply::NoRecords { nxdomain: nx }) => nxdomain |= nx,
            Some(Reply::Failed { kind, text }) => {
                first_failure.get_or_insert((kind, text.clone()));
                query_failures[index] = Some(text);
            }
        }
    }
    let mut failure = None;
    if fresh.is_empty() {
        failure = Some(first_failure.unwrap_or_else(|| {
            if nxdomain {
                ("nxdomain", "no such name (NXDOMAIN)".to_string())
            } else {
                ("empty", format!("no {} records", asked.join(" or ")))
            }
        }));
    }
    let (accepted, refused): (Vec<IpAddr>, Vec<IpAddr>) = fresh
        .into_iter()
        .partition(|ip| !require_private || is_private(*ip));
    if failure.is_none() && accepted.is_empty() {
        failure = Some(("public_refused", public_refused(&refused)));
    }
    Verdict {
        accepted,
        refused,
        ttl,
        failure,
        query_failures,
    }
}

fn public_refused(refused: &[IpAddr]) -> String {
    let list: Vec<String> = refused.iter().map(|a| a.to_string()).collect();
    format!(
        "public address refused: private DNS zone missing? ({})",
        list.join(", ")
    )
}

/// Notes which queries fail, and returns the addresses that failing queries keep: while the
/// other query answers, each failing one keeps its own last good addresses for `hold` (a
/// resolver that times out on AAAA once does not empty the IPv6 half), counted from when the
/// first failing query was `asked`. `note` gets what changed, once, and whether it is a
/// warning.
fn carry_failing_queries(
    record: &mut Record,
    verdict: &Verdict,
    hold: Duration,
    (asked, now): (Instant, Instant),
    note: impl Fn(bool, String),
) -> Vec<IpAddr> {
    let mut held = Vec::new();
    for (query, failure) in verdict.query_failures.iter().enumerate() {
        let label = QUERIES[query].1;
        let Some(text) = failure else {
            if record.query_failing[query].take().is_some() && verdict.failure.is_none() {
                note(false, format!("the {label} query no longer fails"));
            }
            continue;
        };
        let since = record.query_failing[query].as_ref().map_or(asked, |f| f.0);
        // Said again when the name recovers on the other query after failing as a whole.
        let changed = record.query_failing[query].as_ref().map(|f| &f.1) != Some(text)
            || record.failing_since.is_some();
        record.query_failing[query] = Some((since, text.clone()));
        if verdict.failure.is_some() {
            // The whole name failed: its own hold keeps every address.
            continue;
        }
        let last: Vec<IpAddr> = record
            .addresses
            .iter()
            .filter(|a| query_of(a) == query)
            .copied()
            .collect();
        if changed {
            let keeping = if last.is_empty() {
                String::new()
            } else {
                format!(" and keeping its last addresses for up to {hold:?}")
            };
            note(
                true,
                format!("the {label} query failed ({text}); using the other answer{keeping}"),
            );
        }
        if now.duration_since(since) < hold {
            held.extend(last);
        } else if !last.is_empty() {
            let text = format!("the {label} query has failed for longer than dns_hold ({hold:?}): dropping its last good addresses");
            note(true, text);
        }
    }
    held
}

/// Records an answer, updates the pool's servers, and returns when to resolve next.
fn apply(pool: &Arc<Pool>, index: usize, answer: Answer, asked: Instant) -> Instant {
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
    let held = carry_failing_queries(
        &mut record,
        &verdict,
        dns.hold,
        (asked, now),
        |warning, text| {
            if warning {
                tracing::warn!(pool = %pool.name, server = %name.server_name, "{host}: {text}");
            } else {
                tracing::info!(pool = %pool.name, server = %name.server_name, "{host}: {text}");
            }
        },
    );
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
            let mut addresses = verdict.accepted;
            addresses.extend(held);
            addresses.sort();
            addresses.dedup();
            record.addresses = addresses.clone();
            new_set = Some((
                addresses,
                format!("DNS gone: {host} no longer resolves to it"),
            ));
            verdict
                .ttl
                .unwrap_or(dns.min_ttl)
                .clamp(dns.min_ttl, dns.max_ttl)
        }
        Some((_, text)) => {
            let since = *record.failing_since.get_or_insert(asked);
            let held = !record.addresses.is_empty();
            if record.last_error.as_deref() != Some(text.as_str()) {
                if held {
                    tracing::warn!(pool = %pool.name, server = %name.server_name, "{host}: {text}; keeping its last good addresses for up to {:?}", dns.hold);
                } else {
                    tracing::warn!(pool = %pool.name, server = %name.server_name, "{host}: {text}");
                }
            }
            record.last_error = Some(text.clone());
            if held && now.duration_since(since) >= dns.hold {
                tracing::warn!(pool = %pool.name, server = %name.server_name, "{host}: failing for longer than dns_hold ({:?}): dropping its last good addresses", dns.hold);
                record.addresses.clear();
                new_set = Some((
                    Vec::new(),
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

    fn records(ips: &[&str], ttl: u64) -> Option<Reply> {
        Some(Reply::Records {
            addresses: ips.iter().map(|a| a.parse().unwrap()).collect(),
            ttl: Duration::from_secs(ttl),
        })
    }

    fn none() -> Option<Reply> {
        Some(Reply::NoRecords { nxdomain: false })
    }

    fn nxdomain() -> Option<Reply> {
        Some(Reply::NoRecords { nxdomain: true })
    }

    fn failed(kind: &'static str) -> Option<Reply> {
        Some(Reply::Failed {
            kind,
            text: format!("{kind} text"),
        })
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
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
    fn a_family_that_answers_is_a_good_answer_when_the_other_fails() {
        // dnsmasq without upstreams answers AAAA with REFUSED; some resolvers SERVFAIL or
        // time out. The A answer is good; the AAAA failure is shown beside it.
        for kind in ["error", "servfail", "timeout"] {
            let v = judge([records(&["10.0.0.1"], 5), failed(kind)], false);
            assert_eq!(v.failure, None, "{kind}");
            assert_eq!(v.accepted, ips(&["10.0.0.1"]));
            assert_eq!(v.ttl, Some(Duration::from_secs(5)));
            assert_eq!(v.query_failures, [None, Some(format!("{kind} text"))]);
        }
        let v = judge([failed("timeout"), records(&["fd00::1"], 5)], false);
        assert_eq!(v.failure, None);
        assert_eq!(v.query_failures, [Some("timeout text".to_string()), None]);
    }

    #[test]
    fn no_addresses_from_any_family_is_a_failure() {
        assert_eq!(judge([none(), none()], false).failure.unwrap().0, "empty");
        assert_eq!(
            judge([nxdomain(), nxdomain()], false).failure.unwrap().0,
            "nxdomain"
        );
        // A failure wins over an empty answer of the other family: it may be the one that
        // would have had the records.
        let v = judge([failed("servfail"), none()], false);
        assert_eq!(v.failure.unwrap().0, "servfail");
        let v = judge([failed("timeout"), failed("servfail")], false);
        assert_eq!(v.failure.unwrap(), ("timeout", "timeout text".to_string()));
        // AAAA empty for an IPv4-only name is normal.
        assert_eq!(
            judge([records(&["10.0.0.1"], 5), none()], false).failure,
            None
        );
    }

    #[test]
    fn dns_family_asks_one_query_and_says_which() {
        assert!(DnsFamily::Ipv4.asks(V4) && !DnsFamily::Ipv4.asks(V6));
        assert!(!DnsFamily::Ipv6.asks(V4) && DnsFamily::Ipv6.asks(V6));
        assert!(DnsFamily::Any.asks(V4) && DnsFamily::Any.asks(V6));
        let v = judge([none(), None], false);
        assert_eq!(v.failure.unwrap(), ("empty", "no A records".to_string()));
        let v = judge([None, none()], false);
        assert_eq!(v.failure.unwrap(), ("empty", "no AAAA records".to_string()));
        let v = judge([none(), none()], false);
        assert_eq!(v.failure.unwrap().1, "no A or AAAA records");
        let v = judge([None, records(&["fd00::2"], 7)], false);
        assert_eq!(v.failure, None);
        assert_eq!(v.accepted, ips(&["fd00::2"]));
    }

    #[test]
    fn a_failing_query_keeps_its_own_last_addresses_for_dns_hold() {
        let hold = Duration::from_secs(10);
        let start = Instant::now();
        let mut record = Record {
            addresses: ips(&["10.0.0.1", "fd00::1"]),
            ..Record::default()
        };
        let notes = std::cell::RefCell::new(Vec::new());
        let note = |warning: bool, text: String| notes.borrow_mut().push((warning, text));

        // AAAA fails while A answers: the IPv6 address stays, said once.
        let v = judge([records(&["10.0.0.2"], 5), failed("timeout")], false);
        let held = carry_failing_queries(&mut record, &v, hold, (start, start), note);
        assert_eq!(held, ips(&["fd00::1"]));
        assert_eq!(record.query_failing[V6].as_ref().unwrap().0, start);
        let later = start + Duration::from_secs(5);
        let held = carry_failing_queries(&mut record, &v, hold, (later, later), note);
        assert_eq!(held, ips(&["fd00::1"]));
        assert_eq!(record.query_failing[V6].as_ref().unwrap().0, start);
        assert_eq!(notes.borrow().len(), 1, "{:?}", notes.borrow());
        assert!(notes.borrow()[0]
            .1
            .contains("the AAAA query failed (timeout text)"));
        assert!(notes.borrow()[0].1.contains("keeping its last addresses"));

        // Past dns_hold: dropped.
        let held = carry_failing_queries(&mut record, &v, hold, (start + hold, start + hold), note);
        assert!(held.is_empty());
        assert!(notes.borrow()[1].1.contains("longer than dns_hold"));

        // Answers again: no longer failing.
        let v = judge([records(&["10.0.0.2"], 5), records(&["fd00::3"], 5)], false);
        let held = carry_failing_queries(&mut record, &v, hold, (start + hold, start + hold), note);
        assert!(held.is_empty());
        assert!(record.query_failing[V6].is_none());
        assert_eq!(
            notes.borrow()[2],
            (false, "the AAAA query no longer fails".to_string())
        );

        // An empty AAAA answer is an answer: nothing held.
        let v = judge([records(&["10.0.0.2"], 5), none()], false);
        assert!(carry_failing_queries(&mut record, &v, hold, (start, start), note).is_empty());
    }

    #[test]
    fn require_private_refuses_public_addresses() {
        let v = judge([records(&["8.8.8.8", "10.1.2.3"], 5), none()], true);
        assert_eq!(v.failure, None);
        assert_eq!(v.accepted, ips(&["10.1.2.3"]));
        assert_eq!(v.refused, ips(&["8.8.8.8"]));
        let v = judge([records(&["8.8.8.8"], 5), none()], true);
        let (kind, text) = v.failure.unwrap();
        assert_eq!(kind, "public_refused");
        assert!(text.contains("private DNS zone missing?"), "{text}");
        assert!(v.accepted.is_empty());
        let v = judge([records(&["8.8.8.8"], 5), failed("error")], true);
        assert_eq!(v.failure.unwrap().0, "public_refused");
        let v = judge([records(&["8.8.8.8"], 5), none()], false);
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
