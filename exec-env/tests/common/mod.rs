//! Helpers shared by the VM and manager tests: verified modules built directly
//! (these tests are about running modules, not signatures), WAT policies, and
//! router-side requests and candidates.

#![allow(dead_code, reason = "each test binary uses a different subset")]
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failure is a test failure"
)]

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime};

use exec_env::manifest::{Capability, Manifest, ModuleKind};
use exec_env::verified::{SignerInfo, VerifiedModule};
use router_core::classify::FlowKey;
use router_core::policy::{Candidate, FlowRequest, Level, SubnetId};

/// A signer for modules that did not go through the trust check.
pub(crate) fn signer(subnets: &[&str]) -> SignerInfo {
    SignerInfo {
        subject: "CN=test signer".to_owned(),
        issuer: "CN=test CA".to_owned(),
        serial: "01".to_owned(),
        not_before: SystemTime::UNIX_EPOCH,
        not_after: SystemTime::now() + Duration::from_secs(3600),
        subnets: subnets.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// A policy manifest.
pub(crate) fn manifest(name: &str, version: &str, capabilities: &[Capability]) -> Manifest {
    Manifest {
        name: name.to_owned(),
        version: semver::Version::parse(version).unwrap(),
        kind: ModuleKind::Policy,
        capabilities: capabilities.to_vec(),
        subnets: Vec::new(),
        description: String::new(),
    }
}

/// A verified module from binary wasm and a manifest.
pub(crate) fn verified(manifest: Manifest, wasm: Vec<u8>) -> VerifiedModule {
    let mut digest = [0_u8; 32];
    for (i, b) in wasm.iter().enumerate() {
        digest[i % 32] ^= b.rotate_left(i as u32 % 8);
    }
    VerifiedModule {
        manifest,
        wasm,
        digest,
        signer: signer(&[]),
    }
}

/// A verified module from WAT text.
pub(crate) fn from_wat(
    name: &str,
    version: &str,
    capabilities: &[Capability],
    wat: &str,
) -> VerifiedModule {
    verified(
        manifest(name, version, capabilities),
        wat::parse_str(wat).unwrap(),
    )
}

/// An ABI v1 policy in WAT: one page of memory, I/O buffer at 1024, and
/// `pronto_select` with `body` (the count is local 0; must leave an i32).
/// `extra` goes inside the module (imports first in the text is fine: WAT sorts).
pub(crate) fn wat_policy(extra: &str, body: &str) -> String {
    format!(
        r#"(module
  {extra}
  (memory (export "memory") 1)
  (func (export "pronto_abi_version") (result i32) i32.const 1)
  (func (export "pronto_io_buffer") (result i32) i32.const 1024)
  (func (export "pronto_select") (param $n i32) (result i32)
    {body}))"#
    )
}

/// A WAT policy that misbehaves with `bad` (an i32-producing sequence) when it is
/// given exactly 3 candidates and chooses candidate 0 otherwise: the same
/// instance shows both the fault and that it still works afterwards.
pub(crate) fn wat_trigger(extra: &str, bad: &str) -> String {
    wat_policy(
        extra,
        &format!(
            "(if (result i32) (i32.eq (local.get $n) (i32.const 3)) (then {bad}) (else (i32.const 0)))"
        ),
    )
}

/// The committed artifact of a shipped module with its signing manifest.
pub(crate) fn shipped(name: &str) -> VerifiedModule {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../slr-policy-wasm");
    let wasm = std::fs::read(format!("{root}/modules/{name}.wasm")).unwrap();
    let text = std::fs::read_to_string(format!("{root}/manifests/{name}.toml")).unwrap();
    let manifest: Manifest = toml::from_str(&text).unwrap();
    verified(manifest, wasm)
}

/// A TCP flow request from a client to the VIP 192.200.0.10:443.
pub(crate) fn request(src_port: u16) -> FlowRequest {
    FlowRequest {
        key: FlowKey {
            proto: 6,
            src: IpAddr::V4(Ipv4Addr::new(10, 0, 3, 4)),
            src_port,
            dst: IpAddr::V4(Ipv4Addr::new(192, 200, 0, 10)),
            dst_port: 443,
        },
        subnet: SubnetId(0),
        level: Level::Site,
    }
}

/// `n` up candidates with loads 0.9, 0.8, ... (so the last is least loaded) and
/// route cost 1.
pub(crate) fn candidates(n: usize) -> Vec<Candidate> {
    (0..n)
        .map(|i| Candidate {
            addr: IpAddr::V4(Ipv4Addr::new(10, 9, 0, i as u8 + 1)),
            load: 0.9 - 0.1 * i as f64,
            route_cost: 1.0,
            up: true,
        })
        .collect()
}

/// Every capability.
pub(crate) const ALL_CAPABILITIES: [Capability; 2] = [Capability::Log, Capability::Clock];
