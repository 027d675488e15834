//! Server flow advertisements (the augmented ping, DESIGN.md §5) from arbitrary
//! bytes: the parser and the echo-reply finder never panic, and whatever parses
//! re-encodes to the same bytes (so no field is read from a place it is not
//! written to).
#![no_main]

use libfuzzer_sys::fuzz_target;
use router_core::wire::flowad::{FlowAdvert, MAC_LEN, emit_advert, find_in_echo_reply};

fuzz_target!(|data: &[u8]| {
    // As a whole packet (an echo reply as a router would receive it).
    if let Some(Ok(a)) = find_in_echo_reply(data) {
        let k = a.flow_key();
        let _ = (a.server(), a.key_id(), a.timestamp_ms(), a.nonce(), k);
    }
    // As the advertisement itself.
    if let Ok(a) = FlowAdvert::new_checked(data) {
        let fields = a.fields();
        let mac = *a.mac();
        let mut out = [0u8; 160];
        let n = emit_advert(&fields, &mut out, |_| mac).expect("parsed fields re-encode");
        assert_eq!(n, a.len());
        assert_eq!(&out[..n], &data[..n], "round trip changed the bytes");
        assert_eq!(a.signed_bytes().len() + MAC_LEN, n);
    }
});
