//! TCP header view (RFC 9293 §3.1).

use super::{
    Result, WireError, checksum, ip_proto, need, read_u16, read_u32, write_u16, write_u32,
};
use core::ops::{BitOr, BitOrAssign};
use std::net::{Ipv4Addr, Ipv6Addr};

mod field {
    pub(super) const SRC_PORT: usize = 0;
    pub(super) const DST_PORT: usize = 2;
    pub(super) const SEQ_NUM: usize = 4;
    pub(super) const ACK_NUM: usize = 8;
    pub(super) const OFF_FLAGS: usize = 12;
    pub(super) const WIN_SIZE: usize = 14;
    pub(super) const CHECKSUM: usize = 16;
    pub(super) const URGENT: usize = 18;
}

/// Minimum (option-less) header length.
const MIN_HEADER_LEN: usize = 20;
/// Reserved bits and control bits: everything after the data offset.
const FLAGS_MASK: u16 = 0x0fff;

/// TCP control bits (RFC 9293 §3.1; ECE and CWR from RFC 3168 §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags(pub u16);

impl TcpFlags {
    /// No more data from sender.
    pub const FIN: Self = Self(0x001);
    /// Synchronize sequence numbers.
    pub const SYN: Self = Self(0x002);
    /// Reset the connection.
    pub const RST: Self = Self(0x004);
    /// Push function.
    pub const PSH: Self = Self(0x008);
    /// Acknowledgment field is significant.
    pub const ACK: Self = Self(0x010);
    /// Urgent pointer field is significant.
    pub const URG: Self = Self(0x020);
    /// ECN-Echo.
    pub const ECE: Self = Self(0x040);
    /// Congestion Window Reduced.
    pub const CWR: Self = Self(0x080);

    /// The raw 12 bits after the data offset.
    #[must_use]
    pub const fn bits(self) -> u16 {
        self.0
    }

    /// Whether every bit of `other` is set.
    #[must_use]
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// SYN is set.
    #[must_use]
    pub const fn syn(self) -> bool {
        self.contains(Self::SYN)
    }

    /// ACK is set.
    #[must_use]
    pub const fn ack(self) -> bool {
        self.contains(Self::ACK)
    }

    /// FIN is set.
    #[must_use]
    pub const fn fin(self) -> bool {
        self.contains(Self::FIN)
    }

    /// RST is set.
    #[must_use]
    pub const fn rst(self) -> bool {
        self.contains(Self::RST)
    }
}

impl BitOr for TcpFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl BitOrAssign for TcpFlags {
    fn bitor_assign(&mut self, rhs: Self) {
        self.0 |= rhs.0;
    }
}

/// A view of a TCP segment. The buffer is exactly the segment (the IP payload):
/// the checksum covers all of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// Wrap a buffer without validating it (for segments being built).
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wrap untrusted bytes: `new_unchecked` followed by [`Self::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Validate: at least 20 bytes, data offset >= 5, header within the buffer.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        need("TCP header", MIN_HEADER_LEN, len)?;
        let hl = self.header_len();
        if hl < MIN_HEADER_LEN {
            return Err(WireError::Malformed {
                what: "TCP header",
                reason: "data offset below 5",
            });
        }
        need("TCP header", hl, len)
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

    /// Sequence number.
    #[inline]
    pub fn seq_number(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::SEQ_NUM)
    }

    /// Acknowledgment number.
    #[inline]
    pub fn ack_number(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::ACK_NUM)
    }

    /// Header length in bytes (data offset × 4).
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::OFF_FLAGS] >> 4) * 4
    }

    /// Control bits.
    #[inline]
    pub fn flags(&self) -> TcpFlags {
        TcpFlags(read_u16(self.buffer.as_ref(), field::OFF_FLAGS) & FLAGS_MASK)
    }

    /// Window.
    #[inline]
    pub fn window_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::WIN_SIZE)
    }

    /// Checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Urgent pointer.
    #[inline]
    pub fn urgent_at(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::URGENT)
    }

    /// Option bytes (RFC 9293 §3.2).
    #[inline]
    pub fn options(&self) -> &[u8] {
        self.buffer
            .as_ref()
            .get(MIN_HEADER_LEN..self.header_len())
            .unwrap_or_default()
    }

    /// Segment data after the header.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        self.buffer
            .as_ref()
            .get(self.header_len()..)
            .unwrap_or_default()
    }

    /// Whether the checksum is correct for an IPv4 pseudo-header (RFC 9293 §3.1).
    pub fn verify_checksum_v4(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        let buf = self.buffer.as_ref();
        checksum::fold(checksum::sum(buf, ph_v4(src, dst, buf.len()))) == 0
    }

    /// Whether the checksum is correct for an IPv6 pseudo-header (RFC 8200 §8.1).
    pub fn verify_checksum_v6(&self, src: &Ipv6Addr, dst: &Ipv6Addr) -> bool {
        let buf = self.buffer.as_ref();
        checksum::fold(checksum::sum(buf, ph_v6(src, dst, buf.len()))) == 0
    }
}

fn ph_v4(src: Ipv4Addr, dst: Ipv4Addr, len: usize) -> u32 {
    checksum::pseudo_header_v4(
        src,
        dst,
        ip_proto::TCP,
        u16::try_from(len).unwrap_or(u16::MAX),
    )
}

fn ph_v6(src: &Ipv6Addr, dst: &Ipv6Addr, len: usize) -> u32 {
    checksum::pseudo_header_v6(
        src,
        dst,
        ip_proto::TCP,
        u32::try_from(len).unwrap_or(u32::MAX),
    )
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
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

    /// Set the sequence number.
    #[inline]
    pub fn set_seq_number(&mut self, seq: u32) {
        write_u32(self.buffer.as_mut(), field::SEQ_NUM, seq);
    }

    /// Set the acknowledgment number.
    #[inline]
    pub fn set_ack_number(&mut self, ack: u32) {
        write_u32(self.buffer.as_mut(), field::ACK_NUM, ack);
    }

    /// Set the header length in bytes (a multiple of 4, 20..=60), keeping the flags.
    #[inline]
    pub fn set_header_len(&mut self, len: usize) {
        let b = &mut self.buffer.as_mut()[field::OFF_FLAGS];
        *b = (((len / 4) as u8) << 4) | (*b & 0x0f);
    }

    /// Set the control bits, keeping the data offset.
    #[inline]
    pub fn set_flags(&mut self, flags: TcpFlags) {
        let raw = read_u16(self.buffer.as_ref(), field::OFF_FLAGS);
        write_u16(
            self.buffer.as_mut(),
            field::OFF_FLAGS,
            (raw & !FLAGS_MASK) | (flags.0 & FLAGS_MASK),
        );
    }

    /// Set the window.
    #[inline]
    pub fn set_window_len(&mut self, window: u16) {
        write_u16(self.buffer.as_mut(), field::WIN_SIZE, window);
    }

    /// Set the checksum field.
    #[inline]
    pub fn set_checksum(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, value);
    }

    /// Set the urgent pointer.
    #[inline]
    pub fn set_urgent_at(&mut self, at: u16) {
        write_u16(self.buffer.as_mut(), field::URGENT, at);
    }

    /// Mutable segment data.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let hl = self.header_len();
        self.buffer.as_mut().get_mut(hl..).unwrap_or_default()
    }

    /// Compute and store the checksum with an IPv4 pseudo-header.
    pub fn fill_checksum_v4(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let buf = self.buffer.as_ref();
        let c = checksum::fold(checksum::sum(buf, ph_v4(src, dst, buf.len())));
        self.set_checksum(c);
    }

    /// Compute and store the checksum with an IPv6 pseudo-header.
    pub fn fill_checksum_v6(&mut self, src: &Ipv6Addr, dst: &Ipv6Addr) {
        self.set_checksum(0);
        let buf = self.buffer.as_ref();
        let c = checksum::fold(checksum::sum(buf, ph_v6(src, dst, buf.len())));
        self.set_checksum(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SRC4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const DST4: Ipv4Addr = Ipv4Addr::new(93, 184, 216, 34);
    const SRC6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
    const DST6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);

    /// SYN 10.0.0.1:49152 -> 93.184.216.34:80 with MSS 1460, SACK-permitted,
    /// timestamps, NOP, window scale 7.
    static TCP_SYN_V4: [u8; 40] = [
        0xc0, 0x00, 0x00, 0x50, 0x01, 0x02, 0x03, 0x04, 0x00, 0x00, 0x00, 0x00, 0xa0, 0x02, 0xfa,
        0xf0, 0x48, 0xdc, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, 0x04, 0x02, 0x08, 0x0a, 0x00, 0x00,
        0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x01, 0x03, 0x03, 0x07,
    ];

    /// PSH|ACK [2001:db8::1]:443 -> [2001:db8::2]:50000 carrying "hello".
    static TCP_PSH_V6: [u8; 25] = [
        0x01, 0xbb, 0xc3, 0x50, 0xff, 0xff, 0xff, 0xf0, 0x00, 0x01, 0x02, 0x03, 0x50, 0x18, 0x01,
        0xf5, 0x47, 0x8b, 0x00, 0x00, 0x68, 0x65, 0x6c, 0x6c, 0x6f,
    ];

    fn touch_all(p: &TcpPacket<&[u8]>) {
        let _ = (
            p.src_port(),
            p.dst_port(),
            p.seq_number(),
            p.ack_number(),
            p.header_len(),
        );
        let _ = (p.flags(), p.window_len(), p.checksum(), p.urgent_at());
        let _ = (p.options().len(), p.payload().len());
        let _ = (
            p.verify_checksum_v4(SRC4, DST4),
            p.verify_checksum_v6(&SRC6, &DST6),
        );
    }

    #[test]
    fn deconstruct_syn() {
        let p = TcpPacket::new_checked(&TCP_SYN_V4[..]).unwrap();
        assert_eq!((p.src_port(), p.dst_port()), (49152, 80));
        assert_eq!((p.seq_number(), p.ack_number()), (0x0102_0304, 0));
        assert_eq!(p.header_len(), 40);
        assert_eq!(p.flags(), TcpFlags::SYN);
        assert!(p.flags().syn() && !p.flags().ack() && !p.flags().fin() && !p.flags().rst());
        assert_eq!(
            (p.window_len(), p.checksum(), p.urgent_at()),
            (64240, 0x48dc, 0)
        );
        assert_eq!(p.options(), &TCP_SYN_V4[20..]);
        assert!(p.payload().is_empty());
        assert!(p.verify_checksum_v4(SRC4, DST4));
        assert!(!p.verify_checksum_v4(DST4, Ipv4Addr::new(10, 0, 0, 2)));
    }

    #[test]
    fn deconstruct_v6_with_payload() {
        let p = TcpPacket::new_checked(&TCP_PSH_V6[..]).unwrap();
        assert_eq!((p.src_port(), p.dst_port()), (443, 50000));
        assert_eq!(p.flags(), TcpFlags::PSH | TcpFlags::ACK);
        assert_eq!(p.payload(), b"hello");
        assert!(p.verify_checksum_v6(&SRC6, &DST6));
        assert!(!p.verify_checksum_v6(&Ipv6Addr::LOCALHOST, &DST6));
    }

    #[test]
    fn construct_syn() {
        let mut buf = [0u8; 40];
        let mut p = TcpPacket::new_unchecked(&mut buf[..]);
        p.set_src_port(49152);
        p.set_dst_port(80);
        p.set_seq_number(0x0102_0304);
        p.set_ack_number(0);
        p.set_header_len(40);
        p.set_flags(TcpFlags::SYN);
        p.set_window_len(64240);
        p.set_urgent_at(0);
        buf[20..].copy_from_slice(&TCP_SYN_V4[20..]);
        TcpPacket::new_unchecked(&mut buf[..]).fill_checksum_v4(SRC4, DST4);
        assert_eq!(buf, TCP_SYN_V4);
    }

    #[test]
    fn check_len_rules() {
        for n in 0..40 {
            assert!(TcpPacket::new_checked(&TCP_SYN_V4[..n]).is_err(), "len {n}");
        }
        let mut b = TCP_SYN_V4;
        b[12] = 0x40;
        assert!(matches!(
            TcpPacket::new_checked(&b[..]),
            Err(WireError::Malformed { .. })
        ));
    }

    #[test]
    fn flag_ops() {
        let mut f = TcpFlags::SYN;
        f |= TcpFlags::ACK;
        assert!(f.contains(TcpFlags::SYN | TcpFlags::ACK));
        assert!(!f.contains(TcpFlags::SYN | TcpFlags::FIN));
        assert_eq!((TcpFlags::ECE | TcpFlags::CWR | TcpFlags::URG).bits(), 0xe0);
        assert!(TcpFlags::default().contains(TcpFlags::default()));
    }

    proptest! {
        #[test]
        fn checksum_fill_then_verify(mut bytes in proptest::collection::vec(any::<u8>(), 20..200),
                                     s4 in any::<[u8; 4]>(), d4 in any::<[u8; 4]>(),
                                     s6 in any::<[u8; 16]>(), d6 in any::<[u8; 16]>()) {
            let (s4, d4, s6, d6) = (Ipv4Addr::from(s4), Ipv4Addr::from(d4), Ipv6Addr::from(s6), Ipv6Addr::from(d6));
            let mut p = TcpPacket::new_unchecked(&mut bytes[..]);
            p.fill_checksum_v4(s4, d4);
            prop_assert!(p.verify_checksum_v4(s4, d4));
            p.fill_checksum_v6(&s6, &d6);
            prop_assert!(p.verify_checksum_v6(&s6, &d6));
            // A single-bit flip anywhere in the segment is caught.
            let at = usize::from(p.checksum()) % bytes.len();
            bytes[at] ^= 0x10;
            prop_assert!(!TcpPacket::new_unchecked(&bytes[..]).verify_checksum_v6(&s6, &d6));
        }

        #[test]
        fn fields_round_trip(sp in any::<u16>(), dp in any::<u16>(), seq in any::<u32>(), ack in any::<u32>(),
                             off in 5usize..16, flags in 0u16..0x1000, win in any::<u16>(), urg in any::<u16>()) {
            let mut buf = [0u8; 60];
            let mut p = TcpPacket::new_unchecked(&mut buf[..]);
            p.set_flags(TcpFlags(flags));
            p.set_header_len(off * 4);
            p.set_src_port(sp);
            p.set_dst_port(dp);
            p.set_seq_number(seq);
            p.set_ack_number(ack);
            p.set_window_len(win);
            p.set_urgent_at(urg);
            let p = TcpPacket::new_checked(&buf[..]).unwrap();
            prop_assert_eq!((p.src_port(), p.dst_port(), p.seq_number(), p.ack_number()), (sp, dp, seq, ack));
            prop_assert_eq!((p.header_len(), p.flags(), p.window_len(), p.urgent_at()), (off * 4, TcpFlags(flags), win, urg));
            prop_assert_eq!(p.payload().len(), 60 - off * 4);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            if let Ok(p) = TcpPacket::new_checked(&bytes[..]) {
                touch_all(&p);
            }
        }
    }
}
