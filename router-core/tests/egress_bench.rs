//! Bench (ignored; not run in CI): throughput of the userspace egress stage
//! against kernel HTB on the same veth in the same run, at a rate where the
//! stage itself is the limit (10 Gbit/s) and at 100 Mbit/s, plus the
//! in-process enqueue + dequeue cost of the scheduler with native SFQ.
//!
//! ```text
//! cargo test --release -p router-core --features linux --test egress_bench \
//!     -- --ignored --nocapture
//! ```
#![cfg(all(target_os = "linux", feature = "linux"))]
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failure is a test failure"
)]

#[path = "lab/mod.rs"]
mod lab;

#[path = "egress_lab/mod.rs"]
mod egress_lab;

use egress_lab::{DEV, Pair, TUN, Traffic, bps, shares, vip_subnet};
use router_core::linux::egress::{EgressClass, EgressConfig, EgressStage};
use router_core::linux::in_netns;
use router_core::linux::tc::{ShareClassConfig, ShareTreeConfig, Tc, apply_share_tree};
use router_core::sched::{ClassConfig, ClassId, LinkScheduler, PacketMeta, SchedConfig, Sfq};
use router_core::time::Instant as CoreInstant;
use std::time::{Duration, Instant};

const WEIGHTS: [u32; 3] = [20, 30, 50];
const WARMUP: Duration = Duration::from_secs(1);
const WINDOW: Duration = Duration::from_secs(5);

/// Goodput (bit/s) and shares of three bulk flows over the pair.
fn run_flows(pair: &Pair) -> (f64, [f64; 3]) {
    let traffic = Traffic::start(pair);
    traffic.warm_up(WARMUP);
    let bytes = traffic.measure(WINDOW);
    let errors = traffic.stop();
    assert_eq!(errors, 0);
    (bps(bytes, WINDOW), shares(bytes))
}

fn stage_run(rate_bps: u64) -> (f64, [f64; 3]) {
    let pair = Pair::new("bstage");
    let ids = EgressConfig::class_ids(3);
    let cfg = EgressConfig {
        link: DEV.to_owned(),
        tun: TUN.to_owned(),
        rate_bps,
        classes: (0..3)
            .map(|i| EgressClass {
                id: ids[i],
                weight: WEIGHTS[i],
                priority: 0,
                sources: vec![vip_subnet(i)],
            })
            .collect(),
        default_class: ids[0],
        mark: 0x7e57,
        limit_packets: 512,
        limit_bytes: 1 << 20,
    };
    let stage = in_netns(&pair.snd, || {
        EgressStage::start(cfg, Box::new(Sfq::new(16)))
    })
    .unwrap()
    .unwrap();
    let out = run_flows(&pair);
    let s = stage.snapshot().unwrap();
    eprintln!(
        "  stage counters: read {} sent {} tail drops {} send errors {} polls {} timer wakeups {}",
        s.stage.read_packets,
        s.classes.iter().map(|c| c.sent_packets).sum::<u64>(),
        s.classes.iter().map(|c| c.tail_drops()).sum::<u64>(),
        s.stage.send_errors,
        s.stage.polls,
        s.stage.timer_wakeups
    );
    stage.stop().unwrap();
    out
}

fn htb_run(rate_bps: u64) -> (f64, [f64; 3]) {
    let pair = Pair::new("bhtb");
    let mut tree = ShareTreeConfig::new(rate_bps).with_default(0x10);
    for (i, id) in [0x10, 0x20, 0x30].into_iter().enumerate() {
        tree = tree
            .with_class(ShareClassConfig::new(id, WEIGHTS[i]))
            .with_filter(vip_subnet(i), id);
    }
    let tc = in_netns(&pair.snd, Tc::open).unwrap().unwrap();
    apply_share_tree(&tc, DEV, &tree).unwrap();
    run_flows(&pair)
}

/// Enqueue + dequeue of one packet through three SFQ classes, unshaped, in
/// batches of 64: nanoseconds per packet.
fn sched_ns_per_packet() -> f64 {
    let mut s: LinkScheduler<u32> =
        LinkScheduler::with_rank(SchedConfig::new(4096, 64 << 20), Box::new(Sfq::new(16)));
    let classes: Vec<ClassId> = WEIGHTS
        .iter()
        .map(|&w| s.add_class(ClassId::ROOT, ClassConfig::new(w)).unwrap())
        .collect();
    let metas: Vec<PacketMeta> = (0..64)
        .map(|i| PacketMeta::new(1500, classes[i % 3]).with_flow(i as u64))
        .collect();
    let run = |s: &mut LinkScheduler<u32>, rounds: u64| {
        let now = CoreInstant::ZERO;
        for r in 0..rounds {
            for (i, m) in metas.iter().enumerate() {
                s.enqueue(m, (r as u32) ^ (i as u32), now).unwrap();
            }
            while let Some(d) = s.dequeue(now) {
                std::hint::black_box(d.packet);
            }
        }
    };
    run(&mut s, 10_000);
    let rounds = 50_000;
    let t = Instant::now();
    run(&mut s, rounds);
    t.elapsed().as_nanos() as f64 / (rounds * 64) as f64
}

#[test]
#[ignore = "bench: run by hand with --ignored --nocapture (root, release)"]
fn egress_stage_vs_htb() {
    if !lab::root_or_skip("egress_stage_vs_htb") {
        return;
    }
    let ns = sched_ns_per_packet();
    eprintln!("scheduler, native sfq, 3 classes: {ns:.0} ns/packet (enqueue + dequeue)");
    let (bare, _) = run_flows(&Pair::new("bare"));
    eprintln!("bare veth, no shaping: {:.0} Mbit/s", bare / 1e6);
    for rate in [10_000_000_000_u64, 100_000_000] {
        let (stage, s_shares) = stage_run(rate);
        let (htb, h_shares) = htb_run(rate);
        eprintln!(
            "rate {:>6} Mbit/s: stage {:>7.1} Mbit/s {s_shares:.3?} | htb {:>7.1} Mbit/s \
             {h_shares:.3?} | stage/htb {:.3}",
            rate / 1_000_000,
            stage / 1e6,
            htb / 1e6,
            stage / htb
        );
    }
}
