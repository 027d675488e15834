//! IPv4 header view (RFC 791 §3.1).

use super::{Field, Result, WireError, checksum, need, read_u16, write_u16};
use std::net::Ipv4Addr;

mod field {
    use super::Field;
    pub(super) const VER_IHL: usize = 0;
    pub(super) const DSCP_ECN: usize = 1;
    pub(super) const LENGTH: usize = 2;
    pub(super) const IDENT: usize = 4;
    pub(super) const FLG_OFF: usize = 6;
    pub(super) const TTL: usize = 8;
    pub(super) const PROTOCOL: usize = 9;
    pub(super) const CHECKSUM: usize = 10;
    pub(super) const SRC_ADDR: Field = 12..16;
    pub(super) const DST_ADDR: Field = 16..20;
}

/// Minimum (option-less) header length.
const MIN_HEADER_LEN: usize = 20;
const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const OFFSET_MASK: u16 = 0x1fff;

/// A view of an IPv4 datagram in a byte buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
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

    /// Validate what every getter relies on: at least 20 bytes, version 4,
    /// IHL >= 5 (RFC 791 §3.1), and header length <= total length <= buffer.
    /// Options are not inspected (see [`Self::check_options`]): routers forward them.
    pub fn check_len(&self) -> Result<()> {
        let buf = self.buffer.as_ref();
        need("IPv4 header", MIN_HEADER_LEN, buf.len())?;
        if self.version() != 4 {
            return Err(WireError::Malformed {
                what: "IPv4 header",
                reason: "version is not 4",
            });
        }
        let hl = self.header_len();
        if hl < MIN_HEADER_LEN {
            return Err(WireError::Malformed {
                what: "IPv4 header",
                reason: "IHL below 5",
            });
        }
        let total = usize::from(self.total_len());
        if total < hl {
            return Err(WireError::Malformed {
                what: "IPv4 header",
                reason: "total length below header length",
            });
        }
        need("IPv4 datagram", total, buf.len())
    }

    /// Validate the option list's type-length structure (RFC 791 §3.1 "Options").
    /// Call after `check_len`.
    pub fn check_options(&self) -> Result<()> {
        let mut opts = self.options();
        while let Some(&kind) = opts.first() {
            match kind {
                // End of Option List.
                0 => return Ok(()),
                // No Operation: a single byte.
                1 => opts = &opts[1..],
                _ => {
                    let Some(&len) = opts.get(1) else {
                        return Err(WireError::Truncated {
                            what: "IPv4 option",
                            need: 2,
                            have: 1,
                        });
                    };
                    let len = usize::from(len);
                    if len < 2 {
                        return Err(WireError::Malformed {
                            what: "IPv4 option",
                            reason: "length below 2",
                        });
                    }
                    need("IPv4 option", len, opts.len())?;
                    opts = &opts[len..];
                }
            }
        }
        Ok(())
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Version field (4 for IPv4).
    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Header length in bytes (IHL × 4).
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    /// Differentiated services codepoint (RFC 2474 §3).
    #[inline]
    pub fn dscp(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN] >> 2
    }

    /// ECN field (RFC 3168 §5).
    #[inline]
    pub fn ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN] & 0x03
    }

    /// Total length of the datagram in bytes, header included.
    #[inline]
    pub fn total_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH)
    }

    /// Identification (RFC 6864).
    #[inline]
    pub fn ident(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::IDENT)
    }

    /// Don't Fragment flag.
    #[inline]
    pub fn dont_frag(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::FLG_OFF) & FLAG_DF != 0
    }

    /// More Fragments flag.
    #[inline]
    pub fn more_frags(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::FLG_OFF) & FLAG_MF != 0
    }

    /// Fragment offset in bytes (the field counts 8-byte units).
    #[inline]
    pub fn frag_offset(&self) -> u16 {
        (read_u16(self.buffer.as_ref(), field::FLG_OFF) & OFFSET_MASK) << 3
    }

    /// Time to live.
    #[inline]
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    /// Protocol of the payload (see [`super::ip_proto`]).
    #[inline]
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    /// Header checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Source address.
    #[inline]
    pub fn src_addr(&self) -> Ipv4Addr {
        addr(&self.buffer.as_ref()[field::SRC_ADDR])
    }

    /// Destination address.
    #[inline]
    pub fn dst_addr(&self) -> Ipv4Addr {
        addr(&self.buffer.as_ref()[field::DST_ADDR])
    }

    /// Option bytes (between the fixed header and `header_len`).
    #[inline]
    pub fn options(&self) -> &[u8] {
        self.buffer
            .as_ref()
            .get(MIN_HEADER_LEN..self.header_len())
            .unwrap_or_default()
    }

    /// Payload: bytes `header_len..total_len`; link-layer padding past the total
    /// length is excluded.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        let end = usize::from(self.total_len());
        self.buffer
            .as_ref()
            .get(self.header_len()..end)
            .unwrap_or_default()
    }

    /// Whether the header checksum is correct (RFC 791 §3.1, RFC 1071).
    pub fn verify_checksum(&self) -> bool {
        let buf = self.buffer.as_ref();
        let hdr = buf.get(..self.header_len()).unwrap_or(buf);
        checksum::fold(checksum::sum(hdr, 0)) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    /// Set version 4 and the header length in bytes (a multiple of 4, 20..=60).
    #[inline]
    pub fn set_version_and_header_len(&mut self, header_len: usize) {
        self.buffer.as_mut()[field::VER_IHL] = 0x40 | ((header_len / 4) as u8 & 0x0f);
    }

    /// Set the DSCP, keeping the ECN field.
    #[inline]
    pub fn set_dscp(&mut self, dscp: u8) {
        let b = &mut self.buffer.as_mut()[field::DSCP_ECN];
        *b = (dscp << 2) | (*b & 0x03);
    }

    /// Set the ECN field, keeping the DSCP.
    #[inline]
    pub fn set_ecn(&mut self, ecn: u8) {
        let b = &mut self.buffer.as_mut()[field::DSCP_ECN];
        *b = (*b & !0x03) | (ecn & 0x03);
    }

    /// Set the total length.
    #[inline]
    pub fn set_total_len(&mut self, len: u16) {
        write_u16(self.buffer.as_mut(), field::LENGTH, len);
    }

    /// Set the identification.
    #[inline]
    pub fn set_ident(&mut self, ident: u16) {
        write_u16(self.buffer.as_mut(), field::IDENT, ident);
    }

    /// Set DF, MF and the fragment offset in bytes (rounded down to 8).
    #[inline]
    pub fn set_flags_and_frag(&mut self, dont_frag: bool, more_frags: bool, frag_offset: u16) {
        let mut v = (frag_offset >> 3) & OFFSET_MASK;
        if dont_frag {
            v |= FLAG_DF;
        }
        if more_frags {
            v |= FLAG_MF;
        }
        write_u16(self.buffer.as_mut(), field::FLG_OFF, v);
    }

    /// Set the time to live.
    #[inline]
    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[field::TTL] = ttl;
    }

    /// Set the payload protocol.
    #[inline]
    pub fn set_protocol(&mut self, protocol: u8) {
        self.buffer.as_mut()[field::PROTOCOL] = protocol;
    }

    /// Set the checksum field to a given value (see [`Self::fill_checksum`]).
    #[inline]
    pub fn set_checksum(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, value);
    }

    /// Set the source address.
    #[inline]
    pub fn set_src_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&addr.octets());
    }

    /// Set the destination address.
    #[inline]
    pub fn set_dst_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&addr.octets());
    }

    /// Compute and store the header checksum over `header_len` bytes.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let hl = self.header_len();
        let buf = self.buffer.as_ref();
        let c = checksum::fold(checksum::sum(buf.get(..hl).unwrap_or(buf), 0));
        self.set_checksum(c);
    }

    /// Mutable payload: bytes `header_len..total_len` (empty if those exceed the
    /// buffer).
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (start, end) = (self.header_len(), usize::from(self.total_len()));
        self.buffer.as_mut().get_mut(start..end).unwrap_or_default()
    }
}

fn addr(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

/// The header fields of an unfragmented, option-less IPv4 datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Repr {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Payload protocol.
    pub protocol: u8,
    /// Payload length in bytes (after any options).
    pub payload_len: usize,
    /// Time to live.
    pub ttl: u8,
    /// DSCP (6 bits).
    pub dscp: u8,
    /// ECN (2 bits).
    pub ecn: u8,
    /// Don't Fragment.
    pub dont_frag: bool,
    /// Identification.
    pub ident: u16,
}

impl Ipv4Repr {
    /// Length of the header `emit` writes.
    pub const HEADER_LEN: usize = MIN_HEADER_LEN;

    /// Read a validated datagram. Rejects a bad header checksum (`Malformed`) and
    /// fragments (`Unsupported`: a `Repr` cannot carry MF or an offset, and
    /// re-emitting one would silently turn a fragment into a whole datagram).
    /// Options are skipped.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Ipv4Packet<&T>) -> Result<Self> {
        packet.check_len()?;
        if !packet.verify_checksum() {
            return Err(WireError::Malformed {
                what: "IPv4 header",
                reason: "bad checksum",
            });
        }
        if packet.more_frags() || packet.frag_offset() != 0 {
            return Err(WireError::Unsupported {
                what: "IPv4 fragment offset",
                value: u32::from(packet.frag_offset()),
            });
        }
        Ok(Self {
            src: packet.src_addr(),
            dst: packet.dst_addr(),
            protocol: packet.protocol(),
            payload_len: usize::from(packet.total_len()) - packet.header_len(),
            ttl: packet.ttl(),
            dscp: packet.dscp(),
            ecn: packet.ecn(),
            dont_frag: packet.dont_frag(),
            ident: packet.ident(),
        })
    }

    /// Header plus payload length.
    pub const fn buffer_len(&self) -> usize {
        Self::HEADER_LEN + self.payload_len
    }

    /// Write a 20-byte header with its checksum into `packet`, whose buffer must
    /// hold at least [`Self::HEADER_LEN`] bytes. The caller keeps `buffer_len()`
    /// within 65535; a larger value is clamped.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Ipv4Packet<T>) {
        packet.set_version_and_header_len(Self::HEADER_LEN);
        packet.set_dscp(self.dscp);
        packet.set_ecn(self.ecn);
        packet.set_total_len(u16::try_from(self.buffer_len()).unwrap_or(u16::MAX));
        packet.set_ident(self.ident);
        packet.set_flags_and_frag(self.dont_frag, false, 0);
        packet.set_ttl(self.ttl);
        packet.set_protocol(self.protocol);
        packet.set_src_addr(self.src);
        packet.set_dst_addr(self.dst);
        packet.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A UDP/IPv4 header as captured: 192.168.0.1 -> 192.168.0.199, DF, TTL 64,
    /// total length 0x73 (the payload bytes follow), checksum 0xb861.
    static HEADER: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    fn datagram() -> Vec<u8> {
        let mut d = HEADER.to_vec();
        d.extend((0..0x73 - 20).map(|i| i as u8));
        d
    }

    fn repr() -> Ipv4Repr {
        Ipv4Repr {
            src: Ipv4Addr::new(192, 168, 0, 1),
            dst: Ipv4Addr::new(192, 168, 0, 199),
            protocol: 17,
            payload_len: 0x73 - 20,
            ttl: 64,
            dscp: 0,
            ecn: 0,
            dont_frag: true,
            ident: 0,
        }
    }

    /// Call every getter; used to prove none panics after `check_len`.
    fn touch_all(p: &Ipv4Packet<&[u8]>) {
        let _ = (
            p.version(),
            p.header_len(),
            p.dscp(),
            p.ecn(),
            p.total_len(),
            p.ident(),
        );
        let _ = (
            p.dont_frag(),
            p.more_frags(),
            p.frag_offset(),
            p.ttl(),
            p.protocol(),
        );
        let _ = (
            p.checksum(),
            p.src_addr(),
            p.dst_addr(),
            p.verify_checksum(),
        );
        let _ = (p.options().len(), p.payload().len(), p.check_options());
    }

    #[test]
    fn deconstruct() {
        let d = datagram();
        let p = Ipv4Packet::new_checked(&d[..]).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 20);
        assert_eq!((p.dscp(), p.ecn()), (0, 0));
        assert_eq!(p.total_len(), 0x73);
        assert!(p.dont_frag() && !p.more_frags());
        assert_eq!(p.frag_offset(), 0);
        assert_eq!((p.ttl(), p.protocol()), (64, 17));
        assert_eq!(p.checksum(), 0xb861);
        assert_eq!(p.src_addr(), Ipv4Addr::new(192, 168, 0, 1));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(192, 168, 0, 199));
        assert!(p.verify_checksum());
        assert_eq!(p.payload(), &d[20..]);
        assert_eq!(Ipv4Repr::parse(&p).unwrap(), repr());
    }

    #[test]
    fn construct() {
        let mut buf = [0xffu8; 20];
        repr().emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]));
        assert_eq!(buf, HEADER);
    }

    #[test]
    fn payload_excludes_link_padding() {
        let mut d = datagram();
        d.extend([0u8; 6]);
        let p = Ipv4Packet::new_checked(&d[..]).unwrap();
        assert_eq!(p.payload().len(), 0x73 - 20);
    }

    #[test]
    fn fragment_fields_and_setters() {
        let mut d = datagram();
        let mut p = Ipv4Packet::new_unchecked(&mut d[..]);
        p.set_flags_and_frag(false, true, 1480);
        p.set_dscp(46);
        p.set_ecn(super::super::ecn::CE);
        p.fill_checksum();
        let p = Ipv4Packet::new_checked(&d[..]).unwrap();
        assert!(!p.dont_frag() && p.more_frags());
        assert_eq!(p.frag_offset(), 1480);
        assert_eq!((p.dscp(), p.ecn()), (46, 3));
        assert!(p.verify_checksum());
        assert!(matches!(
            Ipv4Repr::parse(&p),
            Err(WireError::Unsupported { value: 1480, .. })
        ));
    }

    #[test]
    fn bad_checksum_is_malformed() {
        let mut d = datagram();
        d[8] = 63;
        let p = Ipv4Packet::new_checked(&d[..]).unwrap();
        assert!(!p.verify_checksum());
        assert!(matches!(
            Ipv4Repr::parse(&p),
            Err(WireError::Malformed {
                reason: "bad checksum",
                ..
            })
        ));
    }

    #[test]
    fn check_len_rules() {
        let d = datagram();
        let mut v6 = d.clone();
        v6[0] = 0x65;
        assert!(matches!(
            Ipv4Packet::new_checked(&v6[..]),
            Err(WireError::Malformed { .. })
        ));
        let mut ihl4 = d.clone();
        ihl4[0] = 0x44;
        assert!(matches!(
            Ipv4Packet::new_checked(&ihl4[..]),
            Err(WireError::Malformed { .. })
        ));
        let mut short_total = d.clone();
        short_total[2..4].copy_from_slice(&19u16.to_be_bytes());
        assert!(matches!(
            Ipv4Packet::new_checked(&short_total[..]),
            Err(WireError::Malformed { .. })
        ));
        let mut ihl15 = d.clone();
        ihl15[0] = 0x4f;
        ihl15[2..4].copy_from_slice(&40u16.to_be_bytes());
        assert!(matches!(
            Ipv4Packet::new_checked(&ihl15[..]),
            Err(WireError::Malformed { .. })
        ));
        assert_eq!(
            Ipv4Packet::new_checked(&d[..100]),
            Err(WireError::Truncated {
                what: "IPv4 datagram",
                need: 0x73,
                have: 100
            })
        );
    }

    #[test]
    fn options_structure() {
        // IHL 8: record-route (7, len 7, ptr 4, one slot), NOP, End, padding.
        let mut d = [0u8; 32];
        d[0] = 0x48;
        d[2..4].copy_from_slice(&32u16.to_be_bytes());
        d[20..29].copy_from_slice(&[7, 7, 4, 0, 0, 0, 0, 1, 0]);
        let p = Ipv4Packet::new_checked(&d[..]).unwrap();
        assert_eq!(p.options().len(), 12);
        assert_eq!(p.check_options(), Ok(()));
        // Length running past the header.
        d[21] = 13;
        assert!(matches!(
            Ipv4Packet::new_unchecked(&d[..]).check_options(),
            Err(WireError::Truncated { .. })
        ));
        // Length below 2 still passes check_len: routers forward odd options.
        d[21] = 1;
        let p = Ipv4Packet::new_checked(&d[..]).unwrap();
        assert!(matches!(
            p.check_options(),
            Err(WireError::Malformed { .. })
        ));
        // A type byte in the last slot with no length byte.
        d[20..32].copy_from_slice(&[1; 12]);
        d[31] = 68;
        assert!(matches!(
            Ipv4Packet::new_unchecked(&d[..]).check_options(),
            Err(WireError::Truncated { .. })
        ));
    }

    #[test]
    fn truncation_at_every_length_errors() {
        let d = datagram();
        for n in 0..d.len() {
            assert!(Ipv4Packet::new_checked(&d[..n]).is_err(), "len {n}");
        }
    }

    fn arb_repr() -> impl Strategy<Value = Ipv4Repr> {
        (
            any::<[u8; 4]>(),
            any::<[u8; 4]>(),
            any::<u8>(),
            0usize..1500,
            any::<u8>(),
            0u8..64,
            0u8..4,
        )
            .prop_flat_map(|(s, d, protocol, payload_len, ttl, dscp, ecn)| {
                (any::<bool>(), any::<u16>()).prop_map(move |(dont_frag, ident)| Ipv4Repr {
                    src: s.into(),
                    dst: d.into(),
                    protocol,
                    payload_len,
                    ttl,
                    dscp,
                    ecn,
                    dont_frag,
                    ident,
                })
            })
    }

    proptest! {
        #[test]
        fn repr_round_trip(r in arb_repr()) {
            let mut buf = vec![0u8; r.buffer_len()];
            r.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]));
            let p = Ipv4Packet::new_checked(&buf[..]).unwrap();
            prop_assert!(p.verify_checksum());
            prop_assert_eq!(Ipv4Repr::parse(&p).unwrap(), r);
        }

        #[test]
        fn arbitrary_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..120), fix in any::<bool>()) {
            if fix && !bytes.is_empty() {
                // Steer half the cases past the version check.
                bytes[0] = 0x40 | (bytes[0] & 0x0f);
            }
            if let Ok(p) = Ipv4Packet::new_checked(&bytes[..]) {
                touch_all(&p);
                let _ = Ipv4Repr::parse(&p);
            }
        }

        #[test]
        fn set_fields_read_back(r in arb_repr(), more in any::<bool>(), off in 0u16..0x2000) {
            let mut buf = vec![0u8; r.buffer_len()];
            let mut p = Ipv4Packet::new_unchecked(&mut buf[..]);
            r.emit(&mut p);
            p.set_flags_and_frag(r.dont_frag, more, off * 8);
            p.fill_checksum();
            let p = Ipv4Packet::new_checked(&buf[..]).unwrap();
            prop_assert!(p.verify_checksum());
            prop_assert_eq!((p.dont_frag(), p.more_frags(), p.frag_offset()), (r.dont_frag, more, off * 8));
        }
    }
}
