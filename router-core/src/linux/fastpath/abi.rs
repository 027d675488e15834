//! The fast path's ABI, mirrored from `router-core/bpf/fastpath.h` (the one
//! definition the programs compile against): map keys and values, the
//! configuration entry and the counter list. A test reads the header and fails
//! when the two disagree; aya checks the sizes against the loaded maps.

use crate::classify::FlowKey;
use std::net::IpAddr;

/// `FP_ABI_VERSION` of the header these structs mirror.
#[cfg(test)]
pub(crate) const ABI_VERSION: u32 = 3;

/// `struct fp_key_v4`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct KeyV4 {
    pub(crate) src: [u8; 4],
    pub(crate) dst: [u8; 4],
    pub(crate) sport: [u8; 2],
    pub(crate) dport: [u8; 2],
    pub(crate) proto: u8,
    pub(crate) pad: [u8; 3],
}

/// `struct fp_key_v6`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct KeyV6 {
    pub(crate) src: [u8; 16],
    pub(crate) dst: [u8; 16],
    pub(crate) sport: [u8; 2],
    pub(crate) dport: [u8; 2],
    pub(crate) proto: u8,
    pub(crate) pad: [u8; 3],
}

/// `FP_SEEN_ESTABLISHED`.
pub(crate) const SEEN_ESTABLISHED: u8 = 0x01;
/// `FP_SEEN_CLOSING`.
pub(crate) const SEEN_CLOSING: u8 = 0x02;

/// `struct fp_flow`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Flow {
    pub(crate) next_hop: [u8; 16],
    pub(crate) local: [u8; 16],
    pub(crate) family: u8,
    pub(crate) seen: u8,
    pub(crate) pad: [u8; 6],
    pub(crate) last_seen_ns: u64,
    pub(crate) packets: u64,
    pub(crate) bytes: u64,
}

/// `struct fp_config`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Config {
    pub(crate) local_v4: [u8; 4],
    pub(crate) local_v6: [u8; 16],
    pub(crate) has_v4: u8,
    pub(crate) has_v6: u8,
    pub(crate) tunnel_ttl: u8,
    pub(crate) admit_any: u8,
    pub(crate) tunnel_mtu: u16,
    pub(crate) pad: u16,
}

// SAFETY (all four): `#[repr(C)]` structs of integers and byte arrays whose
// layout matches the C structs of fastpath.h field for field, with the padding
// the C compiler would insert spelled out as `pad` fields (so no byte is
// uninitialised), `Copy` and `'static`: what aya's `Pod` asks for.
#[expect(unsafe_code, reason = "aya's Pod marker for map keys and values")]
unsafe impl aya::Pod for KeyV4 {}
#[expect(unsafe_code, reason = "aya's Pod marker for map keys and values")]
unsafe impl aya::Pod for KeyV6 {}
#[expect(unsafe_code, reason = "aya's Pod marker for map keys and values")]
unsafe impl aya::Pod for Flow {}
#[expect(unsafe_code, reason = "aya's Pod marker for map keys and values")]
unsafe impl aya::Pod for Config {}

/// `struct fp_event`, decoded: a TCP flow's state as the program now sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Event {
    pub(crate) key: FlowKey,
    pub(crate) seen: u8,
    pub(crate) at_ns: u64,
}

/// Size of `struct fp_event`.
pub(crate) const EVENT_LEN: usize = 56;

impl Event {
    /// Decode a ring buffer record (`None` if it is not one).
    pub(crate) fn parse(b: &[u8]) -> Option<Self> {
        let b = b.get(..EVENT_LEN)?;
        let at_ns = u64::from_ne_bytes(b.get(8..16)?.try_into().ok()?);
        let key = b.get(16..56)?;
        let port = |i: usize| u16::from_be_bytes([key[i], key[i + 1]]);
        let key = match b[0] {
            4 => FlowKey {
                src: IpAddr::from(<[u8; 4]>::try_from(&key[0..4]).ok()?),
                dst: IpAddr::from(<[u8; 4]>::try_from(&key[4..8]).ok()?),
                src_port: port(8),
                dst_port: port(10),
                proto: key[12],
            },
            6 => FlowKey {
                src: IpAddr::from(<[u8; 16]>::try_from(&key[0..16]).ok()?),
                dst: IpAddr::from(<[u8; 16]>::try_from(&key[16..32]).ok()?),
                src_port: port(32),
                dst_port: port(34),
                proto: key[36],
            },
            _ => return None,
        };
        Some(Self {
            key,
            seen: b[1],
            at_ns,
        })
    }
}

/// A flow key in the map's layout, by family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MapKey {
    V4(KeyV4),
    V6(KeyV6),
}

impl MapKey {
    /// The map key of `key` (`None` for mixed families, which the engine never pins).
    pub(crate) fn of(key: &FlowKey) -> Option<Self> {
        match (key.src, key.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => Some(Self::V4(KeyV4 {
                src: s.octets(),
                dst: d.octets(),
                sport: key.src_port.to_be_bytes(),
                dport: key.dst_port.to_be_bytes(),
                proto: key.proto,
                pad: [0; 3],
            })),
            (IpAddr::V6(s), IpAddr::V6(d)) => Some(Self::V6(KeyV6 {
                src: s.octets(),
                dst: d.octets(),
                sport: key.src_port.to_be_bytes(),
                dport: key.dst_port.to_be_bytes(),
                proto: key.proto,
                pad: [0; 3],
            })),
            _ => None,
        }
    }
}

impl KeyV4 {
    pub(crate) fn flow_key(&self) -> FlowKey {
        FlowKey {
            proto: self.proto,
            src: IpAddr::from(self.src),
            src_port: u16::from_be_bytes(self.sport),
            dst: IpAddr::from(self.dst),
            dst_port: u16::from_be_bytes(self.dport),
        }
    }
}

impl KeyV6 {
    pub(crate) fn flow_key(&self) -> FlowKey {
        FlowKey {
            proto: self.proto,
            src: IpAddr::from(self.src),
            src_port: u16::from_be_bytes(self.sport),
            dst: IpAddr::from(self.dst),
            dst_port: u16::from_be_bytes(self.dport),
        }
    }
}

/// 16 bytes holding `a` as the C side reads it (IPv4: the first four), and its family.
pub(crate) fn addr16(a: IpAddr) -> ([u8; 16], u8) {
    let mut out = [0u8; 16];
    match a {
        IpAddr::V4(v4) => {
            out[..4].copy_from_slice(&v4.octets());
            (out, 4)
        }
        IpAddr::V6(v6) => (v6.octets(), 6),
    }
}

/// Every counter of `enum fp_counter`, in its order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FastPathCounter {
    /// A plain packet encapsulated and redirected.
    FwdEncap,
    /// A tunnel to us re-addressed to the next hop.
    FwdRetunnel,
    /// Bytes of the packets forwarded (inner).
    FwdBytes,
    /// Not IPv4/IPv6 over Ethernet.
    PassNotIp,
    /// Truncated, inconsistent lengths.
    PassMalformed,
    /// A fragment.
    PassFragment,
    /// IPv4 options or IPv6 extension headers.
    PassOptions,
    /// Neither TCP nor UDP (ICMP, ...).
    PassProto,
    /// Addressed to this router, not a tunnel.
    PassLocal,
    /// A tunnel not addressed to this router.
    PassTunnelOther,
    /// A tunnel to this router from a source not admitted.
    PassTunnelSource,
    /// No pinned flow.
    PassMiss,
    /// The TTL would expire (the engine answers).
    PassTtl,
    /// Over the tunnel MTU (the engine fragments or answers).
    PassTooBig,
    /// No usable route or neighbour toward the next hop.
    PassNoRoute,
    /// An ECN combination the engine must settle (RFC 6040).
    PassEcn,
    /// The next hop's family differs from the outer header's.
    PassFamily,
    /// A SYN on a closed flow's ports: the engine places it anew.
    PassReuse,
    /// A helper refused before the packet was changed.
    PassHelper,
    /// A helper failed after the packet was changed (dropped).
    DropError,
    /// Host: decapsulated and handed to the local stack.
    HostDecap,
    /// Host: the inner destination is not a served subnet.
    HostNotServed,
    /// Host: the inner packet is a tunnel again.
    HostNested,
    /// TCP state changes not sent to the engine (its ring buffer was full).
    EventsLost,
}

impl FastPathCounter {
    /// Number of counters (`FP_COUNTERS`).
    pub const COUNT: usize = 24;

    /// Every counter, in map order.
    pub const ALL: [Self; Self::COUNT] = [
        Self::FwdEncap,
        Self::FwdRetunnel,
        Self::FwdBytes,
        Self::PassNotIp,
        Self::PassMalformed,
        Self::PassFragment,
        Self::PassOptions,
        Self::PassProto,
        Self::PassLocal,
        Self::PassTunnelOther,
        Self::PassTunnelSource,
        Self::PassMiss,
        Self::PassTtl,
        Self::PassTooBig,
        Self::PassNoRoute,
        Self::PassEcn,
        Self::PassFamily,
        Self::PassReuse,
        Self::PassHelper,
        Self::DropError,
        Self::HostDecap,
        Self::HostNotServed,
        Self::HostNested,
        Self::EventsLost,
    ];

    /// Stable snake_case name (metrics, stats file): the C name without `FP_`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FwdEncap => "fwd_encap",
            Self::FwdRetunnel => "fwd_retunnel",
            Self::FwdBytes => "fwd_bytes",
            Self::PassNotIp => "pass_not_ip",
            Self::PassMalformed => "pass_malformed",
            Self::PassFragment => "pass_fragment",
            Self::PassOptions => "pass_options",
            Self::PassProto => "pass_proto",
            Self::PassLocal => "pass_local",
            Self::PassTunnelOther => "pass_tunnel_other",
            Self::PassTunnelSource => "pass_tunnel_source",
            Self::PassMiss => "pass_miss",
            Self::PassTtl => "pass_ttl",
            Self::PassTooBig => "pass_too_big",
            Self::PassNoRoute => "pass_no_route",
            Self::PassEcn => "pass_ecn",
            Self::PassFamily => "pass_family",
            Self::PassReuse => "pass_reuse",
            Self::PassHelper => "pass_helper",
            Self::DropError => "drop_error",
            Self::HostDecap => "host_decap",
            Self::HostNotServed => "host_not_served",
            Self::HostNested => "host_nested",
            Self::EventsLost => "events_lost",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = include_str!("../../../bpf/fastpath.h");

    #[test]
    fn counters_match_the_header() {
        let start = HEADER.find("enum fp_counter {").unwrap();
        let body = &HEADER[start..HEADER[start..].find("};").unwrap() + start];
        let names: Vec<String> = body
            .lines()
            .filter_map(|l| l.trim().strip_prefix("FP_"))
            .map(|l| l.split([',', ' ']).next().unwrap().to_ascii_lowercase())
            .collect();
        let (last, list) = names.split_last().unwrap();
        assert_eq!(last, "counters", "FP_COUNTERS closes the list");
        let ours: Vec<&str> = FastPathCounter::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(list, ours.as_slice());
        assert_eq!(list.len(), FastPathCounter::COUNT);
        assert!(body.contains("FP_FWD_ENCAP = 0"));
    }

    #[test]
    fn abi_version_and_sizes_match_the_header() {
        assert!(HEADER.contains(&format!("#define FP_ABI_VERSION {ABI_VERSION}\n")));
        // What clang lays out for the C structs (x86_64 and bpf agree).
        assert_eq!(size_of::<KeyV4>(), 16);
        assert_eq!(size_of::<KeyV6>(), 40);
        assert_eq!(size_of::<Flow>(), 64);
        assert_eq!(size_of::<Config>(), 28);
        for (flag, v) in [
            ("FP_SEEN_ESTABLISHED", SEEN_ESTABLISHED),
            ("FP_SEEN_CLOSING", SEEN_CLOSING),
        ] {
            assert!(
                HEADER.contains(&format!("#define {flag} 0x{v:02x}")),
                "{flag}"
            );
        }
    }

    #[test]
    fn events_decode_both_families() {
        let k4 = KeyV4 {
            src: [172, 16, 0, 2],
            dst: [192, 200, 0, 10],
            sport: 40000u16.to_be_bytes(),
            dport: [0, 80],
            proto: 6,
            pad: [0; 3],
        };
        let mut rec = vec![0u8; EVENT_LEN];
        rec[0] = 4;
        rec[1] = SEEN_ESTABLISHED;
        rec[8..16].copy_from_slice(&123u64.to_ne_bytes());
        let raw: Vec<u8> = [&k4.src[..], &k4.dst, &k4.sport, &k4.dport, &[6, 0, 0, 0]].concat();
        rec[16..16 + raw.len()].copy_from_slice(&raw);
        let e = Event::parse(&rec).unwrap();
        assert_eq!(
            (e.key, e.seen, e.at_ns),
            (k4.flow_key(), SEEN_ESTABLISHED, 123)
        );
        rec[0] = 6;
        let k6 = Event::parse(&rec).unwrap().key;
        assert!(k6.src.is_ipv6());
        rec[0] = 9;
        assert!(Event::parse(&rec).is_none());
        assert!(Event::parse(&rec[..20]).is_none());
        assert!(HEADER.contains("struct fp_event {"));
    }

    #[test]
    fn keys_are_in_wire_order() {
        let k = FlowKey {
            proto: 6,
            src: "10.0.0.1".parse().unwrap(),
            src_port: 0x1234,
            dst: "192.200.0.10".parse().unwrap(),
            dst_port: 80,
        };
        let Some(MapKey::V4(m)) = MapKey::of(&k) else {
            panic!("an IPv4 key");
        };
        assert_eq!(m.sport, [0x12, 0x34]);
        assert_eq!(m.dport, [0, 80]);
        assert_eq!(m.dst, [192, 200, 0, 10]);
        assert_eq!(m.flow_key(), k);
        let k6 = FlowKey {
            src: "2001:db8::1".parse().unwrap(),
            dst: "2001:db8::10".parse().unwrap(),
            ..k
        };
        let Some(MapKey::V6(m6)) = MapKey::of(&k6) else {
            panic!("an IPv6 key");
        };
        assert_eq!(m6.flow_key(), k6);
        let mixed = FlowKey {
            dst: "192.200.0.10".parse().unwrap(),
            ..k6
        };
        assert_eq!(MapKey::of(&mixed), None);
    }
}
