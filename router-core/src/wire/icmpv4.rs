//! ICMPv4 message view (RFC 792; "fragmentation needed" MTU from RFC 1191 §4).

use super::{Result, checksum, need, read_u16, write_u16};

mod field {
    pub(super) const TYPE: usize = 0;
    pub(super) const CODE: usize = 1;
    pub(super) const CHECKSUM: usize = 2;
    pub(super) const ECHO_IDENT: usize = 4;
    pub(super) const ECHO_SEQNO: usize = 6;
    pub(super) const NEXT_HOP_MTU: usize = 6;
}

/// Header length: type, code, checksum and the 4-byte rest-of-header.
const HEADER_LEN: usize = 8;

/// ICMPv4 message types the engine sends or inspects (RFC 792).
pub mod icmpv4_type {
    /// Echo reply.
    pub const ECHO_REPLY: u8 = 0;
    /// Destination unreachable.
    pub const DEST_UNREACHABLE: u8 = 3;
    /// Echo request.
    pub const ECHO_REQUEST: u8 = 8;
    /// Time exceeded.
    pub const TIME_EXCEEDED: u8 = 11;
}

/// Destination-unreachable code "fragmentation needed and DF set" (RFC 792,
/// RFC 1191 §4).
pub const FRAG_NEEDED_CODE: u8 = 4;

/// A view of an ICMPv4 message. The buffer is exactly the message (the IP
/// payload): the checksum covers all of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Icmpv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Icmpv4Packet<T> {
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
        need("ICMPv4 header", HEADER_LEN, self.buffer.as_ref().len())
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Message type (see [`icmpv4_type`]).
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

    /// Next-hop MTU of a "fragmentation needed" message (type 3 code 4,
    /// RFC 1191 §4); zero from routers that predate it.
    #[inline]
    pub fn next_hop_mtu(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::NEXT_HOP_MTU)
    }

    /// Bytes after the 8-byte header (echo data, or the quoted datagram of an
    /// error).
    #[inline]
    pub fn data(&self) -> &[u8] {
        self.buffer.as_ref().get(HEADER_LEN..).unwrap_or_default()
    }

    /// Whether the checksum over the whole message is correct (RFC 792).
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::sum(self.buffer.as_ref(), 0)) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmpv4Packet<T> {
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

    /// Set the next-hop MTU (type 3 code 4).
    #[inline]
    pub fn set_next_hop_mtu(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::NEXT_HOP_MTU, value);
    }

    /// Mutable bytes after the header.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        self.buffer
            .as_mut()
            .get_mut(HEADER_LEN..)
            .unwrap_or_default()
    }

    /// Compute and store the checksum over the whole message.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let c = checksum::fold(checksum::sum(self.buffer.as_ref(), 0));
        self.set_checksum(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Ipv4Packet;
    use proptest::prelude::*;

    /// Echo request, ident 0x1c46, sequence 1, data "abcdefgh".
    static ECHO_REQUEST: [u8; 16] = [
        0x08, 0x00, 0x4a, 0x23, 0x1c, 0x46, 0x00, 0x01, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67,
        0x68,
    ];

    /// Fragmentation needed, next-hop MTU 1400, quoting a UDP/IPv4 header + 8 bytes.
    static FRAG_NEEDED: [u8; 36] = [
        0x03, 0x04, 0xde, 0x62, 0x00, 0x00, 0x05, 0x78, 0x45, 0x00, 0x05, 0x7c, 0x1c, 0x46, 0x40,
        0x00, 0x40, 0x11, 0xd9, 0x4f, 0x0a, 0x00, 0x00, 0x01, 0x5d, 0xb8, 0xd8, 0x22, 0x13, 0x88,
        0x00, 0x35, 0x05, 0x64, 0x00, 0x00,
    ];

    #[test]
    fn deconstruct_echo() {
        let p = Icmpv4Packet::new_checked(&ECHO_REQUEST[..]).unwrap();
        assert_eq!((p.msg_type(), p.msg_code()), (icmpv4_type::ECHO_REQUEST, 0));
        assert_eq!(
            (p.checksum(), p.echo_ident(), p.echo_seq_no()),
            (0x4a23, 0x1c46, 1)
        );
        assert_eq!(p.data(), b"abcdefgh");
        assert!(p.verify_checksum());
    }

    #[test]
    fn deconstruct_frag_needed() {
        let p = Icmpv4Packet::new_checked(&FRAG_NEEDED[..]).unwrap();
        assert_eq!(
            (p.msg_type(), p.msg_code()),
            (icmpv4_type::DEST_UNREACHABLE, FRAG_NEEDED_CODE)
        );
        assert_eq!(p.next_hop_mtu(), 1400);
        assert!(p.verify_checksum());
        // The quoted header is itself a valid (truncated-payload) IPv4 header.
        let q = Ipv4Packet::new_unchecked(p.data());
        assert!(q.verify_checksum());
        assert_eq!(q.total_len(), 1404);
    }

    #[test]
    fn construct() {
        let mut buf = [0u8; 36];
        buf[8..].copy_from_slice(&FRAG_NEEDED[8..]);
        let mut p = Icmpv4Packet::new_unchecked(&mut buf[..]);
        p.set_msg_type(icmpv4_type::DEST_UNREACHABLE);
        p.set_msg_code(FRAG_NEEDED_CODE);
        p.set_next_hop_mtu(1400);
        p.fill_checksum();
        assert_eq!(buf, FRAG_NEEDED);

        let mut buf = [0u8; 16];
        let mut p = Icmpv4Packet::new_unchecked(&mut buf[..]);
        p.set_msg_type(icmpv4_type::ECHO_REQUEST);
        p.set_echo_ident(0x1c46);
        p.set_echo_seq_no(1);
        p.data_mut().copy_from_slice(b"abcdefgh");
        p.fill_checksum();
        assert_eq!(buf, ECHO_REQUEST);
    }

    #[test]
    fn truncation_errors() {
        for n in 0..8 {
            assert!(Icmpv4Packet::new_checked(&ECHO_REQUEST[..n]).is_err());
        }
        assert!(Icmpv4Packet::new_checked(&ECHO_REQUEST[..8]).is_ok_and(|p| p.data().is_empty()));
    }

    proptest! {
        #[test]
        fn checksum_fill_then_verify(mut bytes in proptest::collection::vec(any::<u8>(), 8..200), flip in any::<usize>()) {
            let mut p = Icmpv4Packet::new_unchecked(&mut bytes[..]);
            p.fill_checksum();
            prop_assert!(p.verify_checksum());
            let at = flip % bytes.len();
            bytes[at] ^= 0x80;
            prop_assert!(!Icmpv4Packet::new_unchecked(&bytes[..]).verify_checksum());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..32)) {
            if let Ok(p) = Icmpv4Packet::new_checked(&bytes[..]) {
                let _ = (p.msg_type(), p.msg_code(), p.checksum(), p.echo_ident(), p.echo_seq_no());
                let _ = (p.next_hop_mtu(), p.data().len(), p.verify_checksum());
            }
        }
    }
}
