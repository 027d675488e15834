//! Namespace tests of the Linux shells: a real TCP client reaches a VIP through the
//! userspace router, the host terminates the IP-in-IP tunnel in userspace, and its
//! own TCP stack answers straight back from the VIP. Needs root; prints a skip
//! otherwise (and fails when CI=true).
#![cfg(all(target_os = "linux", feature = "linux"))]
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failure is a test failure"
)]

mod lab;

use lab::{CLIENT, HOST, Lab, ROUTER_ENDPOINT, VIP, VIP_NET};
use router_core::linux::{
    Dataplane, DataplaneConfig, DataplaneHandle, DataplaneNode, HostConfig, HostStats,
    HostTunnelEndpoint, HostTunnelHandle, TunnelPath, in_netns,
};
use router_core::synth::PacketSpec;
use router_core::wire::{Ipv4Packet, Ipv4Repr, TcpFlags, ip_proto};
use router_core::{
    Candidate, DropReason, Engine, EngineConfig, EngineCounters, FlowKey, HEADROOM, PacketBuf,
    RouterApi, Verdict, VirtualSubnet,
};
use socket2::{Domain, Protocol, Socket, Type};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const PORT: u16 = 8080;
/// The sink: reads until EOF, answers with the byte count and a checksum.
const SINK_PORT: u16 = 8081;
const REPLY: &[u8] = b"hello from host-1\n";

fn vip_subnet() -> VirtualSubnet {
    VirtualSubnet::new(IpAddr::V4(VIP_NET), 24).unwrap()
}

/// Router, host endpoint and TCP server running in the lab; stopped on drop.
struct Running {
    lab: Lab,
    router: DataplaneHandle,
    router_thread: Option<JoinHandle<Result<(), router_core::linux::DataplaneError>>>,
    host: HostTunnelHandle,
    host_thread: Option<JoinHandle<Result<(), router_core::linux::HostError>>>,
    server_stop: Arc<AtomicBool>,
    server_thread: Option<JoinHandle<()>>,
    new_flows: std::sync::mpsc::Receiver<router_core::linux::NewFlow>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.router.stop();
        self.host.stop();
        self.server_stop.store(true, Ordering::Relaxed);
        for t in [self.router_thread.take()].into_iter().flatten() {
            let _ = t.join();
        }
        for t in [self.host_thread.take()].into_iter().flatten() {
            let _ = t.join();
        }
        if let Some(t) = self.server_thread.take() {
            let _ = t.join();
        }
    }
}

fn start(tag: &str) -> Running {
    start_with(tag, 1)
}

/// As [`start`], the router with `engine_threads` threads (TUN queues).
fn start_with(tag: &str, engine_threads: usize) -> Running {
    start_node(tag, engine_threads, |dp, _| dp)
}

/// [`start_with`], the dataplane's node replaced by `node` (given the
/// engine's configuration) before it starts.
fn start_node(
    tag: &str,
    engine_threads: usize,
    node: impl FnOnce(Dataplane, &EngineConfig) -> Dataplane + Send,
) -> Running {
    let lab = Lab::new(tag);
    let (mut dp, router) = in_netns(&lab.router, || {
        let cfg = DataplaneConfig {
            engine: EngineConfig {
                local_v4: Some(ROUTER_ENDPOINT),
                tunnel_mtu: lab::TUNNEL_LINK_MTU as usize,
                ..EngineConfig::default()
            },
            tunnel_path: TunnelPath::Auto,
            new_flow_queue: 256,
            engine_threads,
            ..DataplaneConfig::default()
        };
        let dp = Dataplane::new(cfg.clone()).expect("dataplane");
        let dp = node(dp, &cfg.engine);
        let h = dp.handle();
        (dp, h)
    })
    .unwrap();
    let _punts = dp.take_punts();
    let new_flows = dp.take_new_flows().expect("new-flow notices on");
    let router_thread = dp.spawn().unwrap();
    let id = router.serve(vip_subnet()).unwrap();
    router
        .call(move |e, _| {
            e.set_candidates(
                id,
                vec![Candidate {
                    addr: IpAddr::V4(HOST),
                    load: 0.1,
                    route_cost: 1.0,
                    up: true,
                }],
            )
        })
        .unwrap()
        .unwrap();

    let (ep, listener) = in_netns(&lab.host, || {
        let ep = HostTunnelEndpoint::new(HostConfig {
            subnets: vec![vip_subnet()],
            ..HostConfig::default()
        })
        .expect("host endpoint");
        // Bound to the VIP itself: accepted because the subnet is local.
        let l = TcpListener::bind((VIP, PORT)).expect("bind VIP");
        let sink = TcpListener::bind((VIP, SINK_PORT)).expect("bind VIP sink");
        (ep, (l, sink))
    })
    .unwrap();
    let (listener, sink) = listener;
    std::thread::spawn(move || {
        // One upload at a time; ends with the test process.
        for s in sink.incoming() {
            let Ok(mut s) = s else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let mut buf = vec![0u8; 1 << 16];
            let (mut n, mut sum) = (0u64, 0u64);
            while let Ok(k) = s.read(&mut buf) {
                if k == 0 {
                    break;
                }
                sum = buf[..k]
                    .iter()
                    .fold(sum, |a, &b| a.wrapping_mul(31).wrapping_add(u64::from(b)));
                n += k as u64;
            }
            let _ = s.write_all(format!("{n} {sum}\n").as_bytes());
        }
    });
    let host = ep.handle();
    let host_thread = ep.spawn().unwrap();
    let server_stop = Arc::new(AtomicBool::new(false));
    let stop = Arc::clone(&server_stop);
    listener.set_nonblocking(true).unwrap();
    let server_thread = std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut req = [0u8; 64];
                    let _ = s.read(&mut req);
                    let _ = s.write_all(REPLY);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    });
    Running {
        lab,
        router,
        router_thread: Some(router_thread),
        host,
        host_thread: Some(host_thread),
        server_stop,
        server_thread: Some(server_thread),
        new_flows,
    }
}

/// One request from the client namespace; returns the reply and the peer address.
fn fetch(lab: &Lab) -> std::io::Result<(Vec<u8>, SocketAddr)> {
    in_netns(&lab.client, || {
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::from((VIP, PORT)), Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /\n")?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)?;
        Ok((buf, s.peer_addr()?))
    })
    .unwrap()
}

/// Counters of router and host once they have not moved for 300 ms.
fn settle(run: &Running) -> (EngineCounters, router_core::linux::ShellStats, HostStats) {
    let read = || {
        (
            run.router.counters().unwrap(),
            run.router.stats(),
            run.host.stats(),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = read();
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = read();
        // polls and batches move while idle; compare what packets move.
        let key = |x: &(EngineCounters, router_core::linux::ShellStats, HostStats)| {
            (x.0, x.1.rx_tun, x.1.rx_tunnel, x.1.tx_packets, x.2)
        };
        if key(&now) == key(&last) || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn tcp_through_userspace_router_with_direct_server_return() {
    if !lab::root_or_skip("tcp_through_userspace_router_with_direct_server_return") {
        return;
    }
    let run = start("dsr");
    let lab = &run.lab;
    let rc_tx_before = lab.link_stat(&lab.router, "rc", "tx_packets");
    let ch_rx_before = lab.link_stat(&lab.client, "ch", "rx_packets");
    const N: u64 = 20;
    for i in 0..N {
        let (body, peer) = fetch(lab).unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(body, REPLY);
        assert_eq!(peer, SocketAddr::from((VIP, PORT)));
    }
    // The last ACKs and FINs may still be in flight: read once everything is still.
    let (c, s, h) = settle(&run);
    // Every connection was placed once; later segments followed the pinned flow.
    assert_eq!(c.forwarded_new, N, "{c:?}");
    assert!(c.forwarded_pinned >= 2 * N, "{c:?}");
    assert_eq!(c.dropped_total(), 0, "{c:?}");
    assert_eq!(s.tx_packets, c.forwarded_new + c.forwarded_pinned, "{s:?}");
    // One new-flow notice per connection, naming the client's flow and the host.
    let notices: Vec<_> = run.new_flows.try_iter().collect();
    assert_eq!(notices.len() as u64, N, "{s:?}");
    assert_eq!(s.new_flows, N);
    assert_eq!(s.new_flow_dropped, 0);
    for n in &notices {
        assert_eq!(n.next_hop, IpAddr::V4(HOST));
        assert_eq!(
            (n.key.proto, n.key.src, n.key.dst),
            (6, IpAddr::V4(CLIENT), IpAddr::V4(VIP))
        );
        assert_eq!(n.key.dst_port, PORT);
    }
    assert_eq!(s.tx_failed, 0);
    // The host terminated every tunnel packet in userspace and injected the inner.
    assert_eq!(h.injected, s.tx_packets, "{h:?}");
    assert_eq!(h.dropped(), 0, "{h:?}");
    assert_eq!(h.rx, s.tx_packets);
    // Replies came back over the direct link, not through the router: at least a
    // SYN-ACK, the data and a FIN per connection on ch, and (almost) nothing
    // from the router toward the client (a few neighbour messages at most).
    let ch_rx = lab.link_stat(&lab.client, "ch", "rx_packets") - ch_rx_before;
    let rc_tx = lab.link_stat(&lab.router, "rc", "tx_packets") - rc_tx_before;
    assert!(ch_rx >= 3 * N, "direct-path packets {ch_rx}");
    assert!(rc_tx < 5, "router sent {rc_tx} packets toward the client");
}

/// Two engine threads, each reading a queue of the TUN, share one node: every
/// connection is placed once (one flow table) whichever thread read its
/// packets, and the kernel's spread of flows over the queues gave both work.
#[test]
fn two_engine_threads_share_one_flow_table() {
    if !lab::root_or_skip("two_engine_threads_share_one_flow_table") {
        return;
    }
    let run = start_with("mq", 2);
    let lab = &run.lab;
    const N: u64 = 64;
    for i in 0..N {
        let (body, peer) = fetch(lab).unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(body, REPLY);
        assert_eq!(peer, SocketAddr::from((VIP, PORT)));
    }
    let (c, s, h) = settle(&run);
    assert_eq!(c.forwarded_new, N, "{c:?}");
    assert!(c.forwarded_pinned >= 2 * N, "{c:?}");
    assert_eq!(c.dropped_total(), 0, "{c:?}");
    assert_eq!(s.new_flows, N, "{s:?}");
    assert_eq!(s.tx_failed, 0, "{s:?}");
    assert_eq!(h.injected, s.tx_packets, "{h:?}");
    // The kernel hashes each flow to a queue: 64 flows all on one of two
    // queues would be a 1 in 2^63 event.
    assert!(
        s.worker_batches > 0,
        "the second thread read nothing: {s:?}"
    );
    assert!(
        s.worker_batches < s.batches,
        "the first thread read nothing: {s:?}"
    );
}

/// With two engine threads each IPv4 tunnel packet to the router reaches
/// exactly one of them (a socket filter splits the raw sockets by flow): no
/// flow is placed twice, none is lost, and both threads read some.
#[test]
fn tunnels_to_the_router_are_split_between_engine_threads() {
    if !lab::root_or_skip("tunnels_to_the_router_are_split_between_engine_threads") {
        return;
    }
    let run = start_with("mqraw", 2);
    let (c0, s0, _) = settle(&run);
    const N: u16 = 200;
    let packets: Vec<Vec<u8>> = (0..N)
        .map(|i| ipv4(ROUTER_ENDPOINT, ip_proto::IPV4, &syn_to(VIP, 20_000 + i)))
        .collect();
    send_raw(&run.lab, &packets);
    let (c, s, _) = settle(&run);
    assert_eq!(s.rx_tunnel - s0.rx_tunnel, u64::from(N), "{s:?}");
    assert_eq!(c.forwarded_new - c0.forwarded_new, u64::from(N), "{c:?}");
    assert_eq!(c.dropped_total(), c0.dropped_total(), "{c:?}");
    assert!(
        s.worker_batches > s0.worker_batches,
        "the second thread read none: {s:?}"
    );
    assert!(
        s.batches - s0.batches > s.worker_batches - s0.worker_batches,
        "the first thread read none: {s:?}"
    );
}

/// A node whose first packet handled by a second engine thread sets a
/// deadline 2 ms ahead, and which records how late its timer then ran.
struct DeadlineNode {
    engine: Engine,
    due: Option<router_core::Instant>,
    lags: Arc<std::sync::Mutex<Vec<Duration>>>,
}

impl DataplaneNode for DeadlineNode {
    fn handle_packet(&mut self, now: router_core::Instant, pkt: &mut PacketBuf<'_>) -> Verdict {
        let on_worker = std::thread::current()
            .name()
            .is_some_and(|n| n.starts_with("pronto-engine-"));
        if on_worker && self.due.is_none() {
            self.due = Some(now + Duration::from_millis(2));
        }
        self.engine.process(pkt, now)
    }
    fn take_new_flow(&mut self) -> Option<FlowKey> {
        self.engine.take_new_flow()
    }
    fn handle_timeout(&mut self, now: router_core::Instant) {
        if let Some(due) = self.due.filter(|d| now >= *d) {
            self.lags.lock().unwrap().push(now.saturating_since(due));
            self.due = None;
        }
    }
    fn poll_timeout(&self) -> Option<router_core::Instant> {
        self.due
    }
    fn engine(&self) -> &Engine {
        &self.engine
    }
    fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// Only the first engine thread runs the node's timers. A deadline that a
/// batch on another thread brings forward (a mirror delta for the spare, say)
/// must wake it, not wait for the end of the sleep it began before (up to
/// its 100 ms tick).
#[test]
fn a_deadline_set_on_a_second_engine_thread_wakes_the_first() {
    if !lab::root_or_skip("a_deadline_set_on_a_second_engine_thread_wakes_the_first") {
        return;
    }
    let lags = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&lags);
    let run = start_node("mqdue", 2, move |dp, ec| {
        dp.with_node(DeadlineNode {
            engine: Engine::new(ec.clone()),
            due: None,
            lags: seen,
        })
    });
    settle(&run);
    // One tunnelled SYN at a time, each to the thread its flow hashes to;
    // the first thread is asleep in between (nothing else is due).
    for i in 0..40u16 {
        send_raw(
            &run.lab,
            &[ipv4(
                ROUTER_ENDPOINT,
                ip_proto::IPV4,
                &syn_to(VIP, 30_000 + i),
            )],
        );
        std::thread::sleep(Duration::from_millis(130));
        if lags.lock().unwrap().len() >= 9 {
            break;
        }
    }
    let lags = lags.lock().unwrap().clone();
    assert!(
        lags.len() >= 5,
        "too few SYNs reached the second thread: {lags:?}"
    );
    // Woken, the timer runs within a scheduling delay (under 1 ms here);
    // left asleep until its own tick or another wake, about half the timers
    // ran 20-100 ms late. One late run is allowed for a loaded machine.
    let late = lags
        .iter()
        .filter(|l| **l > Duration::from_millis(20))
        .count();
    assert!(late <= 1, "timers ran late: {lags:?}");
}

/// A bulk upload through the router: the TUN hands over TCP super-packets, the
/// router reads each once and cuts it into segments (software GSO), the host
/// coalesces the segments back into few TUN writes (software GRO); the bytes
/// arrive whole and in order.
#[test]
fn bulk_upload_crosses_the_tun_as_super_packets() {
    if !lab::root_or_skip("bulk_upload_crosses_the_tun_as_super_packets") {
        return;
    }
    let run = start("gso");
    let (_, before, host_before) = settle(&run);
    let host_tun = HostConfig::default().tun_name;
    let writes_before = run.lab.link_stat(&run.lab.host, &host_tun, "rx_packets");
    const BYTES: usize = 8 << 20;
    let data: Vec<u8> = (0..BYTES).map(|i| (i * 7 + i / 4099) as u8).collect();
    let want = data
        .iter()
        .fold(0u64, |a, &b| a.wrapping_mul(31).wrapping_add(u64::from(b)));
    let answer = in_netns(&run.lab.client, || {
        let mut s = TcpStream::connect_timeout(
            &SocketAddr::from((VIP, SINK_PORT)),
            Duration::from_secs(5),
        )?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        s.write_all(&data)?;
        s.shutdown(std::net::Shutdown::Write)?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)?;
        Ok::<_, std::io::Error>(buf)
    })
    .unwrap()
    .unwrap();
    assert_eq!(
        answer.trim(),
        format!("{BYTES} {want}"),
        "the sink's count and sum"
    );
    let (c, s, h) = settle(&run);
    assert_eq!(c.dropped_total(), 0, "{c:?}");
    assert_eq!(s.rx_errors, 0, "{s:?}");
    assert_eq!(h.dropped(), 0, "{h:?}");
    let segments = s.rx_tun - before.rx_tun;
    let reads = s.tun_reads - before.tun_reads;
    let injected = h.injected - host_before.injected;
    let writes = run.lab.link_stat(&run.lab.host, &host_tun, "rx_packets") - writes_before;
    let supers = h.tun_coalesced - host_before.tun_coalesced;
    // 8 MiB is at least ~5,700 full segments.
    assert!(segments > 5_000, "{segments} segments");
    // Offloads on (the default): most reads carried several segments and most
    // writes several packets. Without them reads == segments, writes == packets.
    assert!(
        reads * 4 < segments,
        "{reads} TUN reads for {segments} segments"
    );
    assert!(
        writes * 2 < injected,
        "{writes} TUN writes for {injected} packets"
    );
    assert!(
        supers > 0 && supers <= writes,
        "{supers} super-packets, {writes} writes"
    );
}

/// Send raw IPv4 packets (header included) from the client namespace.
fn send_raw(lab: &Lab, packets: &[Vec<u8>]) {
    in_netns(&lab.client, || {
        let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(255))).unwrap();
        s.set_header_included_v4(true).unwrap();
        for p in packets {
            let dst = Ipv4Packet::new_checked(&p[..]).unwrap().dst_addr();
            s.send_to(p, &SocketAddrV4::new(dst, 0).into()).unwrap();
        }
    })
    .unwrap();
}

/// `inner` wrapped in an IPv4 header of protocol `proto` from the client to `dst`.
fn ipv4(dst: Ipv4Addr, proto: u8, inner: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; Ipv4Repr::HEADER_LEN + inner.len()];
    Ipv4Repr {
        src: CLIENT,
        dst,
        protocol: proto,
        payload_len: inner.len(),
        ttl: 64,
        dscp: 0,
        ecn: 0,
        dont_frag: true,
        ident: 0,
    }
    .emit(&mut Ipv4Packet::new_unchecked(&mut out[..]));
    out[Ipv4Repr::HEADER_LEN..].copy_from_slice(inner);
    out
}

fn syn_to(dst: Ipv4Addr, sport: u16) -> Vec<u8> {
    let spec = PacketSpec::tcp(
        SocketAddr::from((CLIENT, sport)),
        SocketAddr::from((dst, PORT)),
        TcpFlags::SYN,
    );
    let mut buf = vec![0u8; HEADROOM + 128];
    let n = spec.write(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn bad_input_is_dropped_and_counted_while_traffic_flows() {
    if !lab::root_or_skip("bad_input_is_dropped_and_counted_while_traffic_flows") {
        return;
    }
    let run = start("bad");
    let lab = &run.lab;
    assert_eq!(fetch(lab).unwrap().0, REPLY);
    let before = run.router.counters().unwrap();

    let ipip = ip_proto::IPV4;
    // Nested: a tunnel to the router carrying a tunnel to the router.
    let nested = ipv4(
        ROUTER_ENDPOINT,
        ipip,
        &ipv4(ROUTER_ENDPOINT, ipip, &syn_to(VIP, 1)),
    );
    // Truncated: an IP-in-IP packet whose inner packet is 10 bytes of garbage.
    let truncated = ipv4(ROUTER_ENDPOINT, ipip, &[0x45, 0, 0, 40, 1, 2, 3, 4, 5, 6]);
    // Unserved: a well-formed tunnelled SYN to an address no subnet covers.
    let unserved = ipv4(
        ROUTER_ENDPOINT,
        ipip,
        &syn_to(Ipv4Addr::new(198, 18, 200, 9), 2),
    );
    // Malformed transport: a SYN to the VIP cut inside its TCP header, straight
    // through the TUN path (the kernel forwards it without reading TCP).
    let mut cut = syn_to(VIP, 3);
    cut.truncate(Ipv4Repr::HEADER_LEN + 8);
    let short_tcp = ipv4(VIP, ip_proto::TCP, &cut[Ipv4Repr::HEADER_LEN..]);
    let garbage_ipip = ipv4(ROUTER_ENDPOINT, ipip, &[0xff; 64]);
    const K: usize = 5;
    let mut burst = Vec::new();
    for _ in 0..K {
        burst.extend([
            nested.clone(),
            truncated.clone(),
            unserved.clone(),
            short_tcp.clone(),
            garbage_ipip.clone(),
        ]);
    }
    send_raw(lab, &burst);

    let d = |c: &EngineCounters, r: DropReason| c.dropped(r) - before.dropped(r);
    let after = wait_for("drops counted", || {
        let c = run.router.counters().ok()?;
        (c.dropped_total() - before.dropped_total() >= (5 * K) as u64).then_some(c)
    });
    // Nothing more arrives late.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(run.router.counters().unwrap().drops, after.drops);
    assert_eq!(d(&after, DropReason::NestedTunnel), K as u64, "{after:?}");
    assert_eq!(d(&after, DropReason::NotServed), K as u64, "{after:?}");
    // Garbage inner packets fail termination; the cut TCP header fails the
    // classifier.
    assert_eq!(d(&after, DropReason::BadTunnel), 2 * K as u64, "{after:?}");
    assert_eq!(d(&after, DropReason::Malformed), K as u64, "{after:?}");
    assert_eq!(after.dropped_total() - before.dropped_total(), 5 * K as u64);
    assert_eq!(
        after.forwarded_new, before.forwarded_new,
        "nothing bad forwarded"
    );

    // Legitimate traffic still flows.
    for _ in 0..5 {
        assert_eq!(fetch(lab).unwrap().0, REPLY);
    }
    let end = run.router.counters().unwrap();
    assert_eq!(end.forwarded_new, after.forwarded_new + 5);
    assert_eq!(end.dropped_total(), after.dropped_total());
}

#[test]
fn netlink_local_route_makes_a_whole_subnet_local() {
    if !lab::root_or_skip("netlink_local_route_makes_a_whole_subnet_local") {
        return;
    }
    let lab = Lab::new("nl");
    let subnet = vip_subnet();
    in_netns(&lab.host, || {
        let nl = router_core::linux::Netlink::open().unwrap();
        nl.add_local_route(subnet).unwrap();
        // Idempotent (replace).
        nl.add_local_route(subnet).unwrap();
        // Any address of the subnet can now be bound.
        TcpListener::bind((Ipv4Addr::new(198, 19, 0, 77), 0)).unwrap();
        nl.remove_local_route(subnet).unwrap();
        let e = TcpListener::bind((Ipv4Addr::new(198, 19, 0, 77), 0)).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrNotAvailable);
        let missing = nl.link_index("no-such-link0").unwrap_err();
        assert!(
            matches!(missing, router_core::linux::NetlinkError::NoSuchLink { .. }),
            "{missing:?}"
        );
        // This kernel has no ipip module; the probe must say so and clean up.
        let has = nl.kernel_has_ipip();
        let probe_left = nl.link_index("pronto-probe0").is_ok();
        assert!(!probe_left);
        eprintln!("kernel ipip: {has}");
    })
    .unwrap();
    let routes = lab::exec(&lab.host, &["ip", "route", "show", "table", "local"]);
    assert!(!routes.contains("198.19.0.0/24"), "{routes}");
}

#[test]
fn router_engine_api_is_reachable_through_the_handle() {
    if !lab::root_or_skip("router_engine_api_is_reachable_through_the_handle") {
        return;
    }
    let lab = Lab::new("api");
    let dp = in_netns(&lab.router, || {
        Dataplane::new(DataplaneConfig {
            engine: EngineConfig {
                local_v4: Some(ROUTER_ENDPOINT),
                ..EngineConfig::default()
            },
            tunnel_path: TunnelPath::Userspace,
            ..DataplaneConfig::default()
        })
        .unwrap()
    })
    .unwrap();
    assert_eq!(dp.tunnel_path(), "userspace-raw");
    let h = dp.handle();
    let t = dp.spawn().unwrap();
    let id = h.serve(vip_subnet()).unwrap();
    let routes = lab::exec(&lab.router, &["ip", "route", "show"]);
    assert!(routes.contains("198.19.0.0/24 dev pronto0"), "{routes}");
    assert_eq!(
        h.call(move |e, _| e.subnet(id).copied()).unwrap(),
        Some(vip_subnet())
    );
    h.unserve(vip_subnet()).unwrap();
    let routes = lab::exec(&lab.router, &["ip", "route", "show"]);
    assert!(!routes.contains("198.19.0.0/24"), "{routes}");
    h.stop().unwrap();
    t.join().unwrap().unwrap();
    assert!(matches!(
        h.counters(),
        Err(router_core::linux::DataplaneError::Stopped)
    ));
    // Configuration errors name the field.
    let e = Dataplane::new(DataplaneConfig {
        batch: 0,
        ..DataplaneConfig::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("batch"), "{e}");
}
