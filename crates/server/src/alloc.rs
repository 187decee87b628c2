//! The allocator's tuning: the relay binary runs on jemalloc
//! (`#[global_allocator]` in `main.rs`), set up here at start.
//!
//! Why jemalloc, and why these settings: a relay's heap swings with the
//! number of open streams (each holds connection buffers and task state on
//! both sides). glibc malloc kept the peak of 5,000 closed streams resident
//! for good (RSS 8–14 × idle), and its arena locks showed up in profiles;
//! stock jemalloc and mimalloc kept it as well. jemalloc returns freed pages
//! to the OS when a background thread purges them on a time curve
//! (`dirty_decay_ms`); with the default 10 s curve the memory comes back only
//! slowly, so the relay asks for [`DIRTY_DECAY_MS`] and skips the "muzzy"
//! stage (pages go straight back with `MADV_DONTNEED`).
//!
//! Each thread also keeps a cache of freed blocks (jemalloc's "tcache"),
//! emptied only as that thread allocates again: after a burst of thousands
//! of streams, a worker that went quiet held several MiB there, out of the
//! decay's reach. [`release_thread_cache`] hands it back; every worker calls
//! it once a second (`server.rs`).
//!
//! Page-sized blocks (the 4 KiB and 8 KiB size classes) come from slabs of
//! eight pages instead of one or two: the build sets jemalloc's
//! `slab_sizes` (`.cargo/config.toml`; it cannot be changed at run time).
//! Every open stream holds buffers of these sizes, and with one block per
//! slab each became an extent of its own, whose metadata jemalloc keeps for
//! good: after 5,000 streams closed, RSS stayed 2.4 MiB above idle.
//!
//! Everything goes through `tikv-jemalloc-ctl`'s safe accessors (no unsafe
//! code in the workspace). Failures are logged and ignored: the relay works
//! the same with the allocator's defaults, it only holds on to memory longer.

use tikv_jemalloc_ctl::{Access, AsName};

/// How long freed ("dirty") pages stay cached before being purged, ms.
/// Short enough that RSS is back near idle a couple of seconds after a
/// burst of streams ends; long enough that steady traffic reuses pages
/// instead of faulting them in again.
pub const DIRTY_DECAY_MS: isize = 500;
/// Purged pages skip the lazy `MADV_FREE` stage: RSS drops at once.
pub const MUZZY_DECAY_MS: isize = 0;

/// Applies the settings; call first thing in `main`, before other threads
/// exist (arenas created later inherit the `arenas.*` defaults).
pub fn tune() {
    let mut failed = Vec::new();
    for (name, value) in [
        ("arenas.dirty_decay_ms\0", DIRTY_DECAY_MS),
        ("arenas.muzzy_decay_ms\0", MUZZY_DECAY_MS),
    ] {
        if name.name().write(value).is_err() {
            failed.push(name.trim_end_matches('\0'));
        }
    }
    // Arenas that already exist keep the values they were created with.
    let narenas: u32 = b"arenas.narenas\0".name().read().unwrap_or(0);
    for i in 0..narenas {
        // Arenas not initialised yet refuse the write; they will take the
        // defaults above when they are.
        let _ = format!("arena.{i}.dirty_decay_ms\0")
            .name()
            .write(DIRTY_DECAY_MS);
        let _ = format!("arena.{i}.muzzy_decay_ms\0")
            .name()
            .write(MUZZY_DECAY_MS);
    }
    // Purging happens on a background thread, not inside a request's free().
    if tikv_jemalloc_ctl::background_thread::write(true).is_err() {
        failed.push("background_thread");
    }
    if !failed.is_empty() {
        // Before tracing is set up: plain stderr, once.
        eprintln!(
            "warning: allocator settings not applied ({}); freed memory is returned to the OS more slowly",
            failed.join(", ")
        );
    }
}

/// Slots a [`slab::Slab`] keeps allocated when it empties (see
/// [`release_emptied`]).
pub const KEEP_SLOTS: usize = 1024;

/// Frees an emptied slab's memory when a burst had grown it past
/// [`KEEP_SLOTS`]: a slab never shrinks by itself, so the per-worker lists
/// sized for thousands of connections would stay that size for good. Small
/// slabs are kept, so light traffic, which empties them on every request,
/// never pays for a new allocation.
pub fn release_emptied<T>(slab: &mut slab::Slab<T>) {
    if slab.is_empty() && slab.capacity() > KEEP_SLOTS {
        *slab = slab::Slab::new();
    }
}

/// How often each worker hands its thread cache back.
pub const THREAD_CACHE_RELEASE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Returns the calling thread's cached free blocks to the shared arenas,
/// where the decay can give their pages back to the OS. Turning the cache
/// off flushes it; it is turned on again at once, empty. Cheap (the cache
/// refills from the arenas in batches), so it needs no "idle" heuristic.
pub fn release_thread_cache() {
    let name = b"thread.tcache.enabled\0".name();
    if name.write(false).is_ok() {
        let _ = name.write(true);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn settings_take_effect() {
        tune();
        let dirty: isize = b"arenas.dirty_decay_ms\0".name().read().unwrap();
        let muzzy: isize = b"arenas.muzzy_decay_ms\0".name().read().unwrap();
        assert_eq!((dirty, muzzy), (DIRTY_DECAY_MS, MUZZY_DECAY_MS));
        let arena0: isize = b"arena.0.dirty_decay_ms\0".name().read().unwrap();
        assert_eq!(arena0, DIRTY_DECAY_MS);
        assert!(tikv_jemalloc_ctl::background_thread::read().unwrap());
    }

    #[test]
    fn page_sized_blocks_share_slabs() {
        // Set at build time by `.cargo/config.toml` (see the module docs).
        let page: usize = b"arenas.page\0".name().read().unwrap();
        let nbins: u32 = b"arenas.nbins\0".name().read().unwrap();
        let mut checked = Vec::new();
        for i in 0..nbins {
            let size: usize = format!("arenas.bin.{i}.size\0").name().read().unwrap();
            if size == 4096 || size == 8192 {
                let slab: usize = format!("arenas.bin.{i}.slab_size\0").name().read().unwrap();
                assert_eq!(slab, 8 * page, "slab size of the {size}-byte class");
                checked.push(size);
            }
        }
        assert_eq!(checked, [4096, 8192]);
    }

    #[test]
    fn releasing_the_thread_cache_leaves_it_on() {
        let enabled = || -> bool { b"thread.tcache.enabled\0".name().read().unwrap() };
        assert!(enabled());
        release_thread_cache();
        assert!(enabled());
    }
}
