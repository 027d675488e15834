//! The daemon's router on the dataplane thread: the sans-IO [`Node`] (engine,
//! control side, recovery, policies) plus what only a Linux daemon has: the
//! sessions' command queues, the routes into the TUN, the spare's address
//! takeover and the stats snapshots. It is the [`DataplaneNode`] the Linux shell
//! drives, so a packet, a session event and a timer all reach the node on one
//! thread, in order, without copies to another thread and back.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use router_core::engine::{Engine, Verdict};
use router_core::linux::{DataplaneHandle, DataplaneNode, Netlink};
use router_core::packet::PacketBuf;
use router_core::{FlowKey, Instant, VirtualSubnet};
use signaling::node::{Node, NodeEvent, SessionKind};
use signaling::{AdvertKey, Outgoing, PeerEvent, SessionId};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::snapshot::{ControlSnapshot, StatsSink};
use super::{Direction, SessionCmd};
use crate::recovery::SpareSettings;

/// What the control loop hands the node between two packet batches.
#[derive(Debug)]
pub(crate) enum ShellInput {
    /// A session's transport is up.
    Opened {
        id: SessionId,
        remote: SocketAddr,
        direction: Direction,
        cmds: mpsc::Sender<SessionCmd>,
    },
    /// One event of a session.
    Event { id: SessionId, event: PeerEvent },
    /// The management API asks for the control side's state.
    Mgmt(crate::mgmt::ControlRequest),
    /// SIGHUP re-read the advertisement keys.
    AdvertKeys(Vec<AdvertKey>),
}

/// One session as the shell sees it.
#[derive(Debug)]
struct Port {
    direction: Direction,
    remote: SocketAddr,
    cmds: mpsc::Sender<SessionCmd>,
}

/// TLS counters of the listener and the connector.
#[derive(Debug, Default)]
pub(crate) struct TlsCounters {
    pub(crate) listener: Option<Arc<signaling::transport::TransportStats>>,
    pub(crate) connector: Option<Arc<signaling::transport::TransportStats>>,
}

/// Shell-only counters.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ShellCounters {
    pub(crate) messages_dropped: u64,
    pub(crate) sessions_refused: u64,
    pub(crate) takeover_errors: u64,
}

/// The spare's takeover as the daemon carries it out.
#[derive(Debug)]
pub(crate) struct Takeover {
    pub(crate) spare: SpareSettings,
    /// Drives the netlink connection of the address takeover.
    pub(crate) rt: tokio::runtime::Handle,
    /// Starts the upstream session once the addresses are in place.
    pub(crate) go: Option<oneshot::Sender<()>>,
    /// Milliseconds the address takeover took; bit 63 set when a step failed.
    pub(crate) done: Arc<AtomicU64>,
    /// Wall-clock time the takeover fired (Unix ms; 0 before), for operators
    /// correlating it with the primary's end.
    pub(crate) at_unix_ms: u64,
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct RouterShell {
    pub(crate) node: Node,
    sessions: BTreeMap<SessionId, Port>,
    routes: RouteKeeper,
    max_downstream: usize,
    upstream_name: Option<String>,
    pub(crate) takeover: Option<Takeover>,
    pub(crate) tls: TlsCounters,
    pub(crate) counters: ShellCounters,
    stats: Option<StatsSink>,
    next_stats: Option<Instant>,
    /// The Linux shell's own counters (atomics: read without a round trip).
    io: DataplaneHandle,
}

impl RouterShell {
    #[expect(
        clippy::too_many_arguments,
        reason = "wiring, each part named at the one call site"
    )]
    pub(crate) fn new(
        node: Node,
        routes: RouteKeeper,
        max_downstream: usize,
        upstream_name: Option<String>,
        takeover: Option<Takeover>,
        tls: TlsCounters,
        stats: Option<StatsSink>,
        io: DataplaneHandle,
    ) -> Self {
        let mut s = Self {
            node,
            sessions: BTreeMap::new(),
            routes,
            max_downstream,
            upstream_name,
            takeover,
            tls,
            counters: ShellCounters::default(),
            stats,
            next_stats: None,
            io,
        };
        s.flush();
        s
    }

    /// Apply a batch of inputs in arrival order.
    pub(crate) fn apply(&mut self, now: Instant, inputs: Vec<ShellInput>) {
        for i in inputs {
            self.input(now, i);
        }
        self.flush();
    }

    fn input(&mut self, now: Instant, input: ShellInput) {
        match input {
            ShellInput::Opened {
                id,
                remote,
                direction,
                cmds,
            } => {
                let downstream = self
                    .sessions
                    .values()
                    .filter(|p| p.direction == Direction::Downstream)
                    .count();
                if direction == Direction::Downstream && downstream >= self.max_downstream {
                    // Registered or not: sessions are bounded like the table.
                    warn!(%remote, limit = self.max_downstream, "too many lower-level sessions; closing");
                    self.counters.sessions_refused += 1;
                    let _ = cmds.try_send(SessionCmd::Close);
                    return;
                }
                let kind = match direction {
                    Direction::Upstream => SessionKind::Upstream,
                    Direction::Downstream => SessionKind::Downstream {
                        remote: remote.ip(),
                        route_cost: None,
                    },
                    Direction::Neighbour => SessionKind::Neighbour,
                    Direction::Primary => SessionKind::Primary,
                };
                self.sessions.insert(
                    id,
                    Port {
                        direction,
                        remote,
                        cmds,
                    },
                );
                if direction == Direction::Upstream {
                    info!(session = id.0, %remote, "upper-level session opened");
                }
                self.node.session_opened(id, kind);
            }
            ShellInput::Event { id, event } => {
                if let PeerEvent::PeerDown { reason } = &event
                    && let Some(p) = self.sessions.remove(&id)
                {
                    match p.direction {
                        Direction::Upstream => {
                            warn!(remote = %p.remote, %reason, "upper-level session down");
                        }
                        _ => info!(session = id.0, remote = %p.remote, %reason, "session down"),
                    }
                }
                self.node.handle_event(now, id, event);
            }
            ShellInput::Mgmt(req) => self.answer_mgmt(req, now),
            ShellInput::AdvertKeys(keys) => {
                if !self.node.set_advert_keys(keys) {
                    debug!("advertisement keys reloaded but advertisements are off");
                }
            }
        }
    }

    fn send(&mut self, id: SessionId, message: Outgoing) {
        let Some(p) = self.sessions.get(&id) else {
            self.counters.messages_dropped += 1;
            return;
        };
        if p.cmds.try_send(SessionCmd::Send(message)).is_err() {
            self.counters.messages_dropped += 1;
        }
    }

    fn close(&mut self, id: SessionId) {
        if let Some(p) = self.sessions.get(&id) {
            // The session task then reports PeerDown, which removes the entry.
            let _ = p.cmds.try_send(SessionCmd::Close);
        }
    }

    /// Close every session (shutdown).
    pub(crate) fn close_all(&mut self) {
        for p in self.sessions.values() {
            let _ = p.cmds.try_send(SessionCmd::Close);
        }
    }

    /// Remove the routes this daemon installed and end the route keeper.
    pub(crate) fn teardown(&mut self) {
        self.close_all();
        self.routes.finish();
    }

    fn took_over(&mut self, report: signaling::node::TakeoverReport) {
        let Some(t) = self.takeover.as_mut() else {
            return;
        };
        let spare = t.spare.clone();
        let rt = t.rt.clone();
        let go = t.go.take();
        let done = Arc::clone(&t.done);
        let started = std::time::Instant::now();
        t.at_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        info!(
            silent_ms = report.silent_for.as_millis() as u64,
            "taking over the primary's addresses"
        );
        // Address changes and ARP go through rtnetlink/AF_PACKET: off this thread.
        let r = std::thread::Builder::new()
            .name("pronto-takeover".into())
            .spawn(move || {
                let ok = crate::recovery::take_addresses(&spare, &rt);
                // Registered upstream even when an address failed: the rest works.
                if let Some(go) = go {
                    let _ = go.send(());
                }
                let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                done.store(ms.max(1) | if ok { 0 } else { 1 << 63 }, Ordering::Relaxed);
                info!(ms, ok, "primary's addresses taken over and announced");
                for _ in 1..crate::recovery::ANNOUNCE_ROUNDS {
                    std::thread::sleep(Duration::from_millis(200));
                    crate::recovery::announce(&spare);
                }
            });
        if let Err(e) = r {
            self.counters.takeover_errors += 1;
            warn!(error = %e, "cannot start the takeover thread");
        }
    }

    /// The control side's counters (the stats file's `[control]`, and the
    /// management API's `pronto_control_*` metrics).
    pub(crate) fn control_snapshot(&self) -> ControlSnapshot {
        let tls = |f: fn(&signaling::transport::TransportStats) -> &AtomicU64| {
            [&self.tls.listener, &self.tls.connector]
                .into_iter()
                .flatten()
                .map(|s| f(s).load(Ordering::Relaxed))
                .sum::<u64>()
        };
        let downstream = self
            .node
            .sessions()
            .filter(|(_, s)| matches!(s.kind, SessionKind::Downstream { .. }) && s.registered)
            .count() as u64;
        ControlSnapshot::new(
            &self.node,
            downstream,
            self.counters,
            super::snapshot::TlsTotals {
                accepted: tls(|s| &s.accepted),
                handshakes: tls(|s| &s.handshakes),
                timeouts: tls(|s| &s.handshake_timeouts),
                refused_pending_limit: tls(|s| &s.refused_pending_limit),
                refused_per_source_limit: tls(|s| &s.refused_per_source_limit),
                untrusted: tls(|s| &s.untrusted_certificates),
                failures: tls(|s| &s.handshake_failures),
                garbage_frames: tls(|s| &s.garbage_frames),
                protocol_violations: tls(|s| &s.protocol_violations),
            },
        )
    }

    /// Answer the management API with the control side's state.
    fn answer_mgmt(&mut self, req: crate::mgmt::ControlRequest, now: Instant) {
        let slr = self.node.control();
        let sessions = self
            .sessions
            .iter()
            .map(|(id, p)| {
                let info = self.node.sessions().find(|(s, _)| s == id).map(|(_, i)| *i);
                let up = p.direction == Direction::Upstream;
                crate::mgmt::SessionInfo {
                    direction: format!("{:?}", p.direction).to_lowercase(),
                    remote: p.remote,
                    name: if up {
                        self.upstream_name.clone()
                    } else {
                        slr.downstream_peer(*id).map(ToString::to_string)
                    },
                    registered: if up {
                        slr.upstream_registered()
                    } else {
                        info.is_some_and(|i| i.registered)
                    },
                    last_update: info.and_then(|i| i.last_update),
                    updates: info.map_or(0, |i| i.updates),
                }
            })
            .collect();
        // One serialisation of the same snapshots the stats file holds: the
        // control side's counters with the recovery counters inside.
        let mut counters = serde_json::to_value(self.control_snapshot()).unwrap_or_default();
        if let (Some(map), Ok(rec)) = (
            counters.as_object_mut(),
            serde_json::to_value(super::snapshot::recovery_snapshot(self)),
        ) {
            map.insert("recovery".into(), rec);
        }
        let view = crate::mgmt::control_view(
            slr,
            (self.node.policies(), self.node.costs()),
            sessions,
            counters,
            now,
        );
        // The asker may have given up (timeout); nothing to do then.
        let _ = req.reply.try_send(view);
    }

    /// The Linux shell's handle (its counters, the fast path).
    pub(crate) fn io_handle(&self) -> &DataplaneHandle {
        &self.io
    }

    fn maybe_write_stats(&mut self, now: Instant) {
        let Some(sink) = &self.stats else {
            return;
        };
        if self.next_stats.is_some_and(|t| now < t) {
            return;
        }
        self.next_stats = Some(now + sink.interval);
        let snap = super::snapshot::router_snapshot(self, self.io.stats(), now);
        if let Some(sink) = &self.stats {
            sink.post(snap);
        }
    }
}

impl DataplaneNode for RouterShell {
    #[inline]
    fn handle_packet(&mut self, now: Instant, pkt: &mut PacketBuf<'_>) -> Verdict {
        self.node.handle_packet(now, pkt)
    }

    fn take_new_flow(&mut self) -> Option<FlowKey> {
        // The node turns its pins into shortcuts and mirror entries itself.
        None
    }

    fn handle_timeout(&mut self, now: Instant) {
        // The session to the primary carries its keepalives and ends after its
        // dead interval: while it is registered, the primary is alive.
        if self.node.recovery().primary_registered() {
            self.node.primary_heard(now);
        }
        if self.node.poll_timeout().is_some_and(|t| t <= now) {
            self.node.handle_timeout(now);
        }
        // What the timers set off (a takeover above all) is acted on before
        // the snapshot, or the stats would show it done (`taken_over`) but
        // not when (`takeover_unix_ms` still 0) until the next one.
        self.flush();
        self.maybe_write_stats(now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.node.poll_timeout()
    }

    fn poll_released<'b>(
        &mut self,
        now: Instant,
        buf: &'b mut [u8],
        headroom: usize,
    ) -> Option<(Verdict, PacketBuf<'b>)> {
        self.node.poll_released(now, buf, headroom)
    }

    fn flush(&mut self) {
        while let Some(ev) = self.node.poll_event() {
            match ev {
                NodeEvent::Send { session, message } => self.send(session, message),
                NodeEvent::Close { session } => {
                    self.counters.sessions_refused += 1;
                    self.close(session);
                }
                NodeEvent::Serve(s) => self.routes.add(s),
                NodeEvent::Withdraw(s) => self.routes.remove(s),
                NodeEvent::TookOver(report) => self.took_over(report),
                NodeEvent::FlowRecovered { key, next_hop } => {
                    debug!(%key, %next_hop, "flow recovered");
                }
                other => debug!(event = ?other, "node event not used by this daemon"),
            }
        }
    }

    fn engine(&self) -> &Engine {
        self.node.engine()
    }

    fn engine_mut(&mut self) -> &mut Engine {
        self.node.engine_mut()
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

#[derive(Debug)]
enum RouteCmd {
    Add(VirtualSubnet),
    Remove(VirtualSubnet),
}

/// Routes served subnets into the TUN from its own thread (rtnetlink calls
/// block); remembers what it routed so that the teardown removes exactly that.
#[derive(Debug)]
pub(crate) struct RouteKeeper {
    tx: Option<std::sync::mpsc::Sender<RouteCmd>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RouteKeeper {
    pub(crate) fn spawn(netlink: Netlink, tun_index: u32) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<RouteCmd>();
        let thread = std::thread::Builder::new()
            .name("pronto-routes".into())
            .spawn(move || {
                let mut routed = std::collections::BTreeSet::new();
                for cmd in rx {
                    let r = match cmd {
                        RouteCmd::Add(s) => {
                            routed.insert(s);
                            netlink.route_to_link(s, tun_index)
                        }
                        RouteCmd::Remove(s) => {
                            routed.remove(&s);
                            netlink.remove_route_to_link(s, tun_index)
                        }
                    };
                    if let Err(e) = r {
                        warn!(error = %e, "route change failed");
                    }
                }
                for s in routed {
                    if let Err(e) = netlink.remove_route_to_link(s, tun_index) {
                        debug!(subnet = %s, error = %e, "route removal at shutdown failed");
                    }
                }
            })?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    fn add(&self, s: VirtualSubnet) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(RouteCmd::Add(s));
        }
    }

    fn remove(&self, s: VirtualSubnet) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(RouteCmd::Remove(s));
        }
    }

    /// Apply what is queued, remove every route still in place, end the thread.
    fn finish(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            warn!("route keeper panicked");
        }
    }
}
