//! The committed `modules/*.wasm` against the ABI in `sdk`: exports with the right
//! signatures for the manifest's kind (policy or scheduler), no imports beyond the
//! `pronto` host functions, and imports matching the capabilities the manifest
//! requests. Catches an artifact that drifted from
//! the source or the ABI (rebuild with `scripts/build-wasm.sh`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::{Context, Result, bail, ensure};
use sdk::{Func, Signature, ValType, export, import};
use wasmparser::{ExternalKind, FuncType, Parser, Payload, TypeRef, ValType as WasmVal, Validator};

/// Manifest kind of routing policies.
const POLICY: &str = "policy";
/// Manifest kind of packet schedulers.
const SCHEDULER: &str = "scheduler";

/// Modules shipped, with their manifest kind and the entry points each must export.
const MODULES: [(&str, &str, &[Func]); 8] = [
    (
        slr_policy_wasm::least_load::NAME,
        POLICY,
        &[export::SELECT, export::SELECT_V2],
    ),
    (
        slr_policy_wasm::weighted_cost::NAME,
        POLICY,
        &[
            export::SELECT,
            export::SELECT_V2,
            export::COST,
            export::AGGREGATE,
        ],
    ),
    (
        slr_policy_wasm::proximity::NAME,
        POLICY,
        &[export::SELECT, export::SELECT_V2],
    ),
    (
        slr_policy_wasm::consistent_hash::NAME,
        POLICY,
        &[export::SELECT, export::SELECT_V2],
    ),
    (
        slr_policy_wasm::time_of_day::NAME,
        POLICY,
        &[export::SELECT, export::SELECT_V2],
    ),
    (
        slr_policy_wasm::sfq::NAME,
        SCHEDULER,
        &export::SCHEDULER_ENTRY_POINTS,
    ),
    (
        slr_policy_wasm::strict_priority::NAME,
        SCHEDULER,
        &export::SCHEDULER_ENTRY_POINTS,
    ),
    (
        slr_policy_wasm::least_slack::NAME,
        SCHEDULER,
        &export::SCHEDULER_ENTRY_POINTS,
    ),
];

/// Entry points a module of `kind` may export; it must export at least one.
fn allowed_entry_points(kind: &str) -> Result<&'static [Func]> {
    Ok(match kind {
        POLICY => &export::ENTRY_POINTS,
        SCHEDULER => &export::SCHEDULER_ENTRY_POINTS,
        other => bail!("unknown module kind {other}"),
    })
}

/// Linker-default global exports a host ignores.
const IGNORED_GLOBALS: [&str; 2] = ["__data_end", "__heap_base"];

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    name: String,
    version: String,
    kind: String,
    capabilities: Vec<String>,
    description: String,
}

/// A signature as owned lists (the sdk's are `&'static`).
type Sig = (Vec<ValType>, Vec<ValType>);

/// What a module imports and exports.
#[derive(Debug, Default)]
struct Shape {
    imports: Vec<(String, String, Sig)>,
    exports: BTreeMap<String, Sig>,
    exported_memories: BTreeSet<String>,
    other_exports: BTreeSet<String>,
}

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn val(v: WasmVal) -> Result<ValType> {
    Ok(match v {
        WasmVal::I32 => ValType::I32,
        WasmVal::I64 => ValType::I64,
        WasmVal::F64 => ValType::F64,
        other => bail!("value type {other:?} is not in the ABI"),
    })
}

fn sig(ty: &FuncType) -> Result<Sig> {
    let params = ty.params().iter().map(|v| val(*v)).collect::<Result<_>>()?;
    let results = ty
        .results()
        .iter()
        .map(|v| val(*v))
        .collect::<Result<_>>()?;
    Ok((params, results))
}

fn owned(s: Signature) -> Sig {
    (s.params.to_vec(), s.results.to_vec())
}

/// Parses and validates a module, returning its imports and exports.
fn shape(bytes: &[u8]) -> Result<Shape> {
    Validator::new()
        .validate_all(bytes)
        .context("invalid wasm")?;
    let mut types: Vec<Sig> = Vec::new();
    let mut func_types: Vec<u32> = Vec::new();
    let mut shape = Shape::default();
    for payload in Parser::new(0).parse_all(bytes) {
        match payload? {
            Payload::TypeSection(reader) => {
                for ty in reader.into_iter_err_on_gc_types() {
                    types.push(sig(&ty?)?);
                }
            }
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import?;
                    let TypeRef::Func(index) = import.ty else {
                        bail!("non-function import {}.{}", import.module, import.name);
                    };
                    let ty = types.get(index as usize).context("bad type index")?.clone();
                    func_types.push(index);
                    shape
                        .imports
                        .push((import.module.to_owned(), import.name.to_owned(), ty));
                }
            }
            Payload::FunctionSection(reader) => {
                for index in reader {
                    func_types.push(index?);
                }
            }
            Payload::ExportSection(reader) => {
                for e in reader {
                    let e = e?;
                    match e.kind {
                        ExternalKind::Func => {
                            let ty = func_types
                                .get(e.index as usize)
                                .context("bad function index")?;
                            let ty = types.get(*ty as usize).context("bad type index")?.clone();
                            shape.exports.insert(e.name.to_owned(), ty);
                        }
                        ExternalKind::Memory => {
                            shape.exported_memories.insert(e.name.to_owned());
                        }
                        _ => {
                            shape.other_exports.insert(e.name.to_owned());
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(shape)
}

fn manifest(name: &str) -> Result<Manifest> {
    let path = crate_dir().join("manifests").join(format!("{name}.toml"));
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    Ok(toml::from_str(&text)?)
}

fn check_module(name: &str, kind: &str, entry_points: &[Func]) -> Result<()> {
    let path: PathBuf = crate_dir().join("modules").join(format!("{name}.wasm"));
    let bytes = std::fs::read(&path)
        .with_context(|| format!("{} missing: run scripts/build-wasm.sh", path.display()))?;
    check_bytes(name, kind, entry_points, &bytes)
}

/// Checks `bytes` as module `name` (its manifest) of `kind` with these entry points.
fn check_bytes(name: &str, kind: &str, entry_points: &[Func], bytes: &[u8]) -> Result<()> {
    let allowed = allowed_entry_points(kind)?;
    ensure!(!entry_points.is_empty(), "a {kind} needs an entry point");
    for f in entry_points {
        ensure!(
            allowed.contains(f),
            "{} is not an entry point of a {kind}",
            f.name
        );
    }
    let Shape {
        imports,
        exports,
        exported_memories,
        other_exports,
    } = shape(bytes)?;

    ensure!(
        exported_memories == BTreeSet::from([export::MEMORY.to_owned()]),
        "memory exports {:?}",
        exported_memories
    );
    for global in &other_exports {
        ensure!(
            IGNORED_GLOBALS.contains(&global.as_str()),
            "unexpected export {global}"
        );
    }
    let expected: BTreeMap<String, _> = export::REQUIRED
        .iter()
        .chain(entry_points)
        .map(|f| (f.name.to_owned(), owned(f.signature)))
        .collect();
    ensure!(
        exports == expected,
        "exports {exports:?}, ABI says {expected:?}"
    );

    let manifest = manifest(name)?;
    ensure!(manifest.name == name, "manifest name {}", manifest.name);
    ensure!(
        manifest.kind == kind,
        "manifest kind {}, expected {kind}",
        manifest.kind
    );
    let parts: Vec<&str> = manifest.version.split('.').collect();
    ensure!(
        parts.len() == 3 && parts.iter().all(|p| p.parse::<u64>().is_ok()),
        "version {} is not semver",
        manifest.version
    );
    ensure!(!manifest.description.is_empty(), "empty description");

    let mut needed = BTreeSet::new();
    for (module, field, ty) in &imports {
        ensure!(module == import::MODULE, "import from module {module}");
        let Some((func, capability)) = import::ALL.iter().find(|(f, _)| f.name == field) else {
            bail!("import {module}.{field} is not a pronto host function");
        };
        ensure!(
            *ty == owned(func.signature),
            "import {field} has signature {ty:?}"
        );
        needed.insert((*capability).to_owned());
    }
    let requested: BTreeSet<String> = manifest.capabilities.iter().cloned().collect();
    ensure!(
        needed == requested,
        "imports need capabilities {needed:?}, manifest requests {requested:?}"
    );
    Ok(())
}

#[test]
fn committed_modules_match_the_abi() -> Result<()> {
    for (name, kind, entry_points) in MODULES {
        check_module(name, kind, entry_points).with_context(|| format!("module {name}"))?;
    }
    Ok(())
}

#[test]
fn every_committed_file_is_a_known_module() -> Result<()> {
    let known: BTreeSet<&str> = MODULES.iter().map(|(n, _, _)| *n).collect();
    for (dir, ext) in [("modules", "wasm"), ("manifests", "toml")] {
        let mut found = BTreeSet::new();
        for entry in std::fs::read_dir(crate_dir().join(dir))? {
            let path = entry?.path();
            ensure!(
                path.extension().is_some_and(|e| e == ext),
                "stray file {}",
                path.display()
            );
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .context("file name")?;
            found.insert(stem.to_owned());
        }
        let known: BTreeSet<String> = known.iter().map(|s| (*s).to_owned()).collect();
        ensure!(found == known, "{dir}: {found:?} but modules are {known:?}");
    }
    Ok(())
}

#[test]
fn a_drifted_artifact_is_caught() -> Result<()> {
    let read = |name: &str| std::fs::read(crate_dir().join("modules").join(format!("{name}.wasm")));
    // Missing entry points: least_load's bytes lack weighted_cost's F and G.
    let least_load = read("least_load")?;
    ensure!(check_bytes("least_load", POLICY, MODULES[1].2, &least_load).is_err());
    // An import the manifest did not request: consistent_hash imports pronto.log,
    // least_load's manifest requests no capability.
    let consistent_hash = read("consistent_hash")?;
    ensure!(
        check_bytes(
            "least_load",
            POLICY,
            &[export::SELECT, export::SELECT_V2],
            &consistent_hash
        )
        .is_err()
    );
    ensure!(
        check_bytes(
            "least_load",
            POLICY,
            &[export::SELECT, export::SELECT_V2],
            &least_load
        )
        .is_ok()
    );
    // An artifact built before pronto_select_v2 (only pronto_select) is stale.
    ensure!(check_bytes("least_load", POLICY, &[export::SELECT], &least_load).is_err());
    // A scheduler is not a policy: wrong kind for its manifest, wrong entry points.
    let sfq = read("sfq")?;
    ensure!(check_bytes("sfq", SCHEDULER, &export::SCHEDULER_ENTRY_POINTS, &sfq).is_ok());
    ensure!(check_bytes("sfq", POLICY, &export::SCHEDULER_ENTRY_POINTS, &sfq).is_err());
    ensure!(check_bytes("sfq", SCHEDULER, &[export::SELECT, export::SELECT_V2], &sfq).is_err());
    ensure!(
        check_bytes(
            "least_load",
            SCHEDULER,
            &export::SCHEDULER_ENTRY_POINTS,
            &least_load
        )
        .is_err()
    );
    ensure!(shape(b"\0asm\x01\0\0\0garbage").is_err());
    Ok(())
}
