//! The API boundary (DESIGN.md §2): what execution environments and the control
//! plane may do to the forwarding engine. Small on purpose; later layers extend it.

use crate::classify::{FlowKey, SubnetError, VirtualSubnet};
use crate::engine::EngineCounters;
use crate::flow::{FlowEntry, FlowError, Inserted};
use crate::policy::{Candidate, Policy, SubnetId};
use crate::time::Instant;
use std::sync::Arc;

/// Errors of API calls.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// No subnet has this id.
    #[error("unknown virtual subnet id {}", id.0)]
    UnknownSubnet {
        /// The id given.
        id: SubnetId,
    },
    /// The subnet is not served.
    #[error("virtual subnet {subnet} is not served here")]
    NoSuchSubnet {
        /// The subnet given.
        subnet: VirtualSubnet,
    },
    /// Too many candidates for one subnet.
    #[error("{count} candidates exceed the limit of {limit}")]
    TooManyCandidates {
        /// Candidates offered.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A bounded table is full.
    #[error("{what} table is full")]
    Full {
        /// Which table.
        what: &'static str,
    },
    /// Subnet table error.
    #[error(transparent)]
    Subnet(#[from] SubnetError),
    /// Flow table error.
    #[error(transparent)]
    Flow(#[from] FlowError),
}

/// Operations on a router's forwarding state.
pub trait RouterApi {
    /// Serve a virtual subnet (idempotent); returns its id.
    fn add_subnet(&mut self, subnet: VirtualSubnet) -> Result<SubnetId, ApiError>;
    /// Stop serving a subnet. Pinned flows stay pinned until they end.
    fn remove_subnet(&mut self, subnet: &VirtualSubnet) -> Result<(), ApiError>;
    /// Replace the next-hop candidates of a subnet (new flows only; pinned flows
    /// never move).
    fn set_candidates(
        &mut self,
        subnet: SubnetId,
        candidates: Vec<Candidate>,
    ) -> Result<(), ApiError>;
    /// Install the policy for a subnet; `None` restores the built-in default.
    fn set_policy(
        &mut self,
        subnet: SubnetId,
        policy: Option<Arc<dyn Policy>>,
    ) -> Result<(), ApiError>;
    /// Pin a flow (tunnel object, mirror delta, WHOHAS answer).
    fn install_flow(&mut self, entry: &FlowEntry, now: Instant) -> Result<Inserted, ApiError>;
    /// Unpin a flow.
    fn remove_flow(&mut self, key: &FlowKey, now: Instant) -> Option<FlowEntry>;
    /// Look a flow up.
    fn lookup_flow(&self, key: &FlowKey, now: Instant) -> Option<FlowEntry>;
    /// Snapshot of the engine counters.
    fn counters(&self) -> EngineCounters;
}
