//! What the trust check hands to the VM and the manager: a module whose signature
//! and certificate chain verified, with the facts about its signer.

use crate::manifest::Manifest;
use std::time::SystemTime;

/// Facts about the certificate that signed a module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignerInfo {
    /// Subject distinguished name, as text.
    pub subject: String,
    /// Issuer distinguished name, as text.
    pub issuer: String,
    /// Serial number, hex.
    pub serial: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// Virtual subnets (CIDR text) the certificate allows its modules to govern,
    /// from URI SANs `urn:pronto:subnet:<cidr>`; empty means no restriction from
    /// the certificate (the environment may still confine it).
    pub subnets: Vec<String>,
}

/// A module that passed every check before compilation.
#[derive(Debug, Clone)]
pub struct VerifiedModule {
    /// The signed manifest.
    pub manifest: Manifest,
    /// The wasm bytes to compile (the file as signed, signature section removed).
    pub wasm: Vec<u8>,
    /// SHA-256 of the whole module file, for logs and `pronto module inspect`.
    pub digest: [u8; 32],
    /// Who signed it.
    pub signer: SignerInfo,
}
