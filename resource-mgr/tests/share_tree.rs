//! Behaviour of the share tree: weighted fairness, hierarchy, idle redistribution, no
//! saved-up credit, rate limits, bounds and removal.

use resource_mgr::{NodeId, RateLimit, ShareError, ShareTree, TreeConfig};

/// Deterministic xorshift64* so runs are reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

fn config() -> TreeConfig {
    TreeConfig::new(256, 1 << 16)
}

/// Serves `items` items while keeping every leaf in `leaves` backlogged with
/// `depth` items; returns the cost served per leaf (in `leaves` order).
fn run_backlogged(
    t: &mut ShareTree<u32>,
    leaves: &[NodeId],
    items: usize,
    mut cost: impl FnMut() -> u64,
) -> Vec<u64> {
    for &leaf in leaves {
        for _ in 0..4 {
            t.enqueue(leaf, 0, cost()).expect("prefill fits");
        }
    }
    let mut served = vec![0u64; leaves.len()];
    for _ in 0..items {
        let d = t.dequeue(0).expect("always backlogged");
        let k = leaves
            .iter()
            .position(|&l| l == d.leaf)
            .expect("served from a known leaf");
        served[k] += d.cost;
        t.enqueue(d.leaf, 0, cost()).expect("refill fits");
    }
    served
}

fn assert_shares(served: &[u64], expected: &[f64]) {
    let total: u64 = served.iter().sum();
    for (k, (&s, &e)) in served.iter().zip(expected).enumerate() {
        let share = s as f64 / total as f64;
        assert!(
            (share / e - 1.0).abs() <= 0.01,
            "class {k}: share {share:.5}, expected {e:.5} (served {served:?})"
        );
    }
}

#[test]
fn weights_20_30_50_equal_cost() {
    let mut t = ShareTree::new(config());
    let root = t.root();
    let leaves: Vec<_> = [20, 30, 50]
        .iter()
        .map(|&w| t.add_node(root, w, None).unwrap())
        .collect();
    let served = run_backlogged(&mut t, &leaves, 100_000, || 1000);
    assert_shares(&served, &[0.2, 0.3, 0.5]);
}

#[test]
fn weights_20_30_50_random_sizes_by_cost() {
    let mut t = ShareTree::new(config());
    let root = t.root();
    let leaves: Vec<_> = [20, 30, 50]
        .iter()
        .map(|&w| t.add_node(root, w, None).unwrap())
        .collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let served = run_backlogged(&mut t, &leaves, 100_000, || rng.range(64, 1500));
    assert_shares(&served, &[0.2, 0.3, 0.5]);
}

fn hierarchy(t: &mut ShareTree<u32>) -> (NodeId, [NodeId; 3]) {
    let root = t.root();
    let a = t.add_node(root, 40, None).expect("A");
    let a1 = t.add_node(a, 1, None).expect("A1");
    let a2 = t.add_node(a, 3, None).expect("A2");
    let b = t.add_node(root, 60, None).expect("B");
    (a, [a1, a2, b])
}

#[test]
fn hierarchy_splits_by_product_of_weights() {
    let mut t = ShareTree::new(config());
    let (a, leaves) = hierarchy(&mut t);
    let mut rng = Rng(7);
    let served = run_backlogged(&mut t, &leaves, 100_000, || rng.range(64, 1500));
    assert_shares(&served, &[0.1, 0.3, 0.6]);
    // The internal node's counters sum its subtree.
    let sa = t.stats(a).unwrap();
    let s1 = t.stats(leaves[0]).unwrap();
    let s2 = t.stats(leaves[1]).unwrap();
    assert_eq!(sa.cost_served, s1.cost_served + s2.cost_served);
    assert_eq!(sa.dequeued, s1.dequeued + s2.dequeued);
    assert_eq!(sa.backlog, s1.backlog + s2.backlog);
}

#[test]
fn idle_class_share_goes_to_the_others_by_weight() {
    let mut t = ShareTree::new(config());
    let root = t.root();
    let leaves: Vec<_> = [20, 30, 50]
        .iter()
        .map(|&w| t.add_node(root, w, None).unwrap())
        .collect();
    // The 50 class never sends: 20/30 split the link 40/60.
    let served = run_backlogged(&mut t, &leaves[..2], 50_000, || 500);
    assert_shares(&served, &[0.4, 0.6]);

    // In a hierarchy, an idle leaf's share stays inside its parent first.
    let mut t = ShareTree::new(config());
    let (_, [a1, _a2, b]) = hierarchy(&mut t);
    let served = run_backlogged(&mut t, &[a1, b], 50_000, || 500);
    assert_shares(&served, &[0.4, 0.6]);
}

#[test]
fn returning_class_gets_no_saved_up_credit() {
    let mut t = ShareTree::new(config());
    let root = t.root();
    let a = t.add_node(root, 1, None).unwrap();
    let b = t.add_node(root, 1, None).unwrap();
    // A sends a little, then goes idle while B alone uses the link for a long time.
    t.enqueue(a, 0, 1000).unwrap();
    for _ in 0..4 {
        t.enqueue(b, 1, 1000).unwrap();
    }
    for _ in 0..10_000 {
        let d = t.dequeue(0).unwrap();
        if d.leaf == b {
            t.enqueue(b, 1, 1000).unwrap();
        }
    }
    assert_eq!(t.stats(a).unwrap().backlog, 0);
    // A comes back with a large backlog: from the first item on it gets its half,
    // at most one item ahead.
    for _ in 0..200 {
        t.enqueue(a, 0, 1000).unwrap();
    }
    let mut from_a = 0u32;
    for n in 1..=300u32 {
        let d = t.dequeue(0).unwrap();
        if d.leaf == a {
            from_a += 1;
            t.enqueue(a, 0, 1000).unwrap();
        } else {
            t.enqueue(b, 1, 1000).unwrap();
        }
        assert!(
            from_a <= n / 2 + 1,
            "after {n} items A had {from_a}: more than its share plus one item"
        );
        assert!(from_a + 1 >= n / 2, "after {n} items A had only {from_a}");
    }
}

#[test]
fn rate_limited_leaf_stays_within_rate_plus_burst_and_link_stays_busy() {
    const RATE: u64 = 100_000_000; // bytes/s
    const BURST: u64 = 10_000; // bytes
    let mut t = ShareTree::new(config());
    let root = t.root();
    // Fair share of the limited class would be half the link (500 MB/s).
    let limited = t
        .add_node(root, 1, Some(RateLimit::new(RATE, BURST).unwrap()))
        .unwrap();
    let open = t.add_node(root, 1, None).unwrap();
    let mut rng = Rng(42);
    for leaf in [limited, open] {
        for _ in 0..8 {
            t.enqueue(leaf, 0, rng.range(64, 1500)).unwrap();
        }
    }
    // A 1 GB/s link: an item of `cost` bytes takes `cost` ns to send.
    let mut now = 0u64;
    let mut limited_bytes = 0u64;
    // Running minimum of (bytes before i) * 1e9 - RATE * t_i over served items i.
    let mut min_before: i128 = i128::MAX;
    let mut prefix: i128 = 0;
    while now < 200_000_000 {
        let d = t.dequeue(now).expect("the open class is always backlogged");
        if d.leaf == limited {
            let base = prefix * 1_000_000_000 - i128::from(RATE) * i128::from(now);
            min_before = min_before.min(base);
            prefix += i128::from(d.cost);
            let here = prefix * 1_000_000_000 - i128::from(RATE) * i128::from(now);
            // Bytes served in [t_i, now] <= BURST + RATE * (now - t_i).
            assert!(
                here - min_before <= i128::from(BURST) * 1_000_000_000,
                "rate limit exceeded at {now} ns"
            );
            limited_bytes += d.cost;
        }
        t.enqueue(d.leaf, 0, rng.range(64, 1500)).unwrap();
        now += d.cost;
    }
    // Work conserving and not starving the limited class: it gets its rate.
    let achieved = limited_bytes as f64 / (now as f64 / 1e9);
    assert!(
        (achieved / RATE as f64 - 1.0).abs() < 0.02,
        "limited class got {achieved} B/s"
    );
}

#[test]
fn next_ready_says_when_buckets_allow_again() {
    let mut t = ShareTree::new(config());
    let root = t.root();
    // 1000 units/s: 1 unit per ms.
    let leaf = t
        .add_node(root, 1, Some(RateLimit::new(1000, 10).unwrap()))
        .unwrap();
    assert_eq!(t.next_ready(0), None);
    for _ in 0..3 {
        t.enqueue(leaf, 0, 10).unwrap();
    }
    assert_eq!(t.next_ready(0), Some(0));
    assert!(t.dequeue(0).is_some());
    assert!(t.dequeue(0).is_none());
    assert!(t.peek(0).is_none());
    let at = t.next_ready(0).unwrap();
    assert_eq!(at, 10_000_000);
    assert!(t.dequeue(at - 1).is_none());
    assert!(t.dequeue(at).is_some());

    // A limit on an internal node holds back its whole subtree.
    let mut t = ShareTree::new(config());
    let root = t.root();
    let group = t
        .add_node(root, 1, Some(RateLimit::new(1000, 10).unwrap()))
        .unwrap();
    let l1 = t.add_node(group, 1, None).unwrap();
    let l2 = t.add_node(group, 1, None).unwrap();
    t.enqueue(l1, 1, 10).unwrap();
    t.enqueue(l2, 2, 10).unwrap();
    assert!(t.dequeue(0).is_some());
    assert!(t.dequeue(0).is_none());
    assert_eq!(t.next_ready(0), Some(10_000_000));
    assert!(t.dequeue(10_000_000).is_some());
}

#[test]
fn full_queues_refuse_count_and_hand_back() {
    let mut t = ShareTree::new(TreeConfig::new(4, 6));
    let root = t.root();
    let a = t.add_node(root, 1, None).unwrap();
    let b = t.add_node(root, 1, None).unwrap();
    for k in 0..4 {
        t.enqueue(a, k, 1).unwrap();
    }
    let r = t.enqueue(a, 99, 1).unwrap_err();
    assert_eq!(r.error, ShareError::QueueFull { leaf: a, limit: 4 });
    assert_eq!(r.into_item(), 99);
    t.enqueue(b, 4, 1).unwrap();
    t.enqueue(b, 5, 1).unwrap();
    let r = t.enqueue(b, 98, 1).unwrap_err();
    assert_eq!(r.error, ShareError::TreeFull { leaf: b, limit: 6 });
    assert_eq!(t.stats(a).unwrap().drops, 1);
    assert_eq!(t.stats(b).unwrap().drops, 1);
    assert_eq!(t.stats(root).unwrap().drops, 2);
    assert_eq!(t.stats(root).unwrap().backlog, 6);
    // Room again after a dequeue.
    t.dequeue(0).unwrap();
    assert!(t.enqueue(b, 7, 1).is_ok());
    // Queueing at an internal node is refused too.
    let e = t.enqueue(root, 1, 1).unwrap_err();
    assert_eq!(e.error, ShareError::NotALeaf { node: root });
}

#[test]
fn removing_a_backlogged_subtree_returns_its_items() {
    let mut t = ShareTree::new(config());
    let (a, [a1, a2, b]) = hierarchy(&mut t);
    for k in 0..10 {
        t.enqueue(a1, k, 100).unwrap();
        t.enqueue(a2, 100 + k, 100).unwrap();
        t.enqueue(b, 200 + k, 100).unwrap();
    }
    for _ in 0..6 {
        t.dequeue(0).unwrap();
    }
    let before = t.stats(t.root()).unwrap();
    let a_backlog = t.stats(a).unwrap().backlog;
    let mut returned = t.remove_node(a).unwrap();
    assert_eq!(returned.len() as u64, a_backlog);
    returned.sort_unstable();
    assert!(returned.iter().all(|&x| x < 200));
    let root = t.stats(t.root()).unwrap();
    assert_eq!(root.returned, a_backlog);
    assert_eq!(root.backlog, before.backlog - a_backlog);
    assert_eq!(root.enqueued, root.dequeued + root.backlog + root.returned);
    // The removed ids are dead; the rest keeps working and only B is left.
    for id in [a, a1, a2] {
        assert_eq!(t.stats(id), Err(ShareError::UnknownNode { node: id }));
    }
    let rest: Vec<u32> = std::iter::from_fn(|| t.dequeue(0))
        .map(|d| d.item)
        .collect();
    assert!(rest.iter().all(|&x| x >= 200));
    assert_eq!(rest.len() as u64, before.backlog - a_backlog);
    assert_eq!(t.node_count(), 2);
    // A reused slot gets a new id.
    let c = t.add_node(t.root(), 1, None).unwrap();
    assert!(![a, a1, a2].contains(&c));
    assert_eq!(t.remove_node(t.root()), Err(ShareError::RootNotRemovable));
}

#[test]
fn removing_the_last_child_makes_the_parent_a_leaf_again() {
    let mut t = ShareTree::new(config());
    let root = t.root();
    let g = t.add_node(root, 1, None).unwrap();
    let l = t.add_node(g, 1, None).unwrap();
    t.enqueue(l, 1, 5).unwrap();
    assert_eq!(t.remove_node(l).unwrap(), vec![1]);
    t.enqueue(g, 2, 5).unwrap();
    let d = t.dequeue(0).unwrap();
    assert_eq!((d.item, d.leaf), (2, g));
}

#[test]
fn set_weight_moves_the_shares() {
    let mut t = ShareTree::new(config());
    let root = t.root();
    let a = t.add_node(root, 1, None).unwrap();
    let b = t.add_node(root, 1, None).unwrap();
    let served = run_backlogged(&mut t, &[a, b], 10_000, || 100);
    assert_shares(&served, &[0.5, 0.5]);
    t.set_weight(a, 3).unwrap();
    assert_eq!(t.weight(a).unwrap(), 3);
    let before = [
        t.stats(a).unwrap().cost_served,
        t.stats(b).unwrap().cost_served,
    ];
    for _ in 0..40_000 {
        let d = t.dequeue(0).unwrap();
        t.enqueue(d.leaf, 0, 100).unwrap();
    }
    let after = [
        t.stats(a).unwrap().cost_served - before[0],
        t.stats(b).unwrap().cost_served - before[1],
    ];
    assert_shares(&after, &[0.75, 0.25]);
}

#[test]
fn peek_shows_what_dequeue_returns() {
    let mut t = ShareTree::new(config());
    let (_, leaves) = hierarchy(&mut t);
    let mut rng = Rng(3);
    for k in 0..60 {
        let leaf = leaves[(rng.next() % 3) as usize];
        t.enqueue(leaf, k, rng.range(1, 1500)).unwrap();
    }
    while let Some(p) = t.peek(0).map(|p| (*p.item, p.cost, p.leaf)) {
        let d = t.dequeue(0).unwrap();
        assert_eq!(p, (d.item, d.cost, d.leaf));
    }
    assert!(t.is_empty());
}

#[test]
fn structural_errors() {
    let mut t: ShareTree<u8> = ShareTree::new(config().with_max_nodes(4).with_max_depth(2));
    let root = t.root();
    assert_eq!(
        t.add_node(root, 0, None),
        Err(ShareError::InvalidWeight { weight: 0 })
    );
    assert_eq!(
        t.add_node(root, 1, Some(RateLimit { rate: 0, burst: 5 })),
        Err(ShareError::InvalidRateLimit { rate: 0, burst: 5 })
    );
    let a = t.add_node(root, 1, None).unwrap();
    let a1 = t.add_node(a, 1, None).unwrap();
    assert_eq!(
        t.add_node(a1, 1, None),
        Err(ShareError::TooDeep {
            parent: a1,
            limit: 2
        })
    );
    t.enqueue(a1, 1, 1).unwrap();
    assert_eq!(
        t.add_node(a1, 1, None),
        Err(ShareError::TooDeep {
            parent: a1,
            limit: 2
        })
    );
    let b = t.add_node(root, 1, None).unwrap();
    t.enqueue(b, 1, 1).unwrap();
    assert_eq!(
        t.add_node(root, 1, None),
        Err(ShareError::TooManyNodes { limit: 4 })
    );
    t.remove_node(a).unwrap();
    assert_eq!(
        t.add_node(b, 1, None),
        Err(ShareError::ParentHasBacklog {
            parent: b,
            backlog: 1
        })
    );
}
