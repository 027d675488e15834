//! Helpers shared by the unit tests of the tc modules.

use super::*;
use crate::classify::VirtualSubnet;
use netlink_packet_route::tc::TcMessage;
use rtnetlink::packet_core::Emitable;

pub(super) fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

pub(super) fn bytes(m: &TcMessage) -> Vec<u8> {
    let mut b = vec![0; m.buffer_len()];
    m.emit(&mut b);
    b
}

pub(super) fn subnet(s: &str) -> VirtualSubnet {
    s.parse().unwrap()
}

pub(super) fn class(minor: u16, rate: u64, ceil: u64) -> HtbClass {
    let clock = PschedClock::HIGH_RES;
    HtbClass {
        id: TcId::new(1, minor),
        parent: TcId::new(1, 1),
        rate,
        ceil,
        burst: clock.default_burst(rate, 1600, 0.0),
        cburst: clock.default_burst(ceil, 1600, 0.0),
        quantum: 1600,
        leaf: true,
        depth: 1,
    }
}

pub(super) fn tenants() -> ShareTreeConfig {
    ShareTreeConfig::new(100_000_000)
        .with_class(ShareClassConfig::new(0x10, 20))
        .with_class(ShareClassConfig::new(0x20, 30))
        .with_class(ShareClassConfig::new(0x30, 50))
        .with_filter(subnet("192.0.2.0/24"), 0x10)
        .with_filter(subnet("198.51.100.0/24"), 0x20)
        .with_filter(subnet("203.0.113.0/24"), 0x30)
        .with_default(0x30)
}
