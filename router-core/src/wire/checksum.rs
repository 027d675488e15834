//! The Internet checksum (RFC 1071) and the IPv4/IPv6 pseudo-headers.
//!
//! Partial sums are `u32` values already folded to at most 16 bits, so they chain:
//! `fold(sum(segment, pseudo_header_v4(..)))`.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Fold a 64-bit ones-complement accumulator to 16 bits (end-around carries).
#[inline]
fn fold64(mut s: u64) -> u16 {
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    // Two 32-bit and two 16-bit folds bring any u64 below 0x10000.
    s as u16
}

/// Ones-complement sum of `data` as big-endian 16-bit words (RFC 1071 §4.1; an odd
/// trailing byte is padded with a zero byte), added to `initial`. The result is
/// folded to at most 16 bits and not complemented.
///
/// Reads 8 bytes at a time in native byte order and swaps once at the end: the
/// ones-complement sum is byte-order independent (RFC 1071 §2(B)).
#[must_use]
pub fn sum(data: &[u8], initial: u32) -> u32 {
    let (words, tail) = data.as_chunks::<8>();
    // Two lanes of 32-bit halves: each add is below 2^32, so neither lane can
    // overflow for inputs below 2^35 bytes (packets are at most 64 KiB).
    let (mut lo, mut hi) = (0u64, 0u64);
    for w in words {
        let x = u64::from_ne_bytes(*w);
        lo += x & 0xffff_ffff;
        hi += x >> 32;
    }
    // At most 7 bytes remain: one 4-byte word, one 2-byte word, one odd byte.
    let (w4, rest) = tail.as_chunks::<4>();
    for w in w4 {
        lo += u64::from(u32::from_ne_bytes(*w));
    }
    let (w2, rest) = rest.as_chunks::<2>();
    for w in w2 {
        hi += u64::from(u16::from_ne_bytes(*w));
    }
    if let [b] = rest {
        // RFC 1071 §4.1: the odd byte is padded with a zero to a full word.
        hi += u64::from(u16::from_ne_bytes([*b, 0]));
    }
    let (both, carry) = lo.overflowing_add(hi);
    let native = both + u64::from(carry);
    let be = u16::from_be(fold64(native));
    u32::from(fold64(u64::from(initial) + u64::from(be)))
}

/// Fold the carries of a partial sum into 16 bits and complement it: the value to
/// store in a checksum field, or 0 when verifying a correct message (RFC 1071 §1).
#[must_use]
pub fn fold(sum: u32) -> u16 {
    !fold64(u64::from(sum))
}

/// Partial sum of the IPv4 pseudo-header (RFC 9293 §3.1, RFC 768): source,
/// destination, zero + protocol, upper-layer length.
#[must_use]
pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: u16) -> u32 {
    let word = |a: [u8; 4]| {
        u32::from(u16::from_be_bytes([a[0], a[1]])) + u32::from(u16::from_be_bytes([a[2], a[3]]))
    };
    word(src.octets()) + word(dst.octets()) + u32::from(proto) + u32::from(len)
}

/// Partial sum of the IPv6 pseudo-header (RFC 8200 §8.1): source, destination,
/// 32-bit upper-layer length, three zero bytes and the next header.
#[must_use]
pub fn pseudo_header_v6(src: &Ipv6Addr, dst: &Ipv6Addr, proto: u8, len: u32) -> u32 {
    let addrs = src
        .segments()
        .into_iter()
        .chain(dst.segments())
        .map(u32::from)
        .sum::<u32>();
    addrs + (len >> 16) + (len & 0xffff) + u32::from(proto)
}

/// Complete, in place, a TCP or UDP checksum its sender left partial: the
/// pseudo-header sum alone, for the NIC or the kernel to finish (Linux's
/// CHECKSUM_PARTIAL). A kernel that forwards such a packet without finishing
/// it (a tc program redirecting it between namespaces) can deliver it, inside
/// a tunnel, to a userspace router's raw socket, which sees the unfinished
/// field; sent on as it is, the server's stack drops it. Only a checksum that
/// fails to verify and holds exactly the pseudo-header sum is completed; IP
/// fragments, IPv6 extension headers and other protocols are left alone.
/// Returns whether it completed one.
pub fn complete_partial(packet: &mut [u8]) -> bool {
    let Some(&first) = packet.first() else {
        return false;
    };
    let (l4_start, l4_len, proto, pseudo) = match first >> 4 {
        4 if packet.len() >= 20 => {
            let ihl = usize::from(first & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
            let frag = u16::from_be_bytes([packet[6], packet[7]]) & 0x3fff;
            if ihl < 20 || total < ihl || total > packet.len() || frag != 0 {
                return false;
            }
            let proto = packet[9];
            let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
            let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
            let Ok(len) = u16::try_from(total - ihl) else {
                return false;
            };
            (
                ihl,
                total - ihl,
                proto,
                pseudo_header_v4(src, dst, proto, len),
            )
        }
        6 if packet.len() >= 40 => {
            let payload = usize::from(u16::from_be_bytes([packet[4], packet[5]]));
            if 40 + payload > packet.len() {
                return false;
            }
            let proto = packet[6];
            let addr = |at: usize| {
                let mut a = [0u8; 16];
                a.copy_from_slice(&packet[at..at + 16]);
                Ipv6Addr::from(a)
            };
            let Ok(len) = u32::try_from(payload) else {
                return false;
            };
            (
                40,
                payload,
                proto,
                pseudo_header_v6(&addr(8), &addr(24), proto, len),
            )
        }
        _ => return false,
    };
    let field = match proto {
        super::ip_proto::TCP if l4_len >= 20 => 16,
        super::ip_proto::UDP if l4_len >= 8 => 6,
        _ => return false,
    };
    let l4 = &mut packet[l4_start..l4_start + l4_len];
    let stored = u16::from_be_bytes([l4[field], l4[field + 1]]);
    // The sender's seed: the folded pseudo-header sum, not complemented.
    if stored != !fold(pseudo) || fold(sum(l4, pseudo)) == 0 {
        return false;
    }
    l4[field..field + 2].copy_from_slice(&[0, 0]);
    let mut c = fold(sum(l4, pseudo));
    if proto == super::ip_proto::UDP && c == 0 {
        c = 0xffff;
    }
    l4[field..field + 2].copy_from_slice(&c.to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn partial_checksums_are_completed_and_nothing_else_is_touched() {
        // IPv4/TCP 10.0.0.1:1000 -> 192.200.0.10:80 with 4 payload bytes.
        let mut p = vec![0u8; 20 + 24];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&44u16.to_be_bytes());
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[192, 200, 0, 10]);
        p[20..22].copy_from_slice(&1000u16.to_be_bytes());
        p[22..24].copy_from_slice(&80u16.to_be_bytes());
        p[32] = 0x50;
        p[33] = 0x18;
        p[40..44].copy_from_slice(b"GET ");
        let pseudo = pseudo_header_v4(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(192, 200, 0, 10),
            6,
            24,
        );
        let good = fold(sum(&p[20..], pseudo));
        let mut full = p.clone();
        full[36..38].copy_from_slice(&good.to_be_bytes());
        // As a sender's kernel leaves it for the NIC.
        let mut partial = p.clone();
        partial[36..38].copy_from_slice(&(!fold(pseudo)).to_be_bytes());
        assert!(complete_partial(&mut partial));
        assert_eq!(partial, full);
        assert_eq!(fold(sum(&partial[20..], pseudo)), 0, "it verifies");
        // A correct checksum, a corrupt one, a fragment: untouched.
        let before = full.clone();
        assert!(!complete_partial(&mut full));
        assert_eq!(full, before);
        let mut corrupt = before.clone();
        corrupt[37] ^= 0x55;
        assert!(!complete_partial(&mut corrupt));
        let mut frag = partial.clone();
        frag[36..38].copy_from_slice(&(!fold(pseudo)).to_be_bytes());
        frag[6] = 0x20;
        assert!(!complete_partial(&mut frag));
        assert!(!complete_partial(&mut []));
        assert!(!complete_partial(&mut [0x45, 0, 0]));
    }

    /// The textbook loop of RFC 1071 §4.1, as an oracle for the fast path.
    fn reference(data: &[u8], initial: u32) -> u16 {
        let mut s = u64::from(initial);
        for c in data.chunks(2) {
            let hi = u64::from(c[0]) << 8;
            s += hi | c.get(1).map_or(0, |&b| u64::from(b));
        }
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    /// RFC 1071 §3 worked example: bytes 00 01 f2 03 f4 f5 f6 f7 sum to ddf2.
    #[test]
    fn rfc1071_example() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(sum(&data, 0), 0xddf2);
        assert_eq!(fold(sum(&data, 0)), !0xddf2);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(sum(&[0xab], 0), 0xab00);
        assert_eq!(sum(&[0x12, 0x34, 0xab], 0), 0x1234 + 0xab00);
    }

    #[test]
    fn pseudo_headers_match_byte_layout() {
        let (s4, d4) = (Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(198, 51, 100, 7));
        let mut ph = [0u8; 12];
        ph[..4].copy_from_slice(&s4.octets());
        ph[4..8].copy_from_slice(&d4.octets());
        ph[9] = 6;
        ph[10..].copy_from_slice(&1234u16.to_be_bytes());
        assert_eq!(fold(pseudo_header_v4(s4, d4, 6, 1234)), fold(sum(&ph, 0)));

        let (s6, d6): (Ipv6Addr, Ipv6Addr) = (
            "2001:db8::1".parse().unwrap(),
            "fe80::abcd:ef01".parse().unwrap(),
        );
        let mut ph = [0u8; 40];
        ph[..16].copy_from_slice(&s6.octets());
        ph[16..32].copy_from_slice(&d6.octets());
        ph[32..36].copy_from_slice(&0x0001_0203u32.to_be_bytes());
        ph[39] = 17;
        assert_eq!(
            fold(pseudo_header_v6(&s6, &d6, 17, 0x0001_0203)),
            fold(sum(&ph, 0))
        );
    }

    proptest! {
        #[test]
        fn fast_sum_matches_reference(data in proptest::collection::vec(any::<u8>(), 0..300), initial in any::<u32>()) {
            prop_assert_eq!(sum(&data, initial), u32::from(reference(&data, initial)));
        }

        #[test]
        fn sum_chains_over_even_splits(data in proptest::collection::vec(any::<u8>(), 0..300), cut in any::<usize>()) {
            let cut = (cut % (data.len() + 1)) & !1;
            let whole = fold(sum(&data, 0));
            prop_assert_eq!(fold(sum(&data[cut..], sum(&data[..cut], 0))), whole);
        }

        #[test]
        fn stored_checksum_verifies(mut data in proptest::collection::vec(any::<u8>(), 2..300), at in any::<usize>()) {
            // Put the checksum at an even offset, like every header here does.
            let at = (at % (data.len() - 1)) & !1;
            data[at] = 0;
            data[at + 1] = 0;
            let c = fold(sum(&data, 0));
            data[at..at + 2].copy_from_slice(&c.to_be_bytes());
            prop_assert_eq!(fold(sum(&data, 0)), 0);
        }
    }
}
