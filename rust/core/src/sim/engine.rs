//! The discrete-event simulator.
//!
//! Events are request arrivals and instance completions. Requests queue per device instance
//! (dispatched on arrival to the instance that holds their expert soonest); an idle instance with
//! a queue picks a batch by the [`Batching`] policy, runs the router once on it, then brings each
//! needed expert into the exec tier (evicting by the [`Eviction`] policy; copies serialise on the
//! instance's copy link and may be prefetched while another expert runs) and runs it with the
//! latency model of [`super::cost`]. Each event costs O(resident experts), so traces of millions
//! of requests simulate in about a second.

use super::cost::{NodeCost, NodeSpec};
use super::device::DeviceSpec;
use super::policy::{place, Batching, Placement};
use super::report::{InstanceStats, SimReport};
use crate::error::{CoreError, Result};
use crate::eviction::{Eviction, EvictionKind};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// The graph as the simulator sees it: nodes `0..n` (experts and later stages), an optional router.
#[derive(Clone, Debug)]
pub struct Model {
    pub names: Vec<String>,
    pub nodes: Vec<NodeSpec>,
    /// Node run after node `i` for the same request (-1: none).
    pub post: Vec<i32>,
    /// Router (always resident in the exec tier; its bytes are reserved there).
    pub router: Option<NodeSpec>,
}

/// The requests. Open loop: `arrival` is absolute and non-decreasing. Closed loop (`user` given):
/// `arrival[i]` is the think time before request `i`, which is issued when the previous request
/// of the same user completes (a user's first request at its think time).
#[derive(Clone, Debug, Default)]
pub struct Workload {
    pub arrival: Vec<f64>,
    pub prompt: Vec<u32>,
    pub output: Vec<u32>,
    pub expert: Vec<u32>,
    /// Second most likely expert by the router's scores (-1: none), the prefetch hint.
    pub alt: Vec<i32>,
    pub user: Option<Vec<u32>>,
}

/// Policies and sizes of one run.
#[derive(Clone, Debug)]
pub struct Config {
    pub eviction: EvictionKind,
    pub placement: Placement,
    pub batching: Batching,
    pub prefetch: bool,
    pub instances: usize,
    /// Popularity per node for placement (None: counted from the workload).
    pub popularity: Option<Vec<f64>>,
}

struct Inst {
    resident: Vec<bool>,
    pinned: Vec<bool>,
    ready: Vec<f64>,
    list: Vec<u32>,
    used: u64,
    free_at: f64,
    link_free: f64,
    queue: VecDeque<u32>,
    ev: Eviction,
    st: InstanceStats,
}

#[derive(PartialEq, PartialOrd)]
struct Ord64(f64);
impl Eq for Ord64 {}
#[allow(clippy::derive_ord_xor_partial_ord)]
impl Ord for Ord64 {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&o.0)
    }
}

fn validate(model: &Model, w: &Workload, cfg: &Config) -> Result<()> {
    let n = w.arrival.len();
    if n == 0 {
        return Err(CoreError::Value("trace is empty: nothing to simulate".into()));
    }
    for (f, len) in [
        ("prompt_tokens", w.prompt.len()),
        ("output_tokens", w.output.len()),
        ("expert", w.expert.len()),
        ("alt", w.alt.len()),
    ] {
        if len != n {
            return Err(CoreError::Value(format!(
                "trace field {f} has {len} entries, arrival has {n}"
            )));
        }
    }
    if let Some(u) = &w.user {
        if u.len() != n {
            return Err(CoreError::Value(format!(
                "trace field user has {} entries, arrival has {n}",
                u.len()
            )));
        }
    }
    let m = model.nodes.len();
    if m == 0 {
        return Err(CoreError::Value("the CoE has no experts".into()));
    }
    if model.post.len() != m || model.names.len() != m {
        return Err(CoreError::Value(
            "model: names, nodes and post must have one entry per node".into(),
        ));
    }
    for (i, &p) in model.post.iter().enumerate() {
        if p >= m as i32 || p == i as i32 {
            return Err(CoreError::Value(format!("model: post[{i}] = {p} is not another node")));
        }
    }
    let mut prev = f64::NEG_INFINITY;
    for i in 0..n {
        let a = w.arrival[i];
        if !(a.is_finite() && a >= 0.0) {
            return Err(CoreError::Value(format!(
                "trace field arrival[{i}] must be a finite time >= 0, got {a}"
            )));
        }
        if w.user.is_none() {
            if a < prev {
                return Err(CoreError::Value(format!("trace field arrival[{i}] = {a} is before arrival[{}] = {prev} (sort the trace)", i - 1)));
            }
            prev = a;
        }
        if w.expert[i] as usize >= m {
            return Err(CoreError::Value(format!(
                "trace field expert[{i}] = {} is not a node index (0..{m})",
                w.expert[i]
            )));
        }
        if w.alt[i] >= m as i32 {
            return Err(CoreError::Value(format!(
                "trace field alt[{i}] = {} is not a node index",
                w.alt[i]
            )));
        }
        if w.prompt[i] == 0 || w.output[i] == 0 {
            return Err(CoreError::Value(format!(
                "trace request {i}: prompt_tokens and output_tokens must be at least 1"
            )));
        }
    }
    if cfg.instances == 0 {
        return Err(CoreError::Value("instances must be at least 1".into()));
    }
    if let Some(p) = &cfg.popularity {
        if p.len() != m || p.iter().any(|x| !(x.is_finite() && *x >= 0.0)) {
            return Err(CoreError::Value(
                "popularity must hold one finite value >= 0 per node".into(),
            ));
        }
    }
    Ok(())
}

fn gb(b: f64) -> String {
    format!("{:.2} GB", b / 1e9)
}

/// Assign every node a home tier below the exec tier (popular nodes in faster tiers), checking
/// that everything fits. Returns home tiers and the expert capacity of the exec tier.
fn homes(dev: &DeviceSpec, model: &Model, pop: &[f64]) -> Result<(Vec<u32>, u64)> {
    let x = dev.exec_tier;
    let router = model.router.as_ref().map_or(0, |r| r.bytes);
    let cap = dev.exec_capacity();
    if router >= cap {
        return Err(CoreError::Schedule(format!(
            "the router ({}) does not fit in tier {:?} ({} free after {} reserved): {} missing",
            gb(router as f64),
            dev.tiers[x].name,
            gb(cap as f64),
            gb(dev.reserved as f64),
            gb((router - cap) as f64 + 1.0)
        )));
    }
    let cap = cap - router;
    for (i, nd) in model.nodes.iter().enumerate() {
        if nd.bytes > cap {
            return Err(CoreError::Schedule(format!(
                "node {:?} ({}) is larger than tier {:?} can hold for experts ({}): {} missing",
                model.names[i],
                gb(nd.bytes as f64),
                dev.tiers[x].name,
                gb(cap as f64),
                gb((nd.bytes - cap) as f64)
            )));
        }
    }
    let mut order: Vec<usize> = (0..model.nodes.len()).collect();
    order.sort_by(|&a, &b| pop[b].total_cmp(&pop[a]).then(a.cmp(&b)));
    let mut home = vec![0u32; model.nodes.len()];
    if x + 1 == dev.tiers.len() {
        // the exec tier is the last: every node must stay resident
        let total: u64 = model.nodes.iter().map(|n| n.bytes).sum();
        if total > cap {
            return Err(CoreError::Schedule(format!(
                "the CoE ({}) does not fit in {:?}, the slowest tier ({} for experts): {} missing",
                gb(total as f64),
                dev.tiers[x].name,
                gb(cap as f64),
                gb((total - cap) as f64)
            )));
        }
        home.iter_mut().for_each(|h| *h = x as u32);
        return Ok((home, cap));
    }
    let mut free: Vec<u64> = dev.tiers.iter().map(|t| t.capacity).collect();
    for &i in &order {
        let b = model.nodes[i].bytes;
        match (x + 1..dev.tiers.len()).find(|&t| free[t] >= b) {
            Some(t) => {
                free[t] -= b;
                home[i] = t as u32;
            }
            None => {
                let total: u64 = model.nodes.iter().map(|n| n.bytes).sum();
                let room: u64 = dev.tiers[x + 1..].iter().map(|t| t.capacity).sum();
                let missing = if total > room { total - room } else { b };
                return Err(CoreError::Schedule(format!(
                    "the CoE ({} in {} nodes) does not fit in the tiers below {:?} ({}): {} missing",
                    gb(total as f64), model.nodes.len(), dev.tiers[x].name, gb(room as f64), gb(missing as f64)
                )));
            }
        }
    }
    Ok((home, cap))
}

struct Sim<'a> {
    dev: &'a DeviceSpec,
    model: &'a Model,
    w: &'a Workload,
    cfg: &'a Config,
    costs: Vec<NodeCost>,
    router: Option<NodeCost>,
    copy: Vec<f64>,
    home: Vec<u32>,
    cap: u64,
    insts: Vec<Inst>,
    rep: SimReport,
    batch: Vec<u32>,
    chain: Vec<u32>,
    protect: Vec<u32>,
    pbuf: Vec<u32>,
    ahead: Vec<u32>,
}

impl Sim<'_> {
    /// Make `e` resident on instance `k` at time `t`, not evicting `protect`; returns when it is
    /// ready. `demand`: an access (counts hit/miss); otherwise a prefetch.
    fn bring(
        &mut self,
        k: usize,
        e: u32,
        t: f64,
        protect: &[u32],
        demand: bool,
    ) -> Result<Option<f64>> {
        let ei = e as usize;
        let size = self.model.nodes[ei].bytes;
        let inst = &mut self.insts[k];
        if self.home[ei] as usize == self.dev.exec_tier || inst.resident[ei] {
            if demand {
                inst.st.hits += 1;
                inst.ev.on_access(e);
            }
            return Ok(Some(t.max(inst.ready[ei])));
        }
        // make room
        while inst.used + size > self.cap {
            let cands = inst.list.iter().copied().filter(|&c| !inst.pinned[c as usize] && c != e);
            let v = inst.ev.victim(cands.clone().filter(|c| !protect.contains(c)));
            let v = match v {
                Some(v) => v,
                None if !demand => return Ok(None),
                None => match inst.ev.victim(cands.filter(|c| protect.first() != Some(c))) {
                    Some(v) => v,
                    None => {
                        return Err(CoreError::Schedule(format!(
                            "instance {k}: cannot make room for {:?} ({} bytes) in {} bytes of pinned experts",
                            self.model.names[ei], size, inst.used
                        )))
                    }
                },
            };
            inst.resident[v as usize] = false;
            inst.list.retain(|&c| c != v);
            inst.used -= self.model.nodes[v as usize].bytes;
            inst.ev.on_evict(v);
            inst.st.occupancy.push((t, inst.used));
        }
        let start = t.max(inst.link_free);
        let ready = start + self.copy[ei];
        inst.link_free = ready;
        inst.ready[ei] = ready;
        inst.resident[ei] = true;
        inst.list.push(e);
        inst.used += size;
        inst.st.occupancy.push((t, inst.used));
        inst.st.switches += 1;
        for l in self.dev.exec_tier..self.home[ei] as usize {
            inst.st.link_bytes[l] += size;
        }
        self.rep.node_loads[ei] += 1;
        inst.ev.on_insert(e);
        if demand {
            inst.st.misses += 1;
            inst.ev.on_access(e);
        } else {
            inst.st.prefetches += 1;
        }
        Ok(Some(ready))
    }

    fn holds(&self, k: usize, e: u32) -> bool {
        let i = &self.insts[k];
        i.resident[e as usize] || self.home[e as usize] as usize == self.dev.exec_tier
    }

    fn dispatch(&mut self, r: u32, t: f64) {
        let k = if self.insts.len() == 1 {
            0
        } else {
            let e = self.w.expert[r as usize];
            let est = self.costs[e as usize].pass(self.w.prompt[r as usize] as f64, 0.0)
                + self.costs[e as usize].decode(
                    1.0,
                    self.w.prompt[r as usize] as f64,
                    self.w.output[r as usize] - 1,
                );
            let mut best = (f64::INFINITY, 0usize);
            for k in 0..self.insts.len() {
                let i = &self.insts[k];
                let miss = if self.holds(k, e) { 0.0 } else { self.copy[e as usize] };
                let score = i.free_at.max(t) + i.queue.len() as f64 * est + miss;
                if score < best.0 {
                    best = (score, k);
                }
            }
            best.1
        };
        self.insts[k].queue.push_back(r);
        self.rep.instance[r as usize] = k as u32;
    }

    /// Pick a batch from instance `k`'s queue at time `t` into `self.batch`.
    fn pick(&mut self, k: usize, t: f64) {
        self.batch.clear();
        let w = self.w;
        let inst = &mut self.insts[k];
        match self.cfg.batching {
            Batching::Paper { size } => {
                for _ in 0..size {
                    match inst.queue.pop_front() {
                        Some(r) => self.batch.push(r),
                        None => break,
                    }
                }
            }
            Batching::Affinity { size, max_wait } => {
                let front = *inst.queue.front().expect("nonempty queue");
                let mut e = w.expert[front as usize];
                if t - self.rep.arrival[front as usize] <= max_wait {
                    // the resident expert with the most queued requests
                    let mut best = 0usize;
                    for &r in inst.queue.iter() {
                        let c = w.expert[r as usize];
                        if inst.resident[c as usize]
                            || self.home[c as usize] as usize == self.dev.exec_tier
                        {
                            let n =
                                inst.queue.iter().filter(|&&q| w.expert[q as usize] == c).count();
                            if n > best {
                                best = n;
                                e = c;
                            }
                        }
                        if best >= size as usize {
                            break;
                        }
                    }
                }
                let mut i = 0;
                while i < inst.queue.len() && self.batch.len() < size as usize {
                    let r = inst.queue[i];
                    if w.expert[r as usize] == e {
                        self.batch.push(r);
                        inst.queue.remove(i);
                    } else {
                        i += 1;
                    }
                }
            }
        }
    }

    fn prefetch(&mut self, k: usize, t: f64, cur: u32, next: &[u32], alt: i32) -> Result<()> {
        let mut done = 0;
        let mut protect = std::mem::take(&mut self.pbuf);
        protect.clear();
        protect.push(cur);
        for &c in next {
            if done == 2 {
                break;
            }
            if !self.holds(k, c) {
                if self.bring(k, c, t, &protect, false)?.is_none() {
                    done = 2;
                    break;
                }
                done += 1;
            }
            protect.push(c);
        }
        if done == 2 {
            self.pbuf = protect;
            return Ok(());
        }
        if alt >= 0 && done < 2 && !self.holds(k, alt as u32) {
            // speculative: only into free space
            let a = alt as usize;
            if self.insts[k].used + self.model.nodes[a].bytes <= self.cap {
                self.bring(k, alt as u32, t, &protect, false)?;
            }
        }
        self.pbuf = protect;
        Ok(())
    }

    /// Serve one batch on instance `k` starting at `t`; returns the completion time and pushes
    /// (request, completion) pairs into `done`.
    fn serve(&mut self, k: usize, t0: f64, done: &mut Vec<(u32, f64)>) -> Result<f64> {
        self.pick(k, t0);
        let batch = std::mem::take(&mut self.batch);
        let w = self.w;
        let mut t = t0;
        if let Some(rc) = &self.router {
            let tokens: f64 = batch.iter().map(|&r| w.prompt[r as usize] as f64).sum();
            t += rc.pass(tokens, 0.0);
        }
        self.rep.batches += 1;
        for &r in &batch {
            self.rep.queue[r as usize] = t0 - self.rep.arrival[r as usize];
        }
        // lookahead for prefetch: the next batch members' experts, then queued requests'
        let mut ahead = std::mem::take(&mut self.ahead);
        match self.cfg.batching {
            Batching::Paper { .. } => {
                for (j, &r) in batch.iter().enumerate() {
                    let ri = r as usize;
                    self.chain.clear();
                    let mut e = w.expert[ri] as i32;
                    while e >= 0 && self.chain.len() <= self.model.nodes.len() {
                        self.chain.push(e as u32);
                        e = self.model.post[e as usize];
                    }
                    let chain = std::mem::take(&mut self.chain);
                    let p = w.prompt[ri] as f64;
                    let o = w.output[ri];
                    for (ci, &node) in chain.iter().enumerate() {
                        let mut protect = std::mem::take(&mut self.protect);
                        protect.clear();
                        protect.extend(chain[ci..].iter().copied());
                        protect.extend(batch[j + 1..].iter().map(|&q| w.expert[q as usize]));
                        let ready = self.bring(k, node, t, &protect, true)?.expect("demand load");
                        self.protect = protect;
                        self.insts[k].st.stall += (ready - t).max(0.0);
                        let start = ready.max(t);
                        if self.cfg.prefetch {
                            ahead.clear();
                            ahead.extend(chain[ci + 1..].iter().copied());
                            ahead.extend(batch[j + 1..].iter().map(|&q| w.expert[q as usize]));
                            ahead.extend(
                                self.insts[k].queue.iter().take(4).map(|&q| w.expert[q as usize]),
                            );
                            let alt = if ahead.is_empty() { w.alt[ri] } else { -1 };
                            self.prefetch(k, start, node, &ahead, alt)?;
                        }
                        let c = &self.costs[node as usize];
                        if ci == 0 {
                            let pre = c.pass(p, 0.0);
                            self.rep.ttft[ri] = start + pre - self.rep.arrival[ri];
                            t = start + pre + c.decode(1.0, p, o - 1);
                        } else {
                            t = start + c.pass(p + o as f64, 0.0);
                        }
                    }
                    self.chain = chain;
                    self.rep.latency[ri] = t - self.rep.arrival[ri];
                    done.push((r, t));
                }
            }
            Batching::Affinity { .. } => {
                let e = w.expert[batch[0] as usize];
                let ready = self.bring(k, e, t, &[e], true)?.expect("demand load");
                // the other batch members count as hits on the same expert
                for _ in 1..batch.len() {
                    self.insts[k].st.hits += 1;
                    self.insts[k].ev.on_access(e);
                }
                self.insts[k].st.stall += (ready - t).max(0.0);
                let start = ready.max(t);
                if self.cfg.prefetch {
                    ahead.clear();
                    ahead.extend(self.insts[k].queue.iter().take(4).map(|&q| w.expert[q as usize]));
                    let alt = if ahead.is_empty() { w.alt[batch[0] as usize] } else { -1 };
                    self.prefetch(k, start, e, &ahead, alt)?;
                }
                let c = self.costs[e as usize];
                let b = batch.len() as f64;
                let tokens: f64 = batch.iter().map(|&r| w.prompt[r as usize] as f64).sum();
                let pre = c.pass(tokens, 0.0);
                let mut end = start + pre;
                for &r in &batch {
                    let ri = r as usize;
                    self.rep.ttft[ri] = start + pre - self.rep.arrival[ri];
                    let fin = start + pre + c.decode(b, tokens, w.output[ri] - 1);
                    end = end.max(fin);
                    self.rep.latency[ri] = fin - self.rep.arrival[ri];
                }
                t = end;
                // later stages run per request after the batch
                for &r in &batch {
                    let ri = r as usize;
                    let mut nx = self.model.post[e as usize];
                    let mut hops = 0;
                    while nx >= 0 && hops < self.model.nodes.len() {
                        let node = nx as u32;
                        let ready = self.bring(k, node, t, &[node], true)?.expect("demand load");
                        let s = ready.max(t);
                        t = s + self.costs[nx as usize]
                            .pass((w.prompt[ri] + w.output[ri]) as f64, 0.0);
                        nx = self.model.post[nx as usize];
                        hops += 1;
                    }
                    if hops > 0 {
                        self.rep.latency[ri] = t - self.rep.arrival[ri];
                    }
                }
                for &r in &batch {
                    done.push((r, self.rep.arrival[r as usize] + self.rep.latency[r as usize]));
                }
            }
        }
        self.batch = batch;
        self.ahead = ahead;
        let inst = &mut self.insts[k];
        inst.st.busy += t - t0;
        inst.free_at = t;
        Ok(t)
    }
}

/// Simulate `w` on `cfg.instances` copies of `dev`.
pub fn simulate(dev: &DeviceSpec, model: &Model, w: &Workload, cfg: &Config) -> Result<SimReport> {
    dev.validate()?;
    validate(model, w, cfg)?;
    let m = model.nodes.len();
    let n = w.arrival.len();
    let pop: Vec<f64> = match &cfg.popularity {
        Some(p) => p.clone(),
        None => {
            let mut c = vec![0f64; m];
            for &e in &w.expert {
                c[e as usize] += 1.0;
            }
            c
        }
    };
    let (home, cap) = homes(dev, model, &pop)?;
    let sizes: Vec<u64> = model.nodes.iter().map(|nd| nd.bytes).collect();
    let pinned = if home.iter().all(|&h| h as usize == dev.exec_tier) {
        vec![Vec::new(); cfg.instances]
    } else {
        place(cfg.placement, &sizes, &pop, cap, cfg.instances)
    };
    // a pinned set must leave room for the largest unpinned node: unpin the least popular
    // (placement lists pins in popularity order) until it does
    let mut pinned = pinned;
    for p in pinned.iter_mut() {
        loop {
            let used: u64 = p.iter().map(|&e| sizes[e as usize]).sum();
            let biggest =
                (0..m).filter(|e| !p.contains(&(*e as u32))).map(|e| sizes[e]).max().unwrap_or(0);
            if used + biggest <= cap || p.is_empty() {
                break;
            }
            p.pop();
        }
    }
    let links = dev.tiers.len().saturating_sub(1);
    let mut insts = Vec::with_capacity(cfg.instances);
    for p in pinned.iter() {
        let mut ev = Eviction::new(cfg.eviction, m);
        if cfg.eviction == EvictionKind::Belady {
            // the plan: this trace's expert sequence (exact for one instance and FIFO order)
            ev.set_future(&w.expert)?;
        }
        let mut inst = Inst {
            resident: vec![false; m],
            pinned: vec![false; m],
            ready: vec![0.0; m],
            list: Vec::new(),
            used: 0,
            free_at: 0.0,
            link_free: 0.0,
            queue: VecDeque::new(),
            ev,
            st: InstanceStats { link_bytes: vec![0; links], ..Default::default() },
        };
        for &e in p {
            inst.resident[e as usize] = true;
            inst.pinned[e as usize] = true;
            inst.list.push(e);
            inst.used += sizes[e as usize];
        }
        inst.st.occupancy.push((0.0, inst.used));
        insts.push(inst);
    }
    let costs: Vec<NodeCost> = model.nodes.iter().map(|nd| NodeCost::new(nd, dev)).collect();
    let copy: Vec<f64> = (0..m).map(|e| dev.copy_time(home[e] as usize, sizes[e])).collect();
    let mut sim = Sim {
        dev,
        model,
        w,
        cfg,
        costs,
        router: model.router.as_ref().map(|r| NodeCost::new(r, dev)),
        copy,
        home: home.clone(),
        cap,
        insts,
        rep: SimReport {
            arrival: vec![0.0; n],
            ttft: vec![0.0; n],
            latency: vec![0.0; n],
            queue: vec![0.0; n],
            instance: vec![0; n],
            node_loads: vec![0; m],
            home,
            pinned,
            exec_capacity: cap,
            ..Default::default()
        },
        batch: Vec::new(),
        chain: Vec::new(),
        protect: Vec::new(),
        pbuf: Vec::new(),
        ahead: Vec::new(),
    };
    // arrivals
    let mut heap: BinaryHeap<Reverse<(Ord64, u32)>> = BinaryHeap::new();
    let mut next_of: Vec<u32> = Vec::new();
    if let Some(users) = &w.user {
        next_of = vec![u32::MAX; n];
        let mut last: std::collections::HashMap<u32, u32> = std::collections::HashMap::new();
        for i in 0..n {
            match last.insert(users[i], i as u32) {
                Some(p) => next_of[p as usize] = i as u32,
                None => heap.push(Reverse((Ord64(w.arrival[i]), i as u32))),
            }
        }
    }
    let closed = w.user.is_some();
    let mut open_next = 0usize;
    let mut done: Vec<(u32, f64)> = Vec::new();
    let mut finished = 0usize;
    let mut makespan: f64 = 0.0;
    while finished < n {
        let ta = if closed {
            heap.peek().map_or(f64::INFINITY, |Reverse((t, _))| t.0)
        } else if open_next < n {
            w.arrival[open_next]
        } else {
            f64::INFINITY
        };
        let mut best = (f64::INFINITY, usize::MAX);
        for (k, inst) in sim.insts.iter().enumerate() {
            if !inst.queue.is_empty() && inst.free_at < best.0 {
                best = (inst.free_at, k);
            }
        }
        if ta.is_finite() && ta <= best.0 {
            let r = if closed {
                heap.pop().expect("peeked").0 .1
            } else {
                open_next += 1;
                (open_next - 1) as u32
            };
            sim.rep.arrival[r as usize] = ta;
            sim.dispatch(r, ta);
            // an idle instance starts at the arrival time
            let k = sim.rep.instance[r as usize] as usize;
            if sim.insts[k].free_at < ta {
                sim.insts[k].free_at = ta;
            }
            continue;
        }
        if best.1 == usize::MAX {
            return Err(CoreError::Internal(
                "simulator: no event left before all requests finished".into(),
            ));
        }
        let (t, k) = best;
        done.clear();
        let end = sim.serve(k, t, &mut done)?;
        makespan = makespan.max(end);
        finished += done.len();
        if closed {
            for &(r, fin) in &done {
                let nx = next_of[r as usize];
                if nx != u32::MAX {
                    heap.push(Reverse((Ord64(fin + w.arrival[nx as usize]), nx)));
                }
            }
        }
    }
    let mut rep = sim.rep;
    rep.makespan = makespan;
    rep.instances = sim.insts.into_iter().map(|i| i.st).collect();
    Ok(rep)
}

#[cfg(test)]
mod tests;
