//! Client-side connection setup shared by every client mode: connecting with
//! a timeout (optionally from one of several local source addresses),
//! writing the PROXY v2 header, and classifying failures into the error
//! kinds the reports count.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use l4relay::protocol::proxy_protocol;
use l4relay::protocol::vpce::VpceId;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

use crate::tls::{ClientTls, Conn};

/// Why an operation failed, as counted in reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrKind {
    /// Connection refused (nothing listening, or the relay's backlog overflowed).
    Refused,
    /// Reset, aborted or broken pipe: the peer or relay dropped the connection.
    Reset,
    /// A connect or read/write did not finish within its timeout.
    Timeout,
    /// The peer closed before sending everything expected.
    Short,
    /// Anything else (e.g. out of ephemeral ports, protocol violations).
    Other,
}

impl ErrKind {
    pub const ALL: [ErrKind; 5] = [
        Self::Refused,
        Self::Reset,
        Self::Timeout,
        Self::Short,
        Self::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::Reset => "reset",
            Self::Timeout => "timeout",
            Self::Short => "short",
            Self::Other => "other",
        }
    }
}

#[derive(Debug)]
pub struct BenchError {
    pub kind: ErrKind,
    pub msg: String,
}

impl BenchError {
    pub fn new(kind: ErrKind, msg: impl Into<String>) -> Self {
        Self {
            kind,
            msg: msg.into(),
        }
    }
    pub fn timeout(what: &str) -> Self {
        Self::new(ErrKind::Timeout, format!("{what} timed out"))
    }
    pub fn short(what: &str) -> Self {
        Self::new(ErrKind::Short, format!("peer closed during {what}"))
    }
}

impl From<io::Error> for BenchError {
    fn from(e: io::Error) -> Self {
        use io::ErrorKind as K;
        let kind = match e.kind() {
            K::ConnectionRefused => ErrKind::Refused,
            K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => ErrKind::Reset,
            K::TimedOut => ErrKind::Timeout,
            K::UnexpectedEof => ErrKind::Short,
            _ => ErrKind::Other,
        };
        Self {
            kind,
            msg: e.to_string(),
        }
    }
}

pub type BResult<T> = Result<T, BenchError>;

/// Runs `fut` with a time limit, turning expiry into a `timeout` error.
pub async fn within<T>(
    limit: Duration,
    what: &str,
    fut: impl Future<Output = io::Result<T>>,
) -> BResult<T> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r.map_err(BenchError::from),
        Err(_) => Err(BenchError::timeout(what)),
    }
}

/// Error counts by kind plus the first message of each kind, shared by all
/// workers of a run.
#[derive(Default)]
pub struct ErrorCounts {
    counts: [AtomicU64; 5],
    first: Mutex<[Option<String>; 5]>,
}

/// Errors as they appear in the JSON report.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ErrorSummary {
    pub total: u64,
    pub refused: u64,
    pub reset: u64,
    pub timeout: u64,
    pub short: u64,
    pub other: u64,
    /// First message seen for each kind that occurred, for diagnosis.
    pub samples: std::collections::BTreeMap<String, String>,
}

impl ErrorCounts {
    pub fn add(&self, e: &BenchError) {
        let i = e.kind as usize;
        if self.counts[i].fetch_add(1, Relaxed) == 0 {
            let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
            first[i].get_or_insert_with(|| e.msg.clone());
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Relaxed)).sum()
    }

    pub fn summary(&self) -> ErrorSummary {
        let c = |k: ErrKind| self.counts[k as usize].load(Relaxed);
        let first = self.first.lock().unwrap_or_else(|p| p.into_inner());
        let samples = ErrKind::ALL
            .iter()
            .filter_map(|&k| first[k as usize].clone().map(|m| (k.name().to_string(), m)))
            .collect();
        ErrorSummary {
            total: self.total(),
            refused: c(ErrKind::Refused),
            reset: c(ErrKind::Reset),
            timeout: c(ErrKind::Timeout),
            short: c(ErrKind::Short),
            other: c(ErrKind::Other),
            samples,
        }
    }
}

/// Everything needed to open one benchmark connection to the target.
pub struct Dialer {
    pub target: SocketAddr,
    sources: Vec<IpAddr>,
    next_source: AtomicUsize,
    pub connect_timeout: Duration,
    pub io_timeout: Duration,
    /// `Some(vpce)` when `--proxy-v2` is on; the inner option is the VPC endpoint ID.
    proxy: Option<Option<VpceId>>,
    /// Set by `--tls` (the modes that support it).
    tls: Option<Arc<ClientTls>>,
}

impl Dialer {
    pub fn new(
        target: SocketAddr,
        sources: Vec<IpAddr>,
        connect_timeout: Duration,
        io_timeout: Duration,
        proxy: Option<Option<VpceId>>,
    ) -> Self {
        Self {
            target,
            sources,
            next_source: AtomicUsize::new(0),
            connect_timeout,
            io_timeout,
            proxy,
            tls: None,
        }
    }

    /// The same dialer speaking TLS after the PROXY header (see [`Self::open`]).
    pub fn with_tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(Arc::new(tls));
        self
    }

    pub fn tls(&self) -> Option<&ClientTls> {
        self.tls.as_deref()
    }

    /// The same dialer connecting from `sources` instead.
    pub fn with_sources(&self, sources: Vec<IpAddr>) -> Self {
        let mut dialer = Self::new(
            self.target,
            sources,
            self.connect_timeout,
            self.io_timeout,
            self.proxy.clone(),
        );
        dialer.tls = self.tls.clone();
        dialer
    }

    pub fn sources(&self) -> &[IpAddr] {
        &self.sources
    }

    /// Connects (round-robin over the source addresses, if any) with the
    /// connect timeout. Does not send the PROXY header: see [`Self::proxy_header`].
    pub async fn connect(&self) -> BResult<TcpStream> {
        let sock = if self.target.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if !self.sources.is_empty() {
            let i = self.next_source.fetch_add(1, Relaxed) % self.sources.len();
            // Without IP_BIND_ADDRESS_NO_PORT, bind() picks the port before the
            // destination is known, so each source address would be limited to
            // one connection per port instead of one per (port, destination).
            let one: libc::c_int = 1;
            // SAFETY: valid fd and option buffer; failure only loses the optimisation.
            unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    &one as *const _ as *const libc::c_void,
                    std::mem::size_of_val(&one) as libc::socklen_t,
                );
            }
            sock.bind(SocketAddr::new(self.sources[i], 0))?;
        }
        let stream = within(self.connect_timeout, "connect", sock.connect(self.target)).await?;
        // Small requests must leave immediately; bulk writes are unaffected.
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// The PROXY v2 header for this connection, if `--proxy-v2` is on.
    pub fn proxy_header(&self, stream: &TcpStream) -> BResult<Option<Vec<u8>>> {
        match &self.proxy {
            None => Ok(None),
            Some(vpce) => {
                let local = stream.local_addr()?;
                let mut header = Vec::with_capacity(64);
                proxy_protocol::encode_v2(local, self.target, vpce.as_ref(), &mut header);
                Ok(Some(header))
            }
        }
    }

    /// Connects and sends the PROXY header, if any, on its own.
    pub async fn connect_with_header(&self) -> BResult<TcpStream> {
        let mut s = self.connect().await?;
        if let Some(h) = self.proxy_header(&s)? {
            within(self.io_timeout, "PROXY header write", s.write_all(&h)).await?;
        }
        Ok(s)
    }

    /// Connects, sends the PROXY header if any, then (with `--tls`) completes a TLS handshake.
    pub async fn open(&self) -> BResult<Conn> {
        let s = self.connect_with_header().await?;
        match &self.tls {
            None => Ok(Conn::Plain(s)),
            Some(tls) => within(self.io_timeout, "TLS handshake", tls.connect(s)).await,
        }
    }
}

/// Parses `--sources`: a single address, a comma list, or an IPv4 range
/// `127.0.0.1-127.0.0.8`. At most 256 addresses.
pub fn parse_sources(s: &str) -> Result<Vec<IpAddr>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: Ipv4Addr = a
                .trim()
                .parse()
                .map_err(|_| format!("invalid IPv4 address {a:?}"))?;
            let b: Ipv4Addr = b
                .trim()
                .parse()
                .map_err(|_| format!("invalid IPv4 address {b:?}"))?;
            let (a, b) = (u32::from(a), u32::from(b));
            if b < a || b - a >= 256 {
                return Err(format!(
                    "invalid range {part:?}: must be ascending and at most 256 addresses"
                ));
            }
            out.extend((a..=b).map(|v| IpAddr::V4(Ipv4Addr::from(v))));
        } else {
            out.push(
                part.parse()
                    .map_err(|_| format!("invalid IP address {part:?}"))?,
            );
        }
    }
    if out.is_empty() {
        return Err("empty source address list".into());
    }
    if out.len() > 256 {
        return Err("at most 256 source addresses".into());
    }
    Ok(out)
}

/// `127.0.0.1..=127.0.0.n`, for spreading loopback connections.
pub fn loopback_sources(n: usize) -> Vec<IpAddr> {
    (1..=n.clamp(1, 254) as u8)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        let v = parse_sources("127.0.0.1-127.0.0.8").unwrap();
        assert_eq!(v.len(), 8);
        assert_eq!(v[7], "127.0.0.8".parse::<IpAddr>().unwrap());
        assert_eq!(parse_sources("127.0.0.1, ::1").unwrap().len(), 2);
        assert!(parse_sources("127.0.0.8-127.0.0.1").is_err());
        assert!(parse_sources("10.0.0.0-10.0.2.0").is_err());
        assert!(parse_sources("bogus").is_err());
        assert!(parse_sources(",").is_err());
        assert_eq!(loopback_sources(3).len(), 3);
    }

    #[test]
    fn error_kinds() {
        let k = |e: io::ErrorKind| BenchError::from(io::Error::from(e)).kind;
        assert_eq!(k(io::ErrorKind::ConnectionRefused), ErrKind::Refused);
        assert_eq!(k(io::ErrorKind::ConnectionReset), ErrKind::Reset);
        assert_eq!(k(io::ErrorKind::BrokenPipe), ErrKind::Reset);
        assert_eq!(k(io::ErrorKind::UnexpectedEof), ErrKind::Short);
        assert_eq!(k(io::ErrorKind::AddrNotAvailable), ErrKind::Other);
        let c = ErrorCounts::default();
        c.add(&BenchError::new(ErrKind::Refused, "first"));
        c.add(&BenchError::new(ErrKind::Refused, "second"));
        let s = c.summary();
        assert_eq!((s.total, s.refused), (2, 2));
        assert_eq!(s.samples["refused"], "first");
    }
}
