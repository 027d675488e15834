//! Fuzz the signalling codec: the one-shot decoder, the streaming decoder fed in
//! arbitrary chunks, and a Peer fed the same bytes. None may panic; decoded
//! messages must re-encode and decode to themselves.
#![no_main]

use libfuzzer_sys::fuzz_target;
use signaling::{
    Decoder, Epoch, LocalNode, NodeName, Peer, PeerAuth, PeerConfig, Role, decode, encode,
};

fuzz_target!(|data: &[u8]| {
    if let Ok((env, used)) = decode(data) {
        assert!(used <= data.len());
        let mut again = Vec::new();
        if encode(&env, &mut again).is_ok() {
            let (back, n) = decode(&again).expect("re-encoded frame decodes");
            assert_eq!(n, again.len());
            assert_eq!(back, env);
        }
    }

    // First byte picks the chunk size, so partial reads are exercised too.
    let (chunk, rest) = match data.split_first() {
        Some((c, r)) => (usize::from(*c).max(1), r),
        None => return,
    };
    let mut d = Decoder::new();
    for piece in rest.chunks(chunk) {
        let mut p = piece;
        while !p.is_empty() {
            let n = d.feed(p);
            p = &p[n..];
            assert!(d.buffered() <= signaling::MAX_FRAME_LEN);
            while let Ok(Some(_)) = d.next_message() {}
            if n == 0 {
                break;
            }
        }
    }

    let (Ok(me), Ok(them)) = (
        NodeName::new("sys1.example"),
        NodeName::new("site-a.example"),
    ) else {
        return;
    };
    let now = router_core::time::Instant::from_secs(1);
    let mut peer = Peer::accept(
        PeerConfig::default(),
        LocalNode {
            name: me,
            level: router_core::policy::Level::System,
            role: Role::System,
        },
        PeerAuth::Name(them),
        Epoch(1),
        now,
    );
    for piece in rest.chunks(chunk) {
        peer.handle_input(now, piece);
        while peer.poll_event().is_some() {}
        let mut out = Vec::new();
        let _ = peer.poll_transmit(&mut out);
    }
});
