//! The usage store: what the relay must remember about tokens between
//! requests and across restarts.
//!
//! * **`max_calls`** — calls admitted per token (by `jti`). Invariant: a
//!   token is admitted at most `max_calls` times in total, ever, also under
//!   concurrency, and (for the durable backends) across restarts and
//!   `kill -9`: a reservation is durable before `reserve_call` returns
//!   `Admitted`. A call counts when admitted; there are no refunds. Tokens
//!   without `max_calls` never reach this part (the caller skips it).
//! * **`max_tokens` budgets** — reserve-then-settle: [`UsageStore::reserve_tokens`]
//!   adds a reservation to the token's used count only if the result stays
//!   within the budget (atomically, durable before it returns), and
//!   [`UsageStore::settle_tokens`] later replaces that reservation with the
//!   real usage. The stored count always includes outstanding reservations,
//!   so a relay that dies mid-call leaves the reservation charged (never an
//!   undercount).
//! * **Revocations** — durable, and mirrored in memory so the request path
//!   checks them without I/O ([`UsageStore::is_revoked`]).
//! * **Per-token usage** (calls, LLM tokens, first/last use, `sub`) for the
//!   admin API — recorded for every token with a `jti`, in memory first
//!   ([`UsageStore::record_use`], no I/O on the request path) and written in
//!   batches by [`UsageStore::flush_usage`] (a background nudge every second
//!   and on close).
//!
//! Layout: `memory` (one process, lost on restart; tests and ephemeral
//! deployments), `sqlite` (embedded file, one relay process). Backends are
//! chosen by enum dispatch; all run the same conformance suite below.

pub mod memory;
pub mod pending;
pub mod sqlite;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

pub use pending::UsageDelta;

/// Longest `jti` accepted; longer ids are refused rather than stored (no
/// token carries one: the token format has the same bound).
pub use relayapi_token::MAX_JTI_LEN;

/// Usage statistics are kept this long after the token's `exp` (30 days).
pub const USAGE_RETENTION_SECS: i64 = 30 * 24 * 3600;

/// Most distinct tokens whose statistics wait in memory between flushes.
pub const MAX_PENDING_USAGE: usize = 100_000;

/// The outcome of a reservation attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// This call was counted; `used` includes it.
    Admitted { used: u64, remaining: u64 },
    /// No calls left; nothing was counted.
    Exhausted { used: u64 },
}

/// The outcome of a token-budget reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetAdmission {
    /// Reserved; `used` includes this reservation (and every outstanding one).
    Admitted { used: u64, remaining: u64 },
    /// The reservation does not fit; nothing was reserved.
    Exhausted { used: u64 },
}

/// Shared budget decision: reserve `amount` if `used + amount <= budget`.
fn decide_budget(used: u64, budget: u64, amount: u64) -> (BudgetAdmission, Option<u64>) {
    match used.checked_add(amount) {
        Some(new) if new <= budget => (
            BudgetAdmission::Admitted {
                used: new,
                remaining: budget - new,
            },
            Some(new),
        ),
        _ => (BudgetAdmission::Exhausted { used }, None),
    }
}

/// Shared settle rule: the reservation is replaced by the actual usage.
fn settled(used: u64, reserved: u64, actual: u64) -> u64 {
    used.saturating_sub(reserved).saturating_add(actual)
}

/// What the admin API reports about one token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TokenReport {
    pub jti: String,
    /// The `sub` of the token, as last seen.
    pub sub: Option<String>,
    /// Requests that passed every check and were sent to the provider.
    pub calls: u64,
    /// LLM tokens (prompt + completion) reported by the provider.
    pub llm_tokens: u64,
    /// Unix seconds of the first and last relayed call.
    pub first_use: Option<i64>,
    pub last_use: Option<i64>,
    /// Calls counted against `max_calls` (0 for tokens without it).
    pub max_calls_used: u64,
    /// Budget used including outstanding reservations (tokens with `max_tokens`).
    pub budget_used: Option<u64>,
    pub revoked: bool,
    /// Unix seconds of the revocation.
    pub revoked_at: Option<i64>,
}

/// Totals for one end user (`sub`) over every token minted for them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SubReport {
    pub sub: String,
    /// Distinct tokens (jtis) seen.
    pub tokens: u64,
    pub calls: u64,
    pub llm_tokens: u64,
    pub first_use: Option<i64>,
    pub last_use: Option<i64>,
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

/// Whether the durable store's writes are failing, for `/health`: set by a
/// failed batch, cleared by the next one that commits. Messages hold no
/// token ids (see [`UsageError`]).
#[derive(Debug, Default)]
pub struct StoreHealth {
    failing: AtomicBool,
    failures: AtomicU64,
    last_error_at: AtomicI64,
    last_error: Mutex<Option<String>>,
}

impl StoreHealth {
    pub(crate) fn failed(&self, error: &UsageError) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.last_error_at.store(unix_now(), Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error.to_string());
        self.failing.store(true, Ordering::Relaxed);
    }

    /// One relaxed load on the hot path while healthy.
    pub(crate) fn succeeded(&self) {
        if self.failing.load(Ordering::Relaxed) {
            self.failing.store(false, Ordering::Relaxed);
        }
    }

    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }
}

/// A usage store backend.
#[derive(Debug)]
pub enum UsageStore {
    Memory(memory::MemoryStore),
    Sqlite(Box<sqlite::SqliteStore>),
}

impl UsageStore {
    pub fn memory() -> Self {
        Self::Memory(memory::MemoryStore::new())
    }

    /// Opens (creating file and parent directory if missing) the embedded
    /// store. Blocking: call at startup.
    pub fn open_sqlite(path: &Path) -> Result<Self, UsageError> {
        Ok(Self::Sqlite(Box::new(sqlite::SqliteStore::open(path)?)))
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

    /// Reserves `amount` LLM tokens of `budget` for `jti` if they fit.
    pub async fn reserve_tokens(
        &self,
        jti: &str,
        budget: u64,
        amount: u64,
        exp: i64,
    ) -> Result<BudgetAdmission, UsageError> {
        check_jti(jti)?;
        match self {
            Self::Memory(s) => Ok(s.reserve_tokens(jti, budget, amount, exp)),
            Self::Sqlite(s) => s.reserve_tokens(jti, budget, amount, exp).await,
        }
    }

    /// Replaces a reservation of `reserved` tokens by the `actual` usage.
    /// Synchronous and non-blocking (it runs in the response's finish hook);
    /// the durable backend applies it in order after the reservation.
    pub fn settle_tokens(&self, jti: &str, reserved: u64, actual: u64) {
        if check_jti(jti).is_err() {
            return;
        }
        match self {
            Self::Memory(s) => {
                s.settle_tokens(jti, reserved, actual);
            }
            Self::Sqlite(s) => s.settle_tokens(jti, reserved, actual),
        }
    }

    /// LLM tokens used by `jti`, outstanding reservations included.
    pub async fn tokens_used(&self, jti: &str) -> Result<u64, UsageError> {
        check_jti(jti)?;
        match self {
            Self::Memory(s) => Ok(s.tokens_used(jti)),
            Self::Sqlite(s) => s.tokens_used(jti).await,
        }
    }

    /// Revokes `jti` durably; returns when it was (first) revoked.
    pub async fn revoke(&self, jti: &str) -> Result<i64, UsageError> {
        check_jti(jti)?;
        match self {
            Self::Memory(s) => Ok(s.revoke(jti, unix_now())),
            Self::Sqlite(s) => s.revoke(jti).await,
        }
    }

    /// In-memory check, no I/O: is `jti` revoked?
    pub fn is_revoked(&self, jti: &str) -> bool {
        match self {
            Self::Memory(s) => s.is_revoked(jti),
            Self::Sqlite(s) => s.is_revoked(jti),
        }
    }

    /// Records a relayed call (`calls`) and/or LLM tokens for `jti`'s
    /// statistics. No I/O: the durable backend writes on [`flush_usage`](Self::flush_usage).
    pub fn record_use(&self, jti: &str, delta: UsageDelta) {
        if check_jti(jti).is_err() {
            return;
        }
        match self {
            Self::Memory(s) => s.record(jti, &delta),
            Self::Sqlite(s) => s.record(jti, delta),
        }
    }

    /// Writes the statistics recorded so far (durable backend).
    pub async fn flush_usage(&self) -> Result<(), UsageError> {
        match self {
            Self::Memory(_) => Ok(()),
            Self::Sqlite(s) => s.flush_usage().await,
        }
    }

    /// Statistics dropped because too many distinct tokens were waiting.
    pub fn usage_dropped(&self) -> u64 {
        match self {
            Self::Memory(_) => 0,
            Self::Sqlite(s) => s.pending_dropped(),
        }
    }

    /// True while the latest write to the durable store failed (calls that
    /// need the store are refused with 503 until one succeeds).
    pub fn is_failing(&self) -> bool {
        match self {
            Self::Memory(_) => false,
            Self::Sqlite(s) => s.health().is_failing(),
        }
    }

    /// The store's part of `/health`.
    pub fn health_report(&self) -> serde_json::Value {
        let (store, health) = match self {
            Self::Memory(_) => ("memory", None),
            Self::Sqlite(s) => ("sqlite", Some(s.health())),
        };
        let mut report = serde_json::json!({
            "store": store,
            "status": if self.is_failing() { "failing" } else { "ok" },
            "write_errors": health.map_or(0, |h| h.failures.load(Ordering::Relaxed)),
            "stats_dropped": self.usage_dropped(),
        });
        if let Some(h) = health {
            if let Some(e) = h
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
            {
                report["last_error"] = e.as_str().into();
                report["last_error_at"] = h.last_error_at.load(Ordering::Relaxed).into();
            }
        }
        report
    }

    /// Everything the store knows about `jti`.
    pub async fn token_report(&self, jti: &str) -> Result<TokenReport, UsageError> {
        check_jti(jti)?;
        match self {
            Self::Memory(s) => Ok(s.token_report(jti)),
            Self::Sqlite(s) => s.token_report(jti).await,
        }
    }

    /// Totals per end user (`sub`), or for one.
    pub async fn sub_report(&self, sub: Option<&str>) -> Result<Vec<SubReport>, UsageError> {
        match self {
            Self::Memory(s) => Ok(s.sub_report(sub)),
            Self::Sqlite(s) => s.sub_report(sub).await,
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

    pub async fn budget_reserve_then_settle(store: UsageStore) {
        let ok = |used, remaining| BudgetAdmission::Admitted { used, remaining };
        for i in 1..=3 {
            assert_eq!(
                store
                    .reserve_tokens("b", 1000, 300, FAR_FUTURE)
                    .await
                    .unwrap(),
                ok(300 * i, 1000 - 300 * i)
            );
        }
        // 900 + 300 does not fit: refused, nothing reserved.
        assert_eq!(
            store
                .reserve_tokens("b", 1000, 300, FAR_FUTURE)
                .await
                .unwrap(),
            BudgetAdmission::Exhausted { used: 900 }
        );
        // A call that reserved 300 used 40: 640 used, 300 fits again.
        store.settle_tokens("b", 300, 40);
        assert_eq!(store.tokens_used("b").await.unwrap(), 640);
        assert_eq!(
            store
                .reserve_tokens("b", 1000, 300, FAR_FUTURE)
                .await
                .unwrap(),
            ok(940, 60)
        );
        // Settling above the reservation is charged in full (may pass the budget).
        store.settle_tokens("b", 300, 500);
        assert_eq!(store.tokens_used("b").await.unwrap(), 1140);
        assert_eq!(
            store
                .reserve_tokens("b", 1000, 1, FAR_FUTURE)
                .await
                .unwrap(),
            BudgetAdmission::Exhausted { used: 1140 }
        );
        assert_eq!(store.tokens_used("never").await.unwrap(), 0);
        // A reservation larger than the whole budget never fits.
        assert_eq!(
            store
                .reserve_tokens("big", 10, 11, FAR_FUTURE)
                .await
                .unwrap(),
            BudgetAdmission::Exhausted { used: 0 }
        );
        store.close().await.unwrap();
    }

    pub async fn budget_concurrent_reserves_exactly(store: UsageStore) {
        let store = Arc::new(store);
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    store
                        .reserve_tokens("cb", 1000, 100, FAR_FUTURE)
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut admitted = 0;
        for t in tasks {
            if matches!(t.await.unwrap(), BudgetAdmission::Admitted { .. }) {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 10);
        assert_eq!(store.tokens_used("cb").await.unwrap(), 1000);
        store.close().await.unwrap();
    }

    pub async fn revocations_are_remembered(store: UsageStore) {
        assert!(!store.is_revoked("r1"));
        let at = store.revoke("r1").await.unwrap();
        assert!(store.is_revoked("r1"));
        assert!(!store.is_revoked("r2"));
        // Revoking again keeps the first time.
        assert_eq!(store.revoke("r1").await.unwrap(), at);
        let report = store.token_report("r1").await.unwrap();
        assert!(report.revoked);
        assert_eq!(report.revoked_at, Some(at));
        store.close().await.unwrap();
    }

    pub async fn usage_is_reported_per_token_and_sub(store: UsageStore) {
        let delta = |sub: &str, calls, tokens, t| UsageDelta {
            sub: Some(sub.to_owned()),
            calls,
            llm_tokens: tokens,
            first_use: t,
            last_use: t,
            exp: FAR_FUTURE,
        };
        store.record_use("u1", delta("alice", 1, 0, 100));
        store.record_use("u1", delta("alice", 0, 42, 105));
        store.record_use("u1", delta("alice", 1, 8, 110));
        store.record_use("u2", delta("alice", 1, 5, 90));
        store.record_use("u3", delta("bob", 2, 7, 200));
        let r = store.token_report("u1").await.unwrap();
        assert_eq!((r.calls, r.llm_tokens), (2, 50));
        assert_eq!((r.first_use, r.last_use), (Some(100), Some(110)));
        assert_eq!(r.sub.as_deref(), Some("alice"));
        assert!(!r.revoked);
        // Flushed in between: the totals keep adding up.
        store.flush_usage().await.unwrap();
        store.record_use("u1", delta("alice", 1, 1, 120));
        let alice = store.sub_report(Some("alice")).await.unwrap();
        assert_eq!(
            alice,
            vec![SubReport {
                sub: "alice".into(),
                tokens: 2,
                calls: 4,
                llm_tokens: 56,
                first_use: Some(90),
                last_use: Some(120),
            }]
        );
        let all = store.sub_report(None).await.unwrap();
        assert_eq!(
            all.iter().map(|r| r.sub.as_str()).collect::<Vec<_>>(),
            ["alice", "bob"]
        );
        assert!(store.sub_report(Some("nobody")).await.unwrap().is_empty());
        let unseen = store.token_report("unseen").await.unwrap();
        assert_eq!((unseen.calls, unseen.first_use), (0, None));
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
    async fn memory_budget_reserve_then_settle() {
        budget_reserve_then_settle(UsageStore::memory()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_budget_concurrent_reserves_exactly() {
        budget_concurrent_reserves_exactly(UsageStore::memory()).await;
    }

    #[tokio::test]
    async fn memory_revocations_are_remembered() {
        revocations_are_remembered(UsageStore::memory()).await;
    }

    #[tokio::test]
    async fn memory_usage_is_reported_per_token_and_sub() {
        usage_is_reported_per_token_and_sub(UsageStore::memory()).await;
    }

    #[tokio::test]
    async fn sqlite_budget_reserve_then_settle() {
        let (_dir, store) = sqlite();
        budget_reserve_then_settle(store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_budget_concurrent_reserves_exactly() {
        let (_dir, store) = sqlite();
        budget_concurrent_reserves_exactly(store).await;
    }

    #[tokio::test]
    async fn sqlite_revocations_are_remembered() {
        let (_dir, store) = sqlite();
        revocations_are_remembered(store).await;
    }

    #[tokio::test]
    async fn sqlite_usage_is_reported_per_token_and_sub() {
        let (_dir, store) = sqlite();
        usage_is_reported_per_token_and_sub(store).await;
    }

    #[tokio::test]
    async fn sqlite_budget_revocations_and_usage_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.db");
        let store = UsageStore::open_sqlite(&path).unwrap();
        store
            .reserve_tokens("t", 100, 60, 4_000_000_000)
            .await
            .unwrap();
        store.settle_tokens("t", 60, 25);
        let at = store.revoke("gone").await.unwrap();
        store.record_use(
            "t",
            UsageDelta {
                sub: Some("carol".into()),
                calls: 1,
                llm_tokens: 25,
                first_use: 7,
                last_use: 7,
                exp: 4_000_000_000,
            },
        );
        // close() writes the pending statistics and the queued settle.
        store.close().await.unwrap();
        let store = UsageStore::open_sqlite(&path).unwrap();
        assert_eq!(store.tokens_used("t").await.unwrap(), 25);
        assert!(store.is_revoked("gone"));
        assert_eq!(
            store.token_report("gone").await.unwrap().revoked_at,
            Some(at)
        );
        let r = store.token_report("t").await.unwrap();
        assert_eq!(
            (r.calls, r.llm_tokens, r.sub.as_deref()),
            (1, 25, Some("carol"))
        );
        assert_eq!(r.budget_used, Some(25));
        store.close().await.unwrap();
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
