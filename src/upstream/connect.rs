//! Connecting to an upstream server: choose one from the pool, connect within the pool's
//! timeout, and on failure retry on another server (`retries` times). Every attempt's result
//! goes to the pool's passive detection, which takes a server that keeps failing down.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::relay::sockopt;
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
}

impl AttemptResult {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptResult::Ok => "ok",
            AttemptResult::Refused => "refused",
            AttemptResult::Timeout => "timeout",
            AttemptResult::Error => "error",
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

/// Connects to a server of `pool` for `client`, counting every attempt in the server's and
/// pool's metrics.
pub async fn connect(pool: &Pool, client: IpAddr) -> Result<Upstream, ConnectError> {
    connect_with(pool, client, |server| async move {
        attempt_tcp(pool, &server)
            .await
            .map_err(|result| (result, ()))
    })
    .await
}

/// One TCP connect to `server` within the pool's connect timeout; a failure is the result it
/// counts under. The attempt of [`connect`], and the first step of a TLS pool's.
pub async fn attempt_tcp(pool: &Pool, server: &Server) -> Result<TcpStream, AttemptResult> {
    match tokio::time::timeout(pool.connect_timeout, open(server.addr, pool)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => Err(AttemptResult::Refused),
        Ok(Err(e)) => {
            tracing::debug!(pool = %pool.name, server = %server.name, addr = %server.addr, "connect failed: {e}");
            Err(AttemptResult::Error)
        }
        Err(_) => Err(AttemptResult::Timeout),
    }
}

/// The picks, retries and counts of [`connect`] around an attempt of the caller's: TCP alone,
/// or TCP and what must succeed on it before the server counts as connected (a TLS handshake).
/// Every attempt's result goes to the server's metrics and to passive health; each retry goes
/// to a server not tried yet. The connect time is that of the successful attempt.
pub async fn connect_with<S, E, F, Fut>(
    pool: &Pool,
    client: IpAddr,
    mut attempt: F,
) -> Result<Upstream<S>, ConnectError<E>>
where
    F: FnMut(Arc<Server>) -> Fut,
    Fut: Future<Output = Result<S, AttemptError<E>>>,
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
        let server = Arc::clone(lease.server());
        let started = Instant::now();
        let outcome = attempt(Arc::clone(&server)).await;
        let connect_time = started.elapsed();
        let (result, reason) = match outcome {
            Ok(stream) => {
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
        if attempts <= pool.retries {
            pool.metrics.retries.increment(1);
        }
        tried.push(server.id);
        last = Some((result, server.addr, reason));
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

/// Opens a connection to `addr` as the pool's connections are opened (TCP_NODELAY, source
/// address); health checks use it too, so they test the path traffic takes. The pool's
/// keepalive options are the session's to set, once the connection has lasted a moment
/// (`Session::relay_until_end`): most short connections end before they could matter.
pub(crate) async fn open(addr: SocketAddr, pool: &Pool) -> io::Result<TcpStream> {
    let socket = new_stream_socket(addr)?;
    socket.set_tcp_nodelay(true)?;
    if let Some(source) = pool.source {
        // The stable egress address an upstream firewall allowlists; the port is the kernel's.
        sockopt::bind_address_no_port(&socket)?;
        socket.bind(&SocketAddr::new(source, 0).into())?;
    }
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let stream = TcpStream::from_std(std::net::TcpStream::from(socket))?;
    // The connect's outcome is in the readiness epoll reports: writable once established, and
    // an error or hang-up with it when it failed. Only a failure asks the socket why (SO_ERROR),
    // where tokio's own connect asks on every success too.
    let ready = stream.ready(Interest::WRITABLE | Interest::ERROR).await?;
    if ready.is_error() || ready.is_write_closed() {
        return Err(stream
            .take_error()?
            .unwrap_or_else(|| io::ErrorKind::ConnectionRefused.into()));
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
