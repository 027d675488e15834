//! Classifier: flow keys and the virtual-subnet table (placeholder).
use std::net::IpAddr;

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
