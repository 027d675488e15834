//! Issue 4 scale acceptance: 1,000 sites and 100,000 virtual subnets converge, and
//! a load change propagates to the top of the hierarchy.
//!
//! Runs in the suite (about 20 s in a debug build); for the figures run
//! `cargo test --release -p pronto-tests --test scale -- --nocapture` (it prints
//! simulated and wall times).
#![expect(clippy::unwrap_used, reason = "test code")]

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use pronto_tests::sim::{CaId, HierarchySpec, HostSpec, Sim, SimConfig, SiteSpec, SystemSpec};
use router_core::time::Instant;
use signaling::SubnetPrefix;

const SYSTEMS: usize = 10;
const SITES_PER_SYSTEM: usize = 100;
const SUBNETS_PER_SITE: usize = 100;
const SITES: usize = SYSTEMS * SITES_PER_SYSTEM;
const SUBNETS: usize = SITES * SUBNETS_PER_SITE;

/// Virtual subnet `i`: a /24 from 96.0.0.0 up.
fn subnet(i: usize) -> SubnetPrefix {
    let base = 0x6000_0000u32 + ((i as u32) << 8);
    SubnetPrefix::new(IpAddr::V4(Ipv4Addr::from(base)), 24).unwrap()
}

/// Site `s` owns subnets `[100 s, 100 s + 100)`; each block is also served by the
/// next site of the same AS and by the site 500 further on (another AS), so every
/// subnet has a choice at the system and at the network level.
fn spec() -> HierarchySpec {
    let block = |s: usize| (s * SUBNETS_PER_SITE..(s + 1) * SUBNETS_PER_SITE).map(subnet);
    let systems = (0..SYSTEMS)
        .map(|i| SystemSpec {
            route_cost: 0.01 * i as f64,
            sites: (0..SITES_PER_SYSTEM)
                .map(|j| {
                    let s = i * SITES_PER_SYSTEM + j;
                    let prev_in_as =
                        i * SITES_PER_SYSTEM + (j + SITES_PER_SYSTEM - 1) % SITES_PER_SYSTEM;
                    let far = (s + SITES / 2) % SITES;
                    let subnets = block(s)
                        .chain(block(prev_in_as))
                        .chain(block(far))
                        .collect();
                    SiteSpec {
                        route_cost: 0.001 * j as f64,
                        hosts: vec![HostSpec {
                            subnets,
                            capacity: 100,
                            background_load: 0.1,
                            route_cost: 0.0,
                        }],
                        issuer: CaId(0),
                        claimed_name: None,
                    }
                })
                .collect(),
        })
        .collect();
    HierarchySpec {
        systems,
        clients: 1,
        delays: Default::default(),
    }
}

#[test]
fn a_thousand_sites_and_100k_subnets_converge_and_follow_a_load_change() {
    let wall = std::time::Instant::now();
    let cfg = SimConfig {
        flow_capacity: 64,
        entry_flow_capacity: 64,
        ..SimConfig::default()
    };
    let (mut sim, h) = Sim::build(cfg, &spec()).unwrap();
    let built = wall.elapsed();
    let step = Duration::from_millis(50);
    let converged = |sim: &Sim| {
        let t = sim.table(h.network).unwrap();
        t.subnet_count() == SUBNETS
            && (0..SUBNETS)
                .step_by(997)
                .all(|i| t.best(&subnet(i)).is_some())
    };
    while !converged(&sim) {
        assert!(
            sim.now() < Instant::from_secs(30),
            "no convergence within 30 s"
        );
        sim.run_for(step);
    }
    let t_conv = sim.now();
    let wall_conv = wall.elapsed();
    // Every AS table holds its own 10,000 subnets (two sites each) and the 10,000
    // it backs up for the AS five further on.
    for &sys in &h.systems {
        assert_eq!(
            sim.table(sys).unwrap().subnet_count(),
            2 * SITES_PER_SYSTEM * SUBNETS_PER_SITE
        );
    }
    // Settle, then overload every host of AS 0: the network must move AS 0's own
    // subnets to AS 5, the only other AS serving them.
    sim.run_for(Duration::from_secs(2));
    let as0 = IpAddr::V4(sim.addr(h.systems[0]));
    let as5 = IpAddr::V4(sim.addr(h.systems[5]));
    let own: Vec<SubnetPrefix> = (0..SITES_PER_SYSTEM * SUBNETS_PER_SITE)
        .map(subnet)
        .collect();
    assert!(
        own.iter()
            .all(|p| sim.table(h.network).unwrap().best(p) == Some(as0))
    );
    let t_change = sim.now();
    let wall_change = std::time::Instant::now();
    for &host in h.hosts[0].iter().flatten() {
        sim.set_background_load(host, 10.0);
    }
    while !own
        .iter()
        .all(|p| sim.table(h.network).unwrap().best(p) == Some(as5))
    {
        assert!(
            sim.now() < t_change + Duration::from_secs(10),
            "load change did not propagate"
        );
        sim.run_for(step);
    }
    let moved = sim.now().saturating_since(t_change);
    println!(
        "{SITES} sites, {SUBNETS} virtual subnets ({} site reports): built in {:.2} s; \
         converged at {:.2} s simulated, {:.2} s wall; load change at the sites reached \
         the network table after {:.2} s simulated ({:.2} s wall); {} events",
        3 * SUBNETS,
        built.as_secs_f64(),
        t_conv.as_millis() as f64 / 1000.0,
        wall_conv.as_secs_f64(),
        moved.as_secs_f64(),
        wall_change.elapsed().as_secs_f64(),
        sim.stats().events
    );
}
