//! The query answers (qre's [`RouterState`]): summary, flows, table, peers,
//! modules and queues shaped from the router's state; metrics and module
//! operations are answered by their own files.

use exec_env::manager::{Environment, FailurePolicy, Scope, VersionState};
use qre::response::{
    EnvironmentRow, FlowsResponse, ModuleOpReport, ModuleRow, ModulesResponse, NextHopRow,
    PeersResponse, QueuesResponse, RouterSummary, ShareClassRow, ShareTreeRow, SubnetRow,
    TableResponse, VersionRow,
};
use qre::{
    AddrMatch, ErrorKind, FlowQuery, MetricFamily, ModuleOp, RouterState, StateError, TableQuery,
};
use router_core::VirtualSubnet;
use router_core::policy::Candidate;

use super::MgmtState;
use crate::config;

fn prefix_match(text: &str) -> Option<AddrMatch> {
    text.parse().ok()
}

/// One configured share tree as the queues answer shows it: each class's share
/// of the link when every class is busy, and the rate that guarantees.
fn share_tree_row(sh: &config::Shaping) -> ShareTreeRow {
    let t = &sh.tree;
    let shares = t.leaf_shares().unwrap_or_default();
    let classes = t
        .classes
        .iter()
        .map(|c| {
            let share = shares.get(&c.id).copied().unwrap_or(0.0);
            ShareClassRow {
                id: c.id,
                handle: format!("1:{:x}", c.id),
                weight: c.weight,
                share,
                rate_bps: (t.link_rate_bps as f64 * share) as u64,
                subnets: t
                    .filters
                    .iter()
                    .filter(|f| f.class == c.id)
                    .map(|f| f.subnet.to_string())
                    .collect(),
                default: t.default_class == c.id,
            }
        })
        .collect();
    ShareTreeRow {
        link: sh.link.clone(),
        realisation: "kernel-htb".into(),
        rate_bps: t.link_rate_bps,
        classes,
    }
}

impl MgmtState {
    pub(super) fn module_row(
        m: exec_env::manager::ModuleInfo,
        bound: &[exec_env::manager::Binding],
    ) -> ModuleRow {
        let version = |v: &exec_env::manager::VersionInfo| VersionRow {
            version: v.version.to_string(),
            signer: v.signer.clone(),
            digest: exec_env::trust::hex(&v.digest),
            state: match v.state {
                VersionState::Serving => "serving",
                VersionState::Standby => "standby",
                VersionState::Quarantined { .. } => "quarantined",
            }
            .into(),
            quarantine_ms: match v.state {
                VersionState::Quarantined { remaining } => Some(remaining.as_millis() as u64),
                _ => None,
            },
        };
        let c = m.counters;
        ModuleRow {
            active: version(&m.active),
            previous: m.previous.as_ref().map(version),
            bound: bound
                .iter()
                .filter(|b| b.module == m.name)
                .map(|b| match b.role {
                    exec_env::manager::Role::Scheduler => "scheduler (egress link)".to_owned(),
                    role => format!("{role} {}", b.subnet),
                })
                .collect(),
            name: m.name,
            calls: c.calls,
            ok: c.ok,
            faults: c.faults(),
            traps: c.traps,
            timeouts: c.timeouts,
            bad_results: c.bad_results,
            fallbacks: c.fallbacks,
            throttled: c.throttled,
            quarantined_refusals: c.quarantined_refusals,
            unavailable: c.unavailable,
            quarantines: c.quarantines,
            cpu_used: c.cpu_used,
            swaps: c.swaps,
            rollbacks: c.rollbacks,
        }
    }
}

impl RouterState for MgmtState {
    fn summary(&self) -> Result<RouterSummary, StateError> {
        let (counters, flows, capacity) = self.engine_figures()?;
        let view = self.control_view()?;
        let fast = self.dataplane.fast_path().map(|f| f.snapshot());
        Ok(RouterSummary {
            name: self.name.clone(),
            level: self.level.to_owned(),
            pid: std::process::id(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            rss_kib: crate::router::rss_kib(),
            flows,
            flow_capacity: capacity,
            subnets: (view.table.len() + self.static_subnets.len()) as u64,
            downstream_peers: view
                .peers
                .iter()
                .filter(|p| p.direction == "downstream" && p.registered)
                .count() as u64,
            upstream_registered: view.upstream_registered,
            modules: self.envs.iter().map(|(e, _)| e.list().len() as u64).sum(),
            packets: counters.packets,
            fast_path: fast.as_ref().map_or_else(
                || "userspace (not started)".into(),
                |f| f.status.to_string(),
            ),
            fast_path_forwarded: fast.and_then(|f| f.counters).map_or(0, |c| c.forwarded()),
        })
    }

    fn flows(&self, query: &FlowQuery) -> Result<FlowsResponse, StateError> {
        self.collect_flows(query)
    }

    fn table(&self, query: &TableQuery) -> Result<TableResponse, StateError> {
        let view = self.control_view()?;
        let rows = |subnet: VirtualSubnet, source: &str, candidates: &[Candidate], aggregate| {
            let (addr, len) = (subnet.addr(), subnet.prefix_len());
            let model = view.costs.for_prefix(addr, len);
            let costs: Vec<Option<f64>> = candidates
                .iter()
                .map(|c| {
                    c.up.then(|| model.cost(c.load, c.route_cost).ok())
                        .flatten()
                        .filter(|v| v.is_finite())
                })
                .collect();
            let best = costs
                .iter()
                .enumerate()
                .filter_map(|(i, c)| c.map(|c| (i, c)))
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(i, _)| i);
            SubnetRow {
                subnet: subnet.to_string(),
                source: source.to_owned(),
                policy: view.policies.for_prefix(addr, len).name().to_owned(),
                cost_model: model.name().to_owned(),
                aggregate,
                next_hops: candidates
                    .iter()
                    .zip(costs)
                    .enumerate()
                    .map(|(i, (c, cost))| NextHopRow {
                        address: c.addr,
                        peer: view.names.get(&c.addr).cloned(),
                        load: c.load,
                        route_cost: c.route_cost,
                        cost,
                        up: c.up,
                        best: Some(i) == best,
                    })
                    .collect(),
            }
        };
        let mut subnets = Vec::new();
        for r in &view.table {
            let selected = prefix_match(&r.subnet.to_string()).is_some_and(|p| query.selects(&p));
            if let (true, Ok(s)) = (
                selected,
                VirtualSubnet::new(r.subnet.addr(), r.subnet.len()),
            ) {
                subnets.push(rows(s, "table", &r.candidates, r.aggregate));
            }
        }
        let statics: Vec<VirtualSubnet> = self
            .static_subnets
            .iter()
            .filter(|s| prefix_match(&s.to_string()).is_some_and(|p| query.selects(&p)))
            .copied()
            .collect();
        if !statics.is_empty() {
            for (s, c) in self.static_candidates(statics)? {
                subnets.push(rows(s, "static", &c, None));
            }
        }
        Ok(TableResponse {
            cost_model: view.costs.default_binding().name().to_owned(),
            subnets,
            omitted: view.omitted,
        })
    }

    fn peers(&self) -> Result<PeersResponse, StateError> {
        let view = self.control_view()?;
        Ok(PeersResponse {
            downstream_role: view.downstream_role.to_owned(),
            peers: view.peers,
        })
    }

    fn modules(&self) -> Result<ModulesResponse, StateError> {
        Ok(ModulesResponse {
            environments: self.envs.iter().map(|(e, _)| environment_row(e)).collect(),
        })
    }

    fn queues(&self) -> Result<QueuesResponse, StateError> {
        let trees: Vec<ShareTreeRow> = self.shaping.iter().map(share_tree_row).collect();
        let egress = match &self.egress {
            Some(e) => Some(e.row().map_err(|err| {
                StateError::new(
                    ErrorKind::Unavailable,
                    format!("the egress stage did not answer: {err:#}"),
                    "the stage has stopped; see the router's log",
                )
            })?),
            None => None,
        };
        let note = match (trees.is_empty(), egress.is_some()) {
            (true, false) => {
                "no [shaping] and no [scheduler] section: no share tree and no userspace egress \
                 stage are configured (packets go from the TUN or raw sockets through the engine \
                 straight to sendmmsg)."
            }
            (false, false) => {
                "share tree as configured at start (after a SIGHUP reload see `tc -s class show`); \
                 realised as kernel HTB classes. No [scheduler] section: no userspace egress stage."
            }
            (_, true) => {
                "egress: the userspace stage's link scheduler (counters since start; compare two \
                 answers for the shares). Share trees, if any, are kernel HTB classes."
            }
        };
        Ok(QueuesResponse {
            share_trees: trees,
            egress,
            note: note.to_owned(),
        })
    }

    fn metrics(&self) -> Result<Vec<MetricFamily>, StateError> {
        self.render_metrics()
    }

    fn module_op(&self, env: Option<&str>, op: ModuleOp<'_>) -> Result<ModuleOpReport, StateError> {
        self.run_module_op(env, op)
    }
}

/// One environment's row of `query modules`.
fn environment_row(env: &Environment) -> EnvironmentRow {
    let cfg = env.config();
    let c = env.counters();
    let bound = env.bindings();
    EnvironmentRow {
        name: env.name().to_owned(),
        scope: match &cfg.scope {
            Scope::Operator => "operator".to_owned(),
            Scope::Tenant { allowed } => format!(
                "tenant {}",
                allowed
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        },
        failure_policy: match cfg.failure_policy {
            FailurePolicy::FallBack => "fall_back",
            FailurePolicy::RefuseNewFlows => "refuse_new_flows",
        }
        .to_owned(),
        installs: c.installs,
        refused: c.refused,
        removals: c.removals,
        bind_refused: c.bind_refused,
        modules: env
            .list()
            .into_iter()
            .map(|m| MgmtState::module_row(m, &bound))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_trees_show_each_class_share_rate_and_subnets() {
        use router_core::linux::tc::{ShareClassConfig, ShareTreeConfig};
        let tree = ShareTreeConfig::new(100_000_000)
            .with_class(ShareClassConfig::new(16, 20))
            .with_class(ShareClassConfig::new(32, 80))
            .with_filter("192.200.0.0/24".parse().unwrap(), 16)
            .with_default(16);
        let row = share_tree_row(&config::Shaping {
            link: "eth1".into(),
            tree,
        });
        assert_eq!(row.link, "eth1");
        assert_eq!(row.rate_bps, 100_000_000);
        let c16 = &row.classes[0];
        assert_eq!((c16.handle.as_str(), c16.weight), ("1:10", 20));
        assert!((c16.share - 0.2).abs() < 1e-9);
        assert_eq!(c16.rate_bps, 20_000_000);
        assert_eq!(c16.subnets, vec!["192.200.0.0/24".to_owned()]);
        assert!(c16.default && !row.classes[1].default);
        assert!((row.classes[1].share - 0.8).abs() < 1e-9);
    }
}
