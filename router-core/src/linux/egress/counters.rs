//! What a stage counts, and the snapshot it hands out: the scheduler's class
//! counters joined with the shell's (reads, malformed packets, send errors).

use crate::queue::OwnedPacket;
use crate::sched::{ClassId, LinkScheduler, QueueDrop};

/// Counters of the stage's shell (not of the scheduler).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StageCounters {
    /// Packets read from the capture TUN.
    pub read_packets: u64,
    /// Bytes read from the capture TUN.
    pub read_bytes: u64,
    /// Packets dropped before classification: not IPv4/IPv6, shorter than
    /// their header, or a length field beyond the read.
    pub malformed: u64,
    /// Reads that filled the whole buffer (maybe cut): dropped.
    pub truncated: u64,
    /// Reads that failed for another reason than "nothing left".
    pub read_errors: u64,
    /// Packets the kernel refused to send (no route, too big, buffer full
    /// past the send timeout): dropped after leaving the queue.
    pub send_errors: u64,
    /// Packets read while the pool was empty (none: the pool holds the
    /// shared queue limit plus one batch; kept as a guard).
    pub pool_exhausted: u64,
    /// Packets sent at stop, unshaped, to empty the queue.
    pub flushed_at_stop: u64,
    /// Times the thread slept in `poll`.
    pub polls: u64,
    /// Times the shaper's timer woke it.
    pub timer_wakeups: u64,
    /// Commands handled (rank swaps, snapshots).
    pub commands: u64,
}

/// One class in an [`EgressSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EgressClassSnapshot {
    /// The class's id as configured.
    pub id: ClassId,
    /// Its weight.
    pub weight: u32,
    /// Its priority.
    pub priority: u8,
    /// Packets accepted into its queue.
    pub enqueued: u64,
    /// Packets handed to the kernel.
    pub sent_packets: u64,
    /// Bytes handed to the kernel.
    pub sent_bytes: u64,
    /// Packets refused, per [`QueueDrop`] (index `reason as usize`): tail
    /// drops are `ClassPackets`/`ClassBytes`/`BufferPackets`/`BufferBytes`.
    pub drops: [u64; QueueDrop::COUNT],
    /// Packets that left its queue but the kernel refused.
    pub send_errors: u64,
    /// Packets queued now.
    pub queued_packets: u32,
    /// Bytes queued now.
    pub queued_bytes: u64,
}

impl EgressClassSnapshot {
    /// Packets refused for one reason.
    pub fn dropped(&self, reason: QueueDrop) -> u64 {
        self.drops[reason as usize]
    }

    /// Packets refused because a queue was full (tail drop).
    pub fn tail_drops(&self) -> u64 {
        [
            QueueDrop::ClassPackets,
            QueueDrop::ClassBytes,
            QueueDrop::BufferPackets,
            QueueDrop::BufferBytes,
        ]
        .iter()
        .map(|&r| self.dropped(r))
        .sum()
    }
}

/// The stage's state, read on its thread between two packets.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EgressSnapshot {
    /// Name of the rank function in use.
    pub rank: String,
    /// Rank functions swapped in since start.
    pub rank_swaps: u64,
    /// Rank calls that failed (the packet was ranked at virtual time).
    pub rank_faults: u64,
    /// Packets queued in all classes.
    pub queued_packets: u64,
    /// Bytes queued in all classes.
    pub queued_bytes: u64,
    /// Packets refused before reaching a class: headers the classifier
    /// could not read ([`QueueDrop::Unclassified`]).
    pub unclassified: u64,
    /// The classes, in configuration order.
    pub classes: Vec<EgressClassSnapshot>,
    /// The shell's counters.
    pub stage: StageCounters,
}

impl EgressSnapshot {
    /// The class with configured id `id`.
    pub fn class(&self, id: ClassId) -> Option<&EgressClassSnapshot> {
        self.classes.iter().find(|c| c.id == id)
    }
}

/// Per-class counters the shell keeps, by position in the configuration.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ClassTx {
    pub(super) sent_packets: u64,
    pub(super) sent_bytes: u64,
    pub(super) send_errors: u64,
}

/// Builds a snapshot from the scheduler and the shell's counters.
/// `classes` pairs each configured id with the scheduler's.
pub(super) fn snapshot(
    sched: &LinkScheduler<OwnedPacket>,
    classes: &[(ClassId, ClassId)],
    tx: &[ClassTx],
    stage: StageCounters,
) -> EgressSnapshot {
    let c = sched.counters();
    let out = classes
        .iter()
        .zip(tx)
        .filter_map(|(&(id, sid), t)| {
            let s = sched.stats(sid).ok()?;
            let cfg = sched.class_config(sid).ok()?;
            Some(EgressClassSnapshot {
                id,
                weight: cfg.weight,
                priority: cfg.priority,
                enqueued: s.enqueued,
                sent_packets: t.sent_packets,
                sent_bytes: t.sent_bytes,
                drops: s.dropped,
                send_errors: t.send_errors,
                queued_packets: s.backlog,
                queued_bytes: s.backlog_bytes,
            })
        })
        .collect();
    EgressSnapshot {
        rank: sched.rank_name().to_owned(),
        rank_swaps: c.rank_swaps,
        rank_faults: c.rank_faults,
        queued_packets: sched.len() as u64,
        queued_bytes: sched.queued_bytes(),
        unclassified: c.dropped(QueueDrop::Unclassified),
        classes: out,
        stage,
    }
}
