//! Load-time bounds of a module (DESIGN.md §6: "bounded at load as well as at run
//! time"): what a signed file may declare, checked with wasmparser *before*
//! wasmtime compiles anything.
//!
//! The instance caps ([`crate::vm::VmConfig::memory_limit`], the store's
//! `ResourceLimiter`) bound a running module; they do not bound compilation,
//! whose memory grows with the number and size of functions: a 344 KB signed
//! file of 20 000 empty functions grew a router by 224 MiB. So every count and
//! size that drives compile memory is capped here, per environment, and a module
//! over any cap is refused with a [`LimitError`] naming the cap, the value and
//! the limit, before a byte of it reaches Cranelift.
//!
//! Counts are read from section headers first, so a section claiming 100 000
//! functions is refused without walking its entries; per-function checks (body
//! size, locals) read each body's header only.

use std::fmt;

use wasmparser::{ElementItems, Parser, Payload};

/// One load-time bound, for errors and per-reason counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Cap {
    /// Size of the module file (`VmConfig::max_module_len`).
    ModuleSize,
    /// Entries of the type section.
    Types,
    /// Imports.
    Imports,
    /// Exports.
    Exports,
    /// Functions, imported and defined.
    Functions,
    /// Bytes of the code section.
    CodeSize,
    /// Bytes of one function body.
    FunctionBodySize,
    /// Locals of one function (declared, not counting parameters).
    FunctionLocals,
    /// Globals.
    Globals,
    /// Tables.
    Tables,
    /// Initial (or, if larger, declared maximum) elements of one table.
    TableElements,
    /// Memories.
    Memories,
    /// Initial size of one memory, bytes.
    MemoryInitial,
    /// Element segments.
    ElementSegments,
    /// Items of all element segments together.
    ElementItems,
    /// Data segments.
    DataSegments,
    /// Bytes of all data segments together.
    DataSize,
}

impl Cap {
    /// Every cap, in counter order.
    pub const ALL: [Self; 17] = [
        Self::ModuleSize,
        Self::Types,
        Self::Imports,
        Self::Exports,
        Self::Functions,
        Self::CodeSize,
        Self::FunctionBodySize,
        Self::FunctionLocals,
        Self::Globals,
        Self::Tables,
        Self::TableElements,
        Self::Memories,
        Self::MemoryInitial,
        Self::ElementSegments,
        Self::ElementItems,
        Self::DataSegments,
        Self::DataSize,
    ];

    /// Stable snake_case name, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ModuleSize => "module_size",
            Self::Types => "types",
            Self::Imports => "imports",
            Self::Exports => "exports",
            Self::Functions => "functions",
            Self::CodeSize => "code_size",
            Self::FunctionBodySize => "function_body_size",
            Self::FunctionLocals => "function_locals",
            Self::Globals => "globals",
            Self::Tables => "tables",
            Self::TableElements => "table_elements",
            Self::Memories => "memories",
            Self::MemoryInitial => "memory_initial",
            Self::ElementSegments => "element_segments",
            Self::ElementItems => "element_items",
            Self::DataSegments => "data_segments",
            Self::DataSize => "data_size",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|c| *c == self).unwrap_or(0)
    }
}

impl fmt::Display for Cap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A module over one of its environment's load-time caps; nothing was compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "module {cap} is {value}{at}, over this environment's limit of {limit} (refused before compiling)",
    at = .function.map(|f| format!(" in function {f}")).unwrap_or_default()
)]
#[non_exhaustive]
pub struct LimitError {
    /// Which cap.
    pub cap: Cap,
    /// What the module declares (a lower bound when a count overflowed).
    pub value: u64,
    /// The environment's limit.
    pub limit: u64,
    /// Index of the offending function (function-space index), for per-function caps.
    pub function: Option<u32>,
}

impl LimitError {
    /// What an operator or module author can do about it.
    pub fn hint(&self) -> &'static str {
        match self.cap {
            Cap::ModuleSize | Cap::CodeSize | Cap::Functions | Cap::FunctionBodySize => {
                "shrink the module (build with opt-level \"s\", LTO and panic = \"abort\", strip unused code), \
                 or raise the environment's module limits if it is trusted"
            }
            Cap::FunctionLocals => {
                "split the function or let the optimiser reuse locals; or raise function_locals"
            }
            Cap::DataSegments | Cap::DataSize => {
                "compute large tables at start-up instead of embedding them, or raise the data limits"
            }
            Cap::Memories | Cap::MemoryInitial => {
                "declare one memory whose initial size fits the environment's memory cap"
            }
            Cap::Tables | Cap::TableElements | Cap::ElementSegments | Cap::ElementItems => {
                "use one function table no larger than the environment's table cap"
            }
            Cap::Types | Cap::Imports | Cap::Exports | Cap::Globals => {
                "the module declares far more than a policy needs: check its build, or raise the cap"
            }
        }
    }
}

/// Load-time caps of one environment (part of [`crate::vm::VmConfig`], itself
/// part of the environment's configuration). The module file size, the initial
/// memory and the table size are capped by `VmConfig::max_module_len`,
/// `memory_limit` and `max_table_elements`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModuleLimits {
    /// Entries of the type section.
    pub types: u32,
    /// Imports.
    pub imports: u32,
    /// Exports.
    pub exports: u32,
    /// Functions, imported and defined.
    pub functions: u32,
    /// Bytes of the code section.
    pub code_size: u64,
    /// Bytes of one function body.
    pub function_body_size: u64,
    /// Declared locals of one function.
    pub function_locals: u32,
    /// Globals.
    pub globals: u32,
    /// Tables.
    pub tables: u32,
    /// Memories.
    pub memories: u32,
    /// Element segments.
    pub element_segments: u32,
    /// Items of all element segments together.
    pub element_items: u64,
    /// Data segments.
    pub data_segments: u32,
    /// Bytes of all data segments together.
    pub data_size: u64,
}

impl Default for ModuleLimits {
    /// Sized from the shipped modules (the largest, `consistent_hash`, is 17 KB
    /// with 47 functions, ~14 KB of code, 2 KB of data) with two orders of
    /// magnitude to spare, and low enough that the largest module they accept
    /// compiles in well under 100 MiB: 2 000 functions, 1 MiB of code, 64 KiB per
    /// body, 1 000 locals, 1 MiB of data in 256 segments, 64 imports, 256
    /// exports, 1 000 types and globals, one table, one memory, 256 element
    /// segments of 10 000 items in all.
    fn default() -> Self {
        Self {
            types: 1_000,
            imports: 64,
            exports: 256,
            functions: 2_000,
            code_size: 1 << 20,
            function_body_size: 64 << 10,
            function_locals: 1_000,
            globals: 1_000,
            tables: 1,
            memories: 1,
            element_segments: 256,
            element_items: 10_000,
            data_segments: 256,
            data_size: 1 << 20,
        }
    }
}

/// What [`check`] measured of a module that passed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ModuleShape {
    /// Entries of the type section.
    pub types: u64,
    /// Imports.
    pub imports: u64,
    /// Exports.
    pub exports: u64,
    /// Functions, imported and defined.
    pub functions: u64,
    /// Bytes of the code section.
    pub code_size: u64,
    /// Largest function body, bytes.
    pub largest_body: u64,
    /// Most declared locals of one function.
    pub most_locals: u64,
    /// Globals.
    pub globals: u64,
    /// Tables.
    pub tables: u64,
    /// Largest table (initial or maximum elements).
    pub largest_table: u64,
    /// Memories.
    pub memories: u64,
    /// Largest initial memory, bytes.
    pub largest_memory: u64,
    /// Element segments.
    pub element_segments: u64,
    /// Element items.
    pub element_items: u64,
    /// Data segments.
    pub data_segments: u64,
    /// Data bytes.
    pub data_size: u64,
}

/// Why [`check`] stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// Over a cap.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// Not a well-formed module (as far as the walk could tell).
    #[error("malformed module: {reason}")]
    Malformed {
        /// What wasmparser said.
        reason: String,
    },
}

fn malformed(e: impl fmt::Display) -> CheckError {
    CheckError::Malformed {
        reason: e.to_string(),
    }
}

/// The bounds [`check`] applies: the module caps plus the instance caps that
/// also bound what a module may declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Declaration caps.
    pub limits: ModuleLimits,
    /// Largest module file, bytes.
    pub module_len: u64,
    /// Largest initial memory, bytes.
    pub memory_bytes: u64,
    /// Largest table, elements.
    pub table_elements: u64,
}

fn cap(cap: Cap, value: u64, limit: u64) -> Result<(), LimitError> {
    if value > limit {
        Err(LimitError {
            cap,
            value,
            limit,
            function: None,
        })
    } else {
        Ok(())
    }
}

/// Checks `wasm` against `bounds` without compiling it; returns what it measured.
pub fn check(wasm: &[u8], bounds: &Bounds) -> Result<ModuleShape, CheckError> {
    let l = &bounds.limits;
    cap(Cap::ModuleSize, wasm.len() as u64, bounds.module_len)?;
    let mut s = ModuleShape::default();
    let mut imported_functions = 0_u64;
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.map_err(malformed)? {
            Payload::TypeSection(r) => {
                s.types = u64::from(r.count());
                cap(Cap::Types, s.types, l.types.into())?;
            }
            Payload::ImportSection(r) => {
                // The header counts groups of imports, not imports: count each.
                for import in r.into_imports() {
                    s.imports += 1;
                    cap(Cap::Imports, s.imports, l.imports.into())?;
                    // Other import kinds are refused by the interface check.
                    if matches!(
                        import.map_err(malformed)?.ty,
                        wasmparser::TypeRef::Func(_) | wasmparser::TypeRef::FuncExact(_)
                    ) {
                        imported_functions += 1;
                    }
                }
                s.functions = imported_functions;
            }
            Payload::FunctionSection(r) => {
                s.functions = imported_functions + u64::from(r.count());
                cap(Cap::Functions, s.functions, l.functions.into())?;
            }
            Payload::TableSection(r) => {
                s.tables = u64::from(r.count());
                cap(Cap::Tables, s.tables, l.tables.into())?;
                for table in r {
                    let ty = table.map_err(malformed)?.ty;
                    let size = ty.maximum.unwrap_or(ty.initial).max(ty.initial);
                    s.largest_table = s.largest_table.max(size);
                    cap(Cap::TableElements, size, bounds.table_elements)?;
                }
            }
            Payload::MemorySection(r) => {
                s.memories = u64::from(r.count());
                cap(Cap::Memories, s.memories, l.memories.into())?;
                for memory in r {
                    let ty = memory.map_err(malformed)?;
                    let page = 1_u64 << ty.page_size_log2.unwrap_or(16).min(16);
                    let bytes = ty.initial.saturating_mul(page);
                    s.largest_memory = s.largest_memory.max(bytes);
                    cap(Cap::MemoryInitial, bytes, bounds.memory_bytes)?;
                }
            }
            Payload::GlobalSection(r) => {
                s.globals = u64::from(r.count());
                cap(Cap::Globals, s.globals, l.globals.into())?;
            }
            Payload::ExportSection(r) => {
                s.exports = u64::from(r.count());
                cap(Cap::Exports, s.exports, l.exports.into())?;
            }
            Payload::ElementSection(r) => {
                s.element_segments = u64::from(r.count());
                cap(
                    Cap::ElementSegments,
                    s.element_segments,
                    l.element_segments.into(),
                )?;
                for element in r {
                    let items = match element.map_err(malformed)?.items {
                        ElementItems::Functions(f) => f.count(),
                        ElementItems::Expressions(_, e) => e.count(),
                    };
                    s.element_items = s.element_items.saturating_add(items.into());
                    cap(Cap::ElementItems, s.element_items, l.element_items)?;
                }
            }
            Payload::DataCountSection { count, .. } => {
                cap(Cap::DataSegments, count.into(), l.data_segments.into())?;
            }
            Payload::DataSection(r) => {
                s.data_segments = u64::from(r.count());
                cap(Cap::DataSegments, s.data_segments, l.data_segments.into())?;
                // The section's length bounds the data before a segment is read.
                cap(
                    Cap::DataSize,
                    span(&r.range()),
                    l.data_size.saturating_add(
                        // Segment headers: at most ~16 bytes each.
                        s.data_segments.saturating_mul(16),
                    ),
                )?;
                for data in r {
                    let data = data.map_err(malformed)?;
                    s.data_size = s.data_size.saturating_add(data.data.len() as u64);
                    cap(Cap::DataSize, s.data_size, l.data_size)?;
                }
            }
            Payload::CodeSectionStart { count, size, .. } => {
                s.code_size = size.into();
                cap(Cap::CodeSize, s.code_size, l.code_size)?;
                cap(
                    Cap::Functions,
                    imported_functions + u64::from(count),
                    l.functions.into(),
                )?;
            }
            Payload::CodeSectionEntry(body) => {
                check_body(&body, imported_functions, l, &mut s)?;
                imported_functions += 1;
            }
            _ => {}
        }
    }
    Ok(s)
}

/// Per-function caps; `index` is the body's function-space index.
fn check_body(
    body: &wasmparser::FunctionBody<'_>,
    index: u64,
    l: &ModuleLimits,
    s: &mut ModuleShape,
) -> Result<(), CheckError> {
    let function = u32::try_from(index).ok();
    let at = |e: LimitError| LimitError { function, ..e };
    let size = span(&body.range());
    s.largest_body = s.largest_body.max(size);
    cap(Cap::FunctionBodySize, size, l.function_body_size).map_err(at)?;
    let mut locals = 0_u64;
    for group in body.get_locals_reader().map_err(malformed)? {
        let (count, _) = group.map_err(malformed)?;
        locals = locals.saturating_add(count.into());
        cap(Cap::FunctionLocals, locals, l.function_locals.into()).map_err(at)?;
    }
    s.most_locals = s.most_locals.max(locals);
    Ok(())
}

fn span(range: &std::ops::Range<u64>) -> u64 {
    range.end.saturating_sub(range.start)
}

/// Refusals per [`Cap`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitCounts([u64; Cap::ALL.len()]);

impl LimitCounts {
    /// Refusals for `cap`.
    pub fn get(&self, cap: Cap) -> u64 {
        self.0[cap.index()]
    }

    /// Every cap with its refusals.
    pub fn iter(&self) -> impl Iterator<Item = (Cap, u64)> + '_ {
        Cap::ALL.iter().map(|c| (*c, self.get(*c)))
    }

    /// All refusals together.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

/// Atomic refusals per [`Cap`], for an environment's counters.
#[derive(Debug, Default)]
pub struct LimitCounters([std::sync::atomic::AtomicU64; Cap::ALL.len()]);

impl LimitCounters {
    /// Counts one refusal for `cap`.
    pub fn bump(&self, cap: Cap) {
        self.0[cap.index()].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Current values.
    pub fn snapshot(&self) -> LimitCounts {
        LimitCounts(std::array::from_fn(|i| {
            self.0[i].load(std::sync::atomic::Ordering::Relaxed)
        }))
    }
}
