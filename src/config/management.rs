//! `[management]`: the operators' HTTPS API (src/mgmt.rs).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::shared::{HandshakesFile, TlsFiles};
use super::{Check, ConfigError};

/// `[management]`: the management API over mutual TLS.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ManagementFile {
    listen: SocketAddr,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    trust_anchors: Option<Vec<PathBuf>>,
    #[serde(default = "default_mgmt_connections")]
    max_connections: usize,
    #[serde(default = "default_mgmt_timeout_ms")]
    request_timeout_ms: u64,
    #[serde(default)]
    handshakes: HandshakesFile,
    #[serde(default)]
    operators: Vec<String>,
    #[serde(default)]
    viewers: Vec<String>,
}

/// Most names in `operators` plus `viewers`.
const MAX_ROLE_NAMES: usize = 256;

fn default_mgmt_connections() -> usize {
    64
}

fn default_mgmt_timeout_ms() -> u64 {
    30_000
}

/// A validated `[management]` section; TLS files default to `[tls]`'s.
#[derive(Debug, Clone)]
pub(crate) struct Management {
    /// Where the API listens.
    pub(crate) listen: SocketAddr,
    /// Server certificate chain, PEM.
    pub(crate) cert: PathBuf,
    /// Server key, PEM.
    pub(crate) key: PathBuf,
    /// `[security] key_permissions`, for `key`.
    pub(crate) key_permissions: super::KeyPermissions,
    /// CA certificates a client's certificate must chain to.
    pub(crate) trust_anchors: Vec<PathBuf>,
    /// Requests served at once (after their handshake); more wait for a slot
    /// within their request deadline.
    pub(crate) max_connections: usize,
    /// Longest one request may take once the handshake is done.
    pub(crate) request_timeout: Duration,
    /// `[management.handshakes]`: the TLS handshake's own deadline and the bounds
    /// on handshakes in progress, in total and per source address.
    pub(crate) handshakes: signaling::HandshakeLimits,
    /// Certificate names (dNSName SANs) granted the operator role on this
    /// router, whatever role their certificate carries.
    pub(crate) operators: Vec<String>,
    /// Certificate names granted the viewer role (queries only).
    pub(crate) viewers: Vec<String>,
}

impl Management {
    pub(super) fn from_file(
        c: &Check<'_>,
        m: &ManagementFile,
        tls: &TlsFiles,
    ) -> Result<Self, ConfigError> {
        let trust_anchors = match &m.trust_anchors {
            Some(a) if a.is_empty() => {
                return Err(c.err(
                    "management.trust_anchors",
                    "name at least one CA certificate, or omit the key to use tls.trust_anchors",
                ));
            }
            Some(a) => a.iter().map(|p| c.resolve(p)).collect(),
            None => tls.trust_anchors.clone(),
        };
        if m.operators.len() + m.viewers.len() > MAX_ROLE_NAMES {
            return Err(c.err(
                "management.operators",
                "name at most 256 certificates in operators and viewers together; issue role \
                 certificates instead (`pronto ca issue-peer --role operator|viewer`)",
            ));
        }
        for (field, list) in [
            ("management.operators", &m.operators),
            ("management.viewers", &m.viewers),
        ] {
            if let Some(bad) = list
                .iter()
                .find(|n| rustls_pki_types::DnsName::try_from(n.as_str()).is_err())
            {
                let bad: String = bad.chars().take(80).collect();
                return Err(c.err(
                    field,
                    format!(
                        "{bad:?} is not a DNS name; each entry is a client certificate's dNSName \
                         SAN (the --name given to `pronto ca issue-peer`)"
                    ),
                ));
            }
        }
        Ok(Self {
            operators: m.operators.iter().map(|n| n.to_ascii_lowercase()).collect(),
            viewers: m.viewers.iter().map(|n| n.to_ascii_lowercase()).collect(),
            listen: m.listen,
            cert: m
                .cert
                .as_ref()
                .map_or_else(|| tls.cert.clone(), |p| c.resolve(p)),
            key: m
                .key
                .as_ref()
                .map_or_else(|| tls.key.clone(), |p| c.resolve(p)),
            key_permissions: tls.key_permissions,
            trust_anchors,
            max_connections: c.range("management.max_connections", m.max_connections, 1, 1024)?,
            request_timeout: Duration::from_millis(c.range(
                "management.request_timeout_ms",
                m.request_timeout_ms,
                100,
                600_000,
            )?),
            handshakes: m.handshakes.limits(c, "management.handshakes.")?,
        })
    }
}
