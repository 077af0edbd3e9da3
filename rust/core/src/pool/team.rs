//! The decode kernels' task team: `threads - 1` worker threads that, after a call, keep polling
//! for the next one for a short while (`spin`, default [`DEFAULT_SPIN_US`]) before they sleep,
//! and a caller that runs tasks itself instead of waiting for a woken pool.
//!
//! Why: a decode step is a chain of short bandwidth-bound calls (a 4096 x 4096 float32 GEMV is
//! about 1.5 ms at 45 GB/s; a 2048-wide layer's matmuls 0.1-0.5 ms each). Handing such a call
//! to a sleeping rayon pool from a foreign thread costs three wake-ups in a row (the injected
//! job, the stolen half, the caller's latch), measured at 40-45 us per call on this project's
//! 2-vCPU VMs: a 2-thread 512 x 512 GEMV took 64 us against 22 us on one thread. OpenBLAS
//! (`OPENBLAS_THREAD_TIMEOUT`) and ggml's thread pool poll the same way, and for the same reason.
//!
//! Protocol (one job at a time; a second concurrent caller, a call made from inside a task, or
//! from a rayon worker takes the caller's fallback instead):
//! - the caller publishes a [`Job`] (tasks `0..tasks`, claimed one by one from the atomic
//!   `next`), bumps `gen`, and wakes sleeping workers only if there are any;
//! - every participant claims tasks until none are left; a task's panic is caught and reported
//!   to the caller, which re-raises it after the join (so the job never dies under a worker);
//! - the caller waits until all tasks are done, retracts the job pointer, then waits until no
//!   worker is still `inside` it before its stack frame (the job) goes away. A worker enters
//!   (`inside += 1`) before it reads the job pointer, so it either sees the pointer retracted or
//!   is waited for (all of these accesses are sequentially consistent).
//!
//! Workers never call into Python, and the team is rebuilt in a process whose id differs from
//! the one that built it (threads do not survive `fork()`).

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long an idle worker polls for the next call before it sleeps, when `TIERFLOW_SPIN_US`
/// is not set. Two milliseconds cover the Python-side work between two matmuls of a decode
/// step; `TIERFLOW_SPIN_US=0` makes workers sleep at once (each call then pays the wake-up).
pub const DEFAULT_SPIN_US: u64 = 2000;

/// The idle workers' polling time in microseconds: `TIERFLOW_SPIN_US`, else
/// [`DEFAULT_SPIN_US`] (at most one second).
pub fn spin_us() -> u64 {
    std::env::var("TIERFLOW_SPIN_US")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(DEFAULT_SPIN_US)
        .min(1_000_000)
}

/// One call's tasks, on the caller's stack while the call runs.
struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    tasks: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    panicked: AtomicBool,
}

impl Job<'_> {
    /// Claim and run tasks until none are left.
    fn run(&self) {
        loop {
            let t = self.next.fetch_add(1, Relaxed);
            if t >= self.tasks {
                return;
            }
            if catch_unwind(AssertUnwindSafe(|| (self.f)(t))).is_err() {
                self.panicked.store(true, Relaxed);
            }
            self.done.fetch_add(1, Release);
        }
    }
}

/// State shared by the caller and the workers of one team.
struct Shared {
    /// Bumped once per published job.
    gen: AtomicU64,
    /// The current job (null when none).
    job: AtomicPtr<Job<'static>>,
    /// Workers between entering a generation and leaving it.
    inside: AtomicUsize,
    /// One caller at a time.
    busy: AtomicBool,
    /// Set when the team is replaced: its workers exit.
    stop: AtomicBool,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    spin: Duration,
}

thread_local! {
    /// True on a team worker, and on a caller while it runs its job's tasks.
    static IN_TEAM: Cell<bool> = const { Cell::new(false) };
}

pub(super) struct Team {
    pid: u32,
    threads: usize,
    shared: Arc<Shared>,
}

impl Team {
    /// A team for `threads` participants: the caller and `threads - 1` workers.
    pub(super) fn new(threads: usize) -> Option<Team> {
        let spin_us = spin_us();
        let shared = Arc::new(Shared {
            gen: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            inside: AtomicUsize::new(0),
            busy: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            spin: Duration::from_micros(spin_us),
        });
        for i in 1..threads {
            let sh = shared.clone();
            let spawned =
                std::thread::Builder::new().name(format!("tierflow-team-{i}")).spawn(|| worker(sh));
            if spawned.is_err() {
                // No thread could be made: retire those that were, and let the caller fall back.
                shared.retire();
                return None;
            }
        }
        Some(Team { pid: std::process::id(), threads, shared })
    }

    /// Whether this team serves `threads` participants in this process.
    pub(super) fn fits(&self, threads: usize) -> bool {
        self.pid == std::process::id() && self.threads == threads
    }

    pub(super) fn handle(&self) -> SharedHandle {
        SharedHandle(self.shared.clone())
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        if self.pid == std::process::id() {
            self.shared.retire();
        } else {
            // A team inherited through fork(): its workers do not exist here, and its lock may
            // have been held by one of them at the fork, so it is not touched.
            self.shared.stop.store(true, SeqCst);
        }
    }
}

impl Shared {
    fn retire(&self) {
        self.stop.store(true, SeqCst);
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.wake.notify_all();
    }
}

/// A caller's reference to a team (kept alive while its call runs, even if the team is
/// replaced meanwhile).
pub(super) struct SharedHandle(Arc<Shared>);

/// Whether the current thread is a team worker or inside a team call.
pub(super) fn in_team() -> bool {
    IN_TEAM.get()
}

impl SharedHandle {
    /// Run `f(t)` for every `t in 0..tasks` on the team, the calling thread included. `Err(f)`
    /// hands `f` back when the team is busy with another caller's job.
    pub(super) fn run<'a>(
        &self,
        tasks: usize,
        f: &'a (dyn Fn(usize) + Sync),
    ) -> Result<(), &'a (dyn Fn(usize) + Sync)> {
        let sh = &*self.0;
        if sh.busy.compare_exchange(false, true, Acquire, Relaxed).is_err() {
            return Err(f);
        }
        let job = Job {
            f,
            tasks,
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
        };
        // SAFETY (of the lifetime erasure): the pointer is retracted, and every worker that may
        // have read it has left, before this frame returns (see the module doc).
        let ptr = &job as *const Job<'_> as *mut Job<'static>;
        sh.job.store(ptr, SeqCst);
        sh.gen.fetch_add(1, SeqCst);
        if sh.sleepers.load(SeqCst) > 0 {
            let _g = sh.lock.lock().unwrap_or_else(|e| e.into_inner());
            sh.wake.notify_all();
        }
        IN_TEAM.set(true);
        job.run();
        IN_TEAM.set(false);
        wait_until(|| job.done.load(Acquire) >= tasks);
        sh.job.store(std::ptr::null_mut(), SeqCst);
        wait_until(|| sh.inside.load(SeqCst) == 0);
        sh.busy.store(false, Release);
        if job.panicked.load(Relaxed) {
            panic!("a kernel task panicked on a tierflow worker thread");
        }
        Ok(())
    }
}

/// Poll `ready` (a short wait: the other participants are finishing their last task), yielding
/// the core now and then in case the machine is oversubscribed.
fn wait_until(ready: impl Fn() -> bool) {
    let mut spins = 0u32;
    while !ready() {
        spins = spins.wrapping_add(1);
        if spins % 1024 == 0 {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

fn worker(sh: Arc<Shared>) {
    IN_TEAM.set(true);
    let mut seen = sh.gen.load(SeqCst);
    loop {
        // Wait for the next generation: poll for `spin`, then sleep until woken.
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            if sh.stop.load(Acquire) {
                return;
            }
            let g = sh.gen.load(SeqCst);
            if g != seen {
                seen = g;
                break;
            }
            spins = spins.wrapping_add(1);
            if spins % 256 == 0 && start.elapsed() >= sh.spin {
                let mut guard = sh.lock.lock().unwrap_or_else(|e| e.into_inner());
                sh.sleepers.fetch_add(1, SeqCst);
                while sh.gen.load(SeqCst) == seen && !sh.stop.load(SeqCst) {
                    guard = sh.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
                }
                sh.sleepers.fetch_sub(1, SeqCst);
            } else {
                std::hint::spin_loop();
            }
        }
        sh.inside.fetch_add(1, SeqCst);
        let p = sh.job.load(SeqCst);
        if !p.is_null() {
            // SAFETY: the caller keeps the job alive while `inside` counts this worker.
            unsafe { (*p).run() };
        }
        sh.inside.fetch_sub(1, SeqCst);
    }
}
