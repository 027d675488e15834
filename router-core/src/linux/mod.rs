//! Linux I/O shells around the sans-IO [`Engine`](crate::Engine) (DESIGN.md §2, §8).
//!
//! These kernels have no `ipip` module, so IP-in-IP is done in userspace:
//!
//! - **VIP traffic in**: the served virtual subnets are routed into a TUN device
//!   ([`tun::TunDevice`]); the dataplane reads whole IP packets from it.
//! - **Tunnel traffic in**: raw IP sockets of protocol 4 (IPv4 inside) and 41 (IPv6
//!   inside) receive every IP-in-IP packet addressed to this machine, batched with
//!   `recvmmsg` ([`raw::RawRx`]).
//! - **Out**: the engine builds the outer header itself, so encapsulated packets and
//!   ICMP errors leave through `IPPROTO_RAW` (header-included) sockets, batched with
//!   `sendmmsg` ([`raw::RawTx`]); the kernel routes them and resolves neighbours.
//! - **Control**: links, addresses and routes over rtnetlink ([`netlink::Netlink`],
//!   driven by the daemon's runtime where one is given, else a private one);
//!   the kernel `ipip` device is probed at start ([`netlink::Netlink::kernel_has_ipip`])
//!   and used only as an accelerator where it exists.
//!
//! [`dataplane::Dataplane`] runs the router: it drives a
//! [`dataplane::DataplaneNode`] (a bare engine, or the daemon's router node) on one
//! thread; [`host::HostTunnelEndpoint`] is the host
//! server's side: it terminates tunnels and injects the inner packet into the local
//! stack through a TUN so the host's own TCP answers the client directly from the VIP.
//!
//! [`fastpath`] loads the eBPF programs that forward pinned flows (router) and
//! decapsulate tunnels (host) in the kernel; the dataplane keeps the router
//! program's maps in step with the engine's flow table.
//!
//! [`egress`] is the userspace egress stage: what leaves one link is captured
//! (tc egress redirect to a TUN), queued per class, ranked by the link
//! scheduler's rank function (built-in or a scheduler module), paced to the
//! link rate and sent again through marked raw sockets.
//!
//! Buffers are allocated once per shell; the pinned-flow path allocates nothing and
//! makes no syscall beyond the batched I/O itself.

pub mod dataplane;
pub mod egress;
pub mod fastpath;
pub mod garp;
pub mod host;
pub mod netlink;
pub mod netns;
pub mod raw;
mod shell_counters;
pub mod sock_diag;
pub mod sysctl;
pub mod tc;
pub mod tun;

pub use dataplane::{
    Dataplane, DataplaneConfig, DataplaneError, DataplaneHandle, DataplaneNode, MAX_ENGINE_THREADS,
    NewFlow, PuntKind, PuntedPacket, ShellStats, TunnelPath,
};
pub use host::{
    HostConfig, HostDecap, HostDrop, HostError, HostStats, HostTunnelEndpoint, HostTunnelHandle,
    HostVerdict,
};
pub use netlink::{Netlink, NetlinkError};
pub use netns::{NetnsError, in_netns};

use std::io;

/// A failed system call, with the call named so the operator knows what to fix.
#[derive(Debug, thiserror::Error)]
#[error("{call} failed: {source}")]
pub struct SyscallError {
    /// The call or operation, e.g. `"socket(AF_INET, SOCK_RAW, 4)"`.
    pub call: &'static str,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

impl SyscallError {
    /// Wrap an I/O error from `call`.
    pub fn new(call: &'static str, source: io::Error) -> Self {
        Self { call, source }
    }

    /// Wrap a nix errno from `call`.
    pub fn errno(call: &'static str, errno: nix::errno::Errno) -> Self {
        Self {
            call,
            source: io::Error::from(errno),
        }
    }
}

/// A monotonic clock for the engine: nanoseconds since the shell started.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch: std::time::Instant,
    /// CLOCK_MONOTONIC at the epoch (the clock of `bpf_ktime_get_ns`).
    kernel_epoch_ns: u64,
}

impl Clock {
    /// A clock whose epoch is now.
    pub fn new() -> Self {
        let kernel_epoch_ns = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| {
                u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
                    + u64::try_from(t.tv_nsec()).unwrap_or(0)
            })
            .unwrap_or(0);
        Self {
            epoch: std::time::Instant::now(),
            kernel_epoch_ns,
        }
    }

    /// The engine instant of a kernel CLOCK_MONOTONIC time (a BPF program's
    /// `bpf_ktime_get_ns`); times before the epoch map to it.
    pub fn from_kernel_ns(&self, ns: u64) -> crate::Instant {
        crate::Instant::from_nanos(ns.saturating_sub(self.kernel_epoch_ns))
    }

    /// The engine's view of now.
    pub fn now(&self) -> crate::Instant {
        let ns = self.epoch.elapsed().as_nanos();
        crate::Instant::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}
