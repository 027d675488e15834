//! The classic BPF program that splits one raw IP-in-IP protocol between `n`
//! sockets ([`super::RawRx::spread`]): hash of the inner source address and
//! ports, modulo `n`, compared with the socket's share. Every load is checked
//! against the packet length first, since a load past the end ends a classic
//! filter with "drop" in every socket alike.

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Insn {
    pub(crate) code: u16,
    pub(crate) jt: u8,
    pub(crate) jf: u8,
    pub(crate) k: u32,
}

const fn insn(code: u16, jt: u8, jf: u8, k: u32) -> Insn {
    Insn { code, jt, jf, k }
}

// linux/filter.h, classic BPF.
const LD_W_LEN: u16 = 0x80; // A = skb->len
const LD_W_ABS: u16 = 0x20; // A = word at k
const LD_W_IND: u16 = 0x40; // A = word at X + k
const LDX_B_MSH: u16 = 0xb1; // X = 4 * (byte at k & 0xf)
const ALU_ADD_K: u16 = 0x04;
const ALU_XOR_X: u16 = 0xac;
const ALU_MOD_K: u16 = 0x94;
const ALU_RSH_K: u16 = 0x74;
const MISC_TAX: u16 = 0x07;
const MISC_TXA: u16 = 0x87;
const JMP_JGE_K: u16 = 0x35;
const JMP_JGE_X: u16 = 0x3d;
const JMP_JEQ_K: u16 = 0x15;
const RET_K: u16 = 0x06;

/// Bytes a filter passes on (all of them: the receiver's buffer bounds it).
const ACCEPT: u32 = 0x0004_0000;

/// The outer IPv4 header the engines and kernels emit (no options). A sender
/// with options hashes other bytes: still the same for every socket, so the
/// packet still reaches exactly one.
const OUTER: u32 = 20;

/// The program for share `k` of `n` of IP protocol `proto` (4: inner IPv4,
/// else inner IPv6) under an outer IPv4 header.
pub(crate) fn program(proto: u8, k: u32, n: u32) -> Vec<Insn> {
    let mut prog = if proto == crate::wire::ip_proto::IPV4 {
        vec![
            // The inner header length byte and source address must be there.
            insn(LD_W_LEN, 0, 0, 0),
            insn(JMP_JGE_K, 0, 18, OUTER + 16),
            // X = inner header length + OUTER + 4: the ports' end.
            insn(LDX_B_MSH, 0, 0, OUTER),
            insn(MISC_TXA, 0, 0, 0),
            insn(ALU_ADD_K, 0, 0, OUTER + 4),
            insn(MISC_TAX, 0, 0, 0),
            insn(LD_W_LEN, 0, 0, 0),
            insn(JMP_JGE_X, 0, 12, 0),
            // Ports XOR inner source address.
            insn(LDX_B_MSH, 0, 0, OUTER),
            insn(LD_W_IND, 0, 0, OUTER),
            insn(MISC_TAX, 0, 0, 0),
            insn(LD_W_ABS, 0, 0, OUTER + 12),
        ]
    } else {
        vec![
            // Fixed 40-byte inner header; ports right after it.
            insn(LD_W_LEN, 0, 0, 0),
            insn(JMP_JGE_K, 0, 11, OUTER + 44),
            insn(LD_W_ABS, 0, 0, OUTER + 40),
            insn(MISC_TAX, 0, 0, 0),
            // The last word of the inner source address.
            insn(LD_W_ABS, 0, 0, OUTER + 20),
        ]
    };
    prog.extend(verdict(k, n));
    prog
}

/// Both programs end alike: A holds a word of the inner source address and X
/// the ports' word; hash, compare with the share, and the too-short exit the
/// length checks above jump to (the last instruction).
fn verdict(k: u32, n: u32) -> [Insn; 9] {
    [
        insn(ALU_XOR_X, 0, 0, 0),
        // Fold the high half in: the ports differ in their low bits only
        // after it (the source port is the high half of the word).
        insn(MISC_TAX, 0, 0, 0),
        insn(ALU_RSH_K, 0, 0, 16),
        insn(ALU_XOR_X, 0, 0, 0),
        insn(ALU_MOD_K, 0, 0, n),
        insn(JMP_JEQ_K, 0, 1, k),
        insn(RET_K, 0, 0, ACCEPT),
        insn(RET_K, 0, 0, 0),
        // Too short to hash: share 0 takes it.
        insn(RET_K, 0, 0, if k == 0 { ACCEPT } else { 0 }),
    ]
}

#[cfg(test)]
mod tests {
    //! The programs run on a small interpreter of the instructions they use,
    //! with the kernel's rule that a load past the end returns 0 (drop).
    use super::*;
    use crate::packet::PacketBuf;
    use crate::synth::PacketSpec;
    use crate::tunnel::{EncapParams, IpIpTunnel, Tunnel};
    use crate::wire::TcpFlags;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    fn run(prog: &[Insn], pkt: &[u8]) -> u32 {
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        let word = |at: usize| -> Option<u32> {
            let b = pkt.get(at..at + 4)?;
            Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        };
        loop {
            let i = prog[pc];
            pc += 1;
            match i.code {
                LD_W_LEN => a = pkt.len() as u32,
                LD_W_ABS => match word(i.k as usize) {
                    Some(w) => a = w,
                    None => return 0,
                },
                LD_W_IND => match word((x + i.k) as usize) {
                    Some(w) => a = w,
                    None => return 0,
                },
                LDX_B_MSH => match pkt.get(i.k as usize) {
                    Some(b) => x = 4 * u32::from(b & 0xf),
                    None => return 0,
                },
                ALU_ADD_K => a = a.wrapping_add(i.k),
                ALU_XOR_X => a ^= x,
                ALU_RSH_K => a >>= i.k,
                ALU_MOD_K => a %= i.k,
                MISC_TAX => x = a,
                MISC_TXA => a = x,
                JMP_JGE_K | JMP_JGE_X | JMP_JEQ_K => {
                    let taken = match i.code {
                        JMP_JGE_K => a >= i.k,
                        JMP_JGE_X => a >= x,
                        _ => a == i.k,
                    };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                }
                RET_K => return i.k,
                other => panic!("opcode {other:#x} not interpreted"),
            }
        }
    }

    /// A SYN from `src:sport` to `dst:80`, tunnelled under IPv4.
    fn tunnelled(src: IpAddr, dst: IpAddr, sport: u16) -> Vec<u8> {
        let mut buf = vec![0u8; 256];
        let spec = PacketSpec::tcp(
            SocketAddr::new(src, sport),
            SocketAddr::new(dst, 80),
            TcpFlags::SYN,
        );
        let start = crate::packet::HEADROOM;
        let len = spec.write(&mut buf[start..]).unwrap();
        let mut pkt = PacketBuf::new(&mut buf, start, len).unwrap();
        IpIpTunnel::new()
            .encapsulate(
                &mut pkt,
                &EncapParams {
                    src: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                    dst: IpAddr::V4(Ipv4Addr::new(10, 1, 0, 2)),
                    ttl: 64,
                    mtu: 1500,
                },
            )
            .unwrap();
        pkt.data().to_vec()
    }

    fn owners(proto: u8, n: u32, pkt: &[u8]) -> Vec<u32> {
        (0..n)
            .filter(|&k| run(&program(proto, k, n), pkt) != 0)
            .collect()
    }

    #[test]
    fn every_packet_has_exactly_one_owner_and_flows_spread() {
        for (src, dst, proto) in [
            (
                IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1)),
                IpAddr::V4(Ipv4Addr::new(192, 200, 0, 10)),
                crate::wire::ip_proto::IPV4,
            ),
            (
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, 10)),
                crate::wire::ip_proto::IPV6,
            ),
        ] {
            for n in [2u32, 3, 4] {
                let mut per = vec![0u32; n as usize];
                for sport in 40000..40400u16 {
                    let pkt = tunnelled(src, dst, sport);
                    let o = owners(proto, n, &pkt);
                    assert_eq!(o.len(), 1, "{proto} {n} {sport}: owners {o:?}");
                    // The same flow, the same owner.
                    assert_eq!(owners(proto, n, &pkt), o);
                    per[o[0] as usize] += 1;
                }
                // 400 flows: every share gets a fair part (at least half its mean).
                let floor = 400 / n / 2;
                assert!(per.iter().all(|&c| c >= floor), "{proto} {n}: {per:?}");
            }
        }
    }

    #[test]
    fn short_and_odd_packets_go_to_share_zero_only() {
        let full = tunnelled(
            IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1)),
            IpAddr::V4(Ipv4Addr::new(192, 200, 0, 10)),
            40000,
        );
        for cut in [0, 10, 20, 21, 30, 43] {
            for proto in [crate::wire::ip_proto::IPV4, crate::wire::ip_proto::IPV6] {
                assert_eq!(owners(proto, 3, &full[..cut]), vec![0], "cut {cut}");
            }
        }
        // An inner header length of 60 in a short packet: no load past the end.
        let mut odd = full.clone();
        odd[20] = 0x4f;
        odd.truncate(60);
        assert_eq!(owners(crate::wire::ip_proto::IPV4, 2, &odd), vec![0]);
        // Any byte string still has exactly one owner.
        for len in 0..full.len() {
            let o = owners(crate::wire::ip_proto::IPV4, 2, &full[..len]);
            assert_eq!(o.len(), 1, "len {len}: {o:?}");
        }
    }
}
