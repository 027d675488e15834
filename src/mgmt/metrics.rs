//! The Prometheus adapter: the router's counters, gauges and histograms as
//! qre metric families, one function per source.

use std::sync::atomic::Ordering;

use exec_env::manager::Environment;
use qre::metrics::MetricsBuilder;
use qre::{MetricFamily, StateError};
use router_core::engine::EngineCounters;

use super::MgmtState;
use super::state::ControlView;

impl MgmtState {
    /// Every metric family: process, engine, shell, control, modules, the
    /// management server and the latency histograms.
    pub(super) fn render_metrics(&self) -> Result<Vec<MetricFamily>, StateError> {
        let (c, flows, capacity) = self.engine_figures()?;
        let view = self.control_view()?;
        let mut b = MetricsBuilder::new();
        self.process_metrics(&mut b, flows, capacity);
        engine_metrics(&mut b, &c);
        fast_path_metrics(&mut b, &c, self.dataplane.fast_path());
        b.flatten("pronto_shell", &self.shell_counters(), &[]);
        control_metrics(&mut b, &view);
        for (env, _) in &self.envs {
            module_metrics(&mut b, env);
        }
        self.server_metrics(&mut b);
        self.latency_metrics(&mut b);
        Ok(b.finish())
    }

    fn process_metrics(&self, b: &mut MetricsBuilder, flows: u64, capacity: u64) {
        let node = [("router", self.name.as_str())];
        b.gauge("pronto_up", "1 while the router answers", &node, 1.0);
        b.gauge(
            "pronto_uptime_seconds",
            "Seconds since the daemon started",
            &[],
            self.started.elapsed().as_secs_f64(),
        );
        b.gauge(
            "pronto_resident_memory_kib",
            "Resident set size, KiB",
            &[],
            crate::router::rss_kib() as f64,
        );
        b.gauge("pronto_flows", "Pinned flows", &[], flows as f64);
        b.gauge(
            "pronto_flow_capacity",
            "Flow table slots",
            &[],
            capacity as f64,
        );
    }

    fn server_metrics(&self, b: &mut MetricsBuilder) {
        let s = &self.stats;
        for (n, v, help) in [
            (
                "connections",
                &s.connections,
                "Management TCP connections accepted",
            ),
            (
                "handshakes",
                &s.handshakes,
                "Management TLS handshakes completed",
            ),
            (
                "handshake_timeouts",
                &s.handshake_timeouts,
                "Management connections closed by the handshake deadline",
            ),
            (
                "refused_pending_limit",
                &s.refused_pending_limit,
                "Management connections closed at once: too many handshakes in progress",
            ),
            (
                "refused_per_source_limit",
                &s.refused_per_source_limit,
                "Management connections closed at once: too many handshakes in progress from their source address",
            ),
            (
                "unauthenticated",
                &s.unauthenticated,
                "Management clients refused at TLS: no certificate",
            ),
            (
                "untrusted",
                &s.untrusted,
                "Management clients refused at TLS: certificate not from the trust domain",
            ),
            (
                "handshake_failures",
                &s.handshake_failures,
                "Management TLS handshakes failed otherwise",
            ),
            (
                "timeouts",
                &s.timeouts,
                "Management connections closed by the request deadline (after the handshake)",
            ),
            (
                "requests_ok",
                &s.requests_ok,
                "Management requests answered 2xx",
            ),
            (
                "requests_client_error",
                &s.requests_client_error,
                "Management requests answered 4xx",
            ),
            (
                "requests_server_error",
                &s.requests_server_error,
                "Management requests answered 5xx",
            ),
            ("module_ops", &s.module_ops, "Module operations done"),
            (
                "module_ops_refused",
                &s.module_ops_refused,
                "Module operations refused",
            ),
            (
                "state_write_failures",
                &s.state_write_failures,
                "Module operations or bindings the state directory could not keep for a restart",
            ),
        ] {
            b.counter(
                &format!("pronto_mgmt_{n}_total"),
                help,
                &[],
                v.load(Ordering::Relaxed),
            );
        }
        for f in super::authz::Forbidden::ALL {
            b.counter(
                "pronto_mgmt_forbidden_total",
                "Management requests refused (403) for want of a role, by reason",
                &[("reason", f.as_str())],
                s.forbidden[f.index()].load(Ordering::Relaxed),
            );
        }
    }

    fn latency_metrics(&self, b: &mut MetricsBuilder) {
        let h = &self.hooks;
        b.histogram(
            "pronto_new_flow_decision_seconds",
            "Engine time of packets that pinned a new flow (classify, miss, policy, pin, encapsulate)",
            &[],
            h.new_flow_decision.snapshot(),
        );
        for (call, hist) in [
            ("select", &h.module_select),
            ("cost", &h.module_cost),
            ("aggregate", &h.module_aggregate),
        ] {
            b.histogram(
                "pronto_module_call_seconds",
                "Wall time of module calls made by the router (policy select, cost F, aggregate G)",
                &[("call", call)],
                hist.snapshot(),
            );
        }
    }
}

fn engine_metrics(b: &mut MetricsBuilder, c: &EngineCounters) {
    let engine = [
        ("packets", c.packets, "Packets processed by the engine"),
        (
            "forwarded_pinned",
            c.forwarded_pinned,
            "Packets forwarded along a pinned flow",
        ),
        (
            "forwarded_new",
            c.forwarded_new,
            "First packets of newly pinned flows",
        ),
        (
            "decapsulated",
            c.decapsulated,
            "Tunnel packets terminated here",
        ),
        ("delivered", c.delivered, "Packets delivered locally"),
        (
            "recover",
            c.recover,
            "Mid-flow packets of unknown flows handed to recovery",
        ),
        ("icmp_sent", c.icmp_sent, "ICMP errors originated"),
        (
            "policy_faults",
            c.policy_faults,
            "Policy calls that failed and fell back to the built-in policy",
        ),
        (
            "flows_evicted",
            c.flows_evicted,
            "Flows evicted from a full flow table",
        ),
    ];
    for (n, v, help) in engine {
        b.counter(&format!("pronto_engine_{n}_total"), help, &[], v);
    }
    for r in router_core::engine::DropReason::ALL {
        b.counter(
            "pronto_engine_drops_total",
            "Packets dropped by the engine, by reason",
            &[("reason", r.as_str())],
            c.dropped(r),
        );
    }
}

/// `pronto_fastpath_*`: the kernel program's verdicts and map upkeep, and
/// the pinned-flow packets of both paths in one family, so nobody adds the
/// engine's and the kernel's by hand.
fn fast_path_metrics(
    b: &mut MetricsBuilder,
    c: &EngineCounters,
    info: Option<&router_core::linux::fastpath::FastPathInfo>,
) {
    use router_core::linux::fastpath::FastPathCounter;
    let snap = info.map(router_core::linux::fastpath::FastPathInfo::snapshot);
    let path = snap.as_ref().map_or("userspace", |s| s.status.path());
    b.gauge(
        "pronto_fastpath_info",
        "1, labelled with the path that forwards pinned flows (bpf or userspace)",
        &[("path", path)],
        1.0,
    );
    let kernel = snap
        .as_ref()
        .and_then(|s| s.counters)
        .map_or(0, |k| k.forwarded());
    for (p, v) in [("engine", c.forwarded_pinned), ("kernel", kernel)] {
        b.counter(
            "pronto_forwarded_pinned_total",
            "Packets of pinned flows forwarded, by the path that forwarded them",
            &[("path", p)],
            v,
        );
    }
    let Some(s) = snap else {
        return;
    };
    if let Some(k) = s.counters {
        for (counter, v) in k.iter() {
            if counter == FastPathCounter::FwdBytes {
                b.counter(
                    "pronto_fastpath_bytes_total",
                    "Bytes of the packets the kernel program forwarded",
                    &[],
                    v,
                );
            } else {
                b.counter(
                    "pronto_fastpath_packets_total",
                    "Packets the kernel program saw, by verdict (fwd_*: forwarded; pass_*: handed to the engine, by reason; drop_*: dropped)",
                    &[("verdict", counter.as_str())],
                    v,
                );
            }
        }
    }
    if let Some(m) = s.sync {
        for (n, v, help) in [
            ("pins", m.pins, "Fast path map entries written (pins)"),
            (
                "unpins",
                m.unpins,
                "Fast path map entries removed (unpins, expiries, evictions)",
            ),
            ("errors", m.errors, "Fast path map operations that failed"),
            ("resyncs", m.resyncs, "Full resyncs of the fast path maps"),
            (
                "idle_checked",
                m.idle_checked,
                "Idle flows checked against the kernel's activity",
            ),
            (
                "idle_expired",
                m.idle_expired,
                "Idle flows expired after that check",
            ),
        ] {
            b.counter(&format!("pronto_fastpath_map_{n}_total"), help, &[], v);
        }
    }
}

fn control_metrics(b: &mut MetricsBuilder, view: &ControlView) {
    // Every field of the control snapshot, present and future.
    b.flatten(
        "pronto_control",
        &view.counters,
        &[
            "downstream_sessions",
            "upstream_registered",
            "neighbours",
            "mirrored_flows",
            "mirror_lag_ms",
            "takeover_silent_ms",
            "takeover_addresses_ms",
        ],
    );
    b.flatten("pronto_slr", &view.slr, &[]);
}

fn module_metrics(b: &mut MetricsBuilder, env: &Environment) {
    let ec = env.counters();
    let e = [("environment", env.name())];
    b.counter(
        "pronto_env_installs_total",
        "Modules installed (swaps included)",
        &e,
        ec.installs,
    );
    b.counter(
        "pronto_env_refused_total",
        "Module installs refused",
        &e,
        ec.refused,
    );
    b.counter(
        "pronto_env_removals_total",
        "Modules removed",
        &e,
        ec.removals,
    );
    b.counter(
        "pronto_env_bind_refused_total",
        "Module bindings refused",
        &e,
        ec.bind_refused,
    );
    for m in env.list() {
        let version = m.active.version.to_string();
        let l = [
            ("environment", env.name()),
            ("module", m.name.as_str()),
            ("version", version.as_str()),
        ];
        let mc = m.counters;
        for (n, v, help) in [
            ("calls", mc.calls, "Calls asked of a module"),
            ("ok", mc.ok, "Calls a module answered"),
            ("traps", mc.traps, "Module traps"),
            ("timeouts", mc.timeouts, "Module fuel or epoch timeouts"),
            ("bad_results", mc.bad_results, "Invalid module answers"),
            (
                "fallbacks",
                mc.fallbacks,
                "Answers from the previous version after a fault",
            ),
            ("throttled", mc.throttled, "Calls refused: CPU share spent"),
            (
                "quarantined_refusals",
                mc.quarantined_refusals,
                "Calls refused: quarantined",
            ),
            (
                "unavailable",
                mc.unavailable,
                "Calls that could not be made",
            ),
            ("quarantines", mc.quarantines, "Quarantines started"),
            (
                "cpu_used",
                mc.cpu_used,
                "CPU charged to a module (fuel units)",
            ),
            ("swaps", mc.swaps, "Hot swaps of a module"),
            ("rollbacks", mc.rollbacks, "Rollbacks of a module"),
        ] {
            b.counter(&format!("pronto_module_{n}_total"), help, &l, v);
        }
    }
}
