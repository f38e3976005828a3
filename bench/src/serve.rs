//! `serve`: the built-in upstream for local runs.
//!
//! * echo: writes back what it reads; on read EOF it finishes writing and
//!   then shuts down its write side, so half-close passes through a relay.
//! * sink: reads and discards.
//! * source: writes zeros without end until the peer goes away (it also reads
//!   and discards, so a client that sends is never blocked).
//!
//! Echo and sink also answer the framed requests of `rate` and `latency`
//! (see `protocol`), recognised from the first bytes of a connection, and
//! every mode strips a leading PROXY v1/v2 header, so the same server works
//! directly and behind a relay that adds one.
//!
//! With `--tls-cert`/`--tls-key` every mode speaks TLS (after a PROXY header,
//! which is read in the clear), and ends its side with close_notify. It counts
//! its handshakes, full and resumed, so a relay's session reuse towards its
//! upstream shows (the exit summary; `--json FILE`).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use l4relay::protocol::proxy_protocol::{self, Accept, Parsed};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::protocol::{self, Kind, RequestParser};
use crate::run::Signals;
use crate::units::{fmt_bytes, fmt_duration};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Echo,
    Sink,
    Source,
}

pub struct ServeConfig {
    pub listen: SocketAddr,
    pub mode: Mode,
    pub chunk: usize,
    pub backlog: u32,
    pub duration: Option<Duration>,
    /// Serve TLS with this config.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Write the exit summary as JSON here (`-` = stdout).
    pub json: Option<String>,
}

/// The exit summary of `--json`.
#[derive(Debug, serde::Serialize)]
struct Summary {
    tool: &'static str,
    mode: String,
    listen: String,
    tls: bool,
    seconds: f64,
    connections: u64,
    still_open: u64,
    proxy_headers: u64,
    framed: u64,
    errors: u64,
    bytes_in: u64,
    bytes_out: u64,
    /// Completed TLS handshakes by kind (0 without TLS).
    tls_full_handshakes: u64,
    tls_resumed_handshakes: u64,
    /// Handshakes refused (a peer offering nothing this server accepts, ...), not counting
    /// clients that went away mid-handshake.
    tls_failed_handshakes: u64,
}

#[derive(Default)]
struct Stats {
    accepted: AtomicU64,
    active: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    proxy_headers: AtomicU64,
    framed: AtomicU64,
    errors: AtomicU64,
    tls_full: AtomicU64,
    tls_resumed: AtomicU64,
    tls_failed: AtomicU64,
}

/// Buffers start here and double up to `--chunk` only for connections that
/// fill them, so thousands of idle connections cost little memory.
const INITIAL_BUF: usize = 16 * 1024;
/// What is buffered before the payload is classified: the largest PROXY header the daemon's
/// parser accepts, then a request header.
const MAX_PREAMBLE: usize = proxy_protocol::MAX_V2_LEN + protocol::HEADER_LEN;

pub async fn run(cfg: ServeConfig) -> Result<(), String> {
    let sock = if cfg.listen.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| format!("socket: {e}"))?;
    sock.set_reuseaddr(true)
        .map_err(|e| format!("SO_REUSEADDR: {e}"))?;
    sock.bind(cfg.listen)
        .map_err(|e| format!("cannot bind {}: {e}", cfg.listen))?;
    let listener = sock
        .listen(cfg.backlog)
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    // Scripts and the integration test read this line to learn the port of `--listen HOST:0`.
    let mode = clap::ValueEnum::to_possible_value(&cfg.mode)
        .map_or(String::new(), |v| v.get_name().to_string());
    let over = if cfg.tls.is_some() { " tls" } else { "" };
    println!("listening on {local} mode {mode}{over}");
    {
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }

    let stats = Arc::new(Stats::default());
    let zeros: Arc<[u8]> = vec![0u8; cfg.chunk].into();
    let started = Instant::now();
    let deadline = cfg.duration.map(|d| started + d);
    let mut signals = Signals::new();
    let mut last_accept_warning: Option<Instant> = None;
    loop {
        let until_deadline = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = signals.recv() => break,
            _ = until_deadline => break,
            r = listener.accept() => match r {
                Ok((s, _)) => {
                    stats.accepted.fetch_add(1, Relaxed);
                    let (stats, zeros, tls) = (stats.clone(), zeros.clone(), cfg.tls.clone());
                    tokio::spawn(handle(s, cfg.mode, cfg.chunk, zeros, stats, tls));
                }
                Err(e) => {
                    // EMFILE/ENFILE persist until connections close: back off
                    // instead of spinning, and say so at most once a second.
                    if last_accept_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        eprintln!("serve: accept failed: {e}");
                        last_accept_warning = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
    let summary = Summary {
        tool: "l4relay-bench serve",
        mode,
        listen: local.to_string(),
        tls: cfg.tls.is_some(),
        seconds: started.elapsed().as_secs_f64(),
        connections: stats.accepted.load(Relaxed),
        still_open: stats.active.load(Relaxed),
        proxy_headers: stats.proxy_headers.load(Relaxed),
        framed: stats.framed.load(Relaxed),
        errors: stats.errors.load(Relaxed),
        bytes_in: stats.bytes_in.load(Relaxed),
        bytes_out: stats.bytes_out.load(Relaxed),
        tls_full_handshakes: stats.tls_full.load(Relaxed),
        tls_resumed_handshakes: stats.tls_resumed.load(Relaxed),
        tls_failed_handshakes: stats.tls_failed.load(Relaxed),
    };
    let handshakes = if summary.tls {
        format!(
            ", TLS handshakes {} full, {} resumed, {} failed",
            summary.tls_full_handshakes,
            summary.tls_resumed_handshakes,
            summary.tls_failed_handshakes
        )
    } else {
        String::new()
    };
    eprintln!(
        "serve: {} after {}: {} connections ({} still open, {} with PROXY header, {} framed, {} errors), in {}, out {}{handshakes}",
        local,
        fmt_duration(started.elapsed()),
        summary.connections,
        summary.still_open,
        summary.proxy_headers,
        summary.framed,
        summary.errors,
        fmt_bytes(summary.bytes_in as f64),
        fmt_bytes(summary.bytes_out as f64),
    );
    if let Some(path) = &cfg.json {
        let mut doc = serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())?;
        doc.push('\n');
        if path == "-" {
            use std::io::Write;
            print!("{doc}");
            let _ = std::io::stdout().flush();
        } else {
            std::fs::write(path, doc).map_err(|e| format!("cannot write {path}: {e}"))?;
        }
    }
    Ok(())
}

async fn handle(
    mut s: TcpStream,
    mode: Mode,
    chunk: usize,
    zeros: Arc<[u8]>,
    stats: Arc<Stats>,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let _ = s.set_nodelay(true);
    stats.active.fetch_add(1, Relaxed);
    let r = match tls {
        None => match mode {
            Mode::Source => {
                // A TcpStream splits into borrowed halves without a lock.
                let (mut r, mut w) = s.split();
                source(&mut r, &mut w, &zeros, &stats).await
            }
            Mode::Echo | Mode::Sink => {
                // Nothing is allocated until the client sends: idle connections stay cheap.
                match s.readable().await {
                    Ok(()) => reader_modes(&mut s, mode, chunk, &zeros, &stats).await,
                    Err(e) => Err(e),
                }
            }
        },
        Some(config) => serve_tls(s, config, mode, chunk, &zeros, &stats).await,
    };
    if let Err(e) = r {
        // A client going away mid-stream is the normal end of a benchmark
        // connection, not a server error.
        if !matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::ConnectionAborted
        ) {
            stats.errors.fetch_add(1, Relaxed);
        }
    }
    stats.active.fetch_sub(1, Relaxed);
}

/// A PROXY header in the clear (as a relay sends one before TLS), then TLS for the rest.
async fn serve_tls(
    mut s: TcpStream,
    config: Arc<rustls::ServerConfig>,
    mode: Mode,
    chunk: usize,
    zeros: &[u8],
    stats: &Stats,
) -> io::Result<()> {
    strip_proxy_header(&mut s, stats).await?;
    let mut tls = match tokio_rustls::TlsAcceptor::from(config).accept(s).await {
        Ok(tls) => tls,
        Err(e) => {
            // A client gone mid-handshake (the end of a run) refused nothing.
            if !matches!(
                e.kind(),
                io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
            ) {
                stats.tls_failed.fetch_add(1, Relaxed);
            }
            return Err(e);
        }
    };
    let counter = match tls.get_ref().1.handshake_kind() {
        Some(rustls::HandshakeKind::Resumed) => &stats.tls_resumed,
        _ => &stats.tls_full,
    };
    counter.fetch_add(1, Relaxed);
    match mode {
        Mode::Source => {
            let (mut r, mut w) = tokio::io::split(tls);
            source(&mut r, &mut w, zeros, stats).await
        }
        Mode::Echo | Mode::Sink => {
            reader_modes(&mut tls, mode, chunk, zeros, stats).await?;
            // close_notify (unless the reply already sent it), then FIN.
            tls.shutdown().await
        }
    }
}

/// Reads exactly one PROXY v1/v2 header, if the connection starts with one, leaving the TLS
/// ClientHello after it in the socket.
async fn strip_proxy_header(s: &mut TcpStream, stats: &Stats) -> io::Result<()> {
    let mut first = [0u8; 1];
    if s.peek(&mut first).await? == 0 {
        return Ok(());
    }
    // A TLS record (0x16) or anything else that cannot begin a header: nothing to strip, and
    // nothing read.
    if proxy_protocol::parse(&first, Accept::Any) == Err(proxy_protocol::Error::NotProxy) {
        return Ok(());
    }
    // `bytes_needed` never asks past the end of the header, so the ClientHello stays unread.
    let mut header = Vec::with_capacity(128);
    loop {
        match proxy_protocol::parse(&header, Accept::Any) {
            Ok(Parsed::Complete { len, .. }) => {
                stats.proxy_headers.fetch_add(1, Relaxed);
                stats.bytes_in.fetch_add(len as u64, Relaxed);
                return Ok(());
            }
            Ok(Parsed::Incomplete) => {
                let have = header.len();
                header.resize(proxy_protocol::bytes_needed(&header), 0);
                s.read_exact(&mut header[have..]).await?;
            }
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    }
}

async fn source<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    r: &mut R,
    w: &mut W,
    zeros: &[u8],
    stats: &Stats,
) -> io::Result<()> {
    tokio::select! {
        res = pump_out(w, zeros, stats) => res,
        res = drain_in(r, stats) => res,
    }
}

async fn pump_out<W: AsyncWrite + Unpin>(w: &mut W, zeros: &[u8], stats: &Stats) -> io::Result<()> {
    loop {
        let n = w.write(zeros).await?;
        stats.bytes_out.fetch_add(n as u64, Relaxed);
    }
}

/// Discards input; after EOF keeps waiting, because a half-closed peer still
/// reads and `source` must keep writing until the write fails.
async fn drain_in<R: AsyncRead + Unpin>(r: &mut R, stats: &Stats) -> io::Result<()> {
    let mut b = vec![0u8; 4096];
    loop {
        let n = r.read(&mut b).await?;
        if n == 0 {
            return std::future::pending().await;
        }
        stats.bytes_in.fetch_add(n as u64, Relaxed);
    }
}

/// Reads more into `buf[*filled..]`, growing it up to `max` if full.
/// Returns the number of bytes read (0 at EOF).
async fn fill<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    filled: &mut usize,
    max: usize,
    stats: &Stats,
) -> io::Result<usize> {
    if *filled == buf.len() {
        if buf.len() >= max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "preamble too long",
            ));
        }
        buf.resize((buf.len() * 2).min(max), 0);
    }
    let n = s.read(&mut buf[*filled..]).await?;
    *filled += n;
    stats.bytes_in.fetch_add(n as u64, Relaxed);
    Ok(n)
}

async fn reader_modes<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    mode: Mode,
    chunk: usize,
    zeros: &[u8],
    stats: &Stats,
) -> io::Result<()> {
    let mut buf = vec![0u8; 1024];
    let mut filled = 0;
    let mut eof = false;
    let mut start = 0;
    // The daemon's own parser decides on the first byte that rules a header out, so a plain
    // client sending one byte is not kept waiting; a header cut short by EOF is payload.
    loop {
        match proxy_protocol::parse(&buf[..filled], Accept::Any) {
            Ok(Parsed::Incomplete) if !eof => {
                eof = fill(s, &mut buf, &mut filled, MAX_PREAMBLE, stats).await? == 0
            }
            Ok(Parsed::Incomplete) | Err(proxy_protocol::Error::NotProxy) => break,
            Ok(Parsed::Complete { len, .. }) => {
                start = len;
                stats.proxy_headers.fetch_add(1, Relaxed);
                break;
            }
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    }
    let kind = loop {
        match protocol::classify(&buf[start..filled]) {
            Kind::NeedMore if !eof => {
                eof = fill(s, &mut buf, &mut filled, MAX_PREAMBLE, stats).await? == 0
            }
            Kind::NeedMore => break Kind::Raw,
            k => break k,
        }
    };
    if kind == Kind::Framed {
        stats.framed.fetch_add(1, Relaxed);
        return framed(s, buf, start, filled, eof, zeros, stats).await;
    }
    if mode == Mode::Echo && filled > start {
        s.write_all(&buf[start..filled]).await?;
        stats.bytes_out.fetch_add((filled - start) as u64, Relaxed);
    }
    if eof {
        return s.shutdown().await;
    }
    raw_loop(s, mode == Mode::Echo, buf, chunk, stats).await
}

/// Echo or discard until EOF, then shut down the write side.
async fn raw_loop<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    echo: bool,
    mut buf: Vec<u8>,
    chunk: usize,
    stats: &Stats,
) -> io::Result<()> {
    if buf.len() < INITIAL_BUF.min(chunk) {
        buf.resize(INITIAL_BUF.min(chunk), 0);
    }
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return s.shutdown().await;
        }
        stats.bytes_in.fetch_add(n as u64, Relaxed);
        if echo {
            s.write_all(&buf[..n]).await?;
            stats.bytes_out.fetch_add(n as u64, Relaxed);
        }
        // A full read means a bulk sender: grow toward --chunk for fewer syscalls.
        if n == buf.len() && buf.len() < chunk {
            buf.resize((buf.len() * 2).min(chunk), 0);
        }
    }
}

async fn framed<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    mut buf: Vec<u8>,
    start: usize,
    filled: usize,
    mut eof: bool,
    zeros: &[u8],
    stats: &Stats,
) -> io::Result<()> {
    let mut parser = RequestParser::default();
    let mut pending = (start, filled);
    loop {
        let fed = parser
            .feed(&buf[pending.0..pending.1])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        // All replies owed for one read go out together, so pipelined
        // requests cost one write rather than one per request.
        let mut owed = fed.reply_bytes;
        while owed > 0 {
            let k = owed.min(zeros.len() as u64) as usize;
            s.write_all(&zeros[..k]).await?;
            owed -= k as u64;
            stats.bytes_out.fetch_add(k as u64, Relaxed);
        }
        if fed.close {
            // The server closes first so TIME_WAIT lands here, not on the client.
            return Ok(());
        }
        if eof {
            return s.shutdown().await;
        }
        if buf.len() < INITIAL_BUF {
            buf.resize(INITIAL_BUF, 0);
        }
        let n = s.read(&mut buf).await?;
        stats.bytes_in.fetch_add(n as u64, Relaxed);
        eof = n == 0;
        pending = (0, n);
    }
}
