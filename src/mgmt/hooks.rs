//! Latency hooks: histograms the router's hot paths record into, and the
//! timed wrappers around module policies and cost models.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use qre::metrics::Histogram;
use router_core::Instant;
use router_core::linux::dataplane::DecisionObserver;
use router_core::policy::{Candidate, CostModel, Decision, FlowRequest, Policy, PolicyError};

/// Latency histograms the router's hot paths record into (lock-free).
#[derive(Debug, Default)]
pub(crate) struct Hooks {
    /// Engine time of packets that pinned a new flow.
    pub(crate) new_flow_decision: Histogram,
    /// Wall time of module policy calls (select).
    pub(crate) module_select: Histogram,
    /// Wall time of module cost calls (F).
    pub(crate) module_cost: Histogram,
    /// Wall time of module aggregate calls (G).
    pub(crate) module_aggregate: Histogram,
    /// New-flow notices: from the data path pinning the flow to the control
    /// loop taking the notice (the queue a shortcut waits in).
    pub(crate) new_flow_queue: Histogram,
    /// Data path clock minus control clock (ns), measured at start, so notice
    /// timestamps can be compared with the control loop's clock.
    pub(super) clock_offset_ns: AtomicU64,
}

impl DecisionObserver for Hooks {
    fn new_flow_decision(&self, ns: u64) {
        self.new_flow_decision.record_ns(ns);
    }
}

impl Hooks {
    /// A new-flow notice pinned at `at` (data path clock) was taken at `now`
    /// (control clock).
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "the new-flow queue is gone: the node originates shortcuts on the dataplane thread; the histogram stays empty until removed"
        )
    )]
    pub(crate) fn notice_taken(&self, at: Instant, now: Instant) {
        let at_control = at
            .as_nanos()
            .wrapping_sub(self.clock_offset_ns.load(Ordering::Relaxed));
        // A notice cannot be taken before it was made; clamp calibration error.
        let delay = now
            .as_nanos()
            .saturating_sub(at_control.min(now.as_nanos()));
        self.new_flow_queue.record_ns(delay);
    }

    /// `policy`, with each call timed into [`Hooks::module_select`].
    pub(crate) fn timed_policy(self: &Arc<Self>, policy: Arc<dyn Policy>) -> Arc<dyn Policy> {
        Arc::new(TimedPolicy {
            inner: policy,
            hooks: Arc::clone(self),
        })
    }

    /// `cost`, with each F and G call timed.
    pub(crate) fn timed_cost(self: &Arc<Self>, cost: Arc<dyn CostModel>) -> Arc<dyn CostModel> {
        Arc::new(TimedCost {
            inner: cost,
            hooks: Arc::clone(self),
        })
    }
}

/// A module policy handle whose calls are timed (two clock reads per new flow).
struct TimedPolicy {
    inner: Arc<dyn Policy>,
    hooks: Arc<Hooks>,
}

impl std::fmt::Debug for TimedPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimedPolicy")
            .field("inner", &self.inner.name())
            .finish()
    }
}

impl Policy for TimedPolicy {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn select(&self, req: &FlowRequest, candidates: &[Candidate]) -> Result<Decision, PolicyError> {
        let t = std::time::Instant::now();
        let r = self.inner.select(req, candidates);
        self.hooks.module_select.record(t.elapsed());
        r
    }
}

/// A module cost model whose F and G calls are timed.
struct TimedCost {
    inner: Arc<dyn CostModel>,
    hooks: Arc<Hooks>,
}

impl std::fmt::Debug for TimedCost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimedCost")
            .field("inner", &self.inner.name())
            .finish()
    }
}

impl CostModel for TimedCost {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn cost(&self, load: f64, route_cost: f64) -> Result<f64, PolicyError> {
        let t = std::time::Instant::now();
        let r = self.inner.cost(load, route_cost);
        self.hooks.module_cost.record(t.elapsed());
        r
    }

    fn aggregate(&self, candidates: &[Candidate]) -> Result<f64, PolicyError> {
        let t = std::time::Instant::now();
        let r = self.inner.aggregate(candidates);
        self.hooks.module_aggregate.record(t.elapsed());
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use router_core::policy::{Level, SubnetId, SumCost};

    #[derive(Debug)]
    struct First;

    impl Policy for First {
        fn name(&self) -> &str {
            "first"
        }
        fn select(&self, _: &FlowRequest, _: &[Candidate]) -> Result<Decision, PolicyError> {
            Ok(Decision::Select(0))
        }
    }

    fn request() -> FlowRequest {
        FlowRequest {
            key: router_core::FlowKey {
                proto: 6,
                src: "172.16.0.2".parse().unwrap(),
                src_port: 1,
                dst: "192.200.0.10".parse().unwrap(),
                dst_port: 80,
            },
            subnet: SubnetId(0),
            level: Level::System,
        }
    }

    #[test]
    fn timed_wrappers_answer_like_the_module_and_record_each_call() {
        let hooks = Arc::new(Hooks::default());
        let p = hooks.timed_policy(Arc::new(First));
        assert_eq!(p.name(), "first");
        let c = [Candidate {
            addr: "10.0.0.1".parse().unwrap(),
            load: 0.5,
            route_cost: 1.0,
            up: true,
        }];
        assert_eq!(p.select(&request(), &c).unwrap(), Decision::Select(0));
        assert_eq!(p.select(&request(), &c).unwrap(), Decision::Select(0));
        assert_eq!(hooks.module_select.snapshot().count, 2);
        let f = hooks.timed_cost(Arc::new(SumCost));
        assert_eq!(f.cost(0.5, 1.0).unwrap(), 1.5);
        assert_eq!(f.aggregate(&c).unwrap(), 0.5);
        assert_eq!(hooks.module_cost.snapshot().count, 1);
        assert_eq!(hooks.module_aggregate.snapshot().count, 1);
        hooks.new_flow_decision(1_500);
        assert_eq!(hooks.new_flow_decision.snapshot().count, 1);
    }

    #[test]
    fn notice_delay_uses_the_calibrated_offset_and_never_goes_negative() {
        let h = Hooks::default();
        // Data path clock 5 ms ahead of the control clock.
        h.clock_offset_ns.store(5_000_000, Ordering::Relaxed);
        h.notice_taken(
            Instant::from_nanos(15_000_000),
            Instant::from_nanos(10_200_000),
        );
        let s = h.new_flow_queue.snapshot();
        assert_eq!(s.count, 1);
        assert!((s.sum - 200e-6).abs() < 1e-9, "{}", s.sum);
        // A notice "from the future" (calibration error) counts as no delay.
        h.notice_taken(Instant::from_nanos(99_000_000), Instant::from_nanos(1));
        assert_eq!(h.new_flow_queue.snapshot().counts[0], 1);
    }
}
