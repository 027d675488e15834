//! rtnetlink control of links, addresses and routes, with typed errors.
//!
//! [`Netlink`] is blocking: it owns a single-threaded tokio runtime that drives the
//! netlink connection only while a call runs, so the blocking shells need no async
//! code. The socket belongs to the network namespace of the thread that called
//! [`Netlink::open`]; every later call acts there, whatever thread makes it. Do not
//! call it from inside another tokio runtime (use `spawn_blocking`).

use crate::classify::VirtualSubnet;
use futures::TryStreamExt;
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::route::{RouteScope, RouteType};
use rtnetlink::{LinkIpIp, LinkUnspec, RouteMessageBuilder};
use std::io;
use std::net::{IpAddr, Ipv4Addr};

/// Kernel routing table `local` (where `ip route add local ...` goes).
pub const RT_TABLE_LOCAL: u32 = 255;

/// Name of the throwaway link used to probe for the kernel's ipip support.
const IPIP_PROBE: &str = "pronto-probe0";

/// Errors of netlink operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetlinkError {
    /// The netlink socket or its runtime could not be created.
    #[error("cannot open a netlink connection: {source}")]
    Connect {
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// No link has this name in the namespace.
    #[error("no network interface named {name:?} in this namespace")]
    NoSuchLink {
        /// The name looked up.
        name: String,
    },
    /// The kernel refused a request; `errno` says why (EPERM: need CAP_NET_ADMIN;
    /// EEXIST: already there; EOPNOTSUPP: the kernel lacks the link kind).
    #[error("netlink {op} {target} failed: {source}")]
    Request {
        /// The operation, e.g. `"add route"`.
        op: &'static str,
        /// What it acted on.
        target: String,
        /// The errno the kernel returned, if it returned one.
        errno: Option<i32>,
        /// The rtnetlink error.
        #[source]
        source: rtnetlink::Error,
    },
    /// A route message could not be built from the subnet given.
    #[error("invalid route for {subnet}: {reason}")]
    InvalidRoute {
        /// The subnet.
        subnet: VirtualSubnet,
        /// Why.
        reason: String,
    },
}

impl NetlinkError {
    fn request(op: &'static str, target: impl ToString, source: rtnetlink::Error) -> Self {
        let errno = match &source {
            rtnetlink::Error::NetlinkError(m) => m.code.map(|c| c.get().abs()),
            _ => None,
        };
        Self::Request {
            op,
            target: target.to_string(),
            errno,
            source,
        }
    }

    /// The kernel's errno, if the kernel refused the request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Request { errno, .. } => *errno,
            _ => None,
        }
    }
}

/// What drives a netlink connection's task: a runtime of its own (tools, tests,
/// the host agent), or the daemon's runtime, which must have a worker thread
/// (multi-thread): a blocking call then waits on that runtime from the caller's
/// thread, which must not be one of the runtime's.
#[derive(Debug)]
pub(crate) enum Driver {
    /// A current-thread runtime owned by this connection.
    Own(tokio::runtime::Runtime),
    /// The process's runtime.
    Shared(tokio::runtime::Handle),
}

impl Driver {
    pub(crate) fn block_on<F: Future>(&self, f: F) -> F::Output {
        match self {
            Self::Own(rt) => rt.block_on(f),
            Self::Shared(h) => h.block_on(f),
        }
    }
}

/// An rtnetlink connection in the calling thread's network namespace, driven by
/// `on` or else by a current-thread runtime of its own (shared by [`Netlink`]
/// and the tc shell).
pub(crate) fn connect(
    on: Option<&tokio::runtime::Handle>,
) -> io::Result<(Driver, rtnetlink::Handle)> {
    let driver = match on {
        Some(h) => Driver::Shared(h.clone()),
        None => Driver::Own(
            tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()?,
        ),
    };
    let handle = match &driver {
        Driver::Own(rt) => {
            let _guard = rt.enter();
            let (conn, handle, _) = rtnetlink::new_connection()?;
            rt.spawn(conn);
            handle
        }
        Driver::Shared(h) => {
            let _guard = h.enter();
            let (conn, handle, _) = rtnetlink::new_connection()?;
            h.spawn(conn);
            handle
        }
    };
    Ok((driver, handle))
}

/// A blocking rtnetlink handle bound to one network namespace.
#[derive(Debug)]
pub struct Netlink {
    rt: Driver,
    handle: rtnetlink::Handle,
}

impl Netlink {
    /// Connect to rtnetlink in the calling thread's network namespace, with a
    /// runtime of its own.
    pub fn open() -> Result<Self, NetlinkError> {
        let (rt, handle) = connect(None).map_err(|source| NetlinkError::Connect { source })?;
        Ok(Self { rt, handle })
    }

    /// As [`Netlink::open`], driven by the process's (multi-thread) runtime
    /// `rt` instead of a private one; call it and its methods from threads that
    /// are not the runtime's.
    pub fn open_on(rt: &tokio::runtime::Handle) -> Result<Self, NetlinkError> {
        let (rt, handle) = connect(Some(rt)).map_err(|source| NetlinkError::Connect { source })?;
        Ok(Self { rt, handle })
    }

    /// Index of the link `name`.
    pub fn link_index(&self, name: &str) -> Result<u32, NetlinkError> {
        let req = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        let found = self.rt.block_on(async {
            let mut s = std::pin::pin!(req);
            s.try_next().await
        });
        match found {
            Ok(Some(msg)) => Ok(msg.header.index),
            Ok(None) => Err(NetlinkError::NoSuchLink {
                name: name.to_owned(),
            }),
            // ENODEV comes back as an error message for a missing name.
            Err(rtnetlink::Error::NetlinkError(m))
                if m.code.map(|c| c.get().abs()) == Some(libc_enodev()) =>
            {
                Err(NetlinkError::NoSuchLink {
                    name: name.to_owned(),
                })
            }
            Err(e) => Err(NetlinkError::request("get link", name, e)),
        }
    }

    /// Set a link administratively up.
    pub fn set_up(&self, index: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.rt
            .block_on(self.handle.link().set(msg).execute())
            .map_err(|e| NetlinkError::request("set link up", index, e))
    }

    /// Set a link's MTU.
    pub fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
        self.rt
            .block_on(self.handle.link().set(msg).execute())
            .map_err(|e| NetlinkError::request("set mtu", index, e))
    }

    /// Cap the segments of one GSO packet the kernel hands `index` (larger ones
    /// are segmented before it), like `ip link set gso_max_segs`.
    pub fn set_gso_max_segs(&self, index: u32, segs: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index)
            .append_extra_attribute(LinkAttribute::GsoMaxSegs(segs))
            .build();
        self.rt
            .block_on(self.handle.link().set(msg).execute())
            .map_err(|e| NetlinkError::request("set gso_max_segs", index, e))
    }

    /// Delete a link.
    pub fn delete_link(&self, index: u32) -> Result<(), NetlinkError> {
        self.rt
            .block_on(self.handle.link().del(index).execute())
            .map_err(|e| NetlinkError::request("delete link", index, e))
    }

    /// Add (or keep) `addr/prefix_len` on a link, like `ip addr replace`.
    pub fn add_address(
        &self,
        index: u32,
        addr: IpAddr,
        prefix_len: u8,
    ) -> Result<(), NetlinkError> {
        let req = self.handle.address().add(index, addr, prefix_len).replace();
        self.rt
            .block_on(req.execute())
            .map_err(|e| NetlinkError::request("add address", format!("{addr}/{prefix_len}"), e))
    }

    fn subnet_route(&self, subnet: VirtualSubnet) -> Result<RouteMessageBuilder, NetlinkError> {
        RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(subnet.addr(), subnet.prefix_len())
            .map_err(|e| NetlinkError::InvalidRoute {
                subnet,
                reason: e.to_string(),
            })
    }

    /// Route `subnet` out of link `index` (`ip route replace SUBNET dev DEV`): how
    /// served virtual subnets are steered into the router's TUN.
    pub fn route_to_link(&self, subnet: VirtualSubnet, index: u32) -> Result<(), NetlinkError> {
        let msg = self
            .subnet_route(subnet)?
            .output_interface(index)
            .scope(RouteScope::Link)
            .build();
        self.rt
            .block_on(self.handle.route().add(msg).replace().execute())
            .map_err(|e| NetlinkError::request("add route", subnet, e))
    }

    /// Remove the route of [`route_to_link`](Self::route_to_link).
    pub fn remove_route_to_link(
        &self,
        subnet: VirtualSubnet,
        index: u32,
    ) -> Result<(), NetlinkError> {
        let msg = self
            .subnet_route(subnet)?
            .output_interface(index)
            .scope(RouteScope::Link)
            .build();
        self.rt
            .block_on(self.handle.route().del(msg).execute())
            .map_err(|e| NetlinkError::request("delete route", subnet, e))
    }

    /// Route `subnet` via a gateway (`ip route replace SUBNET via GW`).
    pub fn route_via(&self, subnet: VirtualSubnet, gateway: IpAddr) -> Result<(), NetlinkError> {
        let msg = self
            .subnet_route(subnet)?
            .gateway(gateway)
            .map_err(|e| NetlinkError::InvalidRoute {
                subnet,
                reason: e.to_string(),
            })?
            .build();
        self.rt
            .block_on(self.handle.route().add(msg).replace().execute())
            .map_err(|e| NetlinkError::request("add route", subnet, e))
    }

    fn local_route(&self, subnet: VirtualSubnet) -> Result<RouteMessageBuilder, NetlinkError> {
        let lo = self.link_index("lo")?;
        Ok(self
            .subnet_route(subnet)?
            .output_interface(lo)
            .table_id(RT_TABLE_LOCAL)
            .kind(RouteType::Local)
            .scope(RouteScope::Host))
    }

    /// Make every address of `subnet` local (`ip route replace local SUBNET dev lo`,
    /// table local): the host accepts any VIP of the subnet and its TCP answers
    /// with the VIP as source (direct server return).
    pub fn add_local_route(&self, subnet: VirtualSubnet) -> Result<(), NetlinkError> {
        let msg = self.local_route(subnet)?.build();
        self.rt
            .block_on(self.handle.route().add(msg).replace().execute())
            .map_err(|e| NetlinkError::request("add local route", subnet, e))
    }

    /// Remove the route of [`add_local_route`](Self::add_local_route).
    pub fn remove_local_route(&self, subnet: VirtualSubnet) -> Result<(), NetlinkError> {
        let msg = self.local_route(subnet)?.build();
        self.rt
            .block_on(self.handle.route().del(msg).execute())
            .map_err(|e| NetlinkError::request("delete local route", subnet, e))
    }

    /// Create an ipip device terminating IPv4-in-IPv4 addressed to `local` from any
    /// remote (`ip link add NAME type ipip local LOCAL`). Fails with EOPNOTSUPP
    /// where the kernel has no ipip module.
    pub fn create_ipip(&self, name: &str, local: Ipv4Addr) -> Result<u32, NetlinkError> {
        let msg = LinkIpIp::new(name)
            .local(local)
            .ttl(0)
            .pmtudisc(true)
            .build();
        self.rt
            .block_on(self.handle.link().add(msg).execute())
            .map_err(|e| NetlinkError::request("add ipip link", name, e))?;
        self.link_index(name)
    }

    /// Whether the kernel can create ipip devices: tries to create a throwaway one
    /// and deletes it. Logs the outcome.
    pub fn kernel_has_ipip(&self) -> bool {
        let msg = LinkIpIp::new(IPIP_PROBE).build();
        let r = self.rt.block_on(self.handle.link().add(msg).execute());
        match r {
            Ok(()) => {
                if let Ok(i) = self.link_index(IPIP_PROBE) {
                    let _ = self.delete_link(i);
                }
                true
            }
            Err(e) => {
                let e = NetlinkError::request("add ipip link", IPIP_PROBE, e);
                // EEXIST: a probe left behind, so the kind exists.
                let exists = e.errno() == Some(libc_eexist());
                if exists && let Ok(i) = self.link_index(IPIP_PROBE) {
                    let _ = self.delete_link(i);
                }
                tracing::debug!(error = %e, "kernel ipip probe");
                exists
            }
        }
    }

    /// The names of the namespace's Ethernet links (veth, physical NICs): where
    /// a tc fast path attaches by default. Loopback, TUN and tunnel devices are
    /// not Ethernet.
    pub fn ethernet_links(&self) -> Result<Vec<String>, NetlinkError> {
        let req = self.handle.link().get().execute();
        let msgs: Vec<_> = self
            .rt
            .block_on(req.try_collect())
            .map_err(|e| NetlinkError::request("dump links", "all", e))?;
        Ok(msgs
            .into_iter()
            .filter(|m| {
                m.header.link_layer_type == netlink_packet_route::link::LinkLayerType::Ether
            })
            .filter_map(|m| {
                m.attributes.into_iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n),
                    _ => None,
                })
            })
            .collect())
    }

    /// The MTU of link `index`.
    pub fn mtu(&self, index: u32) -> Result<u32, NetlinkError> {
        let req = self.handle.link().get().match_index(index).execute();
        let msg = self
            .rt
            .block_on(async {
                let mut s = std::pin::pin!(req);
                s.try_next().await
            })
            .map_err(|e| NetlinkError::request("get link", index, e))?;
        Ok(msg
            .and_then(|m| {
                m.attributes.iter().find_map(|a| match a {
                    LinkAttribute::Mtu(m) => Some(*m),
                    _ => None,
                })
            })
            .unwrap_or(1500))
    }
}

fn libc_enodev() -> i32 {
    nix::libc::ENODEV
}

fn libc_eexist() -> i32 {
    nix::libc::EEXIST
}
