//! Proximity: prefer the UP candidate whose address shares the longest prefix
//! with the client's source address (a cheap stand-in for "nearest" when next hops
//! are numbered by region), then the lowest load, then the lowest index.
//!
//! Addresses are compared in their 16-byte ABI form, so an IPv4 client and IPv4
//! candidates compare on their IPv4 bits (the v4-mapped prefix is common to all).

use sdk::{Candidate, Decision, FlowRequest};

/// Module name, as in `manifests/proximity.toml`.
pub const NAME: &str = "proximity";

/// Number of leading bits `a` and `b` share (0..=128).
#[must_use]
pub fn common_prefix_len(a: &[u8; 16], b: &[u8; 16]) -> u32 {
    (u128::from_be_bytes(*a) ^ u128::from_be_bytes(*b)).leading_zeros()
}

/// The policy: see the module docs.
#[must_use]
pub fn select(request: &FlowRequest, candidates: &[Candidate]) -> Decision {
    let mut best: Option<(usize, u32, f64)> = None;
    for (index, candidate) in candidates.iter().enumerate() {
        if !candidate.is_up() {
            continue;
        }
        let prefix = common_prefix_len(&request.src_addr, &candidate.addr);
        let load = crate::key(candidate.load);
        let better = best.is_none_or(|(_, best_prefix, best_load)| {
            prefix > best_prefix || (prefix == best_prefix && load < best_load)
        });
        if better {
            best = Some((index, prefix, load));
        }
    }
    best.map_or(Decision::Reject, |(index, _, _)| Decision::Select(index))
}

#[cfg(test)]
mod tests {
    use sdk::Decision;
    use sdk::harness::{self, Candidates};

    use super::{common_prefix_len, select};

    #[test]
    fn prefix_length_counts_leading_equal_bits() {
        let a = sdk::addr_bytes([10, 0, 0, 1].into());
        assert_eq!(common_prefix_len(&a, &a), 128);
        let b = sdk::addr_bytes([10, 0, 0, 0].into());
        assert_eq!(common_prefix_len(&a, &b), 127);
        let c = sdk::addr_bytes([11, 0, 0, 1].into());
        assert_eq!(common_prefix_len(&a, &c), 96 + 7);
    }

    #[test]
    fn prefers_the_longest_prefix_over_load() {
        let req = harness::tcp(([10, 20, 30, 40], 5555), ([192, 200, 0, 10], 443));
        let c = Candidates::new()
            .up([172, 16, 0, 1], 0.0, 0.0) // other region, idle
            .up([10, 20, 0, 1], 0.9, 0.0) // /16 match
            .up([10, 20, 30, 1], 0.8, 0.0) // /24 match: wins
            .build();
        assert_eq!(harness::select(select, &req, &c), Ok(Decision::Select(2)));
    }

    #[test]
    fn equal_prefixes_fall_back_to_least_load_and_down_is_skipped() {
        let req = harness::tcp(([10, 20, 30, 40], 5555), ([192, 200, 0, 10], 443));
        let c = Candidates::new()
            .down([10, 20, 30, 41], 0.0, 0.0) // best prefix but down
            .up([10, 20, 30, 1], 0.6, 0.0)
            .up([10, 20, 30, 2], 0.3, 0.0)
            .build();
        assert_eq!(harness::select(select, &req, &c), Ok(Decision::Select(2)));
        let none = Candidates::new().down([10, 20, 30, 41], 0.0, 0.0).build();
        assert_eq!(harness::select(select, &req, &none), Ok(Decision::Reject));
    }
}
