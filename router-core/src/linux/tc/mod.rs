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
//! # Modules
//!
//! - `model`: the share-tree configuration of one link, and its errors;
//! - `plan`: the HTB planner (classes with rates and quanta, filters in order);
//! - `encode`: netlink attributes (`TCA_HTB_*`, rate tables, u32 keys);
//! - `decode`: dumps read back into structs and compared with the plan;
//! - `io`: the [`Tc`] handle that talks to the kernel; `error`: its errors,
//!   reports and counters.

mod decode;
mod encode;
mod error;
pub(crate) mod io;
mod model;
mod plan;
#[cfg(test)]
mod test_util;

pub use decode::HtbClassStats;
pub use encode::{
    PschedClock, calc_rtable, htb_class_message, htb_qdisc_message, u32_filter_message,
};
pub use error::{ApplyReport, TcCounters, TcError, TcObject};
pub use io::{Tc, apply_share_spec, apply_share_tree, remove_share_tree};
pub use model::{ShareClassConfig, ShareTreeConfig, ShareTreeError, SourceFilter};
pub use plan::{FilterKind, HTB_LIMITS, HtbClass, HtbLink, HtbPlan, U32Filter, plan_htb};

use std::fmt;

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
/// `TC_H_ROOT`: the parent of a root qdisc.
const TC_H_ROOT: u32 = 0xffff_ffff;

/// EtherType of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// Every protocol (`protocol all`).
pub const ETH_P_ALL: u16 = 0x0003;

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
