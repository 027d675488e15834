//! The node's control inputs: sessions and their events, timers, and the
//! actions of the control side turned into [`NodeEvent`]s.

use super::{LAG_BUCKETS, Node, NodeEvent, SessionInfo, SessionKind};
use crate::peer::PeerEvent;
use crate::slr::{SessionId, SlrAction};
use router_core::api::RouterApi;
use router_core::flow::FlowState;
use router_core::policy::Level;
use router_core::{Instant, VirtualSubnet};
use std::collections::BTreeSet;
use std::net::IpAddr;
use tracing::{debug, info, warn};

impl Node {
    /// A session to `kind` of peer is open (its handshake and registration are
    /// the session's; the node learns the outcome through [`Node::handle_event`]).
    pub fn session_opened(&mut self, id: SessionId, kind: SessionKind) {
        self.sessions.insert(
            id,
            SessionInfo {
                kind,
                registered: false,
                last_update: None,
                updates: 0,
            },
        );
        if kind == SessionKind::Upstream {
            self.slr.set_upstream(Some(id));
        }
        self.after_control();
    }

    /// One event of session `id`.
    pub fn handle_event(&mut self, now: Instant, id: SessionId, event: PeerEvent) {
        self.advance(now);
        let Some(info) = self.sessions.get_mut(&id) else {
            self.counters.events_unknown_session += 1;
            return;
        };
        let kind = info.kind;
        match &event {
            PeerEvent::StateUpdate(_) => {
                info.last_update = Some(now);
                info.updates += 1;
            }
            PeerEvent::Registered { .. } => info.registered = true,
            _ => {}
        }
        let down = matches!(event, PeerEvent::PeerDown { .. });
        match kind {
            SessionKind::Primary => self
                .recovery
                .primary_event(now, id, event, &mut self.engine),
            SessionKind::Downstream { remote, route_cost } => {
                if let PeerEvent::Registered { identity, role, .. } = &event {
                    let known = self.cfg.downstream.get(identity).copied();
                    let cost = route_cost
                        .or(known.map(|d| d.route_cost))
                        .unwrap_or(self.cfg.default_route_cost);
                    let addr = known.and_then(|d| d.tunnel).unwrap_or(remote);
                    info!(peer = %identity, ?role, tunnel = %addr, route_cost = cost, "lower-level peer registered");
                    if let Err(err) = self.slr.add_downstream(id, addr, cost) {
                        warn!(session = id.0, error = %err, "lower-level peer refused");
                        self.counters.sessions_refused += 1;
                        self.events.push_back(NodeEvent::Close { session: id });
                    }
                }
                self.control_event(now, id, event);
            }
            SessionKind::Neighbour => {
                if let PeerEvent::Registered { identity, .. } = &event {
                    info!(neighbour = %identity, "WHOHAS neighbour registered");
                    if let Err(err) = self.slr.add_neighbour(id) {
                        self.counters.neighbours_refused += 1;
                        warn!(session = id.0, error = %err, "neighbour refused");
                    }
                }
                self.control_event(now, id, event);
            }
            SessionKind::Upstream => self.control_event(now, id, event),
        }
        if down {
            self.sessions.remove(&id);
        }
        self.after_control();
    }

    fn control_event(&mut self, now: Instant, id: SessionId, event: PeerEvent) {
        if let PeerEvent::TunnelObject(obj) = &event
            && let Some(f) = self.engine.lookup_flow(&obj.key, now)
        {
            // How many packets of the flow the lower SLR saw before this.
            let i = usize::try_from(f.packets.saturating_sub(1)).unwrap_or(usize::MAX);
            self.counters.shortcut_lag[i.min(LAG_BUCKETS - 1)] += 1;
            debug!(key = %obj.key, server = %obj.server, packets = f.packets, "tunnel object received");
        }
        self.slr.handle_event(now, id, event, &mut self.engine);
    }

    /// Spare: something arrived from the primary (its session carries
    /// keepalives, so a registered session is proof of life).
    pub fn primary_heard(&mut self, now: Instant) {
        self.advance(now);
        self.recovery.primary_heard(now);
    }

    /// Timers: the table computation, WHOHAS expiry, the flow-table sweep,
    /// mirroring and failover.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        if now >= self.slr.poll_timeout() {
            self.slr.handle_timeout(now, &mut self.engine);
        }
        if now >= self.next_sweep {
            self.engine.sweep(now, self.cfg.sweep_buckets);
            self.next_sweep = now + self.cfg.sweep_every;
        }
        if let Some(report) = self
            .recovery
            .handle_timeout(now, &mut self.slr, &mut self.engine)
        {
            self.events.push_back(NodeEvent::TookOver(report));
        }
        self.after_control();
    }

    /// Turn what the control side and the mirror queued into events, and keep
    /// the routed subnets equal to the served ones.
    pub(super) fn after_control(&mut self) {
        while let Some(a) = self.slr.poll_action() {
            self.control_action(a);
        }
        while let Some(a) = self.recovery.poll_mirror_action() {
            self.control_action(a);
        }
        self.sync_routes(false);
        if !self.held.is_empty() {
            let (engine, now) = (&self.engine, self.now);
            self.held
                .release_pinned(now, |k| engine.lookup_flow(k, now).is_some());
        }
    }

    fn control_action(&mut self, a: SlrAction) {
        match a {
            SlrAction::Send { session, message } => {
                self.events.push_back(NodeEvent::Send { session, message });
            }
            SlrAction::Close { session } => {
                self.counters.sessions_refused += 1;
                self.events.push_back(NodeEvent::Close { session });
            }
            SlrAction::ProgramEntry(obj) => self.events.push_back(NodeEvent::ProgramEntry(obj)),
            SlrAction::NextHopDown { addr } => self.unpin_embryonic(addr),
            SlrAction::FlowRecovered { key, next_hop } => {
                info!(%key, %next_hop, "flow state re-created from a WHOHAS answer");
                self.counters.flows_recovered += 1;
                self.events
                    .push_back(NodeEvent::FlowRecovered { key, next_hop });
            }
            SlrAction::SpareRegistered { session, name } => {
                info!(session = session.0, spare = %name, "hot spare registered; mirroring the flow table");
                self.recovery.spare_registered(session, self.now);
            }
            SlrAction::SpareDown { session } => self.recovery.spare_down(session),
        }
    }

    /// Unpins the flows that only saw a SYN and are pinned to `addr`, so their
    /// retransmitted SYNs are placed anew instead of following a dead next hop
    /// until the SYN timeout. Established flows stay: with a shortcut their server
    /// may well still be reachable.
    fn unpin_embryonic(&mut self, addr: IpAddr) {
        let now = self.now;
        let keys: Vec<_> = self
            .engine
            .flows()
            .export(now)
            .filter(|e| e.next_hop == addr && e.state == FlowState::SynSeen)
            .map(|e| e.key)
            .collect();
        for k in &keys {
            let _ = self.engine.remove_flow(k, now);
        }
        self.counters.embryonic_unpinned += keys.len() as u64;
    }

    /// Emit [`NodeEvent::Serve`] / [`NodeEvent::Withdraw`] for what changed since
    /// the last call (`force`: compare even if no table update ran).
    pub(super) fn sync_routes(&mut self, force: bool) {
        let updates = self.slr.stats().table_updates;
        if !force && updates == self.table_updates_seen {
            return;
        }
        self.table_updates_seen = updates;
        let want: BTreeSet<VirtualSubnet> = self
            .slr
            .served_subnets()
            .filter_map(|p| VirtualSubnet::try_from(*p).ok())
            .chain(self.cfg.statics.iter().copied())
            .collect();
        for s in want.difference(&self.routed) {
            info!(subnet = %s, "serving virtual subnet");
            self.events.push_back(NodeEvent::Serve(*s));
        }
        for s in self.routed.difference(&want) {
            info!(subnet = %s, "virtual subnet withdrawn");
            self.events.push_back(NodeEvent::Withdraw(*s));
        }
        self.routed = want;
    }

    /// Whether a shortcut originates here when a flow is pinned: only the site
    /// level pins flows to servers.
    pub(super) fn originates_shortcuts(&self) -> bool {
        self.cfg.level == Level::Site
    }
}
