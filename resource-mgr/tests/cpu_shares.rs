//! Behaviour of the CPU budget: a module that burns far beyond its share is throttled
//! while a well-behaved one keeps its share; idle shares go to active modules.

use proptest::prelude::*;
use resource_mgr::{Admission, BudgetConfig, CpuShares, ModuleId};

const PERIOD: u64 = 1_000_000;
const CAPACITY: u64 = 1_000_000;

fn budget() -> CpuShares {
    CpuShares::new(BudgetConfig::new(PERIOD, CAPACITY)).expect("valid config")
}

/// Runs `periods` periods in which the good module makes 10 calls of `good_cost`
/// and the hog tries 10 calls, burning `hog_burn(fuel)` whenever admitted. Returns the
/// hog's total consumption.
fn contend(
    b: &mut CpuShares,
    good: ModuleId,
    hog: ModuleId,
    periods: u64,
    good_cost: u64,
    hog_burn: impl Fn(u64) -> u64,
) -> u64 {
    let mut hog_total = 0;
    for p in 0..periods {
        for k in 0..10 {
            let now = p * PERIOD + k * (PERIOD / 10);
            if let Admission::Run { fuel } = b.admit(hog, now).expect("hog is live") {
                let burn = hog_burn(fuel);
                b.charge(hog, burn, now).expect("hog is live");
                hog_total += burn;
            }
            let now = now + PERIOD / 20;
            match b.admit(good, now).expect("good is live") {
                Admission::Run { fuel } => assert!(
                    fuel >= good_cost,
                    "period {p} call {k}: good module got only {fuel}"
                ),
                Admission::Throttled { .. } => panic!("period {p} call {k}: good module throttled"),
            }
            b.charge(good, good_cost, now).expect("good is live");
        }
    }
    hog_total
}

#[test]
fn hog_burning_100x_its_share_is_throttled_and_good_module_keeps_its_share() {
    let mut b = budget();
    let e1 = b.add_environment(1).unwrap();
    let e2 = b.add_environment(1).unwrap();
    let hog = b.add_module(e1, 1).unwrap();
    let good = b.add_module(e2, 1).unwrap();
    let share = CAPACITY / 2;
    let periods = 1000;
    // The good module uses 80% of its share; the hog overruns every call to 100 shares.
    let hog_total = contend(&mut b, good, hog, periods, share / 10 * 8 / 10, |_| {
        100 * share
    });
    let s = b.stats(hog).unwrap();
    assert!(
        s.admitted <= periods / 100 + 1,
        "hog ran {} times",
        s.admitted
    );
    assert!(
        s.throttled > 9 * periods,
        "hog throttled only {} times",
        s.throttled
    );
    // Long run: the hog's consumption stays at its share, plus one outstanding overrun.
    assert!(
        hog_total <= share * periods + 100 * share,
        "hog burnt {hog_total}"
    );
    assert_eq!(b.stats(good).unwrap().throttled, 0);
}

#[test]
fn hog_inside_the_same_environment_is_throttled_too() {
    let mut b = budget();
    let env = b.add_environment(1).unwrap();
    let hog = b.add_module(env, 1).unwrap();
    let good = b.add_module(env, 3).unwrap();
    let good_share = CAPACITY * 3 / 4;
    let hog_total = contend(&mut b, good, hog, 500, good_share / 10, |_| {
        100 * CAPACITY / 4
    });
    assert!(hog_total <= CAPACITY / 4 * 600);
    assert_eq!(b.stats(good).unwrap().throttled, 0);
}

#[test]
fn module_that_respects_its_fuel_gets_exactly_its_share() {
    let mut b = budget();
    let e1 = b.add_environment(2).unwrap();
    let e2 = b.add_environment(3).unwrap();
    let greedy = b.add_module(e1, 1).unwrap();
    let good = b.add_module(e2, 1).unwrap();
    let periods = 200;
    // Both are known from the start; had `greedy` been alone at first it would have
    // had the whole capacity until `good` showed up.
    let _ = b.admit(good, 0).unwrap();
    let greedy_total = contend(
        &mut b,
        good,
        greedy,
        periods,
        CAPACITY * 3 / 5 / 10,
        |fuel| fuel,
    );
    assert_eq!(greedy_total, CAPACITY * 2 / 5 * periods);
    assert_eq!(b.stats(good).unwrap().throttled, 0);
}

#[test]
fn idle_module_share_goes_to_the_busy_one() {
    let mut b = budget();
    let e1 = b.add_environment(1).unwrap();
    let e2 = b.add_environment(1).unwrap();
    let busy = b.add_module(e1, 1).unwrap();
    let idle = b.add_module(e2, 1).unwrap();
    assert!(b.allowance(idle, 0).unwrap() > 0);
    assert_eq!(b.allowance(busy, 0).unwrap(), CAPACITY / 2);
    // `idle` says nothing during period 1; from period 2 on `busy` has everything.
    assert_eq!(b.allowance(busy, PERIOD).unwrap(), CAPACITY / 2);
    assert_eq!(b.allowance(busy, 2 * PERIOD).unwrap(), CAPACITY);
    b.charge(busy, CAPACITY, 2 * PERIOD).unwrap();
    assert!(b.throttled(busy, 2 * PERIOD).unwrap());
    // When `idle` comes back it is given its share at once, though `busy` spent all.
    assert_eq!(b.allowance(idle, 2 * PERIOD + 1).unwrap(), CAPACITY / 2);
    assert_eq!(b.allowance(busy, 3 * PERIOD).unwrap(), CAPACITY / 2);
}

#[test]
fn retry_at_is_the_first_period_with_an_allowance() {
    let mut b = budget();
    let e = b.add_environment(1).unwrap();
    let m = b.add_module(e, 1).unwrap();
    let other = b.add_module(e, 1).unwrap();
    let _ = b.admit(other, 0).unwrap();
    b.charge(m, 7 * CAPACITY / 2 + 1, 10).unwrap();
    let Admission::Throttled { retry_at } = b.admit(m, 20).unwrap() else {
        panic!("overrun module admitted");
    };
    // Keep `other` active so shares stay constant.
    let mut now = 20;
    while now + PERIOD / 2 < retry_at {
        now += PERIOD / 2;
        let _ = b.admit(other, now).unwrap();
        assert!(
            b.throttled(m, now).unwrap(),
            "allowance before retry_at at {now}"
        );
    }
    let _ = b.admit(other, retry_at).unwrap();
    assert!(matches!(
        b.admit(m, retry_at).unwrap(),
        Admission::Run { .. }
    ));
    assert_eq!(retry_at, 7 * PERIOD);
}

#[derive(Debug, Clone)]
enum Op {
    AddEnv(u32),
    AddModule(usize, u32),
    RemoveModule(usize),
    RemoveEnv(usize),
    Weight(usize, u32),
    Charge(usize, u64),
    Admit(usize),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u32..20).prop_map(Op::AddEnv),
        (any::<usize>(), 0u32..20).prop_map(|(e, w)| Op::AddModule(e, w)),
        any::<usize>().prop_map(Op::RemoveModule),
        any::<usize>().prop_map(Op::RemoveEnv),
        (any::<usize>(), 0u32..20).prop_map(|(m, w)| Op::Weight(m, w)),
        (any::<usize>(), prop_oneof![0u64..3_000_000, Just(u64::MAX)])
            .prop_map(|(m, c)| Op::Charge(m, c)),
        any::<usize>().prop_map(Op::Admit),
        (0u64..5_000_000).prop_map(Op::Advance),
    ]
}

proptest! {
    #[test]
    fn arbitrary_operations_keep_budget_invariants(ops in prop::collection::vec(op(), 1..200)) {
        let mut b = CpuShares::new(
            BudgetConfig::new(PERIOD, CAPACITY).with_max_debt(10 * CAPACITY),
        ).unwrap();
        let mut envs = Vec::new();
        let mut modules = Vec::new();
        let mut now = 0u64;
        for op in ops {
            match op {
                Op::AddEnv(w) => {
                    if let Ok(e) = b.add_environment(w) { envs.push(e) }
                }
                Op::AddModule(e, w) if !envs.is_empty() => {
                    if let Ok(m) = b.add_module(envs[e % envs.len()], w) { modules.push(m) }
                }
                Op::RemoveModule(m) if !modules.is_empty() => {
                    let _ = b.remove_module(modules[m % modules.len()]);
                }
                Op::RemoveEnv(e) if !envs.is_empty() => {
                    let _ = b.remove_environment(envs[e % envs.len()]);
                }
                Op::Weight(m, w) if !modules.is_empty() => {
                    let _ = b.set_module_weight(modules[m % modules.len()], w);
                }
                Op::Charge(m, c) if !modules.is_empty() => {
                    let _ = b.charge(modules[m % modules.len()], c, now);
                }
                Op::Admit(m) if !modules.is_empty() => {
                    let m = modules[m % modules.len()];
                    if let Ok(a) = b.admit(m, now) {
                        let share = b.share(m, now).unwrap();
                        let s = b.stats(m).unwrap();
                        prop_assert!(share <= CAPACITY);
                        prop_assert!(s.debt <= 10 * CAPACITY);
                        match a {
                            Admission::Run { fuel } => {
                                prop_assert!(fuel > 0 && fuel <= share);
                                prop_assert_eq!(fuel, share - s.used - s.debt);
                            }
                            Admission::Throttled { retry_at } => {
                                prop_assert!(retry_at > now);
                                prop_assert!(s.used.saturating_add(s.debt) >= share);
                            }
                        }
                    }
                }
                Op::Advance(d) => now += d,
                _ => {}
            }
        }
    }
}
