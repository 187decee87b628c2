//! The usage store: counts how many calls each token (by `jti`) has been
//! admitted, so `max_calls` is enforced.
//!
//! Invariant: a token is admitted at most `max_calls` times in total, ever,
//! also under concurrency, and (for the durable backends) across restarts and
//! `kill -9`: a reservation is durable before `reserve_call` returns
//! `Admitted`. A call counts when admitted; there are no refunds. Tokens
//! without `max_calls` never reach the store (the caller skips it).
//!
//! Layout: `memory` (one process, lost on restart; tests and ephemeral
//! deployments), `sqlite` (embedded file, one relay process). Backends are
//! chosen by enum dispatch; all run the same conformance suite below.

pub mod memory;
pub mod sqlite;

use std::path::Path;

/// Longest `jti` accepted; longer ids are refused rather than stored.
pub const MAX_JTI_LEN: usize = 64;

/// The outcome of a reservation attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// This call was counted; `used` includes it.
    Admitted { used: u64, remaining: u64 },
    /// No calls left; nothing was counted.
    Exhausted { used: u64 },
}

/// Store errors. Messages never include token ids or other secrets.
#[derive(thiserror::Error, Debug)]
pub enum UsageError {
    #[error("usage store unavailable: {0}")]
    Unavailable(String),
    #[error("token id longer than {MAX_JTI_LEN} bytes")]
    InvalidJti,
}

/// Shared decision for every backend: given the count so far, admit or not,
/// and the count to store.
fn decide(used: u64, max_calls: u64) -> (Admission, Option<u64>) {
    if used < max_calls {
        let used = used + 1;
        (
            Admission::Admitted {
                used,
                remaining: max_calls - used,
            },
            Some(used),
        )
    } else {
        (Admission::Exhausted { used }, None)
    }
}

fn check_jti(jti: &str) -> Result<(), UsageError> {
    if jti.len() > MAX_JTI_LEN {
        Err(UsageError::InvalidJti)
    } else {
        Ok(())
    }
}

/// Current unix time in seconds (0 if the clock is before 1970).
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A usage store backend.
#[derive(Debug)]
pub enum UsageStore {
    Memory(memory::MemoryStore),
    Sqlite(sqlite::SqliteStore),
}

impl UsageStore {
    pub fn memory() -> Self {
        Self::Memory(memory::MemoryStore::new())
    }

    /// Opens (creating file and parent directory if missing) the embedded
    /// store. Blocking: call at startup.
    pub fn open_sqlite(path: &Path) -> Result<Self, UsageError> {
        Ok(Self::Sqlite(sqlite::SqliteStore::open(path)?))
    }

    /// Counts one call for `jti` if fewer than `max_calls` were admitted.
    /// `exp` (unix seconds) lets the store forget the token after it expires.
    pub async fn reserve_call(
        &self,
        jti: &str,
        max_calls: u64,
        exp: i64,
    ) -> Result<Admission, UsageError> {
        check_jti(jti)?;
        match self {
            Self::Memory(s) => Ok(s.reserve_call(jti, max_calls, exp)),
            Self::Sqlite(s) => s.reserve_call(jti, max_calls, exp).await,
        }
    }

    /// Calls admitted so far for `jti` (0 if never seen or forgotten).
    pub async fn calls_used(&self, jti: &str) -> Result<u64, UsageError> {
        check_jti(jti)?;
        match self {
            Self::Memory(s) => Ok(s.calls_used(jti)),
            Self::Sqlite(s) => s.calls_used(jti).await,
        }
    }

    /// Flushes and stops background work; called on graceful shutdown.
    /// Later reservations fail with `Unavailable`.
    pub async fn close(&self) -> Result<(), UsageError> {
        match self {
            Self::Memory(_) => Ok(()),
            Self::Sqlite(s) => s.close().await,
        }
    }
}

/// The conformance suite every backend must pass.
#[cfg(test)]
pub(crate) mod conformance {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::sync::Arc;

    const FAR_FUTURE: i64 = 4_000_000_000;

    pub async fn sequential_then_exhausted(store: UsageStore) {
        let k = 3;
        for i in 1..=k {
            assert_eq!(
                store.reserve_call("seq", k, FAR_FUTURE).await.unwrap(),
                Admission::Admitted {
                    used: i,
                    remaining: k - i
                }
            );
        }
        for _ in 0..3 {
            assert_eq!(
                store.reserve_call("seq", k, FAR_FUTURE).await.unwrap(),
                Admission::Exhausted { used: k }
            );
        }
        assert_eq!(store.calls_used("seq").await.unwrap(), k);
        assert_eq!(store.calls_used("never-seen").await.unwrap(), 0);
        // max_calls = 0 never admits and counts nothing.
        assert_eq!(
            store.reserve_call("zero", 0, FAR_FUTURE).await.unwrap(),
            Admission::Exhausted { used: 0 }
        );
        store.close().await.unwrap();
    }

    pub async fn concurrent_admits_exactly_max(store: UsageStore) {
        let store = Arc::new(store);
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let store = Arc::clone(&store);
                tokio::spawn(
                    async move { store.reserve_call("conc", 7, FAR_FUTURE).await.unwrap() },
                )
            })
            .collect();
        let mut admitted = 0;
        let mut seen_used = Vec::new();
        for t in tasks {
            if let Admission::Admitted { used, .. } = t.await.unwrap() {
                admitted += 1;
                seen_used.push(used);
            }
        }
        assert_eq!(admitted, 7);
        seen_used.sort_unstable();
        assert_eq!(seen_used, (1..=7).collect::<Vec<_>>());
        assert_eq!(store.calls_used("conc").await.unwrap(), 7);
        store.close().await.unwrap();
    }

    pub async fn distinct_jtis_are_independent(store: UsageStore) {
        assert!(matches!(
            store.reserve_call("a", 1, FAR_FUTURE).await.unwrap(),
            Admission::Admitted {
                used: 1,
                remaining: 0
            }
        ));
        assert!(matches!(
            store.reserve_call("a", 1, FAR_FUTURE).await.unwrap(),
            Admission::Exhausted { used: 1 }
        ));
        assert!(matches!(
            store.reserve_call("b", 2, FAR_FUTURE).await.unwrap(),
            Admission::Admitted {
                used: 1,
                remaining: 1
            }
        ));
        assert_eq!(store.calls_used("a").await.unwrap(), 1);
        assert_eq!(store.calls_used("b").await.unwrap(), 1);
        store.close().await.unwrap();
    }

    pub async fn rejects_overlong_jti(store: UsageStore) {
        let long = "x".repeat(MAX_JTI_LEN + 1);
        assert!(matches!(
            store.reserve_call(&long, 1, FAR_FUTURE).await,
            Err(UsageError::InvalidJti)
        ));
        let max = "x".repeat(MAX_JTI_LEN);
        assert!(store.reserve_call(&max, 1, FAR_FUTURE).await.is_ok());
        store.close().await.unwrap();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::conformance::*;
    use super::*;

    fn sqlite() -> (tempfile::TempDir, UsageStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = UsageStore::open_sqlite(&dir.path().join("sub/usage.db")).unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn memory_sequential_then_exhausted() {
        sequential_then_exhausted(UsageStore::memory()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_concurrent_admits_exactly_max() {
        concurrent_admits_exactly_max(UsageStore::memory()).await;
    }

    #[tokio::test]
    async fn memory_distinct_jtis_are_independent() {
        distinct_jtis_are_independent(UsageStore::memory()).await;
    }

    #[tokio::test]
    async fn memory_rejects_overlong_jti() {
        rejects_overlong_jti(UsageStore::memory()).await;
    }

    #[tokio::test]
    async fn sqlite_sequential_then_exhausted() {
        let (_dir, store) = sqlite();
        sequential_then_exhausted(store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_concurrent_admits_exactly_max() {
        let (_dir, store) = sqlite();
        concurrent_admits_exactly_max(store).await;
    }

    #[tokio::test]
    async fn sqlite_distinct_jtis_are_independent() {
        let (_dir, store) = sqlite();
        distinct_jtis_are_independent(store).await;
    }

    #[tokio::test]
    async fn sqlite_rejects_overlong_jti() {
        let (_dir, store) = sqlite();
        rejects_overlong_jti(store).await;
    }
}
