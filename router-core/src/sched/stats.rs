//! Drops, refusals, dequeued packets, counters and errors of the scheduler.

use std::fmt;
use std::time::Duration;

use super::ClassId;

/// Why the queue refused a packet. Each reason has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum QueueDrop {
    /// The class holds its limit of packets.
    ClassPackets = 0,
    /// The class would exceed its byte limit.
    ClassBytes,
    /// All classes together hold the shared packet limit.
    BufferPackets,
    /// All classes together would exceed the shared byte limit.
    BufferBytes,
    /// The class has children; packets are queued at leaves.
    NotALeaf,
    /// The class id names no live class.
    UnknownClass,
    /// No class matched the packet's source and there is no default class, or
    /// the packet's headers could not be read.
    Unclassified,
}

impl QueueDrop {
    /// Number of reasons.
    pub const COUNT: usize = 7;

    /// Every reason, in counter order.
    pub const ALL: [Self; Self::COUNT] = [
        Self::ClassPackets,
        Self::ClassBytes,
        Self::BufferPackets,
        Self::BufferBytes,
        Self::NotALeaf,
        Self::UnknownClass,
        Self::Unclassified,
    ];

    /// Stable snake_case name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClassPackets => "class_packets",
            Self::ClassBytes => "class_bytes",
            Self::BufferPackets => "buffer_packets",
            Self::BufferBytes => "buffer_bytes",
            Self::NotALeaf => "not_a_leaf",
            Self::UnknownClass => "unknown_class",
            Self::Unclassified => "unclassified",
        }
    }
}

impl fmt::Display for QueueDrop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A packet the queue refused, handed back so the caller can recycle its buffer.
#[derive(Debug)]
pub struct Refused<P> {
    /// The packet, untouched.
    pub packet: P,
    /// Why it was refused.
    pub reason: QueueDrop,
}

/// A packet leaving the link.
#[derive(Debug)]
pub struct Dequeued<P> {
    /// The packet as it was queued.
    pub packet: P,
    /// Its leaf class.
    pub class: ClassId,
    /// Its length as given at enqueue.
    pub len: u32,
    /// Its rank in its leaf class.
    pub rank: u64,
    /// How long it was queued.
    pub delay: Duration,
}

/// Counters of one class; an internal class's sum its whole subtree.
///
/// For every class, `enqueued = dequeued + backlog`, and packets offered to it
/// are `enqueued + dropped_total()`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClassStats {
    /// Packets accepted.
    pub enqueued: u64,
    /// Bytes accepted.
    pub enqueued_bytes: u64,
    /// Packets sent.
    pub dequeued: u64,
    /// Bytes sent.
    pub dequeued_bytes: u64,
    /// Packets refused, per [`QueueDrop`] (index = `reason as usize`).
    pub dropped: [u64; QueueDrop::COUNT],
    /// Bytes refused.
    pub dropped_bytes: u64,
    /// Packets queued now.
    pub backlog: u32,
    /// Bytes queued now.
    pub backlog_bytes: u64,
    /// Sum of the queueing delays of the packets sent, nanoseconds.
    pub delay_total_ns: u64,
    /// Largest queueing delay of a packet sent, nanoseconds.
    pub delay_max_ns: u64,
}

impl ClassStats {
    /// Packets refused for one reason.
    pub fn dropped(&self, reason: QueueDrop) -> u64 {
        self.dropped[reason as usize]
    }

    /// All packets refused.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }

    /// Mean queueing delay of the packets sent.
    pub fn delay_mean(&self) -> Duration {
        Duration::from_nanos(self.delay_total_ns.checked_div(self.dequeued).unwrap_or(0))
    }
}

/// Counters of the whole scheduler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SchedCounters {
    /// Packets accepted.
    pub enqueued: u64,
    /// Packets sent.
    pub dequeued: u64,
    /// Packets refused per [`QueueDrop`], whatever their class.
    pub dropped: [u64; QueueDrop::COUNT],
    /// Rank function calls.
    pub rank_calls: u64,
    /// Rank calls that failed and were ranked at the virtual time instead.
    pub rank_faults: u64,
    /// Ranks equal to `u64::MAX` (saturated tags: arrival order among them).
    pub rank_saturated: u64,
    /// Rank functions swapped in.
    pub rank_swaps: u64,
    /// `dequeue` calls that found packets but were held back by the shaper.
    pub shaped: u64,
}

impl SchedCounters {
    /// Packets refused for one reason.
    pub fn dropped(&self, reason: QueueDrop) -> u64 {
        self.dropped[reason as usize]
    }

    /// All packets refused.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }
}

/// A class of a share-tree model the scheduler refused ([`LinkScheduler::add_spec`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("share-tree class {id:#x}: {source}")]
pub struct SpecClassError {
    /// The spec's id of the class.
    pub id: u16,
    /// Why the scheduler refused it.
    #[source]
    pub source: SchedError,
}

/// Why a class operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SchedError {
    /// The id names no live class.
    #[error("unknown {class}: it was removed or never existed")]
    UnknownClass {
        /// The id given.
        class: ClassId,
    },
    /// Weights are relative shares and must be at least 1.
    #[error("weight must be at least 1 (got {weight})")]
    InvalidWeight {
        /// The rejected weight.
        weight: u32,
    },
    /// Limits must be at least 1.
    #[error("class limits must be at least 1 packet and 1 byte (got {packets}, {bytes})")]
    InvalidLimit {
        /// Packet limit given.
        packets: u32,
        /// Byte limit given.
        bytes: u64,
    },
    /// The configured class limit is reached.
    #[error("the scheduler already holds its limit of {limit} classes")]
    TooManyClasses {
        /// Configured maximum, root included.
        limit: usize,
    },
    /// The configured depth limit is reached.
    #[error("a child of {parent} would exceed the depth limit of {limit}")]
    TooDeep {
        /// The parent asked to take a child.
        parent: ClassId,
        /// Configured maximum depth.
        limit: u8,
    },
    /// The class still queues packets; drain it first.
    #[error("{class} still queues {backlog} packets; drain it first")]
    HasBacklog {
        /// The class.
        class: ClassId,
        /// Packets queued under it.
        backlog: u32,
    },
    /// Only classes without children can be removed.
    #[error("{class} has children; remove them first")]
    HasChildren {
        /// The class.
        class: ClassId,
    },
    /// The root carries the whole link and cannot be removed.
    #[error("the root class cannot be removed")]
    RootNotRemovable,
}
