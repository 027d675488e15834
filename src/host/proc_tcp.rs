//! `/proc/net/tcp{,6}`: the kernel's table of TCP sockets, read by the host
//! agent to find connections on a served VIP that make no progress.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use router_core::classify::FlowKey;
use router_core::wire::ip_proto;

/// TCP states of `/proc/net/tcp` (include/net/tcp_states.h).
mod tcp_state {
    pub(super) const ESTABLISHED: u8 = 0x01;
    pub(super) const FIN_WAIT1: u8 = 0x04;
    pub(super) const CLOSE_WAIT: u8 = 0x08;
    pub(super) const LAST_ACK: u8 = 0x09;
    pub(super) const CLOSING: u8 = 0x0b;
}

/// The fields of one `/proc/net/tcp{,6}` line the agent uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TcpSocketLine {
    /// Local address and port (IPv4-mapped IPv6 shown as IPv4).
    pub(super) local: SocketAddr,
    /// Remote address and port (IPv4-mapped IPv6 shown as IPv4).
    pub(super) remote: SocketAddr,
    /// TCP state (`st`).
    pub(super) state: u8,
    /// Bytes sent and not yet acknowledged (`tx_queue`).
    pub(super) tx_queue: u32,
    /// RTOs in a row without an advancing ACK (`retrnsmt`).
    pub(super) retransmits: u32,
}

impl TcpSocketLine {
    /// Parse one line (`sl local rem st tx:rx tr:when retrnsmt uid ...`); `None`
    /// for the header line and for anything malformed, never a panic.
    pub(super) fn parse(line: &str, v6: bool) -> Option<Self> {
        let mut f = line.split_whitespace();
        let _sl = f.next()?;
        let local = parse_endpoint(f.next()?, v6)?;
        let remote = parse_endpoint(f.next()?, v6)?;
        let state = u8::from_str_radix(f.next()?, 16).ok()?;
        let (tx, _rx) = f.next()?.split_once(':')?;
        let tx_queue = u32::from_str_radix(tx, 16).ok()?;
        let _timer = f.next()?;
        let retransmits = u32::from_str_radix(f.next()?, 16).ok()?;
        Some(Self {
            local,
            remote,
            state,
            tx_queue,
            retransmits,
        })
    }

    /// Whether the connection has data outstanding that the peer has not
    /// acknowledged through at least one retransmission timeout.
    pub(super) fn no_progress(&self) -> bool {
        let sending = match self.state {
            tcp_state::ESTABLISHED => true,
            tcp_state::FIN_WAIT1
            | tcp_state::CLOSE_WAIT
            | tcp_state::LAST_ACK
            | tcp_state::CLOSING => self.tx_queue > 0,
            _ => false,
        };
        sending && self.retransmits > 0
    }

    /// Whether the connection can still make progress (and so is worth a look).
    pub(super) fn is_open(&self) -> bool {
        matches!(
            self.state,
            tcp_state::ESTABLISHED
                | tcp_state::FIN_WAIT1
                | tcp_state::CLOSE_WAIT
                | tcp_state::LAST_ACK
                | tcp_state::CLOSING
        )
    }

    /// The flow as routers see it: client to VIP.
    pub(super) fn flow_key(&self) -> FlowKey {
        FlowKey {
            proto: ip_proto::TCP,
            src: self.remote.ip(),
            src_port: self.remote.port(),
            dst: self.local.ip(),
            dst_port: self.local.port(),
        }
    }
}

/// `ADDR:PORT` in the kernel's hex (each 32-bit word of the address in host byte
/// order, the port big-endian as a number).
fn parse_endpoint(s: &str, v6: bool) -> Option<SocketAddr> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    Some(SocketAddr::new(parse_proc_addr(addr, v6)?, port))
}

/// An address of `/proc/net/tcp{,6}`; IPv4-mapped IPv6 (dual-stack sockets)
/// comes back as IPv4.
pub(super) fn parse_proc_addr(addr: &str, v6: bool) -> Option<IpAddr> {
    // The kernel prints each 32-bit word of the address in host byte order.
    let word = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::to_ne_bytes);
    if v6 {
        if addr.len() != 32 {
            return None;
        }
        let mut b = [0u8; 16];
        for i in 0..4 {
            b[i * 4..i * 4 + 4].copy_from_slice(&word(addr.get(i * 8..i * 8 + 8)?)?);
        }
        let a = Ipv6Addr::from(b);
        Some(a.to_ipv4_mapped().map_or(IpAddr::V6(a), IpAddr::V4))
    } else {
        (addr.len() == 8).then_some(())?;
        Some(IpAddr::V4(Ipv4Addr::from(word(addr)?)))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    const VIP: Ipv4Addr = Ipv4Addr::new(192, 200, 0, 10);
    const CLIENT: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 2);

    /// The kernel's spelling of an IPv4 endpoint.
    pub(in crate::host) fn ep4(a: Ipv4Addr, port: u16) -> String {
        format!("{:08X}:{port:04X}", u32::from_ne_bytes(a.octets()))
    }

    /// The kernel's spelling of an IPv6 endpoint.
    pub(in crate::host) fn ep6(a: Ipv6Addr, port: u16) -> String {
        let o = a.octets();
        let w: String = o
            .chunks(4)
            .map(|c| format!("{:08X}", u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
            .collect();
        format!("{w}:{port:04X}")
    }

    /// A `/proc/net/tcp` line as tcp4_seq_show prints it.
    pub(in crate::host) fn line(local: &str, remote: &str, st: u8, tx: u32, retr: u32) -> String {
        format!(
            "   3: {local} {remote} {st:02X} {tx:08X}:00000000 01:00000014 {retr:08X}     0        0 43657 2 0000000000000000 40 4 30 10 -1"
        )
    }

    pub(in crate::host) fn stalled_download(client_port: u16) -> String {
        line(
            &ep4(VIP, 80),
            &ep4(CLIENT, client_port),
            tcp_state::ESTABLISHED,
            0x4000,
            3,
        )
    }

    #[test]
    fn proc_lines_parse_with_queue_and_retransmits() {
        let t = TcpSocketLine::parse(&stalled_download(40_000), false).unwrap();
        assert_eq!(t.local, SocketAddr::new(VIP.into(), 80));
        assert_eq!(t.remote, SocketAddr::new(CLIENT.into(), 40_000));
        assert_eq!((t.state, t.tx_queue, t.retransmits), (1, 0x4000, 3));
        assert!(t.no_progress());
        assert_eq!(
            t.flow_key(),
            FlowKey {
                proto: 6,
                src: CLIENT.into(),
                src_port: 40_000,
                dst: VIP.into(),
                dst_port: 80,
            }
        );
        // A dual-stack socket: IPv4-mapped addresses become IPv4.
        let mapped = line(
            &ep6(VIP.to_ipv6_mapped(), 80),
            &ep6(CLIENT.to_ipv6_mapped(), 40_001),
            1,
            10,
            1,
        );
        let t = TcpSocketLine::parse(&mapped, true).unwrap();
        assert_eq!(t.flow_key().src, IpAddr::V4(CLIENT));
        assert_eq!(t.flow_key().dst, IpAddr::V4(VIP));
        let v6 = line(
            &ep6("2001:db8::10".parse().unwrap(), 443),
            &ep6("2001:db8:1::2".parse().unwrap(), 50_000),
            1,
            0,
            0,
        );
        let t = TcpSocketLine::parse(&v6, true).unwrap();
        assert_eq!(t.local, "[2001:db8::10]:443".parse().unwrap());
        assert!(!t.no_progress());
    }

    #[test]
    fn no_progress_needs_outstanding_data_and_a_retransmission_timeout() {
        let (l, r) = (ep4(VIP, 80), ep4(CLIENT, 40_000));
        let np = |st, tx, retr| {
            TcpSocketLine::parse(&line(&l, &r, st, tx, retr), false)
                .unwrap()
                .no_progress()
        };
        assert!(np(tcp_state::ESTABLISHED, 100, 1));
        assert!(!np(tcp_state::ESTABLISHED, 100, 0), "no RTO yet");
        assert!(np(tcp_state::FIN_WAIT1, 100, 2), "closing with data queued");
        assert!(!np(tcp_state::FIN_WAIT1, 0, 2), "only the FIN outstanding");
        assert!(np(tcp_state::CLOSE_WAIT, 5, 1));
        assert!(np(tcp_state::LAST_ACK, 5, 1));
        assert!(!np(0x05, 5, 1), "FIN_WAIT2: nothing of ours outstanding");
        assert!(!np(0x0a, 0, 1), "LISTEN");
        assert!(!np(0x06, 0, 1), "TIME_WAIT");
    }

    #[test]
    fn malformed_proc_lines_are_refused_without_panicking() {
        let good = stalled_download(40_000);
        // Every truncation and every single-byte change.
        for end in 0..good.len() {
            let _ = TcpSocketLine::parse(&good[..end], false);
            let _ = TcpSocketLine::parse(&good[..end], true);
        }
        for i in 0..good.len() {
            for b in [b'G', b':', b' ', b'0', 0xff] {
                let mut bytes = good.clone().into_bytes();
                bytes[i] = b;
                let s = String::from_utf8_lossy(&bytes);
                let _ = TcpSocketLine::parse(&s, false);
                let _ = TcpSocketLine::parse(&s, true);
            }
        }
        for bad in [
            "",
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt",
            "0: 0A00C8C0:0050",
            "0: 0A00C8C0:0050 020010AC:9C40 01 00000000 00:00000000 00000000",
            "0: 0A00C8C0:0050 020010AC:9C40 01 0:0 00:00000000 ZZ",
            "0: 0A00C8C0:10050 020010AC:9C40 01 0:0 00:00000000 1",
            "0: 0A00C8C0:0050 020010AC:9C40 100 0:0 00:00000000 1",
            "0: 0A00C8C:0050 020010AC:9C40 01 0:0 00:00000000 1",
            "0: 0A00C8C0é:0050 020010AC:9C40 01 0:0 00:00000000 1",
        ] {
            assert_eq!(TcpSocketLine::parse(bad, false), None, "{bad:?}");
        }
        // An IPv4 line in the IPv6 file and the reverse.
        assert_eq!(TcpSocketLine::parse(&good, true), None);
        let v6 = line(
            &ep6(Ipv6Addr::LOCALHOST, 1),
            &ep6(Ipv6Addr::LOCALHOST, 2),
            1,
            0,
            0,
        );
        assert_eq!(TcpSocketLine::parse(&v6, false), None);
    }
}
