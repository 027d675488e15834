//! Class ids and the configuration of classes and of the scheduler.

use std::fmt;

use resource_mgr::RateLimit;

use super::{ROOT, SchedError};

/// Names one class of a [`LinkScheduler`]; a removed class's id never names a
/// later class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClassId {
    pub(super) index: u32,
    pub(super) generation: u32,
}

impl ClassId {
    /// The root class, which exists from the start.
    pub const ROOT: Self = Self {
        index: ROOT,
        generation: 0,
    };

    /// Dense index of the class (the `node`/`child`/`class` number rank modules
    /// see); reused after the class is removed.
    pub fn index(self) -> u32 {
        self.index
    }
}

impl fmt::Display for ClassId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "class#{}.{}", self.index, self.generation)
    }
}

/// Configuration of one class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClassConfig {
    /// Relative share among its siblings (at least 1); SFQ serves by it.
    pub weight: u32,
    /// Strict priority among its siblings: 0 is served first.
    pub priority: u8,
    /// Most packets a leaf may queue (at least 1).
    pub limit_packets: u32,
    /// Most bytes a leaf may queue (at least 1).
    pub limit_bytes: u64,
}

impl ClassConfig {
    /// A class of `weight` with priority 0 and the default limits (1024 packets,
    /// 2 MiB).
    pub fn new(weight: u32) -> Self {
        Self {
            weight,
            ..Self::default()
        }
    }

    /// Sets the priority.
    #[must_use]
    pub fn with_priority(mut self, priority: u8) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the leaf limits.
    #[must_use]
    pub fn with_limits(mut self, packets: u32, bytes: u64) -> Self {
        self.limit_packets = packets;
        self.limit_bytes = bytes;
        self
    }

    pub(super) fn validate(self) -> Result<Self, SchedError> {
        if self.weight == 0 {
            return Err(SchedError::InvalidWeight {
                weight: self.weight,
            });
        }
        if self.limit_packets == 0 || self.limit_bytes == 0 {
            return Err(SchedError::InvalidLimit {
                packets: self.limit_packets,
                bytes: self.limit_bytes,
            });
        }
        Ok(self)
    }
}

impl Default for ClassConfig {
    fn default() -> Self {
        Self {
            weight: 1,
            priority: 0,
            limit_packets: 1024,
            limit_bytes: 2 << 20,
        }
    }
}

/// Bounds of a [`LinkScheduler`] and its link rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SchedConfig {
    /// Most classes, root included.
    pub max_classes: usize,
    /// Deepest level a class may sit at (the root is level 0).
    pub max_depth: u8,
    /// Most packets queued in all classes together (the slab is this big).
    pub total_packets: usize,
    /// Most bytes queued in all classes together.
    pub total_bytes: u64,
    /// Shaping: the link's rate in bytes per second and burst in bytes; `None`
    /// sends as fast as `dequeue` is called.
    pub link: Option<RateLimit>,
}

impl SchedConfig {
    /// Shared limits; the class limits keep their defaults and the link is unshaped.
    pub fn new(total_packets: usize, total_bytes: u64) -> Self {
        Self {
            total_packets,
            total_bytes,
            ..Self::default()
        }
    }

    /// Sets the class limit.
    #[must_use]
    pub fn with_max_classes(mut self, max_classes: usize) -> Self {
        self.max_classes = max_classes;
        self
    }

    /// Sets the link rate.
    #[must_use]
    pub fn with_link(mut self, link: Option<RateLimit>) -> Self {
        self.link = link;
        self
    }
}

impl Default for SchedConfig {
    fn default() -> Self {
        Self {
            max_classes: 1024,
            max_depth: 8,
            total_packets: 16_384,
            total_bytes: 32 << 20,
            link: None,
        }
    }
}
