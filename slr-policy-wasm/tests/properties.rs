//! Invariants every shipped policy keeps on any input, through the harness.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::prelude::*;
use sdk::{Candidate, Decision, FlowRequest, harness};
use slr_policy_wasm::consistent_hash::MaglevTable;
use slr_policy_wasm::{least_load, proximity, time_of_day, weighted_cost};

fn arb_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|b| IpAddr::V4(Ipv4Addr::from(b))),
        any::<[u8; 16]>().prop_map(|b| IpAddr::V6(Ipv6Addr::from(b))),
    ]
}

fn arb_request() -> impl Strategy<Value = FlowRequest> {
    (arb_ip(), any::<u16>(), arb_ip(), any::<u16>(), any::<u64>()).prop_map(
        |(s, sp, d, dp, now)| {
            harness::tcp(SocketAddr::new(s, sp), SocketAddr::new(d, dp)).with_now(now)
        },
    )
}

fn arb_candidates() -> impl Strategy<Value = Vec<Candidate>> {
    let one = (
        arb_ip(),
        any::<f64>(),
        any::<f64>(),
        any::<bool>(),
        any::<u16>(),
    )
        .prop_map(|(ip, load, cost, up, tags)| {
            let c = if up {
                Candidate::up(ip, load, cost)
            } else {
                Candidate::down(ip, load, cost)
            };
            c.with_tags(tags)
        });
    prop::collection::vec(one, 0..=64)
}

/// NaN sorts last, as the policies treat it.
fn key(v: f64) -> f64 {
    if v.is_nan() { f64::INFINITY } else { v }
}

fn check_up_or_reject(decision: Decision, candidates: &[Candidate]) -> Result<(), TestCaseError> {
    match decision {
        Decision::Select(i) => prop_assert!(candidates[i].is_up(), "chose down candidate {i}"),
        Decision::Reject => prop_assert!(
            candidates.iter().all(|c| !c.is_up()),
            "rejected with one up"
        ),
    }
    Ok(())
}

proptest! {
    #[test]
    fn every_policy_chooses_an_up_candidate_or_rejects_only_when_none_is_up(
        request in arb_request(),
        candidates in arb_candidates(),
    ) {
        for policy in [least_load::select, weighted_cost::select, proximity::select, time_of_day::select] {
            check_up_or_reject(harness::select(policy, &request, &candidates)?, &candidates)?;
        }
        let mut table = Box::new(MaglevTable::EMPTY);
        let d = harness::select(|r, c| table.select(r, c), &request, &candidates)?;
        check_up_or_reject(d, &candidates)?;
    }

    #[test]
    fn least_load_is_minimal_and_first_among_equals(
        request in arb_request(),
        candidates in arb_candidates(),
    ) {
        if let Decision::Select(i) = harness::select(least_load::select, &request, &candidates)? {
            let chosen = key(candidates[i].load);
            for (j, c) in candidates.iter().enumerate().filter(|(_, c)| c.is_up()) {
                prop_assert!(chosen <= key(c.load));
                prop_assert!(j >= i || key(c.load) > chosen, "earlier equal candidate {j}");
            }
        }
    }

    #[test]
    fn weighted_cost_g_is_the_cost_of_the_selected_hop(candidates in arb_candidates()) {
        let request = harness::tcp(([10, 0, 0, 1], 1), ([10, 0, 0, 2], 2));
        let g = harness::aggregate(weighted_cost::aggregate, &candidates)?;
        match harness::select(weighted_cost::select, &request, &candidates)? {
            Decision::Select(i) => {
                let f = key(weighted_cost::cost(candidates[i].load, candidates[i].route_cost));
                prop_assert_eq!(f.to_bits(), g.to_bits());
            }
            Decision::Reject => prop_assert_eq!(g, f64::INFINITY),
        }
    }
}
