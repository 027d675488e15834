//! The packet I/O of one dataplane thread: its TUN queue (and, on the main
//! thread, the raw tunnel sockets), its slots, its transmit socket. Reading and
//! sending happen without the node; only [`Io::classify`] runs under the
//! node's lock, so the system calls of several threads overlap.

use super::{
    DataplaneConfig, DataplaneNode, DecisionObserver, NewFlow, PuntKind, PuntedPacket,
    ShellCounters, bump,
};
use crate::classify::FlowKey;
use crate::engine::Verdict;
use crate::linux::raw::{MAX_SLOTS, RawRx, RawTx, RxMeta, Slots, TxItem};
use crate::linux::tun::TunDevice;
use crate::packet::{HEADROOM, PacketBuf};
use crate::time::Instant;
use crate::tunnel::fragment_ipv4;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::EventFd;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::Duration;

/// One thread's packet I/O.
#[derive(Debug)]
pub(super) struct Io {
    pub(super) tun: TunDevice,
    pub(super) raw: Vec<RawRx>,
    pub(super) tx: RawTx,
    pub(super) slots: Slots,
    pub(super) meta: [RxMeta; MAX_SLOTS],
    /// Packets one TUN pump may read (the slots; with offloads, room for a
    /// super-packet's segments after a batch of packets).
    pub(super) tun_batch: usize,
    pub(super) txq: Vec<TxItem>,
    pub(super) scratch: Vec<u8>,
    /// Where a released held packet is encapsulated (headroom + largest packet).
    pub(super) release_buf: Vec<u8>,
    pub(super) mtu: usize,
    pub(super) batch: usize,
    pub(super) punt_tx: SyncSender<PuntedPacket>,
    pub(super) new_flow_tx: Option<SyncSender<NewFlow>>,
    /// Told the engine time of each packet that pinned a new flow.
    pub(super) decisions: Option<Arc<dyn DecisionObserver>>,
    pub(super) wake: Arc<EventFd>,
    pub(super) stats: Arc<ShellCounters>,
}

impl Io {
    /// The I/O of one engine thread over `tun` (a TUN queue) and `raw` (the
    /// first thread's tunnel sockets; none for the others).
    pub(super) fn new(
        tun: TunDevice,
        raw: Vec<RawRx>,
        tx: RawTx,
        cfg: &DataplaneConfig,
        (punt_tx, new_flow_tx): (SyncSender<PuntedPacket>, Option<SyncSender<NewFlow>>),
        wake: Arc<EventFd>,
        stats: Arc<ShellCounters>,
    ) -> Self {
        // With offloads one read may be a 64-segment super-packet: the queue
        // gets the slots for one after a batch of small packets.
        let tun_batch = if tun.offload() { MAX_SLOTS } else { cfg.batch };
        Self {
            tun,
            raw,
            tx,
            slots: Slots::new(tun_batch.max(cfg.batch), cfg.max_packet),
            meta: [RxMeta::default(); MAX_SLOTS],
            tun_batch,
            txq: Vec::with_capacity(MAX_SLOTS),
            scratch: vec![0; cfg.max_packet],
            release_buf: vec![0; HEADROOM + cfg.max_packet],
            mtu: cfg.engine.tunnel_mtu,
            batch: cfg.batch,
            punt_tx,
            new_flow_tx,
            decisions: None,
            wake,
            stats,
        }
    }

    /// Sleep until a source is readable, a command arrives, or `timeout`.
    pub(super) fn wait(&mut self, timeout: Duration) {
        bump(&self.stats.polls, 1);
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        // wake, tun, then up to four raw sockets; unused entries poll nothing.
        let mut list: [PollFd<'_>; 6] = std::array::from_fn(|i| match i {
            0 => PollFd::new(self.wake.as_fd(), PollFlags::POLLIN),
            1 => PollFd::new(self.tun.as_fd(), PollFlags::POLLIN),
            _ => match self.raw.get(i - 2) {
                Some(r) => PollFd::new(r.as_fd(), PollFlags::POLLIN),
                None => PollFd::new(self.wake.as_fd(), PollFlags::empty()),
            },
        });
        let n = 2 + self.raw.len().min(4);
        let _ = poll(&mut list[..n], PollTimeout::from(ms));
        // Drain the wake counter; commands are read by the loop.
        let _ = self.wake.read();
    }

    /// Read what the TUN queue holds (no lock): packets now in the slots.
    pub(super) fn read_tun(&mut self) -> usize {
        let r = match self
            .tun
            .recv_batch(&mut self.slots, &mut self.meta[..self.tun_batch])
        {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "tun read failed");
                bump(&self.stats.rx_errors, 1);
                return 0;
            }
        };
        bump(&self.stats.rx_tun, r.packets as u64);
        bump(&self.stats.tun_reads, r.reads as u64);
        bump(&self.stats.rx_errors, r.bad as u64);
        r.packets
    }

    /// Read what raw socket `i` holds (no lock).
    pub(super) fn read_raw(&mut self, i: usize) -> usize {
        let Some(rx) = self.raw.get_mut(i) else {
            return 0;
        };
        let n = match rx.recv_batch(&mut self.slots, &mut self.meta[..self.batch]) {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "raw receive failed");
                bump(&self.stats.rx_errors, 1);
                return 0;
            }
        };
        bump(&self.stats.rx_tunnel, n as u64);
        n
    }

    /// Send what the node releases of the packets it held (a handful, rarely:
    /// the first packets of flows re-created after a failure).
    pub(super) fn send_released(&mut self, node: &mut dyn DataplaneNode, now: Instant) {
        let mut buf = std::mem::take(&mut self.release_buf);
        while let Some((verdict, pkt)) = node.poll_released(now, &mut buf, HEADROOM) {
            bump(&self.stats.released, 1);
            let next_hop = match verdict {
                Verdict::Forward {
                    next_hop,
                    fragment: false,
                }
                | Verdict::Reply { to: next_hop } => next_hop,
                Verdict::Forward {
                    next_hop,
                    fragment: true,
                } => {
                    let (tx, stats) = (&self.tx, &self.stats);
                    send_fragmented(tx, stats, self.mtu, &mut self.scratch, pkt.data(), next_hop);
                    continue;
                }
                // Counted by the node and engine.
                _ => continue,
            };
            match self.tx.send_one(pkt.data(), next_hop) {
                Ok(()) => bump(&self.stats.tx_packets, 1),
                Err(_) => bump(&self.stats.tx_failed, 1),
            }
        }
        self.release_buf = buf;
    }

    /// Run the `n` packets just read through `node` (the caller holds its
    /// lock): forwards and replies queue for [`Io::transmit`], fragments go
    /// out at once, punts and new-flow notices to their channels.
    pub(super) fn classify(&mut self, n: usize, node: &mut dyn DataplaneNode, now: Instant) {
        if n == 0 {
            return;
        }
        bump(&self.stats.batches, 1);
        self.txq.clear();
        for i in 0..n {
            let m = self.meta[i];
            if m.truncated {
                bump(&self.stats.rx_truncated, 1);
                continue;
            }
            let Ok(mut pkt) = PacketBuf::new(self.slots.slot_mut(i), m.start, m.len) else {
                bump(&self.stats.rx_truncated, 1);
                continue;
            };
            // Compared after the verdict: a counter read, no per-packet work else.
            let new_before = self.decisions.as_ref().map(|_| node.engine().new_flows());
            // Decision timing (see DecisionObserver): one vDSO clock read per
            // packet, only while an observer is installed.
            let started = self.decisions.as_ref().map(|_| std::time::Instant::now());
            let verdict = node.handle_packet(now, &mut pkt);
            if let (Some(t0), Some(o), Some(before)) = (started, &self.decisions, new_before)
                && node.engine().new_flows() != before
            {
                o.new_flow_decision(u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX));
            }
            if let Verdict::Forward { next_hop, .. } = verdict
                && let Some(key) = node.take_new_flow()
            {
                new_flow(self.new_flow_tx.as_ref(), &self.stats, key, next_hop, now);
            }
            match verdict {
                Verdict::Forward {
                    next_hop,
                    fragment: false,
                }
                | Verdict::Reply { to: next_hop } => self.txq.push(TxItem {
                    slot: i,
                    start: pkt.start(),
                    len: pkt.len(),
                    dst: next_hop,
                }),
                Verdict::Forward {
                    next_hop,
                    fragment: true,
                } => {
                    let (tx, stats) = (&self.tx, &self.stats);
                    send_fragmented(tx, stats, self.mtu, &mut self.scratch, pkt.data(), next_hop);
                }
                Verdict::Deliver => {
                    punt(
                        &self.punt_tx,
                        &self.stats,
                        PuntKind::Deliver,
                        pkt.data(),
                        now,
                    );
                }
                Verdict::Recover { key } => {
                    let kind = PuntKind::Recover { key };
                    punt(&self.punt_tx, &self.stats, kind, pkt.data(), now);
                }
                Verdict::Advert => {
                    punt(
                        &self.punt_tx,
                        &self.stats,
                        PuntKind::Advert,
                        pkt.data(),
                        now,
                    );
                }
                // Counted by the engine.
                Verdict::Drop(_) => {}
            }
        }
    }

    /// Send what [`Io::classify`] queued, one `sendmmsg` per family run (no
    /// lock).
    pub(super) fn transmit(&mut self) {
        if !self.txq.is_empty() {
            let r = self.tx.send_batch(&self.slots, &self.txq);
            bump(&self.stats.tx_packets, r.sent as u64);
            bump(&self.stats.tx_failed, r.failed as u64);
            self.txq.clear();
        }
    }
}

/// Report a newly pinned flow; `outer` is the encapsulated packet. A full channel
/// drops the notice (counted) rather than stall forwarding.
/// Send `packet` cut into fragments that fit the tunnel MTU (the verdict
/// asked for it), each fragment counted as sent or failed; a packet that
/// cannot be cut is one failure. Used for batches and released packets alike.
fn send_fragmented(
    tx: &RawTx,
    stats: &ShellCounters,
    mtu: usize,
    scratch: &mut [u8],
    packet: &[u8],
    next_hop: IpAddr,
) {
    let r = fragment_ipv4(packet, mtu, scratch, |frag| {
        match tx.send_one(frag, next_hop) {
            Ok(()) => {
                bump(&stats.tx_packets, 1);
                bump(&stats.tx_fragments, 1);
            }
            Err(_) => bump(&stats.tx_failed, 1),
        }
    });
    if r.is_err() {
        bump(&stats.tx_failed, 1);
    }
}

fn new_flow(
    tx: Option<&SyncSender<NewFlow>>,
    stats: &ShellCounters,
    key: FlowKey,
    next_hop: IpAddr,
    at: Instant,
) {
    let Some(tx) = tx else {
        return;
    };
    let sent = tx.try_send(NewFlow { key, next_hop, at }).is_ok();
    bump(
        if sent {
            &stats.new_flows
        } else {
            &stats.new_flow_dropped
        },
        1,
    );
}

/// The inner packet of an IP-in-IP packet the engine built (no IPv6 extension
/// headers are emitted, so the outer IPv6 header is the fixed 40 bytes).
fn punt(
    punt_tx: &SyncSender<PuntedPacket>,
    stats: &ShellCounters,
    kind: PuntKind,
    data: &[u8],
    at: Instant,
) {
    let p = PuntedPacket {
        kind,
        data: data.to_vec(),
        at,
    };
    match punt_tx.try_send(p) {
        Ok(()) => bump(&stats.punted, 1),
        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
            bump(&stats.punt_dropped, 1);
        }
    }
}
