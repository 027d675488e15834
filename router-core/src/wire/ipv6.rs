//! IPv6 header view (RFC 8200 §3) and the extension-header walk (RFC 8200 §4).

use super::{Field, Result, WireError, ip_proto, need, read_u16, read_u32, write_u16, write_u32};
use std::net::Ipv6Addr;

mod field {
    use super::Field;
    pub(super) const VER_TC_FLOW: usize = 0;
    pub(super) const LENGTH: usize = 4;
    pub(super) const NXT_HDR: usize = 6;
    pub(super) const HOP_LIMIT: usize = 7;
    pub(super) const SRC_ADDR: Field = 8..24;
    pub(super) const DST_ADDR: Field = 24..40;
}

/// Fixed header length.
const HEADER_LEN: usize = 40;

/// A view of an IPv6 packet in a byte buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Wrap a buffer without validating it (for headers being built).
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wrap untrusted bytes: `new_unchecked` followed by [`Self::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Validate what every getter relies on: at least 40 bytes, version 6, and
    /// 40 + payload length <= buffer (RFC 8200 §3). A zero payload length with a
    /// hop-by-hop header announces a jumbogram (RFC 2675 §2), which is
    /// `Unsupported`.
    pub fn check_len(&self) -> Result<()> {
        let buf = self.buffer.as_ref();
        need("IPv6 header", HEADER_LEN, buf.len())?;
        if self.version() != 6 {
            return Err(WireError::Malformed {
                what: "IPv6 header",
                reason: "version is not 6",
            });
        }
        if self.payload_len() == 0 && self.next_header() == ip_proto::HOPOPT {
            return Err(WireError::Unsupported {
                what: "IPv6 jumbo payload length",
                value: 0,
            });
        }
        need(
            "IPv6 packet",
            HEADER_LEN + usize::from(self.payload_len()),
            buf.len(),
        )
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    fn word0(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::VER_TC_FLOW)
    }

    /// Version field (6 for IPv6).
    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_TC_FLOW] >> 4
    }

    /// Traffic class: DSCP and ECN (RFC 8200 §7).
    #[inline]
    pub fn traffic_class(&self) -> u8 {
        (self.word0() >> 20) as u8
    }

    /// Differentiated services codepoint (RFC 2474 §3).
    #[inline]
    pub fn dscp(&self) -> u8 {
        self.traffic_class() >> 2
    }

    /// ECN field (RFC 3168 §5).
    #[inline]
    pub fn ecn(&self) -> u8 {
        self.traffic_class() & 0x03
    }

    /// Flow label, 20 bits (RFC 6437).
    #[inline]
    pub fn flow_label(&self) -> u32 {
        self.word0() & 0x000f_ffff
    }

    /// Payload length: bytes after the fixed header, extension headers included.
    #[inline]
    pub fn payload_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH)
    }

    /// Type of the header after the fixed header (see [`super::ip_proto`]).
    #[inline]
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NXT_HDR]
    }

    /// Hop limit.
    #[inline]
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    /// Source address.
    #[inline]
    pub fn src_addr(&self) -> Ipv6Addr {
        addr(&self.buffer.as_ref()[field::SRC_ADDR])
    }

    /// Destination address.
    #[inline]
    pub fn dst_addr(&self) -> Ipv6Addr {
        addr(&self.buffer.as_ref()[field::DST_ADDR])
    }

    /// Payload: the `payload_len` bytes after the fixed header; link-layer padding
    /// is excluded.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        let end = HEADER_LEN + usize::from(self.payload_len());
        self.buffer
            .as_ref()
            .get(HEADER_LEN..end)
            .unwrap_or_default()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    #[inline]
    fn set_word0(&mut self, mask: u32, value: u32) {
        let w = (self.word0() & !mask) | (value & mask);
        write_u32(self.buffer.as_mut(), field::VER_TC_FLOW, w);
    }

    /// Set the version field (6).
    #[inline]
    pub fn set_version(&mut self, version: u8) {
        self.set_word0(0xf000_0000, u32::from(version) << 28);
    }

    /// Set the traffic class, keeping version and flow label.
    #[inline]
    pub fn set_traffic_class(&mut self, tc: u8) {
        self.set_word0(0x0ff0_0000, u32::from(tc) << 20);
    }

    /// Set the 20-bit flow label (higher bits are ignored).
    #[inline]
    pub fn set_flow_label(&mut self, label: u32) {
        self.set_word0(0x000f_ffff, label);
    }

    /// Set the payload length.
    #[inline]
    pub fn set_payload_len(&mut self, len: u16) {
        write_u16(self.buffer.as_mut(), field::LENGTH, len);
    }

    /// Set the next header.
    #[inline]
    pub fn set_next_header(&mut self, next_header: u8) {
        self.buffer.as_mut()[field::NXT_HDR] = next_header;
    }

    /// Set the hop limit.
    #[inline]
    pub fn set_hop_limit(&mut self, hop_limit: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = hop_limit;
    }

    /// Set the source address.
    #[inline]
    pub fn set_src_addr(&mut self, addr: Ipv6Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&addr.octets());
    }

    /// Set the destination address.
    #[inline]
    pub fn set_dst_addr(&mut self, addr: Ipv6Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&addr.octets());
    }

    /// Mutable payload (empty if `payload_len` exceeds the buffer).
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = HEADER_LEN + usize::from(self.payload_len());
        self.buffer
            .as_mut()
            .get_mut(HEADER_LEN..end)
            .unwrap_or_default()
    }
}

fn addr(b: &[u8]) -> Ipv6Addr {
    let mut o = [0u8; 16];
    o.copy_from_slice(b);
    Ipv6Addr::from(o)
}

/// The fixed-header fields of an IPv6 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Repr {
    /// Source address.
    pub src: Ipv6Addr,
    /// Destination address.
    pub dst: Ipv6Addr,
    /// Next header.
    pub next_header: u8,
    /// Payload length in bytes (extension headers included).
    pub payload_len: usize,
    /// Hop limit.
    pub hop_limit: u8,
    /// Traffic class (DSCP << 2 | ECN).
    pub traffic_class: u8,
    /// Flow label (20 bits).
    pub flow_label: u32,
}

impl Ipv6Repr {
    /// Length of the header `emit` writes.
    pub const HEADER_LEN: usize = HEADER_LEN;

    /// Read the fixed header of a packet (validated again here).
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Ipv6Packet<&T>) -> Result<Self> {
        packet.check_len()?;
        Ok(Self {
            src: packet.src_addr(),
            dst: packet.dst_addr(),
            next_header: packet.next_header(),
            payload_len: usize::from(packet.payload_len()),
            hop_limit: packet.hop_limit(),
            traffic_class: packet.traffic_class(),
            flow_label: packet.flow_label(),
        })
    }

    /// Header plus payload length.
    pub const fn buffer_len(&self) -> usize {
        Self::HEADER_LEN + self.payload_len
    }

    /// Write the 40-byte header into `packet`, whose buffer must hold at least
    /// [`Self::HEADER_LEN`] bytes. The caller keeps `payload_len` within 65535; a
    /// larger value is clamped.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Ipv6Packet<T>) {
        write_u32(
            packet.buffer.as_mut(),
            field::VER_TC_FLOW,
            (6 << 28) | (u32::from(self.traffic_class) << 20) | (self.flow_label & 0x000f_ffff),
        );
        packet.set_payload_len(u16::try_from(self.payload_len).unwrap_or(u16::MAX));
        packet.set_next_header(self.next_header);
        packet.set_hop_limit(self.hop_limit);
        packet.set_src_addr(self.src);
        packet.set_dst_addr(self.dst);
    }
}

/// Most extension headers [`walk_extensions`] follows before giving up.
pub const MAX_EXTENSION_HEADERS: usize = 8;

/// A fragment header's fields (RFC 8200 §4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fragment {
    /// Offset of this fragment's data in the original payload, in bytes.
    pub offset: u16,
    /// More fragments follow.
    pub more: bool,
    /// Identification.
    pub ident: u32,
}

/// Where the upper-layer header starts, found by [`walk_extensions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UpperLayer {
    /// Upper-layer protocol (or the first header not walked, such as ESP).
    pub protocol: u8,
    /// Offset of that header from the start of the IPv6 payload.
    pub offset: usize,
    /// The fragment header, if one was crossed. With a non-zero offset the bytes
    /// at `offset` are fragment data, not the `protocol` header.
    pub fragment: Option<Fragment>,
}

/// Walk the extension headers of an IPv6 payload (RFC 8200 §4): hop-by-hop
/// (first only, §4.1), routing, fragment, destination options and AH (RFC 4302
/// §2.2, length in 4-byte units). Stops at any other next-header value, and right
/// after a fragment header whose offset is not zero (the rest is fragment data).
/// More than [`MAX_EXTENSION_HEADERS`] headers, a second fragment header or a
/// late hop-by-hop header is `Malformed`; a header running past `payload` is
/// `Truncated`.
pub fn walk_extensions(first_next_header: u8, payload: &[u8]) -> Result<UpperLayer> {
    const WHAT: &str = "IPv6 extension header";
    let mut next = first_next_header;
    let mut offset = 0usize;
    let mut fragment: Option<Fragment> = None;
    let mut count = 0usize;
    loop {
        match next {
            ip_proto::HOPOPT if count > 0 => {
                return Err(WireError::Malformed {
                    what: WHAT,
                    reason: "hop-by-hop header not first",
                });
            }
            ip_proto::HOPOPT
            | ip_proto::ROUTING
            | ip_proto::FRAGMENT
            | ip_proto::DSTOPTS
            | ip_proto::AH => {}
            protocol => {
                return Ok(UpperLayer {
                    protocol,
                    offset,
                    fragment,
                });
            }
        }
        if count == MAX_EXTENSION_HEADERS {
            return Err(WireError::Malformed {
                what: WHAT,
                reason: "too many extension headers",
            });
        }
        count += 1;
        need(WHAT, offset + 2, payload.len())?;
        let ext_len = usize::from(payload[offset + 1]);
        let len = match next {
            // Fixed size; the second byte is reserved.
            ip_proto::FRAGMENT => 8,
            // 4-byte units minus 2 (RFC 4302 §2.2).
            ip_proto::AH => (ext_len + 2) * 4,
            // 8-byte units not counting the first 8 bytes (RFC 8200 §4.3).
            _ => (ext_len + 1) * 8,
        };
        need(WHAT, offset + len, payload.len())?;
        let hdr = &payload[offset..offset + len];
        let this = next;
        next = hdr[0];
        offset += len;
        if this == ip_proto::FRAGMENT {
            if fragment.is_some() {
                return Err(WireError::Malformed {
                    what: WHAT,
                    reason: "second fragment header",
                });
            }
            let f = Fragment {
                offset: read_u16(hdr, 2) & 0xfff8,
                more: hdr[3] & 1 != 0,
                ident: read_u32(hdr, 4),
            };
            fragment = Some(f);
            if f.offset != 0 {
                // The rest is fragment data: nothing further can be parsed.
                return Ok(UpperLayer {
                    protocol: next,
                    offset,
                    fragment,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// ICMPv6 echo request 2001:db8::1 -> 2001:db8::2, traffic class 0xb8 (EF),
    /// flow label 0x12345, hop limit 64, 12-byte payload.
    static ECHO6_PACKET: [u8; 52] = [
        0x6b, 0x81, 0x23, 0x45, 0x00, 0x0c, 0x3a, 0x40, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x80, 0x00, 0x33, 0x3e, 0x12,
        0x34, 0x00, 0x01, 0x70, 0x69, 0x6e, 0x67,
    ];

    /// Hop-by-hop (PadN) -> fragment (offset 0, M set, ident 0xdeadbeef) -> TCP.
    static HBH_FRAG_TCP: [u8; 20] = [
        0x2c, 0x00, 0x01, 0x04, 0x00, 0x00, 0x00, 0x00, 0x06, 0x00, 0x00, 0x01, 0xde, 0xad, 0xbe,
        0xef, 0xc0, 0x00, 0x00, 0x50,
    ];

    fn repr() -> Ipv6Repr {
        Ipv6Repr {
            src: "2001:db8::1".parse().unwrap(),
            dst: "2001:db8::2".parse().unwrap(),
            next_header: ip_proto::ICMPV6,
            payload_len: 12,
            hop_limit: 64,
            traffic_class: 0xb8,
            flow_label: 0x12345,
        }
    }

    fn touch_all(p: &Ipv6Packet<&[u8]>) {
        let _ = (
            p.version(),
            p.traffic_class(),
            p.dscp(),
            p.ecn(),
            p.flow_label(),
        );
        let _ = (
            p.payload_len(),
            p.next_header(),
            p.hop_limit(),
            p.src_addr(),
            p.dst_addr(),
        );
        let _ = walk_extensions(p.next_header(), p.payload());
    }

    #[test]
    fn deconstruct() {
        let p = Ipv6Packet::new_checked(&ECHO6_PACKET[..]).unwrap();
        assert_eq!(p.version(), 6);
        assert_eq!((p.traffic_class(), p.dscp(), p.ecn()), (0xb8, 46, 0));
        assert_eq!(p.flow_label(), 0x12345);
        assert_eq!(
            (p.payload_len(), p.next_header(), p.hop_limit()),
            (12, 58, 64)
        );
        assert_eq!(p.payload(), &ECHO6_PACKET[40..]);
        assert_eq!(Ipv6Repr::parse(&p).unwrap(), repr());
    }

    #[test]
    fn construct() {
        let mut buf = ECHO6_PACKET;
        buf[..40].fill(0xff);
        repr().emit(&mut Ipv6Packet::new_unchecked(&mut buf[..]));
        assert_eq!(buf, ECHO6_PACKET);
    }

    #[test]
    fn setters_keep_neighbouring_bits() {
        let mut buf = ECHO6_PACKET;
        let mut p = Ipv6Packet::new_unchecked(&mut buf[..]);
        p.set_traffic_class(0x03);
        assert_eq!(
            (p.version(), p.traffic_class(), p.flow_label()),
            (6, 3, 0x12345)
        );
        p.set_flow_label(0xfffff_u32 | 0x0100_0000);
        assert_eq!(
            (p.version(), p.traffic_class(), p.flow_label()),
            (6, 3, 0xfffff)
        );
        p.set_version(6);
        p.set_hop_limit(1);
        p.payload_mut()[0] = 129;
        assert_eq!((p.hop_limit(), p.payload()[0]), (1, 129));
    }

    #[test]
    fn check_len_rules() {
        let mut v4 = ECHO6_PACKET;
        v4[0] = 0x45;
        assert!(matches!(
            Ipv6Packet::new_checked(&v4[..]),
            Err(WireError::Malformed { .. })
        ));
        let mut jumbo = ECHO6_PACKET;
        jumbo[4..6].fill(0);
        jumbo[6] = ip_proto::HOPOPT;
        assert!(matches!(
            Ipv6Packet::new_checked(&jumbo[..]),
            Err(WireError::Unsupported { .. })
        ));
        assert_eq!(
            Ipv6Packet::new_checked(&ECHO6_PACKET[..51]),
            Err(WireError::Truncated {
                what: "IPv6 packet",
                need: 52,
                have: 51
            })
        );
        for n in 0..ECHO6_PACKET.len() {
            assert!(
                Ipv6Packet::new_checked(&ECHO6_PACKET[..n]).is_err(),
                "len {n}"
            );
        }
    }

    #[test]
    fn walk_static_chain() {
        let up = walk_extensions(ip_proto::HOPOPT, &HBH_FRAG_TCP).unwrap();
        assert_eq!(up.protocol, ip_proto::TCP);
        assert_eq!(up.offset, 16);
        assert_eq!(
            up.fragment,
            Some(Fragment {
                offset: 0,
                more: true,
                ident: 0xdead_beef
            })
        );
        for n in 0..16 {
            assert!(matches!(
                walk_extensions(ip_proto::HOPOPT, &HBH_FRAG_TCP[..n]),
                Err(WireError::Truncated { .. })
            ));
        }
        // The walk needs the extension headers only, not the upper-layer header.
        assert_eq!(
            walk_extensions(ip_proto::HOPOPT, &HBH_FRAG_TCP[..16]),
            Ok(up)
        );
    }

    #[test]
    fn walk_stops_after_non_first_fragment() {
        let mut b = HBH_FRAG_TCP;
        // Offset 185 × 8 = 1480, followed by what would look like a hop-by-hop.
        b[8] = ip_proto::HOPOPT;
        b[10..12].copy_from_slice(&(1480u16 | 1).to_be_bytes());
        let up = walk_extensions(ip_proto::HOPOPT, &b).unwrap();
        assert_eq!((up.protocol, up.offset), (ip_proto::HOPOPT, 16));
        assert_eq!(up.fragment.map(|f| (f.offset, f.more)), Some((1480, true)));
    }

    #[test]
    fn walk_rejects_late_hop_by_hop_and_stops_at_esp() {
        let b = [
            ip_proto::HOPOPT,
            0,
            1,
            4,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
        ];
        assert!(matches!(
            walk_extensions(ip_proto::DSTOPTS, &b),
            Err(WireError::Malformed { .. })
        ));
        let up = walk_extensions(ip_proto::ESP, &b).unwrap();
        assert_eq!(
            (up.protocol, up.offset, up.fragment),
            (ip_proto::ESP, 0, None)
        );
    }

    #[test]
    fn walk_ah_counts_four_byte_units() {
        // AH with payload length 4: (4 + 2) × 4 = 24 bytes, then UDP.
        let mut b = [0u8; 24];
        b[0] = ip_proto::UDP;
        b[1] = 4;
        let up = walk_extensions(ip_proto::AH, &b).unwrap();
        assert_eq!((up.protocol, up.offset), (ip_proto::UDP, 24));
        assert!(walk_extensions(ip_proto::AH, &b[..23]).is_err());
    }

    const EXT: [u8; 5] = [
        ip_proto::HOPOPT,
        ip_proto::ROUTING,
        ip_proto::FRAGMENT,
        ip_proto::DSTOPTS,
        ip_proto::AH,
    ];
    const UPPER: [u8; 7] = [
        ip_proto::TCP,
        ip_proto::UDP,
        ip_proto::ICMPV6,
        ip_proto::IPV4,
        ip_proto::IPV6,
        ip_proto::ESP,
        ip_proto::NO_NEXT,
    ];

    /// Serialise a chain of (kind, length byte, more-fragments) and say whether it
    /// breaks a rule the walk enforces.
    fn build_chain(chain: &[(u8, u8, bool)], last: u8) -> (Vec<u8>, bool) {
        let mut v = Vec::new();
        let mut bad = chain.len() > MAX_EXTENSION_HEADERS;
        let mut frags = 0;
        for (i, &(kind, ext, more)) in chain.iter().enumerate() {
            let next = chain.get(i + 1).map_or(last, |c| c.0);
            bad |= kind == ip_proto::HOPOPT && i > 0;
            let start = v.len();
            let len = match kind {
                ip_proto::FRAGMENT => {
                    frags += 1;
                    8
                }
                ip_proto::AH => (usize::from(ext) + 2) * 4,
                _ => (usize::from(ext) + 1) * 8,
            };
            v.resize(start + len, 0x5a);
            v[start] = next;
            if kind == ip_proto::FRAGMENT {
                v[start + 1..start + 4].copy_from_slice(&[0, 0, u8::from(more)]);
            } else {
                v[start + 1] = ext;
            }
        }
        (v, bad || frags > 1)
    }

    fn arb_chain() -> impl Strategy<Value = (Vec<(u8, u8, bool)>, u8)> {
        (
            proptest::collection::vec(
                (proptest::sample::select(&EXT[..]), 0u8..4, any::<bool>()),
                0..11,
            ),
            proptest::sample::select(&UPPER[..]),
        )
    }

    proptest! {
        #[test]
        fn walk_random_chains((chain, last) in arb_chain(), tail in 0usize..16) {
            let (mut bytes, bad) = build_chain(&chain, last);
            let headers = bytes.len();
            bytes.resize(headers + tail, 0);
            match walk_extensions(chain.first().map_or(last, |c| c.0), &bytes) {
                Ok(up) => {
                    prop_assert!(!bad);
                    prop_assert_eq!((up.protocol, up.offset), (last, headers));
                    let frag = chain.iter().find(|c| c.0 == ip_proto::FRAGMENT);
                    prop_assert_eq!(up.fragment.map(|f| f.more), frag.map(|c| c.2));
                }
                Err(e) => prop_assert!(bad && matches!(e, WireError::Malformed { .. }), "{e:?}"),
            }
            if !bad {
                for n in 0..headers {
                    let truncated = walk_extensions(chain[0].0, &bytes[..n]);
                    prop_assert!(matches!(truncated, Err(WireError::Truncated { .. })), "{truncated:?}");
                }
            }
        }

        #[test]
        fn walk_arbitrary_bytes(first in any::<u8>(), bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(up) = walk_extensions(first, &bytes) {
                prop_assert!(up.offset <= bytes.len());
            }
        }

        #[test]
        fn repr_round_trip(s in any::<[u8; 16]>(), d in any::<[u8; 16]>(), nh in any::<u8>(), len in 0usize..2000,
                           hop in any::<u8>(), tc in any::<u8>(), fl in 0u32..0x10_0000) {
            let r = Ipv6Repr { src: s.into(), dst: d.into(), next_header: nh, payload_len: len, hop_limit: hop, traffic_class: tc, flow_label: fl };
            let mut buf = vec![0u8; r.buffer_len()];
            r.emit(&mut Ipv6Packet::new_unchecked(&mut buf[..]));
            match Ipv6Packet::new_checked(&buf[..]) {
                Ok(p) => prop_assert_eq!(Ipv6Repr::parse(&p).unwrap(), r),
                Err(e) => prop_assert!(len == 0 && nh == ip_proto::HOPOPT, "{e:?}"),
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..120), fix in any::<bool>()) {
            if fix && !bytes.is_empty() {
                bytes[0] = 0x60 | (bytes[0] & 0x0f);
            }
            if let Ok(p) = Ipv6Packet::new_checked(&bytes[..]) {
                touch_all(&p);
                prop_assert!(Ipv6Repr::parse(&p).is_ok());
            }
        }
    }
}
