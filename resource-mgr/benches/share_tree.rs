//! Enqueue + dequeue of one item through a share tree, against a plain `VecDeque`
//! push + pop in the same group. Every leaf stays backlogged so the scheduler does its
//! full work (tag update and reordering) on each item.

use std::collections::VecDeque;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use resource_mgr::{NodeId, ShareTree, TreeConfig};

/// Items kept queued per leaf so every leaf stays backlogged.
const PREFILL: usize = 8;

fn three_leaves() -> (ShareTree<u64>, Vec<NodeId>) {
    let mut t = ShareTree::new(TreeConfig::new(64, 1 << 16));
    let root = t.root();
    let leaves = [20, 30, 50]
        .into_iter()
        .map(|w| t.add_node(root, w, None).expect("leaf"))
        .collect();
    (t, leaves)
}

fn two_level_64() -> (ShareTree<u64>, Vec<NodeId>) {
    let mut t = ShareTree::new(TreeConfig::new(64, 1 << 16));
    let root = t.root();
    let mut leaves = Vec::new();
    for g in 0..8u32 {
        let group = t.add_node(root, g + 1, None).expect("group");
        for l in 0..8u32 {
            leaves.push(t.add_node(group, l + 1, None).expect("leaf"));
        }
    }
    (t, leaves)
}

fn prefill(t: &mut ShareTree<u64>, leaves: &[NodeId]) {
    for &leaf in leaves {
        for k in 0..PREFILL {
            t.enqueue(leaf, k as u64, 64 + (k as u64 * 181) % 1437)
                .expect("prefill");
        }
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("enqueue_dequeue");
    g.throughput(Throughput::Elements(1));

    let mut q: VecDeque<(u64, u64)> = VecDeque::with_capacity(1024);
    for k in 0..PREFILL as u64 {
        q.push_back((k, 100));
    }
    let mut n = 0u64;
    g.bench_function("vecdeque_baseline", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            q.push_back((black_box(n), 64 + n % 1437));
            black_box(q.pop_front())
        });
    });

    for (name, (mut t, leaves)) in [
        ("sfq_3_leaves", three_leaves()),
        ("sfq_64_leaves_two_level", two_level_64()),
    ] {
        prefill(&mut t, &leaves);
        let mut n = 0u64;
        g.bench_function(name, |b| {
            b.iter(|| {
                // Put the item back where the last one left, so every leaf stays
                // backlogged and the tree's occupancy is constant.
                n = n.wrapping_add(1);
                let out = t.dequeue(black_box(n)).expect("backlogged");
                let _ = t.enqueue(out.leaf, black_box(out.item), 64 + n % 1437);
                black_box(out.cost)
            });
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
