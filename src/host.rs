//! `pronto host run --config FILE`: a host server's agent.
//!
//! It terminates the tunnels of its virtual subnets into the local stack
//! (router-core's `HostTunnelEndpoint`: the subnets become local routes, so the
//! host's own TCP answers the client directly with the VIP as source), registers
//! with its site router over mutual TLS, and advertises its subnets with a real
//! load (signaling's `HostAgent`):
//!
//! `load = background + background_file + cpu_weight * cpu + connections / capacity`
//!
//! where `connections` counts the ESTABLISHED TCP connections on the served VIPs
//! (netlink sock_diag with a kernel-side state filter, `/proc/net/tcp*` where the
//! kernel lacks it; see `tcp_sockets`) and `cpu` is the
//! busy fraction of `/proc/stat` since the last update. Optionally it runs a tiny
//! HTTP server answering every request with the host's name (`[http_demo]`;
//! [`http`] reads the requests).
//!
//! With `[recovery]` it also watches its connections for lack of progress and
//! sends authenticated server flow advertisements ([`adverts`], DESIGN.md §5).

mod adverts;
pub(crate) mod http;
mod proc_tcp;
mod tcp_sockets;

use std::io::BufRead;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use router_core::linux::fastpath::{self, FastPathInfo, HostFastPath, HostFastPathConfig};
use router_core::linux::{Clock, HostTunnelEndpoint, HostTunnelHandle};
use serde::Serialize;
use signaling::{Connector, HostAgent, PeerEvent, SubnetPrefix, TransportConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::config::{self, HostDaemonConfig, HttpDemo, LoadConfig};
use crate::router::{rss_kib, shutdown_signal, write_snapshot};

/// Largest `load.background_file` read (it holds one number).
const MAX_BACKGROUND_FILE: u64 = 4096;
/// Most lines of `/proc/net/tcp*` read per update.
const MAX_TCP_LINES: usize = 1 << 20;
/// How long the demo server waits for a request.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for the site router to answer a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest reconnect backoff.
const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// `pronto host ...`.
#[derive(Debug, Args)]
pub(crate) struct HostArgs {
    #[command(subcommand)]
    command: HostCommand,
}

#[derive(Debug, Subcommand)]
enum HostCommand {
    /// Run the host agent (root: TUN, raw sockets, local routes) until SIGINT/SIGTERM.
    Run {
        /// The configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Everything `run` checks before it opens a device or a socket
    /// (configuration, certificates and key, advertisement keys), then exit.
    Check {
        /// The configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
}

/// Run `pronto host ...`.
pub(crate) fn run(args: &HostArgs) -> Result<()> {
    match &args.command {
        HostCommand::Run { config } => run_host(config),
        HostCommand::Check { config } => {
            let p = prepare(config)?;
            println!("{}: host {} is valid", config.display(), p.cfg.name);
            Ok(())
        }
    }
}

/// What `host run` reads and checks before it opens a device or a socket;
/// `host check` is this and nothing more.
struct PreparedHost {
    cfg: HostDaemonConfig,
    /// TLS set up with our identity (key checked against the certificate).
    connector: Connector,
    agent: HostAgent,
    /// `[recovery]`'s keys, the signing key among them.
    advert_keys: Option<Vec<signaling::AdvertKey>>,
}

fn prepare(path: &Path) -> Result<PreparedHost> {
    let cfg = config::load_host(path)?;
    let (identity, anchors) = cfg.tls.load()?;
    let connector = Connector::new(TransportConfig {
        identity,
        trust_anchors: anchors,
        local: HostAgent::local_node(cfg.name.clone()),
        peer: cfg.peer,
    })
    .context("[tls]: TLS configuration")?;
    let agent = HostAgent::new(signaling::HostConfig {
        subnets: cfg.subnets.clone(),
        update_interval: cfg.load.update_interval,
        capacity: cfg.load.capacity,
    })
    .context("[load]")?;
    let advert_keys = cfg
        .recovery
        .as_ref()
        .map(|r| adverts::signing_keys(r, cfg.tls.key_permissions))
        .transpose()?;
    Ok(PreparedHost {
        cfg,
        connector,
        agent,
        advert_keys,
    })
}

fn run_host(path: &Path) -> Result<()> {
    let prepared = prepare(path)?;
    let cfg = &prepared.cfg;
    // The agent's one runtime; the endpoint's netlink connection runs on it too.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("pronto-host")
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let mut tunnel_cfg = cfg.tunnel.clone();
    tunnel_cfg.runtime = Some(rt.handle().clone());
    let ep = HostTunnelEndpoint::new(tunnel_cfg).context("starting the tunnel endpoint")?;
    let tunnel = ep.handle();
    let ep_thread = ep.spawn().context("spawning the tunnel endpoint")?;
    // Decapsulation in the kernel; the endpoint above gets what it passes on.
    // Detached when `_fast_path` drops at the end of this function.
    let (_fast_path, fast_path) = start_fast_path(cfg, rt.handle())?;
    info!(name = %cfg.name, subnets = ?cfg.subnets, site = %cfg.site.name, "host agent starting");
    let result = rt.block_on(agent_main(prepared, tunnel.clone(), fast_path));
    tunnel.stop();
    // The endpoint removes its routes over netlink, which the runtime drives:
    // join it before the runtime goes.
    match ep_thread.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "tunnel endpoint ended with an error"),
        Err(_) => warn!("tunnel endpoint thread panicked"),
    }
    rt.shutdown_timeout(Duration::from_secs(2));
    info!("host agent stopped");
    result
}

/// The host's fast path as `fast_path` says, with one log line.
fn start_fast_path(
    cfg: &HostDaemonConfig,
    rt: &tokio::runtime::Handle,
) -> Result<(Option<HostFastPath>, FastPathInfo)> {
    let mode = cfg.fast_path.mode;
    let (fp, status) = fastpath::start(mode, || {
        let links = crate::router::fast_path_links(&cfg.fast_path, rt)?;
        HostFastPath::start(&HostFastPathConfig {
            links,
            subnets: cfg.tunnel.subnets.clone(),
        })
    })
    .map_err(|e| anyhow::anyhow!(e))
    .context("fast_path = \"bpf\": the eBPF decapsulation cannot start (set fast_path = \"auto\" to fall back to userspace)")?;
    crate::router::log_fast_path(mode, &status);
    let info = FastPathInfo {
        status,
        reader: fp.as_ref().map(HostFastPath::reader),
        sync: None,
        flow_maps: None,
    };
    Ok((fp, info))
}

/// What the stats writer shows of the agent.
#[derive(Debug, Default, Clone, Serialize)]
struct AgentView {
    registered: bool,
    load: f64,
    connections: u32,
    cpu: f64,
    background: f64,
    registrations: u64,
    sessions_lost: u64,
    updates_sent: u64,
    connect_failures: u64,
}

#[derive(Debug, Serialize)]
struct TunnelSnapshot {
    rx: u64,
    injected: u64,
    bad_tunnel: u64,
    fragmented: u64,
    ecn_drop: u64,
    not_served: u64,
    nested: u64,
    truncated: u64,
    inject_failed: u64,
    rx_errors: u64,
    tun_coalesced: u64,
}

#[derive(Debug, Serialize)]
struct HostSnapshot {
    name: String,
    pid: u32,
    rss_kib: u64,
    http_requests: u64,
    http_refused: u64,
    agent: AgentView,
    tunnel: TunnelSnapshot,
    adverts: Option<adverts::AdvertCounters>,
    /// Which path decapsulates, and the kernel program's counters.
    fast_path: Option<crate::router::FastPathFile>,
}

async fn agent_main(
    prepared: PreparedHost,
    tunnel: HostTunnelHandle,
    fast_path: FastPathInfo,
) -> Result<()> {
    let PreparedHost {
        cfg,
        connector,
        mut agent,
        advert_keys,
    } = prepared;
    let http = Arc::new(HttpCounters::default());
    if let Some(demo) = &cfg.http_demo {
        let listener = TcpListener::bind(demo.listen)
            .await
            .with_context(|| format!("http_demo.listen = {}: cannot listen", demo.listen))?;
        info!(listen = %demo.listen, body = %demo.body, "demo HTTP server listening");
        tokio::spawn(http_demo(listener, demo.clone(), Arc::clone(&http)));
    }
    // Stopped and joined when agent_main returns (the handle drops).
    let advertiser = match (&cfg.recovery, advert_keys) {
        (Some(r), Some(keys)) => Some(adverts::start(r, keys, &cfg.subnets, cfg.site.address)?),
        _ => None,
    };
    let view = Arc::new(Mutex::new(AgentView::default()));
    if let Some(stats) = cfg.stats.clone() {
        let advert_view = advertiser
            .as_ref()
            .map(adverts::AdvertHandle::counters_view);
        spawn_snapshots(
            stats,
            Arc::clone(&view),
            Arc::clone(&http),
            tunnel.clone(),
            cfg.name.to_string(),
            advert_view,
            fast_path,
        );
    }

    let clock = Clock::new();
    let base = tokio::time::Instant::now();
    let mut meter = LoadMeter::new(cfg.load.clone(), cfg.subnets.clone());
    let mut shutdown = std::pin::pin!(shutdown_signal());
    let mut backoff = cfg.site.reconnect;
    let mut connect_failures = 0u64;
    loop {
        let attempt = tokio::select! {
            r = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(cfg.site.address, &cfg.site.name)) => r,
            which = &mut shutdown => {
                info!(signal = which, "shutting down");
                return Ok(());
            }
        };
        let mut session = match attempt {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                connect_failures += 1;
                warn!(site = %cfg.site.name, address = %cfg.site.address, error = %e, "cannot register with the site router");
                if let Ok(mut v) = view.lock() {
                    v.connect_failures = connect_failures;
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    which = &mut shutdown => {
                        info!(signal = which, "shutting down");
                        return Ok(());
                    }
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            Err(_) => {
                connect_failures += 1;
                warn!(site = %cfg.site.address, "site router did not answer; retrying");
                continue;
            }
        };
        backoff = cfg.site.reconnect;
        let mut site = SiteSession {
            agent: &mut agent,
            session: &mut session,
            meter: &mut meter,
            clock: &clock,
            base,
            view: &view,
            connect_failures,
        };
        if let SessionEnd::Shutdown = site.serve(shutdown.as_mut()).await {
            return Ok(());
        }
        if let Ok(mut v) = view.lock() {
            v.registered = false;
            v.sessions_lost = agent.stats().sessions_lost;
        }
        tokio::time::sleep(backoff).await;
    }
}

/// Rewrite the counters snapshot every `stats.interval`.
fn spawn_snapshots(
    stats: config::Stats,
    view: Arc<Mutex<AgentView>>,
    http: Arc<HttpCounters>,
    tunnel: HostTunnelHandle,
    name: String,
    advert_view: Option<Arc<Mutex<adverts::AdvertCounters>>>,
    fast_path: FastPathInfo,
) {
    tokio::spawn(async move {
        let mut t = tokio::time::interval(stats.interval);
        loop {
            t.tick().await;
            let agent = view.lock().map(|v| v.clone()).unwrap_or_default();
            let adverts = advert_view
                .as_ref()
                .map(|a| a.lock().map(|c| *c).unwrap_or_default());
            let mut snap = host_snapshot(&name, agent, &http, &tunnel, adverts);
            // A few map reads, on the runtime's blocking pool.
            let fp = fast_path.clone();
            snap.fast_path = tokio::task::spawn_blocking(move || fp.snapshot())
                .await
                .ok()
                .map(crate::router::FastPathFile::from);
            write_snapshot(&stats.file, &snap);
        }
    });
}

/// How one registration with the site router ended.
enum SessionEnd {
    /// The session went down; reconnect.
    Lost,
    /// SIGTERM or SIGINT: stop the agent.
    Shutdown,
}

/// One registration with the site router: the agent's timers, its state
/// updates and the view the snapshot writer reads.
struct SiteSession<'a> {
    agent: &'a mut HostAgent,
    session: &'a mut signaling::Session,
    meter: &'a mut LoadMeter,
    clock: &'a Clock,
    base: tokio::time::Instant,
    view: &'a Mutex<AgentView>,
    connect_failures: u64,
}

impl SiteSession<'_> {
    /// Serve the session until it goes down or `shutdown` fires.
    async fn serve(
        &mut self,
        mut shutdown: std::pin::Pin<&mut impl Future<Output = &'static str>>,
    ) -> SessionEnd {
        loop {
            let deadline = self
                .agent
                .poll_timeout()
                .map(|t| self.base + Duration::from_nanos(t.as_nanos()));
            tokio::select! {
                ev = self.session.next_event() => match ev {
                    Some(PeerEvent::Registered { identity, .. }) => {
                        info!(site = %identity, "registered with the site router");
                        self.agent.on_registered(self.clock.now());
                    }
                    Some(PeerEvent::PeerDown { reason }) => {
                        warn!(%reason, "site session down; reconnecting");
                        self.agent.on_session_lost();
                        return SessionEnd::Lost;
                    }
                    None => {
                        self.agent.on_session_lost();
                        return SessionEnd::Lost;
                    }
                    Some(other) => debug!(event = ?other, "event ignored by a host"),
                },
                () = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => self.on_timeout().await,
                which = shutdown.as_mut() => {
                    info!(signal = which, "shutting down");
                    return SessionEnd::Shutdown;
                }
            }
        }
    }

    /// The agent's timer: refresh the load, send what is due, update the view.
    async fn on_timeout(&mut self) {
        let reading = self.meter.refresh(self.agent);
        for out in self.agent.handle_timeout(self.clock.now()) {
            if let Err(e) = self.session.send(out).await {
                debug!(error = %e, "state update not sent");
            }
        }
        if let Ok(mut v) = self.view.lock() {
            let agent = &*self.agent;
            *v = AgentView {
                registered: agent.is_registered(),
                load: agent.load(),
                connections: agent.active_connections(),
                cpu: reading.cpu,
                background: reading.background,
                registrations: agent.stats().registrations,
                sessions_lost: agent.stats().sessions_lost,
                updates_sent: agent.stats().updates_sent,
                connect_failures: self.connect_failures,
            };
        }
    }
}

fn host_snapshot(
    name: &str,
    agent: AgentView,
    http: &HttpCounters,
    tunnel: &HostTunnelHandle,
    adverts: Option<adverts::AdvertCounters>,
) -> HostSnapshot {
    let t = tunnel.stats();
    HostSnapshot {
        name: name.to_owned(),
        pid: std::process::id(),
        rss_kib: rss_kib(),
        http_requests: http.served.load(Ordering::Relaxed),
        http_refused: http.refused.load(Ordering::Relaxed),
        agent,
        tunnel: TunnelSnapshot {
            rx: t.rx,
            injected: t.injected,
            bad_tunnel: t.bad_tunnel,
            fragmented: t.fragmented,
            ecn_drop: t.ecn_drop,
            not_served: t.not_served,
            nested: t.nested,
            truncated: t.truncated,
            inject_failed: t.inject_failed,
            rx_errors: t.rx_errors,
            tun_coalesced: t.tun_coalesced,
        },
        adverts,
        fast_path: None,
    }
}

// ----- load ---------------------------------------------------------------------

/// One load reading's parts.
#[derive(Debug, Clone, Copy, Default)]
struct Reading {
    cpu: f64,
    background: f64,
}

/// Computes the advertised load from the kernel's view of the host.
#[derive(Debug)]
struct LoadMeter {
    cfg: LoadConfig,
    subnets: Vec<SubnetPrefix>,
    last_cpu: Option<CpuTimes>,
    file_warned: bool,
    sockets: tcp_sockets::TcpSockets,
}

impl LoadMeter {
    fn new(cfg: LoadConfig, subnets: Vec<SubnetPrefix>) -> Self {
        Self {
            cfg,
            subnets,
            last_cpu: None,
            sockets: tcp_sockets::TcpSockets::open(),
            file_warned: false,
        }
    }

    /// Bring the agent's connection count and background load up to date.
    fn refresh(&mut self, agent: &mut HostAgent) -> Reading {
        let conns = self
            .sockets
            .established_on(&self.subnets)
            .unwrap_or_else(|| established_on(&self.subnets));
        while agent.active_connections() < conns {
            agent.connection_opened();
        }
        while agent.active_connections() > conns {
            agent.connection_closed();
        }
        let cpu = match (read_cpu(), self.last_cpu) {
            (Some(now), Some(before)) => {
                self.last_cpu = Some(now);
                now.busy_fraction_since(before)
            }
            (now, _) => {
                self.last_cpu = now;
                0.0
            }
        };
        let file = self.background_file();
        let background = self.cfg.background + file + self.cfg.cpu_weight * cpu;
        agent.set_background_load(background);
        Reading { cpu, background }
    }

    fn background_file(&mut self) -> f64 {
        let Some(path) = &self.cfg.background_file else {
            return 0.0;
        };
        // Non-blocking and regular files only: a FIFO here must not stall the
        // agent's loop. An unreadable file counts as a bad value.
        let text = config::read_file(path, MAX_BACKGROUND_FILE)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        match text.trim().parse::<f64>() {
            Ok(v) if v.is_finite() && v >= 0.0 => {
                self.file_warned = false;
                v
            }
            _ => {
                if !self.file_warned {
                    warn!(path = %path.display(), "load.background_file holds no non-negative number; using 0");
                    self.file_warned = true;
                }
                0.0
            }
        }
    }
}

/// ESTABLISHED TCP connections whose local address is in `subnets`, from
/// `/proc/net/tcp*` text (the fallback without sock_diag).
fn established_on(subnets: &[SubnetPrefix]) -> u32 {
    let mut n = 0u32;
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let Ok(f) = std::fs::File::open(file) else {
            continue;
        };
        for line in std::io::BufReader::new(f)
            .lines()
            .skip(1)
            .take(MAX_TCP_LINES)
        {
            let Ok(line) = line else { break };
            if let Some(local) = established_local(&line, v6)
                && subnets.iter().any(|s| s.contains(local))
            {
                n = n.saturating_add(1);
            }
        }
    }
    n
}

/// The local address of a `/proc/net/tcp{,6}` line in state ESTABLISHED (01).
fn established_local(line: &str, v6: bool) -> Option<IpAddr> {
    proc_tcp::TcpSocketLine::parse(line, v6)
        .filter(|t| t.state == 0x01)
        .map(|t| t.local.ip())
}

/// Aggregate CPU times of `/proc/stat`, in ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CpuTimes {
    busy: u64,
    total: u64,
}

impl CpuTimes {
    fn busy_fraction_since(self, before: Self) -> f64 {
        let total = self.total.saturating_sub(before.total);
        if total == 0 {
            return 0.0;
        }
        (self.busy.saturating_sub(before.busy) as f64 / total as f64).clamp(0.0, 1.0)
    }
}

fn read_cpu() -> Option<CpuTimes> {
    let f = std::fs::File::open("/proc/stat").ok()?;
    let mut first = String::new();
    std::io::BufReader::new(f).read_line(&mut first).ok()?;
    parse_cpu_line(&first)
}

/// `cpu user nice system idle iowait irq softirq steal ...`.
fn parse_cpu_line(line: &str) -> Option<CpuTimes> {
    let mut f = line.split_whitespace();
    if f.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = f.take(8).map(|x| x.parse().ok()).collect::<Option<_>>()?;
    let [user, nice, system, idle, iowait, irq, softirq, steal] = v.try_into().ok()?;
    let busy = user + nice + system + irq + softirq + steal;
    Some(CpuTimes {
        busy,
        total: busy + idle + iowait,
    })
}

// ----- the demo HTTP server ----------------------------------------------------

#[derive(Debug, Default)]
struct HttpCounters {
    served: AtomicU64,
    refused: AtomicU64,
}

async fn http_demo(listener: TcpListener, demo: HttpDemo, counters: Arc<HttpCounters>) {
    let slots = Arc::new(Semaphore::new(demo.max_connections));
    let response: Arc<[u8]> = {
        let body = format!("{}\n", demo.body);
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
        .into()
    };
    loop {
        let (mut stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                debug!(error = %e, "http accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let (response, counters) = (Arc::clone(&response), Arc::clone(&counters));
        tokio::spawn(async move {
            let _permit = permit;
            let served = tokio::time::timeout(HTTP_TIMEOUT, async {
                let mut head = http::RequestHead::new();
                let mut buf = [0u8; 1024];
                loop {
                    let n = stream.read(&mut buf).await?;
                    if n == 0 || head.feed(&buf[..n]) != http::HeadProgress::NeedMore {
                        break;
                    }
                }
                stream.write_all(&response).await?;
                stream.shutdown().await
            })
            .await;
            if matches!(served, Ok(Ok(()))) {
                counters.served.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn proc_net_tcp_lines_parse() {
        // 192.200.0.10:80 ESTABLISHED (little-endian host) and a LISTEN line.
        let est = "   1: 0A00C8C0:0050 020010AC:9C40 01 00000000:00000000 00:00000000 00000000     0        0 1 1 0 10 0 0 10 -1";
        let listen = "   0: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 10 0 0 10 -1";
        if cfg!(target_endian = "little") {
            assert_eq!(
                established_local(est, false),
                Some(IpAddr::V4(Ipv4Addr::new(192, 200, 0, 10)))
            );
        }
        assert_eq!(established_local(listen, false), None);
        assert_eq!(established_local("garbage", false), None);
        assert_eq!(established_local("0: ZZZZZZZZ:0050 0:0 01", false), None);
        // ::ffff:192.200.0.10 on a dual-stack socket counts as the IPv4 VIP.
        let v6 = "   0: 0000000000000000FFFF00000A00C8C0:0050 0000000000000000FFFF0000020010AC:9C40 01 0:0 0:0 0 0 0 1";
        if cfg!(target_endian = "little") {
            assert_eq!(
                established_local(v6, true),
                Some(IpAddr::V4(Ipv4Addr::new(192, 200, 0, 10)))
            );
        }
    }

    #[test]
    fn cpu_line_parses_and_fraction_is_bounded() {
        let a = parse_cpu_line("cpu  100 0 100 800 0 0 0 0 0 0\n").unwrap();
        let b = parse_cpu_line("cpu  150 0 150 900 0 0 0 0 0 0\n").unwrap();
        assert!((b.busy_fraction_since(a) - 0.5).abs() < 1e-9);
        assert_eq!(a.busy_fraction_since(a), 0.0);
        assert_eq!(b.busy_fraction_since(b), 0.0);
        assert!(parse_cpu_line("cpu0 1 2 3").is_none());
        assert!(parse_cpu_line("intr 1 2 3 4 5 6 7 8").is_none());
    }

    #[test]
    fn background_file_is_read_each_time_and_bad_values_count_as_zero() {
        let dir = std::env::temp_dir().join(format!("pronto-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("load");
        let mut m = LoadMeter::new(
            LoadConfig {
                update_interval: Duration::from_secs(1),
                capacity: 10,
                cpu_weight: 0.0,
                background: 0.25,
                background_file: Some(file.clone()),
            },
            vec![SubnetPrefix::new("192.0.2.0".parse().unwrap(), 24).unwrap()],
        );
        let mut agent = HostAgent::new(signaling::HostConfig {
            subnets: vec![],
            update_interval: Duration::from_secs(1),
            capacity: 10,
        })
        .unwrap();
        std::fs::write(&file, "0.5\n").unwrap();
        assert!((m.refresh(&mut agent).background - 0.75).abs() < 1e-9);
        assert!((agent.load() - 0.75).abs() < 1e-9);
        std::fs::write(&file, "NaN").unwrap();
        assert!((m.refresh(&mut agent).background - 0.25).abs() < 1e-9);
        // A FIFO would block a plain read until someone writes to it.
        let fifo = dir.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        m.cfg.background_file = Some(fifo);
        let t = std::time::Instant::now();
        assert!((m.refresh(&mut agent).background - 0.25).abs() < 1e-9);
        assert!(t.elapsed() < Duration::from_secs(2));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// `host check` refuses what `host run` refuses before its devices and
    /// sockets: another node's key, a FIFO, key files others may read (when
    /// asked), an advertisement key file without the signing key.
    #[test]
    fn host_check_refuses_what_run_refuses() {
        use crate::router::check_tests::{Fixture, tls};
        let f = Fixture::new("host");
        let base = |key: &str| {
            format!(
                "name = \"site-a.lab\"\nsubnets = [\"192.200.0.0/24\"]\n\n[site]\naddress = \"10.1.0.1:7800\"\nname = \"site-a.lab\"\n\n{}",
                tls(key)
            )
        };
        let check = |text: &str| {
            let path = f.write("host.toml", text);
            prepare(&path).map(drop).map_err(|e| format!("{e:#}"))
        };
        let no_recovery = "\n[recovery]\nenabled = false\n";
        check(&format!("{}{no_recovery}", base("ca/peer-site-a.lab.key"))).unwrap();

        let e = check(&format!("{}{no_recovery}", base("ca/peer-other.lab.key"))).unwrap_err();
        assert!(
            e.contains("tls.key") && e.contains("not the private key"),
            "{e}"
        );

        f.write("advert.keys", &format!("1:{}\n", "ab".repeat(32)));
        f.chmod("advert.keys", 0o600);
        let recovery =
            |id: u32| format!("\n[recovery]\nadvert_keys = \"advert.keys\"\nkey_id = {id}\n");
        check(&format!(
            "{}{}",
            base("ca/peer-site-a.lab.key"),
            recovery(1)
        ))
        .unwrap();
        let e = check(&format!(
            "{}{}",
            base("ca/peer-site-a.lab.key"),
            recovery(2)
        ))
        .unwrap_err();
        assert!(e.contains("recovery.key_id = 2"), "{e}");

        f.chmod("advert.keys", 0o644);
        let strict = "\n[security]\nkey_permissions = \"refuse\"\n";
        check(&format!(
            "{}{}",
            base("ca/peer-site-a.lab.key"),
            recovery(1)
        ))
        .unwrap();
        let e = check(&format!(
            "{}{}{strict}",
            base("ca/peer-site-a.lab.key"),
            recovery(1)
        ))
        .unwrap_err();
        assert!(
            e.contains("recovery.advert_keys") && e.contains("readable by"),
            "{e}"
        );

        f.fifo("advert.keys");
        let t = std::time::Instant::now();
        let e = check(&format!(
            "{}{}",
            base("ca/peer-site-a.lab.key"),
            recovery(1)
        ))
        .unwrap_err();
        assert!(e.contains("advert.keys is a FIFO"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(2));

        let config = f.fifo("fifo.toml");
        let e = prepare(&config).map(drop).unwrap_err();
        assert!(format!("{e:#}").contains("fifo.toml is a FIFO"), "{e:#}");
    }
}
