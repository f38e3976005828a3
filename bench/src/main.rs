//! `l4relay-bench`: the load generator shipped with l4relay, for sizing
//! relay fleets. It drives a target (a relay in front of `serve`, or `serve`
//! itself) and reports throughput, connection rate, request latency, or
//! memory per idle connection, optionally with the CPU, RSS and fds of the
//! relay process (`--pid`).
//!
//! Everything runs on one current-thread tokio runtime: the benchmark is meant
//! to be pinned to one core (`taskset`) next to the process it measures, and a
//! single thread keeps its own overhead predictable. Every client loop is
//! bounded by `--duration` (and `--count`), every connect/read/write has a
//! timeout, and SIGINT/SIGTERM end a run early with the results so far.

mod idle;
mod latency;
mod net;
mod procfs;
mod protocol;
mod rate;
mod report;
mod run;
mod serve;
mod throughput;
mod tls;
mod units;

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use l4relay::config::{parse_duration, parse_server_address, parse_size};
use l4relay::protocol::vpce::VpceId;
use l4relay::upstream::pool::ServerAddress;
use serde::Serialize;
use tokio::time::Instant;

use net::Dialer;
use report::{Output, ProxyCpu, Report};

const LONG_ABOUT: &str = "\
Load generator for l4relay. Point a client mode at a relay that forwards to
`l4relay-bench serve` (or at `serve` directly for a baseline) and read the
results as a table on stdout, or as JSON with --json.

Each client mode runs for --warmup, then measures for --duration, then stops
by itself; Ctrl-C stops early and still reports. With --pid PID the relay's
CPU time over the measured window is reported per GB, per connection or per
request. Pin the benchmark and the relay to different cores for stable
figures, e.g. `taskset -c 1 l4relay-bench ...` with the relay on core 0.

Values are written as in the l4relay config file, by the same parsers:
  SIZE      bytes, or a whole number with a binary unit: 4096, 64KiB, 1MiB, 1GiB
            (K, M, G are the same units; 1MB and 1.5MiB are errors)
  DURATION  whole numbers with units us, ms, s, m, h, d: 250ms, 5s, 10m, 1m30s
            (a bare 10 and 1.5s are errors)
  ADDR      HOST:PORT: 10.0.1.5:443, relay.example:8443 (--target as a pool server's address)
  ID        an AWS VPC endpoint ID, as in allow_vpce: vpce-0123456789abcdef0";

const EXAMPLES: &str = "\
Examples:
  l4relay-bench serve --listen 127.0.0.1:9001 --mode echo
  l4relay-bench throughput --target 127.0.0.1:9000 --streams 8 --direction both --pid $(pidof l4relay)
  l4relay-bench rate --target 127.0.0.1:9000 --concurrency 32 --request 100 --reply 100
  l4relay-bench rate --target 127.0.0.1:8443 --tls --sni relay.example --pid $(pidof l4relay)
  l4relay-bench serve --listen 127.0.0.1:9443 --mode echo --tls-cert cert.pem --tls-key key.pem
  l4relay-bench rate --target 127.0.0.1:8443 --tls --tls-version 1.3 --tls-ciphers TLS_AES_128_GCM_SHA256
  l4relay-bench latency --target 127.0.0.1:9000 --connections 32 --rate 10000 --json lat.json
  l4relay-bench idle --target 127.0.0.1:9000 --count 20000 --burst 32KiB --pid $(pidof l4relay)";

#[derive(Parser)]
#[command(
    name = "l4relay-bench",
    version,
    about = "Load generator for the l4relay TCP relay: throughput, connection rate, latency, idle memory",
    long_about = LONG_ABOUT,
    after_help = EXAMPLES,
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the built-in upstream: echo, sink or source
    #[command(after_help = "\
Echo and sink also answer the framed requests of `rate` and `latency`; use echo for those.
Every mode strips a leading PROXY v1/v2 header. The first line on stdout is
`listening on ADDR mode MODE`; a summary goes to stderr on exit.")]
    Serve(ServeArgs),
    /// Bulk throughput in Gbit/s over long-lived connections
    #[command(after_help = "\
Targets: up needs serve --mode sink (or echo), down needs --mode source, both needs --mode echo.
Gbit/s counts payload bytes at the client; 1 GB = 10^9 bytes.")]
    Throughput(ThroughputArgs),
    /// New connections per second: connect, send a request, read the reply, close
    #[command(after_help = "\
The target must be `l4relay-bench serve` (echo or sink mode) behind the relay: requests carry
a 12-byte header telling the server the reply size and to close after replying, so
TIME_WAIT stays on the server side and the client does not run out of ports.")]
    Rate(RateArgs),
    /// Request latency percentiles at a fixed rate (open loop) or at saturation
    #[command(after_help = "\
With --rate R > 0 requests follow a fixed schedule (R/s in total, spread evenly over the
connections) and latency is measured from each request's scheduled send time, so a
stalled relay shows up as latency instead of silently lowering the load. --rate 0 sends
the next request as soon as the reply arrives (closed loop) and reports the peak req/s.")]
    Latency(LatencyArgs),
    /// Relay memory and fds per idle connection
    #[command(after_help = "\
Samples the relay's VmRSS and open fds (--pid) and kernel TCP socket memory
(/proc/net/sockstat, whole network namespace) before opening, after opening,
after the bursts, and at the end of the hold, and reports the deltas per connection.")]
    Idle(IdleArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on, e.g. 127.0.0.1:9001 (port 0 picks a free port)
    #[arg(long, value_name = "ADDR")]
    listen: String,
    /// echo: write back what is read; sink: read and discard; source: write an endless stream
    #[arg(long, value_enum, default_value_t = serve::Mode::Echo)]
    mode: serve::Mode,
    /// Largest read/write per syscall (buffers grow to this only on bulk connections)
    #[arg(long, value_name = "SIZE", default_value = "256KiB", value_parser = parse_chunk)]
    chunk: u64,
    /// Listen backlog (the kernel caps it at net.core.somaxconn)
    #[arg(long, value_name = "N", default_value_t = 4096)]
    backlog: u32,
    /// Exit after this long [default: until SIGINT/SIGTERM]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Answer over TLS with this certificate chain (PEM); needs --tls-key
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM)
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Accept only this TLS version [default: 1.2 and 1.3]
    #[arg(long, value_name = "VERSION", value_enum, requires = "tls_cert")]
    tls_version: Option<tls::Version>,
    /// Accept only these cipher suites, e.g. TLS_AES_128_GCM_SHA256 [default: rustls's]
    #[arg(long, value_name = "LIST", value_parser = tls::parse_suites, requires = "tls_cert")]
    tls_ciphers: Option<tls::Suites>,
    /// At exit, write a summary as JSON to FILE (`-` = stdout): connections, errors, bytes, and
    /// with TLS the full and resumed handshakes
    #[arg(long, value_name = "FILE")]
    json: Option<String>,
}

/// TLS towards the target, for the modes that support it.
#[derive(Args, Default)]
#[command(next_help_heading = "TLS")]
struct TlsOpts {
    /// Speak TLS to the target after the PROXY header, if any (rustls; the certificate is not
    /// verified; no session resumption, so every connection is a full handshake)
    #[arg(long)]
    tls: bool,
    /// Server name to send with --tls [default: none; the target is an address]
    #[arg(long, value_name = "NAME", requires = "tls")]
    sni: Option<String>,
    /// Offer only this TLS version [default: 1.3 and 1.2]
    #[arg(long, value_name = "VERSION", value_enum, requires = "tls")]
    tls_version: Option<tls::Version>,
    /// Offer only these cipher suites, in this order, e.g. TLS_AES_128_GCM_SHA256 or
    /// TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 [default: rustls's]
    #[arg(long, value_name = "LIST", value_parser = tls::parse_suites, requires = "tls")]
    tls_ciphers: Option<tls::Suites>,
}

impl TlsOpts {
    fn offer(&self) -> tls::Offer {
        tls::Offer {
            version: self.tls_version,
            suites: self.tls_ciphers.clone(),
        }
    }
}

/// Options shared by every client mode.
#[derive(Args)]
#[command(next_help_heading = "Client options")]
struct ClientOpts {
    /// Measure this process (normally the relay): CPU time, and for idle RSS and fds
    #[arg(long, value_name = "PID")]
    pid: Option<u32>,
    /// Start every connection with a PROXY protocol v2 header (src = local address, dst = target)
    #[arg(long)]
    proxy_v2: bool,
    /// Add the AWS VPC endpoint ID TLV (type 0xEA, subtype 0x01) to the PROXY v2 header
    #[arg(long, value_name = "ID", requires = "proxy_v2", value_parser = VpceId::parse)]
    vpce: Option<VpceId>,
    /// Also write the results as JSON to FILE (`-` = stdout; the table then goes to stderr)
    #[arg(long, value_name = "FILE")]
    json: Option<String>,
    /// Local addresses to connect from, round-robin: 127.0.0.1-127.0.0.8 or a comma list
    #[arg(long, value_name = "ADDRS", value_parser = parse_sources)]
    sources: Option<SourceList>,
    /// Give up on a connect after this long
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// Give up on a read or write that makes no progress for this long
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    io_timeout: Duration,
    /// No progress line on stderr
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Args)]
struct ThroughputArgs {
    /// Address to connect to: the relay, or serve directly (HOST:PORT)
    #[arg(long, value_name = "ADDR", value_parser = parse_server_address)]
    target: ServerAddress,
    /// Parallel connections
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    streams: u32,
    /// up = client to server, down = server to client, both = echo in both directions at once
    #[arg(long, value_enum, default_value_t = throughput::Direction::Up)]
    direction: throughput::Direction,
    /// How long to measure, after the warmup
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_run_duration)]
    duration: Duration,
    /// Run this long before measuring (the run lasts warmup + duration)
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Bytes per read/write syscall
    #[arg(long, value_name = "SIZE", default_value = "256KiB", value_parser = parse_chunk)]
    chunk: u64,
    #[command(flatten)]
    client: ClientOpts,
    #[command(flatten)]
    tls: TlsOpts,
}

#[derive(Args)]
struct RateArgs {
    /// Address to connect to: the relay, or serve directly (HOST:PORT)
    #[arg(long, value_name = "ADDR", value_parser = parse_server_address)]
    target: ServerAddress,
    /// Workers, each looping connect, request, reply, close
    #[arg(long, value_name = "C", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    concurrency: u32,
    /// How long to measure, after the warmup
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_run_duration)]
    duration: Duration,
    /// Run this long before measuring (the run lasts warmup + duration)
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Request size in bytes, header included (at least 12)
    #[arg(long, value_name = "SIZE", default_value = "100", value_parser = parse_request_size)]
    request: u32,
    /// Reply size in bytes
    #[arg(long, value_name = "SIZE", default_value = "100", value_parser = parse_reply_size)]
    reply: u32,
    #[command(flatten)]
    client: ClientOpts,
    #[command(flatten)]
    tls: TlsOpts,
}

#[derive(Args)]
struct LatencyArgs {
    /// Address to connect to: the relay, or serve directly (HOST:PORT)
    #[arg(long, value_name = "ADDR", value_parser = parse_server_address)]
    target: ServerAddress,
    /// Persistent connections
    #[arg(long, value_name = "C", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    connections: u32,
    /// Requests per second over all connections; 0 = saturation (closed loop)
    #[arg(long, value_name = "R", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
    rate: u64,
    /// How long to measure, after the warmup
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_run_duration)]
    duration: Duration,
    /// Run this long before measuring (the run lasts warmup + duration)
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Request and reply size in bytes (at least 12)
    #[arg(long, value_name = "SIZE", default_value = "100", value_parser = parse_request_size)]
    size: u32,
    #[command(flatten)]
    client: ClientOpts,
}

#[derive(Args)]
struct IdleArgs {
    /// Address to connect to: the relay, or serve directly (HOST:PORT)
    #[arg(long, value_name = "ADDR", value_parser = parse_server_address)]
    target: ServerAddress,
    /// Connections to open and hold
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    count: u32,
    /// How long to hold the connections idle after opening (and bursting)
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    hold: Duration,
    /// Send this many bytes through each connection and read them back (needs an echo upstream)
    #[arg(long, value_name = "SIZE", value_parser = parse_burst)]
    burst: Option<u64>,
    /// Connects (and bursts) in flight at once, to stay inside the relay's listen backlog
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    open_concurrency: u32,
    /// Wait this long before each sample so the relay finishes its upstream connects and buffers settle
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    settle: Duration,
    #[command(flatten)]
    client: ClientOpts,
}

#[derive(Clone)]
struct SourceList(Vec<IpAddr>);

fn parse_sources(s: &str) -> Result<SourceList, String> {
    net::parse_sources(s).map(SourceList)
}

fn parse_chunk(s: &str) -> Result<u64, String> {
    let v = parse_size(s)?;
    if !(4096..=64 << 20).contains(&v) {
        return Err("must be between 4KiB and 64MiB".into());
    }
    Ok(v)
}

fn parse_request_size(s: &str) -> Result<u32, String> {
    let v = parse_size(s)?;
    if v < protocol::HEADER_LEN as u64 || v > protocol::MAX_LEN as u64 {
        return Err(format!(
            "must be between {} bytes (the request header) and 64MiB",
            protocol::HEADER_LEN
        ));
    }
    Ok(v as u32)
}

fn parse_reply_size(s: &str) -> Result<u32, String> {
    let v = parse_size(s)?;
    if v > protocol::MAX_LEN as u64 {
        return Err("must be at most 64MiB".into());
    }
    Ok(v as u32)
}

fn parse_burst(s: &str) -> Result<u64, String> {
    let v = parse_size(s)?;
    if v == 0 || v > 1 << 30 {
        return Err("must be between 1 byte and 1GiB".into());
    }
    Ok(v)
}

fn parse_run_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(10) {
        return Err("must be at least 10ms".into());
    }
    Ok(d)
}

/// Resolves `--target`/`--listen` once, up front: the benchmark only ever
/// talks to this one address.
fn resolve(addr: &str) -> Result<SocketAddr, String> {
    let mut it = addr
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {addr:?}: {e} (expected HOST:PORT)"))?;
    it.next()
        .ok_or_else(|| format!("{addr:?} resolved to no address"))
}

/// What every client mode needs besides its own settings.
pub struct ClientCtx {
    pub dialer: Arc<Dialer>,
    pub pid: Option<u32>,
    pub output: Output,
    pub quiet: bool,
    pub target: SocketAddr,
    pub vpce: Option<VpceId>,
    pub proxy_v2: bool,
    pub tls: bool,
}

impl ClientCtx {
    fn new(target: &ServerAddress, o: ClientOpts, tls: TlsOpts) -> Result<Self, String> {
        let target = match target {
            ServerAddress::Ip(addr) => *addr,
            name @ ServerAddress::Name { .. } => resolve(&name.to_string())?,
        };
        if let Some(pid) = o.pid {
            procfs::cpu_seconds(pid)
                .map_err(|e| format!("--pid {pid}: cannot read /proc/{pid}/stat: {e}"))?;
        }
        let sources = o.sources.map(|s| s.0).unwrap_or_default();
        if sources.iter().any(|s| s.is_ipv4() != target.is_ipv4()) {
            return Err("--sources must be the same address family as --target".into());
        }
        let proxy = o.proxy_v2.then(|| o.vpce.clone());
        let mut dialer = Dialer::new(target, sources, o.connect_timeout, o.io_timeout, proxy);
        if tls.tls {
            dialer = dialer.with_tls(tls::ClientTls::new(
                tls.sni.as_deref(),
                target.ip(),
                &tls.offer(),
            )?);
        }
        Ok(Self {
            dialer: Arc::new(dialer),
            pid: o.pid,
            output: Output { json: o.json },
            quiet: o.quiet,
            target,
            vpce: o.vpce,
            proxy_v2: o.proxy_v2,
            tls: tls.tls,
        })
    }

    pub fn target_label(&self) -> String {
        let label = match (&self.proxy_v2, &self.vpce) {
            (false, _) => self.target.to_string(),
            (true, None) => format!("{} (PROXY v2)", self.target),
            (true, Some(v)) => format!("{} (PROXY v2, {v})", self.target),
        };
        if self.tls {
            format!("{label} over TLS")
        } else {
            label
        }
    }

    /// A report with the fields common to all modes filled in; modes override
    /// the measured ones.
    pub fn report_base<R: Serialize>(&self, result: R) -> Report<R> {
        Report {
            tool: "l4relay-bench",
            version: env!("CARGO_PKG_VERSION"),
            mode: "",
            target: self.target.to_string(),
            started_unix_ms: 0,
            interrupted: false,
            warmup_s: 0.0,
            measured_s: 0.0,
            proxy_v2: self.proxy_v2,
            tls: self.tls,
            vpce: self.vpce.as_ref().map(VpceId::to_string),
            errors: Default::default(),
            client_cpu_s: None,
            client_cores: None,
            proxy: None,
            warnings: Vec::new(),
            result,
        }
    }
}

/// CPU readings at one instant, for computing usage over the measured window.
pub struct CpuMark {
    pub at: Instant,
    self_cpu: Option<f64>,
    proxy_cpu: Option<f64>,
}

impl CpuMark {
    pub fn take(pid: Option<u32>) -> Self {
        Self {
            at: Instant::now(),
            self_cpu: procfs::self_cpu_seconds().ok(),
            proxy_cpu: pid.and_then(|p| procfs::cpu_seconds(p).ok()),
        }
    }

    /// (client CPU-s, client cores, proxy CPU) between two marks. A proxy
    /// that exited mid-run yields a warning instead of a figure.
    pub fn window(
        a: &CpuMark,
        b: &CpuMark,
        pid: Option<u32>,
        warnings: &mut Vec<String>,
    ) -> (Option<f64>, Option<f64>, Option<ProxyCpu>) {
        let secs = (b.at - a.at).as_secs_f64();
        let cores = |cpu: f64| if secs > 0.0 { cpu / secs } else { 0.0 };
        let client = a.self_cpu.zip(b.self_cpu).map(|(x, y)| y - x);
        let proxy = match (pid, a.proxy_cpu.zip(b.proxy_cpu)) {
            (None, _) => None,
            (Some(pid), Some((x, y))) => Some(ProxyCpu {
                pid,
                cpu_s: y - x,
                cores: cores(y - x),
                ..Default::default()
            }),
            (Some(pid), None) => {
                warnings.push(format!(
                    "could not read CPU time of pid {pid} (did it exit?)"
                ));
                None
            }
        };
        if secs > 0.0 && secs < 2.0 && pid.is_some() {
            warnings.push("measured window under 2s: CPU figures have 10ms tick resolution".into());
        }
        (client, client.map(cores), proxy)
    }
}

async fn dispatch(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Serve(a) => {
            let offer = tls::Offer {
                version: a.tls_version,
                suites: a.tls_ciphers,
            };
            let tls = match (&a.tls_cert, &a.tls_key) {
                (Some(cert), Some(key)) => Some(tls::server_config(cert, key, &offer)?),
                _ => None,
            };
            serve::run(serve::ServeConfig {
                listen: resolve(&a.listen)?,
                mode: a.mode,
                chunk: a.chunk as usize,
                backlog: a.backlog,
                duration: a.duration,
                tls,
                json: a.json,
            })
            .await
        }
        Command::Throughput(a) => {
            let ctx = ClientCtx::new(&a.target, a.client, a.tls)?;
            let cfg = throughput::ThroughputConfig {
                streams: a.streams as usize,
                direction: a.direction,
                duration: a.duration,
                warmup: a.warmup,
                chunk: a.chunk as usize,
            };
            throughput::run(cfg, ctx).await
        }
        Command::Rate(a) => {
            let ctx = ClientCtx::new(&a.target, a.client, a.tls)?;
            let cfg = rate::RateConfig {
                concurrency: a.concurrency as usize,
                duration: a.duration,
                warmup: a.warmup,
                request: a.request,
                reply: a.reply,
            };
            rate::run(cfg, ctx).await
        }
        Command::Latency(a) => {
            let ctx = ClientCtx::new(&a.target, a.client, TlsOpts::default())?;
            let cfg = latency::LatencyConfig {
                connections: a.connections as usize,
                rate: a.rate,
                duration: a.duration,
                warmup: a.warmup,
                size: a.size,
            };
            latency::run(cfg, ctx).await
        }
        Command::Idle(a) => {
            let explicit_sources = a.client.sources.is_some();
            let ctx = ClientCtx::new(&a.target, a.client, TlsOpts::default())?;
            let cfg = idle::IdleConfig {
                count: a.count as usize,
                hold: a.hold,
                burst: a.burst,
                open_concurrency: a.open_concurrency as usize,
                settle: a.settle,
                explicit_sources,
            };
            idle::run(cfg, ctx).await
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Thousands of sockets (idle, rate, serve) need more than the usual 1024 soft limit.
    procfs::raise_nofile_limit();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("l4relay-bench: error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("l4relay-bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn vpce_requires_proxy_v2() {
        let r = Cli::try_parse_from([
            "l4relay-bench",
            "rate",
            "--target",
            "127.0.0.1:1",
            "--vpce",
            "vpce-1",
        ]);
        assert!(r.is_err());
        let r = Cli::try_parse_from([
            "l4relay-bench",
            "rate",
            "--target",
            "127.0.0.1:1",
            "--proxy-v2",
            "--vpce",
            "vpce-1",
        ]);
        assert!(r.is_ok());
    }

    #[test]
    fn tls_options() {
        let parse = |args: &[&str]| Cli::try_parse_from(args.iter().copied());
        assert!(parse(&["b", "rate", "--target", "127.0.0.1:1", "--tls"]).is_ok());
        assert!(parse(&[
            "b",
            "throughput",
            "--target",
            "x:1",
            "--tls",
            "--sni",
            "a.test"
        ])
        .is_ok());
        assert!(
            parse(&["b", "rate", "--target", "127.0.0.1:1", "--sni", "a.test"]).is_err(),
            "--sni needs --tls"
        );
        assert!(
            parse(&["b", "latency", "--target", "127.0.0.1:1", "--tls"]).is_err(),
            "only throughput and rate speak TLS"
        );
        assert!(
            parse(&[
                "b",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--tls-cert",
                "c.pem"
            ])
            .is_err(),
            "--tls-cert needs --tls-key"
        );
        assert!(parse(&[
            "b",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem"
        ])
        .is_ok());
    }

    #[test]
    fn tls_version_and_cipher_options() {
        let parse = |args: &[&str]| Cli::try_parse_from(args.iter().copied());
        let rate = |extra: &[&str]| {
            let mut a = vec!["b", "rate", "--target", "127.0.0.1:1"];
            a.extend_from_slice(extra);
            parse(&a)
        };
        for v in ["1.2", "1.3"] {
            assert!(rate(&["--tls", "--tls-version", v]).is_ok(), "{v}");
        }
        assert!(rate(&["--tls", "--tls-version", "1.1"]).is_err());
        assert!(
            rate(&["--tls-version", "1.3"]).is_err(),
            "--tls-version needs --tls"
        );
        assert!(rate(&[
            "--tls",
            "--tls-ciphers",
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,TLS_AES_128_GCM_SHA256"
        ])
        .is_ok());
        assert!(rate(&["--tls", "--tls-ciphers", "RC4-MD5"]).is_err());
        assert!(
            rate(&["--tls-ciphers", "TLS_AES_128_GCM_SHA256"]).is_err(),
            "--tls-ciphers needs --tls"
        );
        let serve = |extra: &[&str]| {
            let mut a = vec!["b", "serve", "--listen", "127.0.0.1:0"];
            a.extend_from_slice(extra);
            parse(&a)
        };
        let tls = ["--tls-cert", "c.pem", "--tls-key", "k.pem"];
        let with = |more: &[&'static str]| {
            let mut a = tls.to_vec();
            a.extend_from_slice(more);
            a
        };
        assert!(serve(&with(&["--tls-version", "1.2"])).is_ok());
        assert!(serve(&with(&["--tls-ciphers", "TLS_AES_128_GCM_SHA256"])).is_ok());
        assert!(
            serve(&["--tls-version", "1.2"]).is_err(),
            "--tls-version needs --tls-cert"
        );
        assert!(serve(&["--json", "-"]).is_ok());
    }

    #[test]
    fn size_limits() {
        assert!(parse_request_size("11").is_err());
        assert_eq!(parse_request_size("12").unwrap(), 12);
        assert_eq!(parse_reply_size("0").unwrap(), 0);
        assert!(parse_chunk("1KiB").is_err());
        assert_eq!(parse_chunk("1MiB").unwrap(), 1 << 20);
        assert!(parse_run_duration("0s").is_err());
        // The config file's forms, no others (bench/tests/cli.rs compares the messages).
        assert!(parse_chunk("1MB").is_err());
        assert!(parse_run_duration("10").is_err());
    }
}
