//! The flow table of pinned flows.
//!
//! Layout: a bucketized cuckoo hash table (two candidate buckets of eight slots per
//! key, chosen by a per-process keyed hash so nobody can aim collisions at one
//! bucket). IPv4 and IPv6 flows live in separate tables so an IPv4 flow costs 53
//! bytes of slot and tag, not the 77 an IPv6 key needs. Lookups probe at most two
//! buckets, comparing eight one-byte tags at a time before touching any key.
//!
//! Capacity is configuration and is never exceeded: the table allocates its slots
//! once. A new flow takes, in order: a free slot of its two buckets; a slot whose
//! entry has timed out; a slot freed by moving entries to their other bucket (a
//! breadth-first search of bounded size, skipped once the table is 15/16 full
//! because there it nearly always fails at full cost); and only then it **evicts**, among the 16
//! entries of its two buckets, the embryonic (SYN-only) entry idle longest, else the
//! entry idle longest. A SYN flood therefore evicts other embryonic flows before any
//! established connection. Every eviction is counted.
//!
//! Idle timeouts follow the TCP state seen from the client side (the only side an
//! SLR sees, since servers answer directly): SYN-only flows expire fast, established
//! ones slowly, flows that saw FIN or RST soon.
//!
//! A kernel fast path that forwards pinned flows itself mirrors the table
//! through its **journal** ([`FlowTable::set_journal`]): every pin (new flow,
//! replaced or imported entry) and every unpin (removal, expiry, eviction) is
//! recorded, bounded, for the shell to drain ([`FlowTable::drain_changes`]); an
//! overflow says "resync from [`FlowTable::export`]". The fast path's packets
//! never reach the table, so with the journal on an idle entry is not expired
//! where the table alone sees it idle: the sweep lists it as *due*
//! ([`FlowTable::resolve_due`]) and the shell settles it with the activity the
//! fast path recorded (last packet, TCP state), so timeouts stay TCP-aware.

use crate::policy::Level;
use crate::time::Instant;
use crate::wire::{TcpFlags, ip_proto};
use ahash::RandomState;
use core::time::Duration;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::classify::FlowKey;

pub use journal::{FlowActivity, FlowChange};
use journal::{Journal, due_in};
use next_hops::NextHops;
use ops::{Outcome, insert_into, occupied, sweep_table, timeout_of};

/// Slots per bucket.
const WAYS: usize = 8;
/// Upper bound on buckets visited when searching for a displacement path.
const BFS_NODES: usize = 2 + 2 * WAYS + 2 * WAYS * WAYS;

/// Idle timeouts per flow state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP flow that has only shown a SYN (half-open, flood candidates).
    pub syn: Duration,
    /// TCP flow past the handshake.
    pub established: Duration,
    /// TCP flow that sent FIN or RST.
    pub closing: Duration,
    /// UDP flows.
    pub udp: Duration,
    /// ICMP and other protocols.
    pub other: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            syn: Duration::from_secs(10),
            established: Duration::from_secs(900),
            closing: Duration::from_secs(15),
            udp: Duration::from_secs(60),
            other: Duration::from_secs(30),
        }
    }
}

/// Flow table configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowConfig {
    /// Maximum IPv4 flows (rounded up to a multiple of 8).
    pub capacity_v4: usize,
    /// Maximum IPv6 flows (rounded up to a multiple of 8).
    pub capacity_v6: usize,
    /// Maximum distinct next hops referenced by pinned flows.
    pub max_next_hops: usize,
    /// Idle timeouts.
    pub timeouts: Timeouts,
}

impl Default for FlowConfig {
    fn default() -> Self {
        Self {
            capacity_v4: 1 << 20,
            capacity_v6: 1 << 16,
            max_next_hops: 1 << 16,
            timeouts: Timeouts::default(),
        }
    }
}

/// Where a flow is in its life, as seen from the client side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FlowState {
    /// TCP: only SYN seen so far.
    SynSeen = 0,
    /// TCP: handshake completed (a non-SYN segment seen).
    Established = 1,
    /// TCP: FIN or RST seen.
    Closing = 2,
    /// UDP datagram flow.
    Udp = 3,
    /// ICMP or another protocol.
    Other = 4,
}

impl FlowState {
    /// The state of a flow whose first packet is of `proto` with `flags`.
    pub fn initial(proto: u8, flags: Option<TcpFlags>) -> Self {
        match (proto, flags) {
            (ip_proto::TCP, Some(f)) => Self::SynSeen.advance(f),
            (ip_proto::TCP, None) => Self::Established,
            (ip_proto::UDP, _) => Self::Udp,
            _ => Self::Other,
        }
    }

    /// The state after the client sends a segment with `flags`.
    pub fn advance(self, flags: TcpFlags) -> Self {
        if flags.contains(TcpFlags::FIN) || flags.contains(TcpFlags::RST) {
            Self::Closing
        } else if flags.contains(TcpFlags::SYN) {
            // A retransmitted SYN does not move a flow back; a SYN never advances.
            self
        } else if self == Self::SynSeen {
            Self::Established
        } else {
            self
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::SynSeen,
            1 => Self::Established,
            2 => Self::Closing,
            3 => Self::Udp,
            _ => Self::Other,
        }
    }
}

/// Compact identifier of a next hop referenced by pinned flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NextHopId(u32);

/// One pinned flow, as exported for mirroring, WHOHAS answers and queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowEntry {
    /// The flow.
    pub key: FlowKey,
    /// Tunnel endpoint the flow is pinned to.
    pub next_hop: IpAddr,
    /// Flow label assigned when the flow was pinned.
    pub label: u32,
    /// Level of the router that pinned it.
    pub level: Level,
    /// TCP-aware state.
    pub state: FlowState,
    /// When the flow was pinned (second resolution).
    pub created: Instant,
    /// When the last packet was seen (millisecond resolution).
    pub last_seen: Instant,
    /// Packets forwarded.
    pub packets: u64,
    /// Bytes forwarded.
    pub bytes: u64,
}

/// What a hit tells the forwarding path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    /// The pinned next hop.
    pub next_hop: NextHopId,
    /// The flow's state after this packet.
    pub state: FlowState,
}

/// What inserting a flow did to the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// Took a free or timed-out slot, or moved others to make room.
    Fresh,
    /// Replaced an existing entry for the same key.
    Replaced,
    /// Evicted another flow (whose key is given) under the eviction rule.
    Evicted(FlowKey),
}

/// Why a flow could not be inserted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FlowError {
    /// Too many distinct next hops are referenced by pinned flows.
    #[error("next-hop table full ({limit} distinct next hops)")]
    NextHopsFull {
        /// Configured limit.
        limit: usize,
    },
    /// The table for this address family has no slots at all.
    #[error("flow table for this address family has zero capacity")]
    NoCapacity,
}

/// Counters of the flow table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Flows inserted into a free or timed-out slot.
    pub inserted: u64,
    /// Insertions that replaced the entry of the same key.
    pub replaced: u64,
    /// Flows evicted to make room (the eviction rule in the module docs).
    pub evicted: u64,
    /// Entries removed because their idle timeout passed.
    pub expired: u64,
    /// Entries removed on request.
    pub removed: u64,
    /// Entries moved to their other bucket to make room.
    pub displaced: u64,
}

trait SlotKey: Copy + Default + Eq + core::hash::Hash {}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
struct KeyV4 {
    src: u32,
    dst: u32,
    src_port: u16,
    dst_port: u16,
    proto: u8,
}
impl SlotKey for KeyV4 {}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
struct KeyV6 {
    src: [u8; 16],
    dst: [u8; 16],
    src_port: u16,
    dst_port: u16,
    proto: u8,
}
impl SlotKey for KeyV6 {}

/// Per-flow data beside the key. Wide counters are split into `u32` halves so the
/// slot stays 4-byte aligned and an IPv4 slot is 52 bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Meta {
    next_hop: u32,
    label: u32,
    created_s: u32,
    /// Milliseconds since the epoch, wrapping: idle time is computed with wrapping
    /// arithmetic, exact while idle stays under 24 days, far beyond any timeout
    /// (the sweeper removes idle entries long before).
    last_seen_ms: u32,
    packets: [u32; 2],
    bytes: [u32; 2],
    state: u8,
    level: u8,
}

fn join(v: [u32; 2]) -> u64 {
    u64::from(v[0]) | (u64::from(v[1]) << 32)
}

fn split(v: u64) -> [u32; 2] {
    [v as u32, (v >> 32) as u32]
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot<K> {
    key: K,
    meta: Meta,
}

/// One address family's table.
#[derive(Debug)]
struct Table<K> {
    /// Eight one-byte tags per bucket; 0 marks a free slot.
    tags: Vec<u64>,
    slots: Vec<Slot<K>>,
    len: usize,
    sweep_cursor: usize,
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// Bitmask with the high bit of each byte of `word` equal to `tag` (may include
/// false positives above a true match; callers compare keys anyway).
#[inline]
fn match_byte(word: u64, tag: u8) -> u64 {
    let x = word ^ (LO * u64::from(tag));
    x.wrapping_sub(LO) & !x & HI
}

#[inline]
fn tag_of(word: u64, way: usize) -> u8 {
    (word >> (way * 8)) as u8
}

#[derive(Debug, Clone, Copy)]
struct Probe {
    b1: usize,
    b2: usize,
    tag: u8,
}

#[inline]
fn fastrange(x: u32, n: usize) -> usize {
    ((u64::from(x) * n as u64) >> 32) as usize
}

/// Buckets of a family's table asked to hold `capacity` flows.
fn buckets_for(capacity: usize) -> usize {
    let buckets = capacity.div_ceil(WAYS);
    // Two distinct candidate buckets need at least two buckets.
    if buckets == 0 { 0 } else { buckets.max(2) }
}

/// Slots a family's table has when configured for `capacity` flows (what
/// [`FlowTable::capacity`] reports): the most flows it ever holds, so what a
/// mirror of it (the kernel fast path's maps) must hold.
pub fn hard_capacity(capacity: usize) -> usize {
    buckets_for(capacity) * WAYS
}

impl<K: SlotKey> Table<K> {
    fn new(capacity: usize) -> Self {
        let buckets = buckets_for(capacity);
        Self {
            tags: vec![0; buckets],
            slots: vec![Slot::default(); buckets * WAYS],
            len: 0,
            sweep_cursor: 0,
        }
    }

    fn buckets(&self) -> usize {
        self.tags.len()
    }

    #[inline]
    fn probe(&self, hash: u64) -> Probe {
        let n = self.buckets();
        let b1 = fastrange(hash as u32, n);
        let mut b2 = fastrange((hash >> 32) as u32, n);
        if b2 == b1 {
            b2 = if b1 + 1 == n { 0 } else { b1 + 1 };
        }
        let t = (hash >> 56) as u8;
        Probe {
            b1,
            b2,
            tag: if t == 0 { 1 } else { t },
        }
    }

    #[inline]
    fn find(&self, p: Probe, key: &K) -> Option<usize> {
        for b in [p.b1, p.b2] {
            let mut m = match_byte(self.tags[b], p.tag);
            while m != 0 {
                let way = (m.trailing_zeros() / 8) as usize;
                m &= m - 1;
                let i = b * WAYS + way;
                if tag_of(self.tags[b], way) == p.tag && self.slots[i].key == *key {
                    return Some(i);
                }
            }
        }
        None
    }

    fn set_tag(&mut self, i: usize, tag: u8) {
        let (b, way) = (i / WAYS, i % WAYS);
        let shift = way * 8;
        self.tags[b] = (self.tags[b] & !(0xff << shift)) | (u64::from(tag) << shift);
    }

    fn free_way(&self, b: usize) -> Option<usize> {
        let m = match_byte(self.tags[b], 0);
        // The lowest flagged byte is always a true match (false positives only
        // appear above a true zero byte).
        (m != 0).then(|| b * WAYS + (m.trailing_zeros() / 8) as usize)
    }

    fn clear(&mut self, i: usize) -> Slot<K> {
        self.set_tag(i, 0);
        self.len -= 1;
        core::mem::take(&mut self.slots[i])
    }

    fn place(&mut self, i: usize, tag: u8, slot: Slot<K>) {
        self.set_tag(i, tag);
        self.slots[i] = slot;
        self.len += 1;
    }

    /// Breadth-first search for a chain of moves that frees a slot in `p.b1` or
    /// `p.b2`; performs the moves and returns the freed slot.
    fn make_room(&mut self, p: Probe, hasher: &RandomState) -> Option<usize> {
        // (bucket, parent node, slot index in the parent bucket that moves here)
        let mut nodes = [(0usize, usize::MAX, 0usize); BFS_NODES];
        nodes[0] = (p.b1, usize::MAX, 0);
        nodes[1] = (p.b2, usize::MAX, 0);
        let mut n = 2;
        let mut head = 0;
        while head < n {
            let (b, _, _) = nodes[head];
            for way in 0..WAYS {
                let i = b * WAYS + way;
                let q = self.probe(hasher.hash_one(self.slots[i].key));
                let alt = if q.b1 == b { q.b2 } else { q.b1 };
                if let Some(free) = self.free_way(alt) {
                    // Move this entry to `free`, then each ancestor into the slot its
                    // child vacated, ending with a free slot in a root bucket.
                    let mut vacated = i;
                    let mut dest = free;
                    let mut node = head;
                    loop {
                        let tag = tag_of(self.tags[vacated / WAYS], vacated % WAYS);
                        let slot = self.clear(vacated);
                        self.place(dest, tag, slot);
                        let (_, parent, parent_slot) = nodes[node];
                        if parent == usize::MAX {
                            return Some(vacated);
                        }
                        dest = vacated;
                        vacated = parent_slot;
                        node = parent;
                    }
                }
                if n < BFS_NODES {
                    nodes[n] = (alt, head, i);
                    n += 1;
                }
            }
            head += 1;
        }
        None
    }
}

/// The flow table: pinned flows of both address families.
#[derive(Debug)]
pub struct FlowTable {
    v4: Table<KeyV4>,
    v6: Table<KeyV6>,
    next_hops: NextHops,
    hasher: RandomState,
    timeouts: Timeouts,
    stats: FlowStats,
    journal: Option<Journal>,
}

enum Family {
    V4(KeyV4),
    V6(KeyV6),
}

fn split_key(key: &FlowKey) -> Option<Family> {
    match (key.src, key.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Some(Family::V4(KeyV4 {
            src: u32::from(s),
            dst: u32::from(d),
            src_port: key.src_port,
            dst_port: key.dst_port,
            proto: key.proto,
        })),
        (IpAddr::V6(s), IpAddr::V6(d)) => Some(Family::V6(KeyV6 {
            src: s.octets(),
            dst: d.octets(),
            src_port: key.src_port,
            dst_port: key.dst_port,
            proto: key.proto,
        })),
        _ => None,
    }
}

fn key_v4(k: &KeyV4) -> FlowKey {
    FlowKey {
        proto: k.proto,
        src: IpAddr::V4(Ipv4Addr::from(k.src)),
        src_port: k.src_port,
        dst: IpAddr::V4(Ipv4Addr::from(k.dst)),
        dst_port: k.dst_port,
    }
}

fn key_v6(k: &KeyV6) -> FlowKey {
    FlowKey {
        proto: k.proto,
        src: IpAddr::V6(Ipv6Addr::from(k.src)),
        src_port: k.src_port,
        dst: IpAddr::V6(Ipv6Addr::from(k.dst)),
        dst_port: k.dst_port,
    }
}

fn level_from_u8(v: u8) -> Level {
    match v {
        0 => Level::Network,
        1 => Level::System,
        _ => Level::Site,
    }
}

/// Dispatch on the key's family with the matching table and key converter bound.
macro_rules! with_family {
    ($self:ident, $key:expr, |$t:ident, $k:ident, $conv:ident| $body:expr, $mixed:expr) => {
        match split_key($key) {
            Some(Family::V4($k)) => {
                let $t = &mut $self.v4;
                let $conv = key_v4;
                $body
            }
            Some(Family::V6($k)) => {
                let $t = &mut $self.v6;
                let $conv = key_v6;
                $body
            }
            None => $mixed,
        }
    };
}

// After the macro, which they use.
mod journal;
mod next_hops;
mod ops;
#[cfg(test)]
mod tests;

impl FlowTable {
    /// A table with the configured capacities, all memory allocated now.
    pub fn new(cfg: &FlowConfig) -> Self {
        Self {
            v4: Table::new(cfg.capacity_v4),
            v6: Table::new(cfg.capacity_v6),
            next_hops: NextHops {
                addrs: Vec::new(),
                index: HashMap::with_hasher(RandomState::new()),
                free: Vec::new(),
                limit: cfg.max_next_hops,
            },
            hasher: RandomState::new(),
            timeouts: cfg.timeouts,
            stats: FlowStats::default(),
            journal: None,
        }
    }

    /// Number of pinned flows.
    pub fn len(&self) -> usize {
        self.v4.len + self.v6.len
    }

    /// Whether no flow is pinned.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slots allocated for (IPv4, IPv6) flows: the hard capacity.
    pub fn capacity(&self) -> (usize, usize) {
        (self.v4.slots.len(), self.v6.slots.len())
    }

    /// Bytes of table memory (slots, tags and next hops), for sizing reports.
    pub fn memory_bytes(&self) -> usize {
        self.v4.slots.len() * size_of::<Slot<KeyV4>>()
            + self.v4.tags.len() * 8
            + self.v6.slots.len() * size_of::<Slot<KeyV6>>()
            + self.v6.tags.len() * 8
            + self.next_hops.addrs.capacity() * size_of::<(IpAddr, u64)>()
    }

    /// Counters.
    pub fn stats(&self) -> FlowStats {
        self.stats
    }

    /// The configured timeouts.
    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    /// The address of an interned next hop.
    #[inline]
    pub fn next_hop_addr(&self, id: NextHopId) -> IpAddr {
        self.next_hops.addr(id.0)
    }

    fn idle_ms(meta: &Meta, now: Instant) -> u64 {
        u64::from((now.as_millis() as u32).wrapping_sub(meta.last_seen_ms))
    }

    /// The forwarding-path lookup: find the flow, drop it if it timed out, else
    /// account the packet (`bytes`, TCP `flags`) and return its pinned next hop.
    #[inline]
    pub fn touch(
        &mut self,
        key: &FlowKey,
        flags: Option<TcpFlags>,
        bytes: usize,
        now: Instant,
    ) -> Option<Hit> {
        let timeouts = self.timeouts;
        let hasher = &self.hasher;
        let stats = &mut self.stats;
        let next_hops = &mut self.next_hops;
        // With a fast path the table's idle time is stale: a packet here proves
        // the flow alive, and only the sweep, told the fast path's activity,
        // expires entries.
        let lazy_expiry = self.journal.is_none();
        with_family!(
            self,
            key,
            |t, k, _conv| {
                let p = t.probe(hasher.hash_one(k));
                let i = t.find(p, &k)?;
                let meta = &mut t.slots[i].meta;
                let limit = timeout_of(&timeouts, meta.state);
                if lazy_expiry && Self::idle_ms(meta, now) > limit {
                    let old = t.clear(i);
                    next_hops.release(old.meta.next_hop);
                    stats.expired += 1;
                    return None;
                }
                let state = match flags {
                    Some(f) => FlowState::from_u8(meta.state).advance(f),
                    None => FlowState::from_u8(meta.state),
                };
                meta.state = state as u8;
                meta.last_seen_ms = now.as_millis() as u32;
                meta.packets = split(join(meta.packets).wrapping_add(1));
                meta.bytes = split(join(meta.bytes).wrapping_add(bytes as u64));
                Some(Hit {
                    next_hop: NextHopId(meta.next_hop),
                    state,
                })
            },
            None
        )
    }

    /// Pin `key` to `next_hop`. Never exceeds capacity: see the eviction rule in
    /// the module docs.
    pub fn insert(
        &mut self,
        key: &FlowKey,
        next_hop: IpAddr,
        label: u32,
        level: Level,
        state: FlowState,
        now: Instant,
    ) -> Result<Inserted, FlowError> {
        let entry = FlowEntry {
            key: *key,
            next_hop,
            label,
            level,
            state,
            created: now,
            last_seen: now,
            packets: 0,
            bytes: 0,
        };
        self.import(&entry, now)
    }

    /// Insert a complete entry (from a mirror, a WHOHAS answer or a flow
    /// advertisement), replacing any entry of the same key.
    pub fn import(&mut self, e: &FlowEntry, now: Instant) -> Result<Inserted, FlowError> {
        let nh = self.next_hops.acquire(e.next_hop)?;
        // Carry idle time over relative to `now`, since stored times are compact.
        let idle = now.saturating_since(e.last_seen).as_millis() as u64;
        let meta = Meta {
            next_hop: nh,
            label: e.label,
            created_s: e.created.as_secs() as u32,
            last_seen_ms: (now.as_millis().saturating_sub(idle)) as u32,
            packets: split(e.packets),
            bytes: split(e.bytes),
            state: e.state as u8,
            level: e.level as u8,
        };
        let result = match split_key(&e.key) {
            Some(Family::V4(k)) => {
                let r = insert_into(
                    &mut self.v4,
                    &self.hasher,
                    &self.timeouts,
                    k,
                    meta,
                    now,
                    key_v4,
                );
                self.account(r, &e.key, e.next_hop)
            }
            Some(Family::V6(k)) => {
                let r = insert_into(
                    &mut self.v6,
                    &self.hasher,
                    &self.timeouts,
                    k,
                    meta,
                    now,
                    key_v6,
                );
                self.account(r, &e.key, e.next_hop)
            }
            None => Err(FlowError::NoCapacity),
        };
        if result.is_err() {
            self.next_hops.release(nh);
        }
        result
    }

    fn account(
        &mut self,
        r: Result<Outcome, FlowError>,
        key: &FlowKey,
        next_hop: IpAddr,
    ) -> Result<Inserted, FlowError> {
        let o = r?;
        if let Some(j) = &mut self.journal {
            if let Some(gone) = o.unpinned {
                j.record(FlowChange::Unpinned { key: gone });
            }
            j.record(FlowChange::Pinned {
                key: *key,
                next_hop,
            });
        }
        for released in o.released.into_iter().flatten() {
            self.next_hops.release(released);
        }
        self.stats.displaced += o.displaced;
        if o.expired {
            self.stats.expired += 1;
        }
        match o.inserted {
            Inserted::Fresh => self.stats.inserted += 1,
            Inserted::Replaced => self.stats.replaced += 1,
            Inserted::Evicted(_) => self.stats.evicted += 1,
        }
        Ok(o.inserted)
    }

    /// Remove a flow, returning it.
    pub fn remove(&mut self, key: &FlowKey, now: Instant) -> Option<FlowEntry> {
        let hasher = &self.hasher;
        let removed = with_family!(
            self,
            key,
            |t, k, conv| {
                let p = t.probe(hasher.hash_one(k));
                let i = t.find(p, &k)?;
                let s = t.clear(i);
                Some((conv(&s.key), s.meta))
            },
            None
        )?;
        self.stats.removed += 1;
        if let Some(j) = &mut self.journal {
            j.record(FlowChange::Unpinned { key: removed.0 });
        }
        let entry = self.entry(&removed.0, &removed.1, now);
        self.next_hops.release(removed.1.next_hop);
        Some(entry)
    }

    /// A copy of the entry for `key`, if pinned (timed-out entries included until
    /// swept).
    pub fn get(&self, key: &FlowKey, now: Instant) -> Option<FlowEntry> {
        let (k, meta) = match split_key(key)? {
            Family::V4(k) => {
                let i = self.v4.find(self.v4.probe(self.hasher.hash_one(k)), &k)?;
                (key_v4(&self.v4.slots[i].key), self.v4.slots[i].meta)
            }
            Family::V6(k) => {
                let i = self.v6.find(self.v6.probe(self.hasher.hash_one(k)), &k)?;
                (key_v6(&self.v6.slots[i].key), self.v6.slots[i].meta)
            }
        };
        Some(self.entry(&k, &meta, now))
    }

    fn entry(&self, key: &FlowKey, m: &Meta, now: Instant) -> FlowEntry {
        let idle = Self::idle_ms(m, now);
        FlowEntry {
            key: *key,
            next_hop: self.next_hops.addr(m.next_hop),
            label: m.label,
            level: level_from_u8(m.level),
            state: FlowState::from_u8(m.state),
            created: Instant::from_secs(u64::from(m.created_s)),
            last_seen: Instant::from_millis(now.as_millis().saturating_sub(idle)),
            packets: join(m.packets),
            bytes: join(m.bytes),
        }
    }

    /// Every pinned flow (for mirroring to a hot spare or a query).
    pub fn export(&self, now: Instant) -> impl Iterator<Item = FlowEntry> + '_ {
        let v4 = occupied(&self.v4).map(move |s| self.entry(&key_v4(&s.key), &s.meta, now));
        let v6 = occupied(&self.v6).map(move |s| self.entry(&key_v6(&s.key), &s.meta, now));
        v4.chain(v6)
    }

    /// Remove timed-out entries, visiting at most `max_buckets` buckets per family
    /// from where the previous sweep stopped. Returns how many were removed.
    /// Bounded work, so the shell can call it between packet batches.
    ///
    /// With the journal on, idle entries are listed as due instead (see
    /// [`FlowTable::resolve_due`]) and the count is 0.
    pub fn sweep(&mut self, now: Instant, max_buckets: usize) -> usize {
        if let Some(j) = &mut self.journal {
            due_in(
                &mut self.v4,
                &self.timeouts,
                now,
                max_buckets,
                key_v4,
                &mut j.due,
            );
            due_in(
                &mut self.v6,
                &self.timeouts,
                now,
                max_buckets,
                key_v6,
                &mut j.due,
            );
            return 0;
        }
        let mut released = Vec::new();
        let n4 = sweep_table(
            &mut self.v4,
            &self.timeouts,
            now,
            max_buckets,
            &mut released,
        );
        let n6 = sweep_table(
            &mut self.v6,
            &self.timeouts,
            now,
            max_buckets,
            &mut released,
        );
        for id in released {
            self.next_hops.release(id);
        }
        self.stats.expired += (n4 + n6) as u64;
        n4 + n6
    }
}
