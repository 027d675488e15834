//! The host server's side of a tunnel: terminate IP-in-IP addressed to the host and
//! inject the inner packet into the local stack through a TUN. The served virtual
//! subnets are made local (`ip route add local SUBNET dev lo`), so the kernel
//! accepts any VIP of them and the host's own TCP answers the client directly with
//! the VIP as source (direct server return): replies never pass the routers.
//!
//! [`HostDecap`] is the sans-IO part (what to inject, what to drop and why);
//! [`HostTunnelEndpoint`] moves the bytes.

use super::netlink::{Netlink, NetlinkError};
use super::raw::{Family, MAX_BATCH, RawRx, RxMeta, Slots};
use super::tun::TunDevice;
use super::{SyscallError, sysctl};
use crate::classify::{PrefixTable, VirtualSubnet};
use crate::packet::PacketBuf;
use crate::tunnel::{IpIpTunnel, Tunnel, TunnelError};
use crate::wire::{self, Ipv4Packet, Ipv6Packet, ip_proto};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Why the host dropped a tunnel packet. Each has a counter in [`HostStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HostDrop {
    /// Outer or inner header malformed, or not IP-in-IP.
    BadTunnel,
    /// A fragmented outer packet (not reassembled).
    Fragmented,
    /// RFC 6040 requires dropping this ECN combination.
    EcnDrop,
    /// The inner destination is in no subnet this host serves: never inject it (the
    /// host must not become a relay for arbitrary packets).
    NotServed,
    /// The inner packet is itself IP-in-IP.
    Nested,
}

/// What to do with one received tunnel packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum HostVerdict {
    /// The buffer now holds the inner packet: write it to the TUN.
    Inject,
    /// Drop it.
    Drop(HostDrop),
}

/// Sans-IO decapsulation policy of a host.
#[derive(Debug)]
pub struct HostDecap {
    tunnel: IpIpTunnel,
    subnets: PrefixTable<()>,
}

impl HostDecap {
    /// A host serving `subnets` (at most `max_subnets`).
    pub fn new(subnets: &[VirtualSubnet], max_subnets: usize) -> Self {
        let mut table = PrefixTable::with_capacity(max_subnets);
        for s in subnets {
            if table.insert(*s, ()).is_err() {
                tracing::warn!(subnet = %s, "host subnet table full; subnet ignored");
            }
        }
        Self {
            tunnel: IpIpTunnel::new(),
            subnets: table,
        }
    }

    /// Serve one more subnet.
    pub fn add_subnet(&mut self, s: VirtualSubnet) -> Result<(), crate::classify::SubnetError> {
        self.subnets.insert(s, ()).map(|_| ())
    }

    /// Stop serving a subnet.
    pub fn remove_subnet(&mut self, s: &VirtualSubnet) {
        self.subnets.remove(s);
    }

    /// Decapsulate `pkt` in place and decide.
    pub fn process(&self, pkt: &mut PacketBuf<'_>) -> HostVerdict {
        if let Err(e) = self.tunnel.decapsulate(pkt) {
            return HostVerdict::Drop(match e {
                TunnelError::Fragmented => HostDrop::Fragmented,
                TunnelError::EcnDrop => HostDrop::EcnDrop,
                _ => HostDrop::BadTunnel,
            });
        }
        let Some((dst, proto)) = inner_dst(pkt.data()) else {
            return HostVerdict::Drop(HostDrop::BadTunnel);
        };
        // Injected through a TUN, the packet's checksum is verified: finish
        // one its sender left partial (see `wire::checksum::complete_partial`).
        wire::checksum::complete_partial(pkt.data_mut());
        if proto == ip_proto::IPV4 || proto == ip_proto::IPV6 {
            return HostVerdict::Drop(HostDrop::Nested);
        }
        if self.subnets.lookup(dst).is_none() {
            return HostVerdict::Drop(HostDrop::NotServed);
        }
        HostVerdict::Inject
    }
}

/// Destination and upper protocol of the (inner) IP packet.
fn inner_dst(data: &[u8]) -> Option<(IpAddr, u8)> {
    match wire::ip_version(data).ok()? {
        4 => {
            let p = Ipv4Packet::new_checked(data).ok()?;
            p.verify_checksum()
                .then(|| (IpAddr::V4(p.dst_addr()), p.protocol()))
        }
        _ => {
            let p = Ipv6Packet::new_checked(data).ok()?;
            let upper = wire::walk_extensions(p.next_header(), p.payload()).ok()?;
            Some((IpAddr::V6(p.dst_addr()), upper.protocol))
        }
    }
}

/// Configuration of a [`HostTunnelEndpoint`].
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// TUN the inner packets are written to.
    pub tun_name: String,
    /// MTU of that TUN.
    pub tun_mtu: u16,
    /// Virtual subnets this host serves.
    pub subnets: Vec<VirtualSubnet>,
    /// Most subnets.
    pub max_subnets: usize,
    /// Install `local SUBNET dev lo` routes for the subnets (and remove them when
    /// the endpoint stops).
    pub install_local_routes: bool,
    /// Terminate IPv4 outer headers.
    pub ipv4: bool,
    /// Terminate IPv6 outer headers.
    pub ipv6: bool,
    /// Packets per batch (1..=64).
    pub batch: usize,
    /// Largest tunnel packet accepted.
    pub max_packet: usize,
    /// Coalesce a batch's TCP segments of one flow into one TUN write (the
    /// TUN's offloads, software GRO; see [`TunDevice`]); off: a write per packet.
    pub tun_offload: bool,
    /// The process's (multi-thread) runtime, to drive the netlink connection;
    /// `None`: a private one.
    pub runtime: Option<tokio::runtime::Handle>,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            tun_name: "pronto-host0".into(),
            tun_mtu: 1500,
            subnets: Vec::new(),
            max_subnets: 4096,
            install_local_routes: true,
            ipv4: true,
            ipv6: false,
            batch: 32,
            max_packet: 9216,
            tun_offload: true,
            runtime: None,
        }
    }
}

/// Errors of the host endpoint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// A system call failed.
    #[error(transparent)]
    Syscall(#[from] SyscallError),
    /// A netlink request failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// A configuration value is out of range.
    #[error("invalid host configuration: {field}: {reason}")]
    Config {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The subnet table is full.
    #[error(transparent)]
    Subnet(#[from] crate::classify::SubnetError),
}

#[derive(Debug, Default)]
struct HostCounters {
    rx: AtomicU64,
    injected: AtomicU64,
    bad_tunnel: AtomicU64,
    fragmented: AtomicU64,
    ecn_drop: AtomicU64,
    not_served: AtomicU64,
    nested: AtomicU64,
    truncated: AtomicU64,
    inject_failed: AtomicU64,
    rx_errors: AtomicU64,
    tun_coalesced: AtomicU64,
}

/// A snapshot of the host endpoint's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostStats {
    /// Tunnel packets received.
    pub rx: u64,
    /// Inner packets written into the local stack.
    pub injected: u64,
    /// Dropped: malformed or not IP-in-IP.
    pub bad_tunnel: u64,
    /// Dropped: fragmented outer packet.
    pub fragmented: u64,
    /// Dropped: RFC 6040 ECN rule.
    pub ecn_drop: u64,
    /// Dropped: inner destination not served here.
    pub not_served: u64,
    /// Dropped: nested IP-in-IP.
    pub nested: u64,
    /// Dropped: longer than a slot.
    pub truncated: u64,
    /// TUN writes that failed.
    pub inject_failed: u64,
    /// Receive calls that failed.
    pub rx_errors: u64,
    /// Super-packets written into the TUN, each two or more of the injected
    /// packets of one flow coalesced (offloads on; the TUN's own `rx_packets`
    /// counts every write).
    pub tun_coalesced: u64,
}

impl HostStats {
    /// All drops.
    pub fn dropped(&self) -> u64 {
        self.bad_tunnel
            + self.fragmented
            + self.ecn_drop
            + self.not_served
            + self.nested
            + self.truncated
            + self.inject_failed
    }
}

/// Cloneable control handle of a running [`HostTunnelEndpoint`].
#[derive(Debug, Clone)]
pub struct HostTunnelHandle {
    stats: Arc<HostCounters>,
    decap: Arc<RwLock<HostDecap>>,
    netlink: Arc<std::sync::Mutex<Netlink>>,
    stop: Arc<AtomicBool>,
    wake: Arc<EventFd>,
    local_routes: bool,
}

impl HostTunnelHandle {
    /// Counters.
    pub fn stats(&self) -> HostStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let c = &self.stats;
        HostStats {
            rx: g(&c.rx),
            injected: g(&c.injected),
            bad_tunnel: g(&c.bad_tunnel),
            fragmented: g(&c.fragmented),
            ecn_drop: g(&c.ecn_drop),
            not_served: g(&c.not_served),
            nested: g(&c.nested),
            truncated: g(&c.truncated),
            inject_failed: g(&c.inject_failed),
            rx_errors: g(&c.rx_errors),
            tun_coalesced: g(&c.tun_coalesced),
        }
    }

    /// Serve one more subnet (local route, then accept it from tunnels).
    pub fn add_subnet(&self, s: VirtualSubnet) -> Result<(), HostError> {
        if self.local_routes {
            self.netlink
                .lock()
                .map_err(|_| poisoned())?
                .add_local_route(s)?;
        }
        self.decap.write().map_err(|_| poisoned())?.add_subnet(s)?;
        Ok(())
    }

    /// Stop serving a subnet.
    pub fn remove_subnet(&self, s: VirtualSubnet) -> Result<(), HostError> {
        self.decap
            .write()
            .map_err(|_| poisoned())?
            .remove_subnet(&s);
        if self.local_routes {
            self.netlink
                .lock()
                .map_err(|_| poisoned())?
                .remove_local_route(s)?;
        }
        Ok(())
    }

    /// Ask the endpoint loop to stop.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.wake.write(1);
    }
}

fn poisoned() -> HostError {
    HostError::Config {
        field: "state",
        reason: "a thread panicked while holding the host state".into(),
    }
}

/// The host agent's tunnel terminator.
#[derive(Debug)]
pub struct HostTunnelEndpoint {
    tun: TunDevice,
    raw: Vec<RawRx>,
    slots: Slots,
    batch: usize,
    subnets: Vec<VirtualSubnet>,
    handle: HostTunnelHandle,
}

impl HostTunnelEndpoint {
    /// Set up in the calling thread's namespace: TUN up with reverse-path filtering
    /// off, local routes for the subnets, raw sockets for protocols 4 and 41.
    pub fn new(cfg: HostConfig) -> Result<Self, HostError> {
        if !(1..=MAX_BATCH).contains(&cfg.batch) {
            return Err(HostError::Config {
                field: "batch",
                reason: format!("{} is outside 1..={MAX_BATCH}", cfg.batch),
            });
        }
        if !(576..=65535).contains(&cfg.max_packet) {
            return Err(HostError::Config {
                field: "max_packet",
                reason: format!("{} is outside 576..=65535", cfg.max_packet),
            });
        }
        if !cfg.ipv4 && !cfg.ipv6 {
            return Err(HostError::Config {
                field: "ipv4/ipv6",
                reason: "terminate at least one outer family".into(),
            });
        }
        let nl = match &cfg.runtime {
            Some(rt) => Netlink::open_on(rt)?,
            None => Netlink::open()?,
        };
        let tun = TunDevice::open(&cfg.tun_name, cfg.tun_offload, false)?;
        let idx = nl.link_index(&cfg.tun_name)?;
        if !cfg.ipv6 {
            // The kernel would queue its IPv6 chatter into a TUN nobody reads.
            if let Err(e) = sysctl::disable_ipv6(&cfg.tun_name) {
                tracing::debug!(error = %e, "cannot disable IPv6 on the TUN");
            }
        }
        nl.set_mtu(idx, u32::from(cfg.tun_mtu))?;
        nl.set_up(idx)?;
        // Inner packets carry the client's source, whose route is not the TUN.
        let all = sysctl::set_rp_filter(&cfg.tun_name, 0)?;
        if all == 1 {
            tracing::warn!(
                "net.ipv4.conf.all.rp_filter=1 (strict) drops injected packets: set it to 0 or 2"
            );
        }
        if cfg.install_local_routes {
            for s in &cfg.subnets {
                nl.add_local_route(*s)?;
            }
        }
        // The kernel ipip device would decapsulate for us, but raw sockets also get
        // a copy of every protocol-4 packet: use one path only. Userspace here, as
        // these kernels have no ipip; where it exists we log it for the operator.
        if nl.kernel_has_ipip() {
            tracing::info!("kernel ipip present; host endpoint still terminates in userspace");
        }
        let mut raw = Vec::new();
        for (on, fam) in [(cfg.ipv4, Family::V4), (cfg.ipv6, Family::V6)] {
            if on {
                raw.push(RawRx::open(fam, ip_proto::IPV4, cfg.batch)?);
                raw.push(RawRx::open(fam, ip_proto::IPV6, cfg.batch)?);
            }
        }
        tracing::info!(tun = %cfg.tun_name, subnets = cfg.subnets.len(),
            tunnel_path = "userspace-raw", "host tunnel endpoint ready");
        let wake = Arc::new(
            EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
                .map_err(|e| SyscallError::errno("eventfd", e))?,
        );
        let handle = HostTunnelHandle {
            stats: Arc::new(HostCounters::default()),
            decap: Arc::new(RwLock::new(HostDecap::new(&cfg.subnets, cfg.max_subnets))),
            netlink: Arc::new(std::sync::Mutex::new(nl)),
            stop: Arc::new(AtomicBool::new(false)),
            wake,
            local_routes: cfg.install_local_routes,
        };
        Ok(Self {
            tun,
            raw,
            slots: Slots::new(cfg.batch, cfg.max_packet),
            batch: cfg.batch,
            subnets: cfg.subnets,
            handle,
        })
    }

    /// A control handle.
    pub fn handle(&self) -> HostTunnelHandle {
        self.handle.clone()
    }

    /// Run on a new thread named `pronto-host-tunnel`.
    pub fn spawn(self) -> std::io::Result<std::thread::JoinHandle<Result<(), HostError>>> {
        std::thread::Builder::new()
            .name("pronto-host-tunnel".into())
            .spawn(move || self.run())
    }

    /// Receive, decapsulate and inject until [`HostTunnelHandle::stop`]; removes the
    /// local routes it installed on the way out.
    pub fn run(mut self) -> Result<(), HostError> {
        let mut meta = [RxMeta::default(); MAX_BATCH];
        let h = self.handle.clone();
        while !h.stop.load(Ordering::Relaxed) {
            let mut got = 0;
            for i in 0..self.raw.len() {
                let n = match self.raw[i].recv_batch(&mut self.slots, &mut meta[..self.batch]) {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::debug!(error = %e, "host raw receive failed");
                        h.stats.rx_errors.fetch_add(1, Ordering::Relaxed);
                        0
                    }
                };
                got += n;
                self.inject(n, &meta);
            }
            if got == 0 {
                let mut fds: [PollFd<'_>; 5] = std::array::from_fn(|i| match i {
                    0 => PollFd::new(h.wake.as_fd(), PollFlags::POLLIN),
                    _ => match self.raw.get(i - 1) {
                        Some(r) => PollFd::new(r.as_fd(), PollFlags::POLLIN),
                        None => PollFd::new(h.wake.as_fd(), PollFlags::empty()),
                    },
                });
                let n = 1 + self.raw.len().min(4);
                let _ = poll(&mut fds[..n], PollTimeout::from(100u16));
                let _ = h.wake.read();
            }
        }
        if h.local_routes
            && let Ok(nl) = h.netlink.lock()
        {
            for s in &self.subnets {
                let _ = nl.remove_local_route(*s);
            }
        }
        tracing::info!("host tunnel endpoint stopped");
        Ok(())
    }

    fn inject(&mut self, n: usize, meta: &[RxMeta]) {
        if n == 0 {
            return;
        }
        let c = &self.handle.stats;
        c.rx.fetch_add(n as u64, Ordering::Relaxed);
        // One read lock per batch, not per packet.
        let Ok(decap) = self.handle.decap.read() else {
            return;
        };
        for (i, m) in meta.iter().take(n).enumerate() {
            if m.truncated {
                c.truncated.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let Ok(mut pkt) = PacketBuf::new(self.slots.slot_mut(i), m.start, m.len) else {
                c.truncated.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let counter = match decap.process(&mut pkt) {
                HostVerdict::Inject => match self.tun.queue(pkt.data()) {
                    None => &c.injected,
                    Some(e) => {
                        tracing::debug!(error = %e, "tun inject failed");
                        &c.inject_failed
                    }
                },
                HostVerdict::Drop(HostDrop::BadTunnel) => &c.bad_tunnel,
                HostVerdict::Drop(HostDrop::Fragmented) => &c.fragmented,
                HostVerdict::Drop(HostDrop::EcnDrop) => &c.ecn_drop,
                HostVerdict::Drop(HostDrop::NotServed) => &c.not_served,
                HostVerdict::Drop(HostDrop::Nested) => &c.nested,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        // One write per flow's run of segments (with offloads), not per packet.
        match self.tun.flush() {
            Ok(supers) => {
                c.tun_coalesced.fetch_add(supers as u64, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::debug!(error = %e, "tun inject failed");
                c.inject_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::HEADROOM;
    use crate::synth::PacketSpec;
    use crate::tunnel::EncapParams;
    use crate::wire::TcpFlags;
    use std::net::{Ipv4Addr, SocketAddr};

    const VIP: Ipv4Addr = Ipv4Addr::new(192, 200, 0, 10);

    fn subnet() -> VirtualSubnet {
        VirtualSubnet::new(IpAddr::V4(Ipv4Addr::new(192, 200, 0, 0)), 24).unwrap()
    }

    /// A client SYN to `dst`, encapsulated `depth` times toward the host.
    fn tunnelled(buf: &mut [u8], dst: Ipv4Addr, depth: usize) -> (usize, usize) {
        let spec = PacketSpec::tcp(
            SocketAddr::from((Ipv4Addr::new(198, 18, 1, 1), 40000)),
            SocketAddr::from((dst, 80)),
            TcpFlags::SYN,
        );
        let start = HEADROOM;
        let len = spec.write(&mut buf[start..]).unwrap();
        let mut pkt = PacketBuf::new(buf, start, len).unwrap();
        let t = IpIpTunnel::new();
        for _ in 0..depth {
            let p = EncapParams {
                src: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
                dst: IpAddr::V4(Ipv4Addr::new(198, 18, 2, 2)),
                ttl: 64,
                mtu: 1500,
            };
            t.encapsulate(&mut pkt, &p).unwrap();
        }
        (pkt.start(), pkt.len())
    }

    #[test]
    fn injects_a_served_inner_packet() {
        let d = HostDecap::new(&[subnet()], 8);
        let mut buf = [0u8; 256];
        let (s, l) = tunnelled(&mut buf, VIP, 1);
        let mut pkt = PacketBuf::new(&mut buf, s, l).unwrap();
        assert_eq!(d.process(&mut pkt), HostVerdict::Inject);
        let inner = Ipv4Packet::new_checked(pkt.data()).unwrap();
        assert_eq!(inner.dst_addr(), VIP);
        assert_eq!(inner.protocol(), ip_proto::TCP);
    }

    #[test]
    fn drops_unserved_nested_and_garbage() {
        let d = HostDecap::new(&[subnet()], 8);
        let mut buf = [0u8; 256];
        let (s, l) = tunnelled(&mut buf, Ipv4Addr::new(203, 0, 113, 5), 1);
        let mut pkt = PacketBuf::new(&mut buf, s, l).unwrap();
        assert_eq!(d.process(&mut pkt), HostVerdict::Drop(HostDrop::NotServed));

        let mut buf = [0u8; 256];
        let (s, l) = tunnelled(&mut buf, VIP, 2);
        let mut pkt = PacketBuf::new(&mut buf, s, l).unwrap();
        assert_eq!(d.process(&mut pkt), HostVerdict::Drop(HostDrop::Nested));

        // A plain (not tunnelled) SYN, and a truncated tunnel packet.
        let mut buf = [0u8; 256];
        let (s, l) = tunnelled(&mut buf, VIP, 0);
        let mut pkt = PacketBuf::new(&mut buf, s, l).unwrap();
        assert_eq!(d.process(&mut pkt), HostVerdict::Drop(HostDrop::BadTunnel));
        let mut buf = [0u8; 256];
        let (s, _) = tunnelled(&mut buf, VIP, 1);
        let mut pkt = PacketBuf::new(&mut buf, s, 30).unwrap();
        assert_eq!(d.process(&mut pkt), HostVerdict::Drop(HostDrop::BadTunnel));
    }

    #[test]
    fn subnets_can_be_added_and_removed() {
        let mut d = HostDecap::new(&[], 8);
        let mut buf = [0u8; 256];
        let (s, l) = tunnelled(&mut buf, VIP, 1);
        let mut pkt = PacketBuf::new(&mut buf, s, l).unwrap();
        assert_eq!(d.process(&mut pkt), HostVerdict::Drop(HostDrop::NotServed));
        d.add_subnet(subnet()).unwrap();
        let mut buf = [0u8; 256];
        let (s, l) = tunnelled(&mut buf, VIP, 1);
        let mut pkt = PacketBuf::new(&mut buf, s, l).unwrap();
        assert_eq!(d.process(&mut pkt), HostVerdict::Inject);
        d.remove_subnet(&subnet());
        let mut buf = [0u8; 256];
        let (s, l) = tunnelled(&mut buf, VIP, 1);
        let mut pkt = PacketBuf::new(&mut buf, s, l).unwrap();
        assert_eq!(d.process(&mut pkt), HostVerdict::Drop(HostDrop::NotServed));
    }
}
