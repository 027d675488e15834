//! `pronto router run --config FILE`: one SLR as a daemon.
//!
//! Threads and who owns what:
//!
//! - the **dataplane** thread owns the router: the sans-IO `signaling::node::Node`
//!   (engine, control side, recovery, policies) inside [`shell::RouterShell`],
//!   which the Linux shell (router-core's `Dataplane`: TUN, userspace IP-in-IP)
//!   drives. Packets, session events and timers reach the node on that thread;
//!   a shortcut goes from the node to its session's queue without a hop.
//! - one **tokio** runtime (this thread) runs the signalling: the TLS listener
//!   for lower levels, the session to the upper level (reconnecting with
//!   backoff), one task per session, the signal handlers and the management
//!   server; they only move bytes and hand [`Input`]s to the control loop,
//!   which posts them to the node in batches without waiting for it.
//! - small helper threads where a call blocks: routes (rtnetlink), the stats
//!   file, the spare's address takeover, `[shaping]` (tc).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use router_core::Instant;
use router_core::linux::fastpath::FastPathMode;
use router_core::linux::{Dataplane, DataplaneHandle, Netlink};
use router_core::policy::Level;
use serde::Serialize;
use signaling::node::{DownstreamHop, Node, NodeConfig};
use signaling::{
    Connector, DownReason, Listener, LocalNode, Outgoing, PeerEvent, Role, Session, SessionId,
    TransportConfig,
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

#[cfg(test)]
pub(crate) mod check_tests;
pub(crate) mod egress;
pub(crate) mod module_state;
mod modules;
pub(crate) mod shell;
mod snapshot;

use egress::Egress;
pub(crate) use modules::policy_for;
use modules::{LoadedModules, load_environments};

use shell::{RouteKeeper, RouterShell, ShellInput, Takeover, TlsCounters};
pub(crate) use snapshot::FastPathFile;
use snapshot::StatsSink;

use crate::config::{self, RouterConfig, Upstream};

/// Capacity of the control loop's input channel.
const CONTROL_QUEUE: usize = 4096;
/// Inputs handled per dataplane call.
const BATCH: usize = 256;
/// Messages queued toward one session before further ones are dropped (counted).
pub(crate) const SESSION_QUEUE: usize = 1024;
/// Longest reconnect backoff.
const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// `pronto router ...`.
#[derive(Debug, Args)]
pub(crate) struct RouterArgs {
    #[command(subcommand)]
    command: RouterCommand,
}

#[derive(Debug, Subcommand)]
enum RouterCommand {
    /// Run the router daemon (root: TUN, raw sockets, routes) until SIGINT/SIGTERM.
    Run {
        /// The configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Everything `run` checks before it opens a device or binds a socket
    /// (configuration, certificates and keys, modules, management TLS, the
    /// node), then exit.
    Check {
        /// The configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
}

/// Run `pronto router ...`.
pub(crate) fn run(args: &RouterArgs) -> Result<()> {
    match &args.command {
        RouterCommand::Run { config } => run_router(config),
        RouterCommand::Check { config } => {
            let p = prepare(config)?;
            println!(
                "{}: {} router {} is valid",
                config.display(),
                level_name(p.cfg.level),
                p.cfg.name
            );
            Ok(())
        }
    }
}

pub(crate) fn level_name(l: Level) -> &'static str {
    match l {
        Level::Network => "network",
        Level::System => "system",
        Level::Site => "site",
    }
}

// ----- inputs of the control loop -------------------------------------------------

/// Which kind of peer a session reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    Upstream,
    Downstream,
    /// A WHOHAS neighbour we dialled (crate::recovery).
    Neighbour,
    /// A spare's session to its primary (crate::recovery).
    Primary,
}

/// What a session task is told to do.
#[derive(Debug)]
pub(crate) enum SessionCmd {
    /// Send a message.
    Send(Outgoing),
    /// End the session.
    Close,
}

/// Everything the control loop reacts to.
#[derive(Debug)]
pub(crate) enum Input {
    /// For the node, on the dataplane thread.
    Shell(ShellInput),
    /// SIGINT / SIGTERM.
    Shutdown(&'static str),
}

/// Moves one session's events to the control loop and its commands to the peer,
/// until the session ends. Always reports a final `PeerDown`.
pub(crate) async fn drive_session<T: Send + 'static>(
    mut session: Session,
    mut cmds: mpsc::Receiver<SessionCmd>,
    ctl: mpsc::Sender<T>,
    wrap: impl Fn(PeerEvent) -> T,
) {
    loop {
        tokio::select! {
            ev = session.next_event() => {
                let ev = ev.unwrap_or(PeerEvent::PeerDown { reason: DownReason::TransportClosed });
                let down = matches!(ev, PeerEvent::PeerDown { .. });
                if ctl.send(wrap(ev)).await.is_err() || down {
                    return;
                }
            }
            cmd = cmds.recv() => match cmd {
                Some(SessionCmd::Send(out)) => {
                    // A refusal (backpressure, session down) is counted by the peer.
                    if let Err(e) = session.send(out).await {
                        debug!(remote = %session.remote_addr(), error = %e, "message not sent");
                    }
                }
                Some(SessionCmd::Close) | None => {
                    let _ = ctl.send(wrap(PeerEvent::PeerDown { reason: DownReason::Closed })).await;
                    return;
                }
            }
        }
    }
}

/// Applies `[shaping]` now (an error stops the start) and again on every SIGHUP,
/// re-reading the config file: classes change in place, filters are swapped
/// make-before-break, and a section removed from the file removes the tree. A
/// reload that fails (bad file, netlink error) is logged and counted, and the tree
/// in place keeps shaping.
fn spawn_shaper(
    path: &Path,
    initial: Option<config::Shaping>,
    rt: &tokio::runtime::Handle,
) -> Result<std::sync::mpsc::Sender<()>> {
    use router_core::linux::tc::{Tc, apply_share_tree, remove_share_tree};
    let mut tc = None;
    let mut current: Option<String> = None;
    if let Some(sh) = &initial {
        let t = Tc::open_on(rt).context("opening rtnetlink for [shaping]")?;
        let report = apply_share_tree(&t, &sh.link, &sh.tree)
            .with_context(|| format!("applying [shaping] to {}", sh.link))?;
        info!(link = %sh.link, ?report, "bandwidth shares applied");
        current = Some(sh.link.clone());
        tc = Some(t);
    }
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let path = path.to_owned();
    let rt = rt.clone();
    std::thread::Builder::new()
        .name("pronto-shaper".into())
        .spawn(move || {
            for () in rx {
                let shaping = match config::load_router(&path) {
                    Ok(c) => c.shaping,
                    Err(e) => {
                        warn!(error = %e, "SIGHUP: config not reloaded; shares unchanged");
                        continue;
                    }
                };
                let t = match tc.take().map_or_else(|| Tc::open_on(&rt), Ok) {
                    Ok(t) => t,
                    Err(e) => {
                        warn!(error = %e, "SIGHUP: cannot open rtnetlink; shares unchanged");
                        continue;
                    }
                };
                match (&shaping, &current) {
                    (Some(sh), _) => match apply_share_tree(&t, &sh.link, &sh.tree) {
                        Ok(report) => {
                            info!(link = %sh.link, ?report, "SIGHUP: bandwidth shares updated");
                            if let Some(old) = current.as_ref().filter(|l| **l != sh.link)
                                && let Err(e) = remove_share_tree(&t, old)
                            {
                                warn!(link = %old, error = %e, "cannot remove the old tree");
                            }
                            current = Some(sh.link.clone());
                        }
                        Err(e) => warn!(link = %sh.link, error = %e,
                            "SIGHUP: shares not updated; the tree in place stays"),
                    },
                    (None, Some(old)) => {
                        match remove_share_tree(&t, old) {
                            Ok(_) => info!(link = %old, "SIGHUP: [shaping] gone, tree removed"),
                            Err(e) => warn!(link = %old, error = %e, "cannot remove the tree"),
                        }
                        current = None;
                    }
                    (None, None) => {}
                }
                tc = Some(t);
            }
        })
        .context("spawning the shaper thread")?;
    Ok(tx)
}

/// Resolves on SIGINT or SIGTERM with the signal's name.
pub(crate) async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// Write `value` as TOML to `path` atomically (temporary file, then rename).
pub(crate) fn write_snapshot<T: Serialize>(path: &Path, value: &T) {
    let text = match toml::to_string(value) {
        Ok(t) => t,
        Err(e) => {
            warn!(error = %e, "cannot serialise the stats snapshot");
            return;
        }
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let r = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = r {
        debug!(path = %path.display(), error = %e, "cannot write the stats snapshot");
    }
}

/// Resident set size of this process in KiB (`VmRSS` of /proc/self/status).
pub(crate) fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

// ----- the daemon ----------------------------------------------------------------

/// The node of this router, from its configuration and modules.
fn build_node(
    cfg: &RouterConfig,
    modules: Option<&LoadedModules>,
    hooks: &Arc<crate::mgmt::Hooks>,
) -> Result<Node> {
    let mut ncfg = NodeConfig::new(
        cfg.dataplane.engine.clone(),
        cfg.slr,
        policy_for(cfg.policy),
    );
    ncfg.downstream = cfg
        .downstream
        .iter()
        .map(|(n, d)| {
            let hop = DownstreamHop {
                tunnel: d.tunnel,
                route_cost: d.route_cost,
            };
            (n.clone(), hop)
        })
        .collect();
    ncfg.default_route_cost = cfg.default_route_cost;
    ncfg.static_subnets = cfg.static_subnets.clone();
    crate::recovery::configure_node(cfg, &mut ncfg)?;
    let mut node = Node::new(ncfg, Instant::ZERO).context("building the router node")?;
    let admitted: Vec<String> = cfg
        .tunnel_sources
        .prefixes()
        .iter()
        .map(ToString::to_string)
        .collect();
    info!(
        admitted = %admitted.join(","),
        "tunnels to this router admitted only from these sources; others dropped (tunnel_source)"
    );
    node.engine_mut()
        .set_tunnel_sources(Some(cfg.tunnel_sources.clone()));
    for (binding, handle) in modules.into_iter().flat_map(LoadedModules::bound) {
        apply_binding(&mut node, hooks, binding.subnet, binding.role, Some(handle));
    }
    Ok(node)
}

/// Bind `subnet` in the node to a module handle (timed into the hooks), or,
/// with `None`, unbind it in `role`. A module fault returns an error: the
/// engine then falls back to the built-in policy (the table to the built-in F
/// and G) and counts it.
pub(crate) fn apply_binding(
    node: &mut Node,
    hooks: &Arc<crate::mgmt::Hooks>,
    subnet: router_core::VirtualSubnet,
    role: exec_env::manager::Role,
    handle: Option<&exec_env::manager::BoundHandle>,
) {
    use exec_env::manager::{BoundHandle, Role};
    match (role, handle) {
        (Role::Policy, Some(BoundHandle::Policy(p))) => {
            node.set_subnet_policy(subnet, Some(hooks.timed_policy(p.clone())));
        }
        (Role::Cost, Some(BoundHandle::Cost(c))) => {
            node.set_subnet_cost(subnet, Some(hooks.timed_cost(c.clone())));
        }
        (Role::Policy, None) => {
            node.set_subnet_policy(subnet, None);
        }
        (Role::Cost, None) => node.set_subnet_cost(subnet, None),
        // The egress stage takes its rank function at start and from the
        // management API, not from the node.
        (Role::Scheduler, _) => {}
        (role, handle) => {
            warn!(%subnet, %role, handle = ?handle.map(|_| "other"), "a binding the node cannot apply");
        }
    }
}

/// What `router run` reads, verifies and builds before it opens a device or
/// binds a socket; `router check` is this and nothing more, so it refuses what
/// `run` would refuse at start short of the TUN, netlink and sockets.
struct Prepared {
    cfg: RouterConfig,
    /// Our identity (the key checked against the certificate) and the trust
    /// anchors, as the signalling TLS set-up accepts them.
    identity: signaling::TlsIdentity,
    anchors: Vec<rustls_pki_types::CertificateDer<'static>>,
    local: LocalNode,
    /// `[modules]`: verified against their anchors and compiled.
    modules: Option<LoadedModules>,
    /// Latency histograms of the management API (module calls are timed).
    hooks: Arc<crate::mgmt::Hooks>,
    node: Node,
    /// `[management]`'s TLS, its files read and checked.
    management_tls: Option<Arc<rustls::ServerConfig>>,
}

fn prepare(path: &Path) -> Result<Prepared> {
    let cfg = config::load_router(path)?;
    let (identity, anchors) = cfg.tls.load()?;
    let local = LocalNode {
        name: cfg.name.clone(),
        level: cfg.level,
        role: role_of(cfg.level),
    };
    // What the listener and the connectors will refuse, without their sockets.
    TransportConfig {
        identity: signaling::TlsIdentity {
            cert_chain: identity.cert_chain.clone(),
            key: identity.key.clone_key(),
        },
        trust_anchors: anchors.clone(),
        local: local.clone(),
        peer: cfg.peer,
    }
    .validate()
    .context("[tls]: TLS configuration")?;
    let modules = load_environments(cfg.modules.as_ref(), &cfg.tenants)?;
    let hooks = Arc::new(crate::mgmt::Hooks::default());
    let node = build_node(&cfg, modules.as_ref(), &hooks)?;
    let management_tls = cfg
        .management
        .as_ref()
        .map(|m| crate::mgmt::server_tls(m).map(Arc::new))
        .transpose()?;
    Ok(Prepared {
        cfg,
        identity,
        anchors,
        local,
        modules,
        hooks,
        node,
        management_tls,
    })
}

fn run_router(path: &Path) -> Result<()> {
    let Prepared {
        cfg,
        identity,
        anchors,
        local,
        modules,
        hooks,
        node,
        management_tls,
    } = prepare(path)?;
    let adverts_on = node.recovery().auth_stats().is_some();
    // The daemon's one runtime: signalling sessions, the management server and
    // every netlink connection (the blocking shells wait on it from their own
    // threads, so it has a worker thread of its own).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(4)
        .thread_name("pronto-rt")
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let mut dp_cfg = cfg.dataplane.clone();
    dp_cfg.runtime = Some(rt.handle().clone());
    let mut dp = Dataplane::new(dp_cfg).context("starting the dataplane")?;
    // `bpf`: the program loads before anything else starts, or the start
    // fails naming why. `auto`: it loads once the control plane is up (the
    // verifier takes a good part of a second of CPU on a busy machine, longer
    // than a hot spare waits for a restarted primary to answer) and takes
    // over the pinned flows once attached; until then, or if it fails, the
    // engine forwards them.
    let pending_fast_path = if cfg.fast_path.mode == FastPathMode::Auto {
        Some(spawn_fast_path(&cfg, rt.handle(), dp.handle())?)
    } else {
        let (fast_path, fast_path_status) = start_fast_path(&cfg, rt.handle())?;
        dp.set_fast_path(fast_path, fast_path_status);
        None
    };
    if cfg.management.is_some() {
        // New-flow decision latency; one clock read per packet, so only when
        // someone can read it.
        let observer: Arc<dyn router_core::linux::dataplane::DecisionObserver> = hooks.clone();
        dp.observe_decisions(observer);
    }
    let handle = dp.handle();
    info!(
        name = %cfg.name,
        level = level_name(cfg.level),
        tunnel_path = dp.tunnel_path(),
        local_v4 = ?cfg.dataplane.engine.local_v4,
        local_v6 = ?cfg.dataplane.engine.local_v6,
        policy = ?cfg.policy,
        shortcuts = cfg.slr.shortcuts,
        "router starting"
    );
    let routes = RouteKeeper::spawn(
        Netlink::open_on(rt.handle()).context("opening rtnetlink")?,
        dp.tun_index(),
    )
    .context("spawning the route keeper")?;
    let reshape = spawn_shaper(path, cfg.shaping.clone(), rt.handle())?;
    rt.spawn(forward_sighup(reshape));
    let (ctl_tx, ctl_rx) = mpsc::channel::<Input>(CONTROL_QUEUE);
    let ids = Arc::new(AtomicU64::new(1));
    let tls = start_signalling(&rt, &cfg, identity, anchors, local, &ids, &ctl_tx)?;
    let go = crate::recovery::start_sessions(&rt, &cfg, adverts_on, &ids, &ctl_tx)?;
    let takeover = cfg.spare.clone().map(|spare| Takeover {
        spare,
        rt: rt.handle().clone(),
        go,
        done: Arc::new(AtomicU64::new(0)),
        at_unix_ms: 0,
    });
    let stats = cfg
        .stats
        .as_ref()
        .map(|st| {
            let envs = modules
                .as_ref()
                .map(|m| m.envs.iter().map(|e| Arc::clone(&e.env)).collect())
                .unwrap_or_default();
            StatsSink::spawn(st.file.clone(), st.interval, cfg.name.to_string(), envs)
        })
        .transpose()
        .context("spawning the stats writer")?;
    let io = handle.clone();
    let shell = RouterShell::new(
        node,
        routes,
        cfg.slr.max_downstream,
        cfg.upstream.as_ref().map(|u| u.name.to_string()),
        takeover,
        tls,
        stats,
        io,
    );
    let dp_thread = dp
        .with_node(shell)
        .spawn()
        .context("spawning the dataplane thread")?;
    let egress = start_egress(&cfg, modules.as_ref())?;
    let mgmt_server = start_management(
        &rt,
        &cfg,
        management_tls,
        &handle,
        &ctl_tx,
        (modules.as_ref(), egress.as_ref()),
        &hooks,
    )?;
    // The control loop runs on the runtime's worker, beside the session tasks
    // that feed it: a tunnel object goes from its session to the node without
    // waking another thread first.
    let control = rt.spawn(control_loop(ctl_rx, handle.clone()));
    let result = rt
        .block_on(control)
        .unwrap_or_else(|e| Err(anyhow::anyhow!("the control loop failed: {e}")));
    drop(mgmt_server);
    // Routes out and sessions closed before the dataplane goes.
    if let Err(e) = handle.call_node::<RouterShell, _>(|s, _| s.teardown()) {
        debug!(error = %e, "dataplane already stopped");
    }
    if let Err(e) = handle.stop() {
        debug!(error = %e, "dataplane already stopped");
    }
    drop(ctl_tx);
    rt.shutdown_timeout(Duration::from_secs(2));
    // The stage's stop talks netlink and blocks: here, off the runtime, once
    // the management server (the other holder) is gone.
    drop(egress);
    match dp_thread.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "dataplane ended with an error"),
        Err(_) => warn!("dataplane thread panicked"),
    }
    if let Some(t) = pending_fast_path
        && t.join().is_err()
    {
        warn!("the fast path loader panicked");
    }
    info!("router stopped");
    result
}

/// The kernel fast path as `fast_path` says, with one log line saying which
/// path forwards pinned flows and why. `bpf` that cannot start is an error.
fn start_fast_path(
    cfg: &RouterConfig,
    rt: &tokio::runtime::Handle,
) -> Result<(
    Option<router_core::linux::fastpath::RouterFastPath>,
    router_core::linux::fastpath::FastPathStatus,
)> {
    use router_core::linux::fastpath::{self, FastPathError, RouterFastPath, RouterFastPathConfig};
    let e = &cfg.dataplane.engine;
    let mode = cfg.fast_path.mode;
    let (fp, status) = fastpath::start(mode, || {
        let links = fast_path_links(&cfg.fast_path, rt)?;
        RouterFastPath::start(&RouterFastPathConfig {
            links,
            local_v4: e.local_v4,
            local_v6: e.local_v6,
            tunnel_ttl: e.tunnel_ttl,
            tunnel_mtu: u16::try_from(e.tunnel_mtu).unwrap_or(u16::MAX),
            tunnel_sources: Some(cfg.tunnel_sources.clone()),
            capacity_v4: e.flows.capacity_v4,
            capacity_v6: e.flows.capacity_v6,
        })
    })
    .map_err(|e: FastPathError| anyhow::anyhow!(e))
    .context("fast_path = \"bpf\": the eBPF fast path cannot start (set fast_path = \"auto\" to fall back to userspace)")?;
    log_fast_path(mode, &status);
    Ok((fp, status))
}

/// How long after the start `fast_path = "auto"` loads the program: the
/// sessions (a spare's among them) are re-established first.
const FAST_PATH_DELAY: Duration = Duration::from_secs(1);

/// `fast_path = "auto"`: load and attach the program on a thread of its own,
/// [`FAST_PATH_DELAY`] after the start, and install it into the running
/// dataplane.
fn spawn_fast_path(
    cfg: &RouterConfig,
    rt: &tokio::runtime::Handle,
    dp: DataplaneHandle,
) -> Result<std::thread::JoinHandle<()>> {
    let cfg = cfg.clone();
    let rt = rt.clone();
    std::thread::Builder::new()
        .name("pronto-fastpath".into())
        .spawn(move || {
            std::thread::sleep(FAST_PATH_DELAY);
            // Auto never fails: a refusal is the userspace path with its reason.
            let Ok((fp, status)) = start_fast_path(&cfg, &rt) else {
                return;
            };
            if let Err(e) = dp.install_fast_path(fp, status) {
                warn!(error = %e, "the fast path could not be installed; pinned flows take the userspace path");
            }
        })
        .context("spawning the fast path loader")
}

/// The links a fast path attaches to: the configured ones, else every
/// Ethernet link of the namespace.
pub(crate) fn fast_path_links(
    choice: &config::FastPathChoice,
    rt: &tokio::runtime::Handle,
) -> Result<Vec<String>, router_core::linux::fastpath::FastPathError> {
    use router_core::linux::fastpath::FastPathError;
    if !choice.links.is_empty() {
        return Ok(choice.links.clone());
    }
    Netlink::open_on(rt)
        .and_then(|nl| nl.ethernet_links())
        .map_err(|e| FastPathError::NoLinks {
            reason: format!("listing the links: {e}"),
        })
}

/// One line: which path forwards pinned flows, and why.
pub(crate) fn log_fast_path(
    mode: FastPathMode,
    status: &router_core::linux::fastpath::FastPathStatus,
) {
    use router_core::linux::fastpath::FastPathStatus;
    match status {
        FastPathStatus::Userspace { .. } if mode == FastPathMode::Auto => {
            warn!(fast_path = %status, "pinned flows take the userspace path");
        }
        _ => info!(fast_path = %status, mode = mode.as_str(), "forwarding path for pinned flows"),
    }
}

/// SIGHUP re-applies `[shaping]` (the shaper thread re-reads the file).
async fn forward_sighup(reshape: std::sync::mpsc::Sender<()>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        warn!("cannot install the SIGHUP handler; [shaping] is applied at start only");
        return;
    };
    while hup.recv().await.is_some() {
        if reshape.send(()).is_err() {
            return;
        }
    }
}

/// The management API on the daemon's runtime, when `[management]` is set
/// (`tls` is its prepared TLS configuration).
fn start_management(
    rt: &tokio::runtime::Runtime,
    cfg: &RouterConfig,
    tls: Option<Arc<rustls::ServerConfig>>,
    handle: &DataplaneHandle,
    ctl: &mpsc::Sender<Input>,
    (modules, egress): (Option<&LoadedModules>, Option<&Arc<Egress>>),
    hooks: &Arc<crate::mgmt::Hooks>,
) -> Result<Option<crate::mgmt::MgmtServer>> {
    let (Some(m), Some(tls)) = (&cfg.management, tls) else {
        return Ok(None);
    };
    let tx = ctl.clone();
    let state = crate::mgmt::MgmtState::new(crate::mgmt::MgmtParts {
        name: cfg.name.to_string(),
        level: level_name(cfg.level),
        dataplane: handle.clone(),
        control: Box::new(move |r| tx.try_send(Input::Shell(ShellInput::Mgmt(r))).is_ok()),
        envs: modules
            .map(|m| {
                m.envs
                    .iter()
                    .map(|e| (Arc::clone(&e.env), Arc::clone(&e.store)))
                    .collect()
            })
            .unwrap_or_default(),
        egress: egress.cloned(),
        shaping: cfg.shaping.clone(),
        static_subnets: cfg.static_subnets.iter().map(|(s, _)| *s).collect(),
        hooks: Arc::clone(hooks),
    });
    Ok(Some(crate::mgmt::spawn(rt, m, tls, Arc::new(state))?))
}

/// The `[scheduler]` egress stage, ranked by the bound scheduler module if
/// there is one; `None` without the section.
fn start_egress(
    cfg: &RouterConfig,
    modules: Option<&LoadedModules>,
) -> Result<Option<Arc<Egress>>> {
    let Some(s) = &cfg.scheduler else {
        if modules.and_then(LoadedModules::rank_handle).is_some() {
            warn!(
                "a scheduler module is bound but there is no [scheduler] section: it ranks nothing"
            );
        }
        return Ok(None);
    };
    let module = modules.and_then(LoadedModules::rank_handle);
    Egress::start(s, module).map(|e| Some(Arc::new(e)))
}

/// The role a router of `level` registers with.
pub(crate) fn role_of(level: Level) -> Role {
    match level {
        Level::Network => Role::Network,
        Level::System => Role::System,
        Level::Site => Role::Site,
    }
}

/// Moves inputs to the node in batches, without waiting for the dataplane: a
/// tunnel object reaches the engine between two packet batches.
async fn control_loop(mut rx: mpsc::Receiver<Input>, handle: DataplaneHandle) -> Result<()> {
    loop {
        let Some(first) = rx.recv().await else {
            return Ok(());
        };
        let mut batch = Vec::new();
        let mut next = Some(first);
        let mut stop = None;
        while let Some(input) = next.take() {
            match input {
                Input::Shell(i) => batch.push(i),
                Input::Shutdown(which) => {
                    stop = Some(which);
                    break;
                }
            }
            if batch.len() < BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            handle
                .post_node::<RouterShell>(move |s, now| s.apply(now, batch))
                .context("the dataplane stopped")?;
        }
        if let Some(which) = stop {
            info!(signal = which, "shutting down");
            return Ok(());
        }
    }
}

fn start_signalling(
    rt: &tokio::runtime::Runtime,
    cfg: &RouterConfig,
    identity: signaling::TlsIdentity,
    anchors: Vec<rustls_pki_types::CertificateDer<'static>>,
    local: LocalNode,
    ids: &Arc<AtomicU64>,
    ctl: &mpsc::Sender<Input>,
) -> Result<TlsCounters> {
    let mut counters = TlsCounters::default();
    let transport = |identity: signaling::TlsIdentity| TransportConfig {
        identity,
        trust_anchors: anchors.clone(),
        local: local.clone(),
        peer: cfg.peer,
    };
    let second = signaling::TlsIdentity {
        cert_chain: identity.cert_chain.clone(),
        key: identity.key.clone_key(),
    };
    if let Some(addr) = cfg.listen {
        let listener = rt
            .block_on(Listener::bind(addr, transport(second)))
            .with_context(|| format!("listen = {addr}: cannot listen for lower levels"))?
            .with_handshake_limits(cfg.handshakes);
        info!(%addr, handshakes = ?cfg.handshakes, "listening for lower-level registrations");
        counters.listener = Some(listener.stats().clone());
        // Handshakes run on tasks of their own inside the listener (bounded in
        // total and per source); only authenticated sessions reach this loop.
        rt.spawn(accept_loop(listener, Arc::clone(ids), ctl.clone()));
    }
    // A spare registers upstream only when it takes over (crate::recovery).
    if let Some(up) = cfg.upstream.as_ref().filter(|_| cfg.spare.is_none()) {
        let connector =
            Connector::new(transport(identity)).context("[upstream]: TLS configuration")?;
        counters.connector = Some(connector.stats().clone());
        rt.spawn(upstream_loop(
            connector,
            up.clone(),
            Arc::clone(ids),
            ctl.clone(),
        ));
    }
    let tx = ctl.clone();
    rt.spawn(async move {
        let which = shutdown_signal().await;
        let _ = tx.send(Input::Shutdown(which)).await;
    });
    Ok(counters)
}

async fn accept_loop(listener: Listener, ids: Arc<AtomicU64>, ctl: mpsc::Sender<Input>) {
    // Refused, failed and timed-out handshakes are logged and counted by the
    // listener; what arrives here is authenticated.
    let mut incoming = listener.incoming();
    while let Some(session) = incoming.next_session().await {
        let id = SessionId(ids.fetch_add(1, Ordering::Relaxed));
        let remote = session.remote_addr();
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        let opened = ShellInput::Opened {
            id,
            remote,
            direction: Direction::Downstream,
            cmds: tx,
        };
        if ctl.send(Input::Shell(opened)).await.is_err() {
            return;
        }
        let ctl = ctl.clone();
        tokio::spawn(drive_session(session, rx, ctl, move |event| {
            Input::Shell(ShellInput::Event { id, event })
        }));
    }
}

async fn upstream_loop(
    connector: Connector,
    up: Upstream,
    ids: Arc<AtomicU64>,
    ctl: mpsc::Sender<Input>,
) {
    let mut backoff = up.reconnect;
    loop {
        match connector.connect(up.address, &up.name).await {
            Ok(session) => {
                backoff = up.reconnect;
                let id = SessionId(ids.fetch_add(1, Ordering::Relaxed));
                info!(upper = %up.name, address = %up.address, "registered with the upper level");
                let (tx, rx) = mpsc::channel(SESSION_QUEUE);
                let opened = ShellInput::Opened {
                    id,
                    remote: up.address,
                    direction: Direction::Upstream,
                    cmds: tx,
                };
                if ctl.send(Input::Shell(opened)).await.is_err() {
                    return;
                }
                drive_session(session, rx, ctl.clone(), move |event| {
                    Input::Shell(ShellInput::Event { id, event })
                })
                .await;
                warn!(upper = %up.name, "upper-level session ended; reconnecting");
            }
            Err(e) => {
                warn!(upper = %up.name, address = %up.address, error = %e, retry_ms = backoff.as_millis() as u64,
                    "cannot register with the upper level");
            }
        }
        if ctl.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
