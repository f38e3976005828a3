//! The relay's access log (stdout: one line per connection) and the times it reports: the
//! timestamps of its stderr lines and the RFC 3339 times in /status. Timing assertions measure
//! from these where they can, so that a busy test process polling late does not count against
//! the relay.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::net::STEP_LIMIT;
use super::process::{eventually, RelayProcess};

/// The value of `key=` in an access-log line.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
}

/// How many lines the access log has: a mark to search from for the next connection's line.
/// Client ports are reused (another listener, or after TIME_WAIT reuse on loopback), so a
/// socket-named client is looked up only in lines written after its connection was opened.
pub fn log_mark(relay: &RelayProcess) -> usize {
    relay.access_log().lines().count()
}

/// Waits for the access-log line whose `client=` is `client` (unique in the whole log, like
/// sources named in PROXY headers); returns it.
pub async fn log_for(relay: &RelayProcess, client: impl std::fmt::Display) -> String {
    log_since(relay, 0, client).await
}

/// Waits (up to `STEP_LIMIT`) for the first access-log line from line `mark` on whose
/// `client=` is `client`; returns it.
pub async fn log_since(
    relay: &RelayProcess,
    mark: usize,
    client: impl std::fmt::Display,
) -> String {
    let client = client.to_string();
    let found = |log: &str| {
        log.lines()
            .skip(mark)
            .find(|l| field(l, "client") == Some(client.as_str()))
            .map(str::to_string)
    };
    eventually(STEP_LIMIT, || found(&relay.access_log()).is_some()).await;
    found(&relay.access_log()).unwrap_or_else(|| {
        panic!(
            "no access-log line for client={client} after line {mark}:\n{}",
            relay.access_log()
        )
    })
}

/// Waits (up to `STEP_LIMIT`) for the first access-log line that satisfies `wanted`.
pub async fn log_where(relay: &RelayProcess, what: &str, wanted: impl Fn(&str) -> bool) -> String {
    let found = |log: &str| log.lines().find(|l| wanted(l)).map(str::to_string);
    eventually(STEP_LIMIT, || found(&relay.access_log()).is_some()).await;
    found(&relay.access_log())
        .unwrap_or_else(|| panic!("no access-log line for {what}:\n{}", relay.access_log()))
}

/// When the relay logged the first stderr line containing `text` (each line starts with its
/// RFC 3339 UTC timestamp); None if no such line yet.
pub fn logged_at(relay: &RelayProcess, text: &str) -> Option<SystemTime> {
    let stderr = relay.stderr();
    let line = stderr.lines().find(|l| l.contains(text))?;
    let stamp = line.split_whitespace().next()?;
    Some(parse_rfc3339(stamp).unwrap_or_else(|| panic!("no timestamp in {line:?}")))
}

/// How long after the first stderr line containing `earlier` the relay logged the first line
/// containing `later`; panics if either is missing.
pub fn logged_between(relay: &RelayProcess, earlier: &str, later: &str) -> Duration {
    let at = |text| {
        logged_at(relay, text).unwrap_or_else(|| panic!("no {text:?} logged:\n{}", relay.stderr()))
    };
    at(later)
        .duration_since(at(earlier))
        .unwrap_or_else(|e| panic!("{later:?} logged {:?} before {earlier:?}", e.duration()))
}

/// `2026-11-24T01:55:12.123Z` (any number of fraction digits, or none; UTC only) as a time.
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut date = date.split('-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (date.next()??, date.next()??, date.next()??);
    let (hms, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut hms = hms.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    let nanos = if fraction.is_empty() {
        0
    } else {
        let digits: String = fraction
            .chars()
            .chain(std::iter::repeat('0'))
            .take(9)
            .collect();
        digits.parse::<u32>().ok()?
    };
    // Days since 1970-01-01 in the proleptic Gregorian calendar (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    Some(UNIX_EPOCH + Duration::new(days * 86_400 + h * 3600 + m * 60 + s, nanos))
}
