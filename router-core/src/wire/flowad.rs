//! Server flow advertisements (DESIGN.md §5): the "augmented ping".
//!
//! A server that sees no progress on a connection sends an ICMP echo request from
//! the VIP to the client. The client's echo reply retraces the client's path to
//! whichever router now receives the flow, and that router re-creates the flow's
//! state from the advertisement the reply carries. The echo payload is 64 bytes of
//! anything (so tools that look at the start of a ping payload see nothing odd),
//! then the advertisement, all fields big endian:
//!
//! ```text
//!  0      4  5      6     7     8             8+a          8+2a        10+2a
//!  "SLRA" |v |family|proto|resvd| client addr | VIP addr   | client port| VIP port |
//!  12+2a          12+3a        14+3a   18+3a            26+3a     34+3a   66+3a
//!  server addr    | server port| key id| timestamp (ms)  | nonce    | MAC  |
//! ```
//!
//! `a` is 4 (family 4) or 16 (family 6); the MAC is 32 bytes (HMAC-SHA256 in the
//! trust domain) over every advertisement byte before it. This module only parses
//! and builds: it never verifies the MAC (the control plane holds the keys) and
//! never trusts the bytes.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::icmpv4::{Icmpv4Packet, icmpv4_type};
use super::icmpv6::{Icmpv6Packet, icmpv6_type};
use super::ip_proto;
use super::ipv4::{Ipv4Packet, Ipv4Repr};
use super::ipv6::{Ipv6Packet, Ipv6Repr, walk_extensions};
use crate::classify::FlowKey;

/// Type id that marks an echo payload as an SLR flow advertisement.
pub const TYPE_ID: [u8; 4] = *b"SLRA";
/// Advertisement format version.
pub const VERSION: u8 = 1;
/// Echo payload bytes before the advertisement.
pub const ECHO_PREFIX_LEN: usize = 64;
/// Length of the MAC (HMAC-SHA256).
pub const MAC_LEN: usize = 32;
/// Length of an IPv4 advertisement.
pub const V4_LEN: usize = advert_len(4);
/// Length of an IPv6 advertisement.
pub const V6_LEN: usize = advert_len(16);

const FIXED: usize = 8;

const fn advert_len(a: usize) -> usize {
    FIXED + 3 * a + 2 + 2 + 2 + 4 + 8 + 8 + MAC_LEN
}

/// Why bytes are not a usable advertisement, or one cannot be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdvertError {
    /// The bytes end before the advertisement does.
    #[error("flow advertisement truncated: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes the advertisement needs.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// The payload does not start with [`TYPE_ID`].
    #[error("not a flow advertisement (type id mismatch)")]
    NotAdvert,
    /// A version this implementation does not speak.
    #[error("unsupported flow advertisement version {0}")]
    Version(u8),
    /// The address family byte is neither 4 nor 6.
    #[error("bad address family {0}")]
    Family(u8),
    /// The reserved byte is not zero.
    #[error("reserved byte not zero")]
    Reserved,
    /// Only TCP and UDP flows are advertised.
    #[error("unsupported protocol {0} in flow advertisement")]
    Protocol(u8),
    /// The echo reply carrying it is not from the advertised client to the VIP.
    #[error("echo reply addresses do not match the advertised flow")]
    AddressMismatch,
    /// The flow, the VIP and the server are not all of one address family.
    #[error("flow and server addresses of different families")]
    MixedFamilies,
    /// The output buffer is too small.
    #[error("buffer too small: need {need} bytes, have {have}")]
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
}

/// The fields of an advertisement (everything but the MAC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdvertFields {
    /// The flow as routers see it: client to VIP.
    pub key: FlowKey,
    /// The server's tunnel endpoint address and the port it serves on.
    pub server: SocketAddr,
    /// Which trust-domain key made the MAC.
    pub key_id: u32,
    /// Sender's wall clock, milliseconds since the Unix epoch (replay window).
    pub timestamp_ms: u64,
    /// Unique per advertisement (replay cache).
    pub nonce: u64,
}

impl AdvertFields {
    fn addr_len(&self) -> Result<usize, AdvertError> {
        match (self.key.src, self.key.dst, self.server.ip()) {
            (IpAddr::V4(_), IpAddr::V4(_), IpAddr::V4(_)) => Ok(4),
            (IpAddr::V6(_), IpAddr::V6(_), IpAddr::V6(_)) => Ok(16),
            _ => Err(AdvertError::MixedFamilies),
        }
    }

    /// Length of the encoded advertisement.
    pub fn encoded_len(&self) -> Result<usize, AdvertError> {
        Ok(advert_len(self.addr_len()?))
    }
}

/// A zero-copy view of one advertisement (the bytes from the type id on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowAdvert<T: AsRef<[u8]>> {
    buffer: T,
    a: usize,
}

impl<T: AsRef<[u8]>> FlowAdvert<T> {
    /// Check every structural rule; afterwards no getter panics. Bytes after the
    /// advertisement are ignored (echo payloads may be padded).
    pub fn new_checked(buffer: T) -> Result<Self, AdvertError> {
        let b = buffer.as_ref();
        if b.len() < FIXED {
            return Err(AdvertError::Truncated {
                need: FIXED,
                have: b.len(),
            });
        }
        if b[..4] != TYPE_ID {
            return Err(AdvertError::NotAdvert);
        }
        if b[4] != VERSION {
            return Err(AdvertError::Version(b[4]));
        }
        let a = match b[5] {
            4 => 4,
            6 => 16,
            f => return Err(AdvertError::Family(f)),
        };
        if !matches!(b[6], ip_proto::TCP | ip_proto::UDP) {
            return Err(AdvertError::Protocol(b[6]));
        }
        if b[7] != 0 {
            return Err(AdvertError::Reserved);
        }
        let need = advert_len(a);
        if b.len() < need {
            return Err(AdvertError::Truncated {
                need,
                have: b.len(),
            });
        }
        Ok(Self { buffer, a })
    }

    fn bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    fn addr(&self, at: usize) -> IpAddr {
        let b = self.bytes();
        if self.a == 4 {
            IpAddr::V4(Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]))
        } else {
            let mut o = [0u8; 16];
            o.copy_from_slice(&b[at..at + 16]);
            IpAddr::V6(Ipv6Addr::from(o))
        }
    }

    fn u16_at(&self, at: usize) -> u16 {
        let b = self.bytes();
        u16::from_be_bytes([b[at], b[at + 1]])
    }

    fn u64_at(&self, at: usize) -> u64 {
        let mut o = [0u8; 8];
        o.copy_from_slice(&self.bytes()[at..at + 8]);
        u64::from_be_bytes(o)
    }

    /// Length of the advertisement (MAC included).
    pub fn len(&self) -> usize {
        advert_len(self.a)
    }

    /// Never true: a checked advertisement has fixed fields.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The advertised flow: client to VIP.
    pub fn flow_key(&self) -> FlowKey {
        let a = self.a;
        FlowKey {
            proto: self.bytes()[6],
            src: self.addr(FIXED),
            src_port: self.u16_at(FIXED + 2 * a),
            dst: self.addr(FIXED + a),
            dst_port: self.u16_at(FIXED + 2 * a + 2),
        }
    }

    /// The server's tunnel endpoint and port.
    pub fn server(&self) -> SocketAddr {
        let a = self.a;
        SocketAddr::new(self.addr(FIXED + 2 * a + 4), self.u16_at(FIXED + 3 * a + 4))
    }

    /// Id of the key that made the MAC.
    pub fn key_id(&self) -> u32 {
        let b = self.bytes();
        let at = FIXED + 3 * self.a + 6;
        u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    /// Sender's timestamp, Unix milliseconds.
    pub fn timestamp_ms(&self) -> u64 {
        self.u64_at(FIXED + 3 * self.a + 10)
    }

    /// Replay nonce.
    pub fn nonce(&self) -> u64 {
        self.u64_at(FIXED + 3 * self.a + 18)
    }

    /// The bytes the MAC covers.
    pub fn signed_bytes(&self) -> &[u8] {
        &self.bytes()[..self.len() - MAC_LEN]
    }

    /// The MAC.
    pub fn mac(&self) -> &[u8; MAC_LEN] {
        let end = self.len();
        let s = &self.bytes()[end - MAC_LEN..end];
        // The slice has exactly MAC_LEN bytes by construction.
        <&[u8; MAC_LEN]>::try_from(s).unwrap_or(&[0; MAC_LEN])
    }

    /// Every field but the MAC.
    pub fn fields(&self) -> AdvertFields {
        AdvertFields {
            key: self.flow_key(),
            server: self.server(),
            key_id: self.key_id(),
            timestamp_ms: self.timestamp_ms(),
            nonce: self.nonce(),
        }
    }
}

fn put_addr(out: &mut [u8], at: usize, ip: IpAddr) -> usize {
    match ip {
        IpAddr::V4(v) => {
            out[at..at + 4].copy_from_slice(&v.octets());
            at + 4
        }
        IpAddr::V6(v) => {
            out[at..at + 16].copy_from_slice(&v.octets());
            at + 16
        }
    }
}

/// Write the advertisement for `fields` into `out`; `mac` computes the MAC over
/// the bytes it is given. Returns the length written.
pub fn emit_advert(
    fields: &AdvertFields,
    out: &mut [u8],
    mac: impl FnOnce(&[u8]) -> [u8; MAC_LEN],
) -> Result<usize, AdvertError> {
    let a = fields.addr_len()?;
    if !matches!(fields.key.proto, ip_proto::TCP | ip_proto::UDP) {
        return Err(AdvertError::Protocol(fields.key.proto));
    }
    let len = advert_len(a);
    if out.len() < len {
        return Err(AdvertError::BufferTooSmall {
            need: len,
            have: out.len(),
        });
    }
    out[..4].copy_from_slice(&TYPE_ID);
    out[4] = VERSION;
    out[5] = if a == 4 { 4 } else { 6 };
    out[6] = fields.key.proto;
    out[7] = 0;
    let mut at = put_addr(out, FIXED, fields.key.src);
    at = put_addr(out, at, fields.key.dst);
    out[at..at + 2].copy_from_slice(&fields.key.src_port.to_be_bytes());
    out[at + 2..at + 4].copy_from_slice(&fields.key.dst_port.to_be_bytes());
    at = put_addr(out, at + 4, fields.server.ip());
    out[at..at + 2].copy_from_slice(&fields.server.port().to_be_bytes());
    out[at + 2..at + 6].copy_from_slice(&fields.key_id.to_be_bytes());
    out[at + 6..at + 14].copy_from_slice(&fields.timestamp_ms.to_be_bytes());
    out[at + 14..at + 22].copy_from_slice(&fields.nonce.to_be_bytes());
    let signed_end = at + 22;
    debug_assert_eq!(signed_end + MAC_LEN, len);
    let m = mac(&out[..signed_end]);
    out[signed_end..len].copy_from_slice(&m);
    Ok(len)
}

/// Build a complete echo request carrying `fields`: source the VIP (`key.dst`),
/// destination the client (`key.src`), hop limit 64, checksums set. Returns its
/// length.
pub fn build_echo_request(
    buf: &mut [u8],
    fields: &AdvertFields,
    ident: u16,
    seq: u16,
    mac: impl FnOnce(&[u8]) -> [u8; MAC_LEN],
) -> Result<usize, AdvertError> {
    let adv_len = fields.encoded_len()?;
    let icmp_len = 8 + ECHO_PREFIX_LEN + adv_len;
    let ip_len = match fields.key.dst {
        IpAddr::V4(_) => Ipv4Repr::HEADER_LEN,
        IpAddr::V6(_) => Ipv6Repr::HEADER_LEN,
    };
    let total = ip_len + icmp_len;
    if buf.len() < total {
        return Err(AdvertError::BufferTooSmall {
            need: total,
            have: buf.len(),
        });
    }
    let (hdr, rest) = buf[..total].split_at_mut(ip_len);
    rest[8..8 + ECHO_PREFIX_LEN].fill(0);
    emit_advert(fields, &mut rest[8 + ECHO_PREFIX_LEN..], mac)?;
    match (fields.key.dst, fields.key.src) {
        (IpAddr::V4(vip), IpAddr::V4(client)) => {
            let mut icmp = Icmpv4Packet::new_unchecked(&mut *rest);
            icmp.set_msg_type(icmpv4_type::ECHO_REQUEST);
            icmp.set_msg_code(0);
            icmp.set_echo_ident(ident);
            icmp.set_echo_seq_no(seq);
            icmp.fill_checksum();
            Ipv4Repr {
                src: vip,
                dst: client,
                protocol: ip_proto::ICMP,
                payload_len: icmp_len,
                ttl: 64,
                dscp: 0,
                ecn: 0,
                dont_frag: false,
                ident: seq,
            }
            .emit(&mut Ipv4Packet::new_unchecked(hdr));
        }
        (IpAddr::V6(vip), IpAddr::V6(client)) => {
            let mut icmp = Icmpv6Packet::new_unchecked(&mut *rest);
            icmp.set_msg_type(icmpv6_type::ECHO_REQUEST);
            icmp.set_msg_code(0);
            icmp.set_echo_ident(ident);
            icmp.set_echo_seq_no(seq);
            icmp.fill_checksum(&vip, &client);
            Ipv6Repr {
                src: vip,
                dst: client,
                next_header: ip_proto::ICMPV6,
                payload_len: icmp_len,
                hop_limit: 64,
                traffic_class: 0,
                flow_label: 0,
            }
            .emit(&mut Ipv6Packet::new_unchecked(hdr));
        }
        _ => return Err(AdvertError::MixedFamilies),
    }
    Ok(total)
}

/// Look for an advertisement in an echo reply (IP header first).
///
/// `None`: not an unfragmented ICMP/ICMPv6 echo reply whose payload carries the
/// type id at offset [`ECHO_PREFIX_LEN`] (an ordinary ping). `Some(Err)`: it claims
/// to be an advertisement but is malformed, or the reply's addresses are not the
/// advertised client and VIP.
pub fn find_in_echo_reply(packet: &[u8]) -> Option<Result<FlowAdvert<&[u8]>, AdvertError>> {
    let (src, dst, data) = echo_reply_data(packet)?;
    let body = data.get(ECHO_PREFIX_LEN..)?;
    if body.get(..4)? != TYPE_ID {
        return None;
    }
    Some(FlowAdvert::new_checked(body).and_then(|adv| {
        let k = adv.flow_key();
        if k.src == src && k.dst == dst {
            Ok(adv)
        } else {
            Err(AdvertError::AddressMismatch)
        }
    }))
}

/// Source, destination and echo data of an unfragmented echo reply.
fn echo_reply_data(packet: &[u8]) -> Option<(IpAddr, IpAddr, &[u8])> {
    match super::ip_version(packet).ok()? {
        4 => {
            let ip = Ipv4Packet::new_checked(packet).ok()?;
            if ip.protocol() != ip_proto::ICMP || ip.more_frags() || ip.frag_offset() != 0 {
                return None;
            }
            let l4 = packet.get(ip.header_len()..usize::from(ip.total_len()))?;
            let icmp = Icmpv4Packet::new_checked(l4).ok()?;
            if icmp.msg_type() != icmpv4_type::ECHO_REPLY {
                return None;
            }
            let data = l4.get(8..)?;
            Some((ip.src_addr().into(), ip.dst_addr().into(), data))
        }
        6 => {
            let ip = Ipv6Packet::new_checked(packet).ok()?;
            let payload = packet
                .get(Ipv6Repr::HEADER_LEN..Ipv6Repr::HEADER_LEN + usize::from(ip.payload_len()))?;
            let upper = walk_extensions(ip.next_header(), payload).ok()?;
            if upper.protocol != ip_proto::ICMPV6 || upper.fragment.is_some() {
                return None;
            }
            let l4 = payload.get(upper.offset..)?;
            let icmp = Icmpv6Packet::new_checked(l4).ok()?;
            if icmp.msg_type() != icmpv6_type::ECHO_REPLY {
                return None;
            }
            let data = l4.get(8..)?;
            Some((ip.src_addr().into(), ip.dst_addr().into(), data))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fields_v4() -> AdvertFields {
        AdvertFields {
            key: FlowKey {
                proto: ip_proto::TCP,
                src: "198.51.100.7".parse().unwrap(),
                src_port: 40_001,
                dst: "10.1.0.5".parse().unwrap(),
                dst_port: 80,
            },
            server: "192.0.2.21:8080".parse().unwrap(),
            key_id: 7,
            timestamp_ms: 1_790_000_000_123,
            nonce: 0xdead_beef_0102_0304,
        }
    }

    fn fields_v6() -> AdvertFields {
        AdvertFields {
            key: FlowKey {
                proto: ip_proto::UDP,
                src: "2001:db8::7".parse().unwrap(),
                src_port: 5353,
                dst: "2001:db8:1::5".parse().unwrap(),
                dst_port: 443,
            },
            server: "[2001:db8:2::21]:443".parse().unwrap(),
            key_id: u32::MAX,
            timestamp_ms: 1,
            nonce: 9,
        }
    }

    fn fake_mac(b: &[u8]) -> [u8; MAC_LEN] {
        let mut m = [0u8; MAC_LEN];
        for (i, x) in b.iter().enumerate() {
            m[i % MAC_LEN] ^= x.rotate_left((i % 7) as u32);
        }
        m
    }

    /// The echo reply a client sends back: swap addresses, type request -> reply.
    fn reply_of(req: &[u8]) -> Vec<u8> {
        let mut r = req.to_vec();
        match r[0] >> 4 {
            4 => {
                let (s, d) = (r[12..16].to_vec(), r[16..20].to_vec());
                r[12..16].copy_from_slice(&d);
                r[16..20].copy_from_slice(&s);
                r[20] = icmpv4_type::ECHO_REPLY;
                Ipv4Packet::new_unchecked(&mut r[..]).fill_checksum();
            }
            _ => {
                let (s, d) = (r[8..24].to_vec(), r[24..40].to_vec());
                r[8..24].copy_from_slice(&d);
                r[24..40].copy_from_slice(&s);
                r[40] = icmpv6_type::ECHO_REPLY;
            }
        }
        r
    }

    #[test]
    fn round_trip_through_an_echo_reply() {
        for f in [fields_v4(), fields_v6()] {
            let mut buf = [0u8; 256];
            let n = build_echo_request(&mut buf, &f, 0x1234, 3, fake_mac).unwrap();
            let req = &buf[..n];
            assert!(
                find_in_echo_reply(req).is_none(),
                "a request is not a reply"
            );
            let reply = reply_of(req);
            let adv = find_in_echo_reply(&reply).unwrap().unwrap();
            assert_eq!(adv.fields(), f);
            assert_eq!(adv.mac(), &fake_mac(adv.signed_bytes()));
            assert_eq!(adv.len(), f.encoded_len().unwrap());
        }
    }

    #[test]
    fn request_is_a_valid_ipv4_echo_from_the_vip() {
        let f = fields_v4();
        let mut buf = [0u8; 256];
        let n = build_echo_request(&mut buf, &f, 9, 1, fake_mac).unwrap();
        let ip = Ipv4Packet::new_checked(&buf[..n]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(IpAddr::V4(ip.src_addr()), f.key.dst);
        assert_eq!(IpAddr::V4(ip.dst_addr()), f.key.src);
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum());
        assert_eq!(icmp.msg_type(), icmpv4_type::ECHO_REQUEST);
        assert_eq!(n, 20 + 8 + ECHO_PREFIX_LEN + V4_LEN);
    }

    #[test]
    fn ordinary_pings_are_not_adverts() {
        let mut buf = [0u8; 256];
        let n = build_echo_request(&mut buf, &fields_v4(), 1, 1, fake_mac).unwrap();
        let mut reply = reply_of(&buf[..n]);
        reply[20 + 8 + ECHO_PREFIX_LEN] = b'X';
        assert!(find_in_echo_reply(&reply).is_none());
        // Too short a payload.
        assert!(find_in_echo_reply(&reply[..20 + 8 + 10]).is_none());
    }

    #[test]
    fn mismatched_reply_addresses_are_refused() {
        let mut buf = [0u8; 256];
        let n = build_echo_request(&mut buf, &fields_v4(), 1, 1, fake_mac).unwrap();
        let mut reply = reply_of(&buf[..n]);
        reply[15] ^= 1; // a different client sends it
        Ipv4Packet::new_unchecked(&mut reply[..]).fill_checksum();
        assert_eq!(
            find_in_echo_reply(&reply).unwrap().unwrap_err(),
            AdvertError::AddressMismatch
        );
    }

    #[test]
    fn structural_errors_are_typed() {
        let mut out = [0u8; 128];
        let n = emit_advert(&fields_v4(), &mut out, fake_mac).unwrap();
        let good = out[..n].to_vec();
        let with = |i: usize, v: u8| {
            let mut b = good.clone();
            b[i] = v;
            FlowAdvert::new_checked(b).unwrap_err()
        };
        assert_eq!(with(4, 2), AdvertError::Version(2));
        assert_eq!(with(5, 5), AdvertError::Family(5));
        assert_eq!(with(6, 1), AdvertError::Protocol(1));
        assert_eq!(with(7, 1), AdvertError::Reserved);
        assert_eq!(with(0, b'X'), AdvertError::NotAdvert);
        assert!(matches!(
            FlowAdvert::new_checked(&good[..n - 1]).unwrap_err(),
            AdvertError::Truncated { .. }
        ));
        let mut mixed = fields_v4();
        mixed.server = "[2001:db8::1]:80".parse().unwrap();
        assert_eq!(
            emit_advert(&mixed, &mut out, fake_mac).unwrap_err(),
            AdvertError::MixedFamilies
        );
        assert!(matches!(
            emit_advert(&fields_v4(), &mut out[..10], fake_mac).unwrap_err(),
            AdvertError::BufferTooSmall { .. }
        ));
    }

    proptest! {
        #[test]
        fn any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(a) = FlowAdvert::new_checked(&bytes[..]) {
                let _ = (a.fields(), a.mac(), a.signed_bytes());
            }
            let _ = find_in_echo_reply(&bytes);
        }

        #[test]
        fn emit_then_parse_is_identity(
            src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(), srv in any::<[u8; 4]>(),
            sp in any::<u16>(), dp in any::<u16>(), svp in any::<u16>(),
            key_id in any::<u32>(), ts in any::<u64>(), nonce in any::<u64>(), tcp in any::<bool>(),
        ) {
            let f = AdvertFields {
                key: FlowKey {
                    proto: if tcp { ip_proto::TCP } else { ip_proto::UDP },
                    src: IpAddr::from(src), src_port: sp,
                    dst: IpAddr::from(dst), dst_port: dp,
                },
                server: SocketAddr::new(IpAddr::from(srv), svp),
                key_id, timestamp_ms: ts, nonce,
            };
            let mut out = [0u8; V4_LEN];
            let n = emit_advert(&f, &mut out, fake_mac).unwrap();
            let a = FlowAdvert::new_checked(&out[..n]).unwrap();
            prop_assert_eq!(a.fields(), f);
        }
    }
}
