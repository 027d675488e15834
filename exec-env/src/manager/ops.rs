//! The operations that change what an environment serves: load, swap, install
//! (either, for start-up), rollback and remove, each answering a typed report.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwapOption;

use super::health::{Counters, Health, bump};
use super::report::{
    InstallReport, LoadReport, RemoveReport, RollbackReport, SwapReport, VersionSummary,
};
use super::{
    CpuGate, Environment, Governs, ManagerError, Prepared, Scope, ScopeError, Slot, Version,
    Versions, parse_subnets, valid_name,
};
use crate::manifest::{Manifest, ModuleKind};
use crate::trust;
use crate::verified::{SignerInfo, VerifiedModule};

/// What a publish is for: whether the name must be new, must exist, or either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Intent {
    Load,
    Swap,
    Either,
}

impl Environment {
    /// Installs a signed module file whose name is not installed yet: verifies
    /// it against this environment's trust anchors, compiles and instantiates
    /// it off the packet path, then publishes it. Refuses
    /// ([`ManagerError::AlreadyLoaded`]) a name already installed.
    pub fn load(&self, bytes: &[u8]) -> Result<LoadReport, ManagerError> {
        let verified = self.verify(bytes)?;
        self.load_verified(verified)
    }

    /// [`Environment::load`] of a module already verified.
    pub fn load_verified(&self, module: VerifiedModule) -> Result<LoadReport, ManagerError> {
        let report = self.install_as(module, Intent::Load)?;
        Ok(LoadReport {
            environment: report.environment,
            name: report.name,
            loaded: report.active,
        })
    }

    /// Replaces an installed module by a new version of a signed file, in one
    /// atomic store; the version it replaces stays as the previous one (the
    /// fallback and rollback target). Refuses ([`ManagerError::NotLoaded`]) a
    /// name that is not installed, and the active version again
    /// ([`ManagerError::DuplicateVersion`]).
    pub fn swap(&self, bytes: &[u8]) -> Result<SwapReport, ManagerError> {
        let verified = self.verify(bytes)?;
        self.swap_verified(verified)
    }

    /// [`Environment::swap`] of a module already verified.
    pub fn swap_verified(&self, module: VerifiedModule) -> Result<SwapReport, ManagerError> {
        let name = module.manifest.name.clone();
        let report = self.install_as(module, Intent::Swap)?;
        // A swap publishes only over an active version, so one was replaced.
        let replaced = report.replaced.ok_or(ManagerError::NotLoaded { name })?;
        Ok(SwapReport {
            environment: report.environment,
            name: report.name,
            active: report.active,
            replaced,
        })
    }

    /// Loads or swaps, whichever applies: for a configuration read at start-up,
    /// where the file, not an operator, says what to install.
    pub fn install(&self, bytes: &[u8]) -> Result<InstallReport, ManagerError> {
        let verified = self.verify(bytes)?;
        self.install_verified(verified)
    }

    /// [`Environment::install`] of a module already verified.
    pub fn install_verified(&self, module: VerifiedModule) -> Result<InstallReport, ManagerError> {
        self.install_as(module, Intent::Either)
    }

    fn verify(&self, bytes: &[u8]) -> Result<VerifiedModule, ManagerError> {
        let verified = trust::verify(bytes, &self.inner.anchors, SystemTime::now());
        self.refused("(unverified)", verified.map_err(ManagerError::from))
    }

    fn install_as(
        &self,
        module: VerifiedModule,
        intent: Intent,
    ) -> Result<InstallReport, ManagerError> {
        let name = module.manifest.name.clone();
        // Refuse before the compile; the publish checks again under the lock.
        let result = self
            .expect(&name, intent)
            .and_then(|()| self.prepare_inner(module))
            .and_then(|prepared| self.publish_as(prepared, intent));
        self.refused(&name, result)
    }

    /// Whether `intent` may act on `name` as the environment holds it now.
    fn expect(&self, name: &str, intent: Intent) -> Result<(), ManagerError> {
        expect_in(&self.modules(), name, intent)
    }

    /// The slow part of an install, off the packet path: name and scope checks,
    /// compile, instantiate (which checks the ABI version and I/O buffer).
    pub fn prepare(&self, module: VerifiedModule) -> Result<Prepared, ManagerError> {
        let name = module.manifest.name.clone();
        let result = self.prepare_inner(module);
        self.refused(&name, result)
    }

    fn prepare_inner(&self, module: VerifiedModule) -> Result<Prepared, ManagerError> {
        let manifest = &module.manifest;
        if !valid_name(&manifest.name) {
            return Err(ManagerError::InvalidName {
                name: manifest.name.clone(),
            });
        }
        let caps = &self.inner.config.capabilities;
        let (governs, instance) = if manifest.kind == ModuleKind::Scheduler {
            // A rank function orders every class of a link, not one tenant's
            // subnets.
            if let Scope::Tenant { .. } = &self.inner.config.scope {
                return Err(ManagerError::SchedulerInTenant {
                    env: self.name().to_owned(),
                });
            }
            let compiled = self.inner.vm.compile_scheduler(&module, caps)?;
            (Governs::Any, compiled.instantiate()?)
        } else {
            let governs = self.check_scope(manifest, &module.signer)?;
            (governs, self.inner.vm.load(&module, caps)?)
        };
        Ok(Prepared {
            env: self.inner.id,
            version: Arc::new(Version {
                manifest: module.manifest,
                digest: module.digest,
                signer: module.signer,
                governs,
                instance,
                health: Health::new(),
            }),
        })
    }

    fn check_scope(&self, manifest: &Manifest, signer: &SignerInfo) -> Result<Governs, ScopeError> {
        let Scope::Tenant { allowed } = &self.inner.config.scope else {
            return Ok(Governs::Any);
        };
        if manifest.subnets.is_empty() {
            return Err(ScopeError::NoSubnets {
                module: manifest.name.clone(),
            });
        }
        let claimed = parse_subnets(&manifest.subnets, "manifest")?;
        let granted = parse_subnets(&signer.subnets, "certificate")?;
        if granted.is_empty() {
            return Err(ScopeError::CertificateNamesNoSubnets {
                signer: signer.subject.clone(),
            });
        }
        for subnet in &claimed {
            if !granted.iter().any(|g| g.covers(subnet)) {
                return Err(ScopeError::NotInCertificate { subnet: *subnet });
            }
            if !allowed.iter().any(|a| a.covers(subnet)) {
                return Err(ScopeError::OutsideEnvironment { subnet: *subnet });
            }
        }
        Ok(Governs::Subnets(claimed))
    }

    /// Publishes a prepared module as the active version of its name in one
    /// atomic store (a load when the name is new, else a swap); the version it
    /// replaces becomes the previous one.
    pub fn publish(&self, prepared: Prepared) -> Result<InstallReport, ManagerError> {
        let name = prepared.name().to_owned();
        let result = self.publish_as(prepared, Intent::Either);
        self.refused(&name, result)
    }

    fn publish_as(
        &self,
        prepared: Prepared,
        intent: Intent,
    ) -> Result<InstallReport, ManagerError> {
        if prepared.env != self.inner.id {
            return Err(ManagerError::ForeignPreparation);
        }
        let version = prepared.version;
        let name = version.manifest.name.clone();
        let mut modules = self.modules();
        // Checked again under the lock: another operation may have run since.
        expect_in(&modules, &name, intent)?;
        let slot = match modules.get(&name) {
            Some(slot) => Arc::clone(slot),
            None => {
                let slot = self.new_slot(modules.len(), &name)?;
                modules.insert(name.clone(), Arc::clone(&slot));
                slot
            }
        };
        let current = slot.versions.load_full();
        if let (Scope::Tenant { .. }, Some(current)) = (&self.inner.config.scope, &current)
            && current.active.signer.subject != version.signer.subject
        {
            return Err(ManagerError::OtherSigner {
                name,
                owner: current.active.signer.subject.clone(),
                signer: version.signer.subject.clone(),
            });
        }
        if let Some(current) = &current
            && current.active.manifest.version == version.manifest.version
        {
            return Err(ManagerError::DuplicateVersion {
                name,
                version: version.manifest.version.clone(),
            });
        }
        let report = InstallReport {
            environment: self.name().to_owned(),
            name: name.clone(),
            active: VersionSummary::of(&version),
            replaced: current.as_ref().map(|c| VersionSummary::of(&c.active)),
        };
        // The old previous version drops out of the pair: retire it.
        self.retire(current.as_ref().and_then(|c| c.previous.clone()));
        slot.versions.store(Some(Arc::new(Versions {
            active: version,
            previous: current.map(|c| Arc::clone(&c.active)),
        })));
        self.reap();
        bump(&self.inner.counters.installs);
        if report.replaced.is_some() {
            bump(&slot.counters.swaps);
        }
        tracing::info!(env = %self.name(), module = %name, version = %report.active,
            replaced = ?report.replaced.as_ref().map(ToString::to_string), "module installed");
        Ok(report)
    }

    /// A slot for a new module name, within [`super::EnvironmentConfig::max_modules`]
    /// and with a share of the CPU budget.
    fn new_slot(&self, held: usize, name: &str) -> Result<Arc<Slot>, ManagerError> {
        if held >= self.inner.config.max_modules {
            return Err(ManagerError::TooManyModules {
                limit: self.inner.config.max_modules,
            });
        }
        let cpu = self
            .inner
            .budget
            .lock()
            .add_module(self.inner.cpu_env, self.inner.config.module_weight)?;
        Ok(Arc::new(Slot {
            name: name.to_owned(),
            versions: ArcSwapOption::empty(),
            cpu: CpuGate::new(cpu),
            budget: Arc::clone(&self.inner.budget),
            counters: Counters::default(),
        }))
    }

    /// Makes the previous version active again (and the active one previous).
    /// Refuses an unknown name ([`ManagerError::UnknownModule`]) and a module
    /// with nothing to go back to ([`ManagerError::NoPreviousVersion`]).
    pub fn rollback(&self, name: &str) -> Result<RollbackReport, ManagerError> {
        let modules = self.modules();
        let current = modules
            .get(name)
            .and_then(|slot| slot.versions.load_full().map(|v| (slot, v)));
        let Some((slot, current)) = current else {
            return Err(ManagerError::UnknownModule {
                name: name.to_owned(),
            });
        };
        let Some(previous) = &current.previous else {
            return Err(ManagerError::NoPreviousVersion {
                name: name.to_owned(),
            });
        };
        slot.versions.store(Some(Arc::new(Versions {
            active: Arc::clone(previous),
            previous: Some(Arc::clone(&current.active)),
        })));
        bump(&slot.counters.rollbacks);
        let report = RollbackReport {
            environment: self.name().to_owned(),
            name: name.to_owned(),
            active: VersionSummary::of(previous),
            replaced: VersionSummary::of(&current.active),
        };
        // Nothing leaves the pair on a rollback, but versions retired by an
        // earlier operation while a call held them can go now.
        drop(current);
        self.reap();
        tracing::info!(env = %self.name(), module = %name, version = %report.active,
            "module rolled back");
        Ok(report)
    }

    /// Removes a module; handles bound to it answer `Unavailable` (so the engine
    /// uses its built-in policy) until a module of that name is loaded again,
    /// and its bindings stay so that a reload serves them. While such handles
    /// live, the name still counts towards
    /// [`super::EnvironmentConfig::max_modules`].
    pub fn remove(&self, name: &str) -> Result<RemoveReport, ManagerError> {
        let mut modules = self.modules();
        let gone = modules
            .get(name)
            .and_then(|slot| slot.versions.swap(None).map(|v| (slot, v)));
        let Some((slot, gone)) = gone else {
            return Err(ManagerError::UnknownModule {
                name: name.to_owned(),
            });
        };
        let report = RemoveReport {
            environment: self.name().to_owned(),
            name: name.to_owned(),
            removed: VersionSummary::of(&gone.active),
            previous: gone.previous.as_deref().map(VersionSummary::of),
            bindings: self.bindings_of(name),
        };
        self.retire(Some(Arc::clone(&gone.active)));
        self.retire(gone.previous.clone());
        drop(gone);
        self.reap();
        // Keep the slot while handles hold it, so a reinstall reaches them.
        if Arc::strong_count(slot) == 1 {
            modules.remove(name);
        }
        bump(&self.inner.counters.removals);
        tracing::info!(env = %self.name(), module = %name, "module removed");
        Ok(report)
    }
}

/// Whether `intent` may act on `name` in `modules`: a load needs a free name, a
/// swap an active version.
fn expect_in(
    modules: &BTreeMap<String, Arc<Slot>>,
    name: &str,
    intent: Intent,
) -> Result<(), ManagerError> {
    let active = modules
        .get(name)
        .and_then(|s| s.versions.load_full())
        .map(|v| v.active.manifest.version.clone());
    match (intent, active) {
        (Intent::Load, Some(version)) => Err(ManagerError::AlreadyLoaded {
            name: name.to_owned(),
            version,
        }),
        (Intent::Swap, None) => Err(ManagerError::NotLoaded {
            name: name.to_owned(),
        }),
        _ => Ok(()),
    }
}
