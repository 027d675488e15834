//! Arbitrary bytes through `Engine::process`, as a site, system or network SLR would
//! see them: first as a packet to a VIP, then wrapped as if tunnelled to us.
#![no_main]

use libfuzzer_sys::fuzz_target;
use router_core::api::RouterApi;
use router_core::flow::FlowConfig;
use router_core::{Candidate, Engine, EngineConfig, HEADROOM, Instant, PacketBuf};
use std::cell::RefCell;
use std::net::IpAddr;

thread_local! {
    static ENGINE: RefCell<Engine> = RefCell::new(engine());
}

fn engine() -> Engine {
    let mut e = Engine::new(EngineConfig {
        local_v4: Some("10.0.0.1".parse().unwrap()),
        local_v6: Some("fd00::1".parse().unwrap()),
        tunnel_mtu: 600,
        flows: FlowConfig { capacity_v4: 4096, capacity_v6: 1024, ..FlowConfig::default() },
        ..EngineConfig::default()
    });
    for (subnet, hops) in [
        ("192.200.0.0/16", ["10.1.0.1", "10.1.0.2"]),
        ("2001:db8::/32", ["fd00::2", "fd00::3"]),
        ("0.0.0.0/0", ["10.1.0.3", "10.1.0.4"]),
    ] {
        let id = e.add_subnet(subnet.parse().unwrap()).unwrap();
        let cands = hops
            .iter()
            .map(|h| Candidate { addr: h.parse::<IpAddr>().unwrap(), load: 0.5, route_cost: 1.0, up: true })
            .collect();
        e.set_candidates(id, cands).unwrap();
    }
    e
}

fuzz_target!(|data: &[u8]| {
    if data.len() > 9000 {
        return;
    }
    let mut buf = vec![0u8; HEADROOM + data.len()];
    buf[HEADROOM..].copy_from_slice(data);
    ENGINE.with(|e| {
        let mut e = e.borrow_mut();
        let now = Instant::from_millis(u64::from(data.first().copied().unwrap_or(0)) * 100);
        if let Ok(mut pkt) = PacketBuf::new(&mut buf, HEADROOM, data.len()) {
            let _ = e.process(&mut pkt, now);
        }
    });
});
