//! The next-hop table of DESIGN.md §4: what the level below serves, and at what cost.
//!
//! Inputs are the registrations of next-level peers (tunnel endpoint, route cost,
//! session epoch), their state updates (virtual subnet → load) and their liveness.
//! Every [`TableConfig::interval`] the table computes, for each virtual subnet `k`
//! and each peer `j` reporting it, `m_kj = F(s_kj, r_j)`; orders the candidates
//! cheapest first (ties by address, so the order is deterministic); and computes
//! `M_k = G(...)`, the load this router advertises upward. The result is a
//! [`TableUpdate`]: candidate lists for the engine (`RouterApi::set_candidates`,
//! which only affects new flows: pinned flows never move) and the state update for
//! the level above. F and G come from a [`CostModel`] (a wasm module, or
//! [`SumCost`]); a fault of either falls back to [`SumCost`] for that call and is
//! counted.
//!
//! Sequencing: [`crate::Peer`] already ignores, per session, state updates whose
//! sequence number is not above the last accepted one and frames of any other
//! epoch. What one session cannot see is the *identity* across sessions: when a
//! peer reconnects, a late update or down report of its previous session (shells
//! run sessions concurrently) carries the old epoch; the table ignores and counts
//! it, so a dead session can neither overwrite fresh loads nor mark a live peer down.
//!
//! Soft state: a report holds for [`TableConfig::hold_time`] unless refreshed, so a
//! subnet a peer stops announcing is withdrawn without an explicit message, and a
//! peer that is down stays in the candidate lists as not-up until its reports
//! expire. Peers and subnets are bounded by configuration; what does not fit is
//! refused and counted.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use router_core::api::RouterApi;
use router_core::classify::VirtualSubnet;
use router_core::engine::MAX_CANDIDATES;
use router_core::policy::{
    Candidate, CostModel, Decision, FlowRequest, Policy, PolicyError, SumCost,
};
use router_core::time::Instant;
use tracing::{debug, warn};

use crate::message::{
    Epoch, MAX_SUBNETS_PER_UPDATE, NodeName, StateUpdate, SubnetLoad, SubnetPrefix,
};
use crate::peer::Outgoing;

/// Timers and bounds of a [`NextHopTable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableConfig {
    /// How often F and G are recomputed and the result pushed.
    pub interval: Duration,
    /// How long a peer's report of a subnet holds without a refresh; keep it
    /// above the lower level's update interval.
    pub hold_time: Duration,
    /// Most next-level peers (at most the engine's candidate limit).
    pub max_peers: usize,
    /// Most virtual subnets tracked.
    pub max_subnets: usize,
}

impl Default for TableConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            hold_time: Duration::from_secs(10),
            max_peers: MAX_CANDIDATES,
            max_subnets: 1 << 20,
        }
    }
}

/// Errors of table configuration calls.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TableError {
    /// The table holds its maximum number of peers; raise `max_peers` (at most the
    /// engine's candidate limit) or remove a peer.
    #[error("next-hop table already holds {limit} peers")]
    PeersFull {
        /// The configured bound.
        limit: usize,
    },
    /// A route cost must be finite and non-negative.
    #[error("route cost {cost} for {peer} is not finite and non-negative")]
    BadRouteCost {
        /// The peer.
        peer: NodeName,
        /// The cost given.
        cost: f64,
    },
    /// No peer of that name is registered.
    #[error("no next-level peer named {peer}")]
    UnknownPeer {
        /// The name given.
        peer: NodeName,
    },
}

/// Why a state update or a down report was ignored (each reason is counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Ignored {
    /// The sender never registered (or was removed).
    #[error("peer is not registered")]
    UnknownPeer,
    /// The input belongs to another session of the peer than the current one.
    #[error("from session epoch {got}, current is {current:?}")]
    StaleEpoch {
        /// The peer's current epoch.
        current: Option<Epoch>,
        /// The epoch of the input.
        got: Epoch,
    },
    /// The peer's current session was reported down.
    #[error("peer is down")]
    PeerDown,
}

/// What an accepted state update did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpdateReport {
    /// Subnet loads recorded.
    pub accepted: usize,
    /// Subnet loads refused (table full, or a load not finite and non-negative).
    pub refused: usize,
}

/// Table counters; every ignored or refused input has one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Registrations (including re-registrations with a new epoch).
    pub registrations: u64,
    /// Registrations refused because the table was full.
    pub peers_refused: u64,
    /// Peers marked down.
    pub peers_down: u64,
    /// Down reports ignored because they named an old session.
    pub downs_stale_epoch: u64,
    /// State updates accepted.
    pub updates_accepted: u64,
    /// State updates from an old session of the peer, ignored.
    pub updates_stale_epoch: u64,
    /// State updates from a peer that never registered, ignored.
    pub updates_unknown_peer: u64,
    /// State updates from a peer whose session is down, ignored.
    pub updates_peer_down: u64,
    /// Subnet loads refused because `max_subnets` was reached.
    pub subnets_refused: u64,
    /// Subnet loads refused because the load was not finite and non-negative.
    pub invalid_loads: u64,
    /// Reports dropped because they were not refreshed within `hold_time`.
    pub reports_expired: u64,
    /// Table computations run.
    pub computations: u64,
    /// F calls that failed and fell back to [`SumCost`].
    pub cost_faults: u64,
    /// F results that were NaN (treated as unreachable).
    pub invalid_costs: u64,
    /// G calls that failed or returned a negative or NaN load, and fell back.
    pub aggregate_faults: u64,
}

/// A subnet's computed next hops, cheapest first.
#[derive(Debug, Clone, PartialEq)]
pub struct SubnetRoute {
    /// The virtual subnet.
    pub subnet: SubnetPrefix,
    /// Candidates in F order (cheapest first; ties by address). A candidate whose
    /// peer is down, or whose cost is `+inf`, is not up.
    pub candidates: Vec<Candidate>,
    /// `F(load, route_cost)` of each candidate (`+inf` when not up).
    pub costs: Vec<f64>,
    /// `M_k = G(candidates)`, or `None` when no candidate is usable.
    pub aggregate: Option<f64>,
}

impl SubnetRoute {
    /// The cheapest usable next hop, if any.
    pub fn best(&self) -> Option<&Candidate> {
        self.candidates.first().filter(|c| c.up)
    }
}

/// The result of one table computation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableUpdate {
    /// Subnets whose candidate list changed since the last computation (new ones
    /// included): push them into the engine.
    pub changed: Vec<SubnetRoute>,
    /// Subnets no peer reports any more: stop serving them (pinned flows stay).
    pub withdrawn: Vec<SubnetPrefix>,
    /// `M_k` of every subnet with a usable next hop: the upward state update.
    pub advertisement: Vec<SubnetLoad>,
}

/// What [`TableUpdate::apply`] did to the engine.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApplyReport {
    /// Subnets whose candidates were set.
    pub installed: usize,
    /// Subnets removed.
    pub withdrawn: usize,
    /// Subnets the engine refused (table full, too many candidates), with the
    /// reason; the table must forget them with [`NextHopTable::forget_installed`]
    /// so the next computation retries.
    pub refused: Vec<(SubnetPrefix, router_core::ApiError)>,
}

impl TableUpdate {
    /// The advertisement as state updates of at most [`MAX_SUBNETS_PER_UPDATE`]
    /// subnets each.
    pub fn advertisement_messages(&self) -> impl Iterator<Item = Outgoing> + '_ {
        self.advertisement
            .chunks(MAX_SUBNETS_PER_UPDATE)
            .map(|c| Outgoing::StateUpdate {
                subnets: c.to_vec(),
            })
    }

    /// Pushes the changes into an engine: serve new subnets, replace candidate
    /// lists (new flows only), install `policy` on each changed subnet when given,
    /// and stop serving withdrawn subnets. One refused subnet does not stop the rest.
    pub fn apply<A: RouterApi + ?Sized>(
        &self,
        api: &mut A,
        policy: Option<&Arc<dyn Policy>>,
    ) -> ApplyReport {
        let mut report = ApplyReport::default();
        for route in &self.changed {
            let res = VirtualSubnet::try_from(route.subnet)
                .map_err(router_core::ApiError::from)
                .and_then(|vs| api.add_subnet(vs))
                .and_then(|id| {
                    api.set_candidates(id, route.candidates.clone())?;
                    if let Some(p) = policy {
                        api.set_policy(id, Some(p.clone()))?;
                    }
                    Ok(())
                });
            match res {
                Ok(()) => report.installed += 1,
                Err(e) => {
                    warn!(subnet = %route.subnet, error = %e, "engine refused a subnet");
                    report.refused.push((route.subnet, e));
                }
            }
        }
        for subnet in &self.withdrawn {
            let Ok(vs) = VirtualSubnet::try_from(*subnet) else {
                continue;
            };
            // Not served (e.g. refused earlier) is fine: the goal state holds.
            if api.remove_subnet(&vs).is_ok() {
                report.withdrawn += 1;
            }
        }
        report
    }
}

/// The policy that follows the table: the first usable candidate, i.e. the
/// cheapest by the table's F. Install it where new flows must go exactly where F
/// says (the engine's built-in least-cost policy sums load and route cost instead).
#[derive(Debug, Clone, Copy, Default)]
pub struct FollowTable;

impl Policy for FollowTable {
    fn name(&self) -> &str {
        "follow-table"
    }
    fn select(
        &self,
        _req: &FlowRequest,
        candidates: &[Candidate],
    ) -> Result<Decision, PolicyError> {
        Ok(candidates
            .iter()
            .position(|c| c.up)
            .map_or(Decision::Reject, Decision::Select))
    }
}

/// What the table knows about one next-level peer.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerView {
    /// Tunnel endpoint.
    pub addr: IpAddr,
    /// Route cost from this router.
    pub route_cost: f64,
    /// Registered and not reported down.
    pub up: bool,
    /// Epoch of its current session.
    pub epoch: Option<Epoch>,
    /// Sequence number of the last accepted state update.
    pub last_seq: Option<u64>,
}

#[derive(Debug)]
struct PeerEntry {
    name: NodeName,
    view: PeerView,
    /// Reports of this peer still held (recounted at each computation).
    reports: usize,
}

#[derive(Debug, Clone, Copy)]
struct Report {
    peer: u32,
    load: f32,
    refreshed: Instant,
}

#[derive(Debug, Default)]
struct Row {
    reports: Vec<Report>,
    /// What was last handed out for the engine.
    installed: Option<Vec<Candidate>>,
    best: Option<IpAddr>,
    aggregate: Option<f64>,
}

/// The next-hop table of one SLR.
#[derive(Debug)]
pub struct NextHopTable {
    cfg: TableConfig,
    peers: Vec<Option<PeerEntry>>,
    free: Vec<u32>,
    by_name: BTreeMap<NodeName, u32>,
    rows: BTreeMap<SubnetPrefix, Row>,
    next_due: Instant,
    stats: TableStats,
}

impl NextHopTable {
    /// An empty table whose first computation is due at `now`.
    pub fn new(mut cfg: TableConfig, now: Instant) -> Self {
        cfg.max_peers = cfg.max_peers.min(MAX_CANDIDATES);
        Self {
            cfg,
            peers: Vec::new(),
            free: Vec::new(),
            by_name: BTreeMap::new(),
            rows: BTreeMap::new(),
            next_due: now,
            stats: TableStats::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &TableConfig {
        &self.cfg
    }

    /// A peer registered (or re-registered with a new session): it is up, reachable
    /// at `addr` (its tunnel endpoint) with `route_cost`. Its earlier reports hold
    /// until refreshed or expired.
    pub fn register(
        &mut self,
        name: &NodeName,
        addr: IpAddr,
        route_cost: f64,
        epoch: Epoch,
    ) -> Result<(), TableError> {
        if !route_cost.is_finite() || route_cost < 0.0 {
            return Err(TableError::BadRouteCost {
                peer: name.clone(),
                cost: route_cost,
            });
        }
        let view = PeerView {
            addr,
            route_cost,
            up: true,
            epoch: Some(epoch),
            last_seq: None,
        };
        if let Some(&i) = self.by_name.get(name) {
            if let Some(p) = self.peers.get_mut(i as usize).and_then(Option::as_mut) {
                p.view = view;
            }
        } else {
            let live = self.by_name.len();
            if live >= self.cfg.max_peers {
                self.stats.peers_refused += 1;
                warn!(peer = %name, limit = self.cfg.max_peers, "next-hop table full; peer refused");
                return Err(TableError::PeersFull {
                    limit: self.cfg.max_peers,
                });
            }
            let entry = PeerEntry {
                name: name.clone(),
                view,
                reports: 0,
            };
            let i = if let Some(i) = self.free.pop() {
                self.peers[i as usize] = Some(entry);
                i
            } else {
                // Bounded by max_peers <= MAX_CANDIDATES, far below u32::MAX.
                let i = self.peers.len() as u32;
                self.peers.push(Some(entry));
                i
            };
            self.by_name.insert(name.clone(), i);
        }
        self.stats.registrations += 1;
        debug!(peer = %name, %addr, route_cost, %epoch, "next hop registered");
        Ok(())
    }

    /// Changes a peer's route cost (e.g. after an IGP change); effective at the
    /// next computation.
    pub fn set_route_cost(&mut self, name: &NodeName, route_cost: f64) -> Result<(), TableError> {
        if !route_cost.is_finite() || route_cost < 0.0 {
            return Err(TableError::BadRouteCost {
                peer: name.clone(),
                cost: route_cost,
            });
        }
        let p = self
            .entry_mut(name)
            .ok_or_else(|| TableError::UnknownPeer { peer: name.clone() })?;
        p.view.route_cost = route_cost;
        Ok(())
    }

    /// The session `epoch` of peer `name` went down: its candidates turn not-up at
    /// the next computation. A down report of an older session is ignored.
    pub fn peer_down(&mut self, name: &NodeName, epoch: Epoch) -> Result<(), Ignored> {
        let Some(p) = self.entry_mut(name) else {
            return Err(Ignored::UnknownPeer);
        };
        if p.view.epoch != Some(epoch) {
            let current = p.view.epoch;
            self.stats.downs_stale_epoch += 1;
            return Err(Ignored::StaleEpoch {
                current,
                got: epoch,
            });
        }
        if p.view.up {
            p.view.up = false;
            self.stats.peers_down += 1;
            debug!(peer = %name, %epoch, "next hop down");
        }
        Ok(())
    }

    /// Records a state update that session `epoch` of peer `name` delivered.
    pub fn handle_update(
        &mut self,
        now: Instant,
        name: &NodeName,
        epoch: Epoch,
        update: &StateUpdate,
    ) -> Result<UpdateReport, Ignored> {
        let Some(&idx) = self.by_name.get(name) else {
            self.stats.updates_unknown_peer += 1;
            return Err(Ignored::UnknownPeer);
        };
        let Some(p) = self.peers.get_mut(idx as usize).and_then(Option::as_mut) else {
            self.stats.updates_unknown_peer += 1;
            return Err(Ignored::UnknownPeer);
        };
        if p.view.epoch != Some(epoch) {
            self.stats.updates_stale_epoch += 1;
            debug!(peer = %name, got = %epoch, "state update of an old session ignored");
            return Err(Ignored::StaleEpoch {
                current: p.view.epoch,
                got: epoch,
            });
        }
        if !p.view.up {
            self.stats.updates_peer_down += 1;
            return Err(Ignored::PeerDown);
        }
        p.view.last_seq = Some(update.seq);
        let mut report = UpdateReport::default();
        for s in &update.subnets {
            if !s.load.is_finite() || s.load < 0.0 {
                self.stats.invalid_loads += 1;
                report.refused += 1;
                continue;
            }
            let fresh = Report {
                peer: idx,
                load: s.load,
                refreshed: now,
            };
            if let Some(row) = self.rows.get_mut(&s.subnet) {
                // Reports stay sorted by peer slot: O(log peers) per subnet.
                match row.reports.binary_search_by_key(&idx, |r| r.peer) {
                    Ok(i) => row.reports[i] = fresh,
                    Err(i) => row.reports.insert(i, fresh),
                }
            } else if self.rows.len() < self.cfg.max_subnets {
                self.rows.insert(
                    s.subnet,
                    Row {
                        reports: vec![fresh],
                        ..Row::default()
                    },
                );
            } else {
                self.stats.subnets_refused += 1;
                report.refused += 1;
                continue;
            }
            report.accepted += 1;
        }
        self.stats.updates_accepted += 1;
        Ok(report)
    }

    /// When the next computation is due.
    #[must_use]
    pub fn poll_timeout(&self) -> Instant {
        self.next_due
    }

    /// Computes the table if due; the next computation is then `interval` later.
    pub fn handle_timeout(&mut self, now: Instant, cost: &dyn CostModel) -> Option<TableUpdate> {
        if now < self.next_due {
            return None;
        }
        self.next_due = now + self.cfg.interval;
        Some(self.compute(now, cost))
    }

    /// Computes F, the candidate order and G for every subnet now.
    pub fn compute(&mut self, now: Instant, cost: &dyn CostModel) -> TableUpdate {
        self.stats.computations += 1;
        let mut out = TableUpdate::default();
        let hold = self.cfg.hold_time;
        let peers = &self.peers;
        let stats = &mut self.stats;
        let mut held = vec![0usize; peers.len()];
        // Scratch reused across rows: no allocation per subnet unless its
        // candidate list changed.
        let mut scored: Vec<(f64, Candidate)> = Vec::new();
        let mut candidates: Vec<Candidate> = Vec::new();
        self.rows.retain(|prefix, row| {
            let before = row.reports.len();
            row.reports
                .retain(|r| now.saturating_since(r.refreshed) <= hold);
            stats.reports_expired += (before - row.reports.len()) as u64;
            scored.clear();
            for r in &row.reports {
                let Some(p) = peers.get(r.peer as usize).and_then(Option::as_ref) else {
                    continue;
                };
                held[r.peer as usize] += 1;
                let load = f64::from(r.load);
                let route_cost = p.view.route_cost;
                let m = if p.view.up {
                    f_of(cost, load, route_cost, stats)
                } else {
                    f64::INFINITY
                };
                scored.push((
                    m,
                    Candidate {
                        addr: p.view.addr,
                        load,
                        route_cost,
                        up: p.view.up && m.is_finite(),
                    },
                ));
            }
            if scored.is_empty() {
                if row.installed.is_some() {
                    out.withdrawn.push(*prefix);
                }
                return false;
            }
            // Keys are unique per peer address, so the unstable sort is as
            // deterministic as a stable one.
            scored.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.addr.cmp(&b.1.addr)));
            candidates.clear();
            candidates.extend(scored.iter().map(|s| s.1));
            let aggregate = g_of(cost, &candidates, stats);
            if let Some(g) = aggregate {
                let load = g as f32;
                if load.is_finite() {
                    out.advertisement.push(SubnetLoad {
                        subnet: *prefix,
                        load,
                    });
                }
            }
            row.best = candidates.first().filter(|c| c.up).map(|c| c.addr);
            row.aggregate = aggregate;
            if row.installed.as_deref() != Some(&candidates[..]) {
                row.installed = Some(candidates.clone());
                out.changed.push(SubnetRoute {
                    subnet: *prefix,
                    candidates: candidates.clone(),
                    costs: scored.iter().map(|s| s.0).collect(),
                    aggregate,
                });
            }
            true
        });
        // A peer that is down and no longer reports anything is forgotten.
        for (i, slot) in self.peers.iter_mut().enumerate() {
            let gone = slot
                .as_mut()
                .map(|p| {
                    p.reports = held.get(i).copied().unwrap_or(0);
                    !p.view.up && p.reports == 0
                })
                .unwrap_or(false);
            if gone && let Some(p) = slot.take() {
                self.by_name.remove(&p.name);
                self.free.push(i as u32);
            }
        }
        out
    }

    /// Forgets what was handed out for `subnet`, so the next computation reports
    /// it as changed again (after the engine refused it).
    pub fn forget_installed(&mut self, subnet: &SubnetPrefix) {
        if let Some(row) = self.rows.get_mut(subnet) {
            row.installed = None;
        }
    }

    /// The cheapest usable next hop of `subnet` at the last computation.
    pub fn best(&self, subnet: &SubnetPrefix) -> Option<IpAddr> {
        self.rows.get(subnet).and_then(|r| r.best)
    }

    /// `M_k` of `subnet` at the last computation.
    pub fn aggregate(&self, subnet: &SubnetPrefix) -> Option<f64> {
        self.rows.get(subnet).and_then(|r| r.aggregate)
    }

    /// The candidate list of `subnet` at the last computation.
    pub fn candidates(&self, subnet: &SubnetPrefix) -> Option<&[Candidate]> {
        self.rows.get(subnet).and_then(|r| r.installed.as_deref())
    }

    /// The load `name` last reported for `subnet`, if still held.
    pub fn reported_load(&self, name: &NodeName, subnet: &SubnetPrefix) -> Option<f32> {
        let idx = *self.by_name.get(name)?;
        self.rows
            .get(subnet)?
            .reports
            .iter()
            .find(|r| r.peer == idx)
            .map(|r| r.load)
    }

    /// Subnets tracked.
    pub fn subnets(&self) -> impl Iterator<Item = &SubnetPrefix> {
        self.rows.keys()
    }

    /// Number of subnets tracked.
    pub fn subnet_count(&self) -> usize {
        self.rows.len()
    }

    /// What the table knows about peer `name`.
    pub fn peer(&self, name: &NodeName) -> Option<&PeerView> {
        let i = *self.by_name.get(name)?;
        self.peers
            .get(i as usize)
            .and_then(Option::as_ref)
            .map(|p| &p.view)
    }

    /// Number of peers known (up or down).
    pub fn peer_count(&self) -> usize {
        self.by_name.len()
    }

    /// Counters.
    pub fn stats(&self) -> &TableStats {
        &self.stats
    }

    fn entry_mut(&mut self, name: &NodeName) -> Option<&mut PeerEntry> {
        let i = *self.by_name.get(name)?;
        self.peers.get_mut(i as usize).and_then(Option::as_mut)
    }
}

/// F with the fallback rule: a fault uses [`SumCost`]; NaN means unreachable.
fn f_of(cost: &dyn CostModel, load: f64, route_cost: f64, stats: &mut TableStats) -> f64 {
    let m = match cost.cost(load, route_cost) {
        Ok(m) => m,
        Err(e) => {
            stats.cost_faults += 1;
            debug!(model = cost.name(), error = %e, "F failed; using the built-in sum");
            load + route_cost
        }
    };
    if m.is_nan() {
        stats.invalid_costs += 1;
        return f64::INFINITY;
    }
    m
}

/// G with the fallback rule; `None` when no candidate is usable.
fn g_of(cost: &dyn CostModel, candidates: &[Candidate], stats: &mut TableStats) -> Option<f64> {
    if !candidates.iter().any(|c| c.up) {
        return None;
    }
    let g = match cost.aggregate(candidates) {
        Ok(g) if !g.is_nan() && g >= 0.0 => g,
        other => {
            stats.aggregate_faults += 1;
            debug!(model = cost.name(), result = ?other, "G failed; using the built-in minimum");
            SumCost.aggregate(candidates).unwrap_or(f64::INFINITY)
        }
    };
    g.is_finite().then_some(g)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use router_core::engine::{Engine, EngineConfig, Verdict};
    use router_core::flow::FlowConfig;
    use router_core::packet::{HEADROOM, PacketBuf};
    use router_core::policy::Level;
    use router_core::synth::PacketSpec;
    use router_core::wire::TcpFlags;
    use std::net::{Ipv4Addr, SocketAddr};

    fn name(i: usize) -> NodeName {
        NodeName::new(&format!("host{i}.site.test")).unwrap()
    }

    fn addr(i: usize) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 10 + i as u8))
    }

    fn vip_subnet() -> SubnetPrefix {
        SubnetPrefix::new("192.200.0.0".parse().unwrap(), 16).unwrap()
    }

    fn update(seq: u64, load: f32) -> StateUpdate {
        StateUpdate {
            seq,
            subnets: vec![SubnetLoad {
                subnet: vip_subnet(),
                load,
            }],
        }
    }

    fn cfg() -> TableConfig {
        TableConfig {
            interval: Duration::from_millis(500),
            hold_time: Duration::from_secs(2),
            max_peers: 16,
            max_subnets: 64,
        }
    }

    /// A table with `loads.len()` registered peers (epoch = index + 1) each
    /// reporting the VIP subnet.
    fn table_with(loads: &[f32], route_costs: &[f64]) -> NextHopTable {
        let mut t = NextHopTable::new(cfg(), Instant::ZERO);
        for (i, (&l, &r)) in loads.iter().zip(route_costs).enumerate() {
            t.register(&name(i), addr(i), r, Epoch(i as u64 + 1))
                .unwrap();
            t.handle_update(Instant::ZERO, &name(i), Epoch(i as u64 + 1), &update(1, l))
                .unwrap();
        }
        t
    }

    /// F that makes the route cost dominate: prefers near peers over idle ones.
    struct RouteFirst;
    impl CostModel for RouteFirst {
        fn name(&self) -> &str {
            "route-first"
        }
        fn cost(&self, load: f64, route_cost: f64) -> Result<f64, PolicyError> {
            Ok(100.0 * route_cost + load)
        }
        fn aggregate(&self, c: &[Candidate]) -> Result<f64, PolicyError> {
            Ok(c.iter().filter(|c| c.up).map(|c| c.load).sum())
        }
    }

    struct Broken;
    impl CostModel for Broken {
        fn name(&self) -> &str {
            "broken"
        }
        fn cost(&self, _: f64, _: f64) -> Result<f64, PolicyError> {
            Err(PolicyError::Timeout)
        }
        fn aggregate(&self, _: &[Candidate]) -> Result<f64, PolicyError> {
            Ok(f64::NAN)
        }
    }

    #[test]
    fn cheapest_by_f_is_first_and_g_is_advertised() {
        let mut t = table_with(&[0.5, 0.2, 0.7], &[0.0, 0.0, 0.0]);
        let u = t.compute(Instant::ZERO, &SumCost);
        assert_eq!(u.changed.len(), 1);
        let r = &u.changed[0];
        assert_eq!(r.best().unwrap().addr, addr(1));
        let order: Vec<IpAddr> = r.candidates.iter().map(|c| c.addr).collect();
        assert_eq!(order, vec![addr(1), addr(0), addr(2)]);
        assert_eq!(u.advertisement.len(), 1);
        assert!((u.advertisement[0].load - 0.2).abs() < 1e-6);
        assert_eq!(t.best(&vip_subnet()), Some(addr(1)));
    }

    #[test]
    fn the_installed_cost_model_decides() {
        // Peer 0 is busier but nearer: the sum prefers peer 1, route-first F peer 0.
        let mut t = table_with(&[0.6, 0.1], &[0.0, 0.2]);
        let u = t.compute(Instant::ZERO, &SumCost);
        assert_eq!(u.changed[0].best().unwrap().addr, addr(1));
        let u = t.compute(Instant::ZERO, &RouteFirst);
        assert_eq!(u.changed[0].best().unwrap().addr, addr(0));
        assert_eq!(
            u.changed[0].costs,
            vec![0.6000000238418579, 20.100000001490116]
        );
        // G of route-first is the sum of loads.
        assert!((u.advertisement[0].load - 0.7).abs() < 1e-6);
    }

    #[test]
    fn model_faults_fall_back_and_are_counted() {
        let mut t = table_with(&[0.5, 0.2], &[0.0, 0.0]);
        let u = t.compute(Instant::ZERO, &Broken);
        assert_eq!(u.changed[0].best().unwrap().addr, addr(1));
        assert!((u.advertisement[0].load - 0.2).abs() < 1e-6);
        assert_eq!(t.stats().cost_faults, 2);
        assert_eq!(t.stats().aggregate_faults, 1);
    }

    #[test]
    fn unchanged_lists_are_not_pushed_again() {
        let mut t = table_with(&[0.5, 0.2], &[0.0, 0.0]);
        assert_eq!(t.compute(Instant::ZERO, &SumCost).changed.len(), 1);
        let u = t.compute(Instant::from_millis(500), &SumCost);
        assert!(u.changed.is_empty());
        // The advertisement is periodic soft state: always sent.
        assert_eq!(u.advertisement.len(), 1);
        t.handle_update(
            Instant::from_millis(600),
            &name(0),
            Epoch(1),
            &update(2, 0.1),
        )
        .unwrap();
        let u = t.compute(Instant::from_millis(1000), &SumCost);
        assert_eq!(u.changed[0].best().unwrap().addr, addr(0));
    }

    #[test]
    fn down_peers_are_not_up_and_old_sessions_are_ignored() {
        let mut t = table_with(&[0.1, 0.2], &[0.0, 0.0]);
        // A down report of an older session must not take the live one down.
        assert_eq!(
            t.peer_down(&name(0), Epoch(99)),
            Err(Ignored::StaleEpoch {
                current: Some(Epoch(1)),
                got: Epoch(99)
            })
        );
        assert_eq!(t.stats().downs_stale_epoch, 1);
        t.peer_down(&name(0), Epoch(1)).unwrap();
        let u = t.compute(Instant::ZERO, &SumCost);
        let r = &u.changed[0];
        assert_eq!(r.best().unwrap().addr, addr(1));
        assert!(!r.candidates.iter().find(|c| c.addr == addr(0)).unwrap().up);
        // Updates of the dead session are ignored.
        assert_eq!(
            t.handle_update(Instant::ZERO, &name(0), Epoch(1), &update(9, 0.0)),
            Err(Ignored::PeerDown)
        );
        // It re-registers with a new epoch; a late update of the old one is stale.
        t.register(&name(0), addr(0), 0.0, Epoch(7)).unwrap();
        assert!(matches!(
            t.handle_update(Instant::ZERO, &name(0), Epoch(1), &update(10, 0.0)),
            Err(Ignored::StaleEpoch { .. })
        ));
        assert_eq!(t.stats().updates_stale_epoch, 1);
        assert_eq!(t.reported_load(&name(0), &vip_subnet()), Some(0.1));
        t.handle_update(Instant::ZERO, &name(0), Epoch(7), &update(1, 0.05))
            .unwrap();
        assert_eq!(t.peer(&name(0)).unwrap().last_seq, Some(1));
        let u = t.compute(Instant::ZERO, &SumCost);
        assert_eq!(u.changed[0].best().unwrap().addr, addr(0));
        assert_eq!(
            t.handle_update(Instant::ZERO, &name(5), Epoch(1), &update(1, 0.0)),
            Err(Ignored::UnknownPeer)
        );
    }

    #[test]
    fn reports_expire_and_subnets_are_withdrawn() {
        let mut t = table_with(&[0.1, 0.2], &[0.0, 0.0]);
        t.compute(Instant::ZERO, &SumCost);
        t.handle_update(Instant::from_secs(2), &name(1), Epoch(2), &update(2, 0.3))
            .unwrap();
        let u = t.compute(Instant::from_millis(2500), &SumCost);
        let r = &u.changed[0];
        assert_eq!(r.candidates.len(), 1);
        assert_eq!(r.best().unwrap().addr, addr(1));
        assert_eq!(t.stats().reports_expired, 1);
        let u = t.compute(Instant::from_secs(5), &SumCost);
        assert_eq!(u.withdrawn, vec![vip_subnet()]);
        assert!(u.advertisement.is_empty());
        assert_eq!(t.subnet_count(), 0);
    }

    #[test]
    fn down_peer_without_reports_is_forgotten() {
        let mut t = table_with(&[0.1], &[0.0]);
        t.peer_down(&name(0), Epoch(1)).unwrap();
        let u = t.compute(Instant::ZERO, &SumCost);
        assert!(
            u.advertisement.is_empty(),
            "no usable next hop: nothing to advertise"
        );
        assert_eq!(u.changed[0].aggregate, None);
        t.compute(Instant::from_secs(3), &SumCost);
        assert_eq!(t.peer_count(), 0);
    }

    #[test]
    fn bounds_refuse_and_count() {
        let mut t = NextHopTable::new(
            TableConfig {
                max_peers: 2,
                max_subnets: 3,
                ..cfg()
            },
            Instant::ZERO,
        );
        t.register(&name(0), addr(0), 0.0, Epoch(1)).unwrap();
        t.register(&name(1), addr(1), 0.0, Epoch(2)).unwrap();
        assert_eq!(
            t.register(&name(2), addr(2), 0.0, Epoch(3)),
            Err(TableError::PeersFull { limit: 2 })
        );
        assert!(matches!(
            t.register(&name(0), addr(0), f64::NAN, Epoch(1)),
            Err(TableError::BadRouteCost { .. })
        ));
        let subnets = (0..5u8)
            .map(|i| SubnetLoad {
                subnet: SubnetPrefix::new(IpAddr::V4(Ipv4Addr::new(192, 200, i, 0)), 24).unwrap(),
                load: if i == 4 { -1.0 } else { 0.5 },
            })
            .collect();
        let r = t
            .handle_update(
                Instant::ZERO,
                &name(0),
                Epoch(1),
                &StateUpdate { seq: 1, subnets },
            )
            .unwrap();
        assert_eq!(
            r,
            UpdateReport {
                accepted: 3,
                refused: 2
            }
        );
        assert_eq!(t.stats().subnets_refused, 1);
        assert_eq!(t.stats().invalid_loads, 1);
        assert_eq!(t.stats().peers_refused, 1);
    }

    #[test]
    fn advertisement_is_chunked_to_the_message_limit() {
        let mut t = NextHopTable::new(
            TableConfig {
                max_subnets: 5000,
                ..cfg()
            },
            Instant::ZERO,
        );
        t.register(&name(0), addr(0), 0.0, Epoch(1)).unwrap();
        let all: Vec<SubnetLoad> = (0..2500u32)
            .map(|i| SubnetLoad {
                subnet: SubnetPrefix::new(IpAddr::V4(Ipv4Addr::from(0xC0C8_0000 + (i << 8))), 24)
                    .unwrap(),
                load: 0.25,
            })
            .collect();
        for (seq, chunk) in all.chunks(MAX_SUBNETS_PER_UPDATE).enumerate() {
            t.handle_update(
                Instant::ZERO,
                &name(0),
                Epoch(1),
                &StateUpdate {
                    seq: seq as u64,
                    subnets: chunk.to_vec(),
                },
            )
            .unwrap();
        }
        let u = t.compute(Instant::ZERO, &SumCost);
        let sizes: Vec<usize> = u
            .advertisement_messages()
            .map(|m| match m {
                Outgoing::StateUpdate { subnets } => subnets.len(),
                _ => 0,
            })
            .collect();
        assert_eq!(sizes, vec![1024, 1024, 452]);
    }

    fn engine() -> Engine {
        Engine::new(EngineConfig {
            level: Level::Site,
            local_v4: Some(Ipv4Addr::new(10, 0, 0, 1)),
            flows: FlowConfig {
                capacity_v4: 64,
                capacity_v6: 8,
                max_next_hops: 16,
                ..FlowConfig::default()
            },
            max_subnets: 16,
            ..EngineConfig::default()
        })
    }

    fn send(e: &mut Engine, src_port: u16, flags: TcpFlags, now: Instant) -> Verdict {
        let spec = PacketSpec::tcp(
            SocketAddr::new("198.51.100.7".parse().unwrap(), src_port),
            SocketAddr::new("192.200.3.4".parse().unwrap(), 80),
            flags,
        );
        let mut buf = vec![0u8; HEADROOM + 128];
        let n = spec.write(&mut buf[HEADROOM..]).unwrap();
        let mut pkt = PacketBuf::new(&mut buf, HEADROOM, n).unwrap();
        e.process(&mut pkt, now)
    }

    fn next_hop(v: Verdict) -> IpAddr {
        match v {
            Verdict::Forward { next_hop, .. } => next_hop,
            other => panic!("expected forward, got {other:?}"),
        }
    }

    #[test]
    fn new_flows_follow_the_table_and_pinned_flows_never_move() {
        let mut t = table_with(&[0.5, 0.2], &[0.0, 0.0]);
        let mut e = engine();
        let follow: Arc<dyn Policy> = Arc::new(FollowTable);
        let rep = t
            .compute(Instant::ZERO, &SumCost)
            .apply(&mut e, Some(&follow));
        assert_eq!(rep.installed, 1);
        let now = Instant::from_millis(1);
        assert_eq!(next_hop(send(&mut e, 1000, TcpFlags::SYN, now)), addr(1));
        // Peer 1 gets busy: the table moves new flows to peer 0.
        t.handle_update(now, &name(1), Epoch(2), &update(2, 0.9))
            .unwrap();
        let rep = t
            .compute(Instant::from_millis(500), &SumCost)
            .apply(&mut e, Some(&follow));
        assert_eq!(rep.installed, 1);
        let later = Instant::from_millis(501);
        assert_eq!(next_hop(send(&mut e, 1001, TcpFlags::SYN, later)), addr(0));
        // The established flow stays where it was pinned.
        assert_eq!(next_hop(send(&mut e, 1000, TcpFlags::ACK, later)), addr(1));
        // Withdrawal stops new flows for the subnet but not the pinned ones.
        let rep = t
            .compute(Instant::from_secs(10), &SumCost)
            .apply(&mut e, Some(&follow));
        assert_eq!(rep.withdrawn, 1);
        let end = Instant::from_secs(10);
        assert_eq!(
            send(&mut e, 1002, TcpFlags::SYN, end),
            Verdict::Drop(router_core::DropReason::NotServed)
        );
        assert_eq!(next_hop(send(&mut e, 1000, TcpFlags::ACK, end)), addr(1));
    }

    #[test]
    fn follow_table_picks_the_first_usable() {
        let req = FlowRequest {
            key: router_core::FlowKey {
                proto: 6,
                src: addr(0),
                src_port: 1,
                dst: addr(1),
                dst_port: 2,
            },
            subnet: router_core::SubnetId(0),
            level: Level::Site,
        };
        let c = |up| Candidate {
            addr: addr(0),
            load: 0.0,
            route_cost: 0.0,
            up,
        };
        assert_eq!(
            FollowTable.select(&req, &[c(false), c(true)]),
            Ok(Decision::Select(1))
        );
        assert_eq!(FollowTable.select(&req, &[c(false)]), Ok(Decision::Reject));
    }

    proptest! {
        #[test]
        fn table_matches_a_brute_force_argmin(
            peers in proptest::collection::vec((0.0f32..2.0, 0.0f64..2.0, any::<bool>()), 1..12),
        ) {
            let loads: Vec<f32> = peers.iter().map(|p| p.0).collect();
            let costs: Vec<f64> = peers.iter().map(|p| p.1).collect();
            let mut t = table_with(&loads, &costs);
            for (i, p) in peers.iter().enumerate() {
                if !p.2 {
                    t.peer_down(&name(i), Epoch(i as u64 + 1)).unwrap();
                }
            }
            let u = t.compute(Instant::ZERO, &SumCost);
            let r = &u.changed[0];
            // Every reporting peer appears exactly once, in non-decreasing F order.
            prop_assert_eq!(r.candidates.len(), peers.len());
            prop_assert!(r.costs.windows(2).all(|w| w[0] <= w[1]));
            let want = peers
                .iter()
                .enumerate()
                .filter(|(_, p)| p.2)
                .map(|(i, p)| (f64::from(p.0) + p.1, addr(i)))
                .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            prop_assert_eq!(r.best().map(|c| c.addr), want.map(|w| w.1));
            let g = peers
                .iter()
                .filter(|p| p.2)
                .map(|p| f64::from(p.0))
                .fold(f64::INFINITY, f64::min);
            match u.advertisement.first() {
                Some(a) => prop_assert!((f64::from(a.load) - g).abs() < 1e-6),
                None => prop_assert!(g.is_infinite()),
            }
            for (c, m) in r.candidates.iter().zip(&r.costs) {
                prop_assert_eq!(c.up, m.is_finite());
            }
        }

        #[test]
        fn only_the_current_session_moves_the_table(
            ops in proptest::collection::vec((0usize..3, 0u64..4, 0.0f32..1.0, any::<bool>()), 1..40),
        ) {
            // Model: per peer, the current epoch and the last load accepted from it.
            let mut t = NextHopTable::new(cfg(), Instant::ZERO);
            let mut model: Vec<(u64, Option<f32>, bool)> = vec![(0, None, true); 3];
            for i in 0..3 {
                t.register(&name(i), addr(i), 0.0, Epoch(0)).unwrap();
            }
            for (seq, (peer, epoch, load, reregister)) in ops.into_iter().enumerate() {
                if reregister {
                    t.register(&name(peer), addr(peer), 0.0, Epoch(epoch)).unwrap();
                    model[peer].0 = epoch;
                    model[peer].2 = true;
                    continue;
                }
                let res = t.handle_update(Instant::ZERO, &name(peer), Epoch(epoch),
                    &update(seq as u64, load));
                let current = model[peer].0 == epoch;
                prop_assert_eq!(res.is_ok(), current);
                if current {
                    model[peer].1 = Some(load);
                }
            }
            for (i, m) in model.iter().enumerate() {
                prop_assert_eq!(t.reported_load(&name(i), &vip_subnet()), m.1);
            }
        }
    }
}
