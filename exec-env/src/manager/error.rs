//! Why an operation failed, and what to do about it.

use router_core::classify::{SubnetError, VirtualSubnet};

use super::Role;
use crate::trust::VerifyError;
use crate::vm::VmError;
use resource_mgr::BudgetError;

/// Why a module's subnets are not acceptable in a tenant environment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScopeError {
    /// A tenant module must say which subnets it governs.
    #[error("tenant module {module} names no subnets in its manifest")]
    NoSubnets {
        /// Module name.
        module: String,
    },
    /// A subnet in the manifest or certificate does not parse.
    #[error("bad subnet in the {place}")]
    Syntax {
        /// `manifest` or `certificate`.
        place: &'static str,
        /// The parse error.
        #[source]
        source: SubnetError,
    },
    /// In a tenant environment the signer's certificate must name the subnets it
    /// may sign for; one that names none is refused (fail closed).
    #[error("signer {signer} names no subnets; a tenant environment needs them")]
    CertificateNamesNoSubnets {
        /// Signer subject.
        signer: String,
    },
    /// The manifest claims a subnet the certificate does not grant.
    #[error("subnet {subnet} is not granted by the signer's certificate")]
    NotInCertificate {
        /// The subnet.
        subnet: VirtualSubnet,
    },
    /// The subnet is outside the environment's allowed list.
    #[error("subnet {subnet} is outside this environment's subnets")]
    OutsideEnvironment {
        /// The subnet.
        subnet: VirtualSubnet,
    },
    /// The active version of a module does not govern the subnet asked for.
    #[error("module {module} does not govern subnet {subnet}")]
    NotGoverned {
        /// Module name.
        module: String,
        /// The subnet.
        subnet: VirtualSubnet,
    },
}

/// Why a manager operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManagerError {
    /// The signature or chain did not verify.
    #[error("module refused: {0}")]
    Verify(#[from] VerifyError),
    /// The module could not be compiled or instantiated.
    #[error("module refused: {0}")]
    Vm(#[from] VmError),
    /// The module may not govern the subnets it claims.
    #[error("module refused: {0}")]
    Scope(#[from] ScopeError),
    /// Module names are `[a-z0-9_-]{1,64}`.
    #[error("invalid module name {name:?} (expected [a-z0-9_-]{{1,64}})")]
    InvalidName {
        /// The name.
        name: String,
    },
    /// No module of that name is installed.
    #[error("no module named {name} is installed")]
    UnknownModule {
        /// The name.
        name: String,
    },
    /// [`super::EnvironmentConfig::max_modules`] reached.
    #[error("environment already holds {limit} modules")]
    TooManyModules {
        /// The limit.
        limit: usize,
    },
    /// This version is already the active one.
    #[error("{name} {version} is already active")]
    DuplicateVersion {
        /// Module name.
        name: String,
        /// Version.
        version: semver::Version,
    },
    /// Nothing to roll back to.
    #[error("{name} has no previous version")]
    NoPreviousVersion {
        /// Module name.
        name: String,
    },
    /// A [`super::Prepared`] module from another environment.
    #[error("module was prepared by another environment")]
    ForeignPreparation,
    /// The CPU budget refused (too many modules or environments).
    #[error("CPU budget: {0}")]
    Budget(#[from] BudgetError),
    /// A load of a name already installed.
    #[error("module {name} is already installed (version {version})")]
    AlreadyLoaded {
        /// Module name.
        name: String,
        /// The active version.
        version: semver::Version,
    },
    /// A swap of a name that is not installed.
    #[error("module {name} is not installed, so there is nothing to swap")]
    NotLoaded {
        /// Module name.
        name: String,
    },
    /// A binding to a module that exports no entry point for the role.
    #[error(
        "module {name} cannot serve the {role} role: its active version exports no entry point for it"
    )]
    WrongRole {
        /// Module name.
        name: String,
        /// The role asked for.
        role: Role,
    },
    /// In a tenant environment, a new version of a module signed by another
    /// signer than its active version: names are the signer's.
    #[error("module {name} belongs to signer {owner}; {signer} may not replace it")]
    OtherSigner {
        /// Module name.
        name: String,
        /// Subject of the active version's signer.
        owner: String,
        /// Subject of the new version's signer.
        signer: String,
    },
    /// A scheduler module offered to a tenant environment.
    #[error(
        "environment {env} is a tenant environment; scheduler modules rank a whole link and need the operator's"
    )]
    SchedulerInTenant {
        /// The environment.
        env: String,
    },
    /// A scheduler binding under a subnet: a rank function orders the whole
    /// link ([`Role::LINK`]).
    #[error("a scheduler module ranks the whole link, not {subnet}")]
    LinkOnly {
        /// The subnet asked for.
        subnet: VirtualSubnet,
    },
    /// An unbind of a subnet and role no module is bound to.
    #[error("no module is bound to {subnet} in the {role} role")]
    NotBound {
        /// The subnet.
        subnet: VirtualSubnet,
        /// The role.
        role: Role,
    },
}

impl ManagerError {
    /// What an operator can do about it, in a sentence.
    pub fn hint(&self) -> &'static str {
        match self {
            Self::Verify(VerifyError::Unsigned) => {
                "sign it: pronto module sign --key signer.key --chain signer.pem --manifest M.toml IN.wasm -o OUT.wasm"
            }
            Self::Verify(VerifyError::NoTrustAnchors) => {
                "configure the environment's trust_anchors ([modules] or [[environment]]) with the CA of your module signers"
            }
            Self::Verify(VerifyError::Revoked) => {
                "a CRL of this environment revokes the signer: sign with a signer that is not revoked \
                 (`pronto module verify --trust CA.pem --crl CRL.pem FILE` shows the verdict locally)"
            }
            Self::Verify(_) => {
                "sign it with a signer of a CA in this environment's trust_anchors ([modules] or [[environment]]); \
                 `pronto module verify --trust CA.pem FILE` shows the verdict locally"
            }
            Self::Vm(VmError::Limit(limit)) => limit.hint(),
            Self::Vm(VmError::ModuleTooLarge { .. }) => {
                "shrink the module (opt-level \"s\", LTO, strip unused code), or raise the environment's module size limit"
            }
            Self::Vm(_) => {
                "the module does not compile or instantiate here: build it for wasm32-unknown-unknown with this sdk (scripts/build-wasm.sh)"
            }
            Self::Scope(_) => {
                "the manifest's subnets must be granted by the signer's certificate and the environment"
            }
            Self::InvalidName { .. } => "module names are 1-64 of [a-z0-9_-]",
            Self::UnknownModule { .. } => "`pronto query modules` lists the installed modules",
            Self::TooManyModules { .. } => "remove a module first (`pronto module remove`)",
            Self::DuplicateVersion { .. } => "bump the version in the manifest and sign again",
            Self::NoPreviousVersion { .. } => {
                "a rollback needs an earlier version: swap one in first"
            }
            Self::ForeignPreparation => "prepare the module with the environment that publishes it",
            Self::Budget(_) => {
                "raise the environment's CPU budget or its module limit, or remove a module"
            }
            Self::AlreadyLoaded { .. } => {
                "use `pronto module swap` to replace it with a new version"
            }
            Self::NotLoaded { .. } => "use `pronto module load` to install it",
            Self::WrongRole { .. } => {
                "bind a module that exports pronto_select (policy role), pronto_cost and pronto_aggregate (cost role) or pronto_rank (scheduler role)"
            }
            Self::OtherSigner { .. } => {
                "sign the new version with the signer of the active one, or load it under a name of its own"
            }
            Self::LinkOnly { .. } => "bind scheduler modules without a subnet (0.0.0.0/0)",
            Self::SchedulerInTenant { .. } => {
                "load scheduler modules into the operator environment (no --env)"
            }
            Self::NotBound { .. } => {
                "`pronto query modules` lists each module's bindings; unbind the exact prefix and role shown there"
            }
        }
    }
}
