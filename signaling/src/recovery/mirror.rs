//! Hot spare (DESIGN.md §5, second row): the primary SLR mirrors its flow table
//! to a spare through signalling; the spare takes over when the primary falls
//! silent.
//!
//! Three sans-IO pieces, each driven by the shell:
//!
//! - [`MirrorSender`] (primary): fed with newly pinned flows and with periodic
//!   full scans of the engine's flow table, it sends bounded
//!   [`crate::MirrorDelta`] batches at an interval to the session on which a
//!   listed spare registered ([`crate::SlrAction::SpareRegistered`]).
//! - [`MirrorReceiver`] (spare): applies the deltas to the spare's engine.
//! - [`FailoverMonitor`] (spare): declares the primary dead after `dead_after`
//!   without any message, once.
//!
//! Full resync, without a message of its own: an **empty** delta opens it, the
//! whole table follows as upserts, and a second empty delta closes it; the
//! receiver then removes every flow it mirrored that the resync did not carry.
//! The sender sends empty deltas for nothing else. A resync starts at every
//! (re)registration of the spare and after any loss on the sender's side.
//!
//! The minimum age of a flow that survives a failover is about the mirror
//! interval plus the one-way signalling delay (plus the sender's queue wait when
//! a burst exceeds `max_batches_per_tick` batches).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use router_core::api::RouterApi;
use router_core::classify::FlowKey;
use router_core::flow::FlowEntry;
use router_core::time::Instant;
use tracing::{debug, warn};

use crate::message::{FlowPhase, FlowRecord, MAX_DELTA_REMOVALS, MAX_DELTA_UPSERTS, MirrorDelta};
use crate::peer::Outgoing;
use crate::slr::{SessionId, SlrAction};

/// Timers and bounds of mirroring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MirrorConfig {
    /// Send queued changes this often.
    pub interval: Duration,
    /// Scan the whole flow table this often (state changes, removals, refresh).
    pub scan_interval: Duration,
    /// Most deltas sent per interval (bounds the burst after a resync).
    pub max_batches_per_tick: usize,
    /// Most flows tracked (as sent, or queued); beyond, the sender stops
    /// tracking new flows and counts them.
    pub max_flows: usize,
    /// Re-send a flow whose last packet is this much newer than what the spare
    /// has, so the spare's idle timers do not expire live flows.
    pub refresh_after: Duration,
}

impl Default for MirrorConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(100),
            scan_interval: Duration::from_secs(1),
            max_batches_per_tick: 16,
            max_flows: 1 << 20,
            refresh_after: Duration::from_secs(30),
        }
    }
}

/// Counters of the primary's side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MirrorSenderStats {
    /// Deltas queued for sending (markers included).
    pub deltas: u64,
    /// Flow records sent.
    pub upserts: u64,
    /// Removals sent.
    pub removals: u64,
    /// Full resyncs started.
    pub resyncs: u64,
    /// Full scans of the flow table.
    pub scans: u64,
    /// Flows not mirrored because `max_flows` were already tracked.
    pub untracked: u64,
    /// Changes dropped because no spare was registered.
    pub no_spare: u64,
}

/// What the spare last received for a flow.
#[derive(Debug, Clone, Copy)]
struct Sent {
    next_hop: std::net::IpAddr,
    state: FlowPhase,
    label: u32,
    last_seen: Instant,
    /// Scan generation that last saw the flow.
    seen: u64,
}

#[derive(Debug, Clone, Copy)]
enum Change {
    Upsert(FlowEntry),
    Remove,
}

#[derive(Debug, Clone, Copy)]
enum Item {
    Key(FlowKey),
    Marker,
}

/// Primary side of mirroring.
///
/// Shell duties: on [`crate::SlrAction::SpareRegistered`] call
/// [`MirrorSender::spare_registered`], on [`crate::SlrAction::SpareDown`]
/// [`MirrorSender::spare_down`]; report each newly pinned flow (the new-flow
/// queue, and shortcut re-pins) with [`MirrorSender::flow_pinned`] and each
/// flow the shell unpins with [`MirrorSender::flow_removed`]; whenever
/// [`MirrorSender::scan_due`], call [`MirrorSender::scan`] with the engine's
/// whole table (`engine.flows().export(now)`); run
/// [`MirrorSender::handle_timeout`] at [`MirrorSender::poll_timeout`] and send
/// every [`MirrorSender::poll_action`] on its session. If a send fails
/// (backpressure), call [`MirrorSender::resync`].
///
/// Ordered maps throughout, so a simulation run is deterministic (the order of
/// records in deltas does not depend on hash seeds).
#[derive(Debug)]
pub struct MirrorSender {
    cfg: MirrorConfig,
    session: Option<SessionId>,
    sent: BTreeMap<FlowKey, Sent>,
    queue: VecDeque<Item>,
    changes: BTreeMap<FlowKey, (Change, Instant)>,
    resync_open: bool,
    generation: u64,
    last_scan: Option<Instant>,
    next_tick: Instant,
    out: VecDeque<SlrAction>,
    stats: MirrorSenderStats,
}

impl MirrorSender {
    /// A sender with no spare yet.
    pub fn new(cfg: MirrorConfig, now: Instant) -> Self {
        Self {
            cfg,
            session: None,
            sent: BTreeMap::new(),
            queue: VecDeque::new(),
            changes: BTreeMap::new(),
            resync_open: false,
            generation: 0,
            last_scan: None,
            next_tick: now + cfg.interval,
            out: VecDeque::new(),
            stats: MirrorSenderStats::default(),
        }
    }

    /// A spare registered on `session`: everything it has is suspect, so a full
    /// resync starts (the next [`MirrorSender::scan`] carries the table).
    pub fn spare_registered(&mut self, session: SessionId, now: Instant) {
        self.session = Some(session);
        self.resync(now);
    }

    /// The spare's session ended.
    pub fn spare_down(&mut self, session: SessionId) {
        if self.session == Some(session) {
            self.session = None;
            self.sent.clear();
            self.queue.clear();
            self.changes.clear();
            self.resync_open = false;
            self.out.clear();
        }
    }

    /// Starts a full resync (after a lost send, or on registration).
    pub fn resync(&mut self, now: Instant) {
        if self.session.is_none() {
            return;
        }
        self.stats.resyncs += 1;
        debug!("mirror: full resync to the spare");
        self.sent.clear();
        self.queue.clear();
        self.changes.clear();
        // Deltas not yet taken by the shell are superseded by the resync.
        self.out.clear();
        self.queue.push_back(Item::Marker);
        self.resync_open = true;
        // Send the opening marker promptly.
        self.next_tick = self.next_tick.min(now);
    }

    /// The spare registered and not down.
    pub fn spare(&self) -> Option<SessionId> {
        self.session
    }

    fn queue_change(&mut self, key: FlowKey, change: Change, now: Instant) {
        if let Some(slot) = self.changes.get_mut(&key) {
            // Already queued: send the newest form at the old position.
            slot.0 = change;
            return;
        }
        self.changes.insert(key, (change, now));
        self.queue.push_back(Item::Key(key));
    }

    fn differs(s: &Sent, e: &FlowEntry, refresh: Duration) -> bool {
        s.next_hop != e.next_hop
            || s.state != FlowPhase::from(e.state)
            || s.label != e.label
            || e.last_seen.saturating_since(s.last_seen) >= refresh
    }

    /// A flow was pinned or changed (e.g. from the new-flow queue, a shortcut).
    pub fn flow_pinned(&mut self, entry: &FlowEntry, now: Instant) {
        if self.session.is_none() {
            self.stats.no_spare += 1;
            return;
        }
        let cur = self.generation;
        let full = self.sent.len() >= self.cfg.max_flows;
        match self.sent.get_mut(&entry.key) {
            Some(s) if !Self::differs(s, entry, self.cfg.refresh_after) => {
                s.seen = cur;
                return;
            }
            Some(_) => {}
            None if full => {
                self.stats.untracked += 1;
                return;
            }
            None => {}
        }
        self.sent.insert(
            entry.key,
            Sent {
                next_hop: entry.next_hop,
                state: entry.state.into(),
                label: entry.label,
                last_seen: entry.last_seen,
                seen: cur,
            },
        );
        self.queue_change(entry.key, Change::Upsert(*entry), now);
    }

    /// A flow was unpinned by the shell.
    pub fn flow_removed(&mut self, key: &FlowKey, now: Instant) {
        if self.sent.remove(key).is_some() {
            self.queue_change(*key, Change::Remove, now);
        }
    }

    /// Whether the shell should call [`MirrorSender::scan`] now.
    pub fn scan_due(&self, now: Instant) -> bool {
        self.session.is_some()
            && (self.resync_open
                || self
                    .last_scan
                    .is_none_or(|t| now.saturating_since(t) >= self.cfg.scan_interval))
    }

    /// When the next scan is due (`None`: no spare registered). A shell that
    /// sleeps until a deadline adds this one to its timers.
    pub fn next_scan(&self) -> Option<Instant> {
        self.session?;
        if self.resync_open {
            return Some(self.last_scan.unwrap_or(Instant::ZERO));
        }
        Some(
            self.last_scan
                .map_or(Instant::ZERO, |t| t + self.cfg.scan_interval),
        )
    }

    /// Compares the whole flow table with what the spare has: queues new and
    /// changed flows and removals of flows gone. Closes an open resync.
    pub fn scan(&mut self, now: Instant, flows: impl IntoIterator<Item = FlowEntry>) {
        if self.session.is_none() {
            return;
        }
        self.stats.scans += 1;
        self.last_scan = Some(now);
        self.generation = self.generation.wrapping_add(1);
        for e in flows {
            self.flow_pinned(&e, now);
        }
        let cur = self.generation;
        let gone: Vec<FlowKey> = self
            .sent
            .iter()
            .filter(|(_, s)| s.seen != cur)
            .map(|(k, _)| *k)
            .collect();
        for k in gone {
            self.flow_removed(&k, now);
        }
        if self.resync_open {
            self.resync_open = false;
            self.queue.push_back(Item::Marker);
        }
    }

    /// When the shell must next wake for this sender (`None`: no spare): then
    /// [`MirrorSender::scan`] if [`MirrorSender::scan_due`], and
    /// [`MirrorSender::handle_timeout`].
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.session?;
        let scan = if self.resync_open {
            // The resync waits for a scan: as soon as possible.
            Instant::ZERO
        } else {
            self.last_scan
                .map_or(Instant::ZERO, |t| t + self.cfg.scan_interval)
        };
        let send = (!self.queue.is_empty()).then_some(self.next_tick);
        Some(send.map_or(scan, |t| t.min(scan)))
    }

    /// Sends queued changes as bounded deltas when the interval is up.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now < self.next_tick {
            return;
        }
        self.next_tick = now + self.cfg.interval;
        let Some(session) = self.session else {
            return;
        };
        for _ in 0..self.cfg.max_batches_per_tick {
            let Some(message) = self.next_delta(now) else {
                break;
            };
            self.stats.deltas += 1;
            self.out.push_back(SlrAction::Send { session, message });
        }
    }

    fn next_delta(&mut self, now: Instant) -> Option<Outgoing> {
        let mut upserts = Vec::new();
        let mut removals = Vec::new();
        while let Some(item) = self.queue.front().copied() {
            match item {
                Item::Marker => {
                    if upserts.is_empty() && removals.is_empty() {
                        self.queue.pop_front();
                        return Some(Outgoing::MirrorDelta { upserts, removals });
                    }
                    // The marker goes alone, after this batch.
                    break;
                }
                Item::Key(k) => {
                    let Some((change, _)) = self.changes.get(&k).copied() else {
                        self.queue.pop_front();
                        continue;
                    };
                    match change {
                        Change::Upsert(e) if upserts.len() < MAX_DELTA_UPSERTS => {
                            upserts.push(FlowRecord::from_entry(&e, now));
                        }
                        Change::Remove if removals.len() < MAX_DELTA_REMOVALS => {
                            removals.push(k);
                        }
                        _ => break,
                    }
                    self.changes.remove(&k);
                    self.queue.pop_front();
                }
            }
        }
        if upserts.is_empty() && removals.is_empty() {
            return None;
        }
        self.stats.upserts += upserts.len() as u64;
        self.stats.removals += removals.len() as u64;
        Some(Outgoing::MirrorDelta { upserts, removals })
    }

    /// The next message for the shell: always [`SlrAction::Send`] of a
    /// [`Outgoing::MirrorDelta`] to the spare's session.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<SlrAction> {
        self.out.pop_front()
    }

    /// How long the oldest unsent change has waited.
    pub fn oldest_unsent(&self, now: Instant) -> Option<Duration> {
        self.changes
            .values()
            .map(|(_, at)| now.saturating_since(*at))
            .max()
    }

    /// Flows the spare is known to have (sent or queued).
    pub fn tracked(&self) -> usize {
        self.sent.len()
    }

    /// Counters.
    pub fn stats(&self) -> &MirrorSenderStats {
        &self.stats
    }
}

/// Counters of the spare's side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MirrorReceiverStats {
    /// Deltas applied (markers included).
    pub deltas: u64,
    /// Flows installed or updated.
    pub upserts: u64,
    /// Flows removed on the primary's word.
    pub removals: u64,
    /// Flows removed at the end of a resync (the primary no longer has them).
    pub swept: u64,
    /// Full resyncs completed.
    pub resyncs: u64,
    /// Upserts the engine refused.
    pub install_refused: u64,
    /// Upserts refused because `max_flows` flows are already mirrored.
    pub untracked: u64,
}

/// Spare side of mirroring.
///
/// Shell duties: the spare dials its primary with `LocalNode { role:
/// Role::Spare, level: <the primary's level> }`; on that session's
/// `PeerEvent::Registered` call [`MirrorReceiver::primary_registered`], on each
/// `PeerEvent::MirrorDelta` call [`MirrorReceiver::apply`] with the spare's
/// engine. After a [`Takeover`] stop feeding it.
#[derive(Debug)]
pub struct MirrorReceiver {
    max_flows: usize,
    /// Mirrored flows and the resync generation that last carried each.
    mirrored: BTreeMap<FlowKey, u64>,
    generation: u64,
    in_resync: bool,
    lag: Option<Duration>,
    last_delta: Option<Instant>,
    stats: MirrorReceiverStats,
}

impl MirrorReceiver {
    /// A receiver mirroring at most `max_flows` flows.
    pub fn new(max_flows: usize) -> Self {
        Self {
            max_flows,
            mirrored: BTreeMap::new(),
            generation: 0,
            in_resync: false,
            lag: None,
            last_delta: None,
            stats: MirrorReceiverStats::default(),
        }
    }

    /// The spare takes over: every mirrored flow counts as seen `now`, because
    /// the primary's silence before the takeover is not the flows' idleness (a
    /// flow mirrored half-open, its established state not scanned yet, would
    /// otherwise hit its SYN timeout before its next packet). Consumes the
    /// receiver: no delta applies after a takeover. Returns the flows the engine
    /// refused to refresh.
    pub fn take_over<A: RouterApi + ?Sized>(self, now: Instant, api: &mut A) -> u64 {
        let mut refused = 0;
        for key in self.mirrored.keys() {
            if let Some(mut e) = api.lookup_flow(key, now) {
                e.last_seen = now;
                if api.install_flow(&e, now).is_err() {
                    refused += 1;
                }
            }
        }
        refused
    }

    /// A new session with the primary registered: its sender starts with a resync.
    pub fn primary_registered(&mut self, _now: Instant) {
        self.in_resync = false;
    }

    /// Applies one delta from the primary to the spare's engine.
    pub fn apply<A: RouterApi + ?Sized>(&mut self, now: Instant, delta: &MirrorDelta, api: &mut A) {
        self.stats.deltas += 1;
        self.last_delta = Some(now);
        if delta.upserts.is_empty() && delta.removals.is_empty() {
            self.marker(now, api);
            return;
        }
        for rec in &delta.upserts {
            if !self.mirrored.contains_key(&rec.key) && self.mirrored.len() >= self.max_flows {
                self.stats.untracked += 1;
                continue;
            }
            match api.install_flow(&rec.to_entry(now), now) {
                Ok(_) => {
                    self.stats.upserts += 1;
                    self.mirrored.insert(rec.key, self.generation);
                }
                Err(e) => {
                    self.stats.install_refused += 1;
                    debug!(key = %rec.key, error = %e, "mirrored flow refused by the engine");
                }
            }
        }
        for key in &delta.removals {
            self.mirrored.remove(key);
            if api.remove_flow(key, now).is_some() {
                self.stats.removals += 1;
            }
        }
        // A change (pin, state change, refresh) is caused by a packet, so a
        // record's min(age, idle) is about how long its change waited at the
        // primary; the delta's lag is the longest such wait. Resync records
        // carry old quiet flows, so they do not count.
        if !self.in_resync
            && let Some(ms) = delta.upserts.iter().map(|r| r.idle_ms.min(r.age_ms)).max()
        {
            self.lag = Some(Duration::from_millis(ms));
        }
    }

    fn marker<A: RouterApi + ?Sized>(&mut self, now: Instant, api: &mut A) {
        if !self.in_resync {
            self.in_resync = true;
            self.generation = self.generation.wrapping_add(1);
            return;
        }
        self.in_resync = false;
        let cur = self.generation;
        let stale: Vec<FlowKey> = self
            .mirrored
            .iter()
            .filter(|(_, g)| **g != cur)
            .map(|(k, _)| *k)
            .collect();
        for k in stale {
            self.mirrored.remove(&k);
            if api.remove_flow(&k, now).is_some() {
                self.stats.swept += 1;
            }
        }
        self.stats.resyncs += 1;
        debug!(flows = self.mirrored.len(), "mirror resync complete");
    }

    /// Whether a resync is in progress (its end not yet received).
    pub fn in_resync(&self) -> bool {
        self.in_resync
    }

    /// How long the oldest change of the newest delta (outside a resync) had
    /// waited at the primary when sent: at most the mirror interval unless the
    /// sender is backlogged. Excludes the one-way signalling delay, which the
    /// shell adds from its own measurement if it has one.
    pub fn lag(&self) -> Option<Duration> {
        self.lag
    }

    /// When the newest delta arrived.
    pub fn last_delta_at(&self) -> Option<Instant> {
        self.last_delta
    }

    /// Flows mirrored.
    pub fn mirrored(&self) -> usize {
        self.mirrored.len()
    }

    /// Counters.
    pub fn stats(&self) -> &MirrorReceiverStats {
        &self.stats
    }
}

/// The spare decided the primary is dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Takeover {
    /// When the primary was last heard.
    pub last_heard: Instant,
    /// How long it had been silent.
    pub silent_for: Duration,
}

/// Spare side: declares the primary dead after `dead_after` without any message
/// from it, once.
///
/// Shell duties: call [`FailoverMonitor::heard`] after every `handle_input` of
/// the session to the primary (keepalives raise no event, so events are not
/// enough); run [`FailoverMonitor::handle_timeout`] at
/// [`FailoverMonitor::poll_timeout`]. On [`Takeover`]: take the primary's
/// addresses and role (serve its subnets, answer as the SLR, add the
/// addresses with `SlrControl::add_local_addr`) and stop mirroring. The monitor
/// arms at the first message: a spare that never reached its primary never
/// takes over.
#[derive(Debug, Clone)]
pub struct FailoverMonitor {
    dead_after: Duration,
    last_heard: Option<Instant>,
    /// Declared dead by the session before `dead_after` ran out.
    declared: Option<Instant>,
    fired: bool,
}

impl FailoverMonitor {
    /// Dead after `dead_after` of silence.
    pub fn new(dead_after: Duration) -> Self {
        Self {
            dead_after,
            last_heard: None,
            declared: None,
            fired: false,
        }
    }

    /// Dead after three keepalive intervals of silence.
    pub fn for_keepalive(keepalive: Duration) -> Self {
        Self::new(keepalive.saturating_mul(3))
    }

    /// Something arrived from the primary.
    pub fn heard(&mut self, now: Instant) {
        if self.last_heard.is_none_or(|t| now > t) {
            self.last_heard = Some(now);
        }
    }

    /// When [`FailoverMonitor::handle_timeout`] must next run.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.fired {
            return None;
        }
        let silence = self.last_heard.map(|t| t + self.dead_after);
        match (self.declared, silence) {
            (Some(d), Some(s)) => Some(d.min(s)),
            (d, s) => d.or(s),
        }
    }

    /// `Some` exactly once, when the primary has been silent for `dead_after`.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Takeover> {
        let last = self.last_heard?;
        let declared = self.declared.is_some_and(|d| now >= d);
        if self.fired || (now < last + self.dead_after && !declared) {
            return None;
        }
        self.fired = true;
        let silent_for = now.saturating_since(last);
        warn!(
            silent_ms = silent_for.as_millis() as u64,
            "primary SLR silent: taking over"
        );
        Some(Takeover {
            last_heard: last,
            silent_for,
        })
    }

    /// The primary is known dead now (its session's own dead interval ran out,
    /// which already waited for its keepalives): take over at the next
    /// [`FailoverMonitor::handle_timeout`] instead of waiting `dead_after` more.
    /// A monitor that never heard the primary stays unarmed.
    pub fn declare_dead(&mut self, now: Instant) {
        if self.last_heard.is_some() && self.declared.is_none() {
            self.declared = Some(now);
        }
    }

    /// Whether the takeover was declared.
    pub fn taken_over(&self) -> bool {
        self.fired
    }
}
