//! Building a hierarchy: network SLR (+ its cluster's tunnel entry router) →
//! system SLRs → site SLRs → host servers, plus clients.
//!
//! Addresses: network SLR 10.0.0.1, entry router 10.0.0.2, system `i` 10.i'.0.1,
//! site `j` of system `i` 10.i'.j'.1, host `h` 10.i'.j'.(h+10) (primes are 1-based),
//! clients 172.16.x.y. Names follow the same shape under `pronto.test`.

use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use router_core::engine::EngineConfig;
use router_core::flow::FlowConfig;
use router_core::policy::LeastCost;
use router_core::policy::Level;
use router_core::time::Instant;
use router_core::tunnel::IpIpTunnel;
use signaling::node::{Node as RouterNodeCore, NodeConfig, SpareConfig};
use signaling::{FollowTable, RecoveryScope};
use signaling::{HostAgent, HostConfig, HostError, NodeName, SlrConfig, SubnetPrefix, TableConfig};
use std::sync::Arc;

use super::recovery::{HostRecovery, RouterRecovery, SimRecovery};
use super::{
    ClientNode, EntryNode, Event, HostNode, HostServerStats, Kind, Node, NodeId, RouterNode,
    SimCert, SimConfig, SimStats, SplitMix64, UpLink, role_of,
};
use super::{SIM_EPOCH_UNIX_MS, Sim, node_name};

/// A certificate authority of the modelled PKI. Every node trusts `CaId(0)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct CaId(pub u32);

/// Uplink delays of the location tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delays {
    /// Client to the network core.
    pub client: Duration,
    /// Entry router to the network SLR.
    pub entry: Duration,
    /// System SLR to the network SLR.
    pub system: Duration,
    /// Site SLR to its system SLR.
    pub site: Duration,
    /// Host server to its site SLR.
    pub host: Duration,
}

impl Default for Delays {
    fn default() -> Self {
        Self {
            client: Duration::from_millis(10),
            entry: Duration::from_micros(200),
            system: Duration::from_millis(5),
            site: Duration::from_millis(2),
            host: Duration::from_micros(100),
        }
    }
}

/// One host server.
#[derive(Debug, Clone, PartialEq)]
pub struct HostSpec {
    /// Virtual subnets it serves.
    pub subnets: Vec<SubnetPrefix>,
    /// Connections at load 1.0.
    pub capacity: u32,
    /// Load from other work.
    pub background_load: f64,
    /// Route cost from its site SLR.
    pub route_cost: f64,
}

/// One host site.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteSpec {
    /// Route cost from its system SLR.
    pub route_cost: f64,
    /// Its host servers.
    pub hosts: Vec<HostSpec>,
    /// Issuer of the site SLR's certificate (`CaId(0)` is trusted).
    pub issuer: CaId,
    /// The name the site claims in its Hello, if not its certificate's.
    pub claimed_name: Option<String>,
}

/// One AS with its system SLR.
#[derive(Debug, Clone, PartialEq)]
pub struct SystemSpec {
    /// Route cost from the network SLR.
    pub route_cost: f64,
    /// Its sites.
    pub sites: Vec<SiteSpec>,
}

/// The whole hierarchy.
#[derive(Debug, Clone, PartialEq)]
pub struct HierarchySpec {
    /// The ASes.
    pub systems: Vec<SystemSpec>,
    /// Number of clients.
    pub clients: usize,
    /// Link delays.
    pub delays: Delays,
}

impl HierarchySpec {
    /// `systems` ASes of `sites` sites of `hosts` hosts, every host serving
    /// `subnets`, idle, capacity 1000, all route costs zero.
    pub fn uniform(systems: usize, sites: usize, hosts: usize, subnets: &[SubnetPrefix]) -> Self {
        let host = HostSpec {
            subnets: subnets.to_vec(),
            capacity: 1000,
            background_load: 0.0,
            route_cost: 0.0,
        };
        let site = SiteSpec {
            route_cost: 0.0,
            hosts: vec![host; hosts],
            issuer: CaId(0),
            claimed_name: None,
        };
        Self {
            systems: vec![
                SystemSpec {
                    route_cost: 0.0,
                    sites: vec![site; sites],
                };
                systems
            ],
            clients: 16,
            delays: Delays::default(),
        }
    }
}

/// Node ids of a built hierarchy, indexed like the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// The network SLR.
    pub network: NodeId,
    /// The tunnel entry router of the network cluster.
    pub entry: NodeId,
    /// System SLRs.
    pub systems: Vec<NodeId>,
    /// Site SLRs per system.
    pub sites: Vec<Vec<NodeId>>,
    /// Host servers per site per system.
    pub hosts: Vec<Vec<Vec<NodeId>>>,
    /// Clients.
    pub clients: Vec<NodeId>,
}

impl Hierarchy {
    /// Every host with its (system, site, host) indices.
    pub fn all_hosts(&self) -> impl Iterator<Item = (usize, usize, usize, NodeId)> + '_ {
        self.hosts.iter().enumerate().flat_map(|(i, sites)| {
            sites.iter().enumerate().flat_map(move |(j, hosts)| {
                hosts.iter().enumerate().map(move |(h, &id)| (i, j, h, id))
            })
        })
    }

    /// Every site SLR with its (system, site) indices.
    pub fn all_sites(&self) -> impl Iterator<Item = (usize, usize, NodeId)> + '_ {
        self.sites
            .iter()
            .enumerate()
            .flat_map(|(i, s)| s.iter().enumerate().map(move |(j, &id)| (i, j, id)))
    }
}

/// Why a hierarchy or a workload could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TopologyError {
    /// More of something than the address plan holds.
    #[error("too many {what} for the address plan")]
    TooMany {
        /// What.
        what: &'static str,
    },
    /// A name is not a DNS name.
    #[error("{name:?} is not a valid node name")]
    BadName {
        /// The name.
        name: String,
    },
    /// A host's configuration was refused.
    #[error("host configuration: {0}")]
    Host(#[from] HostError),
    /// The node is not a client.
    #[error("node {} is not a client", node.0)]
    NotAClient {
        /// The node.
        node: NodeId,
    },
    /// A client used all its source ports.
    #[error("client {} has no source port left", node.0)]
    PortsExhausted {
        /// The node.
        node: NodeId,
    },
}

fn octet(i: usize, limit: usize, what: &'static str) -> Result<u8, TopologyError> {
    if i >= limit {
        return Err(TopologyError::TooMany { what });
    }
    u8::try_from(i + 1).map_err(|_| TopologyError::TooMany { what })
}

pub(super) struct NewNode {
    pub(super) name: NodeName,
    pub(super) claimed: NodeName,
    pub(super) addr: Ipv4Addr,
    pub(super) parent: Option<NodeId>,
    pub(super) uplink: Duration,
    pub(super) issuer: CaId,
    pub(super) trust: Vec<CaId>,
    pub(super) up: Option<(NodeId, f64)>,
    pub(super) kind: Kind,
}

impl Sim {
    /// Builds the hierarchy of `spec`; every lower node starts registering at time
    /// zero.
    pub fn build(cfg: SimConfig, spec: &HierarchySpec) -> Result<(Self, Hierarchy), TopologyError> {
        let mut sim = Self {
            rng: SplitMix64::new(cfg.seed),
            cfg,
            now: Instant::ZERO,
            queue: BinaryHeap::new(),
            seq: 0,
            nodes: Vec::new(),
            by_addr: HashMap::new(),
            sessions: Vec::new(),
            conns: Vec::new(),
            entries: Vec::new(),
            stats: SimStats::default(),
            rec: SimRecovery::default(),
        };
        let d = spec.delays;
        let net_addr = Ipv4Addr::new(10, 0, 0, 1);
        let network = sim.add_router(
            "net.pronto.test",
            net_addr,
            None,
            Duration::ZERO,
            Level::Network,
            None,
            CaId(0),
            None,
        )?;
        let entry_addr = Ipv4Addr::new(10, 0, 0, 2);
        let entry_node = sim.entry_node(entry_addr, IpAddr::V4(net_addr));
        let entry = sim.add_node(NewNode {
            name: node_name("entry.pronto.test")?,
            claimed: node_name("entry.pronto.test")?,
            addr: entry_addr,
            parent: Some(network),
            uplink: d.entry,
            issuer: CaId(0),
            trust: vec![CaId(0)],
            up: None,
            kind: Kind::Entry(Box::new(EntryNode {
                node: entry_node,
                slr: network,
                slr_addr: IpAddr::V4(net_addr),
                served: BTreeSet::new(),
            })),
        });
        sim.entries.push(entry);
        let mut h = Hierarchy {
            network,
            entry,
            systems: Vec::new(),
            sites: Vec::new(),
            hosts: Vec::new(),
            clients: Vec::new(),
        };
        for (i, sys) in spec.systems.iter().enumerate() {
            let a = octet(i, 200, "systems")?;
            let sys_id = sim.add_router(
                &format!("as{i}.pronto.test"),
                Ipv4Addr::new(10, a, 0, 1),
                Some(network),
                d.system,
                Level::System,
                Some((network, sys.route_cost)),
                CaId(0),
                None,
            )?;
            h.systems.push(sys_id);
            let mut sites = Vec::new();
            let mut hosts_of_sys = Vec::new();
            for (j, site) in sys.sites.iter().enumerate() {
                let b = octet(j, 250, "sites per system")?;
                let site_addr = Ipv4Addr::new(10, a, b, 1);
                let site_id = sim.add_router(
                    &format!("site{i}-{j}.pronto.test"),
                    site_addr,
                    Some(sys_id),
                    d.site,
                    Level::Site,
                    Some((sys_id, site.route_cost)),
                    site.issuer,
                    site.claimed_name.as_deref(),
                )?;
                sites.push(site_id);
                let mut hosts = Vec::new();
                for (k, host) in site.hosts.iter().enumerate() {
                    let c = octet(k + 9, 250, "hosts per site")?;
                    let name = node_name(&format!("host{i}-{j}-{k}.pronto.test"))?;
                    let addr = Ipv4Addr::new(10, a, b, c);
                    let at = (site_id, site_addr, site.issuer);
                    hosts.push(sim.add_host(name, addr, host, at, d.host)?);
                }
                hosts_of_sys.push(hosts);
            }
            h.sites.push(sites);
            h.hosts.push(hosts_of_sys);
        }
        for k in 0..spec.clients {
            h.clients.push(sim.add_client(k, network, d.client)?);
        }
        sim.init_recovery();
        for i in 0..sim.nodes.len() {
            let id = NodeId(i as u32);
            if sim.nodes[i].up.is_some() {
                sim.schedule(Instant::ZERO, Event::Connect { lower: id });
            }
            sim.reschedule(id);
        }
        Ok((sim, h))
    }

    fn add_host(
        &mut self,
        name: NodeName,
        addr: Ipv4Addr,
        host: &HostSpec,
        (site_id, site_addr, site_issuer): (NodeId, Ipv4Addr, CaId),
        uplink: Duration,
    ) -> Result<NodeId, TopologyError> {
        let mut agent = HostAgent::new(HostConfig {
            subnets: host.subnets.clone(),
            update_interval: self.cfg.host_update_interval,
            capacity: host.capacity,
        })?;
        agent.set_background_load(host.background_load);
        Ok(self.add_node(NewNode {
            claimed: name.clone(),
            name,
            addr,
            parent: Some(site_id),
            uplink,
            issuer: CaId(0),
            trust: vec![CaId(0), site_issuer],
            up: Some((site_id, host.route_cost)),
            kind: Kind::Host(Box::new(HostNode {
                agent,
                tunnel: IpIpTunnel::new(),
                site_addr: IpAddr::V4(site_addr),
                conns: HashMap::new(),
                stats: HostServerStats::default(),
                rec: HostRecovery::default(),
            })),
        }))
    }

    fn add_client(
        &mut self,
        k: usize,
        network: NodeId,
        uplink: Duration,
    ) -> Result<NodeId, TopologyError> {
        if k >= 250 * 250 {
            return Err(TopologyError::TooMany { what: "clients" });
        }
        let name = node_name(&format!("client{k}.pronto.test"))?;
        Ok(self.add_node(NewNode {
            claimed: name.clone(),
            name,
            addr: Ipv4Addr::new(172, 16, (k / 250) as u8, (k % 250 + 1) as u8),
            parent: Some(network),
            uplink,
            issuer: CaId(0),
            trust: vec![CaId(0)],
            up: None,
            kind: Kind::Client(Box::new(ClientNode {
                next_port: 10_000,
                ..ClientNode::default()
            })),
        }))
    }

    pub(super) fn engine_config(
        &self,
        level: Level,
        addr: Ipv4Addr,
        capacity: usize,
    ) -> EngineConfig {
        EngineConfig {
            level,
            local_v4: Some(addr),
            flows: FlowConfig {
                capacity_v4: capacity,
                capacity_v6: 8,
                max_next_hops: 4096,
                ..FlowConfig::default()
            },
            ..EngineConfig::default()
        }
    }

    /// The node of a tunnel entry router: it serves what its SLR serves (the
    /// simulator programs its subnets, as the SLR's cluster programming would)
    /// and hands mid-flow packets of unknown flows to the SLR.
    pub(super) fn entry_node(&self, addr: Ipv4Addr, slr: IpAddr) -> RouterNodeCore {
        let engine = self.engine_config(Level::Network, addr, self.cfg.entry_flow_capacity);
        let mut cfg = NodeConfig::new(engine, SlrConfig::new(Level::Network), Arc::new(LeastCost));
        cfg.forward_unknown_to = Some(slr);
        cfg.unix_ms_at_zero = SIM_EPOCH_UNIX_MS;
        cfg.scope = Some(RecoveryScope {
            local_addrs: vec![IpAddr::V4(addr)],
            ..RecoveryScope::default()
        });
        match RouterNodeCore::new(cfg, self.now) {
            Ok(n) => n,
            Err(e) => unreachable!("an entry node without static subnets cannot fail: {e}"),
        }
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one call site per level, all named"
    )]
    fn add_router(
        &mut self,
        name: &str,
        addr: Ipv4Addr,
        parent: Option<NodeId>,
        uplink: Duration,
        level: Level,
        up: Option<(NodeId, f64)>,
        issuer: CaId,
        claimed: Option<&str>,
    ) -> Result<NodeId, TopologyError> {
        let slr = self.slr_config(level);
        let node = self.router_node(level, addr, &slr, None);
        let name = node_name(name)?;
        let claimed = match claimed {
            Some(c) => node_name(c)?,
            None => name.clone(),
        };
        Ok(self.add_node(NewNode {
            name,
            claimed,
            addr,
            parent,
            uplink,
            issuer,
            trust: vec![CaId(0)],
            up,
            kind: Kind::Router(Box::new(RouterNode {
                level,
                role: role_of(level),
                node,
                slr_cfg: slr,
                local: addr,
                recover: 0,
                seen_unpinned: 0,
                rec: RouterRecovery::default(),
            })),
        }))
    }

    /// The control configuration of an SLR at `level`.
    pub(super) fn slr_config(&self, level: Level) -> SlrConfig {
        let mut slr = SlrConfig::new(level);
        slr.table = TableConfig {
            interval: self.cfg.table_interval,
            hold_time: self.cfg.hold_time,
            ..TableConfig::default()
        };
        slr.shortcuts = self.cfg.shortcuts && level == Level::Site;
        slr.entry_routers = level == Level::Network;
        slr.recovery = self.cfg.recovery;
        slr
    }

    /// A fresh router node (at build time, and after a restart): the same
    /// [`RouterNodeCore`] the daemon runs, with the simulator's policies.
    pub(super) fn router_node(
        &self,
        level: Level,
        addr: Ipv4Addr,
        slr: &SlrConfig,
        spare: Option<SpareConfig>,
    ) -> RouterNodeCore {
        let engine = self.engine_config(level, addr, self.cfg.flow_capacity);
        let policy = match level {
            Level::Network => self.cfg.network_policy.clone(),
            Level::System => self.cfg.system_policy.clone(),
            Level::Site => self.cfg.site_policy.clone(),
        };
        let mut cfg = NodeConfig::new(
            engine,
            *slr,
            policy.unwrap_or_else(|| Arc::new(FollowTable)),
        );
        cfg.cost = self.cfg.cost.clone();
        cfg.mirror = Some(self.cfg.mirror);
        cfg.spare = spare;
        cfg.unix_ms_at_zero = SIM_EPOCH_UNIX_MS;
        cfg.sweep_every = Duration::from_millis(250);
        match RouterNodeCore::new(cfg, self.now) {
            Ok(n) => n,
            Err(e) => unreachable!("a router node without static subnets cannot fail: {e}"),
        }
    }

    pub(super) fn add_node(&mut self, n: NewNode) -> NodeId {
        let id = NodeId(self.nodes.len() as u32);
        self.by_addr.insert(IpAddr::V4(n.addr), id);
        let backoff = self.cfg.reconnect_backoff;
        self.nodes.push(Node {
            cert: SimCert {
                subject: n.name.clone(),
                issuer: n.issuer,
            },
            name: n.name,
            claimed: n.claimed,
            addr: n.addr,
            parent: n.parent,
            uplink: n.uplink,
            alive: true,
            trust: n.trust,
            wake_at: None,
            sessions: Vec::new(),
            up: n.up.map(|(target, route_cost)| UpLink {
                target,
                route_cost,
                session: None,
                backoff,
            }),
            kind: n.kind,
        });
        id
    }
}
