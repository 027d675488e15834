//! Engine throughput against a baseline measured in the same run.
//!
//! Baseline: the least any IP-in-IP forwarder must do per packet, a 20-byte header
//! write in front of the packet plus its checksum. The engine does that and the
//! parse, checksum check, classify, flow lookup, TTL update and counters. Report
//! the ratio engine / baseline (printed by `cargo bench -p router-core --bench
//! engine`, compare the `pinned` and `baseline` lines). New flows run the built-in
//! policy over 16 candidates. The `flow_table` group looks flows up in tables of
//! 1M and 10M entries against a std `HashMap` of the same keys, and prints bytes
//! per flow of each.

#![allow(
    clippy::unwrap_used,
    reason = "bench setup: a failure is a bug in the bench itself"
)]

use criterion::{BatchSize, Criterion, Throughput, black_box, criterion_group, criterion_main};
use router_core::classify::FlowKey;
use router_core::flow::{FlowConfig, FlowState, FlowTable};
use router_core::packet::HEADROOM;
use router_core::synth::workload::{self, flow_packet};
use router_core::wire::{self, Ipv4Packet, TcpFlags};
use router_core::{Engine, EngineConfig, Instant, Level, PacketBuf, RouterApi, Verdict};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

const FLOWS: u32 = 100_000;

fn engine() -> Engine {
    engine_with_capacity(1 << 18)
}

fn engine_with_capacity(capacity_v4: usize) -> Engine {
    let mut e = Engine::new(EngineConfig {
        level: Level::Site,
        local_v4: Some(Ipv4Addr::new(192, 0, 2, 1)),
        flows: FlowConfig {
            capacity_v4,
            ..FlowConfig::default()
        },
        ..EngineConfig::default()
    });
    for (s, cands) in workload::subnets() {
        let sid = e.add_subnet(s).unwrap();
        e.set_candidates(sid, cands).unwrap();
    }
    e
}

fn bench(c: &mut Criterion) {
    let now = Instant::from_secs(10);
    let mut e = engine();
    for i in 0..FLOWS {
        let mut b = flow_packet(i, TcpFlags::SYN);
        let n = b.len() - HEADROOM;
        let mut p = PacketBuf::new(&mut b, HEADROOM, n).unwrap();
        assert!(matches!(e.process(&mut p, now), Verdict::Forward { .. }));
    }
    let acks: Vec<Vec<u8>> = (0..4096)
        .map(|i| flow_packet(i * 24, TcpFlags::ACK))
        .collect();
    let len = acks[0].len() - HEADROOM;

    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(1));
    let mut scratch = acks.clone();
    let mut k = 0usize;
    g.bench_function("baseline_header_write", |b| {
        b.iter(|| {
            k = (k + 1) & 4095;
            let buf = &mut scratch[k];
            // Restore the packet so every iteration starts from the same state.
            buf[HEADROOM - 20..].copy_from_slice(&acks[k][HEADROOM - 20..]);
            let repr = wire::Ipv4Repr {
                src: Ipv4Addr::new(192, 0, 2, 1),
                dst: Ipv4Addr::new(198, 51, 0, 1),
                protocol: 4,
                payload_len: len,
                ttl: 64,
                dscp: 0,
                ecn: 0,
                dont_frag: true,
                ident: 0,
            };
            repr.emit(&mut Ipv4Packet::new_unchecked(
                &mut buf[HEADROOM - 20..HEADROOM],
            ));
            black_box(&buf[HEADROOM - 20]);
        })
    });
    let mut k = 0usize;
    g.bench_function("pinned", |b| {
        b.iter(|| {
            k = (k + 1) & 4095;
            let buf = &mut scratch[k];
            buf[HEADROOM - 20..].copy_from_slice(&acks[k][HEADROOM - 20..]);
            let mut p = PacketBuf::new(buf, HEADROOM, len).unwrap();
            black_box(e.process(&mut p, now))
        })
    });
    // Steady state: each new flow is unpinned again outside the timed part, so
    // the table stays at FLOWS entries (a table with room, as deployed).
    let mut next = FLOWS;
    let e = std::cell::RefCell::new(e);
    let mut last: Option<FlowKey> = None;
    g.bench_function("new_flow", |b| {
        b.iter_batched(
            || {
                if let Some(k) = last.take() {
                    let _ = e.borrow_mut().remove_flow(&k, now);
                }
                next = next.wrapping_add(1);
                let pkt = flow_packet(next, TcpFlags::SYN);
                last = router_core::classify::classify(&pkt[HEADROOM..])
                    .ok()
                    .map(|c| c.key);
                pkt
            },
            |mut buf| {
                let mut p = PacketBuf::new(&mut buf, HEADROOM, len).unwrap();
                black_box(e.borrow_mut().process(&mut p, now))
            },
            BatchSize::SmallInput,
        )
    });
    // A SYN flood against a full table: every new flow evicts one.
    let mut full = engine_with_capacity(4096);
    let mut n = 0u32;
    g.bench_function("new_flow_full_table", |b| {
        b.iter_batched(
            || {
                n = n.wrapping_add(1);
                flow_packet(n, TcpFlags::SYN)
            },
            |mut buf| {
                let mut p = PacketBuf::new(&mut buf, HEADROOM, len).unwrap();
                black_box(full.process(&mut p, now))
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn key(i: u64) -> FlowKey {
    // Spread keys like real clients: many sources, ephemeral ports, few VIPs.
    let h = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    FlowKey {
        proto: 6,
        src: IpAddr::V4(Ipv4Addr::from((h >> 32) as u32)),
        src_port: (h >> 16) as u16 | 1024,
        dst: IpAddr::V4(Ipv4Addr::new(10, 1, (i % 251) as u8, 10)),
        dst_port: 443,
    }
}

fn flow_table(c: &mut Criterion) {
    let now = Instant::from_secs(10);
    let mut g = c.benchmark_group("flow_table");
    g.throughput(Throughput::Elements(1));
    for n in [1_000_000u64, 10_000_000] {
        // Sized like a deployment would be: 10% headroom over the live flows.
        let cap = (n + n / 10) as usize;
        let mut t = FlowTable::new(&FlowConfig {
            capacity_v4: cap,
            capacity_v6: 8,
            ..FlowConfig::default()
        });
        let mut base: HashMap<FlowKey, IpAddr, ahash::RandomState> =
            HashMap::with_capacity_and_hasher(n as usize, ahash::RandomState::new());
        let hop = |i: u64| IpAddr::V4(Ipv4Addr::new(198, 51, 100, (i % 200) as u8 + 1));
        for i in 0..n {
            let k = key(i);
            t.insert(&k, hop(i), 0, Level::Site, FlowState::Established, now)
                .unwrap();
            base.insert(k, hop(i));
        }
        println!(
            "flow_table/{n}: {} flows, {:.1} bytes per flow (FlowTable) vs {:.1} (HashMap, lower bound)",
            t.len(),
            t.memory_bytes() as f64 / n as f64,
            (base.capacity() * (size_of::<(FlowKey, IpAddr)>() + 1)) as f64 / n as f64
        );
        let probes: Vec<FlowKey> = (0..1u64 << 16)
            .map(|i| key(i.wrapping_mul(2_654_435_761) % n))
            .collect();
        let mut j = 0usize;
        g.bench_function(format!("hashmap_baseline/{n}"), |b| {
            b.iter(|| {
                j = (j + 1) & 0xffff;
                black_box(base.get(&probes[j]).copied())
            })
        });
        let mut j = 0usize;
        g.bench_function(format!("flowtable_touch/{n}"), |b| {
            b.iter(|| {
                j = (j + 1) & 0xffff;
                black_box(t.touch(&probes[j], None, 100, now).is_some())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench, flow_table);
criterion_main!(benches);
