//! An environment's configuration: scope, failure policy, quarantine, bounds.

use std::time::Duration;

use resource_mgr::BudgetConfig;
use router_core::classify::VirtualSubnet;

use crate::manifest::Capability;
use crate::vm::VmConfig;

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
    /// CPU weight of the environment among those sharing its
    /// [`CpuBudget`](super::CpuBudget).
    pub weight: u32,
    /// Budget for [`Environment::new`](super::Environment::new), which gives the environment a budget of
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
