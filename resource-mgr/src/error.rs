//! Typed errors of the share tree and the CPU budget.

use crate::tree::NodeId;

/// Why a share-tree operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShareError {
    /// The id names no live node: it was never issued or its node was removed.
    #[error("unknown node {node}: it was removed or never existed")]
    UnknownNode {
        /// The id that was passed in.
        node: NodeId,
    },
    /// Items can only be queued at a node without children.
    #[error("node {node} has children; queue items at a leaf")]
    NotALeaf {
        /// The internal node that was addressed.
        node: NodeId,
    },
    /// A leaf that still holds items cannot become an internal node.
    #[error(
        "node {parent} still queues {backlog} items; drain or remove them before adding children"
    )]
    ParentHasBacklog {
        /// The leaf that was asked to take a child.
        parent: NodeId,
        /// How many items it holds.
        backlog: u64,
    },
    /// Weights are relative shares and must be at least 1.
    #[error("weight must be at least 1 (got {weight})")]
    InvalidWeight {
        /// The rejected weight.
        weight: u32,
    },
    /// A token bucket needs a positive rate and a positive burst.
    #[error("rate limit needs rate > 0 and burst > 0 (got rate {rate}, burst {burst})")]
    InvalidRateLimit {
        /// Units per second.
        rate: u64,
        /// Bucket depth in units.
        burst: u64,
    },
    /// The root carries the whole resource and cannot be removed.
    #[error("the root node cannot be removed")]
    RootNotRemovable,
    /// The configured node limit is reached.
    #[error("the tree already holds its limit of {limit} nodes")]
    TooManyNodes {
        /// Configured maximum number of nodes, root included.
        limit: usize,
    },
    /// The configured depth limit is reached.
    #[error("a child of {parent} would exceed the depth limit of {limit}")]
    TooDeep {
        /// The parent that was asked to take a child.
        parent: NodeId,
        /// Configured maximum depth (the root is depth 0).
        limit: u8,
    },
    /// The leaf's queue is full; the item was not queued (counted as a drop).
    #[error("queue of leaf {leaf} is full ({limit} items); item not queued")]
    QueueFull {
        /// The leaf that refused the item.
        leaf: NodeId,
        /// Its queue limit.
        limit: usize,
    },
    /// The whole tree holds its limit of items; the item was not queued (counted as a drop).
    #[error("the tree holds its limit of {limit} items; item for leaf {leaf} not queued")]
    TreeFull {
        /// The leaf the item was meant for.
        leaf: NodeId,
        /// Configured maximum number of queued items in the tree.
        limit: usize,
    },
}

/// An item that [`ShareTree::enqueue`](crate::ShareTree::enqueue) refused, handed back
/// so the caller decides what to do with it (drop it, return its buffer to a pool).
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct Rejected<T> {
    /// The item that was not queued.
    pub item: T,
    /// Why it was not queued.
    #[source]
    pub error: ShareError,
}

impl<T> Rejected<T> {
    /// Gives the item back and forgets the reason.
    pub fn into_item(self) -> T {
        self.item
    }
}

/// Why a CPU budget operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BudgetError {
    /// The id names no live environment.
    #[error("unknown environment {env}")]
    UnknownEnvironment {
        /// The id that was passed in.
        env: crate::cpu::EnvId,
    },
    /// The id names no live module.
    #[error("unknown module {module}")]
    UnknownModule {
        /// The id that was passed in.
        module: crate::cpu::ModuleId,
    },
    /// Weights are relative shares and must be at least 1.
    #[error("weight must be at least 1 (got {weight})")]
    InvalidWeight {
        /// The rejected weight.
        weight: u32,
    },
    /// Period and capacity must both be positive.
    #[error(
        "budget needs period_ns > 0 and capacity > 0 (got period {period_ns} ns, capacity {capacity})"
    )]
    InvalidConfig {
        /// Configured period length.
        period_ns: u64,
        /// Configured capacity per period.
        capacity: u64,
    },
    /// The configured number of environments is reached.
    #[error("already {limit} environments")]
    TooManyEnvironments {
        /// Configured maximum.
        limit: usize,
    },
    /// The configured number of modules is reached.
    #[error("already {limit} modules")]
    TooManyModules {
        /// Configured maximum.
        limit: usize,
    },
}
