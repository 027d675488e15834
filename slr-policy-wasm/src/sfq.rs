//! Start-time fair queuing (Goyal, Vin, Cheng, SIGCOMM'96) as a rank: at a node
//! above the leaves, children share by weight; at a leaf class, flows share
//! equally.
//!
//! For a packet of `len` bytes reaching `node` through `child` (or, at the leaf
//! level, belonging to a flow), with the node's virtual time `v` from the host:
//!
//! ```text
//! S = max(v, F[tag])        the rank
//! F[tag] = S + len * 2^16 / weight
//! ```
//!
//! `tag` is the child at a node above the leaves (`child mod TAGS`) and the flow
//! at a leaf (`flow_hash` spread over [`TAGS`] buckets). Children or flows that
//! land on one tag share it, as in stochastic fairness queuing: they are still
//! never reordered among themselves, only share one fair share.
//!
//! State is bounded: [`NODES`] nodes × [`TAGS`] finish tags (33 KiB). The host
//! numbers nodes densely from 0; a node at or beyond [`NODES`] gets no tags and
//! its packets rank at `v` (arrival order at the node's virtual time), never an
//! error. Tags of a node are forgotten when the host reports a new busy period
//! for it: the node was empty in between, so no packet ranked with them is still
//! queued, and every child or flow starts level (SFQ sets `v` to the largest
//! finish tag at the end of a busy period, which is the same thing). That also
//! keeps tags small: they grow at most `2^16 / weight` per byte within one busy
//! period and saturate rather than wrap.

use sdk::RankRequest;

/// Module name, as in `manifests/sfq.toml`.
pub const NAME: &str = "sfq";
/// Nodes (host node ids `0..NODES`) that keep their own finish tags.
pub const NODES: usize = 64;
/// Finish tags per node: children above the leaves, flow buckets at a leaf.
pub const TAGS: usize = 64;
/// Fractional bits of tags, as in the host's built-in SFQ.
pub const TAG_SHIFT: u32 = 16;

/// Advance of a tag for `len` bytes at `weight` (weights below 1 count as 1).
#[must_use]
pub const fn tag_len(len: u32, weight: u32) -> u64 {
    let weight = if weight == 0 { 1 } else { weight };
    ((len as u64) << TAG_SHIFT) / weight as u64
}

#[derive(Debug, Clone, Copy)]
struct NodeTags {
    /// The host busy period the tags belong to.
    busy_period: u64,
    finish: [u64; TAGS],
}

impl NodeTags {
    const EMPTY: Self = Self {
        busy_period: 0,
        finish: [0; TAGS],
    };
}

/// The module's per-instance state: finish tags per node.
#[derive(Debug, Clone)]
pub struct Sfq {
    nodes: [NodeTags; NODES],
}

impl Default for Sfq {
    fn default() -> Self {
        Self::EMPTY
    }
}

impl Sfq {
    /// No tags yet (every node at the start of a busy period).
    pub const EMPTY: Self = Self {
        nodes: [NodeTags::EMPTY; NODES],
    };

    /// The rank of `request`'s packet (its virtual start tag); records its finish tag.
    pub fn rank(&mut self, request: &RankRequest) -> u64 {
        let Some(node) = usize::try_from(request.node)
            .ok()
            .and_then(|n| self.nodes.get_mut(n))
        else {
            return request.vtime;
        };
        if node.busy_period != request.busy_period {
            *node = NodeTags {
                busy_period: request.busy_period,
                finish: [0; TAGS],
            };
        }
        let tag = if request.is_leaf() {
            // Fibonacci hashing: the top bits of the product mix every input bit.
            (request.flow_hash.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - TAGS.ilog2())) as usize
        } else {
            request.child as usize % TAGS
        };
        let Some(finish) = node.finish.get_mut(tag) else {
            return request.vtime;
        };
        let start = request.vtime.max(*finish);
        *finish = start.saturating_add(tag_len(request.len, request.weight));
        start
    }
}

#[cfg(test)]
mod tests {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    use std::vec::Vec;

    use sdk::{RankRequest, harness};

    use super::{NODES, Sfq, TAGS, tag_len};

    /// One node with children `weights`, all backlogged with `len`-byte packets,
    /// driven as the host drives it: rank on enqueue, vtime = rank on dequeue.
    /// Returns bytes served per child over `serve` dequeues.
    fn share(weights: &[u32], len: u32, serve: usize) -> Vec<u64> {
        let mut sfq = Sfq::EMPTY;
        let mut heap = BinaryHeap::new();
        let mut seq = 0_u64;
        let mut vtime = 0;
        let mut enqueue = |sfq: &mut Sfq, heap: &mut BinaryHeap<_>, child: usize, vtime: u64| {
            let request = RankRequest::leaf(len, 100 + child as u32, 0)
                .with_node(0, child as u32, weights[child], 0)
                .with_state(vtime, 1, heap.len() as u32);
            let rank = harness::rank(|r| sfq.rank(r), &request).unwrap();
            seq += 1;
            heap.push(Reverse((rank, seq, child)));
        };
        for child in 0..weights.len() {
            for _ in 0..4 {
                enqueue(&mut sfq, &mut heap, child, vtime);
            }
        }
        let mut served = std::vec![0_u64; weights.len()];
        for _ in 0..serve {
            let Reverse((rank, _, child)) = heap.pop().unwrap();
            vtime = vtime.max(rank);
            served[child] += u64::from(len);
            // Keep the child backlogged.
            enqueue(&mut sfq, &mut heap, child, vtime);
        }
        served
    }

    #[test]
    fn children_share_by_weight() {
        let served = share(&[20, 30, 50], 1000, 10_000);
        let total: u64 = served.iter().sum();
        for (got, weight) in served.iter().zip([20, 30, 50]) {
            let share = *got as f64 / total as f64;
            assert!(
                (share - f64::from(weight) / 100.0).abs() < 0.001,
                "{served:?}"
            );
        }
    }

    #[test]
    fn flows_in_a_leaf_alternate() {
        let mut sfq = Sfq::EMPTY;
        let leaf = |hash: u64| RankRequest::leaf(100, 3, hash).with_state(0, 1, 0);
        // Flow a sends three packets, flow b one: b's first goes with a's first.
        let a: Vec<u64> = (0..3).map(|_| sfq.rank(&leaf(11))).collect();
        let b = sfq.rank(&leaf(12_345_678_901));
        assert_eq!(a, std::vec![0, tag_len(100, 1), 2 * tag_len(100, 1)]);
        assert_eq!(b, 0);
    }

    #[test]
    fn a_new_busy_period_forgets_the_tags() {
        let mut sfq = Sfq::EMPTY;
        let r = RankRequest::leaf(1500, 9, 0)
            .with_node(0, 9, 1, 0)
            .with_state(0, 1, 0);
        assert_eq!(sfq.rank(&r), 0);
        assert_eq!(sfq.rank(&r), tag_len(1500, 1));
        assert_eq!(sfq.rank(&r.with_state(0, 2, 0)), 0);
        // The virtual time is a floor: a returning child gets no saved-up credit.
        assert_eq!(sfq.rank(&r.with_state(1 << 40, 2, 5)), 1 << 40);
    }

    #[test]
    fn nodes_beyond_the_table_rank_at_virtual_time() {
        let mut sfq = Sfq::EMPTY;
        let r = RankRequest::leaf(1500, 1, 0)
            .with_node(NODES as u32, 1, 1, 0)
            .with_state(777, 1, 3);
        assert_eq!(sfq.rank(&r), 777);
        assert_eq!(sfq.rank(&r), 777);
        let r = r.with_node(u32::MAX, 1, 1, 0);
        assert_eq!(sfq.rank(&r), 777);
    }

    #[test]
    fn colliding_children_share_one_tag() {
        let mut sfq = Sfq::EMPTY;
        let at = |child: u32| {
            RankRequest::leaf(100, child, 0)
                .with_node(0, child, 1, 0)
                .with_state(0, 1, 0)
        };
        assert_eq!(sfq.rank(&at(1)), 0);
        assert_eq!(sfq.rank(&at(1 + TAGS as u32)), tag_len(100, 1));
        assert_eq!(sfq.rank(&at(2)), 0);
    }

    #[test]
    fn tags_saturate_instead_of_wrapping() {
        let mut sfq = Sfq::EMPTY;
        let r = RankRequest::leaf(u32::MAX, 1, 0)
            .with_node(0, 1, 1, 0)
            .with_state(u64::MAX - 5, 1, 0);
        assert_eq!(sfq.rank(&r), u64::MAX - 5);
        assert_eq!(sfq.rank(&r), u64::MAX);
        assert_eq!(sfq.rank(&r), u64::MAX);
        assert_eq!(tag_len(10, 0), tag_len(10, 1));
    }
}
