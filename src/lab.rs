//! `pronto lab up` / `pronto lab down` / `pronto lab status` (root): a namespace lab
//! of the whole hierarchy with real daemons, real TCP and a real HTTP server.
//!
//! ```text
//!                         +------------ {p}-sys: system SLR (sys.lab) ------------+
//!  {p}-client             |  client 172.16.0.1   tunnel endpoint 10.0.0.1 (lo)     |
//!   up 172.16.0.2 --------+  site-a 10.1.0.1                 site-b 10.2.0.1      |
//!   wan 172.16.1.1        +-------|---------------------------------|-------------+
//!     |                    {p}-site-a: site SLR (site-a.lab)  {p}-site-b: site SLR (site-b.lab)
//!     |                      up 10.1.0.2 (tunnel endpoint)      up 10.2.0.2
//!     |                      a1 10.1.1.1    a2 10.1.2.1         b1 10.2.1.1    b2 10.2.2.1
//!     |                        |              |                   |              |
//!     |                    {p}-a1          {p}-a2              {p}-b1         {p}-b2
//!     |                    up 10.1.1.2     up 10.1.2.2         up 10.2.1.2    up 10.2.2.2
//!     +-- {p}-wan bridge --wan .11 ---------wan .12 ------------wan .21 -------wan .22
//! ```
//!
//! Every host serves the virtual subnet 192.200.0.0/24 (VIP 192.200.0.10) and runs
//! `pronto host run` with its demo HTTP server on port 80, answering with its
//! node name (`a1.lab`, ...). Clients reach the VIPs through the system SLR; hosts
//! answer straight back over the `wan` bridge (direct server return), so replies
//! never pass an SLR. Sites register with the system SLR, hosts with their site
//! SLR, all over mutual TLS with certificates from a lab CA made with exec-env's
//! `ca` functions. State lives in `--dir` (default /run/pronto-lab): `lab.toml`
//! (what `down` tears down), `ca/`, `conf/`, `logs/`, `stats/` (each daemon's
//! counters, rewritten every 100 ms) and `load/` (one number per host, added to
//! the load it advertises; write to it to steer a load-based policy).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

mod recovery;

/// Default state directory.
const DEFAULT_DIR: &str = "/run/pronto-lab";
/// Default namespace prefix.
const DEFAULT_PREFIX: &str = "pl";
/// The lab's virtual subnet and the VIP clients use.
pub(crate) const VIP_SUBNET: &str = "192.200.0.0/24";
/// The VIP clients use.
pub(crate) const VIP: Ipv4Addr = Ipv4Addr::new(192, 200, 0, 10);
/// Signalling port of every router.
const SIGNAL_PORT: u16 = 7800;
/// MTU of the links tunnels cross: room for the 20-byte outer header.
const TUNNEL_MTU: u16 = 1600;
/// Where iproute2 keeps named namespaces.
const NETNS_DIR: &str = "/var/run/netns";

/// `pronto lab ...`.
#[derive(Debug, Args)]
pub(crate) struct LabArgs {
    #[command(subcommand)]
    command: LabCommand,
}

/// A router policy for the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LabPolicy {
    /// Lowest advertised load + route cost (the built-in default).
    LeastCost,
    /// Spread flows by a hash of the five-tuple.
    FlowHash,
}

impl LabPolicy {
    fn config_name(self) -> &'static str {
        match self {
            Self::LeastCost => "least-cost",
            Self::FlowHash => "flow-hash",
        }
    }
}

#[derive(Debug, Subcommand)]
enum LabCommand {
    /// Build the namespaces, certificates and configurations, start the daemons
    /// and wait until a client reaches the VIP.
    Up {
        /// State directory.
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
        /// Namespace name prefix (letters and digits, at most 8).
        #[arg(long, default_value = DEFAULT_PREFIX)]
        prefix: String,
        /// Policy of every router.
        #[arg(long, value_enum, default_value_t = LabPolicy::LeastCost)]
        policy: LabPolicy,
        /// Extra load of a host, e.g. `a1=0.5` (repeat; default 0).
        #[arg(long = "load", value_name = "HOST=LOAD")]
        loads: Vec<String>,
        /// Do not originate shortcuts at the sites (every packet then crosses
        /// both SLRs).
        #[arg(long)]
        no_shortcuts: bool,
        /// IPv4 flow table capacity of every router.
        #[arg(long, default_value_t = 16384)]
        flow_capacity: usize,
        /// Sign a shipped policy module with the lab CA and have every router
        /// load it from its configuration as the VIP subnet's policy
        /// (`least_load` or `consistent_hash`).
        #[arg(long, value_name = "NAME")]
        policy_module: Option<String>,
        /// Give up waiting for the lab after this many seconds.
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
        /// Add the failure-recovery topology (DESIGN.md §5): a hot spare of
        /// site-a on a shared segment, a second system SLR (sys2) the client can
        /// be rerouted to, WHOHAS neighbours, and advertisement keys for hosts and
        /// routers.
        #[arg(long)]
        recovery: bool,
        /// With --recovery: sys2 also sends each packet of a flow it does not
        /// know to sys, as a tunnel-entry router of sys's cluster would.
        #[arg(long, requires = "recovery")]
        entry_router: bool,
        /// With --recovery: hosts send no flow advertisements (to see what the
        /// other mechanisms recover alone).
        #[arg(long, requires = "recovery")]
        no_adverts: bool,
    },
    /// Kill one daemon with SIGKILL (recovery tests).
    Kill {
        /// State directory.
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
        /// The daemon (`sys`, `site-a`, `a1`, `spare-a`, ...).
        node: String,
        /// Also take every link of its namespace down first, as when the
        /// machine dies (its kernel then stops answering ARP and TCP).
        #[arg(long)]
        link_down: bool,
    },
    /// Kill one daemon with SIGKILL and start it again with the same
    /// configuration (its state is lost, its addresses stay).
    Restart {
        /// State directory.
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
        /// The daemon.
        node: String,
    },
    /// Stop the daemons and delete the namespaces (idempotent).
    Down {
        /// State directory.
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
        /// Namespace prefix to clean when no state file is left.
        #[arg(long, default_value = DEFAULT_PREFIX)]
        prefix: String,
    },
    /// Show the daemons and their main counters.
    Status {
        /// State directory.
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
    },
}

/// Run `pronto lab ...`.
pub(crate) fn run(args: &LabArgs) -> Result<()> {
    match &args.command {
        LabCommand::Up {
            dir,
            prefix,
            policy,
            loads,
            no_shortcuts,
            flow_capacity,
            policy_module,
            timeout_secs,
            recovery,
            entry_router,
            no_adverts,
        } => {
            need_root()?;
            let opts = UpOptions {
                prefix: prefix.clone(),
                policy: *policy,
                loads: parse_loads(loads)?,
                shortcuts: !no_shortcuts,
                flow_capacity: *flow_capacity,
                policy_module: policy_module.clone(),
                timeout: Duration::from_secs(*timeout_secs),
                recovery: *recovery,
                entry_router: *entry_router,
                adverts: !no_adverts,
            };
            up(dir, &opts)
        }
        LabCommand::Kill {
            dir,
            node,
            link_down,
        } => {
            need_root()?;
            recovery::kill(dir, node, *link_down)
        }
        LabCommand::Restart { dir, node } => {
            need_root()?;
            recovery::restart(dir, node)
        }
        LabCommand::Down { dir, prefix } => {
            need_root()?;
            down(dir, prefix)
        }
        LabCommand::Status { dir } => status(dir),
    }
}

fn need_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the lab needs root (network namespaces, TUN devices, raw sockets)");
    }
    Ok(())
}

// ----- topology -------------------------------------------------------------------

/// A host server of the lab.
#[derive(Debug, Clone)]
struct HostNode {
    /// `a1`, `a2`, `b1`, `b2`.
    short: String,
    /// 1 (site a) or 2 (site b).
    site: u8,
    /// 1 or 2 within its site.
    index: u8,
}

impl HostNode {
    fn name(&self) -> String {
        format!("{}.lab", self.short)
    }
    fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.site, self.index, 2)
    }
    fn site_side(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.site, self.index, 1)
    }
    fn wan(&self) -> Ipv4Addr {
        Ipv4Addr::new(172, 16, 1, 10 * self.site + self.index)
    }
}

fn site_letter(site: u8) -> char {
    if site == 1 { 'a' } else { 'b' }
}

fn hosts() -> Vec<HostNode> {
    let mut v = Vec::new();
    for site in 1..=2u8 {
        for index in 1..=2u8 {
            v.push(HostNode {
                short: format!("{}{index}", site_letter(site)),
                site,
                index,
            });
        }
    }
    v
}

#[derive(Debug, Clone)]
struct UpOptions {
    prefix: String,
    policy: LabPolicy,
    loads: Vec<(String, f64)>,
    shortcuts: bool,
    flow_capacity: usize,
    policy_module: Option<String>,
    timeout: Duration,
    /// The failure-recovery topology and configuration.
    recovery: bool,
    /// sys2 forwards packets of unknown flows to sys.
    entry_router: bool,
    /// With `recovery`: hosts advertise stalled connections.
    adverts: bool,
}

fn parse_loads(items: &[String]) -> Result<Vec<(String, f64)>> {
    let names: Vec<String> = hosts().into_iter().map(|h| h.short).collect();
    items
        .iter()
        .map(|s| {
            let (h, l) = s
                .split_once('=')
                .with_context(|| format!("--load {s}: write HOST=LOAD, e.g. a1=0.5"))?;
            if !names.iter().any(|n| n == h) {
                bail!("--load {s}: no host {h} (hosts: {})", names.join(", "));
            }
            let l: f64 = l
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite() && *v >= 0.0)
                .with_context(|| format!("--load {s}: the load must be a non-negative number"))?;
            Ok((h.to_owned(), l))
        })
        .collect()
}

/// What `lab down` needs, written by `lab up` before anything is created.
#[derive(Debug, Default, Serialize, Deserialize)]
struct LabState {
    prefix: String,
    namespaces: Vec<String>,
    daemons: Vec<DaemonState>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DaemonState {
    name: String,
    namespace: String,
    pid: u32,
    config: PathBuf,
    log: PathBuf,
    stats: PathBuf,
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join("lab.toml")
}

fn read_state(dir: &Path) -> Result<Option<LabState>> {
    let p = state_path(dir);
    match std::fs::read_to_string(&p) {
        Ok(t) => Ok(Some(toml::from_str(&t).with_context(|| {
            format!("{}: not a lab state file", p.display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

fn write_state(dir: &Path, s: &LabState) -> Result<()> {
    let p = state_path(dir);
    std::fs::write(&p, toml::to_string(s)?).with_context(|| format!("writing {}", p.display()))
}

// ----- shell helpers -------------------------------------------------------------

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn ns_set_sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    router_core::linux::in_netns(ns, || router_core::linux::sysctl::write(key, value))
        .with_context(|| format!("entering {ns}"))?
        .with_context(|| format!("{ns}: sysctl {key}={value}"))
}

fn veth(a_ns: &str, a: &str, b_ns: &str, b: &str, mtu: Option<u16>) -> Result<()> {
    ip(&[
        "link", "add", "name", a, "netns", a_ns, "type", "veth", "peer", "name", b, "netns", b_ns,
    ])?;
    for (ns, dev) in [(a_ns, a), (b_ns, b)] {
        if let Some(m) = mtu {
            ip(&["-n", ns, "link", "set", "dev", dev, "mtu", &m.to_string()])?;
        }
        ip(&["-n", ns, "link", "set", "dev", dev, "up"])?;
    }
    Ok(())
}

fn addr(ns: &str, dev: &str, cidr: &str) -> Result<()> {
    ip(&["-n", ns, "addr", "add", cidr, "dev", dev])
}

fn route(ns: &str, dst: &str, via: &str) -> Result<()> {
    ip(&["-n", ns, "route", "add", dst, "via", via])
}

// ----- up ---------------------------------------------------------------------

struct Names {
    client: String,
    wan: String,
    sys: String,
}

impl Names {
    fn new(p: &str) -> Self {
        Self {
            client: format!("{p}-client"),
            wan: format!("{p}-wan"),
            sys: format!("{p}-sys"),
        }
    }
    fn site(p: &str, site: u8) -> String {
        format!("{p}-site-{}", site_letter(site))
    }
    fn host(p: &str, h: &HostNode) -> String {
        format!("{p}-{}", h.short)
    }
}

/// The namespaces of a lab, the recovery ones included when asked for.
fn lab_namespaces(p: &str, with_recovery: bool) -> Vec<String> {
    let mut v = all_namespaces(p);
    if with_recovery {
        v.extend(recovery::namespaces(p));
    }
    v
}

fn all_namespaces(p: &str) -> Vec<String> {
    let n = Names::new(p);
    let mut v = vec![n.client, n.wan, n.sys, Names::site(p, 1), Names::site(p, 2)];
    v.extend(hosts().iter().map(|h| Names::host(p, h)));
    v
}

fn up(dir: &Path, o: &UpOptions) -> Result<()> {
    let p = &o.prefix;
    if p.is_empty() || p.len() > 8 || !p.bytes().all(|b| b.is_ascii_alphanumeric()) {
        bail!("--prefix {p:?}: use 1-8 letters or digits");
    }
    if read_state(dir)?.is_some() {
        bail!(
            "a lab is already up in {}; run `pronto lab down --dir {}` first",
            dir.display(),
            dir.display()
        );
    }
    for ns in lab_namespaces(p, o.recovery) {
        if Path::new(NETNS_DIR).join(&ns).exists() {
            bail!(
                "namespace {ns} exists; run `pronto lab down --prefix {p}` (or choose another --prefix)"
            );
        }
    }
    for sub in ["ca", "conf", "logs", "stats", "load"] {
        let d = dir.join(sub);
        if d.exists() {
            std::fs::remove_dir_all(&d).with_context(|| format!("clearing {}", d.display()))?;
        }
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    let mut state = LabState {
        prefix: p.clone(),
        namespaces: lab_namespaces(p, o.recovery),
        daemons: Vec::new(),
    };
    // Written first, so `down` can clean up whatever part of `up` succeeded.
    write_state(dir, &state)?;
    let result = build(dir, o, &mut state);
    if result.is_err() {
        eprintln!("lab up failed; logs are in {}", dir.join("logs").display());
    }
    result
}

fn build(dir: &Path, o: &UpOptions, state: &mut LabState) -> Result<()> {
    let p = &o.prefix;
    let started = Instant::now();
    certificates(dir)?;
    if let Some(m) = &o.policy_module {
        sign_shipped_module(dir, m)?;
    }
    if o.recovery {
        recovery::prepare(dir)?;
    }
    network(p, o.recovery)?;
    for h in hosts() {
        let load = o
            .loads
            .iter()
            .rev()
            .find(|(n, _)| *n == h.short)
            .map_or(0.0, |(_, l)| *l);
        std::fs::write(dir.join("load").join(&h.short), format!("{load}\n"))?;
    }
    let exe = std::env::current_exe().context("locating the pronto binary")?;
    let n = Names::new(p);
    let mut start = |name: &str, ns: &str, kind: &str, text: String| -> Result<()> {
        let config = dir.join("conf").join(format!("{name}.toml"));
        std::fs::write(&config, text)?;
        let log = dir.join("logs").join(format!("{name}.log"));
        let d = spawn_daemon(&exe, name, ns, kind, &config, &log, dir)?;
        state.daemons.push(d);
        write_state(dir, state)
    };
    start("sys", &n.sys, "router", router_config(dir, o, None))?;
    for site in 1..=2 {
        let name = format!("site-{}", site_letter(site));
        start(
            &name,
            &Names::site(p, site),
            "router",
            router_config(dir, o, Some(site)),
        )?;
    }
    for h in hosts() {
        start(
            &h.short,
            &Names::host(p, &h),
            "host",
            host_config(dir, o, &h),
        )?;
    }
    if o.recovery {
        start(
            "spare-a",
            &recovery::spare_namespace(p),
            "router",
            recovery::spare_config(dir, o),
        )?;
        start(
            "sys2",
            &recovery::sys2_namespace(p),
            "router",
            recovery::sys2_config(dir, o),
        )?;
    }
    wait_ready(dir, state, o.timeout)?;
    if o.recovery {
        recovery::wait_ready(state, o.timeout)?;
    }
    println!(
        "lab up in {:.1} s: {} namespaces, {} daemons, policy {}, shortcuts {}",
        started.elapsed().as_secs_f64(),
        state.namespaces.len(),
        state.daemons.len(),
        o.policy_module
            .as_deref()
            .map_or(o.policy.config_name().to_owned(), |m| format!(
                "module {m} (signed)"
            )),
        if o.shortcuts { "on" } else { "off" },
    );
    println!("  try:    ip netns exec {} curl http://{VIP}/", n.client);
    println!("  status: pronto lab status --dir {}", dir.display());
    println!("  down:   pronto lab down --dir {}", dir.display());
    Ok(())
}

fn certificates(dir: &Path) -> Result<()> {
    let ca_dir = dir.join("ca");
    exec_env::ca::init_ca(&ca_dir, &exec_env::ca::CaOptions::new("Pronto lab CA", 30))
        .context("creating the lab CA")?;
    let mut names = vec![
        "sys.lab".to_owned(),
        "site-a.lab".into(),
        "site-b.lab".into(),
    ];
    names.extend(hosts().iter().map(HostNode::name));
    for name in names {
        exec_env::ca::issue_peer_cert(&ca_dir, &name)
            .with_context(|| format!("issuing the certificate of {name}"))?;
    }
    Ok(())
}

/// Shipped policy modules the lab can load (compiled in, signed at `lab up`).
const LAB_MODULES: [(&str, &[u8], &str); 2] = [
    (
        "least_load",
        include_bytes!("../slr-policy-wasm/modules/least_load.wasm"),
        include_str!("../slr-policy-wasm/manifests/least_load.toml"),
    ),
    (
        "consistent_hash",
        include_bytes!("../slr-policy-wasm/modules/consistent_hash.wasm"),
        include_str!("../slr-policy-wasm/manifests/consistent_hash.toml"),
    ),
];

fn signed_module_path(dir: &Path, name: &str) -> PathBuf {
    dir.join("conf").join(format!("{name}.signed.wasm"))
}

/// Sign a shipped module with the lab CA's code-signing signer, as
/// `pronto module sign` would.
fn sign_shipped_module(dir: &Path, name: &str) -> Result<()> {
    let Some((_, wasm, manifest)) = LAB_MODULES.iter().find(|(n, _, _)| *n == name) else {
        let names: Vec<&str> = LAB_MODULES.iter().map(|(n, _, _)| *n).collect();
        bail!("--policy-module {name}: choose one of {}", names.join(", "));
    };
    let ca = exec_env::ca::CaPaths::in_dir(&dir.join("ca"));
    let key = exec_env::sign::ModuleSigningKey::from_pem_file(&ca.signer_key)
        .context("the lab signer key")?;
    let chain = exec_env::sign::chain_from_pem_file(&ca.signer_cert).context("the lab signer")?;
    let manifest = exec_env::format::parse_manifest(manifest)
        .with_context(|| format!("manifest of {name}"))?;
    let unsigned = exec_env::format::embed_manifest(wasm, &manifest)
        .with_context(|| format!("embedding the manifest of {name}"))?;
    let signed = exec_env::sign::sign_module(&unsigned, &key, chain)
        .with_context(|| format!("signing {name}"))?;
    let out = signed_module_path(dir, name);
    std::fs::write(&out, signed).with_context(|| format!("writing {}", out.display()))
}

fn network(p: &str, with_recovery: bool) -> Result<()> {
    let n = Names::new(p);
    for ns in lab_namespaces(p, with_recovery) {
        ip(&["netns", "add", &ns])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
    }
    // Client <-> system SLR, and the direct-return bridge.
    veth(&n.client, "up", &n.sys, "client", None)?;
    addr(&n.client, "up", "172.16.0.2/24")?;
    addr(&n.sys, "client", "172.16.0.1/24")?;
    ip(&["-n", &n.wan, "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", &n.wan, "link", "set", "br0", "up"])?;
    veth(&n.client, "wan", &n.wan, "client", None)?;
    ip(&[
        "-n", &n.wan, "link", "set", "dev", "client", "master", "br0",
    ])?;
    addr(&n.client, "wan", "172.16.1.1/24")?;
    route(&n.client, VIP_SUBNET, "172.16.0.1")?;
    // The system SLR's tunnel endpoint (bad-input tests send tunnels to it).
    route(&n.client, "10.0.0.0/8", "172.16.0.1")?;
    addr(&n.sys, "lo", "10.0.0.1/32")?;
    // VIP-sourced replies arrive on `wan` while the VIP route points at `up`.
    for dev in ["all", "default", "up", "wan"] {
        ns_set_sysctl(&n.client, &format!("net/ipv4/conf/{dev}/rp_filter"), "0")?;
    }
    for site in 1..=2u8 {
        let s = Names::site(p, site);
        let letter = site_letter(site);
        if with_recovery && site == 1 {
            // Site a, its spare and its hosts share one segment.
            recovery::wire_site_a(p)?;
            continue;
        }
        veth(
            &n.sys,
            &format!("site-{letter}"),
            &s,
            "up",
            Some(TUNNEL_MTU),
        )?;
        addr(
            &n.sys,
            &format!("site-{letter}"),
            &format!("10.{site}.0.1/24"),
        )?;
        addr(&s, "up", &format!("10.{site}.0.2/24"))?;
        // Shortcuts tunnel from the system SLR straight to hosts, through the site.
        route(
            &n.sys,
            &format!("10.{site}.0.0/16"),
            &format!("10.{site}.0.2"),
        )?;
        route(&s, "default", &format!("10.{site}.0.1"))?;
    }
    for h in hosts() {
        let s = Names::site(p, h.site);
        let hn = Names::host(p, &h);
        if with_recovery && h.site == 1 {
            recovery::wire_host(p, &h)?;
        } else {
            veth(&s, &h.short, &hn, "up", Some(TUNNEL_MTU))?;
            addr(&s, &h.short, &format!("{}/24", h.site_side()))?;
        }
        addr(&hn, "up", &format!("{}/24", h.addr()))?;
        route(&hn, "default", &h.site_side().to_string())?;
        veth(&hn, "wan", &n.wan, &h.short, None)?;
        ip(&[
            "-n", &n.wan, "link", "set", "dev", &h.short, "master", "br0",
        ])?;
        addr(&hn, "wan", &format!("{}/24", h.wan()))?;
        // Direct server return: replies to clients leave over the bridge.
        route(&hn, "172.16.0.0/24", "172.16.1.1")?;
        ns_set_sysctl(&hn, "net/ipv4/conf/all/rp_filter", "0")?;
    }
    if with_recovery {
        recovery::wire_sys2(p)?;
    }
    Ok(())
}

fn tls_section(dir: &Path, name: &str) -> String {
    let ca = dir.join("ca");
    format!(
        "[tls]\ntrust_anchors = [{:?}]\ncert = {:?}\nkey = {:?}\n",
        ca.join("ca.pem"),
        ca.join(format!("peer-{name}.pem")),
        ca.join(format!("peer-{name}.key")),
    )
}

const SESSION: &str = "[session]\nkeepalive_ms = 500\ndead_ms = 2000\nhello_timeout_ms = 3000\n";

/// `site` None: the system SLR.
fn router_config(dir: &Path, o: &UpOptions, site: Option<u8>) -> String {
    let (level, name, local, upstream, downstream) = match site {
        None => (
            "system",
            "sys.lab".to_owned(),
            "10.0.0.1".to_owned(),
            String::new(),
            ["site-a.lab", "site-b.lab"]
                .iter()
                .zip(1..)
                .map(|(n, i)| {
                    // With a spare on site a, the session's source address says
                    // nothing about the tunnel endpoint: name it.
                    let tunnel = if o.recovery {
                        format!("tunnel = \"10.{i}.0.2\"\n")
                    } else {
                        String::new()
                    };
                    format!("[[downstream]]\nname = \"{n}\"\nroute_cost = 0.0\n{tunnel}")
                })
                .collect::<String>(),
        ),
        Some(s) => (
            "site",
            format!("site-{}.lab", site_letter(s)),
            format!("10.{s}.0.2"),
            format!(
                "[upstream]\naddress = \"10.{s}.0.1:{SIGNAL_PORT}\"\nname = \"sys.lab\"\nreconnect_ms = 100\n"
            ),
            hosts()
                .iter()
                .filter(|h| h.site == s)
                .map(|h| {
                    format!(
                        "[[downstream]]\nname = \"{}\"\nroute_cost = 0.0\ntunnel = \"{}\"\n",
                        h.name(),
                        h.addr()
                    )
                })
                .collect(),
        ),
    };
    let stats = dir
        .join("stats")
        .join(format!("{}.toml", name.trim_end_matches(".lab")));
    format!(
        "# Generated by `pronto lab up`.\nlevel = \"{level}\"\nname = \"{name}\"\nlisten = \"0.0.0.0:{SIGNAL_PORT}\"\n\n\
         [tunnel]\nlocal_v4 = \"{local}\"\nmtu = {TUNNEL_MTU}\n\n{tls}\n\
         [table]\ninterval_ms = 100\nhold_ms = 1500\n\n\
         [flows]\ncapacity_v4 = {flow_capacity}\ncapacity_v6 = 64\nsyn_timeout_ms = 3000\nestablished_timeout_ms = 60000\n\n\
         [policy]\nname = \"{policy}\"\nshortcuts = {shortcuts}\n\n{SESSION}\n\
         [stats]\nfile = {stats:?}\ninterval_ms = 100\n\n{modules}{recovery}{upstream}\n{downstream}",
        tls = tls_section(dir, &name),
        policy = o.policy.config_name(),
        shortcuts = o.shortcuts && site.is_some(),
        recovery = if o.recovery {
            recovery::router_section(dir, site)
        } else {
            String::new()
        },
        flow_capacity = o.flow_capacity,
        modules = match &o.policy_module {
            Some(m) => format!(
                "[modules]\ntrust_anchors = [{:?}]\nfiles = [{:?}]\nsubnet = \"{VIP_SUBNET}\"\npolicy = \"{m}\"\n\n",
                dir.join("ca").join("ca.pem"),
                signed_module_path(dir, m),
            ),
            None => String::new(),
        },
    )
}

fn host_config(dir: &Path, o: &UpOptions, h: &HostNode) -> String {
    let name = h.name();
    let mut text = format!(
        "# Generated by `pronto lab up`.\nname = \"{name}\"\nsubnets = [\"{VIP_SUBNET}\"]\n\n\
         [site]\naddress = \"{site}:{SIGNAL_PORT}\"\nname = \"site-{letter}.lab\"\nreconnect_ms = 100\n\n{tls}\n\
         [load]\nupdate_interval_ms = 100\ncapacity = 100\ncpu_weight = 0.0\nbackground_file = {load:?}\n\n\
         [http_demo]\nlisten = \"0.0.0.0:80\"\nbody = \"{name}\"\n\n{SESSION}\n\
         [stats]\nfile = {stats:?}\ninterval_ms = 100\n",
        site = h.site_side(),
        letter = site_letter(h.site),
        tls = tls_section(dir, &name),
        load = dir.join("load").join(&h.short),
        stats = dir.join("stats").join(format!("{}.toml", h.short)),
    );
    if o.recovery && o.adverts {
        text.push_str(&recovery::host_section(dir));
    }
    text
}

fn spawn_daemon(
    exe: &Path,
    name: &str,
    ns: &str,
    kind: &str,
    config: &Path,
    log: &Path,
    dir: &Path,
) -> Result<DaemonState> {
    use std::os::unix::process::CommandExt;
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(exe)
        .args([kind, "run", "--config"])
        .arg(config)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        // Plain text in the log files.
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // Its own process group: a Ctrl-C at the terminal of `lab up` does not
        // reach the daemons; `lab down` stops them.
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let stats = dir.join("stats").join(format!("{}.toml", name));
    Ok(DaemonState {
        name: name.to_owned(),
        namespace: ns.to_owned(),
        pid: child.id(),
        config: config.to_owned(),
        log: log.to_owned(),
        stats,
    })
}

/// A daemon's stats snapshot, parsed loosely (missing means not written yet).
fn stats_of(d: &DaemonState) -> Option<toml::Table> {
    std::fs::read_to_string(&d.stats).ok()?.parse().ok()
}

fn up_candidates(t: &toml::Table) -> usize {
    t.get("subnets")
        .and_then(|s| s.as_array())
        .and_then(|subs| {
            subs.iter()
                .find(|s| s.get("subnet").and_then(|v| v.as_str()) == Some(VIP_SUBNET))
        })
        .and_then(|s| s.get("candidates"))
        .and_then(|c| c.as_array())
        .map_or(0, |c| {
            c.iter()
                .filter(|x| x.get("up").and_then(toml::Value::as_bool) == Some(true))
                .count()
        })
}

fn alive(pid: u32) -> bool {
    // A zombie (exited, not yet reaped by its new parent) is not alive.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|st| st != "Z"))
        })
        .unwrap_or(false)
}

/// Every router offers both next hops for the VIP subnet, then a real request
/// from the client namespace succeeds.
fn wait_ready(dir: &Path, state: &LabState, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let client = Names::new(&state.prefix).client;
    loop {
        if let Some(dead) = state.daemons.iter().find(|d| !alive(d.pid)) {
            bail!(
                "{} exited during start-up; see {}:\n{}",
                dead.name,
                dead.log.display(),
                tail(&dead.log, 20)
            );
        }
        let routers_ready = state
            .daemons
            .iter()
            .filter(|d| d.name == "sys" || d.name.starts_with("site-"))
            .all(|d| stats_of(d).is_some_and(|t| up_candidates(&t) == 2));
        if routers_ready && http_get(&client, VIP, Duration::from_secs(2)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let mut why = String::new();
            for d in &state.daemons {
                why.push_str(&format!(
                    "--- {} ({})\n{}\n",
                    d.name,
                    d.log.display(),
                    tail(&d.log, 5)
                ));
            }
            bail!(
                "the lab in {} was not ready within {} s (every router must offer 2 next hops \
                 for {VIP_SUBNET} and http://{VIP}/ must answer from {client}):\n{why}",
                dir.display(),
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One HTTP/1.0 GET from inside namespace `ns`; returns the body.
fn http_get(ns: &str, vip: Ipv4Addr, timeout: Duration) -> Result<String> {
    router_core::linux::in_netns(ns, || -> Result<String> {
        let mut s = TcpStream::connect_timeout(&SocketAddr::from((vip, 80)), timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.write_all(b"GET / HTTP/1.0\r\nHost: lab\r\n\r\n")?;
        let mut resp = Vec::new();
        s.take(64 * 1024).read_to_end(&mut resp)?;
        let text = String::from_utf8_lossy(&resp);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .context("no HTTP header in the answer")?;
        if !head.starts_with("HTTP/1.1 200") {
            bail!("answer: {head}");
        }
        Ok(body.trim().to_owned())
    })
    .with_context(|| format!("entering {ns}"))?
}

// ----- down -------------------------------------------------------------------

fn down(dir: &Path, prefix: &str) -> Result<()> {
    let state = read_state(dir)?;
    let prefix = state
        .as_ref()
        .map_or(prefix, |s| s.prefix.as_str())
        .to_owned();
    let mut stopped = 0;
    if let Some(s) = &state {
        let ours: Vec<&DaemonState> = s.daemons.iter().filter(|d| is_our_daemon(d)).collect();
        for d in &ours {
            signal(d.pid, nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while ours.iter().any(|d| alive(d.pid)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        for d in &ours {
            if alive(d.pid) {
                eprintln!(
                    "{} (pid {}) did not stop on SIGTERM; killing it",
                    d.name, d.pid
                );
                signal(d.pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
        stopped = ours.len();
    }
    let mut deleted = 0;
    let mut names: Vec<String> = state.map(|s| s.namespaces).unwrap_or_default();
    names.extend(lab_namespaces(&prefix, true));
    names.sort();
    names.dedup();
    for ns in names {
        if Path::new(NETNS_DIR).join(&ns).exists() {
            ip(&["netns", "del", &ns])?;
            deleted += 1;
        }
    }
    for sub in ["ca", "conf"] {
        let d = dir.join(sub);
        if d.exists() {
            std::fs::remove_dir_all(&d).with_context(|| format!("removing {}", d.display()))?;
        }
    }
    let sp = state_path(dir);
    if sp.exists() {
        std::fs::remove_file(&sp).with_context(|| format!("removing {}", sp.display()))?;
    }
    println!(
        "lab down: {stopped} daemons stopped, {deleted} namespaces deleted (logs and stats kept in {})",
        dir.display()
    );
    Ok(())
}

/// The pid still runs the daemon we started (pids are reused).
fn is_our_daemon(d: &DaemonState) -> bool {
    let Ok(cmd) = std::fs::read(format!("/proc/{}/cmdline", d.pid)) else {
        return false;
    };
    let config = d.config.as_os_str().as_encoded_bytes();
    cmd.split(|b| *b == 0).any(|arg| arg == config) && alive(d.pid)
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    if let Ok(p) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), sig);
    }
}

// ----- status -----------------------------------------------------------------

fn status(dir: &Path) -> Result<()> {
    // A closed pipe (`| head`) ends the listing quietly.
    let mut out = std::io::stdout().lock();
    let Some(state) = read_state(dir)? else {
        let _ = writeln!(out, "no lab in {}", dir.display());
        return Ok(());
    };
    let get = |t: &toml::Table, a: &str, b: &str| {
        t.get(a)
            .and_then(|x| x.get(b))
            .and_then(toml::Value::as_integer)
            .unwrap_or(0)
    };
    for d in &state.daemons {
        let up = if alive(d.pid) { "running" } else { "STOPPED" };
        let Some(t) = stats_of(d) else {
            let _ = writeln!(out, "{:<7} pid {:<7} {up:<8} (no stats yet)", d.name, d.pid);
            continue;
        };
        if t.contains_key("engine") {
            let _ = writeln!(
                out,
                "{:<7} pid {:<7} {up:<8} packets {:>8}  new flows {:>6}  pinned {:>8}  drops {:>6}  shortcuts in/out {}/{}  next hops up {}  rss {} KiB",
                d.name,
                d.pid,
                get(&t, "engine", "packets"),
                get(&t, "engine", "forwarded_new"),
                get(&t, "engine", "forwarded_pinned"),
                get(&t, "engine", "dropped_total"),
                get(&t, "control", "shortcuts_installed"),
                get(&t, "control", "shortcuts_originated"),
                up_candidates(&t),
                t.get("rss_kib")
                    .and_then(toml::Value::as_integer)
                    .unwrap_or(0),
            );
        } else {
            let load = t
                .get("agent")
                .and_then(|a| a.get("load"))
                .and_then(toml::Value::as_float)
                .unwrap_or(0.0);
            let _ = writeln!(
                out,
                "{:<7} pid {:<7} {up:<8} http requests {:>6}  tunnel packets {:>8}  drops {:>4}  load {load:.2}",
                d.name,
                d.pid,
                t.get("http_requests")
                    .and_then(toml::Value::as_integer)
                    .unwrap_or(0),
                get(&t, "tunnel", "injected"),
                get(&t, "tunnel", "bad_tunnel")
                    + get(&t, "tunnel", "not_served")
                    + get(&t, "tunnel", "nested"),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_configurations_validate() {
        let dir = Path::new("/run/pronto-lab-test");
        let o = UpOptions {
            prefix: "t".into(),
            policy: LabPolicy::FlowHash,
            loads: vec![],
            shortcuts: true,
            flow_capacity: 16384,
            policy_module: Some("consistent_hash".into()),
            timeout: Duration::from_secs(1),
            recovery: false,
            entry_router: false,
            adverts: true,
        };
        let p = dir.join("conf/x.toml");
        let parse = |text: &str| text.parse::<toml::Table>().unwrap();
        let sys = crate::config::parse_router_text(&p, &router_config(dir, &o, None)).unwrap();
        assert!(!sys.slr.shortcuts, "the top originates none");
        let m = sys.modules.unwrap();
        assert_eq!(m.policy.as_deref(), Some("consistent_hash"));
        assert_eq!(m.files, vec![signed_module_path(dir, "consistent_hash")]);
        assert_eq!(sys.downstream.len(), 2);
        let site = crate::config::parse_router_text(&p, &router_config(dir, &o, Some(2))).unwrap();
        assert!(site.slr.shortcuts);
        assert_eq!(site.upstream.unwrap().address.to_string(), "10.2.0.1:7800");
        assert_eq!(site.downstream.len(), 2);
        for h in hosts() {
            let text = host_config(dir, &o, &h);
            assert!(parse(&text).contains_key("http_demo"));
            let c = crate::config::parse_host_text(&p, &text).unwrap();
            assert_eq!(c.name.to_string(), h.name());
        }
    }

    #[test]
    fn load_arguments_are_checked() {
        assert_eq!(
            parse_loads(&["a1=0.5".into()]).unwrap(),
            vec![("a1".into(), 0.5)]
        );
        assert!(parse_loads(&["c9=1".into()]).is_err());
        assert!(parse_loads(&["a1=-1".into()]).is_err());
        assert!(parse_loads(&["a1".into()]).is_err());
    }

    #[test]
    fn topology_addresses_are_distinct() {
        let mut seen = std::collections::BTreeSet::new();
        for h in hosts() {
            for a in [h.addr(), h.site_side(), h.wan()] {
                assert!(seen.insert(a), "{a} twice");
            }
        }
        assert_eq!(all_namespaces("pl").len(), 9);
    }
}
