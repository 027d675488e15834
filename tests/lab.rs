//! Namespace lab tests of the daemons (`pronto lab up`: a client, a system SLR, two
//! site SLRs, four hosts with HTTP servers; see src/lab.rs for the picture).
//!
//! This file belongs to the root package (`cargo test -p pronto --test lab`), so
//! cargo builds the `pronto` binary it drives; it only lives in the directory of
//! the pronto-tests crate because that is the root package's `tests/` directory.
//!
//! Needs root: prints SKIP otherwise, and fails when CI=true. Needs `curl` (the
//! real client) and `ip`. Labs run one at a time; every wait polls with a
//! deadline.
#![cfg(target_os = "linux")]
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failure is a test failure"
)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use router_core::linux::in_netns;
use router_core::synth::PacketSpec;
use router_core::wire::{Ipv4Packet, Ipv4Repr, TcpFlags, ip_proto};
use socket2::{Domain, Protocol, Socket, Type};

mod support;
use support::{Lab, int, pronto, root_or_skip, value, wait_for};

const VIP: Ipv4Addr = Ipv4Addr::new(192, 200, 0, 10);
const CLIENT: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 2);
const SYS_ENDPOINT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const HOSTS: [&str; 4] = ["a1", "a2", "b1", "b2"];
const SITES: [&str; 2] = ["site-a", "site-b"];

/// This suite's lab: the default topology.
fn lab_up(args: &[&str]) -> Lab {
    Lab::up("t", args, "warn")
}

impl Lab {
    /// Snapshots of every daemon once their packet counters have not moved for
    /// 300 ms (the last ACKs and FINs may still be in flight after curl returns).
    fn settled(&self) -> BTreeMap<String, toml::Table> {
        let nodes: Vec<&str> = ["sys"]
            .iter()
            .chain(&SITES)
            .chain(&HOSTS)
            .copied()
            .collect();
        let read = || -> BTreeMap<String, toml::Table> {
            nodes
                .iter()
                .map(|n| ((*n).to_owned(), self.stats(n)))
                .collect()
        };
        // Routers count packets through the engine and the kernel fast path,
        // hosts tunnel packets (userspace and kernel) and requests.
        let key = |m: &BTreeMap<String, toml::Table>| -> Vec<i64> {
            m.iter()
                .map(|(n, t)| {
                    if HOSTS.contains(&n.as_str()) {
                        int(t, &["tunnel", "rx"])
                            + int(t, &["http_requests"])
                            + int(t, &["fast_path", "forwarded"])
                    } else {
                        routed(t)
                    }
                })
                .collect()
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut last = read();
        loop {
            // Snapshots are rewritten every 100 ms.
            std::thread::sleep(Duration::from_millis(300));
            let now = read();
            if key(&now) == key(&last) {
                return now;
            }
            assert!(Instant::now() < deadline, "counters never settled");
            last = now;
        }
    }

    fn link_stat(&self, node: &str, dev: &str, stat: &str) -> i64 {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns(node), "cat"])
            .arg(format!("/sys/class/net/{dev}/statistics/{stat}"))
            .output()
            .expect("run ip netns exec");
        assert!(out.status.success(), "{node} {dev} {stat}");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("counter")
    }

    fn set_load(&self, host: &str, load: f64) {
        std::fs::write(self.dir.join("load").join(host), format!("{load}\n")).expect("load file");
    }
}

/// Packets a router forwarded or handled: through its engine, and through the
/// kernel fast path (which the engine never sees).
fn routed(t: &toml::Table) -> i64 {
    int(t, &["engine", "packets"]) + int(t, &["fast_path", "forwarded"])
}

fn delta(
    after: &BTreeMap<String, toml::Table>,
    before: &BTreeMap<String, toml::Table>,
    node: &str,
    path: &[&str],
) -> i64 {
    int(&after[node], path) - int(&before[node], path)
}

/// The loads a router currently offers for the VIP subnet, by next hop.
fn candidate_loads(t: &toml::Table) -> BTreeMap<String, f64> {
    t.get("subnets")
        .and_then(toml::Value::as_array)
        .into_iter()
        .flatten()
        .filter(|s| s.get("subnet").and_then(toml::Value::as_str) == Some("192.200.0.0/24"))
        .flat_map(|s| {
            s.get("candidates")
                .and_then(toml::Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .filter(|c| c.get("up").and_then(toml::Value::as_bool) == Some(true))
        .filter_map(|c| {
            Some((
                c.get("address")?.as_str()?.to_owned(),
                c.get("load")?.as_float()?,
            ))
        })
        .collect()
}

/// `n` requests from one real curl in the client namespace (URL globbing: one
/// new connection each, as the server closes). Returns the body of each answer,
/// or `ERROR <code>`.
fn curl(lab: &Lab, n: usize) -> Vec<String> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns("client"),
            "curl",
            "--silent",
            "--show-error",
        ])
        .args([
            "--max-time",
            "5",
            "--write-out",
            "|%{http_code}|%{remote_ip}\n",
        ])
        .arg(format!("http://{VIP}/[1-{n}]"))
        .output()
        .expect("run curl (install curl: .ci/run does)");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut answers = Vec::new();
    let mut body = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix('|') {
            let mut f = rest.split('|');
            let (code, ip) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
            if code == "200" && ip == VIP.to_string() {
                answers.push(std::mem::take(&mut body));
            } else {
                answers.push(format!("ERROR {code} from {ip}"));
                body.clear();
            }
        } else {
            body = line.trim().to_owned();
        }
    }
    assert_eq!(
        answers.len(),
        n,
        "curl gave {} answers for {n} requests: {}",
        answers.len(),
        String::from_utf8_lossy(&out.stderr)
    );
    answers
}

fn count_by_host(answers: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for a in answers {
        *m.entry(a.trim_end_matches(".lab").to_owned()).or_insert(0) += 1;
    }
    m
}

/// Captures, in the client namespace, the source of every TCP segment from port
/// 80 that reaches the client (a raw IPPROTO_TCP socket sees a copy of each).
struct Capture {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<BTreeMap<Ipv4Addr, u64>>>,
}

impl Capture {
    fn start(lab: &Lab) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ns, flag) = (lab.ns("client"), Arc::clone(&stop));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            in_netns(&ns, || {
                let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::TCP)).unwrap();
                let _ = s.set_recv_buffer_size(4 << 20);
                s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                ready_tx.send(()).unwrap();
                let mut seen = BTreeMap::new();
                let mut buf = [0u8; 2048];
                let mut idle_after_stop = 0;
                while idle_after_stop < 5 {
                    match (&s).read(&mut buf) {
                        Ok(n) => {
                            let bytes = &buf[..n];
                            if let Ok(p) = Ipv4Packet::new_checked(bytes) {
                                let hl = p.header_len();
                                if bytes.len() >= hl + 2
                                    && u16::from_be_bytes([bytes[hl], bytes[hl + 1]]) == 80
                                {
                                    *seen.entry(p.src_addr()).or_insert(0) += 1;
                                }
                            }
                        }
                        Err(_) if flag.load(Ordering::Relaxed) => idle_after_stop += 1,
                        Err(_) => {}
                    }
                }
                seen
            })
            .unwrap()
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("capture socket");
        Self {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> BTreeMap<Ipv4Addr, u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// Frames by kind: `arp`, `ipv6 icmpv6 <type>` (neighbour discovery),
/// `ipv6 next header 0` (hop-by-hop: MLD reports), `ipv4 proto <p>`, ...
type FrameKinds = BTreeMap<String, u64>;

/// Captures, in `node`'s namespace, every frame on `dev` in both directions:
/// those from the MAC address `from` (the far end of a veth) and the others.
struct FrameCapture {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(FrameKinds, FrameKinds)>>,
}

impl FrameCapture {
    fn start(lab: &Lab, node: &str, dev: &str, from: [u8; 6]) -> Self {
        const ETH_P_ALL: u16 = 0x0003;
        let stop = Arc::new(AtomicBool::new(false));
        let (ns, flag, dev) = (lab.ns(node), Arc::clone(&stop), dev.to_owned());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            in_netns(&ns, || {
                let s = Socket::new(
                    Domain::PACKET,
                    Type::RAW,
                    Some(Protocol::from(i32::from(ETH_P_ALL.to_be()))),
                )
                .unwrap();
                s.bind_device(Some(dev.as_bytes())).unwrap();
                let _ = s.set_recv_buffer_size(4 << 20);
                s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                ready_tx.send(()).unwrap();
                let (mut far, mut near) = (FrameKinds::new(), FrameKinds::new());
                let mut buf = [0u8; 2048];
                let mut idle_after_stop = 0;
                while idle_after_stop < 5 {
                    match (&s).read(&mut buf) {
                        Ok(n) if n >= 14 => {
                            let side = if buf[6..12] == from {
                                &mut far
                            } else {
                                &mut near
                            };
                            *side.entry(frame_kind(&buf[..n])).or_insert(0) += 1;
                        }
                        Ok(_) => {}
                        Err(_) if flag.load(Ordering::Relaxed) => idle_after_stop += 1,
                        Err(_) => {}
                    }
                }
                (far, near)
            })
            .unwrap()
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("frame capture socket");
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Frames from `from`, and the others (sent by this end).
    fn finish(mut self) -> (FrameKinds, FrameKinds) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// What an Ethernet frame carries, in a few words.
fn frame_kind(frame: &[u8]) -> String {
    let payload = &frame[14..];
    match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0806 => "arp".to_owned(),
        0x86dd if payload.len() >= 41 && payload[6] == 58 => {
            format!("ipv6 icmpv6 {}", payload[40])
        }
        0x86dd if payload.len() >= 40 => format!("ipv6 next header {}", payload[6]),
        0x0800 if payload.len() >= 20 => format!("ipv4 proto {}", payload[9]),
        other => format!("ethertype {other:#06x}"),
    }
}

/// A device's MAC address in a lab namespace.
fn mac_of(lab: &Lab, node: &str, dev: &str) -> [u8; 6] {
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.ns(node), "cat"])
        .arg(format!("/sys/class/net/{dev}/address"))
        .output()
        .expect("run ip netns exec");
    let text = String::from_utf8_lossy(&out.stdout);
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("MAC byte"))
        .collect();
    bytes.try_into().expect("a 6-byte MAC")
}

/// Resident set size of a process in KiB.
fn rss_kib(pid: i64) -> i64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("no VmRSS for pid {pid}"))
}

/// Send raw IPv4 packets (header included) from the client namespace.
fn send_raw(lab: &Lab, packets: &[Vec<u8>]) {
    in_netns(&lab.ns("client"), || {
        let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(255))).unwrap();
        s.set_header_included_v4(true).unwrap();
        let _ = s.set_send_buffer_size(4 << 20);
        for p in packets {
            let dst = Ipv4Packet::new_checked(&p[..]).unwrap().dst_addr();
            // A full socket buffer: wait for it to drain rather than lose the packet.
            while s.send_to(p, &SocketAddrV4::new(dst, 0).into()).is_err() {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    })
    .unwrap();
}

/// `inner` behind an IPv4 header of protocol `proto` from `src` to `dst`.
fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, inner: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; Ipv4Repr::HEADER_LEN + inner.len()];
    Ipv4Repr {
        src,
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

fn syn(src: Ipv4Addr, sport: u16, dst: Ipv4Addr) -> Vec<u8> {
    let spec = PacketSpec::tcp(
        SocketAddr::from((src, sport)),
        SocketAddr::from((dst, 80)),
        TcpFlags::SYN,
    );
    let mut buf = vec![0u8; spec.len()];
    let n = spec.write(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn curl_is_spread_over_every_server_replies_bypass_the_slrs_and_shortcuts_skip_the_sites() {
    let name =
        "curl_is_spread_over_every_server_replies_bypass_the_slrs_and_shortcuts_skip_the_sites";
    if !root_or_skip(name) {
        return;
    }
    let lab = lab_up(&["--policy", "flow-hash"]);
    const N: usize = 400;
    let before = lab.settled();
    let sys_to_client = lab.link_stat("sys", "client", "tx_packets");
    let client_wan = lab.link_stat("client", "wan", "rx_packets");
    let client_up = lab.link_stat("client", "up", "rx_packets");
    let capture = Capture::start(&lab);
    let from_sys = FrameCapture::start(&lab, "client", "up", mac_of(&lab, "sys", "client"));
    let started = Instant::now();
    let answers = curl(&lab, N);
    let took = started.elapsed();
    let after = lab.settled();
    let seen = capture.finish();
    let (sys_frames, client_frames) = from_sys.finish();

    // Every request succeeded, from the VIP, answered by one of the servers.
    let bad: Vec<&String> = answers
        .iter()
        .filter(|a| !HOSTS.iter().any(|h| **a == format!("{h}.lab")))
        .collect();
    assert!(
        bad.is_empty(),
        "{} of {N} requests failed: {bad:?}",
        bad.len()
    );
    let counts = count_by_host(&answers);
    println!(
        "{N} curl requests in {:.2} s, 100% answered; per server: {counts:?}",
        took.as_secs_f64()
    );
    // The flow-hash policy spreads connections evenly at both levels: about N/4
    // each (binomial, 3.5 sigma is about 30).
    for h in HOSTS {
        let c = counts.get(h).copied().unwrap_or(0);
        assert!(
            (N / 4 - 45..=N / 4 + 45).contains(&c),
            "{h}: {c} of {N}: {counts:?}"
        );
        // The servers counted the same requests.
        assert_eq!(
            delta(&after, &before, h, &["http_requests"]),
            c as i64,
            "{h}"
        );
    }
    // One placement per connection at the system SLR, and the sites placed
    // the connections their servers answered. curl's client ports repeat
    // within a run (a few of 400, chosen at random): a site whose old flow
    // on those ports saw more than the SYN before its shortcut holds it as
    // established (it never sees the FIN, which goes straight to the server)
    // and sends the new SYN along the same pin, to the same server, without
    // placing it; on either path (the kernel's forwards the first packets
    // faster, so sites see more of them before the shortcut).
    assert_eq!(
        delta(&after, &before, "sys", &["engine", "forwarded_new"]),
        N as i64
    );
    for (site, hs) in [("site-a", ["a1", "a2"]), ("site-b", ["b1", "b2"])] {
        let placed = delta(&after, &before, site, &["engine", "forwarded_new"]);
        let answered = (counts[hs[0]] + counts[hs[1]]) as i64;
        assert!(
            (answered - 8..=answered).contains(&placed),
            "{site}: placed {placed}, its servers answered {answered}"
        );
    }
    for n in ["sys", "site-a", "site-b"] {
        assert_eq!(
            delta(&after, &before, n, &["engine", "dropped_total"]),
            0,
            "{n} dropped"
        );
    }

    // Direct server return: the answers reach the client over the wan bridge, with
    // the VIP as source, and the system SLR sends nothing toward the client.
    let over_wan = lab.link_stat("client", "wan", "rx_packets") - client_wan;
    let via_sys = lab.link_stat("sys", "client", "tx_packets") - sys_to_client;
    let client_up_rx = lab.link_stat("client", "up", "rx_packets") - client_up;
    println!(
        "direct server return: {over_wan} packets reached the client over the wan bridge, \
         {via_sys} came from the system SLR ({client_up_rx} received on the SLR link); \
         frames from the system SLR by kind: {sys_frames:?}, from the client: \
         {client_frames:?}"
    );
    assert!(over_wan >= 3 * N as i64, "{over_wan}");
    // The capture sees this link: the client's own segments toward the VIP
    // (SYN, ACK, request, FIN, ACK: at least 3 a connection) cross it.
    let client_tcp = client_frames.get("ipv4 proto 6").copied().unwrap_or(0);
    assert!(client_tcp >= 3 * N as u64, "{client_frames:?}");
    // Silent: not one IPv4 frame from the system SLR toward the client (no
    // reply, no ICMP, nothing forwarded back). What the kernel may send on
    // any link is allowed: ARP, and IPv6 neighbour/router discovery and MLD
    // (link-local control, no IPv4 address is configured for it).
    // ICMPv6 130-132 and 143 are MLD, 133-137 router/neighbour discovery.
    let noise = |kind: &str| {
        kind == "arp"
            || kind == "ipv6 next header 0"
            || kind
                .strip_prefix("ipv6 icmpv6 ")
                .and_then(|t| t.parse::<u8>().ok())
                .is_some_and(|t| (130..=137).contains(&t) || t == 143)
    };
    let not_noise: Vec<(&String, &u64)> = sys_frames.iter().filter(|(k, _)| !noise(k)).collect();
    assert!(
        not_noise.is_empty(),
        "the system SLR sent toward the client: {not_noise:?} (all frames: {sys_frames:?})"
    );
    let sources: Vec<&Ipv4Addr> = seen.keys().collect();
    assert_eq!(
        sources,
        vec![&VIP],
        "sources of TCP segments from port 80: {seen:?}"
    );
    assert!(seen[&VIP] >= 3 * N as u64, "{seen:?}");

    // Shortcuts: every connection's tunnel object reached the system SLR, which
    // then tunnels straight to the server; the sites see only the first packets.
    // A connection on a repeated client port that its site did not place (see
    // above) has no shortcut: it crosses the site.
    let unplaced: i64 = [("site-a", ["a1", "a2"]), ("site-b", ["b1", "b2"])]
        .iter()
        .map(|(site, hs)| {
            (counts[hs[0]] + counts[hs[1]]) as i64
                - delta(&after, &before, site, &["engine", "forwarded_new"])
        })
        .sum();
    assert_eq!(
        delta(&after, &before, "sys", &["control", "shortcuts_installed"]),
        N as i64 - unplaced
    );
    let sys_pkts = routed(&after["sys"]) - routed(&before["sys"]);
    let site_pkts: i64 = SITES
        .iter()
        .map(|s| routed(&after[*s]) - routed(&before[*s]))
        .sum();
    let lag: Vec<i64> = (0..8)
        .map(|i| {
            let arr = |t: &toml::Table| {
                value(t, &["control", "shortcut_lag_packets"])
                    .as_array()
                    .and_then(|a| a.get(i))
                    .and_then(toml::Value::as_integer)
                    .unwrap_or_else(|| panic!("control.shortcut_lag_packets[{i}]"))
            };
            arr(&after["sys"]) - arr(&before["sys"])
        })
        .collect();
    println!(
        "packets per connection: {:.2} through the system SLR (the tunnel entry), \
         {:.2} through the site SLRs with shortcuts; shortcuts arrived after \
         1,2,3,...,8+ packets: {lag:?}",
        sys_pkts as f64 / N as f64,
        site_pkts as f64 / N as f64,
    );
    // Only comparable when sys's engine read every packet: the kernel fast
    // path counts GSO super-packets (up to 64 KB) where the sites' engines count
    // wire-sized ones, so on it the share says nothing (the held connection
    // below checks the shortcut path exactly, on either path).
    if delta(&after, &before, "sys", &["fast_path", "forwarded"]) == 0 {
        assert!(
            // Typically about half (debug build) to 40% (release).
            site_pkts * 100 <= sys_pkts * 85,
            "shortcuts took no effect: {site_pkts} site packets of {sys_pkts}"
        );
    }

    // A connection held open: once the system SLR has its shortcut, not one of its
    // later packets passes a site SLR.
    let base = lab.settled();
    let installed = int(&base["sys"], &["control", "shortcuts_installed"]);
    let site_before =
        |m: &BTreeMap<String, toml::Table>| -> i64 { SITES.iter().map(|s| routed(&m[*s])).sum() };
    let (body, site_at_shortcut, sys_at_shortcut) = in_netns(&lab.ns("client"), || {
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::from((VIP, 80)), Duration::from_secs(5))
                .unwrap();
        s.set_nodelay(true).unwrap();
        wait_for(
            "the shortcut of the held connection",
            Duration::from_secs(5),
            || int(&lab.stats("sys"), &["control", "shortcuts_installed"]) > installed,
        );
        let at = lab.settled();
        s.write_all(b"GET / HTTP/1.1\r\nHost: lab\r\n").unwrap();
        for i in 0..40 {
            s.write_all(format!("X-Pad-{i}: x\r\n").as_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(3));
        }
        s.write_all(b"\r\n").unwrap();
        let mut resp = String::new();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.read_to_string(&mut resp).unwrap();
        (resp, site_before(&at), routed(&at["sys"]))
    })
    .unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    let end = lab.settled();
    let through_sys = routed(&end["sys"]) - sys_at_shortcut;
    let through_sites = site_before(&end) - site_at_shortcut;
    println!(
        "held connection after its shortcut: {through_sys} packets through the system SLR, \
         {through_sites} through the site SLRs"
    );
    assert!(through_sys >= 40, "{through_sys}");
    assert_eq!(through_sites, 0);

    // `lab down` is idempotent.
    let (dir, prefix) = (lab.dir.clone(), lab.prefix.clone());
    drop(lab);
    let again = pronto()
        .args(["lab", "down", "--dir"])
        .arg(&dir)
        .args(["--prefix", &prefix])
        .output()
        .unwrap();
    assert!(again.status.success());
    let text = String::from_utf8_lossy(&again.stdout);
    assert!(
        text.contains("0 daemons stopped, 0 namespaces deleted"),
        "{text}"
    );
    assert!(
        !Path::new("/var/run/netns")
            .join(format!("{prefix}-sys"))
            .exists()
    );
}

#[test]
fn least_cost_sends_every_connection_to_the_least_loaded_server_and_follows_its_load() {
    let name = "least_cost_sends_every_connection_to_the_least_loaded_server_and_follows_its_load";
    if !root_or_skip(name) {
        return;
    }
    let lab = lab_up(&[
        "--policy",
        "least-cost",
        "--load",
        "a1=0.6",
        "--load",
        "a2=0.3",
        "--load",
        "b1=0.2",
        "--load",
        "b2=0.8",
    ]);
    let near = |m: &BTreeMap<String, f64>, addr: &str, want: f64| {
        m.get(addr).is_some_and(|l| (l - want).abs() < 0.05)
    };
    // The system SLR sees each site's aggregate G = the least load behind it.
    wait_for("advertised loads", Duration::from_secs(10), || {
        let sys = candidate_loads(&lab.stats("sys"));
        let b = candidate_loads(&lab.stats("site-b"));
        near(&sys, "10.1.0.2", 0.3) && near(&sys, "10.2.0.2", 0.2) && near(&b, "10.2.1.2", 0.2)
    });
    let answers = curl(&lab, 100);
    let counts = count_by_host(&answers);
    println!("loads a1 0.6, a2 0.3, b1 0.2, b2 0.8: {counts:?}");
    assert_eq!(counts.get("b1"), Some(&100), "{counts:?}");

    // b1 gets busy: site b's aggregate becomes 0.8 (b2), so site a wins with a2.
    lab.set_load("b1", 0.9);
    wait_for(
        "b1's new load at the system SLR",
        Duration::from_secs(10),
        || {
            let sys = candidate_loads(&lab.stats("sys"));
            near(&sys, "10.2.0.2", 0.8) && near(&sys, "10.1.0.2", 0.3)
        },
    );
    let answers = curl(&lab, 100);
    let counts = count_by_host(&answers);
    println!("loads a1 0.6, a2 0.3, b1 0.9, b2 0.8: {counts:?}");
    assert_eq!(counts.get("a2"), Some(&100), "{counts:?}");
}

#[test]
fn bad_input_and_a_syn_flood_are_counted_while_curl_keeps_working_and_memory_stays_bounded() {
    let name =
        "bad_input_and_a_syn_flood_are_counted_while_curl_keeps_working_and_memory_stays_bounded";
    if !root_or_skip(name) {
        return;
    }
    // A flow table smaller than the flood (the router reads only part of a flood
    // in a debug build; the kernel drops the rest at the TUN queue).
    const CAPACITY: i64 = 4096;
    let lab = lab_up(&["--flow-capacity", "4096"]);
    let pid = int(&lab.stats("sys"), &["pid"]);
    // Warm up the allocator and the flow table's hot pages.
    assert!(curl(&lab, 50).iter().all(|a| a.ends_with(".lab")));
    let before = lab.settled();
    let rss_before = rss_kib(pid);

    // Malformed, truncated, nested, unserved: each kind K times.
    const K: usize = 20;
    let ipip = ip_proto::IPV4;
    let nested = ipv4(
        CLIENT,
        SYS_ENDPOINT,
        ipip,
        &ipv4(CLIENT, SYS_ENDPOINT, ipip, &syn(CLIENT, 1, VIP)),
    );
    let truncated = ipv4(
        CLIENT,
        SYS_ENDPOINT,
        ipip,
        &[0x45, 0, 0, 40, 1, 2, 3, 4, 5, 6],
    );
    let garbage = ipv4(CLIENT, SYS_ENDPOINT, ipip, &[0xff; 64]);
    // Issue 14: a client wrapping a spoofed source in IP-in-IP to have it
    // placed as a new flow.
    let spoofed = ipv4(
        CLIENT,
        SYS_ENDPOINT,
        ipip,
        &syn(Ipv4Addr::new(192, 0, 2, 66), 4, VIP),
    );
    let unserved = ipv4(
        CLIENT,
        SYS_ENDPOINT,
        ipip,
        &syn(CLIENT, 2, Ipv4Addr::new(198, 18, 200, 9)),
    );
    // A SYN to the VIP whose TCP header is cut short (the kernel forwards it into
    // the TUN without reading TCP).
    let full = syn(CLIENT, 3, VIP);
    let short_tcp = ipv4(
        CLIENT,
        VIP,
        ip_proto::TCP,
        &full[Ipv4Repr::HEADER_LEN..][..8],
    );
    let mut burst = Vec::new();
    for _ in 0..K {
        burst.extend([
            nested.clone(),
            truncated.clone(),
            garbage.clone(),
            unserved.clone(),
            short_tcp.clone(),
            spoofed.clone(),
        ]);
    }
    send_raw(&lab, &burst);
    wait_for("the bad packets counted", Duration::from_secs(10), || {
        int(&lab.stats("sys"), &["engine", "dropped_total"])
            - int(&before["sys"], &["engine", "dropped_total"])
            >= 6 * K as i64
    });
    let after_bad = lab.settled();
    let d = |reason: &str| delta(&after_bad, &before, "sys", &["engine", "drops", reason]);
    println!(
        "bad input: tunnel_source {} nested {} bad_tunnel {} not_served {} malformed {}",
        d("tunnel_source"),
        d("nested_tunnel"),
        d("bad_tunnel"),
        d("not_served"),
        d("malformed")
    );
    // The client is no source of tunnels: every tunnel it sends (nested,
    // truncated, garbage, unserved, spoofed) is dropped before decapsulation
    // (the engine tests cover what a decapsulation finds wrong).
    assert_eq!(d("tunnel_source"), 5 * K as i64);
    assert_eq!(d("nested_tunnel") + d("bad_tunnel") + d("not_served"), 0);
    assert_eq!(d("malformed"), K as i64);
    assert_eq!(
        delta(&after_bad, &before, "sys", &["engine", "dropped_total"]),
        6 * K as i64
    );
    assert_eq!(
        delta(&after_bad, &before, "sys", &["engine", "decapsulated"]),
        0,
        "sys decapsulated a client's tunnel"
    );
    assert_eq!(
        delta(&after_bad, &before, "sys", &["engine", "forwarded_new"]),
        0,
        "nothing bad was forwarded"
    );

    // A SYN flood to the VIP from 40 000 spoofed (address, port) pairs, more than
    // the flow table holds, with a real client fetching at the same time.
    const FLOOD: usize = 40_000;
    let flood: Vec<Vec<u8>> = (0..FLOOD)
        .map(|i| {
            let src = Ipv4Addr::new(198, 51, 100, (i % 250) as u8 + 1);
            syn(src, 1024 + (i / 250) as u16, VIP)
        })
        .collect();
    let tun_drops = |lab: &Lab| {
        lab.link_stat("sys", "pronto0", "tx_dropped") + lab.link_stat("sys", "client", "rx_dropped")
    };
    let kernel_drops_before = tun_drops(&lab);
    // Connections established before the flood: the flow table evicts SYN-only
    // flows first, so these must survive it.
    const HELD: usize = 5;
    let mut held: Vec<TcpStream> = in_netns(&lab.ns("client"), || {
        (0..HELD)
            .map(|_| {
                let mut s = TcpStream::connect_timeout(
                    &SocketAddr::from((VIP, 80)),
                    Duration::from_secs(5),
                )
                .unwrap();
                s.set_nodelay(true).unwrap();
                s.write_all(b"GET / HTTP/1.1\r\nHost: lab\r\n").unwrap();
                s
            })
            .collect()
    })
    .unwrap();
    // The hosts count them from /proc/net/tcp in the load they advertise.
    wait_for(
        "the hosts to count the held connections",
        Duration::from_secs(5),
        || {
            HOSTS
                .iter()
                .map(|h| int(&lab.stats(h), &["agent", "connections"]))
                .sum::<i64>()
                == HELD as i64
        },
    );
    let mut held_ok = 0;
    let sampling = AtomicBool::new(true);
    let (during, rss_samples) = std::thread::scope(|s| {
        // The router's resident memory every 20 ms while the flood lasts.
        let sampler = s.spawn(|| {
            let mut samples = Vec::new();
            while sampling.load(Ordering::Relaxed) {
                samples.push(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(20));
            }
            samples
        });
        let legit = s.spawn(|| curl(&lab, 100));
        // As fast as the client's stack sends them, in bursts of 500.
        for chunk in flood.chunks(500) {
            send_raw(&lab, chunk);
            std::thread::sleep(Duration::from_millis(1));
        }
        // The held connections finish their requests (the server waits 5 s).
        for c in &mut held {
            c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut resp = String::new();
            if c.write_all(b"\r\n").is_ok()
                && c.read_to_string(&mut resp).is_ok()
                && resp.starts_with("HTTP/1.1 200")
            {
                held_ok += 1;
            }
        }
        let during = legit.join().unwrap();
        sampling.store(false, Ordering::Relaxed);
        (during, sampler.join().unwrap())
    });
    let rss_peak = rss_samples.iter().copied().max().unwrap_or(0);
    let after_flood = lab.settled();
    let rss_after = rss_kib(pid);
    let later = curl(&lab, 100);
    let ok = |a: &[String]| a.iter().filter(|x| x.ends_with(".lab")).count();
    println!(
        "SYN flood of {FLOOD}: {held_ok}/{HELD} connections established before it completed, \
         {}/100 requests answered during it, {}/100 after it",
        ok(&during),
        ok(&later)
    );
    assert_eq!(held_ok, HELD, "established connections survive the flood");
    // A connection whose SYN arrives while the flood overflows the flow table is
    // itself embryonic (SYN-only) for one round trip and may be evicted before
    // its handshake completes; its state is then lost (this lab runs without
    // recovery). Over our runs 0 or 1 of the 100 was; at most 3 may be, and each
    // must show as a lost flow at the system SLR: its later packets counted as
    // `recover` (several per connection: the ACK, the request, retransmissions).
    // After the flood, all complete.
    let lost = (100 - ok(&during)) as i64;
    let recovered = delta(&after_flood, &after_bad, "sys", &["engine", "recover"]);
    assert!(
        lost <= 3,
        "{lost} of 100 requests failed during the flood: {during:?}"
    );
    assert!(
        recovered >= lost,
        "{lost} requests failed but only {recovered} packets of lost flows were counted"
    );
    assert_eq!(ok(&later), 100, "{later:?}");
    // The sites take their tunnels from sys, their upper level: served, and
    // none refused.
    let sites = ["site-a", "site-b"];
    let dec: i64 = sites
        .iter()
        .map(|n| delta(&after_flood, &before, n, &["engine", "decapsulated"]))
        .sum();
    let refused: i64 = sites
        .iter()
        .map(|n| {
            delta(
                &after_flood,
                &before,
                n,
                &["engine", "drops", "tunnel_source"],
            )
        })
        .sum();
    assert!(
        dec >= 200 && refused == 0,
        "sites decapsulated {dec}, refused {refused}"
    );

    // Every packet the system SLR read has exactly one counted outcome.
    let g = |path: &[&str]| delta(&after_flood, &after_bad, "sys", path);
    let packets = g(&["engine", "packets"]);
    let outcomes = g(&["engine", "forwarded_new"])
        + g(&["engine", "forwarded_pinned"])
        + g(&["engine", "icmp_sent"])
        + g(&["engine", "delivered"])
        + g(&["engine", "recover"])
        + g(&["engine", "dropped_total"]);
    assert_eq!(packets, outcomes, "every packet has a counted verdict");
    assert_eq!(
        g(&["shell", "rx_tun"]) + g(&["shell", "rx_tunnel"]),
        packets + g(&["shell", "rx_truncated"])
    );
    // What the router could not read in time the kernel dropped at the TUN queue,
    // and counted there.
    let kernel_drops = tun_drops(&lab) - kernel_drops_before;
    let flows = int(&after_flood["sys"], &["engine", "flows"]);
    let evicted = g(&["engine", "flows_evicted"]) + g(&["engine", "drops", "flow_table_full"]);
    println!(
        "flood at the system SLR: {packets} packets read, {} new flows, {flows} flows held \
         (capacity {CAPACITY}), {evicted} evicted or refused, {kernel_drops} dropped by the kernel \
         at the TUN queue, {} mid-flow packets of lost flows (recover); RSS {rss_before} KiB \
         -> {rss_after} KiB (peak {rss_peak} KiB of {} samples during the flood)",
        g(&["engine", "forwarded_new"]),
        g(&["engine", "recover"]),
        rss_samples.len()
    );
    assert!(
        g(&["shell", "rx_tun"]) + kernel_drops >= FLOOD as i64,
        "every flood packet was read or counted as dropped"
    );
    assert!(flows <= CAPACITY, "{flows}");
    assert!(
        g(&["engine", "forwarded_new"]) > CAPACITY,
        "the flood must exceed the flow table"
    );
    assert!(evicted > 0, "a flood beyond capacity evicts or refuses");
    // Bounded. The first flood touches what the router preallocated and had
    // not used yet (flow-table slots, receive slots, the fast path's mirror
    // of the maps): its growth depends on how far the allocator had trimmed
    // before it (32-48 MiB idle over our runs, 35-36 MiB after). So a second
    // flood of the same size follows: over the first's touched memory it
    // must add less than 1.5 MiB for its 9,000-11,000 more new flows (it added
    // 12-60 KiB over our runs), which fails a leak of about 150 bytes per flow
    // or a table that outgrows its capacity. The first may add at most 8 MiB.
    let grown = rss_peak.max(rss_after) - rss_before;
    assert!(
        grown < 8192,
        "RSS grew by {grown} KiB: {rss_before} KiB before, peak {rss_peak} KiB, \
         {rss_after} KiB after"
    );
    let rss_again_before = rss_kib(pid);
    let sampling = AtomicBool::new(true);
    let (rss_again_peak, after_again) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut peak = 0;
            while sampling.load(Ordering::Relaxed) {
                peak = rss_kib(pid).max(peak);
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        });
        for chunk in flood.chunks(500) {
            send_raw(&lab, chunk);
            std::thread::sleep(Duration::from_millis(1));
        }
        let settled = lab.settled();
        sampling.store(false, Ordering::Relaxed);
        (sampler.join().unwrap(), settled)
    });
    let rss_again_after = rss_kib(pid);
    let grown_again = rss_again_peak.max(rss_again_after) - rss_again_before;
    let new_again = delta(
        &after_again,
        &after_flood,
        "sys",
        &["engine", "forwarded_new"],
    );
    assert!(
        new_again > CAPACITY,
        "the second flood must exceed the flow table too: {new_again} new flows"
    );
    println!(
        "a second flood of {FLOOD}: {new_again} new flows; RSS {rss_again_before} KiB -> \
         {rss_again_after} KiB (peak {rss_again_peak} KiB)"
    );
    assert!(
        grown_again < 1536,
        "a second flood grew RSS by {grown_again} KiB: {rss_again_before} KiB before, \
         peak {rss_again_peak} KiB, {rss_again_after} KiB after"
    );
    // The sites survived their share and every drop of theirs is counted too.
    for site in SITES {
        let g = |path: &[&str]| delta(&after_flood, &after_bad, site, path);
        assert_eq!(
            g(&["engine", "packets"]),
            g(&["engine", "forwarded_new"])
                + g(&["engine", "forwarded_pinned"])
                + g(&["engine", "icmp_sent"])
                + g(&["engine", "delivered"])
                + g(&["engine", "recover"])
                + g(&["engine", "dropped_total"]),
            "{site}"
        );
    }
}

/// The `calls` counter of module `name` in a router's snapshot.
fn module_calls(t: &toml::Table, name: &str, field: &str) -> i64 {
    let modules = value(t, &["modules"]).as_array().expect("modules array");
    let m = modules
        .iter()
        .find(|m| m.get("name").and_then(toml::Value::as_str) == Some(name))
        .unwrap_or_else(|| panic!("module {name} not in the snapshot: {modules:?}"));
    m.get(field)
        .and_then(toml::Value::as_integer)
        .unwrap_or_else(|| panic!("module {name} has no integer `{field}`: {m}"))
}

#[test]
fn a_signed_policy_module_from_the_configuration_places_every_connection() {
    let name = "a_signed_policy_module_from_the_configuration_places_every_connection";
    if !root_or_skip(name) {
        return;
    }
    // The lab signs the shipped Maglev module with its CA; each router verifies
    // and loads it from its [modules] section.
    let lab = lab_up(&["--policy-module", "consistent_hash"]);
    const N: usize = 200;
    let before = lab.settled();
    let answers = curl(&lab, N);
    let after = lab.settled();
    let counts = count_by_host(&answers);
    println!("consistent_hash module: {counts:?}");
    assert!(answers.iter().all(|a| a.ends_with(".lab")), "{answers:?}");
    // Maglev over the 5-tuple spreads the connections over all four servers.
    for h in HOSTS {
        let c = counts.get(h).copied().unwrap_or(0);
        assert!(c >= N / 10, "{h}: {c} of {N}: {counts:?}");
    }
    for r in ["sys", "site-a", "site-b"] {
        let d = |t: &toml::Table, f: &str| module_calls(t, "consistent_hash", f);
        let calls = d(&after[r], "calls") - d(&before[r], "calls");
        let placed = delta(&after, &before, r, &["engine", "forwarded_new"]);
        println!("{r}: {placed} connections placed, {calls} module calls");
        assert_eq!(calls, placed, "{r}: the module placed every new flow");
        assert_eq!(d(&after[r], "faults"), 0, "{r}");
        assert_eq!(
            delta(&after, &before, r, &["engine", "policy_faults"]),
            0,
            "{r}"
        );
    }
}

/// A signalling client in the `site-a` namespace dialling the system SLR with
/// `identity` and claiming `role`; returns how the session went.
fn dial_sys(
    lab: &Lab,
    cert_pem: &str,
    key_pem: &str,
    anchors_pem: &[u8],
    claim: &str,
    role: signaling::Role,
) -> Result<Vec<String>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let identity = signaling::TlsIdentity {
        cert_chain: vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()],
        key: PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap(),
    };
    let anchors: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(anchors_pem)
        .collect::<Result<_, _>>()
        .unwrap();
    let connector = signaling::Connector::new(signaling::TransportConfig {
        identity,
        trust_anchors: anchors,
        local: signaling::LocalNode {
            name: signaling::NodeName::new(claim).unwrap(),
            level: router_core::Level::Site,
            role,
        },
        peer: signaling::PeerConfig::default(),
    })
    .unwrap();
    in_netns(&lab.ns("site-a"), move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let sys = signaling::NodeName::new("sys.lab").unwrap();
            let mut session = connector
                .connect(SocketAddr::from(([10, 1, 0, 1], 7800)), &sys)
                .await
                .map_err(|e| e.to_string())?;
            // What the system SLR does with us within two seconds.
            let mut events = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, session.next_event()).await {
                let down = matches!(ev, signaling::PeerEvent::PeerDown { .. });
                events.push(format!("{ev:?}"));
                if down {
                    break;
                }
            }
            Ok(events)
        })
    })
    .unwrap()
}

#[test]
fn impostors_and_peers_of_the_wrong_role_cannot_register() {
    let name = "impostors_and_peers_of_the_wrong_role_cannot_register";
    if !root_or_skip(name) {
        return;
    }
    let lab = lab_up(&[]);
    let before = lab.settled();
    let lab_ca = std::fs::read(lab.dir.join("ca").join("ca.pem")).unwrap();

    // Connections that never start TLS hold a handshake slot each (up to the
    // 2 s handshake deadline, on tasks of their own) but do not stop other
    // peers from registering.
    let stalled: Vec<TcpStream> = in_netns(&lab.ns("site-a"), || {
        (0..3)
            .map(|_| TcpStream::connect(SocketAddr::from(([10, 1, 0, 1], 7800))).unwrap())
            .collect()
    })
    .unwrap();
    let started = Instant::now();

    // An impostor: a certificate naming site-a.lab, from a CA the lab does not trust.
    let validity = exec_env::ca::Validity::days_from(std::time::SystemTime::now(), 1).unwrap();
    let rogue = exec_env::ca::CertificateAuthority::generate(
        "Rogue CA",
        validity,
        exec_env::ca::KeyAlgorithm::EcdsaP256,
    )
    .unwrap();
    let fake = rogue.issue_peer("site-a.lab", validity).unwrap();
    let r = dial_sys(
        &lab,
        &fake.cert_pem,
        &fake.key_pem,
        &lab_ca,
        "site-a.lab",
        signaling::Role::Site,
    );
    println!("impostor: {r:?}");
    assert!(r.is_err(), "an untrusted certificate registered: {r:?}");

    // A trusted host certificate trying to register as a site with the system
    // SLR: TLS succeeds, the role is refused and the session closed.
    let ca = lab.dir.join("ca");
    let cert = std::fs::read_to_string(ca.join("peer-a1.lab.pem")).unwrap();
    let key = std::fs::read_to_string(ca.join("peer-a1.lab.key")).unwrap();
    let r = dial_sys(&lab, &cert, &key, &lab_ca, "a1.lab", signaling::Role::Host).unwrap();
    println!("host at the system SLR: {r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "stalled handshakes held up registrations for {:?}",
        started.elapsed()
    );
    assert!(r.last().is_some_and(|e| e.contains("PeerDown")), "{r:?}");
    // And a trusted certificate claiming another node's name is refused too.
    let r = dial_sys(
        &lab,
        &cert,
        &key,
        &lab_ca,
        "site-b.lab",
        signaling::Role::Site,
    );
    println!("a1.lab claiming site-b.lab: {r:?}");
    assert!(
        r.as_ref()
            .map_or(true, |ev| ev.last().is_some_and(|e| e.contains("PeerDown"))),
        "{r:?}"
    );

    wait_for("the refusals counted", Duration::from_secs(5), || {
        let now = lab.stats("sys");
        int(&now, &["control", "tls_untrusted"])
            > int(&before["sys"], &["control", "tls_untrusted"])
            && int(&now, &["control", "unexpected_roles"])
                > int(&before["sys"], &["control", "unexpected_roles"])
    });
    let after = lab.settled();
    assert_eq!(
        delta(&after, &before, "sys", &["control", "registrations"]),
        0,
        "nobody new reached the next-hop table"
    );
    assert_eq!(
        delta(&after, &before, "sys", &["control", "unexpected_roles"]),
        1
    );
    assert_eq!(
        int(&after["sys"], &["control", "downstream_sessions"]),
        2,
        "the real sites stay"
    );
    drop(stalled);
    // The lab still works.
    assert!(curl(&lab, 20).iter().all(|a| a.ends_with(".lab")));
}

/// `tc class show dev DEV` in a lab namespace.
fn tc_show(lab: &Lab, node: &str, what: &str, dev: &str) -> String {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns(node),
            "tc",
            what,
            "show",
            "dev",
            dev,
        ])
        .output()
        .expect("run tc");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn shaping_from_the_router_config_is_applied_and_updated_on_sighup() {
    if !root_or_skip("shaping_from_the_router_config_is_applied_and_updated_on_sighup") {
        return;
    }
    let lab = lab_up(&[]);
    let state: toml::Table =
        toml::from_str(&std::fs::read_to_string(lab.dir.join("lab.toml")).expect("read lab.toml"))
            .expect("parse lab.toml");
    let sys = state["daemons"]
        .as_array()
        .expect("daemons")
        .iter()
        .find(|d| d["name"].as_str() == Some("sys"))
        .expect("the system router");
    let config = PathBuf::from(sys["config"].as_str().expect("config path"));
    let pid = i32::try_from(sys["pid"].as_integer().expect("pid")).expect("pid fits");
    let original = std::fs::read_to_string(&config).expect("read the router config");
    let shaping = |a: u32, b: u32| {
        format!(
            "{original}\n[shaping]\nlink = \"client\"\nrate_mbit = 100\ndefault_class = 16\n\n\
             [[shaping.class]]\nid = 16\nweight = {a}\nsubnets = [\"192.200.0.0/24\"]\n\n\
             [[shaping.class]]\nid = 32\nweight = {b}\nsubnets = [\"192.200.1.0/24\"]\n"
        )
    };
    let hup = || {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGHUP,
        )
        .expect("send SIGHUP");
    };
    // Applied from the config: rates are the link rate split by weight.
    std::fs::write(&config, shaping(20, 80)).expect("write config");
    hup();
    wait_for("the 20/80 HTB classes", Duration::from_secs(15), || {
        let classes = tc_show(&lab, "sys", "class", "client");
        classes.contains("class htb 1:10 parent 1:1")
            && classes.contains("rate 20Mbit")
            && classes.contains("class htb 1:20 parent 1:1")
            && classes.contains("rate 80Mbit")
    });
    assert!(tc_show(&lab, "sys", "filter", "client").contains("u32"));
    // Updated in place from the edited config.
    std::fs::write(&config, shaping(50, 50)).expect("write config");
    hup();
    wait_for("the 50/50 HTB classes", Duration::from_secs(15), || {
        let classes = tc_show(&lab, "sys", "class", "client");
        classes.matches("rate 50Mbit").count() == 2
    });
    // A broken config leaves the tree in place and the router running. The
    // router's log line for it comes only from a handled SIGHUP (an unhandled
    // one would end the process, an ignored one would log nothing); the shaper
    // logs it after giving up on that reload, so the tree read afterwards is
    // the one the reload left.
    let log = lab.dir.join("logs").join("sys.log");
    let refusals = || {
        std::fs::read_to_string(&log)
            .expect("read the system router's log")
            .matches("SIGHUP: config not reloaded; shares unchanged")
            .count()
    };
    let refused_before = refusals();
    std::fs::write(
        &config,
        format!("{original}\n[shaping]\nlink = \"client\"\n"),
    )
    .expect("write config");
    hup();
    wait_for(
        "the router to log the broken config",
        Duration::from_secs(15),
        || refusals() > refused_before,
    );
    assert_eq!(refusals(), refused_before + 1);
    assert_eq!(
        tc_show(&lab, "sys", "class", "client")
            .matches("rate 50Mbit")
            .count(),
        2
    );
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
        .expect("the router survives the SIGHUP of a broken config");
    // Section removed: the tree goes.
    std::fs::write(&config, &original).expect("write config");
    hup();
    wait_for("the HTB tree removed", Duration::from_secs(15), || {
        !tc_show(&lab, "sys", "qdisc", "client").contains("htb")
    });
    // The router kept forwarding throughout.
    assert!(curl(&lab, 20).iter().all(|a| a.ends_with(".lab")));
}

/// Whether `pid` runs (not a zombie).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|st| st != "Z"))
        })
        .unwrap_or(false)
}

#[test]
fn lab_restart_of_a_large_router_fifty_times_either_succeeds_or_says_it_failed() {
    if !root_or_skip("lab_restart_of_a_large_router_fifty_times_either_succeeds_or_says_it_failed")
    {
        return;
    }
    // A large flow table: its router takes longest to tear down, which used to
    // leave the old TUN device in place when the new daemon asked for it.
    let lab = lab_up(&["--flow-capacity", "262144"]);
    let mut ok = 0;
    let mut honest_failures = Vec::new();
    for i in 0..50 {
        let out = pronto()
            .args(["lab", "restart", "--dir"])
            .arg(&lab.dir)
            .arg("site-a")
            .output()
            .expect("run pronto lab restart");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            // "site-a restarted: pid OLD -> NEW": NEW must really run.
            let new: u32 = stdout
                .trim()
                .rsplit_once("-> ")
                .and_then(|(_, p)| p.trim().parse().ok())
                .unwrap_or_else(|| panic!("restart {i}: no new pid in {stdout:?}"));
            // ...and has started: its own stats, and still running after.
            wait_for(
                &format!("restart {i}: pid {new} writing its stats"),
                Duration::from_secs(10),
                || int(&lab.stats("site-a"), &["pid"]) == i64::from(new),
            );
            std::thread::sleep(Duration::from_millis(50));
            assert!(
                running(new),
                "restart {i} reported success but pid {new} does not run:\n{stdout}"
            );
            ok += 1;
        } else {
            assert!(
                stderr.contains("did not restart"),
                "restart {i} failed without saying why:\n{stderr}"
            );
            honest_failures.push(stderr.into_owned());
        }
    }
    println!(
        "lab restart of site-a: {ok}/50 succeeded, {} reported failure",
        honest_failures.len()
    );
    // Waiting for the old TUN to go makes every one succeed.
    assert_eq!(ok, 50, "{honest_failures:#?}");
    // The restarted router serves: a request through site a's hosts works.
    wait_for("site a back in the table", Duration::from_secs(20), || {
        curl(&lab, 10).iter().all(|a| a.ends_with(".lab"))
    });
}
