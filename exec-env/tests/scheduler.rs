//! Scheduler modules through an environment, plugged into router-core's link
//! scheduler: differential against the shipped modules' native code, shares by
//! weight, hot swap with queued packets (by the link and by the environment),
//! faulty modules failing only their calls and quarantined by the
//! environment, and CPU charged to the module's share. Every module is a
//! really signed file loaded with `Environment::load` and bound in
//! `Role::Scheduler`.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failure is a test failure"
)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use exec_env::ca::{CertificateAuthority, KeyAlgorithm, SignerRequest, Validity};
use exec_env::manager::{
    BoundHandle, Environment, EnvironmentConfig, ManagerError, ModuleRankHandle, QuarantineConfig,
    RANK_FUEL_PER_CALL, Role, VersionState,
};
use exec_env::manifest::{Manifest, ModuleKind};
use exec_env::scheduler;
use exec_env::trust::TrustAnchors;
use exec_env::vm::{VmConfig, VmError};
use exec_env::{format, sign};
use resource_mgr::BudgetConfig;
use router_core::Instant;
use router_core::classify::VirtualSubnet;
use router_core::sched::{
    ClassConfig, ClassId, FnRank, LinkScheduler, PacketMeta, Rank, RankContext, SchedConfig,
};
use sdk::harness;
use slr_policy_wasm::{sfq, strict_priority};

/// xorshift64*: seeded packet sizes and request fields.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn len(&mut self) -> u32 {
        64 + (self.next() % 1437) as u32
    }
}

fn new_ca() -> CertificateAuthority {
    CertificateAuthority::generate(
        "operator CA",
        Validity::days_from(SystemTime::now(), 30).unwrap(),
        KeyAlgorithm::EcdsaP256,
    )
    .unwrap()
}

/// An operator environment whose CPU budget no test here can spend (10^10
/// fuel per 10 ms period), so only the tests about CPU see throttling.
fn roomy(name: &str) -> EnvironmentConfig {
    EnvironmentConfig {
        budget: BudgetConfig::new(10_000_000, 10_000_000_000),
        ..EnvironmentConfig::operator(name)
    }
}

/// An environment of `config` trusting `ca`.
fn env_trusting(ca: &CertificateAuthority, config: EnvironmentConfig) -> Environment {
    Environment::new(
        config,
        TrustAnchors::from_pem(ca.cert_pem().as_bytes()).unwrap(),
    )
    .unwrap()
}

/// A roomy operator environment trusting a new CA, and the CA.
fn operator_env() -> (Environment, CertificateAuthority) {
    let ca = new_ca();
    (env_trusting(&ca, roomy("operator")), ca)
}

/// A signed module file: manifest embedded, signed by a signer `ca` issued.
fn signed(ca: &CertificateAuthority, manifest: &Manifest, wasm: &[u8]) -> Vec<u8> {
    let request = SignerRequest::new(
        "scheduler signer",
        Validity::days_from(SystemTime::now(), 30).unwrap(),
    );
    let signer = ca.issue_signer(&request).unwrap();
    let unsigned = format::embed_manifest(wasm, manifest).unwrap();
    sign::sign_module(
        &unsigned,
        &signer.signing_key().unwrap(),
        vec![signer.cert_der.clone()],
    )
    .unwrap()
}

/// A shipped module of slr-policy-wasm, signed by `ca`.
fn shipped_signed(ca: &CertificateAuthority, name: &str) -> Vec<u8> {
    let module = common::shipped(name);
    signed(ca, &module.manifest, &module.wasm)
}

fn scheduler_manifest(name: &str) -> Manifest {
    Manifest {
        name: name.to_owned(),
        version: semver::Version::new(0, 1, 0),
        kind: ModuleKind::Scheduler,
        capabilities: Vec::new(),
        subnets: Vec::new(),
        description: String::new(),
    }
}

/// Module `name` bound as the link's rank function.
fn rank_handle(env: &Environment, name: &str) -> ModuleRankHandle {
    let report = env.bind(name, Role::LINK, Role::Scheduler).unwrap();
    match report.handle {
        BoundHandle::Rank(h) => h,
        other => panic!("bound {name} as a scheduler, got {other:?}"),
    }
}

/// Loads the shipped module `name` (signed by `ca`) into `env` and binds it.
fn load_shipped(env: &Environment, ca: &CertificateAuthority, name: &str) -> Box<dyn Rank> {
    env.load(&shipped_signed(ca, name)).unwrap();
    Box::new(rank_handle(env, name))
}

/// A flat link: one leaf per weight (priority = position) under the root.
fn flat(weights: &[u32], rank: Box<dyn Rank>) -> (LinkScheduler<(usize, u64)>, Vec<ClassId>) {
    let mut link = LinkScheduler::with_rank(SchedConfig::default(), rank);
    let classes = weights
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            let config = ClassConfig::new(w).with_priority(u8::try_from(i).unwrap());
            link.add_class(ClassId::ROOT, config).unwrap()
        })
        .collect();
    (link, classes)
}

/// Class ids of indices `0..n` (the root and `n - 1` leaves), to build rank
/// contexts by hand.
fn class_ids(n: usize) -> Vec<ClassId> {
    let noop = FnRank::new("noop", |_: &PacketMeta, _: &RankContext| 0);
    let config = SchedConfig::default().with_max_classes(n);
    let mut link = LinkScheduler::<()>::with_rank(config, Box::new(noop));
    let mut ids = vec![ClassId::ROOT];
    for _ in 1..n {
        ids.push(link.add_class(ClassId::ROOT, ClassConfig::new(1)).unwrap());
    }
    assert!(ids.iter().enumerate().all(|(i, c)| c.index() as usize == i));
    ids
}

#[test]
fn wasm_sfq_ranks_every_request_like_the_native_module() {
    let (env, ca) = operator_env();
    env.load(&shipped_signed(&ca, sfq::NAME)).unwrap();
    let mut wasm = rank_handle(&env, sfq::NAME);
    let mut native = sfq::Sfq::EMPTY;
    let ids = class_ids(100);
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut vtime = [0_u64; 80];
    let mut busy = [1_u64; 80];
    for i in 0..4000_u64 {
        // Nodes 0..6 and a few beyond the module's 64-node table.
        let node = match rng.next() % 10 {
            0 => 64 + (rng.next() % 16) as usize,
            n => (n % 6) as usize,
        };
        let leaf = rng.next().is_multiple_of(3);
        let child = if leaf {
            node
        } else {
            (rng.next() % 100) as usize
        };
        // Virtual time moves forward; now and then a node starts a busy period.
        vtime[node] += rng.next() % 50_000;
        if rng.next().is_multiple_of(200) {
            busy[node] += 1;
            vtime[node] = 0;
        }
        let packet = PacketMeta::new(rng.len(), ids[child])
            .with_flow(rng.next() % 40)
            .with_dscp((rng.next() % 64) as u8, 17);
        let at = RankContext {
            node: ids[node],
            child: ids[child],
            weight: 1 + (rng.next() % 100) as u32,
            priority: 0,
            vtime: vtime[node],
            busy_period: busy[node],
            queued: (rng.next() % 64) as u32,
            now: Instant::from_nanos(i * 1000),
        };
        let request = scheduler::rank_request(&packet, &at);
        let expected = harness::rank(|r| native.rank(r), &request).unwrap();
        assert_eq!(
            wasm.rank(&packet, &at),
            Ok(expected),
            "request {i}: {request:?}"
        );
    }
    let counters = env.module(sfq::NAME).unwrap().counters;
    assert_eq!(
        (
            counters.calls,
            counters.ok,
            counters.faults(),
            counters.throttled
        ),
        (4000, 4000, 0, 0)
    );
    assert!(counters.cpu_used > 0);
}

/// Drives `link` with packets of `classes`, five flows each, and returns the
/// dequeue order as (class position, sequence, rank).
fn drive(
    link: &mut LinkScheduler<(usize, u64)>,
    classes: &[ClassId],
    packets: usize,
) -> Vec<(usize, u64, u64)> {
    let mut rng = Rng(0xfeed_beef_1234_5678);
    let mut out = Vec::new();
    let mut now = Instant::ZERO;
    for seq in 0..packets as u64 {
        let c = (rng.next() % classes.len() as u64) as usize;
        let meta = PacketMeta::new(rng.len(), classes[c]).with_flow(rng.next() % 5);
        link.enqueue(&meta, (c, seq), now).unwrap();
        now = now + Duration::from_micros(1);
        // Dequeue two for every three arrivals so queues build and drain.
        if seq % 3 != 0
            && let Some(d) = link.dequeue(now)
        {
            out.push((d.packet.0, d.packet.1, d.rank));
        }
    }
    while let Some(d) = link.dequeue(now) {
        out.push((d.packet.0, d.packet.1, d.rank));
    }
    out
}

#[test]
fn wasm_sfq_in_a_link_scheduler_matches_the_native_module() {
    let (env, ca) = operator_env();
    let weights = [20, 30, 50];
    let (mut wasm_link, classes) = flat(&weights, load_shipped(&env, &ca, sfq::NAME));
    let mut native = sfq::Sfq::EMPTY;
    let native_rank = FnRank::new("native sfq", move |p: &PacketMeta, at: &_| {
        harness::rank(|r| native.rank(r), &scheduler::rank_request(p, at)).unwrap()
    });
    let (mut native_link, native_classes) = flat(&weights, Box::new(native_rank));
    assert_eq!(classes, native_classes);
    let wasm_order = drive(&mut wasm_link, &classes, 3000);
    let native_order = drive(&mut native_link, &classes, 3000);
    assert_eq!(wasm_order.len(), 3000);
    assert_eq!(wasm_order, native_order);
    assert_eq!(wasm_link.counters().rank_faults, 0);
    assert_eq!(wasm_link.counters().rank_calls, 6000);
    let counters = env.module(sfq::NAME).unwrap().counters;
    assert_eq!((counters.calls, counters.ok), (6000, 6000));
}

#[test]
fn wasm_sfq_shares_a_backlogged_link_by_weight_within_one_percent() {
    let (env, ca) = operator_env();
    let weights = [20_u32, 30, 50];
    let (mut link, classes) = flat(&weights, load_shipped(&env, &ca, sfq::NAME));
    let mut rng = Rng(0x0dd_ba11_cafe_f00d);
    let mut now = Instant::ZERO;
    let mut seq = 0_u64;
    let mut offer = |link: &mut LinkScheduler<(usize, u64)>, c: usize, now: Instant| {
        seq += 1;
        let meta = PacketMeta::new(rng.len(), classes[c]).with_flow(c as u64);
        link.enqueue(&meta, (c, seq), now).unwrap();
    };
    for c in 0..classes.len() {
        for _ in 0..8 {
            offer(&mut link, c, now);
        }
    }
    let mut bytes = [0_u64; 3];
    for _ in 0..100_000 {
        let d = link.dequeue(now).unwrap();
        bytes[d.packet.0] += u64::from(d.len);
        now = now + Duration::from_micros(1);
        // Every class stays backlogged.
        offer(&mut link, d.packet.0, now);
    }
    let total: u64 = bytes.iter().sum();
    for (c, &w) in weights.iter().enumerate() {
        let share = bytes[c] as f64 / total as f64;
        let want = f64::from(w) / 100.0;
        assert!(
            (share - want).abs() < 0.01,
            "class {c}: share {share:.4}, weight {want}; bytes {bytes:?}"
        );
    }
    assert_eq!(link.counters().rank_faults, 0);
    let counters = env.module(sfq::NAME).unwrap().counters;
    assert_eq!((counters.faults(), counters.throttled), (0, 0));
}

/// How the swap test replaces sfq between two packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Swap {
    /// No swap: the reference run.
    None,
    /// `LinkScheduler::set_rank` with the handle of `strict_priority`.
    Link,
    /// `Environment::swap` of an `sfq` 0.2.0 that is strict priority, under
    /// the link's handle.
    Environment,
}

#[test]
fn swapping_sfq_for_strict_priority_reorders_new_packets_and_loses_none() {
    let ca = new_ca();
    let sfq_file = shipped_signed(&ca, sfq::NAME);
    let strict_file = shipped_signed(&ca, strict_priority::NAME);
    // strict_priority's code as version 0.2.0 of sfq.
    let strict = common::shipped(strict_priority::NAME);
    let sfq_v2 = Manifest {
        name: sfq::NAME.to_owned(),
        version: semver::Version::new(0, 2, 0),
        ..strict.manifest.clone()
    };
    let sfq_v2_file = signed(&ca, &sfq_v2, &strict.wasm);
    let weights = [20, 30, 50];

    // Same traffic, with and without the swap. A version's instance holds the
    // module's state, so each run gets an environment of its own.
    let run = |swap: Swap| {
        let env = env_trusting(&ca, roomy("operator"));
        env.load(&sfq_file).unwrap();
        env.load(&strict_file).unwrap();
        let (mut link, classes) = flat(&weights, Box::new(rank_handle(&env, sfq::NAME)));
        let mut now = Instant::ZERO;
        let mut seq = 0_u64;
        let mut offered = BTreeSet::new();
        let mut offer = |link: &mut LinkScheduler<(usize, u64)>, now: Instant| {
            for (c, class) in classes.iter().enumerate() {
                seq += 1;
                let meta = PacketMeta::new(1000, *class).with_flow(c as u64);
                link.enqueue(&meta, (c, seq), now).unwrap();
                offered.insert((c, seq));
            }
        };
        let mut out = Vec::new();
        for _ in 0..60 {
            offer(&mut link, now);
        }
        for _ in 0..90 {
            out.push(link.dequeue(now).unwrap().packet);
        }
        let queued_at_swap = link.len();
        match swap {
            Swap::None => {}
            Swap::Link => {
                let old = link.set_rank(Box::new(rank_handle(&env, strict_priority::NAME)));
                assert_eq!(old.name(), sfq::NAME);
                assert_eq!(link.rank_name(), strict_priority::NAME);
                assert_eq!(link.counters().rank_swaps, 1);
            }
            Swap::Environment => {
                let report = env.swap(&sfq_v2_file).unwrap();
                assert_eq!(report.replaced.version, semver::Version::new(0, 1, 0));
                assert_eq!(report.active.version, semver::Version::new(0, 2, 0));
                // The link kept its handle: the environment swapped under it.
                assert_eq!(link.rank_name(), sfq::NAME);
                assert_eq!(link.counters().rank_swaps, 0);
                let info = env.module(sfq::NAME).unwrap();
                assert_eq!(info.counters.swaps, 1);
                assert_eq!(info.previous.unwrap().state, VersionState::Standby);
            }
        }
        // Queued packets survived the swap untouched.
        assert_eq!(link.len(), queued_at_swap);
        now = now + Duration::from_millis(1);
        for _ in 0..40 {
            offer(&mut link, now);
        }
        let after_swap = out.len();
        while let Some(d) = link.dequeue(now) {
            out.push(d.packet);
        }
        assert_eq!(link.counters().rank_faults, 0);
        for info in env.list() {
            assert_eq!(info.counters.faults(), 0, "{}", info.name);
        }
        (offered, out, after_swap)
    };

    // Packets offered before the swap have sequence numbers up to 180.
    let before_swap = 180;
    for swap in [Swap::None, Swap::Link, Swap::Environment] {
        let (offered, out, _) = run(swap);
        // Count in == out, each packet once.
        assert_eq!(out.len(), offered.len(), "swap {swap:?}");
        assert_eq!(out.iter().copied().collect::<BTreeSet<_>>(), offered);
        // One flow per class: arrival order inside a class among the packets
        // ranked by one function. (sfq ranks leaves by flow tags, strict
        // priority at 0, so after the swap new packets of a class may pass
        // its older ones: the leaf order changes with the function.)
        for c in 0..3 {
            for old in [true, false] {
                let seqs: Vec<u64> = out
                    .iter()
                    .filter(|p| p.0 == c && (p.1 <= before_swap) == old)
                    .map(|p| p.1)
                    .collect();
                assert!(
                    seqs.windows(2).all(|w| w[0] < w[1]),
                    "swap {swap:?}: class {c} reordered"
                );
            }
        }
    }
    let (_, unswapped, at) = run(Swap::None);
    let (_, swapped, at_swap) = run(Swap::Link);
    let (_, env_swapped, at_env_swap) = run(Swap::Environment);
    assert_eq!(at, at_swap);
    assert_eq!(at, at_env_swap);
    assert_eq!(unswapped[..at], swapped[..at]);
    // Both ways of swapping give the same order.
    assert_eq!(swapped, env_swapped);
    // Under SFQ the next 40 packets mix all classes by weight; under strict
    // priority the 40 new priority-0 references are served first: all class 0.
    let classes_of = |order: &[(usize, u64)]| {
        order[at..at + 40]
            .iter()
            .map(|p| p.0)
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(classes_of(&unswapped), BTreeSet::from([0, 1, 2]));
    assert_eq!(classes_of(&swapped), BTreeSet::from([0]));
    // Then the 40 of priority 1.
    assert!(swapped[at + 40..at + 80].iter().all(|p| p.0 == 1));
}

/// A scheduler in WAT: traps for any packet of class index `trap`, loops at the
/// root level for child `spin`, returns -5 for class `negative`, else the
/// packet's length.
fn faulty_wat(trap: u32, spin: u32, negative: u32) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
  (memory (export "memory") 1)
  (func (export "pronto_abi_version") (result i32) i32.const 1)
  (func (export "pronto_io_buffer") (result i32) i32.const 1024)
  (func (export "pronto_rank") (result i64)
    (if (i32.eq (i32.load (i32.const 1028)) (i32.const {trap})) (then unreachable))
    (if (i32.eq (i32.load (i32.const 1028)) (i32.const {negative}))
      (then (return (i64.const -5))))
    (if (i32.and
          (i32.eq (i32.load (i32.const 1036)) (i32.const {spin}))
          (i32.ne (i32.load (i32.const 1032)) (i32.const {spin})))
      (then (loop $l (br $l))))
    (i64.extend_i32_u (i32.load (i32.const 1024)))))"#
    ))
    .unwrap()
}

/// An environment of `config` holding the faulty module `faulty`, bound to a
/// flat link of four classes (indices 1..=4; 2 traps, 3 loops at the root,
/// 4 answers -5).
fn faulty_link(
    config: EnvironmentConfig,
) -> (Environment, LinkScheduler<(usize, u64)>, Vec<ClassId>) {
    let ca = new_ca();
    let env = env_trusting(&ca, config);
    let bytes = signed(&ca, &scheduler_manifest("faulty"), &faulty_wat(2, 3, 4));
    env.load(&bytes).unwrap();
    let (link, classes) = flat(&[1, 1, 1, 1], Box::new(rank_handle(&env, "faulty")));
    assert_eq!(
        classes.iter().map(|c| c.index()).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    (env, link, classes)
}

/// Enqueues five packets in each class of the faulty link and checks what
/// each class's calls did, then that nothing is lost.
fn five_rounds_fail_only_their_calls(config: EnvironmentConfig) {
    let (env, mut link, classes) = faulty_link(config);
    let now = Instant::ZERO;
    let mut seq = 0_u64;
    for round in 0..5_u32 {
        for (c, class) in classes.iter().enumerate() {
            seq += 1;
            let meta = PacketMeta::new(100 + round, *class);
            link.enqueue(&meta, (c, seq), now).unwrap();
        }
    }
    let info = env.module("faulty").unwrap();
    let counters = info.counters;
    // Per packet: class 1 (index 1) two good calls; index 2 traps twice; index 3
    // ranks its leaf then loops at the root; index 4 returns -5 twice.
    assert_eq!(counters.calls, 40);
    assert_eq!(counters.ok, 10 + 5);
    assert_eq!(counters.traps, 10);
    assert_eq!(counters.timeouts, 5);
    assert_eq!(counters.bad_results, 10);
    assert_eq!(counters.throttled, 0);
    assert_eq!(counters.quarantines, 0);
    assert_eq!(info.active.instance.restarts, 25, "one rebuild per fault");
    assert_eq!(link.counters().rank_faults, 25);
    let mut out = Vec::new();
    while let Some(d) = link.dequeue(now) {
        out.push(d);
    }
    // Nothing lost; the good class kept its module ranks (its lengths), the
    // faulty leaves got their virtual time (0: nothing dequeued before).
    assert_eq!(out.len(), 20);
    for d in &out {
        let c = d.packet.0;
        let expected = if c == 0 || c == 2 {
            u64::from(d.len)
        } else {
            0
        };
        assert_eq!(d.rank, expected, "class position {c}");
    }
}

fn never_quarantined() -> EnvironmentConfig {
    EnvironmentConfig {
        quarantine: QuarantineConfig {
            faults: u32::MAX,
            ..QuarantineConfig::default()
        },
        ..roomy("operator")
    }
}

#[test]
fn a_trapping_looping_or_negative_scheduler_fails_only_its_calls() {
    // The VM's per-call fuel equal to the rank fuel, so running out of it is
    // a timeout of the module (see the ignored test below for the default VM).
    five_rounds_fail_only_their_calls(EnvironmentConfig {
        vm: VmConfig::default().with_fuel_per_call(Some(RANK_FUEL_PER_CALL)),
        ..never_quarantined()
    });
}

#[test]
fn a_looping_scheduler_is_a_timeout_under_the_default_vm_config() {
    five_rounds_fail_only_their_calls(never_quarantined());
}

#[test]
fn repeated_faults_quarantine_the_scheduler_module() {
    // Time is injected (`Vm::advance_clock`), not slept: the backoff is long
    // enough that a slow machine cannot reach its end during the checks.
    let quarantine = QuarantineConfig {
        faults: 3,
        window: Duration::from_secs(60),
        backoff: Duration::from_secs(10),
        max_backoff: Duration::from_secs(60),
    };
    let (env, mut link, classes) = faulty_link(EnvironmentConfig {
        quarantine,
        ..roomy("operator")
    });
    let trap_class = classes[1];
    let now = Instant::ZERO;
    // Two packets: four trapping calls, the third quarantines.
    for seq in 0..2 {
        link.enqueue(&PacketMeta::new(100, trap_class), (1, seq), now)
            .unwrap();
    }
    let info = env.module("faulty").unwrap();
    assert_eq!((info.counters.traps, info.counters.quarantines), (3, 1));
    assert_eq!(info.counters.quarantined_refusals, 1);
    assert!(matches!(
        info.active.state,
        VersionState::Quarantined { remaining } if remaining <= Duration::from_secs(10)
    ));
    // Quarantined: even a good class is refused without running wasm.
    link.enqueue(&PacketMeta::new(100, classes[0]), (0, 9), now)
        .unwrap();
    let counters = env.module("faulty").unwrap().counters;
    assert_eq!((counters.ok, counters.quarantined_refusals), (0, 3));
    // After the backoff the module serves again.
    env.vm().advance_clock(Duration::from_secs(11));
    link.enqueue(&PacketMeta::new(100, classes[0]), (0, 10), now)
        .unwrap();
    let info = env.module("faulty").unwrap();
    assert_eq!(info.active.state, VersionState::Serving);
    assert_eq!(info.counters.ok, 2);
    assert_eq!(info.counters.quarantines, 1);
    assert_eq!(link.counters().rank_faults, 6);
    let mut n = 0;
    while link.dequeue(now).is_some() {
        n += 1;
    }
    assert_eq!(n, 4);
}

#[test]
fn kinds_and_environments_are_kept_apart() {
    let (env, ca) = operator_env();
    let sfq_file = shipped_signed(&ca, sfq::NAME);
    env.load(&sfq_file).unwrap();
    env.load(&shipped_signed(&ca, "least_load")).unwrap();
    // The scheduler module is listed with the policies.
    let names: Vec<String> = env.list().into_iter().map(|m| m.name).collect();
    assert_eq!(names, ["least_load", sfq::NAME]);
    let info = env.module(sfq::NAME).unwrap();
    assert_eq!(info.active.version, semver::Version::new(0, 1, 0));
    assert_eq!(info.active.state, VersionState::Serving);
    // A policy module cannot rank, a scheduler module cannot select or cost.
    assert!(matches!(
        env.bind("least_load", Role::LINK, Role::Scheduler),
        Err(ManagerError::WrongRole {
            role: Role::Scheduler,
            ..
        })
    ));
    let subnet: VirtualSubnet = "10.0.0.0/8".parse().unwrap();
    // A rank orders the whole link: it binds under Role::LINK only.
    let err = env.bind(sfq::NAME, subnet, Role::Scheduler).unwrap_err();
    assert!(matches!(err, ManagerError::LinkOnly { .. }), "{err}");
    assert!(err.hint().contains("without a subnet"), "{}", err.hint());
    for role in [Role::Policy, Role::Cost] {
        assert!(
            matches!(
                env.bind(sfq::NAME, subnet, role),
                Err(ManagerError::WrongRole { role: r, .. }) if r == role
            ),
            "{role}"
        );
    }
    assert!(matches!(
        env.policy(sfq::NAME, subnet),
        Err(ManagerError::WrongRole { .. })
    ));
    assert_eq!(env.counters().bind_refused, 5);
    // The scheduler binding is recorded for the whole link.
    rank_handle(&env, sfq::NAME);
    let bindings = env.bindings();
    assert_eq!(bindings.len(), 1);
    assert_eq!(
        (
            bindings[0].subnet,
            bindings[0].role,
            bindings[0].module.as_str()
        ),
        (Role::LINK, Role::Scheduler, sfq::NAME)
    );
    // A scheduler without pronto_rank is refused at load.
    let no_rank = wat::parse_str(
        r#"(module (memory (export "memory") 1)
  (func (export "pronto_abi_version") (result i32) i32.const 1)
  (func (export "pronto_io_buffer") (result i32) i32.const 1024))"#,
    )
    .unwrap();
    let file = signed(&ca, &scheduler_manifest("norank"), &no_rank);
    assert!(matches!(
        env.load(&file),
        Err(ManagerError::Vm(VmError::MissingExport {
            name: "pronto_rank"
        }))
    ));
    // An untrusted signer is refused before anything is compiled.
    let stranger = new_ca();
    let file = signed(&stranger, &scheduler_manifest("stranger"), &no_rank);
    assert!(matches!(env.load(&file), Err(ManagerError::Verify(_))));
    assert!(env.module("norank").is_none() && env.module("stranger").is_none());
    // Tenant environments take no scheduler modules.
    let tenant = env_trusting(&ca, EnvironmentConfig::tenant("tenant", vec![subnet]));
    let refused = tenant.load(&sfq_file).unwrap_err();
    assert!(
        matches!(&refused, ManagerError::SchedulerInTenant { env } if env == "tenant"),
        "{refused:?}"
    );
    assert!(!refused.hint().is_empty());
    assert!(tenant.list().is_empty());
}

/// Enqueues and dequeues `packets` packets of rotating classes and flows;
/// answers how many came out.
fn pump(link: &mut LinkScheduler<(usize, u64)>, classes: &[ClassId], packets: u64) -> u64 {
    let mut rng = Rng(0x5eed_0fc0_ffee_0000);
    let mut now = Instant::ZERO;
    for seq in 0..packets {
        let c = (seq % classes.len() as u64) as usize;
        let meta = PacketMeta::new(rng.len(), classes[c]).with_flow(seq % 7);
        link.enqueue(&meta, (c, seq), now).unwrap();
        now = now + Duration::from_micros(1);
    }
    let mut out = 0;
    while link.dequeue(now).is_some() {
        out += 1;
    }
    out
}

#[test]
fn a_scheduler_module_is_charged_to_its_own_cpu_share() {
    let (env, ca) = operator_env();
    let (mut link, classes) = flat(&[20, 30, 50], load_shipped(&env, &ca, sfq::NAME));
    // A second module, loaded but never called.
    env.load(&shipped_signed(&ca, strict_priority::NAME))
        .unwrap();
    assert_eq!(pump(&mut link, &classes, 2000), 2000);
    let info = env.module(sfq::NAME).unwrap();
    let calls = link.counters().rank_calls;
    assert_eq!((info.counters.calls, info.counters.ok), (calls, calls));
    // Fuel: some per call, never more than a rank call gets.
    let cpu = info.counters.cpu_used;
    assert!(
        cpu >= calls * 10 && cpu <= calls * RANK_FUEL_PER_CALL,
        "{cpu} fuel for {calls} calls"
    );
    // What resource-mgr booked is part of it (the rest is not settled yet).
    let booked = info.cpu.unwrap();
    assert!(booked.consumed <= cpu, "{booked:?} vs {cpu}");
    assert_eq!(booked.throttled, 0);
    // The idle module was charged nothing.
    let idle = env.module(strict_priority::NAME).unwrap();
    assert_eq!((idle.counters.calls, idle.counters.cpu_used), (0, 0));
}

#[test]
fn a_scheduler_module_over_its_cpu_share_is_throttled_and_loses_no_packet() {
    // 20 000 fuel for a period longer than the test: a few dozen sfq calls.
    const CAPACITY: u64 = 20_000;
    let ca = new_ca();
    let env = env_trusting(
        &ca,
        EnvironmentConfig {
            budget: BudgetConfig::new(600_000_000_000, CAPACITY),
            ..EnvironmentConfig::operator("operator")
        },
    );
    let (mut link, classes) = flat(&[20, 30, 50], load_shipped(&env, &ca, sfq::NAME));
    assert_eq!(pump(&mut link, &classes, 2000), 2000);
    let info = env.module(sfq::NAME).unwrap();
    let c = info.counters;
    let calls = link.counters().rank_calls;
    assert_eq!(c.calls, calls);
    assert!(c.throttled > 0 && c.ok > 0, "{c:?}");
    // Throttled calls ran no wasm and are no module fault; the link ranked
    // those packets itself.
    assert_eq!(c.ok + c.throttled, calls);
    assert_eq!((c.faults(), c.quarantines), (0, 0));
    assert_eq!(link.counters().rank_faults, c.throttled);
    // The share, plus at most one call's overrun.
    assert!(
        c.cpu_used <= CAPACITY + RANK_FUEL_PER_CALL,
        "{} fuel charged",
        c.cpu_used
    );
    assert!(info.cpu.unwrap().throttled > 0);
}
