//! Socket options shared by both sides of a connection, and listening sockets.
//!
//! Options set on a listening socket (TCP_NODELAY, keepalive) are inherited by the sockets it
//! accepts on Linux, which saves several system calls per connection: the accept path relies on it.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, SockRef, Socket, TcpKeepalive, Type};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keepalive {
    /// None: no TCP keepalive probes.
    pub idle: Option<Duration>,
    pub interval: Duration,
    pub count: u32,
}

/// Applies TCP_NODELAY and the keepalive settings to `socket`.
///
/// With keepalive on, TCP_USER_TIMEOUT is set to the same bound (idle + interval × count):
/// keepalive probes are only sent while nothing is unacknowledged, so a peer that vanishes with
/// data in flight would otherwise be held for the whole retransmission timeout (~15 minutes
/// with tcp_retries2 = 15). A peer that answers zero-window probes is not affected.
pub fn configure_stream(socket: &SockRef<'_>, keepalive: &Keepalive) -> io::Result<()> {
    socket.set_tcp_nodelay(true)?;
    set_keepalive(socket, keepalive)
}

/// Applies the keepalive settings (and TCP_USER_TIMEOUT with them) to `socket`.
pub fn set_keepalive(socket: &SockRef<'_>, keepalive: &Keepalive) -> io::Result<()> {
    match keepalive.idle {
        Some(idle) => {
            let params = TcpKeepalive::new()
                .with_time(idle)
                .with_interval(keepalive.interval)
                .with_retries(keepalive.count);
            socket.set_tcp_keepalive(&params)?;
            socket.set_tcp_user_timeout(Some(user_timeout(keepalive, idle)))
        }
        None => socket.set_keepalive(false),
    }
}

/// How long unacknowledged data may wait for an ACK: as long as keepalive takes to give up.
fn user_timeout(keepalive: &Keepalive, idle: Duration) -> Duration {
    idle.saturating_add(keepalive.interval.saturating_mul(keepalive.count))
}

/// Binds a listening socket with SO_REUSEPORT, so each worker thread can own one for the same
/// address and the kernel spreads connections across them (and a new process can bind beside
/// an old one during an upgrade).
pub fn bind_listener(
    addr: SocketAddr,
    backlog: u32,
    keepalive: &Keepalive,
) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    configure_stream(&SockRef::from(&socket), keepalive)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket.into())
}

/// Lets a socket bound to a source IP with port 0 pick its port at connect(2) time, per
/// destination, instead of at bind(2) time from the one global range: without it, one egress
/// address runs out of ports after ~28,000 connections in total rather than per server.
#[cfg(not(target_os = "linux"))]
pub fn bind_address_no_port(_socket: &Socket) -> io::Result<()> {
    Ok(())
}

/// See above: Linux's IP_BIND_ADDRESS_NO_PORT.
#[cfg(target_os = "linux")]
pub fn bind_address_no_port(socket: &Socket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let enable: libc::c_int = 1;
    // SAFETY: setsockopt reads one c_int from a live stack value; the descriptor is open.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&enable as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Fails if another socket is already bound to `addr` (say, a second l4relay): SO_REUSEPORT
/// would otherwise let a new process share the address silently and take part of its
/// connections. A probe bound without SO_REUSEPORT conflicts with any existing listener.
pub fn ensure_unused(addr: SocketAddr) -> io::Result<()> {
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    // Sockets in TIME_WAIT from an earlier run are no conflict.
    probe.set_reuse_address(true)?;
    probe.bind(&addr.into()).map_err(|e| {
        if e.kind() == io::ErrorKind::AddrInUse {
            io::Error::new(
                e.kind(),
                "address already in use (another l4relay? to start beside it for an upgrade, run with --takeover)",
            )
        } else {
            e
        }
    })
}

/// Makes the next close of this socket send a RST instead of a FIN.
pub fn reset_on_close(socket: &SockRef<'_>) {
    // Errors mean the socket is already gone, which is what a reset wants anyway.
    let _ = socket.set_linger(Some(Duration::ZERO));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_sockets_inherit_nodelay_keepalive_and_user_timeout() {
        let keepalive = Keepalive {
            idle: Some(Duration::from_secs(42)),
            interval: Duration::from_secs(7),
            count: 5,
        };
        let listener = bind_listener("127.0.0.1:0".parse().unwrap(), 16, &keepalive).unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        listener.set_nonblocking(false).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let sock = SockRef::from(&accepted);
        assert!(sock.tcp_nodelay().unwrap());
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(42));
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(7)
        );
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 5);
        assert_eq!(
            sock.tcp_user_timeout().unwrap(),
            Some(Duration::from_secs(42 + 7 * 5))
        );
    }
}
