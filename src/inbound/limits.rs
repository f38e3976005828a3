//! Connection limits: a count of active connections against a maximum, held by permits.
//!
//! The process and each listener have one `Limit`; a connection holds a `Permit` on each for its
//! whole life, and dropping the permit gives the slot back. The maximum can change on reload
//! without disturbing connections already counted.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

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

/// A limit per key (client address, VPC endpoint): only keys with open connections are kept.
/// The map is locked once when a connection starts and once when it ends, never while relaying.
pub struct KeyedLimit<K> {
    counts: Mutex<HashMap<K, usize>>,
}

impl<K: Hash + Eq + Clone> KeyedLimit<K> {
    pub fn new() -> Arc<Self> {
        Arc::new(KeyedLimit {
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a slot for `key` if it has fewer than `max` open connections.
    pub fn try_acquire(self: &Arc<Self>, key: K, max: usize) -> Option<KeyedPermit<K>> {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = counts.entry(key.clone()).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(KeyedPermit {
            limit: Arc::clone(self),
            key,
        })
    }

    pub fn active(&self, key: &K) -> usize {
        let counts = self
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        counts.get(key).copied().unwrap_or(0)
    }
}

pub struct KeyedPermit<K: Hash + Eq> {
    limit: Arc<KeyedLimit<K>>,
    key: K,
}

impl<K: Hash + Eq> Drop for KeyedPermit<K> {
    fn drop(&mut self) {
        let mut counts = self
            .limit
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// A listener's per-client limits: by client address and by VPC endpoint.
#[derive(Clone)]
pub struct ClientLimits {
    per_source: Arc<KeyedLimit<IpAddr>>,
    per_vpce: Arc<KeyedLimit<Box<str>>>,
}

/// One connection's places under its `ClientLimits`.
pub struct ClientPermits {
    _per_source: Option<KeyedPermit<IpAddr>>,
    _per_vpce: Option<KeyedPermit<Box<str>>>,
}

impl ClientLimits {
    pub fn new() -> ClientLimits {
        ClientLimits {
            per_source: KeyedLimit::new(),
            per_vpce: KeyedLimit::new(),
        }
    }

    /// Takes a place per limit that is set; on refusal, which limit refused.
    pub fn acquire(
        &self,
        client: IpAddr,
        vpce: Option<&str>,
        max_per_source: Option<usize>,
        max_per_vpce: Option<usize>,
    ) -> Result<ClientPermits, &'static str> {
        let per_source = match max_per_source {
            None => None,
            Some(max) => Some(
                self.per_source
                    .try_acquire(client, max)
                    .ok_or("per_source")?,
            ),
        };
        let per_vpce = match (max_per_vpce, vpce) {
            (Some(max), Some(id)) => Some(
                self.per_vpce
                    .try_acquire(id.into(), max)
                    .ok_or("per_vpce")?,
            ),
            _ => None,
        };
        Ok(ClientPermits {
            _per_source: per_source,
            _per_vpce: per_vpce,
        })
    }
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self::new()
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

    #[test]
    fn keyed_permits_count_per_key_and_forget_idle_keys() {
        let limit = KeyedLimit::new();
        let a1 = limit.try_acquire("a", 2).unwrap();
        let _a2 = limit.try_acquire("a", 2).unwrap();
        assert!(limit.try_acquire("a", 2).is_none());
        let b = limit.try_acquire("b", 2).unwrap();
        drop(a1);
        assert_eq!(limit.active(&"a"), 1);
        drop(b);
        assert!(limit.counts.lock().unwrap().get("b").is_none());
    }
}
