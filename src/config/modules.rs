//! `[modules]`: signed policy modules loaded at start, the bindings the
//! configuration starts with, and where runtime changes are kept; and
//! `[[environment]]`: tenant environments beside the operator's.

use std::path::{Path, PathBuf};

use router_core::VirtualSubnet;
use serde::Deserialize;

use super::{Check, ConfigError};

/// `[modules]`: signed policy modules loaded into an operator environment.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ModulesFile {
    trust_anchors: Vec<PathBuf>,
    #[serde(default)]
    crls: Vec<PathBuf>,
    #[serde(default)]
    files: Vec<PathBuf>,
    subnet: Option<String>,
    policy: Option<String>,
    cost: Option<String>,
    scheduler: Option<String>,
    state_dir: Option<PathBuf>,
}

/// Most module files loaded at start.
const MAX_MODULE_FILES: usize = 64;
/// Most CRL files (each may hold several CRLs; the environment caps the total).
const MAX_CRL_FILES: usize = 16;

/// Signed modules to load at start, validated.
#[derive(Debug, Clone)]
pub(crate) struct ModulesConfig {
    /// CA certificates module signers must chain to.
    pub(crate) trust_anchors: Vec<PathBuf>,
    /// CRLs (PEM) of those CAs (`pronto ca revoke` writes one): a module whose
    /// signer is revoked is refused, at start and by `pronto module load`.
    pub(crate) crls: Vec<PathBuf>,
    /// Signed module files, installed in order (a later version of a name
    /// replaces an earlier one).
    pub(crate) files: Vec<PathBuf>,
    /// The virtual subnet `policy` and `cost` are bound to (when either is set).
    pub(crate) subnet: Option<VirtualSubnet>,
    /// Module choosing next hops for new flows in `subnet`.
    pub(crate) policy: Option<String>,
    /// Module computing F and G of the table's subnets within `subnet`.
    pub(crate) cost: Option<String>,
    /// Scheduler module ranking the `[scheduler]` stage's link.
    pub(crate) scheduler: Option<String>,
    /// Where the router keeps what operators changed at runtime (modules
    /// loaded or swapped, bindings), so a restart keeps it; default
    /// `<config stem>.state` beside the configuration file.
    pub(crate) state_dir: PathBuf,
}

impl ModulesConfig {
    pub(super) fn from_file(c: &Check<'_>, m: &ModulesFile) -> Result<Self, ConfigError> {
        if m.trust_anchors.is_empty() {
            return Err(c.err(
                "modules.trust_anchors",
                "name at least one CA certificate of module signers (modules are refused without)",
            ));
        }
        if m.crls.len() > MAX_CRL_FILES {
            return Err(c.err("modules.crls", format!("at most {MAX_CRL_FILES} CRL files")));
        }
        if m.files.len() > MAX_MODULE_FILES {
            return Err(c.err(
                "modules.files",
                format!("give at most {MAX_MODULE_FILES} signed module files"),
            ));
        }
        let name = |field: &str, v: &Option<String>| -> Result<Option<String>, ConfigError> {
            match v {
                Some(n) if n.is_empty() || n.len() > 64 => {
                    Err(c.err(field, format!("{n:?} is not a module name (1-64 bytes)")))
                }
                other => Ok(other.clone()),
            }
        };
        let policy = name("modules.policy", &m.policy)?;
        let cost = name("modules.cost", &m.cost)?;
        let scheduler = name("modules.scheduler", &m.scheduler)?;
        let subnet = m
            .subnet
            .as_deref()
            .map(|s| c.subnet("modules.subnet", s))
            .transpose()?;
        if subnet.is_none() && (policy.is_some() || cost.is_some()) {
            return Err(c.err(
                "modules.subnet",
                "name the virtual subnet `policy` and `cost` are bound to",
            ));
        }
        Ok(Self {
            trust_anchors: m.trust_anchors.iter().map(|p| c.resolve(p)).collect(),
            crls: m.crls.iter().map(|p| c.resolve(p)).collect(),
            files: m.files.iter().map(|p| c.resolve(p)).collect(),
            subnet,
            policy,
            cost,
            scheduler,
            state_dir: m.state_dir.as_deref().map_or_else(
                || c.resolve(Path::new(&c.state_dir_name())),
                |p| c.resolve(p),
            ),
        })
    }
}

/// `[[environment]]`: a tenant environment.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EnvironmentFile {
    name: String,
    trust_anchors: Vec<PathBuf>,
    #[serde(default)]
    crls: Vec<PathBuf>,
    subnets: Vec<String>,
    #[serde(default = "default_weight")]
    cpu_weight: u32,
    #[serde(default)]
    files: Vec<PathBuf>,
    state_dir: Option<PathBuf>,
}

fn default_weight() -> u32 {
    1
}

/// Most tenant environments in one router.
const MAX_ENVIRONMENTS: usize = 16;

/// A tenant environment, validated: modules signed by its own CAs, governing
/// only its subnets, on its share of the modules' CPU.
#[derive(Debug, Clone)]
pub(crate) struct TenantConfig {
    /// Its name (`[a-z0-9_-]`, not `operator`).
    pub(crate) name: String,
    /// CA certificates its module signers must chain to.
    pub(crate) trust_anchors: Vec<PathBuf>,
    /// CRLs of those CAs.
    pub(crate) crls: Vec<PathBuf>,
    /// The subnets its modules may govern (a module also needs its manifest and
    /// its signer's certificate to name them).
    pub(crate) subnets: Vec<VirtualSubnet>,
    /// Its CPU weight among the environments (the operator's is 1).
    pub(crate) cpu_weight: u32,
    /// Signed module files installed at start.
    pub(crate) files: Vec<PathBuf>,
    /// Its runtime state (default `<config stem>.state/env-NAME`).
    pub(crate) state_dir: PathBuf,
}

impl TenantConfig {
    pub(super) fn from_files(
        c: &Check<'_>,
        envs: &[EnvironmentFile],
    ) -> Result<Vec<Self>, ConfigError> {
        if envs.len() > MAX_ENVIRONMENTS {
            return Err(c.err(
                "environment",
                format!("at most {MAX_ENVIRONMENTS} environments"),
            ));
        }
        let mut out: Vec<Self> = Vec::new();
        for (i, e) in envs.iter().enumerate() {
            let t = Self::from_file(c, &format!("environment[{i}]"), e)?;
            if out.iter().any(|o| o.name == t.name) {
                return Err(c.err(format!("environment[{i}].name"), "names must be unique"));
            }
            // One owner per address: a tenant cannot bind into another's subnets.
            for o in &out {
                if let Some((a, b)) = t
                    .subnets
                    .iter()
                    .flat_map(|a| o.subnets.iter().map(move |b| (a, b)))
                    .find(|(a, b)| a.covers(b) || b.covers(a))
                {
                    return Err(c.err(
                        format!("environment[{i}].subnets"),
                        format!("{a} overlaps {b} of environment {}", o.name),
                    ));
                }
            }
            out.push(t);
        }
        Ok(out)
    }

    fn from_file(c: &Check<'_>, at: &str, e: &EnvironmentFile) -> Result<Self, ConfigError> {
        let valid = (1..=64).contains(&e.name.len())
            && e.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
            && e.name != "operator";
        if !valid {
            return Err(c.err(
                format!("{at}.name"),
                format!("{:?}: 1-64 of [a-z0-9_-], not \"operator\"", e.name),
            ));
        }
        if e.trust_anchors.is_empty() {
            return Err(c.err(
                format!("{at}.trust_anchors"),
                "name the CA certificate(s) of this tenant's module signers",
            ));
        }
        if e.crls.len() > MAX_CRL_FILES || e.files.len() > MAX_MODULE_FILES {
            return Err(c.err(
                at,
                format!("at most {MAX_CRL_FILES} crls and {MAX_MODULE_FILES} files"),
            ));
        }
        if e.subnets.is_empty() {
            return Err(c.err(
                format!("{at}.subnets"),
                "name the subnets this tenant's modules may govern",
            ));
        }
        let subnets = e
            .subnets
            .iter()
            .enumerate()
            .map(|(j, s)| c.subnet(&format!("{at}.subnets[{j}]"), s))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            name: e.name.clone(),
            trust_anchors: e.trust_anchors.iter().map(|p| c.resolve(p)).collect(),
            crls: e.crls.iter().map(|p| c.resolve(p)).collect(),
            subnets,
            cpu_weight: c.range(&format!("{at}.cpu_weight"), e.cpu_weight, 1, 1000)?,
            files: e.files.iter().map(|p| c.resolve(p)).collect(),
            state_dir: e.state_dir.as_deref().map_or_else(
                || c.resolve(&Path::new(&c.state_dir_name()).join(format!("env-{}", e.name))),
                |p| c.resolve(p),
            ),
        })
    }
}
