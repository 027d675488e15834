//! The clocks a call reads and the epoch ticker thread that refreshes them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wasmtime::Engine;

use super::VmError;

/// Process-wide origin of [`monotonic_ns`], so environments sharing a CPU budget
/// measure time alike.
static ORIGIN: OnceLock<Instant> = OnceLock::new();

/// Monotonic nanoseconds since the first use in this process.
pub fn monotonic_ns() -> u64 {
    let origin = *ORIGIN.get_or_init(Instant::now);
    u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Wall-clock seconds since the Unix epoch (0 if the clock is before 1970).
pub fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Clocks the epoch ticker refreshes at every tick, so a call reads an atomic
/// instead of the system clock twice (about 60 ns of a 250 ns call). Their
/// resolution is one tick, plenty for `now_unix_secs`, CPU periods and quarantine
/// backoffs.
#[derive(Debug)]
pub(super) struct CoarseClock {
    pub(super) unix_secs: AtomicU64,
    pub(super) monotonic_ns: AtomicU64,
    /// Added to the monotonic clock by [`Vm::advance_clock`](super::Vm::advance_clock) (0 unless a test
    /// moves time forward).
    advanced_ns: AtomicU64,
}

impl CoarseClock {
    pub(super) fn new() -> Self {
        Self {
            unix_secs: AtomicU64::new(unix_secs()),
            monotonic_ns: AtomicU64::new(monotonic_ns()),
            advanced_ns: AtomicU64::new(0),
        }
    }

    fn refresh(&self) {
        self.unix_secs.store(unix_secs(), Ordering::Relaxed);
        // fetch_max: a tick racing `advance` never moves the clock back.
        let advanced = self.advanced_ns.load(Ordering::Relaxed);
        self.monotonic_ns
            .fetch_max(monotonic_ns().saturating_add(advanced), Ordering::Relaxed);
    }

    pub(super) fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let advanced = self.advanced_ns.fetch_add(by, Ordering::Relaxed);
        self.monotonic_ns.fetch_max(
            monotonic_ns().saturating_add(advanced.saturating_add(by)),
            Ordering::Relaxed,
        );
    }
}

/// Stops the epoch ticker thread when dropped.
#[derive(Debug)]
pub(super) struct Ticker {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    pub(super) fn start(
        engine: Engine,
        clock: Arc<CoarseClock>,
        tick: Duration,
    ) -> Result<Self, VmError> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("pronto-epoch".to_owned())
            .spawn(move || {
                // recv_timeout doubles as the sleep: dropping the sender wakes the
                // thread at once instead of after a tick.
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(tick) {
                    engine.increment_epoch();
                    clock.refresh();
                }
            })
            .map_err(VmError::Ticker)?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("epoch ticker thread panicked");
        }
    }
}
