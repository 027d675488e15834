//! Gratuitous ARP: a hot spare announces the addresses it took over from its
//! primary, so neighbours stop sending to the dead one at once.

use super::SyscallError;

/// Announce that this machine now owns `addr` on link `dev`: one gratuitous ARP
/// request (RFC 5227 §3 "ARP Announcement": sender and target address both
/// `addr`) broadcast from the link's MAC address, so neighbours replace a cached
/// entry of the previous owner at once (a hot spare taking over its primary's
/// addresses, DESIGN.md §5). Needs `CAP_NET_RAW`.
pub fn announce_ipv4(dev: &str, addr: std::net::Ipv4Addr) -> Result<(), SyscallError> {
    use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType, sendto, socket};
    use std::os::fd::AsRawFd;
    let read = |what: &str| {
        std::fs::read_to_string(format!("/sys/class/net/{dev}/{what}"))
            .map_err(|e| SyscallError::new("read /sys/class/net/DEV", e))
    };
    let index: i32 = read("ifindex")?
        .trim()
        .parse()
        .map_err(|_| SyscallError::new("parse ifindex", std::io::ErrorKind::InvalidData.into()))?;
    let mac = parse_mac(read("address")?.trim()).ok_or_else(|| {
        SyscallError::new("parse MAC address", std::io::ErrorKind::InvalidData.into())
    })?;
    let fd = socket(
        AddressFamily::Packet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| SyscallError::errno("socket(AF_PACKET, SOCK_DGRAM)", e))?;
    let frame = garp_payload(mac, addr);
    let to = broadcast_link_addr(index)
        .ok_or_else(|| SyscallError::new("sockaddr_ll", std::io::ErrorKind::InvalidInput.into()))?;
    sendto(fd.as_raw_fd(), &frame, &to, MsgFlags::empty())
        .map(|_| ())
        .map_err(|e| SyscallError::errno("sendto(AF_PACKET, ARP)", e))
}

/// `aa:bb:cc:dd:ee:ff` as bytes.
fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The ARP packet (RFC 826) of an announcement of `addr` by `mac`; the kernel
/// adds the Ethernet header (SOCK_DGRAM).
fn garp_payload(mac: [u8; 6], addr: std::net::Ipv4Addr) -> [u8; 28] {
    let mut p = [0u8; 28];
    p[0..2].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    p[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    p[4] = 6;
    p[5] = 4;
    p[6..8].copy_from_slice(&1u16.to_be_bytes()); // request
    p[8..14].copy_from_slice(&mac);
    p[14..18].copy_from_slice(&addr.octets());
    // Target hardware address stays zero; target protocol address = sender's.
    p[24..28].copy_from_slice(&addr.octets());
    p
}

/// Link-layer broadcast on interface `index`, ARP ethertype.
#[allow(
    unsafe_code,
    reason = "nix has no safe constructor for a sockaddr_ll (LinkAddr)"
)]
fn broadcast_link_addr(index: i32) -> Option<nix::sys::socket::SockaddrStorage> {
    use nix::libc;
    use nix::sys::socket::SockaddrLike;
    let sll = libc::sockaddr_ll {
        sll_family: libc::AF_PACKET as libc::c_ushort,
        sll_protocol: (libc::ETH_P_ARP as u16).to_be(),
        sll_ifindex: index,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 6,
        sll_addr: [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0],
    };
    let len = libc::socklen_t::try_from(size_of::<libc::sockaddr_ll>()).ok()?;
    // SAFETY: `sll` is a fully initialised sockaddr_ll that lives across the
    // call, and `len` is exactly its size; from_raw copies it out.
    unsafe {
        nix::sys::socket::SockaddrStorage::from_raw(
            (&raw const sll).cast::<libc::sockaddr>(),
            Some(len),
        )
    }
}

#[cfg(test)]
mod announce_tests {
    use super::*;

    #[test]
    fn an_announcement_names_the_address_twice_and_the_mac_once() {
        let mac = parse_mac("02:00:5e:10:00:01").unwrap();
        assert_eq!(mac, [2, 0, 0x5e, 0x10, 0, 1]);
        assert!(parse_mac("02:00:5e:10:00").is_none());
        assert!(parse_mac("02:00:5e:10:00:01:02").is_none());
        let p = garp_payload(mac, std::net::Ipv4Addr::new(10, 1, 0, 2));
        let want: [u8; 28] = [
            0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0x5e, 0x10, 0, 1, 10, 1, 0, 2, 0, 0, 0, 0, 0, 0, 10, 1,
            0, 2,
        ];
        assert_eq!(p, want);
    }
}
