//! Least slack time first (Mittal et al., "Universal packet scheduling",
//! NSDI'16) at one hop: each packet gets a delay budget (slack) from its DSCP
//! when it arrives, and the packet whose budget runs out first leaves first.
//!
//! The rank is the deadline `now + slack(dscp) * (priority + 1)`, in host
//! nanoseconds, at every level of the tree. Ranking every level by the same
//! deadline makes the tree serve the earliest deadline overall (each child's own
//! earliest deadline is the one its reference carries up). A class's priority
//! stretches its budget: priority 0 keeps the DSCP budget, priority 1 doubles it.
//! Stateless; arithmetic saturates, so a deadline past the end of time is the last
//! rank, not a wrapped small one.
//!
//! | DSCP | traffic (RFC 4594) | slack |
//! | --- | --- | --- |
//! | CS6 48, CS7 56 | network control | 100 µs |
//! | EF 46, VOICE-ADMIT 44 | telephony | 1 ms |
//! | CS4 32, AF4x 34/36/38, CS5 40 | interactive and real-time video | 5 ms |
//! | CS3 24, AF3x 26/28/30 | multimedia streaming | 10 ms |
//! | CS2 16, AF2x 18/20/22 | low-latency data | 20 ms |
//! | AF1x 10/12/14 | high-throughput data | 50 ms |
//! | LE 1 (RFC 8622), CS1 8 | lower effort | 1 s |
//! | anything else, default 0 | best effort | 100 ms |

use sdk::RankRequest;

/// Module name, as in `manifests/least_slack.toml`.
pub const NAME: &str = "least_slack";

const MICROS: u64 = 1_000;
const MILLIS: u64 = 1_000_000;

/// Delay budget of a packet with this DSCP, in nanoseconds (see the table).
#[must_use]
pub const fn slack_ns(dscp: u8) -> u64 {
    match dscp {
        48 | 56 => 100 * MICROS,
        44 | 46 => MILLIS,
        32 | 34 | 36 | 38 | 40 => 5 * MILLIS,
        24 | 26 | 28 | 30 => 10 * MILLIS,
        16 | 18 | 20 | 22 => 20 * MILLIS,
        10 | 12 | 14 => 50 * MILLIS,
        1 | 8 => 1_000 * MILLIS,
        _ => 100 * MILLIS,
    }
}

/// The rank of `request`'s packet: its deadline (see the module docs).
#[must_use]
pub fn rank(request: &RankRequest) -> u64 {
    let slack = slack_ns(request.dscp).saturating_mul(u64::from(request.priority) + 1);
    request.now_ns.saturating_add(slack)
}

#[cfg(test)]
mod tests {
    use sdk::{RankRequest, harness};

    use super::{MILLIS, rank, slack_ns};

    fn at(now_ns: u64, dscp: u8) -> RankRequest {
        RankRequest::leaf(1200, 2, 5)
            .with_now(now_ns)
            .with_dscp(dscp, 17)
    }

    #[test]
    fn voice_overtakes_earlier_best_effort() {
        let best_effort = harness::rank(rank, &at(0, 0)).unwrap();
        let voice = harness::rank(rank, &at(50 * MILLIS, 46)).unwrap();
        assert!(voice < best_effort, "{voice} vs {best_effort}");
        // ... but not best effort that has waited longer than voice's budget.
        let old = harness::rank(rank, &at(0, 0)).unwrap();
        let late_voice = harness::rank(rank, &at(100 * MILLIS, 46)).unwrap();
        assert!(old < late_voice);
    }

    #[test]
    fn priority_stretches_the_budget_at_every_level() {
        let leaf = at(1_000, 26);
        let above = leaf.with_node(0, 2, 10, 1);
        assert_eq!(rank(&leaf), 1_000 + 10 * MILLIS);
        assert_eq!(rank(&above), 1_000 + 20 * MILLIS);
    }

    #[test]
    fn every_dscp_has_a_budget_and_deadlines_saturate() {
        for dscp in 0..64 {
            assert!(slack_ns(dscp) >= 100_000, "dscp {dscp}");
        }
        assert_eq!(slack_ns(1), 1_000 * MILLIS);
        let r = at(u64::MAX - 1, 8).with_node(0, 2, 1, 255);
        assert_eq!(rank(&r), u64::MAX);
        assert_eq!(harness::rank(rank, &r), Ok(sdk::MAX_RANK));
    }
}
