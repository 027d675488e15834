//! `[recovery]` and `[spare]` of a router's configuration, validated into
//! settings (each refusal names its field).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use signaling::NodeName;
use signaling::recovery::{AdvertAuthConfig, MirrorConfig, RateLimit, RecoveryConfig};

/// A refused value: the TOML path of the field and why.
#[derive(Debug)]
pub(crate) struct Invalid {
    /// The field, e.g. `recovery.neighbours[0].name`.
    pub(crate) field: String,
    /// What is wrong and what to do.
    pub(crate) reason: String,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
    field: &str,
    v: T,
    lo: T,
    hi: T,
) -> Result<T, Invalid> {
    if v < lo || v > hi {
        Err(invalid(field, format!("{v} is outside {lo}..={hi}")))
    } else {
        Ok(v)
    }
}

fn node_name(field: &str, s: &str) -> Result<NodeName, Invalid> {
    NodeName::new(s).map_err(|e| invalid(field, e.to_string()))
}

/// `[recovery]` of a router.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RecoveryFile {
    advert_keys: Option<PathBuf>,
    forward_unknown_to: Option<IpAddr>,
    neighbours: Vec<NeighbourFile>,
    spares: Vec<String>,
    local_addrs: Vec<IpAddr>,
    query_rate: u32,
    query_burst: u32,
    answer_rate: u32,
    answer_burst: u32,
    max_pending: usize,
    query_timeout_ms: u64,
    mirror_interval_ms: u64,
    mirror_scan_ms: u64,
    max_skew_ms: u64,
}

impl Default for RecoveryFile {
    fn default() -> Self {
        let r = RecoveryConfig::default();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Self {
            advert_keys: None,
            forward_unknown_to: None,
            neighbours: Vec::new(),
            spares: Vec::new(),
            local_addrs: Vec::new(),
            query_rate: r.query_rate.per_sec,
            query_burst: r.query_rate.burst,
            answer_rate: r.answer_rate.per_sec,
            answer_burst: r.answer_rate.burst,
            max_pending: r.max_pending,
            query_timeout_ms: ms(r.query_timeout),
            mirror_interval_ms: ms(MirrorConfig::default().interval),
            mirror_scan_ms: ms(MirrorConfig::default().scan_interval),
            max_skew_ms: ms(AdvertAuthConfig::default().max_skew),
        }
    }
}

/// `[[recovery.neighbours]]`: a same-level SLR asked by WHOHAS.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NeighbourFile {
    name: String,
    /// Dial it here; without: it dials us.
    address: Option<SocketAddr>,
    #[serde(default = "default_reconnect_ms")]
    reconnect_ms: u64,
}

fn default_reconnect_ms() -> u64 {
    250
}

/// A WHOHAS neighbour, validated.
#[derive(Debug, Clone)]
pub(crate) struct Neighbour {
    /// The name its certificate carries.
    pub(crate) name: NodeName,
    /// Where to dial it (None: it dials us).
    pub(crate) address: Option<SocketAddr>,
    /// First reconnect delay.
    pub(crate) reconnect: Duration,
}

/// `[recovery]`, validated.
#[derive(Debug, Clone)]
pub(crate) struct RecoverySettings {
    /// The trust domain's advertisement key file (None: adverts are dropped, counted).
    pub(crate) advert_keys: Option<PathBuf>,
    /// Tunnel-entry router: also send each `Recover` packet to this SLR.
    pub(crate) forward_unknown_to: Option<IpAddr>,
    /// WHOHAS neighbours.
    pub(crate) neighbours: Vec<Neighbour>,
    /// Names allowed to register here as hot spares.
    pub(crate) spares: Vec<NodeName>,
    /// Further addresses of this router (answers pointing at them are refused).
    pub(crate) local_addrs: Vec<IpAddr>,
    /// Query and answer limits.
    pub(crate) limits: RecoveryConfig,
    /// Mirroring toward the spares.
    pub(crate) mirror: MirrorConfig,
    /// Largest advertisement clock skew accepted.
    pub(crate) max_skew: Duration,
}

/// Validate `[recovery]`; `resolve` makes a path relative to the config file.
pub(crate) fn recovery_settings(
    f: &RecoveryFile,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<RecoverySettings, Invalid> {
    if f.neighbours.len() > signaling::recovery::MAX_NEIGHBOURS {
        return Err(invalid(
            "recovery.neighbours",
            format!("at most {} neighbours", signaling::recovery::MAX_NEIGHBOURS),
        ));
    }
    let mut neighbours = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, n) in f.neighbours.iter().enumerate() {
        let name = node_name(&format!("recovery.neighbours[{i}].name"), &n.name)?;
        if !seen.insert(name.clone()) {
            return Err(invalid(
                format!("recovery.neighbours[{i}].name"),
                format!("{name} is listed twice"),
            ));
        }
        neighbours.push(Neighbour {
            name,
            address: n.address,
            reconnect: Duration::from_millis(in_range(
                &format!("recovery.neighbours[{i}].reconnect_ms"),
                n.reconnect_ms,
                10,
                60_000,
            )?),
        });
    }
    if f.spares.len() > signaling::recovery::MAX_SPARES {
        return Err(invalid(
            "recovery.spares",
            format!("at most {} spares", signaling::recovery::MAX_SPARES),
        ));
    }
    let spares = f
        .spares
        .iter()
        .enumerate()
        .map(|(i, s)| node_name(&format!("recovery.spares[{i}]"), s))
        .collect::<Result<Vec<_>, _>>()?;
    if f.local_addrs.len() > signaling::recovery::MAX_LOCAL_ADDRS / 2 {
        return Err(invalid(
            "recovery.local_addrs",
            format!(
                "at most {} addresses",
                signaling::recovery::MAX_LOCAL_ADDRS / 2
            ),
        ));
    }
    if let Some(a) = f
        .forward_unknown_to
        .filter(|a| a.is_unspecified() || a.is_multicast() || a.is_loopback())
    {
        return Err(invalid(
            "recovery.forward_unknown_to",
            format!("{a} is not the unicast tunnel endpoint of an SLR"),
        ));
    }
    let limits = RecoveryConfig {
        query_rate: RateLimit {
            per_sec: in_range("recovery.query_rate", f.query_rate, 1, 1_000_000)?,
            burst: in_range("recovery.query_burst", f.query_burst, 1, 1_000_000)?,
        },
        answer_rate: RateLimit {
            per_sec: in_range("recovery.answer_rate", f.answer_rate, 1, 1_000_000)?,
            burst: in_range("recovery.answer_burst", f.answer_burst, 1, 1_000_000)?,
        },
        max_pending: in_range("recovery.max_pending", f.max_pending, 1, 1 << 20)?,
        query_timeout: Duration::from_millis(in_range(
            "recovery.query_timeout_ms",
            f.query_timeout_ms,
            10,
            60_000,
        )?),
    };
    let mirror = MirrorConfig {
        interval: Duration::from_millis(in_range(
            "recovery.mirror_interval_ms",
            f.mirror_interval_ms,
            10,
            60_000,
        )?),
        // New flows reach the spare at once (new-flow notices) but as
        // half-open; the scan carries their later state (established), without
        // which the spare's SYN timeout may expire them before a failover.
        scan_interval: Duration::from_millis(in_range(
            "recovery.mirror_scan_ms",
            f.mirror_scan_ms,
            50,
            600_000,
        )?),
        ..MirrorConfig::default()
    };
    Ok(RecoverySettings {
        advert_keys: f.advert_keys.as_deref().map(resolve),
        forward_unknown_to: f.forward_unknown_to,
        neighbours,
        spares,
        local_addrs: f.local_addrs.clone(),
        limits,
        mirror,
        max_skew: Duration::from_millis(in_range(
            "recovery.max_skew_ms",
            f.max_skew_ms,
            100,
            3_600_000,
        )?),
    })
}

/// `[spare]`: this router is the hot spare of `primary`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SpareFile {
    primary: String,
    address: SocketAddr,
    interface: String,
    take_over: Vec<String>,
    #[serde(default = "default_dead_after_ms")]
    dead_after_ms: u64,
    #[serde(default = "default_reconnect_ms")]
    reconnect_ms: u64,
}

fn default_dead_after_ms() -> u64 {
    1500
}

/// `[spare]`, validated.
#[derive(Debug, Clone)]
pub(crate) struct SpareSettings {
    /// The primary's name (its certificate; we register upstream under it).
    pub(crate) primary: NodeName,
    /// The primary's signalling address.
    pub(crate) address: SocketAddr,
    /// The link the primary's addresses are added to.
    pub(crate) interface: String,
    /// The primary's addresses with their prefix lengths.
    pub(crate) take_over: Vec<(IpAddr, u8)>,
    /// Silence after which the primary is declared dead and the spare takes
    /// over at once: the dead interval of its session to the primary, which
    /// asks the primary for keepalives every third of it (three missed ones).
    pub(crate) dead_after: Duration,
    /// First reconnect delay toward the primary.
    pub(crate) reconnect: Duration,
}

/// Validate `[spare]` (a spare needs `[upstream]`: it registers there on takeover).
pub(crate) fn spare_settings(f: &SpareFile, has_upstream: bool) -> Result<SpareSettings, Invalid> {
    if !has_upstream {
        return Err(invalid(
            "spare",
            "a spare registers with the primary's upper level on takeover: give [upstream]",
        ));
    }
    let iface_ok = !f.interface.is_empty()
        && f.interface.len() <= 15
        && f.interface
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !iface_ok {
        return Err(invalid(
            "spare.interface",
            format!("{:?} is not an interface name", f.interface),
        ));
    }
    if f.take_over.is_empty() || f.take_over.len() > 16 {
        return Err(invalid(
            "spare.take_over",
            "give 1..=16 addresses as ADDR/LEN",
        ));
    }
    let mut take_over = Vec::new();
    for (i, s) in f.take_over.iter().enumerate() {
        let field = format!("spare.take_over[{i}]");
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| invalid(&field, format!("{s:?}: write ADDR/LEN")))?;
        let a: IpAddr = a
            .parse()
            .map_err(|_| invalid(&field, format!("{a:?} is not an IP address")))?;
        let max = if a.is_ipv4() { 32 } else { 128 };
        let l: u8 =
            l.parse().ok().filter(|l| *l <= max).ok_or_else(|| {
                invalid(&field, format!("{l:?} is not a prefix length 0..={max}"))
            })?;
        take_over.push((a, l));
    }
    Ok(SpareSettings {
        primary: node_name("spare.primary", &f.primary)?,
        address: f.address,
        interface: f.interface.clone(),
        take_over,
        dead_after: Duration::from_millis(in_range(
            "spare.dead_after_ms",
            f.dead_after_ms,
            // Three of the shortest keepalive a spare may ask for.
            3 * u64::try_from(signaling::MIN_SPARE_KEEPALIVE.as_millis()).unwrap_or(50),
            600_000,
        )?),
        reconnect: Duration::from_millis(in_range(
            "spare.reconnect_ms",
            f.reconnect_ms,
            10,
            60_000,
        )?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_recovery(text: &str) -> Result<RecoverySettings, Invalid> {
        let f: RecoveryFile = toml::from_str(text).unwrap();
        recovery_settings(&f, &|p| Path::new("/etc/pronto").join(p))
    }

    #[test]
    fn recovery_settings_validate_and_name_the_field() {
        let ok = parse_recovery(
            "advert_keys = \"keys\"\nforward_unknown_to = \"10.0.0.1\"\nspares = [\"a.lab\"]\n\
             query_rate = 50\n[[neighbours]]\nname = \"sys2.lab\"\naddress = \"10.9.0.2:7800\"\n",
        )
        .unwrap();
        assert_eq!(ok.advert_keys, Some(PathBuf::from("/etc/pronto/keys")));
        assert_eq!(ok.limits.query_rate.per_sec, 50);
        assert_eq!(ok.neighbours[0].name.as_str(), "sys2.lab");
        assert_eq!(ok.spares.len(), 1);
        let field = |t: &str| parse_recovery(t).unwrap_err().field;
        assert_eq!(field("query_rate = 0\n"), "recovery.query_rate");
        assert_eq!(
            field("forward_unknown_to = \"0.0.0.0\"\n"),
            "recovery.forward_unknown_to"
        );
        assert_eq!(
            field("[[neighbours]]\nname = \"x.lab\"\n[[neighbours]]\nname = \"x.lab\"\n"),
            "recovery.neighbours[1].name"
        );
        assert_eq!(field("spares = [\"\"]\n"), "recovery.spares[0]");
    }

    #[test]
    fn spare_settings_validate_and_name_the_field() {
        let f = |t: &str| -> SpareFile { toml::from_str(t).unwrap() };
        let base = "primary = \"site-a.lab\"\naddress = \"10.1.0.2:7800\"\ninterface = \"up\"\n";
        let s = spare_settings(
            &f(&format!(
                "{base}take_over = [\"10.1.0.2/24\", \"fd00::1/64\"]\n"
            )),
            true,
        )
        .unwrap();
        assert_eq!(s.take_over[0], ("10.1.0.2".parse().unwrap(), 24));
        assert_eq!(s.take_over[1].1, 64);
        assert_eq!(s.dead_after, Duration::from_millis(1500));
        let e = |t: &str, up| {
            spare_settings(&f(&format!("{base}{t}")), up)
                .unwrap_err()
                .field
        };
        assert_eq!(e("take_over = [\"10.1.0.2/24\"]\n", false), "spare");
        assert_eq!(e("take_over = []\n", true), "spare.take_over");
        assert_eq!(
            e("take_over = [\"10.1.0.2\"]\n", true),
            "spare.take_over[0]"
        );
        assert_eq!(
            e("take_over = [\"10.1.0.2/33\"]\n", true),
            "spare.take_over[0]"
        );
        assert_eq!(
            e("take_over = [\"10.1.0.2/24\"]\ndead_after_ms = 1\n", true),
            "spare.dead_after_ms"
        );
    }
}
