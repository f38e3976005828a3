//! The relay's admin API: requests, /status, and metrics read from /metrics. A metric series
//! that is not there fails the test (`metric`): a renamed metric must not read as zero. Where
//! absence is the answer, a test asks `sample_in` for an Option.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::log::parse_rfc3339;
use super::net::STEP_LIMIT;
use super::process::RelayProcess;

/// One HTTP/1.1 request to the admin listener: (status, body).
pub async fn admin_request(
    admin: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: {admin}\r\n{auth}Content-Length: 0\r\n\r\n");
    raw_request(admin, request.as_bytes()).await
}

/// Sends `request` as it is (a PROXY header, a request head with any headers) and reads the
/// answer to its end: (status, body); status 0 when the answer is not HTTP.
pub async fn raw_request(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect to admin");
    stream.write_all(request).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(STEP_LIMIT, stream.read_to_string(&mut response))
        .await
        .expect("admin answered in time")
        .unwrap_or_else(|e| panic!("{}: {e}", String::from_utf8_lossy(request)));
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    (status, body)
}

pub async fn get_status(admin: SocketAddr) -> serde_json::Value {
    let (code, body) = admin_request(admin, "GET", "/status", None).await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

pub fn pool_json<'a>(status: &'a serde_json::Value, pool: &str) -> &'a serde_json::Value {
    status["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == pool)
        .unwrap_or_else(|| panic!("no pool {pool} in {status}"))
}

/// The /status entries of a pool's server (one per address), in order.
pub fn servers_json(
    status: &serde_json::Value,
    pool: &str,
    server: &str,
) -> Vec<serde_json::Value> {
    pool_json(status, pool)["servers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["name"] == server)
        .cloned()
        .collect()
}

/// The addresses of a pool's server that /status shows up, sorted.
pub fn up_addresses(status: &serde_json::Value, pool: &str, server: &str) -> Vec<String> {
    let mut up: Vec<String> = servers_json(status, pool, server)
        .iter()
        .filter(|s| s["state"] == "up")
        .map(|s| s["address"].as_str().unwrap().to_string())
        .collect();
    up.sort();
    up
}

/// The first DNS name a pool follows, as /status shows it (addresses, TTL, errors).
pub fn dns_json(status: &serde_json::Value, pool: &str) -> serde_json::Value {
    pool_json(status, pool)["dns"][0].clone()
}

/// Polls /status until `condition` holds; how long it took. Fails after `limit`, showing the
/// last status.
pub async fn wait_status(
    admin: SocketAddr,
    limit: Duration,
    what: &str,
    mut condition: impl FnMut(&serde_json::Value) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let status = get_status(admin).await;
        if condition(&status) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "not {what} within {limit:?}: {status}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// When a server address's shown state began, as /status reports it (`since`).
pub fn since(server: &serde_json::Value) -> SystemTime {
    server["since"]
        .as_str()
        .and_then(parse_rfc3339)
        .unwrap_or_else(|| panic!("no time in `since`: {server}"))
}

/// The exposition text of /metrics.
pub async fn metrics_text(admin: SocketAddr) -> String {
    let (code, text) = admin_request(admin, "GET", "/metrics", None).await;
    assert_eq!(code, 200, "{text}");
    text
}

/// In exposition `text`, the value of the series `name` whose labels include every pair in
/// `labels`; None when there is no such series.
pub fn sample_in(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if series_name != name {
                return None;
            }
            let pairs: Vec<&str> = series_labels.split(',').collect();
            labels
                .iter()
                .all(|(k, v)| pairs.contains(&format!("{k}=\"{v}\"").as_str()))
                .then(|| value.parse().ok())
                .flatten()
        })
}

/// The value of the series `name` with every label pair in `labels`; fails the test, showing
/// the series of that name there are, if there is none.
pub async fn metric(admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = metrics_text(admin).await;
    sample_in(&text, name, labels).unwrap_or_else(|| {
        let same_name: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .collect();
        panic!(
            "no series {name} with {labels:?} in /metrics; of that name:\n{}",
            same_name.join("\n")
        )
    })
}

/// Descriptors the relay may rightly hold beyond a baseline taken before it relayed anything:
/// its pooled pipes, two each, as `l4relay_pipes{state="pooled"}` reports them now. None while
/// some pipe is still in use.
#[allow(dead_code)] // used by the test binaries of their own (floods, soak, slow_peers)
pub async fn pooled_pipe_fds(admin: SocketAddr) -> Option<usize> {
    let text = metrics_text(admin).await;
    let value = |state| {
        sample_in(&text, "l4relay_pipes", &[("state", state)])
            .unwrap_or_else(|| panic!("no l4relay_pipes{{state=\"{state}\"}} in /metrics"))
    };
    (value("in_use") == 0.0).then(|| 2 * value("pooled") as usize)
}

/// Waits (up to `limit`) until the relay uses no pipe and holds no more descriptors than
/// `baseline` plus its pooled pipes: exactly what it may keep, so that even a leak of one
/// descriptor in many connections shows. Err says what it holds.
#[allow(dead_code)] // used by the test binaries of their own (floods, soak, slow_peers)
pub async fn fds_back_to(
    relay: &RelayProcess,
    admin: SocketAddr,
    baseline: usize,
    limit: std::time::Duration,
) -> Result<(), String> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let pooled = pooled_pipe_fds(admin).await;
        // Counted after the scrape, whose connection the relay has closed by then.
        let open = relay.open_fds();
        match pooled {
            Some(pooled) if open <= baseline + pooled => return Ok(()),
            _ if std::time::Instant::now() < deadline => {}
            Some(pooled) => {
                return Err(format!(
                    "relay holds {open} fds: {baseline} before, plus {pooled} for its pooled \
                     pipes, is all it may keep"
                ))
            }
            None => return Err(format!("pipes still in use after {limit:?} ({open} fds)")),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
