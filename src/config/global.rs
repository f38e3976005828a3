//! `[global]`: process-wide limits, workers, logging and the relay's buffer sizes.

use std::path::PathBuf;
use std::time::Duration;

use super::reader::{Diagnostics, Section};
use super::values::{parse_duration, parse_size};
use crate::observe::access_log::{self, LogFormat, Target};
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
    /// Where the access log goes: stdout, a file (reopened on SIGUSR1), or journald.
    pub access_log: Target,
    /// A worker writes its access-log lines when they fill this many bytes...
    pub access_log_buffer: usize,
    /// ...or when this long has passed.
    pub access_log_flush: Duration,
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
    let access_log = s
        .parsed(diag, "access_log", parse_target)
        .unwrap_or(Target::Stdout);
    let access_log_buffer = bounded_size(s, diag, "access_log_buffer", 64 << 10, 4 << 10, 16 << 20);
    let access_log_flush = s
        .parsed(diag, "access_log_flush", |v| {
            let d = parse_duration(v)?;
            if (Duration::from_millis(10)..=Duration::from_secs(60)).contains(&d) {
                Ok(d)
            } else {
                Err("must be from 10ms to 60s".to_string())
            }
        })
        .unwrap_or(Duration::from_secs(1));
    let relay = s.choice(diag, "relay", RELAY_MODES, relay::Mode::Auto);
    let pipe_size = bounded_size(s, diag, "pipe_size", 256 << 10, 4 << 10, 16 << 20);
    let buffer_size = bounded_size(s, diag, "buffer_size", 64 << 10, 1 << 10, 16 << 20);
    Global {
        max_connections,
        workers,
        log_level,
        log_format,
        log_skip_empty,
        access_log,
        access_log_buffer,
        access_log_flush,
        relay,
        pipe_size,
        buffer_size,
    }
}

impl Global {
    /// The access log's settings, for `AccessLog::start`.
    pub fn access_log_settings(&self) -> access_log::Settings {
        access_log::Settings {
            format: self.log_format,
            skip_empty: self.log_skip_empty,
            target: self.access_log.clone(),
            buffer: self.access_log_buffer,
            flush: self.access_log_flush,
        }
    }
}

/// `"stdout"`, `"journald"`, or an absolute file path.
fn parse_target(v: &str) -> Result<Target, String> {
    match v {
        "stdout" => Ok(Target::Stdout),
        "journald" => Ok(Target::Journald),
        path if path.starts_with('/') && !path.ends_with('/') => {
            Ok(Target::File(PathBuf::from(path)))
        }
        _ => Err(format!(
            "\"{v}\" is not \"stdout\", \"journald\" or an absolute file path"
        )),
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

#[cfg(test)]
mod tests {
    use super::super::test_support::{parse, MINIMAL};
    use super::*;

    #[test]
    fn access_log_defaults() {
        let g = parse(MINIMAL).unwrap().global;
        assert_eq!(g.access_log, Target::Stdout);
        assert_eq!(g.access_log_buffer, 64 << 10);
        assert_eq!(g.access_log_flush, Duration::from_secs(1));
    }

    #[test]
    fn access_log_keys() {
        let text = format!(
            "[global]\naccess_log = \"/var/log/l4relay/access.log\"\naccess_log_buffer = \"256KiB\"\n\
             access_log_flush = \"250ms\"\n{MINIMAL}"
        );
        let g = parse(&text).unwrap().global;
        assert_eq!(
            g.access_log,
            Target::File("/var/log/l4relay/access.log".into())
        );
        assert_eq!(g.access_log_buffer, 256 << 10);
        assert_eq!(g.access_log_flush, Duration::from_millis(250));
        let text = format!("[global]\naccess_log = \"journald\"\n{MINIMAL}");
        assert_eq!(parse(&text).unwrap().global.access_log, Target::Journald);
    }

    #[test]
    fn bad_access_log_keys_are_located() {
        let text = format!(
            "[global]\naccess_log = \"access.log\"\naccess_log_buffer = \"1KiB\"\n\
             access_log_flush = \"5m\"\n{MINIMAL}"
        );
        assert_eq!(
            parse(&text).unwrap_err(),
            [
                "t.toml:2:14: global.access_log: \"access.log\" is not \"stdout\", \"journald\" or an absolute file path",
                "t.toml:3:21: global.access_log_buffer: must be from 4096 to 16777216 bytes",
                "t.toml:4:20: global.access_log_flush: must be from 10ms to 60s",
            ]
        );
    }
}
