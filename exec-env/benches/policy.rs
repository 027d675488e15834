//! A wasm policy call against the same choice made natively, in one run.
//!
//! Group `select/<n>` (n = 4, 8, 16, 64 up candidates): `native_least_cost` is the
//! engine's built-in `LeastCost` through `&dyn Policy` (the baseline);
//! `native_least_load` is the shipped least_load policy compiled natively, on
//! ABI candidates (the same code as the module); `wasm_instance` is the
//! least_load module through `PolicyInstance` (lock, candidates compared with
//! the ones left there by the last call, fuel and epoch armed, call of
//! `pronto_select_v2` with the request as arguments, answer checked); `wasm_changing` alternates two
//! candidate sets that differ in one load, so every call also rewrites the
//! candidates (the worst case: a load report between every two new flows);
//! `wasm_epoch_only` is `wasm_instance` in a VM with fuel off (the epoch
//! deadline alone bounds a call, CPU is charged in wall-clock time), to show what
//! fuel accounting costs;
//! `module_policy` adds what the engine really calls, a manager `ModulePolicy`
//! (active-version load, quarantine check, CPU admission and charge, counters).
//! The ratio to report is `wasm_instance / native_least_cost` at n = 16.
//!
//! Group `call_floor`: what wasmtime itself costs per call, with none of ours:
//! `empty` calls an export that returns a constant, after setting the fuel and
//! the epoch deadline as every policy call does and reading the fuel back.
//!
//! Group `install`: `prepare` is compile + pre-instantiate + instantiate of the
//! least_load module (signature verification excluded); `publish` is the atomic
//! switch between two installed versions (a rollback: the same lock, load and
//! store as a swap).
//!
//! Group `fuel`: one call of a tight loop stopped after 1 M fuel, to relate fuel
//! budgets (per call, per CPU period) to time.
//!
//! Run: `cargo bench -p exec-env --bench policy`.

#![allow(
    clippy::unwrap_used,
    reason = "bench setup: a failure is a bug in the bench itself"
)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use exec_env::manager::{Environment, EnvironmentConfig};
use exec_env::manifest::Manifest;
use exec_env::trust::TrustAnchors;
use exec_env::verified::{SignerInfo, VerifiedModule};
use exec_env::vm::{Vm, VmConfig};
use resource_mgr::BudgetConfig;
use router_core::classify::{FlowKey, VirtualSubnet};
use router_core::policy::{Candidate, FlowRequest, LeastCost, Level, Policy, SubnetId};
use slr_policy_wasm::least_load;

fn least_load_module(version: &str) -> VerifiedModule {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../slr-policy-wasm");
    let wasm = std::fs::read(format!("{root}/modules/least_load.wasm")).unwrap();
    let text = std::fs::read_to_string(format!("{root}/manifests/least_load.toml")).unwrap();
    let mut manifest: Manifest = toml::from_str(&text).unwrap();
    manifest.version = semver::Version::parse(version).unwrap();
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

fn request() -> FlowRequest {
    FlowRequest {
        key: FlowKey {
            proto: 6,
            src: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)),
            src_port: 40_000,
            dst: IpAddr::V4(Ipv4Addr::new(192, 200, 0, 10)),
            dst_port: 443,
        },
        subnet: SubnetId(0),
        level: Level::Site,
    }
}

/// `n` up candidates, least loaded in the middle so every one is compared.
fn candidates(n: usize) -> Vec<Candidate> {
    (0..n)
        .map(|i| Candidate {
            addr: IpAddr::V4(Ipv4Addr::new(198, 51, 100, i as u8 + 1)),
            load: ((i * 7 + 3) % n) as f64 / n as f64,
            route_cost: 0.0,
            up: true,
        })
        .collect()
}

fn select(c: &mut Criterion) {
    let vm = Vm::new(VmConfig::default()).unwrap();
    let instance = vm.load(&least_load_module("0.1.0"), &[]).unwrap();
    let epoch_vm = Vm::new(VmConfig::default().with_fuel_per_call(None)).unwrap();
    let epoch_only = epoch_vm.load(&least_load_module("0.1.0"), &[]).unwrap();
    // A budget the bench cannot exhaust: this measures the call path, not the
    // throttling (a module called flat out would be throttled by the default).
    let mut config = EnvironmentConfig::operator("bench");
    config.budget = BudgetConfig::new(10_000_000, 1 << 50);
    let env = Environment::new(config, TrustAnchors::empty()).unwrap();
    env.install_verified(least_load_module("0.1.0")).unwrap();
    let subnet: VirtualSubnet = "192.200.0.0/16".parse().unwrap();
    let module_policy = env.policy(least_load::NAME, subnet).unwrap();
    let native: &dyn Policy = &LeastCost;
    let req = request();

    for n in [4, 8, 16, 64] {
        let cands = candidates(n);
        let abi_req = sdk::FlowRequest::new(
            6,
            (req.key.src, req.key.src_port).into(),
            (req.key.dst, req.key.dst_port).into(),
        );
        let abi: Vec<sdk::Candidate> = cands
            .iter()
            .map(|c| sdk::Candidate::up(c.addr, c.load, c.route_cost))
            .collect();
        let expected = native.select(&req, &cands).unwrap();
        assert_eq!(instance.select(&req, &cands).unwrap(), expected);
        assert_eq!(module_policy.select(&req, &cands).unwrap(), expected);

        let mut g = c.benchmark_group(format!("select/{n}"));
        g.throughput(Throughput::Elements(1));
        g.measurement_time(Duration::from_secs(3));
        g.warm_up_time(Duration::from_secs(1));
        g.bench_function("native_least_cost", |b| {
            b.iter(|| native.select(black_box(&req), black_box(&cands)))
        });
        g.bench_function("native_least_load", |b| {
            b.iter(|| least_load::select(black_box(&abi_req), black_box(&abi)))
        });
        g.bench_function("wasm_instance", |b| {
            b.iter(|| instance.select(black_box(&req), black_box(&cands)))
        });
        g.bench_function("wasm_epoch_only", |b| {
            b.iter(|| epoch_only.select(black_box(&req), black_box(&cands)))
        });
        let mut other = cands.clone();
        other[0].load += 0.5;
        let sets = [cands.as_slice(), other.as_slice()];
        let mut turn = 0;
        g.bench_function("wasm_changing", |b| {
            b.iter(|| {
                turn ^= 1;
                instance.select(black_box(&req), black_box(sets[turn]))
            })
        });
        g.bench_function("module_policy", |b| {
            b.iter(|| module_policy.select(black_box(&req), black_box(&cands)))
        });
        g.finish();
    }
    let info = env.module(least_load::NAME).unwrap();
    assert_eq!(info.counters.faults(), 0);
    assert_eq!(info.counters.throttled, 0);
}

fn install(c: &mut Criterion) {
    let env =
        Environment::new(EnvironmentConfig::operator("bench"), TrustAnchors::empty()).unwrap();
    env.install_verified(least_load_module("1.0.0")).unwrap();
    env.install_verified(least_load_module("2.0.0")).unwrap();
    let module = least_load_module("3.0.0");
    let mut g = c.benchmark_group("install");
    g.sample_size(20);
    g.bench_function("prepare", |b| {
        b.iter(|| env.prepare(black_box(module.clone())).unwrap())
    });
    g.bench_function("publish", |b| {
        b.iter(|| env.rollback(black_box(least_load::NAME)).unwrap())
    });
    g.finish();
}

/// Wall-clock time of 1 M fuel of a tight loop, to relate fuel budgets to CPU time.
fn fuel(c: &mut Criterion) {
    let vm = Vm::new(VmConfig::default().with_fuel_per_call(Some(1_000_000))).unwrap();
    let mut module = least_load_module("0.1.0");
    module.wasm = wat::parse_str(
        r#"(module
          (memory (export "memory") 1)
          (func (export "pronto_abi_version") (result i32) i32.const 1)
          (func (export "pronto_io_buffer") (result i32) i32.const 1024)
          (func (export "pronto_select") (param i32) (result i32)
            (loop $l (br $l)) (i32.const 0)))"#,
    )
    .unwrap();
    let looping = vm.load(&module, &[]).unwrap();
    let req = request();
    let cands = candidates(2);
    let mut g = c.benchmark_group("fuel");
    g.sample_size(20);
    g.bench_function("loop_1m_fuel", |b| {
        b.iter(|| {
            looping
                .select(black_box(&req), black_box(&cands))
                .unwrap_err()
        })
    });
    g.finish();
}

/// A bare wasmtime call with fuel and an epoch deadline, the floor under any
/// policy call.
fn call_floor(c: &mut Criterion) {
    let mut config = wasmtime::Config::new();
    config.consume_fuel(true).epoch_interruption(true);
    let engine = wasmtime::Engine::new(&config).unwrap();
    let module = wasmtime::Module::new(
        &engine,
        r#"(module (func (export "f") (param i32) (result i32) i32.const 0))"#,
    )
    .unwrap();
    let mut store = wasmtime::Store::new(&engine, ());
    let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
    let f = instance
        .get_typed_func::<i32, i32>(&mut store, "f")
        .unwrap();
    let mut g = c.benchmark_group("call_floor");
    g.measurement_time(Duration::from_secs(3));
    g.bench_function("empty", |b| {
        b.iter(|| {
            store.set_epoch_deadline(50);
            store.set_fuel(20_000_000).unwrap();
            let r = f.call(&mut store, black_box(4)).unwrap();
            (r, store.get_fuel().unwrap())
        })
    });
    g.finish();
}

criterion_group!(benches, select, call_floor, install, fuel);
criterion_main!(benches);
