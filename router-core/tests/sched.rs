//! Queue manager and link scheduler: shares by weight, work conservation, strict
//! priority, bounds and drop counters, hot swap of the rank function, and
//! property tests of the queue invariants and of SFQ's fairness bound.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failure is a test failure"
)]

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use resource_mgr::RateLimit;
use router_core::Instant;
use router_core::sched::{
    ClassConfig, ClassId, Fifo, FnRank, LinkScheduler, PacketMeta, QueueDrop, Rank, RankContext,
    RankError, SchedConfig, Sfq, StrictPriority,
};

/// xorshift64*: a seeded, dependency-free packet-size source.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// An IP packet length between 64 and 1500 bytes.
    fn len(&mut self) -> u32 {
        64 + (self.next() % 1437) as u32
    }
}

/// Packets carry `(class position, sequence number)` so order can be checked.
type Pkt = (usize, u64);

struct Harness {
    s: LinkScheduler<Pkt>,
    classes: Vec<ClassId>,
    rng: Rng,
    seq: u64,
    now: Instant,
}

impl Harness {
    fn new(config: SchedConfig, rank: Box<dyn Rank>) -> Self {
        Self {
            s: LinkScheduler::with_rank(config, rank),
            classes: Vec::new(),
            rng: Rng(0x9e37_79b9_7f4a_7c15),
            seq: 0,
            now: Instant::ZERO,
        }
    }

    /// Flat tree: one leaf per weight under the root.
    fn flat(weights: &[u32], rank: Box<dyn Rank>) -> Self {
        Self::flat_with(SchedConfig::default(), weights, rank)
    }

    fn flat_with(config: SchedConfig, weights: &[u32], rank: Box<dyn Rank>) -> Self {
        let mut h = Self::new(config, rank);
        for &w in weights {
            let c = h.s.add_class(ClassId::ROOT, ClassConfig::new(w)).unwrap();
            h.classes.push(c);
        }
        h
    }

    fn offer(&mut self, class: usize, len: u32) -> bool {
        self.seq += 1;
        let meta = PacketMeta::new(len, self.classes[class]).with_flow(self.seq % 7);
        self.s.enqueue(&meta, (class, self.seq), self.now).is_ok()
    }

    fn offer_random(&mut self, class: usize) -> bool {
        let len = self.rng.len();
        self.offer(class, len)
    }

    /// Keeps the classes in `active` backlogged (8 packets each to start, one
    /// more each time one of theirs leaves) for `n` packets; bytes sent per class.
    /// With a shaped link, time advances to whenever the next packet may leave.
    fn backlogged(&mut self, active: &[usize], n: usize) -> Vec<u64> {
        for &c in active {
            while self.s.stats(self.classes[c]).unwrap().backlog < 8 {
                assert!(self.offer_random(c));
            }
        }
        let mut bytes = vec![0_u64; self.classes.len()];
        for _ in 0..n {
            self.now = self.s.next_ready(self.now).expect("backlogged");
            let d = self.s.dequeue(self.now).expect("work conserving");
            bytes[d.packet.0] += u64::from(d.len);
            if active.contains(&d.packet.0) {
                assert!(self.offer_random(d.packet.0));
            }
        }
        bytes
    }
}

fn shares(bytes: &[u64]) -> Vec<f64> {
    let total: u64 = bytes.iter().sum();
    bytes.iter().map(|&b| b as f64 / total as f64).collect()
}

fn assert_shares(bytes: &[u64], want: &[f64], tolerance: f64) {
    let got = shares(bytes);
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - w).abs() <= tolerance,
            "shares {got:?}, want {want:?} within {tolerance}"
        );
    }
}

#[test]
fn weights_20_30_50_share_the_link_within_one_percent() {
    let mut h = Harness::flat(&[20, 30, 50], Box::new(Sfq::new(64)));
    let bytes = h.backlogged(&[0, 1, 2], 100_000);
    assert_shares(&bytes, &[0.2, 0.3, 0.5], 0.01);
    // SFQ's bound is one maximum-size packet per class, far inside 1% here.
    assert_shares(&bytes, &[0.2, 0.3, 0.5], 0.0005);
    assert_eq!(h.s.counters().dequeued, 100_000);
    assert_eq!(h.s.counters().dropped_total(), 0);
}

#[test]
fn shares_hold_on_a_shaped_link_and_the_link_stays_busy() {
    // 10 Mbyte/s, 3000-byte burst: the shaper, not the callers, sets the pace.
    let link = RateLimit::new(10_000_000, 3000).unwrap();
    let mut h = Harness::flat_with(
        SchedConfig::default().with_link(Some(link)),
        &[20, 30, 50],
        Box::new(Sfq::new(64)),
    );
    let bytes = h.backlogged(&[0, 1, 2], 100_000);
    assert_shares(&bytes, &[0.2, 0.3, 0.5], 0.01);
    let sent: u64 = bytes.iter().sum();
    let elapsed = h.now.as_nanos() as f64 / 1e9;
    let rate = sent as f64 / elapsed;
    // Work conserving under shaping: the link runs at its rate (plus one burst).
    assert!((rate / 10e6 - 1.0).abs() < 0.01, "{rate} B/s");
}

#[test]
fn hierarchical_shares_nest() {
    // Tenant X (20) splits 1:3 between its web and audio VIPs; Y 30, Z 50.
    let mut h = Harness::new(SchedConfig::default(), Box::new(Sfq::new(64)));
    let x = h.s.add_class(ClassId::ROOT, ClassConfig::new(20)).unwrap();
    for (parent, w) in [(x, 1), (x, 3), (ClassId::ROOT, 30), (ClassId::ROOT, 50)] {
        let c = h.s.add_class(parent, ClassConfig::new(w)).unwrap();
        h.classes.push(c);
    }
    let bytes = h.backlogged(&[0, 1, 2, 3], 100_000);
    assert_shares(&bytes, &[0.05, 0.15, 0.3, 0.5], 0.01);
    let xs = h.s.stats(x).unwrap();
    assert_eq!(xs.dequeued_bytes, bytes[0] + bytes[1]);
}

#[test]
fn an_idle_class_share_is_redistributed() {
    let mut h = Harness::flat(&[20, 30, 50], Box::new(Sfq::new(64)));
    // Class 1 (30%) idle: the others split the link 20:50, and every dequeue call
    // finds a packet (work conserving).
    let bytes = h.backlogged(&[0, 2], 100_000);
    assert_eq!(bytes[1], 0);
    assert_shares(&bytes, &[20.0 / 70.0, 0.0, 50.0 / 70.0], 0.01);

    // When it comes back it gets its 30% again, and no credit for the time it was
    // idle: over its first 1000 packets back it does not exceed its share.
    let first = h.backlogged(&[0, 1, 2], 1000);
    assert!(shares(&first)[1] < 0.3 + 0.02, "{first:?}");
    let bytes = h.backlogged(&[0, 1, 2], 100_000);
    assert_shares(&bytes, &[0.2, 0.3, 0.5], 0.01);
}

#[test]
fn strict_priority_starves_lower_classes_while_higher_are_backlogged() {
    let mut h = Harness::new(SchedConfig::default(), Box::new(StrictPriority));
    for prio in [2_u8, 0, 1] {
        let c =
            h.s.add_class(ClassId::ROOT, ClassConfig::new(1).with_priority(prio))
                .unwrap();
        h.classes.push(c);
    }
    // All three backlogged: only the priority-0 class (position 1) is served.
    let bytes = h.backlogged(&[0, 1, 2], 10_000);
    assert_eq!(bytes[0], 0);
    assert_eq!(bytes[2], 0);
    assert!(bytes[1] > 0);
    // Once it drains, priority 1 goes entirely before priority 2.
    let mut order = Vec::new();
    while let Some(d) = h.s.dequeue(h.now) {
        order.push(d.packet.0);
    }
    let first_low = order.iter().position(|&c| c == 0).unwrap();
    assert!(order[..first_low].iter().all(|&c| c != 0));
    assert!(order[first_low..].iter().all(|&c| c == 0));
    assert!(order[..first_low].contains(&2));
}

#[test]
fn queue_bounds_hold_and_drops_are_counted() {
    let config = SchedConfig::new(25, 40_000);
    let mut h = Harness::new(config, Box::new(Sfq::new(64)));
    let small =
        h.s.add_class(
            ClassId::ROOT,
            ClassConfig::new(1).with_limits(10, 1_000_000),
        )
        .unwrap();
    let bytey =
        h.s.add_class(ClassId::ROOT, ClassConfig::new(1).with_limits(1000, 5_000))
            .unwrap();
    let big =
        h.s.add_class(
            ClassId::ROOT,
            ClassConfig::new(1).with_limits(1000, 1_000_000),
        )
        .unwrap();
    h.classes = vec![small, bytey, big];

    let accepted: Vec<bool> = (0..15).map(|_| h.offer(0, 100)).collect();
    assert_eq!(accepted.iter().filter(|a| **a).count(), 10);
    let accepted: Vec<bool> = (0..10).map(|_| h.offer(1, 1000)).collect();
    assert_eq!(accepted.iter().filter(|a| **a).count(), 5);
    // 15 queued; the shared limit of 25 packets leaves room for 10 more.
    let accepted: Vec<bool> = (0..20).map(|_| h.offer(2, 100)).collect();
    assert_eq!(accepted.iter().filter(|a| **a).count(), 10);
    // Refused packets come back to the caller untouched.
    let meta = PacketMeta::new(100, small);
    let refused = h.s.enqueue(&meta, (0, 999), h.now).unwrap_err();
    assert_eq!(refused.packet, (0, 999));
    assert_eq!(refused.reason, QueueDrop::ClassPackets);
    {
        let stats = |c| h.s.stats(c).unwrap();
        assert_eq!(stats(small).backlog, 10);
        assert_eq!(stats(small).dropped(QueueDrop::ClassPackets), 6);
        assert_eq!(stats(bytey).backlog_bytes, 5000);
        assert_eq!(stats(bytey).dropped(QueueDrop::ClassBytes), 5);
        assert_eq!(stats(bytey).dropped_bytes, 5000);
        assert_eq!(stats(big).dropped(QueueDrop::BufferPackets), 10);
    }
    // With room for a packet again, the shared byte limit (40 000, 7000 queued)
    // still refuses a 40 000-byte one.
    assert!(h.s.dequeue(h.now).is_some());
    assert!(!h.offer(2, 40_000));
    assert_eq!(h.s.stats(big).unwrap().dropped(QueueDrop::BufferBytes), 1);
    let c = h.s.counters();
    assert_eq!(c.dropped_total(), 22);
    assert_eq!(h.s.stats(ClassId::ROOT).unwrap().dropped_total(), 22);
    assert_eq!(c.enqueued, 25);
    assert_eq!(h.s.len(), 24);
    // Offered = accepted + refused, accepted = sent + queued, for every class.
    for c in [small, bytey, big, ClassId::ROOT] {
        let s = h.s.stats(c).unwrap();
        assert_eq!(s.enqueued, s.dequeued + u64::from(s.backlog), "{c}");
    }
}

/// Runs 2000 packets into two classes with a swap after `swap_at` enqueues (if
/// any); returns the dequeue order (sequence numbers) and what was offered.
fn swap_run(swap_at: Option<usize>, to: fn() -> Box<dyn Rank>) -> (Vec<Pkt>, u64, Harness) {
    let mut h = Harness::new(SchedConfig::default(), Box::new(Sfq::new(64)));
    for prio in [1_u8, 0] {
        let c =
            h.s.add_class(
                ClassId::ROOT,
                ClassConfig::new(1)
                    .with_priority(prio)
                    .with_limits(2000, 10 << 20),
            )
            .unwrap();
        h.classes.push(c);
    }
    let mut out = Vec::new();
    let mut offered = 0;
    for k in 0..2000 {
        if Some(k) == swap_at {
            let old = h.s.set_rank(to());
            assert_eq!(old.name(), "sfq");
        }
        assert!(h.offer(k % 2, 500));
        offered += 1;
        // Drain slower than we fill, so a backlog builds up across the swap.
        if k % 3 == 0
            && let Some(d) = h.s.dequeue(h.now)
        {
            out.push(d.packet);
        }
    }
    while let Some(d) = h.s.dequeue(h.now) {
        out.push(d.packet);
    }
    (out, offered, h)
}

#[test]
fn swapping_the_rank_mid_stream_changes_order_and_loses_none() {
    let (control, _, _) = swap_run(None, || Box::new(StrictPriority));
    let (out, offered, h) = swap_run(Some(1000), || Box::new(StrictPriority));
    // Nothing lost, nothing duplicated, nothing dropped (under the bound).
    assert_eq!(out.len() as u64, offered);
    let unique: BTreeSet<u64> = out.iter().map(|p| p.1).collect();
    assert_eq!(unique.len(), out.len());
    assert_eq!(h.s.counters().dropped_total(), 0);
    assert_eq!(h.s.counters().rank_swaps, 1);
    assert_eq!(
        h.s.counters().enqueued,
        h.s.counters().dequeued + h.s.len() as u64
    );

    // Before the swap both schedules are SFQ and agree: they alternate.
    let sent_before = 334; // dequeues at k = 0, 3, ..., 999
    assert_eq!(out[..sent_before], control[..sent_before]);
    // After it they differ. While packets keep arriving, the priority-0 class
    // (position 1) gets a rank-0 reference with each new packet, faster than the
    // link drains them, so it alone is served; SFQ keeps alternating.
    assert_ne!(out, control);
    let during = sent_before..sent_before + 333; // dequeues at k = 1002, ..., 1998
    assert!(out[during.clone()].iter().all(|p| p.0 == 1));
    let low_in_control = control[during].iter().filter(|p| p.0 == 0).count();
    assert!((160..=173).contains(&low_in_control), "{low_in_control}");
    // Queued references keep their SFQ ranks, behind the new small ones, and each
    // class sends its own packets in arrival order throughout (FIFO leaves), so a
    // swap never reorders a class.
    for class in 0..2 {
        let seqs: Vec<u64> = out.iter().filter(|p| p.0 == class).map(|p| p.1).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "class {class}");
    }
}

#[test]
fn a_swap_to_a_failing_rank_function_loses_nothing() {
    struct Flaky(u64);
    impl Rank for Flaky {
        fn name(&self) -> &str {
            "flaky"
        }
        fn rank(&mut self, _: &PacketMeta, at: &RankContext) -> Result<u64, RankError> {
            self.0 += 1;
            if self.0.is_multiple_of(3) {
                Err(RankError::Trap {
                    message: "unreachable".into(),
                })
            } else {
                Ok(at.vtime + self.0)
            }
        }
    }
    let (out, offered, h) = swap_run(Some(500), || Box::new(Flaky(0)));
    assert_eq!(out.len() as u64, offered);
    let c = h.s.counters();
    assert!(c.rank_faults > 0);
    assert_eq!(c.rank_calls, 2 * offered);
    assert_eq!(c.dropped_total(), 0);
}

#[derive(Debug, Clone)]
enum Op {
    Enqueue { class: usize, len: u32 },
    Dequeue,
    Swap(u8),
    Tick(u32),
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0_usize..4, 1_u32..3000).prop_map(|(class, len)| Op::Enqueue { class, len }),
        4 => Just(Op::Dequeue),
        1 => (0_u8..4).prop_map(Op::Swap),
        1 => (0_u32..5_000_000).prop_map(Op::Tick),
    ]
}

fn rank_of(kind: u8) -> Box<dyn Rank> {
    match kind {
        0 => Box::new(Sfq::new(16)),
        1 => Box::new(StrictPriority),
        2 => Box::new(Fifo),
        // Any ranks at all, leaf level included: only conservation is promised.
        _ => Box::new(FnRank::new(
            "scramble",
            |p: &PacketMeta, at: &RankContext| {
                (p.flow_hash ^ u64::from(at.queued)).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            },
        )),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever the operations, rank functions and link rate: limits hold,
    /// counters balance, every packet leaves once, and when only FIFO-leaf rank
    /// functions were used, each class keeps arrival order.
    #[test]
    fn queue_invariants(
        ops in prop::collection::vec(arb_op(), 1..400),
        shaped in any::<bool>(),
        total in 5_usize..60,
    ) {
        let link = shaped.then(|| RateLimit::new(1_000_000, 3000).unwrap());
        let config = SchedConfig::new(total, 40_000).with_link(link);
        let mut s: LinkScheduler<Pkt> = LinkScheduler::with_rank(config, rank_of(0));
        let x = s.add_class(ClassId::ROOT, ClassConfig::new(2).with_priority(1)).unwrap();
        let limits = [(8_u32, 20_000_u64), (30, 6_000), (50, 50_000), (4, 100_000)];
        let mut leaves = Vec::new();
        for (k, (packets, bytes)) in limits.iter().enumerate() {
            let parent = if k < 2 { x } else { ClassId::ROOT };
            let cfg = ClassConfig::new(k as u32 + 1)
                .with_priority(k as u8)
                .with_limits(*packets, *bytes);
            leaves.push(s.add_class(parent, cfg).unwrap());
        }
        let mut now = Instant::ZERO;
        let mut seq = 0_u64;
        let mut offered = [0_u64; 4];
        let mut queued: BTreeMap<u64, usize> = BTreeMap::new();
        let mut last_out = [0_u64; 4];
        let mut fifo_leaves = true;
        for op in ops {
            match op {
                Op::Enqueue { class, len } => {
                    seq += 1;
                    offered[class] += 1;
                    let meta = PacketMeta::new(len, leaves[class]).with_flow(seq % 5);
                    match s.enqueue(&meta, (class, seq), now) {
                        Ok(()) => { queued.insert(seq, class); }
                        Err(r) => prop_assert_eq!(r.packet, (class, seq)),
                    }
                }
                Op::Dequeue => {
                    let ready = s.next_ready(now);
                    match s.dequeue(now) {
                        Some(d) => {
                            prop_assert_eq!(ready, Some(now));
                            prop_assert_eq!(queued.remove(&d.packet.1), Some(d.packet.0));
                            prop_assert_eq!(d.class, leaves[d.packet.0]);
                            if fifo_leaves {
                                prop_assert!(d.packet.1 > last_out[d.packet.0]);
                            }
                            last_out[d.packet.0] = d.packet.1;
                        }
                        // Work conserving: nothing sent only if empty or shaped.
                        None => prop_assert!(queued.is_empty() || (shaped && ready > Some(now))),
                    }
                }
                Op::Swap(kind) => {
                    fifo_leaves &= kind < 3;
                    s.set_rank(rank_of(kind));
                }
                Op::Tick(ns) => now = now + std::time::Duration::from_nanos(u64::from(ns)),
            }
            prop_assert_eq!(s.len(), queued.len());
            prop_assert!(s.len() <= total);
            prop_assert!(s.queued_bytes() <= 40_000);
            for (k, leaf) in leaves.iter().enumerate() {
                let st = s.stats(*leaf).unwrap();
                prop_assert!(st.backlog <= limits[k].0);
                prop_assert!(st.backlog_bytes <= limits[k].1);
                prop_assert_eq!(st.enqueued + st.dropped_total(), offered[k]);
                prop_assert_eq!(st.enqueued, st.dequeued + u64::from(st.backlog));
                prop_assert_eq!(
                    u64::from(st.backlog),
                    queued.values().filter(|c| **c == k).count() as u64
                );
            }
            let root = s.stats(ClassId::ROOT).unwrap();
            prop_assert_eq!(root.enqueued, root.dequeued + u64::from(root.backlog));
            prop_assert_eq!(root.enqueued + root.dropped_total(), offered.iter().sum::<u64>());
        }
        // Drain: count in == count out + drops.
        now = now + std::time::Duration::from_secs(3600);
        while let Some(d) = s.dequeue(now) {
            prop_assert!(queued.remove(&d.packet.1).is_some());
            now = s.next_ready(now).unwrap_or(now);
        }
        prop_assert!(queued.is_empty());
        let c = s.counters();
        prop_assert_eq!(c.enqueued + c.dropped_total(), offered.iter().sum::<u64>());
        prop_assert_eq!(c.enqueued, c.dequeued);
    }

    /// SFQ's fairness bound (Goyal, Vin, Cheng, Theorem 1): for classes
    /// backlogged throughout, over every prefix of the service,
    /// |W_i / w_i - W_j / w_j| <= l_max / w_i + l_max / w_j.
    #[test]
    fn sfq_meets_its_fairness_bound(
        weights in prop::collection::vec(1_u32..100, 2..5),
        seed in any::<u64>(),
    ) {
        let mut h = Harness::flat(&weights, Box::new(Sfq::new(16)));
        h.rng = Rng(seed | 1);
        let all: Vec<usize> = (0..weights.len()).collect();
        for &c in &all {
            for _ in 0..4 {
                prop_assert!(h.offer_random(c));
            }
        }
        let mut served = vec![0_f64; weights.len()];
        for _ in 0..3000 {
            let d = h.s.dequeue(h.now).unwrap();
            served[d.packet.0] += f64::from(d.len);
            prop_assert!(h.offer_random(d.packet.0));
            for i in 0..weights.len() {
                for j in 0..i {
                    let (wi, wj) = (f64::from(weights[i]), f64::from(weights[j]));
                    let gap = (served[i] / wi - served[j] / wj).abs();
                    let bound = 1500.0 / wi + 1500.0 / wj + 1e-6;
                    prop_assert!(gap <= bound, "classes {} {}: {} > {}", i, j, gap, bound);
                }
            }
        }
    }
}
