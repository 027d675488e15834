//! Shared by the adversarial and hot-swap suites: a CA made with exec-env's `ca`
//! API in a temporary directory that signs real module files, WAT policies
//! assembled to binary, and an engine serving virtual subnets driven by
//! synthetic packets.

#![allow(dead_code, reason = "each test binary uses a different subset")]
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failure is a test failure"
)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use exec_env::ca::{self, CaOptions, CaPaths, CertificateAuthority, IssuedCert};
use exec_env::format;
use exec_env::manager::{EnvironmentConfig, QuarantineConfig};
use exec_env::sign::{self, ModuleSigningKey};
use exec_env::trust::TrustAnchors;
use router_core::flow::FlowConfig;
use router_core::synth::PacketSpec;
use router_core::wire::TcpFlags;
use router_core::{
    Candidate, Engine, EngineConfig, HEADROOM, Instant, Level, PacketBuf, RouterApi, SubnetId,
    Verdict,
};

/// A directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("pronto-{tag}-{}-{n}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path).unwrap();
        }
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA and its module signer made by `ca::init_ca` in a temporary directory, as
/// `pronto ca init` makes them; signs like `pronto module sign`.
pub(crate) struct Ca {
    dir: TempDir,
    paths: CaPaths,
    key: ModuleSigningKey,
}

impl Ca {
    /// A CA named `<name> CA` whose signer may govern `tenant_subnets` (none: no
    /// restriction from the certificate).
    pub(crate) fn init(name: &str, tenant_subnets: &[&str]) -> Self {
        let dir = TempDir::new(name);
        let mut opts = CaOptions::new(&format!("{name} CA"), 30);
        opts.tenant_subnets = tenant_subnets.iter().map(|s| (*s).to_owned()).collect();
        let paths = ca::init_ca(dir.path(), &opts).unwrap();
        let key = ModuleSigningKey::from_pem_file(&paths.signer_key).unwrap();
        Self { dir, paths, key }
    }

    /// The CA certificate as an environment's trust anchors.
    pub(crate) fn anchors(&self) -> TrustAnchors {
        TrustAnchors::from_pem_file(&self.paths.ca_cert).unwrap()
    }

    /// The CA itself, loaded from its directory, to issue more signers.
    pub(crate) fn authority(&self) -> CertificateAuthority {
        CertificateAuthority::load(self.dir.path()).unwrap()
    }

    /// `wasm` with `manifest` (TOML text) embedded, signed by this CA's signer.
    pub(crate) fn sign(&self, manifest: &str, wasm: &[u8]) -> Vec<u8> {
        let chain = sign::chain_from_pem_file(&self.paths.signer_cert).unwrap();
        sign::sign_module(&unsigned(manifest, wasm), &self.key, chain).unwrap()
    }
}

/// `wasm` with `manifest` (TOML text) embedded: a module file ready to sign.
pub(crate) fn unsigned(manifest: &str, wasm: &[u8]) -> Vec<u8> {
    let manifest = format::parse_manifest(manifest).unwrap();
    format::embed_manifest(wasm, &manifest).unwrap()
}

/// `wasm` with `manifest` embedded, signed by an issued certificate.
pub(crate) fn sign_as(cert: &IssuedCert, manifest: &str, wasm: &[u8]) -> Vec<u8> {
    let key = cert.signing_key().unwrap();
    sign::sign_module(&unsigned(manifest, wasm), &key, vec![cert.cert_der.clone()]).unwrap()
}

/// A policy manifest (TOML text, as in `slr-policy-wasm/manifests`).
pub(crate) fn manifest(name: &str, version: &str) -> String {
    format!("name = \"{name}\"\nversion = \"{version}\"\nkind = \"policy\"\n")
}

/// A tenant policy manifest claiming `subnets`.
pub(crate) fn tenant_manifest(name: &str, version: &str, subnets: &[&str]) -> String {
    let list: Vec<String> = subnets.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "{}subnets = [{}]\n",
        manifest(name, version),
        list.join(", ")
    )
}

/// An ABI v1 policy in WAT assembled to binary: one page of memory, the I/O
/// buffer at 1024, and `pronto_select` with `body` (the candidate count is
/// `$n`; must leave an i32). `extra` goes inside the module.
pub(crate) fn wat_policy(extra: &str, body: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
  {extra}
  (memory (export "memory") 1)
  (func (export "pronto_abi_version") (result i32) i32.const 1)
  (func (export "pronto_io_buffer") (result i32) i32.const 1024)
  (func (export "pronto_select") (param $n i32) (result i32)
    {body}))"#
    ))
    .unwrap()
}

/// A policy that always chooses candidate `index`.
pub(crate) fn always(index: u32) -> Vec<u8> {
    wat_policy("", &format!("(i32.const {index})"))
}

/// The committed artifact of a shipped module.
pub(crate) fn shipped(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../slr-policy-wasm/modules/{name}.wasm",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(path).unwrap()
}

/// An environment configuration for these suites: 3 module faults in a minute
/// quarantine a version for a minute (so a quarantine never ends inside a
/// test), and a CPU budget no module can exhaust here, so throttling (tested in
/// exec-env) never hides a module's own faults or a swap's effect.
pub(crate) fn configured(mut config: EnvironmentConfig) -> EnvironmentConfig {
    config.quarantine = QuarantineConfig {
        faults: 3,
        window: Duration::from_secs(60),
        backoff: Duration::from_secs(60),
        max_backoff: Duration::from_secs(600),
    };
    config.budget.capacity = 1 << 40;
    config
}

/// This router's tunnel endpoint.
pub(crate) const LOCAL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

/// What the built-in `LeastCost` (lowest load + route cost) chooses among
/// [`candidates`].
pub(crate) const BUILTIN_CHOICE: usize = 2;
/// What the shipped least_load (lowest load) chooses among [`candidates`].
pub(crate) const LEAST_LOAD_CHOICE: usize = 1;

/// Four up candidates `198.51.<net>.1..=4` whose loads and route costs make the
/// built-in policy ([`BUILTIN_CHOICE`]) and least_load ([`LEAST_LOAD_CHOICE`])
/// disagree with each other and with constant policies choosing 0 or 3, so
/// every next hop tells which policy placed the flow.
pub(crate) fn candidates(net: u8) -> Vec<Candidate> {
    [(0.9, 0.0), (0.2, 1.0), (0.5, 0.0), (0.7, 0.5)]
        .iter()
        .zip(1_u8..)
        .map(|(&(load, route_cost), host)| Candidate {
            addr: IpAddr::V4(Ipv4Addr::new(198, 51, net, host)),
            load,
            route_cost,
            up: true,
        })
        .collect()
}

/// An engine and the packet buffer it processes in; time advances 1 µs per
/// packet.
pub(crate) struct Router {
    pub(crate) engine: Engine,
    now: Instant,
    buf: Vec<u8>,
}

impl Router {
    /// A site-level engine with room for `flows` IPv4 flows and no subnet yet.
    pub(crate) fn new(flows: usize) -> Self {
        let engine = Engine::new(EngineConfig {
            level: Level::Site,
            local_v4: Some(LOCAL),
            flows: FlowConfig {
                capacity_v4: flows,
                capacity_v6: 64,
                ..FlowConfig::default()
            },
            ..EngineConfig::default()
        });
        Self {
            engine,
            now: Instant::from_secs(100),
            buf: vec![0; HEADROOM + 1600],
        }
    }

    /// Serves `subnet` with `candidates`.
    pub(crate) fn serve(&mut self, subnet: &str, candidates: Vec<Candidate>) -> SubnetId {
        let sid = self.engine.add_subnet(subnet.parse().unwrap()).unwrap();
        self.engine.set_candidates(sid, candidates).unwrap();
        sid
    }

    /// Processes one packet.
    pub(crate) fn send(&mut self, spec: &PacketSpec) -> Verdict {
        self.now = Instant::from_nanos(self.now.as_nanos() + 1_000);
        let len = spec.write(&mut self.buf[HEADROOM..]).unwrap();
        let mut pkt = PacketBuf::new(&mut self.buf, HEADROOM, len).unwrap();
        self.engine.process(&mut pkt, self.now)
    }

    /// The opening SYN of a connection from `client` to `vip`.
    pub(crate) fn syn(&mut self, client: SocketAddr, vip: SocketAddr) -> Verdict {
        self.send(&PacketSpec::tcp(client, vip, TcpFlags::SYN))
    }

    /// A mid-connection segment (ACK with 100 bytes) from `client` to `vip`.
    pub(crate) fn ack(&mut self, client: SocketAddr, vip: SocketAddr) -> Verdict {
        self.send(&PacketSpec::tcp(client, vip, TcpFlags::ACK).with_payload(100))
    }
}

/// The next hop of a forward verdict.
pub(crate) fn next_hop(verdict: Verdict) -> Option<IpAddr> {
    match verdict {
        Verdict::Forward { next_hop, .. } => Some(next_hop),
        _ => None,
    }
}

/// Client number `n` (distinct for every `n` below 2^24), from 10.0.0.0/8.
pub(crate) fn client(n: u32) -> SocketAddr {
    let [_, b, c, d] = n.to_be_bytes();
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, b, c, d)), 40_000)
}
