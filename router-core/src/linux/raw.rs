//! Raw IP sockets: batched receive of IP-in-IP (`recvmmsg`) and batched transmit of
//! packets whose IP header the engine already wrote (`sendmmsg` on `IPPROTO_RAW`).
//!
//! Packets land in [`Slots`]: one buffer allocated at start, cut into fixed slots,
//! each with [`HEADROOM`] bytes in front so the engine can prepend the outer header
//! in place. Nothing here allocates per packet.

use super::SyscallError;
use crate::packet::HEADROOM;
use crate::wire::{Ipv6Packet, Ipv6Repr};
use nix::errno::Errno;
use nix::libc;
use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrIn, SockaddrIn6, recvmmsg, setsockopt,
    sockopt,
};
use socket2::{Domain, Protocol, Socket, Type};
use std::io::{IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

mod spread;

/// Most packets moved by one `recvmmsg` / `sendmmsg` (bounds the stack arrays).
pub const MAX_BATCH: usize = 64;

/// Most slots one [`Slots`] holds: a batch of TUN reads with offloads needs room
/// for a whole 64-segment super-packet after the packets already read.
pub const MAX_SLOTS: usize = 2 * MAX_BATCH;

/// `IPPROTO_RAW`: send-only raw socket with the IP header included.
const IPPROTO_RAW: i32 = 255;

/// Fixed-size packet slots carved from one allocation.
#[derive(Debug)]
pub struct Slots {
    buf: Vec<u8>,
    slot_len: usize,
    count: usize,
}

impl Slots {
    /// `count` slots, each able to hold `HEADROOM + max_packet` bytes.
    pub fn new(count: usize, max_packet: usize) -> Self {
        let count = count.clamp(1, MAX_SLOTS);
        let slot_len = HEADROOM + max_packet;
        Self {
            buf: vec![0; slot_len * count],
            slot_len,
            count,
        }
    }

    /// Number of slots.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Bytes per slot, headroom included.
    pub fn slot_len(&self) -> usize {
        self.slot_len
    }

    /// Slot `i` (whole storage, headroom included).
    pub fn slot(&self, i: usize) -> &[u8] {
        let s = i.min(self.count - 1) * self.slot_len;
        &self.buf[s..s + self.slot_len]
    }

    /// Slot `i`, mutable.
    pub fn slot_mut(&mut self, i: usize) -> &mut [u8] {
        let s = i.min(self.count - 1) * self.slot_len;
        &mut self.buf[s..s + self.slot_len]
    }

    /// Slots `first..`, each whole (headroom included), for filling several at once.
    pub fn slots_from(&mut self, first: usize) -> impl Iterator<Item = &mut [u8]> {
        let start = first.min(self.count) * self.slot_len;
        self.buf[start..].chunks_mut(self.slot_len)
    }

    /// Receive iovecs over every slot starting `offset` bytes in.
    fn iovecs(&mut self, offset: usize) -> [[IoSliceMut<'_>; 1]; MAX_BATCH] {
        let mut chunks = self.buf.chunks_mut(self.slot_len);
        std::array::from_fn(|_| {
            let chunk: &mut [u8] = chunks.next().map_or(&mut [], |c| &mut c[offset..]);
            [IoSliceMut::new(chunk)]
        })
    }
}

/// Where a received packet sits in its slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RxMeta {
    /// Offset of the first IP byte in the slot.
    pub start: usize,
    /// Packet length.
    pub len: usize,
    /// The datagram did not fit the slot (dropped by the caller, counted).
    pub truncated: bool,
}

/// The address family of a raw socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4 outer header.
    V4,
    /// IPv6 outer header.
    V6,
}

#[derive(Debug)]
enum RxHeaders {
    V4(MultiHeaders<SockaddrIn>),
    V6(MultiHeaders<SockaddrIn6>),
}

/// Lets a receiver move to the thread that runs the loop.
#[derive(Debug)]
struct SendHeaders(RxHeaders);

#[allow(
    unsafe_code,
    reason = "nix's MultiHeaders holds raw pointers, so it is not Send by default"
)]
// SAFETY: the raw pointers inside MultiHeaders point only into heap buffers the
// same MultiHeaders owns (its boxed address and control-message arrays), which
// move with it; the iovec pointers are rewritten from fresh borrows at every
// recvmmsg call and never dereferenced outside it. Nothing is shared, so moving
// the whole value to another thread is sound. It is not Sync (no &-sharing).
unsafe impl Send for SendHeaders {}

/// A non-blocking raw socket receiving every packet of one IP protocol addressed to
/// this machine (e.g. protocol 4, IPv4-in-IP).
#[derive(Debug)]
pub struct RawRx {
    fd: OwnedFd,
    proto: u8,
    headers: SendHeaders,
}

impl RawRx {
    /// Open a receiver for IP protocol `proto` with outer family `family`.
    pub fn open(family: Family, proto: u8, batch: usize) -> Result<Self, SyscallError> {
        let batch = batch.clamp(1, MAX_BATCH);
        let domain = match family {
            Family::V4 => Domain::IPV4,
            Family::V6 => Domain::IPV6,
        };
        let sock = Socket::new(domain, Type::RAW, Some(Protocol::from(i32::from(proto))))
            .map_err(|e| SyscallError::new("socket(SOCK_RAW, ip-in-ip)", e))?;
        sock.set_nonblocking(true)
            .map_err(|e| SyscallError::new("fcntl(O_NONBLOCK)", e))?;
        // Bursts of a few thousand packets must not overflow between two batches.
        let _ = sock.set_recv_buffer_size(4 << 20);
        let fd = OwnedFd::from(sock);
        let headers = match family {
            Family::V4 => RxHeaders::V4(MultiHeaders::preallocate(batch, None)),
            Family::V6 => {
                // An IPv6 raw socket strips the IPv6 header: ask for what we need to
                // rebuild it (destination, hop limit, traffic class).
                setsockopt(&fd, sockopt::Ipv6RecvPacketInfo, &true)
                    .map_err(|e| SyscallError::errno("setsockopt(IPV6_RECVPKTINFO)", e))?;
                setsockopt(&fd, sockopt::Ipv6RecvHopLimit, &true)
                    .map_err(|e| SyscallError::errno("setsockopt(IPV6_RECVHOPLIMIT)", e))?;
                setsockopt(&fd, sockopt::Ipv6RecvTClass, &true)
                    .map_err(|e| SyscallError::errno("setsockopt(IPV6_RECVTCLASS)", e))?;
                let cmsg = nix::cmsg_space!(libc::in6_pktinfo, libc::c_int, libc::c_int);
                RxHeaders::V6(MultiHeaders::preallocate(batch, Some(cmsg)))
            }
        };
        Ok(Self {
            fd,
            proto,
            headers: SendHeaders(headers),
        })
    }

    /// The outer family received.
    pub fn family(&self) -> Family {
        match self.headers.0 {
            RxHeaders::V4(_) => Family::V4,
            RxHeaders::V6(_) => Family::V6,
        }
    }

    /// Take only share `k` of `n` of this protocol's packets, when `n`
    /// receivers of it are open (one per engine thread; a raw socket
    /// otherwise gets a copy of every packet): a classic BPF filter hashes
    /// the inner source address and ports and accepts what hashes to `k`, so
    /// every packet reaches exactly one receiver and a flow always the same
    /// one. Packets too short to hash go to receiver 0. IPv4 outer headers
    /// only (an IPv6 raw socket sees no outer header to skip). What queued
    /// before the filter was attached (copies the other receivers also got)
    /// is discarded.
    pub fn spread(&mut self, k: u32, n: u32) -> Result<(), SyscallError> {
        if self.family() != Family::V4 || n <= 1 || k >= n {
            return Err(SyscallError::new(
                "setsockopt(SO_ATTACH_FILTER)",
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "cannot spread an outer-{:?} socket as share {k} of {n}",
                        self.family()
                    ),
                ),
            ));
        }
        let prog: Vec<socket2::SockFilter> = spread::program(self.proto, k, n)
            .iter()
            .map(|i| socket2::SockFilter::new(i.code, i.jt, i.jf, i.k))
            .collect();
        socket2::SockRef::from(&self.fd)
            .attach_filter(&prog)
            .map_err(|e| SyscallError::new("setsockopt(SO_ATTACH_FILTER)", e))?;
        let mut buf = [0u8; 64];
        while nix::sys::socket::recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT).is_ok()
        {
        }
        Ok(())
    }

    /// The IP protocol received.
    pub fn proto(&self) -> u8 {
        self.proto
    }

    /// The socket, for `poll`.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Receive up to `min(meta.len(), slots.count())` packets without blocking.
    /// Returns how many `meta` entries were filled (0 when nothing is pending).
    pub fn recv_batch(
        &mut self,
        slots: &mut Slots,
        meta: &mut [RxMeta],
    ) -> Result<usize, SyscallError> {
        let want = meta.len().min(slots.count()).min(MAX_BATCH);
        if want == 0 {
            return Ok(0);
        }
        let fd = self.fd.as_raw_fd();
        match &mut self.headers.0 {
            RxHeaders::V4(h) => {
                let mut iov = slots.iovecs(HEADROOM);
                let res =
                    match recvmmsg(fd, h, iov[..want].iter_mut(), MsgFlags::MSG_DONTWAIT, None) {
                        Ok(r) => r,
                        Err(Errno::EAGAIN | Errno::EINTR) => return Ok(0),
                        Err(e) => return Err(SyscallError::errno("recvmmsg(raw ipv4)", e)),
                    };
                let mut n = 0;
                for (m, msg) in meta.iter_mut().zip(res) {
                    *m = RxMeta {
                        start: HEADROOM,
                        len: msg.bytes,
                        truncated: msg.flags.contains(MsgFlags::MSG_TRUNC),
                    };
                    n += 1;
                }
                Ok(n)
            }
            RxHeaders::V6(h) => {
                let mut outer: [Option<Ipv6Repr>; MAX_BATCH] = [None; MAX_BATCH];
                let off = HEADROOM + Ipv6Repr::HEADER_LEN;
                let n = {
                    let mut iov = slots.iovecs(off);
                    let res =
                        match recvmmsg(fd, h, iov[..want].iter_mut(), MsgFlags::MSG_DONTWAIT, None)
                        {
                            Ok(r) => r,
                            Err(Errno::EAGAIN | Errno::EINTR) => return Ok(0),
                            Err(e) => return Err(SyscallError::errno("recvmmsg(raw ipv6)", e)),
                        };
                    let mut n = 0;
                    for ((m, o), msg) in meta.iter_mut().zip(outer.iter_mut()).zip(res) {
                        let src = msg.address.map(|a| a.ip());
                        let mut dst = None;
                        let mut hop_limit = 64u8;
                        let mut tclass = 0u8;
                        if let Ok(cmsgs) = msg.cmsgs() {
                            for c in cmsgs {
                                match c {
                                    ControlMessageOwned::Ipv6PacketInfo(pi) => {
                                        dst = Some(Ipv6Addr::from(pi.ipi6_addr.s6_addr));
                                    }
                                    ControlMessageOwned::Ipv6HopLimit(h) => {
                                        hop_limit = u8::try_from(h).unwrap_or(u8::MAX);
                                    }
                                    ControlMessageOwned::Ipv6TClass(t) => {
                                        tclass = u8::try_from(t).unwrap_or(0);
                                    }
                                    _ => {}
                                }
                            }
                        }
                        *m = RxMeta {
                            start: HEADROOM,
                            len: msg.bytes + Ipv6Repr::HEADER_LEN,
                            truncated: msg.flags.contains(MsgFlags::MSG_TRUNC),
                        };
                        *o = match (src, dst) {
                            (Some(src), Some(dst)) => Some(Ipv6Repr {
                                src,
                                dst,
                                next_header: self.proto,
                                payload_len: msg.bytes,
                                hop_limit,
                                traffic_class: tclass,
                                flow_label: 0,
                            }),
                            // Without both addresses the packet cannot be
                            // rebuilt: an empty frame makes the engine drop it.
                            _ => None,
                        };
                        n += 1;
                    }
                    n
                };
                for (i, (m, o)) in meta.iter_mut().zip(outer.iter()).take(n).enumerate() {
                    match o {
                        Some(repr) => {
                            let slot = slots.slot_mut(i);
                            let hdr = &mut slot[HEADROOM..HEADROOM + Ipv6Repr::HEADER_LEN];
                            repr.emit(&mut Ipv6Packet::new_unchecked(hdr));
                        }
                        None => m.len = 0,
                    }
                }
                Ok(n)
            }
        }
    }
}

/// One packet to transmit: `slots.slot(slot)[start..start + len]` to `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxItem {
    /// Slot index.
    pub slot: usize,
    /// First byte of the packet (its IP header) in the slot.
    pub start: usize,
    /// Packet length.
    pub len: usize,
    /// Where the kernel should route it (the packet's IP destination).
    pub dst: IpAddr,
}

/// Outcome of a transmit batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxResult {
    /// Packets the kernel accepted.
    pub sent: usize,
    /// Packets refused (no route, too big, no family socket); dropped and counted.
    pub failed: usize,
}

/// Header-included raw sockets for sending finished IP packets.
#[derive(Debug)]
pub struct RawTx {
    v4: Option<OwnedFd>,
    v6: Option<OwnedFd>,
}

impl RawTx {
    /// Open `IPPROTO_RAW` sockets for the families asked for. Sends block when the
    /// socket buffer is full: backpressure rather than silent loss.
    pub fn open(v4: bool, v6: bool) -> Result<Self, SyscallError> {
        let open = |domain: Domain| -> Result<OwnedFd, SyscallError> {
            let s = Socket::new(domain, Type::RAW, Some(Protocol::from(IPPROTO_RAW)))
                .map_err(|e| SyscallError::new("socket(SOCK_RAW, IPPROTO_RAW)", e))?;
            if domain == Domain::IPV4 {
                s.set_header_included_v4(true)
                    .map_err(|e| SyscallError::new("setsockopt(IP_HDRINCL)", e))?;
            } else {
                // IPPROTO_RAW implies IPV6_HDRINCL on Linux; say it anyway.
                let _ = s.set_header_included_v6(true);
            }
            let _ = s.set_send_buffer_size(4 << 20);
            Ok(OwnedFd::from(s))
        };
        Ok(Self {
            v4: if v4 { Some(open(Domain::IPV4)?) } else { None },
            v6: if v6 { Some(open(Domain::IPV6)?) } else { None },
        })
    }

    /// Send one packet (fragments, one-off replies).
    pub fn send_one(&self, packet: &[u8], dst: IpAddr) -> Result<(), SyscallError> {
        let iov = [IoSlice::new(packet)];
        let r = match dst {
            IpAddr::V4(a) => {
                let fd = self.v4.as_ref().ok_or_else(|| no_socket("IPv4"))?;
                let addr = SockaddrIn::from(SocketAddrV4::new(a, 0));
                nix::sys::socket::sendmsg(fd.as_raw_fd(), &iov, &[], MsgFlags::empty(), Some(&addr))
            }
            IpAddr::V6(a) => {
                let fd = self.v6.as_ref().ok_or_else(|| no_socket("IPv6"))?;
                let addr = SockaddrIn6::from(SocketAddrV6::new(a, 0, 0, 0));
                nix::sys::socket::sendmsg(fd.as_raw_fd(), &iov, &[], MsgFlags::empty(), Some(&addr))
            }
        };
        r.map(|_| ())
            .map_err(|e| SyscallError::errno("sendmsg(raw)", e))
    }

    /// Send every item, in runs of one family per `sendmmsg`. A packet the kernel
    /// refuses is skipped and counted; the rest of the batch still goes out.
    pub fn send_batch(&self, slots: &Slots, items: &[TxItem]) -> TxResult {
        let mut out = TxResult::default();
        let mut i = 0;
        while i < items.len() {
            let v4 = items[i].dst.is_ipv4();
            let run = items[i..]
                .iter()
                .take(MAX_BATCH)
                .take_while(|t| t.dst.is_ipv4() == v4)
                .count();
            let chunk = &items[i..i + run];
            let r = if v4 {
                send_run::<libc::sockaddr_in>(self.v4.as_ref(), slots, chunk)
            } else {
                send_run::<libc::sockaddr_in6>(self.v6.as_ref(), slots, chunk)
            };
            out.sent += r.sent;
            out.failed += r.failed;
            i += run;
        }
        out
    }
}

fn no_socket(family: &'static str) -> SyscallError {
    SyscallError::new(
        "sendmsg(raw)",
        std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            format!("no {family} transmit socket: configure a local {family} address"),
        ),
    )
}

/// A C socket address built from an [`IpAddr`] of its family.
trait RawSockaddr: Copy {
    fn from_ip(ip: IpAddr) -> Option<Self>;
    fn empty() -> Self;
}

impl RawSockaddr for libc::sockaddr_in {
    fn from_ip(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V4(a) => Some(Self {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.octets()),
                },
                sin_zero: [0; 8],
            }),
            IpAddr::V6(_) => None,
        }
    }
    fn empty() -> Self {
        Self {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: 0 },
            sin_zero: [0; 8],
        }
    }
}

impl RawSockaddr for libc::sockaddr_in6 {
    fn from_ip(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V6(a) => Some(Self {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.octets(),
                },
                sin6_scope_id: 0,
            }),
            IpAddr::V4(_) => None,
        }
    }
    fn empty() -> Self {
        Self {
            sin6_family: libc::AF_INET6 as libc::sa_family_t,
            sin6_port: 0,
            sin6_flowinfo: 0,
            sin6_addr: libc::in6_addr { s6_addr: [0; 16] },
            sin6_scope_id: 0,
        }
    }
}

/// `sendmmsg(2)` over `items` (at most [`MAX_BATCH`]), all of the family of `A`.
/// Returns how many the kernel took (the first refused one ends the call).
fn sendmmsg_items<A: RawSockaddr>(
    fd: BorrowedFd<'_>,
    slots: &Slots,
    items: &[TxItem],
) -> Result<usize, Errno> {
    let n = items.len().min(MAX_BATCH);
    let mut addrs: [A; MAX_BATCH] = std::array::from_fn(|k| {
        items
            .get(k)
            .and_then(|t| A::from_ip(t.dst))
            .unwrap_or_else(A::empty)
    });
    let mut iovs: [libc::iovec; MAX_BATCH] = std::array::from_fn(|k| {
        let data: &[u8] = items
            .get(k)
            .and_then(|t| slots.slot(t.slot).get(t.start..t.start + t.len))
            .unwrap_or(&[]);
        libc::iovec {
            iov_base: data.as_ptr().cast_mut().cast(),
            iov_len: data.len(),
        }
    });
    let mut msgs: [libc::mmsghdr; MAX_BATCH] = std::array::from_fn(|k| libc::mmsghdr {
        msg_hdr: libc::msghdr {
            msg_name: (&raw mut addrs[k]).cast(),
            msg_namelen: size_of::<A>() as libc::socklen_t,
            msg_iov: &raw mut iovs[k],
            msg_iovlen: 1,
            msg_control: std::ptr::null_mut(),
            msg_controllen: 0,
            msg_flags: 0,
        },
        msg_len: 0,
    });
    #[allow(
        unsafe_code,
        reason = "nix's sendmmsg result iterator reads never-initialised address slots; \
                  this is the one call it wraps, with every pointer built just above"
    )]
    // SAFETY: `msgs[..n]` are fully initialised mmsghdrs whose msg_name points at
    // `addrs[k]` (a sockaddr of exactly msg_namelen bytes) and whose msg_iov points
    // at `iovs[k]`, one iovec over bytes of `slots` borrowed shared for this whole
    // function; the kernel only reads the iovecs and writes `msg_len`. All three
    // arrays outlive the call, and `n <= MAX_BATCH` bounds vlen.
    let r = unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), n as libc::c_uint, 0) };
    Errno::result(r).map(|r| usize::try_from(r).unwrap_or(0))
}

fn send_run<A: RawSockaddr>(fd: Option<&OwnedFd>, slots: &Slots, items: &[TxItem]) -> TxResult {
    let Some(fd) = fd else {
        return TxResult {
            sent: 0,
            failed: items.len(),
        };
    };
    let mut out = TxResult::default();
    let mut off = 0;
    while off < items.len() {
        let rest = &items[off..];
        match sendmmsg_items::<A>(fd.as_fd(), slots, rest) {
            Ok(0) => {
                out.failed += rest.len();
                break;
            }
            Ok(sent) => {
                out.sent += sent;
                off += sent;
            }
            Err(Errno::EINTR) => {}
            Err(e) => {
                // The first message of the run was refused: skip it, keep going.
                tracing::debug!(error = %e, dst = %rest[0].dst, "raw send refused");
                out.failed += 1;
                off += 1;
            }
        }
    }
    out
}
