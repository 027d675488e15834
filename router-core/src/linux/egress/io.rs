//! The stage's file descriptors: the capture TUN it reads, the marked raw
//! sockets that re-inject packets out of the link, and the shaper's timer.

use super::capture::Capture;
use super::{EgressConfig, EgressError};
use crate::linux::{SyscallError, tun::TunDevice};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{
    ClockId as TimerClock, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags,
};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::Duration;

/// How long a send may wait for socket buffer space before it counts as an
/// error.
const SEND_TIMEOUT: Duration = Duration::from_millis(50);
/// `IPPROTO_RAW`.
const IPPROTO_RAW: i32 = 255;

/// The file descriptors of the stage.
#[derive(Debug)]
pub(super) struct StageIo {
    pub(super) tun: TunDevice,
    v4: Option<Socket>,
    v6: Option<Socket>,
    pub(super) timer: TimerFd,
    pub(super) link: String,
    link_index: u32,
    /// Largest packet read (the link's MTU).
    pub(super) max_packet: usize,
}

fn raw_socket(v6: bool, link: &str, mark: u32) -> Result<Socket, SyscallError> {
    let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
    let s = Socket::new(domain, Type::RAW, Some(Protocol::from(IPPROTO_RAW)))
        .map_err(|e| SyscallError::new("socket(SOCK_RAW, IPPROTO_RAW)", e))?;
    if v6 {
        // IPPROTO_RAW implies IPV6_HDRINCL on Linux; say it anyway.
        let _ = s.set_header_included_v6(true);
    } else {
        s.set_header_included_v4(true)
            .map_err(|e| SyscallError::new("setsockopt(IP_HDRINCL)", e))?;
        let _ = s.set_broadcast(true);
    }
    s.set_mark(mark)
        .map_err(|e| SyscallError::new("setsockopt(SO_MARK)", e))?;
    s.bind_device(Some(link.as_bytes()))
        .map_err(|e| SyscallError::new("setsockopt(SO_BINDTODEVICE)", e))?;
    let _ = s.set_send_buffer_size(4 << 20);
    s.set_write_timeout(Some(SEND_TIMEOUT))
        .map_err(|e| SyscallError::new("setsockopt(SO_SNDTIMEO)", e))?;
    Ok(s)
}

impl StageIo {
    /// Creates and raises the TUN, opens the re-injection sockets and the timer.
    pub(super) fn open(cfg: &EgressConfig, capture: &mut Capture) -> Result<Self, EgressError> {
        let tun = TunDevice::create(&cfg.tun)?;
        capture.setup_tun(&cfg.tun)?;
        let mtu = capture.link_mtu()?;
        let v4 = Some(raw_socket(false, &cfg.link, cfg.mark)?);
        let v6 = match raw_socket(true, &cfg.link, cfg.mark) {
            Ok(s) => Some(s),
            Err(error) => {
                tracing::warn!(link = %cfg.link, %error,
                    "no IPv6 re-injection socket; captured IPv6 packets will fail to send");
                None
            }
        };
        let timer = TimerFd::new(
            TimerClock::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )
        .map_err(|e| SyscallError::errno("timerfd_create", e))?;
        Ok(Self {
            tun,
            v4,
            v6,
            timer,
            link: cfg.link.clone(),
            link_index: capture.link_index(),
            max_packet: usize::try_from(mtu.max(1280)).unwrap_or(1500),
        })
    }

    /// Sends one IP packet to its destination through the raw sockets.
    pub(super) fn send(&self, data: &[u8]) -> std::io::Result<()> {
        let (sock, addr) = match data.first().map(|b| b >> 4) {
            Some(4) => {
                let d = data.get(16..20).and_then(|d| <[u8; 4]>::try_from(d).ok());
                let dst = d.map(Ipv4Addr::from);
                (self.v4.as_ref(), dst.map(|a| SocketAddr::from((a, 0))))
            }
            Some(6) => {
                let d = data.get(24..40).and_then(|d| <[u8; 16]>::try_from(d).ok());
                let dst = d.map(Ipv6Addr::from).map(|a| {
                    let scope = if a.is_unicast_link_local() {
                        self.link_index
                    } else {
                        0
                    };
                    SocketAddr::V6(SocketAddrV6::new(a, 0, 0, scope))
                });
                (self.v6.as_ref(), dst)
            }
            _ => (None, None),
        };
        let (Some(sock), Some(addr)) = (sock, addr) else {
            return Err(std::io::ErrorKind::InvalidInput.into());
        };
        let addr = SockAddr::from(addr);
        loop {
            match sock.send_to(data, &addr) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Arms the timer `after` from now (nanoseconds), or disarms it.
    pub(super) fn arm(&self, after: Option<Duration>) {
        let r = match after {
            Some(d) => self.timer.set(
                Expiration::OneShot(TimeSpec::from_duration(d.max(Duration::from_nanos(1)))),
                TimerSetTimeFlags::empty(),
            ),
            None => self.timer.unset(),
        };
        if let Err(error) = r {
            tracing::warn!(link = %self.link, %error, "timerfd_settime failed");
        }
    }
}
