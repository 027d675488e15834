//! Checking a module's imports, exports and memory against ABI v1 before
//! anything is compiled.

use sdk::{export, import};
use wasmparser::{CompositeInnerType, Encoding, ExternalKind, Parser, Payload, TypeRef};

use super::{VmConfig, VmError};
use crate::limits::{self, CheckError};
use crate::manifest::{Capability, Manifest, ModuleKind};
use crate::verified::VerifiedModule;

/// Which entry points a module exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EntryPoints {
    /// `pronto_select`.
    pub select: bool,
    /// `pronto_select_v2` (only beside `pronto_select`; calls prefer it).
    pub select_v2: bool,
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

/// Every check [`Vm::compile`](super::Vm::compile) makes before Cranelift sees a byte of `module`:
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
        select_v2: m.check_func(&export::SELECT_V2, false)?,
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
    if entry_points.select_v2 && !entry_points.select {
        // A host without v2 could not call it: v2 is an addition, never instead.
        return Err(VmError::MissingExport {
            name: export::SELECT.name,
        });
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
