//! TCP sockets of this namespace over netlink `sock_diag` (INET_DIAG), the
//! interface `ss` uses: binary records filtered by state in the kernel, instead
//! of formatting and re-parsing `/proc/net/tcp` text. A host with thousands of
//! TIME_WAIT sockets after a load test costs nothing here when only open states
//! are asked for.
//!
//! One [`SockDiag`] holds one netlink socket and one receive buffer, reused for
//! every dump. Each record is checked by the netlink crate's checked parsers;
//! a record that does not parse is counted and skipped, never a panic.

use std::net::{IpAddr, SocketAddr};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags, Timer};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::{Socket, SocketAddr as NlAddr};

/// TCP states (include/net/tcp_states.h), as bits of a state filter.
pub mod state {
    /// ESTABLISHED.
    pub const ESTABLISHED: u8 = 1;
    /// FIN_WAIT1.
    pub const FIN_WAIT1: u8 = 4;
    /// TIME_WAIT.
    pub const TIME_WAIT: u8 = 6;
    /// CLOSE_WAIT.
    pub const CLOSE_WAIT: u8 = 8;
    /// LAST_ACK.
    pub const LAST_ACK: u8 = 9;
    /// CLOSING.
    pub const CLOSING: u8 = 11;

    /// The filter bit of `state`.
    pub const fn bit(state: u8) -> u32 {
        1 << state
    }
}

/// Largest receive buffer (the kernel fills it with as many records as fit).
const RECV_BUF: usize = 64 * 1024;

/// One TCP socket as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSocket {
    /// Local address and port.
    pub local: SocketAddr,
    /// Remote address and port.
    pub remote: SocketAddr,
    /// TCP state ([`state`]).
    pub state: u8,
    /// Bytes written and not yet acknowledged (`write_seq - snd_una`).
    pub send_queue: u32,
    /// Retransmission timeouts in a row without an advancing ACK (0 unless the
    /// retransmit or probe timer runs), as `/proc/net/tcp`'s `retrnsmt`.
    pub retransmits: u32,
}

/// Why a dump failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SockDiagError {
    /// The netlink socket could not be opened, bound or used.
    #[error("sock_diag netlink socket: {0}")]
    Io(#[from] std::io::Error),
    /// The kernel answered the dump with an error (e.g. no inet_diag support).
    #[error("sock_diag dump refused by the kernel: errno {0}")]
    Refused(i32),
}

/// A netlink `sock_diag` socket. See the module documentation.
#[derive(Debug)]
pub struct SockDiag {
    socket: Socket,
    buf: Vec<u8>,
    seq: u32,
    /// Records that did not parse (counted, skipped).
    malformed: u64,
}

impl SockDiag {
    /// Open a socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, SockDiagError> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
        socket.bind_auto()?;
        socket.connect(&NlAddr::new(0, 0))?;
        Ok(Self {
            socket,
            buf: vec![0; RECV_BUF],
            seq: 0,
            malformed: 0,
        })
    }

    /// Records skipped because they did not parse.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    /// Every IPv4 and IPv6 TCP socket whose state is in `states` (a mask of
    /// [`state::bit`]s), handed to `each`. Returns how many were reported.
    pub fn dump_tcp(
        &mut self,
        states: u32,
        mut each: impl FnMut(&TcpSocket),
    ) -> Result<usize, SockDiagError> {
        let mut n = 0;
        for family in [AF_INET, AF_INET6] {
            n += self.dump_family(family, states, &mut each)?;
        }
        Ok(n)
    }

    fn dump_family(
        &mut self,
        family: u8,
        states: u32,
        each: &mut impl FnMut(&TcpSocket),
    ) -> Result<usize, SockDiagError> {
        self.seq = self.seq.wrapping_add(1);
        let mut hdr = NetlinkHeader::default();
        hdr.flags = NLM_F_REQUEST | NLM_F_DUMP;
        hdr.sequence_number = self.seq;
        let mut req = NetlinkMessage::new(
            hdr,
            SockDiagMessage::InetRequest(InetRequest {
                family,
                protocol: IPPROTO_TCP,
                extensions: ExtensionFlags::empty(),
                states: StateFlags::from_bits_truncate(states),
                socket_id: if family == AF_INET {
                    SocketId::new_v4()
                } else {
                    SocketId::new_v6()
                },
            })
            .into(),
        );
        req.finalize();
        let mut out = vec![0; req.buffer_len()];
        req.serialize(&mut out);
        self.socket.send(&out, 0)?;
        let mut n = 0;
        loop {
            let size = self.socket.recv(&mut &mut self.buf[..], 0)?;
            let mut offset = 0;
            while offset < size {
                let Some(bytes) = self.buf.get(offset..size) else {
                    break;
                };
                let Ok(msg) = NetlinkMessage::<SockDiagMessage>::deserialize(bytes) else {
                    self.malformed += 1;
                    break;
                };
                let len = msg.header.length as usize;
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(n),
                    NetlinkPayload::Error(e) => {
                        return Err(SockDiagError::Refused(e.raw_code()));
                    }
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                        let h = &r.header;
                        let retransmits = match h.timer {
                            Some(Timer::Retransmit(_, r)) => u32::from(r),
                            _ => 0,
                        };
                        let s = TcpSocket {
                            local: SocketAddr::new(
                                canonical(h.socket_id.source_address),
                                h.socket_id.source_port,
                            ),
                            remote: SocketAddr::new(
                                canonical(h.socket_id.destination_address),
                                h.socket_id.destination_port,
                            ),
                            state: h.state,
                            send_queue: h.send_queue,
                            retransmits,
                        };
                        each(&s);
                        n += 1;
                    }
                    _ => {}
                }
                if len == 0 {
                    break;
                }
                offset += len;
            }
        }
    }
}

/// IPv4-mapped IPv6 addresses (a dual-stack listener's IPv4 clients) as IPv4.
fn canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn an_established_loopback_connection_is_reported_with_both_ends() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_s, _) = l.accept().unwrap();
        let mut d = SockDiag::open().unwrap();
        let mut seen = Vec::new();
        let n = d
            .dump_tcp(state::bit(state::ESTABLISHED), |s| seen.push(*s))
            .unwrap();
        assert_eq!(n, seen.len());
        let ours = seen
            .iter()
            .find(|s| s.local == c.local_addr().unwrap())
            .unwrap_or_else(|| panic!("client socket missing from {seen:?}"));
        assert_eq!(ours.remote, l.local_addr().unwrap());
        assert_eq!(ours.state, state::ESTABLISHED);
        assert!(seen.iter().all(|s| s.state == state::ESTABLISHED));
        // The listener is not ESTABLISHED: filtered out in the kernel.
        assert!(
            !seen
                .iter()
                .any(|s| s.local == l.local_addr().unwrap() && s.remote.port() == 0)
        );
        assert_eq!(d.malformed(), 0);
    }

    #[test]
    fn ipv4_mapped_addresses_read_as_ipv4() {
        let m: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(canonical(m), "10.1.2.3".parse::<IpAddr>().unwrap());
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(canonical(v6), v6);
    }
}
