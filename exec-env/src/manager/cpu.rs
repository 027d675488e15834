//! CPU shares of modules: the budget environments share, and each module's
//! cached admission to it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use resource_mgr::{Admission, BudgetConfig, BudgetError, CpuShares, ModuleId};

use crate::vm::Fault;

/// CPU shares of modules, possibly shared by several environments. Its time is
/// `vm::monotonic_ns` (one process-wide origin), as of each environment's last
/// epoch tick.
#[derive(Debug)]
pub struct CpuBudget {
    shares: Mutex<CpuShares>,
}

impl CpuBudget {
    /// A budget with the given periods and capacity.
    pub fn new(config: BudgetConfig) -> Result<Arc<Self>, BudgetError> {
        Ok(Arc::new(Self {
            shares: Mutex::new(CpuShares::new(config)?),
        }))
    }

    /// The shares; a poisoned lock only means a panic elsewhere while the plain
    /// integers inside were consistent between calls, so keep going.
    pub(super) fn lock(&self) -> MutexGuard<'_, CpuShares> {
        self.shares.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// resource-mgr's counters of a module (consumed, throttled, debt).
    pub(super) fn stats(&self, module: ModuleId) -> Option<resource_mgr::ModuleStats> {
        self.lock().stats(module).ok()
    }
}

/// A module's admission to the CPU budget, cached between settlements.
///
/// Asking the budget (`admit`) and booking each call (`charge`) under its lock
/// was a third of a call's cost: two lock round trips and four 128-bit
/// divisions. Instead the allowance the budget grants is kept here and calls
/// draw on it with one atomic add; the budget is asked again, and charged what
/// was used since, when the grant is used up (so a busy module's use is booked
/// in the period it happened), when a tick has passed, or when the period ends.
/// A call may overrun the grant; the budget carries the excess as debt, exactly
/// as it does for any call that used more than it was admitted with.
#[derive(Debug)]
pub(super) struct CpuGate {
    pub(super) id: ModuleId,
    /// Units granted at the last settlement (0 after a refusal).
    granted: AtomicU64,
    /// Units used since the last settlement.
    pub(super) unsettled: AtomicU64,
    /// When the grant lapses (ns).
    until: AtomicU64,
}

impl CpuGate {
    pub(super) fn new(id: ModuleId) -> Self {
        Self {
            id,
            granted: AtomicU64::new(0),
            unsettled: AtomicU64::new(0),
            until: AtomicU64::new(0),
        }
    }

    /// Whether the module may run a call now.
    pub(super) fn admit(&self, budget: &CpuBudget, now: u64, tick: u64) -> Result<(), Fault> {
        if now < self.until.load(Ordering::Acquire) {
            return if self.unsettled.load(Ordering::Relaxed) < self.granted.load(Ordering::Relaxed)
            {
                Ok(())
            } else {
                Err(Fault::Budget)
            };
        }
        self.settle(budget, now, tick)
    }

    /// Books `used` units; settles at once when the grant is used up.
    pub(super) fn record(&self, budget: &CpuBudget, used: u64, now: u64, tick: u64) {
        let total = self
            .unsettled
            .fetch_add(used, Ordering::AcqRel)
            .saturating_add(used);
        if total >= self.granted.load(Ordering::Relaxed) {
            // Refusal here only means the next call fails fast.
            let _ = self.settle(budget, now, tick);
        }
    }

    /// Charges what was used since the last settlement and asks again.
    fn settle(&self, budget: &CpuBudget, now: u64, tick: u64) -> Result<(), Fault> {
        let mut shares = budget.lock();
        let used = self.unsettled.swap(0, Ordering::AcqRel);
        if used > 0 {
            // The module is known to the budget while its slot exists.
            let _ = shares.charge(self.id, used, now);
        }
        let lapse = now.saturating_add(tick.max(1));
        match shares.admit(self.id, now) {
            Ok(Admission::Run { fuel }) => {
                self.granted.store(fuel, Ordering::Relaxed);
                self.until
                    .store(lapse.min(shares.period_end(now)), Ordering::Release);
                Ok(())
            }
            Ok(Admission::Throttled { retry_at }) => {
                self.granted.store(0, Ordering::Relaxed);
                // Ask again after a tick at most: shares grow when others go idle.
                self.until.store(lapse.min(retry_at), Ordering::Release);
                Err(Fault::Budget)
            }
            Err(e) => {
                self.granted.store(0, Ordering::Relaxed);
                self.until.store(lapse, Ordering::Release);
                Err(Fault::Unavailable {
                    reason: e.to_string(),
                })
            }
        }
    }
}
