//! Latency hooks: histograms the router's hot paths record into, and the
//! timed wrappers around module policies and cost models.

use std::sync::Arc;

use qre::metrics::Histogram;
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
}

impl DecisionObserver for Hooks {
    fn new_flow_decision(&self, ns: u64) {
        self.new_flow_decision.record_ns(ns);
    }
}

impl Hooks {
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
}
