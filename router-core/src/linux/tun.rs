//! TUN devices: how served virtual subnets enter the router (a route sends them to
//! the TUN) and how a host injects decapsulated packets into its own stack.

use super::SyscallError;
use super::raw::{RxMeta, Slots};
use crate::packet::HEADROOM;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

/// A layer-3 TUN device without packet information headers, non-blocking.
pub struct TunDevice {
    dev: tun_rs::SyncDevice,
    name: String,
}

impl std::fmt::Debug for TunDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunDevice")
            .field("name", &self.name)
            .finish()
    }
}

impl TunDevice {
    /// Create (or attach to) the TUN device `name` in the calling thread's network
    /// namespace. The link stays down until configured over netlink.
    pub fn create(name: &str) -> Result<Self, SyscallError> {
        if name.is_empty() || name.len() > MAX_IFNAME || name.contains(['/', ' ']) {
            return Err(SyscallError::new(
                "TUNSETIFF",
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "interface name {name:?} must be 1..={MAX_IFNAME} bytes, no '/' or ' '"
                    ),
                ),
            ));
        }
        let dev = tun_rs::DeviceBuilder::new()
            .name(name)
            .packet_information(false)
            // tun-rs raises the link by default; the shells raise it over netlink
            // after configuring it (IPv6 off first, else the kernel chats into it).
            .inherit_enable_state()
            .build_sync()
            .map_err(|e| SyscallError::new("open(/dev/net/tun) + TUNSETIFF", e))?;
        dev.set_nonblocking(true)
            .map_err(|e| SyscallError::new("fcntl(tun, O_NONBLOCK)", e))?;
        Ok(Self {
            dev,
            name: name.to_owned(),
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The device file, for `poll`.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.dev.as_fd()
    }

    /// Read up to `min(meta.len(), slots.count())` packets without blocking, one
    /// `read` each (TUN has no batched read without offloads). Returns the count.
    pub fn recv_batch(
        &self,
        slots: &mut Slots,
        meta: &mut [RxMeta],
    ) -> Result<usize, SyscallError> {
        let want = meta.len().min(slots.count());
        let mut n = 0;
        while n < want {
            let slot = slots.slot_mut(n);
            let cap = slot.len() - HEADROOM;
            match self.dev.recv(&mut slot[HEADROOM..]) {
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
        Ok(n)
    }

    /// Write one IP packet into the kernel through the TUN.
    pub fn send(&self, packet: &[u8]) -> Result<(), SyscallError> {
        loop {
            match self.dev.send(packet) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(SyscallError::new("write(tun)", e)),
            }
        }
    }
}
