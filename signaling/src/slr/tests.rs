use super::*;
use crate::message::StateUpdate;
use router_core::engine::{Engine, EngineConfig, Verdict};
use router_core::flow::FlowConfig;
use router_core::packet::{HEADROOM, PacketBuf};
use router_core::policy::SumCost;
use router_core::synth::PacketSpec;
use router_core::wire::TcpFlags;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

const ME: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);

fn engine(level: Level) -> Engine {
    Engine::new(EngineConfig {
        level,
        local_v4: Some(ME),
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

fn control(level: Level) -> SlrControl {
    let mut cfg = SlrConfig::new(level);
    cfg.table.interval = Duration::from_millis(100);
    SlrControl::new(cfg, Arc::new(SumCost), Instant::ZERO)
}

fn name(s: &str) -> NodeName {
    NodeName::new(s).unwrap()
}

fn site(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 1, i, 1))
}

fn vips() -> SubnetPrefix {
    SubnetPrefix::new("192.200.0.0".parse().unwrap(), 16).unwrap()
}

fn registered(i: u8, role: Role) -> PeerEvent {
    PeerEvent::Registered {
        identity: name(&format!("site{i}.test")),
        level: Level::Site,
        role,
        epoch: Epoch(u64::from(i)),
    }
}

fn load(seq: u64, load: f32) -> PeerEvent {
    PeerEvent::StateUpdate(StateUpdate {
        seq,
        subnets: vec![SubnetLoad {
            subnet: vips(),
            load,
        }],
    })
}

fn syn(e: &mut Engine, port: u16, now: Instant) -> (FlowKey, Verdict) {
    let spec = PacketSpec::tcp(
        SocketAddr::new("198.51.100.7".parse().unwrap(), port),
        SocketAddr::new("192.200.0.10".parse().unwrap(), 80),
        TcpFlags::SYN,
    );
    let mut buf = vec![0u8; HEADROOM + 128];
    let n = spec.write(&mut buf[HEADROOM..]).unwrap();
    let key = router_core::classify::classify(&buf[HEADROOM..HEADROOM + n])
        .unwrap()
        .key;
    let mut pkt = PacketBuf::new(&mut buf, HEADROOM, n).unwrap();
    (key, e.process(&mut pkt, now))
}

fn actions(c: &mut SlrControl) -> Vec<SlrAction> {
    std::iter::from_fn(|| c.poll_action()).collect()
}

/// A system-level control with two registered sites (loads 0.5 and 0.2) and
/// a registered upstream.
fn system_with_sites() -> (SlrControl, Engine) {
    let mut c = control(Level::System);
    let mut e = engine(Level::System);
    c.set_upstream(Some(SessionId(100)));
    c.handle_event(
        Instant::ZERO,
        SessionId(100),
        PeerEvent::Registered {
            identity: name("net.test"),
            level: Level::Network,
            role: Role::Network,
            epoch: Epoch(9),
        },
        &mut e,
    );
    for (i, l) in [(1u8, 0.5f32), (2, 0.2)] {
        c.add_downstream(SessionId(u64::from(i)), site(i), 0.0)
            .unwrap();
        c.handle_event(
            Instant::ZERO,
            SessionId(u64::from(i)),
            registered(i, Role::Site),
            &mut e,
        );
        c.handle_event(Instant::ZERO, SessionId(u64::from(i)), load(1, l), &mut e);
    }
    c.handle_timeout(Instant::ZERO, &mut e);
    (c, e)
}

#[test]
fn table_drives_the_engine_and_advertises_upward() {
    let (mut c, mut e) = system_with_sites();
    let acts = actions(&mut c);
    assert!(acts.iter().any(|a| matches!(a,
        SlrAction::Send { session: SessionId(100), message: Outgoing::StateUpdate { subnets } }
            if (subnets[0].load - 0.2).abs() < 1e-6)));
    assert_eq!(c.served_subnets().count(), 1);
    let (_, v) = syn(&mut e, 1, Instant::from_millis(1));
    assert_eq!(
        v,
        Verdict::Forward {
            next_hop: site(2),
            fragment: false
        }
    );
}

#[test]
fn shortcut_is_installed_only_for_flows_pinned_to_the_sender() {
    let (mut c, mut e) = system_with_sites();
    actions(&mut c);
    let now = Instant::from_millis(1);
    let (key, _) = syn(&mut e, 7, now);
    let server: IpAddr = "10.1.2.11".parse().unwrap();
    let obj = TunnelObject { key, server };
    // Site 1 was not given this flow: refused, nothing relayed.
    c.handle_event(now, SessionId(1), PeerEvent::TunnelObject(obj), &mut e);
    assert_eq!(c.stats().shortcuts_refused, 1);
    assert!(actions(&mut c).is_empty());
    assert_eq!(e.lookup_flow(&key, now).unwrap().next_hop, site(2));
    // Site 2 was: installed and relayed to the upper level.
    c.handle_event(now, SessionId(2), PeerEvent::TunnelObject(obj), &mut e);
    assert_eq!(c.stats().shortcuts_installed, 1);
    assert_eq!(e.lookup_flow(&key, now).unwrap().next_hop, server);
    assert_eq!(
        actions(&mut c),
        vec![SlrAction::Send {
            session: SessionId(100),
            message: Outgoing::TunnelObject(obj)
        }]
    );
    // An unknown flow is refused.
    let mut other = obj;
    other.key.src_port = 9;
    c.handle_event(now, SessionId(2), PeerEvent::TunnelObject(other), &mut e);
    assert_eq!(c.stats().shortcuts_refused, 2);
}

#[test]
fn wrong_role_is_refused_and_down_peers_leave_the_choice() {
    let (mut c, mut e) = system_with_sites();
    actions(&mut c);
    c.add_downstream(SessionId(3), site(3), 0.0).unwrap();
    c.handle_event(
        Instant::ZERO,
        SessionId(3),
        registered(3, Role::Host),
        &mut e,
    );
    assert_eq!(c.stats().unexpected_roles, 1);
    assert_eq!(
        actions(&mut c),
        vec![SlrAction::Close {
            session: SessionId(3)
        }]
    );
    c.handle_event(
        Instant::ZERO,
        SessionId(2),
        PeerEvent::PeerDown {
            reason: crate::DownReason::Timeout,
        },
        &mut e,
    );
    assert_eq!(
        actions(&mut c),
        vec![SlrAction::NextHopDown { addr: site(2) }]
    );
    c.handle_timeout(Instant::from_millis(100), &mut e);
    let (_, v) = syn(&mut e, 8, Instant::from_millis(101));
    assert_eq!(
        v,
        Verdict::Forward {
            next_hop: site(1),
            fragment: false
        }
    );
    assert!(c.downstream_peer(SessionId(2)).is_none());
}

#[test]
fn site_originates_shortcuts_and_entry_programming() {
    let mut c = control(Level::Site);
    let key = FlowKey {
        proto: 6,
        src: "198.51.100.7".parse().unwrap(),
        src_port: 1,
        dst: "192.200.0.10".parse().unwrap(),
        dst_port: 80,
    };
    let server: IpAddr = "10.1.1.11".parse().unwrap();
    c.flow_pinned(key, server);
    assert_eq!(c.stats().shortcuts_unsent, 1, "no upstream yet");
    let mut cfg = SlrConfig::new(Level::Site);
    cfg.entry_routers = true;
    let mut c = SlrControl::new(cfg, Arc::new(SumCost), Instant::ZERO);
    c.flow_pinned(key, server);
    assert_eq!(
        actions(&mut c),
        vec![SlrAction::ProgramEntry(TunnelObject { key, server })]
    );
    let mut cfg = SlrConfig::new(Level::Site);
    cfg.shortcuts = false;
    let mut c = SlrControl::new(cfg, Arc::new(SumCost), Instant::ZERO);
    c.flow_pinned(key, server);
    assert_eq!(c.stats().shortcuts_originated, 0);
}

#[test]
fn hot_swap_changes_new_flows_only() {
    struct Second;
    impl Policy for Second {
        fn name(&self) -> &str {
            "second"
        }
        fn select(
            &self,
            _: &router_core::FlowRequest,
            c: &[router_core::Candidate],
        ) -> Result<router_core::Decision, router_core::PolicyError> {
            Ok(router_core::Decision::Select(c.len() - 1))
        }
    }
    let (mut c, mut e) = system_with_sites();
    let now = Instant::from_millis(1);
    let (k1, v) = syn(&mut e, 1, now);
    assert_eq!(
        v,
        Verdict::Forward {
            next_hop: site(2),
            fragment: false
        }
    );
    assert_eq!(c.set_policy(Arc::new(Second), &mut e), 1);
    let (_, v) = syn(&mut e, 2, now);
    assert_eq!(
        v,
        Verdict::Forward {
            next_hop: site(1),
            fragment: false
        }
    );
    assert_eq!(e.lookup_flow(&k1, now).unwrap().next_hop, site(2));
}

#[test]
fn install_shortcut_is_idempotent() {
    let (_, mut e) = system_with_sites();
    let now = Instant::from_millis(1);
    let (key, _) = syn(&mut e, 5, now);
    let obj = TunnelObject {
        key,
        server: "10.1.2.11".parse().unwrap(),
    };
    install_shortcut(&mut e, &obj, site(2), now).unwrap();
    install_shortcut(&mut e, &obj, site(2), now).unwrap();
    assert!(matches!(
        install_shortcut(&mut e, &obj, site(1), now),
        Ok(())
    ));
    let obj2 = TunnelObject {
        key,
        server: "10.1.1.11".parse().unwrap(),
    };
    assert!(matches!(
        install_shortcut(&mut e, &obj2, site(1), now),
        Err(ShortcutError::NotPinnedToSender { .. })
    ));
}
