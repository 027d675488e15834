//! The engine threads beyond the first: each reads its own TUN queue and its
//! share of the IPv4 tunnels (raw sockets split by a socket filter: see
//! `RawRx::spread`), runs each batch through the shared node under its lock,
//! and sends the batch without it.
//!
//! Why one node under a lock rather than a node per thread: the flow table is
//! what recovery, mirroring to a spare, WHOHAS answers, shortcuts, the fast
//! path's maps and the management queries all read as one table; sharding it
//! would split each of them. The lock is held only while a batch is
//! classified (table lookup, a policy call for a new flow, encapsulation in
//! place: well under a microsecond a packet), while the system calls around
//! it (the TUN read, `sendmmsg`, and the kernel's work behind them, most of
//! a packet's cost in the profiles) run on every thread at once.

use super::io::Io;
use super::{DataplaneError, DataplaneNode, DecisionObserver, bump};
use crate::linux::Clock;
use crate::linux::fastpath::FastPathSync;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// What every engine thread reaches under the lock.
pub(super) struct Shared {
    pub(super) node: Box<dyn DataplaneNode>,
    pub(super) fast_path: Option<FastPathSync>,
}

/// The node's lock. A thread that panicked while holding it left the node
/// in an unknown state: the dataplane stops rather than forward from it.
pub(super) fn lock(shared: &Mutex<Shared>) -> Result<MutexGuard<'_, Shared>, DataplaneError> {
    shared.lock().map_err(|_| {
        tracing::error!("an engine thread panicked while it held the node; the dataplane stops");
        DataplaneError::Stopped
    })
}

/// The node's lock and the time read once it is held. Times taken before
/// the lock could reach the node out of order (a thread that waited for it
/// would bring an older one than the thread before it); read under it, the
/// node's clock never runs backwards.
pub(super) fn lock_at(
    shared: &Mutex<Shared>,
    clock: Clock,
) -> Result<(MutexGuard<'_, Shared>, crate::time::Instant), DataplaneError> {
    let g = lock(shared)?;
    Ok((g, clock.now()))
}

/// The running engine threads beyond the first.
pub(super) struct Workers {
    stop: Arc<AtomicBool>,
    threads: Vec<(Arc<nix::sys::eventfd::EventFd>, JoinHandle<()>)>,
}

impl Workers {
    /// Start one thread per [`Io`] (named `pronto-engine-N`).
    /// `first` is the first thread's wake: a batch that brings the node's
    /// next deadline forward (a mirror delta to send, a retry) wakes it, since
    /// only it runs the node's timers and it may be asleep until an older one.
    pub(super) fn spawn(
        ios: Vec<Io>,
        shared: &Arc<Mutex<Shared>>,
        decisions: Option<Arc<dyn DecisionObserver>>,
        clock: Clock,
        first: &Arc<nix::sys::eventfd::EventFd>,
    ) -> Result<Self, DataplaneError> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut me = Self {
            stop: Arc::clone(&stop),
            threads: Vec::with_capacity(ios.len()),
        };
        for (k, mut io) in ios.into_iter().enumerate() {
            io.decisions.clone_from(&decisions);
            let wake = Arc::clone(&io.wake);
            let (shared, stop, first) = (Arc::clone(shared), Arc::clone(&stop), Arc::clone(first));
            let t = std::thread::Builder::new()
                .name(format!("pronto-engine-{}", k + 1))
                .spawn(move || run(io, &shared, &stop, clock, &first))
                .map_err(|e| {
                    DataplaneError::Syscall(crate::linux::SyscallError::new("spawn(engine)", e))
                });
            match t {
                Ok(t) => me.threads.push((wake, t)),
                Err(e) => {
                    me.stop();
                    return Err(e);
                }
            }
        }
        Ok(me)
    }

    /// Stop every thread and wait for it.
    pub(super) fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for (wake, _) in &self.threads {
            let _ = wake.write(1);
        }
        for (_, t) in self.threads {
            if t.join().is_err() {
                tracing::error!("an engine thread panicked");
            }
        }
    }
}

/// One engine thread: read, classify under the lock, send, until stopped.
fn run(
    mut io: Io,
    shared: &Mutex<Shared>,
    stop: &AtomicBool,
    clock: Clock,
    first: &nix::sys::eventfd::EventFd,
) {
    while !stop.load(Ordering::Relaxed) {
        let mut got = 0;
        for i in 0..=io.raw.len() {
            let n = if i == 0 {
                io.read_tun()
            } else {
                io.read_raw(i - 1)
            };
            if n == 0 {
                continue;
            }
            bump(&io.stats.worker_batches, 1);
            match batch(&mut io, n, shared, clock) {
                Ok(Deadline::Earlier) => {
                    // A failed wake leaves the deadline to the first
                    // thread's next turn (at most its tick later).
                    let _ = first.write(1);
                }
                Ok(Deadline::Same) => {}
                Err(_) => return,
            }
            got += n;
        }
        if got == 0 {
            io.wait(Duration::from_millis(100));
        }
    }
}

/// Whether a batch brought the node's next deadline forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Deadline {
    /// Earlier than before the batch: whoever runs the timers must look again.
    Earlier,
    /// Unchanged or later.
    Same,
}

/// Classify `n` packets just read, under the lock, then send them (every
/// engine thread, the first included). Fails when the lock is poisoned.
pub(super) fn batch(
    io: &mut Io,
    n: usize,
    shared: &Mutex<Shared>,
    clock: Clock,
) -> Result<Deadline, DataplaneError> {
    let deadline;
    {
        let (mut g, now) = lock_at(shared, clock)?;
        let Shared { node, fast_path } = &mut *g;
        let before = node.poll_timeout();
        io.classify(n, &mut **node, now);
        // What the batch queued for the control side, and the flows it
        // pinned into the kernel's maps, before the next batch.
        node.flush();
        if let Some(fp) = fast_path {
            fp.sync(node.engine_mut(), now, &clock);
        }
        deadline = match (before, node.poll_timeout()) {
            (Some(b), Some(a)) if a < b => Deadline::Earlier,
            (None, Some(_)) => Deadline::Earlier,
            _ => Deadline::Same,
        };
    }
    io.transmit();
    Ok(deadline)
}
