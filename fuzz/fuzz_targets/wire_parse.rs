//! Arbitrary bytes through every wire view and the classifier: nothing may panic,
//! and after `new_checked` succeeds every accessor must be safe to call.
#![no_main]

use libfuzzer_sys::fuzz_target;
use router_core::classify::classify;
use router_core::wire::{
    Icmpv4Packet, Icmpv6Packet, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, TcpPacket, UdpPacket,
    walk_extensions,
};

fuzz_target!(|data: &[u8]| {
    let _ = classify(data);
    if let Ok(p) = Ipv4Packet::new_checked(data) {
        let _ = (
            p.src_addr(),
            p.dst_addr(),
            p.options().len(),
            p.payload().len(),
        );
        let _ = (
            p.verify_checksum(),
            p.ttl(),
            p.frag_offset(),
            p.ecn(),
            p.dscp(),
        );
        let _ = Ipv4Repr::parse(&p);
    }
    if let Ok(p) = Ipv6Packet::new_checked(data) {
        let _ = (
            p.src_addr(),
            p.dst_addr(),
            p.flow_label(),
            p.payload().len(),
        );
        let _ = walk_extensions(p.next_header(), p.payload());
        let _ = Ipv6Repr::parse(&p);
    }
    if let Ok(t) = TcpPacket::new_checked(data) {
        let _ = (
            t.flags(),
            t.options().len(),
            t.payload().len(),
            t.seq_number(),
        );
    }
    if let Ok(u) = UdpPacket::new_checked(data) {
        let _ = (u.len(), u.payload().len());
    }
    if let Ok(i) = Icmpv4Packet::new_checked(data) {
        let _ = (
            i.msg_type(),
            i.data().len(),
            i.verify_checksum(),
            i.next_hop_mtu(),
        );
    }
    if let Ok(i) = Icmpv6Packet::new_checked(data) {
        let _ = (i.msg_type(), i.data().len(), i.mtu());
    }
});
