//! Embedded usage store in a SQLite file, for a single relay process.
//!
//! Layout: one connection behind a lock, and one queue per server worker
//! thread (`crate::server::worker_index`). Group commit without a thread
//! hop: a request that finds no leader in its thread's queue becomes the
//! *leader*; requests arriving while there is one queue up behind it as
//! followers. The leader first yields once (so the requests that are ready
//! on its thread join the queue), takes the queue (up to `MAX_BATCH`),
//! locks the connection, applies everything in one transaction, commits
//! once, answers every follower and hands leadership to the next waiting
//! request, if any. Everything stays on one thread: followers are woken as
//! local tasks, and the commit is a short synchronous `write()` of WAL
//! frames on the leader's thread. That is much cheaper than what an owning
//! writer thread cost: two cross-thread wake-ups per batch, which made
//! every reservation add ≈ 0.4 context switches and ≈ 14 µs of CPU. Several
//! reservations for the same token in one batch are one row write.
//!
//! Invariants:
//! - A reply is sent only after the transaction holding its change has
//!   committed, so `Admitted` means durable. With WAL and
//!   `synchronous=NORMAL`, COMMIT has written the WAL frames with `write()`,
//!   so they survive `kill -9` of the process (the OS still has them); they
//!   would not necessarily survive power loss or an OS crash, which would
//!   need `synchronous=FULL` (an fsync per commit).
//! - Reservations are serialised by the connection's lock (only leaders
//!   take it, each for one whole transaction), and `cache` always
//!   equals the committed database for the jtis it holds, so checks are
//!   exact without a read per request. This assumes no other process
//!   writes the file: one relay per file (use Redis for several instances).
//!   The connection holds the file in SQLite's exclusive locking mode: no
//!   other process can even read it while the store is open, and a commit
//!   makes no file-lock system calls (with shared locking, three `fcntl`s
//!   per transaction were most of the store's cost).
//! - A waiting request always gets an answer or leadership: a leader that
//!   is cancelled (its client went away) before it committed hands
//!   leadership on as it is dropped. A request cancelled before its batch
//!   committed is simply not counted — it was never admitted.
//! - The queue needs no bound of its own: every entry is one request
//!   waiting for its own answer, so it is bounded by the requests in flight.
//!
//! Budgets, revocations and per-token usage statistics are further
//! operations of the same batches, in [`policy`]. Usage statistics are first
//! aggregated in memory ([`Pending`]) and written as one operation per
//! flush, so a request never waits on SQLite for them. A budget *settle*
//! comes from the response's (synchronous) finish hook and waits for
//! nobody: it is parked in `deferred` and applied at the start of the next
//! batch — the next reservation of any token, or the once-a-second usage
//! flush — after the reservation it settles, which committed before the
//! call was forwarded.

mod policy;

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{oneshot, Notify};

use super::pending::Pending;
use super::{
    decide, unix_now, Admission, BudgetAdmission, SubReport, TokenReport, UsageDelta, UsageError,
};
use policy::{PolicyOp, PolicyOutcome};

/// Most requests applied in one transaction; bounds the latency of a batch.
const MAX_BATCH: usize = 1024;
/// Rows are kept this long after the token's `exp`, to absorb clock skew.
const EXPIRED_GRACE_SECS: i64 = 3600;
/// How often a leader deletes long-expired rows (checked after a batch).
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(600);
/// Above this many cached jtis the cache is dropped after a commit; it is
/// reloaded lazily from the database, so this only costs reads.
const MAX_CACHED: usize = 100_000;
/// How long opening waits for another process that has the file open
/// (a `sqlite3` shell) before it fails. Once open, the store holds the
/// file exclusively, so batches never wait for a lock.
const BUSY_TIMEOUT: Duration = Duration::from_millis(250);

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

/// One request's work.
struct Job {
    jti: Box<str>,
    op: Op,
}

/// What a follower is woken with.
enum Reply {
    Done(Result<Outcome, UsageError>),
    /// You lead now; here is your job back (it was not applied).
    Lead(Job),
}

struct Waiting {
    job: Job,
    reply: oneshot::Sender<Reply>,
}

#[derive(Default)]
struct Queue {
    /// Followers in arrival order. Non-empty only while `leading`.
    waiting: VecDeque<Waiting>,
    /// Some request is the leader.
    leading: bool,
    /// `close` was called: no new requests.
    closed: bool,
}

pub struct SqliteStore {
    /// One queue per worker thread (threads share one when there are more).
    queues: Box<[Mutex<Queue>]>,
    /// The connection and its cache; locked by a leader for one batch (and
    /// by `close` once there is none). `None` once closed.
    writer: Mutex<Option<Writer>>,
    /// Signalled when a leader steps down with nobody to hand over to.
    idle: Notify,
    /// Budget settles waiting for the next batch (see the module doc).
    deferred: Mutex<Vec<Job>>,
    /// Usage statistics not written yet.
    pending: Pending,
    /// Mirror of `revoked_tokens` (jti -> revoked at), updated after commit.
    revoked: RwLock<HashMap<String, i64>>,
    /// Whether the latest batch failed, for `/health`.
    health: super::StoreHealth,
    /// `<path>.lock`, exclusively locked while the store is open: the cache
    /// is exact only if no other process writes the file.
    process_lock: Mutex<Option<std::fs::File>>,
}

/// How long opening waits for another holder of `<path>.lock` to let go.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Takes `<path>.lock` (an `flock`, released when the process dies), or
/// refuses: a second relay on the same file would admit tokens past
/// `max_calls` and miss revocations. A side file, not the database itself:
/// closing any other descriptor of the database would drop SQLite's own
/// POSIX locks.
fn lock_for_this_process(path: &Path) -> Result<std::fs::File, UsageError> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = std::path::PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| unavailable(&format!("creating {}", lock_path.display()), e))?;
    // A lock held only for a moment is waited out: a process of ours that
    // forks (spawning a child) shares the descriptor until the child's
    // exec closes it, and a relay restarted at once may start before the
    // old one's exit released it. A second relay still running is refused.
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    let mut result = file.try_lock();
    while matches!(result, Err(std::fs::TryLockError::WouldBlock))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
        result = file.try_lock();
    }
    match result {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(UsageError::Unavailable(format!(
            "{} is in use by another relayapi process (it holds {}); one process per usage file: give this relay its own usage.path, or stop the other one first",
            path.display(),
            lock_path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(unavailable(&format!("locking {}", lock_path.display()), e))
        }
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

fn unavailable(context: &str, e: impl std::fmt::Display) -> UsageError {
    UsageError::Unavailable(format!("{context}: {e}"))
}

fn closed() -> UsageError {
    UsageError::Unavailable("usage store closed".into())
}

fn unexpected() -> UsageError {
    UsageError::Unavailable("unexpected reply".into())
}

/// A poisoned lock: the holder panicked between two whole updates (queue
/// operations are single pushes/pops; the writer clears its cache on any
/// failed batch), so the data is still consistent.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SqliteStore {
    /// Opens the file (creating it and its parent directory), prepares the
    /// schema and deletes long-expired rows.
    pub fn open(path: &Path) -> Result<Self, UsageError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| unavailable(&format!("creating {}", parent.display()), e))?;
        }
        let process_lock = lock_for_this_process(path)?;
        let conn = Connection::open(path)
            .map_err(|e| unavailable(&format!("opening {}", path.display()), e))?;
        init(&conn).map_err(|e| unavailable(&format!("preparing {}", path.display()), e))?;
        let revoked = policy::init(&conn)
            .and_then(|()| policy::load_revoked(&conn))
            .map_err(|e| unavailable(&format!("preparing {}", path.display()), e))?;
        Ok(Self {
            queues: (0..crate::server::worker_count())
                .map(|_| Mutex::new(Queue::default()))
                .collect(),
            writer: Mutex::new(Some(Writer::new(conn))),
            process_lock: Mutex::new(Some(process_lock)),
            idle: Notify::new(),
            deferred: Mutex::new(Vec::new()),
            pending: Pending::new(super::MAX_PENDING_USAGE),
            revoked: RwLock::new(revoked),
            health: super::StoreHealth::default(),
        })
    }

    pub(super) fn health(&self) -> &super::StoreHealth {
        &self.health
    }

    /// The calling thread's queue.
    fn queue(&self) -> usize {
        crate::server::worker_index() % self.queues.len()
    }

    async fn request(&self, jti: &str, op: Op) -> Result<Outcome, UsageError> {
        let job = Job {
            jti: jti.into(),
            op,
        };
        let queue = self.queue();
        let waiting = {
            let mut q = lock(&self.queues[queue]);
            if q.closed {
                return Err(closed());
            }
            if q.leading {
                let (reply, rx) = oneshot::channel();
                q.waiting.push_back(Waiting { job, reply });
                Err(rx)
            } else {
                q.leading = true;
                Ok(job)
            }
        };
        match waiting {
            Ok(job) => self.lead(queue, job).await,
            Err(rx) => {
                let mut follower = Follower {
                    store: self,
                    queue,
                    rx: Some(rx),
                };
                match follower.wait().await {
                    Some(Reply::Done(result)) => result,
                    Some(Reply::Lead(job)) => self.lead(queue, job).await,
                    // The leader dropped our entry without an answer: only
                    // a panic does that; nothing of ours was committed.
                    None => Err(closed()),
                }
            }
        }
    }

    /// Runs one batch as the leader, then hands leadership on. Its only
    /// await is the first yield; from then on it runs to the end.
    async fn lead(&self, queue: usize, mine: Job) -> Result<Outcome, UsageError> {
        let leadership = Leadership(self, queue);
        tokio::task::yield_now().await;
        // Sized once: a batch is built on every reservation.
        let (mut jobs, replies) = {
            let mut q = lock(&self.queues[queue]);
            let n = q.waiting.len().min(MAX_BATCH - 1);
            let mut jobs = Vec::with_capacity(n + 1);
            let mut replies = Vec::with_capacity(n);
            jobs.push(mine);
            for w in q.waiting.drain(..n) {
                jobs.push(w.job);
                replies.push(w.reply);
            }
            (jobs, replies)
        };
        let results = match lock(&self.writer).as_mut() {
            Some(writer) => {
                // Parked settles first: each follows its own reservation,
                // committed before its call was forwarded.
                let mut batch = std::mem::take(&mut *lock(&self.deferred));
                let settles = batch.len();
                if settles == 0 {
                    batch = jobs;
                } else {
                    batch.append(&mut jobs);
                }
                let mut results = writer.apply_batch(&batch);
                // A batch commits or fails as a whole.
                match results.first() {
                    Some(Err(e)) => self.health.failed(e),
                    _ => self.health.succeeded(),
                }
                // A failed batch loses its settles: those reservations stay
                // charged (an overcount, never an undercount).
                results.drain(..settles);
                results
            }
            None => jobs.iter().map(|_| Err(closed())).collect(),
        };
        let mut results = results.into_iter();
        let own = results.next().unwrap_or_else(|| Err(closed()));
        for (reply, result) in replies.into_iter().zip(results) {
            // A follower that went away still had its call counted.
            let _ = reply.send(Reply::Done(result));
        }
        drop(leadership);
        own
    }

    pub async fn reserve_call(
        &self,
        jti: &str,
        max_calls: u64,
        exp: i64,
    ) -> Result<Admission, UsageError> {
        match self.request(jti, Op::Reserve { max_calls, exp }).await? {
            Outcome::Admission(a) => Ok(a),
            _ => Err(unexpected()),
        }
    }

    pub async fn calls_used(&self, jti: &str) -> Result<u64, UsageError> {
        match self.request(jti, Op::Used).await? {
            Outcome::Used(n) => Ok(n),
            _ => Err(unexpected()),
        }
    }

    /// Refuses new requests, lets the queued ones finish (every admitted
    /// call is already committed), then closes the connection. Idempotent.
    pub async fn close(&self) -> Result<(), UsageError> {
        // Statistics still in memory (and parked settles, which ride along
        // with any batch) go in before the close; best effort: a closed
        // store has nothing to write them to.
        let _ = self.flush_usage().await;
        loop {
            let stepped_down = self.idle.notified();
            tokio::pin!(stepped_down);
            stepped_down.as_mut().enable();
            let mut leading = false;
            for queue in &*self.queues {
                let mut q = lock(queue);
                q.closed = true;
                leading |= q.leading;
            }
            if !leading {
                break;
            }
            stepped_down.await;
        }
        // No leader and closed: nobody can take the connection any more.
        let writer = lock(&self.writer).take();
        if let Some(writer) = writer {
            if let Err((_, e)) = writer.conn.close() {
                tracing::warn!(error = %e, "closing usage database");
            }
        }
        // Only now may another process take the file.
        drop(lock(&self.process_lock).take());
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

    /// Parks the settle for the next batch (the finish hook is synchronous
    /// and must not wait). A settle still parked when the store closes
    /// without a batch leaves the reservation charged.
    pub fn settle_tokens(&self, jti: &str, reserved: u64, actual: u64) {
        lock(&self.deferred).push(Job {
            jti: jti.into(),
            op: Op::Policy(PolicyOp::SettleTokens { reserved, actual }),
        });
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

    /// Writes the pending statistics (and any parked settles) in one batch
    /// and waits for it.
    pub async fn flush_usage(&self) -> Result<(), UsageError> {
        let deltas = self.pending.take();
        if deltas.is_empty() && lock(&self.deferred).is_empty() {
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

/// Held by the leader; dropping it (normally, or because the leader's
/// request was cancelled) passes leadership to the next waiting request.
struct Leadership<'a>(&'a SqliteStore, usize);

impl Drop for Leadership<'_> {
    fn drop(&mut self) {
        let mut q = lock(&self.0.queues[self.1]);
        while let Some(next) = q.waiting.pop_front() {
            match next.reply.send(Reply::Lead(next.job)) {
                Ok(()) => return,
                // That request was cancelled: it was never applied, so it
                // is not counted; try the next one.
                Err(_) => continue,
            }
        }
        q.leading = false;
        drop(q);
        self.0.idle.notify_waiters();
    }
}

/// A request waiting in the queue. If it is cancelled just after
/// leadership was handed to it, dropping it passes leadership on.
struct Follower<'a> {
    store: &'a SqliteStore,
    queue: usize,
    rx: Option<oneshot::Receiver<Reply>>,
}

impl Follower<'_> {
    async fn wait(&mut self) -> Option<Reply> {
        let reply = match self.rx.as_mut() {
            Some(rx) => rx.await.ok(),
            None => None,
        };
        self.rx = None;
        reply
    }
}

impl Drop for Follower<'_> {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            // No send can succeed after close; one that came before is here.
            rx.close();
            if let Ok(Reply::Lead(_)) = rx.try_recv() {
                drop(Leadership(self.store, self.queue));
            }
        }
    }
}

fn init(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // Before the first access, so that SQLite never creates the shared
    // memory WAL index (see the module doc).
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
    // Small pages for a new file (no effect on an existing one): rows are
    // ~50 bytes, and every commit appends (and checksums) each page it
    // changed to the WAL, so a commit of one row costs ¼ of 4 KiB pages.
    conn.pragma_update(None, "page_size", 1024)?;
    // WAL: a commit is one append (no rollback journal to write and drop).
    // NORMAL: no fsync per commit; see the module doc for what that covers.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
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
    cache: crate::FastMap<Box<str>, (u64, i64)>,
    last_housekeeping: Instant,
}

impl Writer {
    fn new(conn: Connection) -> Self {
        Self {
            conn,
            cache: crate::FastMap::default(),
            last_housekeeping: Instant::now(),
        }
    }

    /// One result per job, in order; all errors if the transaction failed.
    fn apply_batch(&mut self, jobs: &[Job]) -> Vec<Result<Outcome, UsageError>> {
        let results = match self.apply(jobs) {
            Ok(outcomes) => {
                if self.cache.len() > MAX_CACHED {
                    self.cache.clear();
                }
                outcomes.into_iter().map(Ok).collect()
            }
            Err(e) => {
                tracing::error!(error = %e, batch = jobs.len(), "usage batch failed");
                let _ = self.conn.execute_batch("ROLLBACK");
                // The cache holds uncommitted increments: reload lazily.
                self.cache.clear();
                jobs.iter()
                    .map(|_| Err(unavailable("usage write failed", &e)))
                    .collect()
            }
        };
        if self.last_housekeeping.elapsed() >= HOUSEKEEPING_EVERY {
            self.housekeeping();
        }
        results
    }

    /// Applies the batch in one transaction and commits. On error the caller
    /// rolls back; no reply has been sent yet.
    fn apply(&mut self, jobs: &[Job]) -> rusqlite::Result<Vec<Outcome>> {
        // IMMEDIATE takes the write lock up front, so COMMIT cannot fail with
        // a lock upgrade conflict after we decided.
        // (Cached statements: parsing these two every batch showed up.)
        self.conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        let mut outcomes = Vec::with_capacity(jobs.len());
        // Tokens whose count changed: written once each, after all decisions.
        let mut changed: Vec<&str> = Vec::new();
        for job in jobs {
            if let Op::Policy(op) = &job.op {
                outcomes.push(Outcome::Policy(policy::apply(&self.conn, &job.jti, op)?));
                continue;
            }
            let (used, stored_exp) = self.load(&job.jti)?;
            let outcome = match job.op {
                // Handled above, without loading the call count.
                Op::Policy(_) => continue,
                Op::Used => Outcome::Used(used),
                Op::Reserve { max_calls, exp } => {
                    let (admission, new_used) = decide(used, max_calls);
                    if let Some(n) = new_used {
                        // `load` put the entry in: update it in place (no
                        // key copy per reservation).
                        let entry = (n, exp.max(stored_exp));
                        match self.cache.get_mut(&*job.jti) {
                            Some(cached) => *cached = entry,
                            None => {
                                self.cache.insert(job.jti.clone(), entry);
                            }
                        }
                        changed.push(&job.jti);
                    }
                    Outcome::Admission(admission)
                }
            };
            outcomes.push(outcome);
        }
        changed.sort_unstable();
        changed.dedup();
        for jti in changed {
            let Some(&(n, exp)) = self.cache.get(jti) else {
                continue;
            };
            self.conn
                .prepare_cached(
                    "INSERT INTO token_calls (jti, used, exp) VALUES (?1, ?2, ?3)
                     ON CONFLICT (jti) DO UPDATE SET used = excluded.used, exp = excluded.exp",
                )?
                .execute(params![jti, i64::try_from(n).unwrap_or(i64::MAX), exp])?;
        }
        self.conn.prepare_cached("COMMIT")?.execute([])?;
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
        self.cache.insert(jti.into(), entry);
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
    async fn a_store_dropped_without_close_keeps_every_admitted_call() {
        // Each reply came after its commit. (That this holds across
        // `kill -9` is tests/binary.rs::kill_9_never_readmits_a_used_call:
        // no other connection can read the file while the store holds it.)
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.db");
        let store = UsageStore::open_sqlite(&path).unwrap();
        for _ in 0..5 {
            store.reserve_call("crash", 10, FAR_FUTURE).await.unwrap();
        }
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
    async fn a_new_file_uses_small_pages_and_wal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.db");
        let store = UsageStore::open_sqlite(&path).unwrap();
        store.reserve_call("p", 2, FAR_FUTURE).await.unwrap();
        // Held exclusively while open (no file-lock calls per commit)...
        let conn = Connection::open(&path).unwrap();
        let err = conn
            .query_row("SELECT count(*) FROM token_calls", [], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap_err();
        assert!(err.to_string().contains("locked"), "{err}");
        drop(conn);
        store.close().await.unwrap();
        // ...and WAL is a property of the file, seen once it is let go.
        let conn = Connection::open(&path).unwrap();
        let page: i64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!((page, mode.as_str()), (1024, "wal"));
    }

    #[tokio::test]
    async fn a_second_store_on_the_same_file_is_refused_until_the_first_closes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.db");
        let first = UsageStore::open_sqlite(&path).unwrap();
        let err = UsageStore::open_sqlite(&path).unwrap_err().to_string();
        assert!(
            err.contains("in use by another relayapi process") && err.contains("usage.path"),
            "{err}"
        );
        first.close().await.unwrap();
        let second = UsageStore::open_sqlite(&path).unwrap();
        second.close().await.unwrap();
    }

    #[test]
    fn a_lock_held_for_a_moment_is_waited_out() {
        // What a forked child's copy of the descriptor does until its exec.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.db");
        let holder = lock_for_this_process(&path).unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(150));
            drop(holder);
        });
        let started = std::time::Instant::now();
        let taken = lock_for_this_process(&path);
        assert!(taken.is_ok(), "{:?}", taken.err());
        assert!(started.elapsed() >= std::time::Duration::from_millis(100));
        release.join().unwrap();
    }

    #[tokio::test]
    async fn open_creates_parent_directories() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/usage.db");
        let store = UsageStore::open_sqlite(&path).unwrap();
        store.close().await.unwrap();
        assert!(path.exists());
    }

    #[test]
    fn exact_across_worker_threads_each_with_its_own_runtime() {
        // The server's layout: several single-threaded runtimes on their own
        // threads, all reserving on one store.
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(UsageStore::open_sqlite(&dir.path().join("usage.db")).unwrap());
        let max = 77;
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    // Two threads per queue: own queues and shared ones.
                    crate::server::set_worker_index(i % 2);
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(async {
                        let tasks: Vec<_> = (0..60)
                            .map(|_| {
                                let store = Arc::clone(&store);
                                tokio::spawn(async move {
                                    store.reserve_call("shared", max, FAR_FUTURE).await.unwrap()
                                })
                            })
                            .collect();
                        let mut used = Vec::new();
                        for t in tasks {
                            if let Admission::Admitted { used: u, .. } = t.await.unwrap() {
                                used.push(u);
                            }
                        }
                        used
                    })
                })
            })
            .collect();
        let mut used: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        used.sort_unstable();
        assert_eq!(used, (1..=max).collect::<Vec<_>>());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            assert_eq!(store.calls_used("shared").await.unwrap(), max);
            store.close().await.unwrap();
        });
        assert_eq!(
            count_from_second_connection(&dir.path().join("usage.db"), "shared"),
            77
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancelled_requests_never_stall_the_others() {
        // Leaders and followers dropped at any point (clients going away)
        // must hand leadership on; the rest all get answers.
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(UsageStore::open_sqlite(&dir.path().join("usage.db")).unwrap());
        for round in 0..20 {
            let tasks: Vec<_> = (0..40)
                .map(|_| {
                    let store = Arc::clone(&store);
                    tokio::spawn(async move {
                        store
                            .reserve_call("cancel", 1_000_000, FAR_FUTURE)
                            .await
                            .unwrap()
                    })
                })
                .collect();
            let mut kept = Vec::new();
            for (i, t) in tasks.into_iter().enumerate() {
                if (i + round) % 3 == 0 {
                    t.abort();
                } else {
                    kept.push(t);
                }
            }
            for t in kept {
                let done = tokio::time::timeout(Duration::from_secs(10), t).await;
                assert!(
                    matches!(done, Ok(Ok(Admission::Admitted { .. }))),
                    "round {round}"
                );
            }
        }
        let used = store.calls_used("cancel").await.unwrap();
        // Every kept request counted; an aborted one only if it got that far.
        assert!((20 * 26..=20 * 40).contains(&used), "{used}");
        let final_one = tokio::time::timeout(
            Duration::from_secs(10),
            store.reserve_call("cancel", 1_000_000, FAR_FUTURE),
        )
        .await;
        assert!(matches!(final_one, Ok(Ok(Admission::Admitted { .. }))));
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn close_refuses_new_requests_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let store = UsageStore::open_sqlite(&dir.path().join("usage.db")).unwrap();
        store.reserve_call("c", 5, FAR_FUTURE).await.unwrap();
        store.close().await.unwrap();
        assert!(matches!(
            store.reserve_call("c", 5, FAR_FUTURE).await,
            Err(UsageError::Unavailable(_))
        ));
        store.close().await.unwrap();
    }

    /// Reserves calls for new tokens until a batch fails; its error.
    async fn first_failed_reservation(store: &UsageStore) -> UsageError {
        for i in 0..10_000 {
            if let Err(e) = store
                .reserve_call(&format!("fill-{i}"), 5, FAR_FUTURE)
                .await
            {
                return e;
            }
        }
        panic!("10,000 new rows fit in a full file");
    }

    #[tokio::test]
    async fn health_shows_a_failing_write_until_the_next_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.db");
        let store = UsageStore::open_sqlite(&path).unwrap();
        store.reserve_call("h", 5, FAR_FUTURE).await.unwrap();
        assert!(!store.is_failing());
        assert_eq!(store.health_report()["status"], "ok");
        assert!(store.health_report().get("last_error").is_none());

        // The file is full (a stand-in for a full disk): new rows fail.
        let set_max_pages = |pages: i64| match &store {
            UsageStore::Sqlite(s) => {
                let writer = lock(&s.writer);
                let conn = &writer.as_ref().unwrap().conn;
                // Clamped to the pages in use: nothing more can grow.
                conn.pragma_update(None, "max_page_count", pages).unwrap();
            }
            UsageStore::Memory(_) => unreachable!(),
        };
        set_max_pages(1);
        let failed = first_failed_reservation(&store).await;
        assert!(matches!(failed, UsageError::Unavailable(_)), "{failed:?}");
        assert!(store.is_failing());
        let report = store.health_report();
        assert_eq!(report["status"], "failing", "{report}");
        assert_eq!(report["write_errors"], 1, "{report}");
        assert!(
            report["last_error"].as_str().unwrap().contains("full"),
            "{report}"
        );
        assert!(
            !report.to_string().contains("fill-"),
            "no token id: {report}"
        );

        set_max_pages(1 << 30);
        store.reserve_call("h", 5, FAR_FUTURE).await.unwrap();
        let report = store.health_report();
        assert_eq!(report["status"], "ok", "{report}");
        // The error stays visible as history, with its count.
        assert_eq!(report["write_errors"], 1, "{report}");
        assert!(report["last_error_at"].as_i64().unwrap() > 0, "{report}");
        store.close().await.unwrap();
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
