//! Codec: round trips, typed errors on bad input, limits, streaming.
#![expect(clippy::unwrap_used, reason = "test code")]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use router_core::classify::FlowKey;
use router_core::policy::Level;
use signaling::codec::{HEADER_LEN, MAGIC, MAX_BODY_LEN, VERSION};
use signaling::*;

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
        any::<u128>().prop_map(|a| IpAddr::V6(Ipv6Addr::from(a))),
    ]
}

fn key() -> impl Strategy<Value = FlowKey> {
    (any::<u8>(), ip(), any::<u16>(), ip(), any::<u16>()).prop_map(
        |(proto, src, src_port, dst, dst_port)| FlowKey {
            proto,
            src,
            src_port,
            dst,
            dst_port,
        },
    )
}

fn prefix() -> impl Strategy<Value = SubnetPrefix> {
    (ip(), any::<u8>()).prop_map(|(addr, len)| match addr {
        IpAddr::V4(a) => {
            let len = len % 33;
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            SubnetPrefix::new(IpAddr::V4((u32::from(a) & mask).into()), len).unwrap()
        }
        IpAddr::V6(a) => {
            let len = len % 129;
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            SubnetPrefix::new(IpAddr::V6((u128::from(a) & mask).into()), len).unwrap()
        }
    })
}

fn level() -> impl Strategy<Value = Level> {
    prop_oneof![Just(Level::Network), Just(Level::System), Just(Level::Site)]
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![
        Just(Role::Host),
        Just(Role::Site),
        Just(Role::System),
        Just(Role::Network),
        Just(Role::Spare)
    ]
}

fn name() -> impl Strategy<Value = NodeName> {
    "[a-z][a-z0-9-]{0,20}[a-z0-9](\\.[a-z][a-z0-9]{0,10}){0,3}"
        .prop_map(|s| NodeName::new(&s).unwrap())
}

fn registration() -> impl Strategy<Value = Registration> {
    (name(), level(), role(), any::<u32>()).prop_map(|(node, level, role, keepalive_ms)| {
        Registration {
            node,
            level,
            role,
            keepalive_ms,
        }
    })
}

fn phase() -> impl Strategy<Value = FlowPhase> {
    prop_oneof![
        Just(FlowPhase::SynSeen),
        Just(FlowPhase::Established),
        Just(FlowPhase::Closing),
        Just(FlowPhase::Udp),
        Just(FlowPhase::Other)
    ]
}

fn record() -> impl Strategy<Value = FlowRecord> {
    (
        key(),
        ip(),
        any::<u32>(),
        level(),
        phase(),
        any::<[u64; 4]>(),
    )
        .prop_map(
            |(key, next_hop, label, level, state, [a, i, p, b])| FlowRecord {
                key,
                next_hop,
                label,
                level,
                state,
                age_ms: a,
                idle_ms: i,
                packets: p,
                bytes: b,
            },
        )
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        registration().prop_map(Message::Hello),
        (registration(), any::<u64>()).prop_map(|(registration, e)| Message::HelloAck(HelloAck {
            registration,
            your_epoch: Epoch(e)
        })),
        (
            any::<u64>(),
            prop::collection::vec((prefix(), 0.0f32..1e9), 0..40)
        )
            .prop_map(|(seq, s)| Message::StateUpdate(StateUpdate {
                seq,
                subnets: s
                    .into_iter()
                    .map(|(subnet, load)| SubnetLoad { subnet, load })
                    .collect()
            })),
        (key(), ip()).prop_map(|(key, server)| Message::TunnelObject(TunnelObject { key, server })),
        (any::<u64>(), key(), 0..=MAX_WHOHAS_TTL)
            .prop_map(|(query_id, key, ttl)| Message::WhoHas(WhoHas { query_id, key, ttl })),
        (any::<u64>(), proptest::option::of(record()))
            .prop_map(|(query_id, entry)| Message::WhoHasAnswer(WhoHasAnswer { query_id, entry })),
        (
            any::<u64>(),
            prop::collection::vec(record(), 0..20),
            prop::collection::vec(key(), 0..20)
        )
            .prop_map(
                |(seq, upserts, removals)| Message::MirrorDelta(MirrorDelta {
                    seq,
                    upserts,
                    removals
                })
            ),
        any::<u64>().prop_map(|seq| Message::Keepalive { seq }),
    ]
}

fn envelope() -> impl Strategy<Value = Envelope> {
    (any::<u64>(), message()).prop_map(|(e, message)| Envelope {
        epoch: Epoch(e),
        message,
    })
}

fn frame(env: &Envelope) -> Vec<u8> {
    let mut out = Vec::new();
    encode(env, &mut out).unwrap();
    out
}

/// A frame around a body postcard-encoded without the encoder's checks.
fn raw_frame(body: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.push(VERSION);
    out.push(0);
    out.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn v4key(n: u32) -> FlowKey {
    FlowKey {
        proto: 6,
        src: IpAddr::V4(Ipv4Addr::from(n)),
        src_port: 40000,
        dst: IpAddr::V4(Ipv4Addr::new(192, 200, 0, 10)),
        dst_port: 80,
    }
}

fn v6record(n: u128) -> FlowRecord {
    FlowRecord {
        key: FlowKey {
            proto: 6,
            src: IpAddr::V6(Ipv6Addr::from(u128::MAX - n)),
            src_port: u16::MAX,
            dst: IpAddr::V6(Ipv6Addr::from(u128::MAX)),
            dst_port: u16::MAX,
        },
        next_hop: IpAddr::V6(Ipv6Addr::from(u128::MAX)),
        label: u32::MAX,
        level: Level::Site,
        state: FlowPhase::Established,
        age_ms: u64::MAX,
        idle_ms: u64::MAX,
        packets: u64::MAX,
        bytes: u64::MAX,
    }
}

proptest! {
    #[test]
    fn every_message_round_trips(env in envelope()) {
        let bytes = frame(&env);
        let (back, used) = decode(&bytes).unwrap();
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(back, env);
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let one_shot = decode(&bytes);
        let mut d = Decoder::new();
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let n = d.feed(rest);
            rest = &rest[n..];
            prop_assert!(d.buffered() <= MAX_FRAME_LEN);
            while let Ok(Some(_)) = d.next_message() {}
        }
        // Random input almost never starts with the magic; when it does not, both
        // paths agree it is not our protocol.
        if bytes.len() >= 2 && bytes[..2] != MAGIC {
            prop_assert!(
                matches!(one_shot, Err(CodecError::BadMagic { .. })),
                "one-shot: {:?}",
                one_shot
            );
            prop_assert!(d.is_poisoned());
            prop_assert_eq!(d.stats().bad_magic, 1);
        }
    }

    #[test]
    fn mutated_frames_give_typed_errors(
        env in envelope(),
        pos in any::<prop::sample::Index>(),
        val in any::<u8>(),
    ) {
        let mut bytes = frame(&env);
        let i = pos.index(bytes.len());
        bytes[i] = val;
        match decode(&bytes) {
            Ok((_, used)) => prop_assert!(used <= bytes.len()),
            Err(CodecError::BadMagic { got }) => prop_assert!(i < 2 && got != MAGIC),
            Err(CodecError::UnknownVersion { got }) => {
                prop_assert_eq!(i, 2);
                prop_assert_eq!(got, val);
            }
            Err(CodecError::Oversize { len, limit }) => {
                prop_assert!((4..8).contains(&i));
                prop_assert!(len > limit);
            }
            Err(CodecError::Truncated { have, need }) => {
                prop_assert!((4..8).contains(&i));
                prop_assert!(need > have);
            }
            Err(CodecError::Malformed { .. }) => prop_assert!(i == 3 || i >= 4),
            Err(e) => prop_assert!(false, "unexpected error {e:?}"),
        }
    }

    #[test]
    fn truncated_frames_are_truncated(env in envelope(), cut in any::<prop::sample::Index>()) {
        let bytes = frame(&env);
        let cut = cut.index(bytes.len());
        prop_assert_eq!(
            decode(&bytes[..cut]).unwrap_err(),
            CodecError::Truncated {
                have: cut,
                need: if cut < HEADER_LEN { HEADER_LEN } else { bytes.len() }
            }
        );
        // The streaming decoder just waits.
        let mut d = Decoder::new();
        prop_assert_eq!(d.feed(&bytes[..cut]), cut);
        prop_assert_eq!(d.next_message(), Ok(None));
    }

    #[test]
    fn byte_at_a_time_yields_the_same_messages(envs in prop::collection::vec(envelope(), 1..6)) {
        let mut stream = Vec::new();
        for e in &envs {
            encode(e, &mut stream).unwrap();
        }
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for b in &stream {
            prop_assert_eq!(d.feed(std::slice::from_ref(b)), 1);
            while let Some(m) = d.next_message().unwrap() {
                got.push(m);
            }
        }
        prop_assert_eq!(d.buffered(), 0);
        prop_assert_eq!(d.stats().frames, envs.len() as u64);
        prop_assert_eq!(got, envs);
    }
}

#[test]
fn header_errors_are_typed_and_counted() {
    let good = frame(&Envelope {
        epoch: Epoch(7),
        message: Message::Keepalive { seq: 1 },
    });

    let mut bad = good.clone();
    bad[0] = b'X';
    assert_eq!(
        decode(&bad).unwrap_err(),
        CodecError::BadMagic { got: [b'X', b'S'] }
    );

    let mut bad = good.clone();
    bad[2] = 2;
    assert_eq!(
        decode(&bad).unwrap_err(),
        CodecError::UnknownVersion { got: 2 }
    );

    let mut bad = good.clone();
    bad[4..8].copy_from_slice(&1_000_000u32.to_be_bytes());
    assert_eq!(
        decode(&bad).unwrap_err(),
        CodecError::Oversize {
            len: 1_000_000 + HEADER_LEN,
            limit: MAX_FRAME_LEN
        }
    );
    // The streaming decoder refuses on the header alone: no body is buffered.
    let mut d = Decoder::new();
    d.feed(&bad[..HEADER_LEN]);
    assert!(matches!(d.next_message(), Err(CodecError::Oversize { .. })));
    assert!(d.is_poisoned());
    assert_eq!(d.buffered(), 0);
    assert_eq!(d.stats().oversize, 1);
    // Poisoned: further input is discarded, nothing decodes.
    assert_eq!(d.feed(&good), good.len());
    assert_eq!(d.next_message(), Ok(None));

    let mut bad = good.clone();
    bad[3] = 1;
    assert_eq!(
        decode(&bad).unwrap_err(),
        CodecError::Malformed {
            reason: "reserved flags set"
        }
    );
}

#[test]
fn body_errors_name_the_field() {
    // Unknown message variant (index 200).
    let body = [7u8, 200, 1];
    assert_eq!(
        decode(&raw_frame(&body)).unwrap_err(),
        CodecError::Malformed {
            reason: "unknown message or enum variant"
        }
    );

    // Trailing garbage after a valid keepalive.
    let mut body = postcard::to_allocvec(&Envelope {
        epoch: Epoch(1),
        message: Message::Keepalive { seq: 3 },
    })
    .unwrap();
    body.push(0);
    assert_eq!(
        decode(&raw_frame(&body)).unwrap_err(),
        CodecError::Malformed {
            reason: "trailing bytes after message"
        }
    );

    // NaN load, written past the encoder's checks.
    let nan = Envelope {
        epoch: Epoch(1),
        message: Message::StateUpdate(StateUpdate {
            seq: 1,
            subnets: vec![SubnetLoad {
                subnet: SubnetPrefix::new("192.200.0.0".parse().unwrap(), 16).unwrap(),
                load: f32::NAN,
            }],
        }),
    };
    let body = postcard::to_allocvec(&nan).unwrap();
    assert_eq!(
        decode(&raw_frame(&body)).unwrap_err(),
        CodecError::Malformed {
            reason: "subnet load not finite and non-negative"
        }
    );
    assert_eq!(
        encode(&nan, &mut Vec::new()).unwrap_err(),
        CodecError::Malformed {
            reason: "subnet load not finite and non-negative"
        }
    );

    // Host bits set in a prefix: patch the prefix length of a valid /16 to /8.
    let ok = Envelope {
        epoch: Epoch(1),
        message: Message::StateUpdate(StateUpdate {
            seq: 1,
            subnets: vec![SubnetLoad {
                subnet: SubnetPrefix::new("192.200.0.0".parse().unwrap(), 16).unwrap(),
                load: 0.5,
            }],
        }),
    };
    let mut body = postcard::to_allocvec(&ok).unwrap();
    let at = body.iter().position(|&b| b == 16).unwrap();
    body[at] = 8;
    assert_eq!(
        decode(&raw_frame(&body)).unwrap_err(),
        CodecError::Malformed {
            reason: "subnet prefix"
        }
    );

    // A bad node name in a hello.
    let hello = Envelope {
        epoch: Epoch(1),
        message: Message::Hello(Registration {
            node: NodeName::new("site-a.example").unwrap(),
            level: Level::Site,
            role: Role::Site,
            keepalive_ms: 1000,
        }),
    };
    let mut body = postcard::to_allocvec(&hello).unwrap();
    let at = body.iter().position(|&b| b == b'-').unwrap();
    body[at] = b' ';
    assert_eq!(
        decode(&raw_frame(&body)).unwrap_err(),
        CodecError::Malformed {
            reason: "node name syntax"
        }
    );
}

#[test]
fn list_limits_are_enforced_both_ways() {
    let subnet = SubnetPrefix::new("10.0.0.0".parse().unwrap(), 8).unwrap();
    let too_many = Envelope {
        epoch: Epoch(1),
        message: Message::StateUpdate(StateUpdate {
            seq: 1,
            subnets: vec![SubnetLoad { subnet, load: 1.0 }; MAX_SUBNETS_PER_UPDATE + 1],
        }),
    };
    assert_eq!(
        encode(&too_many, &mut Vec::new()).unwrap_err(),
        CodecError::Malformed {
            reason: "too many subnets"
        }
    );
    let body = postcard::to_allocvec(&too_many).unwrap();
    assert!(
        body.len() <= MAX_BODY_LEN,
        "fits a frame, so the list limit is what refuses it"
    );
    assert_eq!(
        decode(&raw_frame(&body)).unwrap_err(),
        CodecError::Malformed {
            reason: "list longer than its limit"
        }
    );

    let removals = Envelope {
        epoch: Epoch(1),
        message: Message::MirrorDelta(MirrorDelta {
            seq: 1,
            upserts: vec![],
            removals: (0..=MAX_DELTA_REMOVALS as u32).map(v4key).collect(),
        }),
    };
    let body = postcard::to_allocvec(&removals).unwrap();
    assert_eq!(
        decode(&raw_frame(&body)).unwrap_err(),
        CodecError::Malformed {
            reason: "list longer than its limit"
        }
    );

    // A declared list length far beyond the frame is refused up front: hello-sized
    // body claiming 2^32 subnets.
    let mut body = vec![1u8, 2, 1];
    body.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    assert!(matches!(
        decode(&raw_frame(&body)).unwrap_err(),
        CodecError::Malformed { .. }
    ));
}

#[test]
fn largest_legal_messages_fit_one_frame() {
    let v6 = SubnetPrefix::new(IpAddr::V6(Ipv6Addr::from(u128::MAX)), 128).unwrap();
    let biggest_update = Envelope {
        epoch: Epoch(u64::MAX),
        message: Message::StateUpdate(StateUpdate {
            seq: u64::MAX,
            subnets: vec![
                SubnetLoad {
                    subnet: v6,
                    load: f32::MAX
                };
                MAX_SUBNETS_PER_UPDATE
            ],
        }),
    };
    let biggest_delta = Envelope {
        epoch: Epoch(u64::MAX),
        message: Message::MirrorDelta(MirrorDelta {
            seq: u64::MAX,
            upserts: (0..MAX_DELTA_UPSERTS as u128).map(v6record).collect(),
            removals: (0..MAX_DELTA_REMOVALS as u128)
                .map(|n| v6record(n).key)
                .collect(),
        }),
    };
    for env in [biggest_update, biggest_delta] {
        let bytes = frame(&env);
        assert!(bytes.len() <= MAX_FRAME_LEN, "{} bytes", bytes.len());
        assert_eq!(decode(&bytes).unwrap().0, env);
    }
}

#[test]
fn prefix_and_name_validation() {
    assert!(SubnetPrefix::new("192.200.0.0".parse().unwrap(), 16).is_ok());
    assert_eq!(
        SubnetPrefix::new("192.200.0.1".parse().unwrap(), 16),
        Err(PrefixError::HostBits {
            addr: "192.200.0.1".parse().unwrap(),
            len: 16
        })
    );
    assert_eq!(
        SubnetPrefix::new("10.0.0.0".parse().unwrap(), 33),
        Err(PrefixError::Length { len: 33, max: 32 })
    );
    assert!(SubnetPrefix::new("::".parse().unwrap(), 0).is_ok());
    assert!(SubnetPrefix::new("2001:db8::".parse().unwrap(), 32).is_ok());
    assert!(SubnetPrefix::new("2001:db8::1".parse().unwrap(), 64).is_err());
    assert!(NodeName::new("").is_err());
    assert!(NodeName::new("bad name").is_err());
    assert!(NodeName::new(&"a".repeat(254)).is_err());
    assert_eq!(
        NodeName::new("slr1.site-a.example").unwrap().as_str(),
        "slr1.site-a.example"
    );
}
