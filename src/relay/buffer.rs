//! Per-thread pool of copy buffers for the buffered relay path.
//!
//! Like pipes, a buffer is borrowed only while bytes are in flight, so idle connections hold no
//! buffer memory; the pool is per worker thread, so borrowing takes no lock.

use std::cell::RefCell;

/// Buffers kept per worker thread beyond those in use.
const MAX_POOLED: usize = 64;

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// Borrows a buffer of exactly `size` bytes (its contents are garbage).
pub fn take(size: usize) -> Box<[u8]> {
    let pooled = POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        while let Some(buf) = pool.pop() {
            if buf.len() == size {
                return Some(buf);
            }
        }
        None
    });
    pooled.unwrap_or_else(|| vec![0u8; size].into_boxed_slice())
}

pub fn give_back(buf: Box<[u8]>) {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < MAX_POOLED {
            pool.push(buf);
        }
    });
}
