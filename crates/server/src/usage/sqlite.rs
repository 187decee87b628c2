//! Embedded usage store in a SQLite file, for a single relay process.
//!
//! Layout: one dedicated OS thread owns the connection. Requests arrive on a
//! bounded channel, each with a oneshot for its reply. The thread does group
//! commit: it waits for one request, takes whatever else is already queued
//! (up to `MAX_BATCH`), applies them all in one transaction and commits once.
//!
//! Invariants:
//! - A reply is sent only after the transaction holding its change has
//!   committed, so `Admitted` means durable. With WAL and
//!   `synchronous=NORMAL`, COMMIT has written the WAL frames with `write()`,
//!   so they survive `kill -9` of the process (the OS still has them); they
//!   would not necessarily survive power loss or an OS crash, which would
//!   need `synchronous=FULL` (an fsync per commit).
//! - Reservations are serialised by the single writer thread, and `cache`
//!   always equals the committed database for the jtis it holds, so checks
//!   are exact without a read per request. This assumes no other process
//!   writes the file: one relay per file (use Redis for several instances).
//!
//! Budgets, revocations and per-token usage statistics are further
//! operations of the same writer, in [`policy`]. Usage statistics are first
//! aggregated in memory ([`Pending`]) and written as one operation per
//! flush, so a request never waits on SQLite for them.

mod policy;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

use super::pending::Pending;
use super::{
    decide, unix_now, Admission, BudgetAdmission, SubReport, TokenReport, UsageDelta, UsageError,
};
use policy::{PolicyOp, PolicyOutcome};

/// Queue depth. When full, `reserve_call` awaits a free slot (backpressure
/// on the requests, never unbounded memory and never a dropped reservation).
const QUEUE_CAPACITY: usize = 4096;
/// Most requests applied in one transaction; bounds the latency of a batch.
const MAX_BATCH: usize = 1024;
/// Rows are kept this long after the token's `exp`, to absorb clock skew.
const EXPIRED_GRACE_SECS: i64 = 3600;
/// How often the writer deletes long-expired rows (checked after a batch).
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(600);
/// Above this many cached jtis the cache is dropped after a commit; it is
/// reloaded lazily from the database, so this only costs reads.
const MAX_CACHED: usize = 100_000;

enum Op {
    Reserve { max_calls: u64, exp: i64 },
    Used,
    Policy(PolicyOp),
}

enum Outcome {
    Admission(Admission),
    Used(u64),
    Policy(PolicyOutcome),
}

struct Request {
    jti: String,
    op: Op,
    reply: oneshot::Sender<Result<Outcome, UsageError>>,
}

enum Msg {
    Request(Request),
    /// Finish the queue, commit, close the connection, then reply.
    Close(oneshot::Sender<()>),
}

#[derive(Debug)]
pub struct SqliteStore {
    tx: mpsc::Sender<Msg>,
    /// The writer thread, taken by the first `close`.
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Usage statistics not written yet.
    pending: Pending,
    /// Mirror of `revoked_tokens` (jti -> revoked at), updated after commit.
    revoked: RwLock<HashMap<String, i64>>,
}

fn unavailable(context: &str, e: impl std::fmt::Display) -> UsageError {
    UsageError::Unavailable(format!("{context}: {e}"))
}

fn unexpected() -> UsageError {
    UsageError::Unavailable("unexpected reply".into())
}

fn closed() -> UsageError {
    UsageError::Unavailable("usage store closed".into())
}

impl SqliteStore {
    /// Opens the file (creating it and its parent directory), prepares the
    /// schema, deletes long-expired rows, and starts the writer thread.
    pub fn open(path: &Path) -> Result<Self, UsageError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| unavailable(&format!("creating {}", parent.display()), e))?;
        }
        let conn = Connection::open(path)
            .map_err(|e| unavailable(&format!("opening {}", path.display()), e))?;
        init(&conn).map_err(|e| unavailable(&format!("preparing {}", path.display()), e))?;
        let revoked = policy::init(&conn)
            .and_then(|()| policy::load_revoked(&conn))
            .map_err(|e| unavailable(&format!("preparing {}", path.display()), e))?;
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let writer = std::thread::Builder::new()
            .name("usage-sqlite".into())
            .spawn(move || Writer::new(conn).run(rx))
            .map_err(|e| unavailable("starting writer thread", e))?;
        Ok(Self {
            tx,
            writer: Mutex::new(Some(writer)),
            pending: Pending::new(super::MAX_PENDING_USAGE),
            revoked: RwLock::new(revoked),
        })
    }

    async fn request(&self, jti: &str, op: Op) -> Result<Outcome, UsageError> {
        let (reply, rx) = oneshot::channel();
        let req = Request {
            jti: jti.to_owned(),
            op,
            reply,
        };
        self.tx
            .send(Msg::Request(req))
            .await
            .map_err(|_| closed())?;
        // A dropped reply means the writer died mid-batch: nothing committed.
        rx.await.map_err(|_| closed())?
    }

    pub async fn reserve_call(
        &self,
        jti: &str,
        max_calls: u64,
        exp: i64,
    ) -> Result<Admission, UsageError> {
        match self.request(jti, Op::Reserve { max_calls, exp }).await? {
            Outcome::Admission(a) => Ok(a),
            _ => Err(UsageError::Unavailable("unexpected reply".into())),
        }
    }

    pub async fn calls_used(&self, jti: &str) -> Result<u64, UsageError> {
        match self.request(jti, Op::Used).await? {
            Outcome::Used(n) => Ok(n),
            _ => Err(UsageError::Unavailable("unexpected reply".into())),
        }
    }

    /// Makes the writer finish everything queued, commit and exit; waits for
    /// it without blocking the runtime. Idempotent.
    pub async fn close(&self) -> Result<(), UsageError> {
        // Statistics still in memory go in before the close (best effort:
        // a closed store has nothing to write them to).
        let _ = self.flush_usage().await;
        let (done, done_rx) = oneshot::channel();
        if self.tx.send(Msg::Close(done)).await.is_err() {
            return Ok(()); // already closed
        }
        // The writer replies as its very last step, so the join is immediate;
        // still do it off the runtime's threads.
        let _ = done_rx.await;
        let handle = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            tokio::task::spawn_blocking(move || handle.join())
                .await
                .map_err(|e| unavailable("joining writer", e))?
                .map_err(|_| UsageError::Unavailable("writer thread panicked".into()))?;
        }
        Ok(())
    }
}

/// Budgets, revocations and usage statistics (see [`policy`]).
impl SqliteStore {
    async fn policy(&self, jti: &str, op: PolicyOp) -> Result<PolicyOutcome, UsageError> {
        match self.request(jti, Op::Policy(op)).await? {
            Outcome::Policy(o) => Ok(o),
            _ => Err(unexpected()),
        }
    }

    pub async fn reserve_tokens(
        &self,
        jti: &str,
        budget: u64,
        amount: u64,
        exp: i64,
    ) -> Result<BudgetAdmission, UsageError> {
        let op = PolicyOp::ReserveTokens {
            budget,
            amount,
            exp,
        };
        match self.policy(jti, op).await? {
            PolicyOutcome::Budget(a) => Ok(a),
            _ => Err(unexpected()),
        }
    }

    /// Queues the settle without waiting for it (the finish hook is
    /// synchronous). Ordered after the reservation on the same queue. When
    /// the queue is full, a task waits for room; a settle lost because the
    /// store closed first leaves the reservation charged.
    pub fn settle_tokens(&self, jti: &str, reserved: u64, actual: u64) {
        let (reply, _) = oneshot::channel();
        let msg = Msg::Request(Request {
            jti: jti.to_owned(),
            op: Op::Policy(PolicyOp::SettleTokens { reserved, actual }),
            reply,
        });
        if let Err(mpsc::error::TrySendError::Full(msg)) = self.tx.try_send(msg) {
            let tx = self.tx.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = tx.send(msg).await;
                });
            }
        }
    }

    pub async fn tokens_used(&self, jti: &str) -> Result<u64, UsageError> {
        match self.policy(jti, PolicyOp::TokensUsed).await? {
            PolicyOutcome::Used(n) => Ok(n),
            _ => Err(unexpected()),
        }
    }

    /// Durable revocation; the in-memory mirror is updated after the commit.
    pub async fn revoke(&self, jti: &str) -> Result<i64, UsageError> {
        let op = PolicyOp::Revoke { now: unix_now() };
        match self.policy(jti, op).await? {
            PolicyOutcome::RevokedAt(at) => {
                self.revoked
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(jti.to_owned(), at);
                Ok(at)
            }
            _ => Err(unexpected()),
        }
    }

    pub fn is_revoked(&self, jti: &str) -> bool {
        let revoked = self.revoked.read().unwrap_or_else(|p| p.into_inner());
        !revoked.is_empty() && revoked.contains_key(jti)
    }

    pub fn record(&self, jti: &str, delta: UsageDelta) {
        self.pending.add(jti, delta);
    }

    pub fn pending_dropped(&self) -> u64 {
        self.pending.dropped()
    }

    /// Writes the pending statistics in one operation and waits for it.
    pub async fn flush_usage(&self) -> Result<(), UsageError> {
        let deltas = self.pending.take();
        if deltas.is_empty() {
            return Ok(());
        }
        self.policy("", PolicyOp::RecordUsage(deltas))
            .await
            .map(|_| ())
    }

    pub async fn token_report(&self, jti: &str) -> Result<TokenReport, UsageError> {
        self.flush_usage().await?;
        match self.policy(jti, PolicyOp::TokenReport).await? {
            PolicyOutcome::Token(r) => Ok(*r),
            _ => Err(unexpected()),
        }
    }

    pub async fn sub_report(&self, sub: Option<&str>) -> Result<Vec<SubReport>, UsageError> {
        self.flush_usage().await?;
        match self
            .policy("", PolicyOp::SubReport(sub.map(str::to_owned)))
            .await?
        {
            PolicyOutcome::Subs(r) => Ok(r),
            _ => Err(unexpected()),
        }
    }
}

fn init(conn: &Connection) -> rusqlite::Result<()> {
    // WAL: readers never block the writer and commits are appends.
    // NORMAL: no fsync per commit; see the module doc for what that covers.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // A reader in another process (backup, inspection) may briefly lock.
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS token_calls (
            jti TEXT PRIMARY KEY,
            used INTEGER NOT NULL,
            exp INTEGER NOT NULL
        ) WITHOUT ROWID;",
    )?;
    delete_expired(conn)?;
    Ok(())
}

fn delete_expired(conn: &Connection) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM token_calls WHERE exp < ?1",
        params![unix_now() - EXPIRED_GRACE_SECS],
    )
}

struct Writer {
    conn: Connection,
    /// jti -> (used, exp), equal to the committed rows for these jtis (or to
    /// "no row" when used is 0). Cleared whenever that may not hold.
    cache: HashMap<String, (u64, i64)>,
    last_housekeeping: Instant,
}

impl Writer {
    fn new(conn: Connection) -> Self {
        Self {
            conn,
            cache: HashMap::new(),
            last_housekeeping: Instant::now(),
        }
    }

    fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut closing: Vec<oneshot::Sender<()>> = Vec::new();
        // `None` from blocking_recv: every sender is gone (store dropped
        // without close) or the channel was closed and fully drained.
        while let Some(first) = rx.blocking_recv() {
            let mut batch = Vec::with_capacity(64);
            let mut push = |msg: Msg, batch: &mut Vec<Request>| match msg {
                Msg::Request(r) => batch.push(r),
                Msg::Close(done) => closing.push(done),
            };
            push(first, &mut batch);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(msg) => push(msg, &mut batch),
                    Err(_) => break,
                }
            }
            self.apply_batch(batch);
            if !closing.is_empty() {
                // Refuse new sends but keep what is already queued: the loop
                // drains it and ends when the queue is empty.
                rx.close();
            }
            if self.last_housekeeping.elapsed() >= HOUSEKEEPING_EVERY {
                self.housekeeping();
            }
        }
        if let Err((_, e)) = self.conn.close() {
            tracing::warn!(error = %e, "closing usage database");
        }
        for done in closing {
            let _ = done.send(());
        }
    }

    fn apply_batch(&mut self, batch: Vec<Request>) {
        if batch.is_empty() {
            return;
        }
        match self.apply(&batch) {
            Ok(outcomes) => {
                for (req, outcome) in batch.into_iter().zip(outcomes) {
                    // The caller may have gone away; its call still counts.
                    let _ = req.reply.send(Ok(outcome));
                }
                if self.cache.len() > MAX_CACHED {
                    self.cache.clear();
                }
            }
            Err(e) => {
                tracing::error!(error = %e, batch = batch.len(), "usage batch failed");
                let _ = self.conn.execute_batch("ROLLBACK");
                // The cache holds uncommitted increments: reload lazily.
                self.cache.clear();
                for req in batch {
                    let _ = req.reply.send(Err(unavailable("usage write failed", &e)));
                }
            }
        }
    }

    /// Applies the batch in one transaction and commits. On error the caller
    /// rolls back; no reply has been sent yet.
    fn apply(&mut self, batch: &[Request]) -> rusqlite::Result<Vec<Outcome>> {
        // IMMEDIATE takes the write lock up front, so COMMIT cannot fail with
        // a lock upgrade conflict after we decided.
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let mut outcomes = Vec::with_capacity(batch.len());
        for req in batch {
            if let Op::Policy(op) = &req.op {
                outcomes.push(Outcome::Policy(policy::apply(&self.conn, &req.jti, op)?));
                continue;
            }
            let (used, stored_exp) = self.load(&req.jti)?;
            let outcome = match req.op {
                // Handled above, without loading the call count.
                Op::Policy(_) => continue,
                Op::Used => Outcome::Used(used),
                Op::Reserve { max_calls, exp } => {
                    let (admission, new_used) = decide(used, max_calls);
                    if let Some(n) = new_used {
                        let exp = exp.max(stored_exp);
                        self.conn
                            .prepare_cached(
                                "INSERT INTO token_calls (jti, used, exp) VALUES (?1, ?2, ?3)
                                 ON CONFLICT (jti) DO UPDATE SET used = excluded.used, exp = excluded.exp",
                            )?
                            .execute(params![req.jti, i64::try_from(n).unwrap_or(i64::MAX), exp])?;
                        self.cache.insert(req.jti.clone(), (n, exp));
                    }
                    Outcome::Admission(admission)
                }
            };
            outcomes.push(outcome);
        }
        self.conn.execute_batch("COMMIT")?;
        Ok(outcomes)
    }

    /// Count and exp for `jti`, from the cache or the database.
    fn load(&mut self, jti: &str) -> rusqlite::Result<(u64, i64)> {
        if let Some(&entry) = self.cache.get(jti) {
            return Ok(entry);
        }
        let row: Option<(i64, i64)> = self
            .conn
            .prepare_cached("SELECT used, exp FROM token_calls WHERE jti = ?1")?
            .query_row(params![jti], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let entry = row.map_or((0, i64::MIN), |(used, exp)| {
            (u64::try_from(used).unwrap_or(0), exp)
        });
        self.cache.insert(jti.to_owned(), entry);
        Ok(entry)
    }

    fn housekeeping(&mut self) {
        self.last_housekeeping = Instant::now();
        let cutoff = unix_now() - EXPIRED_GRACE_SECS;
        if let Err(e) = policy::housekeeping(&self.conn) {
            tracing::warn!(error = %e, "usage housekeeping (budgets, statistics) failed");
        }
        match delete_expired(&self.conn) {
            Ok(n) => {
                tracing::debug!(deleted = n, "usage housekeeping");
                self.cache.retain(|_, (_, exp)| *exp >= cutoff);
            }
            Err(e) => tracing::warn!(error = %e, "usage housekeeping failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::super::UsageStore;
    use super::*;
    use std::sync::Arc;

    const FAR_FUTURE: i64 = 4_000_000_000;

    fn count_from_second_connection(path: &Path, jti: &str) -> i64 {
        let conn = Connection::open(path).unwrap();
        conn.query_row(
            "SELECT used FROM token_calls WHERE jti = ?1",
            params![jti],
            |r| r.get(0),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn counters_survive_close_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.db");
        let store = UsageStore::open_sqlite(&path).unwrap();
        for _ in 0..2 {
            store.reserve_call("t", 3, FAR_FUTURE).await.unwrap();
        }
        store.close().await.unwrap();
        store.close().await.unwrap(); // idempotent
        assert!(store.reserve_call("t", 3, FAR_FUTURE).await.is_err());

        let store = UsageStore::open_sqlite(&path).unwrap();
        assert_eq!(store.calls_used("t").await.unwrap(), 2);
        assert_eq!(
            store.reserve_call("t", 3, FAR_FUTURE).await.unwrap(),
            Admission::Admitted {
                used: 3,
                remaining: 0
            }
        );
        assert_eq!(
            store.reserve_call("t", 3, FAR_FUTURE).await.unwrap(),
            Admission::Exhausted { used: 3 }
        );
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn admitted_is_committed_before_reply() {
        // Stand-in for kill -9: while the store is still running (nothing
        // flushed by close), another connection must already see every
        // admitted call, i.e. it was committed before reserve_call returned.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.db");
        let store = UsageStore::open_sqlite(&path).unwrap();
        for i in 1..=5 {
            store.reserve_call("crash", 10, FAR_FUTURE).await.unwrap();
            assert_eq!(count_from_second_connection(&path, "crash"), i);
        }
        // Dropped without close: reopening still sees all of them.
        drop(store);
        let store = UsageStore::open_sqlite(&path).unwrap();
        assert_eq!(store.calls_used("crash").await.unwrap(), 5);
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn long_expired_rows_are_deleted_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.db");
        let store = UsageStore::open_sqlite(&path).unwrap();
        let now = unix_now();
        store
            .reserve_call("old", 5, now - 2 * EXPIRED_GRACE_SECS)
            .await
            .unwrap();
        store.reserve_call("recent", 5, now - 10).await.unwrap();
        store.close().await.unwrap();
        let store = UsageStore::open_sqlite(&path).unwrap();
        assert_eq!(store.calls_used("old").await.unwrap(), 0);
        assert_eq!(store.calls_used("recent").await.unwrap(), 1);
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn open_creates_parent_directories() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/usage.db");
        let store = UsageStore::open_sqlite(&path).unwrap();
        store.close().await.unwrap();
        assert!(path.exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn throughput_sanity_10k_concurrent_reservations() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(UsageStore::open_sqlite(&dir.path().join("usage.db")).unwrap());
        let n = 10_000u64;
        let start = Instant::now();
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    store
                        .reserve_call(&format!("jti-{}", i % 500), 15, FAR_FUTURE)
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut admitted = 0u64;
        for t in tasks {
            if matches!(t.await.unwrap(), Admission::Admitted { .. }) {
                admitted += 1;
            }
        }
        let elapsed = start.elapsed();
        // 500 jtis x 15 allowed calls each, 20 attempts per jti.
        assert_eq!(admitted, 500 * 15);
        println!(
            "sqlite: {n} concurrent reservations in {elapsed:?} = {:.0}/s",
            n as f64 / elapsed.as_secs_f64()
        );
        store.close().await.unwrap();
    }
}
