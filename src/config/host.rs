//! `pronto host run`: the host agent's file and its validation.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use router_core::linux::HostConfig as TunnelHostConfig;
use serde::Deserialize;
use signaling::{NodeName, PeerConfig, SubnetPrefix};

use super::shared::{
    FastPathChoice, FastPathName, SecurityFile, SessionFile, Stats, StatsFile, TlsFile, TlsFiles,
    Upstream, UpstreamFile,
};
use super::{Check, ConfigError, parse_file};

/// `[tunnel]` of a host.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct HostTunnelFile {
    tun_name: String,
    mtu: u16,
    ipv4: bool,
    ipv6: bool,
    /// TUN offloads: a batch's segments of one flow coalesced into one write.
    offload: bool,
}

impl Default for HostTunnelFile {
    fn default() -> Self {
        Self {
            tun_name: "pronto-host0".into(),
            mtu: 1500,
            ipv4: true,
            ipv6: false,
            offload: true,
        }
    }
}

/// `[load]`: how the advertised load is computed.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct LoadFile {
    update_interval_ms: u64,
    capacity: u32,
    cpu_weight: f64,
    background: f64,
    background_file: Option<PathBuf>,
}

impl Default for LoadFile {
    fn default() -> Self {
        Self {
            update_interval_ms: 1000,
            capacity: 1000,
            cpu_weight: 1.0,
            background: 0.0,
            background_file: None,
        }
    }
}

/// `[http_demo]`: a small HTTP server answering every request with a body naming
/// the host.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpDemoFile {
    listen: SocketAddr,
    body: Option<String>,
    #[serde(default = "default_http_conns")]
    max_connections: usize,
}

fn default_http_conns() -> usize {
    256
}

/// `[recovery]` of a host: server flow advertisements (DESIGN.md §5).
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct HostRecoveryFile {
    enabled: bool,
    advert_keys: Option<PathBuf>,
    key_id: Option<u32>,
    stall_after_ms: u64,
    readvertise_after_ms: u64,
    scan_interval_ms: u64,
    max_adverts_per_sec: u32,
    max_flows: usize,
    server_addresses: Vec<IpAddr>,
}

impl Default for HostRecoveryFile {
    fn default() -> Self {
        let p = signaling::ProgressConfig::default();
        Self {
            enabled: true,
            advert_keys: None,
            key_id: None,
            stall_after_ms: u64::try_from(p.stall_after.as_millis()).unwrap_or(1000),
            readvertise_after_ms: u64::try_from(p.readvertise_after.as_millis()).unwrap_or(1000),
            scan_interval_ms: 200,
            max_adverts_per_sec: p.max_adverts_per_sec,
            max_flows: p.max_flows,
            server_addresses: Vec::new(),
        }
    }
}

/// A host's server flow advertisements: when a connection on a served VIP makes
/// no progress, an authenticated echo request goes from the VIP to the client.
#[derive(Debug, Clone)]
pub(crate) struct HostRecovery {
    /// The trust domain's advertisement key file.
    pub(crate) advert_keys: PathBuf,
    /// Which key of that file signs.
    pub(crate) key_id: u32,
    /// When a stalled connection is advertised, and the monitor's bounds.
    pub(crate) progress: signaling::ProgressConfig,
    /// How often the connections are scanned.
    pub(crate) scan_interval: Duration,
    /// The server address each advertisement names (the host's tunnel endpoint),
    /// at most one per family; for the family of the site router's address, the
    /// default is the address the host uses toward it.
    pub(crate) server_addresses: Vec<IpAddr>,
}

impl HostRecovery {
    fn from_file(c: &Check<'_>, r: &HostRecoveryFile) -> Result<Option<Self>, ConfigError> {
        if !r.enabled {
            return Ok(None);
        }
        let advert_keys = r.advert_keys.as_ref().ok_or_else(|| {
            c.err(
                "recovery.advert_keys",
                "give the advertisement key file (or set recovery.enabled = false)",
            )
        })?;
        let key_id = r.key_id.ok_or_else(|| {
            c.err(
                "recovery.key_id",
                "give the id of the key in recovery.advert_keys that signs",
            )
        })?;
        let v4 = r.server_addresses.iter().filter(|a| a.is_ipv4()).count();
        if v4 > 1 || r.server_addresses.len() - v4 > 1 {
            return Err(c.err(
                "recovery.server_addresses",
                "give at most one address per family",
            ));
        }
        if let Some(a) = r
            .server_addresses
            .iter()
            .find(|a| a.is_unspecified() || a.is_multicast() || a.is_loopback())
        {
            return Err(c.err(
                "recovery.server_addresses",
                format!("{a} is not a unicast address routers can tunnel to"),
            ));
        }
        let progress = signaling::ProgressConfig {
            stall_after: Duration::from_millis(c.range(
                "recovery.stall_after_ms",
                r.stall_after_ms,
                1,
                3_600_000,
            )?),
            readvertise_after: Duration::from_millis(c.range(
                "recovery.readvertise_after_ms",
                r.readvertise_after_ms,
                1,
                3_600_000,
            )?),
            max_flows: c.range("recovery.max_flows", r.max_flows, 1, 1 << 22)?,
            max_adverts_per_sec: c.range(
                "recovery.max_adverts_per_sec",
                r.max_adverts_per_sec,
                1,
                signaling::MAX_ADVERTS_PER_SEC,
            )?,
        };
        Ok(Some(Self {
            advert_keys: c.resolve(advert_keys),
            key_id,
            progress,
            scan_interval: Duration::from_millis(c.range(
                "recovery.scan_interval_ms",
                r.scan_interval_ms,
                10,
                60_000,
            )?),
            server_addresses: r.server_addresses.clone(),
        }))
    }
}

/// `pronto host run` configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HostFile {
    name: String,
    #[serde(default)]
    fast_path: FastPathName,
    #[serde(default)]
    fast_path_links: Vec<String>,
    site: UpstreamFile,
    tls: TlsFile,
    #[serde(default)]
    security: SecurityFile,
    subnets: Vec<String>,
    #[serde(default)]
    tunnel: HostTunnelFile,
    #[serde(default)]
    load: LoadFile,
    #[serde(default)]
    session: SessionFile,
    stats: Option<StatsFile>,
    http_demo: Option<HttpDemoFile>,
    recovery: Option<HostRecoveryFile>,
}

/// How the host computes its load: `background + background_file +
/// cpu_weight * cpu busy fraction + established connections / capacity`.
#[derive(Debug, Clone)]
pub(crate) struct LoadConfig {
    /// Update interval.
    pub(crate) update_interval: Duration,
    /// Connections at which the connection part reaches 1.0.
    pub(crate) capacity: u32,
    /// Weight of the CPU busy fraction.
    pub(crate) cpu_weight: f64,
    /// Fixed extra load.
    pub(crate) background: f64,
    /// A file holding one number, re-read at each update (load an operator or a
    /// test adds).
    pub(crate) background_file: Option<PathBuf>,
}

/// The demo HTTP server.
#[derive(Debug, Clone)]
pub(crate) struct HttpDemo {
    /// Where it listens (`0.0.0.0:80` answers on every VIP).
    pub(crate) listen: SocketAddr,
    /// The body of every answer.
    pub(crate) body: String,
    /// Most connections served at once.
    pub(crate) max_connections: usize,
}

/// A validated host configuration.
#[derive(Debug, Clone)]
pub(crate) struct HostDaemonConfig {
    /// Node name.
    pub(crate) name: NodeName,
    /// The site router.
    pub(crate) site: Upstream,
    /// TLS files.
    pub(crate) tls: TlsFiles,
    /// Served virtual subnets.
    pub(crate) subnets: Vec<SubnetPrefix>,
    /// Tunnel endpoint.
    pub(crate) tunnel: TunnelHostConfig,
    /// Load computation.
    pub(crate) load: LoadConfig,
    /// Session timers.
    pub(crate) peer: PeerConfig,
    /// Counters snapshot.
    pub(crate) stats: Option<Stats>,
    /// Demo HTTP server.
    pub(crate) http_demo: Option<HttpDemo>,
    /// Server flow advertisements (`None`: no `[recovery]`, or disabled).
    pub(crate) recovery: Option<HostRecovery>,
    /// The kernel fast path (decapsulation in a tc program).
    pub(crate) fast_path: FastPathChoice,
}

/// Read and validate a host configuration file.
pub(crate) fn load_host(path: &Path) -> Result<HostDaemonConfig, ConfigError> {
    let f: HostFile = parse_file(path)?;
    host_from_file(path, f)
}

pub(super) fn host_from_file(path: &Path, f: HostFile) -> Result<HostDaemonConfig, ConfigError> {
    let c = Check { path };
    let name = c.name("name", &f.name)?;
    if f.subnets.is_empty() || f.subnets.len() > signaling::host::MAX_HOST_SUBNETS {
        return Err(c.err(
            "subnets",
            format!(
                "give 1..={} virtual subnets",
                signaling::host::MAX_HOST_SUBNETS
            ),
        ));
    }
    let mut subnets = Vec::new();
    let mut vsubnets = Vec::new();
    for (i, s) in f.subnets.iter().enumerate() {
        let v = c.subnet(&format!("subnets[{i}]"), s)?;
        vsubnets.push(v);
        subnets.push(SubnetPrefix::from(v));
    }
    let t = &f.tunnel;
    if !t.ipv4 && !t.ipv6 {
        return Err(c.err("tunnel.ipv4", "terminate at least one outer family"));
    }
    let tunnel = TunnelHostConfig {
        tun_name: c.tun_name("tunnel.tun_name", &t.tun_name)?,
        tun_mtu: c.range("tunnel.mtu", t.mtu, 576, 9000)?,
        subnets: vsubnets,
        ipv4: t.ipv4,
        ipv6: t.ipv6,
        tun_offload: t.offload,
        ..TunnelHostConfig::default()
    };
    let l = &f.load;
    let load = LoadConfig {
        update_interval: Duration::from_millis(c.range(
            "load.update_interval_ms",
            l.update_interval_ms,
            20,
            3_600_000,
        )?),
        capacity: c.range("load.capacity", l.capacity, 1, u32::MAX)?,
        cpu_weight: c.cost("load.cpu_weight", l.cpu_weight)?,
        background: c.cost("load.background", l.background)?,
        background_file: l.background_file.as_ref().map(|p| c.resolve(p)),
    };
    let http_demo = match &f.http_demo {
        None => None,
        Some(h) => Some(HttpDemo {
            listen: h.listen,
            body: h.body.clone().unwrap_or_else(|| name.to_string()),
            max_connections: c.range("http_demo.max_connections", h.max_connections, 1, 65_536)?,
        }),
    };
    Ok(HostDaemonConfig {
        fast_path: FastPathChoice::from_file(&c, f.fast_path, &f.fast_path_links)?,
        site: Upstream::from_file(&c, "site", &f.site)?,
        tls: TlsFiles::from_file(&c, &f.tls, &f.security)?,
        subnets,
        tunnel,
        load,
        peer: f.session.peer(&c)?,
        stats: f
            .stats
            .as_ref()
            .map(|s| Stats::from_file(&c, s))
            .transpose()?,
        http_demo,
        recovery: match &f.recovery {
            Some(r) => HostRecovery::from_file(&c, r)?,
            None => None,
        },
        name,
    })
}
