//! Connecting to an upstream server: choose one from the pool, connect within the pool's
//! timeout, and on failure retry on another server (`retries` times). Every attempt's result
//! goes to the pool's passive detection, which takes a server that keeps failing down.
//!
//! An attempt leaves from one of the pool's source addresses (`egress`): the least used one
//! towards that server, the next one when its ports are exhausted. A failure for want of the
//! relay's own resources (descriptors, memory, ports: `local`) is not the server's: it is
//! counted and logged as the relay's condition and never reaches passive detection.
//!
//! Every phase the server controls has a bound of its own, the pool's `connect_timeout`: the
//! TCP connect, the first write (PROXY header and what the client already sent), and, for a
//! pool that originates TLS, the handshake.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

use crate::relay::sockopt;
use crate::upstream::egress::SourceClaim;
use crate::upstream::local::{self, LocalResource};
use crate::upstream::pool::{Pool, Server, ServerId, ServerLease};

/// An established upstream connection and the server slot it holds.
pub struct Upstream<S = TcpStream> {
    pub stream: S,
    pub lease: ServerLease,
    /// Time of the successful attempt.
    pub connect_time: Duration,
    /// Attempts made, including the successful one.
    pub attempts: u32,
}

/// What became of one connect attempt (the `result` label of upstream connection counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptResult {
    Ok,
    Refused,
    Timeout,
    Error,
    /// The relay's own resources ran out before the server was reached: not counted under the
    /// server, nor against it.
    Local(LocalResource),
}

impl AttemptResult {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptResult::Ok => "ok",
            AttemptResult::Refused => "refused",
            AttemptResult::Timeout => "timeout",
            AttemptResult::Error => "error",
            AttemptResult::Local(kind) => kind.detail(),
        }
    }
}

/// A failed attempt: how it counts for the server, and the caller's own account of it (what
/// the connection's end is, should this attempt be the last).
pub type AttemptError<E> = (AttemptResult, E);

#[derive(Debug)]
pub enum ConnectError<E = ()> {
    /// No server could take the connection (all down, draining or full).
    NoServer,
    /// Every attempt failed; the last one's result, server and the caller's account of it.
    Failed {
        attempts: u32,
        last: AttemptResult,
        server: SocketAddr,
        reason: E,
    },
}

/// Connects to a server of `pool` for `client` and writes `first` to it (the PROXY header and
/// what the client already sent), counting every attempt in the server's and pool's metrics.
/// A failed attempt's own account is the end's detail when there is one (`write_timeout`).
pub async fn connect(
    pool: &Pool,
    client: IpAddr,
    first: &[u8],
) -> Result<Upstream, ConnectError<Option<&'static str>>> {
    connect_with(pool, client, |server| async move {
        let (mut stream, source) = attempt_tcp(pool, &server)
            .await
            .map_err(|result| (result, None))?;
        send_first(pool, &server, &mut stream, first)
            .await
            .map_err(|(result, detail)| (result, Some(detail)))?;
        Ok((stream, source))
    })
    .await
}

/// One TCP connect to `server` within the pool's connect timeout, from the least used of the
/// pool's source addresses towards it (the next one when its ports are exhausted); a failure
/// is the result it counts under. The attempt of [`connect`], and the first step of a TLS
/// pool's. The claim holds the connection's place on its source.
pub async fn attempt_tcp(
    pool: &Pool,
    server: &Arc<Server>,
) -> Result<(TcpStream, SourceClaim), AttemptResult> {
    let deadline = tokio::time::Instant::now() + pool.connect_timeout;
    // Sources of the other IP family never reach this server; none left: no address to use.
    let mut tried = server.sources.unusable_for(server.addr.ip());
    let mut local = (tried != 0).then_some(LocalResource::SourceAddress);
    while let Some(index) = server.sources.next(tried) {
        tried |= 1 << index;
        // Counted before the connect, so that a burst of connects spreads over the sources.
        let claim = SourceClaim::take(server, index);
        let source = server.sources.addr(index);
        match tokio::time::timeout_at(deadline, open_from(server.addr, source)).await {
            Ok(Ok(stream)) => {
                local::succeeded();
                return Ok((stream, claim));
            }
            Ok(Err(Failure::Local(kind))) => {
                local::failed(
                    kind,
                    format_args!(
                        "connecting to {} (pool {}, server {}) from {}",
                        server.addr,
                        pool.name,
                        server.name,
                        pool.egress.label(index)
                    ),
                );
                local = Some(kind);
                if !kind.is_per_destination() {
                    break;
                }
            }
            Ok(Err(Failure::Peer(e))) if e.kind() == io::ErrorKind::ConnectionRefused => {
                return Err(AttemptResult::Refused)
            }
            Ok(Err(Failure::Peer(e))) => {
                tracing::debug!(pool = %pool.name, server = %server.name, addr = %server.addr, "connect failed: {e}");
                return Err(AttemptResult::Error);
            }
            Err(_) => return Err(AttemptResult::Timeout),
        }
    }
    Err(AttemptResult::Local(local.unwrap_or(LocalResource::Ports)))
}

/// Writes `bytes` (the PROXY header, the client's first bytes) to a just connected server,
/// within the pool's connect timeout: a server that accepts but never reads must not hold the
/// connection (or a worker's attention) longer than one that never answers. A failure counts
/// against the server, with the end's detail.
pub async fn send_first<W: AsyncWrite + Unpin>(
    pool: &Pool,
    server: &Server,
    stream: &mut W,
    bytes: &[u8],
) -> Result<(), (AttemptResult, &'static str)> {
    if bytes.is_empty() {
        return Ok(());
    }
    let write = async {
        stream.write_all(bytes).await?;
        stream.flush().await
    };
    match tokio::time::timeout(pool.connect_timeout, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            tracing::debug!(pool = %pool.name, server = %server.name, addr = %server.addr, "writing the connection's first bytes: {e}");
            Err((AttemptResult::Error, "write_error"))
        }
        Err(_) => {
            tracing::warn!(pool = %pool.name, server = %server.name, addr = %server.addr, "the server did not take the connection's first {} bytes within {:?}", bytes.len(), pool.connect_timeout);
            Err((AttemptResult::Timeout, "write_timeout"))
        }
    }
}

/// The picks, retries and counts of [`connect`] around an attempt of the caller's: TCP alone,
/// or TCP and what must succeed on it before the server counts as connected (a TLS handshake).
/// Every attempt's result goes to the server's metrics and to passive health; each retry goes
/// to a server not tried yet. The connect time is that of the successful attempt.
///
/// An attempt that failed for want of a local resource counts against no server: ports
/// exhausted towards one server leave the next attempt to another; descriptors or memory
/// exhausted end the connect at once (another server would need them just the same).
pub async fn connect_with<S, E, F, Fut>(
    pool: &Pool,
    client: IpAddr,
    mut attempt: F,
) -> Result<Upstream<S>, ConnectError<E>>
where
    F: FnMut(Arc<Server>) -> Fut,
    Fut: Future<Output = Result<(S, SourceClaim), AttemptError<E>>>,
{
    let mut tried: Vec<ServerId> = Vec::new();
    let mut last = None;
    for attempts in 1..=pool.retries + 1 {
        // Only the first pick waits for first health checks; a retry takes what there is.
        let lease = if attempts == 1 {
            pool.pick_or_wait(client, &tried).await
        } else {
            pool.pick(client, &tried)
        };
        let Some(lease) = lease else {
            break;
        };
        // Local ports ran out towards every server tried: the same one again would not do.
        if matches!(last, Some((AttemptResult::Local(_), _, _)))
            && tried.contains(&lease.server().id)
        {
            break;
        }
        let server = Arc::clone(lease.server());
        let started = Instant::now();
        let outcome = attempt(Arc::clone(&server)).await;
        let connect_time = started.elapsed();
        let (result, reason) = match outcome {
            Ok((stream, source)) => {
                let mut lease = lease;
                lease.hold_source(source);
                server.metrics.count_attempt(AttemptResult::Ok);
                pool.record_connect(&server, AttemptResult::Ok);
                pool.metrics.connect_time.record(connect_time.as_secs_f64());
                return Ok(Upstream {
                    stream,
                    lease,
                    connect_time,
                    attempts,
                });
            }
            Err(failed) => failed,
        };
        server.metrics.count_attempt(result);
        pool.record_connect(&server, result);
        tried.push(server.id);
        last = Some((result, server.addr, reason));
        if matches!(result, AttemptResult::Local(kind) if !kind.is_per_destination()) {
            break;
        }
        if attempts <= pool.retries {
            pool.metrics.retries.increment(1);
        }
    }
    match last {
        None => Err(ConnectError::NoServer),
        Some((last, server, reason)) => Err(ConnectError::Failed {
            attempts: tried.len() as u32,
            last,
            server,
            reason,
        }),
    }
}

/// Why a connection could not be opened: the relay's own resources, or the peer (and the
/// network on the way).
#[derive(Debug)]
pub(crate) enum Failure {
    Local(LocalResource),
    Peer(io::Error),
}

/// Opens a connection to `addr` as the pool's connections are opened (TCP_NODELAY, from
/// `source` when given); health checks use it too, so they test the path traffic takes. The
/// pool's keepalive options are the session's to set, once the connection has lasted a moment
/// (`Session::relay_until_end`): most short connections end before they could matter.
pub(crate) async fn open_from(
    addr: SocketAddr,
    source: Option<IpAddr>,
) -> Result<TcpStream, Failure> {
    let local = |e: io::Error| match LocalResource::of(&e) {
        Some(kind) => Failure::Local(kind),
        None => Failure::Peer(e),
    };
    let socket = new_stream_socket(addr).map_err(local)?;
    socket.set_tcp_nodelay(true).map_err(local)?;
    if let Some(source) = source {
        // The stable egress address an upstream firewall allowlists. The port is chosen at
        // connect(2), per destination (so each source has the whole port range towards each
        // server), and its exhaustion is connect's EADDRNOTAVAIL; bind's means the address
        // is not on this host.
        sockopt::bind_address_no_port(&socket).map_err(local)?;
        socket.bind(&SocketAddr::new(source, 0).into()).map_err(
            |e| match LocalResource::of_bind(&e) {
                Some(kind) => Failure::Local(kind),
                None => Failure::Peer(e),
            },
        )?;
    }
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(local(e)),
    }
    let stream = TcpStream::from_std(std::net::TcpStream::from(socket)).map_err(local)?;
    // The connect's outcome is in the readiness epoll reports: writable once established, and
    // an error or hang-up with it when it failed. Only a failure asks the socket why (SO_ERROR),
    // where tokio's own connect asks on every success too.
    let ready = stream
        .ready(Interest::WRITABLE | Interest::ERROR)
        .await
        .map_err(local)?;
    if ready.is_error() || ready.is_write_closed() {
        let error = match stream.take_error() {
            Ok(Some(e)) => e,
            Ok(None) => io::ErrorKind::ConnectionRefused.into(),
            Err(e) => e,
        };
        return Err(Failure::Peer(error));
    }
    Ok(stream)
}

/// A non-blocking TCP socket for `addr`'s family: on Linux made so by socket(2) itself, which
/// saves the two fcntl calls of `set_nonblocking` on every upstream connection.
fn new_stream_socket(addr: SocketAddr) -> io::Result<Socket> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking(), None)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_nonblocking(true)?;
        Ok(socket)
    }
}
