//! The node's recovery parts (DESIGN.md §5): mirroring to a hot spare, the
//! spare's failover, authenticated server flow advertisements, and an entry
//! router's hand-over of unknown flows to its SLR. WHOHAS itself is the control
//! side's ([`SlrControl::recover`]).

use super::counters::RecoveryCounters;
use crate::peer::PeerEvent;
use crate::recovery::{
    AdvertAuth, AdvertAuthStats, AdvertKey, AdvertOutcome, FailoverMonitor, MirrorConfig,
    MirrorReceiver, MirrorReceiverStats, MirrorSender, MirrorSenderStats,
};
use crate::slr::{SessionId, SlrAction, SlrControl};
use router_core::Instant;
use router_core::engine::Engine;
use router_core::flow::FlowEntry;
use router_core::wire::flowad::{AdvertFields, find_in_echo_reply};
use std::net::IpAddr;
use std::time::Duration;
use tracing::{debug, info, warn};

/// A hot spare's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpareConfig {
    /// Silence of the primary after which it is declared dead.
    pub dead_after: Duration,
    /// The primary's addresses the spare takes (the control side counts them as
    /// its own from the takeover on).
    pub take_over: Vec<IpAddr>,
    /// Most flows mirrored (bound it like the flow table it fills).
    pub mirror_capacity: usize,
}

/// What a takeover did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TakeoverReport {
    /// When.
    pub at: Instant,
    /// How long the primary had been silent.
    pub silent_for: Duration,
    /// Mirrored flows whose refresh the engine refused.
    pub refresh_refused: u64,
}

#[derive(Debug)]
struct Spare {
    cfg: SpareConfig,
    receiver: Option<MirrorReceiver>,
    monitor: FailoverMonitor,
    primary: Option<SessionId>,
    takeover: Option<TakeoverReport>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct NodeRecovery {
    forward_unknown_to: Option<IpAddr>,
    mirror_cfg: Option<MirrorConfig>,
    sender: Option<MirrorSender>,
    spare: Option<Spare>,
    auth: Option<AdvertAuth>,
    unix_ms_at_zero: u64,
    counters: RecoveryCounters,
}

impl NodeRecovery {
    pub(super) fn new(
        forward_unknown_to: Option<IpAddr>,
        mirror_cfg: Option<MirrorConfig>,
        spare: Option<SpareConfig>,
        auth: Option<AdvertAuth>,
        unix_ms_at_zero: u64,
    ) -> Self {
        Self {
            forward_unknown_to,
            mirror_cfg,
            sender: None,
            spare: spare.map(|cfg| Spare {
                receiver: Some(MirrorReceiver::new(cfg.mirror_capacity)),
                monitor: FailoverMonitor::new(cfg.dead_after),
                cfg,
                primary: None,
                takeover: None,
            }),
            auth,
            unix_ms_at_zero,
            counters: RecoveryCounters::default(),
        }
    }

    pub(super) fn counters(&self) -> RecoveryCounters {
        self.counters
    }

    /// Advertisement check counters (none without keys).
    pub fn auth_stats(&self) -> Option<AdvertAuthStats> {
        self.auth.as_ref().map(|a| *a.stats())
    }

    /// The primary's mirroring counters, once a spare registered.
    pub fn sender_stats(&self) -> Option<&MirrorSenderStats> {
        self.sender.as_ref().map(MirrorSender::stats)
    }

    /// Whether a spare is registered and mirrored to.
    pub fn mirroring(&self) -> bool {
        self.mirrors()
    }

    /// The spare's mirror counters (until the takeover).
    pub fn receiver_stats(&self) -> Option<&MirrorReceiverStats> {
        self.spare
            .as_ref()
            .and_then(|s| s.receiver.as_ref())
            .map(MirrorReceiver::stats)
    }

    /// Spare: registered with its primary.
    pub fn primary_registered(&self) -> bool {
        self.spare.as_ref().is_some_and(|s| s.primary.is_some())
    }

    pub(super) fn takeover(&self) -> Option<TakeoverReport> {
        self.spare.as_ref().and_then(|s| s.takeover)
    }

    pub(super) fn mirror_state(&self) -> Option<(usize, Option<Duration>)> {
        let r = self.spare.as_ref()?.receiver.as_ref()?;
        Some((r.mirrored(), r.lag()))
    }

    pub(super) fn set_advert_auth(&mut self, auth: Option<AdvertAuth>) {
        self.auth = auth;
    }

    pub(super) fn set_advert_keys(&mut self, keys: Vec<AdvertKey>) -> bool {
        let Some(auth) = self.auth.as_mut() else {
            return false;
        };
        // The replay cache stays: a rollover must not reopen the window.
        info!(keys = keys.len(), "advertisement keys reloaded");
        auth.set_keys(keys);
        self.counters.key_reloads += 1;
        true
    }

    pub(super) fn forward_unknown_to(&self) -> Option<IpAddr> {
        self.forward_unknown_to
    }

    pub(super) fn count_forwarded(&mut self) {
        self.counters.recover_forwarded += 1;
    }

    pub(super) fn count_sent_to_pin(&mut self) {
        self.counters.recover_sent_to_pin += 1;
    }

    // ----- mirroring (primary) ------------------------------------------------

    pub(super) fn mirrors(&self) -> bool {
        self.sender.as_ref().is_some_and(|s| s.spare().is_some())
    }

    pub(super) fn flow_pinned(&mut self, entry: &FlowEntry, now: Instant) {
        if let Some(s) = self.sender.as_mut() {
            s.flow_pinned(entry, now);
        }
    }

    pub(super) fn spare_registered(&mut self, session: SessionId, now: Instant) {
        let Some(cfg) = self.mirror_cfg else {
            return;
        };
        self.sender
            .get_or_insert_with(|| MirrorSender::new(cfg, now))
            .spare_registered(session, now);
    }

    pub(super) fn spare_down(&mut self, session: SessionId) {
        if let Some(s) = self.sender.as_mut() {
            s.spare_down(session);
        }
    }

    pub(super) fn poll_mirror_action(&mut self) -> Option<SlrAction> {
        self.sender.as_mut()?.poll_action()
    }

    // ----- failover (spare) ---------------------------------------------------

    pub(super) fn primary_event(
        &mut self,
        now: Instant,
        id: SessionId,
        event: PeerEvent,
        engine: &mut Engine,
    ) {
        let Some(sp) = self.spare.as_mut() else {
            return;
        };
        match event {
            PeerEvent::Registered { identity, .. } => {
                info!(primary = %identity, "registered with the primary as its hot spare");
                sp.primary = Some(id);
                if let Some(r) = sp.receiver.as_mut() {
                    r.primary_registered(now);
                }
                sp.monitor.heard(now);
            }
            PeerEvent::MirrorDelta(d) => {
                sp.monitor.heard(now);
                if let Some(r) = sp.receiver.as_mut() {
                    r.apply(now, &d, engine);
                }
            }
            PeerEvent::PeerDown { reason } => {
                if sp.primary == Some(id) {
                    warn!(%reason, "session to the primary down");
                    sp.primary = None;
                    // Its dead interval ran out (it waited for the primary's
                    // keepalives): the primary is dead now, no second wait.
                    // Other ends (a reset, a clean close) leave room to reconnect.
                    if matches!(reason, crate::peer::DownReason::Timeout) {
                        sp.monitor.declare_dead(now);
                    }
                }
            }
            other => debug!(event = ?other, "primary session event ignored"),
        }
    }

    pub(super) fn primary_heard(&mut self, now: Instant) {
        if let Some(sp) = self.spare.as_mut() {
            sp.monitor.heard(now);
        }
    }

    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        let mirror = self.sender.as_ref().and_then(|s| {
            let scan = s.spare().is_some().then(|| s.next_scan()).flatten();
            match (s.poll_timeout(), scan) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        });
        let failover = self
            .spare
            .as_ref()
            .filter(|s| s.takeover.is_none())
            .and_then(|s| s.monitor.poll_timeout());
        match (mirror, failover) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Mirror scans and batches (primary); failover (spare).
    pub(super) fn handle_timeout(
        &mut self,
        now: Instant,
        slr: &mut SlrControl,
        engine: &mut Engine,
    ) -> Option<TakeoverReport> {
        if let Some(s) = self.sender.as_mut() {
            if s.spare().is_some() && s.scan_due(now) {
                s.scan(now, engine.flows().export(now));
            }
            if s.poll_timeout().is_some_and(|t| t <= now) {
                s.handle_timeout(now);
            }
        }
        let sp = self.spare.as_mut().filter(|s| s.takeover.is_none())?;
        if sp.monitor.poll_timeout().is_none_or(|t| t > now) {
            return None;
        }
        let t = sp.monitor.handle_timeout(now)?;
        warn!(
            silent_ms = u64::try_from(t.silent_for.as_millis()).unwrap_or(u64::MAX),
            "primary silent: taking over"
        );
        for a in &sp.cfg.take_over {
            if !slr.add_local_addr(*a) {
                self.counters.local_addr_refused += 1;
                warn!(addr = %a, "taken-over address not added to the control side (full)");
            }
        }
        // The mirrored table is now ours; no more deltas are applied.
        let refresh_refused = sp.receiver.take().map_or(0, |rx| rx.take_over(now, engine));
        self.counters.refresh_refused += refresh_refused;
        let report = TakeoverReport {
            at: now,
            silent_for: t.silent_for,
            refresh_refused,
        };
        sp.takeover = Some(report);
        Some(report)
    }

    // ----- advertisements -------------------------------------------------------

    /// Parse and authenticate the advertisement in an echo reply; `None` is a
    /// counted refusal.
    pub(super) fn verify_advert(&mut self, now: Instant, packet: &[u8]) -> Option<AdvertFields> {
        let Some(auth) = self.auth.as_mut() else {
            self.counters.adverts_no_keys += 1;
            return None;
        };
        let adv = match find_in_echo_reply(packet) {
            Some(Ok(a)) => a,
            Some(Err(e)) => {
                self.counters.adverts_malformed += 1;
                debug!(error = %e, "malformed advertisement dropped");
                return None;
            }
            None => {
                self.counters.adverts_malformed += 1;
                return None;
            }
        };
        let unix_ms = self
            .unix_ms_at_zero
            .saturating_add(now.as_nanos() / 1_000_000);
        match auth.verify(&adv, unix_ms) {
            Ok(fields) => Some(fields),
            Err(why) => {
                // Counted by reason in the auth stats.
                debug!(reason = ?why, "advertisement refused");
                None
            }
        }
    }

    pub(super) fn count_advert(&mut self, outcome: &AdvertOutcome, fields: &AdvertFields) {
        let c = &mut self.counters;
        match outcome {
            AdvertOutcome::Relay { to } => {
                c.adverts_relayed += 1;
                debug!(key = %fields.key, %to, "advertisement relayed along the pin");
            }
            AdvertOutcome::Installed => {
                c.adverts_installed += 1;
                info!(key = %fields.key, server = %fields.server, "flow state re-created from a server advertisement");
            }
            AdvertOutcome::Current => c.adverts_current += 1,
            _ => c.adverts_rejected += 1,
        }
    }
}
