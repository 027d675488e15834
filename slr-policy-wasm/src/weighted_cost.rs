//! Weighted cost: the operator's F and G of DESIGN.md §4.
//!
//! `F(load, route_cost) = W_LOAD * load + W_ROUTE * route_cost`; `select` picks the
//! UP candidate with the lowest F (ties: lowest index); `G` = the lowest F over the
//! UP candidates, i.e. the cost of the path the next flow would take, which is what
//! the level above should compare (a mean would make a subnet with one good next
//! hop look worse than it is to the flows that will use that hop). With no UP
//! candidate G is `+inf`: "unreachable".
//!
//! The weights are compile-time constants: an operator who wants other weights
//! changes them and rebuilds (the module is signed per build anyway). A runtime
//! configuration blob would need a new export and a manifest field; not in ABI v1.

use sdk::{Candidate, Decision, FlowRequest};

/// Module name, as in `manifests/weighted_cost.toml`.
pub const NAME: &str = "weighted_cost";
/// Weight of the next hop's load (0.0 idle .. 1.0 full).
pub const W_LOAD: f64 = 1.0;
/// Weight of the route cost: with 0.1 a route ten cost units longer weighs as much
/// as a fully loaded next hop.
pub const W_ROUTE: f64 = 0.1;

/// F: the cost of sending a flow to a next hop with this load and route cost.
#[must_use]
pub fn cost(load: f64, route_cost: f64) -> f64 {
    W_LOAD * load + W_ROUTE * route_cost
}

fn candidate_cost(candidate: &Candidate) -> f64 {
    crate::key(cost(candidate.load, candidate.route_cost))
}

/// The policy: the UP candidate with the lowest F.
#[must_use]
pub fn select(_request: &FlowRequest, candidates: &[Candidate]) -> Decision {
    let mut best: Option<(usize, f64)> = None;
    for (index, candidate) in candidates.iter().enumerate() {
        if !candidate.is_up() {
            continue;
        }
        let f = candidate_cost(candidate);
        if best.is_none_or(|(_, best_f)| f < best_f) {
            best = Some((index, f));
        }
    }
    best.map_or(Decision::Reject, |(index, _)| Decision::Select(index))
}

/// G: the lowest F over UP candidates; `+inf` when none is up.
#[must_use]
pub fn aggregate(candidates: &[Candidate]) -> f64 {
    candidates
        .iter()
        .filter(|c| c.is_up())
        .map(candidate_cost)
        .fold(f64::INFINITY, f64::min)
}

#[cfg(test)]
mod tests {
    use sdk::Decision;
    use sdk::harness::{self, Candidates};

    use super::{W_LOAD, W_ROUTE, aggregate, cost, select};

    fn req() -> sdk::FlowRequest {
        harness::tcp(([10, 0, 0, 1], 40000), ([192, 200, 0, 10], 80))
    }

    #[test]
    fn cost_weighs_load_and_route() {
        assert_eq!(harness::cost(cost, 0.5, 2.0), W_LOAD * 0.5 + W_ROUTE * 2.0);
        assert!(cost(0.5, 10.0) > cost(0.5, 1.0));
        assert!(cost(0.9, 1.0) > cost(0.1, 1.0));
    }

    #[test]
    fn a_far_idle_hop_loses_to_a_near_busy_one_when_the_route_dominates() {
        let c = Candidates::new()
            .up([10, 1, 0, 1], 0.0, 20.0) // F = 2.0
            .up([10, 1, 0, 2], 0.8, 1.0) // F = 0.9
            .down([10, 1, 0, 3], 0.0, 0.0)
            .build();
        assert_eq!(harness::select(select, &req(), &c), Ok(Decision::Select(1)));
        let g = harness::aggregate(aggregate, &c).unwrap();
        assert!((g - 0.9).abs() < 1e-12, "G = {g}");
    }

    #[test]
    fn nothing_up_rejects_and_aggregates_to_infinity() {
        let c = Candidates::new().down([10, 1, 0, 1], 0.0, 0.0).build();
        assert_eq!(harness::select(select, &req(), &c), Ok(Decision::Reject));
        assert_eq!(harness::aggregate(aggregate, &c), Ok(f64::INFINITY));
    }
}
