//! One health check of one server: connect as live traffic does (from one of the pool's source
//! addresses, each in turn), send the PROXY header the pool sends its servers, then a TLS
//! handshake or an HTTP exchange when the check asks for one. The result is `Ok` or a `Reason`
//! whose kind is a metric label and whose text is what /status shows; a check that could not
//! run for want of a local resource (a descriptor, a port) is `local`, which says nothing about
//! the server.

use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::http;
use crate::protocol::proxy_protocol;
use crate::protocol::proxy_protocol::SendProxy;
use crate::upstream::connect::Failure;
use crate::upstream::egress::LOCAL_CHECK;
use crate::upstream::health::CheckKind;
use crate::upstream::health::HealthConfig;
use crate::upstream::health::TlsCheck;
use crate::upstream::pool::state::Reason;
use crate::upstream::pool::{Pool, Server};

/// Where a check was when its time ran out.
#[derive(Debug, Clone, Copy)]
pub enum Stage {
    Connect,
    Handshake,
    Response,
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Handshake => "TLS handshake",
            Stage::Response => "HTTP response",
        }
    }
}

/// Checks `server` once, within the check timeout, from the pool's source `source` (its
/// index). Where the pool has source addresses, a failure's text names the one it came from.
pub async fn run(
    pool: &Pool,
    server: &Server,
    config: &HealthConfig,
    source: usize,
) -> Result<(), Reason> {
    let from = server.sources.addr(source);
    if source < 64 && server.sources.unusable_for(server.addr.ip()) & (1 << source) != 0 {
        return Err(Reason::new(
            LOCAL_CHECK,
            format!(
                "not checked from source {}: another IP family than the server's",
                from.map_or_else(String::new, |ip| ip.to_string())
            ),
        ));
    }
    let result = run_from(pool, server, config, from).await;
    match (result, from) {
        (Err(mut reason), Some(ip)) => {
            reason.text = format!("{} (from source {ip})", reason.text);
            Err(reason)
        }
        (result, _) => result,
    }
}

async fn run_from(
    pool: &Pool,
    server: &Server,
    config: &HealthConfig,
    source: Option<IpAddr>,
) -> Result<(), Reason> {
    let mut stage = Stage::Connect;
    let outcome = tokio::time::timeout(
        config.timeout,
        probe(pool, server, config, source, &mut stage),
    )
    .await;
    match outcome {
        Ok(result) => result,
        Err(_) => Err(Reason::new(
            "timeout",
            format!(
                "timeout: no {} within {}",
                stage.as_str(),
                show_duration(config.timeout)
            ),
        )),
    }
}

async fn probe(
    pool: &Pool,
    server: &Server,
    config: &HealthConfig,
    source: Option<IpAddr>,
    stage: &mut Stage,
) -> Result<(), Reason> {
    let mut stream = crate::upstream::connect::open_from(server.addr, source)
        .await
        .map_err(|failure| connect_error(pool, server, failure))?;
    crate::upstream::local::succeeded();
    send_proxy_header(pool, &mut stream).await?;
    match (config.check, &config.tls, &config.http) {
        (CheckKind::Tcp, _, _) => Ok(()),
        (CheckKind::Tls, Some(tls), _) => {
            *stage = Stage::Handshake;
            let mut stream = handshake(pool, server, tls, stream).await?;
            // close_notify, so the server sees an orderly end rather than a truncation.
            let _ = stream.shutdown().await;
            Ok(())
        }
        (CheckKind::Http, Some(tls), Some(check)) => {
            *stage = Stage::Handshake;
            let mut stream = handshake(pool, server, tls, stream).await?;
            *stage = Stage::Response;
            http::exchange(&mut stream, server, check, true).await
        }
        (CheckKind::Http, None, Some(check)) => {
            *stage = Stage::Response;
            http::exchange(&mut stream, server, check, false).await
        }
        // The config never builds these.
        (CheckKind::Tls, None, _) | (CheckKind::Http, _, None) => {
            Err(Reason::new("error", "incomplete check configuration"))
        }
    }
}

/// A check connection announces itself as one: PROXY v2 `LOCAL` (the receiver keeps the
/// socket's addresses), or for v1, which has no such command, the check's own addresses.
async fn send_proxy_header(pool: &Pool, stream: &mut TcpStream) -> Result<(), Reason> {
    let mut header = Vec::new();
    match pool.send_proxy {
        SendProxy::Off => return Ok(()),
        SendProxy::V2 => proxy_protocol::encode_v2_local(&mut header),
        SendProxy::V1 => {
            let (local, peer) = stream
                .local_addr()
                .and_then(|l| stream.peer_addr().map(|p| (l, p)))
                .map_err(|e| Reason::new("error", format!("socket addresses: {e}")))?;
            proxy_protocol::encode_v1(local, peer, &mut header);
        }
    }
    stream
        .write_all(&header)
        .await
        .map_err(|e| Reason::new("error", format!("writing the PROXY header: {e}")))
}

async fn handshake(
    pool: &Pool,
    server: &Server,
    tls: &TlsCheck,
    stream: TcpStream,
) -> Result<TlsStream<TcpStream>, Reason> {
    let config = match &pool.tls {
        Some(Ok(config)) => Arc::clone(config),
        Some(Err(e)) => return Err(Reason::new("tls", format!("TLS: {e}"))),
        None => return Err(Reason::new("tls", "TLS: no client configuration")),
    };
    let name = server_name(server, tls)?;
    TlsConnector::from(config)
        .connect(name, stream)
        .await
        .map_err(|e| tls_error(&e))
}

/// The name the certificate must carry: `sni`, else the host the server was resolved from,
/// else its IP address (no SNI is sent then; the certificate must list the IP).
fn server_name(server: &Server, tls: &TlsCheck) -> Result<ServerName<'static>, Reason> {
    let name = tls.sni.as_deref().or(server.host.as_deref());
    match name {
        Some(name) => ServerName::try_from(name.to_string())
            .map_err(|_| Reason::new("tls", format!("TLS: \"{name}\" is not a valid server name"))),
        None => Ok(ServerName::IpAddress(server.addr.ip().into())),
    }
}

fn connect_error(pool: &Pool, server: &Server, failure: Failure) -> Reason {
    match failure {
        Failure::Local(kind) => {
            crate::upstream::local::failed(
                kind,
                format_args!(
                    "health-checking {} (pool {}, server {})",
                    server.addr, pool.name, server.name
                ),
            );
            Reason::new(
                LOCAL_CHECK,
                format!(
                    "not checked: {} (not counted against the server)",
                    kind.describe()
                ),
            )
        }
        Failure::Peer(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            Reason::new("refused", "connection refused")
        }
        Failure::Peer(e) => Reason::new("error", format!("connect: {e}")),
    }
}

/// "TLS: invalid peer certificate: UnknownIssuer", "TLS: received fatal alert: ...", or the
/// socket error that cut the handshake short.
fn tls_error(e: &io::Error) -> Reason {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => Reason::new("tls", format!("TLS: {tls}")),
        None if e.kind() == io::ErrorKind::UnexpectedEof => Reason::new(
            "tls",
            "TLS: the server closed the connection during the handshake",
        ),
        None => Reason::new("tls", format!("TLS handshake: {e}")),
    }
}

/// "1s", "250ms": durations as the config writes them.
fn show_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}
