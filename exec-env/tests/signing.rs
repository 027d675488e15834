//! Signing and trust end to end: a CA made by `ca.rs` in a temporary directory
//! signs a shipped policy module; every way of breaking the file, the chain or
//! the configuration is refused with its own error and counter.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use exec_env::ca::{
    self, CaOptions, CaPaths, CertificateAuthority, KeyAlgorithm, Overwrite, SignerRequest,
    Validity,
};
use exec_env::format::{self, FormatError, MANIFEST_SECTION, SignatureAlgorithm};
use exec_env::sign::{self, SignError};
use exec_env::trust::{self, TrustAnchors, VerifyError, VerifyFailure};
use proptest::prelude::*;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

const DAY: Duration = Duration::from_secs(86_400);

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("pronto-signing-{tag}-{}-{n}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path)?;
        }
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn policy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../slr-policy-wasm")
}

/// A shipped module with its shipped manifest embedded, unsigned.
fn unsigned_module(name: &str) -> Result<Vec<u8>> {
    let dir = policy_dir();
    let wasm = std::fs::read(dir.join(format!("modules/{name}.wasm")))
        .with_context(|| format!("reading modules/{name}.wasm"))?;
    let text = std::fs::read_to_string(dir.join(format!("manifests/{name}.toml")))?;
    let manifest = format::parse_manifest(&text)?;
    Ok(format::embed_manifest(&wasm, &manifest)?)
}

/// An in-memory CA and a signer valid from yesterday for 30 days.
struct Fixture {
    ca: CertificateAuthority,
    signer: ca::IssuedCert,
    anchors: TrustAnchors,
    now: SystemTime,
}

impl Fixture {
    fn new(algorithm: KeyAlgorithm) -> Result<Self> {
        Self::named("Test CA", algorithm)
    }

    fn named(ca_name: &str, algorithm: KeyAlgorithm) -> Result<Self> {
        let now = SystemTime::now();
        let ca = CertificateAuthority::generate(
            ca_name,
            Validity::days_from(now, 30)?,
            KeyAlgorithm::EcdsaP256,
        )?;
        let mut req = SignerRequest::new("test signer", Validity::days_from(now, 30)?);
        req.algorithm = algorithm;
        let signer = ca.issue_signer(&req)?;
        let anchors = TrustAnchors::from_pem(ca.cert_pem().as_bytes())?;
        Ok(Self {
            ca,
            signer,
            anchors,
            now,
        })
    }

    fn sign(&self, unsigned: &[u8]) -> Result<Vec<u8>> {
        Ok(sign::sign_module(
            unsigned,
            &self.signer.signing_key()?,
            vec![self.signer.cert_der.clone()],
        )?)
    }
}

/// `wasm` with one more custom section appended (canonical LEB128 sizes).
fn with_custom_section(wasm: &[u8], name: &str, payload: &[u8]) -> Vec<u8> {
    fn leb(out: &mut Vec<u8>, mut v: usize) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    let mut body = Vec::new();
    leb(&mut body, name.len());
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(payload);
    let mut out = wasm.to_vec();
    out.push(0);
    leb(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

/// Offset of a byte in the middle of the largest function body.
fn code_byte(wasm: &[u8]) -> Result<usize> {
    let mut best: Option<std::ops::Range<usize>> = None;
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        if let wasmparser::Payload::CodeSectionEntry(body) = payload? {
            let r = body.range();
            let r = usize::try_from(r.start)?..usize::try_from(r.end)?;
            if best.as_ref().is_none_or(|b| r.len() > b.len()) {
                best = Some(r);
            }
        }
    }
    let r = best.context("module has no function bodies")?;
    Ok(r.start + r.len() / 2)
}

fn mode(path: &Path) -> Result<u32> {
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o777)
}

#[test]
fn ca_dir_sign_and_verify_a_shipped_module() -> Result<()> {
    let dir = TempDir::new("ok")?;
    let mut opts = CaOptions::new("Pronto Test CA", 30);
    opts.tenant_subnets = vec!["192.200.0.0/16".into(), "2001:db8::/32".into()];
    let paths = ca::init_ca(dir.path(), &opts)?;
    assert_eq!(paths, CaPaths::in_dir(dir.path()));

    let key = sign::ModuleSigningKey::from_pem_file(&paths.signer_key)?;
    assert_eq!(key.algorithm(), SignatureAlgorithm::Ed25519);
    let chain = sign::chain_from_pem_file(&paths.signer_cert)?;
    let unsigned = unsigned_module("least_load")?;
    let signed = sign::sign_module(&unsigned, &key, chain)?;
    assert!(signed.starts_with(&unsigned), "signing only appends");

    let anchors = TrustAnchors::from_pem_file(&paths.ca_cert)?;
    let now = SystemTime::now();
    let m = trust::verify(&signed, &anchors, now)?;
    assert_eq!(m.manifest.name, "least_load");
    assert_eq!(m.wasm, unsigned, "the compiled bytes are the signed bytes");
    let digest = ring::digest::digest(&ring::digest::SHA256, &signed);
    assert_eq!(&m.digest[..], digest.as_ref());
    assert_eq!(m.signer.subject, "CN=Pronto Test CA module signer");
    assert_eq!(m.signer.issuer, "CN=Pronto Test CA");
    assert_eq!(m.signer.subnets, ["192.200.0.0/16", "2001:db8::/32"]);
    assert!(m.signer.not_before <= now && now < m.signer.not_after);
    assert_eq!(anchors.counters().verified(), 1);
    assert_eq!(anchors.counters().refused_total(), 0);

    // What the VM will get compiles as an ordinary module (custom sections ignored).
    wasmtime::Module::new(&wasmtime::Engine::default(), &m.wasm)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

#[test]
fn ecdsa_p256_signer_verifies_too() -> Result<()> {
    let f = Fixture::new(KeyAlgorithm::EcdsaP256)?;
    let signed = f.sign(&unsigned_module("consistent_hash")?)?;
    let file = format::parse(&signed)?;
    assert_eq!(
        file.signature().map(|s| s.algorithm),
        Some(SignatureAlgorithm::EcdsaP256Sha256)
    );
    trust::verify(&signed, &f.anchors, f.now)?;
    Ok(())
}

#[test]
fn every_shipped_module_signs_and_verifies() -> Result<()> {
    let f = Fixture::new(KeyAlgorithm::Ed25519)?;
    for name in [
        "consistent_hash",
        "least_load",
        "proximity",
        "time_of_day",
        "weighted_cost",
    ] {
        let signed = f.sign(&unsigned_module(name)?)?;
        let m = trust::verify(&signed, &f.anchors, f.now).with_context(|| name.to_owned())?;
        assert_eq!(m.manifest.name, name);
    }
    assert_eq!(f.anchors.counters().verified(), 5);
    Ok(())
}

#[test]
fn tampered_code_byte_is_a_bad_signature() -> Result<()> {
    let f = Fixture::new(KeyAlgorithm::Ed25519)?;
    let mut signed = f.sign(&unsigned_module("least_load")?)?;
    let at = code_byte(&signed)?;
    signed[at] ^= 0x01;
    let err = trust::verify(&signed, &f.anchors, f.now).expect_err("tampered code verified");
    assert!(
        matches!(
            err,
            VerifyError::BadSignature {
                algorithm: SignatureAlgorithm::Ed25519
            }
        ),
        "{err}"
    );
    assert_eq!(f.anchors.counters().refused(VerifyFailure::BadSignature), 1);
    Ok(())
}

#[test]
fn tampered_manifest_is_a_bad_signature() -> Result<()> {
    let f = Fixture::new(KeyAlgorithm::EcdsaP256)?;
    let mut signed = f.sign(&unsigned_module("least_load")?)?;
    let range = format::parse(&signed)?.manifest_section();
    // Same length, still a valid manifest: only the signature can tell.
    let section = &mut signed[range];
    let pos = section
        .windows(10)
        .position(|w| w == b"least_load")
        .context("name not in manifest")?;
    section[pos + 9] = b'f';
    assert_eq!(format::parse(&signed)?.manifest().name, "least_loaf");
    let err = trust::verify(&signed, &f.anchors, f.now).expect_err("tampered manifest verified");
    assert!(matches!(err, VerifyError::BadSignature { .. }), "{err}");
    Ok(())
}

#[test]
fn signature_by_another_ca_is_untrusted() -> Result<()> {
    let f = Fixture::new(KeyAlgorithm::Ed25519)?;
    let other = Fixture::named("Other CA", KeyAlgorithm::Ed25519)?;
    let signed = other.sign(&unsigned_module("least_load")?)?;
    let err = trust::verify(&signed, &f.anchors, f.now).expect_err("foreign CA trusted");
    assert!(
        matches!(
            err,
            VerifyError::UntrustedChain {
                reason: webpki::Error::UnknownIssuer
            }
        ),
        "{err}"
    );
    // An impostor CA with the very same name: the issuer matches by name, the
    // CA's signature on the certificate does not.
    let impostor = Fixture::named("Test CA", KeyAlgorithm::Ed25519)?;
    let forged = impostor.sign(&unsigned_module("least_load")?)?;
    let err = trust::verify(&forged, &f.anchors, f.now).expect_err("impostor CA trusted");
    assert!(
        matches!(
            err,
            VerifyError::UntrustedChain {
                reason: webpki::Error::InvalidSignatureForPublicKey
            }
        ),
        "{err}"
    );
    assert_eq!(
        f.anchors.counters().refused(VerifyFailure::UntrustedChain),
        2
    );
    // Trusting both CAs accepts it.
    let mut both = TrustAnchors::from_pem(f.ca.cert_pem().as_bytes())?;
    both.add_pem(other.ca.cert_pem().as_bytes())?;
    assert_eq!(both.len(), 2);
    trust::verify(&signed, &both, f.now)?;
    Ok(())
}

#[test]
fn expired_and_not_yet_valid_signers_are_refused() -> Result<()> {
    let f = Fixture::new(KeyAlgorithm::Ed25519)?;
    let unsigned = unsigned_module("least_load")?;
    let expired = f.ca.issue_signer(&SignerRequest::new(
        "old",
        Validity {
            not_before: f.now - 10 * DAY,
            not_after: f.now - DAY,
        },
    ))?;
    let signed = sign::sign_module(
        &unsigned,
        &expired.signing_key()?,
        vec![expired.cert_der.clone()],
    )?;
    let err = trust::verify(&signed, &f.anchors, f.now).expect_err("expired verified");
    match err {
        VerifyError::Expired { not_after, now } => {
            assert_eq!(now, f.now);
            assert!(not_after < f.now);
        }
        e => panic!("expected Expired, got {e}"),
    }

    // A good module checked at a time after its signer's end is expired too.
    let good = f.sign(&unsigned)?;
    let later = f.now + 31 * DAY;
    assert!(matches!(
        trust::verify(&good, &f.anchors, later),
        Err(VerifyError::Expired { .. })
    ));

    let future = f.ca.issue_signer(&SignerRequest::new(
        "future",
        Validity {
            not_before: f.now + DAY,
            not_after: f.now + 10 * DAY,
        },
    ))?;
    let signed = sign::sign_module(
        &unsigned,
        &future.signing_key()?,
        vec![future.cert_der.clone()],
    )?;
    let err = trust::verify(&signed, &f.anchors, f.now).expect_err("future verified");
    assert!(matches!(err, VerifyError::NotYetValid { .. }), "{err}");
    assert_eq!(f.anchors.counters().refused(VerifyFailure::Expired), 2);
    assert_eq!(f.anchors.counters().refused(VerifyFailure::NotYetValid), 1);
    Ok(())
}

#[test]
fn certificates_not_for_code_signing_are_refused() -> Result<()> {
    let f = Fixture::new(KeyAlgorithm::Ed25519)?;
    let unsigned = unsigned_module("least_load")?;

    // A TLS peer certificate of the same CA: EKU serverAuth + clientAuth.
    let peer =
        f.ca.issue_peer("site-a.example", Validity::days_from(f.now, 30)?)?;
    let signed = sign::sign_module(&unsigned, &peer.signing_key()?, vec![peer.cert_der.clone()])?;
    let err = trust::verify(&signed, &f.anchors, f.now).expect_err("TLS cert signed a module");
    assert!(matches!(err, VerifyError::WrongKeyUsage { .. }), "{err}");

    // A certificate with no EKU at all passes webpki's "required if present" for
    // the path, and is refused by the leaf check. rcgen directly: ca.rs never
    // issues such a certificate.
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let raw_ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate()?)?;
    let raw_anchors = TrustAnchors::from_pem(raw_ca.pem().as_bytes())?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.not_before = (f.now - DAY).into();
    params.not_after = (f.now + DAY).into();
    let cert = params.signed_by(&key, &raw_ca)?;
    let key = sign::ModuleSigningKey::from_pkcs8_pem(&key.serialize_pem())?;
    let signed = sign::sign_module(&unsigned, &key, vec![cert.der().clone()])?;
    let err = trust::verify(&signed, &raw_anchors, f.now).expect_err("no-EKU cert signed a module");
    assert!(matches!(err, VerifyError::WrongKeyUsage { .. }), "{err}");
    assert_eq!(
        f.anchors.counters().refused(VerifyFailure::WrongKeyUsage),
        1
    );
    assert_eq!(
        raw_anchors.counters().refused(VerifyFailure::WrongKeyUsage),
        1
    );
    Ok(())
}

#[test]
fn empty_anchors_refuse_everything() -> Result<()> {
    let f = Fixture::new(KeyAlgorithm::Ed25519)?;
    let signed = f.sign(&unsigned_module("least_load")?)?;
    let none = TrustAnchors::empty();
    assert!(none.is_empty());
    let err = trust::verify(&signed, &none, f.now).expect_err("empty anchors accepted");
    assert!(matches!(err, VerifyError::NoTrustAnchors), "{err}");
    // Even garbage is refused for that reason first: the configuration is the fault.
    assert!(matches!(
        trust::verify(b"junk", &none, f.now),
        Err(VerifyError::NoTrustAnchors)
    ));
    assert_eq!(none.counters().refused(VerifyFailure::NoTrustAnchors), 2);
    // A PEM file without certificates is an error, not an empty set.
    assert!(TrustAnchors::from_pem(b"").is_err());
    Ok(())
}

#[test]
fn unsigned_module_is_refused() -> Result<()> {
    let f = Fixture::new(KeyAlgorithm::Ed25519)?;
    let unsigned = unsigned_module("least_load")?;
    let err = trust::verify(&unsigned, &f.anchors, f.now).expect_err("unsigned accepted");
    assert!(matches!(err, VerifyError::Unsigned), "{err}");
    // A bare module without a manifest is a format error.
    let bare = std::fs::read(policy_dir().join("modules/least_load.wasm"))?;
    assert!(matches!(
        trust::verify(&bare, &f.anchors, f.now),
        Err(VerifyError::Format(FormatError::MissingManifest))
    ));
    Ok(())
}

#[test]
fn duplicate_sections_and_late_signature_are_format_errors() -> Result<()> {
    let f = Fixture::new(KeyAlgorithm::Ed25519)?;
    let unsigned = unsigned_module("least_load")?;
    let signed = f.sign(&unsigned)?;

    // Anything after the signature.
    let late = with_custom_section(&signed, "name", b"");
    let err = trust::verify(&late, &f.anchors, f.now).expect_err("section after signature");
    assert!(
        matches!(
            err,
            VerifyError::Format(FormatError::SignatureNotLast { .. })
        ),
        "{err}"
    );

    // A second manifest before the signature, signed by the legitimate key: the
    // structure is refused before the signature is even looked at.
    let manifest = format::parse(&unsigned)?.manifest_text().to_owned();
    let dup = with_custom_section(&unsigned, MANIFEST_SECTION, manifest.as_bytes());
    assert!(matches!(
        sign::sign_module(
            &dup,
            &f.signer.signing_key()?,
            vec![f.signer.cert_der.clone()]
        ),
        Err(SignError::Format(FormatError::DuplicateSection { .. }))
    ));
    let sig = format::parse(&signed)?
        .signature()
        .cloned()
        .context("signed")?;
    let dup_signed = with_custom_section(&dup, format::SIGNATURE_SECTION, &sig.encode()?);
    let err = trust::verify(&dup_signed, &f.anchors, f.now).expect_err("duplicate manifest");
    assert!(
        matches!(
            err,
            VerifyError::Format(FormatError::DuplicateSection { .. })
        ),
        "{err}"
    );

    // Two signatures.
    let twice = with_custom_section(&signed, format::SIGNATURE_SECTION, &sig.encode()?);
    assert!(matches!(
        trust::verify(&twice, &f.anchors, f.now),
        Err(VerifyError::Format(FormatError::SignatureNotLast { .. }))
    ));
    // Signing a signed module is refused.
    assert!(
        matches!(f.sign(&signed).map_err(|e| e.to_string()), Err(e) if e.contains("already signed"))
    );
    assert_eq!(f.anchors.counters().refused(VerifyFailure::Format), 3);
    Ok(())
}

#[test]
fn crl_revokes_the_signer() -> Result<()> {
    let f = Fixture::new(KeyAlgorithm::Ed25519)?;
    let signed = f.sign(&unsigned_module("least_load")?)?;

    // A CRL that revokes someone else changes nothing.
    let other = f.ca.issue_signer(&SignerRequest::new(
        "other",
        Validity::days_from(f.now, 30)?,
    ))?;
    let crl =
        f.ca.revocation_list(&[&other.serial], f.now - DAY, f.now + 7 * DAY)?;
    let mut anchors = TrustAnchors::from_pem(f.ca.cert_pem().as_bytes())?;
    anchors.add_crl_pem(crl.as_bytes())?;
    trust::verify(&signed, &anchors, f.now)?;

    // One that revokes the signer refuses it.
    let crl =
        f.ca.revocation_list(&[&f.signer.serial], f.now - DAY, f.now + 7 * DAY)?;
    let mut anchors = TrustAnchors::from_pem(f.ca.cert_pem().as_bytes())?;
    anchors.add_crl_pem(crl.as_bytes())?;
    let err = trust::verify(&signed, &anchors, f.now).expect_err("revoked signer accepted");
    assert!(matches!(err, VerifyError::Revoked), "{err}");
    assert_eq!(anchors.counters().refused(VerifyFailure::Revoked), 1);

    // A stale CRL (past nextUpdate) refuses rather than silently un-revoking.
    let stale =
        f.ca.revocation_list(&[&other.serial], f.now - 10 * DAY, f.now - DAY)?;
    let mut anchors = TrustAnchors::from_pem(f.ca.cert_pem().as_bytes())?;
    anchors.add_crl_pem(stale.as_bytes())?;
    let err = trust::verify(&signed, &anchors, f.now).expect_err("stale CRL accepted");
    assert!(
        matches!(
            err,
            VerifyError::UntrustedChain {
                reason: webpki::Error::CrlExpired { .. }
            }
        ),
        "{err}"
    );

    // A CRL of another CA does not cover this issuer: status unknown, allowed.
    let foreign = Fixture::named("Other CA", KeyAlgorithm::Ed25519)?;
    let crl = foreign
        .ca
        .revocation_list(&[&f.signer.serial], f.now - DAY, f.now + DAY)?;
    let mut anchors = TrustAnchors::from_pem(f.ca.cert_pem().as_bytes())?;
    anchors.add_crl_pem(crl.as_bytes())?;
    trust::verify(&signed, &anchors, f.now)?;

    // A forged CRL in this CA's name is refused, not believed and not ignored.
    let impostor = Fixture::named("Test CA", KeyAlgorithm::Ed25519)?;
    let forged = impostor
        .ca
        .revocation_list(&[&other.serial], f.now - DAY, f.now + DAY)?;
    let mut anchors = TrustAnchors::from_pem(f.ca.cert_pem().as_bytes())?;
    anchors.add_crl_pem(forged.as_bytes())?;
    let err = trust::verify(&signed, &anchors, f.now).expect_err("forged CRL accepted");
    assert!(matches!(err, VerifyError::UntrustedChain { .. }), "{err}");
    Ok(())
}

#[test]
fn key_files_are_private_and_never_overwritten() -> Result<()> {
    let dir = TempDir::new("modes")?;
    let paths = ca::init_ca(dir.path(), &CaOptions::new("Modes CA", 10))?;
    assert_eq!(mode(&paths.ca_key)?, 0o600);
    assert_eq!(mode(&paths.signer_key)?, 0o600);
    let before = std::fs::read(&paths.ca_key)?;

    let err = ca::init_ca(dir.path(), &CaOptions::new("Modes CA", 10)).expect_err("overwrote");
    assert!(matches!(err, ca::CaError::Exists { .. }), "{err}");
    assert_eq!(
        std::fs::read(&paths.ca_key)?,
        before,
        "refusal left the key alone"
    );

    // Replace, asked for: new keys, still 0600 even if the old file was widened.
    std::fs::set_permissions(&paths.ca_key, std::fs::Permissions::from_mode(0o644))?;
    let mut opts = CaOptions::new("Modes CA", 10);
    opts.overwrite = Overwrite::Replace;
    ca::init_ca(dir.path(), &opts)?;
    assert_ne!(std::fs::read(&paths.ca_key)?, before);
    assert_eq!(mode(&paths.ca_key)?, 0o600);

    // Peer certificates from the CA on disk.
    let peer = ca::issue_peer_cert(dir.path(), "site-a.as65001.example")?;
    assert_eq!(mode(&peer.key)?, 0o600);
    assert!(matches!(
        ca::issue_peer_cert(dir.path(), "site-a.as65001.example"),
        Err(ca::CaError::Exists { .. })
    ));
    assert!(matches!(
        ca::issue_peer_cert(dir.path(), "../escape"),
        Err(ca::CaError::InvalidPeerName { .. })
    ));
    Ok(())
}

#[test]
fn peer_certificate_from_a_loaded_ca_serves_tls() -> Result<()> {
    let dir = TempDir::new("peer")?;
    let paths = ca::init_ca(dir.path(), &CaOptions::new("Peer CA", 10))?;
    let peer = ca::issue_peer_cert(dir.path(), "sys1.as65001.example")?;
    let ca_der = sign::chain_from_pem_file(&paths.ca_cert)?.remove(0);
    let cert = sign::chain_from_pem_file(&peer.cert)?.remove(0);
    let anchor = webpki::anchor_from_trusted_cert(&ca_der)?;
    let ee = webpki::EndEntityCert::try_from(&cert)?;
    let now = UnixTime::now();
    for usage in [
        webpki::KeyUsage::server_auth(),
        webpki::KeyUsage::client_auth(),
    ] {
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            std::slice::from_ref(&anchor),
            &[],
            now,
            usage,
            None,
            None,
        )?;
    }
    ee.verify_is_valid_for_subject_name(&ServerName::try_from("sys1.as65001.example")?)?;
    assert!(
        ee.verify_is_valid_for_subject_name(&ServerName::try_from("other.example")?)
            .is_err()
    );
    // The key file holds the PKCS#8 key of that certificate.
    let key = sign::ModuleSigningKey::from_pem_file(&peer.key)?;
    assert_eq!(key.algorithm(), SignatureAlgorithm::EcdsaP256Sha256);
    Ok(())
}

#[test]
fn wrong_key_for_the_chain_is_caught_at_signing() -> Result<()> {
    let f = Fixture::new(KeyAlgorithm::Ed25519)?;
    let other = f.ca.issue_signer(&SignerRequest::new(
        "other",
        Validity::days_from(f.now, 30)?,
    ))?;
    let err = sign::sign_module(
        &unsigned_module("least_load")?,
        &other.signing_key()?,
        vec![f.signer.cert_der.clone()],
    )
    .expect_err("mismatched key signed");
    assert!(
        matches!(err, SignError::KeyDoesNotMatchCertificate { .. }),
        "{err}"
    );
    assert!(matches!(
        sign::sign_module(
            &unsigned_module("least_load")?,
            &other.signing_key()?,
            Vec::<CertificateDer<'_>>::new()
        ),
        Err(SignError::EmptyChain)
    ));
    Ok(())
}

#[test]
fn inspect_facts_without_trust() -> Result<()> {
    let f = Fixture::new(KeyAlgorithm::Ed25519)?;
    let signed = f.sign(&unsigned_module("least_load")?)?;
    let file = format::parse(&signed)?;
    let sig = file.signature().context("signed")?;
    let info = trust::describe_certificate(sig.leaf().context("leaf")?)?;
    assert_eq!(info.subject, "CN=test signer");
    assert_eq!(info.serial, trust::hex(&f.signer.serial));
    Ok(())
}

fn signed_fixture() -> &'static (Vec<u8>, Fixture) {
    static FIXTURE: std::sync::OnceLock<(Vec<u8>, Fixture)> = std::sync::OnceLock::new();
    FIXTURE.get_or_init(|| {
        let f = Fixture::new(KeyAlgorithm::EcdsaP256).expect("fixture");
        let signed = f
            .sign(&unsigned_module("least_load").expect("module"))
            .expect("sign");
        (signed, f)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parse_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = format::parse(&bytes);
        let mut with_header = b"\0asm\x01\0\0\0".to_vec();
        with_header.extend_from_slice(&bytes);
        let _ = format::parse(&with_header);
    }

    /// Every single-byte change of a signed module is refused, and parse never
    /// panics on it.
    #[test]
    fn every_single_byte_mutation_is_refused(pos in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let (signed, f) = signed_fixture();
        let mut m = signed.clone();
        let i = pos.index(m.len());
        m[i] ^= flip;
        let _ = format::parse(&m);
        prop_assert!(trust::verify(&m, &f.anchors, f.now).is_err(), "mutation at {} verified", i);
    }

    /// Truncations and random tails never panic and never verify.
    #[test]
    fn truncation_and_tails_are_refused(cut in any::<prop::sample::Index>(), tail in proptest::collection::vec(any::<u8>(), 0..64)) {
        let (signed, f) = signed_fixture();
        let mut m = signed[..cut.index(signed.len())].to_vec();
        m.extend_from_slice(&tail);
        prop_assume!(m != *signed);
        let _ = format::parse(&m);
        prop_assert!(trust::verify(&m, &f.anchors, f.now).is_err());
    }
}

/// `pronto ca revoke`'s library side: the signer's serial as `pronto module
/// inspect` prints it goes into the CA directory's record, and the CRL written
/// beside it refuses modules that signer signed; the record accumulates, a bad
/// serial changes nothing, and a renewal keeps the list.
#[test]
fn a_ca_directory_revokes_its_signer_by_the_printed_serial() -> Result<()> {
    use exec_env::crl;
    let dir = TempDir::new("crl")?;
    let paths = ca::init_ca(dir.path(), &CaOptions::new("Revoking CA", 30))?;
    let key = sign::ModuleSigningKey::from_pem_file(&paths.signer_key)?;
    let chain = sign::chain_from_pem_file(&paths.signer_cert)?;
    let serial = trust::describe_certificate(&chain[0])?.serial;
    let signed = sign::sign_module(&unsigned_module("least_load")?, &key, chain)?;
    let now = SystemTime::now();
    let anchors = || TrustAnchors::from_pem_file(&paths.ca_cert);

    let first = crl::revoke(dir.path(), &["01:02".into()], 7)?;
    assert_eq!((first.added, first.serials.len()), (1, 1));
    let mut a = anchors()?;
    a.add_crl_pem_file(&first.crl)?;
    trust::verify(&signed, &a, now)?;

    let second = crl::revoke(dir.path(), &[serial.clone(), "0102".into()], 7)?;
    assert_eq!(second.added, 1, "0102 was revoked already");
    assert_eq!(second.serials, vec!["0102".to_owned(), serial.clone()]);
    assert_eq!(
        std::fs::read_to_string(dir.path().join(crl::RECORD_FILE))?,
        format!("0102\n{serial}\n")
    );
    let mut a = anchors()?;
    a.add_crl_pem_file(&second.crl)?;
    let err = trust::verify(&signed, &a, now).expect_err("revoked signer accepted");
    assert!(matches!(err, VerifyError::Revoked), "{err}");

    let before = std::fs::read(&second.crl)?;
    assert!(crl::revoke(dir.path(), &["xyz".into()], 7).is_err());
    assert!(crl::revoke(dir.path(), &["0b".into()], 0).is_err());
    assert_eq!(
        std::fs::read(&second.crl)?,
        before,
        "a refusal rewrote the CRL"
    );

    let renewed = crl::revoke(dir.path(), &[], 30)?;
    assert_eq!((renewed.added, renewed.serials.len()), (0, 2));
    assert!(renewed.next_update > second.next_update);
    let mut a = anchors()?;
    a.add_crl_pem_file(&renewed.crl)?;
    assert!(matches!(
        trust::verify(&signed, &a, now),
        Err(VerifyError::Revoked)
    ));
    Ok(())
}
