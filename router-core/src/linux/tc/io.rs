//! The netlink I/O: the [`Tc`] handle that dumps a link's HTB tree and
//! programs the planned one in as few changes as it can.

use super::decode::{
    DumpedFilter, RootQdisc, class_matches, decode_class, decode_filter, decode_root_qdisc,
    filters_match, same_parent,
};
use super::encode::tc_message;
use super::error::{Counters, bump};
use super::plan_htb;
use super::{
    ApplyReport, DEFAULT_QUANTUM_FLOOR, FilterKind, HTB_MAJOR, HtbClass, HtbClassStats, HtbLink,
    HtbPlan, MAX_CLASSES, PschedClock, ShareTreeConfig, ShareTreeError, TC_H_ROOT, TcCounters,
    TcError, TcId, TcObject, htb_class_message, htb_qdisc_message, u32_filter_message,
};
use crate::classify::VirtualSubnet;
use futures::StreamExt;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::tc::{TcMessage, TcU32Selector};
use resource_mgr::ShareSpec;
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage,
    NetlinkPayload,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};

/// Most objects read from one kernel dump.
const MAX_DUMP: usize = 65_536;
/// First priority of each filter band: IPv4 at +0, IPv6 at +1, catch-all at +2.
const BANDS: [u16; 2] = [10, 20];

/// A blocking rtnetlink connection for tc, bound to the network namespace of
/// the thread that opened it (like [`Netlink`](crate::linux::Netlink); do not call it
/// from inside another tokio runtime).
#[derive(Debug)]
pub struct Tc {
    rt: crate::linux::netlink::Driver,
    handle: rtnetlink::Handle,
    clock: PschedClock,
    counters: Counters,
}

/// The link a step of an apply works on.
#[derive(Debug, Clone, Copy)]
struct At<'a> {
    ifindex: i32,
    link: &'a str,
}

/// One request outcome before it is named.
type Raw<T> = Result<T, rtnetlink::Error>;

impl Tc {
    /// Connect in the calling thread's network namespace and read the kernel's
    /// scheduler clock.
    pub fn open() -> Result<Self, TcError> {
        Self::connect(None)
    }

    /// As [`Tc::open`], driven by the process's (multi-thread) runtime `rt`
    /// instead of a private one; call it from threads that are not the runtime's.
    pub fn open_on(rt: &tokio::runtime::Handle) -> Result<Self, TcError> {
        Self::connect(Some(rt))
    }

    fn connect(on: Option<&tokio::runtime::Handle>) -> Result<Self, TcError> {
        let (rt, handle) =
            crate::linux::netlink::connect(on).map_err(|source| TcError::Connect { source })?;
        Ok(Self {
            rt,
            handle,
            clock: PschedClock::read(),
            counters: Counters::default(),
        })
    }

    /// The scheduler clock bursts are computed with.
    pub fn clock(&self) -> PschedClock {
        self.clock
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> TcCounters {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TcCounters {
            applies: l(&c.applies),
            apply_failures: l(&c.apply_failures),
            config_errors: l(&c.config_errors),
            requests: l(&c.requests),
            request_failures: l(&c.request_failures),
            rebuilds: l(&c.rebuilds),
            filter_swaps: l(&c.filter_swaps),
            dump_truncated: l(&c.dump_truncated),
            stale_default: l(&c.stale_default),
        }
    }

    /// Index of link `name`.
    pub fn link_index(&self, name: &str) -> Result<i32, TcError> {
        self.link(name).map(|(index, _)| index)
    }

    /// Index of link `name` and the largest GSO packet it may be handed.
    fn link(&self, name: &str) -> Result<(i32, Option<u32>), TcError> {
        let req = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        let found = self.rt.block_on(async {
            let mut s = std::pin::pin!(req);
            futures::TryStreamExt::try_next(&mut s).await
        });
        let missing = || TcError::NoSuchLink {
            name: name.to_owned(),
        };
        match found {
            Ok(Some(msg)) => {
                let gso = msg
                    .attributes
                    .iter()
                    .filter_map(|a| match a {
                        LinkAttribute::GsoMaxSize(n) | LinkAttribute::GsoIpv4MaxSize(n) => Some(*n),
                        _ => None,
                    })
                    .max();
                let index = i32::try_from(msg.header.index).map_err(|_| missing())?;
                Ok((index, gso))
            }
            Ok(None) => Err(missing()),
            // A missing name comes back as ENODEV.
            Err(rtnetlink::Error::NetlinkError(m))
                if m.code.map(|c| c.get().abs()) == Some(nix::libc::ENODEV) =>
            {
                Err(missing())
            }
            Err(e) => Err(self.name_error("dump", TcObject::Dump { what: "links" }, name, e)),
        }
    }

    fn name_error(
        &self,
        op: &'static str,
        object: TcObject,
        link: &str,
        source: rtnetlink::Error,
    ) -> TcError {
        bump(&self.counters.request_failures);
        let errno = match &source {
            rtnetlink::Error::NetlinkError(m) => m.code.map(|c| c.get().abs()),
            _ => None,
        };
        tracing::debug!(op, %object, link, ?errno, "tc request refused");
        TcError::Request {
            op,
            object,
            link: link.to_owned(),
            errno,
            source: Box::new(source),
        }
    }

    /// Sends one request and waits for its acknowledgement.
    fn send(&self, msg: RouteNetlinkMessage, flags: u16) -> Raw<()> {
        bump(&self.counters.requests);
        request_ack(&self.rt, &self.handle, msg, flags)
    }

    /// Dumps and returns at most [`MAX_DUMP`] tc messages.
    fn dump(&self, msg: RouteNetlinkMessage) -> Raw<Vec<TcMessage>> {
        bump(&self.counters.requests);
        let (out, truncated) = request_dump(&self.rt, &self.handle, msg, MAX_DUMP, |_| true)?;
        if truncated > 0 {
            self.counters
                .dump_truncated
                .fetch_add(truncated, Ordering::Relaxed);
            tracing::warn!(truncated, limit = MAX_DUMP, "tc dump truncated");
        }
        Ok(out)
    }

    fn root_qdisc(&self, ifindex: i32, link: &str) -> Result<Option<RootQdisc>, TcError> {
        let msgs = self
            .dump(RouteNetlinkMessage::GetQueueDiscipline(
                TcMessage::with_index(ifindex),
            ))
            .map_err(|e| self.name_error("dump", TcObject::Dump { what: "qdiscs" }, link, e))?;
        Ok(msgs.iter().find_map(|m| decode_root_qdisc(m, ifindex)))
    }

    fn classes(&self, ifindex: i32, link: &str) -> Result<Vec<HtbClassStats>, TcError> {
        let msg = tc_message(ifindex, 0, TcId::new(HTB_MAJOR, 0).0, 0);
        let msgs = self
            .dump(RouteNetlinkMessage::GetTrafficClass(msg))
            .map_err(|e| self.name_error("dump", TcObject::Dump { what: "classes" }, link, e))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.index == ifindex)
            .filter_map(decode_class)
            .filter(|c| c.id.major() == HTB_MAJOR)
            .collect())
    }

    fn filters(&self, ifindex: i32, link: &str) -> Result<Vec<DumpedFilter>, TcError> {
        let msg = tc_message(ifindex, 0, TcId::new(HTB_MAJOR, 0).0, 0);
        let msgs = self
            .dump(RouteNetlinkMessage::GetTrafficFilter(msg))
            .map_err(|e| self.name_error("dump", TcObject::Dump { what: "filters" }, link, e))?;
        let mut out = Vec::new();
        for m in msgs.iter().filter(|m| m.header.index == ifindex) {
            match decode_filter(m) {
                Some(f) => out.push(f),
                // Not u32: still occupies its priority, which is all the band
                // logic needs, and never matches a planned filter.
                None => out.push(DumpedFilter {
                    prio: (m.header.info >> 16) as u16,
                    protocol: 0,
                    node: 0,
                    class: TcId(0),
                    selector: Some(TcU32Selector::default()),
                }),
            }
        }
        Ok(out)
    }

    /// The HTB classes of link `ifname` (under `1:`) with their counters.
    pub fn class_stats(&self, ifname: &str) -> Result<Vec<HtbClassStats>, TcError> {
        let ifindex = self.link_index(ifname)?;
        self.classes(ifindex, ifname)
    }

    fn delete_prio(&self, ifindex: i32, link: &str, prio: u16) -> Result<(), TcError> {
        let msg = tc_message(ifindex, 0, TcId::new(HTB_MAJOR, 0).0, u32::from(prio) << 16);
        match self.send(RouteNetlinkMessage::DelTrafficFilter(msg), 0) {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = self.name_error("delete", TcObject::FilterPrio { prio }, link, e);
                // Already gone is what we wanted.
                if e.errno() == Some(nix::libc::ENOENT) {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    fn delete_qdisc(&self, ifindex: i32, link: &str) -> Result<(), TcError> {
        let msg = tc_message(ifindex, TcId::new(HTB_MAJOR, 0).0, TC_H_ROOT, 0);
        self.send(RouteNetlinkMessage::DelQueueDiscipline(msg), 0)
            .map_err(|e| {
                self.name_error(
                    "delete",
                    TcObject::Qdisc {
                        handle: TcId::new(HTB_MAJOR, 0),
                    },
                    link,
                    e,
                )
            })
    }

    fn config_error(&self, link: &str, source: ShareTreeError) -> TcError {
        bump(&self.counters.config_errors);
        TcError::Config {
            link: link.to_owned(),
            source,
        }
    }

    /// Plans `spec` on `htb` for link `link` and programs it.
    fn apply(
        &self,
        link: &str,
        spec: &ShareSpec<VirtualSubnet>,
        htb: HtbLink,
    ) -> Result<ApplyReport, TcError> {
        // Refuse a bad tree before touching the link.
        plan_htb(spec, &htb, &PschedClock::HIGH_RES).map_err(|e| self.config_error(link, e))?;
        let (ifindex, gso) = self.link(link)?;
        let resolved = HtbLink {
            quantum_floor: htb
                .quantum_floor
                .or(Some(gso.unwrap_or(DEFAULT_QUANTUM_FLOOR).max(htb.mtu))),
            ..htb
        };
        let plan =
            plan_htb(spec, &resolved, &self.clock).map_err(|e| self.config_error(link, e))?;
        let mut report = ApplyReport::default();
        let at = At { ifindex, link };
        let existing = self.apply_qdisc(at, &plan, &mut report)?;
        let have: BTreeMap<TcId, &HtbClassStats> = existing.iter().map(|c| (c.id, c)).collect();
        self.apply_classes(at, &plan, &have, &mut report)?;
        self.apply_filters(at, &plan, &mut report)?;
        self.delete_stale_classes(at, &plan, &have, &mut report)?;
        tracing::info!(
            link,
            created = report.classes_created,
            changed = report.classes_changed,
            deleted = report.classes_deleted,
            filters = report.filters_installed,
            band = report.filter_band,
            qdisc_created = report.qdisc_created,
            rebuilt = report.rebuilt,
            "share tree applied"
        );
        Ok(report)
    }

    /// Step 1: makes the root qdisc `htb 1:` (rebuilt if a class changed
    /// parent). Returns the classes that survive, as dumped.
    fn apply_qdisc(
        &self,
        at: At<'_>,
        plan: &HtbPlan,
        report: &mut ApplyReport,
    ) -> Result<Vec<HtbClassStats>, TcError> {
        let At { ifindex, link } = at;
        let qdisc = TcId::new(HTB_MAJOR, 0);
        let root = self.root_qdisc(ifindex, link)?;
        let ours = root
            .as_ref()
            .is_some_and(|r| r.kind == "htb" && r.handle == qdisc);
        let mut existing = if ours {
            self.classes(ifindex, link)?
        } else {
            Vec::new()
        };
        let wanted: BTreeMap<TcId, &HtbClass> = plan.classes.iter().map(|c| (c.id, c)).collect();
        let moved = existing.iter().any(|e| {
            wanted
                .get(&e.id)
                .is_some_and(|w| !same_parent(e.parent, w.parent))
        });
        if ours && moved {
            tracing::info!(link, "a class changed parent; rebuilding the HTB qdisc");
            bump(&self.counters.rebuilds);
            self.delete_qdisc(ifindex, link)?;
            report.rebuilt = true;
            existing.clear();
        }
        if !ours || moved {
            let msg = htb_qdisc_message(ifindex, plan.default_class);
            self.send(
                RouteNetlinkMessage::NewQueueDiscipline(msg),
                NLM_F_CREATE | NLM_F_REPLACE,
            )
            .map_err(|e| self.name_error("add", TcObject::Qdisc { handle: qdisc }, link, e))?;
            report.qdisc_created = true;
        } else if root.as_ref().and_then(|r| r.default_minor)
            != Some(u32::from(plan.default_class.minor()))
        {
            // HTB has no change operation; the catch-all filter classifies.
            bump(&self.counters.stale_default);
            tracing::debug!(link, default = %plan.default_class,
                "HTB default class is stale; the catch-all filter applies the new one");
        }
        Ok(existing)
    }

    /// Step 2: classes, parents first, created or changed in place.
    fn apply_classes(
        &self,
        at: At<'_>,
        plan: &HtbPlan,
        have: &BTreeMap<TcId, &HtbClassStats>,
        report: &mut ApplyReport,
    ) -> Result<(), TcError> {
        let At { ifindex, link } = at;
        for c in &plan.classes {
            let op = match have.get(&c.id) {
                Some(k) if class_matches(k, c, &self.clock) => {
                    report.classes_unchanged += 1;
                    continue;
                }
                Some(_) => "change",
                None => "add",
            };
            let msg = htb_class_message(ifindex, c, &self.clock, plan.mtu);
            self.send(RouteNetlinkMessage::NewTrafficClass(msg), NLM_F_CREATE)
                .map_err(|e| self.name_error(op, TcObject::Class { id: c.id }, link, e))?;
            if op == "add" {
                report.classes_created += 1;
            } else {
                report.classes_changed += 1;
            }
            tracing::debug!(link, class = %c.id, parent = %c.parent, rate = c.rate,
                ceil = c.ceil, quantum = c.quantum, op, "HTB class programmed");
        }
        Ok(())
    }

    /// Step 3: filters, make before break (see the module docs).
    fn apply_filters(
        &self,
        at: At<'_>,
        plan: &HtbPlan,
        report: &mut ApplyReport,
    ) -> Result<(), TcError> {
        let At { ifindex, link } = at;
        let dumped = if report.qdisc_created {
            Vec::new()
        } else {
            self.filters(ifindex, link)?
        };
        let in_band = |band: u16| -> Vec<&DumpedFilter> {
            dumped
                .iter()
                .filter(|f| (band..band + 3).contains(&f.prio))
                .collect()
        };
        let (a, b) = (in_band(BANDS[0]), in_band(BANDS[1]));
        let (live, target) = match (a.is_empty(), b.is_empty()) {
            (true, true) => (None, BANDS[0]),
            (false, true) => (Some(BANDS[0]), BANDS[1]),
            (true, false) => (Some(BANDS[1]), BANDS[0]),
            // An earlier apply stopped half way: the lower band is the one
            // that classifies; rebuild the other.
            (false, false) => (Some(BANDS[0]), BANDS[1]),
        };
        let live_matches = live.is_some_and(|band| {
            filters_match(if band == BANDS[0] { &a } else { &b }, band, &plan.filters)
        });
        if live_matches {
            report.filter_band = live.unwrap_or(BANDS[0]);
            if !a.is_empty() && !b.is_empty() {
                for kind in FilterKind::ALL {
                    self.delete_prio(ifindex, link, BANDS[1] + kind.offset())?;
                }
            }
            return Ok(());
        }
        for kind in FilterKind::ALL {
            self.delete_prio(ifindex, link, target + kind.offset())?;
        }
        for f in &plan.filters {
            let prio = target + f.kind.offset();
            let msg = u32_filter_message(ifindex, prio, f);
            self.send(RouteNetlinkMessage::NewTrafficFilter(msg), NLM_F_CREATE)
                .map_err(|e| {
                    let object = TcObject::Filter {
                        prio,
                        node: f.node,
                        subnet: f.subnet,
                        class: f.class,
                    };
                    self.name_error("add", object, link, e)
                })?;
            report.filters_installed += 1;
        }
        if let Some(old) = live {
            // Catch-all first: packets the old prefixes miss fall through
            // to the new band rather than to the old default.
            for kind in [FilterKind::CatchAll, FilterKind::V6, FilterKind::V4] {
                self.delete_prio(ifindex, link, old + kind.offset())?;
            }
            bump(&self.counters.filter_swaps);
        }
        report.filter_band = target;
        Ok(())
    }

    /// Step 4: classes no longer configured, deepest first.
    fn delete_stale_classes(
        &self,
        at: At<'_>,
        plan: &HtbPlan,
        have: &BTreeMap<TcId, &HtbClassStats>,
        report: &mut ApplyReport,
    ) -> Result<(), TcError> {
        let At { ifindex, link } = at;
        let wanted: BTreeSet<TcId> = plan.classes.iter().map(|c| c.id).collect();
        let mut stale: Vec<&HtbClassStats> = have
            .values()
            .copied()
            .filter(|e| !wanted.contains(&e.id))
            .collect();
        let depth = |id: TcId| {
            let mut d = 0;
            let mut at = have.get(&id).map(|c| c.parent);
            while let Some(p) = at {
                d += 1;
                at = have.get(&p).map(|c| c.parent);
                if d > MAX_CLASSES {
                    break;
                }
            }
            d
        };
        stale.sort_by_key(|c| std::cmp::Reverse(depth(c.id)));
        for c in stale {
            let msg = tc_message(ifindex, c.id.0, 0, 0);
            self.send(RouteNetlinkMessage::DelTrafficClass(msg), 0)
                .map_err(|e| self.name_error("delete", TcObject::Class { id: c.id }, link, e))?;
            report.classes_deleted += 1;
        }
        Ok(())
    }
}

/// Sends one tc request on `handle` and waits for its acknowledgement (also
/// used by the egress stage's capture).
pub(crate) fn request_ack(
    rt: &crate::linux::netlink::Driver,
    handle: &rtnetlink::Handle,
    msg: RouteNetlinkMessage,
    flags: u16,
) -> Raw<()> {
    let mut req = NetlinkMessage::from(msg);
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    let mut handle = handle.clone();
    rt.block_on(async move {
        let mut resp = handle.request(req)?;
        while let Some(m) = resp.next().await {
            if let NetlinkPayload::Error(e) = m.payload {
                return Err(rtnetlink::Error::NetlinkError(e));
            }
        }
        Ok(())
    })
}

/// Dumps the qdiscs, classes or filters `msg` asks for: at most `max` of
/// those `keep` accepts, and how many more there were.
pub(crate) fn request_dump(
    rt: &crate::linux::netlink::Driver,
    handle: &rtnetlink::Handle,
    msg: RouteNetlinkMessage,
    max: usize,
    keep: impl Fn(&TcMessage) -> bool + Send + 'static,
) -> Raw<(Vec<TcMessage>, u64)> {
    let mut req = NetlinkMessage::from(msg);
    req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut handle = handle.clone();
    rt.block_on(async move {
        let mut resp = handle.request(req)?;
        let mut out = Vec::new();
        let mut truncated = 0_u64;
        while let Some(m) = resp.next().await {
            let tc = match m.payload {
                NetlinkPayload::Error(e) => return Err(rtnetlink::Error::NetlinkError(e)),
                NetlinkPayload::InnerMessage(
                    RouteNetlinkMessage::NewQueueDiscipline(t)
                    | RouteNetlinkMessage::NewTrafficClass(t)
                    | RouteNetlinkMessage::NewTrafficFilter(t),
                ) if keep(&t) => t,
                _ => continue,
            };
            if out.len() < max {
                out.push(tc);
            } else {
                truncated += 1;
            }
        }
        Ok((out, truncated))
    })
}

/// Realise `config` on the egress of link `ifname`: create or update the HTB
/// tree and its filters in place (see the module docs). Idempotent; the first
/// error stops it and names the object, leaving what was done so far (apply
/// again to converge). The config is checked, then realised as its
/// share-tree model ([`ShareTreeConfig::spec`], [`apply_share_spec`]).
pub fn apply_share_tree(
    tc: &Tc,
    ifname: &str,
    config: &ShareTreeConfig,
) -> Result<ApplyReport, TcError> {
    counted(tc, ifname, || {
        let spec = config
            .validate()
            .and_then(|()| config.spec())
            .map_err(|e| tc.config_error(ifname, e))?;
        tc.apply(ifname, &spec, config.htb_link())
    })
}

/// Realise resource-mgr's share-tree model `spec` on link `ifname` as HTB
/// with the link parameters `htb` (see [`apply_share_tree`]).
pub fn apply_share_spec(
    tc: &Tc,
    ifname: &str,
    spec: &ShareSpec<VirtualSubnet>,
    htb: HtbLink,
) -> Result<ApplyReport, TcError> {
    counted(tc, ifname, || tc.apply(ifname, spec, htb))
}

/// Counts an apply and its failure, and logs the failure.
fn counted(
    tc: &Tc,
    ifname: &str,
    apply: impl FnOnce() -> Result<ApplyReport, TcError>,
) -> Result<ApplyReport, TcError> {
    bump(&tc.counters.applies);
    let r = apply();
    if let Err(error) = &r {
        bump(&tc.counters.apply_failures);
        tracing::warn!(link = ifname, %error, "share tree not applied");
    }
    r
}

/// Remove the share tree from link `ifname`: delete its root qdisc if it is
/// ours (`htb 1:`). Returns whether there was one.
pub fn remove_share_tree(tc: &Tc, ifname: &str) -> Result<bool, TcError> {
    let ifindex = tc.link_index(ifname)?;
    let ours = tc
        .root_qdisc(ifindex, ifname)?
        .is_some_and(|r| r.kind == "htb" && r.handle == TcId::new(HTB_MAJOR, 0));
    if ours {
        tc.delete_qdisc(ifindex, ifname)?;
        tracing::info!(link = ifname, "share tree removed");
    }
    Ok(ours)
}
