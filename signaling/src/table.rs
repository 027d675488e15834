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
            // A model bound to the subnet, else the router's.
            let cost = cost.for_subnet(prefix.addr(), prefix.len()).unwrap_or(cost);
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
mod tests;
