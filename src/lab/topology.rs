//! The lab's nodes, names and addresses, and the namespaces, links and routes
//! that make its network.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::{LabPolicy, TUNNEL_MTU, VIP_SUBNET, VIP2_SUBNET, recovery};

/// A host server of the lab.
#[derive(Debug, Clone)]
pub(super) struct HostNode {
    /// `a1`, `a2`, `b1`, `b2`.
    pub(super) short: String,
    /// 1 (site a) or 2 (site b).
    pub(super) site: u8,
    /// 1 or 2 within its site.
    pub(super) index: u8,
}

impl HostNode {
    pub(super) fn name(&self) -> String {
        format!("{}.lab", self.short)
    }
    pub(super) fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.site, self.index, 2)
    }
    pub(super) fn site_side(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.site, self.index, 1)
    }
    pub(super) fn wan(&self) -> Ipv4Addr {
        Ipv4Addr::new(172, 16, 1, 10 * self.site + self.index)
    }
}

pub(super) fn site_letter(site: u8) -> char {
    if site == 1 { 'a' } else { 'b' }
}

pub(super) fn hosts() -> Vec<HostNode> {
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
pub(super) struct UpOptions {
    pub(super) prefix: String,
    pub(super) policy: LabPolicy,
    pub(super) loads: Vec<(String, f64)>,
    pub(super) shortcuts: bool,
    pub(super) flow_capacity: usize,
    pub(super) policy_module: Option<String>,
    pub(super) timeout: Duration,
    /// The failure-recovery topology and configuration.
    pub(super) recovery: bool,
    /// sys2 forwards packets of unknown flows to sys.
    pub(super) entry_router: bool,
    /// With `recovery`: hosts advertise stalled connections.
    pub(super) adverts: bool,
    /// Every daemon's `fast_path`.
    pub(super) fast_path: super::LabFastPath,
    /// Load reports, table updates, stats snapshots.
    pub(super) pace: super::LabPace,
    /// Every router's `engine_threads`.
    pub(super) engine_threads: u8,
}

pub(super) fn parse_loads(items: &[String]) -> Result<Vec<(String, f64)>> {
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

pub(super) fn ip(args: &[&str]) -> Result<()> {
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

pub(super) fn ns_set_sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    router_core::linux::in_netns(ns, || router_core::linux::sysctl::write(key, value))
        .with_context(|| format!("entering {ns}"))?
        .with_context(|| format!("{ns}: sysctl {key}={value}"))
}

pub(super) fn veth(a_ns: &str, a: &str, b_ns: &str, b: &str, mtu: Option<u16>) -> Result<()> {
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

pub(super) fn addr(ns: &str, dev: &str, cidr: &str) -> Result<()> {
    ip(&["-n", ns, "addr", "add", cidr, "dev", dev])
}

pub(super) fn route(ns: &str, dst: &str, via: &str) -> Result<()> {
    ip(&["-n", ns, "route", "add", dst, "via", via])
}

pub(super) struct Names {
    pub(super) client: String,
    pub(super) wan: String,
    pub(super) sys: String,
}

impl Names {
    pub(super) fn new(p: &str) -> Self {
        Self {
            client: format!("{p}-client"),
            wan: format!("{p}-wan"),
            sys: format!("{p}-sys"),
        }
    }
    pub(super) fn site(p: &str, site: u8) -> String {
        format!("{p}-site-{}", site_letter(site))
    }
    pub(super) fn host(p: &str, h: &HostNode) -> String {
        format!("{p}-{}", h.short)
    }
}

/// The namespaces of a lab, the recovery ones included when asked for.
pub(super) fn lab_namespaces(p: &str, with_recovery: bool) -> Vec<String> {
    let mut v = all_namespaces(p);
    if with_recovery {
        v.extend(recovery::namespaces(p));
    }
    v
}

pub(super) fn all_namespaces(p: &str) -> Vec<String> {
    let n = Names::new(p);
    let mut v = vec![n.client, n.wan, n.sys, Names::site(p, 1), Names::site(p, 2)];
    v.extend(hosts().iter().map(|h| Names::host(p, h)));
    v
}

/// TCP hash buckets of each lab namespace (`net.ipv4.tcp_child_ehash_entries`).
const CHILD_EHASH: &str = "16384";

/// Run `f` (which creates namespaces) with `net.ipv4.tcp_child_ehash_entries`
/// set, so each namespace gets a TCP hash table of its own, as each machine the
/// lab stands for has. Sharing the machine's (262,144 buckets here) made every
/// host's sock_diag dump walk all of it, whatever the host held: two thirds of
/// an idle host agent's CPU. An operator's own setting (non-zero) is kept, and
/// the old value is restored after.
fn with_own_tcp_hash<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    const KEY: &str = "net/ipv4/tcp_child_ehash_entries";
    let old = router_core::linux::sysctl::read(KEY).ok();
    let set = old.as_deref().map(str::trim) == Some("0")
        && router_core::linux::sysctl::write(KEY, CHILD_EHASH).is_ok();
    let r = f();
    if set {
        let _ = router_core::linux::sysctl::write(KEY, "0");
    }
    r
}

pub(super) fn network(p: &str, with_recovery: bool) -> Result<()> {
    let n = Names::new(p);
    with_own_tcp_hash(|| {
        for ns in lab_namespaces(p, with_recovery) {
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    })?;
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
    route(&n.client, VIP2_SUBNET, "172.16.0.1")?;
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
