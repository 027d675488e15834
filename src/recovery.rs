//! Failure recovery in the router daemon (DESIGN.md §5): configuration and the
//! shell's part. The mechanisms themselves are the node's
//! (`signaling::node`): WHOHAS and state re-creation, flow advertisements
//! (verified on the dataplane thread, where they arrive), mirroring to a hot
//! spare and the spare's failover. Here: `[recovery]` and `[spare]` validated
//! and turned into the node's parts ([`configure_node`]), the sessions to
//! neighbours and the primary ([`start_sessions`]), the takeover of the
//! primary's addresses (rtnetlink + gratuitous ARP, [`take_addresses`]) and the
//! counters of the stats snapshot ([`recovery_snapshot`]).

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use router_core::policy::Level;
use signaling::recovery::{AdvertAuth, AdvertAuthConfig, RecoveryScope};
use signaling::{Connector, DownReason, LocalNode, NodeName, Role, SessionId, TransportConfig};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

mod settings;

pub(crate) use settings::*;

use crate::config::RouterConfig;
use crate::router::shell::ShellInput;
use crate::router::{Direction, Input, SESSION_QUEUE, SessionCmd, drive_session};
use signaling::node::{NodeConfig, SpareConfig};

/// Gratuitous ARP rounds after a takeover (a lost announcement is repeated).
pub(crate) const ANNOUNCE_ROUNDS: u32 = 3;
/// Longest reconnect backoff of a neighbour or primary session.
const MAX_BACKOFF: Duration = Duration::from_secs(8);

// ----- the node's recovery parts, from the configuration ----------------------------

/// Fill the node's recovery parts from `[recovery]` and `[spare]`: the
/// advertisement keys (read now), mirroring toward listed spares, the spare's
/// failover, an entry router's SLR, and the WHOHAS scope.
pub(crate) fn configure_node(cfg: &RouterConfig, node: &mut NodeConfig) -> Result<()> {
    let rs = cfg.recovery.as_ref();
    node.advert_auth = match rs.and_then(|r| r.advert_keys.as_ref().map(|p| (r, p))) {
        Some((r, p)) => {
            let keys = crate::config::read_advert_keys(
                "recovery.advert_keys",
                p,
                cfg.tls.key_permissions,
            )?;
            let c = AdvertAuthConfig {
                max_skew: r.max_skew,
                ..AdvertAuthConfig::default()
            };
            Some(AdvertAuth::new(keys, c))
        }
        None => None,
    };
    node.mirror = rs.filter(|r| !r.spares.is_empty()).map(|r| r.mirror);
    node.forward_unknown_to = rs.and_then(|r| r.forward_unknown_to);
    node.spare = cfg.spare.as_ref().map(|s| SpareConfig {
        dead_after: s.dead_after,
        take_over: s.take_over.iter().map(|(a, _)| *a).collect(),
        // Bounded like the flow table it fills.
        mirror_capacity: cfg.dataplane.engine.flows.capacity_v4
            + cfg.dataplane.engine.flows.capacity_v6,
    });
    node.scope = Some(scope(cfg)?);
    node.unix_ms_at_zero = unix_ms();
    Ok(())
}

/// The WHOHAS scope of this router (neighbours, spares, own addresses, a
/// fresh query secret).
fn scope(cfg: &RouterConfig) -> Result<RecoveryScope> {
    let mut secret = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut secret))
        .context("reading /dev/urandom for the WHOHAS query secret")?;
    let rs = cfg.recovery.as_ref();
    let mut local: Vec<IpAddr> = [
        cfg.dataplane.engine.local_v4.map(IpAddr::V4),
        cfg.dataplane.engine.local_v6.map(IpAddr::V6),
        cfg.listen.map(|l| l.ip()).filter(|a| !a.is_unspecified()),
    ]
    .into_iter()
    .flatten()
    .chain(rs.iter().flat_map(|r| r.local_addrs.iter().copied()))
    .collect();
    local.sort();
    local.dedup();
    Ok(RecoveryScope {
        neighbours: rs
            .map(|r| r.neighbours.iter().map(|n| n.name.clone()).collect())
            .unwrap_or_default(),
        spares: rs.map(|r| r.spares.clone()).unwrap_or_default(),
        local_addrs: local,
        query_secret: secret,
    })
}

/// Wall-clock milliseconds now (the node's advertisement clock is this plus its
/// monotonic time, read once at start).
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Add the spare's takeover addresses and announce the IPv4 ones; false when
/// any step failed (logged).
pub(crate) fn take_addresses(spare: &SpareSettings, rt: &tokio::runtime::Handle) -> bool {
    let nl = match router_core::linux::Netlink::open_on(rt) {
        Ok(n) => n,
        Err(e) => {
            warn!(error = %e, "takeover: cannot open rtnetlink");
            return false;
        }
    };
    let index = match nl.link_index(&spare.interface) {
        Ok(i) => i,
        Err(e) => {
            warn!(link = %spare.interface, error = %e, "takeover: no such link");
            return false;
        }
    };
    let mut ok = true;
    for (a, len) in &spare.take_over {
        if let Err(e) = nl.add_address(index, *a, *len) {
            warn!(addr = %a, error = %e, "takeover: cannot add the address");
            ok = false;
        }
    }
    announce(spare) && ok
}

/// One gratuitous ARP per IPv4 takeover address.
pub(crate) fn announce(spare: &SpareSettings) -> bool {
    let mut ok = true;
    for (a, _) in &spare.take_over {
        if let IpAddr::V4(v4) = a
            && let Err(e) = router_core::linux::garp::announce_ipv4(&spare.interface, *v4)
        {
            warn!(addr = %a, error = %e, "takeover: gratuitous ARP failed");
            ok = false;
        }
    }
    ok
}

// ----- sessions ---------------------------------------------------------------------

/// Dial the configured neighbours, and with `[spare]` the primary (as
/// `Role::Spare`) and, once the takeover fires, the upper level under the
/// primary's name.
pub(crate) fn start_sessions(
    rt: &tokio::runtime::Runtime,
    cfg: &RouterConfig,
    adverts_on: bool,
    ids: &Arc<AtomicU64>,
    ctl: &mpsc::Sender<Input>,
) -> Result<Option<oneshot::Sender<()>>> {
    let connector = |role: Role| -> Result<Connector> {
        let (identity, anchors) = cfg.tls.load()?;
        let mut peer = cfg.peer;
        if let (Role::Spare, Some(s)) = (role, &cfg.spare) {
            // The session's end is the first sign of the primary's death.
            // Ask the primary for keepalives at a third of `dead_after` (it
            // adopts a spare's pace, down to `MIN_SPARE_KEEPALIVE`), so three
            // missed ones end the session after `dead_after`, not after three
            // of the primary's ordinary intervals.
            peer.dead_interval = peer.dead_interval.min(s.dead_after);
            peer.keepalive_interval = (s.dead_after / 3).max(signaling::MIN_SPARE_KEEPALIVE);
        }
        Connector::new(TransportConfig {
            identity,
            trust_anchors: anchors,
            local: LocalNode {
                name: cfg.name.clone(),
                level: cfg.level,
                role,
            },
            peer,
        })
        .context("recovery: TLS configuration")
    };
    if let Some(path) = cfg
        .recovery
        .as_ref()
        .and_then(|r| r.advert_keys.clone())
        .filter(|_| adverts_on)
    {
        let ctl = ctl.clone();
        let permissions = cfg.tls.key_permissions;
        rt.spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                warn!("cannot install a SIGHUP handler; advertisement keys load at start only");
                return;
            };
            while hup.recv().await.is_some() {
                // A bad file keeps the keys in use.
                match crate::config::read_advert_keys("recovery.advert_keys", &path, permissions) {
                    Ok(keys) => {
                        if ctl
                            .send(Input::Shell(ShellInput::AdvertKeys(keys)))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(e) => warn!(file = %path.display(), error = format!("{e:#}"),
                        "SIGHUP: advertisement keys not reloaded; the old ones stay"),
                }
            }
        });
    }
    let own_role = match cfg.level {
        Level::Network => Role::Network,
        Level::System => Role::System,
        Level::Site => Role::Site,
    };
    for n in cfg.recovery.iter().flat_map(|r| &r.neighbours) {
        let Some(addr) = n.address else { continue };
        rt.spawn(dial_loop(
            connector(own_role)?,
            addr,
            n.name.clone(),
            n.reconnect,
            Arc::clone(ids),
            ctl.clone(),
            Direction::Neighbour,
        ));
    }
    let Some(spare) = &cfg.spare else {
        return Ok(None);
    };
    rt.spawn(dial_loop(
        connector(Role::Spare)?,
        spare.address,
        spare.primary.clone(),
        spare.reconnect,
        Arc::clone(ids),
        ctl.clone(),
        Direction::Primary,
    ));
    let mut takeover_go = None;
    if let Some(up) = &cfg.upstream {
        let (go, wait) = oneshot::channel();
        takeover_go = Some(go);
        let c = connector(own_role)?;
        let (up, ids, ctl) = (up.clone(), Arc::clone(ids), ctl.clone());
        rt.spawn(async move {
            if wait.await.is_ok() {
                info!(upper = %up.name, "registering upstream as the primary");
                dial_loop(
                    c,
                    up.address,
                    up.name,
                    up.reconnect,
                    ids,
                    ctl,
                    Direction::Upstream,
                )
                .await;
            }
        });
    }
    Ok(takeover_go)
}

/// Keep one session to `address` (expected name `name`) up, reconnecting with
/// backoff, and feed its events to the control loop under `direction`.
async fn dial_loop(
    connector: Connector,
    address: SocketAddr,
    name: NodeName,
    reconnect: Duration,
    ids: Arc<AtomicU64>,
    ctl: mpsc::Sender<Input>,
    direction: Direction,
) {
    let mut backoff = reconnect;
    loop {
        match connector.connect(address, &name).await {
            Ok(session) => {
                backoff = reconnect;
                let id = SessionId(ids.fetch_add(1, Ordering::Relaxed));
                debug!(peer = %name, %address, ?direction, "session open");
                let (tx, rx) = mpsc::channel::<SessionCmd>(SESSION_QUEUE);
                let opened = ShellInput::Opened {
                    id,
                    remote: address,
                    direction,
                    cmds: tx,
                };
                if ctl.send(Input::Shell(opened)).await.is_err() {
                    return;
                }
                drive_session(session, rx, ctl.clone(), move |event| {
                    Input::Shell(ShellInput::Event { id, event })
                })
                .await;
                debug!(peer = %name, ?direction, reason = %DownReason::TransportClosed, "session ended; reconnecting");
            }
            Err(e) => {
                debug!(peer = %name, %address, error = %e, "cannot connect");
            }
        }
        if ctl.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
