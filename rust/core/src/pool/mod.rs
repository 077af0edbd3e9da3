//! Worker threads shared by the store (prefetch, parallel copies) and the kernels.
//!
//! The pool is created lazily and re-created when the process id changes, so the library keeps
//! working in a child after `fork()` (threads do not survive a fork; a pool inherited from the
//! parent would wait forever). The thread count is settable (`set_num_threads`) and defaults to
//! `TIERFLOW_NUM_THREADS`, else the number of CPUs available.

use parking_lot::Mutex;
use std::sync::Arc;

mod team;
pub use team::{spin_us, DEFAULT_SPIN_US};

struct PoolSlot {
    pid: u32,
    threads: usize,
    pool: Arc<rayon::ThreadPool>,
}

static POOL: Mutex<Option<PoolSlot>> = Mutex::new(None);
/// The pool of [`with_threads`] (one at a time: rebuilt when its size or the process changes).
static SIDE_POOL: Mutex<Option<PoolSlot>> = Mutex::new(None);

thread_local! {
    /// Set on the workers of a [`with_threads`] pool: the thread count seen inside it.
    static OVERRIDE: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}
static REQUESTED: Mutex<Option<usize>> = Mutex::new(None);

/// Threads used when nothing was set: `TIERFLOW_NUM_THREADS`, else the available parallelism,
/// read once per process (`available_parallelism` reads the cgroup's CPU quota files: about
/// 20 us, which every kernel call asking for its thread count would otherwise pay).
pub fn default_num_threads() -> usize {
    static DEFAULT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *DEFAULT.get_or_init(|| {
        std::env::var("TIERFLOW_NUM_THREADS")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .filter(|&n: &usize| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
    })
}

/// The number of worker threads kernels and copies use (inside [`with_threads`], its count).
pub fn num_threads() -> usize {
    OVERRIDE.get().unwrap_or_else(|| REQUESTED.lock().unwrap_or_else(default_num_threads))
}

/// Run `f` on a separate pool of `n` threads: kernels called inside see `n` threads and use
/// that pool. The streaming matmul computes on `threads - 1` this way, leaving a core to its
/// reader thread, instead of three threads time-slicing two cores.
pub fn with_threads<R: Send>(n: usize, f: impl FnOnce() -> R + Send) -> R {
    let n = n.max(1);
    if OVERRIDE.get() == Some(n) {
        return f();
    }
    let pid = std::process::id();
    let pool = match SIDE_POOL.try_lock_for(std::time::Duration::from_millis(200)) {
        Some(mut guard) => match guard.as_ref() {
            Some(slot) if slot.pid == pid && slot.threads == n => slot.pool.clone(),
            _ => {
                let pool = Arc::new(build_side(n));
                *guard = Some(PoolSlot { pid, threads: n, pool: pool.clone() });
                pool
            }
        },
        None => Arc::new(build_side(n)),
    };
    pool.install(f)
}

fn build_side(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("tierflow-side-{i}"))
        .start_handler(move |_| OVERRIDE.set(Some(threads)))
        .build()
        .expect("building a thread pool")
}

/// Set the number of worker threads (`n >= 1`); `None` restores the default.
pub fn set_num_threads(n: Option<usize>) -> crate::Result<()> {
    if n == Some(0) {
        return Err(crate::CoreError::Value("the number of threads must be at least 1".into()));
    }
    *REQUESTED.lock() = n;
    Ok(())
}

/// The worker pool for this process, (re)built after a fork or a change of thread count.
pub fn pool() -> Arc<rayon::ThreadPool> {
    if OVERRIDE.get().is_some() {
        // On a with_threads worker: stay on that pool (rayon runs a nested install inline).
        if let Some(p) = rayon::current_thread_index().and(SIDE_POOL.try_lock()) {
            if let Some(slot) = p.as_ref() {
                return slot.pool.clone();
            }
        }
    }
    let pid = std::process::id();
    let threads = num_threads();
    // After fork() in a child, the lock may be held by a thread that no longer exists: POOL is
    // only held for a few instructions, but be safe and never block forever on it.
    let mut guard = match POOL.try_lock_for(std::time::Duration::from_millis(200)) {
        Some(g) => g,
        None => {
            // A lock orphaned by fork: build a private pool for this call.
            return Arc::new(build(threads));
        }
    };
    if let Some(slot) = guard.as_ref() {
        if slot.pid == pid && slot.threads == threads {
            return slot.pool.clone();
        }
    }
    let pool = Arc::new(build(threads));
    *guard = Some(PoolSlot { pid, threads, pool: pool.clone() });
    pool
}

fn build(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("tierflow-{i}"))
        .build()
        .expect("building a thread pool")
}

/// Run `f` on the tierflow pool (so `rayon::join`/`par_iter` inside use its threads).
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    pool().install(f)
}

/// Work smaller than this (bytes of operands a call reads) runs on the calling thread: waking
/// the pool's threads and joining them costs about 10-15 us here, about what one core takes to
/// stream this much weight data through a decode kernel.
pub const INLINE_BYTES: usize = 256 * 1024;

/// The decode kernels' task team (see `team.rs`), rebuilt after a fork or a change of thread
/// count.
static TEAM: Mutex<Option<team::Team>> = Mutex::new(None);

/// `f(t)` for every `t in 0..tasks`: in order on the calling thread when the call reads fewer
/// than [`INLINE_BYTES`] bytes, has one task, there is one thread, or it is made from inside
/// another team call; else on the task team (the caller takes tasks too, idle workers poll for
/// a short while before they sleep), or on the rayon pool when the team is busy with another
/// caller, the call comes from a rayon worker or from inside [`with_threads`].
pub fn for_tasks(tasks: usize, bytes: usize, f: impl Fn(usize) + Sync + Send) {
    use rayon::prelude::*;
    let threads = num_threads();
    if tasks <= 1 || bytes < INLINE_BYTES || threads <= 1 || team::in_team() {
        (0..tasks).for_each(f);
        return;
    }
    if OVERRIDE.get().is_none() && rayon::current_thread_index().is_none() {
        if let Some(h) = team_handle(threads) {
            if h.run(tasks, &f).is_ok() {
                return;
            }
        }
    }
    install(|| (0..tasks).into_par_iter().for_each(f));
}

/// The task team for `threads` participants in this process (`None`: its lock is orphaned by a
/// fork, or no thread could be started).
fn team_handle(threads: usize) -> Option<team::SharedHandle> {
    let mut guard = TEAM.try_lock_for(std::time::Duration::from_millis(200))?;
    if !guard.as_ref().is_some_and(|t| t.fits(threads)) {
        *guard = None; // retire the old team's workers first
        *guard = team::Team::new(threads);
    }
    guard.as_ref().map(|t| t.handle())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn pool_follows_thread_count() {
        set_num_threads(Some(2)).unwrap();
        assert_eq!(pool().current_num_threads(), 2);
        set_num_threads(Some(1)).unwrap();
        assert_eq!(install(rayon::current_num_threads), 1);
        assert!(set_num_threads(Some(0)).is_err());
        set_num_threads(None).unwrap();
    }

    #[test]
    fn team_runs_every_task_once_and_reports_panics() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let team = team::Team::new(3).unwrap();
        let h = team.handle();
        for tasks in [0, 1, 2, 3, 7, 64] {
            for _ in 0..200 {
                let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
                let f = |t: usize| {
                    hits[t].fetch_add(1, Ordering::Relaxed);
                };
                assert!(h.run(tasks, &f).is_ok());
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            }
        }
        // A task's panic reaches the caller after the join; the team still works afterwards.
        let bad = |t: usize| assert!(t != 5, "task 5 fails");
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h.run(8, &bad)));
        assert!(r.is_err());
        let n = AtomicUsize::new(0);
        let f = |_t: usize| {
            n.fetch_add(1, Ordering::Relaxed);
        };
        assert!(h.run(10, &f).is_ok());
        assert_eq!(n.load(Ordering::Relaxed), 10);
    }

    #[test]
    fn team_from_many_callers_at_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        // Concurrent callers: one gets the team, the others the rayon pool; every task once.
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..100 {
                        let hits: Vec<AtomicUsize> = (0..9).map(|_| AtomicUsize::new(0)).collect();
                        for_tasks(9, 1 << 30, |t| {
                            // a nested call runs inline
                            for_tasks(2, 1 << 30, |_| ());
                            hits[t].fetch_add(1, Ordering::Relaxed);
                        });
                        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
                    }
                });
            }
        });
    }

    #[test]
    fn for_tasks_runs_every_task_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        for (tasks, bytes) in [(0, 0), (1, 1 << 30), (7, 10), (50, 1 << 30)] {
            let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
            for_tasks(tasks, bytes, |t| {
                hits[t].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
    }
}
