//! CPU budgets for modules: environments share the CPU by weight, modules share their
//! environment's part by weight.
//!
//! # Semantics
//!
//! Time is cut into periods of `period_ns`, aligned to multiples of `period_ns` from
//! time 0; period `k` is `[k * period_ns, (k + 1) * period_ns)`. Each period offers
//! `capacity` units to modules. A unit is whatever the caller charges: CPU
//! nanoseconds, or wasm fuel.
//!
//! * **Active.** A module is *active* in the current period if it was asked about
//!   ([`admit`](CpuShares::admit), [`allowance`](CpuShares::allowance),
//!   [`throttled`](CpuShares::throttled)) or charged in this period or the one
//!   before. An environment is active if one of its modules is. Asking counts: a
//!   module that wants to run is demand.
//! * **Share.** A module's share of the current period is
//!   `capacity * w_env / W_envs * w_mod / W_mods`, where `W_envs` sums the weights of
//!   the active environments and `W_mods` those of the active modules of its
//!   environment (the module itself counted as active). Modules that stayed silent for
//!   a whole period reserve nothing: their part goes to the active ones in proportion
//!   to weight (work conserving across periods). The share is computed at the time of
//!   each call, so it shrinks within a period when another module becomes active. It
//!   is at least 1.
//! * **Allowance.** `allowance = share - used - debt`, floored at 0, where `used` is
//!   what was charged in this period. A module is *throttled* when its allowance is 0.
//!   Within a period an active module's unused share is kept for it, not lent to a
//!   module that has spent its own: a well-behaved module keeps its share however
//!   much another one burns.
//! * **Debt.** Overrunning is possible because the charge comes after the call (an
//!   epoch deadline stops a call late; fuel stops it within one instruction). When a
//!   period ends, `debt + used - share` (at least 0, at most `max_debt`) is carried as
//!   debt into the next one, and each further period that passes reduces it by a
//!   share. Here `share` is the largest share the module was offered during the
//!   period (at any call about it, or at the period's end): a module that used the
//!   whole capacity while alone owes nothing because others turned up afterwards;
//!   it is only throttled for the rest of that period. Unused share is never carried forward: no saved-up credit. So a module
//!   that burns 100 shares in one call then waits about 100 periods, and its long-run
//!   consumption stays at its share.
//!
//! # Use from an execution environment
//!
//! Before a call: [`admit`](CpuShares::admit) says `Run { fuel }` (give the call at
//! most that much fuel, or use it to set the epoch deadline) or `Throttled { retry_at }`
//! (fail the call as "budget exhausted" and fall back). After the call:
//! [`charge`](CpuShares::charge) what it consumed. Both are `O(1)` except the first
//! call of a new period, which settles every module (`O(modules)`), and neither
//! allocates.

use std::fmt;

use crate::error::BudgetError;

/// Bounds and figures of a [`CpuShares`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BudgetConfig {
    /// Length of one accounting period in ns.
    pub period_ns: u64,
    /// Units available to all modules together per period.
    pub capacity: u64,
    /// Largest debt a module can carry, in units.
    pub max_debt: u64,
    /// Most environments.
    pub max_environments: usize,
    /// Most modules over all environments.
    pub max_modules: usize,
}

impl BudgetConfig {
    /// A budget of `capacity` units per `period_ns`; debt is capped at 1000 periods'
    /// capacity.
    pub fn new(period_ns: u64, capacity: u64) -> Self {
        Self {
            period_ns,
            capacity,
            max_debt: capacity.saturating_mul(1000),
            ..Self::default()
        }
    }

    /// Sets the debt cap.
    #[must_use]
    pub fn with_max_debt(mut self, max_debt: u64) -> Self {
        self.max_debt = max_debt;
        self
    }
}

impl Default for BudgetConfig {
    /// 10 ms periods of 10 ms of CPU (one core), debt capped at 10 s.
    fn default() -> Self {
        Self {
            period_ns: 10_000_000,
            capacity: 10_000_000,
            max_debt: 10_000_000_000,
            max_environments: 64,
            max_modules: 1024,
        }
    }
}

/// Names an environment of a [`CpuShares`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnvId {
    index: u32,
    generation: u32,
}

impl fmt::Display for EnvId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "env#{}.{}", self.index, self.generation)
    }
}

/// Names a module of a [`CpuShares`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModuleId {
    index: u32,
    generation: u32,
}

impl fmt::Display for ModuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "module#{}.{}", self.index, self.generation)
    }
}

/// Whether a module may run now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Admission {
    /// Run, burning at most `fuel` units.
    Run {
        /// The module's allowance now (> 0).
        fuel: u64,
    },
    /// Do not run; asking again before `retry_at` (ns) is pointless if shares stay
    /// as they are.
    Throttled {
        /// Start of the first period in which the module will have an allowance.
        retry_at: u64,
    },
}

/// Counters of one module.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ModuleStats {
    /// Units charged in total.
    pub consumed: u64,
    /// Number of charges.
    pub charges: u64,
    /// Calls [`CpuShares::admit`] let run.
    pub admitted: u64,
    /// Calls [`CpuShares::admit`] refused.
    pub throttled: u64,
    /// Units charged in the current period.
    pub used: u64,
    /// Debt carried into the current period.
    pub debt: u64,
}

#[derive(Debug, Default)]
struct Env {
    live: bool,
    generation: u32,
    weight: u32,
    /// Sum of the weights of its active modules; > 0 iff the environment is active.
    active_weight: u64,
    modules: Vec<u32>,
}

#[derive(Debug, Default)]
struct Module {
    live: bool,
    generation: u32,
    env: u32,
    weight: u32,
    /// Counted in the active sums.
    active: bool,
    /// Asked about or charged in the current period.
    touched: bool,
    used: u64,
    debt: u64,
    /// Largest share offered in the current period.
    offered: u64,
    stats: ModuleStats,
}

/// Per-period CPU shares of modules grouped in environments; see the module docs for
/// the exact semantics. Sans-IO: every call takes `now` in ns.
#[derive(Debug)]
pub struct CpuShares {
    config: BudgetConfig,
    envs: Vec<Env>,
    modules: Vec<Module>,
    free_envs: Vec<u32>,
    free_modules: Vec<u32>,
    live_envs: usize,
    live_modules: usize,
    /// Sum of the weights of the active environments.
    active_env_weight: u64,
    /// Index of the current period.
    period: u64,
}

impl CpuShares {
    /// An empty budget; `period_ns` and `capacity` must be positive.
    pub fn new(config: BudgetConfig) -> Result<Self, BudgetError> {
        if config.period_ns == 0 || config.capacity == 0 {
            return Err(BudgetError::InvalidConfig {
                period_ns: config.period_ns,
                capacity: config.capacity,
            });
        }
        Ok(Self {
            config,
            envs: Vec::new(),
            modules: Vec::new(),
            free_envs: Vec::new(),
            free_modules: Vec::new(),
            live_envs: 0,
            live_modules: 0,
            active_env_weight: 0,
            period: 0,
        })
    }

    /// The configuration.
    pub fn config(&self) -> BudgetConfig {
        self.config
    }

    /// Adds an environment with a relative weight (at least 1).
    pub fn add_environment(&mut self, weight: u32) -> Result<EnvId, BudgetError> {
        if weight == 0 {
            return Err(BudgetError::InvalidWeight { weight });
        }
        if self.live_envs >= self.config.max_environments {
            return Err(BudgetError::TooManyEnvironments {
                limit: self.config.max_environments,
            });
        }
        let index = match self.free_envs.pop() {
            Some(i) => i,
            None => {
                let i = u32::try_from(self.envs.len()).map_err(|_| {
                    BudgetError::TooManyEnvironments {
                        limit: self.config.max_environments,
                    }
                })?;
                self.envs.push(Env::default());
                i
            }
        };
        let env = &mut self.envs[index as usize];
        env.live = true;
        env.weight = weight;
        env.active_weight = 0;
        env.modules.clear();
        self.live_envs += 1;
        Ok(EnvId {
            index,
            generation: env.generation,
        })
    }

    /// Adds a module with a relative weight (at least 1) to an environment.
    pub fn add_module(&mut self, env: EnvId, weight: u32) -> Result<ModuleId, BudgetError> {
        if weight == 0 {
            return Err(BudgetError::InvalidWeight { weight });
        }
        let e = self.resolve_env(env)?;
        if self.live_modules >= self.config.max_modules {
            return Err(BudgetError::TooManyModules {
                limit: self.config.max_modules,
            });
        }
        let index = match self.free_modules.pop() {
            Some(i) => i,
            None => {
                let i =
                    u32::try_from(self.modules.len()).map_err(|_| BudgetError::TooManyModules {
                        limit: self.config.max_modules,
                    })?;
                self.modules.push(Module::default());
                i
            }
        };
        let generation = self.modules[index as usize].generation;
        self.modules[index as usize] = Module {
            live: true,
            generation,
            env: e,
            weight,
            ..Module::default()
        };
        self.envs[e as usize].modules.push(index);
        self.live_modules += 1;
        Ok(ModuleId { index, generation })
    }

    /// Removes a module; its share goes to the others at once.
    pub fn remove_module(&mut self, module: ModuleId) -> Result<(), BudgetError> {
        let m = self.resolve_module(module)?;
        self.deactivate(m);
        let e = self.modules[m as usize].env;
        self.envs[e as usize].modules.retain(|&x| x != m);
        let generation = self.modules[m as usize].generation.wrapping_add(1);
        self.modules[m as usize] = Module {
            generation,
            ..Module::default()
        };
        self.free_modules.push(m);
        self.live_modules -= 1;
        Ok(())
    }

    /// Removes an environment and all its modules.
    pub fn remove_environment(&mut self, env: EnvId) -> Result<(), BudgetError> {
        let e = self.resolve_env(env)?;
        let modules = std::mem::take(&mut self.envs[e as usize].modules);
        for &m in &modules {
            let id = ModuleId {
                index: m,
                generation: self.modules[m as usize].generation,
            };
            self.remove_module(id)?;
        }
        let env = &mut self.envs[e as usize];
        env.live = false;
        env.generation = env.generation.wrapping_add(1);
        env.active_weight = 0;
        env.modules = modules;
        env.modules.clear();
        self.free_envs.push(e);
        self.live_envs -= 1;
        Ok(())
    }

    /// Changes a module's weight; it applies to shares computed from now on.
    pub fn set_module_weight(&mut self, module: ModuleId, weight: u32) -> Result<(), BudgetError> {
        if weight == 0 {
            return Err(BudgetError::InvalidWeight { weight });
        }
        let m = self.resolve_module(module)?;
        let was_active = self.modules[m as usize].active;
        self.deactivate(m);
        self.modules[m as usize].weight = weight;
        if was_active {
            self.activate(m);
        }
        Ok(())
    }

    /// Changes an environment's weight; it applies to shares computed from now on.
    pub fn set_environment_weight(&mut self, env: EnvId, weight: u32) -> Result<(), BudgetError> {
        if weight == 0 {
            return Err(BudgetError::InvalidWeight { weight });
        }
        let e = self.resolve_env(env)?;
        let env = &mut self.envs[e as usize];
        if env.active_weight > 0 {
            self.active_env_weight =
                self.active_env_weight - u64::from(env.weight) + u64::from(weight);
        }
        env.weight = weight;
        Ok(())
    }

    /// Whether the module may run at `now` and with how much fuel. Counts as activity.
    pub fn admit(&mut self, module: ModuleId, now: u64) -> Result<Admission, BudgetError> {
        let m = self.resolve_module(module)?;
        self.roll(now);
        let share = self.touch(m);
        let md = &mut self.modules[m as usize];
        let spent = md.used.saturating_add(md.debt);
        if share > spent {
            md.stats.admitted = md.stats.admitted.saturating_add(1);
            return Ok(Admission::Run {
                fuel: share - spent,
            });
        }
        md.stats.throttled = md.stats.throttled.saturating_add(1);
        // Periods after this one until the carried debt falls below one share.
        let carried = spent.saturating_sub(md.offered);
        let wait = carried / share;
        let retry = self
            .period
            .saturating_add(1)
            .saturating_add(wait)
            .saturating_mul(self.config.period_ns);
        Ok(Admission::Throttled { retry_at: retry })
    }

    /// How much the module may burn in its next call at `now` (0 when throttled).
    /// Counts as activity.
    pub fn allowance(&mut self, module: ModuleId, now: u64) -> Result<u64, BudgetError> {
        let m = self.resolve_module(module)?;
        self.roll(now);
        let share = self.touch(m);
        let md = &self.modules[m as usize];
        Ok(share.saturating_sub(md.used.saturating_add(md.debt)))
    }

    /// The module has no allowance at `now`. Counts as activity.
    pub fn throttled(&mut self, module: ModuleId, now: u64) -> Result<bool, BudgetError> {
        Ok(self.allowance(module, now)? == 0)
    }

    /// Books `cost` units the module consumed, in the period that contains `now`.
    pub fn charge(&mut self, module: ModuleId, cost: u64, now: u64) -> Result<(), BudgetError> {
        let m = self.resolve_module(module)?;
        self.roll(now);
        self.touch(m);
        let md = &mut self.modules[m as usize];
        md.used = md.used.saturating_add(cost);
        md.stats.consumed = md.stats.consumed.saturating_add(cost);
        md.stats.charges = md.stats.charges.saturating_add(1);
        Ok(())
    }

    /// The module's share of the period containing `now`, were it to run now. Does not
    /// count as activity.
    pub fn share(&mut self, module: ModuleId, now: u64) -> Result<u64, BudgetError> {
        let m = self.resolve_module(module)?;
        self.roll(now);
        Ok(self.share_of(m))
    }

    /// The module's counters as of the last call.
    pub fn stats(&self, module: ModuleId) -> Result<ModuleStats, BudgetError> {
        let md = &self.modules[self.resolve_module(module)? as usize];
        Ok(ModuleStats {
            used: md.used,
            debt: md.debt,
            ..md.stats
        })
    }

    /// Start of the period after the one containing `now`.
    pub fn period_end(&self, now: u64) -> u64 {
        (now / self.config.period_ns)
            .saturating_add(1)
            .saturating_mul(self.config.period_ns)
    }

    fn resolve_env(&self, env: EnvId) -> Result<u32, BudgetError> {
        match self.envs.get(env.index as usize) {
            Some(e) if e.live && e.generation == env.generation => Ok(env.index),
            _ => Err(BudgetError::UnknownEnvironment { env }),
        }
    }

    fn resolve_module(&self, module: ModuleId) -> Result<u32, BudgetError> {
        match self.modules.get(module.index as usize) {
            Some(m) if m.live && m.generation == module.generation => Ok(module.index),
            _ => Err(BudgetError::UnknownModule { module }),
        }
    }

    fn activate(&mut self, m: u32) {
        let md = &mut self.modules[m as usize];
        if md.active {
            return;
        }
        md.active = true;
        let env = &mut self.envs[md.env as usize];
        if env.active_weight == 0 {
            self.active_env_weight += u64::from(env.weight);
        }
        env.active_weight += u64::from(md.weight);
    }

    fn deactivate(&mut self, m: u32) {
        let md = &mut self.modules[m as usize];
        if !md.active {
            return;
        }
        md.active = false;
        let env = &mut self.envs[md.env as usize];
        env.active_weight -= u64::from(md.weight);
        if env.active_weight == 0 {
            self.active_env_weight -= u64::from(env.weight);
        }
    }

    /// Marks the module active and returns its share now.
    fn touch(&mut self, m: u32) -> u64 {
        self.activate(m);
        let share = self.share_of(m);
        let md = &mut self.modules[m as usize];
        md.touched = true;
        md.offered = md.offered.max(share);
        share
    }

    /// The module's share with the current active sets, counting it as active.
    fn share_of(&self, m: u32) -> u64 {
        let md = &self.modules[m as usize];
        let env = &self.envs[md.env as usize];
        let (mods, envs) = if md.active {
            (env.active_weight, self.active_env_weight)
        } else if env.active_weight > 0 {
            (
                env.active_weight + u64::from(md.weight),
                self.active_env_weight,
            )
        } else {
            (
                u64::from(md.weight),
                self.active_env_weight + u64::from(env.weight),
            )
        };
        // Two divisions keep every product within u128.
        let env_part =
            u128::from(self.config.capacity) * u128::from(env.weight) / u128::from(envs.max(1));
        let part = env_part * u128::from(md.weight) / u128::from(mods.max(1));
        u64::try_from(part).unwrap_or(u64::MAX).max(1)
    }

    /// Settles debts and the active sets when `now` lies in a later period.
    fn roll(&mut self, now: u64) {
        let period = now / self.config.period_ns;
        if period <= self.period {
            return;
        }
        let elapsed = period - self.period;
        self.period = period;
        // Settle every module with the active sets of the period that ended, then
        // update the sets: shares depend on them, so no module may move first.
        for m in 0..self.modules.len() {
            if !self.modules[m].live {
                continue;
            }
            let share_now = self.share_of(m as u32);
            let md = &self.modules[m];
            let share = i128::from(md.offered.max(share_now));
            let over = i128::from(md.debt) + i128::from(md.used) - share;
            let capped = over.clamp(0, i128::from(self.config.max_debt));
            // Periods in which the module did not run repay a share each.
            let idle = i128::from(share_now).saturating_mul(i128::from(elapsed - 1));
            let debt = (capped - idle).max(0);
            let md = &mut self.modules[m];
            md.debt = u64::try_from(debt).unwrap_or(self.config.max_debt);
            md.used = 0;
            md.offered = 0;
            // Reused as "stays active" until the second pass.
            md.touched = md.touched && elapsed == 1;
        }
        for m in 0..self.modules.len() {
            let md = &mut self.modules[m];
            if !md.live {
                continue;
            }
            let stay = md.touched;
            md.touched = false;
            if !stay {
                self.deactivate(m as u32);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_follow_weights_among_active() {
        let mut b = CpuShares::new(BudgetConfig::new(1000, 1000)).unwrap();
        let e1 = b.add_environment(1).unwrap();
        let e2 = b.add_environment(3).unwrap();
        let a = b.add_module(e1, 1).unwrap();
        let c = b.add_module(e2, 1).unwrap();
        let d = b.add_module(e2, 1).unwrap();
        // Alone, a module has the whole capacity.
        assert_eq!(b.allowance(a, 0).unwrap(), 1000);
        assert_eq!(b.allowance(c, 0).unwrap(), 750);
        assert_eq!(b.allowance(d, 0).unwrap(), 375);
        assert_eq!(b.allowance(a, 0).unwrap(), 250);
        assert_eq!(b.allowance(c, 0).unwrap(), 375);
    }

    #[test]
    fn silent_module_stops_reserving_after_a_full_period() {
        let mut b = CpuShares::new(BudgetConfig::new(1000, 1000)).unwrap();
        let e = b.add_environment(1).unwrap();
        let a = b.add_module(e, 1).unwrap();
        let c = b.add_module(e, 1).unwrap();
        assert_eq!(b.allowance(a, 0).unwrap(), 1000);
        assert_eq!(b.allowance(c, 0).unwrap(), 500);
        // Period 1: c is silent but still active (it ran in period 0).
        assert_eq!(b.allowance(a, 1000).unwrap(), 500);
        // Period 2: c was silent for all of period 1.
        assert_eq!(b.allowance(a, 2000).unwrap(), 1000);
    }

    #[test]
    fn debt_is_repaid_by_later_shares() {
        let mut b = CpuShares::new(BudgetConfig::new(1000, 1000)).unwrap();
        let e = b.add_environment(1).unwrap();
        let a = b.add_module(e, 1).unwrap();
        b.charge(a, 3500, 10).unwrap();
        assert!(b.throttled(a, 10).unwrap());
        assert_eq!(
            b.admit(a, 10).unwrap(),
            Admission::Throttled { retry_at: 3000 }
        );
        assert!(b.throttled(a, 1000).unwrap());
        assert!(b.throttled(a, 2999).unwrap());
        assert_eq!(b.allowance(a, 3000).unwrap(), 500);
        assert_eq!(b.stats(a).unwrap().throttled, 1);
    }

    #[test]
    fn debt_is_capped() {
        let cfg = BudgetConfig::new(1000, 1000).with_max_debt(2000);
        let mut b = CpuShares::new(cfg).unwrap();
        let e = b.add_environment(1).unwrap();
        let a = b.add_module(e, 1).unwrap();
        b.charge(a, u64::MAX, 0).unwrap();
        assert!(b.throttled(a, 2999).unwrap());
        assert_eq!(b.allowance(a, 3000).unwrap(), 1000);
    }

    #[test]
    fn removed_ids_are_refused() {
        let mut b = CpuShares::new(BudgetConfig::default()).unwrap();
        let e = b.add_environment(1).unwrap();
        let a = b.add_module(e, 1).unwrap();
        b.remove_environment(e).unwrap();
        assert!(matches!(
            b.allowance(a, 0),
            Err(BudgetError::UnknownModule { .. })
        ));
        let e2 = b.add_environment(1).unwrap();
        let a2 = b.add_module(e2, 1).unwrap();
        assert_ne!(a, a2);
        assert!(b.charge(a, 1, 0).is_err());
        assert_eq!(b.allowance(a2, 0).unwrap(), b.config().capacity);
    }
}
