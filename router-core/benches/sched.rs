//! Enqueue + dequeue of one packet through the link scheduler, against a plain
//! `VecDeque` push + pop of the same owned packets in the same group.
//!
//! Every class stays backlogged (the packet that leaves is queued again in its
//! class), so each iteration does the scheduler's full work: one rank call per
//! level and a push and a pop in each PIFO on the path. Lines:
//!
//! * `vecdeque_baseline`: FIFO of `OwnedPacket`s, 24 queued;
//! * `sfq_3_classes`: built-in SFQ, weights 20/30/50, 8 queued per class;
//! * `sfq_3_classes_deep`: the same with 1000 queued per class (heaps of 3000);
//! * `sfq_64_classes_two_level`: 8 groups of 8 leaves, 8 queued per leaf;
//! * `fifo_rank_3_classes`: the PIFO tree with the constant `Fifo` rank;
//! * `queue_manager_sfq_3_classes`: plus classification from the packet bytes
//!   (parse, source-prefix lookup, keyed flow hash, DSCP);
//! * `sharetree_3_leaves`: resource-mgr's `ShareTree` (H-SFQ with FIFO leaves,
//!   no ranks) on the same packets, for reference.
//!
//! After criterion's lines it prints each line's ns per packet and ratio to the
//! baseline, from its own interleaved timing of the same closures (median of 9
//! rounds), so the ratio is always from one run:
//! `cargo bench -p router-core --bench sched`.

#![allow(
    clippy::unwrap_used,
    reason = "bench setup: a failure is a bug in the bench itself"
)]

use std::collections::VecDeque;
use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use resource_mgr::{NodeId, ShareTree, TreeConfig};
use router_core::Instant;
use router_core::packet::HEADROOM;
use router_core::queue::{OwnedPacket, PacketPool, QueueManager, SourceClassifier};
use router_core::sched::{ClassConfig, ClassId, Fifo, LinkScheduler, PacketMeta, SchedConfig, Sfq};
use router_core::synth::PacketSpec;
use router_core::wire::TcpFlags;

fn len_of(n: u64) -> u32 {
    64 + (n % 1437) as u32
}

fn config() -> SchedConfig {
    SchedConfig::new(1 << 16, 1 << 32).with_max_classes(128)
}

fn leaf_config() -> ClassConfig {
    ClassConfig::new(1).with_limits(4096, 1 << 30)
}

/// A scheduler with leaves of weights 20/30/50 and `per_class` packets each.
fn three(
    pool: &mut PacketPool,
    per_class: usize,
    rank: Box<dyn router_core::sched::Rank>,
) -> LinkScheduler<OwnedPacket> {
    let mut s = LinkScheduler::with_rank(config(), rank);
    let leaves: Vec<ClassId> = [20, 30, 50]
        .into_iter()
        .map(|w| {
            let mut c = leaf_config();
            c.weight = w;
            s.add_class(ClassId::ROOT, c).unwrap()
        })
        .collect();
    fill(&mut s, pool, &leaves, per_class);
    s
}

fn two_level_64(pool: &mut PacketPool) -> LinkScheduler<OwnedPacket> {
    let mut s = LinkScheduler::new(config());
    let mut leaves = Vec::new();
    for g in 0..8_u32 {
        let group = s.add_class(ClassId::ROOT, ClassConfig::new(g + 1)).unwrap();
        for l in 0..8_u32 {
            let mut c = leaf_config();
            c.weight = l + 1;
            leaves.push(s.add_class(group, c).unwrap());
        }
    }
    fill(&mut s, pool, &leaves, 8);
    s
}

fn fill(
    s: &mut LinkScheduler<OwnedPacket>,
    pool: &mut PacketPool,
    leaves: &[ClassId],
    per_class: usize,
) {
    for (i, &leaf) in leaves.iter().enumerate() {
        for k in 0..per_class {
            let meta = PacketMeta::new(len_of((i * 7 + k * 181) as u64), leaf);
            s.enqueue(&meta, pool.take().unwrap(), Instant::ZERO)
                .unwrap();
        }
    }
}

/// One iteration: the next packet leaves and is queued again in its class.
fn cycle(s: &mut LinkScheduler<OwnedPacket>, n: u64) -> u32 {
    let now = Instant::from_nanos(n);
    let out = s.dequeue(now).unwrap();
    let meta = PacketMeta::new(len_of(n), out.class).with_flow(n & 63);
    let len = out.len;
    let _ = s.enqueue(&meta, black_box(out.packet), now);
    len
}

/// A queue manager whose three classes match the sources of three VIP subnets.
fn manager(pool: &mut PacketPool) -> QueueManager {
    let mut s = LinkScheduler::new(config());
    let mut c = SourceClassifier::new(16, [7, 8, 9, 10]);
    for (k, w) in [20_u32, 30, 50].into_iter().enumerate() {
        let mut cfg = leaf_config();
        cfg.weight = w;
        let class = s.add_class(ClassId::ROOT, cfg).unwrap();
        c.insert(format!("192.200.{k}.0/24").parse().unwrap(), class)
            .unwrap();
    }
    let mut q = QueueManager::new(c, s);
    for k in 0..24_u16 {
        let src: SocketAddr = format!("192.200.{}.10:443", k % 3).parse().unwrap();
        let dst: SocketAddr = format!("198.51.100.7:{}", 40_000 + k).parse().unwrap();
        let spec = PacketSpec::tcp(src, dst, TcpFlags::ACK).with_payload(64 + usize::from(k) * 50);
        let mut p = pool.take().unwrap();
        let n = spec.write(&mut p.storage_mut()[HEADROOM..]).unwrap();
        p.set_frame(HEADROOM, n).unwrap();
        q.enqueue(p, Instant::ZERO).unwrap();
    }
    q
}

fn manager_cycle(q: &mut QueueManager, n: u64) -> u32 {
    let now = Instant::from_nanos(n);
    let out = q.dequeue(now).unwrap();
    let len = out.len;
    let _ = q.enqueue(black_box(out.packet), now);
    len
}

fn share_tree(pool: &mut PacketPool) -> ShareTree<OwnedPacket> {
    let mut t = ShareTree::new(TreeConfig::new(64, 1 << 16));
    let root = t.root();
    let leaves: Vec<NodeId> = [20, 30, 50]
        .into_iter()
        .map(|w| t.add_node(root, w, None).unwrap())
        .collect();
    for (i, &leaf) in leaves.iter().enumerate() {
        for k in 0..8 {
            let cost = u64::from(len_of((i * 7 + k * 181) as u64));
            t.enqueue(leaf, pool.take().unwrap(), cost).unwrap();
        }
    }
    t
}

fn tree_cycle(t: &mut ShareTree<OwnedPacket>, n: u64) -> u64 {
    let out = t.dequeue(n).unwrap();
    let cost = out.cost;
    let _ = t.enqueue(out.leaf, black_box(out.item), u64::from(len_of(n)));
    cost
}

fn baseline(pool: &mut PacketPool) -> VecDeque<(OwnedPacket, u32)> {
    let mut q = VecDeque::with_capacity(1024);
    for k in 0..24 {
        q.push_back((pool.take().unwrap(), len_of(k)));
    }
    q
}

fn fifo_cycle(q: &mut VecDeque<(OwnedPacket, u32)>, n: u64) -> u32 {
    let (p, len) = q.pop_front().unwrap();
    q.push_back((black_box(p), len_of(n)));
    len
}

/// Everything under test, built once.
struct Subjects {
    fifo: VecDeque<(OwnedPacket, u32)>,
    sfq3: LinkScheduler<OwnedPacket>,
    sfq3_deep: LinkScheduler<OwnedPacket>,
    sfq64: LinkScheduler<OwnedPacket>,
    fifo_rank: LinkScheduler<OwnedPacket>,
    manager: QueueManager,
    tree: ShareTree<OwnedPacket>,
}

impl Subjects {
    fn new() -> Self {
        let mut pool = PacketPool::new(8192, 1500);
        Self {
            fifo: baseline(&mut pool),
            sfq3: three(&mut pool, 8, Box::new(Sfq::new(128))),
            sfq3_deep: three(&mut pool, 1000, Box::new(Sfq::new(128))),
            sfq64: two_level_64(&mut pool),
            fifo_rank: three(&mut pool, 8, Box::new(Fifo)),
            manager: manager(&mut pool),
            tree: share_tree(&mut pool),
        }
    }

    /// Runs line `which` for `iters` iterations starting at `n`.
    fn run(&mut self, which: usize, n: u64, iters: u64) {
        for i in n..n + iters {
            let out = match which {
                0 => u64::from(fifo_cycle(&mut self.fifo, i)),
                1 => u64::from(cycle(&mut self.sfq3, i)),
                2 => u64::from(cycle(&mut self.sfq3_deep, i)),
                3 => u64::from(cycle(&mut self.sfq64, i)),
                4 => u64::from(cycle(&mut self.fifo_rank, i)),
                5 => u64::from(manager_cycle(&mut self.manager, i)),
                _ => tree_cycle(&mut self.tree, i),
            };
            black_box(out);
        }
    }
}

const LINES: [&str; 7] = [
    "vecdeque_baseline",
    "sfq_3_classes",
    "sfq_3_classes_deep",
    "sfq_64_classes_two_level",
    "fifo_rank_3_classes",
    "queue_manager_sfq_3_classes",
    "sharetree_3_leaves",
];

fn bench(c: &mut Criterion) {
    let mut s = Subjects::new();
    let mut g = c.benchmark_group("sched_enqueue_dequeue");
    g.throughput(Throughput::Elements(1));
    let mut n = 0_u64;
    for (which, name) in LINES.iter().enumerate() {
        g.bench_function(*name, |b| {
            b.iter(|| {
                n = n.wrapping_add(1);
                s.run(which, n, 1);
            });
        });
    }
    g.finish();

    // Ratios from one interleaved timing of the same closures: rounds alternate
    // the lines so drift hits all of them alike; median of 9 rounds.
    const ITERS: u64 = 200_000;
    let mut samples = vec![Vec::new(); LINES.len()];
    for round in 0..9_u64 {
        for (which, times) in samples.iter_mut().enumerate() {
            let start = std::time::Instant::now();
            s.run(which, round * ITERS, ITERS);
            times.push(start.elapsed().as_nanos() as f64 / ITERS as f64);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let base = median(&mut samples[0]);
    println!("\nsched_enqueue_dequeue: ns per packet (enqueue + dequeue), ratio to baseline");
    for (name, times) in LINES.iter().zip(samples.iter_mut()) {
        let ns = median(times);
        println!("  {name:<30} {ns:>8.1} ns  {:>6.1}x", ns / base);
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
