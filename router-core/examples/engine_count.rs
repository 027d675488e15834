//! Deterministic per-packet cost of the engine, for instruction counting:
//! `valgrind --tool=callgrind target/release/examples/engine_count MODE N` for two
//! values of N; the difference of the totals divided by the difference of N is
//! the instructions per packet, unaffected by other load on the machine (unlike
//! wall-clock benches). MODE: `pinned` (an established flow's segment) or `new`
//! (a SYN pinning a new flow, built-in least cost over 16 candidates, table at a
//! steady 100k flows).

#![allow(
    clippy::unwrap_used,
    reason = "measurement harness: a failure is a bug in the harness"
)]

use router_core::packet::HEADROOM;
use router_core::synth::workload::{self, flow_packet};
use router_core::wire::TcpFlags;
use router_core::{Engine, EngineConfig, Instant, Level, PacketBuf, RouterApi, Verdict};
use std::hint::black_box;
use std::net::Ipv4Addr;

const FLOWS: u32 = 100_000;

fn engine() -> Engine {
    let mut e = Engine::new(EngineConfig {
        level: Level::Site,
        local_v4: Some(Ipv4Addr::new(192, 0, 2, 1)),
        flows: router_core::flow::FlowConfig {
            capacity_v4: 1 << 18,
            ..router_core::flow::FlowConfig::default()
        },
        ..EngineConfig::default()
    });
    for (s, cands) in workload::subnets() {
        let sid = e.add_subnet(s).unwrap();
        e.set_candidates(sid, cands).unwrap();
    }
    e
}

fn send(e: &mut Engine, pkt: &[u8], scratch: &mut Vec<u8>, now: Instant) -> Verdict {
    scratch.clear();
    scratch.extend_from_slice(pkt);
    let n = scratch.len() - HEADROOM;
    let mut p = PacketBuf::new(scratch, HEADROOM, n).unwrap();
    e.process(&mut p, now)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "pinned".into());
    let n: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let now = Instant::from_secs(10);
    let mut e = engine();
    let mut scratch = Vec::with_capacity(256);
    for i in 0..FLOWS {
        let v = send(&mut e, &flow_packet(i, TcpFlags::SYN), &mut scratch, now);
        assert!(matches!(v, Verdict::Forward { .. }));
    }
    // Packets are built before the measured loop so that both N runs build
    // the same ones per packet (the harness cost is the same per packet too).
    let flags = if mode == "new" {
        TcpFlags::SYN
    } else {
        TcpFlags::ACK
    };
    let base = if mode == "new" { FLOWS } else { 0 };
    let pkts: Vec<Vec<u8>> = (0..n)
        .map(|i| flow_packet(base + (i % FLOWS), flags))
        .collect();
    let mut forwarded = 0u64;
    for (i, p) in pkts.iter().enumerate() {
        if mode == "new" {
            // Keep the table at FLOWS: unpin the previous new flow first.
            if i > 0 {
                let prev = router_core::classify::classify(&pkts[i - 1][HEADROOM..]).unwrap();
                let _ = e.remove_flow(&prev.key, now);
            }
        }
        if matches!(send(&mut e, p, &mut scratch, now), Verdict::Forward { .. }) {
            forwarded += 1;
        }
    }
    println!("{mode}: {forwarded} of {n} forwarded");
    black_box(forwarded);
}
