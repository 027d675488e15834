//! The policies and modules a router's configuration names: the built-in
//! policy by name, and the signed modules of `[modules]` loaded into the
//! operator environment.

use std::sync::Arc;

use anyhow::{Context, Result};
use exec_env::format::MAX_MODULE_LEN;
use exec_env::manager::{Environment, EnvironmentConfig};
use exec_env::trust::TrustAnchors;
use router_core::VirtualSubnet;
use router_core::policy::{CostModel, FlowHash, LeastCost, Policy};
use signaling::FollowTable;
use tracing::info;

use crate::config::{self, PolicyName};

/// The policy object for a configured name.
pub(crate) fn policy_for(name: PolicyName) -> Arc<dyn Policy> {
    match name {
        PolicyName::LeastCost => Arc::new(LeastCost),
        PolicyName::FollowTable => Arc::new(FollowTable),
        PolicyName::FlowHash => Arc::new(FlowHash),
    }
}

/// The operator environment and the handles the configuration asked for.
pub(crate) struct LoadedModules {
    pub(crate) env: Arc<Environment>,
    pub(crate) subnet: VirtualSubnet,
    pub(crate) policy: Option<Arc<dyn Policy>>,
    pub(crate) cost: Option<Arc<dyn CostModel>>,
}

/// Verify and install the configured module files in an operator environment
/// (signature and chain checked before anything is compiled), and bind the
/// policy and cost handles to the configured subnet.
pub(crate) fn load_modules(m: &config::ModulesConfig) -> Result<LoadedModules> {
    let mut anchors = TrustAnchors::empty();
    for (i, p) in m.trust_anchors.iter().enumerate() {
        let pem = config::read_file(p, config::MAX_PEM_BYTES)
            .with_context(|| format!("modules.trust_anchors[{i}]"))?;
        anchors
            .add_pem(&pem)
            .with_context(|| format!("modules.trust_anchors[{i}]: {}", p.display()))?;
    }
    let env = Environment::new(EnvironmentConfig::operator("operator"), anchors)
        .context("[modules]: creating the operator environment")?;
    for (i, p) in m.files.iter().enumerate() {
        let bytes = config::read_file(p, MAX_MODULE_LEN as u64)
            .with_context(|| format!("modules.files[{i}]"))?;
        let report = env.install(&bytes).with_context(|| {
            format!(
                "modules.files[{i}]: {} refused (is it signed by a CA in modules.trust_anchors?)",
                p.display()
            )
        })?;
        info!(module = %report.name, version = %report.active, file = %p.display(), "module installed");
    }
    let policy = match &m.policy {
        Some(n) => Some(env.policy(n, m.subnet).with_context(|| {
            format!(
                "modules.policy = {n:?}: no policy module of that name governs {}",
                m.subnet
            )
        })? as Arc<dyn Policy>),
        None => None,
    };
    let cost = match &m.cost {
        Some(n) => Some(env.cost_model(n, m.subnet).with_context(|| {
            format!(
                "modules.cost = {n:?}: no cost module of that name governs {}",
                m.subnet
            )
        })? as Arc<dyn CostModel>),
        None => None,
    };
    Ok(LoadedModules {
        env: Arc::new(env),
        subnet: m.subnet,
        policy,
        cost,
    })
}
