//! Failure recovery in the router daemon (DESIGN.md §5, issue 7): the shell
//! around signaling's sans-IO recovery cores.
//!
//! - **State re-creation / WHOHAS.** Every `Recover` punt (a mid-connection
//!   packet of an unknown flow) goes to [`SlrControl::recover`], which asks the
//!   upper level and the configured neighbours; an answer installs the flow. A
//!   tunnel-entry router configured with `forward_unknown_to` also sends the
//!   packet on to that SLR ([`DataplaneHandle::encapsulate_and_send`]), which
//!   re-creates the state there.
//! - **Server flow advertisements.** Every `Advert` punt is parsed, verified
//!   ([`AdvertAuth`]: key, MAC, timestamp window, replay) on the control thread,
//!   then handled with the engine ([`SlrControl::handle_advert`]): installed, or
//!   relayed along the flow's pin to the router that lost it. Every refusal is
//!   counted; nothing unverified reaches the flow table.
//! - **Neighbours.** `[[recovery.neighbours]]` with an address are dialled over
//!   the usual mutual TLS (the other side lists us without an address and
//!   accepts).
//! - **Hot spare.** With `[spare]`, the daemon registers with its primary as
//!   `Role::Spare`, applies its mirror deltas, and when the primary falls silent
//!   ([`FailoverMonitor`]) adds the primary's addresses to its link, announces
//!   them (gratuitous ARP), and only then registers upstream under the primary's
//!   name and accepts the hosts' re-registrations. A primary with `spares`
//!   listed feeds a [`MirrorSender`] from newly pinned flows and periodic scans.
//!
//! Two halves: [`Core`] runs inside the router's dataplane calls next to the
//! `SlrControl` (it needs the engine); [`Recovery`] stays on the control thread
//! (verification, sessions, takeover, counters).

use std::collections::BTreeSet;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use router_core::engine::Engine;
use router_core::flow::{FlowEntry, FlowState};
use router_core::linux::{DataplaneHandle, NewFlow, PuntKind, PuntedPacket};
use router_core::policy::Level;
use router_core::wire::flowad::{AdvertFields, find_in_echo_reply};
use router_core::{FlowKey, Instant};
use serde::{Deserialize, Serialize};
use signaling::recovery::{
    AdvertAuth, AdvertAuthConfig, AdvertKey, AdvertOutcome, AdvertReject, FailoverMonitor,
    MirrorConfig, MirrorReceiver, MirrorSender, RateLimit, RecoverOutcome, RecoveryConfig,
    RecoveryScope, Takeover, read_advert_keys,
};
use signaling::{
    Connector, DownReason, LocalNode, MirrorDelta, NodeName, PeerEvent, Role, SessionId, SlrAction,
    SlrControl, TransportConfig,
};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::config::RouterConfig;
use crate::router::{Direction, Input, SESSION_QUEUE, SessionCmd, drive_session};

/// Flows listed in the stats snapshot (enough for the lab's connections).
const FLOW_SAMPLE: usize = 256;
/// Gratuitous ARP rounds after a takeover (a lost announcement is repeated).
const ANNOUNCE_ROUNDS: u32 = 3;
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

// ----- the part that runs with the engine --------------------------------------------

/// Work for [`Core`] inside one dataplane call.
#[derive(Debug)]
pub(crate) enum RecoveryStep {
    /// A mid-connection packet of an unknown flow.
    Recover { key: FlowKey, packet: Vec<u8> },
    /// A verified advertisement and its echo reply.
    Advert {
        fields: AdvertFields,
        packet: Vec<u8>,
    },
    /// A mirror delta from the primary (spare).
    Mirror(MirrorDelta),
    /// A session we dialled to a neighbour registered.
    AddNeighbour(SessionId),
    /// Timers (mirror batches and scans, failover).
    Timeout,
}

/// Counters of the engine-side half.
#[derive(Debug, Default, Clone, Copy)]
struct CoreCounters {
    recover_forwarded: u64,
    recover_sent_to_pin: u64,
    adverts_relayed: u64,
    adverts_installed: u64,
    adverts_current: u64,
    adverts_rejected: u64,
    neighbours_refused: u64,
    local_addr_refused: u64,
    refresh_refused: u64,
}

/// The recovery state that needs the engine; moves into each dataplane call
/// together with the `SlrControl`.
#[derive(Debug)]
pub(crate) struct Core {
    forward_unknown_to: Option<IpAddr>,
    sender: Option<MirrorSender>,
    receiver: Option<MirrorReceiver>,
    monitor: Option<FailoverMonitor>,
    take_over: Vec<IpAddr>,
    /// Packets to tunnel and send after the call.
    injects: Vec<(Vec<u8>, IpAddr)>,
    takeover: Option<Takeover>,
    counters: CoreCounters,
}

impl Core {
    /// Run one step.
    pub(crate) fn step(
        &mut self,
        step: RecoveryStep,
        slr: &mut SlrControl,
        e: &mut Engine,
        now: Instant,
    ) {
        match step {
            RecoveryStep::Recover { key, packet } => match slr.recover(key, now, e) {
                // Pinned meanwhile (an answer or advert won the race): follow it.
                RecoverOutcome::Pinned { next_hop } => {
                    self.counters.recover_sent_to_pin += 1;
                    self.injects.push((packet, next_hop));
                }
                other => {
                    debug!(%key, outcome = ?other, "flow state lost; recovering");
                    if let Some(slr_addr) = self.forward_unknown_to {
                        // An entry router: the SLR re-creates the state.
                        self.counters.recover_forwarded += 1;
                        self.injects.push((packet, slr_addr));
                    }
                    // Else the packet is dropped: the client retransmits it.
                }
            },
            RecoveryStep::Advert { fields, packet } => match slr.handle_advert(now, &fields, e) {
                AdvertOutcome::Relay { to } => {
                    self.counters.adverts_relayed += 1;
                    debug!(key = %fields.key, %to, "advertisement relayed along the pin");
                    self.injects.push((packet, to));
                }
                AdvertOutcome::Installed => {
                    self.counters.adverts_installed += 1;
                    info!(key = %fields.key, server = %fields.server, "flow state re-created from a server advertisement");
                }
                AdvertOutcome::Current => self.counters.adverts_current += 1,
                AdvertOutcome::Rejected(why) => {
                    self.counters.adverts_rejected += 1;
                    debug!(key = %fields.key, reason = ?why, "advertisement refused");
                }
                _ => self.counters.adverts_rejected += 1,
            },
            RecoveryStep::Mirror(d) => {
                if let Some(r) = self.receiver.as_mut() {
                    r.apply(now, &d, e);
                }
            }
            RecoveryStep::AddNeighbour(id) => {
                if let Err(err) = slr.add_neighbour(id) {
                    self.counters.neighbours_refused += 1;
                    warn!(session = id.0, error = %err, "neighbour refused");
                }
            }
            RecoveryStep::Timeout => {}
        }
    }

    /// Absorb the recovery actions of the `SlrControl`; others are returned.
    pub(crate) fn on_action(&mut self, a: SlrAction, now: Instant) -> Option<SlrAction> {
        match a {
            SlrAction::SpareRegistered { session, name } => {
                info!(session = session.0, spare = %name, "hot spare registered; mirroring the flow table");
                if let Some(s) = self.sender.as_mut() {
                    s.spare_registered(session, now);
                }
                None
            }
            SlrAction::SpareDown { session } => {
                if let Some(s) = self.sender.as_mut() {
                    s.spare_down(session);
                }
                None
            }
            SlrAction::FlowRecovered { key, next_hop } => {
                info!(%key, %next_hop, "flow state re-created from a WHOHAS answer");
                None
            }
            other => Some(other),
        }
    }

    /// Timers: mirror scans and batches (primary), failover (spare).
    pub(crate) fn poll(
        &mut self,
        slr: &mut SlrControl,
        e: &mut Engine,
        now: Instant,
        actions: &mut Vec<SlrAction>,
    ) {
        if let Some(s) = self.sender.as_mut() {
            if s.spare().is_some() && s.scan_due(now) {
                s.scan(now, e.flows().export(now));
            }
            if s.poll_timeout().is_some_and(|t| t <= now) {
                s.handle_timeout(now);
            }
            while let Some(a) = s.poll_action() {
                actions.push(a);
            }
        }
        let Some(m) = self.monitor.as_mut() else {
            return;
        };
        if m.poll_timeout().is_some_and(|t| t <= now)
            && let Some(t) = m.handle_timeout(now)
        {
            warn!(
                silent_ms = t.silent_for.as_millis() as u64,
                "primary silent: taking over"
            );
            for a in &self.take_over {
                if !slr.add_local_addr(*a) {
                    self.counters.local_addr_refused += 1;
                    warn!(addr = %a, "taken-over address not added to the control side (full)");
                }
            }
            // The mirrored table is now ours; no more deltas are applied.
            if let Some(rx) = self.receiver.take() {
                self.counters.refresh_refused += rx.take_over(now, e);
            }
            self.monitor = None;
            self.takeover = Some(t);
        }
    }

    fn due(&self, now: Instant) -> bool {
        let at = |t: Option<Instant>| t.is_some_and(|t| t <= now);
        self.sender
            .as_ref()
            .is_some_and(|s| at(s.poll_timeout()) || (s.spare().is_some() && s.scan_due(now)))
            || self.monitor.as_ref().is_some_and(|m| at(m.poll_timeout()))
    }
}

// ----- the control-thread half --------------------------------------------------------

/// Counters of the control-thread half.
#[derive(Debug, Default, Clone, Copy)]
struct ShellCounters {
    punts_recover: u64,
    punts_advert: u64,
    punts_deliver: u64,
    adverts_malformed: u64,
    adverts_no_keys: u64,
    adverts_not_found: u64,
    inject_refused: u64,
    takeover_errors: u64,
    key_reloads: u64,
}

/// Recovery on the control thread: owns [`Core`] between dataplane calls.
#[derive(Debug)]
pub(crate) struct Recovery {
    core: Option<Core>,
    auth: Option<AdvertAuth>,
    spare: Option<SpareSettings>,
    level: Level,
    /// The spare's session to its primary while registered.
    primary: Option<SessionId>,
    /// Fired when the takeover addresses are in place: starts the upstream session.
    takeover_go: Option<oneshot::Sender<()>>,
    takeover: Option<TakeoverReport>,
    takeover_done: Arc<AtomicU64>,
    /// Keys re-read on SIGHUP, waiting for the next tick (key rollover).
    new_keys: Arc<std::sync::Mutex<Option<Vec<AdvertKey>>>>,
    counters: ShellCounters,
}

/// What the takeover did, for the stats.
#[derive(Debug, Clone, Copy)]
struct TakeoverReport {
    silent_ms: u64,
}

impl Recovery {
    /// Read the key file and build the halves; with `[spare]`, the upstream
    /// session waits for the takeover (the caller must not start it).
    pub(crate) fn new(cfg: &RouterConfig, now: Instant) -> Result<Self> {
        let rs = cfg.recovery.as_ref();
        let auth = match rs.and_then(|r| r.advert_keys.as_ref().map(|p| (r, p))) {
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
        let sender = rs
            .filter(|r| !r.spares.is_empty())
            .map(|r| MirrorSender::new(r.mirror, now));
        let (receiver, monitor) = match &cfg.spare {
            // Bounded like the flow table it fills.
            Some(s) => (
                Some(MirrorReceiver::new(
                    cfg.dataplane.engine.flows.capacity_v4 + cfg.dataplane.engine.flows.capacity_v6,
                )),
                Some(FailoverMonitor::new(s.dead_after)),
            ),
            None => (None, None),
        };
        Ok(Self {
            core: Some(Core {
                forward_unknown_to: rs.and_then(|r| r.forward_unknown_to),
                sender,
                receiver,
                monitor,
                take_over: cfg
                    .spare
                    .iter()
                    .flat_map(|s| s.take_over.iter().map(|(a, _)| *a))
                    .collect(),
                injects: Vec::new(),
                takeover: None,
                counters: CoreCounters::default(),
            }),
            auth,
            spare: cfg.spare.clone(),
            level: cfg.level,
            primary: None,
            takeover_go: None,
            takeover: None,
            takeover_done: Arc::new(AtomicU64::new(0)),
            new_keys: Arc::new(std::sync::Mutex::new(None)),
            counters: ShellCounters::default(),
        })
    }

    /// The WHOHAS scope of this router (neighbours, spares, own addresses, a
    /// fresh query secret).
    pub(crate) fn scope(cfg: &RouterConfig) -> Result<RecoveryScope> {
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

    /// Move the engine-side half out for a dataplane call.
    pub(crate) fn take_core(&mut self) -> Result<Core> {
        self.core
            .take()
            .context("the recovery state was lost with the dataplane")
    }

    /// Put it back after the call; send what it queued and start a takeover.
    pub(crate) fn put_core(&mut self, mut core: Core, handle: &DataplaneHandle) {
        for (packet, to) in core.injects.drain(..) {
            if handle.encapsulate_and_send(packet, to).is_err() {
                self.counters.inject_refused += 1;
            }
        }
        if let Some(t) = core.takeover.take() {
            self.start_takeover(t);
        }
        self.core = Some(core);
    }

    /// A punted packet: `Some` when it needs the engine.
    pub(crate) fn punt(&mut self, p: PuntedPacket) -> Option<RecoveryStep> {
        match p.kind {
            PuntKind::Recover { key } => {
                self.counters.punts_recover += 1;
                Some(RecoveryStep::Recover {
                    key,
                    packet: p.data,
                })
            }
            PuntKind::Advert => {
                self.counters.punts_advert += 1;
                let Some(auth) = self.auth.as_mut() else {
                    self.counters.adverts_no_keys += 1;
                    return None;
                };
                let adv = match find_in_echo_reply(&p.data) {
                    Some(Ok(a)) => a,
                    Some(Err(e)) => {
                        self.counters.adverts_malformed += 1;
                        debug!(error = %e, "malformed advertisement dropped");
                        return None;
                    }
                    None => {
                        self.counters.adverts_not_found += 1;
                        return None;
                    }
                };
                match auth.verify(&adv, unix_ms()) {
                    Ok(fields) => Some(RecoveryStep::Advert {
                        fields,
                        packet: p.data,
                    }),
                    Err(why) => {
                        // Counted by reason in the auth stats.
                        log_reject(&why);
                        None
                    }
                }
            }
            _ => {
                self.counters.punts_deliver += 1;
                None
            }
        }
    }

    /// A newly pinned flow: mirror it to the spare (primary).
    pub(crate) fn flow_pinned(&mut self, nf: &NewFlow) {
        let level = self.level;
        let Some(s) = self.core.as_mut().and_then(|c| c.sender.as_mut()) else {
            return;
        };
        if s.spare().is_none() {
            return;
        }
        let entry = FlowEntry {
            key: nf.key,
            next_hop: nf.next_hop,
            label: 0,
            level,
            state: match nf.key.proto {
                router_core::wire::ip_proto::TCP => FlowState::SynSeen,
                router_core::wire::ip_proto::UDP => FlowState::Udp,
                _ => FlowState::Other,
            },
            created: nf.at,
            last_seen: nf.at,
            packets: 1,
            bytes: 0,
        };
        s.flow_pinned(&entry, nf.at);
    }

    /// Whether mirroring wants the new-flow notices.
    pub(crate) fn mirrors(&self) -> bool {
        self.core
            .as_ref()
            .and_then(|c| c.sender.as_ref())
            .is_some_and(|s| s.spare().is_some())
    }

    /// An event of the spare's session to its primary.
    pub(crate) fn primary_event(
        &mut self,
        id: SessionId,
        event: PeerEvent,
        now: Instant,
    ) -> Option<RecoveryStep> {
        let core = self.core.as_mut()?;
        match event {
            PeerEvent::Registered { identity, .. } => {
                info!(primary = %identity, "registered with the primary as its hot spare");
                self.primary = Some(id);
                if let Some(r) = core.receiver.as_mut() {
                    r.primary_registered(now);
                }
                if let Some(m) = core.monitor.as_mut() {
                    m.heard(now);
                }
                None
            }
            PeerEvent::MirrorDelta(d) => {
                if let Some(m) = core.monitor.as_mut() {
                    m.heard(now);
                }
                Some(RecoveryStep::Mirror(d))
            }
            PeerEvent::PeerDown { reason } => {
                if self.primary == Some(id) {
                    warn!(%reason, "session to the primary down");
                    self.primary = None;
                }
                None
            }
            other => {
                debug!(event = ?other, "primary session event ignored");
                None
            }
        }
    }

    /// Every control tick: the primary is alive while its session is (the
    /// session's own keepalives end it after `dead_ms` of silence); true when a
    /// timer needs the engine.
    pub(crate) fn tick(&mut self, now: Instant) -> bool {
        let fresh = self.new_keys.lock().ok().and_then(|mut k| k.take());
        if let (Some(keys), Some(auth)) = (fresh, self.auth.as_mut()) {
            // The replay cache stays: a rollover must not reopen the window.
            info!(keys = keys.len(), "advertisement keys reloaded");
            auth.set_keys(keys);
            self.counters.key_reloads += 1;
        }
        let Some(core) = self.core.as_mut() else {
            return false;
        };
        if self.primary.is_some()
            && let Some(m) = core.monitor.as_mut()
        {
            m.heard(now);
        }
        core.due(now)
    }

    /// Add the primary's addresses, announce them, then let the upstream session
    /// start (from a thread: rtnetlink blocks on its own runtime).
    fn start_takeover(&mut self, t: Takeover) {
        let Some(spare) = self.spare.clone() else {
            return;
        };
        let started = std::time::Instant::now();
        self.takeover = Some(TakeoverReport {
            silent_ms: u64::try_from(t.silent_for.as_millis()).unwrap_or(u64::MAX),
        });
        let go = self.takeover_go.take();
        let done = Arc::clone(&self.takeover_done);
        let r = std::thread::Builder::new()
            .name("pronto-takeover".into())
            .spawn(move || {
                let ok = take_addresses(&spare);
                // Registered upstream even when an address failed: the rest works.
                if let Some(go) = go {
                    let _ = go.send(());
                }
                let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                done.store(ms.max(1) | if ok { 0 } else { 1 << 63 }, Ordering::Relaxed);
                info!(ms, ok, "primary's addresses taken over and announced");
                for _ in 1..ANNOUNCE_ROUNDS {
                    std::thread::sleep(Duration::from_millis(200));
                    announce(&spare);
                }
            });
        if let Err(e) = r {
            self.counters.takeover_errors += 1;
            warn!(error = %e, "cannot start the takeover thread");
        }
    }

    /// The counters for the stats snapshot.
    pub(crate) fn snapshot(&self, slr: &SlrControl) -> RecoverySnapshot {
        let st = slr.recovery_stats();
        let a = self.auth.as_ref().map(|a| *a.stats()).unwrap_or_default();
        let c = self.core.as_ref();
        let cc = c.map(|c| c.counters).unwrap_or_default();
        let sender = c.and_then(|c| c.sender.as_ref());
        let receiver = c.and_then(|c| c.receiver.as_ref());
        let done = self.takeover_done.load(Ordering::Relaxed);
        let s = &self.counters;
        RecoverySnapshot {
            punts_recover: s.punts_recover,
            punts_advert: s.punts_advert,
            punts_deliver: s.punts_deliver,
            recover_forwarded: cc.recover_forwarded,
            recover_sent_to_pin: cc.recover_sent_to_pin,
            inject_refused: s.inject_refused,
            adverts_verified: a.verified,
            adverts_unknown_key: a.unknown_key,
            adverts_bad_mac: a.bad_mac,
            adverts_stale: a.stale,
            adverts_future: a.future,
            adverts_replay: a.replay,
            adverts_malformed: s.adverts_malformed,
            adverts_no_keys: s.adverts_no_keys,
            adverts_not_found: s.adverts_not_found,
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
            neighbours_refused: st.neighbours_refused + cc.neighbours_refused,
            spares_registered: st.spares_registered,
            spares_refused: st.spares_refused,
            mirror_spare: sender.is_some_and(|s| s.spare().is_some()),
            mirror_deltas_sent: sender.map_or(0, |s| s.stats().deltas),
            mirror_upserts_sent: sender.map_or(0, |s| s.stats().upserts),
            mirror_resyncs: sender.map_or(0, |s| s.stats().resyncs),
            primary_registered: self.primary.is_some(),
            mirror_deltas_applied: receiver.map_or(0, |r| r.stats().deltas),
            mirror_upserts_applied: receiver.map_or(0, |r| r.stats().upserts),
            mirrored_flows: receiver.map_or(0, |r| r.mirrored() as u64),
            mirror_lag_ms: receiver
                .and_then(MirrorReceiver::lag)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            taken_over: self.takeover.is_some(),
            takeover_silent_ms: self.takeover.map_or(0, |t| t.silent_ms),
            takeover_addresses_ms: done & !(1 << 63),
            takeover_errors: s.takeover_errors + u64::from(done >> 63 == 1) + cc.local_addr_refused,
            key_reloads: s.key_reloads,
        }
    }
}

fn log_reject(why: &AdvertReject) {
    debug!(reason = ?why, "advertisement refused");
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Add the spare's takeover addresses and announce the IPv4 ones; false when
/// any step failed (logged).
fn take_addresses(spare: &SpareSettings) -> bool {
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
fn announce(spare: &SpareSettings) -> bool {
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
    rec: &mut Recovery,
    ids: &Arc<AtomicU64>,
    ctl: &mpsc::Sender<Input>,
) -> Result<()> {
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
        .filter(|_| rec.auth.is_some())
    {
        let slot = Arc::clone(&rec.new_keys);
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
                        if let Ok(mut s) = slot.lock() {
                            *s = Some(keys);
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
        return Ok(());
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
    if let Some(up) = &cfg.upstream {
        let (go, wait) = oneshot::channel();
        rec.takeover_go = Some(go);
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
    Ok(())
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
                let opened = Input::Opened {
                    id,
                    remote: address,
                    direction,
                    cmds: tx,
                };
                if ctl.send(opened).await.is_err() {
                    return;
                }
                drive_session(session, rx, ctl.clone(), move |event| Input::Event {
                    id,
                    event,
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

    /// An IPv4 ICMP echo reply from the client to the VIP carrying `advert`.
    fn echo_reply(advert: &[u8]) -> Vec<u8> {
        use router_core::wire::{Ipv4Packet, Ipv4Repr};
        let mut icmp = vec![0u8; 8 + 64];
        icmp[4..8].copy_from_slice(&[0x12, 0x34, 0, 1]);
        icmp.extend_from_slice(advert);
        let mut sum = 0u32;
        for c in icmp.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        icmp[2..4].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        let mut out = vec![0u8; Ipv4Repr::HEADER_LEN + icmp.len()];
        Ipv4Repr {
            src: "172.16.0.2".parse().unwrap(),
            dst: "192.200.0.10".parse().unwrap(),
            protocol: 1,
            payload_len: icmp.len(),
            ttl: 63,
            dscp: 0,
            ecn: 0,
            dont_frag: false,
            ident: 1,
        }
        .emit(&mut Ipv4Packet::new_unchecked(&mut out[..]));
        out[Ipv4Repr::HEADER_LEN..].copy_from_slice(&icmp);
        out
    }

    #[test]
    fn punted_adverts_are_verified_and_counted_before_they_reach_the_engine() {
        let dir = std::env::temp_dir().join(format!("pronto-recovery-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let keys = dir.join("advert.keys");
        std::fs::write(&keys, format!("1:{}\n", "ab".repeat(32))).unwrap();
        let text = format!(
            "level = \"site\"\nname = \"s.lab\"\n[tunnel]\nlocal_v4 = \"10.1.0.2\"\n\
             [tls]\ntrust_anchors = [\"ca.pem\"]\ncert = \"c.pem\"\nkey = \"k.key\"\n\
             [recovery]\nadvert_keys = {:?}\n",
            keys.display().to_string()
        );
        let cfg = crate::config::parse_router_text(&dir.join("r.toml"), &text).unwrap();
        let mut rec = Recovery::new(&cfg, Instant::ZERO).unwrap();
        let slr = SlrControl::new(
            cfg.slr,
            Arc::new(router_core::policy::SumCost),
            Instant::ZERO,
        );
        let real = AdvertAuth::new(
            read_advert_keys(&keys).unwrap(),
            AdvertAuthConfig::default(),
        );
        let wrong = AdvertAuth::new(
            vec![AdvertKey::new(1, &[0xcd; 32]).unwrap()],
            AdvertAuthConfig::default(),
        );
        let key = FlowKey {
            proto: 6,
            src: "172.16.0.2".parse().unwrap(),
            src_port: 40000,
            dst: "192.200.0.10".parse().unwrap(),
            dst_port: 80,
        };
        let fields = |nonce| AdvertFields {
            key,
            server: "10.1.1.2:80".parse().unwrap(),
            key_id: 1,
            timestamp_ms: unix_ms(),
            nonce,
        };
        let punt = |kind, data: Vec<u8>| PuntedPacket {
            kind,
            data,
            at: Instant::ZERO,
        };
        let mut buf = [0u8; 256];
        let n = real.sign(&fields(1), &mut buf).unwrap();
        let good = echo_reply(&buf[..n]);
        match rec.punt(punt(PuntKind::Advert, good.clone())) {
            Some(RecoveryStep::Advert { fields: f, packet }) => {
                assert_eq!(f.key, key);
                assert_eq!(packet, good, "the echo reply is kept for a relay");
            }
            other => panic!("a valid advert was not passed on: {other:?}"),
        }
        assert!(rec.punt(punt(PuntKind::Advert, good)).is_none(), "replay");
        let n = wrong.sign(&fields(2), &mut buf).unwrap();
        assert!(
            rec.punt(punt(PuntKind::Advert, echo_reply(&buf[..n])))
                .is_none()
        );
        let mut cut = echo_reply(&buf[..n]);
        cut.truncate(cut.len() - 40);
        assert!(rec.punt(punt(PuntKind::Advert, cut)).is_none(), "malformed");
        assert!(rec.punt(punt(PuntKind::Deliver, vec![0x45; 20])).is_none());
        assert!(matches!(
            rec.punt(punt(PuntKind::Recover { key }, vec![0x45; 20])),
            Some(RecoveryStep::Recover { key: k, .. }) if k == key
        ));
        let snap = rec.snapshot(&slr);
        assert_eq!(
            (
                snap.adverts_verified,
                snap.adverts_replay,
                snap.adverts_bad_mac
            ),
            (1, 1, 1)
        );
        assert_eq!(snap.adverts_malformed + snap.adverts_not_found, 1);
        assert_eq!(
            (snap.punts_advert, snap.punts_deliver, snap.punts_recover),
            (4, 1, 1)
        );
        let _ = std::fs::remove_dir_all(&dir);
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
