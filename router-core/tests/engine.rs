//! The walk of DESIGN.md §3 through `Engine::process`, packet by packet: pinning,
//! recovery instead of re-choice, tunnels in and out, TTL, path MTU, ECN, policy
//! faults, bounded tables and the counters behind each verdict.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failure is a test failure"
)]

use proptest::prelude::*;
use router_core::engine::MAX_CANDIDATES;
use router_core::flow::FlowConfig;
use router_core::packet::HEADROOM;
use router_core::synth::{PacketSpec, Transport};
use router_core::tunnel::fragment_ipv4;
use router_core::wire::{
    self, FRAG_NEEDED_CODE, Icmpv4Packet, Icmpv6Packet, Ipv4Packet, Ipv6Packet, TcpFlags,
    icmpv4_type, icmpv6_type, ip_proto,
};
use router_core::{
    ApiError, Candidate, Decision, DropReason, Engine, EngineConfig, FlowRequest, Instant, Level,
    PacketBuf, Policy, PolicyError, RouterApi, SubnetId, Verdict, VirtualSubnet,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

const LOCAL4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const LOCAL6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
const T0: Instant = Instant::from_secs(100);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sock(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn cand(addr: &str, load: f64) -> Candidate {
    Candidate {
        addr: ip(addr),
        load,
        route_cost: 0.0,
        up: true,
    }
}

fn engine_with(cfg: EngineConfig) -> (Engine, SubnetId, SubnetId) {
    let mut e = Engine::new(cfg);
    let v4 = e.add_subnet("10.1.0.0/16".parse().unwrap()).unwrap();
    e.set_candidates(
        v4,
        vec![cand("198.51.100.1", 0.5), cand("198.51.100.2", 0.2)],
    )
    .unwrap();
    let v6 = e.add_subnet("2001:db8:1::/48".parse().unwrap()).unwrap();
    e.set_candidates(
        v6,
        vec![cand("2001:db8:ff::1", 0.1), cand("2001:db8:ff::2", 0.9)],
    )
    .unwrap();
    (e, v4, v6)
}

fn engine() -> (Engine, SubnetId, SubnetId) {
    engine_with(EngineConfig {
        level: Level::System,
        local_v4: Some(LOCAL4),
        local_v6: Some(LOCAL6),
        flows: FlowConfig {
            capacity_v4: 4096,
            capacity_v6: 1024,
            ..FlowConfig::default()
        },
        ..EngineConfig::default()
    })
}

/// A buffer holding one packet after `HEADROOM` bytes.
struct Frame {
    buf: Vec<u8>,
    len: usize,
}

impl Frame {
    fn new(spec: &PacketSpec) -> Self {
        let mut buf = vec![0u8; HEADROOM + spec.len() + 64];
        let len = spec.write(&mut buf[HEADROOM..]).unwrap();
        Self { buf, len }
    }

    fn from_bytes(bytes: &[u8]) -> Self {
        let mut buf = vec![0u8; HEADROOM + bytes.len() + 64];
        buf[HEADROOM..HEADROOM + bytes.len()].copy_from_slice(bytes);
        Self {
            buf,
            len: bytes.len(),
        }
    }

    /// Run the engine; returns the verdict and the resulting packet bytes.
    fn run(&mut self, e: &mut Engine, now: Instant) -> (Verdict, Vec<u8>) {
        let mut p = PacketBuf::new(&mut self.buf, HEADROOM, self.len).unwrap();
        let v = e.process(&mut p, now);
        (v, p.data().to_vec())
    }
}

fn tcp(src: &str, dst: &str, flags: TcpFlags) -> PacketSpec {
    PacketSpec::tcp(sock(src), sock(dst), flags)
}

fn process(e: &mut Engine, spec: &PacketSpec, now: Instant) -> (Verdict, Vec<u8>) {
    Frame::new(spec).run(e, now)
}

/// IP-in-IP wrap of `inner` from `src` to `dst` (IPv4 outer).
fn ipip4(src: Ipv4Addr, dst: Ipv4Addr, inner: &[u8], ecn: u8) -> Vec<u8> {
    let mut out = vec![0u8; 20 + inner.len()];
    let proto = if inner[0] >> 4 == 4 {
        ip_proto::IPV4
    } else {
        ip_proto::IPV6
    };
    let repr = wire::Ipv4Repr {
        src,
        dst,
        protocol: proto,
        payload_len: inner.len(),
        ttl: 64,
        dscp: 0,
        ecn,
        dont_frag: true,
        ident: 0,
    };
    repr.emit(&mut Ipv4Packet::new_unchecked(&mut out[..20]));
    out[20..].copy_from_slice(inner);
    out
}

fn packet_bytes(spec: &PacketSpec) -> Vec<u8> {
    let mut b = vec![0u8; spec.len()];
    spec.write(&mut b).unwrap();
    b
}

#[test]
fn new_flow_is_placed_pinned_and_encapsulated() {
    let (mut e, _, _) = engine();
    let mut syn = tcp("203.0.113.9:40000", "10.1.2.3:80", TcpFlags::SYN);
    syn.dscp = 46;
    syn.ecn = 2;
    let (v, out) = process(&mut e, &syn, T0);
    // Least cost: load 0.2 beats 0.5.
    assert_eq!(
        v,
        Verdict::Forward {
            next_hop: ip("198.51.100.2"),
            fragment: false
        }
    );
    let outer = Ipv4Packet::new_checked(&out[..]).unwrap();
    assert!(outer.verify_checksum());
    assert_eq!(outer.protocol(), ip_proto::IPV4);
    assert_eq!(outer.src_addr(), LOCAL4);
    assert_eq!(outer.dst_addr(), Ipv4Addr::new(198, 51, 100, 2));
    assert_eq!(outer.dscp(), 46, "DSCP copied outward");
    assert_eq!(outer.ecn(), 2, "ECT copied outward (RFC 6040 normal mode)");
    assert!(outer.dont_frag());
    let inner = Ipv4Packet::new_checked(outer.payload()).unwrap();
    assert_eq!(inner.ttl(), 63, "inner TTL decremented once");
    assert!(
        inner.verify_checksum(),
        "incremental checksum update is right"
    );
    assert_eq!(usize::from(outer.total_len()), 20 + syn.len());

    let c = e.counters();
    assert_eq!((c.packets, c.forwarded_new, c.forwarded_pinned), (1, 1, 0));
    let key = router_core::classify::classify(&packet_bytes(&syn))
        .unwrap()
        .key;
    let f = e.lookup_flow(&key, T0).unwrap();
    assert_eq!(f.next_hop, ip("198.51.100.2"));
    assert_eq!(f.level, Level::System);
    assert_eq!(f.packets, 1);
}

#[test]
fn pinned_flows_never_move_but_new_flows_follow_the_table() {
    let (mut e, v4, _) = engine();
    let syn = tcp("203.0.113.9:40000", "10.1.2.3:80", TcpFlags::SYN);
    let (v, _) = process(&mut e, &syn, T0);
    assert!(matches!(v, Verdict::Forward { next_hop, .. } if next_hop == ip("198.51.100.2")));
    // The pinned server becomes the most loaded.
    e.set_candidates(
        v4,
        vec![cand("198.51.100.1", 0.1), cand("198.51.100.2", 0.9)],
    )
    .unwrap();
    for flags in [TcpFlags::ACK, TcpFlags::ACK | TcpFlags::PSH, TcpFlags::ACK] {
        let (v, _) = process(&mut e, &tcp("203.0.113.9:40000", "10.1.2.3:80", flags), T0);
        assert!(matches!(v, Verdict::Forward { next_hop, .. } if next_hop == ip("198.51.100.2")));
    }
    let (v, _) = process(
        &mut e,
        &tcp("203.0.113.9:40001", "10.1.2.3:80", TcpFlags::SYN),
        T0,
    );
    assert!(matches!(v, Verdict::Forward { next_hop, .. } if next_hop == ip("198.51.100.1")));
    let c = e.counters();
    assert_eq!((c.forwarded_new, c.forwarded_pinned), (2, 3));
}

#[test]
fn mid_connection_miss_asks_for_recovery_instead_of_rechoosing() {
    let (mut e, _, _) = engine();
    let ack = tcp("203.0.113.9:40000", "10.1.2.3:80", TcpFlags::ACK);
    let (v, out) = process(&mut e, &ack, T0);
    let Verdict::Recover { key } = v else {
        panic!("expected Recover, got {v:?}");
    };
    assert_eq!(
        (key.src_port, key.dst_port, key.dst),
        (40000, 80, ip("10.1.2.3"))
    );
    assert_eq!(
        out.len(),
        ack.len(),
        "the inner packet is handed back intact"
    );
    assert_eq!(e.counters().recover, 1);
    assert!(e.lookup_flow(&key, T0).is_none(), "nothing pinned");
    // UDP has no connection state to lose: a miss is a new flow.
    let udp = PacketSpec::udp(sock("203.0.113.9:5000"), sock("10.1.2.3:53"), 10);
    assert!(matches!(
        process(&mut e, &udp, T0).0,
        Verdict::Forward { .. }
    ));
}

#[test]
fn a_fresh_syn_on_a_closed_connection_is_placed_anew() {
    let (mut e, v4, _) = engine();
    let c = "203.0.113.9:40000";
    let _ = process(&mut e, &tcp(c, "10.1.2.3:80", TcpFlags::SYN), T0);
    let _ = process(
        &mut e,
        &tcp(c, "10.1.2.3:80", TcpFlags::FIN | TcpFlags::ACK),
        T0,
    );
    e.set_candidates(
        v4,
        vec![cand("198.51.100.1", 0.1), cand("198.51.100.2", 0.9)],
    )
    .unwrap();
    let (v, _) = process(&mut e, &tcp(c, "10.1.2.3:80", TcpFlags::SYN), T0);
    assert!(matches!(v, Verdict::Forward { next_hop, .. } if next_hop == ip("198.51.100.1")));
}

#[test]
fn ipv6_flows_use_ipv6_tunnels() {
    let (mut e, _, _) = engine();
    let syn = tcp(
        "[2001:db8:9::9]:40000",
        "[2001:db8:1::80]:443",
        TcpFlags::SYN,
    );
    let (v, out) = process(&mut e, &syn, T0);
    assert_eq!(
        v,
        Verdict::Forward {
            next_hop: ip("2001:db8:ff::1"),
            fragment: false
        }
    );
    let outer = Ipv6Packet::new_checked(&out[..]).unwrap();
    assert_eq!(outer.next_header(), ip_proto::IPV6);
    assert_eq!(outer.src_addr(), LOCAL6);
    let inner = Ipv6Packet::new_checked(outer.payload()).unwrap();
    assert_eq!(inner.hop_limit(), 63);
}

#[test]
fn unserved_and_malformed_packets_are_dropped_and_counted() {
    let (mut e, _, _) = engine();
    let (v, _) = process(
        &mut e,
        &tcp("203.0.113.9:1", "10.2.0.1:80", TcpFlags::SYN),
        T0,
    );
    assert_eq!(v, Verdict::Drop(DropReason::NotServed));
    let mut bad = packet_bytes(&tcp("203.0.113.9:1", "10.1.0.1:80", TcpFlags::SYN));
    bad[10] ^= 0xff;
    assert_eq!(
        Frame::from_bytes(&bad).run(&mut e, T0).0,
        Verdict::Drop(DropReason::BadChecksum)
    );
    for garbage in [&[][..], &[0x45, 0, 0], &[0x60; 39], &[0x10; 60]] {
        assert_eq!(
            Frame::from_bytes(garbage).run(&mut e, T0).0,
            Verdict::Drop(DropReason::Malformed)
        );
    }
    let c = e.counters();
    assert_eq!(c.dropped(DropReason::NotServed), 1);
    assert_eq!(c.dropped(DropReason::BadChecksum), 1);
    assert_eq!(c.dropped(DropReason::Malformed), 4);
    assert_eq!(c.dropped_total(), 6);
    assert_eq!(c.packets, 6);
}

#[test]
fn tunnels_to_us_are_terminated_and_forwarded_down_the_hierarchy() {
    let (mut e, _, _) = engine();
    let inner = packet_bytes(&tcp("203.0.113.9:40000", "10.1.2.3:80", TcpFlags::SYN));
    let outer = ipip4(Ipv4Addr::new(198, 18, 0, 1), LOCAL4, &inner, 0);
    let (v, out) = Frame::from_bytes(&outer).run(&mut e, T0);
    assert!(matches!(v, Verdict::Forward { next_hop, .. } if next_hop == ip("198.51.100.2")));
    // Re-encapsulated once: outer(us -> next) + inner, no leftover outer header.
    let o = Ipv4Packet::new_checked(&out[..]).unwrap();
    assert_eq!(o.src_addr(), LOCAL4);
    let i = Ipv4Packet::new_checked(o.payload()).unwrap();
    assert_eq!(i.protocol(), ip_proto::TCP);
    assert_eq!(e.counters().decapsulated, 1);

    // Inner packet addressed to us: delivered (e.g. signalling over a tunnel).
    let to_us = packet_bytes(&PacketSpec::udp(
        sock("198.18.0.1:9000"),
        SocketAddr::new(IpAddr::V4(LOCAL4), 9000),
        4,
    ));
    let (v, _) =
        Frame::from_bytes(&ipip4(Ipv4Addr::new(198, 18, 0, 1), LOCAL4, &to_us, 0)).run(&mut e, T0);
    assert_eq!(v, Verdict::Deliver);
    // Plain packet to us: delivered without decapsulation.
    assert_eq!(
        Frame::from_bytes(&to_us).run(&mut e, T0).0,
        Verdict::Deliver
    );

    // A tunnel to us inside a tunnel to us: refused (tunnel loops, amplification).
    let nested = ipip4(
        Ipv4Addr::new(198, 18, 0, 1),
        LOCAL4,
        &ipip4(Ipv4Addr::new(198, 18, 0, 1), LOCAL4, &inner, 0),
        0,
    );
    assert_eq!(
        Frame::from_bytes(&nested).run(&mut e, T0).0,
        Verdict::Drop(DropReason::NestedTunnel)
    );
    // Truncated inner header.
    let cut = ipip4(Ipv4Addr::new(198, 18, 0, 1), LOCAL4, &inner[..12], 0);
    assert!(matches!(
        Frame::from_bytes(&cut).run(&mut e, T0).0,
        Verdict::Drop(DropReason::BadTunnel | DropReason::Malformed)
    ));
}

#[test]
fn tunnels_from_sources_not_admitted_are_dropped_and_counted() {
    let (mut e, _, _) = engine();
    let mut admitted = router_core::tunnel::TunnelSources::default();
    admitted
        .allow(VirtualSubnet::new(ip("198.18.0.0"), 24).unwrap())
        .unwrap();
    e.set_tunnel_sources(Some(admitted));
    // A client wraps a spoofed inner source and tunnels it to us: dropped
    // before decapsulation, no flow placed.
    let spoofed = packet_bytes(&tcp("192.0.2.66:40000", "10.1.2.3:80", TcpFlags::SYN));
    let from_client = ipip4(Ipv4Addr::new(203, 0, 113, 9), LOCAL4, &spoofed, 0);
    assert_eq!(
        Frame::from_bytes(&from_client).run(&mut e, T0).0,
        Verdict::Drop(DropReason::TunnelSource)
    );
    assert_eq!(e.counters().dropped(DropReason::TunnelSource), 1);
    assert_eq!(e.counters().decapsulated, 0);
    assert_eq!(e.flows().len(), 0);
    // The upper level (inside the admitted prefix) is served as before.
    let from_upper = ipip4(Ipv4Addr::new(198, 18, 0, 1), LOCAL4, &spoofed, 0);
    assert!(matches!(
        Frame::from_bytes(&from_upper).run(&mut e, T0).0,
        Verdict::Forward { .. }
    ));
    // Plain packets to the VIPs are not tunnels: the check does not apply.
    let plain = packet_bytes(&tcp("203.0.113.9:40001", "10.1.2.3:80", TcpFlags::SYN));
    assert!(matches!(
        Frame::from_bytes(&plain).run(&mut e, T0).0,
        Verdict::Forward { .. }
    ));
    // Bounded.
    let mut many = router_core::tunnel::TunnelSources::default();
    for i in 0..router_core::tunnel::MAX_TUNNEL_SOURCES {
        let a = Ipv4Addr::from(0x0a00_0000 + i as u32);
        many.allow(VirtualSubnet::new(IpAddr::V4(a), 32).unwrap())
            .unwrap();
    }
    assert!(
        many.allow(VirtualSubnet::new(ip("192.0.2.1"), 32).unwrap())
            .is_err()
    );
}

#[test]
fn ecn_is_combined_on_decapsulation_per_rfc_6040() {
    let (mut e, _, _) = engine();
    let mut spec = tcp("203.0.113.9:40000", "10.1.2.3:80", TcpFlags::SYN);
    spec.ecn = 2; // ECT(0)
    let inner = packet_bytes(&spec);
    let ce = ipip4(Ipv4Addr::new(198, 18, 0, 1), LOCAL4, &inner, 3);
    let (v, out) = Frame::from_bytes(&ce).run(&mut e, T0);
    assert!(matches!(v, Verdict::Forward { .. }));
    let o = Ipv4Packet::new_checked(&out[..]).unwrap();
    let i = Ipv4Packet::new_checked(o.payload()).unwrap();
    assert_eq!(i.ecn(), 3, "congestion mark survives the tunnel");
    assert!(i.verify_checksum());

    spec.ecn = 0; // not-ECT inner under a CE outer must be dropped
    let inner = packet_bytes(&spec);
    let ce = ipip4(Ipv4Addr::new(198, 18, 0, 1), LOCAL4, &inner, 3);
    assert_eq!(
        Frame::from_bytes(&ce).run(&mut e, T0).0,
        Verdict::Drop(DropReason::EcnDrop)
    );
}

#[test]
fn expiring_ttl_answers_time_exceeded_from_our_address() {
    let (mut e, _, _) = engine();
    let mut spec = tcp("203.0.113.9:40000", "10.1.2.3:80", TcpFlags::SYN);
    spec.ttl = 1;
    let (v, out) = process(&mut e, &spec, T0);
    assert_eq!(
        v,
        Verdict::Reply {
            to: ip("203.0.113.9")
        }
    );
    let o = Ipv4Packet::new_checked(&out[..]).unwrap();
    assert_eq!(o.src_addr(), LOCAL4);
    assert_eq!(o.protocol(), ip_proto::ICMP);
    let icmp = Icmpv4Packet::new_checked(o.payload()).unwrap();
    assert_eq!(icmp.msg_type(), icmpv4_type::TIME_EXCEEDED);
    assert!(icmp.verify_checksum());
    // The quote starts with the offending header.
    let quoted = Ipv4Packet::new_checked(icmp.data()).unwrap();
    assert_eq!(quoted.dst_addr(), Ipv4Addr::new(10, 1, 2, 3));
    assert_eq!(e.counters().icmp_sent, 1);

    // Without an address of that family, nothing can be said: drop.
    let (mut quiet, _, _) = engine_with(EngineConfig {
        local_v6: Some(LOCAL6),
        ..EngineConfig::default()
    });
    assert_eq!(
        process(&mut quiet, &spec, T0).0,
        Verdict::Drop(DropReason::TtlExpired)
    );
}

#[test]
fn too_big_with_df_answers_fragmentation_needed_with_the_inner_mtu() {
    let (mut e, _, _) = engine();
    let spec = tcp("203.0.113.9:40000", "10.1.2.3:80", TcpFlags::SYN).with_payload(1500 - 40);
    assert_eq!(spec.len(), 1500);
    let (v, out) = process(&mut e, &spec, T0);
    assert_eq!(
        v,
        Verdict::Reply {
            to: ip("203.0.113.9")
        }
    );
    let o = Ipv4Packet::new_checked(&out[..]).unwrap();
    assert!(out.len() <= 576, "RFC 1812 size limit");
    let icmp = Icmpv4Packet::new_checked(o.payload()).unwrap();
    assert_eq!(
        (icmp.msg_type(), icmp.msg_code()),
        (icmpv4_type::DEST_UNREACHABLE, FRAG_NEEDED_CODE)
    );
    assert_eq!(icmp.next_hop_mtu(), 1480, "the MTU left inside the tunnel");
    assert!(icmp.verify_checksum());
    assert!(e.flows().is_empty() || e.flows().len() == 1);
}

#[test]
fn too_big_without_df_is_forwarded_for_fragmentation() {
    let (mut e, _, _) = engine();
    let mut spec = PacketSpec::udp(sock("203.0.113.9:5000"), sock("10.1.2.3:53"), 1472);
    spec.dont_frag = false;
    let (v, out) = process(&mut e, &spec, T0);
    assert_eq!(
        v,
        Verdict::Forward {
            next_hop: ip("198.51.100.2"),
            fragment: true
        }
    );
    assert_eq!(out.len(), 1520);
    let mut scratch = [0u8; 1500];
    let mut frags = Vec::new();
    let n = fragment_ipv4(&out, 1500, &mut scratch, |f| frags.push(f.to_vec())).unwrap();
    assert_eq!(n, 2);
    let mut payload = Vec::new();
    for f in &frags {
        assert!(f.len() <= 1500);
        let p = Ipv4Packet::new_checked(&f[..]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!(usize::from(p.frag_offset()), payload.len());
        payload.extend_from_slice(p.payload());
    }
    assert_eq!(
        payload,
        out[20..],
        "fragments reassemble to the inner packet"
    );
}

#[test]
fn ipv6_too_big_answers_packet_too_big() {
    let (mut e, _, _) = engine();
    let spec = tcp(
        "[2001:db8:9::9]:40000",
        "[2001:db8:1::80]:443",
        TcpFlags::SYN,
    )
    .with_payload(1440);
    assert_eq!(spec.len(), 1500);
    let (v, out) = process(&mut e, &spec, T0);
    assert_eq!(
        v,
        Verdict::Reply {
            to: ip("2001:db8:9::9")
        }
    );
    assert!(out.len() <= 1280);
    let o = Ipv6Packet::new_checked(&out[..]).unwrap();
    let icmp = Icmpv6Packet::new_checked(o.payload()).unwrap();
    assert_eq!(icmp.msg_type(), icmpv6_type::PACKET_TOO_BIG);
    assert!(icmp.verify_checksum(&o.src_addr(), &o.dst_addr()));
}

#[test]
fn icmp_errors_are_rate_limited() {
    let (mut e, _, _) = engine_with(EngineConfig {
        local_v4: Some(LOCAL4),
        icmp_per_sec: 3,
        ..EngineConfig::default()
    });
    let mut spec = tcp("203.0.113.9:40000", "10.1.2.3:80", TcpFlags::SYN);
    spec.ttl = 1;
    let verdicts: Vec<_> = (0..5).map(|_| process(&mut e, &spec, T0).0).collect();
    assert_eq!(
        verdicts
            .iter()
            .filter(|v| matches!(v, Verdict::Reply { .. }))
            .count(),
        3
    );
    assert_eq!(e.counters().dropped(DropReason::IcmpRateLimited), 2);
    // A second later the bucket has refilled.
    let later = Instant::from_secs(101);
    assert!(matches!(
        process(&mut e, &spec, later).0,
        Verdict::Reply { .. }
    ));
}

/// A policy that answers whatever it is told and counts its calls.
#[derive(Debug)]
struct Scripted {
    answer: Result<Decision, PolicyError>,
    calls: AtomicUsize,
}

impl Policy for Scripted {
    fn name(&self) -> &str {
        "scripted"
    }
    fn select(&self, req: &FlowRequest, c: &[Candidate]) -> Result<Decision, PolicyError> {
        assert!(!c.is_empty());
        assert_eq!(req.level, Level::System);
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.answer.clone()
    }
}

fn scripted(answer: Result<Decision, PolicyError>) -> Arc<Scripted> {
    Arc::new(Scripted {
        answer,
        calls: AtomicUsize::new(0),
    })
}

#[test]
fn a_subnet_policy_decides_and_its_faults_fall_back_to_least_cost() {
    let (mut e, v4, _) = engine();
    let syn = |port: u16| tcp(&format!("203.0.113.9:{port}"), "10.1.2.3:80", TcpFlags::SYN);
    let first = scripted(Ok(Decision::Select(0)));
    e.set_policy(v4, Some(first.clone())).unwrap();
    let (v, _) = process(&mut e, &syn(1), T0);
    assert!(matches!(v, Verdict::Forward { next_hop, .. } if next_hop == ip("198.51.100.1")));
    assert_eq!(first.calls.load(Ordering::Relaxed), 1);
    // Pinned: the policy is not asked again for the same flow.
    let _ = process(
        &mut e,
        &tcp("203.0.113.9:1", "10.1.2.3:80", TcpFlags::ACK),
        T0,
    );
    assert_eq!(first.calls.load(Ordering::Relaxed), 1);

    for (i, bad) in [
        Ok(Decision::Select(7)),
        Err(PolicyError::Trap("unreachable".into())),
        Err(PolicyError::Timeout),
    ]
    .into_iter()
    .enumerate()
    {
        e.set_policy(v4, Some(scripted(bad))).unwrap();
        let (v, _) = process(&mut e, &syn(100 + i as u16), T0);
        assert!(
            matches!(v, Verdict::Forward { next_hop, .. } if next_hop == ip("198.51.100.2")),
            "fault {i} falls back to the least-cost choice"
        );
    }
    assert_eq!(e.counters().policy_faults, 3);

    e.set_policy(v4, Some(scripted(Ok(Decision::Reject))))
        .unwrap();
    assert_eq!(
        process(&mut e, &syn(200), T0).0,
        Verdict::Drop(DropReason::PolicyRejected)
    );
    e.set_policy(v4, None).unwrap();
    assert!(matches!(
        process(&mut e, &syn(201), T0).0,
        Verdict::Forward { .. }
    ));
}

#[test]
fn a_policy_may_not_pick_a_down_candidate() {
    let (mut e, v4, _) = engine();
    let mut down = cand("198.51.100.1", 0.0);
    down.up = false;
    e.set_candidates(v4, vec![down, cand("198.51.100.2", 0.9)])
        .unwrap();
    e.set_policy(v4, Some(scripted(Ok(Decision::Select(0)))))
        .unwrap();
    let (v, _) = process(
        &mut e,
        &tcp("203.0.113.9:1", "10.1.2.3:80", TcpFlags::SYN),
        T0,
    );
    assert!(matches!(v, Verdict::Forward { next_hop, .. } if next_hop == ip("198.51.100.2")));
    assert_eq!(e.counters().policy_faults, 1);
    e.set_candidates(v4, vec![down]).unwrap();
    e.set_policy(v4, None).unwrap();
    assert_eq!(
        process(
            &mut e,
            &tcp("203.0.113.9:2", "10.1.2.3:80", TcpFlags::SYN),
            T0
        )
        .0,
        Verdict::Drop(DropReason::NoCandidate)
    );
}

#[test]
fn api_bounds_and_subnet_lifecycle() {
    let (mut e, v4, _) = engine();
    let too_many = vec![cand("198.51.100.1", 0.0); MAX_CANDIDATES + 1];
    assert!(matches!(
        e.set_candidates(v4, too_many),
        Err(ApiError::TooManyCandidates { .. })
    ));
    let sn: VirtualSubnet = "10.1.0.0/16".parse().unwrap();
    assert_eq!(e.add_subnet(sn).unwrap(), v4, "idempotent");
    // A pinned flow outlives the removal of its subnet (it is pinned, not routed).
    let _ = process(
        &mut e,
        &tcp("203.0.113.9:1", "10.1.2.3:80", TcpFlags::SYN),
        T0,
    );
    e.remove_subnet(&sn).unwrap();
    assert!(matches!(
        process(
            &mut e,
            &tcp("203.0.113.9:1", "10.1.2.3:80", TcpFlags::ACK),
            T0
        )
        .0,
        Verdict::Forward { .. }
    ));
    assert_eq!(
        process(
            &mut e,
            &tcp("203.0.113.9:2", "10.1.2.3:80", TcpFlags::SYN),
            T0
        )
        .0,
        Verdict::Drop(DropReason::NotServed)
    );
    assert!(matches!(
        e.set_candidates(v4, vec![]),
        Err(ApiError::UnknownSubnet { .. })
    ));
    assert!(matches!(
        e.remove_subnet(&sn),
        Err(ApiError::NoSuchSubnet { .. })
    ));
    // The id is reused.
    let again = e.add_subnet("10.9.0.0/16".parse().unwrap()).unwrap();
    assert_eq!(again, v4);
    let (mut small, _, _) = engine_with(EngineConfig {
        local_v4: Some(LOCAL4),
        max_subnets: 2,
        ..EngineConfig::default()
    });
    assert!(small.add_subnet("10.3.0.0/16".parse().unwrap()).is_err());
}

#[test]
fn a_syn_flood_fills_a_bounded_table_and_evicts_embryonic_flows_first() {
    let (mut e, _, _) = engine_with(EngineConfig {
        local_v4: Some(LOCAL4),
        flows: FlowConfig {
            capacity_v4: 256,
            capacity_v6: 8,
            ..FlowConfig::default()
        },
        ..EngineConfig::default()
    });
    // 64 established connections.
    for p in 0..64u16 {
        let c = format!("203.0.113.1:{}", 1000 + p);
        let _ = process(&mut e, &tcp(&c, "10.1.2.3:80", TcpFlags::SYN), T0);
        let _ = process(&mut e, &tcp(&c, "10.1.2.3:80", TcpFlags::ACK), T0);
    }
    // Then a flood of SYNs from spoofed sources.
    let later = Instant::from_secs(101);
    for i in 0..5000u32 {
        let src = Ipv4Addr::from(0x0a00_0000 | i.wrapping_mul(2_654_435_761) >> 8);
        let spec = PacketSpec::tcp(
            SocketAddr::new(IpAddr::V4(src), 1024 + (i % 60000) as u16),
            sock("10.1.2.3:80"),
            TcpFlags::SYN,
        );
        assert!(matches!(
            process(&mut e, &spec, later).0,
            Verdict::Forward { .. }
        ));
    }
    assert!(e.flows().len() <= e.flows().capacity().0);
    assert!(e.counters().flows_evicted > 4000);
    let survivors = (0..64u16)
        .filter(|p| {
            let c = format!("203.0.113.1:{}", 1000 + p);
            matches!(
                process(&mut e, &tcp(&c, "10.1.2.3:80", TcpFlags::ACK), later).0,
                Verdict::Forward { .. }
            )
        })
        .count();
    assert_eq!(survivors, 64, "established connections survive a SYN flood");
}

#[test]
fn flow_export_import_moves_a_connection_to_another_router() {
    let (mut a, _, _) = engine();
    let (mut b, _, _) = engine();
    let _ = process(
        &mut a,
        &tcp("203.0.113.9:1", "10.1.2.3:80", TcpFlags::SYN),
        T0,
    );
    let key = router_core::classify::classify(&packet_bytes(&tcp(
        "203.0.113.9:1",
        "10.1.2.3:80",
        TcpFlags::SYN,
    )))
    .unwrap()
    .key;
    let entry = a.lookup_flow(&key, T0).unwrap();
    let ack = tcp("203.0.113.9:1", "10.1.2.3:80", TcpFlags::ACK);
    assert!(matches!(
        process(&mut b, &ack, T0).0,
        Verdict::Recover { .. }
    ));
    b.install_flow(&entry, T0).unwrap();
    assert_eq!(
        process(&mut b, &ack, T0).0,
        Verdict::Forward {
            next_hop: entry.next_hop,
            fragment: false
        }
    );
}

#[test]
fn echo_requests_are_flows_keyed_by_identifier() {
    let (mut e, _, _) = engine();
    let mut spec = PacketSpec::udp(sock("203.0.113.9:0"), sock("10.1.2.3:0"), 8);
    spec.transport = Transport::EchoRequest { ident: 99 };
    assert!(matches!(
        process(&mut e, &spec, T0).0,
        Verdict::Forward { .. }
    ));
    assert_eq!(e.flows().len(), 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Arbitrary bytes never panic the engine, and every packet gets exactly one
    /// counted verdict.
    #[test]
    fn any_bytes_get_one_counted_verdict(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let (mut e, _, _) = engine();
        let (v, _) = Frame::from_bytes(&bytes).run(&mut e, T0);
        let c = e.counters();
        prop_assert_eq!(c.packets, 1);
        let counted = c.forwarded_new + c.forwarded_pinned + c.delivered + c.recover
            + c.icmp_sent + c.dropped_total();
        prop_assert_eq!(counted, 1, "verdict {:?} counted once", v);
    }

    /// Mutations of valid packets (including tunnels to us) never panic.
    #[test]
    fn mutated_packets_never_panic(
        flips in proptest::collection::vec((0usize..200, any::<u8>()), 1..8),
        tunnel in any::<bool>(),
        v6 in any::<bool>(),
    ) {
        let (mut e, _, _) = engine();
        let spec = if v6 {
            tcp("[2001:db8:9::9]:40000", "[2001:db8:1::80]:443", TcpFlags::SYN).with_payload(30)
        } else {
            tcp("203.0.113.9:40000", "10.1.2.3:80", TcpFlags::SYN).with_payload(30)
        };
        let mut bytes = packet_bytes(&spec);
        if tunnel {
            bytes = ipip4(Ipv4Addr::new(198, 18, 0, 1), LOCAL4, &bytes, 0);
        }
        for (at, x) in flips {
            let n = bytes.len();
            bytes[at % n] ^= x;
        }
        let _ = Frame::from_bytes(&bytes).run(&mut e, T0);
        prop_assert_eq!(e.counters().packets, 1);
    }
}

/// An echo reply from `client` to `vip` carrying a flow advertisement (the MAC is
/// arbitrary: the engine never verifies it, the control plane does).
fn advert_reply(client: &str, vip: &str) -> Vec<u8> {
    use router_core::wire::flowad::{AdvertFields, build_echo_request};
    let fields = AdvertFields {
        key: router_core::FlowKey {
            proto: ip_proto::TCP,
            src: ip(client),
            src_port: 40_000,
            dst: ip(vip),
            dst_port: 80,
        },
        server: sock("198.51.100.9:80"),
        key_id: 1,
        timestamp_ms: 1,
        nonce: 2,
    };
    let mut buf = [0u8; 256];
    let n = build_echo_request(&mut buf, &fields, 7, 1, |_| [0xab; 32]).unwrap();
    let mut r = buf[..n].to_vec();
    // The client's kernel answers: swap addresses, request -> reply.
    let (s, d) = (r[12..16].to_vec(), r[16..20].to_vec());
    r[12..16].copy_from_slice(&d);
    r[16..20].copy_from_slice(&s);
    r[20] = icmpv4_type::ECHO_REPLY;
    Ipv4Packet::new_unchecked(&mut r[..]).fill_checksum();
    Icmpv4Packet::new_unchecked(&mut r[20..]).fill_checksum();
    r
}

#[test]
fn echo_reply_with_advertisement_goes_to_the_control_plane_unpinned() {
    let (mut e, _, _) = engine();
    let reply = advert_reply("203.0.113.9", "10.1.2.3");
    let mut f = Frame::from_bytes(&reply);
    let (v, out) = f.run(&mut e, T0);
    assert_eq!(v, Verdict::Advert);
    assert_eq!(out.len(), reply.len(), "the inner reply is handed back");
    assert_eq!(out[8], reply[8] - 1, "TTL already decremented");
    let c = e.counters();
    assert_eq!((c.adverts, c.forwarded_new, c.forwarded_pinned), (1, 0, 0));
    assert_eq!(e.flows().len(), 0, "the echo reply itself is never pinned");

    // To an unserved address: not ours to act on.
    let mut f = Frame::from_bytes(&advert_reply("203.0.113.9", "10.9.2.3"));
    assert_eq!(f.run(&mut e, T0).0, Verdict::Drop(DropReason::NotServed));

    // Claims to be an advertisement, but the version byte is wrong.
    let mut bad = reply.clone();
    bad[20 + 8 + 64 + 4] = 9;
    Icmpv4Packet::new_unchecked(&mut bad[20..]).fill_checksum();
    let mut f = Frame::from_bytes(&bad);
    assert_eq!(f.run(&mut e, T0).0, Verdict::Drop(DropReason::BadAdvert));
    assert_eq!(e.counters().dropped(DropReason::BadAdvert), 1);

    // An ordinary ping reply is an ordinary ICMP flow.
    let mut plain = reply.clone();
    plain[20 + 8 + 64] = b'x';
    Icmpv4Packet::new_unchecked(&mut plain[20..]).fill_checksum();
    let mut f = Frame::from_bytes(&plain);
    assert!(matches!(f.run(&mut e, T0).0, Verdict::Forward { .. }));
    assert_eq!(e.counters().adverts, 1);
}

#[test]
fn encapsulate_to_tunnels_a_recovered_packet_to_an_explicit_next_hop() {
    let (mut e, _, _) = engine();
    let ack = tcp("203.0.113.9:40000", "10.1.2.3:80", TcpFlags::ACK);
    let mut f = Frame::new(&ack);
    let mut p = PacketBuf::new(&mut f.buf, HEADROOM, f.len).unwrap();
    assert!(matches!(e.process(&mut p, T0), Verdict::Recover { .. }));
    let slr = ip("198.51.100.77");
    let v = e.encapsulate_to(&mut p, slr, T0);
    assert_eq!(
        v,
        Verdict::Forward {
            next_hop: slr,
            fragment: false
        }
    );
    let outer = Ipv4Packet::new_checked(p.data()).unwrap();
    assert_eq!(outer.protocol(), ip_proto::IPV4);
    assert_eq!(IpAddr::V4(outer.dst_addr()), slr);
    assert_eq!(IpAddr::V4(outer.src_addr()), IpAddr::V4(LOCAL4));
    assert_eq!(p.len(), ack.len() + 20);
    assert_eq!(e.flows().len(), 0, "nothing pinned by an explicit tunnel");
    // No local address of the next hop's family: a counted drop.
    let (mut e4, _, _) = engine_with(EngineConfig {
        local_v4: Some(LOCAL4),
        local_v6: None,
        ..EngineConfig::default()
    });
    let mut f = Frame::new(&ack);
    let mut p = PacketBuf::new(&mut f.buf, HEADROOM, f.len).unwrap();
    let _ = e4.process(&mut p, T0);
    let v = e4.encapsulate_to(&mut p, ip("2001:db8::9"), T0);
    assert_eq!(v, Verdict::Drop(DropReason::NoLocalAddress));
    assert_eq!(e4.counters().dropped(DropReason::NoLocalAddress), 1);
}
