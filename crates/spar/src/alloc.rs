//! The process allocator: mimalloc, measured against glibc's malloc in `bench/run`
//! (BENCHMARKS.md, "Allocator"): more bulk throughput and connections per second for the same
//! CPU per request. Its arenas are committed on demand (`.cargo/config.toml`), which keeps an
//! idle proxy's resident memory at glibc's level.
//!
//! mimalloc hands freed memory back to the kernel a second after it was freed, but only when
//! it is next called: a proxy that goes idle after a burst (a bulk transfer) kept the burst's
//! memory for good. A background thread asks it to give back what is free every second,
//! and each runtime worker, as it goes idle, hands back the pages it emptied (a thread's own
//! pages can only be collected by that thread), at most once a second. A worker's last park
//! after a burst usually falls inside that second, and an idle worker does not park again: the
//! purging thread then wakes the runtime's workers with a no-op task each, and each collects
//! as it parks again, and twice more a second apart (only a collection after mimalloc's
//! one-second purge delay hands the freed pages to the kernel). Without this, 8 parallel bulk
//! transfers left 47 MB private in an idle node proxy for 10-20 s. A wake-up after a quiet
//! second (few parks) collects with `force`, freeing also the pages mimalloc keeps retired
//! for reuse (5-10 MB after bulk transfers otherwise); under load they stay, to be reused.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How often freed memory is handed back, and idle workers with pages to collect are woken.
const PURGE_EVERY: Duration = Duration::from_secs(1);

/// Wake-ups after the one that answers a skipped collection.
const FOLLOW_UPS: u8 = 2;

/// A worker skipped its collection (too soon after the last one) since the purging thread
/// last looked.
static SKIPPED: AtomicBool = AtomicBool::new(false);

/// Counts the purging thread's wake-ups: a worker that has not collected since the last one
/// collects when it next parks.
static EPOCH: AtomicU64 = AtomicU64::new(0);

/// Parks of the runtime's workers since the purging thread last looked: few means the
/// proxy has gone quiet.
static PARKS: AtomicU64 = AtomicU64::new(0);

/// Fewer parks than this in a second: quiet (a proxy under load parks thousands of times).
const QUIET_PARKS: u64 = 50;

/// The wake-up workers are answering came after a quiet second: they collect with `force`.
static FORCE: AtomicBool = AtomicBool::new(false);

/// The proxy's runtime and its worker count, for waking idle workers.
static RUNTIME: OnceLock<(tokio::runtime::Handle, usize)> = OnceLock::new();

/// Start the thread that returns freed memory to the kernel (best effort: without it the
/// process only keeps more memory).
pub fn start_purging() {
    let spawned = std::thread::Builder::new()
        .name("mem-purge".into())
        .spawn(|| {
            // Wake-ups still owed: a collection frees a worker's pages, and only a later one,
            // once mimalloc's purge delay (a second) has passed, hands them to the kernel.
            let mut owed = 0u8;
            loop {
                std::thread::sleep(PURGE_EVERY);
                if SKIPPED.swap(false, Ordering::Relaxed) {
                    owed = FOLLOW_UPS + 1;
                }
                let quiet = PARKS.swap(0, Ordering::Relaxed) < QUIET_PARKS;
                if owed > 0
                    && let Some((rt, workers)) = RUNTIME.get()
                {
                    owed -= 1;
                    // Once the burst is over, the pages mimalloc keeps retired for reuse go
                    // too; under steady load they are reused, so they stay.
                    FORCE.store(quiet, Ordering::Relaxed);
                    // Every worker that parks after this collects, whatever its last
                    // collection; the tasks wake parked workers (the first one woken
                    // wakes another to share the work, and each parks again).
                    EPOCH.fetch_add(1, Ordering::Relaxed);
                    for _ in 0..*workers {
                        rt.spawn(async {});
                    }
                }
                // SAFETY: mi_collect takes no pointers and may be called from any thread at any
                // time; `force` purges every arena's free memory program-wide.
                unsafe { libmimalloc_sys::mi_collect(true) };
            }
        });
    if let Err(e) = spawned {
        eprintln!("spar: cannot start the memory purging thread ({e}); continuing without it");
    }
}

/// How often a runtime worker collects its own emptied pages when it goes idle.
const WORKER_COLLECT_EVERY: Duration = Duration::from_secs(1);

thread_local! {
    static LAST_COLLECT: Cell<Option<Instant>> = const { Cell::new(None) };
    /// The purging thread's wake-up this worker last collected for.
    static SEEN: Cell<u64> = const { Cell::new(0) };
}

/// Let the purging thread wake this runtime's workers when one skipped a collection.
pub fn watch_runtime(rt: tokio::runtime::Handle, workers: usize) {
    let _ = RUNTIME.set((rt, workers));
}

/// For a runtime's `on_thread_park`: give the worker's emptied pages back to the shared
/// arenas (from where the purging thread returns them to the kernel).
pub fn on_worker_park() {
    PARKS.fetch_add(1, Ordering::Relaxed);
    LAST_COLLECT.with(|last| {
        let now = Instant::now();
        let epoch = EPOCH.load(Ordering::Relaxed);
        let forced = SEEN.with(|seen| seen.replace(epoch) != epoch);
        if !forced
            && last
                .get()
                .is_some_and(|t| now.duration_since(t) < WORKER_COLLECT_EVERY)
        {
            SKIPPED.store(true, Ordering::Relaxed);
            return;
        }
        last.set(Some(now));
        // Woken by the purging thread after a quiet second (the burst is over): `force`, so
        // the pages mimalloc keeps retired for reuse a while are freed too (without it, 5-10
        // MB stayed in an idle sidecar after bulk transfers until its next requests).
        // Otherwise only this thread's emptied pages, cheaply.
        let force = forced && FORCE.load(Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { libmimalloc_sys::mi_collect(force) };
    });
}
