//! Scheduler ABI codec: the documented bytes, round trips, malformed and short
//! buffers, and the rank result convention.

use proptest::prelude::*;
use sdk::{
    AbiError, IO_BUFFER_SIZE, MAX_RANK, RANK_FAULT, RankRequest, export, harness, layout,
    rank_from_raw, rank_to_raw,
};

/// A 1500-byte TCP packet of class 7 ranked at node 2 through child 5.
const RANK_BYTES: [u8; 64] = [
    0xdc, 0x05, 0, 0, // len 1500
    7, 0, 0, 0, // class
    2, 0, 0, 0, // node
    5, 0, 0, 0, // child
    8, 7, 6, 5, 4, 3, 2, 1, // flow hash
    0x10, 0, 0, 0, 0, 0, 0, 0, // now_ns
    0x20, 0, 0, 0, 0, 0, 0, 0, // vtime
    3, 0, 0, 0, 0, 0, 0, 0, // busy period
    30, 0, 0, 0, // weight
    9, 0, 0, 0, // queued
    46, 2, 6, 0, // dscp EF, priority, proto TCP, reserved
    0, 0, 0, 0, // reserved
];

fn sample() -> RankRequest {
    RankRequest::leaf(1500, 7, 0x0102_0304_0506_0708)
        .with_node(2, 5, 30, 2)
        .with_state(0x20, 3, 9)
        .with_now(0x10)
        .with_dscp(46, 6)
}

#[test]
fn request_encodes_to_the_documented_bytes() {
    let mut out = [0xAA_u8; 64];
    sample().encode(&mut out).unwrap();
    assert_eq!(out, RANK_BYTES);
    let back = RankRequest::decode(&RANK_BYTES).unwrap();
    assert_eq!(back, sample());
    assert!(!back.is_leaf());
    assert!(RankRequest::leaf(60, 3, 0).is_leaf());
    assert_eq!(layout::IO_RANK, 0..64);
    assert_eq!(RankRequest::SIZE, 64);
    const { assert!(RankRequest::SIZE <= IO_BUFFER_SIZE) };
}

#[test]
fn short_and_malformed_buffers_are_errors() {
    for len in 0..64 {
        assert!(matches!(
            RankRequest::decode(&RANK_BYTES[..len]),
            Err(AbiError::BufferTooShort { needed: 64, .. })
        ));
        let mut out = vec![0; len];
        assert!(sample().encode(&mut out).is_err());
    }
    for (at, value) in [(59, 1_u8), (60, 1), (63, 0x80), (56, 64)] {
        let mut bytes = RANK_BYTES;
        bytes[at] = value;
        assert!(
            matches!(
                RankRequest::decode(&bytes),
                Err(AbiError::ReservedNotZero { .. })
            ),
            "byte {at} = {value}"
        );
    }
    let mut bytes = RANK_BYTES;
    bytes[48] = 0;
    assert_eq!(RankRequest::decode(&bytes), Err(AbiError::ZeroWeight));
    assert_eq!(RankRequest::ZEROED.validate(), Err(AbiError::ZeroWeight));
}

#[test]
fn builders_keep_the_request_valid() {
    let r = RankRequest::leaf(100, 1, 2)
        .with_node(0, 1, 0, 9)
        .with_dscp(0xff, 17);
    assert_eq!(r.weight, 1, "weight 0 is clamped to 1");
    assert_eq!(r.dscp, 0x3f, "DSCP is masked to 6 bits");
    assert_eq!(r.validate(), Ok(()));
}

#[test]
fn rank_results_saturate_and_negative_is_a_fault() {
    assert_eq!(rank_to_raw(0), 0);
    assert_eq!(rank_to_raw(MAX_RANK), i64::MAX);
    assert_eq!(rank_to_raw(u64::MAX), i64::MAX);
    assert_eq!(rank_from_raw(i64::MAX), Ok(MAX_RANK));
    assert_eq!(rank_from_raw(5), Ok(5));
    assert_eq!(
        rank_from_raw(RANK_FAULT),
        Err(AbiError::InvalidRank { raw: -1 })
    );
    assert!(rank_from_raw(i64::MIN).is_err());
}

#[test]
fn harness_calls_through_the_buffer() {
    let seen = harness::rank(
        |r| u64::from(r.weight) * 1000 + u64::from(r.dscp),
        &sample(),
    );
    assert_eq!(seen, Ok(30_046));
    assert_eq!(harness::rank(|_| u64::MAX, &sample()), Ok(MAX_RANK));
    // A request the host could never send is refused before the function runs.
    assert_eq!(
        harness::rank(|_| 1, &RankRequest::ZEROED),
        Err(AbiError::ZeroWeight)
    );
}

#[test]
fn rank_export_signature() {
    assert_eq!(export::RANK.name, "pronto_rank");
    assert!(export::RANK.signature.params.is_empty());
    assert_eq!(export::RANK.signature.results, &[sdk::ValType::I64]);
    assert_eq!(export::SCHEDULER_ENTRY_POINTS, [export::RANK]);
    assert!(!export::ENTRY_POINTS.contains(&export::RANK));
}

proptest! {
    #[test]
    fn round_trip(
        len in any::<u32>(), class in any::<u32>(), node in any::<u32>(),
        child in any::<u32>(), hash in any::<u64>(), now in any::<u64>(),
        vtime in any::<u64>(), period in any::<u64>(), weight in 1_u32..,
        queued in any::<u32>(), dscp in 0_u8..64, priority in any::<u8>(), proto in any::<u8>(),
    ) {
        let r = RankRequest::leaf(len, class, hash)
            .with_node(node, child, weight, priority)
            .with_state(vtime, period, queued)
            .with_now(now)
            .with_dscp(dscp, proto);
        let mut out = [0_u8; 64];
        r.encode(&mut out).unwrap();
        prop_assert_eq!(RankRequest::decode(&out), Ok(r));
    }

    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
        if let Ok(r) = RankRequest::decode(&bytes) {
            let mut out = [0_u8; 64];
            r.encode(&mut out).unwrap();
            prop_assert_eq!(&out[..], &bytes[..64]);
        }
    }
}
