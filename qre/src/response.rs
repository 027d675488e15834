//! The JSON schema of the management API: one serde type per answer. Field names
//! are the wire names; `Option` fields are `null` when unknown; floating costs
//! that are infinite ("unreachable") are `null` too, since JSON has no infinity.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::metrics::MetricFamily;
use crate::query::FlowQuery;

/// `GET /v1/summary`: who this router is and its main figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouterSummary {
    /// Node name (a dNSName of its certificate).
    pub name: String,
    /// `network`, `system` or `site`.
    pub level: String,
    /// Daemon process id.
    pub pid: u32,
    /// Milliseconds since the daemon started.
    pub uptime_ms: u64,
    /// Resident memory, KiB.
    pub rss_kib: u64,
    /// Pinned flows now.
    pub flows: u64,
    /// Flow table capacity (IPv4 + IPv6 slots).
    pub flow_capacity: u64,
    /// Virtual subnets the engine serves.
    pub subnets: u64,
    /// Registered lower-level peers.
    pub downstream_peers: u64,
    /// Whether the session to the upper level is registered.
    pub upstream_registered: bool,
    /// Installed modules over all environments.
    pub modules: u64,
    /// Engine packets processed.
    pub packets: u64,
    /// Which path forwards pinned flows, and why: `bpf (tc ingress of ...)`
    /// or `userspace (reason)`.
    #[serde(default)]
    pub fast_path: String,
    /// Packets of pinned flows the kernel fast path forwarded (the engine's
    /// own are in `packets`).
    #[serde(default)]
    pub fast_path_forwarded: u64,
}

/// One pinned flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRow {
    /// IP protocol number (6 TCP, 17 UDP).
    pub proto: u8,
    /// Client address.
    pub client: IpAddr,
    /// Client port.
    pub client_port: u16,
    /// VIP.
    pub vip: IpAddr,
    /// VIP port.
    pub vip_port: u16,
    /// Tunnel endpoint the flow is pinned to.
    pub next_hop: IpAddr,
    /// TCP-aware state: `syn_seen`, `established`, `closing`, `udp`, ...
    pub state: String,
    /// Packets forwarded.
    pub packets: u64,
    /// Bytes forwarded.
    pub bytes: u64,
    /// Milliseconds since pinned (second resolution).
    pub age_ms: u64,
    /// Milliseconds since its last packet.
    pub idle_ms: u64,
}

/// Flows of one key (VIP, client or next hop).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupCount {
    /// The address.
    pub key: IpAddr,
    /// Matching flows.
    pub flows: u64,
}

/// Counts by key, largest first; at most [`crate::query::MAX_GROUPS`] keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupCounts {
    /// Counted keys.
    pub groups: Vec<GroupCount>,
    /// Matching flows of keys beyond the bound.
    pub other: u64,
}

/// `GET /v1/flows`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowsResponse {
    /// The query answered (its limit capped).
    pub query: FlowQuery,
    /// Flow table capacity.
    pub capacity: u64,
    /// Flows in the table when scanned.
    pub scanned: u64,
    /// Flows passing the filters.
    pub matched: u64,
    /// More flows matched than the page holds.
    pub truncated: bool,
    /// Matching flows per VIP.
    pub by_vip: GroupCounts,
    /// Matching flows per client.
    pub by_client: GroupCounts,
    /// Matching flows per next hop.
    pub by_next_hop: GroupCounts,
    /// The first `query.limit` matching flows, in table order.
    pub flows: Vec<FlowRow>,
}

/// One next hop of a subnet, as the engine chooses among them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NextHopRow {
    /// Tunnel endpoint.
    pub address: IpAddr,
    /// The registered peer behind it, when known.
    pub peer: Option<String>,
    /// Load the engine sees (the lower level's advertised load).
    pub load: f64,
    /// Route cost from this router.
    pub route_cost: f64,
    /// `F(load, route_cost)` by the router's cost model; `null` when
    /// unreachable or not computable.
    pub cost: Option<f64>,
    /// Usable for new flows.
    pub up: bool,
    /// The cheapest usable next hop (what a least-cost choice takes).
    pub best: bool,
}

/// One virtual subnet of the next-hop table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubnetRow {
    /// The prefix.
    pub subnet: String,
    /// `table` (learned from state updates) or `static` (configuration).
    pub source: String,
    /// Policy choosing among the next hops for new flows.
    pub policy: String,
    /// Cost model (F, G) of this subnet.
    #[serde(default)]
    pub cost_model: String,
    /// `M_k = G(...)` advertised upward; `null` when nothing is usable.
    pub aggregate: Option<f64>,
    /// Next hops, cheapest first.
    pub next_hops: Vec<NextHopRow>,
}

/// `GET /v1/table`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableResponse {
    /// Cost model (F, G) of subnets no cost binding names.
    pub cost_model: String,
    /// Subnets, by prefix.
    pub subnets: Vec<SubnetRow>,
    /// Subnets left out by the bound ([`crate::api::MAX_TABLE_ROWS`]).
    pub omitted: u64,
}

/// One signalling peer (an upper-level router, a lower-level router or a host).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerRow {
    /// Its certificate name, once registered.
    pub name: Option<String>,
    /// `upstream` or `downstream`.
    pub direction: String,
    /// Its signalling address.
    pub remote: String,
    /// Registered (hello checked).
    pub registered: bool,
    /// The table holds it as up (downstream only).
    pub up: Option<bool>,
    /// Its tunnel endpoint (downstream only).
    pub tunnel: Option<IpAddr>,
    /// Route cost to it (downstream only).
    pub route_cost: Option<f64>,
    /// Milliseconds since its last state update arrived; `null` before the first.
    pub last_update_ms_ago: Option<u64>,
    /// Sequence number of its last accepted state update.
    pub last_seq: Option<u64>,
    /// State updates received from it.
    pub updates: u64,
}

/// `GET /v1/peers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeersResponse {
    /// Level of the lower peers: `site` routers, `system` routers or `host`s.
    pub downstream_role: String,
    /// Every session, upstream first.
    pub peers: Vec<PeerRow>,
}

/// One version of a module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRow {
    /// Semantic version.
    pub version: String,
    /// Signer certificate subject.
    pub signer: String,
    /// SHA-256 of the module file, hex.
    pub digest: String,
    /// `serving`, `standby` or `quarantined`.
    pub state: String,
    /// Milliseconds of quarantine left.
    pub quarantine_ms: Option<u64>,
}

/// One installed module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleRow {
    /// Module name.
    pub name: String,
    /// The active version.
    pub active: VersionRow,
    /// The previous version (fallback and rollback target).
    pub previous: Option<VersionRow>,
    /// What the router binds it to (`policy 192.200.0.0/24`, `cost`), if anything.
    pub bound: Vec<String>,
    /// Calls asked of it.
    pub calls: u64,
    /// Calls answered.
    pub ok: u64,
    /// Module faults: traps + timeouts + bad results.
    pub faults: u64,
    /// Traps.
    pub traps: u64,
    /// Fuel or epoch timeouts.
    pub timeouts: u64,
    /// Invalid answers.
    pub bad_results: u64,
    /// Answers from the previous version after the active one failed.
    pub fallbacks: u64,
    /// Calls refused: CPU share spent.
    pub throttled: u64,
    /// Calls refused: quarantined.
    pub quarantined_refusals: u64,
    /// Calls that could not be made (no version, subnet not governed, ...).
    pub unavailable: u64,
    /// Quarantines started.
    pub quarantines: u64,
    /// CPU charged, in fuel units (wall-clock ns when fuel is off).
    pub cpu_used: u64,
    /// Installs that replaced an active version.
    pub swaps: u64,
    /// Rollbacks.
    pub rollbacks: u64,
}

/// One execution environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvironmentRow {
    /// Environment name.
    pub name: String,
    /// `operator` or `tenant [subnets]`.
    pub scope: String,
    /// `fall_back` or `refuse_new_flows`.
    pub failure_policy: String,
    /// Modules installed (swaps included).
    pub installs: u64,
    /// Installs refused (signature, compile, scope, limits).
    pub refused: u64,
    /// Modules removed.
    pub removals: u64,
    /// Bindings refused (unknown module, subnet outside the environment or the
    /// module's scope, wrong role).
    #[serde(default)]
    pub bind_refused: u64,
    /// Its modules, by name.
    pub modules: Vec<ModuleRow>,
}

/// `GET /v1/modules`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModulesResponse {
    /// Environments (empty when the router runs no modules).
    pub environments: Vec<EnvironmentRow>,
}

/// One class of a share tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShareClassRow {
    /// Class id.
    pub id: u16,
    /// Kernel handle, e.g. `1:10`.
    pub handle: String,
    /// Weight.
    pub weight: u32,
    /// Share of the link when every class is busy (weight / sum of weights).
    pub share: f64,
    /// Guaranteed rate, bit/s (share of the link rate).
    pub rate_bps: u64,
    /// VIP source prefixes classified into it.
    pub subnets: Vec<String>,
    /// Whether unclassified traffic goes here.
    pub default: bool,
}

/// A share tree on one egress link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShareTreeRow {
    /// Egress link.
    pub link: String,
    /// Where it is realised: `kernel-htb`.
    pub realisation: String,
    /// Link rate, bit/s.
    pub rate_bps: u64,
    /// Classes.
    pub classes: Vec<ShareClassRow>,
}

/// `GET /v1/queues`: queues and scheduler shares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueuesResponse {
    /// Configured share trees (empty when none is).
    pub share_trees: Vec<ShareTreeRow>,
    /// The userspace egress stage (`[scheduler]`), when one runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<EgressRow>,
    /// What exists and what does not, in words.
    pub note: String,
}

/// The userspace egress stage: its link scheduler and classes (counters since
/// start; two answers a second apart give the shares).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressRow {
    /// The link it schedules.
    pub link: String,
    /// The rate it paces to, bit/s.
    pub rate_bps: u64,
    /// The rank function now (`sfq`, or `module@version`).
    pub rank: String,
    /// The bound scheduler module, if any (else a built-in ranks).
    pub module: Option<String>,
    /// Rank function swaps.
    pub swaps: u64,
    /// Rank calls that failed (the packet was ranked at the class's virtual time).
    pub rank_faults: u64,
    /// Packets queued now.
    pub queued_packets: u64,
    /// Bytes queued now.
    pub queued_bytes: u64,
    /// Per class.
    pub classes: Vec<EgressClassRow>,
}

/// One class of the egress stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressClassRow {
    /// The configured id.
    pub id: u16,
    /// SFQ weight.
    pub weight: u32,
    /// Priority (0 first).
    pub priority: u8,
    /// Source prefixes classified into it.
    pub sources: Vec<String>,
    /// Packets enqueued.
    pub enqueued: u64,
    /// Packets sent.
    pub sent_packets: u64,
    /// Bytes sent.
    pub sent_bytes: u64,
    /// Packets dropped (tail drop and send errors).
    pub drops: u64,
    /// Packets queued now.
    pub queued: u64,
}

/// `GET /v1/counters`: every counter, gauge and histogram, as metric families
/// (the same data `/metrics` renders as Prometheus text).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CountersResponse {
    /// Families by name.
    pub families: Vec<MetricFamily>,
}

/// Answer of a module operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleOpReport {
    /// `load`, `swap`, `rollback`, `remove`, `bind` or `unbind`.
    pub op: String,
    /// Environment.
    pub environment: String,
    /// Module name.
    pub name: String,
    /// Version now active (`null` after a remove).
    pub active: Option<String>,
    /// Version it replaced.
    pub replaced: Option<String>,
    /// SHA-256 of the active version, hex.
    pub digest: Option<String>,
    /// Signer of the active version.
    pub signer: Option<String>,
    /// The binding a bind or unbind changed (`policy 192.200.1.0/24`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<String>,
}
