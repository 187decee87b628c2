//! Delivery machinery shared by every sink: bounded per-sink queues,
//! batching, retries with capped exponential backoff and full jitter, the
//! overflow spool with replay, drop accounting and flush on shutdown.
//!
//! # Buffers, and what happens when each is full
//!
//! For every sink, [`LogPipeline::start`] creates:
//!
//! 1. **The queue** (`queue_capacity` records, a bounded `mpsc`). The request
//!    path only calls [`LogPipeline::push`], which does `try_send` and never
//!    waits. When the queue is full (the sink is slow or down and the batcher
//!    is busy retrying), the record goes to 2.
//! 2. **The spool channel** ([`SPOOL_CHANNEL_CAPACITY`] records, bounded,
//!    only when `spool_dir` is set). A dedicated spool-writer task drains it
//!    into the spool file with `tokio::fs`, so no file I/O ever happens on
//!    the request path. When this channel is also full (or there is no
//!    spool), the record is **dropped and counted**.
//! 3. **The spool** (`<spool_dir>/<sink>/*.jsonl`, at most `spool_max_bytes`,
//!    see [`crate::logs::spool`]). A record that would exceed the bound is
//!    **dropped and counted**. The spool is replayed oldest first by the
//!    batching task whenever the sink is healthy: after each successful
//!    write, when the spool writer signals new spooled records while the
//!    batcher is idle and healthy, and at start (records left by a previous
//!    run).
//! 4. **The batch** being built or retried by the batching task (up to
//!    `max_records` / `max_bytes`). It is flushed `max_delay` after its first
//!    record at the latest. The task takes records in bursts: woken by one,
//!    it waits [`LINGER`] and takes everything queued by then, so under load
//!    it wakes a few hundred times a second, not once per record. On [`SinkError::Retryable`] the *same* batch is
//!    retried (backoff `retry_initial` doubling up to `retry_max`, full
//!    jitter) while new records pile up in 1 and then 2/3. On
//!    [`SinkError::Permanent`] the batch is counted as dropped, the error
//!    logged (rate limited) and never retried.
//!
//! Drops are counted per sink ([`SinkStats::dropped`]) and logged at most
//! once per [`DROP_LOG_INTERVAL`] per sink.
//!
//! # Guarantees
//!
//! Delivery is **at-least-once**: a batch that timed out may have been
//! received and is sent again, and a spool segment whose replay was cut by
//! a crash is replayed again. Every record carries its `request_id`;
//! receivers (the webhook's consumer, the database sinks' inserts) dedupe on
//! it. Apart from those retries, each record is written once per sink.
//!
//! # Shutdown
//!
//! [`LogPipeline::shutdown`] stops intake (later pushes are counted as
//! dropped), then each batching task drains its queue and delivers it until
//! 80% of the deadline; what is still undelivered then (sink down) goes to
//! the spool when there is one (it is replayed after the next start), else
//! it is counted as dropped. With time left and a healthy sink the spool is
//! replayed too. Finally [`Sink::flush`] runs, bounded by the deadline.
//! Tasks still running at the deadline are aborted. The returned
//! [`ShutdownReport`] (also logged) says what was left behind.
//!
//! All tasks are tracked (joined by `shutdown`). [`LogPipeline::start`] must
//! be called inside a Tokio runtime. If every handle is dropped without
//! `shutdown`, the tasks drain what they hold and exit on their own.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch, Notify, OwnedMutexGuard};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::record::{CapturedBody, LogRecord};
use super::sinks::{Sink, SinkError};
use super::spool::Spool;

/// Capacity of each sink's channel to its spool writer (records).
pub const SPOOL_CHANNEL_CAPACITY: usize = 4096;
/// Drops (and permanent/retryable errors) are logged at most this often per sink.
pub const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Grace used when every handle was dropped without calling `shutdown`.
const IMPLICIT_GRACE: Duration = Duration::from_secs(5);
/// After a wake-up the batcher waits this long for more records before it
/// looks at them (bounds wake-ups per sink, whatever the request rate).
pub const LINGER: Duration = Duration::from_millis(2);

/// How batches are built and retried; one value for every sink.
#[derive(Debug, Clone)]
pub struct BatchSettings {
    /// A batch is written once it holds this many records.
    pub max_records: usize,
    /// ...or once its estimated serialized size reaches this many bytes.
    pub max_bytes: usize,
    /// ...or this long after its first record arrived.
    pub max_delay: Duration,
    /// Records waiting for one sink before they overflow to the spool.
    pub queue_capacity: usize,
    /// Directory for the overflow spool; `None` drops on overflow.
    pub spool_dir: Option<PathBuf>,
    /// Bound on one sink's spool files, in bytes.
    pub spool_max_bytes: u64,
    /// First retry delay (before jitter).
    pub retry_initial: Duration,
    /// Cap of the retry delay (before jitter).
    pub retry_max: Duration,
}

impl Default for BatchSettings {
    fn default() -> Self {
        BatchSettings {
            max_records: 500,
            max_bytes: 1024 * 1024,
            max_delay: Duration::from_secs(1),
            queue_capacity: 10_000,
            spool_dir: None,
            spool_max_bytes: 256 * 1024 * 1024,
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_secs(30),
        }
    }
}

/// Counters of one sink, as shown in `/health`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SinkStats {
    pub name: String,
    /// Records waiting in memory now: the queue, the spool channel and
    /// what the spool writer holds, plus every record the sink's task holds
    /// (the batch being built, written or retried).
    pub queued: u64,
    /// Records the sink accepted (a retried batch counts once per success).
    pub delivered: u64,
    /// Failed attempts that were retried.
    pub retries: u64,
    /// Records ever written to the spool.
    pub spooled: u64,
    /// Records waiting in the spool now.
    pub in_spool: u64,
    /// Records lost: queue and spool full, spool bound, permanent errors,
    /// undeliverable at shutdown without a spool, pushed after shutdown.
    pub dropped: u64,
    /// Last error the sink reported (never contains secrets or bodies).
    pub last_error: Option<String>,
    /// When that was (RFC 3339 UTC): an error older than the last delivery
    /// is history, not the sink's state.
    pub last_error_at: Option<String>,
    /// When the sink last accepted a batch (RFC 3339 UTC).
    pub last_delivered_at: Option<String>,
}

/// What [`LogPipeline::shutdown`] left behind.
#[derive(Debug, Clone, Default)]
pub struct ShutdownReport {
    /// Final counters per sink.
    pub sinks: Vec<SinkStats>,
    /// Records not delivered: still queued or waiting in a spool (those are
    /// replayed after the next start).
    pub undelivered: u64,
    /// Some task did not finish by the deadline and was aborted.
    pub timed_out: bool,
}

/// Deadlines of a shutdown in progress.
#[derive(Debug, Clone, Copy)]
struct Deadlines {
    /// No new write attempt starts after this; leftovers go to the spool.
    stop: Instant,
    /// Everything (spooling, flush) ends here.
    hard: Instant,
}

/// Rate limiter for one kind of log line: at most once per interval.
#[derive(Debug)]
struct RateLimit {
    /// Milliseconds since `origin` of the last line, `u64::MAX` for never.
    last_ms: AtomicU64,
}

impl RateLimit {
    fn new() -> Self {
        RateLimit {
            last_ms: AtomicU64::new(u64::MAX),
        }
    }

    /// True (and records the time) when a line may be logged now.
    fn allow(&self, origin: Instant) -> bool {
        let now = origin.elapsed().as_millis() as u64;
        let last = self.last_ms.load(Ordering::Relaxed);
        let interval = DROP_LOG_INTERVAL.as_millis() as u64;
        if last != u64::MAX && now < last.saturating_add(interval) {
            return false;
        }
        self.last_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

/// Shared counters of one sink. Written by `push` and the sink's tasks.
#[derive(Debug)]
struct Counters {
    name: String,
    origin: Instant,
    delivered: AtomicU64,
    retries: AtomicU64,
    spooled: AtomicU64,
    /// Mirror of the spool's record count (the spool itself is behind an
    /// async mutex and cannot be read from `stats`).
    in_spool: AtomicU64,
    dropped: AtomicU64,
    /// Records the sink's task has taken from the queue and not yet
    /// delivered, spooled or dropped (the batch being built, the one being
    /// written or retried); counted in `queued`.
    held: AtomicU64,
    /// Records the spool writer has taken from its channel and not yet
    /// spooled or dropped; counted in `queued`. (Not in `held`: the
    /// batcher resets that at shutdown while the writer may still hold
    /// some.)
    spool_held: AtomicU64,
    /// Drops not yet reported in a log line.
    drops_unlogged: AtomicU64,
    drop_log: RateLimit,
    error_log: RateLimit,
    last_error: Mutex<Option<(String, SystemTime)>>,
    /// Unix milliseconds of the last accepted batch; 0 = never.
    last_delivered_ms: AtomicU64,
}

impl Counters {
    fn new(name: String) -> Self {
        Counters {
            name,
            origin: Instant::now(),
            delivered: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            spooled: AtomicU64::new(0),
            in_spool: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            held: AtomicU64::new(0),
            spool_held: AtomicU64::new(0),
            drops_unlogged: AtomicU64::new(0),
            drop_log: RateLimit::new(),
            error_log: RateLimit::new(),
            last_error: Mutex::new(None),
            last_delivered_ms: AtomicU64::new(0),
        }
    }

    fn delivered_now(&self, n: u64) {
        self.delivered.fetch_add(n, Ordering::Relaxed);
        let ms = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.last_delivered_ms.store(ms, Ordering::Relaxed);
    }

    fn add_dropped(&self, n: u64) {
        if n == 0 {
            return;
        }
        self.dropped.fetch_add(n, Ordering::Relaxed);
        self.drops_unlogged.fetch_add(n, Ordering::Relaxed);
        self.log_drops(false);
    }

    /// Logs the drops since the last line, at most once per interval unless
    /// `force`d (shutdown).
    fn log_drops(&self, force: bool) {
        if self.drops_unlogged.load(Ordering::Relaxed) == 0 {
            return;
        }
        let last = self.drop_log.last_ms.load(Ordering::Relaxed);
        if !force && !self.drop_log.allow(self.origin) {
            return;
        }
        let n = self.drops_unlogged.swap(0, Ordering::Relaxed);
        if n > 0 {
            let since = if last == u64::MAX {
                "the pipeline started".to_string()
            } else {
                let ago = (self.origin.elapsed().as_millis() as u64).saturating_sub(last);
                format!("{:.1} s ago", ago as f64 / 1000.0)
            };
            tracing::warn!(sink = %self.name, dropped = n, "{n} log records dropped for sink {} since {since}", self.name);
        }
    }

    fn set_error(&self, e: &SinkError) {
        if let Ok(mut g) = self.last_error.lock() {
            *g = Some((e.to_string(), SystemTime::now()));
        }
    }

    fn snapshot(&self, queued: u64) -> SinkStats {
        let last_error = self.last_error.lock().ok().and_then(|g| g.clone());
        SinkStats {
            name: self.name.clone(),
            queued: queued
                + self.held.load(Ordering::Relaxed)
                + self.spool_held.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            spooled: self.spooled.load(Ordering::Relaxed),
            in_spool: self.in_spool.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            last_error: last_error.as_ref().map(|(e, _)| e.clone()),
            last_error_at: last_error
                .as_ref()
                .map(|(_, at)| crate::logs::request::rfc3339_utc(*at)),
            last_delivered_at: match self.last_delivered_ms.load(Ordering::Relaxed) {
                0 => None,
                ms => Some(crate::logs::request::rfc3339_utc(
                    std::time::UNIX_EPOCH + Duration::from_millis(ms),
                )),
            },
        }
    }
}

/// The request path's view of one sink.
struct Lane {
    queue: mpsc::Sender<Arc<LogRecord>>,
    /// To the spool writer; `None` without a spool.
    overflow: Option<mpsc::Sender<Arc<LogRecord>>>,
    counters: Arc<Counters>,
}

impl Lane {
    /// Records waiting in the sink's queue and in its spool channel.
    fn in_channels(&self) -> u64 {
        let waiting = |tx: &mpsc::Sender<Arc<LogRecord>>| {
            tx.max_capacity().saturating_sub(tx.capacity()) as u64
        };
        waiting(&self.queue) + self.overflow.as_ref().map_or(0, waiting)
    }
}

struct Inner {
    lanes: Vec<Lane>,
    /// Set by `shutdown`: `push` drops (and counts) from then on.
    closed: AtomicBool,
    shutdown_tx: watch::Sender<Option<Deadlines>>,
    /// Every task this pipeline spawned; taken and joined by `shutdown`.
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// Handle to the running pipeline; cheap to clone.
#[derive(Clone)]
pub struct LogPipeline {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LogPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogPipeline")
            .field("sinks", &self.inner.lanes.len())
            .finish()
    }
}

impl LogPipeline {
    /// Starts one batching task (and, with a spool, one spool-writer task)
    /// per sink. Must be called inside a Tokio runtime.
    pub fn start(sinks: Vec<Arc<dyn Sink>>, settings: BatchSettings) -> LogPipeline {
        let settings = Arc::new(BatchSettings {
            max_records: settings.max_records.max(1),
            queue_capacity: settings.queue_capacity.max(1),
            ..settings
        });
        let (shutdown_tx, _) = watch::channel(None);
        let mut lanes = Vec::with_capacity(sinks.len());
        let mut tasks = Vec::new();
        for sink in sinks {
            let counters = Arc::new(Counters::new(sink.name().to_string()));
            let (queue, rx) = mpsc::channel(settings.queue_capacity);
            let spool: Arc<tokio::sync::Mutex<Option<Spool>>> =
                Arc::new(tokio::sync::Mutex::new(None));
            let notify = Arc::new(Notify::new());
            let mut opener = None;
            let overflow = match settings.spool_dir.as_ref().filter(|_| sink.spools()) {
                Some(dir) => {
                    // Held by the batcher until the spool is open, so the
                    // writer waits for it instead of dropping.
                    opener = spool
                        .clone()
                        .try_lock_owned()
                        .ok()
                        .map(|g| (g, dir.clone()));
                    let (tx, orx) = mpsc::channel(SPOOL_CHANNEL_CAPACITY);
                    tasks.push(tokio::spawn(spool_writer(
                        orx,
                        spool.clone(),
                        counters.clone(),
                        notify.clone(),
                        shutdown_tx.subscribe(),
                    )));
                    Some(tx)
                }
                None => None,
            };
            let batcher = Batcher {
                sink,
                rx,
                spool,
                counters: counters.clone(),
                settings: settings.clone(),
                notify,
                shutdown_rx: shutdown_tx.subscribe(),
                healthy: true,
                leftover: Vec::new(),
            };
            tasks.push(tokio::spawn(batcher.run(opener)));
            lanes.push(Lane {
                queue,
                overflow,
                counters,
            });
        }
        LogPipeline {
            inner: Arc::new(Inner {
                lanes,
                closed: AtomicBool::new(false),
                shutdown_tx,
                tasks: Mutex::new(tasks),
            }),
        }
    }

    /// Hands a record to every sink. Never waits and never does I/O:
    /// `try_send` into the sink's queue, else into its spool channel, else
    /// the record is dropped for that sink and counted.
    pub fn push(&self, record: Arc<LogRecord>) {
        let closed = self.inner.closed.load(Ordering::Acquire);
        for lane in &self.inner.lanes {
            if closed {
                lane.counters.add_dropped(1);
                continue;
            }
            match lane.queue.try_send(record.clone()) {
                Ok(()) => {}
                Err(TrySendError::Full(r)) => match &lane.overflow {
                    Some(tx) if tx.try_send(r).is_ok() => {}
                    _ => lane.counters.add_dropped(1),
                },
                Err(TrySendError::Closed(_)) => lane.counters.add_dropped(1),
            }
        }
    }

    /// Counters per sink, in the order the sinks were given.
    pub fn stats(&self) -> Vec<SinkStats> {
        self.inner
            .lanes
            .iter()
            .map(|l| l.counters.snapshot(l.in_channels()))
            .collect()
    }

    /// Stops intake, drains and flushes every sink within `deadline`, and
    /// reports (and logs) what was left undelivered.
    pub async fn shutdown(self, deadline: Duration) -> ShutdownReport {
        self.inner.closed.store(true, Ordering::Release);
        let start = Instant::now();
        let hard = start + deadline;
        let stop = start + deadline.mul_f64(0.8);
        self.inner
            .shutdown_tx
            .send_replace(Some(Deadlines { stop, hard }));
        let tasks = match self.inner.tasks.lock() {
            Ok(mut g) => std::mem::take(&mut *g),
            Err(_) => Vec::new(),
        };
        let mut timed_out = false;
        for task in tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(hard + Duration::from_millis(50), task)
                .await
                .is_err()
            {
                timed_out = true;
                abort.abort();
            }
        }
        for lane in &self.inner.lanes {
            if timed_out {
                // An aborted task took what it held (and its queue) with it:
                // lost, so counted.
                let lost = lane.counters.held.swap(0, Ordering::Relaxed)
                    + lane.counters.spool_held.swap(0, Ordering::Relaxed)
                    + lane.in_channels();
                lane.counters.add_dropped(lost);
            }
            lane.counters.log_drops(true);
        }
        let sinks = self.stats();
        let undelivered = sinks.iter().map(|s| s.queued + s.in_spool).sum();
        for s in &sinks {
            if s.queued + s.in_spool > 0 {
                tracing::warn!(sink = %s.name, delivered = s.delivered, queued = s.queued, in_spool = s.in_spool, dropped = s.dropped, "log sink shut down with records left behind");
            } else if s.dropped > 0 {
                tracing::warn!(sink = %s.name, delivered = s.delivered, dropped = s.dropped, "log sink flushed; records were dropped while it ran (see the earlier warnings)");
            } else {
                tracing::info!(sink = %s.name, delivered = s.delivered, "log sink flushed");
            }
        }
        if timed_out {
            tracing::warn!("log pipeline shutdown hit its deadline; tasks aborted");
        }
        ShutdownReport {
            sinks,
            undelivered,
            timed_out,
        }
    }
}

/// Waits until shutdown is requested; when every handle is gone, returns an
/// implicit grace period.
async fn wait_shutdown(rx: &mut watch::Receiver<Option<Deadlines>>) -> Deadlines {
    match rx.wait_for(|d| d.is_some()).await {
        Ok(d) => match *d {
            Some(d) => d,
            None => implicit_deadlines(),
        },
        Err(_) => implicit_deadlines(),
    }
}

fn implicit_deadlines() -> Deadlines {
    let now = Instant::now();
    Deadlines {
        stop: now + IMPLICIT_GRACE.mul_f64(0.8),
        hard: now + IMPLICIT_GRACE,
    }
}

/// Drains the spool channel into the spool file.
async fn spool_writer(
    mut rx: mpsc::Receiver<Arc<LogRecord>>,
    spool: Arc<tokio::sync::Mutex<Option<Spool>>>,
    counters: Arc<Counters>,
    notify: Arc<Notify>,
    mut shutdown_rx: watch::Receiver<Option<Deadlines>>,
) {
    let mut buf = Vec::with_capacity(256);
    let mut closing = false;
    loop {
        let n = if closing {
            rx.recv_many(&mut buf, 256).await
        } else {
            tokio::select! {
                biased;
                n = rx.recv_many(&mut buf, 256) => n,
                _ = wait_shutdown(&mut shutdown_rx) => {
                    closing = true;
                    rx.close();
                    continue;
                }
            }
        };
        if n == 0 {
            break;
        }
        counters.spool_held.fetch_add(n as u64, Ordering::Relaxed);
        let mut guard = spool.lock().await;
        let out = match guard.as_mut() {
            Some(s) => {
                let out = s.append(&buf).await;
                counters
                    .in_spool
                    .store(s.pending_records(), Ordering::Relaxed);
                out
            }
            None => super::spool::AppendOutcome {
                written: 0,
                dropped: buf.len() as u64,
            },
        };
        drop(guard);
        counters.spool_held.fetch_sub(n as u64, Ordering::Relaxed);
        counters.spooled.fetch_add(out.written, Ordering::Relaxed);
        counters.add_dropped(out.dropped);
        buf.clear();
        notify.notify_one();
    }
}

enum Delivery {
    /// Written, or dropped for a permanent error (counted).
    Done,
    /// Shutdown deadline reached with the sink still failing.
    Abandoned(Vec<Arc<LogRecord>>),
}

/// One sink's batching task.
struct Batcher {
    sink: Arc<dyn Sink>,
    rx: mpsc::Receiver<Arc<LogRecord>>,
    spool: Arc<tokio::sync::Mutex<Option<Spool>>>,
    counters: Arc<Counters>,
    settings: Arc<BatchSettings>,
    /// Signalled by the spool writer after it spooled records.
    notify: Arc<Notify>,
    shutdown_rx: watch::Receiver<Option<Deadlines>>,
    /// The last write attempt did not fail retryably.
    healthy: bool,
    /// Records abandoned by an interrupted delivery, for `finish`.
    leftover: Vec<Arc<LogRecord>>,
}

impl Batcher {
    async fn run(mut self, opener: Option<(OwnedMutexGuard<Option<Spool>>, PathBuf)>) {
        if let Some((mut guard, dir)) = opener {
            match Spool::open(&dir, self.sink.name(), self.settings.spool_max_bytes).await {
                Ok(s) => {
                    self.counters
                        .in_spool
                        .store(s.pending_records(), Ordering::Relaxed);
                    *guard = Some(s);
                }
                Err(e) => {
                    // The message, not just the kind: it says when another
                    // relay holds the directory (never a secret: a path).
                    tracing::warn!(
                        sink = %self.sink.name(),
                        spool_dir = %dir.display(),
                        error = %e,
                        "log spool unavailable, so records that overflow the queue will be dropped; \
                         set log.spool_dir to a writable directory (or null to run without a spool)"
                    );
                }
            }
            drop(guard);
            // Records a previous run left behind.
            self.replay().await;
        }
        let mut batch: Vec<Arc<LogRecord>> = Vec::new();
        let mut incoming: Vec<Arc<LogRecord>> = Vec::new();
        let mut bytes = 0usize;
        let mut flush_at: Option<Instant> = None;
        let mut tick = tokio::time::interval(DROP_LOG_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let deadlines = loop {
            if let Some(d) = *self.shutdown_rx.borrow() {
                break d;
            }
            tokio::select! {
                biased;
                d = wait_shutdown(&mut self.shutdown_rx) => break d,
                n = self.rx.recv_many(&mut incoming, self.settings.max_records) => {
                    if n == 0 {
                        break implicit_deadlines();
                    }
                    // Linger a moment and take what arrived meanwhile: under
                    // load one wake-up (and one pass through this select)
                    // per LINGER, not one per record.
                    if incoming.len() < self.settings.max_records {
                        tokio::time::sleep(LINGER).await;
                        while incoming.len() < self.settings.max_records {
                            match self.rx.try_recv() {
                                Ok(rec) => incoming.push(rec),
                                Err(_) => break,
                            }
                        }
                    }
                    // Every record taken goes into a batch (delivered, or
                    // left for `finish` if shutdown interrupts a delivery).
                    self.counters.held.fetch_add(incoming.len() as u64, Ordering::Relaxed);
                    for rec in incoming.drain(..) {
                        bytes += estimated_size(&rec);
                        batch.push(rec);
                        if batch.len() == 1 {
                            flush_at = Some(Instant::now() + self.settings.max_delay);
                        }
                        if batch.len() >= self.settings.max_records || bytes >= self.settings.max_bytes {
                            self.deliver_then_replay(std::mem::take(&mut batch)).await;
                            bytes = 0;
                            flush_at = None;
                        }
                    }
                },
                _ = sleep_until_opt(flush_at), if flush_at.is_some() => {
                    self.deliver_then_replay(std::mem::take(&mut batch)).await;
                    bytes = 0;
                    flush_at = None;
                }
                _ = self.notify.notified(), if batch.is_empty() && self.healthy => {
                    self.replay().await;
                }
                _ = tick.tick() => {
                    self.count_lost();
                    self.counters.log_drops(false);
                }
            }
        };
        self.finish(batch, deadlines).await;
    }

    fn deadlines(&self) -> Option<Deadlines> {
        *self.shutdown_rx.borrow()
    }

    async fn deliver_then_replay(&mut self, batch: Vec<Arc<LogRecord>>) {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        match self.deliver(batch).await {
            Delivery::Done => {
                self.counters.held.fetch_sub(n, Ordering::Relaxed);
                self.count_lost();
                if self.healthy {
                    self.replay().await;
                }
            }
            // Still held: `finish` spools (or counts) them.
            Delivery::Abandoned(rest) => self.leftover.extend(rest),
        }
    }

    /// Writes one batch, retrying retryable failures until it succeeds, or
    /// (during shutdown) until the stop deadline.
    async fn deliver(&mut self, batch: Vec<Arc<LogRecord>>) -> Delivery {
        let n = batch.len() as u64;
        let mut attempt = 0u32;
        loop {
            let stop = self.deadlines().map(|d| d.stop);
            let result = match stop {
                Some(stop) => {
                    if Instant::now() >= stop {
                        return Delivery::Abandoned(batch);
                    }
                    match tokio::time::timeout_at(stop, self.sink.write_batch(&batch)).await {
                        Ok(r) => r,
                        Err(_) => return Delivery::Abandoned(batch),
                    }
                }
                None => {
                    // Begun before shutdown: it may go on until the stop
                    // deadline once shutdown starts, not longer (a write
                    // hanging on a stuck receiver would otherwise outlive
                    // the hard deadline and take the batch with it).
                    let outcome = {
                        let write = self.sink.write_batch(&batch);
                        tokio::pin!(write);
                        tokio::select! {
                            r = &mut write => Some(r),
                            d = wait_shutdown(&mut self.shutdown_rx) => {
                                tokio::time::timeout_at(d.stop, &mut write).await.ok()
                            }
                        }
                    };
                    match outcome {
                        Some(r) => r,
                        None => return Delivery::Abandoned(batch),
                    }
                }
            };
            match result {
                Ok(()) => {
                    self.counters.delivered_now(n);
                    self.healthy = true;
                    return Delivery::Done;
                }
                Err(e @ SinkError::Permanent(_)) => {
                    self.counters.set_error(&e);
                    if self.counters.error_log.allow(self.counters.origin) {
                        tracing::error!(sink = %self.sink.name(), records = n, error = %e, "log sink refused a batch; dropped");
                    }
                    self.counters.add_dropped(n);
                    self.healthy = true;
                    return Delivery::Done;
                }
                Err(e @ SinkError::Retryable(_)) => {
                    self.counters.set_error(&e);
                    self.counters.retries.fetch_add(1, Ordering::Relaxed);
                    if self.healthy && self.counters.error_log.allow(self.counters.origin) {
                        tracing::warn!(sink = %self.sink.name(), records = n, error = %e, "log sink failing; retrying");
                    }
                    self.healthy = false;
                    let wake = Instant::now()
                        + backoff(
                            attempt,
                            self.settings.retry_initial,
                            self.settings.retry_max,
                        );
                    attempt = attempt.saturating_add(1);
                    // The main loop's drop report does not run meanwhile.
                    self.counters.log_drops(false);
                    match stop {
                        Some(stop) if wake >= stop => return Delivery::Abandoned(batch),
                        Some(_) => tokio::time::sleep_until(wake).await,
                        None => {
                            tokio::select! {
                                _ = tokio::time::sleep_until(wake) => {}
                                _ = wait_shutdown(&mut self.shutdown_rx) => {}
                            }
                        }
                    }
                }
            }
        }
    }

    /// Replays the spool, oldest segment first, while deliveries succeed.
    async fn replay(&mut self) {
        loop {
            if self.counters.in_spool.load(Ordering::Relaxed) == 0 {
                return;
            }
            let segment = {
                let mut guard = self.spool.lock().await;
                let Some(spool) = guard.as_mut() else { return };
                match spool.oldest().await {
                    Ok(Some(seg)) => seg,
                    Ok(None) => {
                        self.counters
                            .in_spool
                            .store(spool.pending_records(), Ordering::Relaxed);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(sink = %self.sink.name(), error = %e.kind(), "log spool read failed");
                        return;
                    }
                }
            };
            self.counters.add_dropped(segment.bad_lines);
            let mut rest = segment.records;
            let mut abandoned = None;
            while !rest.is_empty() {
                let take = chunk_len(&rest, &self.settings);
                let tail = rest.split_off(take);
                match self.deliver(rest).await {
                    Delivery::Done => rest = tail,
                    Delivery::Abandoned(mut chunk) => {
                        chunk.extend(tail);
                        abandoned = Some(chunk);
                        break;
                    }
                }
            }
            let mut guard = self.spool.lock().await;
            let Some(spool) = guard.as_mut() else { return };
            if let Err(e) = spool.remove(segment.seq).await {
                tracing::warn!(sink = %self.sink.name(), error = %e.kind(), "log spool cleanup failed");
                return;
            }
            if let Some(chunk) = &abandoned {
                // Keep only what was not delivered (fewer duplicates later).
                let out = spool.append(chunk).await;
                self.counters.add_dropped(out.dropped);
            }
            self.counters
                .in_spool
                .store(spool.pending_records(), Ordering::Relaxed);
            if abandoned.is_some() {
                return;
            }
        }
    }

    /// Shutdown: drain the queue, deliver until the stop deadline, spool (or
    /// count) the rest, replay the spool if time allows, flush the sink.
    async fn finish(mut self, batch: Vec<Arc<LogRecord>>, d: Deadlines) {
        self.rx.close();
        let mut pending = std::mem::take(&mut self.leftover);
        pending.extend(batch);
        while let Ok(r) = self.rx.try_recv() {
            pending.push(r);
        }
        let mut undelivered = Vec::new();
        while !pending.is_empty() {
            let take = chunk_len(&pending, &self.settings);
            let tail = pending.split_off(take);
            match self.deliver(pending).await {
                Delivery::Done => pending = tail,
                Delivery::Abandoned(mut chunk) => {
                    chunk.extend(tail);
                    undelivered = chunk;
                    break;
                }
            }
        }
        if !undelivered.is_empty() {
            let n = undelivered.len() as u64;
            let mut guard = self.spool.lock().await;
            match guard.as_mut() {
                Some(spool) => {
                    let out = spool.append(&undelivered).await;
                    self.counters
                        .spooled
                        .fetch_add(out.written, Ordering::Relaxed);
                    self.counters
                        .in_spool
                        .store(spool.pending_records(), Ordering::Relaxed);
                    self.counters.add_dropped(out.dropped);
                }
                None => self.counters.add_dropped(n),
            }
        } else if self.healthy {
            self.replay().await;
        }
        // Everything taken from the queue is delivered, spooled or counted.
        self.counters.held.store(0, Ordering::Relaxed);
        match tokio::time::timeout_at(d.hard, self.sink.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                self.counters.set_error(&e);
                tracing::warn!(sink = %self.sink.name(), error = %e, "log sink flush failed");
            }
            Err(_) => {
                tracing::warn!(sink = %self.sink.name(), "log sink flush hit the shutdown deadline")
            }
        }
        self.count_lost();
    }

    /// Moves records the sink lost after accepting them from `delivered`
    /// to `dropped`.
    fn count_lost(&self) {
        let Some((n, why)) = self.sink.take_lost() else {
            return;
        };
        let _ = self
            .counters
            .delivered
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| {
                Some(d.saturating_sub(n))
            });
        self.counters.set_error(&SinkError::Permanent(why));
        self.counters.add_dropped(n);
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// How many records from the front of `records` make one batch.
fn chunk_len(records: &[Arc<LogRecord>], s: &BatchSettings) -> usize {
    let mut bytes = 0;
    for (i, r) in records.iter().enumerate() {
        bytes += estimated_size(r);
        if i + 1 >= s.max_records || bytes >= s.max_bytes {
            return i + 1;
        }
    }
    records.len()
}

/// Capped exponential backoff with full jitter: uniform in
/// `[0, min(max, initial * 2^attempt)]`.
pub fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let cap = initial.saturating_mul(1u32 << attempt.min(20)).min(max);
    let mut b = [0u8; 8];
    match getrandom::getrandom(&mut b) {
        Ok(()) => {
            let unit = (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64;
            cap.mul_f64(unit)
        }
        Err(_) => cap / 2,
    }
}

/// A cheap estimate of a record's JSON size, used for `max_bytes`.
pub fn estimated_size(r: &LogRecord) -> usize {
    fn s(o: &Option<String>) -> usize {
        o.as_ref().map_or(0, |s| s.len() + 16)
    }
    fn body(b: &Option<CapturedBody>) -> usize {
        b.as_ref().map_or(0, |b| {
            64 + s(&b.text) + s(&b.base64) + b.sse_raw.iter().map(|x| x.len() + 4).sum::<usize>()
        })
    }
    fn headers(h: &Option<Vec<(String, String)>>) -> usize {
        h.as_ref()
            .map_or(0, |h| h.iter().map(|(k, v)| k.len() + v.len() + 8).sum())
    }
    320 + r.request_id.len()
        + r.started_at.len()
        + r.client_ip.len()
        + r.method.len()
        + r.path.len()
        + r.query.len()
        + s(&r.provider)
        + s(&r.kid)
        + s(&r.jti)
        + s(&r.sub)
        + s(&r.ext_info)
        + s(&r.model_requested)
        + s(&r.model_sent)
        + s(&r.error_code)
        + body(&r.request_body)
        + body(&r.response_body)
        + headers(&r.request_headers)
        + headers(&r.response_headers)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::logs::sinks::SinkFuture;

    #[test]
    fn backoff_is_capped_and_jittered() {
        let init = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for attempt in 0..40 {
            let d = backoff(attempt, init, max);
            assert!(d <= max);
            assert!(d <= init * 2u32.pow(attempt.min(10)));
        }
        let samples: std::collections::HashSet<_> =
            (0..20).map(|_| backoff(5, init, max)).collect();
        assert!(samples.len() > 1, "jitter");
    }

    #[test]
    fn size_estimate_is_not_below_json_size_for_plain_records() {
        let r = LogRecord {
            request_id: "req_1".into(),
            path: "/v1/chat".into(),
            ..Default::default()
        };
        assert!(estimated_size(&r) >= serde_json::to_vec(&r).unwrap().len());
    }

    /// Records every batch; fails retryably the first `fail` calls.
    struct Memory {
        batches: Mutex<Vec<usize>>,
        fail: AtomicU64,
    }

    fn memory(fail: u64) -> Arc<Memory> {
        Arc::new(Memory {
            batches: Mutex::new(Vec::new()),
            fail: AtomicU64::new(fail),
        })
    }
    impl Sink for Memory {
        fn name(&self) -> &str {
            "memory"
        }
        fn write_batch<'a>(&'a self, batch: &'a [Arc<LogRecord>]) -> SinkFuture<'a> {
            Box::pin(async move {
                if self.fail.load(Ordering::SeqCst) > 0 {
                    self.fail.fetch_sub(1, Ordering::SeqCst);
                    return Err(SinkError::Retryable("down".into()));
                }
                self.batches.lock().unwrap().push(batch.len());
                Ok(())
            })
        }
    }

    #[tokio::test]
    async fn batches_by_count_and_delay_and_retries_same_batch() {
        let sink = memory(2);
        let p = LogPipeline::start(
            vec![sink.clone() as Arc<dyn Sink>],
            BatchSettings {
                max_records: 4,
                max_delay: Duration::from_millis(100),
                retry_initial: Duration::from_millis(10),
                retry_max: Duration::from_millis(20),
                ..Default::default()
            },
        );
        for i in 0..6 {
            p.push(Arc::new(LogRecord {
                request_id: format!("r{i}"),
                ..Default::default()
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(*sink.batches.lock().unwrap(), vec![4, 2]);
        let st = &p.stats()[0];
        assert_eq!((st.delivered, st.retries, st.dropped), (6, 2, 0));
        // The retried error is history: a delivery came after it.
        assert!(
            st.last_delivered_at.as_deref() >= st.last_error_at.as_deref(),
            "{st:?}"
        );
        assert!(st.last_delivered_at.is_some());
        let report = p.shutdown(Duration::from_secs(1)).await;
        assert_eq!(report.undelivered, 0);
        assert!(!report.timed_out);
    }

    /// Accepts every batch, then reports the last one lost.
    struct Forgetful(AtomicU64);

    impl Sink for Forgetful {
        fn name(&self) -> &str {
            "forgetful"
        }
        fn write_batch<'a>(&'a self, batch: &'a [Arc<LogRecord>]) -> SinkFuture<'a> {
            self.0.store(batch.len() as u64, Ordering::SeqCst);
            Box::pin(async { Ok(()) })
        }
        fn take_lost(&self) -> Option<(u64, String)> {
            let n = self.0.swap(0, Ordering::SeqCst);
            (n > 0).then(|| (n, format!("{n} records lost: disk gone")))
        }
    }

    #[tokio::test]
    async fn records_a_sink_loses_after_accepting_them_count_as_dropped() {
        let p = LogPipeline::start(
            vec![Arc::new(Forgetful(AtomicU64::new(0))) as Arc<dyn Sink>],
            BatchSettings {
                max_records: 3,
                max_delay: Duration::from_millis(10),
                ..Default::default()
            },
        );
        for _ in 0..3 {
            p.push(Arc::new(LogRecord::default()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let st = &p.stats()[0];
        assert_eq!((st.delivered, st.dropped), (0, 3), "{st:?}");
        assert!(
            st.last_error.as_deref().unwrap().contains("disk gone"),
            "{st:?}"
        );
        p.shutdown(Duration::from_millis(300)).await;
    }

    #[tokio::test]
    async fn queued_counts_every_record_taken_but_not_delivered() {
        // A full batch is being retried and more were taken behind it.
        let sink = memory(u64::MAX);
        let p = LogPipeline::start(
            vec![sink.clone() as Arc<dyn Sink>],
            BatchSettings {
                max_records: 4,
                max_delay: Duration::from_millis(10),
                retry_initial: Duration::from_millis(10),
                retry_max: Duration::from_millis(20),
                ..Default::default()
            },
        );
        for _ in 0..10 {
            p.push(Arc::new(LogRecord::default()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let st = &p.stats()[0];
        assert!(st.retries > 0, "{st:?}");
        assert_eq!((st.queued, st.delivered, st.dropped), (10, 0, 0), "{st:?}");
        // Healthy again: all delivered, nothing held.
        sink.fail.store(0, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let st = &p.stats()[0];
        assert_eq!((st.queued, st.delivered), (0, 10), "{st:?}");
        p.shutdown(Duration::from_millis(300)).await;
    }

    /// Accepts a batch and never answers.
    struct Hanging;
    impl Sink for Hanging {
        fn name(&self) -> &str {
            "hanging"
        }
        fn write_batch<'a>(&'a self, _: &'a [Arc<LogRecord>]) -> SinkFuture<'a> {
            Box::pin(std::future::pending())
        }
    }

    #[tokio::test]
    async fn a_write_hanging_at_shutdown_is_cut_at_the_stop_deadline_and_spooled() {
        let dir = tempfile::tempdir().unwrap();
        let p = LogPipeline::start(
            vec![Arc::new(Hanging) as Arc<dyn Sink>],
            BatchSettings {
                max_records: 500,
                max_delay: Duration::from_millis(10),
                spool_dir: Some(dir.path().to_path_buf()),
                ..Default::default()
            },
        );
        for i in 0..50 {
            p.push(Arc::new(LogRecord {
                request_id: format!("r{i}"),
                ..Default::default()
            }));
        }
        // The batch is in flight (hanging) when shutdown starts.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(p.stats()[0].queued, 50);
        let started = Instant::now();
        let report = p.shutdown(Duration::from_secs(1)).await;
        assert!(
            started.elapsed() < Duration::from_millis(1100),
            "{:?}",
            started.elapsed()
        );
        assert!(!report.timed_out, "{report:?}");
        let st = &report.sinks[0];
        assert_eq!((st.in_spool, st.dropped, st.queued), (50, 0, 0), "{st:?}");
    }

    #[tokio::test]
    async fn queued_counts_records_waiting_for_the_spool_writer() {
        let dir = tempfile::tempdir().unwrap();
        let sink = memory(u64::MAX);
        let p = LogPipeline::start(
            vec![sink.clone() as Arc<dyn Sink>],
            BatchSettings {
                queue_capacity: 1,
                max_delay: Duration::from_millis(10),
                retry_initial: Duration::from_millis(10),
                retry_max: Duration::from_millis(20),
                spool_dir: Some(dir.path().to_path_buf()),
                ..Default::default()
            },
        );
        // No task has run yet (one thread): one record in the queue, the
        // rest in the spool channel.
        for _ in 0..20 {
            p.push(Arc::new(LogRecord::default()));
        }
        let st = &p.stats()[0];
        assert_eq!((st.queued, st.in_spool, st.dropped), (20, 0, 0), "{st:?}");
        // Written to the spool: counted there, not twice.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let st = &p.stats()[0];
        assert_eq!((st.queued, st.in_spool, st.dropped), (1, 19, 0), "{st:?}");
        sink.fail.store(0, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let st = &p.stats()[0];
        assert_eq!((st.queued, st.in_spool, st.delivered), (0, 0, 20), "{st:?}");
        p.shutdown(Duration::from_millis(300)).await;
    }

    #[tokio::test]
    async fn no_spool_overflow_drops_are_counted_and_push_after_shutdown_too() {
        let sink = memory(u64::MAX);
        let p = LogPipeline::start(
            vec![sink.clone() as Arc<dyn Sink>],
            BatchSettings {
                queue_capacity: 5,
                max_records: 1,
                ..Default::default()
            },
        );
        let p2 = p.clone();
        for _ in 0..100 {
            p.push(Arc::new(LogRecord::default()));
        }
        tokio::task::yield_now().await;
        let report = p.shutdown(Duration::from_millis(500)).await;
        p2.push(Arc::new(LogRecord::default()));
        let st = &p2.stats()[0];
        assert_eq!(st.delivered, 0);
        assert_eq!(st.dropped, 101, "{report:?}");
    }
}
