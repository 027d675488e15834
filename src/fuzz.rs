//! Entry points for the fuzz targets (`fuzz/fuzz_targets/`): the parsers of
//! untrusted bytes that live in this crate rather than in a library crate. Each
//! is the code the daemon runs, not a copy; nothing else should use them.

pub use crate::host::http::{HeadProgress, MAX_REQUEST_HEAD, RequestHead};

/// Whether the management server lets the client holding `leaf` (DER) use
/// `method`, given `[management] operators` / `viewers`; `Err` is its 403
/// answer. The certificate's roles and names come from its SANs.
pub fn management_admission(
    operators: &[String],
    viewers: &[String],
    leaf: Option<&[u8]>,
    method: &hyper::Method,
) -> Result<(), qre::Response> {
    crate::mgmt::admission(operators, viewers, leaf, method)
}

/// The management API's answer to a module operation (`POST
/// /v1/modules/load` with `op`'s body, ...) on `env`: what the router's
/// handler does, without its lock, counters and log.
pub fn module_operation(
    env: &exec_env::manager::Environment,
    op: qre::ModuleOp<'_>,
) -> Result<qre::response::ModuleOpReport, qre::StateError> {
    crate::mgmt::answer_module_op(env, op)
}
