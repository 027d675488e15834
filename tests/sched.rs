//! A researcher's scheduler in a running router (root): `pronto router run`
//! with a `[scheduler]` egress stage on its link to a receiver at 100 Mbit/s,
//! three TCP classes by source address. The signed `sfq` module, bound from the
//! configuration, shares the link 20/30/50 within 3 points over 10 s; `pronto
//! module bind strict_priority --role scheduler` under traffic gives the
//! high-priority class at least 90% within a second; no connection fails and
//! every packet queued at the swap is sent.
//!
//! This file belongs to the root package (`cargo test -p pronto --test sched`).
//! Needs root: prints SKIP otherwise, and fails when CI=true.
#![cfg(target_os = "linux")]
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failure is a test failure"
)]

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use router_core::linux::in_netns;

mod support;
use support::{pronto, root_or_skip};

const SENDERS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(10, 77, 0, 1),
    Ipv4Addr::new(10, 77, 0, 2),
    Ipv4Addr::new(10, 77, 0, 3),
];
const RECEIVER: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 2);
const PORT: u16 = 5201;
const MGMT: &str = "https://127.0.0.1:7900";
/// Weights of the three classes (class 1 = SENDERS[0], ...).
const WEIGHTS: [u64; 3] = [20, 30, 50];

/// Three namespaces (sender, router, receiver), the router daemon, its CA;
/// torn down on drop.
struct Topology {
    prefix: String,
    dir: PathBuf,
    router: Option<Child>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Topology {
    fn up() -> Self {
        let prefix = format!("sq{}", std::process::id() % 100_000);
        let dir = std::env::temp_dir().join(format!("pronto-sched-{prefix}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let t = Self {
            prefix,
            dir,
            router: None,
        };
        let (snd, rtr, rcv) = (t.ns("snd"), t.ns("rtr"), t.ns("rcv"));
        for ns in [&snd, &rtr, &rcv] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&[
            "-n", &snd, "link", "add", "tortr", "type", "veth", "peer", "name", "fromsnd", "netns",
            &rtr,
        ]);
        ip(&[
            "-n", &rtr, "link", "add", "torcv", "type", "veth", "peer", "name", "fromrtr", "netns",
            &rcv,
        ]);
        for (i, a) in SENDERS.iter().enumerate() {
            let addr = format!("{a}/24");
            ip(&["-n", &snd, "addr", "add", &addr, "dev", "tortr"]);
            if i == 0 {
                ip(&["-n", &snd, "link", "set", "tortr", "up"]);
            }
        }
        ip(&[
            "-n",
            &rtr,
            "addr",
            "add",
            "10.77.0.254/24",
            "dev",
            "fromsnd",
        ]);
        ip(&["-n", &rtr, "addr", "add", "10.78.0.1/24", "dev", "torcv"]);
        ip(&["-n", &rcv, "addr", "add", "10.78.0.2/24", "dev", "fromrtr"]);
        for (ns, dev) in [(&rtr, "fromsnd"), (&rtr, "torcv"), (&rcv, "fromrtr")] {
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        ip(&["-n", &snd, "route", "add", "default", "via", "10.77.0.254"]);
        ip(&["-n", &rcv, "route", "add", "default", "via", "10.78.0.1"]);
        ip(&[
            "netns",
            "exec",
            &rtr,
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.ip_forward=1",
        ]);
        t
    }

    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca")
    }

    /// The CA, certificates, signed modules and the router's configuration.
    fn configure(&self) -> PathBuf {
        let ca = self.ca();
        run(pronto()
            .args(["ca", "init", "--dir"])
            .arg(&ca)
            .args(["--name", "Sched CA"]));
        for (name, role) in [("sys.test", "router"), ("operator.test", "operator")] {
            run(pronto()
                .args(["ca", "issue-peer", "--dir"])
                .arg(&ca)
                .args(["--name", name, "--role", role]));
        }
        for module in ["sfq", "strict_priority"] {
            sign(&ca, module, &self.dir.join(format!("{module}.signed.wasm")));
        }
        let classes: String = SENDERS
            .iter()
            .zip(WEIGHTS)
            .enumerate()
            .map(|(i, (addr, weight))| {
                // Class 1 (the smallest share) has the highest priority.
                format!(
                    "[[scheduler.class]]\nid = {}\nweight = {weight}\npriority = {i}\nsources = [\"{addr}/32\"]\n\n",
                    i + 1
                )
            })
            .collect();
        let text = format!(
            "level = \"system\"\nname = \"sys.test\"\nlisten = \"10.78.0.1:7800\"\n\n\
             [tunnel]\nlocal_v4 = \"10.78.0.1\"\n\n\
             [tls]\ntrust_anchors = [\"ca/ca.pem\"]\ncert = \"ca/peer-sys.test.pem\"\nkey = \"ca/peer-sys.test.key\"\n\n\
             [management]\nlisten = \"127.0.0.1:7900\"\n\n\
             [modules]\ntrust_anchors = [\"ca/ca.pem\"]\n\
             files = [\"sfq.signed.wasm\", \"strict_priority.signed.wasm\"]\nscheduler = \"sfq\"\n\n\
             [scheduler]\nlink = \"torcv\"\nrate_mbit = 100\ndefault_class = 1\n\n{classes}"
        );
        let conf = self.dir.join("router.toml");
        std::fs::write(&conf, text).unwrap();
        conf
    }

    fn start_router(&mut self, conf: &Path) {
        let log = std::fs::File::create(self.dir.join("router.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns("rtr")])
            .arg(env!("CARGO_BIN_EXE_pronto"))
            .args(["router", "run", "--config"])
            .arg(conf)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.router = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.cli(&["query", "queues", "--json"], &[]);
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the router never answered: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(self.dir.join("router.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `pronto CMD --router ... EXTRA` in the router's namespace.
    fn cli(&self, cmd: &[&str], extra: &[&str]) -> Output {
        let ca = self.ca();
        let path = |p: &str| ca.join(p).to_str().unwrap().to_owned();
        let conn = [
            "--router".to_owned(),
            MGMT.to_owned(),
            "--server-name".into(),
            "sys.test".into(),
            "--ca".into(),
            path("ca.pem"),
            "--cert".into(),
            path("peer-operator.test.pem"),
            "--key".into(),
            path("peer-operator.test.key"),
        ];
        Command::new("ip")
            .args(["netns", "exec", &self.ns("rtr")])
            .arg(env!("CARGO_BIN_EXE_pronto"))
            .args(cmd)
            .args(&conn)
            .args(extra)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    }

    fn queues(&self) -> serde_json::Value {
        let out = self.cli(&["query", "queues", "--json"], &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["egress"].clone()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if let Some(mut c) = self.router.take() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id()).unwrap_or(0));
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in ["snd", "rtr", "rcv"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(ns)])
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sign the shipped scheduler module `name` with the CA's signer.
fn sign(ca: &Path, name: &str, out: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("slr-policy-wasm");
    run(pronto()
        .args(["module", "sign", "--key"])
        .arg(ca.join("signer.key"))
        .arg("--chain")
        .arg(ca.join("signer.pem"))
        .arg("--manifest")
        .arg(root.join("manifests").join(format!("{name}.toml")))
        .arg(root.join("modules").join(format!("{name}.wasm")))
        .arg("-o")
        .arg(out));
}

/// Bytes received per sender, counted by the receiver.
struct Receiver {
    bytes: Arc<[AtomicU64; 3]>,
    errors: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start(ns: &str) -> Self {
        let bytes: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
        let errors = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let listener = in_netns(ns, || TcpListener::bind((RECEIVER, PORT)))
            .unwrap()
            .unwrap();
        let (b, e, s) = (Arc::clone(&bytes), Arc::clone(&errors), Arc::clone(&stop));
        let accept = std::thread::spawn(move || {
            let mut readers = Vec::new();
            for _ in 0..SENDERS.len() {
                let (mut conn, peer) = listener.accept().unwrap();
                let Some(i) = SENDERS.iter().position(|a| IpAddr::V4(*a) == peer.ip()) else {
                    panic!("unexpected peer {peer}");
                };
                let (b, e, s) = (Arc::clone(&b), Arc::clone(&e), Arc::clone(&s));
                readers.push(std::thread::spawn(move || {
                    let mut buf = vec![0u8; 256 * 1024];
                    loop {
                        match conn.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => {
                                b[i].fetch_add(n as u64, Ordering::Relaxed);
                            }
                            Err(_) if s.load(Ordering::Relaxed) => break,
                            Err(_) => {
                                e.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                        }
                    }
                }));
            }
            for r in readers {
                r.join().unwrap();
            }
        });
        Self {
            bytes,
            errors,
            stop,
            threads: vec![accept],
        }
    }

    fn counts(&self) -> [u64; 3] {
        [0, 1, 2].map(|i| self.bytes[i].load(Ordering::Relaxed))
    }
}

/// One bulk TCP sender per source address, until stopped.
struct Senders {
    stop: Arc<AtomicBool>,
    errors: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Senders {
    fn start(ns: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        for src in SENDERS {
            let (s, e, ns) = (Arc::clone(&stop), Arc::clone(&errors), ns.to_owned());
            threads.push(std::thread::spawn(move || {
                let mut conn = in_netns(&ns, || {
                    let sock = socket2::Socket::new(
                        socket2::Domain::IPV4,
                        socket2::Type::STREAM,
                        Some(socket2::Protocol::TCP),
                    )?;
                    // BBR where the kernel has it: cubic flows can stall for
                    // an RTO after a burst of tail drops at the swap.
                    let _ = sock.set_tcp_congestion(b"bbr");
                    sock.bind(&SocketAddrV4::new(src, 0).into())?;
                    sock.connect(&SocketAddrV4::new(RECEIVER, PORT).into())?;
                    Ok::<TcpStream, std::io::Error>(sock.into())
                })
                .unwrap()
                .unwrap();
                let chunk = vec![0x5au8; 64 * 1024];
                while !s.load(Ordering::Relaxed) {
                    if conn.write_all(&chunk).is_err() {
                        e.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }));
        }
        Self {
            stop,
            errors,
            threads,
        }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        self.errors.load(Ordering::Relaxed)
    }
}

/// Received bytes per class over `window`, as shares of the total.
fn shares(rx: &Receiver, window: Duration) -> ([f64; 3], f64) {
    let before = rx.counts();
    let t = Instant::now();
    std::thread::sleep(window);
    let after = rx.counts();
    let secs = t.elapsed().as_secs_f64();
    let delta = [0, 1, 2].map(|i| after[i] - before[i]);
    let total: u64 = delta.iter().sum();
    let mbit = total as f64 * 8.0 / secs / 1e6;
    (delta.map(|d| d as f64 / total.max(1) as f64), mbit)
}

#[test]
fn a_signed_scheduler_module_shares_a_real_link_and_swaps_under_traffic() {
    if !root_or_skip("a_signed_scheduler_module_shares_a_real_link_and_swaps_under_traffic") {
        return;
    }
    let mut t = Topology::up();
    let conf = t.configure();
    t.start_router(&conf);
    let egress = t.queues();
    assert_eq!(egress["module"], "sfq", "{egress}");

    let rx = Receiver::start(&t.ns("rcv"));
    let tx = Senders::start(&t.ns("snd"));
    std::thread::sleep(Duration::from_secs(1));
    let (sfq, mbit) = shares(&rx, Duration::from_secs(10));
    eprintln!("sfq shares {sfq:?} at {mbit:.1} Mbit/s");
    for (i, w) in WEIGHTS.iter().enumerate() {
        let want = *w as f64 / 100.0;
        assert!(
            (sfq[i] - want).abs() <= 0.03,
            "class {} got {:.3}, weight share {want}: {sfq:?}",
            i + 1,
            sfq[i]
        );
    }
    assert!(
        (80.0..=105.0).contains(&mbit),
        "the stage paces to 100 Mbit/s: {mbit:.1}"
    );

    // The researcher's swap, under traffic.
    let before = t.queues();
    let out = t.cli(
        &["module", "bind", "strict_priority", "--role", "scheduler"],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (strict, mbit) = shares(&rx, Duration::from_secs(1));
    eprintln!("strict priority shares (first second) {strict:?} at {mbit:.1} Mbit/s");
    assert!(
        strict[0] >= 0.90,
        "the high-priority class within 1 s: {strict:?}"
    );
    let after = t.queues();
    eprintln!("before the swap {before}\nafter {after}");
    assert_eq!(after["module"], "strict_priority");
    assert!(after["swaps"].as_u64().unwrap() > before["swaps"].as_u64().unwrap());
    assert_eq!(after["rank_faults"], 0);
    // Every packet queued at the swap was sent: each class sent at least what
    // it held then, and nothing but tail drops was ever dropped.
    for (b, a) in before["classes"]
        .as_array()
        .unwrap()
        .iter()
        .zip(after["classes"].as_array().unwrap())
    {
        let held = b["queued"].as_u64().unwrap();
        let sent = a["sent_packets"].as_u64().unwrap() - b["sent_packets"].as_u64().unwrap();
        assert!(
            sent >= held,
            "class {}: {held} queued at the swap, {sent} sent since",
            a["id"]
        );
    }
    // The researcher's view: the last second's shares, as the CLI prints them.
    let out = t.cli(&["query", "queues"], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    assert!(
        text.contains("module strict_priority") && text.contains("SHARE 1s"),
        "{text}"
    );
    let send_errors = tx.stop();
    rx.stop.store(true, Ordering::Relaxed);
    assert_eq!(send_errors, 0, "no sender failed");
    assert_eq!(rx.errors.load(Ordering::Relaxed), 0, "no receiver failed");
    for th in rx.threads {
        th.join().unwrap();
    }
}
