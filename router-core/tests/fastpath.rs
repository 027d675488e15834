//! Namespace tests of the kernel fast path (router-core/bpf/, loaded with
//! aya): the router program encapsulates pinned flows (IPv4 and IPv6, in
//! either outer family) and re-addresses tunnels to it from admitted sources;
//! what it does not own goes on with a counter per reason; the host program
//! decapsulates to the local stack. Needs root; prints a skip otherwise (and
//! fails when CI=true).
#![cfg(all(target_os = "linux", feature = "linux"))]
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failure is a test failure"
)]

mod lab;

use lab::{CLIENT, HOST, Lab, ROUTER_ENDPOINT, VIP, VIP_NET, ip, root_or_skip};
use router_core::linux::fastpath::{
    FastPathCounter, FastPathCounters, HostFastPath, HostFastPathConfig, RouterFastPath,
    RouterFastPathConfig,
};
use router_core::linux::{Clock, in_netns, sysctl};
use router_core::tunnel::TunnelSources;
use router_core::wire::{Ipv4Packet, Ipv6Packet, ip_proto};
use router_core::{FlowKey, VirtualSubnet};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

const CLIENT6: &str = "fd00:18:1::1";
const ROUTER6_CLIENT_SIDE: &str = "fd00:18:1::2";
const ROUTER6_ENDPOINT: &str = "fd00:18::1";
const HOST6: &str = "fd00:18:2::2";
const VIP6: &str = "2001:db8:19::10";

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

/// The lab with IPv6 beside IPv4 and forwarding on in the router (the FIB
/// lookup of the program needs it, as kernel forwarding does).
fn lab(tag: &str) -> Lab {
    let lab = Lab::new(tag);
    let (c, r, h) = (&lab.client[..], &lab.router[..], &lab.host[..]);
    for (ns, dev, addr) in [
        (c, "cr", "fd00:18:1::1/64"),
        (r, "rc", "fd00:18:1::2/64"),
        (r, "rh", "fd00:18:2::1/64"),
        (h, "hr", "fd00:18:2::2/64"),
        (r, "lo", "fd00:18::1/128"),
    ] {
        ip(&["-n", ns, "addr", "add", addr, "dev", dev, "nodad"]);
    }
    ip(&[
        "-n",
        c,
        "route",
        "add",
        "2001:db8:19::/64",
        "via",
        ROUTER6_CLIENT_SIDE,
    ]);
    ip(&[
        "-n",
        c,
        "route",
        "add",
        "fd00:18::1/128",
        "via",
        ROUTER6_CLIENT_SIDE,
    ]);
    in_netns(r, || sysctl::enable_forwarding(true).unwrap()).unwrap();
    lab
}

fn config(sources: Option<TunnelSources>) -> RouterFastPathConfig {
    RouterFastPathConfig {
        links: vec!["rc".into()],
        local_v4: Some(ROUTER_ENDPOINT),
        local_v6: Some(v6(ROUTER6_ENDPOINT)),
        tunnel_ttl: 64,
        tunnel_mtu: lab::TUNNEL_LINK_MTU as u16,
        tunnel_sources: sources,
        capacity_v4: 1024,
        capacity_v6: 256,
    }
}

fn start_router(lab: &Lab, sources: Option<TunnelSources>) -> RouterFastPath {
    in_netns(&lab.router, || RouterFastPath::start(&config(sources)))
        .unwrap()
        .expect("the router program loads and attaches")
        .0
}

fn udp_key(src: IpAddr, sport: u16, dst: IpAddr) -> FlowKey {
    FlowKey {
        proto: ip_proto::UDP,
        src,
        src_port: sport,
        dst,
        dst_port: 80,
    }
}

/// A raw socket in the host namespace receiving IP-in-IP of `family`/`proto`.
fn tunnel_listener(lab: &Lab, family: Domain, proto: u8) -> Socket {
    in_netns(&lab.host, || {
        let s = Socket::new(family, Type::RAW, Some(Protocol::from(i32::from(proto)))).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        s
    })
    .unwrap()
}

/// Send with `send` until `rx` receives what `want` accepts (the first
/// packets may wait on neighbour discovery: IPv6 link-local addresses are
/// tentative for a while after a link comes up).
fn exchange(
    rx: &Socket,
    mut send: impl FnMut(),
    mut want: impl FnMut(&[u8]) -> bool,
) -> Option<Vec<u8>> {
    for _ in 0..10 {
        send();
        if let Some(b) = receive(rx, &mut want) {
            return Some(b);
        }
    }
    None
}

/// Receive until `want` says yes or 300 ms pass.
fn receive(s: &Socket, mut want: impl FnMut(&[u8]) -> bool) -> Option<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_millis(300);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = (&*s).read(&mut buf)
            && want(&buf[..n])
        {
            return Some(buf[..n].to_vec());
        }
    }
    None
}

/// Send one UDP datagram from the client namespace.
fn send_udp(lab: &Lab, from: SocketAddr, to: SocketAddr, payload: &[u8]) {
    in_netns(&lab.client, || {
        let s = UdpSocket::bind(from).unwrap();
        s.send_to(payload, to).unwrap();
    })
    .unwrap();
}

/// Send raw IPv4 packets (header included) from the client namespace.
fn send_raw4(lab: &Lab, packets: &[Vec<u8>]) {
    in_netns(&lab.client, || {
        let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(255))).unwrap();
        for p in packets {
            let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
            s.send_to(p, &SockAddr::from(SocketAddr::new(IpAddr::V4(dst), 0)))
                .unwrap();
        }
    })
    .unwrap();
}

/// An IPv4 header (no options unless `ihl` > 5) around `payload`.
fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, ttl: u8, frag: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    let len = (20 + payload.len()) as u16;
    p[2..4].copy_from_slice(&len.to_be_bytes());
    p[6..8].copy_from_slice(&frag.to_be_bytes());
    p[8] = ttl;
    p[9] = proto;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let mut sum = 0u32;
    for w in p.chunks(2) {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p.extend_from_slice(payload);
    p
}

fn udp(sport: u16, dport: u16, body: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + body.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(body);
    u
}

fn counters_until(
    fp: &RouterFastPath,
    what: &str,
    mut ok: impl FnMut(&FastPathCounters) -> bool,
) -> FastPathCounters {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let c = fp.reader().counters();
        if ok(&c) {
            return c;
        }
        assert!(Instant::now() < deadline, "{what}: counters {c:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn pinned_flows_are_tunnelled_in_the_kernel_in_both_families() {
    if !root_or_skip("pinned_flows_are_tunnelled_in_the_kernel_in_both_families") {
        return;
    }
    let lab = lab("fp-encap");
    let mut fp = start_router(&lab, None);
    let clock = Clock::new();
    let key4 = udp_key(IpAddr::V4(CLIENT), 5000, IpAddr::V4(VIP));
    let key6 = udp_key(CLIENT6.parse().unwrap(), 5006, VIP6.parse().unwrap());
    // An IPv4 flow pinned to an IPv6 next hop: 4-in-6.
    let key46 = udp_key(IpAddr::V4(CLIENT), 5046, IpAddr::V4(VIP));
    assert!(fp.pin(&key4, IpAddr::V4(HOST)).unwrap());
    assert!(fp.pin(&key6, HOST6.parse().unwrap()).unwrap());
    assert!(fp.pin(&key46, HOST6.parse().unwrap()).unwrap());
    assert!(fp.contains(&key4) && fp.contains(&key6));
    assert_eq!(fp.activity(&key4, &clock).unwrap().last_seen, None);

    // IPv4 in IPv4.
    let rx44 = tunnel_listener(&lab, Domain::IPV4, ip_proto::IPV4);
    let got = exchange(
        &rx44,
        || {
            send_udp(
                &lab,
                "198.18.1.1:5000".parse().unwrap(),
                SocketAddr::new(IpAddr::V4(VIP), 80),
                b"v4",
            )
        },
        |b| b.len() > 40 && b[9] == ip_proto::IPV4,
    )
    .expect("4-in-4 at the host");
    let outer = Ipv4Packet::new_checked(&got[..]).unwrap();
    assert_eq!(
        (outer.src_addr(), outer.dst_addr()),
        (ROUTER_ENDPOINT, HOST)
    );
    assert!(outer.verify_checksum(), "outer checksum");
    assert_eq!(outer.ttl(), 64);
    let inner = Ipv4Packet::new_checked(outer.payload()).unwrap();
    assert_eq!((inner.src_addr(), inner.dst_addr()), (CLIENT, VIP));
    assert_eq!(
        inner.ttl(),
        63,
        "the inner TTL is decremented as the engine does"
    );
    assert!(
        inner.verify_checksum(),
        "inner checksum after the TTL change"
    );

    // IPv6 in IPv6.
    let rx66 = tunnel_listener(&lab, Domain::IPV6, ip_proto::IPV6);
    // An IPv6 raw socket hands over the payload: the inner packet.
    let got = exchange(
        &rx66,
        || {
            send_udp(
                &lab,
                SocketAddr::new(CLIENT6.parse().unwrap(), 5006),
                SocketAddr::new(VIP6.parse().unwrap(), 80),
                b"v6",
            )
        },
        |b| b.len() >= 40 && b[0] >> 4 == 6,
    )
    .expect("6-in-6 at the host");
    let inner = Ipv6Packet::new_checked(&got[..]).unwrap();
    assert_eq!(inner.dst_addr(), v6(VIP6));
    assert_eq!(inner.hop_limit(), 63);

    // IPv4 in IPv6 (the outer family differs from the packet's).
    let rx46 = tunnel_listener(&lab, Domain::IPV6, ip_proto::IPV4);
    let got = exchange(
        &rx46,
        || {
            send_udp(
                &lab,
                "198.18.1.1:5046".parse().unwrap(),
                SocketAddr::new(IpAddr::V4(VIP), 80),
                b"46",
            )
        },
        |b| b.len() >= 20 && b[0] >> 4 == 4,
    )
    .expect("4-in-6 at the host");
    let inner = Ipv4Packet::new_checked(&got[..]).unwrap();
    assert_eq!((inner.src_addr(), inner.dst_addr()), (CLIENT, VIP));

    let c = counters_until(&fp, "three encapsulations", |c| {
        c.get(FastPathCounter::FwdEncap) >= 3
    });
    assert_eq!(c.get(FastPathCounter::DropError), 0);
    assert!(fp.packets(&key4).is_some_and(|n| n >= 1));
    let act = fp.activity(&key4, &clock).unwrap();
    assert!(
        act.last_seen.is_some(),
        "the program records the last packet"
    );

    // Unpinned: the next packet of the flow goes on to the stack (a miss).
    assert!(fp.unpin(&key4).unwrap());
    assert!(!fp.unpin(&key4).unwrap());
    send_udp(
        &lab,
        "198.18.1.1:5000".parse().unwrap(),
        SocketAddr::new(IpAddr::V4(VIP), 80),
        b"v4",
    );
    counters_until(&fp, "a miss after the unpin", |c| {
        c.get(FastPathCounter::PassMiss) >= 1
    });
    assert_eq!(
        fp.reader().counters().get(FastPathCounter::FwdEncap),
        c.get(FastPathCounter::FwdEncap)
    );
}

#[test]
fn tunnels_from_admitted_sources_are_readdressed_and_the_rest_passes() {
    if !root_or_skip("tunnels_from_admitted_sources_are_readdressed_and_the_rest_passes") {
        return;
    }
    let lab = lab("fp-retunnel");
    let mut admitted = TunnelSources::default();
    admitted
        .allow(VirtualSubnet::new(IpAddr::V4(CLIENT), 32).unwrap())
        .unwrap();
    let mut fp = start_router(&lab, Some(admitted));
    let key = udp_key(IpAddr::V4(CLIENT), 7000, IpAddr::V4(VIP));
    fp.pin(&key, IpAddr::V4(HOST)).unwrap();
    let rx = tunnel_listener(&lab, Domain::IPV4, ip_proto::IPV4);

    let inner = ipv4(
        CLIENT,
        VIP,
        ip_proto::UDP,
        30,
        0x4000,
        &udp(7000, 80, b"tunnelled"),
    );
    let tunnel = |src: Ipv4Addr| ipv4(src, ROUTER_ENDPOINT, ip_proto::IPV4, 64, 0x4000, &inner);
    let got = exchange(
        &rx,
        || send_raw4(&lab, &[tunnel(CLIENT)]),
        |b| b.len() > 40 && b[9] == ip_proto::IPV4,
    )
    .expect("re-addressed tunnel");
    let outer = Ipv4Packet::new_checked(&got[..]).unwrap();
    assert_eq!(
        (outer.src_addr(), outer.dst_addr()),
        (ROUTER_ENDPOINT, HOST)
    );
    assert!(outer.verify_checksum());
    let i = Ipv4Packet::new_checked(outer.payload()).unwrap();
    assert_eq!(i.ttl(), 29);
    assert!(i.verify_checksum());
    let retunnelled = counters_until(&fp, "a re-addressed tunnel", |c| {
        c.get(FastPathCounter::FwdRetunnel) >= 1
    })
    .get(FastPathCounter::FwdRetunnel);

    // What the program does not own goes on, each with its reason.
    let spoofed = Ipv4Addr::new(198, 18, 1, 77);
    let frag = ipv4(
        CLIENT,
        VIP,
        ip_proto::UDP,
        30,
        0x2000,
        &udp(7000, 80, b"first fragment"),
    );
    let mut options = ipv4(CLIENT, VIP, ip_proto::UDP, 30, 0, &udp(7000, 80, b"x"));
    options[0] = 0x46; // ihl 6: an option word (the bytes that follow)
    let icmp = ipv4(
        CLIENT,
        VIP,
        ip_proto::ICMP,
        30,
        0,
        &[8, 0, 0, 0, 0, 0, 0, 0],
    );
    let mut truncated = ipv4(CLIENT, VIP, ip_proto::UDP, 30, 0, &udp(7000, 80, b"short"));
    truncated[2..4].copy_from_slice(&1400u16.to_be_bytes());
    let ttl1 = ipv4(
        CLIENT,
        VIP,
        ip_proto::UDP,
        1,
        0x4000,
        &udp(7000, 80, b"ttl"),
    );
    send_raw4(&lab, &[tunnel(spoofed), frag, options, icmp, ttl1]);
    // A truncated header the kernel's raw socket would refuse to send as is:
    // wrap it so its outer header is fine and the inner one lies.
    send_raw4(&lab, &[tunnel_with(&truncated)]);
    let c = counters_until(&fp, "every pass reason", |c| {
        c.get(FastPathCounter::PassTunnelSource) >= 1
            && c.get(FastPathCounter::PassFragment) >= 1
            && c.get(FastPathCounter::PassOptions) >= 1
            && c.get(FastPathCounter::PassProto) >= 1
            && c.get(FastPathCounter::PassTtl) >= 1
            && c.get(FastPathCounter::PassMalformed) >= 1
    });
    assert_eq!(
        c.get(FastPathCounter::FwdRetunnel),
        retunnelled,
        "nothing else forwarded"
    );
    assert_eq!(c.get(FastPathCounter::DropError), 0);
}

fn tunnel_with(inner: &[u8]) -> Vec<u8> {
    ipv4(CLIENT, ROUTER_ENDPOINT, ip_proto::IPV4, 64, 0x4000, inner)
}

#[test]
fn the_host_program_decapsulates_to_the_local_stack() {
    if !root_or_skip("the_host_program_decapsulates_to_the_local_stack") {
        return;
    }
    let lab = lab("fp-host");
    let mut fp = start_router(&lab, None);
    let h = &lab.host[..];
    ip(&[
        "-n",
        h,
        "route",
        "add",
        "local",
        "198.19.0.0/24",
        "dev",
        "lo",
    ]);
    ip(&[
        "-n",
        h,
        "route",
        "add",
        "local",
        "2001:db8:19::/64",
        "dev",
        "lo",
    ]);
    // Replies (none here) would go back over hc; accept the client's source.
    in_netns(h, || {
        for dev in ["all", "default", "hr"] {
            sysctl::write(&format!("net/ipv4/conf/{dev}/rp_filter"), "0").unwrap();
        }
        // IPv6 sockets bind to an address of a `local` route only so.
        sysctl::write("net/ipv6/ip_nonlocal_bind", "1").unwrap();
    })
    .unwrap();
    let subnets = vec![
        VirtualSubnet::new(IpAddr::V4(VIP_NET), 24).unwrap(),
        VirtualSubnet::new("2001:db8:19::".parse().unwrap(), 64).unwrap(),
    ];
    let (host, links) = in_netns(h, || {
        HostFastPath::start(&HostFastPathConfig {
            links: vec!["hr".into()],
            subnets,
        })
    })
    .unwrap()
    .expect("the host program loads and attaches");
    assert_eq!(links, vec!["hr".to_owned()]);
    let (s4, s6) = in_netns(h, || {
        let s4 = UdpSocket::bind((VIP, 80)).unwrap();
        let s6 = UdpSocket::bind((v6(VIP6), 80)).unwrap();
        for s in [&s4, &s6] {
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
        }
        (s4, s6)
    })
    .unwrap();
    let key4 = udp_key(IpAddr::V4(CLIENT), 5100, IpAddr::V4(VIP));
    let key6 = udp_key(CLIENT6.parse().unwrap(), 5106, VIP6.parse().unwrap());
    fp.pin(&key4, IpAddr::V4(HOST)).unwrap();
    fp.pin(&key6, HOST6.parse().unwrap()).unwrap();
    // The first datagrams may wait on neighbour discovery (IPv6 link-local
    // addresses are still tentative right after the links come up): resend.
    let mut buf = [0u8; 64];
    let mut exchange = |from: SocketAddr, to: SocketAddr, s: &UdpSocket, body: &[u8]| {
        for _ in 0..20 {
            send_udp(&lab, from, to, body);
            if let Ok((n, src)) = s.recv_from(&mut buf) {
                assert_eq!((&buf[..n], src), (body, from));
                return;
            }
        }
        panic!(
            "{to} never got the datagram; host {:?} router {:?}",
            host.reader().counters(),
            fp.reader().counters()
        );
    };
    exchange(
        "198.18.1.1:5100".parse().unwrap(),
        SocketAddr::new(IpAddr::V4(VIP), 80),
        &s4,
        b"hello v4",
    );
    exchange(
        SocketAddr::new(CLIENT6.parse().unwrap(), 5106),
        SocketAddr::new(VIP6.parse().unwrap(), 80),
        &s6,
        b"hello v6",
    );
    let (c, r) = (host.reader().counters(), fp.reader().counters());
    assert!(c.get(FastPathCounter::HostDecap) >= 2, "{c:?}");
    assert!(r.get(FastPathCounter::FwdEncap) >= 2, "{r:?}");
    assert_eq!(
        c.get(FastPathCounter::DropError) + r.get(FastPathCounter::DropError),
        0
    );
}
