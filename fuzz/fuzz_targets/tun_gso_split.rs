//! The router TUN's software GSO (`[tunnel] offload`): tun-rs's `gso_split`,
//! which the engine's TUN read (`TunDevice::recv_batch` -> `recv_multiple`)
//! runs on every super-packet the kernel hands over, cutting it into segments
//! with their own IP and transport headers and checksums.
//!
//! The kernel writes the virtio header (GSO type, segment size, where the
//! transport header starts); the bytes are a forwarded packet's, coalesced by
//! GRO from what arrived from the network: a stranger chooses them. So the
//! target builds the header as the kernel would for the packet (family from
//! the version nibble, transport start from the IPv4 header length or 40 for
//! IPv6, TCP or UDP), takes the segment size, ECN bit and protocol from the
//! input, applies the checks `recv_multiple` makes before it splits (as tun-rs
//! 2.8 does them in `handle_virtio_read`), and splits into the router's slots:
//! 64 segments, each after `HEADROOM` bytes of a 9 216-byte packet room.
//!
//! Checks: nothing panics; at most 64 segments, each fitting its slot and at
//! most one header plus one segment size long; the segments carry the input's
//! payload exactly (their lengths past the header add up to the input's).
#![no_main]

use libfuzzer_sys::fuzz_target;
use router_core::HEADROOM;
use tun_rs::{
    VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_UDP_L4, VirtioNetHdr,
    gso_split,
};

const SEGMENTS: usize = 64;
const ROOM: usize = HEADROOM + 9216;
const GSO_ECN: u8 = 0x80;
const NEEDS_CSUM: u8 = 1;

fuzz_target!(|data: &[u8]| {
    let [mode, s0, s1, packet @ ..] = data else {
        return;
    };
    let gso_size = u16::from_be_bytes([*s0, *s1]);
    let mut input = packet.to_vec();
    let Some(first) = input.first() else {
        return;
    };
    let is_v6 = match first >> 4 {
        4 => false,
        6 => true,
        _ => return,
    };
    let udp = mode & 1 != 0;
    let csum_start: u16 = if is_v6 {
        40
    } else {
        u16::from(first & 0x0f) * 4
    };
    let mut hdr = VirtioNetHdr {
        flags: NEEDS_CSUM,
        gso_type: match (udp, is_v6) {
            (true, _) => VIRTIO_NET_HDR_GSO_UDP_L4,
            (false, false) => VIRTIO_NET_HDR_GSO_TCPV4,
            (false, true) => VIRTIO_NET_HDR_GSO_TCPV6,
        },
        hdr_len: 0,
        gso_size,
        csum_start,
        csum_offset: if udp { 6 } else { 16 },
    };
    if !udp && mode & 2 != 0 {
        hdr.gso_type |= GSO_ECN;
    }
    // recv_multiple's checks before it splits (tun-rs 2.8, handle_virtio_read).
    if hdr.gso_size == 0 {
        return;
    }
    let len = input.len();
    let start = usize::from(csum_start);
    hdr.hdr_len = if udp {
        csum_start + 8
    } else {
        let Some(&off) = input.get(start + 12) else {
            return;
        };
        let tcp = u16::from(off >> 4) * 4;
        if !(20..=60).contains(&tcp) {
            return;
        }
        csum_start + tcp
    };
    let hdr_len = usize::from(hdr.hdr_len);
    if len < hdr_len || start + usize::from(hdr.csum_offset) + 1 > len {
        return;
    }

    let mut bufs = vec![vec![0u8; ROOM]; SEGMENTS];
    let mut sizes = [0usize; SEGMENTS];
    let Ok(n) = gso_split(&mut input, hdr, &mut bufs, &mut sizes, HEADROOM, is_v6) else {
        return;
    };
    assert!(n <= SEGMENTS, "{n} segments");
    let mut payload = 0;
    for &size in &sizes[..n] {
        assert!(size <= ROOM - HEADROOM, "segment of {size} bytes");
        assert!(size >= hdr_len, "segment of {size} bytes, header {hdr_len}");
        assert!(
            size - hdr_len <= usize::from(gso_size),
            "segment payload {} > gso_size {gso_size}",
            size - hdr_len
        );
        payload += size - hdr_len;
    }
    assert_eq!(payload, len - hdr_len, "payload lost or invented");
});
