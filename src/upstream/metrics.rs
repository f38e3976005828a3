//! What a pool's and a server's connects, health checks and resolutions are counted under:
//! registered once per config generation, counted into handles.

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};

use crate::observe::telemetry::{
    CHECK_RESULTS, DNS_ADDRESSES, DNS_RESOLUTIONS, DNS_RESULTS, FIRST_BYTE_SECONDS, HEALTH_CHECKS,
    HEALTH_CHECK_SECONDS, SERVER_ACTIVE, SERVER_STATE, SERVER_STATES, SERVER_UP,
    SOURCE_CONNECTIONS, TLS_HANDSHAKE_KINDS, UPSTREAM_CONNECTIONS, UPSTREAM_CONNECT_SECONDS,
    UPSTREAM_RETRIES, UPSTREAM_TLS_HANDSHAKES,
};
use crate::upstream::connect::AttemptResult;

/// What connect attempts to one server are counted under; shared by every address of a server
/// given by name (the labels are the config's names).
pub struct ServerMetrics {
    results: [Counter; 4],
    pub up: Gauge,
    pub active: Gauge,
    checks: [Counter; CHECK_RESULTS.len()],
    /// Indexed like `SERVER_STATES`.
    pub states: [Gauge; SERVER_STATES.len()],
    /// Only for a server given by name.
    pub dns_addresses: Option<Gauge>,
    /// Connections open from each source address of the pool (every address of the server).
    pub sources: Vec<Gauge>,
    /// Upstream TLS handshakes, indexed like `TLS_HANDSHAKE_KINDS`; only in a pool that
    /// originates TLS.
    tls_handshakes: Option<[Counter; TLS_HANDSHAKE_KINDS.len()]>,
}

impl ServerMetrics {
    /// `sources`: the `source` labels, one per source address of the pool; `tls`: whether the
    /// pool originates TLS.
    pub fn new(
        pool: &str,
        server: &str,
        by_name: bool,
        tls: bool,
        sources: &[String],
    ) -> ServerMetrics {
        let (p, s) = (pool.to_string(), server.to_string());
        let result = |r: AttemptResult| counter!(UPSTREAM_CONNECTIONS, "pool" => p.clone(), "server" => s.clone(), "result" => r.as_str());
        ServerMetrics {
            results: [
                result(AttemptResult::Ok),
                result(AttemptResult::Refused),
                result(AttemptResult::Timeout),
                result(AttemptResult::Error),
            ],
            up: gauge!(SERVER_UP, "pool" => p.clone(), "server" => s.clone()),
            active: gauge!(SERVER_ACTIVE, "pool" => p.clone(), "server" => s.clone()),
            checks: CHECK_RESULTS.map(|r| counter!(HEALTH_CHECKS, "pool" => p.clone(), "server" => s.clone(), "result" => r)),
            states: SERVER_STATES.map(|state| gauge!(SERVER_STATE, "pool" => p.clone(), "server" => s.clone(), "state" => state)),
            dns_addresses: by_name.then(|| gauge!(DNS_ADDRESSES, "pool" => p.clone(), "server" => s.clone())),
            sources: sources
                .iter()
                .map(|source| gauge!(SOURCE_CONNECTIONS, "pool" => p.clone(), "source" => source.clone(), "server" => s.clone()))
                .collect(),
            tls_handshakes: tls.then(|| TLS_HANDSHAKE_KINDS.map(|kind| counter!(UPSTREAM_TLS_HANDSHAKES, "pool" => p.clone(), "server" => s.clone(), "kind" => kind))),
        }
    }

    /// Counts a completed upstream TLS handshake: resumed from a stored session, or full.
    pub fn count_tls_handshake(&self, resumed: bool) {
        if let Some(kinds) = &self.tls_handshakes {
            kinds[usize::from(resumed)].increment(1);
        }
    }

    /// Counts a health check; `result` is one of `CHECK_RESULTS`.
    pub fn count_check(&self, result: &str) {
        if let Some(i) = CHECK_RESULTS.iter().position(|r| *r == result) {
            self.checks[i].increment(1);
        }
    }

    /// Counts an attempt that reached the network; a local failure is counted elsewhere
    /// (`l4relay_local_resource_errors_total`).
    pub fn count_attempt(&self, result: AttemptResult) {
        let index = match result {
            AttemptResult::Ok => 0,
            AttemptResult::Refused => 1,
            AttemptResult::Timeout => 2,
            AttemptResult::Error => 3,
            AttemptResult::Local(_) => return,
        };
        self.results[index].increment(1);
    }
}

/// What a pool's connects, health checks and resolutions are counted under.
pub struct PoolMetrics {
    pub connect_time: Histogram,
    /// From connect to the server's first payload byte.
    pub first_byte: Histogram,
    pub retries: Counter,
    pub check_time: Histogram,
    dns: [Counter; DNS_RESULTS.len()],
}

impl PoolMetrics {
    pub fn new(pool: &str) -> PoolMetrics {
        PoolMetrics {
            connect_time: histogram!(UPSTREAM_CONNECT_SECONDS, "pool" => pool.to_string()),
            first_byte: histogram!(FIRST_BYTE_SECONDS, "pool" => pool.to_string()),
            retries: counter!(UPSTREAM_RETRIES, "pool" => pool.to_string()),
            check_time: histogram!(HEALTH_CHECK_SECONDS, "pool" => pool.to_string()),
            dns: DNS_RESULTS
                .map(|r| counter!(DNS_RESOLUTIONS, "pool" => pool.to_string(), "result" => r)),
        }
    }

    /// Counts a resolution; `result` is one of `DNS_RESULTS`.
    pub fn count_dns(&self, result: &str) {
        if let Some(i) = DNS_RESULTS.iter().position(|r| *r == result) {
            self.dns[i].increment(1);
        }
    }
}
