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

/// Why a [`ShareSpec`](crate::ShareSpec) was refused: the first fault found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// The tree has no class.
    #[error("the share tree has no class")]
    Empty,
    /// Two classes share an id.
    #[error("class id {id:#x} is used twice")]
    DuplicateClass {
        /// The id.
        id: u16,
    },
    /// More classes than the limit.
    #[error("more than {limit} classes")]
    TooManyClasses {
        /// The bound.
        limit: usize,
    },
    /// A class names a parent that is not listed before it (or itself).
    #[error("class {id:#x} names parent {parent:#x}, which is not listed before it")]
    ParentNotBefore {
        /// The class.
        id: u16,
        /// The parent it names.
        parent: u16,
    },
    /// A class sits deeper than the limit.
    #[error("class {id:#x} is deeper than {limit} levels")]
    TooDeep {
        /// The class.
        id: u16,
        /// The bound.
        limit: usize,
    },
    /// Weights are relative shares and must be at least 1.
    #[error("class {id:#x} has weight 0")]
    ZeroWeight {
        /// The class.
        id: u16,
    },
    /// The default names no class.
    #[error("the default names class {id:#x}, which is not configured")]
    UnknownDefault {
        /// The class named.
        id: u16,
    },
    /// The default names a class with children: only leaves hold items.
    #[error("the default names class {id:#x}, which has children; only leaves hold items")]
    DefaultNotLeaf {
        /// The class named.
        id: u16,
    },
    /// Key number `index` names no class.
    #[error("key #{index} names class {id:#x}, which is not configured")]
    KeyUnknownClass {
        /// Position of the key in the list given.
        index: usize,
        /// The class named.
        id: u16,
    },
    /// Key number `index` names a class with children.
    #[error("key #{index} names class {id:#x}, which has children; only leaves hold items")]
    KeyNotLeaf {
        /// Position of the key in the list given.
        index: usize,
        /// The class named.
        id: u16,
    },
    /// Key number `index` repeats an earlier key.
    #[error("key #{index} is given twice")]
    DuplicateKey {
        /// Position of the repeat in the list given.
        index: usize,
    },
}
