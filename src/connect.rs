//! Connecting to an upstream server: choose one from the pool, connect within the pool's
//! timeout, and on failure retry on another server (`retries` times). Every attempt's result
//! goes to the pool's passive detection, which takes a server that keeps failing down.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use socket2::{Domain, SockRef, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};

use crate::pool::{Pool, ServerId, ServerLease};
use crate::sockopt;

/// An established upstream connection and the server slot it holds.
pub struct Upstream {
    pub stream: TcpStream,
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

#[derive(Debug)]
pub enum ConnectError {
    /// No server could take the connection (all down, draining or full).
    NoServer,
    /// Every attempt failed; the last one's result and server.
    Failed {
        attempts: u32,
        last: AttemptResult,
        server: SocketAddr,
    },
}

/// Connects to a server of `pool` for `client`, counting every attempt in the server's and
/// pool's metrics.
pub async fn connect(pool: &Pool, client: IpAddr) -> Result<Upstream, ConnectError> {
    let mut tried: Vec<ServerId> = Vec::new();
    let mut last: Option<(AttemptResult, SocketAddr)> = None;
    for attempt in 1..=pool.retries + 1 {
        // Only the first pick waits for first health checks; a retry takes what there is.
        let lease = if attempt == 1 {
            pool.pick_or_wait(client, &tried).await
        } else {
            pool.pick(client, &tried)
        };
        let Some(lease) = lease else {
            break;
        };
        let addr = lease.server().addr;
        let started = Instant::now();
        let result = tokio::time::timeout(pool.connect_timeout, open(addr, pool)).await;
        let elapsed = started.elapsed();
        let outcome = match result {
            Ok(Ok(stream)) => {
                lease.server().metrics.count_attempt(AttemptResult::Ok);
                pool.record_connect(lease.server(), AttemptResult::Ok);
                pool.metrics.connect_time.record(elapsed.as_secs_f64());
                return Ok(Upstream {
                    stream,
                    lease,
                    connect_time: elapsed,
                    attempts: attempt,
                });
            }
            Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => AttemptResult::Refused,
            Ok(Err(e)) => {
                tracing::debug!(pool = %pool.name, server = %lease.server().name, %addr, "connect failed: {e}");
                AttemptResult::Error
            }
            Err(_) => AttemptResult::Timeout,
        };
        lease.server().metrics.count_attempt(outcome);
        pool.record_connect(lease.server(), outcome);
        if attempt <= pool.retries {
            pool.metrics.retries.increment(1);
        }
        tried.push(lease.server().id);
        last = Some((outcome, addr));
    }
    match last {
        None => Err(ConnectError::NoServer),
        Some((last, server)) => Err(ConnectError::Failed {
            attempts: tried.len() as u32,
            last,
            server,
        }),
    }
}

/// Opens a connection to `addr` as the pool's connections are opened (keepalive, source
/// address); health checks use it too, so they test the path traffic takes.
pub(crate) async fn open(addr: SocketAddr, pool: &Pool) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    sockopt::configure_stream(&SockRef::from(&socket), &pool.keepalive)?;
    if let Some(source) = pool.source {
        // The stable egress address an upstream firewall allowlists; the port is the kernel's.
        sockopt::bind_address_no_port(&socket)?;
        socket.bind(&SocketAddr::new(source, 0).into())?;
    }
    let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
    socket.connect(addr).await
}
