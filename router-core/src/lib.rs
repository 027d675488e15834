//! `router-core`: Pronto's service-independent forwarding engine.
//!
//! Owns: zero-copy wire views ([`wire`]), the classifier and virtual-subnet table
//! ([`classify`]), the bounded flow table of pinned flows ([`flow`]), tunnels
//! ([`tunnel`]) and ICMP errors ([`icmp`]), the per-packet walk ([`engine`]), the
//! policy seam ([`policy`]) and the API boundary the execution environments use
//! ([`api`]), the built-in policies ([`policy::LeastCost`], [`policy::FlowHash`],
//! [`policy::SubnetPolicies`], [`policy::SubnetCosts`]). Everything but `linux` is sans-IO: bytes and a
//! timestamp in, a verdict out. The Linux shell (`linux`, a feature only the
//! daemon turns on) drives any `linux::dataplane::DataplaneNode` (the bare
//! engine, or the router node the daemon builds around it) against the kernel,
//! and loads the kernel fast path (`linux::fastpath`: eBPF programs built from
//! `bpf/`, fed from the flow table's journal) that forwards pinned flows
//! without crossing into userspace, and the userspace egress stage
//! (`linux::egress`) that puts the queue manager and the PIFO link scheduler
//! ([`queue`], [`sched`]) in front of a real link.
//!
//! It must never: know a service (service choices arrive through [`policy::Policy`]),
//! perform I/O or read the clock, allocate or make a syscall per packet on the
//! pinned-flow path, panic on any packet, or grow a table without bound.
#![warn(missing_docs)]

pub mod api;
pub mod classify;
pub mod engine;
pub mod flow;
pub mod icmp;
#[cfg(all(target_os = "linux", feature = "linux"))]
pub mod linux;
pub mod packet;
pub mod policy;
pub mod queue;
pub mod sched;
pub mod synth;
pub mod time;
pub mod tunnel;
pub mod wire;

pub use api::{ApiError, RouterApi};
pub use classify::{FlowKey, PrefixTable, VirtualSubnet};
pub use engine::{DropReason, Engine, EngineConfig, EngineCounters, Verdict};
pub use flow::{FlowActivity, FlowChange, FlowEntry, FlowState, FlowTable};
pub use packet::{HEADROOM, PacketBuf};
pub use policy::{
    Candidate, CostModel, Decision, FlowRequest, Level, Policy, PolicyError, SubnetId,
};
pub use time::Instant;
