use super::*;
use crate::manifest::{Capability, ModuleKind};

/// The smallest core module: magic and version.
const EMPTY: &[u8] = b"\0asm\x01\0\0\0";

fn manifest() -> Manifest {
    Manifest {
        name: "least_load".into(),
        version: semver::Version::new(1, 2, 3),
        kind: ModuleKind::Policy,
        capabilities: vec![Capability::Log],
        subnets: vec!["192.200.0.0/16".into()],
        description: "test".into(),
    }
}

fn block(chain: Vec<CertificateDer<'static>>) -> SignatureBlock<'static> {
    SignatureBlock {
        algorithm: SignatureAlgorithm::Ed25519,
        signature: &[7u8; 64],
        chain,
    }
}

#[test]
fn leb128_matches_the_spec_examples() {
    let mut v = Vec::new();
    leb128_u32(&mut v, 624_485);
    assert_eq!(v, [0xe5, 0x8e, 0x26]);
    v.clear();
    leb128_u32(&mut v, 0);
    assert_eq!(v, [0]);
    v.clear();
    leb128_u32(&mut v, 127);
    assert_eq!(v, [0x7f]);
    v.clear();
    leb128_u32(&mut v, 128);
    assert_eq!(v, [0x80, 0x01]);
}

#[test]
fn manifest_section_bytes_are_exact() {
    let out = append_custom_section(EMPTY, "ab", b"xyz").unwrap();
    assert_eq!(&out[..8], EMPTY);
    // id 0, body length 1 + 2 + 3 = 6, name length 2, "ab", "xyz".
    assert_eq!(&out[8..], b"\x00\x06\x02abxyz");
}

#[test]
fn embed_then_parse_round_trips_and_is_unsigned() {
    let m = manifest();
    let out = embed_manifest(EMPTY, &m).unwrap();
    let file = parse(&out).unwrap();
    assert_eq!(file.manifest(), &m);
    assert_eq!(file.signed_bytes(), &out[..]);
    assert!(file.signature().is_none());
    assert_eq!(file.manifest_section().start, EMPTY.len());
    assert_eq!(file.manifest_section().end, out.len());
}

#[test]
fn signature_block_round_trips() {
    let b = block(vec![
        CertificateDer::from(vec![0x30, 1, 2]),
        CertificateDer::from(vec![9; 100]),
    ]);
    let enc = b.encode().unwrap();
    assert_eq!(enc[0], SIGNATURE_BLOCK_VERSION);
    assert_eq!(enc[1], 1);
    assert_eq!(&enc[2..4], &[64, 0]);
    assert_eq!(SignatureBlock::decode(&enc).unwrap(), b);
}

#[test]
fn signature_block_bounds_are_enforced() {
    let one = vec![CertificateDer::from(vec![1u8; 10])];
    let enc = block(one.clone()).encode().unwrap();
    // Every strict prefix is truncated.
    for n in 0..enc.len() {
        assert!(SignatureBlock::decode(&enc[..n]).is_err(), "prefix {n}");
    }
    let mut trailing = enc.clone();
    trailing.push(0);
    assert!(matches!(
        SignatureBlock::decode(&trailing),
        Err(FormatError::SignatureTrailingBytes { count: 1 })
    ));
    let mut v2 = enc.clone();
    v2[0] = 2;
    assert!(matches!(
        SignatureBlock::decode(&v2),
        Err(FormatError::UnsupportedSignatureVersion { version: 2 })
    ));
    let mut alg = enc.clone();
    alg[1] = 9;
    assert!(matches!(
        SignatureBlock::decode(&alg),
        Err(FormatError::UnknownAlgorithm { id: 9 })
    ));
    assert!(matches!(
        block(vec![]).encode(),
        Err(FormatError::ChainLength { count: 0 })
    ));
    assert!(matches!(
        block(vec![CertificateDer::from(vec![1u8; 10]); 5]).encode(),
        Err(FormatError::ChainLength { count: 5 })
    ));
    assert!(matches!(
        block(vec![CertificateDer::from(vec![1u8; MAX_CERT_LEN + 1])]).encode(),
        Err(FormatError::CertificateLength { index: 0, .. })
    ));
    let short = SignatureBlock {
        algorithm: SignatureAlgorithm::Ed25519,
        signature: &[0u8; 63],
        chain: one,
    };
    assert!(matches!(
        short.encode(),
        Err(FormatError::SignatureLength { len: 63, .. })
    ));
}

#[test]
fn structure_rules() {
    let unsigned = embed_manifest(EMPTY, &manifest()).unwrap();
    let b = block(vec![CertificateDer::from(vec![1u8; 10])]);
    let signed = attach_signature(&unsigned, &b).unwrap();
    let file = parse(&signed).unwrap();
    assert_eq!(file.signed_bytes(), &unsigned[..]);
    assert_eq!(file.signature(), Some(&b));

    // A second signature, or anything after the signature, is refused.
    assert!(matches!(
        attach_signature(&signed, &b),
        Err(FormatError::AlreadySigned)
    ));
    let after = append_custom_section(&signed, "name", b"").unwrap();
    assert!(matches!(
        parse(&after),
        Err(FormatError::SignatureNotLast { .. })
    ));
    let twice = append_custom_section(&signed, SIGNATURE_SECTION, &b.encode().unwrap()).unwrap();
    assert!(matches!(
        parse(&twice),
        Err(FormatError::SignatureNotLast { .. })
    ));

    // Two manifests are refused, even when both are valid.
    let text = toml::to_string(&manifest()).unwrap();
    let dup = append_custom_section(&unsigned, MANIFEST_SECTION, text.as_bytes()).unwrap();
    assert!(matches!(
        parse(&dup),
        Err(FormatError::DuplicateSection { .. })
    ));
    assert!(matches!(
        embed_manifest(&unsigned, &manifest()),
        Err(FormatError::AlreadyHasManifest)
    ));

    // No manifest, or a signature without a manifest.
    assert!(matches!(parse(EMPTY), Err(FormatError::MissingManifest)));
    let sig_only = append_custom_section(EMPTY, SIGNATURE_SECTION, &b.encode().unwrap()).unwrap();
    assert!(matches!(
        parse(&sig_only),
        Err(FormatError::MissingManifest)
    ));
}

#[test]
fn manifest_rules() {
    for bad in ["", "Least", "a b", "a/b", &"x".repeat(65), "é"] {
        let mut m = manifest();
        m.name = bad.into();
        assert!(
            matches!(
                embed_manifest(EMPTY, &m),
                Err(FormatError::InvalidName { .. })
            ),
            "{bad:?}"
        );
    }
    let mut m = manifest();
    m.name = "a-b_9".repeat(12).chars().take(64).collect();
    assert!(embed_manifest(EMPTY, &m).is_ok());
    let mut m = manifest();
    m.subnets = vec!["10.1.2.3/16".into()];
    assert!(matches!(
        embed_manifest(EMPTY, &m),
        Err(FormatError::InvalidSubnet { .. })
    ));
    let mut m = manifest();
    m.capabilities = vec![Capability::Log, Capability::Log];
    assert!(matches!(
        embed_manifest(EMPTY, &m),
        Err(FormatError::DuplicateCapability { .. })
    ));

    let unknown = "name = \"a\"\nversion = \"1.0.0\"\nkind = \"policy\"\nroot = true\n";
    assert!(matches!(
        parse_manifest(unknown),
        Err(FormatError::ManifestToml { .. })
    ));
    let long = format!("{}\n{}", "#".repeat(MAX_MANIFEST_LEN), "name = \"a\"");
    assert!(matches!(
        parse_manifest(&long),
        Err(FormatError::ManifestTooLong { .. })
    ));
    let bin = append_custom_section(EMPTY, MANIFEST_SECTION, &[0xff, 0xfe]).unwrap();
    assert!(matches!(parse(&bin), Err(FormatError::ManifestNotUtf8)));
}

#[test]
fn not_wasm_and_components_are_refused() {
    assert!(matches!(parse(b""), Err(FormatError::Wasm { .. })));
    assert!(matches!(
        parse(b"\0asm\x02\0\0\0"),
        Err(FormatError::Wasm { .. })
    ));
    // Component header: version 0x0d, layer 1.
    assert!(matches!(
        parse(b"\0asm\x0d\0\x01\0"),
        Err(FormatError::Component)
    ));
    // Code section claiming more bytes than exist.
    let trunc = [EMPTY, &[10, 0x80, 0x80, 0x04, 0]].concat();
    assert!(parse(&trunc).is_err());
}
