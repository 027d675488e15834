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
        flows: FlowConfig {
            capacity_v4: 4096,
            capacity_v6: 1024,
            ..FlowConfig::default()
        },
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
            .map(|h| Candidate {
                addr: h.parse::<IpAddr>().unwrap(),
                load: 0.5,
                route_cost: 1.0,
                up: true,
            })
            .collect();
        e.set_candidates(id, cands).unwrap();
    }
    e
}

/// Make an IPv4 header self-consistent (total length, checksum) so the fuzzer gets
/// past the checks every real router does first and reaches the deeper walk.
fn fix_ipv4(pkt: &mut [u8]) {
    if pkt.len() < 20 || pkt[0] >> 4 != 4 {
        return;
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    if ihl < 20 || ihl > pkt.len() {
        return;
    }
    let total = u16::try_from(pkt.len()).unwrap_or(u16::MAX);
    pkt[2..4].copy_from_slice(&total.to_be_bytes());
    pkt[10..12].fill(0);
    let mut sum = 0u32;
    for c in pkt[..ihl].chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    pkt[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

fuzz_target!(|input: &[u8]| {
    // First byte: mode (bit 0 fix the inner header, bit 1 wrap in IP-in-IP to us,
    // bit 2 wrap twice) and clock.
    let Some((&mode, data)) = input.split_first() else {
        return;
    };
    if data.len() > 9000 {
        return;
    }
    let mut pkt = data.to_vec();
    if mode & 1 != 0 {
        fix_ipv4(&mut pkt);
    }
    for _ in 0..((mode >> 1) & 3).min(2) {
        let mut outer = vec![
            0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 4, 0, 0, 10, 9, 9, 9, 10, 0, 0, 1,
        ];
        if pkt.first().is_some_and(|b| b >> 4 == 6) {
            outer[9] = 41;
        }
        outer.extend_from_slice(&pkt);
        fix_ipv4(&mut outer);
        pkt = outer;
    }
    let mut buf = vec![0u8; HEADROOM + pkt.len()];
    buf[HEADROOM..].copy_from_slice(&pkt);
    ENGINE.with(|e| {
        let mut e = e.borrow_mut();
        let now = Instant::from_millis(u64::from(mode) * 100);
        if let Ok(mut p) = PacketBuf::new(&mut buf, HEADROOM, pkt.len()) {
            let _ = e.process(&mut p, now);
        }
    });
});
