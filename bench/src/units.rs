//! How reports print figures: byte counts, rates and durations for people to read.
//!
//! Nothing here parses: sizes and durations on the command line go through the daemon's own
//! parsers (`l4relay::config::{parse_size, parse_duration}`), so a value means the same here as
//! in a config file.

use std::time::Duration;

/// `1.23 GiB`-style rendering for memory figures.
pub fn fmt_bytes(b: f64) -> String {
    let abs = b.abs();
    let (v, u) = if abs >= (1u64 << 30) as f64 {
        (b / (1u64 << 30) as f64, "GiB")
    } else if abs >= (1u64 << 20) as f64 {
        (b / (1u64 << 20) as f64, "MiB")
    } else if abs >= 1024.0 {
        (b / 1024.0, "KiB")
    } else {
        return format!("{b:.0} B");
    };
    format!("{v:.2} {u}")
}

/// Decimal gigabytes, matching how link speeds and the per-GB CPU cost are quoted.
pub fn fmt_gb(b: u64) -> String {
    format!("{:.2} GB", b as f64 / 1e9)
}

/// Gbit/s from bytes over seconds; 0 for an empty window rather than NaN.
pub fn gbit_per_s(bytes: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        0.0
    } else {
        bytes as f64 * 8.0 / secs / 1e9
    }
}

/// Events per second; 0 for an empty window rather than NaN.
pub fn per_sec(n: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        0.0
    } else {
        n as f64 / secs
    }
}

/// Short human form of a duration for progress lines and tables (`1.5s`, `250ms`).
pub fn fmt_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        "0s".to_string()
    } else if ns >= 1_000_000_000 {
        let s = d.as_secs_f64();
        if (s - s.round()).abs() < 1e-9 {
            format!("{}s", s.round() as u64)
        } else {
            format!("{s:.3}s")
        }
    } else if ns >= 1_000_000 {
        format!("{}ms", ns / 1_000_000)
    } else {
        format!("{}us", ns / 1_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting() {
        assert_eq!(fmt_bytes(512.0), "512 B");
        assert_eq!(fmt_bytes(1536.0), "1.50 KiB");
        assert_eq!(fmt_bytes(3.0 * 1048576.0), "3.00 MiB");
        assert_eq!(fmt_bytes(-2048.0), "-2.00 KiB");
        assert_eq!(fmt_gb(12_345_000_000), "12.35 GB");
        assert_eq!(fmt_duration(Duration::from_secs(10)), "10s");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1.500s");
        assert_eq!(fmt_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(fmt_duration(Duration::ZERO), "0s");
        assert!((gbit_per_s(1_250_000_000, 1.0) - 10.0).abs() < 1e-9);
        assert_eq!(gbit_per_s(100, 0.0), 0.0);
        assert_eq!(per_sec(10, 0.0), 0.0);
    }
}
