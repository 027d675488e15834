//! The policy seam: how a service-specific choice enters the engine.
//!
//! The engine asks a [`Policy`] once per new flow to choose among the next-hop
//! candidates of the flow's virtual subnet. Policies come from execution
//! environments (wasm modules) or the built-in [`LeastCost`] default.

use crate::classify::{FlowKey, VirtualSubnet};
use std::net::IpAddr;
use std::sync::Arc;

/// What a policy sees about the flow it must place (DESIGN.md §4: choices may use
/// the request itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowRequest {
    /// The flow's five-tuple.
    pub key: FlowKey,
    /// Index of the virtual subnet the destination falls in (engine-local id).
    pub subnet: SubnetId,
    /// Level of this router in the hierarchy.
    pub level: Level,
}

/// One next-hop candidate offered to a policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Tunnel endpoint of the next hop (site SLR, AS gateway or host server).
    pub addr: IpAddr,
    /// Last reported load of this subnet at that next hop, 0.0 ..= 1.0 (may exceed
    /// 1.0 when overloaded).
    pub load: f64,
    /// Route cost from this router to the next hop (operator units, lower is better).
    pub route_cost: f64,
    /// Whether the next hop is currently usable (registered, alive, not draining).
    pub up: bool,
}

/// A policy's answer for one new flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Pin the flow to `candidates[index]`.
    Select(usize),
    /// Refuse the flow (the engine drops the packet and counts it).
    Reject,
}

/// Why a policy call did not produce a usable decision; the engine falls back to the
/// built-in policy and counts the fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The policy trapped or panicked.
    #[error("policy trapped: {0}")]
    Trap(String),
    /// The policy ran out of its CPU budget for this call.
    #[error("policy exceeded its CPU budget")]
    Timeout,
    /// The policy returned an index outside the candidate list.
    #[error("policy returned candidate {index} of {len}")]
    OutOfRange {
        /// The index returned.
        index: usize,
        /// Number of candidates offered.
        len: usize,
    },
    /// The policy is quarantined or otherwise unavailable.
    #[error("policy unavailable: {0}")]
    Unavailable(String),
}

/// A next-hop selection policy for one or more virtual subnets.
pub trait Policy: Send + Sync {
    /// Short name for logs and counters.
    fn name(&self) -> &str;
    /// Choose a next hop for a new flow. `candidates` is never empty.
    fn select(&self, req: &FlowRequest, candidates: &[Candidate]) -> Result<Decision, PolicyError>;
}

/// The operator's F and G (DESIGN.md §4): F turns a next hop's reported load and
/// the route cost to it into a cost; G aggregates a subnet's candidates into the
/// one load this router advertises upward.
pub trait CostModel: Send + Sync {
    /// Short name for logs and counters.
    fn name(&self) -> &str;
    /// F(load, route_cost); lower is better, `+inf` means unreachable.
    fn cost(&self, load: f64, route_cost: f64) -> Result<f64, PolicyError>;
    /// G over a subnet's candidates: the load to advertise upward.
    fn aggregate(&self, candidates: &[Candidate]) -> Result<f64, PolicyError>;
    /// The model that computes F and G for the subnet `addr`/`len`, when this
    /// one dispatches by subnet ([`SubnetCosts`]); `None`: this one serves
    /// every subnet.
    fn for_subnet(&self, addr: IpAddr, len: u8) -> Option<&dyn CostModel> {
        let _ = (addr, len);
        None
    }
}

/// The built-in F and G: F = load + route_cost; G = the lowest load among usable
/// candidates (what the next new flow would see), `+inf` when none is usable.
#[derive(Debug, Clone, Copy, Default)]
pub struct SumCost;

impl CostModel for SumCost {
    fn name(&self) -> &str {
        "builtin-sum-cost"
    }
    fn cost(&self, load: f64, route_cost: f64) -> Result<f64, PolicyError> {
        Ok(load + route_cost)
    }
    fn aggregate(&self, candidates: &[Candidate]) -> Result<f64, PolicyError> {
        Ok(candidates
            .iter()
            .filter(|c| c.up && !c.load.is_nan())
            .map(|c| c.load)
            .fold(f64::INFINITY, f64::min))
    }
}

/// Engine-local identifier of a virtual subnet (index into the subnet table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubnetId(pub u32);

/// A router's level in the SLR hierarchy (DESIGN.md §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Level {
    /// Network-level SLR: chooses among ASes.
    Network = 0,
    /// System (AS) level SLR: chooses among host sites.
    System = 1,
    /// Site-level SLR: chooses among host servers.
    Site = 2,
}

/// The built-in default: the usable candidate with the lowest `load + route_cost`,
/// ties broken by the lowest index, so the engine works without any module.
#[derive(Debug, Clone, Copy, Default)]
pub struct LeastCost;

impl LeastCost {
    /// The pure choice, shared with fallbacks that cannot fail.
    pub fn choose(candidates: &[Candidate]) -> Decision {
        let mut best: Option<(usize, f64)> = None;
        for (i, c) in candidates.iter().enumerate() {
            if !c.up {
                continue;
            }
            let cost = c.load + c.route_cost;
            // NaN costs never win: a broken load report must not attract traffic.
            if cost.is_nan() {
                continue;
            }
            if best.is_none_or(|(_, b)| cost < b) {
                best = Some((i, cost));
            }
        }
        best.map_or(Decision::Reject, |(i, _)| Decision::Select(i))
    }
}

impl Policy for LeastCost {
    fn name(&self) -> &str {
        "builtin-least-cost"
    }
    fn select(
        &self,
        _req: &FlowRequest,
        candidates: &[Candidate],
    ) -> Result<Decision, PolicyError> {
        Ok(Self::choose(candidates))
    }
}

impl std::fmt::Debug for dyn Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("name", &self.name())
            .finish()
    }
}

impl std::fmt::Debug for dyn CostModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CostModel")
            .field("name", &self.name())
            .finish()
    }
}

/// Spreads new flows over the usable candidates by rendezvous (highest random
/// weight) hashing of the five-tuple, salted with the router's level so levels
/// choose independently (a site would otherwise pick the index its system router
/// picked). A candidate going down moves only its own flows' future choices.
#[derive(Debug, Clone, Copy, Default)]
pub struct FlowHash;

impl FlowHash {
    fn fnv1a(bytes: impl IntoIterator<Item = u8>, mut h: u64) -> u64 {
        for b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01B3);
        }
        h
    }

    fn addr_bytes(a: IpAddr) -> [u8; 16] {
        match a {
            IpAddr::V4(v) => v.to_ipv6_mapped().octets(),
            IpAddr::V6(v) => v.octets(),
        }
    }

    /// SplitMix64's finaliser: spreads FNV's weak low bits.
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl Policy for FlowHash {
    fn name(&self) -> &str {
        "flow-hash"
    }

    fn select(&self, req: &FlowRequest, candidates: &[Candidate]) -> Result<Decision, PolicyError> {
        let k = &req.key;
        let base = Self::fnv1a(
            Self::addr_bytes(k.src)
                .into_iter()
                .chain(Self::addr_bytes(k.dst))
                .chain(k.src_port.to_be_bytes())
                .chain(k.dst_port.to_be_bytes())
                .chain([k.proto, req.level as u8]),
            0xCBF2_9CE4_8422_2325,
        );
        let best = candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| c.up)
            .map(|(i, c)| (Self::mix(Self::fnv1a(Self::addr_bytes(c.addr), base)), i))
            .max();
        Ok(best.map_or(Decision::Reject, |(_, i)| Decision::Select(i)))
    }
}

/// Per-subnet bindings of a policy or a cost model: the most specific binding
/// whose prefix holds an address (or covers a prefix), else the default.
/// Bindings are few (one per module-governed subnet), so a scan per new flow or
/// per table row costs less than a lookup structure would.
pub struct BySubnet<T: ?Sized> {
    default: Arc<T>,
    /// Most specific first.
    bindings: Vec<(VirtualSubnet, Arc<T>)>,
}

/// The policy of every served subnet. A bound module's fault returns its
/// error: the engine then falls back to the built-in policy and counts it.
pub type SubnetPolicies = BySubnet<dyn Policy>;

/// F and G of every subnet of the next-hop table (a bound cost module's fault
/// falls back to the built-in sum and minimum, counted by the table).
pub type SubnetCosts = BySubnet<dyn CostModel>;

impl<T: ?Sized> Clone for BySubnet<T> {
    fn clone(&self) -> Self {
        Self {
            default: Arc::clone(&self.default),
            bindings: self.bindings.clone(),
        }
    }
}

impl<T: ?Sized> std::fmt::Debug for BySubnet<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BySubnet")
            .field(
                "bindings",
                &self.bindings.iter().map(|(s, _)| s).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl<T: ?Sized> BySubnet<T> {
    /// Every subnet under `default`.
    pub fn new(default: Arc<T>) -> Self {
        Self {
            default,
            bindings: Vec::new(),
        }
    }

    /// Bind `subnet` to `to` (replacing its binding), or unbind it (`None`).
    pub fn bind(&mut self, subnet: VirtualSubnet, to: Option<Arc<T>>) {
        self.bindings.retain(|(s, _)| *s != subnet);
        if let Some(p) = to {
            self.bindings.push((subnet, p));
            self.bindings
                .sort_by_key(|(s, _)| std::cmp::Reverse(s.prefix_len()));
        }
    }

    /// Replace the default.
    pub fn set_default(&mut self, to: Arc<T>) {
        self.default = to;
    }

    /// The default.
    pub fn default_binding(&self) -> &Arc<T> {
        &self.default
    }

    /// The bindings, most specific first.
    pub fn bindings(&self) -> impl Iterator<Item = (&VirtualSubnet, &Arc<T>)> {
        self.bindings.iter().map(|(s, p)| (s, p))
    }

    /// What governs the address `dst`.
    pub fn for_addr(&self, dst: IpAddr) -> &Arc<T> {
        self.bindings
            .iter()
            .find(|(s, _)| s.contains(dst))
            .map_or(&self.default, |(_, p)| p)
    }

    /// What governs the whole prefix `addr`/`len`: the most specific binding
    /// that covers it.
    pub fn for_prefix(&self, addr: IpAddr, len: u8) -> &Arc<T> {
        self.bindings
            .iter()
            .find(|(s, _)| s.prefix_len() <= len && s.contains(addr))
            .map_or(&self.default, |(_, p)| p)
    }
}

impl Policy for SubnetPolicies {
    fn name(&self) -> &str {
        match self.bindings.first() {
            Some((_, p)) => p.name(),
            None => self.default.name(),
        }
    }

    fn select(&self, req: &FlowRequest, candidates: &[Candidate]) -> Result<Decision, PolicyError> {
        self.for_addr(req.key.dst).select(req, candidates)
    }
}

/// As a cost model by itself (without [`CostModel::for_subnet`]) it is its
/// default; the table asks it per subnet.
impl CostModel for SubnetCosts {
    fn name(&self) -> &str {
        self.default.name()
    }

    fn cost(&self, load: f64, route_cost: f64) -> Result<f64, PolicyError> {
        self.default.cost(load, route_cost)
    }

    fn aggregate(&self, candidates: &[Candidate]) -> Result<f64, PolicyError> {
        self.default.aggregate(candidates)
    }

    fn for_subnet(&self, addr: IpAddr, len: u8) -> Option<&dyn CostModel> {
        Some(&**self.for_prefix(addr, len))
    }
}

#[cfg(test)]
mod builtin_tests {
    use super::*;

    fn req(port: u16, level: Level) -> FlowRequest {
        FlowRequest {
            key: FlowKey {
                proto: 6,
                src: IpAddr::from([198, 51, 100, 7]),
                src_port: port,
                dst: IpAddr::from([192, 200, 0, 10]),
                dst_port: 80,
            },
            subnet: SubnetId(0),
            level,
        }
    }

    fn cands(up: &[bool]) -> Vec<Candidate> {
        up.iter()
            .enumerate()
            .map(|(i, &up)| Candidate {
                addr: IpAddr::from([10, 0, 0, u8::try_from(i + 1).unwrap_or(0)]),
                load: 0.0,
                route_cost: 0.0,
                up,
            })
            .collect()
    }

    fn pick(p: &dyn Policy, r: &FlowRequest, c: &[Candidate]) -> usize {
        match p.select(r, c) {
            Ok(Decision::Select(i)) => i,
            other => panic!("no choice: {other:?}"),
        }
    }

    #[test]
    fn flow_hash_spreads_evenly_and_skips_down_candidates() {
        let c = cands(&[true, true, false, true]);
        let mut hits = [0u32; 4];
        for port in 0..1200 {
            hits[pick(&FlowHash, &req(port, Level::Site), &c)] += 1;
        }
        assert_eq!(hits[2], 0, "a candidate that is not up is never chosen");
        for h in [hits[0], hits[1], hits[3]] {
            assert!((300..=500).contains(&h), "uneven spread {hits:?}");
        }
        assert_eq!(
            FlowHash.select(&req(1, Level::Site), &cands(&[false])),
            Ok(Decision::Reject)
        );
    }

    #[test]
    fn flow_hash_is_stable_and_independent_across_levels() {
        let c = cands(&[true, true]);
        let mut same = 0;
        for port in 0..1000 {
            let site = pick(&FlowHash, &req(port, Level::Site), &c);
            assert_eq!(site, pick(&FlowHash, &req(port, Level::Site), &c), "stable");
            if site == pick(&FlowHash, &req(port, Level::System), &c) {
                same += 1;
            }
        }
        // Independent choices agree about half the time, not always.
        assert!(
            (400..=600).contains(&same),
            "levels agree on {same} of 1000"
        );
    }

    #[test]
    fn flow_hash_moves_only_the_flows_of_a_candidate_that_went_down() {
        let all = cands(&[true, true, true]);
        let two = cands(&[true, false, true]);
        for port in 0..500 {
            let r = req(port, Level::Site);
            let before = pick(&FlowHash, &r, &all);
            if before != 1 {
                assert_eq!(before, pick(&FlowHash, &r, &two), "port {port} moved");
            }
        }
    }

    #[derive(Debug)]
    struct Fixed(usize);
    impl Policy for Fixed {
        fn name(&self) -> &str {
            "fixed"
        }
        fn select(&self, _: &FlowRequest, _: &[Candidate]) -> Result<Decision, PolicyError> {
            Ok(Decision::Select(self.0))
        }
    }

    #[test]
    fn subnet_policies_pick_the_most_specific_binding() {
        let mut p = SubnetPolicies::new(Arc::new(Fixed(0)));
        let c = cands(&[true, true, true]);
        let wide: VirtualSubnet = "192.200.0.0/16".parse().unwrap_or_else(|_| unreachable!());
        let narrow: VirtualSubnet = "192.200.0.0/24".parse().unwrap_or_else(|_| unreachable!());
        p.bind(wide, Some(Arc::new(Fixed(1))));
        p.bind(narrow, Some(Arc::new(Fixed(2))));
        assert_eq!(pick(&p, &req(1, Level::Site), &c), 2);
        let mut other = req(1, Level::Site);
        other.key.dst = IpAddr::from([192, 200, 9, 1]);
        assert_eq!(pick(&p, &other, &c), 1);
        other.key.dst = IpAddr::from([10, 9, 9, 9]);
        assert_eq!(pick(&p, &other, &c), 0);
        p.bind(narrow, None);
        assert_eq!(pick(&p, &req(1, Level::Site), &c), 1);
    }

    #[derive(Debug)]
    struct Flat(f64);
    impl CostModel for Flat {
        fn name(&self) -> &str {
            "flat"
        }
        fn cost(&self, _: f64, _: f64) -> Result<f64, PolicyError> {
            Ok(self.0)
        }
        fn aggregate(&self, _: &[Candidate]) -> Result<f64, PolicyError> {
            Ok(self.0)
        }
    }

    #[test]
    fn subnet_costs_serve_each_prefix_from_the_binding_that_covers_it() {
        let mut c = SubnetCosts::new(Arc::new(SumCost));
        let wide: VirtualSubnet = "192.200.0.0/16".parse().unwrap_or_else(|_| unreachable!());
        c.bind(wide, Some(Arc::new(Flat(7.0))));
        let f = |c: &SubnetCosts, addr: [u8; 4], len| {
            c.for_subnet(IpAddr::from(addr), len)
                .map(|m| m.cost(0.5, 1.0))
        };
        // A /24 inside the binding: its model; the /16 itself too.
        assert_eq!(f(&c, [192, 200, 3, 0], 24), Some(Ok(7.0)));
        assert_eq!(f(&c, [192, 200, 0, 0], 16), Some(Ok(7.0)));
        // A wider prefix than the binding, or one outside it: the default.
        assert_eq!(f(&c, [192, 0, 0, 0], 8), Some(Ok(1.5)));
        assert_eq!(f(&c, [10, 0, 0, 0], 24), Some(Ok(1.5)));
        // Without dispatch a model answers for itself.
        assert!(
            SumCost
                .for_subnet(IpAddr::from([10, 0, 0, 0]), 24)
                .is_none()
        );
        c.bind(wide, None);
        assert_eq!(f(&c, [192, 200, 3, 0], 24), Some(Ok(1.5)));
    }
}
