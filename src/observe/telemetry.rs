//! Prometheus metrics: the names, buckets and descriptions of every series, the recorder, and
//! the process figures read at scrape time. The handles each subsystem counts with live beside
//! it (`inbound::metrics`, `upstream::metrics`).
//!
//! Nothing on the relay path looks a metric up by its labels. Every listener, pool and server
//! registers its counters once, when its config generation is built, and keeps the handles
//! (cheap atomics). A connection counts its bytes in itself and adds them to those handles at
//! boundaries: its close, and its periodic tick for long sessions. Values that live per worker
//! thread (pipes) or in the kernel (fds, memory, CPU) are read when /metrics is scraped.
//!
//! Every label set is bounded: listener, pool and server names come from the config; outcome
//! and result are fixed words; a VPC endpoint is labelled by its ID only when an allowlist names
//! it, every other one as "other".

use metrics::{counter, gauge, Counter};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const CONNECTIONS: &str = "l4relay_connections_total";
pub const CONNECTIONS_ACTIVE: &str = "l4relay_connections_active";
pub const CONNECTIONS_LIMIT: &str = "l4relay_connections_limit";
pub const BYTES: &str = "l4relay_bytes_total";
pub const VPCE_CONNECTIONS: &str = "l4relay_vpce_connections_total";
pub const SESSION_DURATION: &str = "l4relay_session_duration_seconds";
pub const SESSION_BYTES: &str = "l4relay_session_bytes";
pub const FIRST_BYTE_SECONDS: &str = "l4relay_first_byte_seconds";
pub const SILENT_GAP_SECONDS: &str = "l4relay_silent_gap_seconds";
pub const UPSTREAM_CONNECTIONS: &str = "l4relay_upstream_connections_total";
pub const UPSTREAM_CONNECT_SECONDS: &str = "l4relay_upstream_connect_seconds";
pub const UPSTREAM_RETRIES: &str = "l4relay_upstream_retries_total";
pub const UPSTREAM_TLS_HANDSHAKES: &str = "l4relay_upstream_tls_handshakes_total";
pub const SERVER_UP: &str = "l4relay_server_up";
pub const SERVER_ACTIVE: &str = "l4relay_server_connections_active";
pub const CONFIG_RELOADS: &str = "l4relay_config_reloads_total";
pub const PIPES: &str = "l4relay_pipes";
pub const SPLICE_FALLBACKS: &str = "l4relay_splice_fallbacks_total";
pub const ACCESS_LOG_DROPPED: &str = "l4relay_access_log_dropped_total";
pub const ACCESS_LOG_WRITE_ERRORS: &str = "l4relay_access_log_write_errors_total";
pub const DIAGNOSTICS_DROPPED: &str = "l4relay_diagnostics_dropped_total";
pub const DIAGNOSTICS_SUPPRESSED: &str = "l4relay_diagnostics_suppressed_total";
pub const OPEN_FDS: &str = "l4relay_process_open_fds";
pub const MAX_FDS: &str = "l4relay_process_max_fds";
pub const RSS_BYTES: &str = "l4relay_process_resident_memory_bytes";
pub const CPU_SECONDS: &str = "l4relay_process_cpu_seconds";
pub const READY: &str = "l4relay_ready";
pub const REFUSALS: &str = "l4relay_refusals_total";
pub const DRAINING: &str = "l4relay_draining";
pub const SERVER_STATE: &str = "l4relay_server_state";
pub const HEALTH_CHECKS: &str = "l4relay_health_checks_total";
pub const HEALTH_CHECK_SECONDS: &str = "l4relay_health_check_seconds";
pub const DNS_RESOLUTIONS: &str = "l4relay_dns_resolutions_total";
pub const DNS_ADDRESSES: &str = "l4relay_dns_addresses";
pub const SOURCE_CONNECTIONS: &str = "l4relay_source_connections";
pub const LOCAL_RESOURCE_ERRORS: &str = "l4relay_local_resource_errors_total";

/// The `state` label of `l4relay_server_state`. `unknown`: awaiting its first health check.
pub const SERVER_STATES: [&str; 4] = ["up", "down", "draining", "unknown"];
/// The `result` label of `l4relay_health_checks_total`. `local`: the check could not run for
/// want of a local resource (a descriptor, a port); it counts for nothing.
pub const CHECK_RESULTS: [&str; 9] = [
    "ok",
    "refused",
    "timeout",
    "error",
    "tls",
    "http_status",
    "http_body",
    "firewall",
    "local",
];
/// The `kind` label of `l4relay_upstream_tls_handshakes_total`: `resumed` from a session the
/// server's store kept, else `full`.
pub const TLS_HANDSHAKE_KINDS: [&str; 2] = ["full", "resumed"];
/// The `result` label of `l4relay_dns_resolutions_total`.
pub const DNS_RESULTS: [&str; 7] = [
    "ok",
    "nxdomain",
    "empty",
    "servfail",
    "timeout",
    "error",
    "public_refused",
];

/// The `kind` label of `l4relay_local_resource_errors_total`: the errno, lower case
/// (`source_address`: bind's EADDRNOTAVAIL, an address not on the host).
pub const LOCAL_RESOURCE_KINDS: [&str; 7] = [
    "emfile",
    "enfile",
    "enobufs",
    "enomem",
    "eaddrnotavail",
    "eaddrinuse",
    "source_address",
];

/// Upstream connect time: 100 µs (same-AZ) to 10 s (a timing-out server).
pub const CONNECT_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Session duration: 1 ms (a health check) to 1 h (a long streaming response).
pub const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0,
];
/// Time from connect to the server's first payload byte: 1 ms (a TLS ServerHello nearby) to
/// 2 min (a model thinking before its first token, where the relay sees plaintext).
pub const FIRST_BYTE_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// The longest silence of a connection: 10 ms to 1 h, with the NLB's default idle timeout
/// (350 s) as a bound, so "silent longer than the NLB allows" is one bucket away.
pub const SILENCE_BUCKETS: &[f64] = &[
    0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 350.0, 600.0, 900.0, 1800.0, 3600.0,
];
/// Bytes per session, both directions together: 100 B to 1 GiB.
pub const BYTES_BUCKETS: &[f64] = &[
    100.0,
    1024.0,
    10240.0,
    102400.0,
    1048576.0,
    10485760.0,
    104857600.0,
    1073741824.0,
];

/// Installs the process-wide recorder; None when metrics are off (every handle is then a no-op).
pub fn install(enabled: bool) -> Option<PrometheusHandle> {
    if !enabled {
        return None;
    }
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(UPSTREAM_CONNECT_SECONDS.into()),
            CONNECT_BUCKETS,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(SESSION_DURATION.into()), DURATION_BUCKETS)
        })
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(SESSION_BYTES.into()), BYTES_BUCKETS))
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(FIRST_BYTE_SECONDS.into()), FIRST_BYTE_BUCKETS)
        })
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(SILENT_GAP_SECONDS.into()), SILENCE_BUCKETS)
        })
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(HEALTH_CHECK_SECONDS.into()), CONNECT_BUCKETS)
        });
    match builder.and_then(|b| b.install_recorder()) {
        Ok(handle) => {
            describe();
            Some(handle)
        }
        Err(e) => {
            tracing::error!("metrics disabled: {e}");
            None
        }
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        CONNECTIONS,
        "Client connections accepted, by what became of them."
    );
    describe_gauge!(CONNECTIONS_ACTIVE, "Client connections open now.");
    describe_gauge!(
        CONNECTIONS_LIMIT,
        "The listener's connection limit (the process-wide one when it has none)."
    );
    describe_counter!(
        BYTES,
        Unit::Bytes,
        "Payload bytes relayed (PROXY headers excluded)."
    );
    describe_counter!(
        VPCE_CONNECTIONS,
        "Client connections by VPC endpoint (IDs named in allowlists; others as \"other\")."
    );
    describe_histogram!(
        SESSION_DURATION,
        Unit::Seconds,
        "How long relayed connections lasted."
    );
    describe_histogram!(
        SESSION_BYTES,
        Unit::Bytes,
        "Bytes per relayed connection, both directions."
    );
    describe_histogram!(
        FIRST_BYTE_SECONDS,
        Unit::Seconds,
        "Time from connecting to the server to its first payload byte (connections it answered)."
    );
    describe_histogram!(
        SILENT_GAP_SECONDS,
        Unit::Seconds,
        "The longest time without a payload byte either way, per relayed connection (its last silence included)."
    );
    describe_counter!(
        UPSTREAM_CONNECTIONS,
        "Connect attempts to servers, by result."
    );
    describe_histogram!(
        UPSTREAM_CONNECT_SECONDS,
        Unit::Seconds,
        "Time to connect to a server (successful attempts)."
    );
    describe_counter!(UPSTREAM_RETRIES, "Connect attempts after a failed one.");
    describe_gauge!(
        SERVER_UP,
        "1 when the server may take new connections, else 0."
    );
    describe_gauge!(SERVER_ACTIVE, "Connections open to the server now.");
    describe_counter!(
        UPSTREAM_TLS_HANDSHAKES,
        "TLS handshakes with servers ([pool.tls]), by kind: full, or resumed from a stored session."
    );
    describe_counter!(CONFIG_RELOADS, "Config reloads, by result.");
    describe_gauge!(
        PIPES,
        "splice pipes: in_use by connections, pooled for reuse."
    );
    describe_counter!(
        SPLICE_FALLBACKS,
        "Times splice was refused and the copy path took over."
    );
    describe_counter!(
        ACCESS_LOG_DROPPED,
        "Access-log lines dropped: the sink full for too long, or failing."
    );
    describe_counter!(
        ACCESS_LOG_WRITE_ERRORS,
        "Access-log writes that failed (a reader gone, a full disk); their lines are dropped."
    );
    describe_counter!(
        DIAGNOSTICS_DROPPED,
        "Diagnostic lines (stderr) dropped because stderr was not taking them."
    );
    describe_counter!(
        DIAGNOSTICS_SUPPRESSED,
        "Repeats of a per-connection warning not shown (summarised every 10 s instead)."
    );
    // Registered at zero so that the first failure shows as an increase.
    for name in [
        ACCESS_LOG_DROPPED,
        ACCESS_LOG_WRITE_ERRORS,
        DIAGNOSTICS_DROPPED,
        DIAGNOSTICS_SUPPRESSED,
    ] {
        counter!(name).absolute(0);
    }
    describe_gauge!(OPEN_FDS, "Open file descriptors.");
    describe_gauge!(MAX_FDS, "The open-file limit.");
    describe_gauge!(RSS_BYTES, Unit::Bytes, "Resident memory.");
    describe_gauge!(
        CPU_SECONDS,
        Unit::Seconds,
        "User and system CPU time used so far (use rate())."
    );
    describe_gauge!(READY, "1 when /readyz answers 200.");
    describe_counter!(
        REFUSALS,
        "Connections not relayed, by reason: the rule, limit or PROXY header error, handshake_timeout, no_server, connect_failed."
    );
    describe_gauge!(
        DRAINING,
        "1 from SIGTERM until exit (readiness is then 0 on purpose)."
    );
    // Registered at zero so a first failed reload shows as an increase.
    for result in ["ok", "error"] {
        counter!(CONFIG_RELOADS, "result" => result).absolute(0);
    }
    gauge!(DRAINING).set(0.0);
    for kind in LOCAL_RESOURCE_KINDS {
        counter!(LOCAL_RESOURCE_ERRORS, "kind" => kind).absolute(0);
    }
    describe_gauge!(
        SERVER_STATE,
        "Addresses of the server in each state (up, down, draining, unknown)."
    );
    describe_counter!(HEALTH_CHECKS, "Active health checks, by result.");
    describe_histogram!(
        HEALTH_CHECK_SECONDS,
        Unit::Seconds,
        "How long health checks took (every result)."
    );
    describe_counter!(
        DNS_RESOLUTIONS,
        "Resolutions of server names (A and AAAA together), by result."
    );
    describe_gauge!(
        DNS_ADDRESSES,
        "Addresses a server's name resolves to now (after require_private)."
    );
    describe_gauge!(
        SOURCE_CONNECTIONS,
        "Connections open from each source address of a pool to a server (each of its addresses has the ephemeral port range to itself)."
    );
    describe_counter!(
        LOCAL_RESOURCE_ERRORS,
        "Connects and health checks that failed for want of the relay's own resources, by errno (emfile, enfile, enobufs, enomem, eaddrnotavail, eaddrinuse, source_address); never counted against a server."
    );
}

/// Process figures from /proc, refreshed before each scrape.
pub fn record_process() {
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        gauge!(OPEN_FDS).set(dir.count().saturating_sub(1) as f64);
    }
    if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
        if let Some(soft) = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse::<f64>().ok())
        {
            gauge!(MAX_FDS).set(soft);
        }
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        if let Some(kib) = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
        {
            gauge!(RSS_BYTES).set(kib * 1024.0);
        }
    }
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name (which may contain spaces): utime is the 12th, stime the 13th.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks: Option<u64> = fields
            .get(11)
            .zip(fields.get(12))
            .and_then(|(u, s)| Some(u.parse::<u64>().ok()? + s.parse::<u64>().ok()?));
        if let Some(ticks) = ticks {
            // SAFETY: sysconf only reads a configuration value.
            let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
            gauge!(CPU_SECONDS).set(ticks as f64 / per_second);
        }
    }
}

/// Adds `new - old` to a counter; for byte counts published at ticks.
pub fn add_delta(counter: &Counter, old: u64, new: u64) {
    if new > old {
        counter.increment(new - old);
    }
}
