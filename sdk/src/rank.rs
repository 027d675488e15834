//! Scheduler ABI v1: the packet a scheduler module ranks ([`RankRequest`]), its
//! checked little-endian codec, and the rank a module answers.
//!
//! The host's queue manager is a tree of rank-ordered queues (PIFO-style): a
//! packet is queued at its leaf class and, through each ancestor up to the root,
//! as a reference to the child it came through. For every node on that path the
//! host writes one [`RankRequest`] at offset 0 of the I/O buffer and calls
//! `pronto_rank()`; the node serves the smallest rank first, ties in arrival
//! order. The leaf level (`node == child == class`) orders packets inside the
//! class; a level above orders the node's children.
//!
//! Ranks are unsigned and compared as such: no wrap-around. A node's `vtime`
//! restarts at 0 with each busy period (`busy_period` says which), so a module
//! that keeps virtual-time tags (SFQ) forgets the tags of an older busy period and
//! stays far from overflow; see `slr-policy-wasm`'s `sfq` for the pattern.
//!
//! The offsets are in [`crate::layout::rank`]; compile-time asserts
//! tie them to the `#[repr(C)]` struct.

use core::mem::{align_of, offset_of, size_of};

use crate::abi::{check_len, layout, read, write};
use crate::{AbiError, IO_BUFFER_SIZE};

/// `pronto_rank` result a guest returns when the request in its buffer does not
/// decode (reserved bits set); any negative result is a fault.
pub const RANK_FAULT: i64 = -1;

/// Largest rank a module can express (`i64::MAX`): larger native ranks saturate.
pub const MAX_RANK: u64 = i64::MAX as u64;

/// One packet at one node of the scheduling tree: what `pronto_rank` sees.
///
/// Fields are public so a guest reads them directly; build one with
/// [`RankRequest::leaf`] and the `with_*` methods (they keep reserved fields zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct RankRequest {
    /// Packet length in bytes, IP header onward.
    pub len: u32,
    /// The packet's leaf class.
    pub class: u32,
    /// The node whose queue the rank orders (`class` at the leaf level).
    pub node: u32,
    /// The child of `node` on the packet's path (`node` itself at the leaf level).
    pub child: u32,
    /// Keyed hash of the flow's 5-tuple, stable for the flow's life.
    pub flow_hash: u64,
    /// Host monotonic time, nanoseconds.
    pub now_ns: u64,
    /// The node's virtual time: the largest rank dequeued from it in this busy
    /// period (0 when the period starts).
    pub vtime: u64,
    /// The node's busy-period number: new and larger each time the node stops
    /// being empty, never reused by any node.
    pub busy_period: u64,
    /// Weight of `child`, at least 1.
    pub weight: u32,
    /// Packets queued under `node` before this one (0: a busy period starts).
    pub queued: u32,
    /// DSCP of the packet, 0..=63.
    pub dscp: u8,
    /// Strict priority of `child`; 0 is served first.
    pub priority: u8,
    /// IP protocol number.
    pub proto: u8,
    /// Reserved, zero.
    pub reserved0: u8,
    /// Reserved, zero.
    pub reserved1: u32,
}

const _: () = {
    use layout::rank as k;
    assert!(size_of::<RankRequest>() == k::SIZE);
    assert!(align_of::<RankRequest>() == 8);
    assert!(offset_of!(RankRequest, len) == k::LEN.start);
    assert!(offset_of!(RankRequest, class) == k::CLASS.start);
    assert!(offset_of!(RankRequest, node) == k::NODE.start);
    assert!(offset_of!(RankRequest, child) == k::CHILD.start);
    assert!(offset_of!(RankRequest, flow_hash) == k::FLOW_HASH.start);
    assert!(offset_of!(RankRequest, now_ns) == k::NOW_NS.start);
    assert!(offset_of!(RankRequest, vtime) == k::VTIME.start);
    assert!(offset_of!(RankRequest, busy_period) == k::BUSY_PERIOD.start);
    assert!(offset_of!(RankRequest, weight) == k::WEIGHT.start);
    assert!(offset_of!(RankRequest, queued) == k::QUEUED.start);
    assert!(offset_of!(RankRequest, dscp) == k::DSCP);
    assert!(offset_of!(RankRequest, priority) == k::PRIORITY);
    assert!(offset_of!(RankRequest, proto) == k::PROTO);
    assert!(offset_of!(RankRequest, reserved0) == k::RESERVED0);
    assert!(offset_of!(RankRequest, reserved1) == k::RESERVED1.start);
    assert!(k::RESERVED1.end == k::SIZE);
    // The request lives in the same I/O buffer as a policy's, at offset 0.
    assert!(layout::IO_RANK.start == 0 && layout::IO_RANK.end <= IO_BUFFER_SIZE);
};

impl RankRequest {
    /// Encoded size in bytes.
    pub const SIZE: usize = layout::rank::SIZE;

    /// All-zero request (weight 0, so it does not come from a host).
    pub const ZEROED: Self = Self {
        len: 0,
        class: 0,
        node: 0,
        child: 0,
        flow_hash: 0,
        now_ns: 0,
        vtime: 0,
        busy_period: 0,
        weight: 0,
        queued: 0,
        dscp: 0,
        priority: 0,
        proto: 0,
        reserved0: 0,
        reserved1: 0,
    };

    /// A packet of `len` bytes of flow `flow_hash` at the leaf level of `class`:
    /// weight 1, priority 0, DSCP 0, time 0, busy period 0, nothing queued.
    #[must_use]
    pub const fn leaf(len: u32, class: u32, flow_hash: u64) -> Self {
        Self {
            len,
            class,
            node: class,
            child: class,
            flow_hash,
            weight: 1,
            ..Self::ZEROED
        }
    }

    /// Same packet, ranked at `node` as coming through its child `child` of
    /// `weight` (clamped to at least 1) and `priority`.
    #[must_use]
    pub const fn with_node(mut self, node: u32, child: u32, weight: u32, priority: u8) -> Self {
        self.node = node;
        self.child = child;
        self.weight = if weight == 0 { 1 } else { weight };
        self.priority = priority;
        self
    }

    /// Same packet with the node's scheduling state.
    #[must_use]
    pub const fn with_state(mut self, vtime: u64, busy_period: u64, queued: u32) -> Self {
        self.vtime = vtime;
        self.busy_period = busy_period;
        self.queued = queued;
        self
    }

    /// Same packet at host time `now_ns`.
    #[must_use]
    pub const fn with_now(mut self, now_ns: u64) -> Self {
        self.now_ns = now_ns;
        self
    }

    /// Same packet with DSCP (masked to 6 bits) and IP protocol.
    #[must_use]
    pub const fn with_dscp(mut self, dscp: u8, proto: u8) -> Self {
        self.dscp = dscp & 0x3f;
        self.proto = proto;
        self
    }

    /// Whether this is the leaf level: the rank orders packets inside `class`.
    #[must_use]
    pub const fn is_leaf(&self) -> bool {
        self.node == self.child
    }

    /// Checks the fields a host can get wrong: reserved zero, DSCP in 6 bits,
    /// weight at least 1. Guests call it before trusting the buffer.
    pub const fn validate(&self) -> Result<(), AbiError> {
        if self.reserved0 != 0 {
            return Err(AbiError::ReservedNotZero {
                what: "rank request byte 59",
                value: self.reserved0 as u32,
            });
        }
        if self.reserved1 != 0 {
            return Err(AbiError::ReservedNotZero {
                what: "rank request bytes 60..64",
                value: self.reserved1,
            });
        }
        if self.dscp > 0x3f {
            return Err(AbiError::ReservedNotZero {
                what: "rank request DSCP bits 6..8",
                value: self.dscp as u32,
            });
        }
        if self.weight == 0 {
            return Err(AbiError::ZeroWeight);
        }
        Ok(())
    }

    /// Writes the 64-byte little-endian encoding to `out[..64]`.
    pub fn encode(&self, out: &mut [u8]) -> Result<(), AbiError> {
        use layout::rank as k;
        const WHAT: &str = "rank request";
        check_len(WHAT, k::SIZE, out.len())?;
        write(WHAT, out, k::LEN, &self.len.to_le_bytes())?;
        write(WHAT, out, k::CLASS, &self.class.to_le_bytes())?;
        write(WHAT, out, k::NODE, &self.node.to_le_bytes())?;
        write(WHAT, out, k::CHILD, &self.child.to_le_bytes())?;
        write(WHAT, out, k::FLOW_HASH, &self.flow_hash.to_le_bytes())?;
        write(WHAT, out, k::NOW_NS, &self.now_ns.to_le_bytes())?;
        write(WHAT, out, k::VTIME, &self.vtime.to_le_bytes())?;
        write(WHAT, out, k::BUSY_PERIOD, &self.busy_period.to_le_bytes())?;
        write(WHAT, out, k::WEIGHT, &self.weight.to_le_bytes())?;
        write(WHAT, out, k::QUEUED, &self.queued.to_le_bytes())?;
        write(
            WHAT,
            out,
            k::DSCP..k::RESERVED0 + 1,
            &[self.dscp, self.priority, self.proto, self.reserved0],
        )?;
        write(WHAT, out, k::RESERVED1, &self.reserved1.to_le_bytes())
    }

    /// Reads and validates (see [`validate`](Self::validate)) the encoding at
    /// `bytes[..64]`; never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, AbiError> {
        use layout::rank as k;
        const WHAT: &str = "rank request";
        check_len(WHAT, k::SIZE, bytes.len())?;
        let [dscp, priority, proto, reserved0] = read::<4>(WHAT, bytes, k::DSCP..k::RESERVED0 + 1)?;
        let request = Self {
            len: u32::from_le_bytes(read(WHAT, bytes, k::LEN)?),
            class: u32::from_le_bytes(read(WHAT, bytes, k::CLASS)?),
            node: u32::from_le_bytes(read(WHAT, bytes, k::NODE)?),
            child: u32::from_le_bytes(read(WHAT, bytes, k::CHILD)?),
            flow_hash: u64::from_le_bytes(read(WHAT, bytes, k::FLOW_HASH)?),
            now_ns: u64::from_le_bytes(read(WHAT, bytes, k::NOW_NS)?),
            vtime: u64::from_le_bytes(read(WHAT, bytes, k::VTIME)?),
            busy_period: u64::from_le_bytes(read(WHAT, bytes, k::BUSY_PERIOD)?),
            weight: u32::from_le_bytes(read(WHAT, bytes, k::WEIGHT)?),
            queued: u32::from_le_bytes(read(WHAT, bytes, k::QUEUED)?),
            dscp,
            priority,
            proto,
            reserved0,
            reserved1: u32::from_le_bytes(read(WHAT, bytes, k::RESERVED1)?),
        };
        request.validate()?;
        Ok(request)
    }
}

/// The `i64` a guest returns for `rank`: ranks above [`MAX_RANK`] saturate.
#[must_use]
pub const fn rank_to_raw(rank: u64) -> i64 {
    if rank > MAX_RANK {
        i64::MAX
    } else {
        rank as i64
    }
}

/// Host side: validates a guest's raw `pronto_rank` result; negative is a fault.
pub const fn rank_from_raw(raw: i64) -> Result<u64, AbiError> {
    if raw < 0 {
        Err(AbiError::InvalidRank { raw })
    } else {
        Ok(raw as u64)
    }
}
