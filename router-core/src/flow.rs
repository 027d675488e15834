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

/// A change to the set of pinned flows, journaled for a fast path that
/// mirrors the table ([`FlowTable::set_journal`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowChange {
    /// `key` is pinned to `next_hop` now (a new flow, a replaced or an
    /// imported entry).
    Pinned {
        /// The flow.
        key: FlowKey,
        /// Where it goes.
        next_hop: IpAddr,
    },
    /// `key` is no longer pinned (removed, expired or evicted).
    Unpinned {
        /// The flow.
        key: FlowKey,
    },
}

/// What a fast path saw of a pinned flow the table did not see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowActivity {
    /// When it forwarded the flow's last packet (`None`: no packet yet).
    pub last_seen: Option<Instant>,
    /// TCP: a segment without SYN (the handshake is done).
    pub established: bool,
    /// TCP: FIN or RST.
    pub closing: bool,
}

/// Most due keys listed between two [`FlowTable::resolve_due`] calls; the
/// sweep leaves the rest for its next pass.
const MAX_DUE: usize = 4096;

/// The journal of changes and the due list (see the module docs).
#[derive(Debug)]
struct Journal {
    changes: std::collections::VecDeque<FlowChange>,
    capacity: usize,
    overflowed: bool,
    due: Vec<FlowKey>,
}

impl Journal {
    fn record(&mut self, c: FlowChange) {
        if self.changes.len() >= self.capacity {
            self.overflowed = true;
        } else {
            self.changes.push_back(c);
        }
    }
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

/// Interned next-hop addresses with reference counts, so a flow slot stores 4 bytes
/// instead of an `IpAddr` and the set stays bounded under churn.
#[derive(Debug)]
struct NextHops {
    addrs: Vec<(IpAddr, u64)>,
    index: HashMap<IpAddr, u32, RandomState>,
    free: Vec<u32>,
    limit: usize,
}

impl NextHops {
    fn acquire(&mut self, addr: IpAddr) -> Result<u32, FlowError> {
        if let Some(&id) = self.index.get(&addr) {
            self.addrs[id as usize].1 += 1;
            return Ok(id);
        }
        let id = if let Some(id) = self.free.pop() {
            self.addrs[id as usize] = (addr, 1);
            id
        } else {
            if self.addrs.len() >= self.limit || self.addrs.len() >= u32::MAX as usize {
                return Err(FlowError::NextHopsFull { limit: self.limit });
            }
            self.addrs.push((addr, 1));
            (self.addrs.len() - 1) as u32
        };
        self.index.insert(addr, id);
        Ok(id)
    }

    fn release(&mut self, id: u32) {
        let Some(e) = self.addrs.get_mut(id as usize) else {
            return;
        };
        e.1 = e.1.saturating_sub(1);
        if e.1 == 0 {
            self.index.remove(&e.0);
            self.free.push(id);
        }
    }

    fn addr(&self, id: u32) -> IpAddr {
        self.addrs
            .get(id as usize)
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |e| e.0)
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

impl FlowTable {
    /// Journal pins and unpins for a fast path, at most `capacity` between two
    /// drains (0: no journal, and idle entries expire by the table's own view
    /// again). Turning it on over a non-empty table reports an overflow, so the
    /// consumer starts with a full sync.
    pub fn set_journal(&mut self, capacity: usize) {
        if capacity == 0 {
            self.journal = None;
            return;
        }
        self.journal = Some(Journal {
            changes: std::collections::VecDeque::with_capacity(capacity),
            capacity,
            overflowed: !self.is_empty(),
            due: Vec::with_capacity(MAX_DUE),
        });
    }

    /// Whether the journal is on.
    pub fn journal_on(&self) -> bool {
        self.journal.is_some()
    }

    /// Hand every journaled change to `f`, oldest first. Returns true when
    /// changes were lost since the last drain (the journal was full): the
    /// consumer must then resync from [`FlowTable::export`].
    pub fn drain_changes(&mut self, mut f: impl FnMut(FlowChange)) -> bool {
        let Some(j) = &mut self.journal else {
            return false;
        };
        for c in j.changes.drain(..) {
            f(c);
        }
        // Back to the front of the ring: popping alone moves its head on, so
        // a steady trickle of changes would walk (and make resident) every
        // page of the preallocated ring, which a SYN flood showed as RSS.
        j.changes.clear();
        std::mem::take(&mut j.overflowed)
    }

    /// Fold what a fast path saw of `key` (a TCP state change it reports as it
    /// happens) into its entry; false if the flow is not pinned.
    pub fn refresh(&mut self, key: &FlowKey, activity: &FlowActivity, now: Instant) -> bool {
        let hasher = &self.hasher;
        with_family!(
            self,
            key,
            |t, k, _conv| {
                let Some(i) = t.find(t.probe(hasher.hash_one(k)), &k) else {
                    return false;
                };
                refresh(&mut t.slots[i].meta, activity, now);
                true
            },
            false
        )
    }

    /// Settle the entries the sweep found idle (journal on): `activity` tells
    /// what the fast path saw of each; an entry active since is refreshed (last
    /// packet, TCP state), one still idle past its state's timeout is removed
    /// (counted as expired, journaled as unpinned). Returns how many expired.
    pub fn resolve_due(
        &mut self,
        now: Instant,
        mut activity: impl FnMut(&FlowKey) -> Option<FlowActivity>,
    ) -> usize {
        let Some(j) = &mut self.journal else {
            return 0;
        };
        let mut due = std::mem::take(&mut j.due);
        let mut expired = 0;
        for key in &due {
            let act = activity(key);
            let timeouts = self.timeouts;
            let hasher = &self.hasher;
            let idle = with_family!(
                self,
                key,
                |t, k, _conv| {
                    let Some(i) = t.find(t.probe(hasher.hash_one(k)), &k) else {
                        continue;
                    };
                    let meta = &mut t.slots[i].meta;
                    if let Some(a) = act {
                        refresh(meta, &a, now);
                    }
                    Self::idle_ms(meta, now) > timeout_of(&timeouts, meta.state)
                },
                continue
            );
            if idle && self.remove(key, now).is_some() {
                // Counted as expired, not as a removal on request.
                self.stats.removed -= 1;
                self.stats.expired += 1;
                expired += 1;
            }
        }
        due.clear();
        if let Some(j) = &mut self.journal {
            j.due = due;
        }
        expired
    }
}

/// Fold a fast path's activity into an entry.
fn refresh(meta: &mut Meta, a: &FlowActivity, now: Instant) {
    if let Some(seen) = a.last_seen {
        let seen_ms = seen.min(now).as_millis() as u32;
        // Wrapping millisecond stamps: newer when the difference is "positive".
        if seen_ms.wrapping_sub(meta.last_seen_ms) < u32::MAX / 2 {
            meta.last_seen_ms = seen_ms;
        }
    }
    let state = FlowState::from_u8(meta.state);
    if matches!(
        state,
        FlowState::SynSeen | FlowState::Established | FlowState::Closing
    ) {
        // A new connection on a closed flow's ports is the engine's to place
        // (the program hands its SYN on), so the kernel never reopens a flow.
        let next = if a.closing {
            FlowState::Closing
        } else if a.established && state == FlowState::SynSeen {
            FlowState::Established
        } else {
            state
        };
        meta.state = next as u8;
    }
}

/// List the idle entries of up to `max_buckets` buckets (from the sweep cursor)
/// as due, without removing them.
fn due_in<K: SlotKey>(
    t: &mut Table<K>,
    timeouts: &Timeouts,
    now: Instant,
    max_buckets: usize,
    conv: fn(&K) -> FlowKey,
    due: &mut Vec<FlowKey>,
) {
    let n = t.buckets();
    if n == 0 {
        return;
    }
    for _ in 0..max_buckets.min(n) {
        let b = t.sweep_cursor;
        let idle: usize = (0..WAYS)
            .filter(|&way| {
                let s = &t.slots[b * WAYS + way];
                tag_of(t.tags[b], way) != 0
                    && FlowTable::idle_ms(&s.meta, now) > timeout_of(timeouts, s.meta.state)
            })
            .count();
        if due.len() + idle > MAX_DUE {
            // This bucket first on the next pass.
            return;
        }
        for way in 0..WAYS {
            let s = &t.slots[b * WAYS + way];
            if tag_of(t.tags[b], way) != 0
                && FlowTable::idle_ms(&s.meta, now) > timeout_of(timeouts, s.meta.state)
            {
                due.push(conv(&s.key));
            }
        }
        t.sweep_cursor = if b + 1 == n { 0 } else { b + 1 };
    }
}

fn occupied<K: SlotKey>(t: &Table<K>) -> impl Iterator<Item = &Slot<K>> {
    t.slots
        .iter()
        .enumerate()
        .filter(|(i, _)| tag_of(t.tags[i / WAYS], i % WAYS) != 0)
        .map(|(_, s)| s)
}

fn timeout_of(t: &Timeouts, state: u8) -> u64 {
    let d = match FlowState::from_u8(state) {
        FlowState::SynSeen => t.syn,
        FlowState::Established => t.established,
        FlowState::Closing => t.closing,
        FlowState::Udp => t.udp,
        FlowState::Other => t.other,
    };
    d.as_millis() as u64
}

fn sweep_table<K: SlotKey>(
    t: &mut Table<K>,
    timeouts: &Timeouts,
    now: Instant,
    max_buckets: usize,
    released: &mut Vec<u32>,
) -> usize {
    let n = t.buckets();
    if n == 0 {
        return 0;
    }
    let mut removed = 0;
    for _ in 0..max_buckets.min(n) {
        let b = t.sweep_cursor;
        t.sweep_cursor = if b + 1 == n { 0 } else { b + 1 };
        for way in 0..WAYS {
            let i = b * WAYS + way;
            if tag_of(t.tags[b], way) != 0 {
                let m = &t.slots[i].meta;
                if FlowTable::idle_ms(m, now) > timeout_of(timeouts, m.state) {
                    released.push(t.clear(i).meta.next_hop);
                    removed += 1;
                }
            }
        }
    }
    removed
}

struct Outcome {
    inserted: Inserted,
    /// A different flow that lost its slot (expired or evicted).
    unpinned: Option<FlowKey>,
    /// Next-hop references dropped by replaced, expired or evicted entries.
    released: [Option<u32>; 1],
    expired: bool,
    displaced: u64,
}

fn insert_into<K: SlotKey>(
    t: &mut Table<K>,
    hasher: &RandomState,
    timeouts: &Timeouts,
    key: K,
    meta: Meta,
    now: Instant,
    conv: fn(&K) -> FlowKey,
) -> Result<Outcome, FlowError> {
    if t.buckets() == 0 {
        return Err(FlowError::NoCapacity);
    }
    let p = t.probe(hasher.hash_one(key));
    let slot = Slot { key, meta };
    if let Some(i) = t.find(p, &key) {
        let old = core::mem::replace(&mut t.slots[i], slot);
        return Ok(Outcome {
            inserted: Inserted::Replaced,
            unpinned: None,
            released: [Some(old.meta.next_hop)],
            expired: false,
            displaced: 0,
        });
    }
    if let Some(i) = t.free_way(p.b1).or_else(|| t.free_way(p.b2)) {
        t.place(i, p.tag, slot);
        return Ok(Outcome {
            inserted: Inserted::Fresh,
            unpinned: None,
            released: [None],
            expired: false,
            displaced: 0,
        });
    }
    // Both buckets full: reuse a timed-out entry, else pick the eviction victim
    // in the same pass.
    let mut victim: Option<(usize, bool, u64)> = None; // (slot, embryonic, idle)
    for b in [p.b1, p.b2] {
        for way in 0..WAYS {
            let i = b * WAYS + way;
            let m = &t.slots[i].meta;
            let idle = FlowTable::idle_ms(m, now);
            if idle > timeout_of(timeouts, m.state) {
                let old = t.clear(i);
                t.place(i, p.tag, slot);
                return Ok(Outcome {
                    inserted: Inserted::Fresh,
                    unpinned: Some(conv(&old.key)),
                    released: [Some(old.meta.next_hop)],
                    expired: true,
                    displaced: 0,
                });
            }
            let embryonic = m.state == FlowState::SynSeen as u8;
            let better = match victim {
                None => true,
                Some((_, ve, vi)) => (embryonic, idle) > (ve, vi),
            };
            if better {
                victim = Some((i, embryonic, idle));
            }
        }
    }
    // Displacement pays off while the table has room; near full, a search of
    // 146 buckets almost always fails after ~1,200 rehashes (16 us measured), so
    // a flood against a full table would cost that per SYN. Evict directly there.
    let nearly_full = t.len >= t.slots.len() - t.slots.len() / 16;
    if !nearly_full && let Some(i) = t.make_room(p, hasher) {
        t.place(i, p.tag, slot);
        return Ok(Outcome {
            inserted: Inserted::Fresh,
            unpinned: None,
            released: [None],
            expired: false,
            displaced: 1,
        });
    }
    let Some((i, _, _)) = victim else {
        return Err(FlowError::NoCapacity);
    };
    let old = t.clear(i);
    t.place(i, p.tag, slot);
    Ok(Outcome {
        inserted: Inserted::Evicted(conv(&old.key)),
        unpinned: Some(conv(&old.key)),
        released: [Some(old.meta.next_hop)],
        expired: false,
        displaced: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(i: u32) -> FlowKey {
        FlowKey {
            proto: ip_proto::TCP,
            src: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)),
            src_port: (i % 60000) as u16 + 1024,
            dst: IpAddr::V4(Ipv4Addr::new(192, 200, 0, 10)),
            dst_port: 80,
        }
    }

    fn key6(i: u32) -> FlowKey {
        FlowKey {
            proto: ip_proto::UDP,
            src: IpAddr::V6(Ipv6Addr::from(0x2001_0db8_u128 << 96 | u128::from(i))),
            src_port: 5000,
            dst: IpAddr::V6("2001:db8:ffff::10".parse().unwrap()),
            dst_port: 53,
        }
    }

    fn hop(i: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 9, 0, i))
    }

    fn table(cap: usize) -> FlowTable {
        FlowTable::new(&FlowConfig {
            capacity_v4: cap,
            capacity_v6: cap,
            max_next_hops: 64,
            timeouts: Timeouts::default(),
        })
    }

    const T0: Instant = Instant::from_secs(1000);

    fn before(t: Instant, ms: u64) -> Instant {
        Instant::from_millis(t.as_millis() - ms)
    }

    fn drained(t: &mut FlowTable) -> (Vec<FlowChange>, bool) {
        let mut v = Vec::new();
        let lost = t.drain_changes(|c| v.push(c));
        (v, lost)
    }

    #[test]
    fn journal_records_every_pin_and_unpin() {
        let mut t = table(16);
        t.set_journal(64);
        let syn = FlowState::SynSeen;
        t.insert(&key(1), hop(1), 1, Level::Site, syn, T0).unwrap();
        // Replaced with another next hop (a shortcut, a WHOHAS answer).
        t.insert(&key(1), hop(2), 1, Level::Site, syn, T0).unwrap();
        t.insert(&key6(1), hop(3), 2, Level::Site, syn, T0).unwrap();
        t.remove(&key(1), T0).unwrap();
        let (changes, lost) = drained(&mut t);
        assert!(!lost);
        assert_eq!(
            changes,
            vec![
                FlowChange::Pinned {
                    key: key(1),
                    next_hop: hop(1)
                },
                FlowChange::Pinned {
                    key: key(1),
                    next_hop: hop(2)
                },
                FlowChange::Pinned {
                    key: key6(1),
                    next_hop: hop(3)
                },
                FlowChange::Unpinned { key: key(1) },
            ]
        );
        // Evictions are unpins too: fill a tiny table past capacity.
        let mut t = table(16);
        t.set_journal(1024);
        let cap = t.capacity().0;
        for i in 0..(cap as u32 + 8) {
            t.insert(&key(i), hop(1), i, Level::Site, syn, T0).unwrap();
        }
        let (changes, _) = drained(&mut t);
        let pinned: std::collections::HashSet<_> =
            changes
                .iter()
                .fold(std::collections::HashSet::new(), |mut set, c| {
                    match c {
                        FlowChange::Pinned { key, .. } => set.insert(*key),
                        FlowChange::Unpinned { key } => set.remove(key),
                    };
                    set
                });
        let table: std::collections::HashSet<_> = t.export(T0).map(|e| e.key).collect();
        assert_eq!(pinned, table, "replaying the journal gives the table");
    }

    #[test]
    fn journal_overflow_asks_for_a_resync() {
        let mut t = table(64);
        t.insert(&key(0), hop(1), 0, Level::Site, FlowState::Udp, T0)
            .unwrap();
        t.set_journal(2);
        // Turned on over a non-empty table: resync first.
        assert!(drained(&mut t).1);
        for i in 1..=3 {
            t.insert(&key(i), hop(1), i, Level::Site, FlowState::Udp, T0)
                .unwrap();
        }
        let (changes, lost) = drained(&mut t);
        assert_eq!(changes.len(), 2);
        assert!(lost);
        assert!(!drained(&mut t).1, "reported once");
        t.set_journal(0);
        assert!(!t.journal_on());
    }

    #[test]
    fn with_a_fast_path_idle_flows_expire_only_as_its_activity_says() {
        let mut t = table(64);
        t.set_journal(64);
        let to = Timeouts::default();
        t.insert(&key(1), hop(1), 1, Level::Site, FlowState::SynSeen, T0)
            .unwrap();
        t.insert(&key(2), hop(1), 2, Level::Site, FlowState::SynSeen, T0)
            .unwrap();
        t.insert(&key(3), hop(1), 3, Level::Site, FlowState::Udp, T0)
            .unwrap();
        let _ = drained(&mut t);
        let later = T0 + to.syn + Duration::from_secs(1);
        // No lazy expiry on a hit: the fast path carried the flow meanwhile.
        assert!(t.touch(&key(3), None, 1, later).is_some());
        assert_eq!(t.sweep(later, 1 << 20), 0, "the sweep only lists them");
        let seen = before(later, 10);
        let expired = t.resolve_due(later, |k| {
            (*k == key(1)).then_some(FlowActivity {
                last_seen: Some(seen),
                established: true,
                closing: false,
            })
        });
        // key(1) went on in the kernel and completed its handshake; key(2)
        // saw nothing since its SYN; key(3) was touched above.
        assert_eq!(expired, 1);
        let e = t.get(&key(1), later).unwrap();
        assert_eq!(e.state, FlowState::Established);
        assert_eq!(e.last_seen, seen);
        assert!(t.get(&key(2), later).is_none());
        assert_eq!(
            drained(&mut t).0,
            vec![FlowChange::Unpinned { key: key(2) }]
        );
        assert_eq!(t.stats().expired, 1);
        // Much later the kernel saw FIN: the closing timeout runs from the
        // flow's last packet there, not from what the table saw.
        let check = seen + to.established + Duration::from_secs(1);
        assert_eq!(t.sweep(check, 1 << 20), 0);
        let closing = |ago: u64| {
            move |_: &FlowKey| {
                Some(FlowActivity {
                    last_seen: Some(before(check, ago * 1000)),
                    established: true,
                    closing: true,
                })
            }
        };
        assert_eq!(t.resolve_due(check, closing(1)), 0);
        assert_eq!(t.get(&key(1), check).unwrap().state, FlowState::Closing);
        let check2 = check + to.closing;
        assert_eq!(t.sweep(check2, 1 << 20), 0);
        assert_eq!(t.resolve_due(check2, |_| None), 1);
        assert!(t.get(&key(1), check2).is_none());
    }

    #[test]
    fn a_fast_path_state_change_makes_a_syn_only_flow_established() {
        let mut t = table(16);
        t.set_journal(16);
        t.insert(&key(1), hop(1), 1, Level::Site, FlowState::SynSeen, T0)
            .unwrap();
        let later = T0 + Duration::from_secs(2);
        let act = FlowActivity {
            last_seen: Some(later),
            established: true,
            closing: false,
        };
        assert!(t.refresh(&key(1), &act, later));
        let e = t.get(&key(1), later).unwrap();
        assert_eq!((e.state, e.last_seen), (FlowState::Established, later));
        // An older report does not move the last packet back.
        let old = FlowActivity {
            last_seen: Some(T0),
            ..act
        };
        assert!(t.refresh(&key(1), &old, later));
        assert_eq!(t.get(&key(1), later).unwrap().last_seen, later);
        assert!(!t.refresh(&key(2), &act, later), "not pinned");
        // UDP flows keep their state whatever the report says.
        t.insert(&key(3), hop(1), 3, Level::Site, FlowState::Udp, T0)
            .unwrap();
        t.refresh(&key(3), &act, later);
        assert_eq!(t.get(&key(3), later).unwrap().state, FlowState::Udp);
    }

    #[test]
    fn slot_sizes_meet_the_memory_budget() {
        assert_eq!(size_of::<Slot<KeyV4>>(), 52);
        assert_eq!(size_of::<Slot<KeyV6>>(), 76);
    }

    #[test]
    fn insert_touch_remove_both_families() {
        let mut t = table(64);
        for k in [key(1), key6(1)] {
            let state = FlowState::initial(k.proto, Some(TcpFlags::SYN));
            assert_eq!(
                t.insert(&k, hop(1), 7, Level::Site, state, T0).unwrap(),
                Inserted::Fresh
            );
            let hit = t.touch(&k, Some(TcpFlags::ACK), 100, T0).unwrap();
            assert_eq!(t.next_hop_addr(hit.next_hop), hop(1));
            let e = t.get(&k, T0).unwrap();
            assert_eq!(
                (e.packets, e.bytes, e.label, e.next_hop),
                (1, 100, 7, hop(1))
            );
            assert_eq!(t.remove(&k, T0).unwrap().key, k);
            assert!(t.touch(&k, None, 1, T0).is_none());
        }
        assert!(t.is_empty());
        assert_eq!(t.stats().removed, 2);
    }

    #[test]
    fn tcp_state_drives_idle_timeouts() {
        let mut t = table(64);
        let to = Timeouts::default();
        let (syn, est, fin) = (key(1), key(2), key(3));
        for k in [syn, est, fin] {
            t.insert(&k, hop(1), 1, Level::Site, FlowState::SynSeen, T0)
                .unwrap();
        }
        assert_eq!(
            t.touch(&est, Some(TcpFlags::ACK), 1, T0).unwrap().state,
            FlowState::Established
        );
        assert_eq!(
            t.touch(&fin, Some(TcpFlags::FIN | TcpFlags::ACK), 1, T0)
                .unwrap()
                .state,
            FlowState::Closing
        );
        // Past the SYN timeout, only the SYN-only flow is gone.
        let later = T0 + to.syn + Duration::from_millis(1);
        assert!(t.touch(&syn, None, 1, later).is_none());
        assert!(t.touch(&est, None, 1, later).is_some());
        // Past the closing timeout (counted from its last packet), FIN flow is gone.
        let later2 = later + to.closing + Duration::from_millis(2);
        assert!(t.touch(&fin, None, 1, later2).is_none());
        assert!(t.touch(&est, None, 1, later2).is_some());
        // Established survives until its own idle timeout.
        assert!(
            t.touch(
                &est,
                None,
                1,
                later2 + (to.established - Duration::from_secs(1))
            )
            .is_some()
        );
        assert_eq!(t.stats().expired, 2);
    }

    #[test]
    fn sweep_removes_only_expired_and_is_bounded() {
        let mut t = table(1024);
        for i in 0..500 {
            t.insert(&key(i), hop(1), i, Level::Site, FlowState::SynSeen, T0)
                .unwrap();
        }
        for i in 0..250 {
            t.touch(&key(i), Some(TcpFlags::ACK), 1, T0).unwrap();
        }
        let later = T0 + Duration::from_secs(60);
        // One bucket per call at most removes 8 flows.
        assert!(t.sweep(later, 1) <= WAYS);
        let mut removed = 0;
        for _ in 0..t.v4.buckets() {
            removed += t.sweep(later, 1);
        }
        assert!(t.len() == 250, "left {}", t.len());
        assert!(removed <= 250);
        assert!((0..250).all(|i| t.get(&key(i), later).is_some()));
    }

    #[test]
    fn hard_capacity_is_what_the_table_allocates() {
        for n in [1, 7, 8, 9, 16, 1000, 16_384, 65_537] {
            assert_eq!(hard_capacity(n), table(n).capacity().0, "{n}");
            assert!(hard_capacity(n) >= n);
        }
    }

    #[test]
    fn capacity_is_never_exceeded_and_evictions_are_counted() {
        let mut t = table(1000);
        let (cap, _) = t.capacity();
        let mut first_eviction_at = None;
        for i in 0..(cap as u32 * 4) {
            let r = t
                .insert(
                    &key(i),
                    hop((i % 4) as u8),
                    i,
                    Level::Site,
                    FlowState::Established,
                    T0,
                )
                .unwrap();
            if matches!(r, Inserted::Evicted(_)) && first_eviction_at.is_none() {
                first_eviction_at = Some(t.len());
            }
            assert!(t.len() <= cap);
        }
        assert_eq!(t.len(), cap, "a full table stays full");
        let fill = first_eviction_at.unwrap() as f64 / cap as f64;
        assert!(
            fill > 0.9,
            "cuckoo displacement should fill >90% before evicting, got {fill}"
        );
        let s = t.stats();
        assert_eq!(s.inserted + s.evicted, cap as u64 * 4);
        assert_eq!(s.inserted as usize, cap);
    }

    #[test]
    fn eviction_prefers_embryonic_then_longest_idle() {
        // Two buckets: every key's two candidates are the whole table.
        let mut t = table(16);
        assert_eq!(t.capacity().0, 16);
        for i in 0..16 {
            let now = T0 + Duration::from_millis(u64::from(i));
            let state = if i == 9 {
                FlowState::SynSeen
            } else {
                FlowState::Established
            };
            t.insert(&key(i), hop(1), i, Level::Site, state, now)
                .unwrap();
        }
        let now = T0 + Duration::from_secs(1);
        // Flow 9 is embryonic, so it goes although flow 0 is idle longer.
        assert_eq!(
            t.insert(
                &key(100),
                hop(1),
                0,
                Level::Site,
                FlowState::Established,
                now
            )
            .unwrap(),
            Inserted::Evicted(key(9))
        );
        // No embryonic entry left: the longest idle (flow 0) goes.
        assert_eq!(
            t.insert(
                &key(101),
                hop(1),
                0,
                Level::Site,
                FlowState::Established,
                now
            )
            .unwrap(),
            Inserted::Evicted(key(0))
        );
        // A timed-out entry is reused before anything is evicted.
        let much_later = now + Timeouts::default().established;
        t.touch(&key(100), None, 1, much_later).unwrap();
        let before = t.stats().evicted;
        assert_eq!(
            t.insert(
                &key(102),
                hop(1),
                0,
                Level::Site,
                FlowState::SynSeen,
                much_later
            )
            .unwrap(),
            Inserted::Fresh
        );
        assert_eq!(t.stats().evicted, before);
    }

    #[test]
    fn export_import_round_trip() {
        let mut a = table(256);
        for i in 0..100 {
            let k = if i % 2 == 0 { key(i) } else { key6(i) };
            a.insert(
                &k,
                hop((i % 3) as u8),
                i,
                Level::System,
                FlowState::Established,
                T0,
            )
            .unwrap();
            a.touch(
                &k,
                Some(TcpFlags::ACK),
                1500,
                T0 + Duration::from_millis(u64::from(i)),
            )
            .unwrap();
        }
        let now = T0 + Duration::from_secs(2);
        let mut b = table(256);
        let exported: Vec<_> = a.export(now).collect();
        assert_eq!(exported.len(), 100);
        for e in &exported {
            b.import(e, now).unwrap();
        }
        for e in &exported {
            assert_eq!(b.get(&e.key, now).as_ref(), Some(e));
        }
    }

    #[test]
    fn next_hops_are_bounded_and_recycled() {
        let mut t = FlowTable::new(&FlowConfig {
            capacity_v4: 64,
            max_next_hops: 2,
            ..FlowConfig::default()
        });
        t.insert(&key(1), hop(1), 1, Level::Site, FlowState::Udp, T0)
            .unwrap();
        t.insert(&key(2), hop(2), 1, Level::Site, FlowState::Udp, T0)
            .unwrap();
        assert_eq!(
            t.insert(&key(3), hop(3), 1, Level::Site, FlowState::Udp, T0),
            Err(FlowError::NextHopsFull { limit: 2 })
        );
        assert!(t.get(&key(3), T0).is_none());
        t.remove(&key(1), T0).unwrap();
        t.insert(&key(3), hop(3), 1, Level::Site, FlowState::Udp, T0)
            .unwrap();
        assert_eq!(t.get(&key(3), T0).unwrap().next_hop, hop(3));
        assert_eq!(t.get(&key(2), T0).unwrap().next_hop, hop(2));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u32, u8),
        Touch(u32),
        Remove(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u32..200, 0u8..4).prop_map(|(k, h)| Op::Insert(k, h)),
            (0u32..200).prop_map(Op::Touch),
            (0u32..200).prop_map(Op::Remove),
        ]
    }

    proptest! {
        /// Without evictions or timeouts the table behaves exactly like a map.
        #[test]
        fn behaves_like_a_map(ops in proptest::collection::vec(op(), 1..400)) {
            let mut t = table(4096);
            let mut model = HashMap::new();
            for o in ops {
                match o {
                    Op::Insert(k, h) => {
                        let k = if k % 3 == 0 { key6(k) } else { key(k) };
                        t.insert(&k, hop(h), 0, Level::Site, FlowState::Established, T0).unwrap();
                        model.insert(k, hop(h));
                    }
                    Op::Touch(k) => {
                        let k = if k % 3 == 0 { key6(k) } else { key(k) };
                        let got = t.touch(&k, None, 1, T0).map(|h| t.next_hop_addr(h.next_hop));
                        prop_assert_eq!(got, model.get(&k).copied());
                    }
                    Op::Remove(k) => {
                        let k = if k % 3 == 0 { key6(k) } else { key(k) };
                        prop_assert_eq!(t.remove(&k, T0).map(|e| e.next_hop), model.remove(&k));
                    }
                }
                prop_assert_eq!(t.len(), model.len());
            }
        }

        /// Under random churn beyond capacity the table never exceeds it and every
        /// flow it reports is one that was inserted with that next hop.
        #[test]
        fn bounded_under_churn(keys in proptest::collection::vec(0u32..10_000, 1..2000)) {
            let mut t = table(64);
            let cap = t.capacity().0;
            for k in keys {
                t.insert(&key(k), hop((k % 7) as u8), k, Level::Site, FlowState::SynSeen, T0).unwrap();
                prop_assert!(t.len() <= cap);
            }
            for e in t.export(T0) {
                prop_assert_eq!(e.next_hop, hop((e.label % 7) as u8));
            }
        }
    }
}
