//! Policy calls: `pronto_select` on the router's types or on ABI types.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use router_core::policy::{Candidate, Decision, FlowRequest, Level, Policy, PolicyError};
use sdk::MAX_CANDIDATES;

use super::error::unavailable;
use super::instance::Step;
use super::live::Live;
use super::{CallOutcome, Fault, PolicyInstance};

/// ABI form of the router's request.
fn abi_request(req: &FlowRequest, now_unix_secs: u64) -> sdk::FlowRequest {
    let level = match req.level {
        Level::Network => sdk::Level::Network,
        Level::System => sdk::Level::System,
        Level::Site => sdk::Level::Site,
    };
    sdk::FlowRequest::new(
        req.key.proto,
        SocketAddr::new(req.key.src, req.key.src_port),
        SocketAddr::new(req.key.dst, req.key.dst_port),
    )
    .with_subnet(req.subnet.0)
    .with_level(level)
    .with_now(now_unix_secs)
}

impl PolicyInstance {
    /// `pronto_select` on the router's types; `fuel_limit` caps this call's fuel
    /// below the per-call budget (the caller's CPU share).
    pub fn call_select(
        &self,
        req: &FlowRequest,
        candidates: &[Candidate],
        now_unix_secs: u64,
        fuel_limit: Option<u64>,
    ) -> CallOutcome<Decision> {
        if candidates.len() > MAX_CANDIDATES {
            return CallOutcome {
                result: Err(unavailable("more candidates than ABI v1 allows")),
                cpu_used: 0,
            };
        }
        let request = abi_request(req, now_unix_secs);
        self.run(fuel_limit, |live| {
            live.place(Some(&request), candidates)?;
            Self::select_on(live, candidates.len(), |i| {
                candidates.get(i).is_some_and(|c| c.up)
            })
        })
    }

    /// `pronto_select` on ABI types (operator tags included), as the shipped
    /// modules' differential tests drive it.
    pub fn call_select_abi(
        &self,
        req: &sdk::FlowRequest,
        candidates: &[sdk::Candidate],
        fuel_limit: Option<u64>,
    ) -> CallOutcome<Decision> {
        if candidates.len() > MAX_CANDIDATES {
            return CallOutcome {
                result: Err(unavailable("more candidates than ABI v1 allows")),
                cpu_used: 0,
            };
        }
        self.run(fuel_limit, |live| {
            live.place_abi(req, candidates)?;
            Self::select_on(live, candidates.len(), |i| {
                candidates.get(i).is_some_and(sdk::Candidate::is_up)
            })
        })
    }

    /// Calls `pronto_select(n)` on the request and `n` candidates already in the
    /// guest's I/O buffer, and validates the answer (`is_up` says whether the
    /// host's candidate `i` is UP).
    fn select_on(
        live: &mut Live,
        n: usize,
        is_up: impl Fn(usize) -> bool,
    ) -> Result<Decision, Step> {
        // Borrow the handles in place: cloning a TypedFunc touches wasmtime's type
        // registry (atomics and a lock), a third of a call's time.
        let Live { store, select, .. } = live;
        let select = select
            .as_ref()
            .ok_or_else(|| unavailable("module exports no pronto_select"))?;
        // n <= MAX_CANDIDATES was checked by the caller.
        let raw = select
            .call(&mut *store, i32::try_from(n).unwrap_or(i32::MAX))
            .map_err(Step::Wasm)?;
        match sdk::Decision::from_raw(raw, n) {
            Ok(sdk::Decision::Reject) => Ok(Decision::Reject),
            Ok(sdk::Decision::Select(index)) if is_up(index) => Ok(Decision::Select(index)),
            Ok(sdk::Decision::Select(index)) => Err(Step::Fault(Fault::DownCandidate {
                index,
                candidates: n,
            })),
            Err(_) => Err(Step::Fault(Fault::BadDecision { raw, candidates: n })),
        }
    }
}

impl Policy for PolicyInstance {
    fn name(&self) -> &str {
        self.module.name()
    }

    fn select(&self, req: &FlowRequest, candidates: &[Candidate]) -> Result<Decision, PolicyError> {
        let now = self.module.inner.vm.clock.unix_secs.load(Ordering::Relaxed);
        self.call_select(req, candidates, now, None)
            .result
            .map_err(PolicyError::from)
    }
}
