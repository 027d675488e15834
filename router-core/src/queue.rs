//! Queue manager: packets leaving the engine are classified by source prefix,
//! held in bounded per-class queues and sent in the link scheduler's order
//! ([`crate::sched`]). Sans-IO, like the engine.
//!
//! # Classification
//!
//! [`SourceClassifier`] maps a packet's *source* address to a leaf class by
//! longest prefix ([`PrefixTable`]), with an optional default class. At a site's
//! access router the return traffic carries the VIP as source (direct server
//! return, DESIGN.md §7), so one prefix per tenant's virtual subnets aggregates
//! that tenant's traffic. It also reads the DSCP and hashes the 5-tuple with a
//! key from configuration (so outsiders cannot aim flows at one SFQ bucket); the
//! core draws no randomness itself.
//!
//! # Buffers
//!
//! Queued packets are owned: an [`OwnedPacket`] is a `Vec<u8>` with a frame
//! (`start..start + len`) and headroom in front, so the engine encapsulates in
//! place. They come from a [`PacketPool`] of equal-size buffers allocated once
//! (`count` buffers of `HEADROOM + payload` bytes): the shell takes a buffer,
//! receives into it, runs the engine on it ([`OwnedPacket::with_buf`]), queues it,
//! and after transmission (or when the queue refuses it: [`Refused`] hands it back)
//! gives it back to the pool. Moving a packet through the queue moves three words,
//! never the bytes, and nothing is allocated per packet. The pool is bounded:
//! when it is empty, `take` says so and counts it (the shell stops receiving).

use std::collections::BTreeMap;
use std::net::IpAddr;

use resource_mgr::ShareSpec;

use crate::classify::{self, FlowKey, PrefixTable, SubnetError, VirtualSubnet};
use crate::packet::{BufError, HEADROOM, PacketBuf};
use crate::sched::{ClassId, Dequeued, LinkScheduler, PacketMeta, QueueDrop, Refused};
use crate::time::Instant;
use crate::wire::{self, Ipv4Packet, Ipv6Packet};

/// An owned packet buffer: the packet is `storage[start..start + len]`, with
/// `start` bytes of headroom in front.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedPacket {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl OwnedPacket {
    /// Frames `len` bytes at `buf[start..]`.
    pub fn new(buf: Vec<u8>, start: usize, len: usize) -> Result<Self, BufError> {
        check_frame(buf.len(), start, len)?;
        Ok(Self { buf, start, len })
    }

    /// The packet bytes.
    pub fn data(&self) -> &[u8] {
        self.buf
            .get(self.start..self.start + self.len)
            .unwrap_or_default()
    }

    /// The packet bytes, mutable.
    pub fn data_mut(&mut self) -> &mut [u8] {
        let end = self.start + self.len;
        self.buf.get_mut(self.start..end).unwrap_or_default()
    }

    /// Packet length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the packet is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Offset of the first packet byte (the headroom in front of it).
    pub fn start(&self) -> usize {
        self.start
    }

    /// The whole buffer, e.g. to receive into before [`set_frame`](Self::set_frame).
    pub fn storage_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    /// Re-frames the packet as `storage[start..start + len]`.
    pub fn set_frame(&mut self, start: usize, len: usize) -> Result<(), BufError> {
        check_frame(self.buf.len(), start, len)?;
        self.start = start;
        self.len = len;
        Ok(())
    }

    /// Runs `f` (typically [`crate::Engine::process`]) on the packet in place and
    /// keeps the frame it leaves (a prepended tunnel header, a stripped one).
    pub fn with_buf<R>(&mut self, f: impl FnOnce(&mut PacketBuf<'_>) -> R) -> Result<R, BufError> {
        let mut view = PacketBuf::new(&mut self.buf, self.start, self.len)?;
        let out = f(&mut view);
        let (start, len) = (view.start(), view.len());
        self.start = start;
        self.len = len;
        Ok(out)
    }

    /// The buffer, for a shell that sends from it.
    pub fn into_vec(self) -> Vec<u8> {
        self.buf
    }
}

fn check_frame(size: usize, start: usize, len: usize) -> Result<(), BufError> {
    match start.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(BufError::OutOfBounds {
            start,
            end: start.saturating_add(len),
            len: size,
        }),
    }
}

/// Counters of a [`PacketPool`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Buffers handed out.
    pub taken: u64,
    /// Buffers given back and kept.
    pub returned: u64,
    /// `take` calls that found the pool empty.
    pub exhausted: u64,
    /// Buffers given back but not kept (wrong size, or the pool was full).
    pub discarded: u64,
}

/// A bounded pool of equal-size packet buffers, allocated up front.
#[derive(Debug)]
pub struct PacketPool {
    free: Vec<Vec<u8>>,
    buf_len: usize,
    count: usize,
    stats: PoolStats,
}

impl PacketPool {
    /// `count` buffers of `HEADROOM + payload` bytes each.
    pub fn new(count: usize, payload: usize) -> Self {
        let buf_len = HEADROOM.saturating_add(payload);
        Self {
            free: (0..count).map(|_| vec![0_u8; buf_len]).collect(),
            buf_len,
            count,
            stats: PoolStats::default(),
        }
    }

    /// A buffer framed empty after [`HEADROOM`] bytes, or `None` when all are in
    /// use (counted).
    pub fn take(&mut self) -> Option<OwnedPacket> {
        let Some(buf) = self.free.pop() else {
            self.stats.exhausted = self.stats.exhausted.saturating_add(1);
            return None;
        };
        self.stats.taken = self.stats.taken.saturating_add(1);
        Some(OwnedPacket {
            buf,
            start: HEADROOM.min(self.buf_len),
            len: 0,
        })
    }

    /// Takes a buffer back. A buffer of another size (not from this pool) or one
    /// beyond the pool's count is freed instead and counted, so the pool never
    /// grows.
    pub fn give(&mut self, packet: OwnedPacket) {
        if packet.buf.len() != self.buf_len || self.free.len() >= self.count {
            self.stats.discarded = self.stats.discarded.saturating_add(1);
            return;
        }
        self.stats.returned = self.stats.returned.saturating_add(1);
        self.free.push(packet.buf);
    }

    /// Buffers ready to take.
    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// Size of every buffer, headroom included.
    pub fn buf_len(&self) -> usize {
        self.buf_len
    }

    /// Pool counters.
    pub fn stats(&self) -> PoolStats {
        self.stats
    }
}

/// Classes packets by source prefix and describes them for the scheduler.
#[derive(Debug)]
pub struct SourceClassifier {
    prefixes: PrefixTable<ClassId>,
    default: Option<ClassId>,
    hasher: ahash::RandomState,
}

impl SourceClassifier {
    /// An empty classifier holding at most `max_prefixes` prefixes, hashing flows
    /// with `flow_key` (configuration; keep it secret and fixed per router).
    pub fn new(max_prefixes: usize, flow_key: [u64; 4]) -> Self {
        let [k0, k1, k2, k3] = flow_key;
        Self {
            prefixes: PrefixTable::with_capacity(max_prefixes),
            default: None,
            hasher: ahash::RandomState::with_seeds(k0, k1, k2, k3),
        }
    }

    /// Class of packets whose source matches no prefix (`None`: refuse them).
    pub fn set_default(&mut self, class: Option<ClassId>) {
        self.default = class;
    }

    /// Maps sources in `subnet` to `class`; returns the class it replaced.
    pub fn insert(
        &mut self,
        subnet: VirtualSubnet,
        class: ClassId,
    ) -> Result<Option<ClassId>, SubnetError> {
        self.prefixes.insert(subnet, class)
    }

    /// Maps every source prefix of resource-mgr's share-tree model `spec` to
    /// its leaf's scheduler class in `classes` (as [`LinkScheduler::add_spec`]
    /// returns them), and the spec's default leaf as the default. Keys whose
    /// class is missing from `classes` are skipped.
    pub fn map_spec(
        &mut self,
        spec: &ShareSpec<VirtualSubnet>,
        classes: &BTreeMap<u16, ClassId>,
    ) -> Result<(), SubnetError> {
        for k in spec.keys() {
            if let Some(&class) = classes.get(&k.class) {
                self.insert(k.key, class)?;
            }
        }
        self.set_default(spec.default_class().and_then(|d| classes.get(&d).copied()));
        Ok(())
    }

    /// Removes a prefix.
    pub fn remove(&mut self, subnet: &VirtualSubnet) -> Option<ClassId> {
        self.prefixes.remove(subnet)
    }

    /// The class of a source address: longest prefix, else the default.
    pub fn class_of(&self, src: IpAddr) -> Option<ClassId> {
        self.prefixes.lookup(src).map(|(_, c)| *c).or(self.default)
    }

    /// The keyed hash of a flow, as rank functions see it.
    pub fn flow_hash(&self, key: &FlowKey) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Describes the IP packet at the start of `packet`: its class by source,
    /// length, DSCP, protocol and flow hash. [`QueueDrop::Unclassified`] if no
    /// class matches or the headers cannot be read.
    pub fn meta(&self, packet: &[u8]) -> Result<PacketMeta, QueueDrop> {
        let classified = classify::classify(packet).map_err(|_| QueueDrop::Unclassified)?;
        let key = classified.key;
        let class = self.class_of(key.src).ok_or(QueueDrop::Unclassified)?;
        let dscp = match wire::ip_version(packet) {
            Ok(4) => Ipv4Packet::new_checked(packet).map(|p| p.dscp()),
            _ => Ipv6Packet::new_checked(packet).map(|p| p.dscp()),
        }
        .map_err(|_| QueueDrop::Unclassified)?;
        Ok(
            PacketMeta::new(u32::try_from(packet.len()).unwrap_or(u32::MAX), class)
                .with_flow(self.flow_hash(&key))
                .with_dscp(dscp, key.proto),
        )
    }
}

/// The queue manager: classifier in front of the link scheduler, for owned packets.
#[derive(Debug)]
pub struct QueueManager {
    classifier: SourceClassifier,
    scheduler: LinkScheduler<OwnedPacket>,
}

impl QueueManager {
    /// Joins a classifier (whose classes must be the scheduler's leaves) and a
    /// scheduler.
    pub fn new(classifier: SourceClassifier, scheduler: LinkScheduler<OwnedPacket>) -> Self {
        Self {
            classifier,
            scheduler,
        }
    }

    /// Classifies and queues a packet, or refuses it (counted) and hands it back.
    pub fn enqueue(
        &mut self,
        packet: OwnedPacket,
        now: Instant,
    ) -> Result<(), Refused<OwnedPacket>> {
        match self.classifier.meta(packet.data()) {
            Ok(meta) => self.scheduler.enqueue(&meta, packet, now),
            Err(reason) => {
                let len = u32::try_from(packet.len()).unwrap_or(u32::MAX);
                self.scheduler.count_refusal(reason, len);
                Err(Refused { packet, reason })
            }
        }
    }

    /// The next packet to send at `now`, if the shaper lets it go.
    pub fn dequeue(&mut self, now: Instant) -> Option<Dequeued<OwnedPacket>> {
        self.scheduler.dequeue(now)
    }

    /// When to call [`dequeue`](Self::dequeue) next (see
    /// [`LinkScheduler::next_ready`]).
    pub fn next_ready(&self, now: Instant) -> Option<Instant> {
        self.scheduler.next_ready(now)
    }

    /// The classifier.
    pub fn classifier(&self) -> &SourceClassifier {
        &self.classifier
    }

    /// The classifier, to change prefixes.
    pub fn classifier_mut(&mut self) -> &mut SourceClassifier {
        &mut self.classifier
    }

    /// The scheduler.
    pub fn scheduler(&self) -> &LinkScheduler<OwnedPacket> {
        &self.scheduler
    }

    /// The scheduler, to change classes, the link rate or the rank function.
    pub fn scheduler_mut(&mut self) -> &mut LinkScheduler<OwnedPacket> {
        &mut self.scheduler
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::{ClassConfig, SchedConfig};
    use crate::synth::PacketSpec;
    use crate::wire::TcpFlags;
    use std::net::SocketAddr;

    const KEY: [u64; 4] = [1, 2, 3, 4];

    fn packet(pool: &mut PacketPool, src: &str, dst: &str, dscp: u8) -> OwnedPacket {
        let src: SocketAddr = src.parse().unwrap();
        let dst: SocketAddr = dst.parse().unwrap();
        let mut spec = PacketSpec::tcp(src, dst, TcpFlags::ACK).with_payload(100);
        spec.dscp = dscp;
        let mut p = pool.take().unwrap();
        let n = spec.write(&mut p.storage_mut()[HEADROOM..]).unwrap();
        p.set_frame(HEADROOM, n).unwrap();
        p
    }

    #[test]
    fn return_traffic_is_classed_by_its_vip_source() {
        let mut sched = LinkScheduler::new(SchedConfig::default());
        let x = sched
            .add_class(ClassId::ROOT, ClassConfig::new(20))
            .unwrap();
        let y = sched
            .add_class(ClassId::ROOT, ClassConfig::new(30))
            .unwrap();
        let other = sched
            .add_class(ClassId::ROOT, ClassConfig::new(50))
            .unwrap();
        let mut c = SourceClassifier::new(16, KEY);
        c.insert("192.200.0.0/16".parse().unwrap(), x).unwrap();
        c.insert("192.200.7.0/24".parse().unwrap(), y).unwrap();
        c.insert("2001:db8:200::/48".parse().unwrap(), y).unwrap();
        let mut q = QueueManager::new(c, sched);
        let mut pool = PacketPool::new(8, 2048);

        let a = packet(&mut pool, "192.200.0.10:80", "198.51.100.7:40000", 46);
        let meta = q.classifier().meta(a.data()).unwrap();
        assert_eq!((meta.class, meta.dscp, meta.proto), (x, 46, 6));
        assert_eq!(meta.len as usize, a.len());
        let b = packet(&mut pool, "192.200.7.1:443", "198.51.100.7:40001", 0);
        assert_eq!(q.classifier().meta(b.data()).unwrap().class, y);
        let v6 = packet(&mut pool, "[2001:db8:200::5]:443", "[2001:db8::9]:5000", 10);
        assert_eq!(q.classifier().meta(v6.data()).unwrap().class, y);
        // The same flow hashes the same; another flow (almost surely) not.
        let a2 = packet(&mut pool, "192.200.0.10:80", "198.51.100.7:40000", 0);
        let h = |p: &OwnedPacket| q.classifier().meta(p.data()).unwrap().flow_hash;
        assert_eq!(h(&a), h(&a2));
        assert_ne!(h(&a), h(&b));

        // Unmatched sources are refused until a default class is set.
        let stray = packet(&mut pool, "203.0.113.9:80", "198.51.100.7:40000", 0);
        let refused = q.enqueue(stray, Instant::ZERO).unwrap_err();
        assert_eq!(refused.reason, QueueDrop::Unclassified);
        assert_eq!(q.scheduler().counters().dropped(QueueDrop::Unclassified), 1);
        assert_eq!(
            q.scheduler()
                .stats(ClassId::ROOT)
                .unwrap()
                .dropped(QueueDrop::Unclassified),
            1
        );
        q.classifier_mut().set_default(Some(other));
        q.enqueue(refused.packet, Instant::ZERO).unwrap();
        for p in [a, b, v6, a2] {
            q.enqueue(p, Instant::ZERO).unwrap();
        }
        assert_eq!(q.scheduler().len(), 5);
        let mut sent = 0;
        while let Some(d) = q.dequeue(Instant::from_millis(1)) {
            assert_eq!(d.delay, std::time::Duration::from_millis(1));
            pool.give(d.packet);
            sent += 1;
        }
        assert_eq!(sent, 5);
        assert_eq!(pool.available(), 8);
        assert_eq!(q.next_ready(Instant::ZERO), None);
    }

    #[test]
    fn garbage_is_unclassified_not_a_panic() {
        let c = SourceClassifier::new(4, KEY);
        for bytes in [&[][..], &[0x45, 0, 0], &[0x60; 39], &[0xff; 60]] {
            assert_eq!(c.meta(bytes), Err(QueueDrop::Unclassified));
        }
    }

    #[test]
    fn pool_is_bounded_and_recycles() {
        let mut pool = PacketPool::new(2, 100);
        let a = pool.take().unwrap();
        let b = pool.take().unwrap();
        assert_eq!((a.start(), a.len()), (HEADROOM, 0));
        assert!(pool.take().is_none());
        assert_eq!(pool.stats().exhausted, 1);
        pool.give(a);
        pool.give(b);
        // A foreign buffer or one too many is not kept.
        pool.give(OwnedPacket::new(vec![0; 10], 0, 10).unwrap());
        pool.give(OwnedPacket::new(vec![0; HEADROOM + 100], 0, 1).unwrap());
        assert_eq!(pool.available(), 2);
        assert_eq!(pool.stats().discarded, 2);
        assert_eq!(pool.stats().returned, 2);
    }

    #[test]
    fn the_engine_frames_in_place() {
        let mut pool = PacketPool::new(1, 200);
        let mut p = pool.take().unwrap();
        p.storage_mut()[HEADROOM..HEADROOM + 4].copy_from_slice(&[1, 2, 3, 4]);
        p.set_frame(HEADROOM, 4).unwrap();
        // Prepend an "outer header" of 20 bytes as a tunnel would.
        let grown = p
            .with_buf(|b| b.prepend(20).map(|h| h.fill(9)).is_ok())
            .unwrap();
        assert!(grown);
        assert_eq!((p.start(), p.len()), (HEADROOM - 20, 24));
        assert_eq!(&p.data()[19..], &[9, 1, 2, 3, 4]);
        assert!(p.set_frame(HEADROOM + 200, 1).is_err());
        assert!(OwnedPacket::new(vec![0; 4], 2, 3).is_err());
        assert!(OwnedPacket::new(vec![0; 4], usize::MAX, 3).is_err());
    }
}
