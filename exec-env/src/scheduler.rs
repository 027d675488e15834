//! Scheduler modules (DESIGN.md §6-7): signed wasm modules of kind `scheduler`
//! that rank packets for router-core's PIFO link scheduler. They live in an
//! [`Environment`](crate::manager::Environment) like policies do; this file only
//! says how a packet becomes the module's request ([`rank_request`]).
//!
//! # Life of a scheduler module
//!
//! * **Install.** [`Environment::load`](crate::manager::Environment::load),
//!   [`swap`](crate::manager::Environment::swap),
//!   [`install`](crate::manager::Environment::install) and
//!   [`rollback`](crate::manager::Environment::rollback) take scheduler modules
//!   as they take policies: the signature is verified against the
//!   environment's trust anchors, the module is checked and compiled on its VM
//!   ([`Vm::compile_scheduler`](crate::vm::Vm::compile_scheduler): the same
//!   engine, memory/table limits, fuel and epoch bounds, ABI v1 checks, and
//!   `pronto_rank` required) and instantiated off the packet path, then
//!   published with one atomic store. [`Environment::list`](crate::manager::Environment::list)
//!   lists them. Tenant environments refuse them
//!   ([`ManagerError::SchedulerInTenant`](crate::manager::ManagerError::SchedulerInTenant)):
//!   a rank function orders every class of a link, not one tenant's subnets.
//! * **Bind.** [`Environment::bind`](crate::manager::Environment::bind)`(name,`
//!   [`Role::LINK`](crate::manager::Role::LINK)`,`
//!   [`Role::Scheduler`](crate::manager::Role::Scheduler)`)` answers a
//!   [`BoundHandle::Rank`](crate::manager::BoundHandle::Rank) holding a
//!   [`ModuleRankHandle`](crate::manager::ModuleRankHandle), which implements
//!   [`router_core::sched::Rank`]; give it (boxed) to
//!   [`LinkScheduler::with_rank`](router_core::sched::LinkScheduler::with_rank)
//!   or, between two packets,
//!   [`LinkScheduler::set_rank`](router_core::sched::LinkScheduler::set_rank),
//!   which counts the swap and hands back the old rank function to drop off the
//!   packet path. A module without `pronto_rank` in the scheduler role, or a
//!   scheduler module in the policy or cost role, is
//!   [`ManagerError::WrongRole`](crate::manager::ManagerError::WrongRole).
//! * **Rank.** Each call builds the [`sdk::RankRequest`] of the packet and its
//!   [`RankContext`] ([`rank_request`], exactly as `sdk::rank` documents it)
//!   and calls `pronto_rank` of whichever version is active, with
//!   [`RANK_FUEL_PER_CALL`](crate::manager::RANK_FUEL_PER_CALL) fuel; the
//!   answer is validated with [`sdk::rank_from_raw`]. A version's instance
//!   keeps the module's state (SFQ's finish tags), so a swap or rollback
//!   under a bound handle starts the new version's state afresh; queued
//!   packets keep the ranks they were given.
//!
//! # Faults, quarantine and CPU
//!
//! A trap, a fuel or epoch stop or a negative rank fails that call only. Under
//! [`FailurePolicy::FallBack`](crate::manager::FailurePolicy::FallBack) the
//! previous version, if any, is asked next; if no version answers, the handle
//! answers a [`RankError`](router_core::sched::RankError) and the link
//! scheduler ranks the packet at the class's virtual time and counts a fault
//! (the built-in fallback of DESIGN.md §6); no packet is dropped for it. The
//! VM rebuilds the instance after a fault (a trap may leave guest memory
//! half-written). Everything else is the environment's, through the same code
//! as policies: the call is counted in the module's
//! [`ModuleCounters`](crate::manager::ModuleCounters), charged to the module's
//! CPU share (refused while the share is spent), and repeated faults quarantine
//! the version under the environment's
//! [`QuarantineConfig`](crate::manager::QuarantineConfig), on the environment's
//! clock.

use router_core::sched::{PacketMeta, RankContext};
use sdk::RankRequest;

/// The ABI request for `packet` at `at`, as `sdk::rank` documents it.
pub fn rank_request(packet: &PacketMeta, at: &RankContext) -> RankRequest {
    RankRequest::leaf(packet.len, packet.class.index(), packet.flow_hash)
        .with_node(at.node.index(), at.child.index(), at.weight, at.priority)
        .with_state(at.vtime, at.busy_period, at.queued)
        .with_now(at.now.as_nanos())
        .with_dscp(packet.dscp, packet.proto)
}
