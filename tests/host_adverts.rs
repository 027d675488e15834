//! Namespace test of the host agent's server flow advertisements (DESIGN.md §5,
//! issue 7): a real `pronto host run` serves a VIP, a real TCP download from it
//! stops getting ACKs, and the agent must send an authenticated echo request from
//! the VIP to the client naming the flow and this host.
//!
//! Two namespaces joined by a veth: `srv` (the host agent, VIP 192.200.0.0/24
//! local through its tunnel endpoint, address 10.98.0.1) and `cli` (the client,
//! 10.98.0.2, route to the VIPs via the server). The lost flow state of a router
//! is modelled on the client side: a blackhole route for the VIP swallows the
//! client's ACKs (and its echo replies), exactly what the server sees when a
//! router on the path no longer forwards the flow. No site router runs: the agent
//! keeps retrying its registration, which does not affect advertisements.
//!
//! Root-package test (`cargo test -p pronto --test host_adverts`). Needs root and
//! `ip`: prints SKIP otherwise, and fails when CI=true.
#![cfg(target_os = "linux")]
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failure is a test failure"
)]

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use router_core::classify::FlowKey;
use router_core::linux::in_netns;
use router_core::wire::flowad::{ECHO_PREFIX_LEN, FlowAdvert};
use router_core::wire::{Icmpv4Packet, Ipv4Packet, icmpv4_type, ip_proto};
use signaling::{AdvertAuth, AdvertAuthConfig, AdvertKey};
use socket2::{Domain, Protocol, Socket, Type};

const VIP: Ipv4Addr = Ipv4Addr::new(192, 200, 0, 10);
const PORT: u16 = 8080;
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 2);
const SECRET: [u8; 32] = [0x5a; 32];
/// Bytes of the download.
const TOTAL: usize = 3 << 20;
/// The server writes this much every [`PACE`]: slow enough that the download
/// is still running when the ACKs stop.
const CHUNK: usize = 16 << 10;
const PACE: Duration = Duration::from_millis(10);

fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    let msg = format!("SKIP {test}: needs root (network namespaces, TUN, raw sockets)");
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{msg}; CI=true runs as root, so a skip is a failure"
    );
    eprintln!("{msg}");
    false
}

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
        for (ns, dev, addr) in [(&srv, &vs, SERVER), (&cli, &vc, CLIENT)] {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        ip(&[
            "-n",
            &cli,
            "route",
            "add",
            "192.200.0.0/24",
            "via",
            &SERVER.to_string(),
        ]);
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
                "name = \"h1.lab\"\nsubnets = [\"192.200.0.0/24\"]\n\n\
                 [site]\naddress = \"{CLIENT}:7800\"\nname = \"site.lab\"\nreconnect_ms = 1000\n\n\
                 [tls]\ntrust_anchors = [{:?}]\ncert = {:?}\nkey = {:?}\n\n\
                 [tunnel]\ntun_name = \"ha-tun0\"\n\n\
                 [stats]\nfile = {stats:?}\ninterval_ms = 100\n\n\
                 [recovery]\nadvert_keys = {keys:?}\nkey_id = 1\nstall_after_ms = 500\n\
                 readvertise_after_ms = 1000\nscan_interval_ms = 100\n",
                ca.join("ca.pem"),
                ca.join("peer-h1.lab.pem"),
                ca.join("peer-h1.lab.key"),
            ),
        )
        .unwrap();
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

fn stats_int(stats: &Path, key: &str) -> i64 {
    let text = std::fs::read_to_string(stats).unwrap_or_default();
    let t: toml::Table = text.parse().unwrap_or_default();
    t.get("adverts")
        .and_then(|a| a.get(key))
        .and_then(toml::Value::as_integer)
        .unwrap_or(-1)
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

/// Every echo request from the VIP the capture socket holds, as received.
fn echo_requests_from_vip(cap: &Socket) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok(n) = (&*cap).read(&mut buf) {
        let pkt = &buf[..n];
        let Ok(ip4) = Ipv4Packet::new_checked(pkt) else {
            continue;
        };
        if ip4.src_addr() != VIP || ip4.protocol() != ip_proto::ICMP {
            continue;
        }
        let Ok(icmp) = Icmpv4Packet::new_checked(&pkt[ip4.header_len()..]) else {
            continue;
        };
        if icmp.msg_type() == icmpv4_type::ECHO_REQUEST {
            out.push(pkt.to_vec());
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

#[test]
fn a_download_without_acks_gets_an_authenticated_flow_advertisement() {
    if !root_or_skip("a_download_without_acks_gets_an_authenticated_flow_advertisement") {
        return;
    }
    let mut setup = Setup::new();
    let stats = setup.start_agent();
    let (srv, cli) = (setup.srv(), setup.cli());
    // The tunnel endpoint makes the VIPs local; then the server can bind one.
    let listener = wait_for("the VIP to become local", Duration::from_secs(10), || {
        in_netns(&srv, || {
            TcpListener::bind(SocketAddrV4::new(VIP, PORT)).ok()
        })
        .unwrap()
    });
    wait_for("the agent's first scan", Duration::from_secs(10), || {
        (stats_int(&stats, "scans") > 0).then_some(())
    });
    let server = std::thread::spawn(move || serve(&listener));
    // A second, idle connection on the VIP: open, nothing outstanding, so never
    // stalled and never advertised.
    let idle_listener = in_netns(&srv, || TcpListener::bind(SocketAddrV4::new(VIP, PORT + 1)))
        .unwrap()
        .unwrap();

    let cap = in_netns(&cli, || {
        let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        s
    })
    .unwrap();
    let (mut stream, idle) = in_netns(&cli, || {
        let d = SocketAddr::from((VIP, PORT));
        let idle = SocketAddr::from((VIP, PORT + 1));
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
    let blackhole = format!("{VIP}/32");
    ip(&["-n", &cli, "route", "add", "blackhole", &blackhole]);
    let lost_at = Instant::now();
    let reader = std::thread::spawn(move || {
        let mut rest = Vec::with_capacity(TOTAL);
        stream.read_to_end(&mut rest).unwrap();
        rest
    });

    let expect_key = FlowKey {
        proto: ip_proto::TCP,
        src: IpAddr::V4(CLIENT),
        src_port: client_port,
        dst: IpAddr::V4(VIP),
        dst_port: PORT,
    };
    let mut routers = AdvertAuth::new(
        vec![AdvertKey::new(1, &SECRET).unwrap()],
        AdvertAuthConfig::default(),
    );
    let mut adverts = Vec::new();
    let first = wait_for("a flow advertisement", Duration::from_secs(15), || {
        adverts.extend(echo_requests_from_vip(&cap));
        (!adverts.is_empty()).then(|| lost_at.elapsed())
    });
    // Give a re-advertisement the chance to show up, then restore the path.
    std::thread::sleep(Duration::from_millis(1200));
    adverts.extend(echo_requests_from_vip(&cap));
    ip(&["-n", &cli, "route", "del", "blackhole", &blackhole]);
    let restored_at = Instant::now();

    for pkt in &adverts {
        let ip4 = Ipv4Packet::new_checked(&pkt[..]).unwrap();
        assert_eq!((ip4.src_addr(), ip4.dst_addr()), (VIP, CLIENT));
        assert!(ip4.verify_checksum());
        let at = ip4.header_len() + 8 + ECHO_PREFIX_LEN;
        let adv = FlowAdvert::new_checked(&pkt[at..]).unwrap();
        // Exactly the stalled flow, naming this host's tunnel address and the
        // VIP port, with a MAC the trust domain's routers accept.
        let f = routers.verify(&adv, unix_ms()).unwrap();
        assert_eq!(f.key, expect_key);
        assert_eq!(f.server, SocketAddr::from((SERVER, PORT)));
        assert_eq!(f.key_id, 1);
    }
    // A router with another key refuses it.
    let mut stranger = AdvertAuth::new(
        vec![AdvertKey::new(1, &[0xa5; 32]).unwrap()],
        AdvertAuthConfig::default(),
    );
    let at = 20 + 8 + ECHO_PREFIX_LEN;
    assert!(
        stranger
            .verify(
                &FlowAdvert::new_checked(&adverts[0][at..]).unwrap(),
                unix_ms()
            )
            .is_err()
    );

    // The connection survives: every byte arrives, in order.
    let rest = reader.join().unwrap();
    let recovered = restored_at.elapsed();
    server.join().unwrap();
    got.extend_from_slice(&rest);
    assert_eq!(got.len(), TOTAL);
    assert!(
        got.iter().enumerate().all(|(i, b)| *b == pattern(i)),
        "data corrupted"
    );

    let sent = wait_for("the counters", Duration::from_secs(5), || {
        let n = stats_int(&stats, "adverts_sent");
        (n >= adverts.len() as i64).then_some(n)
    });
    let stalled_seen = stats_int(&stats, "stalled_seen");
    assert!(stalled_seen >= 1);
    assert_eq!(stats_int(&stats, "send_errors"), 0);
    assert!(
        stats_int(&stats, "connections") >= 1,
        "the idle connection is seen"
    );
    drop(idle_server);
    drop(idle);
    assert_eq!(stats_int(&stats, "build_errors"), 0);
    assert!(
        setup.log().contains("no progress: flow advertised"),
        "{}",
        setup.log()
    );
    println!(
        "host adverts: first advertisement {:.0} ms after the ACKs stopped (stall_after 500 ms, \
         scan 100 ms); {} captured and verified while the path was broken ({:.1} s), agent \
         counted {sent} sent, {stalled_seen} stall episode(s), idle connection never advertised; \
         download of {} bytes completed intact {:.0} ms after the path was restored",
        first.as_secs_f64() * 1e3,
        adverts.len(),
        first.as_secs_f64() + 1.2,
        TOTAL,
        recovered.as_secs_f64() * 1e3,
    );
}
