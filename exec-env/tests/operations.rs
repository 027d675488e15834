//! The environment's operations and their typed answers: load, swap, rollback,
//! remove and bind each report what they did, and each refusal is its own
//! error with a hint, leaving what was installed serving.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failure is a test failure"
)]

mod common;

use common::{from_wat, shipped, signer, wat_policy};
use exec_env::manager::{
    BoundHandle, Environment, EnvironmentConfig, ManagerError, Role, ScopeError,
};
use exec_env::trust::TrustAnchors;
use exec_env::verified::VerifiedModule;
use router_core::classify::VirtualSubnet;
use router_core::policy::{CostModel, Policy};

fn subnet(text: &str) -> VirtualSubnet {
    text.parse().unwrap()
}

fn operator() -> Environment {
    Environment::new(
        EnvironmentConfig::operator("operator"),
        TrustAnchors::empty(),
    )
    .unwrap()
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

fn active(env: &Environment, name: &str) -> Option<String> {
    env.module(name).map(|m| m.active.version.to_string())
}

#[test]
fn load_installs_a_new_name_and_refuses_one_already_installed() {
    let env = operator();
    let module = constant("edge", "1.0.0", 0);
    let digest = module.digest;
    let report = env.load_verified(module).unwrap();
    assert_eq!(report.environment, "operator");
    assert_eq!(report.name, "edge");
    assert_eq!(report.loaded.version.to_string(), "1.0.0");
    assert_eq!(report.loaded.digest, digest);
    assert_eq!(report.loaded.signer, "CN=test signer");

    // Even a newer version is not a load: the name is taken.
    let err = env.load_verified(constant("edge", "2.0.0", 1)).unwrap_err();
    assert!(
        matches!(&err, ManagerError::AlreadyLoaded { name, version }
            if name == "edge" && version.to_string() == "1.0.0"),
        "{err}"
    );
    assert!(err.to_string().contains("already installed"), "{err}");
    assert!(err.hint().contains("pronto module swap"), "{}", err.hint());
    assert_eq!(active(&env, "edge").as_deref(), Some("1.0.0"));
    let c = env.counters();
    assert_eq!((c.installs, c.refused), (1, 1));
}

#[test]
fn swap_replaces_an_installed_name_and_refuses_a_missing_one() {
    let env = operator();
    let err = env.swap_verified(constant("edge", "1.0.0", 0)).unwrap_err();
    assert!(
        matches!(&err, ManagerError::NotLoaded { name } if name == "edge"),
        "{err}"
    );
    assert!(err.hint().contains("pronto module load"), "{}", err.hint());
    assert!(
        env.module("edge").is_none(),
        "a refused swap installs nothing"
    );

    env.load_verified(constant("edge", "1.0.0", 0)).unwrap();
    let report = env.swap_verified(constant("edge", "1.1.0", 1)).unwrap();
    assert_eq!(report.name, "edge");
    assert_eq!(report.active.version.to_string(), "1.1.0");
    assert_eq!(report.replaced.version.to_string(), "1.0.0");
    let info = env.module("edge").unwrap();
    assert_eq!(info.previous.unwrap().version.to_string(), "1.0.0");
    assert_eq!(info.counters.swaps, 1);

    // The active version again is refused too.
    let err = env.swap_verified(constant("edge", "1.1.0", 2)).unwrap_err();
    assert!(
        matches!(err, ManagerError::DuplicateVersion { .. }),
        "{err}"
    );
    assert!(err.hint().contains("bump the version"));
}

#[test]
fn a_file_that_does_not_verify_is_refused_before_the_name_is_looked_at() {
    let env = operator();
    env.load_verified(constant("edge", "1.0.0", 0)).unwrap();
    // Not a module file at all: nothing is parsed for a name to decide on.
    let err = env.swap(b"\0asm\x01\0\0\0").unwrap_err();
    assert!(matches!(err, ManagerError::Verify(_)), "{err}");
    let err = env.load(b"not wasm").unwrap_err();
    assert!(matches!(err, ManagerError::Verify(_)), "{err}");
    let err = env.load(&[]).unwrap_err();
    assert!(matches!(err, ManagerError::Verify(_)), "{err}");
    assert_eq!(env.counters().refused, 3);
    assert_eq!(active(&env, "edge").as_deref(), Some("1.0.0"));
}

#[test]
fn rollback_reports_both_versions_and_refuses_without_a_previous_one() {
    let env = operator();
    let err = env.rollback("edge").unwrap_err();
    assert!(
        matches!(&err, ManagerError::UnknownModule { name } if name == "edge"),
        "{err}"
    );
    assert!(err.hint().contains("pronto query modules"));

    env.load_verified(constant("edge", "1.0.0", 0)).unwrap();
    let err = env.rollback("edge").unwrap_err();
    assert!(
        matches!(err, ManagerError::NoPreviousVersion { .. }),
        "{err}"
    );
    env.swap_verified(constant("edge", "2.0.0", 1)).unwrap();
    let report = env.rollback("edge").unwrap();
    assert_eq!(report.active.version.to_string(), "1.0.0");
    assert_eq!(report.replaced.version.to_string(), "2.0.0");
    assert_eq!(active(&env, "edge").as_deref(), Some("1.0.0"));
}

#[test]
fn remove_reports_the_versions_and_bindings_it_left_to_the_builtin() {
    let env = operator();
    let err = env.remove("edge").unwrap_err();
    assert!(matches!(err, ManagerError::UnknownModule { .. }), "{err}");

    env.load_verified(constant("edge", "1.0.0", 0)).unwrap();
    env.swap_verified(constant("edge", "1.1.0", 1)).unwrap();
    let vip = subnet("192.200.0.0/16");
    let bound = env.bind("edge", vip, Role::Policy).unwrap();
    let report = env.remove("edge").unwrap();
    assert_eq!(report.removed.version.to_string(), "1.1.0");
    assert_eq!(
        report.previous.map(|p| p.version.to_string()).as_deref(),
        Some("1.0.0")
    );
    assert_eq!(report.bindings.len(), 1);
    assert_eq!(report.bindings[0].subnet, vip);
    assert_eq!(report.bindings[0].role, Role::Policy);
    assert!(env.module("edge").is_none());
    // Removed twice: nothing left to remove.
    assert!(matches!(
        env.remove("edge"),
        Err(ManagerError::UnknownModule { .. })
    ));
    // The binding stays: a load of the name serves its handle again.
    env.load_verified(constant("edge", "3.0.0", 0)).unwrap();
    let BoundHandle::Policy(policy) = bound.handle else {
        panic!("a policy binding gives a policy handle");
    };
    assert_eq!(policy.active_version().unwrap().to_string(), "3.0.0");
    assert_eq!(env.bindings().len(), 1);
}

#[test]
fn bind_gives_the_handle_for_the_role_and_replaces_the_subnets_previous_module() {
    let env = operator();
    env.load_verified(constant("first", "1.0.0", 0)).unwrap();
    env.load_verified(constant("second", "1.0.0", 1)).unwrap();
    env.load_verified(shipped("weighted_cost")).unwrap();
    let vip = subnet("192.200.0.0/16");

    let report = env.bind("first", vip, Role::Policy).unwrap();
    assert_eq!(report.binding.module, "first");
    assert_eq!(report.version.version.to_string(), "1.0.0");
    assert_eq!(report.replaced, None);
    let BoundHandle::Policy(p) = &report.handle else {
        panic!("policy role, policy handle");
    };
    assert_eq!((p.name(), p.subnet()), ("first", vip));

    let report = env.bind("second", vip, Role::Policy).unwrap();
    assert_eq!(report.replaced.as_deref(), Some("first"));
    let report = env.bind("weighted_cost", vip, Role::Cost).unwrap();
    let BoundHandle::Cost(c) = &report.handle else {
        panic!("cost role, cost handle");
    };
    assert_eq!(c.name(), "weighted_cost");
    let bindings = env.bindings();
    assert_eq!(bindings.len(), 2, "{bindings:?}");
    assert_eq!(
        bindings
            .iter()
            .map(|b| (b.role, b.module.as_str()))
            .collect::<Vec<_>>(),
        [(Role::Policy, "second"), (Role::Cost, "weighted_cost")]
    );
    assert_eq!("cost".parse::<Role>().unwrap(), Role::Cost);
    assert_eq!("scheduler".parse::<Role>().unwrap(), Role::Scheduler);
    assert!("shaper".parse::<Role>().is_err());

    // Unbind ends one subnet and role; the other role stays.
    let gone = env.unbind(vip, Role::Policy).unwrap();
    assert_eq!((gone.module.as_str(), gone.role), ("second", Role::Policy));
    assert_eq!(env.bindings().len(), 1);
    let err = env.unbind(vip, Role::Policy).unwrap_err();
    assert!(
        matches!(
            err,
            ManagerError::NotBound {
                role: Role::Policy,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.hint().contains("pronto query modules"),
        "{}",
        err.hint()
    );
}

#[test]
fn bind_refuses_unknown_modules_wrong_roles_and_foreign_subnets() {
    let env = operator();
    let vip = subnet("192.200.0.0/16");
    let err = env.bind("ghost", vip, Role::Policy).unwrap_err();
    assert!(matches!(err, ManagerError::UnknownModule { .. }), "{err}");

    // A select-only policy has no F and G.
    env.load_verified(constant("picker", "1.0.0", 0)).unwrap();
    let err = env.bind("picker", vip, Role::Cost).unwrap_err();
    assert!(
        matches!(&err, ManagerError::WrongRole { name, role: Role::Cost } if name == "picker"),
        "{err}"
    );
    assert!(err.hint().contains("pronto_cost"), "{}", err.hint());
    assert!(env.bindings().is_empty(), "refusals bind nothing");

    // A tenant's module governs only what its manifest names.
    let tenant = Environment::new(
        EnvironmentConfig::tenant("tenant", vec![subnet("192.200.0.0/16")]),
        TrustAnchors::empty(),
    )
    .unwrap();
    let mut module = constant("mine", "1.0.0", 0);
    module.manifest.subnets = vec!["192.200.1.0/24".to_owned()];
    module.signer = signer(&["192.200.0.0/16"]);
    tenant.load_verified(module).unwrap();
    let err = tenant
        .bind("mine", subnet("192.200.2.0/24"), Role::Policy)
        .unwrap_err();
    assert!(
        matches!(err, ManagerError::Scope(ScopeError::NotGoverned { .. })),
        "{err}"
    );
    let err = tenant
        .bind("mine", subnet("10.0.0.0/8"), Role::Policy)
        .unwrap_err();
    assert!(
        matches!(
            err,
            ManagerError::Scope(ScopeError::OutsideEnvironment { .. })
        ),
        "{err}"
    );
    tenant
        .bind("mine", subnet("192.200.1.0/24"), Role::Policy)
        .unwrap();
    assert_eq!(tenant.counters().bind_refused, 2, "each refusal counted");
    assert_eq!(env.counters().bind_refused, 2);
}

#[test]
fn in_a_tenant_environment_a_name_belongs_to_its_signer() {
    let tenant = Environment::new(
        EnvironmentConfig::tenant("tenant", vec![subnet("192.200.0.0/16")]),
        TrustAnchors::empty(),
    )
    .unwrap();
    let signed_by = |version: &str, subject: &str| {
        let mut m = constant("shared", version, 0);
        m.manifest.subnets = vec!["192.200.1.0/24".to_owned()];
        m.signer = signer(&["192.200.0.0/16"]);
        m.signer.subject = subject.to_owned();
        m
    };
    tenant
        .load_verified(signed_by("1.0.0", "CN=team a"))
        .unwrap();
    let err = tenant
        .swap_verified(signed_by("2.0.0", "CN=team b"))
        .unwrap_err();
    assert!(
        matches!(&err, ManagerError::OtherSigner { owner, signer, .. }
            if owner == "CN=team a" && signer == "CN=team b"),
        "{err}"
    );
    assert!(err.hint().contains("name of its own"), "{}", err.hint());
    assert_eq!(active(&tenant, "shared").as_deref(), Some("1.0.0"));
    assert_eq!(tenant.counters().refused, 1);
    tenant
        .swap_verified(signed_by("2.0.0", "CN=team a"))
        .unwrap();
    // The operator's signers are one authority: no such rule there.
    let env = operator();
    env.load_verified(signed_by("1.0.0", "CN=team a")).unwrap();
    env.swap_verified(signed_by("2.0.0", "CN=team b")).unwrap();
}
