//! The control side of one SLR (DESIGN.md §3-4): its signalling sessions, its
//! next-hop table, and shortcuts.
//!
//! [`SlrControl`] is sans-IO and does not own sessions: the shell (TLS sessions in
//! the daemon, [`crate::Peer`] pairs in a simulator) hands it each
//! [`PeerEvent`] tagged with a [`SessionId`] and carries out the [`SlrAction`]s it
//! returns. It drives the forwarding engine only through [`RouterApi`]:
//!
//! - registrations, state updates and downs of lower-level peers feed the
//!   [`NextHopTable`]; each due computation pushes changed candidate lists into the
//!   engine (new flows follow the table, pinned flows never move) and advertises
//!   `M_k` to the upper level;
//! - shortcuts: a site SLR reports each flow it pins to a server
//!   ([`SlrControl::flow_pinned`]) as a tunnel object upstream. Each upper level
//!   checks that it had pinned that flow to the sender (so a site cannot redirect
//!   flows it was never given), re-pins it straight to the server, and relays it
//!   further up; an SLR that programs its cluster's tunnel entry routers also hands
//!   it out as [`SlrAction::ProgramEntry`], so later packets bypass every SLR;
//! - recovery (DESIGN.md §5, [`crate::recovery`]): [`SlrControl::recover`] asks
//!   the upper level and the configured same-level neighbours WHOHAS for a flow
//!   without state, answers their queries, and installs only checked answers;
//!   [`SlrControl::handle_advert`] applies authenticated server flow
//!   advertisements; registrations of this SLR's hot spare are reported as
//!   [`SlrAction::SpareRegistered`] for the shell's [`crate::MirrorSender`].
//!
//! Sessions: the shell reports each session it accepted with
//! [`SlrControl::add_downstream`] (its role is learnt at registration: a lower
//! level, a listed same-level neighbour, or a listed spare), the session it
//! dialled to the upper level with [`SlrControl::set_upstream`], and each
//! session it dialled to a neighbour SLR with [`SlrControl::add_neighbour`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;

use router_core::api::{ApiError, RouterApi};
use router_core::classify::{FlowKey, VirtualSubnet};
use router_core::policy::{CostModel, Level, Policy};
use router_core::time::Instant;
use tracing::{debug, warn};

use router_core::wire::flowad::AdvertFields;

use crate::message::{Epoch, NodeName, Role, SubnetLoad, SubnetPrefix, TunnelObject};
use crate::peer::{Outgoing, PeerEvent};
use crate::recovery::advert::{AdvertOutcome, AdvertRefusal, handle_advert};
use crate::recovery::whohas::{
    MAX_LOCAL_ADDRS, MAX_NEIGHBOURS, MAX_SPARES, RecoverOutcome, Recovery, RecoveryConfig,
    RecoveryScope, RecoveryStats,
};
use crate::table::{FollowTable, NextHopTable, TableConfig, TableError};

/// The shell's name for one signalling session (unique per session, never reused
/// while the session lives).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

/// Configuration of an SLR's control side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlrConfig {
    /// This router's level.
    pub level: Level,
    /// Table timers and bounds.
    pub table: TableConfig,
    /// Originate a tunnel object for every flow pinned to a server (site level).
    pub shortcuts: bool,
    /// This SLR programs its cluster's tunnel entry routers with every shortcut it
    /// accepts or originates.
    pub entry_routers: bool,
    /// Most lower-level sessions at once.
    pub max_downstream: usize,
    /// WHOHAS limits (who may be asked is in [`RecoveryScope`]).
    pub recovery: RecoveryConfig,
}

impl SlrConfig {
    /// Defaults for a router at `level`: shortcuts on at the site level.
    pub fn new(level: Level) -> Self {
        Self {
            level,
            table: TableConfig::default(),
            shortcuts: level == Level::Site,
            entry_routers: false,
            max_downstream: 1024,
            recovery: RecoveryConfig::default(),
        }
    }
}

/// What the shell must do for the control side.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SlrAction {
    /// Send `message` on `session`.
    Send {
        /// The session.
        session: SessionId,
        /// The message.
        message: Outgoing,
    },
    /// End `session` (a peer that may not register here).
    Close {
        /// The session.
        session: SessionId,
    },
    /// Install this shortcut in the cluster's tunnel entry routers (e.g. with
    /// [`install_shortcut`], checking the flow is pinned to this SLR).
    ProgramEntry(TunnelObject),
    /// The next hop at `addr` went down. Flows pinned to it that have only shown a
    /// SYN hold no server state yet: the shell should unpin them (the engine's
    /// flow table is not reachable through [`RouterApi`]) so that the client's
    /// retransmitted SYN is placed anew instead of following the dead path until
    /// the SYN timeout. Established flows stay pinned: with a shortcut their
    /// server may well still be reachable.
    NextHopDown {
        /// The tunnel endpoint that went down.
        addr: IpAddr,
    },
    /// A WHOHAS answer re-created the state of `key` here (pinned to
    /// `next_hop`): the client's next packet follows it. For logs and figures.
    FlowRecovered {
        /// The flow.
        key: FlowKey,
        /// Where it is pinned now.
        next_hop: IpAddr,
    },
    /// A listed spare registered (or re-registered) on `session`: call
    /// [`crate::MirrorSender::spare_registered`] (a full resync follows).
    SpareRegistered {
        /// The session.
        session: SessionId,
        /// The spare's name.
        name: NodeName,
    },
    /// The spare on `session` went away: call [`crate::MirrorSender::spare_down`].
    SpareDown {
        /// The session.
        session: SessionId,
    },
}

/// Why a configuration call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SlrError {
    /// Too many lower-level sessions.
    #[error("{limit} lower-level sessions already open")]
    TooManySessions {
        /// The bound.
        limit: usize,
    },
    /// The session id is already in use.
    #[error("session {} already known", id.0)]
    DuplicateSession {
        /// The id.
        id: SessionId,
    },
    /// A route cost must be finite and non-negative.
    #[error("route cost must be finite and non-negative")]
    BadRouteCost,
    /// A recovery scope list is longer than its bound.
    #[error("recovery scope lists {count} {what}; at most {limit}")]
    ScopeTooLarge {
        /// Which list.
        what: &'static str,
        /// Its length.
        count: usize,
        /// The bound.
        limit: usize,
    },
}

/// Why a tunnel object was not installed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShortcutError {
    /// No pinned flow with that key here (expired, or never routed through us).
    #[error("no pinned flow {key}")]
    UnknownFlow {
        /// The flow.
        key: FlowKey,
    },
    /// The flow is pinned to someone other than the sender: refusing lets no next
    /// hop redirect flows it was never given.
    #[error("flow {key} is pinned to {pinned}, not to the sender {sender}")]
    NotPinnedToSender {
        /// The flow.
        key: FlowKey,
        /// Where it is pinned.
        pinned: IpAddr,
        /// Who sent the tunnel object.
        sender: IpAddr,
    },
    /// The engine refused the entry.
    #[error("engine refused the shortcut: {0}")]
    Engine(#[source] ApiError),
}

/// Re-pins the flow of `obj` straight to its server, if it is currently pinned to
/// `sender` (the tunnel endpoint the object came from). Idempotent.
pub fn install_shortcut<A: RouterApi + ?Sized>(
    api: &mut A,
    obj: &TunnelObject,
    sender: IpAddr,
    now: Instant,
) -> Result<(), ShortcutError> {
    let Some(mut entry) = api.lookup_flow(&obj.key, now) else {
        return Err(ShortcutError::UnknownFlow { key: obj.key });
    };
    if entry.next_hop == obj.server {
        return Ok(());
    }
    if entry.next_hop != sender {
        return Err(ShortcutError::NotPinnedToSender {
            key: obj.key,
            pinned: entry.next_hop,
            sender,
        });
    }
    entry.next_hop = obj.server;
    api.install_flow(&entry, now)
        .map(|_| ())
        .map_err(ShortcutError::Engine)
}

/// Counters of the control side; every refused or ignored input has one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlrStats {
    /// Lower-level peers registered.
    pub registrations: u64,
    /// Registrations refused: wrong role for this level.
    pub unexpected_roles: u64,
    /// Registrations refused: the table is full.
    pub table_full: u64,
    /// Table computations applied to the engine.
    pub table_updates: u64,
    /// Subnets the engine refused.
    pub engine_refusals: u64,
    /// State update messages queued upward.
    pub advertisements: u64,
    /// State updates the table ignored (old session, peer down, unknown).
    pub updates_ignored: u64,
    /// Tunnel objects originated (flows pinned to a server here).
    pub shortcuts_originated: u64,
    /// Tunnel objects from below installed in the engine.
    pub shortcuts_installed: u64,
    /// Tunnel objects from below refused (unknown flow, not pinned to the sender,
    /// unregistered sender, engine refusal).
    pub shortcuts_refused: u64,
    /// Tunnel objects queued upward.
    pub shortcuts_relayed: u64,
    /// Tunnel objects handed to the cluster's entry routers.
    pub shortcuts_to_entry: u64,
    /// Tunnel objects that could go nowhere (upstream not registered, no entry
    /// routers).
    pub shortcuts_unsent: u64,
    /// Events ignored (messages this level does not act on, unknown sessions).
    pub ignored_events: u64,
    /// Policy installs that failed during a hot swap.
    pub policy_refusals: u64,
}

#[derive(Debug)]
struct Downstream {
    addr: IpAddr,
    route_cost: f64,
    registered: Option<(NodeName, Epoch)>,
}

/// A session with a same-level SLR (WHOHAS only).
#[derive(Debug)]
struct Neighbour {
    /// Set once it registered with a listed name.
    name: Option<NodeName>,
}

#[derive(Debug, Clone, Copy)]
struct Upstream {
    session: SessionId,
    registered: bool,
}

/// The control side of one SLR.
#[derive(Debug)]
pub struct SlrControl {
    cfg: SlrConfig,
    table: NextHopTable,
    cost: Arc<dyn CostModel>,
    policy: Arc<dyn Policy>,
    downstream: BTreeMap<SessionId, Downstream>,
    upstream: Option<Upstream>,
    installed: BTreeSet<SubnetPrefix>,
    advertisement: Vec<SubnetLoad>,
    actions: VecDeque<SlrAction>,
    stats: SlrStats,
    neighbours: BTreeMap<SessionId, Neighbour>,
    spares: BTreeMap<SessionId, NodeName>,
    recovery: Recovery,
}

impl SlrControl {
    /// A control side with cost model `cost` (F and G), whose new subnets follow
    /// the table ([`FollowTable`]) until [`SlrControl::set_policy`].
    pub fn new(cfg: SlrConfig, cost: Arc<dyn CostModel>, now: Instant) -> Self {
        Self {
            table: NextHopTable::new(cfg.table, now),
            cfg,
            cost,
            policy: Arc::new(FollowTable),
            downstream: BTreeMap::new(),
            upstream: None,
            installed: BTreeSet::new(),
            advertisement: Vec::new(),
            actions: VecDeque::new(),
            stats: SlrStats::default(),
            neighbours: BTreeMap::new(),
            spares: BTreeMap::new(),
            recovery: Recovery::new(cfg.recovery, now),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SlrConfig {
        &self.cfg
    }

    /// The lower level registering here is expected to have this role.
    pub fn expected_downstream_role(&self) -> Role {
        match self.cfg.level {
            Level::Network => Role::System,
            Level::System => Role::Site,
            Level::Site => Role::Host,
        }
    }

    /// A lower-level session was accepted from tunnel endpoint `addr`, reached at
    /// `route_cost`; it joins the table once its peer registers.
    pub fn add_downstream(
        &mut self,
        session: SessionId,
        addr: IpAddr,
        route_cost: f64,
    ) -> Result<(), SlrError> {
        if !route_cost.is_finite() || route_cost < 0.0 {
            return Err(SlrError::BadRouteCost);
        }
        if self.downstream.contains_key(&session) {
            return Err(SlrError::DuplicateSession { id: session });
        }
        if self.downstream.len() >= self.cfg.max_downstream {
            return Err(SlrError::TooManySessions {
                limit: self.cfg.max_downstream,
            });
        }
        self.downstream.insert(
            session,
            Downstream {
                addr,
                route_cost,
                registered: None,
            },
        );
        Ok(())
    }

    /// The session to the upper level (a new one after each reconnect), or `None`.
    pub fn set_upstream(&mut self, session: Option<SessionId>) {
        self.upstream = session.map(|session| Upstream {
            session,
            registered: false,
        });
    }

    /// Whether the session to the upper level is registered.
    pub fn upstream_registered(&self) -> bool {
        self.upstream.is_some_and(|u| u.registered)
    }

    /// Sets who recovery talks to (neighbours, spares), this router's own
    /// addresses and the query-id secret. Sessions already registered keep
    /// their standing until they re-register.
    pub fn set_recovery_scope(&mut self, scope: RecoveryScope) -> Result<(), SlrError> {
        for (what, count, limit) in [
            ("neighbours", scope.neighbours.len(), MAX_NEIGHBOURS),
            ("spares", scope.spares.len(), MAX_SPARES),
            ("local addresses", scope.local_addrs.len(), MAX_LOCAL_ADDRS),
        ] {
            if count > limit {
                return Err(SlrError::ScopeTooLarge { what, count, limit });
            }
        }
        self.recovery.set_scope(scope);
        Ok(())
    }

    /// Who recovery talks to.
    pub fn recovery_scope(&self) -> &RecoveryScope {
        &self.recovery.scope
    }

    /// Adds one of this router's own addresses (e.g. the primary's, after a
    /// takeover). Ignored beyond [`MAX_LOCAL_ADDRS`] (returns false).
    pub fn add_local_addr(&mut self, addr: IpAddr) -> bool {
        let local = &mut self.recovery.scope.local_addrs;
        if local.contains(&addr) {
            return true;
        }
        if local.len() >= MAX_LOCAL_ADDRS {
            return false;
        }
        local.push(addr);
        true
    }

    /// A session this router dialled to a same-level SLR; it becomes a
    /// neighbour when it registers with a listed name, our level and role.
    pub fn add_neighbour(&mut self, session: SessionId) -> Result<(), SlrError> {
        if self.neighbours.contains_key(&session)
            || self.downstream.contains_key(&session)
            || self.spares.contains_key(&session)
            || self.upstream.is_some_and(|u| u.session == session)
        {
            return Err(SlrError::DuplicateSession { id: session });
        }
        if self.neighbours.len() >= self.cfg.max_downstream {
            return Err(SlrError::TooManySessions {
                limit: self.cfg.max_downstream,
            });
        }
        self.neighbours.insert(session, Neighbour { name: None });
        Ok(())
    }

    /// Registered neighbour sessions and their names.
    pub fn neighbour_sessions(&self) -> impl Iterator<Item = (SessionId, &NodeName)> {
        self.neighbours
            .iter()
            .filter_map(|(s, n)| n.name.as_ref().map(|n| (*s, n)))
    }

    /// Registered spare sessions and their names.
    pub fn spare_sessions(&self) -> impl Iterator<Item = (SessionId, &NodeName)> {
        self.spares.iter().map(|(s, n)| (*s, n))
    }

    /// A mid-connection packet of `key` found no state here (`Verdict::Recover`):
    /// ask the upper level and every registered neighbour WHOHAS, within the
    /// rate limit, one query per flow. The packet itself stays the shell's (an
    /// SLR drops it: the client retransmits once the state is back).
    pub fn recover<A: RouterApi + ?Sized>(
        &mut self,
        key: FlowKey,
        now: Instant,
        api: &A,
    ) -> RecoverOutcome {
        let mut scope: Vec<SessionId> = self
            .upstream
            .filter(|u| u.registered)
            .map(|u| u.session)
            .into_iter()
            .collect();
        scope.extend(self.neighbour_sessions().map(|(s, _)| s));
        match self.recovery.start(key, now, api, &scope) {
            Ok(q) => {
                for session in &scope {
                    self.actions.push_back(SlrAction::Send {
                        session: *session,
                        message: Outgoing::WhoHas(q),
                    });
                }
                RecoverOutcome::Queried {
                    query_id: q.query_id,
                    asked: scope.len(),
                }
            }
            Err(outcome) => outcome,
        }
    }

    /// Applies an authenticated server flow advertisement (see
    /// [`handle_advert`]) with the subnets this SLR's table serves and its own
    /// addresses; counted in [`SlrControl::recovery_stats`].
    pub fn handle_advert<A: RouterApi + ?Sized>(
        &mut self,
        now: Instant,
        fields: &AdvertFields,
        api: &mut A,
    ) -> AdvertOutcome {
        let served = self.installed.iter().any(|p| p.contains(fields.key.dst));
        self.handle_advert_in(now, fields, served, api)
    }

    /// As [`SlrControl::handle_advert`], with the shell saying whether the VIP
    /// is served (e.g. `engine.subnet_for(vip).is_some()`, which also covers
    /// statically configured subnets the table does not know).
    pub fn handle_advert_in<A: RouterApi + ?Sized>(
        &mut self,
        now: Instant,
        fields: &AdvertFields,
        served: bool,
        api: &mut A,
    ) -> AdvertOutcome {
        let out = handle_advert(
            api,
            fields,
            |_| served,
            &self.recovery.scope.local_addrs,
            self.cfg.level,
            now,
        );
        let st = &mut self.recovery.stats;
        match &out {
            AdvertOutcome::Installed => st.adverts_installed += 1,
            AdvertOutcome::Current => st.adverts_current += 1,
            AdvertOutcome::Relay { .. } => st.adverts_relayed += 1,
            AdvertOutcome::Rejected(AdvertRefusal::NotServed) => st.adverts_not_served += 1,
            AdvertOutcome::Rejected(AdvertRefusal::Engine(_)) => st.adverts_engine_refused += 1,
            AdvertOutcome::Rejected(_) => st.adverts_bad_server += 1,
        }
        debug!(key = %fields.key, server = %fields.server, outcome = ?out, "flow advertisement");
        out
    }

    /// WHOHAS queries outstanding.
    pub fn pending_queries(&self) -> usize {
        self.recovery.pending()
    }

    /// Recovery counters.
    pub fn recovery_stats(&self) -> &RecoveryStats {
        &self.recovery.stats
    }

    /// The engine pinned a new flow to `server` (this router is at the site level):
    /// originate the shortcut.
    pub fn flow_pinned(&mut self, key: FlowKey, server: IpAddr) {
        if !self.cfg.shortcuts {
            return;
        }
        self.stats.shortcuts_originated += 1;
        self.pass_on(TunnelObject { key, server });
    }

    /// Relays a shortcut upward and to the entry routers, as configured.
    fn pass_on(&mut self, obj: TunnelObject) {
        let mut sent = false;
        if let Some(up) = self.upstream.filter(|u| u.registered) {
            self.actions.push_back(SlrAction::Send {
                session: up.session,
                message: Outgoing::TunnelObject(obj),
            });
            self.stats.shortcuts_relayed += 1;
            sent = true;
        }
        if self.cfg.entry_routers {
            self.actions.push_back(SlrAction::ProgramEntry(obj));
            self.stats.shortcuts_to_entry += 1;
            sent = true;
        }
        if !sent {
            self.stats.shortcuts_unsent += 1;
        }
    }

    /// When [`SlrControl::handle_timeout`] must next run.
    #[must_use]
    pub fn poll_timeout(&self) -> Instant {
        let table = self.table.poll_timeout();
        self.recovery
            .next_deadline()
            .map_or(table, |d| d.min(table))
    }

    /// Runs the table computation when due: pushes changes into the engine and
    /// queues the advertisement upward.
    pub fn handle_timeout<A: RouterApi + ?Sized>(&mut self, now: Instant, api: &mut A) {
        self.recovery.expire(now);
        let Some(update) = self.table.handle_timeout(now, &*self.cost) else {
            return;
        };
        self.stats.table_updates += 1;
        let report = update.apply(api, Some(&self.policy));
        for route in &update.changed {
            self.installed.insert(route.subnet);
        }
        for (subnet, _) in &report.refused {
            self.stats.engine_refusals += 1;
            self.installed.remove(subnet);
            self.table.forget_installed(subnet);
        }
        for subnet in &update.withdrawn {
            self.installed.remove(subnet);
        }
        self.advertisement = update.advertisement;
        if let Some(up) = self.upstream.filter(|u| u.registered) {
            self.advertise(up.session);
        }
    }

    fn advertise(&mut self, session: SessionId) {
        for chunk in self
            .advertisement
            .chunks(crate::message::MAX_SUBNETS_PER_UPDATE)
        {
            self.actions.push_back(SlrAction::Send {
                session,
                message: Outgoing::StateUpdate {
                    subnets: chunk.to_vec(),
                },
            });
            self.stats.advertisements += 1;
        }
    }

    /// The next action for the shell.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<SlrAction> {
        self.actions.pop_front()
    }

    /// Hot-swaps the policy of every served subnet (and of subnets added later).
    /// Pinned flows keep their next hops. Returns the subnets switched.
    pub fn set_policy<A: RouterApi + ?Sized>(
        &mut self,
        policy: Arc<dyn Policy>,
        api: &mut A,
    ) -> usize {
        self.policy = policy;
        let mut switched = 0;
        for subnet in &self.installed {
            let res = VirtualSubnet::try_from(*subnet)
                .map_err(ApiError::from)
                .and_then(|vs| api.add_subnet(vs))
                .and_then(|id| api.set_policy(id, Some(self.policy.clone())));
            match res {
                Ok(()) => switched += 1,
                Err(e) => {
                    self.stats.policy_refusals += 1;
                    warn!(%subnet, error = %e, "policy swap refused for a subnet");
                }
            }
        }
        switched
    }

    /// The policy new subnets get.
    pub fn policy(&self) -> &Arc<dyn Policy> {
        &self.policy
    }

    /// Replaces F and G from the next computation on.
    pub fn set_cost_model(&mut self, cost: Arc<dyn CostModel>) {
        self.cost = cost;
    }

    /// F and G (for a subnet's own model, ask [`CostModel::for_subnet`]).
    pub fn cost_model(&self) -> &dyn CostModel {
        &*self.cost
    }

    /// Subnets currently pushed into the engine.
    pub fn served_subnets(&self) -> impl Iterator<Item = &SubnetPrefix> {
        self.installed.iter()
    }

    /// The next-hop table.
    pub fn table(&self) -> &NextHopTable {
        &self.table
    }

    /// The next-hop table, for configuration (route costs).
    pub fn table_mut(&mut self) -> &mut NextHopTable {
        &mut self.table
    }

    /// The lower-level peer registered on `session`, if any.
    pub fn downstream_peer(&self, session: SessionId) -> Option<&NodeName> {
        self.downstream
            .get(&session)
            .and_then(|d| d.registered.as_ref())
            .map(|(n, _)| n)
    }

    /// Counters.
    pub fn stats(&self) -> &SlrStats {
        &self.stats
    }
}

mod sessions;

#[cfg(test)]
mod tests;
