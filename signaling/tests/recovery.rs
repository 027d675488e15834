//! Failure recovery (DESIGN.md §5) under a fake clock: advertisement
//! authentication, advertisement handling, WHOHAS refusals and limits, and two
//! end-to-end runs over in-memory [`Peer`] pairs (WHOHAS between neighbours;
//! mirroring and takeover by a hot spare).
#![expect(clippy::unwrap_used, reason = "test code")]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use router_core::api::RouterApi;
use router_core::classify::{FlowKey, VirtualSubnet, classify};
use router_core::engine::{Engine, EngineConfig, Verdict};
use router_core::flow::{FlowConfig, FlowEntry, FlowState};
use router_core::packet::{HEADROOM, PacketBuf};
use router_core::policy::{Candidate, Level, SumCost};
use router_core::synth::PacketSpec;
use router_core::time::Instant;
use router_core::wire::TcpFlags;
use router_core::wire::flowad::{AdvertFields, FlowAdvert, find_in_echo_reply};
use signaling::recovery::{MAX_ADVERT_KEYS, MAX_NEIGHBOURS, MAX_SECRET_LEN};
use signaling::*;

// ---------------------------------------------------------------- helpers

const A: &str = "sys-a.as65001.example";
const B: &str = "sys-b.as65001.example";
const NET: &str = "net.example";
const SITE: &str = "site-1.as65001.example";
const SPARE: &str = "sys-a-spare.as65001.example";

const A_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const B_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const SITE_ADDR: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 11);

const S_UP: SessionId = SessionId(1);
const S_N: SessionId = SessionId(2);
const S_SITE: SessionId = SessionId(3);

fn name(s: &str) -> NodeName {
    NodeName::new(s).unwrap()
}

fn ip(a: Ipv4Addr) -> IpAddr {
    IpAddr::V4(a)
}

fn key(port: u16) -> FlowKey {
    FlowKey {
        proto: 6,
        src: "198.51.100.7".parse().unwrap(),
        src_port: port,
        dst: "192.200.0.10".parse().unwrap(),
        dst_port: 80,
    }
}

fn vips() -> VirtualSubnet {
    VirtualSubnet::new("192.200.0.0".parse().unwrap(), 16).unwrap()
}

fn engine(me: Ipv4Addr) -> Engine {
    Engine::new(EngineConfig {
        level: Level::System,
        local_v4: Some(me),
        flows: FlowConfig {
            capacity_v4: 1024,
            capacity_v6: 8,
            max_next_hops: 64,
            ..FlowConfig::default()
        },
        max_subnets: 16,
        ..EngineConfig::default()
    })
}

/// Serves the VIP subnet with one fixed next hop (as a table computation would).
fn serve(e: &mut Engine, next_hop: Ipv4Addr) {
    let id = e.add_subnet(vips()).unwrap();
    e.set_candidates(
        id,
        vec![Candidate {
            addr: ip(next_hop),
            load: 0.1,
            route_cost: 0.0,
            up: true,
        }],
    )
    .unwrap();
}

fn entry(k: FlowKey, next_hop: Ipv4Addr, now: Instant) -> FlowEntry {
    FlowEntry {
        key: k,
        next_hop: ip(next_hop),
        label: 7,
        level: Level::System,
        state: FlowState::Established,
        created: now,
        last_seen: now,
        packets: 10,
        bytes: 1000,
    }
}

fn record(k: FlowKey, next_hop: Ipv4Addr) -> FlowRecord {
    FlowRecord::from_entry(&entry(k, next_hop, Instant::ZERO), Instant::ZERO)
}

/// Runs one TCP segment of `k` through `e`.
fn packet(e: &mut Engine, k: FlowKey, flags: TcpFlags, now: Instant) -> Verdict {
    let spec = PacketSpec::tcp(
        SocketAddr::new(k.src, k.src_port),
        SocketAddr::new(k.dst, k.dst_port),
        flags,
    );
    let mut buf = vec![0u8; HEADROOM + 256];
    let n = spec.write(&mut buf[HEADROOM..]).unwrap();
    assert_eq!(classify(&buf[HEADROOM..HEADROOM + n]).unwrap().key, k);
    let mut pkt = PacketBuf::new(&mut buf, HEADROOM, n).unwrap();
    e.process(&mut pkt, now)
}

fn forward(to: Ipv4Addr) -> Verdict {
    Verdict::Forward {
        next_hop: ip(to),
        fragment: false,
    }
}

fn actions(c: &mut SlrControl) -> Vec<SlrAction> {
    std::iter::from_fn(|| c.poll_action()).collect()
}

fn registered(identity: &str, level: Level, role: Role) -> PeerEvent {
    PeerEvent::Registered {
        identity: name(identity),
        level,
        role,
        epoch: Epoch(1),
    }
}

fn scope() -> RecoveryScope {
    RecoveryScope {
        neighbours: vec![name(A)],
        spares: vec![name(SPARE)],
        local_addrs: vec![ip(B_ADDR)],
        query_secret: [7; 32],
    }
}

/// SLR B (system level): upstream `S_UP` registered, neighbour A on `S_N`
/// registered, site on `S_SITE` registered.
fn slr_b(cfg: SlrConfig) -> (SlrControl, Engine) {
    let mut c = SlrControl::new(cfg, Arc::new(SumCost), Instant::ZERO);
    let mut e = engine(B_ADDR);
    c.set_recovery_scope(scope()).unwrap();
    c.set_upstream(Some(S_UP));
    let t = Instant::ZERO;
    c.handle_event(
        t,
        S_UP,
        registered(NET, Level::Network, Role::Network),
        &mut e,
    );
    c.add_neighbour(S_N).unwrap();
    c.handle_event(t, S_N, registered(A, Level::System, Role::System), &mut e);
    c.add_downstream(S_SITE, ip(SITE_ADDR), 0.0).unwrap();
    c.handle_event(t, S_SITE, registered(SITE, Level::Site, Role::Site), &mut e);
    actions(&mut c);
    assert_eq!(c.neighbour_sessions().count(), 1);
    (c, e)
}

fn default_b() -> (SlrControl, Engine) {
    slr_b(SlrConfig::new(Level::System))
}

/// Starts a query for `k` at B; returns its id.
fn query(c: &mut SlrControl, e: &Engine, k: FlowKey, now: Instant) -> u64 {
    let RecoverOutcome::Queried { query_id, asked } = c.recover(k, now, e) else {
        panic!("query not started");
    };
    assert_eq!(asked, 2, "upstream and the neighbour");
    let sent = actions(c);
    assert_eq!(sent.len(), 2);
    for a in &sent {
        let SlrAction::Send {
            session,
            message: Outgoing::WhoHas(q),
        } = a
        else {
            panic!("unexpected {a:?}");
        };
        assert!(*session == S_UP || *session == S_N);
        assert_eq!((q.query_id, q.key, q.ttl), (query_id, k, 0));
    }
    query_id
}

fn answer(query_id: u64, entry: Option<FlowRecord>) -> PeerEvent {
    PeerEvent::WhoHasAnswer(WhoHasAnswer { query_id, entry })
}

// ---------------------------------------------------------------- key file

const SECRET1: &str = "00112233445566778899aabbccddeeff";
const SECRET2: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

#[test]
fn key_file_parses_with_comments_and_blank_lines() {
    let text = format!("# trust domain keys\n\n1:{SECRET1}\n  2 : {SECRET2}  # next key\n");
    let keys = parse_advert_keys(&text).unwrap();
    assert_eq!(keys.iter().map(|k| k.id).collect::<Vec<_>>(), vec![1, 2]);
    assert!(
        !format!("{keys:?}").contains("00112233"),
        "Debug must not print secrets"
    );
}

#[test]
fn key_file_errors_name_the_line() {
    let line = |text: &str| match parse_advert_keys(text).unwrap_err() {
        KeyFileError::Syntax { line, .. }
        | KeyFileError::BadId { line }
        | KeyFileError::BadHex { line }
        | KeyFileError::ShortSecret { line, .. }
        | KeyFileError::LongSecret { line, .. }
        | KeyFileError::DuplicateId { line, .. } => line,
        e => panic!("no line in {e}"),
    };
    let ok = format!("1:{SECRET1}\n");
    assert_eq!(line(&format!("{ok}# c\n{SECRET1}\n")), 3);
    assert!(matches!(
        parse_advert_keys(&format!("{ok}x:{SECRET1}")).unwrap_err(),
        KeyFileError::BadId { line: 2 }
    ));
    assert!(matches!(
        parse_advert_keys(&format!("{ok}4294967296:{SECRET1}")).unwrap_err(),
        KeyFileError::BadId { line: 2 }
    ));
    assert!(matches!(
        parse_advert_keys(&format!("{ok}2:0011zz")).unwrap_err(),
        KeyFileError::BadHex { line: 2 }
    ));
    assert!(matches!(
        parse_advert_keys(&format!("{ok}2:001")).unwrap_err(),
        KeyFileError::BadHex { line: 2 }
    ));
    assert!(matches!(
        parse_advert_keys("\n2:00112233445566778899aabbccddee").unwrap_err(),
        KeyFileError::ShortSecret {
            line: 2,
            len: 15,
            min: 16
        }
    ));
    let long = "ab".repeat(MAX_SECRET_LEN + 1);
    assert!(matches!(
        parse_advert_keys(&format!("2:{long}")).unwrap_err(),
        KeyFileError::LongSecret { line: 1, .. }
    ));
    assert!(matches!(
        parse_advert_keys(&format!("{ok}1:{SECRET2}")).unwrap_err(),
        KeyFileError::DuplicateId { line: 2, id: 1 }
    ));
    assert!(matches!(
        parse_advert_keys("# nothing\n").unwrap_err(),
        KeyFileError::Empty
    ));
    let many: String = (0..=MAX_ADVERT_KEYS)
        .map(|i| format!("{i}:{SECRET1}\n"))
        .collect();
    assert!(matches!(
        parse_advert_keys(&many).unwrap_err(),
        KeyFileError::TooManyKeys { .. }
    ));
    assert!(AdvertKey::new(1, &[0; 15]).is_err());
    assert_eq!(line(&format!("{ok}\n\n  justtext\n")), 4);
}

#[test]
fn key_file_is_read_from_disk() {
    let dir = std::env::temp_dir().join(format!("pronto-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("advert.keys");
    std::fs::write(&path, format!("9:{SECRET2}\n")).unwrap();
    assert_eq!(read_advert_keys(&path).unwrap()[0].id, 9);
    assert!(matches!(
        read_advert_keys(&dir.join("missing")).unwrap_err(),
        KeyFileError::Io { .. }
    ));
    assert!(matches!(
        read_advert_keys(&dir).unwrap_err(),
        KeyFileError::NotRegular { .. }
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------- authentication

const NOW_MS: u64 = 1_764_000_000_000;

fn auth(keys: &str) -> AdvertAuth {
    AdvertAuth::new(
        parse_advert_keys(keys).unwrap(),
        AdvertAuthConfig::default(),
    )
}

fn fields(port: u16, key_id: u32, timestamp_ms: u64, nonce: u64) -> AdvertFields {
    AdvertFields {
        key: key(port),
        server: SocketAddr::new(ip(SERVER), 80),
        key_id,
        timestamp_ms,
        nonce,
    }
}

fn signed(a: &AdvertAuth, f: &AdvertFields) -> Vec<u8> {
    let mut out = vec![0u8; 256];
    let n = a.sign(f, &mut out).unwrap();
    out.truncate(n);
    out
}

fn verify(a: &mut AdvertAuth, bytes: &[u8], now: u64) -> Result<AdvertFields, AdvertReject> {
    a.verify(&FlowAdvert::new_checked(bytes).unwrap(), now)
}

#[test]
fn signed_advert_verifies_once() {
    let mut a = auth(&format!("1:{SECRET1}"));
    let f = fields(40000, 1, NOW_MS, 42);
    let bytes = signed(&a, &f);
    assert_eq!(verify(&mut a, &bytes, NOW_MS + 10), Ok(f));
    assert_eq!(
        verify(&mut a, &bytes, NOW_MS + 20),
        Err(AdvertReject::Replay)
    );
    assert_eq!(a.stats().verified, 1);
    assert_eq!(a.stats().replay, 1);
}

#[test]
fn forged_mac_and_altered_fields_are_refused() {
    let mut a = auth(&format!("1:{SECRET1}"));
    let f = fields(40000, 1, NOW_MS, 1);
    let mut bytes = signed(&a, &f);
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    assert_eq!(verify(&mut a, &bytes, NOW_MS), Err(AdvertReject::BadMac));
    // Same MAC, server redirected: the MAC covers it.
    let mut bytes = signed(&a, &f);
    let mut other = f;
    other.server = SocketAddr::new("10.9.9.9".parse().unwrap(), 80);
    let forged = signed(&a, &other);
    let mac_at = bytes.len() - 32;
    bytes[..mac_at].copy_from_slice(&forged[..mac_at]);
    assert_eq!(verify(&mut a, &bytes, NOW_MS), Err(AdvertReject::BadMac));
    // Signed with a key outside the trust domain under a known id.
    let outsider = auth(&format!("1:{SECRET2}"));
    let bytes = signed(&outsider, &fields(40000, 1, NOW_MS, 2));
    assert_eq!(verify(&mut a, &bytes, NOW_MS), Err(AdvertReject::BadMac));
    assert_eq!(a.stats().bad_mac, 3);
    assert_eq!(a.stats().verified, 0);
}

#[test]
fn unknown_key_id_is_refused_and_rollover_works() {
    let old = auth(&format!("1:{SECRET1}"));
    let new = auth(&format!("2:{SECRET2}"));
    let mut router = auth(&format!("1:{SECRET1}"));
    let b2 = signed(&new, &fields(1, 2, NOW_MS, 1));
    assert_eq!(
        verify(&mut router, &b2, NOW_MS),
        Err(AdvertReject::UnknownKey { key_id: 2 })
    );
    assert_eq!(router.stats().unknown_key, 1);
    // Rollover: both keys for a while.
    router.set_keys(parse_advert_keys(&format!("1:{SECRET1}\n2:{SECRET2}")).unwrap());
    assert!(verify(&mut router, &b2, NOW_MS).is_ok());
    assert!(verify(&mut router, &signed(&old, &fields(1, 1, NOW_MS, 2)), NOW_MS).is_ok());
    let mut out = [0u8; 256];
    assert!(matches!(
        old.sign(&fields(1, 3, NOW_MS, 1), &mut out),
        Err(SignError::UnknownKey { key_id: 3 })
    ));
}

#[test]
fn stale_and_future_timestamps_are_refused() {
    let mut a = auth(&format!("1:{SECRET1}"));
    let skew = 30_000;
    let at = |ts: u64, nonce: u64| signed(&a, &fields(1, 1, ts, nonce));
    let (edge_old, too_old, edge_new, too_new) = (
        at(NOW_MS - skew, 1),
        at(NOW_MS - skew - 1, 2),
        at(NOW_MS + skew, 3),
        at(NOW_MS + skew + 1, 4),
    );
    assert!(verify(&mut a, &edge_old, NOW_MS).is_ok());
    assert_eq!(
        verify(&mut a, &too_old, NOW_MS),
        Err(AdvertReject::Stale { age_ms: skew + 1 })
    );
    assert!(verify(&mut a, &edge_new, NOW_MS).is_ok());
    assert_eq!(
        verify(&mut a, &too_new, NOW_MS),
        Err(AdvertReject::Future { ahead_ms: skew + 1 })
    );
    // A replay once its window has passed is refused as stale, not accepted.
    assert_eq!(
        verify(&mut a, &edge_old, NOW_MS + 1),
        Err(AdvertReject::Stale { age_ms: skew + 1 })
    );
    assert_eq!((a.stats().stale, a.stats().future), (2, 1));
}

#[test]
fn replay_cache_is_bounded_and_forgets_expired_nonces() {
    let mut a = AdvertAuth::new(
        parse_advert_keys(&format!("1:{SECRET1}")).unwrap(),
        AdvertAuthConfig {
            max_skew: Duration::from_secs(30),
            replay_capacity: 4,
        },
    );
    let all: Vec<Vec<u8>> = (0..6u64)
        .map(|n| signed(&a, &fields(1, 1, NOW_MS + n, n)))
        .collect();
    for b in &all {
        assert!(verify(&mut a, b, NOW_MS).is_ok());
    }
    assert_eq!(a.replay_entries(), 4);
    assert_eq!(a.stats().replay_evictions, 2);
    // The newest are still remembered.
    assert_eq!(verify(&mut a, &all[5], NOW_MS), Err(AdvertReject::Replay));
    // Once their window has passed, entries are dropped.
    let later = NOW_MS + 31_000;
    let fresh = signed(&a, &fields(1, 1, later, 99));
    assert!(verify(&mut a, &fresh, later).is_ok());
    assert_eq!(a.replay_entries(), 1);
}

/// Turns an IPv4 echo request into the client's echo reply.
fn echo_reply(req: &[u8]) -> Vec<u8> {
    fn csum(b: &[u8]) -> u16 {
        let mut s: u32 = b
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum();
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }
    let mut p = req.to_vec();
    let (src, dst) = (p[12..16].to_vec(), p[16..20].to_vec());
    p[12..16].copy_from_slice(&dst);
    p[16..20].copy_from_slice(&src);
    p[10..12].fill(0);
    let c = csum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20] = 0; // echo reply
    p[22..24].fill(0);
    let c = csum(&p[20..]);
    p[22..24].copy_from_slice(&c.to_be_bytes());
    p
}

proptest! {
    /// Any single flipped bit of a signed advertisement gets it refused: by the
    /// parser, by the MAC, or as an unknown key.
    #[test]
    fn any_flipped_bit_is_refused(bit in 0usize..(8 * 78), nonce in any::<u64>()) {
        let mut a = auth(&format!("1:{SECRET1}"));
        let mut bytes = signed(&a, &fields(5, 1, NOW_MS, nonce));
        prop_assert_eq!(bytes.len(), 78);
        bytes[bit / 8] ^= 1 << (bit % 8);
        if let Ok(adv) = FlowAdvert::new_checked(&bytes[..]) {
            prop_assert!(a.verify(&adv, NOW_MS).is_err());
        }
        prop_assert_eq!(a.stats().verified, 0);
    }
}

// ---------------------------------------------------------------- advert handling

#[test]
fn advert_outcomes_follow_the_design() {
    let now = Instant::from_secs(5);
    let mut e = engine(B_ADDR);
    let served = |vip: IpAddr| vips().contains(vip);
    let local = [ip(B_ADDR)];
    let h =
        |e: &mut Engine, f: &AdvertFields| handle_advert(e, f, served, &local, Level::System, now);
    // Not served.
    let mut f = fields(1, 1, NOW_MS, 1);
    f.key.dst = "192.201.0.1".parse().unwrap();
    assert_eq!(
        h(&mut e, &f),
        AdvertOutcome::Rejected(AdvertRefusal::NotServed)
    );
    // Server is us / not unicast.
    let mut f = fields(1, 1, NOW_MS, 1);
    f.server = SocketAddr::new(ip(B_ADDR), 80);
    assert_eq!(
        h(&mut e, &f),
        AdvertOutcome::Rejected(AdvertRefusal::ServerIsLocal)
    );
    f.server = SocketAddr::new("255.255.255.255".parse().unwrap(), 80);
    assert_eq!(
        h(&mut e, &f),
        AdvertOutcome::Rejected(AdvertRefusal::BadServer)
    );
    assert!(
        e.lookup_flow(&f.key, now).is_none(),
        "refusals move nothing"
    );
    // Not pinned: installed, established, to the server.
    let f = fields(1, 1, NOW_MS, 1);
    assert_eq!(h(&mut e, &f), AdvertOutcome::Installed);
    let got = e.lookup_flow(&f.key, now).unwrap();
    assert_eq!(
        (got.next_hop, got.state),
        (ip(SERVER), FlowState::Established)
    );
    // Pinned to the server: current.
    assert_eq!(h(&mut e, &f), AdvertOutcome::Current);
    // Pinned elsewhere: relay, never re-pinned.
    let other = fields(2, 1, NOW_MS, 2);
    e.install_flow(&entry(other.key, SITE_ADDR, now), now)
        .unwrap();
    assert_eq!(
        h(&mut e, &other),
        AdvertOutcome::Relay { to: ip(SITE_ADDR) }
    );
    assert_eq!(
        e.lookup_flow(&other.key, now).unwrap().next_hop,
        ip(SITE_ADDR)
    );
}

/// Host signs an echo request; the client's reply reaches a system SLR that
/// lost the flow; the engine flags it, the SLR checks and installs it, and the
/// connection's next segment goes to the advertised server.
#[test]
fn echo_reply_advert_recreates_the_flow() {
    let now = Instant::from_secs(10);
    let host = auth(&format!("1:{SECRET1}"));
    let mut router_auth = auth(&format!("1:{SECRET1}"));
    let (mut c, mut e) = default_b();
    // B serves the VIPs through its site (table computation).
    c.handle_event(
        now,
        S_SITE,
        PeerEvent::StateUpdate(StateUpdate {
            seq: 1,
            subnets: vec![SubnetLoad {
                subnet: vips().into(),
                load: 0.1,
            }],
        }),
        &mut e,
    );
    c.handle_timeout(now, &mut e);
    assert_eq!(c.served_subnets().count(), 1);
    let k = key(40100);
    assert_eq!(
        packet(&mut e, k, TcpFlags::ACK, now),
        Verdict::Recover { key: k }
    );
    let f = fields(40100, 1, NOW_MS, 77);
    let mut buf = vec![0u8; HEADROOM + 512];
    let n = host.echo_request(&mut buf[HEADROOM..], &f, 1, 1).unwrap();
    let reply = echo_reply(&buf[HEADROOM..HEADROOM + n]);
    buf[HEADROOM..HEADROOM + n].copy_from_slice(&reply);
    let mut pkt = PacketBuf::new(&mut buf, HEADROOM, n).unwrap();
    assert_eq!(e.process(&mut pkt, now), Verdict::Advert);
    let adv = find_in_echo_reply(pkt.data()).unwrap().unwrap();
    let checked = router_auth.verify(&adv, NOW_MS + 5).unwrap();
    assert_eq!(
        c.handle_advert(now, &checked, &mut e),
        AdvertOutcome::Installed
    );
    assert_eq!(c.recovery_stats().adverts_installed, 1);
    assert_eq!(packet(&mut e, k, TcpFlags::ACK, now), forward(SERVER));
    // The same reply again is a replay.
    assert_eq!(
        router_auth.verify(&adv, NOW_MS + 6),
        Err(AdvertReject::Replay)
    );
    // An advert for a VIP outside B's subnets is counted and refused.
    let mut off = f;
    off.key.dst = "192.201.0.1".parse().unwrap();
    assert_eq!(
        c.handle_advert(now, &off, &mut e),
        AdvertOutcome::Rejected(AdvertRefusal::NotServed)
    );
    assert_eq!(c.recovery_stats().adverts_not_served, 1);
    // A statically served VIP the table does not know: the shell says it is served.
    let mut fixed = fields(40101, 1, NOW_MS, 78);
    fixed.key.dst = "192.201.0.1".parse().unwrap();
    assert_eq!(
        c.handle_advert_in(now, &fixed, true, &mut e),
        AdvertOutcome::Installed
    );
    assert_eq!(c.recovery_stats().adverts_installed, 2);
}

// ---------------------------------------------------------------- WHOHAS refusals

#[test]
fn valid_answer_installs_once() {
    let (mut c, mut e) = default_b();
    let now = Instant::from_millis(10);
    let k = key(1);
    let id = query(&mut c, &e, k, now);
    assert_eq!(c.recover(k, now, &e), RecoverOutcome::Pending);
    c.handle_event(now, S_N, answer(id, Some(record(k, SERVER))), &mut e);
    assert_eq!(
        actions(&mut c),
        vec![SlrAction::FlowRecovered {
            key: k,
            next_hop: ip(SERVER)
        }]
    );
    let got = e.lookup_flow(&k, now).unwrap();
    assert_eq!((got.next_hop, got.level), (ip(SERVER), Level::System));
    // The upstream's late answer finds no query.
    c.handle_event(now, S_UP, answer(id, Some(record(k, SITE_ADDR))), &mut e);
    assert_eq!(c.recovery_stats().answer_not_pending, 1);
    assert_eq!(e.lookup_flow(&k, now).unwrap().next_hop, ip(SERVER));
    assert_eq!(c.recovery_stats().answers_installed, 1);
    assert_eq!(c.pending_queries(), 0);
    assert!(matches!(
        c.recover(k, now, &e),
        RecoverOutcome::Pinned { .. }
    ));
}

#[test]
fn unsolicited_answer_moves_nothing() {
    let (mut c, mut e) = default_b();
    let now = Instant::from_millis(10);
    c.handle_event(
        now,
        S_N,
        answer(12345, Some(record(key(1), SERVER))),
        &mut e,
    );
    assert!(e.lookup_flow(&key(1), now).is_none());
    assert_eq!(c.recovery_stats().answer_not_pending, 1);
    assert!(actions(&mut c).is_empty());
}

#[test]
fn answer_from_a_session_not_asked_moves_nothing() {
    let (mut c, mut e) = default_b();
    let now = Instant::from_millis(10);
    let k = key(1);
    let id = query(&mut c, &e, k, now);
    // The site below was not asked (queries go up and sideways only).
    c.handle_event(now, S_SITE, answer(id, Some(record(k, SERVER))), &mut e);
    // An unknown session neither.
    c.handle_event(
        now,
        SessionId(99),
        answer(id, Some(record(k, SERVER))),
        &mut e,
    );
    assert!(e.lookup_flow(&k, now).is_none());
    assert_eq!(c.recovery_stats().answer_not_asked, 1);
    // An asked session answers once: its second answer is refused too.
    c.handle_event(now, S_N, answer(id, None), &mut e);
    c.handle_event(now, S_N, answer(id, Some(record(k, SERVER))), &mut e);
    assert!(e.lookup_flow(&k, now).is_none());
    assert_eq!(c.recovery_stats().answer_not_asked, 2);
    assert_eq!(c.pending_queries(), 1, "the upstream may still answer");
}

#[test]
fn answer_for_another_key_moves_nothing() {
    let (mut c, mut e) = default_b();
    let now = Instant::from_millis(10);
    let k = key(1);
    let id = query(&mut c, &e, k, now);
    c.handle_event(now, S_N, answer(id, Some(record(key(2), SERVER))), &mut e);
    assert!(e.lookup_flow(&k, now).is_none());
    assert!(e.lookup_flow(&key(2), now).is_none());
    assert_eq!(c.recovery_stats().answer_key_mismatch, 1);
}

#[test]
fn answer_pointing_at_us_moves_nothing() {
    let (mut c, mut e) = default_b();
    let now = Instant::from_millis(10);
    let k = key(1);
    let id = query(&mut c, &e, k, now);
    c.handle_event(now, S_UP, answer(id, Some(record(k, B_ADDR))), &mut e);
    let mut bad = record(k, SERVER);
    bad.next_hop = "0.0.0.0".parse().unwrap();
    c.handle_event(now, S_N, answer(id, Some(bad)), &mut e);
    assert!(e.lookup_flow(&k, now).is_none());
    assert_eq!(c.recovery_stats().answer_points_at_us, 1);
    assert_eq!(c.recovery_stats().answer_bad_next_hop, 1);
    assert_eq!(c.pending_queries(), 0, "every asked session answered");
}

#[test]
fn answer_for_a_flow_pinned_here_is_not_applied() {
    let (mut c, mut e) = default_b();
    let now = Instant::from_millis(10);
    let k = key(1);
    let id = query(&mut c, &e, k, now);
    e.install_flow(&entry(k, SITE_ADDR, now), now).unwrap();
    c.handle_event(now, S_N, answer(id, Some(record(k, SERVER))), &mut e);
    assert_eq!(e.lookup_flow(&k, now).unwrap().next_hop, ip(SITE_ADDR));
    assert_eq!(c.recovery_stats().answer_already_pinned, 1);
    assert!(actions(&mut c).is_empty());
}

#[test]
fn negative_answers_and_deadlines_end_queries() {
    let (mut c, mut e) = default_b();
    let t0 = Instant::from_millis(10);
    let id = query(&mut c, &e, key(1), t0);
    c.handle_event(t0, S_N, answer(id, None), &mut e);
    c.handle_event(t0, S_UP, answer(id, None), &mut e);
    assert_eq!(c.recovery_stats().queries_not_found, 1);
    assert_eq!(c.recovery_stats().answers_negative, 2);
    assert_eq!(c.pending_queries(), 0);
    // A query nobody answers expires at its deadline (1 s by default).
    let id = query(&mut c, &e, key(2), t0);
    assert!(c.poll_timeout() <= t0 + Duration::from_secs(1));
    c.handle_timeout(t0 + Duration::from_millis(999), &mut e);
    assert_eq!(c.pending_queries(), 1);
    c.handle_timeout(t0 + Duration::from_secs(1), &mut e);
    assert_eq!(c.pending_queries(), 0);
    assert_eq!(c.recovery_stats().queries_expired, 1);
    let late = t0 + Duration::from_secs(1);
    c.handle_event(late, S_N, answer(id, Some(record(key(2), SERVER))), &mut e);
    assert!(e.lookup_flow(&key(2), late).is_none());
    assert_eq!(c.recovery_stats().answer_not_pending, 1);
}

#[test]
fn query_rate_and_pending_bound_hold() {
    let mut cfg = SlrConfig::new(Level::System);
    cfg.recovery.query_rate = RateLimit::new(10, 3);
    cfg.recovery.max_pending = 5;
    let (mut c, e) = slr_b(cfg);
    let t0 = Instant::from_millis(10);
    let outcomes: Vec<_> = (0..5).map(|p| c.recover(key(p), t0, &e)).collect();
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| matches!(o, RecoverOutcome::Queried { .. }))
            .count(),
        3
    );
    assert_eq!(outcomes[3], RecoverOutcome::RateLimited);
    assert_eq!(c.recovery_stats().recover_rate_limited, 2);
    assert_eq!(c.recovery_stats().whohas_sent, 6);
    // 10/s refills: two more queries fill the pending map (5), the next is refused.
    let t1 = t0 + Duration::from_millis(200);
    assert!(matches!(
        c.recover(key(10), t1, &e),
        RecoverOutcome::Queried { .. }
    ));
    assert!(matches!(
        c.recover(key(11), t1, &e),
        RecoverOutcome::Queried { .. }
    ));
    let t2 = t0 + Duration::from_millis(900);
    assert_eq!(c.recover(key(12), t2, &e), RecoverOutcome::PendingFull);
    assert_eq!(c.recovery_stats().recover_pending_full, 1);
    assert_eq!(c.pending_queries(), 5);
}

#[test]
fn answers_are_rate_limited_per_session() {
    let mut cfg = SlrConfig::new(Level::System);
    cfg.recovery.answer_rate = RateLimit::new(0, 2);
    let (mut c, mut e) = slr_b(cfg);
    let now = Instant::from_millis(10);
    let k = key(1);
    e.install_flow(&entry(k, SERVER, now), now).unwrap();
    let q = |id| {
        PeerEvent::WhoHas(WhoHas {
            query_id: id,
            key: k,
            ttl: 0,
        })
    };
    for id in 0..3 {
        c.handle_event(now, S_N, q(id), &mut e);
    }
    c.handle_event(now, S_UP, q(10), &mut e);
    let sent = actions(&mut c);
    assert_eq!(sent.len(), 3, "two to the neighbour, one upstream");
    assert!(sent.iter().all(|a| matches!(a,
        SlrAction::Send { message: Outgoing::WhoHasAnswer(WhoHasAnswer { entry: Some(r), .. }), .. }
            if r.key == k && r.next_hop == ip(SERVER))));
    assert_eq!(c.recovery_stats().whohas_rate_limited, 1);
    assert_eq!(c.recovery_stats().whohas_answered, 3);
}

#[test]
fn unknown_flows_are_answered_unknown_and_strangers_not_at_all() {
    let (mut c, mut e) = default_b();
    let now = Instant::from_millis(10);
    let q = PeerEvent::WhoHas(WhoHas {
        query_id: 5,
        key: key(1),
        ttl: 0,
    });
    c.handle_event(now, S_SITE, q.clone(), &mut e);
    assert_eq!(
        actions(&mut c),
        vec![SlrAction::Send {
            session: S_SITE,
            message: Outgoing::WhoHasAnswer(WhoHasAnswer {
                query_id: 5,
                entry: None
            })
        }]
    );
    assert_eq!(c.recovery_stats().whohas_unknown, 1);
    // A session that never registered gets nothing.
    c.add_downstream(SessionId(50), ip(SITE_ADDR), 0.0).unwrap();
    c.handle_event(now, SessionId(50), q.clone(), &mut e);
    assert!(actions(&mut c).is_empty());
    assert_eq!(c.recovery_stats().whohas_refused_session, 1);
}

#[test]
fn unlisted_same_level_peers_and_spares_are_refused() {
    let (mut c, mut e) = default_b();
    let t = Instant::ZERO;
    c.add_downstream(SessionId(20), ip(A_ADDR), 0.0).unwrap();
    c.handle_event(
        t,
        SessionId(20),
        registered("sys-x.as65001.example", Level::System, Role::System),
        &mut e,
    );
    c.add_downstream(SessionId(21), ip(A_ADDR), 0.0).unwrap();
    c.handle_event(
        t,
        SessionId(21),
        registered("rogue-spare.example", Level::System, Role::Spare),
        &mut e,
    );
    // A listed name at the wrong level is refused too.
    c.add_neighbour(SessionId(22)).unwrap();
    c.handle_event(
        t,
        SessionId(22),
        registered(A, Level::Network, Role::Network),
        &mut e,
    );
    assert_eq!(
        actions(&mut c),
        vec![
            SlrAction::Close {
                session: SessionId(20)
            },
            SlrAction::Close {
                session: SessionId(21)
            },
            SlrAction::Close {
                session: SessionId(22)
            },
        ]
    );
    assert_eq!(c.recovery_stats().neighbours_refused, 2);
    assert_eq!(c.recovery_stats().spares_refused, 1);
    assert_eq!(c.neighbour_sessions().count(), 1);
    // A listed spare is reported to the shell.
    c.add_downstream(SessionId(23), ip(A_ADDR), 0.0).unwrap();
    c.handle_event(
        t,
        SessionId(23),
        registered(SPARE, Level::System, Role::Spare),
        &mut e,
    );
    assert_eq!(
        actions(&mut c),
        vec![SlrAction::SpareRegistered {
            session: SessionId(23),
            name: name(SPARE)
        }]
    );
    // Re-registration (a restarted spare): reported again, for a full resync.
    c.handle_event(
        t,
        SessionId(23),
        registered(SPARE, Level::System, Role::Spare),
        &mut e,
    );
    assert_eq!(c.recovery_stats().spares_registered, 2);
    assert_eq!(actions(&mut c).len(), 1);
    c.handle_event(
        t,
        SessionId(23),
        PeerEvent::PeerDown {
            reason: DownReason::Timeout,
        },
        &mut e,
    );
    assert_eq!(
        actions(&mut c),
        vec![SlrAction::SpareDown {
            session: SessionId(23)
        }]
    );
    assert_eq!(c.spare_sessions().count(), 0);
    // A spare whose re-registration no longer qualifies is closed and dropped.
    c.add_downstream(SessionId(24), ip(A_ADDR), 0.0).unwrap();
    c.handle_event(
        t,
        SessionId(24),
        registered(SPARE, Level::System, Role::Spare),
        &mut e,
    );
    actions(&mut c);
    c.handle_event(
        t,
        SessionId(24),
        registered(SPARE, Level::Site, Role::Spare),
        &mut e,
    );
    assert_eq!(
        actions(&mut c),
        vec![
            SlrAction::Close {
                session: SessionId(24)
            },
            SlrAction::SpareDown {
                session: SessionId(24)
            }
        ]
    );
}

#[test]
fn nobody_to_ask_is_reported() {
    let mut c = SlrControl::new(
        SlrConfig::new(Level::System),
        Arc::new(SumCost),
        Instant::ZERO,
    );
    let e = engine(B_ADDR);
    assert_eq!(
        c.recover(key(1), Instant::ZERO, &e),
        RecoverOutcome::NoScope
    );
    assert_eq!(c.recovery_stats().recover_no_scope, 1);
    assert!(
        c.set_recovery_scope(RecoveryScope {
            neighbours: vec![name(A); MAX_NEIGHBOURS + 1],
            ..RecoveryScope::default()
        })
        .is_err()
    );
}

#[derive(Debug, Clone)]
enum Forge {
    Id(u64),
    Real,
}

proptest! {
    /// However answers are forged (ids, sessions, keys, next hops), a flow
    /// pinned here never moves, and a flow is installed only from a real query's
    /// asked session with the right key and a foreign unicast next hop.
    #[test]
    fn forged_answers_never_move_pinned_flows(
        ops in proptest::collection::vec(
            (prop_oneof![any::<u64>().prop_map(Forge::Id), Just(Forge::Real)],
             0u64..5, 0u16..4, 0usize..4),
            1..40),
    ) {
        let (mut c, mut e) = default_b();
        let now = Instant::from_millis(10);
        let pinned = key(0);
        e.install_flow(&entry(pinned, SITE_ADDR, now), now).unwrap();
        let mut ids = BTreeMap::new();
        for p in 1..4u16 {
            ids.insert(p, query(&mut c, &e, key(p), now));
        }
        let hops = [SERVER, B_ADDR, A_ADDR, Ipv4Addr::UNSPECIFIED];
        for (forge, session, port, hop) in ops {
            let id = match forge {
                Forge::Id(x) => x,
                Forge::Real => ids.get(&port).copied().unwrap_or(0),
            };
            let rec = record(key(port), hops[hop]);
            let before = e.lookup_flow(&key(port), now).map(|f| f.next_hop);
            c.handle_event(now, SessionId(session), answer(id, Some(rec)), &mut e);
            let after = e.lookup_flow(&key(port), now).map(|f| f.next_hop);
            prop_assert_eq!(e.lookup_flow(&pinned, now).unwrap().next_hop, ip(SITE_ADDR));
            if before.is_some() {
                prop_assert_eq!(before, after, "an existing flow moved");
            } else if after.is_some() {
                let asked = SessionId(session) == S_UP || SessionId(session) == S_N;
                prop_assert!(matches!(forge, Forge::Real) && asked && port != 0);
                prop_assert!(hops[hop] == SERVER || hops[hop] == A_ADDR);
            }
        }
    }
}

// ---------------------------------------------------------------- end to end: WHOHAS

fn peer_cfg() -> PeerConfig {
    PeerConfig {
        keepalive_interval: Duration::from_millis(500),
        dead_interval: Duration::from_millis(1500),
        hello_timeout: Duration::from_secs(2),
        max_pending_bytes: 1 << 20,
    }
}

fn local(n: &str, level: Level, role: Role) -> LocalNode {
    LocalNode {
        name: name(n),
        level,
        role,
    }
}

/// Moves all bytes pending at `a` to `b`.
fn transfer(a: &mut Peer, b: &mut Peer, now: Instant) -> usize {
    let mut buf = Vec::new();
    let n = a.poll_transmit(&mut buf);
    if n > 0 {
        b.handle_input(now, &buf);
    }
    n
}

/// One SLR with its engine and one session.
struct Slr {
    ctl: SlrControl,
    eng: Engine,
    peer: Peer,
    session: SessionId,
}

impl Slr {
    /// Carries out the control's actions on its one session.
    fn act(&mut self, now: Instant) -> Vec<SlrAction> {
        let mut other = Vec::new();
        while let Some(a) = self.ctl.poll_action() {
            match a {
                SlrAction::Send { session, message } if session == self.session => {
                    self.peer.send(now, message).unwrap();
                }
                a => other.push(a),
            }
        }
        other
    }

    fn events(&mut self, now: Instant) {
        while let Some(ev) = self.peer.poll_event() {
            self.ctl.handle_event(now, self.session, ev, &mut self.eng);
        }
    }
}

/// Moves messages both ways until quiet; returns the non-send actions.
fn pump(a: &mut Slr, b: &mut Slr, now: Instant) -> Vec<SlrAction> {
    let mut other = Vec::new();
    loop {
        other.extend(a.act(now));
        other.extend(b.act(now));
        let moved =
            transfer(&mut a.peer, &mut b.peer, now) + transfer(&mut b.peer, &mut a.peer, now);
        a.events(now);
        b.events(now);
        if moved == 0 {
            return other;
        }
    }
}

/// Two system-level SLRs of neighbouring clusters: routing moves a client's
/// flow from A to B mid-connection; B asks A, re-creates the state, and the
/// connection's next segment goes on to its original server. A forged answer
/// afterwards moves nothing.
#[test]
fn whohas_between_neighbours_end_to_end() {
    let t0 = Instant::from_secs(1);
    let mk = |me: Ipv4Addr, neighbour: &str| {
        let mut ctl = SlrControl::new(SlrConfig::new(Level::System), Arc::new(SumCost), t0);
        ctl.set_recovery_scope(RecoveryScope {
            neighbours: vec![name(neighbour)],
            local_addrs: vec![ip(me)],
            query_secret: [me.octets()[3]; 32],
            ..RecoveryScope::default()
        })
        .unwrap();
        let mut eng = engine(me);
        serve(&mut eng, SITE_ADDR);
        (ctl, eng)
    };
    let (mut a_ctl, a_eng) = mk(A_ADDR, B);
    let (mut b_ctl, b_eng) = mk(B_ADDR, A);
    let s = SessionId(7);
    // B dials A; A accepts it like any session and learns the role at registration.
    b_ctl.add_neighbour(s).unwrap();
    a_ctl.add_downstream(s, ip(B_ADDR), 0.0).unwrap();
    let b_peer = Peer::connect(
        peer_cfg(),
        local(B, Level::System, Role::System),
        PeerAuth::Name(name(A)),
        Epoch(0xB),
        t0,
    );
    let a_peer = Peer::accept(
        peer_cfg(),
        local(A, Level::System, Role::System),
        PeerAuth::Name(name(B)),
        Epoch(0xA),
        t0,
    );
    let mut a = Slr {
        ctl: a_ctl,
        eng: a_eng,
        peer: a_peer,
        session: s,
    };
    let mut b = Slr {
        ctl: b_ctl,
        eng: b_eng,
        peer: b_peer,
        session: s,
    };
    assert!(pump(&mut a, &mut b, t0).is_empty());
    assert_eq!(a.ctl.neighbour_sessions().count(), 1);
    assert_eq!(b.ctl.neighbour_sessions().count(), 1);

    // The connection starts through A, whose site shortcut pins it to the server.
    let k = key(41000);
    assert_eq!(packet(&mut a.eng, k, TcpFlags::SYN, t0), forward(SITE_ADDR));
    let mut e = a.eng.lookup_flow(&k, t0).unwrap();
    e.next_hop = ip(SERVER);
    a.eng.install_flow(&e, t0).unwrap();

    // Routing moves the client to B: a mid-connection segment of an unknown flow.
    let t1 = t0 + Duration::from_millis(300);
    assert_eq!(
        packet(&mut b.eng, k, TcpFlags::ACK, t1),
        Verdict::Recover { key: k }
    );
    assert!(matches!(
        b.ctl.recover(k, t1, &b.eng),
        RecoverOutcome::Queried { asked: 1, .. }
    ));
    let other = pump(&mut a, &mut b, t1);
    assert_eq!(
        other,
        vec![SlrAction::FlowRecovered {
            key: k,
            next_hop: ip(SERVER)
        }]
    );
    // The retransmitted segment goes on to the original server, not a new choice.
    assert_eq!(packet(&mut b.eng, k, TcpFlags::ACK, t1), forward(SERVER));
    assert_eq!(a.ctl.recovery_stats().whohas_answered, 1);
    assert_eq!(b.ctl.recovery_stats().answers_installed, 1);

    // A forged answer over the authenticated session (no query out) moves nothing.
    a.peer
        .send(
            t1,
            Outgoing::WhoHasAnswer(WhoHasAnswer {
                query_id: 1,
                entry: Some(record(k, Ipv4Addr::new(203, 0, 113, 66))),
            }),
        )
        .unwrap();
    pump(&mut a, &mut b, t1);
    assert_eq!(b.ctl.recovery_stats().answer_not_pending, 1);
    assert_eq!(packet(&mut b.eng, k, TcpFlags::ACK, t1), forward(SERVER));
}

// ---------------------------------------------------------------- end to end: hot spare

/// The primary SLR mirrors its flows to a spare over signalling; the primary
/// dies; the spare declares it dead once, after the dead interval, and every
/// flow older than the mirror interval plus the signalling delay follows its
/// original pin at the spare.
#[test]
fn hot_spare_mirrors_and_takes_over() {
    let delay = Duration::from_millis(5); // one-way signalling delay
    let mcfg = MirrorConfig {
        interval: Duration::from_millis(100),
        scan_interval: Duration::from_millis(500),
        ..MirrorConfig::default()
    };
    let mut now = Instant::from_secs(1);
    // Primary: A with a listed spare; the spare dials A.
    let mut ctl = SlrControl::new(SlrConfig::new(Level::System), Arc::new(SumCost), now);
    ctl.set_recovery_scope(scope()).unwrap();
    let mut p_eng = engine(A_ADDR);
    serve(&mut p_eng, SITE_ADDR);
    let s = SessionId(9);
    ctl.add_downstream(s, ip(SPARE_ADDR), 0.0).unwrap();
    let mut p_peer = Peer::accept(
        peer_cfg(),
        local(A, Level::System, Role::System),
        PeerAuth::Name(name(SPARE)),
        Epoch(1),
        now,
    );
    let mut sender = MirrorSender::new(mcfg, now);
    // Spare.
    let mut s_eng = engine(SPARE_ADDR);
    serve(&mut s_eng, SITE_ADDR);
    let mut s_peer = Peer::connect(
        peer_cfg(),
        local(SPARE, Level::System, Role::Spare),
        PeerAuth::Name(name(A)),
        Epoch(2),
        now,
    );
    let mut receiver = MirrorReceiver::new(4096);
    let mut monitor = FailoverMonitor::for_keepalive(peer_cfg().keepalive_interval);

    // In flight: (arrival time, bytes) each way, delivered after `delay`.
    let mut to_spare: Vec<(Instant, Vec<u8>)> = Vec::new();
    let mut to_primary: Vec<(Instant, Vec<u8>)> = Vec::new();
    let mut primary_alive = true;
    let mut pinned_at: BTreeMap<FlowKey, Instant> = BTreeMap::new();
    let mut takeover = None;
    let step = Duration::from_millis(1);
    let kill_at = Instant::from_secs(4);
    let mut port = 0u16;
    let mut max_lag = Duration::ZERO;
    while now < Instant::from_secs(7) {
        if primary_alive {
            // Clients open a connection every 10 ms at the primary.
            if now.as_millis().is_multiple_of(10) {
                port += 1;
                let k = key(port);
                assert_eq!(
                    packet(&mut p_eng, k, TcpFlags::SYN, now),
                    forward(SITE_ADDR)
                );
                pinned_at.insert(k, now);
                sender.flow_pinned(&p_eng.lookup_flow(&k, now).unwrap(), now);
            }
            // Some connections end.
            if port > 50 && now.as_millis().is_multiple_of(100) {
                let gone = key(port - 50);
                p_eng.remove_flow(&gone, now);
                sender.flow_removed(&gone, now);
                pinned_at.remove(&gone);
            }
            while let Some(ev) = p_peer.poll_event() {
                ctl.handle_event(now, s, ev, &mut p_eng);
            }
            while let Some(a) = ctl.poll_action() {
                match a {
                    SlrAction::SpareRegistered { session, .. } => {
                        sender.spare_registered(session, now);
                    }
                    SlrAction::SpareDown { session } => sender.spare_down(session),
                    a => panic!("unexpected {a:?}"),
                }
            }
            if sender.scan_due(now) {
                let flows: Vec<FlowEntry> = p_eng.flows().export(now).collect();
                sender.scan(now, flows);
            }
            if sender.poll_timeout().is_some_and(|t| t <= now) {
                sender.handle_timeout(now);
            }
            while let Some(a) = sender.poll_action() {
                let SlrAction::Send { session, message } = a else {
                    panic!("sender only sends");
                };
                assert_eq!(session, s);
                p_peer.send(now, message).unwrap();
            }
            p_peer.handle_timeout(now);
            let mut buf = Vec::new();
            if p_peer.poll_transmit(&mut buf) > 0 {
                to_spare.push((now + delay, buf));
            }
            if now >= kill_at {
                primary_alive = false;
            }
        }
        // Spare side.
        let (due, later): (Vec<_>, Vec<_>) = to_spare.drain(..).partition(|(t, _)| *t <= now);
        to_spare = later;
        for (_, bytes) in due {
            s_peer.handle_input(now, &bytes);
            monitor.heard(now);
        }
        while let Some(ev) = s_peer.poll_event() {
            match ev {
                PeerEvent::Registered { .. } => receiver.primary_registered(now),
                PeerEvent::MirrorDelta(d) => {
                    receiver.apply(now, &d, &mut s_eng);
                    max_lag = max_lag.max(receiver.lag().unwrap_or_default());
                }
                PeerEvent::PeerDown { .. } => {}
                ev => panic!("unexpected {ev:?}"),
            }
        }
        s_peer.handle_timeout(now);
        if let Some(t) = monitor.handle_timeout(now) {
            assert!(takeover.is_none(), "takeover declared twice");
            takeover = Some((now, t));
        }
        let mut buf = Vec::new();
        if s_peer.poll_transmit(&mut buf) > 0 {
            to_primary.push((now + delay, buf));
        }
        let (due, later): (Vec<_>, Vec<_>) = to_primary.drain(..).partition(|(t, _)| *t <= now);
        to_primary = later;
        if primary_alive {
            for (_, bytes) in due {
                p_peer.handle_input(now, &bytes);
            }
        }
        now = now + step;
    }

    let (at, t) = takeover.expect("spare took over");
    let dead_after = peer_cfg().keepalive_interval * 3;
    assert_eq!(t.silent_for, dead_after);
    assert_eq!(at, t.last_heard + dead_after);
    // Last heard: the primary's last delta or keepalive before the kill.
    assert!(t.last_heard <= kill_at + delay);
    assert!(t.last_heard + mcfg.interval >= kill_at);
    assert!(monitor.taken_over());
    assert_eq!(monitor.handle_timeout(now), None, "once only");
    assert_eq!(sender.stats().resyncs, 1);
    assert_eq!(receiver.stats().resyncs, 1);
    assert!(receiver.stats().removals > 0, "removals reach the spare");
    assert!(
        max_lag <= mcfg.interval && max_lag >= mcfg.interval / 2,
        "lag {max_lag:?}"
    );

    // At the spare, every flow older than interval + delay at the kill follows
    // its original pin; flows ended at the primary are gone.
    let bound = mcfg.interval + delay * 2;
    let (mut survived, mut covered, mut youngest_survivor) = (0, 0, Duration::MAX);
    for (k, at) in &pinned_at {
        let age = kill_at.saturating_since(*at);
        let here = s_eng.lookup_flow(k, now).map(|f| f.next_hop);
        if here.is_some() {
            assert_eq!(here, Some(ip(SITE_ADDR)));
            survived += 1;
            youngest_survivor = youngest_survivor.min(age);
        }
        if age >= bound {
            covered += 1;
            assert!(
                here.is_some(),
                "flow {age:?} old at the kill was not mirrored"
            );
            assert_eq!(
                packet(&mut s_eng, *k, TcpFlags::ACK, now),
                forward(SITE_ADDR)
            );
        }
    }
    let ended = key(1);
    assert!(
        s_eng.lookup_flow(&ended, now).is_none(),
        "ended flow still mirrored"
    );
    println!(
        "hot spare: {survived}/{} flows survived ({covered} older than {bound:?} all did); \
         youngest survivor {youngest_survivor:?}; takeover {:?} after the kill; max lag {max_lag:?}",
        pinned_at.len(),
        at.saturating_since(kill_at),
    );
    assert!(survived >= covered && covered > 250);
}

const SPARE_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);

// ---------------------------------------------------------------- mirror units

fn spare_pair(cfg: MirrorConfig) -> (MirrorSender, MirrorReceiver, Engine, Engine) {
    let mut p = engine(A_ADDR);
    serve(&mut p, SITE_ADDR);
    (
        MirrorSender::new(cfg, Instant::ZERO),
        MirrorReceiver::new(10_000),
        p,
        engine(SPARE_ADDR),
    )
}

/// Sends everything due at `now` straight into the receiver; returns the deltas.
fn flush(
    tx: &mut MirrorSender,
    rx: &mut MirrorReceiver,
    spare: &mut Engine,
    now: Instant,
) -> Vec<(usize, usize)> {
    tx.handle_timeout(now);
    let mut sizes = Vec::new();
    while let Some(a) = tx.poll_action() {
        let SlrAction::Send {
            message: Outgoing::MirrorDelta { upserts, removals },
            ..
        } = a
        else {
            panic!("unexpected {a:?}");
        };
        sizes.push((upserts.len(), removals.len()));
        let d = MirrorDelta {
            seq: 0,
            upserts,
            removals,
        };
        rx.apply(now, &d, spare);
    }
    sizes
}

#[test]
fn resync_is_bracketed_batched_and_sweeps_stale_flows() {
    let cfg = MirrorConfig {
        max_batches_per_tick: 2,
        ..MirrorConfig::default()
    };
    let (mut tx, mut rx, mut p, mut s) = spare_pair(cfg);
    let t0 = Instant::from_secs(1);
    for port in 0..600 {
        p.install_flow(&entry(key(port), SERVER, t0), t0).unwrap();
    }
    // The spare holds a flow the primary no longer has (from an earlier life).
    s.install_flow(&entry(key(9999), SERVER, t0), t0).unwrap();
    let stale = MirrorDelta {
        seq: 0,
        upserts: vec![record(key(9999), SERVER)],
        removals: vec![],
    };
    rx.apply(t0, &stale, &mut s);
    // The spare registers: resync.
    rx.primary_registered(t0);
    tx.spare_registered(SessionId(1), t0);
    assert!(tx.scan_due(t0));
    tx.scan(t0, p.flows().export(t0).collect::<Vec<_>>());
    // Ticks send at most two deltas each: the opening marker, then 256-record batches.
    assert_eq!(flush(&mut tx, &mut rx, &mut s, t0), vec![(0, 0), (256, 0)]);
    assert!(rx.in_resync());
    let t1 = t0 + cfg.interval;
    assert_eq!(flush(&mut tx, &mut rx, &mut s, t1), vec![(256, 0), (88, 0)]);
    assert_eq!(tx.oldest_unsent(t1), None);
    let t2 = t1 + cfg.interval;
    assert_eq!(flush(&mut tx, &mut rx, &mut s, t2), vec![(0, 0)]);
    assert!(!rx.in_resync());
    assert_eq!(rx.stats().resyncs, 1);
    assert_eq!(rx.stats().swept, 1);
    assert!(s.lookup_flow(&key(9999), t2).is_none());
    assert_eq!(rx.mirrored(), 600);
    for port in [0, 299, 599] {
        assert_eq!(s.lookup_flow(&key(port), t2).unwrap().next_hop, ip(SERVER));
    }
    // Nothing changed: a later scan sends nothing.
    let t3 = t2 + cfg.scan_interval;
    assert!(tx.scan_due(t3));
    tx.scan(t3, p.flows().export(t3).collect::<Vec<_>>());
    assert!(flush(&mut tx, &mut rx, &mut s, t3).is_empty());
}

#[test]
fn scans_carry_changes_removals_and_refreshes() {
    let cfg = MirrorConfig::default();
    let (mut tx, mut rx, mut p, mut s) = spare_pair(cfg);
    let t0 = Instant::from_secs(1);
    tx.spare_registered(SessionId(1), t0);
    rx.primary_registered(t0);
    let k = key(1);
    assert_eq!(packet(&mut p, k, TcpFlags::SYN, t0), forward(SITE_ADDR));
    p.install_flow(&entry(key(2), SERVER, t0), t0).unwrap();
    tx.scan(t0, p.flows().export(t0).collect::<Vec<_>>());
    flush(&mut tx, &mut rx, &mut s, t0);
    assert_eq!(s.lookup_flow(&k, t0).unwrap().state, FlowState::SynSeen);
    // State change (handshake done), removal, and a shortcut re-pin: seen by the scan.
    let t1 = t0 + Duration::from_secs(1);
    assert_eq!(packet(&mut p, k, TcpFlags::ACK, t1), forward(SITE_ADDR));
    p.remove_flow(&key(2), t1);
    tx.scan(t1, p.flows().export(t1).collect::<Vec<_>>());
    assert_eq!(flush(&mut tx, &mut rx, &mut s, t1), vec![(1, 1)]);
    assert_eq!(s.lookup_flow(&k, t1).unwrap().state, FlowState::Established);
    assert!(s.lookup_flow(&key(2), t1).is_none());
    // A busy flow is refreshed after refresh_after, so the spare's idle timer
    // does not expire it; a quiet one is not re-sent.
    let t2 = t1 + cfg.refresh_after;
    assert_eq!(packet(&mut p, k, TcpFlags::ACK, t2), forward(SITE_ADDR));
    tx.scan(t2, p.flows().export(t2).collect::<Vec<_>>());
    assert_eq!(flush(&mut tx, &mut rx, &mut s, t2), vec![(1, 0)]);
    assert_eq!(
        s.lookup_flow(&k, t2).unwrap().last_seen,
        p.lookup_flow(&k, t2).unwrap().last_seen
    );
    assert_eq!(tx.stats().scans, 3);
}

#[test]
fn sender_is_bounded_and_quiet_without_a_spare() {
    let cfg = MirrorConfig {
        max_flows: 3,
        ..MirrorConfig::default()
    };
    let (mut tx, _rx, _p, _s) = spare_pair(cfg);
    let t0 = Instant::from_secs(1);
    tx.flow_pinned(&entry(key(1), SERVER, t0), t0);
    assert_eq!(tx.stats().no_spare, 1);
    assert_eq!(tx.poll_timeout(), None);
    tx.spare_registered(SessionId(4), t0);
    // The resync waits for a scan: wake at once.
    assert_eq!(tx.poll_timeout(), Some(Instant::ZERO));
    tx.scan(t0, Vec::new());
    assert!(tx.poll_timeout().unwrap() <= t0, "markers to send now");
    tx.handle_timeout(t0);
    assert_eq!(
        std::iter::from_fn(|| tx.poll_action()).count(),
        2,
        "open + close"
    );
    assert_eq!(tx.poll_timeout(), Some(t0 + cfg.scan_interval));
    for port in 0..5 {
        tx.flow_pinned(&entry(key(port), SERVER, t0), t0);
    }
    assert_eq!(tx.tracked(), 3);
    assert_eq!(tx.stats().untracked, 2);
    tx.spare_down(SessionId(4));
    assert_eq!((tx.tracked(), tx.spare()), (0, None));
    assert!(!tx.scan_due(t0));
}

#[test]
fn failover_monitor_fires_once_and_only_when_armed() {
    let mut m = FailoverMonitor::new(Duration::from_secs(3));
    assert_eq!(m.poll_timeout(), None);
    assert_eq!(
        m.handle_timeout(Instant::from_secs(100)),
        None,
        "never heard: not armed"
    );
    m.heard(Instant::from_secs(1));
    m.heard(Instant::from_secs(2));
    assert_eq!(m.poll_timeout(), Some(Instant::from_secs(5)));
    assert_eq!(m.handle_timeout(Instant::from_millis(4999)), None);
    let t = m.handle_timeout(Instant::from_secs(6)).unwrap();
    assert_eq!(t.last_heard, Instant::from_secs(2));
    assert_eq!(t.silent_for, Duration::from_secs(4));
    assert_eq!(m.handle_timeout(Instant::from_secs(60)), None);
    assert_eq!(m.poll_timeout(), None);
}

#[derive(Debug, Clone)]
enum MirrorOp {
    Pin(u16, usize),
    Unpin(u16),
    /// A removal the shell does not report (e.g. an idle timeout): only a scan
    /// finds it.
    Expire(u16),
    Scan,
    Tick,
    Reregister,
}

fn mirror_op() -> impl Strategy<Value = MirrorOp> {
    prop_oneof![
        4 => (0u16..40, 0usize..3).prop_map(|(p, h)| MirrorOp::Pin(p, h)),
        2 => (0u16..40).prop_map(MirrorOp::Unpin),
        1 => (0u16..40).prop_map(MirrorOp::Expire),
        2 => Just(MirrorOp::Scan),
        3 => Just(MirrorOp::Tick),
        1 => Just(MirrorOp::Reregister),
    ]
}

proptest! {
    /// Whatever the primary does (pins, re-pins, removals reported or not,
    /// re-registrations of the spare mid-stream), once a scan is sent the
    /// spare holds exactly the primary's flows with the same next hops.
    #[test]
    fn mirror_converges(ops in proptest::collection::vec(mirror_op(), 1..120)) {
        let cfg = MirrorConfig {
            max_batches_per_tick: 1,
            ..MirrorConfig::default()
        };
        let (mut tx, mut rx, mut p, mut s) = spare_pair(cfg);
        let hops = [SERVER, SITE_ADDR, A_ADDR];
        let mut now = Instant::from_secs(1);
        tx.spare_registered(SessionId(1), now);
        rx.primary_registered(now);
        for op in ops {
            now = now + Duration::from_millis(7);
            match op {
                MirrorOp::Pin(port, h) => {
                    let e = entry(key(port), hops[h], now);
                    p.install_flow(&e, now).unwrap();
                    tx.flow_pinned(&e, now);
                }
                MirrorOp::Unpin(port) => {
                    p.remove_flow(&key(port), now);
                    tx.flow_removed(&key(port), now);
                }
                MirrorOp::Expire(port) => {
                    p.remove_flow(&key(port), now);
                }
                MirrorOp::Scan => tx.scan(now, p.flows().export(now).collect::<Vec<_>>()),
                MirrorOp::Tick => {
                    now = now + cfg.interval;
                    flush(&mut tx, &mut rx, &mut s, now);
                }
                MirrorOp::Reregister => {
                    rx.primary_registered(now);
                    tx.spare_registered(SessionId(1), now);
                }
            }
        }
        tx.scan(now, p.flows().export(now).collect::<Vec<_>>());
        for _ in 0..100 {
            now = now + cfg.interval;
            if flush(&mut tx, &mut rx, &mut s, now).is_empty() {
                break;
            }
        }
        prop_assert!(!rx.in_resync());
        let primary: BTreeMap<FlowKey, IpAddr> =
            p.flows().export(now).map(|e| (e.key, e.next_hop)).collect();
        let spare: BTreeMap<FlowKey, IpAddr> =
            s.flows().export(now).map(|e| (e.key, e.next_hop)).collect();
        prop_assert_eq!(primary, spare);
    }
}

#[test]
fn takeover_counts_every_mirrored_flow_as_seen_then() {
    let t0 = Instant::from_secs(100);
    let mut spare = engine(Ipv4Addr::new(10, 0, 0, 9));
    let mut rx = MirrorReceiver::new(64);
    rx.primary_registered(t0);
    // A flow mirrored half-open: its SYN timeout (10 s) runs from its last packet.
    let mut half_open = entry(key(1), Ipv4Addr::new(10, 0, 1, 1), t0);
    half_open.state = FlowState::SynSeen;
    let d = MirrorDelta {
        seq: 1,
        upserts: vec![FlowRecord::from_entry(&half_open, t0)],
        removals: vec![],
    };
    rx.apply(t0, &d, &mut spare);
    assert!(spare.lookup_flow(&key(1), t0).is_some());
    // The primary goes silent; the spare takes over 9 s later.
    let takeover = Instant::from_secs(109);
    assert_eq!(rx.take_over(takeover, &mut spare), 0);
    // 12 s after the flow's last packet but 3 s after the takeover: still pinned.
    let later = Instant::from_secs(112);
    let e = spare
        .lookup_flow(&key(1), later)
        .expect("refreshed at the takeover");
    assert_eq!(e.last_seen, takeover);
    assert_eq!(e.next_hop, ip(Ipv4Addr::new(10, 0, 1, 1)));
}
