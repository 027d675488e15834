//! [`PolicyInstance`]: one running instance, the lock around its store, and
//! [`PolicyInstance::run`], the frame every call goes through (CPU bound armed,
//! CPU used measured, instance rebuilt after a fault).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::error::unavailable;
use super::live::{Live, classify};
use super::{CallOutcome, CompiledModule, Fault};
use crate::host::HostStats;

/// The mutable part of a [`PolicyInstance`].
#[derive(Debug)]
pub(super) struct Slot {
    /// `None` after a fault whose rebuild failed; rebuilt before the next call.
    pub(super) live: Option<Live>,
}

/// A failed step inside a call.
pub(super) enum Step {
    /// The wasm call itself failed.
    Wasm(wasmtime::Error),
    /// The call was refused or its result was invalid.
    Fault(Fault),
}

impl From<Fault> for Step {
    fn from(fault: Fault) -> Self {
        Self::Fault(fault)
    }
}

/// Counters of one [`PolicyInstance`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InstanceStats {
    /// Times the instance was rebuilt after a fault.
    pub restarts: u64,
    /// Rebuilds that failed (the next call tries again).
    pub restart_failures: u64,
    /// Host-function counters of the module.
    pub host: HostStats,
}

/// One running instance of a policy module.
///
/// `Policy::select` takes `&self` but a wasmtime call needs `&mut Store`, so the
/// store sits in a `Mutex`: the engine calls policies from its one packet thread,
/// so the lock is uncontended (one atomic swap each way) and costs far less than
/// the call. A pool of instances would only pay off for several packet threads
/// sharing one handle, which the engine does not do; if it ever does, this lock
/// is where to put one.
#[derive(Debug)]
pub struct PolicyInstance {
    pub(super) module: CompiledModule,
    pub(super) slot: Mutex<Slot>,
    pub(super) restarts: AtomicU64,
    pub(super) restart_failures: AtomicU64,
}

impl PolicyInstance {
    /// The module this is an instance of.
    pub fn module(&self) -> &CompiledModule {
        &self.module
    }

    /// Counters.
    pub fn stats(&self) -> InstanceStats {
        InstanceStats {
            restarts: self.restarts.load(Ordering::Relaxed),
            restart_failures: self.restart_failures.load(Ordering::Relaxed),
            host: self.module.host_stats(),
        }
    }

    /// Runs `body` on the live instance with a fresh CPU bound, measures what it
    /// used, and rebuilds the instance after a fault.
    pub(super) fn run<T>(
        &self,
        fuel_limit: Option<u64>,
        body: impl FnOnce(&mut Live) -> Result<T, Step>,
    ) -> CallOutcome<T> {
        let inner = &self.module.inner;
        let config = &inner.vm.config;
        // A panic while holding the lock cannot leave the store half-called in a
        // way the rebuild below does not fix; drop the live instance and go on.
        let mut slot = self.slot.lock().unwrap_or_else(|poisoned| {
            let mut slot = poisoned.into_inner();
            slot.live = None;
            slot
        });
        let slot = &mut *slot;
        if slot.live.is_none() {
            self.rebuild(slot);
        }
        let Some(live) = slot.live.as_mut() else {
            return CallOutcome {
                result: Err(unavailable("instance could not be rebuilt after a fault")),
                cpu_used: 0,
            };
        };
        let fuel_given = match Live::arm(&mut live.store, config, fuel_limit) {
            Ok(f) => f,
            Err(e) => {
                return CallOutcome {
                    result: Err(Fault::Unavailable {
                        reason: format!("cannot arm the CPU bound: {e:#}"),
                    }),
                    cpu_used: 0,
                };
            }
        };
        let started = config.fuel_per_call.is_none().then(Instant::now);
        let result = body(live);
        let cpu_used = match started {
            Some(t) => u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX),
            None => fuel_given.saturating_sub(live.store.get_fuel().unwrap_or(0)),
        };
        let cut_by_share = config
            .fuel_per_call
            .is_some_and(|per_call| fuel_given < per_call);
        let result = result.map_err(|step| match step {
            Step::Wasm(e) => classify(&e, cut_by_share),
            Step::Fault(f) => f,
        });
        if let Err(fault) = &result
            && fault.needs_restart()
        {
            tracing::debug!(module = %inner.name, %fault, "module fault; rebuilding its instance");
            slot.live = None;
            self.rebuild(slot);
        }
        CallOutcome { result, cpu_used }
    }

    fn rebuild(&self, slot: &mut Slot) {
        match Live::new(&self.module.inner) {
            Ok(live) => {
                slot.live = Some(live);
                self.restarts.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.restart_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(module = %self.module.inner.name, error = %e,
                    "cannot rebuild module instance; will retry at the next call");
            }
        }
    }
}
