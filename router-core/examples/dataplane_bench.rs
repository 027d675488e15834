//! Dataplane bench (needs root): the userspace router vs plain Linux kernel
//! forwarding in the same namespaces, measured in one run and reported as ratios.
//!
//! 1. UDP packets/s client -> VIP (one pinned flow), counted at the host's socket.
//! 2. TCP connections/s (connect, one request, reply, close) client -> VIP.
//! 3. Ingress choice: packets/s a reader pulls from a TUN (route into the TUN,
//!    one read per packet) vs an AF_PACKET socket (blackhole route, recvmmsg).
//!
//! Run: `scripts/bench-dataplane.sh [SECONDS]`.
#![allow(
    clippy::unwrap_used,
    reason = "bench setup: a failure is a bug in the bench itself"
)]
#![allow(missing_docs, reason = "example binary")]

#[cfg(all(target_os = "linux", feature = "linux"))]
#[path = "../tests/lab/mod.rs"]
mod lab;

#[cfg(all(target_os = "linux", feature = "linux"))]
fn main() {
    bench::main();
}

#[cfg(not(all(target_os = "linux", feature = "linux")))]
fn main() {
    eprintln!("the dataplane bench needs Linux and the `linux` feature");
}

#[cfg(all(target_os = "linux", feature = "linux"))]
mod bench {
    use super::lab::{self, HOST, Lab, ROUTER_ENDPOINT, VIP, VIP_NET};
    use nix::sys::socket::{
        AddressFamily, LinkAddr, MsgFlags, MultiHeaders, SockFlag, SockProtocol, SockType,
        recvmmsg, socket,
    };
    use router_core::linux::raw::{RxMeta, Slots};
    use router_core::linux::tun::TunDevice;
    use router_core::linux::{
        Dataplane, DataplaneConfig, HostConfig, HostTunnelEndpoint, Netlink, TunnelPath, in_netns,
    };
    use router_core::{Candidate, EngineConfig, RouterApi, VirtualSubnet};
    use std::io::{IoSliceMut, Read, Write};
    use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
    use std::os::fd::AsRawFd;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    const UDP_PORT: u16 = 9000;
    const TCP_PORT: u16 = 8080;

    fn subnet() -> VirtualSubnet {
        VirtualSubnet::new(IpAddr::V4(VIP_NET), 24).unwrap()
    }

    /// Flood UDP from the client for `secs`; returns packets sent.
    fn udp_flood(lab: &Lab, secs: f64) -> u64 {
        in_netns(&lab.client, || {
            let s = UdpSocket::bind(("0.0.0.0", 0)).unwrap();
            s.connect((VIP, UDP_PORT)).unwrap();
            let payload = [0x5au8; 64];
            let end = Instant::now() + Duration::from_secs_f64(secs);
            let mut n = 0u64;
            while Instant::now() < end {
                for _ in 0..64 {
                    if s.send(&payload).is_ok() {
                        n += 1;
                    }
                }
            }
            n
        })
        .unwrap()
    }

    /// TCP connections completed from the client in `secs`.
    fn tcp_connects(lab: &Lab, secs: f64) -> u64 {
        in_netns(&lab.client, || {
            let end = Instant::now() + Duration::from_secs_f64(secs);
            let mut n = 0u64;
            while Instant::now() < end {
                let Ok(mut s) = TcpStream::connect_timeout(
                    &SocketAddr::from((VIP, TCP_PORT)),
                    Duration::from_secs(1),
                ) else {
                    continue;
                };
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                let mut buf = [0u8; 64];
                if s.write_all(b"GET\n").is_ok() && s.read(&mut buf).is_ok_and(|k| k > 0) {
                    n += 1;
                }
            }
            n
        })
        .unwrap()
    }

    /// Measure UDP pps (received at the host), UDP pps the router put on the
    /// wire toward the host, UDP pps offered, and TCP conn/s.
    fn measure(lab: &Lab, received: &AtomicU64, secs: f64) -> [f64; 4] {
        let before = received.load(Ordering::Relaxed);
        let wire_before = lab.link_stat(&lab.router, "rh", "tx_packets");
        let sent = udp_flood(lab, secs);
        std::thread::sleep(Duration::from_millis(300));
        let got = received.load(Ordering::Relaxed) - before;
        let wire = lab.link_stat(&lab.router, "rh", "tx_packets") - wire_before;
        let conns = tcp_connects(lab, secs);
        [got, wire, sent, conns].map(|x| x as f64 / secs)
    }

    /// Packets/s a single reader pulls from a TUN vs from AF_PACKET, while the
    /// client floods.
    fn ingress_choice(lab: &Lab, secs: f64) -> (f64, f64) {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        // TUN: route the VIPs into a fresh TUN, one read(2) per packet.
        let tun = in_netns(&lab.router, || {
            let t = TunDevice::create("rxtun0").unwrap();
            let nl = Netlink::open().unwrap();
            let i = nl.link_index("rxtun0").unwrap();
            router_core::linux::sysctl::disable_ipv6("rxtun0").unwrap();
            nl.set_up(i).unwrap();
            nl.route_to_link(subnet(), i).unwrap();
            t
        })
        .unwrap();
        let (s2, c2) = (Arc::clone(&stop), Arc::clone(&count));
        let reader = std::thread::spawn(move || {
            let mut tun = tun;
            let mut slots = Slots::new(32, 2048);
            let mut meta = [RxMeta::default(); 32];
            while !s2.load(Ordering::Relaxed) {
                let n = tun
                    .recv_batch(&mut slots, &mut meta)
                    .map_or(0, |r| r.packets);
                c2.fetch_add(n as u64, Ordering::Relaxed);
            }
        });
        let sent = udp_flood(lab, secs);
        stop.store(true, Ordering::Relaxed);
        reader.join().unwrap();
        let tun_pps = count.load(Ordering::Relaxed) as f64 / secs;
        eprintln!("  tun ingress: sent {sent}");

        // AF_PACKET: the kernel drops the VIPs (blackhole), the socket taps them.
        lab::ip(&[
            "-n",
            &lab.router,
            "route",
            "replace",
            "blackhole",
            "198.19.0.0/24",
        ]);
        let sock = in_netns(&lab.router, || {
            socket(
                AddressFamily::Packet,
                SockType::Datagram,
                SockFlag::SOCK_NONBLOCK,
                SockProtocol::EthIp,
            )
            .unwrap()
        })
        .unwrap();
        stop.store(false, Ordering::Relaxed);
        count.store(0, Ordering::Relaxed);
        let (s2, c2) = (Arc::clone(&stop), Arc::clone(&count));
        let reader = std::thread::spawn(move || {
            let mut hdrs = MultiHeaders::<LinkAddr>::preallocate(32, None);
            let mut bufs = vec![[0u8; 2048]; 32];
            while !s2.load(Ordering::Relaxed) {
                let mut iov: Vec<[IoSliceMut<'_>; 1]> =
                    bufs.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
                let n = recvmmsg(
                    sock.as_raw_fd(),
                    &mut hdrs,
                    iov.iter_mut(),
                    MsgFlags::MSG_DONTWAIT,
                    None,
                )
                .map(|r| r.count())
                .unwrap_or(0);
                c2.fetch_add(n as u64, Ordering::Relaxed);
            }
        });
        let sent = udp_flood(lab, secs);
        stop.store(true, Ordering::Relaxed);
        reader.join().unwrap();
        eprintln!("  af_packet ingress: sent {sent}");
        let pkt_pps = count.load(Ordering::Relaxed) as f64 / secs;
        (tun_pps, pkt_pps)
    }

    fn print_figures(k: [f64; 4], u: [f64; 4]) {
        let [k_pps, k_wire, k_sent, k_cps] = k;
        let [u_pps, u_wire, u_sent, u_cps] = u;
        println!();
        println!("figure                          kernel     userspace   ratio (user/kernel)");
        println!(
            "UDP delivered pkt/s (64 B)  {k_pps:>10.0}  {u_pps:>12.0}   {:.2}",
            u_pps / k_pps
        );
        println!(
            "UDP forwarded pkt/s (wire)  {k_wire:>10.0}  {u_wire:>12.0}   {:.2}",
            u_wire / k_wire
        );
        println!(
            "UDP offered pkt/s           {k_sent:>10.0}  {u_sent:>12.0}   {:.2}",
            u_sent / k_sent
        );
        println!(
            "TCP connections/s           {k_cps:>10.0}  {u_cps:>12.0}   {:.2}",
            u_cps / k_cps
        );
    }

    fn print_ingress(tun_pps: f64, pkt_pps: f64) {
        println!();
        println!("ingress, one reader            TUN        AF_PACKET   ratio (packet/tun)");
        println!(
            "pkt/s pulled                {tun_pps:>10.0}  {pkt_pps:>12.0}   {:.2}",
            pkt_pps / tun_pps
        );
    }

    fn print_counters(
        c: &router_core::engine::EngineCounters,
        s: &router_core::linux::ShellStats,
        hs: &router_core::linux::HostStats,
    ) {
        println!();
        println!(
            "router: engine packets {} (new flows {}, pinned {}), drops {}; shell rx_tun {}, tx {}, tx_failed {}, batches {}, polls {}",
            c.packets,
            c.forwarded_new,
            c.forwarded_pinned,
            c.dropped_total(),
            s.rx_tun,
            s.tx_packets,
            s.tx_failed,
            s.batches,
            s.polls
        );
        println!(
            "host: tunnel packets {} injected {} dropped {}",
            hs.rx,
            hs.injected,
            hs.dropped()
        );
    }

    pub(super) fn main() {
        if !lab::root_or_skip("dataplane_bench") {
            return;
        }
        let secs: f64 = std::env::args()
            .nth(1)
            .and_then(|a| a.parse().ok())
            .unwrap_or(3.0);
        let lab = Lab::new("bench");
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));

        // Host: tunnel endpoint, UDP sink and TCP server on the VIP.
        let (ep, udp, tcp) = in_netns(&lab.host, || {
            let ep = HostTunnelEndpoint::new(HostConfig {
                subnets: vec![subnet()],
                ..HostConfig::default()
            })
            .unwrap();
            let udp = UdpSocket::bind((VIP, UDP_PORT)).unwrap();
            let tcp = TcpListener::bind((VIP, TCP_PORT)).unwrap();
            (ep, udp, tcp)
        })
        .unwrap();
        let host = ep.handle();
        let host_t = ep.spawn().unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let (st, rc) = (Arc::clone(&stop), Arc::clone(&received));
        let sink = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !st.load(Ordering::Relaxed) {
                if udp.recv(&mut buf).is_ok() {
                    rc.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        tcp.set_nonblocking(true).unwrap();
        let st = Arc::clone(&stop);
        let server = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let mut b = [0u8; 64];
                        let _ = s.read(&mut b);
                        let _ = s.write_all(b"hello\n");
                    }
                    Err(_) => std::thread::sleep(Duration::from_micros(50)),
                }
            }
        });

        // Baseline: the router namespace's kernel forwards the VIPs to the host.
        lab.kernel_forwarding();
        println!("measuring kernel forwarding ({secs} s per figure)...");
        let [k_pps, k_wire, k_sent, k_cps] = measure(&lab, &received, secs);

        // Userspace: the Dataplane with the VIPs routed into its TUN.
        let dp = in_netns(&lab.router, || {
            Dataplane::new(DataplaneConfig {
                engine: EngineConfig {
                    local_v4: Some(ROUTER_ENDPOINT),
                    tunnel_mtu: lab::TUNNEL_LINK_MTU as usize,
                    ..EngineConfig::default()
                },
                tunnel_path: TunnelPath::Auto,
                ..DataplaneConfig::default()
            })
            .unwrap()
        })
        .unwrap();
        let path = dp.tunnel_path();
        let h = dp.handle();
        let dp_t = dp.spawn().unwrap();
        let id = h.serve(subnet()).unwrap();
        h.call(move |e, _| {
            e.set_candidates(
                id,
                vec![Candidate {
                    addr: IpAddr::V4(HOST),
                    load: 0.0,
                    route_cost: 1.0,
                    up: true,
                }],
            )
        })
        .unwrap()
        .unwrap();
        println!("measuring the userspace router (tunnel path: {path})...");
        let [u_pps, u_wire, u_sent, u_cps] = measure(&lab, &received, secs);
        let c = h.counters().unwrap();
        let s = h.stats();
        let hs = host.stats();
        h.stop().unwrap();
        let _ = dp_t.join();
        h.unserve(subnet()).ok();

        println!("measuring ingress: TUN read vs AF_PACKET recvmmsg...");
        let (tun_pps, pkt_pps) = ingress_choice(&lab, secs);

        stop.store(true, Ordering::Relaxed);
        host.stop();
        let _ = host_t.join();
        let _ = sink.join();
        let _ = server.join();

        print_figures(
            [k_pps, k_wire, k_sent, k_cps],
            [u_pps, u_wire, u_sent, u_cps],
        );
        print_ingress(tun_pps, pkt_pps);
        print_counters(&c, &s, &hs);
    }
}
