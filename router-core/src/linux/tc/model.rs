//! The share-tree configuration of one egress link ([`ShareTreeConfig`]: the
//! shape the config file and builders write, classes nested) mapped onto
//! resource-mgr's share-tree model ([`ShareSpec`]), which the HTB planner and
//! the userspace scheduler consume; and why a tree cannot be realised
//! ([`ShareTreeError`]).

use super::plan::{HTB_LIMITS, HtbLink, plan_htb};
use super::{HtbPlan, PschedClock};
use crate::classify::{SubnetError, VirtualSubnet};
use crate::queue::SourceClassifier;
use crate::sched::{ClassId, LinkScheduler, SchedError};
use resource_mgr::{ClassSpec, LeafKey, ShareSpec, SpecError};
use std::collections::BTreeMap;
use std::time::Duration;

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

    /// The link as the planner sees it.
    pub fn htb_link(&self) -> HtbLink {
        HtbLink {
            rate_bps: self.link_rate_bps,
            mtu: self.mtu,
            burst: self.burst,
            quantum_floor: self.quantum_floor,
        }
    }

    /// The tree as resource-mgr's share-tree model: classes parents first
    /// (depth first, in the order configured), rates and ceils in bytes/s,
    /// every filter's subnet as a leaf key, checked against HTB's limits.
    pub fn spec(&self) -> Result<ShareSpec<VirtualSubnet>, ShareTreeError> {
        let mut classes = Vec::new();
        let mut stack: Vec<(Option<u16>, &ShareClassConfig)> =
            self.classes.iter().rev().map(|c| (None, c)).collect();
        while let Some((parent, c)) = stack.pop() {
            classes.push(ClassSpec {
                id: c.id,
                parent,
                weight: c.weight,
                rate: c.rate_bps.map(|r| r / 8),
                ceil: c.ceil_bps.map(|r| r / 8),
            });
            stack.extend(c.children.iter().rev().map(|ch| (Some(c.id), ch)));
        }
        let keys = self
            .filters
            .iter()
            .map(|f| LeafKey {
                key: f.subnet,
                class: f.class,
            })
            .collect();
        ShareSpec::new(classes, keys, Some(self.default_class), HTB_LIMITS)
            .map_err(|e| ShareTreeError::from_spec(e, &self.filters))
    }

    /// Checks the tree and computes every class's rate, ceil, burst and
    /// quantum, and the filter order.
    pub fn plan(&self, clock: &PschedClock) -> Result<HtbPlan, ShareTreeError> {
        let link = self.htb_link();
        link.check()?;
        plan_htb(&self.spec()?, &link, clock)
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

    /// Builds the same tree in a userspace [`LinkScheduler`] under its root
    /// ([`LinkScheduler::add_spec`] of [`spec`](Self::spec)) and maps every
    /// filter's subnet and the default in `classifier`
    /// ([`SourceClassifier::map_spec`]). Returns the scheduler class of each
    /// config id. Explicit rates and ceils have no userspace counterpart (the
    /// userspace scheduler shares by weight only; shape the link with its link
    /// rate).
    pub fn install_userspace<P>(
        &self,
        sched: &mut LinkScheduler<P>,
        classifier: &mut SourceClassifier,
    ) -> Result<BTreeMap<u16, ClassId>, ShareTreeError> {
        self.validate()?;
        let spec = self.spec()?;
        let ids = sched
            .add_spec(ClassId::ROOT, &spec)
            .map_err(|e| ShareTreeError::Userspace {
                class: e.id,
                source: e.source,
            })?;
        classifier
            .map_spec(&spec, &ids)
            .map_err(|source| ShareTreeError::Classifier { source })?;
        Ok(ids)
    }

    /// Checks the tree without programming it.
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
    /// The tree has no default leaf.
    #[error("the share tree has no default class")]
    NoDefault,
    /// Another fault of the share-tree model.
    #[error("invalid share tree: {source}")]
    Model {
        /// What resource-mgr found.
        #[source]
        source: SpecError,
    },
    /// The userspace classifier refused a source prefix (it is full).
    #[error("userspace classifier refused a source prefix: {source}")]
    Classifier {
        /// Why.
        #[source]
        source: SubnetError,
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

impl ShareTreeError {
    /// Names a fault of the share-tree model as the config spells it: keys are
    /// `filters`' subnets, the HTB class `1:ID`.
    fn from_spec(e: SpecError, filters: &[SourceFilter]) -> Self {
        let filter = |index: usize| {
            filters.get(index).map_or_else(
                || format!("filter #{index}"),
                |f| format!("filter {}", f.subnet),
            )
        };
        match e {
            SpecError::Empty => Self::Empty,
            SpecError::DuplicateClass { id } => Self::DuplicateId { id },
            SpecError::TooManyClasses { limit } => Self::TooManyClasses { limit },
            SpecError::TooDeep { id, limit } => Self::TooDeep { id, limit },
            SpecError::ZeroWeight { id } => Self::ZeroWeight { id },
            SpecError::UnknownDefault { id } => Self::UnknownClass {
                what: "default".to_owned(),
                id,
            },
            SpecError::DefaultNotLeaf { id } => Self::NotLeaf {
                what: "default".to_owned(),
                id,
            },
            SpecError::KeyUnknownClass { index, id } => Self::UnknownClass {
                what: filter(index),
                id,
            },
            SpecError::KeyNotLeaf { index, id } => Self::NotLeaf {
                what: filter(index),
                id,
            },
            SpecError::DuplicateKey { index } => match filters.get(index) {
                Some(f) => Self::DuplicatePrefix { subnet: f.subnet },
                None => Self::Model { source: e },
            },
            _ => Self::Model { source: e },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux::tc::test_util::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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

    #[test]
    fn nested_trees_keep_their_shape_in_userspace() {
        use crate::sched::SchedConfig;
        let cfg = ShareTreeConfig::new(1_000_000_000)
            .with_class(
                ShareClassConfig::new(0x10, 1)
                    .with_child(ShareClassConfig::new(0x11, 1))
                    .with_child(ShareClassConfig::new(0x12, 3)),
            )
            .with_class(ShareClassConfig::new(0x20, 3))
            .with_filter(subnet("10.1.0.0/16"), 0x12)
            .with_default(0x11);
        let spec = cfg.spec().unwrap();
        let order: Vec<(u16, Option<u16>)> =
            spec.classes().iter().map(|c| (c.id, c.parent)).collect();
        assert_eq!(
            order,
            vec![
                (0x10, None),
                (0x11, Some(0x10)),
                (0x12, Some(0x10)),
                (0x20, None)
            ]
        );
        let mut sched: LinkScheduler<u32> = LinkScheduler::new(SchedConfig::default());
        let mut cls = SourceClassifier::new(16, [1, 2, 3, 4]);
        let ids = cfg.install_userspace(&mut sched, &mut cls).unwrap();
        assert_eq!(sched.parent(ids[&0x12]).unwrap(), Some(ids[&0x10]));
        assert_eq!(sched.class_config(ids[&0x12]).unwrap().weight, 3);
        assert_eq!(sched.children(ClassId::ROOT).unwrap().len(), 2);
        let src = |a: [u8; 4]| IpAddr::V4(Ipv4Addr::from(a));
        assert_eq!(cls.class_of(src([10, 1, 2, 3])), Some(ids[&0x12]));
        assert_eq!(cls.class_of(src([10, 2, 0, 1])), Some(ids[&0x11]));
    }
}
