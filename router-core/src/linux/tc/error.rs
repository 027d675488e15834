//! What the netlink I/O reports: the object a request acted on, its errors,
//! what one apply did, and the handle's counters.

use super::{ShareTreeError, TcId};
use crate::classify::VirtualSubnet;
use std::fmt;
use std::io;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

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
pub(super) struct Counters {
    pub(super) applies: AtomicU64,
    pub(super) apply_failures: AtomicU64,
    pub(super) config_errors: AtomicU64,
    pub(super) requests: AtomicU64,
    pub(super) request_failures: AtomicU64,
    pub(super) rebuilds: AtomicU64,
    pub(super) filter_swaps: AtomicU64,
    pub(super) dump_truncated: AtomicU64,
    pub(super) stale_default: AtomicU64,
}

pub(super) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux::tc::encode::filter_info;
    use crate::linux::tc::test_util::*;
    use crate::linux::tc::*;

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
}
