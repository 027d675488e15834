//! A host server as a participant (DESIGN.md §1, §4): it registers with its site
//! SLR, advertises the virtual subnets it serves and its load, and counts the
//! connections it terminates.
//!
//! Sans-IO and independent of the session: the shell (the TLS [`crate::Session`],
//! or a simulator holding a [`crate::Peer`]) reports registration and loss of the
//! session, asks [`HostAgent::poll_timeout`] when to wake, and sends what
//! [`HostAgent::handle_timeout`] returns. It lives here, not in a simulator,
//! because a real host daemon runs exactly this logic beside its tunnel endpoint.
//!
//! Load is `background + active connections / capacity`, so it rises as the site
//! sends connections here and an operator (or a test) can add load the router
//! cannot see.

use std::net::IpAddr;
use std::time::Duration;

use router_core::policy::Level;
use router_core::time::Instant;
use tracing::debug;

use crate::message::{MAX_SUBNETS_PER_UPDATE, NodeName, Role, SubnetLoad, SubnetPrefix};
use crate::peer::{LocalNode, Outgoing};

/// Most virtual subnets one host may serve (a few state updates' worth).
pub const MAX_HOST_SUBNETS: usize = 4 * MAX_SUBNETS_PER_UPDATE;

/// What a host serves and how it reports.
#[derive(Debug, Clone, PartialEq)]
pub struct HostConfig {
    /// Virtual subnets served (VIPs local on this host), at most
    /// [`MAX_HOST_SUBNETS`].
    pub subnets: Vec<SubnetPrefix>,
    /// How often the load is advertised.
    pub update_interval: Duration,
    /// Connections at which the connection part of the load reaches 1.0.
    pub capacity: u32,
}

/// Why a host configuration is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// Too many subnets; aggregate them into shorter prefixes.
    #[error("{count} virtual subnets exceed the limit of {limit}")]
    TooManySubnets {
        /// Subnets given.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A capacity of zero connections.
    #[error("capacity must be at least one connection")]
    ZeroCapacity,
    /// An update interval of zero would spin.
    #[error("update interval must be positive")]
    ZeroInterval,
}

/// Host counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostStats {
    /// Registrations with the site SLR.
    pub registrations: u64,
    /// Sessions lost.
    pub sessions_lost: u64,
    /// State updates produced.
    pub updates_sent: u64,
    /// Connections opened.
    pub connections_opened: u64,
    /// Connections closed.
    pub connections_closed: u64,
    /// Closes reported with no connection open (a shell bug), ignored.
    pub unmatched_closes: u64,
}

/// The control side of a host server.
#[derive(Debug)]
pub struct HostAgent {
    cfg: HostConfig,
    background: f64,
    active: u32,
    next_update: Option<Instant>,
    stats: HostStats,
}

impl HostAgent {
    /// A host serving `cfg.subnets`, not yet registered.
    pub fn new(cfg: HostConfig) -> Result<Self, HostError> {
        if cfg.subnets.len() > MAX_HOST_SUBNETS {
            return Err(HostError::TooManySubnets {
                count: cfg.subnets.len(),
                limit: MAX_HOST_SUBNETS,
            });
        }
        if cfg.capacity == 0 {
            return Err(HostError::ZeroCapacity);
        }
        if cfg.update_interval.is_zero() {
            return Err(HostError::ZeroInterval);
        }
        Ok(Self {
            cfg,
            background: 0.0,
            active: 0,
            next_update: None,
            stats: HostStats::default(),
        })
    }

    /// What a host says about itself when it registers: it works at the site level.
    pub fn local_node(name: NodeName) -> LocalNode {
        LocalNode {
            name,
            level: Level::Site,
            role: Role::Host,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &HostConfig {
        &self.cfg
    }

    /// Whether `vip` is in a virtual subnet this host serves (a tunnelled packet
    /// for anything else is not ours).
    pub fn serves(&self, vip: IpAddr) -> bool {
        self.cfg.subnets.iter().any(|s| s.contains(vip))
    }

    /// The session with the site SLR registered: advertise at once.
    pub fn on_registered(&mut self, now: Instant) {
        self.stats.registrations += 1;
        self.next_update = Some(now);
    }

    /// The session went down: stop advertising until registered again.
    pub fn on_session_lost(&mut self) {
        if self.next_update.take().is_some() {
            self.stats.sessions_lost += 1;
        }
    }

    /// Whether a session is registered.
    pub fn is_registered(&self) -> bool {
        self.next_update.is_some()
    }

    /// Load the router cannot see (other work on the machine), clamped to a
    /// finite non-negative value.
    pub fn set_background_load(&mut self, load: f64) {
        self.background = if load.is_finite() { load.max(0.0) } else { 0.0 };
    }

    /// A connection was accepted.
    pub fn connection_opened(&mut self) {
        self.active = self.active.saturating_add(1);
        self.stats.connections_opened += 1;
    }

    /// A connection ended.
    pub fn connection_closed(&mut self) {
        if self.active == 0 {
            self.stats.unmatched_closes += 1;
            return;
        }
        self.active -= 1;
        self.stats.connections_closed += 1;
    }

    /// Connections open now.
    pub fn active_connections(&self) -> u32 {
        self.active
    }

    /// The load advertised: background plus the connection share.
    pub fn load(&self) -> f64 {
        self.background + f64::from(self.active) / f64::from(self.cfg.capacity)
    }

    /// When [`HostAgent::handle_timeout`] must next run; `None` while unregistered.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_update
    }

    /// Produces the periodic state update(s) when due.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Outgoing> {
        match self.next_update {
            Some(due) if now >= due => {}
            _ => return Vec::new(),
        }
        self.next_update = Some(now + self.cfg.update_interval);
        let load = self.load() as f32;
        let load = if load.is_finite() { load } else { f32::MAX };
        let out: Vec<Outgoing> = self
            .cfg
            .subnets
            .chunks(MAX_SUBNETS_PER_UPDATE)
            .map(|chunk| Outgoing::StateUpdate {
                subnets: chunk
                    .iter()
                    .map(|&subnet| SubnetLoad { subnet, load })
                    .collect(),
            })
            .collect();
        self.stats.updates_sent += out.len() as u64;
        debug!(load, active = self.active, "host advertises its load");
        out
    }

    /// Counters.
    pub fn stats(&self) -> &HostStats {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent() -> HostAgent {
        HostAgent::new(HostConfig {
            subnets: vec![SubnetPrefix::new("192.200.0.0".parse().unwrap(), 16).unwrap()],
            update_interval: Duration::from_millis(500),
            capacity: 4,
        })
        .unwrap()
    }

    fn loads(out: &[Outgoing]) -> Vec<f32> {
        out.iter()
            .flat_map(|o| match o {
                Outgoing::StateUpdate { subnets } => subnets.iter().map(|s| s.load).collect(),
                _ => Vec::new(),
            })
            .collect()
    }

    #[test]
    fn advertises_only_while_registered_and_on_schedule() {
        let mut a = agent();
        assert_eq!(a.poll_timeout(), None);
        assert!(a.handle_timeout(Instant::from_secs(1)).is_empty());
        a.on_registered(Instant::from_secs(1));
        assert_eq!(loads(&a.handle_timeout(Instant::from_secs(1))), vec![0.0]);
        assert!(a.handle_timeout(Instant::from_millis(1400)).is_empty());
        assert_eq!(a.poll_timeout(), Some(Instant::from_millis(1500)));
        a.connection_opened();
        a.set_background_load(0.5);
        assert_eq!(
            loads(&a.handle_timeout(Instant::from_millis(1500))),
            vec![0.75]
        );
        a.on_session_lost();
        assert_eq!(a.poll_timeout(), None);
        assert_eq!(a.stats().sessions_lost, 1);
        assert_eq!(a.stats().updates_sent, 2);
    }

    #[test]
    fn load_follows_connections_and_ignores_bad_input() {
        let mut a = agent();
        a.connection_closed();
        assert_eq!(a.stats().unmatched_closes, 1);
        for _ in 0..2 {
            a.connection_opened();
        }
        assert!((a.load() - 0.5).abs() < 1e-9);
        a.connection_closed();
        assert!((a.load() - 0.25).abs() < 1e-9);
        a.set_background_load(f64::NAN);
        assert!((a.load() - 0.25).abs() < 1e-9);
        a.set_background_load(-3.0);
        assert!((a.load() - 0.25).abs() < 1e-9);
    }

    #[test]
    fn serves_only_its_subnets() {
        let a = agent();
        assert!(a.serves("192.200.7.1".parse().unwrap()));
        assert!(!a.serves("192.201.0.1".parse().unwrap()));
    }

    #[test]
    fn refuses_bad_configuration() {
        let base = agent().config().clone();
        assert_eq!(
            HostAgent::new(HostConfig {
                capacity: 0,
                ..base.clone()
            })
            .unwrap_err(),
            HostError::ZeroCapacity
        );
        assert_eq!(
            HostAgent::new(HostConfig {
                update_interval: Duration::ZERO,
                ..base.clone()
            })
            .unwrap_err(),
            HostError::ZeroInterval
        );
        let many = vec![base.subnets[0]; MAX_HOST_SUBNETS + 1];
        assert!(matches!(
            HostAgent::new(HostConfig {
                subnets: many,
                ..base
            }),
            Err(HostError::TooManySubnets { .. })
        ));
    }

    #[test]
    fn many_subnets_are_chunked() {
        let subnets = (0..1500u32)
            .map(|i| {
                SubnetPrefix::new(
                    IpAddr::V4(std::net::Ipv4Addr::from(0xC0C8_0000 + (i << 8))),
                    24,
                )
                .unwrap()
            })
            .collect();
        let mut a = HostAgent::new(HostConfig {
            subnets,
            update_interval: Duration::from_secs(1),
            capacity: 10,
        })
        .unwrap();
        a.on_registered(Instant::ZERO);
        let out = a.handle_timeout(Instant::ZERO);
        assert_eq!(out.len(), 2);
        assert_eq!(loads(&out).len(), 1500);
    }
}
