//! Zero-copy views of the network-layer and transport headers the engine touches.
//!
//! Every format follows the same shape (after smoltcp's `wire` module): a
//! `Packet<T: AsRef<[u8]>>` view over caller-owned bytes with a private table of
//! field offsets, `new_unchecked` / `new_checked` / `check_len`, getters, and
//! setters when `T: AsMut<[u8]>`. Where a header has a fixed layout worth building
//! from values there is also a `Repr` with `parse` / `emit`.
//!
//! # Contract
//!
//! - Bytes from the network go through `new_checked` (or `check_len`). After
//!   `check_len()` returns `Ok`, no getter of that view panics, whatever the bytes:
//!   payload accessors use the lengths `check_len` validated.
//! - `new_unchecked` is for buffers this process is building; its caller guarantees
//!   the buffer is long enough for the fields it sets (setters index the buffer).
//! - Nothing here allocates, logs or keeps state; drop counters belong to the caller.

pub mod checksum;
pub mod flowad;
pub mod icmpv4;
pub mod icmpv6;
pub mod ipv4;
pub mod ipv6;
pub mod tcp;
pub mod udp;

pub use icmpv4::{FRAG_NEEDED_CODE, Icmpv4Packet, icmpv4_type};
pub use icmpv6::{Icmpv6Packet, icmpv6_type};
pub use ipv4::{Ipv4Packet, Ipv4Repr};
pub use ipv6::{Fragment, Ipv6Packet, Ipv6Repr, UpperLayer, walk_extensions};
pub use tcp::{TcpFlags, TcpPacket};
pub use udp::UdpPacket;

/// Byte range of one fixed-position header field.
pub(crate) type Field = core::ops::Range<usize>;

/// Why some bytes are not a usable header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The buffer ends before the structure does.
    #[error("{what} truncated: need {need} bytes, have {have}")]
    Truncated {
        /// The structure being read.
        what: &'static str,
        /// Bytes the structure claims or requires.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// A field holds a value the RFC forbids.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// The structure being read.
        what: &'static str,
        /// The rule that was broken.
        reason: &'static str,
    },
    /// A legal value this implementation does not handle.
    #[error("unsupported {what}: {value}")]
    Unsupported {
        /// The field being read.
        what: &'static str,
        /// Its value.
        value: u32,
    },
}

/// Result of wire parsing.
pub type Result<T> = core::result::Result<T, WireError>;

/// IP protocol / IPv6 next-header numbers (IANA "Assigned Internet Protocol Numbers").
pub mod ip_proto {
    /// IPv6 hop-by-hop options (RFC 8200 §4.3).
    pub const HOPOPT: u8 = 0;
    /// ICMP for IPv4 (RFC 792).
    pub const ICMP: u8 = 1;
    /// IPv4 encapsulated in IP (IP-in-IP, RFC 2003).
    pub const IPV4: u8 = 4;
    /// TCP (RFC 9293).
    pub const TCP: u8 = 6;
    /// UDP (RFC 768).
    pub const UDP: u8 = 17;
    /// IPv6 encapsulated in IP (RFC 2473, RFC 4213).
    pub const IPV6: u8 = 41;
    /// IPv6 routing header (RFC 8200 §4.4).
    pub const ROUTING: u8 = 43;
    /// IPv6 fragment header (RFC 8200 §4.5).
    pub const FRAGMENT: u8 = 44;
    /// Encapsulating Security Payload (RFC 4303).
    pub const ESP: u8 = 50;
    /// Authentication Header (RFC 4302).
    pub const AH: u8 = 51;
    /// ICMP for IPv6 (RFC 4443).
    pub const ICMPV6: u8 = 58;
    /// No next header (RFC 8200 §4.7).
    pub const NO_NEXT: u8 = 59;
    /// IPv6 destination options (RFC 8200 §4.6).
    pub const DSTOPTS: u8 = 60;
}

/// ECN codepoints (RFC 3168 §5) and the RFC 6040 tunnel rules.
pub mod ecn {
    /// Not ECN-capable transport.
    pub const NOT_ECT: u8 = 0;
    /// ECN-capable transport, codepoint 1.
    pub const ECT1: u8 = 1;
    /// ECN-capable transport, codepoint 0.
    pub const ECT0: u8 = 2;
    /// Congestion experienced.
    pub const CE: u8 = 3;

    /// RFC 6040 §4.2 decapsulation (Figure 4): the ECN field of the forwarded inner
    /// header, or `None` when the packet must be dropped (CE outer over a
    /// Not-ECT inner: the congestion signal cannot be passed on).
    #[must_use]
    pub fn decapsulate(outer: u8, inner: u8) -> Option<u8> {
        match (outer & 3, inner & 3) {
            (CE, NOT_ECT) => None,
            (_, NOT_ECT) => Some(NOT_ECT),
            (CE, _) | (_, CE) => Some(CE),
            (ECT1, ECT0) => Some(ECT1),
            (_, inner) => Some(inner),
        }
    }

    /// RFC 6040 §4.1 normal mode encapsulation: the outer copies the inner field,
    /// CE included.
    #[must_use]
    pub fn encapsulate(inner: u8) -> u8 {
        inner & 3
    }
}

/// The IP version of the packet starting at `buf` (RFC 791 §3.1, RFC 8200 §3):
/// 4 or 6.
pub fn ip_version(buf: &[u8]) -> Result<u8> {
    let Some(&first) = buf.first() else {
        return Err(WireError::Truncated {
            what: "IP header",
            need: 1,
            have: 0,
        });
    };
    match first >> 4 {
        v @ (4 | 6) => Ok(v),
        v => Err(WireError::Unsupported {
            what: "IP version",
            value: u32::from(v),
        }),
    }
}

#[inline]
pub(crate) fn read_u16(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

#[inline]
pub(crate) fn read_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

#[inline]
pub(crate) fn write_u16(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

#[inline]
pub(crate) fn write_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// Length check shared by the views: `have >= need`, else `Truncated`.
#[inline]
pub(crate) fn need(what: &'static str, need: usize, have: usize) -> Result<()> {
    if have < need {
        Err(WireError::Truncated { what, need, have })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_version_dispatch() {
        assert_eq!(ip_version(&[0x45]), Ok(4));
        assert_eq!(ip_version(&[0x60, 0]), Ok(6));
        assert!(matches!(
            ip_version(&[]),
            Err(WireError::Truncated {
                need: 1,
                have: 0,
                ..
            })
        ));
        assert_eq!(
            ip_version(&[0x50]),
            Err(WireError::Unsupported {
                what: "IP version",
                value: 5
            })
        );
    }

    /// RFC 6040 §4.2 Figure 4, row by row: arriving inner header down, arriving
    /// outer header across (Not-ECT, ECT(0), ECT(1), CE).
    #[test]
    fn rfc6040_decapsulation_table() {
        use ecn::*;
        const OUTER: [u8; 4] = [NOT_ECT, ECT0, ECT1, CE];
        let table: [(u8, [Option<u8>; 4]); 4] = [
            (NOT_ECT, [Some(NOT_ECT), Some(NOT_ECT), Some(NOT_ECT), None]),
            (ECT0, [Some(ECT0), Some(ECT0), Some(ECT1), Some(CE)]),
            (ECT1, [Some(ECT1), Some(ECT1), Some(ECT1), Some(CE)]),
            (CE, [Some(CE), Some(CE), Some(CE), Some(CE)]),
        ];
        let mut checked = 0;
        for (inner, row) in table {
            for (outer, want) in OUTER.into_iter().zip(row) {
                assert_eq!(
                    decapsulate(outer, inner),
                    want,
                    "outer {outer} inner {inner}"
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 16);
    }

    #[test]
    fn rfc6040_normal_mode_copies_inner() {
        for inner in 0..4 {
            assert_eq!(ecn::encapsulate(inner), inner);
            // Encapsulate then decapsulate with an untouched outer is the identity.
            assert_eq!(
                ecn::decapsulate(ecn::encapsulate(inner), inner),
                Some(inner)
            );
        }
    }
}
