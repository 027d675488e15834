//! Harness of the egress stage tests and bench: two namespaces joined by a
//! veth, three VIP source addresses on the sender, one TCP listener on the
//! receiver counting bytes per source, one bulk writer per source.
//!
//! ```text
//!   sender ns  s0 10.78.0.1/24 ------------ r0 10.78.0.2/24  receiver ns
//!              + 192.0.2.1/24      (egress of s0: the stage, or HTB)
//!              + 198.51.100.1/24
//!              + 203.0.113.1/24
//! ```
#![allow(dead_code, reason = "the test and the bench use different parts")]

use router_core::VirtualSubnet;
use router_core::linux::in_netns;
use socket2::{Domain, Protocol, Socket, Type};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The scheduled device, in the sender namespace.
pub(crate) const DEV: &str = "s0";
/// The capture TUN the stage creates.
pub(crate) const TUN: &str = "egr0";
const RECEIVER: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 2);
const PORT: u16 = 5301;
/// One VIP per class, the flows' source addresses.
pub(crate) const VIPS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(192, 0, 2, 1),
    Ipv4Addr::new(198, 51, 100, 1),
    Ipv4Addr::new(203, 0, 113, 1),
];

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// The /24 of class `i`.
pub(crate) fn vip_subnet(i: usize) -> VirtualSubnet {
    VirtualSubnet::new(IpAddr::V4(VIPS[i]), 24).unwrap()
}

fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
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
            snd: format!("pronto-es-{id}"),
            rcv: format!("pronto-er-{id}"),
        };
        let (s, r) = (&pair.snd[..], &pair.rcv[..]);
        for ns in [s, r] {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&[
            "link", "add", DEV, "netns", s, "type", "veth", "peer", "name", "r0", "netns", r,
        ]);
        ip(&["-n", s, "addr", "add", "10.78.0.1/24", "dev", DEV]);
        ip(&["-n", r, "addr", "add", "10.78.0.2/24", "dev", "r0"]);
        ip(&["-n", s, "link", "set", DEV, "up"]);
        ip(&["-n", r, "link", "set", "r0", "up"]);
        for (i, v) in VIPS.iter().enumerate() {
            ip(&["-n", s, "addr", "add", &format!("{v}/24"), "dev", DEV]);
            let net = vip_subnet(i).to_string();
            ip(&["-n", r, "route", "add", &net, "via", "10.78.0.1"]);
        }
        pair
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

/// One bulk TCP (BBR) flow per VIP to the receiver, counting received bytes per
/// VIP and every read or write error. Stopped on drop.
pub(crate) struct Traffic {
    received: Arc<[AtomicU64; 3]>,
    errors: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    streams: Vec<TcpStream>,
    threads: Vec<JoinHandle<()>>,
}

fn timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

fn reader(
    mut s: TcpStream,
    t: usize,
    received: Arc<[AtomicU64; 3]>,
    errors: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 1 << 16];
    while !stop.load(Ordering::Relaxed) {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                received[t].fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if timeout(&e) => {}
            Err(e) => {
                if !stop.load(Ordering::Relaxed) {
                    eprintln!("flow {t}: read error {e}");
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                break;
            }
        }
    }
}

impl Traffic {
    /// Starts one writer per VIP (and a reader per connection).
    pub(crate) fn start(pair: &Pair) -> Self {
        let received: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
        let errors = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let listener = in_netns(&pair.rcv, || TcpListener::bind((RECEIVER, PORT)))
            .unwrap()
            .unwrap();
        let mut threads = Vec::new();
        let mut streams = Vec::new();
        for (t, vip) in VIPS.iter().enumerate() {
            let s = in_netns(&pair.snd, || {
                let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
                // BBR where the kernel has it: it finds the link rate without
                // filling the class queues to the tail drop, so after a rank
                // swap a flow takes the freed rate within a few round trips
                // (cubic runs into RTOs after bursts of tail drops: its 1 s
                // share after a swap to strict priority varied 0.5..0.99).
                let _ = s.set_tcp_congestion(b"bbr");
                s.bind(&SocketAddr::from((*vip, 0)).into())?;
                s.connect_timeout(
                    &SocketAddr::from((RECEIVER, PORT)).into(),
                    Duration::from_secs(5),
                )?;
                Ok::<_, std::io::Error>(TcpStream::from(s))
            })
            .unwrap()
            .unwrap();
            let (conn, peer) = listener.accept().unwrap();
            assert_eq!(peer.ip(), IpAddr::V4(*vip));
            conn.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let (r, e, st) = (
                Arc::clone(&received),
                Arc::clone(&errors),
                Arc::clone(&stop),
            );
            threads.push(std::thread::spawn(move || reader(conn, t, r, e, st)));
            s.set_write_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let mut w = s.try_clone().unwrap();
            let (e, st) = (Arc::clone(&errors), Arc::clone(&stop));
            threads.push(std::thread::spawn(move || {
                let buf = vec![0x5a_u8; 1 << 16];
                while !st.load(Ordering::Relaxed) {
                    match w.write(&buf) {
                        Ok(_) => {}
                        Err(err) if timeout(&err) => {}
                        Err(err) => {
                            if !st.load(Ordering::Relaxed) {
                                eprintln!("flow {t}: write error {err}");
                                e.fetch_add(1, Ordering::Relaxed);
                            }
                            break;
                        }
                    }
                }
            }));
            streams.push(s);
        }
        Self {
            received,
            errors,
            stop,
            streams,
            threads,
        }
    }

    /// Bytes received per VIP so far.
    pub(crate) fn received(&self) -> [u64; 3] {
        std::array::from_fn(|i| self.received[i].load(Ordering::Relaxed))
    }

    /// Read and write errors so far (none expected).
    pub(crate) fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Waits until every flow has moved data (at most 15 s), then `warmup`.
    pub(crate) fn warm_up(&self, warmup: Duration) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.received().contains(&0) {
            assert!(
                Instant::now() < deadline,
                "flows moved no data: {:?}",
                self.received()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(warmup);
    }

    /// Bytes received per VIP over `window`.
    pub(crate) fn measure(&self, window: Duration) -> [u64; 3] {
        let a = self.received();
        std::thread::sleep(window);
        let b = self.received();
        std::array::from_fn(|i| b[i] - a[i])
    }

    /// Stops the writers and readers; returns the errors seen before.
    pub(crate) fn stop(mut self) -> u64 {
        let errors = self.errors();
        self.shutdown();
        errors
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for s in &self.streams {
            let _ = s.shutdown(Shutdown::Both);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Each entry's fraction of the sum.
pub(crate) fn shares(bytes: [u64; 3]) -> [f64; 3] {
    let total = bytes.iter().sum::<u64>().max(1) as f64;
    std::array::from_fn(|i| bytes[i] as f64 / total)
}

/// Bits per second of `bytes` over `window`.
pub(crate) fn bps(bytes: [u64; 3], window: Duration) -> f64 {
    bytes.iter().sum::<u64>() as f64 * 8.0 / window.as_secs_f64()
}
