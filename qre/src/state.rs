//! What a router must offer the query engine: [`RouterState`].

use crate::metrics::MetricFamily;
use crate::query::{AddrMatch, FlowQuery, TableQuery};
use crate::response::{
    FlowsResponse, ModuleOpReport, ModulesResponse, PeersResponse, QueuesResponse, RouterSummary,
    TableResponse,
};

/// What kind of failure a [`StateError`] is; decides the HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request is wrong (400).
    BadRequest,
    /// The thing named does not exist (404).
    NotFound,
    /// The request conflicts with the router's state (409), e.g. loading a
    /// module name that is already installed.
    Conflict,
    /// The payload was refused (422): unsigned, untrusted, does not compile.
    Refused,
    /// The router cannot answer now (503): data path stopped, control loop busy.
    Unavailable,
    /// A bug or an unexpected failure (500).
    Internal,
}

impl ErrorKind {
    /// The HTTP status code.
    pub fn status(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::NotFound => 404,
            Self::Conflict => 409,
            Self::Refused => 422,
            Self::Unavailable => 503,
            Self::Internal => 500,
        }
    }

    /// Stable snake_case code for the `error` field.
    pub fn code(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::Refused => "refused",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }
}

/// A failure the state provider reports: what went wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StateError {
    /// Kind (HTTP status).
    pub kind: ErrorKind,
    /// What went wrong.
    pub message: String,
    /// What to do about it.
    pub hint: String,
}

impl StateError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            hint: hint.into(),
        }
    }
}

/// A module operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleOp<'a> {
    /// Install a module whose name is not installed (signed file bytes).
    Load(&'a [u8]),
    /// Install a new version of an installed module, atomically replacing the
    /// active one; the replaced version stays as the rollback target.
    Swap(&'a [u8]),
    /// Make the previous version active again.
    Rollback(&'a str),
    /// Remove a module (its handles fall back to the built-in policy).
    Remove(&'a str),
    /// Bind a module to govern a subnet in a role, replacing the subnet's
    /// module in that role.
    Bind {
        /// Module name.
        module: &'a str,
        /// The subnet.
        subnet: AddrMatch,
        /// `policy` or `cost`.
        role: &'a str,
    },
    /// End a subnet's binding in a role (the built-in serves it again).
    Unbind {
        /// The subnet.
        subnet: AddrMatch,
        /// `policy` or `cost`.
        role: &'a str,
    },
}

impl ModuleOp<'_> {
    /// `load`, `swap`, `rollback`, `remove`, `bind` or `unbind`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Load(_) => "load",
            Self::Swap(_) => "swap",
            Self::Rollback(_) => "rollback",
            Self::Remove(_) => "remove",
            Self::Bind { .. } => "bind",
            Self::Unbind { .. } => "unbind",
        }
    }
}

/// A running router's state as the query engine sees it. Implementations may
/// block (a round trip to the data path thread): call them off any async
/// executor's worker threads.
pub trait RouterState: Send + Sync {
    /// Identity and main figures.
    fn summary(&self) -> Result<RouterSummary, StateError>;
    /// Pinned flows (feed a [`crate::FlowCollector`]).
    fn flows(&self, query: &FlowQuery) -> Result<FlowsResponse, StateError>;
    /// The next-hop table with loads and costs.
    fn table(&self, query: &TableQuery) -> Result<TableResponse, StateError>;
    /// Signalling peers and hosts.
    fn peers(&self) -> Result<PeersResponse, StateError>;
    /// Execution environments and their modules.
    fn modules(&self) -> Result<ModulesResponse, StateError>;
    /// Queues and scheduler shares.
    fn queues(&self) -> Result<QueuesResponse, StateError>;
    /// Every counter, gauge and histogram.
    fn metrics(&self) -> Result<Vec<MetricFamily>, StateError>;
    /// Load, swap, roll back, remove, bind or unbind a module in environment
    /// `env` (`None`: the operator's).
    fn module_op(&self, env: Option<&str>, op: ModuleOp<'_>) -> Result<ModuleOpReport, StateError>;
}
