//! What a router does with an authenticated server flow advertisement
//! (DESIGN.md §5, last row): re-create the flow's state if it has none, pass
//! the echo reply on along an existing pin, and never re-pin a flow.
//!
//! Shell duties, on `Verdict::Advert` (the buffer holds the echo reply, TTL
//! already decremented): find the advertisement with
//! `router_core::wire::flowad::find_in_echo_reply`, check it with
//! [`crate::AdvertAuth::verify`] against the wall clock, then call
//! [`handle_advert`] (or [`crate::SlrControl::handle_advert`]) and act on the
//! [`AdvertOutcome`]: `Relay { to }` -> `engine.encapsulate_to(pkt, to, now)`,
//! anything else -> consume the echo reply (the client already answered it).

use std::net::IpAddr;

use router_core::api::{ApiError, RouterApi};
use router_core::flow::{FlowEntry, FlowState};
use router_core::policy::Level;
use router_core::time::Instant;
use router_core::wire::flowad::AdvertFields;

/// What became of an advertisement.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AdvertOutcome {
    /// The flow had no state here: it is now pinned to the advertised server.
    Installed,
    /// The flow is already pinned to the advertised server: nothing to do.
    Current,
    /// The flow is pinned to another next hop `to` (the router that lost the
    /// state, e.g. a restarted site): send the echo reply on to it.
    Relay {
        /// The pinned next hop.
        to: IpAddr,
    },
    /// Refused; nothing moved.
    Rejected(AdvertRefusal),
}

/// Why an authenticated advertisement was still refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdvertRefusal {
    /// The advertised VIP is in no subnet served here.
    #[error("advertised VIP is not served here")]
    NotServed,
    /// The advertised server is one of this router's own addresses.
    #[error("advertised server is this router")]
    ServerIsLocal,
    /// The advertised server address cannot be a tunnel endpoint (unspecified,
    /// multicast, broadcast, loopback).
    #[error("advertised server address is not a unicast tunnel endpoint")]
    BadServer,
    /// The engine refused the entry (table full).
    #[error("engine refused the flow: {0}")]
    Engine(#[source] ApiError),
}

/// Whether `ip` can be a tunnel endpoint at all.
pub(crate) fn is_endpoint(ip: IpAddr) -> bool {
    !(ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_loopback()
        || matches!(ip, IpAddr::V4(v) if v.is_broadcast()))
}

/// Applies an authenticated advertisement to the flow table. `served(vip)`
/// says whether a VIP is in a served subnet; `local` lists this router's own
/// addresses; `level` is stamped on an installed entry. Never re-pins a flow.
pub fn handle_advert<A: RouterApi + ?Sized>(
    api: &mut A,
    fields: &AdvertFields,
    served: impl Fn(IpAddr) -> bool,
    local: &[IpAddr],
    level: Level,
    now: Instant,
) -> AdvertOutcome {
    let server = fields.server.ip();
    if !served(fields.key.dst) {
        return AdvertOutcome::Rejected(AdvertRefusal::NotServed);
    }
    if !is_endpoint(server) {
        return AdvertOutcome::Rejected(AdvertRefusal::BadServer);
    }
    if local.contains(&server) {
        return AdvertOutcome::Rejected(AdvertRefusal::ServerIsLocal);
    }
    if let Some(e) = api.lookup_flow(&fields.key, now) {
        return if e.next_hop == server {
            AdvertOutcome::Current
        } else {
            AdvertOutcome::Relay { to: e.next_hop }
        };
    }
    let entry = FlowEntry {
        key: fields.key,
        next_hop: server,
        // Labels name flows within one router's pinning; an advertised flow has
        // none to inherit.
        label: 0,
        level,
        // Only a connection the server saw established is worth advertising; a
        // UDP "flow" keeps its datagram state.
        state: if fields.key.proto == router_core::wire::ip_proto::UDP {
            FlowState::Udp
        } else {
            FlowState::Established
        },
        created: now,
        last_seen: now,
        packets: 0,
        bytes: 0,
    };
    match api.install_flow(&entry, now) {
        Ok(_) => AdvertOutcome::Installed,
        Err(e) => AdvertOutcome::Rejected(AdvertRefusal::Engine(e)),
    }
}
