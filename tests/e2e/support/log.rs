//! The relay's access log: stdout, one line per connection.

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
