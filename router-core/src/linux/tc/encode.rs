//! Netlink attribute encoding: the HTB qdisc and class options (`TCA_HTB_*`,
//! rate tables), u32 selectors and keys, and the kernel's scheduler clock they
//! are computed with, byte for byte as iproute2 sends them.

use super::{HTB_MAJOR, HtbClass, TC_H_ROOT, TcId, U32Filter};
use crate::classify::VirtualSubnet;
use netlink_packet_route::tc::{TcAttribute, TcHandle, TcMessage, TcOption};
use rtnetlink::packet_core::DefaultNla;
use std::net::IpAddr;

pub(super) const TCA_HTB_PARMS: u16 = 1;
pub(super) const TCA_HTB_INIT: u16 = 2;
const TCA_HTB_CTAB: u16 = 3;
const TCA_HTB_RTAB: u16 = 4;
pub(super) const TCA_HTB_RATE64: u16 = 6;
pub(super) const TCA_HTB_CEIL64: u16 = 7;
const TC_HTB_PROTOVER: u32 = 3;
/// HTB's default rate-to-quantum divisor; unused here (quanta are explicit)
/// but part of `TCA_HTB_INIT`.
const HTB_R2Q: u32 = 10;
const TCA_U32_CLASSID: u16 = 1;
const TCA_U32_SEL: u16 = 5;
const TC_U32_TERMINAL: u8 = 1;
const TC_LINKLAYER_ETHERNET: u8 = 1;
pub(super) const TCA_OPTIONS: u16 = 2;
/// The attribute type bits (without `NLA_F_NESTED` / `NLA_F_NET_BYTEORDER`).
pub(super) const NLA_TYPE_MASK: u16 = 0x3fff;

impl U32Filter {
    /// The `tc_u32_sel` with its keys, as sent.
    pub fn selector_bytes(&self) -> Vec<u8> {
        let keys = self.subnet.map(source_keys).unwrap_or_default();
        let mut out = Vec::with_capacity(16 + 16 * keys.len());
        // flags, offshift, nkeys, pad, offmask, off, offoff, hoff, hmask
        out.extend_from_slice(&[TC_U32_TERMINAL, 0, keys.len() as u8, 0]);
        out.extend_from_slice(&[0; 12]);
        for k in keys {
            out.extend_from_slice(&k.mask.to_be_bytes());
            out.extend_from_slice(&k.val.to_be_bytes());
            out.extend_from_slice(&k.off.to_ne_bytes());
            out.extend_from_slice(&0_i32.to_ne_bytes());
        }
        out
    }
}

/// A u32 key: `(packet word at off) & mask == val` (host order here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct U32Key {
    mask: u32,
    val: u32,
    off: i32,
}

/// Keys matching the source address of an IPv4 (offset 12) or IPv6 (offset 8)
/// header against `subnet`, one per 32-bit word the prefix touches (none for
/// a /0), as `tc ... match ip src` / `match ip6 src` builds them.
fn source_keys(subnet: VirtualSubnet) -> Vec<U32Key> {
    let len = u32::from(subnet.prefix_len());
    let (words, base): (Vec<u32>, i32) = match subnet.addr() {
        IpAddr::V4(a) => (vec![u32::from(a)], 12),
        IpAddr::V6(a) => (
            a.octets()
                .chunks_exact(4)
                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            8,
        ),
    };
    let mut keys = Vec::new();
    for (i, word) in words.into_iter().enumerate() {
        let start = 32 * i as u32;
        if len <= start {
            break;
        }
        let bits = (len - start).min(32);
        let mask = u32::MAX << (32 - bits);
        keys.push(U32Key {
            mask,
            val: word & mask,
            off: base + 4 * i as i32,
        });
    }
    keys
}

// ---------------------------------------------------------------------------
// Time base and rate tables (iproute2 tc/tc_core.c)
// ---------------------------------------------------------------------------

/// The kernel's packet-scheduler clock as `/proc/net/psched` describes it:
/// how `tc` converts sizes at a rate into the ticks HTB's bursts are given in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PschedClock {
    /// Ticks per microsecond (15.625 on every kernel since 2.6.31: 64 ns ticks).
    pub tick_in_usec: f64,
    /// Timer frequency `tc` divides rates by for its default burst.
    pub hz: u64,
}

impl PschedClock {
    /// A high-resolution-timer kernel (`000003e8 00000040 000f4240 3b9aca00`).
    pub const HIGH_RES: Self = Self {
        tick_in_usec: 15.625,
        hz: 1_000_000_000,
    };

    /// Parses `/proc/net/psched` as `tc_core_init` and `get_hz` do.
    pub fn parse(text: &str) -> Option<Self> {
        let mut it = text
            .split_whitespace()
            .map(|w| u32::from_str_radix(w, 16).ok());
        let t2us = it.next()??;
        let us2t = it.next()??;
        let clock_res = it.next()??;
        let hz_denominator = it.next().flatten();
        if us2t == 0 {
            return None;
        }
        // iproute2's compatibility hack for nanosecond resolution.
        let t2us = if clock_res == 1_000_000_000 {
            us2t
        } else {
            t2us
        };
        let clock_factor = f64::from(clock_res) / 1e6;
        let tick_in_usec = f64::from(t2us) / f64::from(us2t) * clock_factor;
        let hz = match (clock_res, hz_denominator) {
            (1_000_000, Some(d)) if d > 0 => u64::from(d),
            _ => 100,
        };
        (tick_in_usec > 0.0).then_some(Self { tick_in_usec, hz })
    }

    /// This kernel's clock; [`HIGH_RES`](Self::HIGH_RES) if it cannot be read.
    pub fn read() -> Self {
        match std::fs::read_to_string("/proc/net/psched") {
            Ok(text) => Self::parse(&text).unwrap_or_else(|| {
                tracing::warn!(
                    text = text.trim(),
                    "unparsable /proc/net/psched; assuming 64 ns ticks"
                );
                Self::HIGH_RES
            }),
            Err(error) => {
                tracing::warn!(%error, "cannot read /proc/net/psched; assuming 64 ns ticks");
                Self::HIGH_RES
            }
        }
    }

    /// Ticks to send `size` bytes at `rate` bytes/s, exactly (floor).
    pub fn ticks(&self, rate: u64, size: u64) -> u32 {
        let t = size as f64 * 1e6 / rate.max(1) as f64 * self.tick_in_usec;
        t.min(f64::from(u32::MAX)) as u32
    }

    /// iproute2's `tc_calc_xmittime`: whole microseconds first, then ticks.
    fn tc_xmittime(&self, rate: u64, size: u32) -> u32 {
        let usec = (1e6 * (f64::from(size) / rate as f64)) as u32;
        (f64::from(usec) * self.tick_in_usec) as u32
    }

    /// `tc`'s default burst `rate / HZ + mtu`, or `rate * burst_time` if larger.
    pub(super) fn default_burst(&self, rate: u64, mtu: u32, burst_time: f64) -> u32 {
        let tc = rate / self.hz.max(1) + u64::from(mtu);
        let timed = (rate as f64 * burst_time) as u64;
        tc.max(timed).min(u64::from(u32::MAX)) as u32
    }
}

/// iproute2's `tc_calc_rtable` for Ethernet (no overhead, no mpu): the cell
/// log that fits `mtu` into 256 cells, and the ticks to send each cell's size
/// at `rate` bytes/s (the ratespec's 32-bit rate, as `tc` passes it).
pub fn calc_rtable(clock: &PschedClock, rate: u32, mtu: u32) -> (u8, [u32; 256]) {
    let mtu = if mtu == 0 { 2047 } else { mtu };
    let mut cell_log = 0_u8;
    while (mtu >> cell_log) > 255 {
        cell_log += 1;
    }
    let mut table = [0_u32; 256];
    for (i, slot) in table.iter_mut().enumerate() {
        let size = ((i as u32) + 1) << cell_log;
        *slot = clock.tc_xmittime(u64::from(rate), size);
    }
    (cell_log, table)
}

// ---------------------------------------------------------------------------
// Message encoding
// ---------------------------------------------------------------------------

pub(super) fn tc_message(ifindex: i32, handle: u32, parent: u32, info: u32) -> TcMessage {
    let mut m = TcMessage::with_index(ifindex);
    m.header.handle = TcHandle::from(handle);
    m.header.parent = TcHandle::from(parent);
    m.header.info = info;
    m
}

fn options(kind: &str, opts: Vec<(u16, Vec<u8>)>) -> Vec<TcAttribute> {
    vec![
        TcAttribute::Kind(kind.to_owned()),
        TcAttribute::Options(
            opts.into_iter()
                .map(|(t, v)| TcOption::Other(DefaultNla::new(t, v)))
                .collect(),
        ),
    ]
}

/// `tc qdisc replace dev DEV root handle 1: htb default DEFAULT` (r2q 10).
pub fn htb_qdisc_message(ifindex: i32, default_class: TcId) -> TcMessage {
    let mut init = Vec::with_capacity(20);
    for word in [
        TC_HTB_PROTOVER,
        HTB_R2Q,
        u32::from(default_class.minor()),
        0,
        0,
    ] {
        init.extend_from_slice(&word.to_ne_bytes());
    }
    let mut m = tc_message(ifindex, TcId::new(HTB_MAJOR, 0).0, TC_H_ROOT, 0);
    m.attributes = options("htb", vec![(TCA_HTB_INIT, init)]);
    m
}

fn ratespec(out: &mut Vec<u8>, cell_log: u8, rate: u32) {
    out.push(cell_log);
    out.push(TC_LINKLAYER_ETHERNET);
    out.extend_from_slice(&0_u16.to_ne_bytes()); // overhead
    out.extend_from_slice(&(-1_i16).to_ne_bytes()); // cell_align
    out.extend_from_slice(&0_u16.to_ne_bytes()); // mpu
    out.extend_from_slice(&rate.to_ne_bytes());
}

/// `tc class replace dev DEV parent P classid C htb rate R ceil C burst B
/// cburst CB quantum Q` for `class`, with rate tables for `mtu`.
pub fn htb_class_message(
    ifindex: i32,
    class: &HtbClass,
    clock: &PschedClock,
    mtu: u32,
) -> TcMessage {
    let rate32 = u32::try_from(class.rate).unwrap_or(u32::MAX);
    let ceil32 = u32::try_from(class.ceil).unwrap_or(u32::MAX);
    let (cell_log, rtab) = calc_rtable(clock, rate32, mtu);
    let (ccell_log, ctab) = calc_rtable(clock, ceil32, mtu);
    let mut parms = Vec::with_capacity(44);
    ratespec(&mut parms, cell_log, rate32);
    ratespec(&mut parms, ccell_log, ceil32);
    for word in [
        clock.ticks(class.rate, u64::from(class.burst)),
        clock.ticks(class.ceil, u64::from(class.cburst)),
        class.quantum,
        0, // level: out only
        0, // prio
    ] {
        parms.extend_from_slice(&word.to_ne_bytes());
    }
    let table = |t: [u32; 256]| t.iter().flat_map(|v| v.to_ne_bytes()).collect::<Vec<u8>>();
    let mut opts = Vec::with_capacity(5);
    if class.rate > u64::from(u32::MAX) {
        opts.push((TCA_HTB_RATE64, class.rate.to_ne_bytes().to_vec()));
    }
    if class.ceil > u64::from(u32::MAX) {
        opts.push((TCA_HTB_CEIL64, class.ceil.to_ne_bytes().to_vec()));
    }
    opts.push((TCA_HTB_PARMS, parms));
    opts.push((TCA_HTB_RTAB, table(rtab)));
    opts.push((TCA_HTB_CTAB, table(ctab)));
    let mut m = tc_message(ifindex, class.id.0, class.parent.0, 0);
    m.attributes = options("htb", opts);
    m
}

/// `tcm_info` of a filter: priority in the upper half, the EtherType in
/// network order in the lower (`TC_H_MAKE(prio << 16, htons(proto))`).
pub(super) fn filter_info(prio: u16, protocol: u16) -> u32 {
    (u32::from(prio) << 16) | u32::from(u16::from_ne_bytes(protocol.to_be_bytes()))
}

/// `tc filter add dev DEV parent 1: protocol P prio PRIO handle ::NODE u32
/// match ip[6] src PREFIX flowid CLASS`.
pub fn u32_filter_message(ifindex: i32, prio: u16, filter: &U32Filter) -> TcMessage {
    let mut m = tc_message(
        ifindex,
        u32::from(filter.node),
        TcId::new(HTB_MAJOR, 0).0,
        filter_info(prio, filter.kind.protocol()),
    );
    m.attributes = options(
        "u32",
        vec![
            (TCA_U32_CLASSID, filter.class.0.to_ne_bytes().to_vec()),
            (TCA_U32_SEL, filter.selector_bytes()),
        ],
    );
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux::tc::test_util::*;
    use crate::linux::tc::*;

    // Bodies (tcmsg onward) of what iproute2 6.1 sent on this kernel, captured
    // with `strace -f -e trace=sendmsg -e write=all` in a namespace with link
    // index 3:
    //   tc qdisc replace dev a root handle 1: htb default 12
    const TC_QDISC: &str = "000000000300000000000100ffffffff0000000008000100687462001c00020018000200030000000a000000120000000000000000000000";
    //   tc class add dev a parent 1:1 classid 1:10 htb rate 20mbit ceil 100mbit quantum 1600
    const TC_CLASS_10: &str = concat!(
        "000000000300000010000100010001000000000008000100687462003c0802003000010003010000ffff0000a0252600",
        "03010000ffff000020bcbe0010270000d0070000400600000000000000000000040404002e0000005d0000008c000000",
        "bb000000fa000000280100005701000086010000b5010000f4010000220200005102000080020000af020000ee020000",
        "1c0300004b0300007a030000a9030000e8030000160400004504000074040000a3040000e2040000100500003f050000",
        "6e0500009d050000dc0500000a060000390600006806000097060000d606000004070000330700006207000091070000",
        "d0070000fe0700002d0800005c0800008b080000ca080000f8080000270900005609000085090000c4090000f2090000",
        "210a0000500a00007f0a0000be0a0000ec0a00001b0b00004a0b0000790b0000b80b0000e60b0000150c0000440c0000",
        "730c0000b20c0000e00c00000f0d00003e0d00006d0d0000ac0d0000da0d0000090e0000380e0000670e0000a60e0000",
        "d40e0000030f0000320f0000610f0000a00f0000ce0f0000fd0f00002c1000005b1000009a100000c8100000f7100000",
        "261100005511000094110000c2110000f1110000201200004f1200008e120000bc120000eb1200001a13000049130000",
        "88130000b6130000e5130000141400004314000082140000b0140000df1400000e1500003d1500007c150000aa150000",
        "d9150000081600003716000076160000a4160000d31600000217000031170000701700009e170000cd170000fc170000",
        "2b1800006a18000098180000c7180000f6180000251900006419000092190000c1190000f01900001f1a00005e1a0000",
        "8c1a0000bb1a0000ea1a0000191b0000581b0000861b0000b51b0000e41b0000131c0000521c0000801c0000af1c0000",
        "de1c00000d1d00004c1d00007a1d0000a91d0000d81d0000071e0000461e0000741e0000a31e0000d21e0000011f0000",
        "401f00006e1f00009d1f0000cc1f0000fb1f00003a2000006820000097200000c6200000f52000003421000062210000",
        "91210000c0210000ef2100002e2200005c2200008b220000ba220000e9220000282300005623000085230000b4230000",
        "e323000022240000502400007f240000ae240000dd2400001c2500004a25000079250000a8250000d725000016260000",
        "4426000073260000a2260000d1260000102700003e2700006d2700009c270000cb2700000a2800003828000067280000",
        "96280000c528000004290000322900006129000090290000bf290000fe2900002c2a00005b2a00008a2a0000b92a0000",
        "f82a0000262b0000552b0000842b0000b32b0000f22b0000202c00004f2c00007e2c0000ad2c0000ec2c00001a2d0000",
        "492d0000782d0000a72d0000e62d0000142e0000432e0000722e0000a12e0000e02e00000e2f00003d2f00006c2f0000",
        "9b2f0000da2f000008300000373000006630000095300000d43000000231000031310000603100008f310000ce310000",
        "fc31000004040300000000000f0000000f0000001f0000002e0000002e0000003e0000004e0000004e0000005d000000",
        "6d0000006d0000007d0000007d0000008c0000009c0000009c000000ab000000bb000000bb000000cb000000da000000",
        "da000000ea000000fa000000fa0000000901000009010000190100002801000028010000380100004801000048010000",
        "5701000067010000670100007701000077010000860100009601000096010000a5010000b5010000b5010000c5010000",
        "d4010000d4010000e4010000f4010000f401000003020000030200001302000022020000220200003202000042020000",
        "4202000051020000610200006102000071020000710200008002000090020000900200009f020000af020000af020000",
        "bf020000ce020000ce020000de020000ee020000ee020000fd020000fd0200000d0300001c0300001c0300002c030000",
        "3c0300003c0300004b0300005b0300005b0300006b0300006b0300007a0300008a0300008a03000099030000a9030000",
        "a9030000b9030000c8030000c8030000d8030000e8030000e8030000f7030000f7030000070400001604000016040000",
        "260400003604000036040000450400005504000055040000650400006504000074040000840400008404000093040000",
        "a3040000a3040000b3040000c2040000c2040000d2040000e2040000e2040000f1040000f10400000105000010050000",
        "100500002005000030050000300500003f0500004f0500004f0500005f0500005f0500006e0500007e0500007e050000",
        "8d0500009d0500009d050000ad050000bc050000bc050000cc050000dc050000dc050000eb050000eb050000fb050000",
        "0a0600000a0600001a0600002a0600002a06000039060000490600004906000059060000590600006806000078060000",
        "78060000870600009706000097060000a7060000b6060000b6060000c6060000d6060000d6060000e5060000e5060000",
        "f50600000407000004070000140700002407000024070000330700004307000043070000530700005307000062070000",
        "7207000072070000810700009107000091070000a1070000b0070000b0070000c0070000d0070000d0070000df070000",
        "df070000ef070000fe070000fe0700000e0800001e0800001e0800002d0800003d0800003d0800004d0800004d080000",
        "5c0800006c0800006c0800007b0800008b0800008b0800009b080000aa080000aa080000ba080000ca080000ca080000",
        "d9080000d9080000e9080000f8080000f808000008090000180900001809000027090000370900003709000047090000",
        "4709000056090000660900006609000075090000850900008509000095090000a4090000a4090000b4090000c4090000",
        "c4090000d3090000d3090000e3090000f2090000f2090000",
    );
    //   tc class add dev a parent 1:1 classid 1:11 htb rate 50gbit ceil 100gbit quantum 1600
    // up to the rate table (both tables are all zero: tc computes them from the
    // 32-bit rate, 0xffffffff, and they round to 0 ticks).
    const TC_CLASS_11_HEAD: &str = "00000000030000001100010001000100000000000800010068746200540802000c000600806e8774010000000c00070000dd0ee9020000003000010003010000ffff0000ffffffff03010000ffff0000ffffffff000000000000000040060000000000000000000004040400";
    //   tc filter add dev a parent 1: protocol ip prio 10 handle ::5 u32 match ip src 198.51.100.0/24 flowid 1:10
    const TC_FILTER_V4: &str = "0000000003000000050000000000010008000a0008000100753332003000020008000100100001002400050001000100000000000000000000000000ffffff00c63364000c00000000000000";
    //   tc filter add dev a parent 1: protocol ipv6 prio 11 u32 match ip6 src 2001:db8:1::/48 flowid 1:10
    const TC_FILTER_V6: &str = "0000000003000000000000000000010086dd0b0008000100753332004000020008000100100001003400050001000200000000000000000000000000ffffffff20010db80800000000000000ffff0000000100000c00000000000000";

    #[test]
    fn qdisc_message_is_what_tc_sends() {
        let m = htb_qdisc_message(3, TcId::new(1, 0x12));
        assert_eq!(bytes(&m), unhex(TC_QDISC));
    }

    #[test]
    fn class_message_is_what_tc_sends() {
        // 20 Mbit/s = 2.5e6 bytes/s, ceil 100 Mbit/s; bursts tc's default.
        let c = class(0x10, 2_500_000, 12_500_000);
        assert_eq!((c.burst, c.cburst), (1600, 1600));
        let m = htb_class_message(3, &c, &PschedClock::HIGH_RES, 1600);
        let got = bytes(&m);
        let want = unhex(TC_CLASS_10);
        assert_eq!(got.len(), want.len());
        assert_eq!(got, want);
    }

    #[test]
    fn class_message_above_32_bits_uses_rate64_and_exact_bursts() {
        let c = class(0x11, 6_250_000_000, 12_500_000_000);
        let m = htb_class_message(3, &c, &PschedClock::HIGH_RES, 1600);
        let got = bytes(&m);
        let mut want = unhex(TC_CLASS_11_HEAD);
        // tc truncates 1606 bytes at 6.25e9 B/s to 0 whole microseconds, so its
        // burst is 0 ticks; ours is the exact 4 (and 2 at the ceil).
        let parms = want.len() - 4 - 48 + 4;
        assert_eq!(&want[parms + 24..parms + 32], &[0; 8]);
        want[parms + 24..parms + 28].copy_from_slice(&4_u32.to_ne_bytes());
        want[parms + 28..parms + 32].copy_from_slice(&2_u32.to_ne_bytes());
        want.extend_from_slice(&[0; 1024]);
        want.extend_from_slice(&unhex("04040300"));
        want.extend_from_slice(&[0; 1024]);
        assert_eq!(got, want);
    }

    #[test]
    fn filter_messages_are_what_tc_sends() {
        let v4 = U32Filter {
            kind: FilterKind::V4,
            node: 5,
            subnet: Some(subnet("198.51.100.0/24")),
            class: TcId::new(1, 0x10),
        };
        assert_eq!(bytes(&u32_filter_message(3, 10, &v4)), unhex(TC_FILTER_V4));
        let v6 = U32Filter {
            kind: FilterKind::V6,
            node: 1,
            subnet: Some(subnet("2001:db8:1::/48")),
            class: TcId::new(1, 0x10),
        };
        let mut want = unhex(TC_FILTER_V6);
        // tc let the kernel pick the node; we name it.
        want[8] = 1;
        assert_eq!(bytes(&u32_filter_message(3, 11, &v6)), want);
    }

    #[test]
    fn source_keys_cover_the_prefix_words() {
        let k = source_keys(subnet("10.1.0.0/16"));
        assert_eq!(
            k,
            vec![U32Key {
                mask: 0xffff_0000,
                val: 0x0a01_0000,
                off: 12
            }]
        );
        assert!(source_keys(subnet("0.0.0.0/0")).is_empty());
        let k = source_keys(subnet("2001:db8:aa:bb::/72"));
        assert_eq!(k.len(), 3);
        assert_eq!((k[0].off, k[1].off, k[2].off), (8, 12, 16));
        assert_eq!(k[1].val, 0x00aa_00bb);
        assert_eq!((k[2].mask, k[2].val), (0xff00_0000, 0));
        assert_eq!(source_keys(subnet("2001:db8::1/128")).len(), 4);
    }

    #[test]
    fn rate_table_follows_tc_calc_rtable() {
        let clock = PschedClock::HIGH_RES;
        let (cell_log, t) = calc_rtable(&clock, 2_500_000, 1600);
        assert_eq!(cell_log, 3);
        // size 8: 3 whole us -> 46 ticks; size 2048: 819 us -> 12796 ticks.
        assert_eq!((t[0], t[1], t[255]), (46, 93, 12_796));
        assert!(t.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(calc_rtable(&clock, 1_000_000, 255).0, 0);
        assert_eq!(calc_rtable(&clock, 1_000_000, 0).0, 3, "mtu 0 means 2047");
        assert_eq!(calc_rtable(&clock, u32::MAX, 1600).1, [0; 256]);
    }

    #[test]
    fn psched_clock_is_read_like_tc() {
        let c = PschedClock::parse("000003e8 00000040 000f4240 3b9aca00\n").unwrap();
        assert_eq!(c, PschedClock::HIGH_RES);
        // A low-resolution kernel: HZ from the last word.
        let c = PschedClock::parse("000003e8 00000040 000f4240 000003e8").unwrap();
        assert_eq!(c.hz, 1000);
        // Old nanosecond kernels advertise 1e9 resolution: t2us := us2t.
        let c = PschedClock::parse("000003e8 00000040 3b9aca00 3b9aca00").unwrap();
        assert_eq!((c.tick_in_usec, c.hz), (1000.0, 100));
        assert!(PschedClock::parse("zz").is_none());
        assert!(PschedClock::parse("000003e8 00000000 000f4240").is_none());
        assert_eq!(PschedClock::HIGH_RES.ticks(2_500_000, 1600), 10_000);
        assert_eq!(PschedClock::HIGH_RES.ticks(12_500_000, 1600), 2_000);
    }
}
