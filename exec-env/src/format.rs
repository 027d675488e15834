//! The one-file module artifact: a core WebAssembly module with two custom
//! sections appended (DESIGN.md §6).
//!
//! ```text
//! \0asm 01000000 | module sections ... | custom "pronto.manifest" | custom "pronto.signature"
//! |<------------------------- signed bytes -------------------------->|
//! ```
//!
//! - `pronto.manifest` holds the [`Manifest`] as TOML text (at most
//!   [`MAX_MANIFEST_LEN`] bytes). It appears exactly once, anywhere before the
//!   signature.
//! - `pronto.signature` is the last section of the file. Its payload is a
//!   [`SignatureBlock`]; the signature covers every byte of the file before the
//!   signature section starts (header, code, manifest), so the manifest cannot be
//!   changed without breaking the signature.
//!
//! Signature block, version 1 (all integers little-endian):
//!
//! ```text
//! u8  version            = 1
//! u8  algorithm          1 = Ed25519, 2 = ECDSA P-256 with SHA-256 (ASN.1 DER signature)
//! u16 signature length   1..=MAX_SIGNATURE_LEN (Ed25519: exactly 64)
//! ..  signature
//! u8  certificate count  1..=MAX_CHAIN_CERTS, leaf first
//! repeated: u16 length (1..=MAX_CERT_LEN), DER certificate
//! (nothing may follow)
//! ```
//!
//! [`parse`] walks the sections with `wasmparser` and compiles nothing. It reads
//! untrusted bytes: it never panics, bounds every length, and answers with a typed
//! [`FormatError`]. Whether the signature is *good* is [`crate::trust`]'s question.

use std::fmt;
use std::ops::Range;

use router_core::VirtualSubnet;
use rustls_pki_types::CertificateDer;
use wasmparser::{Chunk, Encoding, Parser, Payload};

use crate::manifest::{MAX_MANIFEST_LEN, Manifest};

/// Name of the custom section that carries the manifest.
pub const MANIFEST_SECTION: &str = "pronto.manifest";
/// Name of the custom section that carries the signature block.
pub const SIGNATURE_SECTION: &str = "pronto.signature";
/// Largest module file accepted, in bytes (shipped policies are tens of KiB).
pub const MAX_MODULE_LEN: usize = 16 * 1024 * 1024;
/// Version of the signature block encoding this code reads and writes.
pub const SIGNATURE_BLOCK_VERSION: u8 = 1;
/// Largest signature accepted, in bytes (Ed25519 is 64, P-256 DER at most 72).
pub const MAX_SIGNATURE_LEN: usize = 512;
/// Most certificates in a signer chain (leaf first).
pub const MAX_CHAIN_CERTS: usize = 4;
/// Largest DER certificate accepted, in bytes.
pub const MAX_CERT_LEN: usize = 16 * 1024;
/// Most virtual subnets a manifest may name.
pub const MAX_MANIFEST_SUBNETS: usize = 256;
/// Longest module name (`[a-z0-9_-]{1,64}`).
pub const MAX_NAME_LEN: usize = 64;

/// Ed25519 signatures are always this long.
const ED25519_SIGNATURE_LEN: usize = 64;
/// An ECDSA P-256 DER signature is `SEQUENCE { INTEGER r, INTEGER s }` with each
/// integer at most 33 bytes: 2 + 2 * (2 + 33).
const ECDSA_P256_MAX_SIGNATURE_LEN: usize = 72;
/// Custom section id in the wasm binary format.
const CUSTOM_SECTION_ID: u8 = 0;

/// Errors about the module file's structure (never about trust).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The file is larger than [`MAX_MODULE_LEN`].
    #[error("module file is {len} bytes; the limit is {max}")]
    TooLarge {
        /// Bytes given.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The bytes are not a well-formed WebAssembly binary.
    #[error("not a well-formed WebAssembly module: {source}")]
    Wasm {
        /// What wasmparser found.
        #[source]
        source: wasmparser::BinaryReaderError,
    },
    /// A section claims more bytes than the file has.
    #[error("section at offset {offset} runs past the end of the file")]
    Truncated {
        /// Offset of the section.
        offset: usize,
    },
    /// A WebAssembly component, not a core module.
    #[error("WebAssembly components are not supported; build a core module")]
    Component,
    /// The module has no `pronto.manifest` section.
    #[error("no {MANIFEST_SECTION} section: embed a manifest (`pronto module sign --manifest`)")]
    MissingManifest,
    /// A Pronto section appears more than once.
    #[error("duplicate {section} section at offset {offset}")]
    DuplicateSection {
        /// Section name.
        section: &'static str,
        /// Offset of the second copy.
        offset: usize,
    },
    /// Something follows the signature section.
    #[error(
        "{SIGNATURE_SECTION} must be the last section; another section starts at offset {offset}"
    )]
    SignatureNotLast {
        /// Offset of the section after the signature.
        offset: usize,
    },
    /// The module already carries a manifest (embedding a second is refused).
    #[error("module already has a {MANIFEST_SECTION} section")]
    AlreadyHasManifest,
    /// The module is already signed (attaching a second signature is refused).
    #[error("module is already signed")]
    AlreadySigned,
    /// The manifest text is longer than [`MAX_MANIFEST_LEN`].
    #[error("manifest is {len} bytes; the limit is {max}")]
    ManifestTooLong {
        /// Bytes found.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The manifest section is not UTF-8.
    #[error("manifest is not UTF-8 text")]
    ManifestNotUtf8,
    /// The manifest is not valid TOML for [`Manifest`] (unknown fields included).
    #[error("manifest does not parse: {source}")]
    ManifestToml {
        /// What the TOML reader found.
        #[source]
        source: toml::de::Error,
    },
    /// The manifest could not be written as TOML.
    #[error("manifest does not serialize: {source}")]
    ManifestSerialize {
        /// What the TOML writer found.
        #[source]
        source: toml::ser::Error,
    },
    /// The manifest written does not read back equal (a writer bug, refused).
    #[error("manifest does not read back as written")]
    ManifestRoundTrip,
    /// The module name is not `[a-z0-9_-]{1,64}`.
    #[error("module name {name:?} is not [a-z0-9_-]{{1,64}}")]
    InvalidName {
        /// The name given (cut to 80 characters).
        name: String,
    },
    /// A manifest subnet is not canonical `ADDRESS/LENGTH`.
    #[error("manifest subnet {subnet:?}: {source}")]
    InvalidSubnet {
        /// The text given.
        subnet: String,
        /// Why it was refused.
        #[source]
        source: router_core::classify::SubnetError,
    },
    /// The manifest names more than [`MAX_MANIFEST_SUBNETS`] subnets.
    #[error("manifest names {count} subnets; the limit is {max}")]
    TooManySubnets {
        /// Subnets named.
        count: usize,
        /// The bound.
        max: usize,
    },
    /// The manifest requests a capability twice.
    #[error("capability {capability} requested twice")]
    DuplicateCapability {
        /// The repeated capability.
        capability: &'static str,
    },
    /// The signature block has a version this code does not read.
    #[error(
        "signature block version {version} is not supported (expected {SIGNATURE_BLOCK_VERSION})"
    )]
    UnsupportedSignatureVersion {
        /// Version found.
        version: u8,
    },
    /// The signature block names an unknown algorithm.
    #[error("unknown signature algorithm id {id}")]
    UnknownAlgorithm {
        /// Id found.
        id: u8,
    },
    /// The signature length does not fit the algorithm.
    #[error("{algorithm} signature of {len} bytes is malformed")]
    SignatureLength {
        /// The algorithm named in the block.
        algorithm: SignatureAlgorithm,
        /// Length found.
        len: usize,
    },
    /// The chain has no certificate or more than [`MAX_CHAIN_CERTS`].
    #[error("signer chain has {count} certificates; expected 1 to {MAX_CHAIN_CERTS}")]
    ChainLength {
        /// Certificates found.
        count: usize,
    },
    /// A certificate is empty or larger than [`MAX_CERT_LEN`].
    #[error("certificate {index} of the chain is {len} bytes; expected 1 to {MAX_CERT_LEN}")]
    CertificateLength {
        /// Position in the chain (0 = leaf).
        index: usize,
        /// Length found.
        len: usize,
    },
    /// The signature block ends early.
    #[error("signature block truncated while reading {field}")]
    SignatureTruncated {
        /// The field being read.
        field: &'static str,
    },
    /// Bytes follow the last certificate of the signature block.
    #[error("{count} unexpected bytes after the signature block")]
    SignatureTrailingBytes {
        /// How many.
        count: usize,
    },
}

/// The algorithm of a module signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SignatureAlgorithm {
    /// Ed25519 (RFC 8032) over the signed bytes.
    Ed25519,
    /// ECDSA on P-256 with SHA-256, signature as ASN.1 DER `Ecdsa-Sig-Value`.
    EcdsaP256Sha256,
}

impl SignatureAlgorithm {
    /// The id written in the signature block.
    pub fn id(self) -> u8 {
        match self {
            Self::Ed25519 => 1,
            Self::EcdsaP256Sha256 => 2,
        }
    }

    /// The algorithm with block id `id`, if known.
    pub fn from_id(id: u8) -> Option<Self> {
        match id {
            1 => Some(Self::Ed25519),
            2 => Some(Self::EcdsaP256Sha256),
            _ => None,
        }
    }

    /// The name shown to operators.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ed25519 => "ed25519",
            Self::EcdsaP256Sha256 => "ecdsa-p256-sha256",
        }
    }

    /// Whether `len` is a plausible signature length for this algorithm.
    fn accepts_len(self, len: usize) -> bool {
        match self {
            Self::Ed25519 => len == ED25519_SIGNATURE_LEN,
            // Smallest DER Ecdsa-Sig-Value: SEQUENCE of two one-byte INTEGERs.
            Self::EcdsaP256Sha256 => (8..=ECDSA_P256_MAX_SIGNATURE_LEN).contains(&len),
        }
    }
}

impl fmt::Display for SignatureAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The payload of the `pronto.signature` section: who signed, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureBlock<'a> {
    /// Signature algorithm.
    pub algorithm: SignatureAlgorithm,
    /// Signature over the module's signed bytes.
    pub signature: &'a [u8],
    /// The signer's certificate chain as DER, leaf first.
    pub chain: Vec<CertificateDer<'a>>,
}

impl<'a> SignatureBlock<'a> {
    /// Decode a version-1 block, checking every bound.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, FormatError> {
        let mut r = Reader { bytes, pos: 0 };
        let version = r.u8("version")?;
        if version != SIGNATURE_BLOCK_VERSION {
            return Err(FormatError::UnsupportedSignatureVersion { version });
        }
        let id = r.u8("algorithm")?;
        let algorithm =
            SignatureAlgorithm::from_id(id).ok_or(FormatError::UnknownAlgorithm { id })?;
        let sig_len = usize::from(r.u16("signature length")?);
        if sig_len > MAX_SIGNATURE_LEN || !algorithm.accepts_len(sig_len) {
            return Err(FormatError::SignatureLength {
                algorithm,
                len: sig_len,
            });
        }
        let signature = r.take(sig_len, "signature")?;
        let count = usize::from(r.u8("certificate count")?);
        if count == 0 || count > MAX_CHAIN_CERTS {
            return Err(FormatError::ChainLength { count });
        }
        let mut chain = Vec::with_capacity(count);
        for index in 0..count {
            let len = usize::from(r.u16("certificate length")?);
            if len == 0 || len > MAX_CERT_LEN {
                return Err(FormatError::CertificateLength { index, len });
            }
            chain.push(CertificateDer::from(r.take(len, "certificate")?));
        }
        let rest = bytes.len().saturating_sub(r.pos);
        if rest != 0 {
            return Err(FormatError::SignatureTrailingBytes { count: rest });
        }
        Ok(Self {
            algorithm,
            signature,
            chain,
        })
    }

    /// Encode as a version-1 block, refusing anything [`Self::decode`] would refuse.
    pub fn encode(&self) -> Result<Vec<u8>, FormatError> {
        let sig_len = self.signature.len();
        if sig_len > MAX_SIGNATURE_LEN || !self.algorithm.accepts_len(sig_len) {
            return Err(FormatError::SignatureLength {
                algorithm: self.algorithm,
                len: sig_len,
            });
        }
        let count = self.chain.len();
        let count_u8 = match u8::try_from(count) {
            Ok(c) if (1..=MAX_CHAIN_CERTS).contains(&count) => c,
            _ => return Err(FormatError::ChainLength { count }),
        };
        let mut out =
            Vec::with_capacity(5 + sig_len + self.chain.iter().map(|c| 2 + c.len()).sum::<usize>());
        out.push(SIGNATURE_BLOCK_VERSION);
        out.push(self.algorithm.id());
        out.extend_from_slice(&len_u16(sig_len).to_le_bytes());
        out.extend_from_slice(self.signature);
        out.push(count_u8);
        for (index, cert) in self.chain.iter().enumerate() {
            let len = cert.len();
            if len == 0 || len > MAX_CERT_LEN {
                return Err(FormatError::CertificateLength { index, len });
            }
            out.extend_from_slice(&len_u16(len).to_le_bytes());
            out.extend_from_slice(cert);
        }
        Ok(out)
    }

    /// The signer's own certificate (first of the chain).
    pub fn leaf(&self) -> Option<&CertificateDer<'a>> {
        self.chain.first()
    }

    /// The certificates between the leaf and a trust anchor.
    pub fn intermediates(&self) -> &[CertificateDer<'a>] {
        self.chain.get(1..).unwrap_or(&[])
    }
}

/// Callers check the bound first; saturate instead of panicking regardless.
fn len_u16(len: usize) -> u16 {
    u16::try_from(len).unwrap_or(u16::MAX)
}

/// Bounds-checked little-endian reader over the signature block.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], FormatError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(FormatError::SignatureTruncated { field })?;
        let out = self
            .bytes
            .get(self.pos..end)
            .ok_or(FormatError::SignatureTruncated { field })?;
        self.pos = end;
        Ok(out)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, FormatError> {
        let b = self.take(1, field)?;
        Ok(b.first().copied().unwrap_or(0))
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, FormatError> {
        let b = self.take(2, field)?;
        let mut a = [0u8; 2];
        a.copy_from_slice(b);
        Ok(u16::from_le_bytes(a))
    }
}

/// A parsed module file: zero-copy views into the caller's bytes.
#[derive(Debug, Clone)]
pub struct ModuleFile<'a> {
    bytes: &'a [u8],
    manifest_text: &'a str,
    manifest: Manifest,
    manifest_section: Range<usize>,
    signed_len: usize,
    signature: Option<SignatureBlock<'a>>,
}

impl<'a> ModuleFile<'a> {
    /// The whole file.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The manifest exactly as carried (and signed).
    pub fn manifest_text(&self) -> &'a str {
        self.manifest_text
    }

    /// The parsed and validated manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Byte range of the whole `pronto.manifest` section (id byte to end).
    pub fn manifest_section(&self) -> Range<usize> {
        self.manifest_section.clone()
    }

    /// The bytes the signature covers: the file up to the signature section (the
    /// whole file when unsigned). This is also the module to compile.
    pub fn signed_bytes(&self) -> &'a [u8] {
        self.bytes.get(..self.signed_len).unwrap_or(self.bytes)
    }

    /// The signature block, if the file is signed.
    pub fn signature(&self) -> Option<&SignatureBlock<'a>> {
        self.signature.as_ref()
    }

    /// Take the parsed manifest.
    pub fn into_manifest(self) -> Manifest {
        self.manifest
    }
}

/// Where the Pronto sections of a wasm binary are; presence not yet required.
struct Scan<'a> {
    /// Whole-section range and payload of `pronto.manifest`.
    manifest: Option<(Range<usize>, &'a [u8])>,
    /// Whole-section range and payload of `pronto.signature`.
    signature: Option<(Range<usize>, &'a [u8])>,
}

fn wasm_err(source: wasmparser::BinaryReaderError) -> FormatError {
    FormatError::Wasm { source }
}

/// Walk the top-level sections of a core module without compiling anything.
fn scan(bytes: &[u8]) -> Result<Scan<'_>, FormatError> {
    if bytes.len() > MAX_MODULE_LEN {
        return Err(FormatError::TooLarge {
            len: bytes.len(),
            max: MAX_MODULE_LEN,
        });
    }
    let mut parser = Parser::new(0);
    let mut offset = 0usize;
    let mut out = Scan {
        manifest: None,
        signature: None,
    };
    loop {
        let rest = bytes
            .get(offset..)
            .ok_or(FormatError::Truncated { offset })?;
        let (consumed, payload) = match parser.parse(rest, true).map_err(wasm_err)? {
            Chunk::Parsed { consumed, payload } => (consumed, payload),
            // With eof = true wasmparser reports truncation as an error; keep a
            // typed answer should that ever change.
            Chunk::NeedMoreData(_) => return Err(FormatError::Truncated { offset }),
        };
        let start = offset;
        let end = offset
            .checked_add(consumed)
            .ok_or(FormatError::Truncated { offset })?;
        // Any section after the signature (End is not a section) is refused.
        if out.signature.is_some() && !matches!(payload, Payload::End(_)) {
            return Err(FormatError::SignatureNotLast { offset: start });
        }
        match payload {
            Payload::Version { encoding, .. } if encoding != Encoding::Module => {
                return Err(FormatError::Component);
            }
            Payload::CustomSection(reader) => {
                let name = reader.name();
                let data = reader.data();
                if name == MANIFEST_SECTION {
                    if out.manifest.is_some() {
                        return Err(FormatError::DuplicateSection {
                            section: MANIFEST_SECTION,
                            offset: start,
                        });
                    }
                    out.manifest = Some((start..end, data));
                } else if name == SIGNATURE_SECTION {
                    out.signature = Some((start..end, data));
                }
            }
            Payload::CodeSectionStart { size, .. } => {
                // Function bodies are not our business: skip them whole.
                parser.skip_section();
                let skipped =
                    usize::try_from(size).map_err(|_| FormatError::Truncated { offset })?;
                let body_end = end
                    .checked_add(skipped)
                    .filter(|e| *e <= bytes.len())
                    .ok_or(FormatError::Truncated { offset: start })?;
                offset = body_end;
                continue;
            }
            Payload::End(_) => return Ok(out),
            _ => {}
        }
        offset = end;
    }
}

/// Parse a module file: check its structure, read and validate the manifest,
/// decode the signature block if present. Compiles nothing; never panics.
pub fn parse(bytes: &[u8]) -> Result<ModuleFile<'_>, FormatError> {
    let found = scan(bytes)?;
    let (manifest_section, manifest_bytes) = found.manifest.ok_or(FormatError::MissingManifest)?;
    let manifest_text = manifest_str(manifest_bytes)?;
    let manifest = parse_manifest(manifest_text)?;
    let (signed_len, signature) = match found.signature {
        Some((range, payload)) => (range.start, Some(SignatureBlock::decode(payload)?)),
        None => (bytes.len(), None),
    };
    Ok(ModuleFile {
        bytes,
        manifest_text,
        manifest,
        manifest_section,
        signed_len,
        signature,
    })
}

fn manifest_str(bytes: &[u8]) -> Result<&str, FormatError> {
    if bytes.len() > MAX_MANIFEST_LEN {
        return Err(FormatError::ManifestTooLong {
            len: bytes.len(),
            max: MAX_MANIFEST_LEN,
        });
    }
    std::str::from_utf8(bytes).map_err(|_| FormatError::ManifestNotUtf8)
}

/// Parse manifest TOML text (bounded) and validate it.
pub fn parse_manifest(text: &str) -> Result<Manifest, FormatError> {
    if text.len() > MAX_MANIFEST_LEN {
        return Err(FormatError::ManifestTooLong {
            len: text.len(),
            max: MAX_MANIFEST_LEN,
        });
    }
    let manifest: Manifest =
        toml::from_str(text).map_err(|source| FormatError::ManifestToml { source })?;
    validate_manifest(&manifest)?;
    Ok(manifest)
}

/// Check what serde cannot: the name's alphabet, subnet syntax, and bounds.
pub fn validate_manifest(manifest: &Manifest) -> Result<(), FormatError> {
    let name = &manifest.name;
    let name_ok = (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !name_ok {
        return Err(FormatError::InvalidName {
            name: name.chars().take(80).collect(),
        });
    }
    if manifest.subnets.len() > MAX_MANIFEST_SUBNETS {
        return Err(FormatError::TooManySubnets {
            count: manifest.subnets.len(),
            max: MAX_MANIFEST_SUBNETS,
        });
    }
    for subnet in &manifest.subnets {
        if let Err(source) = subnet.parse::<VirtualSubnet>() {
            return Err(FormatError::InvalidSubnet {
                subnet: subnet.chars().take(80).collect(),
                source,
            });
        }
    }
    for (i, cap) in manifest.capabilities.iter().enumerate() {
        if manifest
            .capabilities
            .get(..i)
            .is_some_and(|seen| seen.contains(cap))
        {
            return Err(FormatError::DuplicateCapability {
                capability: cap.as_str(),
            });
        }
    }
    Ok(())
}

/// Append a `pronto.manifest` section to a core module that has neither a
/// manifest nor a signature yet.
pub fn embed_manifest(wasm: &[u8], manifest: &Manifest) -> Result<Vec<u8>, FormatError> {
    let found = scan(wasm)?;
    if found.signature.is_some() {
        return Err(FormatError::AlreadySigned);
    }
    if found.manifest.is_some() {
        return Err(FormatError::AlreadyHasManifest);
    }
    validate_manifest(manifest)?;
    let text =
        toml::to_string(manifest).map_err(|source| FormatError::ManifestSerialize { source })?;
    if text.len() > MAX_MANIFEST_LEN {
        return Err(FormatError::ManifestTooLong {
            len: text.len(),
            max: MAX_MANIFEST_LEN,
        });
    }
    let out = append_custom_section(wasm, MANIFEST_SECTION, text.as_bytes())?;
    // The result must read back as the same manifest; anything else is a bug in
    // the writer, reported rather than shipped.
    let back = parse(&out)?;
    if back.manifest() != manifest {
        return Err(FormatError::ManifestRoundTrip);
    }
    Ok(out)
}

/// Append a `pronto.signature` section to an unsigned module file that carries a
/// manifest. The signature must cover the whole of `unsigned`.
pub fn attach_signature(
    unsigned: &[u8],
    block: &SignatureBlock<'_>,
) -> Result<Vec<u8>, FormatError> {
    let file = parse(unsigned)?;
    if file.signature().is_some() {
        return Err(FormatError::AlreadySigned);
    }
    let payload = block.encode()?;
    append_custom_section(unsigned, SIGNATURE_SECTION, &payload)
}

/// `wasm` followed by one custom section `name` holding `payload`.
fn append_custom_section(wasm: &[u8], name: &str, payload: &[u8]) -> Result<Vec<u8>, FormatError> {
    let mut name_len = Vec::with_capacity(5);
    leb128_u32(&mut name_len, u32_len(name.len())?);
    let body_len = name_len
        .len()
        .checked_add(name.len())
        .and_then(|n| n.checked_add(payload.len()))
        .ok_or(FormatError::TooLarge {
            len: usize::MAX,
            max: MAX_MODULE_LEN,
        })?;
    let total = wasm.len().saturating_add(body_len).saturating_add(6);
    if total > MAX_MODULE_LEN {
        return Err(FormatError::TooLarge {
            len: total,
            max: MAX_MODULE_LEN,
        });
    }
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(wasm);
    out.push(CUSTOM_SECTION_ID);
    leb128_u32(&mut out, u32_len(body_len)?);
    out.extend_from_slice(&name_len);
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

fn u32_len(len: usize) -> Result<u32, FormatError> {
    u32::try_from(len).map_err(|_| FormatError::TooLarge {
        len,
        max: MAX_MODULE_LEN,
    })
}

/// Unsigned LEB128, the canonical (shortest) form.
fn leb128_u32(out: &mut Vec<u8>, mut v: u32) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[cfg(test)]
mod tests;
