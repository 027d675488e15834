//! Dump decoding: the kernel's qdiscs, classes and filters read back into
//! structs, and the comparisons that tell whether they already are the plan.

use super::encode::{
    NLA_TYPE_MASK, TCA_HTB_CEIL64, TCA_HTB_INIT, TCA_HTB_PARMS, TCA_HTB_RATE64, TCA_OPTIONS,
};
use super::{HTB_MAJOR, HtbClass, PschedClock, TC_H_ROOT, TcId, U32Filter};
use netlink_packet_route::tc::{
    TcAttribute, TcFilterU32Option, TcMessage, TcOption, TcStats2, TcU32Selector, TcXstats,
};
use rtnetlink::packet_core::{Nla, NlaBuffer, NlasIterator};

/// The raw content of an attribute the crate keeps as a [`DefaultNla`].
fn nla_value(nla: &impl Nla) -> Vec<u8> {
    let mut v = vec![0; nla.value_len()];
    nla.emit_value(&mut v);
    v
}

/// The nested options of a kind netlink-packet-route does not model: it keeps
/// the whole `TCA_OPTIONS` as one attribute.
fn raw_options(attrs: &[TcAttribute]) -> Option<Vec<u8>> {
    attrs.iter().find_map(|a| match a {
        TcAttribute::Options(opts) => opts.iter().find_map(|o| match o {
            TcOption::Other(nla) if nla.kind() & NLA_TYPE_MASK == TCA_OPTIONS => {
                Some(nla_value(nla))
            }
            _ => None,
        }),
        _ => None,
    })
}

fn kind_of(attrs: &[TcAttribute]) -> Option<&str> {
    attrs.iter().find_map(|a| match a {
        TcAttribute::Kind(k) => Some(k.as_str()),
        _ => None,
    })
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off + 4)?;
    Some(u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_of(b: &[u8]) -> Option<u64> {
    let s = b.get(..8)?;
    let mut a = [0; 8];
    a.copy_from_slice(s);
    Some(u64::from_ne_bytes(a))
}

/// A class as the kernel reports it, with its counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct HtbClassStats {
    /// `1:ID`.
    pub id: TcId,
    /// Its parent (`root` for the root class).
    pub parent: TcId,
    /// Rate, bytes per second.
    pub rate: u64,
    /// Ceil, bytes per second.
    pub ceil: u64,
    /// Burst at rate, in scheduler ticks.
    pub buffer_ticks: u32,
    /// Burst at ceil, in scheduler ticks.
    pub cbuffer_ticks: u32,
    /// DRR quantum, bytes.
    pub quantum: u32,
    /// HTB level (0 for a leaf).
    pub level: u32,
    /// Bytes sent.
    pub bytes: u64,
    /// Packets sent.
    pub packets: u64,
    /// Packets dropped.
    pub drops: u64,
    /// Times the class was over its limits.
    pub overlimits: u64,
    /// Packets queued now.
    pub qlen: u32,
    /// Times it lent to a descendant.
    pub lends: u32,
    /// Times it borrowed from an ancestor.
    pub borrows: u32,
}

pub(super) fn decode_class(m: &TcMessage) -> Option<HtbClassStats> {
    if kind_of(&m.attributes) != Some("htb") {
        return None;
    }
    let mut s = HtbClassStats {
        id: TcId(m.header.handle.into()),
        parent: TcId(m.header.parent.into()),
        rate: 0,
        ceil: 0,
        buffer_ticks: 0,
        cbuffer_ticks: 0,
        quantum: 0,
        level: 0,
        bytes: 0,
        packets: 0,
        drops: 0,
        overlimits: 0,
        qlen: 0,
        lends: 0,
        borrows: 0,
    };
    let opts = raw_options(&m.attributes)?;
    let (mut rate64, mut ceil64) = (None, None);
    for nla in NlasIterator::new(&opts[..]) {
        let nla: NlaBuffer<&[u8]> = nla.ok()?;
        let v = nla.value();
        match nla.kind() & NLA_TYPE_MASK {
            TCA_HTB_PARMS => {
                s.rate = u64::from(u32_at(v, 8)?);
                s.ceil = u64::from(u32_at(v, 20)?);
                s.buffer_ticks = u32_at(v, 24)?;
                s.cbuffer_ticks = u32_at(v, 28)?;
                s.quantum = u32_at(v, 32)?;
                s.level = u32_at(v, 36)?;
            }
            TCA_HTB_RATE64 => rate64 = u64_of(v),
            TCA_HTB_CEIL64 => ceil64 = u64_of(v),
            _ => {}
        }
    }
    s.rate = rate64.unwrap_or(s.rate);
    s.ceil = ceil64.unwrap_or(s.ceil);
    for a in &m.attributes {
        match a {
            TcAttribute::Stats2(list) => {
                for st in list {
                    match st {
                        TcStats2::Basic(b) => {
                            s.bytes = b.bytes;
                            s.packets = u64::from(b.packets);
                        }
                        TcStats2::Queue(q) => {
                            s.drops = u64::from(q.drops);
                            s.overlimits = u64::from(q.overlimits);
                            s.qlen = q.qlen;
                        }
                        TcStats2::App(TcXstats::Other(x)) => {
                            s.lends = u32_at(x, 0).unwrap_or(0);
                            s.borrows = u32_at(x, 4).unwrap_or(0);
                        }
                        _ => {}
                    }
                }
            }
            TcAttribute::Xstats(TcXstats::Other(x)) => {
                s.lends = u32_at(x, 0).unwrap_or(s.lends);
                s.borrows = u32_at(x, 4).unwrap_or(s.borrows);
            }
            _ => {}
        }
    }
    Some(s)
}

/// A u32 filter node as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DumpedFilter {
    pub(super) prio: u16,
    pub(super) protocol: u16,
    pub(super) node: u16,
    pub(super) class: TcId,
    /// `None` for the priority's own entry and hash tables: no match node.
    pub(super) selector: Option<TcU32Selector>,
}

pub(super) fn decode_filter(m: &TcMessage) -> Option<DumpedFilter> {
    if kind_of(&m.attributes) != Some("u32") {
        return None;
    }
    let (mut class, mut selector) = (None, None);
    for a in &m.attributes {
        if let TcAttribute::Options(opts) = a {
            for o in opts {
                match o {
                    TcOption::U32(TcFilterU32Option::ClassId(c)) => {
                        class = Some(TcId(u32::from(*c)));
                    }
                    TcOption::U32(TcFilterU32Option::Selector(s)) => selector = Some(s.clone()),
                    _ => {}
                }
            }
        }
    }
    let info = m.header.info;
    Some(DumpedFilter {
        prio: (info >> 16) as u16,
        protocol: u16::from_be_bytes(((info & 0xffff) as u16).to_ne_bytes()),
        node: (u32::from(m.header.handle) & 0xfff) as u16,
        class: class.unwrap_or(TcId(0)),
        selector,
    })
}

/// The root qdisc of a link as dumped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RootQdisc {
    pub(super) kind: String,
    pub(super) handle: TcId,
    pub(super) default_minor: Option<u32>,
}

pub(super) fn decode_root_qdisc(m: &TcMessage, ifindex: i32) -> Option<RootQdisc> {
    if m.header.index != ifindex || u32::from(m.header.parent) != TC_H_ROOT {
        return None;
    }
    let kind = kind_of(&m.attributes)?.to_owned();
    let default_minor = if kind == "htb" {
        raw_options(&m.attributes).and_then(|o| {
            NlasIterator::new(&o[..])
                .filter_map(Result::ok)
                .find(|n: &NlaBuffer<&[u8]>| n.kind() & NLA_TYPE_MASK == TCA_HTB_INIT)
                .and_then(|n| u32_at(n.value(), 8))
        })
    } else {
        None
    };
    Some(RootQdisc {
        kind,
        handle: TcId(m.header.handle.into()),
        default_minor,
    })
}

/// Whether a dumped parent is the planned one (the root class reports `root`
/// where it was created under `1:`).
pub(super) fn same_parent(dumped: TcId, planned: TcId) -> bool {
    dumped == planned || (dumped.0 == TC_H_ROOT && planned == TcId::new(HTB_MAJOR, 0))
}

/// Whether the kernel's class already has the planned parameters (quanta only
/// for leaves: HTB keeps none for inner classes).
pub(super) fn class_matches(k: &HtbClassStats, c: &HtbClass, clock: &PschedClock) -> bool {
    same_parent(k.parent, c.parent)
        && k.rate == c.rate
        && k.ceil == c.ceil
        && k.buffer_ticks == clock.ticks(c.rate, u64::from(c.burst))
        && k.cbuffer_ticks == clock.ticks(c.ceil, u64::from(c.cburst))
        && (!c.leaf || (k.level == 0 && k.quantum == c.quantum))
}

/// Whether the dumped filters of `band` are exactly the planned ones.
pub(super) fn filters_match(dumped: &[&DumpedFilter], band: u16, planned: &[U32Filter]) -> bool {
    let mut have: Vec<(u16, u16, u16, TcId, &TcU32Selector)> = dumped
        .iter()
        .filter_map(|f| Some((f.prio, f.protocol, f.node, f.class, f.selector.as_ref()?)))
        .collect();
    have.sort_by_key(|h| (h.0, h.2));
    let want: Vec<(u16, u16, u16, TcId, Option<TcU32Selector>)> = planned
        .iter()
        .map(|f| {
            (
                band + f.kind.offset(),
                f.kind.protocol(),
                f.node,
                f.class,
                TcU32Selector::parse(&f.selector_bytes()).ok(),
            )
        })
        .collect();
    have.len() == want.len()
        && have.iter().zip(&want).all(|(h, w)| {
            h.0 == w.0 && h.1 == w.1 && h.2 == w.2 && h.3 == w.3 && w.4.as_ref() == Some(h.4)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux::tc::test_util::*;
    use crate::linux::tc::*;
    use rtnetlink::packet_core::Parseable;

    #[test]
    fn class_dump_round_trips_through_the_kernel_layout() {
        for c in [
            class(0x10, 2_500_000, 12_500_000),
            class(0x11, 6_250_000_000, 12_500_000_000),
        ] {
            let clock = PschedClock::HIGH_RES;
            let m = htb_class_message(3, &c, &clock, 1600);
            let parsed = TcMessage::parse(&bytes(&m)[..]).unwrap();
            let d = decode_class(&parsed).unwrap();
            assert_eq!(
                (d.id, d.parent, d.rate, d.ceil),
                (c.id, c.parent, c.rate, c.ceil)
            );
            assert_eq!(d.quantum, 1600);
            assert!(class_matches(&d, &c, &clock));
            let mut other = c;
            other.quantum += 1;
            assert!(!class_matches(&d, &other, &clock));
            other = c;
            other.parent = TcId::new(1, 2);
            assert!(!class_matches(&d, &other, &clock));
        }
    }

    #[test]
    fn filter_dump_round_trips_and_compares() {
        let p = tenants().plan(&PschedClock::HIGH_RES).unwrap();
        let dumped: Vec<DumpedFilter> = p
            .filters
            .iter()
            .map(|f| {
                let m = u32_filter_message(3, 20 + f.kind.offset(), f);
                decode_filter(&TcMessage::parse(&bytes(&m)[..]).unwrap()).unwrap()
            })
            .collect();
        assert_eq!(dumped[0].protocol, ETH_P_IP);
        assert_eq!(dumped[3].protocol, ETH_P_ALL);
        assert_eq!(dumped[1].node, 2);
        // The kernel also reports each priority and its hash table, without a
        // selector: they are not filters.
        let table = DumpedFilter {
            prio: 20,
            protocol: ETH_P_IP,
            node: 0,
            class: TcId(0),
            selector: None,
        };
        let mut refs: Vec<&DumpedFilter> = vec![&table];
        refs.extend(dumped.iter());
        assert!(filters_match(&refs, 20, &p.filters));
        let refs = &refs[1..];
        assert!(!filters_match(refs, 10, &p.filters), "band differs");
        assert!(!filters_match(&refs[..3], 20, &p.filters), "one missing");
        let moved = tenants()
            .with_default(0x10)
            .plan(&PschedClock::HIGH_RES)
            .unwrap();
        assert!(!filters_match(refs, 20, &moved.filters), "catch-all class");
        let mut cfg = tenants();
        cfg.filters[0].subnet = subnet("192.0.2.128/25");
        let narrowed = cfg.plan(&PschedClock::HIGH_RES).unwrap();
        assert!(!filters_match(refs, 20, &narrowed.filters), "prefix");
    }

    #[test]
    fn root_qdisc_dump_names_kind_handle_and_default() {
        let m = htb_qdisc_message(3, TcId::new(1, 0x30));
        let parsed = TcMessage::parse(&bytes(&m)[..]).unwrap();
        let r = decode_root_qdisc(&parsed, 3).unwrap();
        assert_eq!(r.kind, "htb");
        assert_eq!(r.handle, TcId::new(1, 0));
        assert_eq!(r.default_minor, Some(0x30));
        assert!(decode_root_qdisc(&parsed, 4).is_none());
    }
}
