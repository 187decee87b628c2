//! In-process usage store: exact under concurrency within one process, lost
//! on restart (for tests and deployments that accept that).
//!
//! Invariant: each jti's count is read, checked and incremented under its
//! shard's lock, so concurrent reservations never admit more than
//! `max_calls`. Entries are dropped only after their token expired, when the
//! server would refuse the token before reaching the store anyway.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard};

use super::{decide, unix_now, Admission};

const SHARDS: usize = 16;
/// Sweep a shard for expired tokens after this many new jtis were inserted
/// into it, so the cost is amortised and memory follows the live tokens.
const SWEEP_EVERY_INSERTS: u32 = 1024;

#[derive(Debug, Default)]
struct Shard {
    /// jti -> (calls admitted, token exp in unix seconds).
    counts: HashMap<String, (u64, i64)>,
    /// New jtis since the last sweep.
    inserts_since_sweep: u32,
}

#[derive(Debug)]
pub struct MemoryStore {
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    fn shard(&self, jti: &str) -> MutexGuard<'_, Shard> {
        let idx = (self.hasher.hash_one(jti) % SHARDS as u64) as usize;
        // Counts are updated in one assignment, so a poisoned shard is intact.
        self.shards[idx]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn reserve_call(&self, jti: &str, max_calls: u64, exp: i64) -> Admission {
        let mut shard = self.shard(jti);
        if let Some((used, stored_exp)) = shard.counts.get_mut(jti) {
            let (admission, new_used) = decide(*used, max_calls);
            if let Some(n) = new_used {
                *used = n;
                *stored_exp = (*stored_exp).max(exp);
            }
            return admission;
        }
        let (admission, new_used) = decide(0, max_calls);
        if let Some(n) = new_used {
            shard.inserts_since_sweep += 1;
            if shard.inserts_since_sweep >= SWEEP_EVERY_INSERTS {
                shard.inserts_since_sweep = 0;
                let now = unix_now();
                shard.counts.retain(|_, (_, exp)| *exp >= now);
            }
            shard.counts.insert(jti.to_owned(), (n, exp));
        }
        admission
    }

    pub fn calls_used(&self, jti: &str) -> u64 {
        self.shard(jti).counts.get(jti).map_or(0, |(used, _)| *used)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |s| s.counts.len()))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn expired_entries_are_swept_opportunistically() {
        let store = MemoryStore::new();
        let past = unix_now() - 10;
        let future = unix_now() + 3600;
        for i in 0..(SHARDS as u32 * SWEEP_EVERY_INSERTS) {
            store.reserve_call(&format!("old-{i}"), 1, past);
        }
        for i in 0..(SHARDS as u32 * SWEEP_EVERY_INSERTS * 2) {
            store.reserve_call(&format!("new-{i}"), 1, future);
        }
        let live = SHARDS * SWEEP_EVERY_INSERTS as usize * 2;
        // Each shard got >= 1024 new inserts after its last old one, so it
        // was swept after every old (expired) entry went in.
        assert_eq!(store.len(), live);
        assert_eq!(store.calls_used("new-0"), 1);
    }
}
