//! Result presentation: the JSON document written by `--json`, the aligned
//! table printed on stdout, latency percentile summaries, and the
//! once-a-second progress line on stderr.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::net::ErrorSummary;

/// Fields every mode's JSON document starts with; the mode's own figures go
/// in `result`.
#[derive(Debug, Serialize)]
pub struct Report<R: Serialize> {
    pub tool: &'static str,
    pub version: &'static str,
    pub mode: &'static str,
    pub target: String,
    pub started_unix_ms: u64,
    /// The run was cut short by SIGINT/SIGTERM; figures cover what ran.
    pub interrupted: bool,
    pub warmup_s: f64,
    /// Length of the measurement window the rates are computed over.
    pub measured_s: f64,
    pub proxy_v2: bool,
    /// The client spoke TLS to the target (`--tls`).
    pub tls: bool,
    pub vpce: Option<String>,
    /// Over the whole run, warmup included.
    pub errors: ErrorSummary,
    /// CPU the benchmark client used during the window, in seconds, and as
    /// cores (seconds per second), to spot a client-bound run.
    pub client_cpu_s: Option<f64>,
    pub client_cores: Option<f64>,
    /// CPU of the process given with `--pid`, over the window.
    pub proxy: Option<ProxyCpu>,
    pub warnings: Vec<String>,
    pub result: R,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct ProxyCpu {
    pub pid: u32,
    pub cpu_s: f64,
    /// Average cores busy (cpu_s / measured_s).
    pub cores: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_s_per_gb: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_conn: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_request: Option<f64>,
}

pub fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Latency percentiles in microseconds (fractional, from a nanosecond histogram).
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub min_us: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p99_9_us: f64,
    pub max_us: f64,
}

impl Percentiles {
    pub fn from_ns(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Self {
            count: h.len(),
            min_us: us(h.min()),
            mean_us: h.mean() / 1000.0,
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p99_9_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }

    /// A table row: label, then p50 … max.
    pub fn row(&self, label: &str) -> Vec<String> {
        let mut r = vec![label.to_string(), self.count.to_string()];
        for v in [
            self.mean_us,
            self.p50_us,
            self.p90_us,
            self.p99_us,
            self.p99_9_us,
            self.max_us,
        ] {
            r.push(if self.count == 0 {
                "-".to_string()
            } else {
                fmt_us(v)
            });
        }
        r
    }

    pub const HEADER: [&'static str; 8] = [
        "latency (us)",
        "count",
        "mean",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "max",
    ];
}

/// A nanosecond histogram covering 1 ns to 1 hour at 3 significant digits;
/// values beyond are clamped rather than dropped.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

pub fn fmt_us(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A plain-text table: columns padded to their widest cell, the first column
/// left-aligned and the rest right-aligned unless set otherwise.
pub struct Table {
    header: Option<Vec<String>>,
    rows: Vec<Vec<String>>,
    align: Vec<Align>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: Some(header.iter().map(|s| s.to_string()).collect()),
            rows: Vec::new(),
            align: Vec::new(),
        }
    }

    /// A two-column `name  value` block without a header.
    pub fn kv() -> Self {
        Self {
            header: None,
            rows: Vec::new(),
            align: vec![Align::Left, Align::Left],
        }
    }

    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) -> &mut Self {
        self.rows.push(cells.into_iter().map(Into::into).collect());
        self
    }

    pub fn kv_row(&mut self, k: &str, v: impl Into<String>) -> &mut Self {
        self.row([k.to_string(), v.into()])
    }

    pub fn render(&self) -> String {
        let all: Vec<&Vec<String>> = self.header.iter().chain(self.rows.iter()).collect();
        let cols = all.iter().map(|r| r.len()).max().unwrap_or(0);
        let mut width = vec![0usize; cols];
        for r in &all {
            for (i, c) in r.iter().enumerate() {
                width[i] = width[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        for r in &all {
            let mut line = String::new();
            for (i, c) in r.iter().enumerate() {
                let align = self.align.get(i).copied().unwrap_or(if i == 0 {
                    Align::Left
                } else {
                    Align::Right
                });
                let pad = width[i] - c.chars().count();
                if i > 0 {
                    line.push_str("  ");
                }
                match align {
                    Align::Left => {
                        line.push_str(c);
                        line.extend(std::iter::repeat_n(' ', pad));
                    }
                    Align::Right => {
                        line.extend(std::iter::repeat_n(' ', pad));
                        line.push_str(c);
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Rows every mode ends its summary with: client and proxy CPU, errors.
pub fn append_common<R: Serialize>(t: &mut Table, r: &Report<R>) {
    if let Some(c) = r.client_cores {
        t.kv_row("client CPU", format!("{c:.2} cores"));
    }
    if let Some(p) = &r.proxy {
        t.kv_row(
            "proxy CPU",
            format!("{:.2} cores ({:.2} CPU-s, pid {})", p.cores, p.cpu_s, p.pid),
        );
    }
    let e = &r.errors;
    if e.total == 0 {
        t.kv_row("errors", "0");
    } else {
        let parts: Vec<String> = [
            ("refused", e.refused),
            ("reset", e.reset),
            ("timeout", e.timeout),
            ("short", e.short),
            ("other", e.other),
        ]
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
        t.kv_row("errors", format!("{} ({})", e.total, parts.join(", ")));
        for (k, msg) in &e.samples {
            t.kv_row(&format!("  first {k}"), msg.clone());
        }
    }
}

/// Where the final results go.
pub struct Output {
    /// `--json FILE`, or `-` for stdout (then the table goes to stderr).
    pub json: Option<String>,
}

impl Output {
    /// Prints the tables and writes the JSON document.
    pub fn emit<R: Serialize>(&self, tables: &[Table], report: &Report<R>) -> Result<(), String> {
        let mut text = String::new();
        for (i, t) in tables.iter().enumerate() {
            if i > 0 {
                text.push('\n');
            }
            text.push_str(&t.render());
        }
        for w in &report.warnings {
            text.push_str(&format!("warning: {w}\n"));
        }
        let json_stdout = self.json.as_deref() == Some("-");
        if json_stdout {
            eprint!("{text}");
        } else {
            print!("{text}");
            let _ = std::io::stdout().flush();
        }
        if let Some(path) = &self.json {
            let mut doc = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
            doc.push('\n');
            if json_stdout {
                print!("{doc}");
                let _ = std::io::stdout().flush();
            } else {
                std::fs::write(Path::new(path), doc)
                    .map_err(|e| format!("cannot write {path}: {e}"))?;
            }
        }
        Ok(())
    }
}

/// The progress line on stderr: rewritten in place on a terminal, one line
/// per update otherwise (so logs and CI output stay readable).
pub struct Progress {
    tty: bool,
    quiet: bool,
    dirty: bool,
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            quiet,
            dirty: false,
        }
    }

    pub fn update(&mut self, elapsed: Duration, text: &str) {
        if self.quiet {
            return;
        }
        let line = format!("[{:>5.1}s] {text}", elapsed.as_secs_f64());
        let mut e = std::io::stderr().lock();
        if self.tty {
            let _ = write!(e, "\r{line}\x1b[K");
            self.dirty = true;
        } else {
            let _ = writeln!(e, "{line}");
        }
        let _ = e.flush();
    }

    /// Ends an in-place line so the results start on a clean line.
    pub fn finish(&mut self) {
        if self.dirty {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
            self.dirty = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_alignment() {
        let mut t = Table::new(&["direction", "bytes", "Gbit/s"]);
        t.row(["up", "12.35 GB", "9.88"]);
        t.row(["down", "1.00 GB", "123.45"]);
        assert_eq!(
            t.render(),
            "direction     bytes  Gbit/s\n\
             up         12.35 GB    9.88\n\
             down        1.00 GB  123.45\n"
        );
    }

    #[test]
    fn kv_alignment() {
        let mut t = Table::kv();
        t.kv_row("target", "127.0.0.1:9000").kv_row("streams", "8");
        assert_eq!(t.render(), "target   127.0.0.1:9000\nstreams  8\n");
    }

    #[test]
    fn percentiles() {
        let mut h = new_histogram();
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap();
        }
        let p = Percentiles::from_ns(&h);
        assert_eq!(p.count, 1000);
        assert!((p.p50_us - 500.0).abs() < 1.0, "{p:?}");
        assert!((p.p99_us - 990.0).abs() < 1.0, "{p:?}");
        assert!((p.max_us - 1000.0).abs() < 1.0, "{p:?}");
        assert_eq!(
            Percentiles::from_ns(&new_histogram()),
            Percentiles::default()
        );
        let row = p.row("request");
        assert_eq!(row.len(), Percentiles::HEADER.len());
        assert_eq!(row[0], "request");
        assert_eq!(fmt_us(12.345), "12.3");
        assert_eq!(fmt_us(1234.4), "1234");
    }
}
