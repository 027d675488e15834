//! Codec tests: a fixed byte array, round trips, malformed and short buffers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::prelude::*;
use sdk::{
    AbiError, Candidate, DECISION_FAULT, DECISION_REJECT, Decision, FlowRequest, IO_BUFFER_SIZE,
    Level, MAX_CANDIDATES, decode_candidates, decode_io, encode_io, flags, harness, layout,
};

/// TCP 10.0.0.1:1234 -> 192.200.0.10:80, subnet 7, system level, t = 0x0102030405060708.
const REQUEST_BYTES: [u8; 56] = [
    6, 4, 1, 0, // proto, family, level, reserved
    0xd2, 0x04, 0x50, 0x00, // ports 1234, 80 (LE)
    7, 0, 0, 0, 0, 0, 0, 0, // subnet id, reserved
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1, // src
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 200, 0, 10, // dst
    8, 7, 6, 5, 4, 3, 2, 1, // now
];

fn sample_request() -> FlowRequest {
    harness::tcp(([10, 0, 0, 1], 1234), ([192, 200, 0, 10], 80))
        .with_subnet(7)
        .with_level(Level::System)
        .with_now(0x0102_0304_0506_0708)
}

#[test]
fn request_encodes_to_the_documented_bytes() {
    let mut out = [0xAA_u8; 56];
    sample_request().encode(&mut out).unwrap();
    assert_eq!(out, REQUEST_BYTES);
    let back = FlowRequest::decode(&REQUEST_BYTES).unwrap();
    assert_eq!(back, sample_request());
    assert_eq!(back.src_ip(), IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
    assert_eq!(back.dst_ip(), IpAddr::V4(Ipv4Addr::new(192, 200, 0, 10)));
}

#[test]
fn request_words_are_the_documented_bytes_in_little_endian_words() {
    let words = sample_request().to_words();
    for (k, word) in words.iter().enumerate() {
        let bytes: [u8; 8] = REQUEST_BYTES[8 * k..8 * k + 8].try_into().unwrap();
        assert_eq!(*word, u64::from_le_bytes(bytes), "word {k}");
    }
    assert_eq!(words[0], 0x0050_04d2_0001_0406);
    assert_eq!(words[6], 0x0102_0304_0506_0708);
    assert_eq!(FlowRequest::from_words(words), sample_request());
}

#[test]
fn candidate_encodes_to_the_documented_bytes() {
    let c = Candidate::up([10, 1, 0, 2].into(), 0.5, 2.0).with_tags(0x8001);
    let mut out = [0_u8; 40];
    c.encode(&mut out).unwrap();
    assert_eq!(&out[10..16], &[0xff, 0xff, 10, 1, 0, 2]);
    assert_eq!(&out[16..24], &0.5_f64.to_le_bytes());
    assert_eq!(&out[24..32], &2.0_f64.to_le_bytes());
    assert_eq!(&out[32..36], &[1, 0, 0x01, 0x80]);
    assert_eq!(&out[36..40], &[0, 0, 0, 0]);
    let back = Candidate::decode(&out).unwrap();
    assert_eq!(back, c);
    assert!(back.is_up());
    assert_eq!(back.tags(), 0x8001);
}

#[test]
fn io_offsets_follow_the_layout() {
    assert_eq!(layout::IO_CANDIDATES_OFFSET, 56);
    assert_eq!(IO_BUFFER_SIZE, 56 + 256 * 40);
    assert_eq!(layout::io_candidate(3), 176..216);
    let cands = [
        Candidate::up([1, 1, 1, 1].into(), 0.1, 0.0),
        Candidate::down([2, 2, 2, 2].into(), 0.2, 0.0),
    ];
    let mut buf = vec![0_u8; IO_BUFFER_SIZE];
    assert_eq!(encode_io(&sample_request(), &cands, &mut buf).unwrap(), 136);
    assert_eq!(&buf[..56], &REQUEST_BYTES);
    assert_eq!(
        Candidate::decode(&buf[layout::io_candidate(1)]).unwrap(),
        cands[1]
    );
}

#[test]
fn short_buffers_are_errors() {
    for len in 0..56 {
        assert!(matches!(
            FlowRequest::decode(&REQUEST_BYTES[..len]),
            Err(AbiError::BufferTooShort { needed: 56, .. })
        ));
        let mut out = vec![0; len];
        assert!(sample_request().encode(&mut out).is_err());
    }
    let c = Candidate::up([1, 2, 3, 4].into(), 0.0, 0.0);
    let mut out = [0_u8; 40];
    c.encode(&mut out).unwrap();
    for len in 0..40 {
        assert!(Candidate::decode(&out[..len]).is_err());
        assert!(c.encode(&mut vec![0; len]).is_err());
    }
    // Two candidates need 56 + 80 bytes.
    let mut buf = vec![0_u8; 135];
    assert!(encode_io(&sample_request(), &[c, c], &mut buf).is_err());
    let mut decoded = [Candidate::ZEROED; 2];
    assert!(decode_io(&buf, 2, &mut decoded).is_err());
    // Output slice too small.
    let bytes = [out, out].concat();
    assert!(decode_candidates(&bytes, 2, &mut decoded[..1]).is_err());
    assert_eq!(decode_candidates(&bytes, 2, &mut decoded).unwrap(), &[c, c]);
}

#[test]
fn malformed_fields_are_errors() {
    let mut b = REQUEST_BYTES;
    b[1] = 5;
    assert_eq!(
        FlowRequest::decode(&b),
        Err(AbiError::UnknownFamily { value: 5 })
    );
    let mut b = REQUEST_BYTES;
    b[2] = 3;
    assert_eq!(
        FlowRequest::decode(&b),
        Err(AbiError::UnknownLevel { value: 3 })
    );
    let mut b = REQUEST_BYTES;
    b[3] = 1;
    assert!(matches!(
        FlowRequest::decode(&b),
        Err(AbiError::ReservedNotZero { .. })
    ));
    let mut b = REQUEST_BYTES;
    b[13] = 1;
    assert!(matches!(
        FlowRequest::decode(&b),
        Err(AbiError::ReservedNotZero { .. })
    ));

    let mut c = [0_u8; 40];
    c[32] = 2; // reserved flag bit 1
    assert!(matches!(
        Candidate::decode(&c),
        Err(AbiError::ReservedNotZero { .. })
    ));
    let mut c = [0_u8; 40];
    c[39] = 1;
    assert!(matches!(
        Candidate::decode(&c),
        Err(AbiError::ReservedNotZero { .. })
    ));
}

#[test]
fn too_many_candidates_is_an_error() {
    let many = vec![Candidate::ZEROED; MAX_CANDIDATES + 1];
    let mut buf = vec![0_u8; IO_BUFFER_SIZE + 40];
    assert!(matches!(
        encode_io(&sample_request(), &many, &mut buf),
        Err(AbiError::TooManyCandidates { count: 257, .. })
    ));
    let mut out = vec![Candidate::ZEROED; MAX_CANDIDATES + 1];
    assert!(decode_candidates(&buf, MAX_CANDIDATES + 1, &mut out).is_err());
}

#[test]
fn decisions_encode_and_validate() {
    assert_eq!(Decision::Reject.to_raw(3), DECISION_REJECT);
    assert_eq!(Decision::Select(2).to_raw(3), 2);
    assert_eq!(Decision::Select(3).to_raw(3), DECISION_FAULT);
    assert_eq!(Decision::from_raw(-1, 0), Ok(Decision::Reject));
    assert_eq!(Decision::from_raw(0, 1), Ok(Decision::Select(0)));
    for (raw, n) in [(1, 1), (-2, 5), (i32::MIN, 5), (i32::MAX, 256), (0, 0)] {
        assert_eq!(
            Decision::from_raw(raw, n),
            Err(AbiError::InvalidDecision { raw, candidates: n })
        );
    }
}

#[test]
fn harness_reports_out_of_range_policy_answers() {
    let cands = harness::Candidates::new()
        .up([1, 1, 1, 1], 0.0, 0.0)
        .build();
    let req = sample_request();
    assert_eq!(
        harness::select(|_, c| Decision::Select(c.len()), &req, &cands),
        Err(AbiError::InvalidDecision {
            raw: DECISION_FAULT,
            candidates: 1
        })
    );
    assert_eq!(
        harness::select(|_, _| Decision::Select(0), &req, &cands),
        Ok(Decision::Select(0))
    );
    let sum = harness::aggregate(|c| c.iter().map(|c| c.load).sum(), &cands).unwrap();
    assert_eq!(sum, 0.0);
}

#[test]
fn new_clears_reserved_flag_bits() {
    let c = Candidate::new([1, 1, 1, 1].into(), 0.0, 0.0, 0xFFFF_FFFF);
    assert_eq!(c.flags & flags::RESERVED_MASK, 0);
    let mut out = [0_u8; 40];
    c.encode(&mut out).unwrap();
    assert!(Candidate::decode(&out).is_ok());
}

fn arb_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|b| IpAddr::V4(Ipv4Addr::from(b))),
        any::<[u8; 16]>().prop_map(|b| IpAddr::V6(Ipv6Addr::from(b))),
    ]
}

fn arb_request() -> impl Strategy<Value = FlowRequest> {
    (
        any::<u8>(),
        arb_ip(),
        any::<u16>(),
        arb_ip(),
        any::<u16>(),
        any::<u32>(),
        0_u8..3,
        any::<u64>(),
    )
        .prop_map(|(proto, s, sp, d, dp, subnet, level, now)| {
            let level = match level {
                0 => Level::Network,
                1 => Level::System,
                _ => Level::Site,
            };
            FlowRequest::new(proto, SocketAddr::new(s, sp), SocketAddr::new(d, dp))
                .with_subnet(subnet)
                .with_level(level)
                .with_now(now)
        })
}

fn arb_candidate() -> impl Strategy<Value = Candidate> {
    (
        arb_ip(),
        any::<f64>(),
        any::<f64>(),
        any::<bool>(),
        any::<u16>(),
    )
        .prop_map(|(ip, load, cost, up, tags)| {
            let c = if up {
                Candidate::up(ip, load, cost)
            } else {
                Candidate::down(ip, load, cost)
            };
            c.with_tags(tags)
        })
}

/// Bitwise comparison, so NaN loads round-trip too.
fn same(a: &Candidate, b: &Candidate) -> bool {
    let mut x = [0; 40];
    let mut y = [0; 40];
    a.encode(&mut x).is_ok() && b.encode(&mut y).is_ok() && x == y
}

proptest! {
    #[test]
    fn io_round_trips(req in arb_request(), cands in prop::collection::vec(arb_candidate(), 0..=MAX_CANDIDATES)) {
        let mut buf = vec![0_u8; IO_BUFFER_SIZE];
        encode_io(&req, &cands, &mut buf).unwrap();
        let mut out = vec![Candidate::ZEROED; MAX_CANDIDATES];
        let (r, c) = decode_io(&buf, cands.len(), &mut out).unwrap();
        prop_assert_eq!(r, req);
        prop_assert_eq!(c.len(), cands.len());
        for (a, b) in c.iter().zip(&cands) {
            prop_assert!(same(a, b));
        }
    }

    #[test]
    fn words_agree_with_the_byte_encoding(req in arb_request(), raw in any::<[u64; 7]>()) {
        let bytes = req.to_bytes();
        let words = req.to_words();
        for (k, word) in words.iter().enumerate() {
            let chunk: [u8; 8] = bytes[8 * k..8 * k + 8].try_into().unwrap();
            prop_assert_eq!(*word, u64::from_le_bytes(chunk));
        }
        prop_assert_eq!(FlowRequest::from_words(words), req);
        // Any words are some request (plain old data), and they come back as given.
        prop_assert_eq!(FlowRequest::from_words(raw).to_words(), raw);
    }

    #[test]
    fn v4_addresses_come_back_as_v4(ip in arb_ip()) {
        prop_assert_eq!(sdk::addr_from_bytes(sdk::addr_bytes(ip)), ip.to_canonical());
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600), n in 0_usize..300) {
        let _ = FlowRequest::decode(&bytes);
        let _ = Candidate::decode(&bytes);
        let mut out = vec![Candidate::ZEROED; 16];
        let _ = decode_candidates(&bytes, n, &mut out);
        let _ = decode_io(&bytes, n, &mut out);
    }

    #[test]
    fn from_raw_accepts_exactly_valid_answers(raw in any::<i32>(), n in 0_usize..=MAX_CANDIDATES) {
        let ok = raw == -1 || (raw >= 0 && (raw as usize) < n);
        prop_assert_eq!(Decision::from_raw(raw, n).is_ok(), ok);
        if let Ok(d) = Decision::from_raw(raw, n) {
            prop_assert_eq!(d.to_raw(n), raw);
        }
    }
}
