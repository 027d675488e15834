//! What the daemons are given: the lab CA's certificates, signed modules, and
//! each router's and host's configuration file.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::topology::{HostNode, UpOptions, hosts, site_letter};
use super::{SIGNAL_PORT, TUNNEL_MTU, VIP_SUBNET, VIP2_SUBNET, recovery};

/// Name of the lab operator's certificate (`ca/peer-operator.lab.pem`, role
/// operator): what `pronto query` and `pronto module` present to a router's
/// management API.
pub(super) const OPERATOR: &str = "operator.lab";

/// The lab CA, each router's and host's certificate (roles router and host:
/// no management rights) and the operator's (role operator).
pub(super) fn certificates(dir: &Path) -> Result<()> {
    use exec_env::role::Role;
    let ca_dir = dir.join("ca");
    exec_env::ca::init_ca(&ca_dir, &exec_env::ca::CaOptions::new("Pronto lab CA", 30))
        .context("creating the lab CA")?;
    let mut names: Vec<(String, Role)> = ["sys.lab", "site-a.lab", "site-b.lab"]
        .into_iter()
        .map(|n| (n.to_owned(), Role::Router))
        .collect();
    names.extend(hosts().iter().map(|h| (h.name(), Role::Host)));
    names.push((OPERATOR.to_owned(), Role::Operator));
    for (name, role) in names {
        exec_env::ca::issue_peer_cert_as(&ca_dir, &name, Some(role))
            .with_context(|| format!("issuing the {role} certificate of {name}"))?;
    }
    Ok(())
}

/// Shipped policy modules the lab can load (compiled in, signed at `lab up`).
const LAB_MODULES: [(&str, &[u8], &str); 2] = [
    (
        "least_load",
        include_bytes!("../../slr-policy-wasm/modules/least_load.wasm"),
        include_str!("../../slr-policy-wasm/manifests/least_load.toml"),
    ),
    (
        "consistent_hash",
        include_bytes!("../../slr-policy-wasm/modules/consistent_hash.wasm"),
        include_str!("../../slr-policy-wasm/manifests/consistent_hash.toml"),
    ),
];

pub(super) fn signed_module_path(dir: &Path, name: &str) -> PathBuf {
    dir.join("conf").join(format!("{name}.signed.wasm"))
}

/// Sign a shipped module with the lab CA's code-signing signer, as
/// `pronto module sign` would.
pub(super) fn sign_shipped_module(dir: &Path, name: &str) -> Result<()> {
    let Some((_, wasm, manifest)) = LAB_MODULES.iter().find(|(n, _, _)| *n == name) else {
        let names: Vec<&str> = LAB_MODULES.iter().map(|(n, _, _)| *n).collect();
        bail!("--policy-module {name}: choose one of {}", names.join(", "));
    };
    let ca = exec_env::ca::CaPaths::in_dir(&dir.join("ca"));
    let key = exec_env::sign::ModuleSigningKey::from_pem_file(&ca.signer_key)
        .context("the lab signer key")?;
    let chain = exec_env::sign::chain_from_pem_file(&ca.signer_cert).context("the lab signer")?;
    let manifest = exec_env::format::parse_manifest(manifest)
        .with_context(|| format!("manifest of {name}"))?;
    let unsigned = exec_env::format::embed_manifest(wasm, &manifest)
        .with_context(|| format!("embedding the manifest of {name}"))?;
    let signed = exec_env::sign::sign_module(&unsigned, &key, chain)
        .with_context(|| format!("signing {name}"))?;
    let out = signed_module_path(dir, name);
    std::fs::write(&out, signed).with_context(|| format!("writing {}", out.display()))
}

pub(super) fn tls_section(dir: &Path, name: &str) -> String {
    let ca = dir.join("ca");
    format!(
        "[tls]\ntrust_anchors = [{:?}]\ncert = {:?}\nkey = {:?}\n",
        ca.join("ca.pem"),
        ca.join(format!("peer-{name}.pem")),
        ca.join(format!("peer-{name}.key")),
    )
}

pub(super) const SESSION: &str =
    "[session]\nkeepalive_ms = 500\ndead_ms = 2000\nhello_timeout_ms = 3000\n";

/// `site` None: the system SLR.
pub(super) fn router_config(dir: &Path, o: &UpOptions, site: Option<u8>) -> String {
    let (level, name, local, upstream, downstream) = match site {
        None => (
            "system",
            "sys.lab".to_owned(),
            "10.0.0.1".to_owned(),
            String::new(),
            ["site-a.lab", "site-b.lab"]
                .iter()
                .zip(1..)
                .map(|(n, i)| {
                    // With a spare on site a, the session's source address says
                    // nothing about the tunnel endpoint: name it.
                    let tunnel = if o.recovery {
                        format!("tunnel = \"10.{i}.0.2\"\n")
                    } else {
                        String::new()
                    };
                    format!("[[downstream]]\nname = \"{n}\"\nroute_cost = 0.0\n{tunnel}")
                })
                .collect::<String>(),
        ),
        Some(s) => (
            "site",
            format!("site-{}.lab", site_letter(s)),
            format!("10.{s}.0.2"),
            format!(
                "[upstream]\naddress = \"10.{s}.0.1:{SIGNAL_PORT}\"\nname = \"sys.lab\"\nreconnect_ms = 100\n\
                 tunnel = \"10.0.0.1\"\n"
            ),
            hosts()
                .iter()
                .filter(|h| h.site == s)
                .map(|h| {
                    format!(
                        "[[downstream]]\nname = \"{}\"\nroute_cost = 0.0\ntunnel = \"{}\"\n",
                        h.name(),
                        h.addr()
                    )
                })
                .collect(),
        ),
    };
    let stats = dir
        .join("stats")
        .join(format!("{}.toml", name.trim_end_matches(".lab")));
    format!(
        "# Generated by `pronto lab up`.\nlevel = \"{level}\"\nname = \"{name}\"\nlisten = \"0.0.0.0:{SIGNAL_PORT}\"\n\
         fast_path = \"{fast_path}\"\nengine_threads = {threads}\n\n\
         [tunnel]\nlocal_v4 = \"{local}\"\nmtu = {TUNNEL_MTU}\n{accept}\n{tls}\n\
         [table]\ninterval_ms = {pace}\nhold_ms = {hold}\n\n\
         [flows]\ncapacity_v4 = {flow_capacity}\ncapacity_v6 = 64\nsyn_timeout_ms = 3000\nestablished_timeout_ms = 60000\n\n\
         [policy]\nname = \"{policy}\"\nshortcuts = {shortcuts}\n\n{SESSION}\n\
         [stats]\nfile = {stats:?}\ninterval_ms = {pace}\n\n{modules}{recovery}{upstream}\n{downstream}",
        tls = tls_section(dir, &name),
        pace = o.pace.interval_ms(),
        hold = o.pace.hold_ms(),
        // With --recovery, sys2 tunnels to the sites (static next hops) and
        // to sys (unknown flows), and sys relays along pins to sys2.
        accept = if o.recovery {
            "accept_from = [\"10.0.0.1\", \"10.0.0.2\"]\n"
        } else {
            ""
        },
        policy = o.policy.config_name(),
        fast_path = o.fast_path.config_name(),
        threads = o.engine_threads,
        shortcuts = o.shortcuts && site.is_some(),
        recovery = if o.recovery {
            recovery::router_section(dir, site)
        } else {
            String::new()
        },
        flow_capacity = o.flow_capacity,
        modules = match &o.policy_module {
            Some(m) => format!(
                "[modules]\ntrust_anchors = [{:?}]\nfiles = [{:?}]\nsubnet = \"{VIP_SUBNET}\"\npolicy = \"{m}\"\n\n",
                dir.join("ca").join("ca.pem"),
                signed_module_path(dir, m),
            ),
            None => String::new(),
        },
    )
}

pub(super) fn host_config(dir: &Path, o: &UpOptions, h: &HostNode) -> String {
    let name = h.name();
    let mut text = format!(
        "# Generated by `pronto lab up`.\nname = \"{name}\"\nsubnets = [\"{VIP_SUBNET}\", \"{VIP2_SUBNET}\"]\nfast_path = \"{fast_path}\"\n\n\
         [site]\naddress = \"{site}:{SIGNAL_PORT}\"\nname = \"site-{letter}.lab\"\nreconnect_ms = 100\n\n{tls}\n\
         [load]\nupdate_interval_ms = {pace}\ncapacity = 100\ncpu_weight = 0.0\nbackground_file = {load:?}\n\n\
         [http_demo]\nlisten = \"0.0.0.0:80\"\nbody = \"{name}\"\n\n{SESSION}\n\
         [stats]\nfile = {stats:?}\ninterval_ms = {pace}\n",
        pace = o.pace.interval_ms(),
        site = h.site_side(),
        fast_path = o.fast_path.config_name(),
        letter = site_letter(h.site),
        tls = tls_section(dir, &name),
        load = dir.join("load").join(&h.short),
        stats = dir.join("stats").join(format!("{}.toml", h.short)),
    );
    if o.recovery && o.adverts {
        text.push_str(&recovery::host_section(dir));
    }
    text
}
