//! The listener: accept connections, serve HTTP/1.1 and HTTP/2 (h2c) on
//! each, and shut down gracefully.
//!
//! Layout: thread per core. [`serve`] starts one worker thread per CPU
//! ([`worker_count`]), each running its own single-threaded tokio runtime
//! that accepts on a shared listening socket and serves its connections
//! start to finish: the client connection, the request path and the pooled
//! upstream connection (each worker has its own pool, see
//! [`crate::upstream::Upstream`]) all live on one thread. A request therefore
//! never hops between threads, which on a small machine was the largest
//! avoidable cost: with a work-stealing runtime, every readiness event woke
//! whichever thread was parked, and wake-ups and context switches took more
//! CPU than the relay's own work. The runtime that calls [`serve`] keeps the
//! control work: signals, key reloads, the log pipeline, shutdown.
//!
//! Balance: all workers accept from the same socket (no `SO_REUSEPORT`, so
//! a second relay on the same port still fails to start instead of silently
//! sharing the traffic). Whoever wakes first takes a connection; a worker
//! that already holds more open connections than the least loaded one
//! hands the new connection over to it (an in-process queue), so long-lived
//! keep-alive and streaming connections spread evenly.
//!
//! Protocols: HTTP/1.1, and h2c when the client opens with the HTTP/2
//! preface — found by peeking at the first bytes, so hyper reads the stream
//! from its start into its own buffer (no copied prefix, no second buffer).
//!
//! Shutdown order: stop accepting → let in-flight requests (streams
//! included) finish for at most `server.shutdown_grace` (less a reserve for
//! the log flush when logging is on) → flush the log sinks in what is left
//! → close the usage store (its last writes are committed before the
//! process exits).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

use crate::http::{handle, AppState};

/// hyper refuses header buffers below this size.
const MIN_HEADER_BUF: usize = 8192;
/// Connections handed over but not yet picked up, per worker. When full the
/// accepting worker serves the connection itself.
const HANDOFF_QUEUE: usize = 256;

/// Worker threads [`serve`] starts: one per CPU the process may use
/// (cgroup quotas and affinity included), at least one.
pub fn worker_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

thread_local! {
    /// This thread's worker number; 0 outside the workers.
    static WORKER_INDEX: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The calling thread's worker number (0 on threads that are not workers).
/// Per-worker resources — the upstream pool, the usage store's queue — are
/// picked by it, so a request only ever touches its own thread's.
pub fn worker_index() -> usize {
    WORKER_INDEX.with(std::cell::Cell::get)
}

/// Makes the calling thread worker `index` (done by each worker at start).
pub(crate) fn set_worker_index(index: usize) {
    WORKER_INDEX.with(|i| i.set(index));
}

/// A connection accepted by one worker for another.
type Handoff = (std::net::TcpStream, SocketAddr);

/// What the workers share to keep their load even.
struct Balance {
    /// Open connections per worker.
    open: Box<[AtomicUsize]>,
    /// Each worker's queue of connections handed over to it.
    inbox: Box<[mpsc::Sender<Handoff>]>,
}

impl Balance {
    /// The worker `me` should pass a new connection to, if one holds at
    /// least two fewer connections (a difference of one is as even as
    /// an odd count gets).
    fn less_loaded_than(&self, me: usize) -> Option<usize> {
        let mine = self.open[me].load(Ordering::Relaxed);
        let (other, load) = self
            .open
            .iter()
            .enumerate()
            .map(|(i, n)| (i, n.load(Ordering::Relaxed)))
            .min_by_key(|&(_, n)| n)?;
        (other != me && load + 1 < mine).then_some(other)
    }
}

/// Counts one open connection of a worker, until dropped. A connection
/// counts for the worker that will serve it from the moment it is assigned
/// (accepted, or put in its inbox), so a burst of new connections is spread
/// by the counts it has already moved.
struct OpenConnection {
    balance: Arc<Balance>,
    worker: usize,
}

impl OpenConnection {
    fn new(balance: &Arc<Balance>, worker: usize) -> Self {
        balance.open[worker].fetch_add(1, Ordering::Relaxed);
        Self::counted(balance, worker)
    }

    /// For a connection already counted (handed over).
    fn counted(balance: &Arc<Balance>, worker: usize) -> Self {
        Self {
            balance: balance.clone(),
            worker,
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.balance.open[self.worker].fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves `listener` on [`worker_count`] worker threads until `shutdown`
/// resolves, then drains and closes. Call from the control runtime; it only
/// waits here.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
) {
    serve_with_workers(listener, state, worker_count(), shutdown).await;
}

/// [`serve`] with an explicit number of worker threads.
pub async fn serve_with_workers(
    listener: TcpListener,
    state: Arc<AppState>,
    workers: usize,
    shutdown: impl Future<Output = ()>,
) {
    let workers = workers.max(1);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (senders, mut receivers): (Vec<_>, Vec<_>) =
        (0..workers).map(|_| mpsc::channel(HANDOFF_QUEUE)).unzip();
    let balance = Arc::new(Balance {
        open: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
        inbox: senders.into_boxed_slice(),
    });

    let mut done = Vec::with_capacity(workers);
    match listener.into_std() {
        Ok(shared) => {
            for (i, inbox) in receivers.drain(..).enumerate() {
                let started = shared.try_clone().map_err(|e| e.to_string()).and_then(|l| {
                    spawn_worker(i, l, inbox, state.clone(), balance.clone(), stop_rx.clone())
                });
                match started {
                    Ok(rx) => done.push(rx),
                    Err(e) => {
                        tracing::error!(worker = i, error = %e, "worker thread did not start")
                    }
                }
            }
            if done.is_empty() {
                // No thread could start: serve on this runtime instead.
                match TcpListener::from_std(shared) {
                    Ok(l) => {
                        let (tx, rx) = oneshot::channel();
                        let (inbox_tx, inbox) = mpsc::channel(1);
                        let alone = Arc::new(Balance {
                            open: Box::new([AtomicUsize::new(0)]),
                            inbox: Box::new([inbox_tx]),
                        });
                        let w = worker(0, l, inbox, state.clone(), alone, stop_rx);
                        tokio::spawn(async move {
                            w.await;
                            let _ = tx.send(());
                        });
                        done.push(rx);
                    }
                    Err(e) => tracing::error!(error = %e, "cannot serve the listener"),
                }
            }
            // `shared` (or its last clone) closes with the workers' copies:
            // once they stop accepting, new connections are refused.
        }
        Err(e) => tracing::error!(error = %e, "cannot hand the listener to workers"),
    }

    shutdown.await;
    let grace = state.config.server.shutdown_grace;
    tracing::info!(
        grace_secs = grace.as_secs_f64(),
        "shutting down: draining in-flight requests"
    );
    let drain_started = Instant::now();
    let _ = stop_tx.send(true);
    // Each worker drains for at most `grace`; an Err means its thread ended
    // early (a panic), which is as done as it gets.
    for rx in done {
        let _ = rx.await;
    }
    if let Some(logger) = &state.logger {
        // Every finished request's record is queued by now; flush the sinks
        // in what is left of the grace period (the drain left them at least
        // `flush_reserve`; a floor for a drain that overran).
        let left = grace
            .saturating_sub(drain_started.elapsed())
            .max(Duration::from_millis(200));
        let report = logger.pipeline.clone().shutdown(left).await;
        tracing::debug!(?report, "log sinks flushed");
    }
    if let Err(e) = state.usage.close().await {
        tracing::error!(error = %e, "usage store did not close cleanly");
    }
}

/// Starts worker `index` on its own thread with a single-threaded runtime;
/// the receiver resolves when the worker has drained and stopped.
fn spawn_worker(
    index: usize,
    listener: std::net::TcpListener,
    inbox: mpsc::Receiver<Handoff>,
    state: Arc<AppState>,
    balance: Arc<Balance>,
    stop: watch::Receiver<bool>,
) -> Result<oneshot::Receiver<()>, String> {
    let (tx, rx) = oneshot::channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    std::thread::Builder::new()
        .name(format!("relay-worker-{index}"))
        .spawn(move || {
            runtime.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(l) => worker(index, l, inbox, state, balance, stop).await,
                    Err(e) => {
                        tracing::error!(worker = index, error = %e, "cannot serve the listener")
                    }
                }
            });
            // Dropping the runtime cancels what the grace period left open.
            drop(runtime);
            let _ = tx.send(());
        })
        .map_err(|e| e.to_string())?;
    Ok(rx)
}

/// One worker: accept (or take handed-over connections), serve each
/// connection on this thread, and on stop drain for the grace period.
async fn worker(
    index: usize,
    listener: TcpListener,
    mut inbox: mpsc::Receiver<Handoff>,
    state: Arc<AppState>,
    balance: Arc<Balance>,
    mut stop: watch::Receiver<bool>,
) {
    set_worker_index(index);
    // This thread's allocator cache, returned once a second (`alloc.rs`);
    // the task ends with the worker's runtime.
    tokio::spawn(async {
        let mut tick = tokio::time::interval(crate::alloc::THREAD_CACHE_RELEASE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            crate::alloc::release_thread_cache();
        }
    });
    // Deadlines armed on this thread (header read, first byte) tick here.
    tokio::spawn(crate::timer::run_ticker());
    let builders = Arc::new(Builders::new(&state));
    let drain = Arc::new(Drain::default());
    let connection_stop = stop.clone();
    // A dropped sender (the control task is gone) also means stop.
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(stopped);

    loop {
        let (stream, peer, open) = tokio::select! {
            biased;
            () = &mut stopped => break,
            // Never closed while this worker runs: `balance` holds the sender.
            Some((handed, peer)) = inbox.recv() => {
                let open = OpenConnection::counted(&balance, index);
                match TcpStream::from_std(handed) {
                    Ok(stream) => (stream, peer, open),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot take over a connection");
                        continue;
                    }
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    match hand_over(&balance, index, stream, peer) {
                        Some((stream, peer)) => (stream, peer, OpenConnection::new(&balance, index)),
                        None => continue,
                    }
                }
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        let builders = builders.clone();
        let drain = Live::new(&drain);
        let stop = connection_stop.clone();
        tokio::spawn(async move {
            serve_connection(stream, peer, state, &builders, drain, stop).await;
            drop(open);
        });
    }

    drop(listener);
    drain.stop();
    if tokio::time::timeout(drain_budget(&state), drain.finished())
        .await
        .is_err()
    {
        state
            .grace_over
            .store(true, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(
            worker = index,
            "grace period over; closing the remaining connections"
        );
    }
}

/// Of the grace period, what the log sinks keep for their final flush: a
/// fifth, from 0.2 s to 5 s (drain and flush together fit in the grace).
fn flush_reserve(grace: Duration) -> Duration {
    (grace / 5)
        .clamp(Duration::from_millis(200), Duration::from_secs(5))
        .min(grace)
}

/// How long in-flight requests may run after a stop signal.
fn drain_budget(state: &AppState) -> Duration {
    let grace = state.config.server.shutdown_grace;
    match &state.logger {
        Some(_) => grace.saturating_sub(flush_reserve(grace)),
        None => grace,
    }
}

/// Gives a connection just accepted by worker `me` to a less loaded worker
/// if there is one; returns it when `me` should serve it.
fn hand_over(
    balance: &Balance,
    me: usize,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<(TcpStream, SocketAddr)> {
    let Some(other) = balance.less_loaded_than(me) else {
        return Some((stream, peer));
    };
    // Deregister from this thread's reactor; the other worker registers it
    // with its own.
    let std_stream = match stream.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot hand over a connection");
            return None;
        }
    };
    // Counted for the other worker now, so the next accept here already
    // sees it.
    balance.open[other].fetch_add(1, Ordering::Relaxed);
    match balance.inbox[other].try_send((std_stream, peer)) {
        Ok(()) => None,
        // The other worker is backed up (or gone): serve it here.
        Err(
            mpsc::error::TrySendError::Full((s, peer))
            | mpsc::error::TrySendError::Closed((s, peer)),
        ) => {
            balance.open[other].fetch_sub(1, Ordering::Relaxed);
            match TcpStream::from_std(s) {
                Ok(s) => Some((s, peer)),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take back a connection");
                    None
                }
            }
        }
    }
}

/// One worker's open connections, told to finish at shutdown and counted
/// until they have. Does what hyper-util's `GracefulShutdown` does, minus
/// its cost on the hot path: there every wake-up of every connection also
/// polled a watch channel; here a connection hands its task's waker over
/// once and each poll reads one flag.
#[derive(Default)]
struct Drain {
    stopping: AtomicBool,
    /// The live connections' task wakers.
    wakers: Mutex<slab::Slab<Waker>>,
    live: AtomicUsize,
    all_done: tokio::sync::Notify,
}

impl Drain {
    fn wakers(&self) -> std::sync::MutexGuard<'_, slab::Slab<Waker>> {
        // Slots are set and cleared whole; a poisoned list is still valid.
        self.wakers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn register(&self, waker: Waker) -> usize {
        self.wakers().insert(waker)
    }

    fn deregister(&self, slot: usize) {
        let mut wakers = self.wakers();
        wakers.try_remove(slot);
        crate::alloc::release_emptied(&mut *wakers);
    }

    /// Tells every connection, now and later, to finish its current
    /// exchange and close.
    fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        for (_, waker) in self.wakers().iter() {
            waker.wake_by_ref();
        }
    }

    /// Resolves once no connection is left.
    async fn finished(&self) {
        loop {
            let notified = self.all_done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.live.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Counts one connection of a [`Drain`] from its accept until dropped
/// (protocol detection included, so shutdown waits for it too).
struct Live(Arc<Drain>);

impl Live {
    fn new(drain: &Arc<Drain>) -> Self {
        drain.live.fetch_add(1, Ordering::AcqRel);
        Self(drain.clone())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.all_done.notify_waiters();
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection that finishes gracefully once its [`Drain`] stops.
    struct Drained<C> {
        #[pin]
        conn: C,
        live: Live,
        slot: Option<usize>,
        told: bool,
    }
    impl<C> PinnedDrop for Drained<C> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(slot) = this.slot.take() {
                this.live.0.deregister(slot);
            }
        }
    }
}

impl<C> Drained<C> {
    fn new(conn: C, live: Live) -> Self {
        Self {
            conn,
            live,
            slot: None,
            told: false,
        }
    }
}

impl<C: GracefulConnection> Future for Drained<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let mut this = self.project();
        let drain = &this.live.0;
        if this.slot.is_none() {
            // A task's waker stays the same for its life: registered once,
            // before the flag is read (so a stop in between still wakes it).
            *this.slot = Some(drain.register(cx.waker().clone()));
        }
        if !*this.told && drain.stopping.load(Ordering::Acquire) {
            *this.told = true;
            this.conn.as_mut().graceful_shutdown();
        }
        this.conn.poll(cx)
    }
}

/// The HTTP/1.1 and h2c connection settings, from the config.
struct Builders {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    /// How long a new connection may stay silent before its first bytes.
    first_bytes: Duration,
}

impl Builders {
    fn new(state: &AppState) -> Self {
        let server = &state.config.server;
        let mut http1 = http1::Builder::new();
        http1
            .timer(crate::timer::CoarseTimer)
            .header_read_timeout(server.read_timeout)
            .max_buf_size(server.max_header_bytes.max(MIN_HEADER_BUF))
            .keep_alive(true);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            // HPACK counts 32 bytes more per header than the relay's own
            // (exact) check, which answers 431 in JSON; h2 itself can only
            // reset the stream, so its limit sits above the relay's.
            .max_header_list_size(
                u32::try_from(server.max_header_bytes.saturating_mul(2)).unwrap_or(u32::MAX),
            );
        Self {
            http1,
            http2,
            first_bytes: server.read_timeout,
        }
    }
}

/// The HTTP/2 connection preface (RFC 9113 §3.4), sent first by a client
/// speaking h2c with prior knowledge.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves one connection as HTTP/1.1 or h2c, watched for graceful shutdown.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    state: Arc<AppState>,
    builders: &Builders,
    drain: Live,
    mut stop: watch::Receiver<bool>,
) {
    // Which protocol, by peeking at the first bytes (nothing is consumed:
    // hyper reads the stream from its start, straight into its own buffer).
    // A connection still silent at shutdown is closed, like an idle one.
    let detect = tokio::time::timeout(builders.first_bytes, is_h2c(&stream));
    let h2 = tokio::select! {
        detected = detect => match detected {
            Ok(Ok(h2)) => h2,
            Ok(Err(e)) => {
                tracing::trace!(error = %e, "connection failed before its first request");
                return;
            }
            Err(_) => {
                tracing::debug!("connection sent nothing within server.read_timeout; closed");
                return;
            }
        },
        _ = stop.wait_for(|s| *s) => return,
    };
    // Boxed: hyper keeps a connection's in-flight future in one heap slot
    // for the connection's whole life, sized for the future. Boxing makes
    // that slot a pointer, and the request path's large state is freed as
    // soon as the response head is out, not when the stream ends.
    let service = service_fn(move |req| Box::pin(handle(state.clone(), peer, req)));
    let io = TokioIo::new(stream);
    let result = if h2 {
        Drained::new(builders.http2.serve_connection(io, service), drain).await
    } else {
        Drained::new(builders.http1.serve_connection(io, service), drain).await
    };
    if let Err(e) = result {
        tracing::trace!(error = %e, "connection ended with an error");
    }
}

/// True when the client opened with the HTTP/2 preface; false for anything
/// else (HTTP/1.x, garbage, or a closed connection, which hyper then sees).
async fn is_h2c(stream: &TcpStream) -> std::io::Result<bool> {
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 || buf[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        // Only part of the preface so far. A peek returns at once while any
        // data is waiting, so wait a little before looking again (clients
        // send the preface in one write; this is the rare split case).
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn balance(open: &[usize]) -> Balance {
        Balance {
            open: open.iter().map(|&n| AtomicUsize::new(n)).collect(),
            inbox: open.iter().map(|_| mpsc::channel(1).0).collect(),
        }
    }

    #[test]
    fn the_drain_list_gives_its_memory_back_once_a_burst_is_over() {
        let drain = Drain::default();
        let waker = futures_util::task::noop_waker();
        let burst = crate::alloc::KEEP_SLOTS * 3;
        let slots: Vec<usize> = (0..burst).map(|_| drain.register(waker.clone())).collect();
        assert!(drain.wakers().capacity() >= burst);
        for &slot in &slots[1..] {
            drain.deregister(slot);
        }
        assert!(
            drain.wakers().capacity() >= burst,
            "a live slot keeps the list"
        );
        drain.deregister(slots[0]);
        assert_eq!(drain.wakers().capacity(), 0);
        // A small list stays allocated when it empties.
        let slot = drain.register(waker);
        drain.deregister(slot);
        assert!(drain.wakers().capacity() > 0);
    }

    #[test]
    fn hands_over_only_when_clearly_busier() {
        assert_eq!(balance(&[0, 0]).less_loaded_than(0), None);
        assert_eq!(balance(&[1, 0]).less_loaded_than(0), None);
        assert_eq!(balance(&[2, 0]).less_loaded_than(0), Some(1));
        assert_eq!(balance(&[5, 9, 3]).less_loaded_than(1), Some(2));
        assert_eq!(balance(&[3]).less_loaded_than(0), None);
    }
}
