//! The Linux shell's own counters (receive, send, punt, commands), shared with
//! handles as atomics so they read without a round trip to the dataplane.

use std::sync::atomic::{AtomicU64, Ordering};

/// Shell counters, shared with handles; one per fault.
#[derive(Debug, Default)]
pub(crate) struct ShellCounters {
    pub(crate) rx_tun: AtomicU64,
    pub(crate) tun_reads: AtomicU64,
    pub(crate) rx_tunnel: AtomicU64,
    pub(crate) rx_truncated: AtomicU64,
    pub(crate) rx_errors: AtomicU64,
    pub(crate) tx_packets: AtomicU64,
    pub(crate) tx_failed: AtomicU64,
    pub(crate) tx_fragments: AtomicU64,
    pub(crate) punted: AtomicU64,
    pub(crate) punt_dropped: AtomicU64,
    pub(crate) new_flows: AtomicU64,
    pub(crate) new_flow_dropped: AtomicU64,
    pub(crate) released: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) worker_batches: AtomicU64,
    pub(crate) polls: AtomicU64,
    pub(crate) commands: AtomicU64,
}

/// A snapshot of the shell counters (engine counters are separate:
/// [`DataplaneHandle::counters`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShellStats {
    /// Packets read from the TUN (served-subnet traffic; a super-packet's
    /// segments one by one).
    pub rx_tun: u64,
    /// `read`s of the TUN: with offloads one read may carry many segments, so
    /// `rx_tun / tun_reads` is the GSO factor.
    pub tun_reads: u64,
    /// Tunnel packets read from the raw sockets.
    pub rx_tunnel: u64,
    /// Packets longer than a slot, dropped before the engine.
    pub rx_truncated: u64,
    /// Receive calls that failed, and TUN packets the segmenter refused.
    pub rx_errors: u64,
    /// Packets (and fragments) handed to the kernel for transmission.
    pub tx_packets: u64,
    /// Packets the kernel refused to send (no route, too big, no socket).
    pub tx_failed: u64,
    /// Fragments sent for `Forward { fragment: true }`.
    pub tx_fragments: u64,
    /// Packets handed to the control plane.
    pub punted: u64,
    /// Punted packets dropped because the channel was full.
    pub punt_dropped: u64,
    /// [`NewFlow`] notices sent.
    pub new_flows: u64,
    /// [`NewFlow`] notices dropped (channel full or closed, key unreadable).
    pub new_flow_dropped: u64,
    /// Packets the node had held while their flow was re-created, released
    /// once it was (sent or failed: see `tx_packets` / `tx_failed`).
    pub released: u64,
    /// Non-empty receive batches.
    pub batches: u64,
    /// Of those, the batches the engine threads other than the first read
    /// from their TUN queues ([`super::DataplaneConfig::engine_threads`]).
    pub worker_batches: u64,
    /// Times the loop slept in `poll`.
    pub polls: u64,
    /// Control commands applied.
    pub commands: u64,
}

impl ShellCounters {
    pub(crate) fn snapshot(&self) -> ShellStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ShellStats {
            rx_tun: g(&self.rx_tun),
            tun_reads: g(&self.tun_reads),
            rx_tunnel: g(&self.rx_tunnel),
            rx_truncated: g(&self.rx_truncated),
            rx_errors: g(&self.rx_errors),
            tx_packets: g(&self.tx_packets),
            tx_failed: g(&self.tx_failed),
            tx_fragments: g(&self.tx_fragments),
            punted: g(&self.punted),
            punt_dropped: g(&self.punt_dropped),
            new_flows: g(&self.new_flows),
            new_flow_dropped: g(&self.new_flow_dropped),
            released: g(&self.released),
            batches: g(&self.batches),
            worker_batches: g(&self.worker_batches),
            polls: g(&self.polls),
            commands: g(&self.commands),
        }
    }
}

pub(crate) fn bump(a: &AtomicU64, n: u64) {
    if n > 0 {
        a.fetch_add(n, Ordering::Relaxed);
    }
}
