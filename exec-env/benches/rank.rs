//! One packet through a link scheduler (enqueue + dequeue) with a wasm rank
//! against the native rank, in one run.
//!
//! Group `link/3_classes`: a flat link of three backlogged classes (weights
//! 20/30/50, 64 packets queued in each); one iteration enqueues a packet (of
//! the next class in turn, one of 8 flows) and dequeues one, so each iteration
//! makes two rank calls (leaf, root) and two heap pushes and pops per level.
//! `native_sfq` is router-core's built-in `Sfq` (the baseline);
//! `native_module_sfq` is the shipped sfq module's code compiled natively
//! behind an `FnRank` (the request built by `exec_env::scheduler::rank_request`);
//! `wasm_sfq` is the shipped sfq module loaded into an environment and bound in
//! the scheduler role, ranking through its `manager::ModuleRankHandle` (active
//! version looked up, quarantine and CPU admission checked, request encoded
//! into guest memory, fuel and epoch armed, call, rank validated, CPU charged
//! and counted). The environment's CPU budget is too large to spend, so no call
//! is throttled. The ratio to report is `wasm_sfq / native_sfq`.
//!
//! Run: `cargo bench -p exec-env --bench rank`.

#![allow(
    clippy::unwrap_used,
    reason = "bench setup: a failure is a bug in the bench itself"
)]

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use exec_env::manager::{BoundHandle, Environment, EnvironmentConfig, Role};
use exec_env::manifest::Manifest;
use exec_env::scheduler;
use exec_env::trust::TrustAnchors;
use exec_env::verified::{SignerInfo, VerifiedModule};
use resource_mgr::BudgetConfig;
use router_core::Instant;
use router_core::sched::{
    ClassConfig, ClassId, FnRank, LinkScheduler, PacketMeta, Rank, SchedConfig, Sfq,
};
use slr_policy_wasm::sfq;

fn sfq_module() -> VerifiedModule {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../slr-policy-wasm");
    let wasm = std::fs::read(format!("{root}/modules/sfq.wasm")).unwrap();
    let text = std::fs::read_to_string(format!("{root}/manifests/sfq.toml")).unwrap();
    let manifest: Manifest = toml::from_str(&text).unwrap();
    VerifiedModule {
        manifest,
        wasm,
        digest: [0; 32],
        signer: SignerInfo {
            subject: "CN=bench".to_owned(),
            issuer: "CN=bench".to_owned(),
            serial: "01".to_owned(),
            not_before: SystemTime::UNIX_EPOCH,
            not_after: SystemTime::now() + Duration::from_secs(3600),
            subnets: Vec::new(),
        },
    }
}

/// A backlogged flat link of three classes and a packet source for it.
struct Link {
    link: LinkScheduler<u64>,
    classes: Vec<ClassId>,
    seq: u64,
}

impl Link {
    fn new(rank: Box<dyn Rank>) -> Self {
        let mut link = LinkScheduler::with_rank(SchedConfig::default(), rank);
        let classes = [20, 30, 50]
            .into_iter()
            .map(|w| link.add_class(ClassId::ROOT, ClassConfig::new(w)).unwrap())
            .collect();
        let mut this = Self {
            link,
            classes,
            seq: 0,
        };
        for _ in 0..3 * 64 {
            this.enqueue();
        }
        this
    }

    fn enqueue(&mut self) {
        self.seq += 1;
        let class = self.classes[(self.seq % 3) as usize];
        let len = 64 + (self.seq.wrapping_mul(0x9e37_79b9) % 1437) as u32;
        let meta = PacketMeta::new(len, class).with_flow(self.seq % 8);
        self.link.enqueue(&meta, self.seq, Instant::ZERO).unwrap();
    }

    /// One packet in, one packet out.
    fn step(&mut self) -> u64 {
        self.enqueue();
        self.link.dequeue(Instant::ZERO).unwrap().packet
    }
}

fn bench_link(c: &mut Criterion) {
    // A budget no bench can spend (10^12 fuel per 10 ms): throttled calls would
    // fail fast and measure the fallback instead of the module.
    let config = EnvironmentConfig {
        budget: BudgetConfig::new(10_000_000, 1_000_000_000_000),
        ..EnvironmentConfig::operator("bench")
    };
    let env = Environment::new(config, TrustAnchors::empty()).unwrap();
    env.load_verified(sfq_module()).unwrap();
    let BoundHandle::Rank(rank) = env
        .bind(sfq::NAME, Role::LINK, Role::Scheduler)
        .unwrap()
        .handle
    else {
        panic!("sfq bound as a scheduler answered no rank handle");
    };

    let mut group = c.benchmark_group("link/3_classes");
    group.throughput(Throughput::Elements(1));
    let mut native = Link::new(Box::new(Sfq::new(SchedConfig::default().max_classes)));
    group.bench_function("native_sfq", |b| b.iter(|| black_box(native.step())));
    let mut state = sfq::Sfq::EMPTY;
    let native_module = FnRank::new("native module sfq", move |p: &PacketMeta, at: &_| {
        state.rank(&scheduler::rank_request(p, at))
    });
    let mut native_module = Link::new(Box::new(native_module));
    group.bench_function("native_module_sfq", |b| {
        b.iter(|| black_box(native_module.step()));
    });
    let mut wasm = Link::new(Box::new(rank));
    group.bench_function("wasm_sfq", |b| b.iter(|| black_box(wasm.step())));
    group.finish();
    // A bench that measured fallbacks would be measuring the wrong thing.
    let counters = env.module(sfq::NAME).unwrap().counters;
    assert_eq!((counters.faults(), counters.throttled), (0, 0));
    assert_eq!(wasm.link.counters().rank_faults, 0);
}

criterion_group!(benches, bench_link);
criterion_main!(benches);
