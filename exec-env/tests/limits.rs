//! Load-time module caps (issue 14 item 3): a module over a cap is refused with
//! a typed error before anything is compiled, so the router does not grow; and
//! swapping the largest module the default caps accept in and out returns the
//! memory of retired versions.
//!
//! RSS figures come from `/proc/self/statm`; the tests that measure it hold
//! `RSS_LOCK` so they do not measure each other.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failure is a test failure"
)]

mod common;

use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use common::{candidates, manifest, request, shipped};
use exec_env::ca::{CertificateAuthority, KeyAlgorithm, SignerRequest, Validity};
use exec_env::limits::{self, Cap, ModuleLimits};
use exec_env::manager::{Environment, EnvironmentConfig, ManagerError};
use exec_env::manifest::Manifest;
use exec_env::trust::TrustAnchors;
use exec_env::vm::{VmConfig, VmError};
use exec_env::{format, sign};
use router_core::classify::VirtualSubnet;
use router_core::policy::{Decision, Policy};

static RSS_LOCK: Mutex<()> = Mutex::new(());

const MIB: f64 = 1024.0 * 1024.0;

/// Resident set size, bytes (`/proc/self/statm`, 4 KiB pages).
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let resident: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    resident * 4096
}

fn ca() -> CertificateAuthority {
    CertificateAuthority::generate(
        "operator CA",
        Validity::days_from(SystemTime::now(), 30).unwrap(),
        KeyAlgorithm::EcdsaP256,
    )
    .unwrap()
}

/// A module file signed as `manager.rs` signs them.
fn signed(ca: &CertificateAuthority, manifest: &Manifest, wasm: &[u8]) -> Vec<u8> {
    let request = SignerRequest::new(
        "signer",
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

fn environment(ca: &CertificateAuthority) -> Environment {
    Environment::new(
        EnvironmentConfig::operator("operator"),
        TrustAnchors::from_pem(ca.cert_pem().as_bytes()).unwrap(),
    )
    .unwrap()
}

/// An ABI v1 policy choosing candidate 0, with `fillers` more functions of
/// `ops` arithmetic steps each, `memory_pages` of memory and `data` bytes of
/// data at 64 KiB. Written as WAT text and assembled.
fn policy(fillers: usize, ops: usize, memory_pages: u32, data: usize) -> Vec<u8> {
    let mut wat = String::with_capacity(fillers * (ops * 48 + 64) + data + 1024);
    let _ = write!(
        wat,
        r#"(module
  (memory (export "memory") {memory_pages})
  (func (export "pronto_abi_version") (result i32) i32.const 1)
  (func (export "pronto_io_buffer") (result i32) i32.const 1024)
  (func (export "pronto_select") (param $n i32) (result i32) i32.const 0)
"#
    );
    for f in 0..fillers {
        let _ = write!(wat, "  (func $f{f} (param i32) (result i32)");
        for k in 0..ops {
            let op = ["i32.add", "i32.xor", "i32.mul", "i32.sub"][(f + k) % 4];
            let _ = write!(
                wat,
                " local.get 0 i32.const {} {op} local.set 0",
                k % 60 + 1
            );
        }
        wat.push_str(" local.get 0)\n");
    }
    if data > 0 {
        let _ = writeln!(wat, "  (data (i32.const 65536) \"{}\")", "a".repeat(data));
    }
    wat.push(')');
    wat::parse_str(&wat).unwrap()
}

#[test]
fn every_shipped_module_passes_the_default_caps() {
    let bounds = VmConfig::default().bounds();
    for name in [
        "consistent_hash",
        "least_load",
        "least_slack",
        "proximity",
        "sfq",
        "strict_priority",
        "time_of_day",
        "weighted_cost",
    ] {
        let module = shipped(name);
        let shape = limits::check(&module.wasm, &bounds)
            .unwrap_or_else(|e| panic!("{name} is refused by the default caps: {e}"));
        println!("{name}: {shape:?}");
    }
}

#[test]
fn each_cap_refuses_with_its_name_value_and_limit() {
    let bounds = |limits: ModuleLimits| VmConfig::default().with_limits(limits).bounds();
    let wasm = policy(10, 20, 2, 100);
    let cases = [
        (
            ModuleLimits {
                functions: 12,
                ..ModuleLimits::default()
            },
            Cap::Functions,
            13,
        ),
        (
            ModuleLimits {
                data_size: 99,
                ..ModuleLimits::default()
            },
            Cap::DataSize,
            100,
        ),
        (
            ModuleLimits {
                exports: 3,
                ..ModuleLimits::default()
            },
            Cap::Exports,
            4,
        ),
        (
            ModuleLimits {
                memories: 0,
                ..ModuleLimits::default()
            },
            Cap::Memories,
            1,
        ),
    ];
    for (limits, cap, value) in cases {
        let err = limits::check(&wasm, &bounds(limits)).unwrap_err();
        let limits::CheckError::Limit(e) = err else {
            panic!("{cap}: {err}")
        };
        assert_eq!((e.cap, e.value), (cap, value), "{e}");
        assert!(e.to_string().contains(cap.as_str()), "{e}");
        assert!(!e.hint().is_empty());
    }
    // Per-function caps name the function.
    let err = limits::check(
        &wasm,
        &bounds(ModuleLimits {
            function_body_size: 100,
            ..ModuleLimits::default()
        }),
    )
    .unwrap_err();
    assert!(err.to_string().contains("in function 3"), "{err}");
    // The memory cap of the instance also bounds the declaration.
    let config = VmConfig::default().with_memory_limit(64 << 10);
    let err = limits::check(&wasm, &config.bounds()).unwrap_err();
    assert!(err.to_string().contains("memory_initial"), "{err}");
}

#[test]
fn a_module_of_100_000_functions_is_refused_before_compiling() {
    let ca = ca();
    let wasm = policy(100_000, 0, 1, 0);
    let bytes = signed(&ca, &manifest("huge", "1.0.0", &[]), &wasm);
    println!("100 000-function module: {} bytes signed", bytes.len());
    let _guard = RSS_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let env = environment(&ca);
    let before = rss();
    let started = Instant::now();
    let err = env.load(&bytes).unwrap_err();
    let took = started.elapsed();
    let after = rss();
    println!(
        "refused in {took:?}: {err}\nRSS before {:.1} MiB, after {:.1} MiB (+{:.1} MiB)",
        before as f64 / MIB,
        after as f64 / MIB,
        (after as f64 - before as f64) / MIB
    );
    let ManagerError::Vm(VmError::Limit(limit)) = &err else {
        panic!("not a limit refusal: {err}")
    };
    assert_eq!(limit.cap, Cap::Functions);
    assert_eq!(limit.value, 100_003);
    assert_eq!(limit.limit, 2_000);
    assert!(err.hint().contains("shrink the module"), "{}", err.hint());
    assert!(
        after < before + (20 << 20),
        "RSS grew by {} MiB",
        (after - before) >> 20
    );
    let counters = env.counters();
    assert_eq!(counters.refused, 1);
    assert_eq!(counters.limit_refusals.get(Cap::Functions), 1);
    assert_eq!(counters.limit_refusals.total(), 1);
    assert!(env.list().is_empty());
}

/// The largest module the default caps accept: every function, nearly all the
/// code and data they allow.
fn largest_accepted() -> Vec<u8> {
    let limits = ModuleLimits::default();
    let bounds = VmConfig::default().bounds();
    let fillers = limits.functions as usize - 3;
    let data = limits.data_size as usize;
    // 7 or 8 bytes per step; start above the code cap and step down until it fits.
    let mut ops = (limits.code_size as usize / fillers) / 7;
    loop {
        let wasm = policy(fillers, ops, 32, data);
        match limits::check(&wasm, &bounds) {
            Ok(shape) => {
                println!("largest accepted module: {} bytes, {shape:?}", wasm.len());
                assert!(shape.code_size * 100 > limits.code_size * 98, "{shape:?}");
                return wasm;
            }
            Err(limits::CheckError::Limit(e)) if e.cap == Cap::CodeSize => ops -= 1,
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn swap_and_rollback_of_the_largest_module_return_memory() {
    let ca = ca();
    let wasm = largest_accepted();
    // Sign every version first, so signing is not measured.
    let files: Vec<Vec<u8>> = (0..=20)
        .map(|v| signed(&ca, &manifest("big", &format!("1.0.{v}"), &[]), &wasm))
        .collect();
    let _guard = RSS_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let env = environment(&ca);
    let start = rss();
    let t = Instant::now();
    env.load(&files[0]).unwrap();
    println!(
        "load: {:?}, RSS {:.1} -> {:.1} MiB",
        t.elapsed(),
        start as f64 / MIB,
        rss() as f64 / MIB
    );
    let policy = env
        .policy("big", "0.0.0.0/0".parse::<VirtualSubnet>().unwrap())
        .unwrap();
    let mut first = 0;
    let mut figures = Vec::new();
    for (cycle, file) in files.iter().enumerate().skip(1) {
        let t = Instant::now();
        env.swap(file).unwrap();
        env.rollback("big").unwrap();
        assert_eq!(
            policy.select(&request(1), &candidates(2)),
            Ok(Decision::Select(0))
        );
        // The pair (active, previous) and nothing else.
        assert_eq!(env.versions_held(), 2);
        let now = rss();
        if cycle == 1 {
            first = now;
        }
        figures.push(now);
        println!(
            "cycle {cycle:2}: {:?}, RSS {:.1} MiB",
            t.elapsed(),
            now as f64 / MIB
        );
    }
    let last = *figures.last().unwrap();
    let most = *figures.iter().max().unwrap();
    println!(
        "RSS before load {:.1} MiB, after cycle 1 {:.1} MiB, after cycle 20 {:.1} MiB, highest {:.1} MiB",
        start as f64 / MIB,
        first as f64 / MIB,
        last as f64 / MIB,
        most as f64 / MIB
    );
    assert!(
        last * 10 <= first * 11,
        "RSS grew from {first} to {last} over 20 cycles"
    );
    let counters = env.counters();
    assert_eq!((counters.installs, counters.refused), (21, 0));
}
