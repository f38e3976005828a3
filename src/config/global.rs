//! `[global]`: process-wide limits, workers, logging and the relay's buffer sizes.

use super::reader::{Diagnostics, Section};
use super::values::parse_size;
use crate::observe::access_log::LogFormat;
use crate::relay;

#[derive(Debug, Clone)]
pub struct Global {
    /// Process-wide limit on concurrent client connections.
    pub max_connections: usize,
    /// Worker threads, each with its own accept loops; 0 in the file means one per CPU.
    pub workers: usize,
    /// Diagnostics level for stderr, unless `RUST_LOG` is set.
    pub log_level: String,
    pub log_format: LogFormat,
    /// Leave connections that carried no payload either way out of the access log.
    pub log_skip_empty: bool,
    pub relay: relay::Mode,
    pub pipe_size: usize,
    pub buffer_size: usize,
}

pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;

pub(super) const RELAY_MODES: &[(&str, relay::Mode)] = &[
    ("auto", relay::Mode::Auto),
    ("splice", relay::Mode::Splice),
    ("copy", relay::Mode::Copy),
];

pub(super) fn read_global(s: &mut Section<'_, '_>, diag: &mut Diagnostics<'_>) -> Global {
    let max_connections = s.integer(
        diag,
        "max_connections",
        1..=10_000_000,
        DEFAULT_MAX_CONNECTIONS as u64,
    ) as usize;
    let workers = s.integer(diag, "workers", 0..=1024, 0) as usize;
    let log_level = s
        .parsed(diag, "log_level", |v| match v {
            "error" | "warn" | "info" | "debug" | "trace" => Ok(v.to_string()),
            _ => Err(format!(
                "\"{v}\" is not one of \"error\", \"warn\", \"info\", \"debug\", \"trace\""
            )),
        })
        .unwrap_or_else(|| "info".to_string());
    let log_format = s.choice(
        diag,
        "log_format",
        &[
            ("text", LogFormat::Text),
            ("json", LogFormat::Json),
            ("off", LogFormat::Off),
        ],
        LogFormat::Text,
    );
    let log_skip_empty = s.bool(diag, "log_skip_empty", false);
    let relay = s.choice(diag, "relay", RELAY_MODES, relay::Mode::Auto);
    let pipe_size = bounded_size(s, diag, "pipe_size", 256 << 10, 4 << 10, 16 << 20);
    let buffer_size = bounded_size(s, diag, "buffer_size", 64 << 10, 1 << 10, 16 << 20);
    Global {
        max_connections,
        workers,
        log_level,
        log_format,
        log_skip_empty,
        relay,
        pipe_size,
        buffer_size,
    }
}

pub(super) fn bounded_size(
    s: &mut Section<'_, '_>,
    diag: &mut Diagnostics<'_>,
    key: &str,
    default: u64,
    min: u64,
    max: u64,
) -> usize {
    s.parsed(diag, key, |v| {
        let n = parse_size(v)?;
        if (min..=max).contains(&n) {
            Ok(n as usize)
        } else {
            Err(format!("must be from {min} to {max} bytes"))
        }
    })
    .unwrap_or(default as usize)
}
