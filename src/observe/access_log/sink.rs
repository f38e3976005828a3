//! Where access-log lines go, and how they are written without ever waiting for a reader.
//!
//! Workers write their own buffers (one system call per flush, on the worker, under a lock
//! held for that call only), so every write must return at once, full or not:
//!
//! - **stdout, a pipe or a terminal** (a container's log driver, `| tee`): fd 1 is reopened
//!   through `/proc/self/fd/1` with `O_NONBLOCK`. That is a new open file description of the
//!   same pipe: setting `O_NONBLOCK` on fd 1 itself would change it for every process that
//!   shares the description (a shell, a supervisor, the stderr of the same pipe), which then
//!   see `EAGAIN` they never asked for. Without `/proc`: `poll` for room, then at most
//!   `PIPE_BUF` bytes, which the kernel takes whole or not at all.
//! - **stdout, a socket** (journald's stdout stream under systemd): `send` with
//!   `MSG_DONTWAIT`, which is non-blocking for that call alone.
//! - **stdout, a regular file** (`> file`), and **a file path** (`access_log = "/var/log/..."`,
//!   opened here with `O_APPEND`): a regular file never waits for a reader, so a plain write.
//!   (It can wait for the disk; use a local disk.) The path is reopened on SIGUSR1.
//! - **journald** (`access_log = "journald"`): one datagram per line to journald's socket,
//!   many per system call (`sendmmsg`), `MSG_DONTWAIT`. Unconnected, so a restarted journald
//!   is found again.
//!
//! A write that takes only part of a buffer leaves whole lines behind: the rest of a line cut
//! in the middle is kept here and written before anything else, so that lines from different
//! workers never interleave.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// Where journald takes entries in its native protocol.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Where the access log goes (`[global] access_log`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout,
    File(PathBuf),
    Journald,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Stdout => f.write_str("stdout"),
            Target::File(path) => write!(f, "{}", path.display()),
            Target::Journald => f.write_str("journald"),
        }
    }
}

/// Lines waiting in a worker to be written.
#[derive(Default)]
pub struct Pending {
    pub buf: Vec<u8>,
    pub lines: usize,
    /// Journald: where each entry (one datagram) ends in `buf`.
    pub ends: Vec<usize>,
}

impl Pending {
    /// Forgets the first `bytes` of `buf`, holding `lines` lines (or entries).
    fn consume(&mut self, bytes: usize, lines: usize) {
        self.buf.drain(..bytes);
        self.lines -= lines;
        if !self.ends.is_empty() {
            self.ends.drain(..lines);
            for end in &mut self.ends {
                *end -= bytes;
            }
        }
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.ends.clear();
        self.lines = 0;
    }
}

/// What a flush did.
#[derive(Debug)]
pub enum Flushed {
    /// Everything was written.
    Done,
    /// The sink is full: what it did not take is still pending.
    Full,
    /// A write failed: the pending lines were dropped, this many.
    Failed { error: io::Error, dropped: usize },
}

pub struct Sink {
    target: Target,
    state: Mutex<State>,
}

struct State {
    out: Out,
    /// The rest of a line a partial write cut: written before anything else.
    tail: Vec<u8>,
}

enum Out {
    /// Our own open file description: stdout reopened with O_NONBLOCK, or the file we opened.
    Own(OwnedFd),
    /// fd 1 itself: a regular file, or something we cannot classify.
    Stdout,
    /// fd 1 is a socket: `send` with MSG_DONTWAIT.
    StdoutSocket,
    /// fd 1 is a pipe we could not reopen: poll for room, then at most PIPE_BUF bytes.
    StdoutPolled,
    /// An unconnected datagram socket for journald's.
    Journal(OwnedFd),
}

const STDOUT: RawFd = 1;

impl Sink {
    /// Opens the target; an error says why it cannot be written to.
    pub fn open(target: Target) -> io::Result<Sink> {
        let out = match &target {
            Target::Stdout => stdout(),
            Target::File(path) => Out::Own(open_file(path)?),
            Target::Journald => {
                let socket = journal_socket()?;
                // Fail at start, not at the first line, when there is no journald to take them.
                std::os::unix::net::UnixDatagram::unbound()?.connect(JOURNAL_SOCKET)?;
                Out::Journal(socket)
            }
        };
        Ok(Sink {
            target,
            state: Mutex::new(State {
                out,
                tail: Vec::new(),
            }),
        })
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    pub fn is_journal(&self) -> bool {
        self.target == Target::Journald
    }

    /// Reopens a file target (after logrotate moved it away); Ok(None) for the others.
    pub fn reopen(&self) -> io::Result<Option<&Path>> {
        let Target::File(path) = &self.target else {
            return Ok(None);
        };
        let fd = open_file(path)?;
        self.lock().out = Out::Own(fd);
        Ok(Some(path))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while writing leaves nothing half-done that matters: go on.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes what `pending` holds, without waiting; removes what was written.
    pub fn flush(&self, pending: &mut Pending) -> Flushed {
        let mut state = self.lock();
        if let Out::Journal(socket) = &state.out {
            return flush_datagrams(socket.as_raw_fd(), pending);
        }
        // A line cut by an earlier partial write goes first.
        while !state.tail.is_empty() {
            match state.out.write(&state.tail) {
                Ok(0) => return Flushed::Full,
                Ok(n) => drop(state.tail.drain(..n)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Flushed::Full,
                Err(error) => {
                    state.tail.clear();
                    let dropped = pending.lines + 1;
                    pending.clear();
                    return Flushed::Failed { error, dropped };
                }
            }
        }
        let mut written = 0;
        while written < pending.buf.len() {
            match state.out.write(&pending.buf[written..]) {
                Ok(0) => break,
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) => {
                    let dropped = newlines(&pending.buf[written..]);
                    pending.clear();
                    return Flushed::Failed { error, dropped };
                }
            }
        }
        if written == pending.buf.len() {
            pending.clear();
            return Flushed::Done;
        }
        // Whole lines stay pending; the rest of a cut one moves to the tail.
        let cut = if written == 0 || pending.buf[written - 1] == b'\n' {
            written
        } else {
            let end = pending.buf[written..]
                .iter()
                .position(|b| *b == b'\n')
                .map_or(pending.buf.len(), |at| written + at + 1);
            state.tail.extend_from_slice(&pending.buf[written..end]);
            end
        };
        let lines = newlines(&pending.buf[..cut]);
        pending.consume(cut, lines);
        Flushed::Full
    }

    /// Waits up to `limit` for room to write (at exit, when lines are left); true if there is.
    pub fn wait_writable(&self, limit: Duration) -> bool {
        let fd = match &self.lock().out {
            Out::Own(fd) | Out::Journal(fd) => fd.as_raw_fd(),
            Out::Stdout | Out::StdoutSocket | Out::StdoutPolled => STDOUT,
        };
        poll_out(fd, limit.as_millis().min(i32::MAX as u128) as i32)
    }
}

impl Out {
    fn write(&self, bytes: &[u8]) -> io::Result<usize> {
        let n = match self {
            // SAFETY: `bytes` is valid for its length; the fd is open (ours, or the process's
            // stdout, which nothing closes).
            Out::Own(fd) => unsafe {
                libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len())
            },
            // SAFETY: as above.
            Out::Stdout => unsafe { libc::write(STDOUT, bytes.as_ptr().cast(), bytes.len()) },
            // SAFETY: as above; the flags make this one call non-blocking and keep a closed
            // reader from raising SIGPIPE.
            Out::StdoutSocket => unsafe {
                libc::send(
                    STDOUT,
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            },
            Out::StdoutPolled => {
                if !poll_out(STDOUT, 0) {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                let len = bytes.len().min(libc::PIPE_BUF);
                // SAFETY: as above, `len` within `bytes`.
                unsafe { libc::write(STDOUT, bytes.as_ptr().cast(), len) }
            }
            Out::Journal(_) => unreachable!("journald is written by datagrams"),
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

/// Sends each pending entry as one datagram to journald, up to 64 per system call.
fn flush_datagrams(socket: RawFd, pending: &mut Pending) -> Flushed {
    const BATCH: usize = 64;
    // SAFETY: sockaddr_un is plain data; all-zero is a valid (empty) value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(JOURNAL_SOCKET.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    let addr_len = (std::mem::size_of::<libc::sa_family_t>() + JOURNAL_SOCKET.len() + 1) as u32;
    let mut sent_entries = 0;
    while sent_entries < pending.ends.len() {
        let first = sent_entries;
        let last = (first + BATCH).min(pending.ends.len());
        let mut iovecs: Vec<libc::iovec> = (first..last)
            .map(|i| {
                let start = if i == 0 { 0 } else { pending.ends[i - 1] };
                libc::iovec {
                    iov_base: pending.buf[start..].as_ptr() as *mut libc::c_void,
                    iov_len: pending.ends[i] - start,
                }
            })
            .collect();
        let mut messages: Vec<libc::mmsghdr> = iovecs
            .iter_mut()
            .map(|iov| {
                // SAFETY: mmsghdr is plain data; all-zero is valid, the fields are set below.
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_name = (&mut addr as *mut libc::sockaddr_un).cast();
                m.msg_hdr.msg_namelen = addr_len;
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        // SAFETY: `messages` holds `len` initialized headers whose name and iovec pointers
        // point into `addr`, `iovecs` and `pending.buf`, all alive for the call.
        let n = unsafe {
            libc::sendmmsg(
                socket,
                messages.as_mut_ptr(),
                messages.len() as u32,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let error = io::Error::last_os_error();
            match error.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => break,
                _ => {
                    let dropped = pending.lines - sent_entries;
                    pending.clear();
                    return Flushed::Failed { error, dropped };
                }
            }
        }
        sent_entries += n as usize;
    }
    if sent_entries == pending.lines {
        pending.clear();
        return Flushed::Done;
    }
    let bytes = if sent_entries == 0 {
        0
    } else {
        pending.ends[sent_entries - 1]
    };
    pending.consume(bytes, sent_entries);
    Flushed::Full
}

fn newlines(bytes: &[u8]) -> usize {
    bytes.iter().filter(|b| **b == b'\n').count()
}

/// True when `fd` has room to write within `timeout_ms` (or is in error, which the write
/// will then report).
fn poll_out(fd: RawFd, timeout_ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    n > 0
}

/// The file target: appended to, created 0640 if missing, never waiting on a FIFO's reader.
fn open_file(path: &Path) -> io::Result<OwnedFd> {
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    Ok(OwnedFd::from(file))
}

/// How to write to stdout without blocking, depending on what it is.
fn stdout() -> Out {
    // SAFETY: stat is plain data; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on fd 1 writes one stat into `st`.
    if unsafe { libc::fstat(STDOUT, &mut st) } != 0 {
        // Closed: every write fails, and that is counted and said.
        return Out::Stdout;
    }
    match st.st_mode & libc::S_IFMT {
        libc::S_IFSOCK => Out::StdoutSocket,
        libc::S_IFIFO | libc::S_IFCHR => {
            let path = c"/proc/self/fd/1";
            // SAFETY: a NUL-terminated path; the flags open a new description of the same
            // pipe or terminal, without making it our controlling terminal.
            let fd = unsafe {
                libc::open(
                    path.as_ptr(),
                    libc::O_WRONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY,
                )
            };
            if fd < 0 {
                if st.st_mode & libc::S_IFMT == libc::S_IFIFO {
                    Out::StdoutPolled
                } else {
                    Out::Stdout
                }
            } else {
                // SAFETY: `fd` was just opened and is owned by nothing else.
                Out::Own(unsafe { OwnedFd::from_raw_fd(fd) })
            }
        }
        _ => Out::Stdout,
    }
}

fn journal_socket() -> io::Result<OwnedFd> {
    let socket = std::os::unix::net::UnixDatagram::unbound()?;
    socket.set_nonblocking(true)?;
    Ok(OwnedFd::from(socket))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(lines: &[&str]) -> Pending {
        let mut p = Pending::default();
        for line in lines {
            p.buf.extend_from_slice(line.as_bytes());
            p.buf.push(b'\n');
            p.lines += 1;
        }
        p
    }

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two fds into the array.
        assert_eq!(
            unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) },
            0
        );
        // SAFETY: both were just opened and are owned by nothing else.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    fn sink_to(fd: OwnedFd) -> Sink {
        Sink {
            target: Target::Stdout,
            state: Mutex::new(State {
                out: Out::Own(fd),
                tail: Vec::new(),
            }),
        }
    }

    fn read_all(fd: &OwnedFd) -> String {
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            // SAFETY: reading into a valid buffer from an open, non-blocking fd.
            let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            out.extend_from_slice(&buf[..n as usize]);
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_full_pipe_keeps_whole_lines_and_never_interleaves_them() {
        let (reader, writer) = pipe();
        let sink = sink_to(writer);
        // Two "workers", each with lines longer than what the pipe takes at once.
        let line_a = "a".repeat(1000);
        let line_b = "b".repeat(1000);
        let mut a = pending(&vec![line_a.as_str(); 100]);
        let mut b = pending(&vec![line_b.as_str(); 100]);
        let mut rounds = 0;
        let mut received = String::new();
        while a.lines + b.lines > 0 || !sink.lock().tail.is_empty() {
            for p in [&mut a, &mut b] {
                match sink.flush(p) {
                    Flushed::Done | Flushed::Full => {}
                    Flushed::Failed { error, .. } => panic!("{error}"),
                }
            }
            received.push_str(&read_all(&reader));
            rounds += 1;
            assert!(rounds < 1000, "no progress");
        }
        assert!(rounds > 1, "the pipe never filled: the test tests nothing");
        let lines: Vec<&str> = received.lines().collect();
        assert_eq!(lines.len(), 200);
        assert!(lines.iter().all(|l| *l == line_a || *l == line_b));
    }

    #[test]
    fn a_reader_gone_fails_with_the_lines_counted() {
        let (reader, writer) = pipe();
        drop(reader);
        let sink = sink_to(writer);
        let mut p = pending(&["one", "two", "three"]);
        match sink.flush(&mut p) {
            Flushed::Failed { error, dropped } => {
                assert_eq!(error.kind(), io::ErrorKind::BrokenPipe);
                assert_eq!(dropped, 3);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(p.lines, 0);
        assert!(p.buf.is_empty());
    }

    #[test]
    fn consuming_entries_moves_their_ends() {
        let mut p = Pending {
            buf: b"aaabbcccc".to_vec(),
            lines: 3,
            ends: vec![3, 5, 9],
        };
        p.consume(5, 2);
        assert_eq!(p.buf, b"cccc");
        assert_eq!(p.ends, vec![4]);
        assert_eq!(p.lines, 1);
    }
}
