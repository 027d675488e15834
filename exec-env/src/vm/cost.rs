//! Rank and cost calls: `pronto_rank` (schedulers), `pronto_cost` (F) and
//! `pronto_aggregate` (G).

use router_core::policy::{Candidate, CostModel, PolicyError};
use sdk::{MAX_CANDIDATES, export, layout};

use super::error::unavailable;
use super::instance::Step;
use super::live::{Live, io_buffer};
use super::{CallOutcome, Fault, PolicyInstance};

impl PolicyInstance {
    /// `pronto_rank` (scheduler modules): writes `request` at offset 0 of the I/O
    /// buffer and validates the answer (negative is [`Fault::BadRank`]).
    pub fn call_rank(
        &self,
        request: &sdk::RankRequest,
        fuel_limit: Option<u64>,
    ) -> CallOutcome<u64> {
        self.run(fuel_limit, |live| {
            // The rank request overlaps candidate 0.
            live.resident.forget();
            let Live {
                store,
                memory,
                io,
                rank,
                ..
            } = live;
            let rank = rank
                .as_ref()
                .ok_or_else(|| unavailable("module exports no pronto_rank"))?;
            let buffer = io_buffer(memory, store, *io)?;
            let region = buffer.get_mut(layout::IO_RANK).unwrap_or_default();
            request.encode(region).map_err(|e| Fault::Unavailable {
                reason: e.to_string(),
            })?;
            let raw = rank.call(&mut *store, ()).map_err(Step::Wasm)?;
            sdk::rank_from_raw(raw).map_err(|_| Step::Fault(Fault::BadRank { raw }))
        })
    }

    /// `pronto_cost` (F).
    pub fn call_cost(
        &self,
        load: f64,
        route_cost: f64,
        fuel_limit: Option<u64>,
    ) -> CallOutcome<f64> {
        self.run(fuel_limit, |live| {
            let Live { store, cost, .. } = live;
            let cost = cost
                .as_ref()
                .ok_or_else(|| unavailable("module exports no pronto_cost"))?;
            let value = cost
                .call(&mut *store, (load, route_cost))
                .map_err(Step::Wasm)?;
            if value.is_nan() {
                return Err(Step::Fault(Fault::BadValue {
                    export: export::COST.name,
                    value,
                }));
            }
            Ok(value)
        })
    }

    /// `pronto_aggregate` (G) over the router's candidates.
    pub fn call_aggregate(
        &self,
        candidates: &[Candidate],
        fuel_limit: Option<u64>,
    ) -> CallOutcome<f64> {
        if candidates.len() > MAX_CANDIDATES {
            return CallOutcome {
                result: Err(unavailable("more candidates than ABI v1 allows")),
                cpu_used: 0,
            };
        }
        self.run(fuel_limit, |live| {
            live.place(None, candidates)?;
            let Live {
                store, aggregate, ..
            } = live;
            let aggregate = aggregate
                .as_ref()
                .ok_or_else(|| unavailable("module exports no pronto_aggregate"))?;
            let n = i32::try_from(candidates.len()).unwrap_or(i32::MAX);
            let value = aggregate.call(&mut *store, n).map_err(Step::Wasm)?;
            if value.is_nan() {
                return Err(Step::Fault(Fault::BadValue {
                    export: export::AGGREGATE.name,
                    value,
                }));
            }
            Ok(value)
        })
    }
}

impl CostModel for PolicyInstance {
    fn name(&self) -> &str {
        self.module.name()
    }

    fn cost(&self, load: f64, route_cost: f64) -> Result<f64, PolicyError> {
        self.call_cost(load, route_cost, None)
            .result
            .map_err(PolicyError::from)
    }

    fn aggregate(&self, candidates: &[Candidate]) -> Result<f64, PolicyError> {
        self.call_aggregate(candidates, None)
            .result
            .map_err(PolicyError::from)
    }
}
