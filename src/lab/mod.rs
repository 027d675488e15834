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
//! Every host serves the virtual subnets 192.200.0.0/24 (VIP 192.200.0.10) and
//! 192.200.1.0/24 (VIP 192.200.1.10, for a second subnet's policy) and runs
//! `pronto host run` with its demo HTTP server on port 80, answering with its
//! node name (`a1.lab`, ...). Clients reach the VIPs through the system SLR; hosts
//! answer straight back over the `wan` bridge (direct server return), so replies
//! never pass an SLR. Sites register with the system SLR, hosts with their site
//! SLR, all over mutual TLS with certificates from a lab CA made with exec-env's
//! `ca` functions. State lives in `--dir` (default /run/pronto-lab): `lab.toml`
//! (what `down` tears down), `ca/`, `conf/`, `logs/`, `stats/` (each daemon's
//! counters, rewritten every 100 ms) and `load/` (one number per host, added to
//! the load it advertises; write to it to steer a load-based policy).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Args, Subcommand, ValueEnum};

mod configs;
mod process;
mod recovery;
mod status;
mod topology;

use process::{down, up};
use status::status;
use topology::{UpOptions, parse_loads};

/// Default state directory.
const DEFAULT_DIR: &str = "/run/pronto-lab";
/// Default namespace prefix.
const DEFAULT_PREFIX: &str = "pl";
/// The lab's virtual subnet and the VIP clients use.
pub(crate) const VIP_SUBNET: &str = "192.200.0.0/24";
/// The VIP clients use.
pub(crate) const VIP: Ipv4Addr = Ipv4Addr::new(192, 200, 0, 10);
/// A second virtual subnet every host serves (a subnet of its own in every
/// router's table, to bind another module to).
pub(crate) const VIP2_SUBNET: &str = "192.200.1.0/24";
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

/// Which path forwards pinned flows in every daemon of the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LabFastPath {
    /// The eBPF fast path where the kernel takes it, else userspace.
    Auto,
    /// The eBPF fast path; a daemon that cannot start it fails.
    Bpf,
    /// Userspace only (the engine forwards every packet).
    Userspace,
}

impl LabFastPath {
    fn config_name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Bpf => "bpf",
            Self::Userspace => "userspace",
        }
    }
}

/// How often the lab's daemons report load, update their next-hop tables and
/// write their stats snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LabPace {
    /// Every 100 ms (table hold 1.5 s): loads and counters follow within a
    /// tenth of a second, what the test suites rely on.
    Fast,
    /// Every second (table hold 10 s), the daemons' own defaults: what an
    /// operator would run; the idle lab then costs what idle daemons cost.
    Normal,
}

impl LabPace {
    /// Load reports, table updates and stats snapshots, in ms.
    pub(super) fn interval_ms(self) -> u64 {
        match self {
            Self::Fast => 100,
            Self::Normal => 1000,
        }
    }

    /// How long a next hop's advertisement holds, in ms.
    pub(super) fn hold_ms(self) -> u64 {
        match self {
            Self::Fast => 1500,
            Self::Normal => 10_000,
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
        /// Which path forwards pinned flows in every router and host: the
        /// kernel's eBPF fast path (tc ingress) or the userspace engine.
        #[arg(long, value_enum, default_value_t = LabFastPath::Auto)]
        fast_path: LabFastPath,
        /// How often daemons report load, update tables and write stats.
        #[arg(long, value_enum, default_value_t = LabPace::Fast)]
        pace: LabPace,
        /// Engine threads of every router (its TUN gets as many queues).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=16))]
        engine_threads: u8,
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
            fast_path,
            pace,
            engine_threads,
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
                fast_path: *fast_path,
                pace: *pace,
                engine_threads: *engine_threads,
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::configs::{host_config, router_config, signed_module_path};
    use super::topology::{UpOptions, all_namespaces, hosts, parse_loads};
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
            fast_path: LabFastPath::Userspace,
            pace: LabPace::Fast,
            engine_threads: 1,
        };
        let p = dir.join("conf/x.toml");
        let parse = |text: &str| text.parse::<toml::Table>().unwrap();
        let sys = crate::config::parse_router_text(&p, &router_config(dir, &o, None)).unwrap();
        assert!(!sys.slr.shortcuts, "the top originates none");
        assert_eq!(
            sys.fast_path.mode,
            router_core::linux::fastpath::FastPathMode::Userspace
        );
        // --pace fast: what the test suites rely on.
        assert_eq!(sys.slr.table.interval, Duration::from_millis(100));
        assert_eq!(
            sys.stats.as_ref().map(|s| s.interval),
            Some(Duration::from_millis(100))
        );
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
