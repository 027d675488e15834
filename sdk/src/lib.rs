//! `sdk`: the Pronto module ABI v1, the one definition that guests (wasm modules)
//! and the host (exec-env's wasmtime code) both compile against.
//!
//! Owns: the `#[repr(C)]` request/candidate/decision types with their byte layout
//! and checked little-endian codec ([`abi`]), the export/import names and
//! signatures ([`export`], [`import`]), the export macros, the guest-only glue
//! (`guest`, wasm32 only) and a native test harness ([`harness`], host only).
//! It must never: allocate (it is `no_std` without `alloc`), panic on bytes it is
//! handed, or define a layout anywhere but [`layout`].
//!
//! # Call convention (ABI v1)
//!
//! A module is a core wasm module with no WASI. Guest linear memory is the only
//! data channel; everything is little endian.
//!
//! **Exports** (see [`export`]):
//!
//! | name | signature | meaning |
//! | --- | --- | --- |
//! | `memory` | memory | linear memory |
//! | `pronto_abi_version` | `() -> i32` | must be [`ABI_VERSION`] (1); check once at load |
//! | `pronto_io_buffer` | `() -> i32` | guest address of the I/O buffer; fixed per instance, call once |
//! | `pronto_select` | `(n: i32) -> i32` | policy: choose a next hop |
//! | `pronto_select_v2` | `(n: i32, w0..w6: i64) -> i32` | the same, request as arguments (optional, beside `pronto_select`) |
//! | `pronto_cost` | `(load: f64, route_cost: f64) -> f64` | F |
//! | `pronto_aggregate` | `(n: i32) -> f64` | G |
//! | `pronto_rank` | `() -> i64` | scheduler: rank a packet |
//!
//! A policy module exports `pronto_select` (and, optionally, `pronto_select_v2`;
//! [`export_policy!`] exports both) and/or `pronto_cost` + `pronto_aggregate`; a scheduler module exports `pronto_rank`. The sdk also leaves the linker's default `__data_end` and
//! `__heap_base` global exports; hosts ignore them.
//!
//! **I/O buffer** at address `buf = pronto_io_buffer()`, 8-byte aligned,
//! [`IO_BUFFER_SIZE`] = 10 296 bytes (offsets in [`layout`]):
//!
//! ```text
//! FlowRequest at buf + 0 (56 bytes)
//!   +0  proto u8        +1  family u8 (4|6)   +2 level u8 (0 net,1 sys,2 site)
//!   +3  reserved u8 = 0 +4  src_port u16      +6 dst_port u16
//!   +8  subnet_id u32   +12 reserved u32 = 0
//!   +16 src_addr [16]   +32 dst_addr [16]     (IPv4 as ::ffff:a.b.c.d)
//!   +48 now_unix_secs u64
//! Candidate i at buf + 56 + 40*i (40 bytes), i < MAX_CANDIDATES (256)
//!   +0  addr [16] (IPv4 v4-mapped)  +16 load f64  +24 route_cost f64
//!   +32 flags u32 (bit 0 UP; bits 1..15 reserved = 0; bits 16..31 operator tags)
//!   +36 reserved u32 = 0
//! ```
//!
//! **Select**: the host writes the request at `buf` and `n` candidates after it
//! ([`encode_io`]; candidates may be rewritten only when they change with
//! [`encode_candidates`], and Pronto's host does so: the candidates of the last
//! call stay in place while they are unchanged, which is why a guest must never
//! write its buffer), then calls `pronto_select(n)` with `0 <= n <= 256`.
//! The result is an index `0 <= r < n`, [`DECISION_REJECT`] (`-1`), or
//! [`DECISION_FAULT`] (`-2`, the guest found `n` out of range or its policy
//! produced an out-of-range index). Validate with [`Decision::from_raw`]; anything
//! but `Ok` is a module fault. A policy must never return a candidate without
//! [`flags::UP`]; hosts may double-check.
//!
//! **Select, request as arguments**: a host that finds `pronto_select_v2`
//! calls `pronto_select_v2(n, w0, .., w6)` instead, the request's 56-byte
//! encoding as seven little-endian words ([`FlowRequest::to_words`], so `w0`
//! holds proto, family, level, reserved and the two ports; `w1` the subnet id;
//! `w2, w3` the source address; `w4, w5` the destination; `w6` the time), and
//! does not write the request into the buffer. The candidates and the result
//! are as above. Per flow the host then writes nothing into guest memory at
//! all while the candidates stay unchanged; modules that predate it keep
//! working through `pronto_select`.
//!
//! **F**: `pronto_cost(load, route_cost)`, plain arguments, no buffer. **G**: the
//! host writes `n` candidates at `buf + 56` and calls `pronto_aggregate(n)`; the
//! request part is ignored; NaN means fault (bad `n`). Both results should be
//! checked (`+inf` is a legal "unreachable"; NaN is a fault).
//!
//! **Rank** (scheduler modules, see [`rank`]): the host writes one
//! [`RankRequest`] at `buf + 0` ([`RankRequest::encode`], 64 bytes, offsets in
//! [`layout::rank`]) and calls `pronto_rank()`:
//!
//! ```text
//! RankRequest at buf + 0 (64 bytes)
//!   +0  len u32        +4  class u32      +8  node u32        +12 child u32
//!   +16 flow_hash u64  +24 now_ns u64     +32 vtime u64       +40 busy_period u64
//!   +48 weight u32     +52 queued u32     +56 dscp u8  +57 priority u8
//!   +58 proto u8       +59 reserved u8 = 0                   +60 reserved u32 = 0
//! ```
//!
//! It is called once per node on the packet's path, leaf first (`node == child
//! == class`), then each ancestor with `child` = the node the packet comes
//! through. The result is a rank in `0..=i64::MAX` (smaller leaves first, ties in
//! arrival order) or negative ([`RANK_FAULT`]) for a request that does not
//! decode; validate with [`rank_from_raw`]. A module may keep per-flow state in
//! its own memory between calls (`guest::InstanceCell`).
//!
//! **Imports** (see [`import`]), all in module `pronto`, each linked only if the
//! module's manifest was granted its capability: `log(level: i32, ptr: i32,
//! len: i32)` (capability `log`) and `now_ms() -> i64` (capability `clock`). Any
//! other import means the module is rejected.
//!
//! **Traps**: a guest panic is `unreachable`; a trap fails that call only.
//!
//! Guests hold no allocator and no manifest (the manifest is added when the module
//! is signed, by `pronto module sign`).
//!
//! # Writing a policy
//!
//! ```ignore
//! #![no_std]
//! use sdk::{Candidate, Decision, FlowRequest};
//! fn select(_request: &FlowRequest, candidates: &[Candidate]) -> Decision {
//!     candidates.iter().position(Candidate::is_up).map_or(Decision::Reject, Decision::Select)
//! }
//! sdk::export_policy!(select);
//! ```
//!
//! # Writing a scheduler
//!
//! ```ignore
//! #![no_std]
//! use sdk::RankRequest;
//! /// Strict priority between classes, arrival order inside one.
//! fn rank(request: &RankRequest) -> u64 {
//!     if request.is_leaf() { 0 } else { u64::from(request.priority) }
//! }
//! sdk::export_scheduler!(rank);
//! ```
//!
//! Build for `wasm32-unknown-unknown` as a `cdylib` (see `scripts/build-wasm.sh`);
//! test natively through [`harness`].
#![no_std]
#![warn(missing_docs)]

#[cfg(not(target_arch = "wasm32"))]
extern crate std;

pub mod abi;
mod names;
pub mod rank;

#[cfg(target_arch = "wasm32")]
pub mod guest;

#[cfg(not(target_arch = "wasm32"))]
pub mod harness;

pub use abi::{
    ABI_VERSION, AbiError, AddressFamily, Candidate, DECISION_FAULT, DECISION_REJECT, Decision,
    FlowRequest, IO_BUFFER_SIZE, IoBuffer, Level, MAX_CANDIDATES, addr_bytes, addr_from_bytes,
    check_count, decode_candidates, decode_io, encode_candidates, encode_io, flags, layout, proto,
};
pub use names::{Func, LogLevel, Signature, ValType, export, import};
pub use rank::{MAX_RANK, RANK_FAULT, RankRequest, rank_from_raw, rank_to_raw};

/// Exports `pronto_select` from `fn(&FlowRequest, &[Candidate]) -> Decision`.
///
/// On targets other than wasm32 it only type-checks the function, so a crate can
/// hold several modules and still build and test natively.
#[macro_export]
macro_rules! export_policy {
    ($select:path) => {
        const _: fn(&$crate::FlowRequest, &[$crate::Candidate]) -> $crate::Decision = $select;

        /// `pronto_select` export (ABI v1).
        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code, reason = "a wasm export needs an unmangled name")]
        #[unsafe(no_mangle)]
        pub extern "C" fn pronto_select(n_candidates: i32) -> i32 {
            $crate::guest::run_select(n_candidates, $select)
        }

        /// `pronto_select_v2` export (ABI v1, request as arguments).
        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code, reason = "a wasm export needs an unmangled name")]
        #[unsafe(no_mangle)]
        pub extern "C" fn pronto_select_v2(
            n_candidates: i32,
            w0: i64,
            w1: i64,
            w2: i64,
            w3: i64,
            w4: i64,
            w5: i64,
            w6: i64,
        ) -> i32 {
            $crate::guest::run_select_v2(n_candidates, [w0, w1, w2, w3, w4, w5, w6], $select)
        }
    };
}

/// Exports `pronto_cost` (F) from `fn(load: f64, route_cost: f64) -> f64`.
#[macro_export]
macro_rules! export_cost {
    ($cost:path) => {
        const _: fn(f64, f64) -> f64 = $cost;

        /// `pronto_cost` export (ABI v1).
        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code, reason = "a wasm export needs an unmangled name")]
        #[unsafe(no_mangle)]
        pub extern "C" fn pronto_cost(load: f64, route_cost: f64) -> f64 {
            $cost(load, route_cost)
        }
    };
}

/// Exports `pronto_aggregate` (G) from `fn(&[Candidate]) -> f64`.
#[macro_export]
macro_rules! export_aggregate {
    ($aggregate:path) => {
        const _: fn(&[$crate::Candidate]) -> f64 = $aggregate;

        /// `pronto_aggregate` export (ABI v1).
        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code, reason = "a wasm export needs an unmangled name")]
        #[unsafe(no_mangle)]
        pub extern "C" fn pronto_aggregate(n_candidates: i32) -> f64 {
            $crate::guest::run_aggregate(n_candidates, $aggregate)
        }
    };
}

/// Exports `pronto_rank` (scheduler ABI v1) from `fn(&RankRequest) -> u64`.
///
/// Ranks above [`MAX_RANK`] saturate; a request that fails
/// [`RankRequest::validate`] is answered with [`RANK_FAULT`] without calling the
/// function. Natively it only type-checks the function.
#[macro_export]
macro_rules! export_scheduler {
    ($rank:path) => {
        const _: fn(&$crate::RankRequest) -> u64 = $rank;

        /// `pronto_rank` export (scheduler ABI v1).
        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code, reason = "a wasm export needs an unmangled name")]
        #[unsafe(no_mangle)]
        pub extern "C" fn pronto_rank() -> i64 {
            $crate::guest::run_rank($rank)
        }
    };
}
