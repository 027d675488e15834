//! The scheduler's storage: PIFO entries, class nodes, packet slots and the
//! link's token bucket.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use resource_mgr::RateLimit;

use super::{ClassConfig, ClassStats};
use crate::time::Instant;

/// One element of a PIFO, ordered by `(rank, seq)`: `seq` is the arrival number
/// (unique), so equal ranks leave in arrival order. The order is reversed, so the
/// max-heap `BinaryHeap` pops the smallest.
#[derive(Debug, Clone, Copy)]
pub(super) struct Entry {
    pub(super) rank: u64,
    pub(super) seq: u64,
    /// A child class index (internal class) or a slab slot (leaf).
    pub(super) target: u32,
}

impl Entry {
    /// `(rank, seq)` as one integer: a single comparison per heap step.
    pub(super) fn key(&self) -> u128 {
        (u128::from(self.rank) << 64) | u128::from(self.seq)
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        other.key().cmp(&self.key())
    }
}

#[derive(Debug)]
pub(super) struct Node {
    pub(super) live: bool,
    pub(super) generation: u32,
    pub(super) parent: Option<u32>,
    pub(super) depth: u8,
    pub(super) config: ClassConfig,
    pub(super) children: Vec<u32>,
    /// Sum of the packet limits of the leaves below (the leaf's own for a leaf),
    /// capped at the shared limit: the most entries `pifo` can hold.
    pub(super) capacity: usize,
    pub(super) pifo: BinaryHeap<Entry>,
    pub(super) vtime: u64,
    pub(super) busy_period: u64,
    pub(super) stats: ClassStats,
}

impl Node {
    pub(super) fn vacant(generation: u32) -> Self {
        Self {
            live: false,
            generation,
            parent: None,
            depth: 0,
            config: ClassConfig::default(),
            children: Vec::new(),
            capacity: 0,
            pifo: BinaryHeap::new(),
            vtime: 0,
            busy_period: 0,
            stats: ClassStats::default(),
        }
    }

    pub(super) fn is_leaf(&self) -> bool {
        self.children.is_empty()
    }
}

/// A queued packet in the slab.
#[derive(Debug)]
pub(super) struct Slot<P> {
    pub(super) packet: Option<P>,
    pub(super) len: u32,
    pub(super) leaf: u32,
    pub(super) rank: u64,
    pub(super) since: Instant,
}

/// Token bucket of the link in exact integer arithmetic (bytes times 10^9), as
/// resource-mgr's buckets: refilling `rate` bytes/s over `dt` ns adds `rate * dt`.
#[derive(Debug, Clone)]
pub(super) struct Shaper {
    pub(super) limit: RateLimit,
    pub(super) tokens: i128,
    pub(super) last: Instant,
}

pub(super) const NANOS: i128 = 1_000_000_000;

impl Shaper {
    /// A full bucket as of `now`.
    pub(super) fn new(limit: RateLimit, now: Instant) -> Self {
        Self {
            limit,
            tokens: i128::from(limit.burst) * NANOS,
            last: now,
        }
    }

    pub(super) fn tokens_at(&self, now: Instant) -> i128 {
        let dt = now.as_nanos().saturating_sub(self.last.as_nanos());
        self.tokens
            .saturating_add(i128::from(self.limit.rate).saturating_mul(i128::from(dt)))
            .min(i128::from(self.limit.burst) * NANOS)
    }

    /// Earliest time >= `now` at which `len` bytes may go.
    pub(super) fn ready_at(&self, now: Instant, len: u32) -> Instant {
        let need = i128::from(u64::from(len).min(self.limit.burst)) * NANOS;
        let deficit = need - self.tokens_at(now);
        if deficit <= 0 {
            return now;
        }
        let rate = i128::from(self.limit.rate.max(1));
        let wait = u64::try_from((deficit + rate - 1) / rate).unwrap_or(u64::MAX);
        Instant::from_nanos(self.last.max(now).as_nanos().saturating_add(wait))
    }

    pub(super) fn charge(&mut self, now: Instant, len: u32) {
        self.tokens = self.tokens_at(now).saturating_sub(i128::from(len) * NANOS);
        self.last = self.last.max(now);
    }
}
