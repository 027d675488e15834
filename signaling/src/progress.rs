//! Which server connections make no progress (DESIGN.md §5, server flow
//! advertisement): the host side's decision of *when* to send an augmented ping.
//!
//! Sans-IO and bounded. A shell scans its connections periodically (the host
//! daemon reads `/proc/net/tcp{,6}` every 200 ms) and reports each with
//! [`ProgressMonitor::observe`], closes the scan with [`ProgressMonitor::end_scan`]
//! and then drains [`ProgressMonitor::poll_advert`]: every key it returns is a flow
//! to advertise now.
//!
//! A flow is due when it was observed stalled continuously for at least
//! `stall_after` (from the first stalled observation of the episode to an
//! observation at or after the threshold) and was not advertised within the last
//! `readvertise_after`. Due-ness is decided at observations, since the monitor
//! cannot know whether a flow is still stalled between scans; the advert latency
//! is therefore `stall_after` plus up to one scan interval.
//!
//! Bounds: only flows stalled now or advertised recently are stored (healthy
//! connections cost nothing), at most `max_flows` of them (new ones beyond are
//! dropped and counted), and at most `max_adverts_per_sec` keys leave
//! [`ProgressMonitor::poll_advert`] in any sliding second, so a host whose whole
//! uplink died cannot flood the path with echoes.

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use router_core::classify::FlowKey;
use router_core::time::Instant;
use tracing::debug;

/// Largest accepted `max_adverts_per_sec` (the sliding window stores one
/// timestamp per advert of the last second).
pub const MAX_ADVERTS_PER_SEC: u32 = 100_000;

/// The sliding window of the advert rate cap.
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// When a stalled flow is advertised, and how much the monitor may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgressConfig {
    /// A flow stalled continuously this long is advertised (default 1 s).
    pub stall_after: Duration,
    /// No second advert of one flow within this time (default 1 s).
    pub readvertise_after: Duration,
    /// Most flows tracked at once (default 65 536); only stalled or recently
    /// advertised flows take a slot.
    pub max_flows: usize,
    /// Most adverts in any sliding second over all flows (default 100, at most
    /// [`MAX_ADVERTS_PER_SEC`]).
    pub max_adverts_per_sec: u32,
}

impl Default for ProgressConfig {
    fn default() -> Self {
        Self {
            stall_after: Duration::from_secs(1),
            readvertise_after: Duration::from_secs(1),
            max_flows: 65_536,
            max_adverts_per_sec: 100,
        }
    }
}

/// Why a [`ProgressConfig`] is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProgressError {
    /// A table of zero flows could never advertise anything.
    #[error("max_flows must be at least 1")]
    ZeroMaxFlows,
    /// The advert rate cap is outside `1..=MAX_ADVERTS_PER_SEC`; to turn
    /// adverts off, do not run the monitor.
    #[error("max_adverts_per_sec {given} is outside 1..={limit}")]
    AdvertRate {
        /// The value given.
        given: u32,
        /// The largest value accepted.
        limit: u32,
    },
}

/// Counters of a [`ProgressMonitor`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProgressStats {
    /// Flows held now.
    pub tracked: usize,
    /// Stall episodes begun: a flow observed stalled that was new or not stalled
    /// at its previous observation.
    pub stalls: u64,
    /// Keys returned by [`ProgressMonitor::poll_advert`].
    pub adverts: u64,
    /// New stalled flows not tracked because the table was full.
    pub flows_dropped: u64,
    /// [`ProgressMonitor::poll_advert`] calls that returned `None` only because
    /// of the rate cap.
    pub rate_limited: u64,
    /// Flows removed by [`ProgressMonitor::end_scan`] because the scan did not
    /// see them (the connection closed).
    pub forgotten: u64,
}

/// What the monitor remembers of one flow.
#[derive(Debug, Clone, Copy)]
struct Flow {
    /// First observation of the current stall episode; `None` when the latest
    /// observation showed progress.
    stalled_since: Option<Instant>,
    /// When the flow was last advertised.
    last_advert: Option<Instant>,
    /// The scan that last observed it.
    seen: u64,
    /// Whether its key is in the due queue (so it is queued at most once).
    queued: bool,
}

impl Flow {
    fn is_due(&self, cfg: &ProgressConfig, now: Instant) -> bool {
        self.stalled_since
            .is_some_and(|s| now.saturating_since(s) >= cfg.stall_after)
            && self
                .last_advert
                .is_none_or(|a| now.saturating_since(a) >= cfg.readvertise_after)
    }
}

/// Detects flows without progress and says when to advertise them (see the
/// module documentation).
#[derive(Debug)]
pub struct ProgressMonitor {
    cfg: ProgressConfig,
    flows: HashMap<FlowKey, Flow>,
    /// Flows found due, oldest first; each at most once per `queued` flag.
    due: VecDeque<FlowKey>,
    /// Times of the adverts of the last second, oldest first (at most
    /// `max_adverts_per_sec`).
    sent: VecDeque<Instant>,
    /// The current scan's number.
    scan: u64,
    stats: ProgressStats,
}

impl ProgressMonitor {
    /// A monitor with `cfg`, checked.
    pub fn new(cfg: ProgressConfig) -> Result<Self, ProgressError> {
        if cfg.max_flows == 0 {
            return Err(ProgressError::ZeroMaxFlows);
        }
        if cfg.max_adverts_per_sec == 0 || cfg.max_adverts_per_sec > MAX_ADVERTS_PER_SEC {
            return Err(ProgressError::AdvertRate {
                given: cfg.max_adverts_per_sec,
                limit: MAX_ADVERTS_PER_SEC,
            });
        }
        Ok(Self {
            cfg,
            flows: HashMap::new(),
            due: VecDeque::new(),
            sent: VecDeque::new(),
            scan: 0,
            stats: ProgressStats::default(),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &ProgressConfig {
        &self.cfg
    }

    /// Counters (with `tracked` as of now).
    pub fn stats(&self) -> ProgressStats {
        ProgressStats {
            tracked: self.flows.len(),
            ..self.stats
        }
    }

    /// Report one connection seen in the current scan: `stalled` when it shows no
    /// progress now; `false` ends its stall episode.
    pub fn observe(&mut self, key: FlowKey, stalled: bool, now: Instant) {
        let full = self.flows.len() >= self.cfg.max_flows;
        let flow = match self.flows.entry(key) {
            MapEntry::Occupied(o) => {
                let f = o.into_mut();
                f.seen = self.scan;
                if !stalled {
                    f.stalled_since = None;
                } else if f.stalled_since.is_none() {
                    f.stalled_since = Some(now);
                    self.stats.stalls += 1;
                }
                f
            }
            // A healthy flow never advertised needs no memory.
            MapEntry::Vacant(_) if !stalled => return,
            MapEntry::Vacant(_) if full => {
                self.stats.flows_dropped += 1;
                debug!(%key, limit = self.cfg.max_flows, "progress monitor full; stalled flow not tracked");
                return;
            }
            MapEntry::Vacant(v) => {
                self.stats.stalls += 1;
                v.insert(Flow {
                    stalled_since: Some(now),
                    last_advert: None,
                    seen: self.scan,
                    queued: false,
                })
            }
        };
        if !flow.queued && flow.is_due(&self.cfg, now) {
            flow.queued = true;
            self.due.push_back(key);
        }
    }

    /// End of a scan: forget every flow not observed since the previous
    /// `end_scan` (its connection is gone), and flows that are healthy again and
    /// were not advertised recently.
    pub fn end_scan(&mut self, now: Instant) {
        let (scan, readvertise) = (self.scan, self.cfg.readvertise_after);
        let forgotten = &mut self.stats.forgotten;
        self.flows.retain(|key, f| {
            if f.seen != scan {
                *forgotten += 1;
                debug!(%key, "stalled flow closed");
                return false;
            }
            f.stalled_since.is_some()
                || f.last_advert
                    .is_some_and(|a| now.saturating_since(a) < readvertise)
        });
        // Drop queued keys of removed flows (and duplicates of re-inserted ones),
        // so the queue never outgrows the table.
        for f in self.flows.values_mut() {
            f.queued = false;
        }
        let flows = &mut self.flows;
        self.due.retain(|k| match flows.get_mut(k) {
            Some(f) if !f.queued => {
                f.queued = true;
                true
            }
            _ => false,
        });
        self.scan = self.scan.wrapping_add(1);
    }

    /// The next flow to advertise now, if any; call until `None`. Returning a key
    /// records its advert at `now`.
    #[must_use]
    pub fn poll_advert(&mut self, now: Instant) -> Option<FlowKey> {
        while let Some(&key) = self.due.front() {
            let Some(flow) = self.flows.get_mut(&key) else {
                self.due.pop_front();
                continue;
            };
            if !flow.queued || !flow.is_due(&self.cfg, now) {
                // A stale copy, or the flow made progress since it was queued.
                if flow.queued {
                    flow.queued = false;
                }
                self.due.pop_front();
                continue;
            }
            while self
                .sent
                .front()
                .is_some_and(|&t| now.saturating_since(t) >= RATE_WINDOW)
            {
                self.sent.pop_front();
            }
            if self.sent.len() >= self.cfg.max_adverts_per_sec as usize {
                self.stats.rate_limited += 1;
                return None;
            }
            self.sent.push_back(now);
            self.due.pop_front();
            flow.queued = false;
            flow.last_advert = Some(now);
            self.stats.adverts += 1;
            return Some(key);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;
    use std::net::{IpAddr, Ipv4Addr};

    fn key(i: u16) -> FlowKey {
        FlowKey {
            proto: 6,
            src: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)),
            src_port: 40_000 + i,
            dst: IpAddr::V4(Ipv4Addr::new(192, 200, 0, 10)),
            dst_port: 80,
        }
    }

    fn ms(m: u64) -> Instant {
        Instant::from_millis(m)
    }

    fn drain(m: &mut ProgressMonitor, now: Instant) -> Vec<FlowKey> {
        std::iter::from_fn(|| m.poll_advert(now)).collect()
    }

    /// One scan at `now` of `flows` (key index, stalled), then the drained adverts.
    fn scan(m: &mut ProgressMonitor, now: u64, flows: &[(u16, bool)]) -> Vec<FlowKey> {
        for &(k, s) in flows {
            m.observe(key(k), s, ms(now));
        }
        m.end_scan(ms(now));
        drain(m, ms(now))
    }

    #[test]
    fn config_is_checked() {
        let bad = |c| ProgressMonitor::new(c).unwrap_err();
        assert_eq!(
            bad(ProgressConfig {
                max_flows: 0,
                ..ProgressConfig::default()
            }),
            ProgressError::ZeroMaxFlows
        );
        assert!(matches!(
            bad(ProgressConfig {
                max_adverts_per_sec: 0,
                ..ProgressConfig::default()
            }),
            ProgressError::AdvertRate { given: 0, .. }
        ));
        assert!(matches!(
            bad(ProgressConfig {
                max_adverts_per_sec: MAX_ADVERTS_PER_SEC + 1,
                ..ProgressConfig::default()
            }),
            ProgressError::AdvertRate { .. }
        ));
    }

    #[test]
    fn a_flow_stalled_for_stall_after_is_advertised_then_readvertised() {
        let mut m = ProgressMonitor::new(ProgressConfig::default()).unwrap();
        assert!(scan(&mut m, 0, &[(1, true), (2, false)]).is_empty());
        assert_eq!(m.stats().tracked, 1, "a healthy flow takes no slot");
        assert!(scan(&mut m, 800, &[(1, true), (2, false)]).is_empty());
        assert_eq!(scan(&mut m, 1000, &[(1, true), (2, false)]), vec![key(1)]);
        // Still stalled: not again within readvertise_after, again after it.
        assert!(scan(&mut m, 1200, &[(1, true)]).is_empty());
        assert!(scan(&mut m, 1800, &[(1, true)]).is_empty());
        assert_eq!(scan(&mut m, 2000, &[(1, true)]), vec![key(1)]);
        let s = m.stats();
        assert_eq!((s.adverts, s.stalls, s.tracked), (2, 1, 1));
    }

    #[test]
    fn progress_restarts_the_stall_clock() {
        let mut m = ProgressMonitor::new(ProgressConfig::default()).unwrap();
        scan(&mut m, 0, &[(1, true)]);
        scan(&mut m, 600, &[(1, false)]);
        assert_eq!(
            m.stats().tracked,
            0,
            "healthy and never advertised: forgotten"
        );
        assert!(scan(&mut m, 700, &[(1, true)]).is_empty());
        assert!(
            scan(&mut m, 1500, &[(1, true)]).is_empty(),
            "only 800 ms of this stall"
        );
        assert_eq!(scan(&mut m, 1700, &[(1, true)]), vec![key(1)]);
        assert_eq!(m.stats().stalls, 2);
    }

    #[test]
    fn a_flow_that_recovers_and_stalls_again_waits_for_readvertise_after() {
        let mut m = ProgressMonitor::new(ProgressConfig {
            stall_after: Duration::from_millis(200),
            readvertise_after: Duration::from_secs(2),
            ..ProgressConfig::default()
        })
        .unwrap();
        scan(&mut m, 0, &[(1, true)]);
        assert_eq!(scan(&mut m, 200, &[(1, true)]), vec![key(1)]);
        scan(&mut m, 400, &[(1, false)]);
        assert_eq!(m.stats().tracked, 1, "advertised recently: remembered");
        scan(&mut m, 600, &[(1, true)]);
        assert!(scan(&mut m, 1000, &[(1, true)]).is_empty());
        assert_eq!(scan(&mut m, 2200, &[(1, true)]), vec![key(1)]);
    }

    #[test]
    fn a_rate_limited_poll_happens_only_when_something_is_due() {
        let mut m = ProgressMonitor::new(ProgressConfig::default()).unwrap();
        assert_eq!(m.poll_advert(ms(0)), None);
        assert_eq!(m.stats().rate_limited, 0);
    }

    #[test]
    fn flows_not_seen_in_a_scan_are_forgotten() {
        let mut m = ProgressMonitor::new(ProgressConfig::default()).unwrap();
        scan(&mut m, 0, &[(1, true), (2, true)]);
        // Both are due at this scan, but nobody polls before flow 1 closes.
        m.observe(key(1), true, ms(1000));
        m.observe(key(2), true, ms(1000));
        m.end_scan(ms(1000));
        m.observe(key(2), true, ms(1200));
        m.end_scan(ms(1200));
        assert_eq!(drain(&mut m, ms(1200)), vec![key(2)]);
        let s = m.stats();
        assert_eq!((s.forgotten, s.tracked), (1, 1));
    }

    #[test]
    fn the_table_is_bounded_and_drops_are_counted() {
        let mut m = ProgressMonitor::new(ProgressConfig {
            max_flows: 3,
            ..ProgressConfig::default()
        })
        .unwrap();
        let all: Vec<(u16, bool)> = (0..10).map(|i| (i, true)).collect();
        scan(&mut m, 0, &all);
        let s = m.stats();
        assert_eq!((s.tracked, s.flows_dropped), (3, 7));
        assert_eq!(scan(&mut m, 1000, &all).len(), 3);
        // The tracked flows close: their slots free at the end of that scan and
        // the next stalled flows take them at the following one.
        scan(&mut m, 1200, &all[5..]);
        assert_eq!(m.stats().tracked, 0);
        scan(&mut m, 1400, &all[5..]);
        let s = m.stats();
        assert_eq!((s.tracked, s.forgotten), (3, 3));
    }

    #[test]
    fn the_advert_rate_is_capped_and_deferred_flows_go_out_later() {
        let mut m = ProgressMonitor::new(ProgressConfig {
            stall_after: Duration::ZERO,
            max_adverts_per_sec: 4,
            ..ProgressConfig::default()
        })
        .unwrap();
        let all: Vec<(u16, bool)> = (0..10).map(|i| (i, true)).collect();
        let first = scan(&mut m, 0, &all);
        assert_eq!(first.len(), 4);
        assert_eq!(m.stats().rate_limited, 1);
        assert!(scan(&mut m, 500, &all).is_empty());
        let second = scan(&mut m, 1000, &all);
        assert_eq!(second.len(), 4);
        let third = scan(&mut m, 2000, &all);
        // 10 flows, 4 per second: by t = 2 s every flow went out once, and the
        // first four are due again after readvertise_after.
        let once: BTreeSet<_> = first.iter().chain(&second).chain(&third).collect();
        assert_eq!(once.len(), 10, "{first:?} {second:?} {third:?}");
    }

    /// A scan: time step (ms) and the stalled state of keys 0..8 (`None`: not seen).
    fn scans() -> impl Strategy<Value = Vec<(u64, Vec<Option<bool>>)>> {
        prop::collection::vec(
            (
                1u64..700,
                prop::collection::vec(prop::option::weighted(0.8, prop::bool::weighted(0.7)), 8),
            ),
            1..60,
        )
    }

    proptest! {
        /// With no bound reached, the monitor returns exactly the flows a naive
        /// model of the rule says are due; with bounds, it never breaks the rule,
        /// the table and the rate cap hold.
        #[test]
        fn monitor_follows_the_rule(
            steps in scans(),
            stall in 0u64..1500,
            readv in 0u64..1500,
            max_flows in 1usize..10,
            cap in 1u32..10,
        ) {
            let mk = |max_flows, cap| ProgressMonitor::new(ProgressConfig {
                stall_after: Duration::from_millis(stall),
                readvertise_after: Duration::from_millis(readv),
                max_flows,
                max_adverts_per_sec: cap,
            }).unwrap();
            let mut free = mk(1000, 1000);
            let mut bounded = mk(max_flows, cap);
            // The model: per key, start of the current stall run and last advert.
            let mut run: HashMap<u16, u64> = HashMap::new();
            let mut last_free: HashMap<u16, u64> = HashMap::new();
            let mut last_bounded: HashMap<u16, u64> = HashMap::new();
            let mut sent_bounded: Vec<u64> = Vec::new();
            let mut now = 0u64;
            for (dt, obs) in steps {
                now += dt;
                for (i, o) in obs.iter().enumerate() {
                    let k = i as u16;
                    match o {
                        Some(true) => { run.entry(k).or_insert(now); }
                        Some(false) => { run.remove(&k); }
                        // Closed: a later flow with this key is a new connection.
                        None => {
                            run.remove(&k);
                            last_free.remove(&k);
                            last_bounded.remove(&k);
                        }
                    }
                    if let Some(s) = o {
                        free.observe(key(k), *s, ms(now));
                        bounded.observe(key(k), *s, ms(now));
                    }
                }
                free.end_scan(ms(now));
                bounded.end_scan(ms(now));
                let due = |last: &HashMap<u16, u64>, k: u16| {
                    run.get(&k).is_some_and(|&s| now - s >= stall)
                        && last.get(&k).is_none_or(|&a| now - a >= readv)
                };
                let expect: BTreeSet<u16> = (0..8).filter(|&k| due(&last_free, k)).collect();
                let got: BTreeSet<u16> = drain(&mut free, ms(now))
                    .iter().map(|k| k.src_port - 40_000).collect();
                prop_assert_eq!(&got, &expect);
                for k in got { last_free.insert(k, now); }
                for k in drain(&mut bounded, ms(now)) {
                    let k = k.src_port - 40_000;
                    prop_assert!(due(&last_bounded, k), "flow {} advertised against the rule", k);
                    last_bounded.insert(k, now);
                    sent_bounded.push(now);
                }
                prop_assert!(bounded.stats().tracked <= max_flows);
                // Any cap + 1 consecutive adverts span at least one second.
                let c = cap as usize;
                for w in sent_bounded.windows(c + 1) {
                    prop_assert!(w[c] - w[0] >= 1000, "{:?}", w);
                }
            }
        }
    }
}
