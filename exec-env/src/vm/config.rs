//! [`VmConfig`]: the bounds and knobs of one [`Vm`](super::Vm).

use std::time::Duration;

use crate::host::LogLimit;
use crate::limits::{Bounds, ModuleLimits};

/// Bounds and knobs of a [`Vm`](super::Vm).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// Largest linear memory of one instance, bytes (initial size included).
    pub memory_limit: usize,
    /// Most elements of the one table an instance may have.
    pub max_table_elements: usize,
    /// Fuel given to each call; `None` turns fuel accounting off, leaving the
    /// epoch deadline as the only CPU bound.
    pub fuel_per_call: Option<u64>,
    /// Period of the epoch ticker.
    pub epoch_tick: Duration,
    /// Ticks a call may run before it is interrupted (so the wall-clock bound is
    /// between `ticks - 1` and `ticks` epoch periods).
    pub epoch_deadline_ticks: u64,
    /// Native stack a call may use (deep recursion traps beyond it).
    pub max_wasm_stack: usize,
    /// Largest module accepted, bytes.
    pub max_module_len: usize,
    /// `pronto.log` rate limit per module.
    pub log_limit: LogLimit,
    /// What a module may declare, checked before compiling ([`crate::limits`]).
    pub limits: ModuleLimits,
}

impl Default for VmConfig {
    /// 16 MiB memory, 10 000 table elements, 20 M fuel and 50 ms per call (1 ms
    /// ticks), 512 KiB stack, 8 MiB modules, [`ModuleLimits::default`]. The fuel is sized for the heaviest
    /// legitimate call we ship: `consistent_hash` rebuilding its 65 537-slot
    /// Maglev table takes about 16 M fuel; a simple policy takes under 1 000 for
    /// 8 candidates.
    fn default() -> Self {
        Self {
            memory_limit: 16 << 20,
            max_table_elements: 10_000,
            fuel_per_call: Some(20_000_000),
            epoch_tick: Duration::from_millis(1),
            epoch_deadline_ticks: 50,
            max_wasm_stack: 512 << 10,
            max_module_len: 8 << 20,
            log_limit: LogLimit::default(),
            limits: ModuleLimits::default(),
        }
    }
}

impl VmConfig {
    /// Same configuration with per-call fuel set (`None`: epoch deadline only).
    #[must_use]
    pub fn with_fuel_per_call(mut self, fuel: Option<u64>) -> Self {
        self.fuel_per_call = fuel;
        self
    }

    /// Same configuration with the per-instance memory cap set.
    #[must_use]
    pub fn with_memory_limit(mut self, bytes: usize) -> Self {
        self.memory_limit = bytes;
        self
    }

    /// Same configuration with the epoch tick and per-call deadline set.
    #[must_use]
    pub fn with_epoch(mut self, tick: Duration, deadline_ticks: u64) -> Self {
        self.epoch_tick = tick;
        self.epoch_deadline_ticks = deadline_ticks;
        self
    }

    /// Same configuration with the load-time module caps set.
    #[must_use]
    pub fn with_limits(mut self, limits: ModuleLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The bounds [`limits::check`](crate::limits::check) applies under this configuration.
    pub fn bounds(&self) -> Bounds {
        Bounds {
            limits: self.limits,
            module_len: self.max_module_len as u64,
            memory_bytes: self.memory_limit as u64,
            table_elements: self.max_table_elements as u64,
        }
    }

    /// Same configuration with the log rate limit set.
    #[must_use]
    pub fn with_log_limit(mut self, limit: LogLimit) -> Self {
        self.log_limit = limit;
        self
    }
}
