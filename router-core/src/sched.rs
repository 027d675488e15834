//! Link scheduler: a tree of rank-ordered queues (PIFO tree, Sivaraman et al.,
//! SIGCOMM'16) over bounded per-class queues, shaped to a link rate. Sans-IO:
//! every call that depends on time takes `now`.
//!
//! # Model
//!
//! Classes form a tree under [`ClassId::ROOT`]. Packets are queued at leaf
//! classes. Every class holds one PIFO: a leaf's holds its packets, an internal
//! class's holds one *reference* per packet queued beneath it, naming the child the
//! packet came through. Enqueueing a packet of leaf `c` computes one rank per
//! level, leaf first: at the leaf (`node == child == c`) it orders the packet
//! inside the class; at each ancestor `p` it orders the reference to the child on
//! the path among `p`'s other references. Dequeue pops the smallest reference at
//! the root, then the smallest at the child it names, down to a leaf, and sends
//! that leaf's smallest packet. Equal ranks leave in arrival order.
//!
//! Ranks come from one [`Rank`] function for the whole tree: the built-in
//! [`Sfq`] (the default), [`StrictPriority`], [`Fifo`], or a module's (exec-env
//! wraps a wasm `pronto_rank` in a `Rank`). Each class has a weight and a priority
//! that the rank function sees for the child it ranks.
//!
//! Each class also has a *virtual time*, the largest rank dequeued from it in its
//! current *busy period*. A busy period starts when a packet reaches an empty
//! class: its virtual time restarts at 0 and it gets a new busy-period number,
//! unique across the scheduler. Rank functions see both, which is all SFQ needs
//! (`S = max(v, F)`), and can forget their tags of older periods, which keeps ranks
//! far from `u64::MAX` (see [`Sfq`]).
//!
//! # Hot swap
//!
//! [`LinkScheduler::set_rank`] replaces the rank function between two calls.
//! Queued entries keep the ranks they were given, in every PIFO, and are never
//! moved or dropped; packets enqueued afterwards get ranks from the new function,
//! computed against the same virtual times and busy periods. A reference in a
//! parent names a child, not a packet, and a class always sends its own packets
//! in its own leaf order. So a swap changes which class is served next as soon as
//! new references arrive, while the order inside a class changes only if the new
//! function ranks leaves differently: with FIFO leaves (every built-in) arrival
//! order inside a class survives any swap. For example, SFQ to strict priority:
//! the new small ranks go ahead of the queued SFQ references, so the first class
//! by priority is served from its next arrival on, oldest packet first, and the
//! queued SFQ references are served after the new ones. A fresh SFQ starts its
//! tags at each class's current virtual time, so its ranks interleave with the
//! old ones. A failing rank call (module trap, timeout, budget) ranks the packet at
//! the class's virtual time instead and counts a fault; the packet is never
//! dropped for it.
//!
//! # Bounds and drops
//!
//! Every leaf has a packet and a byte limit, the scheduler a shared packet and
//! byte limit and a class limit. The drop policy is **tail drop**: a packet that
//! would exceed its class's limits or the shared ones is refused before any rank
//! is computed (so a refusal leaves no state behind in the rank function), handed
//! back in [`Refused`], and counted by [`QueueDrop`] reason at its class and every
//! ancestor. Queued packets are never pushed out. Storage is preallocated: a slab
//! of `total_packets` slots and heaps sized to the limits beneath each class, so
//! enqueue and dequeue do not allocate in steady state.
//!
//! # Shaping
//!
//! With a link rate ([`SchedConfig::link`], a `resource-mgr` [`RateLimit`] in
//! bytes per second and a burst in bytes), the head packet leaves only when a token
//! bucket holds `min(len, burst)` bytes of credit; it then takes `len` (an oversize
//! packet leaves a debt). [`LinkScheduler::next_ready`] says when to call
//! [`LinkScheduler::dequeue`] again. Shaping never reorders: it holds back the head.
//!
//! # Costs
//!
//! Enqueue and dequeue are `O(depth * log backlog)` heap operations plus one rank
//! call per level (`depth + 1` calls for a packet at depth `depth`).

use std::collections::{BTreeMap, BinaryHeap};

use resource_mgr::{RateLimit, ShareSpec};

use crate::time::Instant;

/// Index of the root in the class arena.
const ROOT: u32 = 0;

/// Fractional bits of the built-in SFQ's tags (resource-mgr's share tree uses 32
/// in `u128`; ranks are `u64`, so 16 here).
pub const SFQ_TAG_SHIFT: u32 = 16;

/// What the scheduler knows of a packet: everything a rank function may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketMeta {
    /// Length in bytes, IP header onward (what the link and limits count).
    pub len: u32,
    /// Its leaf class.
    pub class: ClassId,
    /// Keyed hash of its flow's 5-tuple.
    pub flow_hash: u64,
    /// DSCP (0..=63).
    pub dscp: u8,
    /// IP protocol number.
    pub proto: u8,
}

impl PacketMeta {
    /// A packet of `len` bytes in `class`, flow hash 0, DSCP 0, protocol 0.
    pub fn new(len: u32, class: ClassId) -> Self {
        Self {
            len,
            class,
            flow_hash: 0,
            dscp: 0,
            proto: 0,
        }
    }

    /// Same packet with the flow hash set.
    #[must_use]
    pub fn with_flow(mut self, flow_hash: u64) -> Self {
        self.flow_hash = flow_hash;
        self
    }

    /// Same packet with DSCP (masked to 6 bits) and protocol set.
    #[must_use]
    pub fn with_dscp(mut self, dscp: u8, proto: u8) -> Self {
        self.dscp = dscp & 0x3f;
        self.proto = proto;
        self
    }
}

/// Where in the tree a rank is computed, and that node's scheduling state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RankContext {
    /// The class whose PIFO the rank orders.
    pub node: ClassId,
    /// The child of `node` the packet comes through; `node` itself at the leaf.
    pub child: ClassId,
    /// Weight of `child`.
    pub weight: u32,
    /// Priority of `child`.
    pub priority: u8,
    /// `node`'s virtual time: the largest rank dequeued from it in this busy period.
    pub vtime: u64,
    /// `node`'s busy-period number, unique across the scheduler.
    pub busy_period: u64,
    /// Packets queued under `node` before this one.
    pub queued: u32,
    /// The time of the enqueue.
    pub now: Instant,
}

impl RankContext {
    /// Whether this is the leaf level (ordering packets inside one class).
    pub fn is_leaf(&self) -> bool {
        self.node == self.child
    }
}

/// Why a rank function produced no rank; the scheduler ranks the packet at the
/// node's virtual time instead and counts a fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RankError {
    /// The module trapped.
    #[error("rank function trapped: {message}")]
    Trap {
        /// What the VM reported.
        message: String,
    },
    /// The call ran out of time or CPU budget.
    #[error("rank function exceeded its CPU budget")]
    Timeout,
    /// The module returned an invalid rank (negative in the wasm ABI).
    #[error("rank function returned invalid rank {raw}")]
    BadResult {
        /// The raw value.
        raw: i64,
    },
    /// The module is quarantined or otherwise unavailable.
    #[error("rank function unavailable: {reason}")]
    Unavailable {
        /// Why.
        reason: String,
    },
}

mod config;
mod pifo;
mod rank;
mod stats;
#[cfg(test)]
mod tests;

pub use config::{ClassConfig, ClassId, SchedConfig};
use pifo::{Entry, Node, Shaper, Slot};
pub use rank::{Fifo, FnRank, Rank, Sfq, StrictPriority, sfq_tag_len};
pub use stats::{
    ClassStats, Dequeued, QueueDrop, Refused, SchedCounters, SchedError, SpecClassError,
};

/// The link scheduler: classes, their bounded PIFOs, the rank function and the
/// shaper. Generic over the packet type `P` (the queue manager uses
/// [`crate::queue::OwnedPacket`]); it never looks inside a packet, only at the
/// [`PacketMeta`] given with it.
#[derive(Debug)]
pub struct LinkScheduler<P> {
    config: SchedConfig,
    nodes: Vec<Node>,
    free_nodes: Vec<u32>,
    live_classes: usize,
    slots: Vec<Slot<P>>,
    free_slots: Vec<u32>,
    queued_packets: usize,
    queued_bytes: u64,
    rank: Box<dyn Rank>,
    shaper: Option<Shaper>,
    seq: u64,
    busy_periods: u64,
    counters: SchedCounters,
}

impl<P> LinkScheduler<P> {
    /// A scheduler holding only the root class (a leaf until it gets children),
    /// ranking with the built-in [`Sfq`]; the link bucket starts full at time 0.
    pub fn new(config: SchedConfig) -> Self {
        let rank = Box::new(Sfq::new(config.max_classes));
        Self::with_rank(config, rank)
    }

    /// Same with another rank function.
    pub fn with_rank(mut config: SchedConfig, rank: Box<dyn Rank>) -> Self {
        // Slots and classes are named by `u32` in the PIFOs.
        config.total_packets = config.total_packets.min(u32::MAX as usize);
        config.max_classes = config.max_classes.min(u32::MAX as usize);
        let mut root = Node::vacant(0);
        root.live = true;
        root.config = ClassConfig::default();
        // The root queues packets only while it has no children; its limits are the
        // shared ones then.
        root.config.limit_packets = u32::try_from(config.total_packets).unwrap_or(u32::MAX);
        root.config.limit_bytes = config.total_bytes;
        root.capacity = config.total_packets;
        root.pifo = BinaryHeap::with_capacity(config.total_packets);
        Self {
            config,
            nodes: vec![root],
            free_nodes: Vec::new(),
            live_classes: 1,
            slots: Vec::with_capacity(config.total_packets),
            free_slots: Vec::with_capacity(config.total_packets),
            queued_packets: 0,
            queued_bytes: 0,
            rank,
            shaper: config.link.map(|l| Shaper::new(l, Instant::ZERO)),
            seq: 0,
            busy_periods: 0,
            counters: SchedCounters::default(),
        }
    }

    /// The configuration (with the current link rate).
    pub fn config(&self) -> SchedConfig {
        self.config
    }

    /// Packets queued in all classes.
    pub fn len(&self) -> usize {
        self.queued_packets
    }

    /// No packet is queued.
    pub fn is_empty(&self) -> bool {
        self.queued_packets == 0
    }

    /// Bytes queued in all classes.
    pub fn queued_bytes(&self) -> u64 {
        self.queued_bytes
    }

    /// Live classes, root included.
    pub fn class_count(&self) -> usize {
        self.live_classes
    }

    /// Scheduler counters.
    pub fn counters(&self) -> SchedCounters {
        self.counters
    }

    /// Name of the rank function in use.
    pub fn rank_name(&self) -> &str {
        self.rank.name()
    }

    fn id(&self, index: u32) -> ClassId {
        ClassId {
            index,
            generation: self.nodes[index as usize].generation,
        }
    }

    fn resolve(&self, class: ClassId) -> Result<u32, SchedError> {
        match self.nodes.get(class.index as usize) {
            Some(n) if n.live && n.generation == class.generation => Ok(class.index),
            _ => Err(SchedError::UnknownClass { class }),
        }
    }

    /// Adds a child of `parent`. A leaf parent must be empty; it becomes an
    /// internal class and stops queueing packets itself.
    pub fn add_class(
        &mut self,
        parent: ClassId,
        config: ClassConfig,
    ) -> Result<ClassId, SchedError> {
        let config = config.validate()?;
        let p = self.resolve(parent)?;
        let pnode = &self.nodes[p as usize];
        if pnode.depth >= self.config.max_depth {
            return Err(SchedError::TooDeep {
                parent,
                limit: self.config.max_depth,
            });
        }
        if self.live_classes >= self.config.max_classes {
            return Err(SchedError::TooManyClasses {
                limit: self.config.max_classes,
            });
        }
        if pnode.is_leaf() && pnode.stats.backlog > 0 {
            return Err(SchedError::HasBacklog {
                class: parent,
                backlog: pnode.stats.backlog,
            });
        }
        let depth = pnode.depth + 1;
        let index = match self.free_nodes.pop() {
            Some(i) => i,
            None => {
                let i =
                    u32::try_from(self.nodes.len()).map_err(|_| SchedError::TooManyClasses {
                        limit: self.config.max_classes,
                    })?;
                self.nodes.push(Node::vacant(0));
                i
            }
        };
        let capacity = (config.limit_packets as usize).min(self.config.total_packets);
        let generation = self.nodes[index as usize].generation;
        let mut node = Node::vacant(generation);
        node.live = true;
        node.parent = Some(p);
        node.depth = depth;
        node.config = config;
        node.capacity = capacity;
        node.pifo = BinaryHeap::with_capacity(capacity);
        self.nodes[index as usize] = node;
        self.live_classes += 1;

        // A leaf parent stops queueing packets: from now on its PIFO holds
        // references, as many as its children's packets.
        self.nodes[p as usize].children.push(index);
        self.recompute_capacity(p);
        let id = self.id(index);
        tracing::debug!(class = %id, parent = %parent, weight = config.weight,
            priority = config.priority, "scheduler class added");
        Ok(id)
    }

    /// Sizes the PIFOs of `from` and its ancestors to the packets their leaves may
    /// hold (control path: may allocate).
    fn recompute_capacity(&mut self, from: u32) {
        let mut at = Some(from);
        while let Some(i) = at {
            let node = &self.nodes[i as usize];
            let want = if node.is_leaf() {
                node.config.limit_packets as usize
            } else {
                node.children
                    .iter()
                    .map(|&c| self.nodes[c as usize].capacity)
                    .fold(0_usize, usize::saturating_add)
            }
            .min(self.config.total_packets);
            let node = &mut self.nodes[i as usize];
            node.capacity = want;
            if node.pifo.capacity() < want {
                let more = want - node.pifo.len();
                node.pifo.reserve_exact(more);
            }
            at = node.parent;
        }
    }

    /// Removes an empty leaf class. Its parent becomes a leaf again if it was the
    /// last child.
    pub fn remove_class(&mut self, class: ClassId) -> Result<(), SchedError> {
        let i = self.resolve(class)?;
        let node = &self.nodes[i as usize];
        let Some(parent) = node.parent else {
            return Err(SchedError::RootNotRemovable);
        };
        if !node.is_leaf() {
            return Err(SchedError::HasChildren { class });
        }
        if node.stats.backlog > 0 {
            return Err(SchedError::HasBacklog {
                class,
                backlog: node.stats.backlog,
            });
        }
        let generation = node.generation.wrapping_add(1);
        self.nodes[i as usize] = Node::vacant(generation);
        self.free_nodes.push(i);
        self.live_classes -= 1;
        self.nodes[parent as usize].children.retain(|&c| c != i);
        self.recompute_capacity(parent);
        tracing::debug!(class = %class, "scheduler class removed");
        Ok(())
    }

    /// Changes a class's weight, priority and limits; they apply to packets
    /// enqueued from now on (lowering a limit below the backlog drops nothing).
    pub fn set_class(&mut self, class: ClassId, config: ClassConfig) -> Result<(), SchedError> {
        let config = config.validate()?;
        let i = self.resolve(class)?;
        self.nodes[i as usize].config = config;
        self.recompute_capacity(i);
        Ok(())
    }

    /// A class's configuration.
    pub fn class_config(&self, class: ClassId) -> Result<ClassConfig, SchedError> {
        Ok(self.nodes[self.resolve(class)? as usize].config)
    }

    /// A class's counters (its subtree's, for an internal class).
    pub fn stats(&self, class: ClassId) -> Result<ClassStats, SchedError> {
        Ok(self.nodes[self.resolve(class)? as usize].stats)
    }

    /// A class's children, in the order they were added.
    pub fn children(&self, class: ClassId) -> Result<Vec<ClassId>, SchedError> {
        let i = self.resolve(class)?;
        Ok(self.nodes[i as usize]
            .children
            .iter()
            .map(|&c| self.id(c))
            .collect())
    }

    /// A class's parent (`None` for the root).
    pub fn parent(&self, class: ClassId) -> Result<Option<ClassId>, SchedError> {
        let i = self.resolve(class)?;
        Ok(self.nodes[i as usize].parent.map(|p| self.id(p)))
    }

    /// Builds resource-mgr's share-tree model `spec` under `parent`: one class
    /// per spec class with its weight and the default priority and limits.
    /// Guaranteed rates and ceilings have no counterpart here (classes share
    /// by rank; shape the whole link with [`SchedConfig::link`]). Returns the
    /// class of each spec id. On an error the classes added so far stay.
    pub fn add_spec<K>(
        &mut self,
        parent: ClassId,
        spec: &ShareSpec<K>,
    ) -> Result<BTreeMap<u16, ClassId>, SpecClassError> {
        let mut classes = BTreeMap::new();
        for c in spec.classes() {
            let under = match c.parent {
                Some(p) => classes.get(&p).copied().unwrap_or(parent),
                None => parent,
            };
            let class = self
                .add_class(under, ClassConfig::new(c.weight))
                .map_err(|source| SpecClassError { id: c.id, source })?;
            classes.insert(c.id, class);
        }
        Ok(classes)
    }

    /// Installs a new rank function and returns the old one. Queued packets keep
    /// their ranks; see the module docs for what that means for their order.
    pub fn set_rank(&mut self, rank: Box<dyn Rank>) -> Box<dyn Rank> {
        let old = std::mem::replace(&mut self.rank, rank);
        self.counters.rank_swaps = self.counters.rank_swaps.saturating_add(1);
        tracing::info!(
            old = old.name(),
            new = self.rank.name(),
            queued = self.queued_packets,
            "scheduler rank function swapped"
        );
        old
    }

    /// Sets or clears the link rate; a new bucket starts full at `now`.
    pub fn set_link(&mut self, link: Option<RateLimit>, now: Instant) {
        self.config.link = link;
        self.shaper = link.map(|l| Shaper::new(l, now));
    }

    /// Counts a packet refused before it reached a class (the queue manager's
    /// classifier), at the root and in the scheduler counters.
    pub(crate) fn count_refusal(&mut self, reason: QueueDrop, len: u32) {
        self.counters.dropped[reason as usize] =
            self.counters.dropped[reason as usize].saturating_add(1);
        let root = &mut self.nodes[ROOT as usize].stats;
        root.dropped[reason as usize] = root.dropped[reason as usize].saturating_add(1);
        root.dropped_bytes = root.dropped_bytes.saturating_add(u64::from(len));
    }

    fn refuse(&mut self, at: Option<u32>, reason: QueueDrop, len: u32, packet: P) -> Refused<P> {
        self.counters.dropped[reason as usize] =
            self.counters.dropped[reason as usize].saturating_add(1);
        let mut cur = at;
        while let Some(i) = cur {
            let node = &mut self.nodes[i as usize];
            let s = &mut node.stats;
            s.dropped[reason as usize] = s.dropped[reason as usize].saturating_add(1);
            s.dropped_bytes = s.dropped_bytes.saturating_add(u64::from(len));
            cur = node.parent;
        }
        Refused { packet, reason }
    }

    /// Queues `packet` at its leaf class `meta.class`, or refuses it (tail drop)
    /// and hands it back. Ranks are computed only for accepted packets.
    pub fn enqueue(
        &mut self,
        meta: &PacketMeta,
        packet: P,
        now: Instant,
    ) -> Result<(), Refused<P>> {
        let Ok(leaf) = self.resolve(meta.class) else {
            return Err(self.refuse(None, QueueDrop::UnknownClass, meta.len, packet));
        };
        let len = u64::from(meta.len);
        if let Some(reason) = self.admission(leaf, len) {
            return Err(self.refuse(Some(leaf), reason, meta.len, packet));
        }
        let slot = self.take_slot(leaf, now);
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;

        let mut node = leaf;
        let mut child = leaf;
        let mut leaf_rank = 0;
        loop {
            let (ctx, parent) = self.rank_context(node, child, now);
            let rank = self.rank_at(meta, &ctx);
            let target = if node == leaf {
                leaf_rank = rank;
                slot
            } else {
                child
            };
            let n = &mut self.nodes[node as usize];
            n.pifo.push(Entry { rank, seq, target });
            let s = &mut n.stats;
            s.enqueued = s.enqueued.saturating_add(1);
            s.enqueued_bytes = s.enqueued_bytes.saturating_add(len);
            s.backlog += 1;
            s.backlog_bytes = s.backlog_bytes.saturating_add(len);
            match parent {
                Some(p) => {
                    child = node;
                    node = p;
                }
                None => break,
            }
        }
        self.slots[slot as usize] = Slot {
            packet: Some(packet),
            len: meta.len,
            leaf,
            rank: leaf_rank,
            since: now,
        };
        self.queued_packets += 1;
        self.queued_bytes = self.queued_bytes.saturating_add(len);
        self.counters.enqueued = self.counters.enqueued.saturating_add(1);
        Ok(())
    }

    /// Why a packet of `len` bytes for class `leaf` would be refused, checked
    /// in order: not a leaf, the class's limits, the shared buffer's limits.
    #[inline]
    fn admission(&self, leaf: u32, len: u64) -> Option<QueueDrop> {
        let node = &self.nodes[leaf as usize];
        if !node.is_leaf() {
            Some(QueueDrop::NotALeaf)
        } else if node.stats.backlog >= node.config.limit_packets {
            Some(QueueDrop::ClassPackets)
        } else if node.stats.backlog_bytes.saturating_add(len) > node.config.limit_bytes {
            Some(QueueDrop::ClassBytes)
        } else if self.queued_packets >= self.config.total_packets {
            Some(QueueDrop::BufferPackets)
        } else if self.queued_bytes.saturating_add(len) > self.config.total_bytes {
            Some(QueueDrop::BufferBytes)
        } else {
            None
        }
    }

    /// A free slab slot; the slab grows only below `total_packets` (checked by
    /// `admission`), so it has room.
    #[inline]
    fn take_slot(&mut self, leaf: u32, now: Instant) -> u32 {
        match self.free_slots.pop() {
            Some(s) => s,
            None => {
                let s = self.slots.len() as u32;
                self.slots.push(Slot {
                    packet: None,
                    len: 0,
                    leaf,
                    rank: 0,
                    since: now,
                });
                s
            }
        }
    }

    /// What the rank function sees when `child`'s packet enters `node`'s PIFO
    /// (starting a busy period if `node` was idle), and `node`'s parent.
    #[inline]
    fn rank_context(&mut self, node: u32, child: u32, now: Instant) -> (RankContext, Option<u32>) {
        let n = &mut self.nodes[node as usize];
        if n.stats.backlog == 0 {
            // A busy period starts: virtual time restarts under a new number.
            self.busy_periods = self.busy_periods.wrapping_add(1);
            n.busy_period = self.busy_periods;
            n.vtime = 0;
        }
        let c = &self.nodes[child as usize].config;
        let n = &self.nodes[node as usize];
        let ctx = RankContext {
            node: ClassId {
                index: node,
                generation: n.generation,
            },
            child: ClassId {
                index: child,
                generation: self.nodes[child as usize].generation,
            },
            weight: c.weight,
            priority: c.priority,
            vtime: n.vtime,
            busy_period: n.busy_period,
            queued: n.stats.backlog,
            now,
        };
        (ctx, n.parent)
    }

    /// The rank function's answer, counted; a fault ranks at virtual time.
    #[inline]
    fn rank_at(&mut self, meta: &PacketMeta, ctx: &RankContext) -> u64 {
        self.counters.rank_calls = self.counters.rank_calls.saturating_add(1);
        let rank = match self.rank.rank(meta, ctx) {
            Ok(r) => r,
            Err(error) => {
                self.counters.rank_faults = self.counters.rank_faults.saturating_add(1);
                tracing::debug!(rank = self.rank.name(), node = %ctx.node, %error,
                    "rank call failed; ranked at virtual time");
                ctx.vtime
            }
        };
        if rank == u64::MAX {
            self.counters.rank_saturated = self.counters.rank_saturated.saturating_add(1);
        }
        rank
    }

    /// The slab slot of the packet `dequeue` would send next, regardless of shaping.
    fn head(&self) -> Option<u32> {
        let mut node = ROOT;
        loop {
            let top = self.nodes[node as usize].pifo.peek()?;
            if self.nodes[node as usize].is_leaf() {
                return Some(top.target);
            }
            node = top.target;
        }
    }

    /// Length and class of the packet `dequeue` would send next.
    pub fn peek(&self) -> Option<(ClassId, u32)> {
        let slot = &self.slots[self.head()? as usize];
        Some((self.id(slot.leaf), slot.len))
    }

    /// When to call [`dequeue`](Self::dequeue) next: `Some(now)` if a packet may
    /// leave now, `Some(t)` if the shaper holds the head back until `t` (with no
    /// other call meanwhile), `None` if nothing is queued.
    pub fn next_ready(&self, now: Instant) -> Option<Instant> {
        let slot = self.head()?;
        Some(match &self.shaper {
            Some(shaper) => shaper.ready_at(now, self.slots[slot as usize].len),
            None => now,
        })
    }

    /// Sends the next packet by rank, if the shaper lets it go at `now`.
    pub fn dequeue(&mut self, now: Instant) -> Option<Dequeued<P>> {
        let head = self.head()?;
        let len = self.slots[head as usize].len;
        if let Some(shaper) = &self.shaper
            && shaper.ready_at(now, len) > now
        {
            self.counters.shaped = self.counters.shaped.saturating_add(1);
            return None;
        }
        let slot = &mut self.slots[head as usize];
        let packet = slot.packet.take()?;
        let (leaf, rank, since) = (slot.leaf, slot.rank, slot.since);
        let delay = now.saturating_since(since);
        let delay_ns = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        let bytes = u64::from(len);

        let mut node = ROOT;
        loop {
            let n = &mut self.nodes[node as usize];
            // `head` followed the tops, so these pops are exactly its path.
            let Some(top) = n.pifo.pop() else {
                break;
            };
            n.vtime = n.vtime.max(top.rank);
            let s = &mut n.stats;
            s.dequeued = s.dequeued.saturating_add(1);
            s.dequeued_bytes = s.dequeued_bytes.saturating_add(bytes);
            s.backlog = s.backlog.saturating_sub(1);
            s.backlog_bytes = s.backlog_bytes.saturating_sub(bytes);
            s.delay_total_ns = s.delay_total_ns.saturating_add(delay_ns);
            s.delay_max_ns = s.delay_max_ns.max(delay_ns);
            if n.is_leaf() {
                break;
            }
            node = top.target;
        }
        self.free_slots.push(head);
        self.queued_packets -= 1;
        self.queued_bytes = self.queued_bytes.saturating_sub(bytes);
        self.counters.dequeued = self.counters.dequeued.saturating_add(1);
        if let Some(shaper) = &mut self.shaper {
            shaper.charge(now, len);
        }
        Some(Dequeued {
            packet,
            class: self.id(leaf),
            len,
            rank,
            delay,
        })
    }
}
