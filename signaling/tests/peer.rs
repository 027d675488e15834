//! Sans-IO peer state machine under a fake clock: no sockets, no real time.
#![expect(clippy::unwrap_used, reason = "test code")]

use std::net::IpAddr;
use std::time::Duration;

use router_core::classify::FlowKey;
use router_core::policy::Level;
use router_core::time::Instant;
use signaling::*;

const UPPER: &str = "sys1.as65001.example";
const LOWER: &str = "site-a.as65001.example";

fn name(s: &str) -> NodeName {
    NodeName::new(s).unwrap()
}

fn cfg() -> PeerConfig {
    PeerConfig {
        keepalive_interval: Duration::from_secs(1),
        dead_interval: Duration::from_secs(3),
        hello_timeout: Duration::from_secs(5),
        max_pending_bytes: 64 * 1024,
    }
}

fn upper(now: Instant) -> Peer {
    Peer::accept(
        cfg(),
        LocalNode {
            name: name(UPPER),
            level: Level::System,
            role: Role::System,
        },
        PeerAuth::Name(name(LOWER)),
        Epoch(0xAAAA),
        now,
    )
}

fn lower(now: Instant) -> Peer {
    lower_with_epoch(now, Epoch(0xBBBB))
}

fn lower_with_epoch(now: Instant, epoch: Epoch) -> Peer {
    Peer::connect(
        cfg(),
        LocalNode {
            name: name(LOWER),
            level: Level::Site,
            role: Role::Site,
        },
        PeerAuth::Name(name(UPPER)),
        epoch,
        now,
    )
}

/// Moves all pending bytes from `a` to `b` at `now`.
fn transfer(a: &mut Peer, b: &mut Peer, now: Instant) {
    let mut buf = Vec::new();
    if a.poll_transmit(&mut buf) > 0 {
        b.handle_input(now, &buf);
    }
}

fn events(p: &mut Peer) -> Vec<PeerEvent> {
    std::iter::from_fn(|| p.poll_event()).collect()
}

fn registered_pair(now: Instant) -> (Peer, Peer) {
    let mut up = upper(now);
    let mut low = lower(now);
    transfer(&mut low, &mut up, now);
    transfer(&mut up, &mut low, now);
    assert!(up.is_registered() && low.is_registered());
    assert_eq!(events(&mut up).len(), 1);
    assert_eq!(events(&mut low).len(), 1);
    (up, low)
}

fn frame(epoch: Epoch, message: Message) -> Vec<u8> {
    let mut out = Vec::new();
    encode(&Envelope { epoch, message }, &mut out).unwrap();
    out
}

fn update(seq: u64, load: f32) -> Message {
    Message::StateUpdate(StateUpdate {
        seq,
        subnets: vec![SubnetLoad {
            subnet: SubnetPrefix::new("192.200.0.0".parse().unwrap(), 16).unwrap(),
            load,
        }],
    })
}

fn hello(node: &str) -> Message {
    Message::Hello(Registration {
        node: name(node),
        level: Level::Site,
        role: Role::Site,
        keepalive_ms: 1000,
    })
}

fn key() -> FlowKey {
    FlowKey {
        proto: 6,
        src: "198.51.100.7".parse().unwrap(),
        src_port: 40001,
        dst: "192.200.0.10".parse().unwrap(),
        dst_port: 443,
    }
}

#[test]
fn registration_both_sides() {
    let t0 = Instant::from_secs(100);
    let mut up = upper(t0);
    let mut low = lower(t0);
    assert!(!up.is_registered() && !low.is_registered());
    assert_eq!(up.poll_timeout(), Some(t0 + cfg().hello_timeout));

    transfer(&mut low, &mut up, t0);
    assert_eq!(
        events(&mut up),
        vec![PeerEvent::Registered {
            identity: name(LOWER),
            level: Level::Site,
            role: Role::Site,
            epoch: Epoch(0xBBBB),
        }]
    );
    transfer(&mut up, &mut low, t0);
    assert_eq!(
        events(&mut low),
        vec![PeerEvent::Registered {
            identity: name(UPPER),
            level: Level::System,
            role: Role::System,
            epoch: Epoch(0xAAAA),
        }]
    );
    assert_eq!(up.remote().unwrap().node, name(LOWER));
    assert_eq!(low.remote_epoch(), Some(Epoch(0xAAAA)));
}

#[test]
fn messages_flow_with_assigned_sequence_numbers() {
    let t0 = Instant::from_secs(1);
    let (mut up, mut low) = registered_pair(t0);
    let subnets = vec![SubnetLoad {
        subnet: SubnetPrefix::new("192.200.0.0".parse().unwrap(), 16).unwrap(),
        load: 0.3,
    }];
    low.send(
        t0,
        Outgoing::StateUpdate {
            subnets: subnets.clone(),
        },
    )
    .unwrap();
    low.send(
        t0,
        Outgoing::StateUpdate {
            subnets: subnets.clone(),
        },
    )
    .unwrap();
    let server: IpAddr = "10.1.0.5".parse().unwrap();
    low.send(
        t0,
        Outgoing::TunnelObject(TunnelObject { key: key(), server }),
    )
    .unwrap();
    low.send(
        t0,
        Outgoing::MirrorDelta {
            upserts: vec![],
            removals: vec![key()],
        },
    )
    .unwrap();
    up.send(
        t0,
        Outgoing::WhoHas(WhoHas {
            query_id: 9,
            key: key(),
            ttl: 2,
        }),
    )
    .unwrap();
    transfer(&mut low, &mut up, t0);
    transfer(&mut up, &mut low, t0);
    assert_eq!(
        events(&mut up),
        vec![
            PeerEvent::StateUpdate(StateUpdate {
                seq: 1,
                subnets: subnets.clone()
            }),
            PeerEvent::StateUpdate(StateUpdate { seq: 2, subnets }),
            PeerEvent::TunnelObject(TunnelObject { key: key(), server }),
            PeerEvent::MirrorDelta(MirrorDelta {
                seq: 1,
                upserts: vec![],
                removals: vec![key()]
            }),
        ]
    );
    assert_eq!(
        events(&mut low),
        vec![PeerEvent::WhoHas(WhoHas {
            query_id: 9,
            key: key(),
            ttl: 2
        })]
    );
    assert_eq!(up.stats().messages_in, 4);
    // A limit breach is refused at send time, not on the wire.
    assert_eq!(
        low.send(
            t0,
            Outgoing::WhoHas(WhoHas {
                query_id: 1,
                key: key(),
                ttl: MAX_WHOHAS_TTL + 1
            })
        ),
        Err(SendError::Codec(CodecError::Malformed {
            reason: "whohas ttl too large"
        }))
    );
    assert_eq!(low.stats().send_refused, 1);
}

#[test]
fn message_before_hello_is_refused() {
    let t0 = Instant::from_secs(1);
    let mut up = upper(t0);
    up.handle_input(t0, &frame(Epoch(5), update(1, 0.1)));
    assert_eq!(
        events(&mut up),
        vec![PeerEvent::PeerDown {
            reason: DownReason::Protocol {
                expected: "hello",
                got: "state_update"
            }
        }]
    );
    assert_eq!(up.stats().refused_before_hello, 1);
    assert!(up.is_down());
    assert_eq!(up.poll_timeout(), None);
    // Nothing more after down, and sending is refused.
    up.handle_input(t0, &frame(Epoch(5), hello(LOWER)));
    assert!(events(&mut up).is_empty());
    assert_eq!(
        up.send(
            t0,
            Outgoing::WhoHas(WhoHas {
                query_id: 1,
                key: key(),
                ttl: 1
            })
        ),
        Err(SendError::Down)
    );
}

#[test]
fn sending_before_registration_is_refused() {
    let t0 = Instant::from_secs(1);
    let mut low = lower(t0);
    assert_eq!(
        low.send(t0, Outgoing::StateUpdate { subnets: vec![] }),
        Err(SendError::NotRegistered)
    );
}

#[test]
fn hello_naming_someone_else_is_refused() {
    let t0 = Instant::from_secs(1);
    let mut up = upper(t0);
    up.handle_input(t0, &frame(Epoch(5), hello("other.as65001.example")));
    assert_eq!(
        events(&mut up),
        vec![PeerEvent::PeerDown {
            reason: DownReason::IdentityMismatch {
                claimed: name("other.as65001.example")
            }
        }]
    );
    assert_eq!(up.stats().identity_mismatches, 1);
}

#[test]
fn keepalives_keep_the_session_and_silence_kills_it() {
    let mut now = Instant::from_secs(10);
    let (mut up, mut low) = registered_pair(now);
    // Both sides run their timers and exchange keepalives for a while: no PeerDown.
    let end = now + Duration::from_secs(30);
    while now < end {
        let next = up.poll_timeout().unwrap().min(low.poll_timeout().unwrap());
        assert!(next > now, "timers must move forward");
        now = next;
        up.handle_timeout(now);
        low.handle_timeout(now);
        transfer(&mut up, &mut low, now);
        transfer(&mut low, &mut up, now);
    }
    assert!(events(&mut up).is_empty() && events(&mut low).is_empty());
    assert!(up.stats().keepalives_in >= 25, "{:?}", up.stats());
    assert!(low.stats().keepalives_in >= 25);

    // The lower level goes silent: the upper declares it dead after the dead
    // interval (3 s), not before.
    let silent_since = now;
    loop {
        let next = up.poll_timeout().unwrap();
        now = next;
        up.handle_timeout(now);
        let mut sink = Vec::new();
        let _ = up.poll_transmit(&mut sink);
        if up.is_down() {
            break;
        }
    }
    assert_eq!(now.saturating_since(silent_since), Duration::from_secs(3));
    assert_eq!(
        events(&mut up),
        vec![PeerEvent::PeerDown {
            reason: DownReason::Timeout
        }]
    );
    assert_eq!(up.stats().timeouts, 1);
}

#[test]
fn handshake_times_out() {
    let t0 = Instant::from_secs(1);
    let mut up = upper(t0);
    up.handle_timeout(t0 + Duration::from_secs(4));
    assert!(!up.is_down());
    up.handle_timeout(t0 + Duration::from_secs(5));
    assert_eq!(
        events(&mut up),
        vec![PeerEvent::PeerDown {
            reason: DownReason::HandshakeTimeout
        }]
    );
}

#[test]
fn stale_and_replayed_updates_are_ignored_and_counted() {
    let t0 = Instant::from_secs(1);
    let mut up = upper(t0);
    let e = Epoch(0x1111);
    up.handle_input(t0, &frame(e, hello(LOWER)));
    events(&mut up);
    let mut input = Vec::new();
    for (seq, load) in [(5, 0.5), (3, 0.3), (5, 0.55), (6, 0.6)] {
        input.extend(frame(e, update(seq, load)));
    }
    up.handle_input(t0, &input);
    let seqs: Vec<u64> = events(&mut up)
        .into_iter()
        .map(|ev| match ev {
            PeerEvent::StateUpdate(u) => u.seq,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(seqs, vec![5, 6]);
    assert_eq!(up.stats().stale_updates, 2);

    // Mirror deltas keep their own sequence.
    let delta = |seq| {
        Message::MirrorDelta(MirrorDelta {
            seq,
            upserts: vec![],
            removals: vec![key()],
        })
    };
    up.handle_input(
        t0,
        &[frame(e, delta(1)), frame(e, delta(1)), frame(e, delta(2))].concat(),
    );
    assert_eq!(events(&mut up).len(), 2);
    assert_eq!(up.stats().stale_deltas, 1);
}

#[test]
fn restarted_peer_is_accepted_only_through_a_new_hello() {
    let t0 = Instant::from_secs(1);
    let mut up = upper(t0);
    let old = Epoch(0x1111);
    let new = Epoch(0x2222);
    up.handle_input(t0, &frame(old, hello(LOWER)));
    up.handle_input(t0, &frame(old, update(10, 0.1)));
    assert_eq!(events(&mut up).len(), 2);

    // Messages of an epoch never opened by a Hello are ignored.
    up.handle_input(t0, &frame(new, update(1, 0.2)));
    assert!(events(&mut up).is_empty());
    assert_eq!(up.stats().wrong_epoch, 1);

    // The peer restarts: a new Hello opens the new epoch, sequence numbers restart.
    up.handle_input(t0, &frame(new, hello(LOWER)));
    up.handle_input(t0, &frame(new, update(1, 0.2)));
    let evs = events(&mut up);
    assert!(matches!(evs[0], PeerEvent::Registered { epoch, .. } if epoch == new));
    assert!(matches!(&evs[1], PeerEvent::StateUpdate(u) if u.seq == 1));
    assert_eq!(up.remote_epoch(), Some(new));

    // Replays of the previous session are refused: its messages and its Hello.
    up.handle_input(t0, &frame(old, update(11, 0.9)));
    up.handle_input(t0, &frame(old, hello(LOWER)));
    assert!(events(&mut up).is_empty());
    assert_eq!(up.stats().wrong_epoch, 2);
    assert_eq!(up.stats().replayed_hellos, 1);
    assert_eq!(up.remote_epoch(), Some(new));

    // A duplicate Hello of the current epoch changes nothing.
    up.handle_input(t0, &frame(new, hello(LOWER)));
    assert!(events(&mut up).is_empty());
    assert_eq!(up.stats().duplicate_hellos, 1);
}

#[test]
fn a_new_session_refuses_a_seeded_old_epoch() {
    let t0 = Instant::from_secs(1);
    let old = Epoch(0x1111);
    let mut up = upper(t0).with_retired_epochs([old]);
    up.handle_input(t0, &frame(old, hello(LOWER)));
    assert!(!up.is_registered());
    assert_eq!(up.stats().replayed_hellos, 1);
    up.handle_input(t0, &frame(Epoch(0x3333), hello(LOWER)));
    assert!(up.is_registered());
}

#[test]
fn an_ack_for_another_hello_does_not_complete_the_handshake() {
    let t0 = Instant::from_secs(1);
    let mut low = lower_with_epoch(t0, Epoch(0xB2));
    let ack = |your_epoch| {
        Message::HelloAck(HelloAck {
            registration: Registration {
                node: name(UPPER),
                level: Level::System,
                role: Role::System,
                keepalive_ms: 1000,
            },
            your_epoch,
        })
    };
    low.handle_input(t0, &frame(Epoch(0xA1), ack(Epoch(0xB1))));
    assert!(!low.is_registered() && !low.is_down());
    assert_eq!(low.stats().replayed_hellos, 1);
    low.handle_input(t0, &frame(Epoch(0xA1), ack(Epoch(0xB2))));
    assert!(low.is_registered());
}

#[test]
fn corrupt_stream_takes_the_session_down() {
    let t0 = Instant::from_secs(1);
    let (mut up, _low) = registered_pair(t0);
    up.handle_input(t0, b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(
        events(&mut up),
        vec![PeerEvent::PeerDown {
            reason: DownReason::Codec(CodecError::BadMagic { got: *b"GE" })
        }]
    );
    assert_eq!(up.codec_stats().bad_magic, 1);
}

#[test]
fn input_split_at_every_byte_gives_the_same_events() {
    let t0 = Instant::from_secs(1);
    let e = Epoch(0x77);
    let stream = [
        frame(e, hello(LOWER)),
        frame(e, update(1, 0.1)),
        frame(e, Message::Keepalive { seq: 1 }),
        frame(e, update(2, 0.2)),
    ]
    .concat();
    let mut whole = upper(t0);
    whole.handle_input(t0, &stream);
    let expected = events(&mut whole);
    assert_eq!(expected.len(), 3);
    for split in 0..stream.len() {
        let mut p = upper(t0);
        p.handle_input(t0, &stream[..split]);
        p.handle_input(t0, &stream[split..]);
        assert_eq!(events(&mut p), expected, "split at {split}");
    }
}

/// A pair whose lower side has `role` and announces `keepalive`, registered at `now`.
fn pair_asking(now: Instant, role: Role, keepalive: Duration) -> (Peer, Peer) {
    let mut up = upper(now);
    let mut low = Peer::connect(
        PeerConfig {
            keepalive_interval: keepalive,
            dead_interval: keepalive.saturating_mul(3),
            ..cfg()
        },
        LocalNode {
            name: name(LOWER),
            level: Level::Site,
            role,
        },
        PeerAuth::Name(name(UPPER)),
        Epoch(0xCCCC),
        now,
    );
    transfer(&mut low, &mut up, now);
    transfer(&mut up, &mut low, now);
    assert!(up.is_registered() && low.is_registered());
    (up, low)
}

/// Runs only the upper side's timers for `span`, delivering what it sends to
/// `low` (which stays quiet), and returns how many keepalives `low` received.
fn upper_keepalives_over(up: &mut Peer, low: &mut Peer, now: &mut Instant, span: Duration) -> u64 {
    let before = low.stats().keepalives_in;
    let end = *now + span;
    while let Some(next) = up.poll_timeout().filter(|&t| t <= end) {
        *now = next;
        up.handle_timeout(*now);
        transfer(up, low, *now);
    }
    *now = end;
    low.stats().keepalives_in - before
}

#[test]
fn a_hot_spare_gets_keepalives_at_its_pace_and_detects_silence_at_three_of_them() {
    let mut now = Instant::from_secs(10);
    let (mut up, mut low) = pair_asking(now, Role::Spare, Duration::from_millis(100));
    // The primary's own interval is 1 s; for its spare it sends every 100 ms.
    let got = upper_keepalives_over(&mut up, &mut low, &mut now, Duration::from_secs(2));
    assert!((19..=21).contains(&got), "{got} keepalives in 2 s");
    // The primary goes silent: the spare's session ends 300 ms later.
    let silent_since = now;
    while !low.is_down() {
        now = low.poll_timeout().unwrap();
        low.handle_timeout(now);
        let mut sink = Vec::new();
        let _ = low.poll_transmit(&mut sink);
    }
    assert!(
        now.saturating_since(silent_since) <= Duration::from_millis(300),
        "{:?}",
        now.saturating_since(silent_since)
    );
    assert!(events(&mut low).contains(&PeerEvent::PeerDown {
        reason: DownReason::Timeout
    }));
}

#[test]
fn only_a_spare_sets_the_pace_and_never_below_the_floor() {
    let mut now = Instant::from_secs(10);
    // A site router asking for 100 ms keepalives gets the upper level's 1 s
    // (over less than the upper's 3 s dead interval of the quiet lower side).
    let (mut up, mut low) = pair_asking(now, Role::Site, Duration::from_millis(100));
    let got = upper_keepalives_over(&mut up, &mut low, &mut now, Duration::from_millis(2500));
    assert_eq!(got, 2, "keepalives in 2.5 s");
    // A spare asking for 1 ms gets the floor.
    let (mut up, mut low) = pair_asking(now, Role::Spare, Duration::from_millis(1));
    let got = upper_keepalives_over(&mut up, &mut low, &mut now, Duration::from_secs(1));
    let most = (Duration::from_secs(1).as_millis() / MIN_SPARE_KEEPALIVE.as_millis()) as u64;
    assert!((most - 1..=most).contains(&got), "{got} keepalives in 1 s");
}
