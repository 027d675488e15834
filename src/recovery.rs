//! Failure recovery in the router daemon (DESIGN.md §5): configuration and the
//! shell's part. The mechanisms themselves are the node's
//! (`signaling::node`): WHOHAS and state re-creation, flow advertisements
//! (verified on the dataplane thread, where they arrive), mirroring to a hot
//! spare and the spare's failover. Here: `[recovery]` and `[spare]` validated
//! and turned into the node's parts ([`configure_node`]), the sessions to
//! neighbours and the primary ([`start_sessions`]), the takeover of the
//! primary's addresses (rtnetlink + gratuitous ARP, [`take_addresses`]) and the
//! counters of the stats snapshot ([`recovery_snapshot`]).

use std::collections::BTreeSet;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use router_core::Instant;
use router_core::api::RouterApi;
use router_core::engine::Engine;
use router_core::policy::Level;
use serde::{Deserialize, Serialize};
use signaling::recovery::{
    AdvertAuth, AdvertAuthConfig, MirrorConfig, RateLimit, RecoveryConfig, RecoveryScope,
    read_advert_keys,
};
use signaling::{Connector, DownReason, LocalNode, NodeName, Role, SessionId, TransportConfig};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::config::RouterConfig;
use crate::router::shell::{RouterShell, ShellInput};
use crate::router::{Direction, Input, SESSION_QUEUE, SessionCmd, drive_session};
use signaling::node::{NodeConfig, SpareConfig};

/// Flows listed in the stats snapshot (enough for the lab's connections).
const FLOW_SAMPLE: usize = 256;
/// Gratuitous ARP rounds after a takeover (a lost announcement is repeated).
pub(crate) const ANNOUNCE_ROUNDS: u32 = 3;
/// Longest reconnect backoff of a neighbour or primary session.
const MAX_BACKOFF: Duration = Duration::from_secs(8);

// ----- configuration ---------------------------------------------------------------

/// A refused value: the TOML path of the field and why.
#[derive(Debug)]
pub(crate) struct Invalid {
    /// The field, e.g. `recovery.neighbours[0].name`.
    pub(crate) field: String,
    /// What is wrong and what to do.
    pub(crate) reason: String,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
    field: &str,
    v: T,
    lo: T,
    hi: T,
) -> Result<T, Invalid> {
    if v < lo || v > hi {
        Err(invalid(field, format!("{v} is outside {lo}..={hi}")))
    } else {
        Ok(v)
    }
}

fn node_name(field: &str, s: &str) -> Result<NodeName, Invalid> {
    NodeName::new(s).map_err(|e| invalid(field, e.to_string()))
}

/// `[recovery]` of a router.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RecoveryFile {
    advert_keys: Option<PathBuf>,
    forward_unknown_to: Option<IpAddr>,
    neighbours: Vec<NeighbourFile>,
    spares: Vec<String>,
    local_addrs: Vec<IpAddr>,
    query_rate: u32,
    query_burst: u32,
    answer_rate: u32,
    answer_burst: u32,
    max_pending: usize,
    query_timeout_ms: u64,
    mirror_interval_ms: u64,
    mirror_scan_ms: u64,
    max_skew_ms: u64,
}

impl Default for RecoveryFile {
    fn default() -> Self {
        let r = RecoveryConfig::default();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Self {
            advert_keys: None,
            forward_unknown_to: None,
            neighbours: Vec::new(),
            spares: Vec::new(),
            local_addrs: Vec::new(),
            query_rate: r.query_rate.per_sec,
            query_burst: r.query_rate.burst,
            answer_rate: r.answer_rate.per_sec,
            answer_burst: r.answer_rate.burst,
            max_pending: r.max_pending,
            query_timeout_ms: ms(r.query_timeout),
            mirror_interval_ms: ms(MirrorConfig::default().interval),
            mirror_scan_ms: ms(MirrorConfig::default().scan_interval),
            max_skew_ms: ms(AdvertAuthConfig::default().max_skew),
        }
    }
}

/// `[[recovery.neighbours]]`: a same-level SLR asked by WHOHAS.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NeighbourFile {
    name: String,
    /// Dial it here; without: it dials us.
    address: Option<SocketAddr>,
    #[serde(default = "default_reconnect_ms")]
    reconnect_ms: u64,
}

fn default_reconnect_ms() -> u64 {
    250
}

/// A WHOHAS neighbour, validated.
#[derive(Debug, Clone)]
pub(crate) struct Neighbour {
    /// The name its certificate carries.
    pub(crate) name: NodeName,
    /// Where to dial it (None: it dials us).
    pub(crate) address: Option<SocketAddr>,
    /// First reconnect delay.
    pub(crate) reconnect: Duration,
}

/// `[recovery]`, validated.
#[derive(Debug, Clone)]
pub(crate) struct RecoverySettings {
    /// The trust domain's advertisement key file (None: adverts are dropped, counted).
    pub(crate) advert_keys: Option<PathBuf>,
    /// Tunnel-entry router: also send each `Recover` packet to this SLR.
    pub(crate) forward_unknown_to: Option<IpAddr>,
    /// WHOHAS neighbours.
    pub(crate) neighbours: Vec<Neighbour>,
    /// Names allowed to register here as hot spares.
    pub(crate) spares: Vec<NodeName>,
    /// Further addresses of this router (answers pointing at them are refused).
    pub(crate) local_addrs: Vec<IpAddr>,
    /// Query and answer limits.
    pub(crate) limits: RecoveryConfig,
    /// Mirroring toward the spares.
    pub(crate) mirror: MirrorConfig,
    /// Largest advertisement clock skew accepted.
    pub(crate) max_skew: Duration,
}

/// Validate `[recovery]`; `resolve` makes a path relative to the config file.
pub(crate) fn recovery_settings(
    f: &RecoveryFile,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<RecoverySettings, Invalid> {
    if f.neighbours.len() > signaling::recovery::MAX_NEIGHBOURS {
        return Err(invalid(
            "recovery.neighbours",
            format!("at most {} neighbours", signaling::recovery::MAX_NEIGHBOURS),
        ));
    }
    let mut neighbours = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, n) in f.neighbours.iter().enumerate() {
        let name = node_name(&format!("recovery.neighbours[{i}].name"), &n.name)?;
        if !seen.insert(name.clone()) {
            return Err(invalid(
                format!("recovery.neighbours[{i}].name"),
                format!("{name} is listed twice"),
            ));
        }
        neighbours.push(Neighbour {
            name,
            address: n.address,
            reconnect: Duration::from_millis(in_range(
                &format!("recovery.neighbours[{i}].reconnect_ms"),
                n.reconnect_ms,
                10,
                60_000,
            )?),
        });
    }
    if f.spares.len() > signaling::recovery::MAX_SPARES {
        return Err(invalid(
            "recovery.spares",
            format!("at most {} spares", signaling::recovery::MAX_SPARES),
        ));
    }
    let spares = f
        .spares
        .iter()
        .enumerate()
        .map(|(i, s)| node_name(&format!("recovery.spares[{i}]"), s))
        .collect::<Result<Vec<_>, _>>()?;
    if f.local_addrs.len() > signaling::recovery::MAX_LOCAL_ADDRS / 2 {
        return Err(invalid(
            "recovery.local_addrs",
            format!(
                "at most {} addresses",
                signaling::recovery::MAX_LOCAL_ADDRS / 2
            ),
        ));
    }
    if let Some(a) = f
        .forward_unknown_to
        .filter(|a| a.is_unspecified() || a.is_multicast() || a.is_loopback())
    {
        return Err(invalid(
            "recovery.forward_unknown_to",
            format!("{a} is not the unicast tunnel endpoint of an SLR"),
        ));
    }
    let limits = RecoveryConfig {
        query_rate: RateLimit {
            per_sec: in_range("recovery.query_rate", f.query_rate, 1, 1_000_000)?,
            burst: in_range("recovery.query_burst", f.query_burst, 1, 1_000_000)?,
        },
        answer_rate: RateLimit {
            per_sec: in_range("recovery.answer_rate", f.answer_rate, 1, 1_000_000)?,
            burst: in_range("recovery.answer_burst", f.answer_burst, 1, 1_000_000)?,
        },
        max_pending: in_range("recovery.max_pending", f.max_pending, 1, 1 << 20)?,
        query_timeout: Duration::from_millis(in_range(
            "recovery.query_timeout_ms",
            f.query_timeout_ms,
            10,
            60_000,
        )?),
    };
    let mirror = MirrorConfig {
        interval: Duration::from_millis(in_range(
            "recovery.mirror_interval_ms",
            f.mirror_interval_ms,
            10,
            60_000,
        )?),
        // New flows reach the spare at once (new-flow notices) but as
        // half-open; the scan carries their later state (established), without
        // which the spare's SYN timeout may expire them before a failover.
        scan_interval: Duration::from_millis(in_range(
            "recovery.mirror_scan_ms",
            f.mirror_scan_ms,
            50,
            600_000,
        )?),
        ..MirrorConfig::default()
    };
    Ok(RecoverySettings {
        advert_keys: f.advert_keys.as_deref().map(resolve),
        forward_unknown_to: f.forward_unknown_to,
        neighbours,
        spares,
        local_addrs: f.local_addrs.clone(),
        limits,
        mirror,
        max_skew: Duration::from_millis(in_range(
            "recovery.max_skew_ms",
            f.max_skew_ms,
            100,
            3_600_000,
        )?),
    })
}

/// `[spare]`: this router is the hot spare of `primary`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SpareFile {
    primary: String,
    address: SocketAddr,
    interface: String,
    take_over: Vec<String>,
    #[serde(default = "default_dead_after_ms")]
    dead_after_ms: u64,
    #[serde(default = "default_reconnect_ms")]
    reconnect_ms: u64,
}

fn default_dead_after_ms() -> u64 {
    1500
}

/// `[spare]`, validated.
#[derive(Debug, Clone)]
pub(crate) struct SpareSettings {
    /// The primary's name (its certificate; we register upstream under it).
    pub(crate) primary: NodeName,
    /// The primary's signalling address.
    pub(crate) address: SocketAddr,
    /// The link the primary's addresses are added to.
    pub(crate) interface: String,
    /// The primary's addresses with their prefix lengths.
    pub(crate) take_over: Vec<(IpAddr, u8)>,
    /// Silence after which the primary is declared dead: its session's dead
    /// interval (stretched by the session to three of the primary's
    /// keepalives), then as long again for a reconnect before the takeover.
    pub(crate) dead_after: Duration,
    /// First reconnect delay toward the primary.
    pub(crate) reconnect: Duration,
}

/// Validate `[spare]` (a spare needs `[upstream]`: it registers there on takeover).
pub(crate) fn spare_settings(f: &SpareFile, has_upstream: bool) -> Result<SpareSettings, Invalid> {
    if !has_upstream {
        return Err(invalid(
            "spare",
            "a spare registers with the primary's upper level on takeover: give [upstream]",
        ));
    }
    let iface_ok = !f.interface.is_empty()
        && f.interface.len() <= 15
        && f.interface
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !iface_ok {
        return Err(invalid(
            "spare.interface",
            format!("{:?} is not an interface name", f.interface),
        ));
    }
    if f.take_over.is_empty() || f.take_over.len() > 16 {
        return Err(invalid(
            "spare.take_over",
            "give 1..=16 addresses as ADDR/LEN",
        ));
    }
    let mut take_over = Vec::new();
    for (i, s) in f.take_over.iter().enumerate() {
        let field = format!("spare.take_over[{i}]");
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| invalid(&field, format!("{s:?}: write ADDR/LEN")))?;
        let a: IpAddr = a
            .parse()
            .map_err(|_| invalid(&field, format!("{a:?} is not an IP address")))?;
        let max = if a.is_ipv4() { 32 } else { 128 };
        let l: u8 =
            l.parse().ok().filter(|l| *l <= max).ok_or_else(|| {
                invalid(&field, format!("{l:?} is not a prefix length 0..={max}"))
            })?;
        take_over.push((a, l));
    }
    Ok(SpareSettings {
        primary: node_name("spare.primary", &f.primary)?,
        address: f.address,
        interface: f.interface.clone(),
        take_over,
        dead_after: Duration::from_millis(in_range(
            "spare.dead_after_ms",
            f.dead_after_ms,
            50,
            600_000,
        )?),
        reconnect: Duration::from_millis(in_range(
            "spare.reconnect_ms",
            f.reconnect_ms,
            10,
            60_000,
        )?),
    })
}

// ----- the node's recovery parts, from the configuration ----------------------------

/// Fill the node's recovery parts from `[recovery]` and `[spare]`: the
/// advertisement keys (read now), mirroring toward listed spares, the spare's
/// failover, an entry router's SLR, and the WHOHAS scope.
pub(crate) fn configure_node(cfg: &RouterConfig, node: &mut NodeConfig) -> Result<()> {
    let rs = cfg.recovery.as_ref();
    node.advert_auth = match rs.and_then(|r| r.advert_keys.as_ref().map(|p| (r, p))) {
        Some((r, p)) => {
            let keys = read_advert_keys(p)
                .with_context(|| format!("recovery.advert_keys: {}", p.display()))?;
            let c = AdvertAuthConfig {
                max_skew: r.max_skew,
                ..AdvertAuthConfig::default()
            };
            Some(AdvertAuth::new(keys, c))
        }
        None => None,
    };
    node.mirror = rs.filter(|r| !r.spares.is_empty()).map(|r| r.mirror);
    node.forward_unknown_to = rs.and_then(|r| r.forward_unknown_to);
    node.spare = cfg.spare.as_ref().map(|s| SpareConfig {
        dead_after: s.dead_after,
        take_over: s.take_over.iter().map(|(a, _)| *a).collect(),
        // Bounded like the flow table it fills.
        mirror_capacity: cfg.dataplane.engine.flows.capacity_v4
            + cfg.dataplane.engine.flows.capacity_v6,
    });
    node.scope = Some(scope(cfg)?);
    node.unix_ms_at_zero = unix_ms();
    Ok(())
}

/// The WHOHAS scope of this router (neighbours, spares, own addresses, a
/// fresh query secret).
fn scope(cfg: &RouterConfig) -> Result<RecoveryScope> {
    let mut secret = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut secret))
        .context("reading /dev/urandom for the WHOHAS query secret")?;
    let rs = cfg.recovery.as_ref();
    let mut local: Vec<IpAddr> = [
        cfg.dataplane.engine.local_v4.map(IpAddr::V4),
        cfg.dataplane.engine.local_v6.map(IpAddr::V6),
        cfg.listen.map(|l| l.ip()).filter(|a| !a.is_unspecified()),
    ]
    .into_iter()
    .flatten()
    .chain(rs.iter().flat_map(|r| r.local_addrs.iter().copied()))
    .collect();
    local.sort();
    local.dedup();
    Ok(RecoveryScope {
        neighbours: rs
            .map(|r| r.neighbours.iter().map(|n| n.name.clone()).collect())
            .unwrap_or_default(),
        spares: rs.map(|r| r.spares.clone()).unwrap_or_default(),
        local_addrs: local,
        query_secret: secret,
    })
}

/// Wall-clock milliseconds now (the node's advertisement clock is this plus its
/// monotonic time, read once at start).
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Add the spare's takeover addresses and announce the IPv4 ones; false when
/// any step failed (logged).
pub(crate) fn take_addresses(spare: &SpareSettings) -> bool {
    let nl = match router_core::linux::Netlink::open() {
        Ok(n) => n,
        Err(e) => {
            warn!(error = %e, "takeover: cannot open rtnetlink");
            return false;
        }
    };
    let index = match nl.link_index(&spare.interface) {
        Ok(i) => i,
        Err(e) => {
            warn!(link = %spare.interface, error = %e, "takeover: no such link");
            return false;
        }
    };
    let mut ok = true;
    for (a, len) in &spare.take_over {
        if let Err(e) = nl.add_address(index, *a, *len) {
            warn!(addr = %a, error = %e, "takeover: cannot add the address");
            ok = false;
        }
    }
    announce(spare) && ok
}

/// One gratuitous ARP per IPv4 takeover address.
pub(crate) fn announce(spare: &SpareSettings) -> bool {
    let mut ok = true;
    for (a, _) in &spare.take_over {
        if let IpAddr::V4(v4) = a
            && let Err(e) = router_core::linux::dataplane::announce_ipv4(&spare.interface, *v4)
        {
            warn!(addr = %a, error = %e, "takeover: gratuitous ARP failed");
            ok = false;
        }
    }
    ok
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

// ----- sessions ---------------------------------------------------------------------

/// Dial the configured neighbours, and with `[spare]` the primary (as
/// `Role::Spare`) and, once the takeover fires, the upper level under the
/// primary's name.
pub(crate) fn start_sessions(
    rt: &tokio::runtime::Runtime,
    cfg: &RouterConfig,
    adverts_on: bool,
    ids: &Arc<AtomicU64>,
    ctl: &mpsc::Sender<Input>,
) -> Result<Option<oneshot::Sender<()>>> {
    let connector = |role: Role| -> Result<Connector> {
        let (identity, anchors) = cfg.tls.load()?;
        let mut peer = cfg.peer;
        if let (Role::Spare, Some(s)) = (role, &cfg.spare) {
            // Watch the primary as tightly as its keepalives allow (the
            // session stretches this to three of them): its end is the first
            // sign of the primary's death.
            peer.dead_interval = peer.dead_interval.min(s.dead_after);
        }
        Connector::new(TransportConfig {
            identity,
            trust_anchors: anchors,
            local: LocalNode {
                name: cfg.name.clone(),
                level: cfg.level,
                role,
            },
            peer,
        })
        .context("recovery: TLS configuration")
    };
    if let Some(path) = cfg
        .recovery
        .as_ref()
        .and_then(|r| r.advert_keys.clone())
        .filter(|_| adverts_on)
    {
        let ctl = ctl.clone();
        rt.spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                warn!("cannot install a SIGHUP handler; advertisement keys load at start only");
                return;
            };
            while hup.recv().await.is_some() {
                // A bad file keeps the keys in use.
                match read_advert_keys(&path) {
                    Ok(keys) => {
                        if ctl
                            .send(Input::Shell(ShellInput::AdvertKeys(keys)))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(e) => warn!(file = %path.display(), error = %e,
                        "SIGHUP: advertisement keys not reloaded; the old ones stay"),
                }
            }
        });
    }
    let own_role = match cfg.level {
        Level::Network => Role::Network,
        Level::System => Role::System,
        Level::Site => Role::Site,
    };
    for n in cfg.recovery.iter().flat_map(|r| &r.neighbours) {
        let Some(addr) = n.address else { continue };
        rt.spawn(dial_loop(
            connector(own_role)?,
            addr,
            n.name.clone(),
            n.reconnect,
            Arc::clone(ids),
            ctl.clone(),
            Direction::Neighbour,
        ));
    }
    let Some(spare) = &cfg.spare else {
        return Ok(None);
    };
    rt.spawn(dial_loop(
        connector(Role::Spare)?,
        spare.address,
        spare.primary.clone(),
        spare.reconnect,
        Arc::clone(ids),
        ctl.clone(),
        Direction::Primary,
    ));
    let mut takeover_go = None;
    if let Some(up) = &cfg.upstream {
        let (go, wait) = oneshot::channel();
        takeover_go = Some(go);
        let c = connector(own_role)?;
        let (up, ids, ctl) = (up.clone(), Arc::clone(ids), ctl.clone());
        rt.spawn(async move {
            if wait.await.is_ok() {
                info!(upper = %up.name, "registering upstream as the primary");
                dial_loop(
                    c,
                    up.address,
                    up.name,
                    up.reconnect,
                    ids,
                    ctl,
                    Direction::Upstream,
                )
                .await;
            }
        });
    }
    Ok(takeover_go)
}

/// Keep one session to `address` (expected name `name`) up, reconnecting with
/// backoff, and feed its events to the control loop under `direction`.
async fn dial_loop(
    connector: Connector,
    address: SocketAddr,
    name: NodeName,
    reconnect: Duration,
    ids: Arc<AtomicU64>,
    ctl: mpsc::Sender<Input>,
    direction: Direction,
) {
    let mut backoff = reconnect;
    loop {
        match connector.connect(address, &name).await {
            Ok(session) => {
                backoff = reconnect;
                let id = SessionId(ids.fetch_add(1, Ordering::Relaxed));
                debug!(peer = %name, %address, ?direction, "session open");
                let (tx, rx) = mpsc::channel::<SessionCmd>(SESSION_QUEUE);
                let opened = ShellInput::Opened {
                    id,
                    remote: address,
                    direction,
                    cmds: tx,
                };
                if ctl.send(Input::Shell(opened)).await.is_err() {
                    return;
                }
                drive_session(session, rx, ctl.clone(), move |event| {
                    Input::Shell(ShellInput::Event { id, event })
                })
                .await;
                debug!(peer = %name, ?direction, reason = %DownReason::TransportClosed, "session ended; reconnecting");
            }
            Err(e) => {
                debug!(peer = %name, %address, error = %e, "cannot connect");
            }
        }
        if ctl.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_recovery(text: &str) -> Result<RecoverySettings, Invalid> {
        let f: RecoveryFile = toml::from_str(text).unwrap();
        recovery_settings(&f, &|p| Path::new("/etc/pronto").join(p))
    }

    #[test]
    fn recovery_settings_validate_and_name_the_field() {
        let ok = parse_recovery(
            "advert_keys = \"keys\"\nforward_unknown_to = \"10.0.0.1\"\nspares = [\"a.lab\"]\n\
             query_rate = 50\n[[neighbours]]\nname = \"sys2.lab\"\naddress = \"10.9.0.2:7800\"\n",
        )
        .unwrap();
        assert_eq!(ok.advert_keys, Some(PathBuf::from("/etc/pronto/keys")));
        assert_eq!(ok.limits.query_rate.per_sec, 50);
        assert_eq!(ok.neighbours[0].name.as_str(), "sys2.lab");
        assert_eq!(ok.spares.len(), 1);
        let field = |t: &str| parse_recovery(t).unwrap_err().field;
        assert_eq!(field("query_rate = 0\n"), "recovery.query_rate");
        assert_eq!(
            field("forward_unknown_to = \"0.0.0.0\"\n"),
            "recovery.forward_unknown_to"
        );
        assert_eq!(
            field("[[neighbours]]\nname = \"x.lab\"\n[[neighbours]]\nname = \"x.lab\"\n"),
            "recovery.neighbours[1].name"
        );
        assert_eq!(field("spares = [\"\"]\n"), "recovery.spares[0]");
    }

    #[test]
    fn spare_settings_validate_and_name_the_field() {
        let f = |t: &str| -> SpareFile { toml::from_str(t).unwrap() };
        let base = "primary = \"site-a.lab\"\naddress = \"10.1.0.2:7800\"\ninterface = \"up\"\n";
        let s = spare_settings(
            &f(&format!(
                "{base}take_over = [\"10.1.0.2/24\", \"fd00::1/64\"]\n"
            )),
            true,
        )
        .unwrap();
        assert_eq!(s.take_over[0], ("10.1.0.2".parse().unwrap(), 24));
        assert_eq!(s.take_over[1].1, 64);
        assert_eq!(s.dead_after, Duration::from_millis(1500));
        let e = |t: &str, up| {
            spare_settings(&f(&format!("{base}{t}")), up)
                .unwrap_err()
                .field
        };
        assert_eq!(e("take_over = [\"10.1.0.2/24\"]\n", false), "spare");
        assert_eq!(e("take_over = []\n", true), "spare.take_over");
        assert_eq!(
            e("take_over = [\"10.1.0.2\"]\n", true),
            "spare.take_over[0]"
        );
        assert_eq!(
            e("take_over = [\"10.1.0.2/33\"]\n", true),
            "spare.take_over[0]"
        );
        assert_eq!(
            e("take_over = [\"10.1.0.2/24\"]\ndead_after_ms = 1\n", true),
            "spare.dead_after_ms"
        );
    }
}
