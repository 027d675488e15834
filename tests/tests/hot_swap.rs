//! Hot swap under traffic (issue 3): a driver thread owns the engine and pushes
//! a stream of new connections (SYNs) and established ones (data segments)
//! through it, while a swapper thread holding the environment verifies,
//! prepares and swaps the policy of the served subnet 100 times between two
//! signed modules that choose different candidates: the shipped least_load
//! (candidate 1) and a WAT module that always chooses candidate 3. The engine's
//! built-in policy would choose candidate 2, so a fallback would show as a
//! misplaced flow too.
//!
//! "New flows use the new policy within one packet of the swap", precisely:
//! the swapper sets `swapping` to k before it calls `Environment::swap` and
//! `published` to k once swap() has returned. The driver reads `published`
//! before processing a SYN (floor) and `swapping` after (ceiling). The version
//! that placed the flow lies in floor..=ceiling: not older than floor, since
//! swap() had returned before the packet's processing began; not newer than
//! ceiling, since an engine that loaded a newer version synchronised with the
//! swapper's earlier store to `swapping`. Every SYN must be placed as some
//! version in that range places it; when floor == ceiling, as exactly that
//! version. The swapper starts swap k+1 only after the driver has seen two such
//! exact placements by version k, so the first SYN processed after each swap()
//! returns is always checked exactly: it must follow the new module.
//!
//! Data segments go round robin over every open connection, and once more to
//! each after the last swap, so connections placed under every version are
//! checked to keep their next hop under every later one.

mod lab;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use exec_env::manager::{Environment, EnvironmentConfig, InstallReport, ModulePolicy};
use exec_env::trust;
use lab::{
    BUILTIN_CHOICE, Ca, LEAST_LOAD_CHOICE, Router, always, candidates, client, configured,
    manifest, next_hop, shipped,
};
use router_core::{Candidate, EngineCounters, RouterApi};

const SWAPS: u64 = 100;
const SUBNET: &str = "192.200.0.0/16";
const VIP: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 200, 0, 10)), 443);
/// What the WAT module chooses.
const CONSTANT_CHOICE: usize = 3;
/// Exact placements the driver checks for a version before the next swap.
const EXACT_PER_VERSION: u32 = 2;
/// Data segments on established connections per new connection.
const ACKS_PER_SYN: usize = 3;

/// Which candidate version `v` of the policy chooses: even versions are
/// least_load, odd versions the constant module.
fn choice(version: u64) -> usize {
    if version.is_multiple_of(2) {
        LEAST_LOAD_CHOICE
    } else {
        CONSTANT_CHOICE
    }
}

/// What the two threads share.
#[derive(Default)]
struct Shared {
    /// The version being published (set before `swap`).
    swapping: AtomicU64,
    /// The version whose `swap` has returned.
    published: AtomicU64,
    /// One more than the newest version the driver has seen place flows
    /// exactly (0: none yet).
    confirmed: AtomicU64,
    stop: AtomicBool,
    failed: AtomicBool,
}

/// What the driver saw.
#[derive(Debug, Default)]
struct Drive {
    syns: u64,
    acks: u64,
    /// SYNs processed while no swap was in progress (floor == ceiling).
    exact: u64,
    /// SYNs whose processing overlapped a swap.
    straddling: u64,
    /// For each swap, in order: the version and whether the first SYN
    /// processed after its swap() returned was checked exactly.
    first_after_swap: Vec<(u64, bool)>,
    /// Data segments of connections pinned under an older version than the one
    /// published when they were sent.
    across_swaps: u64,
    /// Most swaps between a connection's placement and one of its data segments.
    widest: u64,
    counters: EngineCounters,
}

/// The driver: new connections and data segments on established ones, each
/// checked, until told to stop.
fn drive(mut router: Router, cands: &[Candidate], shared: &Shared) -> Result<Drive, String> {
    let mut seen = Drive::default();
    // Open connections: client, next hop, version published when it was placed.
    let mut flows: Vec<(SocketAddr, IpAddr, u64)> = Vec::new();
    let mut cursor = 0usize;
    let mut exact_for = (0_u64, 0_u32);
    let mut clients = 0_u32;
    while !shared.stop.load(Ordering::SeqCst) {
        clients += 1;
        let client = client(clients);
        let floor = shared.published.load(Ordering::SeqCst);
        let verdict = router.syn(client, VIP);
        let ceiling = shared.swapping.load(Ordering::SeqCst);
        seen.syns += 1;
        let hop = next_hop(verdict).ok_or_else(|| format!("SYN {clients}: {verdict:?}"))?;
        if !(floor..=ceiling).any(|v| cands[choice(v)].addr == hop) {
            return Err(format!(
                "SYN {clients} placed on {hop} while versions {floor}..={ceiling} were live"
            ));
        }
        let first = seen.first_after_swap.last().map_or(0, |&(v, _)| v) < floor;
        if first {
            seen.first_after_swap.push((floor, floor == ceiling));
        }
        if floor == ceiling {
            seen.exact += 1;
            exact_for = if exact_for.0 == floor {
                (floor, exact_for.1 + 1)
            } else {
                (floor, 1)
            };
            if exact_for.1 >= EXACT_PER_VERSION {
                shared.confirmed.fetch_max(floor + 1, Ordering::SeqCst);
            }
        } else {
            seen.straddling += 1;
        }
        flows.push((client, hop, floor));

        // Round robin over every open connection, oldest first, so each lap
        // revisits connections pinned under every earlier version.
        for _ in 0..ACKS_PER_SYN {
            cursor = if cursor + 1 < flows.len() {
                cursor + 1
            } else {
                0
            };
            data(&mut router, &mut seen, flows[cursor], floor)?;
        }
    }
    // After the last swap: one more segment on every open connection, so
    // connections placed under every version are checked under the last one.
    let floor = shared.published.load(Ordering::SeqCst);
    for &flow in &flows {
        data(&mut router, &mut seen, flow, floor)?;
    }
    seen.counters = router.engine.counters();
    Ok(seen)
}

/// A data segment on an open connection (client, pinned next hop, version
/// published when it was placed) while version `floor` or newer serves: it must
/// follow the connection's next hop.
fn data(
    router: &mut Router,
    seen: &mut Drive,
    (client, hop, placed): (SocketAddr, IpAddr, u64),
    floor: u64,
) -> Result<(), String> {
    let verdict = router.ack(client, VIP);
    seen.acks += 1;
    if next_hop(verdict) != Some(hop) {
        return Err(format!(
            "established {client} pinned to {hop} under version {placed} got {verdict:?}"
        ));
    }
    if placed < floor {
        seen.across_swaps += 1;
        seen.widest = seen.widest.max(floor - placed);
    }
    Ok(())
}

/// Waits until the driver has seen version `version` place flows exactly.
fn confirmed(shared: &Shared, version: u64) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while shared.confirmed.load(Ordering::SeqCst) <= version {
        if shared.failed.load(Ordering::SeqCst) {
            return Err("driver failed".to_owned());
        }
        if Instant::now() > deadline {
            return Err(format!("driver never confirmed version {version}"));
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    Ok(())
}

/// The swapper: once the driver has seen the active version place flows,
/// verify, prepare and swap the next file; after the last, wait for it too.
fn swap_all(
    env: Environment,
    files: &[Vec<u8>],
    shared: &Shared,
) -> Result<(Environment, Vec<InstallReport>), String> {
    let mut reports = Vec::new();
    for (k, bytes) in (1..).zip(files) {
        confirmed(shared, k - 1)?;
        // Off the packet path: signature, chain, compile, instantiate.
        let verified = trust::verify(bytes, env.anchors(), SystemTime::now())
            .map_err(|e| format!("verify {k}: {e}"))?;
        let prepared = env
            .prepare(verified)
            .map_err(|e| format!("prepare {k}: {e}"))?;
        shared.swapping.store(k, Ordering::SeqCst);
        let report = env
            .publish(prepared)
            .map_err(|e| format!("swap {k}: {e}"))?;
        shared.published.store(k, Ordering::SeqCst);
        reports.push(report);
    }
    confirmed(shared, SWAPS)?;
    Ok((env, reports))
}

fn assert_send_sync<T: Send + Sync>() {}

#[test]
fn a_policy_swapped_100_times_under_traffic_loses_and_misplaces_nothing() {
    // The swapper thread holds the environment; the engine holds a handle.
    assert_send_sync::<Environment>();
    assert_send_sync::<ModulePolicy>();

    let ca = Ca::init("hot-swap", &[]);
    let env = Environment::new(
        configured(EnvironmentConfig::operator("operator")),
        ca.anchors(),
    )
    .unwrap();
    let least_load = shipped("least_load");
    let constant = always(CONSTANT_CHOICE as u32);
    env.install(&ca.sign(&manifest("balancer", "1.0.0"), &least_load))
        .unwrap();
    let files: Vec<Vec<u8>> = (1..=SWAPS)
        .map(|k| {
            let wasm = if choice(k) == CONSTANT_CHOICE {
                &constant
            } else {
                &least_load
            };
            ca.sign(&manifest("balancer", &format!("1.0.{k}")), wasm)
        })
        .collect();

    let mut router = Router::new(1 << 20);
    let cands = candidates(100);
    assert!(
        [LEAST_LOAD_CHOICE, CONSTANT_CHOICE, BUILTIN_CHOICE]
            .windows(2)
            .all(|w| cands[w[0]].addr != cands[w[1]].addr)
    );
    let sid = router.serve(SUBNET, cands.clone());
    let policy = env.policy("balancer", SUBNET.parse().unwrap()).unwrap();
    router.engine.set_policy(sid, Some(policy.clone())).unwrap();

    let shared = Shared::default();
    let (driven, swapped) = std::thread::scope(|s| {
        let driver = s.spawn(|| {
            let result = drive(router, &cands, &shared);
            if result.is_err() {
                shared.failed.store(true, Ordering::SeqCst);
            }
            result
        });
        let swapper = s.spawn(|| {
            let result = swap_all(env, &files, &shared);
            shared.stop.store(true, Ordering::SeqCst);
            result
        });
        (driver.join().unwrap(), swapper.join().unwrap())
    });
    let seen = driven.unwrap();
    let (env, reports) = swapped.unwrap();
    println!(
        "{} SYNs ({} exact, {} straddling a swap), {} data segments ({} across swaps, \
         up to {} swaps after placement)",
        seen.syns, seen.exact, seen.straddling, seen.acks, seen.across_swaps, seen.widest
    );

    // Every swap published the next version, replacing the one before.
    assert_eq!(reports.len() as u64, SWAPS);
    for (k, report) in (1..).zip(&reports) {
        assert_eq!(report.active.version.patch, k);
        assert_eq!(report.replaced.as_ref().unwrap().version.patch, k - 1);
    }
    assert_eq!(policy.active_version().unwrap().patch, SWAPS);

    // The first SYN after each swap() returned was placed by the new module,
    // checked exactly.
    let firsts: Vec<u64> = seen.first_after_swap.iter().map(|&(v, _)| v).collect();
    assert_eq!(firsts, (1..=SWAPS).collect::<Vec<_>>());
    assert!(seen.first_after_swap.iter().all(|&(_, exact)| exact));
    assert!(seen.exact >= SWAPS * u64::from(EXACT_PER_VERSION));
    assert_eq!(seen.exact + seen.straddling, seen.syns);
    // Established connections were checked across swaps, those placed under
    // the first version after the last swap.
    assert!(seen.across_swaps >= seen.syns / 2, "{seen:?}");
    assert_eq!(seen.widest, SWAPS, "{seen:?}");

    // Nothing lost: every packet forwarded, every SYN placed by a module.
    let c = seen.counters;
    assert_eq!(c.packets, seen.syns + seen.acks);
    assert_eq!(c.forwarded_new, seen.syns);
    assert_eq!(c.forwarded_pinned, seen.acks);
    assert_eq!(c.dropped_total(), 0, "{c:?}");
    assert_eq!((c.recover, c.policy_faults, c.flows_evicted), (0, 0, 0));
    let info = env.module("balancer").unwrap();
    assert_eq!(info.counters.swaps, SWAPS);
    assert_eq!(info.counters.faults(), 0);
    assert_eq!(info.counters.fallbacks, 0);
    assert_eq!(
        (info.counters.calls, info.counters.ok),
        (seen.syns, seen.syns)
    );
    assert_eq!(env.counters().installs, SWAPS + 1);
}
