//! Strict priority: above the leaves a node always serves its child of the
//! smallest priority number (0 first) that has packets; children of equal
//! priority, and packets inside a class, leave in arrival order.
//!
//! The rank is the child's priority at a node above the leaves and 0 at a leaf,
//! so the host's tie-break (arrival order) does the rest. Stateless: a lower class
//! is starved while a higher one is backlogged, by design; pair it with a shaper
//! or per-class limits when that is not wanted.

use sdk::RankRequest;

/// Module name, as in `manifests/strict_priority.toml`.
pub const NAME: &str = "strict_priority";

/// The rank of `request`'s packet: see the module docs.
#[must_use]
pub fn rank(request: &RankRequest) -> u64 {
    if request.is_leaf() {
        0
    } else {
        u64::from(request.priority)
    }
}

#[cfg(test)]
mod tests {
    use sdk::{RankRequest, harness};

    use super::rank;

    #[test]
    fn ranks_are_child_priorities_above_the_leaves() {
        for priority in [0_u8, 1, 7, 255] {
            let r = RankRequest::leaf(1500, 4, 99)
                .with_node(0, 4, 30, priority)
                .with_state(1 << 30, 7, 100)
                .with_now(123);
            assert_eq!(harness::rank(rank, &r), Ok(u64::from(priority)));
        }
    }

    #[test]
    fn a_leaf_keeps_arrival_order() {
        let r = RankRequest::leaf(64, 4, 99)
            .with_node(4, 4, 1, 3)
            .with_state(50, 2, 9);
        assert_eq!(harness::rank(rank, &r), Ok(0));
    }
}
