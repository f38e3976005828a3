//! The buffered relay, for connections where the relay itself speaks TLS on either side
//! (terminated from the client, originated to the server): splice needs two plain sockets, so
//! here bytes pass through user space.
//!
//! `StreamRelay` relays between any two `Transport`s, streams that are `AsyncBufRead +
//! AsyncWrite` over a TCP socket. Each direction writes what its source holds to the
//! destination and consumes what was written. The session makes every side a `Pooled` stream:
//! it reads into one buffer per direction, borrowed from the per-thread pool only while bytes
//! are in flight, so an idle connection holds none. From a plain socket that is the one copy
//! there is; from TLS it is a copy of the plaintext rustls decrypted, which lets several 16 KiB
//! records leave in one write instead of one write each (the cheaper of the two, measured).
//! While the destination cannot take more, nothing more is read: a slow reader backs the stream
//! up into the kernel's socket buffers, never into this process beyond one buffer per direction
//! (plus rustls's bounded buffers on a TLS side). What rustls does inside is its own: its
//! buffered API allocates a buffer per TLS record it encrypts or decrypts (its unbuffered API
//! would avoid that).
//!
//! Half-close, per direction (the `tokio::io::copy_bidirectional` state machine, with the bytes
//! counted inside): when the source ends, the destination is shut down for writing once
//! everything before the end is written (`poll_shutdown`: on TLS, close_notify then FIN; on a
//! plain socket, FIN), while the other direction keeps flowing. A TLS source ends with
//! close_notify, or with a FIN without one: many TLS peers close that way, and the relayed
//! protocol's own framing, not the relay, is what tells a complete message from a cut one. A
//! failure on either side (a reset, a TLS error) resets both sockets, as the splice relay does.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use socket2::SockRef;
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::direction::Failure;
use super::{buffer, Ended, Running, Side};
use crate::relay::sockopt;

/// One side of a buffered relay: a byte stream over a TCP socket.
pub trait Transport: AsyncBufRead + AsyncWrite + Unpin {
    /// The socket underneath, to reset it when the relay fails.
    fn socket(&self) -> &TcpStream;

    /// Protocol output is queued that no payload write will carry out (a TLS key update, an
    /// alert): flush it while the direction towards this side is idle.
    fn wants_flush(&self) -> bool {
        false
    }
}

/// Where one direction is: moving bytes, passing the source's end on, or finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    ShuttingDown,
    Done,
}

/// One direction of a buffered relay.
struct Half {
    state: State,
    /// Bytes were written since the last flush of the destination.
    unflushed: bool,
    /// Payload bytes written to the destination.
    bytes: u64,
}

impl Half {
    fn new() -> Half {
        Half {
            state: State::Running,
            unflushed: false,
            bytes: 0,
        }
    }

    fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Moves bytes until the source has ended and that end reached the destination (Ready(Ok)),
    /// an error (Ready(Err)), or neither side can make progress now (Pending, wakers set).
    fn poll_transfer<R: Transport, W: Transport>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut R,
        dst: &mut W,
    ) -> Poll<Result<(), Failure>> {
        loop {
            match self.state {
                State::Done => return Poll::Ready(Ok(())),
                State::ShuttingDown => {
                    match ready!(Pin::new(&mut *dst).poll_shutdown(cx)) {
                        // A peer that is already gone is not an error here: the other direction
                        // will see it on its own terms.
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                        Err(e) => return Poll::Ready(Err(Failure::Destination(e))),
                    }
                    self.state = State::Done;
                    return Poll::Ready(Ok(()));
                }
                State::Running => {}
            }
            let data = match Pin::new(&mut *src).poll_fill_buf(cx) {
                Poll::Ready(Ok(data)) => data,
                // TLS: the peer's FIN came without close_notify (see the module doc).
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => &[],
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Failure::Source(e))),
                Poll::Pending => {
                    // Nothing more to send for now: what the destination still buffers (TLS
                    // records it could not write at once) must go out before we sleep.
                    if self.unflushed || dst.wants_flush() {
                        match Pin::new(&mut *dst).poll_flush(cx) {
                            Poll::Ready(Ok(())) => self.unflushed = false,
                            Poll::Ready(Err(e)) => {
                                return Poll::Ready(Err(Failure::Destination(e)))
                            }
                            Poll::Pending => {}
                        }
                    }
                    return Poll::Pending;
                }
            };
            if data.is_empty() {
                self.state = State::ShuttingDown;
                continue;
            }
            let written = match Pin::new(&mut *dst).poll_write(cx, data) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(Failure::Destination(io::ErrorKind::WriteZero.into())))
                }
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Failure::Destination(e))),
                // The bytes stay in the source until the destination takes them.
                Poll::Pending => return Poll::Pending,
            };
            Pin::new(&mut *src).consume(written);
            self.bytes += written as u64;
            self.unflushed = true;
        }
    }
}

/// Relays between a client and a server transport until both directions have ended.
pub struct StreamRelay<C, S> {
    client: C,
    server: S,
    client_to_server: Half,
    server_to_client: Half,
    first_fin: Option<Side>,
}

impl<C: Transport, S: Transport> StreamRelay<C, S> {
    pub fn new(client: C, server: S) -> Self {
        StreamRelay {
            client,
            server,
            client_to_server: Half::new(),
            server_to_client: Half::new(),
            first_fin: None,
        }
    }

    /// Payload bytes delivered so far: (client → server, server → client).
    pub fn bytes(&self) -> (u64, u64) {
        (self.client_to_server.bytes, self.server_to_client.bytes)
    }

    /// Makes both sockets close with a RST when the relay is dropped.
    fn reset_both(&self) {
        sockopt::reset_on_close(&SockRef::from(self.client.socket()));
        sockopt::reset_on_close(&SockRef::from(self.server.socket()));
    }
}

impl<C: Transport, S: Transport> std::future::Future for StreamRelay<C, S> {
    type Output = Ended;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Ended> {
        let this = &mut *self;
        let (client, server) = (&mut this.client, &mut this.server);
        let (up, down) = (&mut this.client_to_server, &mut this.server_to_client);
        let polled = super::poll_both(&mut this.first_fin, |from| match from {
            Side::Client => (!up.is_done()).then(|| up.poll_transfer(cx, client, server)),
            Side::Server => (!down.is_done()).then(|| down.poll_transfer(cx, server, client)),
        });
        polled.map(|ended| {
            if let Ended::Failed { .. } = ended {
                this.reset_both();
            }
            ended
        })
    }
}

impl<C: Transport, S: Transport> Running for StreamRelay<C, S> {
    fn bytes(&self) -> (u64, u64) {
        StreamRelay::bytes(self)
    }

    fn server_socket(&self) -> &TcpStream {
        self.server.socket()
    }

    fn done(&self) -> (bool, bool) {
        (
            self.client_to_server.is_done(),
            self.server_to_client.is_done(),
        )
    }

    fn mode(&self) -> &'static str {
        "tls"
    }
}

/// A stream read through a buffer borrowed from this thread's pool, held only while it has
/// bytes not yet consumed (or until the next read finds the stream empty).
pub struct Pooled<T> {
    inner: T,
    buf: Option<Box<[u8]>>,
    /// Unconsumed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    buffer_size: usize,
}

/// A plain TCP socket as a relay transport.
pub type PlainSocket = Pooled<TcpStream>;

impl<T> Pooled<T> {
    pub fn new(inner: T, buffer_size: usize) -> Pooled<T> {
        Pooled {
            inner,
            buf: None,
            start: 0,
            end: 0,
            buffer_size,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    fn release(&mut self) {
        if let Some(buf) = self.buf.take() {
            buffer::give_back(buf);
        }
        (self.start, self.end) = (0, 0);
    }
}

impl<T> Drop for Pooled<T> {
    fn drop(&mut self) {
        self.release();
    }
}

impl<T: AsyncRead + Unpin> AsyncBufRead for Pooled<T> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        if this.start == this.end {
            let mut buf = match this.buf.take() {
                Some(buf) => buf,
                None => buffer::take(this.buffer_size),
            };
            let mut read_buf = ReadBuf::new(&mut buf);
            let result = Pin::new(&mut this.inner).poll_read(cx, &mut read_buf);
            let n = read_buf.filled().len();
            this.buf = Some(buf);
            match result {
                Poll::Ready(Ok(())) => (this.start, this.end) = (0, n),
                Poll::Ready(Err(e)) => {
                    this.release();
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => {
                    // Nothing in flight: an idle direction holds no buffer.
                    this.release();
                    return Poll::Pending;
                }
            }
        }
        match &this.buf {
            Some(buf) => Poll::Ready(Ok(&buf[this.start..this.end])),
            None => Poll::Ready(Ok(&[])),
        }
    }

    fn consume(self: Pin<&mut Self>, amount: usize) {
        let this = self.get_mut();
        this.start = (this.start + amount).min(this.end);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Pooled<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let held = ready!(self.as_mut().poll_fill_buf(cx))?;
        let n = held.len().min(out.remaining());
        out.put_slice(&held[..n]);
        self.consume(n);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Pooled<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, data)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Transport for PlainSocket {
    fn socket(&self) -> &TcpStream {
        &self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    /// client ⇄ [relay] ⇄ server over plain sockets through the buffered relay: bytes both
    /// ways, each FIN passed on while the other direction still flows.
    #[tokio::test]
    async fn relays_both_ways_with_half_close() {
        let (mut client, relay_client) = pair().await;
        let (relay_server, mut server) = pair().await;
        let relay = StreamRelay::new(
            PlainSocket::new(relay_client, 4096),
            PlainSocket::new(relay_server, 4096),
        );
        let relay = tokio::spawn(relay);

        let request = vec![7u8; 100_000];
        client.write_all(&request).await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, request, "request, then the client's FIN");

        // The client's write side is closed; the server can still answer.
        let reply = vec![9u8; 300_000];
        server.write_all(&reply).await.unwrap();
        server.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), reply.len());

        match relay.await.unwrap() {
            Ended::Closed { first } => assert_eq!(first, Side::Client),
            Ended::Failed { side, error } => panic!("{side:?} failed: {error}"),
        }
    }

    #[tokio::test]
    async fn a_reset_resets_the_other_side() {
        let (client, relay_client) = pair().await;
        let (relay_server, mut server) = pair().await;
        let mut relay = StreamRelay::new(
            PlainSocket::new(relay_client, 4096),
            PlainSocket::new(relay_server, 4096),
        );
        sockopt::reset_on_close(&SockRef::from(&client));
        drop(client);
        let ended = (&mut relay).await;
        assert!(
            matches!(
                ended,
                Ended::Failed {
                    side: Side::Client,
                    ..
                }
            ),
            "{ended:?}"
        );
        assert_eq!(relay.bytes(), (0, 0));
        drop(relay);
        let mut buf = [0u8; 16];
        let read = server.read(&mut buf).await;
        assert!(
            matches!(&read, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
            "{read:?}"
        );
    }
}
