//! A live instance ([`Live`]): its store, the entry points resolved once, and
//! the guest's I/O buffer with the candidates resident in it.

use std::sync::Arc;

use router_core::policy::Candidate;
use sdk::{IO_BUFFER_SIZE, MAX_CANDIDATES, export, layout};
use wasmtime::{Instance, Memory, Store, StoreLimitsBuilder, Trap, TypedFunc};

use super::engine::CompiledInner;
use super::error::unavailable;
use super::{Fault, TimeoutCause, VmConfig, VmError};
use crate::host::HostState;

/// Arguments of `pronto_select_v2`: the count, then the request's seven words.
pub(super) type SelectV2Params = (i32, i64, i64, i64, i64, i64, i64, i64);

/// A live instance: its store and the handles the calls need, resolved once.
pub(super) struct Live {
    pub(super) store: Store<HostState>,
    pub(super) memory: Memory,
    /// Guest address of the I/O buffer; checked at instantiation to lie in memory,
    /// which never shrinks.
    pub(super) io: usize,
    pub(super) select: Option<TypedFunc<i32, i32>>,
    /// `pronto_select_v2`, called instead of `select` when the module has it.
    pub(super) select_v2: Option<TypedFunc<SelectV2Params, i32>>,
    pub(super) cost: Option<TypedFunc<(f64, f64), f64>>,
    pub(super) aggregate: Option<TypedFunc<i32, f64>>,
    pub(super) rank: Option<TypedFunc<(), i64>>,
    /// What the guest's candidate region holds.
    pub(super) resident: Resident,
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
pub(super) struct Resident {
    /// Whether `candidates` is what the region holds; false for a fresh
    /// instance and after a call that wrote the region otherwise.
    known: bool,
    /// Kept allocated across changes, so a change does not allocate either once
    /// the largest set has been seen.
    candidates: Vec<Candidate>,
}

impl Resident {
    pub(super) fn forget(&mut self) {
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
pub(super) fn classify(error: &wasmtime::Error, cut_by_share: bool) -> Fault {
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
    pub(super) fn new(module: &CompiledInner) -> Result<Self, VmError> {
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
        let select_v2 = entry!(entries.select_v2, export::SELECT_V2);
        let cost = entry!(entries.cost, export::COST);
        let aggregate = entry!(entries.aggregate, export::AGGREGATE);
        let rank = entry!(entries.rank, export::RANK);
        Ok(Self {
            store,
            memory,
            io,
            select,
            select_v2,
            cost,
            aggregate,
            rank,
            resident: Resident::default(),
        })
    }

    /// Writes `request` (when given) and makes the guest's candidate region hold
    /// `candidates` (ABI form, no operator tags), rewriting the region only if
    /// it does not already; guest memory is looked up once, and not at all when
    /// there is nothing to write.
    pub(super) fn place(
        &mut self,
        request: Option<&sdk::FlowRequest>,
        candidates: &[Candidate],
    ) -> Result<(), Fault> {
        let unchanged = self.resident.holds(candidates);
        if unchanged && request.is_none() {
            return Ok(());
        }
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

    /// Writes `request` (when given) and ABI candidates (operator tags
    /// included); the router-form copy no longer describes the region.
    pub(super) fn place_abi(
        &mut self,
        request: Option<&sdk::FlowRequest>,
        candidates: &[sdk::Candidate],
    ) -> Result<(), Fault> {
        self.resident.forget();
        let buffer = io_buffer(&self.memory, &mut self.store, self.io)?;
        if let Some(request) = request {
            write_request(buffer, request)?;
        }
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
    pub(super) fn arm(
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
pub(super) fn io_buffer<'a>(
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

/// ABI form of the router's candidate (no operator tags: the engine has none).
fn abi_candidate(c: &Candidate) -> sdk::Candidate {
    let flags = if c.up { sdk::flags::UP } else { 0 };
    sdk::Candidate::new(c.addr, c.load, c.route_cost, flags)
}
