//! Parsing and formatting of the units the CLI accepts and the reports print:
//! byte sizes (`256KiB`, `1.5MB`), durations (`10s`, `1m30s`, `250ms`) and
//! bit rates.
//!
//! Bare `K`/`M`/`G` are binary (1024-based) because that is what socket
//! buffer and chunk sizes are conventionally given in; the `kB`/`MB`/`GB`
//! spellings are decimal for people who mean decimal.

use std::time::Duration;

/// Largest size any option accepts; keeps arithmetic on sizes far from overflow.
const MAX_SIZE: u64 = 1 << 40;

/// Parses a byte size such as `100`, `32KiB`, `256K`, `1.5MB` or `1GiB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "invalid size {s:?}: expected a number, e.g. 256KiB"
        ));
    }
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => {
            return Err(format!(
                "invalid size {s:?}: unknown unit {other:?} (use B, KiB, MiB, GiB, kB, MB, GB)"
            ))
        }
    };
    let value = parse_decimal_scaled(num, mult as u128)
        .ok_or_else(|| format!("invalid size {s:?}: not a number"))?;
    if value > MAX_SIZE as u128 {
        return Err(format!("invalid size {s:?}: larger than 1 TiB"));
    }
    Ok(value as u64)
}

/// Parses a duration such as `10s`, `500ms`, `1.5s`, `2m`, `1m30s` or `250us`.
/// A bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    let mut rest = t;
    let mut total_ns: u128 = 0;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_end);
        if num.is_empty() {
            return Err(format!(
                "invalid duration {s:?}: expected a number, e.g. 10s"
            ));
        }
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_end);
        let mult: u128 = match unit.trim() {
            "" if next.is_empty() && total_ns == 0 => 1_000_000_000,
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" | "min" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            other => {
                return Err(format!(
                    "invalid duration {s:?}: unknown unit {other:?} (use ns, us, ms, s, m, h)"
                ))
            }
        };
        total_ns += parse_decimal_scaled(num, mult)
            .ok_or_else(|| format!("invalid duration {s:?}: not a number"))?;
        if total_ns > 365 * 24 * 3_600_000_000_000 {
            return Err(format!("invalid duration {s:?}: too long"));
        }
        rest = next;
    }
    Ok(Duration::from_nanos(total_ns as u64))
}

/// `num` is `123` or `1.25`; returns round(num * mult) without going through
/// floating point, so `0.1s` is exactly 100ms.
fn parse_decimal_scaled(num: &str, mult: u128) -> Option<u128> {
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if frac.contains('.') || frac.len() > 18 {
        return None;
    }
    let int_v: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut v = int_v.checked_mul(mult)?;
    if !frac.is_empty() {
        let frac_v: u128 = frac.parse().ok()?;
        let denom = 10u128.pow(frac.len() as u32);
        v = v.checked_add((frac_v * mult + denom / 2) / denom)?;
    }
    Some(v)
}

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
    fn sizes() {
        assert_eq!(parse_size("100").unwrap(), 100);
        assert_eq!(parse_size("100B").unwrap(), 100);
        assert_eq!(parse_size("256KiB").unwrap(), 256 * 1024);
        assert_eq!(parse_size("256K").unwrap(), 256 * 1024);
        assert_eq!(parse_size("256k").unwrap(), 256 * 1024);
        assert_eq!(parse_size("32kB").unwrap(), 32_000);
        assert_eq!(parse_size("1.5MiB").unwrap(), 3 << 19);
        assert_eq!(parse_size("2MB").unwrap(), 2_000_000);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size(" 4 KiB ").unwrap(), 4096);
        assert_eq!(parse_size("0.5K").unwrap(), 512);
    }

    #[test]
    fn bad_sizes() {
        for s in [
            "",
            "KiB",
            "12XB",
            "1.2.3K",
            "-5",
            "2TiB",
            "99999999999999999999999999",
        ] {
            assert!(parse_size(s).is_err(), "{s:?} should be rejected");
        }
        assert!(parse_size("2000GiB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("0.1s").unwrap(), Duration::from_millis(100));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("250us").unwrap(), Duration::from_micros(250));
        assert_eq!(parse_duration("250µs").unwrap(), Duration::from_micros(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
    }

    #[test]
    fn bad_durations() {
        for s in [
            "",
            "s",
            "10x",
            "1m30",
            "1..5s",
            "-1s",
            "10 parsecs",
            "100000h",
        ] {
            assert!(parse_duration(s).is_err(), "{s:?} should be rejected");
        }
    }

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
