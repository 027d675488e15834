//! `pronto demo`: the engine in-process on synthetic traffic.
//!
//! One system-level engine serves two virtual subnets, each over three site
//! routers whose reported load grows with the flows they take. Clients open TCP
//! connections (SYN, data, FIN) and UDP flows; halfway through, one site reports
//! extra load, so new flows move away while the pinned ones stay. A few broken and orphaned packets show the drop and recovery
//! counters. Prints where flows went and every counter.

use anyhow::{Context, Result, bail};
use router_core::packet::HEADROOM;
use router_core::synth::PacketSpec;
use router_core::wire::TcpFlags;
use router_core::{
    Candidate, DropReason, Engine, EngineConfig, Instant, Level, PacketBuf, RouterApi, SubnetId,
    Verdict,
};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Options of `pronto demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// Run only one engine on synthetic traffic (no hierarchy, no modules).
    #[arg(long)]
    pub(crate) engine: bool,
    /// With --engine: number of synthetic flows to open.
    #[arg(long, default_value_t = 4000)]
    pub(crate) flows: u32,
    /// Connections opened in each phase of the hierarchy demo.
    #[arg(long, default_value_t = 600)]
    pub(crate) connections: u32,
    /// Seed of the hierarchy simulation (same seed, same run).
    #[arg(long, default_value_t = 2024)]
    pub(crate) seed: u64,
    /// Your own signed policy module: hot-loaded as the phase-1 site policy.
    #[arg(long, value_name = "FILE", requires = "trust")]
    pub(crate) module: Option<std::path::PathBuf>,
    /// CA certificate (PEM) that signed --module; added to the demo's anchors.
    #[arg(long, value_name = "PEM")]
    pub(crate) trust: Option<std::path::PathBuf>,
}

const SUBNETS: [&str; 2] = ["10.1.0.0/16", "10.2.0.0/16"];

fn site(subnet: usize, i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 51, 100 + subnet as u8, i + 1))
}

fn candidates(subnet: usize, loads: [f64; 3]) -> Vec<Candidate> {
    (0..3u8)
        .map(|i| Candidate {
            addr: site(subnet, i),
            load: loads[usize::from(i)],
            route_cost: 0.1 * f64::from(i),
            up: true,
        })
        .collect()
}

struct Run {
    engine: Engine,
    buf: Vec<u8>,
}

impl Run {
    fn send(&mut self, spec: &PacketSpec, now: Instant) -> Result<Verdict> {
        let len = spec
            .write(&mut self.buf[HEADROOM..])
            .context("building a demo packet")?;
        let mut p = PacketBuf::new(&mut self.buf, HEADROOM, len)?;
        Ok(self.engine.process(&mut p, now))
    }

    fn send_raw(&mut self, bytes: &[u8], now: Instant) -> Result<Verdict> {
        self.buf[HEADROOM..HEADROOM + bytes.len()].copy_from_slice(bytes);
        let mut p = PacketBuf::new(&mut self.buf, HEADROOM, bytes.len())?;
        Ok(self.engine.process(&mut p, now))
    }
}

pub(crate) fn run(args: &DemoArgs) -> Result<()> {
    if args.engine {
        run_engine(args)
    } else {
        crate::demo_hierarchy::run(args)
    }
}

fn run_engine(args: &DemoArgs) -> Result<()> {
    if args.flows == 0 {
        bail!("--flows must be at least 1");
    }
    let mut engine = Engine::new(EngineConfig {
        level: Level::System,
        local_v4: Some(Ipv4Addr::new(192, 0, 2, 1)),
        ..EngineConfig::default()
    });
    let mut ids: Vec<SubnetId> = Vec::new();
    for (k, s) in SUBNETS.iter().enumerate() {
        let id = engine.add_subnet(s.parse()?)?;
        engine.set_candidates(id, candidates(k, [0.2, 0.3, 0.4]))?;
        ids.push(id);
    }
    let mut run = Run {
        engine,
        buf: vec![0u8; HEADROOM + 2048],
    };
    let half = args.flows / 2;
    let (placed, pinned) = place_new_flows(&mut run, &ids, args.flows)?;
    // Data and FIN on every TCP connection: all must stay where they were pinned.
    let later = Instant::from_millis(u64::from(args.flows) + 10);
    let moved = follow_pinned(&mut run, &pinned, later)?;
    send_orphans_and_junk(&mut run, later)?;
    print_placement(args.flows, half, &placed, pinned.len(), moved);
    print_counters(&run.engine);
    if moved > 0 {
        bail!("{moved} packets of pinned connections changed next hop");
    }
    Ok(())
}

/// (phase, next hop) -> new flows placed there; phase 1 is the second half.
type Placed = BTreeMap<(u8, IpAddr), u32>;
/// Client, VIP and next hop of each pinned TCP connection.
type Pinned = Vec<(SocketAddr, SocketAddr, IpAddr)>;

/// Open `flows` new flows, reporting loads every 50; from halfway, site 1 of
/// each subnet is also busy elsewhere.
fn place_new_flows(run: &mut Run, ids: &[SubnetId], flows: u32) -> Result<(Placed, Pinned)> {
    let mut placed = Placed::new();
    let mut pinned = Pinned::new();
    let half = flows / 2;
    for i in 0..flows {
        let now = Instant::from_millis(u64::from(i));
        if i % 50 == 0 {
            // Periodic load reports: each site's load grows with the flows it
            // took; from halfway, site 1 of each subnet is also busy elsewhere.
            for (k, id) in ids.iter().enumerate() {
                let mut loads = [0.0; 3];
                for (h, l) in loads.iter_mut().enumerate() {
                    let hop = site(k, h as u8);
                    let took: u32 = (0..2).filter_map(|ph| placed.get(&(ph, hop))).sum();
                    *l = 0.1 + f64::from(took) / 4000.0;
                }
                if i >= half {
                    loads[0] += 0.6;
                }
                run.engine.set_candidates(*id, candidates(k, loads))?;
            }
        }
        let phase = u8::from(i >= half);
        let k = (i % 2) as usize;
        let client = SocketAddr::new(
            IpAddr::V4(Ipv4Addr::from(0xcb00_7100 + (i >> 8))),
            10_000 + (i & 0xff) as u16,
        );
        let vip = SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(10, 1 + k as u8, (i % 7) as u8, 10)),
            if i % 5 == 0 { 53 } else { 80 },
        );
        let first = if vip.port() == 53 {
            PacketSpec::udp(client, vip, 40)
        } else {
            PacketSpec::tcp(client, vip, TcpFlags::SYN)
        };
        if let Verdict::Forward { next_hop, .. } = run.send(&first, now)? {
            *placed.entry((phase, next_hop)).or_default() += 1;
            if vip.port() == 80 {
                pinned.push((client, vip, next_hop));
            }
        }
    }
    Ok((placed, pinned))
}

/// Data and FIN on every pinned connection; how many packets left their next hop.
fn follow_pinned(run: &mut Run, pinned: &Pinned, later: Instant) -> Result<u32> {
    let mut moved = 0u32;
    for &(c, v, hop) in pinned {
        for flags in [
            TcpFlags::ACK,
            TcpFlags::ACK | TcpFlags::PSH,
            TcpFlags::FIN | TcpFlags::ACK,
        ] {
            let spec = PacketSpec::tcp(c, v, flags).with_payload(100);
            match run.send(&spec, later)? {
                Verdict::Forward { next_hop, .. } if next_hop == hop => {}
                _ => moved += 1,
            }
        }
    }
    Ok(moved)
}

/// Orphans and junk: a mid-connection segment nobody pinned, an unserved VIP,
/// a truncated header, an expiring TTL.
fn send_orphans_and_junk(run: &mut Run, later: Instant) -> Result<()> {
    let orphan = PacketSpec::tcp(
        "203.0.113.50:5000".parse()?,
        "10.1.0.10:80".parse()?,
        TcpFlags::ACK,
    );
    let _ = run.send(&orphan, later)?;
    let unserved = PacketSpec::tcp(
        "203.0.113.50:5001".parse()?,
        "10.9.0.10:80".parse()?,
        TcpFlags::SYN,
    );
    let _ = run.send(&unserved, later)?;
    let _ = run.send_raw(&[0x45, 0, 0, 20, 0], later)?;
    let mut dying = PacketSpec::tcp(
        "203.0.113.50:5002".parse()?,
        "10.2.0.10:80".parse()?,
        TcpFlags::SYN,
    );
    dying.ttl = 1;
    let _ = run.send(&dying, later)?;
    Ok(())
}

/// Where new flows went before and after the load change.
fn print_placement(flows: u32, half: u32, placed: &Placed, pinned: usize, moved: u32) {
    println!(
        "pronto demo: {} flows to {} virtual subnets over 6 site routers",
        flows,
        SUBNETS.len()
    );
    println!(
        "(loads are reported every 50 flows; from flow {half} the first site of each subnet is 0.6 busier)\n"
    );
    println!(
        "{:<12} {:<18} {:>12} {:>12}",
        "subnet", "next hop", "before", "after"
    );
    for (k, s) in SUBNETS.iter().enumerate() {
        for i in 0..3u8 {
            let hop = site(k, i);
            let b = placed.get(&(0, hop)).copied().unwrap_or(0);
            let a = placed.get(&(1, hop)).copied().unwrap_or(0);
            println!("{s:<12} {:<18} {b:>12} {a:>12}", hop.to_string());
        }
    }
    println!(
        "\npinned TCP connections: {pinned}, packets that left their pinned next hop: {moved}"
    );
}

/// The engine's counters and flow table size.
fn print_counters(engine: &Engine) {
    let c = engine.counters();
    println!("\ncounters:");
    println!("  packets            {:>8}", c.packets);
    println!("  forwarded_new      {:>8}", c.forwarded_new);
    println!("  forwarded_pinned   {:>8}", c.forwarded_pinned);
    println!("  decapsulated       {:>8}", c.decapsulated);
    println!("  delivered          {:>8}", c.delivered);
    println!("  recover            {:>8}", c.recover);
    println!("  icmp_sent          {:>8}", c.icmp_sent);
    println!("  policy_faults      {:>8}", c.policy_faults);
    println!("  flows_evicted      {:>8}", c.flows_evicted);
    for r in DropReason::ALL {
        let n = c.dropped(r);
        if n > 0 {
            println!("  drop.{:<14} {n:>8}", r.as_str());
        }
    }
    println!("  flows in table     {:>8}", engine.flows().len());
}
