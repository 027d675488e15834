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
//! required by the TLS handshake (a client without one is refused there); each
//! connection handshakes on a task of its own within
//! `[management.handshakes] timeout_ms`, admitted only while fewer than
//! `max_pending` handshakes (and `max_pending_per_source` from its address) are
//! in progress, otherwise closed at once, so idle TCP connections cannot hold up
//! an operator. The certificate's role decides what it may ask (`authz`:
//! queries need viewer or operator, module operations operator; router and host
//! certificates are neither unless `[management] operators` / `viewers` names
//! them). After the handshake, `max_connections` requests served at once, one
//! request per connection, each within `request_timeout` (its own deadline);
//! bodies at most [`qre::api::MAX_BODY`].
//!
//! Files by job: `server` (TLS and HTTP), `authz` (roles), `query` (qre's answers: summary,
//! flows, table, peers, modules, queues), `modules` (module operations, which
//! the operator environment decides and reports), `metrics` (the Prometheus
//! adapter), `hooks` (latency histograms) and `state` (everything read through
//! the data path handle or asked of the control loop).

mod authz;
mod hooks;
mod metrics;
mod modules;
mod query;
mod server;
mod state;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use exec_env::manager::Environment;
use router_core::VirtualSubnet;
use router_core::linux::DataplaneHandle;

use crate::config;
use crate::router::egress::Egress;
use crate::router::module_state::ModuleStore;

pub(crate) use authz::admission;
pub(crate) use hooks::Hooks;
pub(crate) use modules::answer_module_op;
pub(crate) use server::{MgmtServer, server_tls, spawn};
pub(crate) use state::{ControlLink, ControlRequest, SessionInfo, control_view};

/// Counters of the management server itself.
#[derive(Debug, Default)]
struct ServerStats {
    connections: AtomicU64,
    handshakes: AtomicU64,
    handshake_timeouts: AtomicU64,
    refused_pending_limit: AtomicU64,
    refused_per_source_limit: AtomicU64,
    unauthenticated: AtomicU64,
    untrusted: AtomicU64,
    handshake_failures: AtomicU64,
    timeouts: AtomicU64,
    requests_ok: AtomicU64,
    requests_client_error: AtomicU64,
    requests_server_error: AtomicU64,
    module_ops: AtomicU64,
    module_ops_refused: AtomicU64,
    /// Operations applied in the running router that the state directory
    /// could not keep (or bindings undone because it could not).
    state_write_failures: AtomicU64,
    /// Requests refused for want of a role, by [`authz::Forbidden`] index.
    forbidden: [AtomicU64; authz::Forbidden::ALL.len()],
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
    /// The execution environments (the operator's first when `[modules]` is
    /// configured, then the tenants'), each with the directory where module
    /// operations and bindings are kept for a restart.
    pub(crate) envs: Vec<(Arc<Environment>, Arc<ModuleStore>)>,
    /// The userspace egress stage, when `[scheduler]` is configured.
    pub(crate) egress: Option<Arc<Egress>>,
    /// `[shaping]` as configured at start.
    pub(crate) shaping: Option<config::Shaping>,
    /// Statically configured subnets.
    pub(crate) static_subnets: Vec<VirtualSubnet>,
    /// Latency histograms.
    pub(crate) hooks: Arc<Hooks>,
    /// Module operations one at a time, so their log lines and counters follow
    /// the order the environment applied them in.
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
    /// The environments and their state directories.
    pub(crate) envs: Vec<(Arc<Environment>, Arc<ModuleStore>)>,
    /// The userspace egress stage, when `[scheduler]` is configured.
    pub(crate) egress: Option<Arc<Egress>>,
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
        Self {
            name: p.name,
            level: p.level,
            started: std::time::Instant::now(),
            dataplane: p.dataplane,
            control: p.control,
            envs: p.envs,
            egress: p.egress,
            shaping: p.shaping,
            static_subnets: p.static_subnets,
            hooks: p.hooks,
            ops: Mutex::new(()),
            stats: ServerStats::default(),
        }
    }
}
