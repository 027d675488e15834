//! Packets of lost flows held while their state is being re-created.
//!
//! A mid-flow packet whose flow this router does not know (a spare that just
//! took over, a restarted router) used to be dropped while WHOHAS or a host's
//! advertisement re-created the flow: the client's TCP then waited for its next
//! retransmission timeout, which by then has backed off to a second or more. The
//! node keeps a few such packets instead and releases them the moment the flow
//! is pinned, so the first packet after the recovery is the one that was held.
//!
//! Bounded: at most `max_packets` packets and `max_bytes` bytes in all, at most
//! `per_flow` per flow (the newest replace the oldest: TCP's latest ACK carries
//! the most), each kept at most `hold_for`. What does not fit or expires is
//! counted and dropped, as before.

use router_core::{FlowKey, Instant};
use serde::Serialize;
use std::collections::VecDeque;
use std::time::Duration;

/// Bounds of the hold queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldConfig {
    /// Most packets held in all (0: hold nothing).
    pub max_packets: usize,
    /// Most bytes held in all.
    pub max_bytes: usize,
    /// Most packets held of one flow.
    pub per_flow: usize,
    /// A packet older than this is dropped rather than released.
    pub hold_for: Duration,
}

impl Default for HoldConfig {
    fn default() -> Self {
        Self {
            max_packets: 256,
            max_bytes: 256 * 1024,
            per_flow: 4,
            hold_for: Duration::from_secs(1),
        }
    }
}

/// What became of held packets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct HoldCounters {
    /// Packets held.
    pub held: u64,
    /// Held packets released once their flow was pinned.
    pub released: u64,
    /// Held packets dropped after `hold_for`.
    pub expired: u64,
    /// Packets not held: the queue was full (packets or bytes).
    pub refused_full: u64,
    /// Held packets replaced by a newer one of their flow.
    pub replaced: u64,
}

#[derive(Debug)]
struct Held {
    key: FlowKey,
    at: Instant,
    bytes: Vec<u8>,
}

/// The hold queue: oldest first.
#[derive(Debug)]
pub(super) struct HoldQueue {
    cfg: HoldConfig,
    held: VecDeque<Held>,
    bytes: usize,
    /// Released, waiting for the shell to run them through the engine again.
    ready: VecDeque<(FlowKey, Vec<u8>)>,
    counters: HoldCounters,
}

impl HoldQueue {
    pub(super) fn new(cfg: HoldConfig) -> Self {
        Self {
            cfg,
            held: VecDeque::new(),
            bytes: 0,
            ready: VecDeque::new(),
            counters: HoldCounters::default(),
        }
    }

    pub(super) fn counters(&self) -> HoldCounters {
        self.counters
    }

    /// Whether anything waits to be matched against new pins.
    pub(super) fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Keep a copy of `packet` of the lost flow `key`.
    pub(super) fn hold(&mut self, now: Instant, key: FlowKey, packet: &[u8]) {
        self.expire(now);
        if self.cfg.max_packets == 0 || packet.len() > self.cfg.max_bytes {
            self.counters.refused_full += 1;
            return;
        }
        let of_flow = self.held.iter().filter(|h| h.key == key).count();
        if of_flow >= self.cfg.per_flow.max(1)
            && let Some(i) = self.held.iter().position(|h| h.key == key)
            && let Some(old) = self.held.remove(i)
        {
            self.bytes -= old.bytes.len();
            self.counters.replaced += 1;
        }
        if self.held.len() >= self.cfg.max_packets || self.bytes + packet.len() > self.cfg.max_bytes
        {
            self.counters.refused_full += 1;
            return;
        }
        self.bytes += packet.len();
        self.counters.held += 1;
        self.held.push_back(Held {
            key,
            at: now,
            bytes: packet.to_vec(),
        });
    }

    /// Move the packets of every flow `pinned` says is pinned now to the
    /// release queue, in arrival order.
    pub(super) fn release_pinned(&mut self, now: Instant, pinned: impl Fn(&FlowKey) -> bool) {
        self.expire(now);
        let mut keep = VecDeque::with_capacity(self.held.len());
        for h in self.held.drain(..) {
            if pinned(&h.key) {
                self.bytes -= h.bytes.len();
                self.counters.released += 1;
                self.ready.push_back((h.key, h.bytes));
            } else {
                keep.push_back(h);
            }
        }
        self.held = keep;
    }

    /// A released packet could not be sent (its pin vanished again).
    pub(super) fn count_lost(&mut self) {
        self.counters.expired += 1;
    }

    /// The next released packet and its flow.
    pub(super) fn pop_ready(&mut self) -> Option<(FlowKey, Vec<u8>)> {
        self.ready.pop_front()
    }

    fn expire(&mut self, now: Instant) {
        while let Some(h) = self.held.front() {
            if now.saturating_since(h.at) <= self.cfg.hold_for {
                break;
            }
            self.bytes -= h.bytes.len();
            self.counters.expired += 1;
            self.held.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn key(port: u16) -> FlowKey {
        FlowKey {
            src: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            dst: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            proto: 6,
            src_port: port,
            dst_port: 80,
        }
    }

    fn q(max_packets: usize, max_bytes: usize, per_flow: usize) -> HoldQueue {
        HoldQueue::new(HoldConfig {
            max_packets,
            max_bytes,
            per_flow,
            hold_for: Duration::from_millis(500),
        })
    }

    #[test]
    fn a_pinned_flows_packets_leave_in_order_and_others_stay() {
        let mut h = q(8, 1 << 16, 4);
        let t = Instant::from_secs(1);
        h.hold(t, key(1), b"a1");
        h.hold(t, key(2), b"b1");
        h.hold(t, key(1), b"a2");
        h.release_pinned(t, |k| *k == key(1));
        assert_eq!(h.pop_ready().map(|r| r.1).as_deref(), Some(&b"a1"[..]));
        assert_eq!(h.pop_ready().map(|r| r.1).as_deref(), Some(&b"a2"[..]));
        assert!(h.pop_ready().is_none());
        assert!(!h.is_empty());
        assert_eq!(h.counters().released, 2);
        assert_eq!(h.bytes, 2);
    }

    #[test]
    fn bounds_hold_and_old_packets_expire_unreleased() {
        let mut h = q(2, 1 << 16, 2);
        let t = Instant::from_secs(1);
        h.hold(t, key(1), b"x");
        h.hold(t, key(2), b"y");
        h.hold(t, key(3), b"z");
        assert_eq!(h.counters().refused_full, 1);
        // A third packet of a flow at its per-flow cap replaces its oldest.
        let mut h2 = q(8, 1 << 16, 2);
        for p in [b"1", b"2", b"3"] {
            h2.hold(t, key(1), p);
        }
        assert_eq!(h2.counters().replaced, 1);
        h2.release_pinned(t, |_| true);
        assert_eq!(h2.pop_ready().map(|r| r.1).as_deref(), Some(&b"2"[..]));
        // Bytes bound.
        let mut h3 = q(8, 10, 4);
        h3.hold(t, key(1), &[0; 8]);
        h3.hold(t, key(2), &[0; 8]);
        assert_eq!(h3.counters().refused_full, 1);
        // Expiry: after hold_for nothing is released.
        h.release_pinned(t + Duration::from_millis(501), |_| true);
        assert!(h.pop_ready().is_none());
        assert_eq!(h.counters().expired, 2);
        assert!(h.is_empty() && h.bytes == 0);
    }
}
