//! `pronto demo` (default): the whole hierarchy in one process, running the
//! shipped policy modules, signed on the spot by a throw-away CA and hot-loaded
//! into an operator environment exactly as an operator would load them.
//!
//! The simulation (network router, three AS routers, two sites each, four hosts
//! each; clients opening TCP connections) is `pronto_sim::demo`; this file only
//! provides the modules and prints the report.

use crate::demo::DemoArgs;
use anyhow::{Context, Result, bail};
use exec_env::ca::{CertificateAuthority, KeyAlgorithm, SignerRequest, Validity};
use exec_env::format;
use exec_env::manager::{Environment, EnvironmentConfig};
use exec_env::sign;
use exec_env::trust::TrustAnchors;
use pronto_sim::demo::{DemoOptions, run_demo};
use router_core::VirtualSubnet;
use std::time::SystemTime;

/// The served virtual subnet of the demo.
const SUBNET: &str = "192.200.0.0/16";

/// Shipped modules compiled into the binary so the demo runs anywhere.
const MODULES: [(&str, &[u8], &str); 3] = [
    (
        "least_load",
        include_bytes!("../slr-policy-wasm/modules/least_load.wasm"),
        include_str!("../slr-policy-wasm/manifests/least_load.toml"),
    ),
    (
        "consistent_hash",
        include_bytes!("../slr-policy-wasm/modules/consistent_hash.wasm"),
        include_str!("../slr-policy-wasm/manifests/consistent_hash.toml"),
    ),
    (
        "weighted_cost",
        include_bytes!("../slr-policy-wasm/modules/weighted_cost.wasm"),
        include_str!("../slr-policy-wasm/manifests/weighted_cost.toml"),
    ),
];

pub(crate) fn run(args: &DemoArgs) -> Result<()> {
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    let now = SystemTime::now();
    let validity = Validity::days_from(now, 1).context("demo CA validity")?;
    let ca =
        CertificateAuthority::generate("Pronto demo operator CA", validity, KeyAlgorithm::Ed25519)
            .context("creating the demo CA")?;
    let signer = ca
        .issue_signer(&SignerRequest {
            name: "demo module signer".into(),
            validity: Validity::days_from(now, 1)?,
            tenant_subnets: Vec::new(),
            dns_names: Vec::new(),
            algorithm: KeyAlgorithm::Ed25519,
        })
        .context("issuing the demo signer")?;
    let key = signer.signing_key().context("demo signer key")?;
    let mut anchors =
        TrustAnchors::from_pem(ca.cert_pem().as_bytes()).context("demo trust anchor")?;
    if let Some(path) = &args.trust {
        let pem = std::fs::read(path)
            .with_context(|| format!("reading trust anchor {}", path.display()))?;
        anchors
            .add_pem(&pem)
            .with_context(|| format!("adding trust anchor {}", path.display()))?;
    }
    let env = Environment::new(EnvironmentConfig::operator("operator"), anchors)
        .context("creating the operator environment")?;
    for (name, wasm, manifest) in MODULES {
        let manifest =
            format::parse_manifest(manifest).with_context(|| format!("manifest of {name}"))?;
        let unsigned = format::embed_manifest(wasm, &manifest)
            .with_context(|| format!("embedding the manifest of {name}"))?;
        let signed = sign::sign_module(&unsigned, &key, vec![signer.cert_der.clone()])
            .with_context(|| format!("signing {name}"))?;
        let report = env
            .install(&signed)
            .with_context(|| format!("installing signed {name}"))?;
        tracing::info!(module = name, ?report, "module installed");
    }
    let subnet: VirtualSubnet = SUBNET.parse()?;
    let mut site_policy = "least_load".to_owned();
    if let Some(path) = &args.module {
        let bytes =
            std::fs::read(path).with_context(|| format!("reading module {}", path.display()))?;
        let report = env.install(&bytes).with_context(|| {
            format!(
                "installing {} (is it signed by a CA given with --trust?)",
                path.display()
            )
        })?;
        println!(
            "your module {} {} is installed and serves phase 1",
            report.name, report.active
        );
        site_policy = report.name;
    }
    let opts = DemoOptions {
        seed: args.seed,
        cost: env.cost_model("weighted_cost", subnet)?,
        site_policy: Some(env.policy(&site_policy, subnet)?),
        swapped_site_policy: env.policy("consistent_hash", subnet)?,
        connections_per_phase: args.connections,
        ..DemoOptions::default()
    };
    println!("pronto demo: the SLR hierarchy in one process");
    println!(
        "modules signed by a fresh CA and installed in environment \"operator\": {}",
        env.list()
            .iter()
            .map(|m| m.name.clone())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("F/G: weighted_cost; site policy: {site_policy}, hot-swapped to consistent_hash\n");
    let report = run_demo(&opts).context("running the hierarchy simulation")?;
    println!("{report}");
    println!("module counters:");
    for m in env.list() {
        println!("  {:<16} {:?}", m.name, m.counters);
    }
    Ok(())
}
