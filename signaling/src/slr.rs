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

    /// Handles one event of `session`.
    pub fn handle_event<A: RouterApi + ?Sized>(
        &mut self,
        now: Instant,
        session: SessionId,
        event: PeerEvent,
        api: &mut A,
    ) {
        if self.upstream.is_some_and(|up| up.session == session) {
            self.upstream_event(now, session, event, api);
        } else if self.neighbours.contains_key(&session) {
            self.neighbour_event(now, session, event, api);
        } else if self.spares.contains_key(&session) {
            self.spare_event(session, event);
        } else if let PeerEvent::Registered {
            identity,
            level,
            role,
            epoch,
        } = event
        {
            self.downstream_registered(session, identity, level, role, epoch);
        } else {
            self.downstream_event(now, session, event, api);
        }
    }

    /// An event of the session to the upper level.
    fn upstream_event<A: RouterApi + ?Sized>(
        &mut self,
        now: Instant,
        session: SessionId,
        event: PeerEvent,
        api: &mut A,
    ) {
        let Some(up) = self.upstream.as_mut() else {
            return;
        };
        match event {
            PeerEvent::Registered { identity, .. } => {
                up.registered = true;
                debug!(upper = %identity, "registered with the upper level");
                let session = up.session;
                self.advertise(session);
            }
            PeerEvent::PeerDown { reason } => {
                debug!(%reason, "upper level session down");
                self.upstream = None;
                self.recovery.session_down(session);
            }
            PeerEvent::WhoHas(q) if up.registered => self.answer_whohas(now, session, &q, api),
            PeerEvent::WhoHasAnswer(a) if up.registered => {
                self.whohas_answer(now, session, &a, api);
            }
            _ => self.stats.ignored_events += 1,
        }
    }

    /// A session from below registered: a lower-level peer joins the table; a
    /// spare or an SLR of our own level goes to `same_level_registered`.
    fn downstream_registered(
        &mut self,
        session: SessionId,
        identity: NodeName,
        level: Level,
        role: Role,
        epoch: Epoch,
    ) {
        let expected = self.expected_downstream_role();
        let own = self.own_role();
        let Some(ds) = self.downstream.get_mut(&session) else {
            self.stats.ignored_events += 1;
            return;
        };
        if role == Role::Spare || role == own {
            self.downstream.remove(&session);
            self.same_level_registered(session, identity, level, role);
            return;
        }
        if role != expected {
            self.stats.unexpected_roles += 1;
            warn!(peer = %identity, ?role, ?expected, "peer of the wrong role refused");
            self.actions.push_back(SlrAction::Close { session });
            return;
        }
        match self
            .table
            .register(&identity, ds.addr, ds.route_cost, epoch)
        {
            Ok(()) => {
                self.stats.registrations += 1;
                ds.registered = Some((identity, epoch));
            }
            Err(TableError::PeersFull { .. }) => {
                self.stats.table_full += 1;
                self.actions.push_back(SlrAction::Close { session });
            }
            Err(e) => {
                warn!(error = %e, "registration refused");
                self.actions.push_back(SlrAction::Close { session });
            }
        }
    }

    /// Any other event of a session from below.
    fn downstream_event<A: RouterApi + ?Sized>(
        &mut self,
        now: Instant,
        session: SessionId,
        event: PeerEvent,
        api: &mut A,
    ) {
        let Some(ds) = self.downstream.get_mut(&session) else {
            self.stats.ignored_events += 1;
            return;
        };
        match event {
            PeerEvent::StateUpdate(u) => {
                let Some((name, epoch)) = &ds.registered else {
                    self.stats.updates_ignored += 1;
                    return;
                };
                if self.table.handle_update(now, name, *epoch, &u).is_err() {
                    self.stats.updates_ignored += 1;
                }
            }
            PeerEvent::TunnelObject(obj) => {
                let sender = ds.addr;
                if ds.registered.is_none() {
                    self.stats.shortcuts_refused += 1;
                    return;
                }
                match install_shortcut(api, &obj, sender, now) {
                    Ok(()) => {
                        self.stats.shortcuts_installed += 1;
                        self.pass_on(obj);
                    }
                    Err(e) => {
                        self.stats.shortcuts_refused += 1;
                        debug!(error = %e, "tunnel object refused");
                    }
                }
            }
            PeerEvent::PeerDown { reason } => {
                if let Some((name, epoch)) = &ds.registered {
                    debug!(peer = %name, %reason, "lower-level peer down");
                    // Refused only for an old epoch, which cannot be the one stored here.
                    let _ = self.table.peer_down(name, *epoch);
                    self.actions
                        .push_back(SlrAction::NextHopDown { addr: ds.addr });
                }
                self.downstream.remove(&session);
                self.recovery.session_down(session);
            }
            PeerEvent::WhoHas(q) => {
                if ds.registered.is_none() {
                    self.recovery.stats.whohas_refused_session += 1;
                    return;
                }
                self.answer_whohas(now, session, &q, api);
            }
            PeerEvent::WhoHasAnswer(a) => self.whohas_answer(now, session, &a, api),
            _ => self.stats.ignored_events += 1,
        }
    }

    /// The role an SLR of our level registers with.
    fn own_role(&self) -> Role {
        match self.cfg.level {
            Level::Network => Role::Network,
            Level::System => Role::System,
            Level::Site => Role::Site,
        }
    }

    /// A session we accepted registered with our own role (a neighbour) or as a
    /// spare: admitted only with our level and a listed name.
    fn same_level_registered(
        &mut self,
        session: SessionId,
        identity: NodeName,
        level: Level,
        role: Role,
    ) {
        if role == Role::Spare {
            if level == self.cfg.level && self.recovery.scope.spares.contains(&identity) {
                self.admit_spare(session, identity);
            } else {
                self.stats.unexpected_roles += 1;
                self.recovery.stats.spares_refused += 1;
                warn!(peer = %identity, ?level, "spare not listed for this SLR refused");
                self.actions.push_back(SlrAction::Close { session });
            }
            return;
        }
        self.neighbours.insert(session, Neighbour { name: None });
        self.neighbour_registered(session, identity, level, role);
    }

    fn neighbour_registered(
        &mut self,
        session: SessionId,
        identity: NodeName,
        level: Level,
        role: Role,
    ) {
        let listed = self.recovery.scope.neighbours.contains(&identity);
        if level != self.cfg.level || role != self.own_role() || !listed {
            self.recovery.stats.neighbours_refused += 1;
            warn!(peer = %identity, ?level, ?role, listed, "same-level peer refused as a neighbour");
            self.neighbours.remove(&session);
            self.actions.push_back(SlrAction::Close { session });
            return;
        }
        self.recovery.stats.neighbours_registered += 1;
        debug!(neighbour = %identity, "neighbour registered");
        if let Some(n) = self.neighbours.get_mut(&session) {
            n.name = Some(identity);
        }
    }

    fn admit_spare(&mut self, session: SessionId, name: NodeName) {
        self.recovery.stats.spares_registered += 1;
        debug!(spare = %name, "hot spare registered");
        self.spares.insert(session, name.clone());
        self.actions
            .push_back(SlrAction::SpareRegistered { session, name });
    }

    fn spare_event(&mut self, session: SessionId, event: PeerEvent) {
        match event {
            PeerEvent::Registered {
                identity,
                level,
                role,
                ..
            } => {
                // A re-registration (new epoch): resync only if still acceptable.
                self.spares.remove(&session);
                self.same_level_registered(session, identity, level, role);
                if !self.spares.contains_key(&session) {
                    // Refused (or now a neighbour): stop mirroring to it.
                    self.actions.push_back(SlrAction::SpareDown { session });
                }
            }
            PeerEvent::PeerDown { reason } => {
                debug!(%reason, "hot spare session down");
                self.spares.remove(&session);
                self.actions.push_back(SlrAction::SpareDown { session });
            }
            _ => self.stats.ignored_events += 1,
        }
    }

    fn neighbour_event<A: RouterApi + ?Sized>(
        &mut self,
        now: Instant,
        session: SessionId,
        event: PeerEvent,
        api: &mut A,
    ) {
        match event {
            PeerEvent::Registered {
                identity,
                level,
                role,
                ..
            } => self.neighbour_registered(session, identity, level, role),
            PeerEvent::PeerDown { reason } => {
                debug!(%reason, "neighbour session down");
                self.neighbours.remove(&session);
                self.recovery.session_down(session);
            }
            PeerEvent::WhoHas(q) => {
                if self
                    .neighbours
                    .get(&session)
                    .is_some_and(|n| n.name.is_some())
                {
                    self.answer_whohas(now, session, &q, api);
                } else {
                    self.recovery.stats.whohas_refused_session += 1;
                }
            }
            PeerEvent::WhoHasAnswer(a) => self.whohas_answer(now, session, &a, api),
            _ => self.stats.ignored_events += 1,
        }
    }

    fn answer_whohas<A: RouterApi + ?Sized>(
        &mut self,
        now: Instant,
        session: SessionId,
        q: &crate::message::WhoHas,
        api: &A,
    ) {
        if let Some(answer) = self.recovery.answer(session, q, now, api) {
            self.actions.push_back(SlrAction::Send {
                session,
                message: Outgoing::WhoHasAnswer(answer),
            });
        }
    }

    fn whohas_answer<A: RouterApi + ?Sized>(
        &mut self,
        now: Instant,
        session: SessionId,
        a: &crate::message::WhoHasAnswer,
        api: &mut A,
    ) {
        if let Some(r) = self
            .recovery
            .handle_answer(session, a, self.cfg.level, now, api)
        {
            self.actions.push_back(SlrAction::FlowRecovered {
                key: r.key,
                next_hop: r.next_hop,
            });
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::StateUpdate;
    use router_core::engine::{Engine, EngineConfig, Verdict};
    use router_core::flow::FlowConfig;
    use router_core::packet::{HEADROOM, PacketBuf};
    use router_core::policy::SumCost;
    use router_core::synth::PacketSpec;
    use router_core::wire::TcpFlags;
    use std::net::{Ipv4Addr, SocketAddr};
    use std::time::Duration;

    const ME: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);

    fn engine(level: Level) -> Engine {
        Engine::new(EngineConfig {
            level,
            local_v4: Some(ME),
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

    fn control(level: Level) -> SlrControl {
        let mut cfg = SlrConfig::new(level);
        cfg.table.interval = Duration::from_millis(100);
        SlrControl::new(cfg, Arc::new(SumCost), Instant::ZERO)
    }

    fn name(s: &str) -> NodeName {
        NodeName::new(s).unwrap()
    }

    fn site(i: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 1, i, 1))
    }

    fn vips() -> SubnetPrefix {
        SubnetPrefix::new("192.200.0.0".parse().unwrap(), 16).unwrap()
    }

    fn registered(i: u8, role: Role) -> PeerEvent {
        PeerEvent::Registered {
            identity: name(&format!("site{i}.test")),
            level: Level::Site,
            role,
            epoch: Epoch(u64::from(i)),
        }
    }

    fn load(seq: u64, load: f32) -> PeerEvent {
        PeerEvent::StateUpdate(StateUpdate {
            seq,
            subnets: vec![SubnetLoad {
                subnet: vips(),
                load,
            }],
        })
    }

    fn syn(e: &mut Engine, port: u16, now: Instant) -> (FlowKey, Verdict) {
        let spec = PacketSpec::tcp(
            SocketAddr::new("198.51.100.7".parse().unwrap(), port),
            SocketAddr::new("192.200.0.10".parse().unwrap(), 80),
            TcpFlags::SYN,
        );
        let mut buf = vec![0u8; HEADROOM + 128];
        let n = spec.write(&mut buf[HEADROOM..]).unwrap();
        let key = router_core::classify::classify(&buf[HEADROOM..HEADROOM + n])
            .unwrap()
            .key;
        let mut pkt = PacketBuf::new(&mut buf, HEADROOM, n).unwrap();
        (key, e.process(&mut pkt, now))
    }

    fn actions(c: &mut SlrControl) -> Vec<SlrAction> {
        std::iter::from_fn(|| c.poll_action()).collect()
    }

    /// A system-level control with two registered sites (loads 0.5 and 0.2) and
    /// a registered upstream.
    fn system_with_sites() -> (SlrControl, Engine) {
        let mut c = control(Level::System);
        let mut e = engine(Level::System);
        c.set_upstream(Some(SessionId(100)));
        c.handle_event(
            Instant::ZERO,
            SessionId(100),
            PeerEvent::Registered {
                identity: name("net.test"),
                level: Level::Network,
                role: Role::Network,
                epoch: Epoch(9),
            },
            &mut e,
        );
        for (i, l) in [(1u8, 0.5f32), (2, 0.2)] {
            c.add_downstream(SessionId(u64::from(i)), site(i), 0.0)
                .unwrap();
            c.handle_event(
                Instant::ZERO,
                SessionId(u64::from(i)),
                registered(i, Role::Site),
                &mut e,
            );
            c.handle_event(Instant::ZERO, SessionId(u64::from(i)), load(1, l), &mut e);
        }
        c.handle_timeout(Instant::ZERO, &mut e);
        (c, e)
    }

    #[test]
    fn table_drives_the_engine_and_advertises_upward() {
        let (mut c, mut e) = system_with_sites();
        let acts = actions(&mut c);
        assert!(acts.iter().any(|a| matches!(a,
            SlrAction::Send { session: SessionId(100), message: Outgoing::StateUpdate { subnets } }
                if (subnets[0].load - 0.2).abs() < 1e-6)));
        assert_eq!(c.served_subnets().count(), 1);
        let (_, v) = syn(&mut e, 1, Instant::from_millis(1));
        assert_eq!(
            v,
            Verdict::Forward {
                next_hop: site(2),
                fragment: false
            }
        );
    }

    #[test]
    fn shortcut_is_installed_only_for_flows_pinned_to_the_sender() {
        let (mut c, mut e) = system_with_sites();
        actions(&mut c);
        let now = Instant::from_millis(1);
        let (key, _) = syn(&mut e, 7, now);
        let server: IpAddr = "10.1.2.11".parse().unwrap();
        let obj = TunnelObject { key, server };
        // Site 1 was not given this flow: refused, nothing relayed.
        c.handle_event(now, SessionId(1), PeerEvent::TunnelObject(obj), &mut e);
        assert_eq!(c.stats().shortcuts_refused, 1);
        assert!(actions(&mut c).is_empty());
        assert_eq!(e.lookup_flow(&key, now).unwrap().next_hop, site(2));
        // Site 2 was: installed and relayed to the upper level.
        c.handle_event(now, SessionId(2), PeerEvent::TunnelObject(obj), &mut e);
        assert_eq!(c.stats().shortcuts_installed, 1);
        assert_eq!(e.lookup_flow(&key, now).unwrap().next_hop, server);
        assert_eq!(
            actions(&mut c),
            vec![SlrAction::Send {
                session: SessionId(100),
                message: Outgoing::TunnelObject(obj)
            }]
        );
        // An unknown flow is refused.
        let mut other = obj;
        other.key.src_port = 9;
        c.handle_event(now, SessionId(2), PeerEvent::TunnelObject(other), &mut e);
        assert_eq!(c.stats().shortcuts_refused, 2);
    }

    #[test]
    fn wrong_role_is_refused_and_down_peers_leave_the_choice() {
        let (mut c, mut e) = system_with_sites();
        actions(&mut c);
        c.add_downstream(SessionId(3), site(3), 0.0).unwrap();
        c.handle_event(
            Instant::ZERO,
            SessionId(3),
            registered(3, Role::Host),
            &mut e,
        );
        assert_eq!(c.stats().unexpected_roles, 1);
        assert_eq!(
            actions(&mut c),
            vec![SlrAction::Close {
                session: SessionId(3)
            }]
        );
        c.handle_event(
            Instant::ZERO,
            SessionId(2),
            PeerEvent::PeerDown {
                reason: crate::DownReason::Timeout,
            },
            &mut e,
        );
        assert_eq!(
            actions(&mut c),
            vec![SlrAction::NextHopDown { addr: site(2) }]
        );
        c.handle_timeout(Instant::from_millis(100), &mut e);
        let (_, v) = syn(&mut e, 8, Instant::from_millis(101));
        assert_eq!(
            v,
            Verdict::Forward {
                next_hop: site(1),
                fragment: false
            }
        );
        assert!(c.downstream_peer(SessionId(2)).is_none());
    }

    #[test]
    fn site_originates_shortcuts_and_entry_programming() {
        let mut c = control(Level::Site);
        let key = FlowKey {
            proto: 6,
            src: "198.51.100.7".parse().unwrap(),
            src_port: 1,
            dst: "192.200.0.10".parse().unwrap(),
            dst_port: 80,
        };
        let server: IpAddr = "10.1.1.11".parse().unwrap();
        c.flow_pinned(key, server);
        assert_eq!(c.stats().shortcuts_unsent, 1, "no upstream yet");
        let mut cfg = SlrConfig::new(Level::Site);
        cfg.entry_routers = true;
        let mut c = SlrControl::new(cfg, Arc::new(SumCost), Instant::ZERO);
        c.flow_pinned(key, server);
        assert_eq!(
            actions(&mut c),
            vec![SlrAction::ProgramEntry(TunnelObject { key, server })]
        );
        let mut cfg = SlrConfig::new(Level::Site);
        cfg.shortcuts = false;
        let mut c = SlrControl::new(cfg, Arc::new(SumCost), Instant::ZERO);
        c.flow_pinned(key, server);
        assert_eq!(c.stats().shortcuts_originated, 0);
    }

    #[test]
    fn hot_swap_changes_new_flows_only() {
        struct Second;
        impl Policy for Second {
            fn name(&self) -> &str {
                "second"
            }
            fn select(
                &self,
                _: &router_core::FlowRequest,
                c: &[router_core::Candidate],
            ) -> Result<router_core::Decision, router_core::PolicyError> {
                Ok(router_core::Decision::Select(c.len() - 1))
            }
        }
        let (mut c, mut e) = system_with_sites();
        let now = Instant::from_millis(1);
        let (k1, v) = syn(&mut e, 1, now);
        assert_eq!(
            v,
            Verdict::Forward {
                next_hop: site(2),
                fragment: false
            }
        );
        assert_eq!(c.set_policy(Arc::new(Second), &mut e), 1);
        let (_, v) = syn(&mut e, 2, now);
        assert_eq!(
            v,
            Verdict::Forward {
                next_hop: site(1),
                fragment: false
            }
        );
        assert_eq!(e.lookup_flow(&k1, now).unwrap().next_hop, site(2));
    }

    #[test]
    fn install_shortcut_is_idempotent() {
        let (_, mut e) = system_with_sites();
        let now = Instant::from_millis(1);
        let (key, _) = syn(&mut e, 5, now);
        let obj = TunnelObject {
            key,
            server: "10.1.2.11".parse().unwrap(),
        };
        install_shortcut(&mut e, &obj, site(2), now).unwrap();
        install_shortcut(&mut e, &obj, site(2), now).unwrap();
        assert!(matches!(
            install_shortcut(&mut e, &obj, site(1), now),
            Ok(())
        ));
        let obj2 = TunnelObject {
            key,
            server: "10.1.1.11".parse().unwrap(),
        };
        assert!(matches!(
            install_shortcut(&mut e, &obj2, site(1), now),
            Err(ShortcutError::NotPinnedToSender { .. })
        ));
    }
}
