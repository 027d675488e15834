//! The router node on its own: packets, sessions and timers in, events out,
//! with no shell around it (the daemon and the simulator drive this same type).
#![expect(clippy::unwrap_used, reason = "test code")]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use router_core::api::RouterApi;
use router_core::classify::{FlowKey, VirtualSubnet};
use router_core::engine::{EngineConfig, Verdict};
use router_core::flow::{FlowConfig, FlowEntry, FlowState};
use router_core::packet::{HEADROOM, PacketBuf};
use router_core::policy::{Candidate, LeastCost, Level};
use router_core::synth::PacketSpec;
use router_core::time::Instant;
use router_core::wire::TcpFlags;
use signaling::node::{Node, NodeConfig, NodeEvent, SessionKind, SpareConfig};
use signaling::*;

const ME: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 1);
const SLR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const H1: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 11);
const H2: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 12);
const UP: SessionId = SessionId(1);

fn ip(a: Ipv4Addr) -> IpAddr {
    IpAddr::V4(a)
}

fn vips() -> VirtualSubnet {
    VirtualSubnet::new("192.200.0.0".parse().unwrap(), 24).unwrap()
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

fn hop(a: Ipv4Addr, load: f64) -> Candidate {
    Candidate {
        addr: ip(a),
        load,
        route_cost: 0.0,
        up: true,
    }
}

fn config(level: Level) -> NodeConfig {
    let engine = EngineConfig {
        level,
        local_v4: Some(ME),
        flows: FlowConfig {
            capacity_v4: 1024,
            capacity_v6: 8,
            max_next_hops: 64,
            ..FlowConfig::default()
        },
        max_subnets: 16,
        ..EngineConfig::default()
    };
    let mut slr = SlrConfig::new(level);
    slr.shortcuts = true;
    NodeConfig::new(engine, slr, Arc::new(LeastCost))
}

/// A site node serving the VIPs statically over two hosts (H1 busier).
fn site() -> Node {
    let mut c = config(Level::Site);
    c.static_subnets = vec![(vips(), vec![hop(H1, 0.5), hop(H2, 0.1)])];
    Node::new(c, Instant::ZERO).unwrap()
}

fn send(n: &mut Node, k: FlowKey, flags: TcpFlags, now: Instant) -> Verdict {
    let spec = PacketSpec::tcp(
        SocketAddr::new(k.src, k.src_port),
        SocketAddr::new(k.dst, k.dst_port),
        flags,
    );
    let mut buf = vec![0u8; HEADROOM + 256];
    let len = spec.write(&mut buf[HEADROOM..]).unwrap();
    let mut pkt = PacketBuf::new(&mut buf, HEADROOM, len).unwrap();
    n.handle_packet(now, &mut pkt)
}

fn events(n: &mut Node) -> Vec<NodeEvent> {
    std::iter::from_fn(|| n.poll_event()).collect()
}

fn registered(name: &str, level: Level, role: Role) -> PeerEvent {
    PeerEvent::Registered {
        identity: NodeName::new(name).unwrap(),
        level,
        role,
        epoch: Epoch(1),
    }
}

#[test]
fn static_subnets_are_served_from_the_start() {
    let mut n = site();
    let ev = events(&mut n);
    assert!(
        matches!(ev.as_slice(), [NodeEvent::Serve(s)] if *s == vips()),
        "{ev:?}"
    );
    assert!(
        n.poll_timeout().is_some(),
        "the node always has a next deadline"
    );
}

#[test]
fn a_pinned_flow_becomes_a_shortcut_upstream_and_later_packets_follow_the_pin() {
    let mut n = site();
    events(&mut n);
    n.session_opened(UP, SessionKind::Upstream);
    n.handle_event(
        Instant::from_millis(1),
        UP,
        registered("sys.example", Level::System, Role::System),
    );
    events(&mut n);
    let t = Instant::from_millis(2);
    let v = send(&mut n, key(1), TcpFlags::SYN, t);
    assert!(
        matches!(v, Verdict::Forward { next_hop, .. } if next_hop == ip(H2)),
        "least cost picks the idle host: {v:?}"
    );
    let ev = events(&mut n);
    let shortcut = ev.iter().find_map(|e| match e {
        NodeEvent::Send {
            session,
            message: Outgoing::TunnelObject(obj),
        } => Some((*session, *obj)),
        _ => None,
    });
    assert_eq!(
        shortcut,
        Some((
            UP,
            TunnelObject {
                key: key(1),
                server: ip(H2)
            }
        )),
        "{ev:?}"
    );
    assert_eq!(n.counters().flows_pinned, 1);
    // The next segment follows the pin and originates nothing.
    let v = send(&mut n, key(1), TcpFlags::ACK, Instant::from_millis(3));
    assert!(matches!(v, Verdict::Forward { next_hop, .. } if next_hop == ip(H2)));
    assert!(events(&mut n).is_empty());
    assert_eq!(n.counters().flows_pinned, 1);
}

#[test]
fn an_entry_node_hands_mid_flow_packets_of_unknown_flows_to_its_slr_in_place() {
    let mut c = config(Level::Network);
    c.static_subnets = vec![(vips(), vec![hop(SLR, 0.0)])];
    c.forward_unknown_to = Some(ip(SLR));
    let mut n = Node::new(c, Instant::ZERO).unwrap();
    let v = send(&mut n, key(2), TcpFlags::ACK, Instant::from_millis(1));
    assert!(
        matches!(v, Verdict::Forward { next_hop, .. } if next_hop == ip(SLR)),
        "{v:?}"
    );
    assert_eq!(n.counters().recovery.recover_forwarded, 1);
    assert!(
        n.engine()
            .lookup_flow(&key(2), Instant::from_millis(1))
            .is_none(),
        "the entry does not invent a pin for a flow it does not know"
    );
}

#[test]
fn an_slr_drops_a_lost_flows_packet_while_whohas_asks_upstream() {
    let mut n = site();
    n.session_opened(UP, SessionKind::Upstream);
    n.handle_event(
        Instant::from_millis(1),
        UP,
        registered("sys.example", Level::System, Role::System),
    );
    events(&mut n);
    let v = send(&mut n, key(3), TcpFlags::ACK, Instant::from_millis(2));
    assert!(matches!(v, Verdict::Recover { .. }), "{v:?}");
    let asked = events(&mut n).into_iter().any(|e| {
        matches!(
            e,
            NodeEvent::Send {
                session: UP,
                message: Outgoing::WhoHas(_)
            }
        )
    });
    assert!(asked, "a WHOHAS goes to the upper level");
    assert_eq!(n.control().recovery_stats().queries, 1);
}

/// A spare (dead after `dead_after`) registered with its primary on session 9
/// at 10 ms.
fn spare(dead_after: Duration) -> (Node, SessionId) {
    let mut c = config(Level::Site);
    c.static_subnets = vec![(vips(), vec![hop(H1, 0.0)])];
    c.spare = Some(SpareConfig {
        dead_after,
        take_over: vec![ip(Ipv4Addr::new(10, 1, 1, 2))],
        mirror_capacity: 64,
    });
    let mut n = Node::new(c, Instant::ZERO).unwrap();
    let primary = SessionId(9);
    n.session_opened(primary, SessionKind::Primary);
    n.handle_event(
        Instant::from_millis(10),
        primary,
        registered("site.example", Level::Site, Role::Site),
    );
    (n, primary)
}

#[test]
fn a_spare_takes_over_the_mirrored_table_when_its_primary_falls_silent() {
    let (mut n, primary) = spare(Duration::from_millis(300));
    let flow = FlowEntry {
        key: key(4),
        next_hop: ip(H2),
        label: 1,
        level: Level::Site,
        state: FlowState::Established,
        created: Instant::from_millis(5),
        last_seen: Instant::from_millis(5),
        packets: 3,
        bytes: 300,
    };
    n.handle_event(
        Instant::from_millis(20),
        primary,
        PeerEvent::MirrorDelta(MirrorDelta {
            seq: 1,
            upserts: vec![FlowRecord::from_entry(&flow, Instant::from_millis(20))],
            removals: vec![],
        }),
    );
    assert_eq!(n.mirror_state().map(|(flows, _)| flows), Some(1));
    // Heard until 200 ms, then silence: dead at 500 ms, not before.
    n.primary_heard(Instant::from_millis(200));
    n.handle_timeout(Instant::from_millis(450));
    assert!(n.takeover().is_none());
    let deadline = n.poll_timeout().unwrap();
    assert!(deadline <= Instant::from_millis(500), "{deadline:?}");
    n.handle_timeout(Instant::from_millis(500));
    let took = events(&mut n)
        .into_iter()
        .find_map(|e| match e {
            NodeEvent::TookOver(r) => Some(r),
            _ => None,
        })
        .expect("a takeover event");
    assert_eq!(took.silent_for, Duration::from_millis(300));
    let now = Instant::from_millis(501);
    assert_eq!(
        n.engine().lookup_flow(&key(4), now).map(|f| f.next_hop),
        Some(ip(H2)),
        "the mirrored flow is ours now"
    );
    // Its next packet follows the mirrored pin rather than a new choice.
    let v = send(&mut n, key(4), TcpFlags::ACK, now);
    assert!(matches!(v, Verdict::Forward { next_hop, .. } if next_hop == ip(H2)));
}

#[test]
fn a_spare_takes_over_at_once_when_its_session_declares_the_primary_dead() {
    let (mut n, primary) = spare(Duration::from_secs(5));
    n.primary_heard(Instant::from_millis(300));
    // A reset is not a death: the spare leaves room to reconnect.
    let reset = PeerEvent::PeerDown {
        reason: DownReason::TransportClosed,
    };
    n.handle_event(Instant::from_millis(310), primary, reset);
    n.handle_timeout(Instant::from_millis(320));
    assert!(
        n.takeover().is_none(),
        "a closed transport waits dead_after"
    );
    // The session comes back, then its dead interval runs out.
    let again = SessionId(10);
    n.session_opened(again, SessionKind::Primary);
    n.handle_event(
        Instant::from_millis(400),
        again,
        registered("site.example", Level::Site, Role::Site),
    );
    let dead = PeerEvent::PeerDown {
        reason: DownReason::Timeout,
    };
    n.handle_event(Instant::from_millis(900), again, dead);
    assert!(n.poll_timeout().unwrap() <= Instant::from_millis(900));
    n.handle_timeout(Instant::from_millis(900));
    let took = n.takeover().expect("taken over at the session's verdict");
    assert_eq!(
        took.at,
        Instant::from_millis(900),
        "no second wait of dead_after (5 s)"
    );
}

#[test]
fn a_lost_flows_packet_is_held_and_sent_on_the_moment_its_flow_is_recreated() {
    let mut n = site();
    n.session_opened(UP, SessionKind::Upstream);
    n.handle_event(
        Instant::from_millis(1),
        UP,
        registered("sys.example", Level::System, Role::System),
    );
    events(&mut n);
    let mut buf = vec![0u8; HEADROOM + 1500];
    // Nothing is released before anything was held.
    assert!(
        n.poll_released(Instant::from_millis(1), &mut buf, HEADROOM)
            .is_none()
    );
    let v = send(&mut n, key(3), TcpFlags::ACK, Instant::from_millis(2));
    assert!(matches!(v, Verdict::Recover { .. }), "{v:?}");
    let query_id = events(&mut n)
        .into_iter()
        .find_map(|e| match e {
            NodeEvent::Send {
                message: Outgoing::WhoHas(q),
                ..
            } => Some(q.query_id),
            _ => None,
        })
        .unwrap();
    assert_eq!(n.counters().hold.held, 1);
    // Still unknown: nothing to release.
    assert!(
        n.poll_released(Instant::from_millis(3), &mut buf, HEADROOM)
            .is_none()
    );
    // The upper level knows the flow: pinned to H1.
    let record = FlowRecord {
        key: key(3),
        next_hop: ip(H1),
        label: 7,
        level: Level::Site,
        state: FlowPhase::Established,
        age_ms: 5_000,
        idle_ms: 10,
        packets: 40,
        bytes: 40_000,
    };
    n.handle_event(
        Instant::from_millis(20),
        UP,
        PeerEvent::WhoHasAnswer(WhoHasAnswer {
            query_id,
            entry: Some(record),
        }),
    );
    let (v, pkt) = n
        .poll_released(Instant::from_millis(20), &mut buf, HEADROOM)
        .expect("the held packet is released");
    assert_eq!(
        v,
        Verdict::Forward {
            next_hop: ip(H1),
            fragment: false
        }
    );
    // Tunnelled: an IP-in-IP packet to H1 carrying the client's packet.
    let outer = pkt.data();
    assert_eq!(outer[9], 4, "IP-in-IP");
    assert_eq!(&outer[16..20], &H1.octets());
    assert!(
        n.poll_released(Instant::from_millis(20), &mut buf, HEADROOM)
            .is_none()
    );
    assert_eq!(n.counters().hold.released, 1);
}

#[test]
fn a_held_packet_older_than_the_hold_time_is_dropped_not_released() {
    let mut n = site();
    n.session_opened(UP, SessionKind::Upstream);
    n.handle_event(
        Instant::from_millis(1),
        UP,
        registered("sys.example", Level::System, Role::System),
    );
    events(&mut n);
    let _ = send(&mut n, key(4), TcpFlags::ACK, Instant::from_millis(2));
    let query_id = events(&mut n)
        .into_iter()
        .find_map(|e| match e {
            NodeEvent::Send {
                message: Outgoing::WhoHas(q),
                ..
            } => Some(q.query_id),
            _ => None,
        })
        .unwrap();
    // The answer comes 2 s later (the query itself may have expired too):
    // whatever happens to the flow, the stale packet is not sent.
    let late = Instant::from_millis(2_100);
    n.handle_event(
        late,
        UP,
        PeerEvent::WhoHasAnswer(WhoHasAnswer {
            query_id,
            entry: None,
        }),
    );
    let _ = send(&mut n, key(5), TcpFlags::ACK, late);
    let mut buf = vec![0u8; HEADROOM + 1500];
    assert!(n.poll_released(late, &mut buf, HEADROOM).is_none());
    assert_eq!(n.counters().hold.expired, 1);
}
