//! One client connection's path through the relay, top to bottom:
//!
//! ```text
//! access rules ─▶ route to a pool ─▶ connect (retry another server) ─▶ relay both ways ─▶ log
//! ```
//!
//! Each stage either hands the connection on or ends it with a named `End`, which becomes the
//! access-log line's `end` field and the outcome it is counted under.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use socket2::SockRef;
use tokio::net::TcpStream;

use crate::access_log::Record;
use crate::connect::{self, ConnectError};
use crate::daemon::{Phase, Shared};
use crate::limits::Permit;
use crate::listener::ListenerSettings;
use crate::relay::{Ended, Relay, Side};
use crate::sockopt;

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
    /// Still open at the end of a drain.
    DrainDeadline,
    RefusedRule,
    RefusedLimit,
    NoServer,
    ConnectFailed,
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
            End::IdleTimeout => "idle_timeout",
            End::DrainDeadline => "drain_deadline",
            End::RefusedRule => "refused_rule",
            End::RefusedLimit => "refused_limit",
            End::NoServer => "no_server",
            End::ConnectFailed => "connect_failed",
        }
    }

    /// The `outcome` label of `l4relay_connections_total`: what became of the connection.
    pub fn outcome(self) -> &'static str {
        match self {
            End::RefusedRule => "refused_rule",
            End::RefusedLimit => "refused_limit",
            End::NoServer => "no_server",
            End::ConnectFailed => "connect_failed",
            _ => "relayed",
        }
    }
}

pub struct Session {
    peer: SocketAddr,
    listener: Arc<ListenerSettings>,
    shared: Arc<Shared>,
    record: Record,
}

impl Session {
    /// Serves an accepted connection to its end. `permits` hold its places under the
    /// connection limits until then.
    pub async fn run(
        client: TcpStream,
        peer: SocketAddr,
        listener: Arc<ListenerSettings>,
        shared: Arc<Shared>,
        permits: [Permit; 2],
    ) {
        let started = Instant::now();
        let record = new_record(&listener, peer);
        let mut session = Session {
            peer,
            listener,
            shared,
            record,
        };
        let end = session.serve(client).await;
        finish(&session.shared, session.record, started, end);
        drop(permits);
    }

    async fn serve(&mut self, client: TcpStream) -> End {
        let client_ip = self.peer.ip().to_canonical();

        // Access rules, on the real client address.
        if !self.listener.admits(client_ip) {
            sockopt::reset_on_close(&SockRef::from(&client));
            return End::RefusedRule;
        }

        // Route: the listener's default pool.
        let pool = Arc::clone(&self.listener.pool);
        self.record.pool = Some(Arc::clone(&pool.name));

        // Connect, retrying on other servers.
        let upstream = match connect::connect(&pool, client_ip, |_, _, _| {}).await {
            Ok(upstream) => upstream,
            Err(error) => {
                tracing::warn!(listener = %self.listener.name, pool = %pool.name, client = %self.peer, "{}", describe(&error));
                sockopt::reset_on_close(&SockRef::from(&client));
                return match error {
                    ConnectError::NoServer => End::NoServer,
                    ConnectError::Failed { .. } => End::ConnectFailed,
                };
            }
        };
        let server = upstream.lease.server();
        self.record.server = Some(Arc::clone(&server.name));
        self.record.server_addr = Some(server.addr);
        self.record.connect_time = Some(upstream.connect_time);

        // Relay both ways until both sides have ended, the connection idles out, or a drain
        // reaches its deadline.
        let mut relay = Relay::new(client, upstream.stream, self.listener.relay);
        let end = relay_until_end(&mut relay, &self.listener, &self.shared).await;
        (
            self.record.bytes_client_to_server,
            self.record.bytes_server_to_client,
        ) = relay.bytes();
        drop(upstream.lease);
        end
    }
}

async fn relay_until_end(relay: &mut Relay, listener: &ListenerSettings, shared: &Shared) -> End {
    let idle_timeout = listener.config.idle_timeout;
    let tick = (idle_timeout / 8).clamp(Duration::from_millis(10), Duration::from_secs(5));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
    let mut idle_for = Duration::ZERO;
    let mut last_bytes = (0, 0);
    let mut phase = shared.phase.subscribe();
    let drain_deadline = async {
        if phase.wait_for(|p| *p >= Phase::Closing).await.is_ok() {
            // Spread closes so the clients of a draining relay don't all reconnect at once.
            let spread = shared.drain.load().close_spread.mul_f64(fastrand::f64());
            tokio::time::sleep(spread).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(drain_deadline);
    loop {
        tokio::select! {
            biased;
            ended = &mut *relay => return end_of(ended),
            _ = ticker.tick() => {
                let bytes = relay.bytes();
                if bytes == last_bytes {
                    idle_for += tick;
                    if idle_for >= idle_timeout {
                        return End::IdleTimeout;
                    }
                } else {
                    idle_for = Duration::ZERO;
                    last_bytes = bytes;
                }
            }
            _ = &mut drain_deadline => return End::DrainDeadline,
        }
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

fn describe(error: &ConnectError) -> String {
    match error {
        ConnectError::NoServer => "no server available".to_string(),
        ConnectError::Failed {
            attempts,
            last,
            server,
        } => {
            format!(
                "connect failed after {attempts} attempt(s), last to {server}: {}",
                last.as_str()
            )
        }
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
    }
}

fn finish(shared: &Shared, mut record: Record, started: Instant, end: End) {
    record.duration = started.elapsed();
    record.end = end.as_str();
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
    finish(shared, new_record(listener, peer), Instant::now(), end);
}

impl ListenerSettings {
    /// The access rules: not denied, and inside every allow list that is set.
    pub fn admits(&self, client: IpAddr) -> bool {
        let config = &self.config;
        if config.deny.iter().any(|net| net.contains(&client)) {
            return false;
        }
        config.allow.is_empty() || config.allow.iter().any(|net| net.contains(&client))
    }
}
