//! `[modules]`: signed policy modules loaded at start, the bindings the
//! configuration starts with, and where runtime changes are kept.

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
            state_dir: m.state_dir.as_deref().map_or_else(
                || c.resolve(Path::new(&c.state_dir_name())),
                |p| c.resolve(p),
            ),
        })
    }
}
