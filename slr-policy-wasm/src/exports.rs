//! Wasm exports of the module selected by a cargo feature.
//!
//! Natively the `sdk::export_*!` macros only type-check, so every feature (and
//! any combination) builds and tests; on wasm32 exactly one module may be chosen,
//! since each artifact has one `pronto_select` or `pronto_rank`.

/// Module features enabled in this build.
#[cfg(target_arch = "wasm32")]
const MODULES_ENABLED: u32 = cfg!(feature = "least_load") as u32
    + cfg!(feature = "weighted_cost") as u32
    + cfg!(feature = "proximity") as u32
    + cfg!(feature = "consistent_hash") as u32
    + cfg!(feature = "time_of_day") as u32
    + cfg!(feature = "sfq") as u32
    + cfg!(feature = "strict_priority") as u32
    + cfg!(feature = "least_slack") as u32;

#[cfg(target_arch = "wasm32")]
const _: () = assert!(
    MODULES_ENABLED <= 1,
    "a wasm artifact holds one module: enable exactly one module feature"
);

#[cfg(feature = "least_load")]
mod least_load {
    sdk::export_policy!(crate::least_load::select);
}

#[cfg(feature = "weighted_cost")]
mod weighted_cost {
    sdk::export_policy!(crate::weighted_cost::select);
    sdk::export_cost!(crate::weighted_cost::cost);
    sdk::export_aggregate!(crate::weighted_cost::aggregate);
}

#[cfg(feature = "proximity")]
mod proximity {
    sdk::export_policy!(crate::proximity::select);
}

#[cfg(all(feature = "consistent_hash", target_arch = "wasm32"))]
mod consistent_hash {
    use sdk::guest::{InstanceCell, host};
    use sdk::{Candidate, Decision, FlowRequest, LogLevel};

    use crate::consistent_hash::MaglevTable;

    /// The instance's lookup table; rebuilt when the candidate set changes.
    static TABLE: InstanceCell<MaglevTable> = InstanceCell::new(MaglevTable::EMPTY);

    fn select(request: &FlowRequest, candidates: &[Candidate]) -> Decision {
        let (decision, rebuilt) = TABLE
            .with(|table| table.select_tracking(request, candidates))
            .unwrap_or((Decision::Reject, false));
        if rebuilt {
            host::log(LogLevel::Debug, "consistent_hash: lookup table rebuilt");
        }
        decision
    }

    sdk::export_policy!(select);
}

#[cfg(feature = "time_of_day")]
mod time_of_day {
    sdk::export_policy!(crate::time_of_day::select);
}

#[cfg(all(feature = "sfq", target_arch = "wasm32"))]
mod sfq {
    use sdk::RankRequest;
    use sdk::guest::InstanceCell;

    use crate::sfq::Sfq;

    /// The instance's finish tags; they live as long as the instance.
    static STATE: InstanceCell<Sfq> = InstanceCell::new(Sfq::EMPTY);

    fn rank(request: &RankRequest) -> u64 {
        // `with` fails only on re-entry, which the ABI cannot produce; rank at the
        // node's virtual time (arrival order) rather than trap.
        STATE.with(|sfq| sfq.rank(request)).unwrap_or(request.vtime)
    }

    sdk::export_scheduler!(rank);
}

#[cfg(feature = "strict_priority")]
mod strict_priority {
    sdk::export_scheduler!(crate::strict_priority::rank);
}

#[cfg(feature = "least_slack")]
mod least_slack {
    sdk::export_scheduler!(crate::least_slack::rank);
}
