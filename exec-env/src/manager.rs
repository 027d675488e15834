//! The environment manager: one [`Environment`] per trust domain (DESIGN.md §6)
//! installs, swaps, rolls back, quarantines and removes policy modules, and hands
//! the engine [`ModulePolicy`] / [`ModuleCostModel`] handles bound to a module
//! *name*, so hot swaps are invisible to the engine.
//!
//! # Life of a module
//!
//! * **Install** = [`Environment::prepare`] (scope checks, compile, instantiate: all
//!   the slow work, off the packet path) then [`Environment::swap`] (one atomic
//!   pointer store). A module that fails any check is refused and the version
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

use std::collections::{BTreeMap, VecDeque};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use resource_mgr::{Admission, BudgetConfig, BudgetError, CpuShares, EnvId, ModuleId};
use router_core::classify::{SubnetError, VirtualSubnet};
use router_core::policy::{
    Candidate, CostModel, Decision, FlowRequest, Policy, PolicyError, SumCost,
};

use crate::manifest::{Capability, Manifest};
use crate::trust::{self, TrustAnchors, VerifyError};
use crate::verified::{SignerInfo, VerifiedModule};
use crate::vm::{
    CallOutcome, Fault, FaultKind, InstanceStats, PolicyInstance, Vm, VmConfig, VmError,
};

/// Which subnets an environment's modules may govern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Operator environment: any subnet.
    Operator,
    /// Tenant environment: only subnets inside `allowed`, and of those only the
    /// ones both the module's manifest and its signer's certificate name.
    Tenant {
        /// Subnets the tenant owns.
        allowed: Vec<VirtualSubnet>,
    },
}

/// What a handle does when the active version cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Ask the previous version, then the built-in policy.
    FallBack,
    /// Refuse the flow (cost models: `+inf`).
    RefuseNewFlows,
}

/// When a version is quarantined and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuarantineConfig {
    /// Module faults that trigger a quarantine (at least 1).
    pub faults: u32,
    /// Window in which they must occur.
    pub window: Duration,
    /// First quarantine's length.
    pub backoff: Duration,
    /// Longest quarantine.
    pub max_backoff: Duration,
}

impl Default for QuarantineConfig {
    /// 5 faults in 10 s; 1 s, doubling up to 5 min.
    fn default() -> Self {
        Self {
            faults: 5,
            window: Duration::from_secs(10),
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
        }
    }
}

/// Configuration of one environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvironmentConfig {
    /// Name for logs and listings.
    pub name: String,
    /// Subnets its modules may govern.
    pub scope: Scope,
    /// Capabilities granted to modules that request them.
    pub capabilities: Vec<Capability>,
    /// What handles do when a module cannot answer.
    pub failure_policy: FailurePolicy,
    /// Quarantine rule.
    pub quarantine: QuarantineConfig,
    /// VM bounds.
    pub vm: VmConfig,
    /// Most module names installed at once.
    pub max_modules: usize,
    /// CPU weight of each module within the environment.
    pub module_weight: u32,
    /// CPU weight of the environment among those sharing its [`CpuBudget`].
    pub weight: u32,
    /// Budget for [`Environment::new`], which gives the environment a budget of
    /// its own; units are fuel (wall-clock ns when fuel is off).
    pub budget: BudgetConfig,
}

impl EnvironmentConfig {
    /// An operator environment: any subnet, every capability, fall back.
    pub fn operator(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            scope: Scope::Operator,
            capabilities: vec![Capability::Log, Capability::Clock],
            failure_policy: FailurePolicy::FallBack,
            quarantine: QuarantineConfig::default(),
            vm: VmConfig::default(),
            max_modules: 64,
            module_weight: 1,
            weight: 1,
            // 10 ms periods of 10 M fuel. On our machines a tight loop burns about
            // 0.3-1 fuel per ns and straight-line policy code about 4 (least_load:
            // ~450 fuel in ~100 ns), so this is between a quarter of a core and
            // all of one, shared by every module.
            budget: BudgetConfig::new(10_000_000, 10_000_000),
        }
    }

    /// A tenant environment confined to `allowed`: log only, fall back.
    pub fn tenant(name: &str, allowed: Vec<VirtualSubnet>) -> Self {
        Self {
            scope: Scope::Tenant { allowed },
            capabilities: vec![Capability::Log],
            ..Self::operator(name)
        }
    }
}

/// Why a module's subnets are not acceptable in a tenant environment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScopeError {
    /// A tenant module must say which subnets it governs.
    #[error("tenant module {module} names no subnets in its manifest")]
    NoSubnets {
        /// Module name.
        module: String,
    },
    /// A subnet in the manifest or certificate does not parse.
    #[error("bad subnet in the {place}")]
    Syntax {
        /// `manifest` or `certificate`.
        place: &'static str,
        /// The parse error.
        #[source]
        source: SubnetError,
    },
    /// In a tenant environment the signer's certificate must name the subnets it
    /// may sign for; one that names none is refused (fail closed).
    #[error("signer {signer} names no subnets; a tenant environment needs them")]
    CertificateNamesNoSubnets {
        /// Signer subject.
        signer: String,
    },
    /// The manifest claims a subnet the certificate does not grant.
    #[error("subnet {subnet} is not granted by the signer's certificate")]
    NotInCertificate {
        /// The subnet.
        subnet: VirtualSubnet,
    },
    /// The subnet is outside the environment's allowed list.
    #[error("subnet {subnet} is outside this environment's subnets")]
    OutsideEnvironment {
        /// The subnet.
        subnet: VirtualSubnet,
    },
    /// The active version of a module does not govern the subnet asked for.
    #[error("module {module} does not govern subnet {subnet}")]
    NotGoverned {
        /// Module name.
        module: String,
        /// The subnet.
        subnet: VirtualSubnet,
    },
}

/// Why a manager operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManagerError {
    /// The signature or chain did not verify.
    #[error("module refused: {0}")]
    Verify(#[from] VerifyError),
    /// The module could not be compiled or instantiated.
    #[error("module refused: {0}")]
    Vm(#[from] VmError),
    /// The module may not govern the subnets it claims.
    #[error("module refused: {0}")]
    Scope(#[from] ScopeError),
    /// Module names are `[a-z0-9_-]{1,64}`.
    #[error("invalid module name {name:?} (expected [a-z0-9_-]{{1,64}})")]
    InvalidName {
        /// The name.
        name: String,
    },
    /// No module of that name is installed.
    #[error("no module named {name} is installed")]
    UnknownModule {
        /// The name.
        name: String,
    },
    /// [`EnvironmentConfig::max_modules`] reached.
    #[error("environment already holds {limit} modules")]
    TooManyModules {
        /// The limit.
        limit: usize,
    },
    /// This version is already the active one.
    #[error("{name} {version} is already active")]
    DuplicateVersion {
        /// Module name.
        name: String,
        /// Version.
        version: semver::Version,
    },
    /// Nothing to roll back to.
    #[error("{name} has no previous version")]
    NoPreviousVersion {
        /// Module name.
        name: String,
    },
    /// A [`Prepared`] module from another environment.
    #[error("module was prepared by another environment")]
    ForeignPreparation,
    /// The CPU budget refused (too many modules or environments).
    #[error("CPU budget: {0}")]
    Budget(#[from] BudgetError),
}

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
    fn lock(&self) -> MutexGuard<'_, CpuShares> {
        self.shares.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// resource-mgr's counters of a module (consumed, throttled, debt).
    fn stats(&self, module: ModuleId) -> Option<resource_mgr::ModuleStats> {
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
struct CpuGate {
    id: ModuleId,
    /// Units granted at the last settlement (0 after a refusal).
    granted: AtomicU64,
    /// Units used since the last settlement.
    unsettled: AtomicU64,
    /// When the grant lapses (ns).
    until: AtomicU64,
}

impl CpuGate {
    fn new(id: ModuleId) -> Self {
        Self {
            id,
            granted: AtomicU64::new(0),
            unsettled: AtomicU64::new(0),
            until: AtomicU64::new(0),
        }
    }

    /// Whether the module may run a call now.
    fn admit(&self, budget: &CpuBudget, now: u64, tick: u64) -> Result<(), Fault> {
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
    fn record(&self, budget: &CpuBudget, used: u64, now: u64, tick: u64) {
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

/// Counters of one module name (all versions).
#[derive(Debug, Default)]
struct Counters {
    calls: AtomicU64,
    failed: AtomicU64,
    traps: AtomicU64,
    timeouts: AtomicU64,
    bad_results: AtomicU64,
    throttled: AtomicU64,
    quarantined_refusals: AtomicU64,
    unavailable: AtomicU64,
    fallbacks: AtomicU64,
    refused_flows: AtomicU64,
    builtin_answers: AtomicU64,
    quarantines: AtomicU64,
    swaps: AtomicU64,
    rollbacks: AtomicU64,
}

fn bump(counter: &AtomicU64) {
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
    /// Flows refused under [`FailurePolicy::RefuseNewFlows`].
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
    fn snapshot(&self, cpu_used: u64) -> ModuleCounters {
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
struct Health {
    /// 0: not quarantined; else ns (budget clock) until which calls are refused.
    until: AtomicU64,
    window: Mutex<FaultWindow>,
}

impl Health {
    fn new() -> Self {
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
    fn quarantined(&self, now: u64) -> Option<u64> {
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
    fn record_fault(&self, now: u64, config: &QuarantineConfig) -> Option<Duration> {
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
    counters: EnvCounters,
}

impl Drop for EnvInner {
    fn drop(&mut self) {
        let _ = self.budget.lock().remove_environment(self.cpu_env);
    }
}

/// A module that passed every check and has a live instance, ready for
/// [`Environment::swap`].
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

/// Result of a swap or rollback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwapReport {
    /// Module name.
    pub name: String,
    /// Version now active.
    pub active: semver::Version,
    /// Version it replaced, if any.
    pub replaced: Option<semver::Version>,
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
    /// trust anchors, [`Environment::install`] refuses everything.
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

    fn refused<T>(&self, name: &str, result: Result<T, ManagerError>) -> Result<T, ManagerError> {
        if let Err(e) = &result {
            bump(&self.inner.counters.refused);
            tracing::warn!(env = %self.name(), module = %name, error = %e,
                "module refused; the installed version (if any) keeps serving");
        }
        result
    }

    /// Verifies a signed module file against this environment's trust anchors,
    /// then [`Environment::install_verified`].
    pub fn install(&self, bytes: &[u8]) -> Result<SwapReport, ManagerError> {
        let verified = trust::verify(bytes, &self.inner.anchors, SystemTime::now());
        let verified = self.refused("(unverified)", verified.map_err(ManagerError::from))?;
        self.install_verified(verified)
    }

    /// [`Environment::prepare`] then [`Environment::swap`].
    pub fn install_verified(&self, module: VerifiedModule) -> Result<SwapReport, ManagerError> {
        let prepared = self.prepare(module)?;
        self.swap(prepared)
    }

    /// The slow part of an install, off the packet path: name and scope checks,
    /// compile, instantiate (which checks the ABI version and I/O buffer).
    pub fn prepare(&self, module: VerifiedModule) -> Result<Prepared, ManagerError> {
        let name = module.manifest.name.clone();
        let result = self.prepare_inner(module);
        self.refused(&name, result)
    }

    fn prepare_inner(&self, module: VerifiedModule) -> Result<Prepared, ManagerError> {
        let manifest = &module.manifest;
        if !valid_name(&manifest.name) {
            return Err(ManagerError::InvalidName {
                name: manifest.name.clone(),
            });
        }
        let governs = self.check_scope(manifest, &module.signer)?;
        let instance = self
            .inner
            .vm
            .load(&module, &self.inner.config.capabilities)?;
        Ok(Prepared {
            env: self.inner.id,
            version: Arc::new(Version {
                manifest: module.manifest,
                digest: module.digest,
                signer: module.signer,
                governs,
                instance,
                health: Health::new(),
            }),
        })
    }

    fn check_scope(&self, manifest: &Manifest, signer: &SignerInfo) -> Result<Governs, ScopeError> {
        let Scope::Tenant { allowed } = &self.inner.config.scope else {
            return Ok(Governs::Any);
        };
        if manifest.subnets.is_empty() {
            return Err(ScopeError::NoSubnets {
                module: manifest.name.clone(),
            });
        }
        let claimed = parse_subnets(&manifest.subnets, "manifest")?;
        let granted = parse_subnets(&signer.subnets, "certificate")?;
        if granted.is_empty() {
            return Err(ScopeError::CertificateNamesNoSubnets {
                signer: signer.subject.clone(),
            });
        }
        for subnet in &claimed {
            if !granted.iter().any(|g| g.covers(subnet)) {
                return Err(ScopeError::NotInCertificate { subnet: *subnet });
            }
            if !allowed.iter().any(|a| a.covers(subnet)) {
                return Err(ScopeError::OutsideEnvironment { subnet: *subnet });
            }
        }
        Ok(Governs::Subnets(claimed))
    }

    /// Publishes a prepared module as the active version of its name in one
    /// atomic store; the version it replaces becomes the previous one.
    pub fn swap(&self, prepared: Prepared) -> Result<SwapReport, ManagerError> {
        let name = prepared.name().to_owned();
        let result = self.swap_inner(prepared);
        self.refused(&name, result)
    }

    fn swap_inner(&self, prepared: Prepared) -> Result<SwapReport, ManagerError> {
        if prepared.env != self.inner.id {
            return Err(ManagerError::ForeignPreparation);
        }
        let version = prepared.version;
        let name = version.manifest.name.clone();
        let mut modules = self.modules();
        let slot = match modules.get(&name) {
            Some(slot) => Arc::clone(slot),
            None => {
                if modules.len() >= self.inner.config.max_modules {
                    return Err(ManagerError::TooManyModules {
                        limit: self.inner.config.max_modules,
                    });
                }
                let cpu = self
                    .inner
                    .budget
                    .lock()
                    .add_module(self.inner.cpu_env, self.inner.config.module_weight)?;
                let slot = Arc::new(Slot {
                    name: name.clone(),
                    versions: ArcSwapOption::empty(),
                    cpu: CpuGate::new(cpu),
                    budget: Arc::clone(&self.inner.budget),
                    counters: Counters::default(),
                });
                modules.insert(name.clone(), Arc::clone(&slot));
                slot
            }
        };
        let current = slot.versions.load_full();
        if let Some(current) = &current
            && current.active.manifest.version == version.manifest.version
        {
            return Err(ManagerError::DuplicateVersion {
                name,
                version: version.manifest.version.clone(),
            });
        }
        let replaced = current.as_ref().map(|c| c.active.manifest.version.clone());
        let active = version.manifest.version.clone();
        // The old previous version drops out of the pair: retire it.
        self.retire(current.as_ref().and_then(|c| c.previous.clone()));
        slot.versions.store(Some(Arc::new(Versions {
            active: version,
            previous: current.map(|c| Arc::clone(&c.active)),
        })));
        bump(&self.inner.counters.installs);
        if replaced.is_some() {
            bump(&slot.counters.swaps);
        }
        tracing::info!(env = %self.name(), module = %name, version = %active,
            replaced = ?replaced.as_ref().map(ToString::to_string), "module installed");
        Ok(SwapReport {
            name,
            active,
            replaced,
        })
    }

    /// Makes the previous version active again (and the active one previous).
    pub fn rollback(&self, name: &str) -> Result<SwapReport, ManagerError> {
        let modules = self.modules();
        let slot = modules
            .get(name)
            .ok_or_else(|| ManagerError::UnknownModule {
                name: name.to_owned(),
            })?;
        let Some(current) = slot.versions.load_full() else {
            return Err(ManagerError::UnknownModule {
                name: name.to_owned(),
            });
        };
        let Some(previous) = &current.previous else {
            return Err(ManagerError::NoPreviousVersion {
                name: name.to_owned(),
            });
        };
        slot.versions.store(Some(Arc::new(Versions {
            active: Arc::clone(previous),
            previous: Some(Arc::clone(&current.active)),
        })));
        bump(&slot.counters.rollbacks);
        let report = SwapReport {
            name: name.to_owned(),
            active: previous.manifest.version.clone(),
            replaced: Some(current.active.manifest.version.clone()),
        };
        tracing::info!(env = %self.name(), module = %name, version = %report.active,
            "module rolled back");
        Ok(report)
    }

    /// Removes a module; handles bound to it answer `Unavailable` (so the engine
    /// uses its built-in policy) until a module of that name is installed again.
    /// While such handles live, the name still counts towards
    /// [`EnvironmentConfig::max_modules`].
    pub fn remove(&self, name: &str) -> Result<(), ManagerError> {
        let mut modules = self.modules();
        let slot = modules
            .get(name)
            .ok_or_else(|| ManagerError::UnknownModule {
                name: name.to_owned(),
            })?;
        let Some(gone) = slot.versions.swap(None) else {
            return Err(ManagerError::UnknownModule {
                name: name.to_owned(),
            });
        };
        self.retire(Some(Arc::clone(&gone.active)));
        self.retire(gone.previous.clone());
        drop(gone);
        // Keep the slot while handles hold it, so a reinstall reaches them.
        if Arc::strong_count(slot) == 1 {
            modules.remove(name);
        }
        bump(&self.inner.counters.removals);
        tracing::info!(env = %self.name(), module = %name, "module removed");
        Ok(())
    }

    /// Keep `version` alive until no call holds it, then free it here, on the
    /// control thread (see `EnvInner::retired`).
    fn retire(&self, version: Option<Arc<Version>>) {
        let mut retired = self
            .inner
            .retired
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        retired.retain(|v| Arc::strong_count(v) > 1);
        retired.extend(version);
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

    fn bound_slot(&self, name: &str, subnet: VirtualSubnet) -> Result<Arc<Slot>, ManagerError> {
        let slot =
            self.modules()
                .get(name)
                .cloned()
                .ok_or_else(|| ManagerError::UnknownModule {
                    name: name.to_owned(),
                })?;
        let versions = slot
            .versions
            .load_full()
            .ok_or_else(|| ManagerError::UnknownModule {
                name: name.to_owned(),
            })?;
        if let Scope::Tenant { allowed } = &self.inner.config.scope
            && !allowed.iter().any(|a| a.covers(&subnet))
        {
            return Err(ScopeError::OutsideEnvironment { subnet }.into());
        }
        if !versions.active.governs.covers(&subnet) {
            return Err(ScopeError::NotGoverned {
                module: name.to_owned(),
                subnet,
            }
            .into());
        }
        Ok(slot)
    }

    /// A policy handle for `subnet` bound to module `name`: it always calls the
    /// active version, so the engine keeps it across swaps.
    pub fn policy(
        &self,
        name: &str,
        subnet: VirtualSubnet,
    ) -> Result<Arc<ModulePolicy>, ManagerError> {
        let slot = self.bound_slot(name, subnet)?;
        Ok(Arc::new(ModulePolicy {
            handle: Handle {
                env: Arc::clone(&self.inner),
                slot,
                subnet,
            },
        }))
    }

    /// A cost-model (F, G) handle for `subnet` bound to module `name`.
    pub fn cost_model(
        &self,
        name: &str,
        subnet: VirtualSubnet,
    ) -> Result<Arc<ModuleCostModel>, ManagerError> {
        let slot = self.bound_slot(name, subnet)?;
        Ok(Arc::new(ModuleCostModel {
            handle: Handle {
                env: Arc::clone(&self.inner),
                slot,
                subnet,
            },
        }))
    }
}

/// What a handle holds: its environment, its module name's slot, its subnet.
#[derive(Debug)]
struct Handle {
    env: Arc<EnvInner>,
    slot: Arc<Slot>,
    subnet: VirtualSubnet,
}

impl Handle {
    /// One call on one version: quarantine and subnet checks, CPU admission, the
    /// call, the charge, the counters.
    fn call_version<T>(
        &self,
        version: &Version,
        call: &impl Fn(&PolicyInstance) -> CallOutcome<T>,
    ) -> Result<T, Fault> {
        let env = &self.env;
        let counters = &self.slot.counters;
        let now = env.vm.monotonic_ns();
        if let Some(remaining) = version.health.quarantined(now) {
            bump(&counters.quarantined_refusals);
            return Err(Fault::Unavailable {
                reason: format!("quarantined for {} ms more", remaining / 1_000_000),
            });
        }
        if !version.governs.covers(&self.subnet) {
            bump(&counters.unavailable);
            return Err(Fault::Unavailable {
                reason: format!("version does not govern {}", self.subnet),
            });
        }
        let tick = env.tick_ns;
        if let Err(refusal) = self.slot.cpu.admit(&env.budget, now, tick) {
            match refusal {
                Fault::Budget => bump(&counters.throttled),
                _ => bump(&counters.unavailable),
            }
            return Err(refusal);
        }
        let outcome = call(&version.instance);
        self.slot
            .cpu
            .record(&env.budget, outcome.cpu_used, now, tick);
        if let Err(fault) = &outcome.result {
            self.count_fault(version, fault, now);
        }
        outcome.result
    }

    fn count_fault(&self, version: &Version, fault: &Fault, now: u64) {
        let counters = &self.slot.counters;
        match fault.kind() {
            FaultKind::Trap => bump(&counters.traps),
            FaultKind::Timeout => bump(&counters.timeouts),
            FaultKind::BadResult => bump(&counters.bad_results),
            FaultKind::Budget => bump(&counters.throttled),
            FaultKind::Unavailable => bump(&counters.unavailable),
        }
        tracing::debug!(env = %self.env.config.name, module = %self.slot.name,
            version = %version.manifest.version, %fault, "module call failed");
        if !fault.is_module_fault() {
            return;
        }
        if let Some(backoff) = version
            .health
            .record_fault(now, &self.env.config.quarantine)
        {
            bump(&counters.quarantines);
            tracing::warn!(env = %self.env.config.name, module = %self.slot.name,
                version = %version.manifest.version, backoff_ms = backoff.as_millis(),
                "module quarantined after repeated faults");
        }
    }

    /// The active version, then (under `FallBack`) the previous one. `Err` is the
    /// active version's fault (or "nothing installed").
    fn dispatch<T>(&self, call: impl Fn(&PolicyInstance) -> CallOutcome<T>) -> Result<T, Fault> {
        bump(&self.slot.counters.calls);
        let result = self.dispatch_versions(call);
        if result.is_err() {
            bump(&self.slot.counters.failed);
        }
        result
    }

    fn dispatch_versions<T>(
        &self,
        call: impl Fn(&PolicyInstance) -> CallOutcome<T>,
    ) -> Result<T, Fault> {
        let versions = self.slot.versions.load();
        let Some(versions) = versions.as_deref() else {
            bump(&self.slot.counters.unavailable);
            return Err(Fault::Unavailable {
                reason: format!("no module {} installed", self.slot.name),
            });
        };
        let fault = match self.call_version(&versions.active, &call) {
            Ok(answer) => return Ok(answer),
            Err(fault) => fault,
        };
        if self.env.config.failure_policy == FailurePolicy::FallBack
            && let Some(previous) = &versions.previous
            && let Ok(answer) = self.call_version(previous, &call)
        {
            bump(&self.slot.counters.fallbacks);
            return Ok(answer);
        }
        Err(fault)
    }

    fn refuses(&self) -> bool {
        self.env.config.failure_policy == FailurePolicy::RefuseNewFlows
    }
}

/// The engine's policy for a subnet: module `name` of an environment, whichever
/// version is active at the time of each call.
#[derive(Debug)]
pub struct ModulePolicy {
    handle: Handle,
}

impl ModulePolicy {
    /// The subnet this handle is bound to.
    pub fn subnet(&self) -> VirtualSubnet {
        self.handle.subnet
    }

    /// The active version, if one is installed.
    pub fn active_version(&self) -> Option<semver::Version> {
        self.handle
            .slot
            .versions
            .load()
            .as_deref()
            .map(|v| v.active.manifest.version.clone())
    }
}

impl Policy for ModulePolicy {
    fn name(&self) -> &str {
        &self.handle.slot.name
    }

    fn select(&self, req: &FlowRequest, candidates: &[Candidate]) -> Result<Decision, PolicyError> {
        let now = self.handle.env.vm.unix_secs();
        match self
            .handle
            .dispatch(|instance| instance.call_select(req, candidates, now, None))
        {
            Ok(decision) => Ok(decision),
            Err(_) if self.handle.refuses() => {
                bump(&self.handle.slot.counters.refused_flows);
                Ok(Decision::Reject)
            }
            // The engine falls back to its built-in policy and counts the fault.
            Err(fault) => Err(fault.into()),
        }
    }
}

/// The operator's F and G for a subnet from module `name`, whichever version is
/// active at the time of each call.
#[derive(Debug)]
pub struct ModuleCostModel {
    handle: Handle,
}

impl ModuleCostModel {
    /// A failed call's answer: `+inf` under `RefuseNewFlows` ("send nothing
    /// new here"), else the built-in `SumCost`.
    fn fallback(
        &self,
        builtin: impl FnOnce() -> Result<f64, PolicyError>,
    ) -> Result<f64, PolicyError> {
        let counters = &self.handle.slot.counters;
        if self.handle.refuses() {
            bump(&counters.refused_flows);
            Ok(f64::INFINITY)
        } else {
            bump(&counters.builtin_answers);
            builtin()
        }
    }
}

impl CostModel for ModuleCostModel {
    fn name(&self) -> &str {
        &self.handle.slot.name
    }

    fn cost(&self, load: f64, route_cost: f64) -> Result<f64, PolicyError> {
        match self
            .handle
            .dispatch(|instance| instance.call_cost(load, route_cost, None))
        {
            Ok(value) => Ok(value),
            Err(_) => self.fallback(|| SumCost.cost(load, route_cost)),
        }
    }

    fn aggregate(&self, candidates: &[Candidate]) -> Result<f64, PolicyError> {
        match self
            .handle
            .dispatch(|instance| instance.call_aggregate(candidates, None))
        {
            Ok(value) => Ok(value),
            Err(_) => self.fallback(|| SumCost.aggregate(candidates)),
        }
    }
}
