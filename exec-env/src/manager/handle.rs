//! The engine's handles: a policy or cost model bound to a module name and a
//! subnet, calling whichever version is active, with fallback and quarantine.

use std::sync::Arc;

use router_core::classify::VirtualSubnet;
use router_core::policy::{
    Candidate, CostModel, Decision, FlowRequest, Policy, PolicyError, SumCost,
};

use super::health::bump;
use super::{EnvInner, FailurePolicy, Slot, Version};
use crate::vm::{CallOutcome, Fault, FaultKind, PolicyInstance};

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
    pub(super) fn new(env: Arc<EnvInner>, slot: Arc<Slot>, subnet: VirtualSubnet) -> Self {
        Self {
            handle: Handle { env, slot, subnet },
        }
    }

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
    pub(super) fn new(env: Arc<EnvInner>, slot: Arc<Slot>, subnet: VirtualSubnet) -> Self {
        Self {
            handle: Handle { env, slot, subnet },
        }
    }

    /// The subnet this handle is bound to.
    pub fn subnet(&self) -> VirtualSubnet {
        self.handle.subnet
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
