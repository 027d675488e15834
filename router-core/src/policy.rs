//! The policy seam: how a service-specific choice enters the engine.
//!
//! The engine asks a [`Policy`] once per new flow to choose among the next-hop
//! candidates of the flow's virtual subnet. Policies come from execution
//! environments (wasm modules) or the built-in [`LeastCost`] default.

use crate::classify::FlowKey;
use std::net::IpAddr;

/// What a policy sees about the flow it must place (DESIGN.md §4: choices may use
/// the request itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowRequest {
    /// The flow's five-tuple.
    pub key: FlowKey,
    /// Index of the virtual subnet the destination falls in (engine-local id).
    pub subnet: SubnetId,
    /// Level of this router in the hierarchy.
    pub level: Level,
}

/// One next-hop candidate offered to a policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Tunnel endpoint of the next hop (site SLR, AS gateway or host server).
    pub addr: IpAddr,
    /// Last reported load of this subnet at that next hop, 0.0 ..= 1.0 (may exceed
    /// 1.0 when overloaded).
    pub load: f64,
    /// Route cost from this router to the next hop (operator units, lower is better).
    pub route_cost: f64,
    /// Whether the next hop is currently usable (registered, alive, not draining).
    pub up: bool,
}

/// A policy's answer for one new flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Pin the flow to `candidates[index]`.
    Select(usize),
    /// Refuse the flow (the engine drops the packet and counts it).
    Reject,
}

/// Why a policy call did not produce a usable decision; the engine falls back to the
/// built-in policy and counts the fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The policy trapped or panicked.
    #[error("policy trapped: {0}")]
    Trap(String),
    /// The policy ran out of its CPU budget for this call.
    #[error("policy exceeded its CPU budget")]
    Timeout,
    /// The policy returned an index outside the candidate list.
    #[error("policy returned candidate {index} of {len}")]
    OutOfRange {
        /// The index returned.
        index: usize,
        /// Number of candidates offered.
        len: usize,
    },
    /// The policy is quarantined or otherwise unavailable.
    #[error("policy unavailable: {0}")]
    Unavailable(String),
}

/// A next-hop selection policy for one or more virtual subnets.
pub trait Policy: Send + Sync {
    /// Short name for logs and counters.
    fn name(&self) -> &str;
    /// Choose a next hop for a new flow. `candidates` is never empty.
    fn select(&self, req: &FlowRequest, candidates: &[Candidate]) -> Result<Decision, PolicyError>;
}

/// The operator's F and G (DESIGN.md §4): F turns a next hop's reported load and
/// the route cost to it into a cost; G aggregates a subnet's candidates into the
/// one load this router advertises upward.
pub trait CostModel: Send + Sync {
    /// Short name for logs and counters.
    fn name(&self) -> &str;
    /// F(load, route_cost); lower is better, `+inf` means unreachable.
    fn cost(&self, load: f64, route_cost: f64) -> Result<f64, PolicyError>;
    /// G over a subnet's candidates: the load to advertise upward.
    fn aggregate(&self, candidates: &[Candidate]) -> Result<f64, PolicyError>;
}

/// The built-in F and G: F = load + route_cost; G = the lowest load among usable
/// candidates (what the next new flow would see), `+inf` when none is usable.
#[derive(Debug, Clone, Copy, Default)]
pub struct SumCost;

impl CostModel for SumCost {
    fn name(&self) -> &str {
        "builtin-sum-cost"
    }
    fn cost(&self, load: f64, route_cost: f64) -> Result<f64, PolicyError> {
        Ok(load + route_cost)
    }
    fn aggregate(&self, candidates: &[Candidate]) -> Result<f64, PolicyError> {
        Ok(candidates
            .iter()
            .filter(|c| c.up && !c.load.is_nan())
            .map(|c| c.load)
            .fold(f64::INFINITY, f64::min))
    }
}

/// Engine-local identifier of a virtual subnet (index into the subnet table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubnetId(pub u32);

/// A router's level in the SLR hierarchy (DESIGN.md §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Level {
    /// Network-level SLR: chooses among ASes.
    Network = 0,
    /// System (AS) level SLR: chooses among host sites.
    System = 1,
    /// Site-level SLR: chooses among host servers.
    Site = 2,
}

/// The built-in default: the usable candidate with the lowest `load + route_cost`,
/// ties broken by the lowest index, so the engine works without any module.
#[derive(Debug, Clone, Copy, Default)]
pub struct LeastCost;

impl LeastCost {
    /// The pure choice, shared with fallbacks that cannot fail.
    pub fn choose(candidates: &[Candidate]) -> Decision {
        let mut best: Option<(usize, f64)> = None;
        for (i, c) in candidates.iter().enumerate() {
            if !c.up {
                continue;
            }
            let cost = c.load + c.route_cost;
            // NaN costs never win: a broken load report must not attract traffic.
            if cost.is_nan() {
                continue;
            }
            if best.is_none_or(|(_, b)| cost < b) {
                best = Some((i, cost));
            }
        }
        best.map_or(Decision::Reject, |(i, _)| Decision::Select(i))
    }
}

impl Policy for LeastCost {
    fn name(&self) -> &str {
        "builtin-least-cost"
    }
    fn select(
        &self,
        _req: &FlowRequest,
        candidates: &[Candidate],
    ) -> Result<Decision, PolicyError> {
        Ok(Self::choose(candidates))
    }
}

impl std::fmt::Debug for dyn Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("name", &self.name())
            .finish()
    }
}

impl std::fmt::Debug for dyn CostModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CostModel")
            .field("name", &self.name())
            .finish()
    }
}
