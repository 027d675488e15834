//! Counters of a module name and the fault history that quarantines a version.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::QuarantineConfig;

/// Counters of one module name (all versions).
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) calls: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) traps: AtomicU64,
    pub(super) timeouts: AtomicU64,
    pub(super) bad_results: AtomicU64,
    pub(super) throttled: AtomicU64,
    pub(super) quarantined_refusals: AtomicU64,
    pub(super) unavailable: AtomicU64,
    pub(super) fallbacks: AtomicU64,
    pub(super) refused_flows: AtomicU64,
    pub(super) builtin_answers: AtomicU64,
    pub(super) quarantines: AtomicU64,
    pub(super) swaps: AtomicU64,
    pub(super) rollbacks: AtomicU64,
}

pub(super) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A snapshot of one module's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ModuleCounters {
    /// Calls asked of any version (refused ones included).
    pub calls: u64,
    /// Calls answered by a version (the active one or, under `FallBack`, the
    /// previous one).
    pub ok: u64,
    /// Traps.
    pub traps: u64,
    /// Fuel or epoch timeouts.
    pub timeouts: u64,
    /// Invalid answers.
    pub bad_results: u64,
    /// Calls refused because the CPU share was spent.
    pub throttled: u64,
    /// Calls refused because the version was quarantined.
    pub quarantined_refusals: u64,
    /// Calls that could not be made for other reasons (no version, subnet not
    /// governed, too many candidates, instance could not be rebuilt).
    pub unavailable: u64,
    /// Answers given by the previous version after the active one failed.
    pub fallbacks: u64,
    /// Flows refused under
    /// [`FailurePolicy::RefuseNewFlows`](super::FailurePolicy::RefuseNewFlows).
    pub refused_flows: u64,
    /// Cost-model answers given by the built-in `SumCost`.
    pub builtin_answers: u64,
    /// Quarantines started.
    pub quarantines: u64,
    /// CPU charged (fuel, or ns when fuel is off).
    pub cpu_used: u64,
    /// Installs that replaced an active version.
    pub swaps: u64,
    /// Rollbacks.
    pub rollbacks: u64,
}

impl ModuleCounters {
    /// Module faults of every kind (traps, timeouts, invalid answers).
    pub fn faults(&self) -> u64 {
        self.traps + self.timeouts + self.bad_results
    }
}

impl Counters {
    /// Current values; `cpu_used` comes from the budget.
    pub(super) fn snapshot(&self, cpu_used: u64) -> ModuleCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        // Read `failed` first: a call counted between the two reads then shows as
        // in flight (in `calls` only), never as more failures than calls.
        let failed = get(&self.failed);
        let calls = get(&self.calls);
        ModuleCounters {
            calls,
            ok: calls.saturating_sub(failed),
            traps: get(&self.traps),
            timeouts: get(&self.timeouts),
            bad_results: get(&self.bad_results),
            throttled: get(&self.throttled),
            quarantined_refusals: get(&self.quarantined_refusals),
            unavailable: get(&self.unavailable),
            fallbacks: get(&self.fallbacks),
            refused_flows: get(&self.refused_flows),
            builtin_answers: get(&self.builtin_answers),
            quarantines: get(&self.quarantines),
            cpu_used,
            swaps: get(&self.swaps),
            rollbacks: get(&self.rollbacks),
        }
    }
}

/// Fault history of one version.
#[derive(Debug)]
struct FaultWindow {
    /// Times (ns) of the recent module faults, at most `QuarantineConfig::faults`.
    recent: VecDeque<u64>,
    /// Length of the last quarantine.
    backoff: Duration,
    /// Quarantines so far.
    quarantines: u32,
    /// When the last quarantine ended (ns), if one did.
    released_at: Option<u64>,
}

/// Health of one version: the quarantine deadline is an atomic so the call path
/// reads it without a lock; the history is locked only when a fault happens.
#[derive(Debug)]
pub(super) struct Health {
    /// 0: not quarantined; else ns (budget clock) until which calls are refused.
    until: AtomicU64,
    window: Mutex<FaultWindow>,
}

impl Health {
    pub(super) fn new() -> Self {
        Self {
            until: AtomicU64::new(0),
            window: Mutex::new(FaultWindow {
                recent: VecDeque::new(),
                backoff: Duration::ZERO,
                quarantines: 0,
                released_at: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, FaultWindow> {
        self.window.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `Some(remaining ns)` while quarantined; releases an expired quarantine.
    pub(super) fn quarantined(&self, now: u64) -> Option<u64> {
        let until = self.until.load(Ordering::Acquire);
        if until == 0 {
            return None;
        }
        if now < until {
            return Some(until - now);
        }
        if self
            .until
            .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.lock().released_at = Some(now);
        }
        None
    }

    /// Records a module fault; returns the backoff if it starts a quarantine.
    pub(super) fn record_fault(&self, now: u64, config: &QuarantineConfig) -> Option<Duration> {
        let threshold = config.faults.max(1) as usize;
        let window_ns = u64::try_from(config.window.as_nanos()).unwrap_or(u64::MAX);
        let mut w = self.lock();
        while w
            .recent
            .front()
            .is_some_and(|&t| now.saturating_sub(t) > window_ns)
        {
            w.recent.pop_front();
        }
        w.recent.push_back(now);
        while w.recent.len() > threshold {
            w.recent.pop_front();
        }
        if w.recent.len() < threshold {
            return None;
        }
        let max_ns = u64::try_from(config.max_backoff.as_nanos()).unwrap_or(u64::MAX);
        let repeat = w.quarantines > 0
            && w.released_at
                .is_none_or(|released| now.saturating_sub(released) <= max_ns);
        let backoff = if repeat {
            (w.backoff * 2).min(config.max_backoff)
        } else {
            config.backoff
        };
        w.backoff = backoff;
        w.quarantines = w.quarantines.saturating_add(1);
        w.recent.clear();
        let backoff_ns = u64::try_from(backoff.as_nanos()).unwrap_or(u64::MAX);
        // max(1): 0 means "not quarantined".
        self.until
            .store(now.saturating_add(backoff_ns).max(1), Ordering::Release);
        Some(backoff)
    }
}
