use super::*;
use crate::sim::device::test_device;

fn model(n: usize, bytes: u64) -> Model {
    Model {
        names: (0..n).map(|i| format!("e{i}")).collect(),
        nodes: (0..n)
            .map(|_| NodeSpec { bytes, params: 1e6, layers: 1, kv_bytes_per_token: 0.0 })
            .collect(),
        post: vec![-1; n],
        router: None,
    }
}

fn work(experts: &[u32], gap: f64) -> Workload {
    let n = experts.len();
    Workload {
        arrival: (0..n).map(|i| i as f64 * gap).collect(),
        prompt: vec![1; n],
        output: vec![1; n],
        expert: experts.to_vec(),
        alt: vec![-1; n],
        user: None,
    }
}

fn cfg(ev: EvictionKind) -> Config {
    Config {
        eviction: ev,
        placement: Placement::None,
        batching: Batching::Paper { size: 1 },
        prefetch: false,
        instances: 1,
        popularity: None,
    }
}

#[test]
fn misses_match_cache_model_and_bytes_are_conserved() {
    let d = test_device(3_000, 100_000);
    let m = model(8, 1_000);
    let seq = [7, 0, 1, 2, 0, 3, 0, 4, 2, 3, 0, 3, 2, 1, 2, 0, 1, 7, 0, 1];
    let w = work(&seq, 1.0);
    let r = simulate(&d, &m, &w, &cfg(EvictionKind::Belady)).unwrap();
    assert_eq!(r.instances[0].misses, 9);
    let r = simulate(&d, &m, &w, &cfg(EvictionKind::Lru)).unwrap();
    assert_eq!(r.instances[0].misses, 12);
    let moved: u64 = r.node_loads.iter().map(|&l| l * 1_000).sum();
    assert_eq!(r.instances[0].link_bytes[0], moved);
    assert!(r.instances[0].occupancy.iter().all(|&(_, b)| b <= 3_000));
}

#[test]
fn a_miss_costs_the_copy_time() {
    // one request: copy 1e6 bytes at 1e9 B/s = 1 ms, then a pass: weights 1e6 / 1e12 = 1 us
    let d = test_device(10_000_000, 100_000_000);
    let m = model(1, 1_000_000);
    let r = simulate(&d, &m, &work(&[0], 1.0), &cfg(EvictionKind::Lru)).unwrap();
    let want = 1e-3 + 1e-6;
    assert!((r.latency[0] - want).abs() < 1e-12, "{}", r.latency[0]);
    assert!((r.ttft[0] - want).abs() < 1e-12);
}

#[test]
fn closed_loop_issues_after_completion() {
    let d = test_device(10_000_000, 100_000_000);
    let m = model(2, 1_000_000);
    let mut w = work(&[0, 1, 0], 0.0);
    w.user = Some(vec![0, 0, 0]);
    let r = simulate(&d, &m, &w, &cfg(EvictionKind::Lru)).unwrap();
    assert!(r.arrival[1] > r.arrival[0] && r.arrival[2] > r.arrival[1]);
    assert!(r.queue.iter().all(|&q| q.abs() < 1e-15));
}

#[test]
fn too_big_is_a_schedule_error() {
    let d = test_device(1_000, 5_000);
    let m = model(8, 1_000);
    let e = simulate(&d, &m, &work(&[0], 1.0), &cfg(EvictionKind::Lru)).unwrap_err();
    assert!(matches!(e, CoreError::Schedule(_)), "{e}");
    assert!(e.to_string().contains("missing"), "{e}");
    let m = model(2, 2_000);
    let e = simulate(&d, &m, &work(&[0], 1.0), &cfg(EvictionKind::Lru)).unwrap_err();
    assert!(e.to_string().contains("larger than tier"), "{e}");
}

#[test]
fn bad_traces_name_the_field() {
    let d = test_device(3_000, 100_000);
    let m = model(2, 1_000);
    let e = simulate(&d, &m, &work(&[], 1.0), &cfg(EvictionKind::Lru)).unwrap_err();
    assert!(e.to_string().contains("empty"));
    let e = simulate(&d, &m, &work(&[5], 1.0), &cfg(EvictionKind::Lru)).unwrap_err();
    assert!(e.to_string().contains("expert[0]"));
}

#[test]
fn prefetch_overlaps_the_next_copy_in_a_batch() {
    // 4 experts of 1 MB, copies 1 ms each; a batch of 4 closed-loop users, each pass ~1 ms+
    let d = test_device(10_000_000, 100_000_000);
    let m = model(4, 1_000_000);
    let mut w = work(&[0, 1, 2, 3], 0.0);
    w.prompt = vec![2_000_000; 4]; // compute-bound prefill: 2e6 tokens * 2e6 flop / 1e15 = 4 ms
    w.user = Some(vec![0, 1, 2, 3]);
    let mut c = cfg(EvictionKind::Lru);
    c.batching = Batching::Paper { size: 4 };
    let base = simulate(&d, &m, &w, &c).unwrap();
    c.prefetch = true;
    let pre = simulate(&d, &m, &w, &c).unwrap();
    // without prefetch every copy stalls (4 ms); with it only the first does (1 ms)
    assert!((base.instances[0].stall - 4e-3).abs() < 1e-9, "{}", base.instances[0].stall);
    assert!((pre.instances[0].stall - 1e-3).abs() < 1e-9, "{}", pre.instances[0].stall);
    assert!((base.makespan - pre.makespan - 3e-3).abs() < 1e-9);
    assert_eq!(pre.instances[0].switches, 4);
    assert_eq!(pre.instances[0].prefetches, 3);
}

#[test]
fn affinity_groups_queued_requests_of_a_resident_expert() {
    let d = test_device(1_000_000, 100_000_000);
    let m = model(2, 1_000_000);
    // all arrive at once: 0 1 0 1 0 1; affinity serves the three 0s then the three 1s
    let w = work(&[0, 1, 0, 1, 0, 1], 0.0);
    let mut c = cfg(EvictionKind::Lru);
    c.batching = Batching::Affinity { size: 8, max_wait: 10.0 };
    let r = simulate(&d, &m, &w, &c).unwrap();
    assert_eq!(r.instances[0].switches, 2);
    assert_eq!(r.batches, 2);
    c.batching = Batching::Paper { size: 1 };
    let f = simulate(&d, &m, &w, &c).unwrap();
    assert_eq!(f.instances[0].switches, 6);
}
