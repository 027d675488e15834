//! What each operation did: typed reports for operators, logs and the
//! management API.

use std::fmt;

use router_core::classify::VirtualSubnet;

use super::Version;
use super::bind::{BoundHandle, Role};

/// One version of a module as a report names it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VersionSummary {
    /// Semantic version.
    pub version: semver::Version,
    /// SHA-256 of the module file.
    pub digest: [u8; 32],
    /// Signer's subject.
    pub signer: String,
}

impl VersionSummary {
    pub(super) fn of(v: &Version) -> Self {
        Self {
            version: v.manifest.version.clone(),
            digest: v.digest,
            signer: v.signer.subject.clone(),
        }
    }
}

/// The version number, as logs and messages show a version.
impl fmt::Display for VersionSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.version.fmt(f)
    }
}

/// What [`super::Environment::load`] installed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoadReport {
    /// Environment.
    pub environment: String,
    /// Module name.
    pub name: String,
    /// The version now active.
    pub loaded: VersionSummary,
}

/// What [`super::Environment::swap`] replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SwapReport {
    /// Environment.
    pub environment: String,
    /// Module name.
    pub name: String,
    /// The version now active.
    pub active: VersionSummary,
    /// The version it replaced, now the previous one (rollback target).
    pub replaced: VersionSummary,
}

/// What [`super::Environment::install`] or [`super::Environment::publish`] did:
/// a load when `replaced` is `None`, else a swap.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InstallReport {
    /// Environment.
    pub environment: String,
    /// Module name.
    pub name: String,
    /// The version now active.
    pub active: VersionSummary,
    /// The version it replaced, if any.
    pub replaced: Option<VersionSummary>,
}

/// What [`super::Environment::rollback`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RollbackReport {
    /// Environment.
    pub environment: String,
    /// Module name.
    pub name: String,
    /// The version active again.
    pub active: VersionSummary,
    /// The version it replaced, now the previous one.
    pub replaced: VersionSummary,
}

/// What [`super::Environment::remove`] took out.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RemoveReport {
    /// Environment.
    pub environment: String,
    /// Module name.
    pub name: String,
    /// The version that was active.
    pub removed: VersionSummary,
    /// The previous version, removed with it.
    pub previous: Option<VersionSummary>,
    /// Bindings to the module: their handles now answer `Unavailable`, so the
    /// engine uses its built-in policy there until the name is loaded again.
    pub bindings: Vec<Binding>,
}

/// A module governing a subnet prefix in a role.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Binding {
    /// The subnet prefix.
    pub subnet: VirtualSubnet,
    /// What the module does for it.
    pub role: Role,
    /// Module name.
    pub module: String,
}

impl Binding {
    /// `module` governing `subnet` in `role` (as a state file records it).
    pub fn new(subnet: VirtualSubnet, role: Role, module: impl Into<String>) -> Self {
        Self {
            subnet,
            role,
            module: module.into(),
        }
    }
}

/// What [`super::Environment::bind`] did, with the handle the engine uses.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BindReport {
    /// Environment.
    pub environment: String,
    /// The binding now in place.
    pub binding: Binding,
    /// The module's active version at the time of binding (the handle follows
    /// later swaps).
    pub version: VersionSummary,
    /// The module bound to the same subnet and role before, if another one.
    pub replaced: Option<String>,
    /// The handle to give the engine.
    pub handle: BoundHandle,
}
