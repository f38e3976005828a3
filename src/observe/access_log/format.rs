//! An access-log line, as bytes appended to a worker's buffer: text (`key=value`), JSON, or a
//! journald entry (the native protocol's `FIELD=value` lines, the line itself as `MESSAGE`).
//!
//! Written straight into the buffer, with no allocation per line: this runs once per
//! connection, on the worker.

use std::fmt;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::ser::{Serialize, SerializeMap, Serializer};

use super::Record;

/// `key=value` pairs, `-` for absent values: easy to grep and to parse. Byte by byte rather
/// than through `write!`, whose machinery was most of the line's cost in a profile.
pub fn text(r: &Record, out: &mut Vec<u8>) {
    timestamp(r.start, out);
    out.extend_from_slice(b" listener=");
    out.extend_from_slice(r.listener.as_bytes());
    out.extend_from_slice(b" client=");
    socket_addr(r.client, out);
    let fields = [
        (&b" vpce="[..], r.vpce.as_deref()),
        (b" sni=", r.sni.as_deref()),
        (b" pool=", r.pool.as_deref()),
        (b" server=", r.server.as_deref()),
    ];
    for (key, value) in fields {
        out.extend_from_slice(key);
        out.extend_from_slice(value.unwrap_or("-").as_bytes());
    }
    out.extend_from_slice(b" server_addr=");
    match r.server_addr {
        Some(addr) => socket_addr(addr, out),
        None => out.push(b'-'),
    }
    out.extend_from_slice(b" connect_ms=");
    match r.connect_time {
        Some(d) => millis(d, out),
        None => out.push(b'-'),
    }
    out.extend_from_slice(b" duration_ms=");
    millis(r.duration, out);
    out.extend_from_slice(b" bytes_c2s=");
    decimal(r.bytes_client_to_server, out);
    out.extend_from_slice(b" bytes_s2c=");
    decimal(r.bytes_server_to_client, out);
    out.extend_from_slice(b" end=");
    out.extend_from_slice(r.end.as_bytes());
    if let Some(detail) = r.detail {
        out.extend_from_slice(b" detail=");
        out.extend_from_slice(detail.as_bytes());
    }
}

/// `10.0.0.5:4312` digit by digit; IPv6 through `Display` (`[::1]:443`).
fn socket_addr(addr: SocketAddr, out: &mut Vec<u8>) {
    match addr {
        SocketAddr::V4(v4) => {
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                decimal(u64::from(octet), out);
            }
            out.push(b':');
            decimal(u64::from(v4.port()), out);
        }
        SocketAddr::V6(_) => {
            let _ = write!(out, "{addr}");
        }
    }
}

fn decimal(mut n: u64, out: &mut Vec<u8>) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Milliseconds with three decimals (the microsecond), rounded: `1.500`, `2500.000`.
fn millis(d: Duration, out: &mut Vec<u8>) {
    let us = u64::try_from((d.as_nanos() + 500) / 1000).unwrap_or(u64::MAX);
    decimal(us / 1000, out);
    out.push(b'.');
    digits(out, (us % 1000) as u32, 3);
}

/// One JSON object, the same fields, `null` when absent.
pub fn json(r: &Record, out: &mut Vec<u8>) {
    // Serializing these fields into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &Json(r));
}

struct Json<'a>(&'a Record);

impl Serialize for Json<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let mut m = s.serialize_map(Some(14))?;
        m.serialize_entry("time", &Shown(Rfc3339(r.start)))?;
        m.serialize_entry("listener", &*r.listener)?;
        m.serialize_entry("client", &Shown(r.client))?;
        m.serialize_entry("vpce", &r.vpce.as_deref())?;
        m.serialize_entry("sni", &r.sni.as_deref())?;
        m.serialize_entry("pool", &r.pool.as_deref())?;
        m.serialize_entry("server", &r.server.as_deref())?;
        m.serialize_entry("server_addr", &r.server_addr.map(Shown))?;
        m.serialize_entry("connect_ms", &r.connect_time.map(ms_f64))?;
        m.serialize_entry("duration_ms", &ms_f64(r.duration))?;
        m.serialize_entry("bytes_c2s", &r.bytes_client_to_server)?;
        m.serialize_entry("bytes_s2c", &r.bytes_server_to_client)?;
        m.serialize_entry("end", r.end)?;
        m.serialize_entry("detail", &r.detail)?;
        m.end()
    }
}

/// A `Display` value serialized as a JSON string, without an intermediate `String`.
struct Shown<T>(T);

impl<T: fmt::Display> Serialize for Shown<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

fn ms_f64(d: Duration) -> f64 {
    // Rounded to the microsecond, as the text line shows it.
    ((d.as_nanos() + 500) / 1000) as f64 / 1e3
}

/// A journald entry in the native protocol: the line (`text` or `json`, as configured) as
/// `MESSAGE`, and each of the connection's fields as a field of its own (`L4RELAY_CLIENT`, ...)
/// for `journalctl L4RELAY_POOL=aoai` and friends. Absent values are left out.
pub fn journal(r: &Record, message: &[u8], out: &mut Vec<u8>) {
    field(out, "MESSAGE", message);
    // 6: informational; the connection's own outcome is in L4RELAY_END.
    out.extend_from_slice(b"PRIORITY=6\nSYSLOG_IDENTIFIER=l4relay\n");
    field(out, "L4RELAY_LISTENER", r.listener.as_bytes());
    let _ = writeln!(out, "L4RELAY_CLIENT={}", r.client);
    let optional = [
        ("L4RELAY_VPCE", r.vpce.as_deref()),
        ("L4RELAY_SNI", r.sni.as_deref()),
        ("L4RELAY_POOL", r.pool.as_deref()),
        ("L4RELAY_SERVER", r.server.as_deref()),
        ("L4RELAY_DETAIL", r.detail),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            field(out, name, value.as_bytes());
        }
    }
    if let Some(addr) = r.server_addr {
        let _ = writeln!(out, "L4RELAY_SERVER_ADDR={addr}");
    }
    if let Some(d) = r.connect_time {
        let _ = writeln!(out, "L4RELAY_CONNECT_MS={}", Millis(d));
    }
    let _ = writeln!(
        out,
        "L4RELAY_DURATION_MS={}\nL4RELAY_BYTES_C2S={}\nL4RELAY_BYTES_S2C={}\nL4RELAY_END={}",
        Millis(r.duration),
        r.bytes_client_to_server,
        r.bytes_server_to_client,
        r.end
    );
}

/// One field of the native protocol: `NAME=value\n`, or, for a value with a newline in it,
/// `NAME\n`, its length as 64-bit little-endian, the value, `\n`.
fn field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    if value.contains(&b'\n') {
        out.push(b'\n');
        out.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        out.push(b'=');
    }
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Milliseconds with three decimals (the microsecond), rounded: `1.500`, `2500.000`.
struct Millis(Duration);

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = (self.0.as_nanos() + 500) / 1000;
        write!(f, "{}.{:03}", us / 1000, us % 1000)
    }
}

/// UTC time as 2026-11-24T01:55:12.123Z.
pub struct Rfc3339(pub SystemTime);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = Vec::with_capacity(24);
        timestamp(self.0, &mut out);
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

/// Appends `time` as 2026-11-24T01:55:12.123Z: digit by digit, as it starts every line.
fn timestamp(time: SystemTime, out: &mut Vec<u8>) {
    // Civil-from-days, Howard Hinnant's algorithm.
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
    if !(0..=9999).contains(&year) {
        let _ = write!(out, "{year}-");
    } else {
        digits(out, year as u32, 4);
        out.push(b'-');
    }
    digits(out, month as u32, 2);
    out.push(b'-');
    digits(out, day as u32, 2);
    out.push(b'T');
    digits(out, (rem / 3600) as u32, 2);
    out.push(b':');
    digits(out, (rem % 3600 / 60) as u32, 2);
    out.push(b':');
    digits(out, (rem % 60) as u32, 2);
    out.push(b'.');
    digits(out, since.subsec_millis(), 3);
    out.push(b'Z');
}

/// `n` in exactly `width` decimal digits (n < 10^width).
fn digits(out: &mut Vec<u8>, mut n: u32, width: usize) {
    let start = out.len();
    out.resize(start + width, b'0');
    for at in (start..start + width).rev() {
        out[at] = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::vpce::VpceId;

    #[test]
    fn rfc3339_dates() {
        let show = |t| Rfc3339(t).to_string();
        assert_eq!(show(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_485_312_123);
        assert_eq!(show(t), "2026-11-24T01:55:12.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(show(leap), "2000-02-29T00:00:00.000Z");
    }

    pub(crate) fn record() -> Record {
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

    fn text_of(r: &Record) -> String {
        let mut out = Vec::new();
        text(r, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn text_line() {
        assert_eq!(
            text_of(&record()),
            "1970-01-01T00:00:00.000Z listener=openai client=10.0.0.5:4312 vpce=vpce-0123 sni=- pool=aoai server=aoai-1 \
             server_addr=10.1.0.9:443 connect_ms=1.500 duration_ms=2500.000 bytes_c2s=10 bytes_s2c=20 end=client_closed"
        );
    }

    #[test]
    fn text_line_of_a_refusal() {
        let r = Record {
            pool: None,
            server: None,
            server_addr: None,
            connect_time: None,
            vpce: None,
            duration: Duration::from_nanos(1_234_567),
            end: "refused_rule",
            detail: Some("allow_vpce"),
            ..record()
        };
        assert_eq!(
            text_of(&r),
            "1970-01-01T00:00:00.000Z listener=openai client=10.0.0.5:4312 vpce=- sni=- pool=- server=- \
             server_addr=- connect_ms=- duration_ms=1.235 bytes_c2s=10 bytes_s2c=20 end=refused_rule detail=allow_vpce"
        );
    }

    #[test]
    fn text_line_with_ipv6_and_extremes() {
        let r = Record {
            client: "[2001:db8::7]:443".parse().unwrap(),
            server_addr: Some("0.0.0.0:0".parse().unwrap()),
            bytes_client_to_server: 0,
            bytes_server_to_client: u64::MAX,
            duration: Duration::from_nanos(499),
            ..record()
        };
        let line = text_of(&r);
        assert!(line.contains(" client=[2001:db8::7]:443 "), "{line}");
        assert!(line.contains(" server_addr=0.0.0.0:0 "), "{line}");
        assert!(line.contains(" duration_ms=0.000 "), "{line}");
        assert!(
            line.contains(" bytes_c2s=0 bytes_s2c=18446744073709551615 "),
            "{line}"
        );
    }

    #[test]
    fn json_line() {
        let mut out = Vec::new();
        json(&record(), &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["client"], "10.0.0.5:4312");
        assert_eq!(v["vpce"], "vpce-0123");
        assert_eq!(v["sni"], serde_json::Value::Null);
        assert_eq!(v["server_addr"], "10.1.0.9:443");
        assert_eq!(v["connect_ms"], 1.5);
        assert_eq!(v["duration_ms"], 2500.0);
        assert_eq!(v["bytes_s2c"], 20);
        assert_eq!(v["end"], "client_closed");
        assert_eq!(v["detail"], serde_json::Value::Null);
        assert_eq!(v.as_object().unwrap().len(), 14);
    }

    /// Parses native-protocol fields back, both forms.
    fn fields_of(mut entry: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut fields = Vec::new();
        while !entry.is_empty() {
            let eol = entry.iter().position(|b| *b == b'\n').unwrap();
            let line = &entry[..eol];
            if let Some(eq) = line.iter().position(|b| *b == b'=') {
                fields.push((
                    String::from_utf8(line[..eq].to_vec()).unwrap(),
                    line[eq + 1..].to_vec(),
                ));
                entry = &entry[eol + 1..];
            } else {
                let name = String::from_utf8(line.to_vec()).unwrap();
                let rest = &entry[eol + 1..];
                let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
                fields.push((name, rest[8..8 + len].to_vec()));
                assert_eq!(rest[8 + len], b'\n');
                entry = &rest[9 + len..];
            }
        }
        fields
    }

    #[test]
    fn journal_entry() {
        let r = Record {
            listener: "two\nlines".into(),
            ..record()
        };
        let mut out = Vec::new();
        journal(&r, b"the line", &mut out);
        let fields = fields_of(&out);
        let get = |name: &str| {
            fields
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
        };
        assert_eq!(get("MESSAGE").as_deref(), Some("the line"));
        assert_eq!(get("SYSLOG_IDENTIFIER").as_deref(), Some("l4relay"));
        assert_eq!(get("L4RELAY_LISTENER").as_deref(), Some("two\nlines"));
        assert_eq!(get("L4RELAY_CLIENT").as_deref(), Some("10.0.0.5:4312"));
        assert_eq!(get("L4RELAY_VPCE").as_deref(), Some("vpce-0123"));
        assert_eq!(get("L4RELAY_SNI"), None);
        assert_eq!(get("L4RELAY_SERVER_ADDR").as_deref(), Some("10.1.0.9:443"));
        assert_eq!(get("L4RELAY_CONNECT_MS").as_deref(), Some("1.500"));
        assert_eq!(get("L4RELAY_DURATION_MS").as_deref(), Some("2500.000"));
        assert_eq!(get("L4RELAY_BYTES_S2C").as_deref(), Some("20"));
        assert_eq!(get("L4RELAY_END").as_deref(), Some("client_closed"));
    }
}
