//! One client connection's path through the relay, top to bottom:
//!
//! ```text
//! PROXY header ─▶ access rules ─▶ per-client limits ─▶ TLS handshake (listener TLS)
//!   ─▶ route (SNI or default pool) ─▶ connect (retry another server) ─▶ PROXY header out
//!   ─▶ TLS handshake (pool TLS) ─▶ relay both ways (splice | copy | buffered TLS) ─▶ log
//! ```
//!
//! Each stage either hands the connection on or ends it with a named `End`, which becomes the
//! access-log line's `end` field and the outcome it is counted under.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use socket2::SockRef;
use tokio::net::TcpStream;

use crate::inbound::limits::{ClientLimits, ClientPermits, Permit};
use crate::inbound::listener::ListenerSettings;
use crate::inbound::preamble::ProxyProtocol;
use crate::inbound::preamble::{self, ClientIdentity, HandshakeError, Hello};
use crate::inbound::progress::{Progress, Watched};
use crate::inbound::registry::{
    CloseReason, CloseRequested, Connection, Entry, Phase as Stage, Registration,
};
use crate::inbound::route::RouteFallback;
use crate::inbound::Shared;
use crate::observe::access_log::Record;
use crate::observe::telemetry;
use crate::protocol::proxy_protocol::SendProxy;
use crate::protocol::proxy_protocol::{self, Accept};
use crate::relay::sockopt;
use crate::relay::sockopt::Keepalive;
use crate::relay::stream::{Pooled, StreamRelay, Transport};
use crate::relay::{Ended, Relay, Running, Side};
use crate::tls::PoolTls;
use crate::tls::{self, Failure, Originated, Terminated};
use crate::upstream::connect::{self, AttemptResult, ConnectError};
use crate::upstream::egress::SourceClaim;
use crate::upstream::pool::{Pool, Server, ServerLease};

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    ClientClosed,
    ServerClosed,
    ClientReset,
    ServerReset,
    ClientError,
    ServerError,
    IdleTimeout,
    /// No payload from this side for its `idle_timeout_client` / `idle_timeout_server`.
    IdleSide(Side),
    /// No payload byte from the server within `first_byte_timeout` of connecting.
    FirstByteTimeout,
    /// Open for `max_lifetime`.
    MaxLifetime,
    /// Closed through the admin API (`POST /connections/{id}/close`).
    AdminClosed,
    /// Still open at the end of a drain.
    DrainDeadline,
    /// Refused by an access rule; which one.
    RefusedRule(&'static str),
    /// Refused at a connection limit; which one.
    RefusedLimit(&'static str),
    /// A malformed or missing PROXY header; the parser's reason.
    ProxyHeaderError(&'static str),
    /// The PROXY header, ClientHello or TLS handshake did not complete within
    /// `handshake_timeout`.
    HandshakeTimeout,
    /// The client's TLS handshake failed (a listener with TLS); how.
    TlsHandshakeError(&'static str),
    NoServer,
    ConnectFailed,
    /// The connect failed for the reason named: the relay's own resources
    /// (`local_resource`, `source_ports_exhausted`, `source_address_unavailable`), or a server
    /// that took no first write in time (`write_timeout`, `write_error`). Logged and counted
    /// as `connect_failed`.
    Unconnected(&'static str),
    /// The TLS handshake with the server failed (a pool with TLS); how. Logged and counted as
    /// `connect_failed`, with the TLS reason as detail, like any failed connect.
    UpstreamTls(&'static str),
    /// Closed by the relay: its server went down (`on_down = "close"`) or left DNS.
    ServerDown,
}

impl End {
    pub fn as_str(self) -> &'static str {
        match self {
            End::ClientClosed => "client_closed",
            End::ServerClosed => "server_closed",
            End::ClientReset => "client_reset",
            End::ServerReset => "server_reset",
            End::ClientError => "client_error",
            End::ServerError => "server_error",
            End::IdleTimeout | End::IdleSide(_) => "idle_timeout",
            End::FirstByteTimeout => "first_byte_timeout",
            End::MaxLifetime => "max_lifetime",
            End::AdminClosed => "admin_closed",
            End::DrainDeadline => "drain_deadline",
            End::RefusedRule(_) => "refused_rule",
            End::RefusedLimit(_) => "refused_limit",
            End::ProxyHeaderError(_) => "proxy_header_error",
            End::HandshakeTimeout => "handshake_timeout",
            End::TlsHandshakeError(_) => "tls_handshake_error",
            End::NoServer => "no_server",
            End::ConnectFailed | End::Unconnected(_) | End::UpstreamTls(_) => "connect_failed",
            End::ServerDown => "server_down",
        }
    }

    /// The finer reason, for refusals, header errors and idle timeouts of one side.
    pub fn detail(self) -> Option<&'static str> {
        match self {
            End::RefusedRule(why)
            | End::RefusedLimit(why)
            | End::ProxyHeaderError(why)
            | End::TlsHandshakeError(why)
            | End::Unconnected(why)
            | End::UpstreamTls(why) => Some(why),
            End::IdleSide(Side::Client) => Some("client_silent"),
            End::IdleSide(Side::Server) => Some("server_silent"),
            _ => None,
        }
    }

    /// The `outcome` label of `l4relay_connections_total`: what became of the connection.
    pub fn outcome(self) -> &'static str {
        match self {
            End::RefusedRule(_)
            | End::RefusedLimit(_)
            | End::ProxyHeaderError(_)
            | End::HandshakeTimeout
            | End::TlsHandshakeError(_)
            | End::NoServer
            | End::ConnectFailed
            | End::Unconnected(_)
            | End::UpstreamTls(_) => self.as_str(),
            _ => "relayed",
        }
    }
}

/// A connection ready to relay: both streams, the server's slot in its pool, and the
/// connection's places under the per-source and per-VPC-endpoint limits.
struct Established {
    client: ClientStream,
    server: ServerStream,
    lease: ServerLease,
    pool: Arc<Pool>,
    /// Held until the connection ends.
    client_permits: ClientPermits,
}

/// The route fallback's reason for a ClientHello past the peek limit.
const HELLO_TOO_LONG: &str = "hello_too_long";

/// How long a relayed connection lasts before its server socket gets the pool's keepalive
/// options (or one tick of the idle check, if sooner).
const KEEPALIVE_AFTER: Duration = Duration::from_secs(1);

pub struct Session {
    peer: SocketAddr,
    listener: Arc<ListenerSettings>,
    limits: ClientLimits,
    shared: Arc<Shared>,
    record: Record,
    /// Bytes already added to the listener's byte counters (client → server, server → client).
    published: (u64, u64),
    /// When it was accepted.
    started: Instant,
}

impl Session {
    /// Serves an accepted connection to its end. `permits` hold its places under the process
    /// and listener limits until then.
    pub async fn run(
        client: TcpStream,
        peer: SocketAddr,
        listener: Arc<ListenerSettings>,
        limits: ClientLimits,
        shared: Arc<Shared>,
        permits: [Permit; 2],
    ) {
        listener.metrics.active.increment(1.0);
        let record = new_record(&listener, peer);
        let mut session = Session {
            peer,
            listener,
            limits,
            shared,
            record,
            published: (0, 0),
            started: Instant::now(),
        };
        let end = session.serve(client).await;
        let Session {
            listener,
            shared,
            record,
            published,
            started,
            ..
        } = session;
        listener.metrics.active.decrement(1.0);
        finish(&listener, &shared, record, started, end, published);
        drop(permits);
    }

    async fn serve(&mut self, client: TcpStream) -> End {
        // Two futures, one after the other: what establishing holds (the PROXY header's read,
        // the identity, the route, the connect) is gone once the connection relays, so the
        // task of an idle connection carries only the relay's state.
        // (The relay's future is made inside the match and awaited after it, so that neither
        // the establishing result nor a moved-from copy of it is kept beside the relay.)
        let relaying = match self.establish(client).await {
            Ok(established) => self.relay(established),
            Err(end) => return end,
        };
        relaying.await
    }

    /// Everything before the relay: identity, rules, limits, TLS termination, route, connect.
    /// An error is the connection's end, its client already answered (reset or closed).
    async fn establish(&mut self, mut client: TcpStream) -> Result<Established, End> {
        let config = &self.listener.config;
        let handshake_deadline = tokio::time::Instant::now() + config.handshake_timeout;

        // Who is connecting: the PROXY header's source, or the socket's peer.
        let identity = match self.identify(&mut client, handshake_deadline).await {
            Ok(identity) => identity,
            Err(end) => return Err(refuse_now(&client, end)),
        };
        let client_ip = identity.addr.ip().to_canonical();
        self.record.client = identity.addr;
        self.record.vpce = identity.vpce.clone();
        if let Some(vpce) = &identity.vpce {
            self.listener.metrics.count_vpce(vpce);
        }

        // Access rules, on the real client.
        if let Err(rule) = self.listener.admits(client_ip, identity.vpce.as_deref()) {
            return Err(refuse_now(&client, End::RefusedRule(rule)));
        }

        // Limits per client address and per VPC endpoint.
        let per_client = self.limits.acquire(
            client_ip,
            identity.vpce.as_deref(),
            config.max_connections_per_source,
            config.max_connections_per_vpce,
        );
        let client_permits = match per_client {
            Ok(permits) => permits,
            Err(limit) => return Err(refuse_now(&client, End::RefusedLimit(limit))),
        };

        // TLS termination: the handshake, within what is left of the handshake time. The PROXY
        // header (if any) came first, in the clear.
        let mut client = match config.tls.as_ref().map(|tls| Arc::clone(&tls.server)) {
            None => ClientStream::Plain(client),
            // Boxed, as is the TLS connect below: their handshake states are large, and a
            // plain connection's task (an idle one's memory) would carry them inline.
            Some(tls) => match Box::pin(self.terminate(client, &tls, handshake_deadline)).await {
                Ok(stream) => ClientStream::Tls(stream),
                Err(end) => return Err(end),
            },
        };

        // Route: by the server name (the TLS handshake's, or the ClientHello's) where routes
        // are set, else the default pool. Bytes read to find the name go to the server before
        // anything else.
        let mut first_bytes = Vec::new();
        let pool = match self
            .route(&mut client, &mut first_bytes, handshake_deadline)
            .await
        {
            Ok(pool) => pool,
            Err(end) => return Err(refuse_now(client.socket(), end)),
        };
        self.record.pool = Some(Arc::clone(&pool.name));

        // Connect, retrying on other servers. The PROXY header for the server goes first, in
        // the clear; where the pool originates TLS, the handshake follows it within the same
        // attempt. Then what the client already sent.
        let preamble = proxy_header_for(&pool, &identity);
        let connected = match &pool.config.tls {
            None => Box::pin(self.connect_plain(&pool, client_ip, preamble, &first_bytes)).await,
            Some(tls) => {
                Box::pin(self.connect_tls(&pool, tls, client_ip, &preamble, &first_bytes)).await
            }
        };
        let (server_stream, lease) = match connected {
            Ok(connected) => connected,
            Err(end) => return Err(refuse_now(client.socket(), end)),
        };
        self.record.bytes_client_to_server = first_bytes.len() as u64;
        Ok(Established {
            client,
            server: server_stream,
            lease,
            pool,
            client_permits,
        })
    }

    /// Relays both ways until both sides have ended, the connection idles out, or a drain
    /// reaches its deadline: splice or copy between plain sockets, the buffered relay where
    /// TLS is spoken on either side.
    ///
    /// Not an `async fn`: one would copy its argument into a local of its body while keeping
    /// the argument too, for the connection's whole life; an `async move` block uses what it
    /// captured in place (and so does this body: fields, not bindings moved out of them).
    #[allow(clippy::manual_async_fn)] // deliberately, as said above
    fn relay(&mut self, established: Established) -> impl Future<Output = End> + '_ {
        async move {
            let server = Arc::clone(established.lease.server());
            let pool = &*established.pool;
            let end = match (established.client, established.server) {
                (ClientStream::Plain(client), ServerStream::Plain(server_stream)) => {
                    let mut relay = Relay::new(client, server_stream, self.listener.relay);
                    let end = self.relay_until_end(&mut relay, &server, pool).await;
                    self.record_bytes(relay.bytes());
                    if relay.splice_fallbacks() > 0 {
                        self.listener
                            .metrics
                            .splice_fallbacks
                            .increment(u64::from(relay.splice_fallbacks()));
                    }
                    end
                }
                (ClientStream::Plain(client), ServerStream::Tls(server_stream)) => {
                    self.relay_buffered(client, server_stream, &server, pool)
                        .await
                }
                (ClientStream::Tls(client), ServerStream::Plain(server_stream)) => {
                    self.relay_buffered(client, server_stream, &server, pool)
                        .await
                }
                (ClientStream::Tls(client), ServerStream::Tls(server_stream)) => {
                    self.relay_buffered(client, server_stream, &server, pool)
                        .await
                }
            };
            // Named here so that the block captures them (an async block captures only the
            // fields it uses): the server's slot and the client's places under the per-source
            // and per-VPC-endpoint limits are held until the connection's end.
            drop(established.lease);
            drop(established.client_permits);
            end
        }
    }

    /// Completes the client's TLS handshake by `deadline`.
    async fn terminate(
        &mut self,
        client: TcpStream,
        tls: &Arc<rustls::ServerConfig>,
        deadline: tokio::time::Instant,
    ) -> Result<Box<Terminated>, End> {
        let mut handshake = tls::terminate(tls, client);
        let error = match tokio::time::timeout_at(deadline, &mut handshake).await {
            Ok(Ok(stream)) => {
                self.record.sni = stream.get_ref().1.server_name().map(Box::from);
                return Ok(Box::new(stream));
            }
            Ok(Err(error)) => error,
            Err(_) => {
                if let Some(client) = handshake.get_ref() {
                    sockopt::reset_on_close(&SockRef::from(client));
                }
                return Err(End::HandshakeTimeout);
            }
        };
        // No reset here: rustls has sent an alert saying why, which a reset could destroy
        // before the client reads it.
        tracing::debug!(listener = %self.listener.name, client = %self.record.client, "TLS handshake: {error}");
        Err(match Failure::of(&error) {
            // mTLS: the listener's client-certificate rule refused it.
            Failure::NoCertificate => End::RefusedRule("client_certificate_missing"),
            Failure::BadCertificate(_) => End::RefusedRule("client_certificate_invalid"),
            Failure::Other(why) => End::TlsHandshakeError(why),
        })
    }

    /// Connects to a server of a plain pool (`connect::connect`: retries, counts, passive
    /// health), sending the PROXY header and what the client already sent in one write, which
    /// is part of the attempt (bounded by the connect timeout).
    async fn connect_plain(
        &mut self,
        pool: &Pool,
        client_ip: IpAddr,
        mut preamble: Vec<u8>,
        first_bytes: &[u8],
    ) -> Result<(ServerStream, ServerLease), End> {
        preamble.extend_from_slice(first_bytes);
        let upstream = connect::connect(pool, client_ip, &preamble)
            .await
            .map_err(|error| {
                self.no_connection(pool, error, |detail| {
                    detail.map_or(End::ConnectFailed, End::Unconnected)
                })
            })?;
        self.record_server(upstream.lease.server(), upstream.connect_time);
        Ok((ServerStream::Plain(upstream.stream), upstream.lease))
    }

    /// Connects to a server of a pool that originates TLS. As `connect::connect` does for plain
    /// pools (the same picks, retries, counts and passive health), except that an attempt
    /// succeeds only once the PROXY header is written and the TLS handshake is done: a server
    /// whose handshake fails (an untrusted certificate, plain TCP where TLS was expected) is a
    /// failed connect like a refused one, counted under its `error` (or `timeout`) result, and
    /// the next attempt goes to another server. The connect time includes the handshake. Then
    /// what the client already sent goes to the server, still within the attempt.
    async fn connect_tls(
        &mut self,
        pool: &Pool,
        tls: &PoolTls,
        client_ip: IpAddr,
        preamble: &[u8],
        first_bytes: &[u8],
    ) -> Result<(ServerStream, ServerLease), End> {
        let this = &*self;
        let attempt = |server: Arc<Server>| async move {
            this.attempt_tls(pool, tls, &server, preamble, first_bytes)
                .await
        };
        let upstream = connect::connect_with(pool, client_ip, attempt)
            .await
            .map_err(|error| self.no_connection(pool, error, |reason| reason))?;
        self.record_server(upstream.lease.server(), upstream.connect_time);
        Ok((ServerStream::Tls(upstream.stream), upstream.lease))
    }

    /// One attempt to a TLS server: TCP, the PROXY header, the handshake, then what the client
    /// already sent, each within the connect timeout. A failure: its result for the upstream
    /// counts, and how it ends the connection if it is the last.
    async fn attempt_tls(
        &self,
        pool: &Pool,
        tls: &PoolTls,
        server: &Arc<Server>,
        preamble: &[u8],
        first_bytes: &[u8],
    ) -> Result<(Box<Originated>, SourceClaim), (AttemptResult, End)> {
        let (mut stream, source) = connect::attempt_tcp(pool, server)
            .await
            .map_err(|result| (result, End::ConnectFailed))?;
        connect::send_first(pool, server, &mut stream, preamble)
            .await
            .map_err(|(result, why)| (result, End::Unconnected(why)))?;
        let mut stream = self.originate(stream, tls, pool, server).await?;
        connect::send_first(pool, server, &mut stream, first_bytes)
            .await
            .map_err(|(result, why)| (result, End::Unconnected(why)))?;
        Ok((stream, source))
    }

    /// TLS to the server, within the pool's connect timeout. A failure is logged with its
    /// reason (an untrusted certificate, a name mismatch, not TLS at all, ...).
    async fn originate(
        &self,
        stream: TcpStream,
        tls: &PoolTls,
        pool: &Pool,
        server: &Server,
    ) -> Result<Box<Originated>, (AttemptResult, End)> {
        let name = match tls::server_name(
            tls.sni.as_deref(),
            server.host.as_deref(),
            server.addr.ip(),
        ) {
            Ok(name) => name,
            Err(message) => {
                tracing::warn!(pool = %pool.name, server = %server.name, "TLS to {}: {message}", server.addr);
                return Err((AttemptResult::Error, End::UpstreamTls("tls_server_name")));
            }
        };
        // The server's own copy of the pool's config, with its own sessions to resume.
        let client = server.tls_client.as_ref().unwrap_or(&tls.client);
        let handshake = tls::originate(client, name, stream);
        let error = match tokio::time::timeout(pool.connect_timeout, handshake).await {
            Ok(Ok(stream)) => {
                server.metrics.count_tls_handshake(tls::resumed(&stream));
                return Ok(stream);
            }
            Ok(Err(error)) => error,
            Err(_) => {
                tracing::warn!(pool = %pool.name, server = %server.name, client = %self.record.client, "TLS handshake with {} timed out after {:?}", server.addr, pool.connect_timeout);
                return Err((AttemptResult::Timeout, End::UpstreamTls("tls_timeout")));
            }
        };
        let why = Failure::of(&error).label();
        tracing::warn!(pool = %pool.name, server = %server.name, client = %self.record.client, "TLS handshake with {} failed ({why}): {error}", server.addr);
        Err((AttemptResult::Error, End::UpstreamTls(why)))
    }

    /// Relays through the buffered relay: the relay speaks TLS on the client's side, the
    /// server's, or both.
    async fn relay_buffered<C, S>(
        &mut self,
        client: C,
        server_stream: S,
        server: &Server,
        pool: &Pool,
    ) -> End
    where
        Pooled<C>: Transport,
        Pooled<S>: Transport,
    {
        let buffer_size = self.listener.relay.buffer_size;
        let mut relay = StreamRelay::new(
            Pooled::new(client, buffer_size),
            Pooled::new(server_stream, buffer_size),
        );
        let end = self.relay_until_end(&mut relay, server, pool).await;
        self.record_bytes(relay.bytes());
        end
    }

    /// Logs why no server could be connected and names the connection's end: `NoServer`, or
    /// what `failed` makes of the last attempt's reason.
    fn no_connection<E: Describe>(
        &self,
        pool: &Pool,
        error: ConnectError<E>,
        failed: impl FnOnce(E) -> End,
    ) -> End {
        match &error {
            // Logged once per episode where it began (`upstream::local`), not per client.
            ConnectError::Failed {
                last: AttemptResult::Local(_),
                ..
            } => {
                tracing::debug!(listener = %self.listener.name, pool = %pool.name, client = %self.record.client, "{}", describe(&error))
            }
            _ => {
                tracing::warn!(listener = %self.listener.name, pool = %pool.name, client = %self.record.client, "{}", describe(&error))
            }
        }
        match error {
            ConnectError::NoServer => End::NoServer,
            ConnectError::Failed {
                last: AttemptResult::Local(kind),
                ..
            } => End::Unconnected(kind.detail()),
            ConnectError::Failed { reason, .. } => failed(reason),
        }
    }

    /// The server a connection was established to, for its access-log line.
    fn record_server(&mut self, server: &Server, connect_time: Duration) {
        self.record.server = Some(Arc::clone(&server.name));
        self.record.server_addr = Some(server.addr);
        self.record.connect_time = Some(connect_time);
    }

    /// Reads the PROXY header when the listener expects one, within the handshake deadline.
    async fn identify(
        &self,
        client: &mut TcpStream,
        deadline: tokio::time::Instant,
    ) -> Result<ClientIdentity, End> {
        let config = &self.listener.config;
        // The address the client connected to: the listener's own when it is bound to one
        // address and port (no getsockname per connection), else the socket's.
        let bound = config.listen;
        let local = if bound.ip().is_unspecified() || bound.port() == 0 {
            client.local_addr().unwrap_or(self.peer)
        } else {
            bound
        };
        let accept = match config.proxy_protocol {
            ProxyProtocol::Off => return Ok(ClientIdentity::from_socket(self.peer, local)),
            ProxyProtocol::V1 => Accept::V1,
            ProxyProtocol::V2 => Accept::V2,
            ProxyProtocol::Any => Accept::Any,
        };
        let peer_ip = self.peer.ip().to_canonical();
        if !config.proxy_protocol_from.is_empty()
            && !config
                .proxy_protocol_from
                .iter()
                .any(|net| net.contains(&peer_ip))
        {
            return Err(End::RefusedRule("proxy_protocol_from"));
        }
        match tokio::time::timeout_at(
            deadline,
            preamble::read_proxy_header(client, accept, self.peer, local),
        )
        .await
        {
            Err(_) => Err(End::HandshakeTimeout),
            Ok(Ok(identity)) => Ok(identity),
            Ok(Err(e @ HandshakeError::Proxy(_))) | Ok(Err(e @ HandshakeError::Closed)) => {
                tracing::debug!(listener = %self.listener.name, peer = %self.peer, "PROXY header: {}", e.reason());
                Err(End::ProxyHeaderError(e.reason()))
            }
        }
    }

    async fn route(
        &mut self,
        client: &mut ClientStream,
        first_bytes: &mut Vec<u8>,
        deadline: tokio::time::Instant,
    ) -> Result<Arc<Pool>, End> {
        let config = &self.listener.config;
        if config.routes.is_empty() {
            return Ok(Arc::clone(&self.listener.pool));
        }
        let client = match client {
            // TLS ended here: the name its handshake saw (already in the record), no peeking.
            ClientStream::Tls(_) => {
                let routed = self
                    .record
                    .sni
                    .as_deref()
                    .and_then(|name| config.routes.find(name));
                return self.routed_pool(routed);
            }
            ClientStream::Plain(client) => client,
        };
        let hello = match tokio::time::timeout_at(
            deadline,
            preamble::read_client_hello(client, first_bytes),
        )
        .await
        {
            Err(_) => return Err(End::HandshakeTimeout),
            Ok(Err(_)) => return Err(End::ClientClosed),
            Ok(Ok(hello)) => hello,
        };
        let routed = match &hello {
            Hello::Tls {
                server_name: Some(name),
            } => {
                self.record.sni = Some(name.as_str().into());
                config.routes.find(name)
            }
            Hello::Tls { server_name: None } | Hello::Other => None,
            Hello::TooLong => {
                tracing::debug!(listener = %self.listener.name, client = %self.record.client, "ClientHello longer than {} bytes: route_fallback applies", crate::protocol::sni::MAX_CLIENT_HELLO);
                return self.fallback_pool(HELLO_TOO_LONG);
            }
        };
        self.routed_pool(routed)
    }

    /// The listener's fallback for a connection that could not be routed at all, with the
    /// reason: it refuses with it, or goes to the default pool with it in the access log.
    fn fallback_pool(&mut self, why: &'static str) -> Result<Arc<Pool>, End> {
        match self.listener.config.route_fallback {
            RouteFallback::Pool => {
                self.record.detail = Some(why);
                Ok(Arc::clone(&self.listener.pool))
            }
            RouteFallback::Refuse => Err(End::RefusedRule(why)),
        }
    }

    /// The pool a route chose, or the listener's fallback.
    fn routed_pool(&self, routed: Option<usize>) -> Result<Arc<Pool>, End> {
        let config = &self.listener.config;
        match (routed, config.route_fallback) {
            (Some(index), _) => Ok(Arc::clone(&self.listener.pools[index])),
            (None, RouteFallback::Pool) => Ok(Arc::clone(&self.listener.pool)),
            (None, RouteFallback::Refuse) => Err(End::RefusedRule("no_route")),
        }
    }
}

/// What the relay loop's tick remembers from one tick to the next.
struct BetweenTicks<'a> {
    /// The server socket's keepalive options, until set.
    keepalive: Option<&'a Keepalive>,
    /// The server socket's local address is still to be read for the connection table.
    source_unknown: bool,
    /// When the next `end=progress` line is due (`log_progress`).
    next_progress_line: Option<Instant>,
}

/// The client's side of a connection: as accepted, or with TLS terminated here.
enum ClientStream {
    Plain(TcpStream),
    Tls(Box<Terminated>),
}

impl ClientStream {
    fn socket(&self) -> &TcpStream {
        match self {
            ClientStream::Plain(tcp) => tcp,
            ClientStream::Tls(tls) => tls.get_ref().0,
        }
    }
}

/// The server's side: as connected, or with TLS originated here.
enum ServerStream {
    Plain(TcpStream),
    Tls(Box<Originated>),
}

/// The PROXY header a pool sends its servers: the real client as source, the address it
/// connected to as destination, and (v2) the VPC endpoint it came through.
fn proxy_header_for(pool: &Pool, identity: &ClientIdentity) -> Vec<u8> {
    let mut header = Vec::new();
    match pool.send_proxy {
        SendProxy::Off => {}
        SendProxy::V1 => proxy_protocol::encode_v1(identity.addr, identity.local, &mut header),
        SendProxy::V2 => proxy_protocol::encode_v2(
            identity.addr,
            identity.local,
            identity.vpce.as_ref(),
            &mut header,
        ),
    }
    header
}

/// Ends a connection before relaying: a reset, so the client learns at once.
fn refuse_now(client: &TcpStream, end: End) -> End {
    sockopt::reset_on_close(&SockRef::from(client));
    end
}

impl Session {
    /// Relays until both sides have ended, the connection idles out, a drain reaches its
    /// deadline, or the server's connections must close. A tick checks for idleness and
    /// publishes the byte counts of long sessions.
    async fn relay_until_end(
        &mut self,
        relay: &mut impl Running,
        server: &Server,
        pool: &Pool,
    ) -> End {
        let listener = Arc::clone(&self.listener);
        let config = &listener.config;
        let already_sent = self.record.bytes_client_to_server;
        let tick = config
            .streams
            .tick(config.idle_timeout, config.log_progress);
        let start = tokio::time::Instant::now();
        // In the live-connection table while it relays: listed for the admin API, and closed
        // through it by the admin or at the drain deadline.
        let registration = self.register(server, pool, start.into_std());
        let entry = registration.as_ref().map(Registration::entry);
        let mut between = BetweenTicks {
            // The server socket's keepalive options (five system calls) wait for the first
            // tick, at most a second in: most short connections are over by then, and a long
            // one has them well before a probe or TCP_USER_TIMEOUT could be due. So does
            // reading the socket's own address for the connection table.
            keepalive: pool.keepalive.idle.is_some().then_some(&pool.keepalive),
            source_unknown: entry.is_some(),
            next_progress_line: config.log_progress.map(|every| self.started + every),
        };
        let mut ticker = tokio::time::interval_at(start + tick.min(KEEPALIVE_AFTER), tick);
        if let Some(entry) = entry {
            entry.set_mode(relay.mode());
        }
        if config.log_open {
            self.log_event("open", (already_sent, 0));
        }
        let mut server_down = server.close_signal();
        let mut close_requested = match entry {
            Some(entry) => entry.close_requested(),
            None => CloseRequested::never(),
        };
        let mut watched = Watched::new(
            relay,
            start.into_std(),
            already_sent,
            entry,
            &pool.metrics.first_byte,
        );
        let end = loop {
            tokio::select! {
                biased;
                ended = &mut watched => break end_of(ended),
                now = ticker.tick() => {
                    let (relay, progress) = (&*watched.relay, &watched.progress);
                    let ticked = self.on_tick(&mut between, now.into_std(), relay, progress, entry, server);
                    if let Some(end) = ticked {
                        break end;
                    }
                }
                _ = &mut server_down => break End::ServerDown,
                reason = &mut close_requested => break match reason {
                    CloseReason::Admin => End::AdminClosed,
                    CloseReason::Drain => End::DrainDeadline,
                },
            }
        };
        let silence = watched.progress.longest_silence(Instant::now());
        listener.metrics.silent_gap.record(silence.as_secs_f64());
        end
    }

    /// Enters the connection in the live-connection table, as it starts relaying at `now`.
    fn register(&self, server: &Server, pool: &Pool, now: Instant) -> Option<Registration> {
        let connection = Connection {
            listener: Arc::clone(&self.listener.name),
            started: self.started,
            client: self.record.client,
            vpce: self.record.vpce.clone(),
            sni: self.record.sni.clone(),
            pool: Arc::clone(&pool.name),
            server: Arc::clone(&server.name),
            server_addr: server.addr,
        };
        self.shared.registry.register(connection, now)
    }

    /// The relay loop's tick: socket options once the connection has lasted a moment, the
    /// connection table's slower figures, the byte counters, the timeouts (the end, if one has
    /// passed), the progress line when due.
    fn on_tick(
        &mut self,
        between: &mut BetweenTicks<'_>,
        now: Instant,
        relay: &impl Running,
        progress: &Progress,
        entry: Option<&Entry>,
        server: &Server,
    ) -> Option<End> {
        if let Some(keepalive) = between.keepalive.take() {
            let socket = SockRef::from(relay.server_socket());
            if let Err(e) = sockopt::set_keepalive(&socket, keepalive) {
                tracing::debug!(server = %server.addr, "keepalive options: {e}");
            }
        }
        let done = relay.done();
        if let Some(entry) = entry {
            if std::mem::take(&mut between.source_unknown) {
                if let Ok(source) = relay.server_socket().local_addr() {
                    entry.set_source(source);
                }
            }
            entry.set_phase(Stage::of(done));
            entry.set_mode(relay.mode());
        }
        let bytes = (
            self.record.bytes_client_to_server + progress.bytes.0,
            progress.bytes.1,
        );
        self.publish_bytes(bytes.0, bytes.1);
        let config = &self.listener.config;
        if let Some(end) =
            config
                .streams
                .check(now, self.started, config.idle_timeout, progress, done)
        {
            return Some(end);
        }
        if let Some((due, every)) = between.next_progress_line.zip(config.log_progress) {
            if now >= due {
                // The next one an interval on; lines a held-up worker missed are not made up.
                let next = due + every;
                between.next_progress_line = Some(if next > now { next } else { now + every });
                self.log_event("progress", bytes);
            }
        }
        None
    }

    /// An access-log line for a connection still open (`end=open`, `end=progress`): what is
    /// known of it, the bytes so far, its age as `duration_ms`.
    fn log_event(&self, event: &'static str, (to_server, to_client): (u64, u64)) {
        let mut record = self.record.clone();
        record.duration = self.started.elapsed();
        record.bytes_client_to_server = to_server;
        record.bytes_server_to_client = to_client;
        record.end = event;
        record.detail = None;
        self.shared.access_log.log(record);
    }

    /// Records what a finished relay moved, after the bytes sent before it (the ClientHello).
    fn record_bytes(&mut self, (to_server, to_client): (u64, u64)) {
        self.record.bytes_client_to_server += to_server;
        self.record.bytes_server_to_client = to_client;
    }

    /// Adds what moved since the last call to the listener's byte counters.
    fn publish_bytes(&mut self, to_server: u64, to_client: u64) {
        let metrics = &self.listener.metrics;
        telemetry::add_delta(&metrics.bytes_client_to_server, self.published.0, to_server);
        telemetry::add_delta(&metrics.bytes_server_to_client, self.published.1, to_client);
        self.published = (to_server, to_client);
    }
}

fn end_of(ended: Ended) -> End {
    match ended {
        Ended::Closed {
            first: Side::Client,
        } => End::ClientClosed,
        Ended::Closed {
            first: Side::Server,
        } => End::ServerClosed,
        Ended::Failed { side, error } => {
            let reset = matches!(
                error.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionAborted
            );
            match (side, reset) {
                (Side::Client, true) => End::ClientReset,
                (Side::Server, true) => End::ServerReset,
                (Side::Client, false) => End::ClientError,
                (Side::Server, false) => End::ServerError,
            }
        }
    }
}

/// The log line of a connection that found no server: for a TLS pool, the last attempt's
/// reason is its end's detail (`tls_certificate_unknown_issuer`, ...).
fn describe<E: Describe>(error: &ConnectError<E>) -> String {
    match error {
        ConnectError::NoServer => "no server available".to_string(),
        ConnectError::Failed {
            attempts,
            last,
            server,
            reason,
        } => {
            format!(
                "connect failed after {attempts} attempt(s), last to {server}: {}",
                reason.detail().unwrap_or(last.as_str())
            )
        }
    }
}

/// What a failed attempt adds to the log line: nothing for TCP, the TLS reason for TLS.
trait Describe {
    fn detail(&self) -> Option<&str>;
}

impl Describe for () {
    fn detail(&self) -> Option<&str> {
        None
    }
}

impl Describe for Option<&'static str> {
    fn detail(&self) -> Option<&str> {
        *self
    }
}

impl Describe for End {
    fn detail(&self) -> Option<&str> {
        End::detail(*self)
    }
}

fn new_record(listener: &ListenerSettings, peer: SocketAddr) -> Record {
    Record {
        start: SystemTime::now(),
        listener: Arc::clone(&listener.name),
        client: peer,
        vpce: None,
        sni: None,
        pool: None,
        server: None,
        server_addr: None,
        connect_time: None,
        duration: Duration::ZERO,
        bytes_client_to_server: 0,
        bytes_server_to_client: 0,
        end: "",
        detail: None,
    }
}

/// The connection's close: its counts published, its access-log line written.
fn finish(
    listener: &ListenerSettings,
    shared: &Shared,
    mut record: Record,
    started: Instant,
    end: End,
    published: (u64, u64),
) {
    record.duration = started.elapsed();
    record.end = end.as_str();
    // A relayed connection keeps the detail its route gave it (a fallback's reason).
    record.detail = end.detail().or(record.detail);
    let metrics = &listener.metrics;
    metrics.count_outcome(end.outcome());
    let (to_server, to_client) = (record.bytes_client_to_server, record.bytes_server_to_client);
    telemetry::add_delta(&metrics.bytes_client_to_server, published.0, to_server);
    telemetry::add_delta(&metrics.bytes_server_to_client, published.1, to_client);
    if end.outcome() == "relayed" {
        metrics.duration.record(record.duration.as_secs_f64());
        metrics.session_bytes.record((to_server + to_client) as f64);
    } else {
        // Refusals are boundaries, not the relay path: a registry lookup here is fine, and the
        // reasons are a fixed set of words (rules, limits, parser errors).
        let reason = end.detail().unwrap_or(end.as_str());
        metrics::counter!(telemetry::REFUSALS, "listener" => listener.name.to_string(), "reason" => reason).increment(1);
    }
    shared.access_log.log(record);
}

/// Refuses a connection the accept loop could not admit (a limit was reached): reset at once,
/// logged like any other.
pub fn refuse(
    client: TcpStream,
    peer: SocketAddr,
    listener: &ListenerSettings,
    shared: &Shared,
    end: End,
) {
    sockopt::reset_on_close(&SockRef::from(&client));
    drop(client);
    finish(
        listener,
        shared,
        new_record(listener, peer),
        Instant::now(),
        end,
        (0, 0),
    );
}
