//! ABI v1 types, their byte layout and the checked little-endian codec.
//!
//! Every type here is plain old data: all fields are integers, byte arrays or
//! `f64`, so every bit pattern is a valid value. That is what lets the guest read
//! the host-written I/O buffer through a typed `#[repr(C)]` view (wasm32 is little
//! endian, so the typed view and the byte codec agree), while the host never
//! transmutes: it writes and reads guest memory as bytes through [`FlowRequest::encode`],
//! [`Candidate::encode`], [`encode_io`] and [`Decision::from_raw`].
//!
//! The offsets in [`layout`] are the single source of truth; compile-time asserts
//! below tie them to the `#[repr(C)]` structs so the two can never drift.

use core::mem::{align_of, offset_of, size_of};
use core::net::{IpAddr, Ipv6Addr, SocketAddr};

/// Version of the module ABI this crate defines; a guest exports it from
/// `pronto_abi_version` and the host refuses any other value.
pub const ABI_VERSION: u32 = 1;

/// Most candidates one `pronto_select` / `pronto_aggregate` call may see.
pub const MAX_CANDIDATES: usize = 256;

/// IP protocol numbers the host commonly puts in [`FlowRequest::proto`].
pub mod proto {
    /// TCP (RFC 9293).
    pub const TCP: u8 = 6;
    /// UDP (RFC 768).
    pub const UDP: u8 = 17;
}

/// Bits of [`Candidate::flags`].
pub mod flags {
    /// The candidate is reachable and accepting new flows; policies must never
    /// choose a candidate without it.
    pub const UP: u32 = 1 << 0;
    /// Bits 1..=15 are reserved for future ABI use and must be zero.
    pub const RESERVED_MASK: u32 = 0x0000_FFFE;
    /// Bits 16..=31 are operator-defined tags passed through untouched (e.g. the
    /// `time_of_day` policy's day/night sets); see [`super::Candidate::tags`].
    pub const TAG_SHIFT: u32 = 16;
}

/// Byte offsets of the ABI v1 layout (little endian, no implicit padding).
///
/// I/O buffer (exported by the guest through `pronto_io_buffer`, 8-byte aligned):
///
/// | offset | size | content |
/// | --- | --- | --- |
/// | 0 | 56 | one [`FlowRequest`](super::FlowRequest) |
/// | 56 + 40·i | 40 | [`Candidate`](super::Candidate) i, for i < `MAX_CANDIDATES` |
/// | total | 10 296 | [`IO_BUFFER_SIZE`] |
///
/// A scheduler module uses the same buffer differently: one
/// [`RankRequest`](super::RankRequest) (64 bytes) at offset 0, nothing else.
pub mod layout {
    use core::ops::Range;

    /// Offsets inside one encoded [`FlowRequest`](crate::FlowRequest) (56 bytes).
    pub mod request {
        use core::ops::Range;
        /// `u8` IP protocol number.
        pub const PROTO: usize = 0;
        /// `u8` address family: 4 or 6.
        pub const FAMILY: usize = 1;
        /// `u8` SLR level: 0 network, 1 system, 2 site.
        pub const LEVEL: usize = 2;
        /// `u8` reserved, zero.
        pub const RESERVED0: usize = 3;
        /// `u16` source port.
        pub const SRC_PORT: Range<usize> = 4..6;
        /// `u16` destination port.
        pub const DST_PORT: Range<usize> = 6..8;
        /// `u32` virtual subnet id (host-assigned).
        pub const SUBNET_ID: Range<usize> = 8..12;
        /// `u32` reserved, zero.
        pub const RESERVED1: Range<usize> = 12..16;
        /// 16-byte source address (IPv4 as `::ffff:a.b.c.d`).
        pub const SRC_ADDR: Range<usize> = 16..32;
        /// 16-byte destination address (IPv4 as `::ffff:a.b.c.d`).
        pub const DST_ADDR: Range<usize> = 32..48;
        /// `u64` wall-clock seconds since the Unix epoch when the flow arrived.
        pub const NOW_UNIX_SECS: Range<usize> = 48..56;
        /// Encoded size.
        pub const SIZE: usize = 56;
    }

    /// Offsets inside one encoded [`Candidate`](crate::Candidate) (40 bytes).
    pub mod candidate {
        use core::ops::Range;
        /// 16-byte next-hop address (IPv4 as `::ffff:a.b.c.d`).
        pub const ADDR: Range<usize> = 0..16;
        /// `f64` load reported by the next hop (0.0 idle, 1.0 full; may exceed 1).
        pub const LOAD: Range<usize> = 16..24;
        /// `f64` route cost to the next hop.
        pub const ROUTE_COST: Range<usize> = 24..32;
        /// `u32` flags, see [`crate::flags`].
        pub const FLAGS: Range<usize> = 32..36;
        /// `u32` reserved, zero.
        pub const RESERVED: Range<usize> = 36..40;
        /// Encoded size.
        pub const SIZE: usize = 40;
    }

    /// Offsets inside one encoded [`RankRequest`](crate::RankRequest) (64 bytes):
    /// the packet a scheduler module ranks, at offset 0 of the I/O buffer.
    pub mod rank {
        use core::ops::Range;
        /// `u32` packet length in bytes, IP header onward.
        pub const LEN: Range<usize> = 0..4;
        /// `u32` the packet's leaf class (host-assigned id).
        pub const CLASS: Range<usize> = 4..8;
        /// `u32` the scheduling node whose queue this rank orders (the class itself
        /// at the leaf level, an ancestor above it).
        pub const NODE: Range<usize> = 8..12;
        /// `u32` the child of `node` the packet comes through (equal to `node` at
        /// the leaf level).
        pub const CHILD: Range<usize> = 12..16;
        /// `u64` keyed hash of the flow's 5-tuple; stable for the flow's life.
        pub const FLOW_HASH: Range<usize> = 16..24;
        /// `u64` host monotonic time in nanoseconds.
        pub const NOW_NS: Range<usize> = 24..32;
        /// `u64` the node's virtual time: the largest rank dequeued from it in its
        /// current busy period, 0 when the busy period starts.
        pub const VTIME: Range<usize> = 32..40;
        /// `u64` the node's busy-period number: a new, larger number each time the
        /// node goes from empty to backlogged, never reused (by any node).
        pub const BUSY_PERIOD: Range<usize> = 40..48;
        /// `u32` weight of `child` (at least 1).
        pub const WEIGHT: Range<usize> = 48..52;
        /// `u32` packets queued under `node` before this one.
        pub const QUEUED: Range<usize> = 52..56;
        /// `u8` DSCP of the packet (0..=63).
        pub const DSCP: usize = 56;
        /// `u8` strict priority of `child` (0 is served first).
        pub const PRIORITY: usize = 57;
        /// `u8` IP protocol number of the packet.
        pub const PROTO: usize = 58;
        /// `u8` reserved, zero.
        pub const RESERVED0: usize = 59;
        /// `u32` reserved, zero.
        pub const RESERVED1: Range<usize> = 60..64;
        /// Encoded size.
        pub const SIZE: usize = 64;
    }

    /// Where a scheduler's [`RankRequest`](crate::RankRequest) sits in the I/O buffer.
    pub const IO_RANK: Range<usize> = 0..rank::SIZE;

    /// Where the request starts in the I/O buffer.
    pub const IO_REQUEST: Range<usize> = 0..request::SIZE;
    /// Where candidate 0 starts in the I/O buffer.
    pub const IO_CANDIDATES_OFFSET: usize = request::SIZE;
    /// Total size of the guest's I/O buffer.
    pub const IO_BUFFER_SIZE: usize =
        IO_CANDIDATES_OFFSET + crate::MAX_CANDIDATES * candidate::SIZE;

    /// Byte range of candidate `index` inside the I/O buffer.
    #[must_use]
    pub const fn io_candidate(index: usize) -> Range<usize> {
        let start = IO_CANDIDATES_OFFSET + index * candidate::SIZE;
        start..start + candidate::SIZE
    }
}

pub use layout::IO_BUFFER_SIZE;

/// Why bytes could not be encoded or decoded, or a module's answer was invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AbiError {
    /// A buffer is shorter than the layout needs.
    #[error("buffer too short for {what}: need {needed} bytes, have {available}")]
    BufferTooShort {
        /// What was being read or written.
        what: &'static str,
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// More candidates than [`MAX_CANDIDATES`], or a negative count.
    #[error("candidate count {count} outside 0..={max}")]
    TooManyCandidates {
        /// Count asked for.
        count: i64,
        /// The limit, [`MAX_CANDIDATES`].
        max: usize,
    },
    /// Address family byte is neither 4 nor 6.
    #[error("unknown address family {value} (expected 4 or 6)")]
    UnknownFamily {
        /// The byte found.
        value: u8,
    },
    /// Level byte is not 0, 1 or 2.
    #[error("unknown SLR level {value} (expected 0 network, 1 system, 2 site)")]
    UnknownLevel {
        /// The byte found.
        value: u8,
    },
    /// Reserved bytes or flag bits are set.
    #[error("reserved field {what} is not zero (found {value:#x})")]
    ReservedNotZero {
        /// Which field.
        what: &'static str,
        /// What it held.
        value: u32,
    },
    /// A guest's `pronto_select` result is neither `-1` nor an index below the count.
    #[error("module returned decision {raw} for {candidates} candidates")]
    InvalidDecision {
        /// The raw `i32` the guest returned.
        raw: i32,
        /// Candidates it was given.
        candidates: usize,
    },
    /// A rank request's weight is 0; weights are at least 1.
    #[error("rank request weight is 0 (weights are at least 1)")]
    ZeroWeight,
    /// A guest's `pronto_rank` result is negative: the guest reported a fault.
    #[error("module returned rank {raw}: negative means fault")]
    InvalidRank {
        /// The raw `i64` the guest returned.
        raw: i64,
    },
}

/// Address family of a [`FlowRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum AddressFamily {
    /// IPv4 (addresses carried v4-mapped).
    V4 = 4,
    /// IPv6.
    V6 = 6,
}

impl AddressFamily {
    /// Parses the wire byte.
    pub const fn from_u8(value: u8) -> Result<Self, AbiError> {
        match value {
            4 => Ok(Self::V4),
            6 => Ok(Self::V6),
            _ => Err(AbiError::UnknownFamily { value }),
        }
    }
}

/// Which SLR level asks (DESIGN.md §1): the candidates are AS gateways, site SLRs
/// or host servers respectively.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Level {
    /// Network-level SLR choosing among ASes.
    Network = 0,
    /// System-level SLR choosing among sites.
    System = 1,
    /// Site-level SLR choosing among host servers.
    Site = 2,
}

impl Level {
    /// Parses the wire byte.
    pub const fn from_u8(value: u8) -> Result<Self, AbiError> {
        match value {
            0 => Ok(Self::Network),
            1 => Ok(Self::System),
            2 => Ok(Self::Site),
            _ => Err(AbiError::UnknownLevel { value }),
        }
    }
}

/// Maps an address to its 16-byte ABI form (IPv4 as `::ffff:a.b.c.d`).
#[must_use]
pub const fn addr_bytes(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Inverse of [`addr_bytes`]: v4-mapped addresses come back as IPv4.
#[must_use]
pub fn addr_from_bytes(bytes: [u8; 16]) -> IpAddr {
    Ipv6Addr::from(bytes).to_canonical()
}

/// A new flow asking for a next hop: what `pronto_select` sees.
///
/// Fields are public so a guest reads them directly; use [`FlowRequest::new`] and
/// the `with_*` methods to build one (they keep the reserved fields zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct FlowRequest {
    /// IP protocol number, see [`proto`].
    pub proto: u8,
    /// Address family byte (4 or 6), see [`AddressFamily`].
    pub family: u8,
    /// SLR level byte, see [`Level`].
    pub level: u8,
    reserved0: u8,
    /// Client's source port.
    pub src_port: u16,
    /// Destination (service) port.
    pub dst_port: u16,
    /// Host-assigned id of the virtual subnet the destination belongs to.
    pub subnet_id: u32,
    reserved1: u32,
    /// Client address, 16 bytes (IPv4 v4-mapped).
    pub src_addr: [u8; 16],
    /// Destination VIP, 16 bytes (IPv4 v4-mapped).
    pub dst_addr: [u8; 16],
    /// Wall-clock seconds since the Unix epoch, so time-based policies need no
    /// host call.
    pub now_unix_secs: u64,
}

/// One next hop the policy may choose: what `pronto_select` sees, one per index.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[repr(C)]
pub struct Candidate {
    /// Next-hop address, 16 bytes (IPv4 v4-mapped).
    pub addr: [u8; 16],
    /// Load reported in the last state update (0.0 idle, 1.0 full).
    pub load: f64,
    /// Route cost to the next hop.
    pub route_cost: f64,
    /// Flag bits, see [`flags`].
    pub flags: u32,
    reserved: u32,
}

/// The guest's view of its I/O buffer: the layout of [`layout`] as a type.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(8))]
pub struct IoBuffer {
    /// The request, written by the host before `pronto_select`.
    pub request: FlowRequest,
    /// Candidates; the first `n` are valid for a call with count `n`.
    pub candidates: [Candidate; MAX_CANDIDATES],
}

// The typed views and the byte layout are one definition: these fail the build if
// either drifts.
const _: () = {
    use layout::{candidate as c, request as r};
    assert!(size_of::<FlowRequest>() == r::SIZE);
    assert!(align_of::<FlowRequest>() == 8);
    assert!(offset_of!(FlowRequest, proto) == r::PROTO);
    assert!(offset_of!(FlowRequest, family) == r::FAMILY);
    assert!(offset_of!(FlowRequest, level) == r::LEVEL);
    assert!(offset_of!(FlowRequest, reserved0) == r::RESERVED0);
    assert!(offset_of!(FlowRequest, src_port) == r::SRC_PORT.start);
    assert!(offset_of!(FlowRequest, dst_port) == r::DST_PORT.start);
    assert!(offset_of!(FlowRequest, subnet_id) == r::SUBNET_ID.start);
    assert!(offset_of!(FlowRequest, reserved1) == r::RESERVED1.start);
    assert!(offset_of!(FlowRequest, src_addr) == r::SRC_ADDR.start);
    assert!(offset_of!(FlowRequest, dst_addr) == r::DST_ADDR.start);
    assert!(offset_of!(FlowRequest, now_unix_secs) == r::NOW_UNIX_SECS.start);
    assert!(r::NOW_UNIX_SECS.end == r::SIZE);

    assert!(size_of::<Candidate>() == c::SIZE);
    assert!(align_of::<Candidate>() == 8);
    assert!(offset_of!(Candidate, addr) == c::ADDR.start);
    assert!(offset_of!(Candidate, load) == c::LOAD.start);
    assert!(offset_of!(Candidate, route_cost) == c::ROUTE_COST.start);
    assert!(offset_of!(Candidate, flags) == c::FLAGS.start);
    assert!(offset_of!(Candidate, reserved) == c::RESERVED.start);
    assert!(c::RESERVED.end == c::SIZE);

    assert!(offset_of!(IoBuffer, request) == layout::IO_REQUEST.start);
    assert!(offset_of!(IoBuffer, candidates) == layout::IO_CANDIDATES_OFFSET);
    assert!(size_of::<IoBuffer>() == IO_BUFFER_SIZE);
    assert!(IO_BUFFER_SIZE.is_multiple_of(8));
};

/// Fails with [`AbiError::BufferTooShort`] unless `len >= needed`.
pub(crate) const fn check_len(
    what: &'static str,
    needed: usize,
    len: usize,
) -> Result<(), AbiError> {
    if len < needed {
        Err(AbiError::BufferTooShort {
            what,
            needed,
            available: len,
        })
    } else {
        Ok(())
    }
}

/// Copies `N` bytes at `range`; callers have checked the length, and a short slice
/// still yields an error rather than a panic.
pub(crate) fn read<const N: usize>(
    what: &'static str,
    bytes: &[u8],
    range: core::ops::Range<usize>,
) -> Result<[u8; N], AbiError> {
    bytes
        .get(range.clone())
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .ok_or(AbiError::BufferTooShort {
            what,
            needed: range.end,
            available: bytes.len(),
        })
}

pub(crate) fn write(
    what: &'static str,
    out: &mut [u8],
    range: core::ops::Range<usize>,
    value: &[u8],
) -> Result<(), AbiError> {
    let available = out.len();
    match out.get_mut(range.clone()) {
        Some(dst) if dst.len() == value.len() => {
            dst.copy_from_slice(value);
            Ok(())
        }
        _ => Err(AbiError::BufferTooShort {
            what,
            needed: range.end,
            available,
        }),
    }
}

/// Bytes `at..at + 8` of a 16-byte address as a little-endian word.
const fn half_le(addr: &[u8; 16], at: usize) -> u64 {
    let mut word = 0;
    let mut i = 8;
    while i > 0 {
        i -= 1;
        word = word << 8 | addr[at + i] as u64;
    }
    word
}

/// Inverse of two [`half_le`]s.
const fn addr_le(first: u64, second: u64) -> [u8; 16] {
    let (a, b) = (first.to_le_bytes(), second.to_le_bytes());
    let mut out = [0; 16];
    let mut i = 0;
    while i < 8 {
        out[i] = a[i];
        out[8 + i] = b[i];
        i += 1;
    }
    out
}

impl FlowRequest {
    /// Encoded size in bytes.
    pub const SIZE: usize = layout::request::SIZE;

    /// Words of [`FlowRequest::to_words`]: the 56-byte encoding in 8-byte words.
    pub const WORDS: usize = layout::request::SIZE / 8;

    /// All-zero request (family 0, so it does not decode); the initial buffer content.
    pub const ZEROED: Self = Self {
        proto: 0,
        family: 0,
        level: 0,
        reserved0: 0,
        src_port: 0,
        dst_port: 0,
        subnet_id: 0,
        reserved1: 0,
        src_addr: [0; 16],
        dst_addr: [0; 16],
        now_unix_secs: 0,
    };

    /// A request for a flow from `src` to `dst` over IP protocol `proto`, at the
    /// site level, subnet 0, time 0. The family is IPv4 only if both ends are IPv4.
    #[must_use]
    pub const fn new(proto: u8, src: SocketAddr, dst: SocketAddr) -> Self {
        let family = match (src, dst) {
            (SocketAddr::V4(_), SocketAddr::V4(_)) => AddressFamily::V4,
            _ => AddressFamily::V6,
        };
        Self {
            proto,
            family: family as u8,
            level: Level::Site as u8,
            reserved0: 0,
            src_port: src.port(),
            dst_port: dst.port(),
            subnet_id: 0,
            reserved1: 0,
            src_addr: addr_bytes(src.ip()),
            dst_addr: addr_bytes(dst.ip()),
            now_unix_secs: 0,
        }
    }

    /// Same request with the virtual subnet id set.
    #[must_use]
    pub const fn with_subnet(mut self, subnet_id: u32) -> Self {
        self.subnet_id = subnet_id;
        self
    }

    /// Same request with the SLR level set.
    #[must_use]
    pub const fn with_level(mut self, level: Level) -> Self {
        self.level = level as u8;
        self
    }

    /// Same request with the arrival time set.
    #[must_use]
    pub const fn with_now(mut self, now_unix_secs: u64) -> Self {
        self.now_unix_secs = now_unix_secs;
        self
    }

    /// Client address (IPv4 if v4-mapped).
    #[must_use]
    pub fn src_ip(&self) -> IpAddr {
        addr_from_bytes(self.src_addr)
    }

    /// Destination VIP (IPv4 if v4-mapped).
    #[must_use]
    pub fn dst_ip(&self) -> IpAddr {
        addr_from_bytes(self.dst_addr)
    }

    /// The 56-byte little-endian encoding, built in a local array (every offset is
    /// a constant inside it, so nothing can panic) and copied out in one go by
    /// [`FlowRequest::encode`].
    #[must_use]
    #[inline]
    pub fn to_bytes(&self) -> [u8; layout::request::SIZE] {
        use layout::request as r;
        let mut out = [0; r::SIZE];
        out[r::PROTO] = self.proto;
        out[r::FAMILY] = self.family;
        out[r::LEVEL] = self.level;
        out[r::RESERVED0] = self.reserved0;
        out[r::SRC_PORT].copy_from_slice(&self.src_port.to_le_bytes());
        out[r::DST_PORT].copy_from_slice(&self.dst_port.to_le_bytes());
        out[r::SUBNET_ID].copy_from_slice(&self.subnet_id.to_le_bytes());
        out[r::RESERVED1].copy_from_slice(&self.reserved1.to_le_bytes());
        out[r::SRC_ADDR].copy_from_slice(&self.src_addr);
        out[r::DST_ADDR].copy_from_slice(&self.dst_addr);
        out[r::NOW_UNIX_SECS].copy_from_slice(&self.now_unix_secs.to_le_bytes());
        out
    }

    /// Writes the 56-byte little-endian encoding to `out[..56]`.
    pub fn encode(&self, out: &mut [u8]) -> Result<(), AbiError> {
        write(
            "flow request",
            out,
            0..layout::request::SIZE,
            &self.to_bytes(),
        )
    }

    /// The 56-byte encoding as seven little-endian words, word `k` being bytes
    /// `8k..8k + 8` of [`FlowRequest::to_bytes`]: the arguments `w0..w6` of
    /// `pronto_select_v2` ([`crate::export::SELECT_V2`]). Built from the fields
    /// with shifts, no byte array in between.
    #[must_use]
    #[inline]
    pub const fn to_words(&self) -> [u64; Self::WORDS] {
        [
            self.proto as u64
                | (self.family as u64) << 8
                | (self.level as u64) << 16
                | (self.reserved0 as u64) << 24
                | (self.src_port as u64) << 32
                | (self.dst_port as u64) << 48,
            self.subnet_id as u64 | (self.reserved1 as u64) << 32,
            half_le(&self.src_addr, 0),
            half_le(&self.src_addr, 8),
            half_le(&self.dst_addr, 0),
            half_le(&self.dst_addr, 8),
            self.now_unix_secs,
        ]
    }

    /// Inverse of [`FlowRequest::to_words`]: every field as the words carry it,
    /// unvalidated, like the guest's typed view of the I/O buffer (every bit
    /// pattern is a value; [`FlowRequest::decode`] of [`FlowRequest::to_bytes`]
    /// validates).
    #[must_use]
    #[inline]
    pub const fn from_words(words: [u64; Self::WORDS]) -> Self {
        let [w0, w1, src_hi, src_lo, dst_hi, dst_lo, now_unix_secs] = words;
        Self {
            proto: w0 as u8,
            family: (w0 >> 8) as u8,
            level: (w0 >> 16) as u8,
            reserved0: (w0 >> 24) as u8,
            src_port: (w0 >> 32) as u16,
            dst_port: (w0 >> 48) as u16,
            subnet_id: w1 as u32,
            reserved1: (w1 >> 32) as u32,
            src_addr: addr_le(src_hi, src_lo),
            dst_addr: addr_le(dst_hi, dst_lo),
            now_unix_secs,
        }
    }

    /// Reads and validates the encoding at `bytes[..56]` (family, level, reserved
    /// fields); never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, AbiError> {
        use layout::request as r;
        const WHAT: &str = "flow request";
        check_len(WHAT, r::SIZE, bytes.len())?;
        let [proto, family, level, reserved0] = read::<4>(WHAT, bytes, 0..4)?;
        AddressFamily::from_u8(family)?;
        Level::from_u8(level)?;
        if reserved0 != 0 {
            return Err(AbiError::ReservedNotZero {
                what: "flow request byte 3",
                value: u32::from(reserved0),
            });
        }
        let reserved1 = u32::from_le_bytes(read(WHAT, bytes, r::RESERVED1)?);
        if reserved1 != 0 {
            return Err(AbiError::ReservedNotZero {
                what: "flow request bytes 12..16",
                value: reserved1,
            });
        }
        Ok(Self {
            proto,
            family,
            level,
            reserved0,
            src_port: u16::from_le_bytes(read(WHAT, bytes, r::SRC_PORT)?),
            dst_port: u16::from_le_bytes(read(WHAT, bytes, r::DST_PORT)?),
            subnet_id: u32::from_le_bytes(read(WHAT, bytes, r::SUBNET_ID)?),
            reserved1,
            src_addr: read(WHAT, bytes, r::SRC_ADDR)?,
            dst_addr: read(WHAT, bytes, r::DST_ADDR)?,
            now_unix_secs: u64::from_le_bytes(read(WHAT, bytes, r::NOW_UNIX_SECS)?),
        })
    }
}

impl Candidate {
    /// Encoded size in bytes.
    pub const SIZE: usize = layout::candidate::SIZE;

    /// All-zero candidate (down, load 0).
    pub const ZEROED: Self = Self {
        addr: [0; 16],
        load: 0.0,
        route_cost: 0.0,
        flags: 0,
        reserved: 0,
    };

    /// A candidate with the given flags; reserved flag bits are cleared.
    #[must_use]
    pub const fn new(addr: IpAddr, load: f64, route_cost: f64, flags: u32) -> Self {
        Self {
            addr: addr_bytes(addr),
            load,
            route_cost,
            flags: flags & !flags::RESERVED_MASK,
            reserved: 0,
        }
    }

    /// An UP candidate.
    #[must_use]
    pub const fn up(addr: IpAddr, load: f64, route_cost: f64) -> Self {
        Self::new(addr, load, route_cost, flags::UP)
    }

    /// A candidate that is not UP (must never be chosen).
    #[must_use]
    pub const fn down(addr: IpAddr, load: f64, route_cost: f64) -> Self {
        Self::new(addr, load, route_cost, 0)
    }

    /// Same candidate with operator tag bits (flags 16..=31) replaced by `tags`.
    #[must_use]
    pub const fn with_tags(mut self, tags: u16) -> Self {
        self.flags = (self.flags & 0xFFFF) | ((tags as u32) << flags::TAG_SHIFT);
        self
    }

    /// Whether the UP flag is set.
    #[must_use]
    pub const fn is_up(&self) -> bool {
        self.flags & flags::UP != 0
    }

    /// Operator tag bits (flags 16..=31).
    #[must_use]
    pub const fn tags(&self) -> u16 {
        (self.flags >> flags::TAG_SHIFT) as u16
    }

    /// Next-hop address (IPv4 if v4-mapped).
    #[must_use]
    pub fn ip(&self) -> IpAddr {
        addr_from_bytes(self.addr)
    }

    /// The 40-byte little-endian encoding, built in a local array (constant
    /// offsets inside it, so nothing can panic) and copied out in one go by
    /// [`Candidate::encode`].
    #[must_use]
    #[inline]
    pub fn to_bytes(&self) -> [u8; layout::candidate::SIZE] {
        use layout::candidate as c;
        let mut out = [0; c::SIZE];
        out[c::ADDR].copy_from_slice(&self.addr);
        out[c::LOAD].copy_from_slice(&self.load.to_le_bytes());
        out[c::ROUTE_COST].copy_from_slice(&self.route_cost.to_le_bytes());
        out[c::FLAGS].copy_from_slice(&self.flags.to_le_bytes());
        out[c::RESERVED].copy_from_slice(&self.reserved.to_le_bytes());
        out
    }

    /// Writes the 40-byte little-endian encoding to `out[..40]`.
    pub fn encode(&self, out: &mut [u8]) -> Result<(), AbiError> {
        write(
            "candidate",
            out,
            0..layout::candidate::SIZE,
            &self.to_bytes(),
        )
    }

    /// Reads and validates the encoding at `bytes[..40]` (reserved bits zero);
    /// never panics. Loads and costs are passed through as is, NaN included.
    pub fn decode(bytes: &[u8]) -> Result<Self, AbiError> {
        use layout::candidate as c;
        const WHAT: &str = "candidate";
        check_len(WHAT, c::SIZE, bytes.len())?;
        let flags = u32::from_le_bytes(read(WHAT, bytes, c::FLAGS)?);
        if flags & flags::RESERVED_MASK != 0 {
            return Err(AbiError::ReservedNotZero {
                what: "candidate flags",
                value: flags & flags::RESERVED_MASK,
            });
        }
        let reserved = u32::from_le_bytes(read(WHAT, bytes, c::RESERVED)?);
        if reserved != 0 {
            return Err(AbiError::ReservedNotZero {
                what: "candidate bytes 36..40",
                value: reserved,
            });
        }
        Ok(Self {
            addr: read(WHAT, bytes, c::ADDR)?,
            load: f64::from_le_bytes(read(WHAT, bytes, c::LOAD)?),
            route_cost: f64::from_le_bytes(read(WHAT, bytes, c::ROUTE_COST)?),
            flags,
            reserved,
        })
    }
}

impl IoBuffer {
    /// All-zero buffer.
    pub const ZEROED: Self = Self {
        request: FlowRequest::ZEROED,
        candidates: [Candidate::ZEROED; MAX_CANDIDATES],
    };
}

/// Checks a candidate count against [`MAX_CANDIDATES`].
pub fn check_count(count: usize) -> Result<(), AbiError> {
    if count > MAX_CANDIDATES {
        Err(AbiError::TooManyCandidates {
            count: i64::try_from(count).unwrap_or(i64::MAX),
            max: MAX_CANDIDATES,
        })
    } else {
        Ok(())
    }
}

/// Writes candidates back to back (40 bytes each) from `out[0]`; `out` is the
/// candidate region of the I/O buffer (`IO_CANDIDATES_OFFSET..`). Returns the bytes
/// written. Hosts whose request changes per flow but whose candidates do not can
/// call this once per table update.
pub fn encode_candidates(candidates: &[Candidate], out: &mut [u8]) -> Result<usize, AbiError> {
    check_count(candidates.len())?;
    let needed = candidates.len() * Candidate::SIZE;
    check_len("candidates", needed, out.len())?;
    for (candidate, chunk) in candidates.iter().zip(out.chunks_exact_mut(Candidate::SIZE)) {
        candidate.encode(chunk)?;
    }
    Ok(needed)
}

/// Writes the request and the candidates into an I/O-buffer-shaped `out` (offset 0:
/// request; offset 56: candidates). Returns the bytes written.
pub fn encode_io(
    request: &FlowRequest,
    candidates: &[Candidate],
    out: &mut [u8],
) -> Result<usize, AbiError> {
    check_count(candidates.len())?;
    let needed = layout::IO_CANDIDATES_OFFSET + candidates.len() * Candidate::SIZE;
    check_len("I/O buffer", needed, out.len())?;
    request.encode(out)?;
    let rest = out
        .get_mut(layout::IO_CANDIDATES_OFFSET..)
        .ok_or(AbiError::BufferTooShort {
            what: "I/O buffer",
            needed,
            available: 0,
        })?;
    encode_candidates(candidates, rest)?;
    Ok(needed)
}

/// Decodes `n` back-to-back candidates from `bytes` into `out[..n]` and returns that
/// slice; no allocation, never panics.
pub fn decode_candidates<'o>(
    bytes: &[u8],
    n: usize,
    out: &'o mut [Candidate],
) -> Result<&'o [Candidate], AbiError> {
    check_count(n)?;
    check_len("candidates", n * Candidate::SIZE, bytes.len())?;
    let available = out.len();
    let out = out.get_mut(..n).ok_or(AbiError::BufferTooShort {
        what: "candidate output slice",
        needed: n,
        available,
    })?;
    for (slot, chunk) in out.iter_mut().zip(bytes.chunks_exact(Candidate::SIZE)) {
        *slot = Candidate::decode(chunk)?;
    }
    Ok(out)
}

/// Decodes an I/O-buffer-shaped `bytes` holding a request and `n` candidates.
pub fn decode_io<'o>(
    bytes: &[u8],
    n: usize,
    out: &'o mut [Candidate],
) -> Result<(FlowRequest, &'o [Candidate]), AbiError> {
    check_count(n)?;
    check_len(
        "I/O buffer",
        layout::IO_CANDIDATES_OFFSET + n * Candidate::SIZE,
        bytes.len(),
    )?;
    let request = FlowRequest::decode(bytes)?;
    let rest = bytes
        .get(layout::IO_CANDIDATES_OFFSET..)
        .unwrap_or_default();
    Ok((request, decode_candidates(rest, n, out)?))
}

/// `pronto_select` result meaning "refuse this flow".
pub const DECISION_REJECT: i32 = -1;
/// `pronto_select` result a guest returns when its own input was invalid (count out
/// of range) or its policy produced an out-of-range index; the host counts a fault.
pub const DECISION_FAULT: i32 = -2;

/// A policy's answer for one new flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Pin the flow to candidate `index` (an index into the candidates slice).
    Select(usize),
    /// Refuse the flow (e.g. no candidate is up).
    Reject,
}

impl Decision {
    /// The `i32` a guest returns from `pronto_select` given `n_candidates`:
    /// the index, [`DECISION_REJECT`], or [`DECISION_FAULT`] for an index `>= n`.
    #[must_use]
    pub const fn to_raw(self, n_candidates: usize) -> i32 {
        match self {
            Self::Reject => DECISION_REJECT,
            Self::Select(index) if index < n_candidates && index < MAX_CANDIDATES => index as i32,
            Self::Select(_) => DECISION_FAULT,
        }
    }

    /// Host side: validates a guest's raw result for a call with `n_candidates`.
    pub const fn from_raw(raw: i32, n_candidates: usize) -> Result<Self, AbiError> {
        if raw == DECISION_REJECT {
            return Ok(Self::Reject);
        }
        if raw >= 0 && (raw as usize) < n_candidates {
            return Ok(Self::Select(raw as usize));
        }
        Err(AbiError::InvalidDecision {
            raw,
            candidates: n_candidates,
        })
    }
}
