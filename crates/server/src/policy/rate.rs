//! The per-token rate limit (`rps`, `burst`): the same GCRA as the traffic
//! limits (`limits.rs`), one TAT per jti, with each token's own rate.
//!
//! Memory is bounded by `max_tracked` jtis — it is the per-IP table
//! (`limits::KeyedTats`), keyed by jti:
//! entries whose TAT has passed are dropped first (they behave like unseen
//! tokens), then arbitrary live ones — which only ever gives that token a
//! fresh burst (errs in its favour; tokens cannot be minted by clients, so
//! this cannot be farmed).

use std::time::Instant;

use crate::limits::{Gcra, KeyedTats, RateSpec, RetryAfter};

#[derive(Debug)]
pub struct TokenRates {
    /// jti -> TAT, at most `max_tracked` entries.
    tats: KeyedTats<String>,
}

impl TokenRates {
    pub fn new(max_tracked: usize) -> TokenRates {
        TokenRates {
            tats: KeyedTats::new(max_tracked),
        }
    }

    /// Admits one request of `jti` at `rps` requests per second with
    /// `burst`, or says how long to wait.
    pub fn check(&self, jti: &str, rps: u64, burst: u64, now: Instant) -> Result<(), RetryAfter> {
        let gcra = Gcra::new(RateSpec {
            per_second: rps as f64,
            burst: u32::try_from(burst).unwrap_or(u32::MAX),
        });
        self.tats.check(jti, &gcra, now)
    }

    /// Tokens whose rate state is remembered.
    pub fn tracked(&self) -> usize {
        self.tats.tracked()
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
