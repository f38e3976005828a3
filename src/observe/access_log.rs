//! The access log: one line per client connection, written to stdout when it closes.
//!
//! Workers hand a `Record` to a bounded queue and move on; a dedicated thread formats and writes
//! it, so a slow stdout (a busy journald, a full pipe) never stalls a worker. When the queue is
//! full the record is dropped and counted rather than blocking traffic.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::protocol::vpce::VpceId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
    Off,
}

/// Records waiting to be written before new ones are dropped.
const QUEUE: usize = 65536;

/// Everything known about a connection when it ends.
#[derive(Debug, Clone)]
pub struct Record {
    pub start: SystemTime,
    pub listener: Arc<str>,
    pub client: SocketAddr,
    /// The client as the PROXY header named it, when there was one.
    pub vpce: Option<VpceId>,
    pub sni: Option<Box<str>>,
    pub pool: Option<Arc<str>>,
    pub server: Option<Arc<str>>,
    pub server_addr: Option<SocketAddr>,
    pub connect_time: Option<Duration>,
    pub duration: Duration,
    pub bytes_client_to_server: u64,
    pub bytes_server_to_client: u64,
    /// How it ended: client_closed, server_closed, client_reset, idle_timeout, ...
    pub end: &'static str,
    /// The finer reason for refusals and PROXY header errors (which rule, which limit, ...).
    pub detail: Option<&'static str>,
}

#[derive(Clone)]
pub struct AccessLog {
    queue: Option<SyncSender<Record>>,
    skip_empty: bool,
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// Starts the writer thread (unless the format is `Off`).
    pub fn start(format: LogFormat, skip_empty: bool) -> AccessLog {
        let dropped = Arc::new(AtomicU64::new(0));
        if format == LogFormat::Off {
            return AccessLog {
                queue: None,
                skip_empty,
                dropped,
            };
        }
        let (queue, records) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_records(records, format))
            .expect("spawning the access-log thread");
        AccessLog {
            queue: Some(queue),
            skip_empty,
            dropped,
        }
    }

    pub fn log(&self, record: Record) {
        let Some(queue) = &self.queue else { return };
        if self.skip_empty
            && record.bytes_client_to_server == 0
            && record.bytes_server_to_client == 0
        {
            return;
        }
        if let Err(TrySendError::Full(_)) = queue.try_send(record) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records dropped because stdout could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn write_records(records: Receiver<Record>, format: LogFormat) {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    let mut line = String::with_capacity(512);
    while let Ok(first) = records.recv() {
        let mut next = Some(first);
        // Write what is queued, then flush once: one write(2) for a burst of closes.
        while let Some(record) = next {
            line.clear();
            match format {
                LogFormat::Json => format_json(&record, &mut line),
                LogFormat::Text | LogFormat::Off => format_text(&record, &mut line),
            }
            line.push('\n');
            if out.write_all(line.as_bytes()).is_err() {
                return;
            }
            next = records.try_recv().ok();
        }
        if out.flush().is_err() {
            return;
        }
    }
}

/// `key=value` pairs, `-` for absent values: easy to grep and to parse.
pub fn format_text(r: &Record, out: &mut String) {
    let dash = |o: Option<&str>| o.unwrap_or("-").to_string();
    let _ = write!(
        out,
        "{} listener={} client={} vpce={} sni={} pool={} server={} server_addr={} connect_ms={} duration_ms={:.3} bytes_c2s={} bytes_s2c={} end={}{}{}",
        rfc3339(r.start),
        r.listener,
        r.client,
        dash(r.vpce.as_deref()),
        dash(r.sni.as_deref()),
        dash(r.pool.as_deref()),
        dash(r.server.as_deref()),
        r.server_addr.map_or("-".to_string(), |a| a.to_string()),
        r.connect_time.map_or("-".to_string(), |d| format!("{:.3}", d.as_secs_f64() * 1e3)),
        r.duration.as_secs_f64() * 1e3,
        r.bytes_client_to_server,
        r.bytes_server_to_client,
        r.end,
        if r.detail.is_some() { " detail=" } else { "" },
        r.detail.unwrap_or(""),
    );
}

pub fn format_json(r: &Record, out: &mut String) {
    let value = serde_json::json!({
        "time": rfc3339(r.start),
        "listener": &*r.listener,
        "client": r.client.to_string(),
        "vpce": r.vpce.as_deref(),
        "sni": r.sni.as_deref(),
        "pool": r.pool.as_deref(),
        "server": r.server.as_deref(),
        "server_addr": r.server_addr.map(|a| a.to_string()),
        "connect_ms": r.connect_time.map(|d| d.as_secs_f64() * 1e3),
        "duration_ms": r.duration.as_secs_f64() * 1e3,
        "bytes_c2s": r.bytes_client_to_server,
        "bytes_s2c": r.bytes_server_to_client,
        "end": r.end,
        "detail": r.detail,
    });
    out.push_str(&value.to_string());
}

/// UTC time as 2026-11-24T01:55:12.123Z (civil-from-days, Howard Hinnant's algorithm).
pub fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_485_312_123);
        assert_eq!(rfc3339(t), "2026-11-24T01:55:12.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    fn record() -> Record {
        Record {
            start: UNIX_EPOCH,
            listener: "openai".into(),
            client: "10.0.0.5:4312".parse().unwrap(),
            vpce: Some(VpceId::parse("vpce-0123").unwrap()),
            sni: None,
            pool: Some("aoai".into()),
            server: Some("aoai-1".into()),
            server_addr: Some("10.1.0.9:443".parse().unwrap()),
            connect_time: Some(Duration::from_micros(1500)),
            duration: Duration::from_millis(2500),
            bytes_client_to_server: 10,
            bytes_server_to_client: 20,
            end: "client_closed",
            detail: None,
        }
    }

    #[test]
    fn text_line() {
        let mut s = String::new();
        format_text(&record(), &mut s);
        assert_eq!(
            s,
            "1970-01-01T00:00:00.000Z listener=openai client=10.0.0.5:4312 vpce=vpce-0123 sni=- pool=aoai server=aoai-1 \
             server_addr=10.1.0.9:443 connect_ms=1.500 duration_ms=2500.000 bytes_c2s=10 bytes_s2c=20 end=client_closed"
        );
    }

    #[test]
    fn json_line() {
        let mut s = String::new();
        format_json(&record(), &mut s);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["vpce"], "vpce-0123");
        assert_eq!(v["sni"], serde_json::Value::Null);
        assert_eq!(v["bytes_s2c"], 20);
        assert_eq!(v["end"], "client_closed");
    }
}
