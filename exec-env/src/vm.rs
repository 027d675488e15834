//! The wasmtime VM of one environment: compile verified modules, check them
//! against ABI v1, and run their entry points with bounded memory and CPU.
//!
//! * One [`Vm`] per environment owns one `wasmtime::Engine` configured with fuel
//!   (deterministic per-call accounting, optional) *and* epoch interruption (a
//!   wall-clock bound that also covers time spent outside wasm instructions),
//!   plus a background ticker thread that advances the epoch every
//!   [`VmConfig::epoch_tick`]. The thread stops when the last user of the engine
//!   (the environment and every instance compiled by it) is dropped.
//! * [`Vm::compile`] takes a [`VerifiedModule`] only, checks its imports and
//!   exports against `sdk::{export, import}` *before* compiling
//!   ([`check_interface`]), compiles with `Module::from_binary` (never
//!   `Module::deserialize`, never WAT text) and links exactly the host functions
//!   of the capabilities the module requested and the environment granted.
//! * A [`PolicyInstance`] is one instance in its own `Store` with a memory cap,
//!   one table, one instance; each call gets a fresh fuel budget and epoch
//!   deadline. It implements [`Policy`] and [`CostModel`]. A select writes the
//!   56-byte request into the guest's I/O buffer and rewrites the candidates
//!   only when they differ from the ones the last call left there.
//!
//! Faults map to [`PolicyError`] as follows: a trap (including a host function
//! refusing a bad pointer and a stack overflow) is `Trap`; fuel or epoch
//! exhaustion is `Timeout`; a result that is not a valid answer (index out of
//! range, negative other than reject, a candidate that is not UP, NaN from F or
//! G, a negative rank) is `OutOfRange`, with `index == usize::MAX` when the
//! result was not an index at all (`scheduler::ModuleRank` maps faults to
//! `RankError` instead); fuel cut short by the caller's CPU share, too many candidates or
//! an instance that cannot be rebuilt are `Unavailable`. After any fault but the
//! last kind the instance is rebuilt from its `InstancePre`, since a trap may
//! leave guest memory half-written.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use router_core::policy::{
    Candidate, CostModel, Decision, FlowRequest, Level, Policy, PolicyError,
};
use sdk::{IO_BUFFER_SIZE, MAX_CANDIDATES, export, import, layout};
use wasmparser::{CompositeInnerType, Encoding, ExternalKind, Parser, Payload, TypeRef};
use wasmtime::{
    Config, Engine, Instance, InstancePre, Linker, Memory, Module, Store, StoreLimitsBuilder, Trap,
    TypedFunc,
};

use crate::host::{self, HostContext, HostState, HostStats, LogLimit};
use crate::limits::{self, Bounds, CheckError, LimitError, ModuleLimits};
use crate::manifest::{Capability, Manifest, ModuleKind};
use crate::verified::VerifiedModule;

/// Bounds and knobs of a [`Vm`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// Largest linear memory of one instance, bytes (initial size included).
    pub memory_limit: usize,
    /// Most elements of the one table an instance may have.
    pub max_table_elements: usize,
    /// Fuel given to each call; `None` turns fuel accounting off, leaving the
    /// epoch deadline as the only CPU bound.
    pub fuel_per_call: Option<u64>,
    /// Period of the epoch ticker.
    pub epoch_tick: Duration,
    /// Ticks a call may run before it is interrupted (so the wall-clock bound is
    /// between `ticks - 1` and `ticks` epoch periods).
    pub epoch_deadline_ticks: u64,
    /// Native stack a call may use (deep recursion traps beyond it).
    pub max_wasm_stack: usize,
    /// Largest module accepted, bytes.
    pub max_module_len: usize,
    /// `pronto.log` rate limit per module.
    pub log_limit: LogLimit,
    /// What a module may declare, checked before compiling ([`crate::limits`]).
    pub limits: ModuleLimits,
}

impl Default for VmConfig {
    /// 16 MiB memory, 10 000 table elements, 20 M fuel and 50 ms per call (1 ms
    /// ticks), 512 KiB stack, 8 MiB modules, [`ModuleLimits::default`]. The fuel is sized for the heaviest
    /// legitimate call we ship: `consistent_hash` rebuilding its 65 537-slot
    /// Maglev table takes about 16 M fuel; a simple policy takes under 1 000 for
    /// 8 candidates.
    fn default() -> Self {
        Self {
            memory_limit: 16 << 20,
            max_table_elements: 10_000,
            fuel_per_call: Some(20_000_000),
            epoch_tick: Duration::from_millis(1),
            epoch_deadline_ticks: 50,
            max_wasm_stack: 512 << 10,
            max_module_len: 8 << 20,
            log_limit: LogLimit::default(),
            limits: ModuleLimits::default(),
        }
    }
}

impl VmConfig {
    /// Same configuration with per-call fuel set (`None`: epoch deadline only).
    #[must_use]
    pub fn with_fuel_per_call(mut self, fuel: Option<u64>) -> Self {
        self.fuel_per_call = fuel;
        self
    }

    /// Same configuration with the per-instance memory cap set.
    #[must_use]
    pub fn with_memory_limit(mut self, bytes: usize) -> Self {
        self.memory_limit = bytes;
        self
    }

    /// Same configuration with the epoch tick and per-call deadline set.
    #[must_use]
    pub fn with_epoch(mut self, tick: Duration, deadline_ticks: u64) -> Self {
        self.epoch_tick = tick;
        self.epoch_deadline_ticks = deadline_ticks;
        self
    }

    /// Same configuration with the load-time module caps set.
    #[must_use]
    pub fn with_limits(mut self, limits: ModuleLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The bounds [`limits::check`] applies under this configuration.
    pub fn bounds(&self) -> Bounds {
        Bounds {
            limits: self.limits,
            module_len: self.max_module_len as u64,
            memory_bytes: self.memory_limit as u64,
            table_elements: self.max_table_elements as u64,
        }
    }

    /// Same configuration with the log rate limit set.
    #[must_use]
    pub fn with_log_limit(mut self, limit: LogLimit) -> Self {
        self.log_limit = limit;
        self
    }
}

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
    /// The module is larger than [`VmConfig::max_module_len`].
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
    /// [`Vm::compile`], schedulers through [`Vm::compile_scheduler`]).
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
    fn needs_restart(&self) -> bool {
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

/// Which entry points a module exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EntryPoints {
    /// `pronto_select`.
    pub select: bool,
    /// `pronto_cost` (F).
    pub cost: bool,
    /// `pronto_aggregate` (G).
    pub aggregate: bool,
    /// `pronto_rank` (scheduler modules only; not looked for in a policy).
    pub rank: bool,
}

/// What [`check_interface`] found: a module's checked imports and exports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Capabilities whose host functions the module imports (each requested and
    /// granted).
    pub capabilities: Vec<Capability>,
    /// Entry points exported.
    pub entry_points: EntryPoints,
    /// Initial memory size, bytes.
    pub initial_memory: u64,
}

/// Process-wide origin of [`monotonic_ns`], so environments sharing a CPU budget
/// measure time alike.
static ORIGIN: OnceLock<Instant> = OnceLock::new();

/// Monotonic nanoseconds since the first use in this process.
pub fn monotonic_ns() -> u64 {
    let origin = *ORIGIN.get_or_init(Instant::now);
    u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Wall-clock seconds since the Unix epoch (0 if the clock is before 1970).
pub fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Clocks the epoch ticker refreshes at every tick, so a call reads an atomic
/// instead of the system clock twice (about 60 ns of a 250 ns call). Their
/// resolution is one tick, plenty for `now_unix_secs`, CPU periods and quarantine
/// backoffs.
#[derive(Debug)]
struct CoarseClock {
    unix_secs: AtomicU64,
    monotonic_ns: AtomicU64,
    /// Added to the monotonic clock by [`Vm::advance_clock`] (0 unless a test
    /// moves time forward).
    advanced_ns: AtomicU64,
}

impl CoarseClock {
    fn new() -> Self {
        Self {
            unix_secs: AtomicU64::new(unix_secs()),
            monotonic_ns: AtomicU64::new(monotonic_ns()),
            advanced_ns: AtomicU64::new(0),
        }
    }

    fn refresh(&self) {
        self.unix_secs.store(unix_secs(), Ordering::Relaxed);
        // fetch_max: a tick racing `advance` never moves the clock back.
        let advanced = self.advanced_ns.load(Ordering::Relaxed);
        self.monotonic_ns
            .fetch_max(monotonic_ns().saturating_add(advanced), Ordering::Relaxed);
    }

    fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let advanced = self.advanced_ns.fetch_add(by, Ordering::Relaxed);
        self.monotonic_ns.fetch_max(
            monotonic_ns().saturating_add(advanced.saturating_add(by)),
            Ordering::Relaxed,
        );
    }
}

/// Stops the epoch ticker thread when dropped.
#[derive(Debug)]
struct Ticker {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(engine: Engine, clock: Arc<CoarseClock>, tick: Duration) -> Result<Self, VmError> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("pronto-epoch".to_owned())
            .spawn(move || {
                // recv_timeout doubles as the sleep: dropping the sender wakes the
                // thread at once instead of after a tick.
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(tick) {
                    engine.increment_epoch();
                    clock.refresh();
                }
            })
            .map_err(VmError::Ticker)?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("epoch ticker thread panicked");
        }
    }
}

#[derive(Debug)]
struct VmShared {
    engine: Engine,
    config: VmConfig,
    clock_origin: Instant,
    clock: Arc<CoarseClock>,
    _ticker: Ticker,
}

/// One environment's wasmtime engine and epoch ticker.
#[derive(Debug, Clone)]
pub struct Vm {
    shared: Arc<VmShared>,
}

impl Vm {
    /// Builds the engine and starts the ticker.
    pub fn new(config: VmConfig) -> Result<Self, VmError> {
        if config.epoch_tick.is_zero() {
            return Err(VmError::Config {
                reason: "epoch tick must be positive".to_owned(),
            });
        }
        // Compile-side bounds. Wasmtime has no cap on compiled code or compile
        // memory, so those are bounded by the module caps checked before
        // compiling (`limits::check`); what the engine offers:
        // * one compile thread: the `parallel-compilation` feature is not
        //   enabled, so a module compiles on the control thread alone and cannot
        //   take every core (nor hold one compile arena per core at once);
        // * no address map: the native-to-wasm offset tables are as large as the
        //   code and only serve backtraces, which our fault messages do not need;
        // * `max_wasm_stack` bounds the native stack of a call.
        let mut wasm = Config::new();
        wasm.consume_fuel(config.fuel_per_call.is_some())
            .epoch_interruption(true)
            .max_wasm_stack(config.max_wasm_stack)
            .generate_address_map(false);
        let engine = Engine::new(&wasm).map_err(|e| VmError::Config {
            reason: format!("{e:#}"),
        })?;
        let clock = Arc::new(CoarseClock::new());
        let ticker = Ticker::start(engine.clone(), Arc::clone(&clock), config.epoch_tick)?;
        Ok(Self {
            shared: Arc::new(VmShared {
                engine,
                config,
                clock_origin: Instant::now(),
                clock,
                _ticker: ticker,
            }),
        })
    }

    /// Unix seconds as of the last epoch tick.
    pub fn unix_secs(&self) -> u64 {
        self.shared.clock.unix_secs.load(Ordering::Relaxed)
    }

    /// [`monotonic_ns`] as of the last epoch tick (plus any
    /// [`Vm::advance_clock`]).
    pub fn monotonic_ns(&self) -> u64 {
        self.shared.clock.monotonic_ns.load(Ordering::Relaxed)
    }

    /// Moves this VM's monotonic clock forward by `by`, at once and for good:
    /// what the environment times with it (quarantine backoffs and fault
    /// windows, CPU periods) sees `by` more time pass. The seam for tests that
    /// would otherwise sleep through a backoff. Environments sharing a CPU
    /// budget should be advanced alike.
    pub fn advance_clock(&self, by: Duration) {
        self.shared.clock.advance(by);
    }

    /// The configuration.
    pub fn config(&self) -> &VmConfig {
        &self.shared.config
    }

    /// The engine (for inspection; modules are compiled through [`Vm::compile`]).
    pub fn engine(&self) -> &Engine {
        &self.shared.engine
    }

    /// Checks, compiles and pre-instantiates a verified policy module; `granted`
    /// are the capabilities the environment grants. Off the packet path.
    pub fn compile(
        &self,
        module: &VerifiedModule,
        granted: &[Capability],
    ) -> Result<CompiledModule, VmError> {
        self.compile_kind(module, granted, ModuleKind::Policy)
    }

    /// [`Vm::compile`] for a scheduler module (kind `scheduler`, exports
    /// `pronto_rank`); its instances answer [`PolicyInstance::call_rank`] only.
    /// A separate entry so the policy paths (the manager) never take a scheduler.
    pub fn compile_scheduler(
        &self,
        module: &VerifiedModule,
        granted: &[Capability],
    ) -> Result<CompiledModule, VmError> {
        self.compile_kind(module, granted, ModuleKind::Scheduler)
    }

    fn compile_kind(
        &self,
        module: &VerifiedModule,
        granted: &[Capability],
        expected: ModuleKind,
    ) -> Result<CompiledModule, VmError> {
        let config = &self.shared.config;
        let manifest = &module.manifest;
        let interface = precheck(config, module, granted, expected)?;
        // from_binary, not new: never parse WAT text even if the `wat` feature is
        // unified in from a dev-dependency.
        let compiled = Module::from_binary(&self.shared.engine, &module.wasm).map_err(|e| {
            VmError::Compile {
                reason: format!("{e:#}"),
            }
        })?;
        let mut linker: Linker<HostState> = Linker::new(&self.shared.engine);
        host::link(&mut linker, &interface.capabilities).map_err(|e| VmError::Compile {
            reason: format!("{e:#}"),
        })?;
        let pre = linker
            .instantiate_pre(&compiled)
            .map_err(|e| VmError::Compile {
                reason: format!("{e:#}"),
            })?;
        let host = Arc::new(HostContext::new(
            &manifest.name,
            config.log_limit,
            self.shared.clock_origin,
        ));
        Ok(CompiledModule {
            inner: Arc::new(CompiledInner {
                vm: Arc::clone(&self.shared),
                name: manifest.name.clone(),
                pre,
                entry_points: interface.entry_points,
                host,
            }),
        })
    }

    /// [`Vm::compile`] then [`CompiledModule::instantiate`].
    pub fn load(
        &self,
        module: &VerifiedModule,
        granted: &[Capability],
    ) -> Result<PolicyInstance, VmError> {
        self.compile(module, granted)?.instantiate()
    }
}

/// Every check [`Vm::compile`] makes before Cranelift sees a byte of `module`:
/// its kind is `expected`, its size and every load-time cap ([`limits::check`],
/// which reads little more than section headers), its imports and exports
/// against ABI v1 with `granted` ([`check_interface`]), and its initial memory
/// against `config`. wasmparser only, so cheap enough for a fuzz loop (the
/// `module_verify` target runs untrusted bytes through [`crate::trust::verify`]
/// and this).
pub fn precheck(
    config: &VmConfig,
    module: &VerifiedModule,
    granted: &[Capability],
    expected: ModuleKind,
) -> Result<Interface, VmError> {
    let manifest = &module.manifest;
    if manifest.kind != expected {
        return Err(VmError::UnsupportedKind {
            kind: manifest.kind,
            expected,
        });
    }
    if module.wasm.len() > config.max_module_len {
        return Err(VmError::ModuleTooLarge {
            len: module.wasm.len(),
            limit: config.max_module_len,
        });
    }
    // Every cap on what drives compile memory, before anything else reads more
    // than section headers and long before Cranelift sees a byte.
    limits::check(&module.wasm, &config.bounds()).map_err(|e| match e {
        CheckError::Limit(limit) => VmError::Limit(limit),
        CheckError::Malformed { reason } => VmError::Malformed { reason },
    })?;
    let interface = check_interface(&module.wasm, manifest, granted)?;
    if interface.initial_memory > config.memory_limit as u64 {
        return Err(VmError::Memory {
            reason: format!(
                "initial memory of {} bytes exceeds the {} byte cap",
                interface.initial_memory, config.memory_limit
            ),
        });
    }
    Ok(interface)
}

/// A wasm function signature as wasmparser sees it, for comparisons and messages.
fn signature_text(params: &[wasmparser::ValType], results: &[wasmparser::ValType]) -> String {
    let list = |types: &[wasmparser::ValType]| {
        types
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!("({}) -> ({})", list(params), list(results))
}

fn sdk_types(types: &[sdk::ValType]) -> Vec<wasmparser::ValType> {
    types
        .iter()
        .map(|t| match t {
            sdk::ValType::I32 => wasmparser::ValType::I32,
            sdk::ValType::I64 => wasmparser::ValType::I64,
            sdk::ValType::F64 => wasmparser::ValType::F64,
        })
        .collect()
}

fn sdk_signature_text(func: &sdk::Func) -> String {
    signature_text(
        &sdk_types(func.signature.params),
        &sdk_types(func.signature.results),
    )
}

fn same_signature(ty: &wasmparser::FuncType, func: &sdk::Func) -> bool {
    ty.params() == sdk_types(func.signature.params).as_slice()
        && ty.results() == sdk_types(func.signature.results).as_slice()
}

fn malformed(e: impl std::fmt::Display) -> VmError {
    VmError::Malformed {
        reason: e.to_string(),
    }
}

/// Checks a module's imports and exports against ABI v1 without compiling it:
/// imports only `pronto.log` / `pronto.now_ms` with their exact signatures, each
/// requested by `manifest` and in `granted`; exports `memory`,
/// `pronto_abi_version`, `pronto_io_buffer` and at least one entry point, all
/// with their exact signatures.
pub fn check_interface(
    wasm: &[u8],
    manifest: &Manifest,
    granted: &[Capability],
) -> Result<Interface, VmError> {
    let m = ModuleSections::read(wasm, manifest, granted)?;
    let initial_memory = m.initial_memory()?;
    for func in export::REQUIRED {
        m.check_func(&func, true)?;
    }
    if manifest.kind == ModuleKind::Scheduler {
        // A scheduler has exactly one entry point; policy exports are ignored
        // (never linked to a call), so only pronto_rank is checked.
        m.check_func(&export::RANK, true)?;
        return Ok(Interface {
            capabilities: m.capabilities,
            entry_points: EntryPoints {
                rank: true,
                ..EntryPoints::default()
            },
            initial_memory,
        });
    }
    let entry_points = EntryPoints {
        select: m.check_func(&export::SELECT, false)?,
        cost: m.check_func(&export::COST, false)?,
        aggregate: m.check_func(&export::AGGREGATE, false)?,
        rank: false,
    };
    match (entry_points.cost, entry_points.aggregate) {
        (true, false) => {
            return Err(VmError::IncompleteCostModel {
                missing: export::AGGREGATE.name,
            });
        }
        (false, true) => {
            return Err(VmError::IncompleteCostModel {
                missing: export::COST.name,
            });
        }
        _ => {}
    }
    if !entry_points.select && !entry_points.cost {
        return Err(VmError::NoEntryPoint);
    }
    Ok(Interface {
        capabilities: m.capabilities,
        entry_points,
        initial_memory,
    })
}

/// What `check_interface` reads of a module's sections.
struct ModuleSections {
    /// Each type, `None` for a non-function type.
    types: Vec<Option<wasmparser::FuncType>>,
    /// Type index of each function, imports first (the function index space).
    functions: Vec<u32>,
    /// Capabilities the imports use, each once.
    capabilities: Vec<Capability>,
    /// Name, kind and index of each export.
    exports: Vec<(String, ExternalKind, u32)>,
    /// The memory section.
    memories: Vec<wasmparser::MemoryType>,
}

impl ModuleSections {
    /// Parse the sections, checking each import as it comes.
    fn read(wasm: &[u8], manifest: &Manifest, granted: &[Capability]) -> Result<Self, VmError> {
        let mut m = Self {
            types: Vec::new(),
            functions: Vec::new(),
            capabilities: Vec::new(),
            exports: Vec::new(),
            memories: Vec::new(),
        };
        for payload in Parser::new(0).parse_all(wasm) {
            match payload.map_err(malformed)? {
                Payload::Version { encoding, .. } if encoding != Encoding::Module => {
                    return Err(malformed("a component, not a core module"));
                }
                Payload::TypeSection(reader) => {
                    for group in reader {
                        for sub in group.map_err(malformed)?.into_types() {
                            m.types.push(match sub.composite_type.inner {
                                CompositeInnerType::Func(f) => Some(f),
                                _ => None,
                            });
                        }
                    }
                }
                Payload::ImportSection(reader) => {
                    for entry in reader.into_imports() {
                        let entry = entry.map_err(malformed)?;
                        let type_index = check_import(&entry, &m.types, manifest, granted)?;
                        m.functions.push(type_index);
                        let capability = capability_of(entry.name);
                        if let Some(c) = capability
                            && !m.capabilities.contains(&c)
                        {
                            m.capabilities.push(c);
                        }
                    }
                }
                Payload::FunctionSection(reader) => {
                    for t in reader {
                        m.functions.push(t.map_err(malformed)?);
                    }
                }
                Payload::MemorySection(reader) => {
                    for mem in reader {
                        m.memories.push(mem.map_err(malformed)?);
                    }
                }
                Payload::ExportSection(reader) => {
                    for e in reader {
                        let e = e.map_err(malformed)?;
                        m.exports.push((e.name.to_owned(), e.kind, e.index));
                    }
                }
                _ => {}
            }
        }
        Ok(m)
    }

    fn find(&self, name: &str) -> Option<&(String, ExternalKind, u32)> {
        self.exports.iter().find(|(n, _, _)| n == name)
    }

    fn func_type(&self, index: u32) -> Option<&wasmparser::FuncType> {
        self.functions
            .get(index as usize)
            .and_then(|&t| self.types.get(t as usize))
            .and_then(Option::as_ref)
    }

    /// Checks a function export if present; Ok(false) when absent.
    fn check_func(&self, func: &sdk::Func, required: bool) -> Result<bool, VmError> {
        let name = func.name;
        let Some((_, kind, index)) = self.find(name) else {
            return if required {
                Err(VmError::MissingExport { name })
            } else {
                Ok(false)
            };
        };
        let expected = sdk_signature_text(func);
        if !matches!(kind, ExternalKind::Func | ExternalKind::FuncExact) {
            return Err(VmError::ExportType {
                name,
                expected,
                found: format!("a {kind:?} export"),
            });
        }
        let ty = self
            .func_type(*index)
            .ok_or_else(|| malformed(format!("export {name} has no type")))?;
        if !same_signature(ty, func) {
            return Err(VmError::ExportType {
                name,
                expected,
                found: signature_text(ty.params(), ty.results()),
            });
        }
        Ok(true)
    }

    /// The exported memory's initial size in bytes; refuses a missing, 64-bit
    /// or shared memory.
    fn initial_memory(&self) -> Result<u64, VmError> {
        let Some((_, memory_kind, memory_index)) = self.find(export::MEMORY) else {
            return Err(VmError::MissingExport {
                name: export::MEMORY,
            });
        };
        if *memory_kind != ExternalKind::Memory {
            return Err(VmError::ExportType {
                name: export::MEMORY,
                expected: "a memory".to_owned(),
                found: format!("a {memory_kind:?} export"),
            });
        }
        // Imports cannot be memories (check_import refuses them), so the index is
        // into the memory section.
        let memory = self
            .memories
            .get(*memory_index as usize)
            .ok_or_else(|| malformed("memory export names no memory"))?;
        if memory.memory64 || memory.shared {
            return Err(VmError::Memory {
                reason: "64-bit and shared memories are not supported".to_owned(),
            });
        }
        let page = 1_u64 << memory.page_size_log2.unwrap_or(16).min(16);
        Ok(memory.initial.saturating_mul(page))
    }
}

fn capability_of(import_name: &str) -> Option<Capability> {
    import::ALL
        .iter()
        .find(|(func, _)| func.name == import_name)
        .and_then(|(_, cap)| {
            [Capability::Log, Capability::Clock]
                .into_iter()
                .find(|c| c.as_str() == *cap)
        })
}

/// Checks one import; returns its function type index.
fn check_import(
    entry: &wasmparser::Import<'_>,
    types: &[Option<wasmparser::FuncType>],
    manifest: &Manifest,
    granted: &[Capability],
) -> Result<u32, VmError> {
    let forbidden = || VmError::ForbiddenImport {
        module: entry.module.to_owned(),
        name: entry.name.to_owned(),
    };
    if entry.module != import::MODULE {
        return Err(forbidden());
    }
    let Some((func, _)) = import::ALL.iter().find(|(f, _)| f.name == entry.name) else {
        return Err(forbidden());
    };
    let capability = capability_of(entry.name).ok_or_else(forbidden)?;
    let (TypeRef::Func(type_index) | TypeRef::FuncExact(type_index)) = entry.ty else {
        return Err(forbidden());
    };
    let ty = types
        .get(type_index as usize)
        .and_then(Option::as_ref)
        .ok_or_else(|| malformed(format!("import {} has no function type", entry.name)))?;
    if !same_signature(ty, func) {
        return Err(VmError::ImportSignature {
            name: func.name,
            expected: sdk_signature_text(func),
            found: signature_text(ty.params(), ty.results()),
        });
    }
    if !manifest.capabilities.contains(&capability) {
        return Err(VmError::CapabilityNotRequested { capability });
    }
    if !granted.contains(&capability) {
        return Err(VmError::CapabilityNotGranted { capability });
    }
    Ok(type_index)
}

struct CompiledInner {
    vm: Arc<VmShared>,
    name: String,
    pre: InstancePre<HostState>,
    entry_points: EntryPoints,
    host: Arc<HostContext>,
}

impl std::fmt::Debug for CompiledInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledInner")
            .field("name", &self.name)
            .field("entry_points", &self.entry_points)
            .finish_non_exhaustive()
    }
}

/// A checked, compiled, pre-linked module: instantiating it is cheap.
#[derive(Debug, Clone)]
pub struct CompiledModule {
    inner: Arc<CompiledInner>,
}

impl CompiledModule {
    /// Module name (from the manifest).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Entry points the module exports.
    pub fn entry_points(&self) -> EntryPoints {
        self.inner.entry_points
    }

    /// Host-function counters shared by every instance of this module.
    pub fn host_stats(&self) -> HostStats {
        self.inner.host.counters().snapshot()
    }

    /// A new instance in its own store; checks the ABI version and the I/O buffer.
    pub fn instantiate(&self) -> Result<PolicyInstance, VmError> {
        let live = Live::new(&self.inner)?;
        Ok(PolicyInstance {
            module: self.clone(),
            slot: Mutex::new(Slot { live: Some(live) }),
            restarts: AtomicU64::new(0),
            restart_failures: AtomicU64::new(0),
        })
    }
}

/// A live instance: its store and the handles the calls need, resolved once.
struct Live {
    store: Store<HostState>,
    memory: Memory,
    /// Guest address of the I/O buffer; checked at instantiation to lie in memory,
    /// which never shrinks.
    io: usize,
    select: Option<TypedFunc<i32, i32>>,
    cost: Option<TypedFunc<(f64, f64), f64>>,
    aggregate: Option<TypedFunc<i32, f64>>,
    rank: Option<TypedFunc<(), i64>>,
    /// What the guest's candidate region holds.
    resident: Resident,
}

/// The router candidates last written to a guest's candidate region, so `select`
/// and `aggregate` rewrite it only when the candidates change (on load reports,
/// not per flow): comparing the host's copy costs a fraction of encoding and
/// writing 40 bytes per candidate. Per [`Live`], so a rebuilt instance starts
/// from an unknown region.
///
/// The guest never writes its I/O buffer (ABI v1, `sdk::guest`). One that does
/// only misleads itself: every answer is still checked against the host's own
/// candidates (index in range, candidate UP).
#[derive(Debug, Default)]
struct Resident {
    /// Whether `candidates` is what the region holds; false for a fresh
    /// instance and after a call that wrote the region otherwise.
    known: bool,
    /// Kept allocated across changes, so a change does not allocate either once
    /// the largest set has been seen.
    candidates: Vec<Candidate>,
}

impl Resident {
    fn forget(&mut self) {
        self.known = false;
    }

    /// Whether the region already holds exactly `candidates`: same count and,
    /// field by field, the same bits (so a NaN load compares equal to itself and
    /// `-0.0` differs from `0.0`, as their encodings do).
    fn holds(&self, candidates: &[Candidate]) -> bool {
        self.known
            && self.candidates.len() == candidates.len()
            && self.candidates.iter().zip(candidates).all(|(a, b)| {
                a.addr == b.addr
                    && a.load.to_bits() == b.load.to_bits()
                    && a.route_cost.to_bits() == b.route_cost.to_bits()
                    && a.up == b.up
            })
    }
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("io", &self.io)
            .finish_non_exhaustive()
    }
}

/// Interprets a failed call.
fn classify(error: &wasmtime::Error, cut_by_share: bool) -> Fault {
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) if cut_by_share => Fault::Budget,
        Some(Trap::OutOfFuel) => Fault::Timeout {
            cause: TimeoutCause::Fuel,
        },
        Some(Trap::Interrupt) => Fault::Timeout {
            cause: TimeoutCause::Epoch,
        },
        Some(trap) => Fault::Trap {
            message: trap.to_string(),
        },
        // Host functions fail with their own errors (e.g. a log pointer outside
        // memory); to the policy's caller that is a trap of the module.
        None => Fault::Trap {
            message: format!("{error:#}"),
        },
    }
}

impl Live {
    fn new(module: &CompiledInner) -> Result<Self, VmError> {
        let config = &module.vm.config;
        let limits = StoreLimitsBuilder::new()
            .memory_size(config.memory_limit)
            .table_elements(config.max_table_elements)
            .instances(1)
            .tables(1)
            .memories(1)
            .build();
        let mut store = Store::new(
            &module.vm.engine,
            HostState {
                limits,
                context: Arc::clone(&module.host),
            },
        );
        store.limiter(|state| &mut state.limits);
        let instantiate_error = |e: wasmtime::Error| VmError::Instantiate {
            reason: format!("{e:#}"),
        };
        // The start function runs inside instantiate: bound it like a call.
        Self::arm(&mut store, config, None).map_err(instantiate_error)?;
        let instance =
            module
                .pre
                .instantiate(&mut store)
                .map_err(|e| match e.downcast_ref::<Trap>() {
                    Some(_) => VmError::Setup {
                        export: "start function",
                        fault: classify(&e, false),
                    },
                    None => instantiate_error(e),
                })?;
        let memory =
            instance
                .get_memory(&mut store, export::MEMORY)
                .ok_or(VmError::MissingExport {
                    name: export::MEMORY,
                })?;
        let version = Self::setup_call(&mut store, config, &instance, export::ABI_VERSION.name)?;
        if version as u32 != sdk::ABI_VERSION {
            return Err(VmError::AbiVersion {
                found: version as u32,
                expected: sdk::ABI_VERSION,
            });
        }
        let addr = Self::setup_call(&mut store, config, &instance, export::IO_BUFFER.name)? as u32;
        let memory_size = memory.data_size(&store);
        let io = addr as usize;
        if !io.is_multiple_of(8)
            || io
                .checked_add(IO_BUFFER_SIZE)
                .is_none_or(|end| end > memory_size)
        {
            return Err(VmError::IoBuffer {
                addr,
                size: IO_BUFFER_SIZE,
                memory_size,
            });
        }
        let typed_error = |name: &'static str| {
            move |e: wasmtime::Error| VmError::ExportType {
                name,
                expected: "its ABI v1 signature".to_owned(),
                found: format!("{e:#}"),
            }
        };
        let entries = module.entry_points;
        // Each entry point the module declared, resolved once with its exact type.
        macro_rules! entry {
            ($wanted:expr, $func:expr) => {
                $wanted
                    .then(|| instance.get_typed_func(&mut store, $func.name))
                    .transpose()
                    .map_err(typed_error($func.name))?
            };
        }
        let select = entry!(entries.select, export::SELECT);
        let cost = entry!(entries.cost, export::COST);
        let aggregate = entry!(entries.aggregate, export::AGGREGATE);
        let rank = entry!(entries.rank, export::RANK);
        Ok(Self {
            store,
            memory,
            io,
            select,
            cost,
            aggregate,
            rank,
            resident: Resident::default(),
        })
    }

    /// Writes `request` (when given) and makes the guest's candidate region hold
    /// `candidates` (ABI form, no operator tags), rewriting the region only if
    /// it does not already; guest memory is looked up once.
    fn place(
        &mut self,
        request: Option<&sdk::FlowRequest>,
        candidates: &[Candidate],
    ) -> Result<(), Fault> {
        let unchanged = self.resident.holds(candidates);
        if !unchanged {
            self.resident.forget();
        }
        let buffer = io_buffer(&self.memory, &mut self.store, self.io)?;
        if let Some(request) = request {
            write_request(buffer, request)?;
        }
        if unchanged {
            return Ok(());
        }
        let region = candidate_region(buffer, candidates.len())?;
        for (candidate, chunk) in candidates
            .iter()
            .zip(region.chunks_exact_mut(sdk::Candidate::SIZE))
        {
            chunk.copy_from_slice(&abi_candidate(candidate).to_bytes());
        }
        self.resident.candidates.clear();
        self.resident.candidates.extend_from_slice(candidates);
        self.resident.known = true;
        Ok(())
    }

    /// Writes `request` and ABI candidates (operator tags included); the
    /// router-form copy no longer describes the region.
    fn place_abi(
        &mut self,
        request: &sdk::FlowRequest,
        candidates: &[sdk::Candidate],
    ) -> Result<(), Fault> {
        self.resident.forget();
        let buffer = io_buffer(&self.memory, &mut self.store, self.io)?;
        write_request(buffer, request)?;
        let region = candidate_region(buffer, candidates.len())?;
        for (candidate, chunk) in candidates
            .iter()
            .zip(region.chunks_exact_mut(sdk::Candidate::SIZE))
        {
            chunk.copy_from_slice(&candidate.to_bytes());
        }
        Ok(())
    }

    /// Gives the store a fresh CPU bound for one call: `min(per-call fuel,
    /// limit)` fuel and the epoch deadline. Returns the fuel given (0 without fuel).
    fn arm(
        store: &mut Store<HostState>,
        config: &VmConfig,
        limit: Option<u64>,
    ) -> Result<u64, wasmtime::Error> {
        store.set_epoch_deadline(config.epoch_deadline_ticks);
        match config.fuel_per_call {
            Some(per_call) => {
                let fuel = limit.map_or(per_call, |l| l.min(per_call));
                store.set_fuel(fuel)?;
                Ok(fuel)
            }
            None => Ok(0),
        }
    }

    fn setup_call(
        store: &mut Store<HostState>,
        config: &VmConfig,
        instance: &Instance,
        name: &'static str,
    ) -> Result<i32, VmError> {
        let func: TypedFunc<(), i32> =
            instance
                .get_typed_func(&mut *store, name)
                .map_err(|e| VmError::ExportType {
                    name,
                    expected: "() -> (i32)".to_owned(),
                    found: format!("{e:#}"),
                })?;
        Self::arm(store, config, None).map_err(|e| VmError::Instantiate {
            reason: format!("{e:#}"),
        })?;
        func.call(&mut *store, ()).map_err(|e| VmError::Setup {
            export: name,
            fault: classify(&e, false),
        })
    }
}

/// The I/O buffer at guest address `io` as a byte slice of guest memory.
fn io_buffer<'a>(
    memory: &Memory,
    store: &'a mut Store<HostState>,
    io: usize,
) -> Result<&'a mut [u8], Fault> {
    memory
        .data_mut(store)
        .get_mut(io..io + IO_BUFFER_SIZE)
        .ok_or_else(|| Fault::Unavailable {
            reason: "I/O buffer outside memory".to_owned(),
        })
}

/// The first `n` candidate slots of an I/O buffer.
fn candidate_region(buffer: &mut [u8], n: usize) -> Result<&mut [u8], Fault> {
    if n > MAX_CANDIDATES {
        return Err(unavailable("more candidates than ABI v1 allows"));
    }
    let start = layout::IO_CANDIDATES_OFFSET;
    buffer
        .get_mut(start..start + n * sdk::Candidate::SIZE)
        .ok_or_else(|| unavailable("I/O buffer too short for the candidates"))
}

/// Writes `request` at the start of an I/O buffer.
fn write_request(buffer: &mut [u8], request: &sdk::FlowRequest) -> Result<(), Fault> {
    request.encode(buffer).map_err(|e| Fault::Unavailable {
        reason: e.to_string(),
    })
}

/// The mutable part of a [`PolicyInstance`].
#[derive(Debug)]
struct Slot {
    /// `None` after a fault whose rebuild failed; rebuilt before the next call.
    live: Option<Live>,
}

/// A failed step inside a call.
enum Step {
    /// The wasm call itself failed.
    Wasm(wasmtime::Error),
    /// The call was refused or its result was invalid.
    Fault(Fault),
}

impl From<Fault> for Step {
    fn from(fault: Fault) -> Self {
        Self::Fault(fault)
    }
}

/// Counters of one [`PolicyInstance`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InstanceStats {
    /// Times the instance was rebuilt after a fault.
    pub restarts: u64,
    /// Rebuilds that failed (the next call tries again).
    pub restart_failures: u64,
    /// Host-function counters of the module.
    pub host: HostStats,
}

/// One running instance of a policy module.
///
/// `Policy::select` takes `&self` but a wasmtime call needs `&mut Store`, so the
/// store sits in a `Mutex`: the engine calls policies from its one packet thread,
/// so the lock is uncontended (one atomic swap each way) and costs far less than
/// the call. A pool of instances would only pay off for several packet threads
/// sharing one handle, which the engine does not do; if it ever does, this lock
/// is where to put one.
#[derive(Debug)]
pub struct PolicyInstance {
    module: CompiledModule,
    slot: Mutex<Slot>,
    restarts: AtomicU64,
    restart_failures: AtomicU64,
}

/// ABI form of the router's request.
fn abi_request(req: &FlowRequest, now_unix_secs: u64) -> sdk::FlowRequest {
    let level = match req.level {
        Level::Network => sdk::Level::Network,
        Level::System => sdk::Level::System,
        Level::Site => sdk::Level::Site,
    };
    sdk::FlowRequest::new(
        req.key.proto,
        SocketAddr::new(req.key.src, req.key.src_port),
        SocketAddr::new(req.key.dst, req.key.dst_port),
    )
    .with_subnet(req.subnet.0)
    .with_level(level)
    .with_now(now_unix_secs)
}

/// ABI form of the router's candidate (no operator tags: the engine has none).
fn abi_candidate(c: &Candidate) -> sdk::Candidate {
    let flags = if c.up { sdk::flags::UP } else { 0 };
    sdk::Candidate::new(c.addr, c.load, c.route_cost, flags)
}

fn unavailable(reason: &str) -> Fault {
    Fault::Unavailable {
        reason: reason.to_owned(),
    }
}

impl PolicyInstance {
    /// The module this is an instance of.
    pub fn module(&self) -> &CompiledModule {
        &self.module
    }

    /// Counters.
    pub fn stats(&self) -> InstanceStats {
        InstanceStats {
            restarts: self.restarts.load(Ordering::Relaxed),
            restart_failures: self.restart_failures.load(Ordering::Relaxed),
            host: self.module.host_stats(),
        }
    }

    /// Runs `body` on the live instance with a fresh CPU bound, measures what it
    /// used, and rebuilds the instance after a fault.
    fn run<T>(
        &self,
        fuel_limit: Option<u64>,
        body: impl FnOnce(&mut Live) -> Result<T, Step>,
    ) -> CallOutcome<T> {
        let inner = &self.module.inner;
        let config = &inner.vm.config;
        // A panic while holding the lock cannot leave the store half-called in a
        // way the rebuild below does not fix; drop the live instance and go on.
        let mut slot = self.slot.lock().unwrap_or_else(|poisoned| {
            let mut slot = poisoned.into_inner();
            slot.live = None;
            slot
        });
        let slot = &mut *slot;
        if slot.live.is_none() {
            self.rebuild(slot);
        }
        let Some(live) = slot.live.as_mut() else {
            return CallOutcome {
                result: Err(unavailable("instance could not be rebuilt after a fault")),
                cpu_used: 0,
            };
        };
        let fuel_given = match Live::arm(&mut live.store, config, fuel_limit) {
            Ok(f) => f,
            Err(e) => {
                return CallOutcome {
                    result: Err(Fault::Unavailable {
                        reason: format!("cannot arm the CPU bound: {e:#}"),
                    }),
                    cpu_used: 0,
                };
            }
        };
        let started = config.fuel_per_call.is_none().then(Instant::now);
        let result = body(live);
        let cpu_used = match started {
            Some(t) => u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX),
            None => fuel_given.saturating_sub(live.store.get_fuel().unwrap_or(0)),
        };
        let cut_by_share = config
            .fuel_per_call
            .is_some_and(|per_call| fuel_given < per_call);
        let result = result.map_err(|step| match step {
            Step::Wasm(e) => classify(&e, cut_by_share),
            Step::Fault(f) => f,
        });
        if let Err(fault) = &result
            && fault.needs_restart()
        {
            tracing::debug!(module = %inner.name, %fault, "module fault; rebuilding its instance");
            slot.live = None;
            self.rebuild(slot);
        }
        CallOutcome { result, cpu_used }
    }

    fn rebuild(&self, slot: &mut Slot) {
        match Live::new(&self.module.inner) {
            Ok(live) => {
                slot.live = Some(live);
                self.restarts.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.restart_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(module = %self.module.inner.name, error = %e,
                    "cannot rebuild module instance; will retry at the next call");
            }
        }
    }

    /// `pronto_select` on the router's types; `fuel_limit` caps this call's fuel
    /// below the per-call budget (the caller's CPU share).
    pub fn call_select(
        &self,
        req: &FlowRequest,
        candidates: &[Candidate],
        now_unix_secs: u64,
        fuel_limit: Option<u64>,
    ) -> CallOutcome<Decision> {
        if candidates.len() > MAX_CANDIDATES {
            return CallOutcome {
                result: Err(unavailable("more candidates than ABI v1 allows")),
                cpu_used: 0,
            };
        }
        let request = abi_request(req, now_unix_secs);
        self.run(fuel_limit, |live| {
            live.place(Some(&request), candidates)?;
            Self::select_on(live, candidates.len(), |i| {
                candidates.get(i).is_some_and(|c| c.up)
            })
        })
    }

    /// `pronto_select` on ABI types (operator tags included), as the shipped
    /// modules' differential tests drive it.
    pub fn call_select_abi(
        &self,
        req: &sdk::FlowRequest,
        candidates: &[sdk::Candidate],
        fuel_limit: Option<u64>,
    ) -> CallOutcome<Decision> {
        if candidates.len() > MAX_CANDIDATES {
            return CallOutcome {
                result: Err(unavailable("more candidates than ABI v1 allows")),
                cpu_used: 0,
            };
        }
        self.run(fuel_limit, |live| {
            live.place_abi(req, candidates)?;
            Self::select_on(live, candidates.len(), |i| {
                candidates.get(i).is_some_and(sdk::Candidate::is_up)
            })
        })
    }

    /// Calls `pronto_select(n)` on the request and `n` candidates already in the
    /// guest's I/O buffer, and validates the answer (`is_up` says whether the
    /// host's candidate `i` is UP).
    fn select_on(
        live: &mut Live,
        n: usize,
        is_up: impl Fn(usize) -> bool,
    ) -> Result<Decision, Step> {
        // Borrow the handles in place: cloning a TypedFunc touches wasmtime's type
        // registry (atomics and a lock), a third of a call's time.
        let Live { store, select, .. } = live;
        let select = select
            .as_ref()
            .ok_or_else(|| unavailable("module exports no pronto_select"))?;
        // n <= MAX_CANDIDATES was checked by the caller.
        let raw = select
            .call(&mut *store, i32::try_from(n).unwrap_or(i32::MAX))
            .map_err(Step::Wasm)?;
        match sdk::Decision::from_raw(raw, n) {
            Ok(sdk::Decision::Reject) => Ok(Decision::Reject),
            Ok(sdk::Decision::Select(index)) if is_up(index) => Ok(Decision::Select(index)),
            Ok(sdk::Decision::Select(index)) => Err(Step::Fault(Fault::DownCandidate {
                index,
                candidates: n,
            })),
            Err(_) => Err(Step::Fault(Fault::BadDecision { raw, candidates: n })),
        }
    }

    /// `pronto_rank` (scheduler modules): writes `request` at offset 0 of the I/O
    /// buffer and validates the answer (negative is [`Fault::BadRank`]).
    pub fn call_rank(
        &self,
        request: &sdk::RankRequest,
        fuel_limit: Option<u64>,
    ) -> CallOutcome<u64> {
        self.run(fuel_limit, |live| {
            // The rank request overlaps candidate 0.
            live.resident.forget();
            let Live {
                store,
                memory,
                io,
                rank,
                ..
            } = live;
            let rank = rank
                .as_ref()
                .ok_or_else(|| unavailable("module exports no pronto_rank"))?;
            let buffer = io_buffer(memory, store, *io)?;
            let region = buffer.get_mut(layout::IO_RANK).unwrap_or_default();
            request.encode(region).map_err(|e| Fault::Unavailable {
                reason: e.to_string(),
            })?;
            let raw = rank.call(&mut *store, ()).map_err(Step::Wasm)?;
            sdk::rank_from_raw(raw).map_err(|_| Step::Fault(Fault::BadRank { raw }))
        })
    }

    /// `pronto_cost` (F).
    pub fn call_cost(
        &self,
        load: f64,
        route_cost: f64,
        fuel_limit: Option<u64>,
    ) -> CallOutcome<f64> {
        self.run(fuel_limit, |live| {
            let Live { store, cost, .. } = live;
            let cost = cost
                .as_ref()
                .ok_or_else(|| unavailable("module exports no pronto_cost"))?;
            let value = cost
                .call(&mut *store, (load, route_cost))
                .map_err(Step::Wasm)?;
            if value.is_nan() {
                return Err(Step::Fault(Fault::BadValue {
                    export: export::COST.name,
                    value,
                }));
            }
            Ok(value)
        })
    }

    /// `pronto_aggregate` (G) over the router's candidates.
    pub fn call_aggregate(
        &self,
        candidates: &[Candidate],
        fuel_limit: Option<u64>,
    ) -> CallOutcome<f64> {
        if candidates.len() > MAX_CANDIDATES {
            return CallOutcome {
                result: Err(unavailable("more candidates than ABI v1 allows")),
                cpu_used: 0,
            };
        }
        self.run(fuel_limit, |live| {
            live.place(None, candidates)?;
            let Live {
                store, aggregate, ..
            } = live;
            let aggregate = aggregate
                .as_ref()
                .ok_or_else(|| unavailable("module exports no pronto_aggregate"))?;
            let n = i32::try_from(candidates.len()).unwrap_or(i32::MAX);
            let value = aggregate.call(&mut *store, n).map_err(Step::Wasm)?;
            if value.is_nan() {
                return Err(Step::Fault(Fault::BadValue {
                    export: export::AGGREGATE.name,
                    value,
                }));
            }
            Ok(value)
        })
    }
}

impl Policy for PolicyInstance {
    fn name(&self) -> &str {
        self.module.name()
    }

    fn select(&self, req: &FlowRequest, candidates: &[Candidate]) -> Result<Decision, PolicyError> {
        let now = self.module.inner.vm.clock.unix_secs.load(Ordering::Relaxed);
        self.call_select(req, candidates, now, None)
            .result
            .map_err(PolicyError::from)
    }
}

impl CostModel for PolicyInstance {
    fn name(&self) -> &str {
        self.module.name()
    }

    fn cost(&self, load: f64, route_cost: f64) -> Result<f64, PolicyError> {
        self.call_cost(load, route_cost, None)
            .result
            .map_err(PolicyError::from)
    }

    fn aggregate(&self, candidates: &[Candidate]) -> Result<f64, PolicyError> {
        self.call_aggregate(candidates, None)
            .result
            .map_err(PolicyError::from)
    }
}
