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
}

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
        Ok(Self {
            listen: m.listen,
            cert: m
                .cert
                .as_ref()
                .map_or_else(|| tls.cert.clone(), |p| c.resolve(p)),
            key: m
                .key
                .as_ref()
                .map_or_else(|| tls.key.clone(), |p| c.resolve(p)),
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
