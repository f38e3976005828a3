//! Clients of the relay and upstream servers, all on loopback with kernel-chosen ports.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long a shared helper waits for one network step (a connect, an access-log line) before
/// it fails the test.
pub const STEP_LIMIT: Duration = Duration::from_secs(10);

/// Connects to `to` (a relay's listener) with TCP_NODELAY; the test fails unless it succeeds
/// within `STEP_LIMIT`.
pub async fn connect(to: SocketAddr) -> TcpStream {
    let stream = tokio::time::timeout(STEP_LIMIT, TcpStream::connect(to))
        .await
        .expect("connect in time")
        .expect("connect to the relay");
    stream.set_nodelay(true).unwrap();
    stream
}

/// Connects from a chosen loopback address (127.0.0.x), port chosen by the kernel at bind
/// time, so the `client=` the relay logs is known even when the connect itself fails: a relay
/// that refuses at once can reset the connection before `connect` returns. Returns that
/// address and the connect's result (within `STEP_LIMIT`).
pub async fn open(ip: &str, to: SocketAddr) -> (String, std::io::Result<TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(ip.parse().unwrap(), 0))
        .expect("bind a loopback source address");
    let client = socket.local_addr().unwrap().to_string();
    let stream = tokio::time::timeout(STEP_LIMIT, socket.connect(to))
        .await
        .expect("connect in time");
    if let Ok(stream) = &stream {
        stream.set_nodelay(true).unwrap();
    }
    (client, stream)
}

/// `open`, expecting the connect to succeed.
pub async fn connect_from(ip: &str, to: SocketAddr) -> TcpStream {
    open(ip, to).await.1.expect("connect to the relay")
}

/// Counts connections an upstream test server accepted.
#[derive(Clone, Default)]
pub struct Accepted(pub Arc<AtomicU64>);

impl Accepted {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A loopback listener with a deep accept queue: tokio's default (1024) overflows when a test
/// opens a thousand connections at once, and an overflowing upstream resets connections.
pub fn upstream_listener() -> TcpListener {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    socket.listen(4096).unwrap()
}

/// An echo server: writes back what it reads, passes the FIN on once everything is written.
pub async fn echo_server() -> (SocketAddr, Accepted) {
    let listener = upstream_listener();
    let addr = listener.local_addr().unwrap();
    let accepted = Accepted::default();
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            count.0.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    (addr, accepted)
}

/// A server that writes `name` and a newline on accept, then echoes.
pub async fn named_server(name: &'static str) -> (SocketAddr, Accepted) {
    let listener = upstream_listener();
    let addr = listener.local_addr().unwrap();
    let accepted = Accepted::default();
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            count.0.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(announce_then_echo(stream, name));
        }
    });
    (addr, accepted)
}

/// What `named_server` and `Upstream` do with a connection: write `name` and a newline, then
/// echo, passing the FIN on once everything is written.
async fn announce_then_echo(mut stream: TcpStream, name: &'static str) {
    if stream
        .write_all(format!("{name}\n").as_bytes())
        .await
        .is_err()
    {
        return;
    }
    let (mut r, mut w) = stream.split();
    let _ = tokio::io::copy(&mut r, &mut w).await;
    let _ = w.shutdown().await;
}

/// Connects through the relay and reads the name a `named_server` announces.
pub async fn which_server(relay: SocketAddr) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(relay).await.expect("connect to relay");
    let mut name = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("server name in time")
            .expect("read server name");
        assert!(n == 1, "connection closed before the server named itself");
        if byte[0] == b'\n' {
            break;
        }
        name.push(byte[0]);
    }
    (stream, String::from_utf8(name).unwrap())
}

/// Connects through the relay and reads the name the server announces; None when the relay
/// closes the connection instead.
pub async fn try_which(relay: SocketAddr) -> Option<(TcpStream, String)> {
    let mut stream = TcpStream::connect(relay).await.ok()?;
    let mut name = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("an answer in time")
            .ok()?;
        if n == 0 {
            return None;
        }
        if byte[0] == b'\n' {
            return Some((stream, String::from_utf8(name).unwrap()));
        }
        name.push(byte[0]);
    }
}

/// An upstream that announces its name then echoes, and can be stopped (its port then
/// refuses connections) and started again on the same address.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: &'static str,
    pub accepted: Accepted,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Upstream {
    pub async fn start(name: &'static str) -> Upstream {
        Self::start_at("127.0.0.1:0".parse().unwrap(), name)
            .await
            .expect("bind an upstream on 127.0.0.1")
    }

    /// An upstream on `addr` (port 0: the kernel's choice); Err when the address is taken.
    pub async fn start_at(addr: SocketAddr, name: &'static str) -> std::io::Result<Upstream> {
        let listener = bind_reusable(addr)?;
        let upstream = Upstream {
            addr: listener.local_addr().unwrap(),
            name,
            accepted: Accepted::default(),
            task: std::sync::Mutex::new(None),
        };
        upstream.serve(listener);
        Ok(upstream)
    }

    fn serve(&self, listener: TcpListener) {
        let (name, count) = (self.name, self.accepted.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                count.0.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(announce_then_echo(stream, name));
            }
        });
        *self.task.lock().unwrap() = Some(task);
    }

    /// Closes the listening socket: new connections are refused; open ones go on.
    pub async fn stop(&self) {
        let task = self.task.lock().unwrap().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens on its address again. The port was free while it was stopped: an outgoing
    /// connection may hold it as its source port for a moment, so "address in use" is retried
    /// (up to `STEP_LIMIT`).
    pub fn restart(&self) {
        let deadline = Instant::now() + STEP_LIMIT;
        loop {
            match bind_reusable(self.addr) {
                Ok(listener) => return self.serve(listener),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    assert!(
                        Instant::now() < deadline,
                        "{} still in use after {STEP_LIMIT:?}",
                        self.addr
                    );
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("listen on {} again: {e}", self.addr),
            }
        }
    }
}

/// A listener with SO_REUSEADDR (so that it can listen again on its port while connections it
/// accepted linger in TIME_WAIT).
fn bind_reusable(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}
