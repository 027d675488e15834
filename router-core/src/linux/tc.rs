//! Kernel offload of a share tree (DESIGN.md §7, realisation (a)): an HTB
//! hierarchy with u32 source-prefix filters on an egress link, programmed over
//! rtnetlink.
//!
//! # What is built
//!
//! A [`ShareTreeConfig`] (link rate, classes with weights and children, source
//! prefixes mapped to leaves) becomes, on link `DEV`:
//!
//! ```text
//! qdisc htb 1: root default <default leaf>
//!   class 1:1     rate = ceil = link rate
//!     class 1:ID  rate = parent rate * weight / sum of sibling weights
//!                 ceil = link rate (spare bandwidth is borrowed), quantum ∝ rate
//!       ...
//! filter parent 1: prio B   protocol ip   u32 match ip src P/L   flowid 1:LEAF
//! filter parent 1: prio B+1 protocol ipv6 u32 match ip6 src P/L  flowid 1:LEAF
//! filter parent 1: prio B+2 protocol all  u32 (no key)           flowid 1:DEFAULT
//! ```
//!
//! With every class backlogged each leaf gets its rate, which is its weight
//! share of the link; an idle class's rate is lent to the others by HTB's
//! deficit round robin, in proportion to their quanta, which are proportional
//! to their rates. Two traps make that split wrong, and both are avoided here:
//! HTB's default quantum (`rate / r2q` clamped to 1000..200000 bytes) is not
//! proportional, and a quantum smaller than a packet degenerates to one packet
//! per turn, i.e. an equal split by packets. With GSO/TSO the qdisc sees
//! packets of up to the link's `gso_max_size` (64 KiB), not the MTU, so the
//! slowest leaf's quantum is that size (measured on a veth: spare bandwidth of
//! a 20/30 pair split 46/54 to 48/52 with 1600-byte quanta, 40/60 with 64 KiB
//! ones; `examples/htb_share.rs`). Inside one
//! family, prefixes are tried longest first (u32 node order), so a /24 inside a
//! /16 of another class wins.
//!
//! # Messages
//!
//! netlink-packet-route models neither HTB nor its rate tables, so the qdisc and
//! class options are built here as raw attributes (`TCA_HTB_INIT`,
//! `TCA_HTB_PARMS`, `TCA_HTB_RTAB`/`CTAB`, `TCA_HTB_RATE64`/`CEIL64`) in the
//! byte layout of `include/uapi/linux/pkt_sched.h`, and sent with rtnetlink's
//! `Handle::request`; u32 selectors too, so every byte is ours and tested
//! against what iproute2 6.1 sends for the same command (see the tests). Two
//! deliberate differences from `tc`: the quantum is always explicit (see
//! above), and the burst in ticks is computed without iproute2's truncation to
//! whole microseconds, which makes `tc`'s default burst 0 above ~10 Gbit/s.
//! The rate tables are computed exactly like iproute2's `tc_calc_rtable`; the
//! kernel ignores them when the link layer is set (it is: Ethernet), but HTB
//! still requires them.
//!
//! # Apply, update, remove
//!
//! [`apply_share_tree`] is idempotent and changes as little as it can:
//!
//! 1. The root qdisc is created only if the link's root is not already
//!    `htb 1:`. HTB cannot change its default class in place, so the default
//!    is enforced by the catch-all filter instead.
//! 2. Classes are created or changed in place (`RTM_NEWTCLASS` with
//!    `NLM_F_CREATE`, parents first), and only those whose rate, ceil, burst or
//!    quantum differ from the kernel's dump: their counters and queues survive
//!    a weight change. A class that moved to another parent cannot be changed
//!    in place (HTB ignores the new parent), so then the whole qdisc is rebuilt.
//! 3. Filters live in one of two priority bands (10-12 and 20-22). If the live
//!    band differs from the wanted filters, the new set is installed in the
//!    other band before the old one is deleted, catch-all first, so every
//!    packet is classified by the old or the new set, never by neither.
//! 4. Classes no longer configured are deleted, deepest first.
//!
//! [`remove_share_tree`] deletes the root qdisc if it is ours (`htb 1:`).

use crate::classify::VirtualSubnet;
use crate::queue::SourceClassifier;
use crate::sched::{ClassConfig, ClassId, LinkScheduler, SchedError};
use futures::StreamExt;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::tc::{
    TcAttribute, TcFilterU32Option, TcHandle, TcMessage, TcOption, TcStats2, TcU32Selector,
    TcXstats,
};
use rtnetlink::packet_core::{
    DefaultNla, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage,
    NetlinkPayload, Nla, NlaBuffer, NlasIterator,
};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Major number of the HTB qdisc this module owns (`htb 1:`).
pub const HTB_MAJOR: u16 = 1;
/// Minor of the root class (`1:1`), whose rate and ceil are the link rate.
pub const ROOT_CLASS_MINOR: u16 = 1;
/// Most classes in a tree, the root class not counted.
pub const MAX_CLASSES: usize = 1024;
/// Deepest a configured class may sit below the root class: HTB has 8 levels
/// (`TC_HTB_MAXDEPTH`) and the root class takes one.
pub const MAX_DEPTH: usize = 7;
/// Most source-prefix filters per address family: u32 node ids are 12 bits.
pub const MAX_FILTERS_PER_FAMILY: usize = 0xfff;
/// Largest quantum given to a class; beyond it quanta stop being proportional
/// (with a 64 KiB floor: leaf rates 256 times the slowest leaf's). A round of
/// HTB's deficit round robin lasts the sum of the quanta, so unbounded quanta
/// would make borrowing arbitrarily bursty.
pub const MAX_QUANTUM: u32 = 1 << 24;
/// Quantum floor when the link's GSO size is unknown: Linux's default
/// `gso_max_size`.
pub const DEFAULT_QUANTUM_FLOOR: u32 = 65_536;
/// Most objects read from one kernel dump.
const MAX_DUMP: usize = 65_536;

const TC_H_ROOT: u32 = 0xffff_ffff;
/// First priority of each filter band: IPv4 at +0, IPv6 at +1, catch-all at +2.
const BANDS: [u16; 2] = [10, 20];

const TCA_HTB_PARMS: u16 = 1;
const TCA_HTB_INIT: u16 = 2;
const TCA_HTB_CTAB: u16 = 3;
const TCA_HTB_RTAB: u16 = 4;
const TCA_HTB_RATE64: u16 = 6;
const TCA_HTB_CEIL64: u16 = 7;
const TC_HTB_PROTOVER: u32 = 3;
/// HTB's default rate-to-quantum divisor; unused here (quanta are explicit)
/// but part of `TCA_HTB_INIT`.
const HTB_R2Q: u32 = 10;
const TCA_U32_CLASSID: u16 = 1;
const TCA_U32_SEL: u16 = 5;
const TC_U32_TERMINAL: u8 = 1;
const TC_LINKLAYER_ETHERNET: u8 = 1;
const TCA_OPTIONS: u16 = 2;
/// The attribute type bits (without `NLA_F_NESTED` / `NLA_F_NET_BYTEORDER`).
const NLA_TYPE_MASK: u16 = 0x3fff;

/// EtherType of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// Every protocol (`protocol all`).
pub const ETH_P_ALL: u16 = 0x0003;

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// A share tree for one egress link: what [`apply_share_tree`] realises as HTB
/// and [`ShareTreeConfig::install_userspace`] as the userspace scheduler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareTreeConfig {
    /// Link rate in bits per second: the root class's rate, and every class's
    /// ceil unless it sets its own.
    pub link_rate_bps: u64,
    /// Classes under the root, each with its children.
    pub classes: Vec<ShareClassConfig>,
    /// Source prefixes (VIP subnets) mapped to leaf classes.
    pub filters: Vec<SourceFilter>,
    /// The leaf that carries packets no filter matches (`id` of a leaf).
    pub default_class: u16,
    /// Largest frame on the link in bytes: sizes the rate tables (as `tc`'s
    /// `mtu`, default 1600), the smallest burst and the smallest quantum.
    pub mtu: u32,
    /// Burst allowance in time at each class's rate; the burst is at least
    /// `rate / HZ + mtu` (`tc`'s default), more if this asks for more.
    pub burst: Duration,
    /// The slowest leaf's quantum in bytes (the others' are proportional to
    /// their rates). It must be at least the largest packet the qdisc sees, or
    /// spare bandwidth is split by packets (see the module docs). `None`: the
    /// link's largest GSO size, read when applying (at least the mtu;
    /// [`DEFAULT_QUANTUM_FLOOR`] for [`plan`](Self::plan)).
    pub quantum_floor: Option<u32>,
}

impl ShareTreeConfig {
    /// A tree with no classes yet for a link of `link_rate_bps` bits/s.
    pub fn new(link_rate_bps: u64) -> Self {
        Self {
            link_rate_bps,
            classes: Vec::new(),
            filters: Vec::new(),
            default_class: 0,
            mtu: 1600,
            burst: Duration::ZERO,
            quantum_floor: None,
        }
    }

    /// Adds a top-level class.
    #[must_use]
    pub fn with_class(mut self, class: ShareClassConfig) -> Self {
        self.classes.push(class);
        self
    }

    /// Maps sources in `subnet` to leaf `class`.
    #[must_use]
    pub fn with_filter(mut self, subnet: VirtualSubnet, class: u16) -> Self {
        self.filters.push(SourceFilter { subnet, class });
        self
    }

    /// Sets the default leaf.
    #[must_use]
    pub fn with_default(mut self, class: u16) -> Self {
        self.default_class = class;
        self
    }

    /// Checks the tree and computes every class's rate, ceil, burst and
    /// quantum, and the filter order.
    pub fn plan(&self, clock: &PschedClock) -> Result<HtbPlan, ShareTreeError> {
        plan(self, clock)
    }

    /// Each leaf's share of the link when every leaf is backlogged: its rate
    /// over the link rate, by class id.
    pub fn leaf_shares(&self) -> Result<BTreeMap<u16, f64>, ShareTreeError> {
        let plan = self.plan(&PschedClock::HIGH_RES)?;
        let link = plan.classes.first().map_or(1, |c| c.rate.max(1)) as f64;
        Ok(plan
            .classes
            .iter()
            .filter(|c| c.leaf)
            .map(|c| (c.id.minor(), c.rate as f64 / link))
            .collect())
    }

    /// Builds the same tree in a userspace [`LinkScheduler`] under its root:
    /// one class per configured class with its weight, every filter's subnet
    /// mapped to its leaf in `classifier`, and the default leaf as the
    /// classifier's default. Returns the scheduler class of each config id.
    /// Explicit rates and ceils have no userspace counterpart (the userspace
    /// scheduler shares by weight only; shape the link with its link rate).
    pub fn install_userspace<P>(
        &self,
        sched: &mut LinkScheduler<P>,
        classifier: &mut SourceClassifier,
    ) -> Result<BTreeMap<u16, ClassId>, ShareTreeError> {
        self.validate()?;
        let mut ids = BTreeMap::new();
        let mut stack: Vec<(ClassId, &ShareClassConfig)> = self
            .classes
            .iter()
            .rev()
            .map(|c| (ClassId::ROOT, c))
            .collect();
        while let Some((parent, c)) = stack.pop() {
            let id = sched
                .add_class(parent, ClassConfig::new(c.weight))
                .map_err(|source| ShareTreeError::Userspace {
                    class: c.id,
                    source,
                })?;
            ids.insert(c.id, id);
            stack.extend(c.children.iter().rev().map(|ch| (id, ch)));
        }
        for f in &self.filters {
            if let Some(&class) = ids.get(&f.class) {
                classifier
                    .insert(f.subnet, class)
                    .map_err(|_| ShareTreeError::TooManyFilters {
                        family: family_name(f.subnet.addr()),
                        limit: MAX_FILTERS_PER_FAMILY,
                    })?;
            }
        }
        classifier.set_default(ids.get(&self.default_class).copied());
        Ok(ids)
    }

    /// Checks the tree without computing rates.
    pub fn validate(&self) -> Result<(), ShareTreeError> {
        self.plan(&PschedClock::HIGH_RES).map(|_| ())
    }
}

/// One class of a [`ShareTreeConfig`]: `1:ID` in HTB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareClassConfig {
    /// Minor of the class id `1:ID` (2..=0xffff; `tc` prints it in hex). Keep it
    /// stable across updates: classes are matched by id and changed in place.
    pub id: u16,
    /// Share among its siblings (at least 1).
    pub weight: u32,
    /// Guaranteed rate in bits/s instead of the weight share of the parent's
    /// rate (the weight still counts in the siblings' sum).
    pub rate_bps: Option<u64>,
    /// Most this class may send in bits/s, borrowing included; the link rate
    /// if unset (work-conserving).
    pub ceil_bps: Option<u64>,
    /// Child classes; a class without children is a leaf and queues packets.
    pub children: Vec<Self>,
}

impl ShareClassConfig {
    /// A leaf `1:id` of `weight`.
    pub fn new(id: u16, weight: u32) -> Self {
        Self {
            id,
            weight,
            rate_bps: None,
            ceil_bps: None,
            children: Vec::new(),
        }
    }

    /// Adds a child class.
    #[must_use]
    pub fn with_child(mut self, child: Self) -> Self {
        self.children.push(child);
        self
    }

    /// Caps the class at `ceil_bps` bits/s.
    #[must_use]
    pub fn with_ceil(mut self, ceil_bps: u64) -> Self {
        self.ceil_bps = Some(ceil_bps);
        self
    }

    /// Guarantees `rate_bps` bits/s instead of the weight share.
    #[must_use]
    pub fn with_rate(mut self, rate_bps: u64) -> Self {
        self.rate_bps = Some(rate_bps);
        self
    }
}

/// A source prefix whose packets go to a leaf class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceFilter {
    /// The VIP subnet (IPv4 or IPv6) matched against the source address.
    pub subnet: VirtualSubnet,
    /// The leaf class id.
    pub class: u16,
}

/// Why a share tree cannot be realised.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShareTreeError {
    /// The link rate must be at least 8 bit/s (one byte per second).
    #[error("link rate {rate_bps} bit/s is too small (at least 8)")]
    LinkRate {
        /// The rate given.
        rate_bps: u64,
    },
    /// The MTU must be 68..=65535 bytes.
    #[error("mtu {mtu} is outside 68..=65535")]
    Mtu {
        /// The MTU given.
        mtu: u32,
    },
    /// The tree has no class.
    #[error("the share tree has no class")]
    Empty,
    /// Class ids 0 and 1 are the qdisc and the root class.
    #[error("class id {id:#x} is reserved (0 is the qdisc, 1 the root class)")]
    ReservedId {
        /// The id.
        id: u16,
    },
    /// Two classes share an id.
    #[error("class id {id:#x} is used twice")]
    DuplicateId {
        /// The id.
        id: u16,
    },
    /// Weights are relative shares and must be at least 1.
    #[error("class 1:{id:x} has weight 0")]
    ZeroWeight {
        /// The class.
        id: u16,
    },
    /// A rate or ceil below 8 bit/s, or a ceil below the rate.
    #[error(
        "class 1:{id:x}: rate {rate_bps} bit/s and ceil {ceil_bps} bit/s are invalid ({reason})"
    )]
    Rate {
        /// The class.
        id: u16,
        /// Its rate.
        rate_bps: u64,
        /// Its ceil.
        ceil_bps: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// More classes than [`MAX_CLASSES`].
    #[error("more than {limit} classes")]
    TooManyClasses {
        /// The bound.
        limit: usize,
    },
    /// Deeper than [`MAX_DEPTH`].
    #[error("class 1:{id:x} is deeper than {limit} levels")]
    TooDeep {
        /// The class.
        id: u16,
        /// The bound.
        limit: usize,
    },
    /// More filters of one family than [`MAX_FILTERS_PER_FAMILY`].
    #[error("more than {limit} {family} source filters")]
    TooManyFilters {
        /// `"IPv4"` or `"IPv6"`.
        family: &'static str,
        /// The bound.
        limit: usize,
    },
    /// A filter or the default names no class.
    #[error("{what} names class 1:{id:x}, which is not configured")]
    UnknownClass {
        /// The filter (`"filter 10.1.0.0/16"`) or `"default"`.
        what: String,
        /// The class named.
        id: u16,
    },
    /// A filter or the default names a class with children: only leaves queue.
    #[error("{what} names class 1:{id:x}, which has children; only leaves hold packets")]
    NotLeaf {
        /// The filter or `"default"`.
        what: String,
        /// The class named.
        id: u16,
    },
    /// The same prefix is mapped twice.
    #[error("source prefix {subnet} is mapped twice")]
    DuplicatePrefix {
        /// The prefix.
        subnet: VirtualSubnet,
    },
    /// The userspace scheduler refused a class.
    #[error("userspace scheduler refused class 1:{class:x}: {source}")]
    Userspace {
        /// The class.
        class: u16,
        /// Why.
        #[source]
        source: SchedError,
    },
}

fn family_name(addr: IpAddr) -> &'static str {
    if addr.is_ipv4() { "IPv4" } else { "IPv6" }
}

// ---------------------------------------------------------------------------
// Plan: rates, bursts, quanta, filter order
// ---------------------------------------------------------------------------

/// A tc handle `major:minor`, shown as `tc` does (hex, `1:` for a qdisc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TcId(pub u32);

impl TcId {
    /// `major:minor`.
    pub const fn new(major: u16, minor: u16) -> Self {
        Self(((major as u32) << 16) | minor as u32)
    }

    /// The major number.
    pub const fn major(self) -> u16 {
        (self.0 >> 16) as u16
    }

    /// The minor number.
    pub const fn minor(self) -> u16 {
        (self.0 & 0xffff) as u16
    }
}

impl fmt::Display for TcId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            TC_H_ROOT => f.write_str("root"),
            _ if self.minor() == 0 => write!(f, "{:x}:", self.major()),
            _ => write!(f, "{:x}:{:x}", self.major(), self.minor()),
        }
    }
}

/// One HTB class as it is programmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HtbClass {
    /// `1:ID`.
    pub id: TcId,
    /// The parent: `1:` for the root class, else a class.
    pub parent: TcId,
    /// Guaranteed rate in bytes per second.
    pub rate: u64,
    /// Most it may send with borrowing, bytes per second.
    pub ceil: u64,
    /// Burst at `rate`, bytes.
    pub burst: u32,
    /// Burst at `ceil`, bytes.
    pub cburst: u32,
    /// DRR quantum in bytes (used by leaves when borrowing).
    pub quantum: u32,
    /// Whether it queues packets (no children).
    pub leaf: bool,
    /// 0 for the root class.
    pub depth: u8,
}

/// Which filter priority of a band a filter sits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FilterKind {
    /// IPv4 source prefixes (`protocol ip`).
    V4,
    /// IPv6 source prefixes (`protocol ipv6`).
    V6,
    /// Everything else, to the default leaf (`protocol all`).
    CatchAll,
}

impl FilterKind {
    const ALL: [Self; 3] = [Self::V4, Self::V6, Self::CatchAll];

    fn offset(self) -> u16 {
        match self {
            Self::V4 => 0,
            Self::V6 => 1,
            Self::CatchAll => 2,
        }
    }

    /// The EtherType the filter's priority is bound to.
    pub fn protocol(self) -> u16 {
        match self {
            Self::V4 => ETH_P_IP,
            Self::V6 => ETH_P_IPV6,
            Self::CatchAll => ETH_P_ALL,
        }
    }
}

/// One u32 filter as it is programmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct U32Filter {
    /// Family (and priority within a band).
    pub kind: FilterKind,
    /// u32 node id (1..=0xfff): the order filters of one priority are tried in.
    pub node: u16,
    /// The matched source prefix; `None` for the catch-all.
    pub subnet: Option<VirtualSubnet>,
    /// `flowid`.
    pub class: TcId,
}

impl U32Filter {
    /// The `tc_u32_sel` with its keys, as sent.
    pub fn selector_bytes(&self) -> Vec<u8> {
        let keys = self.subnet.map(source_keys).unwrap_or_default();
        let mut out = Vec::with_capacity(16 + 16 * keys.len());
        // flags, offshift, nkeys, pad, offmask, off, offoff, hoff, hmask
        out.extend_from_slice(&[TC_U32_TERMINAL, 0, keys.len() as u8, 0]);
        out.extend_from_slice(&[0; 12]);
        for k in keys {
            out.extend_from_slice(&k.mask.to_be_bytes());
            out.extend_from_slice(&k.val.to_be_bytes());
            out.extend_from_slice(&k.off.to_ne_bytes());
            out.extend_from_slice(&0_i32.to_ne_bytes());
        }
        out
    }
}

/// A u32 key: `(packet word at off) & mask == val` (host order here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct U32Key {
    mask: u32,
    val: u32,
    off: i32,
}

/// Keys matching the source address of an IPv4 (offset 12) or IPv6 (offset 8)
/// header against `subnet`, one per 32-bit word the prefix touches (none for
/// a /0), as `tc ... match ip src` / `match ip6 src` builds them.
fn source_keys(subnet: VirtualSubnet) -> Vec<U32Key> {
    let len = u32::from(subnet.prefix_len());
    let (words, base): (Vec<u32>, i32) = match subnet.addr() {
        IpAddr::V4(a) => (vec![u32::from(a)], 12),
        IpAddr::V6(a) => (
            a.octets()
                .chunks_exact(4)
                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            8,
        ),
    };
    let mut keys = Vec::new();
    for (i, word) in words.into_iter().enumerate() {
        let start = 32 * i as u32;
        if len <= start {
            break;
        }
        let bits = (len - start).min(32);
        let mask = u32::MAX << (32 - bits);
        keys.push(U32Key {
            mask,
            val: word & mask,
            off: base + 4 * i as i32,
        });
    }
    keys
}

/// The computed tree: classes parent first (the root class first), filters in
/// priority and node order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HtbPlan {
    /// Every class, the root class `1:1` first, parents before children.
    pub classes: Vec<HtbClass>,
    /// Every filter, the catch-all last.
    pub filters: Vec<U32Filter>,
    /// The default leaf.
    pub default_class: TcId,
    /// Rate-table cell size (bytes) from `tc`'s mtu.
    pub mtu: u32,
}

fn bits_to_bytes(bps: u64) -> u64 {
    bps / 8
}

fn plan(cfg: &ShareTreeConfig, clock: &PschedClock) -> Result<HtbPlan, ShareTreeError> {
    if !(68..=65_535).contains(&cfg.mtu) {
        return Err(ShareTreeError::Mtu { mtu: cfg.mtu });
    }
    let link = bits_to_bytes(cfg.link_rate_bps);
    if link == 0 {
        return Err(ShareTreeError::LinkRate {
            rate_bps: cfg.link_rate_bps,
        });
    }
    if cfg.classes.is_empty() {
        return Err(ShareTreeError::Empty);
    }
    let root = TcId::new(HTB_MAJOR, ROOT_CLASS_MINOR);
    let mut classes = vec![HtbClass {
        id: root,
        parent: TcId::new(HTB_MAJOR, 0),
        rate: link,
        ceil: link,
        burst: 0,
        cburst: 0,
        quantum: 0,
        leaf: false,
        depth: 0,
    }];
    let mut seen = BTreeSet::new();
    // Depth-first, parents before children: (parent id, parent rate, siblings'
    // weight sum, depth, class).
    let mut stack: Vec<(TcId, u64, u64, u8, &ShareClassConfig)> = Vec::new();
    let top_sum: u64 = cfg.classes.iter().map(|c| u64::from(c.weight)).sum();
    stack.extend(
        cfg.classes
            .iter()
            .rev()
            .map(|c| (root, link, top_sum, 1, c)),
    );
    while let Some((parent, parent_rate, sum, depth, c)) = stack.pop() {
        if c.id <= ROOT_CLASS_MINOR {
            return Err(ShareTreeError::ReservedId { id: c.id });
        }
        if !seen.insert(c.id) {
            return Err(ShareTreeError::DuplicateId { id: c.id });
        }
        if seen.len() > MAX_CLASSES {
            return Err(ShareTreeError::TooManyClasses { limit: MAX_CLASSES });
        }
        if usize::from(depth) > MAX_DEPTH {
            return Err(ShareTreeError::TooDeep {
                id: c.id,
                limit: MAX_DEPTH,
            });
        }
        if c.weight == 0 {
            return Err(ShareTreeError::ZeroWeight { id: c.id });
        }
        let share = (u128::from(parent_rate) * u128::from(c.weight) / u128::from(sum.max(1)))
            .min(u128::from(u64::MAX)) as u64;
        let rate = c.rate_bps.map_or(share, bits_to_bytes);
        let ceil = c.ceil_bps.map_or(link, bits_to_bytes);
        let bad = |reason| ShareTreeError::Rate {
            id: c.id,
            rate_bps: rate.saturating_mul(8),
            ceil_bps: ceil.saturating_mul(8),
            reason,
        };
        if rate == 0 {
            return Err(bad("rate below 8 bit/s: raise the weight or the link rate"));
        }
        if ceil < rate {
            return Err(bad("ceil below rate"));
        }
        let id = TcId::new(HTB_MAJOR, c.id);
        classes.push(HtbClass {
            id,
            parent,
            rate,
            ceil,
            burst: 0,
            cburst: 0,
            quantum: 0,
            leaf: c.children.is_empty(),
            depth,
        });
        let child_sum: u64 = c.children.iter().map(|ch| u64::from(ch.weight)).sum();
        stack.extend(
            c.children
                .iter()
                .rev()
                .map(|ch| (id, rate, child_sum, depth + 1, ch)),
        );
    }

    // Quanta proportional to rate, the slowest leaf getting the floor: HTB's
    // DRR then lends spare bandwidth in proportion to rate.
    let min_leaf = classes
        .iter()
        .filter(|c| c.leaf)
        .map(|c| c.rate)
        .min()
        .unwrap_or(link)
        .max(1);
    let burst_time = cfg.burst.as_secs_f64();
    let floor = cfg
        .quantum_floor
        .unwrap_or(DEFAULT_QUANTUM_FLOOR)
        .clamp(cfg.mtu, MAX_QUANTUM);
    let mut capped = 0_usize;
    for c in &mut classes {
        let q = u128::from(floor) * u128::from(c.rate) / u128::from(min_leaf);
        if c.leaf && q > u128::from(MAX_QUANTUM) {
            capped += 1;
        }
        c.quantum = q.clamp(u128::from(floor), u128::from(MAX_QUANTUM)) as u32;
        c.burst = clock.default_burst(c.rate, cfg.mtu, burst_time);
        c.cburst = clock.default_burst(c.ceil, cfg.mtu, burst_time);
    }
    if capped > 0 {
        tracing::warn!(
            capped,
            floor,
            max = MAX_QUANTUM,
            "leaf rates span too wide a range: some quanta are capped, so spare bandwidth is not lent in proportion to rate"
        );
    }

    let leaves: BTreeMap<u16, bool> = classes
        .iter()
        .skip(1)
        .map(|c| (c.id.minor(), c.leaf))
        .collect();
    let check_leaf = |what: String, id: u16| match leaves.get(&id) {
        None => Err(ShareTreeError::UnknownClass { what, id }),
        Some(false) => Err(ShareTreeError::NotLeaf { what, id }),
        Some(true) => Ok(TcId::new(HTB_MAJOR, id)),
    };
    let default_class = check_leaf("default".to_owned(), cfg.default_class)?;
    let mut by_family: [Vec<(VirtualSubnet, TcId)>; 2] = [Vec::new(), Vec::new()];
    let mut prefixes = BTreeSet::new();
    for f in &cfg.filters {
        let class = check_leaf(format!("filter {}", f.subnet), f.class)?;
        if !prefixes.insert(f.subnet) {
            return Err(ShareTreeError::DuplicatePrefix { subnet: f.subnet });
        }
        by_family[usize::from(!f.subnet.addr().is_ipv4())].push((f.subnet, class));
    }
    let mut filters = Vec::new();
    for (kind, mut list) in [FilterKind::V4, FilterKind::V6].into_iter().zip(by_family) {
        if list.len() > MAX_FILTERS_PER_FAMILY {
            return Err(ShareTreeError::TooManyFilters {
                family: if kind == FilterKind::V4 {
                    "IPv4"
                } else {
                    "IPv6"
                },
                limit: MAX_FILTERS_PER_FAMILY,
            });
        }
        // Longest prefix first; ties in address order so the plan is stable.
        list.sort_by(|a, b| {
            b.0.prefix_len()
                .cmp(&a.0.prefix_len())
                .then(a.0.addr().cmp(&b.0.addr()))
        });
        filters.extend(
            list.into_iter()
                .enumerate()
                .map(|(i, (subnet, class))| U32Filter {
                    kind,
                    node: i as u16 + 1,
                    subnet: Some(subnet),
                    class,
                }),
        );
    }
    filters.push(U32Filter {
        kind: FilterKind::CatchAll,
        node: 1,
        subnet: None,
        class: default_class,
    });
    Ok(HtbPlan {
        classes,
        filters,
        default_class,
        mtu: cfg.mtu,
    })
}

// ---------------------------------------------------------------------------
// Time base and rate tables (iproute2 tc/tc_core.c)
// ---------------------------------------------------------------------------

/// The kernel's packet-scheduler clock as `/proc/net/psched` describes it:
/// how `tc` converts sizes at a rate into the ticks HTB's bursts are given in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PschedClock {
    /// Ticks per microsecond (15.625 on every kernel since 2.6.31: 64 ns ticks).
    pub tick_in_usec: f64,
    /// Timer frequency `tc` divides rates by for its default burst.
    pub hz: u64,
}

impl PschedClock {
    /// A high-resolution-timer kernel (`000003e8 00000040 000f4240 3b9aca00`).
    pub const HIGH_RES: Self = Self {
        tick_in_usec: 15.625,
        hz: 1_000_000_000,
    };

    /// Parses `/proc/net/psched` as `tc_core_init` and `get_hz` do.
    pub fn parse(text: &str) -> Option<Self> {
        let mut it = text
            .split_whitespace()
            .map(|w| u32::from_str_radix(w, 16).ok());
        let t2us = it.next()??;
        let us2t = it.next()??;
        let clock_res = it.next()??;
        let hz_denominator = it.next().flatten();
        if us2t == 0 {
            return None;
        }
        // iproute2's compatibility hack for nanosecond resolution.
        let t2us = if clock_res == 1_000_000_000 {
            us2t
        } else {
            t2us
        };
        let clock_factor = f64::from(clock_res) / 1e6;
        let tick_in_usec = f64::from(t2us) / f64::from(us2t) * clock_factor;
        let hz = match (clock_res, hz_denominator) {
            (1_000_000, Some(d)) if d > 0 => u64::from(d),
            _ => 100,
        };
        (tick_in_usec > 0.0).then_some(Self { tick_in_usec, hz })
    }

    /// This kernel's clock; [`HIGH_RES`](Self::HIGH_RES) if it cannot be read.
    pub fn read() -> Self {
        match std::fs::read_to_string("/proc/net/psched") {
            Ok(text) => Self::parse(&text).unwrap_or_else(|| {
                tracing::warn!(
                    text = text.trim(),
                    "unparsable /proc/net/psched; assuming 64 ns ticks"
                );
                Self::HIGH_RES
            }),
            Err(error) => {
                tracing::warn!(%error, "cannot read /proc/net/psched; assuming 64 ns ticks");
                Self::HIGH_RES
            }
        }
    }

    /// Ticks to send `size` bytes at `rate` bytes/s, exactly (floor).
    pub fn ticks(&self, rate: u64, size: u64) -> u32 {
        let t = size as f64 * 1e6 / rate.max(1) as f64 * self.tick_in_usec;
        t.min(f64::from(u32::MAX)) as u32
    }

    /// iproute2's `tc_calc_xmittime`: whole microseconds first, then ticks.
    fn tc_xmittime(&self, rate: u64, size: u32) -> u32 {
        let usec = (1e6 * (f64::from(size) / rate as f64)) as u32;
        (f64::from(usec) * self.tick_in_usec) as u32
    }

    /// `tc`'s default burst `rate / HZ + mtu`, or `rate * burst_time` if larger.
    fn default_burst(&self, rate: u64, mtu: u32, burst_time: f64) -> u32 {
        let tc = rate / self.hz.max(1) + u64::from(mtu);
        let timed = (rate as f64 * burst_time) as u64;
        tc.max(timed).min(u64::from(u32::MAX)) as u32
    }
}

/// iproute2's `tc_calc_rtable` for Ethernet (no overhead, no mpu): the cell
/// log that fits `mtu` into 256 cells, and the ticks to send each cell's size
/// at `rate` bytes/s (the ratespec's 32-bit rate, as `tc` passes it).
pub fn calc_rtable(clock: &PschedClock, rate: u32, mtu: u32) -> (u8, [u32; 256]) {
    let mtu = if mtu == 0 { 2047 } else { mtu };
    let mut cell_log = 0_u8;
    while (mtu >> cell_log) > 255 {
        cell_log += 1;
    }
    let mut table = [0_u32; 256];
    for (i, slot) in table.iter_mut().enumerate() {
        let size = ((i as u32) + 1) << cell_log;
        *slot = clock.tc_xmittime(u64::from(rate), size);
    }
    (cell_log, table)
}

// ---------------------------------------------------------------------------
// Message encoding
// ---------------------------------------------------------------------------

fn tc_message(ifindex: i32, handle: u32, parent: u32, info: u32) -> TcMessage {
    let mut m = TcMessage::with_index(ifindex);
    m.header.handle = TcHandle::from(handle);
    m.header.parent = TcHandle::from(parent);
    m.header.info = info;
    m
}

fn options(kind: &str, opts: Vec<(u16, Vec<u8>)>) -> Vec<TcAttribute> {
    vec![
        TcAttribute::Kind(kind.to_owned()),
        TcAttribute::Options(
            opts.into_iter()
                .map(|(t, v)| TcOption::Other(DefaultNla::new(t, v)))
                .collect(),
        ),
    ]
}

/// `tc qdisc replace dev DEV root handle 1: htb default DEFAULT` (r2q 10).
pub fn htb_qdisc_message(ifindex: i32, default_class: TcId) -> TcMessage {
    let mut init = Vec::with_capacity(20);
    for word in [
        TC_HTB_PROTOVER,
        HTB_R2Q,
        u32::from(default_class.minor()),
        0,
        0,
    ] {
        init.extend_from_slice(&word.to_ne_bytes());
    }
    let mut m = tc_message(ifindex, TcId::new(HTB_MAJOR, 0).0, TC_H_ROOT, 0);
    m.attributes = options("htb", vec![(TCA_HTB_INIT, init)]);
    m
}

fn ratespec(out: &mut Vec<u8>, cell_log: u8, rate: u32) {
    out.push(cell_log);
    out.push(TC_LINKLAYER_ETHERNET);
    out.extend_from_slice(&0_u16.to_ne_bytes()); // overhead
    out.extend_from_slice(&(-1_i16).to_ne_bytes()); // cell_align
    out.extend_from_slice(&0_u16.to_ne_bytes()); // mpu
    out.extend_from_slice(&rate.to_ne_bytes());
}

/// `tc class replace dev DEV parent P classid C htb rate R ceil C burst B
/// cburst CB quantum Q` for `class`, with rate tables for `mtu`.
pub fn htb_class_message(
    ifindex: i32,
    class: &HtbClass,
    clock: &PschedClock,
    mtu: u32,
) -> TcMessage {
    let rate32 = u32::try_from(class.rate).unwrap_or(u32::MAX);
    let ceil32 = u32::try_from(class.ceil).unwrap_or(u32::MAX);
    let (cell_log, rtab) = calc_rtable(clock, rate32, mtu);
    let (ccell_log, ctab) = calc_rtable(clock, ceil32, mtu);
    let mut parms = Vec::with_capacity(44);
    ratespec(&mut parms, cell_log, rate32);
    ratespec(&mut parms, ccell_log, ceil32);
    for word in [
        clock.ticks(class.rate, u64::from(class.burst)),
        clock.ticks(class.ceil, u64::from(class.cburst)),
        class.quantum,
        0, // level: out only
        0, // prio
    ] {
        parms.extend_from_slice(&word.to_ne_bytes());
    }
    let table = |t: [u32; 256]| t.iter().flat_map(|v| v.to_ne_bytes()).collect::<Vec<u8>>();
    let mut opts = Vec::with_capacity(5);
    if class.rate > u64::from(u32::MAX) {
        opts.push((TCA_HTB_RATE64, class.rate.to_ne_bytes().to_vec()));
    }
    if class.ceil > u64::from(u32::MAX) {
        opts.push((TCA_HTB_CEIL64, class.ceil.to_ne_bytes().to_vec()));
    }
    opts.push((TCA_HTB_PARMS, parms));
    opts.push((TCA_HTB_RTAB, table(rtab)));
    opts.push((TCA_HTB_CTAB, table(ctab)));
    let mut m = tc_message(ifindex, class.id.0, class.parent.0, 0);
    m.attributes = options("htb", opts);
    m
}

/// `tcm_info` of a filter: priority in the upper half, the EtherType in
/// network order in the lower (`TC_H_MAKE(prio << 16, htons(proto))`).
fn filter_info(prio: u16, protocol: u16) -> u32 {
    (u32::from(prio) << 16) | u32::from(u16::from_ne_bytes(protocol.to_be_bytes()))
}

/// `tc filter add dev DEV parent 1: protocol P prio PRIO handle ::NODE u32
/// match ip[6] src PREFIX flowid CLASS`.
pub fn u32_filter_message(ifindex: i32, prio: u16, filter: &U32Filter) -> TcMessage {
    let mut m = tc_message(
        ifindex,
        u32::from(filter.node),
        TcId::new(HTB_MAJOR, 0).0,
        filter_info(prio, filter.kind.protocol()),
    );
    m.attributes = options(
        "u32",
        vec![
            (TCA_U32_CLASSID, filter.class.0.to_ne_bytes().to_vec()),
            (TCA_U32_SEL, filter.selector_bytes()),
        ],
    );
    m
}

// ---------------------------------------------------------------------------
// Decoding dumps
// ---------------------------------------------------------------------------

/// The raw content of an attribute the crate keeps as a [`DefaultNla`].
fn nla_value(nla: &impl Nla) -> Vec<u8> {
    let mut v = vec![0; nla.value_len()];
    nla.emit_value(&mut v);
    v
}

/// The nested options of a kind netlink-packet-route does not model: it keeps
/// the whole `TCA_OPTIONS` as one attribute.
fn raw_options(attrs: &[TcAttribute]) -> Option<Vec<u8>> {
    attrs.iter().find_map(|a| match a {
        TcAttribute::Options(opts) => opts.iter().find_map(|o| match o {
            TcOption::Other(nla) if nla.kind() & NLA_TYPE_MASK == TCA_OPTIONS => {
                Some(nla_value(nla))
            }
            _ => None,
        }),
        _ => None,
    })
}

fn kind_of(attrs: &[TcAttribute]) -> Option<&str> {
    attrs.iter().find_map(|a| match a {
        TcAttribute::Kind(k) => Some(k.as_str()),
        _ => None,
    })
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off + 4)?;
    Some(u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_of(b: &[u8]) -> Option<u64> {
    let s = b.get(..8)?;
    let mut a = [0; 8];
    a.copy_from_slice(s);
    Some(u64::from_ne_bytes(a))
}

/// A class as the kernel reports it, with its counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct HtbClassStats {
    /// `1:ID`.
    pub id: TcId,
    /// Its parent (`root` for the root class).
    pub parent: TcId,
    /// Rate, bytes per second.
    pub rate: u64,
    /// Ceil, bytes per second.
    pub ceil: u64,
    /// Burst at rate, in scheduler ticks.
    pub buffer_ticks: u32,
    /// Burst at ceil, in scheduler ticks.
    pub cbuffer_ticks: u32,
    /// DRR quantum, bytes.
    pub quantum: u32,
    /// HTB level (0 for a leaf).
    pub level: u32,
    /// Bytes sent.
    pub bytes: u64,
    /// Packets sent.
    pub packets: u64,
    /// Packets dropped.
    pub drops: u64,
    /// Times the class was over its limits.
    pub overlimits: u64,
    /// Packets queued now.
    pub qlen: u32,
    /// Times it lent to a descendant.
    pub lends: u32,
    /// Times it borrowed from an ancestor.
    pub borrows: u32,
}

fn decode_class(m: &TcMessage) -> Option<HtbClassStats> {
    if kind_of(&m.attributes) != Some("htb") {
        return None;
    }
    let mut s = HtbClassStats {
        id: TcId(m.header.handle.into()),
        parent: TcId(m.header.parent.into()),
        rate: 0,
        ceil: 0,
        buffer_ticks: 0,
        cbuffer_ticks: 0,
        quantum: 0,
        level: 0,
        bytes: 0,
        packets: 0,
        drops: 0,
        overlimits: 0,
        qlen: 0,
        lends: 0,
        borrows: 0,
    };
    let opts = raw_options(&m.attributes)?;
    let (mut rate64, mut ceil64) = (None, None);
    for nla in NlasIterator::new(&opts[..]) {
        let nla: NlaBuffer<&[u8]> = nla.ok()?;
        let v = nla.value();
        match nla.kind() & NLA_TYPE_MASK {
            TCA_HTB_PARMS => {
                s.rate = u64::from(u32_at(v, 8)?);
                s.ceil = u64::from(u32_at(v, 20)?);
                s.buffer_ticks = u32_at(v, 24)?;
                s.cbuffer_ticks = u32_at(v, 28)?;
                s.quantum = u32_at(v, 32)?;
                s.level = u32_at(v, 36)?;
            }
            TCA_HTB_RATE64 => rate64 = u64_of(v),
            TCA_HTB_CEIL64 => ceil64 = u64_of(v),
            _ => {}
        }
    }
    s.rate = rate64.unwrap_or(s.rate);
    s.ceil = ceil64.unwrap_or(s.ceil);
    for a in &m.attributes {
        match a {
            TcAttribute::Stats2(list) => {
                for st in list {
                    match st {
                        TcStats2::Basic(b) => {
                            s.bytes = b.bytes;
                            s.packets = u64::from(b.packets);
                        }
                        TcStats2::Queue(q) => {
                            s.drops = u64::from(q.drops);
                            s.overlimits = u64::from(q.overlimits);
                            s.qlen = q.qlen;
                        }
                        TcStats2::App(TcXstats::Other(x)) => {
                            s.lends = u32_at(x, 0).unwrap_or(0);
                            s.borrows = u32_at(x, 4).unwrap_or(0);
                        }
                        _ => {}
                    }
                }
            }
            TcAttribute::Xstats(TcXstats::Other(x)) => {
                s.lends = u32_at(x, 0).unwrap_or(s.lends);
                s.borrows = u32_at(x, 4).unwrap_or(s.borrows);
            }
            _ => {}
        }
    }
    Some(s)
}

/// A u32 filter node as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DumpedFilter {
    prio: u16,
    protocol: u16,
    node: u16,
    class: TcId,
    /// `None` for the priority's own entry and hash tables: no match node.
    selector: Option<TcU32Selector>,
}

fn decode_filter(m: &TcMessage) -> Option<DumpedFilter> {
    if kind_of(&m.attributes) != Some("u32") {
        return None;
    }
    let (mut class, mut selector) = (None, None);
    for a in &m.attributes {
        if let TcAttribute::Options(opts) = a {
            for o in opts {
                match o {
                    TcOption::U32(TcFilterU32Option::ClassId(c)) => {
                        class = Some(TcId(u32::from(*c)));
                    }
                    TcOption::U32(TcFilterU32Option::Selector(s)) => selector = Some(s.clone()),
                    _ => {}
                }
            }
        }
    }
    let info = m.header.info;
    Some(DumpedFilter {
        prio: (info >> 16) as u16,
        protocol: u16::from_be_bytes(((info & 0xffff) as u16).to_ne_bytes()),
        node: (u32::from(m.header.handle) & 0xfff) as u16,
        class: class.unwrap_or(TcId(0)),
        selector,
    })
}

/// The root qdisc of a link as dumped.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RootQdisc {
    kind: String,
    handle: TcId,
    default_minor: Option<u32>,
}

fn decode_root_qdisc(m: &TcMessage, ifindex: i32) -> Option<RootQdisc> {
    if m.header.index != ifindex || u32::from(m.header.parent) != TC_H_ROOT {
        return None;
    }
    let kind = kind_of(&m.attributes)?.to_owned();
    let default_minor = if kind == "htb" {
        raw_options(&m.attributes).and_then(|o| {
            NlasIterator::new(&o[..])
                .filter_map(Result::ok)
                .find(|n: &NlaBuffer<&[u8]>| n.kind() & NLA_TYPE_MASK == TCA_HTB_INIT)
                .and_then(|n| u32_at(n.value(), 8))
        })
    } else {
        None
    };
    Some(RootQdisc {
        kind,
        handle: TcId(m.header.handle.into()),
        default_minor,
    })
}

// ---------------------------------------------------------------------------
// Errors and counters
// ---------------------------------------------------------------------------

/// The tc object a request acted on, as `tc` would name it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TcObject {
    /// A qdisc.
    Qdisc {
        /// Its handle.
        handle: TcId,
    },
    /// A class.
    Class {
        /// Its id.
        id: TcId,
    },
    /// One filter.
    Filter {
        /// Its priority.
        prio: u16,
        /// Its u32 node.
        node: u16,
        /// What it matches (`None`: everything).
        subnet: Option<VirtualSubnet>,
        /// Where it sends packets.
        class: TcId,
    },
    /// Every filter of one priority.
    FilterPrio {
        /// The priority.
        prio: u16,
    },
    /// A dump of qdiscs, classes or filters.
    Dump {
        /// `"qdiscs"`, `"classes"` or `"filters"`.
        what: &'static str,
    },
}

impl fmt::Display for TcObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Qdisc { handle } => write!(f, "qdisc {handle}"),
            Self::Class { id } => write!(f, "class {id}"),
            Self::Filter {
                prio,
                node,
                subnet: Some(s),
                class,
            } => write!(f, "filter prio {prio} ::{node:x} ({s} -> {class})"),
            Self::Filter {
                prio, node, class, ..
            } => write!(f, "filter prio {prio} ::{node:x} (all -> {class})"),
            Self::FilterPrio { prio } => write!(f, "filters of prio {prio}"),
            Self::Dump { what } => write!(f, "dump of {what}"),
        }
    }
}

/// Errors of tc programming.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TcError {
    /// The netlink socket or its runtime could not be created.
    #[error("cannot open a netlink connection for tc: {source}")]
    Connect {
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// No link has this name in the namespace.
    #[error("no network interface named {name:?} in this namespace")]
    NoSuchLink {
        /// The name.
        name: String,
    },
    /// The share tree is invalid; nothing was changed.
    #[error("invalid share tree for {link}: {source}")]
    Config {
        /// The link.
        link: String,
        /// What is wrong.
        #[source]
        source: ShareTreeError,
    },
    /// The kernel refused a request (`errno`: EPERM needs CAP_NET_ADMIN,
    /// ENOENT a missing object, EINVAL bad options, EBUSY a class in use).
    #[error("tc {op} {object} on {link} failed: {source}")]
    Request {
        /// `"add"`, `"change"`, `"delete"` or `"dump"`.
        op: &'static str,
        /// The object.
        object: TcObject,
        /// The link.
        link: String,
        /// The errno the kernel returned, if it returned one.
        errno: Option<i32>,
        /// The rtnetlink error (boxed: it is large and errors are rare).
        #[source]
        source: Box<rtnetlink::Error>,
    },
}

impl TcError {
    /// The kernel's errno, if the kernel refused a request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Request { errno, .. } => *errno,
            _ => None,
        }
    }
}

/// What one [`apply_share_tree`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ApplyReport {
    /// The root qdisc was created (it was not `htb 1:`).
    pub qdisc_created: bool,
    /// The qdisc was deleted and rebuilt because a class changed parent.
    pub rebuilt: bool,
    /// Classes created.
    pub classes_created: u32,
    /// Classes changed in place.
    pub classes_changed: u32,
    /// Classes already as wanted.
    pub classes_unchanged: u32,
    /// Classes deleted.
    pub classes_deleted: u32,
    /// Filters installed (0 when the live filters already matched).
    pub filters_installed: u32,
    /// The priority band the filters now live in.
    pub filter_band: u16,
}

/// Counters of a [`Tc`] handle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TcCounters {
    /// Share trees applied.
    pub applies: u64,
    /// Applies that failed.
    pub apply_failures: u64,
    /// Applies refused for an invalid config.
    pub config_errors: u64,
    /// Requests sent (dumps included).
    pub requests: u64,
    /// Requests the kernel refused.
    pub request_failures: u64,
    /// Qdisc rebuilds after a class changed parent.
    pub rebuilds: u64,
    /// Filter band swaps.
    pub filter_swaps: u64,
    /// Dump entries not read because a dump exceeded its bound.
    pub dump_truncated: u64,
    /// Applies that left HTB's own default class stale (the catch-all rules).
    pub stale_default: u64,
}

#[derive(Debug, Default)]
struct Counters {
    applies: AtomicU64,
    apply_failures: AtomicU64,
    config_errors: AtomicU64,
    requests: AtomicU64,
    request_failures: AtomicU64,
    rebuilds: AtomicU64,
    filter_swaps: AtomicU64,
    dump_truncated: AtomicU64,
    stale_default: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

// ---------------------------------------------------------------------------
// The netlink shell
// ---------------------------------------------------------------------------

/// A blocking rtnetlink connection for tc, bound to the network namespace of
/// the thread that opened it (like [`Netlink`](super::Netlink); do not call it
/// from inside another tokio runtime).
#[derive(Debug)]
pub struct Tc {
    rt: tokio::runtime::Runtime,
    handle: rtnetlink::Handle,
    clock: PschedClock,
    counters: Counters,
}

/// One request outcome before it is named.
type Raw<T> = Result<T, rtnetlink::Error>;

impl Tc {
    /// Connect in the calling thread's network namespace and read the kernel's
    /// scheduler clock.
    pub fn open() -> Result<Self, TcError> {
        let (rt, handle) =
            super::netlink::connect().map_err(|source| TcError::Connect { source })?;
        Ok(Self {
            rt,
            handle,
            clock: PschedClock::read(),
            counters: Counters::default(),
        })
    }

    /// The scheduler clock bursts are computed with.
    pub fn clock(&self) -> PschedClock {
        self.clock
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> TcCounters {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TcCounters {
            applies: l(&c.applies),
            apply_failures: l(&c.apply_failures),
            config_errors: l(&c.config_errors),
            requests: l(&c.requests),
            request_failures: l(&c.request_failures),
            rebuilds: l(&c.rebuilds),
            filter_swaps: l(&c.filter_swaps),
            dump_truncated: l(&c.dump_truncated),
            stale_default: l(&c.stale_default),
        }
    }

    /// Index of link `name`.
    pub fn link_index(&self, name: &str) -> Result<i32, TcError> {
        self.link(name).map(|(index, _)| index)
    }

    /// Index of link `name` and the largest GSO packet it may be handed.
    fn link(&self, name: &str) -> Result<(i32, Option<u32>), TcError> {
        let req = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        let found = self.rt.block_on(async {
            let mut s = std::pin::pin!(req);
            futures::TryStreamExt::try_next(&mut s).await
        });
        let missing = || TcError::NoSuchLink {
            name: name.to_owned(),
        };
        match found {
            Ok(Some(msg)) => {
                let gso = msg
                    .attributes
                    .iter()
                    .filter_map(|a| match a {
                        LinkAttribute::GsoMaxSize(n) | LinkAttribute::GsoIpv4MaxSize(n) => Some(*n),
                        _ => None,
                    })
                    .max();
                let index = i32::try_from(msg.header.index).map_err(|_| missing())?;
                Ok((index, gso))
            }
            Ok(None) => Err(missing()),
            // A missing name comes back as ENODEV.
            Err(rtnetlink::Error::NetlinkError(m))
                if m.code.map(|c| c.get().abs()) == Some(nix::libc::ENODEV) =>
            {
                Err(missing())
            }
            Err(e) => Err(self.name_error("dump", TcObject::Dump { what: "links" }, name, e)),
        }
    }

    fn name_error(
        &self,
        op: &'static str,
        object: TcObject,
        link: &str,
        source: rtnetlink::Error,
    ) -> TcError {
        bump(&self.counters.request_failures);
        let errno = match &source {
            rtnetlink::Error::NetlinkError(m) => m.code.map(|c| c.get().abs()),
            _ => None,
        };
        tracing::debug!(op, %object, link, ?errno, "tc request refused");
        TcError::Request {
            op,
            object,
            link: link.to_owned(),
            errno,
            source: Box::new(source),
        }
    }

    /// Sends one request and waits for its acknowledgement.
    fn send(&self, msg: RouteNetlinkMessage, flags: u16) -> Raw<()> {
        bump(&self.counters.requests);
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        let mut handle = self.handle.clone();
        self.rt.block_on(async move {
            let mut resp = handle.request(req)?;
            while let Some(m) = resp.next().await {
                if let NetlinkPayload::Error(e) = m.payload {
                    return Err(rtnetlink::Error::NetlinkError(e));
                }
            }
            Ok(())
        })
    }

    /// Dumps and returns at most [`MAX_DUMP`] tc messages.
    fn dump(&self, msg: RouteNetlinkMessage) -> Raw<Vec<TcMessage>> {
        bump(&self.counters.requests);
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let mut handle = self.handle.clone();
        let (out, truncated) = self.rt.block_on(async move {
            let mut resp = handle.request(req)?;
            let mut out = Vec::new();
            let mut truncated = 0_u64;
            while let Some(m) = resp.next().await {
                let tc = match m.payload {
                    NetlinkPayload::Error(e) => return Err(rtnetlink::Error::NetlinkError(e)),
                    NetlinkPayload::InnerMessage(
                        RouteNetlinkMessage::NewQueueDiscipline(t)
                        | RouteNetlinkMessage::NewTrafficClass(t)
                        | RouteNetlinkMessage::NewTrafficFilter(t),
                    ) => t,
                    _ => continue,
                };
                if out.len() < MAX_DUMP {
                    out.push(tc);
                } else {
                    truncated += 1;
                }
            }
            Ok((out, truncated))
        })?;
        if truncated > 0 {
            self.counters
                .dump_truncated
                .fetch_add(truncated, Ordering::Relaxed);
            tracing::warn!(truncated, limit = MAX_DUMP, "tc dump truncated");
        }
        Ok(out)
    }

    fn root_qdisc(&self, ifindex: i32, link: &str) -> Result<Option<RootQdisc>, TcError> {
        let msgs = self
            .dump(RouteNetlinkMessage::GetQueueDiscipline(
                TcMessage::with_index(ifindex),
            ))
            .map_err(|e| self.name_error("dump", TcObject::Dump { what: "qdiscs" }, link, e))?;
        Ok(msgs.iter().find_map(|m| decode_root_qdisc(m, ifindex)))
    }

    fn classes(&self, ifindex: i32, link: &str) -> Result<Vec<HtbClassStats>, TcError> {
        let msg = tc_message(ifindex, 0, TcId::new(HTB_MAJOR, 0).0, 0);
        let msgs = self
            .dump(RouteNetlinkMessage::GetTrafficClass(msg))
            .map_err(|e| self.name_error("dump", TcObject::Dump { what: "classes" }, link, e))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.index == ifindex)
            .filter_map(decode_class)
            .filter(|c| c.id.major() == HTB_MAJOR)
            .collect())
    }

    fn filters(&self, ifindex: i32, link: &str) -> Result<Vec<DumpedFilter>, TcError> {
        let msg = tc_message(ifindex, 0, TcId::new(HTB_MAJOR, 0).0, 0);
        let msgs = self
            .dump(RouteNetlinkMessage::GetTrafficFilter(msg))
            .map_err(|e| self.name_error("dump", TcObject::Dump { what: "filters" }, link, e))?;
        let mut out = Vec::new();
        for m in msgs.iter().filter(|m| m.header.index == ifindex) {
            match decode_filter(m) {
                Some(f) => out.push(f),
                // Not u32: still occupies its priority, which is all the band
                // logic needs, and never matches a planned filter.
                None => out.push(DumpedFilter {
                    prio: (m.header.info >> 16) as u16,
                    protocol: 0,
                    node: 0,
                    class: TcId(0),
                    selector: Some(TcU32Selector::default()),
                }),
            }
        }
        Ok(out)
    }

    /// The HTB classes of link `ifname` (under `1:`) with their counters.
    pub fn class_stats(&self, ifname: &str) -> Result<Vec<HtbClassStats>, TcError> {
        let ifindex = self.link_index(ifname)?;
        self.classes(ifindex, ifname)
    }

    fn delete_prio(&self, ifindex: i32, link: &str, prio: u16) -> Result<(), TcError> {
        let msg = tc_message(ifindex, 0, TcId::new(HTB_MAJOR, 0).0, u32::from(prio) << 16);
        match self.send(RouteNetlinkMessage::DelTrafficFilter(msg), 0) {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = self.name_error("delete", TcObject::FilterPrio { prio }, link, e);
                // Already gone is what we wanted.
                if e.errno() == Some(nix::libc::ENOENT) {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    fn delete_qdisc(&self, ifindex: i32, link: &str) -> Result<(), TcError> {
        let msg = tc_message(ifindex, TcId::new(HTB_MAJOR, 0).0, TC_H_ROOT, 0);
        self.send(RouteNetlinkMessage::DelQueueDiscipline(msg), 0)
            .map_err(|e| {
                self.name_error(
                    "delete",
                    TcObject::Qdisc {
                        handle: TcId::new(HTB_MAJOR, 0),
                    },
                    link,
                    e,
                )
            })
    }

    fn apply(&self, link: &str, cfg: &ShareTreeConfig) -> Result<ApplyReport, TcError> {
        let config_error = |source| {
            bump(&self.counters.config_errors);
            TcError::Config {
                link: link.to_owned(),
                source,
            }
        };
        // Refuse a bad tree before touching the link.
        cfg.validate().map_err(config_error)?;
        let (ifindex, gso) = self.link(link)?;
        let plan = match cfg.quantum_floor {
            Some(_) => cfg.plan(&self.clock),
            None => {
                let mut resolved = cfg.clone();
                resolved.quantum_floor = Some(gso.unwrap_or(DEFAULT_QUANTUM_FLOOR).max(cfg.mtu));
                resolved.plan(&self.clock)
            }
        }
        .map_err(config_error)?;
        let mut report = ApplyReport::default();
        let qdisc = TcId::new(HTB_MAJOR, 0);

        let root = self.root_qdisc(ifindex, link)?;
        let ours = root
            .as_ref()
            .is_some_and(|r| r.kind == "htb" && r.handle == qdisc);
        let mut existing = if ours {
            self.classes(ifindex, link)?
        } else {
            Vec::new()
        };
        let wanted: BTreeMap<TcId, &HtbClass> = plan.classes.iter().map(|c| (c.id, c)).collect();
        let moved = existing.iter().any(|e| {
            wanted
                .get(&e.id)
                .is_some_and(|w| !same_parent(e.parent, w.parent))
        });
        if ours && moved {
            tracing::info!(link, "a class changed parent; rebuilding the HTB qdisc");
            bump(&self.counters.rebuilds);
            self.delete_qdisc(ifindex, link)?;
            report.rebuilt = true;
            existing.clear();
        }
        if !ours || moved {
            let msg = htb_qdisc_message(ifindex, plan.default_class);
            self.send(
                RouteNetlinkMessage::NewQueueDiscipline(msg),
                NLM_F_CREATE | NLM_F_REPLACE,
            )
            .map_err(|e| self.name_error("add", TcObject::Qdisc { handle: qdisc }, link, e))?;
            report.qdisc_created = true;
        } else if root.as_ref().and_then(|r| r.default_minor)
            != Some(u32::from(plan.default_class.minor()))
        {
            // HTB has no change operation; the catch-all filter classifies.
            bump(&self.counters.stale_default);
            tracing::debug!(link, default = %plan.default_class,
                "HTB default class is stale; the catch-all filter applies the new one");
        }

        // Classes, parents first, changed in place.
        let have: BTreeMap<TcId, &HtbClassStats> = existing.iter().map(|c| (c.id, c)).collect();
        for c in &plan.classes {
            let op = match have.get(&c.id) {
                Some(k) if class_matches(k, c, &self.clock) => {
                    report.classes_unchanged += 1;
                    continue;
                }
                Some(_) => "change",
                None => "add",
            };
            let msg = htb_class_message(ifindex, c, &self.clock, plan.mtu);
            self.send(RouteNetlinkMessage::NewTrafficClass(msg), NLM_F_CREATE)
                .map_err(|e| self.name_error(op, TcObject::Class { id: c.id }, link, e))?;
            if op == "add" {
                report.classes_created += 1;
            } else {
                report.classes_changed += 1;
            }
            tracing::debug!(link, class = %c.id, parent = %c.parent, rate = c.rate,
                ceil = c.ceil, quantum = c.quantum, op, "HTB class programmed");
        }

        // Filters: make before break.
        let dumped = if report.qdisc_created {
            Vec::new()
        } else {
            self.filters(ifindex, link)?
        };
        let in_band = |band: u16| -> Vec<&DumpedFilter> {
            dumped
                .iter()
                .filter(|f| (band..band + 3).contains(&f.prio))
                .collect()
        };
        let (a, b) = (in_band(BANDS[0]), in_band(BANDS[1]));
        let (live, target) = match (a.is_empty(), b.is_empty()) {
            (true, true) => (None, BANDS[0]),
            (false, true) => (Some(BANDS[0]), BANDS[1]),
            (true, false) => (Some(BANDS[1]), BANDS[0]),
            // An earlier apply stopped half way: the lower band is the one
            // that classifies; rebuild the other.
            (false, false) => (Some(BANDS[0]), BANDS[1]),
        };
        let live_matches = live.is_some_and(|band| {
            filters_match(if band == BANDS[0] { &a } else { &b }, band, &plan.filters)
        });
        if live_matches {
            report.filter_band = live.unwrap_or(BANDS[0]);
            if !a.is_empty() && !b.is_empty() {
                for kind in FilterKind::ALL {
                    self.delete_prio(ifindex, link, BANDS[1] + kind.offset())?;
                }
            }
        } else {
            for kind in FilterKind::ALL {
                self.delete_prio(ifindex, link, target + kind.offset())?;
            }
            for f in &plan.filters {
                let prio = target + f.kind.offset();
                let msg = u32_filter_message(ifindex, prio, f);
                self.send(RouteNetlinkMessage::NewTrafficFilter(msg), NLM_F_CREATE)
                    .map_err(|e| {
                        self.name_error(
                            "add",
                            TcObject::Filter {
                                prio,
                                node: f.node,
                                subnet: f.subnet,
                                class: f.class,
                            },
                            link,
                            e,
                        )
                    })?;
                report.filters_installed += 1;
            }
            if let Some(old) = live {
                // Catch-all first: packets the old prefixes miss fall through
                // to the new band rather than to the old default.
                for kind in [FilterKind::CatchAll, FilterKind::V6, FilterKind::V4] {
                    self.delete_prio(ifindex, link, old + kind.offset())?;
                }
                bump(&self.counters.filter_swaps);
            }
            report.filter_band = target;
        }

        // Classes no longer configured, deepest first.
        let mut stale: Vec<&HtbClassStats> = existing
            .iter()
            .filter(|e| !wanted.contains_key(&e.id))
            .collect();
        let depth = |id: TcId| {
            let mut d = 0;
            let mut at = have.get(&id).map(|c| c.parent);
            while let Some(p) = at {
                d += 1;
                at = have.get(&p).map(|c| c.parent);
                if d > MAX_CLASSES {
                    break;
                }
            }
            d
        };
        stale.sort_by_key(|c| std::cmp::Reverse(depth(c.id)));
        for c in stale {
            let msg = tc_message(ifindex, c.id.0, 0, 0);
            self.send(RouteNetlinkMessage::DelTrafficClass(msg), 0)
                .map_err(|e| self.name_error("delete", TcObject::Class { id: c.id }, link, e))?;
            report.classes_deleted += 1;
        }
        tracing::info!(
            link,
            created = report.classes_created,
            changed = report.classes_changed,
            deleted = report.classes_deleted,
            filters = report.filters_installed,
            band = report.filter_band,
            qdisc_created = report.qdisc_created,
            rebuilt = report.rebuilt,
            "share tree applied"
        );
        Ok(report)
    }
}

/// Whether a dumped parent is the planned one (the root class reports `root`
/// where it was created under `1:`).
fn same_parent(dumped: TcId, planned: TcId) -> bool {
    dumped == planned || (dumped.0 == TC_H_ROOT && planned == TcId::new(HTB_MAJOR, 0))
}

/// Whether the kernel's class already has the planned parameters (quanta only
/// for leaves: HTB keeps none for inner classes).
fn class_matches(k: &HtbClassStats, c: &HtbClass, clock: &PschedClock) -> bool {
    same_parent(k.parent, c.parent)
        && k.rate == c.rate
        && k.ceil == c.ceil
        && k.buffer_ticks == clock.ticks(c.rate, u64::from(c.burst))
        && k.cbuffer_ticks == clock.ticks(c.ceil, u64::from(c.cburst))
        && (!c.leaf || (k.level == 0 && k.quantum == c.quantum))
}

/// Whether the dumped filters of `band` are exactly the planned ones.
fn filters_match(dumped: &[&DumpedFilter], band: u16, planned: &[U32Filter]) -> bool {
    let mut have: Vec<(u16, u16, u16, TcId, &TcU32Selector)> = dumped
        .iter()
        .filter_map(|f| Some((f.prio, f.protocol, f.node, f.class, f.selector.as_ref()?)))
        .collect();
    have.sort_by_key(|h| (h.0, h.2));
    let want: Vec<(u16, u16, u16, TcId, Option<TcU32Selector>)> = planned
        .iter()
        .map(|f| {
            (
                band + f.kind.offset(),
                f.kind.protocol(),
                f.node,
                f.class,
                TcU32Selector::parse(&f.selector_bytes()).ok(),
            )
        })
        .collect();
    have.len() == want.len()
        && have.iter().zip(&want).all(|(h, w)| {
            h.0 == w.0 && h.1 == w.1 && h.2 == w.2 && h.3 == w.3 && w.4.as_ref() == Some(h.4)
        })
}

/// Realise `config` on the egress of link `ifname`: create or update the HTB
/// tree and its filters in place (see the module docs). Idempotent; the first
/// error stops it and names the object, leaving what was done so far (apply
/// again to converge).
pub fn apply_share_tree(
    tc: &Tc,
    ifname: &str,
    config: &ShareTreeConfig,
) -> Result<ApplyReport, TcError> {
    bump(&tc.counters.applies);
    let r = tc.apply(ifname, config);
    if let Err(error) = &r {
        bump(&tc.counters.apply_failures);
        tracing::warn!(link = ifname, %error, "share tree not applied");
    }
    r
}

/// Remove the share tree from link `ifname`: delete its root qdisc if it is
/// ours (`htb 1:`). Returns whether there was one.
pub fn remove_share_tree(tc: &Tc, ifname: &str) -> Result<bool, TcError> {
    let ifindex = tc.link_index(ifname)?;
    let ours = tc
        .root_qdisc(ifindex, ifname)?
        .is_some_and(|r| r.kind == "htb" && r.handle == TcId::new(HTB_MAJOR, 0));
    if ours {
        tc.delete_qdisc(ifindex, ifname)?;
        tracing::info!(link = ifname, "share tree removed");
    }
    Ok(ours)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_core::{Emitable, Parseable};
    use std::net::{Ipv4Addr, Ipv6Addr};

    // Bodies (tcmsg onward) of what iproute2 6.1 sent on this kernel, captured
    // with `strace -f -e trace=sendmsg -e write=all` in a namespace with link
    // index 3:
    //   tc qdisc replace dev a root handle 1: htb default 12
    const TC_QDISC: &str = "000000000300000000000100ffffffff0000000008000100687462001c00020018000200030000000a000000120000000000000000000000";
    //   tc class add dev a parent 1:1 classid 1:10 htb rate 20mbit ceil 100mbit quantum 1600
    const TC_CLASS_10: &str = concat!(
        "000000000300000010000100010001000000000008000100687462003c0802003000010003010000ffff0000a0252600",
        "03010000ffff000020bcbe0010270000d0070000400600000000000000000000040404002e0000005d0000008c000000",
        "bb000000fa000000280100005701000086010000b5010000f4010000220200005102000080020000af020000ee020000",
        "1c0300004b0300007a030000a9030000e8030000160400004504000074040000a3040000e2040000100500003f050000",
        "6e0500009d050000dc0500000a060000390600006806000097060000d606000004070000330700006207000091070000",
        "d0070000fe0700002d0800005c0800008b080000ca080000f8080000270900005609000085090000c4090000f2090000",
        "210a0000500a00007f0a0000be0a0000ec0a00001b0b00004a0b0000790b0000b80b0000e60b0000150c0000440c0000",
        "730c0000b20c0000e00c00000f0d00003e0d00006d0d0000ac0d0000da0d0000090e0000380e0000670e0000a60e0000",
        "d40e0000030f0000320f0000610f0000a00f0000ce0f0000fd0f00002c1000005b1000009a100000c8100000f7100000",
        "261100005511000094110000c2110000f1110000201200004f1200008e120000bc120000eb1200001a13000049130000",
        "88130000b6130000e5130000141400004314000082140000b0140000df1400000e1500003d1500007c150000aa150000",
        "d9150000081600003716000076160000a4160000d31600000217000031170000701700009e170000cd170000fc170000",
        "2b1800006a18000098180000c7180000f6180000251900006419000092190000c1190000f01900001f1a00005e1a0000",
        "8c1a0000bb1a0000ea1a0000191b0000581b0000861b0000b51b0000e41b0000131c0000521c0000801c0000af1c0000",
        "de1c00000d1d00004c1d00007a1d0000a91d0000d81d0000071e0000461e0000741e0000a31e0000d21e0000011f0000",
        "401f00006e1f00009d1f0000cc1f0000fb1f00003a2000006820000097200000c6200000f52000003421000062210000",
        "91210000c0210000ef2100002e2200005c2200008b220000ba220000e9220000282300005623000085230000b4230000",
        "e323000022240000502400007f240000ae240000dd2400001c2500004a25000079250000a8250000d725000016260000",
        "4426000073260000a2260000d1260000102700003e2700006d2700009c270000cb2700000a2800003828000067280000",
        "96280000c528000004290000322900006129000090290000bf290000fe2900002c2a00005b2a00008a2a0000b92a0000",
        "f82a0000262b0000552b0000842b0000b32b0000f22b0000202c00004f2c00007e2c0000ad2c0000ec2c00001a2d0000",
        "492d0000782d0000a72d0000e62d0000142e0000432e0000722e0000a12e0000e02e00000e2f00003d2f00006c2f0000",
        "9b2f0000da2f000008300000373000006630000095300000d43000000231000031310000603100008f310000ce310000",
        "fc31000004040300000000000f0000000f0000001f0000002e0000002e0000003e0000004e0000004e0000005d000000",
        "6d0000006d0000007d0000007d0000008c0000009c0000009c000000ab000000bb000000bb000000cb000000da000000",
        "da000000ea000000fa000000fa0000000901000009010000190100002801000028010000380100004801000048010000",
        "5701000067010000670100007701000077010000860100009601000096010000a5010000b5010000b5010000c5010000",
        "d4010000d4010000e4010000f4010000f401000003020000030200001302000022020000220200003202000042020000",
        "4202000051020000610200006102000071020000710200008002000090020000900200009f020000af020000af020000",
        "bf020000ce020000ce020000de020000ee020000ee020000fd020000fd0200000d0300001c0300001c0300002c030000",
        "3c0300003c0300004b0300005b0300005b0300006b0300006b0300007a0300008a0300008a03000099030000a9030000",
        "a9030000b9030000c8030000c8030000d8030000e8030000e8030000f7030000f7030000070400001604000016040000",
        "260400003604000036040000450400005504000055040000650400006504000074040000840400008404000093040000",
        "a3040000a3040000b3040000c2040000c2040000d2040000e2040000e2040000f1040000f10400000105000010050000",
        "100500002005000030050000300500003f0500004f0500004f0500005f0500005f0500006e0500007e0500007e050000",
        "8d0500009d0500009d050000ad050000bc050000bc050000cc050000dc050000dc050000eb050000eb050000fb050000",
        "0a0600000a0600001a0600002a0600002a06000039060000490600004906000059060000590600006806000078060000",
        "78060000870600009706000097060000a7060000b6060000b6060000c6060000d6060000d6060000e5060000e5060000",
        "f50600000407000004070000140700002407000024070000330700004307000043070000530700005307000062070000",
        "7207000072070000810700009107000091070000a1070000b0070000b0070000c0070000d0070000d0070000df070000",
        "df070000ef070000fe070000fe0700000e0800001e0800001e0800002d0800003d0800003d0800004d0800004d080000",
        "5c0800006c0800006c0800007b0800008b0800008b0800009b080000aa080000aa080000ba080000ca080000ca080000",
        "d9080000d9080000e9080000f8080000f808000008090000180900001809000027090000370900003709000047090000",
        "4709000056090000660900006609000075090000850900008509000095090000a4090000a4090000b4090000c4090000",
        "c4090000d3090000d3090000e3090000f2090000f2090000",
    );
    //   tc class add dev a parent 1:1 classid 1:11 htb rate 50gbit ceil 100gbit quantum 1600
    // up to the rate table (both tables are all zero: tc computes them from the
    // 32-bit rate, 0xffffffff, and they round to 0 ticks).
    const TC_CLASS_11_HEAD: &str = "00000000030000001100010001000100000000000800010068746200540802000c000600806e8774010000000c00070000dd0ee9020000003000010003010000ffff0000ffffffff03010000ffff0000ffffffff000000000000000040060000000000000000000004040400";
    //   tc filter add dev a parent 1: protocol ip prio 10 handle ::5 u32 match ip src 198.51.100.0/24 flowid 1:10
    const TC_FILTER_V4: &str = "0000000003000000050000000000010008000a0008000100753332003000020008000100100001002400050001000100000000000000000000000000ffffff00c63364000c00000000000000";
    //   tc filter add dev a parent 1: protocol ipv6 prio 11 u32 match ip6 src 2001:db8:1::/48 flowid 1:10
    const TC_FILTER_V6: &str = "0000000003000000000000000000010086dd0b0008000100753332004000020008000100100001003400050001000200000000000000000000000000ffffffff20010db80800000000000000ffff0000000100000c00000000000000";

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn bytes(m: &TcMessage) -> Vec<u8> {
        let mut b = vec![0; m.buffer_len()];
        m.emit(&mut b);
        b
    }

    fn subnet(s: &str) -> VirtualSubnet {
        s.parse().unwrap()
    }

    fn class(minor: u16, rate: u64, ceil: u64) -> HtbClass {
        let clock = PschedClock::HIGH_RES;
        HtbClass {
            id: TcId::new(1, minor),
            parent: TcId::new(1, 1),
            rate,
            ceil,
            burst: clock.default_burst(rate, 1600, 0.0),
            cburst: clock.default_burst(ceil, 1600, 0.0),
            quantum: 1600,
            leaf: true,
            depth: 1,
        }
    }

    #[test]
    fn qdisc_message_is_what_tc_sends() {
        let m = htb_qdisc_message(3, TcId::new(1, 0x12));
        assert_eq!(bytes(&m), unhex(TC_QDISC));
    }

    #[test]
    fn class_message_is_what_tc_sends() {
        // 20 Mbit/s = 2.5e6 bytes/s, ceil 100 Mbit/s; bursts tc's default.
        let c = class(0x10, 2_500_000, 12_500_000);
        assert_eq!((c.burst, c.cburst), (1600, 1600));
        let m = htb_class_message(3, &c, &PschedClock::HIGH_RES, 1600);
        let got = bytes(&m);
        let want = unhex(TC_CLASS_10);
        assert_eq!(got.len(), want.len());
        assert_eq!(got, want);
    }

    #[test]
    fn class_message_above_32_bits_uses_rate64_and_exact_bursts() {
        let c = class(0x11, 6_250_000_000, 12_500_000_000);
        let m = htb_class_message(3, &c, &PschedClock::HIGH_RES, 1600);
        let got = bytes(&m);
        let mut want = unhex(TC_CLASS_11_HEAD);
        // tc truncates 1606 bytes at 6.25e9 B/s to 0 whole microseconds, so its
        // burst is 0 ticks; ours is the exact 4 (and 2 at the ceil).
        let parms = want.len() - 4 - 48 + 4;
        assert_eq!(&want[parms + 24..parms + 32], &[0; 8]);
        want[parms + 24..parms + 28].copy_from_slice(&4_u32.to_ne_bytes());
        want[parms + 28..parms + 32].copy_from_slice(&2_u32.to_ne_bytes());
        want.extend_from_slice(&[0; 1024]);
        want.extend_from_slice(&unhex("04040300"));
        want.extend_from_slice(&[0; 1024]);
        assert_eq!(got, want);
    }

    #[test]
    fn filter_messages_are_what_tc_sends() {
        let v4 = U32Filter {
            kind: FilterKind::V4,
            node: 5,
            subnet: Some(subnet("198.51.100.0/24")),
            class: TcId::new(1, 0x10),
        };
        assert_eq!(bytes(&u32_filter_message(3, 10, &v4)), unhex(TC_FILTER_V4));
        let v6 = U32Filter {
            kind: FilterKind::V6,
            node: 1,
            subnet: Some(subnet("2001:db8:1::/48")),
            class: TcId::new(1, 0x10),
        };
        let mut want = unhex(TC_FILTER_V6);
        // tc let the kernel pick the node; we name it.
        want[8] = 1;
        assert_eq!(bytes(&u32_filter_message(3, 11, &v6)), want);
    }

    #[test]
    fn source_keys_cover_the_prefix_words() {
        let k = source_keys(subnet("10.1.0.0/16"));
        assert_eq!(
            k,
            vec![U32Key {
                mask: 0xffff_0000,
                val: 0x0a01_0000,
                off: 12
            }]
        );
        assert!(source_keys(subnet("0.0.0.0/0")).is_empty());
        let k = source_keys(subnet("2001:db8:aa:bb::/72"));
        assert_eq!(k.len(), 3);
        assert_eq!((k[0].off, k[1].off, k[2].off), (8, 12, 16));
        assert_eq!(k[1].val, 0x00aa_00bb);
        assert_eq!((k[2].mask, k[2].val), (0xff00_0000, 0));
        assert_eq!(source_keys(subnet("2001:db8::1/128")).len(), 4);
    }

    #[test]
    fn rate_table_follows_tc_calc_rtable() {
        let clock = PschedClock::HIGH_RES;
        let (cell_log, t) = calc_rtable(&clock, 2_500_000, 1600);
        assert_eq!(cell_log, 3);
        // size 8: 3 whole us -> 46 ticks; size 2048: 819 us -> 12796 ticks.
        assert_eq!((t[0], t[1], t[255]), (46, 93, 12_796));
        assert!(t.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(calc_rtable(&clock, 1_000_000, 255).0, 0);
        assert_eq!(calc_rtable(&clock, 1_000_000, 0).0, 3, "mtu 0 means 2047");
        assert_eq!(calc_rtable(&clock, u32::MAX, 1600).1, [0; 256]);
    }

    #[test]
    fn psched_clock_is_read_like_tc() {
        let c = PschedClock::parse("000003e8 00000040 000f4240 3b9aca00\n").unwrap();
        assert_eq!(c, PschedClock::HIGH_RES);
        // A low-resolution kernel: HZ from the last word.
        let c = PschedClock::parse("000003e8 00000040 000f4240 000003e8").unwrap();
        assert_eq!(c.hz, 1000);
        // Old nanosecond kernels advertise 1e9 resolution: t2us := us2t.
        let c = PschedClock::parse("000003e8 00000040 3b9aca00 3b9aca00").unwrap();
        assert_eq!((c.tick_in_usec, c.hz), (1000.0, 100));
        assert!(PschedClock::parse("zz").is_none());
        assert!(PschedClock::parse("000003e8 00000000 000f4240").is_none());
        assert_eq!(PschedClock::HIGH_RES.ticks(2_500_000, 1600), 10_000);
        assert_eq!(PschedClock::HIGH_RES.ticks(12_500_000, 1600), 2_000);
    }

    fn tenants() -> ShareTreeConfig {
        ShareTreeConfig::new(100_000_000)
            .with_class(ShareClassConfig::new(0x10, 20))
            .with_class(ShareClassConfig::new(0x20, 30))
            .with_class(ShareClassConfig::new(0x30, 50))
            .with_filter(subnet("192.0.2.0/24"), 0x10)
            .with_filter(subnet("198.51.100.0/24"), 0x20)
            .with_filter(subnet("203.0.113.0/24"), 0x30)
            .with_default(0x30)
    }

    #[test]
    fn plan_gives_weight_shares_link_ceils_and_proportional_quanta() {
        let p = tenants().plan(&PschedClock::HIGH_RES).unwrap();
        let got: Vec<_> = p
            .classes
            .iter()
            .map(|c| {
                (
                    c.id.to_string(),
                    c.parent.to_string(),
                    c.rate,
                    c.ceil,
                    c.quantum,
                    c.leaf,
                )
            })
            .collect();
        let s = |x: &str| x.to_owned();
        assert_eq!(
            got,
            vec![
                (s("1:1"), s("1:"), 12_500_000, 12_500_000, 327_680, false),
                (s("1:10"), s("1:1"), 2_500_000, 12_500_000, 65_536, true),
                (s("1:20"), s("1:1"), 3_750_000, 12_500_000, 98_304, true),
                (s("1:30"), s("1:1"), 6_250_000, 12_500_000, 163_840, true),
            ]
        );
        // An explicit floor (no GSO on the link); never below the mtu.
        let mut cfg = tenants();
        cfg.quantum_floor = Some(1500);
        let q: Vec<u32> = cfg
            .plan(&PschedClock::HIGH_RES)
            .unwrap()
            .classes
            .iter()
            .map(|c| c.quantum)
            .collect();
        assert_eq!(q, vec![8000, 1600, 2400, 4000]);
        // Beyond MAX_QUANTUM quanta stop growing.
        let wide = ShareTreeConfig::new(1_000_000_000)
            .with_class(ShareClassConfig::new(2, 1))
            .with_class(ShareClassConfig::new(3, 1000))
            .with_default(2);
        let p2 = wide.plan(&PschedClock::HIGH_RES).unwrap();
        assert_eq!(
            (p2.classes[1].quantum, p2.classes[2].quantum),
            (65_536, MAX_QUANTUM)
        );
        let shares = tenants().leaf_shares().unwrap();
        assert_eq!(shares[&0x10], 0.2);
        assert_eq!(shares[&0x30], 0.5);
        assert_eq!(p.default_class, TcId::new(1, 0x30));
        assert_eq!(p.filters.len(), 4);
        assert_eq!(p.filters[3].kind, FilterKind::CatchAll);
        assert_eq!(p.filters[3].class, TcId::new(1, 0x30));
    }

    #[test]
    fn plan_nests_shares_and_orders_prefixes_longest_first() {
        let cfg = ShareTreeConfig::new(1_000_000_000)
            .with_class(
                ShareClassConfig::new(0x10, 1)
                    .with_child(ShareClassConfig::new(0x11, 1))
                    .with_child(ShareClassConfig::new(0x12, 3)),
            )
            .with_class(
                ShareClassConfig::new(0x20, 3)
                    .with_rate(100_000_000)
                    .with_ceil(500_000_000),
            )
            .with_filter(subnet("10.0.0.0/8"), 0x11)
            .with_filter(subnet("10.1.0.0/16"), 0x12)
            .with_filter(subnet("10.1.2.0/24"), 0x20)
            .with_filter(subnet("2001:db8::/32"), 0x20)
            .with_default(0x11);
        let p = cfg.plan(&PschedClock::HIGH_RES).unwrap();
        let rate = |m: u16| p.classes.iter().find(|c| c.id.minor() == m).unwrap();
        assert_eq!(rate(0x10).rate, 31_250_000);
        assert_eq!(rate(0x11).rate, 7_812_500);
        assert_eq!(rate(0x12).rate, 23_437_500);
        assert_eq!((rate(0x20).rate, rate(0x20).ceil), (12_500_000, 62_500_000));
        assert_eq!(rate(0x12).depth, 2);
        // Parents come before children.
        let pos = |m: u16| p.classes.iter().position(|c| c.id.minor() == m).unwrap();
        assert!(pos(0x10) < pos(0x11) && pos(0x10) < pos(0x12));
        let order: Vec<_> = p
            .filters
            .iter()
            .map(|f| (f.kind, f.node, f.subnet.map(|s| s.to_string())))
            .collect();
        assert_eq!(
            order,
            vec![
                (FilterKind::V4, 1, Some("10.1.2.0/24".to_owned())),
                (FilterKind::V4, 2, Some("10.1.0.0/16".to_owned())),
                (FilterKind::V4, 3, Some("10.0.0.0/8".to_owned())),
                (FilterKind::V6, 1, Some("2001:db8::/32".to_owned())),
                (FilterKind::CatchAll, 1, None),
            ]
        );
    }

    #[test]
    fn invalid_trees_are_refused_naming_the_class() {
        let plan = |c: ShareTreeConfig| c.plan(&PschedClock::HIGH_RES).unwrap_err();
        let e = plan(tenants().with_class(ShareClassConfig::new(1, 5)));
        assert!(matches!(e, ShareTreeError::ReservedId { id: 1 }), "{e}");
        let e = plan(tenants().with_class(ShareClassConfig::new(0x20, 5)));
        assert!(matches!(e, ShareTreeError::DuplicateId { id: 0x20 }), "{e}");
        let e = plan(tenants().with_class(ShareClassConfig::new(0x40, 0)));
        assert!(matches!(e, ShareTreeError::ZeroWeight { id: 0x40 }), "{e}");
        assert_eq!(e.to_string(), "class 1:40 has weight 0");
        let e = plan(tenants().with_default(0x99));
        assert!(
            matches!(e, ShareTreeError::UnknownClass { id: 0x99, .. }),
            "{e}"
        );
        let e = plan(tenants().with_filter(subnet("192.0.2.0/24"), 0x20));
        assert!(matches!(e, ShareTreeError::DuplicatePrefix { .. }), "{e}");
        let nested = ShareTreeConfig::new(1_000_000)
            .with_class(ShareClassConfig::new(0x10, 1).with_child(ShareClassConfig::new(0x11, 1)))
            .with_default(0x11)
            .with_filter(subnet("10.0.0.0/8"), 0x10);
        let e = plan(nested);
        assert!(matches!(e, ShareTreeError::NotLeaf { id: 0x10, .. }), "{e}");
        assert!(e.to_string().contains("filter 10.0.0.0/8"), "{e}");
        let e = plan(
            tenants().with_class(
                ShareClassConfig::new(0x40, 1)
                    .with_rate(50_000_000)
                    .with_ceil(10_000_000),
            ),
        );
        assert!(matches!(e, ShareTreeError::Rate { id: 0x40, .. }), "{e}");
        let mut deep = ShareClassConfig::new(0x100 + 8, 1);
        for i in (0..8).rev() {
            deep = ShareClassConfig::new(0x100 + i, 1).with_child(deep);
        }
        let e = plan(ShareTreeConfig::new(1_000_000).with_class(deep));
        assert!(
            matches!(e, ShareTreeError::TooDeep { id: 0x107, .. }),
            "{e}"
        );
        assert!(matches!(
            plan(ShareTreeConfig::new(1_000_000)),
            ShareTreeError::Empty
        ));
        assert!(matches!(
            plan(ShareTreeConfig::new(7)),
            ShareTreeError::LinkRate { .. }
        ));
        let mut cfg = tenants();
        cfg.mtu = 10;
        assert!(matches!(plan(cfg), ShareTreeError::Mtu { mtu: 10 }));
        // A share that rounds to zero bytes per second.
        let e = plan(
            ShareTreeConfig::new(80)
                .with_class(ShareClassConfig::new(2, 1))
                .with_class(ShareClassConfig::new(3, 100))
                .with_default(2),
        );
        assert!(matches!(e, ShareTreeError::Rate { id: 2, .. }), "{e}");
    }

    #[test]
    fn class_dump_round_trips_through_the_kernel_layout() {
        for c in [
            class(0x10, 2_500_000, 12_500_000),
            class(0x11, 6_250_000_000, 12_500_000_000),
        ] {
            let clock = PschedClock::HIGH_RES;
            let m = htb_class_message(3, &c, &clock, 1600);
            let parsed = TcMessage::parse(&bytes(&m)[..]).unwrap();
            let d = decode_class(&parsed).unwrap();
            assert_eq!(
                (d.id, d.parent, d.rate, d.ceil),
                (c.id, c.parent, c.rate, c.ceil)
            );
            assert_eq!(d.quantum, 1600);
            assert!(class_matches(&d, &c, &clock));
            let mut other = c;
            other.quantum += 1;
            assert!(!class_matches(&d, &other, &clock));
            other = c;
            other.parent = TcId::new(1, 2);
            assert!(!class_matches(&d, &other, &clock));
        }
    }

    #[test]
    fn filter_dump_round_trips_and_compares() {
        let p = tenants().plan(&PschedClock::HIGH_RES).unwrap();
        let dumped: Vec<DumpedFilter> = p
            .filters
            .iter()
            .map(|f| {
                let m = u32_filter_message(3, 20 + f.kind.offset(), f);
                decode_filter(&TcMessage::parse(&bytes(&m)[..]).unwrap()).unwrap()
            })
            .collect();
        assert_eq!(dumped[0].protocol, ETH_P_IP);
        assert_eq!(dumped[3].protocol, ETH_P_ALL);
        assert_eq!(dumped[1].node, 2);
        // The kernel also reports each priority and its hash table, without a
        // selector: they are not filters.
        let table = DumpedFilter {
            prio: 20,
            protocol: ETH_P_IP,
            node: 0,
            class: TcId(0),
            selector: None,
        };
        let mut refs: Vec<&DumpedFilter> = vec![&table];
        refs.extend(dumped.iter());
        assert!(filters_match(&refs, 20, &p.filters));
        let refs = &refs[1..];
        assert!(!filters_match(refs, 10, &p.filters), "band differs");
        assert!(!filters_match(&refs[..3], 20, &p.filters), "one missing");
        let moved = tenants()
            .with_default(0x10)
            .plan(&PschedClock::HIGH_RES)
            .unwrap();
        assert!(!filters_match(refs, 20, &moved.filters), "catch-all class");
        let mut cfg = tenants();
        cfg.filters[0].subnet = subnet("192.0.2.128/25");
        let narrowed = cfg.plan(&PschedClock::HIGH_RES).unwrap();
        assert!(!filters_match(refs, 20, &narrowed.filters), "prefix");
    }

    #[test]
    fn root_qdisc_dump_names_kind_handle_and_default() {
        let m = htb_qdisc_message(3, TcId::new(1, 0x30));
        let parsed = TcMessage::parse(&bytes(&m)[..]).unwrap();
        let r = decode_root_qdisc(&parsed, 3).unwrap();
        assert_eq!(r.kind, "htb");
        assert_eq!(r.handle, TcId::new(1, 0));
        assert_eq!(r.default_minor, Some(0x30));
        assert!(decode_root_qdisc(&parsed, 4).is_none());
    }

    #[test]
    fn ids_and_objects_print_like_tc() {
        assert_eq!(TcId::new(1, 0).to_string(), "1:");
        assert_eq!(TcId::new(1, 0x10).to_string(), "1:10");
        assert_eq!(TcId(TC_H_ROOT).to_string(), "root");
        let f = TcObject::Filter {
            prio: 10,
            node: 3,
            subnet: Some(subnet("192.0.2.0/24")),
            class: TcId::new(1, 0x10),
        };
        assert_eq!(f.to_string(), "filter prio 10 ::3 (192.0.2.0/24 -> 1:10)");
        assert_eq!(filter_info(10, ETH_P_IP).to_ne_bytes()[..2], [0x08, 0x00]);
        assert_eq!(filter_info(11, ETH_P_IPV6) >> 16, 11);
    }

    #[test]
    fn userspace_scheduler_gets_the_same_tree() {
        use crate::sched::SchedConfig;
        let mut sched: LinkScheduler<u32> = LinkScheduler::new(SchedConfig::default());
        let mut cls = SourceClassifier::new(16, [1, 2, 3, 4]);
        let ids = tenants().install_userspace(&mut sched, &mut cls).unwrap();
        assert_eq!(ids.len(), 3);
        assert_eq!(sched.class_config(ids[&0x20]).unwrap().weight, 30);
        assert_eq!(sched.children(ClassId::ROOT).unwrap().len(), 3);
        let src = |a: [u8; 4]| IpAddr::V4(Ipv4Addr::from(a));
        assert_eq!(cls.class_of(src([198, 51, 100, 7])), Some(ids[&0x20]));
        assert_eq!(
            cls.class_of(src([10, 0, 0, 1])),
            Some(ids[&0x30]),
            "default"
        );
        assert_eq!(
            cls.class_of(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            Some(ids[&0x30])
        );
    }
}
