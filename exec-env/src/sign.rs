//! Signing a module file: a PKCS#8 key (Ed25519 or ECDSA P-256) and the signer's
//! certificate chain turn an unsigned module (wasm + manifest) into the one-file
//! artifact of [`crate::format`].
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use exec_env::{format, sign};
//! let key = sign::ModuleSigningKey::from_pem_file("ca/signer.key".as_ref())?;
//! let chain = sign::chain_from_pem_file("ca/signer.pem".as_ref())?;
//! let manifest = format::parse_manifest(&std::fs::read_to_string("least_load.toml")?)?;
//! let unsigned = format::embed_manifest(&std::fs::read("least_load.wasm")?, &manifest)?;
//! let signed = sign::sign_module(&unsigned, &key, chain)?;
//! # let _ = signed; Ok(()) }
//! ```

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use webpki::EndEntityCert;

use crate::format::{self, FormatError, SignatureAlgorithm, SignatureBlock};

/// Largest key or certificate PEM file read, in bytes.
pub const MAX_PEM_FILE_LEN: u64 = 256 * 1024;

/// Errors while loading keys and chains or signing a module.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file is larger than [`MAX_PEM_FILE_LEN`].
    #[error("{path} is larger than {MAX_PEM_FILE_LEN} bytes")]
    FileTooLarge {
        /// The file.
        path: PathBuf,
    },
    /// No PKCS#8 `PRIVATE KEY` block in the PEM text.
    #[error(
        "no PKCS#8 PRIVATE KEY in the PEM text ({source}); convert other forms with \
         `openssl pkcs8 -topk8 -nocrypt`"
    )]
    KeyPem {
        /// What the PEM reader found.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The key is neither Ed25519 nor ECDSA P-256.
    #[error("key is neither Ed25519 nor ECDSA P-256 (PKCS#8)")]
    UnsupportedKey,
    /// The certificate PEM holds no usable certificate.
    #[error("certificate chain PEM: {reason}")]
    ChainPem {
        /// What was wrong.
        reason: String,
    },
    /// The chain is empty.
    #[error("the signer chain is empty; give the signer certificate first")]
    EmptyChain,
    /// The leaf certificate does not parse.
    #[error("signer certificate does not parse: {source}")]
    Certificate {
        /// What webpki found.
        #[source]
        source: webpki::Error,
    },
    /// The key does not belong to the leaf certificate, or its algorithm does not
    /// match the certificate's key.
    #[error(
        "the signing key does not match the signer certificate ({algorithm} signature rejected by its public key)"
    )]
    KeyDoesNotMatchCertificate {
        /// The key's algorithm.
        algorithm: SignatureAlgorithm,
    },
    /// A certificate of the chain expired before `now`: every environment
    /// would refuse the signed module (its chain is checked at load time).
    #[error(
        "certificate {subject:?} of the signer chain expired at {} (now {}): every router \
         would refuse a module signed with it; issue a current signer (`pronto ca init`) \
         or pass --force to sign anyway (e.g. to test the refusal)",
        crate::trust::utc(*not_after),
        crate::trust::utc(*now)
    )]
    SignerExpired {
        /// Subject of the expired certificate.
        subject: String,
        /// Its end of validity.
        not_after: SystemTime,
        /// The time of the check.
        now: SystemTime,
    },
    /// A certificate of the chain is not valid yet at `now`.
    #[error(
        "certificate {subject:?} of the signer chain is not valid before {} (now {}): routers \
         would refuse a module signed with it until then; check this machine's clock, wait, \
         or pass --force to sign anyway",
        crate::trust::utc(*not_before),
        crate::trust::utc(*now)
    )]
    SignerNotYetValid {
        /// Subject of the certificate.
        subject: String,
        /// Its start of validity.
        not_before: SystemTime,
        /// The time of the check.
        now: SystemTime,
    },
    /// The cryptographic operation failed.
    #[error("signing failed")]
    Crypto,
    /// The module file is malformed or already signed.
    #[error(transparent)]
    Format(#[from] FormatError),
}

/// Key material behind a [`ModuleSigningKey`].
enum KeyInner {
    Ed25519(Ed25519KeyPair),
    EcdsaP256(EcdsaKeyPair),
}

/// A private key that signs modules.
pub struct ModuleSigningKey {
    inner: KeyInner,
    rng: SystemRandom,
}

impl fmt::Debug for ModuleSigningKey {
    /// Never prints key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModuleSigningKey")
            .field("algorithm", &self.algorithm())
            .finish_non_exhaustive()
    }
}

impl ModuleSigningKey {
    /// A key from PKCS#8 DER (v1 or v2 for Ed25519; P-256 for ECDSA).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, SignError> {
        let rng = SystemRandom::new();
        // Accept v1 PKCS#8 too (what `openssl genpkey -algorithm ed25519` writes).
        if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            return Ok(Self {
                inner: KeyInner::Ed25519(k),
                rng,
            });
        }
        match EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, der, &rng) {
            Ok(k) => Ok(Self {
                inner: KeyInner::EcdsaP256(k),
                rng,
            }),
            Err(_) => Err(SignError::UnsupportedKey),
        }
    }

    /// A key from PEM text holding a PKCS#8 `PRIVATE KEY` block.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, SignError> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|source| SignError::KeyPem { source })?;
        Self::from_pkcs8_der(der.secret_pkcs8_der())
    }

    /// A key from a PKCS#8 PEM file.
    pub fn from_pem_file(path: &Path) -> Result<Self, SignError> {
        let bytes = read_bounded(path)?;
        let der = PrivatePkcs8KeyDer::from_pem_slice(&bytes)
            .map_err(|source| SignError::KeyPem { source })?;
        Self::from_pkcs8_der(der.secret_pkcs8_der())
    }

    /// The algorithm this key signs with.
    pub fn algorithm(&self) -> SignatureAlgorithm {
        match self.inner {
            KeyInner::Ed25519(_) => SignatureAlgorithm::Ed25519,
            KeyInner::EcdsaP256(_) => SignatureAlgorithm::EcdsaP256Sha256,
        }
    }

    /// The raw public key (Ed25519: 32 bytes; P-256: uncompressed point).
    pub fn public_key(&self) -> &[u8] {
        match &self.inner {
            KeyInner::Ed25519(k) => k.public_key().as_ref(),
            KeyInner::EcdsaP256(k) => k.public_key().as_ref(),
        }
    }

    /// Sign `msg` as [`Self::algorithm`] defines it.
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, SignError> {
        match &self.inner {
            KeyInner::Ed25519(k) => Ok(k.sign(msg).as_ref().to_vec()),
            KeyInner::EcdsaP256(k) => k
                .sign(&self.rng, msg)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| SignError::Crypto),
        }
    }
}

/// The webpki verification algorithm matching a module signature algorithm.
pub(crate) fn verification_alg(
    alg: SignatureAlgorithm,
) -> &'static dyn rustls_pki_types::SignatureVerificationAlgorithm {
    match alg {
        SignatureAlgorithm::Ed25519 => webpki::ring::ED25519,
        SignatureAlgorithm::EcdsaP256Sha256 => webpki::ring::ECDSA_P256_SHA256,
    }
}

/// Sign an unsigned module file (wasm with a `pronto.manifest` section).
///
/// `chain` is the signer's certificate first, then any intermediates; the key
/// must belong to the first certificate (checked here, so a wrong key fails at
/// signing time rather than at every router that loads the module). Whether the
/// chain is trusted is decided by each environment at load time.
pub fn sign_module(
    wasm_with_manifest: &[u8],
    key: &ModuleSigningKey,
    chain: Vec<CertificateDer<'_>>,
) -> Result<Vec<u8>, SignError> {
    let file = format::parse(wasm_with_manifest)?;
    if file.signature().is_some() {
        return Err(FormatError::AlreadySigned.into());
    }
    let leaf = chain.first().ok_or(SignError::EmptyChain)?;
    let leaf = EndEntityCert::try_from(leaf).map_err(|source| SignError::Certificate { source })?;
    let message = file.signed_bytes();
    let algorithm = key.algorithm();
    let signature = key.sign(message)?;
    leaf.verify_signature(verification_alg(algorithm), message, &signature)
        .map_err(|_| SignError::KeyDoesNotMatchCertificate { algorithm })?;
    let block = SignatureBlock {
        algorithm,
        signature: &signature,
        chain,
    };
    let out = format::attach_signature(wasm_with_manifest, &block)?;
    tracing::info!(
        module = %file.manifest().name,
        version = %file.manifest().version,
        algorithm = %algorithm,
        bytes = out.len(),
        "module signed"
    );
    Ok(out)
}

/// Whether every certificate of a signer `chain` is within its validity period
/// at `now` (what `pronto module sign` checks before signing, so an expired
/// signer is noticed by its owner rather than by every router that refuses the
/// module). Trust is not checked here; that is each environment's decision.
pub fn check_chain_validity(
    chain: &[CertificateDer<'_>],
    now: SystemTime,
) -> Result<(), SignError> {
    if chain.is_empty() {
        return Err(SignError::EmptyChain);
    }
    for cert in chain {
        let info = crate::trust::describe_certificate(cert).map_err(|e| SignError::ChainPem {
            reason: e.to_string(),
        })?;
        if now < info.not_before {
            return Err(SignError::SignerNotYetValid {
                subject: info.subject,
                not_before: info.not_before,
                now,
            });
        }
        if now > info.not_after {
            return Err(SignError::SignerExpired {
                subject: info.subject,
                not_after: info.not_after,
                now,
            });
        }
    }
    Ok(())
}

/// Certificates from PEM text, in file order (leaf first for a signer chain).
pub fn chain_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, SignError> {
    let mut chain = Vec::new();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| SignError::ChainPem {
            reason: e.to_string(),
        })?;
        if chain.len() == format::MAX_CHAIN_CERTS {
            return Err(SignError::ChainPem {
                reason: format!("more than {} certificates", format::MAX_CHAIN_CERTS),
            });
        }
        chain.push(cert);
    }
    if chain.is_empty() {
        return Err(SignError::ChainPem {
            reason: "no CERTIFICATE block".into(),
        });
    }
    Ok(chain)
}

/// Certificates from a PEM file, in file order.
pub fn chain_from_pem_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, SignError> {
    chain_from_pem(&read_bounded(path)?)
}

/// Read a small file whole, refusing anything over [`MAX_PEM_FILE_LEN`].
pub(crate) fn read_bounded(path: &Path) -> Result<Vec<u8>, SignError> {
    let io = |source| SignError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_PEM_FILE_LEN {
        return Err(SignError::FileTooLarge {
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}
