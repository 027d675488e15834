//! Trust: is this module file signed by someone this environment trusts?
//!
//! Each environment has its own [`TrustAnchors`] (one or more CA certificates,
//! optionally CRLs). An empty set fails closed: every module is refused with
//! [`VerifyError::NoTrustAnchors`]. [`verify`] runs, in order and before anything
//! is compiled:
//!
//! 1. structure ([`crate::format::parse`]): manifest present and valid, signature
//!    section last;
//! 2. the chain, with rustls-webpki: leaf and intermediates lead to an anchor,
//!    every certificate in the path is within its validity period at `now`, none
//!    is revoked by a configured CRL, and the extended key usage allows code
//!    signing;
//! 3. the leaf itself must *carry* the codeSigning EKU (webpki's
//!    [`webpki::KeyUsage::required`] would also demand it of every intermediate,
//!    which CAs without an EKU extension do not carry, so the path is checked with
//!    `required_if_present` and the leaf's presence separately here) and, if it
//!    has a KeyUsage extension, `digitalSignature`;
//! 4. the signature over the signed bytes, with the leaf's public key.
//!
//! Every refusal is counted per reason in the anchors' [`VerifyCounters`].
//!
//! Not checked here: the anchors' own validity period (as in webpki and RFC 5280
//! §6.1, an anchor is trusted until it is removed from the configuration), and
//! whether the manifest's subnets lie inside the signer's
//! ([`SignerInfo::subnets`]); that confinement is the environment's rule.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use router_core::VirtualSubnet;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, SignatureVerificationAlgorithm, TrustAnchor,
    UnixTime,
};
use webpki::{
    CertRevocationList, EndEntityCert, ExpirationPolicy, KeyUsage, OwnedCertRevocationList,
    RevocationCheckDepth, RevocationOptionsBuilder, UnknownStatusPolicy,
};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::format::{self, FormatError, SignatureAlgorithm};
use crate::sign::{SignError, read_bounded, verification_alg};
use crate::verified::{SignerInfo, VerifiedModule};

/// id-kp-codeSigning (1.3.6.1.5.5.7.3.3), DER content octets of the OID.
pub const EKU_CODE_SIGNING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03];
/// URI SAN prefix naming a virtual subnet a signer may govern.
pub const SUBNET_URI_PREFIX: &str = "urn:pronto:subnet:";
/// Context tag of a uniformResourceIdentifier GeneralName (RFC 5280 §4.2.1.6).
const URI_SAN_TAG: u32 = 6;
/// Most trust anchors per environment.
pub const MAX_ANCHORS: usize = 64;
/// Most CRLs per environment.
pub const MAX_CRLS: usize = 64;

/// Algorithms accepted for certificate (and CRL) signatures in the chain. Module
/// signatures themselves are Ed25519 or ECDSA P-256 only.
static CHAIN_ALGS: &[&dyn SignatureVerificationAlgorithm] = &[
    webpki::ring::ED25519,
    webpki::ring::ECDSA_P256_SHA256,
    webpki::ring::ECDSA_P256_SHA384,
    webpki::ring::ECDSA_P384_SHA256,
    webpki::ring::ECDSA_P384_SHA384,
    webpki::ring::RSA_PKCS1_2048_8192_SHA256,
    webpki::ring::RSA_PKCS1_2048_8192_SHA384,
    webpki::ring::RSA_PKCS1_2048_8192_SHA512,
    webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
    webpki::ring::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
    webpki::ring::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
];

/// Errors while loading trust anchors or CRLs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// A file could not be read.
    #[error(transparent)]
    Read(#[from] SignError),
    /// The PEM text is malformed.
    #[error("PEM: {reason}")]
    Pem {
        /// What was wrong.
        reason: String,
    },
    /// The PEM text holds no block of the expected kind.
    #[error("no {kind} block in the PEM text")]
    Empty {
        /// `CERTIFICATE` or `X509 CRL`.
        kind: &'static str,
    },
    /// A CA certificate cannot serve as a trust anchor.
    #[error("CA certificate {index} is not usable as a trust anchor: {source}")]
    Anchor {
        /// Position in the PEM text.
        index: usize,
        /// What webpki found.
        #[source]
        source: webpki::Error,
    },
    /// A CRL does not parse.
    #[error("CRL {index} does not parse: {source}")]
    Crl {
        /// Position in the PEM text.
        index: usize,
        /// What webpki found.
        #[source]
        source: webpki::Error,
    },
    /// Too many anchors or CRLs.
    #[error("more than {max} {kind}")]
    TooMany {
        /// What overflowed.
        kind: &'static str,
        /// The bound.
        max: usize,
    },
}

/// Why a module was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The environment has no trust anchors: it refuses everything.
    #[error(
        "no trust anchors configured: every module is refused (configure the CA certificate of the signers you trust)"
    )]
    NoTrustAnchors,
    /// The file's structure is wrong.
    #[error("malformed module file: {0}")]
    Format(#[from] FormatError),
    /// The file has no signature section.
    #[error(
        "module is unsigned (no {} section); sign it with `pronto module sign`",
        format::SIGNATURE_SECTION
    )]
    Unsigned,
    /// The signer's chain does not lead to a trust anchor of this environment.
    #[error(
        "signer certificate is not trusted here: {} ({reason})",
        explain(reason)
    )]
    UntrustedChain {
        /// What webpki found.
        #[source]
        reason: webpki::Error,
    },
    /// A certificate in the chain expired before `now`.
    #[error(
        "signer certificate chain expired at {} (now {}); sign with a current signer certificate",
        utc(*not_after),
        utc(*now)
    )]
    Expired {
        /// End of validity of the expired certificate.
        not_after: SystemTime,
        /// The time of the check.
        now: SystemTime,
    },
    /// A certificate in the chain is not valid yet at `now`.
    #[error(
        "signer certificate chain not valid before {} (now {}); check this router's clock or wait",
        utc(*not_before),
        utc(*now)
    )]
    NotYetValid {
        /// Start of validity of the certificate.
        not_before: SystemTime,
        /// The time of the check.
        now: SystemTime,
    },
    /// The signer's certificate is not for code signing.
    #[error("signer certificate is not for code signing: {reason}")]
    WrongKeyUsage {
        /// What is missing.
        reason: String,
    },
    /// The signature does not verify over the module bytes (tampered, or signed
    /// by another key).
    #[error("{algorithm} signature does not match the module bytes (tampered or wrong key)")]
    BadSignature {
        /// The algorithm named in the signature block.
        algorithm: SignatureAlgorithm,
    },
    /// A certificate in the chain is revoked by a configured CRL.
    #[error("signer certificate chain is revoked by a configured CRL")]
    Revoked,
    /// A certificate passed the chain check but its fields are unusable.
    #[error("signer certificate unusable: {reason}")]
    InvalidCertificate {
        /// What is wrong.
        reason: String,
    },
    /// The clock given is before 1970.
    #[error("verification time is before the Unix epoch")]
    ClockBeforeEpoch,
}

/// The reason of a refusal, for counters and metrics labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum VerifyFailure {
    /// [`VerifyError::NoTrustAnchors`].
    NoTrustAnchors,
    /// [`VerifyError::Format`].
    Format,
    /// [`VerifyError::Unsigned`].
    Unsigned,
    /// [`VerifyError::UntrustedChain`].
    UntrustedChain,
    /// [`VerifyError::Expired`].
    Expired,
    /// [`VerifyError::NotYetValid`].
    NotYetValid,
    /// [`VerifyError::WrongKeyUsage`].
    WrongKeyUsage,
    /// [`VerifyError::BadSignature`].
    BadSignature,
    /// [`VerifyError::Revoked`].
    Revoked,
    /// [`VerifyError::InvalidCertificate`] and [`VerifyError::ClockBeforeEpoch`].
    InvalidCertificate,
}

impl VerifyFailure {
    /// Every reason, in counter order.
    pub const ALL: [Self; 10] = [
        Self::NoTrustAnchors,
        Self::Format,
        Self::Unsigned,
        Self::UntrustedChain,
        Self::Expired,
        Self::NotYetValid,
        Self::WrongKeyUsage,
        Self::BadSignature,
        Self::Revoked,
        Self::InvalidCertificate,
    ];

    /// A stable snake_case label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoTrustAnchors => "no_trust_anchors",
            Self::Format => "format",
            Self::Unsigned => "unsigned",
            Self::UntrustedChain => "untrusted_chain",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongKeyUsage => "wrong_key_usage",
            Self::BadSignature => "bad_signature",
            Self::Revoked => "revoked",
            Self::InvalidCertificate => "invalid_certificate",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::NoTrustAnchors => 0,
            Self::Format => 1,
            Self::Unsigned => 2,
            Self::UntrustedChain => 3,
            Self::Expired => 4,
            Self::NotYetValid => 5,
            Self::WrongKeyUsage => 6,
            Self::BadSignature => 7,
            Self::Revoked => 8,
            Self::InvalidCertificate => 9,
        }
    }
}

impl VerifyError {
    /// The counter this refusal increments.
    pub fn failure(&self) -> VerifyFailure {
        match self {
            Self::NoTrustAnchors => VerifyFailure::NoTrustAnchors,
            Self::Format(_) => VerifyFailure::Format,
            Self::Unsigned => VerifyFailure::Unsigned,
            Self::UntrustedChain { .. } => VerifyFailure::UntrustedChain,
            Self::Expired { .. } => VerifyFailure::Expired,
            Self::NotYetValid { .. } => VerifyFailure::NotYetValid,
            Self::WrongKeyUsage { .. } => VerifyFailure::WrongKeyUsage,
            Self::BadSignature { .. } => VerifyFailure::BadSignature,
            Self::Revoked => VerifyFailure::Revoked,
            Self::InvalidCertificate { .. } | Self::ClockBeforeEpoch => {
                VerifyFailure::InvalidCertificate
            }
        }
    }
}

/// Verification outcomes of one set of anchors, by reason.
#[derive(Debug, Default)]
pub struct VerifyCounters {
    verified: AtomicU64,
    refused: [AtomicU64; VerifyFailure::ALL.len()],
}

impl VerifyCounters {
    /// Modules that passed every check.
    pub fn verified(&self) -> u64 {
        self.verified.load(Ordering::Relaxed)
    }

    /// Modules refused for `reason`.
    pub fn refused(&self, reason: VerifyFailure) -> u64 {
        self.refused
            .get(reason.index())
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Modules refused for any reason.
    pub fn refused_total(&self) -> u64 {
        VerifyFailure::ALL.iter().map(|r| self.refused(*r)).sum()
    }

    fn count(&self, result: &Result<VerifiedModule, VerifyError>) {
        let counter = match result {
            Ok(_) => &self.verified,
            Err(e) => match self.refused.get(e.failure().index()) {
                Some(c) => c,
                None => return,
            },
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The CA certificates (and CRLs) one environment trusts for module signers.
#[derive(Debug, Default)]
pub struct TrustAnchors {
    anchors: Vec<TrustAnchor<'static>>,
    crls: Vec<CertRevocationList<'static>>,
    counters: VerifyCounters,
}

impl TrustAnchors {
    /// No anchors: every module is refused (fail closed).
    pub fn empty() -> Self {
        Self::default()
    }

    /// Anchors from PEM text holding one or more CA certificates.
    pub fn from_pem(pem: &[u8]) -> Result<Self, TrustError> {
        let mut t = Self::empty();
        t.add_pem(pem)?;
        Ok(t)
    }

    /// Anchors from a PEM file holding one or more CA certificates.
    pub fn from_pem_file(path: &Path) -> Result<Self, TrustError> {
        Self::from_pem(&read_bounded(path)?)
    }

    /// Add the CA certificates in `pem`; returns how many were added.
    pub fn add_pem(&mut self, pem: &[u8]) -> Result<usize, TrustError> {
        let mut added = Vec::new();
        for (index, cert) in CertificateDer::pem_slice_iter(pem).enumerate() {
            let cert = cert.map_err(|e| TrustError::Pem {
                reason: e.to_string(),
            })?;
            if self.anchors.len() + added.len() >= MAX_ANCHORS {
                return Err(TrustError::TooMany {
                    kind: "trust anchors",
                    max: MAX_ANCHORS,
                });
            }
            let anchor = webpki::anchor_from_trusted_cert(&cert)
                .map_err(|source| TrustError::Anchor { index, source })?
                .to_owned();
            added.push(anchor);
        }
        if added.is_empty() {
            return Err(TrustError::Empty {
                kind: "CERTIFICATE",
            });
        }
        let n = added.len();
        self.anchors.extend(added);
        Ok(n)
    }

    /// Add the CA certificates of a PEM file; returns how many were added.
    pub fn add_pem_file(&mut self, path: &Path) -> Result<usize, TrustError> {
        self.add_pem(&read_bounded(path)?)
    }

    /// Add the CRLs in `pem` (`X509 CRL` blocks); returns how many were added.
    ///
    /// A certificate whose issuer has a CRL here is checked against it; an issuer
    /// without one is not (CRLs are optional). A CRL past its nextUpdate refuses
    /// the chains it covers, so a stale list cannot silently un-revoke.
    pub fn add_crl_pem(&mut self, pem: &[u8]) -> Result<usize, TrustError> {
        let mut added = Vec::new();
        for (index, crl) in CertificateRevocationListDer::pem_slice_iter(pem).enumerate() {
            let crl = crl.map_err(|e| TrustError::Pem {
                reason: e.to_string(),
            })?;
            if self.crls.len() + added.len() >= MAX_CRLS {
                return Err(TrustError::TooMany {
                    kind: "CRLs",
                    max: MAX_CRLS,
                });
            }
            let owned = OwnedCertRevocationList::from_der(&crl)
                .map_err(|source| TrustError::Crl { index, source })?;
            added.push(CertRevocationList::from(owned));
        }
        if added.is_empty() {
            return Err(TrustError::Empty { kind: "X509 CRL" });
        }
        let n = added.len();
        self.crls.extend(added);
        Ok(n)
    }

    /// Add the CRLs of a PEM file; returns how many were added.
    pub fn add_crl_pem_file(&mut self, path: &Path) -> Result<usize, TrustError> {
        self.add_crl_pem(&read_bounded(path)?)
    }

    /// Number of anchors.
    pub fn len(&self) -> usize {
        self.anchors.len()
    }

    /// Whether there are no anchors (every module will be refused).
    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty()
    }

    /// Number of CRLs.
    pub fn crl_count(&self) -> usize {
        self.crls.len()
    }

    /// Outcomes of [`verify`] against these anchors.
    pub fn counters(&self) -> &VerifyCounters {
        &self.counters
    }
}

/// Verify a module file against `anchors` at `now`; see the module docs for the
/// checks and their order. Nothing is compiled. Every outcome is counted.
pub fn verify(
    bytes: &[u8],
    anchors: &TrustAnchors,
    now: SystemTime,
) -> Result<VerifiedModule, VerifyError> {
    let result = verify_inner(bytes, anchors, now);
    anchors.counters.count(&result);
    match &result {
        Ok(m) => tracing::info!(
            module = %m.manifest.name,
            version = %m.manifest.version,
            signer = %m.signer.subject,
            digest = %hex(&m.digest),
            "module signature verified"
        ),
        Err(e) => tracing::warn!(
            reason = e.failure().as_str(),
            error = %e,
            bytes = bytes.len(),
            "module refused"
        ),
    }
    result
}

fn verify_inner(
    bytes: &[u8],
    anchors: &TrustAnchors,
    now: SystemTime,
) -> Result<VerifiedModule, VerifyError> {
    if anchors.is_empty() {
        return Err(VerifyError::NoTrustAnchors);
    }
    let file = format::parse(bytes)?;
    let block = file.signature().ok_or(VerifyError::Unsigned)?;
    let leaf_der = block.leaf().ok_or(FormatError::ChainLength { count: 0 })?;
    let since_epoch = now
        .duration_since(UNIX_EPOCH)
        .map_err(|_| VerifyError::ClockBeforeEpoch)?;
    let time = UnixTime::since_unix_epoch(since_epoch);

    let leaf = EndEntityCert::try_from(leaf_der)
        .map_err(|reason| VerifyError::UntrustedChain { reason })?;
    let crl_refs: Vec<&CertRevocationList<'static>> = anchors.crls.iter().collect();
    let revocation = match RevocationOptionsBuilder::new(&crl_refs) {
        Ok(b) => Some(
            b.with_depth(RevocationCheckDepth::Chain)
                .with_status_policy(UnknownStatusPolicy::Allow)
                .with_expiration_policy(ExpirationPolicy::Enforce)
                .build(),
        ),
        // No CRLs configured.
        Err(_) => None,
    };
    leaf.verify_for_usage(
        CHAIN_ALGS,
        &anchors.anchors,
        block.intermediates(),
        time,
        KeyUsage::required_if_present(EKU_CODE_SIGNING),
        revocation,
        None,
    )
    .map_err(|e| chain_error(e, now))?;

    let signer = leaf_checks(leaf_der)?;

    leaf.verify_signature(
        verification_alg(block.algorithm),
        file.signed_bytes(),
        block.signature,
    )
    .map_err(|_| VerifyError::BadSignature {
        algorithm: block.algorithm,
    })?;

    Ok(VerifiedModule {
        manifest: file.manifest().clone(),
        wasm: file.signed_bytes().to_vec(),
        digest: digest(bytes),
        signer,
    })
}

/// What an operator should read into webpki's path-building errors.
fn explain(e: &webpki::Error) -> &'static str {
    match e {
        webpki::Error::UnknownIssuer => {
            "its issuer is not a trust anchor of this environment (signed by another CA?)"
        }
        webpki::Error::InvalidSignatureForPublicKey => {
            "a certificate's signature does not verify with its issuer's key (a CA with the same name but another key?)"
        }
        webpki::Error::CrlExpired { .. } => {
            "a configured CRL is past its nextUpdate; fetch a fresh one"
        }
        webpki::Error::InvalidCrlSignatureForPublicKey => {
            "a configured CRL is not signed by the CA it names"
        }
        webpki::Error::CaUsedAsEndEntity => "the signer certificate is a CA certificate",
        webpki::Error::BadDer | webpki::Error::BadDerTime => "a certificate is malformed",
        _ => "the chain does not verify",
    }
}

/// SHA-256 of a whole module file, as [`VerifiedModule::digest`] reports it.
pub fn digest(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Map webpki's path-building error to the refusal an operator can act on.
#[expect(
    deprecated,
    reason = "RequiredEkuNotFound is deprecated but still a variant webpki may return"
)]
fn chain_error(e: webpki::Error, now: SystemTime) -> VerifyError {
    match e {
        webpki::Error::CertExpired { not_after, .. } => VerifyError::Expired {
            not_after: to_system_time(not_after),
            now,
        },
        webpki::Error::CertNotValidYet { not_before, .. } => VerifyError::NotYetValid {
            not_before: to_system_time(not_before),
            now,
        },
        webpki::Error::RequiredEkuNotFound | webpki::Error::RequiredEkuNotFoundContext(_) => {
            VerifyError::WrongKeyUsage {
                reason: "a certificate in the chain has extendedKeyUsage without codeSigning"
                    .into(),
            }
        }
        webpki::Error::CertRevoked => VerifyError::Revoked,
        reason => VerifyError::UntrustedChain { reason },
    }
}

fn to_system_time(t: UnixTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(t.as_secs())
}

/// The leaf's own usage rules (EKU present with codeSigning; KeyUsage, when
/// present, with digitalSignature) and its facts.
fn leaf_checks(der: &CertificateDer<'_>) -> Result<SignerInfo, VerifyError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| VerifyError::InvalidCertificate {
            reason: e.to_string(),
        })?;
    let invalid = |e: x509_parser::error::X509Error| VerifyError::InvalidCertificate {
        reason: e.to_string(),
    };
    match cert.extended_key_usage().map_err(invalid)? {
        Some(eku) if eku.value.code_signing => {}
        Some(_) => {
            return Err(VerifyError::WrongKeyUsage {
                reason: "extendedKeyUsage lacks codeSigning".into(),
            });
        }
        None => {
            return Err(VerifyError::WrongKeyUsage {
                reason: "no extendedKeyUsage extension; codeSigning is required".into(),
            });
        }
    }
    if let Some(ku) = cert.key_usage().map_err(invalid)?
        && !ku.value.digital_signature()
    {
        return Err(VerifyError::WrongKeyUsage {
            reason: "keyUsage lacks digitalSignature".into(),
        });
    }
    signer_info(&cert)
}

/// The facts [`SignerInfo`] holds, read from a certificate without judging trust
/// (for `pronto module inspect`).
pub fn describe_certificate(der: &[u8]) -> Result<SignerInfo, VerifyError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| VerifyError::InvalidCertificate {
            reason: e.to_string(),
        })?;
    signer_info(&cert)
}

fn signer_info(cert: &X509Certificate<'_>) -> Result<SignerInfo, VerifyError> {
    let mut subnets = Vec::new();
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| VerifyError::InvalidCertificate {
            reason: e.to_string(),
        })?;
    if let Some(sans) = sans {
        for name in &sans.value.general_names {
            let uri = match name {
                GeneralName::URI(uri) => *uri,
                // x509-parser keeps a URI that is not UTF-8 as bytes; one that
                // claims to name a subnet is a malformed scope like any other.
                GeneralName::Invalid(tag, bytes)
                    if tag.0 == URI_SAN_TAG && bytes.starts_with(SUBNET_URI_PREFIX.as_bytes()) =>
                {
                    return Err(VerifyError::InvalidCertificate {
                        reason: format!(
                            "subnet SAN {:?} is not text",
                            String::from_utf8_lossy(bytes)
                        ),
                    });
                }
                _ => continue,
            };
            let Some(cidr) = uri.strip_prefix(SUBNET_URI_PREFIX) else {
                continue;
            };
            // A malformed scope must not widen into "no restriction": refuse.
            let subnet: VirtualSubnet =
                cidr.parse()
                    .map_err(|e: router_core::classify::SubnetError| {
                        VerifyError::InvalidCertificate {
                            reason: format!("subnet SAN {uri:?}: {e}"),
                        }
                    })?;
            if subnets.len() >= format::MAX_MANIFEST_SUBNETS {
                return Err(VerifyError::InvalidCertificate {
                    reason: "too many subnet SANs".into(),
                });
            }
            subnets.push(subnet.to_string());
        }
    }
    let validity = cert.validity();
    Ok(SignerInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: hex(cert.raw_serial()),
        not_before: from_timestamp(validity.not_before.timestamp()),
        not_after: from_timestamp(validity.not_after.timestamp()),
        subnets,
    })
}

fn from_timestamp(secs: i64) -> SystemTime {
    let magnitude = Duration::from_secs(secs.unsigned_abs());
    if secs >= 0 {
        UNIX_EPOCH.checked_add(magnitude).unwrap_or(UNIX_EPOCH)
    } else {
        UNIX_EPOCH.checked_sub(magnitude).unwrap_or(UNIX_EPOCH)
    }
}

/// `t` as `YYYY-MM-DDTHH:MM:SSZ` (UTC; [`router_core::time::UtcDate`]), the
/// form certificate errors and `pronto module inspect` print instead of a raw
/// `SystemTime`.
pub fn utc(t: SystemTime) -> String {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    };
    router_core::time::UtcDate(secs).to_string()
}

/// `t` (seconds since the Unix epoch, as rustls and webpki carry times) as
/// [`utc`] text.
pub fn utc_unix(t: UnixTime) -> String {
    utc(to_system_time(t))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            utc(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(
            utc(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(
            utc(UNIX_EPOCH - Duration::from_secs(1)),
            "1969-12-31T23:59:59Z"
        );
    }

    /// Found by the `cert_san` fuzz target: a subnet URI SAN that is not UTF-8
    /// was skipped, so a signer whose only scope was malformed read as "no
    /// restriction from the certificate" instead of being refused.
    #[test]
    fn a_subnet_san_that_is_not_text_refuses_the_certificate() {
        use crate::ca::{CertificateAuthority, KeyAlgorithm, SignerRequest, Validity};
        let v = Validity::days_from(SystemTime::now(), 1).unwrap();
        let ca = CertificateAuthority::generate("SAN CA", v, KeyAlgorithm::Ed25519).unwrap();
        let mut req = SignerRequest::new("tenant", v);
        req.tenant_subnets = vec!["10.0.0.0/8".to_owned()];
        let der = ca.issue_signer(&req).unwrap().cert_der.to_vec();
        let info = describe_certificate(&der).unwrap();
        assert_eq!(info.subnets, vec!["10.0.0.0/8".to_owned()]);

        // The same certificate with one byte of the CIDR no longer UTF-8 (the
        // signature breaks, which describing does not check).
        let san = b"urn:pronto:subnet:10.0.0.0/8";
        let at = der.windows(san.len()).position(|w| w == san).unwrap();
        let mut bad = der.clone();
        bad[at + SUBNET_URI_PREFIX.len()] = 0xff;
        let e = describe_certificate(&bad).unwrap_err();
        assert!(
            matches!(&e, VerifyError::InvalidCertificate { reason } if reason.contains("not text")),
            "{e}"
        );
        // Text that is not a subnet was already refused.
        bad[at + SUBNET_URI_PREFIX.len()] = b'x';
        assert!(describe_certificate(&bad).is_err());
    }

    #[test]
    fn validity_errors_print_dates_not_system_times() {
        let then = UNIX_EPOCH + Duration::from_secs(951_782_400);
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for e in [
            VerifyError::Expired {
                not_after: then,
                now,
            },
            VerifyError::NotYetValid {
                not_before: now,
                now: then,
            },
        ] {
            let text = e.to_string();
            assert!(text.contains("2000-02-29T00:00:00Z"), "{text}");
            assert!(text.contains("2023-11-14T22:13:20Z"), "{text}");
            assert!(
                !text.contains("tv_sec") && !text.contains("SystemTime"),
                "{text}"
            );
        }
    }
}
