//! The tc messages of the capture: the clsact qdisc, the mark-pass filter and
//! the redirect filter (`cls_bpf` with classic BPF programs, `mirred`), byte
//! for byte as iproute2 6.1 sends the same commands (see the tests).
//!
//! Classic BPF because this kernel has neither `fw`, `matchall` nor `gact`,
//! and u32's mark match (`CONFIG_CLS_U32_MARK`) is off: a u32 filter asked to
//! match a mark would silently match everything. A classified packet with no
//! action passes (`TC_ACT_OK`), which is what "action ok" would do.

use netlink_packet_route::tc::{TcAttribute, TcHandle, TcMessage, TcOption};
use rtnetlink::packet_core::DefaultNla;

/// Egress priority of the filter that lets the stage's own (marked) packets
/// pass. Lower priorities run first; nothing else may use it on the link.
pub const FILTER_PRIO_PASS: u16 = 0x4000;
/// Egress priority of the filter that redirects IP packets to the TUN.
pub const FILTER_PRIO_REDIRECT: u16 = 0x4001;

/// `TC_H_CLSACT`: parent of the clsact qdisc.
pub(super) const TC_H_CLSACT: u32 = 0xffff_fff1;
/// Handle of the clsact qdisc (`ffff:`).
pub(super) const CLSACT_HANDLE: u32 = 0xffff_0000;
/// Parent of clsact's egress filters (`TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_EGRESS)`).
pub(super) const EGRESS_PARENT: u32 = 0xffff_fff3;
/// Parent of clsact's ingress filters.
pub(super) const INGRESS_PARENT: u32 = 0xffff_fff2;
const ETH_P_ALL: u16 = 0x0003;

const TCA_BPF_ACT: u16 = 1;
const TCA_BPF_CLASSID: u16 = 3;
const TCA_BPF_OPS_LEN: u16 = 4;
const TCA_BPF_OPS: u16 = 5;
const TCA_ACT_KIND: u16 = 1;
const TCA_ACT_OPTIONS: u16 = 2;
const NLA_F_NESTED: u16 = 0x8000;
const TCA_MIRRED_PARMS: u16 = 2;
const TCA_EGRESS_REDIR: i32 = 1;
const TC_ACT_STOLEN: i32 = 4;

/// Classic BPF ancillary offset (`SKF_AD_OFF`) and the fields read there.
const SKF_AD_OFF: u32 = 0xffff_f000;
const SKF_AD_PROTOCOL: u32 = 0;
const SKF_AD_MARK: u32 = 20;
/// Loads relative to the network header (`SKF_NET_OFF`).
const SKF_NET_OFF: u32 = 0xfff0_0000;

const LD_W_ABS: u16 = 0x20;
const LD_B_ABS: u16 = 0x30;
const JEQ_K: u16 = 0x15;
const AND_K: u16 = 0x54;
const RET_K: u16 = 0x06;
/// "Matched": the filter's class, then its actions.
const MATCH: u32 = u32::MAX;
/// "Not matched": the next filter.
const NO_MATCH: u32 = 0;

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Insn {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

const fn insn(code: u16, jt: u8, jf: u8, k: u32) -> Insn {
    Insn { code, jt, jf, k }
}

/// Matches packets whose `skb->mark` is `mark`.
pub(super) fn mark_program(mark: u32) -> Vec<Insn> {
    vec![
        insn(LD_W_ABS, 0, 0, SKF_AD_OFF + SKF_AD_MARK),
        insn(JEQ_K, 0, 1, mark),
        insn(RET_K, 0, 0, MATCH),
        insn(RET_K, 0, 0, NO_MATCH),
    ]
}

/// Matches IPv4, and IPv6 whose destination is neither multicast
/// (`ff00::/8`) nor link-local (`fe80::/10`): what the stage can re-inject.
pub(super) fn capture_program() -> Vec<Insn> {
    vec![
        /* 0 */ insn(LD_W_ABS, 0, 0, SKF_AD_OFF + SKF_AD_PROTOCOL),
        /* 1 */ insn(JEQ_K, 7, 0, 0x0800), // IPv4: match
        /* 2 */ insn(JEQ_K, 0, 7, 0x86dd), // not IPv6: no match
        /* 3 */ insn(LD_B_ABS, 0, 0, SKF_NET_OFF + 24), // first byte of dst
        /* 4 */ insn(JEQ_K, 5, 0, 0xff), // multicast: no match
        /* 5 */ insn(JEQ_K, 0, 3, 0xfe), // not fe..: match
        /* 6 */ insn(LD_B_ABS, 0, 0, SKF_NET_OFF + 25),
        /* 7 */ insn(AND_K, 0, 0, 0xc0),
        /* 8 */ insn(JEQ_K, 1, 0, 0x80), // fe80::/10: no match
        /* 9 */ insn(RET_K, 0, 0, MATCH),
        /* 10 */ insn(RET_K, 0, 0, NO_MATCH),
    ]
}

/// An attribute: header, value, padding to 4 bytes.
fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
    let len = u16::try_from(4 + value.len()).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(value.len() + 8);
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(out.len().next_multiple_of(4), 0);
    out
}

fn message(ifindex: i32, handle: u32, parent: u32, info: u32) -> TcMessage {
    let mut m = TcMessage::with_index(ifindex);
    m.header.handle = TcHandle::from(handle);
    m.header.parent = TcHandle::from(parent);
    m.header.info = info;
    m
}

fn with_options(mut m: TcMessage, kind: &str, opts: Vec<(u16, Vec<u8>)>) -> TcMessage {
    m.attributes = vec![
        TcAttribute::Kind(kind.to_owned()),
        TcAttribute::Options(
            opts.into_iter()
                .map(|(t, v)| TcOption::Other(DefaultNla::new(t, v)))
                .collect(),
        ),
    ];
    m
}

/// `tc qdisc add dev DEV clsact`.
pub(super) fn clsact_message(ifindex: i32) -> TcMessage {
    let mut m = message(ifindex, CLSACT_HANDLE, TC_H_CLSACT, 0);
    m.attributes = vec![TcAttribute::Kind("clsact".to_owned())];
    m
}

/// `tcm_info` of a filter: priority high, EtherType (network order) low.
pub(super) fn filter_info(prio: u16, protocol: u16) -> u32 {
    (u32::from(prio) << 16) | u32::from(u16::from_ne_bytes(protocol.to_be_bytes()))
}

fn ops(program: &[Insn]) -> [(u16, Vec<u8>); 2] {
    let len = u16::try_from(program.len()).unwrap_or(u16::MAX);
    let mut code = Vec::with_capacity(8 * program.len());
    for i in program {
        code.extend_from_slice(&i.code.to_ne_bytes());
        code.extend_from_slice(&[i.jt, i.jf]);
        code.extend_from_slice(&i.k.to_ne_bytes());
    }
    [
        (TCA_BPF_OPS_LEN, len.to_ne_bytes().to_vec()),
        (TCA_BPF_OPS, code),
    ]
}

/// `tc filter add dev DEV egress prio PRIO protocol all bpf bytecode
/// '<mark == MARK>' flowid :1`: marked packets pass.
pub(super) fn pass_filter_message(ifindex: i32, prio: u16, mark: u32) -> TcMessage {
    let m = message(ifindex, 0, EGRESS_PARENT, filter_info(prio, ETH_P_ALL));
    let mut opts = vec![(TCA_BPF_CLASSID, 1_u32.to_ne_bytes().to_vec())];
    opts.extend(ops(&mark_program(mark)));
    with_options(m, "bpf", opts)
}

/// `tc filter add dev DEV egress prio PRIO protocol all bpf bytecode
/// '<capture>' action mirred egress redirect dev TUN`.
pub(super) fn redirect_filter_message(ifindex: i32, prio: u16, tun_index: u32) -> TcMessage {
    let mut parms = Vec::with_capacity(28);
    for word in [0_i32, 0, TC_ACT_STOLEN, 0, 0, TCA_EGRESS_REDIR] {
        parms.extend_from_slice(&word.to_ne_bytes());
    }
    parms.extend_from_slice(&tun_index.to_ne_bytes());
    let mut action = nla(TCA_ACT_KIND, b"mirred\0");
    action.extend(nla(
        TCA_ACT_OPTIONS | NLA_F_NESTED,
        &nla(TCA_MIRRED_PARMS, &parms),
    ));
    let m = message(ifindex, 0, EGRESS_PARENT, filter_info(prio, ETH_P_ALL));
    let mut opts = vec![(TCA_BPF_ACT, nla(1, &action))];
    opts.extend(ops(&capture_program()));
    with_options(m, "bpf", opts)
}

/// `tc filter del dev DEV egress prio PRIO`.
pub(super) fn delete_filter_message(ifindex: i32, prio: u16) -> TcMessage {
    message(ifindex, 0, EGRESS_PARENT, u32::from(prio) << 16)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use rtnetlink::packet_core::Emitable;

    fn bytes(m: &TcMessage) -> Vec<u8> {
        let mut b = vec![0; m.buffer_len()];
        m.emit(&mut b);
        b
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    // Bodies (tcmsg onward) of what iproute2 6.1 sent on this kernel for link
    // index 3 (`strace -e trace=sendmsg -e write=all`):
    //   tc qdisc add dev d0 clsact
    const CLSACT: &str = "00000000030000000000fffff1ffffff000000000b000100636c736163740000";
    //   tc filter add dev d0 egress prio 16384 protocol all bpf bytecode
    //     '4,32 0 0 4294963220,21 0 1 112,6 0 0 4294967295,6 0 0 0' flowid :1
    const PASS: &str = concat!(
        "000000000300000000000000f3ffffff00030040080001006270660038000200080003000100000006000400",
        "04000000240005002000000014f0ffff150000017000000006000000ffffffff0600000000000000",
    );
    //   tc filter add dev d0 egress prio 16385 protocol all bpf bytecode '11,...'
    //     action mirred egress redirect dev t0        (t0 has index 4)
    const REDIRECT: &str = concat!(
        "000000000300000000000000f3ffffff000301400800010062706600a000020038000100340001000b000100",
        "6d69727265640000240002802000020000000000000000000400000000000000000000000100000004000000",
        "060004000b0000005c0005002000000000f0ffff150007000008000015000007dd860000300000001800f0ff",
        "15000500ff00000015000003fe000000300000001900f0ff54000000c0000000150001008000000006000000",
        "ffffffff0600000000000000",
    );
    //   tc filter del dev d0 egress prio 16387
    const DELETE: &str = "000000000300000000000000f3ffffff00000340";

    #[test]
    fn messages_are_what_tc_sends() {
        assert_eq!(bytes(&clsact_message(3)), unhex(CLSACT));
        assert_eq!(bytes(&pass_filter_message(3, 16384, 0x70)), unhex(PASS));
        assert_eq!(
            bytes(&redirect_filter_message(3, 16385, 4)),
            unhex(REDIRECT)
        );
        assert_eq!(bytes(&delete_filter_message(3, 16387)), unhex(DELETE));
    }

    /// Runs a classic BPF program over a packet as the kernel would for the
    /// instructions used here (`proto`/`mark` ancillary, network-offset loads).
    fn run(prog: &[Insn], proto: u16, mark: u32, net: &[u8]) -> u32 {
        let (mut a, mut pc) = (0_u32, 0_usize);
        loop {
            let i = prog[pc];
            pc += 1;
            match i.code {
                LD_W_ABS if i.k == SKF_AD_OFF + SKF_AD_PROTOCOL => a = u32::from(proto),
                LD_W_ABS if i.k == SKF_AD_OFF + SKF_AD_MARK => a = mark,
                LD_B_ABS => match net.get((i.k - SKF_NET_OFF) as usize) {
                    Some(b) => a = u32::from(*b),
                    None => return 0,
                },
                JEQ_K => pc += usize::from(if a == i.k { i.jt } else { i.jf }),
                AND_K => a &= i.k,
                RET_K => return i.k,
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    #[test]
    fn programs_match_what_they_say() {
        let mark = mark_program(0x70);
        assert_eq!(run(&mark, 0x0800, 0x70, &[]), MATCH);
        assert_eq!(run(&mark, 0x0800, 0x71, &[]), NO_MATCH);
        assert_eq!(run(&mark, 0x0800, 0, &[]), NO_MATCH);
        let cap = capture_program();
        let v6 = |first: u8, second: u8| {
            let mut h = [0_u8; 40];
            h[24] = first;
            h[25] = second;
            h
        };
        assert_eq!(run(&cap, 0x0800, 0, &[]), MATCH);
        assert_eq!(run(&cap, 0x0806, 0, &[]), NO_MATCH, "ARP passes");
        assert_eq!(run(&cap, 0x86dd, 0, &v6(0x20, 0x01)), MATCH);
        assert_eq!(run(&cap, 0x86dd, 0, &v6(0xff, 0x02)), NO_MATCH);
        assert_eq!(run(&cap, 0x86dd, 0, &v6(0xfe, 0x80)), NO_MATCH);
        assert_eq!(run(&cap, 0x86dd, 0, &v6(0xfe, 0xbf)), NO_MATCH);
        assert_eq!(run(&cap, 0x86dd, 0, &v6(0xfe, 0xc0)), MATCH, "fec0::/10");
        assert_eq!(run(&cap, 0x86dd, 0, &v6(0xfd, 0x00)), MATCH, "ULA");
    }
}
