//! The adversarial suite of issue 3: real module files, signed with exec-env's CA
//! and signing API, installed through an environment and bound to a subnet of a
//! real engine.
//!
//! Each malicious module is either refused at load, with its typed error and
//! the environment's (and, for signature checks, the trust anchors') refusal
//! counter, or contained at run time: the failed call is counted by the engine
//! (`policy_faults`) and by the module's fault counters, the engine places the
//! flow with its built-in policy, and the third fault quarantines the module so
//! its calls are refused without running. Throughout, established connections
//! keep their next hop and new connections to a neighbouring subnet, served by
//! a well-behaved module of the same environment, keep being placed by it.

#![expect(clippy::unwrap_used, reason = "tests: a failure is a test failure")]

mod lab;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use exec_env::ca::{CertificateAuthority, KeyAlgorithm, SignerRequest, Validity};
use exec_env::manager::{
    Environment, EnvironmentConfig, InstallReport, ManagerError, ModuleCounters, ModuleInfo,
    ModulePolicy, ScopeError, VersionState,
};
use exec_env::trust::{VerifyError, VerifyFailure};
use exec_env::vm::{VmConfig, VmError};
use lab::{
    BUILTIN_CHOICE, Ca, Router, always, candidates, client, configured, manifest, next_hop,
    sign_as, tenant_manifest, wat_policy,
};
use router_core::{
    Candidate, FlowKey, FlowRequest, Level, Policy, PolicyError, RouterApi, SubnetId, VirtualSubnet,
};

/// The subnet under attack.
const SUBNET_A: &str = "192.200.0.0/16";
/// The neighbouring subnet, served by a well-behaved module.
const SUBNET_B: &str = "192.201.0.0/16";
const VIP_A: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 200, 0, 10)), 443);
const VIP_B: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 201, 0, 10)), 443);
/// What the neighbour's module ("steady") chooses.
const STEADY_CHOICE: usize = 3;
/// What the well-behaved module on subnet A ("victim" 1.0.0) chooses.
const VICTIM_CHOICE: usize = 0;
const DAY: Duration = Duration::from_secs(86_400);

fn subnet(text: &str) -> VirtualSubnet {
    text.parse().unwrap()
}

fn validity() -> Validity {
    Validity::days_from(SystemTime::now(), 30).unwrap()
}

/// An operator environment trusting one CA, and an engine serving subnet A
/// (built-in policy until a test binds a module) and subnet B (module
/// "steady" of the same environment).
struct Lab {
    ca: Ca,
    env: Environment,
    router: Router,
    a: SubnetId,
    cands_a: Vec<Candidate>,
    cands_b: Vec<Candidate>,
    /// Open connections: client, VIP, the next hop they were pinned to.
    established: Vec<(SocketAddr, SocketAddr, IpAddr)>,
    clients: u32,
}

impl Lab {
    fn new() -> Self {
        Self::with(|_| {})
    }

    fn with(tweak: impl FnOnce(&mut EnvironmentConfig)) -> Self {
        let ca = Ca::init("adversarial", &[]);
        let mut config = configured(EnvironmentConfig::operator("operator"));
        tweak(&mut config);
        let env = Environment::new(config, ca.anchors()).unwrap();
        let mut router = Router::new(1 << 12);
        let (cands_a, cands_b) = (candidates(100), candidates(101));
        let a = router.serve(SUBNET_A, cands_a.clone());
        let b = router.serve(SUBNET_B, cands_b.clone());
        let mut lab = Self {
            ca,
            env,
            router,
            a,
            cands_a,
            cands_b,
            established: Vec::new(),
            clients: 0,
        };
        lab.install(&manifest("steady", "1.0.0"), &always(STEADY_CHOICE as u32))
            .unwrap();
        let steady = lab.env.policy("steady", subnet(SUBNET_B)).unwrap();
        lab.router.engine.set_policy(b, Some(steady)).unwrap();
        for _ in 0..4 {
            lab.connect(VIP_A, BUILTIN_CHOICE);
            lab.connect(VIP_B, STEADY_CHOICE);
        }
        lab
    }

    /// Signs `wasm` with `manifest` by the trusted signer and installs it.
    fn install(&self, manifest: &str, wasm: &[u8]) -> Result<InstallReport, ManagerError> {
        self.env.install(&self.ca.sign(manifest, wasm))
    }

    /// Binds module `name` to subnet A in the engine.
    fn bind(&mut self, name: &str) -> Arc<ModulePolicy> {
        let policy = self.env.policy(name, subnet(SUBNET_A)).unwrap();
        self.router
            .engine
            .set_policy(self.a, Some(policy.clone()))
            .unwrap();
        policy
    }

    fn candidates_of(&self, vip: SocketAddr) -> &[Candidate] {
        if vip == VIP_A {
            &self.cands_a
        } else {
            &self.cands_b
        }
    }

    /// Opens a connection to `vip` (SYN, then a data segment); asserts it was
    /// placed on candidate `expected` of the VIP's subnet.
    fn connect(&mut self, vip: SocketAddr, expected: usize) {
        self.clients += 1;
        let client = client(self.clients);
        let hop = next_hop(self.router.syn(client, vip));
        let want = self.candidates_of(vip)[expected].addr;
        assert_eq!(hop, Some(want), "new flow to {vip} misplaced");
        assert_eq!(next_hop(self.router.ack(client, vip)), Some(want));
        self.established.push((client, vip, want));
    }

    /// Every open connection keeps its next hop, a new connection to subnet B
    /// is placed by its module, and the engine has dropped nothing.
    fn assert_forwarding(&mut self) {
        for i in 0..self.established.len() {
            let (client, vip, hop) = self.established[i];
            assert_eq!(
                next_hop(self.router.ack(client, vip)),
                Some(hop),
                "established {client} -> {vip} moved or was dropped"
            );
        }
        self.connect(VIP_B, STEADY_CHOICE);
        let c = self.router.engine.counters();
        assert_eq!(c.dropped_total(), 0, "{c:?}");
        assert_eq!(c.recover, 0, "{c:?}");
        assert_eq!(c.packets, c.forwarded_new + c.forwarded_pinned, "{c:?}");
    }

    fn policy_faults(&self) -> u64 {
        self.router.engine.counters().policy_faults
    }

    fn module(&self, name: &str) -> ModuleInfo {
        self.env.module(name).unwrap()
    }

    /// A new-flow request for subnet A, as the engine makes it.
    fn request(&self) -> FlowRequest {
        FlowRequest {
            key: FlowKey {
                proto: 6,
                src: IpAddr::V4(Ipv4Addr::new(10, 99, 0, 1)),
                src_port: 40_000,
                dst: VIP_A.ip(),
                dst_port: VIP_A.port(),
            },
            subnet: self.a,
            level: Level::Site,
        }
    }
}

// ---- contained at run time ----

/// Installs `wasm` (which passes every load check) as module `name`, binds it to
/// subnet A and opens connections to A. Every call fails and is counted as
/// `kind`: the engine places the flow with its built-in policy and counts a
/// policy fault. One direct call through the same handle shows the typed error
/// (`typed`). The third fault quarantines the module; later calls are refused
/// without running. Returns the module's listing at the end.
fn contained(
    lab: &mut Lab,
    name: &str,
    wasm: &[u8],
    kind: fn(&ModuleCounters) -> u64,
    typed: impl Fn(&PolicyError) -> bool,
) -> ModuleInfo {
    lab.install(&manifest(name, "1.0.0"), wasm).unwrap();
    let policy = lab.bind(name);

    lab.connect(VIP_A, BUILTIN_CHOICE);
    assert_eq!(lab.policy_faults(), 1);
    assert_eq!(kind(&lab.module(name).counters), 1);

    let err = policy.select(&lab.request(), &lab.cands_a).unwrap_err();
    assert!(typed(&err), "{name}: unexpected error {err:?}");
    assert_eq!(kind(&lab.module(name).counters), 2);
    lab.assert_forwarding();

    lab.connect(VIP_A, BUILTIN_CHOICE);
    let info = lab.module(name);
    assert_eq!(kind(&info.counters), 3);
    assert_eq!(info.counters.faults(), 3);
    assert_eq!(info.counters.quarantines, 1);
    assert!(
        matches!(info.active.state, VersionState::Quarantined { .. }),
        "{:?}",
        info.active.state
    );

    for _ in 0..2 {
        lab.connect(VIP_A, BUILTIN_CHOICE);
    }
    let err = policy.select(&lab.request(), &lab.cands_a).unwrap_err();
    assert!(
        matches!(&err, PolicyError::Unavailable(m) if m.contains("quarantined")),
        "{err:?}"
    );
    let info = lab.module(name);
    assert_eq!(kind(&info.counters), 3, "a quarantined module ran");
    assert_eq!(info.counters.faults(), 3);
    assert_eq!(info.counters.quarantined_refusals, 3);
    assert_eq!((info.counters.calls, info.counters.ok), (6, 0));
    // Rebuilt from its pre-instantiation after each fault.
    assert_eq!(info.active.instance.restarts, 3);
    assert_eq!(lab.policy_faults(), 4);
    assert_eq!(lab.env.counters().refused, 0);
    lab.assert_forwarding();
    // The neighbour never faulted.
    let steady = lab.module("steady").counters;
    assert_eq!((steady.faults(), steady.ok), (0, steady.calls));
    info
}

#[test]
fn infinite_loop_is_stopped_by_fuel_and_quarantined() {
    // A distant epoch deadline, so fuel stops the loop even on a loaded machine.
    let mut lab = Lab::with(|c| {
        c.vm = VmConfig::default().with_epoch(Duration::from_millis(1), 10_000);
    });
    let per_call = lab.env.config().vm.fuel_per_call.unwrap();
    let info = contained(
        &mut lab,
        "spin",
        &wat_policy("", "(loop $forever (br $forever)) (i32.const 0)"),
        |c| c.timeouts,
        |e| *e == PolicyError::Timeout,
    );
    // Each of the three calls that ran burnt exactly its per-call fuel.
    assert_eq!(info.counters.cpu_used, 3 * per_call);
}

#[test]
fn infinite_loop_is_preempted_by_the_epoch_deadline_when_fuel_is_off() {
    let mut lab = Lab::with(|c| {
        c.vm = VmConfig::default()
            .with_fuel_per_call(None)
            .with_epoch(Duration::from_millis(1), 20);
    });
    contained(
        &mut lab,
        "spin",
        &wat_policy("", "(loop $forever (br $forever)) (i32.const 0)"),
        |c| c.timeouts,
        |e| *e == PolicyError::Timeout,
    );
}

#[test]
fn unbounded_memory_growth_stops_at_the_cap() {
    let mut lab = Lab::new();
    let cap_pages = lab.env.config().vm.memory_limit / 65_536;
    // Grows one page at a time until refused, then answers its memory size in
    // pages: the answer is out of range, and names the cap exactly.
    let hog = wat_policy(
        "",
        "(block $full (loop $grow
            (br_if $full (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
            (br $grow)))
         (memory.size)",
    );
    contained(
        &mut lab,
        "hog",
        &hog,
        |c| c.bad_results,
        |e| {
            *e == PolicyError::OutOfRange {
                index: cap_pages,
                len: 4,
            }
        },
    );
}

#[test]
fn deep_recursion_traps_on_stack_overflow() {
    let mut lab = Lab::new();
    let deep = wat_policy(
        "(func $down (param i32) (result i32) (call $down (i32.add (local.get 0) (i32.const 1))))",
        "(call $down (i32.const 0))",
    );
    contained(
        &mut lab,
        "deep",
        &deep,
        |c| c.traps,
        |e| matches!(e, PolicyError::Trap(m) if m.contains("stack")),
    );
}

#[test]
fn trap_in_select_is_contained() {
    let mut lab = Lab::new();
    contained(
        &mut lab,
        "trap",
        &wat_policy("", "unreachable"),
        |c| c.traps,
        |e| matches!(e, PolicyError::Trap(m) if m.contains("unreachable")),
    );
}

#[test]
fn out_of_range_decision_is_contained() {
    let mut lab = Lab::new();
    // Answers the candidate count: one past the last candidate.
    contained(
        &mut lab,
        "past-end",
        &wat_policy("", "(local.get $n)"),
        |c| c.bad_results,
        |e| *e == PolicyError::OutOfRange { index: 4, len: 4 },
    );
}

#[test]
fn a_faulty_upgrade_is_answered_by_the_previous_version_until_rolled_back() {
    let (mut lab, policy) = lab_with_victim();
    lab.install(&manifest("victim", "2.0.0"), &wat_policy("", "unreachable"))
        .unwrap();
    assert_eq!(policy.active_version().unwrap().major, 2);
    for _ in 0..5 {
        lab.connect(VIP_A, VICTIM_CHOICE);
    }
    let c = lab.module("victim").counters;
    assert_eq!((c.traps, c.quarantines, c.quarantined_refusals), (3, 1, 2));
    assert_eq!(c.fallbacks, 5);
    // The previous version answered every time: the engine saw no fault.
    assert_eq!(lab.policy_faults(), 0);
    lab.assert_forwarding();

    lab.env.rollback("victim").unwrap();
    assert_eq!(policy.active_version().unwrap().major, 1);
    lab.connect(VIP_A, VICTIM_CHOICE);
    let c = lab.module("victim").counters;
    assert_eq!((c.traps, c.fallbacks, c.rollbacks), (3, 5, 1));
    lab.assert_forwarding();
}

// ---- refused at load ----

/// A lab whose subnet A is served by "victim" 1.0.0 (always candidate 0).
fn lab_with_victim() -> (Lab, Arc<ModulePolicy>) {
    let mut lab = Lab::new();
    lab.install(&manifest("victim", "1.0.0"), &always(VICTIM_CHOICE as u32))
        .unwrap();
    let policy = lab.bind("victim");
    lab.connect(VIP_A, VICTIM_CHOICE);
    (lab, policy)
}

/// After `refused` refused installs: the environment counted them, "victim"
/// 1.0.0 still serves subnet A, no policy call faulted and the engine forwards.
fn assert_old_version_serves(lab: &mut Lab, policy: &ModulePolicy, refused: u64) {
    assert_eq!(lab.env.counters().refused, refused);
    assert_eq!(lab.env.counters().installs, 2, "steady and victim only");
    assert_eq!(policy.active_version().unwrap().to_string(), "1.0.0");
    assert!(lab.module("victim").previous.is_none());
    lab.connect(VIP_A, VICTIM_CHOICE);
    assert_eq!(lab.policy_faults(), 0);
    lab.assert_forwarding();
}

#[test]
fn wrong_abi_version_is_refused_at_load() {
    let (mut lab, policy) = lab_with_victim();
    let future = wat::parse_str(
        r#"(module
          (memory (export "memory") 1)
          (func (export "pronto_abi_version") (result i32) i32.const 2)
          (func (export "pronto_io_buffer") (result i32) i32.const 1024)
          (func (export "pronto_select") (param i32) (result i32) i32.const 2))"#,
    )
    .unwrap();
    let err = lab
        .install(&manifest("victim", "2.0.0"), &future)
        .unwrap_err();
    assert!(
        matches!(
            err,
            ManagerError::Vm(VmError::AbiVersion {
                found: 2,
                expected: 1
            })
        ),
        "{err}"
    );
    // The signature was good: only the VM refused it.
    let anchors = lab.env.anchors().counters();
    assert_eq!((anchors.verified(), anchors.refused_total()), (3, 0));
    assert_old_version_serves(&mut lab, &policy, 1);
}

#[test]
fn unknown_imports_are_refused_before_compiling() {
    let (mut lab, policy) = lab_with_victim();
    let imports = [
        (
            r#"(import "env" "system" (func $f (param i32) (result i32)))"#,
            "env",
            "system",
        ),
        (
            r#"(import "wasi_snapshot_preview1" "fd_write" (func $f (param i32 i32 i32 i32) (result i32)))"#,
            "wasi_snapshot_preview1",
            "fd_write",
        ),
        (
            r#"(import "pronto" "exec" (func $f (param i32) (result i32)))"#,
            "pronto",
            "exec",
        ),
    ];
    for (patch, (import, module, name)) in imports.into_iter().enumerate() {
        let wasm = wat_policy(import, "(drop (call $f (i32.const 0))) (i32.const 2)");
        let version = format!("2.0.{patch}");
        let err = lab
            .install(&manifest("victim", &version), &wasm)
            .unwrap_err();
        assert!(
            matches!(&err, ManagerError::Vm(VmError::ForbiddenImport { module: m, name: n })
                if m == module && n == name),
            "{err}"
        );
    }
    assert_old_version_serves(&mut lab, &policy, 3);
}

#[test]
fn a_tampered_byte_is_a_bad_signature() {
    let (mut lab, policy) = lab_with_victim();
    let wasm = always(2);
    let mut bytes = lab.ca.sign(&manifest("victim", "2.0.0"), &wasm);
    assert!(bytes.starts_with(&wasm), "signing only appends");
    // Redirect traffic: `i32.const 2; end` in pronto_select becomes
    // `i32.const 3; end`, still a valid module.
    let at = wasm
        .windows(3)
        .position(|w| w == [0x41, 0x02, 0x0b])
        .unwrap();
    assert_eq!(
        wasm.windows(3).filter(|w| *w == [0x41, 0x02, 0x0b]).count(),
        1
    );
    bytes[at + 1] = 0x03;
    let err = lab.env.install(&bytes).unwrap_err();
    assert!(
        matches!(err, ManagerError::Verify(VerifyError::BadSignature { .. })),
        "{err}"
    );
    let anchors = lab.env.anchors().counters();
    assert_eq!(anchors.refused(VerifyFailure::BadSignature), 1);
    assert_eq!(anchors.refused_total(), 1);
    assert_old_version_serves(&mut lab, &policy, 1);
}

#[test]
fn a_signature_by_an_unknown_ca_is_refused() {
    let (mut lab, policy) = lab_with_victim();
    let signer = |ca_name: &str| {
        let ca =
            CertificateAuthority::generate(ca_name, validity(), KeyAlgorithm::EcdsaP256).unwrap();
        ca.issue_signer(&SignerRequest::new("module signer", validity()))
            .unwrap()
    };
    // A stranger's CA, and an impostor CA with the very name of the trusted one
    // (the issuer name matches; the CA's signature on the certificate does not).
    for (ca_name, reason, version) in [
        ("stranger CA", "UnknownIssuer", "2.0.0"),
        ("adversarial CA", "InvalidSignatureForPublicKey", "2.0.1"),
    ] {
        let bytes = sign_as(&signer(ca_name), &manifest("victim", version), &always(2));
        let err = lab.env.install(&bytes).unwrap_err();
        assert!(
            matches!(&err, ManagerError::Verify(VerifyError::UntrustedChain { reason: r })
                if format!("{r:?}") == reason),
            "{ca_name}: {err}"
        );
    }
    let anchors = lab.env.anchors().counters();
    assert_eq!(anchors.refused(VerifyFailure::UntrustedChain), 2);
    assert_eq!(anchors.refused_total(), 2);
    assert_old_version_serves(&mut lab, &policy, 2);
}

#[test]
fn an_expired_certificate_is_refused() {
    let (mut lab, policy) = lab_with_victim();
    let now = SystemTime::now();
    let old = lab
        .ca
        .authority()
        .issue_signer(&SignerRequest::new(
            "old signer",
            Validity {
                not_before: now - 10 * DAY,
                not_after: now - DAY,
            },
        ))
        .unwrap();
    let bytes = sign_as(&old, &manifest("victim", "2.0.0"), &always(2));
    let err = lab.env.install(&bytes).unwrap_err();
    match &err {
        ManagerError::Verify(VerifyError::Expired { not_after, now: at }) => {
            assert!(not_after < at, "{err}");
        }
        _ => panic!("expected an expired chain, got {err}"),
    }
    let anchors = lab.env.anchors().counters();
    assert_eq!(anchors.refused(VerifyFailure::Expired), 1);
    assert_eq!(anchors.refused_total(), 1);
    assert_old_version_serves(&mut lab, &policy, 1);
}

// ---- tenants ----

#[test]
fn a_tenant_module_cannot_govern_another_tenants_subnet() {
    const SUBNET_C: &str = "192.202.0.0/16";
    const VIP_C: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 202, 0, 10)), 443);
    let mut lab = Lab::new();
    let cands_c = candidates(102);
    let c = lab.router.serve(SUBNET_C, cands_c.clone());

    // The operator's tenant CA gives each tenant a signer for its own subnets:
    // tenant A owns subnet A, tenant B owns subnet C.
    let tenants_ca = Ca::init("tenants", &[SUBNET_A]);
    let b_signer = {
        let mut req = SignerRequest::new("tenant B signer", validity());
        req.tenant_subnets = vec![SUBNET_C.to_owned()];
        tenants_ca.authority().issue_signer(&req).unwrap()
    };
    let tenants = Environment::new(
        configured(EnvironmentConfig::tenant(
            "tenants",
            vec![subnet(SUBNET_A), subnet(SUBNET_C)],
        )),
        tenants_ca.anchors(),
    )
    .unwrap();

    // Each tenant's own module governs its own subnet.
    tenants
        .install(&tenants_ca.sign(
            &tenant_manifest("tenant-a", "1.0.0", &[SUBNET_A]),
            &always(VICTIM_CHOICE as u32),
        ))
        .unwrap();
    let a_policy = tenants.policy("tenant-a", subnet(SUBNET_A)).unwrap();
    lab.router
        .engine
        .set_policy(lab.a, Some(a_policy.clone()))
        .unwrap();
    lab.connect(VIP_A, VICTIM_CHOICE);
    tenants
        .install(&sign_as(
            &b_signer,
            &tenant_manifest("tenant-b", "1.0.0", &[SUBNET_C]),
            &always(3),
        ))
        .unwrap();
    let b_policy = tenants.policy("tenant-b", subnet(SUBNET_C)).unwrap();
    lab.router.engine.set_policy(c, Some(b_policy)).unwrap();
    let hop = next_hop(lab.router.syn(client(9_999), VIP_C));
    assert_eq!(hop, Some(cands_c[3].addr));

    // Tenant B's signer claiming tenant A's subnet.
    let err = tenants
        .install(&sign_as(
            &b_signer,
            &tenant_manifest("tenant-b", "2.0.0", &[SUBNET_A]),
            &always(3),
        ))
        .unwrap_err();
    assert!(
        matches!(&err, ManagerError::Scope(ScopeError::NotInCertificate { subnet: s })
            if *s == subnet(SUBNET_A)),
        "{err}"
    );
    // Tenant B binding its installed module to tenant A's subnet.
    let err = tenants.policy("tenant-b", subnet(SUBNET_A)).unwrap_err();
    assert!(
        matches!(err, ManagerError::Scope(ScopeError::NotGoverned { .. })),
        "{err}"
    );

    // Tenant B running its own CA, which grants it anything it likes: not a
    // trust anchor of the shared environment, and in B's own environment,
    // confined to subnet C, tenant A's subnet is outside.
    let b_own_ca = Ca::init("tenant-b-own", &[SUBNET_A]);
    let forged = b_own_ca.sign(
        &tenant_manifest("tenant-b", "2.0.1", &[SUBNET_A]),
        &always(3),
    );
    let err = tenants.install(&forged).unwrap_err();
    assert!(
        matches!(
            err,
            ManagerError::Verify(VerifyError::UntrustedChain { .. })
        ),
        "{err}"
    );
    let b_env = Environment::new(
        configured(EnvironmentConfig::tenant(
            "tenant-b",
            vec![subnet(SUBNET_C)],
        )),
        b_own_ca.anchors(),
    )
    .unwrap();
    let err = b_env.install(&forged).unwrap_err();
    assert!(
        matches!(&err, ManagerError::Scope(ScopeError::OutsideEnvironment { subnet: s })
            if *s == subnet(SUBNET_A)),
        "{err}"
    );
    assert_eq!(b_env.counters().refused, 1);
    assert!(matches!(
        b_env.policy("tenant-b", subnet(SUBNET_A)),
        Err(ManagerError::UnknownModule { .. })
    ));

    assert_eq!(tenants.counters().refused, 2);
    assert_eq!(
        tenants
            .anchors()
            .counters()
            .refused(VerifyFailure::UntrustedChain),
        1
    );
    // Tenant A's subnet is still placed by tenant A's module, unfaulted.
    lab.connect(VIP_A, VICTIM_CHOICE);
    assert_eq!(a_policy.active_version().unwrap().major, 1);
    assert_eq!(tenants.module("tenant-a").unwrap().counters.faults(), 0);
    assert_eq!(lab.policy_faults(), 0);
    lab.assert_forwarding();
}

#[test]
fn a_tenant_reusing_another_tenants_module_name_is_refused_and_never_places_its_flows() {
    let mut lab = Lab::new();
    let tenants_ca = Ca::init("tenants", &[SUBNET_A]);
    let b_signer = {
        let mut req = SignerRequest::new("tenant B signer", validity());
        req.tenant_subnets = vec!["192.202.0.0/16".to_owned()];
        tenants_ca.authority().issue_signer(&req).unwrap()
    };
    let tenants = Environment::new(
        configured(EnvironmentConfig::tenant(
            "tenants",
            vec![subnet(SUBNET_A), subnet("192.202.0.0/16")],
        )),
        tenants_ca.anchors(),
    )
    .unwrap();
    tenants
        .install(&tenants_ca.sign(
            &tenant_manifest("tenant-a", "1.0.0", &[SUBNET_A]),
            &always(VICTIM_CHOICE as u32),
        ))
        .unwrap();
    let a_policy = tenants.policy("tenant-a", subnet(SUBNET_A)).unwrap();
    lab.router
        .engine
        .set_policy(lab.a, Some(a_policy.clone()))
        .unwrap();
    lab.connect(VIP_A, VICTIM_CHOICE);

    // Tenant B publishes versions under tenant A's module name, each claiming
    // only its own subnet (which its certificate grants). In a tenant
    // environment a name belongs to the signer of its active version, so
    // each is refused (typed, counted) and tenant A's version keeps placing
    // A's flows: never tenant B's module (candidate 3), never a fault.
    for version in ["2.0.0", "3.0.0"] {
        let err = tenants
            .install(&sign_as(
                &b_signer,
                &tenant_manifest("tenant-a", version, &["192.202.0.0/16"]),
                &always(3),
            ))
            .unwrap_err();
        assert!(
            matches!(&err, ManagerError::OtherSigner { signer, .. } if signer.contains("tenant B")),
            "{err}"
        );
        lab.connect(VIP_A, VICTIM_CHOICE);
    }
    assert_eq!(tenants.counters().refused, 2);
    let counters = tenants.module("tenant-a").unwrap().counters;
    assert_eq!((counters.unavailable, counters.fallbacks), (0, 0));
    assert_eq!(a_policy.active_version().unwrap().major, 1);
    assert_eq!(lab.policy_faults(), 0);
    lab.assert_forwarding();
}
