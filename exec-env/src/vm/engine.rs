//! [`Vm`]: one environment's engine, and compiling modules with it into
//! [`CompiledModule`]s, which instantiate into [`PolicyInstance`]s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::{Config, Engine, InstancePre, Linker, Module};

use super::clock::{CoarseClock, Ticker};
use super::instance::Slot;
use super::interface::{EntryPoints, precheck};
use super::live::Live;
use super::{PolicyInstance, VmConfig, VmError};
use crate::host::{self, HostContext, HostState, HostStats};
use crate::manifest::{Capability, ModuleKind};
use crate::verified::VerifiedModule;

#[derive(Debug)]
pub(super) struct VmShared {
    pub(super) engine: Engine,
    pub(super) config: VmConfig,
    clock_origin: Instant,
    pub(super) clock: Arc<CoarseClock>,
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

    /// [`monotonic_ns`](super::monotonic_ns) as of the last epoch tick (plus any
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

pub(super) struct CompiledInner {
    pub(super) vm: Arc<VmShared>,
    pub(super) name: String,
    pub(super) pre: InstancePre<HostState>,
    pub(super) entry_points: EntryPoints,
    pub(super) host: Arc<HostContext>,
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
    pub(super) inner: Arc<CompiledInner>,
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
