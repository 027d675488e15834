//! Namespace tests of the userspace egress stage (`linux::egress`): the link
//! scheduler in front of a veth, shaped to 100 Mbit/s, carrying one bulk TCP
//! flow per class. Needs root; prints a skip otherwise (and fails when
//! CI=true).
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
use router_core::linux::egress::{
    EgressClass, EgressConfig, EgressError, EgressSnapshot, EgressStage, FILTER_PRIO_PASS,
};
use router_core::linux::in_netns;
use router_core::sched::{ClassId, Sfq, StrictPriority};
use std::time::{Duration, Instant};

const RATE_BPS: u64 = 100_000_000;
const WEIGHTS: [u32; 3] = [20, 30, 50];
/// Strict priorities: the 50-class first.
const PRIORITIES: [u8; 3] = [2, 1, 0];

fn config(ids: &[ClassId]) -> EgressConfig {
    EgressConfig {
        link: DEV.to_owned(),
        tun: TUN.to_owned(),
        rate_bps: RATE_BPS,
        classes: (0..3)
            .map(|i| EgressClass {
                id: ids[i],
                weight: WEIGHTS[i],
                priority: PRIORITIES[i],
                sources: vec![vip_subnet(i)],
            })
            .collect(),
        default_class: ids[0],
        mark: 0x7e57,
        limit_packets: 512,
        limit_bytes: 1 << 20,
    }
}

fn start(pair: &Pair, cfg: EgressConfig) -> Result<EgressStage, EgressError> {
    in_netns(&pair.snd, || {
        EgressStage::start(cfg, Box::new(Sfq::new(16)))
    })
    .unwrap()
}

fn sent(s: &EgressSnapshot) -> u64 {
    s.classes.iter().map(|c| c.sent_packets).sum()
}

/// The share of class 2 in the first 1 s window (of 100 ms samples) starting
/// within 1 s of the swap in which it has at least 90 %, or every window's.
fn strict_window(samples: &[(Duration, [u64; 3])]) -> Result<(Duration, f64), Vec<f64>> {
    let mut seen = Vec::new();
    for (i, (t0, a)) in samples.iter().enumerate() {
        if *t0 > Duration::from_secs(1) {
            break;
        }
        let Some((_, b)) = samples[i..]
            .iter()
            .find(|(t1, _)| *t1 >= *t0 + Duration::from_secs(1))
        else {
            break;
        };
        let share = shares(std::array::from_fn(|k| b[k] - a[k]))[2];
        if share >= 0.9 {
            return Ok((*t0, share));
        }
        seen.push(share);
    }
    Err(seen)
}

#[test]
fn egress_stage_shares_by_weight_and_swaps_rank_under_load() {
    if !lab::root_or_skip("egress_stage_shares_by_weight_and_swaps_rank_under_load") {
        return;
    }
    let pair = Pair::new("share");
    let ids = EgressConfig::class_ids(3);
    let stage = start(&pair, config(&ids)).unwrap();
    let filters = lab::exec(&pair.snd, &["tc", "filter", "show", "dev", DEV, "egress"]);
    assert!(
        filters.contains(&format!("mirred (Egress Redirect to device {TUN})")),
        "{filters}"
    );

    let traffic = Traffic::start(&pair);
    traffic.warm_up(Duration::from_secs(2));
    let window = Duration::from_secs(10);
    let bytes = traffic.measure(window);
    let got = shares(bytes);
    let rate = bps(bytes, window);
    eprintln!(
        "egress stage, sfq 20/30/50: shares {got:.3?}, goodput {:.1} Mbit/s",
        rate / 1e6
    );
    for i in 0..3 {
        let want = f64::from(WEIGHTS[i]) / 100.0;
        assert!(
            (got[i] - want).abs() <= 0.03,
            "class {i}: share {:.3}, want {want:.2} (all {got:.3?})",
            got[i]
        );
    }
    let link = RATE_BPS as f64;
    assert!((0.85 * link..=1.05 * link).contains(&rate), "{rate} bit/s");

    // Swap to strict priority under load: the 50-class takes the link.
    let before = stage.snapshot().unwrap();
    assert_eq!((before.rank.as_str(), before.rank_swaps), ("sfq", 0));
    let t0 = Instant::now();
    let mut samples = vec![(Duration::ZERO, traffic.received())];
    let old = stage.set_rank(Box::new(StrictPriority)).unwrap();
    assert_eq!(old.name(), "sfq");
    while t0.elapsed() < Duration::from_millis(2100) {
        std::thread::sleep(Duration::from_millis(100));
        samples.push((t0.elapsed(), traffic.received()));
    }
    let found = strict_window(&samples);
    eprintln!("after the swap to strict priority: {found:.3?}");
    assert!(
        found.is_ok(),
        "the 50-class never got 90 % in 1 s: {found:?}"
    );
    assert_eq!(traffic.stop(), 0, "TCP read or write errors");

    // Everything queued at the swap leaves; nothing is dropped but by tail drop.
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let s = stage.snapshot().unwrap();
        if s.queued_packets == 0 || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("before the swap: {before:?}\nafter: {after:?}");
    assert_eq!(after.queued_packets, 0, "queue did not drain");
    assert!(
        sent(&after) - sent(&before) >= before.queued_packets,
        "queued at the swap: {}, sent since: {}",
        before.queued_packets,
        sent(&after) - sent(&before)
    );
    assert_eq!(
        (after.rank.as_str(), after.rank_swaps),
        ("strict_priority", 1)
    );
    assert_eq!((after.rank_faults, after.unclassified), (0, 0));
    assert_eq!((after.stage.malformed, after.stage.send_errors), (0, 0));
    for c in &after.classes {
        let other = c.drops.iter().sum::<u64>() - c.tail_drops();
        assert_eq!((other, c.send_errors), (0, 0), "{c:?}");
        assert!(c.sent_packets > 0, "{c:?}");
    }

    stage.stop().unwrap();
    let q = lab::exec(&pair.snd, &["tc", "qdisc", "show", "dev", DEV]);
    assert!(
        !q.contains("clsact"),
        "the stage made clsact, so it goes: {q}"
    );
    let links = lab::exec(&pair.snd, &["ip", "-o", "link", "show"]);
    assert!(!links.contains(TUN), "{links}");
}

#[test]
fn egress_stage_refuses_cleanly_and_shares_a_clsact() {
    if !lab::root_or_skip("egress_stage_refuses_cleanly_and_shares_a_clsact") {
        return;
    }
    let pair = Pair::new("refuse");
    let ids = EgressConfig::class_ids(3);
    let tc = |args: &[&str]| lab::exec(&pair.snd, &[&["tc"][..], args].concat());
    let links = || lab::exec(&pair.snd, &["ip", "-o", "link", "show"]);

    let mut bad = config(&ids);
    bad.mark = 0;
    let e = start(&pair, bad).unwrap_err();
    assert!(
        matches!(e, EgressError::Config { field: "mark", .. }),
        "{e}"
    );
    let mut bad = config(&ids);
    bad.default_class = ClassId::ROOT;
    assert!(matches!(
        start(&pair, bad).unwrap_err(),
        EgressError::Config {
            field: "default_class",
            ..
        }
    ));
    let mut bad = config(&ids);
    bad.link = "nosuch0".to_owned();
    let e = start(&pair, bad).unwrap_err();
    assert!(matches!(e, EgressError::Link { .. }), "{e}");

    // A foreign clsact with a filter at the stage's priority: refused, and
    // neither the TUN nor a filter is left behind.
    tc(&["qdisc", "add", "dev", DEV, "clsact"]);
    let prio = FILTER_PRIO_PASS.to_string();
    tc(&[
        "filter", "add", "dev", DEV, "egress", "prio", &prio, "protocol", "ip", "u32", "match",
        "u32", "0", "0", "flowid", ":1",
    ]);
    let e = start(&pair, config(&ids)).unwrap_err();
    assert!(
        matches!(e, EgressError::PrioInUse { prio: p, .. } if p == FILTER_PRIO_PASS),
        "{e}"
    );
    assert!(!links().contains(TUN), "{}", links());
    tc(&["filter", "del", "dev", DEV, "egress", "prio", &prio]);

    // With the priority free the stage shares the clsact, and leaves it.
    let stage = start(&pair, config(&ids)).unwrap();
    assert!(links().contains(TUN));
    let s = stage.snapshot().unwrap();
    assert_eq!(s.classes.len(), 3);
    assert_eq!(s.class(ids[2]).unwrap().weight, 50);
    stage.stop().unwrap();
    let q = tc(&["qdisc", "show", "dev", DEV]);
    assert!(q.contains("clsact"), "a shared clsact stays: {q}");
    let f = tc(&["filter", "show", "dev", DEV, "egress"]);
    assert!(f.trim().is_empty(), "filters left: {f}");
    assert!(!links().contains(TUN), "{}", links());
}
