//! The per-token rate limit (`rps`, `burst`): the same GCRA as the traffic
//! limits (`limits.rs`), one TAT per jti, with each token's own rate.
//!
//! Memory is bounded by `max_tracked` jtis, exactly like the per-IP table:
//! entries whose TAT has passed are dropped first (they behave like unseen
//! tokens), then arbitrary live ones — which only ever gives that token a
//! fresh burst (errs in its favour; tokens cannot be minted by clients, so
//! this cannot be farmed).

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use crate::limits::{make_room, nanos_since, Gcra, RateSpec, RetryAfter};

const SHARDS: usize = 64;

#[derive(Debug)]
pub struct TokenRates {
    origin: Instant,
    hasher: RandomState,
    /// Per shard: jti -> TAT in ns since `origin`, at most `shard_cap` entries.
    shards: Box<[Mutex<HashMap<String, u64>>]>,
    shard_cap: usize,
}

impl TokenRates {
    pub fn new(max_tracked: usize) -> TokenRates {
        let max_tracked = max_tracked.max(1);
        let count = SHARDS.min(max_tracked);
        TokenRates {
            origin: Instant::now(),
            hasher: RandomState::new(),
            shards: (0..count).map(|_| Mutex::default()).collect(),
            shard_cap: max_tracked / count,
        }
    }

    fn shard(&self, jti: &str) -> MutexGuard<'_, HashMap<String, u64>> {
        let idx = (self.hasher.hash_one(jti) % self.shards.len() as u64) as usize;
        // A TAT is written in one step; a poisoned map is still valid.
        self.shards[idx].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits one request of `jti` at `rps` requests per second with
    /// `burst`, or says how long to wait.
    pub fn check(&self, jti: &str, rps: u64, burst: u64, now: Instant) -> Result<(), RetryAfter> {
        let gcra = Gcra::new(RateSpec {
            per_second: rps as f64,
            burst: u32::try_from(burst).unwrap_or(u32::MAX),
        });
        let now = nanos_since(self.origin, now);
        let mut shard = self.shard(jti);
        if let Some(tat) = shard.get_mut(jti) {
            *tat = gcra.step(*tat, now)?;
            return Ok(());
        }
        let next = gcra.step(0, now)?;
        if shard.len() >= self.shard_cap {
            make_room(&mut shard, self.shard_cap, now);
        }
        shard.insert(jti.to_owned(), next);
        Ok(())
    }

    /// Tokens whose rate state is remembered.
    pub fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_rate_per_token() {
        let r = TokenRates::new(100);
        let t = Instant::now();
        for _ in 0..3 {
            r.check("a", 1, 3, t).unwrap();
        }
        let wait = r.check("a", 1, 3, t).unwrap_err();
        assert_eq!(wait.secs_ceil(), 1);
        // Another token has its own budget.
        r.check("b", 1, 1, t).unwrap();
        assert!(r.check("b", 1, 1, t).is_err());
        r.check("a", 1, 3, t + Duration::from_secs(1)).unwrap();
        assert!(r.check("a", 1, 3, t + Duration::from_secs(1)).is_err());
    }

    #[test]
    fn memory_is_bounded() {
        let r = TokenRates::new(1000);
        let t = Instant::now();
        for i in 0..20_000 {
            r.check(&format!("jti-{i}"), 1, 5, t).unwrap();
        }
        assert!(r.tracked() <= 1000, "{}", r.tracked());
    }
}
