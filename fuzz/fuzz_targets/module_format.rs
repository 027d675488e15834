//! Arbitrary bytes through the signed module format: `parse` must never panic,
//! and whatever it accepts must round-trip through the writers.
#![no_main]

use exec_env::format::{self, FormatError, SignatureBlock};
use libfuzzer_sys::fuzz_target;

/// The smallest core module: magic and version.
const EMPTY: &[u8] = b"\0asm\x01\0\0\0";

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = format::parse(data) {
        // The signed bytes are a prefix holding the manifest section.
        let signed = file.signed_bytes();
        assert!(data.starts_with(signed));
        let ms = file.manifest_section();
        assert!(ms.start < ms.end && ms.end <= signed.len());
        assert!(data[ms].ends_with(file.manifest_text().as_bytes()));

        // What the VM gets is itself a valid unsigned module file with the same
        // manifest (the signature section was last).
        let unsigned = format::parse(signed).expect("signed bytes re-parse");
        assert!(unsigned.signature().is_none());
        assert_eq!(unsigned.manifest(), file.manifest());
        assert_eq!(unsigned.signed_bytes(), signed);

        match file.signature() {
            Some(sig) => {
                assert!(signed.len() < data.len());
                let again = format::attach_signature(signed, sig).expect("re-attach");
                let back = format::parse(&again).expect("re-attached parses");
                assert_eq!(back.signature(), Some(sig));
                assert_eq!(back.signed_bytes(), signed);
            }
            None => assert_eq!(signed.len(), data.len()),
        }

        // A manifest that parsed embeds and reads back equal (unless its
        // canonical TOML is longer than the bound, e.g. many escapes).
        match format::embed_manifest(EMPTY, file.manifest()) {
            Ok(out) => assert_eq!(
                format::parse(&out).expect("embedded parses").manifest(),
                file.manifest()
            ),
            Err(FormatError::ManifestTooLong { .. }) => {}
            Err(e) => panic!("valid manifest does not embed: {e}"),
        }
    }

    // The same bytes as a signature block payload: decode/encode is exact.
    if let Ok(block) = SignatureBlock::decode(data) {
        assert_eq!(block.encode().expect("decoded block encodes"), data);
    }

    // And as manifest text.
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(m) = format::parse_manifest(text)
    {
        match format::embed_manifest(EMPTY, &m) {
            Ok(out) => assert_eq!(format::parse(&out).expect("embedded parses").manifest(), &m),
            Err(FormatError::ManifestTooLong { .. }) => {}
            Err(e) => panic!("valid manifest does not embed: {e}"),
        }
    }
});
