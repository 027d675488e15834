//! The router node: one sans-IO type that *is* a Pronto router (DESIGN.md §2, §3,
//! §5), driven alike by the daemon's Linux shell, the simulator and the benches.
//!
//! A [`Node`] owns the forwarding [`Engine`], the SLR control side
//! ([`SlrControl`]: next-hop table, shortcuts, WHOHAS), the recovery machinery
//! (hot-spare mirroring and failover, authenticated flow advertisements, state
//! re-creation by the cluster's SLR) and the subnet -> policy bindings. It is fed:
//!
//! - packets: [`Node::handle_packet`] runs the engine on a caller-owned buffer and
//!   finishes in place what the engine hands up (a mid-flow packet of a lost flow
//!   is tunnelled on to the SLR or along a pin that arrived meanwhile; a verified
//!   advertisement is installed or relayed), so the shell only sends, delivers or
//!   drops what the returned [`Verdict`] says, from the buffer it owns;
//! - sessions: [`Node::session_opened`] and [`Node::handle_event`] with the
//!   [`PeerEvent`]s of each authenticated session;
//! - time: [`Node::handle_timeout`] when [`Node::poll_timeout`] is due.
//!
//! Its outputs are polled: [`Node::poll_event`] gives messages to send, sessions
//! to close, subnets to route into or out of the node, entry programming and the
//! spare's takeover. It reads no clock, opens no socket and starts no thread.

mod control;
mod counters;
mod held;
mod packet;
mod recovery;

pub use counters::{NodeCounters, RecoveryCounters};
pub use held::{HoldConfig, HoldCounters};
pub use recovery::{SpareConfig, TakeoverReport};

use crate::message::{NodeName, TunnelObject};
use crate::peer::Outgoing;
use crate::recovery::{AdvertAuth, MirrorConfig, RecoveryScope};
use crate::slr::{SessionId, SlrConfig, SlrControl, SlrError};
use router_core::api::{ApiError, RouterApi};
use router_core::engine::{Engine, EngineConfig};
use router_core::policy::{Candidate, CostModel, Level, Policy, SubnetCosts, SubnetPolicies};
use router_core::{Instant, VirtualSubnet};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// Buckets of the shortcut lag histogram (packets a lower SLR saw of a flow
/// before its tunnel object arrived here: 1, 2, ..., 8+).
pub const LAG_BUCKETS: usize = 8;

/// A known lower-level peer: where to tunnel to it and the route cost to it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DownstreamHop {
    /// Its tunnel endpoint (default: the session's remote address).
    pub tunnel: Option<IpAddr>,
    /// r_j of F.
    pub route_cost: f64,
}

/// What a node is: everything the shells used to assemble on their own.
#[derive(Debug)]
pub struct NodeConfig {
    /// The engine (level, tunnel endpoints, flow table).
    pub engine: EngineConfig,
    /// The control side (table, shortcuts, entry routers).
    pub slr: SlrConfig,
    /// The policy of subnets no binding names.
    pub policy: Arc<dyn Policy>,
    /// F and G.
    pub cost: Arc<dyn CostModel>,
    /// Lower-level peers known by name (tunnel endpoint, route cost).
    pub downstream: BTreeMap<NodeName, DownstreamHop>,
    /// Route cost of lower-level peers not listed.
    pub default_route_cost: f64,
    /// Subnets served with fixed candidates, whatever the table says.
    pub static_subnets: Vec<(VirtualSubnet, Vec<Candidate>)>,
    /// WHOHAS scope (neighbours, spares, own addresses, query secret).
    pub scope: Option<RecoveryScope>,
    /// An entry router: tunnel mid-flow packets of unknown flows to this SLR,
    /// which holds their state.
    pub forward_unknown_to: Option<IpAddr>,
    /// Mirroring to the spares the scope lists.
    pub mirror: Option<MirrorConfig>,
    /// This node is a hot spare.
    pub spare: Option<SpareConfig>,
    /// Verifies server flow advertisements (none: every advertisement refused).
    pub advert_auth: Option<AdvertAuth>,
    /// Wall-clock milliseconds since the Unix epoch at `Instant::ZERO`: an
    /// advertisement's timestamp is checked against it plus `now`.
    pub unix_ms_at_zero: u64,
    /// How often the flow table is swept, and how many buckets per sweep.
    pub sweep_every: Duration,
    /// Buckets per sweep.
    pub sweep_buckets: usize,
    /// Mid-flow packets of lost flows kept until the flow is re-created.
    pub hold: HoldConfig,
}

impl NodeConfig {
    /// A node of `level` with built-in policy and cost, no recovery.
    pub fn new(engine: EngineConfig, slr: SlrConfig, policy: Arc<dyn Policy>) -> Self {
        Self {
            engine,
            slr,
            policy,
            cost: Arc::new(router_core::policy::SumCost),
            downstream: BTreeMap::new(),
            default_route_cost: 1.0,
            static_subnets: Vec::new(),
            scope: None,
            forward_unknown_to: None,
            mirror: None,
            spare: None,
            advert_auth: None,
            unix_ms_at_zero: 0,
            sweep_every: Duration::from_millis(100),
            sweep_buckets: 4096,
            hold: HoldConfig::default(),
        }
    }
}

/// Why a node could not be built or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The engine refused a static subnet or its candidates.
    #[error("static subnet {subnet}: {source}")]
    StaticSubnet {
        /// The subnet.
        subnet: VirtualSubnet,
        /// Why.
        #[source]
        source: ApiError,
    },
    /// The control side refused the recovery scope.
    #[error("recovery scope: {0}")]
    Scope(#[source] SlrError),
}

/// Which peer a session reaches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SessionKind {
    /// The upper level this node registers with.
    Upstream,
    /// A lower-level peer that dialled in from `remote`; `route_cost` overrides
    /// the configured one (the simulator's links carry their own).
    Downstream {
        /// The remote address of its transport.
        remote: IpAddr,
        /// Route cost override.
        route_cost: Option<f64>,
    },
    /// A same-level neighbour this node dialled for WHOHAS.
    Neighbour,
    /// A spare's session to its primary.
    Primary,
}

/// What the shell must do, polled with [`Node::poll_event`].
#[derive(Debug)]
#[non_exhaustive]
pub enum NodeEvent {
    /// Send `message` on `session`.
    Send {
        /// The session.
        session: SessionId,
        /// The message.
        message: Outgoing,
    },
    /// End `session` (refused peer, or the control side closed it).
    Close {
        /// The session.
        session: SessionId,
    },
    /// Route `subnet` into this node (it serves it now).
    Serve(VirtualSubnet),
    /// Stop routing `subnet` into this node.
    Withdraw(VirtualSubnet),
    /// Program this shortcut into the cluster's entry routers.
    ProgramEntry(TunnelObject),
    /// The spare declared its primary dead and took its flow table over: take the
    /// primary's addresses and register upstream in its place.
    TookOver(TakeoverReport),
    /// A WHOHAS answer re-created the state of `key` here (logs and figures).
    FlowRecovered {
        /// The flow.
        key: router_core::FlowKey,
        /// Where it is pinned now.
        next_hop: IpAddr,
    },
}

/// Session bookkeeping of the node (the shell keeps the transport).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SessionInfo {
    /// Which peer.
    pub kind: SessionKind,
    /// Registered (downstream: handed to the table).
    pub registered: bool,
    /// When its last state update arrived.
    pub last_update: Option<Instant>,
    /// State updates received.
    pub updates: u64,
}

/// The router node. See the module documentation.
#[derive(Debug)]
pub struct Node {
    engine: Engine,
    slr: SlrControl,
    policies: SubnetPolicies,
    costs: SubnetCosts,
    cfg: NodeShape,
    sessions: BTreeMap<SessionId, SessionInfo>,
    recovery: recovery::NodeRecovery,
    events: VecDeque<NodeEvent>,
    /// Subnets routed into this node (served by the table, plus static ones).
    routed: BTreeSet<VirtualSubnet>,
    table_updates_seen: u64,
    next_sweep: Instant,
    /// The latest instant handed in (inputs without one act at it).
    now: Instant,
    counters: NodeCounters,
    held: held::HoldQueue,
}

/// The parts of the configuration the node keeps.
#[derive(Debug)]
struct NodeShape {
    level: Level,
    downstream: BTreeMap<NodeName, DownstreamHop>,
    default_route_cost: f64,
    statics: Vec<VirtualSubnet>,
    sweep_every: Duration,
    sweep_buckets: usize,
}

impl Node {
    /// A node at `now` (its control side's first table computation is due then).
    pub fn new(cfg: NodeConfig, now: Instant) -> Result<Self, NodeError> {
        let level = cfg.engine.level;
        let mut engine = Engine::new(cfg.engine);
        let policies = SubnetPolicies::new(cfg.policy);
        let costs = SubnetCosts::new(cfg.cost);
        let mut slr = SlrControl::new(cfg.slr, Arc::new(costs.clone()), now);
        slr.set_policy(Arc::new(policies.clone()), &mut engine);
        if let Some(scope) = cfg.scope {
            slr.set_recovery_scope(scope).map_err(NodeError::Scope)?;
        }
        let mut statics = Vec::new();
        for (subnet, hops) in cfg.static_subnets {
            let add = engine.add_subnet(subnet).and_then(|id| {
                engine.set_candidates(id, hops)?;
                engine.set_policy(id, Some(Arc::new(policies.clone())))
            });
            add.map_err(|source| NodeError::StaticSubnet { subnet, source })?;
            statics.push(subnet);
        }
        let recovery = recovery::NodeRecovery::new(
            cfg.forward_unknown_to,
            cfg.mirror,
            cfg.spare,
            cfg.advert_auth,
            cfg.unix_ms_at_zero,
        );
        let mut node = Self {
            engine,
            slr,
            policies,
            costs,
            cfg: NodeShape {
                level,
                downstream: cfg.downstream,
                default_route_cost: cfg.default_route_cost,
                statics,
                sweep_every: cfg.sweep_every,
                sweep_buckets: cfg.sweep_buckets,
            },
            sessions: BTreeMap::new(),
            recovery,
            events: VecDeque::new(),
            routed: BTreeSet::new(),
            table_updates_seen: 0,
            next_sweep: now + cfg.sweep_every,
            now,
            counters: NodeCounters::default(),
            held: held::HoldQueue::new(cfg.hold),
        };
        node.sync_routes(true);
        Ok(node)
    }

    /// The engine (read-only: counters, flows, subnets).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The engine, for shells that install state outside the node's protocols
    /// (an entry router programmed by its SLR, tests).
    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// The control side (table, stats, sessions it knows).
    pub fn control(&self) -> &SlrControl {
        &self.slr
    }

    /// This node's level.
    pub fn level(&self) -> Level {
        self.cfg.level
    }

    /// The node's own counters (sessions, shortcuts, recovery).
    pub fn counters(&self) -> NodeCounters {
        let mut c = self.counters;
        c.recovery = self.recovery.counters();
        c.hold = self.held.counters();
        c
    }

    /// The sessions the node knows, with their bookkeeping.
    pub fn sessions(&self) -> impl Iterator<Item = (SessionId, &SessionInfo)> {
        self.sessions.iter().map(|(id, s)| (*id, s))
    }

    /// The spare's takeover, once it happened.
    pub fn takeover(&self) -> Option<TakeoverReport> {
        self.recovery.takeover()
    }

    /// The spare's mirror: flows mirrored, lag of the newest delta.
    pub fn mirror_state(&self) -> Option<(usize, Option<Duration>)> {
        self.recovery.mirror_state()
    }

    /// The recovery parts, for snapshots.
    pub fn recovery(&self) -> &recovery::NodeRecovery {
        &self.recovery
    }

    /// Replace the WHOHAS scope (neighbours and spares added at runtime).
    pub fn set_recovery_scope(&mut self, scope: RecoveryScope) -> Result<(), SlrError> {
        self.slr.set_recovery_scope(scope)
    }

    /// Turn advertisement checking on (with these keys) or off.
    pub fn set_advert_auth(&mut self, auth: Option<AdvertAuth>) {
        self.recovery.set_advert_auth(auth);
    }

    /// Replace the advertisement keys (rollover: the replay cache stays).
    pub fn set_advert_keys(&mut self, keys: Vec<crate::recovery::AdvertKey>) -> bool {
        self.recovery.set_advert_keys(keys)
    }

    /// Bind `subnet` to `policy`, or unbind it (`None`): new flows to the subnet
    /// are placed by it from the next packet on; pinned flows keep their hops.
    /// Returns how many served subnets the policy set was pushed into.
    pub fn set_subnet_policy(
        &mut self,
        subnet: VirtualSubnet,
        policy: Option<Arc<dyn Policy>>,
    ) -> usize {
        self.policies.bind(subnet, policy);
        self.push_policies()
    }

    /// Replace the policy of subnets no binding names.
    pub fn set_default_policy(&mut self, policy: Arc<dyn Policy>) -> usize {
        self.policies.set_default(policy);
        self.push_policies()
    }

    /// The policy set (default and bindings).
    pub fn policies(&self) -> &SubnetPolicies {
        &self.policies
    }

    /// Replace F and G of subnets no cost binding names, from the next table
    /// computation on.
    pub fn set_cost_model(&mut self, cost: Arc<dyn CostModel>) {
        self.costs.set_default(cost);
        self.slr.set_cost_model(Arc::new(self.costs.clone()));
    }

    /// Bind the table's subnets that `subnet` covers to the cost model `cost`
    /// (F and G), or unbind them (`None`), from the next table computation on.
    pub fn set_subnet_cost(&mut self, subnet: VirtualSubnet, cost: Option<Arc<dyn CostModel>>) {
        self.costs.bind(subnet, cost);
        self.slr.set_cost_model(Arc::new(self.costs.clone()));
    }

    /// The cost models (default and bindings).
    pub fn costs(&self) -> &SubnetCosts {
        &self.costs
    }

    /// Time only moves forward, whatever order a shell's inputs arrive in.
    fn advance(&mut self, now: Instant) {
        self.now = self.now.max(now);
    }

    fn push_policies(&mut self) -> usize {
        let p: Arc<dyn Policy> = Arc::new(self.policies.clone());
        let mut n = self.slr.set_policy(Arc::clone(&p), &mut self.engine);
        for s in &self.cfg.statics {
            if let Some((_, id)) = self.engine.subnet_for(s.addr())
                && self.engine.set_policy(id, Some(Arc::clone(&p))).is_ok()
            {
                n += 1;
            }
        }
        n
    }

    /// The next event for the shell.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<NodeEvent> {
        self.events.pop_front()
    }

    /// When [`Node::handle_timeout`] must next run.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let t = self.slr.poll_timeout().min(self.next_sweep);
        Some(self.recovery.poll_timeout().map_or(t, |r| r.min(t)))
    }
}
