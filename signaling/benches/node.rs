//! The router node against the bare engine it owns, in the same run: what the
//! node adds per packet (its verdict dispatch, `take_new_flow`, and for new flows
//! shortcut origination and event queueing). `cargo bench -p signaling --bench
//! node`; compare `engine_pinned` with `node_pinned` and `engine_new_flow` with
//! `node_new_flow`.

#![allow(
    clippy::unwrap_used,
    reason = "bench setup: a failure is a bug in the bench itself"
)]

use std::net::Ipv4Addr;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, black_box, criterion_group, criterion_main};
use router_core::api::RouterApi;
use router_core::classify::FlowKey;
use router_core::engine::{Engine, EngineConfig, Verdict};
use router_core::flow::FlowConfig;
use router_core::packet::{HEADROOM, PacketBuf};
use router_core::policy::{LeastCost, Level};
use router_core::synth::workload::{self, flow_packet};
use router_core::time::Instant;
use router_core::wire::TcpFlags;
use signaling::SlrConfig;
use signaling::node::{Node, NodeConfig};

const FLOWS: u32 = 100_000;

fn engine_config() -> EngineConfig {
    EngineConfig {
        level: Level::Site,
        local_v4: Some(Ipv4Addr::new(192, 0, 2, 1)),
        flows: FlowConfig {
            capacity_v4: 1 << 18,
            ..FlowConfig::default()
        },
        ..EngineConfig::default()
    }
}

fn engine() -> Engine {
    let mut e = Engine::new(engine_config());
    for (s, c) in workload::subnets() {
        let id = e.add_subnet(s).unwrap();
        e.set_candidates(id, c).unwrap();
    }
    e
}

fn node() -> Node {
    let mut slr = SlrConfig::new(Level::Site);
    // Shortcuts on: every new flow queues a tunnel object (no upstream here, so
    // it is counted as unsent), the site level's full per-flow work.
    slr.shortcuts = true;
    let mut cfg = NodeConfig::new(engine_config(), slr, Arc::new(LeastCost));
    cfg.static_subnets = workload::subnets();
    Node::new(cfg, Instant::ZERO).unwrap()
}

/// Something that takes a packet: the engine or the node.
trait Forwarder {
    fn handle(&mut self, now: Instant, pkt: &mut PacketBuf<'_>) -> Verdict;
    fn unpin(&mut self, key: &FlowKey, now: Instant);
}

impl Forwarder for Engine {
    fn handle(&mut self, now: Instant, pkt: &mut PacketBuf<'_>) -> Verdict {
        self.process(pkt, now)
    }
    fn unpin(&mut self, key: &FlowKey, now: Instant) {
        let _ = self.remove_flow(key, now);
    }
}

impl Forwarder for Node {
    fn handle(&mut self, now: Instant, pkt: &mut PacketBuf<'_>) -> Verdict {
        let v = self.handle_packet(now, pkt);
        // A shell drains the node's events after each batch; here after each packet.
        while self.poll_event().is_some() {}
        v
    }
    fn unpin(&mut self, key: &FlowKey, now: Instant) {
        let _ = self.engine_mut().remove_flow(key, now);
    }
}

fn run<F: Forwarder>(c: &mut Criterion, name: &str, mut f: F) {
    let now = Instant::from_secs(10);
    for i in 0..FLOWS {
        let mut b = flow_packet(i, TcpFlags::SYN);
        let n = b.len() - HEADROOM;
        let mut p = PacketBuf::new(&mut b, HEADROOM, n).unwrap();
        assert!(matches!(f.handle(now, &mut p), Verdict::Forward { .. }));
    }
    let acks: Vec<Vec<u8>> = (0..4096)
        .map(|i| flow_packet(i * 24, TcpFlags::ACK))
        .collect();
    let len = acks[0].len() - HEADROOM;
    let mut g = c.benchmark_group("node");
    g.throughput(Throughput::Elements(1));
    let mut scratch = acks.clone();
    let mut k = 0usize;
    g.bench_function(format!("{name}_pinned"), |b| {
        b.iter(|| {
            k = (k + 1) & 4095;
            let buf = &mut scratch[k];
            buf[HEADROOM - 20..].copy_from_slice(&acks[k][HEADROOM - 20..]);
            let mut p = PacketBuf::new(buf, HEADROOM, len).unwrap();
            black_box(f.handle(now, &mut p))
        })
    });
    let mut next = FLOWS;
    let f = std::cell::RefCell::new(f);
    let mut last: Option<FlowKey> = None;
    g.bench_function(format!("{name}_new_flow"), |b| {
        b.iter_batched(
            || {
                if let Some(k) = last.take() {
                    f.borrow_mut().unpin(&k, now);
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
                black_box(f.borrow_mut().handle(now, &mut p))
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn bench(c: &mut Criterion) {
    run(c, "engine", engine());
    run(c, "node", node());
}

criterion_group!(benches, bench);
criterion_main!(benches);
