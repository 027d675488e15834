//! Silent connections cannot lock out peers or operators (root): a lab whose
//! system router serves the management API is flooded with TCP connections that
//! never start TLS (200 to its signalling port, 200 to its management port,
//! re-opened as soon as the router closes them); meanwhile a valid peer
//! registers, a restarted site router registers again, and `pronto query
//! summary` answers, each in under a second (without the handshake bounds this
//! took 20 s and more); the router's counters show the refused and timed-out
//! handshakes by reason.
//!
//! This file belongs to the root package (`cargo test -p pronto --test
//! handshakes`), like tests/ops/main.rs. Needs root: prints SKIP otherwise, and fails
//! when CI=true.
#![cfg(target_os = "linux")]
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failure is a test failure"
)]

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use router_core::linux::in_netns;
use socket2::{Domain, Socket, Type};

mod support;
use support::{Lab, int, pronto, root_or_skip, wait_for};

const SIGNAL_PORT: u16 = 7800;
const MGMT_PORT: u16 = 7900;
/// The acceptance bound for a registration and an answer under attack;
/// without the handshake bounds both took 20 s or more.
const BOUND: Duration = Duration::from_secs(1);

/// The lab's system router restarted with a `[management]` section (default
/// handshake bounds: 2 s, 256 pending, 8 per source).
fn lab_with_management() -> Lab {
    let lab = Lab::up("hs", &[], "warn");
    let state: toml::Table = std::fs::read_to_string(lab.dir.join("lab.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let sys = state["daemons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"].as_str() == Some("sys"))
        .unwrap();
    let conf = lab.dir.join("conf").join("sys.toml");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str(&format!(
        "\n[management]\nlisten = \"127.0.0.1:{MGMT_PORT}\"\n"
    ));
    std::fs::write(&conf, text).unwrap();
    // SIGTERM and wait (the TUN is gone when it has exited), then the lab starts
    // it again from the amended configuration and keeps track of it.
    stop(i32::try_from(sys["pid"].as_integer().unwrap()).unwrap());
    restart(&lab, "sys");
    lab
}

fn stop(pid: i32) {
    let pid = nix::unistd::Pid::from_raw(pid);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    wait_for("the daemon to exit", Duration::from_secs(10), || {
        nix::sys::signal::kill(pid, None).is_err()
    });
}

fn restart(lab: &Lab, node: &str) {
    let out = pronto()
        .args(["lab", "restart", "--dir"])
        .arg(&lab.dir)
        .arg(node)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "lab restart {node}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn daemon_pid(lab: &Lab, node: &str) -> i32 {
    let state: toml::Table = std::fs::read_to_string(lab.dir.join("lab.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let d = state["daemons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"].as_str() == Some(node))
        .unwrap();
    i32::try_from(d["pid"].as_integer().unwrap()).unwrap()
}

/// `pronto query summary` as an operator, in the system router's namespace.
fn query_summary(lab: &Lab) -> Output {
    let ca = lab.dir.join("ca");
    Command::new("ip")
        .args(["netns", "exec", &lab.ns("sys")])
        .arg(env!("CARGO_BIN_EXE_pronto"))
        .args(["query", "summary", "--router"])
        .arg(format!("https://127.0.0.1:{MGMT_PORT}"))
        .args(["--server-name", "sys.lab", "--ca"])
        .arg(ca.join("ca.pem"))
        .arg("--cert")
        .arg(ca.join("peer-ops.lab.pem"))
        .arg("--key")
        .arg(ca.join("peer-ops.lab.key"))
        .env("RUST_LOG", "warn")
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap()
}

/// The management API's counter `name` from `/metrics`.
fn mgmt_counter(lab: &Lab, name: &str) -> u64 {
    let ca = lab.dir.join("ca");
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.ns("sys")])
        .arg(env!("CARGO_BIN_EXE_pronto"))
        .args(["query", "metrics", "--router"])
        .arg(format!("https://127.0.0.1:{MGMT_PORT}"))
        .args(["--server-name", "sys.lab", "--ca"])
        .arg(ca.join("ca.pem"))
        .arg("--cert")
        .arg(ca.join("peer-ops.lab.pem"))
        .arg("--key")
        .arg(ca.join("peer-ops.lab.key"))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}")) as u64
}

/// A TCP connection from `source` to `port` on the system router that never
/// starts TLS (non-blocking, so its closure can be polled).
fn silent(source: Ipv4Addr, port: u16) -> Option<TcpStream> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).ok()?;
    s.bind(&SocketAddr::from((source, 0)).into()).ok()?;
    s.connect_timeout(
        &SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into(),
        Duration::from_secs(1),
    )
    .ok()?;
    s.set_nonblocking(true).ok()?;
    Some(s.into())
}

/// Whether the router closed `s`.
fn closed(s: &TcpStream) -> bool {
    match s.peek(&mut [0u8; 1]) {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// The attacker: `per_port` silent connections to each port (half from one
/// source address, half from as many addresses), each re-opened as soon as the
/// router closes it, until stopped.
struct Flood {
    stop: Arc<AtomicBool>,
    opened: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flood {
    fn start(ns: String, per_port: u8) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let opened = Arc::new(AtomicU64::new(0));
        let (s, o) = (Arc::clone(&stop), Arc::clone(&opened));
        let thread = std::thread::spawn(move || {
            in_netns(&ns, || {
                let half = per_port / 2;
                let plan: Vec<(Ipv4Addr, u16)> = [SIGNAL_PORT, MGMT_PORT]
                    .into_iter()
                    .flat_map(|port| {
                        (0..per_port).map(move |i| {
                            let src = if i < half {
                                Ipv4Addr::new(127, 0, 0, 2)
                            } else {
                                Ipv4Addr::new(127, 0, 1, i - half)
                            };
                            (src, port)
                        })
                    })
                    .collect();
                let mut held: Vec<Option<TcpStream>> = plan.iter().map(|_| None).collect();
                while !s.load(Ordering::Relaxed) {
                    for (slot, (src, port)) in held.iter_mut().zip(&plan) {
                        if slot.as_ref().is_none_or(closed) {
                            *slot = silent(*src, *port);
                            o.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
            .unwrap();
        });
        Self {
            stop,
            opened,
            thread: Some(thread),
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A signalling client with `name`'s certificate of the lab's CA in the
/// `site-a` namespace; returns how long until it was registered.
fn register(lab: &Lab, name: &str) -> Duration {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let ca = lab.dir.join("ca");
    let cert = std::fs::read(ca.join(format!("peer-{name}.pem"))).unwrap();
    let key = std::fs::read(ca.join(format!("peer-{name}.key"))).unwrap();
    let anchors = std::fs::read(ca.join("ca.pem")).unwrap();
    let connector = signaling::Connector::new(signaling::TransportConfig {
        identity: signaling::TlsIdentity {
            cert_chain: CertificateDer::pem_slice_iter(&cert)
                .collect::<Result<_, _>>()
                .unwrap(),
            key: PrivateKeyDer::from_pem_slice(&key).unwrap(),
        },
        trust_anchors: CertificateDer::pem_slice_iter(&anchors)
            .collect::<Result<_, _>>()
            .unwrap(),
        local: signaling::LocalNode {
            name: signaling::NodeName::new(name).unwrap(),
            level: router_core::Level::Site,
            role: signaling::Role::Site,
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
            let started = Instant::now();
            let mut session = tokio::time::timeout(
                Duration::from_secs(30),
                connector.connect(SocketAddr::from(([10, 1, 0, 1], SIGNAL_PORT)), &sys),
            )
            .await
            .expect("registration within 30 s")
            .expect("registered");
            let took = started.elapsed();
            let first = session.next_event().await;
            assert!(
                matches!(first, Some(signaling::PeerEvent::Registered { .. })),
                "{first:?}"
            );
            took
        })
    })
    .unwrap()
}

#[test]
fn silent_connections_lock_out_neither_peers_nor_operators() {
    let name = "silent_connections_lock_out_neither_peers_nor_operators";
    if !root_or_skip(name) {
        return;
    }
    let lab = lab_with_management();
    // The operator needs the operator role for queries; the extra site is a router.
    for (peer, role) in [("ops.lab", "operator"), ("site-c.lab", "router")] {
        let o = pronto()
            .args(["ca", "issue-peer", "--dir"])
            .arg(lab.dir.join("ca"))
            .args(["--name", peer, "--role", role])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    wait_for("the management API", Duration::from_secs(20), || {
        query_summary(&lab).status.success()
    });
    wait_for("both sites registered", Duration::from_secs(20), || {
        int(&lab.stats("sys"), &["control", "downstream_sessions"]) == 2
    });
    let before = lab.stats("sys");
    let started = Instant::now();
    assert!(query_summary(&lab).status.success());
    eprintln!(
        "query summary without the flood: {:?} (CLI start included)",
        started.elapsed()
    );

    let flood = Flood::start(lab.ns("sys"), 200);
    wait_for("400 silent connections", Duration::from_secs(10), || {
        flood.opened.load(Ordering::Relaxed) >= 400
    });
    // Past one handshake deadline: the first silent connections have been
    // closed and re-opened, the flood is steady.
    std::thread::sleep(Duration::from_millis(2500));

    // A valid peer registers.
    let took = register(&lab, "site-c.lab");
    eprintln!("registration with 200+200 silent connections held: {took:?}");
    assert!(took < BOUND, "registration took {took:?}");

    // The operator is answered.
    let started = Instant::now();
    let out = query_summary(&lab);
    let answered = started.elapsed();
    eprintln!("query summary with 200+200 silent connections held: {answered:?}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(answered < BOUND, "query summary took {answered:?}");

    // A site router restarted under the flood registers again. (The stats file
    // is rewritten every 100 ms: first let it show site-c's registration.)
    let before_c = int(&before, &["control", "registrations"]);
    wait_for(
        "site-c's registration counted",
        Duration::from_secs(5),
        || int(&lab.stats("sys"), &["control", "registrations"]) > before_c,
    );
    let registrations = int(&lab.stats("sys"), &["control", "registrations"]);
    stop(daemon_pid(&lab, "site-a"));
    let started = Instant::now();
    restart(&lab, "site-a");
    let mut again = Duration::ZERO;
    wait_for("site-a registered again", Duration::from_secs(30), || {
        again = started.elapsed();
        int(&lab.stats("sys"), &["control", "registrations"]) > registrations
    });
    eprintln!("restarted site-a registered again after {again:?} (daemon start included)");
    assert!(again < BOUND + Duration::from_millis(500), "{again:?}");

    // The counters say what happened, by reason.
    let after = lab.stats("sys");
    let delta = |k: &str| int(&after, &["control", k]) - int(&before, &["control", k]);
    for k in [
        "tls_accepted",
        "tls_handshakes",
        "tls_timeouts",
        "tls_refused_per_source_limit",
        "tls_refused_pending_limit",
        "tls_untrusted",
        "tls_failures",
    ] {
        eprintln!("signalling {k}: +{}", delta(k));
    }
    assert!(
        delta("tls_refused_per_source_limit") >= 92,
        "the shared source"
    );
    assert!(
        delta("tls_timeouts") >= 100,
        "one deadline of the spread sources"
    );
    assert!(delta("tls_handshakes") >= 2);
    assert_eq!(delta("tls_refused_pending_limit"), 0, "108 pending < 256");
    let m = |n: &str| mgmt_counter(&lab, &format!("pronto_mgmt_{n}_total"));
    for n in [
        "connections",
        "handshakes",
        "handshake_timeouts",
        "refused_per_source_limit",
        "refused_pending_limit",
        "timeouts",
    ] {
        eprintln!("management {n}: {}", m(n));
    }
    assert!(m("refused_per_source_limit") >= 92);
    assert!(m("handshake_timeouts") >= 100);
    assert_eq!(m("timeouts"), 0, "no request ran into its own deadline");
    drop(flood);
}
