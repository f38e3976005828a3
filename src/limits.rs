//! Connection limits: a count of active connections against a maximum, held by permits.
//!
//! The process and each listener have one `Limit`; a connection holds a `Permit` on each for its
//! whole life, and dropping the permit gives the slot back. The maximum can change on reload
//! without disturbing connections already counted.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub struct Limit {
    active: AtomicUsize,
    max: AtomicUsize,
}

impl Limit {
    /// `None`: unlimited (still counted).
    pub fn new(max: Option<usize>) -> Arc<Limit> {
        Arc::new(Limit {
            active: AtomicUsize::new(0),
            max: AtomicUsize::new(max.unwrap_or(usize::MAX)),
        })
    }

    pub fn set_max(&self, max: Option<usize>) {
        self.max.store(max.unwrap_or(usize::MAX), Ordering::Relaxed);
    }

    pub fn max(&self) -> Option<usize> {
        Some(self.max.load(Ordering::Relaxed)).filter(|&m| m != usize::MAX)
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Takes a slot, or None when the limit is reached.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let before = self.active.fetch_add(1, Ordering::AcqRel);
        if before >= self.max.load(Ordering::Relaxed) {
            self.active.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Permit {
            limit: Arc::clone(self),
        })
    }
}

pub struct Permit {
    limit: Arc<Limit>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limit.active.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_count_and_release() {
        let limit = Limit::new(Some(2));
        let a = limit.try_acquire().unwrap();
        let _b = limit.try_acquire().unwrap();
        assert!(limit.try_acquire().is_none());
        assert_eq!(limit.active(), 2);
        drop(a);
        assert!(limit.try_acquire().is_some());
        limit.set_max(None);
        let many: Vec<_> = (0..100).map(|_| limit.try_acquire().unwrap()).collect();
        assert_eq!(limit.active(), 101);
        drop(many);
    }
}
