//! What can go wrong: [`VmError`] when a module is compiled or instantiated,
//! [`Fault`] when one call into it fails, and [`CallOutcome`], a call's answer
//! with the CPU it used.

use router_core::policy::PolicyError;

use crate::limits::LimitError;
use crate::manifest::{Capability, ModuleKind};

/// Why a module could not be compiled or instantiated.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VmError {
    /// The engine could not be built from the configuration.
    #[error("invalid VM configuration: {reason}")]
    Config {
        /// What wasmtime said.
        reason: String,
    },
    /// The epoch ticker thread could not be started.
    #[error("cannot start the epoch ticker thread")]
    Ticker(#[source] std::io::Error),
    /// The module is larger than [`VmConfig::max_module_len`](super::VmConfig::max_module_len).
    #[error("module is {len} bytes, more than the {limit} allowed")]
    ModuleTooLarge {
        /// Module size.
        len: usize,
        /// Configured limit.
        limit: usize,
    },
    /// The module declares more than the environment's load-time caps allow;
    /// refused before compiling.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// The bytes are not a well-formed core wasm module.
    #[error("malformed module: {reason}")]
    Malformed {
        /// What is wrong.
        reason: String,
    },
    /// The module's kind is not the one this load path runs (policies through
    /// [`Vm::compile`](super::Vm::compile), schedulers through
    /// [`Vm::compile_scheduler`](super::Vm::compile_scheduler)).
    #[error("module kind {kind:?} is not accepted here (expected {expected:?})")]
    UnsupportedKind {
        /// The manifest's kind.
        kind: ModuleKind,
        /// The kind this load path accepts.
        expected: ModuleKind,
    },
    /// An import outside `pronto.log` / `pronto.now_ms`, or a non-function import.
    #[error("module imports {module}.{name}, which no capability grants")]
    ForbiddenImport {
        /// Import module name.
        module: String,
        /// Import field name.
        name: String,
    },
    /// A known host function imported with the wrong signature.
    #[error("module imports pronto.{name} as {found}; ABI v1 has {expected}")]
    ImportSignature {
        /// Import name.
        name: &'static str,
        /// ABI v1 signature.
        expected: String,
        /// Signature in the module.
        found: String,
    },
    /// The module imports a host function whose capability its manifest does not
    /// request.
    #[error(
        "module imports a host function of capability {capability:?} its manifest does not request"
    )]
    CapabilityNotRequested {
        /// The capability.
        capability: Capability,
    },
    /// The environment does not grant a capability the module needs.
    #[error("capability {capability:?} is not granted by this environment")]
    CapabilityNotGranted {
        /// The capability.
        capability: Capability,
    },
    /// A required export is missing.
    #[error("module does not export {name}")]
    MissingExport {
        /// Export name.
        name: &'static str,
    },
    /// An export has the wrong kind or signature.
    #[error("export {name} is {found}; ABI v1 wants {expected}")]
    ExportType {
        /// Export name.
        name: &'static str,
        /// What ABI v1 wants.
        expected: String,
        /// What the module has.
        found: String,
    },
    /// No `pronto_select` and no `pronto_cost` + `pronto_aggregate`.
    #[error(
        "policy module exports no entry point (pronto_select, or pronto_cost with pronto_aggregate)"
    )]
    NoEntryPoint,
    /// `pronto_cost` without `pronto_aggregate` or the reverse.
    #[error("policy module exports F or G but not both (missing {missing})")]
    IncompleteCostModel {
        /// The missing export.
        missing: &'static str,
    },
    /// The memory's initial size already exceeds the cap, or it is 64-bit or shared.
    #[error("module memory not acceptable: {reason}")]
    Memory {
        /// What is wrong.
        reason: String,
    },
    /// `pronto_abi_version` returned another version.
    #[error("module speaks ABI version {found}; this host speaks {expected}")]
    AbiVersion {
        /// Version the module reported.
        found: u32,
        /// [`sdk::ABI_VERSION`].
        expected: u32,
    },
    /// `pronto_io_buffer` points outside memory or is misaligned.
    #[error(
        "I/O buffer at {addr:#x} ({size} bytes) is misaligned or outside memory of {memory_size} bytes"
    )]
    IoBuffer {
        /// Address the module reported.
        addr: u32,
        /// [`sdk::IO_BUFFER_SIZE`].
        size: usize,
        /// Memory size at instantiation.
        memory_size: usize,
    },
    /// Cranelift refused the module.
    #[error("compilation failed: {reason}")]
    Compile {
        /// What wasmtime said.
        reason: String,
    },
    /// Instantiation failed (memory cap, table cap, a trap in the start function).
    #[error("instantiation failed: {reason}")]
    Instantiate {
        /// What wasmtime said.
        reason: String,
    },
    /// Calling `pronto_abi_version` or `pronto_io_buffer` faulted.
    #[error("{export} faulted at instantiation: {fault}")]
    Setup {
        /// The export called.
        export: &'static str,
        /// How it failed.
        fault: Fault,
    },
}

/// Which bound stopped a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeoutCause {
    /// The per-call fuel ran out.
    Fuel,
    /// The epoch deadline passed.
    Epoch,
}

/// Why one call into a module failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Fault {
    /// The module trapped (including a host function refusing its arguments).
    #[error("module trapped: {message}")]
    Trap {
        /// The trap, as wasmtime describes it.
        message: String,
    },
    /// The module exceeded its per-call CPU bound.
    #[error("module exceeded its per-call {cause:?} bound")]
    Timeout {
        /// Which bound.
        cause: TimeoutCause,
    },
    /// `pronto_select` returned neither an index below the count nor reject.
    #[error("module returned decision {raw} for {candidates} candidates")]
    BadDecision {
        /// Raw result.
        raw: i32,
        /// Candidates offered.
        candidates: usize,
    },
    /// `pronto_select` chose a candidate that is not UP.
    #[error("module chose candidate {index} of {candidates}, which is not up")]
    DownCandidate {
        /// Index chosen.
        index: usize,
        /// Candidates offered.
        candidates: usize,
    },
    /// `pronto_rank` returned a negative rank (the module's fault signal).
    #[error("module returned rank {raw}")]
    BadRank {
        /// Raw result.
        raw: i64,
    },
    /// F or G returned NaN.
    #[error("module returned {value} from {export}")]
    BadValue {
        /// The export.
        export: &'static str,
        /// The value.
        value: f64,
    },
    /// The call ran out of the fuel its caller's CPU share allowed (less than the
    /// per-call budget): the share is spent, the module is not necessarily at fault.
    #[error("module's CPU share is exhausted")]
    Budget,
    /// The call was not made.
    #[error("module unavailable: {reason}")]
    Unavailable {
        /// Why.
        reason: String,
    },
}

/// Coarse class of a [`Fault`], for counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// [`Fault::Trap`].
    Trap,
    /// [`Fault::Timeout`].
    Timeout,
    /// [`Fault::BadDecision`], [`Fault::DownCandidate`], [`Fault::BadValue`].
    BadResult,
    /// [`Fault::Budget`].
    Budget,
    /// [`Fault::Unavailable`].
    Unavailable,
}

impl Fault {
    /// The class of this fault.
    pub fn kind(&self) -> FaultKind {
        match self {
            Self::Trap { .. } => FaultKind::Trap,
            Self::Timeout { .. } => FaultKind::Timeout,
            Self::BadDecision { .. }
            | Self::DownCandidate { .. }
            | Self::BadValue { .. }
            | Self::BadRank { .. } => FaultKind::BadResult,
            Self::Budget => FaultKind::Budget,
            Self::Unavailable { .. } => FaultKind::Unavailable,
        }
    }

    /// Whether the module misbehaved (counts towards quarantine); `Budget` and
    /// `Unavailable` are the host's refusals, not the module's faults.
    pub fn is_module_fault(&self) -> bool {
        matches!(
            self.kind(),
            FaultKind::Trap | FaultKind::Timeout | FaultKind::BadResult
        )
    }

    /// Whether the module ran and may have left its memory inconsistent, so the
    /// instance must be rebuilt before the next call.
    pub(super) fn needs_restart(&self) -> bool {
        !matches!(self, Self::Unavailable { .. })
    }
}

impl From<Fault> for PolicyError {
    fn from(fault: Fault) -> Self {
        match fault {
            Fault::Trap { message } => Self::Trap(message),
            Fault::Timeout { .. } => Self::Timeout,
            Fault::BadDecision { raw, candidates } => Self::OutOfRange {
                index: usize::try_from(raw).unwrap_or(usize::MAX),
                len: candidates,
            },
            Fault::DownCandidate { index, candidates } => Self::OutOfRange {
                index,
                len: candidates,
            },
            Fault::BadValue { .. } | Fault::BadRank { .. } => Self::OutOfRange {
                index: usize::MAX,
                len: 0,
            },
            Fault::Budget => Self::Unavailable("CPU share exhausted".to_owned()),
            Fault::Unavailable { reason } => Self::Unavailable(reason),
        }
    }
}

/// The result of one call and the CPU it consumed.
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct CallOutcome<T> {
    /// The answer or the fault.
    pub result: Result<T, Fault>,
    /// Fuel consumed when fuel is on, else wall-clock nanoseconds; what the
    /// caller charges to the module's CPU share.
    pub cpu_used: u64,
}

pub(super) fn unavailable(reason: &str) -> Fault {
    Fault::Unavailable {
        reason: reason.to_owned(),
    }
}
