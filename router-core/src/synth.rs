//! Synthetic packet builders for demos, simulators, fuzz seeds and tests. Not used
//! on the forwarding path.

use crate::wire::{
    self, Icmpv4Packet, Icmpv6Packet, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, TcpFlags,
    TcpPacket, UdpPacket, ip_proto,
};
use std::net::{IpAddr, SocketAddr};

/// The transport part of a synthetic packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A TCP segment with these flags and sequence number.
    Tcp {
        /// Flags.
        flags: TcpFlags,
        /// Sequence number.
        seq: u32,
    },
    /// A UDP datagram.
    Udp,
    /// An ICMP / ICMPv6 echo request with this identifier (ports are ignored).
    EchoRequest {
        /// Echo identifier.
        ident: u16,
    },
}

/// A synthetic IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketSpec {
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
    /// Transport header.
    pub transport: Transport,
    /// Payload bytes after the transport header (filled with a pattern).
    pub payload_len: usize,
    /// TTL / hop limit.
    pub ttl: u8,
    /// DSCP.
    pub dscp: u8,
    /// ECN.
    pub ecn: u8,
    /// IPv4 don't-fragment flag.
    pub dont_frag: bool,
}

/// Errors building a synthetic packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SynthError {
    /// The buffer is too small.
    #[error("buffer of {have} bytes, packet needs {need}")]
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// Source and destination families differ.
    #[error("source and destination address families differ")]
    FamilyMismatch,
}

impl PacketSpec {
    /// A TCP segment from `src` to `dst` with `flags` and no payload.
    pub fn tcp(src: SocketAddr, dst: SocketAddr, flags: TcpFlags) -> Self {
        Self {
            src,
            dst,
            transport: Transport::Tcp { flags, seq: 1 },
            payload_len: 0,
            ttl: 64,
            dscp: 0,
            ecn: 0,
            dont_frag: true,
        }
    }

    /// A UDP datagram with `payload_len` bytes.
    pub fn udp(src: SocketAddr, dst: SocketAddr, payload_len: usize) -> Self {
        Self {
            transport: Transport::Udp,
            payload_len,
            ..Self::tcp(src, dst, TcpFlags::SYN)
        }
    }

    /// With `payload_len` bytes of payload.
    pub fn with_payload(mut self, payload_len: usize) -> Self {
        self.payload_len = payload_len;
        self
    }

    fn transport_len(&self) -> usize {
        match self.transport {
            Transport::Tcp { .. } => 20,
            Transport::Udp | Transport::EchoRequest { .. } => 8,
        }
    }

    /// Length of the whole packet.
    pub fn len(&self) -> usize {
        let ip = if self.src.is_ipv4() { 20 } else { 40 };
        ip + self.transport_len() + self.payload_len
    }

    /// Whether the packet would be empty (never: it always has headers).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Write the packet at the start of `buf`; returns its length.
    pub fn write(&self, buf: &mut [u8]) -> Result<usize, SynthError> {
        let need = self.len();
        if buf.len() < need {
            return Err(SynthError::BufferTooSmall {
                need,
                have: buf.len(),
            });
        }
        let buf = &mut buf[..need];
        let proto = match (self.transport, self.src.ip()) {
            (Transport::Tcp { .. }, _) => ip_proto::TCP,
            (Transport::Udp, _) => ip_proto::UDP,
            (Transport::EchoRequest { .. }, IpAddr::V4(_)) => ip_proto::ICMP,
            (Transport::EchoRequest { .. }, IpAddr::V6(_)) => ip_proto::ICMPV6,
        };
        let l4_len = self.transport_len() + self.payload_len;
        let ip_len = match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let repr = Ipv4Repr {
                    src: s,
                    dst: d,
                    protocol: proto,
                    payload_len: l4_len,
                    ttl: self.ttl,
                    dscp: self.dscp,
                    ecn: self.ecn,
                    dont_frag: self.dont_frag,
                    ident: 0x1234,
                };
                repr.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..20]));
                20
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let repr = Ipv6Repr {
                    src: s,
                    dst: d,
                    next_header: proto,
                    payload_len: l4_len,
                    hop_limit: self.ttl,
                    traffic_class: (self.dscp << 2) | (self.ecn & 3),
                    flow_label: 0,
                };
                repr.emit(&mut Ipv6Packet::new_unchecked(&mut buf[..40]));
                40
            }
            _ => return Err(SynthError::FamilyMismatch),
        };
        let (src, dst) = (self.src.ip(), self.dst.ip());
        let l4 = &mut buf[ip_len..];
        let hl = self.transport_len();
        for (i, b) in l4[hl..].iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        match self.transport {
            Transport::Tcp { flags, seq } => {
                l4[..20].fill(0);
                let mut t = TcpPacket::new_unchecked(&mut *l4);
                t.set_src_port(self.src.port());
                t.set_dst_port(self.dst.port());
                t.set_seq_number(seq);
                t.set_header_len(20);
                t.set_flags(flags);
                t.set_window_len(65535);
                match (src, dst) {
                    (IpAddr::V4(s), IpAddr::V4(d)) => t.fill_checksum_v4(s, d),
                    (IpAddr::V6(s), IpAddr::V6(d)) => t.fill_checksum_v6(&s, &d),
                    _ => return Err(SynthError::FamilyMismatch),
                }
            }
            Transport::Udp => {
                let mut u = UdpPacket::new_unchecked(&mut *l4);
                u.set_src_port(self.src.port());
                u.set_dst_port(self.dst.port());
                // Bounded by the IP payload length, which fits in u16 for IPv4
                // and is limited by the caller's buffer for IPv6.
                u.set_len(u16::try_from(l4_len).unwrap_or(u16::MAX));
                match (src, dst) {
                    (IpAddr::V4(s), IpAddr::V4(d)) => u.fill_checksum_v4(s, d),
                    (IpAddr::V6(s), IpAddr::V6(d)) => u.fill_checksum_v6(&s, &d),
                    _ => return Err(SynthError::FamilyMismatch),
                }
            }
            Transport::EchoRequest { ident } => match (src, dst) {
                (IpAddr::V4(_), _) => {
                    let mut i = Icmpv4Packet::new_unchecked(&mut *l4);
                    i.set_msg_type(wire::icmpv4_type::ECHO_REQUEST);
                    i.set_msg_code(0);
                    i.set_echo_ident(ident);
                    i.set_echo_seq_no(1);
                    i.fill_checksum();
                }
                (IpAddr::V6(s), IpAddr::V6(d)) => {
                    let mut i = Icmpv6Packet::new_unchecked(&mut *l4);
                    i.set_msg_type(wire::icmpv6_type::ECHO_REQUEST);
                    i.set_msg_code(0);
                    i.set_echo_ident(ident);
                    i.set_echo_seq_no(1);
                    i.fill_checksum(&s, &d);
                }
                _ => return Err(SynthError::FamilyMismatch),
            },
        }
        Ok(need)
    }
}

/// The workload the benches and instruction counts share: 16 virtual subnets
/// `10.i.0.0/16`, each with 16 next hops `198.51.i.(h+1)` at loads `h / 10`.
pub mod workload {
    use super::PacketSpec;
    use crate::classify::VirtualSubnet;
    use crate::packet::HEADROOM;
    use crate::policy::Candidate;
    use crate::wire::TcpFlags;
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    /// The 16 subnets with their candidates.
    pub fn subnets() -> Vec<(VirtualSubnet, Vec<Candidate>)> {
        (0..16u8)
            .filter_map(|i| {
                let s = VirtualSubnet::new(IpAddr::V4(Ipv4Addr::new(10, i, 0, 0)), 16).ok()?;
                let cands = (0..16u8)
                    .map(|h| Candidate {
                        addr: IpAddr::V4(Ipv4Addr::new(198, 51, i, h + 1)),
                        load: f64::from(h) / 10.0,
                        route_cost: 0.0,
                        up: true,
                    })
                    .collect();
                Some((s, cands))
            })
            .collect()
    }

    /// Flow `i`'s TCP segment with `flags` and 64 payload bytes, after
    /// [`HEADROOM`] bytes of headroom: flows spread over clients, ports and the
    /// 16 subnets.
    pub fn flow_packet(i: u32, flags: TcpFlags) -> Vec<u8> {
        let src = SocketAddr::new(
            IpAddr::V4(Ipv4Addr::from(0xcb00_0000 | (i >> 12))),
            1024 + (i & 0xfff) as u16,
        );
        let dst = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, (i % 16) as u8, 1, 1)), 80);
        let spec = PacketSpec::tcp(src, dst, flags).with_payload(64);
        let mut buf = vec![0u8; HEADROOM + spec.len()];
        // A fixed-size TCP packet always fits the buffer sized for it.
        let _ = spec.write(&mut buf[HEADROOM..]);
        buf
    }
}
