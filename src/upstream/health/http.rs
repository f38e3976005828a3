//! The HTTP health check's exchange: one request with `Connection: close`, one bounded response
//! read, and the verdict: up for an accepted status (and body substring), down with the status,
//! or down as "refused by upstream firewall" for a status the pool maps to that.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::upstream::health::HttpCheck;
use crate::upstream::pool::state::Reason;
use crate::upstream::pool::Server;

/// The response head and body read at most: enough for any status line and a health page.
const MAX_RESPONSE: usize = 64 * 1024;

/// Sends the check's request on `stream` and judges the response.
pub async fn exchange<S>(
    stream: &mut S,
    server: &Server,
    check: &HttpCheck,
    tls: bool,
) -> Result<(), Reason>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let request = request(server, check, tls);
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| Reason::new("error", format!("sending the HTTP request: {e}")))?;
    let mut response = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(n) => n,
            // A peer that closes without TLS close_notify after a complete response is common.
            Err(_) if head_end(&response).is_some() => 0,
            Err(e) => {
                return Err(Reason::new(
                    "error",
                    format!("reading the HTTP response: {e}"),
                ))
            }
        };
        response.extend_from_slice(&chunk[..n]);
        let done = n == 0 || response.len() >= MAX_RESPONSE || complete(&response, check);
        if done {
            return judge(&response, check);
        }
    }
}

fn request(server: &Server, check: &HttpCheck, tls: bool) -> String {
    let default_port = if tls { 443 } else { 80 };
    let host = match (&check.host, &server.host) {
        (Some(host), _) => host.clone(),
        (None, Some(name)) if server.addr.port() == default_port => name.to_string(),
        (None, Some(name)) => format!("{name}:{}", server.addr.port()),
        (None, None) => server.addr.to_string(),
    };
    format!(
        "{} {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: l4relay-health/{}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        check.method,
        check.path,
        env!("CARGO_PKG_VERSION")
    )
}

/// Offset just past the blank line that ends the head.
fn head_end(response: &[u8]) -> Option<usize> {
    response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// Whether enough has been read to judge: the head, plus (when a body substring is wanted)
/// the substring or the whole body as Content-Length gives it.
fn complete(response: &[u8], check: &HttpCheck) -> bool {
    let Some(end) = head_end(response) else {
        return false;
    };
    let Some(wanted) = &check.body else {
        return true;
    };
    let body = &response[end..];
    if contains(body, wanted.as_bytes()) {
        return true;
    }
    content_length(&response[..end]).is_some_and(|len| body.len() >= len)
}

fn content_length(head: &[u8]) -> Option<usize> {
    let head = std::str::from_utf8(head).ok()?;
    head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

fn judge(response: &[u8], check: &HttpCheck) -> Result<(), Reason> {
    let Some(end) = head_end(response) else {
        return Err(Reason::new(
            "error",
            if response.is_empty() {
                "the server closed the connection without an HTTP response".to_string()
            } else {
                "invalid HTTP response: no complete head".to_string()
            },
        ));
    };
    let status = status_code(&response[..end])
        .ok_or_else(|| Reason::new("error", "invalid HTTP response: no HTTP/1.x status line"))?;
    if check.firewall_statuses.iter().any(|r| r.contains(status)) {
        return Err(Reason::new(
            "firewall",
            format!("refused by upstream firewall: HTTP {status} (egress not allowlisted?)"),
        ));
    }
    if !check.statuses.iter().any(|r| r.contains(status)) {
        let expected: Vec<String> = check.statuses.iter().map(|r| r.to_string()).collect();
        return Err(Reason::new(
            "http_status",
            format!("HTTP status {status} (expected {})", expected.join(", ")),
        ));
    }
    if let Some(wanted) = &check.body {
        if !contains(&response[end..], wanted.as_bytes()) {
            return Err(Reason::new(
                "http_body",
                format!("HTTP {status}, but the body lacks \"{wanted}\""),
            ));
        }
    }
    Ok(())
}

/// The status of "HTTP/1.1 200 OK".
fn status_code(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok().filter(|c| (100..=599).contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::health::StatusRange;

    fn check(statuses: &[(u16, u16)], firewall: &[(u16, u16)], body: Option<&str>) -> HttpCheck {
        let range = |&(low, high): &(u16, u16)| StatusRange { low, high };
        HttpCheck {
            method: "GET".into(),
            path: "/".into(),
            host: None,
            statuses: statuses.iter().map(range).collect(),
            body: body.map(str::to_string),
            firewall_statuses: firewall.iter().map(range).collect(),
        }
    }

    #[test]
    fn statuses_ranges_and_firewall() {
        let c = check(&[(401, 401), (200, 299)], &[(403, 403)], None);
        assert!(judge(b"HTTP/1.1 401 Unauthorized\r\n\r\n", &c).is_ok());
        assert!(judge(b"HTTP/1.0 204 No Content\r\nX: y\r\n\r\n", &c).is_ok());
        let down = judge(b"HTTP/1.1 503 Busy\r\n\r\n", &c).unwrap_err();
        assert_eq!(down.kind, "http_status");
        assert_eq!(down.text, "HTTP status 503 (expected 401, 200-299)");
        let firewall = judge(b"HTTP/1.1 403 Forbidden\r\n\r\n", &c).unwrap_err();
        assert_eq!(firewall.kind, "firewall");
        assert!(firewall.text.contains("refused by upstream firewall"));
    }

    #[test]
    fn body_substring() {
        let c = check(&[(200, 200)], &[], Some("\"status\":\"ok\""));
        let good = b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n{\"status\":\"ok\"}";
        assert!(complete(good, &c));
        assert!(judge(good, &c).is_ok());
        let bad = b"HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\n{\"status\":\"down\"}";
        assert!(complete(bad, &c), "the whole body is there");
        assert_eq!(judge(bad, &c).unwrap_err().kind, "http_body");
        assert!(!complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n{",
            &c
        ));
    }

    #[test]
    fn malformed_responses() {
        let c = check(&[(200, 399)], &[], None);
        for bad in [
            &b""[..],
            b"HTTP/1.1 200 OK\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 099 X\r\n\r\n",
        ] {
            assert_eq!(judge(bad, &c).unwrap_err().kind, "error", "{bad:?}");
        }
    }
}
