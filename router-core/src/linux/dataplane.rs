//! The router's Linux shell: packets from the TUN and raw IP-in-IP sockets through
//! [`Engine::process`], verdicts acted on, control changes applied between batches.
//!
//! The first engine thread ([`Dataplane::run`]) drains every source each turn
//! in batches of up to `batch` packets, runs each packet through the node, sends
//! all `Forward` and `Reply` packets of the batch with one `sendmmsg` per family,
//! and hands `Deliver` / `Recover` packets to the control plane over a bounded
//! channel. Only when no source had anything does it `poll`; a command sent through
//! [`DataplaneHandle`] wakes it through an eventfd. With
//! [`DataplaneConfig::engine_threads`] above 1, more threads read queues of a
//! multi-queue TUN and their share of the IPv4 tunnels, and run their batches
//! through the same node under its lock (`workers`: why one shared node);
//! timers, commands and IPv6-outer tunnels stay on the first thread.
//!
//! With TUN offloads (the default) a read is a whole TCP super-packet, cut into
//! segments before the node sees them (see [`TunDevice`]).
//!
//! When asked to (`new_flow_queue > 0`), it also reports every flow the engine pins
//! on its first packet ([`NewFlow`]): a site SLR's control plane turns these into
//! shortcuts (tunnel objects) upstream, and needs them before the flow's next packet.
//!
//! With a kernel fast path ([`Dataplane::set_fast_path`]) the engine threads keep
//! its maps in step with the engine's flow table: after each batch (and each
//! turn of the first thread) they apply what the table journaled (every pin and
//! unpin, whoever made it), and after each timer the first thread settles the flows the sweep found idle with what the program saw
//! of them ([`super::fastpath::FastPathSync`]).

use super::fastpath::{FastPathInfo, FastPathStatus, FastPathSync, RouterFastPath};
use super::netlink::{Netlink, NetlinkError};
use super::raw::{Family, MAX_BATCH, RawRx, RawTx};
use super::tun::{MAX_GSO_SEGS, TunDevice};
use super::{Clock, SyscallError, sysctl};
use crate::api::{ApiError, RouterApi};
use crate::classify::{FlowKey, VirtualSubnet};
use crate::engine::{Engine, EngineConfig, EngineCounters, Verdict};
use crate::packet::PacketBuf;
use crate::policy::SubnetId;
use crate::time::Instant;
use crate::wire::ip_proto;
use io::Io;
use nix::sys::eventfd::{EfdFlags, EventFd};
use std::net::IpAddr;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use workers::{Shared, Workers};

mod io;
mod workers;

/// Most engine threads ([`DataplaneConfig::engine_threads`]).
pub const MAX_ENGINE_THREADS: usize = 16;

/// How tunnels addressed to this router are terminated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TunnelPath {
    /// Use a kernel ipip device if the kernel has one, else userspace raw sockets.
    #[default]
    Auto,
    /// Always terminate in userspace (raw sockets, protocols 4 and 41).
    Userspace,
    /// Require the kernel ipip device (fail at start if there is none).
    Kernel,
}

/// Configuration of a [`Dataplane`].
#[derive(Debug, Clone)]
pub struct DataplaneConfig {
    /// The engine's configuration; `local_v4` / `local_v6` are the tunnel endpoints
    /// (assign them to a local interface, e.g. `lo`, before starting).
    pub engine: EngineConfig,
    /// Name of the TUN device the served subnets are routed into.
    pub tun_name: String,
    /// MTU of the TUN device.
    pub tun_mtu: u16,
    /// Read TCP super-packets from the TUN and cut them into segments here
    /// (TUN offloads, software GSO; see [`TunDevice`]): one read where there
    /// were up to 64. Off: one read per packet.
    pub tun_offload: bool,
    /// Packets per batch (1..=64).
    pub batch: usize,
    /// Threads that read the TUN and run its packets through the node
    /// (1..=[`MAX_ENGINE_THREADS`]). Above 1 the TUN has one queue per thread
    /// (the kernel spreads flows over them by hash); the node, its flow table
    /// included, is shared under a lock held only while a batch is
    /// classified, so the threads' reads and sends overlap. IPv4 tunnels to
    /// this router are split between the threads by flow (a socket filter on
    /// each thread's raw sockets); timers, control changes and IPv6-outer
    /// tunnels stay on the first thread.
    pub engine_threads: usize,
    /// Largest packet accepted, outer header included.
    pub max_packet: usize,
    /// Capacity of the channel of punted (`Deliver` / `Recover`) packets.
    pub punt_queue: usize,
    /// Tunnel termination path.
    pub tunnel_path: TunnelPath,
    /// Turn on IP forwarding in the namespace (needed to route into the TUN).
    pub enable_forwarding: bool,
    /// Flow-table buckets swept per sweep (every 100 ms).
    pub sweep_buckets: usize,
    /// Capacity of the channel of [`NewFlow`] notices; 0 sends none (and costs
    /// nothing per packet).
    pub new_flow_queue: usize,
    /// The process's (multi-thread) runtime, to drive the dataplane's netlink
    /// connection; `None`: a private one.
    pub runtime: Option<tokio::runtime::Handle>,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self {
            engine: EngineConfig::default(),
            tun_name: "pronto0".into(),
            tun_mtu: 1500,
            tun_offload: true,
            batch: 32,
            engine_threads: 1,
            max_packet: 9216,
            punt_queue: 1024,
            tunnel_path: TunnelPath::Auto,
            enable_forwarding: true,
            sweep_buckets: 4096,
            new_flow_queue: 0,
            runtime: None,
        }
    }
}

/// Errors starting or talking to a dataplane.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataplaneError {
    /// A system call failed.
    #[error(transparent)]
    Syscall(#[from] SyscallError),
    /// A netlink request failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// The engine refused a control change.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// A configuration value is out of range.
    #[error("invalid dataplane configuration: {field}: {reason}")]
    Config {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// [`TunnelPath::Kernel`] was asked for and the kernel has no ipip.
    #[error("the kernel has no ipip device support (use tunnel_path = Auto or Userspace)")]
    NoKernelIpip,
    /// The dataplane thread has stopped.
    #[error("the dataplane has stopped")]
    Stopped,
}

/// Why a packet was handed to the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PuntKind {
    /// Addressed to this router (after tunnel termination).
    Deliver,
    /// A mid-connection packet of an unknown flow: recover its state.
    Recover {
        /// The flow.
        key: FlowKey,
    },
    /// An echo reply carrying a server flow advertisement: verify it, then install
    /// the flow or relay the reply.
    Advert,
}

/// A packet handed to the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PuntedPacket {
    /// Why.
    pub kind: PuntKind,
    /// The packet from its (inner) IP header on.
    pub data: Vec<u8>,
    /// When the engine processed it.
    pub at: Instant,
}

/// The engine pinned a new flow to `next_hop` on its first packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewFlow {
    /// The flow (of the inner packet).
    pub key: FlowKey,
    /// Where it is pinned.
    pub next_hop: IpAddr,
    /// When the engine pinned it.
    pub at: Instant,
}

/// Receives the engine time of each packet that pinned a new flow: classify,
/// flow-table miss, policy decision, pin, encapsulate ([`Dataplane::observe_decisions`]).
/// Called on the dataplane thread: implementations must be quick and lock-free.
pub trait DecisionObserver: Send + Sync + std::fmt::Debug {
    /// One new flow's decision took `ns` nanoseconds.
    fn new_flow_decision(&self, ns: u64);
}

/// What the dataplane thread drives: a bare [`Engine`], or a whole router node
/// (the engine with its control side and recovery) that owns the engine and
/// finishes what it hands up. The seam lets the same shell run either, and
/// keeps `router-core` free of the control side.
pub trait DataplaneNode: Send + 'static {
    /// Process one packet at `now`; the verdict is final for the shell.
    fn handle_packet(&mut self, now: Instant, pkt: &mut PacketBuf<'_>) -> Verdict;
    /// The flow the last packet pinned, if the node leaves notices to the shell
    /// (a bare engine does; a router node consumes them itself).
    fn take_new_flow(&mut self) -> Option<FlowKey>;
    /// Timers (at least every 100 ms, and at [`DataplaneNode::poll_timeout`]).
    fn handle_timeout(&mut self, now: Instant);
    /// The next deadline, if the node has one before the next 100 ms tick.
    fn poll_timeout(&self) -> Option<Instant>;
    /// After each batch of packets: hand what the node queued to the outside.
    fn flush(&mut self) {}
    /// A packet the node held (its flow was being re-created) and releases
    /// now: written into `buf` after `headroom` bytes, with the verdict the
    /// shell acts on as for [`DataplaneNode::handle_packet`]. Polled until `None`
    /// after each batch and timer.
    fn poll_released<'b>(
        &mut self,
        _now: Instant,
        _buf: &'b mut [u8],
        _headroom: usize,
    ) -> Option<(Verdict, PacketBuf<'b>)> {
        None
    }
    /// The engine, for counters and control changes.
    fn engine(&self) -> &Engine;
    /// The engine, mutably.
    fn engine_mut(&mut self) -> &mut Engine;
    /// For [`DataplaneHandle::call_node`].
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
}

/// A bare engine: sweeps its flow table on the timer; new flows are noticed by
/// the shell.
#[derive(Debug)]
struct EngineNode {
    engine: Engine,
    sweep_buckets: usize,
}

impl DataplaneNode for EngineNode {
    fn handle_packet(&mut self, now: Instant, pkt: &mut PacketBuf<'_>) -> Verdict {
        self.engine.process(pkt, now)
    }
    fn take_new_flow(&mut self) -> Option<FlowKey> {
        self.engine.take_new_flow()
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.engine.sweep(now, self.sweep_buckets);
    }
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    fn engine(&self) -> &Engine {
        &self.engine
    }
    fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

pub use super::shell_counters::ShellStats;
use super::shell_counters::{ShellCounters, bump};

type NodeFn = Box<dyn FnOnce(&mut dyn DataplaneNode, Instant) + Send>;

enum Command {
    /// Run a closure with the node between two batches.
    Apply(NodeFn),
    /// Start forwarding pinned flows with this fast path.
    FastPath(Box<FastPathSync>),
    /// End the thread.
    Stop,
}

/// A cloneable control handle of a running [`Dataplane`].
#[derive(Debug, Clone)]
pub struct DataplaneHandle {
    commands: Sender<Command>,
    wake: Arc<EventFd>,
    stats: Arc<ShellCounters>,
    netlink: Arc<Mutex<Netlink>>,
    tun_index: u32,
    fast_path: Arc<std::sync::OnceLock<FastPathInfo>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Apply(_) => "Apply",
            Self::FastPath(_) => "FastPath",
            Self::Stop => "Stop",
        })
    }
}

impl DataplaneHandle {
    fn send(&self, c: Command) -> Result<(), DataplaneError> {
        self.commands.send(c).map_err(|_| DataplaneError::Stopped)?;
        // A failed wake only delays the command to the next poll timeout.
        let _ = self.wake.write(1);
        Ok(())
    }

    /// Run `f` on the engine between two batches and return its result: any
    /// [`RouterApi`] call, counters, flow lookups.
    pub fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Engine, Instant) -> R + Send + 'static,
    ) -> Result<R, DataplaneError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Command::Apply(Box::new(move |n, now| {
            let _ = tx.send(f(n.engine_mut(), now));
        })))?;
        rx.recv().map_err(|_| DataplaneError::Stopped)
    }

    /// Run `f` on the dataplane thread with the node itself, which must be of
    /// type `N` (the one given to [`Dataplane::with_node`]); `None` if it is not.
    pub fn call_node<N: DataplaneNode, R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut N, Instant) -> R + Send + 'static,
    ) -> Result<Option<R>, DataplaneError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Command::Apply(Box::new(move |n, now| {
            let r = n.as_any_mut().downcast_mut::<N>().map(|n| f(n, now));
            let _ = tx.send(r);
        })))?;
        rx.recv().map_err(|_| DataplaneError::Stopped)
    }

    /// As [`DataplaneHandle::call_node`], without waiting for the result.
    pub fn post_node<N: DataplaneNode>(
        &self,
        f: impl FnOnce(&mut N, Instant) + Send + 'static,
    ) -> Result<(), DataplaneError> {
        self.send(Command::Apply(Box::new(move |n, now| {
            if let Some(n) = n.as_any_mut().downcast_mut::<N>() {
                f(n, now);
            }
        })))
    }

    /// Serve a virtual subnet: route it into the TUN and add it to the engine.
    pub fn serve(&self, subnet: VirtualSubnet) -> Result<SubnetId, DataplaneError> {
        let id = self.call(move |e, _| e.add_subnet(subnet))??;
        self.netlink
            .lock()
            .map_err(|_| DataplaneError::Stopped)?
            .route_to_link(subnet, self.tun_index)?;
        Ok(id)
    }

    /// Stop serving a subnet: remove its route and its engine entry.
    pub fn unserve(&self, subnet: VirtualSubnet) -> Result<(), DataplaneError> {
        let r = self
            .netlink
            .lock()
            .map_err(|_| DataplaneError::Stopped)?
            .remove_route_to_link(subnet, self.tun_index);
        if let Err(e) = r {
            tracing::warn!(%subnet, error = %e, "removing the subnet route failed");
        }
        self.call(move |e, _| e.remove_subnet(&subnet))??;
        Ok(())
    }

    /// The engine's counters.
    pub fn counters(&self) -> Result<EngineCounters, DataplaneError> {
        self.call(|e, _| e.counters())
    }

    /// The shell's counters (no round trip to the dataplane thread).
    pub fn stats(&self) -> ShellStats {
        self.stats.snapshot()
    }

    /// The fast path's status and counter readers, once
    /// [`Dataplane::set_fast_path`] or [`DataplaneHandle::install_fast_path`]
    /// ran.
    pub fn fast_path(&self) -> Option<&FastPathInfo> {
        self.fast_path.get()
    }

    /// As [`Dataplane::set_fast_path`], into a running dataplane: a daemon
    /// loads the program (the verifier takes a good part of a second on a
    /// busy machine) while it already forwards and signals, and hands it over
    /// here; the flows pinned meanwhile are written into the maps at once.
    pub fn install_fast_path(
        &self,
        fp: Option<RouterFastPath>,
        status: FastPathStatus,
    ) -> Result<(), DataplaneError> {
        let sync = fp.map(FastPathSync::new);
        let info = FastPathInfo {
            status,
            reader: sync.as_ref().map(|s| s.fast_path().reader()),
            sync: sync.as_ref().map(FastPathSync::counters),
            flow_maps: sync.as_ref().map(|s| s.fast_path().map_ids()),
        };
        if self.fast_path.set(info).is_err() {
            return Err(DataplaneError::Config {
                field: "fast_path",
                reason: "a fast path is installed already".into(),
            });
        }
        match sync {
            Some(s) => self.send(Command::FastPath(Box::new(s))),
            None => Ok(()),
        }
    }

    /// Ask the dataplane to stop after the current batch.
    pub fn stop(&self) -> Result<(), DataplaneError> {
        self.send(Command::Stop)
    }
}

/// The router's data path on Linux.
pub struct Dataplane {
    node: Box<dyn DataplaneNode>,
    io: Io,
    /// The packet I/O of the other engine threads (one TUN queue each).
    worker_io: Vec<Io>,
    commands: Receiver<Command>,
    punts: Option<Receiver<PuntedPacket>>,
    new_flows: Option<Receiver<NewFlow>>,
    handle: DataplaneHandle,
    tunnel_path_used: &'static str,
    fast_path: Option<FastPathSync>,
}

/// Everything the packet loop touches besides the engine.
impl std::fmt::Debug for Dataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataplane")
            .field("tunnel_path", &self.tunnel_path_used)
            .field("io", &self.io)
            .field("engine_threads", &(1 + self.worker_io.len()))
            .finish_non_exhaustive()
    }
}

impl Dataplane {
    /// Set the data path up in the calling thread's network namespace: create and
    /// raise the TUN, probe for kernel ipip, open the raw sockets, turn on
    /// forwarding. Serve subnets afterwards with [`DataplaneHandle::serve`].
    pub fn new(cfg: DataplaneConfig) -> Result<Self, DataplaneError> {
        validate(&cfg)?;
        let nl = match &cfg.runtime {
            Some(rt) => Netlink::open_on(rt)?,
            None => Netlink::open()?,
        };
        let (tun, tun_index) = open_tun(&nl, &cfg)?;
        let (mut raw, tunnel_path_used) = open_tunnel_path(&nl, &cfg)?;
        let threads = u32::try_from(cfg.engine_threads).unwrap_or(1);
        if threads > 1 {
            // Each engine thread takes its share of the tunnels to us (IPv4
            // outer); IPv6 outer stays with the first.
            for r in raw.iter_mut().filter(|r| r.family() == Family::V4) {
                r.spread(0, threads)?;
            }
        }
        tracing::info!(
            tunnel_path = tunnel_path_used,
            tun = %cfg.tun_name,
            local_v4 = ?cfg.engine.local_v4,
            local_v6 = ?cfg.engine.local_v6,
            "dataplane ready"
        );
        let tx = RawTx::open(cfg.engine.local_v4.is_some(), cfg.engine.local_v6.is_some())?;
        let wake = Arc::new(
            EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
                .map_err(|e| SyscallError::errno("eventfd", e))?,
        );
        let stats = Arc::new(ShellCounters::default());
        let (cmd_tx, cmd_rx) = mpsc::channel();
        let (punt_tx, punt_rx) = mpsc::sync_channel(cfg.punt_queue.max(1));
        let (new_flow_tx, new_flows) = if cfg.new_flow_queue > 0 {
            let (tx, rx) = mpsc::sync_channel(cfg.new_flow_queue);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let mut worker_io = Vec::with_capacity(cfg.engine_threads.saturating_sub(1));
        for k in 1..cfg.engine_threads {
            let queue = tun.add_queue()?;
            let mut share = Vec::new();
            for r in raw.iter().filter(|r| r.family() == Family::V4) {
                let mut mine = RawRx::open(Family::V4, r.proto(), cfg.batch)?;
                mine.spread(u32::try_from(k).unwrap_or(0), threads)?;
                share.push(mine);
            }
            let tx = RawTx::open(cfg.engine.local_v4.is_some(), cfg.engine.local_v6.is_some())?;
            let halt = Arc::new(
                EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
                    .map_err(|e| SyscallError::errno("eventfd", e))?,
            );
            tracing::debug!(thread = k, "engine thread's TUN queue open");
            worker_io.push(Io::new(
                queue,
                share,
                tx,
                &cfg,
                (punt_tx.clone(), new_flow_tx.clone()),
                halt,
                Arc::clone(&stats),
            ));
        }
        let handle = DataplaneHandle {
            commands: cmd_tx,
            wake: Arc::clone(&wake),
            stats: Arc::clone(&stats),
            netlink: Arc::new(Mutex::new(nl)),
            tun_index,
            fast_path: Arc::new(std::sync::OnceLock::new()),
        };
        let io = Io::new(tun, raw, tx, &cfg, (punt_tx, new_flow_tx), wake, stats);
        Ok(Self {
            node: Box::new(EngineNode {
                engine: Engine::new(cfg.engine),
                sweep_buckets: cfg.sweep_buckets,
            }),
            io,
            worker_io,
            commands: cmd_rx,
            punts: Some(punt_rx),
            new_flows,
            handle,
            tunnel_path_used,
            fast_path: None,
        })
    }

    /// A control handle.
    pub fn handle(&self) -> DataplaneHandle {
        self.handle.clone()
    }

    /// The receiver of punted packets (once; later calls return `None`).
    pub fn take_punts(&mut self) -> Option<Receiver<PuntedPacket>> {
        self.punts.take()
    }

    /// The receiver of [`NewFlow`] notices (once, and only when `new_flow_queue`
    /// was above zero).
    pub fn take_new_flows(&mut self) -> Option<Receiver<NewFlow>> {
        self.new_flows.take()
    }

    /// `"kernel-ipip"` or `"userspace-raw"`: how IPv4-in-IPv4 to us is terminated.
    pub fn tunnel_path(&self) -> &'static str {
        self.tunnel_path_used
    }

    /// The TUN's interface index.
    pub fn tun_index(&self) -> u32 {
        self.handle.tun_index
    }

    /// Report the engine time of every packet that pins a new flow to `observer`
    /// (the management API's new-flow decision latency histogram). Costs one
    /// clock read per packet while installed; none otherwise.
    pub fn observe_decisions(&mut self, observer: Arc<dyn DecisionObserver>) {
        self.io.decisions = Some(observer);
    }

    /// Direct access to the engine before the loop starts (configuration, tests).
    pub fn engine_mut(&mut self) -> &mut Engine {
        self.node.engine_mut()
    }

    /// Drive `node` instead of the bare engine this dataplane was built with
    /// (the node owns its own engine, built from the same configuration).
    pub fn with_node(mut self, node: impl DataplaneNode) -> Self {
        self.node = Box::new(node);
        self
    }

    /// Forward pinned flows with `fp` (a loaded, attached router program), or
    /// record that the userspace path runs (`None`) and why. Once only; the
    /// maps are filled from the node's flow table when the loop starts.
    pub fn set_fast_path(&mut self, fp: Option<RouterFastPath>, status: FastPathStatus) {
        let sync = fp.map(FastPathSync::new);
        let info = FastPathInfo {
            status,
            reader: sync.as_ref().map(|s| s.fast_path().reader()),
            sync: sync.as_ref().map(FastPathSync::counters),
            flow_maps: sync.as_ref().map(|s| s.fast_path().map_ids()),
        };
        if self.handle.fast_path.set(info).is_err() {
            tracing::warn!("the fast path was set twice; keeping the first");
            return;
        }
        self.fast_path = sync;
    }

    /// Run on a new thread named `pronto-dataplane`.
    pub fn spawn(self) -> std::io::Result<std::thread::JoinHandle<Result<(), DataplaneError>>> {
        std::thread::Builder::new()
            .name("pronto-dataplane".into())
            .spawn(move || self.run())
    }

    /// Run the packet loop until [`DataplaneHandle::stop`]; the other engine
    /// threads run beside it and stop with it.
    pub fn run(self) -> Result<(), DataplaneError> {
        let clock = Clock::new();
        let Self {
            node,
            mut io,
            worker_io,
            commands,
            mut fast_path,
            ..
        } = self;
        let mut node = node;
        if let Some(fp) = &mut fast_path {
            fp.start(node.engine_mut());
            fp.sync(node.engine_mut(), clock.now(), &clock);
        }
        let shared = Arc::new(Mutex::new(Shared { node, fast_path }));
        let workers = Workers::spawn(worker_io, &shared, io.decisions.clone(), clock, &io.wake)?;
        let r = main_loop(&mut io, &shared, &commands, clock);
        workers.stop();
        r
    }
}

/// The first engine thread: its TUN queue and the raw sockets, then the
/// commands, timers, released packets and fast-path upkeep of each turn.
fn main_loop(
    io: &mut Io,
    shared: &Mutex<Shared>,
    commands: &Receiver<Command>,
    clock: Clock,
) -> Result<(), DataplaneError> {
    let tick = Duration::from_millis(100);
    let mut next_timer = clock.now() + tick;
    // Every call into the node takes the time read once its lock is held: the
    // node's clock then never runs backwards, whichever thread had it last.
    loop {
        while let Ok(cmd) = commands.try_recv() {
            let (mut g, now) = workers::lock_at(shared, clock)?;
            match cmd {
                Command::Apply(f) => {
                    f(&mut *g.node, now);
                    bump(&io.stats.commands, 1);
                }
                Command::FastPath(mut fp) => {
                    // The table's pins so far reach the maps at the end
                    // of this turn (a full sync: the journal starts
                    // "overflowed" over a non-empty table).
                    fp.start(g.node.engine_mut());
                    g.fast_path = Some(*fp);
                }
                Command::Stop => {
                    tracing::info!("dataplane stopping");
                    return Ok(());
                }
            }
        }
        let mut got = io.read_tun();
        if got > 0 {
            workers::batch(io, got, shared, clock)?;
        }
        for i in 0..io.raw.len() {
            let n = io.read_raw(i);
            if n > 0 {
                workers::batch(io, n, shared, clock)?;
                got += n;
            }
        }
        {
            let (mut g, now) = workers::lock_at(shared, clock)?;
            let Shared { node, fast_path } = &mut *g;
            let timer = now >= next_timer;
            if timer {
                node.handle_timeout(now);
                next_timer = now + tick;
            }
            if let Some(t) = node.poll_timeout() {
                next_timer = next_timer.min(t);
            }
            io.send_released(&mut **node, now);
            node.flush();
            // Every pin and unpin of this turn (packets, commands, timers)
            // reaches the kernel's maps before the next batch is read.
            if let Some(fp) = fast_path {
                if timer {
                    fp.resolve_idle(node.engine_mut(), now, &clock);
                } else {
                    fp.sync(node.engine_mut(), now, &clock);
                }
            }
        }
        if got == 0 {
            let wait = next_timer.saturating_since(clock.now()).min(tick);
            io.wait(wait.max(Duration::from_millis(1)));
        }
    }
}

/// Refuse a configuration the shell cannot run.
fn validate(cfg: &DataplaneConfig) -> Result<(), DataplaneError> {
    if !(1..=MAX_BATCH).contains(&cfg.batch) {
        return Err(DataplaneError::Config {
            field: "batch",
            reason: format!("{} is outside 1..={MAX_BATCH}", cfg.batch),
        });
    }
    if !(576..=65535).contains(&cfg.max_packet) || usize::from(cfg.tun_mtu) > cfg.max_packet {
        return Err(DataplaneError::Config {
            field: "max_packet",
            reason: format!(
                "{} must be in 576..=65535 and at least the TUN MTU {}",
                cfg.max_packet, cfg.tun_mtu
            ),
        });
    }
    if !(1..=MAX_ENGINE_THREADS).contains(&cfg.engine_threads) {
        return Err(DataplaneError::Config {
            field: "engine_threads",
            reason: format!("{} is outside 1..={MAX_ENGINE_THREADS}", cfg.engine_threads),
        });
    }
    if cfg.engine.local_v4.is_none() && cfg.engine.local_v6.is_none() {
        return Err(DataplaneError::Config {
            field: "engine.local_v4/local_v6",
            reason: "a tunnel endpoint address is required".into(),
        });
    }
    Ok(())
}

/// The TUN the served subnets are routed into, up, with its MTU; IP
/// forwarding on when asked.
fn open_tun(nl: &Netlink, cfg: &DataplaneConfig) -> Result<(TunDevice, u32), DataplaneError> {
    let tun = TunDevice::open(&cfg.tun_name, cfg.tun_offload, cfg.engine_threads > 1)?;
    let tun_index = nl.link_index(&cfg.tun_name)?;
    if tun.offload() {
        // A super-packet of more segments than a read has slots for would be
        // lost: the kernel segments those before the TUN instead.
        nl.set_gso_max_segs(tun_index, MAX_GSO_SEGS as u32)?;
    }
    if cfg.engine.local_v6.is_none() {
        // Else the kernel's own IPv6 chatter (RS, MLD) arrives as NotServed drops.
        if let Err(e) = sysctl::disable_ipv6(&cfg.tun_name) {
            tracing::debug!(error = %e, "cannot disable IPv6 on the TUN");
        }
    }
    nl.set_mtu(tun_index, u32::from(cfg.tun_mtu))?;
    nl.set_up(tun_index)?;
    if cfg.enable_forwarding {
        sysctl::enable_forwarding(cfg.engine.local_v6.is_some())?;
    }
    Ok((tun, tun_index))
}

/// How tunnels to us are terminated: the kernel's ipip device where it exists
/// and is allowed, else raw sockets; returns the sockets to read and the path.
fn open_tunnel_path(
    nl: &Netlink,
    cfg: &DataplaneConfig,
) -> Result<(Vec<RawRx>, &'static str), DataplaneError> {
    let want_kernel = match cfg.tunnel_path {
        TunnelPath::Userspace => false,
        TunnelPath::Auto | TunnelPath::Kernel => {
            let has = nl.kernel_has_ipip();
            if !has && cfg.tunnel_path == TunnelPath::Kernel {
                return Err(DataplaneError::NoKernelIpip);
            }
            has
        }
    };
    let mut raw = Vec::new();
    let mut path = "userspace-raw";
    if let Some(local) = cfg.engine.local_v4 {
        if want_kernel {
            // The kernel terminates IPv4-in-IPv4 to us and routes the inner
            // packet (a VIP) into the TUN; the raw socket must stay closed or
            // every packet would arrive twice.
            let name = format!("{}ip", truncate_name(&cfg.tun_name, 13));
            let idx = nl.create_ipip(&name, local)?;
            nl.set_up(idx)?;
            let all = sysctl::set_rp_filter(&name, 0)?;
            if all == 1 {
                tracing::warn!(iface = %name, "net.ipv4.conf.all.rp_filter=1 drops decapsulated packets");
            }
            path = "kernel-ipip";
        } else {
            raw.push(RawRx::open(Family::V4, ip_proto::IPV4, cfg.batch)?);
        }
        raw.push(RawRx::open(Family::V4, ip_proto::IPV6, cfg.batch)?);
    }
    if cfg.engine.local_v6.is_some() {
        raw.push(RawRx::open(Family::V6, ip_proto::IPV4, cfg.batch)?);
        raw.push(RawRx::open(Family::V6, ip_proto::IPV6, cfg.batch)?);
    }
    Ok((raw, path))
}

fn truncate_name(name: &str, max: usize) -> &str {
    let mut end = name.len().min(max);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}
