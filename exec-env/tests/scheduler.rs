//! Scheduler modules in the VM, plugged into router-core's link scheduler:
//! differential against the shipped modules' native code, shares by weight,
//! hot swap with queued packets, and faulty modules failing only their calls.
//! Every module is a really signed file installed through an environment.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failure is a test failure"
)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use exec_env::ca::{CertificateAuthority, KeyAlgorithm, SignerRequest, Validity};
use exec_env::manager::{Environment, EnvironmentConfig, ManagerError, QuarantineConfig};
use exec_env::manifest::{Manifest, ModuleKind};
use exec_env::scheduler::{self, ModuleRank, RankConfig, SchedulerError, SchedulerModule};
use exec_env::trust::TrustAnchors;
use exec_env::vm::VmError;
use exec_env::{format, sign};
use router_core::Instant;
use router_core::sched::{
    ClassConfig, ClassId, FnRank, LinkScheduler, PacketMeta, Rank, SchedConfig,
};
use sdk::{RankRequest, harness};
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

/// An operator environment trusting `ca`, and `ca`.
fn operator_env() -> (Environment, CertificateAuthority) {
    let ca = CertificateAuthority::generate(
        "operator CA",
        Validity::days_from(SystemTime::now(), 30).unwrap(),
        KeyAlgorithm::EcdsaP256,
    )
    .unwrap();
    let env = Environment::new(
        EnvironmentConfig::operator("operator"),
        TrustAnchors::from_pem(ca.cert_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    (env, ca)
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

fn prepare_shipped(env: &Environment, ca: &CertificateAuthority, name: &str) -> SchedulerModule {
    scheduler::prepare(env, &shipped_signed(ca, name), RankConfig::default()).unwrap()
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

#[test]
fn wasm_sfq_ranks_every_request_like_the_native_module() {
    let (env, ca) = operator_env();
    let module = prepare_shipped(&env, &ca, sfq::NAME);
    let mut wasm = module.rank().unwrap();
    let mut native = sfq::Sfq::EMPTY;
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut vtime = [0_u64; 80];
    let mut busy = [1_u64; 80];
    for i in 0..4000_u64 {
        // Nodes 0..6 and a few beyond the module's 64-node table.
        let node = match rng.next() % 10 {
            0 => 64 + (rng.next() % 16) as u32,
            n => (n % 6) as u32,
        };
        let leaf = rng.next().is_multiple_of(3);
        let child = if leaf {
            node
        } else {
            (rng.next() % 100) as u32
        };
        let slot = node as usize;
        // Virtual time moves forward; now and then a node starts a busy period.
        vtime[slot] += rng.next() % 50_000;
        if rng.next().is_multiple_of(200) {
            busy[slot] += 1;
            vtime[slot] = 0;
        }
        let request = RankRequest::leaf(rng.len(), child, rng.next() % 40)
            .with_node(node, child, 1 + (rng.next() % 100) as u32, 0)
            .with_state(vtime[slot], busy[slot], (rng.next() % 64) as u32)
            .with_now(i * 1000)
            .with_dscp((rng.next() % 64) as u8, 17);
        let expected = harness::rank(|r| native.rank(r), &request).unwrap();
        assert_eq!(
            wasm.rank_raw(&request, i * 1000),
            Ok(expected),
            "request {i}: {request:?}"
        );
    }
    let stats = wasm.counters().snapshot();
    assert_eq!((stats.calls, stats.ok, stats.faults()), (4000, 4000, 0));
    assert!(stats.fuel > 0);
}

/// Drives `link` with packets of `classes`, five flows each, and returns the dequeue order as (class position, sequence, rank).
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
    let module = prepare_shipped(&env, &ca, sfq::NAME);
    let weights = [20, 30, 50];
    let (mut wasm_link, classes) = flat(&weights, Box::new(module.rank().unwrap()));
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
}

#[test]
fn wasm_sfq_shares_a_backlogged_link_by_weight_within_one_percent() {
    let (env, ca) = operator_env();
    let rank = prepare_shipped(&env, &ca, sfq::NAME).rank().unwrap();
    let counters = rank.counters();
    let weights = [20_u32, 30, 50];
    let (mut link, classes) = flat(&weights, Box::new(rank));
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
    assert_eq!(counters.snapshot().faults(), 0);
}

#[test]
fn swapping_sfq_for_strict_priority_reorders_new_packets_and_loses_none() {
    let (env, ca) = operator_env();
    let sfq_module = prepare_shipped(&env, &ca, sfq::NAME);
    let strict = prepare_shipped(&env, &ca, strict_priority::NAME);
    let weights = [20, 30, 50];

    // Same traffic, with and without the swap.
    let run = |swap: bool| {
        let (mut link, classes) = flat(&weights, Box::new(sfq_module.rank().unwrap()));
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
        if swap {
            let old = strict.install_into(&mut link).unwrap();
            assert_eq!(old.name(), "sfq@0.1.0");
            assert_eq!(link.rank_name(), "strict_priority@0.1.0");
            assert_eq!(link.counters().rank_swaps, 1);
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
        (offered, out, after_swap)
    };

    // Packets offered before the swap have sequence numbers up to 180.
    let before_swap = 180;
    for swap in [false, true] {
        let (offered, out, _) = run(swap);
        // Count in == out, each packet once.
        assert_eq!(out.len(), offered.len(), "swap {swap}");
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
                assert!(seqs.windows(2).all(|w| w[0] < w[1]), "class {c} reordered");
            }
        }
    }
    let (_, unswapped, at) = run(false);
    let (_, swapped, at_swap) = run(true);
    assert_eq!(at, at_swap);
    assert_eq!(unswapped[..at], swapped[..at]);
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

fn faulty_link(
    quarantine: QuarantineConfig,
) -> (
    LinkScheduler<(usize, u64)>,
    Vec<ClassId>,
    std::sync::Arc<scheduler::RankCounters>,
) {
    let (env, ca) = operator_env();
    // Classes get indices 1..=4 under the root (index 0).
    let wasm = faulty_wat(2, 3, 4);
    let bytes = signed(&ca, &scheduler_manifest("faulty"), &wasm);
    let config = RankConfig {
        quarantine,
        ..RankConfig::default()
    };
    let rank: ModuleRank = scheduler::prepare(&env, &bytes, config)
        .unwrap()
        .rank()
        .unwrap();
    let counters = rank.counters();
    let (link, classes) = flat(&[1, 1, 1, 1], Box::new(rank));
    assert_eq!(
        classes.iter().map(|c| c.index()).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    (link, classes, counters)
}

#[test]
fn a_trapping_looping_or_negative_scheduler_fails_only_its_calls() {
    let never = QuarantineConfig {
        faults: u32::MAX,
        ..QuarantineConfig::default()
    };
    let (mut link, classes, counters) = faulty_link(never);
    let now = Instant::ZERO;
    let mut seq = 0_u64;
    for round in 0..5_u32 {
        for (c, class) in classes.iter().enumerate() {
            seq += 1;
            let meta = PacketMeta::new(100 + round, *class);
            link.enqueue(&meta, (c, seq), now).unwrap();
        }
    }
    let stats = counters.snapshot();
    // Per packet: class 1 (index 1) two good calls; index 2 traps twice; index 3
    // ranks its leaf then loops at the root; index 4 returns -5 twice.
    assert_eq!(stats.calls, 40);
    assert_eq!(stats.ok, 10 + 5);
    assert_eq!(stats.traps, 10);
    assert_eq!(stats.timeouts, 5);
    assert_eq!(stats.bad_results, 10);
    assert_eq!(stats.quarantines, 0);
    assert_eq!(stats.restarts, 25, "one rebuild per fault");
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

#[test]
fn repeated_faults_quarantine_the_scheduler_module() {
    let quarantine = QuarantineConfig {
        faults: 3,
        window: Duration::from_secs(10),
        backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(60),
    };
    let (mut link, classes, counters) = faulty_link(quarantine);
    let trap_class = classes[1];
    let mut now = Instant::ZERO;
    // Two packets: four trapping calls, the third quarantines.
    for seq in 0..2 {
        link.enqueue(&PacketMeta::new(100, trap_class), (1, seq), now)
            .unwrap();
    }
    let stats = counters.snapshot();
    assert_eq!((stats.traps, stats.quarantines), (3, 1));
    assert_eq!(stats.quarantined_refusals, 1);
    // Quarantined: even a good class is refused without running wasm.
    link.enqueue(&PacketMeta::new(100, classes[0]), (0, 9), now)
        .unwrap();
    let stats = counters.snapshot();
    assert_eq!((stats.ok, stats.quarantined_refusals), (0, 3));
    // After the backoff the module serves again.
    now = now + Duration::from_millis(1001);
    link.enqueue(&PacketMeta::new(100, classes[0]), (0, 10), now)
        .unwrap();
    assert_eq!(counters.snapshot().ok, 2);
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
    // The policy path (the manager) refuses a scheduler module...
    let sfq_file = shipped_signed(&ca, sfq::NAME);
    assert!(matches!(
        env.install(&sfq_file),
        Err(ManagerError::Vm(VmError::UnsupportedKind {
            kind: ModuleKind::Scheduler,
            ..
        }))
    ));
    // ...and the scheduler path a policy module.
    let policy_file = shipped_signed(&ca, "least_load");
    assert!(matches!(
        scheduler::prepare(&env, &policy_file, RankConfig::default()),
        Err(SchedulerError::Vm(VmError::UnsupportedKind {
            kind: ModuleKind::Policy,
            ..
        }))
    ));
    // A scheduler without pronto_rank is refused at load.
    let no_rank = wat::parse_str(
        r#"(module (memory (export "memory") 1)
  (func (export "pronto_abi_version") (result i32) i32.const 1)
  (func (export "pronto_io_buffer") (result i32) i32.const 1024))"#,
    )
    .unwrap();
    let file = signed(&ca, &scheduler_manifest("norank"), &no_rank);
    assert!(matches!(
        scheduler::prepare(&env, &file, RankConfig::default()),
        Err(SchedulerError::Vm(VmError::MissingExport {
            name: "pronto_rank"
        }))
    ));
    // An untrusted signer is refused before anything is compiled.
    let (_, stranger) = operator_env();
    assert!(matches!(
        scheduler::prepare(
            &env,
            &shipped_signed(&stranger, sfq::NAME),
            RankConfig::default()
        ),
        Err(SchedulerError::Verify(_))
    ));
    // Tenant environments take no scheduler modules.
    let tenant = Environment::new(
        EnvironmentConfig::tenant("tenant", Vec::new()),
        TrustAnchors::from_pem(ca.cert_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    assert!(matches!(
        scheduler::prepare(&tenant, &sfq_file, RankConfig::default()),
        Err(SchedulerError::TenantEnvironment { .. })
    ));
}
