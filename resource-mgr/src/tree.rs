//! Hierarchical start-time fair queuing over a tree of weighted nodes.
//!
//! # Algorithm
//!
//! Start-time fair queuing (Goyal, Vin, Cheng, SIGCOMM'96), applied at every internal
//! node as in their hierarchical scheduler (H-SFQ). Each internal node `p` keeps a
//! virtual time `v(p)`; each child `c` that has work underneath it (is *backlogged*)
//! carries a start tag `S(c)`:
//!
//! * when `c` becomes backlogged, `S(c) = max(v(p), F(c))` where `F(c)` is the finish
//!   tag of the last unit `c` was served (0 at first);
//! * the child with the smallest start tag is served (ties: the one that became
//!   eligible first), recursively down to a leaf, whose head item is the unit;
//! * once the unit's cost `len` is known, `F(c) = S(c) + len / weight(c)`,
//!   `v(p) = S(c)` (never moving backwards), and if `c` is still backlogged
//!   `S(c) = F(c)`;
//! * when `p` has no backlogged child left its busy period ends and `v(p)` becomes the
//!   largest finish tag it has handed out.
//!
//! Because the tag of a returning child is `max(v, F_prev)`, a child that was idle gets
//! no saved-up credit: at most one item ahead of the others. Because the unit's length
//! is only needed after selection, an internal node's "unit" is simply whichever item
//! its subtree yields, which is what makes the hierarchy work.
//!
//! # Rate limits
//!
//! A node may have a token bucket ([`RateLimit`]). An item may leave only if every
//! bucket on its path from leaf to root holds at least `min(cost, burst)` tokens; it
//! then takes `cost` tokens from each. Selection skips (without changing their tags)
//! children whose subtree has nothing allowed to leave and serves the next smallest
//! start tag: the scheduler stays work conserving among the nodes that may send.
//! Over any window of `d` ns a rate-limited node serves at most
//! `burst + rate * d / 1e9` units when no item is larger than its burst; an item larger
//! than the burst waits for a full bucket and leaves a debt that later items repay.
//! [`ShareTree::next_ready`] says when a tree whose backlog is all held back by
//! buckets can send again.
//!
//! # Virtual-time bound
//!
//! Tags are `u128` fixed point with 32 fractional bits: a unit of cost `len` at weight
//! `w` advances a tag by `len * 2^32 / w`. A node's virtual time never exceeds
//! `2^32` times the total cost served beneath it (weights are at least 1), so it
//! cannot overflow before `2^96` units of cost have passed through one node: at
//! 10^12 bytes/s that is about 2.5 * 10^9 years. Arithmetic saturates regardless.
//! The truncation of `len * 2^32 / w` loses less than `2^-32` units per item.
//!
//! # Costs
//!
//! Queue operations are allocation-free in steady state: leaf queues are sized to the
//! configured limit when the leaf is created and each internal node keeps its
//! backlogged children in a vector sorted by start tag, sized to its child count when
//! children are added. Enqueue and dequeue cost `O(depth * fanout)` in the worst case
//! (a shift inside the sorted vector), usually much less; when buckets hold back many
//! leaves, selection visits each held-back backlogged leaf once.

use std::collections::VecDeque;
use std::fmt;

use crate::bucket::{RateLimit, TokenBucket};
use crate::error::{Rejected, ShareError};

/// Fractional bits of virtual-time tags.
const TAG_SHIFT: u32 = 32;

/// Index of the root in the node arena.
const ROOT: u32 = 0;

/// Names one node of a [`ShareTree`]; a removed node's id never names a later node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    index: u32,
    generation: u32,
}

impl NodeId {
    /// Position in the tree's arena; stable for the node's lifetime, reused after removal.
    pub fn index(self) -> u32 {
        self.index
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}.{}", self.index, self.generation)
    }
}

/// Bounds of a [`ShareTree`]: every table and queue is bounded by configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct TreeConfig {
    /// Most items one leaf may queue; its queue is allocated to this size up front.
    pub leaf_queue_limit: usize,
    /// Most items the whole tree may queue.
    pub total_item_limit: usize,
    /// Most nodes, root included.
    pub max_nodes: usize,
    /// Deepest level a node may sit at (the root is level 0).
    pub max_depth: u8,
}

impl TreeConfig {
    /// Limits on items; node limits keep their defaults.
    pub fn new(leaf_queue_limit: usize, total_item_limit: usize) -> Self {
        Self {
            leaf_queue_limit,
            total_item_limit,
            ..Self::default()
        }
    }

    /// Sets the node limit.
    #[must_use]
    pub fn with_max_nodes(mut self, max_nodes: usize) -> Self {
        self.max_nodes = max_nodes;
        self
    }

    /// Sets the depth limit.
    #[must_use]
    pub fn with_max_depth(mut self, max_depth: u8) -> Self {
        self.max_depth = max_depth;
        self
    }
}

impl Default for TreeConfig {
    fn default() -> Self {
        Self {
            leaf_queue_limit: 1024,
            total_item_limit: 65_536,
            max_nodes: 4096,
            max_depth: 8,
        }
    }
}

/// Counters of one node; an internal node's counters sum its whole subtree.
///
/// For every node, `enqueued = dequeued + backlog + returned` at all times.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeStats {
    /// Items accepted into the subtree.
    pub enqueued: u64,
    /// Items served out of the subtree.
    pub dequeued: u64,
    /// Sum of the costs of the items served.
    pub cost_served: u64,
    /// Items refused at the subtree's leaves (queue or tree full, or not a leaf).
    pub drops: u64,
    /// Items handed back to the caller by [`ShareTree::remove_node`] of a descendant.
    pub returned: u64,
    /// Items queued in the subtree now.
    pub backlog: u64,
    /// Sum of the costs of the items queued now.
    pub backlog_cost: u64,
}

/// An item leaving the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dequeued<T> {
    /// The item as it was queued.
    pub item: T,
    /// Its cost as given to [`ShareTree::enqueue`].
    pub cost: u64,
    /// The leaf it was queued at.
    pub leaf: NodeId,
}

/// The item [`ShareTree::dequeue`] would return at the same time, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peeked<'a, T> {
    /// The item.
    pub item: &'a T,
    /// Its cost.
    pub cost: u64,
    /// The leaf it is queued at.
    pub leaf: NodeId,
}

#[derive(Debug)]
struct Item<T> {
    item: T,
    cost: u64,
}

/// A backlogged child in its parent's schedule, ordered by `(start, seq)`.
#[derive(Debug, Clone, Copy)]
struct Entry {
    start: u128,
    seq: u64,
    child: u32,
}

impl Entry {
    fn key(&self) -> (u128, u64) {
        (self.start, self.seq)
    }
}

#[derive(Debug)]
struct Node<T> {
    live: bool,
    generation: u32,
    parent: Option<u32>,
    depth: u8,
    weight: u32,
    bucket: Option<TokenBucket>,
    /// Some bucket sits on the path from this node to the root.
    path_limited: bool,
    // This node as a child of its parent.
    /// In the parent's `ready` list.
    active: bool,
    start: u128,
    finish: u128,
    seq: u64,
    // This node as a parent.
    vtime: u128,
    max_finish: u128,
    children: Vec<u32>,
    /// Backlogged children sorted by `(start, seq)`.
    ready: Vec<Entry>,
    // This node as a leaf.
    queue: VecDeque<Item<T>>,
    stats: NodeStats,
}

impl<T> Node<T> {
    fn vacant(generation: u32) -> Self {
        Self {
            live: false,
            generation,
            parent: None,
            depth: 0,
            weight: 1,
            bucket: None,
            path_limited: false,
            active: false,
            start: 0,
            finish: 0,
            seq: 0,
            vtime: 0,
            max_finish: 0,
            children: Vec::new(),
            ready: Vec::new(),
            queue: VecDeque::new(),
            stats: NodeStats::default(),
        }
    }

    fn is_leaf(&self) -> bool {
        self.children.is_empty()
    }

    fn has_backlog(&self) -> bool {
        !self.queue.is_empty() || !self.ready.is_empty()
    }
}

/// Outcome of looking for the next item under a node.
#[derive(Debug, Clone, Copy)]
enum Probe {
    /// This leaf's head item may leave now.
    Ready(u32),
    /// Items are queued but buckets hold them back until this time.
    Wait(u64),
    /// Nothing is queued.
    Idle,
}

/// Advance of a tag for a unit of `cost` at `weight`.
fn tag_len(cost: u64, weight: u32) -> u128 {
    let weight = u64::from(weight.max(1));
    if cost >> (64 - TAG_SHIFT) == 0 {
        // Packet and per-call costs fit: a 64-bit division is several times cheaper.
        u128::from((cost << TAG_SHIFT) / weight)
    } else {
        (u128::from(cost) << TAG_SHIFT) / u128::from(weight)
    }
}

/// A weighted share tree scheduling items of type `T` by hierarchical start-time fair
/// queuing, with optional token-bucket rate limits per node. Sans-IO: every call that
/// depends on time takes `now` in nanoseconds from any fixed origin.
///
/// A node without children is a leaf and queues items; a node with children shares
/// its resource among them by weight. The root exists from the start.
#[derive(Debug)]
pub struct ShareTree<T> {
    config: TreeConfig,
    nodes: Vec<Node<T>>,
    free: Vec<u32>,
    live_nodes: usize,
    items: usize,
    seq: u64,
    misdirected: u64,
}

impl<T> ShareTree<T> {
    /// A tree holding only its root (a leaf until it gets children).
    pub fn new(config: TreeConfig) -> Self {
        let mut root = Node::vacant(0);
        root.live = true;
        root.queue = VecDeque::with_capacity(config.leaf_queue_limit);
        Self {
            config,
            nodes: vec![root],
            free: Vec::new(),
            live_nodes: 1,
            items: 0,
            seq: 0,
            misdirected: 0,
        }
    }

    /// The configured bounds.
    pub fn config(&self) -> TreeConfig {
        self.config
    }

    /// The root node.
    pub fn root(&self) -> NodeId {
        self.id(ROOT)
    }

    /// Items queued in the whole tree.
    pub fn len(&self) -> usize {
        self.items
    }

    /// No item is queued anywhere.
    pub fn is_empty(&self) -> bool {
        self.items == 0
    }

    /// Live nodes, root included.
    pub fn node_count(&self) -> usize {
        self.live_nodes
    }

    /// Items refused because their leaf id named no live node.
    pub fn misdirected(&self) -> u64 {
        self.misdirected
    }

    fn id(&self, index: u32) -> NodeId {
        NodeId {
            index,
            generation: self.nodes[index as usize].generation,
        }
    }

    fn resolve(&self, node: NodeId) -> Result<u32, ShareError> {
        match self.nodes.get(node.index as usize) {
            Some(n) if n.live && n.generation == node.generation => Ok(node.index),
            _ => Err(ShareError::UnknownNode { node }),
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Adds a child of `parent` with a relative `weight` (at least 1) and an optional
    /// rate limit. A leaf parent must be empty; it becomes an internal node.
    pub fn add_node(
        &mut self,
        parent: NodeId,
        weight: u32,
        rate_limit: Option<RateLimit>,
    ) -> Result<NodeId, ShareError> {
        if weight == 0 {
            return Err(ShareError::InvalidWeight { weight });
        }
        let rate_limit = rate_limit.map(RateLimit::validate).transpose()?;
        let p = self.resolve(parent)?;
        let pnode = &self.nodes[p as usize];
        if pnode.depth >= self.config.max_depth {
            return Err(ShareError::TooDeep {
                parent,
                limit: self.config.max_depth,
            });
        }
        if self.live_nodes >= self.config.max_nodes {
            return Err(ShareError::TooManyNodes {
                limit: self.config.max_nodes,
            });
        }
        if !pnode.queue.is_empty() {
            return Err(ShareError::ParentHasBacklog {
                parent,
                backlog: pnode.queue.len() as u64,
            });
        }
        let depth = pnode.depth + 1;
        let path_limited = pnode.path_limited || rate_limit.is_some();

        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                let i = u32::try_from(self.nodes.len()).map_err(|_| ShareError::TooManyNodes {
                    limit: self.config.max_nodes,
                })?;
                self.nodes.push(Node::vacant(0));
                i
            }
        };
        let generation = self.nodes[index as usize].generation;
        let mut node = Node::vacant(generation);
        node.live = true;
        node.parent = Some(p);
        node.depth = depth;
        node.weight = weight;
        node.bucket = rate_limit.map(|l| TokenBucket::new(l, 0));
        node.path_limited = path_limited;
        node.queue = VecDeque::with_capacity(self.config.leaf_queue_limit);
        self.nodes[index as usize] = node;
        self.live_nodes += 1;

        let pnode = &mut self.nodes[p as usize];
        if pnode.children.is_empty() {
            // It becomes an internal node: its leaf queue is no longer needed.
            pnode.queue = VecDeque::new();
        }
        pnode.children.push(index);
        // Every child can be backlogged at once; size the schedule for that now.
        let want = pnode.children.len();
        pnode
            .ready
            .reserve_exact(want.saturating_sub(pnode.ready.len()));
        Ok(self.id(index))
    }

    /// Removes `node` and its whole subtree, handing back every item queued in it
    /// (leaf by leaf, each in queue order). Ancestors count them as `returned`.
    pub fn remove_node(&mut self, node: NodeId) -> Result<Vec<T>, ShareError> {
        let target = self.resolve(node)?;
        let Some(parent) = self.nodes[target as usize].parent else {
            return Err(ShareError::RootNotRemovable);
        };

        let mut subtree = vec![target];
        let mut at = 0;
        while at < subtree.len() {
            let i = subtree[at] as usize;
            subtree.extend_from_slice(&self.nodes[i].children);
            at += 1;
        }
        let mut out = Vec::with_capacity(self.nodes[target as usize].stats.backlog as usize);
        let mut cost = 0u64;
        for &i in &subtree {
            for it in self.nodes[i as usize].queue.drain(..) {
                cost = cost.saturating_add(it.cost);
                out.push(it.item);
            }
        }
        let count = out.len() as u64;
        self.items -= out.len();

        // Take the subtree out of its parent's schedule, then let ancestors that are
        // left without backlog leave theirs.
        let mut child = target;
        let mut leaving = self.nodes[target as usize].active;
        let mut at = Some(parent);
        while let Some(a) = at {
            let (c_start, c_seq) = {
                let c = &self.nodes[child as usize];
                (c.start, c.seq)
            };
            let anode = &mut self.nodes[a as usize];
            anode.stats.backlog = anode.stats.backlog.saturating_sub(count);
            anode.stats.backlog_cost = anode.stats.backlog_cost.saturating_sub(cost);
            anode.stats.returned = anode.stats.returned.saturating_add(count);
            if leaving {
                remove_entry(&mut anode.ready, c_start, c_seq, child);
                if anode.ready.is_empty() && anode.queue.is_empty() {
                    anode.vtime = anode.vtime.max(anode.max_finish);
                    leaving = anode.active;
                    anode.active = false;
                } else {
                    leaving = false;
                }
            }
            child = a;
            at = anode.parent;
        }

        let pnode = &mut self.nodes[parent as usize];
        pnode.children.retain(|&c| c != target);
        if pnode.children.is_empty() {
            // Back to being a leaf: give it its queue again (control path, may allocate).
            pnode.queue = VecDeque::with_capacity(self.config.leaf_queue_limit);
            pnode.ready = Vec::new();
        }

        for &i in &subtree {
            let generation = self.nodes[i as usize].generation.wrapping_add(1);
            self.nodes[i as usize] = Node::vacant(generation);
            self.free.push(i);
        }
        self.live_nodes -= subtree.len();
        Ok(out)
    }

    /// Changes a node's weight; it applies to units served from now on.
    pub fn set_weight(&mut self, node: NodeId, weight: u32) -> Result<(), ShareError> {
        if weight == 0 {
            return Err(ShareError::InvalidWeight { weight });
        }
        let i = self.resolve(node)?;
        self.nodes[i as usize].weight = weight;
        Ok(())
    }

    /// A node's weight.
    pub fn weight(&self, node: NodeId) -> Result<u32, ShareError> {
        Ok(self.nodes[self.resolve(node)? as usize].weight)
    }

    /// Sets or clears a node's rate limit (the root's too); a new bucket starts full.
    pub fn set_rate_limit(
        &mut self,
        node: NodeId,
        rate_limit: Option<RateLimit>,
        now: u64,
    ) -> Result<(), ShareError> {
        let rate_limit = rate_limit.map(RateLimit::validate).transpose()?;
        let i = self.resolve(node)?;
        self.nodes[i as usize].bucket = rate_limit.map(|l| TokenBucket::new(l, now));
        // Recompute the path flag for the subtree.
        let mut stack = vec![i];
        while let Some(n) = stack.pop() {
            let above = self.nodes[n as usize]
                .parent
                .is_some_and(|p| self.nodes[p as usize].path_limited);
            let node = &mut self.nodes[n as usize];
            node.path_limited = above || node.bucket.is_some();
            stack.extend_from_slice(&node.children);
        }
        Ok(())
    }

    /// A node's rate limit, if any.
    pub fn rate_limit(&self, node: NodeId) -> Result<Option<RateLimit>, ShareError> {
        let i = self.resolve(node)?;
        Ok(self.nodes[i as usize]
            .bucket
            .as_ref()
            .map(TokenBucket::limit))
    }

    /// A node's parent (`None` for the root).
    pub fn parent(&self, node: NodeId) -> Result<Option<NodeId>, ShareError> {
        let i = self.resolve(node)?;
        Ok(self.nodes[i as usize].parent.map(|p| self.id(p)))
    }

    /// A node's children, in the order they were added.
    pub fn children(&self, node: NodeId) -> Result<Vec<NodeId>, ShareError> {
        let i = self.resolve(node)?;
        Ok(self.nodes[i as usize]
            .children
            .iter()
            .map(|&c| self.id(c))
            .collect())
    }

    /// A node's counters (its subtree's, for an internal node).
    pub fn stats(&self, node: NodeId) -> Result<NodeStats, ShareError> {
        Ok(self.nodes[self.resolve(node)? as usize].stats)
    }

    /// Queues `item` of `cost` at `leaf`. A refusal is counted as a drop at the leaf
    /// and its ancestors and hands the item back.
    pub fn enqueue(&mut self, leaf: NodeId, item: T, cost: u64) -> Result<(), Rejected<T>> {
        let i = match self.resolve(leaf) {
            Ok(i) => i,
            Err(error) => {
                self.misdirected = self.misdirected.saturating_add(1);
                return Err(Rejected { item, error });
            }
        };
        let node = &self.nodes[i as usize];
        let refusal = if !node.is_leaf() {
            Some(ShareError::NotALeaf { node: leaf })
        } else if node.queue.len() >= self.config.leaf_queue_limit {
            Some(ShareError::QueueFull {
                leaf,
                limit: self.config.leaf_queue_limit,
            })
        } else if self.items >= self.config.total_item_limit {
            Some(ShareError::TreeFull {
                leaf,
                limit: self.config.total_item_limit,
            })
        } else {
            None
        };
        if let Some(error) = refusal {
            self.for_path(i, |s| s.drops = s.drops.saturating_add(1));
            return Err(Rejected { item, error });
        }

        let node = &mut self.nodes[i as usize];
        node.queue.push_back(Item { item, cost });
        let first = node.queue.len() == 1;
        self.items += 1;
        self.for_path(i, |s| {
            s.enqueued = s.enqueued.saturating_add(1);
            s.backlog += 1;
            s.backlog_cost = s.backlog_cost.saturating_add(cost);
        });
        if first {
            self.activate(i);
        }
        Ok(())
    }

    fn for_path(&mut self, from: u32, mut f: impl FnMut(&mut NodeStats)) {
        let mut at = Some(from);
        while let Some(i) = at {
            let node = &mut self.nodes[i as usize];
            f(&mut node.stats);
            at = node.parent;
        }
    }

    /// Puts a node that just got backlogged into its parent's schedule, and so on up
    /// while the parents were idle.
    fn activate(&mut self, from: u32) {
        let mut i = from;
        loop {
            let node = &self.nodes[i as usize];
            if node.active {
                return;
            }
            let Some(p) = node.parent else { return };
            let start = self.nodes[p as usize].vtime.max(node.finish);
            let seq = self.next_seq();
            let node = &mut self.nodes[i as usize];
            node.active = true;
            node.start = start;
            node.seq = seq;
            let pnode = &mut self.nodes[p as usize];
            insert_entry(
                &mut pnode.ready,
                Entry {
                    start,
                    seq,
                    child: i,
                },
            );
            if pnode.active || pnode.ready.len() > 1 {
                return;
            }
            i = p;
        }
    }

    /// Finds the leaf whose head item goes next, or when buckets allow one.
    fn probe(&self, i: u32, now: u64) -> Probe {
        let node = &self.nodes[i as usize];
        if node.is_leaf() {
            let Some(head) = node.queue.front() else {
                return Probe::Idle;
            };
            if !node.path_limited {
                return Probe::Ready(i);
            }
            let at = self.path_ready_at(i, head.cost, now);
            return if at <= now {
                Probe::Ready(i)
            } else {
                Probe::Wait(at)
            };
        }
        let mut wait: Option<u64> = None;
        for e in &node.ready {
            match self.probe(e.child, now) {
                Probe::Ready(leaf) => return Probe::Ready(leaf),
                Probe::Wait(at) => wait = Some(wait.map_or(at, |w| w.min(at))),
                Probe::Idle => {}
            }
        }
        wait.map_or(Probe::Idle, Probe::Wait)
    }

    /// When every bucket from `leaf` to the root lets an item of `cost` through.
    fn path_ready_at(&self, leaf: u32, cost: u64, now: u64) -> u64 {
        let mut at = now;
        let mut cur = Some(leaf);
        while let Some(i) = cur {
            let node = &self.nodes[i as usize];
            if !node.path_limited {
                break;
            }
            if let Some(b) = &node.bucket {
                at = at.max(b.ready_at(now, cost));
            }
            cur = node.parent;
        }
        at
    }

    /// The item that [`dequeue`](Self::dequeue) would return at `now`, without taking it.
    pub fn peek(&self, now: u64) -> Option<Peeked<'_, T>> {
        let Probe::Ready(leaf) = self.probe(ROOT, now) else {
            return None;
        };
        let head = self.nodes[leaf as usize].queue.front()?;
        Some(Peeked {
            item: &head.item,
            cost: head.cost,
            leaf: self.id(leaf),
        })
    }

    /// When to call [`dequeue`](Self::dequeue) next: `Some(now)` if an item may leave
    /// now, `Some(t)` if buckets hold every queued item back until `t` (assuming no
    /// other calls meanwhile), `None` if nothing is queued.
    pub fn next_ready(&self, now: u64) -> Option<u64> {
        match self.probe(ROOT, now) {
            Probe::Ready(_) => Some(now),
            Probe::Wait(at) => Some(at),
            Probe::Idle => None,
        }
    }

    /// Takes the next item by hierarchical SFQ among items that buckets let through at
    /// `now`. `None` when nothing is queued or everything is held back by buckets.
    pub fn dequeue(&mut self, now: u64) -> Option<Dequeued<T>> {
        let Probe::Ready(leaf) = self.probe(ROOT, now) else {
            return None;
        };
        let Item { item, cost } = self.nodes[leaf as usize].queue.pop_front()?;
        self.items -= 1;
        self.serve_path(leaf, cost, now);
        Some(Dequeued {
            item,
            cost,
            leaf: self.id(leaf),
        })
    }

    /// Books one served unit of `cost` on every node from `leaf` up to the root.
    fn serve_path(&mut self, leaf: u32, cost: u64, now: u64) {
        let mut i = leaf;
        loop {
            let node = &mut self.nodes[i as usize];
            let s = &mut node.stats;
            s.dequeued = s.dequeued.saturating_add(1);
            s.cost_served = s.cost_served.saturating_add(cost);
            s.backlog = s.backlog.saturating_sub(1);
            s.backlog_cost = s.backlog_cost.saturating_sub(cost);
            if let Some(b) = &mut node.bucket {
                b.charge(now, cost);
            }
            let Some(p) = node.parent else { return };
            let (start, seq) = (node.start, node.seq);
            let finish = start.saturating_add(tag_len(cost, node.weight));
            node.finish = finish;
            let still = node.has_backlog();
            let next = if still {
                let seq = self.next_seq();
                let node = &mut self.nodes[i as usize];
                node.start = finish;
                node.seq = seq;
                Some(Entry {
                    start: finish,
                    seq,
                    child: i,
                })
            } else {
                self.nodes[i as usize].active = false;
                None
            };
            let pnode = &mut self.nodes[p as usize];
            pnode.vtime = pnode.vtime.max(start);
            pnode.max_finish = pnode.max_finish.max(finish);
            match next {
                Some(e) => move_entry(&mut pnode.ready, start, seq, e),
                None => remove_entry(&mut pnode.ready, start, seq, i),
            }
            if pnode.ready.is_empty() {
                // End of the parent's busy period.
                pnode.vtime = pnode.vtime.max(pnode.max_finish);
            }
            i = p;
        }
    }
}

fn position(ready: &[Entry], start: u128, seq: u64, child: u32) -> Option<usize> {
    match ready.binary_search_by(|e| e.key().cmp(&(start, seq))) {
        Ok(pos) if ready[pos].child == child => Some(pos),
        // Unreachable while the tags are consistent; fall back to a scan rather than
        // corrupt the schedule.
        _ => ready.iter().position(|e| e.child == child),
    }
}

fn insert_entry(ready: &mut Vec<Entry>, e: Entry) {
    let at = ready.partition_point(|x| x.key() < e.key());
    ready.insert(at, e);
}

fn remove_entry(ready: &mut Vec<Entry>, start: u128, seq: u64, child: u32) {
    if let Some(pos) = position(ready, start, seq, child) {
        ready.remove(pos);
    }
}

/// Moves a child's entry to its new, later tag with one shift of the entries between.
fn move_entry(ready: &mut Vec<Entry>, start: u128, seq: u64, e: Entry) {
    let Some(old) = position(ready, start, seq, e.child) else {
        insert_entry(ready, e);
        return;
    };
    // The old entry itself sorts before `e`, so `new > old` while tags only grow.
    let new = ready.partition_point(|x| x.key() < e.key());
    if new > old {
        ready[old..new].rotate_left(1);
        ready[new - 1] = e;
    } else {
        ready.remove(old);
        insert_entry(ready, e);
    }
}

#[cfg(test)]
mod tests;
