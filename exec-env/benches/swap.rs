//! Issue 3's engine-level, install and swap figures, each group with its
//! baseline in the same run. (Policy calls at 4/16/64 candidates, wasm against
//! native, are in `benches/policy.rs`.)
//!
//! Group `new_flow/16`: one new-flow packet through `Engine::process` (a SYN of
//! an unknown flow to a served subnet with 16 up candidates: parse, classify,
//! flow-table miss, policy, pin, IP-in-IP encapsulation). `builtin_least_cost`
//! is the engine's own `LeastCost` (the baseline); `wasm_least_load` is the
//! shipped least_load module, signed, installed with `Environment::install` and
//! bound to the subnet as a `ModulePolicy`. Both subnets live in one engine over
//! one flow table; flows are unpinned again outside the timed part, in batches
//! of 1024, so the table keeps its size. Report wasm / builtin.
//!
//! Group `install`: `verify` is `trust::verify` of a signed least_load file
//! (structure, Ed25519 signature, chain to an ECDSA P-256 anchor);
//! `install_signed` is `Environment::install` of such a file: verify, compile,
//! pre-instantiate, instantiate (ABI and I/O buffer checks), swap, and the drop
//! of the version the swap retires. Files alternate between two versions so
//! each install replaces the active one. No compilation cache is configured.
//!
//! Group `swap`: `arc_swap_store` (baseline) publishes a fresh `Arc` with one
//! `ArcSwap::store`, freeing the old one. `rollback` is the manager's publish
//! step alone: module-map lock, load, a new (active, previous) pair, one
//! store, counters, log. `swap_prepared` is `Environment::swap` of a module
//! prepared (untimed) for that iteration: the same publish plus dropping the
//! version that falls out of the pair (its store, instance and linear memory),
//! which happens on the swapping thread unless a policy call holds it at that
//! moment. `swap_prepared_nothing_retired` is the same swap into a slot
//! emptied beforehand (untimed), so nothing is retired: the publish step of
//! `swap` alone. `retire` times the drop alone (dropping an unpublished
//! prepared module). The prepared-module cases time each iteration
//! separately, which adds about 20 ns of clock reads to each.
//!
//! Run: `cargo bench -p exec-env --bench swap`.

#![allow(
    clippy::unwrap_used,
    reason = "bench setup: a failure is a bug in the bench itself"
)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use exec_env::ca::{CertificateAuthority, KeyAlgorithm, SignerRequest, Validity};
use exec_env::manager::{Environment, EnvironmentConfig};
use exec_env::trust::{self, TrustAnchors};
use exec_env::verified::VerifiedModule;
use exec_env::{format, sign};
use router_core::classify::FlowKey;
use router_core::flow::FlowConfig;
use router_core::synth::PacketSpec;
use router_core::wire::TcpFlags;
use router_core::{
    Candidate, Engine, EngineConfig, HEADROOM, Level, PacketBuf, RouterApi, Verdict, VirtualSubnet,
};

const NAME: &str = "least_load";
const CANDIDATES: usize = 16;
/// Distinct new flows per subnet, reused round robin.
const KEYS: usize = 1 << 15;
/// New flows processed between two (untimed) unpinnings.
const BATCH: usize = 1024;

/// Two signed least_load files (versions 1.0.0 and 2.0.0) and the anchors that
/// trust their signer.
fn signed_files() -> (TrustAnchors, Vec<u8>, Vec<u8>) {
    let validity = Validity::days_from(SystemTime::now(), 30).unwrap();
    let ca = CertificateAuthority::generate("bench CA", validity, KeyAlgorithm::EcdsaP256).unwrap();
    let signer = ca
        .issue_signer(&SignerRequest::new("bench signer", validity))
        .unwrap();
    let key = signer.signing_key().unwrap();
    let wasm = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../slr-policy-wasm/modules/least_load.wasm"
    ))
    .unwrap();
    let file = |version: &str| {
        let manifest = format::parse_manifest(&format!(
            "name = \"{NAME}\"\nversion = \"{version}\"\nkind = \"policy\"\n"
        ))
        .unwrap();
        let unsigned = format::embed_manifest(&wasm, &manifest).unwrap();
        sign::sign_module(&unsigned, &key, vec![signer.cert_der.clone()]).unwrap()
    };
    let anchors = TrustAnchors::from_pem(ca.cert_pem().as_bytes()).unwrap();
    (anchors, file("1.0.0"), file("2.0.0"))
}

/// An operator environment whose CPU budget the bench cannot exhaust: this
/// measures the call path, not throttling.
fn environment(anchors: TrustAnchors) -> Environment {
    let mut config = EnvironmentConfig::operator("bench");
    config.budget.capacity = 1 << 50;
    Environment::new(config, anchors).unwrap()
}

/// `n` up candidates, least loaded in the middle so every one is compared.
fn candidates(net: u8, n: usize) -> Vec<Candidate> {
    (0..n)
        .map(|i| Candidate {
            addr: IpAddr::V4(Ipv4Addr::new(198, 51, net, i as u8 + 1)),
            load: ((i * 7 + 3) % n) as f64 / n as f64,
            route_cost: 0.0,
            up: true,
        })
        .collect()
}

/// SYNs of `KEYS` distinct flows to `vip`, each in a buffer with headroom.
struct Stream {
    templates: Vec<Vec<u8>>,
    scratch: Vec<Vec<u8>>,
    keys: Vec<FlowKey>,
    len: usize,
    next: usize,
}

impl Stream {
    fn new(vip: SocketAddr) -> Self {
        let mut templates = Vec::with_capacity(KEYS);
        let mut keys = Vec::with_capacity(KEYS);
        let mut len = 0;
        for i in 0..KEYS as u32 {
            let src = SocketAddr::new(
                IpAddr::V4(Ipv4Addr::from(0xcb00_0000 | (i >> 12))),
                1024 + (i & 0xfff) as u16,
            );
            let spec = PacketSpec::tcp(src, vip, TcpFlags::SYN).with_payload(64);
            let mut buf = vec![0u8; HEADROOM + spec.len()];
            len = spec.write(&mut buf[HEADROOM..]).unwrap();
            templates.push(buf);
            keys.push(FlowKey {
                proto: 6,
                src: src.ip(),
                src_port: src.port(),
                dst: vip.ip(),
                dst_port: vip.port(),
            });
        }
        Self {
            scratch: templates.clone(),
            templates,
            keys,
            len,
            next: 0,
        }
    }

    /// Processes `iters` new flows; returns the time spent in `process` only.
    fn run(&mut self, engine: &mut Engine, iters: u64) -> Duration {
        let now = router_core::Instant::from_secs(10);
        let mut total = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            let n = usize::try_from(left).unwrap_or(BATCH).min(BATCH);
            if self.next + n > KEYS {
                self.next = 0;
            }
            let range = self.next..self.next + n;
            for i in range.clone() {
                self.scratch[i].copy_from_slice(&self.templates[i]);
            }
            let start = Instant::now();
            for buf in &mut self.scratch[range.clone()] {
                let mut p = PacketBuf::new(buf, HEADROOM, self.len).unwrap();
                let _ = black_box(engine.process(&mut p, now));
            }
            total += start.elapsed();
            for key in &self.keys[range] {
                let _ = engine.remove_flow(key, now);
            }
            self.next += n;
            left -= n as u64;
        }
        total
    }
}

fn new_flow(c: &mut Criterion) {
    let (anchors, file, _) = signed_files();
    let env = environment(anchors);
    env.install(&file).unwrap();
    let mut engine = Engine::new(EngineConfig {
        level: Level::Site,
        local_v4: Some(Ipv4Addr::new(192, 0, 2, 1)),
        flows: FlowConfig {
            capacity_v4: 1 << 18,
            ..FlowConfig::default()
        },
        ..EngineConfig::default()
    });
    let builtin_subnet: VirtualSubnet = "10.1.0.0/16".parse().unwrap();
    let wasm_subnet: VirtualSubnet = "10.2.0.0/16".parse().unwrap();
    let builtin = engine.add_subnet(builtin_subnet).unwrap();
    let wasm = engine.add_subnet(wasm_subnet).unwrap();
    let (builtin_cands, wasm_cands) = (candidates(1, CANDIDATES), candidates(2, CANDIDATES));
    engine
        .set_candidates(builtin, builtin_cands.clone())
        .unwrap();
    engine.set_candidates(wasm, wasm_cands.clone()).unwrap();
    engine
        .set_policy(wasm, Some(env.policy(NAME, wasm_subnet).unwrap()))
        .unwrap();
    let mut builtin_flows = Stream::new("10.1.0.10:443".parse().unwrap());
    let mut wasm_flows = Stream::new("10.2.0.10:443".parse().unwrap());

    // Both policies place a new flow on the same candidate, and the flow is
    // pinned and unpinned as the timed loop assumes.
    let now = router_core::Instant::from_secs(10);
    let mut chosen = Vec::new();
    for (s, cands) in [(&builtin_flows, &builtin_cands), (&wasm_flows, &wasm_cands)] {
        let mut buf = s.templates[0].clone();
        let mut p = PacketBuf::new(&mut buf, HEADROOM, s.len).unwrap();
        let Verdict::Forward { next_hop, .. } = engine.process(&mut p, now) else {
            panic!("new flow not forwarded");
        };
        chosen.push(cands.iter().position(|c| c.addr == next_hop));
        assert!(engine.remove_flow(&s.keys[0], now).is_some());
    }
    assert!(chosen[0].is_some());
    assert_eq!(chosen[0], chosen[1]);

    let mut g = c.benchmark_group(format!("new_flow/{CANDIDATES}"));
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(3));
    g.bench_function("builtin_least_cost", |b| {
        b.iter_custom(|iters| builtin_flows.run(&mut engine, iters))
    });
    g.bench_function("wasm_least_load", |b| {
        b.iter_custom(|iters| wasm_flows.run(&mut engine, iters))
    });
    g.finish();

    let counters = engine.counters();
    assert_eq!(counters.policy_faults, 0);
    assert_eq!(counters.dropped_total(), 0);
    assert_eq!(counters.forwarded_new, counters.packets);
    let module = env.module(NAME).unwrap().counters;
    assert_eq!((module.faults(), module.throttled), (0, 0));
}

fn install(c: &mut Criterion) {
    let (anchors, first, second) = signed_files();
    let env = environment(anchors);
    env.install(&first).unwrap();
    let mut g = c.benchmark_group("install");
    g.sample_size(20);
    g.bench_function("verify", |b| {
        b.iter(|| trust::verify(black_box(&first), env.anchors(), SystemTime::now()).unwrap())
    });
    let mut flip = false;
    g.bench_function("install_signed", |b| {
        b.iter(|| {
            flip = !flip;
            let file = if flip { &second } else { &first };
            env.install(black_box(file)).unwrap()
        })
    });
    g.finish();
    assert_eq!(env.counters().refused, 0);
}

/// `module` as version 3.0.`patch`.
fn versioned(module: &VerifiedModule, patch: u64) -> VerifiedModule {
    let mut module = module.clone();
    module.manifest.version = semver::Version::new(3, 0, patch);
    module
}

fn swap(c: &mut Criterion) {
    let (anchors, first, second) = signed_files();
    let env = environment(anchors);
    env.install(&first).unwrap();
    env.install(&second).unwrap();
    let verified = trust::verify(&first, env.anchors(), SystemTime::now()).unwrap();
    let policy = env.policy(NAME, "10.0.0.0/8".parse().unwrap()).unwrap();

    let mut g = c.benchmark_group("swap");
    let slot = ArcSwap::from_pointee(0_u64);
    let mut i = 0_u64;
    g.bench_function("arc_swap_store", |b| {
        b.iter(|| {
            i += 1;
            slot.store(Arc::new(black_box(i)));
        })
    });
    g.bench_function("rollback", |b| {
        b.iter(|| env.rollback(black_box(NAME)).unwrap())
    });

    // Each iteration needs its own prepared module (a millisecond or two of
    // compile and instantiate, untimed). Criterion sizes iter_custom samples by
    // wall-clock time, setup included, so these settings give ten flat samples
    // of a few hundred iterations each.
    g.sample_size(10);
    g.sampling_mode(SamplingMode::Flat);
    g.warm_up_time(Duration::from_millis(200));
    g.measurement_time(Duration::from_secs(5));
    let mut patch = 0_u64;
    g.bench_function("swap_prepared", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                patch += 1;
                let prepared = env.prepare(versioned(&verified, patch)).unwrap();
                let start = Instant::now();
                let report = env.publish(prepared);
                total += start.elapsed();
                black_box(report.unwrap());
            }
            total
        })
    });
    // The same publish with nothing to retire: the slot is emptied (untimed)
    // first; the handle above keeps it alive, so the swap fills it in place.
    g.bench_function("swap_prepared_nothing_retired", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                patch += 1;
                let prepared = env.prepare(versioned(&verified, patch)).unwrap();
                env.remove(NAME).unwrap();
                let start = Instant::now();
                let report = env.publish(prepared);
                total += start.elapsed();
                black_box(report.unwrap());
            }
            total
        })
    });
    g.bench_function("retire", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                patch += 1;
                let prepared = env.prepare(versioned(&verified, patch)).unwrap();
                let start = Instant::now();
                drop(black_box(prepared));
                total += start.elapsed();
            }
            total
        })
    });
    g.finish();
    assert_eq!(policy.active_version().unwrap().major, 3);
    assert_eq!(env.counters().refused, 0);
}

criterion_group!(benches, new_flow, install, swap);
criterion_main!(benches);
