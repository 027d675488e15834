//! Module operations over the management API: each calls the operation of the
//! environment it names (`?env=`, default the operator's), which decides (load
//! refuses a name already installed, swap one that is not, bind a module that
//! cannot serve the subnet and role) and answers a typed report or a typed
//! refusal with its hint. A bind or unbind is then applied to the node (or, in
//! the scheduler role, to the egress stage); every change is kept in the
//! environment's state directory for a restart.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use exec_env::manager::{BoundHandle, Environment, ManagerError, Role, VersionSummary};
use exec_env::trust::hex;
use qre::response::ModuleOpReport;
use qre::{AddrMatch, ErrorKind, ModuleOp, StateError};
use router_core::VirtualSubnet;
use tracing::{info, warn};

use super::MgmtState;
use crate::router::module_state::ModuleStore;
use crate::router::shell::RouterShell;

impl MgmtState {
    /// One module operation at a time, counted and logged.
    pub(super) fn run_module_op(
        &self,
        env: Option<&str>,
        op: ModuleOp<'_>,
    ) -> Result<ModuleOpReport, StateError> {
        let _one = self.ops.lock().unwrap_or_else(PoisonError::into_inner);
        let r = self.environment(env).and_then(|(env, store)| match op {
            ModuleOp::Bind { .. } | ModuleOp::Unbind { .. } => self.change_binding(env, store, op),
            _ => answer_module_op(env, op).and_then(|rep| self.keep(store, op, rep)),
        });
        match &r {
            Ok(rep) => {
                self.stats.module_ops.fetch_add(1, Ordering::Relaxed);
                info!(op = %rep.op, env = %rep.environment, module = %rep.name, active = ?rep.active, replaced = ?rep.replaced, binding = ?rep.binding, "module operation");
            }
            Err(e) => {
                self.stats
                    .module_ops_refused
                    .fetch_add(1, Ordering::Relaxed);
                warn!(op = op.name(), env = env.unwrap_or("operator"), error = %e, "module operation refused");
            }
        }
        r
    }

    /// The environment `name` (default: the operator's) and its store.
    fn environment(&self, name: Option<&str>) -> Result<(&Environment, &ModuleStore), StateError> {
        if self.envs.is_empty() {
            return Err(StateError::new(
                ErrorKind::Conflict,
                "this router runs no execution environment",
                "add a [modules] section (trust_anchors, and files or runtime loads) or an [[environment]] to its configuration and restart it",
            ));
        }
        let name = name.unwrap_or("operator");
        self.envs
            .iter()
            .find(|(e, _)| e.name() == name)
            .map(|(e, s)| (&**e, &**s))
            .ok_or_else(|| {
                let names: Vec<&str> = self.envs.iter().map(|(e, _)| e.name()).collect();
                StateError::new(
                    ErrorKind::NotFound,
                    format!("no environment {name:?} in this router"),
                    format!("its environments: {}; pass --env NAME", names.join(", ")),
                )
            })
    }

    /// Keep a load, swap, rollback or remove in the state directory. The
    /// operation has taken effect; if it cannot be kept the answer says so.
    fn keep(
        &self,
        store: &ModuleStore,
        op: ModuleOp<'_>,
        rep: ModuleOpReport,
    ) -> Result<ModuleOpReport, StateError> {
        let kept = match op {
            ModuleOp::Load(bytes) => store.loaded(&rep.name, bytes).map(|()| true),
            ModuleOp::Swap(bytes) => store.swapped(&rep.name, bytes).map(|()| true),
            ModuleOp::Rollback(name) => store.rolled_back(name),
            ModuleOp::Remove(name) => store.removed(name).map(|()| true),
            ModuleOp::Bind { .. } | ModuleOp::Unbind { .. } => Ok(true),
        };
        match kept {
            Ok(true) => Ok(rep),
            Ok(false) => {
                warn!(module = %rep.name, "rollback between two versions of [modules] files: a restart installs the files' order again");
                Ok(rep)
            }
            Err(e) => {
                self.stats
                    .state_write_failures
                    .fetch_add(1, Ordering::Relaxed);
                Err(StateError::new(
                    ErrorKind::Internal,
                    format!(
                        "{} of {} done in the running router but not kept for a restart: {e:#}",
                        rep.op, rep.name
                    ),
                    "make [modules] state_dir writable by the router; until then a restart loses this change",
                ))
            }
        }
    }

    /// A bind or unbind: the environment checks the module may serve the
    /// subnet, the node applies it between two packet batches, the state
    /// directory keeps it; a binding that cannot be kept is undone.
    fn change_binding(
        &self,
        env: &Environment,
        store: &ModuleStore,
        op: ModuleOp<'_>,
    ) -> Result<ModuleOpReport, StateError> {
        let target = match op {
            ModuleOp::Bind { subnet, role, .. } | ModuleOp::Unbind { subnet, role } => {
                binding_of(subnet, role).ok()
            }
            _ => None,
        };
        let before = target.and_then(|(s, r)| bound_module(env, s, r));
        // The environment decides first (scope, role: its own refusals and
        // counters), then whether another environment holds the binding.
        let (report, change) = module_op(env, op)?;
        if let (ModuleOp::Bind { .. }, Some((subnet, role))) = (op, target)
            && let Err(e) = self.held_elsewhere(env, subnet, role)
        {
            match &before {
                Some(m) => drop(env.bind(m, subnet, role)),
                None => drop(env.unbind(subnet, role)),
            }
            return Err(e);
        }
        if let Some((subnet, role, handle)) = change {
            self.apply(subnet, role, handle)?;
            if let Err(e) = self.save_bindings(env, store) {
                self.restore_binding(env, subnet, role, before.as_deref());
                return Err(e);
            }
        }
        Ok(report)
    }

    /// One module per subnet and role: refuse a bind another environment
    /// already holds (a tenant cannot displace another's module, nor the
    /// operator a tenant's by accident).
    fn held_elsewhere(
        &self,
        env: &Environment,
        subnet: VirtualSubnet,
        role: Role,
    ) -> Result<(), StateError> {
        for (other, _) in self.envs.iter().filter(|(e, _)| e.name() != env.name()) {
            if let Some(m) = bound_module(other, subnet, role) {
                return Err(StateError::new(
                    ErrorKind::Conflict,
                    format!(
                        "{subnet} is bound in the {role} role by environment {} (module {m})",
                        other.name()
                    ),
                    "unbind it there first (pronto module unbind --env NAME); one module per subnet and role",
                ));
            }
        }
        Ok(())
    }

    /// The node's binding of `subnet` in `role`, set between two batches; a
    /// scheduler binding goes to the egress stage instead.
    fn apply(
        &self,
        subnet: VirtualSubnet,
        role: Role,
        handle: Option<BoundHandle>,
    ) -> Result<(), StateError> {
        if role == Role::Scheduler {
            return self.apply_rank(handle);
        }
        let hooks = Arc::clone(&self.hooks);
        let applied = self
            .dataplane
            .call_node::<RouterShell, _>(move |s, _| {
                crate::router::apply_binding(&mut s.node, &hooks, subnet, role, handle.as_ref());
            })
            .map_err(|_| Self::stopped())?;
        applied.ok_or_else(|| {
            StateError::new(
                ErrorKind::Internal,
                "the data path runs no router node",
                "this is a bug; see the router's log",
            )
        })
    }

    /// The egress stage's rank function: the bound module's, or (`None`) the
    /// configured built-in. Queued packets keep their ranks.
    fn apply_rank(&self, handle: Option<BoundHandle>) -> Result<(), StateError> {
        let Some(egress) = &self.egress else {
            return Err(StateError::new(
                ErrorKind::Conflict,
                "this router runs no egress stage",
                "add a [scheduler] section (link, rate_mbit, classes) to its configuration and restart it",
            ));
        };
        let result = match handle {
            Some(BoundHandle::Rank(h)) => egress.use_module(h),
            Some(_) => {
                return Err(StateError::new(
                    ErrorKind::Internal,
                    "a scheduler binding without a rank handle",
                    "this is a bug; see the router's log",
                ));
            }
            None => egress.use_builtin(),
        };
        result.map_err(|e| {
            StateError::new(
                ErrorKind::Unavailable,
                format!("the egress stage did not take the rank function: {e:#}"),
                "the stage has stopped; see the router's log",
            )
        })
    }

    fn save_bindings(&self, env: &Environment, store: &ModuleStore) -> Result<(), StateError> {
        store.save_bindings(&env.bindings()).map_err(|e| {
            self.stats
                .state_write_failures
                .fetch_add(1, Ordering::Relaxed);
            StateError::new(
                ErrorKind::Internal,
                format!("binding not changed: it could not be kept for a restart: {e:#}"),
                "make [modules] state_dir writable by the router, then repeat the operation",
            )
        })
    }

    /// Put back the binding of `subnet` in `role` to `module` (or none).
    fn restore_binding(
        &self,
        env: &Environment,
        subnet: VirtualSubnet,
        role: Role,
        module: Option<&str>,
    ) {
        let handle = match module {
            Some(m) => env.bind(m, subnet, role).ok().map(|r| r.handle),
            None => {
                let _ = env.unbind(subnet, role);
                None
            }
        };
        if let Err(e) = self.apply(subnet, role, handle) {
            warn!(%subnet, %role, error = %e, "could not put the binding back");
        }
    }
}

/// The module bound to `subnet` in `role`, if any.
fn bound_module(env: &Environment, subnet: VirtualSubnet, role: Role) -> Option<String> {
    env.bindings()
        .into_iter()
        .find(|b| b.subnet == subnet && b.role == role)
        .map(|b| b.module)
}

/// The API's subnet and role as the environment takes them.
fn binding_of(subnet: AddrMatch, role: &str) -> Result<(VirtualSubnet, Role), StateError> {
    let role = role.parse::<Role>().map_err(|e| {
        StateError::new(
            ErrorKind::BadRequest,
            e.to_string(),
            "this router binds modules in the policy role (pronto_select), the cost role (pronto_cost, pronto_aggregate) and the scheduler role (pronto_rank)",
        )
    })?;
    let subnet = VirtualSubnet::new(subnet.addr, subnet.prefix_len).map_err(|e| {
        StateError::new(
            ErrorKind::BadRequest,
            format!("subnet: {e}"),
            "write the prefix as ADDR/LEN with the host bits clear, e.g. 192.200.1.0/24",
        )
    })?;
    Ok((subnet, role))
}

/// The API's answer to `op`: the environment's report or its refusal as a
/// typed [`StateError`] (without the server's lock, counters and log, and for
/// a binding without the node and the state directory, which
/// [`MgmtState::run_module_op`] adds).
pub(crate) fn answer_module_op(
    env: &Environment,
    op: ModuleOp<'_>,
) -> Result<ModuleOpReport, StateError> {
    module_op(env, op).map(|(rep, _)| rep)
}

/// A binding the node must follow: `subnet` in `role` to a handle, or to
/// none (the built-in).
type NodeBinding = (VirtualSubnet, Role, Option<BoundHandle>);

/// The environment's operation for `op`, its report in the API's schema and,
/// for a bind or unbind, what the node must apply.
fn module_op(
    env: &Environment,
    op: ModuleOp<'_>,
) -> Result<(ModuleOpReport, Option<NodeBinding>), StateError> {
    let answer =
        |name: String, active: Option<&VersionSummary>, replaced: Option<&VersionSummary>| {
            ModuleOpReport {
                op: op.name().to_owned(),
                environment: env.name().to_owned(),
                name,
                active: active.map(ToString::to_string),
                replaced: replaced.map(ToString::to_string),
                digest: active.map(|v| hex(&v.digest)),
                signer: active.map(|v| v.signer.clone()),
                binding: None,
            }
        };
    let refused = |e: ManagerError| manager_error(&e);
    let report = match op {
        ModuleOp::Load(bytes) => {
            let r = env.load(bytes).map_err(refused)?;
            answer(r.name, Some(&r.loaded), None)
        }
        ModuleOp::Swap(bytes) => {
            let r = env.swap(bytes).map_err(refused)?;
            answer(r.name, Some(&r.active), Some(&r.replaced))
        }
        ModuleOp::Rollback(name) => {
            let r = env.rollback(name).map_err(refused)?;
            answer(r.name, Some(&r.active), Some(&r.replaced))
        }
        ModuleOp::Remove(name) => {
            let r = env.remove(name).map_err(refused)?;
            answer(r.name, None, Some(&r.removed))
        }
        ModuleOp::Bind {
            module,
            subnet,
            role,
        } => {
            let (subnet, role) = binding_of(subnet, role)?;
            let r = env.bind(module, subnet, role).map_err(refused)?;
            let rep = ModuleOpReport {
                binding: Some(format!("{role} {subnet}")),
                replaced: r.replaced,
                ..answer(module.to_owned(), Some(&r.version), None)
            };
            return Ok((rep, Some((subnet, role, Some(r.handle)))));
        }
        ModuleOp::Unbind { subnet, role } => {
            let (subnet, role) = binding_of(subnet, role)?;
            let gone = env.unbind(subnet, role).map_err(refused)?;
            let rep = ModuleOpReport {
                binding: Some(format!("{role} {subnet}")),
                ..answer(gone.module, None, None)
            };
            return Ok((rep, Some((subnet, role, None))));
        }
    };
    Ok((report, None))
}

/// The API status of a refusal; its message and hint come from the error.
fn manager_error(e: &ManagerError) -> StateError {
    let kind = match e {
        ManagerError::Verify(_)
        | ManagerError::Vm(_)
        | ManagerError::Scope(_)
        | ManagerError::OtherSigner { .. }
        | ManagerError::SchedulerInTenant { .. } => ErrorKind::Refused,
        ManagerError::InvalidName { .. } | ManagerError::LinkOnly { .. } => ErrorKind::BadRequest,
        ManagerError::UnknownModule { .. }
        | ManagerError::NotLoaded { .. }
        | ManagerError::NotBound { .. } => ErrorKind::NotFound,
        ManagerError::DuplicateVersion { .. }
        | ManagerError::NoPreviousVersion { .. }
        | ManagerError::TooManyModules { .. }
        | ManagerError::AlreadyLoaded { .. }
        | ManagerError::WrongRole { .. } => ErrorKind::Conflict,
        _ => ErrorKind::Internal,
    };
    StateError::new(kind, e.to_string(), e.hint())
}

#[cfg(test)]
mod tests {
    use super::*;
    use exec_env::trust::VerifyError;

    #[test]
    fn manager_errors_map_to_statuses_with_hints_that_say_what_to_do() {
        let e = manager_error(&ManagerError::Verify(VerifyError::Unsigned));
        assert_eq!(e.kind, ErrorKind::Refused);
        assert!(e.hint.contains("pronto module sign"));
        let e = manager_error(&ManagerError::NoPreviousVersion { name: "x".into() });
        assert_eq!(e.kind.status(), 409);
        let e = manager_error(&ManagerError::UnknownModule { name: "x".into() });
        assert_eq!(e.kind.status(), 404);
        assert!(e.hint.contains("pronto query modules"));
        let e = manager_error(&ManagerError::AlreadyLoaded {
            name: "x".into(),
            version: "1.0.0".parse().unwrap(),
        });
        assert_eq!(e.kind.status(), 409);
        assert!(e.message.contains("already installed") && e.hint.contains("pronto module swap"));
        let e = manager_error(&ManagerError::NotLoaded { name: "x".into() });
        assert_eq!(e.kind.status(), 404);
        assert!(e.hint.contains("pronto module load"));
    }
}
