//! The next-hop table update against a baseline measured in the same run.
//!
//! Baseline: the least any table update must do, a flat loop over the same
//! (load, route cost) pairs computing `F = load + route_cost`, the cheapest peer and
//! `G = min load` per subnet. The table does that plus the soft-state expiry,
//! candidate construction, the cheapest-first sort and the change detection.
//! Throughput is in (subnet, peer) pairs, so criterion's time per element is the
//! ns per subnet per peer; compare the `table` and `baseline` lines of
//! `cargo bench -p pronto-tests --bench table_update`. `update_and_compute` also
//! ingests a state update from every peer with new loads, so every candidate list
//! changes and is rebuilt.

#![allow(
    clippy::unwrap_used,
    reason = "bench setup: a failure is a bug in the bench itself"
)]

use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use pronto_tests::sim::SplitMix64;
use router_core::policy::SumCost;
use router_core::time::Instant;
use signaling::{
    Epoch, MAX_SUBNETS_PER_UPDATE, NextHopTable, NodeName, StateUpdate, SubnetLoad, SubnetPrefix,
    TableConfig,
};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

const SUBNETS: usize = 10_000;

fn subnet(i: usize) -> SubnetPrefix {
    SubnetPrefix::new(
        IpAddr::V4(Ipv4Addr::from(0x6000_0000u32 + ((i as u32) << 8))),
        24,
    )
    .unwrap()
}

fn name(p: usize) -> NodeName {
    NodeName::new(&format!("peer{p}.bench.test")).unwrap()
}

struct Setup {
    table: NextHopTable,
    loads: Vec<Vec<f32>>,
    route_costs: Vec<f64>,
}

fn feed(t: &mut NextHopTable, peers: usize, loads: &[Vec<f32>], seq: u64, now: Instant) {
    for (p, l) in loads.iter().enumerate().take(peers) {
        let all: Vec<SubnetLoad> = l
            .iter()
            .enumerate()
            .map(|(i, &load)| SubnetLoad {
                subnet: subnet(i),
                load,
            })
            .collect();
        for chunk in all.chunks(MAX_SUBNETS_PER_UPDATE) {
            let u = StateUpdate {
                seq,
                subnets: chunk.to_vec(),
            };
            t.handle_update(now, &name(p), Epoch(p as u64), &u).unwrap();
        }
    }
}

fn setup(peers: usize) -> Setup {
    let mut rng = SplitMix64::new(peers as u64);
    let mut table = NextHopTable::new(
        TableConfig {
            interval: Duration::from_secs(1),
            hold_time: Duration::from_secs(3600),
            max_peers: 256,
            max_subnets: 1 << 20,
        },
        Instant::ZERO,
    );
    let route_costs: Vec<f64> = (0..peers).map(|_| rng.next_f64() * 0.2).collect();
    for (p, &rc) in route_costs.iter().enumerate() {
        let addr = IpAddr::V4(Ipv4Addr::new(10, 0, (p >> 8) as u8, p as u8));
        table.register(&name(p), addr, rc, Epoch(p as u64)).unwrap();
    }
    let loads: Vec<Vec<f32>> = (0..peers)
        .map(|_| (0..SUBNETS).map(|_| rng.next_f64() as f32).collect())
        .collect();
    feed(&mut table, peers, &loads, 1, Instant::ZERO);
    table.compute(Instant::ZERO, &SumCost);
    Setup {
        table,
        loads,
        route_costs,
    }
}

/// The floor: F, argmin and G over flat arrays, subnet-major like the table.
fn baseline(loads: &[Vec<f32>], route_costs: &[f64]) -> f64 {
    let mut acc = 0.0;
    for i in 0..SUBNETS {
        let mut best = (f64::INFINITY, usize::MAX);
        let mut g = f64::INFINITY;
        for (p, l) in loads.iter().enumerate() {
            let load = f64::from(l[i]);
            let m = load + route_costs[p];
            if m < best.0 {
                best = (m, p);
            }
            g = g.min(load);
        }
        acc += best.0 + g + best.1 as f64;
    }
    acc
}

fn bench(c: &mut Criterion) {
    for peers in [4usize, 16, 64] {
        let mut s = setup(peers);
        let mut g = c.benchmark_group(format!("table_update/{peers}_peers"));
        g.throughput(Throughput::Elements((SUBNETS * peers) as u64));
        g.bench_function("baseline", |b| {
            b.iter(|| black_box(baseline(black_box(&s.loads), black_box(&s.route_costs))));
        });
        g.bench_function("table", |b| {
            b.iter(|| black_box(s.table.compute(Instant::ZERO, &SumCost)));
        });
        let flipped: Vec<Vec<f32>> = s
            .loads
            .iter()
            .map(|l| l.iter().map(|x| 1.0 - x).collect())
            .collect();
        let mut seq = 1;
        g.bench_function("update_and_compute", |b| {
            b.iter(|| {
                seq += 1;
                let loads = if seq % 2 == 0 { &flipped } else { &s.loads };
                feed(&mut s.table, peers, loads, seq, Instant::ZERO);
                black_box(s.table.compute(Instant::ZERO, &SumCost))
            });
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
