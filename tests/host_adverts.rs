//! Namespace test of the host agent's server flow advertisements (DESIGN.md §5,
//! issue 7): a real `pronto host run` serves VIPs, a real TCP download from one
//! stops getting ACKs, and the agent must send an authenticated echo request from
//! the VIP to the client naming the flow and this host. IPv4 and IPv6.
//!
//! Two namespaces joined by a veth: `srv` (the host agent; VIPs 192.200.0.0/24
//! and 2001:db8:c8::/64 local through its tunnel endpoint; addresses 10.98.0.1
//! and fd98::1) and `cli` (the client, 10.98.0.2 and fd98::2, routes to the VIPs
//! via the server). The lost flow state of a router is modelled on the client
//! side: a blackhole route for the VIP swallows the client's ACKs (and its echo
//! replies), exactly what the server sees when a router on the path no longer
//! forwards the flow. No site router runs: the agent keeps retrying its
//! registration, which does not affect advertisements. The IPv4 server address
//! is the agent's default (its address toward the site router), the IPv6 one is
//! configured.
//!
//! Root-package test (`cargo test -p pronto --test host_adverts`). Needs root and
//! `ip`: prints SKIP otherwise, and fails when CI=true.
#![cfg(target_os = "linux")]
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failure is a test failure"
)]

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use router_core::classify::FlowKey;
use router_core::linux::in_netns;
use router_core::wire::flowad::{ECHO_PREFIX_LEN, FlowAdvert};
use router_core::wire::{
    Icmpv4Packet, Icmpv6Packet, Ipv4Packet, Ipv6Packet, icmpv4_type, icmpv6_type, ip_proto,
};
use signaling::{AdvertAuth, AdvertAuthConfig, AdvertKey};
use socket2::{Domain, Protocol, Socket, Type};

mod support;
use support::{int, root_or_skip};

const VIP: Ipv4Addr = Ipv4Addr::new(192, 200, 0, 10);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 2);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc8, 0, 0, 0, 0, 0x10);
const SERVER6: Ipv6Addr = Ipv6Addr::new(0xfd98, 0, 0, 0, 0, 0, 0, 1);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd98, 0, 0, 0, 0, 0, 0, 2);
const SECRET: [u8; 32] = [0x5a; 32];
/// Bytes of the download.
const TOTAL: usize = 3 << 20;
/// The server writes this much every [`PACE`]: slow enough that the download
/// is still running when the ACKs stop.
const CHUNK: usize = 16 << 10;
const PACE: Duration = Duration::from_millis(10);

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn pronto(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_pronto"))
        .args(args)
        .output()
        .expect("run pronto");
    assert!(
        out.status.success(),
        "pronto {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The two namespaces and the agent; torn down on drop (also on failure).
struct Setup {
    prefix: String,
    dir: PathBuf,
    agent: Option<Child>,
}

impl Setup {
    fn srv(&self) -> String {
        format!("{}-srv", self.prefix)
    }
    fn cli(&self) -> String {
        format!("{}-cli", self.prefix)
    }

    fn new() -> Self {
        let prefix = format!("ha{}", std::process::id() % 100_000);
        let dir = std::env::temp_dir().join(format!("pronto-host-adverts-{prefix}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let s = Self {
            prefix,
            dir,
            agent: None,
        };
        let (srv, cli) = (s.srv(), s.cli());
        let (vs, vc) = (format!("{}s", s.prefix), format!("{}c", s.prefix));
        ip(&["netns", "add", &srv]);
        ip(&["netns", "add", &cli]);
        ip(&["link", "add", &vs, "type", "veth", "peer", "name", &vc]);
        ip(&["link", "set", &vs, "netns", &srv]);
        ip(&["link", "set", &vc, "netns", &cli]);
        for (ns, dev, addr, addr6) in [(&srv, &vs, SERVER, SERVER6), (&cli, &vc, CLIENT, CLIENT6)] {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            let a6 = format!("{addr6}/64");
            ip(&["-n", ns, "addr", "add", &a6, "dev", dev, "nodad"]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        let (via, via6) = (SERVER.to_string(), SERVER6.to_string());
        ip(&["-n", &cli, "route", "add", "192.200.0.0/24", "via", &via]);
        ip(&["-n", &cli, "route", "add", "2001:db8:c8::/64", "via", &via6]);
        s
    }

    /// Write the CA, the key file and the configuration, and start the agent.
    fn start_agent(&mut self) -> PathBuf {
        let ca = self.dir.join("ca");
        let ca_s = ca.to_str().unwrap();
        pronto(&[
            "ca",
            "init",
            "--dir",
            ca_s,
            "--name",
            "adverts test CA",
            "--days",
            "2",
        ]);
        pronto(&["ca", "issue-peer", "--dir", ca_s, "--name", "h1.lab"]);
        let keys = self.dir.join("advert.keys");
        let hex: String = SECRET.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(&keys, format!("# the trust domain's advert key\n1:{hex}\n")).unwrap();
        let stats = self.dir.join("stats.toml");
        let config = self.dir.join("host.toml");
        std::fs::write(
            &config,
            format!(
                "name = \"h1.lab\"\nsubnets = [\"192.200.0.0/24\", \"2001:db8:c8::/64\"]\n\n\
                 [site]\naddress = \"{CLIENT}:7800\"\nname = \"site.lab\"\nreconnect_ms = 1000\n\n\
                 [tls]\ntrust_anchors = [{:?}]\ncert = {:?}\nkey = {:?}\n\n\
                 [tunnel]\ntun_name = \"ha-tun0\"\n\n\
                 [stats]\nfile = {stats:?}\ninterval_ms = 100\n\n\
                 [recovery]\nadvert_keys = {keys:?}\nkey_id = 1\nstall_after_ms = 500\n\
                 readvertise_after_ms = 1000\nscan_interval_ms = 100\n\
                 server_addresses = [\"{SERVER6}\"]\n",
                ca.join("ca.pem"),
                ca.join("peer-h1.lab.pem"),
                ca.join("peer-h1.lab.key"),
            ),
        )
        .unwrap();
        // `pronto host check` reads the key file and finds the signing key, and
        // names the field when the key is missing.
        pronto(&["host", "check", "--config", config.to_str().unwrap()]);
        let wrong = self.dir.join("wrong-key.toml");
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(&wrong, text.replace("key_id = 1", "key_id = 2")).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_pronto"))
            .args(["host", "check", "--config"])
            .arg(&wrong)
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("recovery.key_id = 2"));
        let log = std::fs::File::create(self.dir.join("agent.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.srv()])
            .arg(env!("CARGO_BIN_EXE_pronto"))
            .args(["host", "run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.agent = Some(child);
        stats
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(mut c) = self.agent.take() {
            // `ip netns exec` execs the agent: this pid is the agent's.
            if let Ok(pid) = i32::try_from(c.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [self.srv(), self.cli()] {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `[adverts].key` of the agent's stats file; panics when the key is absent
/// (or the file unreadable: wait for [`agent_started`] first).
fn stats_int(stats: &Path, key: &str) -> i64 {
    let text =
        std::fs::read_to_string(stats).unwrap_or_else(|e| panic!("{}: {e}", stats.display()));
    let t: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", stats.display()));
    int(&t, &["adverts", key])
}

/// Whether the agent has written its stats file yet (atomically, by rename).
fn agent_started(stats: &Path) -> bool {
    stats.exists()
}

fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

fn unix_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// One address family's case.
#[derive(Debug, Clone, Copy)]
struct Case {
    vip: IpAddr,
    client: IpAddr,
    server: IpAddr,
    port: u16,
}

impl Case {
    fn blackhole(&self) -> String {
        match self.vip {
            IpAddr::V4(a) => format!("{a}/32"),
            IpAddr::V6(a) => format!("{a}/128"),
        }
    }
}

/// What one case measured.
#[derive(Debug)]
struct Figures {
    first_advert: Duration,
    captured: usize,
    completed_after_restore: Duration,
}

/// A capture socket in the client namespace: every IP packet of `case`'s family
/// on any interface there (AF_PACKET, cooked: IP header first).
fn capture(cli: &str, case: Case) -> Socket {
    let ethertype: u16 = if case.vip.is_ipv4() { 0x0800 } else { 0x86dd };
    in_netns(cli, || {
        let s = Socket::new(
            Domain::PACKET,
            Type::DGRAM,
            Some(Protocol::from(i32::from(ethertype.to_be()))),
        )
        .unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        s
    })
    .unwrap()
}

/// The echo requests from the VIP the capture socket holds, with the offset of
/// their echo data.
fn echo_requests_from_vip(cap: &Socket, case: Case) -> Vec<(Vec<u8>, usize)> {
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok(n) = (&*cap).read(&mut buf) {
        let pkt = &buf[..n];
        let data = match case.vip {
            IpAddr::V4(vip) => {
                let Ok(ip4) = Ipv4Packet::new_checked(pkt) else {
                    continue;
                };
                let l4 = &pkt[ip4.header_len()..];
                let ok = ip4.src_addr() == vip
                    && ip4.protocol() == ip_proto::ICMP
                    && ip4.verify_checksum()
                    && Icmpv4Packet::new_checked(l4).is_ok_and(|i| {
                        i.msg_type() == icmpv4_type::ECHO_REQUEST && i.verify_checksum()
                    });
                ok.then_some(ip4.header_len() + 8)
            }
            IpAddr::V6(vip) => {
                let Ok(ip6) = Ipv6Packet::new_checked(pkt) else {
                    continue;
                };
                let IpAddr::V6(client) = case.client else {
                    continue;
                };
                let ok = ip6.src_addr() == vip
                    && ip6.dst_addr() == client
                    && ip6.next_header() == ip_proto::ICMPV6
                    && Icmpv6Packet::new_checked(&pkt[40..]).is_ok_and(|i| {
                        i.msg_type() == icmpv6_type::ECHO_REQUEST
                            && i.verify_checksum(&vip, &client)
                    });
                ok.then_some(40 + 8)
            }
        };
        if let Some(at) = data {
            out.push((pkt.to_vec(), at));
        }
    }
    out
}

/// The paced download: the server writes [`TOTAL`] bytes of [`pattern`].
fn serve(listener: &TcpListener) {
    let (mut s, _) = listener.accept().unwrap();
    let mut sent = 0;
    let mut chunk = vec![0u8; CHUNK];
    while sent < TOTAL {
        let n = CHUNK.min(TOTAL - sent);
        for (i, b) in chunk[..n].iter_mut().enumerate() {
            *b = pattern(sent + i);
        }
        s.write_all(&chunk[..n]).unwrap();
        sent += n;
        std::thread::sleep(PACE);
    }
}

/// Listen on `port` of every address: the VIPs are local through a `local`
/// route, which IPv6 does not let a socket bind to by address.
fn listen(srv: &str, v6: bool, port: u16) -> TcpListener {
    let any: SocketAddr = if v6 {
        (Ipv6Addr::UNSPECIFIED, port).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, port).into()
    };
    in_netns(srv, || TcpListener::bind(any)).unwrap().unwrap()
}

/// A download from `case.vip` whose ACKs stop after 256 KiB: the agent must
/// advertise exactly that flow, with a MAC the routers accept, and the download
/// completes intact once the path is back. An idle connection beside it is
/// never advertised.
fn stalled_download(setup: &Setup, stats: &Path, case: Case) -> Figures {
    let (srv, cli) = (setup.srv(), setup.cli());
    let listener = listen(&srv, case.vip.is_ipv6(), case.port);
    let server = std::thread::spawn(move || serve(&listener));
    let idle_listener = listen(&srv, case.vip.is_ipv6(), case.port + 1);
    let cap = capture(&cli, case);
    let (mut stream, idle) = in_netns(&cli, || {
        let d = SocketAddr::new(case.vip, case.port);
        let idle = SocketAddr::new(case.vip, case.port + 1);
        (
            TcpStream::connect_timeout(&d, Duration::from_secs(5)).unwrap(),
            TcpStream::connect_timeout(&idle, Duration::from_secs(5)).unwrap(),
        )
    })
    .unwrap();
    let (idle_server, _) = idle_listener.accept().unwrap();
    let client_port = stream.local_addr().unwrap().port();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut got = vec![0u8; 256 << 10];
    stream.read_exact(&mut got).unwrap();

    // The path loses the flow: the client's ACKs no longer reach the server.
    let blackhole = case.blackhole();
    ip(&["-n", &cli, "route", "add", "blackhole", &blackhole]);
    let lost_at = Instant::now();
    let reader = std::thread::spawn(move || {
        let mut rest = Vec::with_capacity(TOTAL);
        stream.read_to_end(&mut rest).unwrap();
        rest
    });

    let expect_key = FlowKey {
        proto: ip_proto::TCP,
        src: case.client,
        src_port: client_port,
        dst: case.vip,
        dst_port: case.port,
    };
    let mut adverts = Vec::new();
    let first_advert = wait_for("a flow advertisement", Duration::from_secs(15), || {
        adverts.extend(echo_requests_from_vip(&cap, case));
        (!adverts.is_empty()).then(|| lost_at.elapsed())
    });
    // The agent sees both connections on the VIP, and only one stalled.
    wait_for("both connections in a scan", Duration::from_secs(2), || {
        (stats_int(stats, "connections") >= 2 && stats_int(stats, "stalled_now") == 1).then_some(())
    });
    // Give a re-advertisement the chance to show up, then restore the path.
    std::thread::sleep(Duration::from_millis(1200));
    adverts.extend(echo_requests_from_vip(&cap, case));
    ip(&["-n", &cli, "route", "del", "blackhole", &blackhole]);
    let restored_at = Instant::now();

    let mut routers = AdvertAuth::new(
        vec![AdvertKey::new(1, &SECRET).unwrap()],
        AdvertAuthConfig::default(),
    );
    for (pkt, at) in &adverts {
        let adv = FlowAdvert::new_checked(&pkt[at + ECHO_PREFIX_LEN..]).unwrap();
        // Exactly the stalled flow, naming this host's tunnel address and the
        // VIP port, with a MAC the trust domain's routers accept.
        let f = routers.verify(&adv, unix_ms()).unwrap();
        assert_eq!(f.key, expect_key);
        assert_eq!(f.server, SocketAddr::new(case.server, case.port));
        assert_eq!(f.key_id, 1);
    }
    // A router with another key refuses it.
    let mut stranger = AdvertAuth::new(
        vec![AdvertKey::new(1, &[0xa5; 32]).unwrap()],
        AdvertAuthConfig::default(),
    );
    let (pkt, at) = &adverts[0];
    let adv = FlowAdvert::new_checked(&pkt[at + ECHO_PREFIX_LEN..]).unwrap();
    assert!(stranger.verify(&adv, unix_ms()).is_err());

    // The connection survives: every byte arrives, in order.
    let rest = reader.join().unwrap();
    let completed_after_restore = restored_at.elapsed();
    server.join().unwrap();
    got.extend_from_slice(&rest);
    assert_eq!(got.len(), TOTAL);
    assert!(
        got.iter().enumerate().all(|(i, b)| *b == pattern(i)),
        "data corrupted"
    );
    drop((idle_server, idle));
    Figures {
        first_advert,
        captured: adverts.len(),
        completed_after_restore,
    }
}

#[test]
fn a_download_without_acks_gets_an_authenticated_flow_advertisement() {
    if !root_or_skip("a_download_without_acks_gets_an_authenticated_flow_advertisement") {
        return;
    }
    let mut setup = Setup::new();
    let stats = setup.start_agent();
    // The tunnel endpoint makes the VIPs local, then the agent scans.
    wait_for("the agent's first scan", Duration::from_secs(10), || {
        (agent_started(&stats) && stats_int(&stats, "scans") > 0).then_some(())
    });
    let cases = [
        Case {
            vip: VIP.into(),
            client: CLIENT.into(),
            server: SERVER.into(),
            port: 8080,
        },
        Case {
            vip: VIP6.into(),
            client: CLIENT6.into(),
            server: SERVER6.into(),
            port: 8090,
        },
    ];
    let mut captured = 0;
    for case in cases {
        let f = stalled_download(&setup, &stats, case);
        captured += f.captured;
        println!(
            "host adverts ({}): first advertisement {:.0} ms after the ACKs stopped \
             (stall_after 500 ms, scan 100 ms); {} captured and verified while the path was \
             broken; the idle connection never advertised; download of {TOTAL} bytes \
             completed intact {:.0} ms after the path was restored",
            if case.vip.is_ipv4() { "IPv4" } else { "IPv6" },
            f.first_advert.as_secs_f64() * 1e3,
            f.captured,
            f.completed_after_restore.as_secs_f64() * 1e3,
        );
    }
    let sent = wait_for("the counters", Duration::from_secs(5), || {
        let n = stats_int(&stats, "adverts_sent");
        (n >= captured as i64).then_some(n)
    });
    let stalled_seen = stats_int(&stats, "stalled_seen");
    assert!(stalled_seen >= 2, "{stalled_seen}");
    assert_eq!(stats_int(&stats, "send_errors"), 0);
    assert_eq!(stats_int(&stats, "build_errors"), 0);
    assert_eq!(stats_int(&stats, "no_server_address"), 0);
    assert!(
        setup.log().contains("no progress: flow advertised"),
        "{}",
        setup.log()
    );
    println!(
        "host adverts: agent counted {sent} sent, {stalled_seen} stall episodes, \
         {} scans",
        stats_int(&stats, "scans")
    );
}
