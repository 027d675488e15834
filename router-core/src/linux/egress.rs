//! Userspace egress stage: the [`LinkScheduler`]
//! (PIFO tree, rank function, link shaping) in front of one real Linux link.
//!
//! # What it owns
//!
//! An [`EgressStage`] owns, for one link `L`, everything it adds to the kernel
//! and one thread named `pronto-egress`:
//!
//! - a **capture TUN** (`IFF_TUN | IFF_NO_PI`, no offloads, IPv6 off, up);
//! - on `L`'s **clsact** egress hook two classic-BPF (`cls_bpf`) filters at
//!   priorities [`FILTER_PRIO_PASS`] and [`FILTER_PRIO_REDIRECT`]:
//!   1. `skb->mark == mark`: classified with no action, so the packet passes
//!      (`TC_ACT_OK`): the stage's own re-injected packets leave untouched;
//!   2. IPv4, and IPv6 to a destination outside `ff00::/8` and `fe80::/10`:
//!      `mirred egress redirect dev <tun>`, which pulls the MAC header and
//!      hands the IP packet to the TUN reader (GSO packets are segmented by the
//!      stack first: the TUN has no offloads). ARP and link-scope IPv6 (ND,
//!      MLD) are not captured: the stage could not re-inject them.
//!
//!   The clsact qdisc is shared when it exists (the BPF fast path may have one)
//!   and created otherwise; it is deleted on stop only if the stage created it
//!   and no other filter uses it. (This kernel has neither `fw`, `matchall`
//!   nor `gact`, so the mark test and the protocol test are cBPF programs.)
//! - **raw sockets** (`IPPROTO_RAW`, header included, IPv4 and IPv6) with
//!   `SO_MARK = mark` and `SO_BINDTODEVICE = L`, which re-inject each packet to
//!   its destination: routing sends it out `L` again and filter 1 lets it go.
//! - the **scheduler**: one leaf per [`EgressClass`] under the root, packets
//!   classified by IPv4/IPv6 *source* prefix ([`SourceClassifier`]), shaped to
//!   the link rate, held in buffers from a bounded [`PacketPool`].
//!
//! The thread sleeps in `poll` on the TUN, an eventfd for commands
//! ([`EgressStage::set_rank`], [`EgressStage::snapshot`], stop) and a timerfd
//! armed at the shaper's next deadline (nanoseconds); it never spins while idle.
//!
//! # What it must never do
//!
//! Panic on a packet (short or malformed packets are dropped and counted),
//! allocate or block per packet beyond one `read` and one `sendto`, grow a
//! queue or table without bound, drop a queued packet for a rank swap, or
//! remove a tc object it did not add. Every drop has a counter
//! ([`EgressSnapshot`]). Start cleans up whatever it added when it fails half
//! way; [`EgressStage::stop`] and `Drop` remove the filters (redirect first),
//! send what is still queued, close the TUN and join the thread.
//!
//! The stage acts in the network namespace of the thread that calls
//! [`EgressStage::start`]. Its netlink calls block on private current-thread
//! runtimes: do not call `start`, `stop` or drop the stage on a tokio worker.
//!
//! [`SourceClassifier`]: crate::queue::SourceClassifier
//! [`PacketPool`]: crate::queue::PacketPool

mod capture;
mod counters;
mod filters;
mod io;
mod stage;

pub use counters::{EgressClassSnapshot, EgressSnapshot, StageCounters};
pub use filters::{FILTER_PRIO_PASS, FILTER_PRIO_REDIRECT};

use crate::classify::VirtualSubnet;
use crate::linux::SyscallError;
use crate::linux::tun::MAX_IFNAME;
use crate::sched::{ClassConfig, ClassId, LinkScheduler, Rank, SchedConfig};
use capture::Capture;
use io::StageIo;
use nix::sys::eventfd::{EfdFlags, EventFd};
use stage::Command;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::mpsc::{self, SyncSender};
use std::thread::JoinHandle;

/// Most classes a stage schedules.
pub const MAX_CLASSES: usize = 1024;
/// Most packets queued in all classes together (the packet pool holds this
/// many buffers plus one read batch).
pub const MAX_QUEUED_PACKETS: usize = 65_536;

/// One leaf class under the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressClass {
    /// The class's name in the config and in snapshots. Ids are labels: get
    /// distinct ones from [`EgressConfig::class_ids`], which also makes them
    /// the scheduler's own ids (the indices rank functions see) when the
    /// classes are listed in the same order.
    pub id: ClassId,
    /// Share among the classes (at least 1); SFQ serves by it.
    pub weight: u32,
    /// Strict priority (0 is served first) for [`StrictPriority`](crate::sched::StrictPriority).
    pub priority: u8,
    /// Source prefixes whose packets belong to this class.
    pub sources: Vec<VirtualSubnet>,
}

/// What to schedule, on which link, at which rate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressConfig {
    /// The real interface whose egress is scheduled.
    pub link: String,
    /// Name of the capture TUN the stage creates (at most 15 bytes).
    pub tun: String,
    /// Link rate the stage paces to, bits per second (IP bytes are counted).
    pub rate_bps: u64,
    /// Leaves under the root, classified by source prefix.
    pub classes: Vec<EgressClass>,
    /// Class of packets whose source matches no prefix.
    pub default_class: ClassId,
    /// fwmark of the stage's re-injected packets (non-zero), so they are not
    /// captured again. Nothing else on the link may use it.
    pub mark: u32,
    /// Most packets each class may queue (tail drop beyond, counted).
    pub limit_packets: u32,
    /// Most bytes each class may queue (tail drop beyond, counted).
    pub limit_bytes: u64,
}

impl EgressConfig {
    /// `n` distinct class ids: the ids a fresh scheduler gives its first `n`
    /// classes (control path; allocates).
    pub fn class_ids(n: usize) -> Vec<ClassId> {
        let mut s: LinkScheduler<()> =
            LinkScheduler::new(SchedConfig::new(1, 1).with_max_classes(n.saturating_add(1)));
        (0..n)
            .map_while(|_| s.add_class(ClassId::ROOT, ClassConfig::new(1)).ok())
            .collect()
    }

    /// Checks everything that can be checked without the kernel.
    pub fn validate(&self) -> Result<(), EgressError> {
        let bad = |field: &'static str, reason: String| Err(EgressError::Config { field, reason });
        for (field, name) in [("link", &self.link), ("tun", &self.tun)] {
            if name.is_empty() || name.len() > MAX_IFNAME || name.contains(['/', ' ', '.']) {
                return bad(
                    field,
                    format!("{name:?} must be 1..={MAX_IFNAME} bytes without '/', ' ' or '.'"),
                );
            }
        }
        if self.link == self.tun {
            return bad("tun", "must differ from the link".to_owned());
        }
        if self.rate_bps < 8 {
            return bad("rate_bps", format!("{} is below 8 bit/s", self.rate_bps));
        }
        if self.mark == 0 {
            return bad(
                "mark",
                "0 is every unmarked packet; pick a non-zero mark".to_owned(),
            );
        }
        if self.limit_packets == 0 || self.limit_bytes == 0 {
            return bad(
                "limit_packets",
                "class limits must be at least 1".to_owned(),
            );
        }
        if self.classes.is_empty() || self.classes.len() > MAX_CLASSES {
            return bad("classes", format!("need 1..={MAX_CLASSES} classes"));
        }
        let mut seen = BTreeSet::new();
        for c in &self.classes {
            if c.id == ClassId::ROOT || !seen.insert(c.id) {
                return bad("classes", format!("{} is the root or used twice", c.id));
            }
            if c.weight == 0 {
                return bad("classes", format!("{} has weight 0", c.id));
            }
        }
        if !seen.contains(&self.default_class) {
            return bad(
                "default_class",
                format!("{} is not one of the classes", self.default_class),
            );
        }
        Ok(())
    }
}

/// Why the stage could not start or answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EgressError {
    /// The configuration is invalid; nothing was changed.
    #[error("invalid egress config: {field}: {reason}")]
    Config {
        /// The field at fault.
        field: &'static str,
        /// What is wrong and what to do.
        reason: String,
    },
    /// A system call failed (TUN, raw socket, eventfd, timerfd, thread).
    #[error("egress stage: {source}")]
    Syscall {
        /// The call and the OS error.
        #[source]
        source: SyscallError,
    },
    /// A link operation over rtnetlink failed.
    #[error("egress stage on {link}: {source}")]
    Link {
        /// The link.
        link: String,
        /// The netlink error (errno inside; boxed: it is large and rare).
        #[source]
        source: Box<crate::linux::NetlinkError>,
    },
    /// The netlink socket for tc could not be opened.
    #[error("cannot open a netlink connection for tc: {source}")]
    Connect {
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused a tc request (EPERM: needs CAP_NET_ADMIN; ENOENT:
    /// clsact, cls_bpf or mirred missing; EEXIST: priority taken).
    #[error("tc {op} {object} on {link} failed (errno {errno:?}): {source}")]
    Tc {
        /// `"add"`, `"delete"` or `"dump"`.
        op: &'static str,
        /// What it acted on, as `tc` names it.
        object: String,
        /// The link.
        link: String,
        /// The kernel's errno, if it sent one.
        errno: Option<i32>,
        /// The rtnetlink error.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// Another filter sits at one of the stage's egress priorities.
    #[error(
        "egress filter priority {prio} on {link} is taken (a stage left behind? \
         `tc filter del dev {link} egress prio {prio}`)"
    )]
    PrioInUse {
        /// The link.
        link: String,
        /// The priority.
        prio: u16,
    },
    /// The stage thread is gone (it panicked or was stopped).
    #[error("the egress stage thread of {link} is not running")]
    Stopped {
        /// The link.
        link: String,
    },
}

impl From<SyscallError> for EgressError {
    fn from(source: SyscallError) -> Self {
        Self::Syscall { source }
    }
}

/// The running stage (see the module docs). Stops on drop.
#[derive(Debug)]
pub struct EgressStage {
    link: String,
    commands: SyncSender<Command>,
    wake: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
    capture: Option<Capture>,
}

impl EgressStage {
    /// Creates the TUN, the raw sockets and the scheduler, installs the
    /// filters and starts the thread. On error, whatever was added is removed.
    pub fn start(cfg: EgressConfig, rank: Box<dyn Rank>) -> Result<Self, EgressError> {
        cfg.validate()?;
        let mut capture = Capture::open(&cfg)?;
        let io = StageIo::open(&cfg, &mut capture)?;
        let sched = stage::build_queue(&cfg, rank, io.max_packet)?;
        let wake = Arc::new(
            EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
                .map_err(|e| SyscallError::errno("eventfd", e))?,
        );
        capture.install_filters()?;
        let (commands, rx) = mpsc::sync_channel(16);
        let thread_wake = Arc::clone(&wake);
        let link = cfg.link.clone();
        let thread = std::thread::Builder::new()
            .name("pronto-egress".to_owned())
            .spawn(move || stage::run(io, sched, rx, thread_wake))
            .map_err(|e| SyscallError::new("spawn(pronto-egress)", e))?;
        tracing::info!(link = %cfg.link, tun = %cfg.tun, rate_bps = cfg.rate_bps,
            classes = cfg.classes.len(), mark = cfg.mark, "egress stage started");
        Ok(Self {
            link,
            commands,
            wake,
            thread: Some(thread),
            capture: Some(capture),
        })
    }

    fn call<T>(&self, make: impl FnOnce(SyncSender<T>) -> Command) -> Result<T, EgressError> {
        let stopped = || EgressError::Stopped {
            link: self.link.clone(),
        };
        let (tx, rx) = mpsc::sync_channel(1);
        self.commands.send(make(tx)).map_err(|_| stopped())?;
        let _ = self.wake.write(1);
        rx.recv().map_err(|_| stopped())
    }

    /// Replaces the rank function between two packets on the stage thread
    /// ([`LinkScheduler::set_rank`]: queued packets keep their ranks, none is
    /// dropped) and returns the old one once the new one is in use; the old
    /// one is dropped on the caller's thread.
    pub fn set_rank(&self, rank: Box<dyn Rank>) -> Result<Box<dyn Rank>, EgressError> {
        self.call(|reply| Command::SetRank(rank, reply))
    }

    /// The stage's counters, read on its thread between two packets.
    pub fn snapshot(&self) -> Result<EgressSnapshot, EgressError> {
        self.call(Command::Snapshot)
    }

    /// Removes the filters (redirect first), sends what is queued, closes the
    /// TUN, joins the thread and deletes the clsact qdisc if the stage made it.
    pub fn stop(mut self) -> Result<(), EgressError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), EgressError> {
        let mut first = None;
        if let Some(c) = self.capture.as_mut()
            && let Err(e) = c.remove_filters()
        {
            first = Some(e);
        }
        if let Some(t) = self.thread.take() {
            let _ = self.commands.send(Command::Stop);
            let _ = self.wake.write(1);
            if t.join().is_err() {
                tracing::error!(link = %self.link, "egress stage thread panicked");
                first.get_or_insert(EgressError::Stopped {
                    link: self.link.clone(),
                });
            }
        }
        if let Some(mut c) = self.capture.take()
            && let Err(e) = c.remove_qdisc()
        {
            first.get_or_insert(e);
        }
        tracing::info!(link = %self.link, clean = first.is_none(), "egress stage stopped");
        first.map_or(Ok(()), Err)
    }
}

impl Drop for EgressStage {
    fn drop(&mut self) {
        if (self.thread.is_some() || self.capture.is_some())
            && let Err(error) = self.shutdown()
        {
            tracing::warn!(link = %self.link, %error, "egress stage cleanup incomplete");
        }
    }
}
