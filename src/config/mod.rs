//! Configuration files of the daemons (`pronto router run`, `pronto host run`).
//!
//! TOML with unknown keys refused (`deny_unknown_fields`); every value is checked
//! before anything starts, and an error names the file and the field
//! (`tunnel.mtu`, `downstream[1].route_cost`, ...). Relative paths are relative to
//! the configuration file's directory.

use std::path::{Path, PathBuf};

use router_core::VirtualSubnet;
use serde::Deserialize;
use signaling::NodeName;

mod files;
mod host;
mod management;
mod modules;
mod router;
mod scheduler;
mod shaping;
mod shared;
#[cfg(test)]
mod tests;

pub(crate) use files::{FileError, KeyPermissions, read_file};
pub(crate) use host::{HostDaemonConfig, HostRecovery, HttpDemo, LoadConfig, load_host};
pub(crate) use management::Management;
pub(crate) use modules::{ModulesConfig, TenantConfig};
pub(crate) use router::{PolicyName, RouterConfig, load_router};
pub(crate) use scheduler::{BuiltinRank, SchedulerConfig};
pub(crate) use shaping::Shaping;
pub(crate) use shared::{
    FastPathChoice, Stats, Upstream, load_anchors, load_identity, read_advert_keys,
};

/// Largest configuration file read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Largest PEM file read (a certificate chain or a key).
pub(crate) const MAX_PEM_BYTES: u64 = 1 << 20;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    /// The file could not be read (absent, not a regular file, too large).
    #[error(transparent)]
    Read(#[from] FileError),
    /// Not valid TOML, an unknown key, or a value of the wrong type (the message
    /// names the key and the line).
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        #[source]
        source: toml::de::Error,
    },
    /// A value out of range or inconsistent with another.
    #[error("{path}: {field}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The field, as a TOML path.
        field: String,
        /// What is wrong and what to do.
        reason: String,
    },
}

/// Collects the file name into every error of one validation.
struct Check<'a> {
    path: &'a Path,
}

impl Check<'_> {
    fn err(&self, field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            field: field.into(),
            reason: reason.into(),
        }
    }

    fn name(&self, field: &str, s: &str) -> Result<NodeName, ConfigError> {
        NodeName::new(s).map_err(|e| self.err(field, e.to_string()))
    }

    fn subnet(&self, field: &str, s: &str) -> Result<VirtualSubnet, ConfigError> {
        s.parse::<VirtualSubnet>()
            .map_err(|e| self.err(field, format!("{e} (write ADDR/LEN with host bits clear)")))
    }

    fn cost(&self, field: &str, v: f64) -> Result<f64, ConfigError> {
        if v.is_finite() && v >= 0.0 {
            Ok(v)
        } else {
            Err(self.err(field, format!("{v} must be finite and non-negative")))
        }
    }

    fn range<T: PartialOrd + std::fmt::Display + Copy>(
        &self,
        field: &str,
        v: T,
        lo: T,
        hi: T,
    ) -> Result<T, ConfigError> {
        if v < lo || v > hi {
            Err(self.err(field, format!("{v} is outside {lo}..={hi}")))
        } else {
            Ok(v)
        }
    }

    /// `<config stem>.state`: the default place of runtime state.
    fn state_dir_name(&self) -> String {
        let stem = self
            .path
            .file_stem()
            .map_or_else(|| "pronto".into(), |s| s.to_string_lossy());
        format!("{stem}.state")
    }

    fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.path
                .parent()
                .map_or_else(|| p.to_owned(), |d| d.join(p))
        }
    }

    fn tun_name(&self, field: &str, s: &str) -> Result<String, ConfigError> {
        let ok = !s.is_empty()
            && s.len() <= 15
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(s.to_owned())
        } else {
            Err(self.err(
                field,
                format!("{s:?} is not an interface name (1-15 of [A-Za-z0-9_-])"),
            ))
        }
    }
}

fn parse_file<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ConfigError> {
    let bytes = read_file(path, MAX_CONFIG_BYTES)?;
    let text = String::from_utf8(bytes).map_err(|_| ConfigError::Invalid {
        path: path.to_owned(),
        field: "(file)".into(),
        reason: "not UTF-8 text".into(),
    })?;
    parse_str(path, &text)
}

fn parse_str<T: for<'de> Deserialize<'de>>(path: &Path, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// Validate a router configuration given as text (`path` names it in errors).
#[cfg(test)]
pub(crate) fn parse_router_text(path: &Path, text: &str) -> Result<RouterConfig, ConfigError> {
    router::router_from_file(path, parse_str(path, text)?)
}

/// Validate a host configuration given as text (`path` names it in errors).
#[cfg(test)]
pub(crate) fn parse_host_text(path: &Path, text: &str) -> Result<HostDaemonConfig, ConfigError> {
    host::host_from_file(path, parse_str(path, text)?)
}
