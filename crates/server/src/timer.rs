//! A coarse timer for the request path's long timeouts: hyper's header read
//! timeout and the upstream first-byte timeout.
//!
//! Why: both are armed and disarmed on every request and almost never fire.
//! With tokio's timer each arming links an entry into the runtime's timer
//! wheel and each disarming unlinks it, which profiles showed at several
//! percent of the relay's CPU per request. Here arming is a slot in a
//! per-worker table and disarming frees it; one ticker task per worker
//! wakes what has expired every [`GRANULARITY`]. A deadline therefore fires
//! up to one tick late, which nobody notices on timeouts of seconds.
//!
//! The table lives in a thread local and belongs to the worker thread that
//! runs [`run_ticker`]. A [`Sleep`] polled on any other thread (the control
//! runtime, tests) quietly uses an ordinary tokio sleep instead.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How late a coarse deadline may fire: the ticker's period.
pub const GRANULARITY: Duration = Duration::from_millis(20);

thread_local! {
    static TABLE: RefCell<Option<Table>> = const { RefCell::new(None) };
}

/// Tells tables apart, so a sleep never frees a slot in another thread's.
static NEXT_TABLE_ID: AtomicU64 = AtomicU64::new(1);

/// The armed deadlines of one worker thread.
struct Table {
    id: u64,
    armed: slab::Slab<Armed>,
    /// The ticker, when it parked because nothing was armed.
    ticker: Option<Waker>,
}

struct Armed {
    deadline: Instant,
    waker: Waker,
}

impl Table {
    fn arm(&mut self, deadline: Instant, waker: Waker) -> usize {
        let slot = self.armed.insert(Armed { deadline, waker });
        if let Some(ticker) = self.ticker.take() {
            ticker.wake();
        }
        slot
    }

    fn disarm(&mut self, slot: usize) {
        self.armed.try_remove(slot);
        crate::alloc::release_emptied(&mut self.armed);
    }

    /// Wakes every sleep whose deadline has passed (it then sees so itself
    /// and completes; its slot is freed when it is dropped or polled).
    fn wake_expired(&mut self, now: Instant) {
        for (_, s) in &self.armed {
            if s.deadline <= now {
                s.waker.wake_by_ref();
            }
        }
    }
}

/// Runs this thread's table until the runtime stops: spawn it once at the
/// start of each worker, on the worker's own single-threaded runtime.
pub async fn run_ticker() {
    let id = NEXT_TABLE_ID.fetch_add(1, Ordering::Relaxed);
    TABLE.with(|t| {
        *t.borrow_mut() = Some(Table {
            id,
            armed: slab::Slab::new(),
            ticker: None,
        });
    });
    loop {
        // Park while nothing is armed (an idle worker does not tick).
        std::future::poll_fn(|cx| {
            TABLE.with(|t| match t.borrow_mut().as_mut() {
                Some(table) if table.armed.is_empty() => {
                    table.ticker = Some(cx.waker().clone());
                    Poll::Pending
                }
                _ => Poll::Ready(()),
            })
        })
        .await;
        tokio::time::sleep(GRANULARITY).await;
        let now = Instant::now();
        TABLE.with(|t| {
            if let Some(table) = t.borrow_mut().as_mut() {
                table.wake_expired(now);
            }
        });
    }
}

/// Completes at (or up to [`GRANULARITY`] after) its deadline.
#[derive(Debug)]
pub struct Sleep {
    deadline: Instant,
    /// (table id, slot) while armed in a worker's table.
    slot: Option<(u64, usize)>,
    /// Used on a thread without a table.
    fallback: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Sleep {
    pub fn until(deadline: Instant) -> Sleep {
        Sleep {
            deadline,
            slot: None,
            fallback: None,
        }
    }

    /// Moves the deadline (earlier or later).
    pub fn reset(&mut self, deadline: Instant) {
        self.deadline = deadline;
        if let Some(f) = self.fallback.as_mut() {
            f.as_mut().reset(deadline.into());
        }
        if let Some((id, slot)) = self.slot {
            with_table(id, |t| {
                if let Some(armed) = t.armed.get_mut(slot) {
                    armed.deadline = deadline;
                }
            });
        }
    }

    fn disarm(&mut self) {
        if let Some((id, slot)) = self.slot.take() {
            with_table(id, |t| t.disarm(slot));
        }
    }
}

/// Runs `f` on this thread's table if it is table `id`.
fn with_table(id: u64, f: impl FnOnce(&mut Table)) {
    // `try_with`: a sleep dropped while the thread exits finds no table.
    let _ = TABLE.try_with(|t| {
        if let Ok(mut t) = t.try_borrow_mut() {
            if let Some(table) = t.as_mut().filter(|table| table.id == id) {
                f(table);
            }
        }
    });
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if let Some(f) = this.fallback.as_mut() {
            return f.as_mut().poll(cx);
        }
        if Instant::now() >= this.deadline {
            this.disarm();
            return Poll::Ready(());
        }
        let deadline = this.deadline;
        let armed = TABLE.try_with(|t| {
            let mut t = t.try_borrow_mut().ok()?;
            let table = t.as_mut()?;
            match this.slot {
                Some((id, slot)) if id == table.id => {
                    if let Some(a) = table.armed.get_mut(slot) {
                        if !a.waker.will_wake(cx.waker()) {
                            a.waker = cx.waker().clone();
                        }
                    }
                    Some(())
                }
                // Moved to another thread: never the case for the relay's
                // connections; the fallback below covers it anyway.
                Some(_) => None,
                None => {
                    let slot = table.arm(deadline, cx.waker().clone());
                    this.slot = Some((table.id, slot));
                    Some(())
                }
            }
        });
        if armed.ok().flatten().is_some() {
            return Poll::Pending;
        }
        this.disarm();
        let fallback = this
            .fallback
            .insert(Box::pin(tokio::time::sleep_until(deadline.into())));
        fallback.as_mut().poll(cx)
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.disarm();
    }
}

/// hyper's [`hyper::rt::Timer`] on [`Sleep`] (for the HTTP/1 header read
/// timeout, armed for every request).
#[derive(Debug, Clone, Copy, Default)]
pub struct CoarseTimer;

impl hyper::rt::Sleep for Sleep {}

impl hyper::rt::Timer for CoarseTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Sleep::until(Instant::now() + duration))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Sleep::until(deadline))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<Sleep>() {
            Some(ours) => ours.get_mut().reset(new_deadline),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

/// The deadline passed before the future completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

pin_project_lite::pin_project! {
    /// [`timeout`]'s future.
    pub struct Timeout<F> {
        #[pin]
        future: F,
        sleep: Sleep,
    }
}

/// `future`, or [`Elapsed`] when it takes longer than `duration` (plus up
/// to [`GRANULARITY`]).
pub fn timeout<F: Future>(duration: Duration, future: F) -> Timeout<F> {
    Timeout {
        future,
        sleep: Sleep::until(Instant::now() + duration),
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.future.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match Pin::new(this.sleep).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn armed() -> usize {
        TABLE.with(|t| t.borrow().as_ref().map_or(0, |t| t.armed.len()))
    }

    fn current_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn fires_at_the_deadline_within_a_tick_and_frees_its_slot() {
        current_thread().block_on(async {
            tokio::spawn(run_ticker());
            tokio::task::yield_now().await;
            let started = Instant::now();
            Sleep::until(started + Duration::from_millis(60)).await;
            let took = started.elapsed();
            assert!(took >= Duration::from_millis(60), "{took:?}");
            assert!(
                took < Duration::from_millis(60) + 5 * GRANULARITY,
                "{took:?}"
            );
            assert_eq!(armed(), 0);
        });
    }

    #[test]
    fn a_dropped_or_reset_sleep_is_disarmed_or_moved() {
        current_thread().block_on(async {
            tokio::spawn(run_ticker());
            tokio::task::yield_now().await;
            let far = Instant::now() + Duration::from_secs(3600);
            let mut a = Box::pin(Sleep::until(far));
            let mut b = Box::pin(Sleep::until(far));
            let waker = futures_util::task::noop_waker();
            let mut cx = Context::from_waker(&waker);
            assert!(a.as_mut().poll(&mut cx).is_pending());
            assert!(b.as_mut().poll(&mut cx).is_pending());
            assert_eq!(armed(), 2);
            drop(a);
            assert_eq!(armed(), 1);
            // Reset to the near future: it now fires soon.
            let started = Instant::now();
            b.as_mut()
                .get_mut()
                .reset(started + Duration::from_millis(30));
            b.await;
            assert!(started.elapsed() < Duration::from_secs(1));
            assert_eq!(armed(), 0);
        });
    }

    #[test]
    fn a_table_emptied_after_a_burst_gives_its_memory_back() {
        let capacity = || TABLE.with(|t| t.borrow().as_ref().map_or(0, |t| t.armed.capacity()));
        current_thread().block_on(async {
            tokio::spawn(run_ticker());
            tokio::task::yield_now().await;
            let far = Instant::now() + Duration::from_secs(3600);
            let waker = futures_util::task::noop_waker();
            let mut cx = Context::from_waker(&waker);
            let mut burst: Vec<_> = (0..3 * crate::alloc::KEEP_SLOTS)
                .map(|_| Box::pin(Sleep::until(far)))
                .collect();
            for s in &mut burst {
                assert!(s.as_mut().poll(&mut cx).is_pending());
            }
            assert!(capacity() >= 3 * crate::alloc::KEEP_SLOTS);
            let last = burst.pop();
            drop(burst);
            // One left armed: the slots cannot move, so the table stays.
            assert!(capacity() >= 3 * crate::alloc::KEEP_SLOTS);
            drop(last);
            assert_eq!(capacity(), 0);
            // A small table is kept as it is when it empties.
            let mut one = Box::pin(Sleep::until(far));
            assert!(one.as_mut().poll(&mut cx).is_pending());
            drop(one);
            assert!(capacity() > 0);
        });
    }

    #[test]
    fn timeout_passes_a_quick_future_and_cuts_a_slow_one() {
        current_thread().block_on(async {
            tokio::spawn(run_ticker());
            tokio::task::yield_now().await;
            assert_eq!(timeout(Duration::from_secs(5), async { 7 }).await, Ok(7));
            let slow = tokio::time::sleep(Duration::from_secs(3600));
            let started = Instant::now();
            assert_eq!(timeout(Duration::from_millis(50), slow).await, Err(Elapsed));
            assert!(started.elapsed() >= Duration::from_millis(50));
            assert_eq!(armed(), 0);
        });
    }

    #[tokio::test]
    async fn without_a_ticker_it_is_a_plain_tokio_sleep() {
        let started = Instant::now();
        Sleep::until(started + Duration::from_millis(30)).await;
        assert!(started.elapsed() >= Duration::from_millis(30));
        let mut s = Sleep::until(started + Duration::from_secs(3600));
        s.reset(Instant::now() + Duration::from_millis(10));
        s.await;
        assert!(started.elapsed() < Duration::from_secs(60));
    }

    #[test]
    fn hyper_timer_resets_its_own_sleeps_in_place() {
        use hyper::rt::Timer;
        current_thread().block_on(async {
            tokio::spawn(run_ticker());
            tokio::task::yield_now().await;
            let timer = CoarseTimer;
            let mut s = timer.sleep(Duration::from_secs(3600));
            let started = Instant::now();
            timer.reset(&mut s, started + Duration::from_millis(20));
            s.await;
            assert!(started.elapsed() < Duration::from_secs(1));
        });
    }
}
