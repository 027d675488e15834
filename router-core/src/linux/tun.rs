//! TUN devices: how served virtual subnets enter the router (a route sends them to
//! the TUN) and how a host injects decapsulated packets into its own stack.

use super::SyscallError;
use super::raw::{RxMeta, Slots};
use crate::packet::HEADROOM;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

/// Most segments one read may split into: the TUN's `gso_max_segs` is set to this
/// (the kernel segments anything larger before the TUN), and a reader keeps this
/// many free slots for each read.
pub const MAX_GSO_SEGS: usize = 64;

/// What one [`TunDevice::recv_batch`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TunRead {
    /// Packets now in the slots (segments of super-packets counted one by one).
    pub packets: usize,
    /// `read`s that returned a packet.
    pub reads: usize,
    /// Reads whose packet was refused (bad virtio header, bad GSO framing, more
    /// segments than the slots left): each one packet lost.
    pub bad: usize,
}

/// A layer-3 TUN device without packet information headers, non-blocking.
///
/// With offloads ([`TunDevice::create_offload`]) the device carries a virtio-net
/// header on every packet and the kernel hands over TCP super-packets of up to
/// 64 KiB (TSO) with their checksums left partial: [`TunDevice::recv_batch`]
/// cuts them into MTU-sized segments with complete checksums (software GSO), and
/// [`TunDevice::queue`] + [`TunDevice::flush`] coalesce consecutive segments of a
/// flow into one write (software GRO). One read then moves what took up to 64
/// reads before, and the kernel's stack behind the TUN sees one packet where it
/// saw dozens. Segmentation and coalescing are tun-rs's (a port of
/// wireguard-go's, which has run in production on every WireGuard client for
/// years) rather than a third copy of the TCP segmentation rules.
pub struct TunDevice {
    dev: tun_rs::SyncDevice,
    name: String,
    offload: Option<Box<Offload>>,
}

/// Buffers of the offload paths, allocated once.
struct Offload {
    /// One read: the virtio header and a packet of up to 64 KiB.
    read: Vec<u8>,
    /// Per-segment sizes of the read being split.
    sizes: [usize; MAX_GSO_SEGS],
    /// Packets queued for the next coalesced write, each led by
    /// `VIRTIO_NET_HDR_LEN` bytes the coalescer fills.
    out: Vec<Vec<u8>>,
    /// How many of `out` are queued.
    queued: usize,
    gro: tun_rs::GROTable,
}

impl std::fmt::Debug for TunDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunDevice")
            .field("name", &self.name)
            .field("offload", &self.offload.is_some())
            .finish()
    }
}

fn check_name(name: &str) -> Result<(), SyscallError> {
    if name.is_empty() || name.len() > MAX_IFNAME || name.contains(['/', ' ']) {
        return Err(SyscallError::new(
            "TUNSETIFF",
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("interface name {name:?} must be 1..={MAX_IFNAME} bytes, no '/' or ' '"),
            ),
        ));
    }
    Ok(())
}

fn build(name: &str, offload: bool, multi_queue: bool) -> Result<tun_rs::SyncDevice, SyscallError> {
    let dev = tun_rs::DeviceBuilder::new()
        .name(name)
        .packet_information(false)
        .offload(offload)
        .multi_queue(multi_queue)
        // tun-rs raises the link by default; the shells raise it over netlink
        // after configuring it (IPv6 off first, else the kernel chats into it).
        .inherit_enable_state()
        .build_sync()
        .map_err(|e| SyscallError::new("open(/dev/net/tun) + TUNSETIFF", e))?;
    dev.set_nonblocking(true)
        .map_err(|e| SyscallError::new("fcntl(tun, O_NONBLOCK)", e))?;
    Ok(dev)
}

impl TunDevice {
    /// Create (or attach to) the TUN device `name` in the calling thread's network
    /// namespace, without offloads. The link stays down until configured over
    /// netlink.
    pub fn create(name: &str) -> Result<Self, SyscallError> {
        Self::open(name, false, false)
    }

    /// As [`TunDevice::create`], with TSO/checksum offloads (`IFF_VNET_HDR`,
    /// `TUNSETOFFLOAD`) when the kernel grants them; else without, and says so
    /// ([`TunDevice::offload`] tells which). Set the link's `gso_max_segs` to
    /// [`MAX_GSO_SEGS`] before traffic flows.
    pub fn create_offload(name: &str) -> Result<Self, SyscallError> {
        Self::open(name, true, false)
    }

    /// Create (or attach to) the TUN `name`, with offloads if `offload` (and
    /// the kernel grants them) and with several queues if `multi_queue`
    /// (`IFF_MULTI_QUEUE`: open more with [`TunDevice::add_queue`]; the kernel
    /// spreads packets over the queues by flow hash).
    pub fn open(name: &str, offload: bool, multi_queue: bool) -> Result<Self, SyscallError> {
        check_name(name)?;
        let dev = if offload {
            match build(name, true, multi_queue) {
                Ok(dev) if dev.tcp_gso() => dev,
                Ok(dev) => {
                    tracing::warn!(
                        tun = name,
                        "the kernel refused TUN offloads; one read per packet"
                    );
                    dev
                }
                Err(e) => {
                    tracing::warn!(tun = name, error = %e,
                        "cannot create the TUN with offloads; one read per packet");
                    build(name, false, multi_queue)?
                }
            }
        } else {
            build(name, false, multi_queue)?
        };
        Ok(Self::wrap(dev, name))
    }

    fn wrap(dev: tun_rs::SyncDevice, name: &str) -> Self {
        let offload = dev.tcp_gso().then(|| {
            Box::new(Offload {
                read: vec![0; tun_rs::VIRTIO_NET_HDR_LEN + usize::from(u16::MAX)],
                sizes: [0; MAX_GSO_SEGS],
                out: Vec::new(),
                queued: 0,
                gro: tun_rs::GROTable::new(),
            })
        });
        Self {
            dev,
            name: name.to_owned(),
            offload,
        }
    }

    /// One more queue of a multi-queue TUN ([`TunDevice::open`]), with the
    /// same offloads, non-blocking.
    pub fn add_queue(&self) -> Result<Self, SyscallError> {
        let dev = self
            .dev
            .try_clone()
            .map_err(|e| SyscallError::new("open(/dev/net/tun) + TUNSETIFF (queue)", e))?;
        dev.set_nonblocking(true)
            .map_err(|e| SyscallError::new("fcntl(tun queue, O_NONBLOCK)", e))?;
        Ok(Self::wrap(dev, &self.name))
    }

    /// Whether the device runs with offloads (super-packets in, coalesced out).
    pub fn offload(&self) -> bool {
        self.offload.is_some()
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The device file, for `poll`.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.dev.as_fd()
    }

    /// Read packets without blocking into `slots` (each at [`HEADROOM`]) until
    /// `min(meta.len(), slots.count())` are filled or none is left. Without
    /// offloads one `read` is one packet; with them one `read` may be a
    /// super-packet cut into up to [`MAX_GSO_SEGS`] segments, so reads go on
    /// only while that many slots are free (always at least one read).
    pub fn recv_batch(
        &mut self,
        slots: &mut Slots,
        meta: &mut [RxMeta],
    ) -> Result<TunRead, SyscallError> {
        let want = meta.len().min(slots.count());
        if want == 0 {
            return Ok(TunRead::default());
        }
        let Some(off) = self.offload.as_deref_mut() else {
            return recv_plain(&self.dev, slots, &mut meta[..want]);
        };
        let mut r = TunRead::default();
        while r.packets == 0 || want - r.packets >= MAX_GSO_SEGS {
            let free = want - r.packets;
            let mut it = slots.slots_from(r.packets).take(free.min(MAX_GSO_SEGS));
            let mut bufs: [&mut [u8]; MAX_GSO_SEGS] =
                std::array::from_fn(|_| it.next().unwrap_or_default());
            let take = free.min(MAX_GSO_SEGS);
            match self.dev.recv_multiple(
                &mut off.read,
                &mut bufs[..take],
                &mut off.sizes[..take],
                HEADROOM,
            ) {
                Ok(k) => {
                    r.reads += 1;
                    for (m, &len) in meta[r.packets..].iter_mut().zip(&off.sizes[..k]) {
                        *m = RxMeta {
                            start: HEADROOM,
                            len,
                            truncated: false,
                        };
                    }
                    r.packets += k;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A packet the splitter refused (framing, too many segments):
                // the read consumed it; go on with the next.
                Err(e)
                    if matches!(e.kind(), io::ErrorKind::InvalidInput | io::ErrorKind::Other)
                        && e.raw_os_error().is_none() =>
                {
                    tracing::debug!(tun = %self.name, error = %e, "TUN packet refused by GSO split");
                    r.reads += 1;
                    r.bad += 1;
                }
                Err(e) => {
                    if r.packets > 0 {
                        break;
                    }
                    return Err(SyscallError::new("read(tun)", e));
                }
            }
            if take < MAX_GSO_SEGS {
                break;
            }
        }
        Ok(r)
    }

    /// Write one IP packet into the kernel through the TUN now.
    pub fn send(&mut self, packet: &[u8]) -> Result<(), SyscallError> {
        if self.offload.is_some() {
            self.queue(packet);
            return self.flush().map(|_| ());
        }
        loop {
            match self.dev.send(packet) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(SyscallError::new("write(tun)", e)),
            }
        }
    }

    /// Queue one IP packet for [`TunDevice::flush`] (at most [`MAX_GSO_SEGS`]
    /// are held: a full queue is flushed first). Without offloads it is written
    /// at once.
    pub fn queue(&mut self, packet: &[u8]) -> Option<SyscallError> {
        let Some(off) = self.offload.as_deref_mut() else {
            return self.send(packet).err();
        };
        let mut err = None;
        if off.queued == MAX_GSO_SEGS {
            err = self.flush().err();
        }
        let Some(off) = self.offload.as_deref_mut() else {
            return err;
        };
        if off.out.len() == off.queued {
            // The coalescer appends into the first packet of a run only within
            // its capacity: room for a whole super-packet (pages are touched
            // only as a run grows).
            off.out.push(Vec::with_capacity(
                tun_rs::VIRTIO_NET_HDR_LEN + usize::from(u16::MAX),
            ));
        }
        if let Some(buf) = off.out.get_mut(off.queued) {
            buf.clear();
            buf.resize(tun_rs::VIRTIO_NET_HDR_LEN, 0);
            buf.extend_from_slice(packet);
            off.queued += 1;
        }
        err
    }

    /// Write what [`TunDevice::queue`] holds, TCP (and UDP, where the kernel
    /// takes it) segments of one flow coalesced into one super-packet. Returns
    /// how many super-packets were written (each stands for two or more of the
    /// queued packets; the kernel's count of the TUN's `rx_packets` is the
    /// number of writes).
    pub fn flush(&mut self) -> Result<usize, SyscallError> {
        let Some(off) = self.offload.as_deref_mut() else {
            return Ok(0);
        };
        let n = std::mem::take(&mut off.queued);
        if n == 0 {
            return Ok(0);
        }
        let out = &mut off.out[..n];
        self.dev
            .send_multiple(&mut off.gro, out, tun_rs::VIRTIO_NET_HDR_LEN)
            .map_err(|e| SyscallError::new("write(tun, coalesced)", e))?;
        // The coalescer wrote a GSO type into the virtio header (byte 1) of
        // each super-packet; the others kept the zeros `queue` wrote.
        Ok(out
            .iter()
            .filter(|b| b.get(1).is_some_and(|&t| t != 0))
            .count())
    }
}

/// One `read` per packet (TUN has no batched read without offloads).
fn recv_plain(
    dev: &tun_rs::SyncDevice,
    slots: &mut Slots,
    meta: &mut [RxMeta],
) -> Result<TunRead, SyscallError> {
    let mut n = 0;
    while n < meta.len() {
        let slot = slots.slot_mut(n);
        let cap = slot.len() - HEADROOM;
        match dev.recv(&mut slot[HEADROOM..]) {
            Ok(len) => {
                meta[n] = RxMeta {
                    start: HEADROOM,
                    len,
                    // A read that fills the slot exactly may have been cut.
                    truncated: len >= cap,
                };
                n += 1;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                if n > 0 {
                    break;
                }
                return Err(SyscallError::new("read(tun)", e));
            }
        }
    }
    Ok(TunRead {
        packets: n,
        reads: n,
        bad: 0,
    })
}
