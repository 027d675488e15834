//! Namespace tests of the kernel offload of a share tree (`linux::tc`): an HTB
//! hierarchy with u32 source-prefix filters on the egress of a veth, shaped to
//! 100 Mbit/s, carrying real TCP bulk flows from three VIP subnets. Needs root;
//! prints a skip otherwise (and fails when CI=true).
//!
//! ```text
//!   sender ns  s0 10.77.0.1/24 ------------ r0 10.77.0.2/24  receiver ns
//!              + 192.0.2.1/24      (egress of s0: htb 1:, 100 Mbit/s)
//!              + 198.51.100.1/24
//!              + 203.0.113.1/24
//! ```
//!
//! The harness is shared with `examples/htb_share.rs` (included by path).
#![cfg(all(target_os = "linux", feature = "linux"))]
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failure is a test failure"
)]

#[path = "lab/mod.rs"]
mod lab;

use router_core::VirtualSubnet;
use router_core::linux::in_netns;
use router_core::linux::tc::{
    ShareClassConfig, ShareTreeConfig, Tc, TcError, TcId, apply_share_tree, remove_share_tree,
};
use socket2::{Domain, Protocol, Socket, Type};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The shaped link rate.
pub(crate) const LINK_BPS: u64 = 100_000_000;
/// The shaped device, in the sender namespace.
pub(crate) const DEV: &str = "s0";
/// Class ids of the three tenants, in subnet order.
pub(crate) const CLASS_IDS: [u16; 3] = [0x10, 0x20, 0x30];
const RECEIVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const PORT: u16 = 5201;
/// One VIP per tenant subnet, used as the flows' source address.
pub(crate) const VIPS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(192, 0, 2, 1),
    Ipv4Addr::new(198, 51, 100, 1),
    Ipv4Addr::new(203, 0, 113, 1),
];

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// The /24 of tenant `i`.
pub(crate) fn vip_subnet(i: usize) -> VirtualSubnet {
    VirtualSubnet::new(IpAddr::V4(VIPS[i]), 24).unwrap()
}

/// Three leaves of `weights` under the root, each tenant's /24 mapped to its
/// leaf, unmatched traffic to the first.
pub(crate) fn tree(weights: [u32; 3]) -> ShareTreeConfig {
    let mut cfg = ShareTreeConfig::new(LINK_BPS).with_default(CLASS_IDS[0]);
    for i in 0..3 {
        cfg = cfg
            .with_class(ShareClassConfig::new(CLASS_IDS[i], weights[i]))
            .with_filter(vip_subnet(i), CLASS_IDS[i]);
    }
    cfg
}

/// Two namespaces joined by a veth; removed on drop.
#[derive(Debug)]
pub(crate) struct Pair {
    pub(crate) snd: String,
    pub(crate) rcv: String,
}

impl Pair {
    pub(crate) fn new(tag: &str) -> Self {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{tag}-{n}", std::process::id());
        let pair = Self {
            snd: format!("pronto-hs-{id}"),
            rcv: format!("pronto-hr-{id}"),
        };
        let (s, r) = (&pair.snd[..], &pair.rcv[..]);
        for ns in [s, r] {
            lab::ip(&["netns", "add", ns]);
            lab::ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        lab::ip(&[
            "link", "add", DEV, "netns", s, "type", "veth", "peer", "name", "r0", "netns", r,
        ]);
        lab::ip(&["-n", s, "addr", "add", "10.77.0.1/24", "dev", DEV]);
        lab::ip(&["-n", r, "addr", "add", "10.77.0.2/24", "dev", "r0"]);
        lab::ip(&["-n", s, "link", "set", DEV, "up"]);
        lab::ip(&["-n", r, "link", "set", "r0", "up"]);
        for (i, v) in VIPS.iter().enumerate() {
            lab::ip(&["-n", s, "addr", "add", &format!("{v}/24"), "dev", DEV]);
            let net = vip_subnet(i).to_string();
            lab::ip(&["-n", r, "route", "add", &net, "via", "10.77.0.1"]);
        }
        pair
    }

    /// A tc handle in the sender namespace.
    pub(crate) fn tc(&self) -> Tc {
        in_netns(&self.snd, Tc::open).unwrap().unwrap()
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.snd, &self.rcv] {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .status();
        }
    }
}

/// Bulk TCP flows from each tenant's VIP to the receiver, counting received
/// bytes per tenant. Stopped on drop.
pub(crate) struct Traffic {
    received: Arc<[AtomicU64; 3]>,
    stop: Arc<AtomicBool>,
    stop_class: Vec<Arc<AtomicBool>>,
    streams: Vec<(usize, TcpStream)>,
    threads: Vec<JoinHandle<()>>,
}

fn tenant_of(peer: IpAddr) -> Option<usize> {
    VIPS.iter().position(|v| IpAddr::V4(*v) == peer)
}

impl Traffic {
    /// Starts `flows` connections per tenant (a receiver thread per connection).
    pub(crate) fn start(pair: &Pair, flows: usize) -> Self {
        let received: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
        let stop = Arc::new(AtomicBool::new(false));
        let listener = in_netns(&pair.rcv, || TcpListener::bind((RECEIVER, PORT)))
            .unwrap()
            .unwrap();
        listener.set_nonblocking(true).unwrap();
        let mut threads = Vec::new();
        {
            let (received, stop) = (Arc::clone(&received), Arc::clone(&stop));
            threads.push(std::thread::spawn(move || {
                let mut readers = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let Ok((mut s, peer)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    let Some(t) = tenant_of(peer.ip()) else {
                        continue;
                    };
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_millis(200)))
                        .unwrap();
                    let (received, stop) = (Arc::clone(&received), Arc::clone(&stop));
                    readers.push(std::thread::spawn(move || {
                        let mut buf = vec![0u8; 1 << 16];
                        while !stop.load(Ordering::Relaxed) {
                            match s.read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) => {
                                    received[t].fetch_add(n as u64, Ordering::Relaxed);
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock
                                            | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => break,
                            }
                        }
                    }));
                }
                for r in readers {
                    let _ = r.join();
                }
            }));
        }
        let stop_class: Vec<_> = (0..3).map(|_| Arc::new(AtomicBool::new(false))).collect();
        let mut streams = Vec::new();
        for (t, vip) in VIPS.iter().enumerate() {
            for _ in 0..flows {
                let s = in_netns(&pair.snd, || {
                    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
                    s.bind(&SocketAddr::from((*vip, 0)).into())?;
                    s.connect_timeout(
                        &SocketAddr::from((RECEIVER, PORT)).into(),
                        Duration::from_secs(5),
                    )?;
                    Ok::<_, std::io::Error>(TcpStream::from(s))
                })
                .unwrap()
                .unwrap();
                s.set_write_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                let mut w = s.try_clone().unwrap();
                let (stop, mine) = (Arc::clone(&stop), Arc::clone(&stop_class[t]));
                threads.push(std::thread::spawn(move || {
                    let buf = vec![0x5a_u8; 1 << 16];
                    while !stop.load(Ordering::Relaxed) && !mine.load(Ordering::Relaxed) {
                        match w.write(&buf) {
                            Ok(_) => {}
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                ) => {}
                            Err(_) => break,
                        }
                    }
                }));
                streams.push((t, s));
            }
        }
        Self {
            received,
            stop,
            stop_class,
            streams,
            threads,
        }
    }

    /// Bytes received per tenant so far.
    pub(crate) fn received(&self) -> [u64; 3] {
        std::array::from_fn(|i| self.received[i].load(Ordering::Relaxed))
    }

    /// Stops tenant `t`'s flows.
    pub(crate) fn stop_tenant(&self, t: usize) {
        self.stop_class[t].store(true, Ordering::Relaxed);
        for (_, s) in self.streams.iter().filter(|(x, _)| *x == t) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Waits until every tenant in `active` has received data and `warmup`
    /// has passed, then returns the bytes received per tenant over `window`.
    pub(crate) fn measure(
        &self,
        active: [bool; 3],
        warmup: Duration,
        window: Duration,
    ) -> [u64; 3] {
        let start = self.received();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let now = self.received();
            if (0..3).all(|i| !active[i] || now[i] > start[i]) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "tenants {active:?} moved no data: {start:?} -> {now:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(warmup);
        let a = self.received();
        std::thread::sleep(window);
        let b = self.received();
        std::array::from_fn(|i| b[i] - a[i])
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for (_, s) in &self.streams {
            let _ = s.shutdown(Shutdown::Both);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Each entry's fraction of the sum.
pub(crate) fn shares(bytes: [u64; 3]) -> [f64; 3] {
    let total = bytes.iter().sum::<u64>().max(1) as f64;
    std::array::from_fn(|i| bytes[i] as f64 / total)
}

/// A `tc` rate like `20Mbit` or `37500Kbit` in bits/s.
pub(crate) fn parse_tc_rate(s: &str) -> Option<u64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = s.split_at(split);
    let mult = match unit {
        "bit" => 1.0,
        "Kbit" => 1e3,
        "Mbit" => 1e6,
        "Gbit" => 1e9,
        "Tbit" => 1e12,
        _ => return None,
    };
    Some((num.parse::<f64>().ok()? * mult).round() as u64)
}

/// `(class, parent, rate, ceil)` of each HTB class in `tc class show` output.
pub(crate) fn tc_classes(text: &str) -> Vec<(String, String, u64, u64)> {
    text.lines()
        .filter(|l| l.starts_with("class htb "))
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let after = |k: &str| w.iter().position(|x| *x == k).map(|i| w[i + 1]);
            let parent = if w.get(3) == Some(&"root") {
                "root".to_owned()
            } else {
                after("parent")?.to_owned()
            };
            Some((
                w[2].to_owned(),
                parent,
                parse_tc_rate(after("rate")?)?,
                parse_tc_rate(after("ceil")?)?,
            ))
        })
        .collect()
}

fn assert_shares(what: &str, got: [f64; 3], want: [f64; 3]) {
    for i in 0..3 {
        assert!(
            (got[i] - want[i]).abs() <= 0.05,
            "{what}: tenant {i} got {:.3}, want {:.3} (all {got:.3?})",
            got[i],
            want[i]
        );
    }
}

#[test]
fn htb_offload_shares_a_shaped_link_by_weight() {
    if !lab::root_or_skip("htb_offload_shares_a_shaped_link_by_weight") {
        return;
    }
    let pair = Pair::new("share");
    let tc = pair.tc();
    let r = apply_share_tree(&tc, DEV, &tree([20, 30, 50])).unwrap();
    assert!(r.qdisc_created, "{r:?}");
    assert_eq!((r.classes_created, r.filters_installed), (4, 4), "{r:?}");

    // The kernel holds the tree: `tc` sees the rates, and so does a dump.
    let shown = lab::exec(&pair.snd, &["tc", "-s", "class", "show", "dev", DEV]);
    let mut classes = tc_classes(&shown);
    classes.sort();
    let s = |x: &str| x.to_owned();
    assert_eq!(
        classes,
        vec![
            (s("1:1"), s("root"), LINK_BPS, LINK_BPS),
            (s("1:10"), s("1:1"), 20_000_000, LINK_BPS),
            (s("1:20"), s("1:1"), 30_000_000, LINK_BPS),
            (s("1:30"), s("1:1"), 50_000_000, LINK_BPS),
        ],
        "{shown}"
    );
    let filters = lab::exec(&pair.snd, &["tc", "filter", "show", "dev", DEV]);
    for want in [
        "match c0000200/ffffff00 at 12",
        "match c6336400/ffffff00 at 12",
        "match cb007100/ffffff00 at 12",
        "*flowid 1:30",
    ] {
        assert!(filters.contains(want), "{want} missing in\n{filters}");
    }
    let dumped = tc.class_stats(DEV).unwrap();
    let quanta: Vec<_> = CLASS_IDS
        .iter()
        .map(|&id| {
            dumped
                .iter()
                .find(|c| c.id == TcId::new(1, id))
                .unwrap()
                .quantum
        })
        .collect();
    assert_eq!(
        quanta,
        vec![65_536, 98_304, 163_840],
        "quanta proportional to rate, the smallest the veth's gso_max_size"
    );

    // Applying the same tree again changes nothing.
    let r = apply_share_tree(&tc, DEV, &tree([20, 30, 50])).unwrap();
    assert!(!r.qdisc_created);
    assert_eq!(
        (
            r.classes_created,
            r.classes_changed,
            r.classes_unchanged,
            r.filters_installed
        ),
        (0, 0, 4, 0),
        "{r:?}"
    );

    let traffic = Traffic::start(&pair, 4);
    let warm = Duration::from_secs(2);
    let window = Duration::from_secs(4);
    let before = tc.class_stats(DEV).unwrap();
    let bytes = traffic.measure([true; 3], warm, window);
    let got = shares(bytes);
    let goodput = bytes.iter().sum::<u64>() as f64 * 8.0 / window.as_secs_f64();
    eprintln!(
        "HTB shares at weights 20/30/50: {got:.3?}, goodput {:.1} Mbit/s",
        goodput / 1e6
    );
    // Shaped: TCP goodput stays under the link rate (headers are not counted).
    assert!(goodput <= LINK_BPS as f64 * 1.01, "{goodput} bit/s");
    assert!(goodput >= LINK_BPS as f64 * 0.5, "{goodput} bit/s");
    assert_shares("20/30/50", got, [0.2, 0.3, 0.5]);

    // New weights change the classes in place, under load: counters go on.
    let r = apply_share_tree(&tc, DEV, &tree([50, 30, 20])).unwrap();
    assert!(!r.qdisc_created && !r.rebuilt, "{r:?}");
    assert_eq!(
        (
            r.classes_created,
            r.classes_changed,
            r.classes_deleted,
            r.filters_installed
        ),
        (0, 2, 0, 0),
        "the 30 keeps its rate: {r:?}"
    );
    let after = tc.class_stats(DEV).unwrap();
    for id in CLASS_IDS {
        let b = before.iter().find(|c| c.id.minor() == id).unwrap();
        let a = after.iter().find(|c| c.id.minor() == id).unwrap();
        assert!(
            a.bytes > b.bytes,
            "class {id:x} counters were reset: {b:?} -> {a:?}"
        );
    }
    let got = shares(traffic.measure([true; 3], warm, window));
    eprintln!("HTB shares at weights 50/30/20: {got:.3?}");
    assert_shares("50/30/20", got, [0.5, 0.3, 0.2]);

    // An idle tenant's share is lent to the others in proportion to their
    // rates (with quanta below the GSO packet size it would be split by
    // packets: 0.48/0.52 here).
    let r = apply_share_tree(&tc, DEV, &tree([20, 30, 50])).unwrap();
    assert_eq!(r.classes_changed, 2, "{r:?}");
    traffic.stop_tenant(2);
    let got = shares(traffic.measure([true, true, false], warm, window));
    eprintln!("HTB shares at weights 20/30/(idle 50): {got:.3?}");
    assert_shares("20/30/idle", got, [0.4, 0.6, 0.0]);
    drop(traffic);

    assert!(remove_share_tree(&tc, DEV).unwrap());
    let q = lab::exec(&pair.snd, &["tc", "qdisc", "show", "dev", DEV]);
    assert!(!q.contains("htb"), "{q}");
    assert!(
        !remove_share_tree(&tc, DEV).unwrap(),
        "nothing left to remove"
    );
    assert_eq!(tc.counters().apply_failures, 0);
}

#[test]
fn htb_offload_swaps_filters_restructures_and_names_failures() {
    if !lab::root_or_skip("htb_offload_swaps_filters_restructures_and_names_failures") {
        return;
    }
    let pair = Pair::new("upd");
    let tc = pair.tc();
    let r = apply_share_tree(&tc, DEV, &tree([20, 30, 50])).unwrap();
    assert_eq!(r.filter_band, 10);

    // Remap a prefix and add an IPv6 one: the new filters go to the other band
    // before the old band goes.
    let mut cfg = tree([20, 30, 50]);
    cfg.filters[0].class = CLASS_IDS[1];
    cfg = cfg.with_filter("2001:db8:1::/48".parse().unwrap(), CLASS_IDS[2]);
    let r = apply_share_tree(&tc, DEV, &cfg).unwrap();
    assert_eq!((r.filter_band, r.filters_installed), (20, 5), "{r:?}");
    assert_eq!((r.classes_created, r.classes_changed), (0, 0), "{r:?}");
    let filters = lab::exec(&pair.snd, &["tc", "filter", "show", "dev", DEV]);
    assert!(!filters.contains("pref 10 "), "old band left:\n{filters}");
    assert!(filters.contains("protocol ipv6 pref 21"), "{filters}");
    assert!(
        filters.contains("match 20010db8/ffffffff at 8"),
        "{filters}"
    );
    let again = apply_share_tree(&tc, DEV, &cfg).unwrap();
    assert_eq!((again.filter_band, again.filters_installed), (20, 0));

    // The kernel classifies by them: datagrams from the remapped IPv4 subnet
    // land in 1:20, from the IPv6 one in 1:30, none in the default 1:10.
    lab::ip(&[
        "-n",
        &pair.snd,
        "addr",
        "add",
        "2001:db8:1::1/64",
        "dev",
        DEV,
        "nodad",
    ]);
    lab::ip(&[
        "-n",
        &pair.rcv,
        "addr",
        "add",
        "2001:db8:1::2/64",
        "dev",
        "r0",
        "nodad",
    ]);
    let packets = |id: u16| {
        tc.class_stats(DEV)
            .unwrap()
            .iter()
            .find(|c| c.id == TcId::new(1, id))
            .unwrap()
            .packets
    };
    let before = CLASS_IDS.map(packets);
    const N: u64 = 50;
    in_netns(&pair.snd, || {
        let send = |from: SocketAddr, to: SocketAddr| {
            let s = std::net::UdpSocket::bind(from).unwrap();
            for _ in 0..N {
                s.send_to(&[0u8; 100], to).unwrap();
            }
        };
        send(
            SocketAddr::from((VIPS[0], 0)),
            SocketAddr::from((RECEIVER, 9)),
        );
        let v6 = |a: &str| a.parse::<std::net::Ipv6Addr>().unwrap();
        send(
            SocketAddr::from((v6("2001:db8:1::1"), 0)),
            SocketAddr::from((v6("2001:db8:1::2"), 9)),
        );
    })
    .unwrap();
    let after = CLASS_IDS.map(packets);
    let moved: Vec<u64> = (0..3).map(|i| after[i] - before[i]).collect();
    assert!(moved[0] < N, "default class got them: {moved:?}");
    assert!(moved[1] >= N, "IPv4 remap: {moved:?}");
    assert!(moved[2] >= N, "IPv6 prefix: {moved:?}");

    // Nest a tenant under a new parent: HTB cannot move a class, so the qdisc
    // is rebuilt; a dropped class is deleted.
    let nested = ShareTreeConfig::new(LINK_BPS)
        .with_class(
            ShareClassConfig::new(0x40, 50)
                .with_child(ShareClassConfig::new(CLASS_IDS[0], 1))
                .with_child(ShareClassConfig::new(CLASS_IDS[1], 3)),
        )
        .with_class(ShareClassConfig::new(CLASS_IDS[2], 50))
        .with_filter(vip_subnet(0), CLASS_IDS[0])
        .with_filter(vip_subnet(1), CLASS_IDS[1])
        .with_default(CLASS_IDS[2]);
    let r = apply_share_tree(&tc, DEV, &nested).unwrap();
    assert!(r.rebuilt && r.qdisc_created, "{r:?}");
    let shown = lab::exec(&pair.snd, &["tc", "class", "show", "dev", DEV]);
    let classes = tc_classes(&shown);
    let find = |c: &str| classes.iter().find(|x| x.0 == c).cloned();
    assert_eq!(find("1:10").unwrap().1, "1:40", "{shown}");
    assert_eq!(find("1:10").unwrap().2, 12_500_000, "{shown}");
    assert_eq!(find("1:20").unwrap().2, 37_500_000, "{shown}");
    // Flatten again minus one tenant: 1:40 and 1:10 go.
    let flat = ShareTreeConfig::new(LINK_BPS)
        .with_class(ShareClassConfig::new(CLASS_IDS[1], 1))
        .with_class(ShareClassConfig::new(CLASS_IDS[2], 1))
        .with_filter(vip_subnet(1), CLASS_IDS[1])
        .with_default(CLASS_IDS[2]);
    let r = apply_share_tree(&tc, DEV, &flat).unwrap();
    assert!(r.rebuilt, "1:20 moved back under 1:1: {r:?}");
    let shown = lab::exec(&pair.snd, &["tc", "class", "show", "dev", DEV]);
    assert_eq!(tc_classes(&shown).len(), 3, "{shown}");
    // Dropping a leaf without moving anything deletes it in place.
    let one = ShareTreeConfig::new(LINK_BPS)
        .with_class(ShareClassConfig::new(CLASS_IDS[2], 1))
        .with_default(CLASS_IDS[2]);
    let r = apply_share_tree(&tc, DEV, &one).unwrap();
    assert!(!r.rebuilt, "{r:?}");
    assert_eq!(r.classes_deleted, 1, "{r:?}");

    // Failures name what failed.
    let e = apply_share_tree(&tc, "no-such-dev0", &one).unwrap_err();
    assert!(matches!(e, TcError::NoSuchLink { .. }), "{e}");
    let e = apply_share_tree(&tc, DEV, &one.clone().with_default(0x99)).unwrap_err();
    assert!(matches!(e, TcError::Config { .. }), "{e}");
    assert!(e.to_string().contains("1:99"), "{e}");
    // The kernel refuses to delete a class another tool's filter still uses:
    // the error names the class and carries EBUSY.
    let tc_cmd = |args: &[&str]| lab::exec(&pair.snd, &[&["tc"][..], args].concat());
    tc_cmd(&[
        "class", "add", "dev", DEV, "parent", "1:1", "classid", "1:50", "htb", "rate", "1mbit",
    ]);
    tc_cmd(&[
        "filter",
        "add",
        "dev",
        DEV,
        "parent",
        "1:",
        "prio",
        "5",
        "protocol",
        "ip",
        "u32",
        "match",
        "ip",
        "src",
        "10.9.0.0/16",
        "flowid",
        "1:50",
    ]);
    let e = apply_share_tree(&tc, DEV, &one).unwrap_err();
    assert_eq!(e.errno(), Some(nix::libc::EBUSY), "{e}");
    assert!(e.to_string().contains("delete class 1:50 on s0"), "{e}");
    tc_cmd(&["filter", "del", "dev", DEV, "parent", "1:", "prio", "5"]);
    assert_eq!(apply_share_tree(&tc, DEV, &one).unwrap().classes_deleted, 1);
    // A foreign root qdisc is replaced.
    tc_cmd(&[
        "qdisc", "replace", "dev", DEV, "root", "handle", "2:", "tbf", "rate", "1mbit", "burst",
        "10k", "latency", "50ms",
    ]);
    let r = apply_share_tree(&tc, DEV, &one).unwrap();
    assert!(r.qdisc_created && r.classes_created == 2, "{r:?}");
    let c = tc.counters();
    assert_eq!((c.config_errors, c.apply_failures), (1, 3), "{c:?}");
    assert!(c.rebuilds >= 2 && c.filter_swaps >= 1, "{c:?}");
}
