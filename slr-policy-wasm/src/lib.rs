//! `slr-policy-wasm`: the routing policies and packet schedulers Pronto ships,
//! written with `sdk`.
//!
//! Owns: the policy and scheduler logic as plain functions (tested natively
//! through `sdk::harness`) and, per cargo feature, the wasm exports of one
//! module; the built artifacts in `modules/<name>.wasm` and their signing
//! manifests in `manifests/<name>.toml`. It must never: allocate (no allocator in
//! the guest), panic on any candidate list or rank request, choose a candidate
//! that is not UP, or keep unbounded state.
//!
//! | module (feature) | kind | exports | what it does |
//! | --- | --- | --- | --- |
//! | [`least_load`] | policy | `pronto_select` | lowest load among UP candidates |
//! | [`weighted_cost`] | policy | `pronto_select`, `pronto_cost`, `pronto_aggregate` | F = weighted load + route cost; G = min F |
//! | [`proximity`] | policy | `pronto_select` | longest common address prefix with the client, then least load |
//! | [`consistent_hash`] | policy | `pronto_select` | Maglev lookup over UP candidates keyed by the flow 5-tuple |
//! | [`time_of_day`] | policy | `pronto_select` | day/night candidate sets by operator tag, then least load |
//! | [`sfq`] | scheduler | `pronto_rank` | start-time fair queuing: children by weight, flows in a class equally |
//! | [`strict_priority`] | scheduler | `pronto_rank` | the child of the smallest priority number first |
//! | [`least_slack`] | scheduler | `pronto_rank` | earliest deadline: arrival + a DSCP delay budget |
//!
//! Build: `scripts/build-wasm.sh` (one `cdylib` per feature for
//! `wasm32-unknown-unknown`, 64 KiB stack: each instance needs 2 pages of memory,
//! `consistent_hash` 4 for its table, `sfq` 2 with its 33 KiB of tags). Natively,
//! features only type-check the exports. `tests/artifacts.rs` checks the
//! committed artifacts against the ABI and `tests/differential.rs` runs them in
//! wasmtime against the native policies and schedulers.
//!
//! Ties are broken by the lowest candidate index everywhere, and a NaN load or
//! cost counts as +inf (worst), so every policy is deterministic on any input.
#![no_std]
#![warn(missing_docs)]

#[cfg(test)]
extern crate std;

pub mod consistent_hash;
pub mod least_load;
pub mod least_slack;
pub mod proximity;
pub mod sfq;
pub mod strict_priority;
pub mod time_of_day;
pub mod weighted_cost;

mod exports;

use sdk::Candidate;

/// A load or cost as an ordering key: NaN becomes +inf so it never wins.
fn key(value: f64) -> f64 {
    if value.is_nan() { f64::INFINITY } else { value }
}

/// Index of the UP candidate satisfying `accept` with the lowest load; ties go to
/// the lowest index.
fn least_loaded_where(
    candidates: &[Candidate],
    accept: impl Fn(&Candidate) -> bool,
) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (index, candidate) in candidates.iter().enumerate() {
        if !candidate.is_up() || !accept(candidate) {
            continue;
        }
        let load = key(candidate.load);
        if best.is_none_or(|(_, best_load)| load < best_load) {
            best = Some((index, load));
        }
    }
    best.map(|(index, _)| index)
}
