//! `pronto router run`: the router file's sections and their validation.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use router_core::VirtualSubnet;
use router_core::engine::{EngineConfig, MAX_CANDIDATES};
use router_core::flow::{FlowConfig, Timeouts};
use router_core::linux::{DataplaneConfig, TunnelPath};
use router_core::policy::{Candidate, Level};
use router_core::tunnel::TunnelSources;
use serde::Deserialize;
use signaling::{NodeName, PeerConfig, SlrConfig, TableConfig};

use super::management::{Management, ManagementFile};
use super::modules::{EnvironmentFile, ModulesConfig, ModulesFile, TenantConfig};
use super::scheduler::{SchedulerConfig, SchedulerFile};
use super::shaping::{Shaping, ShapingFile};
use super::shared::{
    FastPathChoice, FastPathName, HandshakesFile, LevelName, SecurityFile, SessionFile, Stats,
    StatsFile, TlsFile, TlsFiles, Upstream, UpstreamFile,
};
use super::{Check, ConfigError, parse_file};

/// Most static subnets and downstream entries.
const MAX_ENTRIES: usize = 4096;

/// `[tunnel]` of a router.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TunnelFile {
    local_v4: Option<Ipv4Addr>,
    local_v6: Option<Ipv6Addr>,
    #[serde(default = "default_tunnel_mtu")]
    mtu: u16,
    #[serde(default = "default_router_tun")]
    tun_name: String,
    #[serde(default)]
    path: PathName,
    #[serde(default = "default_ttl")]
    ttl: u8,
    /// TUN offloads: TCP super-packets read whole and segmented here.
    #[serde(default = "default_offload")]
    offload: bool,
    /// More sources admitted to tunnel to us (ADDR/LEN), beside the upper
    /// level, the WHOHAS neighbours and a spare's primary.
    #[serde(default)]
    accept_from: Vec<String>,
}

fn default_tunnel_mtu() -> u16 {
    1500
}
fn default_router_tun() -> String {
    "pronto0".into()
}
fn default_ttl() -> u8 {
    64
}
fn default_offload() -> bool {
    true
}

/// `tunnel.path = "auto" | "userspace" | "kernel"`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum PathName {
    #[default]
    Auto,
    Userspace,
    Kernel,
}

/// `[[downstream]]`: a lower-level peer expected to register.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DownstreamFile {
    name: String,
    route_cost: Option<f64>,
    tunnel: Option<IpAddr>,
}

/// A known lower-level peer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct DownstreamPeer {
    /// Route cost `r_j`.
    pub(crate) route_cost: f64,
    /// Its tunnel endpoint; `None`: the address its signalling session comes from.
    pub(crate) tunnel: Option<IpAddr>,
}

/// `[[static_subnets]]`: a subnet served with fixed next hops.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StaticSubnetFile {
    subnet: String,
    next_hops: Vec<StaticHopFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StaticHopFile {
    address: IpAddr,
    #[serde(default)]
    route_cost: f64,
    #[serde(default)]
    load: f64,
}

/// `[table]`: next-hop table timers and bounds.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct TableFile {
    interval_ms: u64,
    hold_ms: u64,
    max_peers: usize,
    max_subnets: usize,
}

impl Default for TableFile {
    fn default() -> Self {
        Self {
            interval_ms: 1000,
            hold_ms: 10_000,
            max_peers: MAX_CANDIDATES,
            max_subnets: 1 << 16,
        }
    }
}

/// `[flows]`: flow table sizes and timeouts.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct FlowsFile {
    capacity_v4: usize,
    capacity_v6: usize,
    max_next_hops: usize,
    syn_timeout_ms: u64,
    established_timeout_ms: u64,
    closing_timeout_ms: u64,
    udp_timeout_ms: u64,
}

impl Default for FlowsFile {
    fn default() -> Self {
        let t = Timeouts::default();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Self {
            capacity_v4: 1 << 16,
            capacity_v6: 1 << 12,
            max_next_hops: 4096,
            syn_timeout_ms: ms(t.syn),
            established_timeout_ms: ms(t.established),
            closing_timeout_ms: ms(t.closing),
            udp_timeout_ms: ms(t.udp),
        }
    }
}

/// The policy choosing among next hops for new flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum PolicyName {
    /// `router_core::policy::LeastCost`: lowest load + route cost.
    #[default]
    LeastCost,
    /// `signaling::FollowTable`: the table's cheapest by F.
    FollowTable,
    /// Spread flows by a hash of the five-tuple over the usable next hops.
    FlowHash,
}

/// `[policy]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct PolicyFile {
    name: PolicyName,
    /// Originate shortcuts (default: on at the site level).
    shortcuts: Option<bool>,
}

/// `pronto router run` configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RouterFile {
    level: LevelName,
    name: String,
    #[serde(default)]
    fast_path: FastPathName,
    #[serde(default)]
    fast_path_links: Vec<String>,
    /// Threads reading the TUN's queues into the shared engine.
    #[serde(default = "default_engine_threads")]
    engine_threads: usize,
    tunnel: TunnelFile,
    tls: TlsFile,
    #[serde(default)]
    security: SecurityFile,
    listen: Option<SocketAddr>,
    upstream: Option<UpstreamFile>,
    #[serde(default = "default_route_cost")]
    default_route_cost: f64,
    #[serde(default)]
    downstream: Vec<DownstreamFile>,
    #[serde(default)]
    static_subnets: Vec<StaticSubnetFile>,
    #[serde(default)]
    table: TableFile,
    #[serde(default)]
    flows: FlowsFile,
    #[serde(default)]
    policy: PolicyFile,
    #[serde(default)]
    session: SessionFile,
    #[serde(default)]
    handshakes: HandshakesFile,
    stats: Option<StatsFile>,
    modules: Option<ModulesFile>,
    #[serde(default)]
    environment: Vec<EnvironmentFile>,
    shaping: Option<ShapingFile>,
    scheduler: Option<SchedulerFile>,
    management: Option<ManagementFile>,
    recovery: Option<crate::recovery::RecoveryFile>,
    spare: Option<crate::recovery::SpareFile>,
}

fn default_route_cost() -> f64 {
    1.0
}
fn default_engine_threads() -> usize {
    1
}

/// A validated router configuration.
#[derive(Debug, Clone)]
pub(crate) struct RouterConfig {
    /// This router's level.
    pub(crate) level: Level,
    /// Its node name (a dNSName of its certificate).
    pub(crate) name: NodeName,
    /// Data path (engine, TUN, tunnel path).
    pub(crate) dataplane: DataplaneConfig,
    /// TLS files.
    pub(crate) tls: TlsFiles,
    /// Where lower levels register.
    pub(crate) listen: Option<SocketAddr>,
    /// The level above.
    pub(crate) upstream: Option<Upstream>,
    /// Route cost of a lower-level peer not listed in `downstream`.
    pub(crate) default_route_cost: f64,
    /// Known lower-level peers.
    pub(crate) downstream: BTreeMap<NodeName, DownstreamPeer>,
    /// Subnets with fixed next hops.
    pub(crate) static_subnets: Vec<(VirtualSubnet, Vec<Candidate>)>,
    /// Control side.
    pub(crate) slr: SlrConfig,
    /// Policy for new flows.
    pub(crate) policy: PolicyName,
    /// Session timers.
    pub(crate) peer: PeerConfig,
    /// `[handshakes]`: deadline and bounds of the TLS handshakes at `listen`.
    pub(crate) handshakes: signaling::HandshakeLimits,
    /// Counters snapshot.
    pub(crate) stats: Option<Stats>,
    /// Signed policy modules.
    pub(crate) modules: Option<ModulesConfig>,
    /// `[[environment]]`: tenant environments.
    pub(crate) tenants: Vec<TenantConfig>,
    /// Kernel bandwidth shares on an egress link.
    pub(crate) shaping: Option<Shaping>,
    /// The userspace egress stage (programmable link scheduler).
    pub(crate) scheduler: Option<SchedulerConfig>,
    /// The management API (`None`: not served).
    pub(crate) management: Option<Management>,
    /// Failure recovery: advertisement keys, WHOHAS neighbours, spares.
    pub(crate) recovery: Option<crate::recovery::RecoverySettings>,
    /// This router is a hot spare.
    pub(crate) spare: Option<crate::recovery::SpareSettings>,
    /// Who may tunnel packets to this router.
    pub(crate) tunnel_sources: TunnelSources,
    /// The kernel fast path for pinned flows.
    pub(crate) fast_path: FastPathChoice,
}

/// Read and validate a router configuration file.
pub(crate) fn load_router(path: &Path) -> Result<RouterConfig, ConfigError> {
    let f: RouterFile = parse_file(path)?;
    router_from_file(path, f)
}

pub(super) fn router_from_file(path: &Path, f: RouterFile) -> Result<RouterConfig, ConfigError> {
    let c = Check { path };
    let level = Level::from(f.level);
    let name = c.name("name", &f.name)?;
    let tunnel = f.tunnel.validate(&c)?;
    let upstream = match (&f.upstream, level) {
        (Some(_), Level::Network) => {
            return Err(c.err(
                "upstream",
                "a network-level router has no upper level; remove [upstream]",
            ));
        }
        (Some(u), _) => Some(Upstream::from_file(&c, "upstream", u)?),
        (None, _) => None,
    };
    let default_route_cost = c.cost("default_route_cost", f.default_route_cost)?;
    let downstream = downstream_peers(&c, &f.downstream, default_route_cost)?;
    let static_subnets = static_subnets(&c, &f.static_subnets)?;
    let table = f.table.validate(&c)?;
    let flows = f.flows.validate(&c)?;
    let mut slr = SlrConfig::new(level);
    slr.table = table;
    let recovery = f
        .recovery
        .as_ref()
        .map(|r| crate::recovery::recovery_settings(r, &|p| c.resolve(p)))
        .transpose()
        .map_err(|e| c.err(e.field, e.reason))?;
    let spare = f
        .spare
        .as_ref()
        .map(|s| crate::recovery::spare_settings(s, upstream.is_some()))
        .transpose()
        .map_err(|e| c.err(e.field, e.reason))?;
    if let Some(r) = &recovery {
        slr.recovery = r.limits;
    }
    // Mirroring to a spare wants each newly pinned flow at once.
    let mirrors = recovery.as_ref().is_some_and(|r| !r.spares.is_empty());
    if let Some(s) = f.policy.shortcuts {
        slr.shortcuts = s;
    }
    let dataplane = DataplaneConfig {
        engine: EngineConfig {
            level,
            local_v4: f.tunnel.local_v4,
            local_v6: f.tunnel.local_v6,
            tunnel_mtu: usize::from(tunnel.mtu),
            tunnel_ttl: tunnel.ttl,
            flows,
            max_subnets: table.max_subnets + static_subnets.len(),
            ..EngineConfig::default()
        },
        tun_name: tunnel.tun_name,
        tun_offload: f.tunnel.offload,
        engine_threads: c.range(
            "engine_threads",
            f.engine_threads,
            1,
            router_core::linux::MAX_ENGINE_THREADS,
        )?,
        tunnel_path: match f.tunnel.path {
            PathName::Auto => TunnelPath::Auto,
            PathName::Userspace => TunnelPath::Userspace,
            PathName::Kernel => TunnelPath::Kernel,
        },
        // Shortcuts need each newly pinned flow reported by the data path.
        new_flow_queue: if slr.shortcuts || mirrors { 4096 } else { 0 },
        ..DataplaneConfig::default()
    };
    let tunnel_sources = tunnel_sources(
        &c,
        &f.tunnel.accept_from,
        upstream.as_ref(),
        recovery.as_ref(),
        spare.as_ref(),
    )?;
    let tls = TlsFiles::from_file(&c, &f.tls, &f.security)?;
    let management = f
        .management
        .as_ref()
        .map(|m| Management::from_file(&c, m, &tls))
        .transpose()?;
    let modules = f
        .modules
        .as_ref()
        .map(|m| ModulesConfig::from_file(&c, m))
        .transpose()?;
    let scheduler = f
        .scheduler
        .as_ref()
        .map(|s| SchedulerConfig::from_file(&c, s))
        .transpose()?;
    if scheduler.is_none() && modules.as_ref().is_some_and(|m| m.scheduler.is_some()) {
        return Err(c.err(
            "modules.scheduler",
            "a scheduler module ranks the [scheduler] egress stage: add that section (link, rate_mbit, classes)",
        ));
    }
    Ok(RouterConfig {
        level,
        name,
        dataplane,
        tls,
        listen: f.listen,
        upstream,
        default_route_cost,
        downstream,
        static_subnets,
        slr,
        policy: f.policy.name,
        peer: f.session.peer(&c)?,
        handshakes: f.handshakes.limits(&c, "handshakes.")?,
        stats: f
            .stats
            .as_ref()
            .map(|s| Stats::from_file(&c, s))
            .transpose()?,
        modules,
        tenants: TenantConfig::from_files(&c, &f.environment)?,
        shaping: f
            .shaping
            .as_ref()
            .map(|s| Shaping::from_file(&c, s))
            .transpose()?,
        scheduler,
        management,
        recovery,
        spare,
        tunnel_sources,
        fast_path: FastPathChoice::from_file(&c, f.fast_path, &f.fast_path_links)?,
    })
}

/// `[tunnel]`'s checked values other than the addresses and the path.
struct TunnelChecked {
    mtu: u16,
    ttl: u8,
    tun_name: String,
}

impl TunnelFile {
    fn validate(&self, c: &Check<'_>) -> Result<TunnelChecked, ConfigError> {
        if self.local_v4.is_none() && self.local_v6.is_none() {
            return Err(c.err(
                "tunnel.local_v4",
                "set local_v4 and/or local_v6: the tunnel endpoint address (assigned to a local interface)",
            ));
        }
        Ok(TunnelChecked {
            mtu: c.range("tunnel.mtu", self.mtu, 576, 9000)?,
            ttl: c.range("tunnel.ttl", self.ttl, 1, 255)?,
            tun_name: c.tun_name("tunnel.tun_name", &self.tun_name)?,
        })
    }
}

/// Who may tunnel to this router: the upper level's tunnel endpoint (its
/// `tunnel`, else its signalling address), the WHOHAS neighbours and a spare's
/// primary at their signalling addresses, and `tunnel.accept_from`. Entry
/// routers, other upper-level routers with static next hops to us, and peers
/// whose tunnel endpoint differs from their signalling address go in
/// `accept_from`.
fn tunnel_sources(
    c: &Check<'_>,
    accept_from: &[String],
    upstream: Option<&Upstream>,
    recovery: Option<&crate::recovery::RecoverySettings>,
    spare: Option<&crate::recovery::SpareSettings>,
) -> Result<TunnelSources, ConfigError> {
    let host = |a: IpAddr| {
        let len = if a.is_ipv4() { 32 } else { 128 };
        VirtualSubnet::new(a, len).map_err(|e| c.err("tunnel.accept_from", e.to_string()))
    };
    let mut prefixes = Vec::new();
    for (i, p) in accept_from.iter().enumerate() {
        let field = format!("tunnel.accept_from[{i}]");
        prefixes.push(match p.parse::<IpAddr>() {
            Ok(a) => host(a)?,
            Err(_) => c.subnet(&field, p)?,
        });
    }
    if let Some(u) = upstream {
        prefixes.push(host(u.tunnel.unwrap_or(u.address.ip()))?);
    }
    for n in recovery.iter().flat_map(|r| &r.neighbours) {
        if let Some(a) = n.address {
            prefixes.push(host(a.ip())?);
        }
    }
    if let Some(s) = spare {
        prefixes.push(host(s.address.ip())?);
    }
    let mut sources = TunnelSources::default();
    for p in prefixes {
        sources
            .allow(p)
            .map_err(|e| c.err("tunnel.accept_from", e.to_string()))?;
    }
    Ok(sources)
}

/// `[[downstream]]`: known lower-level peers, each named once.
fn downstream_peers(
    c: &Check<'_>,
    entries: &[DownstreamFile],
    default_route_cost: f64,
) -> Result<BTreeMap<NodeName, DownstreamPeer>, ConfigError> {
    if entries.len() > MAX_ENTRIES {
        return Err(c.err("downstream", format!("more than {MAX_ENTRIES} entries")));
    }
    let mut downstream = BTreeMap::new();
    for (i, d) in entries.iter().enumerate() {
        let n = c.name(&format!("downstream[{i}].name"), &d.name)?;
        let route_cost = match d.route_cost {
            Some(r) => c.cost(&format!("downstream[{i}].route_cost"), r)?,
            None => default_route_cost,
        };
        if downstream
            .insert(
                n.clone(),
                DownstreamPeer {
                    route_cost,
                    tunnel: d.tunnel,
                },
            )
            .is_some()
        {
            return Err(c.err(
                format!("downstream[{i}].name"),
                format!("{n} is listed twice"),
            ));
        }
    }
    Ok(downstream)
}

/// `[[static_subnets]]`: subnets with fixed next hops.
fn static_subnets(
    c: &Check<'_>,
    entries: &[StaticSubnetFile],
) -> Result<Vec<(VirtualSubnet, Vec<Candidate>)>, ConfigError> {
    if entries.len() > MAX_ENTRIES {
        return Err(c.err("static_subnets", format!("more than {MAX_ENTRIES} entries")));
    }
    let mut static_subnets = Vec::new();
    for (i, s) in entries.iter().enumerate() {
        let subnet = c.subnet(&format!("static_subnets[{i}].subnet"), &s.subnet)?;
        if s.next_hops.is_empty() || s.next_hops.len() > MAX_CANDIDATES {
            return Err(c.err(
                format!("static_subnets[{i}].next_hops"),
                format!("give 1..={MAX_CANDIDATES} next hops"),
            ));
        }
        let mut hops = Vec::new();
        for (j, h) in s.next_hops.iter().enumerate() {
            let at = format!("static_subnets[{i}].next_hops[{j}]");
            hops.push(Candidate {
                addr: h.address,
                load: c.cost(&format!("{at}.load"), h.load)?,
                route_cost: c.cost(&format!("{at}.route_cost"), h.route_cost)?,
                up: true,
            });
        }
        static_subnets.push((subnet, hops));
    }
    Ok(static_subnets)
}

impl TableFile {
    fn validate(&self, c: &Check<'_>) -> Result<TableConfig, ConfigError> {
        let interval = c.range("table.interval_ms", self.interval_ms, 10, 3_600_000)?;
        let hold = c.range("table.hold_ms", self.hold_ms, 20, 86_400_000)?;
        if hold <= interval {
            return Err(c.err(
                "table.hold_ms",
                format!("{hold} must exceed table.interval_ms ({interval}) and the lower level's update interval"),
            ));
        }
        Ok(TableConfig {
            interval: Duration::from_millis(interval),
            hold_time: Duration::from_millis(hold),
            max_peers: c.range("table.max_peers", self.max_peers, 1, MAX_CANDIDATES)?,
            max_subnets: c.range("table.max_subnets", self.max_subnets, 1, 1 << 20)?,
        })
    }
}

impl FlowsFile {
    fn validate(&self, c: &Check<'_>) -> Result<FlowConfig, ConfigError> {
        let ms = |field: &str, v: u64| -> Result<Duration, ConfigError> {
            Ok(Duration::from_millis(c.range(field, v, 100, 86_400_000)?))
        };
        Ok(FlowConfig {
            capacity_v4: c.range("flows.capacity_v4", self.capacity_v4, 8, 1 << 26)?,
            capacity_v6: c.range("flows.capacity_v6", self.capacity_v6, 8, 1 << 24)?,
            max_next_hops: c.range("flows.max_next_hops", self.max_next_hops, 1, 1 << 20)?,
            timeouts: Timeouts {
                syn: ms("flows.syn_timeout_ms", self.syn_timeout_ms)?,
                established: ms("flows.established_timeout_ms", self.established_timeout_ms)?,
                closing: ms("flows.closing_timeout_ms", self.closing_timeout_ms)?,
                udp: ms("flows.udp_timeout_ms", self.udp_timeout_ms)?,
                ..Timeouts::default()
            },
        })
    }
}
