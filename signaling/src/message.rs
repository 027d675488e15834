//! Signalling messages (DESIGN.md §4, §5): what one SLR level says to another.
//!
//! Every type here is a *validated* value: decoding checks each invariant (name
//! syntax, prefix shape, load range, list bounds) before the value exists, so the
//! state machine and its users never see an out-of-range field.

use std::cell::Cell;
use std::fmt;
use std::net::IpAddr;

use router_core::classify::{FlowKey, SubnetError, VirtualSubnet};
use router_core::flow::{FlowEntry, FlowState};
use router_core::policy::Level;
use router_core::time::Instant;
use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Most virtual subnets one [`StateUpdate`] may carry.
pub const MAX_SUBNETS_PER_UPDATE: usize = 1024;
/// Most flow records one [`MirrorDelta`] may upsert.
pub const MAX_DELTA_UPSERTS: usize = 256;
/// Most flow keys one [`MirrorDelta`] may remove.
pub const MAX_DELTA_REMOVALS: usize = 512;
/// Largest scope (hop budget) a [`WhoHas`] query may carry.
pub const MAX_WHOHAS_TTL: u8 = 8;
/// Longest node name in bytes (a DNS name, RFC 1035 §2.3.4).
pub const MAX_NODE_NAME_LEN: usize = 253;

thread_local! {
    // postcard drops the text of serde custom errors, so a failed invariant records
    // its reason here for the codec to report as `Malformed { reason }`.
    static LAST_INVALID: Cell<Option<&'static str>> = const { Cell::new(None) };
}

fn invalid<E: de::Error>(reason: &'static str) -> E {
    LAST_INVALID.with(|c| c.set(Some(reason)));
    E::custom(reason)
}

/// Takes the reason recorded by the last failed invariant on this thread.
pub(crate) fn take_invalid_reason() -> Option<&'static str> {
    LAST_INVALID.with(Cell::take)
}

/// Per-session random number naming one life of a peer's signalling session.
///
/// A peer picks a fresh epoch for every session (the shell draws it from the TLS
/// provider's CSPRNG); every frame carries the sender's epoch, and a receiver accepts
/// a new epoch only through a new `Hello`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A node's name: a DNS name (at most 253 bytes) that must appear as a dNSName
/// subjectAltName in the node's certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeName(String);

/// Why a string is not a [`NodeName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeNameError {
    /// Empty or longer than [`MAX_NODE_NAME_LEN`].
    #[error("node name is {len} bytes; it must be 1..={MAX_NODE_NAME_LEN}")]
    Length {
        /// Length found.
        len: usize,
    },
    /// Not a syntactically valid DNS name.
    #[error("node name {name:?} is not a DNS name (letters, digits, '-', '.')")]
    Syntax {
        /// The rejected name.
        name: String,
    },
}

impl NodeName {
    /// Checks `name` is a DNS name of acceptable length.
    pub fn new(name: &str) -> Result<Self, NodeNameError> {
        Self::check(name)?;
        Ok(Self(name.to_owned()))
    }

    fn check(name: &str) -> Result<(), NodeNameError> {
        if name.is_empty() || name.len() > MAX_NODE_NAME_LEN {
            return Err(NodeNameError::Length { len: name.len() });
        }
        if rustls_pki_types::DnsName::try_from(name).is_err() {
            return Err(NodeNameError::Syntax {
                name: name.to_owned(),
            });
        }
        Ok(())
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for NodeName {
    type Err = NodeNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl Serialize for NodeName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for NodeName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = NodeName;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a DNS node name")
            }
            // Borrowed from the frame: checked before anything is allocated.
            fn visit_str<E: de::Error>(self, v: &str) -> Result<NodeName, E> {
                match NodeName::check(v) {
                    Ok(()) => Ok(NodeName(v.to_owned())),
                    Err(NodeNameError::Length { .. }) => Err(invalid("node name length")),
                    Err(_) => Err(invalid("node name syntax")),
                }
            }
        }
        d.deserialize_str(V)
    }
}

/// What a registering node is (DESIGN.md §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// A host server terminating tunnels.
    Host,
    /// A site-level SLR.
    Site,
    /// A system (AS) level SLR.
    System,
    /// A network-level SLR.
    Network,
    /// The hot spare of an SLR cluster (mirrors the flow table).
    Spare,
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "Level")]
enum LevelDef {
    Network,
    System,
    Site,
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "FlowKey")]
struct FlowKeyDef {
    proto: u8,
    src: IpAddr,
    src_port: u16,
    dst: IpAddr,
    dst_port: u16,
}

/// A virtual subnet as carried on the wire: an IP prefix with its host bits clear.
///
/// Mirrors `router_core`'s virtual-subnet type; converted at the engine boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct SubnetPrefix {
    addr: IpAddr,
    len: u8,
}

/// Why an address and length are not a [`SubnetPrefix`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PrefixError {
    /// Longer than the address family allows.
    #[error("prefix length {len} exceeds {max}")]
    Length {
        /// Length given.
        len: u8,
        /// 32 or 128.
        max: u8,
    },
    /// Bits beyond the prefix length are set.
    #[error("{addr}/{len} has host bits set")]
    HostBits {
        /// Address given.
        addr: IpAddr,
        /// Length given.
        len: u8,
    },
}

impl SubnetPrefix {
    /// A prefix of `len` bits at `addr`; host bits must be zero.
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, PrefixError> {
        let (bits, max): (u128, u8) = match addr {
            IpAddr::V4(a) => (u128::from(u32::from(a)) << 96, 32),
            IpAddr::V6(a) => (u128::from(a), 128),
        };
        if len > max {
            return Err(PrefixError::Length { len, max });
        }
        let host_mask = u128::MAX.checked_shr(u32::from(len)).unwrap_or(0);
        let host_mask = if max == 32 {
            host_mask & (u128::from(u32::MAX) << 96)
        } else {
            host_mask
        };
        if bits & host_mask != 0 {
            return Err(PrefixError::HostBits { addr, len });
        }
        Ok(Self { addr, len })
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn len(&self) -> u8 {
        self.len
    }

    /// True for the zero-length (default) prefix.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Display for SubnetPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl From<VirtualSubnet> for SubnetPrefix {
    /// A `VirtualSubnet` is canonical (host bits clear), so it is always a valid prefix.
    fn from(v: VirtualSubnet) -> Self {
        Self {
            addr: v.addr(),
            len: v.prefix_len(),
        }
    }
}

impl TryFrom<SubnetPrefix> for VirtualSubnet {
    type Error = SubnetError;

    /// Cannot fail for a validated prefix; typed anyway so no caller needs a panic.
    fn try_from(p: SubnetPrefix) -> Result<Self, SubnetError> {
        Self::new(p.addr, p.len)
    }
}

impl SubnetPrefix {
    /// Whether `ip` falls inside this prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (a, b, max) = match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                (u128::from(u32::from(a)), u128::from(u32::from(b)), 32u32)
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
            _ => return false,
        };
        let host_bits = max - u32::from(self.len);
        a.checked_shr(host_bits).unwrap_or(0) == b.checked_shr(host_bits).unwrap_or(0)
    }
}

impl<'de> Deserialize<'de> for SubnetPrefix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            addr: IpAddr,
            len: u8,
        }
        let raw = Raw::deserialize(d)?;
        Self::new(raw.addr, raw.len).map_err(|_| invalid("subnet prefix"))
    }
}

/// One virtual subnet served and its load figure.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SubnetLoad {
    /// The virtual subnet.
    pub subnet: SubnetPrefix,
    /// Load (or the aggregate `M_k`); finite and non-negative.
    pub load: f32,
}

/// Registration: who the sender is. The TLS certificate is the identity; this only
/// names it, and the receiver checks the name against the certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// The sender's node name (a dNSName SAN of its certificate).
    pub node: NodeName,
    /// The hierarchy level the sender works at (a host or spare: the level of the
    /// SLR it serves under).
    #[serde(with = "LevelDef")]
    pub level: Level,
    /// What the sender is.
    pub role: Role,
    /// How often the sender sends keepalives, so the receiver can size its dead
    /// interval.
    pub keepalive_ms: u32,
}

/// The upper level's answer to a `Hello`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloAck {
    /// The acceptor's own registration.
    pub registration: Registration,
    /// The epoch of the `Hello` being acknowledged, so an old ack cannot complete a
    /// new handshake.
    pub your_epoch: Epoch,
}

/// Periodic state update: the virtual subnets a lower level serves, with loads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateUpdate {
    /// Strictly increasing within an epoch; stale ones are ignored.
    pub seq: u64,
    /// Subnets served, at most [`MAX_SUBNETS_PER_UPDATE`].
    #[serde(deserialize_with = "de_bounded::<_, SubnetLoad, SubnetLoad, MAX_SUBNETS_PER_UPDATE>")]
    pub subnets: Vec<SubnetLoad>,
}

/// Shortcut (DESIGN.md §3): the site SLR pinned `key` to `server`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelObject {
    /// The flow.
    #[serde(with = "FlowKeyDef")]
    pub key: FlowKey,
    /// The host server that terminates the flow's tunnel.
    pub server: IpAddr,
}

/// Limited-scope flow state lookup (DESIGN.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoHas {
    /// Chosen by the asker, echoed in the answer.
    pub query_id: u64,
    /// The flow whose state is sought.
    #[serde(with = "FlowKeyDef")]
    pub key: FlowKey,
    /// Remaining hops the query may be forwarded, at most [`MAX_WHOHAS_TTL`].
    pub ttl: u8,
}

/// Answer to a [`WhoHas`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoHasAnswer {
    /// The query answered.
    pub query_id: u64,
    /// The pinned flow, or `None` when the answerer does not know it.
    pub entry: Option<FlowRecord>,
}

/// TCP-aware state of a mirrored flow (mirrors `router_core`'s flow state).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FlowPhase {
    /// TCP: only SYN seen.
    SynSeen,
    /// TCP: handshake completed.
    Established,
    /// TCP: FIN or RST seen.
    Closing,
    /// UDP datagram flow.
    Udp,
    /// ICMP or another protocol.
    Other,
}

impl From<FlowState> for FlowPhase {
    fn from(s: FlowState) -> Self {
        match s {
            FlowState::SynSeen => Self::SynSeen,
            FlowState::Established => Self::Established,
            FlowState::Closing => Self::Closing,
            FlowState::Udp => Self::Udp,
            FlowState::Other => Self::Other,
        }
    }
}

impl From<FlowPhase> for FlowState {
    fn from(p: FlowPhase) -> Self {
        match p {
            FlowPhase::SynSeen => Self::SynSeen,
            FlowPhase::Established => Self::Established,
            FlowPhase::Closing => Self::Closing,
            FlowPhase::Udp => Self::Udp,
            FlowPhase::Other => Self::Other,
        }
    }
}

/// One pinned flow on the wire (hot-spare mirroring, WHOHAS answers).
///
/// Times are relative (ages) because the sender's monotonic clock means nothing to
/// the receiver; the receiver rebases them on its own clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// The flow.
    #[serde(with = "FlowKeyDef")]
    pub key: FlowKey,
    /// Tunnel endpoint the flow is pinned to.
    pub next_hop: IpAddr,
    /// Flow label assigned when pinned.
    pub label: u32,
    /// Level of the router that pinned it.
    #[serde(with = "LevelDef")]
    pub level: Level,
    /// TCP-aware state.
    pub state: FlowPhase,
    /// Milliseconds since the flow was pinned.
    pub age_ms: u64,
    /// Milliseconds since its last packet.
    pub idle_ms: u64,
    /// Packets forwarded.
    pub packets: u64,
    /// Bytes forwarded.
    pub bytes: u64,
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl FlowRecord {
    /// The wire form of a pinned flow read at `now` on the sender's clock.
    pub fn from_entry(e: &FlowEntry, now: Instant) -> Self {
        Self {
            key: e.key,
            next_hop: e.next_hop,
            label: e.label,
            level: e.level,
            state: e.state.into(),
            age_ms: millis(now.saturating_since(e.created)),
            idle_ms: millis(now.saturating_since(e.last_seen)),
            packets: e.packets,
            bytes: e.bytes,
        }
    }

    /// The flow rebased on the receiver's clock at `now` (ages older than the
    /// receiver's epoch clamp to it).
    pub fn to_entry(&self, now: Instant) -> FlowEntry {
        let ago = |ms: u64| {
            Instant::from_nanos(now.as_nanos().saturating_sub(ms.saturating_mul(1_000_000)))
        };
        FlowEntry {
            key: self.key,
            next_hop: self.next_hop,
            label: self.label,
            level: self.level,
            state: self.state.into(),
            created: ago(self.age_ms),
            last_seen: ago(self.idle_ms),
            packets: self.packets,
            bytes: self.bytes,
        }
    }
}

/// Hot-spare mirroring: flows pinned or changed, and flows gone, since the last delta.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorDelta {
    /// Strictly increasing within an epoch; stale ones are ignored.
    pub seq: u64,
    /// Flows added or changed, at most [`MAX_DELTA_UPSERTS`].
    #[serde(deserialize_with = "de_bounded::<_, FlowRecord, FlowRecord, MAX_DELTA_UPSERTS>")]
    pub upserts: Vec<FlowRecord>,
    /// Flows removed, at most [`MAX_DELTA_REMOVALS`].
    #[serde(
        serialize_with = "ser_keys",
        deserialize_with = "de_bounded::<_, KeyW, FlowKey, MAX_DELTA_REMOVALS>"
    )]
    pub removals: Vec<FlowKey>,
}

/// Every message of protocol version 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Message {
    /// Registration by a lower level (opens the sender's epoch).
    Hello(Registration),
    /// The upper level accepts a registration.
    HelloAck(HelloAck),
    /// Subnets served and their loads.
    StateUpdate(StateUpdate),
    /// Shortcut: a flow's chosen server.
    TunnelObject(TunnelObject),
    /// Flow state lookup.
    WhoHas(WhoHas),
    /// Flow state lookup answer.
    WhoHasAnswer(WhoHasAnswer),
    /// Hot-spare flow table mirroring.
    MirrorDelta(MirrorDelta),
    /// Liveness.
    Keepalive {
        /// Sender's keepalive counter.
        seq: u64,
    },
}

impl Message {
    /// The message's name as used in logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Hello(_) => "hello",
            Self::HelloAck(_) => "hello_ack",
            Self::StateUpdate(_) => "state_update",
            Self::TunnelObject(_) => "tunnel_object",
            Self::WhoHas(_) => "whohas",
            Self::WhoHasAnswer(_) => "whohas_answer",
            Self::MirrorDelta(_) => "mirror_delta",
            Self::Keepalive { .. } => "keepalive",
        }
    }

    /// Checks the invariants serde cannot express; `Err` names the offending field.
    pub(crate) fn validate(&self) -> Result<(), &'static str> {
        match self {
            Self::StateUpdate(u) => {
                if u.subnets.len() > MAX_SUBNETS_PER_UPDATE {
                    return Err("too many subnets");
                }
                if u.subnets
                    .iter()
                    .any(|s| !s.load.is_finite() || s.load < 0.0)
                {
                    return Err("subnet load not finite and non-negative");
                }
            }
            Self::WhoHas(q) if q.ttl > MAX_WHOHAS_TTL => return Err("whohas ttl too large"),
            Self::MirrorDelta(d) => {
                if d.upserts.len() > MAX_DELTA_UPSERTS {
                    return Err("too many upserts");
                }
                if d.removals.len() > MAX_DELTA_REMOVALS {
                    return Err("too many removals");
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// A message together with the sender's epoch: the body of every frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The sender's session epoch.
    pub epoch: Epoch,
    /// The message.
    pub message: Message,
}

/// Wire adapter for a `FlowKey` inside a list.
#[derive(Deserialize)]
struct KeyW(#[serde(with = "FlowKeyDef")] FlowKey);

impl From<KeyW> for FlowKey {
    fn from(k: KeyW) -> Self {
        k.0
    }
}

#[derive(Serialize)]
struct KeyRef<'a>(#[serde(with = "FlowKeyDef")] &'a FlowKey);

fn ser_keys<S: Serializer>(keys: &[FlowKey], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(keys.iter().map(KeyRef))
}

/// Deserializes a list of at most `N` elements, refusing a longer declared length
/// before allocating anything.
fn de_bounded<'de, D, W, T, const N: usize>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    W: Deserialize<'de> + Into<T>,
{
    struct V<W, T, const N: usize>(std::marker::PhantomData<(W, T)>);
    impl<'de, W: Deserialize<'de> + Into<T>, T, const N: usize> Visitor<'de> for V<W, T, N> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a list of at most {N} elements")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let hint = seq.size_hint().unwrap_or(0);
            if hint > N {
                return Err(invalid("list longer than its limit"));
            }
            let mut out = Vec::with_capacity(hint);
            while let Some(w) = seq.next_element::<W>()? {
                if out.len() == N {
                    return Err(invalid("list longer than its limit"));
                }
                out.push(w.into());
            }
            Ok(out)
        }
    }
    d.deserialize_seq(V::<W, T, N>(std::marker::PhantomData))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn any_subnet() -> impl Strategy<Value = VirtualSubnet> {
        prop_oneof![
            (any::<u32>(), 0u8..=32).prop_map(|(a, l)| {
                VirtualSubnet::new(IpAddr::V4(Ipv4Addr::from(a)), l).unwrap()
            }),
            (any::<u128>(), 0u8..=128).prop_map(|(a, l)| {
                VirtualSubnet::new(IpAddr::V6(Ipv6Addr::from(a)), l).unwrap()
            }),
        ]
    }

    proptest! {
        #[test]
        fn subnet_conversion_round_trips(v in any_subnet(), probe in any::<u32>()) {
            let p = SubnetPrefix::from(v);
            prop_assert_eq!(p.addr(), v.addr());
            prop_assert_eq!(p.len(), v.prefix_len());
            prop_assert_eq!(VirtualSubnet::try_from(p).unwrap(), v);
            let ip = IpAddr::V4(Ipv4Addr::from(probe));
            prop_assert_eq!(p.contains(ip), v.contains(ip));
            prop_assert!(p.contains(v.addr()));
        }

        #[test]
        fn flow_record_round_trips(
            age_ms in 0u64..10_000_000,
            idle_ms in 0u64..10_000_000,
            packets in any::<u64>(),
            phase in 0u8..5,
        ) {
            let idle_ms = idle_ms.min(age_ms);
            let now = Instant::from_secs(20_000);
            let state = [FlowPhase::SynSeen, FlowPhase::Established, FlowPhase::Closing,
                FlowPhase::Udp, FlowPhase::Other][usize::from(phase)];
            let rec = FlowRecord {
                key: FlowKey {
                    proto: 6,
                    src: "198.51.100.7".parse().unwrap(),
                    src_port: 40000,
                    dst: "192.200.1.10".parse().unwrap(),
                    dst_port: 443,
                },
                next_hop: "10.1.1.11".parse().unwrap(),
                label: 7,
                level: Level::Site,
                state,
                age_ms,
                idle_ms,
                packets,
                bytes: packets / 3,
            };
            let entry = rec.to_entry(now);
            prop_assert_eq!(FlowPhase::from(entry.state), state);
            prop_assert_eq!(FlowRecord::from_entry(&entry, now), rec);
        }
    }

    #[test]
    fn ages_beyond_the_receivers_epoch_clamp() {
        let rec = FlowRecord {
            key: FlowKey {
                proto: 17,
                src: "198.51.100.7".parse().unwrap(),
                src_port: 1,
                dst: "192.200.1.10".parse().unwrap(),
                dst_port: 2,
            },
            next_hop: "10.1.1.11".parse().unwrap(),
            label: 1,
            level: Level::System,
            state: FlowPhase::Udp,
            age_ms: u64::MAX,
            idle_ms: 5_000,
            packets: 1,
            bytes: 1,
        };
        let e = rec.to_entry(Instant::from_secs(3));
        assert_eq!(e.created, Instant::ZERO);
        assert_eq!(e.last_seen, Instant::ZERO);
        assert_eq!(e.state, FlowState::Udp);
    }

    #[test]
    fn prefix_contains_respects_family_and_length() {
        let p = SubnetPrefix::new("192.200.0.0".parse().unwrap(), 16).unwrap();
        assert!(p.contains("192.200.255.1".parse().unwrap()));
        assert!(!p.contains("192.201.0.1".parse().unwrap()));
        assert!(!p.contains("::ffff:192.200.0.1".parse().unwrap()));
        let all = SubnetPrefix::new("::".parse().unwrap(), 0).unwrap();
        assert!(all.contains("2001:db8::1".parse().unwrap()));
        assert!(!all.contains("10.0.0.1".parse().unwrap()));
    }
}
