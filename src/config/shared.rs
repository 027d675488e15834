//! Sections shared by the router and host files: level, `[tls]`, the level
//! above, `[session]`, `[stats]`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use router_core::policy::Level;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use signaling::{HandshakeLimits, NodeName, PeerConfig, TlsIdentity};

use super::files::{KeyPermissions, read_file, read_private};
use super::{Check, ConfigError, MAX_PEM_BYTES};

/// `level = "network" | "system" | "site"`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum LevelName {
    Network,
    System,
    Site,
}

impl From<LevelName> for Level {
    fn from(l: LevelName) -> Self {
        match l {
            LevelName::Network => Self::Network,
            LevelName::System => Self::System,
            LevelName::Site => Self::Site,
        }
    }
}

/// `[tls]`: our identity and whom we trust.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TlsFile {
    /// CA certificates (PEM) a peer's chain must reach; at least one.
    trust_anchors: Vec<PathBuf>,
    /// Our certificate chain, PEM, end-entity first.
    cert: PathBuf,
    /// Our private key, PKCS#8 (or SEC1/PKCS#1) PEM.
    key: PathBuf,
}

/// `[security]`: how private key files are judged.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct SecurityFile {
    /// A private key file its group or others may read: `"warn"` (default) or
    /// `"refuse"`.
    pub(super) key_permissions: KeyPermissions,
}

/// The TLS files, resolved; loaded when the daemon starts.
#[derive(Debug, Clone)]
pub(crate) struct TlsFiles {
    /// CA certificates.
    pub(crate) trust_anchors: Vec<PathBuf>,
    /// Our chain.
    pub(crate) cert: PathBuf,
    /// Our key.
    pub(crate) key: PathBuf,
    /// `[security] key_permissions`, for every private key file of the daemon.
    pub(crate) key_permissions: KeyPermissions,
}

impl TlsFiles {
    pub(super) fn from_file(
        c: &Check<'_>,
        t: &TlsFile,
        security: &SecurityFile,
    ) -> Result<Self, ConfigError> {
        if t.trust_anchors.is_empty() {
            return Err(c.err(
                "tls.trust_anchors",
                "name at least one CA certificate; refusing to run unauthenticated",
            ));
        }
        Ok(Self {
            trust_anchors: t.trust_anchors.iter().map(|p| c.resolve(p)).collect(),
            cert: c.resolve(&t.cert),
            key: c.resolve(&t.key),
            key_permissions: security.key_permissions,
        })
    }

    /// Read and parse the PEM files, and check that the key is the
    /// certificate's; errors name the field and the file.
    pub(crate) fn load(&self) -> anyhow::Result<(TlsIdentity, Vec<CertificateDer<'static>>)> {
        let anchors = load_anchors("tls.trust_anchors", &self.trust_anchors)?;
        let identity = load_identity(
            ("tls.cert", &self.cert),
            ("tls.key", &self.key),
            self.key_permissions,
        )?;
        Ok((identity, anchors))
    }
}

/// The CA certificates of the PEM files `paths` (`field` names them in
/// errors); each file holds at least one.
pub(crate) fn load_anchors(
    field: &str,
    paths: &[PathBuf],
) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    use anyhow::Context;
    let mut anchors = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        let field = format!("{field}[{i}]");
        let bytes = read_file(p, MAX_PEM_BYTES).with_context(|| field.clone())?;
        let before = anchors.len();
        for c in CertificateDer::pem_slice_iter(&bytes) {
            anchors.push(c.with_context(|| format!("{field}: bad PEM in {}", p.display()))?);
        }
        if anchors.len() == before {
            anyhow::bail!("{field}: no certificate in {}", p.display());
        }
    }
    Ok(anchors)
}

/// A certificate chain and its private key from PEM files, given as (field,
/// path); the key file is judged by `permissions`, and must be the private key
/// of the chain's first certificate (another node's key is refused here, with
/// both files named, rather than by the TLS set-up).
pub(crate) fn load_identity(
    (cert_field, cert): (&str, &Path),
    (key_field, key): (&str, &Path),
    permissions: KeyPermissions,
) -> anyhow::Result<TlsIdentity> {
    use anyhow::Context;
    let bytes = read_file(cert, MAX_PEM_BYTES).context(cert_field.to_owned())?;
    let cert_chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{cert_field}: bad PEM in {}", cert.display()))?;
    if cert_chain.is_empty() {
        anyhow::bail!("{cert_field}: no certificate in {}", cert.display());
    }
    let bytes = read_private(key, MAX_PEM_BYTES, permissions).context(key_field.to_owned())?;
    let key_der = PrivateKeyDer::from_pem_slice(&bytes)
        .with_context(|| format!("{key_field}: no private key in {}", key.display()))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key_der.clone_key())
        .with_context(|| format!("{key_field}: {} is not a usable private key", key.display()))?;
    match rustls::sign::CertifiedKey::new(cert_chain.clone(), signing).keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(_)) => anyhow::bail!(
            "{key_field}: {} is not the private key of {cert_field} {} (another node's key?); \
             give the key issued with that certificate",
            key.display(),
            cert.display()
        ),
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "{cert_field}: {} is not a usable certificate",
                    cert.display()
                )
            });
        }
    }
    Ok(TlsIdentity {
        cert_chain,
        key: key_der,
    })
}

/// The advertisement keys of `path` (`field` names it in errors), a secret
/// file judged by `permissions`.
pub(crate) fn read_advert_keys(
    field: &str,
    path: &Path,
    permissions: KeyPermissions,
) -> anyhow::Result<Vec<signaling::recovery::AdvertKey>> {
    use anyhow::Context;
    let limit = signaling::recovery::MAX_KEY_FILE_LEN as u64;
    let bytes = read_private(path, limit, permissions).context(field.to_owned())?;
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("{field}: {} is not UTF-8 text", path.display()))?;
    signaling::parse_advert_keys(&text).with_context(|| format!("{field}: {}", path.display()))
}

/// `[upstream]` (router) or `[site]` (host): the level above.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UpstreamFile {
    /// Its signalling address.
    address: SocketAddr,
    /// The name its certificate must carry.
    name: String,
    /// First reconnect delay (doubles up to 8 s).
    #[serde(default = "default_reconnect_ms")]
    reconnect_ms: u64,
    /// Its tunnel endpoint, when not its signalling address.
    tunnel: Option<IpAddr>,
}

fn default_reconnect_ms() -> u64 {
    250
}

/// The level above, validated.
#[derive(Debug, Clone)]
pub(crate) struct Upstream {
    /// Signalling address.
    pub(crate) address: SocketAddr,
    /// Expected certificate name.
    pub(crate) name: NodeName,
    /// First reconnect delay.
    pub(crate) reconnect: Duration,
    /// Its tunnel endpoint, when not its signalling address.
    pub(crate) tunnel: Option<IpAddr>,
}

impl Upstream {
    pub(super) fn from_file(
        c: &Check<'_>,
        section: &str,
        u: &UpstreamFile,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            tunnel: u.tunnel,
            address: u.address,
            name: c.name(&format!("{section}.name"), &u.name)?,
            reconnect: Duration::from_millis(c.range(
                &format!("{section}.reconnect_ms"),
                u.reconnect_ms,
                10,
                60_000,
            )?),
        })
    }
}

/// `[session]`: signalling timers.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct SessionFile {
    keepalive_ms: u64,
    dead_ms: u64,
    hello_timeout_ms: u64,
}

impl Default for SessionFile {
    fn default() -> Self {
        Self {
            keepalive_ms: 1000,
            dead_ms: 3000,
            hello_timeout_ms: 5000,
        }
    }
}

impl SessionFile {
    pub(super) fn peer(&self, c: &Check<'_>) -> Result<PeerConfig, ConfigError> {
        let keepalive = c.range("session.keepalive_ms", self.keepalive_ms, 50, 600_000)?;
        let dead = c.range("session.dead_ms", self.dead_ms, 100, 3_600_000)?;
        if dead <= keepalive {
            return Err(c.err(
                "session.dead_ms",
                format!("{dead} must exceed session.keepalive_ms ({keepalive})"),
            ));
        }
        let hello = c.range(
            "session.hello_timeout_ms",
            self.hello_timeout_ms,
            100,
            600_000,
        )?;
        Ok(PeerConfig {
            keepalive_interval: Duration::from_millis(keepalive),
            dead_interval: Duration::from_millis(dead),
            hello_timeout: Duration::from_millis(hello),
            ..PeerConfig::default()
        })
    }
}

/// Bounds on the TLS handshakes a listener runs at once: `[handshakes]` for
/// signalling, `handshake_*` keys of `[management]`.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct HandshakesFile {
    pub(super) timeout_ms: u64,
    pub(super) max_pending: usize,
    pub(super) max_pending_per_source: usize,
}

impl Default for HandshakesFile {
    fn default() -> Self {
        let d = HandshakeLimits::default();
        Self {
            timeout_ms: u64::try_from(d.timeout.as_millis()).unwrap_or(u64::MAX),
            max_pending: d.max_pending,
            max_pending_per_source: d.max_pending_per_source,
        }
    }
}

impl HandshakesFile {
    /// Checked limits; `field` names the keys in errors (e.g. `handshakes.`).
    pub(super) fn limits(
        &self,
        c: &Check<'_>,
        field: &str,
    ) -> Result<HandshakeLimits, ConfigError> {
        let timeout = c.range(&format!("{field}timeout_ms"), self.timeout_ms, 50, 60_000)?;
        let max_pending = c.range(&format!("{field}max_pending"), self.max_pending, 1, 65_536)?;
        let per_source = c.range(
            &format!("{field}max_pending_per_source"),
            self.max_pending_per_source,
            1,
            max_pending,
        )?;
        Ok(HandshakeLimits {
            timeout: Duration::from_millis(timeout),
            max_pending,
            max_pending_per_source: per_source,
        })
    }
}

/// `[stats]`: a counters snapshot written periodically.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StatsFile {
    file: PathBuf,
    #[serde(default = "default_stats_ms")]
    interval_ms: u64,
}

fn default_stats_ms() -> u64 {
    500
}

/// Where and how often to write the counters snapshot.
#[derive(Debug, Clone)]
pub(crate) struct Stats {
    /// The file (replaced atomically).
    pub(crate) file: PathBuf,
    /// Interval.
    pub(crate) interval: Duration,
}

impl Stats {
    pub(super) fn from_file(c: &Check<'_>, s: &StatsFile) -> Result<Self, ConfigError> {
        Ok(Self {
            file: c.resolve(&s.file),
            interval: Duration::from_millis(c.range(
                "stats.interval_ms",
                s.interval_ms,
                20,
                3_600_000,
            )?),
        })
    }
}

/// `fast_path = "auto" | "bpf" | "userspace"` (routers and hosts).
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum FastPathName {
    #[default]
    Auto,
    Bpf,
    Userspace,
}

/// Which forwarding path a daemon uses, and where the programs attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FastPathChoice {
    /// `fast_path`.
    pub(crate) mode: router_core::linux::fastpath::FastPathMode,
    /// `fast_path_links` (empty: every Ethernet link of the namespace).
    pub(crate) links: Vec<String>,
}

impl FastPathChoice {
    pub(super) fn from_file(
        c: &Check<'_>,
        mode: FastPathName,
        links: &[String],
    ) -> Result<Self, ConfigError> {
        use router_core::linux::fastpath::FastPathMode;
        if links.len() > 64 {
            return Err(c.err("fast_path_links", "at most 64 links"));
        }
        let links = links
            .iter()
            .enumerate()
            .map(|(i, l)| c.tun_name(&format!("fast_path_links[{i}]"), l))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            mode: match mode {
                FastPathName::Auto => FastPathMode::Auto,
                FastPathName::Bpf => FastPathMode::Bpf,
                FastPathName::Userspace => FastPathMode::Userspace,
            },
            links,
        })
    }
}
