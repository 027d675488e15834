//! The router's counters as one snapshot: written to the stats file by its own
//! thread, and read by the management API's metrics (`ControlSnapshot`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use exec_env::manager::Environment;
use router_core::api::RouterApi;
use router_core::engine::{DropReason, Engine, EngineCounters};
use router_core::linux::ShellStats;
use router_core::{Instant, VirtualSubnet};
use serde::Serialize;
use signaling::node::Node;

use super::shell::{RouterShell, ShellCounters};
use super::{level_name, rss_kib, write_snapshot};

/// Flows listed in the stats snapshot (enough for the lab's connections).
const FLOW_SAMPLE: usize = 256;

#[derive(Debug, Serialize)]
struct CandidateSnapshot {
    address: String,
    load: f64,
    route_cost: f64,
    up: bool,
}

#[derive(Debug, Serialize)]
struct SubnetSnapshot {
    subnet: String,
    candidates: Vec<CandidateSnapshot>,
}

#[derive(Debug, Default, Serialize)]
struct EngineSnapshot {
    packets: u64,
    forwarded_pinned: u64,
    forwarded_new: u64,
    decapsulated: u64,
    delivered: u64,
    recover: u64,
    icmp_sent: u64,
    policy_faults: u64,
    flows_evicted: u64,
    flows: u64,
    dropped_total: u64,
    drops: BTreeMap<&'static str, u64>,
}

impl EngineSnapshot {
    fn new(c: &EngineCounters, flows: usize) -> Self {
        Self {
            packets: c.packets,
            forwarded_pinned: c.forwarded_pinned,
            forwarded_new: c.forwarded_new,
            decapsulated: c.decapsulated,
            delivered: c.delivered,
            recover: c.recover,
            icmp_sent: c.icmp_sent,
            policy_faults: c.policy_faults,
            flows_evicted: c.flows_evicted,
            flows: flows as u64,
            dropped_total: c.dropped_total(),
            drops: DropReason::ALL
                .iter()
                .map(|r| (r.as_str(), c.dropped(*r)))
                .collect(),
        }
    }
}

#[derive(Debug, Serialize)]
struct ShellSnapshot {
    rx_tun: u64,
    tun_reads: u64,
    rx_tunnel: u64,
    rx_truncated: u64,
    rx_errors: u64,
    tx_packets: u64,
    tx_failed: u64,
    tx_fragments: u64,
    punted: u64,
    punt_dropped: u64,
    new_flows: u64,
    new_flow_dropped: u64,
    released: u64,
}

impl From<ShellStats> for ShellSnapshot {
    fn from(s: ShellStats) -> Self {
        Self {
            rx_tun: s.rx_tun,
            tun_reads: s.tun_reads,
            rx_tunnel: s.rx_tunnel,
            rx_truncated: s.rx_truncated,
            rx_errors: s.rx_errors,
            tx_packets: s.tx_packets,
            tx_failed: s.tx_failed,
            tx_fragments: s.tx_fragments,
            punted: s.punted,
            punt_dropped: s.punt_dropped,
            new_flows: s.new_flows,
            new_flow_dropped: s.new_flow_dropped,
            released: s.released,
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct ControlSnapshot {
    registrations: u64,
    unexpected_roles: u64,
    table_updates: u64,
    engine_refusals: u64,
    advertisements: u64,
    updates_ignored: u64,
    shortcuts_originated: u64,
    shortcuts_installed: u64,
    shortcuts_refused: u64,
    shortcuts_relayed: u64,
    shortcuts_unsent: u64,
    ignored_events: u64,
    downstream_sessions: u64,
    upstream_registered: bool,
    messages_dropped: u64,
    embryonic_unpinned: u64,
    /// Tunnel objects received, by how many packets of the flow had gone
    /// through the lower SLR when it arrived (1, 2, ..., 8 or more).
    shortcut_lag_packets: Vec<u64>,
    sessions_refused: u64,
    tls_untrusted: u64,
    tls_failures: u64,
    /// TCP connections accepted at `listen`.
    tls_accepted: u64,
    /// TLS handshakes completed (listener and connector).
    tls_handshakes: u64,
    /// Handshakes closed at their deadline.
    tls_timeouts: u64,
    /// Connections closed at once: too many handshakes in progress.
    tls_refused_pending_limit: u64,
    /// Connections closed at once: too many handshakes in progress from their
    /// source address.
    tls_refused_per_source_limit: u64,
    /// Mid-flow packets of lost flows held until their flow was re-created.
    pub(crate) held_packets: u64,
    pub(crate) held_released: u64,
    pub(crate) held_expired: u64,
    pub(crate) held_refused_full: u64,
    pub(crate) held_replaced: u64,
    /// Authenticated sessions closed because the peer sent bytes that are not a
    /// signalling frame.
    tls_garbage_frames: u64,
    /// Authenticated sessions closed because the peer sent a message its state
    /// does not allow.
    tls_protocol_violations: u64,
}

/// The TLS shell's counters, listener and connector summed.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct TlsTotals {
    pub(crate) accepted: u64,
    pub(crate) handshakes: u64,
    pub(crate) timeouts: u64,
    pub(crate) refused_pending_limit: u64,
    pub(crate) refused_per_source_limit: u64,
    pub(crate) untrusted: u64,
    pub(crate) failures: u64,
    pub(crate) garbage_frames: u64,
    pub(crate) protocol_violations: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct RouterSnapshot {
    /// Read by the writer thread (map reads stay off the dataplane thread).
    #[serde(skip)]
    fast_path_info: Option<router_core::linux::fastpath::FastPathInfo>,
    /// Which path forwards pinned flows and the kernel program's counters.
    fast_path: Option<FastPathFile>,
    name: String,
    level: &'static str,
    pid: u32,
    uptime_ms: u64,
    rss_kib: u64,
    engine: EngineSnapshot,
    shell: ShellSnapshot,
    control: ControlSnapshot,
    subnets: Vec<SubnetSnapshot>,
    /// Failure recovery counters (crate::recovery).
    recovery: RecoverySnapshot,
    /// Up to 256 flows (key, next hop): tests check that a flow did not move.
    flows: Vec<FlowSnapshot>,
    modules: Vec<ModuleSnapshot>,
}

#[derive(Debug, Serialize)]
pub(crate) struct ModuleSnapshot {
    environment: String,
    name: String,
    version: String,
    calls: u64,
    ok: u64,
    faults: u64,
    fallbacks: u64,
    unavailable: u64,
    throttled: u64,
    quarantines: u64,
}

pub(crate) fn module_snapshots(env: &Environment) -> Vec<ModuleSnapshot> {
    env.list()
        .into_iter()
        .map(|m| ModuleSnapshot {
            environment: env.name().to_owned(),
            version: m.active.version.to_string(),
            calls: m.counters.calls,
            ok: m.counters.ok,
            faults: m.counters.faults(),
            fallbacks: m.counters.fallbacks,
            unavailable: m.counters.unavailable,
            throttled: m.counters.throttled,
            quarantines: m.counters.quarantines,
            name: m.name,
        })
        .collect()
}

impl ControlSnapshot {
    pub(crate) fn new(
        node: &Node,
        downstream_sessions: u64,
        shell: ShellCounters,
        tls: TlsTotals,
    ) -> Self {
        let slr = node.control();
        let st = slr.stats();
        let nc = node.counters();
        Self {
            registrations: st.registrations,
            unexpected_roles: st.unexpected_roles,
            table_updates: st.table_updates,
            engine_refusals: st.engine_refusals,
            advertisements: st.advertisements,
            updates_ignored: st.updates_ignored,
            shortcuts_originated: st.shortcuts_originated,
            shortcuts_installed: st.shortcuts_installed,
            shortcuts_refused: st.shortcuts_refused,
            shortcuts_relayed: st.shortcuts_relayed,
            shortcuts_unsent: st.shortcuts_unsent,
            ignored_events: st.ignored_events,
            downstream_sessions,
            upstream_registered: slr.upstream_registered(),
            messages_dropped: shell.messages_dropped,
            embryonic_unpinned: nc.embryonic_unpinned,
            shortcut_lag_packets: nc.shortcut_lag.to_vec(),
            sessions_refused: shell.sessions_refused + nc.sessions_refused,
            tls_untrusted: tls.untrusted,
            tls_failures: tls.failures,
            tls_accepted: tls.accepted,
            tls_handshakes: tls.handshakes,
            tls_timeouts: tls.timeouts,
            tls_refused_pending_limit: tls.refused_pending_limit,
            tls_refused_per_source_limit: tls.refused_per_source_limit,
            held_packets: nc.hold.held,
            held_released: nc.hold.released,
            held_expired: nc.hold.expired,
            held_refused_full: nc.hold.refused_full,
            held_replaced: nc.hold.replaced,
            tls_garbage_frames: tls.garbage_frames,
            tls_protocol_violations: tls.protocol_violations,
        }
    }
}

fn subnet_rows(node: &Node) -> Vec<SubnetSnapshot> {
    let e = node.engine();
    let served: Vec<VirtualSubnet> = e.subnets().collect();
    served
        .into_iter()
        .map(|s| SubnetSnapshot {
            subnet: s.to_string(),
            candidates: e
                .subnet_for(s.addr())
                .filter(|(found, _)| *found == s)
                .and_then(|(_, id)| e.candidates(id))
                .unwrap_or(&[])
                .iter()
                .map(|c| CandidateSnapshot {
                    address: c.addr.to_string(),
                    load: c.load,
                    route_cost: c.route_cost,
                    up: c.up,
                })
                .collect(),
        })
        .collect()
}

/// The whole snapshot, read on the dataplane thread (between two batches).
pub(crate) fn router_snapshot(shell: &RouterShell, io: ShellStats, now: Instant) -> RouterSnapshot {
    let node = &shell.node;
    let e = node.engine();
    RouterSnapshot {
        fast_path_info: shell.io_handle().fast_path().cloned(),
        fast_path: None,
        name: String::new(),
        level: level_name(node.level()),
        pid: std::process::id(),
        uptime_ms: 0,
        rss_kib: 0,
        engine: EngineSnapshot::new(&e.counters(), e.flows().len()),
        shell: io.into(),
        control: shell.control_snapshot(),
        subnets: subnet_rows(node),
        recovery: recovery_snapshot(shell),
        flows: flow_sample(e, now),
        modules: Vec::new(),
    }
}

/// `[fast_path]` of a stats file (routers and hosts): which path, why, and
/// the kernel program's counters and map upkeep.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FastPathFile {
    /// `bpf` or `userspace`.
    pub(crate) path: &'static str,
    /// The path and why (links, or the reason for userspace).
    pub(crate) status: String,
    /// Packets the kernel program forwarded (router) or decapsulated (host).
    pub(crate) forwarded: u64,
    /// Every counter of the program by name.
    pub(crate) counters: BTreeMap<&'static str, u64>,
    /// The router's map upkeep.
    pub(crate) maps: Option<FastPathMapsFile>,
}

/// `[fast_path.maps]`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FastPathMapsFile {
    pins: u64,
    unpins: u64,
    errors: u64,
    resyncs: u64,
    idle_checked: u64,
    idle_expired: u64,
    state_events: u64,
    /// Kernel id of the IPv4 flow map (`bpftool map dump id N`).
    flows_v4_id: u32,
    /// Kernel id of the IPv6 flow map.
    flows_v6_id: u32,
}

impl FastPathFile {
    /// Before the fast path is up (`auto` loads it beside the start): the
    /// engine forwards everything meanwhile.
    fn loading() -> Self {
        Self {
            path: "userspace",
            status: "userspace (the eBPF fast path is loading)".into(),
            forwarded: 0,
            counters: BTreeMap::new(),
            maps: None,
        }
    }
}

impl From<router_core::linux::fastpath::FastPathSnapshot> for FastPathFile {
    fn from(s: router_core::linux::fastpath::FastPathSnapshot) -> Self {
        Self {
            path: s.status.path(),
            status: s.status.to_string(),
            forwarded: s.counters.map_or(0, |c| c.forwarded()),
            counters: s
                .counters
                .map(|c| c.iter().map(|(k, v)| (k.as_str(), v)).collect())
                .unwrap_or_default(),
            maps: s.sync.map(|m| FastPathMapsFile {
                flows_v4_id: s.flow_maps.map_or(0, |i| i[0]),
                flows_v6_id: s.flow_maps.map_or(0, |i| i[1]),
                pins: m.pins,
                unpins: m.unpins,
                errors: m.errors,
                resyncs: m.resyncs,
                idle_checked: m.idle_checked,
                idle_expired: m.idle_expired,
                state_events: m.state_events,
            }),
        }
    }
}

/// Hands snapshots to the writer thread, which adds what is not the node's
/// (process facts, modules) and writes the file.
#[derive(Debug)]
pub(crate) struct StatsSink {
    pub(crate) interval: std::time::Duration,
    jobs: std::sync::mpsc::SyncSender<RouterSnapshot>,
}

impl StatsSink {
    pub(crate) fn spawn(
        file: PathBuf,
        interval: std::time::Duration,
        name: String,
        envs: Vec<Arc<Environment>>,
    ) -> std::io::Result<Self> {
        let (jobs, rx) = std::sync::mpsc::sync_channel::<RouterSnapshot>(1);
        let started = std::time::Instant::now();
        std::thread::Builder::new()
            .name("pronto-stats".into())
            .spawn(move || {
                for mut snap in rx {
                    snap.fast_path = Some(
                        snap.fast_path_info
                            .take()
                            .map_or_else(FastPathFile::loading, |i| {
                                FastPathFile::from(i.snapshot())
                            }),
                    );
                    snap.name.clone_from(&name);
                    snap.uptime_ms =
                        u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                    snap.rss_kib = rss_kib();
                    snap.modules = envs.iter().flat_map(|env| module_snapshots(env)).collect();
                    write_snapshot(&file, &snap);
                }
            })?;
        Ok(Self { interval, jobs })
    }

    /// A writer still busy with the last snapshot skips this one.
    pub(crate) fn post(&self, snap: RouterSnapshot) {
        let _ = self.jobs.try_send(snap);
    }
}

/// Recovery counters in the stats snapshot (`[control.recovery]`).
#[derive(Debug, Default, Serialize)]
pub(crate) struct RecoverySnapshot {
    punts_recover: u64,
    punts_advert: u64,
    punts_deliver: u64,
    recover_forwarded: u64,
    recover_sent_to_pin: u64,
    inject_refused: u64,
    adverts_verified: u64,
    adverts_unknown_key: u64,
    adverts_bad_mac: u64,
    adverts_stale: u64,
    adverts_future: u64,
    adverts_replay: u64,
    adverts_malformed: u64,
    adverts_no_keys: u64,
    adverts_not_found: u64,
    adverts_installed: u64,
    adverts_current: u64,
    adverts_relayed: u64,
    adverts_rejected: u64,
    queries: u64,
    whohas_sent: u64,
    recover_coalesced: u64,
    recover_rate_limited: u64,
    recover_no_scope: u64,
    queries_expired: u64,
    answers_installed: u64,
    answers_negative: u64,
    answers_refused: u64,
    answer_not_pending: u64,
    answer_not_asked: u64,
    answer_key_mismatch: u64,
    answer_points_at_us: u64,
    answer_already_pinned: u64,
    whohas_answered: u64,
    whohas_unknown: u64,
    whohas_rate_limited: u64,
    whohas_refused_session: u64,
    neighbours: u64,
    neighbours_refused: u64,
    spares_registered: u64,
    spares_refused: u64,
    mirror_spare: bool,
    mirror_deltas_sent: u64,
    mirror_upserts_sent: u64,
    mirror_resyncs: u64,
    primary_registered: bool,
    mirror_deltas_applied: u64,
    mirror_upserts_applied: u64,
    mirrored_flows: u64,
    mirror_lag_ms: u64,
    taken_over: bool,
    takeover_silent_ms: u64,
    takeover_addresses_ms: u64,
    takeover_unix_ms: u64,
    takeover_errors: u64,
    key_reloads: u64,
}

/// The recovery counters of the router (node, control side, shell).
pub(crate) fn recovery_snapshot(shell: &RouterShell) -> RecoverySnapshot {
    let node = &shell.node;
    let slr = node.control();
    let st = slr.recovery_stats();
    let rec = node.recovery();
    let a = rec.auth_stats().unwrap_or_default();
    let cc = node.counters().recovery;
    let ec = node.engine().counters();
    let sender = rec.sender_stats();
    let receiver = rec.receiver_stats();
    let takeover = node.takeover();
    let done = shell
        .takeover
        .as_ref()
        .map_or(0, |t| t.done.load(Ordering::Relaxed));
    RecoverySnapshot {
        punts_recover: ec.recover,
        punts_advert: ec.adverts,
        punts_deliver: ec.delivered,
        recover_forwarded: cc.recover_forwarded,
        recover_sent_to_pin: cc.recover_sent_to_pin,
        inject_refused: 0,
        adverts_verified: a.verified,
        adverts_unknown_key: a.unknown_key,
        adverts_bad_mac: a.bad_mac,
        adverts_stale: a.stale,
        adverts_future: a.future,
        adverts_replay: a.replay,
        adverts_malformed: cc.adverts_malformed,
        adverts_no_keys: cc.adverts_no_keys,
        adverts_not_found: 0,
        adverts_installed: cc.adverts_installed,
        adverts_current: cc.adverts_current,
        adverts_relayed: cc.adverts_relayed,
        adverts_rejected: cc.adverts_rejected,
        queries: st.queries,
        whohas_sent: st.whohas_sent,
        recover_coalesced: st.recover_coalesced,
        recover_rate_limited: st.recover_rate_limited,
        recover_no_scope: st.recover_no_scope,
        queries_expired: st.queries_expired,
        answers_installed: st.answers_installed,
        answers_negative: st.answers_negative,
        answers_refused: st.answer_not_pending
            + st.answer_not_asked
            + st.answer_key_mismatch
            + st.answer_points_at_us
            + st.answer_bad_next_hop
            + st.answer_already_pinned
            + st.answer_engine_refused,
        answer_not_pending: st.answer_not_pending,
        answer_not_asked: st.answer_not_asked,
        answer_key_mismatch: st.answer_key_mismatch,
        answer_points_at_us: st.answer_points_at_us,
        answer_already_pinned: st.answer_already_pinned,
        whohas_answered: st.whohas_answered,
        whohas_unknown: st.whohas_unknown,
        whohas_rate_limited: st.whohas_rate_limited,
        whohas_refused_session: st.whohas_refused_session,
        neighbours: slr.neighbour_sessions().count() as u64,
        neighbours_refused: st.neighbours_refused + node.counters().neighbours_refused,
        spares_registered: st.spares_registered,
        spares_refused: st.spares_refused,
        mirror_spare: rec.mirroring(),
        mirror_deltas_sent: sender.map_or(0, |s| s.deltas),
        mirror_upserts_sent: sender.map_or(0, |s| s.upserts),
        mirror_resyncs: sender.map_or(0, |s| s.resyncs),
        primary_registered: rec.primary_registered(),
        mirror_deltas_applied: receiver.map_or(0, |r| r.deltas),
        mirror_upserts_applied: receiver.map_or(0, |r| r.upserts),
        mirrored_flows: node.mirror_state().map_or(0, |(n, _)| n as u64),
        mirror_lag_ms: node
            .mirror_state()
            .and_then(|(_, lag)| lag)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        taken_over: takeover.is_some(),
        takeover_silent_ms: takeover.map_or(0, |t| {
            u64::try_from(t.silent_for.as_millis()).unwrap_or(u64::MAX)
        }),
        takeover_addresses_ms: done & !(1 << 63),
        takeover_unix_ms: shell.takeover.as_ref().map_or(0, |t| t.at_unix_ms),
        takeover_errors: shell.counters.takeover_errors
            + u64::from(done >> 63 == 1)
            + cc.local_addr_refused,
        key_reloads: cc.key_reloads,
    }
}

/// One flow of the stats snapshot.
#[derive(Debug, Serialize)]
pub(crate) struct FlowSnapshot {
    key: String,
    next_hop: String,
    state: String,
    packets: u64,
}

/// Up to [`FLOW_SAMPLE`] flows of the engine (what tests check flows with).
pub(crate) fn flow_sample(e: &Engine, now: Instant) -> Vec<FlowSnapshot> {
    e.flows()
        .export(now)
        .take(FLOW_SAMPLE)
        .map(|f| FlowSnapshot {
            key: f.key.to_string(),
            next_hop: f.next_hop.to_string(),
            state: format!("{:?}", f.state),
            packets: f.packets,
        })
        .collect()
}
