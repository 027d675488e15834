//! `resource-mgr`: sharing a resource by weight, as pure algorithms.
//!
//! It owns the share-tree model ([`ShareSpec`]: classes, parents, weights, rates,
//! the keys that select leaves) that every realisation builds from: the hierarchical
//! share tree here ([`ShareTree`], start-time fair queuing with optional token-bucket
//! rate limits), and router-core's kernel HTB planner and userspace link scheduler.
//! It also owns the CPU budget ([`CpuShares`]) that execution environments consult
//! before each module call. All are sans-IO: time is always passed in as
//! nanoseconds, nothing here reads a clock.
//!
//! It must never do I/O, read a clock, spawn threads, log on the per-item path, panic
//! on caller input, or allocate per item in steady state; every queue and table is
//! bounded by configuration and every refusal is counted. It depends on nothing else
//! of Pronto's.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod bucket;
pub mod cpu;
mod error;
mod spec;
mod tree;

pub use bucket::RateLimit;
pub use cpu::{Admission, BudgetConfig, CpuShares, EnvId, ModuleId, ModuleStats};
pub use error::{BudgetError, Rejected, ShareError, SpecError};
pub use spec::{ClassSpec, LeafKey, ShareSpec, SpecLimits};
pub use tree::{Dequeued, NodeId, NodeStats, Peeked, ShareTree, TreeConfig};
