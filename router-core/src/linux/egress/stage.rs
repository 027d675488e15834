//! The stage thread: reads the capture TUN into pooled buffers, queues them
//! in the link scheduler, sends what the shaper lets go through the marked
//! raw sockets, and sleeps in `poll` until a packet, a command or the
//! shaper's deadline.

use super::counters::{self, ClassTx, StageCounters};
use super::io::StageIo;
use super::{EgressConfig, EgressError, EgressSnapshot, MAX_QUEUED_PACKETS};
use crate::classify::VirtualSubnet;
use crate::linux::Clock;
use crate::packet::HEADROOM;
use crate::queue::{OwnedPacket, PacketPool, QueueManager, SourceClassifier};
use crate::sched::{ClassConfig, ClassId, LinkScheduler, Rank, SchedConfig};
use crate::time::Instant;
use crate::wire::{Ipv4Packet, Ipv6Packet};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::EventFd;
use resource_mgr::RateLimit;
use std::hash::BuildHasher;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};

/// Most packets read from the TUN between two looks at the clock.
pub(super) const BATCH: usize = 64;

/// A request to the stage thread.
pub(super) enum Command {
    SetRank(Box<dyn Rank>, SyncSender<Box<dyn Rank>>),
    Snapshot(SyncSender<EgressSnapshot>),
    Stop,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::SetRank(..) => "SetRank",
            Self::Snapshot(_) => "Snapshot",
            Self::Stop => "Stop",
        })
    }
}

/// The scheduler side of the stage.
#[derive(Debug)]
pub(super) struct Queue {
    qm: QueueManager,
    pool: PacketPool,
    /// Configured id and scheduler id of each class, in configuration order.
    classes: Vec<(ClassId, ClassId)>,
    /// Position in `classes` by scheduler class index.
    position: Vec<Option<usize>>,
    tx: Vec<ClassTx>,
    stage: StageCounters,
}

/// A random key for the classifier's flow hash.
fn flow_key() -> [u64; 4] {
    let s = std::collections::hash_map::RandomState::new();
    std::array::from_fn(|i| s.hash_one(i))
}

/// Builds the scheduler (one leaf per class, shaped to the link), the
/// classifier and the pool for packets of up to `max_packet` bytes.
pub(super) fn build_queue(
    cfg: &EgressConfig,
    rank: Box<dyn Rank>,
    max_packet: usize,
) -> Result<Queue, EgressError> {
    let n = cfg.classes.len();
    let total_packets = (n.saturating_mul(cfg.limit_packets as usize)).min(MAX_QUEUED_PACKETS);
    let total_bytes = (n as u64).saturating_mul(cfg.limit_bytes);
    let rate = cfg.rate_bps / 8;
    // Four milliseconds at the link rate (at least four full packets): the
    // link catches up after the thread was descheduled that long, and the
    // timer wakes at most once per packet.
    let burst = (rate / 250).max(4 * max_packet as u64);
    let link = RateLimit::new(rate, burst).map_err(|e| EgressError::Config {
        field: "rate_bps",
        reason: e.to_string(),
    })?;
    let config = SchedConfig::new(total_packets, total_bytes)
        .with_max_classes(n + 1)
        .with_link(Some(link));
    let mut sched = LinkScheduler::with_rank(config, rank);
    let sources: usize = cfg.classes.iter().map(|c| c.sources.len()).sum();
    let mut classifier = SourceClassifier::new(sources.max(1), flow_key());
    let mut classes = Vec::with_capacity(n);
    let bad = |reason: String| EgressError::Config {
        field: "classes",
        reason,
    };
    for c in &cfg.classes {
        let class = ClassConfig::new(c.weight)
            .with_priority(c.priority)
            .with_limits(cfg.limit_packets, cfg.limit_bytes);
        let sid = sched
            .add_class(ClassId::ROOT, class)
            .map_err(|e| bad(format!("{}: {e}", c.id)))?;
        for s in &c.sources {
            add_source(&mut classifier, *s, sid).map_err(|e| bad(format!("{}: {e}", c.id)))?;
        }
        if c.id == cfg.default_class {
            classifier.set_default(Some(sid));
        }
        classes.push((c.id, sid));
    }
    let mut position = vec![None; n + 1];
    for (i, (_, sid)) in classes.iter().enumerate() {
        if let Some(p) = position.get_mut(sid.index() as usize) {
            *p = Some(i);
        }
    }
    Ok(Queue {
        qm: QueueManager::new(classifier, sched),
        pool: PacketPool::new(total_packets + BATCH, max_packet + 1),
        classes,
        position,
        tx: vec![ClassTx::default(); n],
        stage: StageCounters::default(),
    })
}

fn add_source(
    c: &mut SourceClassifier,
    subnet: VirtualSubnet,
    class: ClassId,
) -> Result<(), String> {
    match c.insert(subnet, class) {
        Ok(None) => Ok(()),
        Ok(Some(_)) => Err(format!("source {subnet} is mapped twice")),
        Err(e) => Err(e.to_string()),
    }
}

/// Frames the IP packet read into `p` (`len` bytes at [`HEADROOM`]) to its
/// header's length; `false` if it is no readable IPv4/IPv6 packet.
fn frame(p: &mut OwnedPacket, len: usize) -> bool {
    if p.set_frame(HEADROOM, len).is_err() {
        return false;
    }
    let ip_len = match p.data().first().map(|b| b >> 4) {
        Some(4) => Ipv4Packet::new_checked(p.data()).map(|h| usize::from(h.total_len())),
        Some(6) => Ipv6Packet::new_checked(p.data()).map(|h| 40 + usize::from(h.payload_len())),
        _ => return false,
    };
    match ip_len {
        Ok(l) if l <= len => p.set_frame(HEADROOM, l).is_ok(),
        _ => false,
    }
}

impl Queue {
    /// Reads up to [`BATCH`] packets and queues them; returns how many were read.
    fn read_batch(&mut self, io: &StageIo, now: Instant) -> usize {
        let cap = self.pool.buf_len();
        let mut n = 0;
        while n < BATCH {
            let Some(mut p) = self.pool.take() else {
                self.stage.pool_exhausted += 1;
                break;
            };
            let r = match p.storage_mut().get_mut(HEADROOM..cap) {
                Some(buf) => nix::unistd::read(io.tun.as_fd(), buf),
                None => Err(Errno::EINVAL),
            };
            let len = match r {
                Ok(len) => len,
                Err(Errno::EINTR) => {
                    self.pool.give(p);
                    continue;
                }
                Err(e) => {
                    if e != Errno::EAGAIN {
                        self.stage.read_errors += 1;
                        tracing::debug!(link = %io.link, error = %e, "read(tun) failed");
                    }
                    self.pool.give(p);
                    break;
                }
            };
            n += 1;
            self.stage.read_packets += 1;
            self.stage.read_bytes += len as u64;
            if HEADROOM + len >= cap {
                self.stage.truncated += 1;
                self.pool.give(p);
            } else if !frame(&mut p, len) {
                self.stage.malformed += 1;
                self.pool.give(p);
            } else if let Err(refused) = self.qm.enqueue(p, now) {
                self.pool.give(refused.packet);
            }
        }
        n
    }

    /// Sends every packet the shaper lets go at `now`.
    fn send_ready(&mut self, io: &StageIo, now: Instant) {
        while let Some(d) = self.qm.dequeue(now) {
            let at = self
                .position
                .get(d.class.index() as usize)
                .copied()
                .flatten();
            let r = io.send(d.packet.data());
            if let Some(t) = at.and_then(|i| self.tx.get_mut(i)) {
                match &r {
                    Ok(()) => {
                        t.sent_packets += 1;
                        t.sent_bytes += u64::from(d.len);
                    }
                    Err(_) => t.send_errors += 1,
                }
            }
            if let Err(error) = r {
                self.stage.send_errors += 1;
                tracing::debug!(link = %io.link, %error, len = d.len, "re-injection refused");
            }
            self.pool.give(d.packet);
        }
    }

    fn snapshot(&self) -> EgressSnapshot {
        counters::snapshot(self.qm.scheduler(), &self.classes, &self.tx, self.stage)
    }

    /// Handles the queued commands; `true` to stop.
    fn commands(&mut self, rx: &Receiver<Command>) -> bool {
        loop {
            let cmd = match rx.try_recv() {
                Ok(c) => c,
                Err(TryRecvError::Empty) => return false,
                Err(TryRecvError::Disconnected) => return true,
            };
            self.stage.commands += 1;
            match cmd {
                Command::SetRank(rank, reply) => {
                    let old = self.qm.scheduler_mut().set_rank(rank);
                    // If the caller is gone, the old rank is dropped here.
                    let _ = reply.send(old);
                }
                Command::Snapshot(reply) => {
                    let _ = reply.send(self.snapshot());
                }
                Command::Stop => return true,
            }
        }
    }

    /// Sends everything still queued, unshaped (stop).
    fn flush(&mut self, io: &StageIo, now: Instant) {
        let before = self.qm.scheduler().len();
        self.qm.scheduler_mut().set_link(None, now);
        self.send_ready(io, now);
        self.stage.flushed_at_stop += before as u64;
    }
}

/// The thread's loop; returns on [`Command::Stop`] or when the stage handle
/// is gone.
pub(super) fn run(io: StageIo, mut q: Queue, rx: Receiver<Command>, wake: Arc<EventFd>) {
    let clock = Clock::new();
    let mut armed: Option<Instant> = None;
    loop {
        let now = clock.now();
        let busy = q.pool.available() > 0 && q.read_batch(&io, now) == BATCH;
        let now = clock.now();
        q.send_ready(&io, now);
        let next = q.qm.next_ready(now);
        if next != armed {
            io.arm(next.map(|t| t.saturating_since(now)));
            armed = next;
        }
        let tun_events = if q.pool.available() > 0 {
            PollFlags::POLLIN
        } else {
            PollFlags::empty()
        };
        let mut fds = [
            PollFd::new(io.tun.as_fd(), tun_events),
            PollFd::new(wake.as_fd(), PollFlags::POLLIN),
            PollFd::new(io.timer.as_fd(), PollFlags::POLLIN),
        ];
        let timeout = if busy {
            PollTimeout::ZERO
        } else {
            q.stage.polls += 1;
            PollTimeout::NONE
        };
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(error) => {
                tracing::error!(link = %io.link, %error, "poll failed; egress stage stops");
                break;
            }
        }
        let ready = |i: usize| {
            fds[i]
                .revents()
                .is_some_and(|r| r.contains(PollFlags::POLLIN))
        };
        let (woken, timed) = (ready(1), ready(2));
        if timed {
            // Reading clears the expiration; the deadline is due.
            let _ = io.timer.wait();
            armed = None;
            q.stage.timer_wakeups += 1;
        }
        if woken {
            let _ = wake.read();
            if q.commands(&rx) {
                break;
            }
        }
    }
    q.flush(&io, clock.now());
    tracing::info!(link = %io.link, flushed = q.stage.flushed_at_stop,
        sent = q.qm.scheduler().counters().dequeued, "egress stage thread exits");
}
