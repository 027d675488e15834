//! Differential check (STYLE.md §13): each committed `modules/*.wasm`, run in
//! wasmtime through the ABI exactly as a host would, decides like the native
//! policy (or ranks like the native scheduler, state included) on random inputs. A small stand-in host, not exec-env's.

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{Context, Result, ensure};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use sdk::{
    Candidate, DECISION_FAULT, Decision, FlowRequest, IO_BUFFER_SIZE, MAX_CANDIDATES, RankRequest,
    export, harness, import, layout,
};
use slr_policy_wasm::consistent_hash::MaglevTable;
use slr_policy_wasm::{
    least_load, least_slack, proximity, sfq, strict_priority, time_of_day, weighted_cost,
};
use wasmtime::{Caller, Engine, Instance, Linker, Memory, Module, Store, TypedFunc};

/// Log lines the guest sent through `pronto.log`.
#[derive(Default)]
struct HostState {
    logs: Vec<(i32, String)>,
}

struct Guest {
    store: Store<HostState>,
    memory: Memory,
    buffer: usize,
    select: TypedFunc<i32, i32>,
    instance: Instance,
}

impl Guest {
    fn load(name: &str) -> Result<Self> {
        let path = format!("{}/modules/{name}.wasm", env!("CARGO_MANIFEST_DIR"));
        let bytes = std::fs::read(&path).with_context(|| path.clone())?;
        let engine = Engine::default();
        let module = Module::new(&engine, &bytes)?;
        let mut linker: Linker<HostState> = Linker::new(&engine);
        linker.func_wrap(
            import::MODULE,
            import::LOG.name,
            |mut caller: Caller<'_, HostState>, level: i32, ptr: i32, len: i32| {
                let memory = caller
                    .get_export(export::MEMORY)
                    .and_then(|e| e.into_memory())
                    .ok_or_else(|| wasmtime::format_err!("no memory export"))?;
                let (ptr, len) = (usize::try_from(ptr)?, usize::try_from(len)?);
                let len = len.min(import::MAX_LOG_LEN);
                let text = memory
                    .data(&caller)
                    .get(ptr..ptr + len)
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .ok_or_else(|| wasmtime::format_err!("log message out of bounds"))?;
                caller.data_mut().logs.push((level, text));
                Ok(())
            },
        )?;
        linker.func_wrap(import::MODULE, import::NOW_MS.name, || 0_i64)?;
        let mut store = Store::new(&engine, HostState::default());
        let instance = linker.instantiate(&mut store, &module)?;
        let version: TypedFunc<(), u32> =
            instance.get_typed_func(&mut store, export::ABI_VERSION.name)?;
        ensure!(version.call(&mut store, ())? == sdk::ABI_VERSION);
        let io: TypedFunc<(), i32> = instance.get_typed_func(&mut store, export::IO_BUFFER.name)?;
        let buffer = usize::try_from(io.call(&mut store, ())?)?;
        ensure!(
            buffer % 8 == 0,
            "I/O buffer at {buffer} is not 8-byte aligned"
        );
        let memory = instance
            .get_memory(&mut store, export::MEMORY)
            .context("memory")?;
        ensure!(buffer + IO_BUFFER_SIZE <= memory.data_size(&store));
        let select = instance.get_typed_func(&mut store, export::SELECT.name)?;
        Ok(Self {
            store,
            memory,
            buffer,
            select,
            instance,
        })
    }

    fn write(&mut self, request: &FlowRequest, candidates: &[Candidate]) -> Result<()> {
        let mut bytes = vec![0_u8; IO_BUFFER_SIZE];
        let len = sdk::encode_io(request, candidates, &mut bytes)?;
        self.memory
            .write(&mut self.store, self.buffer, &bytes[..len])?;
        Ok(())
    }

    fn select(&mut self, request: &FlowRequest, candidates: &[Candidate]) -> Result<Decision> {
        self.write(request, candidates)?;
        let n = i32::try_from(candidates.len())?;
        let raw = self.select.call(&mut self.store, n)?;
        Ok(Decision::from_raw(raw, candidates.len())?)
    }

    fn raw_select(&mut self, n: i32) -> Result<i32> {
        Ok(self.select.call(&mut self.store, n)?)
    }
}

fn arb_request() -> impl Strategy<Value = FlowRequest> {
    // A small address space, so prefixes and hashes collide and ties happen.
    (
        any::<[u8; 2]>(),
        any::<u16>(),
        0_u64..4 * 86_400,
        prop::bool::ANY,
    )
        .prop_map(|(ab, port, secs, udp)| {
            let src = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, ab[0] % 4, ab[1], 7)), port);
            let dst = SocketAddr::from(([192, 200, 0, 10], 443));
            let request = if udp {
                harness::udp(src, dst)
            } else {
                harness::tcp(src, dst)
            };
            request.with_now(1_704_067_200 + secs)
        })
}

fn arb_candidate() -> impl Strategy<Value = Candidate> {
    let load = prop_oneof![
        8 => (0_u8..5).prop_map(|l| f64::from(l) / 4.0),
        1 => Just(f64::NAN),
        1 => any::<f64>(),
    ];
    (
        any::<[u8; 2]>(),
        load,
        0_u8..30,
        prop::bool::weighted(0.8),
        0_u16..4,
    )
        .prop_map(|(ab, load, cost, up, tags)| {
            let addr = IpAddr::V4(Ipv4Addr::new(10, ab[0] % 4, ab[1], 1));
            let c = if up {
                Candidate::up(addr, load, f64::from(cost))
            } else {
                Candidate::down(addr, load, f64::from(cost))
            };
            c.with_tags(tags)
        })
}

fn arb_case() -> impl Strategy<Value = (FlowRequest, Vec<Candidate>)> {
    (
        arb_request(),
        prop::collection::vec(arb_candidate(), 0..=40),
    )
}

/// Runs `cases` random cases comparing the module with `native`.
fn differential(
    name: &str,
    cases: u32,
    mut native: impl FnMut(&FlowRequest, &[Candidate]) -> Decision,
) -> Result<()> {
    let guest = RefCell::new(Guest::load(name)?);
    let native = RefCell::new(&mut native);
    let mut runner = TestRunner::new(Config::with_cases(cases));
    runner
        .run(&arb_case(), |(request, candidates)| {
            let wasm = guest
                .borrow_mut()
                .select(&request, &candidates)
                .map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
            let native = harness::select(&mut *native.borrow_mut(), &request, &candidates)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(wasm, native);
            if let Decision::Select(i) = wasm {
                prop_assert!(candidates[i].is_up());
            }
            Ok(())
        })
        .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;

    // Out-of-range counts are the guest's fault code, not a trap or a guess.
    let mut guest = guest.into_inner();
    for n in [-1, i32::try_from(MAX_CANDIDATES + 1)?, i32::MIN] {
        ensure!(guest.raw_select(n)? == DECISION_FAULT, "{name}: count {n}");
    }
    Ok(())
}

#[test]
fn least_load_matches_native() -> Result<()> {
    differential(least_load::NAME, 300, least_load::select)
}

#[test]
fn proximity_matches_native() -> Result<()> {
    differential(proximity::NAME, 300, proximity::select)
}

#[test]
fn time_of_day_matches_native() -> Result<()> {
    differential(time_of_day::NAME, 300, time_of_day::select)
}

#[test]
fn weighted_cost_matches_native() -> Result<()> {
    differential(weighted_cost::NAME, 300, weighted_cost::select)?;

    let mut guest = Guest::load(weighted_cost::NAME)?;
    let cost: TypedFunc<(f64, f64), f64> = guest
        .instance
        .get_typed_func(&mut guest.store, export::COST.name)?;
    let aggregate: TypedFunc<i32, f64> = guest
        .instance
        .get_typed_func(&mut guest.store, export::AGGREGATE.name)?;
    let guest = RefCell::new(guest);
    let mut runner = TestRunner::new(Config::with_cases(200));
    runner
        .run(
            &(
                any::<f64>(),
                any::<f64>(),
                prop::collection::vec(arb_candidate(), 0..=40),
            ),
            |(load, route, candidates)| {
                let mut g = guest.borrow_mut();
                let wasm_f = cost.call(&mut g.store, (load, route)).map_err(fail)?;
                let native_f = weighted_cost::cost(load, route);
                prop_assert!(
                    same_f64(wasm_f, native_f),
                    "F({load}, {route}): {wasm_f} vs {native_f}"
                );

                let request = harness::tcp(([10, 0, 0, 1], 1), ([10, 0, 0, 2], 2));
                g.write(&request, &candidates).map_err(fail)?;
                let n = i32::try_from(candidates.len()).map_err(fail)?;
                let wasm_g = aggregate.call(&mut g.store, n).map_err(fail)?;
                let native_g = harness::aggregate(weighted_cost::aggregate, &candidates)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert!(same_f64(wasm_g, native_g), "G: {wasm_g} vs {native_g}");
                Ok(())
            },
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut g = guest.into_inner();
    ensure!(aggregate.call(&mut g.store, -1)?.is_nan());
    ensure!(aggregate.call(&mut g.store, 257)?.is_nan());
    Ok(())
}

#[test]
fn consistent_hash_matches_native_and_logs_rebuilds() -> Result<()> {
    let mut table = Box::new(MaglevTable::EMPTY);
    differential(consistent_hash_name(), 60, |r, c| table.select(r, c))?;

    // A fixed set: the wasm instance builds its table once, logs it, then reuses it.
    let mut guest = Guest::load(consistent_hash_name())?;
    let mut table = Box::new(MaglevTable::EMPTY);
    let candidates: Vec<Candidate> = (1..=8)
        .map(|i| Candidate::up(IpAddr::V4(Ipv4Addr::new(10, 9, 0, i)), 0.5, 0.0))
        .collect();
    for port in 0..300_u16 {
        let request = harness::tcp(([10, 0, 3, 4], port), ([192, 200, 0, 10], 80));
        let wasm = guest.select(&request, &candidates)?;
        let native = harness::select(|r, c| table.select(r, c), &request, &candidates)?;
        ensure!(wasm == native, "port {port}: {wasm:?} vs {native:?}");
    }
    let logs = &guest.store.data().logs;
    ensure!(
        logs == &[(
            sdk::LogLevel::Debug as i32,
            "consistent_hash: lookup table rebuilt".to_owned()
        )],
        "logs {logs:?}"
    );
    ensure!(layout::IO_CANDIDATES_OFFSET == FlowRequest::SIZE);
    Ok(())
}

fn consistent_hash_name() -> &'static str {
    slr_policy_wasm::consistent_hash::NAME
}

fn same_f64(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a.to_bits() == b.to_bits()
}

fn fail(e: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

/// A scheduler module in wasmtime, driven through `pronto_rank` as a host would.
struct RankGuest {
    store: Store<HostState>,
    memory: Memory,
    buffer: usize,
    rank: TypedFunc<(), i64>,
}

impl RankGuest {
    fn load(name: &str) -> Result<Self> {
        let path = format!("{}/modules/{name}.wasm", env!("CARGO_MANIFEST_DIR"));
        let bytes = std::fs::read(&path).with_context(|| path.clone())?;
        let engine = Engine::default();
        let module = Module::new(&engine, &bytes)?;
        // Schedulers ship without capabilities: an empty linker must do.
        let linker: Linker<HostState> = Linker::new(&engine);
        let mut store = Store::new(&engine, HostState::default());
        let instance = linker.instantiate(&mut store, &module)?;
        let version: TypedFunc<(), u32> =
            instance.get_typed_func(&mut store, export::ABI_VERSION.name)?;
        ensure!(version.call(&mut store, ())? == sdk::ABI_VERSION);
        let io: TypedFunc<(), i32> = instance.get_typed_func(&mut store, export::IO_BUFFER.name)?;
        let buffer = usize::try_from(io.call(&mut store, ())?)?;
        ensure!(
            buffer % 8 == 0,
            "I/O buffer at {buffer} is not 8-byte aligned"
        );
        let memory = instance
            .get_memory(&mut store, export::MEMORY)
            .context("memory")?;
        ensure!(buffer + IO_BUFFER_SIZE <= memory.data_size(&store));
        let rank = instance.get_typed_func(&mut store, export::RANK.name)?;
        Ok(Self {
            store,
            memory,
            buffer,
            rank,
        })
    }

    fn raw(&mut self, bytes: &[u8; RankRequest::SIZE]) -> Result<i64> {
        self.memory.write(&mut self.store, self.buffer, bytes)?;
        Ok(self.rank.call(&mut self.store, ())?)
    }

    fn rank(&mut self, request: &RankRequest) -> Result<u64> {
        let mut bytes = [0_u8; RankRequest::SIZE];
        request.encode(&mut bytes)?;
        Ok(sdk::rank_from_raw(self.raw(&bytes)?)?)
    }

    fn pages(&self) -> usize {
        self.memory.data_size(&self.store) / 65_536
    }
}

fn arb_rank_request() -> impl Strategy<Value = RankRequest> {
    // Few nodes, children, flows and busy periods, so tags are reused and reset;
    // some nodes lie beyond the module's table.
    (
        (0_u32..1600, 0_u32..70, 0_u32..70, 0_u64..6, 0_u64..3),
        (1_u32..200, 0_u64..3, 0_u64..1 << 24, 0_u32..10, 0_u8..64),
        (any::<u8>(), any::<u64>(), prop::bool::weighted(0.05)),
    )
        .prop_map(
            |(
                (len, node, child, flow, period),
                (weight, vstep, now, queued, dscp),
                (prio, big, huge),
            )| {
                let len = if huge { u32::MAX } else { len };
                let vtime = if huge { big } else { vstep * 4096 };
                let child = if child % 3 == 0 { node } else { child };
                RankRequest::leaf(len, child, flow.wrapping_mul(0x1234_5678_9abc_def1))
                    .with_node(node, child, weight, prio)
                    .with_state(vtime, period, queued)
                    .with_now(if huge { big } else { now })
                    .with_dscp(dscp, 6)
            },
        )
}

/// Runs random sequences of requests through the module and the native rank
/// function (fresh state each sequence on both sides) and compares every answer.
fn rank_differential<S>(
    name: &str,
    cases: u32,
    fresh: impl Fn() -> S,
    native: impl Fn(&mut S, &RankRequest) -> u64,
) -> Result<()> {
    let mut runner = TestRunner::new(Config::with_cases(cases));
    runner
        .run(
            &prop::collection::vec(arb_rank_request(), 1..200),
            |requests| {
                let mut guest = RankGuest::load(name).map_err(fail)?;
                let mut state = fresh();
                for request in &requests {
                    let wasm = guest.rank(request).map_err(fail)?;
                    let native = harness::rank(|r| native(&mut state, r), request)
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(wasm, native, "{:?}", request);
                }
                Ok(())
            },
        )
        .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;

    // A request the host could never write is the guest's fault code, not a rank.
    let mut guest = RankGuest::load(name)?;
    let mut bytes = [0_u8; RankRequest::SIZE];
    RankRequest::leaf(100, 1, 1).encode(&mut bytes)?;
    for (at, value) in [(layout::rank::RESERVED0, 1_u8), (layout::rank::DSCP, 64)] {
        let mut bad = bytes;
        bad[at] = value;
        ensure!(guest.raw(&bad)? == sdk::RANK_FAULT, "{name}: byte {at}");
    }
    ensure!(
        guest.raw(&[0; RankRequest::SIZE])? == sdk::RANK_FAULT,
        "{name}: weight 0"
    );
    ensure!(guest.pages() <= 2, "{name}: {} pages", guest.pages());
    Ok(())
}

#[test]
fn sfq_matches_native() -> Result<()> {
    rank_differential(
        sfq::NAME,
        60,
        || Box::new(sfq::Sfq::EMPTY),
        |s, r| s.rank(r),
    )
}

#[test]
fn strict_priority_matches_native() -> Result<()> {
    rank_differential(
        strict_priority::NAME,
        40,
        || (),
        |(), r| strict_priority::rank(r),
    )
}

#[test]
fn least_slack_matches_native() -> Result<()> {
    rank_differential(least_slack::NAME, 40, || (), |(), r| least_slack::rank(r))
}
