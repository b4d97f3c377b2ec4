//! The process allocator: mimalloc, measured against glibc's malloc in `bench/run`
//! (BENCHMARKS.md, "Allocator"): more bulk throughput and connections per second for the same
//! CPU per request. Its arenas are committed on demand (`.cargo/config.toml`), which keeps an
//! idle proxy's resident memory at glibc's level.
//!
//! mimalloc hands freed memory back to the kernel a second after it was freed, but only when
//! it is next called: a proxy that goes idle after a burst (a bulk transfer) kept the burst's
//! memory for good. A background thread asks it to give back what is free every few seconds,
//! and each runtime worker, as it goes idle, hands back the pages it emptied (a thread's own
//! pages can only be collected by that thread), at most once a second. A worker's last park
//! after a burst usually falls inside that second, and an idle worker does not park again: the
//! purging thread then wakes the runtime's workers with a no-op task each, and each collects
//! as it parks again (8 parallel bulk transfers left 47 MB private in an idle node proxy for
//! 10-20 s without this).
#![allow(unsafe_code)]

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How often freed memory is handed back, and idle workers with pages to collect are woken.
const PURGE_EVERY: Duration = Duration::from_secs(1);

/// A worker skipped its collection (too soon after the last one) since the purging thread
/// last looked.
static SKIPPED: AtomicBool = AtomicBool::new(false);

/// The proxy's runtime and its worker count, for waking idle workers.
static RUNTIME: OnceLock<(tokio::runtime::Handle, usize)> = OnceLock::new();

/// Start the thread that returns freed memory to the kernel (best effort: without it the
/// process only keeps more memory).
pub fn start_purging() {
    let spawned = std::thread::Builder::new()
        .name("mem-purge".into())
        .spawn(|| {
            loop {
                std::thread::sleep(PURGE_EVERY);
                if SKIPPED.swap(false, Ordering::Relaxed)
                    && let Some((rt, workers)) = RUNTIME.get()
                {
                    // Each task wakes a parked worker, which collects when it parks again.
                    for _ in 0..*workers {
                        rt.spawn(async { FORCE.with(|f| f.set(true)) });
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
    /// The purging thread woke this worker to collect: do it at the next park.
    static FORCE: Cell<bool> = const { Cell::new(false) };
}

/// Let the purging thread wake this runtime's workers when one skipped a collection.
pub fn watch_runtime(rt: tokio::runtime::Handle, workers: usize) {
    let _ = RUNTIME.set((rt, workers));
}

/// For a runtime's `on_thread_park`: give the worker's emptied pages back to the shared
/// arenas (from where the purging thread returns them to the kernel).
pub fn on_worker_park() {
    LAST_COLLECT.with(|last| {
        let now = Instant::now();
        let forced = FORCE.with(|f| f.replace(false));
        if !forced
            && last
                .get()
                .is_some_and(|t| now.duration_since(t) < WORKER_COLLECT_EVERY)
        {
            SKIPPED.store(true, Ordering::Relaxed);
            return;
        }
        last.set(Some(now));
        // SAFETY: as above; without `force` it only walks this thread's own pages.
        unsafe { libmimalloc_sys::mi_collect(false) };
    });
}
