//! The sans-IO peer: one signalling session, either side.
//!
//! Like quinn-proto's `Connection`, a [`Peer`] contains no networking code and reads
//! no clock: the shell hands it bytes and timestamps (`handle_*`) and takes out
//! bytes to send, events and its next deadline (`poll_*`). The handshake states are
//! values consumed by their transitions (rustls style), so only `AwaitingHello` can
//! accept a `Hello` into `Registered` and only `AwaitingAck` can accept a `HelloAck`.

use std::collections::VecDeque;
use std::time::Duration;

use router_core::classify::FlowKey;
use router_core::policy::Level;
use router_core::time::Instant;
use rustls_pki_types::{CertificateDer, DnsName, ServerName};
use tracing::{debug, warn};

use crate::codec::{self, CodecError, CodecStats, Decoder};
use crate::message::{
    Envelope, Epoch, FlowRecord, HelloAck, Message, MirrorDelta, NodeName, Registration, Role,
    StateUpdate, SubnetLoad, TunnelObject, WhoHas, WhoHasAnswer,
};

/// How many earlier epochs of a peer are remembered to refuse their replay.
pub const RETIRED_EPOCHS: usize = 16;

/// The shortest keepalive interval a hot spare may ask of its primary (20
/// small frames a second on one session).
pub const MIN_SPARE_KEEPALIVE: Duration = Duration::from_millis(50);

/// Timers and bounds of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerConfig {
    /// Send a keepalive when nothing else was sent for this long.
    pub keepalive_interval: Duration,
    /// Declare the peer down after this long without a message from it. Stretched to
    /// three of the peer's announced keepalive intervals, at most four times this.
    pub dead_interval: Duration,
    /// Give up a handshake not completed within this long.
    pub hello_timeout: Duration,
    /// Most encoded bytes waiting for the shell to send.
    pub max_pending_bytes: usize,
}

impl Default for PeerConfig {
    fn default() -> Self {
        Self {
            keepalive_interval: Duration::from_secs(5),
            dead_interval: Duration::from_secs(15),
            hello_timeout: Duration::from_secs(10),
            max_pending_bytes: 1 << 20,
        }
    }
}

/// What this node says about itself in its `Hello` / `HelloAck`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalNode {
    /// Our name (a dNSName SAN of our certificate).
    pub name: NodeName,
    /// Our level.
    pub level: Level,
    /// Our role.
    pub role: Role,
}

/// What the transport authenticated about the remote end, against which the name in
/// its `Hello` is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerAuth {
    /// The peer's verified end-entity certificate: the claimed name must be one of
    /// its dNSName subjectAltNames (the subject CN is not consulted).
    Certificate(CertificateDer<'static>),
    /// A name already verified by other means (e.g. the TLS server name we dialled).
    Name(NodeName),
}

impl PeerAuth {
    fn admits(&self, claimed: &NodeName) -> bool {
        match self {
            Self::Name(n) => n == claimed,
            Self::Certificate(der) => {
                let Ok(cert) = webpki::EndEntityCert::try_from(der) else {
                    return false;
                };
                let Ok(dns) = DnsName::try_from(claimed.as_str()) else {
                    return false;
                };
                cert.verify_is_valid_for_subject_name(&ServerName::DnsName(dns))
                    .is_ok()
            }
        }
    }
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DownReason {
    /// Nothing heard from the peer within the dead interval.
    #[error("no message within the dead interval")]
    Timeout,
    /// The handshake did not complete in time.
    #[error("handshake not completed within the hello timeout")]
    HandshakeTimeout,
    /// The name in the peer's hello is not in its certificate.
    #[error("peer claims to be {claimed}, which its certificate does not name")]
    IdentityMismatch {
        /// The claimed name.
        claimed: NodeName,
    },
    /// The peer sent a message its state does not allow.
    #[error("protocol violation: expected {expected}, got {got}")]
    Protocol {
        /// What the state accepts.
        expected: &'static str,
        /// What arrived.
        got: &'static str,
    },
    /// The byte stream was not valid.
    #[error("codec error: {0}")]
    Codec(#[source] CodecError),
    /// The transport closed cleanly (EOF).
    #[error("transport closed")]
    TransportClosed,
    /// The transport failed; `detail` is the shell's I/O or TLS error (e.g. the
    /// peer's TLS alert refusing our certificate).
    #[error("transport failed: {detail}")]
    TransportFailed {
        /// The error as text.
        detail: String,
    },
    /// Closed by this side.
    #[error("closed locally")]
    Closed,
}

/// What a session reports to its owner.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum PeerEvent {
    /// The handshake completed (or the peer re-registered with a new epoch).
    Registered {
        /// The peer's name, checked against its certificate.
        identity: NodeName,
        /// The peer's level.
        level: Level,
        /// The peer's role.
        role: Role,
        /// The peer's session epoch.
        epoch: Epoch,
    },
    /// A fresh state update.
    StateUpdate(StateUpdate),
    /// A shortcut.
    TunnelObject(TunnelObject),
    /// A flow state query.
    WhoHas(WhoHas),
    /// A flow state answer.
    WhoHasAnswer(WhoHasAnswer),
    /// A fresh mirror delta.
    MirrorDelta(MirrorDelta),
    /// The session ended; no further events follow.
    PeerDown {
        /// Why.
        reason: DownReason,
    },
}

/// A message the owner wants sent; sequence numbers are the peer's business.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Outgoing {
    /// Subnets served and loads.
    StateUpdate {
        /// At most [`crate::MAX_SUBNETS_PER_UPDATE`].
        subnets: Vec<SubnetLoad>,
    },
    /// A shortcut.
    TunnelObject(TunnelObject),
    /// A flow state query.
    WhoHas(WhoHas),
    /// A flow state answer.
    WhoHasAnswer(WhoHasAnswer),
    /// A mirror delta.
    MirrorDelta {
        /// Flows pinned or changed.
        upserts: Vec<FlowRecord>,
        /// Flows gone.
        removals: Vec<FlowKey>,
    },
}

/// Why a message could not be queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// Wait for [`PeerEvent::Registered`] first.
    #[error("session not registered yet")]
    NotRegistered,
    /// The session is down.
    #[error("session is down")]
    Down,
    /// The shell is not draining `poll_transmit` fast enough.
    #[error("{pending} bytes already pending (limit {limit})")]
    Backpressure {
        /// Bytes pending.
        pending: usize,
        /// The limit.
        limit: usize,
    },
    /// The message breaks a codec limit.
    #[error("cannot encode: {0}")]
    Codec(#[source] CodecError),
}

/// Session counters; every ignored or refused input has one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Messages accepted.
    pub messages_in: u64,
    /// Messages queued for sending.
    pub messages_out: u64,
    /// State updates ignored because their seq was not above the last accepted.
    pub stale_updates: u64,
    /// Mirror deltas ignored because their seq was not above the last accepted.
    pub stale_deltas: u64,
    /// Messages ignored because they carried an epoch other than the session's.
    pub wrong_epoch: u64,
    /// Hellos or acks refused because they replay an earlier epoch.
    pub replayed_hellos: u64,
    /// Repeated hellos or acks of the current epoch, ignored.
    pub duplicate_hellos: u64,
    /// Messages refused because they arrived before the handshake completed.
    pub refused_before_hello: u64,
    /// Hellos whose name the certificate does not carry.
    pub identity_mismatches: u64,
    /// Keepalives received.
    pub keepalives_in: u64,
    /// Keepalives queued.
    pub keepalives_out: u64,
    /// Outgoing messages refused by [`Peer::send`].
    pub send_refused: u64,
    /// Sessions ended by the dead interval.
    pub timeouts: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Acceptor,
    Initiator,
}

/// Everything that outlives a state.
#[derive(Debug)]
struct Ctx {
    config: PeerConfig,
    local: LocalNode,
    auth: PeerAuth,
    side: Side,
    epoch: Epoch,
    retired: VecDeque<Epoch>,
    pending: Vec<u8>,
    last_tx: Instant,
    events: VecDeque<PeerEvent>,
    stats: PeerStats,
    update_seq: u64,
    delta_seq: u64,
    keepalive_seq: u64,
}

impl Ctx {
    fn registration(&self) -> Registration {
        Registration {
            node: self.local.name.clone(),
            level: self.local.level,
            role: self.local.role,
            keepalive_ms: u32::try_from(self.config.keepalive_interval.as_millis())
                .unwrap_or(u32::MAX),
        }
    }

    /// Queues a control frame (hello, ack, keepalive); these stay small and bypass
    /// the backpressure limit.
    fn queue_control(&mut self, now: Instant, message: Message) {
        match codec::encode(
            &Envelope {
                epoch: self.epoch,
                message,
            },
            &mut self.pending,
        ) {
            Ok(()) => {
                self.last_tx = now;
                self.stats.messages_out += 1;
            }
            Err(e) => warn!(error = %e, "cannot encode control message"),
        }
    }

    fn is_retired(&self, e: Epoch) -> bool {
        self.retired.contains(&e)
    }

    fn retire(&mut self, e: Epoch) {
        if self.retired.len() == RETIRED_EPOCHS {
            self.retired.pop_front();
        }
        self.retired.push_back(e);
    }

    /// A hot spare detects our death by our keepalives' absence, so it asks
    /// for them at its own pace by announcing a shorter interval (as BFD's
    /// required-min-rx does): the acceptor sends at that pace on this session
    /// only, never faster than [`MIN_SPARE_KEEPALIVE`]. Other roles keep ours.
    fn adopt_spare_keepalive(&mut self, remote: &Registration) {
        if remote.role != Role::Spare {
            return;
        }
        let asked = Duration::from_millis(u64::from(remote.keepalive_ms)).max(MIN_SPARE_KEEPALIVE);
        if asked < self.config.keepalive_interval {
            debug!(peer = %remote.node, keepalive_ms = asked.as_millis() as u64, "keepalives at the spare's pace");
            self.config.keepalive_interval = asked;
        }
    }

    fn dead_after(&self, remote: &Registration) -> Duration {
        let announced = Duration::from_millis(u64::from(remote.keepalive_ms)).saturating_mul(3);
        self.config
            .dead_interval
            .max(announced)
            .min(self.config.dead_interval.saturating_mul(4))
    }

    fn registered_event(remote: &Registration, epoch: Epoch) -> PeerEvent {
        PeerEvent::Registered {
            identity: remote.node.clone(),
            level: remote.level,
            role: remote.role,
            epoch,
        }
    }
}

/// Acceptor side: waiting for the lower level's `Hello`.
#[derive(Debug)]
struct AwaitingHello {
    deadline: Instant,
}

/// Initiator side: our `Hello` is out, waiting for the `HelloAck`.
#[derive(Debug)]
struct AwaitingAck {
    deadline: Instant,
}

/// Handshake done.
#[derive(Debug)]
struct Registered {
    remote: Registration,
    remote_epoch: Epoch,
    last_rx: Instant,
    dead_after: Duration,
    last_update_seq: Option<u64>,
    last_delta_seq: Option<u64>,
}

#[derive(Debug)]
enum State {
    AwaitingHello(AwaitingHello),
    AwaitingAck(AwaitingAck),
    Registered(Box<Registered>),
    Down,
}

/// Outcome of a transition: the next state, or the end of the session.
type Next = Result<State, DownReason>;

impl AwaitingHello {
    fn handle(self, ctx: &mut Ctx, now: Instant, env: Envelope) -> Next {
        let Message::Hello(reg) = env.message else {
            ctx.stats.refused_before_hello += 1;
            return Err(DownReason::Protocol {
                expected: "hello",
                got: env.message.kind(),
            });
        };
        if ctx.is_retired(env.epoch) {
            ctx.stats.replayed_hellos += 1;
            return Ok(State::AwaitingHello(self));
        }
        Ok(State::Registered(Box::new(Registered::accept(
            ctx, now, reg, env.epoch,
        )?)))
    }
}

impl AwaitingAck {
    fn handle(self, ctx: &mut Ctx, now: Instant, env: Envelope) -> Next {
        let Message::HelloAck(ack) = env.message else {
            ctx.stats.refused_before_hello += 1;
            return Err(DownReason::Protocol {
                expected: "hello_ack",
                got: env.message.kind(),
            });
        };
        if ack.your_epoch != ctx.epoch {
            // An ack of some other session's hello: a replay, not ours to complete.
            ctx.stats.replayed_hellos += 1;
            return Ok(State::AwaitingAck(self));
        }
        if !ctx.auth.admits(&ack.registration.node) {
            ctx.stats.identity_mismatches += 1;
            return Err(DownReason::IdentityMismatch {
                claimed: ack.registration.node,
            });
        }
        let remote = ack.registration;
        ctx.events
            .push_back(Ctx::registered_event(&remote, env.epoch));
        debug!(peer = %remote.node, epoch = %env.epoch, "registered with upper level");
        Ok(State::Registered(Box::new(Registered {
            dead_after: ctx.dead_after(&remote),
            remote,
            remote_epoch: env.epoch,
            last_rx: now,
            last_update_seq: None,
            last_delta_seq: None,
        })))
    }
}

impl Registered {
    /// Acceptor: a `Hello` opens (or re-opens) the session at `epoch`.
    fn accept(
        ctx: &mut Ctx,
        now: Instant,
        reg: Registration,
        epoch: Epoch,
    ) -> Result<Self, DownReason> {
        if !ctx.auth.admits(&reg.node) {
            ctx.stats.identity_mismatches += 1;
            return Err(DownReason::IdentityMismatch { claimed: reg.node });
        }
        ctx.adopt_spare_keepalive(&reg);
        let ack = HelloAck {
            registration: ctx.registration(),
            your_epoch: epoch,
        };
        ctx.queue_control(now, Message::HelloAck(ack));
        ctx.events.push_back(Ctx::registered_event(&reg, epoch));
        debug!(peer = %reg.node, role = ?reg.role, epoch = %epoch, "peer registered");
        Ok(Self {
            dead_after: ctx.dead_after(&reg),
            remote: reg,
            remote_epoch: epoch,
            last_rx: now,
            last_update_seq: None,
            last_delta_seq: None,
        })
    }

    fn handle(mut self: Box<Self>, ctx: &mut Ctx, now: Instant, env: Envelope) -> Next {
        if let Message::Hello(reg) = env.message {
            if ctx.side == Side::Initiator {
                return Err(DownReason::Protocol {
                    expected: "no hello from the upper level",
                    got: "hello",
                });
            }
            if env.epoch == self.remote_epoch {
                ctx.stats.duplicate_hellos += 1;
                self.last_rx = now;
                return Ok(State::Registered(self));
            }
            if ctx.is_retired(env.epoch) {
                ctx.stats.replayed_hellos += 1;
                return Ok(State::Registered(self));
            }
            // The peer restarted: a new epoch, accepted only through this Hello.
            ctx.retire(self.remote_epoch);
            return Ok(State::Registered(Box::new(Self::accept(
                ctx, now, reg, env.epoch,
            )?)));
        }
        if env.epoch != self.remote_epoch {
            ctx.stats.wrong_epoch += 1;
            debug!(peer = %self.remote.node, got = %env.epoch, want = %self.remote_epoch, "message from another epoch ignored");
            return Ok(State::Registered(self));
        }
        self.last_rx = now;
        match env.message {
            Message::Hello(_) => {}
            Message::HelloAck(_) => {
                if ctx.side == Side::Acceptor {
                    return Err(DownReason::Protocol {
                        expected: "no hello_ack from a lower level",
                        got: "hello_ack",
                    });
                }
                ctx.stats.duplicate_hellos += 1;
            }
            Message::StateUpdate(u) => {
                if self.last_update_seq.is_some_and(|last| u.seq <= last) {
                    ctx.stats.stale_updates += 1;
                } else {
                    self.last_update_seq = Some(u.seq);
                    ctx.stats.messages_in += 1;
                    ctx.events.push_back(PeerEvent::StateUpdate(u));
                }
            }
            Message::MirrorDelta(d) => {
                if self.last_delta_seq.is_some_and(|last| d.seq <= last) {
                    ctx.stats.stale_deltas += 1;
                } else {
                    self.last_delta_seq = Some(d.seq);
                    ctx.stats.messages_in += 1;
                    ctx.events.push_back(PeerEvent::MirrorDelta(d));
                }
            }
            Message::TunnelObject(t) => {
                ctx.stats.messages_in += 1;
                ctx.events.push_back(PeerEvent::TunnelObject(t));
            }
            Message::WhoHas(q) => {
                ctx.stats.messages_in += 1;
                ctx.events.push_back(PeerEvent::WhoHas(q));
            }
            Message::WhoHasAnswer(a) => {
                ctx.stats.messages_in += 1;
                ctx.events.push_back(PeerEvent::WhoHasAnswer(a));
            }
            Message::Keepalive { .. } => ctx.stats.keepalives_in += 1,
        }
        Ok(State::Registered(self))
    }

    fn dead_at(&self) -> Instant {
        self.last_rx + self.dead_after
    }
}

/// One signalling session with one neighbour, on either side of a registration.
#[derive(Debug)]
pub struct Peer {
    ctx: Ctx,
    state: State,
    decoder: Decoder,
    down_reported: bool,
}

impl Peer {
    /// Upper-level side: wait for the lower level's `Hello`. `epoch` must be fresh
    /// randomness for this session.
    pub fn accept(
        config: PeerConfig,
        local: LocalNode,
        auth: PeerAuth,
        epoch: Epoch,
        now: Instant,
    ) -> Self {
        let deadline = now + config.hello_timeout;
        Self {
            ctx: Self::ctx(config, local, auth, Side::Acceptor, epoch, now),
            state: State::AwaitingHello(AwaitingHello { deadline }),
            decoder: Decoder::new(),
            down_reported: false,
        }
    }

    /// Lower-level side: queue our `Hello` and wait for the `HelloAck`. `epoch` must
    /// be fresh randomness for this session.
    pub fn connect(
        config: PeerConfig,
        local: LocalNode,
        auth: PeerAuth,
        epoch: Epoch,
        now: Instant,
    ) -> Self {
        let deadline = now + config.hello_timeout;
        let mut ctx = Self::ctx(config, local, auth, Side::Initiator, epoch, now);
        let hello = Message::Hello(ctx.registration());
        ctx.queue_control(now, hello);
        Self {
            ctx,
            state: State::AwaitingAck(AwaitingAck { deadline }),
            decoder: Decoder::new(),
            down_reported: false,
        }
    }

    fn ctx(
        config: PeerConfig,
        local: LocalNode,
        auth: PeerAuth,
        side: Side,
        epoch: Epoch,
        now: Instant,
    ) -> Ctx {
        Ctx {
            config,
            local,
            auth,
            side,
            epoch,
            retired: VecDeque::new(),
            pending: Vec::new(),
            last_tx: now,
            events: VecDeque::new(),
            stats: PeerStats::default(),
            update_seq: 0,
            delta_seq: 0,
            keepalive_seq: 0,
        }
    }

    /// Remembers epochs of the peer's earlier sessions so their replay is refused
    /// (the newest [`RETIRED_EPOCHS`] are kept).
    pub fn with_retired_epochs(mut self, epochs: impl IntoIterator<Item = Epoch>) -> Self {
        for e in epochs {
            self.ctx.retire(e);
        }
        self
    }

    /// Processes bytes read from the transport.
    pub fn handle_input(&mut self, now: Instant, mut bytes: &[u8]) {
        while !self.is_down() {
            let took = self.decoder.feed(bytes);
            bytes = &bytes[took..];
            loop {
                match self.decoder.next_message() {
                    Ok(Some(env)) => self.on_envelope(now, env),
                    Ok(None) => break,
                    Err(e) => {
                        warn!(error = %e, "signalling stream corrupt");
                        self.go_down(DownReason::Codec(e));
                    }
                }
                if self.is_down() {
                    return;
                }
            }
            if bytes.is_empty() || took == 0 {
                // took == 0 with bytes left cannot happen: a full buffer always
                // holds a whole frame or a bad header. Stop rather than spin.
                return;
            }
        }
    }

    fn on_envelope(&mut self, now: Instant, env: Envelope) {
        let state = std::mem::replace(&mut self.state, State::Down);
        let ctx = &mut self.ctx;
        let next = match state {
            State::AwaitingHello(s) => s.handle(ctx, now, env),
            State::AwaitingAck(s) => s.handle(ctx, now, env),
            State::Registered(s) => s.handle(ctx, now, env),
            State::Down => Ok(State::Down),
        };
        match next {
            Ok(s) => self.state = s,
            Err(reason) => {
                warn!(%reason, "signalling session refused");
                self.go_down(reason);
            }
        }
    }

    fn go_down(&mut self, reason: DownReason) {
        self.state = State::Down;
        if self.down_reported {
            return;
        }
        self.down_reported = true;
        self.ctx.events.push_back(PeerEvent::PeerDown { reason });
    }

    /// Fires due timers: handshake timeout, dead interval, keepalive.
    pub fn handle_timeout(&mut self, now: Instant) {
        match &self.state {
            State::AwaitingHello(AwaitingHello { deadline })
            | State::AwaitingAck(AwaitingAck { deadline }) => {
                if now >= *deadline {
                    self.go_down(DownReason::HandshakeTimeout);
                }
            }
            State::Registered(r) => {
                if now >= r.dead_at() {
                    self.ctx.stats.timeouts += 1;
                    warn!(peer = %r.remote.node, "peer dead: no message within the dead interval");
                    self.go_down(DownReason::Timeout);
                } else if now >= self.next_keepalive() && self.ctx.pending.is_empty() {
                    // With bytes still pending, their delivery proves liveness.
                    self.ctx.keepalive_seq += 1;
                    self.ctx.stats.keepalives_out += 1;
                    let seq = self.ctx.keepalive_seq;
                    self.ctx.queue_control(now, Message::Keepalive { seq });
                }
            }
            State::Down => {}
        }
    }

    /// The shell reports that the transport closed (`None`: clean EOF) or failed.
    pub fn handle_transport_closed(&mut self, error: Option<String>) {
        if !self.is_down() {
            self.go_down(match error {
                None => DownReason::TransportClosed,
                Some(detail) => DownReason::TransportFailed { detail },
            });
        }
    }

    /// Ends the session from this side.
    pub fn close(&mut self) {
        if !self.is_down() {
            self.go_down(DownReason::Closed);
        }
    }

    fn next_keepalive(&self) -> Instant {
        self.ctx.last_tx + self.ctx.config.keepalive_interval
    }

    /// Queues a message; the peer assigns sequence numbers.
    pub fn send(&mut self, now: Instant, out: Outgoing) -> Result<(), SendError> {
        let res = self.try_send(now, out);
        if res.is_err() {
            self.ctx.stats.send_refused += 1;
        }
        res
    }

    fn try_send(&mut self, now: Instant, out: Outgoing) -> Result<(), SendError> {
        match self.state {
            State::Registered(_) => {}
            State::Down => return Err(SendError::Down),
            _ => return Err(SendError::NotRegistered),
        }
        let limit = self.ctx.config.max_pending_bytes;
        if self.ctx.pending.len() >= limit {
            return Err(SendError::Backpressure {
                pending: self.ctx.pending.len(),
                limit,
            });
        }
        let (message, seq_bump) = match out {
            Outgoing::StateUpdate { subnets } => (
                Message::StateUpdate(StateUpdate {
                    seq: self.ctx.update_seq + 1,
                    subnets,
                }),
                Some(true),
            ),
            Outgoing::MirrorDelta { upserts, removals } => (
                Message::MirrorDelta(MirrorDelta {
                    seq: self.ctx.delta_seq + 1,
                    upserts,
                    removals,
                }),
                Some(false),
            ),
            Outgoing::TunnelObject(t) => (Message::TunnelObject(t), None),
            Outgoing::WhoHas(q) => (Message::WhoHas(q), None),
            Outgoing::WhoHasAnswer(a) => (Message::WhoHasAnswer(a), None),
        };
        codec::encode(
            &Envelope {
                epoch: self.ctx.epoch,
                message,
            },
            &mut self.ctx.pending,
        )
        .map_err(SendError::Codec)?;
        match seq_bump {
            Some(true) => self.ctx.update_seq += 1,
            Some(false) => self.ctx.delta_seq += 1,
            None => {}
        }
        self.ctx.last_tx = now;
        self.ctx.stats.messages_out += 1;
        Ok(())
    }

    /// Appends all bytes waiting to be sent to `buf`; returns how many.
    #[must_use]
    pub fn poll_transmit(&mut self, buf: &mut Vec<u8>) -> usize {
        let n = self.ctx.pending.len();
        buf.append(&mut self.ctx.pending);
        n
    }

    /// The next event, if any.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<PeerEvent> {
        self.ctx.events.pop_front()
    }

    /// When [`Peer::handle_timeout`] must next be called; `None` once down.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::AwaitingHello(AwaitingHello { deadline })
            | State::AwaitingAck(AwaitingAck { deadline }) => Some(*deadline),
            State::Registered(r) => Some(r.dead_at().min(self.next_keepalive())),
            State::Down => None,
        }
    }

    /// True once the handshake completed and until the session ends.
    pub fn is_registered(&self) -> bool {
        matches!(self.state, State::Registered(_))
    }

    /// True once the session ended.
    pub fn is_down(&self) -> bool {
        matches!(self.state, State::Down)
    }

    /// The peer's registration, once registered.
    pub fn remote(&self) -> Option<&Registration> {
        match &self.state {
            State::Registered(r) => Some(&r.remote),
            _ => None,
        }
    }

    /// The peer's current epoch, once registered.
    pub fn remote_epoch(&self) -> Option<Epoch> {
        match &self.state {
            State::Registered(r) => Some(r.remote_epoch),
            _ => None,
        }
    }

    /// Our epoch.
    pub fn local_epoch(&self) -> Epoch {
        self.ctx.epoch
    }

    /// Session counters.
    pub fn stats(&self) -> &PeerStats {
        &self.ctx.stats
    }

    /// Codec counters of the inbound stream.
    pub fn codec_stats(&self) -> &CodecStats {
        self.decoder.stats()
    }
}
