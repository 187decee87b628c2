//! Requests in flight per token, for the `concurrency` claim.
//!
//! [`InFlight::acquire`] admits a request when fewer than the limit are in
//! flight for its jti and hands back a [`Slot`]; dropping the slot releases
//! it. The slot travels into the response body's finish hook, which runs
//! exactly once (body complete, upstream error, or client gone), so a
//! stream holds its slot until it ends; a request refused or failed before
//! its response drops the slot on the way out.
//!
//! Invariant: for every jti, `count` = slots alive, and never above the
//! limit the acquiring request carried. Entries exist only while a slot is
//! alive (removed at zero), so memory is bounded by the requests in flight.

use crate::{FastHasher as RandomState, FastMap};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};

const SHARDS: usize = 16;

#[derive(Debug)]
struct Shards {
    hasher: RandomState,
    shards: Box<[Mutex<FastMap<String, u64>>]>,
}

impl Shards {
    fn shard(&self, jti: &str) -> MutexGuard<'_, FastMap<String, u64>> {
        let idx = (self.hasher.hash_one(jti) % SHARDS as u64) as usize;
        // Counts change in single steps; a poisoned map is still consistent.
        self.shards[idx].lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// In-flight counts per jti; cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct InFlight(Arc<Shards>);

impl Default for InFlight {
    fn default() -> Self {
        InFlight(Arc::new(Shards {
            hasher: RandomState::default(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }))
    }
}

/// One admitted request of a token; releases on drop.
#[derive(Debug)]
pub struct Slot {
    owner: InFlight,
    jti: String,
}

impl InFlight {
    /// A slot for `jti` if fewer than `limit` are in flight.
    pub fn acquire(&self, jti: &str, limit: u64) -> Option<Slot> {
        let mut shard = self.0.shard(jti);
        let count = shard.entry(jti.to_owned()).or_insert(0);
        if *count >= limit {
            if *count == 0 {
                shard.remove(jti);
            }
            return None;
        }
        *count += 1;
        Some(Slot {
            owner: self.clone(),
            jti: jti.to_owned(),
        })
    }

    /// Requests in flight for `jti`.
    pub fn count(&self, jti: &str) -> u64 {
        self.0.shard(jti).get(jti).copied().unwrap_or(0)
    }

    /// Distinct tokens with a request in flight.
    pub fn tracked(&self) -> usize {
        self.0
            .shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut shard = self.owner.0.shard(&self.jti);
        if let Some(count) = shard.get_mut(&self.jti) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                shard.remove(&self.jti);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn limit_is_enforced_and_released_on_drop() {
        let f = InFlight::default();
        let a = f.acquire("t", 2).unwrap();
        let b = f.acquire("t", 2).unwrap();
        assert!(f.acquire("t", 2).is_none());
        assert!(f.acquire("other", 1).is_some()); // dropped at once
        assert_eq!(f.count("t"), 2);
        drop(a);
        let c = f.acquire("t", 2).unwrap();
        drop((b, c));
        assert_eq!(f.count("t"), 0);
        assert_eq!(f.tracked(), 0, "entries go away at zero");
    }

    #[test]
    fn never_above_limit_under_threads() {
        let f = InFlight::default();
        let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let f = f.clone();
                let peak = peak.clone();
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        if let Some(slot) = f.acquire("t", 3) {
                            peak.fetch_max(f.count("t"), std::sync::atomic::Ordering::Relaxed);
                            drop(slot);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(peak.load(std::sync::atomic::Ordering::Relaxed) <= 3);
        assert_eq!(f.tracked(), 0);
    }
}
