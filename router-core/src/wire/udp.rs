//! UDP header view (RFC 768).

use super::{Result, WireError, checksum, ip_proto, need, read_u16, write_u16};
use std::net::{Ipv4Addr, Ipv6Addr};

mod field {
    pub(super) const SRC_PORT: usize = 0;
    pub(super) const DST_PORT: usize = 2;
    pub(super) const LENGTH: usize = 4;
    pub(super) const CHECKSUM: usize = 6;
}

/// Header length.
const HEADER_LEN: usize = 8;

/// A view of a UDP datagram. The `len` field, not the buffer, bounds the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// Wrap a buffer without validating it (for datagrams being built).
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wrap untrusted bytes: `new_unchecked` followed by [`Self::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Validate: at least 8 bytes and 8 <= length field <= buffer.
    pub fn check_len(&self) -> Result<()> {
        let have = self.buffer.as_ref().len();
        need("UDP header", HEADER_LEN, have)?;
        let len = usize::from(self.len());
        if len < HEADER_LEN {
            return Err(WireError::Malformed {
                what: "UDP header",
                reason: "length below 8",
            });
        }
        need("UDP datagram", len, have)
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Source port.
    #[inline]
    pub fn src_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::SRC_PORT)
    }

    /// Destination port.
    #[inline]
    pub fn dst_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::DST_PORT)
    }

    /// Length of header plus data.
    #[inline]
    #[expect(
        clippy::len_without_is_empty,
        reason = "a header field, not a collection"
    )]
    pub fn len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH)
    }

    /// Checksum field (0: none was computed, IPv4 only).
    #[inline]
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Data: bytes `8..len`.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        self.buffer
            .as_ref()
            .get(HEADER_LEN..usize::from(self.len()))
            .unwrap_or_default()
    }

    /// The datagram as the length field bounds it (clamped to the buffer).
    fn datagram(&self) -> &[u8] {
        let buf = self.buffer.as_ref();
        buf.get(..usize::from(self.len())).unwrap_or(buf)
    }

    /// Whether the checksum is correct with an IPv4 pseudo-header; a zero
    /// checksum means none was sent and is accepted (RFC 768).
    pub fn verify_checksum_v4(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        self.checksum() == 0
            || checksum::fold(checksum::sum(self.datagram(), self.ph_v4(src, dst))) == 0
    }

    /// Whether the checksum is correct with an IPv6 pseudo-header; zero is invalid
    /// over IPv6 (RFC 8200 §8.1).
    pub fn verify_checksum_v6(&self, src: &Ipv6Addr, dst: &Ipv6Addr) -> bool {
        self.checksum() != 0
            && checksum::fold(checksum::sum(self.datagram(), self.ph_v6(src, dst))) == 0
    }

    fn ph_v4(&self, src: Ipv4Addr, dst: Ipv4Addr) -> u32 {
        checksum::pseudo_header_v4(src, dst, ip_proto::UDP, self.len())
    }

    fn ph_v6(&self, src: &Ipv6Addr, dst: &Ipv6Addr) -> u32 {
        checksum::pseudo_header_v6(src, dst, ip_proto::UDP, u32::from(self.len()))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    /// Set the source port.
    #[inline]
    pub fn set_src_port(&mut self, port: u16) {
        write_u16(self.buffer.as_mut(), field::SRC_PORT, port);
    }

    /// Set the destination port.
    #[inline]
    pub fn set_dst_port(&mut self, port: u16) {
        write_u16(self.buffer.as_mut(), field::DST_PORT, port);
    }

    /// Set the length field (header plus data).
    #[inline]
    pub fn set_len(&mut self, len: u16) {
        write_u16(self.buffer.as_mut(), field::LENGTH, len);
    }

    /// Set the checksum field.
    #[inline]
    pub fn set_checksum(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, value);
    }

    /// Mutable data: bytes `8..len` (empty if `len` exceeds the buffer).
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = usize::from(self.len());
        self.buffer
            .as_mut()
            .get_mut(HEADER_LEN..end)
            .unwrap_or_default()
    }

    /// Compute and store the checksum with an IPv4 pseudo-header. Set the length
    /// first.
    pub fn fill_checksum_v4(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let c = checksum::fold(checksum::sum(self.datagram(), self.ph_v4(src, dst)));
        self.set_checksum(nonzero(c));
    }

    /// Compute and store the checksum with an IPv6 pseudo-header. Set the length
    /// first.
    pub fn fill_checksum_v6(&mut self, src: &Ipv6Addr, dst: &Ipv6Addr) {
        self.set_checksum(0);
        let c = checksum::fold(checksum::sum(self.datagram(), self.ph_v6(src, dst)));
        self.set_checksum(nonzero(c));
    }
}

/// A computed checksum of zero is sent as all ones (RFC 768): zero means "none".
fn nonzero(c: u16) -> u16 {
    if c == 0 { 0xffff } else { c }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SRC4: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);
    const DST4: Ipv4Addr = Ipv4Addr::new(8, 8, 8, 8);
    const SRC6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
    const DST6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);

    /// DNS query header 192.168.1.10:53000 -> 8.8.8.8:53.
    static UDP_DNS_V4: [u8; 20] = [
        0xcf, 0x08, 0x00, 0x35, 0x00, 0x14, 0xb1, 0xf7, 0xab, 0xcd, 0x01, 0x00, 0x00, 0x01, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00,
    ];

    /// DHCPv6 client -> servers, [fe80::1]:546 -> [ff02::1:2]:547.
    static UDP_DHCP_V6: [u8; 12] = [
        0x02, 0x22, 0x02, 0x23, 0x00, 0x0c, 0xfa, 0x03, 0x01, 0x02, 0x03, 0x04,
    ];

    fn touch_all(p: &UdpPacket<&[u8]>) {
        let _ = (
            p.src_port(),
            p.dst_port(),
            p.len(),
            p.checksum(),
            p.payload().len(),
        );
        let _ = (
            p.verify_checksum_v4(SRC4, DST4),
            p.verify_checksum_v6(&SRC6, &DST6),
        );
    }

    #[test]
    fn deconstruct() {
        let p = UdpPacket::new_checked(&UDP_DNS_V4[..]).unwrap();
        assert_eq!(
            (p.src_port(), p.dst_port(), p.len(), p.checksum()),
            (53000, 53, 20, 0xb1f7)
        );
        assert_eq!(p.payload(), &UDP_DNS_V4[8..]);
        assert!(p.verify_checksum_v4(SRC4, DST4));
        assert!(!p.verify_checksum_v4(SRC4, Ipv4Addr::new(8, 8, 4, 4)));

        let p = UdpPacket::new_checked(&UDP_DHCP_V6[..]).unwrap();
        assert_eq!((p.src_port(), p.dst_port(), p.len()), (546, 547, 12));
        assert_eq!(p.payload(), &[1, 2, 3, 4]);
        assert!(p.verify_checksum_v6(&SRC6, &DST6));
    }

    #[test]
    fn construct() {
        let mut buf = UDP_DNS_V4;
        buf[..8].fill(0);
        let mut p = UdpPacket::new_unchecked(&mut buf[..]);
        p.set_src_port(53000);
        p.set_dst_port(53);
        p.set_len(20);
        p.fill_checksum_v4(SRC4, DST4);
        assert_eq!(buf, UDP_DNS_V4);
    }

    #[test]
    fn zero_checksum_means_none_on_v4_only() {
        let mut buf = UDP_DHCP_V6;
        UdpPacket::new_unchecked(&mut buf[..]).set_checksum(0);
        let p = UdpPacket::new_checked(&buf[..]).unwrap();
        assert!(p.verify_checksum_v4(SRC4, DST4));
        assert!(!p.verify_checksum_v6(&SRC6, &DST6));
    }

    #[test]
    fn length_field_bounds_the_datagram() {
        let mut buf = [0u8; 16];
        buf[..12].copy_from_slice(&UDP_DHCP_V6);
        let p = UdpPacket::new_checked(&buf[..]).unwrap();
        assert_eq!(p.payload(), &[1, 2, 3, 4]);
        assert!(p.verify_checksum_v6(&SRC6, &DST6));
        buf[5] = 7;
        assert!(matches!(
            UdpPacket::new_checked(&buf[..]),
            Err(WireError::Malformed { .. })
        ));
        buf[5] = 17;
        assert!(matches!(
            UdpPacket::new_checked(&buf[..]),
            Err(WireError::Truncated {
                need: 17,
                have: 16,
                ..
            })
        ));
        for n in 0..UDP_DNS_V4.len() {
            assert!(UdpPacket::new_checked(&UDP_DNS_V4[..n]).is_err(), "len {n}");
        }
    }

    proptest! {
        #[test]
        fn checksum_fill_then_verify(data in proptest::collection::vec(any::<u8>(), 0..200),
                                     s4 in any::<[u8; 4]>(), d4 in any::<[u8; 4]>(),
                                     s6 in any::<[u8; 16]>(), d6 in any::<[u8; 16]>()) {
            let (s4, d4, s6, d6) = (Ipv4Addr::from(s4), Ipv4Addr::from(d4), Ipv6Addr::from(s6), Ipv6Addr::from(d6));
            let mut buf = vec![0u8; 8 + data.len()];
            let mut p = UdpPacket::new_unchecked(&mut buf[..]);
            p.set_len(u16::try_from(8 + data.len()).unwrap());
            p.payload_mut().copy_from_slice(&data);
            p.fill_checksum_v4(s4, d4);
            prop_assert!(p.checksum() != 0 && p.verify_checksum_v4(s4, d4));
            p.fill_checksum_v6(&s6, &d6);
            prop_assert!(p.checksum() != 0 && p.verify_checksum_v6(&s6, &d6));
            prop_assert_eq!(p.payload(), &data[..]);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(p) = UdpPacket::new_checked(&bytes[..]) {
                touch_all(&p);
            }
        }
    }
}
