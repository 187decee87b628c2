//! Per-token usage waiting to be written: the request path adds to it under
//! a shard lock (no I/O), the store drains it in batches.
//!
//! Invariant: memory is bounded by `max_entries` distinct jtis. A delta for
//! a jti already present is merged into its entry; a delta for a new jti
//! when the table is full is dropped and counted ([`Pending::dropped`]) —
//! it only affects the admin statistics, never a limit (limits live in
//! their own, exact, tables).

use crate::{FastHasher as RandomState, FastMap};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

const SHARDS: usize = 16;

/// What happened to one token since the last write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageDelta {
    pub sub: Option<String>,
    pub calls: u64,
    pub llm_tokens: u64,
    /// Unix seconds of the first and last event in this delta.
    pub first_use: i64,
    pub last_use: i64,
    /// The token's `exp`; rows are kept for a retention period after it.
    pub exp: i64,
}

impl UsageDelta {
    /// Folds `other` (later) into `self`.
    pub fn merge(&mut self, other: &UsageDelta) {
        if other.sub.is_some() {
            self.sub.clone_from(&other.sub);
        }
        self.calls = self.calls.saturating_add(other.calls);
        self.llm_tokens = self.llm_tokens.saturating_add(other.llm_tokens);
        self.first_use = self.first_use.min(other.first_use);
        self.last_use = self.last_use.max(other.last_use);
        self.exp = self.exp.max(other.exp);
    }
}

#[derive(Debug)]
pub struct Pending {
    hasher: RandomState,
    shards: Box<[Mutex<FastMap<String, UsageDelta>>]>,
    shard_cap: usize,
    dropped: AtomicU64,
}

impl Pending {
    pub fn new(max_entries: usize) -> Pending {
        Pending {
            hasher: RandomState::default(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            shard_cap: (max_entries / SHARDS).max(1),
            dropped: AtomicU64::new(0),
        }
    }

    fn shard(&self, jti: &str) -> MutexGuard<'_, FastMap<String, UsageDelta>> {
        let idx = (self.hasher.hash_one(jti) % SHARDS as u64) as usize;
        // Entries are replaced in one step; a poisoned map is still consistent.
        self.shards[idx].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `delta` for `jti` (merged with what is pending).
    pub fn add(&self, jti: &str, delta: UsageDelta) {
        let mut shard = self.shard(jti);
        if let Some(entry) = shard.get_mut(jti) {
            entry.merge(&delta);
        } else if shard.len() < self.shard_cap {
            shard.insert(jti.to_owned(), delta);
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes everything pending (the table is empty afterwards).
    pub fn take(&self) -> Vec<(String, UsageDelta)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            out.extend(shard.drain());
        }
        out
    }

    /// Deltas for new jtis dropped because the table was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn d(calls: u64, tokens: u64, t: i64) -> UsageDelta {
        UsageDelta {
            sub: Some(format!("s{t}")),
            calls,
            llm_tokens: tokens,
            first_use: t,
            last_use: t,
            exp: 100 + t,
        }
    }

    #[test]
    fn deltas_merge_and_take_empties() {
        let p = Pending::new(100);
        p.add("a", d(1, 5, 10));
        p.add("a", d(1, 7, 20));
        p.add("b", d(1, 0, 15));
        let mut all = p.take();
        all.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(all.len(), 2);
        let a = &all[0].1;
        assert_eq!(
            (a.calls, a.llm_tokens, a.first_use, a.last_use),
            (2, 12, 10, 20)
        );
        assert_eq!(a.sub.as_deref(), Some("s20"));
        assert_eq!(a.exp, 120);
        assert!(p.take().is_empty());
    }

    #[test]
    fn memory_is_bounded_and_drops_are_counted() {
        let p = Pending::new(SHARDS * 4);
        for i in 0..10_000 {
            p.add(&format!("jti-{i}"), d(1, 0, 1));
        }
        let n = p.take().len();
        assert!(n <= SHARDS * 4, "{n}");
        assert_eq!(p.dropped(), 10_000 - n as u64);
    }
}
