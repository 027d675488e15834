//! A deterministic in-process simulator of an SLR hierarchy (DESIGN.md §3-4, §10).
//!
//! Everything runs on one thread under a fake clock and one event queue; no
//! sockets. Routers are the real [`Engine`] plus the real [`SlrControl`] fed by real
//! [`Peer`] state machines whose bytes cross simulated links; host servers run the
//! real [`HostAgent`], terminate IP-in-IP tunnels and answer clients directly with
//! the VIP as source (direct server return, so replies never traverse an SLR);
//! clients run a small TCP-like state machine (SYN, data, FIN, retransmission).
//!
//! The model of the network: nodes form a location tree (host → site SLR → system
//! SLR → network SLR; the network cluster's tunnel entry router and the clients
//! hang off the network SLR); a packet between two nodes takes the sum of the
//! uplink delays up to their closest common ancestor. Data packets are lost with
//! a configured probability drawn from one seeded generator; signalling rides a
//! reliable, ordered transport (TLS over TCP), modelled as loss-free. TLS itself is
//! modelled: a connection is refused unless each side's certificate issuer is one
//! of the other's trust anchors, and the acceptor's [`Peer`] then checks the name
//! in the `Hello` against the certificate's subject ([`PeerAuth::Name`]).
//!
//! The network cluster follows the patent's Fig. 5: clients reach a *tunnel entry
//! router* (a fast router, not an SLR) that initially sends every new flow to the
//! network SLR; shortcuts program it to tunnel straight to the chosen host server.
//!
//! Failures and the recovery mechanisms of DESIGN.md §5 (restarts, more entry
//! routers, moved client paths, neighbours, hot spares, server flow
//! advertisements) live in the private `recovery` submodule (`recovery.rs`).
//!
//! Same seed, same run: events at the same instant run in scheduling order, and
//! nothing iterates a hash map to decide anything.

mod recovery;
mod rng;
mod topology;

pub use recovery::{ADVERT_KEY_ID, AdvertSim, RecoveryCounters, SIM_EPOCH_UNIX_MS, advert_key};
pub use rng::SplitMix64;
pub use router_core::policy::FlowHash;
pub use topology::{
    CaId, Delays, Hierarchy, HierarchySpec, HostSpec, SiteSpec, SystemSpec, TopologyError,
};

use std::cmp::Ordering;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use router_core::api::RouterApi;
use router_core::classify::{FlowKey, VirtualSubnet};
use router_core::engine::{DropReason, EngineCounters, Verdict};
use router_core::packet::{HEADROOM, PacketBuf};
use router_core::policy::{Candidate, CostModel, Level, Policy, SumCost};
use router_core::synth::{PacketSpec, Transport};
use router_core::time::Instant;
use router_core::tunnel::{IpIpTunnel, Tunnel};
use router_core::wire::{Ipv4Packet, TcpFlags, TcpPacket, ip_proto};
use signaling::node::{Node as RouterNodeCore, NodeEvent, SessionKind};
use signaling::{
    DownReason, Epoch, HostAgent, HostStats, LocalNode, MirrorConfig, NextHopTable, NodeName,
    Outgoing, Peer, PeerAuth, PeerConfig, PeerEvent, PeerStats, RecoveryConfig, Role, SessionId,
    SlrConfig, SlrStats, SubnetPrefix, TunnelObject, install_shortcut,
};

/// Payload bytes of a simulated data segment.
pub const SEGMENT_BYTES: usize = 100;
/// Longest reconnect backoff.
const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// Simulation parameters.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seed of the only random generator (loss, session epochs).
    pub seed: u64,
    /// Probability that a data packet is lost on its way between two nodes.
    pub loss: f64,
    /// Signalling session timers.
    pub peer: PeerConfig,
    /// Next-hop table computation interval of every SLR.
    pub table_interval: Duration,
    /// How long a state update holds without refresh.
    pub hold_time: Duration,
    /// How often hosts advertise their load.
    pub host_update_interval: Duration,
    /// Site SLRs originate shortcuts (tunnel objects).
    pub shortcuts: bool,
    /// Flow table capacity of each SLR.
    pub flow_capacity: usize,
    /// Flow table capacity of the tunnel entry router.
    pub entry_flow_capacity: usize,
    /// Delay from the network SLR to its cluster's entry router (programming).
    pub cluster_delay: Duration,
    /// First reconnect backoff of a refused or failed session.
    pub reconnect_backoff: Duration,
    /// Client retransmission timeout (doubles per retry).
    pub rto: Duration,
    /// Client retransmissions before a connection fails.
    pub max_retries: u32,
    /// F and G at every level.
    pub cost: Arc<dyn CostModel>,
    /// Policy per level; `None` follows the table (cheapest by F).
    pub network_policy: Option<Arc<dyn Policy>>,
    /// Policy of system SLRs.
    pub system_policy: Option<Arc<dyn Policy>>,
    /// Policy of site SLRs.
    pub site_policy: Option<Arc<dyn Policy>>,
    /// Server flow advertisements (hosts watch progress; routers verify); off
    /// when `None`.
    pub adverts: Option<AdvertSim>,
    /// Hot-spare mirroring of every primary with a spare.
    pub mirror: MirrorConfig,
    /// WHOHAS rate limits and bounds of every SLR.
    pub recovery: RecoveryConfig,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            loss: 0.0,
            peer: PeerConfig {
                keepalive_interval: Duration::from_secs(1),
                dead_interval: Duration::from_secs(3),
                hello_timeout: Duration::from_secs(5),
                max_pending_bytes: 1 << 20,
            },
            table_interval: Duration::from_millis(500),
            hold_time: Duration::from_secs(2),
            host_update_interval: Duration::from_millis(500),
            shortcuts: true,
            flow_capacity: 1 << 14,
            entry_flow_capacity: 1 << 16,
            cluster_delay: Duration::from_micros(100),
            reconnect_backoff: Duration::from_millis(500),
            rto: Duration::from_secs(1),
            max_retries: 5,
            cost: Arc::new(SumCost),
            network_policy: None,
            system_policy: None,
            site_policy: None,
            adverts: None,
            mirror: MirrorConfig::default(),
            recovery: RecoveryConfig::default(),
        }
    }
}

/// A node of the simulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

/// A simulated client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u32);

/// Where a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Not opened yet.
    Scheduled,
    /// SYN sent.
    SynSent,
    /// Handshake done, data flowing.
    Open,
    /// FIN sent.
    FinSent,
    /// Closed cleanly.
    Done,
    /// Gave up after retransmissions.
    TimedOut,
    /// The server reset it (it reached a server that did not know it).
    Reset,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimerKind {
    Rto,
    Think,
}

/// One client connection and what happened to it.
#[derive(Debug, Clone)]
pub struct ConnRecord {
    /// The client.
    pub client: NodeId,
    /// Its five-tuple (client → VIP).
    pub key: FlowKey,
    /// When the SYN was first sent.
    pub opened_at: Instant,
    /// Data segments to send.
    pub segments: u32,
    /// Pause between segments (0: all at once).
    pub think: Duration,
    /// Current state.
    pub state: ConnState,
    /// The host server that accepted it.
    pub server: Option<NodeId>,
    /// When it closed.
    pub finished_at: Option<Instant>,
    /// Packets the client sent (retransmissions included).
    pub packets_sent: u32,
    /// Retransmissions.
    pub retransmits: u32,
    /// Distinct client packets that reached at least one SLR.
    pub slr_packets: u32,
    /// SLR engine passes of its packets, all levels.
    pub slr_handlings: u32,
    /// SLR engine passes per level (network, system, site).
    pub level_handlings: [u32; 3],
    /// When an SLR of each level (network, system, site) first handled one of its
    /// packets (the SYN pins the flow there: the flow's birth at that level).
    pub first_handled: [Option<Instant>; 3],
    /// Packets that reached a host other than `server`.
    pub misrouted: u32,
    /// Its packets the tunnel entry router forwarded.
    pub entry_packets: u32,
    /// Data segments the server received in order (its byte accounting: a
    /// connection completed with correct data has `delivered == segments`).
    pub delivered: u32,
    /// Longest time between two steps of progress (handshake, an acknowledgement
    /// advancing, the close) while the connection was open: its outage.
    pub max_gap: Duration,
    last_progress: Instant,
    acked: u32,
    sent: u32,
    tries: u32,
    generation: u32,
    timer: TimerKind,
}

/// Simulation-wide counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Events processed.
    pub events: u64,
    /// Data packets lost on links.
    pub packets_lost: u64,
    /// Packets sent to a failed node.
    pub packets_to_dead_nodes: u64,
    /// Packets to an address no node has.
    pub unroutable: u64,
    /// Session attempts refused by the modelled TLS (untrusted certificate issuer).
    pub untrusted_refused: u64,
    /// Sessions refused because the Hello named someone the certificate does not.
    pub identity_refused: u64,
    /// Session attempts to a failed node.
    pub connect_failures: u64,
    /// Sessions established (TLS done; registration may still fail).
    pub sessions: u64,
    /// Messages a Peer refused to send.
    pub send_failures: u64,
    /// Replies whose source was not the VIP the client connected to.
    pub bad_reply_source: u64,
    /// Shortcuts installed in entry routers.
    pub entry_shortcuts: u64,
    /// Shortcuts entry routers refused.
    pub entry_shortcuts_refused: u64,
    /// Embryonic flows unpinned because their next hop went down.
    pub embryonic_unpinned: u64,
    /// Router and entry router restarts.
    pub restarts: u64,
}

/// Counters of a simulated host server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostServerStats {
    /// Connections accepted (first SYN).
    pub accepted: u64,
    /// Connections closed by the client's FIN.
    pub completed: u64,
    /// Mid-connection packets for a connection this host never accepted (the
    /// flow moved: the connection breaks).
    pub misrouted: u64,
    /// Tunnel packets that came straight from the entry router (shortcut).
    pub via_shortcut: u64,
    /// Tunnel packets that came through the site SLR.
    pub via_site: u64,
    /// Packets for VIPs this host does not serve.
    pub not_mine: u64,
    /// Packets that were not a valid tunnel to us.
    pub bad_tunnel: u64,
}

/// What one router did.
#[derive(Debug, Clone)]
pub struct RouterReport {
    /// Its name.
    pub name: NodeName,
    /// Its level.
    pub level: Level,
    /// Engine counters.
    pub engine: EngineCounters,
    /// Control-side counters.
    pub control: SlrStats,
    /// Packets handed to recovery (lost flow state), dropped here.
    pub recover: u64,
}

/// Packets per connection through the SLRs, over a set of completed connections.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ShortcutFigures {
    /// Completed connections measured.
    pub connections: usize,
    /// Packets each client sent, on average.
    pub packets_per_conn: f64,
    /// Distinct packets per connection that reached any SLR.
    pub slr_packets_per_conn: f64,
    /// SLR engine passes per connection, all levels.
    pub slr_handlings_per_conn: f64,
    /// SLR engine passes per connection at the network, system and site level.
    pub per_level: [f64; 3],
    /// Packets per connection the tunnel entry router (a fast router, not an
    /// SLR) forwarded.
    pub entry_per_conn: f64,
}

impl fmt::Display for ShortcutFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} connections, {:.2} packets each, {:.2} via the entry router; through SLRs: \
             {:.3} packets/conn ({:.3} engine passes: network {:.3}, system {:.3}, site {:.3})",
            self.connections,
            self.packets_per_conn,
            self.entry_per_conn,
            self.slr_packets_per_conn,
            self.slr_handlings_per_conn,
            self.per_level[0],
            self.per_level[1],
            self.per_level[2]
        )
    }
}

#[derive(Debug)]
struct SimPacket {
    buf: Vec<u8>,
    start: usize,
    len: usize,
    conn: Option<ConnId>,
    slr_hops: u8,
    /// An entry router handed it to its SLR for want of the flow's state.
    handed_over: bool,
}

impl ConnRecord {
    fn progress(&mut self, now: Instant) {
        self.max_gap = self.max_gap.max(now.saturating_since(self.last_progress));
        self.last_progress = now;
    }

    /// Whether it completed with every segment delivered in order to the one
    /// server that accepted it.
    pub fn intact(&self) -> bool {
        self.state == ConnState::Done && self.delivered == self.segments && self.misrouted == 0
    }
}

impl SimPacket {
    fn data(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
}

#[derive(Debug)]
enum Event {
    Packet {
        to: NodeId,
        pkt: SimPacket,
    },
    Signal {
        session: usize,
        to_upper: bool,
        bytes: Vec<u8>,
    },
    Closed {
        session: usize,
        to_upper: bool,
    },
    Wake {
        node: NodeId,
        at: Instant,
    },
    Connect {
        lower: NodeId,
    },
    ProgramEntry {
        entry: NodeId,
        obj: TunnelObject,
    },
    ConnTimer {
        conn: ConnId,
        generation: u32,
    },
    Open {
        conn: ConnId,
    },
    Restart {
        node: NodeId,
    },
    Recovery(recovery::RecoveryEvent),
}

#[derive(Debug)]
struct Scheduled {
    at: Instant,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at && self.seq == other.seq
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    // BinaryHeap is a max-heap: the earliest (then first scheduled) is greatest.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .at
            .cmp(&self.at)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

#[derive(Debug)]
struct RouterNode {
    level: Level,
    /// What it says it is in its Hello (a spare says `Role::Spare` until it takes
    /// over).
    role: Role,
    /// The router itself: the node type the daemon runs.
    node: RouterNodeCore,
    /// Kept to rebuild the node on a restart.
    slr_cfg: SlrConfig,
    /// Tunnel endpoint of its engine (a spare's is its primary's).
    local: Ipv4Addr,
    recover: u64,
    /// Half-open flows the node unpinned, as far as the figures have counted.
    seen_unpinned: u64,
    rec: recovery::RouterRecovery,
}

#[derive(Debug)]
struct EntryNode {
    /// A tunnel entry router: the same node type, programmed by its SLR.
    node: RouterNodeCore,
    slr: NodeId,
    slr_addr: IpAddr,
    served: BTreeSet<SubnetPrefix>,
}

#[derive(Debug, Clone, Copy)]
struct HostConn {
    open: bool,
    received: u32,
    /// When its last packet arrived (progress monitoring).
    last_rx: Instant,
}

#[derive(Debug)]
struct HostNode {
    agent: HostAgent,
    tunnel: IpIpTunnel,
    site_addr: IpAddr,
    conns: HashMap<FlowKey, HostConn>,
    stats: HostServerStats,
    rec: recovery::HostRecovery,
}

#[derive(Debug, Default)]
struct ClientNode {
    next_port: u16,
    by_port: HashMap<u16, ConnId>,
    /// First hop of its packets to addresses no node has (VIPs): the first entry
    /// router unless routing moved it.
    via: Option<NodeId>,
}

#[derive(Debug)]
enum Kind {
    Router(Box<RouterNode>),
    Entry(Box<EntryNode>),
    Host(Box<HostNode>),
    Client(Box<ClientNode>),
}

#[derive(Debug, Clone, Copy)]
struct UpLink {
    target: NodeId,
    route_cost: f64,
    session: Option<usize>,
    backoff: Duration,
}

#[derive(Debug, Clone)]
struct SimCert {
    subject: NodeName,
    issuer: CaId,
}

#[derive(Debug)]
struct Node {
    name: NodeName,
    /// The name this node puts in its Hello (its certificate's, unless an
    /// impostor is being modelled).
    claimed: NodeName,
    addr: Ipv4Addr,
    parent: Option<NodeId>,
    uplink: Duration,
    alive: bool,
    cert: SimCert,
    trust: Vec<CaId>,
    wake_at: Option<Instant>,
    sessions: Vec<usize>,
    up: Option<UpLink>,
    kind: Kind,
}

#[derive(Debug)]
struct Session {
    upper: NodeId,
    lower: NodeId,
    upper_peer: Peer,
    lower_peer: Peer,
    /// The (upper, lower) end's process restarted: its half of the session is
    /// gone and nothing more reaches it.
    reset: [bool; 2],
}

/// The simulator.
#[derive(Debug)]
pub struct Sim {
    cfg: SimConfig,
    now: Instant,
    queue: BinaryHeap<Scheduled>,
    seq: u64,
    rng: SplitMix64,
    nodes: Vec<Node>,
    by_addr: HashMap<IpAddr, NodeId>,
    sessions: Vec<Session>,
    conns: Vec<ConnRecord>,
    entries: Vec<NodeId>,
    stats: SimStats,
    rec: recovery::SimRecovery,
}

fn node_name(s: &str) -> Result<NodeName, TopologyError> {
    NodeName::new(s).map_err(|_| TopologyError::BadName { name: s.to_owned() })
}

fn level_index(l: Level) -> usize {
    match l {
        Level::Network => 0,
        Level::System => 1,
        Level::Site => 2,
    }
}

fn role_of(l: Level) -> Role {
    match l {
        Level::Network => Role::Network,
        Level::System => Role::System,
        Level::Site => Role::Site,
    }
}

/// The inner flow key of an IPv4 tunnel packet.
fn inner_key(data: &[u8]) -> Option<FlowKey> {
    let ihl = usize::from(data.first()? & 0x0f) * 4;
    router_core::classify::classify(data.get(ihl..)?)
        .ok()
        .map(|c| c.key)
}

/// A parsed IPv4/TCP segment.
#[derive(Debug, Clone, Copy)]
struct Segment {
    src: SocketAddrV4,
    dst: SocketAddrV4,
    flags: TcpFlags,
    seq: u32,
    payload: usize,
}

fn parse_segment(data: &[u8]) -> Option<Segment> {
    let ip = Ipv4Packet::new_checked(data).ok()?;
    if ip.protocol() != ip_proto::TCP {
        return None;
    }
    let l4 = data.get(ip.header_len()..usize::from(ip.total_len()))?;
    let tcp = TcpPacket::new_checked(l4).ok()?;
    Some(Segment {
        src: SocketAddrV4::new(ip.src_addr(), tcp.src_port()),
        dst: SocketAddrV4::new(ip.dst_addr(), tcp.dst_port()),
        flags: tcp.flags(),
        seq: tcp.seq_number(),
        payload: tcp.payload().len(),
    })
}

fn tcp_packet(
    src: SocketAddrV4,
    dst: SocketAddrV4,
    flags: TcpFlags,
    seq: u32,
    payload: usize,
    conn: Option<ConnId>,
) -> Option<SimPacket> {
    let mut spec = PacketSpec::tcp(SocketAddr::V4(src), SocketAddr::V4(dst), flags);
    spec.transport = Transport::Tcp { flags, seq };
    spec.payload_len = payload;
    let mut buf = vec![0u8; HEADROOM + spec.len()];
    let len = spec.write(&mut buf[HEADROOM..]).ok()?;
    Some(SimPacket {
        buf,
        start: HEADROOM,
        len,
        conn,
        slr_hops: 0,
        handed_over: false,
    })
}

const SYN: TcpFlags = TcpFlags::SYN;
const SYN_ACK: TcpFlags = TcpFlags(TcpFlags::SYN.0 | TcpFlags::ACK.0);
const ACK: TcpFlags = TcpFlags::ACK;
const DATA: TcpFlags = TcpFlags(TcpFlags::ACK.0 | TcpFlags::PSH.0);
const FIN: TcpFlags = TcpFlags(TcpFlags::FIN.0 | TcpFlags::ACK.0);
const RST: TcpFlags = TcpFlags::RST;

impl Sim {
    // ----- time and events -------------------------------------------------

    /// The simulated time.
    pub fn now(&self) -> Instant {
        self.now
    }

    fn schedule(&mut self, at: Instant, event: Event) {
        self.seq += 1;
        self.queue.push(Scheduled {
            at,
            seq: self.seq,
            event,
        });
    }

    /// Runs every event up to and including `until`; the clock then reads `until`.
    pub fn run_until(&mut self, until: Instant) {
        while self.queue.peek().is_some_and(|s| s.at <= until) {
            let Some(s) = self.queue.pop() else { break };
            self.now = s.at;
            self.stats.events += 1;
            self.dispatch(s.event);
        }
        if until > self.now {
            self.now = until;
        }
    }

    /// Runs for `d` of simulated time.
    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    fn dispatch(&mut self, ev: Event) {
        match ev {
            Event::Packet { to, pkt } => self.on_packet(to, pkt),
            Event::Signal {
                session,
                to_upper,
                bytes,
            } => self.on_signal(session, to_upper, &bytes),
            Event::Closed { session, to_upper } => self.on_closed(session, to_upper),
            Event::Wake { node, at } => {
                if self.nodes[node.0 as usize].wake_at == Some(at) {
                    self.nodes[node.0 as usize].wake_at = None;
                    self.on_wake(node);
                }
            }
            Event::Connect { lower } => self.connect(lower),
            Event::ProgramEntry { entry, obj } => self.program_entry(entry, obj),
            Event::ConnTimer { conn, generation } => self.on_conn_timer(conn, generation),
            Event::Open { conn } => self.client_open(conn),
            Event::Restart { node } => self.on_restart(node),
            Event::Recovery(ev) => self.on_recovery_event(ev),
        }
    }

    fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.0 as usize]
    }

    fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[id.0 as usize]
    }

    /// One-way delay between two nodes: uplinks summed to the closest common
    /// ancestor of the location tree.
    fn delay(&self, a: NodeId, b: NodeId) -> Duration {
        let mut up_a: Vec<(NodeId, Duration)> = Vec::with_capacity(6);
        let (mut n, mut d) = (Some(a), Duration::ZERO);
        while let Some(id) = n {
            up_a.push((id, d));
            d += self.node(id).uplink;
            n = self.node(id).parent;
        }
        let (mut n, mut d) = (Some(b), Duration::ZERO);
        while let Some(id) = n {
            if let Some((_, da)) = up_a.iter().find(|(x, _)| *x == id) {
                return *da + d;
            }
            d += self.node(id).uplink;
            n = self.node(id).parent;
        }
        d + up_a.last().map_or(Duration::ZERO, |x| x.1)
    }

    // ----- signalling ------------------------------------------------------

    fn local_node(&self, id: NodeId) -> LocalNode {
        let n = self.node(id);
        match &n.kind {
            Kind::Router(r) => LocalNode {
                name: n.claimed.clone(),
                level: r.level,
                role: r.role,
            },
            _ => HostAgent::local_node(n.claimed.clone()),
        }
    }

    fn retry_connect(&mut self, lower: NodeId) {
        let Some(up) = self.node_mut(lower).up.as_mut() else {
            return;
        };
        let wait = up.backoff;
        up.backoff = (up.backoff * 2).min(MAX_BACKOFF);
        let at = self.now + wait;
        self.schedule(at, Event::Connect { lower });
    }

    /// Modelled TLS 1.3 with mutual authentication: both chains must reach a
    /// trust anchor of the other side. On success the session (a `Peer` pair) is
    /// registered with both nodes and its index returned; `None` is a counted
    /// refusal, and retrying is the caller's.
    pub(crate) fn open_session(&mut self, lower: NodeId, upper: NodeId) -> Option<usize> {
        let (lc, uc) = (self.node(lower).cert.clone(), self.node(upper).cert.clone());
        if !self.node(upper).trust.contains(&lc.issuer)
            || !self.node(lower).trust.contains(&uc.issuer)
        {
            self.stats.untrusted_refused += 1;
            tracing::debug!(lower = %self.node(lower).name, upper = %self.node(upper).name,
                "session refused: untrusted certificate");
            return None;
        }
        self.stats.sessions += 1;
        let s = self.sessions.len();
        let (eu, el) = (Epoch(self.rng.next_u64()), Epoch(self.rng.next_u64()));
        let upper_peer = Peer::accept(
            self.cfg.peer,
            self.local_node(upper),
            PeerAuth::Name(lc.subject),
            eu,
            self.now,
        );
        let lower_peer = Peer::connect(
            self.cfg.peer,
            self.local_node(lower),
            PeerAuth::Name(uc.subject),
            el,
            self.now,
        );
        self.sessions.push(Session {
            upper,
            lower,
            upper_peer,
            lower_peer,
            reset: [false; 2],
        });
        self.node_mut(upper).sessions.push(s);
        self.node_mut(lower).sessions.push(s);
        Some(s)
    }

    fn connect(&mut self, lower: NodeId) {
        let n = self.node(lower);
        let Some(up) = n.up else { return };
        if !n.alive || up.session.is_some() {
            return;
        }
        let upper = up.target;
        if !self.node(upper).alive {
            self.stats.connect_failures += 1;
            self.retry_connect(lower);
            return;
        }
        let Some(s) = self.open_session(lower, upper) else {
            self.retry_connect(lower);
            return;
        };
        if let Some(u) = self.node_mut(lower).up.as_mut() {
            u.session = Some(s);
        }
        let remote = IpAddr::V4(self.node(lower).addr);
        let down = SessionKind::Downstream {
            remote,
            route_cost: Some(up.route_cost),
        };
        if let Kind::Router(r) = &mut self.node_mut(upper).kind {
            r.node.session_opened(SessionId(s as u64), down);
        }
        if let Kind::Router(r) = &mut self.node_mut(lower).kind {
            r.node
                .session_opened(SessionId(s as u64), SessionKind::Upstream);
        }
        self.drain_actions(upper);
        self.drain_actions(lower);
        self.pump(s);
    }

    fn flush(&mut self, s: usize) {
        let (upper, lower) = (self.sessions[s].upper, self.sessions[s].lower);
        let d = self.delay(upper, lower);
        let at = self.now + d;
        let mut buf = Vec::new();
        if self.sessions[s].upper_peer.poll_transmit(&mut buf) > 0 && self.node(upper).alive {
            self.schedule(
                at,
                Event::Signal {
                    session: s,
                    to_upper: false,
                    bytes: buf,
                },
            );
        }
        let mut buf = Vec::new();
        if self.sessions[s].lower_peer.poll_transmit(&mut buf) > 0 && self.node(lower).alive {
            self.schedule(
                at,
                Event::Signal {
                    session: s,
                    to_upper: true,
                    bytes: buf,
                },
            );
        }
    }

    /// Flushes a session and hands its events to the two ends until quiet.
    fn pump(&mut self, s: usize) {
        loop {
            self.flush(s);
            let mut any = false;
            while let Some(ev) = self.sessions[s].upper_peer.poll_event() {
                any = true;
                self.upper_event(s, ev);
            }
            while let Some(ev) = self.sessions[s].lower_peer.poll_event() {
                any = true;
                self.lower_event(s, ev);
            }
            if !any {
                break;
            }
        }
        let (u, l) = (self.sessions[s].upper, self.sessions[s].lower);
        self.reschedule(u);
        self.reschedule(l);
    }

    fn session_down(&mut self, s: usize, node: NodeId, tell_upper: bool) {
        self.node_mut(node).sessions.retain(|&x| x != s);
        let other = if tell_upper {
            self.sessions[s].upper
        } else {
            self.sessions[s].lower
        };
        if self.node(node).alive {
            // The transport closes: the other side sees it after one delay.
            let at = self.now + self.delay(node, other);
            self.schedule(
                at,
                Event::Closed {
                    session: s,
                    to_upper: tell_upper,
                },
            );
        }
    }

    fn upper_event(&mut self, s: usize, ev: PeerEvent) {
        let node = self.sessions[s].upper;
        let down = matches!(ev, PeerEvent::PeerDown { .. });
        if let PeerEvent::PeerDown {
            reason: DownReason::IdentityMismatch { .. },
        } = &ev
        {
            self.stats.identity_refused += 1;
        }
        let now = self.now;
        if let Kind::Router(r) = &mut self.node_mut(node).kind {
            r.node.handle_event(now, SessionId(s as u64), ev);
        }
        if down {
            self.session_down(s, node, false);
        }
        self.drain_actions(node);
    }

    fn lower_event(&mut self, s: usize, ev: PeerEvent) {
        let node = self.sessions[s].lower;
        let Some(ev) = self.link_event(s, node, ev) else {
            return;
        };
        let now = self.now;
        let registered = matches!(ev, PeerEvent::Registered { .. });
        let down = matches!(ev, PeerEvent::PeerDown { .. });
        match &mut self.node_mut(node).kind {
            Kind::Router(r) => r.node.handle_event(now, SessionId(s as u64), ev),
            Kind::Host(h) => {
                if registered {
                    h.agent.on_registered(now);
                } else if down {
                    h.agent.on_session_lost();
                }
            }
            _ => {}
        }
        let base = self.cfg.reconnect_backoff;
        if registered && let Some(up) = self.node_mut(node).up.as_mut() {
            up.backoff = base;
        }
        if down {
            if let Some(up) = self.node_mut(node).up.as_mut()
                && up.session == Some(s)
            {
                up.session = None;
            }
            self.session_down(s, node, true);
            if self.node(node).alive {
                self.retry_connect(node);
            }
        }
        self.drain_actions(node);
    }

    fn on_signal(&mut self, s: usize, to_upper: bool, bytes: &[u8]) {
        let node = if to_upper {
            self.sessions[s].upper
        } else {
            self.sessions[s].lower
        };
        if !self.node(node).alive || self.sessions[s].reset[usize::from(!to_upper)] {
            return;
        }
        let now = self.now;
        let sess = &mut self.sessions[s];
        let peer = if to_upper {
            &mut sess.upper_peer
        } else {
            &mut sess.lower_peer
        };
        peer.handle_input(now, bytes);
        self.heard_on(s, node);
        self.pump(s);
    }

    fn on_closed(&mut self, s: usize, to_upper: bool) {
        let node = if to_upper {
            self.sessions[s].upper
        } else {
            self.sessions[s].lower
        };
        if !self.node(node).alive || self.sessions[s].reset[usize::from(!to_upper)] {
            return;
        }
        let sess = &mut self.sessions[s];
        let peer = if to_upper {
            &mut sess.upper_peer
        } else {
            &mut sess.lower_peer
        };
        peer.handle_transport_closed(None);
        self.pump(s);
    }

    fn send_on(&mut self, s: usize, from: NodeId, message: Outgoing) {
        let now = self.now;
        let sess = &mut self.sessions[s];
        let peer = if sess.upper == from {
            &mut sess.upper_peer
        } else {
            &mut sess.lower_peer
        };
        if peer.send(now, message).is_err() {
            self.stats.send_failures += 1;
        }
        self.flush(s);
    }

    fn drain_actions(&mut self, node: NodeId) {
        let mut sync = false;
        loop {
            let event = match &mut self.node_mut(node).kind {
                Kind::Router(r) => r.node.poll_event(),
                _ => None,
            };
            let Some(event) = event else { break };
            match event {
                NodeEvent::Send { session, message } => {
                    self.tap_send(node, session.0 as usize, &message);
                    self.send_on(session.0 as usize, node, message);
                }
                NodeEvent::Close { session } => {
                    let s = session.0 as usize;
                    if self.sessions[s].upper == node {
                        self.sessions[s].upper_peer.close();
                    } else {
                        self.sessions[s].lower_peer.close();
                    }
                    self.pump(s);
                }
                NodeEvent::ProgramEntry(obj) => {
                    let at = self.now + self.cfg.cluster_delay;
                    let entries: Vec<NodeId> = self
                        .entries
                        .iter()
                        .copied()
                        .filter(
                            |&e| matches!(&self.node(e).kind, Kind::Entry(en) if en.slr == node),
                        )
                        .collect();
                    for entry in entries {
                        self.schedule(at, Event::ProgramEntry { entry, obj });
                    }
                }
                NodeEvent::Serve(_) | NodeEvent::Withdraw(_) => sync = true,
                NodeEvent::TookOver(_) => self.take_over(node),
                NodeEvent::FlowRecovered { .. } => {
                    self.rec_flow_recovered();
                }
                other => tracing::debug!(event = ?other, "node event not modelled"),
            }
        }
        if let Kind::Router(r) = &mut self.node_mut(node).kind {
            let unpinned = r.node.counters().embryonic_unpinned;
            let new = unpinned - r.seen_unpinned;
            r.seen_unpinned = unpinned;
            self.stats.embryonic_unpinned += new;
        }
        if sync {
            self.sync_entries(node);
        }
    }

    fn program_entry(&mut self, entry: NodeId, obj: TunnelObject) {
        if !self.node(entry).alive {
            return;
        }
        let now = self.now;
        if let Kind::Entry(e) = &mut self.node_mut(entry).kind {
            match install_shortcut(e.node.engine_mut(), &obj, e.slr_addr, now) {
                Ok(()) => self.stats.entry_shortcuts += 1,
                Err(err) => {
                    tracing::debug!(error = %err, "entry router refused a shortcut");
                    self.stats.entry_shortcuts_refused += 1;
                }
            }
        }
    }

    /// Keeps the entry routers of `slr` serving exactly the subnets it serves,
    /// each with the SLR as the only next hop.
    fn sync_entries(&mut self, slr: NodeId) {
        let served: BTreeSet<SubnetPrefix> = match &self.node(slr).kind {
            Kind::Router(r) => r.node.control().served_subnets().copied().collect(),
            _ => return,
        };
        for i in 0..self.entries.len() {
            let id = self.entries[i];
            let Kind::Entry(e) = &mut self.node_mut(id).kind else {
                continue;
            };
            if e.slr != slr || e.served == served {
                continue;
            }
            let cand = Candidate {
                addr: e.slr_addr,
                load: 0.0,
                route_cost: 0.0,
                up: true,
            };
            for p in served.difference(&e.served) {
                if let Ok(vs) = VirtualSubnet::try_from(*p)
                    && let Ok(sid) = e.node.engine_mut().add_subnet(vs)
                {
                    let _ = e.node.engine_mut().set_candidates(sid, vec![cand]);
                }
            }
            for p in e.served.difference(&served) {
                if let Ok(vs) = VirtualSubnet::try_from(*p) {
                    let _ = e.node.engine_mut().remove_subnet(&vs);
                }
            }
            e.served = served.clone();
        }
    }

    // ----- timers -----------------------------------------------------------

    fn reschedule(&mut self, id: NodeId) {
        let now = self.now;
        let recovery = self.recovery_timeout(id);
        let n = self.node(id);
        if !n.alive {
            return;
        }
        let mut t: Option<Instant> = None;
        let mut earliest = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        for &s in &n.sessions {
            let sess = &self.sessions[s];
            if sess.upper == id {
                earliest(sess.upper_peer.poll_timeout());
            }
            if sess.lower == id {
                earliest(sess.lower_peer.poll_timeout());
            }
        }
        match &n.kind {
            Kind::Router(r) => earliest(r.node.poll_timeout()),
            Kind::Host(h) => earliest(h.agent.poll_timeout()),
            _ => {}
        }
        earliest(recovery);
        let Some(t) = t else { return };
        // Never in the past: a timer that stays due must not spin the loop.
        let t = t.max(now + Duration::from_micros(1));
        if n.wake_at.is_none_or(|w| t < w) {
            self.node_mut(id).wake_at = Some(t);
            self.schedule(t, Event::Wake { node: id, at: t });
        }
    }

    fn on_wake(&mut self, id: NodeId) {
        if !self.node(id).alive {
            return;
        }
        let now = self.now;
        let sessions = self.node(id).sessions.clone();
        for s in sessions {
            let sess = &mut self.sessions[s];
            if sess.upper == id {
                sess.upper_peer.handle_timeout(now);
            } else {
                sess.lower_peer.handle_timeout(now);
            }
            self.pump(s);
        }
        let mut outgoing = Vec::new();
        match &mut self.node_mut(id).kind {
            Kind::Router(r) => r.node.handle_timeout(now),
            Kind::Host(h) => outgoing = h.agent.handle_timeout(now),
            _ => {}
        }
        self.drain_actions(id);
        self.recovery_wake(id);
        if let Some(s) = self.node(id).up.and_then(|u| u.session) {
            for o in outgoing {
                self.send_on(s, id, o);
            }
        }
        self.reschedule(id);
    }

    // ----- data plane ------------------------------------------------------

    fn send_packet(&mut self, from: NodeId, dst: IpAddr, pkt: SimPacket) {
        let to = match self.by_addr.get(&dst) {
            Some(&n) => n,
            None if matches!(self.node(from).kind, Kind::Client(_)) => {
                // VIPs are announced by the tunnel entry routers (anycast), unless
                // routing moved this client's path elsewhere.
                let via = match &self.node(from).kind {
                    Kind::Client(c) => c.via,
                    _ => None,
                };
                match via.or_else(|| self.entries.first().copied()) {
                    Some(e) => e,
                    None => {
                        self.stats.unroutable += 1;
                        return;
                    }
                }
            }
            None => {
                self.stats.unroutable += 1;
                return;
            }
        };
        if self.cfg.loss > 0.0 && self.rng.chance(self.cfg.loss) {
            self.stats.packets_lost += 1;
            return;
        }
        let at = self.now + self.delay(from, to);
        self.schedule(at, Event::Packet { to, pkt });
    }

    fn on_packet(&mut self, to: NodeId, pkt: SimPacket) {
        if !self.node(to).alive {
            self.stats.packets_to_dead_nodes += 1;
            return;
        }
        match &self.node(to).kind {
            Kind::Router(_) => self.router_packet(to, pkt),
            Kind::Entry(_) => self.entry_packet(to, pkt),
            Kind::Host(_) => self.host_packet(to, pkt),
            Kind::Client(_) => self.client_packet(pkt),
        }
    }

    /// Runs `pkt` through the node of router or entry router `id` (the node
    /// rewrites the buffer in place) and adds what it did to the figures.
    fn through_node(
        &mut self,
        id: NodeId,
        pkt: &mut SimPacket,
    ) -> Option<(Verdict, recovery::Tally, recovery::Tally)> {
        let now = self.now;
        let node = match &mut self.nodes[id.0 as usize].kind {
            Kind::Router(r) => &mut r.node,
            Kind::Entry(e) => &mut e.node,
            _ => return None,
        };
        let before = recovery::Tally::of(node);
        let mut pb = PacketBuf::new(&mut pkt.buf, pkt.start, pkt.len).ok()?;
        let v = node.handle_packet(now, &mut pb);
        pkt.start = pb.start();
        pkt.len = pb.len();
        let after = recovery::Tally::of(node);
        self.account(&before, &after);
        Some((v, before, after))
    }

    /// Sends what a node's verdict says to send.
    fn follow_verdict(&mut self, id: NodeId, v: Verdict, mut pkt: SimPacket) {
        match v {
            Verdict::Forward { next_hop, .. } => self.send_packet(id, next_hop, pkt),
            Verdict::Reply { to } => {
                pkt.conn = None;
                self.send_packet(id, to, pkt);
            }
            _ => {}
        }
    }

    fn router_packet(&mut self, id: NodeId, mut pkt: SimPacket) {
        let now = self.now;
        let from_entry = if pkt.handed_over {
            self.sent_by_entry_of(id, &pkt)
        } else {
            None
        };
        let Some((v, before, after)) = self.through_node(id, &mut pkt) else {
            return;
        };
        let Kind::Router(r) = &mut self.nodes[id.0 as usize].kind else {
            return;
        };
        let level = r.level;
        if after.recover > before.recover {
            r.recover += 1;
        }
        if let Some(c) = pkt.conn {
            let rec = &mut self.conns[c.0 as usize];
            if pkt.slr_hops == 0 {
                rec.slr_packets += 1;
            }
            rec.slr_handlings += 1;
            rec.level_handlings[level_index(level)] += 1;
            rec.first_handled[level_index(level)].get_or_insert(now);
        }
        pkt.slr_hops = pkt.slr_hops.saturating_add(1);
        self.drain_actions(id);
        if after.new_flows > before.new_flows {
            // The mirror's next batch may now be due before the node's next wake.
            self.reschedule(id);
        }
        if let (Verdict::Forward { next_hop, .. }, Some(entry)) = (v, from_entry) {
            self.recreate_at_entry(id, entry, &pkt, next_hop);
        }
        self.follow_verdict(id, v, pkt);
    }

    fn entry_packet(&mut self, id: NodeId, mut pkt: SimPacket) {
        let Some((v, before, after)) = self.through_node(id, &mut pkt) else {
            return;
        };
        if let Some(c) = pkt.conn {
            self.conns[c.0 as usize].entry_packets += 1;
        }
        if after.forwarded_unknown > before.forwarded_unknown {
            // Handed to the SLR, which holds the flow (DESIGN.md §5, first row).
            pkt.handed_over = true;
        }
        self.follow_verdict(id, v, pkt);
    }

    fn host_packet(&mut self, id: NodeId, mut pkt: SimPacket) {
        let Kind::Host(h) = &mut self.nodes[id.0 as usize].kind else {
            return;
        };
        let outer_src = Ipv4Packet::new_checked(pkt.data())
            .ok()
            .map(|p| IpAddr::V4(p.src_addr()));
        let Ok(mut pb) = PacketBuf::new(&mut pkt.buf, pkt.start, pkt.len) else {
            return;
        };
        if h.tunnel.decapsulate(&mut pb).is_err() {
            h.stats.bad_tunnel += 1;
            return;
        }
        pkt.start = pb.start();
        pkt.len = pb.len();
        let Some(seg) = parse_segment(pkt.data()) else {
            h.stats.bad_tunnel += 1;
            return;
        };
        if !h.agent.serves(IpAddr::V4(*seg.dst.ip())) {
            h.stats.not_mine += 1;
            return;
        }
        if outer_src == Some(h.site_addr) {
            h.stats.via_site += 1;
        } else {
            h.stats.via_shortcut += 1;
        }
        let key = FlowKey {
            proto: ip_proto::TCP,
            src: IpAddr::V4(*seg.src.ip()),
            src_port: seg.src.port(),
            dst: IpAddr::V4(*seg.dst.ip()),
            dst_port: seg.dst.port(),
        };
        let is_syn = seg.flags.syn() && !seg.flags.ack();
        let mut reply: Option<(TcpFlags, u32)> = None;
        let mut received = None;
        let now = self.now;
        match h.conns.get_mut(&key) {
            None if is_syn => {
                h.conns.insert(
                    key,
                    HostConn {
                        open: true,
                        received: 0,
                        last_rx: now,
                    },
                );
                h.stats.accepted += 1;
                h.agent.connection_opened();
                reply = Some((SYN_ACK, 0));
            }
            None => {
                // A mid-connection packet of a connection we never accepted: the
                // flow moved and the connection breaks, as it would on a real host.
                h.stats.misrouted += 1;
                reply = Some((RST, 0));
            }
            Some(c) => {
                c.last_rx = now;
                received = Some(c.received);
                if is_syn {
                    reply = Some((SYN_ACK, 0));
                } else if seg.flags.fin() {
                    if c.open {
                        c.open = false;
                        h.stats.completed += 1;
                        h.agent.connection_closed();
                    }
                    reply = Some((FIN, c.received));
                } else if seg.payload > 0 {
                    if seg.seq == c.received + 1 {
                        c.received += 1;
                        received = Some(c.received);
                    }
                    reply = Some((ACK, c.received));
                }
            }
        }
        if let Some(c) = pkt.conn {
            let rec = &mut self.conns[c.0 as usize];
            match rec.server {
                None if is_syn => rec.server = Some(id),
                Some(s) if s != id => rec.misrouted += 1,
                Some(_) => rec.delivered = received.unwrap_or(rec.delivered),
                None => {}
            }
        }
        if let Some((flags, seq)) = reply
            // Direct server return: the VIP answers the client itself.
            && let Some(p) = tcp_packet(seg.dst, seg.src, flags, seq, 0, pkt.conn)
        {
            self.send_packet(id, IpAddr::V4(*seg.src.ip()), p);
        }
    }

    // ----- clients -----------------------------------------------------------

    /// Schedules a connection from `client` to `vip:port` opening at `at`, sending
    /// `segments` data segments `think` apart (all at once when zero).
    pub fn open_connection(
        &mut self,
        client: NodeId,
        vip: SocketAddrV4,
        at: Instant,
        segments: u32,
        think: Duration,
    ) -> Result<ConnId, TopologyError> {
        let addr = self.node(client).addr;
        let Kind::Client(c) = &mut self.nodes[client.0 as usize].kind else {
            return Err(TopologyError::NotAClient { node: client });
        };
        if c.next_port == u16::MAX {
            return Err(TopologyError::PortsExhausted { node: client });
        }
        c.next_port += 1;
        let port = c.next_port;
        let id = ConnId(
            u32::try_from(self.conns.len()).map_err(|_| TopologyError::TooMany {
                what: "connections",
            })?,
        );
        c.by_port.insert(port, id);
        self.conns.push(ConnRecord {
            client,
            key: FlowKey {
                proto: ip_proto::TCP,
                src: IpAddr::V4(addr),
                src_port: port,
                dst: IpAddr::V4(*vip.ip()),
                dst_port: vip.port(),
            },
            opened_at: at,
            segments,
            think,
            state: ConnState::Scheduled,
            server: None,
            finished_at: None,
            packets_sent: 0,
            retransmits: 0,
            slr_packets: 0,
            slr_handlings: 0,
            level_handlings: [0; 3],
            first_handled: [None; 3],
            misrouted: 0,
            entry_packets: 0,
            delivered: 0,
            max_gap: Duration::ZERO,
            last_progress: at,
            acked: 0,
            sent: 0,
            tries: 0,
            generation: 0,
            timer: TimerKind::Rto,
        });
        self.schedule(at, Event::Open { conn: id });
        Ok(id)
    }

    fn client_send(&mut self, conn: ConnId, flags: TcpFlags, seq: u32, payload: usize) {
        let rec = &mut self.conns[conn.0 as usize];
        rec.packets_sent += 1;
        let (client, key) = (rec.client, rec.key);
        let (IpAddr::V4(src), IpAddr::V4(dst)) = (key.src, key.dst) else {
            return;
        };
        if let Some(p) = tcp_packet(
            SocketAddrV4::new(src, key.src_port),
            SocketAddrV4::new(dst, key.dst_port),
            flags,
            seq,
            payload,
            Some(conn),
        ) {
            self.send_packet(client, key.dst, p);
        }
    }

    fn arm(&mut self, conn: ConnId, kind: TimerKind, after: Duration) {
        let rec = &mut self.conns[conn.0 as usize];
        rec.generation += 1;
        rec.timer = kind;
        let generation = rec.generation;
        let at = self.now + after;
        self.schedule(at, Event::ConnTimer { conn, generation });
    }

    fn rto(&self, conn: ConnId) -> Duration {
        let tries = self.conns[conn.0 as usize].tries.min(4);
        self.cfg.rto * (1u32 << tries)
    }

    fn client_open(&mut self, conn: ConnId) {
        if !self.node(self.conns[conn.0 as usize].client).alive {
            return;
        }
        let rec = &mut self.conns[conn.0 as usize];
        rec.state = ConnState::SynSent;
        rec.opened_at = self.now;
        rec.last_progress = self.now;
        self.client_send(conn, SYN, 0, 0);
        let rto = self.rto(conn);
        self.arm(conn, TimerKind::Rto, rto);
    }

    fn on_conn_timer(&mut self, conn: ConnId, generation: u32) {
        let rec = &self.conns[conn.0 as usize];
        if rec.generation != generation
            || matches!(
                rec.state,
                ConnState::Done | ConnState::TimedOut | ConnState::Reset
            )
        {
            return;
        }
        match rec.timer {
            TimerKind::Think => {
                let rec = &mut self.conns[conn.0 as usize];
                rec.sent += 1;
                let seq = rec.sent;
                self.client_send(conn, DATA, seq, SEGMENT_BYTES);
                let rto = self.rto(conn);
                self.arm(conn, TimerKind::Rto, rto);
            }
            TimerKind::Rto => {
                let max = self.cfg.max_retries;
                let rec = &mut self.conns[conn.0 as usize];
                rec.tries += 1;
                if rec.tries > max {
                    rec.state = ConnState::TimedOut;
                    rec.finished_at = Some(self.now);
                    return;
                }
                let (state, acked, sent) = (rec.state, rec.acked, rec.sent);
                let mut resent = 0;
                match state {
                    ConnState::SynSent => {
                        self.client_send(conn, SYN, 0, 0);
                        resent = 1;
                    }
                    ConnState::Open => {
                        for seq in acked + 1..=sent {
                            self.client_send(conn, DATA, seq, SEGMENT_BYTES);
                            resent += 1;
                        }
                    }
                    ConnState::FinSent => {
                        self.client_send(conn, FIN, 0, 0);
                        resent = 1;
                    }
                    _ => {}
                }
                self.conns[conn.0 as usize].retransmits += resent;
                let rto = self.rto(conn);
                self.arm(conn, TimerKind::Rto, rto);
            }
        }
    }

    fn client_packet(&mut self, pkt: SimPacket) {
        if self.client_echo(&pkt) {
            return;
        }
        let Some(seg) = parse_segment(pkt.data()) else {
            return;
        };
        let now = self.now;
        let Some(&client) = self.by_addr.get(&IpAddr::V4(*seg.dst.ip())) else {
            return;
        };
        let Kind::Client(c) = &self.node(client).kind else {
            return;
        };
        let Some(&conn) = c.by_port.get(&seg.dst.port()) else {
            return;
        };
        let rec = &mut self.conns[conn.0 as usize];
        if IpAddr::V4(*seg.src.ip()) != rec.key.dst || seg.src.port() != rec.key.dst_port {
            self.stats.bad_reply_source += 1;
            return;
        }
        if seg.flags.rst() {
            if !matches!(rec.state, ConnState::Done | ConnState::TimedOut) {
                rec.state = ConnState::Reset;
                rec.finished_at = Some(self.now);
                rec.generation += 1;
            }
            return;
        }
        match rec.state {
            ConnState::SynSent if seg.flags.syn() && seg.flags.ack() => {
                rec.progress(now);
                rec.state = ConnState::Open;
                rec.tries = 0;
                let (n, think) = (rec.segments, rec.think);
                self.client_send(conn, ACK, 0, 0);
                if n == 0 {
                    self.conns[conn.0 as usize].state = ConnState::FinSent;
                    self.client_send(conn, FIN, 0, 0);
                } else {
                    let burst = if think.is_zero() { n } else { 1 };
                    for seq in 1..=burst {
                        self.client_send(conn, DATA, seq, SEGMENT_BYTES);
                    }
                    self.conns[conn.0 as usize].sent = burst;
                }
                let rto = self.rto(conn);
                self.arm(conn, TimerKind::Rto, rto);
            }
            ConnState::Open if seg.flags.ack() && !seg.flags.syn() && !seg.flags.fin() => {
                if seg.seq <= rec.acked {
                    return;
                }
                rec.acked = seg.seq.min(rec.sent);
                rec.tries = 0;
                rec.progress(now);
                let (acked, sent, n, think) = (rec.acked, rec.sent, rec.segments, rec.think);
                if acked >= n {
                    self.conns[conn.0 as usize].state = ConnState::FinSent;
                    self.client_send(conn, FIN, 0, 0);
                    let rto = self.rto(conn);
                    self.arm(conn, TimerKind::Rto, rto);
                } else if acked == sent && !think.is_zero() {
                    self.arm(conn, TimerKind::Think, think);
                } else {
                    let rto = self.rto(conn);
                    self.arm(conn, TimerKind::Rto, rto);
                }
            }
            ConnState::FinSent if seg.flags.fin() => {
                rec.progress(now);
                rec.state = ConnState::Done;
                rec.finished_at = Some(self.now);
                rec.generation += 1;
            }
            _ => {}
        }
    }

    // ----- operator actions --------------------------------------------------

    /// Sets load on a host that its router cannot see (other work).
    pub fn set_background_load(&mut self, host: NodeId, load: f64) {
        if let Kind::Host(h) = &mut self.node_mut(host).kind {
            h.agent.set_background_load(load);
        }
    }

    /// Crashes a node: from now on it neither sends nor receives anything; its
    /// neighbours notice through their sessions' dead intervals.
    pub fn fail_node(&mut self, id: NodeId) {
        self.node_mut(id).alive = false;
        self.node_mut(id).wake_at = None;
    }

    /// Whether a node is running.
    pub fn is_alive(&self, id: NodeId) -> bool {
        self.node(id).alive
    }

    /// Hot-swaps the policy of every subnet a router serves (and will serve);
    /// returns the subnets switched. Pinned flows keep their next hops.
    pub fn set_policy(&mut self, router: NodeId, policy: Arc<dyn Policy>) -> usize {
        match &mut self.node_mut(router).kind {
            Kind::Router(r) => r.node.set_default_policy(policy),
            _ => 0,
        }
    }

    /// Replaces a router's F and G from its next table computation on.
    pub fn set_cost_model(&mut self, router: NodeId, cost: Arc<dyn CostModel>) {
        if let Kind::Router(r) = &mut self.node_mut(router).kind {
            r.node.set_cost_model(cost);
        }
    }

    /// Delivers raw signalling bytes to the upper end of `lower`'s current session,
    /// as if they had arrived on it (replay and forgery tests).
    pub fn inject_upward(&mut self, lower: NodeId, bytes: &[u8]) -> bool {
        let Some(s) = self.node(lower).up.and_then(|u| u.session) else {
            return false;
        };
        self.on_signal(s, true, bytes);
        true
    }

    // ----- observation -------------------------------------------------------

    /// Simulation counters.
    pub fn stats(&self) -> &SimStats {
        &self.stats
    }

    /// A node's name.
    pub fn name(&self, id: NodeId) -> &NodeName {
        &self.node(id).name
    }

    /// A node's address (its tunnel endpoint).
    pub fn addr(&self, id: NodeId) -> Ipv4Addr {
        self.node(id).addr
    }

    /// The connection records, by [`ConnId`].
    pub fn conns(&self) -> &[ConnRecord] {
        &self.conns
    }

    /// One connection.
    pub fn conn(&self, id: ConnId) -> &ConnRecord {
        &self.conns[id.0 as usize]
    }

    /// A host server's counters.
    pub fn host_stats(&self, host: NodeId) -> Option<(HostServerStats, HostStats, u32)> {
        match &self.node(host).kind {
            Kind::Host(h) => Some((h.stats, *h.agent.stats(), h.agent.active_connections())),
            _ => None,
        }
    }

    /// A router's report.
    pub fn router_report(&self, router: NodeId) -> Option<RouterReport> {
        match &self.node(router).kind {
            Kind::Router(r) => Some(RouterReport {
                name: self.node(router).name.clone(),
                level: r.level,
                engine: r.node.engine().counters(),
                control: *r.node.control().stats(),
                recover: r.recover,
            }),
            _ => None,
        }
    }

    /// A router's next-hop table.
    pub fn table(&self, router: NodeId) -> Option<&NextHopTable> {
        match &self.node(router).kind {
            Kind::Router(r) => Some(r.node.control().table()),
            _ => None,
        }
    }

    /// The engine counters of the tunnel entry router.
    pub fn entry_counters(&self, entry: NodeId) -> Option<EngineCounters> {
        match &self.node(entry).kind {
            Kind::Entry(e) => Some(e.node.engine().counters()),
            _ => None,
        }
    }

    /// Epochs (lower end, upper end) of `lower`'s current session with its upper
    /// level, once established.
    pub fn session_epochs(&self, lower: NodeId) -> Option<(Epoch, Epoch)> {
        let s = self.node(lower).up?.session?;
        let sess = &self.sessions[s];
        Some((sess.lower_peer.local_epoch(), sess.upper_peer.local_epoch()))
    }

    /// Counters of the upper end of `lower`'s current session.
    pub fn upper_peer_stats(&self, lower: NodeId) -> Option<PeerStats> {
        let s = self.node(lower).up?.session?;
        Some(*self.sessions[s].upper_peer.stats())
    }

    /// Whether `lower` is registered with its upper level.
    pub fn is_registered(&self, lower: NodeId) -> bool {
        self.node(lower)
            .up
            .and_then(|u| u.session)
            .is_some_and(|s| self.sessions[s].lower_peer.is_registered())
    }

    /// Packets-per-connection figures over the completed connections `filter`
    /// accepts.
    pub fn figures(&self, filter: impl Fn(&ConnRecord) -> bool) -> ShortcutFigures {
        let done: Vec<&ConnRecord> = self
            .conns
            .iter()
            .filter(|c| c.state == ConnState::Done && filter(c))
            .collect();
        let n = done.len();
        if n == 0 {
            return ShortcutFigures::default();
        }
        let avg = |f: &dyn Fn(&ConnRecord) -> u32| {
            done.iter().map(|c| f64::from(f(c))).sum::<f64>() / n as f64
        };
        ShortcutFigures {
            connections: n,
            packets_per_conn: avg(&|c| c.packets_sent),
            slr_packets_per_conn: avg(&|c| c.slr_packets),
            slr_handlings_per_conn: avg(&|c| c.slr_handlings),
            per_level: [
                avg(&|c| c.level_handlings[0]),
                avg(&|c| c.level_handlings[1]),
                avg(&|c| c.level_handlings[2]),
            ],
            entry_per_conn: avg(&|c| c.entry_packets),
        }
    }

    /// A fingerprint of the run (every connection's fate and the counters), equal
    /// for equal seeds and inputs.
    pub fn digest(&self) -> u64 {
        let mut h: u64 = 0xCBF2_9CE4_8422_2325;
        let mut mix = |v: u64| {
            for b in v.to_le_bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01B3);
            }
        };
        for c in &self.conns {
            mix(c.server.map_or(u64::MAX, |s| u64::from(s.0)));
            mix(c.state as u64);
            mix(c.finished_at.map_or(0, Instant::as_nanos));
            mix(u64::from(c.packets_sent));
            mix(u64::from(c.slr_handlings));
        }
        let s = &self.stats;
        for v in [
            s.events,
            s.packets_lost,
            s.sessions,
            s.entry_shortcuts,
            s.untrusted_refused,
        ] {
            mix(v);
        }
        h
    }

    /// Drops of one reason summed over every SLR.
    pub fn slr_drops(&self, reason: DropReason) -> u64 {
        self.nodes
            .iter()
            .filter_map(|n| match &n.kind {
                Kind::Router(r) => Some(r.node.engine().counters().dropped(reason)),
                _ => None,
            })
            .sum()
    }
}
