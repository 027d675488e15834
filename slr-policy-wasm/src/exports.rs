//! Wasm exports of the module selected by a cargo feature.
//!
//! Natively the `sdk::export_*!` macros only type-check, so every feature (and
//! any combination) builds and tests; on wasm32 exactly one module may be chosen,
//! since each artifact has one `pronto_select`.

#[cfg(all(
    target_arch = "wasm32",
    any(
        all(
            feature = "least_load",
            any(
                feature = "weighted_cost",
                feature = "proximity",
                feature = "consistent_hash",
                feature = "time_of_day"
            )
        ),
        all(
            feature = "weighted_cost",
            any(
                feature = "proximity",
                feature = "consistent_hash",
                feature = "time_of_day"
            )
        ),
        all(
            feature = "proximity",
            any(feature = "consistent_hash", feature = "time_of_day")
        ),
        all(feature = "consistent_hash", feature = "time_of_day"),
    )
))]
compile_error!("a wasm artifact holds one module: enable exactly one module feature");

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
