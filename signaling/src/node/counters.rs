//! The node's counters: one per drop, refusal and recovery outcome the node
//! itself decides (the engine, the control side, the sessions and the
//! advertisement check keep their own). Serialisable once, for the stats file,
//! `/metrics` and `lab status` alike.

use super::LAG_BUCKETS;
use serde::Serialize;

/// Counters of the node's own decisions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct NodeCounters {
    /// Flows pinned by their first packet here.
    pub flows_pinned: u64,
    /// Sessions refused or closed by the control side.
    pub sessions_refused: u64,
    /// Neighbour sessions the control side refused.
    pub neighbours_refused: u64,
    /// Events of sessions the node did not know (closed meanwhile).
    pub events_unknown_session: u64,
    /// Half-open flows unpinned because their next hop went down.
    pub embryonic_unpinned: u64,
    /// Flows re-created from WHOHAS answers.
    pub flows_recovered: u64,
    /// Shortcut lag: tunnel objects received per packets the lower SLR had seen
    /// of the flow (1, 2, ..., 8+).
    pub shortcut_lag: [u64; LAG_BUCKETS],
    /// Recovery outcomes.
    pub recovery: RecoveryCounters,
    /// Packets of lost flows held until their flow was re-created.
    pub hold: super::HoldCounters,
}

/// Recovery outcomes decided by the node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RecoveryCounters {
    /// Mid-flow packets of unknown flows handed to the cluster's SLR.
    pub recover_forwarded: u64,
    /// Mid-flow packets sent along a pin that arrived meanwhile.
    pub recover_sent_to_pin: u64,
    /// Advertisements refused: no keys configured here.
    pub adverts_no_keys: u64,
    /// Advertisements that did not parse.
    pub adverts_malformed: u64,
    /// Verified advertisements that re-created a flow.
    pub adverts_installed: u64,
    /// Verified advertisements of a flow already pinned so.
    pub adverts_current: u64,
    /// Verified advertisements relayed along the flow's pin.
    pub adverts_relayed: u64,
    /// Verified advertisements refused (not served, bad server, engine).
    pub adverts_rejected: u64,
    /// Takeover addresses the control side refused.
    pub local_addr_refused: u64,
    /// Mirrored flows whose refresh the engine refused at the takeover.
    pub refresh_refused: u64,
    /// Advertisement key reloads.
    pub key_reloads: u64,
}
