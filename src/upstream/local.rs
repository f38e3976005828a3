//! The relay's own resources running out on the way to a server: descriptors (EMFILE, ENFILE),
//! kernel memory (ENOBUFS, ENOMEM), and local ports (EADDRNOTAVAIL, EADDRINUSE). Such a failure
//! says nothing about the server, so it never counts against one (neither passive detection nor
//! a health check); the client is refused with its own reason, and the condition is counted
//! (`l4relay_local_resource_errors_total{kind}`), shown in /status, and logged once per
//! episode: when it begins, and when a connect succeeds again after a quiet second.
//!
//! The state is process-wide, as the resources are: atomics, touched only on a failure and,
//! on success, by one relaxed load.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use metrics::counter;

use crate::observe::telemetry::LOCAL_RESOURCE_ERRORS;

/// Which local resource ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalResource {
    /// EMFILE: the process's open-file limit (RLIMIT_NOFILE).
    ProcessFiles,
    /// ENFILE: the system-wide file table (fs.file-max).
    SystemFiles,
    /// ENOBUFS: socket buffer memory.
    Buffers,
    /// ENOMEM: kernel memory.
    Memory,
    /// EADDRNOTAVAIL: every local port to this destination from this source is in use.
    Ports,
    /// EADDRINUSE on bind: the source address and port are taken.
    AddressInUse,
    /// EADDRNOTAVAIL on bind: the source address is not on this host (a secondary address not
    /// attached yet, a typo).
    SourceAddress,
}

const KINDS: usize = 7;

impl LocalResource {
    pub const ALL: [LocalResource; KINDS] = [
        LocalResource::ProcessFiles,
        LocalResource::SystemFiles,
        LocalResource::Buffers,
        LocalResource::Memory,
        LocalResource::Ports,
        LocalResource::AddressInUse,
        LocalResource::SourceAddress,
    ];

    /// What a socket, bind or connect error says about the relay's own resources; None when
    /// it is about the peer or the network (refused, unreachable, reset, ...). EADDRNOTAVAIL
    /// means ports here; from bind(2) it means a missing address (`of_bind`).
    pub fn of(error: &io::Error) -> Option<LocalResource> {
        Some(match error.raw_os_error()? {
            libc::EMFILE => LocalResource::ProcessFiles,
            libc::ENFILE => LocalResource::SystemFiles,
            libc::ENOBUFS => LocalResource::Buffers,
            libc::ENOMEM => LocalResource::Memory,
            libc::EADDRNOTAVAIL => LocalResource::Ports,
            libc::EADDRINUSE => LocalResource::AddressInUse,
            _ => return None,
        })
    }

    /// `of`, for an error of bind(2).
    pub fn of_bind(error: &io::Error) -> Option<LocalResource> {
        match Self::of(error)? {
            LocalResource::Ports => Some(LocalResource::SourceAddress),
            other => Some(other),
        }
    }

    /// The `kind` label: the error's name.
    pub fn as_str(self) -> &'static str {
        match self {
            LocalResource::ProcessFiles => "emfile",
            LocalResource::SystemFiles => "enfile",
            LocalResource::Buffers => "enobufs",
            LocalResource::Memory => "enomem",
            LocalResource::Ports => "eaddrnotavail",
            LocalResource::AddressInUse => "eaddrinuse",
            LocalResource::SourceAddress => "source_address",
        }
    }

    /// What operators read: the error and what it means here.
    pub fn describe(self) -> &'static str {
        match self {
            LocalResource::ProcessFiles => {
                "EMFILE: the process's open-file limit (LimitNOFILE) is reached"
            }
            LocalResource::SystemFiles => "ENFILE: the system's file table (fs.file-max) is full",
            LocalResource::Buffers => "ENOBUFS: no socket buffer memory",
            LocalResource::Memory => "ENOMEM: no kernel memory",
            LocalResource::Ports => {
                "EADDRNOTAVAIL: every local port to this server from this source address is in use (net.ipv4.ip_local_port_range)"
            }
            LocalResource::AddressInUse => "EADDRINUSE: the source address and port are in use",
            LocalResource::SourceAddress => {
                "EADDRNOTAVAIL on bind: the source address is not an address of this host"
            }
        }
    }

    /// The end's detail of a client refused for it.
    pub fn detail(self) -> &'static str {
        match self {
            LocalResource::Ports | LocalResource::AddressInUse => "source_ports_exhausted",
            LocalResource::SourceAddress => "source_address_unavailable",
            _ => "local_resource",
        }
    }

    /// Ports run out per source address and destination, and an address is missing on its
    /// own: another source, or another server, may still do. Descriptors and memory run out
    /// for every connect alike.
    pub fn is_per_destination(self) -> bool {
        matches!(
            self,
            LocalResource::Ports | LocalResource::AddressInUse | LocalResource::SourceAddress
        )
    }
}

/// One episode of local exhaustion, process-wide.
struct Episode {
    open: AtomicBool,
    /// Milliseconds since `epoch()` of the first and the latest error of the open episode.
    began_ms: AtomicU64,
    last_ms: AtomicU64,
    /// Errors in the open episode.
    errors: AtomicU64,
    /// Every error since the start, by kind (indexed like `LocalResource::ALL`).
    totals: [AtomicU64; KINDS],
    /// The latest error's kind, as an index into `LocalResource::ALL`.
    last_kind: AtomicU64,
}

static EPISODE: Episode = Episode {
    open: AtomicBool::new(false),
    began_ms: AtomicU64::new(0),
    last_ms: AtomicU64::new(0),
    errors: AtomicU64::new(0),
    totals: [const { AtomicU64::new(0) }; KINDS],
    last_kind: AtomicU64::new(0),
};

/// How long without a local error before a successful connect closes the episode.
const QUIET: Duration = Duration::from_secs(1);

fn epoch() -> &'static (Instant, SystemTime) {
    static EPOCH: OnceLock<(Instant, SystemTime)> = OnceLock::new();
    EPOCH.get_or_init(|| (Instant::now(), SystemTime::now()))
}

fn now_ms() -> u64 {
    epoch().0.elapsed().as_millis() as u64
}

fn wall(ms: u64) -> SystemTime {
    epoch().1 + Duration::from_millis(ms)
}

/// Counts a local failure; logs the start of an episode with `context` (what was being done:
/// "connecting to pool/server at addr", "health check of ...").
pub fn failed(kind: LocalResource, context: std::fmt::Arguments<'_>) {
    let now = now_ms();
    let index = LocalResource::ALL
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(0);
    EPISODE.totals[index].fetch_add(1, Ordering::Relaxed);
    EPISODE.last_kind.store(index as u64, Ordering::Relaxed);
    EPISODE.last_ms.store(now, Ordering::Relaxed);
    EPISODE.errors.fetch_add(1, Ordering::Relaxed);
    counter!(LOCAL_RESOURCE_ERRORS, "kind" => kind.as_str()).increment(1);
    if !EPISODE.open.swap(true, Ordering::AcqRel) {
        EPISODE.began_ms.store(now, Ordering::Relaxed);
        EPISODE.errors.store(1, Ordering::Relaxed);
        tracing::warn!(
            "out of local resources ({}) while {context}: clients are refused (detail={}) until it passes; no server is blamed",
            kind.describe(),
            kind.detail()
        );
    }
}

/// A connect succeeded: closes an open episode once it has been quiet for a moment.
pub fn succeeded() {
    if !EPISODE.open.load(Ordering::Relaxed) {
        return;
    }
    let now = now_ms();
    if now.saturating_sub(EPISODE.last_ms.load(Ordering::Relaxed)) < QUIET.as_millis() as u64 {
        return;
    }
    if EPISODE.open.swap(false, Ordering::AcqRel) {
        let began = EPISODE.began_ms.load(Ordering::Relaxed);
        tracing::info!(
            "local resources available again: {} connect(s) failed locally over {:.1}s",
            EPISODE.errors.load(Ordering::Relaxed),
            Duration::from_millis(now.saturating_sub(began)).as_secs_f64()
        );
    }
}

/// The condition as /status shows it.
pub fn status() -> serde_json::Value {
    let totals: serde_json::Map<String, serde_json::Value> = LocalResource::ALL
        .iter()
        .zip(&EPISODE.totals)
        .map(|(kind, n)| (kind.as_str().to_string(), n.load(Ordering::Relaxed).into()))
        .collect();
    let open = EPISODE.open.load(Ordering::Relaxed);
    let last_kind = LocalResource::ALL[EPISODE.last_kind.load(Ordering::Relaxed) as usize % KINDS];
    let any = totals.values().any(|n| n.as_u64() != Some(0));
    let rfc3339 = |ms: u64| crate::observe::access_log::rfc3339(wall(ms));
    serde_json::json!({
        "exhausted": open,
        "since": open.then(|| rfc3339(EPISODE.began_ms.load(Ordering::Relaxed))),
        "errors_in_episode": if open { EPISODE.errors.load(Ordering::Relaxed) } else { 0 },
        "last_error": any.then(|| serde_json::json!({
            "kind": last_kind.as_str(),
            "detail": last_kind.describe(),
            "at": rfc3339(EPISODE.last_ms.load(Ordering::Relaxed)),
        })),
        "errors_total": totals,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_about_the_relay_itself_are_told_from_errors_about_the_peer() {
        let of = |errno| LocalResource::of(&io::Error::from_raw_os_error(errno));
        assert_eq!(of(libc::EMFILE), Some(LocalResource::ProcessFiles));
        assert_eq!(of(libc::ENFILE), Some(LocalResource::SystemFiles));
        assert_eq!(of(libc::ENOBUFS), Some(LocalResource::Buffers));
        assert_eq!(of(libc::ENOMEM), Some(LocalResource::Memory));
        assert_eq!(of(libc::EADDRNOTAVAIL), Some(LocalResource::Ports));
        assert_eq!(of(libc::EADDRINUSE), Some(LocalResource::AddressInUse));
        for peer in [
            libc::ECONNREFUSED,
            libc::ETIMEDOUT,
            libc::EHOSTUNREACH,
            libc::ENETUNREACH,
            libc::ECONNRESET,
        ] {
            assert_eq!(of(peer), None, "errno {peer}");
        }
        assert_eq!(
            LocalResource::of(&io::Error::other("not an OS error")),
            None
        );
        assert_eq!(
            LocalResource::of_bind(&io::Error::from_raw_os_error(libc::EADDRNOTAVAIL)),
            Some(LocalResource::SourceAddress)
        );
        assert_eq!(LocalResource::Ports.detail(), "source_ports_exhausted");
        assert_eq!(LocalResource::ProcessFiles.detail(), "local_resource");
        assert!(!LocalResource::Memory.is_per_destination());
        let kinds: Vec<&str> = LocalResource::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            kinds,
            crate::observe::telemetry::LOCAL_RESOURCE_KINDS,
            "the kinds registered at zero"
        );
    }
}
