//! Bindings: which module governs which subnet prefix in which role, and the
//! handles the engine calls.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use router_core::classify::VirtualSubnet;

use super::report::{BindReport, Binding, VersionSummary};
use super::{
    Environment, ManagerError, ModuleCostModel, ModulePolicy, ModuleRankHandle, Scope, ScopeError,
    Slot,
};

/// What a bound module does for its subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Role {
    /// Selects the next hop of each new flow (`pronto_select`).
    Policy,
    /// The cost F and aggregate G of the next-hop table (`pronto_cost`,
    /// `pronto_aggregate`).
    Cost,
    /// The rank function of the router's egress link scheduler
    /// (`pronto_rank`); bound with the subnet [`Role::LINK`], the whole link.
    Scheduler,
}

impl Role {
    /// `policy`, `cost` or `scheduler`, as configuration and the CLI spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Policy => "policy",
            Self::Cost => "cost",
            Self::Scheduler => "scheduler",
        }
    }

    /// The subnet a scheduler binding is recorded under: a rank function
    /// orders the whole link (`0.0.0.0/0`).
    pub const LINK: VirtualSubnet = VirtualSubnet::ANY_V4;
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not `policy`, `cost` or `scheduler`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?} (expected policy, cost or scheduler)")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "policy" => Ok(Self::Policy),
            "cost" => Ok(Self::Cost),
            "scheduler" => Ok(Self::Scheduler),
            _ => Err(UnknownRole(s.to_owned())),
        }
    }
}

/// The engine's handle for a binding: it always calls the module's active
/// version, so the engine keeps it across swaps.
#[derive(Debug, Clone)]
pub enum BoundHandle {
    /// For [`Role::Policy`].
    Policy(Arc<ModulePolicy>),
    /// For [`Role::Cost`].
    Cost(Arc<ModuleCostModel>),
    /// For [`Role::Scheduler`]: clone one per link scheduler.
    Rank(ModuleRankHandle),
}

impl Environment {
    /// Binds module `name` to govern `subnet` in `role`, replacing whichever
    /// module held that subnet and role, and returns the handle for the engine.
    /// Refuses an unknown name ([`ManagerError::UnknownModule`]), a subnet
    /// outside the environment or the module's manifest
    /// ([`ManagerError::Scope`]), and a module whose active version exports no
    /// entry point for the role ([`ManagerError::WrongRole`]).
    pub fn bind(
        &self,
        name: &str,
        subnet: VirtualSubnet,
        role: Role,
    ) -> Result<BindReport, ManagerError> {
        let checked = if role == Role::Scheduler && subnet != Role::LINK {
            Err(ManagerError::LinkOnly { subnet })
        } else {
            self.bindable(name, subnet, role)
        };
        let (slot, version) = checked.inspect_err(|e| {
            super::health::bump(&self.inner.counters.bind_refused);
            tracing::warn!(env = %self.name(), module = %name, %subnet, %role, error = %e,
                "binding refused");
        })?;
        let replaced = self
            .binding_table()
            .insert((subnet, role), name.to_owned())
            .filter(|old| old != name);
        let env = Arc::clone(&self.inner);
        let handle = match role {
            Role::Policy => BoundHandle::Policy(Arc::new(ModulePolicy::new(env, slot, subnet))),
            Role::Cost => BoundHandle::Cost(Arc::new(ModuleCostModel::new(env, slot, subnet))),
            Role::Scheduler => BoundHandle::Rank(ModuleRankHandle::new(env, slot)),
        };
        tracing::info!(env = %self.name(), module = %name, %subnet, %role,
            replaced = ?replaced, "module bound");
        Ok(BindReport {
            environment: self.name().to_owned(),
            binding: Binding {
                subnet,
                role,
                module: name.to_owned(),
            },
            version,
            replaced,
            handle,
        })
    }

    /// [`Environment::bind`] in the policy role, answering the handle only.
    pub fn policy(
        &self,
        name: &str,
        subnet: VirtualSubnet,
    ) -> Result<Arc<ModulePolicy>, ManagerError> {
        match self.bind(name, subnet, Role::Policy)?.handle {
            BoundHandle::Policy(p) => Ok(p),
            _ => Err(ManagerError::WrongRole {
                name: name.to_owned(),
                role: Role::Policy,
            }),
        }
    }

    /// [`Environment::bind`] in the cost (F, G) role, answering the handle only.
    pub fn cost_model(
        &self,
        name: &str,
        subnet: VirtualSubnet,
    ) -> Result<Arc<ModuleCostModel>, ManagerError> {
        match self.bind(name, subnet, Role::Cost)?.handle {
            BoundHandle::Cost(c) => Ok(c),
            _ => Err(ManagerError::WrongRole {
                name: name.to_owned(),
                role: Role::Cost,
            }),
        }
    }

    /// Ends the binding of `subnet` in `role` and answers it; the engine's
    /// handle for it must be dropped by the caller (it would keep calling the
    /// module). Refuses a subnet and role nothing is bound to
    /// ([`ManagerError::NotBound`]).
    pub fn unbind(&self, subnet: VirtualSubnet, role: Role) -> Result<Binding, ManagerError> {
        let module = self
            .binding_table()
            .remove(&(subnet, role))
            .ok_or(ManagerError::NotBound { subnet, role })?;
        tracing::info!(env = %self.name(), module = %module, %subnet, %role, "module unbound");
        Ok(Binding {
            subnet,
            role,
            module,
        })
    }

    /// Every binding, by subnet then role.
    pub fn bindings(&self) -> Vec<Binding> {
        self.binding_table()
            .iter()
            .map(|(&(subnet, role), module)| Binding {
                subnet,
                role,
                module: module.clone(),
            })
            .collect()
    }

    /// The bindings to module `name`.
    pub(super) fn bindings_of(&self, name: &str) -> Vec<Binding> {
        self.bindings()
            .into_iter()
            .filter(|b| b.module == name)
            .collect()
    }

    /// The slot of `name` if its active version may serve `subnet` in `role`.
    fn bindable(
        &self,
        name: &str,
        subnet: VirtualSubnet,
        role: Role,
    ) -> Result<(Arc<Slot>, VersionSummary), ManagerError> {
        let unknown = || ManagerError::UnknownModule {
            name: name.to_owned(),
        };
        let slot = self.modules().get(name).cloned().ok_or_else(unknown)?;
        let versions = slot.versions.load_full().ok_or_else(unknown)?;
        if let Scope::Tenant { allowed } = &self.inner.config.scope
            && !allowed.iter().any(|a| a.covers(&subnet))
        {
            return Err(ScopeError::OutsideEnvironment { subnet }.into());
        }
        let active = &versions.active;
        if !active.governs.covers(&subnet) {
            return Err(ScopeError::NotGoverned {
                module: name.to_owned(),
                subnet,
            }
            .into());
        }
        let entry = active.instance.module().entry_points();
        let serves = match role {
            Role::Policy => entry.select,
            Role::Cost => entry.cost && entry.aggregate,
            Role::Scheduler => entry.rank,
        };
        if !serves {
            return Err(ManagerError::WrongRole {
                name: name.to_owned(),
                role,
            });
        }
        Ok((slot, VersionSummary::of(active)))
    }
}
