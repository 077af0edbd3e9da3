//! Single-kernel timing of the Q8_0 / Q4_0 decode kernels (weights hot in cache, and cold: many
//! distinct weights cycled), for tuning: `cargo run --release -p tierflow-core --example qbench
//! -- [threads] [m]`. Reports weights per second and weight bytes per second.
use std::time::Instant;
use tierflow_core::cpu::Isa;
use tierflow_core::kernels::qdot::{matmul_q, quantize_acts};
use tierflow_core::kernels::quant::{quantize, Format, QWeight};

/// Wall time, or with one thread this thread's CPU time (less disturbed on a shared machine).
struct Clock(Instant, f64);
impl Clock {
    fn now() -> Clock {
        Clock(Instant::now(), cpu_time())
    }
    fn elapsed(&self) -> f64 {
        if tierflow_core::pool::num_threads() == 1 {
            cpu_time() - self.1
        } else {
            self.0.elapsed().as_secs_f64()
        }
    }
}
fn cpu_time() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec out-parameter.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1);
    let m: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1);
    tierflow_core::pool::set_num_threads(Some(threads)).unwrap();
    let isa = Isa::detect();
    for &(k, n, copies) in
        &[(4096usize, 64usize, 1usize), (2048, 2048, 24), (5632, 2048, 8), (4096, 4096, 4)]
    {
        let wf: Vec<f32> = (0..k * n).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 31) % 97) as f32 / 97.0 - 0.5).collect();
        let mut c = vec![0f32; m * n];
        let t = Instant::now();
        for _ in 0..1000 {
            std::hint::black_box(quantize_acts(isa, std::hint::black_box(&x), m, k));
        }
        println!("quantize_acts m={m} k={k}: {:.2} us", t.elapsed().as_secs_f64() * 1e3);
        for fmt in [Format::F32, Format::Bf16, Format::Q8_0, Format::Q4_0] {
            let datas: Vec<Vec<u8>> =
                (0..copies).map(|_| quantize(fmt, &wf, k, n).unwrap()).collect();
            let ws: Vec<QWeight> =
                datas.iter().map(|d| QWeight::new(fmt, k, n, d).unwrap()).collect();
            let reps = (200_000_000 / (k * n * copies)).max(3);
            let mut best = f64::MAX;
            for _ in 0..5 {
                let t = Clock::now();
                for _ in 0..reps {
                    for w in &ws {
                        match quantize_acts(isa, &x, m, k) {
                            Some(a) if matches!(fmt, Format::Q8_0 | Format::Q4_0) => {
                                matmul_q(isa, &a, w, None, &mut c, n)
                            }
                            _ => tierflow_core::kernels::dot::matmul_rows(
                                isa, &x, m, w, None, &mut c, n,
                            ),
                        }
                    }
                }
                best = best.min(t.elapsed() / (reps * copies) as f64);
            }
            let mut bestf = f64::MAX;
            for _ in 0..5 {
                let t = Clock::now();
                for _ in 0..reps {
                    for w in &ws {
                        tierflow_core::kernels::dot::matmul_rows(isa, &x, m, w, None, &mut c, n);
                    }
                }
                bestf = bestf.min(t.elapsed() / (reps * copies) as f64);
            }
            let bytes = datas[0].len() as f64;
            println!(
                "{fmt:?} m={m} {k}x{n} x{copies}: {:8.1} us  {:6.2} Gw/s  {:6.2} GB/s",
                best * 1e6,
                (k * n) as f64 / best / 1e9,
                bytes / best / 1e9
            );
            println!(
                "    float path: {:8.1} us  ({:.2}x the integer path's time)",
                bestf * 1e6,
                bestf / best
            );
        }
    }
}
