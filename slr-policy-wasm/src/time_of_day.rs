//! Time of day: during the operator's day hours prefer candidates tagged
//! [`DAY_TAG`], at night those tagged [`NIGHT_TAG`] (tags are flag bits 16..=31 of
//! the candidate, set by the host from configuration); among the preferred set the
//! least loaded UP candidate wins. If no preferred candidate is up it falls back to
//! the least loaded UP candidate of all, and rejects only when none is up.
//!
//! The hour comes from the request's `now_unix_secs` shifted by [`UTC_OFFSET_SECS`]
//! (no host call, so the module needs no capability). Day hours, offset and tags are
//! compile-time constants; change and rebuild to configure.

use sdk::{Candidate, Decision, FlowRequest};

/// Module name, as in `manifests/time_of_day.toml`.
pub const NAME: &str = "time_of_day";
/// First hour (0..24) of the day period, inclusive.
pub const DAY_START_HOUR: u64 = 7;
/// First hour after the day period, exclusive.
pub const DAY_END_HOUR: u64 = 19;
/// Offset of the operator's local time from UTC, seconds.
pub const UTC_OFFSET_SECS: i64 = 0;
/// Operator tag of the candidates preferred by day.
pub const DAY_TAG: u16 = 1 << 0;
/// Operator tag of the candidates preferred by night.
pub const NIGHT_TAG: u16 = 1 << 1;

/// Local hour of day (0..24) at `now_unix_secs`.
#[must_use]
pub fn local_hour(now_unix_secs: u64) -> u64 {
    let local = i128::from(now_unix_secs) + i128::from(UTC_OFFSET_SECS);
    // rem_euclid keeps times before the epoch (after a negative offset) in 0..24.
    let hour = local.rem_euclid(86_400) / 3_600;
    u64::try_from(hour).unwrap_or(0)
}

/// Whether `now_unix_secs` falls in the day period.
#[must_use]
pub fn is_day(now_unix_secs: u64) -> bool {
    (DAY_START_HOUR..DAY_END_HOUR).contains(&local_hour(now_unix_secs))
}

/// The policy: see the module docs.
#[must_use]
pub fn select(request: &FlowRequest, candidates: &[Candidate]) -> Decision {
    let tag = if is_day(request.now_unix_secs) {
        DAY_TAG
    } else {
        NIGHT_TAG
    };
    crate::least_loaded_where(candidates, |c| c.tags() & tag != 0)
        .or_else(|| crate::least_loaded_where(candidates, |_| true))
        .map_or(Decision::Reject, Decision::Select)
}

#[cfg(test)]
mod tests {
    use sdk::Decision;
    use sdk::harness::{self, Candidates};

    use super::{DAY_TAG, NIGHT_TAG, is_day, local_hour, select};

    /// 2024-01-01T00:00:00Z.
    const MIDNIGHT: u64 = 1_704_067_200;

    fn req_at(hour: u64) -> sdk::FlowRequest {
        harness::tcp(([10, 0, 0, 1], 40000), ([192, 200, 0, 10], 80))
            .with_now(MIDNIGHT + hour * 3600 + 59)
    }

    fn cands() -> std::vec::Vec<sdk::Candidate> {
        Candidates::new()
            .up([10, 1, 0, 1], 0.9, 0.0)
            .tagged(DAY_TAG)
            .up([10, 1, 0, 2], 0.5, 0.0)
            .tagged(NIGHT_TAG)
            .up([10, 1, 0, 3], 0.1, 0.0) // untagged, least loaded
            .up([10, 1, 0, 4], 0.7, 0.0)
            .tagged(DAY_TAG | NIGHT_TAG)
            .build()
    }

    #[test]
    fn hours_and_periods() {
        assert_eq!(local_hour(MIDNIGHT), 0);
        assert_eq!(local_hour(MIDNIGHT + 13 * 3600 + 5), 13);
        assert!(!is_day(MIDNIGHT + 6 * 3600 + 3599));
        assert!(is_day(MIDNIGHT + 7 * 3600));
        assert!(is_day(MIDNIGHT + 18 * 3600 + 3599));
        assert!(!is_day(MIDNIGHT + 19 * 3600));
    }

    #[test]
    fn switches_sets_with_the_hour() {
        let c = cands();
        // Day: tagged DAY are 0 (0.9) and 3 (0.7).
        assert_eq!(
            harness::select(select, &req_at(12), &c),
            Ok(Decision::Select(3))
        );
        // Night: tagged NIGHT are 1 (0.5) and 3 (0.7).
        assert_eq!(
            harness::select(select, &req_at(23), &c),
            Ok(Decision::Select(1))
        );
        assert_eq!(
            harness::select(select, &req_at(3), &c),
            Ok(Decision::Select(1))
        );
    }

    #[test]
    fn falls_back_to_least_load_when_the_set_is_down() {
        let c = Candidates::new()
            .down([10, 1, 0, 1], 0.0, 0.0)
            .tagged(DAY_TAG)
            .up([10, 1, 0, 2], 0.6, 0.0)
            .up([10, 1, 0, 3], 0.2, 0.0)
            .build();
        assert_eq!(
            harness::select(select, &req_at(12), &c),
            Ok(Decision::Select(2))
        );
        let none = Candidates::new()
            .down([10, 1, 0, 1], 0.0, 0.0)
            .tagged(DAY_TAG)
            .build();
        assert_eq!(
            harness::select(select, &req_at(12), &none),
            Ok(Decision::Reject)
        );
    }
}
