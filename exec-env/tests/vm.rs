//! The VM against adversarial modules (each refused at load or contained at run
//! time with the right error, the instance still usable afterwards and a good
//! module still answering), and the shipped modules against their native
//! policies.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failure is a test failure"
)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::{
    ALL_CAPABILITIES, candidates, from_wat, manifest, request, shipped, verified, wat_policy,
    wat_trigger,
};
use exec_env::host::LogLimit;
use exec_env::manifest::Capability;
use exec_env::vm::{Fault, PolicyInstance, TimeoutCause, Vm, VmConfig, VmError};
use proptest::prelude::*;
use router_core::policy::{Candidate, CostModel, Decision, LeastCost, Policy, PolicyError};
use sdk::harness;
use slr_policy_wasm::consistent_hash::MaglevTable;
use slr_policy_wasm::{least_load, proximity, time_of_day, weighted_cost};

fn vm(config: VmConfig) -> Vm {
    Vm::new(config).unwrap()
}

fn load(vm: &Vm, wat: &str) -> PolicyInstance {
    vm.load(&from_wat("adversary", "1.0.0", &[], wat), &[])
        .unwrap()
}

/// A module that answers well, loaded into the same VM, still does.
fn assert_good_module_works(vm: &Vm) {
    let good = vm.load(&shipped(least_load::NAME), &[]).unwrap();
    let cands = candidates(4);
    assert_eq!(good.select(&request(1), &cands), Ok(Decision::Select(3)));
}

/// The instance still answers a call that does not trigger its bug.
fn assert_instance_recovers(instance: &PolicyInstance) {
    assert_eq!(
        instance.select(&request(2), &candidates(2)),
        Ok(Decision::Select(0))
    );
}

const LOOP: &str = "(loop $l (br $l)) (i32.const 0)";

#[test]
fn infinite_loop_is_stopped_by_fuel() {
    // An epoch deadline of a minute: only fuel can stop the loop in time.
    let vm = vm(VmConfig::default()
        .with_fuel_per_call(Some(200_000))
        .with_epoch(Duration::from_millis(1), 60_000));
    let looping = load(&vm, &wat_trigger("", LOOP));
    let outcome = looping.call_select(&request(1), &candidates(3), 0, None);
    assert_eq!(
        outcome.result,
        Err(Fault::Timeout {
            cause: TimeoutCause::Fuel
        })
    );
    assert_eq!(outcome.cpu_used, 200_000);
    assert_eq!(
        looping.select(&request(1), &candidates(3)),
        Err(PolicyError::Timeout)
    );
    assert_instance_recovers(&looping);
    assert_eq!(looping.stats().restarts, 2);
    assert_good_module_works(&vm);
}

#[test]
fn infinite_loop_is_preempted_by_the_epoch_ticker_without_fuel() {
    // No fuel at all: only the ticker thread can interrupt the loop.
    let vm = vm(VmConfig::default()
        .with_fuel_per_call(None)
        .with_epoch(Duration::from_millis(1), 5));
    let looping = load(&vm, &wat_trigger("", LOOP));
    let started = Instant::now();
    let outcome = looping.call_select(&request(1), &candidates(3), 0, None);
    let elapsed = started.elapsed();
    assert_eq!(
        outcome.result,
        Err(Fault::Timeout {
            cause: TimeoutCause::Epoch
        })
    );
    // 5 ticks of 1 ms; a generous bound for a loaded CI machine, but a loop that
    // was never pre-empted would not return at all.
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    // Without fuel the CPU charged is wall-clock time: at least 4 ticks.
    assert!(outcome.cpu_used >= 4_000_000, "{}", outcome.cpu_used);
    assert_instance_recovers(&looping);
    assert_good_module_works(&vm);
}

#[test]
fn ticker_thread_stops_when_the_vm_is_dropped() {
    let vm = vm(VmConfig::default());
    let instance = vm.load(&shipped(least_load::NAME), &[]).unwrap();
    let weak = vm.engine().weak();
    drop(vm);
    // Instances keep the engine (and so the ticker) alive: they still need the
    // deadline.
    assert!(weak.upgrade().is_some());
    assert_eq!(
        instance.select(&request(1), &candidates(2)),
        Ok(Decision::Select(1))
    );
    drop(instance);
    // The ticker held an engine clone; joined on drop, nothing holds it now.
    assert!(weak.upgrade().is_none());
}

#[test]
fn a_share_smaller_than_the_call_budget_fails_as_unavailable() {
    let vm = vm(VmConfig::default().with_fuel_per_call(Some(1_000_000)));
    let looping = load(&vm, &wat_trigger("", LOOP));
    let outcome = looping.call_select(&request(1), &candidates(3), 0, Some(5_000));
    assert_eq!(outcome.result, Err(Fault::Budget));
    assert_eq!(outcome.cpu_used, 5_000);
    assert!(matches!(
        PolicyError::from(Fault::Budget),
        PolicyError::Unavailable(_)
    ));
    assert_instance_recovers(&looping);
}

#[test]
fn memory_growth_stops_at_the_cap() {
    let vm = vm(VmConfig::default().with_memory_limit(1 << 20));
    // Grows one page at a time until refused, then reports the page count as
    // its "decision".
    let bomb = load(
        &vm,
        &wat_trigger(
            "",
            "(block $full (loop $grow
                (br_if $full (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
                (br $grow)))
             (memory.size)",
        ),
    );
    let outcome = bomb.call_select(&request(1), &candidates(3), 0, None);
    // 1 MiB = 16 pages: growth beyond the cap returned -1 to the guest.
    assert_eq!(
        outcome.result,
        Err(Fault::BadDecision {
            raw: 16,
            candidates: 3
        })
    );
    // One huge request fails as a whole; the module traps on it.
    let huge = load(
        &vm,
        &wat_trigger(
            "",
            "(if (i32.eq (memory.grow (i32.const 60000)) (i32.const -1)) (then unreachable)) (i32.const 0)",
        ),
    );
    assert!(matches!(
        huge.select(&request(1), &candidates(3)),
        Err(PolicyError::Trap(_))
    ));
    assert_instance_recovers(&bomb);
    assert_instance_recovers(&huge);
    assert_good_module_works(&vm);
}

#[test]
fn huge_initial_memory_is_refused_at_load() {
    let vm = vm(VmConfig::default().with_memory_limit(1 << 20));
    let wat = wat_policy("", "(i32.const 0)").replace(
        "(memory (export \"memory\") 1)",
        "(memory (export \"memory\") 1000)",
    );
    let err = vm
        .load(&from_wat("fat", "1.0.0", &[], &wat), &[])
        .unwrap_err();
    // Refused by the load-time caps, before compiling.
    assert!(
        matches!(&err, VmError::Limit(l) if l.cap == exec_env::limits::Cap::MemoryInitial),
        "{err}"
    );
    assert_good_module_works(&vm);
}

#[test]
fn tables_beyond_the_caps_are_refused_before_compiling() {
    let vm = vm(VmConfig::default());
    for (table, cap) in [
        (
            "(table 100000 funcref)",
            exec_env::limits::Cap::TableElements,
        ),
        (
            "(table 1 funcref) (table 1 funcref)",
            exec_env::limits::Cap::Tables,
        ),
    ] {
        let wat = wat_policy(table, "(i32.const 0)");
        let err = vm
            .load(&from_wat("m", "1.0.0", &[], &wat), &[])
            .unwrap_err();
        assert!(
            matches!(&err, VmError::Limit(l) if l.cap == cap),
            "{table}: {err}"
        );
    }
    assert_good_module_works(&vm);
}

#[test]
fn trap_in_select_fails_that_call_only() {
    let vm = vm(VmConfig::default());
    let trapping = load(&vm, &wat_trigger("", "unreachable"));
    let err = trapping.select(&request(1), &candidates(3)).unwrap_err();
    assert!(
        matches!(&err, PolicyError::Trap(m) if m.contains("unreachable")),
        "{err}"
    );
    assert_instance_recovers(&trapping);
    assert_eq!(trapping.stats().restarts, 1);
    assert_good_module_works(&vm);
}

#[test]
fn trap_leaves_no_corrupt_state_behind() {
    let vm = vm(VmConfig::default());
    // Writes 77 into a global-ish memory cell, then traps when given 3
    // candidates; otherwise returns the cell's value (0 on a fresh instance).
    let wat = wat_policy(
        "",
        "(if (i32.eq (local.get $n) (i32.const 3))
            (then (i32.store (i32.const 64) (i32.const 77)) unreachable))
         (i32.load (i32.const 64))",
    );
    let instance = load(&vm, &wat);
    assert!(instance.select(&request(1), &candidates(3)).is_err());
    // Rebuilt from the InstancePre: the half-done write is gone, so 0, not 77
    // (which would be out of range for one candidate).
    assert_eq!(
        instance.select(&request(1), &candidates(1)),
        Ok(Decision::Select(0))
    );
}

#[test]
fn deep_recursion_traps_with_stack_overflow() {
    let vm = vm(VmConfig::default());
    let wat = wat_policy(
        "(func $down (param i32) (result i32) (call $down (i32.add (local.get 0) (i32.const 1))))",
        "(if (result i32) (i32.eq (local.get $n) (i32.const 3))
            (then (call $down (i32.const 0))) (else (i32.const 0)))",
    );
    let deep = load(&vm, &wat);
    let outcome = deep.call_select(&request(1), &candidates(3), 0, None);
    assert!(
        matches!(&outcome.result, Err(Fault::Trap { message }) if message.contains("stack")),
        "{:?}",
        outcome.result
    );
    assert_instance_recovers(&deep);
    assert_good_module_works(&vm);
}

#[test]
fn out_of_range_and_negative_decisions_are_faults() {
    let vm = vm(VmConfig::default());
    let past_end = load(&vm, &wat_trigger("", "(local.get $n)"));
    assert_eq!(
        past_end.select(&request(1), &candidates(3)),
        Err(PolicyError::OutOfRange { index: 3, len: 3 })
    );
    let negative = load(&vm, &wat_trigger("", "(i32.const -7)"));
    assert_eq!(
        negative.select(&request(1), &candidates(3)),
        Err(PolicyError::OutOfRange {
            index: usize::MAX,
            len: 3
        })
    );
    let fault_code = load(&vm, &wat_trigger("", "(i32.const -2)"));
    assert_eq!(
        fault_code
            .call_select(&request(1), &candidates(3), 0, None)
            .result,
        Err(Fault::BadDecision {
            raw: -2,
            candidates: 3
        })
    );
    // -1 is a legal "reject".
    let reject = load(&vm, &wat_trigger("", "(i32.const -1)"));
    assert_eq!(
        reject.select(&request(1), &candidates(3)),
        Ok(Decision::Reject)
    );
    // Choosing a candidate that is not up is refused even though it is in range.
    let mut cands = candidates(3);
    cands[0].up = false;
    let always_first = load(&vm, &wat_policy("", "(i32.const 0)"));
    assert_eq!(
        always_first
            .call_select(&request(1), &cands, 0, None)
            .result,
        Err(Fault::DownCandidate {
            index: 0,
            candidates: 3
        })
    );
    for instance in [&past_end, &negative, &fault_code] {
        assert_instance_recovers(instance);
    }
    assert_good_module_works(&vm);
}

#[test]
fn wrong_abi_version_is_refused() {
    let vm = vm(VmConfig::default());
    let wat = wat_policy("", "(i32.const 0)")
        .replace("(result i32) i32.const 1)", "(result i32) i32.const 2)");
    let err = vm
        .load(&from_wat("future", "1.0.0", &[], &wat), &[])
        .unwrap_err();
    assert!(
        matches!(
            err,
            VmError::AbiVersion {
                found: 2,
                expected: 1
            }
        ),
        "{err}"
    );
    assert_good_module_works(&vm);
}

#[test]
fn missing_or_mistyped_exports_are_refused() {
    let vm = vm(VmConfig::default());
    let no_io = wat_policy("", "(i32.const 0)").replace("(export \"pronto_io_buffer\")", "");
    let err = vm
        .load(&from_wat("m", "1.0.0", &[], &no_io), &[])
        .unwrap_err();
    assert!(
        matches!(
            err,
            VmError::MissingExport {
                name: "pronto_io_buffer"
            }
        ),
        "{err}"
    );

    let no_memory = wat_policy("", "(i32.const 0)").replace("(export \"memory\")", "");
    let err = vm
        .load(&from_wat("m", "1.0.0", &[], &no_memory), &[])
        .unwrap_err();
    assert!(
        matches!(err, VmError::MissingExport { name: "memory" }),
        "{err}"
    );

    let no_entry = wat_policy("", "(i32.const 0)").replace("(export \"pronto_select\")", "");
    let err = vm
        .load(&from_wat("m", "1.0.0", &[], &no_entry), &[])
        .unwrap_err();
    assert!(matches!(err, VmError::NoEntryPoint), "{err}");

    let wrong_sig = wat_policy("", "(i32.const 0)")
        .replace("(param $n i32) (result i32)", "(param $n i64) (result i32)");
    let err = vm
        .load(&from_wat("m", "1.0.0", &[], &wrong_sig), &[])
        .unwrap_err();
    assert!(
        matches!(
            &err,
            VmError::ExportType {
                name: "pronto_select",
                ..
            }
        ),
        "{err}"
    );

    let f_without_g = wat_policy(
        r#"(func (export "pronto_cost") (param f64 f64) (result f64) (local.get 0))"#,
        "(i32.const 0)",
    );
    let err = vm
        .load(&from_wat("m", "1.0.0", &[], &f_without_g), &[])
        .unwrap_err();
    assert!(
        matches!(
            err,
            VmError::IncompleteCostModel {
                missing: "pronto_aggregate"
            }
        ),
        "{err}"
    );
    assert_good_module_works(&vm);
}

#[test]
fn forbidden_imports_are_refused_before_compiling() {
    let vm = vm(VmConfig::default());
    for (extra, module, name) in [
        (
            r#"(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))"#,
            "wasi_snapshot_preview1",
            "fd_write",
        ),
        (
            r#"(import "pronto" "exec" (func (param i32)))"#,
            "pronto",
            "exec",
        ),
        (r#"(import "pronto" "log" (global i32))"#, "pronto", "log"),
    ] {
        let wat = wat_policy(extra, "(i32.const 0)");
        let err = vm
            .load(
                &from_wat("m", "1.0.0", &ALL_CAPABILITIES, &wat),
                &ALL_CAPABILITIES,
            )
            .unwrap_err();
        assert!(
            matches!(&err, VmError::ForbiddenImport { module: m, name: n } if m == module && n == name),
            "{err}"
        );
    }
    let bad_sig = wat_policy(
        r#"(import "pronto" "now_ms" (func (result i32)))"#,
        "(i32.const 0)",
    );
    let err = vm
        .load(
            &from_wat("m", "1.0.0", &ALL_CAPABILITIES, &bad_sig),
            &ALL_CAPABILITIES,
        )
        .unwrap_err();
    assert!(
        matches!(err, VmError::ImportSignature { name: "now_ms", .. }),
        "{err}"
    );
    assert_good_module_works(&vm);
}

const LOG_IMPORT: &str = r#"(import "pronto" "log" (func $log (param i32 i32 i32)))
  (data (i32.const 16) "hello from wasm")"#;

#[test]
fn capabilities_must_be_requested_and_granted() {
    let vm = vm(VmConfig::default());
    let wat = wat_policy(
        LOG_IMPORT,
        "(call $log (i32.const 3) (i32.const 16) (i32.const 15)) (i32.const 0)",
    );
    let err = vm
        .load(
            &from_wat("m", "1.0.0", &[Capability::Log], &wat),
            &[Capability::Clock],
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            VmError::CapabilityNotGranted {
                capability: Capability::Log
            }
        ),
        "{err}"
    );
    let err = vm
        .load(&from_wat("m", "1.0.0", &[], &wat), &ALL_CAPABILITIES)
        .unwrap_err();
    assert!(
        matches!(
            err,
            VmError::CapabilityNotRequested {
                capability: Capability::Log
            }
        ),
        "{err}"
    );
    let logging = vm
        .load(
            &from_wat("m", "1.0.0", &[Capability::Log], &wat),
            &[Capability::Log],
        )
        .unwrap();
    assert_eq!(
        logging.select(&request(1), &candidates(2)),
        Ok(Decision::Select(0))
    );
    assert_eq!(logging.stats().host.log_lines, 1);
}

#[test]
fn log_is_rate_limited_bounded_and_checked() {
    let vm = vm(VmConfig::default().with_log_limit(LogLimit {
        lines: 3,
        window: Duration::from_secs(3600),
    }));
    // n == 3: a message pointer past the end of memory; n == 2: 4000 bytes (more
    // than MAX_LOG_LEN); otherwise a short line.
    let wat = wat_policy(
        LOG_IMPORT,
        "(if (i32.eq (local.get $n) (i32.const 3))
            (then (call $log (i32.const 3) (i32.const 65530) (i32.const 100))))
         (if (i32.eq (local.get $n) (i32.const 2))
            (then (call $log (i32.const 2) (i32.const 16) (i32.const 4000))))
         (call $log (i32.const 99) (i32.const 16) (i32.const 15))
         (i32.const 0)",
    );
    let logging = vm
        .load(
            &from_wat("chatty", "1.0.0", &[Capability::Log], &wat),
            &[Capability::Log],
        )
        .unwrap();
    let err = logging.select(&request(1), &candidates(3)).unwrap_err();
    assert!(
        matches!(&err, PolicyError::Trap(m) if m.contains("outside memory")),
        "{err}"
    );
    assert_eq!(
        logging.select(&request(1), &candidates(2)),
        Ok(Decision::Select(0))
    );
    for _ in 0..10 {
        assert_eq!(
            logging.select(&request(1), &candidates(1)),
            Ok(Decision::Select(0))
        );
    }
    let host = logging.stats().host;
    assert_eq!(host.log_faults, 1);
    assert_eq!(host.log_truncated, 1);
    // Three lines per window; the other 9 calls' lines were dropped.
    assert_eq!(host.log_lines, 3);
    assert_eq!(host.log_suppressed, 9);
}

#[test]
fn clock_capability_gives_monotonic_milliseconds() {
    let vm = vm(VmConfig::default());
    // Returns candidate 0 if now_ms is non-negative, -5 otherwise.
    let wat = wat_policy(
        r#"(import "pronto" "now_ms" (func $now (result i64)))"#,
        "(if (result i32) (i64.ge_s (call $now) (i64.const 0)) (then (i32.const 0)) (else (i32.const -5)))",
    );
    let timed = vm
        .load(
            &from_wat("timed", "1.0.0", &[Capability::Clock], &wat),
            &[Capability::Clock],
        )
        .unwrap();
    assert_eq!(
        timed.select(&request(1), &candidates(2)),
        Ok(Decision::Select(0))
    );
}

#[test]
fn io_buffer_outside_memory_or_misaligned_is_refused() {
    let vm = vm(VmConfig::default());
    for addr in ["65000", "-8", "1028"] {
        let wat = wat_policy("", "(i32.const 0)").replace(
            "(result i32) i32.const 1024)",
            &format!("(result i32) i32.const {addr})"),
        );
        let err = vm
            .load(&from_wat("m", "1.0.0", &[], &wat), &[])
            .unwrap_err();
        assert!(matches!(err, VmError::IoBuffer { .. }), "{addr}: {err}");
    }
    assert_good_module_works(&vm);
}

#[test]
fn non_policy_kinds_and_oversized_modules_are_refused() {
    let vm = vm(VmConfig {
        max_module_len: 64,
        ..VmConfig::default()
    });
    let mut module = shipped(least_load::NAME);
    let err = vm.load(&module, &[]).unwrap_err();
    assert!(matches!(err, VmError::ModuleTooLarge { .. }), "{err}");
    module.manifest.kind = exec_env::manifest::ModuleKind::Scheduler;
    let err = vm.load(&module, &[]).unwrap_err();
    assert!(matches!(err, VmError::UnsupportedKind { .. }), "{err}");
}

#[test]
fn a_start_function_is_bounded_too() {
    let vm = vm(VmConfig::default().with_fuel_per_call(Some(100_000)));
    let wat = wat_policy(
        "(func $spin (loop $l (br $l))) (start $spin)",
        "(i32.const 0)",
    );
    let err = vm
        .load(&from_wat("m", "1.0.0", &[], &wat), &[])
        .unwrap_err();
    assert!(
        matches!(
            err,
            VmError::Setup {
                fault: Fault::Timeout {
                    cause: TimeoutCause::Fuel
                },
                ..
            }
        ),
        "{err}"
    );
}

fn ip(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

/// A few requests and candidate sets that exercise each shipped policy: ties,
/// down candidates, NaN loads, prefixes, day and night tags.
fn abi_cases() -> Vec<(sdk::FlowRequest, Vec<sdk::Candidate>)> {
    let day = 1_704_067_200 + 12 * 3600;
    let night = 1_704_067_200 + 2 * 3600;
    let mut cases = Vec::new();
    for (i, now) in [day, night, day + 1].into_iter().enumerate() {
        let src = SocketAddr::new(ip(10, 1, i as u8, 7), 40_000 + i as u16);
        let request = harness::tcp(src, (ip(192, 200, 0, 10), 443)).with_now(now);
        let set = vec![
            sdk::Candidate::up(ip(10, 1, 0, 1), 0.5, 3.0).with_tags(time_of_day::DAY_TAG),
            sdk::Candidate::up(ip(10, 2, 0, 1), 0.2, 10.0).with_tags(time_of_day::NIGHT_TAG),
            sdk::Candidate::down(ip(10, 1, 1, 1), 0.0, 0.0),
            sdk::Candidate::up(ip(10, 3, 0, 1), f64::NAN, 1.0),
            sdk::Candidate::up(ip(10, 1, 2, 9), 0.2, 2.0).with_tags(time_of_day::DAY_TAG),
            sdk::Candidate::up(ip(172, 16, 0, 1), 0.7, 0.5),
        ];
        cases.push((request, set.clone()));
        cases.push((request, set[..3].to_vec()));
        cases.push((
            request,
            vec![sdk::Candidate::down(ip(10, 1, 0, 1), 0.1, 0.0)],
        ));
    }
    cases
}

#[test]
fn shipped_modules_decide_like_their_native_policies() {
    let vm = vm(VmConfig::default());
    let mut table = Box::new(MaglevTable::EMPTY);
    type Native<'a> = Box<dyn FnMut(&sdk::FlowRequest, &[sdk::Candidate]) -> sdk::Decision + 'a>;
    let policies: Vec<(&str, Native<'_>)> = vec![
        (least_load::NAME, Box::new(least_load::select)),
        (weighted_cost::NAME, Box::new(weighted_cost::select)),
        (proximity::NAME, Box::new(proximity::select)),
        (time_of_day::NAME, Box::new(time_of_day::select)),
        (
            slr_policy_wasm::consistent_hash::NAME,
            Box::new(|r: &sdk::FlowRequest, c: &[sdk::Candidate]| table.select(r, c)),
        ),
    ];
    let mut compared = 0;
    for (name, mut native) in policies {
        let module = shipped(name);
        let granted = module.manifest.capabilities.clone();
        let instance = vm.load(&module, &granted).unwrap();
        for (request, cands) in abi_cases() {
            let wasm = instance
                .call_select_abi(&request, &cands, None)
                .result
                .unwrap();
            let expected = harness::select(&mut native, &request, &cands).unwrap();
            let expected = match expected {
                sdk::Decision::Select(i) => Decision::Select(i),
                sdk::Decision::Reject => Decision::Reject,
            };
            assert_eq!(wasm, expected, "{name} on {request:?}");
            compared += 1;
        }
    }
    assert_eq!(compared, 5 * 9);
}

#[test]
fn least_load_through_the_policy_trait_matches_native_and_least_cost() {
    let vm = vm(VmConfig::default());
    let instance = vm.load(&shipped(least_load::NAME), &[]).unwrap();
    for n in 1..=8 {
        let mut cands = candidates(n);
        if n > 2 {
            cands[n - 1].up = false;
        }
        // Route costs are all equal, so least load and least cost agree.
        let wasm = instance.select(&request(n as u16), &cands).unwrap();
        assert_eq!(wasm, LeastCost::choose(&cands), "{n} candidates");
    }
    let mut all_down = candidates(3);
    for c in &mut all_down {
        c.up = false;
    }
    assert_eq!(
        instance.select(&request(9), &all_down),
        Ok(Decision::Reject)
    );
}

#[test]
fn weighted_cost_f_and_g_match_native() {
    let vm = vm(VmConfig::default());
    let instance = vm.load(&shipped(weighted_cost::NAME), &[]).unwrap();
    for (load, route) in [(0.0, 0.0), (0.5, 3.0), (1.5, 100.0), (f64::INFINITY, 1.0)] {
        let wasm = CostModel::cost(&instance, load, route).unwrap();
        assert_eq!(wasm.to_bits(), weighted_cost::cost(load, route).to_bits());
    }
    let cands = candidates(5);
    let abi: Vec<sdk::Candidate> = cands
        .iter()
        .map(|c| sdk::Candidate::up(c.addr, c.load, c.route_cost))
        .collect();
    let native = harness::aggregate(weighted_cost::aggregate, &abi).unwrap();
    assert_eq!(
        instance.aggregate(&cands).unwrap().to_bits(),
        native.to_bits()
    );
    // A module without F and G says so instead of guessing.
    let select_only = vm.load(&shipped(least_load::NAME), &[]).unwrap();
    assert!(matches!(
        CostModel::cost(&select_only, 0.1, 0.1),
        Err(PolicyError::Unavailable(_))
    ));
}

#[test]
fn nan_from_f_is_a_fault() {
    let vm = vm(VmConfig::default());
    let wat = wat_policy(
        r#"(func (export "pronto_cost") (param f64 f64) (result f64) (f64.div (f64.const 0) (f64.const 0)))
           (func (export "pronto_aggregate") (param i32) (result f64) (f64.const 1))"#,
        "(i32.const 0)",
    );
    let instance = load(&vm, &wat);
    assert!(matches!(
        instance.call_cost(0.1, 0.2, None).result,
        Err(Fault::BadValue {
            export: "pronto_cost",
            ..
        })
    ));
    assert_eq!(instance.aggregate(&candidates(2)), Ok(1.0));
}

/// One step of [`candidates_left_in_guest_memory_follow_every_change`].
#[derive(Debug, Clone)]
enum Step {
    /// Call again with the same candidates.
    Same,
    /// Set candidate `at`'s load (NaN included).
    Load { at: usize, load: f64 },
    /// Flip candidate `at`'s UP flag.
    Toggle { at: usize },
    /// Keep the first `len` candidates.
    Truncate { len: usize },
    /// Add a candidate.
    Push { load: f64 },
    /// Sign of zero: `-0.0` and `0.0` compare equal but encode differently.
    NegZero { at: usize },
    /// A call through the ABI path with other candidates in between.
    Abi,
}

fn arb_step() -> impl Strategy<Value = Step> {
    let load = prop_oneof![
        6 => (0_u8..5).prop_map(|l| f64::from(l) / 4.0),
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
    ];
    prop_oneof![
        3 => Just(Step::Same),
        3 => (any::<usize>(), load.clone()).prop_map(|(at, load)| Step::Load { at, load }),
        2 => any::<usize>().prop_map(|at| Step::Toggle { at }),
        1 => (0_usize..6).prop_map(|len| Step::Truncate { len }),
        1 => load.prop_map(|load| Step::Push { load }),
        1 => any::<usize>().prop_map(|at| Step::NegZero { at }),
        1 => Just(Step::Abi),
    ]
}

fn abi_of(cands: &[Candidate]) -> Vec<sdk::Candidate> {
    cands
        .iter()
        .map(|c| {
            let flags = if c.up { sdk::flags::UP } else { 0 };
            sdk::Candidate::new(c.addr, c.load, c.route_cost, flags)
        })
        .collect()
}

fn decision(d: sdk::Decision) -> Decision {
    match d {
        sdk::Decision::Select(i) => Decision::Select(i),
        sdk::Decision::Reject => Decision::Reject,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The VM leaves the candidates in guest memory between calls and rewrites
    /// them only when they change: whatever changes (a load, a flag, the count, a
    /// NaN, the sign of a zero, a call of another entry point writing the same
    /// region), every answer of one long-lived instance is the native policy's
    /// on the candidates of that call.
    #[test]
    fn candidates_left_in_guest_memory_follow_every_change(
        steps in prop::collection::vec(arb_step(), 1..40),
    ) {
        let vm = vm(VmConfig::default());
        let instance = vm.load(&shipped(weighted_cost::NAME), &[]).unwrap();
        let mut cands = candidates(4);
        for (i, step) in steps.iter().enumerate() {
            let pick = |at: usize, len: usize| (len > 0).then(|| at % len);
            match *step {
                Step::Same => {}
                Step::Load { at, load } => {
                    if let Some(k) = pick(at, cands.len()) {
                        cands[k].load = load;
                    }
                }
                Step::Toggle { at } => {
                    if let Some(k) = pick(at, cands.len()) {
                        cands[k].up = !cands[k].up;
                    }
                }
                Step::Truncate { len } => cands.truncate(len),
                Step::Push { load } => cands.push(Candidate {
                    addr: ip(10, 9, 1, cands.len() as u8),
                    load,
                    route_cost: 0.5,
                    up: true,
                }),
                Step::NegZero { at } => {
                    if let Some(k) = pick(at, cands.len()) {
                        cands[k].load = if cands[k].load.to_bits() == 0 { -0.0 } else { 0.0 };
                    }
                }
                Step::Abi => {
                    let other = abi_of(&candidates(5));
                    let abi_request = harness::tcp(([10, 0, 0, 1], 1), ([192, 200, 0, 10], 443));
                    let wasm = instance.call_select_abi(&abi_request, &other, None).result.unwrap();
                    let native = harness::select(weighted_cost::select, &abi_request, &other).unwrap();
                    prop_assert_eq!(wasm, decision(native));
                }
            }
            let abi = abi_of(&cands);
            let abi_request = harness::tcp(([10, 0, 3, 4], i as u16), ([192, 200, 0, 10], 443));
            let native = harness::select(weighted_cost::select, &abi_request, &abi).unwrap();
            prop_assert_eq!(
                instance.select(&request(i as u16), &cands),
                Ok(decision(native)),
                "step {} {:?} on {:?}", i, step, cands
            );
            // G writes the same region; alternate it with select.
            if i % 3 == 0 {
                let native = harness::aggregate(weighted_cost::aggregate, &abi).unwrap();
                let wasm = instance.aggregate(&cands).unwrap();
                prop_assert_eq!(wasm.to_bits(), native.to_bits(), "G at step {}", i);
            }
        }
        prop_assert_eq!(instance.stats().restarts, 0);
    }
}

/// A guest that rewrites its own I/O buffer (here: marks candidate 0 UP before
/// choosing it) misleads only itself: the host checks the answer against its own
/// candidates, the same on every call whether or not it rewrote the region.
#[test]
fn a_guest_writing_its_buffer_cannot_choose_a_down_candidate() {
    let vm = vm(VmConfig::default());
    // Candidate 0's flags sit at 1024 + 56 + 32.
    let instance = load(
        &vm,
        &wat_policy(
            "",
            "(i32.store (i32.const 1112) (i32.const 1)) (i32.const 0)",
        ),
    );
    let mut cands = candidates(3);
    cands[0].up = false;
    for port in 0..3 {
        assert!(
            matches!(
                instance.select(&request(port), &cands),
                Err(PolicyError::OutOfRange { index: 0, len: 3 })
            ),
            "call {port}"
        );
    }
    cands[0].up = true;
    assert_eq!(
        instance.select(&request(9), &cands),
        Ok(Decision::Select(0))
    );
}

/// A policy with `pronto_select_v2` (body `v2`, params `$n` and `$w0`..`$w6`)
/// beside a `pronto_select` that always answers the fault value: a host that
/// calls v1 when v2 is there fails the call.
fn wat_v2(v2: &str) -> String {
    wat_policy(
        &format!(
            r#"(func (export "pronto_select_v2") (param $n i32)
    (param $w0 i64) (param $w1 i64) (param $w2 i64) (param $w3 i64)
    (param $w4 i64) (param $w5 i64) (param $w6 i64) (result i32)
    {v2})"#
        ),
        "(i32.const -2)",
    )
}

/// `pronto_select_v2` that checks every word against `common::request(port)` at
/// time 77 (TCP, IPv4, site level, subnet 0, 10.0.3.4 -> 192.200.0.10:443) and
/// that the request part of its I/O buffer (1024..1080) is still all zero, then
/// answers `port % n`; any mismatch answers the fault value.
const V2_CHECKED: &str = r#"
    (if (result i32)
      (i32.and
        (i32.and
          (i32.and
            (i64.eq (i64.and (local.get $w0) (i64.const 0xffff0000ffffffff)) (i64.const 0x01bb000000020406))
            (i64.eq (local.get $w1) (i64.const 0)))
          (i32.and
            (i32.and (i64.eq (local.get $w2) (i64.const 0)) (i64.eq (local.get $w4) (i64.const 0)))
            (i32.and
              (i64.eq (local.get $w3) (i64.const 0x0403000affff0000))
              (i64.eq (local.get $w5) (i64.const 0x0a00c8c0ffff0000)))))
        (i32.and
          (i64.eq (local.get $w6) (i64.const 77))
          (i64.eqz
            (i64.or
              (i64.or
                (i64.or (i64.load (i32.const 1024)) (i64.load (i32.const 1032)))
                (i64.or (i64.load (i32.const 1040)) (i64.load (i32.const 1048))))
              (i64.or
                (i64.or (i64.load (i32.const 1056)) (i64.load (i32.const 1064)))
                (i64.load (i32.const 1072)))))))
      (then
        (i32.rem_u
          (i32.wrap_i64 (i64.and (i64.shr_u (local.get $w0) (i64.const 32)) (i64.const 0xffff)))
          (local.get $n)))
      (else (i32.const -2)))"#;

#[test]
fn select_v2_is_called_with_the_request_in_its_arguments() {
    let vm = vm(VmConfig::default());
    let instance = load(&vm, &wat_v2(V2_CHECKED));
    assert!(instance.module().entry_points().select_v2);
    let cands = candidates(5);
    for port in 0..12_u16 {
        assert_eq!(
            instance
                .call_select(&request(port), &cands, 77, None)
                .result,
            Ok(Decision::Select(usize::from(port) % 5)),
            "port {port}"
        );
    }
    // New candidates are written (the count changes the answer); the request
    // part still is not.
    let fewer = candidates(3);
    assert_eq!(
        instance.call_select(&request(7), &fewer, 77, None).result,
        Ok(Decision::Select(1))
    );
    // The answer is still checked against the host's candidates.
    let mut down = candidates(5);
    down[3].up = false;
    assert_eq!(
        instance.call_select(&request(3), &down, 77, None).result,
        Err(Fault::DownCandidate {
            index: 3,
            candidates: 5
        })
    );
    assert_eq!(instance.stats().restarts, 1);
}

#[test]
fn modules_without_select_v2_still_get_the_request_in_memory() {
    let vm = vm(VmConfig::default());
    // v1 only: the source port from the request in its I/O buffer (bytes 4..6).
    let v1 = load(
        &vm,
        &wat_policy(
            "",
            "(i32.rem_u (i32.load16_u (i32.const 1028)) (local.get $n))",
        ),
    );
    assert!(!v1.module().entry_points().select_v2);
    let cands = candidates(5);
    for port in 0..12_u16 {
        assert_eq!(
            v1.select(&request(port), &cands),
            Ok(Decision::Select(usize::from(port) % 5)),
            "port {port}"
        );
    }
    // The least_load artifact shipped before pronto_select_v2 existed, byte for
    // byte: it still loads and answers like the rebuilt one, which has v2.
    let wasm = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/least_load_pre_v2.wasm"
    ))
    .unwrap();
    let old = vm
        .load(
            &verified(manifest(least_load::NAME, "0.1.0", &[]), wasm),
            &[],
        )
        .unwrap();
    let new = vm.load(&shipped(least_load::NAME), &[]).unwrap();
    assert!(!old.module().entry_points().select_v2);
    assert!(new.module().entry_points().select_v2);
    for n in 1..=8 {
        let mut cands = candidates(n);
        cands.rotate_left(n / 2);
        let expected = LeastCost.select(&request(1), &cands).unwrap();
        assert_eq!(old.select(&request(1), &cands), Ok(expected), "{n}");
        assert_eq!(new.select(&request(1), &cands), Ok(expected), "{n}");
    }
}

#[test]
fn select_v2_is_bounded_like_select() {
    let looping_v2 = wat_v2(&format!(
        "(if (result i32) (i32.eq (local.get $n) (i32.const 3)) (then {LOOP}) (else (i32.const 0)))"
    ));
    // Fuel alone (an epoch deadline of a minute).
    let fuel_vm = vm(VmConfig::default()
        .with_fuel_per_call(Some(200_000))
        .with_epoch(Duration::from_millis(1), 60_000));
    let looping = load(&fuel_vm, &looping_v2);
    let outcome = looping.call_select(&request(1), &candidates(3), 0, None);
    assert_eq!(
        outcome.result,
        Err(Fault::Timeout {
            cause: TimeoutCause::Fuel
        })
    );
    assert_eq!(outcome.cpu_used, 200_000);
    // A share below the per-call budget cuts it short as well.
    let outcome = looping.call_select(&request(1), &candidates(3), 0, Some(5_000));
    assert_eq!(outcome.result, Err(Fault::Budget));
    assert_eq!(outcome.cpu_used, 5_000);
    assert_instance_recovers(&looping);

    // The epoch alone (no fuel).
    let epoch_vm = vm(VmConfig::default()
        .with_fuel_per_call(None)
        .with_epoch(Duration::from_millis(1), 5));
    let looping = load(&epoch_vm, &looping_v2);
    let started = Instant::now();
    let outcome = looping.call_select(&request(1), &candidates(3), 0, None);
    assert_eq!(
        outcome.result,
        Err(Fault::Timeout {
            cause: TimeoutCause::Epoch
        })
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(outcome.cpu_used >= 4_000_000, "{}", outcome.cpu_used);
    assert_instance_recovers(&looping);
}

#[test]
fn select_v2_needs_select_and_its_exact_signature() {
    let vm = vm(VmConfig::default());
    let orphan = wat_v2("(i32.const 0)").replace("(export \"pronto_select\")", "");
    let err = vm
        .load(&from_wat("m", "1.0.0", &[], &orphan), &[])
        .unwrap_err();
    assert!(
        matches!(
            err,
            VmError::MissingExport {
                name: "pronto_select"
            }
        ),
        "{err}"
    );
    let mistyped = wat_v2("(i32.const 0)").replace("(param $w6 i64)", "(param $w6 i32)");
    let err = vm
        .load(&from_wat("m", "1.0.0", &[], &mistyped), &[])
        .unwrap_err();
    assert!(
        matches!(
            &err,
            VmError::ExportType {
                name: "pronto_select_v2",
                ..
            }
        ),
        "{err}"
    );
    assert_good_module_works(&vm);
}
