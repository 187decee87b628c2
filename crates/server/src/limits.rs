//! Traffic limits checked before any token decryption: one global rate and
//! one rate per client IP, so floods are refused before we spend any crypto.
//!
//! Both use GCRA (the generic cell rate algorithm), which admits exactly what
//! a token bucket with rate `r`/s and capacity `b` admits, but keeps a single
//! number per key: the "theoretical arrival time" (TAT), in nanoseconds since
//! a fixed [`Instant`] origin owned by the limiter.
//!
//! Invariant: over any window of length `t` starting from an idle state, a
//! limiter admits at most `burst + per_second * t` requests for one key, also
//! under concurrency (the global TAT is updated by compare-and-swap; each
//! per-IP TAT is updated under its shard lock). Memory per-IP is bounded by
//! `max_tracked`; losing state only ever errs in the client's favour.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A rate: `per_second` sustained, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateSpec {
    /// Sustained rate; must be > 0 (non-positive or NaN values are treated as
    /// the slowest representable rate rather than panicking).
    pub per_second: f64,
    /// Requests admitted back to back from idle; 0 is treated as 1.
    pub burst: u32,
}

/// How long the client should wait before the next request can be admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

impl RetryAfter {
    /// Whole seconds for the `Retry-After` header, rounded up, at least 1
    /// (a 0 would invite an immediate retry that is refused again).
    pub fn secs_ceil(&self) -> u64 {
        let secs = self.0.as_secs() + u64::from(self.0.subsec_nanos() > 0);
        secs.max(1)
    }
}

/// GCRA parameters in nanoseconds, precomputed so a check is integer math.
/// Also used by the per-token `rps` limiter (`policy::rate`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Gcra {
    /// Emission interval: 1 / rate.
    interval: u64,
    /// Burst tolerance: interval * (burst - 1). A request is admitted when
    /// `max(tat, now) - now <= tolerance`.
    tolerance: u64,
}

impl Gcra {
    pub(crate) fn new(spec: RateSpec) -> Self {
        let per_second = if spec.per_second.is_finite() && spec.per_second > 0.0 {
            spec.per_second
        } else {
            f64::MIN_POSITIVE
        };
        // `as` saturates for huge values; at least 1 ns so time always advances.
        let interval = ((1e9 / per_second).round() as u64).max(1);
        let burst = u64::from(spec.burst.max(1));
        Self {
            interval,
            tolerance: interval.saturating_mul(burst - 1),
        }
    }

    /// Given the stored TAT and now, the new TAT to store, or how long to wait.
    #[inline]
    pub(crate) fn step(&self, tat: u64, now: u64) -> Result<u64, RetryAfter> {
        let tat = tat.max(now);
        let ahead = tat - now;
        if ahead > self.tolerance {
            Err(RetryAfter(Duration::from_nanos(ahead - self.tolerance)))
        } else {
            Ok(tat.saturating_add(self.interval))
        }
    }
}

/// Nanoseconds since `origin`; instants before it count as the origin.
#[inline]
fn nanos_since(origin: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(origin).as_nanos()).unwrap_or(u64::MAX)
}

/// One rate shared by every request; lock-free.
#[derive(Debug)]
pub struct GlobalLimiter {
    gcra: Gcra,
    origin: Instant,
    /// TAT in ns since `origin`; only ever moves forward through a CAS that
    /// admitted a request.
    tat: AtomicU64,
}

impl GlobalLimiter {
    pub fn new(spec: RateSpec) -> Self {
        Self {
            gcra: Gcra::new(spec),
            origin: Instant::now(),
            tat: AtomicU64::new(0),
        }
    }

    pub fn check(&self, now: Instant) -> Result<(), RetryAfter> {
        let now = nanos_since(self.origin, now);
        let mut current = self.tat.load(Ordering::Acquire);
        loop {
            let next = self.gcra.step(current, now)?;
            match self
                .tat
                .compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(()),
                // Someone else admitted a request meanwhile: re-decide on their TAT.
                Err(actual) => current = actual,
            }
        }
    }
}

const IP_SHARDS: usize = 64;

/// GCRA state (one TAT) per key with bounded memory: the table behind the
/// per-IP limiter, also used per token (`policy::rate`). The rate is given
/// with each check, so different keys may run at different rates.
#[derive(Debug)]
pub(crate) struct KeyedTats<K> {
    origin: Instant,
    /// Picks the shard only. Each shard's map keeps std's SipHash: its keys
    /// (client IPs) are chosen by whoever connects.
    hasher: crate::FastHasher,
    /// Per shard: key -> TAT in ns since `origin`. Each map holds at most
    /// `shard_cap` entries. Locked only inside the sync `check`.
    shards: Box<[Mutex<HashMap<K, u64>>]>,
    shard_cap: usize,
}

impl<K: std::hash::Hash + Eq + Clone> KeyedTats<K> {
    /// `max_tracked` bounds the number of keys remembered in total: shards ×
    /// per-shard cap never exceeds it (fewer shards when it is small).
    pub(crate) fn new(max_tracked: usize) -> Self {
        let max_tracked = max_tracked.max(1);
        let shard_count = IP_SHARDS.min(max_tracked);
        Self {
            origin: Instant::now(),
            hasher: crate::FastHasher::default(),
            shards: (0..shard_count)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            shard_cap: max_tracked / shard_count,
        }
    }

    fn shard<Q: std::hash::Hash + ?Sized>(&self, key: &Q) -> MutexGuard<'_, HashMap<K, u64>> {
        let idx = (self.hasher.hash_one(key) % self.shards.len() as u64) as usize;
        // A panic while holding the lock cannot leave a TAT half-written, so
        // a poisoned map is still valid.
        self.shards[idx]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Admits one request for `key` at the rate of `gcra`, or says how long
    /// to wait.
    pub(crate) fn check<Q>(&self, key: &Q, gcra: &Gcra, now: Instant) -> Result<(), RetryAfter>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let now = nanos_since(self.origin, now);
        let mut shard = self.shard(key);
        if let Some(tat) = shard.get_mut(key) {
            *tat = gcra.step(*tat, now)?;
            return Ok(());
        }
        // Unknown key: same as TAT 0, which always admits (burst >= 1).
        let next = gcra.step(0, now)?;
        if shard.len() >= self.shard_cap {
            make_room(&mut shard, self.shard_cap, now);
        }
        shard.insert(key.to_owned(), next);
        Ok(())
    }

    /// Number of keys currently remembered.
    pub(crate) fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

/// One rate per client IP (IPv6 grouped by /64), with bounded memory.
#[derive(Debug)]
pub struct IpLimiter {
    gcra: Gcra,
    tats: KeyedTats<IpAddr>,
}

impl IpLimiter {
    /// `max_tracked` bounds the number of IPs remembered in total.
    pub fn new(spec: RateSpec, max_tracked: usize) -> Self {
        Self {
            gcra: Gcra::new(spec),
            tats: KeyedTats::new(max_tracked),
        }
    }

    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), RetryAfter> {
        self.tats.check(&ip_key(ip), &self.gcra, now)
    }

    /// Number of IP keys currently remembered.
    pub fn tracked(&self) -> usize {
        self.tats.tracked()
    }
}

/// Frees room in a full shard. Entries with TAT <= now behave exactly like
/// never-seen keys, so dropping them loses nothing. If that is not enough
/// (a flood of distinct live IPs), arbitrary live entries are dropped: those
/// clients get a fresh burst, which only errs in their favour, and the global
/// limiter still bounds total load. We free 1/8 of the shard at once so the
/// O(shard) sweep is amortised over many inserts instead of paid per insert.
fn make_room<K: std::hash::Hash + Eq + Clone>(shard: &mut HashMap<K, u64>, cap: usize, now: u64) {
    shard.retain(|_, tat| *tat > now);
    let target = cap - (cap / 8).max(1);
    if shard.len() > target {
        let excess = shard.len() - target;
        let victims: Vec<K> = shard.keys().take(excess).cloned().collect();
        for v in victims {
            shard.remove(&v);
        }
    }
}

/// The key a client is limited under. IPv4-mapped IPv6 (`::ffff:a.b.c.d`,
/// seen on dual-stack sockets) is the same client as `a.b.c.d`. Other IPv6
/// addresses are grouped by /64, since one subscriber is usually given a
/// whole /64 and could otherwise rotate through 2^64 addresses to evade the
/// limit.
pub fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The traffic limits applied to every request, before token decryption.
#[derive(Debug)]
pub struct TrafficLimiter {
    global: Option<GlobalLimiter>,
    per_ip: Option<IpLimiter>,
}

impl TrafficLimiter {
    pub fn new(global: Option<RateSpec>, per_ip: Option<RateSpec>, max_tracked_ips: usize) -> Self {
        Self {
            global: global.map(GlobalLimiter::new),
            per_ip: per_ip.map(|spec| IpLimiter::new(spec, max_tracked_ips)),
        }
    }

    /// Per-IP first, then global. A request refused by its own IP limit must
    /// not spend global budget, or one noisy client could starve everyone by
    /// being refused. The reverse cost (a request that passes its IP limit
    /// but is refused globally has used one IP slot) only happens while the
    /// whole relay is overloaded and only slows that client's next request.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), RetryAfter> {
        if let Some(per_ip) = &self.per_ip {
            per_ip.check(ip, now)?;
        }
        if let Some(global) = &self.global {
            global.check(now)?;
        }
        Ok(())
    }

    /// Number of IPs the per-IP limiter remembers (0 when disabled).
    pub fn tracked_ips(&self) -> usize {
        self.per_ip.as_ref().map_or(0, IpLimiter::tracked)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    fn spec(per_second: f64, burst: u32) -> RateSpec {
        RateSpec { per_second, burst }
    }

    #[test]
    fn global_admits_burst_then_refuses() {
        let lim = GlobalLimiter::new(spec(10.0, 5));
        let t = Instant::now();
        for _ in 0..5 {
            lim.check(t).unwrap();
        }
        let retry = lim.check(t).unwrap_err();
        // Next slot opens one interval (100 ms) later.
        assert!(retry.0 <= Duration::from_millis(100), "{retry:?}");
        assert!(retry.0 > Duration::from_millis(90), "{retry:?}");
        assert_eq!(retry.secs_ceil(), 1);
    }

    #[test]
    fn global_refills_after_time_passes() {
        let lim = GlobalLimiter::new(spec(10.0, 2));
        let t = Instant::now();
        lim.check(t).unwrap();
        lim.check(t).unwrap();
        assert!(lim.check(t).is_err());
        let t1 = t + Duration::from_millis(100);
        lim.check(t1).unwrap();
        assert!(lim.check(t1).is_err());
        // Long idle refills to the full burst, not more.
        let t2 = t1 + Duration::from_secs(60);
        lim.check(t2).unwrap();
        lim.check(t2).unwrap();
        assert!(lim.check(t2).is_err());
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(RetryAfter(Duration::ZERO).secs_ceil(), 1);
        assert_eq!(RetryAfter(Duration::from_millis(1)).secs_ceil(), 1);
        assert_eq!(RetryAfter(Duration::from_secs(2)).secs_ceil(), 2);
        assert_eq!(RetryAfter(Duration::from_millis(2001)).secs_ceil(), 3);
    }

    #[test]
    fn slow_rate_retry_after_is_sane() {
        // 1 request per minute, burst 1.
        let lim = GlobalLimiter::new(spec(1.0 / 60.0, 1));
        let t = Instant::now();
        lim.check(t).unwrap();
        let r = lim.check(t + Duration::from_secs(20)).unwrap_err();
        assert_eq!(r.secs_ceil(), 40);
    }

    #[test]
    fn global_never_over_admits_under_concurrency() {
        let rate = 2000.0;
        let burst = 50;
        let lim = Arc::new(GlobalLimiter::new(spec(rate, burst)));
        let admitted = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let lim = Arc::clone(&lim);
                let admitted = Arc::clone(&admitted);
                std::thread::spawn(move || {
                    for _ in 0..200_000 {
                        if lim.check(Instant::now()).is_ok() {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let elapsed = lim.origin.elapsed().as_secs_f64();
        let got = admitted.load(Ordering::Relaxed) as f64;
        let bound = f64::from(burst) + rate * elapsed + 1.0;
        assert!(got <= bound, "admitted {got} > bound {bound}");
        assert!(got >= f64::from(burst));
    }

    #[test]
    fn per_ip_limits_each_ip_separately() {
        let lim = IpLimiter::new(spec(1.0, 2), 100);
        let t = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        lim.check(a, t).unwrap();
        lim.check(a, t).unwrap();
        assert!(lim.check(a, t).is_err());
        lim.check(b, t).unwrap();
        lim.check(a, t + Duration::from_secs(1)).unwrap();
    }

    #[test]
    fn ipv6_is_grouped_by_64_and_mapped_v4_is_v4() {
        // Room for 100 keys per shard: with 1 per shard, two of the three
        // keys below land in the same shard about one run in twenty, and
        // the eviction then makes the count flaky.
        let lim = IpLimiter::new(spec(1.0, 1), 64 * 100);
        let t = Instant::now();
        lim.check("2001:db8:1:2::1".parse().unwrap(), t).unwrap();
        // Same /64, different interface id: same bucket.
        assert!(lim
            .check("2001:db8:1:2:ffff:1:2:3".parse().unwrap(), t)
            .is_err());
        // Neighbouring /64: its own bucket.
        lim.check("2001:db8:1:3::1".parse().unwrap(), t).unwrap();
        lim.check("198.51.100.7".parse().unwrap(), t).unwrap();
        assert!(lim
            .check("::ffff:198.51.100.7".parse().unwrap(), t)
            .is_err());
        assert_eq!(lim.tracked(), 3);
    }

    #[test]
    fn memory_stays_bounded_under_distinct_ip_flood() {
        let max = 10_000;
        let lim = IpLimiter::new(spec(1.0, 10), max);
        let t = Instant::now();
        for i in 0..100_000u32 {
            let ip = IpAddr::V4((0x0a00_0000 + i).into());
            lim.check(ip, t).unwrap();
            if i % 10_000 == 0 {
                assert!(lim.tracked() <= max);
            }
        }
        assert!(lim.tracked() <= max, "{}", lim.tracked());
        assert!(lim.tracked() > max / 2, "{}", lim.tracked());
        // Capacity never grows past what the cap needs (no ever-growing tables).
        let cap: usize = lim
            .tats
            .shards
            .iter()
            .map(|s| s.lock().unwrap().capacity())
            .sum();
        assert!(cap <= 4 * max, "capacity {cap}");
    }

    #[test]
    fn make_room_drops_expired_entries_before_live_ones() {
        let mut shard: HashMap<IpAddr, u64> = HashMap::new();
        for i in 0..8u32 {
            // Even: TAT in the past (expired); odd: TAT in the future (live).
            let tat = if i % 2 == 0 { 50 } else { 500 };
            shard.insert(IpAddr::V4(i.into()), tat);
        }
        make_room(&mut shard, 8, 100);
        assert_eq!(shard.len(), 4);
        assert!(shard.values().all(|&tat| tat == 500));
        // All live: arbitrary eviction down to 7/8 of the cap.
        let mut full: HashMap<IpAddr, u64> =
            (0..16u32).map(|i| (IpAddr::V4(i.into()), 500)).collect();
        make_room(&mut full, 16, 100);
        assert_eq!(full.len(), 14);
    }

    #[test]
    fn traffic_limiter_ip_refusal_does_not_spend_global_budget() {
        // Room for every IP in any shard (100 per shard): with 1 per shard,
        // two of the four IPs hashing alike evicted one and the count below
        // failed now and then.
        let lim = TrafficLimiter::new(Some(spec(1.0, 3)), Some(spec(1.0, 1)), 6400);
        let t = Instant::now();
        let noisy: IpAddr = "192.0.2.1".parse().unwrap();
        lim.check(noisy, t).unwrap();
        for _ in 0..100 {
            assert!(lim.check(noisy, t).is_err());
        }
        // Global budget (3) still has 2 left for others.
        lim.check("192.0.2.2".parse().unwrap(), t).unwrap();
        lim.check("192.0.2.3".parse().unwrap(), t).unwrap();
        assert!(lim.check("192.0.2.4".parse().unwrap(), t).is_err());
        assert_eq!(lim.tracked_ips(), 4);
    }

    #[test]
    fn disabled_limits_admit_everything() {
        let lim = TrafficLimiter::new(None, None, 0);
        let t = Instant::now();
        for _ in 0..1000 {
            lim.check("192.0.2.1".parse().unwrap(), t).unwrap();
        }
        assert_eq!(lim.tracked_ips(), 0);
    }
}
