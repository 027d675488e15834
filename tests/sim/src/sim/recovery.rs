//! Failure and recovery in the simulator (DESIGN.md §5): the shell duties of the
//! four recovery mechanisms, carried out around the real signalling cores.
//!
//! - Restarts ([`Sim::restart_node`]): a router's process dies (its sessions'
//!   transports close at once, as the kernel resets them), stays down, and comes
//!   back with an empty engine and control side that register anew.
//! - State re-creation: an entry router hands every packet of a flow it does not
//!   know to its SLR ([`Engine::encapsulate_to`]); the SLR forwards it along its
//!   pin and, when that pin is a shortcut (a next hop that is not one of the
//!   subnet's candidates), re-programs that entry router with it. Entry routers
//!   can be added to a cluster ([`Sim::add_entry_router`]) and clients moved to
//!   any first hop ([`Sim::set_client_path`]).
//! - WHOHAS: every SLR hands [`Verdict::Recover`] to [`SlrControl::recover`];
//!   neighbour sessions ([`Sim::add_neighbours`]) carry queries and answers.
//! - Hot spare ([`Sim::add_spare`]): the spare dials its primary as
//!   [`Role::Spare`]; the primary's [`MirrorSender`] mirrors its flow table into
//!   the spare's [`MirrorReceiver`]; the spare's [`FailoverMonitor`] declares the
//!   primary dead and the spare takes over its address, name and place.
//! - Server flow advertisements ([`AdvertSim`]): hosts watch their connections
//!   with a [`ProgressMonitor`] and send signed echo requests from the VIP;
//!   clients answer them along their current path; routers verify the reply
//!   ([`AdvertAuth`]) and install or relay it ([`SlrControl::handle_advert`]).
//!
//! Nothing here reads the wall clock: advertisement timestamps are
//! [`SIM_EPOCH_UNIX_MS`] plus the simulated time.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use router_core::api::RouterApi;
use router_core::classify::FlowKey;
use router_core::flow::FlowEntry;
use router_core::packet::HEADROOM;
use router_core::policy::Level;
use router_core::time::Instant;
use router_core::wire::flowad::AdvertFields;
use router_core::wire::{Icmpv4Packet, Ipv4Packet, icmpv4_type, ip_proto};
use signaling::node::{Node as RouterNodeCore, SessionKind, SpareConfig};
use signaling::{
    AdvertAuth, AdvertAuthConfig, AdvertKey, Envelope, Message, PeerEvent, ProgressConfig,
    ProgressMonitor, RecoveryScope, RecoveryStats, Role, SessionId, TunnelObject, install_shortcut,
};

use super::topology::NewNode;
use super::{
    CaId, Event, Kind, NodeId, Sim, SimPacket, SplitMix64, TopologyError, UpLink, inner_key,
    node_name, role_of,
};

/// Wall clock at simulated time zero, Unix milliseconds (advertisement
/// timestamps); fixed so that runs repeat.
pub const SIM_EPOCH_UNIX_MS: u64 = 1_764_000_000_000;

/// Key id of the simulated trust domain's advertisement key.
pub const ADVERT_KEY_ID: u32 = 1;

const ADVERT_SECRET: &[u8] = b"pronto simulated trust domain key";

/// The trust domain's advertisement key, as hosts and routers hold it.
pub fn advert_key() -> AdvertKey {
    // A constant secret of valid length: the constructor cannot refuse it.
    match AdvertKey::new(ADVERT_KEY_ID, ADVERT_SECRET) {
        Ok(k) => k,
        Err(e) => unreachable!("the simulation's advert key is valid: {e}"),
    }
}

/// Server flow advertisements in a simulation.
#[derive(Debug, Clone)]
pub struct AdvertSim {
    /// Each host's progress monitor.
    pub progress: ProgressConfig,
    /// An open connection with nothing received for this long counts as stalled.
    pub quiet: Duration,
    /// How often hosts scan their connections.
    pub scan_interval: Duration,
}

impl Default for AdvertSim {
    fn default() -> Self {
        Self {
            progress: ProgressConfig::default(),
            quiet: Duration::from_millis(500),
            scan_interval: Duration::from_millis(200),
        }
    }
}

/// What the recovery shells did, summed over the simulation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveryCounters {
    /// Packets entry routers handed to their SLR for want of a flow's state.
    pub entry_recovered: u64,
    /// Flow states an SLR re-created at one of its entry routers.
    pub entry_recreated: u64,
    /// `Verdict::Recover` at SLRs.
    pub slr_recover: u64,
    /// Of those, WHOHAS queries sent.
    pub queries: u64,
    /// Flows a WHOHAS answer installed.
    pub flows_recovered: u64,
    /// Echo requests with an advertisement hosts sent.
    pub adverts_sent: u64,
    /// Echo requests clients answered.
    pub echo_replies: u64,
    /// Advertisements that passed authentication at some router.
    pub adverts_verified: u64,
    /// Refused by authentication: unknown key, bad MAC.
    pub adverts_forged: u64,
    /// Refused by authentication: outside the timestamp window.
    pub adverts_stale: u64,
    /// Refused by authentication: seen before.
    pub adverts_replayed: u64,
    /// Not parseable although marked as an advertisement.
    pub adverts_malformed: u64,
    /// Advertisements that installed a flow.
    pub adverts_installed: u64,
    /// Advertisements relayed along an existing pin.
    pub adverts_relayed: u64,
    /// Advertisements for flows already pinned to their server.
    pub adverts_current: u64,
    /// Advertisements refused after authentication (not served, bad server).
    pub adverts_refused: u64,
    /// Mirror deltas applied by spares.
    pub mirror_deltas: u64,
    /// Spares that took over.
    pub takeovers: u64,
    /// When a flow's state was last restored (re-created at an entry router,
    /// installed from a WHOHAS answer or an advertisement) or a spare took over.
    pub last_restored: Option<Instant>,
}

/// A session this router dials besides its uplink.
#[derive(Debug, Clone, Copy)]
struct Link {
    target: NodeId,
    kind: LinkKind,
    session: Option<usize>,
    backoff: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkKind {
    /// A same-level SLR for WHOHAS.
    Neighbour,
    /// The primary this spare mirrors.
    Primary,
}

/// The spare's place in the topology: whom it mirrors, and when it took over.
#[derive(Debug, Clone, Copy)]
struct SpareLink {
    primary: NodeId,
    dead_after: Duration,
    taken_over: Option<Instant>,
}

/// A router's recovery state in the simulator's hands: its scope and the
/// sessions it dials (configuration, kept across restarts); everything else is
/// the node's.
#[derive(Debug, Default)]
pub(super) struct RouterRecovery {
    scope: RecoveryScope,
    spare: Option<SpareLink>,
    links: Vec<Link>,
}

/// A host's progress monitoring.
#[derive(Debug, Default)]
pub(super) struct HostRecovery {
    monitor: Option<ProgressMonitor>,
    auth: Option<AdvertAuth>,
    next_scan: Option<Instant>,
    sent: u64,
}

/// Simulation-wide recovery state.
#[derive(Debug, Default)]
pub(super) struct SimRecovery {
    counters: RecoveryCounters,
    /// WHOHAS queries sent: (asker, session, query).
    queries: Vec<(NodeId, usize, signaling::WhoHas)>,
}

#[derive(Debug)]
pub(super) enum RecoveryEvent {
    /// The SLR's word re-creates a flow at an entry router.
    RecreateEntry {
        entry: NodeId,
        slr: IpAddr,
        obj: TunnelObject,
    },
    /// Dial a link again.
    ConnectLink { node: NodeId, index: usize },
}

fn auth() -> AdvertAuth {
    AdvertAuth::new(vec![advert_key()], AdvertAuthConfig::default())
}

impl Sim {
    /// Wall-clock milliseconds of the current simulated time.
    pub fn unix_ms(&self) -> u64 {
        SIM_EPOCH_UNIX_MS + self.now.as_nanos() / 1_000_000
    }

    /// Gives every router its recovery scope (own address, a query secret drawn
    /// from a generator of its own so the main one is untouched) and, when
    /// advertisements are on, every router, entry router and host the key.
    pub(super) fn init_recovery(&mut self) {
        for i in 0..self.nodes.len() {
            self.init_node_recovery(NodeId(i as u32));
        }
    }

    fn init_node_recovery(&mut self, id: NodeId) {
        let adverts = self.cfg.adverts.clone();
        let now = self.now;
        let seed = self.cfg.seed ^ (u64::from(id.0) << 32) ^ 0x005E_C2E7;
        let addr = IpAddr::V4(self.node(id).addr);
        match &mut self.node_mut(id).kind {
            Kind::Router(r) => {
                let r = &mut **r;
                if r.rec.scope.local_addrs.is_empty() {
                    r.rec.scope.local_addrs = vec![addr];
                    if IpAddr::V4(r.local) != addr {
                        r.rec.scope.local_addrs.push(IpAddr::V4(r.local));
                    }
                    let mut g = SplitMix64::new(seed);
                    for chunk in r.rec.scope.query_secret.chunks_mut(8) {
                        chunk.copy_from_slice(&g.next_u64().to_le_bytes());
                    }
                }
                if let Err(e) = r.node.set_recovery_scope(r.rec.scope.clone()) {
                    tracing::warn!(error = %e, "recovery scope refused");
                }
                r.node.set_advert_auth(adverts.is_some().then(auth));
            }
            Kind::Entry(e) => e.node.set_advert_auth(adverts.is_some().then(auth)),
            Kind::Host(h) => {
                if let Some(a) = adverts {
                    h.rec.monitor = ProgressMonitor::new(a.progress).ok();
                    h.rec.auth = Some(auth());
                    h.rec.next_scan = Some(now + a.scan_interval);
                }
            }
            Kind::Client(_) => {}
        }
    }

    /// Recovery counters.
    pub fn recovery_counters(&self) -> &RecoveryCounters {
        &self.rec.counters
    }

    /// A router's WHOHAS and state re-creation counters.
    pub fn router_recovery_stats(&self, router: NodeId) -> Option<RecoveryStats> {
        match &self.node(router).kind {
            Kind::Router(r) => Some(*r.node.control().recovery_stats()),
            _ => None,
        }
    }

    /// The authentication counters of a router's or entry router's advertisement
    /// check.
    pub fn advert_auth_stats(&self, node: NodeId) -> Option<signaling::AdvertAuthStats> {
        match &self.node(node).kind {
            Kind::Router(r) => r.node.recovery().auth_stats(),
            Kind::Entry(e) => e.node.recovery().auth_stats(),
            _ => None,
        }
    }

    /// The WHOHAS queries SLRs sent so far: (asker, query).
    pub fn whohas_queries(&self) -> impl Iterator<Item = (NodeId, signaling::WhoHas)> + '_ {
        self.rec.queries.iter().map(|(n, _, q)| (*n, *q))
    }

    // ----- restarts ----------------------------------------------------------

    /// Restarts a router or entry router: its process dies now (the other ends
    /// of its sessions see their transports close), stays down for `downtime`,
    /// and comes back with empty engine and control state, registering anew.
    pub fn restart_node(&mut self, id: NodeId, downtime: Duration) {
        if !self.node(id).alive {
            return;
        }
        self.node_mut(id).alive = false;
        self.node_mut(id).wake_at = None;
        let sessions = std::mem::take(&mut self.node_mut(id).sessions);
        for s in sessions {
            let is_upper = self.sessions[s].upper == id;
            self.sessions[s].reset[usize::from(!is_upper)] = true;
            let other = if is_upper {
                self.sessions[s].lower
            } else {
                self.sessions[s].upper
            };
            let at = self.now + self.delay(id, other);
            self.schedule(
                at,
                Event::Closed {
                    session: s,
                    to_upper: !is_upper,
                },
            );
        }
        let base = self.cfg.reconnect_backoff;
        if let Some(up) = self.node_mut(id).up.as_mut() {
            up.session = None;
            up.backoff = base;
        }
        if let Kind::Router(r) = &mut self.node_mut(id).kind {
            for l in &mut r.rec.links {
                l.session = None;
                l.backoff = base;
            }
        }
        let at = self.now + downtime;
        self.schedule(at, Event::Restart { node: id });
    }

    pub(super) fn on_restart(&mut self, id: NodeId) {
        let now = self.now;
        let mirror_max = self.cfg.mirror.max_flows;
        let mut slr_of_entry = None;
        let fresh = match &self.node(id).kind {
            Kind::Router(r) => {
                // A spare that never took over comes back as a spare.
                let spare = r
                    .rec
                    .spare
                    .filter(|s| s.taken_over.is_none())
                    .map(|s| SpareConfig {
                        dead_after: s.dead_after,
                        take_over: vec![IpAddr::V4(r.local)],
                        mirror_capacity: mirror_max,
                    });
                Some(self.router_node(r.level, r.local, &r.slr_cfg, spare))
            }
            _ => None,
        };
        let entry_node = match &self.node(id).kind {
            Kind::Entry(e) => Some(self.entry_node(self.node(id).addr, e.slr_addr)),
            _ => None,
        };
        match &mut self.node_mut(id).kind {
            Kind::Router(r) => {
                if let Some(node) = fresh {
                    r.node = node;
                }
                r.recover = 0;
                r.seen_unpinned = 0;
            }
            Kind::Entry(e) => {
                if let Some(node) = entry_node {
                    e.node = node;
                }
                e.served.clear();
                slr_of_entry = Some(e.slr);
            }
            _ => {}
        }
        self.node_mut(id).alive = true;
        self.stats.restarts += 1;
        self.init_node_recovery(id);
        if self.node(id).up.is_some() {
            self.schedule(now, Event::Connect { lower: id });
        }
        let links = match &self.node(id).kind {
            Kind::Router(r) => r.rec.links.len(),
            _ => 0,
        };
        for index in 0..links {
            self.schedule(
                now,
                Event::Recovery(RecoveryEvent::ConnectLink { node: id, index }),
            );
        }
        if let Some(slr) = slr_of_entry {
            self.sync_entries(slr);
        }
        self.reschedule(id);
    }

    // ----- entry routers and client paths ------------------------------------

    /// Adds another tunnel entry router to `slr`'s cluster (it serves what the SLR
    /// serves and receives its shortcuts); clients reach it once moved there with
    /// [`Sim::set_client_path`].
    pub fn add_entry_router(&mut self, slr: NodeId) -> Result<NodeId, TopologyError> {
        let k = self.entries.len();
        if k >= 200 {
            return Err(TopologyError::TooMany {
                what: "entry routers",
            });
        }
        let addr = Ipv4Addr::new(10, 0, 0, 2 + k as u8);
        let uplink = self
            .entries
            .first()
            .map_or(Duration::from_micros(200), |&e| self.node(e).uplink);
        let slr_addr = IpAddr::V4(self.node(slr).addr);
        let name = node_name(&format!("entry{k}.pronto.test"))?;
        let node = self.entry_node(addr, slr_addr);
        let id = self.add_node(NewNode {
            claimed: name.clone(),
            name,
            addr,
            parent: Some(slr),
            uplink,
            issuer: CaId(0),
            trust: vec![CaId(0)],
            up: None,
            kind: Kind::Entry(Box::new(super::EntryNode {
                node,
                slr,
                slr_addr,
                served: Default::default(),
            })),
        });
        self.entries.push(id);
        self.init_node_recovery(id);
        self.sync_entries(slr);
        Ok(id)
    }

    /// Moves `client`'s path: its packets to VIPs now reach `via` first (any
    /// router), or the cluster's first entry router again with `None`.
    pub fn set_client_path(&mut self, client: NodeId, via: Option<NodeId>) {
        if let Kind::Client(c) = &mut self.node_mut(client).kind {
            c.via = via;
        }
    }

    /// The tunnel entry routers.
    pub fn entry_routers(&self) -> &[NodeId] {
        &self.entries
    }

    /// The entry router of `slr`'s cluster that tunnelled `pkt` here, if one did.
    pub(super) fn sent_by_entry_of(&self, id: NodeId, pkt: &SimPacket) -> Option<NodeId> {
        let ip = Ipv4Packet::new_checked(pkt.data()).ok()?;
        if ip.protocol() != ip_proto::IPV4 {
            return None;
        }
        let from = *self.by_addr.get(&IpAddr::V4(ip.src_addr()))?;
        match &self.node(from).kind {
            Kind::Entry(e) if e.slr == id => Some(from),
            _ => None,
        }
    }

    /// `slr` forwarded a packet its entry router `entry` handed it for want of
    /// the flow's state (it lost it, or the flow arrived at another router of the
    /// cluster) along a pin to `next_hop`: the SLR programs the entry again, with
    /// the shortcut when the pin is one (a next hop that is not one of the
    /// subnet's candidates), else pinned to the SLR itself.
    pub(super) fn recreate_at_entry(
        &mut self,
        slr: NodeId,
        entry: NodeId,
        pkt: &SimPacket,
        next_hop: IpAddr,
    ) {
        let Some(key) = inner_key(pkt.data()) else {
            return;
        };
        let Kind::Router(r) = &self.node(slr).kind else {
            return;
        };
        let engine = r.node.engine();
        let candidate = engine
            .subnet_for(key.dst)
            .and_then(|(_, sid)| engine.candidates(sid))
            .is_some_and(|c| c.iter().any(|c| c.addr == next_hop));
        let slr_addr = IpAddr::V4(self.node(slr).addr);
        let server = if candidate { slr_addr } else { next_hop };
        let at = self.now + self.cfg.cluster_delay;
        self.schedule(
            at,
            Event::Recovery(RecoveryEvent::RecreateEntry {
                entry,
                slr: slr_addr,
                obj: TunnelObject { key, server },
            }),
        );
    }

    fn recreate_entry(&mut self, entry: NodeId, slr: IpAddr, obj: TunnelObject) {
        if !self.node(entry).alive {
            return;
        }
        let now = self.now;
        let Kind::Entry(e) = &mut self.node_mut(entry).kind else {
            return;
        };
        let engine = e.node.engine_mut();
        let done = match engine.lookup_flow(&obj.key, now) {
            Some(f) if f.next_hop == obj.server => false,
            Some(_) => install_shortcut(engine, &obj, slr, now).is_ok(),
            None => engine
                .install_flow(
                    &FlowEntry {
                        key: obj.key,
                        next_hop: obj.server,
                        label: 0,
                        level: Level::Network,
                        state: router_core::flow::FlowState::Established,
                        created: now,
                        last_seen: now,
                        packets: 0,
                        bytes: 0,
                    },
                    now,
                )
                .is_ok(),
        };
        if done {
            self.rec.counters.entry_recreated += 1;
            self.rec.counters.last_restored = Some(now);
        }
    }

    // ----- WHOHAS ------------------------------------------------------------

    /// Makes `a` and `b` (SLRs of the same level) neighbours: each lists the
    /// other, and `b` dials `a`.
    pub fn add_neighbours(&mut self, a: NodeId, b: NodeId) {
        let (na, nb) = (self.node(a).name.clone(), self.node(b).name.clone());
        for (id, other) in [(a, nb), (b, na)] {
            if let Kind::Router(r) = &mut self.node_mut(id).kind {
                let r = &mut **r;
                r.rec.scope.neighbours.push(other);
                if let Err(e) = r.node.set_recovery_scope(r.rec.scope.clone()) {
                    tracing::warn!(error = %e, "neighbour refused");
                }
            }
        }
        self.add_link(b, a, LinkKind::Neighbour);
    }

    fn add_link(&mut self, from: NodeId, to: NodeId, kind: LinkKind) {
        let backoff = self.cfg.reconnect_backoff;
        let index = match &mut self.node_mut(from).kind {
            Kind::Router(r) => {
                r.rec.links.push(Link {
                    target: to,
                    kind,
                    session: None,
                    backoff,
                });
                r.rec.links.len() - 1
            }
            _ => return,
        };
        let now = self.now;
        self.schedule(
            now,
            Event::Recovery(RecoveryEvent::ConnectLink { node: from, index }),
        );
    }

    fn link(&self, node: NodeId, index: usize) -> Option<Link> {
        match &self.node(node).kind {
            Kind::Router(r) => r.rec.links.get(index).copied(),
            _ => None,
        }
    }

    fn link_mut(&mut self, node: NodeId, index: usize) -> Option<&mut Link> {
        match &mut self.node_mut(node).kind {
            Kind::Router(r) => r.rec.links.get_mut(index),
            _ => None,
        }
    }

    fn link_of_session(&self, node: NodeId, s: usize) -> Option<(usize, Link)> {
        match &self.node(node).kind {
            Kind::Router(r) => r
                .rec
                .links
                .iter()
                .enumerate()
                .find(|(_, l)| l.session == Some(s))
                .map(|(i, l)| (i, *l)),
            _ => None,
        }
    }

    fn retry_link(&mut self, node: NodeId, index: usize) {
        let Some(l) = self.link_mut(node, index) else {
            return;
        };
        let wait = l.backoff;
        l.backoff = (l.backoff * 2).min(Duration::from_secs(8));
        let at = self.now + wait;
        self.schedule(
            at,
            Event::Recovery(RecoveryEvent::ConnectLink { node, index }),
        );
    }

    fn connect_link(&mut self, lower: NodeId, index: usize) {
        let Some(link) = self.link(lower, index) else {
            return;
        };
        if !self.node(lower).alive || link.session.is_some() {
            return;
        }
        let spare_done = match &self.node(lower).kind {
            Kind::Router(r) => r.rec.spare.is_some_and(|s| s.taken_over.is_some()),
            _ => false,
        };
        if link.kind == LinkKind::Primary && spare_done {
            return;
        }
        let upper = link.target;
        if !self.node(upper).alive {
            self.stats.connect_failures += 1;
            self.retry_link(lower, index);
            return;
        }
        let Some(s) = self.open_session(lower, upper) else {
            self.retry_link(lower, index);
            return;
        };
        if let Some(l) = self.link_mut(lower, index) {
            l.session = Some(s);
        }
        let remote = IpAddr::V4(self.node(lower).addr);
        let id = SessionId(s as u64);
        if let Kind::Router(r) = &mut self.node_mut(upper).kind {
            let down = SessionKind::Downstream {
                remote,
                route_cost: Some(0.0),
            };
            r.node.session_opened(id, down);
        }
        if let Kind::Router(r) = &mut self.node_mut(lower).kind {
            let kind = match link.kind {
                LinkKind::Neighbour => SessionKind::Neighbour,
                LinkKind::Primary => SessionKind::Primary,
            };
            r.node.session_opened(id, kind);
        }
        self.drain_actions(upper);
        self.drain_actions(lower);
        self.pump(s);
    }

    /// Handles an event of a session `node` dialled as a link; `None` when it
    /// was handled here.
    pub(super) fn link_event(
        &mut self,
        s: usize,
        node: NodeId,
        ev: PeerEvent,
    ) -> Option<PeerEvent> {
        let Some((index, link)) = self.link_of_session(node, s) else {
            return Some(ev);
        };
        let now = self.now;
        let down = matches!(ev, PeerEvent::PeerDown { .. });
        if matches!(ev, PeerEvent::MirrorDelta(_)) {
            self.rec.counters.mirror_deltas += 1;
        }
        if matches!(ev, PeerEvent::Registered { .. }) && link.kind == LinkKind::Neighbour {
            let base = self.cfg.reconnect_backoff;
            if let Some(l) = self.link_mut(node, index) {
                l.backoff = base;
            }
        }
        if let Kind::Router(r) = &mut self.node_mut(node).kind {
            r.node.handle_event(now, SessionId(s as u64), ev);
        }
        if down {
            if let Some(l) = self.link_mut(node, index) {
                l.session = None;
            }
            self.session_down(s, node, true);
            if self.node(node).alive {
                self.retry_link(node, index);
            }
        }
        self.drain_actions(node);
        None
    }

    /// Every message from a spare's primary proves it alive.
    pub(super) fn heard_on(&mut self, s: usize, node: NodeId) {
        let Some((_, link)) = self.link_of_session(node, s) else {
            return;
        };
        if link.kind != LinkKind::Primary {
            return;
        }
        let now = self.now;
        if let Kind::Router(r) = &mut self.node_mut(node).kind {
            r.node.primary_heard(now);
        }
    }

    /// A WHOHAS answer re-created a flow at a router.
    pub(super) fn rec_flow_recovered(&mut self) {
        self.rec.counters.flows_recovered += 1;
        self.rec.counters.last_restored = Some(self.now);
    }

    /// Adds what one packet through a node changed to the recovery figures.
    pub(super) fn account(&mut self, before: &Tally, after: &Tally) {
        let c = &mut self.rec.counters;
        let d = |f: fn(&Tally) -> u64| f(after).saturating_sub(f(before));
        c.queries += d(|t| t.queries);
        c.slr_recover += d(|t| t.recover) - d(|t| t.forwarded_unknown);
        c.entry_recovered += d(|t| t.forwarded_unknown);
        c.adverts_refused += d(|t| t.adverts_no_keys) + d(|t| t.adverts_rejected);
        c.adverts_malformed += d(|t| t.adverts_malformed);
        c.adverts_stale += d(|t| t.auth.stale) + d(|t| t.auth.future);
        c.adverts_replayed += d(|t| t.auth.replay);
        c.adverts_forged += d(|t| t.auth.unknown_key) + d(|t| t.auth.bad_mac);
        c.adverts_verified += d(|t| t.auth.verified);
        c.adverts_current += d(|t| t.adverts_current);
        c.adverts_relayed += d(|t| t.adverts_relayed);
        let installed = d(|t| t.adverts_installed);
        c.adverts_installed += installed;
        if installed > 0 {
            c.last_restored = Some(self.now);
        }
    }

    /// Records the WHOHAS queries a router sends (so tests can forge answers to
    /// them).
    pub(super) fn tap_send(&mut self, node: NodeId, s: usize, message: &signaling::Outgoing) {
        if let signaling::Outgoing::WhoHas(q) = message
            && self.rec.queries.len() < 1 << 16
        {
            self.rec.queries.push((node, s, *q));
        }
    }

    // ----- hot spare ---------------------------------------------------------

    /// Adds a hot spare for `primary` (an SLR): it sits beside the primary, dials
    /// it as [`Role::Spare`] and mirrors its flow table; when it has heard
    /// nothing from the primary for `dead_after` it takes over the primary's
    /// address, name, upper level and lower-level peers.
    pub fn add_spare(
        &mut self,
        primary: NodeId,
        dead_after: Duration,
    ) -> Result<NodeId, TopologyError> {
        // It sits beside its primary (same LAN): one short hop from it.
        let (level, paddr, parent, uplink) = match &self.node(primary).kind {
            Kind::Router(r) => (
                r.level,
                self.node(primary).addr,
                Some(primary),
                Duration::from_micros(100),
            ),
            _ => {
                return Err(TopologyError::TooMany {
                    what: "spares of a non-router",
                });
            }
        };
        let o = paddr.octets();
        let addr = Ipv4Addr::new(o[0], o[1], o[2], o[3].wrapping_add(100));
        let name = node_name(&format!("spare-{}", self.node(primary).name))?;
        let slr = self.slr_config(level);
        let spare = SpareConfig {
            dead_after,
            take_over: vec![IpAddr::V4(paddr)],
            mirror_capacity: self.cfg.mirror.max_flows,
        };
        let node = self.router_node(level, paddr, &slr, Some(spare));
        let id = self.add_node(NewNode {
            claimed: name.clone(),
            name: name.clone(),
            addr,
            parent,
            uplink,
            issuer: CaId(0),
            trust: vec![CaId(0)],
            up: None,
            kind: Kind::Router(Box::new(super::RouterNode {
                level,
                role: Role::Spare,
                node,
                slr_cfg: slr,
                local: paddr,
                recover: 0,
                seen_unpinned: 0,
                rec: RouterRecovery {
                    spare: Some(SpareLink {
                        primary,
                        dead_after,
                        taken_over: None,
                    }),
                    ..RouterRecovery::default()
                },
            })),
        });
        // The primary's own address, for the day the spare carries it.
        if let Kind::Router(r) = &mut self.node_mut(id).kind {
            r.rec.scope.local_addrs = vec![IpAddr::V4(addr), IpAddr::V4(paddr)];
        }
        self.init_node_recovery(id);
        if let Kind::Router(r) = &mut self.node_mut(primary).kind {
            let r = &mut **r;
            r.rec.scope.spares.push(name);
            if let Err(e) = r.node.set_recovery_scope(r.rec.scope.clone()) {
                tracing::warn!(error = %e, "spare refused");
            }
        }
        self.add_link(id, primary, LinkKind::Primary);
        Ok(id)
    }

    /// When the spare took over, if it did.
    pub fn takeover_at(&self, spare: NodeId) -> Option<Instant> {
        match &self.node(spare).kind {
            Kind::Router(r) => r.rec.spare.and_then(|s| s.taken_over),
            _ => None,
        }
    }

    /// A spare's mirror: (flows mirrored, lag of the newest delta).
    pub fn mirror_state(&self, spare: NodeId) -> Option<(usize, Option<Duration>)> {
        match &self.node(spare).kind {
            Kind::Router(r) => r.node.mirror_state(),
            _ => None,
        }
    }

    pub(super) fn take_over(&mut self, spare: NodeId) {
        let now = self.now;
        let Some(primary) = (match &self.node(spare).kind {
            Kind::Router(r) => r.rec.spare.map(|s| s.primary),
            _ => None,
        }) else {
            return;
        };
        let paddr = self.node(primary).addr;
        let pname = self.node(primary).name.clone();
        let pup = self.node(primary).up;
        self.by_addr.insert(IpAddr::V4(paddr), spare);
        let n = self.node_mut(spare);
        n.addr = paddr;
        n.claimed = pname.clone();
        n.cert.subject = pname;
        n.up = pup.map(|u| UpLink { session: None, ..u });
        if let Kind::Router(r) = &mut n.kind {
            r.role = role_of(r.level);
            if let Some(sp) = r.rec.spare.as_mut() {
                sp.taken_over = Some(now);
            }
        }
        // The primary's lower-level peers dial its address, which now reaches us.
        for i in 0..self.nodes.len() {
            if let Some(u) = self.nodes[i].up.as_mut()
                && u.target == primary
            {
                u.target = spare;
            }
        }
        self.rec.counters.takeovers += 1;
        self.rec.counters.last_restored = Some(now);
        tracing::info!(spare = %self.node(spare).name, "spare took over");
        if self.node(spare).up.is_some() {
            self.schedule(now, Event::Connect { lower: spare });
        }
    }

    // ----- timers ------------------------------------------------------------

    /// The earliest recovery deadline of a node the simulator itself runs (a
    /// host's progress scan; a router's are its node's).
    pub(super) fn recovery_timeout(&self, id: NodeId) -> Option<Instant> {
        match &self.node(id).kind {
            Kind::Host(h) => h.rec.next_scan,
            _ => None,
        }
    }

    /// Runs the recovery timers of a host that woke.
    pub(super) fn recovery_wake(&mut self, id: NodeId) {
        let now = self.now;
        if let Kind::Host(h) = &self.node(id).kind
            && h.rec.next_scan.is_some_and(|t| t <= now)
        {
            self.host_scan(id);
        }
    }

    // ----- server flow advertisements ----------------------------------------

    fn host_scan(&mut self, id: NodeId) {
        let now = self.now;
        let Some(a) = self.cfg.adverts.clone() else {
            return;
        };
        let host_addr = self.node(id).addr;
        let Kind::Host(h) = &mut self.node_mut(id).kind else {
            return;
        };
        h.rec.next_scan = Some(now + a.scan_interval);
        let Some(m) = h.rec.monitor.as_mut() else {
            return;
        };
        // Sorted, so the monitor sees the same order every run.
        let conns: BTreeMap<FlowKey, super::HostConn> =
            h.conns.iter().map(|(k, c)| (*k, *c)).collect();
        for (key, c) in &conns {
            if c.open {
                m.observe(*key, now.saturating_since(c.last_rx) >= a.quiet, now);
            }
        }
        m.end_scan(now);
        let mut due = Vec::new();
        while let Some(k) = m.poll_advert(now) {
            due.push(k);
        }
        let unix = SIM_EPOCH_UNIX_MS + now.as_nanos() / 1_000_000;
        let mut out = Vec::new();
        for key in due {
            h.rec.sent += 1;
            let fields = AdvertFields {
                key,
                server: SocketAddr::new(IpAddr::V4(host_addr), key.dst_port),
                key_id: ADVERT_KEY_ID,
                timestamp_ms: unix,
                nonce: (u64::from(id.0) << 40) | h.rec.sent,
            };
            let Some(auth) = h.rec.auth.as_ref() else {
                continue;
            };
            let mut buf = vec![0u8; HEADROOM + 256];
            match auth.echo_request(&mut buf[HEADROOM..], &fields, 0x5052, h.rec.sent as u16) {
                Ok(len) => out.push((key.src, buf, len)),
                Err(e) => tracing::warn!(error = %e, "advert not signed"),
            }
        }
        for (client, buf, len) in out {
            self.rec.counters.adverts_sent += 1;
            let pkt = SimPacket {
                buf,
                start: HEADROOM,
                len,
                conn: None,
                slr_hops: 0,
                handed_over: false,
            };
            self.send_packet(id, client, pkt);
        }
    }

    /// A client answers an echo request (through its current path); true when
    /// the packet was ICMP.
    pub(super) fn client_echo(&mut self, pkt: &SimPacket) -> bool {
        let data = pkt.data();
        let Ok(ip) = Ipv4Packet::new_checked(data) else {
            return false;
        };
        if ip.protocol() != ip_proto::ICMP {
            return false;
        }
        let (src, dst, hl) = (ip.src_addr(), ip.dst_addr(), ip.header_len());
        let total = usize::from(ip.total_len());
        let Some(&client) = self.by_addr.get(&IpAddr::V4(dst)) else {
            return true;
        };
        let Some(l4) = data.get(hl..total) else {
            return true;
        };
        let Ok(icmp) = Icmpv4Packet::new_checked(l4) else {
            return true;
        };
        if icmp.msg_type() != icmpv4_type::ECHO_REQUEST {
            return true;
        }
        let mut buf = vec![0u8; HEADROOM + total];
        buf[HEADROOM..].copy_from_slice(&data[..total]);
        {
            let mut ip = Ipv4Packet::new_unchecked(&mut buf[HEADROOM..]);
            ip.set_src_addr(dst);
            ip.set_dst_addr(src);
            ip.set_ttl(64);
            ip.fill_checksum();
        }
        {
            let mut icmp = Icmpv4Packet::new_unchecked(&mut buf[HEADROOM + hl..]);
            icmp.set_msg_type(icmpv4_type::ECHO_REPLY);
            icmp.fill_checksum();
        }
        self.rec.counters.echo_replies += 1;
        let reply = SimPacket {
            buf,
            start: HEADROOM,
            len: total,
            conn: None,
            slr_hops: 0,
            handed_over: false,
        };
        self.send_packet(client, IpAddr::V4(src), reply);
        true
    }

    // ----- forgery -----------------------------------------------------------

    /// Delivers a raw IPv4 packet to `to` as if `from` had sent it (attack
    /// traffic: forged advertisements).
    pub fn inject_packet(&mut self, from: NodeId, to: NodeId, bytes: &[u8]) {
        let mut buf = vec![0u8; HEADROOM + bytes.len()];
        buf[HEADROOM..].copy_from_slice(bytes);
        let pkt = SimPacket {
            buf,
            start: HEADROOM,
            len: bytes.len(),
            conn: None,
            slr_hops: 0,
            handed_over: false,
        };
        let at = self.now + self.delay(from, to);
        self.schedule(at, Event::Packet { to, pkt });
    }

    /// Delivers `message` to `to` on its session with `from`, framed in `from`'s
    /// epoch as if `from` had sent it (a forging peer). False when there is no
    /// such session.
    pub fn inject_signal(&mut self, from: NodeId, to: NodeId, message: Message) -> bool {
        let Some(&s) = self.node(to).sessions.iter().rev().find(|&&s| {
            let x = &self.sessions[s];
            (x.upper == from && x.lower == to) || (x.upper == to && x.lower == from)
        }) else {
            return false;
        };
        let to_upper = self.sessions[s].upper == to;
        let epoch = if to_upper {
            self.sessions[s].lower_peer.local_epoch()
        } else {
            self.sessions[s].upper_peer.local_epoch()
        };
        let mut bytes = Vec::new();
        if signaling::encode(&Envelope { epoch, message }, &mut bytes).is_err() {
            return false;
        }
        self.on_signal(s, to_upper, &bytes);
        true
    }

    /// Every flow pinned at every router and entry router: (node, key) → next
    /// hop.
    pub fn pinned_flows(&self) -> BTreeMap<(NodeId, FlowKey), IpAddr> {
        let mut out = BTreeMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let engine = match &n.kind {
                Kind::Router(r) => r.node.engine(),
                Kind::Entry(e) => e.node.engine(),
                _ => continue,
            };
            for f in engine.flows().export(self.now) {
                out.insert((NodeId(i as u32), f.key), f.next_hop);
            }
        }
        out
    }

    /// Where `node` has `key` pinned now.
    pub fn pinned_next_hop(&self, node: NodeId, key: &FlowKey) -> Option<IpAddr> {
        match &self.node(node).kind {
            Kind::Router(r) => r
                .node
                .engine()
                .lookup_flow(key, self.now)
                .map(|f| f.next_hop),
            Kind::Entry(e) => e
                .node
                .engine()
                .lookup_flow(key, self.now)
                .map(|f| f.next_hop),
            _ => None,
        }
    }

    pub(super) fn on_recovery_event(&mut self, ev: RecoveryEvent) {
        match ev {
            RecoveryEvent::RecreateEntry { entry, slr, obj } => {
                self.recreate_entry(entry, slr, obj);
            }
            RecoveryEvent::ConnectLink { node, index } => self.connect_link(node, index),
        }
    }
}

/// What one packet through a node may change of the recovery figures.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Tally {
    pub(super) new_flows: u64,
    pub(super) recover: u64,
    pub(super) forwarded_unknown: u64,
    queries: u64,
    adverts_no_keys: u64,
    adverts_malformed: u64,
    adverts_installed: u64,
    adverts_current: u64,
    adverts_relayed: u64,
    adverts_rejected: u64,
    auth: signaling::AdvertAuthStats,
}

impl Tally {
    pub(super) fn of(node: &RouterNodeCore) -> Self {
        let e = node.engine().counters();
        let r = node.counters().recovery;
        Self {
            new_flows: e.forwarded_new,
            recover: e.recover,
            forwarded_unknown: r.recover_forwarded,
            queries: node.control().recovery_stats().queries,
            adverts_no_keys: r.adverts_no_keys,
            adverts_malformed: r.adverts_malformed,
            adverts_installed: r.adverts_installed,
            adverts_current: r.adverts_current,
            adverts_relayed: r.adverts_relayed,
            adverts_rejected: r.adverts_rejected,
            auth: node.recovery().auth_stats().unwrap_or_default(),
        }
    }
}
