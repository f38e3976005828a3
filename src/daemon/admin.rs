//! The admin HTTP listener: /metrics, /healthz, /readyz, /status, the status page (`/`,
//! `status_page`), the live connections (`/connections`, `connections`), and the POST endpoints
//! that set a server draining or ready (`/pools/{pool}/servers/{server}/drain|ready`) or close a
//! connection (`/connections/{id}/close`), which need `Authorization: Bearer <token>` when
//! `[admin] token` is set and are off when the listener is reachable off loopback without one.
//!
//! A deliberately small HTTP/1.1 server: one request per connection, a bounded request head, a
//! deadline for the whole exchange, `Connection: close`, and at most `MAX_CONNECTIONS` at once
//! per listener (the rest get a 503 at once and are counted). Each request may be preceded by a
//! PROXY protocol header (v1 or v2), because an AWS NLB health check on a target group with
//! PROXY protocol enabled sends one before its HTTP request. The optional health listener serves
//! only /healthz and /readyz, so a load balancer can reach readiness without /metrics and
//! /status being exposed with it.
//!
//! Against a browser on the same host (DNS rebinding, cross-site POSTs): what is worth reading or
//! changing (/metrics, /status, the POSTs) answers only a `Host` that is absent, an IP address,
//! `localhost` or a name in `[admin] host_names`, and a POST that carries an `Origin` header
//! (only browsers send one) is refused. /healthz and /readyz answer any `Host`: load balancers
//! send the target's address or a name of their own, and the answers reveal nothing.
//!
//! What a reload may change (the token, the host names, the addresses) is swapped in live: a
//! leaked token is revoked by a reload, without a restart and its drain.
//!
//! It runs on the control thread, never on a worker: a scrape cannot delay relayed traffic.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::{connections, status_page};
use crate::config::{self, AdminToken};
use crate::daemon::readiness::{readiness, stuck};
use crate::daemon::State;
use crate::observe::telemetry;
use crate::protocol::proxy_protocol::{self, Accept, Parsed};
use crate::relay::pipe;

const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// The deadline of a connection's whole exchange: request head, answer, close.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once per admin or health listener. A scraper, a load balancer and an
/// operator need a handful; the cap keeps a flood of idle connections from holding descriptors
/// and memory (each is held at most `REQUEST_TIMEOUT`).
pub const MAX_CONNECTIONS: usize = 64;
/// Connections turned away at `MAX_CONNECTIONS`, by listener (`admin`, `health`).
pub const REFUSED: &str = "l4relay_admin_connections_refused_total";
/// What a connection over the cap gets, written once without waiting, before it is closed.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 27\r\nConnection: close\r\n\r\ntoo many admin connections\n";

/// What the admin endpoints read.
pub struct Admin {
    pub state: Arc<State>,
    pub prometheus: Option<PrometheusHandle>,
    pub workers: Vec<Handle>,
    /// The running config's token, host names and POST rule; a reload swaps them.
    pub access: ArcSwap<Access>,
}

/// Who may do what on the admin listener, from `[admin]`.
pub struct Access {
    /// Required by POST requests when set.
    token: Option<AdminToken>,
    /// Off: the listener is reachable off loopback and there is no token.
    posts_enabled: bool,
    /// Accepted in `Host` besides IP addresses and `localhost`.
    host_names: Vec<String>,
}

impl Access {
    pub fn new(admin: &config::Admin) -> Access {
        Access {
            token: admin.token.clone(),
            posts_enabled: admin.posts_enabled(),
            host_names: admin.host_names.clone(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Scope {
    /// Every endpoint.
    Full,
    /// /healthz and /readyz only.
    HealthOnly,
}

impl Scope {
    fn name(self) -> &'static str {
        match self {
            Scope::Full => "admin",
            Scope::HealthOnly => "health",
        }
    }
}

pub fn describe_metrics() {
    metrics::describe_counter!(
        REFUSED,
        "Admin and health listener connections turned away with a 503 because MAX_CONNECTIONS (64) were open."
    );
    for scope in [Scope::Full, Scope::HealthOnly] {
        metrics::counter!(REFUSED, "listener" => scope.name()).absolute(0);
    }
}

/// The admin and health listeners being served, so a reload can move them.
#[derive(Default)]
pub struct Listeners {
    served: Vec<Served>,
}

struct Served {
    addr: SocketAddr,
    scope: Scope,
    task: JoinHandle<()>,
}

/// Sockets bound for a new `[admin]`, not yet served: `Listeners::commit` serves them.
pub struct Bound {
    wanted: Vec<(SocketAddr, Scope)>,
    new: Vec<(SocketAddr, Scope, TcpListener)>,
}

impl Listeners {
    /// Binds the addresses of `admin` that are not served already. Changes nothing: on an error
    /// (an address that cannot be bound) the sockets bound so far are closed again.
    pub fn bind(&self, admin: &config::Admin) -> Result<Bound, String> {
        let wanted: Vec<(SocketAddr, Scope)> = [
            (admin.listen, Scope::Full),
            (admin.health_listen, Scope::HealthOnly),
        ]
        .into_iter()
        .filter_map(|(addr, scope)| Some((addr?, scope)))
        .collect();
        let mut new = Vec::new();
        for &(addr, scope) in &wanted {
            if self
                .served
                .iter()
                .any(|s| s.addr == addr && s.scope == scope)
            {
                continue;
            }
            let what = scope.name();
            let socket =
                bind(addr).map_err(|e| format!("cannot listen on {addr} ({what}): {e}"))?;
            let listener =
                TcpListener::from_std(socket).map_err(|e| format!("{what} listener: {e}"))?;
            new.push((addr, scope, listener));
        }
        Ok(Bound { wanted, new })
    }

    /// Serves what `bind` bound and closes the listeners no longer wanted (requests in
    /// progress on them finish).
    pub fn commit(&mut self, bound: Bound, admin: &Arc<Admin>) {
        self.served.retain(|s| {
            let keep = bound.wanted.contains(&(s.addr, s.scope));
            if !keep {
                tracing::info!(address = %s.addr, "{} listener closed", s.scope.name());
                s.task.abort();
            }
            keep
        });
        for (addr, scope, listener) in bound.new {
            tracing::info!(address = %addr, "{} listener", scope.name());
            let task = tokio::spawn(serve(listener, Arc::clone(admin), scope));
            self.served.push(Served { addr, scope, task });
        }
    }
}

async fn serve(listener: TcpListener, admin: Arc<Admin>, scope: Scope) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let refused = metrics::counter!(REFUSED, "listener" => scope.name());
    let mut warned: Option<Instant> = None;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                    refused.increment(1);
                    // Said once a minute at most: a flood must not flood the log too.
                    if warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                        warned = Some(Instant::now());
                        tracing::warn!(
                            "{} listener: {MAX_CONNECTIONS} connections open, turning new ones away with 503 (latest from {peer}; counted in {REFUSED})",
                            scope.name()
                        );
                    }
                    let _ = stream.try_write(BUSY);
                    continue;
                };
                let admin = Arc::clone(&admin);
                tokio::spawn(async move {
                    let _ =
                        tokio::time::timeout(REQUEST_TIMEOUT, handle(stream, &admin, scope)).await;
                    drop(slot);
                });
            }
            Err(e) => {
                tracing::warn!("{} accept: {e}", scope.name());
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
    /// The `Host` header's value.
    host: Option<String>,
    /// Whether an `Origin` header came: the request is a browser's.
    origin: bool,
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
    let (mut authorization, mut host, mut origin) = (None, None, false);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("authorization") {
            authorization.get_or_insert_with(|| value.to_string());
        } else if name.eq_ignore_ascii_case("host") {
            host.get_or_insert_with(|| value.to_string());
        } else if name.eq_ignore_ascii_case("origin") {
            origin = true;
        }
    }
    match (parts.next(), parts.next(), parts.next()) {
        (Some(method), Some(target), Some(version)) if version.starts_with("HTTP/1.") => {
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            Head::Complete(Request {
                method: method.to_string(),
                path: path.to_string(),
                query: query.to_string(),
                authorization,
                host,
                origin,
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

/// Whether a `Host` header may reach /metrics, /status and the POSTs. An IP address cannot be
/// rebound by DNS (a page can only name it as its own origin), so any is accepted: behind NAT
/// (a container's published port, a Kubernetes service) the address a client names is not one
/// the listener can know. Names must be `localhost` or listed in `host_names`.
fn host_allowed(host: Option<&str>, host_names: &[String]) -> bool {
    let Some(host) = host.filter(|h| !h.is_empty()) else {
        return true;
    };
    let port_ok = |port: &str| port.parse::<u16>().is_ok();
    if let Some(bracketed) = host.strip_prefix('[') {
        let Some((ip, after)) = bracketed.split_once(']') else {
            return false;
        };
        return ip.parse::<Ipv6Addr>().is_ok()
            && (after.is_empty() || after.strip_prefix(':').is_some_and(port_ok));
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port_ok(port) => name,
        Some(_) => return false,
        None => host,
    };
    if name.parse::<Ipv4Addr>().is_ok() {
        return true;
    }
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    name == "localhost" || host_names.contains(&name)
}

async fn route(request: &Request, admin: &Admin, scope: Scope) -> Response {
    let full = scope == Scope::Full;
    let method = request.method.as_str();
    let path = request.path.as_str();
    match (method, path) {
        ("GET" | "HEAD", "/healthz") => {
            return match admin.state.heartbeats.stuck() {
                None => Response::text(200, "ok\n"),
                Some((index, silent)) => Response::text(503, format!("{}\n", stuck(index, silent))),
            }
        }
        ("GET" | "HEAD", "/readyz") => {
            return match readiness(&admin.state) {
                Ok(()) => Response::text(200, "ready\n"),
                Err(why) => Response::text(503, format!("not ready: {why}\n")),
            }
        }
        (_, "/healthz" | "/readyz") => return Response::text(405, "method not allowed\n"),
        _ if !full => return Response::text(404, "not found\n"),
        _ => {}
    }
    let access = admin.access.load();
    if !host_allowed(request.host.as_deref(), &access.host_names) {
        return Response::text(
            403,
            format!(
                "forbidden: Host \"{}\" is neither an IP address, localhost, nor in [admin] host_names\n",
                request.host.as_deref().unwrap_or_default().escape_debug()
            ),
        );
    }
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => metrics(admin).await,
        ("GET" | "HEAD", "/status") => Response {
            status: 200,
            content_type: "application/json",
            body: status(&admin.state).to_string() + "\n",
        },
        ("GET" | "HEAD", path) if status_page::serves(path) => status_page::asset(path),
        ("GET" | "HEAD", "/connections") => {
            connections::list(&admin.state.sessions.registry, &request.query)
        }
        (_, "/metrics" | "/status" | "/connections") => Response::text(405, "method not allowed\n"),
        (method, path) if path.starts_with("/pools/") => {
            server_control(method, path, request, &access, admin)
        }
        (method, path) if path.starts_with("/connections/") => {
            if method != "POST" {
                return Response::text(405, "method not allowed: use POST\n");
            }
            if let Err(refused) = authorize(request, &access) {
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
    request: &Request,
    access: &Access,
    admin: &Admin,
) -> Response {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let [_, pool, "servers", server, action @ ("drain" | "ready")] = parts.as_slice() else {
        return Response::text(404, "not found\n");
    };
    if method != "POST" {
        return Response::text(405, "method not allowed: use POST\n");
    }
    if let Err(refused) = authorize(request, access) {
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

/// The credentials of `Authorization: Bearer <token>`; the scheme is case-insensitive
/// (RFC 7235, section 2.1).
fn bearer(authorization: Option<&str>) -> Option<&[u8]> {
    let (scheme, credentials) = authorization?.trim().split_once([' ', '\t'])?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credentials.trim().as_bytes())
}

/// What every POST needs: no `Origin` header (a web page's request), the POST endpoints on, and
/// `Authorization: Bearer <token>` when `[admin] token` is set.
fn authorize(request: &Request, access: &Access) -> Result<(), Response> {
    if request.origin {
        return Err(Response::text(
            403,
            "forbidden: a request with an Origin header comes from a web page\n",
        ));
    }
    if !access.posts_enabled {
        return Err(Response::text(
            403,
            "forbidden: the POST endpoints are off: this admin listener is reachable off loopback and [admin] token_file is not set\n",
        ));
    }
    if let Some(token) = &access.token {
        if !bearer(request.authorization.as_deref()).is_some_and(|sent| token.matches(sent)) {
            return Err(Response::text(
                401,
                "unauthorized: send Authorization: Bearer <token>\n",
            ));
        }
    }
    Ok(())
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
        "ephemeral_port_range": ephemeral_port_range(),
        "local_resources": crate::upstream::local::status(),
    })
}

/// `net.ipv4.ip_local_port_range` as the relay sees it: the connections one source address can
/// have to one server address.
fn ephemeral_port_range() -> serde_json::Value {
    let range = crate::upstream::egress::PortRange::current();
    serde_json::json!({ "low": range.low, "high": range.high, "ports": range.ports() })
}

async fn respond(stream: &mut TcpStream, response: Response) {
    let reason = match response.status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
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
        assert_eq!(r.host.as_deref(), Some("x"));
        assert!(!r.origin);
        assert_eq!(
            percent_decode("127.0.0.1%3A9000").as_deref(),
            Some("127.0.0.1:9000")
        );
        assert_eq!(percent_decode("a%2"), None);
        assert_eq!(percent_decode("%zz"), None);
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for header in ["Bearer abc", "bearer abc", "BEARER  abc ", "bEaReR\tabc"] {
            assert_eq!(bearer(Some(header)), Some(&b"abc"[..]), "{header:?}");
        }
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearerabc")), None);
        assert_eq!(bearer(Some("abc")), None);
        assert_eq!(bearer(None), None);
    }

    #[test]
    fn host_check_accepts_addresses_and_localhost_only() {
        let names = vec!["relay-1.internal".to_string()];
        for host in [
            None,
            Some(""),
            Some("127.0.0.1"),
            Some("127.0.0.1:9090"),
            Some("10.0.3.7:9090"),
            Some("[::1]:9090"),
            Some("[fd00::5]"),
            Some("localhost"),
            Some("LocalHost:9090"),
            Some("localhost.:9090"),
            Some("relay-1.internal:9090"),
            Some("Relay-1.Internal"),
        ] {
            assert!(host_allowed(host, &names), "{host:?} refused");
        }
        for host in [
            "attacker.example",
            "attacker.example:9090",
            "localhost.attacker.example",
            "127.0.0.1.nip.io:9090",
            "127.0.0.1:notaport",
            "[::1",
            "[::1]x",
            "[evil]:9090",
            "relay-2.internal",
        ] {
            assert!(!host_allowed(Some(host), &names), "{host:?} accepted");
        }
    }

    #[test]
    fn origin_and_first_header_of_a_kind() {
        let Head::Complete(r) = request_head(
            b"POST /pools/p/servers/a/drain HTTP/1.1\r\nHOST: 127.0.0.1\r\nHost: evil\r\nOrigin: http://evil\r\n\r\n",
        ) else {
            panic!("incomplete");
        };
        assert_eq!(r.host.as_deref(), Some("127.0.0.1"));
        assert!(r.origin);
    }
}
