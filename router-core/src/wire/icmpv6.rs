//! ICMPv6 message view (RFC 4443).

use super::{Result, checksum, ip_proto, need, read_u16, read_u32, write_u16, write_u32};
use std::net::Ipv6Addr;

mod field {
    pub(super) const TYPE: usize = 0;
    pub(super) const CODE: usize = 1;
    pub(super) const CHECKSUM: usize = 2;
    pub(super) const ECHO_IDENT: usize = 4;
    pub(super) const ECHO_SEQNO: usize = 6;
    pub(super) const MTU: usize = 4;
}

/// Header length: type, code, checksum and the 4-byte message body start.
const HEADER_LEN: usize = 8;

/// ICMPv6 message types the engine sends or inspects (RFC 4443 §2.1). Errors are
/// below 128, informational messages from 128.
pub mod icmpv6_type {
    /// Destination unreachable (§3.1).
    pub const DEST_UNREACHABLE: u8 = 1;
    /// Packet too big (§3.2).
    pub const PACKET_TOO_BIG: u8 = 2;
    /// Time exceeded (§3.3).
    pub const TIME_EXCEEDED: u8 = 3;
    /// Echo request (§4.1).
    pub const ECHO_REQUEST: u8 = 128;
    /// Echo reply (§4.2).
    pub const ECHO_REPLY: u8 = 129;
}

/// A view of an ICMPv6 message. The buffer is exactly the message (the upper-layer
/// payload): the checksum covers all of it plus the IPv6 pseudo-header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Icmpv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Icmpv6Packet<T> {
    /// Wrap a buffer without validating it (for messages being built).
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wrap untrusted bytes: `new_unchecked` followed by [`Self::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Validate: at least the 8-byte header.
    pub fn check_len(&self) -> Result<()> {
        need("ICMPv6 header", HEADER_LEN, self.buffer.as_ref().len())
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Message type (see [`icmpv6_type`]).
    #[inline]
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    /// Message code.
    #[inline]
    pub fn msg_code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    /// Checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Echo identifier (echo request and reply).
    #[inline]
    pub fn echo_ident(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ECHO_IDENT)
    }

    /// Echo sequence number (echo request and reply).
    #[inline]
    pub fn echo_seq_no(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ECHO_SEQNO)
    }

    /// MTU of a packet-too-big message (type 2, §3.2).
    #[inline]
    pub fn mtu(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::MTU)
    }

    /// Bytes after the 8-byte header (echo data, or the quoted packet of an error).
    #[inline]
    pub fn data(&self) -> &[u8] {
        self.buffer.as_ref().get(HEADER_LEN..).unwrap_or_default()
    }

    /// Whether the checksum is correct (RFC 4443 §2.3, pseudo-header of RFC 8200
    /// §8.1).
    pub fn verify_checksum(&self, src: &Ipv6Addr, dst: &Ipv6Addr) -> bool {
        let buf = self.buffer.as_ref();
        checksum::fold(checksum::sum(buf, ph(src, dst, buf.len()))) == 0
    }
}

fn ph(src: &Ipv6Addr, dst: &Ipv6Addr, len: usize) -> u32 {
    checksum::pseudo_header_v6(
        src,
        dst,
        ip_proto::ICMPV6,
        u32::try_from(len).unwrap_or(u32::MAX),
    )
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmpv6Packet<T> {
    /// Set the message type.
    #[inline]
    pub fn set_msg_type(&mut self, value: u8) {
        self.buffer.as_mut()[field::TYPE] = value;
    }

    /// Set the message code.
    #[inline]
    pub fn set_msg_code(&mut self, value: u8) {
        self.buffer.as_mut()[field::CODE] = value;
    }

    /// Set the checksum field.
    #[inline]
    pub fn set_checksum(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, value);
    }

    /// Set the echo identifier.
    #[inline]
    pub fn set_echo_ident(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::ECHO_IDENT, value);
    }

    /// Set the echo sequence number.
    #[inline]
    pub fn set_echo_seq_no(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::ECHO_SEQNO, value);
    }

    /// Set the MTU of a packet-too-big message.
    #[inline]
    pub fn set_mtu(&mut self, value: u32) {
        write_u32(self.buffer.as_mut(), field::MTU, value);
    }

    /// Mutable bytes after the header.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        self.buffer
            .as_mut()
            .get_mut(HEADER_LEN..)
            .unwrap_or_default()
    }

    /// Compute and store the checksum with the IPv6 pseudo-header.
    pub fn fill_checksum(&mut self, src: &Ipv6Addr, dst: &Ipv6Addr) {
        self.set_checksum(0);
        let buf = self.buffer.as_ref();
        let c = checksum::fold(checksum::sum(buf, ph(src, dst, buf.len())));
        self.set_checksum(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Ipv6Packet, Ipv6Repr};
    use proptest::prelude::*;

    const HOST: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
    const PEER: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
    const ROUTER: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xfe);

    /// IPv6 + echo request, ident 0x1234, sequence 1, data "ping".
    static ECHO6_PACKET: [u8; 52] = [
        0x6b, 0x81, 0x23, 0x45, 0x00, 0x0c, 0x3a, 0x40, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x80, 0x00, 0x33, 0x3e, 0x12,
        0x34, 0x00, 0x01, 0x70, 0x69, 0x6e, 0x67,
    ];

    /// Packet too big, MTU 1280, from 2001:db8::fe to 2001:db8::1, quoting the
    /// header of the packet above.
    static PACKET_TOO_BIG: [u8; 48] = [
        0x02, 0x00, 0x77, 0x9c, 0x00, 0x00, 0x05, 0x00, 0x6b, 0x81, 0x23, 0x45, 0x00, 0x0c, 0x3a,
        0x40, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x01, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x02,
    ];

    #[test]
    fn deconstruct_echo_in_ipv6() {
        let ip = Ipv6Packet::new_checked(&ECHO6_PACKET[..]).unwrap();
        let r = Ipv6Repr::parse(&ip).unwrap();
        let p = Icmpv6Packet::new_checked(ip.payload()).unwrap();
        assert_eq!((p.msg_type(), p.msg_code()), (icmpv6_type::ECHO_REQUEST, 0));
        assert_eq!((p.echo_ident(), p.echo_seq_no()), (0x1234, 1));
        assert_eq!(p.data(), b"ping");
        assert!(p.verify_checksum(&r.src, &r.dst));
        assert!(!p.verify_checksum(&r.src, &ROUTER));
    }

    #[test]
    fn deconstruct_packet_too_big() {
        let p = Icmpv6Packet::new_checked(&PACKET_TOO_BIG[..]).unwrap();
        assert_eq!(
            (p.msg_type(), p.msg_code(), p.mtu()),
            (icmpv6_type::PACKET_TOO_BIG, 0, 1280)
        );
        assert!(p.verify_checksum(&ROUTER, &HOST));
        assert_eq!(p.data(), &ECHO6_PACKET[..40]);
    }

    #[test]
    fn construct() {
        let mut buf = [0u8; 48];
        let mut p = Icmpv6Packet::new_unchecked(&mut buf[..]);
        p.set_msg_type(icmpv6_type::PACKET_TOO_BIG);
        p.set_msg_code(0);
        p.set_mtu(1280);
        p.data_mut().copy_from_slice(&ECHO6_PACKET[..40]);
        p.fill_checksum(&ROUTER, &HOST);
        assert_eq!(buf, PACKET_TOO_BIG);

        let mut buf = [0u8; 12];
        let mut p = Icmpv6Packet::new_unchecked(&mut buf[..]);
        p.set_msg_type(icmpv6_type::ECHO_REQUEST);
        p.set_echo_ident(0x1234);
        p.set_echo_seq_no(1);
        p.data_mut().copy_from_slice(b"ping");
        p.fill_checksum(&HOST, &PEER);
        assert_eq!(buf, ECHO6_PACKET[40..]);
    }

    #[test]
    fn truncation_errors() {
        for n in 0..8 {
            assert!(Icmpv6Packet::new_checked(&PACKET_TOO_BIG[..n]).is_err());
        }
    }

    proptest! {
        #[test]
        fn checksum_fill_then_verify(mut bytes in proptest::collection::vec(any::<u8>(), 8..200),
                                     s in any::<[u8; 16]>(), d in any::<[u8; 16]>(), flip in any::<usize>()) {
            let (s, d) = (Ipv6Addr::from(s), Ipv6Addr::from(d));
            let mut p = Icmpv6Packet::new_unchecked(&mut bytes[..]);
            p.fill_checksum(&s, &d);
            prop_assert!(p.verify_checksum(&s, &d));
            let at = flip % bytes.len();
            bytes[at] ^= 0x01;
            prop_assert!(!Icmpv6Packet::new_unchecked(&bytes[..]).verify_checksum(&s, &d));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..32)) {
            if let Ok(p) = Icmpv6Packet::new_checked(&bytes[..]) {
                let _ = (p.msg_type(), p.msg_code(), p.checksum(), p.echo_ident(), p.echo_seq_no());
                let _ = (p.mtu(), p.data().len(), p.verify_checksum(&HOST, &PEER));
            }
        }
    }
}
