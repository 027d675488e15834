//! The HTB planner: resource-mgr's share-tree model ([`ShareSpec`]) on a link
//! ([`HtbLink`]) becomes every class's rate, ceil, burst and quantum, and the
//! u32 filters in the order the kernel tries them ([`HtbPlan`]).

use super::{
    DEFAULT_QUANTUM_FLOOR, ETH_P_ALL, ETH_P_IP, ETH_P_IPV6, HTB_MAJOR, MAX_CLASSES, MAX_DEPTH,
    MAX_FILTERS_PER_FAMILY, MAX_QUANTUM, PschedClock, ROOT_CLASS_MINOR, ShareTreeError, TcId,
};
use crate::classify::VirtualSubnet;
use resource_mgr::{ShareSpec, SpecLimits};
use std::collections::BTreeMap;
use std::time::Duration;

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
    pub(super) const ALL: [Self; 3] = [Self::V4, Self::V6, Self::CatchAll];

    pub(super) fn offset(self) -> u16 {
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

/// What the planner needs to know of the link besides the share tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HtbLink {
    /// Link rate in bits per second: the root class's rate, and every class's
    /// ceil unless it sets its own.
    pub rate_bps: u64,
    /// Largest frame on the link in bytes: sizes the rate tables (as `tc`'s
    /// `mtu`), the smallest burst and the smallest quantum (68..=65535).
    pub mtu: u32,
    /// Burst allowance in time at each class's rate; the burst is at least
    /// `rate / HZ + mtu` (`tc`'s default), more if this asks for more.
    pub burst: Duration,
    /// The slowest leaf's quantum in bytes; [`DEFAULT_QUANTUM_FLOOR`] if
    /// `None`. Never below the mtu.
    pub quantum_floor: Option<u32>,
}

impl HtbLink {
    /// The link rate in bytes per second, if the link is usable at all.
    pub fn check(&self) -> Result<u64, ShareTreeError> {
        if !(68..=65_535).contains(&self.mtu) {
            return Err(ShareTreeError::Mtu { mtu: self.mtu });
        }
        match self.rate_bps / 8 {
            0 => Err(ShareTreeError::LinkRate {
                rate_bps: self.rate_bps,
            }),
            bytes => Ok(bytes),
        }
    }
}

/// The limits HTB puts on a share tree: [`MAX_CLASSES`] classes and
/// [`MAX_DEPTH`] levels below the root class.
pub const HTB_LIMITS: SpecLimits = SpecLimits {
    max_classes: MAX_CLASSES,
    max_depth: MAX_DEPTH,
};

/// Plans the HTB tree of resource-mgr's share-tree model `spec` on `link`:
/// each class's rate (its weight share of its parent's rate, or its own
/// guaranteed rate, in bytes/s as the spec's units), ceil (the link rate
/// unless set), bursts and quantum, and the filters from the spec's source
/// prefixes, longest first within a family, then the catch-all to the default.
pub fn plan_htb(
    spec: &ShareSpec<VirtualSubnet>,
    link: &HtbLink,
    clock: &PschedClock,
) -> Result<HtbPlan, ShareTreeError> {
    let link_rate = link.check()?;
    let mut classes = plan_classes(spec, link_rate)?;
    size_classes(&mut classes, link, clock);
    let default_minor = spec.default_class().ok_or(ShareTreeError::NoDefault)?;
    let default_class = TcId::new(HTB_MAJOR, default_minor);
    let filters = plan_filters(spec, default_class)?;
    Ok(HtbPlan {
        classes,
        filters,
        default_class,
        mtu: link.mtu,
    })
}

/// The root class and one class per spec class, in the spec's order (parents
/// first), with rates and ceils; bursts and quanta still 0.
fn plan_classes(
    spec: &ShareSpec<VirtualSubnet>,
    link: u64,
) -> Result<Vec<HtbClass>, ShareTreeError> {
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
    let mut rates: BTreeMap<u16, u64> = BTreeMap::new();
    for c in spec.classes() {
        if c.id <= ROOT_CLASS_MINOR {
            return Err(ShareTreeError::ReservedId { id: c.id });
        }
        let parent_rate = c
            .parent
            .and_then(|p| rates.get(&p).copied())
            .unwrap_or(link);
        let sum = spec.weight_sum(c.parent).max(1);
        let share = (u128::from(parent_rate) * u128::from(c.weight) / u128::from(sum))
            .min(u128::from(u64::MAX)) as u64;
        let rate = c.rate.unwrap_or(share);
        let ceil = c.ceil.unwrap_or(link);
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
        rates.insert(c.id, rate);
        classes.push(HtbClass {
            id: TcId::new(HTB_MAJOR, c.id),
            parent: c.parent.map_or(root, |p| TcId::new(HTB_MAJOR, p)),
            rate,
            ceil,
            burst: 0,
            cburst: 0,
            quantum: 0,
            leaf: spec.is_leaf(c.id),
            depth: u8::try_from(spec.depth(c.id)).unwrap_or(u8::MAX),
        });
    }
    Ok(classes)
}

/// Quanta proportional to rate, the slowest leaf getting the floor (HTB's DRR
/// then lends spare bandwidth in proportion to rate), and `tc`'s bursts.
fn size_classes(classes: &mut [HtbClass], link: &HtbLink, clock: &PschedClock) {
    let min_leaf = classes
        .iter()
        .filter(|c| c.leaf)
        .map(|c| c.rate)
        .min()
        .unwrap_or_else(|| classes.first().map_or(1, |c| c.rate))
        .max(1);
    let burst_time = link.burst.as_secs_f64();
    let floor = link
        .quantum_floor
        .unwrap_or(DEFAULT_QUANTUM_FLOOR)
        .clamp(link.mtu, MAX_QUANTUM);
    let mut capped = 0_usize;
    for c in classes {
        let q = u128::from(floor) * u128::from(c.rate) / u128::from(min_leaf);
        if c.leaf && q > u128::from(MAX_QUANTUM) {
            capped += 1;
        }
        c.quantum = q.clamp(u128::from(floor), u128::from(MAX_QUANTUM)) as u32;
        c.burst = clock.default_burst(c.rate, link.mtu, burst_time);
        c.cburst = clock.default_burst(c.ceil, link.mtu, burst_time);
    }
    if capped > 0 {
        tracing::warn!(
            capped,
            floor,
            max = MAX_QUANTUM,
            "leaf rates span too wide a range: some quanta are capped, so spare bandwidth is not lent in proportion to rate"
        );
    }
}

/// The source-prefix filters per family, longest prefix first (ties in
/// address order, so the plan is stable), then the catch-all.
fn plan_filters(
    spec: &ShareSpec<VirtualSubnet>,
    default_class: TcId,
) -> Result<Vec<U32Filter>, ShareTreeError> {
    let mut by_family: [Vec<(VirtualSubnet, TcId)>; 2] = [Vec::new(), Vec::new()];
    for k in spec.keys() {
        let class = TcId::new(HTB_MAJOR, k.class);
        by_family[usize::from(!k.key.addr().is_ipv4())].push((k.key, class));
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
    Ok(filters)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux::tc::test_util::*;
    use crate::linux::tc::*;

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
    fn the_planner_consumes_the_resource_mgr_model() {
        use resource_mgr::{ClassSpec, LeafKey, ShareSpec};
        // The nested config of the test above, written as the flat model.
        let spec = ShareSpec::new(
            vec![
                ClassSpec::new(0x10, 1),
                ClassSpec::new(0x11, 1).under(0x10),
                ClassSpec::new(0x12, 3).under(0x10),
                ClassSpec::new(0x20, 3)
                    .with_rate(12_500_000)
                    .with_ceil(62_500_000),
            ],
            vec![
                LeafKey {
                    key: subnet("10.0.0.0/8"),
                    class: 0x11,
                },
                LeafKey {
                    key: subnet("2001:db8::/32"),
                    class: 0x20,
                },
            ],
            Some(0x11),
            HTB_LIMITS,
        )
        .unwrap();
        let link = ShareTreeConfig::new(1_000_000_000).htb_link();
        let p = plan_htb(&spec, &link, &PschedClock::HIGH_RES).unwrap();
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
            .with_filter(subnet("2001:db8::/32"), 0x20)
            .with_default(0x11);
        assert_eq!(cfg.spec().unwrap(), spec);
        assert_eq!(cfg.plan(&PschedClock::HIGH_RES).unwrap(), p);
        let no_default = ShareSpec::new(spec.classes().to_vec(), vec![], None, HTB_LIMITS).unwrap();
        assert!(matches!(
            plan_htb(&no_default, &link, &PschedClock::HIGH_RES),
            Err(ShareTreeError::NoDefault)
        ));
    }
}
