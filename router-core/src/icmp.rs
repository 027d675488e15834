//! ICMP errors the router itself originates (time exceeded, fragmentation needed,
//! packet too big), built in place over the offending packet: the quoted original
//! stays where it is and the new headers go into the headroom.

use crate::packet::{BufError, PacketBuf};
use crate::wire::{
    self, Icmpv4Packet, Icmpv6Packet, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, ip_proto,
};
use std::net::IpAddr;

/// RFC 1812 §4.3.2.3: an ICMPv4 error carries as much of the original as fits in
/// 576 bytes.
const V4_ERROR_MAX: usize = 576;
/// RFC 4443 §2.4(c): an ICMPv6 error must not exceed the minimum IPv6 MTU.
const V6_ERROR_MAX: usize = 1280;
/// TTL / hop limit of router-originated messages.
const REPLY_TTL: u8 = 64;

/// The ICMP error to originate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpError {
    /// TTL / hop limit reached zero in transit (RFC 792 type 11, RFC 4443 type 3).
    TimeExceeded,
    /// The packet does not fit the next link: IPv4 "fragmentation needed and DF set"
    /// (RFC 1191) or IPv6 "packet too big" (RFC 8201), with the usable MTU.
    TooBig {
        /// MTU to advertise to the sender.
        mtu: u32,
    },
}

/// Why no ICMP error may or can be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IcmpBuildError {
    /// RFC 1812 §4.3.2.7 / RFC 4443 §2.4(e): never answer an ICMP error, a
    /// non-first fragment, or a packet from an unspecified or multicast source.
    #[error("ICMP error suppressed for this packet (RFC 1812 §4.3.2.7)")]
    Suppressed,
    /// The offending packet does not parse.
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    /// No room in front of the packet.
    #[error(transparent)]
    Buffer(#[from] BufError),
    /// The router has no address of the packet's family to send from.
    #[error("no local address of the packet's family")]
    NoSource,
}

/// Turn the packet in `pkt` into an ICMP error from `from` back to its source.
/// Returns the destination of the reply.
pub fn build_error(
    pkt: &mut PacketBuf<'_>,
    kind: IcmpError,
    from: Option<IpAddr>,
) -> Result<IpAddr, IcmpBuildError> {
    match wire::ip_version(pkt.data())? {
        4 => build_v4(pkt, kind, from),
        _ => build_v6(pkt, kind, from),
    }
}

fn build_v4(
    pkt: &mut PacketBuf<'_>,
    kind: IcmpError,
    from: Option<IpAddr>,
) -> Result<IpAddr, IcmpBuildError> {
    let (dst, suppressed) = {
        let p = Ipv4Packet::new_checked(pkt.data())?;
        let src = p.src_addr();
        let is_icmp_error = p.protocol() == ip_proto::ICMP
            && p.frag_offset() == 0
            && Icmpv4Packet::new_checked(p.payload())
                .map(|i| !matches!(i.msg_type(), 0 | 8))
                .unwrap_or(true);
        (
            src,
            is_icmp_error
                || p.frag_offset() != 0
                || src.is_unspecified()
                || src.is_multicast()
                || src.is_broadcast(),
        )
    };
    if suppressed {
        return Err(IcmpBuildError::Suppressed);
    }
    let Some(IpAddr::V4(src)) = from else {
        return Err(IcmpBuildError::NoSource);
    };
    let quote = pkt.len().min(V4_ERROR_MAX - Ipv4Repr::HEADER_LEN - 8);
    pkt.truncate(quote);
    let icmp = pkt.prepend(8)?;
    icmp.fill(0);
    {
        let mut i = Icmpv4Packet::new_unchecked(&mut *icmp);
        match kind {
            IcmpError::TimeExceeded => {
                i.set_msg_type(wire::icmpv4_type::TIME_EXCEEDED);
                i.set_msg_code(0);
            }
            IcmpError::TooBig { mtu } => {
                i.set_msg_type(wire::icmpv4_type::DEST_UNREACHABLE);
                i.set_msg_code(wire::FRAG_NEEDED_CODE);
                i.set_next_hop_mtu(u16::try_from(mtu).unwrap_or(u16::MAX));
            }
        }
    }
    let mut i = Icmpv4Packet::new_unchecked(pkt.data_mut());
    i.fill_checksum();
    let repr = Ipv4Repr {
        src,
        dst,
        protocol: ip_proto::ICMP,
        payload_len: quote + 8,
        ttl: REPLY_TTL,
        dscp: 0,
        ecn: 0,
        dont_frag: false,
        ident: 0,
    };
    let hdr = pkt.prepend(Ipv4Repr::HEADER_LEN)?;
    repr.emit(&mut Ipv4Packet::new_unchecked(hdr));
    Ok(IpAddr::V4(dst))
}

fn build_v6(
    pkt: &mut PacketBuf<'_>,
    kind: IcmpError,
    from: Option<IpAddr>,
) -> Result<IpAddr, IcmpBuildError> {
    let (dst, suppressed) = {
        let p = Ipv6Packet::new_checked(pkt.data())?;
        let src = p.src_addr();
        let upper = wire::walk_extensions(p.next_header(), p.payload())?;
        let non_first = upper.fragment.is_some_and(|f| f.offset != 0);
        let is_icmp_error = upper.protocol == ip_proto::ICMPV6
            && !non_first
            && p.payload()
                .get(upper.offset..)
                .and_then(|b| Icmpv6Packet::new_checked(b).ok())
                .is_none_or(|i| i.msg_type() < 128);
        (
            src,
            is_icmp_error || non_first || src.is_unspecified() || src.is_multicast(),
        )
    };
    if suppressed {
        return Err(IcmpBuildError::Suppressed);
    }
    let Some(IpAddr::V6(src)) = from else {
        return Err(IcmpBuildError::NoSource);
    };
    let quote = pkt.len().min(V6_ERROR_MAX - Ipv6Repr::HEADER_LEN - 8);
    pkt.truncate(quote);
    let icmp = pkt.prepend(8)?;
    icmp.fill(0);
    {
        let mut i = Icmpv6Packet::new_unchecked(&mut *icmp);
        match kind {
            IcmpError::TimeExceeded => {
                i.set_msg_type(wire::icmpv6_type::TIME_EXCEEDED);
                i.set_msg_code(0);
            }
            IcmpError::TooBig { mtu } => {
                i.set_msg_type(wire::icmpv6_type::PACKET_TOO_BIG);
                i.set_msg_code(0);
                i.set_mtu(mtu);
            }
        }
    }
    let mut i = Icmpv6Packet::new_unchecked(pkt.data_mut());
    i.fill_checksum(&src, &dst);
    let repr = Ipv6Repr {
        src,
        dst,
        next_header: ip_proto::ICMPV6,
        payload_len: quote + 8,
        hop_limit: REPLY_TTL,
        traffic_class: 0,
        flow_label: 0,
    };
    let hdr = pkt.prepend(Ipv6Repr::HEADER_LEN)?;
    repr.emit(&mut Ipv6Packet::new_unchecked(hdr));
    Ok(IpAddr::V6(dst))
}
