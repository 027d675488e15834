//! The policies and modules a router's configuration names: the built-in
//! policy by name, the signed modules of `[modules]` loaded into the operator
//! environment and those of each `[[environment]]` into a tenant's, each with
//! what its state directory kept.

use std::sync::Arc;

use anyhow::{Context, Result};
use exec_env::format::MAX_MODULE_LEN;
use exec_env::manager::{Binding, BoundHandle, CpuBudget, Environment, EnvironmentConfig, Role};
use exec_env::trust::TrustAnchors;
use router_core::policy::{FlowHash, LeastCost, Policy};
use signaling::FollowTable;
use tracing::{info, warn};

use super::module_state::ModuleStore;

use crate::config::{self, PolicyName};

/// The policy object for a configured name.
pub(crate) fn policy_for(name: PolicyName) -> Arc<dyn Policy> {
    match name {
        PolicyName::LeastCost => Arc::new(LeastCost),
        PolicyName::FollowTable => Arc::new(FollowTable),
        PolicyName::FlowHash => Arc::new(FlowHash),
    }
}

/// One execution environment of the router, its state directory and the
/// handles of its bindings.
pub(crate) struct LoadedEnv {
    pub(crate) env: Arc<Environment>,
    pub(crate) store: Arc<ModuleStore>,
    /// Each binding and the handle the node calls for it.
    pub(crate) bound: Vec<(Binding, BoundHandle)>,
}

/// Every environment of the router: the operator's (`[modules]`) first, then
/// the tenants' (`[[environment]]`), all on one CPU budget shared by weight.
pub(crate) struct LoadedModules {
    pub(crate) envs: Vec<LoadedEnv>,
}

impl LoadedModules {
    /// Every binding of every environment with its handle.
    pub(crate) fn bound(&self) -> impl Iterator<Item = &(Binding, BoundHandle)> {
        self.envs.iter().flat_map(|e| e.bound.iter())
    }

    /// The rank function of the bound scheduler module, if one is bound.
    pub(crate) fn rank_handle(&self) -> Option<exec_env::manager::ModuleRankHandle> {
        self.bound().find_map(|(_, h)| match h {
            BoundHandle::Rank(r) => Some(r.clone()),
            _ => None,
        })
    }
}

/// What one environment is built from.
struct EnvSource<'a> {
    /// Its configuration section, for error messages (`modules`, `environment[0]`).
    field: String,
    config: EnvironmentConfig,
    trust_anchors: &'a [std::path::PathBuf],
    crls: &'a [std::path::PathBuf],
    files: &'a [std::path::PathBuf],
    state_dir: &'a std::path::Path,
}

/// The router's environments, or `None` when it runs no module.
pub(crate) fn load_environments(
    modules: Option<&config::ModulesConfig>,
    tenants: &[config::TenantConfig],
) -> Result<Option<LoadedModules>> {
    if modules.is_none() && tenants.is_empty() {
        return Ok(None);
    }
    let budget = CpuBudget::new(EnvironmentConfig::operator("operator").budget)
        .context("the modules' CPU budget")?;
    let mut envs = Vec::new();
    if let Some(m) = modules {
        let src = EnvSource {
            field: "modules".into(),
            config: EnvironmentConfig::operator("operator"),
            trust_anchors: &m.trust_anchors,
            crls: &m.crls,
            files: &m.files,
            state_dir: &m.state_dir,
        };
        envs.push(load_env(src, &budget, |env| bind_configured(env, m))?);
    }
    for (i, t) in tenants.iter().enumerate() {
        let mut config = EnvironmentConfig::tenant(&t.name, t.subnets.clone());
        config.weight = t.cpu_weight;
        let src = EnvSource {
            field: format!("environment[{i}]"),
            config,
            trust_anchors: &t.trust_anchors,
            crls: &t.crls,
            files: &t.files,
            state_dir: &t.state_dir,
        };
        envs.push(load_env(src, &budget, |_| Ok(Vec::new()))?);
    }
    drop_shared_bindings(&mut envs);
    Ok(Some(LoadedModules { envs }))
}

/// Verify and install an environment's module files (signature and chain
/// checked before anything is compiled), then what its state directory kept of
/// runtime operations, and bind the handles: the state directory's bindings
/// when an operator ever changed one, else `configured`.
fn load_env(
    src: EnvSource<'_>,
    budget: &Arc<CpuBudget>,
    configured: impl FnOnce(&Environment) -> Result<Vec<(Binding, BoundHandle)>>,
) -> Result<LoadedEnv> {
    let f = &src.field;
    let anchors = anchors(f, src.trust_anchors, src.crls)?;
    let env = Environment::with_budget(src.config, anchors, Arc::clone(budget))
        .with_context(|| format!("[{f}]: creating the environment"))?;
    for (i, p) in src.files.iter().enumerate() {
        let bytes = config::read_file(p, MAX_MODULE_LEN as u64)
            .with_context(|| format!("{f}.files[{i}]"))?;
        let report = env.install(&bytes).with_context(|| {
            format!(
                "{f}.files[{i}]: {} refused (is it signed by a CA in {f}.trust_anchors, by a signer no CRL of {f}.crls revokes?)",
                p.display()
            )
        })?;
        info!(env = %env.name(), module = %report.name, version = %report.active, file = %p.display(), "module installed");
    }
    let store = ModuleStore::new(src.state_dir);
    store.restore(&env)?;
    let bound = match store.bindings()? {
        Some(kept) => {
            info!(
                env = %env.name(),
                dir = %store.dir().display(),
                bindings = kept.len(),
                "module bindings from the state directory (they replace [modules] policy/cost; remove its bindings.toml to return to the configuration's)"
            );
            bind_kept(&env, kept)
        }
        None => configured(&env)?,
    };
    Ok(LoadedEnv {
        env: Arc::new(env),
        store: Arc::new(store),
        bound,
    })
}

/// Trust anchors from `anchors` with the CRLs of `crls`.
fn anchors(
    field: &str,
    anchors: &[std::path::PathBuf],
    crls: &[std::path::PathBuf],
) -> Result<TrustAnchors> {
    let mut out = TrustAnchors::empty();
    for (i, p) in anchors.iter().enumerate() {
        let pem = config::read_file(p, config::MAX_PEM_BYTES)
            .with_context(|| format!("{field}.trust_anchors[{i}]"))?;
        out.add_pem(&pem)
            .with_context(|| format!("{field}.trust_anchors[{i}]: {}", p.display()))?;
    }
    for (i, p) in crls.iter().enumerate() {
        let pem = config::read_file(p, config::MAX_PEM_BYTES)
            .with_context(|| format!("{field}.crls[{i}]"))?;
        let n = out
            .add_crl_pem(&pem)
            .with_context(|| format!("{field}.crls[{i}]: {}", p.display()))?;
        info!(file = %p.display(), crls = n, "module signer CRLs loaded");
    }
    Ok(out)
}

/// One module per subnet and role in the node: a binding an earlier
/// environment already holds is dropped (with a warning) from a later one.
fn drop_shared_bindings(envs: &mut [LoadedEnv]) {
    let mut held = std::collections::BTreeMap::new();
    for e in envs.iter_mut() {
        let name = e.env.name().to_owned();
        e.bound.retain(|(b, _)| {
            match held.entry((b.subnet, b.role)) {
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(name.clone());
                    true
                }
                std::collections::btree_map::Entry::Occupied(o) => {
                    warn!(env = %name, module = %b.module, subnet = %b.subnet, role = %b.role,
                        holder = %o.get(), "binding dropped: another environment binds that subnet and role");
                    false
                }
            }
        });
    }
}

/// `[modules] policy` and `cost` on `subnet`, `scheduler` on the egress link;
/// a name that cannot serve is a start error naming the field.
fn bind_configured(
    env: &Environment,
    m: &config::ModulesConfig,
) -> Result<Vec<(Binding, BoundHandle)>> {
    let mut bound = Vec::new();
    let link = m
        .scheduler
        .as_ref()
        .map(|n| ("scheduler", n, Role::Scheduler, Role::LINK));
    let on_subnet = m.subnet.into_iter().flat_map(|subnet| {
        [
            ("policy", &m.policy, Role::Policy),
            ("cost", &m.cost, Role::Cost),
        ]
        .into_iter()
        .filter_map(move |(f, n, r)| n.as_ref().map(|n| (f, n, r, subnet)))
    });
    for (field, n, role, subnet) in on_subnet.chain(link) {
        let r = env.bind(n, subnet, role).with_context(|| {
            format!("modules.{field} = {n:?}: no {role} module of that name governs {subnet}")
        })?;
        bound.push((r.binding, r.handle));
    }
    Ok(bound)
}

/// The bindings an operator left. One that no longer holds (its module was
/// removed, or no longer governs the subnet) is dropped with a warning: the
/// router starts, and the subnet is placed by the built-in policy as it was
/// while the module was gone.
fn bind_kept(env: &Environment, kept: Vec<Binding>) -> Vec<(Binding, BoundHandle)> {
    let mut bound = Vec::new();
    for b in kept {
        match env.bind(&b.module, b.subnet, b.role) {
            Ok(r) => bound.push((r.binding, r.handle)),
            Err(e) => warn!(
                module = %b.module, subnet = %b.subnet, role = %b.role, error = %e,
                "kept binding dropped: the built-in serves the subnet"
            ),
        }
    }
    bound
}

#[cfg(test)]
mod tests {
    use super::*;
    use exec_env::{ca, crl, sign, trust};
    use std::path::{Path, PathBuf};

    /// A CA in `dir` and the shipped least_load policy signed by its signer.
    fn signed_policy(dir: &Path) -> Result<(ca::CaPaths, PathBuf)> {
        let paths = ca::init_ca(dir, &ca::CaOptions::new("Modules CA", 30))?;
        let file = dir.join("least_load.signed.wasm");
        std::fs::write(&file, signed(&paths, "least_load", None)?)?;
        Ok((paths, file))
    }

    /// The shipped module `name` (as `version`, if given) signed by the CA's signer.
    fn signed(paths: &ca::CaPaths, name: &str, version: Option<&str>) -> Result<Vec<u8>> {
        let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("slr-policy-wasm");
        let wasm = std::fs::read(policies.join(format!("modules/{name}.wasm")))?;
        let mut manifest = exec_env::format::parse_manifest(&std::fs::read_to_string(
            policies.join(format!("manifests/{name}.toml")),
        )?)?;
        if let Some(v) = version {
            manifest.version = v.parse()?;
        }
        let unsigned = exec_env::format::embed_manifest(&wasm, &manifest)?;
        let key = sign::ModuleSigningKey::from_pem_file(&paths.signer_key)?;
        let chain = sign::chain_from_pem_file(&paths.signer_cert)?;
        Ok(sign::sign_module(&unsigned, &key, chain)?)
    }

    /// What a restart finds: modules loaded and swapped through the API are
    /// installed over the configuration's, the kept bindings replace the
    /// configured ones, a rollback to the configuration's version holds, and
    /// a configuration that no longer installs that version does not stop
    /// the start.
    #[test]
    fn a_restart_installs_what_operators_changed_at_runtime() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("pronto-restore-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let (paths, file) = signed_policy(&dir)?;
        let cfg = config(&paths, &file, Vec::new());
        let store = ModuleStore::new(&cfg.state_dir);
        // At runtime: consistent_hash loaded and bound to a /24, least_load
        // swapped to 2.0.0.
        store.loaded("consistent_hash", &signed(&paths, "consistent_hash", None)?)?;
        store.swapped("least_load", &signed(&paths, "least_load", Some("2.0.0"))?)?;
        let kept = vec![
            Binding::new("192.200.0.0/16".parse()?, Role::Policy, "least_load"),
            Binding::new("192.200.1.0/24".parse()?, Role::Policy, "consistent_hash"),
        ];
        store.save_bindings(&kept)?;
        let loaded = load_modules(&cfg)?;
        let env = &loaded.envs[0].env;
        let version = |n: &str| env.module(n).map(|m| m.active.version.to_string());
        assert_eq!(version("least_load").as_deref(), Some("2.0.0"));
        assert_eq!(version("consistent_hash").as_deref(), Some("0.1.0"));
        let bound: Vec<Binding> = loaded.bound().map(|(b, _)| b.clone()).collect();
        assert_eq!(bound, kept);

        // Rolled back to the configuration's 0.1.0 before the restart.
        assert!(store.rolled_back("least_load")?);
        let loaded = load_modules(&cfg)?;
        let m = loaded.envs[0]
            .env
            .module("least_load")
            .context("least_load")?;
        assert_eq!(m.active.version.to_string(), "0.1.0");
        assert_eq!(
            m.previous.map(|p| p.version.to_string()).as_deref(),
            Some("2.0.0")
        );

        // The configuration no longer installs least_load: the kept 2.0.0
        // serves, and the binding to it holds.
        let mut bare = cfg.clone();
        bare.files.clear();
        bare.policy = None;
        let loaded = load_modules(&bare)?;
        let m = loaded.envs[0]
            .env
            .module("least_load")
            .context("least_load")?;
        assert_eq!(m.active.version.to_string(), "2.0.0");
        assert_eq!(loaded.bound().count(), 2);
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    fn config(paths: &ca::CaPaths, file: &Path, crls: Vec<PathBuf>) -> config::ModulesConfig {
        config::ModulesConfig {
            trust_anchors: vec![paths.ca_cert.clone()],
            crls,
            files: vec![file.to_owned()],
            subnet: Some("192.200.0.0/16".parse().expect("subnet")),
            policy: Some("least_load".into()),
            cost: None,
            scheduler: None,
            state_dir: file.with_extension("state"),
        }
    }

    fn load_modules(m: &config::ModulesConfig) -> Result<LoadedModules> {
        load_environments(Some(m), &[])?.context("no environment")
    }

    /// What the daemon runs at start: a CRL that revokes someone else changes
    /// nothing, one that revokes the module's signer stops the start and says
    /// why.
    #[test]
    fn a_crl_in_modules_refuses_a_revoked_signer_at_start() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("pronto-crl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let (paths, file) = signed_policy(&dir)?;

        let other = crl::revoke(&dir, &["0a0b".into()], 7)?;
        let loaded = load_modules(&config(&paths, &file, vec![other.crl.clone()]))?;
        assert_eq!(loaded.bound().count(), 1);

        let chain = sign::chain_from_pem_file(&paths.signer_cert)?;
        let serial = trust::describe_certificate(&chain[0])?.serial;
        let revoked = crl::revoke(&dir, &[serial], 7)?;
        let err = load_modules(&config(&paths, &file, vec![revoked.crl]))
            .err()
            .expect("a revoked signer's module loaded");
        let text = format!("{err:#}");
        assert!(
            text.contains("modules.files[0]") && text.contains("revoked"),
            "{text}"
        );

        // A file that is not a CRL is a start error naming the field.
        let err = load_modules(&config(&paths, &file, vec![paths.ca_cert.clone()]))
            .err()
            .expect("a certificate taken for a CRL");
        assert!(format!("{err:#}").contains("modules.crls[0]"), "{err:#}");
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
