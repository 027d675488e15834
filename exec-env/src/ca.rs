//! A small certificate authority for module signers and signalling peers
//! (`pronto ca init`, `pronto ca issue-peer`), built on rcgen.
//!
//! # Programmatic API (for tests and tools)
//!
//! In memory, nothing written:
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::SystemTime;
//! use exec_env::ca::{CertificateAuthority, KeyAlgorithm, SignerRequest, Validity};
//! use exec_env::{format, sign, trust};
//!
//! let now = SystemTime::now();
//! let ca = CertificateAuthority::generate("Test CA", Validity::days_from(now, 30)?, KeyAlgorithm::EcdsaP256)?;
//! let signer = ca.issue_signer(&SignerRequest::new("operator", Validity::days_from(now, 30)?))?;
//! let anchors = trust::TrustAnchors::from_pem(ca.cert_pem().as_bytes())?;
//!
//! let manifest = format::parse_manifest("name = \"least_load\"\nversion = \"0.1.0\"\nkind = \"policy\"\n")?;
//! let unsigned = format::embed_manifest(&std::fs::read("least_load.wasm")?, &manifest)?;
//! let signed = sign::sign_module(&unsigned, &signer.signing_key()?, vec![signer.cert_der.clone()])?;
//! let verified = trust::verify(&signed, &anchors, now)?;
//! # let _ = verified; Ok(()) }
//! ```
//!
//! - [`CertificateAuthority::generate`] / [`CertificateAuthority::from_pem`] /
//!   [`CertificateAuthority::load`]: a CA in memory, new or from `ca.pem` + `ca.key`.
//! - [`CertificateAuthority::issue_signer`]: a code-signing certificate
//!   ([`SignerRequest`]: validity window, tenant subnets as
//!   `urn:pronto:subnet:<cidr>` URI SANs, optional dNSName SANs, key algorithm).
//! - [`CertificateAuthority::issue_peer`]: a TLS client+server certificate whose
//!   dNSName SAN is the node name (signalling transport and management clients);
//!   [`CertificateAuthority::issue_peer_as`] adds a role URI SAN
//!   (`urn:pronto:role:operator|viewer|router|host`, see [`crate::role`]).
//! - [`CertificateAuthority::revocation_list`]: a CRL (PEM) revoking serials.
//! - [`IssuedCert`]: certificate (PEM and DER), PKCS#8 key PEM, serial;
//!   [`IssuedCert::signing_key`] turns it into a [`ModuleSigningKey`].
//!
//! On disk (the CLI): [`init_ca`] writes a CA and a signer into a directory
//! ([`CaPaths`]: `ca.pem`, `ca.key`, `signer.pem`, `signer.key`), and
//! [`issue_peer_cert`] adds `peer-<name>.pem` / `peer-<name>.key`. Private keys are
//! created with mode 0600 from the start (never chmod-ed afterwards); existing files
//! are refused unless [`Overwrite::Replace`] is asked for.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::string::{Ia5String, PrintableString};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber,
};
use ring::rand::SecureRandom;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::asn1_rs::Tag;
use x509_parser::prelude::{FromDer, X509Certificate};

use router_core::VirtualSubnet;

use crate::role::Role;
use crate::sign::{ModuleSigningKey, SignError, read_bounded};
use crate::trust::{EKU_CODE_SIGNING, SUBNET_URI_PREFIX};

/// Longest validity accepted, in days (about 100 years).
pub const MAX_VALIDITY_DAYS: u32 = 36_525;
/// How far back a new certificate's notBefore is set, for clock skew.
pub const BACKDATE: Duration = Duration::from_secs(300);
/// Days a peer certificate is valid (capped by the CA's own end of validity).
pub const PEER_VALIDITY_DAYS: u32 = 365;
/// Longest CA, signer or peer name.
pub const MAX_CA_NAME_LEN: usize = 64;
/// Most tenant subnets in one signer certificate.
pub const MAX_TENANT_SUBNETS: usize = 64;

const SECS_PER_DAY: u64 = 86_400;

/// Errors while creating, loading or using the CA.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// A file could not be read, created or written.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A file exists and overwriting was not asked for.
    #[error("{path} exists; refusing to overwrite it (use --force to replace)")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// A file could not be read.
    #[error(transparent)]
    Read(#[from] SignError),
    /// rcgen refused the parameters or failed to sign.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A name is empty, too long or not printable.
    #[error("name {name:?} must be 1 to {MAX_CA_NAME_LEN} printable characters")]
    InvalidName {
        /// The name given.
        name: String,
    },
    /// A peer name is not a DNS name (it becomes the dNSName SAN and a file name).
    #[error("peer name {name:?} is not a DNS name")]
    InvalidPeerName {
        /// The name given.
        name: String,
    },
    /// A tenant subnet is not canonical `ADDRESS/LENGTH`.
    #[error("tenant subnet {subnet:?}: {source}")]
    InvalidSubnet {
        /// The text given.
        subnet: String,
        /// Why.
        #[source]
        source: router_core::classify::SubnetError,
    },
    /// Too many tenant subnets.
    #[error("{count} tenant subnets; the limit is {MAX_TENANT_SUBNETS}")]
    TooManySubnets {
        /// Subnets given.
        count: usize,
    },
    /// The validity period is empty, too long or unrepresentable.
    #[error("invalid validity period: {reason}")]
    Validity {
        /// Why.
        reason: &'static str,
    },
    /// The CA certificate PEM holds no certificate or does not parse.
    #[error("CA certificate: {reason}")]
    CaCertificate {
        /// Why.
        reason: String,
    },
    /// A serial or the revocation record is malformed, or the record is full.
    #[error("revocation: {reason}")]
    Revocation {
        /// Why.
        reason: String,
    },
    /// A certificate just issued does not chain to this CA (a bug, refused).
    #[error("issued certificate fails its own chain check: {source}")]
    SelfCheck {
        /// What webpki found.
        #[source]
        source: webpki::Error,
    },
}

/// Key algorithm for a new CA, signer or peer key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KeyAlgorithm {
    /// Ed25519.
    Ed25519,
    /// ECDSA on P-256 with SHA-256 (the widest TLS support).
    #[default]
    EcdsaP256,
}

impl KeyAlgorithm {
    fn generate(self) -> Result<KeyPair, CaError> {
        let alg = match self {
            Self::Ed25519 => &rcgen::PKCS_ED25519,
            Self::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        };
        Ok(KeyPair::generate_for(alg)?)
    }
}

/// What to do when a file to be written exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overwrite {
    /// Refuse, leaving every file as it was.
    #[default]
    Refuse,
    /// Remove and recreate (keys are recreated with mode 0600).
    Replace,
}

/// A certificate's validity window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl Validity {
    /// From [`BACKDATE`] before `now` until `days` days after `now`.
    pub fn days_from(now: SystemTime, days: u32) -> Result<Self, CaError> {
        if days == 0 || days > MAX_VALIDITY_DAYS {
            return Err(CaError::Validity {
                reason: "days must be 1 to 36525",
            });
        }
        let not_before = now.checked_sub(BACKDATE).ok_or(CaError::Validity {
            reason: "start before the epoch",
        })?;
        let not_after = now
            .checked_add(Duration::from_secs(u64::from(days) * SECS_PER_DAY))
            .ok_or(CaError::Validity {
                reason: "end out of range",
            })?;
        Ok(Self {
            not_before,
            not_after,
        })
    }

    fn check(&self) -> Result<(), CaError> {
        if self.not_after <= self.not_before {
            return Err(CaError::Validity {
                reason: "not_after must be later than not_before",
            });
        }
        Ok(())
    }

    fn apply(&self, params: &mut CertificateParams) -> Result<(), CaError> {
        self.check()?;
        params.not_before = self.not_before.into();
        params.not_after = self.not_after.into();
        Ok(())
    }
}

/// What a new code-signing certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignerRequest {
    /// Subject common name.
    pub name: String,
    /// Validity window.
    pub validity: Validity,
    /// Virtual subnets (canonical CIDR) the signer's modules may govern; written
    /// as `urn:pronto:subnet:<cidr>` URI SANs. Empty: no restriction from the
    /// certificate.
    pub tenant_subnets: Vec<String>,
    /// dNSName SANs.
    pub dns_names: Vec<String>,
    /// Key algorithm.
    pub algorithm: KeyAlgorithm,
}

impl SignerRequest {
    /// A signer named `name`, Ed25519, no subnets, no DNS names.
    pub fn new(name: &str, validity: Validity) -> Self {
        Self {
            name: name.to_owned(),
            validity,
            tenant_subnets: Vec::new(),
            dns_names: Vec::new(),
            algorithm: KeyAlgorithm::Ed25519,
        }
    }
}

/// A certificate this CA issued, with its private key.
#[derive(Clone)]
pub struct IssuedCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The certificate, DER.
    pub cert_der: CertificateDer<'static>,
    /// The private key, PKCS#8 PEM (`PRIVATE KEY`).
    pub key_pem: String,
    /// Serial number (big-endian bytes), for CRLs.
    pub serial: Vec<u8>,
}

impl std::fmt::Debug for IssuedCert {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("serial", &crate::trust::hex(&self.serial))
            .finish_non_exhaustive()
    }
}

impl IssuedCert {
    /// The private key as a module signing key.
    pub fn signing_key(&self) -> Result<ModuleSigningKey, SignError> {
        ModuleSigningKey::from_pkcs8_pem(&self.key_pem)
    }
}

/// A CA able to issue signer and peer certificates and CRLs.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    not_after: SystemTime,
}

impl std::fmt::Debug for CertificateAuthority {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// A new self-signed CA named `name` (CN), allowed to issue end-entity
    /// certificates only (pathLen 0) and to sign CRLs.
    pub fn generate(
        name: &str,
        validity: Validity,
        algorithm: KeyAlgorithm,
    ) -> Result<Self, CaError> {
        check_name(name)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial()?);
        validity.apply(&mut params)?;
        let key = algorithm.generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
            not_after: validity.not_after,
        })
    }

    /// A CA from its certificate and PKCS#8 key, both PEM.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| {
            CaError::CaCertificate {
                reason: e.to_string(),
            }
        })?;
        let key = KeyPair::from_pem(key_pem)?;
        let (_, x509) =
            X509Certificate::from_der(&cert_der).map_err(|e| CaError::CaCertificate {
                reason: e.to_string(),
            })?;
        // rcgen (without its x509-parser feature) cannot read a certificate back,
        // so rebuild the issuer's name and usages from the parsed fields; every
        // certificate issued afterwards is chain-checked against `cert_der`, so a
        // mismatch is caught, not shipped.
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(&x509)?;
        params.key_identifier_method = KeyIdMethod::Sha256;
        params.key_usages = key_usages(&x509)?;
        let not_after = timestamp(x509.validity().not_after.timestamp());
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert_pem: cert_pem.to_owned(),
            cert_der,
            not_after,
        })
    }

    /// A CA from `dir/ca.pem` and `dir/ca.key`.
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        let paths = CaPaths::in_dir(dir);
        let cert = read_text(&paths.ca_cert)?;
        let key = read_text(&paths.ca_key)?;
        Self::from_pem(&cert, &key)
    }

    /// The CA certificate, PEM (what environments use as a trust anchor).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA private key, PKCS#8 PEM.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// End of the CA's validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Issue a code-signing certificate (KeyUsage digitalSignature, EKU
    /// codeSigning) with a fresh key.
    pub fn issue_signer(&self, req: &SignerRequest) -> Result<IssuedCert, CaError> {
        check_name(&req.name)?;
        if req.tenant_subnets.len() > MAX_TENANT_SUBNETS {
            return Err(CaError::TooManySubnets {
                count: req.tenant_subnets.len(),
            });
        }
        let mut params = leaf_params(&req.name, &req.validity)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        for subnet in &req.tenant_subnets {
            let parsed: VirtualSubnet =
                subnet.parse().map_err(|source| CaError::InvalidSubnet {
                    subnet: subnet.clone(),
                    source,
                })?;
            let uri = ia5(&format!("{SUBNET_URI_PREFIX}{parsed}"))?;
            params.subject_alt_names.push(SanType::URI(uri));
        }
        for dns in &req.dns_names {
            let name = checked_dns_name(dns)?;
            params.subject_alt_names.push(SanType::DnsName(ia5(&name)?));
        }
        let issued = self.issue(params, req.algorithm)?;
        self.self_check(&issued, &req.validity, KeyUsage::required(EKU_CODE_SIGNING))?;
        tracing::info!(signer = %req.name, serial = %crate::trust::hex(&issued.serial), "signer certificate issued");
        Ok(issued)
    }

    /// Issue a TLS client+server certificate for signalling peer `name` (its
    /// dNSName SAN and CN), ECDSA P-256, carrying no role (no management rights
    /// unless a router's allow-list names it).
    pub fn issue_peer(&self, name: &str, validity: Validity) -> Result<IssuedCert, CaError> {
        self.issue_peer_as(name, None, validity)
    }

    /// [`Self::issue_peer`] carrying `role` as a `urn:pronto:role:<role>` URI
    /// SAN ([`crate::role`]).
    pub fn issue_peer_as(
        &self,
        name: &str,
        role: Option<Role>,
        validity: Validity,
    ) -> Result<IssuedCert, CaError> {
        let dns = checked_dns_name(name)?;
        let mut params = leaf_params(name, &validity)?;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.subject_alt_names = vec![SanType::DnsName(ia5(&dns)?)];
        if let Some(role) = role {
            params
                .subject_alt_names
                .push(SanType::URI(ia5(&role.uri())?));
        }
        let issued = self.issue(params, KeyAlgorithm::EcdsaP256)?;
        self.self_check(&issued, &validity, KeyUsage::server_auth())?;
        self.self_check(&issued, &validity, KeyUsage::client_auth())?;
        let role = role.map_or("none", Role::as_str);
        tracing::info!(peer = %name, %role, serial = %crate::trust::hex(&issued.serial), "peer certificate issued");
        Ok(issued)
    }

    /// A CRL (PEM) revoking `serials`, issued at `this_update`, next due at
    /// `next_update`.
    pub fn revocation_list(
        &self,
        serials: &[&[u8]],
        this_update: SystemTime,
        next_update: SystemTime,
    ) -> Result<String, CaError> {
        let revoked_certs = serials
            .iter()
            .map(|s| RevokedCertParams {
                serial_number: SerialNumber::from_slice(s),
                revocation_time: this_update.into(),
                reason_code: None,
                invalidity_date: None,
            })
            .collect();
        let params = CertificateRevocationListParams {
            this_update: this_update.into(),
            next_update: next_update.into(),
            crl_number: random_serial()?,
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }

    fn issue(
        &self,
        params: CertificateParams,
        algorithm: KeyAlgorithm,
    ) -> Result<IssuedCert, CaError> {
        let key = algorithm.generate()?;
        let serial = params
            .serial_number
            .as_ref()
            .map(SerialNumber::to_bytes)
            .unwrap_or_default();
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key_pem: key.serialize_pem(),
            serial,
        })
    }

    /// The certificate just issued must chain to this CA for `usage` at a time
    /// inside its validity (also for deliberately expired test certificates).
    fn self_check(
        &self,
        issued: &IssuedCert,
        validity: &Validity,
        usage: KeyUsage,
    ) -> Result<(), CaError> {
        let anchor = webpki::anchor_from_trusted_cert(&self.cert_der)
            .map_err(|source| CaError::SelfCheck { source })?;
        let ee = EndEntityCert::try_from(&issued.cert_der)
            .map_err(|source| CaError::SelfCheck { source })?;
        let at = validity
            .not_before
            .checked_add(Duration::from_secs(1))
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(UnixTime::since_unix_epoch)
            .ok_or(CaError::Validity {
                reason: "start before the epoch",
            })?;
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &[],
            at,
            usage,
            None,
            None,
        )
        .map_err(|source| CaError::SelfCheck { source })?;
        Ok(())
    }
}

fn leaf_params(name: &str, validity: &Validity) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial()?);
    validity.apply(&mut params)?;
    Ok(params)
}

/// 16 random bytes, positive and non-zero (RFC 5280 §4.1.2.2).
fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CaError::Validity {
            reason: "no randomness for a serial number",
        })?;
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

fn check_name(name: &str) -> Result<(), CaError> {
    let ok =
        !name.is_empty() && name.len() <= MAX_CA_NAME_LEN && name.chars().all(|c| !c.is_control());
    if ok {
        Ok(())
    } else {
        Err(CaError::InvalidName {
            name: name.chars().take(80).collect(),
        })
    }
}

/// `name` if it is a DNS name (letters, digits, hyphens, dots; no `/`, no `..`):
/// safe both as a SAN and inside a file name.
fn checked_dns_name(name: &str) -> Result<String, CaError> {
    let invalid = || CaError::InvalidPeerName {
        name: name.chars().take(80).collect(),
    };
    if name.len() > MAX_CA_NAME_LEN.max(253) || name.starts_with('.') {
        return Err(invalid());
    }
    rustls_pki_types::DnsName::try_from(name).map_err(|_| invalid())?;
    Ok(name.to_owned())
}

/// The subject of a CA certificate as rcgen names, attribute by attribute, with
/// the same string types so the issuer field of new certificates matches
/// byte for byte.
fn distinguished_name(cert: &X509Certificate<'_>) -> Result<DistinguishedName, CaError> {
    let mut dn = DistinguishedName::new();
    for attr in cert.subject().iter_attributes() {
        let unsupported = || CaError::CaCertificate {
            reason: "subject uses an attribute or string type this CA cannot reproduce".into(),
        };
        let oid: Vec<u64> = attr.attr_type().iter().ok_or_else(unsupported)?.collect();
        let value = attr.attr_value();
        let text = std::str::from_utf8(value.data).map_err(|_| unsupported())?;
        let value = match value.header.tag() {
            Tag::Utf8String => DnValue::Utf8String(text.to_owned()),
            Tag::PrintableString => DnValue::PrintableString(PrintableString::try_from(text)?),
            Tag::Ia5String => DnValue::Ia5String(ia5(text)?),
            _ => return Err(unsupported()),
        };
        dn.push(DnType::from_oid(&oid), value);
    }
    Ok(dn)
}

fn ia5(text: &str) -> Result<Ia5String, CaError> {
    Ok(Ia5String::try_from(text)?)
}

fn key_usages(cert: &X509Certificate<'_>) -> Result<Vec<KeyUsagePurpose>, CaError> {
    let ku = cert.key_usage().map_err(|e| CaError::CaCertificate {
        reason: e.to_string(),
    })?;
    let mut out = Vec::new();
    if let Some(ku) = ku {
        if ku.value.digital_signature() {
            out.push(KeyUsagePurpose::DigitalSignature);
        }
        if ku.value.key_cert_sign() {
            out.push(KeyUsagePurpose::KeyCertSign);
        }
        if ku.value.crl_sign() {
            out.push(KeyUsagePurpose::CrlSign);
        }
    }
    Ok(out)
}

fn timestamp(secs: i64) -> SystemTime {
    let secs = u64::try_from(secs).unwrap_or(0);
    SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

fn read_text(path: &Path) -> Result<String, CaError> {
    let bytes = read_bounded(path)?;
    String::from_utf8(bytes).map_err(|_| CaError::CaCertificate {
        reason: format!("{} is not UTF-8 PEM text", path.display()),
    })
}

/// The files of a CA directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaPaths {
    /// CA certificate (the trust anchor to configure).
    pub ca_cert: PathBuf,
    /// CA private key (0600).
    pub ca_key: PathBuf,
    /// Signer certificate (the `--chain` of `pronto module sign`).
    pub signer_cert: PathBuf,
    /// Signer private key (0600; the `--key` of `pronto module sign`).
    pub signer_key: PathBuf,
}

impl CaPaths {
    /// The file names inside `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca_cert: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            signer_cert: dir.join("signer.pem"),
            signer_key: dir.join("signer.key"),
        }
    }
}

/// The files of one peer certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPaths {
    /// Certificate.
    pub cert: PathBuf,
    /// Private key (0600).
    pub key: PathBuf,
}

/// Options of [`init_ca`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaOptions {
    /// CA common name.
    pub name: String,
    /// Validity of the CA and the signer, in days from now.
    pub validity_days: u32,
    /// Signer common name.
    pub signer_name: String,
    /// Virtual subnets the signer may govern (URI SANs).
    pub tenant_subnets: Vec<String>,
    /// dNSName SANs of the signer.
    pub signer_dns_names: Vec<String>,
    /// CA key algorithm.
    pub ca_algorithm: KeyAlgorithm,
    /// Signer key algorithm.
    pub signer_algorithm: KeyAlgorithm,
    /// Whether existing files may be replaced.
    pub overwrite: Overwrite,
}

impl CaOptions {
    /// A CA named `name`, valid `validity_days`, with an Ed25519 signer named
    /// `<name> module signer` and no subnet restriction.
    pub fn new(name: &str, validity_days: u32) -> Self {
        Self {
            name: name.to_owned(),
            validity_days,
            signer_name: format!("{name} module signer"),
            tenant_subnets: Vec::new(),
            signer_dns_names: Vec::new(),
            ca_algorithm: KeyAlgorithm::EcdsaP256,
            signer_algorithm: KeyAlgorithm::Ed25519,
            overwrite: Overwrite::Refuse,
        }
    }
}

/// Create `dir` (if needed) holding a new CA and a code-signing signer issued by
/// it. Nothing is written unless every file may be written.
pub fn init_ca(dir: &Path, opts: &CaOptions) -> Result<CaPaths, CaError> {
    let paths = CaPaths::in_dir(dir);
    let targets = [
        &paths.ca_cert,
        &paths.ca_key,
        &paths.signer_cert,
        &paths.signer_key,
    ];
    check_targets(&targets, opts.overwrite)?;

    let now = SystemTime::now();
    let validity = Validity::days_from(now, opts.validity_days)?;
    let ca = CertificateAuthority::generate(&opts.name, validity, opts.ca_algorithm)?;
    let mut req = SignerRequest::new(&opts.signer_name, validity);
    req.tenant_subnets = opts.tenant_subnets.clone();
    req.dns_names = opts.signer_dns_names.clone();
    req.algorithm = opts.signer_algorithm;
    let signer = ca.issue_signer(&req)?;

    std::fs::create_dir_all(dir).map_err(|source| CaError::Io {
        op: "creating",
        path: dir.to_owned(),
        source,
    })?;
    write_file(
        &paths.ca_key,
        ca.key_pem().as_bytes(),
        FileMode::Secret,
        opts.overwrite,
    )?;
    write_file(
        &paths.ca_cert,
        ca.cert_pem().as_bytes(),
        FileMode::Public,
        opts.overwrite,
    )?;
    write_file(
        &paths.signer_key,
        signer.key_pem.as_bytes(),
        FileMode::Secret,
        opts.overwrite,
    )?;
    write_file(
        &paths.signer_cert,
        signer.cert_pem.as_bytes(),
        FileMode::Public,
        opts.overwrite,
    )?;
    tracing::info!(dir = %dir.display(), ca = %opts.name, "CA initialised");
    Ok(paths)
}

/// Issue a TLS peer certificate for node `name` from the CA in `dir`, written as
/// `dir/peer-<name>.pem` and `dir/peer-<name>.key` (existing files are refused),
/// carrying no role.
pub fn issue_peer_cert(dir: &Path, name: &str) -> Result<PeerPaths, CaError> {
    issue_peer_cert_as(dir, name, None)
}

/// [`issue_peer_cert`] carrying `role` ([`crate::role`]).
pub fn issue_peer_cert_as(
    dir: &Path,
    name: &str,
    role: Option<Role>,
) -> Result<PeerPaths, CaError> {
    let name = checked_dns_name(name)?;
    let paths = PeerPaths {
        cert: dir.join(format!("peer-{name}.pem")),
        key: dir.join(format!("peer-{name}.key")),
    };
    check_targets(&[&paths.cert, &paths.key], Overwrite::Refuse)?;
    let ca = CertificateAuthority::load(dir)?;
    let now = SystemTime::now();
    let mut validity = Validity::days_from(now, PEER_VALIDITY_DAYS)?;
    validity.not_after = validity.not_after.min(ca.not_after());
    let issued = ca.issue_peer_as(&name, role, validity)?;
    write_file(
        &paths.key,
        issued.key_pem.as_bytes(),
        FileMode::Secret,
        Overwrite::Refuse,
    )?;
    write_file(
        &paths.cert,
        issued.cert_pem.as_bytes(),
        FileMode::Public,
        Overwrite::Refuse,
    )?;
    Ok(paths)
}

fn check_targets(targets: &[&PathBuf], overwrite: Overwrite) -> Result<(), CaError> {
    if overwrite == Overwrite::Refuse {
        for path in targets {
            if path.symlink_metadata().is_ok() {
                return Err(CaError::Exists {
                    path: (*path).clone(),
                });
            }
        }
    }
    Ok(())
}

/// Permission class of a file written here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileMode {
    /// Private key: 0600 from creation.
    Secret,
    /// Certificate: 0644.
    Public,
}

fn write_file(
    path: &Path,
    bytes: &[u8],
    mode: FileMode,
    overwrite: Overwrite,
) -> Result<(), CaError> {
    let io = |op, source| CaError::Io {
        op,
        path: path.to_owned(),
        source,
    };
    if overwrite == Overwrite::Replace {
        // Remove first so the new file gets our mode, not the old one's.
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("removing", e)),
        }
    }
    let bits = match mode {
        FileMode::Secret => 0o600,
        FileMode::Public => 0o644,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(bits)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                CaError::Exists {
                    path: path.to_owned(),
                }
            } else {
                io("creating", e)
            }
        })?;
    file.write_all(bytes).map_err(|e| io("writing", e))?;
    file.sync_all().map_err(|e| io("syncing", e))?;
    Ok(())
}
