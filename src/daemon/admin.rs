//! The admin HTTP listener: /metrics, /healthz, /readyz, /status, the status page (`/`,
//! `status_page`), the live connections (`/connections`, `connections`), and the POST endpoints
//! that set a server draining or ready (`/pools/{pool}/servers/{server}/drain|ready`) or close a
//! connection (`/connections/{id}/close`), which need `Authorization: Bearer <token>` when
//! `[admin] token` is set.
//!
//! A deliberately small HTTP/1.1 server: one request per connection, a bounded request head, a
//! timeout, `Connection: close`. Each request may be preceded by a PROXY protocol header (v1 or
//! v2), because an AWS NLB health check on a target group with PROXY protocol enabled sends one
//! before its HTTP request. The optional health listener serves only /healthz and /readyz, so a
//! load balancer can reach readiness without /metrics and /status being exposed with it.
//!
//! It runs on the control thread, never on a worker: a scrape cannot delay relayed traffic.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;

use super::{connections, status_page};
use crate::daemon::State;
use crate::lifecycle::Phase;
use crate::observe::telemetry;
use crate::protocol::proxy_protocol::{self, Accept, Parsed};
use crate::relay::pipe;

const MAX_REQUEST_HEAD: usize = 8 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What the admin endpoints read.
pub struct Admin {
    pub state: Arc<State>,
    pub prometheus: Option<PrometheusHandle>,
    pub workers: Vec<Handle>,
    /// Required by POST requests when set.
    pub token: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every endpoint.
    Full,
    /// /healthz and /readyz only.
    HealthOnly,
}

pub async fn serve(listener: TcpListener, admin: Arc<Admin>, scope: Scope) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let admin = Arc::clone(&admin);
                tokio::spawn(async move {
                    let _ =
                        tokio::time::timeout(REQUEST_TIMEOUT, handle(stream, &admin, scope)).await;
                });
            }
            Err(e) => {
                tracing::warn!("admin accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

pub(super) struct Response {
    pub(super) status: u16,
    pub(super) content_type: &'static str,
    pub(super) body: String,
}

impl Response {
    pub(super) fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

async fn handle(mut stream: TcpStream, admin: &Admin, scope: Scope) {
    let mut buf = Vec::with_capacity(1024);
    let request = loop {
        let mut chunk = [0u8; 1024];
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        match request_head(&buf) {
            Head::Complete(request) => break request,
            Head::Incomplete if buf.len() < MAX_REQUEST_HEAD => continue,
            Head::Incomplete | Head::Bad => {
                respond(&mut stream, Response::text(400, "bad request\n")).await;
                return;
            }
        }
    };
    let response = route(&request, admin, scope).await;
    respond(&mut stream, response).await;
}

struct Request {
    method: String,
    path: String,
    /// What follows the `?`, if anything.
    query: String,
    /// The `Authorization` header's value.
    authorization: Option<String>,
}

enum Head {
    Complete(Request),
    Incomplete,
    Bad,
}

/// Parses a request head, after an optional PROXY header.
fn request_head(buf: &[u8]) -> Head {
    let mut start = 0;
    if buf.starts_with(b"PROXY ")
        || buf.starts_with(b"\r\n\r\n\0\r\nQUIT\n")
        || is_prefix_of_proxy(buf)
    {
        match proxy_protocol::parse(buf, Accept::Any) {
            Ok(Parsed::Complete { len, .. }) => start = len,
            Ok(Parsed::Incomplete) => return Head::Incomplete,
            Err(_) => return Head::Bad,
        }
    }
    let rest = &buf[start..];
    let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Head::Incomplete;
    };
    let Ok(head) = std::str::from_utf8(&rest[..end]) else {
        return Head::Bad;
    };
    let mut lines = head.lines();
    let mut parts = lines.next().unwrap_or("").split(' ');
    let authorization = lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("authorization")
            .then(|| value.trim().to_string())
    });
    match (parts.next(), parts.next(), parts.next()) {
        (Some(method), Some(target), Some(version)) if version.starts_with("HTTP/1.") => {
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            Head::Complete(Request {
                method: method.to_string(),
                path: path.to_string(),
                query: query.to_string(),
                authorization,
            })
        }
        _ => Head::Bad,
    }
}

/// A buffer too short to tell whether a PROXY header starts it.
fn is_prefix_of_proxy(buf: &[u8]) -> bool {
    let v1 = b"PROXY ";
    let v2 = b"\r\n\r\n\0\r\nQUIT\n";
    (buf.len() < v1.len() && v1.starts_with(buf)) || (buf.len() < v2.len() && v2.starts_with(buf))
}

async fn route(request: &Request, admin: &Admin, scope: Scope) -> Response {
    let full = scope == Scope::Full;
    match (request.method.as_str(), request.path.as_str()) {
        ("GET" | "HEAD", "/healthz") => match admin.state.heartbeats.stuck() {
            None => Response::text(200, "ok\n"),
            Some((index, silent)) => Response::text(503, format!("{}\n", stuck(index, silent))),
        },
        ("GET" | "HEAD", "/readyz") => match readiness(&admin.state) {
            Ok(()) => Response::text(200, "ready\n"),
            Err(why) => Response::text(503, format!("not ready: {why}\n")),
        },
        ("GET" | "HEAD", "/metrics") if full => metrics(admin).await,
        ("GET" | "HEAD", "/status") if full => Response {
            status: 200,
            content_type: "application/json",
            body: status(&admin.state).to_string() + "\n",
        },
        ("GET" | "HEAD", path) if full && status_page::serves(path) => status_page::asset(path),
        ("GET" | "HEAD", "/connections") if full => {
            connections::list(&admin.state.sessions.registry, &request.query)
        }
        (_, "/healthz" | "/readyz") => Response::text(405, "method not allowed\n"),
        (_, "/metrics" | "/status" | "/connections") if full => {
            Response::text(405, "method not allowed\n")
        }
        (method, path) if full && path.starts_with("/pools/") => {
            server_control(method, path, request.authorization.as_deref(), admin)
        }
        (method, path) if full && path.starts_with("/connections/") => {
            if method != "POST" {
                return Response::text(405, "method not allowed: use POST\n");
            }
            if let Err(refused) = authorize(admin, request.authorization.as_deref()) {
                return refused;
            }
            connections::close(&admin.state.sessions.registry, path)
        }
        _ => Response::text(404, "not found\n"),
    }
}

/// `POST /pools/{pool}/servers/{server}/drain` and `.../ready`: every address of the server
/// stops taking new connections (open ones finish) or takes them again. Names are the config's,
/// percent-encoded where needed.
fn server_control(
    method: &str,
    path: &str,
    authorization: Option<&str>,
    admin: &Admin,
) -> Response {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let [_, pool, "servers", server, action @ ("drain" | "ready")] = parts.as_slice() else {
        return Response::text(404, "not found\n");
    };
    if method != "POST" {
        return Response::text(405, "method not allowed: use POST\n");
    }
    if let Err(refused) = authorize(admin, authorization) {
        return refused;
    }
    let (Some(pool_name), Some(server_name)) = (percent_decode(pool), percent_decode(server))
    else {
        return Response::text(400, "bad request: invalid percent-encoding\n");
    };
    let listeners = admin.state.listeners.load();
    let found = listeners.first().and_then(|slot| {
        let settings = slot.settings.load();
        settings
            .pools
            .iter()
            .find(|p| *p.name == *pool_name)
            .cloned()
    });
    let Some(pool) = found else {
        return Response::text(404, format!("no pool named \"{pool_name}\"\n"));
    };
    let draining = *action == "drain";
    match pool.set_draining(&server_name, draining) {
        None => Response::text(
            404,
            format!("pool \"{pool_name}\" has no server named \"{server_name}\"\n"),
        ),
        Some(changed) => Response {
            status: 200,
            content_type: "application/json",
            body: serde_json::json!({
                "pool": pool_name,
                "server": server_name,
                "state": if draining { "draining" } else { "ready" },
                "addresses_changed": changed,
            })
            .to_string()
                + "\n",
        },
    }
}

/// What every POST needs: `Authorization: Bearer <token>` when `[admin] token` is set.
fn authorize(admin: &Admin, authorization: Option<&str>) -> Result<(), Response> {
    if let Some(token) = &admin.token {
        let sent = authorization.and_then(|a| a.strip_prefix("Bearer "));
        if !sent.is_some_and(|sent| same_secret(sent.trim().as_bytes(), token.as_bytes())) {
            return Err(Response::text(
                401,
                "unauthorized: send Authorization: Bearer <token>\n",
            ));
        }
    }
    Ok(())
}

/// Compares without stopping at the first difference, so timing does not reveal a prefix.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(super) fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Ready: not draining, and every listener's default pool has a server that may take a
/// connection.
pub fn readiness(state: &State) -> Result<(), String> {
    let phase = *state.sessions.phase.borrow();
    if phase != Phase::Running {
        return Err("draining".to_string());
    }
    // New connections hashed to a stuck worker's socket would wait in its accept queue.
    if let Some((index, silent)) = state.heartbeats.stuck() {
        return Err(stuck(index, silent));
    }
    for slot in state.listeners.load().iter() {
        let settings = slot.settings.load();
        if !settings.pool.has_server_up() {
            return Err(format!(
                "listener \"{}\": pool \"{}\" has no server up",
                settings.name, settings.pool.name
            ));
        }
    }
    Ok(())
}

fn stuck(index: usize, silent: Duration) -> String {
    format!(
        "worker-{index} stuck: its event loop has not run for {:.1}s",
        silent.as_secs_f64()
    )
}

async fn metrics(admin: &Admin) -> Response {
    let Some(prometheus) = &admin.prometheus else {
        return Response::text(404, "metrics are off ([admin] metrics = false)\n");
    };
    telemetry::record_process();
    let (mut in_use, mut pooled) = (0, 0);
    for (used, idle) in worker_pipe_stats(&admin.workers).await {
        in_use += used;
        pooled += idle;
    }
    metrics::gauge!(telemetry::PIPES, "state" => "in_use").set(in_use as f64);
    metrics::gauge!(telemetry::PIPES, "state" => "pooled").set(pooled as f64);
    metrics::gauge!(telemetry::READY).set(if readiness(&admin.state).is_ok() {
        1.0
    } else {
        0.0
    });
    metrics::counter!(telemetry::ACCESS_LOG_DROPPED)
        .absolute(admin.state.sessions.access_log.dropped());
    Response {
        status: 200,
        content_type: "text/plain; version=0.0.4; charset=utf-8",
        body: prometheus.render(),
    }
}

/// Each worker's pipe counts, read on the worker itself (they are thread-local).
async fn worker_pipe_stats(workers: &[Handle]) -> Vec<(usize, usize)> {
    let mut replies = Vec::with_capacity(workers.len());
    for worker in workers {
        let (tx, rx) = tokio::sync::oneshot::channel();
        worker.spawn(async move {
            let _ = tx.send(pipe::thread_stats());
        });
        replies.push(rx);
    }
    let mut stats = Vec::with_capacity(replies.len());
    for reply in replies {
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(1), reply).await {
            stats.push(s);
        }
    }
    stats
}

fn status(state: &State) -> serde_json::Value {
    let listeners = state.listeners.load();
    let mut pools_seen: Vec<serde_json::Value> = Vec::new();
    let mut pool_names: Vec<String> = Vec::new();
    let listeners_json: Vec<serde_json::Value> = listeners
        .iter()
        .map(|slot| {
            let settings = slot.settings.load();
            for pool in &settings.pools {
                if !pool_names.contains(&pool.name.to_string()) {
                    pool_names.push(pool.name.to_string());
                    pools_seen.push(pool.status());
                }
            }
            serde_json::json!({
                "name": &*settings.name,
                "listen": slot.addr.to_string(),
                "pool": &*settings.pool.name,
                "active": slot.limit.active(),
                "max_connections": slot.limit.max(),
            })
        })
        .collect();
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "phase": format!("{:?}", *state.sessions.phase.borrow()).to_lowercase(),
        "ready": readiness(state).is_ok(),
        "connections": { "active": state.sessions.limit.active(), "max": state.sessions.limit.max() },
        "listeners": listeners_json,
        "pools": pools_seen,
    })
}

async fn respond(stream: &mut TcpStream, response: Response) {
    let reason = match response.status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "",
    };
    let head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        response.status,
        response.content_type,
        response.body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(response.body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Binds an admin or health listener.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(buf: &[u8]) -> Option<String> {
        match request_head(buf) {
            Head::Complete(r) => Some(format!("{} {}", r.method, r.path)),
            _ => None,
        }
    }

    #[test]
    fn plain_and_proxied_requests() {
        assert_eq!(
            path(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n").as_deref(),
            Some("GET /readyz")
        );
        let mut v2 = Vec::new();
        proxy_protocol::encode_v2(
            "10.0.0.1:1234".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
            None,
            &mut v2,
        );
        v2.extend_from_slice(b"GET /readyz?x=1 HTTP/1.1\r\n\r\n");
        assert_eq!(path(&v2).as_deref(), Some("GET /readyz"));
        let mut local = Vec::new();
        proxy_protocol::encode_v2_local(&mut local);
        local.extend_from_slice(b"GET /healthz HTTP/1.0\r\n\r\n");
        assert_eq!(path(&local).as_deref(), Some("GET /healthz"));
        assert_eq!(
            path(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nHEAD /readyz HTTP/1.1\r\n\r\n").as_deref(),
            Some("HEAD /readyz")
        );
        assert!(matches!(request_head(b"\r\n\r\n\0"), Head::Incomplete));
        assert!(matches!(
            request_head(b"GET /readyz HTTP/1.1\r\n"),
            Head::Incomplete
        ));
        assert!(matches!(request_head(b"NONSENSE\r\n\r\n"), Head::Bad));
    }

    #[test]
    fn authorization_header_and_percent_decoding() {
        let Head::Complete(r) = request_head(
            b"POST /pools/p/servers/a/drain HTTP/1.1\r\nHost: x\r\nauthorization:  Bearer abc \r\n\r\n",
        ) else {
            panic!("incomplete");
        };
        assert_eq!(r.authorization.as_deref(), Some("Bearer abc"));
        assert_eq!(
            percent_decode("127.0.0.1%3A9000").as_deref(),
            Some("127.0.0.1:9000")
        );
        assert_eq!(percent_decode("a%2"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
    }
}
