//! The per-packet engine: the walk of DESIGN.md §3 in one [`Engine::process`].
//!
//! 1. A tunnel packet addressed to this router is terminated (outer header
//!    stripped); anything else addressed to us is delivered locally.
//! 2. The (inner) packet is classified and looked up in the flow table.
//! 3. Hit: encapsulate to the pinned next hop.
//! 4. Miss in a served virtual subnet: a new flow (TCP SYN, any UDP/ICMP datagram)
//!    is placed by the subnet's [`Policy`], pinned, and encapsulated.
//! 5. Miss on a mid-connection TCP segment: the state was lost, so the engine
//!    answers [`Verdict::Recover`] instead of choosing anew (which would break the
//!    connection); recovery (DESIGN.md §5) is the caller's.
//!
//! Every verdict and every drop reason has a counter. The engine is single-threaded
//! (`&mut self`); shells run one engine per core and apply control changes through
//! [`RouterApi`] between packet batches.

use crate::api::{ApiError, RouterApi};
use crate::classify::{self, FlowKey, PrefixTable, VirtualSubnet};
use crate::flow::{
    FlowActivity, FlowChange, FlowConfig, FlowEntry, FlowError, FlowState, FlowTable, Inserted,
};
use crate::icmp::{self, IcmpBuildError, IcmpError};
use crate::packet::PacketBuf;
use crate::policy::{Candidate, Decision, FlowRequest, LeastCost, Level, Policy, SubnetId};
use crate::time::Instant;
use crate::tunnel::{EncapParams, IpIpTunnel, Tunnel, TunnelError};
use crate::wire::{self, Ipv4Packet, Ipv6Packet, TcpFlags, ip_proto};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// Most candidates one virtual subnet may offer (matches the module ABI bound).
pub const MAX_CANDIDATES: usize = 256;

/// Engine configuration.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// This router's level in the hierarchy.
    pub level: Level,
    /// IPv4 tunnel endpoint of this router (outer source, tunnels it terminates).
    pub local_v4: Option<Ipv4Addr>,
    /// IPv6 tunnel endpoint of this router.
    pub local_v6: Option<Ipv6Addr>,
    /// Path MTU toward next hops, outer header included.
    pub tunnel_mtu: usize,
    /// TTL / hop limit of outer headers.
    pub tunnel_ttl: u8,
    /// Flow table sizing and timeouts.
    pub flows: FlowConfig,
    /// Most virtual subnets served.
    pub max_subnets: usize,
    /// ICMP errors originated per second (token bucket rate; burst equals rate).
    pub icmp_per_sec: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            level: Level::Site,
            local_v4: None,
            local_v6: None,
            tunnel_mtu: 1500,
            tunnel_ttl: 64,
            flows: FlowConfig::default(),
            max_subnets: 1 << 20,
            icmp_per_sec: 1000,
        }
    }
}

/// Why the engine dropped a packet. Each reason has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum DropReason {
    /// The IP or transport header is malformed or truncated.
    Malformed = 0,
    /// IPv4 header checksum mismatch.
    BadChecksum,
    /// Destination is neither local nor in a served virtual subnet.
    NotServed,
    /// TTL expired and no ICMP error could be sent.
    TtlExpired,
    /// The subnet's policy refused the flow.
    PolicyRejected,
    /// No usable next-hop candidate for the subnet.
    NoCandidate,
    /// A tunnel packet addressed to us whose inner packet is again a tunnel to us.
    NestedTunnel,
    /// A fragmented tunnel packet (we do not reassemble).
    FragmentedTunnel,
    /// RFC 6040 requires dropping this ECN combination.
    EcnDrop,
    /// A tunnel packet to us that is not IP-in-IP, or whose inner header is bad.
    BadTunnel,
    /// Too big for the tunnel and no ICMP error could be sent.
    TooBig,
    /// ICMP error suppressed by the rate limit.
    IcmpRateLimited,
    /// No local address of the family needed to encapsulate or reply.
    NoLocalAddress,
    /// The flow could not be pinned (next-hop table full).
    FlowTableFull,
    /// Not enough buffer headroom (a shell bug: it must reserve `HEADROOM`).
    NoHeadroom,
    /// An echo reply that claims to carry a flow advertisement but is malformed.
    BadAdvert,
    /// A tunnel to us from a source not admitted ([`Engine::set_tunnel_sources`]).
    TunnelSource,
}

impl DropReason {
    /// Number of reasons.
    pub const COUNT: usize = 17;

    /// Every reason, in counter order.
    pub const ALL: [Self; Self::COUNT] = [
        Self::Malformed,
        Self::BadChecksum,
        Self::NotServed,
        Self::TtlExpired,
        Self::PolicyRejected,
        Self::NoCandidate,
        Self::NestedTunnel,
        Self::FragmentedTunnel,
        Self::EcnDrop,
        Self::BadTunnel,
        Self::TooBig,
        Self::IcmpRateLimited,
        Self::NoLocalAddress,
        Self::FlowTableFull,
        Self::NoHeadroom,
        Self::BadAdvert,
        Self::TunnelSource,
    ];

    /// Stable snake_case name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::BadChecksum => "bad_checksum",
            Self::NotServed => "not_served",
            Self::TtlExpired => "ttl_expired",
            Self::PolicyRejected => "policy_rejected",
            Self::NoCandidate => "no_candidate",
            Self::NestedTunnel => "nested_tunnel",
            Self::FragmentedTunnel => "fragmented_tunnel",
            Self::EcnDrop => "ecn_drop",
            Self::BadTunnel => "bad_tunnel",
            Self::TooBig => "too_big",
            Self::IcmpRateLimited => "icmp_rate_limited",
            Self::NoLocalAddress => "no_local_address",
            Self::FlowTableFull => "flow_table_full",
            Self::NoHeadroom => "no_headroom",
            Self::BadAdvert => "bad_advert",
            Self::TunnelSource => "tunnel_source",
        }
    }
}

/// What to do with a processed packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Verdict {
    /// The buffer now holds the encapsulated packet: send it to `next_hop`.
    Forward {
        /// Outer destination.
        next_hop: IpAddr,
        /// The outer packet exceeds the MTU but may be fragmented: send it with
        /// [`crate::tunnel::fragment_ipv4`].
        fragment: bool,
    },
    /// Addressed to this router (after tunnel termination): hand it to the local
    /// stack or control plane.
    Deliver,
    /// A mid-connection packet of an unknown flow: recover its state (DESIGN.md
    /// §5) rather than choose a new server. The buffer holds the (inner) packet.
    Recover {
        /// The flow whose state is missing.
        key: FlowKey,
    },
    /// An ICMP echo reply to a served subnet carrying a server flow advertisement
    /// ([`wire::flowad`]). The buffer holds the (inner) packet with its TTL already
    /// decremented; the control plane verifies the advertisement and re-creates the
    /// flow's state or relays the reply ([`Engine::encapsulate_to`]). The reply
    /// itself is never pinned.
    Advert,
    /// The buffer now holds an ICMP error for `to` (time exceeded, too big).
    Reply {
        /// Destination of the ICMP error.
        to: IpAddr,
    },
    /// Dropped, for `reason`.
    Drop(DropReason),
}

/// Counters of the engine, one per verdict, drop reason and policy outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineCounters {
    /// Packets processed.
    pub packets: u64,
    /// Forwarded along a pinned flow.
    pub forwarded_pinned: u64,
    /// Forwarded as the first packet of a newly pinned flow.
    pub forwarded_new: u64,
    /// Tunnel packets terminated here.
    pub decapsulated: u64,
    /// Delivered locally.
    pub delivered: u64,
    /// Handed to recovery.
    pub recover: u64,
    /// Echo replies carrying a flow advertisement, handed to the control plane.
    pub adverts: u64,
    /// ICMP errors originated.
    pub icmp_sent: u64,
    /// Policy calls that failed (trap, timeout, invalid decision) and fell back to
    /// the built-in policy.
    pub policy_faults: u64,
    /// Flows evicted from the flow table to make room.
    pub flows_evicted: u64,
    /// Drops per [`DropReason`] (index = `reason as usize`).
    pub drops: [u64; DropReason::COUNT],
}

impl EngineCounters {
    /// Drops for one reason.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }

    /// All drops.
    pub fn dropped_total(&self) -> u64 {
        self.drops.iter().sum()
    }
}

#[derive(Debug)]
struct SubnetState {
    subnet: VirtualSubnet,
    candidates: Vec<Candidate>,
    policy: Option<Arc<dyn Policy>>,
}

/// A token bucket in whole tokens, refilled from the timestamps handed in.
#[derive(Debug)]
struct TokenBucket {
    rate: u32,
    tokens: u32,
    last: Instant,
}

impl TokenBucket {
    fn take(&mut self, now: Instant) -> bool {
        let elapsed_ns = now.as_nanos().saturating_sub(self.last.as_nanos());
        let refill = elapsed_ns.saturating_mul(u64::from(self.rate)) / 1_000_000_000;
        if refill > 0 {
            self.tokens = u32::try_from(u64::from(self.tokens) + refill)
                .unwrap_or(u32::MAX)
                .min(self.rate);
            self.last = now;
        }
        if self.tokens > 0 {
            self.tokens -= 1;
            true
        } else {
            false
        }
    }
}

/// The forwarding engine of one SLR.
#[derive(Debug)]
pub struct Engine<T: Tunnel = IpIpTunnel> {
    cfg: EngineConfig,
    flows: FlowTable,
    subnets: PrefixTable<SubnetId>,
    /// Slab indexed by `SubnetId`; `None` slots are free for reuse.
    subnet_state: Vec<Option<SubnetState>>,
    free_subnet_ids: Vec<u32>,
    tunnel: T,
    default_policy: Arc<dyn Policy>,
    /// The flow the last [`Engine::process`] call pinned, until taken.
    new_flow: Option<FlowKey>,
    next_label: u32,
    counters: EngineCounters,
    icmp: TokenBucket,
    /// None: tunnels from anyone (a bare engine, tests).
    tunnel_sources: Option<crate::tunnel::TunnelSources>,
}

/// Quick facts of the outermost header, enough to decide on termination.
struct Outer {
    src: IpAddr,
    dst: IpAddr,
    is_tunnel: bool,
}

impl Engine<IpIpTunnel> {
    /// An engine with IP-in-IP tunnels and the built-in least-cost policy.
    pub fn new(cfg: EngineConfig) -> Self {
        Self::with_tunnel(cfg, IpIpTunnel::new())
    }
}

impl<T: Tunnel> Engine<T> {
    /// An engine with a custom tunnel scheme.
    pub fn with_tunnel(cfg: EngineConfig, tunnel: T) -> Self {
        let icmp = TokenBucket {
            rate: cfg.icmp_per_sec,
            tokens: cfg.icmp_per_sec,
            last: Instant::ZERO,
        };
        Self {
            flows: FlowTable::new(&cfg.flows),
            subnets: PrefixTable::with_capacity(cfg.max_subnets),
            subnet_state: Vec::new(),
            free_subnet_ids: Vec::new(),
            tunnel,
            default_policy: Arc::new(LeastCost),
            new_flow: None,
            next_label: 0,
            counters: EngineCounters::default(),
            icmp,
            tunnel_sources: None,
            cfg,
        }
    }

    /// Admit tunnels to us only from these sources (`None`: from anyone).
    pub fn set_tunnel_sources(&mut self, sources: Option<crate::tunnel::TunnelSources>) {
        self.tunnel_sources = sources;
    }

    /// The admitted tunnel sources (`None`: anyone).
    pub fn tunnel_sources(&self) -> Option<&crate::tunnel::TunnelSources> {
        self.tunnel_sources.as_ref()
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Flows pinned and forwarded so far: a shell compares it across one
    /// `process` call to learn whether that packet created a flow, without
    /// copying every counter per packet as [`RouterApi::counters`] does.
    #[inline]
    pub fn new_flows(&self) -> u64 {
        self.counters.forwarded_new
    }

    /// The flow the packet just processed pinned, if it pinned one: the node
    /// turns it into a shortcut and a mirror entry without re-parsing the packet
    /// or comparing counters. Cleared by the call and by the next `process`.
    #[inline]
    pub fn take_new_flow(&mut self) -> Option<FlowKey> {
        self.new_flow.take()
    }

    /// The virtual subnets served.
    pub fn subnets(&self) -> impl Iterator<Item = VirtualSubnet> + '_ {
        self.subnets.iter().map(|(s, _)| *s)
    }

    /// The flow table (read-only).
    pub fn flows(&self) -> &FlowTable {
        &self.flows
    }

    /// Remove timed-out flows; bounded work (see [`FlowTable::sweep`]).
    pub fn sweep(&mut self, now: Instant, max_buckets: usize) -> usize {
        self.flows.sweep(now, max_buckets)
    }

    /// Journal pins and unpins for a kernel fast path that mirrors the flow
    /// table (see [`FlowTable::set_journal`]); 0 turns it off.
    pub fn set_flow_journal(&mut self, capacity: usize) {
        self.flows.set_journal(capacity);
    }

    /// Hand the journaled pins and unpins to `f`; true when some were lost and
    /// the consumer must resync from [`FlowTable::export`].
    pub fn drain_flow_changes(&mut self, f: impl FnMut(FlowChange)) -> bool {
        self.flows.drain_changes(f)
    }

    /// Fold what the fast path saw of a flow into its entry (a TCP state
    /// change); false if it is not pinned.
    pub fn refresh_flow(&mut self, key: &FlowKey, activity: &FlowActivity, now: Instant) -> bool {
        self.flows.refresh(key, activity, now)
    }

    /// Settle the flows the sweep found idle with what the fast path saw of
    /// them ([`FlowTable::resolve_due`]); returns how many expired.
    pub fn resolve_idle_flows(
        &mut self,
        now: Instant,
        activity: impl FnMut(&FlowKey) -> Option<FlowActivity>,
    ) -> usize {
        self.flows.resolve_due(now, activity)
    }

    /// The virtual subnet with id `id`, if any.
    pub fn subnet(&self, id: SubnetId) -> Option<&VirtualSubnet> {
        self.state(id).ok().map(|s| &s.subnet)
    }

    /// The served subnet containing `ip` (longest match) and its id.
    pub fn subnet_for(&self, ip: IpAddr) -> Option<(VirtualSubnet, SubnetId)> {
        self.subnets.lookup(ip).map(|(s, id)| (*s, *id))
    }

    /// The candidates currently offered for a subnet.
    pub fn candidates(&self, id: SubnetId) -> Option<&[Candidate]> {
        self.state(id).ok().map(|s| s.candidates.as_slice())
    }

    fn state(&self, id: SubnetId) -> Result<&SubnetState, ApiError> {
        self.subnet_state
            .get(id.0 as usize)
            .and_then(Option::as_ref)
            .ok_or(ApiError::UnknownSubnet { id })
    }

    fn state_mut(&mut self, id: SubnetId) -> Result<&mut SubnetState, ApiError> {
        self.subnet_state
            .get_mut(id.0 as usize)
            .and_then(Option::as_mut)
            .ok_or(ApiError::UnknownSubnet { id })
    }

    fn is_local(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => self.cfg.local_v4 == Some(a),
            IpAddr::V6(a) => self.cfg.local_v6 == Some(a),
        }
    }

    fn local_for(&self, ip: IpAddr) -> Option<IpAddr> {
        match ip {
            IpAddr::V4(_) => self.cfg.local_v4.map(IpAddr::V4),
            IpAddr::V6(_) => self.cfg.local_v6.map(IpAddr::V6),
        }
    }

    /// Process one packet (starting at its IP header) at time `now`.
    #[inline]
    pub fn process(&mut self, pkt: &mut PacketBuf<'_>, now: Instant) -> Verdict {
        self.counters.packets += 1;
        self.new_flow = None;
        let v = self.walk(pkt, now);
        match v {
            Verdict::Forward { .. } | Verdict::Reply { .. } => {}
            Verdict::Deliver => self.counters.delivered += 1,
            Verdict::Recover { .. } => self.counters.recover += 1,
            Verdict::Advert => self.counters.adverts += 1,
            Verdict::Drop(r) => self.counters.drops[r as usize] += 1,
        }
        v
    }

    fn walk(&mut self, pkt: &mut PacketBuf<'_>, now: Instant) -> Verdict {
        let outer = match outer_facts(pkt.data()) {
            Ok(o) => o,
            Err(r) => return Verdict::Drop(r),
        };
        if self.is_local(outer.dst) {
            if !outer.is_tunnel {
                return Verdict::Deliver;
            }
            if self
                .tunnel_sources
                .as_ref()
                .is_some_and(|s| !s.admits(outer.src))
            {
                return Verdict::Drop(DropReason::TunnelSource);
            }
            if let Err(e) = self.tunnel.decapsulate(pkt) {
                return Verdict::Drop(tunnel_drop(&e));
            }
            self.counters.decapsulated += 1;
            // A sender's unfinished checksum that a kernel fast path carried
            // here without finishing it (only such a checksum is touched).
            wire::checksum::complete_partial(pkt.data_mut());
            let inner = match outer_facts(pkt.data()) {
                Ok(o) => o,
                Err(r) => return Verdict::Drop(r),
            };
            if self.is_local(inner.dst) {
                return if inner.is_tunnel {
                    Verdict::Drop(DropReason::NestedTunnel)
                } else {
                    Verdict::Deliver
                };
            }
        }
        self.forward(pkt, now)
    }

    fn forward(&mut self, pkt: &mut PacketBuf<'_>, now: Instant) -> Verdict {
        let Ok(c) = classify::classify(pkt.data()) else {
            return Verdict::Drop(DropReason::Malformed);
        };
        if !decrement_ttl(pkt.data_mut()) {
            return self.icmp_error(pkt, IcmpError::TimeExceeded, DropReason::TtlExpired, now);
        }
        if matches!(c.key.proto, ip_proto::ICMP | ip_proto::ICMPV6) && !c.fragment {
            match wire::flowad::find_in_echo_reply(pkt.data()) {
                None => {}
                Some(Err(_)) => return Verdict::Drop(DropReason::BadAdvert),
                Some(Ok(_)) if self.subnets.lookup(c.key.dst).is_none() => {
                    return Verdict::Drop(DropReason::NotServed);
                }
                Some(Ok(_)) => return Verdict::Advert,
            }
        }
        let len = pkt.len();
        if let Some(hit) = self.flows.touch(&c.key, c.tcp_flags, len, now) {
            let reuse = hit.state == FlowState::Closing && c.tcp_flags.is_some_and(is_pure_syn);
            if !reuse {
                let next_hop = self.flows.next_hop_addr(hit.next_hop);
                return self.encapsulate(pkt, next_hop, now, false);
            }
            // A fresh SYN on the 5-tuple of a closed connection starts a new
            // connection (port reuse): place it anew.
            let _ = self.flows.remove(&c.key, now);
        }
        let Some((_, &sid)) = self.subnets.lookup(c.key.dst) else {
            return Verdict::Drop(DropReason::NotServed);
        };
        if let Some(flags) = c.tcp_flags
            && !is_pure_syn(flags)
        {
            return Verdict::Recover { key: c.key };
        }
        let next_hop = match self.choose(sid, &c.key) {
            Ok(nh) => nh,
            Err(r) => return Verdict::Drop(r),
        };
        let label = self.next_flow_label();
        let state = FlowState::initial(c.key.proto, c.tcp_flags);
        match self
            .flows
            .insert(&c.key, next_hop, label, self.cfg.level, state, now)
        {
            Ok(Inserted::Evicted(victim)) => {
                self.counters.flows_evicted += 1;
                tracing::trace!(flow = %victim, "flow evicted for a new flow");
            }
            Ok(_) => {}
            Err(FlowError::NextHopsFull { .. } | FlowError::NoCapacity) => {
                return Verdict::Drop(DropReason::FlowTableFull);
            }
        }
        // Account the first packet on the new entry.
        let _ = self.flows.touch(&c.key, c.tcp_flags, len, now);
        let v = self.encapsulate(pkt, next_hop, now, true);
        if matches!(v, Verdict::Forward { .. }) {
            self.new_flow = Some(c.key);
        }
        v
    }

    /// Tunnel the buffer's packet to an explicit `next_hop`, bypassing the flow
    /// table: for packets the control plane routes itself (a [`Verdict::Recover`]
    /// packet sent on to the SLR, an advertisement relayed along the advertised
    /// flow's pin). The packet must be one this engine returned with its TTL
    /// already decremented. Counted as a pinned forward.
    pub fn encapsulate_to(
        &mut self,
        pkt: &mut PacketBuf<'_>,
        next_hop: IpAddr,
        now: Instant,
    ) -> Verdict {
        let v = self.encapsulate(pkt, next_hop, now, false);
        match v {
            Verdict::Drop(r) => self.counters.drops[r as usize] += 1,
            Verdict::Reply { .. } | Verdict::Forward { .. } => {}
            Verdict::Deliver | Verdict::Recover { .. } | Verdict::Advert => {}
        }
        v
    }

    fn next_flow_label(&mut self) -> u32 {
        self.next_label = self.next_label.wrapping_add(1).max(1);
        self.next_label
    }

    /// Ask the subnet's policy; fall back to the built-in one on any fault.
    fn choose(&mut self, sid: SubnetId, key: &FlowKey) -> Result<IpAddr, DropReason> {
        let Ok(state) = self.state(sid) else {
            return Err(DropReason::NotServed);
        };
        let cands = &state.candidates;
        // Nothing usable: no policy can help, and a Reject here would blame it.
        if !cands.iter().any(|c| c.up) {
            return Err(DropReason::NoCandidate);
        }
        let req = FlowRequest {
            key: *key,
            subnet: sid,
            level: self.cfg.level,
        };
        let policy = state.policy.as_deref().unwrap_or(&*self.default_policy);
        let decision = match policy.select(&req, cands) {
            Ok(Decision::Select(i)) if cands.get(i).is_some_and(|c| c.up) => Ok(i),
            Ok(Decision::Reject) => return Err(DropReason::PolicyRejected),
            Ok(Decision::Select(i)) => Err(format!("invalid choice {i} of {}", cands.len())),
            Err(e) => Err(e.to_string()),
        };
        let index = match decision {
            Ok(i) => i,
            Err(why) => {
                tracing::debug!(policy = policy.name(), subnet = %state.subnet, %why,
                    "policy fault, falling back to the built-in policy");
                let fallback = LeastCost::choose(cands);
                self.counters.policy_faults += 1;
                match fallback {
                    Decision::Select(i) => i,
                    Decision::Reject => return Err(DropReason::NoCandidate),
                }
            }
        };
        let Ok(state) = self.state(sid) else {
            return Err(DropReason::NotServed);
        };
        state
            .candidates
            .get(index)
            .map(|c| c.addr)
            .ok_or(DropReason::NoCandidate)
    }

    fn encapsulate(
        &mut self,
        pkt: &mut PacketBuf<'_>,
        next_hop: IpAddr,
        now: Instant,
        new_flow: bool,
    ) -> Verdict {
        let Some(src) = self.local_for(next_hop) else {
            return Verdict::Drop(DropReason::NoLocalAddress);
        };
        let params = EncapParams {
            src,
            dst: next_hop,
            ttl: self.cfg.tunnel_ttl,
            mtu: self.cfg.tunnel_mtu,
        };
        match self.tunnel.encapsulate(pkt, &params) {
            Ok(e) => {
                if new_flow {
                    self.counters.forwarded_new += 1;
                } else {
                    self.counters.forwarded_pinned += 1;
                }
                Verdict::Forward {
                    next_hop,
                    fragment: e.needs_fragmentation,
                }
            }
            Err(TunnelError::TooBig { inner_mtu, .. }) => {
                let mtu = u32::try_from(inner_mtu).unwrap_or(u32::MAX);
                self.icmp_error(pkt, IcmpError::TooBig { mtu }, DropReason::TooBig, now)
            }
            Err(e) => Verdict::Drop(tunnel_drop(&e)),
        }
    }

    fn icmp_error(
        &mut self,
        pkt: &mut PacketBuf<'_>,
        kind: IcmpError,
        otherwise: DropReason,
        now: Instant,
    ) -> Verdict {
        let Ok(v) = wire::ip_version(pkt.data()) else {
            return Verdict::Drop(DropReason::Malformed);
        };
        let from = match v {
            4 => self.cfg.local_v4.map(IpAddr::V4),
            _ => self.cfg.local_v6.map(IpAddr::V6),
        };
        if from.is_none() {
            return Verdict::Drop(otherwise);
        }
        if !self.icmp.take(now) {
            return Verdict::Drop(DropReason::IcmpRateLimited);
        }
        match icmp::build_error(pkt, kind, from) {
            Ok(to) => {
                self.counters.icmp_sent += 1;
                Verdict::Reply { to }
            }
            Err(IcmpBuildError::Buffer(_)) => Verdict::Drop(DropReason::NoHeadroom),
            Err(_) => Verdict::Drop(otherwise),
        }
    }
}

fn is_pure_syn(f: TcpFlags) -> bool {
    f.contains(TcpFlags::SYN) && !f.contains(TcpFlags::ACK)
}

fn tunnel_drop(e: &TunnelError) -> DropReason {
    match e {
        TunnelError::Fragmented => DropReason::FragmentedTunnel,
        TunnelError::EcnDrop => DropReason::EcnDrop,
        TunnelError::Buffer(_) => DropReason::NoHeadroom,
        TunnelError::TooBig { .. } => DropReason::TooBig,
        _ => DropReason::BadTunnel,
    }
}

fn outer_facts(data: &[u8]) -> Result<Outer, DropReason> {
    match wire::ip_version(data).map_err(|_| DropReason::Malformed)? {
        4 => {
            let p = Ipv4Packet::new_checked(data).map_err(|_| DropReason::Malformed)?;
            if !p.verify_checksum() {
                return Err(DropReason::BadChecksum);
            }
            let proto = p.protocol();
            Ok(Outer {
                src: IpAddr::V4(p.src_addr()),
                dst: IpAddr::V4(p.dst_addr()),
                is_tunnel: proto == ip_proto::IPV4 || proto == ip_proto::IPV6,
            })
        }
        _ => {
            let p = Ipv6Packet::new_checked(data).map_err(|_| DropReason::Malformed)?;
            let upper = wire::walk_extensions(p.next_header(), p.payload())
                .map_err(|_| DropReason::Malformed)?;
            Ok(Outer {
                src: IpAddr::V6(p.src_addr()),
                dst: IpAddr::V6(p.dst_addr()),
                is_tunnel: upper.protocol == ip_proto::IPV4 || upper.protocol == ip_proto::IPV6,
            })
        }
    }
}

/// Decrement TTL / hop limit in place (RFC 1624 incremental checksum update for
/// IPv4). Returns false when the packet must not be forwarded (TTL would hit 0).
#[inline]
fn decrement_ttl(data: &mut [u8]) -> bool {
    match data.first().map(|b| b >> 4) {
        Some(4) if data.len() >= 20 => {
            let ttl = data[8];
            if ttl <= 1 {
                return false;
            }
            data[8] = ttl - 1;
            // HC' = ~(~HC + ~m + m') with m = (ttl, proto), m' = (ttl - 1, proto):
            // the 16-bit word drops by 0x0100, so the checksum rises by 0x0100.
            let hc = u16::from_be_bytes([data[10], data[11]]);
            let sum = u32::from(hc) + 0x0100;
            let folded = ((sum & 0xffff) + (sum >> 16)) as u16;
            data[10..12].copy_from_slice(&folded.to_be_bytes());
            true
        }
        Some(6) if data.len() >= 40 => {
            let hl = data[7];
            if hl <= 1 {
                return false;
            }
            data[7] = hl - 1;
            true
        }
        _ => false,
    }
}

impl<T: Tunnel> RouterApi for Engine<T> {
    fn add_subnet(&mut self, subnet: VirtualSubnet) -> Result<SubnetId, ApiError> {
        if let Some(id) = self.subnets.get(&subnet) {
            return Ok(*id);
        }
        let id = match self.free_subnet_ids.last() {
            Some(&id) => id,
            None => u32::try_from(self.subnet_state.len()).map_err(|_| ApiError::Full {
                what: "virtual subnets",
            })?,
        };
        let sid = SubnetId(id);
        self.subnets.insert(subnet, sid)?;
        let state = SubnetState {
            subnet,
            candidates: Vec::new(),
            policy: None,
        };
        if self.free_subnet_ids.pop().is_some() {
            self.subnet_state[id as usize] = Some(state);
        } else {
            self.subnet_state.push(Some(state));
        }
        Ok(sid)
    }

    fn remove_subnet(&mut self, subnet: &VirtualSubnet) -> Result<(), ApiError> {
        let id = self
            .subnets
            .remove(subnet)
            .ok_or(ApiError::NoSuchSubnet { subnet: *subnet })?;
        self.subnet_state[id.0 as usize] = None;
        self.free_subnet_ids.push(id.0);
        Ok(())
    }

    fn set_candidates(&mut self, id: SubnetId, candidates: Vec<Candidate>) -> Result<(), ApiError> {
        if candidates.len() > MAX_CANDIDATES {
            return Err(ApiError::TooManyCandidates {
                count: candidates.len(),
                limit: MAX_CANDIDATES,
            });
        }
        self.state_mut(id)?.candidates = candidates;
        Ok(())
    }

    fn set_policy(
        &mut self,
        id: SubnetId,
        policy: Option<Arc<dyn Policy>>,
    ) -> Result<(), ApiError> {
        self.state_mut(id)?.policy = policy;
        Ok(())
    }

    fn install_flow(&mut self, entry: &FlowEntry, now: Instant) -> Result<Inserted, ApiError> {
        let r = self.flows.import(entry, now)?;
        if matches!(r, Inserted::Evicted(_)) {
            self.counters.flows_evicted += 1;
        }
        Ok(r)
    }

    fn remove_flow(&mut self, key: &FlowKey, now: Instant) -> Option<FlowEntry> {
        self.flows.remove(key, now)
    }

    fn lookup_flow(&self, key: &FlowKey, now: Instant) -> Option<FlowEntry> {
        self.flows.get(key, now)
    }

    fn counters(&self) -> EngineCounters {
        self.counters
    }
}
