//! Kernel pipes for splice(2), and the per-thread pool they are borrowed from.
//!
//! A direction borrows a pipe only while bytes are in flight and gives it back empty, so an idle
//! connection holds no pipe. A pipe that still holds bytes when its connection ends is dropped
//! (closed), never pooled: its contents belong to a dead connection. Each worker thread has its
//! own pool, so borrowing takes no lock.

use std::cell::{Cell, RefCell};
use std::io;
#[cfg(all(target_os = "linux", not(l4relay_no_splice)))]
use std::os::fd::FromRawFd;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// Pipes kept per worker thread beyond those in use. Each costs two file descriptors and no
/// buffer memory while empty.
const MAX_POOLED: usize = 64;

/// Linux's default pipe capacity; other sizes need an F_SETPIPE_SZ call.
#[cfg(all(target_os = "linux", not(l4relay_no_splice)))]
const DEFAULT_PIPE_SIZE: usize = 64 * 1024;

pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
    /// The size asked for; the pool matches on it, since the kernel may grant less.
    requested: usize,
}

/// splice(2) is Linux's. Elsewhere (or built with `--cfg l4relay_no_splice`, which is how the
/// copy-only build is tested on Linux) no pipe can be had, and a direction that asks for one
/// moves that chunk through its copy buffer instead.
#[cfg(not(all(target_os = "linux", not(l4relay_no_splice))))]
fn unsupported<T>() -> io::Result<T> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "splice is not available on this platform",
    ))
}

impl Pipe {
    #[cfg(not(all(target_os = "linux", not(l4relay_no_splice))))]
    fn new(_size: usize) -> io::Result<Pipe> {
        unsupported()
    }

    #[cfg(all(target_os = "linux", not(l4relay_no_splice)))]
    fn new(size: usize) -> io::Result<Pipe> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let mut capacity = DEFAULT_PIPE_SIZE;
        if size != DEFAULT_PIPE_SIZE {
            // SAFETY: F_SETPIPE_SZ on a pipe descriptor we own; an int argument as the ABI wants.
            let set =
                unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) };
            // Failure (e.g. above pipe-max-size for an unprivileged user) keeps the default size:
            // the relay still works, with smaller chunks.
            if set > 0 {
                capacity = set as usize;
            }
        }
        Ok(Pipe {
            read,
            write,
            capacity,
            requested: size,
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn read_fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    pub fn write_fd(&self) -> RawFd {
        self.write.as_raw_fd()
    }
}

#[cfg(not(all(target_os = "linux", not(l4relay_no_splice))))]
pub fn splice(_from: RawFd, _to: RawFd, _len: usize) -> io::Result<usize> {
    unsupported()
}

/// Moves up to `len` bytes from `from` to `to` inside the kernel; one of them must be a pipe.
/// Never SPLICE_F_MORE: it would hold back the last segment of a response, adding latency.
#[cfg(all(target_os = "linux", not(l4relay_no_splice)))]
pub fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are open for the duration of the call (borrowed from live
    // sockets and pipes); null offsets are valid for non-seekable files.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

thread_local! {
    static POOL: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
    static IN_USE: Cell<usize> = const { Cell::new(0) };
}

/// Borrows an empty pipe of `size` bytes from this thread's pool, or makes one.
pub fn take(size: usize) -> io::Result<Pipe> {
    let pooled = POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        loop {
            match pool.pop() {
                // A pool filled under another pipe_size (before a reload) drains naturally.
                Some(pipe) if pipe.requested != size => continue,
                other => return other,
            }
        }
    });
    let pipe = match pooled {
        Some(pipe) => pipe,
        None => Pipe::new(size)?,
    };
    IN_USE.with(|n| n.set(n.get() + 1));
    Ok(pipe)
}

/// Returns a pipe. `empty` must be true only if every byte spliced in was spliced out.
pub fn give_back(pipe: Pipe, empty: bool) {
    IN_USE.with(|n| n.set(n.get().saturating_sub(1)));
    if empty {
        POOL.with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.len() < MAX_POOLED {
                pool.push(pipe);
            }
        });
    }
}

/// (pipes borrowed by connections, pipes waiting in the pool) on this thread.
pub fn thread_stats() -> (usize, usize) {
    (IN_USE.with(Cell::get), POOL.with(|p| p.borrow().len()))
}

#[cfg(all(test, target_os = "linux", not(l4relay_no_splice)))]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn pipes_are_reused_only_when_empty() {
        let pipe = take(DEFAULT_PIPE_SIZE).unwrap();
        let fd = pipe.read_fd();
        give_back(pipe, true);
        let again = take(DEFAULT_PIPE_SIZE).unwrap();
        assert_eq!(again.read_fd(), fd, "an empty pipe is pooled");
        give_back(again, false);
        let fresh = take(DEFAULT_PIPE_SIZE).unwrap();
        assert_eq!(thread_stats(), (1, 0), "a non-empty pipe is not pooled");
        give_back(fresh, true);
    }

    #[test]
    fn pipe_size_is_applied() {
        let pipe = Pipe::new(256 * 1024).unwrap();
        assert_eq!(pipe.capacity(), 256 * 1024);
    }

    #[test]
    fn splice_moves_bytes_between_sockets_through_a_pipe() {
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (c, mut d) = std::os::unix::net::UnixStream::pair().unwrap();
        let pipe = Pipe::new(DEFAULT_PIPE_SIZE).unwrap();
        a.write_all(b"hello splice").unwrap();
        let n = splice(b.as_raw_fd(), pipe.write_fd(), 1 << 16).unwrap();
        assert_eq!(n, 12);
        assert_eq!(splice(pipe.read_fd(), c.as_raw_fd(), n).unwrap(), 12);
        let mut got = [0u8; 12];
        d.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello splice");
    }
}
