//! A STREAM-like memory read probe: the rate at which the tierflow pool can read a buffer much
//! larger than the last-level cache (the "read" kernel: `s += a[i]` over every 8-byte word).
//!
//! The buffer is split into one contiguous range per task (4 tasks per thread), each summed with
//! 8 independent accumulators so that the adds never limit the rate; the best of `reps` passes
//! is reported, as STREAM does.

use rayon::prelude::*;

/// Bytes per second read over `bytes` (rounded down to 64-byte lines), the best of `reps` passes.
pub fn read_bandwidth(bytes: usize, reps: usize) -> f64 {
    let words = (bytes / 64).max(1) * 8;
    let threads = crate::pool::num_threads().max(1);
    crate::pool::install(|| {
        // Ask for transparent huge pages, as NumPy does for its large arrays (otherwise the
        // probe pays TLB misses that the kernels reading NumPy-allocated weights do not), then
        // first-touch in parallel.
        let mut buf: Vec<u64> = Vec::with_capacity(words);
        advise_huge(buf.as_mut_ptr() as *mut u8, words * 8);
        buf.resize(words, 0);
        buf.par_chunks_mut(1 << 16).enumerate().for_each(|(i, c)| {
            for (j, v) in c.iter_mut().enumerate() {
                *v = (i ^ j) as u64;
            }
        });
        let per = words.div_ceil(threads * 4).div_ceil(8) * 8;
        let mut best = 0f64;
        for _ in 0..reps.max(1) {
            let t0 = std::time::Instant::now();
            let s: u64 = buf.par_chunks(per).map(sum_words).reduce(|| 0, u64::wrapping_add);
            let dt = t0.elapsed().as_secs_f64();
            std::hint::black_box(s);
            best = best.max((words * 8) as f64 / dt.max(1e-9));
        }
        best
    })
}

/// `madvise(MADV_HUGEPAGE)` on the 2 MiB-aligned interior of a buffer (a hint; errors ignored).
fn advise_huge(p: *mut u8, len: usize) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = (p as usize).div_ceil(HUGE) * HUGE;
        let end = (p as usize + len) / HUGE * HUGE;
        if end > start {
            // SAFETY: the range lies inside an allocation we own; madvise only sets a hint.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
    let _ = (p, len);
}

fn sum_words(c: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let mut it = c.chunks_exact(8);
    for ch in &mut it {
        for (a, v) in acc.iter_mut().zip(ch) {
            *a = a.wrapping_add(*v);
        }
    }
    let tail = it.remainder().iter().fold(0u64, |a, v| a.wrapping_add(*v));
    acc.iter().fold(tail, |a, v| a.wrapping_add(*v))
}

#[cfg(test)]
mod tests {
    #[test]
    fn probe_reports_a_positive_rate() {
        let r = super::read_bandwidth(1 << 20, 2);
        assert!(r.is_finite() && r > 1e6);
    }
}
