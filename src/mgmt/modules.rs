//! Module operations over the management API: each calls the operator
//! [`Environment`]'s operation directly, which decides (load refuses a name
//! already installed, swap one that is not) and answers a typed report or a
//! typed refusal with its hint.

use std::sync::PoisonError;
use std::sync::atomic::Ordering;

use exec_env::manager::{Environment, ManagerError, VersionSummary};
use exec_env::trust::hex;
use qre::response::ModuleOpReport;
use qre::{ErrorKind, ModuleOp, StateError};
use tracing::{info, warn};

use super::MgmtState;

impl MgmtState {
    /// One module operation at a time, counted and logged.
    pub(super) fn run_module_op(&self, op: ModuleOp<'_>) -> Result<ModuleOpReport, StateError> {
        let Some(env) = &self.env else {
            return Err(Self::no_environment());
        };
        let _one = self.ops.lock().unwrap_or_else(PoisonError::into_inner);
        let r = answer_module_op(env, op);
        match &r {
            Ok(rep) => {
                self.stats.module_ops.fetch_add(1, Ordering::Relaxed);
                info!(op = %rep.op, module = %rep.name, active = ?rep.active, replaced = ?rep.replaced, "module operation");
            }
            Err(e) => {
                self.stats
                    .module_ops_refused
                    .fetch_add(1, Ordering::Relaxed);
                warn!(op = op.name(), error = %e, "module operation refused");
            }
        }
        r
    }

    fn no_environment() -> StateError {
        StateError::new(
            ErrorKind::Conflict,
            "this router runs no execution environment",
            "add a [modules] section (trust_anchors, files, subnet, policy) to its configuration and restart it",
        )
    }
}

/// The API's answer to `op`: the environment's report or its refusal as a
/// typed [`StateError`] (without the server's lock, counters and log, which
/// [`MgmtState::run_module_op`] adds).
pub(crate) fn answer_module_op(
    env: &Environment,
    op: ModuleOp<'_>,
) -> Result<ModuleOpReport, StateError> {
    module_op(env, op).map_err(|e| manager_error(&e))
}

/// The environment's operation for `op`, its report in the API's schema.
fn module_op(env: &Environment, op: ModuleOp<'_>) -> Result<ModuleOpReport, ManagerError> {
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
            }
        };
    Ok(match op {
        ModuleOp::Load(bytes) => {
            let r = env.load(bytes)?;
            answer(r.name, Some(&r.loaded), None)
        }
        ModuleOp::Swap(bytes) => {
            let r = env.swap(bytes)?;
            answer(r.name, Some(&r.active), Some(&r.replaced))
        }
        ModuleOp::Rollback(name) => {
            let r = env.rollback(name)?;
            answer(r.name, Some(&r.active), Some(&r.replaced))
        }
        ModuleOp::Remove(name) => {
            let r = env.remove(name)?;
            answer(r.name, None, Some(&r.removed))
        }
    })
}

/// The API status of a refusal; its message and hint come from the error.
fn manager_error(e: &ManagerError) -> StateError {
    let kind = match e {
        ManagerError::Verify(_) | ManagerError::Vm(_) | ManagerError::Scope(_) => {
            ErrorKind::Refused
        }
        ManagerError::InvalidName { .. } => ErrorKind::BadRequest,
        ManagerError::UnknownModule { .. } | ManagerError::NotLoaded { .. } => ErrorKind::NotFound,
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
