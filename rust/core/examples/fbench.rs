//! Timing of the float decode kernel on a plain `(K, N)` weight (`axpy.rs`), for tuning:
//! `cargo run --release -p tierflow-core --example fbench -- [threads] [m]`. With one thread
//! the time is this thread's CPU time (less disturbed on a shared machine).
use std::time::Instant;
use tierflow_core::cpu::Isa;
use tierflow_core::kernels::axpy::{matmul_cols, ColW};

fn cpu_time() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec out-parameter.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1);
    let m: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(8);
    tierflow_core::pool::set_num_threads(Some(threads)).unwrap();
    let isa = Isa::detect();
    for &(k, n) in &[(256usize, 256usize), (4096, 4096), (8192, 8192)] {
        let w: Vec<f32> = (0..k * n).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
        let wb: Vec<u16> = w.iter().map(|v| half::bf16::from_f32(*v).to_bits()).collect();
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 31) % 97) as f32 / 97.0 - 0.5).collect();
        let mut c = vec![0f32; m * n];
        for (name, cw, bytes) in [("f32", ColW::F32(&w), 4), ("bf16", ColW::Bf16(&wb), 2)] {
            let reps = (300_000_000 / (k * n)).max(3);
            let mut best = f64::MAX;
            for _ in 0..5 {
                let (t, c0) = (Instant::now(), cpu_time());
                for _ in 0..reps {
                    matmul_cols(isa, &x, m, k, cw, n, None, &mut c, n);
                }
                let el = if threads == 1 { cpu_time() - c0 } else { t.elapsed().as_secs_f64() };
                best = best.min(el / reps as f64);
            }
            let flops = 2.0 * (m * k * n) as f64;
            println!(
                "{name} m={m} {k}x{n}: {:8.1} us  {:6.1} GFLOP/s  {:6.2} GB/s",
                best * 1e6,
                flops / best / 1e9,
                (k * n * bytes) as f64 / best / 1e9
            );
        }
    }
}
