//! What operators changed in a running router's modules, kept on disk so that
//! a restart keeps it (`[modules] state_dir`):
//!
//! - `modules/NAME.wasm`: the signed bytes of the active version of a module
//!   loaded or swapped at runtime; `modules/NAME.previous.wasm` the version it
//!   replaced, when that came from the API too. A file that is absent means
//!   "the version `[modules] files` installs".
//! - `bindings.toml`: every binding (module, subnet, role) once an operator
//!   changed one; while it exists it replaces the configuration's
//!   `policy`/`cost` on `subnet`.
//!
//! Every write goes to a temporary file that is synced and renamed over the
//! old one, so a crash leaves the old state or the new one, never a mix. At
//! start the files are verified like any module (signature, chain, CRLs): a
//! module whose signer has since been revoked stops the start, naming the file.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use exec_env::format::MAX_MODULE_LEN;
use exec_env::manager::{Binding, Environment, ManagerError, Role};
use router_core::VirtualSubnet;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// Largest bindings file read.
const MAX_BINDINGS_BYTES: u64 = 1 << 20;
/// Most bindings a router keeps.
pub(crate) const MAX_BINDINGS: usize = 256;

/// The state directory of one router's operator environment.
#[derive(Debug, Clone)]
pub(crate) struct ModuleStore {
    dir: PathBuf,
}

/// One binding as `bindings.toml` spells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BindingRecord {
    module: String,
    subnet: String,
    role: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BindingsFile {
    #[serde(default, rename = "binding")]
    bindings: Vec<BindingRecord>,
}

/// Which file of a module.
#[derive(Debug, Clone, Copy)]
enum Which {
    Active,
    Previous,
}

impl ModuleStore {
    /// The store in `dir` (nothing is read or created until it is used).
    pub(crate) fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    /// The directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    fn bindings_path(&self) -> PathBuf {
        self.dir.join("bindings.toml")
    }

    fn module_path(&self, name: &str, which: Which) -> Result<PathBuf> {
        // Module names are [a-z0-9_-]{1,64} (the environment refuses others);
        // checked again here because the name becomes a file name.
        let safe = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !safe {
            bail!("module name {name:?} cannot name a state file");
        }
        let file = match which {
            Which::Active => format!("{name}.wasm"),
            Which::Previous => format!("{name}.previous.wasm"),
        };
        Ok(self.dir.join("modules").join(file))
    }

    /// The bindings an operator last left, or `None` when none was ever changed.
    pub(crate) fn bindings(&self) -> Result<Option<Vec<Binding>>> {
        let path = self.bindings_path();
        if !path.exists() {
            return Ok(None);
        }
        let bytes = crate::config::read_file(&path, MAX_BINDINGS_BYTES)?;
        let text = std::str::from_utf8(&bytes)
            .with_context(|| format!("{}: not UTF-8", path.display()))?;
        let file: BindingsFile =
            toml::from_str(text).with_context(|| format!("{}", path.display()))?;
        if file.bindings.len() > MAX_BINDINGS {
            bail!(
                "{}: {} bindings, at most {MAX_BINDINGS}",
                path.display(),
                file.bindings.len()
            );
        }
        let parse = |(i, r): (usize, BindingRecord)| -> Result<Binding> {
            let at = || format!("{}: binding[{i}]", path.display());
            Ok(Binding::new(
                r.subnet.parse::<VirtualSubnet>().with_context(at)?,
                r.role.parse::<Role>().with_context(at)?,
                r.module,
            ))
        };
        file.bindings
            .into_iter()
            .enumerate()
            .map(parse)
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// Keep `bindings` as the whole set.
    pub(crate) fn save_bindings(&self, bindings: &[Binding]) -> Result<()> {
        let file = BindingsFile {
            bindings: bindings
                .iter()
                .map(|b| BindingRecord {
                    module: b.module.clone(),
                    subnet: b.subnet.to_string(),
                    role: b.role.to_string(),
                })
                .collect(),
        };
        let text = format!(
            "# Written by the router on `pronto module bind|unbind`: every binding of its\n\
             # operator environment. While this file exists it replaces [modules] policy/cost.\n{}",
            toml::to_string(&file).context("serialising the bindings")?
        );
        self.replace(&self.bindings_path(), text.as_bytes())
    }

    /// `name` was loaded with `bytes`: it has no earlier version.
    pub(crate) fn loaded(&self, name: &str, bytes: &[u8]) -> Result<()> {
        self.remove_file(&self.module_path(name, Which::Previous)?)?;
        self.replace(&self.module_path(name, Which::Active)?, bytes)
    }

    /// `name` was swapped to `bytes`: the active file becomes the previous one
    /// (or, when the active version came from the configuration, no previous
    /// file stands for it).
    pub(crate) fn swapped(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let active = self.module_path(name, Which::Active)?;
        let previous = self.module_path(name, Which::Previous)?;
        if active.exists() {
            std::fs::rename(&active, &previous)
                .with_context(|| format!("renaming {}", active.display()))?;
        } else {
            self.remove_file(&previous)?;
        }
        self.replace(&active, bytes)
    }

    /// `name` was rolled back: active and previous change places (an absent
    /// file stands for the configuration's version). `false` when neither
    /// came from the API, so the store cannot record it.
    pub(crate) fn rolled_back(&self, name: &str) -> Result<bool> {
        let active = self.module_path(name, Which::Active)?;
        let previous = self.module_path(name, Which::Previous)?;
        let tmp = active.with_extension("swap");
        let rename = |from: &Path, to: &Path| {
            std::fs::rename(from, to).with_context(|| format!("renaming {}", from.display()))
        };
        match (active.exists(), previous.exists()) {
            (true, true) => {
                rename(&active, &tmp)?;
                rename(&previous, &active)?;
                rename(&tmp, &previous)?;
            }
            (true, false) => rename(&active, &previous)?,
            (false, true) => rename(&previous, &active)?,
            (false, false) => return Ok(false),
        }
        Ok(true)
    }

    /// `name` was removed: its files go.
    pub(crate) fn removed(&self, name: &str) -> Result<()> {
        self.remove_file(&self.module_path(name, Which::Active)?)?;
        self.remove_file(&self.module_path(name, Which::Previous)?)
    }

    /// Reinstall into `env` what the API left, over what the configuration
    /// installed; answers the names restored.
    pub(crate) fn restore(&self, env: &Environment) -> Result<Vec<String>> {
        let mut restored = Vec::new();
        for name in self.module_names()? {
            let read = |which| -> Result<Option<Vec<u8>>> {
                let p = self.module_path(&name, which)?;
                if !p.exists() {
                    return Ok(None);
                }
                crate::config::read_file(&p, MAX_MODULE_LEN as u64)
                    .map(Some)
                    .map_err(Into::into)
            };
            let (previous, active) = (read(Which::Previous)?, read(Which::Active)?);
            if let Some(bytes) = &previous {
                self.reinstall(env, &name, Which::Previous, bytes)?;
            }
            match &active {
                Some(bytes) => self.reinstall(env, &name, Which::Active, bytes)?,
                // The configuration's version was active when the router
                // stopped: back to it, unless the configuration no longer
                // installs one.
                None => match env.rollback(&name) {
                    Ok(_) => {}
                    Err(ManagerError::NoPreviousVersion { .. }) => warn!(
                        module = %name,
                        "[modules] files no longer install the version that was active; the kept previous one serves"
                    ),
                    Err(e) => {
                        return Err(e).with_context(|| {
                            format!("{}: rolling {name} back", self.dir.display())
                        });
                    }
                },
            }
            restored.push(name);
        }
        Ok(restored)
    }

    fn reinstall(&self, env: &Environment, name: &str, which: Which, bytes: &[u8]) -> Result<()> {
        let path = self.module_path(name, which)?;
        match env.install(bytes) {
            Ok(r) if r.name == name => {
                info!(module = %name, version = %r.active, file = %path.display(), "module restored from the state directory");
                Ok(())
            }
            Ok(r) => bail!(
                "{}: holds module {:?}, not {name:?}; remove the file",
                path.display(),
                r.name
            ),
            // Already the active version (the configuration installs it too).
            Err(ManagerError::DuplicateVersion { .. }) => Ok(()),
            Err(e) => Err(e).with_context(|| {
                format!(
                    "{} refused (a revoked or untrusted signer? remove the file to start without it)",
                    path.display()
                )
            }),
        }
    }

    /// Names with a file in `modules/`.
    fn module_names(&self) -> Result<BTreeSet<String>> {
        let dir = self.dir.join("modules");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
        };
        let mut names = BTreeSet::new();
        for e in entries {
            let e = e.with_context(|| format!("reading {}", dir.display()))?;
            let file = e.file_name();
            let Some(file) = file.to_str() else { continue };
            let name = file
                .strip_suffix(".previous.wasm")
                .or_else(|| file.strip_suffix(".wasm"));
            match name {
                Some(n) => {
                    names.insert(n.to_owned());
                }
                None => warn!(file = %e.path().display(), "not a module state file; ignored"),
            }
        }
        Ok(names)
    }

    /// Write `bytes` beside `path`, sync, and rename over it (mode 0600: the
    /// directory is the router's own).
    fn replace(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let tmp = path.with_extension("new");
        let _ = std::fs::remove_file(&tmp);
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().with_context(|| format!("writing {}", path.display()))
    }

    fn remove_file(&self, path: &Path) -> Result<()> {
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
}

#[cfg(test)]
mod tests;
