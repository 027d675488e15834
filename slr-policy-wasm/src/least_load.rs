//! Least load: the UP candidate with the lowest reported load (DESIGN.md §4's
//! default choice); ties go to the lowest index; reject when none is up.

use sdk::{Candidate, Decision, FlowRequest};

/// Module name, as in `manifests/least_load.toml`.
pub const NAME: &str = "least_load";

/// The policy: see the module docs.
#[must_use]
pub fn select(_request: &FlowRequest, candidates: &[Candidate]) -> Decision {
    crate::least_loaded_where(candidates, |_| true).map_or(Decision::Reject, Decision::Select)
}

#[cfg(test)]
mod tests {
    use sdk::Decision;
    use sdk::harness::{self, Candidates};

    use super::select;

    fn req() -> sdk::FlowRequest {
        harness::tcp(([10, 0, 0, 1], 40000), ([192, 200, 0, 10], 80))
    }

    #[test]
    fn picks_the_lowest_load() {
        let c = Candidates::new()
            .up([10, 1, 0, 1], 0.7, 0.0)
            .up([10, 1, 0, 2], 0.2, 0.0)
            .up([10, 1, 0, 3], 0.4, 0.0)
            .build();
        assert_eq!(harness::select(select, &req(), &c), Ok(Decision::Select(1)));
    }

    #[test]
    fn never_picks_a_down_candidate() {
        let c = Candidates::new()
            .down([10, 1, 0, 1], 0.0, 0.0)
            .up([10, 1, 0, 2], 0.9, 0.0)
            .down([10, 1, 0, 3], 0.1, 0.0)
            .build();
        assert_eq!(harness::select(select, &req(), &c), Ok(Decision::Select(1)));
    }

    #[test]
    fn rejects_when_none_is_up() {
        let c = Candidates::new().down([10, 1, 0, 1], 0.0, 0.0).build();
        assert_eq!(harness::select(select, &req(), &c), Ok(Decision::Reject));
        assert_eq!(harness::select(select, &req(), &[]), Ok(Decision::Reject));
    }

    #[test]
    fn ties_go_to_the_lowest_index_and_nan_never_wins() {
        let c = Candidates::new()
            .up([10, 1, 0, 1], f64::NAN, 0.0)
            .up([10, 1, 0, 2], 0.5, 0.0)
            .up([10, 1, 0, 3], 0.5, 0.0)
            .build();
        assert_eq!(harness::select(select, &req(), &c), Ok(Decision::Select(1)));
    }
}
