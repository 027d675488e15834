//! Tunnels: encapsulate toward the next level, terminate tunnels addressed to us.
//!
//! [`IpIpTunnel`] is IP-in-IP: IPv4 in IPv4 (RFC 2003), IPv6 in IPv4 (RFC 4213) and
//! either in IPv6 (RFC 2473), chosen by the families of the inner packet and the
//! tunnel endpoint. Encapsulation prepends the outer header in the packet buffer's
//! headroom; decapsulation strips it. Neither copies the payload. DSCP is copied
//! outward (RFC 2983 uniform model) and ECN follows RFC 6040 (normal mode out,
//! the §4.2 combination table in). The [`Tunnel`] trait keeps other encapsulations
//! (UDP, MPLS) pluggable.

use crate::packet::{BufError, PacketBuf};
use crate::wire::{self, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, ecn, ip_proto};
use core::sync::atomic::{AtomicU16, Ordering};
use std::net::IpAddr;

/// Parameters of one encapsulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncapParams {
    /// Outer source: this router's tunnel endpoint of the outer family.
    pub src: IpAddr,
    /// Outer destination: the next hop's tunnel endpoint.
    pub dst: IpAddr,
    /// Outer TTL / hop limit (RFC 2003 §3.1: a tunnel parameter, not the inner TTL).
    pub ttl: u8,
    /// MTU of the path toward `dst`, outer header included.
    pub mtu: usize,
}

/// A successful encapsulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encapsulated {
    /// The outer packet exceeds the MTU but may be fragmented (inner IPv4 without
    /// DF): the shell must send it with [`fragment_ipv4`].
    pub needs_fragmentation: bool,
}

/// A terminated tunnel packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decapsulated {
    /// Outer source address (the previous level's tunnel entry).
    pub outer_src: IpAddr,
}

/// Why a packet could not be tunnelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TunnelError {
    /// The encapsulated packet would exceed the path MTU and may not be
    /// fragmented: answer with ICMP "fragmentation needed" / "packet too big"
    /// carrying `inner_mtu`.
    #[error("packet of {len} bytes exceeds the tunnel MTU {inner_mtu}")]
    TooBig {
        /// Inner packet length.
        len: usize,
        /// Largest inner packet that fits.
        inner_mtu: usize,
    },
    /// Source and destination endpoint families differ.
    #[error("tunnel endpoints {src} and {dst} are of different families")]
    FamilyMismatch {
        /// Outer source.
        src: IpAddr,
        /// Outer destination.
        dst: IpAddr,
    },
    /// The packet is not a tunnel packet this tunnel terminates.
    #[error("not an IP-in-IP packet (protocol {proto})")]
    NotTunnel {
        /// Outer protocol / next header found.
        proto: u8,
    },
    /// The outer packet is a fragment; we do not reassemble.
    #[error("fragmented tunnel packet")]
    Fragmented,
    /// RFC 6040 §4.2: outer CE over a not-ECT inner packet must be dropped.
    #[error("ECN combination requires a drop (outer CE, inner not-ECT)")]
    EcnDrop,
    /// Inner or outer header malformed.
    #[error("malformed tunnel packet: {0}")]
    Wire(#[from] wire::WireError),
    /// Not enough headroom in the buffer.
    #[error(transparent)]
    Buffer(#[from] BufError),
}

/// An encapsulation scheme toward a next hop.
pub trait Tunnel: Send + Sync + core::fmt::Debug {
    /// Bytes added in front of an inner packet when the outer endpoint is `dst`.
    fn overhead(&self, dst: IpAddr) -> usize;
    /// Wrap the packet in place.
    fn encapsulate(
        &self,
        pkt: &mut PacketBuf<'_>,
        params: &EncapParams,
    ) -> Result<Encapsulated, TunnelError>;
    /// Strip the outer header in place; the packet then starts at the inner header.
    fn decapsulate(&self, pkt: &mut PacketBuf<'_>) -> Result<Decapsulated, TunnelError>;
}

/// IP-in-IP (RFC 2003 / RFC 2473 / RFC 4213).
#[derive(Debug, Default)]
pub struct IpIpTunnel {
    /// Identification for outer IPv4 headers that may be fragmented (RFC 6864:
    /// atomic datagrams, DF set, may carry any value, so they get 0).
    ident: AtomicU16,
}

impl IpIpTunnel {
    /// A new IP-in-IP tunnel.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Inner-header facts that shape the outer header.
struct Inner {
    proto: u8,
    dscp: u8,
    ecn: u8,
    may_fragment: bool,
}

fn inner_facts(data: &[u8]) -> Result<Inner, TunnelError> {
    match wire::ip_version(data)? {
        4 => {
            let p = Ipv4Packet::new_checked(data)?;
            Ok(Inner {
                proto: ip_proto::IPV4,
                dscp: p.dscp(),
                ecn: p.ecn(),
                may_fragment: !p.dont_frag(),
            })
        }
        _ => {
            let p = Ipv6Packet::new_checked(data)?;
            Ok(Inner {
                proto: ip_proto::IPV6,
                dscp: p.dscp(),
                ecn: p.ecn(),
                may_fragment: false,
            })
        }
    }
}

impl Tunnel for IpIpTunnel {
    fn overhead(&self, dst: IpAddr) -> usize {
        match dst {
            IpAddr::V4(_) => Ipv4Repr::HEADER_LEN,
            IpAddr::V6(_) => Ipv6Repr::HEADER_LEN,
        }
    }

    #[inline]
    fn encapsulate(
        &self,
        pkt: &mut PacketBuf<'_>,
        params: &EncapParams,
    ) -> Result<Encapsulated, TunnelError> {
        let inner = inner_facts(pkt.data())?;
        let len = pkt.len();
        let overhead = self.overhead(params.dst);
        let too_big = len + overhead > params.mtu;
        if too_big && !inner.may_fragment {
            return Err(TunnelError::TooBig {
                len,
                inner_mtu: params.mtu.saturating_sub(overhead),
            });
        }
        match (params.src, params.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let ident = if inner.may_fragment {
                    self.ident.fetch_add(1, Ordering::Relaxed)
                } else {
                    0
                };
                let repr = Ipv4Repr {
                    src,
                    dst,
                    protocol: inner.proto,
                    payload_len: len,
                    ttl: params.ttl,
                    dscp: inner.dscp,
                    ecn: ecn::encapsulate(inner.ecn),
                    dont_frag: !inner.may_fragment,
                    ident,
                };
                let hdr = pkt.prepend(overhead)?;
                repr.emit(&mut Ipv4Packet::new_unchecked(hdr));
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                let repr = Ipv6Repr {
                    src,
                    dst,
                    next_header: inner.proto,
                    payload_len: len,
                    hop_limit: params.ttl,
                    traffic_class: (inner.dscp << 2) | ecn::encapsulate(inner.ecn),
                    flow_label: 0,
                };
                let hdr = pkt.prepend(overhead)?;
                repr.emit(&mut Ipv6Packet::new_unchecked(hdr));
            }
            (src, dst) => return Err(TunnelError::FamilyMismatch { src, dst }),
        }
        Ok(Encapsulated {
            needs_fragmentation: too_big,
        })
    }

    fn decapsulate(&self, pkt: &mut PacketBuf<'_>) -> Result<Decapsulated, TunnelError> {
        let data = pkt.data();
        let (outer_src, proto, hdr_len, outer_ecn, outer_payload_len) =
            match wire::ip_version(data)? {
                4 => {
                    let p = Ipv4Packet::new_checked(data)?;
                    if p.more_frags() || p.frag_offset() != 0 {
                        return Err(TunnelError::Fragmented);
                    }
                    (
                        IpAddr::V4(p.src_addr()),
                        p.protocol(),
                        p.header_len(),
                        p.ecn(),
                        p.payload().len(),
                    )
                }
                _ => {
                    let p = Ipv6Packet::new_checked(data)?;
                    let upper = wire::walk_extensions(p.next_header(), p.payload())?;
                    if upper.fragment.is_some() {
                        return Err(TunnelError::Fragmented);
                    }
                    (
                        IpAddr::V6(p.src_addr()),
                        upper.protocol,
                        Ipv6Repr::HEADER_LEN + upper.offset,
                        p.ecn(),
                        p.payload().len() - upper.offset,
                    )
                }
            };
        if proto != ip_proto::IPV4 && proto != ip_proto::IPV6 {
            return Err(TunnelError::NotTunnel { proto });
        }
        pkt.strip_front(hdr_len)?;
        pkt.truncate(outer_payload_len);
        let inner = pkt.data_mut();
        match (proto, wire::ip_version(inner)?) {
            (ip_proto::IPV4, 4) => {
                let mut p = Ipv4Packet::new_checked(&mut *inner)?;
                let e = ecn::decapsulate(outer_ecn, p.ecn()).ok_or(TunnelError::EcnDrop)?;
                if e != p.ecn() {
                    p.set_ecn(e);
                    p.fill_checksum();
                }
                let total = usize::from(p.total_len());
                pkt.truncate(total);
            }
            (ip_proto::IPV6, 6) => {
                let mut p = Ipv6Packet::new_checked(&mut *inner)?;
                let e = ecn::decapsulate(outer_ecn, p.ecn()).ok_or(TunnelError::EcnDrop)?;
                p.set_traffic_class((p.dscp() << 2) | e);
                let total = Ipv6Repr::HEADER_LEN + usize::from(p.payload_len());
                pkt.truncate(total);
            }
            _ => {
                return Err(TunnelError::Wire(wire::WireError::Malformed {
                    what: "IP-in-IP",
                    reason: "inner IP version does not match the outer protocol",
                }));
            }
        }
        Ok(Decapsulated { outer_src })
    }
}

/// Split an IPv4 packet (without DF) into fragments of at most `mtu` bytes, RFC 791
/// §3.2, writing each into `scratch` and handing it to `emit`. Options are copied
/// only where their copy flag says so; all fragments here carry the bare header for
/// simplicity, which RFC 791 permits for non-copied options.
pub fn fragment_ipv4(
    packet: &[u8],
    mtu: usize,
    scratch: &mut [u8],
    mut emit: impl FnMut(&[u8]),
) -> Result<usize, TunnelError> {
    let p = Ipv4Packet::new_checked(packet)?;
    if p.dont_frag() {
        return Err(TunnelError::TooBig {
            len: packet.len(),
            inner_mtu: mtu,
        });
    }
    let hl = Ipv4Repr::HEADER_LEN;
    let payload = p.payload();
    // Fragment payloads are multiples of 8 bytes except the last.
    let chunk = (mtu.saturating_sub(hl)) & !7;
    if chunk == 0 || scratch.len() < hl + chunk.min(payload.len()) {
        return Err(TunnelError::TooBig {
            len: packet.len(),
            inner_mtu: mtu,
        });
    }
    let base = usize::from(p.frag_offset());
    let had_more = p.more_frags();
    let mut off = 0;
    let mut count = 0;
    while off < payload.len() {
        let n = chunk.min(payload.len() - off);
        let last = off + n == payload.len();
        let frag_off = u16::try_from(base + off).map_err(|_| {
            TunnelError::Wire(wire::WireError::Malformed {
                what: "IPv4 fragment",
                reason: "offset beyond 65535",
            })
        })?;
        scratch[..hl].copy_from_slice(&packet[..hl]);
        scratch[hl..hl + n].copy_from_slice(&payload[off..off + n]);
        let mut f = Ipv4Packet::new_unchecked(&mut scratch[..hl + n]);
        f.set_version_and_header_len(hl);
        // hl + n <= mtu fits in u16 because the original total length did.
        f.set_total_len((hl + n) as u16);
        f.set_flags_and_frag(false, !last || had_more, frag_off);
        f.fill_checksum();
        emit(&scratch[..hl + n]);
        off += n;
        count += 1;
    }
    Ok(count)
}

/// Most prefixes a [`TunnelSources`] holds.
pub const MAX_TUNNEL_SOURCES: usize = 256;

/// Which outer sources may send tunnels to this router (issue 14): the level
/// above, same-level neighbours and entry routers. Anything else tunnelled to
/// us, for instance a client wrapping a spoofed inner source to have it placed
/// as a new flow past the edge's anti-spoofing, is dropped and counted
/// ([`crate::engine::DropReason::TunnelSource`]). Prefixes, at most
/// [`MAX_TUNNEL_SOURCES`]; a lookup is a scan, as the list is a handful of peers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TunnelSources {
    prefixes: Vec<crate::classify::VirtualSubnet>,
}

/// A [`TunnelSources`] over its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("more than {MAX_TUNNEL_SOURCES} tunnel source prefixes")]
pub struct TooManySources;

impl TunnelSources {
    /// Admit `prefix` (a repeat is kept once).
    pub fn allow(&mut self, prefix: crate::classify::VirtualSubnet) -> Result<(), TooManySources> {
        if self.prefixes.contains(&prefix) {
            return Ok(());
        }
        if self.prefixes.len() >= MAX_TUNNEL_SOURCES {
            return Err(TooManySources);
        }
        self.prefixes.push(prefix);
        Ok(())
    }

    /// Whether `src` may tunnel to us.
    #[inline]
    pub fn admits(&self, src: IpAddr) -> bool {
        self.prefixes.iter().any(|p| p.contains(src))
    }

    /// The admitted prefixes.
    pub fn prefixes(&self) -> &[crate::classify::VirtualSubnet] {
        &self.prefixes
    }
}
