//! The host's decapsulation path (router-core's `HostDecap`, what the host agent
//! runs on every IP-in-IP packet its raw sockets receive) on arbitrary bytes:
//! as received, and wrapped in a consistent outer header with a served inner
//! destination on request, so inputs get past the checks to the decisions.
//!
//! Checks: nothing panics; what it injects is one well-formed IP packet, exactly
//! as long as its header says, to a served subnet, not itself a tunnel, and
//! inside the bytes received.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use router_core::classify::VirtualSubnet;
use router_core::linux::{HostDecap, HostVerdict};
use router_core::wire::{self, Ipv4Packet, Ipv6Packet, ip_proto};
use router_core::{HEADROOM, PacketBuf};

const SERVED_V4: [u8; 4] = [192, 200, 0, 10];
const SERVED_V6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

fn subnets() -> Vec<VirtualSubnet> {
    ["192.200.0.0/24", "2001:db8::/64"]
        .iter()
        .map(|s| s.parse().expect("subnet"))
        .collect()
}

fn ipv4_checksum(hdr: &mut [u8]) {
    hdr[10..12].fill(0);
    let mut sum = 0u32;
    for c in hdr.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let sum = u16::try_from(sum).unwrap_or(u16::MAX);
    hdr[10..12].copy_from_slice(&(!sum).to_be_bytes());
}

/// Make the inner header self-consistent (lengths, checksum), optionally to a
/// served destination.
fn fix_inner(pkt: &mut [u8], served: bool) {
    match pkt.first().map(|b| b >> 4) {
        Some(4) if pkt.len() >= 20 => {
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            if ihl < 20 || ihl > pkt.len() {
                return;
            }
            if served {
                pkt[16..20].copy_from_slice(&SERVED_V4);
            }
            let total = u16::try_from(pkt.len()).unwrap_or(u16::MAX);
            pkt[2..4].copy_from_slice(&total.to_be_bytes());
            ipv4_checksum(&mut pkt[..ihl]);
        }
        Some(6) if pkt.len() >= 40 => {
            if served {
                pkt[24..40].copy_from_slice(&SERVED_V6);
            }
            let payload = u16::try_from(pkt.len() - 40).unwrap_or(u16::MAX);
            pkt[4..6].copy_from_slice(&payload.to_be_bytes());
        }
        _ => {}
    }
}

/// An outer header toward the host: IPv4 or IPv6, protocol by the inner version.
fn wrap(inner: &[u8], v6_outer: bool, ecn: u8) -> Vec<u8> {
    let proto = if inner.first().is_some_and(|b| b >> 4 == 6) {
        ip_proto::IPV6
    } else {
        ip_proto::IPV4
    };
    let mut out = if v6_outer {
        let mut h = vec![0x60 | (ecn >> 2), (ecn & 3) << 4, 0, 0, 0, 0, proto, 64];
        h[4..6].copy_from_slice(&u16::try_from(inner.len()).unwrap_or(u16::MAX).to_be_bytes());
        h.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        h.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        h
    } else {
        vec![
            0x45,
            ecn & 3,
            0,
            0,
            0,
            0,
            0x40,
            0,
            64,
            proto,
            0,
            0,
            10,
            9,
            9,
            9,
            10,
            0,
            0,
            2,
        ]
    };
    out.extend_from_slice(inner);
    if !v6_outer {
        let total = u16::try_from(out.len()).unwrap_or(u16::MAX);
        out[2..4].copy_from_slice(&total.to_be_bytes());
        ipv4_checksum(&mut out[..20]);
    }
    out
}

fn served(decap_subnets: &[VirtualSubnet], dst: IpAddr) -> bool {
    decap_subnets.iter().any(|s| s.contains(dst))
}

fuzz_target!(|input: &[u8]| {
    // First byte: bit 0 fix the inner header, bit 1 also aim it at a served
    // address, bit 2 wrap it in an outer header (bit 3: IPv6), bits 4-5 the
    // outer ECN field.
    let Some((&mode, data)) = input.split_first() else {
        return;
    };
    if data.len() > 9000 {
        return;
    }
    let subnets = subnets();
    let decap = HostDecap::new(&subnets, 16);
    let mut pkt = data.to_vec();
    if mode & 1 != 0 {
        fix_inner(&mut pkt, mode & 2 != 0);
    }
    if mode & 4 != 0 {
        pkt = wrap(&pkt, mode & 8 != 0, (mode >> 4) & 3);
    }
    let mut buf = vec![0u8; HEADROOM + pkt.len()];
    buf[HEADROOM..].copy_from_slice(&pkt);
    let Ok(mut p) = PacketBuf::new(&mut buf, HEADROOM, pkt.len()) else {
        return;
    };
    let verdict = decap.process(&mut p);
    if verdict != HostVerdict::Inject {
        return;
    }
    let inner = p.data();
    assert!(p.start() >= HEADROOM && p.start() + inner.len() <= HEADROOM + pkt.len());
    let (dst, proto) = match wire::ip_version(inner).expect("injected packet has a version") {
        4 => {
            let ip = Ipv4Packet::new_checked(inner).expect("injected IPv4 parses");
            assert!(ip.verify_checksum(), "injected IPv4 with a bad checksum");
            assert_eq!(usize::from(ip.total_len()), inner.len());
            (IpAddr::V4(ip.dst_addr()), ip.protocol())
        }
        6 => {
            let ip = Ipv6Packet::new_checked(inner).expect("injected IPv6 parses");
            assert_eq!(40 + usize::from(ip.payload_len()), inner.len());
            let upper = wire::walk_extensions(ip.next_header(), ip.payload())
                .expect("injected IPv6 extensions walk");
            (IpAddr::V6(ip.dst_addr()), upper.protocol)
        }
        v => panic!("injected a packet of IP version {v}"),
    };
    assert!(
        served(&subnets, dst),
        "injected a packet to {dst}, which is not served"
    );
    assert!(
        proto != ip_proto::IPV4 && proto != ip_proto::IPV6,
        "injected a nested tunnel"
    );
});
