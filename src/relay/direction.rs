//! One direction of a relayed connection: read from one socket, write to the other.
//!
//! The state is small and explicit: bytes held in flight (in a borrowed pipe or buffer, or
//! nothing), whether the source has ended, and whether the end has been passed on (a
//! shutdown(WR) of the destination, or its close when the other direction has ended too). While bytes are held nothing more is read, so a slow reader
//! backs the stream up into the kernel's socket buffers instead of into this process: at most one
//! pipe or buffer per direction.
//!
//! Two paths move the bytes:
//! - splice: socket → pipe → socket inside the kernel; the pipe is only ever filled when empty,
//!   so EAGAIN from the first splice always means "socket empty", never "pipe full";
//! - copy: read into a buffer, write it out; used where splice cannot serve and for small
//!   exchanges, where a pipe round trip costs more than it saves.
//!
//! In `auto` mode a direction starts on the copy path and moves to splice the first time one
//! read fills the whole buffer: a sign that this direction carries bulk data.
//!
//! A short read on the copy path is followed by one more read, free while the socket's
//! readiness is cleared: it finds a FIN queued right behind the bytes, and then the bytes and
//! the FIN go out as one segment, as from a peer that replies and closes. For a short
//! connection that is one segment fewer to send and for the peer to take in.

use std::io;
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use super::{buffer, pipe, Mode, Settings};

/// Which end of a direction failed.
#[derive(Debug)]
pub enum Failure {
    Source(io::Error),
    Destination(io::Error),
}

enum Held {
    Nothing,
    Buffer {
        buf: Box<[u8]>,
        start: usize,
        end: usize,
    },
    Pipe {
        pipe: pipe::Pipe,
        len: usize,
    },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    Copy,
    Splice,
}

pub struct Direction {
    path: Path,
    /// Move to splice after the next flush (auto mode saw bulk data).
    splice_next: bool,
    held: Held,
    /// The source sent its FIN (read returned 0).
    eof: bool,
    /// In this poll, a read found the source empty and registered for its next bytes: once the
    /// held bytes are flushed in the same poll, there is nothing to read until that wake-up.
    source_idle: bool,
    /// The FIN was passed on: nothing more will happen in this direction.
    done: bool,
    /// Payload bytes written to the destination.
    pub bytes: u64,
    /// Times splice refused this socket pair and the copy path took over.
    pub splice_fallbacks: u32,
}

impl Direction {
    pub fn new(settings: &Settings) -> Self {
        let path = match settings.mode {
            Mode::Splice => Path::Splice,
            Mode::Auto | Mode::Copy => Path::Copy,
        };
        Direction {
            path,
            splice_next: false,
            held: Held::Nothing,
            eof: false,
            source_idle: false,
            done: false,
            bytes: 0,
            splice_fallbacks: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// On the splice path (from the start, or since auto mode saw bulk data).
    pub fn is_splicing(&self) -> bool {
        self.path == Path::Splice
    }

    fn pending(&self) -> usize {
        match &self.held {
            Held::Nothing => 0,
            Held::Buffer { start, end, .. } => end - start,
            Held::Pipe { len, .. } => *len,
        }
    }

    /// Moves bytes until the source has ended and that end reached the destination (Ready(Ok)),
    /// an error (Ready(Err)), or neither side can make progress now (Pending, wakers set).
    ///
    /// `closing`: the other direction has ended, so the relay closes both sockets as soon as
    /// this one does. The destination's FIN is then left to close(2), which sends it with any
    /// bytes still held back, exactly as shutdown(WR) would: everything was read from that
    /// socket up to its own FIN, so its close cannot turn into a reset. One system call fewer
    /// on every connection that ends cleanly.
    pub fn poll_transfer(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut TcpStream,
        dst: &mut TcpStream,
        settings: &Settings,
        closing: bool,
    ) -> Poll<Result<(), Failure>> {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        // Valid only within the poll that set it: had a flush waited since, the wake-up the
        // source's bytes sent might have been spent on this very poll.
        self.source_idle = false;
        loop {
            if self.pending() > 0 {
                let written = ready!(self.poll_flush(cx, dst)).map_err(Failure::Destination)?;
                self.bytes += written as u64;
                continue;
            }
            if self.eof {
                self.release();
                self.done = true;
                if closing {
                    return Poll::Ready(Ok(()));
                }
                return Poll::Ready(shutdown_write(dst).map_err(Failure::Destination));
            }
            if std::mem::take(&mut self.source_idle) {
                // The read that emptied the source registered this task's waker already.
                self.release();
                return Poll::Pending;
            }
            if self.splice_next {
                self.splice_next = false;
                self.release();
                self.path = Path::Splice;
            }
            let read = match self.path {
                Path::Copy => self.poll_read_copy(cx, src, settings),
                Path::Splice => self.poll_read_splice(cx, src, settings),
            };
            match read {
                Poll::Ready(Ok(0)) => self.eof = true,
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Failure::Source(e))),
                Poll::Pending => {
                    // Nothing in flight: an idle direction holds no pipe and no buffer.
                    self.release();
                    return Poll::Pending;
                }
            }
        }
    }

    fn poll_read_copy(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut TcpStream,
        settings: &Settings,
    ) -> Poll<io::Result<usize>> {
        let mut buf = match std::mem::replace(&mut self.held, Held::Nothing) {
            Held::Buffer { buf, .. } => buf,
            Held::Pipe { pipe, .. } => {
                pipe::give_back(pipe, true);
                buffer::take(settings.buffer_size)
            }
            Held::Nothing => buffer::take(settings.buffer_size),
        };
        let mut read_buf = ReadBuf::new(&mut buf);
        // poll_read (rather than try_read) lets tokio clear readiness after a short read,
        // saving the EAGAIN read that would otherwise follow every chunk.
        let result = Pin::new(&mut *src).poll_read(cx, &mut read_buf);
        let n = read_buf.filled().len();
        self.held = Held::Buffer {
            buf,
            start: 0,
            end: 0,
        };
        ready!(result)?;
        let Held::Buffer { buf, end, .. } = &mut self.held else {
            unreachable!("the buffer was put back above");
        };
        *end = n;
        if n == buf.len() {
            if settings.mode == Mode::Auto {
                self.splice_next = true;
            }
            return Poll::Ready(Ok(n));
        }
        if n == 0 {
            return Poll::Ready(Ok(0));
        }
        // A short read: the source is empty, or its FIN is queued behind these bytes. Read on
        // until it says which. With the socket's readiness cleared by the short read, an empty
        // source answers Pending without a system call; a FIN answers 0, and then the bytes
        // and the FIN leave in one segment (`poll_flush` holds them back with MSG_MORE until
        // the shutdown or close), as a request or reply followed by a close usually does.
        while *end < buf.len() {
            let mut rest = ReadBuf::new(&mut buf[*end..]);
            match Pin::new(&mut *src).poll_read(cx, &mut rest) {
                Poll::Pending => {
                    self.source_idle = true;
                    break;
                }
                Poll::Ready(Ok(())) if rest.filled().is_empty() => {
                    self.eof = true;
                    break;
                }
                Poll::Ready(Ok(())) => *end += rest.filled().len(),
                // A reset ends the relay (both sides are reset), so what this read held back
                // could not have been delivered anyway.
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(*end))
    }

    fn poll_read_splice(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut TcpStream,
        settings: &Settings,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(src.poll_read_ready(cx))?;
            let pipe = match std::mem::replace(&mut self.held, Held::Nothing) {
                Held::Pipe { pipe, .. } => pipe,
                other => {
                    self.held = other;
                    self.release();
                    match pipe::take(settings.pipe_size) {
                        Ok(pipe) => pipe,
                        // No pipe to be had (out of descriptors, or no splice on this platform): this
                        // chunk goes by copy instead.
                        Err(_) => return self.poll_read_copy(cx, src, settings),
                    }
                }
            };
            // A short splice does not mean the socket is drained: the pipe may have run out of
            // slots (one per packet fragment) first. So readiness is cleared only by a real
            // EAGAIN; edge-triggered epoll would raise no new edge for bytes already queued.
            let capacity = pipe.capacity();
            let result = src.try_io(Interest::READABLE, || {
                pipe::splice(src.as_raw_fd(), pipe.write_fd(), capacity)
            });
            let n = match result {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Readiness is cleared; polling again registers the waker or finds new data.
                    self.held = Held::Pipe { pipe, len: 0 };
                    continue;
                }
                Err(e) if splice_unsupported(&e) => {
                    pipe::give_back(pipe, true);
                    self.path = Path::Copy;
                    self.splice_fallbacks += 1;
                    return self.poll_read_copy(cx, src, settings);
                }
                Err(e) => {
                    pipe::give_back(pipe, true);
                    return Poll::Ready(Err(e));
                }
            };
            self.held = Held::Pipe { pipe, len: n };
            return Poll::Ready(Ok(n));
        }
    }

    /// Writes held bytes to `dst`; Ready with how many once some were written.
    fn poll_flush(&mut self, cx: &mut Context<'_>, dst: &mut TcpStream) -> Poll<io::Result<usize>> {
        let fin_follows = self.eof;
        match &mut self.held {
            Held::Nothing => Poll::Ready(Ok(0)),
            Held::Buffer { buf, start, end } => {
                let n = if fin_follows {
                    ready!(write_before_fin(cx, dst, &buf[*start..*end]))?
                } else {
                    ready!(Pin::new(&mut *dst).poll_write(cx, &buf[*start..*end]))?
                };
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                *start += n;
                if start == end {
                    (*start, *end) = (0, 0);
                }
                Poll::Ready(Ok(n))
            }
            Held::Pipe { pipe, len } => loop {
                ready!(dst.poll_write_ready(cx))?;
                let want = *len;
                let result = dst.try_io(Interest::WRITABLE, || {
                    pipe::splice(pipe.read_fd(), dst.as_raw_fd(), want)
                });
                let n = match result {
                    Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Poll::Ready(Err(e)),
                };
                *len -= n;
                return Poll::Ready(Ok(n));
            },
        }
    }

    /// Gives an empty pipe or buffer back to this thread's pool.
    fn release(&mut self) {
        debug_assert_eq!(self.pending(), 0);
        match std::mem::replace(&mut self.held, Held::Nothing) {
            Held::Nothing => {}
            Held::Buffer { buf, .. } => buffer::give_back(buf),
            Held::Pipe { pipe, .. } => pipe::give_back(pipe, true),
        }
    }
}

impl Drop for Direction {
    fn drop(&mut self) {
        let pending = self.pending();
        match std::mem::replace(&mut self.held, Held::Nothing) {
            Held::Nothing => {}
            Held::Buffer { buf, .. } => buffer::give_back(buf),
            // Bytes of a dead connection must never reach another one: close that pipe.
            Held::Pipe { pipe, .. } => pipe::give_back(pipe, pending == 0),
        }
    }
}

/// Writes the last bytes before a FIN with MSG_MORE, so that the shutdown (or close) that
/// follows sends them and the FIN in one segment (TCP_NODELAY would otherwise send them at
/// once, alone). Should neither follow, the next ACK from the peer releases them.
#[cfg(target_os = "linux")]
fn write_before_fin(
    cx: &mut Context<'_>,
    dst: &TcpStream,
    bytes: &[u8],
) -> Poll<io::Result<usize>> {
    loop {
        ready!(dst.poll_write_ready(cx))?;
        match dst.try_io(Interest::WRITABLE, || {
            SockRef::from(dst).send_with_flags(bytes, libc::MSG_MORE | libc::MSG_NOSIGNAL)
        }) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return Poll::Ready(other),
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn write_before_fin(
    cx: &mut Context<'_>,
    dst: &mut TcpStream,
    bytes: &[u8],
) -> Poll<io::Result<usize>> {
    Pin::new(dst).poll_write(cx, bytes)
}

fn splice_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
    )
}

/// Passes a FIN on. A peer that is already gone is not an error here: the other direction
/// will see it on its own terms.
fn shutdown_write(dst: &TcpStream) -> io::Result<()> {
    match SockRef::from(dst).shutdown(Shutdown::Write) {
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        other => other,
    }
}
