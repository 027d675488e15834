//! Scheduler modules (DESIGN.md §6-7): signed wasm modules of kind `scheduler`
//! that rank packets for router-core's PIFO link scheduler.
//!
//! * [`prepare`] verifies a signed file against an [`Environment`]'s trust
//!   anchors, then checks and compiles it on the environment's VM
//!   ([`Vm::compile_scheduler`](crate::vm::Vm::compile_scheduler): the same
//!   engine, memory/table limits, fuel and epoch bounds, ABI v1 checks) into a
//!   [`SchedulerModule`]. All of it off the packet path.
//! * [`SchedulerModule::rank`] instantiates it into a [`ModuleRank`], which
//!   implements [`router_core::sched::Rank`]: each call writes one
//!   [`sdk::RankRequest`] (built from the packet and its [`RankContext`] exactly
//!   as `sdk::rank` documents) into the I/O buffer, calls `pronto_rank` with a
//!   small fuel budget ([`RankConfig::fuel_per_call`]) and validates the answer
//!   with [`sdk::rank_from_raw`]. The instance is the module's own state (SFQ's
//!   finish tags), so one `ModuleRank` serves one link scheduler.
//!
//! # Faults
//!
//! A trap is [`RankError::Trap`], a fuel or epoch stop (or the fuel cap of
//! [`RankConfig`]) is [`RankError::Timeout`], a negative rank is
//! [`RankError::BadResult`]. The link scheduler then ranks the packet at the
//! node's virtual time and counts a fault: the built-in fallback of DESIGN.md §6;
//! no packet is dropped for it. After a fault the VM rebuilds the instance (a
//! trap may leave guest memory half-written), so the module's state restarts.
//! [`RankConfig::quarantine`] faults within its window quarantine the module:
//! its calls then fail fast as `Unavailable` (no wasm run) for a backoff that
//! doubles on each repeat, so a broken module costs the packet path nothing
//! while it sits out. Times are the scheduler's (`RankContext::now`).
//!
//! # Hot swap
//!
//! The caller swaps: prepare the new module and make its [`ModuleRank`] off the
//! packet path, then hand it to
//! [`LinkScheduler::set_rank`](router_core::sched::LinkScheduler::set_rank)
//! between two packets ([`SchedulerModule::install_into`] does both). The link
//! scheduler owns its rank function by `&mut`, so that call is already the
//! atomic switch: queued packets keep their ranks, nothing is ever without a
//! rank function, and the scheduler counts the swap. A handle that followed an
//! environment's active version instead would switch rank functions (and lose
//! the old instance's per-flow state) behind the scheduler's back, with no swap
//! counted. The old `ModuleRank` comes back from `set_rank`; drop it off the
//! packet path.
//!
//! Scheduler modules are refused in tenant environments: a rank function orders
//! every class of a link, not one tenant's subnets.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use router_core::sched::{LinkScheduler, PacketMeta, Rank, RankContext, RankError};
use sdk::RankRequest;

use crate::manager::{Environment, QuarantineConfig, Scope};
use crate::manifest::Manifest;
use crate::trust::{self, VerifyError};
use crate::verified::VerifiedModule;
use crate::vm::{CompiledModule, Fault, FaultKind, PolicyInstance, VmError};

/// Bounds of the rank calls of one [`ModuleRank`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RankConfig {
    /// Fuel of one `pronto_rank` call, capped by the VM's per-call fuel (with
    /// fuel off in the VM, the epoch deadline is the only bound).
    pub fuel_per_call: u64,
    /// When faults quarantine the module.
    pub quarantine: QuarantineConfig,
}

impl Default for RankConfig {
    /// 100 000 fuel per call (the shipped `sfq` takes a few hundred; a looping
    /// module is stopped within about 100 µs), the manager's default quarantine.
    fn default() -> Self {
        Self {
            fuel_per_call: 100_000,
            quarantine: QuarantineConfig::default(),
        }
    }
}

/// Why a scheduler module was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchedulerError {
    /// The signature or chain did not verify.
    #[error("scheduler module refused: {0}")]
    Verify(#[from] VerifyError),
    /// The module could not be compiled or instantiated (wrong kind included).
    #[error("scheduler module refused: {0}")]
    Vm(#[from] VmError),
    /// Scheduler modules run in operator environments only.
    #[error("environment {env} is a tenant environment; scheduler modules need an operator one")]
    TenantEnvironment {
        /// The environment's name.
        env: String,
    },
}

/// A verified, checked and compiled scheduler module: instantiating it is cheap.
#[derive(Debug, Clone)]
pub struct SchedulerModule {
    manifest: Manifest,
    digest: [u8; 32],
    compiled: CompiledModule,
    config: RankConfig,
}

/// Verifies a signed scheduler module file against `env`'s trust anchors at the
/// current time, then [`prepare_verified`].
pub fn prepare(
    env: &Environment,
    bytes: &[u8],
    config: RankConfig,
) -> Result<SchedulerModule, SchedulerError> {
    let verified = trust::verify(bytes, env.anchors(), SystemTime::now())?;
    prepare_verified(env, &verified, config)
}

/// Checks and compiles a verified scheduler module on `env`'s VM with the
/// capabilities `env` grants. Off the packet path.
pub fn prepare_verified(
    env: &Environment,
    module: &VerifiedModule,
    config: RankConfig,
) -> Result<SchedulerModule, SchedulerError> {
    let result = prepare_inner(env, module, config);
    match &result {
        Ok(_) => tracing::info!(env = %env.name(), module = %module.manifest.name,
            version = %module.manifest.version, "scheduler module prepared"),
        Err(e) => tracing::warn!(env = %env.name(), module = %module.manifest.name,
            error = %e, "scheduler module refused"),
    }
    result
}

fn prepare_inner(
    env: &Environment,
    module: &VerifiedModule,
    config: RankConfig,
) -> Result<SchedulerModule, SchedulerError> {
    if let Scope::Tenant { .. } = env.config().scope {
        return Err(SchedulerError::TenantEnvironment {
            env: env.name().to_owned(),
        });
    }
    let compiled = env
        .vm()
        .compile_scheduler(module, &env.config().capabilities)?;
    Ok(SchedulerModule {
        manifest: module.manifest.clone(),
        digest: module.digest,
        compiled,
        config,
    })
}

impl SchedulerModule {
    /// Module name.
    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    /// Module version.
    pub fn version(&self) -> &semver::Version {
        &self.manifest.version
    }

    /// The signed manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// SHA-256 of the module file.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// A fresh instance (fresh module state) as a rank function.
    pub fn rank(&self) -> Result<ModuleRank, VmError> {
        let instance = self.compiled.instantiate()?;
        Ok(ModuleRank {
            name: format!("{}@{}", self.manifest.name, self.manifest.version),
            instance,
            config: self.config,
            counters: Arc::new(RankCounters::default()),
            health: RankHealth::default(),
        })
    }

    /// Instantiates (may fail, leaving `link` untouched) and then swaps the new
    /// rank function into `link`; returns the old one to drop off the packet path.
    pub fn install_into<P>(&self, link: &mut LinkScheduler<P>) -> Result<Box<dyn Rank>, VmError> {
        let rank = self.rank()?;
        Ok(link.set_rank(Box::new(rank)))
    }
}

/// Counters of one [`ModuleRank`], readable while the scheduler owns it.
#[derive(Debug, Default)]
pub struct RankCounters {
    calls: AtomicU64,
    ok: AtomicU64,
    traps: AtomicU64,
    timeouts: AtomicU64,
    bad_results: AtomicU64,
    unavailable: AtomicU64,
    quarantined_refusals: AtomicU64,
    quarantines: AtomicU64,
    restarts: AtomicU64,
    fuel: AtomicU64,
}

/// A snapshot of [`RankCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RankStats {
    /// Rank calls asked (quarantine refusals included).
    pub calls: u64,
    /// Calls answered with a valid rank.
    pub ok: u64,
    /// Traps.
    pub traps: u64,
    /// Fuel or epoch stops.
    pub timeouts: u64,
    /// Negative ranks.
    pub bad_results: u64,
    /// Calls not made (instance could not be rebuilt, request not encodable).
    pub unavailable: u64,
    /// Calls refused while quarantined.
    pub quarantined_refusals: u64,
    /// Quarantines started.
    pub quarantines: u64,
    /// Instance rebuilds after faults.
    pub restarts: u64,
    /// Fuel used by all calls (0 with fuel off).
    pub fuel: u64,
}

impl RankStats {
    /// Module faults (traps, timeouts, bad results).
    pub fn faults(&self) -> u64 {
        self.traps + self.timeouts + self.bad_results
    }
}

impl RankCounters {
    /// Current values.
    pub fn snapshot(&self) -> RankStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RankStats {
            calls: get(&self.calls),
            ok: get(&self.ok),
            traps: get(&self.traps),
            timeouts: get(&self.timeouts),
            bad_results: get(&self.bad_results),
            unavailable: get(&self.unavailable),
            quarantined_refusals: get(&self.quarantined_refusals),
            quarantines: get(&self.quarantines),
            restarts: get(&self.restarts),
            fuel: get(&self.fuel),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Quarantine state of one [`ModuleRank`] (plain fields: `rank` has `&mut self`).
#[derive(Debug, Default)]
struct RankHealth {
    /// Times (ns) of recent faults, at most `QuarantineConfig::faults` of them.
    recent: VecDeque<u64>,
    /// Quarantined until this time (ns), if at all.
    until: Option<u64>,
    /// Length of the last quarantine.
    backoff: Duration,
    /// When the last quarantine ended (ns).
    released_at: Option<u64>,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl RankHealth {
    /// Whether calls are refused at `now`; releases an expired quarantine.
    fn quarantined(&mut self, now: u64) -> bool {
        match self.until {
            Some(until) if now < until => true,
            Some(_) => {
                self.until = None;
                self.released_at = Some(now);
                false
            }
            None => false,
        }
    }

    /// Records a fault; returns the backoff if it starts a quarantine.
    fn record_fault(&mut self, now: u64, config: &QuarantineConfig) -> Option<Duration> {
        let threshold = config.faults.max(1) as usize;
        let window = nanos(config.window);
        while self
            .recent
            .front()
            .is_some_and(|&t| now.saturating_sub(t) > window)
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        while self.recent.len() > threshold {
            self.recent.pop_front();
        }
        if self.recent.len() < threshold {
            return None;
        }
        self.recent.clear();
        // Doubles while quarantines follow each other within max_backoff.
        let repeat = self
            .released_at
            .is_some_and(|released| now.saturating_sub(released) <= nanos(config.max_backoff));
        self.backoff = if repeat {
            (self.backoff * 2).min(config.max_backoff)
        } else {
            config.backoff
        };
        self.until = Some(now.saturating_add(nanos(self.backoff)));
        Some(self.backoff)
    }
}

/// One instance of a scheduler module as a link scheduler's rank function.
#[derive(Debug)]
pub struct ModuleRank {
    name: String,
    instance: PolicyInstance,
    config: RankConfig,
    counters: Arc<RankCounters>,
    health: RankHealth,
}

/// The ABI request for `packet` at `at`, as `sdk::rank` documents it.
pub fn rank_request(packet: &PacketMeta, at: &RankContext) -> RankRequest {
    RankRequest::leaf(packet.len, packet.class.index(), packet.flow_hash)
        .with_node(at.node.index(), at.child.index(), at.weight, at.priority)
        .with_state(at.vtime, at.busy_period, at.queued)
        .with_now(at.now.as_nanos())
        .with_dscp(packet.dscp, packet.proto)
}

impl ModuleRank {
    /// The counters, shared: keep this to read them after the scheduler took the
    /// rank function.
    pub fn counters(&self) -> Arc<RankCounters> {
        Arc::clone(&self.counters)
    }

    /// Ranks an ABI request directly (differential tests, benches).
    pub fn rank_raw(&mut self, request: &RankRequest, now_ns: u64) -> Result<u64, RankError> {
        bump(&self.counters.calls);
        if self.health.quarantined(now_ns) {
            bump(&self.counters.quarantined_refusals);
            return Err(RankError::Unavailable {
                reason: format!("scheduler module {} is quarantined", self.name),
            });
        }
        let outcome = self
            .instance
            .call_rank(request, Some(self.config.fuel_per_call));
        self.counters
            .fuel
            .fetch_add(outcome.cpu_used, Ordering::Relaxed);
        let fault = match outcome.result {
            Ok(rank) => {
                bump(&self.counters.ok);
                return Ok(rank);
            }
            Err(fault) => fault,
        };
        let c = &self.counters;
        let error = match (fault.kind(), &fault) {
            (FaultKind::Trap, Fault::Trap { message }) => {
                bump(&c.traps);
                RankError::Trap {
                    message: message.clone(),
                }
            }
            // Budget: the rank fuel cap (below the VM's per-call fuel) ran out.
            (FaultKind::Timeout | FaultKind::Budget, _) => {
                bump(&c.timeouts);
                RankError::Timeout
            }
            (FaultKind::BadResult, Fault::BadRank { raw }) => {
                bump(&c.bad_results);
                RankError::BadResult { raw: *raw }
            }
            (FaultKind::BadResult, _) => {
                bump(&c.bad_results);
                RankError::BadResult { raw: -1 }
            }
            _ => {
                bump(&c.unavailable);
                RankError::Unavailable {
                    reason: fault.to_string(),
                }
            }
        };
        c.restarts
            .store(self.instance.stats().restarts, Ordering::Relaxed);
        tracing::debug!(module = %self.name, %fault, "scheduler module rank call failed");
        // Budget here is the module running out of its rank fuel: its fault.
        let module_fault = fault.is_module_fault() || fault.kind() == FaultKind::Budget;
        if module_fault
            && let Some(backoff) = self.health.record_fault(now_ns, &self.config.quarantine)
        {
            bump(&c.quarantines);
            tracing::warn!(module = %self.name, backoff_ms = backoff.as_millis(),
                "scheduler module quarantined after repeated faults");
        }
        Err(error)
    }
}

impl Rank for ModuleRank {
    fn name(&self) -> &str {
        &self.name
    }

    fn rank(&mut self, packet: &PacketMeta, at: &RankContext) -> Result<u64, RankError> {
        let request = rank_request(packet, at);
        self.rank_raw(&request, at.now.as_nanos())
    }
}
