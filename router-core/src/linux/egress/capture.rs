//! The capture's kernel side over rtnetlink: the link and the TUN, the clsact
//! qdisc and the two egress filters; removes exactly what it added, also when
//! dropped half way through a start.

use super::filters::{
    CLSACT_HANDLE, EGRESS_PARENT, FILTER_PRIO_PASS, FILTER_PRIO_REDIRECT, INGRESS_PARENT,
    TC_H_CLSACT, clsact_message, delete_filter_message, pass_filter_message,
    redirect_filter_message,
};
use super::{EgressConfig, EgressError};
use crate::linux::netlink::{Driver, connect};
use crate::linux::tc::io::{request_ack, request_dump};
use crate::linux::{Netlink, sysctl};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::tc::{TcAttribute, TcMessage};
use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_EXCL};

/// Most tc objects read from one dump.
const MAX_DUMP: usize = 4096;

/// The kernel objects of one stage and the connections that made them.
#[derive(Debug)]
pub(super) struct Capture {
    links: Netlink,
    rt: Driver,
    tc: rtnetlink::Handle,
    link: String,
    ifindex: i32,
    mark: u32,
    tun_index: Option<u32>,
    /// The stage created the clsact qdisc (else it shares one).
    created_qdisc: bool,
    /// Filter priorities installed, in order.
    installed: Vec<u16>,
}

fn errno_of(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| c.get().abs()),
        _ => None,
    }
}

impl Capture {
    /// Connects in the calling thread's namespace, resolves the link and
    /// checks that the stage's filter priorities are free.
    pub(super) fn open(cfg: &EgressConfig) -> Result<Self, EgressError> {
        let link_err = |source| EgressError::Link {
            link: cfg.link.clone(),
            source: Box::new(source),
        };
        let links = Netlink::open().map_err(link_err)?;
        let index = links.link_index(&cfg.link).map_err(link_err)?;
        let (rt, tc) = connect(None).map_err(|source| EgressError::Connect { source })?;
        let ifindex = i32::try_from(index).map_err(|_| EgressError::Config {
            field: "link",
            reason: format!("interface index {index} out of range"),
        })?;
        let c = Self {
            links,
            rt,
            tc,
            link: cfg.link.clone(),
            ifindex,
            mark: cfg.mark,
            tun_index: None,
            created_qdisc: false,
            installed: Vec::new(),
        };
        let taken = if c.has_clsact()? {
            c.filters(EGRESS_PARENT)?
        } else {
            Vec::new()
        };
        for f in taken {
            let prio = (f.header.info >> 16) as u16;
            if prio == FILTER_PRIO_PASS || prio == FILTER_PRIO_REDIRECT {
                return Err(EgressError::PrioInUse {
                    link: c.link.clone(),
                    prio,
                });
            }
        }
        Ok(c)
    }

    /// The link's interface index.
    pub(super) fn link_index(&self) -> u32 {
        self.ifindex.unsigned_abs()
    }

    /// The link's MTU.
    pub(super) fn link_mtu(&self) -> Result<u32, EgressError> {
        let index = self.ifindex.unsigned_abs();
        self.links.mtu(index).map_err(|source| EgressError::Link {
            link: self.link.clone(),
            source: Box::new(source),
        })
    }

    /// Prepares the freshly created TUN `name`: IPv6 off (so the kernel sends
    /// nothing into it), up. Remembers its index for the redirect.
    pub(super) fn setup_tun(&mut self, name: &str) -> Result<(), EgressError> {
        let link_err = |source| EgressError::Link {
            link: name.to_owned(),
            source: Box::new(source),
        };
        if let Err(error) = sysctl::disable_ipv6(name) {
            tracing::debug!(tun = name, %error, "cannot turn IPv6 off on the capture TUN");
        }
        let index = self.links.link_index(name).map_err(link_err)?;
        self.links.set_up(index).map_err(link_err)?;
        self.tun_index = Some(index);
        Ok(())
    }

    fn tc_error(&self, op: &'static str, object: String, e: rtnetlink::Error) -> EgressError {
        let errno = errno_of(&e);
        tracing::debug!(op, %object, link = %self.link, ?errno, "tc request refused");
        EgressError::Tc {
            op,
            object,
            link: self.link.clone(),
            errno,
            source: Box::new(e),
        }
    }

    /// Sends one request and waits for its acknowledgement.
    fn send(&self, msg: RouteNetlinkMessage, flags: u16) -> Result<(), rtnetlink::Error> {
        request_ack(&self.rt, &self.tc, msg, flags)
    }

    /// This link's qdiscs or filters that `msg` dumps (at most [`MAX_DUMP`]).
    fn dump(&self, msg: RouteNetlinkMessage, what: &str) -> Result<Vec<TcMessage>, EgressError> {
        let ifindex = self.ifindex;
        request_dump(&self.rt, &self.tc, msg, MAX_DUMP, move |t| {
            t.header.index == ifindex
        })
        .map(|(out, _)| out)
        .map_err(|e| self.tc_error("dump", what.to_owned(), e))
    }

    fn filters(&self, parent: u32) -> Result<Vec<TcMessage>, EgressError> {
        let mut m = TcMessage::with_index(self.ifindex);
        m.header.parent = parent.into();
        self.dump(RouteNetlinkMessage::GetTrafficFilter(m), "filters")
    }

    fn has_clsact(&self) -> Result<bool, EgressError> {
        let qdiscs = self.dump(
            RouteNetlinkMessage::GetQueueDiscipline(TcMessage::with_index(self.ifindex)),
            "qdiscs",
        )?;
        Ok(qdiscs.iter().any(|q| {
            u32::from(q.header.parent) == TC_H_CLSACT
                && q.attributes
                    .iter()
                    .any(|a| matches!(a, TcAttribute::Kind(k) if k == "clsact"))
        }))
    }

    /// Adds clsact if absent, then the pass filter, then the redirect.
    pub(super) fn install_filters(&mut self) -> Result<(), EgressError> {
        let tun = self.tun_index.ok_or_else(|| EgressError::Config {
            field: "tun",
            reason: "the capture TUN was not set up".to_owned(),
        })?;
        if !self.has_clsact()? {
            let msg = RouteNetlinkMessage::NewQueueDiscipline(clsact_message(self.ifindex));
            match self.send(msg, NLM_F_CREATE | NLM_F_EXCL) {
                Ok(()) => self.created_qdisc = true,
                // Someone added one meanwhile: share it.
                Err(e) if errno_of(&e) == Some(nix::libc::EEXIST) => {}
                Err(e) => return Err(self.tc_error("add", "qdisc clsact".to_owned(), e)),
            }
        }
        let steps = [
            (
                FILTER_PRIO_PASS,
                pass_filter_message(self.ifindex, FILTER_PRIO_PASS, self.mark),
            ),
            (
                FILTER_PRIO_REDIRECT,
                redirect_filter_message(self.ifindex, FILTER_PRIO_REDIRECT, tun),
            ),
        ];
        for (prio, msg) in steps {
            self.send(
                RouteNetlinkMessage::NewTrafficFilter(msg),
                NLM_F_CREATE | NLM_F_EXCL,
            )
            .map_err(|e| self.tc_error("add", format!("egress filter prio {prio}"), e))?;
            self.installed.push(prio);
        }
        tracing::info!(link = %self.link, tun_index = tun, mark = self.mark,
            created_qdisc = self.created_qdisc, "egress capture installed");
        Ok(())
    }

    /// Deletes the filters it installed, the redirect first. Idempotent.
    pub(super) fn remove_filters(&mut self) -> Result<(), EgressError> {
        while let Some(&prio) = self.installed.last() {
            let msg =
                RouteNetlinkMessage::DelTrafficFilter(delete_filter_message(self.ifindex, prio));
            match self.send(msg, 0) {
                Ok(()) => {}
                // Gone already (the link went away, or someone removed it).
                Err(e) if matches!(errno_of(&e), Some(nix::libc::ENOENT | nix::libc::ENODEV)) => {}
                Err(e) => {
                    return Err(self.tc_error("delete", format!("egress filter prio {prio}"), e));
                }
            }
            self.installed.pop();
        }
        Ok(())
    }

    /// Deletes the clsact qdisc if the stage created it and no filter is left
    /// on either of its hooks. Idempotent.
    pub(super) fn remove_qdisc(&mut self) -> Result<(), EgressError> {
        self.remove_filters()?;
        if !self.created_qdisc {
            return Ok(());
        }
        if !self.filters(EGRESS_PARENT)?.is_empty() || !self.filters(INGRESS_PARENT)?.is_empty() {
            tracing::info!(link = %self.link, "clsact kept: other filters use it");
            self.created_qdisc = false;
            return Ok(());
        }
        let mut m = clsact_message(self.ifindex);
        m.header.handle = CLSACT_HANDLE.into();
        match self.send(RouteNetlinkMessage::DelQueueDiscipline(m), 0) {
            Ok(()) => {}
            Err(e) if matches!(errno_of(&e), Some(nix::libc::ENOENT | nix::libc::EINVAL)) => {}
            Err(e) => return Err(self.tc_error("delete", "qdisc clsact".to_owned(), e)),
        }
        self.created_qdisc = false;
        Ok(())
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Err(error) = self.remove_qdisc() {
            tracing::warn!(link = %self.link, %error, "egress capture not fully removed");
        }
    }
}
