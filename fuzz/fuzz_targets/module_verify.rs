//! Untrusted module bytes all the way through verification and the checks made
//! before anything is compiled: exec-env's `trust::verify` (container, chain,
//! signer certificate, signature) and `vm::precheck` (kind, size, every
//! load-time cap by wasmparser, the ABI v1 interface, initial memory). Cranelift
//! never runs.
//!
//! Each input is used twice: as a module file as received (signed by whoever
//! the fuzzer pretends to be; the trust anchors are a CA of this process, so
//! only the format and chain walks are reached), and as the wasm of a module
//! this process signs with a signer of that CA (its manifest's, if it has one,
//! else a policy or scheduler manifest asking for every capability), which must
//! then verify, so the pre-compile checks see arbitrary wasm.
#![no_main]

use std::sync::OnceLock;
use std::time::SystemTime;

use exec_env::ca::{CertificateAuthority, KeyAlgorithm, SignerRequest, Validity};
use exec_env::format::{self, FormatError};
use exec_env::manifest::{Capability, Manifest, ModuleKind};
use exec_env::sign::{ModuleSigningKey, sign_module};
use exec_env::trust::{TrustAnchors, verify};
use exec_env::vm::{VmConfig, VmError, precheck};
use libfuzzer_sys::fuzz_target;
use rustls_pki_types::CertificateDer;

const GRANTED: &[Capability] = &[Capability::Log, Capability::Clock];

struct Fixture {
    anchors: TrustAnchors,
    key: ModuleSigningKey,
    chain: Vec<CertificateDer<'static>>,
    now: SystemTime,
    vm: VmConfig,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let now = SystemTime::now();
        let v = Validity::days_from(now, 1).expect("validity");
        let ca = CertificateAuthority::generate("Fuzz CA", v, KeyAlgorithm::Ed25519).expect("CA");
        let mut req = SignerRequest::new("fuzz signer", v);
        req.tenant_subnets = vec!["192.200.0.0/16".to_owned()];
        let signer = ca.issue_signer(&req).expect("signer");
        Fixture {
            anchors: TrustAnchors::from_pem(ca.cert_pem().as_bytes()).expect("anchors"),
            key: signer.signing_key().expect("key"),
            chain: vec![signer.cert_der.clone()],
            now,
            vm: VmConfig::default(),
        }
    })
}

fn manifest(kind: ModuleKind) -> Manifest {
    Manifest {
        name: "fuzzed".to_owned(),
        version: semver::Version::new(1, 0, 0),
        kind,
        capabilities: GRANTED.to_vec(),
        subnets: vec!["192.200.1.0/24".to_owned()],
        description: String::new(),
    }
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();

    // As received.
    if let Ok(m) = verify(data, &f.anchors, f.now) {
        let _ = precheck(&f.vm, &m, GRANTED, m.manifest.kind);
    }

    // As the wasm of a module signed here.
    let unsigned = match format::parse(data) {
        Ok(file) if file.signature().is_none() => data.to_vec(),
        Ok(_) => return,
        Err(_) => {
            let kind = if data.last().is_some_and(|b| b & 1 == 1) {
                ModuleKind::Scheduler
            } else {
                ModuleKind::Policy
            };
            match format::embed_manifest(data, &manifest(kind)) {
                Ok(bytes) => bytes,
                Err(_) => return,
            }
        }
    };
    let signed = match sign_module(&unsigned, &f.key, f.chain.clone()) {
        Ok(s) => s,
        // Refused as a container (e.g. too long once signed): nothing to verify.
        Err(exec_env::sign::SignError::Format(FormatError::TooLarge { .. })) => return,
        Err(e) => panic!("a module file that parsed does not sign: {e}"),
    };
    let module = verify(&signed, &f.anchors, f.now).expect("a module signed here verifies");
    assert_eq!(module.wasm, unsigned, "the VM gets exactly what was signed");
    let kind = module.manifest.kind;
    match precheck(&f.vm, &module, GRANTED, kind) {
        Ok(interface) => {
            assert!(interface.initial_memory <= f.vm.memory_limit as u64);
            assert!(interface.capabilities.iter().all(|c| GRANTED.contains(c)));
        }
        Err(VmError::Limit(l)) => assert!(l.value > l.limit, "{l}"),
        Err(_) => {}
    }
    // Another kind than the manifest's is refused before anything is read.
    let other = if kind == ModuleKind::Policy {
        ModuleKind::Scheduler
    } else {
        ModuleKind::Policy
    };
    assert!(matches!(
        precheck(&f.vm, &module, GRANTED, other),
        Err(VmError::UnsupportedKind { .. })
    ));
});
