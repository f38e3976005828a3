//! Relaying bytes both ways between a client and a server socket until both have ended.
//!
//! `Relay` owns the two sockets and two `Direction`s. Half-close is carried through: a FIN from
//! one side becomes shutdown(WR) on the other while the other direction keeps flowing, and the
//! relay ends when both directions have ended. A failure on either side (a reset, a write to a
//! dead peer) resets the other side too (SO_LINGER 0), so neither peer waits on a connection
//! that can no longer complete.
//!
//! Counting stays in the connection: `bytes()` is read by the session at boundaries (close, a
//! periodic tick), never published per chunk.
//!
//! `Relay` serves two plain sockets; where the relay itself speaks TLS on either side, the
//! buffered `stream::StreamRelay` does, with the same half-close and reset behaviour. The
//! session drives either through `Running`.

mod buffer;
mod direction;
pub mod pipe;
pub mod sockopt;
pub mod stream;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use socket2::SockRef;
use tokio::net::TcpStream;

use direction::{Direction, Failure};

/// How bytes are moved between the two sockets of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Copy small exchanges, switch to splice once a connection carries volume.
    Auto,
    /// splice(2) from the first byte (Linux).
    Splice,
    /// A user-space buffer per direction.
    Copy,
}

/// How a relay moves bytes; taken from the listener's config when the connection starts.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub mode: Mode,
    pub pipe_size: usize,
    pub buffer_size: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

/// How a relay ended.
#[derive(Debug)]
pub enum Ended {
    /// Both directions ended cleanly; `first` sent the first FIN.
    Closed { first: Side },
    /// `side` failed (reset, broken pipe, ...); the other side was reset in turn.
    Failed { side: Side, error: io::Error },
}

/// A relay in progress, as the session drives it: a future that ends when the connection does,
/// and the payload bytes it has moved so far.
pub trait Running: Future<Output = Ended> + Unpin {
    /// (client → server, server → client).
    fn bytes(&self) -> (u64, u64);

    /// The TCP socket to the server (under TLS, if any), for options set while relaying.
    fn server_socket(&self) -> &TcpStream;

    /// Which directions have ended, their FIN passed on: (client → server, server → client).
    fn done(&self) -> (bool, bool);

    /// How bytes move now: "splice", "copy", or "tls" (the buffered relay).
    fn mode(&self) -> &'static str;
}

pub struct Relay {
    client: TcpStream,
    server: TcpStream,
    client_to_server: Direction,
    server_to_client: Direction,
    settings: Settings,
    first_fin: Option<Side>,
}

impl Relay {
    pub fn new(client: TcpStream, server: TcpStream, settings: Settings) -> Self {
        Relay {
            client,
            server,
            client_to_server: Direction::new(&settings),
            server_to_client: Direction::new(&settings),
            settings,
            first_fin: None,
        }
    }

    /// Payload bytes delivered so far: (client → server, server → client).
    pub fn bytes(&self) -> (u64, u64) {
        (self.client_to_server.bytes, self.server_to_client.bytes)
    }

    /// Times a direction fell back from splice to copy.
    pub fn splice_fallbacks(&self) -> u32 {
        self.client_to_server.splice_fallbacks + self.server_to_client.splice_fallbacks
    }

    /// Makes both sockets close with a RST when the relay is dropped.
    pub fn reset_both(&self) {
        sockopt::reset_on_close(&SockRef::from(&self.client));
        sockopt::reset_on_close(&SockRef::from(&self.server));
    }
}

impl Running for Relay {
    fn bytes(&self) -> (u64, u64) {
        Relay::bytes(self)
    }

    fn server_socket(&self) -> &TcpStream {
        &self.server
    }

    fn done(&self) -> (bool, bool) {
        (
            self.client_to_server.is_done(),
            self.server_to_client.is_done(),
        )
    }

    fn mode(&self) -> &'static str {
        if self.client_to_server.is_splicing() || self.server_to_client.is_splicing() {
            "splice"
        } else {
            "copy"
        }
    }
}

fn other(side: Side) -> Side {
    match side {
        Side::Client => Side::Server,
        Side::Server => Side::Client,
    }
}

impl Future for Relay {
    type Output = Ended;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Ended> {
        let this = &mut *self;
        let settings = this.settings;
        let (client, server) = (&mut this.client, &mut this.server);
        let (up, down) = (&mut this.client_to_server, &mut this.server_to_client);
        let polled = poll_both(&mut this.first_fin, |from| match from {
            Side::Client => (!up.is_done())
                .then(|| up.poll_transfer(cx, client, server, &settings, down.is_done())),
            Side::Server => (!down.is_done())
                .then(|| down.poll_transfer(cx, server, client, &settings, up.is_done())),
        });
        polled.map(|ended| {
            if let Ended::Failed { .. } = ended {
                this.reset_both();
            }
            ended
        })
    }
}

/// One poll of a relay's two directions: `transfer(from)` moves what the direction from side
/// `from` can, or is None once that direction has ended. The first to end cleanly sent the
/// first FIN. Closed once both have ended; Failed at the first failure, naming the side at
/// fault (the caller then resets both sockets). Shared by the splice/copy relay and the
/// buffered one.
fn poll_both(
    first_fin: &mut Option<Side>,
    mut transfer: impl FnMut(Side) -> Option<Poll<Result<(), Failure>>>,
) -> Poll<Ended> {
    let mut open = false;
    for from in [Side::Client, Side::Server] {
        match transfer(from) {
            None => {}
            Some(Poll::Ready(Ok(()))) => {
                first_fin.get_or_insert(from);
            }
            Some(Poll::Ready(Err(failure))) => {
                let (side, error) = match failure {
                    Failure::Source(e) => (from, e),
                    Failure::Destination(e) => (other(from), e),
                };
                return Poll::Ready(Ended::Failed { side, error });
            }
            Some(Poll::Pending) => open = true,
        }
    }
    match *first_fin {
        Some(first) if !open => Poll::Ready(Ended::Closed { first }),
        _ => Poll::Pending,
    }
}
