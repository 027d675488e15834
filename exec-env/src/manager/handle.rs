//! The engine's handles: a policy or cost model bound to a module name and a
//! subnet, or a link scheduler's rank function bound to a module name, calling
//! whichever version is active, with fallback, CPU admission and quarantine
//! (one code path for every kind).

use std::sync::Arc;

use router_core::classify::VirtualSubnet;
use router_core::policy::{
    Candidate, CostModel, Decision, FlowRequest, Policy, PolicyError, SumCost,
};
use router_core::sched::{PacketMeta, Rank, RankContext, RankError};

use super::health::bump;
use super::{EnvInner, FailurePolicy, Slot, Version};
use crate::vm::{CallOutcome, Fault, FaultKind, PolicyInstance, TimeoutCause};

/// What a handle holds: its environment, its module name's slot, its subnet
/// (none for a rank function: it orders the whole link).
#[derive(Debug, Clone)]
struct Handle {
    env: Arc<EnvInner>,
    slot: Arc<Slot>,
    subnet: Option<VirtualSubnet>,
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
        if let Some(subnet) = &self.subnet
            && !version.governs.covers(subnet)
        {
            bump(&counters.unavailable);
            return Err(Fault::Unavailable {
                reason: format!("version does not govern {subnet}"),
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

    /// The active version of the module name, if one is installed.
    fn active_version(&self) -> Option<semver::Version> {
        self.slot
            .versions
            .load()
            .as_deref()
            .map(|v| v.active.manifest.version.clone())
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
    pub(super) fn new(env: Arc<EnvInner>, slot: Arc<Slot>, subnet: VirtualSubnet) -> Self {
        Self {
            handle: Handle {
                env,
                slot,
                subnet: Some(subnet),
            },
        }
    }

    /// The subnet this handle is bound to.
    pub fn subnet(&self) -> VirtualSubnet {
        self.handle.subnet.unwrap_or(VirtualSubnet::ANY_V4)
    }

    /// The active version, if one is installed.
    pub fn active_version(&self) -> Option<semver::Version> {
        self.handle.active_version()
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
    pub(super) fn new(env: Arc<EnvInner>, slot: Arc<Slot>, subnet: VirtualSubnet) -> Self {
        Self {
            handle: Handle {
                env,
                slot,
                subnet: Some(subnet),
            },
        }
    }

    /// The subnet this handle is bound to.
    pub fn subnet(&self) -> VirtualSubnet {
        self.handle.subnet.unwrap_or(VirtualSubnet::ANY_V4)
    }

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

/// Fuel of one `pronto_rank` call: the shipped `sfq` takes a few hundred, so a
/// looping module is stopped within about 100 us of CPU.
pub const RANK_FUEL_PER_CALL: u64 = 100_000;

/// A link scheduler's rank function from module `name`, whichever version is
/// active at each call: charged to the module's CPU share, quarantined and
/// counted as every module call is. A version has one instance, which keeps
/// the module's state (SFQ's finish tags, indexed by class): bind a scheduler
/// module to one link scheduler, since clones share that state. A swap or
/// rollback starts the new version's state afresh; queued packets keep the
/// ranks they were given. Under [`FailurePolicy::FallBack`] a failing version's
/// calls are answered by the previous version's instance.
#[derive(Debug, Clone)]
pub struct ModuleRankHandle {
    handle: Handle,
    /// The module's name ([`Rank::name`]).
    label: String,
}

impl ModuleRankHandle {
    pub(super) fn new(env: Arc<EnvInner>, slot: Arc<Slot>) -> Self {
        let label = slot.name.clone();
        Self {
            handle: Handle {
                env,
                slot,
                subnet: None,
            },
            label,
        }
    }

    /// The active version, if one is installed.
    pub fn active_version(&self) -> Option<semver::Version> {
        self.handle.active_version()
    }
}

impl Rank for ModuleRankHandle {
    fn name(&self) -> &str {
        &self.label
    }

    fn rank(&mut self, packet: &PacketMeta, at: &RankContext) -> Result<u64, RankError> {
        let request = crate::scheduler::rank_request(packet, at);
        let result = self.handle.dispatch(|instance| {
            let mut outcome = instance.call_rank(&request, Some(RANK_FUEL_PER_CALL));
            // The cap is this call's own bound, not a CPU share cut short (the
            // share is admitted before the call): running out of it is the
            // module looping, a timeout that counts towards quarantine.
            if matches!(outcome.result, Err(Fault::Budget)) {
                outcome.result = Err(Fault::Timeout {
                    cause: TimeoutCause::Fuel,
                });
            }
            outcome
        });
        // The link scheduler ranks a failed packet at the class's virtual time
        // and counts the fault; it is never dropped for it.
        result.map_err(|fault| match fault {
            Fault::Trap { message } => RankError::Trap { message },
            Fault::BadRank { raw } => RankError::BadResult { raw },
            f if matches!(f.kind(), FaultKind::Timeout | FaultKind::Budget) => RankError::Timeout,
            f => RankError::Unavailable {
                reason: f.to_string(),
            },
        })
    }
}
