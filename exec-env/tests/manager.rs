//! The environment manager: hot swap under load, quarantine and fallback,
//! rollback, removal, tenant scope, CPU isolation, and installs of really
//! signed module files.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failure is a test failure"
)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use common::{candidates, from_wat, request, shipped, signer, wat_policy};
use exec_env::ca::{CertificateAuthority, KeyAlgorithm, SignerRequest, Validity};
use exec_env::manager::{
    Environment, EnvironmentConfig, FailurePolicy, ManagerError, QuarantineConfig, ScopeError,
    VersionState,
};
use exec_env::manifest::Manifest;
use exec_env::trust::{TrustAnchors, VerifyError};
use exec_env::verified::VerifiedModule;
use exec_env::vm::VmConfig;
use exec_env::{format, sign};
use resource_mgr::BudgetConfig;
use router_core::classify::VirtualSubnet;
use router_core::policy::{CostModel, Decision, Policy, PolicyError};
use slr_policy_wasm::least_load;

fn subnet(text: &str) -> VirtualSubnet {
    text.parse().unwrap()
}

fn any_subnet() -> VirtualSubnet {
    subnet("192.200.0.0/16")
}

fn operator(config: impl FnOnce(&mut EnvironmentConfig)) -> Environment {
    let mut c = EnvironmentConfig::operator("operator");
    config(&mut c);
    Environment::new(c, TrustAnchors::empty()).unwrap()
}

/// A policy that always chooses candidate `index`.
fn constant(name: &str, version: &str, index: u32) -> VerifiedModule {
    from_wat(
        name,
        version,
        &[],
        &wat_policy("", &format!("(i32.const {index})")),
    )
}

/// A policy that always traps.
fn trapping(name: &str, version: &str) -> VerifiedModule {
    from_wat(name, version, &[], &wat_policy("", "unreachable"))
}

/// A policy that never returns.
fn looping(name: &str, version: &str) -> VerifiedModule {
    from_wat(
        name,
        version,
        &[],
        &wat_policy("", "(loop $l (br $l)) (i32.const 0)"),
    )
}

#[test]
fn hot_swap_under_concurrent_selects_loses_no_call() {
    const SWAPS: u32 = 100;
    let env = operator(|_| {});
    env.install_verified(constant("swapped", "1.0.0", 0))
        .unwrap();
    let policy = env.policy("swapped", any_subnet()).unwrap();
    // Version k answers candidate k: the answer names the version that served.
    let prepared: Vec<_> = (1..=SWAPS)
        .map(|k| {
            env.prepare(constant("swapped", &format!("1.0.{k}"), k))
                .unwrap()
        })
        .collect();

    let published = Arc::new(AtomicU64::new(0));
    let calls = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (policy, published, calls, stop) = (
            Arc::clone(&policy),
            Arc::clone(&published),
            Arc::clone(&calls),
            Arc::clone(&stop),
        );
        std::thread::spawn(move || {
            let cands = candidates(128);
            let mut last = 0_u64;
            while !stop.load(Ordering::Acquire) {
                let floor = published.load(Ordering::Acquire);
                let answer = policy.select(&request(7), &cands);
                let Ok(Decision::Select(k)) = answer else {
                    return Err(format!(
                        "call {} got {answer:?}",
                        calls.load(Ordering::Relaxed)
                    ));
                };
                let k = k as u64;
                // Never older than what was published before the call began, and
                // never going back.
                if k < floor || k < last {
                    return Err(format!("served by version {k} after {floor} (last {last})"));
                }
                last = k;
                calls.fetch_add(1, Ordering::Release);
            }
            Ok(last)
        })
    };
    for (k, prepared) in (1..=u64::from(SWAPS)).zip(prepared) {
        let report = env.publish(prepared).unwrap();
        assert_eq!(report.active.version.patch, k);
        published.store(k, Ordering::Release);
        // Counted after publishing: of two calls completed from here, the second
        // began after the swap, so it was served by version k (calls are
        // sequential). Counting before the swap raced with calls still in flight
        // on version k - 1 (seen: last = 99 of 100 on a loaded machine).
        let before = calls.load(Ordering::Acquire);
        // Let the reader make at least two calls against each version.
        let deadline = Instant::now() + Duration::from_secs(10);
        while calls.load(Ordering::Acquire) < before + 2 && Instant::now() < deadline {
            std::thread::yield_now();
        }
    }
    stop.store(true, Ordering::Release);
    let last = reader.join().unwrap().unwrap();
    assert_eq!(last, u64::from(SWAPS));
    let info = env.module("swapped").unwrap();
    assert_eq!(info.counters.swaps, u64::from(SWAPS));
    assert_eq!(info.counters.faults(), 0);
    assert_eq!(info.counters.ok, info.counters.calls);
    assert!(info.counters.calls >= 2 * u64::from(SWAPS));
    assert_eq!(info.active.version.patch, u64::from(SWAPS));
    assert_eq!(info.previous.unwrap().version.patch, u64::from(SWAPS) - 1);
}

#[test]
fn repeated_faults_quarantine_the_module_and_the_previous_version_answers() {
    // Time is injected (`Vm::advance_clock`), not slept: the backoffs are long
    // enough that the real time a slow machine spends in this test (well under
    // a second) cannot move a quarantine's end past one of the checks below.
    let env = operator(|c| {
        c.quarantine = QuarantineConfig {
            faults: 3,
            window: Duration::from_secs(60),
            backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(60),
        };
    });
    env.install_verified(constant("flaky", "1.0.0", 1)).unwrap();
    env.install_verified(trapping("flaky", "2.0.0")).unwrap();
    let policy = env.policy("flaky", any_subnet()).unwrap();
    let select = |n: usize| {
        for _ in 0..n {
            assert_eq!(
                policy.select(&request(1), &candidates(4)),
                Ok(Decision::Select(1))
            );
        }
    };
    let remaining = || match env.module("flaky").unwrap().active.state {
        VersionState::Quarantined { remaining } => remaining,
        other => panic!("not quarantined: {other:?}"),
    };
    let secs = Duration::from_secs;
    select(10);
    let info = env.module("flaky").unwrap();
    assert_eq!(info.counters.traps, 3);
    assert_eq!(info.counters.quarantines, 1);
    assert_eq!(info.counters.quarantined_refusals, 7);
    assert_eq!(info.counters.fallbacks, 10);
    assert_eq!(info.previous.unwrap().state, VersionState::Standby);
    // The first quarantine is the configured backoff.
    let r = remaining();
    assert!(r > secs(9) && r <= secs(10), "{r:?}");

    // Just before the backoff ends the version is still refused, untried.
    env.vm().advance_clock(secs(9));
    assert!(remaining() <= secs(1), "{:?}", remaining());
    select(3);
    let info = env.module("flaky").unwrap();
    assert_eq!(
        (info.counters.traps, info.counters.quarantined_refusals),
        (3, 10)
    );

    // After it the module is tried again, faults again, and the next
    // quarantine (within max_backoff of the last one) is twice as long.
    env.vm().advance_clock(Duration::from_millis(1500));
    select(3);
    let info = env.module("flaky").unwrap();
    assert_eq!(info.counters.traps, 6);
    assert_eq!(info.counters.quarantines, 2);
    assert_eq!(info.counters.quarantined_refusals, 10);
    let r = remaining();
    assert!(r > secs(19) && r <= secs(20), "{r:?}");

    // A quarantine that comes more than max_backoff after the last one ended
    // starts again at the configured backoff. (Reading the state releases the
    // expired quarantine, which dates its end.)
    env.vm().advance_clock(Duration::from_millis(20_500));
    assert_eq!(
        env.module("flaky").unwrap().active.state,
        VersionState::Serving
    );
    env.vm().advance_clock(secs(61));
    select(3);
    let info = env.module("flaky").unwrap();
    assert_eq!((info.counters.traps, info.counters.quarantines), (9, 3));
    let r = remaining();
    assert!(r > secs(9) && r <= secs(10), "{r:?}");
}

#[test]
fn without_a_previous_version_the_engine_fallback_takes_over() {
    let env = operator(|c| {
        c.quarantine.faults = 2;
    });
    env.install_verified(trapping("broken", "1.0.0")).unwrap();
    let policy = env.policy("broken", any_subnet()).unwrap();
    assert!(matches!(
        policy.select(&request(1), &candidates(2)),
        Err(PolicyError::Trap(_))
    ));
    assert!(matches!(
        policy.select(&request(1), &candidates(2)),
        Err(PolicyError::Trap(_))
    ));
    // Quarantined: refused without running, so the engine's built-in answers.
    assert!(matches!(
        policy.select(&request(1), &candidates(2)),
        Err(PolicyError::Unavailable(m)) if m.contains("quarantined")
    ));
    let counters = env.module("broken").unwrap().counters;
    assert_eq!((counters.traps, counters.quarantined_refusals), (2, 1));
}

#[test]
fn refuse_new_flows_rejects_instead_of_falling_back() {
    let env = operator(|c| c.failure_policy = FailurePolicy::RefuseNewFlows);
    env.install_verified(constant("strict", "1.0.0", 0))
        .unwrap();
    env.install_verified(trapping("strict", "1.1.0")).unwrap();
    let policy = env.policy("strict", any_subnet()).unwrap();
    assert_eq!(
        policy.select(&request(1), &candidates(2)),
        Ok(Decision::Reject)
    );
    let counters = env.module("strict").unwrap().counters;
    assert_eq!((counters.refused_flows, counters.fallbacks), (1, 0));
}

#[test]
fn rollback_restores_the_previous_version() {
    let env = operator(|_| {});
    env.install_verified(constant("ab", "1.0.0", 0)).unwrap();
    let policy = env.policy("ab", any_subnet()).unwrap();
    assert!(matches!(
        env.rollback("ab"),
        Err(ManagerError::NoPreviousVersion { .. })
    ));
    env.install_verified(constant("ab", "2.0.0", 1)).unwrap();
    assert_eq!(
        policy.select(&request(1), &candidates(3)),
        Ok(Decision::Select(1))
    );
    let report = env.rollback("ab").unwrap();
    assert_eq!(report.active.version.major, 1);
    assert_eq!(report.replaced.version.major, 2);
    assert_eq!(
        policy.select(&request(1), &candidates(3)),
        Ok(Decision::Select(0))
    );
    assert_eq!(policy.active_version().unwrap().major, 1);
    // A second rollback goes forward again.
    env.rollback("ab").unwrap();
    assert_eq!(
        policy.select(&request(1), &candidates(3)),
        Ok(Decision::Select(1))
    );
    assert_eq!(env.module("ab").unwrap().counters.rollbacks, 2);
    assert!(matches!(
        env.rollback("nope"),
        Err(ManagerError::UnknownModule { .. })
    ));
}

#[test]
fn a_refused_install_leaves_the_old_version_serving() {
    let env = operator(|_| {});
    env.install_verified(constant("keep", "1.0.0", 1)).unwrap();
    let policy = env.policy("keep", any_subnet()).unwrap();
    let wrong_abi = from_wat(
        "keep",
        "2.0.0",
        &[],
        &wat_policy("", "(i32.const 0)")
            .replace("(result i32) i32.const 1)", "(result i32) i32.const 9)"),
    );
    assert!(matches!(
        env.install_verified(wrong_abi),
        Err(ManagerError::Vm(_))
    ));
    assert!(matches!(
        env.install_verified(constant("keep", "1.0.0", 2)),
        Err(ManagerError::DuplicateVersion { .. })
    ));
    assert!(matches!(
        env.install_verified(constant("Bad Name", "1.0.0", 2)),
        Err(ManagerError::InvalidName { .. })
    ));
    assert_eq!(
        policy.select(&request(1), &candidates(3)),
        Ok(Decision::Select(1))
    );
    let listed = env.list();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].active.version.major, 1);
    assert_eq!(env.counters().refused, 3);
    assert_eq!(env.counters().installs, 1);
}

#[test]
fn remove_and_reinstall_reach_existing_handles() {
    let env = operator(|_| {});
    env.install_verified(constant("gone", "1.0.0", 1)).unwrap();
    let policy = env.policy("gone", any_subnet()).unwrap();
    env.remove("gone").unwrap();
    assert!(env.list().is_empty());
    assert!(matches!(
        policy.select(&request(1), &candidates(3)),
        Err(PolicyError::Unavailable(_))
    ));
    assert!(matches!(
        env.remove("gone"),
        Err(ManagerError::UnknownModule { .. })
    ));
    env.install_verified(constant("gone", "1.0.1", 2)).unwrap();
    assert_eq!(
        policy.select(&request(1), &candidates(3)),
        Ok(Decision::Select(2))
    );
}

#[test]
fn max_modules_is_enforced() {
    let env = operator(|c| c.max_modules = 2);
    env.install_verified(constant("a", "1.0.0", 0)).unwrap();
    env.install_verified(constant("b", "1.0.0", 0)).unwrap();
    assert!(matches!(
        env.install_verified(constant("c", "1.0.0", 0)),
        Err(ManagerError::TooManyModules { limit: 2 })
    ));
    // A new version of an installed name is not a new module.
    env.install_verified(constant("a", "1.1.0", 0)).unwrap();
}

fn tenant_module(
    name: &str,
    version: &str,
    claims: &[&str],
    certificate: &[&str],
) -> VerifiedModule {
    let mut module = constant(name, version, 0);
    module.manifest.subnets = claims.iter().map(|s| (*s).to_owned()).collect();
    module.signer = signer(certificate);
    module
}

#[test]
fn tenant_modules_govern_only_their_own_subnets() {
    let env = Environment::new(
        EnvironmentConfig::tenant("tenant-a", vec![subnet("192.200.0.0/16")]),
        TrustAnchors::empty(),
    )
    .unwrap();
    env.install_verified(tenant_module(
        "mine",
        "1.0.0",
        &["192.200.1.0/24"],
        &["192.200.0.0/16"],
    ))
    .unwrap();

    // Another tenant's subnet, though the certificate is ours.
    let err = env
        .install_verified(tenant_module(
            "theirs",
            "1.0.0",
            &["192.201.0.0/24"],
            &["192.200.0.0/16"],
        ))
        .unwrap_err();
    assert!(
        matches!(
            err,
            ManagerError::Scope(ScopeError::NotInCertificate { .. })
        ),
        "{err}"
    );
    // The certificate grants it, the environment does not.
    let err = env
        .install_verified(tenant_module(
            "theirs",
            "1.0.0",
            &["10.1.0.0/16"],
            &["10.0.0.0/8"],
        ))
        .unwrap_err();
    assert!(
        matches!(
            err,
            ManagerError::Scope(ScopeError::OutsideEnvironment { .. })
        ),
        "{err}"
    );
    let err = env
        .install_verified(tenant_module("vague", "1.0.0", &[], &["192.200.0.0/16"]))
        .unwrap_err();
    assert!(
        matches!(err, ManagerError::Scope(ScopeError::NoSubnets { .. })),
        "{err}"
    );
    let err = env
        .install_verified(tenant_module("open", "1.0.0", &["192.200.1.0/24"], &[]))
        .unwrap_err();
    assert!(
        matches!(
            err,
            ManagerError::Scope(ScopeError::CertificateNamesNoSubnets { .. })
        ),
        "{err}"
    );
    let err = env
        .install_verified(tenant_module(
            "typo",
            "1.0.0",
            &["192.200.1.1/24"],
            &["192.200.0.0/16"],
        ))
        .unwrap_err();
    assert!(
        matches!(err, ManagerError::Scope(ScopeError::Syntax { .. })),
        "{err}"
    );

    // Bound only to subnets the module governs.
    let policy = env.policy("mine", subnet("192.200.1.0/25")).unwrap();
    assert_eq!(
        policy.select(&request(1), &candidates(2)),
        Ok(Decision::Select(0))
    );
    assert!(matches!(
        env.policy("mine", subnet("192.200.2.0/24")),
        Err(ManagerError::Scope(ScopeError::NotGoverned { .. }))
    ));
    assert!(matches!(
        env.policy("mine", subnet("10.0.0.0/8")),
        Err(ManagerError::Scope(ScopeError::OutsideEnvironment { .. }))
    ));
    // A new version that drops the bound subnet is installed but not used for
    // it: the handle falls back to the previous version.
    env.install_verified(tenant_module(
        "mine",
        "1.1.0",
        &["192.200.9.0/24"],
        &["192.200.0.0/16"],
    ))
    .unwrap();
    assert_eq!(
        policy.select(&request(1), &candidates(2)),
        Ok(Decision::Select(0))
    );
    let counters = env.module("mine").unwrap().counters;
    assert_eq!((counters.unavailable, counters.fallbacks), (1, 1));
    assert_eq!(env.counters().refused, 5);
}

#[test]
fn a_looping_module_does_not_take_the_cpu_share_of_a_good_one() {
    let env = operator(|c| {
        // 10 ms periods of 2 M fuel; each call may burn 1 M.
        c.budget = BudgetConfig::new(10_000_000, 2_000_000);
        c.vm = VmConfig::default().with_fuel_per_call(Some(1_000_000));
        // Keep the looper out of quarantine: this test is about CPU shares.
        c.quarantine.faults = u32::MAX;
    });
    env.install_verified(looping("looper", "1.0.0")).unwrap();
    env.install_verified(shipped(least_load::NAME)).unwrap();
    let looper = env.policy("looper", any_subnet()).unwrap();
    let good = env.policy(least_load::NAME, any_subnet()).unwrap();
    let cands = candidates(8);
    let started = Instant::now();
    let (mut good_calls, mut throttled) = (0, 0);
    while started.elapsed() < Duration::from_millis(300) {
        match looper.select(&request(1), &cands) {
            Err(PolicyError::Timeout) => {}
            Err(PolicyError::Unavailable(_)) => throttled += 1,
            other => panic!("looper answered {other:?}"),
        }
        assert_eq!(good.select(&request(2), &cands), Ok(Decision::Select(7)));
        good_calls += 1;
        // Well-behaved means well under its share: a few thousand fuel per
        // period, not a flat-out loop that would spend its own share too.
        std::thread::sleep(Duration::from_micros(200));
    }
    let looper_info = env.module("looper").unwrap();
    let good_info = env.module(least_load::NAME).unwrap();
    assert!(throttled > 0, "the looper was never throttled");
    assert_eq!(looper_info.counters.throttled, throttled);
    assert_eq!(good_info.counters.throttled, 0);
    assert_eq!(good_info.counters.ok, good_calls);
    // Each looper call that ran burnt its whole per-call fuel, and it ran at
    // most about once per period: its share (1 M) plus one call of overrun.
    let periods = started.elapsed().as_millis() as u64 / 10 + 1;
    let cpu = looper_info.cpu.unwrap();
    assert!(
        cpu.consumed <= (periods + 1) * 1_000_000,
        "looper consumed {} over {periods} periods",
        cpu.consumed
    );
}

#[test]
fn cost_model_handles_fall_back_to_the_builtin_or_refuse() {
    let env = operator(|_| {});
    env.install_verified(shipped(slr_policy_wasm::weighted_cost::NAME))
        .unwrap();
    let model = env
        .cost_model(slr_policy_wasm::weighted_cost::NAME, any_subnet())
        .unwrap();
    assert_eq!(
        model.cost(0.5, 2.0).unwrap().to_bits(),
        slr_policy_wasm::weighted_cost::cost(0.5, 2.0).to_bits()
    );
    // NaN from F is a fault; the built-in load + route cost answers instead.
    assert_eq!(model.cost(f64::NAN, 1.0).map(f64::is_nan), Ok(true));
    let counters = env.module("weighted_cost").unwrap().counters;
    assert_eq!((counters.bad_results, counters.builtin_answers), (1, 1));

    let strict = operator(|c| c.failure_policy = FailurePolicy::RefuseNewFlows);
    strict
        .install_verified(shipped(slr_policy_wasm::weighted_cost::NAME))
        .unwrap();
    let model = strict
        .cost_model(slr_policy_wasm::weighted_cost::NAME, any_subnet())
        .unwrap();
    // A least_load binary swapped in under the name: binding checks the role,
    // but a later version may still lack F, and then "unreachable" rather than
    // a guess.
    let mut no_f = shipped(least_load::NAME);
    no_f.manifest.name = slr_policy_wasm::weighted_cost::NAME.to_owned();
    no_f.manifest.version = semver::Version::new(9, 0, 0);
    strict.swap_verified(no_f).unwrap();
    assert_eq!(model.cost(0.1, 0.1), Ok(f64::INFINITY));
}

// ---- installs of really signed files ----

fn ca(name: &str) -> CertificateAuthority {
    CertificateAuthority::generate(
        name,
        Validity::days_from(SystemTime::now(), 30).unwrap(),
        KeyAlgorithm::EcdsaP256,
    )
    .unwrap()
}

fn signed(
    ca: &CertificateAuthority,
    manifest: &Manifest,
    wasm: &[u8],
    tenant_subnets: &[&str],
) -> Vec<u8> {
    let mut request = SignerRequest::new(
        "signer",
        Validity::days_from(SystemTime::now(), 30).unwrap(),
    );
    request.tenant_subnets = tenant_subnets.iter().map(|s| (*s).to_owned()).collect();
    let signer = ca.issue_signer(&request).unwrap();
    let unsigned = format::embed_manifest(wasm, manifest).unwrap();
    sign::sign_module(
        &unsigned,
        &signer.signing_key().unwrap(),
        vec![signer.cert_der.clone()],
    )
    .unwrap()
}

#[test]
fn signed_modules_install_and_untrusted_ones_are_refused() {
    let operator_ca = ca("operator CA");
    let stranger_ca = ca("stranger CA");
    let env = Environment::new(
        EnvironmentConfig::operator("operator"),
        TrustAnchors::from_pem(operator_ca.cert_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    let module = shipped(least_load::NAME);
    let bytes = signed(&operator_ca, &module.manifest, &module.wasm, &[]);
    let report = env.install(&bytes).unwrap();
    assert_eq!(report.name, least_load::NAME);
    let policy = env.policy(least_load::NAME, any_subnet()).unwrap();
    assert_eq!(
        policy.select(&request(1), &candidates(3)),
        Ok(Decision::Select(2))
    );
    let info = env.module(least_load::NAME).unwrap();
    assert!(
        info.active.signer.contains("signer"),
        "{}",
        info.active.signer
    );

    // Signed by a CA this environment does not trust: refused, old one serves.
    let mut newer = module.manifest.clone();
    newer.version = semver::Version::new(0, 2, 0);
    let foreign = signed(&stranger_ca, &newer, &module.wasm, &[]);
    assert!(matches!(
        env.install(&foreign),
        Err(ManagerError::Verify(_))
    ));
    // A flipped byte in a trusted file is refused too.
    let mut tampered = signed(&operator_ca, &newer, &module.wasm, &[]);
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x40;
    assert!(matches!(
        env.install(&tampered),
        Err(ManagerError::Verify(_))
    ));
    assert_eq!(policy.active_version().unwrap(), module.manifest.version);
    assert_eq!(env.counters().refused, 2);

    // No anchors at all: everything is refused.
    let closed =
        Environment::new(EnvironmentConfig::operator("closed"), TrustAnchors::empty()).unwrap();
    assert!(matches!(
        closed.install(&bytes),
        Err(ManagerError::Verify(VerifyError::NoTrustAnchors))
    ));
}

#[test]
fn a_tenant_certificate_confines_its_modules() {
    let tenant_ca = ca("tenant CA");
    let env = Environment::new(
        EnvironmentConfig::tenant(
            "tenants",
            vec![subnet("192.200.0.0/16"), subnet("192.201.0.0/16")],
        ),
        TrustAnchors::from_pem(tenant_ca.cert_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    let module = shipped(least_load::NAME);
    let mut manifest = module.manifest.clone();
    manifest.subnets = vec!["192.200.5.0/24".to_owned()];
    // Tenant A's certificate, tenant A's subnet.
    let own = signed(&tenant_ca, &manifest, &module.wasm, &["192.200.0.0/16"]);
    env.install(&own).unwrap();
    // Tenant B's certificate claiming tenant A's subnet.
    manifest.version = semver::Version::new(0, 3, 0);
    let claim = signed(&tenant_ca, &manifest, &module.wasm, &["192.201.0.0/16"]);
    let err = env.install(&claim).unwrap_err();
    assert!(
        matches!(
            err,
            ManagerError::Scope(ScopeError::NotInCertificate { .. })
        ),
        "{err}"
    );
    let policy = env
        .policy(least_load::NAME, subnet("192.200.5.0/24"))
        .unwrap();
    assert_eq!(
        policy.select(&request(1), &candidates(2)),
        Ok(Decision::Select(1))
    );
}
