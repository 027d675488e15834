//! Classifier: flow keys from packets, and the virtual-subnet table.
//!
//! [`classify`] reads a packet's five-tuple (ICMP echo: the identifier in both port
//! fields) without copying. [`PrefixTable`] maps a destination to the longest
//! served virtual subnet: one hash map per prefix length and a bitmap of the
//! lengths in use, so a lookup probes only lengths that exist (usually a handful)
//! from the longest down, like the per-length tables of DIR-style LPM designs but
//! with memory proportional to the prefixes stored.

use crate::wire::{
    self, Icmpv4Packet, Icmpv6Packet, Ipv4Packet, Ipv6Packet, TcpFlags, TcpPacket, UdpPacket,
    icmpv4_type, icmpv6_type, ip_proto,
};
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// A flow's identity: (proto, src addr, src port, dst addr, dst port). For ICMP echo
/// the ports carry the echo identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6).
    pub proto: u8,
    /// Source address.
    pub src: IpAddr,
    /// Source port (or ICMP echo identifier).
    pub src_port: u16,
    /// Destination address.
    pub dst: IpAddr,
    /// Destination port (or ICMP echo identifier).
    pub dst_port: u16,
}

impl fmt::Display for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.proto {
            ip_proto::TCP => "tcp",
            ip_proto::UDP => "udp",
            ip_proto::ICMP => "icmp",
            ip_proto::ICMPV6 => "icmpv6",
            _ => "ip",
        };
        let sock = |a: IpAddr, p: u16| match a {
            IpAddr::V4(a) => format!("{a}:{p}"),
            IpAddr::V6(a) => format!("[{a}]:{p}"),
        };
        write!(
            f,
            "{proto}/{} {} -> {}",
            self.proto,
            sock(self.src, self.src_port),
            sock(self.dst, self.dst_port)
        )
    }
}

/// The result of classifying one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classified {
    /// The flow key.
    pub key: FlowKey,
    /// TCP flags, for TCP segments whose header is present.
    pub tcp_flags: Option<TcpFlags>,
    /// The packet is an IP fragment: ports are unknown, so the key carries zero
    /// ports and every fragment of a datagram (first included) maps to the same
    /// three-tuple flow.
    pub fragment: bool,
}

/// Why a packet could not be classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClassifyError {
    /// The IP or transport header is malformed or truncated.
    #[error("malformed packet: {0}")]
    Wire(#[from] wire::WireError),
}

/// Classify the IP packet at the start of `data`.
pub fn classify(data: &[u8]) -> Result<Classified, ClassifyError> {
    match wire::ip_version(data)? {
        4 => {
            let ip = Ipv4Packet::new_checked(data)?;
            let (src, dst) = (IpAddr::V4(ip.src_addr()), IpAddr::V4(ip.dst_addr()));
            let fragment = ip.more_frags() || ip.frag_offset() != 0;
            let payload = data.get(ip.header_len()..usize::from(ip.total_len()));
            let payload = payload.ok_or(wire::WireError::Truncated {
                what: "ipv4 payload",
                need: usize::from(ip.total_len()),
                have: data.len(),
            })?;
            transport(ip.protocol(), src, dst, payload, fragment)
        }
        _ => {
            let ip = Ipv6Packet::new_checked(data)?;
            let (src, dst) = (IpAddr::V6(ip.src_addr()), IpAddr::V6(ip.dst_addr()));
            let payload = ip.payload();
            let upper = wire::walk_extensions(ip.next_header(), payload)?;
            let fragment = upper.fragment.is_some();
            let rest = payload.get(upper.offset..).unwrap_or_default();
            transport(upper.protocol, src, dst, rest, fragment)
        }
    }
}

fn transport(
    proto: u8,
    src: IpAddr,
    dst: IpAddr,
    l4: &[u8],
    fragment: bool,
) -> Result<Classified, ClassifyError> {
    let mut key = FlowKey {
        proto,
        src,
        src_port: 0,
        dst,
        dst_port: 0,
    };
    if fragment {
        return Ok(Classified {
            key,
            tcp_flags: None,
            fragment,
        });
    }
    let mut tcp_flags = None;
    match proto {
        ip_proto::TCP => {
            let t = TcpPacket::new_checked(l4)?;
            key.src_port = t.src_port();
            key.dst_port = t.dst_port();
            tcp_flags = Some(t.flags());
        }
        ip_proto::UDP => {
            let u = UdpPacket::new_checked(l4)?;
            key.src_port = u.src_port();
            key.dst_port = u.dst_port();
        }
        ip_proto::ICMP => {
            let i = Icmpv4Packet::new_checked(l4)?;
            if matches!(
                i.msg_type(),
                icmpv4_type::ECHO_REQUEST | icmpv4_type::ECHO_REPLY
            ) {
                key.src_port = i.echo_ident();
                key.dst_port = i.echo_ident();
            }
        }
        ip_proto::ICMPV6 => {
            let i = Icmpv6Packet::new_checked(l4)?;
            if matches!(
                i.msg_type(),
                icmpv6_type::ECHO_REQUEST | icmpv6_type::ECHO_REPLY
            ) {
                key.src_port = i.echo_ident();
                key.dst_port = i.echo_ident();
            }
        }
        _ => {}
    }
    Ok(Classified {
        key,
        tcp_flags,
        fragment,
    })
}

/// A virtual subnet: a prefix of VIPs served as one unit (e.g. `10.1.0.0/16`).
/// Always canonical: the host bits of `addr` are zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VirtualSubnet {
    addr: IpAddr,
    len: u8,
}

/// Errors about virtual subnets and the subnet table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubnetError {
    /// Prefix length beyond the address width.
    #[error("prefix length {len} exceeds {max}")]
    PrefixTooLong {
        /// Length given.
        len: u8,
        /// Width of the address family.
        max: u8,
    },
    /// Host bits set below the prefix length (`10.1.2.3/16`).
    #[error("{text} has host bits set; did you mean {canonical}?")]
    HostBits {
        /// The text given.
        text: String,
        /// The canonical subnet.
        canonical: String,
    },
    /// Not `addr/len`.
    #[error("invalid subnet {text:?}: expected ADDRESS/LENGTH, e.g. 10.1.0.0/16")]
    Syntax {
        /// The text given.
        text: String,
    },
    /// The table holds its maximum number of subnets.
    #[error("subnet table is full ({limit} subnets)")]
    Full {
        /// The bound.
        limit: usize,
    },
}

impl VirtualSubnet {
    /// Every IPv4 address, `0.0.0.0/0`.
    pub const ANY_V4: Self = Self {
        addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        len: 0,
    };

    /// The subnet of `addr` with `len` prefix bits (host bits are cleared).
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, SubnetError> {
        let max = width(addr);
        if len > max {
            return Err(SubnetError::PrefixTooLong { len, max });
        }
        Ok(Self {
            addr: mask(addr, len),
            len,
        })
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Whether `ip` falls in this subnet.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.len) == self.addr
    }

    /// Whether `other` lies entirely within this subnet.
    pub fn covers(&self, other: &Self) -> bool {
        other.len >= self.len && self.contains(other.addr)
    }
}

impl fmt::Display for VirtualSubnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for VirtualSubnet {
    type Err = SubnetError;

    /// Parse `addr/len`; host bits must be zero so typos are caught, not masked.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || SubnetError::Syntax { text: s.to_owned() };
        let (a, l) = s.trim().split_once('/').ok_or_else(syntax)?;
        let addr: IpAddr = a.parse().map_err(|_| syntax())?;
        let len: u8 = l.parse().map_err(|_| syntax())?;
        let subnet = Self::new(addr, len)?;
        if subnet.addr != addr {
            return Err(SubnetError::HostBits {
                text: s.to_owned(),
                canonical: subnet.to_string(),
            });
        }
        Ok(subnet)
    }
}

fn width(a: IpAddr) -> u8 {
    if a.is_ipv4() { 32 } else { 128 }
}

fn mask(a: IpAddr, len: u8) -> IpAddr {
    match a {
        IpAddr::V4(v) => {
            let m = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v) & m))
        }
        IpAddr::V6(v) => {
            let m = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v) & m))
        }
    }
}

/// Masked address bits as one integer (IPv4 in the low 32 bits).
fn bits(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v) => u128::from(u32::from(v)),
        IpAddr::V6(v) => u128::from(v),
    }
}

/// Prefixes of one address family: a map per length plus the set of lengths used.
#[derive(Debug)]
struct FamilyTable<V> {
    /// `maps[len]`: masked network bits -> (subnet, value).
    maps: Vec<HashMap<u128, (VirtualSubnet, V), ahash::RandomState>>,
    /// Bit `len` set when `maps[len]` is non-empty (129 lengths fit in 3 words).
    used: [u64; 3],
    width: u8,
}

impl<V> FamilyTable<V> {
    fn new(width: u8) -> Self {
        Self {
            maps: (0..=width)
                .map(|_| HashMap::with_hasher(ahash::RandomState::new()))
                .collect(),
            used: [0; 3],
            width,
        }
    }

    fn mark(&mut self, len: u8) {
        let l = usize::from(len);
        if self.maps[l].is_empty() {
            self.used[l / 64] &= !(1u64 << (l % 64));
        } else {
            self.used[l / 64] |= 1u64 << (l % 64);
        }
    }

    fn lookup(&self, ip: IpAddr) -> Option<&(VirtualSubnet, V)> {
        let addr = bits(ip);
        // Longest first: walk the used-length bitmap from the top word down.
        for w in (0..3).rev() {
            let mut word = self.used[w];
            while word != 0 {
                let top = 63 - word.leading_zeros();
                word &= !(1u64 << top);
                let len = w * 64 + top as usize;
                let shift = u32::from(self.width) - len as u32;
                let key = addr
                    .checked_shr(shift)
                    .unwrap_or(0)
                    .checked_shl(shift)
                    .unwrap_or(0);
                if let Some(hit) = self.maps[len].get(&key) {
                    return Some(hit);
                }
            }
        }
        None
    }
}

/// Longest-prefix-match table from virtual subnets to values, bounded in size.
#[derive(Debug)]
pub struct PrefixTable<V> {
    v4: FamilyTable<V>,
    v6: FamilyTable<V>,
    len: usize,
    limit: usize,
}

impl<V> PrefixTable<V> {
    /// An empty table that refuses more than `limit` subnets.
    pub fn with_capacity(limit: usize) -> Self {
        Self {
            v4: FamilyTable::new(32),
            v6: FamilyTable::new(128),
            len: 0,
            limit,
        }
    }

    fn family(&self, a: IpAddr) -> &FamilyTable<V> {
        if a.is_ipv4() { &self.v4 } else { &self.v6 }
    }

    fn family_mut(&mut self, a: IpAddr) -> &mut FamilyTable<V> {
        if a.is_ipv4() {
            &mut self.v4
        } else {
            &mut self.v6
        }
    }

    /// Insert or replace; returns the previous value of that exact subnet.
    pub fn insert(&mut self, subnet: VirtualSubnet, value: V) -> Result<Option<V>, SubnetError> {
        let key = bits(subnet.addr);
        let len = subnet.len;
        let fam = self.family_mut(subnet.addr);
        let exists = fam.maps[usize::from(len)].contains_key(&key);
        if !exists && self.len >= self.limit {
            return Err(SubnetError::Full { limit: self.limit });
        }
        let fam = self.family_mut(subnet.addr);
        let old = fam.maps[usize::from(len)].insert(key, (subnet, value));
        fam.mark(len);
        if old.is_none() {
            self.len += 1;
        }
        Ok(old.map(|(_, v)| v))
    }

    /// Remove an exact subnet.
    pub fn remove(&mut self, subnet: &VirtualSubnet) -> Option<V> {
        let fam = self.family_mut(subnet.addr);
        let old = fam.maps[usize::from(subnet.len)].remove(&bits(subnet.addr));
        fam.mark(subnet.len);
        if old.is_some() {
            self.len -= 1;
        }
        old.map(|(_, v)| v)
    }

    /// The value of an exact subnet.
    pub fn get(&self, subnet: &VirtualSubnet) -> Option<&V> {
        self.family(subnet.addr).maps[usize::from(subnet.len)]
            .get(&bits(subnet.addr))
            .map(|(_, v)| v)
    }

    /// The longest subnet containing `ip`, and its value.
    #[inline]
    pub fn lookup(&self, ip: IpAddr) -> Option<(&VirtualSubnet, &V)> {
        self.family(ip).lookup(ip).map(|(s, v)| (s, v))
    }

    /// Number of subnets stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every subnet and value, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&VirtualSubnet, &V)> {
        self.v4
            .maps
            .iter()
            .chain(self.v6.maps.iter())
            .flat_map(|m| m.values().map(|(s, v)| (s, v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{PacketSpec, Transport};
    use proptest::prelude::*;

    fn sn(s: &str) -> VirtualSubnet {
        s.parse().unwrap()
    }

    #[test]
    fn subnet_parse_and_display() {
        assert_eq!(sn("10.1.0.0/16").to_string(), "10.1.0.0/16");
        assert_eq!(sn("2001:db8::/32").to_string(), "2001:db8::/32");
        assert!(matches!(
            "10.1.2.3/16".parse::<VirtualSubnet>(),
            Err(SubnetError::HostBits { canonical, .. }) if canonical == "10.1.0.0/16"
        ));
        assert!(matches!(
            "10.0.0.0/33".parse::<VirtualSubnet>(),
            Err(SubnetError::PrefixTooLong { len: 33, max: 32 })
        ));
        for bad in ["10.0.0.0", "x/8", "10.0.0.0/x", "", "/"] {
            assert!(matches!(
                bad.parse::<VirtualSubnet>(),
                Err(SubnetError::Syntax { .. })
            ));
        }
        assert_eq!(sn("0.0.0.0/0").prefix_len(), 0);
        assert!(sn("0.0.0.0/0").contains("1.2.3.4".parse().unwrap()));
        assert!(!sn("0.0.0.0/0").contains("::1".parse().unwrap()));
        assert!(sn("10.0.0.0/8").covers(&sn("10.1.0.0/16")));
        assert!(!sn("10.1.0.0/16").covers(&sn("10.0.0.0/8")));
    }

    #[test]
    fn longest_match_wins_and_remove_restores_shorter() {
        let mut t = PrefixTable::with_capacity(16);
        t.insert(sn("10.0.0.0/8"), 1).unwrap();
        t.insert(sn("10.1.0.0/16"), 2).unwrap();
        t.insert(sn("10.1.2.0/24"), 3).unwrap();
        t.insert(sn("2001:db8::/32"), 6).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(t.lookup(ip("10.1.2.9")).map(|x| *x.1), Some(3));
        assert_eq!(t.lookup(ip("10.1.3.9")).map(|x| *x.1), Some(2));
        assert_eq!(t.lookup(ip("10.2.3.9")).map(|x| *x.1), Some(1));
        assert_eq!(t.lookup(ip("11.0.0.1")), None);
        assert_eq!(t.lookup(ip("2001:db8::5")).map(|x| *x.1), Some(6));
        assert_eq!(t.lookup(ip("::ffff:10.1.2.9")), None);
        assert_eq!(t.remove(&sn("10.1.2.0/24")), Some(3));
        assert_eq!(t.lookup(ip("10.1.2.9")).map(|x| *x.1), Some(2));
        assert_eq!(t.len(), 3);
        assert_eq!(t.insert(sn("10.0.0.0/8"), 9).unwrap(), Some(1));
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn table_is_bounded() {
        let mut t = PrefixTable::with_capacity(2);
        t.insert(sn("10.0.0.0/8"), ()).unwrap();
        t.insert(sn("11.0.0.0/8"), ()).unwrap();
        assert_eq!(
            t.insert(sn("12.0.0.0/8"), ()),
            Err(SubnetError::Full { limit: 2 })
        );
        // Replacing an existing entry is not growth.
        assert!(t.insert(sn("11.0.0.0/8"), ()).is_ok());
    }

    fn build(spec: &PacketSpec) -> Vec<u8> {
        let mut buf = vec![0u8; 2048];
        let n = spec.write(&mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn classifies_tcp_udp_and_echo_in_both_families() {
        for (src, dst) in [
            ("192.0.2.1:4000", "10.1.0.7:80"),
            ("[2001:db8::1]:4000", "[2001:db8:1::7]:80"),
        ] {
            let (src, dst) = (src.parse().unwrap(), dst.parse().unwrap());
            let tcp = PacketSpec::tcp(src, dst, TcpFlags::SYN);
            let c = classify(&build(&tcp)).unwrap();
            assert_eq!(
                (c.key.proto, c.key.src_port, c.key.dst_port),
                (ip_proto::TCP, 4000, 80)
            );
            assert_eq!(c.tcp_flags, Some(TcpFlags::SYN));
            assert_eq!((c.key.src, c.key.dst), (src.ip(), dst.ip()));
            let mut udp = tcp;
            udp.transport = Transport::Udp;
            let c = classify(&build(&udp)).unwrap();
            assert_eq!(c.tcp_flags, None);
            assert_eq!((c.key.src_port, c.key.dst_port), (4000, 80));
            let mut echo = tcp;
            echo.transport = Transport::EchoRequest { ident: 77 };
            let c = classify(&build(&echo)).unwrap();
            assert_eq!((c.key.src_port, c.key.dst_port), (77, 77));
        }
    }

    #[test]
    fn truncated_transport_is_an_error() {
        let spec = PacketSpec::tcp(
            "192.0.2.1:1".parse().unwrap(),
            "10.0.0.1:2".parse().unwrap(),
            TcpFlags::SYN,
        );
        let pkt = build(&spec);
        for n in 0..40 {
            assert!(classify(&pkt[..n]).is_err(), "prefix of {n} bytes");
        }
    }

    proptest! {
        #[test]
        fn classify_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = classify(&bytes);
        }

        #[test]
        fn lookup_agrees_with_linear_scan(
            prefixes in proptest::collection::vec((any::<u32>(), 0u8..=32), 1..40),
            probes in proptest::collection::vec(any::<u32>(), 1..60),
        ) {
            let mut t = PrefixTable::with_capacity(1000);
            let mut all = Vec::new();
            for (a, l) in prefixes {
                let s = VirtualSubnet::new(IpAddr::V4(Ipv4Addr::from(a)), l).unwrap();
                t.insert(s, s).unwrap();
                all.push(s);
            }
            for p in probes {
                let ip = IpAddr::V4(Ipv4Addr::from(p));
                let want = all.iter().filter(|s| s.contains(ip)).max_by_key(|s| s.prefix_len());
                prop_assert_eq!(t.lookup(ip).map(|x| *x.1), want.copied());
            }
        }
    }
}
