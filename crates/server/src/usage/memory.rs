//! In-process usage store: exact under concurrency within one process, lost
//! on restart (for tests and deployments that accept that).
//!
//! Invariant: each jti's call count and budget are read, checked and
//! updated under its shard's lock, so concurrent reservations never admit
//! more than `max_calls` / the budget. Entries are dropped only after their
//! token expired, when the server would refuse the token before reaching
//! the store anyway (usage statistics after a retention period).

use crate::{FastHasher as RandomState, FastMap};
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard, RwLock};

use super::{
    decide, decide_budget, settled, unix_now, Admission, BudgetAdmission, SubReport, TokenReport,
    UsageDelta, USAGE_RETENTION_SECS,
};

const SHARDS: usize = 16;
/// Sweep a shard for expired tokens after this many new jtis were inserted
/// into it, so the cost is amortised and memory follows the live tokens.
const SWEEP_EVERY_INSERTS: u32 = 1024;

#[derive(Debug, Default)]
struct Shard {
    /// jti -> (calls admitted, token exp in unix seconds).
    counts: FastMap<String, (u64, i64)>,
    /// New jtis since the last sweep.
    inserts_since_sweep: u32,
    /// jti -> (LLM tokens used incl. outstanding reservations, exp).
    budgets: FastMap<String, (u64, i64)>,
    /// jti -> usage totals for the admin API.
    ledger: FastMap<String, UsageDelta>,
}

#[derive(Debug)]
pub struct MemoryStore {
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
    /// jti -> revoked at (unix seconds).
    revoked: RwLock<FastMap<String, i64>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self {
            hasher: RandomState::default(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            revoked: RwLock::default(),
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
            sweep_if_due(&mut shard);
            shard.counts.insert(jti.to_owned(), (n, exp));
        }
        admission
    }

    pub fn reserve_tokens(&self, jti: &str, budget: u64, amount: u64, exp: i64) -> BudgetAdmission {
        let mut shard = self.shard(jti);
        let used = shard.budgets.get(jti).map_or(0, |(used, _)| *used);
        let (admission, new_used) = decide_budget(used, budget, amount);
        if let Some(n) = new_used {
            if !shard.budgets.contains_key(jti) {
                sweep_if_due(&mut shard);
            }
            let entry = shard.budgets.entry(jti.to_owned()).or_insert((0, exp));
            *entry = (n, entry.1.max(exp));
        }
        admission
    }

    pub fn settle_tokens(&self, jti: &str, reserved: u64, actual: u64) -> u64 {
        let mut shard = self.shard(jti);
        match shard.budgets.get_mut(jti) {
            Some((used, _)) => {
                *used = settled(*used, reserved, actual);
                *used
            }
            None => 0,
        }
    }

    pub fn tokens_used(&self, jti: &str) -> u64 {
        self.shard(jti)
            .budgets
            .get(jti)
            .map_or(0, |(used, _)| *used)
    }

    /// Revokes `jti` at `now`; returns the time of the (first) revocation.
    pub fn revoke(&self, jti: &str, now: i64) -> i64 {
        let mut revoked = self.revoked.write().unwrap_or_else(|p| p.into_inner());
        *revoked.entry(jti.to_owned()).or_insert(now)
    }

    pub fn revoked_at(&self, jti: &str) -> Option<i64> {
        let revoked = self.revoked.read().unwrap_or_else(|p| p.into_inner());
        revoked.get(jti).copied()
    }

    pub fn is_revoked(&self, jti: &str) -> bool {
        let revoked = self.revoked.read().unwrap_or_else(|p| p.into_inner());
        !revoked.is_empty() && revoked.contains_key(jti)
    }

    pub fn record(&self, jti: &str, delta: &UsageDelta) {
        let mut shard = self.shard(jti);
        if let Some(row) = shard.ledger.get_mut(jti) {
            row.merge(delta);
            return;
        }
        sweep_if_due(&mut shard);
        shard.ledger.insert(jti.to_owned(), delta.clone());
    }

    pub fn token_report(&self, jti: &str) -> TokenReport {
        let (row, calls, budget) = {
            let shard = self.shard(jti);
            (
                shard.ledger.get(jti).cloned(),
                shard.counts.get(jti).map_or(0, |(used, _)| *used),
                shard.budgets.get(jti).map(|(used, _)| *used),
            )
        };
        let revoked_at = self.revoked_at(jti);
        let row = row.unwrap_or_default();
        TokenReport {
            jti: jti.to_owned(),
            sub: row.sub,
            calls: row.calls,
            llm_tokens: row.llm_tokens,
            first_use: (row.calls > 0).then_some(row.first_use),
            last_use: (row.calls > 0).then_some(row.last_use),
            max_calls_used: calls,
            budget_used: budget,
            revoked: revoked_at.is_some(),
            revoked_at,
        }
    }

    /// Totals per `sub` (only `sub` when given), sorted by sub.
    pub fn sub_report(&self, sub: Option<&str>) -> Vec<SubReport> {
        let mut by_sub: HashMap<String, SubReport> = HashMap::new();
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            for row in shard.ledger.values() {
                let Some(s) = row.sub.as_deref() else {
                    continue;
                };
                if sub.is_some_and(|want| want != s) {
                    continue;
                }
                let r = by_sub.entry(s.to_owned()).or_insert_with(|| SubReport {
                    sub: s.to_owned(),
                    ..SubReport::default()
                });
                r.tokens += 1;
                r.calls += row.calls;
                r.llm_tokens += row.llm_tokens;
                if row.calls > 0 {
                    r.first_use = Some(r.first_use.map_or(row.first_use, |f| f.min(row.first_use)));
                    r.last_use = Some(r.last_use.map_or(row.last_use, |l| l.max(row.last_use)));
                }
            }
        }
        let mut out: Vec<SubReport> = by_sub.into_values().collect();
        out.sort_by(|a, b| a.sub.cmp(&b.sub));
        out
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

/// Every `SWEEP_EVERY_INSERTS` new jtis, drops what can no longer matter:
/// counts and budgets of expired tokens (the relay refuses them before the
/// store), usage rows past the retention period.
fn sweep_if_due(shard: &mut Shard) {
    shard.inserts_since_sweep += 1;
    if shard.inserts_since_sweep < SWEEP_EVERY_INSERTS {
        return;
    }
    shard.inserts_since_sweep = 0;
    let now = unix_now();
    shard.counts.retain(|_, (_, exp)| *exp >= now);
    shard.budgets.retain(|_, (_, exp)| *exp >= now);
    shard
        .ledger
        .retain(|_, row| row.exp.saturating_add(USAGE_RETENTION_SECS) >= now);
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
