//! The management side's view of the running router: engine counters and
//! flows read through the [`DataplaneHandle`], and the control side's state
//! asked of the control loop by a [`ControlRequest`] and answered as a
//! [`ControlView`]. Everything that crosses to the data path or the control loop
//! is here, so the rest of the management API only shapes answers.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use qre::response::PeerRow;
use qre::{ErrorKind, FlowCollector, FlowQuery, FlowSample, FlowsResponse, StateError};
use router_core::api::RouterApi;
use router_core::flow::FlowState;
use router_core::policy::{Candidate, SubnetCosts, SubnetPolicies};
use router_core::{Instant, VirtualSubnet};
use signaling::{SlrControl, SubnetPrefix};

use super::MgmtState;

/// One signalling session, as the control loop describes it.
#[derive(Debug, Clone)]
pub(crate) struct SessionInfo {
    /// `upstream`, `downstream`, or another kind of session the router has.
    pub(crate) direction: String,
    /// Its signalling address.
    pub(crate) remote: SocketAddr,
    /// Its registered name.
    pub(crate) name: Option<String>,
    /// Registered with the control side.
    pub(crate) registered: bool,
    /// When its last state update arrived (control clock).
    pub(crate) last_update: Option<Instant>,
    /// State updates received.
    pub(crate) updates: u64,
}

/// One subnet of the control side's next-hop table.
#[derive(Debug, Clone)]
pub(crate) struct TableRow {
    pub(super) subnet: SubnetPrefix,
    pub(super) candidates: Vec<Candidate>,
    pub(super) aggregate: Option<f64>,
}

/// The control side's state at one moment.
#[derive(Debug, Clone)]
pub(crate) struct ControlView {
    /// The control counters snapshot (router.rs's `ControlSnapshot`), as JSON.
    pub(super) counters: serde_json::Value,
    /// The SLR and table counters, as JSON.
    pub(super) slr: serde_json::Value,
    pub(super) peers: Vec<PeerRow>,
    pub(super) table: Vec<TableRow>,
    pub(super) omitted: u64,
    /// The node's policies and cost models by subnet (handles: cheap clones).
    pub(super) policies: SubnetPolicies,
    pub(super) costs: SubnetCosts,
    pub(super) downstream_role: &'static str,
    pub(super) upstream_registered: bool,
    /// Tunnel endpoint -> peer name.
    pub(super) names: BTreeMap<IpAddr, String>,
}

/// Built on the control loop from its state; bounded to
/// [`qre::api::MAX_TABLE_ROWS`] subnets.
pub(crate) fn control_view(
    slr: &SlrControl,
    (policies, costs): (&SubnetPolicies, &SubnetCosts),
    sessions: Vec<SessionInfo>,
    counters: serde_json::Value,
    now: Instant,
) -> ControlView {
    let table = slr.table();
    let mut names = BTreeMap::new();
    let mut peers = Vec::new();
    for s in sessions {
        let view = s
            .name
            .as_ref()
            .filter(|_| s.direction == "downstream")
            .and_then(|n| signaling::NodeName::new(n).ok())
            .and_then(|n| table.peer(&n).cloned());
        if let (Some(v), Some(n)) = (&view, &s.name) {
            names.insert(v.addr, n.clone());
        }
        peers.push(PeerRow {
            name: s.name,
            direction: s.direction,
            remote: s.remote.to_string(),
            registered: s.registered,
            up: view.as_ref().map(|v| v.up),
            tunnel: view.as_ref().map(|v| v.addr),
            route_cost: view.as_ref().map(|v| v.route_cost),
            last_update_ms_ago: s
                .last_update
                .map(|t| now.saturating_since(t).as_millis() as u64),
            last_seq: view.as_ref().and_then(|v| v.last_seq),
            updates: s.updates,
        });
    }
    // Upstream first, then by direction and name.
    peers.sort_by(|a, b| {
        (a.direction != "upstream", &a.direction, &a.name).cmp(&(
            b.direction != "upstream",
            &b.direction,
            &b.name,
        ))
    });
    let rows: Vec<TableRow> = table
        .subnets()
        .take(qre::api::MAX_TABLE_ROWS)
        .map(|p| TableRow {
            subnet: *p,
            candidates: table.candidates(p).map(<[_]>::to_vec).unwrap_or_default(),
            aggregate: table.aggregate(p),
        })
        .collect();
    let st = slr.stats();
    let ts = table.stats();
    let slr_json = serde_json::json!({
        "registrations": st.registrations,
        "unexpected_roles": st.unexpected_roles,
        "table_full": st.table_full,
        "table_updates": st.table_updates,
        "engine_refusals": st.engine_refusals,
        "advertisements": st.advertisements,
        "updates_ignored": st.updates_ignored,
        "shortcuts_originated": st.shortcuts_originated,
        "shortcuts_installed": st.shortcuts_installed,
        "shortcuts_refused": st.shortcuts_refused,
        "shortcuts_relayed": st.shortcuts_relayed,
        "shortcuts_to_entry": st.shortcuts_to_entry,
        "shortcuts_unsent": st.shortcuts_unsent,
        "ignored_events": st.ignored_events,
        "policy_refusals": st.policy_refusals,
        "table": {
            "registrations": ts.registrations,
            "peers_refused": ts.peers_refused,
            "peers_down": ts.peers_down,
            "downs_stale_epoch": ts.downs_stale_epoch,
            "updates_accepted": ts.updates_accepted,
            "updates_stale_epoch": ts.updates_stale_epoch,
            "updates_unknown_peer": ts.updates_unknown_peer,
            "updates_peer_down": ts.updates_peer_down,
            "subnets_refused": ts.subnets_refused,
            "invalid_loads": ts.invalid_loads,
            "reports_expired": ts.reports_expired,
            "computations": ts.computations,
            "cost_faults": ts.cost_faults,
            "invalid_costs": ts.invalid_costs,
            "aggregate_faults": ts.aggregate_faults,
        },
    });
    ControlView {
        counters,
        slr: slr_json,
        peers,
        omitted: (table.subnet_count() as u64).saturating_sub(rows.len() as u64),
        table: rows,
        policies: policies.clone(),
        costs: costs.clone(),
        downstream_role: match slr.expected_downstream_role() {
            signaling::Role::Host => "host",
            signaling::Role::Site => "site",
            signaling::Role::System => "system",
            signaling::Role::Network => "network",
            _ => "other",
        },
        upstream_registered: slr.upstream_registered(),
        names,
    }
}

/// A question for the control loop; it answers on `reply`.
#[derive(Debug)]
pub(crate) struct ControlRequest {
    /// Where the answer goes.
    pub(crate) reply: std::sync::mpsc::SyncSender<ControlView>,
}

/// How the management side reaches the control loop: queues a request, false
/// when the queue is full or gone.
pub(crate) type ControlLink = Box<dyn Fn(ControlRequest) -> bool + Send + Sync>;

fn state_name(s: FlowState) -> &'static str {
    match s {
        FlowState::SynSeen => "syn_seen",
        FlowState::Established => "established",
        FlowState::Closing => "closing",
        FlowState::Udp => "udp",
        FlowState::Other => "other",
    }
}

impl MgmtState {
    pub(super) fn stopped() -> StateError {
        StateError::new(
            ErrorKind::Unavailable,
            "the data path has stopped",
            "the router is shutting down or failed; see its log",
        )
    }

    pub(super) fn control_view(&self) -> Result<ControlView, StateError> {
        // A full queue means the control loop is busy: retry for up to 1 s.
        for _ in 0..100 {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            if (self.control)(ControlRequest { reply: tx }) {
                return rx.recv_timeout(Duration::from_secs(2)).map_err(|_| {
                    StateError::new(
                        ErrorKind::Unavailable,
                        "the control loop did not answer within 2 s",
                        "the router is overloaded or shutting down; retry",
                    )
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(StateError::new(
            ErrorKind::Unavailable,
            "the control loop's queue stayed full for 1 s",
            "the router is overloaded or shutting down; retry",
        ))
    }

    pub(super) fn engine_figures(
        &self,
    ) -> Result<(router_core::engine::EngineCounters, u64, u64), StateError> {
        self.dataplane
            .call(|e, _| {
                let (v4, v6) = e.flows().capacity();
                (e.counters(), e.flows().len() as u64, (v4 + v6) as u64)
            })
            .map_err(|_| Self::stopped())
    }

    /// The flow answer: a collector fed from the data path's flow table.
    pub(super) fn collect_flows(&self, query: &FlowQuery) -> Result<FlowsResponse, StateError> {
        let q = *query;
        // One pass over the table between two packet batches; memory bounded by
        // the collector. Cost: about the table's size in cache misses.
        self.dataplane
            .call(move |e, now| {
                let mut c = FlowCollector::new(q);
                for f in e.flows().export(now) {
                    c.offer(&FlowSample {
                        proto: f.key.proto,
                        client: f.key.src,
                        client_port: f.key.src_port,
                        vip: f.key.dst,
                        vip_port: f.key.dst_port,
                        next_hop: f.next_hop,
                        state: state_name(f.state),
                        packets: f.packets,
                        bytes: f.bytes,
                        age_ms: now.saturating_since(f.created).as_millis() as u64,
                        idle_ms: now.saturating_since(f.last_seen).as_millis() as u64,
                    });
                }
                let (v4, v6) = e.flows().capacity();
                c.finish((v4 + v6) as u64)
            })
            .map_err(|_| Self::stopped())
    }

    /// The engine's candidates of each statically configured subnet.
    pub(super) fn static_candidates(
        &self,
        statics: Vec<VirtualSubnet>,
    ) -> Result<Vec<(VirtualSubnet, Vec<Candidate>)>, StateError> {
        self.dataplane
            .call(move |e, _| {
                statics
                    .into_iter()
                    .map(|s| {
                        let c = e
                            .subnet_for(s.addr())
                            .filter(|(found, _)| *found == s)
                            .and_then(|(_, id)| e.candidates(id))
                            .map(<[_]>::to_vec)
                            .unwrap_or_default();
                        (s, c)
                    })
                    .collect::<Vec<_>>()
            })
            .map_err(|_| Self::stopped())
    }

    /// The Linux shell's counters (receive, transmit, punts, batches).
    pub(super) fn shell_counters(&self) -> serde_json::Value {
        let shell = self.dataplane.stats();
        serde_json::json!({
            "rx_tun": shell.rx_tun, "tun_reads": shell.tun_reads,
            "rx_tunnel": shell.rx_tunnel,
            "rx_truncated": shell.rx_truncated, "rx_errors": shell.rx_errors,
            "tx_packets": shell.tx_packets, "tx_failed": shell.tx_failed,
            "tx_fragments": shell.tx_fragments, "punted": shell.punted,
            "punt_dropped": shell.punt_dropped, "new_flows": shell.new_flows,
            "new_flow_dropped": shell.new_flow_dropped, "batches": shell.batches,
            "worker_batches": shell.worker_batches,
            "polls": shell.polls, "commands": shell.commands,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use router_core::policy::{Level, SumCost};
    use signaling::{Epoch, NodeName, SlrConfig};

    #[test]
    fn control_view_names_peers_from_the_table_with_their_last_update() {
        let mut slr = SlrControl::new(
            SlrConfig::new(Level::System),
            Arc::new(SumCost),
            Instant::ZERO,
        );
        let a = NodeName::new("site-a.lab").unwrap();
        slr.table_mut()
            .register(&a, "10.1.0.2".parse().unwrap(), 0.5, Epoch(7))
            .unwrap();
        let sessions = vec![
            SessionInfo {
                direction: "downstream".into(),
                remote: "10.1.0.2:4000".parse().unwrap(),
                name: Some("site-a.lab".into()),
                registered: true,
                last_update: Some(Instant::from_millis(1_000)),
                updates: 3,
            },
            SessionInfo {
                direction: "upstream".into(),
                remote: "10.9.0.1:7800".parse().unwrap(),
                name: Some("net.lab".into()),
                registered: false,
                last_update: None,
                updates: 0,
            },
        ];
        let policies = SubnetPolicies::new(Arc::new(router_core::policy::LeastCost));
        let costs = SubnetCosts::new(Arc::new(SumCost));
        let v = control_view(
            &slr,
            (&policies, &costs),
            sessions,
            serde_json::json!({"registrations": 1}),
            Instant::from_millis(1_250),
        );
        assert_eq!(v.downstream_role, "site");
        assert_eq!(v.peers[0].direction, "upstream", "upstream first");
        assert_eq!(v.peers[0].tunnel, None);
        let a = &v.peers[1];
        assert_eq!(a.tunnel, Some("10.1.0.2".parse().unwrap()));
        assert_eq!(a.up, Some(true));
        assert_eq!(a.route_cost, Some(0.5));
        assert_eq!(a.last_update_ms_ago, Some(250));
        assert_eq!(a.updates, 3);
        assert_eq!(
            v.names
                .get(&"10.1.0.2".parse().unwrap())
                .map(String::as_str),
            Some("site-a.lab")
        );
        assert!(v.table.is_empty() && v.omitted == 0);
        assert_eq!(v.slr["table"]["registrations"], 1);
    }
}
