//! The `pronto demo` scenario, as a library function the binary prints.
//!
//! A network SLR (with its tunnel entry router), three AS (system) SLRs, two sites
//! each, four host servers per site, all in one simulated process. Clients open
//! connections in three phases: (1) with the initial site policy; (2) after the
//! site policy is hot-swapped on every site SLR; (3) while one site (its SLR and
//! hosts) goes down mid-run. The report says where connections went, how many
//! packets each router level handled per connection, and what the failure did.
//!
//! Hooks: [`DemoOptions`] takes the cost model (F and G) and both site policies as
//! trait objects, so signed wasm modules from an execution environment plug in
//! where the built-ins are used by default.

use std::fmt;
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::Duration;

use router_core::policy::{CostModel, Policy, SumCost};
use router_core::time::Instant;
use signaling::SubnetPrefix;

use crate::sim::{
    ConnState, Delays, FlowHash, Hierarchy, HierarchySpec, HostSpec, NodeId, ShortcutFigures, Sim,
    SimConfig, SiteSpec, SystemSpec, TopologyError,
};

/// What the demo runs with.
#[derive(Clone)]
pub struct DemoOptions {
    /// Seed of the simulation.
    pub seed: u64,
    /// F and G at every level.
    pub cost: Arc<dyn CostModel>,
    /// Site policy of phase 1 (`None`: follow the table, i.e. cheapest by F).
    pub site_policy: Option<Arc<dyn Policy>>,
    /// Site policy hot-swapped in for phases 2 and 3.
    pub swapped_site_policy: Arc<dyn Policy>,
    /// Connections opened per phase.
    pub connections_per_phase: u32,
    /// Data packet loss probability.
    pub loss: f64,
}

impl fmt::Debug for DemoOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DemoOptions")
            .field("seed", &self.seed)
            .field("cost", &self.cost.name())
            .field("site_policy", &self.site_policy.as_ref().map(|p| p.name()))
            .field("swapped_site_policy", &self.swapped_site_policy.name())
            .field("connections_per_phase", &self.connections_per_phase)
            .field("loss", &self.loss)
            .finish()
    }
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            seed: 2024,
            cost: Arc::new(SumCost),
            site_policy: None,
            swapped_site_policy: Arc::new(FlowHash),
            connections_per_phase: 600,
            loss: 0.0,
        }
    }
}

/// One host's line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRow {
    /// AS index.
    pub system: usize,
    /// Site index within the AS.
    pub site: usize,
    /// Host name.
    pub name: String,
    /// Connections it accepted in each phase.
    pub per_phase: [u32; 3],
}

/// One phase's totals.
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseReport {
    /// What happened in the phase.
    pub title: String,
    /// Connections opened.
    pub opened: usize,
    /// Connections closed cleanly.
    pub completed: usize,
    /// Connections that failed (timed out or reset).
    pub failed: usize,
    /// Connections still open when the run ended (retransmitting to a dead server).
    pub unfinished: usize,
    /// Packets per connection through the SLRs.
    pub figures: ShortcutFigures,
}

/// The demo's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoReport {
    /// Per host, connections per phase.
    pub hosts: Vec<HostRow>,
    /// Per phase totals.
    pub phases: Vec<PhaseReport>,
    /// Name of the site taken down in phase 3.
    pub failed_site: String,
    /// When it went down.
    pub failed_at: Instant,
    /// The last time a new connection was still sent to the failed site.
    pub last_sent_to_failed_site: Option<Instant>,
    /// Connections that were in flight to the failed site when it went down and
    /// broke.
    pub broken_by_failure: usize,
    /// Connections opened after the failure whose SYN was lost on the way to the
    /// failed site and which completed elsewhere after a retransmission.
    pub replaced_after_failure: usize,
    /// Policies of phase 1 and of phases 2-3.
    pub policies: (String, String),
    /// The cost model.
    pub cost_model: String,
    /// Simulated events processed.
    pub events: u64,
}

/// The demo failed to set up.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    /// The topology or workload could not be built.
    #[error(transparent)]
    Topology(#[from] TopologyError),
}

const PHASE_STARTS: [u64; 3] = [3_000, 9_000, 15_000];
const PHASE_LEN_MS: u64 = 5_000;
const FAIL_AT_MS: u64 = 17_000;
const END_MS: u64 = 35_000;

fn spec() -> Result<HierarchySpec, DemoError> {
    let vips = SubnetPrefix::new(std::net::IpAddr::from([192, 200, 0, 0]), 16).map_err(|_| {
        TopologyError::BadName {
            name: "192.200.0.0/16".into(),
        }
    })?;
    let systems = (0..3)
        .map(|i| SystemSpec {
            route_cost: [0.0, 0.05, 0.10][i],
            sites: (0..2)
                .map(|j| SiteSpec {
                    route_cost: 0.05 * j as f64,
                    hosts: (0..4)
                        .map(|h| HostSpec {
                            subnets: vec![vips],
                            capacity: 10,
                            background_load: 0.10 + 0.05 * ((i + 2 * j + 3 * h) % 5) as f64,
                            route_cost: 0.01 * h as f64,
                        })
                        .collect(),
                    issuer: crate::sim::CaId(0),
                    claimed_name: None,
                })
                .collect(),
        })
        .collect();
    Ok(HierarchySpec {
        systems,
        clients: 24,
        delays: Delays::default(),
    })
}

/// Runs the demo scenario (deterministic for given options).
pub fn run_demo(opts: &DemoOptions) -> Result<DemoReport, DemoError> {
    let cfg = SimConfig {
        seed: opts.seed,
        loss: opts.loss,
        cost: opts.cost.clone(),
        site_policy: opts.site_policy.clone(),
        ..SimConfig::default()
    };
    let (mut sim, h) = Sim::build(cfg, &spec()?)?;
    open_all_phases(&mut sim, &h, opts.connections_per_phase)?;
    sim.run_until(Instant::from_millis(PHASE_STARTS[1]));
    for &site in h.sites.iter().flatten() {
        sim.set_policy(site, opts.swapped_site_policy.clone());
    }
    sim.run_until(Instant::from_millis(FAIL_AT_MS));
    let (fi, fj, failed_site) = fail_busiest_site(&mut sim, &h);
    let failed_at = sim.now();
    sim.run_until(Instant::from_millis(END_MS));

    let on_failed = |s: Option<NodeId>| s.is_some_and(|s| h.hosts[fi][fj].contains(&s));
    let titles = [
        format!(
            "phase 1: site policy {}",
            opts.site_policy
                .as_ref()
                .map_or("follow-table", |p| p.name())
        ),
        format!(
            "phase 2: site policy hot-swapped to {}",
            opts.swapped_site_policy.name()
        ),
        format!(
            "phase 3: {} down at {:.1} s",
            sim.name(failed_site),
            failed_at.as_millis() as f64 / 1000.0
        ),
    ];
    let hosts = host_rows(&sim, &h);
    let phases = phase_reports(&sim, titles);
    let last_sent_to_failed_site = sim
        .conns()
        .iter()
        .filter(|c| on_failed(c.server) && c.opened_at >= failed_at)
        .map(|c| c.opened_at)
        .max();
    let broken_by_failure = sim
        .conns()
        .iter()
        .filter(|c| on_failed(c.server) && c.state != ConnState::Done)
        .count();
    let replaced_after_failure = sim
        .conns()
        .iter()
        .filter(|c| c.opened_at >= failed_at && c.retransmits > 0)
        .filter(|c| c.state == ConnState::Done && !on_failed(c.server))
        .count();
    Ok(DemoReport {
        replaced_after_failure,
        hosts,
        phases,
        failed_site: sim.name(failed_site).to_string(),
        failed_at,
        last_sent_to_failed_site,
        broken_by_failure,
        policies: (
            opts.site_policy
                .as_ref()
                .map_or("follow-table".to_owned(), |p| p.name().to_owned()),
            opts.swapped_site_policy.name().to_owned(),
        ),
        cost_model: opts.cost.name().to_owned(),
        events: sim.stats().events,
    })
}

/// The phase (0, 1, 2) a connection opened at `t` belongs to.
fn phase_of(t: Instant) -> usize {
    PHASE_STARTS
        .iter()
        .rposition(|&s| t >= Instant::from_millis(s))
        .unwrap_or(0)
}

/// Schedule `per_phase` connections to the VIP, evenly spread over each phase,
/// taking the clients in turn.
fn open_all_phases(sim: &mut Sim, h: &Hierarchy, per_phase: u32) -> Result<(), DemoError> {
    let vip = SocketAddrV4::new([192, 200, 0, 80].into(), 80);
    let n = per_phase.max(1);
    let spacing = PHASE_LEN_MS * 1000 / u64::from(n);
    for (phase, start) in PHASE_STARTS.iter().enumerate() {
        for k in 0..n {
            let client = h.clients[(k as usize + phase) % h.clients.len()];
            let at = Instant::from_nanos((start * 1000 + u64::from(k) * spacing) * 1000);
            sim.open_connection(client, vip, at, 4, Duration::from_millis(150))?;
        }
    }
    Ok(())
}

/// Take down the site (SLR and hosts) that took most of the connections opened
/// in the last second, so the failure hits connections in flight; returns its
/// system index, site index and SLR.
fn fail_busiest_site(sim: &mut Sim, h: &Hierarchy) -> (usize, usize, NodeId) {
    let recent = Instant::from_millis(FAIL_AT_MS - 1_000);
    let busiest = h.all_sites().max_by_key(|&(i, j, _)| {
        sim.conns()
            .iter()
            .filter(|c| c.opened_at >= recent)
            .filter(|c| c.server.is_some_and(|s| h.hosts[i][j].contains(&s)))
            .count()
    });
    let (fi, fj, failed_site) = busiest.unwrap_or((0, 0, h.sites[0][0]));
    sim.fail_node(failed_site);
    for &host in &h.hosts[fi][fj] {
        sim.fail_node(host);
    }
    (fi, fj, failed_site)
}

/// Connections each host served, per phase.
fn host_rows(sim: &Sim, h: &Hierarchy) -> Vec<HostRow> {
    let mut hosts = Vec::new();
    for (i, j, _, id) in h.all_hosts() {
        let mut per_phase = [0u32; 3];
        for c in sim.conns().iter().filter(|c| c.server == Some(id)) {
            per_phase[phase_of(c.opened_at)] += 1;
        }
        hosts.push(HostRow {
            system: i,
            site: j,
            name: sim.name(id).to_string(),
            per_phase,
        });
    }
    hosts
}

/// Outcomes and shortcut figures of each phase's connections.
fn phase_reports(sim: &Sim, titles: [String; 3]) -> Vec<PhaseReport> {
    titles
        .into_iter()
        .enumerate()
        .map(|(p, title)| {
            let in_phase = |c: &crate::sim::ConnRecord| phase_of(c.opened_at) == p;
            let all: Vec<_> = sim.conns().iter().filter(|c| in_phase(c)).collect();
            PhaseReport {
                title,
                opened: all.len(),
                completed: all.iter().filter(|c| c.state == ConnState::Done).count(),
                failed: all
                    .iter()
                    .filter(|c| matches!(c.state, ConnState::TimedOut | ConnState::Reset))
                    .count(),
                unfinished: all
                    .iter()
                    .filter(|c| {
                        !matches!(
                            c.state,
                            ConnState::Done | ConnState::TimedOut | ConnState::Reset
                        )
                    })
                    .count(),
                figures: sim.figures(in_phase),
            }
        })
        .collect()
}

impl fmt::Display for DemoReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Pronto SLR hierarchy: 1 network SLR + entry router, 3 AS, 2 sites each, 4 hosts each"
        )?;
        writeln!(
            f,
            "F/G: {}; site policy {} then {}",
            self.cost_model, self.policies.0, self.policies.1
        )?;
        writeln!(f)?;
        writeln!(f, "connections accepted per host server")?;
        writeln!(
            f,
            "{:<6} {:<6} {:<24} {:>8} {:>8} {:>8}",
            "AS", "site", "host", "phase 1", "phase 2", "phase 3"
        )?;
        for r in &self.hosts {
            writeln!(
                f,
                "{:<6} {:<6} {:<24} {:>8} {:>8} {:>8}",
                format!("as{}", r.system),
                format!("{}-{}", r.system, r.site),
                r.name,
                r.per_phase[0],
                r.per_phase[1],
                r.per_phase[2]
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "{:<48} {:>6} {:>6} {:>6} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "phase",
            "opened",
            "done",
            "failed",
            "open",
            "entry",
            "SLR pkt",
            "network",
            "system",
            "site"
        )?;
        for p in &self.phases {
            writeln!(
                f,
                "{:<48} {:>6} {:>6} {:>6} {:>6} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
                p.title,
                p.opened,
                p.completed,
                p.failed,
                p.unfinished,
                p.figures.entry_per_conn,
                p.figures.slr_packets_per_conn,
                p.figures.per_level[0],
                p.figures.per_level[1],
                p.figures.per_level[2]
            )?;
        }
        writeln!(
            f,
            "(per completed connection: packets through the tunnel entry router (a fast \
             router), distinct packets that reached any SLR, then SLR engine passes per \
             level; each connection sent {:.1} packets)",
            self.phases
                .first()
                .map_or(0.0, |p| p.figures.packets_per_conn)
        )?;
        writeln!(f)?;
        write!(
            f,
            "{} went down at {:.1} s: {} connections in flight to it broke; ",
            self.failed_site,
            self.failed_at.as_millis() as f64 / 1000.0,
            self.broken_by_failure
        )?;
        match self.last_sent_to_failed_site {
            Some(t) => writeln!(
                f,
                "new connections were still sent there until {:.2} s, none after.",
                t.as_millis() as f64 / 1000.0
            )?,
            None => writeln!(f, "no new connection reached it afterwards.")?,
        }
        writeln!(
            f,
            "{} connections opened after the failure lost their SYN to it during the \
             dead interval and completed elsewhere after retransmitting it.",
            self.replaced_after_failure
        )
    }
}
