use super::*;
use proptest::prelude::*;
use router_core::engine::{Engine, EngineConfig, Verdict};
use router_core::flow::FlowConfig;
use router_core::packet::{HEADROOM, PacketBuf};
use router_core::policy::Level;
use router_core::synth::PacketSpec;
use router_core::wire::TcpFlags;
use std::net::{Ipv4Addr, SocketAddr};

fn name(i: usize) -> NodeName {
    NodeName::new(&format!("host{i}.site.test")).unwrap()
}

fn addr(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, 10 + i as u8))
}

fn vip_subnet() -> SubnetPrefix {
    SubnetPrefix::new("192.200.0.0".parse().unwrap(), 16).unwrap()
}

fn update(seq: u64, load: f32) -> StateUpdate {
    StateUpdate {
        seq,
        subnets: vec![SubnetLoad {
            subnet: vip_subnet(),
            load,
        }],
    }
}

fn cfg() -> TableConfig {
    TableConfig {
        interval: Duration::from_millis(500),
        hold_time: Duration::from_secs(2),
        max_peers: 16,
        max_subnets: 64,
    }
}

/// A table with `loads.len()` registered peers (epoch = index + 1) each
/// reporting the VIP subnet.
fn table_with(loads: &[f32], route_costs: &[f64]) -> NextHopTable {
    let mut t = NextHopTable::new(cfg(), Instant::ZERO);
    for (i, (&l, &r)) in loads.iter().zip(route_costs).enumerate() {
        t.register(&name(i), addr(i), r, Epoch(i as u64 + 1))
            .unwrap();
        t.handle_update(Instant::ZERO, &name(i), Epoch(i as u64 + 1), &update(1, l))
            .unwrap();
    }
    t
}

/// F that makes the route cost dominate: prefers near peers over idle ones.
struct RouteFirst;
impl CostModel for RouteFirst {
    fn name(&self) -> &str {
        "route-first"
    }
    fn cost(&self, load: f64, route_cost: f64) -> Result<f64, PolicyError> {
        Ok(100.0 * route_cost + load)
    }
    fn aggregate(&self, c: &[Candidate]) -> Result<f64, PolicyError> {
        Ok(c.iter().filter(|c| c.up).map(|c| c.load).sum())
    }
}

struct Broken;
impl CostModel for Broken {
    fn name(&self) -> &str {
        "broken"
    }
    fn cost(&self, _: f64, _: f64) -> Result<f64, PolicyError> {
        Err(PolicyError::Timeout)
    }
    fn aggregate(&self, _: &[Candidate]) -> Result<f64, PolicyError> {
        Ok(f64::NAN)
    }
}

#[test]
fn cheapest_by_f_is_first_and_g_is_advertised() {
    let mut t = table_with(&[0.5, 0.2, 0.7], &[0.0, 0.0, 0.0]);
    let u = t.compute(Instant::ZERO, &SumCost);
    assert_eq!(u.changed.len(), 1);
    let r = &u.changed[0];
    assert_eq!(r.best().unwrap().addr, addr(1));
    let order: Vec<IpAddr> = r.candidates.iter().map(|c| c.addr).collect();
    assert_eq!(order, vec![addr(1), addr(0), addr(2)]);
    assert_eq!(u.advertisement.len(), 1);
    assert!((u.advertisement[0].load - 0.2).abs() < 1e-6);
    assert_eq!(t.best(&vip_subnet()), Some(addr(1)));
}

#[test]
fn the_installed_cost_model_decides() {
    // Peer 0 is busier but nearer: the sum prefers peer 1, route-first F peer 0.
    let mut t = table_with(&[0.6, 0.1], &[0.0, 0.2]);
    let u = t.compute(Instant::ZERO, &SumCost);
    assert_eq!(u.changed[0].best().unwrap().addr, addr(1));
    let u = t.compute(Instant::ZERO, &RouteFirst);
    assert_eq!(u.changed[0].best().unwrap().addr, addr(0));
    assert_eq!(
        u.changed[0].costs,
        vec![0.6000000238418579, 20.100000001490116]
    );
    // G of route-first is the sum of loads.
    assert!((u.advertisement[0].load - 0.7).abs() < 1e-6);
}

#[test]
fn model_faults_fall_back_and_are_counted() {
    let mut t = table_with(&[0.5, 0.2], &[0.0, 0.0]);
    let u = t.compute(Instant::ZERO, &Broken);
    assert_eq!(u.changed[0].best().unwrap().addr, addr(1));
    assert!((u.advertisement[0].load - 0.2).abs() < 1e-6);
    assert_eq!(t.stats().cost_faults, 2);
    assert_eq!(t.stats().aggregate_faults, 1);
}

#[test]
fn unchanged_lists_are_not_pushed_again() {
    let mut t = table_with(&[0.5, 0.2], &[0.0, 0.0]);
    assert_eq!(t.compute(Instant::ZERO, &SumCost).changed.len(), 1);
    let u = t.compute(Instant::from_millis(500), &SumCost);
    assert!(u.changed.is_empty());
    // The advertisement is periodic soft state: always sent.
    assert_eq!(u.advertisement.len(), 1);
    t.handle_update(
        Instant::from_millis(600),
        &name(0),
        Epoch(1),
        &update(2, 0.1),
    )
    .unwrap();
    let u = t.compute(Instant::from_millis(1000), &SumCost);
    assert_eq!(u.changed[0].best().unwrap().addr, addr(0));
}

#[test]
fn down_peers_are_not_up_and_old_sessions_are_ignored() {
    let mut t = table_with(&[0.1, 0.2], &[0.0, 0.0]);
    // A down report of an older session must not take the live one down.
    assert_eq!(
        t.peer_down(&name(0), Epoch(99)),
        Err(Ignored::StaleEpoch {
            current: Some(Epoch(1)),
            got: Epoch(99)
        })
    );
    assert_eq!(t.stats().downs_stale_epoch, 1);
    t.peer_down(&name(0), Epoch(1)).unwrap();
    let u = t.compute(Instant::ZERO, &SumCost);
    let r = &u.changed[0];
    assert_eq!(r.best().unwrap().addr, addr(1));
    assert!(!r.candidates.iter().find(|c| c.addr == addr(0)).unwrap().up);
    // Updates of the dead session are ignored.
    assert_eq!(
        t.handle_update(Instant::ZERO, &name(0), Epoch(1), &update(9, 0.0)),
        Err(Ignored::PeerDown)
    );
    // It re-registers with a new epoch; a late update of the old one is stale.
    t.register(&name(0), addr(0), 0.0, Epoch(7)).unwrap();
    assert!(matches!(
        t.handle_update(Instant::ZERO, &name(0), Epoch(1), &update(10, 0.0)),
        Err(Ignored::StaleEpoch { .. })
    ));
    assert_eq!(t.stats().updates_stale_epoch, 1);
    assert_eq!(t.reported_load(&name(0), &vip_subnet()), Some(0.1));
    t.handle_update(Instant::ZERO, &name(0), Epoch(7), &update(1, 0.05))
        .unwrap();
    assert_eq!(t.peer(&name(0)).unwrap().last_seq, Some(1));
    let u = t.compute(Instant::ZERO, &SumCost);
    assert_eq!(u.changed[0].best().unwrap().addr, addr(0));
    assert_eq!(
        t.handle_update(Instant::ZERO, &name(5), Epoch(1), &update(1, 0.0)),
        Err(Ignored::UnknownPeer)
    );
}

#[test]
fn reports_expire_and_subnets_are_withdrawn() {
    let mut t = table_with(&[0.1, 0.2], &[0.0, 0.0]);
    t.compute(Instant::ZERO, &SumCost);
    t.handle_update(Instant::from_secs(2), &name(1), Epoch(2), &update(2, 0.3))
        .unwrap();
    let u = t.compute(Instant::from_millis(2500), &SumCost);
    let r = &u.changed[0];
    assert_eq!(r.candidates.len(), 1);
    assert_eq!(r.best().unwrap().addr, addr(1));
    assert_eq!(t.stats().reports_expired, 1);
    let u = t.compute(Instant::from_secs(5), &SumCost);
    assert_eq!(u.withdrawn, vec![vip_subnet()]);
    assert!(u.advertisement.is_empty());
    assert_eq!(t.subnet_count(), 0);
}

#[test]
fn down_peer_without_reports_is_forgotten() {
    let mut t = table_with(&[0.1], &[0.0]);
    t.peer_down(&name(0), Epoch(1)).unwrap();
    let u = t.compute(Instant::ZERO, &SumCost);
    assert!(
        u.advertisement.is_empty(),
        "no usable next hop: nothing to advertise"
    );
    assert_eq!(u.changed[0].aggregate, None);
    t.compute(Instant::from_secs(3), &SumCost);
    assert_eq!(t.peer_count(), 0);
}

#[test]
fn bounds_refuse_and_count() {
    let mut t = NextHopTable::new(
        TableConfig {
            max_peers: 2,
            max_subnets: 3,
            ..cfg()
        },
        Instant::ZERO,
    );
    t.register(&name(0), addr(0), 0.0, Epoch(1)).unwrap();
    t.register(&name(1), addr(1), 0.0, Epoch(2)).unwrap();
    assert_eq!(
        t.register(&name(2), addr(2), 0.0, Epoch(3)),
        Err(TableError::PeersFull { limit: 2 })
    );
    assert!(matches!(
        t.register(&name(0), addr(0), f64::NAN, Epoch(1)),
        Err(TableError::BadRouteCost { .. })
    ));
    let subnets = (0..5u8)
        .map(|i| SubnetLoad {
            subnet: SubnetPrefix::new(IpAddr::V4(Ipv4Addr::new(192, 200, i, 0)), 24).unwrap(),
            load: if i == 4 { -1.0 } else { 0.5 },
        })
        .collect();
    let r = t
        .handle_update(
            Instant::ZERO,
            &name(0),
            Epoch(1),
            &StateUpdate { seq: 1, subnets },
        )
        .unwrap();
    assert_eq!(
        r,
        UpdateReport {
            accepted: 3,
            refused: 2
        }
    );
    assert_eq!(t.stats().subnets_refused, 1);
    assert_eq!(t.stats().invalid_loads, 1);
    assert_eq!(t.stats().peers_refused, 1);
}

#[test]
fn advertisement_is_chunked_to_the_message_limit() {
    let mut t = NextHopTable::new(
        TableConfig {
            max_subnets: 5000,
            ..cfg()
        },
        Instant::ZERO,
    );
    t.register(&name(0), addr(0), 0.0, Epoch(1)).unwrap();
    let all: Vec<SubnetLoad> = (0..2500u32)
        .map(|i| SubnetLoad {
            subnet: SubnetPrefix::new(IpAddr::V4(Ipv4Addr::from(0xC0C8_0000 + (i << 8))), 24)
                .unwrap(),
            load: 0.25,
        })
        .collect();
    for (seq, chunk) in all.chunks(MAX_SUBNETS_PER_UPDATE).enumerate() {
        t.handle_update(
            Instant::ZERO,
            &name(0),
            Epoch(1),
            &StateUpdate {
                seq: seq as u64,
                subnets: chunk.to_vec(),
            },
        )
        .unwrap();
    }
    let u = t.compute(Instant::ZERO, &SumCost);
    let sizes: Vec<usize> = u
        .advertisement_messages()
        .map(|m| match m {
            Outgoing::StateUpdate { subnets } => subnets.len(),
            _ => 0,
        })
        .collect();
    assert_eq!(sizes, vec![1024, 1024, 452]);
}

fn engine() -> Engine {
    Engine::new(EngineConfig {
        level: Level::Site,
        local_v4: Some(Ipv4Addr::new(10, 0, 0, 1)),
        flows: FlowConfig {
            capacity_v4: 64,
            capacity_v6: 8,
            max_next_hops: 16,
            ..FlowConfig::default()
        },
        max_subnets: 16,
        ..EngineConfig::default()
    })
}

fn send(e: &mut Engine, src_port: u16, flags: TcpFlags, now: Instant) -> Verdict {
    let spec = PacketSpec::tcp(
        SocketAddr::new("198.51.100.7".parse().unwrap(), src_port),
        SocketAddr::new("192.200.3.4".parse().unwrap(), 80),
        flags,
    );
    let mut buf = vec![0u8; HEADROOM + 128];
    let n = spec.write(&mut buf[HEADROOM..]).unwrap();
    let mut pkt = PacketBuf::new(&mut buf, HEADROOM, n).unwrap();
    e.process(&mut pkt, now)
}

fn next_hop(v: Verdict) -> IpAddr {
    match v {
        Verdict::Forward { next_hop, .. } => next_hop,
        other => panic!("expected forward, got {other:?}"),
    }
}

#[test]
fn new_flows_follow_the_table_and_pinned_flows_never_move() {
    let mut t = table_with(&[0.5, 0.2], &[0.0, 0.0]);
    let mut e = engine();
    let follow: Arc<dyn Policy> = Arc::new(FollowTable);
    let rep = t
        .compute(Instant::ZERO, &SumCost)
        .apply(&mut e, Some(&follow));
    assert_eq!(rep.installed, 1);
    let now = Instant::from_millis(1);
    assert_eq!(next_hop(send(&mut e, 1000, TcpFlags::SYN, now)), addr(1));
    // Peer 1 gets busy: the table moves new flows to peer 0.
    t.handle_update(now, &name(1), Epoch(2), &update(2, 0.9))
        .unwrap();
    let rep = t
        .compute(Instant::from_millis(500), &SumCost)
        .apply(&mut e, Some(&follow));
    assert_eq!(rep.installed, 1);
    let later = Instant::from_millis(501);
    assert_eq!(next_hop(send(&mut e, 1001, TcpFlags::SYN, later)), addr(0));
    // The established flow stays where it was pinned.
    assert_eq!(next_hop(send(&mut e, 1000, TcpFlags::ACK, later)), addr(1));
    // Withdrawal stops new flows for the subnet but not the pinned ones.
    let rep = t
        .compute(Instant::from_secs(10), &SumCost)
        .apply(&mut e, Some(&follow));
    assert_eq!(rep.withdrawn, 1);
    let end = Instant::from_secs(10);
    assert_eq!(
        send(&mut e, 1002, TcpFlags::SYN, end),
        Verdict::Drop(router_core::DropReason::NotServed)
    );
    assert_eq!(next_hop(send(&mut e, 1000, TcpFlags::ACK, end)), addr(1));
}

#[test]
fn follow_table_picks_the_first_usable() {
    let req = FlowRequest {
        key: router_core::FlowKey {
            proto: 6,
            src: addr(0),
            src_port: 1,
            dst: addr(1),
            dst_port: 2,
        },
        subnet: router_core::SubnetId(0),
        level: Level::Site,
    };
    let c = |up| Candidate {
        addr: addr(0),
        load: 0.0,
        route_cost: 0.0,
        up,
    };
    assert_eq!(
        FollowTable.select(&req, &[c(false), c(true)]),
        Ok(Decision::Select(1))
    );
    assert_eq!(FollowTable.select(&req, &[c(false)]), Ok(Decision::Reject));
}

proptest! {
    #[test]
    fn table_matches_a_brute_force_argmin(
        peers in proptest::collection::vec((0.0f32..2.0, 0.0f64..2.0, any::<bool>()), 1..12),
    ) {
        let loads: Vec<f32> = peers.iter().map(|p| p.0).collect();
        let costs: Vec<f64> = peers.iter().map(|p| p.1).collect();
        let mut t = table_with(&loads, &costs);
        for (i, p) in peers.iter().enumerate() {
            if !p.2 {
                t.peer_down(&name(i), Epoch(i as u64 + 1)).unwrap();
            }
        }
        let u = t.compute(Instant::ZERO, &SumCost);
        let r = &u.changed[0];
        // Every reporting peer appears exactly once, in non-decreasing F order.
        prop_assert_eq!(r.candidates.len(), peers.len());
        prop_assert!(r.costs.windows(2).all(|w| w[0] <= w[1]));
        let want = peers
            .iter()
            .enumerate()
            .filter(|(_, p)| p.2)
            .map(|(i, p)| (f64::from(p.0) + p.1, addr(i)))
            .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        prop_assert_eq!(r.best().map(|c| c.addr), want.map(|w| w.1));
        let g = peers
            .iter()
            .filter(|p| p.2)
            .map(|p| f64::from(p.0))
            .fold(f64::INFINITY, f64::min);
        match u.advertisement.first() {
            Some(a) => prop_assert!((f64::from(a.load) - g).abs() < 1e-6),
            None => prop_assert!(g.is_infinite()),
        }
        for (c, m) in r.candidates.iter().zip(&r.costs) {
            prop_assert_eq!(c.up, m.is_finite());
        }
    }

    #[test]
    fn only_the_current_session_moves_the_table(
        ops in proptest::collection::vec((0usize..3, 0u64..4, 0.0f32..1.0, any::<bool>()), 1..40),
    ) {
        // Model: per peer, the current epoch and the last load accepted from it.
        let mut t = NextHopTable::new(cfg(), Instant::ZERO);
        let mut model: Vec<(u64, Option<f32>, bool)> = vec![(0, None, true); 3];
        for i in 0..3 {
            t.register(&name(i), addr(i), 0.0, Epoch(0)).unwrap();
        }
        for (seq, (peer, epoch, load, reregister)) in ops.into_iter().enumerate() {
            if reregister {
                t.register(&name(peer), addr(peer), 0.0, Epoch(epoch)).unwrap();
                model[peer].0 = epoch;
                model[peer].2 = true;
                continue;
            }
            let res = t.handle_update(Instant::ZERO, &name(peer), Epoch(epoch),
                &update(seq as u64, load));
            let current = model[peer].0 == epoch;
            prop_assert_eq!(res.is_ok(), current);
            if current {
                model[peer].1 = Some(load);
            }
        }
        for (i, m) in model.iter().enumerate() {
            prop_assert_eq!(t.reported_load(&name(i), &vip_subnet()), m.1);
        }
    }
}
