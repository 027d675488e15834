//! Namespace lab tests of the kernel fast path (`pronto lab up`, every daemon
//! with `fast_path = "auto"`, which on the kernels we run must come up as the
//! eBPF path): pinned flows are forwarded by the tc programs while the engine
//! sees their first packets only; expiry removes map entries; a SYN flood
//! keeps the maps bounded; what the programs do not own (fragments, malformed
//! headers, IP options) reaches the engine and is counted there.
//!
//! Needs root (prints SKIP otherwise, and fails when CI=true) and `bpftool`
//! (to read the kernel's maps from outside the daemons).
#![cfg(target_os = "linux")]
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failure is a test failure"
)]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::process::Command;
use std::time::Duration;

use router_core::linux::in_netns;
use router_core::synth::PacketSpec;
use router_core::wire::{Ipv4Packet, Ipv4Repr, TcpFlags};
use socket2::{Domain, Protocol, Socket, Type};

mod support;
use support::{Lab, int, root_or_skip, value, wait_for};

const VIP: Ipv4Addr = Ipv4Addr::new(192, 200, 0, 10);
const CLIENT: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 2);
const ROUTERS: [&str; 3] = ["sys", "site-a", "site-b"];
const HOSTS: [&str; 4] = ["a1", "a2", "b1", "b2"];
const CAPACITY: i64 = 4096;

fn fp(t: &toml::Table, counter: &str) -> i64 {
    int(t, &["fast_path", "counters", counter])
}

fn maps(t: &toml::Table, counter: &str) -> i64 {
    int(t, &["fast_path", "maps", counter])
}

/// Send raw IPv4 packets (header included) from the client namespace.
fn send_raw(lab: &Lab, packets: &[Vec<u8>]) {
    in_netns(&lab.ns("client"), || {
        let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(255))).unwrap();
        s.set_header_included_v4(true).unwrap();
        let _ = s.set_send_buffer_size(4 << 20);
        for p in packets {
            let dst = Ipv4Packet::new_checked(&p[..]).unwrap().dst_addr();
            while s.send_to(p, &SocketAddrV4::new(dst, 0).into()).is_err() {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    })
    .unwrap();
}

fn packet(spec: &PacketSpec) -> Vec<u8> {
    let mut buf = vec![0u8; spec.len()];
    let n = spec.write(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

fn syn(src: Ipv4Addr, sport: u16) -> Vec<u8> {
    packet(&PacketSpec::tcp(
        SocketAddr::from((src, sport)),
        SocketAddr::from((VIP, 80)),
        TcpFlags::SYN,
    ))
}

/// Rewrite an IPv4 packet's flags/fragment word and fix its checksum.
fn with_frag(mut p: Vec<u8>, word: u16) -> Vec<u8> {
    p[6..8].copy_from_slice(&word.to_be_bytes());
    let mut ip = Ipv4Packet::new_checked(&mut p[..]).unwrap();
    ip.fill_checksum();
    p
}

/// A TCP SYN to the VIP behind an IPv4 header with one option word (NOPs).
fn with_options(src: Ipv4Addr, sport: u16) -> Vec<u8> {
    let plain = syn(src, sport);
    let mut p = Vec::with_capacity(plain.len() + 4);
    p.extend_from_slice(&plain[..Ipv4Repr::HEADER_LEN]);
    p.extend_from_slice(&[1, 1, 1, 0]); // NOP NOP NOP EOL
    p.extend_from_slice(&plain[Ipv4Repr::HEADER_LEN..]);
    p[0] = 0x46;
    let len = u16::try_from(p.len()).unwrap();
    p[2..4].copy_from_slice(&len.to_be_bytes());
    let mut ip = Ipv4Packet::new_checked(&mut p[..]).unwrap();
    ip.fill_checksum();
    p
}

/// The IPv4 flow map of a router as bpftool reads it (the daemon names the
/// map's id in its stats): its capacity and the (source, source port) of each
/// entry.
fn flow_map(lab: &Lab, node: &str) -> (Vec<(Ipv4Addr, u16)>, u64) {
    let id = int(&lab.stats(node), &["fast_path", "maps", "flows_v4_id"]).to_string();
    let json = |args: &[&str]| -> serde_json::Value {
        let out = Command::new("bpftool")
            .arg("-j")
            .args(args)
            .output()
            .expect("run bpftool (apt-get install bpftool)");
        assert!(
            out.status.success(),
            "bpftool {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("bpftool JSON")
    };
    let info = json(&["map", "show", "id", &id]);
    assert_eq!(info["name"], "flows_v4", "{info}");
    let max = info["max_entries"].as_u64().expect("max_entries");
    let bytes = |v: &serde_json::Value| -> Vec<u8> {
        v.as_array()
            .map(|a| a.iter().map(|b| b.as_u64().unwrap_or(0) as u8).collect())
            .unwrap_or_default()
    };
    let keys = json(&["map", "dump", "id", &id])
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| {
            // With BTF, bpftool -j puts the decoded entry under "formatted".
            let key = if e["formatted"].is_null() {
                &e["key"]
            } else {
                &e["formatted"]["key"]
            };
            let src = bytes(&key["src"]);
            let port = bytes(&key["sport"]);
            assert!(src.len() == 4 && port.len() == 2, "bpftool entry {e}");
            (
                Ipv4Addr::new(src[0], src[1], src[2], src[3]),
                u16::from_be_bytes([port[0], port[1]]),
            )
        })
        .collect();
    (keys, max)
}

#[test]
fn the_kernel_forwards_pinned_flows_and_the_engine_keeps_the_rest() {
    let name = "the_kernel_forwards_pinned_flows_and_the_engine_keeps_the_rest";
    if !root_or_skip(name) {
        return;
    }
    // No shortcuts: every flow crosses a site, whose program re-addresses
    // the system SLR's tunnels; and a SYN-only flow stays SYN-only at the
    // system SLR (a shortcut would re-pin it there as established).
    let lab = Lab::up(
        "f",
        &[
            "--flow-capacity",
            &CAPACITY.to_string(),
            "--fast-path",
            "auto",
            "--no-shortcuts",
        ],
        "info",
    );
    for n in ROUTERS.iter().chain(&HOSTS) {
        // Routers load the program beside their start (auto).
        let path = || {
            lab.stats(n)["fast_path"]["path"]
                .as_str()
                .map(str::to_owned)
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while path().as_deref() != Some("bpf") {
            assert!(
                std::time::Instant::now() < deadline,
                "{n}: {}",
                value(&lab.stats(n), &["fast_path", "status"])
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let (_, max) = flow_map(&lab, "sys");
    assert_eq!(
        max, CAPACITY as u64,
        "the map is as large as the flow table"
    );

    // One UDP flow of many datagrams: the engine pins its first, the kernel
    // forwards the rest (sys encapsulates, the host decapsulates).
    const DATAGRAMS: i64 = 300;
    // The last packets of `lab up`'s own check may still be in flight.
    std::thread::sleep(Duration::from_secs(1));
    let before = lab.stats("sys");
    let sites_before: Vec<toml::Table> =
        ["site-a", "site-b"].iter().map(|n| lab.stats(n)).collect();
    let hosts_before: i64 = HOSTS.iter().map(|h| fp(&lab.stats(h), "host_decap")).sum();
    in_netns(&lab.ns("client"), || {
        let s = UdpSocket::bind((CLIENT, 40_000)).unwrap();
        for i in 0..DATAGRAMS {
            s.send_to(&i.to_be_bytes(), (VIP, 9)).unwrap();
            if i == 0 {
                // The pin reaches the kernel's map after the engine's batch.
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    })
    .unwrap();
    wait_for("the datagrams forwarded", Duration::from_secs(10), || {
        fp(&lab.stats("sys"), "fwd_encap") - fp(&before, "fwd_encap") >= DATAGRAMS - 1
    });
    let after = lab.stats("sys");
    let d = |path: &[&str]| int(&after, path) - int(&before, path);
    println!(
        "UDP flow of {DATAGRAMS}: kernel {} engine new {} pinned {}",
        fp(&after, "fwd_encap") - fp(&before, "fwd_encap"),
        d(&["engine", "forwarded_new"]),
        d(&["engine", "forwarded_pinned"])
    );
    assert_eq!(d(&["engine", "forwarded_new"]), 1, "the engine placed it");
    assert_eq!(d(&["engine", "packets"]), 1, "and saw nothing else");
    assert_eq!(
        d(&["engine", "forwarded_pinned"]),
        0,
        "the engine saw none of its later packets"
    );
    // The site re-addressed the rest: its engine saw the first (or first few,
    // until its map had the pin).
    let site = |f: &dyn Fn(&toml::Table) -> i64| -> i64 {
        let now: Vec<toml::Table> = ["site-a", "site-b"].iter().map(|n| lab.stats(n)).collect();
        now.iter().map(f).sum::<i64>() - sites_before.iter().map(f).sum::<i64>()
    };
    wait_for("the sites re-addressing", Duration::from_secs(5), || {
        site(&|t| fp(t, "fwd_retunnel")) >= DATAGRAMS - 3
    });
    let retunnelled = site(&|t| fp(t, "fwd_retunnel"));
    let site_engine = site(&|t| int(t, &["engine", "packets"]));
    println!("at the sites: kernel {retunnelled}, engine {site_engine}");
    assert!(
        retunnelled >= DATAGRAMS - 3,
        "sites re-addressed {retunnelled}"
    );
    assert!(site_engine <= 3, "the sites' engines saw {site_engine}");
    wait_for("the hosts decapsulating", Duration::from_secs(5), || {
        HOSTS
            .iter()
            .map(|h| fp(&lab.stats(h), "host_decap"))
            .sum::<i64>()
            - hosts_before
            >= DATAGRAMS - 1
    });

    // A flow that only saw a SYN expires (3 s in the lab): the engine asks the
    // kernel first, finds no activity, unpins it and the entry goes.
    let before = lab.stats("sys");
    let spoofed = (Ipv4Addr::new(198, 51, 100, 7), 5555);
    send_raw(&lab, &[syn(spoofed.0, spoofed.1)]);
    wait_for("the SYN pinned and mapped", Duration::from_secs(5), || {
        flow_map(&lab, "sys").0.contains(&spoofed)
    });
    wait_for(
        "the idle flow expired and its entry removed",
        Duration::from_secs(10),
        || !flow_map(&lab, "sys").0.contains(&spoofed),
    );
    wait_for("the expiry counted", Duration::from_secs(2), || {
        let t = lab.stats("sys");
        maps(&t, "idle_expired") > maps(&before, "idle_expired")
            && maps(&t, "unpins") > maps(&before, "unpins")
    });

    // Not the program's: fragments of the pinned UDP flow, a TCP header cut
    // short, IP options. Each reaches the engine and is counted there.
    const K: usize = 10;
    let udp = packet(&PacketSpec::udp(
        SocketAddr::from((CLIENT, 40_000)),
        SocketAddr::from((VIP, 9)),
        64,
    ));
    let first_fragment = with_frag(udp, 0x2000);
    let full = syn(CLIENT, 41_000);
    let short_tcp = {
        let mut p = full[..Ipv4Repr::HEADER_LEN + 8].to_vec();
        let len = u16::try_from(p.len()).unwrap();
        p[2..4].copy_from_slice(&len.to_be_bytes());
        let mut ip = Ipv4Packet::new_checked(&mut p[..]).unwrap();
        ip.fill_checksum();
        p
    };
    let before = lab.stats("sys");
    let mut burst = Vec::new();
    for i in 0..K {
        let port = 42_000 + u16::try_from(i).unwrap();
        burst.extend([
            first_fragment.clone(),
            short_tcp.clone(),
            with_options(CLIENT, port),
        ]);
    }
    send_raw(&lab, &burst);
    wait_for("the engine counting them", Duration::from_secs(10), || {
        int(&lab.stats("sys"), &["engine", "packets"]) - int(&before, &["engine", "packets"])
            >= 3 * K as i64
    });
    let after = lab.stats("sys");
    let d = |path: &[&str]| int(&after, path) - int(&before, path);
    let k = K as i64;
    assert_eq!(
        fp(&after, "pass_fragment") - fp(&before, "pass_fragment"),
        k
    );
    assert_eq!(
        fp(&after, "pass_malformed") - fp(&before, "pass_malformed"),
        k
    );
    assert_eq!(fp(&after, "pass_options") - fp(&before, "pass_options"), k);
    assert_eq!(d(&["engine", "drops", "malformed"]), k, "short TCP headers");
    // The fragments follow the flow's pin in the engine; the SYNs with options
    // are new flows it places.
    assert!(
        d(&["engine", "forwarded_pinned"]) + d(&["engine", "forwarded_new"]) >= 2 * k,
        "engine: {after:?}"
    );
    assert_eq!(fp(&after, "drop_error"), 0);

    // A SYN flood from more sources than the flow table holds: the engine
    // evicts, every eviction is an unpin, and the flow map never holds more
    // than the table's capacity.
    const FLOOD: usize = 20_000;
    let flood: Vec<Vec<u8>> = (0..FLOOD)
        .map(|i| {
            let src = Ipv4Addr::new(198, 51, 100, (i % 250) as u8 + 1);
            syn(src, 1024 + (i / 250) as u16)
        })
        .collect();
    let before = lab.stats("sys");
    for chunk in flood.chunks(500) {
        send_raw(&lab, chunk);
        std::thread::sleep(Duration::from_millis(2));
    }
    // A debug build reads part of a flood (the kernel drops the rest at the
    // TUN queue): wait until the pins stop, then check it overflowed.
    let mut last = -1;
    wait_for(
        "the flood's pins to settle",
        Duration::from_secs(30),
        || {
            std::thread::sleep(Duration::from_millis(300));
            let now = maps(&lab.stats("sys"), "pins");
            std::mem::replace(&mut last, now) == now
        },
    );
    assert!(
        maps(&lab.stats("sys"), "pins") - maps(&before, "pins") > CAPACITY,
        "the flood must exceed the flow table"
    );
    let entries = flow_map(&lab, "sys").0.len();
    let after = lab.stats("sys");
    println!(
        "SYN flood of {FLOOD}: {} pins, {} unpins, {} map entries (capacity {CAPACITY}), {} flows",
        maps(&after, "pins") - maps(&before, "pins"),
        maps(&after, "unpins") - maps(&before, "unpins"),
        entries,
        int(&after, &["engine", "flows"])
    );
    assert!(entries <= CAPACITY as usize, "{entries} entries");
    assert!(int(&after, &["engine", "flows"]) <= CAPACITY);
    assert_eq!(maps(&after, "errors"), 0);
    // Still forwarding: curl through the fast path.
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.ns("client"), "curl", "-s", "-m", "5"])
        .arg(format!("http://{VIP}/"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .ends_with(".lab")
    );
}
