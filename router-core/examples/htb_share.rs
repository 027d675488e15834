//! Share-error bench (needs root): the kernel offload (HTB on a 100 Mbit/s veth,
//! real TCP bulk flows from three VIP subnets, `linux::tc`) against the
//! userspace link scheduler (`router_core::sched`, SFQ over the same tree)
//! simulated over the same per-class packet sizes, in one run.
//!
//! For each scenario it prints the wanted shares, the kernel's (from HTB's
//! per-class byte counters and from TCP goodput at the receiver), the userspace
//! scheduler's over as many bytes as the kernel sent, and each one's largest
//! absolute share error.
//!
//! Run: `cargo run --release -p router-core --example htb_share [-- SECONDS [FLOWS]]`
//! (default 5 s per scenario, 4 flows per tenant).
#![allow(
    clippy::unwrap_used,
    reason = "bench setup: a failure is a bug in the bench itself"
)]
#![allow(missing_docs, reason = "example binary")]

#[cfg(all(target_os = "linux", feature = "linux"))]
#[allow(
    dead_code,
    unused_imports,
    reason = "the shared harness also holds the test's own helpers"
)]
#[path = "../tests/htb.rs"]
mod htb;

#[cfg(all(target_os = "linux", feature = "linux"))]
fn main() {
    bench::main();
}

#[cfg(not(all(target_os = "linux", feature = "linux")))]
fn main() {
    eprintln!("the HTB share bench needs Linux and the `linux` feature");
}

#[cfg(all(target_os = "linux", feature = "linux"))]
mod bench {
    use super::htb::{CLASS_IDS, DEV, Pair, Traffic, shares, tree};
    use router_core::linux::tc::{HtbClassStats, ShareTreeConfig, apply_share_tree};
    use router_core::queue::SourceClassifier;
    use router_core::sched::{LinkScheduler, PacketMeta, SchedConfig};
    use router_core::time::Instant;
    use std::time::Duration;

    struct Scenario {
        name: &'static str,
        weights: [u32; 3],
        active: [bool; 3],
        /// `Some`: override the quantum floor (the link's GSO size by default).
        quantum_floor: Option<u32>,
    }

    const SCENARIOS: [Scenario; 4] = [
        Scenario {
            name: "20/30/50 all busy",
            weights: [20, 30, 50],
            active: [true; 3],
            quantum_floor: None,
        },
        Scenario {
            name: "10/30/60 all busy",
            weights: [10, 30, 60],
            active: [true; 3],
            quantum_floor: None,
        },
        Scenario {
            name: "20/30/50, 50 idle",
            weights: [20, 30, 50],
            active: [true, true, false],
            quantum_floor: None,
        },
        // What the GSO-sized quantum floor buys: quanta from a 1600-byte floor
        // are smaller than the veth's GSO packets.
        Scenario {
            name: "same, 1600 B quanta",
            weights: [20, 30, 50],
            active: [true, true, false],
            quantum_floor: Some(1600),
        },
    ];

    fn wanted(s: &Scenario) -> [f64; 3] {
        let busy: u32 = (0..3).filter(|&i| s.active[i]).map(|i| s.weights[i]).sum();
        std::array::from_fn(|i| {
            if s.active[i] {
                f64::from(s.weights[i]) / f64::from(busy)
            } else {
                0.0
            }
        })
    }

    fn max_error(got: [f64; 3], want: [f64; 3]) -> f64 {
        (0..3).map(|i| (got[i] - want[i]).abs()).fold(0.0, f64::max)
    }

    /// Bytes and packets of each tenant's class.
    fn class_counters(stats: &[HtbClassStats]) -> [(u64, u64); 3] {
        std::array::from_fn(|i| {
            stats
                .iter()
                .find(|c| c.id.minor() == CLASS_IDS[i])
                .map_or((0, 0), |c| (c.bytes, c.packets))
        })
    }

    /// The userspace scheduler over the same tree: every active leaf kept
    /// backlogged with packets of its kernel-measured mean size, dequeued until
    /// `total` bytes have left. Bytes sent per leaf.
    fn userspace(
        cfg: &ShareTreeConfig,
        active: [bool; 3],
        sizes: [u32; 3],
        total: u64,
    ) -> [u64; 3] {
        let mut sched: LinkScheduler<usize> = LinkScheduler::new(SchedConfig::default());
        let mut classifier = SourceClassifier::new(16, [7, 7, 7, 7]);
        let ids = cfg.install_userspace(&mut sched, &mut classifier).unwrap();
        let leaf: [_; 3] = std::array::from_fn(|i| ids[&CLASS_IDS[i]]);
        let now = Instant::ZERO;
        for t in (0..3).filter(|&t| active[t]) {
            for _ in 0..16 {
                sched
                    .enqueue(&PacketMeta::new(sizes[t], leaf[t]), t, now)
                    .unwrap();
            }
        }
        let mut sent = [0_u64; 3];
        while sent.iter().sum::<u64>() < total {
            let d = sched.dequeue(now).unwrap();
            sent[d.packet] += u64::from(d.len);
            sched
                .enqueue(
                    &PacketMeta::new(sizes[d.packet], leaf[d.packet]),
                    d.packet,
                    now,
                )
                .unwrap();
        }
        sent
    }

    fn fmt3(x: [f64; 3]) -> String {
        format!("{:.3} {:.3} {:.3}", x[0], x[1], x[2])
    }

    pub(super) fn main() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP htb_share: needs root (network namespaces, tc)");
            std::process::exit(2);
        }
        let mut args = std::env::args().skip(1);
        let secs: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
        let flows: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(4);
        let window = Duration::from_secs(secs);
        let warmup = Duration::from_secs(2);
        println!(
            "HTB offload vs userspace SFQ: 100 Mbit/s veth, {flows} TCP flows per tenant, \
             {secs} s window after {} s warm-up",
            warmup.as_secs()
        );
        println!(
            "{:<20} {:<20} {:<20} {:>7} {:<20} {:>7} {:<20} {:>7} {:>8} {:>7} {:>7}",
            "scenario",
            "wanted",
            "kernel HTB bytes",
            "err",
            "kernel TCP goodput",
            "err",
            "userspace 64 KiB",
            "err",
            "err@MTU",
            "ratio",
            "Mbit/s"
        );
        let pair = Pair::new("bench");
        let tc = pair.tc();
        for s in &SCENARIOS {
            let mut cfg = tree(s.weights);
            cfg.quantum_floor = s.quantum_floor;
            apply_share_tree(&tc, DEV, &cfg).unwrap();
            let traffic = Traffic::start(&pair, flows);
            for t in (0..3).filter(|&t| !s.active[t]) {
                traffic.stop_tenant(t);
            }
            // Warm up, then read HTB's counters and the goodput over one window.
            traffic.measure(s.active, warmup, Duration::from_millis(1));
            let before = class_counters(&tc.class_stats(DEV).unwrap());
            let goodput = traffic.measure(s.active, Duration::ZERO, window);
            let after = class_counters(&tc.class_stats(DEV).unwrap());
            drop(traffic);
            let bytes: [u64; 3] = std::array::from_fn(|i| after[i].0 - before[i].0);
            let packets: [u64; 3] = std::array::from_fn(|i| after[i].1 - before[i].1);
            let sizes: [u32; 3] = std::array::from_fn(|i| {
                u32::try_from(bytes[i] / packets[i].max(1))
                    .unwrap_or(1514)
                    .clamp(64, 65_535)
            });
            let want = wanted(s);
            let k_htb = shares(bytes);
            let k_tcp = shares(goodput);
            let total: u64 = bytes.iter().sum();
            // The kernel scheduled GSO packets of up to 64 KiB (HTB counts their
            // segments): the userspace scheduler over the same bytes in packets
            // of that size, and of the segments' mean size.
            let u = shares(userspace(&cfg, s.active, [65_536; 3], total));
            let u_mtu = shares(userspace(&cfg, s.active, sizes, total));
            let (e_htb, e_tcp, e_u, e_mtu) = (
                max_error(k_htb, want),
                max_error(k_tcp, want),
                max_error(u, want),
                max_error(u_mtu, want),
            );
            let mbps = goodput.iter().sum::<u64>() as f64 * 8.0 / window.as_secs_f64() / 1e6;
            println!(
                "{:<20} {:<20} {:<20} {:>7.4} {:<20} {:>7.4} {:<20} {:>7.4} {:>8.5} {:>7.1} {:>7.1}",
                s.name,
                fmt3(want),
                fmt3(k_htb),
                e_htb,
                fmt3(k_tcp),
                e_tcp,
                fmt3(u),
                e_u,
                e_mtu,
                e_htb / e_u.max(1e-4),
                mbps,
            );
        }
        println!(
            "err = largest |share - wanted| of the three; err@MTU = userspace at the mean segment \
             size; ratio = kernel HTB err / userspace 64 KiB err (the latter floored at 1e-4)"
        );
    }
}
