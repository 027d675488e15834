//! Property tests: arbitrary operation sequences never panic and lose or duplicate no
//! item; SFQ's fairness bound holds between any two backlogged classes.

use std::collections::HashSet;

use proptest::prelude::*;
use resource_mgr::{NodeId, RateLimit, ShareTree, TreeConfig};

#[derive(Debug, Clone)]
enum Op {
    Add {
        parent: usize,
        weight: u32,
        limit: Option<(u64, u64)>,
    },
    Remove {
        node: usize,
    },
    SetWeight {
        node: usize,
        weight: u32,
    },
    SetLimit {
        node: usize,
        limit: Option<(u64, u64)>,
    },
    Enqueue {
        leaf: usize,
        cost: u64,
    },
    Dequeue {
        advance: u64,
    },
}

fn limit() -> impl Strategy<Value = Option<(u64, u64)>> {
    prop::option::weighted(0.3, (0u64..2_000_000_000, 0u64..5000))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (any::<usize>(), 0u32..100, limit())
            .prop_map(|(parent, weight, limit)| Op::Add { parent, weight, limit }),
        1 => any::<usize>().prop_map(|node| Op::Remove { node }),
        1 => (any::<usize>(), 0u32..100).prop_map(|(node, weight)| Op::SetWeight { node, weight }),
        1 => (any::<usize>(), limit()).prop_map(|(node, limit)| Op::SetLimit { node, limit }),
        8 => (any::<usize>(), 0u64..4000).prop_map(|(leaf, cost)| Op::Enqueue { leaf, cost }),
        6 => (0u64..2_000_000).prop_map(|advance| Op::Dequeue { advance }),
    ]
}

struct Model {
    ids: Vec<NodeId>,
    accepted: HashSet<u64>,
    out: HashSet<u64>,
    dequeued: u64,
    returned: u64,
}

impl Model {
    fn pick(&self, k: usize) -> NodeId {
        self.ids[k % self.ids.len()]
    }

    fn take(&mut self, item: u64) {
        assert!(self.accepted.contains(&item), "item {item} never queued");
        assert!(self.out.insert(item), "item {item} came out twice");
    }
}

fn check(t: &ShareTree<u64>, m: &Model) {
    let s = t.stats(t.root()).expect("root is live");
    assert_eq!(s.enqueued, s.dequeued + s.backlog + s.returned);
    assert_eq!(s.enqueued, m.accepted.len() as u64);
    assert_eq!(s.dequeued, m.dequeued);
    assert_eq!(s.returned, m.returned);
    assert_eq!(s.backlog, t.len() as u64);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn operations_conserve_items(ops in prop::collection::vec(op(), 1..300)) {
        let mut t: ShareTree<u64> =
            ShareTree::new(TreeConfig::new(8, 40).with_max_nodes(12).with_max_depth(3));
        let mut m = Model {
            ids: vec![t.root()],
            accepted: HashSet::new(),
            out: HashSet::new(),
            dequeued: 0,
            returned: 0,
        };
        let mut now = 0u64;
        let mut next_item = 0u64;
        for op in ops {
            match op {
                Op::Add { parent, weight, limit } => {
                    let limit = limit.map(|(rate, burst)| RateLimit { rate, burst });
                    if let Ok(id) = t.add_node(m.pick(parent), weight, limit) {
                        m.ids.push(id);
                    }
                }
                Op::Remove { node } => {
                    if let Ok(items) = t.remove_node(m.pick(node)) {
                        m.returned += items.len() as u64;
                        for item in items {
                            m.take(item);
                        }
                    }
                }
                Op::SetWeight { node, weight } => {
                    let _ = t.set_weight(m.pick(node), weight);
                }
                Op::SetLimit { node, limit } => {
                    let limit = limit.map(|(rate, burst)| RateLimit { rate, burst });
                    let _ = t.set_rate_limit(m.pick(node), limit, now);
                }
                Op::Enqueue { leaf, cost } => {
                    next_item += 1;
                    match t.enqueue(m.pick(leaf), next_item, cost) {
                        Ok(()) => {
                            m.accepted.insert(next_item);
                        }
                        Err(r) => prop_assert_eq!(r.item, next_item),
                    }
                }
                Op::Dequeue { advance } => {
                    now += advance;
                    let peeked = t.peek(now).map(|p| (*p.item, p.cost, p.leaf));
                    let got = t.dequeue(now);
                    prop_assert_eq!(peeked, got.as_ref().map(|d| (d.item, d.cost, d.leaf)));
                    match got {
                        Some(d) => {
                            m.dequeued += 1;
                            m.take(d.item);
                        }
                        None => {
                            // Nothing may leave now: either nothing is queued or
                            // buckets say when.
                            match t.next_ready(now) {
                                None => prop_assert!(t.is_empty()),
                                Some(at) => prop_assert!(at > now),
                            }
                        }
                    }
                }
            }
            check(&t, &m);
        }
        // Drain, following next_ready: everything queued comes out exactly once.
        loop {
            if let Some(d) = t.dequeue(now) {
                m.dequeued += 1;
                m.take(d.item);
                continue;
            }
            match t.next_ready(now) {
                Some(at) => {
                    prop_assert!(at > now);
                    now = at;
                }
                None => break,
            }
        }
        check(&t, &m);
        prop_assert!(t.is_empty());
        prop_assert_eq!(&m.accepted, &m.out);
    }

    /// Goyal et al., Theorem 1: for classes f, m backlogged throughout,
    /// |W_f / w_f - W_m / w_m| <= l_f_max / w_f + l_m_max / w_m.
    #[test]
    fn sfq_fairness_bound(
        weights in prop::collection::vec(1u32..50, 2..6),
        seed in any::<u64>(),
    ) {
        const LMAX: u64 = 1500;
        let mut t: ShareTree<()> = ShareTree::new(TreeConfig::new(4, 64));
        let root = t.root();
        let leaves: Vec<NodeId> =
            weights.iter().map(|&w| t.add_node(root, w, None).unwrap()).collect();
        let mut x = seed | 1;
        let mut cost = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            1 + x % LMAX
        };
        for &leaf in &leaves {
            t.enqueue(leaf, (), cost()).unwrap();
        }
        let mut served = vec![0u64; leaves.len()];
        for _ in 0..3000 {
            let d = t.dequeue(0).unwrap();
            let k = leaves.iter().position(|&l| l == d.leaf).unwrap();
            served[k] += d.cost;
            t.enqueue(d.leaf, (), cost()).unwrap();
            for i in 0..leaves.len() {
                for j in i + 1..leaves.len() {
                    let (wi, wj) = (u128::from(weights[i]), u128::from(weights[j]));
                    let lhs = (u128::from(served[i]) * wj).abs_diff(u128::from(served[j]) * wi);
                    // One extra unit of normalised service for tag rounding.
                    let bound = u128::from(LMAX) * (wi + wj) + wi * wj;
                    prop_assert!(lhs <= bound, "classes {} and {}: {:?}", i, j, served);
                }
            }
        }
    }
}
