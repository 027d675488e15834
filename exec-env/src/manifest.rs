//! The module manifest: what a module says it is and what it asks for.
//!
//! Carried as TOML (the same text as `slr-policy-wasm/manifests/*.toml`) in the
//! module's `pronto.manifest` custom section and covered by the signature.

use serde::{Deserialize, Serialize};

/// Largest manifest accepted, in bytes (it is read before anything is verified).
pub const MAX_MANIFEST_LEN: usize = 16 * 1024;

/// What kind of module this is; decides which entry points the host looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModuleKind {
    /// Next-hop selection (`pronto_select`) and/or F/G (`pronto_cost`,
    /// `pronto_aggregate`).
    Policy,
    /// Packet rank computation for the queue manager.
    Scheduler,
    /// Service-specific signalling messages.
    Signaling,
}

/// A host capability a module may request; each grants host functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    /// `pronto.log`.
    Log,
    /// `pronto.now_ms`.
    Clock,
}

impl Capability {
    /// The name used in manifests and environment configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Log => "log",
            Self::Clock => "clock",
        }
    }
}

/// A module manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Module name (`[a-z0-9_-]{1,64}`).
    pub name: String,
    /// Semantic version.
    pub version: semver::Version,
    /// Module kind.
    pub kind: ModuleKind,
    /// Requested capabilities.
    #[serde(default)]
    pub capabilities: Vec<Capability>,
    /// For tenant modules: the virtual subnets (CIDR text) the module may govern.
    #[serde(default)]
    pub subnets: Vec<String>,
    /// Free text for operators.
    #[serde(default)]
    pub description: String,
}
