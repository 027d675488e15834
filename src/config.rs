//! Configuration files of the daemons (`pronto router run`, `pronto host run`).
//!
//! TOML with unknown keys refused (`deny_unknown_fields`); every value is checked
//! before anything starts, and an error names the file and the field
//! (`tunnel.mtu`, `downstream[1].route_cost`, ...). Relative paths are relative to
//! the configuration file's directory.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use router_core::VirtualSubnet;
use router_core::engine::{EngineConfig, MAX_CANDIDATES};
use router_core::flow::{FlowConfig, Timeouts};
use router_core::linux::{DataplaneConfig, HostConfig as TunnelHostConfig, TunnelPath};
use router_core::policy::{Candidate, Level};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use signaling::{NodeName, PeerConfig, SlrConfig, SubnetPrefix, TableConfig, TlsIdentity};

/// Largest configuration file read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Largest PEM file read (a certificate chain or a key).
const MAX_PEM_BYTES: u64 = 1 << 20;
/// Most static subnets and downstream entries.
const MAX_ENTRIES: usize = 4096;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML, an unknown key, or a value of the wrong type (the message
    /// names the key and the line).
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        #[source]
        source: toml::de::Error,
    },
    /// A value out of range or inconsistent with another.
    #[error("{path}: {field}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The field, as a TOML path.
        field: String,
        /// What is wrong and what to do.
        reason: String,
    },
}

/// Collects the file name into every error of one validation.
struct Check<'a> {
    path: &'a Path,
}

impl Check<'_> {
    fn err(&self, field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            field: field.into(),
            reason: reason.into(),
        }
    }

    fn name(&self, field: &str, s: &str) -> Result<NodeName, ConfigError> {
        NodeName::new(s).map_err(|e| self.err(field, e.to_string()))
    }

    fn subnet(&self, field: &str, s: &str) -> Result<VirtualSubnet, ConfigError> {
        s.parse::<VirtualSubnet>()
            .map_err(|e| self.err(field, format!("{e} (write ADDR/LEN with host bits clear)")))
    }

    fn cost(&self, field: &str, v: f64) -> Result<f64, ConfigError> {
        if v.is_finite() && v >= 0.0 {
            Ok(v)
        } else {
            Err(self.err(field, format!("{v} must be finite and non-negative")))
        }
    }

    fn range<T: PartialOrd + std::fmt::Display + Copy>(
        &self,
        field: &str,
        v: T,
        lo: T,
        hi: T,
    ) -> Result<T, ConfigError> {
        if v < lo || v > hi {
            Err(self.err(field, format!("{v} is outside {lo}..={hi}")))
        } else {
            Ok(v)
        }
    }

    fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.path
                .parent()
                .map_or_else(|| p.to_owned(), |d| d.join(p))
        }
    }

    fn tun_name(&self, field: &str, s: &str) -> Result<String, ConfigError> {
        let ok = !s.is_empty()
            && s.len() <= 15
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(s.to_owned())
        } else {
            Err(self.err(
                field,
                format!("{s:?} is not an interface name (1-15 of [A-Za-z0-9_-])"),
            ))
        }
    }
}

fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, std::io::Error> {
    use std::io::Read;
    let f = std::fs::File::open(path)?;
    let mut buf = Vec::new();
    f.take(limit + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {limit} bytes"),
        ));
    }
    Ok(buf)
}

fn parse_file<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ConfigError> {
    let bytes = read_bounded(path, MAX_CONFIG_BYTES).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|_| ConfigError::Invalid {
        path: path.to_owned(),
        field: "(file)".into(),
        reason: "not UTF-8 text".into(),
    })?;
    parse_str(path, &text)
}

fn parse_str<T: for<'de> Deserialize<'de>>(path: &Path, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// Validate a router configuration given as text (`path` names it in errors).
#[cfg(test)]
pub(crate) fn parse_router_text(path: &Path, text: &str) -> Result<RouterConfig, ConfigError> {
    router_from_file(path, parse_str(path, text)?)
}

/// Validate a host configuration given as text (`path` names it in errors).
#[cfg(test)]
pub(crate) fn parse_host_text(path: &Path, text: &str) -> Result<HostDaemonConfig, ConfigError> {
    host_from_file(path, parse_str(path, text)?)
}

// ----- shared sections --------------------------------------------------------

/// `level = "network" | "system" | "site"`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum LevelName {
    Network,
    System,
    Site,
}

impl From<LevelName> for Level {
    fn from(l: LevelName) -> Self {
        match l {
            LevelName::Network => Self::Network,
            LevelName::System => Self::System,
            LevelName::Site => Self::Site,
        }
    }
}

/// `[tls]`: our identity and whom we trust.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    /// CA certificates (PEM) a peer's chain must reach; at least one.
    trust_anchors: Vec<PathBuf>,
    /// Our certificate chain, PEM, end-entity first.
    cert: PathBuf,
    /// Our private key, PKCS#8 (or SEC1/PKCS#1) PEM.
    key: PathBuf,
}

/// The TLS files, resolved; loaded when the daemon starts.
#[derive(Debug, Clone)]
pub(crate) struct TlsFiles {
    /// CA certificates.
    pub(crate) trust_anchors: Vec<PathBuf>,
    /// Our chain.
    pub(crate) cert: PathBuf,
    /// Our key.
    pub(crate) key: PathBuf,
}

impl TlsFiles {
    fn from_file(c: &Check<'_>, t: &TlsFile) -> Result<Self, ConfigError> {
        if t.trust_anchors.is_empty() {
            return Err(c.err(
                "tls.trust_anchors",
                "name at least one CA certificate; refusing to run unauthenticated",
            ));
        }
        Ok(Self {
            trust_anchors: t.trust_anchors.iter().map(|p| c.resolve(p)).collect(),
            cert: c.resolve(&t.cert),
            key: c.resolve(&t.key),
        })
    }

    /// Read and parse the PEM files; errors name the field and the file.
    pub(crate) fn load(&self) -> anyhow::Result<(TlsIdentity, Vec<CertificateDer<'static>>)> {
        use anyhow::Context;
        let pem = |field: &str, p: &Path| {
            read_bounded(p, MAX_PEM_BYTES)
                .with_context(|| format!("{field}: cannot read {}", p.display()))
        };
        let mut anchors = Vec::new();
        for (i, p) in self.trust_anchors.iter().enumerate() {
            let field = format!("tls.trust_anchors[{i}]");
            let bytes = pem(&field, p)?;
            let before = anchors.len();
            for c in CertificateDer::pem_slice_iter(&bytes) {
                anchors.push(c.with_context(|| format!("{field}: bad PEM in {}", p.display()))?);
            }
            if anchors.len() == before {
                anyhow::bail!("{field}: no certificate in {}", p.display());
            }
        }
        let bytes = pem("tls.cert", &self.cert)?;
        let cert_chain = CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("tls.cert: bad PEM in {}", self.cert.display()))?;
        if cert_chain.is_empty() {
            anyhow::bail!("tls.cert: no certificate in {}", self.cert.display());
        }
        let bytes = pem("tls.key", &self.key)?;
        let key = PrivateKeyDer::from_pem_slice(&bytes)
            .with_context(|| format!("tls.key: no private key in {}", self.key.display()))?;
        Ok((TlsIdentity { cert_chain, key }, anchors))
    }
}

/// `[upstream]` (router) or `[site]` (host): the level above.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamFile {
    /// Its signalling address.
    address: SocketAddr,
    /// The name its certificate must carry.
    name: String,
    /// First reconnect delay (doubles up to 8 s).
    #[serde(default = "default_reconnect_ms")]
    reconnect_ms: u64,
}

fn default_reconnect_ms() -> u64 {
    250
}

/// The level above, validated.
#[derive(Debug, Clone)]
pub(crate) struct Upstream {
    /// Signalling address.
    pub(crate) address: SocketAddr,
    /// Expected certificate name.
    pub(crate) name: NodeName,
    /// First reconnect delay.
    pub(crate) reconnect: Duration,
}

impl Upstream {
    fn from_file(c: &Check<'_>, section: &str, u: &UpstreamFile) -> Result<Self, ConfigError> {
        Ok(Self {
            address: u.address,
            name: c.name(&format!("{section}.name"), &u.name)?,
            reconnect: Duration::from_millis(c.range(
                &format!("{section}.reconnect_ms"),
                u.reconnect_ms,
                10,
                60_000,
            )?),
        })
    }
}

/// `[session]`: signalling timers.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct SessionFile {
    keepalive_ms: u64,
    dead_ms: u64,
    hello_timeout_ms: u64,
}

impl Default for SessionFile {
    fn default() -> Self {
        Self {
            keepalive_ms: 1000,
            dead_ms: 3000,
            hello_timeout_ms: 5000,
        }
    }
}

impl SessionFile {
    fn peer(&self, c: &Check<'_>) -> Result<PeerConfig, ConfigError> {
        let keepalive = c.range("session.keepalive_ms", self.keepalive_ms, 50, 600_000)?;
        let dead = c.range("session.dead_ms", self.dead_ms, 100, 3_600_000)?;
        if dead <= keepalive {
            return Err(c.err(
                "session.dead_ms",
                format!("{dead} must exceed session.keepalive_ms ({keepalive})"),
            ));
        }
        let hello = c.range(
            "session.hello_timeout_ms",
            self.hello_timeout_ms,
            100,
            600_000,
        )?;
        Ok(PeerConfig {
            keepalive_interval: Duration::from_millis(keepalive),
            dead_interval: Duration::from_millis(dead),
            hello_timeout: Duration::from_millis(hello),
            ..PeerConfig::default()
        })
    }
}

/// `[stats]`: a counters snapshot written periodically.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatsFile {
    file: PathBuf,
    #[serde(default = "default_stats_ms")]
    interval_ms: u64,
}

fn default_stats_ms() -> u64 {
    500
}

/// Where and how often to write the counters snapshot.
#[derive(Debug, Clone)]
pub(crate) struct Stats {
    /// The file (replaced atomically).
    pub(crate) file: PathBuf,
    /// Interval.
    pub(crate) interval: Duration,
}

impl Stats {
    fn from_file(c: &Check<'_>, s: &StatsFile) -> Result<Self, ConfigError> {
        Ok(Self {
            file: c.resolve(&s.file),
            interval: Duration::from_millis(c.range(
                "stats.interval_ms",
                s.interval_ms,
                20,
                3_600_000,
            )?),
        })
    }
}

// ----- router -----------------------------------------------------------------

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

/// `[modules]`: signed policy modules loaded into an operator environment.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModulesFile {
    trust_anchors: Vec<PathBuf>,
    files: Vec<PathBuf>,
    subnet: String,
    policy: Option<String>,
    cost: Option<String>,
}

/// Most module files loaded at start.
const MAX_MODULE_FILES: usize = 64;

/// Signed modules to load at start, validated.
#[derive(Debug, Clone)]
pub(crate) struct ModulesConfig {
    /// CA certificates module signers must chain to.
    pub(crate) trust_anchors: Vec<PathBuf>,
    /// Signed module files, installed in order (a later version of a name
    /// replaces an earlier one).
    pub(crate) files: Vec<PathBuf>,
    /// The virtual subnet the module handles govern.
    pub(crate) subnet: VirtualSubnet,
    /// Module choosing next hops for new flows in `subnet`.
    pub(crate) policy: Option<String>,
    /// Module computing F and G (for every subnet).
    pub(crate) cost: Option<String>,
}

impl ModulesConfig {
    fn from_file(c: &Check<'_>, m: &ModulesFile) -> Result<Self, ConfigError> {
        if m.trust_anchors.is_empty() {
            return Err(c.err(
                "modules.trust_anchors",
                "name at least one CA certificate of module signers (modules are refused without)",
            ));
        }
        if m.files.is_empty() || m.files.len() > MAX_MODULE_FILES {
            return Err(c.err(
                "modules.files",
                format!("give 1..={MAX_MODULE_FILES} signed module files"),
            ));
        }
        let name = |field: &str, v: &Option<String>| -> Result<Option<String>, ConfigError> {
            match v {
                Some(n) if n.is_empty() || n.len() > 64 => {
                    Err(c.err(field, format!("{n:?} is not a module name (1-64 bytes)")))
                }
                other => Ok(other.clone()),
            }
        };
        let policy = name("modules.policy", &m.policy)?;
        let cost = name("modules.cost", &m.cost)?;
        if policy.is_none() && cost.is_none() {
            return Err(c.err(
                "modules",
                "name the module to use as `policy` and/or `cost`, or remove [modules]",
            ));
        }
        Ok(Self {
            trust_anchors: m.trust_anchors.iter().map(|p| c.resolve(p)).collect(),
            files: m.files.iter().map(|p| c.resolve(p)).collect(),
            subnet: c.subnet("modules.subnet", &m.subnet)?,
            policy,
            cost,
        })
    }
}

// ----- [management] (the operators' HTTPS API, src/mgmt.rs) ---------------------

/// `[management]`: the management API over mutual TLS.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManagementFile {
    listen: SocketAddr,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    trust_anchors: Option<Vec<PathBuf>>,
    #[serde(default = "default_mgmt_connections")]
    max_connections: usize,
    #[serde(default = "default_mgmt_timeout_ms")]
    request_timeout_ms: u64,
}

fn default_mgmt_connections() -> usize {
    64
}

fn default_mgmt_timeout_ms() -> u64 {
    30_000
}

/// A validated `[management]` section; TLS files default to `[tls]`'s.
#[derive(Debug, Clone)]
pub(crate) struct Management {
    /// Where the API listens.
    pub(crate) listen: SocketAddr,
    /// Server certificate chain, PEM.
    pub(crate) cert: PathBuf,
    /// Server key, PEM.
    pub(crate) key: PathBuf,
    /// CA certificates a client's certificate must chain to.
    pub(crate) trust_anchors: Vec<PathBuf>,
    /// Connections served at once; more wait in the kernel's backlog.
    pub(crate) max_connections: usize,
    /// Longest a connection may take for its handshake or one request.
    pub(crate) request_timeout: Duration,
}

impl Management {
    fn from_file(c: &Check<'_>, m: &ManagementFile, tls: &TlsFiles) -> Result<Self, ConfigError> {
        let trust_anchors = match &m.trust_anchors {
            Some(a) if a.is_empty() => {
                return Err(c.err(
                    "management.trust_anchors",
                    "name at least one CA certificate, or omit the key to use tls.trust_anchors",
                ));
            }
            Some(a) => a.iter().map(|p| c.resolve(p)).collect(),
            None => tls.trust_anchors.clone(),
        };
        Ok(Self {
            listen: m.listen,
            cert: m
                .cert
                .as_ref()
                .map_or_else(|| tls.cert.clone(), |p| c.resolve(p)),
            key: m
                .key
                .as_ref()
                .map_or_else(|| tls.key.clone(), |p| c.resolve(p)),
            trust_anchors,
            max_connections: c.range("management.max_connections", m.max_connections, 1, 1024)?,
            request_timeout: Duration::from_millis(c.range(
                "management.request_timeout_ms",
                m.request_timeout_ms,
                100,
                600_000,
            )?),
        })
    }
}

/// `pronto router run` configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouterFile {
    level: LevelName,
    name: String,
    tunnel: TunnelFile,
    tls: TlsFile,
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
    stats: Option<StatsFile>,
    modules: Option<ModulesFile>,
    shaping: Option<ShapingFile>,
    management: Option<ManagementFile>,
    recovery: Option<crate::recovery::RecoveryFile>,
    spare: Option<crate::recovery::SpareFile>,
}

/// `[shaping]`: bandwidth shares of return traffic (by VIP source prefix) on an
/// egress link, realised as an HTB hierarchy in the kernel (DESIGN.md §7).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShapingFile {
    link: String,
    rate_mbit: u64,
    default_class: Option<u16>,
    class: Vec<ShapingClassFile>,
}

/// `[[shaping.class]]`: one share.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShapingClassFile {
    id: u16,
    weight: u32,
    #[serde(default)]
    subnets: Vec<String>,
}

/// A validated `[shaping]` section.
#[derive(Debug, Clone)]
pub(crate) struct Shaping {
    /// Egress link the tree is applied to.
    pub(crate) link: String,
    /// The share tree.
    pub(crate) tree: router_core::linux::tc::ShareTreeConfig,
}

/// Most classes in `[shaping]`.
const MAX_SHAPING_CLASSES: usize = 256;

impl Shaping {
    fn from_file(c: &Check<'_>, f: &ShapingFile) -> Result<Self, ConfigError> {
        use router_core::linux::tc::{ShareClassConfig, ShareTreeConfig};
        let link = c.tun_name("shaping.link", &f.link)?;
        if f.rate_mbit == 0 || f.rate_mbit > 1_000_000 {
            return Err(c.err("shaping.rate_mbit", "must be 1 to 1000000 (Mbit/s)"));
        }
        if f.class.is_empty() || f.class.len() > MAX_SHAPING_CLASSES {
            return Err(c.err(
                "shaping.class",
                format!("give 1 to {MAX_SHAPING_CLASSES} [[shaping.class]] entries"),
            ));
        }
        let mut tree = ShareTreeConfig::new(f.rate_mbit * 1_000_000);
        for (i, class) in f.class.iter().enumerate() {
            if class.weight == 0 {
                return Err(c.err(format!("shaping.class[{i}].weight"), "must be at least 1"));
            }
            tree = tree.with_class(ShareClassConfig::new(class.id, class.weight));
            for (j, text) in class.subnets.iter().enumerate() {
                let subnet = c.subnet(&format!("shaping.class[{i}].subnets[{j}]"), text)?;
                tree = tree.with_filter(subnet, class.id);
            }
        }
        if let Some(d) = f.default_class {
            tree = tree.with_default(d);
        }
        tree.validate()
            .map_err(|e| c.err("shaping", e.to_string()))?;
        Ok(Self { link, tree })
    }
}

fn default_route_cost() -> f64 {
    1.0
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
    /// Counters snapshot.
    pub(crate) stats: Option<Stats>,
    /// Signed policy modules.
    pub(crate) modules: Option<ModulesConfig>,
    /// Kernel bandwidth shares on an egress link.
    pub(crate) shaping: Option<Shaping>,
    /// The management API (`None`: not served).
    pub(crate) management: Option<Management>,
    /// Failure recovery: advertisement keys, WHOHAS neighbours, spares.
    pub(crate) recovery: Option<crate::recovery::RecoverySettings>,
    /// This router is a hot spare.
    pub(crate) spare: Option<crate::recovery::SpareSettings>,
}

/// Read and validate a router configuration file.
pub(crate) fn load_router(path: &Path) -> Result<RouterConfig, ConfigError> {
    let f: RouterFile = parse_file(path)?;
    router_from_file(path, f)
}

fn router_from_file(path: &Path, f: RouterFile) -> Result<RouterConfig, ConfigError> {
    let c = Check { path };
    let level = Level::from(f.level);
    let name = c.name("name", &f.name)?;
    if f.tunnel.local_v4.is_none() && f.tunnel.local_v6.is_none() {
        return Err(c.err(
            "tunnel.local_v4",
            "set local_v4 and/or local_v6: the tunnel endpoint address (assigned to a local interface)",
        ));
    }
    let mtu = c.range("tunnel.mtu", f.tunnel.mtu, 576, 9000)?;
    let ttl = c.range("tunnel.ttl", f.tunnel.ttl, 1, 255)?;
    let tun_name = c.tun_name("tunnel.tun_name", &f.tunnel.tun_name)?;
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
    if f.downstream.len() > MAX_ENTRIES {
        return Err(c.err("downstream", format!("more than {MAX_ENTRIES} entries")));
    }
    let mut downstream = BTreeMap::new();
    for (i, d) in f.downstream.iter().enumerate() {
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
    if f.static_subnets.len() > MAX_ENTRIES {
        return Err(c.err("static_subnets", format!("more than {MAX_ENTRIES} entries")));
    }
    let mut static_subnets = Vec::new();
    for (i, s) in f.static_subnets.iter().enumerate() {
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
    let t = &f.table;
    let interval = c.range("table.interval_ms", t.interval_ms, 10, 3_600_000)?;
    let hold = c.range("table.hold_ms", t.hold_ms, 20, 86_400_000)?;
    if hold <= interval {
        return Err(c.err(
            "table.hold_ms",
            format!("{hold} must exceed table.interval_ms ({interval}) and the lower level's update interval"),
        ));
    }
    let table = TableConfig {
        interval: Duration::from_millis(interval),
        hold_time: Duration::from_millis(hold),
        max_peers: c.range("table.max_peers", t.max_peers, 1, MAX_CANDIDATES)?,
        max_subnets: c.range("table.max_subnets", t.max_subnets, 1, 1 << 20)?,
    };
    let fl = &f.flows;
    let ms = |field: &str, v: u64| -> Result<Duration, ConfigError> {
        Ok(Duration::from_millis(c.range(field, v, 100, 86_400_000)?))
    };
    let flows = FlowConfig {
        capacity_v4: c.range("flows.capacity_v4", fl.capacity_v4, 8, 1 << 26)?,
        capacity_v6: c.range("flows.capacity_v6", fl.capacity_v6, 8, 1 << 24)?,
        max_next_hops: c.range("flows.max_next_hops", fl.max_next_hops, 1, 1 << 20)?,
        timeouts: Timeouts {
            syn: ms("flows.syn_timeout_ms", fl.syn_timeout_ms)?,
            established: ms("flows.established_timeout_ms", fl.established_timeout_ms)?,
            closing: ms("flows.closing_timeout_ms", fl.closing_timeout_ms)?,
            udp: ms("flows.udp_timeout_ms", fl.udp_timeout_ms)?,
            ..Timeouts::default()
        },
    };
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
            tunnel_mtu: usize::from(mtu),
            tunnel_ttl: ttl,
            flows,
            max_subnets: table.max_subnets + static_subnets.len(),
            ..EngineConfig::default()
        },
        tun_name,
        tunnel_path: match f.tunnel.path {
            PathName::Auto => TunnelPath::Auto,
            PathName::Userspace => TunnelPath::Userspace,
            PathName::Kernel => TunnelPath::Kernel,
        },
        // Shortcuts need each newly pinned flow reported by the data path.
        new_flow_queue: if slr.shortcuts || mirrors { 4096 } else { 0 },
        ..DataplaneConfig::default()
    };
    let tls = TlsFiles::from_file(&c, &f.tls)?;
    let management = f
        .management
        .as_ref()
        .map(|m| Management::from_file(&c, m, &tls))
        .transpose()?;
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
        stats: f
            .stats
            .as_ref()
            .map(|s| Stats::from_file(&c, s))
            .transpose()?,
        modules: f
            .modules
            .as_ref()
            .map(|m| ModulesConfig::from_file(&c, m))
            .transpose()?,
        shaping: f
            .shaping
            .as_ref()
            .map(|s| Shaping::from_file(&c, s))
            .transpose()?,
        management,
        recovery,
        spare,
    })
}

// ----- host -------------------------------------------------------------------

/// `[tunnel]` of a host.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct HostTunnelFile {
    tun_name: String,
    mtu: u16,
    ipv4: bool,
    ipv6: bool,
}

impl Default for HostTunnelFile {
    fn default() -> Self {
        Self {
            tun_name: "pronto-host0".into(),
            mtu: 1500,
            ipv4: true,
            ipv6: false,
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
struct HostFile {
    name: String,
    site: UpstreamFile,
    tls: TlsFile,
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
}

/// Read and validate a host configuration file.
pub(crate) fn load_host(path: &Path) -> Result<HostDaemonConfig, ConfigError> {
    let f: HostFile = parse_file(path)?;
    host_from_file(path, f)
}

fn host_from_file(path: &Path, f: HostFile) -> Result<HostDaemonConfig, ConfigError> {
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
        site: Upstream::from_file(&c, "site", &f.site)?,
        tls: TlsFiles::from_file(&c, &f.tls)?,
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

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTER: &str = r#"
level = "site"
name = "site-a.lab"
listen = "0.0.0.0:7800"
default_route_cost = 0.5

[tunnel]
local_v4 = "10.1.0.2"
mtu = 1600

[tls]
trust_anchors = ["ca.pem"]
cert = "peer.pem"
key = "/abs/peer.key"

[upstream]
address = "10.1.0.1:7800"
name = "sys.lab"

[[downstream]]
name = "a1.site-a.lab"
route_cost = 0.25

[[downstream]]
name = "a2.site-a.lab"
tunnel = "10.1.2.2"

[[static_subnets]]
subnet = "198.51.100.0/24"
next_hops = [{ address = "10.9.9.9", load = 0.1 }]

[table]
interval_ms = 200
hold_ms = 2000

[flows]
capacity_v4 = 16384

[policy]
name = "flow-hash"

[modules]
trust_anchors = ["ca.pem"]
files = ["least_load.signed.wasm"]
subnet = "192.200.0.0/16"
policy = "least_load"
"#;

    fn router(text: &str) -> Result<RouterConfig, ConfigError> {
        let p = Path::new("/etc/pronto/router.toml");
        router_from_file(p, parse_str(p, text)?)
    }

    fn host(text: &str) -> Result<HostDaemonConfig, ConfigError> {
        let p = Path::new("/etc/pronto/host.toml");
        host_from_file(p, parse_str(p, text)?)
    }

    fn err_text(r: Result<impl std::fmt::Debug, ConfigError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn shaping_validates_and_names_bad_fields() {
        let ok = format!(
            "{ROUTER}\n[shaping]\nlink = \"eth1\"\nrate_mbit = 100\ndefault_class = 16\n\
             [[shaping.class]]\nid = 16\nweight = 20\nsubnets = [\"192.200.0.0/24\"]\n\
             [[shaping.class]]\nid = 32\nweight = 80\n"
        );
        let c = router(&ok).unwrap();
        let sh = c.shaping.unwrap();
        assert_eq!(sh.link, "eth1");
        let shares = sh.tree.leaf_shares().unwrap();
        assert!((shares[&16] - 0.2).abs() < 1e-9 && (shares[&32] - 0.8).abs() < 1e-9);
        let zero_rate = ok.replace("rate_mbit = 100", "rate_mbit = 0");
        assert!(err_text(router(&zero_rate)).contains("shaping.rate_mbit"));
        let bad_subnet = ok.replace("192.200.0.0/24", "192.200.0.1/24");
        assert!(err_text(router(&bad_subnet)).contains("shaping.class[0].subnets[0]"));
        let zero_weight = ok.replace("weight = 80", "weight = 0");
        assert!(err_text(router(&zero_weight)).contains("shaping.class[1].weight"));
        let unknown_default = ok.replace("default_class = 16", "default_class = 99");
        assert!(err_text(router(&unknown_default)).contains("shaping"));
        assert!(router(ROUTER).unwrap().shaping.is_none());
    }

    #[test]
    fn a_full_router_file_validates() {
        let c = router(ROUTER).unwrap();
        assert_eq!(c.level, Level::Site);
        assert_eq!(c.name.as_str(), "site-a.lab");
        assert_eq!(
            c.dataplane.engine.local_v4,
            Some(Ipv4Addr::new(10, 1, 0, 2))
        );
        assert_eq!(c.dataplane.engine.tunnel_mtu, 1600);
        assert_eq!(c.dataplane.engine.flows.capacity_v4, 16384);
        assert!(c.slr.shortcuts, "site level originates shortcuts");
        assert!(c.dataplane.new_flow_queue > 0);
        assert_eq!(c.slr.table.interval, Duration::from_millis(200));
        assert_eq!(c.policy, PolicyName::FlowHash);
        assert_eq!(c.upstream.as_ref().unwrap().name.as_str(), "sys.lab");
        let a1 = NodeName::new("a1.site-a.lab").unwrap();
        let a2 = NodeName::new("a2.site-a.lab").unwrap();
        assert_eq!(c.downstream[&a1].route_cost, 0.25);
        assert_eq!(c.downstream[&a2].route_cost, 0.5, "default_route_cost");
        assert_eq!(c.downstream[&a2].tunnel, Some("10.1.2.2".parse().unwrap()));
        assert_eq!(c.static_subnets[0].1[0].load, 0.1);
        assert_eq!(
            c.tls.trust_anchors,
            vec![PathBuf::from("/etc/pronto/ca.pem")]
        );
        assert_eq!(c.tls.key, PathBuf::from("/abs/peer.key"));
        let m = c.modules.unwrap();
        assert_eq!(
            m.files,
            vec![PathBuf::from("/etc/pronto/least_load.signed.wasm")]
        );
        assert_eq!(m.policy.as_deref(), Some("least_load"));
        assert_eq!(m.cost, None);
    }

    #[test]
    fn router_errors_name_the_field() {
        let cases: &[(&str, &str, &str)] = &[
            ("mtu = 1600", "mtu = 100", "tunnel.mtu"),
            ("local_v4 = \"10.1.0.2\"", "", "tunnel.local_v4"),
            ("name = \"site-a.lab\"", "name = \"not a name\"", "name"),
            (
                "route_cost = 0.25",
                "route_cost = -1.0",
                "downstream[0].route_cost",
            ),
            (
                "name = \"a2.site-a.lab\"",
                "name = \"a1.site-a.lab\"",
                "downstream[1].name",
            ),
            (
                "198.51.100.0/24",
                "198.51.100.1/24",
                "static_subnets[0].subnet",
            ),
            ("hold_ms = 2000", "hold_ms = 100", "table.hold_ms"),
            (
                "trust_anchors = [\"ca.pem\"]\nfiles",
                "trust_anchors = []\nfiles",
                "modules.trust_anchors",
            ),
            ("policy = \"least_load\"", "", "modules"),
            (
                "subnet = \"192.200.0.0/16\"",
                "subnet = \"192.200.0.0\"",
                "modules.subnet",
            ),
            (
                "trust_anchors = [\"ca.pem\"]",
                "trust_anchors = []",
                "tls.trust_anchors",
            ),
            ("level = \"site\"", "level = \"network\"", "upstream"),
            (
                "capacity_v4 = 16384",
                "capacity_v4 = 0",
                "flows.capacity_v4",
            ),
        ];
        for (from, to, field) in cases {
            assert!(ROUTER.contains(from), "{from}");
            let text = ROUTER.replacen(from, to, 1);
            let e = err_text(router(&text));
            assert!(e.contains(field), "{field}: {e}");
            assert!(e.contains("/etc/pronto/router.toml"), "{e}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_types_are_refused_with_their_name() {
        let e = err_text(router(&ROUTER.replace("[flows]", "[flows]\ncapacity = 3")));
        assert!(e.contains("capacity"), "{e}");
        assert!(e.contains("unknown field"), "{e}");
        let e = err_text(router(&ROUTER.replace("\"flow-hash\"", "\"random\"")));
        assert!(e.contains("random"), "{e}");
        let e = err_text(router(&ROUTER.replace("\"0.0.0.0:7800\"", "\"nowhere\"")));
        assert!(e.contains("listen") || e.contains("line 4"), "{e}");
        let e = err_text(router("level = \"site\"\n"));
        assert!(e.contains("missing field"), "{e}");
    }

    const HOST: &str = r#"
name = "a1.site-a.lab"
subnets = ["192.200.0.0/24"]

[site]
address = "10.1.1.1:7800"
name = "site-a.lab"

[tls]
trust_anchors = ["ca.pem"]
cert = "a1.pem"
key = "a1.key"

[load]
update_interval_ms = 200
capacity = 10
cpu_weight = 0.0
background_file = "load-a1"

[http_demo]
listen = "0.0.0.0:80"
"#;

    #[test]
    fn a_host_file_validates_and_errors_name_the_field() {
        let c = host(HOST).unwrap();
        assert_eq!(c.subnets.len(), 1);
        assert_eq!(c.load.capacity, 10);
        assert_eq!(
            c.load.background_file,
            Some(PathBuf::from("/etc/pronto/load-a1"))
        );
        let demo = c.http_demo.unwrap();
        assert_eq!(demo.body, "a1.site-a.lab");
        let e = err_text(host(&HOST.replace("192.200.0.0/24", "192.200.0.0/40")));
        assert!(e.contains("subnets[0]"), "{e}");
        let e = err_text(host(&HOST.replace("capacity = 10", "capacity = 0")));
        assert!(e.contains("load.capacity"), "{e}");
        let e = err_text(host(&HOST.replace("name = \"site-a.lab\"", "name = \"-\"")));
        assert!(e.contains("site.name"), "{e}");
        let e = err_text(host(&HOST.replace("[load]", "[load]\ncpu = 1")));
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn host_recovery_validates_and_errors_name_the_field() {
        assert!(host(HOST).unwrap().recovery.is_none());
        let ok = format!(
            "{HOST}\n[recovery]\nadvert_keys = \"advert.keys\"\nkey_id = 7\nstall_after_ms = 500\n\
             server_addresses = [\"10.1.2.2\", \"2001:db8::2\"]\n"
        );
        let r = host(&ok).unwrap().recovery.unwrap();
        assert_eq!(r.advert_keys, PathBuf::from("/etc/pronto/advert.keys"));
        assert_eq!(r.key_id, 7);
        assert_eq!(r.progress.stall_after, Duration::from_millis(500));
        assert_eq!(r.progress.readvertise_after, Duration::from_secs(1));
        assert_eq!(r.scan_interval, Duration::from_millis(200));
        assert_eq!(r.server_addresses.len(), 2);
        let off = format!("{HOST}\n[recovery]\nenabled = false\n");
        assert!(host(&off).unwrap().recovery.is_none());
        let e = err_text(host(&format!("{HOST}\n[recovery]\nkey_id = 1\n")));
        assert!(e.contains("recovery.advert_keys"), "{e}");
        let e = err_text(host(&ok.replace("key_id = 7\n", "")));
        assert!(e.contains("recovery.key_id"), "{e}");
        let e = err_text(host(
            &ok.replace("stall_after_ms = 500", "stall_after_ms = 0"),
        ));
        assert!(e.contains("recovery.stall_after_ms"), "{e}");
        let e = err_text(host(&ok.replace("2001:db8::2", "10.1.2.3")));
        assert!(e.contains("recovery.server_addresses"), "{e}");
        let e = err_text(host(&ok.replace("10.1.2.2", "0.0.0.0")));
        assert!(e.contains("recovery.server_addresses"), "{e}");
        let e = err_text(host(&format!("{ok}max_adverts_per_sec = 0\n")));
        assert!(e.contains("recovery.max_adverts_per_sec"), "{e}");
    }

    #[test]
    fn management_defaults_to_the_tls_files_and_refuses_bad_values() {
        assert!(router(ROUTER).unwrap().management.is_none());
        let ok = format!("{ROUTER}\n[management]\nlisten = \"127.0.0.1:7900\"\n");
        let m = router(&ok).unwrap().management.unwrap();
        assert_eq!(m.listen, "127.0.0.1:7900".parse().unwrap());
        assert_eq!(m.key, PathBuf::from("/abs/peer.key"));
        assert_eq!(m.trust_anchors, vec![PathBuf::from("/etc/pronto/ca.pem")]);
        assert_eq!(m.max_connections, 64);
        let own = format!("{ok}cert = \"mgmt.pem\"\ntrust_anchors = [\"ops-ca.pem\"]\n");
        let m = router(&own).unwrap().management.unwrap();
        assert_eq!(m.cert, PathBuf::from("/etc/pronto/mgmt.pem"));
        assert_eq!(
            m.trust_anchors,
            vec![PathBuf::from("/etc/pronto/ops-ca.pem")]
        );
        let e = err_text(router(&format!("{ok}trust_anchors = []\n")));
        assert!(e.contains("management.trust_anchors"), "{e}");
        let e = err_text(router(&format!("{ok}max_connections = 0\n")));
        assert!(e.contains("management.max_connections"), "{e}");
        let e = err_text(router(&format!("{ok}port = 1\n")));
        assert!(e.contains("port"), "{e}");
    }
}
