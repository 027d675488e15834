//! The router's management API (`[management]`): qre's queries and module
//! operations over HTTP/1.1 on mutual TLS 1.3, and the Prometheus endpoint.
//!
//! Threads: the server runs on its own thread (`pronto-mgmt`) with a small tokio
//! runtime, so a slow or hostile client never touches the signalling runtime or
//! the control loop. Each request is answered on a blocking worker: engine state
//! comes from one [`DataplaneHandle::call`] (flows are scanned between two packet
//! batches), control state (table, peers, control counters) from one
//! [`ControlRequest`] answered by the control loop, module operations from the
//! operator [`Environment`] (verify the signature, compile, then swap atomically;
//! all off the packet path).
//!
//! Bounds: client certificates chaining to `management.trust_anchors` are
//! required by the TLS handshake (a client without one is refused there);
//! `max_connections` served at once; one request per connection; handshake and
//! request each within `request_timeout`; bodies at most [`qre::api::MAX_BODY`].

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result};
use exec_env::manager::{Environment, FailurePolicy, ManagerError, Scope, VersionState};
use exec_env::trust::VerifyError;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use qre::metrics::{Histogram, MetricsBuilder};
use qre::response::{
    EnvironmentRow, FlowsResponse, ModuleOpReport, ModuleRow, ModulesResponse, NextHopRow, PeerRow,
    PeersResponse, QueuesResponse, RouterSummary, ShareClassRow, ShareTreeRow, SubnetRow,
    TableResponse, VersionRow,
};
use qre::{
    AddrMatch, ErrorKind, FlowCollector, FlowQuery, FlowSample, MetricFamily, ModuleOp,
    RouterState, StateError, TableQuery,
};
use router_core::api::RouterApi;
use router_core::flow::FlowState;
use router_core::linux::DataplaneHandle;
use router_core::linux::dataplane::DecisionObserver;
use router_core::policy::{Candidate, CostModel, Decision, FlowRequest, Policy, PolicyError};
use router_core::{Instant, VirtualSubnet};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use signaling::{SlrControl, SubnetPrefix};
use tracing::{debug, info, warn};

use crate::config;

// ----- latency hooks ---------------------------------------------------------------

/// Latency histograms the router's hot paths record into (lock-free).
#[derive(Debug, Default)]
pub(crate) struct Hooks {
    /// Engine time of packets that pinned a new flow.
    pub(crate) new_flow_decision: Histogram,
    /// Wall time of module policy calls (select).
    pub(crate) module_select: Histogram,
    /// Wall time of module cost calls (F).
    pub(crate) module_cost: Histogram,
    /// Wall time of module aggregate calls (G).
    pub(crate) module_aggregate: Histogram,
    /// New-flow notices: from the data path pinning the flow to the control
    /// loop taking the notice (the queue a shortcut waits in).
    pub(crate) new_flow_queue: Histogram,
    /// Data path clock minus control clock (ns), measured at start, so notice
    /// timestamps can be compared with the control loop's clock.
    clock_offset_ns: AtomicU64,
}

impl DecisionObserver for Hooks {
    fn new_flow_decision(&self, ns: u64) {
        self.new_flow_decision.record_ns(ns);
    }
}

impl Hooks {
    /// Measure the offset between the data path's clock and `control` (whose
    /// epochs differ by the thread start): one dataplane round trip, so the
    /// error is at most that round trip (microseconds).
    pub(crate) fn calibrate(&self, handle: &DataplaneHandle, control: &router_core::linux::Clock) {
        let before = control.now();
        if let Ok(dp) = handle.call(|_, now| now) {
            let after = control.now();
            let mid = before.as_nanos() / 2 + after.as_nanos() / 2;
            // Stored as a two's-complement difference.
            self.clock_offset_ns
                .store(dp.as_nanos().wrapping_sub(mid), Ordering::Relaxed);
        }
    }

    /// A new-flow notice pinned at `at` (data path clock) was taken at `now`
    /// (control clock).
    #[expect(
        dead_code,
        reason = "the new-flow queue is gone: the node originates shortcuts on the dataplane thread; the histogram stays empty until removed"
    )]
    pub(crate) fn notice_taken(&self, at: Instant, now: Instant) {
        let at_control = at
            .as_nanos()
            .wrapping_sub(self.clock_offset_ns.load(Ordering::Relaxed));
        // A notice cannot be taken before it was made; clamp calibration error.
        let delay = now
            .as_nanos()
            .saturating_sub(at_control.min(now.as_nanos()));
        self.new_flow_queue.record_ns(delay);
    }

    /// `policy`, with each call timed into [`Hooks::module_select`].
    pub(crate) fn timed_policy(self: &Arc<Self>, policy: Arc<dyn Policy>) -> Arc<dyn Policy> {
        Arc::new(TimedPolicy {
            inner: policy,
            hooks: Arc::clone(self),
        })
    }

    /// `cost`, with each F and G call timed.
    pub(crate) fn timed_cost(self: &Arc<Self>, cost: Arc<dyn CostModel>) -> Arc<dyn CostModel> {
        Arc::new(TimedCost {
            inner: cost,
            hooks: Arc::clone(self),
        })
    }
}

/// A module policy handle whose calls are timed (two clock reads per new flow).
struct TimedPolicy {
    inner: Arc<dyn Policy>,
    hooks: Arc<Hooks>,
}

impl std::fmt::Debug for TimedPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimedPolicy")
            .field("inner", &self.inner.name())
            .finish()
    }
}

impl Policy for TimedPolicy {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn select(&self, req: &FlowRequest, candidates: &[Candidate]) -> Result<Decision, PolicyError> {
        let t = std::time::Instant::now();
        let r = self.inner.select(req, candidates);
        self.hooks.module_select.record(t.elapsed());
        r
    }
}

/// A module cost model whose F and G calls are timed.
struct TimedCost {
    inner: Arc<dyn CostModel>,
    hooks: Arc<Hooks>,
}

impl std::fmt::Debug for TimedCost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimedCost")
            .field("inner", &self.inner.name())
            .finish()
    }
}

impl CostModel for TimedCost {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn cost(&self, load: f64, route_cost: f64) -> Result<f64, PolicyError> {
        let t = std::time::Instant::now();
        let r = self.inner.cost(load, route_cost);
        self.hooks.module_cost.record(t.elapsed());
        r
    }

    fn aggregate(&self, candidates: &[Candidate]) -> Result<f64, PolicyError> {
        let t = std::time::Instant::now();
        let r = self.inner.aggregate(candidates);
        self.hooks.module_aggregate.record(t.elapsed());
        r
    }
}

// ----- what the control loop answers ----------------------------------------------

/// One signalling session, as the control loop describes it.
#[derive(Debug, Clone)]
pub(crate) struct SessionInfo {
    /// `upstream`, `downstream`, or another kind of session the router has.
    pub(crate) direction: String,
    /// Its signalling address.
    pub(crate) remote: SocketAddr,
    /// Its registered name.
    pub(crate) name: Option<String>,
    /// Registered with the control side.
    pub(crate) registered: bool,
    /// When its last state update arrived (control clock).
    pub(crate) last_update: Option<Instant>,
    /// State updates received.
    pub(crate) updates: u64,
}

/// One subnet of the control side's next-hop table.
#[derive(Debug, Clone)]
pub(crate) struct TableRow {
    subnet: SubnetPrefix,
    candidates: Vec<Candidate>,
    aggregate: Option<f64>,
}

/// The control side's state at one moment.
#[derive(Debug, Clone)]
pub(crate) struct ControlView {
    /// The control counters snapshot (router.rs's `ControlSnapshot`), as JSON.
    counters: serde_json::Value,
    /// The SLR and table counters, as JSON.
    slr: serde_json::Value,
    peers: Vec<PeerRow>,
    table: Vec<TableRow>,
    omitted: u64,
    policy: String,
    downstream_role: &'static str,
    upstream_registered: bool,
    /// Tunnel endpoint -> peer name.
    names: BTreeMap<IpAddr, String>,
}

/// Built on the control loop from its state; bounded to
/// [`qre::api::MAX_TABLE_ROWS`] subnets.
pub(crate) fn control_view(
    slr: &SlrControl,
    sessions: Vec<SessionInfo>,
    counters: serde_json::Value,
    now: Instant,
) -> ControlView {
    let table = slr.table();
    let mut names = BTreeMap::new();
    let mut peers = Vec::new();
    for s in sessions {
        let view = s
            .name
            .as_ref()
            .filter(|_| s.direction == "downstream")
            .and_then(|n| signaling::NodeName::new(n).ok())
            .and_then(|n| table.peer(&n).cloned());
        if let (Some(v), Some(n)) = (&view, &s.name) {
            names.insert(v.addr, n.clone());
        }
        peers.push(PeerRow {
            name: s.name,
            direction: s.direction,
            remote: s.remote.to_string(),
            registered: s.registered,
            up: view.as_ref().map(|v| v.up),
            tunnel: view.as_ref().map(|v| v.addr),
            route_cost: view.as_ref().map(|v| v.route_cost),
            last_update_ms_ago: s
                .last_update
                .map(|t| now.saturating_since(t).as_millis() as u64),
            last_seq: view.as_ref().and_then(|v| v.last_seq),
            updates: s.updates,
        });
    }
    // Upstream first, then by direction and name.
    peers.sort_by(|a, b| {
        (a.direction != "upstream", &a.direction, &a.name).cmp(&(
            b.direction != "upstream",
            &b.direction,
            &b.name,
        ))
    });
    let rows: Vec<TableRow> = table
        .subnets()
        .take(qre::api::MAX_TABLE_ROWS)
        .map(|p| TableRow {
            subnet: *p,
            candidates: table.candidates(p).map(<[_]>::to_vec).unwrap_or_default(),
            aggregate: table.aggregate(p),
        })
        .collect();
    let st = slr.stats();
    let ts = table.stats();
    let slr_json = serde_json::json!({
        "registrations": st.registrations,
        "unexpected_roles": st.unexpected_roles,
        "table_full": st.table_full,
        "table_updates": st.table_updates,
        "engine_refusals": st.engine_refusals,
        "advertisements": st.advertisements,
        "updates_ignored": st.updates_ignored,
        "shortcuts_originated": st.shortcuts_originated,
        "shortcuts_installed": st.shortcuts_installed,
        "shortcuts_refused": st.shortcuts_refused,
        "shortcuts_relayed": st.shortcuts_relayed,
        "shortcuts_to_entry": st.shortcuts_to_entry,
        "shortcuts_unsent": st.shortcuts_unsent,
        "ignored_events": st.ignored_events,
        "policy_refusals": st.policy_refusals,
        "table": {
            "registrations": ts.registrations,
            "peers_refused": ts.peers_refused,
            "peers_down": ts.peers_down,
            "downs_stale_epoch": ts.downs_stale_epoch,
            "updates_accepted": ts.updates_accepted,
            "updates_stale_epoch": ts.updates_stale_epoch,
            "updates_unknown_peer": ts.updates_unknown_peer,
            "updates_peer_down": ts.updates_peer_down,
            "subnets_refused": ts.subnets_refused,
            "invalid_loads": ts.invalid_loads,
            "reports_expired": ts.reports_expired,
            "computations": ts.computations,
            "cost_faults": ts.cost_faults,
            "invalid_costs": ts.invalid_costs,
            "aggregate_faults": ts.aggregate_faults,
        },
    });
    ControlView {
        counters,
        slr: slr_json,
        peers,
        omitted: (table.subnet_count() as u64).saturating_sub(rows.len() as u64),
        table: rows,
        policy: slr.policy().name().to_owned(),
        downstream_role: match slr.expected_downstream_role() {
            signaling::Role::Host => "host",
            signaling::Role::Site => "site",
            signaling::Role::System => "system",
            signaling::Role::Network => "network",
            _ => "other",
        },
        upstream_registered: slr.upstream_registered(),
        names,
    }
}

/// A question for the control loop; it answers on `reply`.
#[derive(Debug)]
pub(crate) struct ControlRequest {
    /// Where the answer goes.
    pub(crate) reply: std::sync::mpsc::SyncSender<ControlView>,
}

/// How the management side reaches the control loop: queues a request, false
/// when the queue is full or gone.
pub(crate) type ControlLink = Box<dyn Fn(ControlRequest) -> bool + Send + Sync>;

// ----- the state provider ------------------------------------------------------------

/// Counters of the management server itself.
#[derive(Debug, Default)]
struct ServerStats {
    connections: AtomicU64,
    unauthenticated: AtomicU64,
    untrusted: AtomicU64,
    handshake_failures: AtomicU64,
    timeouts: AtomicU64,
    requests_ok: AtomicU64,
    requests_client_error: AtomicU64,
    requests_server_error: AtomicU64,
    module_ops: AtomicU64,
    module_ops_refused: AtomicU64,
}

/// Everything the management API reads and changes.
pub(crate) struct MgmtState {
    /// Node name.
    pub(crate) name: String,
    /// Level name.
    pub(crate) level: &'static str,
    /// Daemon start.
    pub(crate) started: std::time::Instant,
    /// The data path.
    pub(crate) dataplane: DataplaneHandle,
    /// The control loop.
    pub(crate) control: ControlLink,
    /// The operator environment, when `[modules]` is configured.
    pub(crate) env: Option<Arc<Environment>>,
    /// What the configuration binds modules to: (module, binding).
    pub(crate) bindings: Vec<(String, String)>,
    /// F and G (for the costs in the table answer).
    pub(crate) cost: Arc<dyn CostModel>,
    /// `[shaping]` as configured at start.
    pub(crate) shaping: Option<config::Shaping>,
    /// Statically configured subnets.
    pub(crate) static_subnets: Vec<VirtualSubnet>,
    /// Latency histograms.
    pub(crate) hooks: Arc<Hooks>,
    /// Module operations one at a time (a load checks the name, then installs).
    ops: Mutex<()>,
    stats: ServerStats,
}

impl std::fmt::Debug for MgmtState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MgmtState")
            .field("name", &self.name)
            .finish()
    }
}

/// Pieces of [`MgmtState`] the daemon supplies.
pub(crate) struct MgmtParts {
    /// Node name.
    pub(crate) name: String,
    /// Level name.
    pub(crate) level: &'static str,
    /// The data path.
    pub(crate) dataplane: DataplaneHandle,
    /// The control loop.
    pub(crate) control: ControlLink,
    /// The operator environment.
    pub(crate) env: Option<Arc<Environment>>,
    /// `[modules]`, for the bindings.
    pub(crate) modules: Option<config::ModulesConfig>,
    /// F and G.
    pub(crate) cost: Arc<dyn CostModel>,
    /// `[shaping]`.
    pub(crate) shaping: Option<config::Shaping>,
    /// Static subnets.
    pub(crate) static_subnets: Vec<VirtualSubnet>,
    /// Latency histograms.
    pub(crate) hooks: Arc<Hooks>,
}

impl MgmtState {
    /// The state over a running router.
    pub(crate) fn new(p: MgmtParts) -> Self {
        let mut bindings = Vec::new();
        if let Some(m) = &p.modules {
            if let Some(n) = &m.policy {
                bindings.push((n.clone(), format!("policy {}", m.subnet)));
            }
            if let Some(n) = &m.cost {
                bindings.push((n.clone(), "cost (F, G)".to_owned()));
            }
        }
        Self {
            name: p.name,
            level: p.level,
            started: std::time::Instant::now(),
            dataplane: p.dataplane,
            control: p.control,
            env: p.env,
            bindings,
            cost: p.cost,
            shaping: p.shaping,
            static_subnets: p.static_subnets,
            hooks: p.hooks,
            ops: Mutex::new(()),
            stats: ServerStats::default(),
        }
    }

    fn stopped() -> StateError {
        StateError::new(
            ErrorKind::Unavailable,
            "the data path has stopped",
            "the router is shutting down or failed; see its log",
        )
    }

    fn control_view(&self) -> Result<ControlView, StateError> {
        // A full queue means the control loop is busy: retry for up to 1 s.
        for _ in 0..100 {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            if (self.control)(ControlRequest { reply: tx }) {
                return rx.recv_timeout(Duration::from_secs(2)).map_err(|_| {
                    StateError::new(
                        ErrorKind::Unavailable,
                        "the control loop did not answer within 2 s",
                        "the router is overloaded or shutting down; retry",
                    )
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(StateError::new(
            ErrorKind::Unavailable,
            "the control loop's queue stayed full for 1 s",
            "the router is overloaded or shutting down; retry",
        ))
    }

    fn engine_figures(
        &self,
    ) -> Result<(router_core::engine::EngineCounters, u64, u64), StateError> {
        self.dataplane
            .call(|e, _| {
                let (v4, v6) = e.flows().capacity();
                (e.counters(), e.flows().len() as u64, (v4 + v6) as u64)
            })
            .map_err(|_| Self::stopped())
    }

    fn module_row(&self, m: exec_env::manager::ModuleInfo) -> ModuleRow {
        let version = |v: &exec_env::manager::VersionInfo| VersionRow {
            version: v.version.to_string(),
            signer: v.signer.clone(),
            digest: exec_env::trust::hex(&v.digest),
            state: match v.state {
                VersionState::Serving => "serving",
                VersionState::Standby => "standby",
                VersionState::Quarantined { .. } => "quarantined",
            }
            .into(),
            quarantine_ms: match v.state {
                VersionState::Quarantined { remaining } => Some(remaining.as_millis() as u64),
                _ => None,
            },
        };
        let c = m.counters;
        ModuleRow {
            active: version(&m.active),
            previous: m.previous.as_ref().map(version),
            bound: self
                .bindings
                .iter()
                .filter(|(n, _)| *n == m.name)
                .map(|(_, b)| b.clone())
                .collect(),
            name: m.name,
            calls: c.calls,
            ok: c.ok,
            faults: c.faults(),
            traps: c.traps,
            timeouts: c.timeouts,
            bad_results: c.bad_results,
            fallbacks: c.fallbacks,
            throttled: c.throttled,
            quarantined_refusals: c.quarantined_refusals,
            unavailable: c.unavailable,
            quarantines: c.quarantines,
            cpu_used: c.cpu_used,
            swaps: c.swaps,
            rollbacks: c.rollbacks,
        }
    }

    fn no_environment() -> StateError {
        StateError::new(
            ErrorKind::Conflict,
            "this router runs no execution environment",
            "add a [modules] section (trust_anchors, files, subnet, policy) to its configuration and restart it",
        )
    }
}

fn state_name(s: FlowState) -> &'static str {
    match s {
        FlowState::SynSeen => "syn_seen",
        FlowState::Established => "established",
        FlowState::Closing => "closing",
        FlowState::Udp => "udp",
        FlowState::Other => "other",
    }
}

fn prefix_match(text: &str) -> Option<AddrMatch> {
    text.parse().ok()
}

/// What went wrong with a module operation, and what to do.
fn manager_error(e: &ManagerError) -> StateError {
    let msg = e.to_string();
    match e {
        ManagerError::Verify(VerifyError::Unsigned) => StateError::new(
            ErrorKind::Refused,
            msg,
            "sign it: pronto module sign --key signer.key --chain signer.pem --manifest M.toml IN.wasm -o OUT.wasm",
        ),
        ManagerError::Verify(VerifyError::NoTrustAnchors) => StateError::new(
            ErrorKind::Refused,
            msg,
            "configure modules.trust_anchors with the CA of your module signers",
        ),
        ManagerError::Verify(_) => StateError::new(
            ErrorKind::Refused,
            msg,
            "sign it with a signer of a CA in the router's modules.trust_anchors; \
             `pronto module verify --trust CA.pem FILE` shows the verdict locally",
        ),
        ManagerError::Vm(_) => StateError::new(
            ErrorKind::Refused,
            msg,
            "the module does not compile or instantiate here: build it for wasm32-unknown-unknown with this sdk (scripts/build-wasm.sh)",
        ),
        ManagerError::Scope(_) => StateError::new(
            ErrorKind::Refused,
            msg,
            "the manifest's subnets must be granted by the signer's certificate and the environment",
        ),
        ManagerError::InvalidName { .. } => StateError::new(
            ErrorKind::BadRequest,
            msg,
            "module names are 1-64 of [a-z0-9_-]",
        ),
        ManagerError::UnknownModule { .. } => StateError::new(
            ErrorKind::NotFound,
            msg,
            "`pronto query modules` lists the installed modules",
        ),
        ManagerError::DuplicateVersion { .. } => StateError::new(
            ErrorKind::Conflict,
            msg,
            "bump the version in the manifest and sign again",
        ),
        ManagerError::NoPreviousVersion { .. } => StateError::new(
            ErrorKind::Conflict,
            msg,
            "a rollback needs an earlier version: swap one in first",
        ),
        ManagerError::TooManyModules { .. } => StateError::new(
            ErrorKind::Conflict,
            msg,
            "remove a module first (`pronto module remove`)",
        ),
        _ => StateError::new(ErrorKind::Internal, msg, "see the router's log"),
    }
}

/// One configured share tree as the queues answer shows it: each class's share
/// of the link when every class is busy, and the rate that guarantees.
fn share_tree_row(sh: &config::Shaping) -> ShareTreeRow {
    let t = &sh.tree;
    let shares = t.leaf_shares().unwrap_or_default();
    let classes = t
        .classes
        .iter()
        .map(|c| {
            let share = shares.get(&c.id).copied().unwrap_or(0.0);
            ShareClassRow {
                id: c.id,
                handle: format!("1:{:x}", c.id),
                weight: c.weight,
                share,
                rate_bps: (t.link_rate_bps as f64 * share) as u64,
                subnets: t
                    .filters
                    .iter()
                    .filter(|f| f.class == c.id)
                    .map(|f| f.subnet.to_string())
                    .collect(),
                default: t.default_class == c.id,
            }
        })
        .collect();
    ShareTreeRow {
        link: sh.link.clone(),
        realisation: "kernel-htb".into(),
        rate_bps: t.link_rate_bps,
        classes,
    }
}

impl RouterState for MgmtState {
    fn summary(&self) -> Result<RouterSummary, StateError> {
        let (counters, flows, capacity) = self.engine_figures()?;
        let view = self.control_view()?;
        Ok(RouterSummary {
            name: self.name.clone(),
            level: self.level.to_owned(),
            pid: std::process::id(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            rss_kib: crate::router::rss_kib(),
            flows,
            flow_capacity: capacity,
            subnets: (view.table.len() + self.static_subnets.len()) as u64,
            downstream_peers: view
                .peers
                .iter()
                .filter(|p| p.direction == "downstream" && p.registered)
                .count() as u64,
            upstream_registered: view.upstream_registered,
            modules: self.env.as_ref().map_or(0, |e| e.list().len() as u64),
            packets: counters.packets,
        })
    }

    fn flows(&self, query: &FlowQuery) -> Result<FlowsResponse, StateError> {
        let q = *query;
        // One pass over the table between two packet batches; memory bounded by
        // the collector. Cost: about the table's size in cache misses.
        self.dataplane
            .call(move |e, now| {
                let mut c = FlowCollector::new(q);
                for f in e.flows().export(now) {
                    c.offer(&FlowSample {
                        proto: f.key.proto,
                        client: f.key.src,
                        client_port: f.key.src_port,
                        vip: f.key.dst,
                        vip_port: f.key.dst_port,
                        next_hop: f.next_hop,
                        state: state_name(f.state),
                        packets: f.packets,
                        bytes: f.bytes,
                        age_ms: now.saturating_since(f.created).as_millis() as u64,
                        idle_ms: now.saturating_since(f.last_seen).as_millis() as u64,
                    });
                }
                let (v4, v6) = e.flows().capacity();
                c.finish((v4 + v6) as u64)
            })
            .map_err(|_| Self::stopped())
    }

    fn table(&self, query: &TableQuery) -> Result<TableResponse, StateError> {
        let view = self.control_view()?;
        let cost = |c: &Candidate| -> Option<f64> {
            if !c.up {
                return None;
            }
            self.cost
                .cost(c.load, c.route_cost)
                .ok()
                .filter(|v| v.is_finite())
        };
        let rows = |subnet: String, source: &str, candidates: &[Candidate], aggregate| {
            let costs: Vec<Option<f64>> = candidates.iter().map(cost).collect();
            let best = costs
                .iter()
                .enumerate()
                .filter_map(|(i, c)| c.map(|c| (i, c)))
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(i, _)| i);
            SubnetRow {
                subnet,
                source: source.to_owned(),
                policy: view.policy.clone(),
                aggregate,
                next_hops: candidates
                    .iter()
                    .zip(costs)
                    .enumerate()
                    .map(|(i, (c, cost))| NextHopRow {
                        address: c.addr,
                        peer: view.names.get(&c.addr).cloned(),
                        load: c.load,
                        route_cost: c.route_cost,
                        cost,
                        up: c.up,
                        best: Some(i) == best,
                    })
                    .collect(),
            }
        };
        let mut subnets: Vec<SubnetRow> = view
            .table
            .iter()
            .filter(|r| prefix_match(&r.subnet.to_string()).is_some_and(|p| query.selects(&p)))
            .map(|r| rows(r.subnet.to_string(), "table", &r.candidates, r.aggregate))
            .collect();
        let statics: Vec<VirtualSubnet> = self
            .static_subnets
            .iter()
            .filter(|s| prefix_match(&s.to_string()).is_some_and(|p| query.selects(&p)))
            .copied()
            .collect();
        if !statics.is_empty() {
            let found = self
                .dataplane
                .call(move |e, _| {
                    statics
                        .into_iter()
                        .map(|s| {
                            let c = e
                                .subnet_for(s.addr())
                                .filter(|(found, _)| *found == s)
                                .and_then(|(_, id)| e.candidates(id))
                                .map(<[_]>::to_vec)
                                .unwrap_or_default();
                            (s, c)
                        })
                        .collect::<Vec<_>>()
                })
                .map_err(|_| Self::stopped())?;
            for (s, c) in found {
                subnets.push(rows(s.to_string(), "static", &c, None));
            }
        }
        Ok(TableResponse {
            cost_model: self.cost.name().to_owned(),
            subnets,
            omitted: view.omitted,
        })
    }

    fn peers(&self) -> Result<PeersResponse, StateError> {
        let view = self.control_view()?;
        Ok(PeersResponse {
            downstream_role: view.downstream_role.to_owned(),
            peers: view.peers,
        })
    }

    fn modules(&self) -> Result<ModulesResponse, StateError> {
        let Some(env) = &self.env else {
            return Ok(ModulesResponse {
                environments: Vec::new(),
            });
        };
        let cfg = env.config();
        let c = env.counters();
        Ok(ModulesResponse {
            environments: vec![EnvironmentRow {
                name: env.name().to_owned(),
                scope: match &cfg.scope {
                    Scope::Operator => "operator".to_owned(),
                    Scope::Tenant { allowed } => format!(
                        "tenant {}",
                        allowed
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(",")
                    ),
                },
                failure_policy: match cfg.failure_policy {
                    FailurePolicy::FallBack => "fall_back",
                    FailurePolicy::RefuseNewFlows => "refuse_new_flows",
                }
                .to_owned(),
                installs: c.installs,
                refused: c.refused,
                removals: c.removals,
                modules: env.list().into_iter().map(|m| self.module_row(m)).collect(),
            }],
        })
    }

    fn queues(&self) -> Result<QueuesResponse, StateError> {
        let trees: Vec<ShareTreeRow> = self.shaping.iter().map(share_tree_row).collect();
        let note = if trees.is_empty() {
            "no [shaping] section: no share tree is configured. The Linux data path has no \
             userspace packet queue (packets go from the TUN or raw sockets through the engine \
             straight to sendmmsg), so there are no userspace scheduler shares to show."
        } else {
            "share tree as configured at start (after a SIGHUP reload see `tc -s class show`); \
             realised as kernel HTB classes. The Linux data path has no userspace packet queue."
        };
        Ok(QueuesResponse {
            share_trees: trees,
            note: note.to_owned(),
        })
    }

    fn metrics(&self) -> Result<Vec<MetricFamily>, StateError> {
        let (c, flows, capacity) = self.engine_figures()?;
        let view = self.control_view()?;
        let shell = self.dataplane.stats();
        let mut b = MetricsBuilder::new();
        let node = [("router", self.name.as_str())];
        b.gauge("pronto_up", "1 while the router answers", &node, 1.0);
        b.gauge(
            "pronto_uptime_seconds",
            "Seconds since the daemon started",
            &[],
            self.started.elapsed().as_secs_f64(),
        );
        b.gauge(
            "pronto_resident_memory_kib",
            "Resident set size, KiB",
            &[],
            crate::router::rss_kib() as f64,
        );
        b.gauge("pronto_flows", "Pinned flows", &[], flows as f64);
        b.gauge(
            "pronto_flow_capacity",
            "Flow table slots",
            &[],
            capacity as f64,
        );
        let engine = [
            ("packets", c.packets, "Packets processed by the engine"),
            (
                "forwarded_pinned",
                c.forwarded_pinned,
                "Packets forwarded along a pinned flow",
            ),
            (
                "forwarded_new",
                c.forwarded_new,
                "First packets of newly pinned flows",
            ),
            (
                "decapsulated",
                c.decapsulated,
                "Tunnel packets terminated here",
            ),
            ("delivered", c.delivered, "Packets delivered locally"),
            (
                "recover",
                c.recover,
                "Mid-flow packets of unknown flows handed to recovery",
            ),
            ("icmp_sent", c.icmp_sent, "ICMP errors originated"),
            (
                "policy_faults",
                c.policy_faults,
                "Policy calls that failed and fell back to the built-in policy",
            ),
            (
                "flows_evicted",
                c.flows_evicted,
                "Flows evicted from a full flow table",
            ),
        ];
        for (n, v, help) in engine {
            b.counter(&format!("pronto_engine_{n}_total"), help, &[], v);
        }
        for r in router_core::engine::DropReason::ALL {
            b.counter(
                "pronto_engine_drops_total",
                "Packets dropped by the engine, by reason",
                &[("reason", r.as_str())],
                c.dropped(r),
            );
        }
        let shell = serde_json::json!({
            "rx_tun": shell.rx_tun, "rx_tunnel": shell.rx_tunnel,
            "rx_truncated": shell.rx_truncated, "rx_errors": shell.rx_errors,
            "tx_packets": shell.tx_packets, "tx_failed": shell.tx_failed,
            "tx_fragments": shell.tx_fragments, "punted": shell.punted,
            "punt_dropped": shell.punt_dropped, "new_flows": shell.new_flows,
            "new_flow_dropped": shell.new_flow_dropped, "batches": shell.batches,
            "polls": shell.polls, "commands": shell.commands,
        });
        b.flatten("pronto_shell", &shell, &[]);
        // Every field of the control snapshot, present and future.
        b.flatten(
            "pronto_control",
            &view.counters,
            &["downstream_sessions", "upstream_registered"],
        );
        b.flatten("pronto_slr", &view.slr, &[]);
        if let Some(env) = &self.env {
            let ec = env.counters();
            let e = [("environment", env.name())];
            b.counter(
                "pronto_env_installs_total",
                "Modules installed (swaps included)",
                &e,
                ec.installs,
            );
            b.counter(
                "pronto_env_refused_total",
                "Module installs refused",
                &e,
                ec.refused,
            );
            b.counter(
                "pronto_env_removals_total",
                "Modules removed",
                &e,
                ec.removals,
            );
            for m in env.list() {
                let version = m.active.version.to_string();
                let l = [("module", m.name.as_str()), ("version", version.as_str())];
                let mc = m.counters;
                for (n, v, help) in [
                    ("calls", mc.calls, "Calls asked of a module"),
                    ("ok", mc.ok, "Calls a module answered"),
                    ("traps", mc.traps, "Module traps"),
                    ("timeouts", mc.timeouts, "Module fuel or epoch timeouts"),
                    ("bad_results", mc.bad_results, "Invalid module answers"),
                    (
                        "fallbacks",
                        mc.fallbacks,
                        "Answers from the previous version after a fault",
                    ),
                    ("throttled", mc.throttled, "Calls refused: CPU share spent"),
                    (
                        "quarantined_refusals",
                        mc.quarantined_refusals,
                        "Calls refused: quarantined",
                    ),
                    (
                        "unavailable",
                        mc.unavailable,
                        "Calls that could not be made",
                    ),
                    ("quarantines", mc.quarantines, "Quarantines started"),
                    (
                        "cpu_used",
                        mc.cpu_used,
                        "CPU charged to a module (fuel units)",
                    ),
                    ("swaps", mc.swaps, "Hot swaps of a module"),
                    ("rollbacks", mc.rollbacks, "Rollbacks of a module"),
                ] {
                    b.counter(&format!("pronto_module_{n}_total"), help, &l, v);
                }
            }
        }
        let s = &self.stats;
        for (n, v, help) in [
            (
                "connections",
                &s.connections,
                "Management connections accepted",
            ),
            (
                "unauthenticated",
                &s.unauthenticated,
                "Management clients refused at TLS: no certificate",
            ),
            (
                "untrusted",
                &s.untrusted,
                "Management clients refused at TLS: certificate not from the trust domain",
            ),
            (
                "handshake_failures",
                &s.handshake_failures,
                "Management TLS handshakes failed otherwise",
            ),
            (
                "timeouts",
                &s.timeouts,
                "Management connections closed by the request timeout",
            ),
            (
                "requests_ok",
                &s.requests_ok,
                "Management requests answered 2xx",
            ),
            (
                "requests_client_error",
                &s.requests_client_error,
                "Management requests answered 4xx",
            ),
            (
                "requests_server_error",
                &s.requests_server_error,
                "Management requests answered 5xx",
            ),
            ("module_ops", &s.module_ops, "Module operations done"),
            (
                "module_ops_refused",
                &s.module_ops_refused,
                "Module operations refused",
            ),
        ] {
            b.counter(
                &format!("pronto_mgmt_{n}_total"),
                help,
                &[],
                v.load(Ordering::Relaxed),
            );
        }
        let h = &self.hooks;
        b.histogram(
            "pronto_new_flow_decision_seconds",
            "Engine time of packets that pinned a new flow (classify, miss, policy, pin, encapsulate)",
            &[],
            h.new_flow_decision.snapshot(),
        );
        for (call, hist) in [
            ("select", &h.module_select),
            ("cost", &h.module_cost),
            ("aggregate", &h.module_aggregate),
        ] {
            b.histogram(
                "pronto_module_call_seconds",
                "Wall time of module calls made by the router (policy select, cost F, aggregate G)",
                &[("call", call)],
                hist.snapshot(),
            );
        }
        b.histogram(
            "pronto_queue_delay_seconds",
            "Queue delay of new-flow notices from the data path to the control loop (the queue a shortcut waits in; the Linux path has no userspace packet queue)",
            &[("queue", "new_flow_notices")],
            h.new_flow_queue.snapshot(),
        );
        Ok(b.finish())
    }

    fn module_op(&self, op: ModuleOp<'_>) -> Result<ModuleOpReport, StateError> {
        let Some(env) = &self.env else {
            return Err(Self::no_environment());
        };
        let _one = self.ops.lock().unwrap_or_else(PoisonError::into_inner);
        let r = self.module_op_locked(env, op);
        match &r {
            Ok(rep) => {
                self.stats.module_ops.fetch_add(1, Ordering::Relaxed);
                info!(op = %rep.op, module = %rep.name, active = ?rep.active, replaced = ?rep.replaced, "module operation");
            }
            Err(e) => {
                self.stats
                    .module_ops_refused
                    .fetch_add(1, Ordering::Relaxed);
                warn!(op = op.name(), error = %e, "module operation refused");
            }
        }
        r
    }
}

impl MgmtState {
    fn module_op_locked(
        &self,
        env: &Environment,
        op: ModuleOp<'_>,
    ) -> Result<ModuleOpReport, StateError> {
        let report = |name: &str, active: Option<String>, replaced: Option<String>| {
            let info = env.module(name);
            ModuleOpReport {
                op: op.name().to_owned(),
                environment: env.name().to_owned(),
                name: name.to_owned(),
                active,
                replaced,
                digest: info
                    .as_ref()
                    .map(|m| exec_env::trust::hex(&m.active.digest)),
                signer: info.map(|m| m.active.signer),
            }
        };
        match op {
            ModuleOp::Load(bytes) | ModuleOp::Swap(bytes) => {
                // The name decides load vs swap; the file is verified by install.
                let name = exec_env::format::parse(bytes)
                    .map(|f| f.manifest().name.clone())
                    .map_err(|e| manager_error(&ManagerError::Verify(VerifyError::Format(e))))?;
                let installed = env.module(&name);
                match (op, &installed) {
                    (ModuleOp::Load(_), Some(m)) => {
                        return Err(StateError::new(
                            ErrorKind::Conflict,
                            format!(
                                "module {name} is already installed (version {})",
                                m.active.version
                            ),
                            "use `pronto module swap` to replace it with a new version",
                        ));
                    }
                    (ModuleOp::Swap(_), None) => {
                        return Err(StateError::new(
                            ErrorKind::NotFound,
                            format!("module {name} is not installed, so there is nothing to swap"),
                            "use `pronto module load` to install it",
                        ));
                    }
                    _ => {}
                }
                let r = env.install(bytes).map_err(|e| manager_error(&e))?;
                Ok(report(
                    &r.name,
                    Some(r.active.to_string()),
                    r.replaced.map(|v| v.to_string()),
                ))
            }
            ModuleOp::Rollback(name) => {
                let r = env.rollback(name).map_err(|e| manager_error(&e))?;
                Ok(report(
                    &r.name,
                    Some(r.active.to_string()),
                    r.replaced.map(|v| v.to_string()),
                ))
            }
            ModuleOp::Remove(name) => {
                let was = env.module(name).map(|m| m.active.version.to_string());
                env.remove(name).map_err(|e| manager_error(&e))?;
                Ok(ModuleOpReport {
                    op: op.name().to_owned(),
                    environment: env.name().to_owned(),
                    name: name.to_owned(),
                    active: None,
                    replaced: was,
                    digest: None,
                    signer: None,
                })
            }
        }
    }
}

// ----- the HTTPS server --------------------------------------------------------------

/// A running management server; stops when dropped.
#[derive(Debug)]
pub(crate) struct MgmtServer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for MgmtServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            warn!("management server thread panicked");
        }
    }
}

fn read_pem(field: &str, p: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("{field}: cannot read {}", p.display()))
}

/// The server's TLS configuration: TLS 1.3, ring, client certificates required
/// and verified against the trust anchors.
fn server_tls(cfg: &config::Management) -> Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for (i, p) in cfg.trust_anchors.iter().enumerate() {
        let field = format!("management.trust_anchors[{i}]");
        let bytes = read_pem(&field, p)?;
        let mut n = 0;
        for c in CertificateDer::pem_slice_iter(&bytes) {
            let c = c.with_context(|| format!("{field}: bad PEM in {}", p.display()))?;
            roots
                .add(c)
                .with_context(|| format!("{field}: {} is not a usable CA", p.display()))?;
            n += 1;
        }
        if n == 0 {
            anyhow::bail!("{field}: no certificate in {}", p.display());
        }
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .context("management: client certificate verifier")?;
    let bytes = read_pem("management.cert", &cfg.cert)?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("management.cert: bad PEM in {}", cfg.cert.display()))?;
    let bytes = read_pem("management.key", &cfg.key)?;
    let key = PrivateKeyDer::from_pem_slice(&bytes)
        .with_context(|| format!("management.key: no private key in {}", cfg.key.display()))?;
    rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("management: TLS 1.3")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .context("management.cert / management.key do not form a usable identity")
}

/// Start serving `state` on `cfg.listen` from a thread of its own. Errors
/// (bind, certificates) are returned before anything runs.
pub(crate) fn spawn(cfg: &config::Management, state: Arc<MgmtState>) -> Result<MgmtServer> {
    let tls = Arc::new(server_tls(cfg)?);
    let listener = std::net::TcpListener::bind(cfg.listen)
        .with_context(|| format!("management.listen = {}: cannot listen", cfg.listen))?;
    listener
        .set_nonblocking(true)
        .context("management: nonblocking listener")?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let limit = cfg.max_connections;
    let timeout = cfg.request_timeout;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(4)
        .thread_name("pronto-mgmt")
        .enable_all()
        .build()
        .context("management: starting its runtime")?;
    let addr = cfg.listen;
    let thread = std::thread::Builder::new()
        .name("pronto-mgmt".into())
        .spawn(move || {
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        warn!(error = %e, "management listener unusable");
                        return;
                    }
                };
                tokio::select! {
                    () = serve(listener, tls, state, limit, timeout) => {}
                    _ = stop_rx => {}
                }
            });
            rt.shutdown_timeout(Duration::from_secs(1));
        })
        .context("spawning the management thread")?;
    info!(%addr, "management API listening (mutual TLS)");
    Ok(MgmtServer {
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<MgmtState>,
    limit: usize,
    timeout: Duration,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(limit));
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        // Wait for a free slot before accepting: excess clients queue in the
        // kernel's backlog instead of costing memory here.
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "management accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        state.stats.connections.fetch_add(1, Ordering::Relaxed);
        let acceptor = acceptor.clone();
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let _permit = permit;
            let served =
                tokio::time::timeout(timeout, connection(tcp, peer, acceptor, &state)).await;
            if served.is_err() {
                state.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                debug!(%peer, "management connection timed out");
            }
        });
    }
}

async fn connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    state: &Arc<MgmtState>,
) {
    let tls = match acceptor.accept(tcp).await {
        Ok(s) => s,
        Err(e) => {
            let kind = e
                .get_ref()
                .and_then(|i| i.downcast_ref::<rustls::Error>())
                .cloned();
            let s = &state.stats;
            match kind {
                Some(rustls::Error::NoCertificatesPresented) => {
                    s.unauthenticated.fetch_add(1, Ordering::Relaxed);
                    warn!(%peer, "management client refused: no client certificate");
                }
                Some(rustls::Error::InvalidCertificate(reason)) => {
                    s.untrusted.fetch_add(1, Ordering::Relaxed);
                    warn!(%peer, ?reason, "management client refused: untrusted certificate");
                }
                _ => {
                    s.handshake_failures.fetch_add(1, Ordering::Relaxed);
                    debug!(%peer, error = %e, "management TLS handshake failed");
                }
            }
            return;
        }
    };
    let st = Arc::clone(state);
    let service = service_fn(move |req| {
        let st = Arc::clone(&st);
        async move { Ok::<_, std::convert::Infallible>(request(req, st, peer).await) }
    });
    let r = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(tls), service)
        .await;
    if let Err(e) = r {
        debug!(%peer, error = %e, "management connection ended with an error");
    }
}

async fn request(
    req: hyper::Request<Incoming>,
    state: Arc<MgmtState>,
    peer: SocketAddr,
) -> hyper::Response<Full<Bytes>> {
    let method = qre::Method::from_name(req.method().as_str());
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let body = match Limited::new(req.into_body(), qre::api::MAX_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let too_big = e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            let r = if too_big {
                qre::Response::error(
                    413,
                    "too_large",
                    format!("request body exceeds {} bytes", qre::api::MAX_BODY),
                    "module files must be at most 4 MiB",
                )
            } else {
                qre::Response::error(
                    400,
                    "bad_request",
                    format!("cannot read the body: {e}"),
                    "retry",
                )
            };
            return respond(&state, r, &path, peer);
        }
    };
    let st = Arc::clone(&state);
    let p = path.clone();
    let answer = tokio::task::spawn_blocking(move || {
        qre::api::handle(
            &*st,
            &qre::Request {
                method,
                path: &p,
                query: &query,
                body: &body,
            },
        )
    })
    .await
    .unwrap_or_else(|e| {
        qre::Response::error(
            500,
            "internal",
            format!("request handler failed: {e}"),
            "see the router's log",
        )
    });
    respond(&state, answer, &path, peer)
}

fn respond(
    state: &MgmtState,
    r: qre::Response,
    path: &str,
    peer: SocketAddr,
) -> hyper::Response<Full<Bytes>> {
    let counter = match r.status {
        200..=299 => &state.stats.requests_ok,
        400..=499 => &state.stats.requests_client_error,
        _ => &state.stats.requests_server_error,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    debug!(%peer, path, status = r.status, "management request");
    let mut resp = hyper::Response::new(Full::new(Bytes::from(r.body)));
    *resp.status_mut() =
        hyper::StatusCode::from_u16(r.status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = hyper::header::HeaderValue::from_str(r.content_type) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use router_core::policy::{Level, SubnetId, SumCost};
    use signaling::{Epoch, NodeName, SlrConfig};

    #[derive(Debug)]
    struct First;

    impl Policy for First {
        fn name(&self) -> &str {
            "first"
        }
        fn select(&self, _: &FlowRequest, _: &[Candidate]) -> Result<Decision, PolicyError> {
            Ok(Decision::Select(0))
        }
    }

    fn request() -> FlowRequest {
        FlowRequest {
            key: router_core::FlowKey {
                proto: 6,
                src: "172.16.0.2".parse().unwrap(),
                src_port: 1,
                dst: "192.200.0.10".parse().unwrap(),
                dst_port: 80,
            },
            subnet: SubnetId(0),
            level: Level::System,
        }
    }

    #[test]
    fn timed_wrappers_answer_like_the_module_and_record_each_call() {
        let hooks = Arc::new(Hooks::default());
        let p = hooks.timed_policy(Arc::new(First));
        assert_eq!(p.name(), "first");
        let c = [Candidate {
            addr: "10.0.0.1".parse().unwrap(),
            load: 0.5,
            route_cost: 1.0,
            up: true,
        }];
        assert_eq!(p.select(&request(), &c).unwrap(), Decision::Select(0));
        assert_eq!(p.select(&request(), &c).unwrap(), Decision::Select(0));
        assert_eq!(hooks.module_select.snapshot().count, 2);
        let f = hooks.timed_cost(Arc::new(SumCost));
        assert_eq!(f.cost(0.5, 1.0).unwrap(), 1.5);
        assert_eq!(f.aggregate(&c).unwrap(), 0.5);
        assert_eq!(hooks.module_cost.snapshot().count, 1);
        assert_eq!(hooks.module_aggregate.snapshot().count, 1);
        hooks.new_flow_decision(1_500);
        assert_eq!(hooks.new_flow_decision.snapshot().count, 1);
    }

    #[test]
    fn notice_delay_uses_the_calibrated_offset_and_never_goes_negative() {
        let h = Hooks::default();
        // Data path clock 5 ms ahead of the control clock.
        h.clock_offset_ns.store(5_000_000, Ordering::Relaxed);
        h.notice_taken(
            Instant::from_nanos(15_000_000),
            Instant::from_nanos(10_200_000),
        );
        let s = h.new_flow_queue.snapshot();
        assert_eq!(s.count, 1);
        assert!((s.sum - 200e-6).abs() < 1e-9, "{}", s.sum);
        // A notice "from the future" (calibration error) counts as no delay.
        h.notice_taken(Instant::from_nanos(99_000_000), Instant::from_nanos(1));
        assert_eq!(h.new_flow_queue.snapshot().counts[0], 1);
    }

    #[test]
    fn control_view_names_peers_from_the_table_with_their_last_update() {
        let mut slr = SlrControl::new(
            SlrConfig::new(Level::System),
            Arc::new(SumCost),
            Instant::ZERO,
        );
        let a = NodeName::new("site-a.lab").unwrap();
        slr.table_mut()
            .register(&a, "10.1.0.2".parse().unwrap(), 0.5, Epoch(7))
            .unwrap();
        let sessions = vec![
            SessionInfo {
                direction: "downstream".into(),
                remote: "10.1.0.2:4000".parse().unwrap(),
                name: Some("site-a.lab".into()),
                registered: true,
                last_update: Some(Instant::from_millis(1_000)),
                updates: 3,
            },
            SessionInfo {
                direction: "upstream".into(),
                remote: "10.9.0.1:7800".parse().unwrap(),
                name: Some("net.lab".into()),
                registered: false,
                last_update: None,
                updates: 0,
            },
        ];
        let v = control_view(
            &slr,
            sessions,
            serde_json::json!({"registrations": 1}),
            Instant::from_millis(1_250),
        );
        assert_eq!(v.downstream_role, "site");
        assert_eq!(v.peers[0].direction, "upstream", "upstream first");
        assert_eq!(v.peers[0].tunnel, None);
        let a = &v.peers[1];
        assert_eq!(a.tunnel, Some("10.1.0.2".parse().unwrap()));
        assert_eq!(a.up, Some(true));
        assert_eq!(a.route_cost, Some(0.5));
        assert_eq!(a.last_update_ms_ago, Some(250));
        assert_eq!(a.updates, 3);
        assert_eq!(
            v.names
                .get(&"10.1.0.2".parse().unwrap())
                .map(String::as_str),
            Some("site-a.lab")
        );
        assert!(v.table.is_empty() && v.omitted == 0);
        assert_eq!(v.slr["table"]["registrations"], 1);
    }

    #[test]
    fn share_trees_show_each_class_share_rate_and_subnets() {
        use router_core::linux::tc::{ShareClassConfig, ShareTreeConfig};
        let tree = ShareTreeConfig::new(100_000_000)
            .with_class(ShareClassConfig::new(16, 20))
            .with_class(ShareClassConfig::new(32, 80))
            .with_filter("192.200.0.0/24".parse().unwrap(), 16)
            .with_default(16);
        let row = share_tree_row(&config::Shaping {
            link: "eth1".into(),
            tree,
        });
        assert_eq!(row.link, "eth1");
        assert_eq!(row.rate_bps, 100_000_000);
        let c16 = &row.classes[0];
        assert_eq!((c16.handle.as_str(), c16.weight), ("1:10", 20));
        assert!((c16.share - 0.2).abs() < 1e-9);
        assert_eq!(c16.rate_bps, 20_000_000);
        assert_eq!(c16.subnets, vec!["192.200.0.0/24".to_owned()]);
        assert!(c16.default && !row.classes[1].default);
        assert!((row.classes[1].share - 0.8).abs() < 1e-9);
    }

    #[test]
    fn manager_errors_map_to_statuses_with_hints_that_say_what_to_do() {
        let e = manager_error(&ManagerError::Verify(VerifyError::Unsigned));
        assert_eq!(e.kind, ErrorKind::Refused);
        assert!(e.hint.contains("pronto module sign"));
        let e = manager_error(&ManagerError::NoPreviousVersion { name: "x".into() });
        assert_eq!(e.kind.status(), 409);
        let e = manager_error(&ManagerError::UnknownModule { name: "x".into() });
        assert_eq!(e.kind.status(), 404);
        assert!(e.hint.contains("pronto query modules"));
    }
}
