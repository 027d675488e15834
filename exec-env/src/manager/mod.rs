//! The environment manager: one [`Environment`] per trust domain (DESIGN.md §6)
//! installs, swaps, rolls back, quarantines and removes policy, cost and
//! scheduler modules, and hands the engine [`ModulePolicy`] /
//! [`ModuleCostModel`] handles and link schedulers [`ModuleRankHandle`]s, each
//! bound to a module *name*, so hot swaps are invisible to their callers.
//! Scheduler modules run in operator environments only (a rank orders a whole
//! link) and go through the same CPU gate, fault counting and quarantine.
//!
//! # Life of a module
//!
//! * **Install** = [`Environment::prepare`] (scope checks, compile, instantiate: all
//!   the slow work, off the packet path) then [`Environment::publish`] (one atomic
//!   pointer store); [`Environment::load`] and [`Environment::swap`] do both. A module that fails any check is refused and the version
//!   already installed keeps serving.
//! * **Swap.** Each module name has one `ArcSwapOption<Versions>` holding the
//!   active version and the previous one; installing or rolling back stores a new
//!   `Versions` in one step, so a concurrent call sees either the old pair or the
//!   new pair, never nothing.
//! * **Faults.** A call that traps, times out or returns an invalid answer fails
//!   alone and is counted by kind; then the environment's [`FailurePolicy`]
//!   applies: `FallBack` asks the previous version, and if that fails too the
//!   handle returns the error so the engine uses its built-in policy (cost models
//!   use the built-in `SumCost` themselves, since their callers have no fallback);
//!   `RefuseNewFlows` rejects the flow (cost models answer `+inf`, "unreachable").
//! * **Quarantine.** [`QuarantineConfig::faults`] module faults within
//!   [`QuarantineConfig::window`] quarantine that version for a backoff that
//!   doubles at each repeated quarantine (up to [`QuarantineConfig::max_backoff`];
//!   back to the initial value when a quarantine comes more than `max_backoff`
//!   after the previous release). Calls meanwhile fail fast as `Unavailable`.
//!   When the backoff ends the version serves again from a fresh instance.
//! * **CPU.** Every module name is a module of a [`CpuBudget`] (resource-mgr's
//!   `CpuShares`); calls draw on the allowance the budget last granted and are
//!   booked with the fuel they used (wall-clock ns when fuel is off); the grant is
//!   renewed and the use charged when it runs out, after a tick, or at the end of
//!   the period. A module over its share fails fast with `Unavailable` until its
//!   debt is repaid; the others keep their shares. A call always gets the full
//!   per-call fuel rather than just the remaining allowance: legitimate calls may
//!   be heavy (a Maglev table rebuild), and the share's debt accounting makes a
//!   module pay for an overrun later.

//!
//! # Operations
//!
//! The management API and the daemon call five operations, each answering a
//! typed report or a [`ManagerError`] whose [`ManagerError::hint`] says what to
//! do next; the environment, not its caller, decides whether a file is new:
//! [`Environment::load`] refuses a name already installed,
//! [`Environment::swap`] one that is not, [`Environment::rollback`] a module with
//! no previous version, [`Environment::remove`] an unknown name, and
//! [`Environment::bind`] a module that cannot serve the role or subnet.
//!
//! Files: `config` (environment configuration), `error`, `cpu` (CPU budget and
//! per-module gate), `health` (counters and quarantine), `ops` (load, swap,
//! rollback, remove), `bind` (bindings), `report` (what each operation did),
//! `handle` (the engine's policy and cost-model handles, the link scheduler's
//! rank handle).

mod bind;
mod config;
mod cpu;
mod error;
mod handle;
mod health;
mod ops;
mod report;

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use resource_mgr::EnvId;
use router_core::classify::VirtualSubnet;

use crate::limits::{Cap, LimitCounters, LimitCounts};
use crate::manifest::Manifest;
use crate::trust::TrustAnchors;
use crate::verified::SignerInfo;
use crate::vm::{InstanceStats, PolicyInstance, Vm, VmError};

pub use bind::{BoundHandle, Role, UnknownRole};
pub use config::{EnvironmentConfig, FailurePolicy, QuarantineConfig, Scope};
pub use cpu::CpuBudget;
pub use error::{ManagerError, ScopeError};
pub use handle::{ModuleCostModel, ModulePolicy, ModuleRankHandle, RANK_FUEL_PER_CALL};
pub use health::ModuleCounters;
pub use report::{
    BindReport, Binding, InstallReport, LoadReport, RemoveReport, RollbackReport, SwapReport,
    VersionSummary,
};

use cpu::CpuGate;
use health::{Counters, Health};

/// Which subnets a version may govern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Governs {
    Any,
    Subnets(Vec<VirtualSubnet>),
}

impl Governs {
    fn covers(&self, subnet: &VirtualSubnet) -> bool {
        match self {
            Self::Any => true,
            Self::Subnets(list) => list.iter().any(|s| s.covers(subnet)),
        }
    }
}

/// One installed version of a module.
#[derive(Debug)]
struct Version {
    manifest: Manifest,
    digest: [u8; 32],
    signer: SignerInfo,
    governs: Governs,
    instance: PolicyInstance,
    health: Health,
}

/// What a module name currently serves.
#[derive(Debug)]
struct Versions {
    active: Arc<Version>,
    previous: Option<Arc<Version>>,
}

/// Everything about one module name.
#[derive(Debug)]
struct Slot {
    name: String,
    versions: ArcSwapOption<Versions>,
    cpu: CpuGate,
    budget: Arc<CpuBudget>,
    counters: Counters,
}

impl Slot {
    /// CPU charged to the module: booked in the budget plus not yet settled.
    fn cpu_used(&self) -> u64 {
        let booked = self.budget.stats(self.cpu.id).map_or(0, |s| s.consumed);
        booked.saturating_add(self.cpu.unsettled.load(Ordering::Relaxed))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Already gone if the whole environment was removed from the budget.
        let _ = self.budget.lock().remove_module(self.cpu.id);
    }
}

/// Environment-wide counters.
#[derive(Debug, Default)]
struct EnvCounters {
    installs: AtomicU64,
    refused: AtomicU64,
    removals: AtomicU64,
    bind_refused: AtomicU64,
    limits: LimitCounters,
}

/// A snapshot of an environment's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EnvironmentCounters {
    /// Modules installed (swaps included).
    pub installs: u64,
    /// Installs refused (verification, VM, scope, limits).
    pub refused: u64,
    /// Modules removed.
    pub removals: u64,
    /// Bindings refused (unknown module, subnet outside the environment or
    /// the module's scope, wrong role).
    pub bind_refused: u64,
    /// Installs refused before compiling by a load-time cap, per cap (also
    /// counted in `refused`).
    pub limit_refusals: LimitCounts,
}

/// Source of unique environment ids, so a [`Prepared`] cannot be swapped into
/// an environment whose checks it did not pass.
static NEXT_ENV_ID: AtomicU64 = AtomicU64::new(1);

#[derive(Debug)]
struct EnvInner {
    id: u64,
    config: EnvironmentConfig,
    anchors: TrustAnchors,
    vm: Vm,
    budget: Arc<CpuBudget>,
    cpu_env: EnvId,
    /// Epoch tick in ns: the resolution of the VM's clock, and how often a
    /// module's CPU grant is settled with the budget.
    tick_ns: u64,
    modules: Mutex<BTreeMap<String, Arc<Slot>>>,
    /// Versions that left a slot. A policy call holds a guard on the version pair
    /// it started with; if a swap lands meanwhile, that guard would drop the last
    /// reference and free the old version (its compiled code and store, ~22 us)
    /// on the packet thread. Keeping a reference here moves that free to the
    /// control thread, which reaps entries nobody else holds on its next call.
    retired: Mutex<Vec<Arc<Version>>>,
    /// Which module governs which subnet in which role ([`Environment::bind`]).
    bindings: Mutex<BTreeMap<(VirtualSubnet, Role), String>>,
    counters: EnvCounters,
}

impl Drop for EnvInner {
    fn drop(&mut self) {
        let _ = self.budget.lock().remove_environment(self.cpu_env);
    }
}

/// A module that passed every check and has a live instance, ready for
/// [`Environment::publish`].
#[derive(Debug)]
pub struct Prepared {
    env: u64,
    version: Arc<Version>,
}

impl Prepared {
    /// Module name.
    pub fn name(&self) -> &str {
        &self.version.manifest.name
    }

    /// Module version.
    pub fn version(&self) -> &semver::Version {
        &self.version.manifest.version
    }
}

/// State of one version in a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionState {
    /// The active version, answering calls.
    Serving,
    /// The previous version, kept for fallback and rollback.
    Standby,
    /// Quarantined after repeated faults for this much longer.
    Quarantined {
        /// Time left.
        remaining: Duration,
    },
}

/// One version in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    /// Semantic version.
    pub version: semver::Version,
    /// Signer's subject.
    pub signer: String,
    /// SHA-256 of the module file.
    pub digest: [u8; 32],
    /// State.
    pub state: VersionState,
    /// Instance counters (restarts, host-function use).
    pub instance: InstanceStats,
}

/// One module in [`Environment::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleInfo {
    /// Module name.
    pub name: String,
    /// The active version.
    pub active: VersionInfo,
    /// The previous version.
    pub previous: Option<VersionInfo>,
    /// Counters over all versions.
    pub counters: ModuleCounters,
    /// CPU charged to the module in resource-mgr, and the times it was throttled.
    pub cpu: Option<resource_mgr::ModuleStats>,
}

/// An execution environment: its trust anchors, VM, scope, CPU budget and modules.
#[derive(Debug)]
pub struct Environment {
    inner: Arc<EnvInner>,
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn parse_subnets(texts: &[String], place: &'static str) -> Result<Vec<VirtualSubnet>, ScopeError> {
    texts
        .iter()
        .map(|t| VirtualSubnet::from_str(t).map_err(|source| ScopeError::Syntax { place, source }))
        .collect()
}

impl Environment {
    /// An environment with a CPU budget of its own (`config.budget`). With no
    /// trust anchors, [`Environment::load`] refuses everything.
    pub fn new(config: EnvironmentConfig, anchors: TrustAnchors) -> Result<Self, ManagerError> {
        let budget = CpuBudget::new(config.budget)?;
        Self::with_budget(config, anchors, budget)
    }

    /// An environment sharing `budget` with others by `config.weight`.
    pub fn with_budget(
        config: EnvironmentConfig,
        anchors: TrustAnchors,
        budget: Arc<CpuBudget>,
    ) -> Result<Self, ManagerError> {
        let vm = Vm::new(config.vm.clone())?;
        let cpu_env = budget.lock().add_environment(config.weight)?;
        let tick_ns = u64::try_from(config.vm.epoch_tick.as_nanos()).unwrap_or(u64::MAX);
        Ok(Self {
            inner: Arc::new(EnvInner {
                id: NEXT_ENV_ID.fetch_add(1, Ordering::Relaxed),
                config,
                anchors,
                vm,
                budget,
                cpu_env,
                tick_ns,
                modules: Mutex::new(BTreeMap::new()),
                retired: Mutex::new(Vec::new()),
                bindings: Mutex::new(BTreeMap::new()),
                counters: EnvCounters::default(),
            }),
        })
    }

    /// Name.
    pub fn name(&self) -> &str {
        &self.inner.config.name
    }

    /// Configuration.
    pub fn config(&self) -> &EnvironmentConfig {
        &self.inner.config
    }

    /// Trust anchors (and their verification counters).
    pub fn anchors(&self) -> &TrustAnchors {
        &self.inner.anchors
    }

    /// The VM.
    pub fn vm(&self) -> &Vm {
        &self.inner.vm
    }

    /// Environment-wide counters.
    pub fn counters(&self) -> EnvironmentCounters {
        let c = &self.inner.counters;
        EnvironmentCounters {
            installs: c.installs.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            removals: c.removals.load(Ordering::Relaxed),
            bind_refused: c.bind_refused.load(Ordering::Relaxed),
            limit_refusals: c.limits.snapshot(),
        }
    }

    fn modules(&self) -> MutexGuard<'_, BTreeMap<String, Arc<Slot>>> {
        // The map is only changed in whole steps under the lock; a panic elsewhere
        // cannot leave it half-updated.
        self.inner
            .modules
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn binding_table(&self) -> MutexGuard<'_, BTreeMap<(VirtualSubnet, Role), String>> {
        // Changed in whole entries under the lock, as the module map.
        self.inner
            .bindings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn refused<T>(&self, name: &str, result: Result<T, ManagerError>) -> Result<T, ManagerError> {
        if let Err(e) = &result {
            health::bump(&self.inner.counters.refused);
            match e {
                ManagerError::Vm(VmError::Limit(limit)) => {
                    self.inner.counters.limits.bump(limit.cap)
                }
                ManagerError::Vm(VmError::ModuleTooLarge { .. }) => {
                    self.inner.counters.limits.bump(Cap::ModuleSize);
                }
                _ => {}
            }
            tracing::warn!(env = %self.name(), module = %name, error = %e,
                "module refused; the installed version (if any) keeps serving");
        }
        result
    }

    /// Keep `version` alive until no call holds it, then free it here, on the
    /// control thread (see `EnvInner::retired`); [`Environment::reap`] frees it.
    fn retire(&self, version: Option<Arc<Version>>) {
        self.retired_list().extend(version);
    }

    /// Frees every retired version no call holds any more: its compiled code,
    /// `InstancePre` and store go back to the allocator now, on the control
    /// thread. Each operation ends with this, after the version pair it replaced
    /// is gone, so a version left out of the pair does not wait for the next
    /// operation; one still held by a call in flight is freed by a later one.
    /// Returns how many retired versions are still held.
    fn reap(&self) -> usize {
        let mut retired = self.retired_list();
        retired.retain(|v| Arc::strong_count(v) > 1);
        retired.len()
    }

    fn retired_list(&self) -> MutexGuard<'_, Vec<Arc<Version>>> {
        // Only pushed to and filtered under the lock.
        self.inner
            .retired
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Versions of every module kept alive: active and previous ones, plus
    /// retired ones a call in flight still holds (freed by the next operation).
    /// At most two per module name once no call is in flight.
    pub fn versions_held(&self) -> usize {
        let slots: Vec<Arc<Slot>> = self.modules().values().cloned().collect();
        let paired: usize = slots
            .iter()
            .filter_map(|s| s.versions.load_full())
            .map(|v| 1 + usize::from(v.previous.is_some()))
            .sum();
        paired + self.reap()
    }

    /// Every installed module with its versions, states and counters.
    pub fn list(&self) -> Vec<ModuleInfo> {
        let slots: Vec<Arc<Slot>> = self.modules().values().cloned().collect();
        slots.iter().filter_map(|s| self.info_of(s)).collect()
    }

    /// One module's listing entry.
    pub fn module(&self, name: &str) -> Option<ModuleInfo> {
        let slot = self.modules().get(name).cloned()?;
        self.info_of(&slot)
    }

    fn info_of(&self, slot: &Slot) -> Option<ModuleInfo> {
        let versions = slot.versions.load_full()?;
        let now = self.inner.vm.monotonic_ns();
        let describe = |v: &Version, idle: VersionState| VersionInfo {
            version: v.manifest.version.clone(),
            signer: v.signer.subject.clone(),
            digest: v.digest,
            state: match v.health.quarantined(now) {
                Some(ns) => VersionState::Quarantined {
                    remaining: Duration::from_nanos(ns),
                },
                None => idle,
            },
            instance: v.instance.stats(),
        };
        Some(ModuleInfo {
            name: slot.name.clone(),
            active: describe(&versions.active, VersionState::Serving),
            previous: versions
                .previous
                .as_deref()
                .map(|v| describe(v, VersionState::Standby)),
            counters: slot.counters.snapshot(slot.cpu_used()),
            cpu: self.inner.budget.stats(slot.cpu.id),
        })
    }
}
