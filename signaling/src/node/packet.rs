//! The node's packet path: the engine's verdict, finished in place.
//!
//! The engine decides everything about a packet except what needs the control
//! side: a mid-flow packet of an unknown flow ([`Verdict::Recover`]) and an echo
//! reply carrying a server flow advertisement ([`Verdict::Advert`]). The node
//! settles both here, on the same buffer, so the shell never copies a packet to
//! another thread and back: the packet is tunnelled on (the verdict becomes
//! `Forward`) or consumed (it stays `Recover` / `Advert`, nothing to send).

use super::Node;
use crate::recovery::{AdvertOutcome, RecoverOutcome};
use router_core::Instant;
use router_core::api::RouterApi;
use router_core::classify::FlowKey;
use router_core::engine::Verdict;
use router_core::packet::PacketBuf;
use std::net::IpAddr;
use tracing::debug;

impl Node {
    /// Process one packet (from its IP header on, in a buffer with headroom) at
    /// `now`. The returned verdict is final: `Forward`/`Reply` -> send the buffer
    /// to the address named; `Deliver` -> local stack; `Recover`/`Advert` -> the
    /// node consumed it (counted); `Drop` -> counted by the engine.
    #[inline]
    pub fn handle_packet(&mut self, now: Instant, pkt: &mut PacketBuf<'_>) -> Verdict {
        self.advance(now);
        let v = self.engine.process(pkt, now);
        match v {
            Verdict::Forward { next_hop, .. } => {
                if let Some(key) = self.engine.take_new_flow() {
                    self.flow_pinned(now, key, next_hop);
                }
                v
            }
            Verdict::Recover { key } => self.recover(now, key, pkt),
            Verdict::Advert => self.advert(now, pkt),
            other => other,
        }
    }

    /// A flow was pinned by its first packet: originate its shortcut (site level)
    /// and mirror it to the spare.
    fn flow_pinned(&mut self, now: Instant, key: FlowKey, next_hop: IpAddr) {
        self.counters.flows_pinned += 1;
        if self.originates_shortcuts() {
            self.slr.flow_pinned(key, next_hop);
        }
        if self.recovery.mirrors()
            && let Some(entry) = self.engine.lookup_flow(&key, now)
        {
            self.recovery.flow_pinned(&entry, now);
        }
        self.after_control();
    }

    /// The state of `key` is not here: an entry router hands the packet to its
    /// SLR; an SLR asks its neighbours and upper level (WHOHAS) and drops the
    /// packet (the client retransmits it), unless the flow was pinned meanwhile.
    fn recover(&mut self, now: Instant, key: FlowKey, pkt: &mut PacketBuf<'_>) -> Verdict {
        let outcome = self.slr.recover(key, now, &self.engine);
        let to = match outcome {
            RecoverOutcome::Pinned { next_hop } => {
                self.recovery.count_sent_to_pin();
                Some(next_hop)
            }
            other => {
                debug!(%key, outcome = ?other, "flow state lost; recovering");
                self.recovery.forward_unknown_to().inspect(|_| {
                    self.recovery.count_forwarded();
                })
            }
        };
        if to.is_none() {
            // Dropped here, but a copy waits for the flow's re-creation
            // (WHOHAS answer, advertisement) to be sent on at once.
            self.held.hold(now, key, pkt.data());
        }
        self.after_control();
        match to {
            Some(to) => self.engine.encapsulate_to(pkt, to, now),
            None => Verdict::Recover { key },
        }
    }

    /// The next held packet whose flow was re-created meanwhile: copied into
    /// `buf` after `headroom` bytes and tunnelled along the flow's pin there.
    /// The shell sends what the verdict says, as for [`Node::handle_packet`];
    /// `None` when nothing is released. A packet whose pin vanished again is
    /// dropped (counted as expired).
    pub fn poll_released<'b>(
        &mut self,
        now: Instant,
        buf: &'b mut [u8],
        headroom: usize,
    ) -> Option<(Verdict, PacketBuf<'b>)> {
        loop {
            let (key, bytes) = self.held.pop_ready()?;
            let Some(entry) = self.engine.lookup_flow(&key, now) else {
                self.held.count_lost();
                continue;
            };
            let end = headroom + bytes.len();
            let Some(room) = buf.get_mut(headroom..end) else {
                self.held.count_lost();
                continue;
            };
            room.copy_from_slice(&bytes);
            let Ok(mut pkt) = PacketBuf::new(buf, headroom, bytes.len()) else {
                self.held.count_lost();
                return None;
            };
            let v = self.engine.encapsulate_to(&mut pkt, entry.next_hop, now);
            return Some((v, pkt));
        }
    }

    /// Verify an advertisement; install the flow it names or relay the reply
    /// along the flow's pin.
    fn advert(&mut self, now: Instant, pkt: &mut PacketBuf<'_>) -> Verdict {
        let Some(fields) = self.recovery.verify_advert(now, pkt.data()) else {
            return Verdict::Advert;
        };
        let served = self.engine.subnet_for(fields.key.dst).is_some();
        let outcome = self
            .slr
            .handle_advert_in(now, &fields, served, &mut self.engine);
        self.recovery.count_advert(&outcome, &fields);
        self.after_control();
        match outcome {
            AdvertOutcome::Relay { to } => self.engine.encapsulate_to(pkt, to, now),
            _ => Verdict::Advert,
        }
    }
}
