//! Export and import names and their wasm signatures: what the host links and
//! checks, and what a guest exports through the sdk macros.

/// A wasm value type, as used in the signatures below.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValType {
    /// 32-bit integer.
    I32,
    /// 64-bit integer.
    I64,
    /// 64-bit float.
    F64,
}

/// A wasm function signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature {
    /// Parameter types in order.
    pub params: &'static [ValType],
    /// Result types in order.
    pub results: &'static [ValType],
}

/// An export or import: its name and signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Func {
    /// Field name.
    pub name: &'static str,
    /// Wasm signature.
    pub signature: Signature,
}

const fn func(name: &'static str, params: &'static [ValType], results: &'static [ValType]) -> Func {
    Func {
        name,
        signature: Signature { params, results },
    }
}

/// Functions a guest exports.
pub mod export {
    use super::{Func, ValType::*, func};

    /// The guest's linear memory; the only channel between host and guest.
    pub const MEMORY: &str = "memory";
    /// `pronto_abi_version() -> i32` (a `u32`): must equal [`crate::ABI_VERSION`].
    pub const ABI_VERSION: Func = func("pronto_abi_version", &[], &[I32]);
    /// `pronto_io_buffer() -> i32`: address in guest memory of the I/O buffer,
    /// 8-byte aligned, [`crate::IO_BUFFER_SIZE`] bytes; constant for the life of
    /// the instance, so the host may call it once per instance.
    pub const IO_BUFFER: Func = func("pronto_io_buffer", &[], &[I32]);
    /// `pronto_select(n_candidates: i32) -> i32`: choose among the request and
    /// `n_candidates` candidates in the I/O buffer; returns an index,
    /// [`crate::DECISION_REJECT`] or [`crate::DECISION_FAULT`].
    pub const SELECT: Func = func("pronto_select", &[I32], &[I32]);
    /// `pronto_select_v2(n_candidates: i32, w0: i64, .., w6: i64) -> i32`: the
    /// same choice as [`SELECT`], with the request passed as arguments instead
    /// of in the I/O buffer: `w0..w6` are its 56-byte encoding read as seven
    /// little-endian words ([`crate::FlowRequest::to_words`]); the candidates
    /// are in the I/O buffer as for [`SELECT`], whose request part the host then
    /// leaves as it was. Optional: a module that exports it must also export
    /// [`SELECT`] (hosts without v2 call that), and a host that knows v2 calls
    /// it instead, saving the request's trip through guest memory.
    pub const SELECT_V2: Func = func(
        "pronto_select_v2",
        &[I32, I64, I64, I64, I64, I64, I64, I64],
        &[I32],
    );
    /// `pronto_cost(load: f64, route_cost: f64) -> f64`: the operator's F.
    pub const COST: Func = func("pronto_cost", &[F64, F64], &[F64]);
    /// `pronto_aggregate(n_candidates: i32) -> f64`: the operator's G over the
    /// candidates in the I/O buffer (the request part is ignored); NaN if the
    /// count is out of range.
    pub const AGGREGATE: Func = func("pronto_aggregate", &[I32], &[F64]);
    /// `pronto_rank() -> i64`: rank the packet described by the
    /// [`crate::RankRequest`] at offset 0 of the I/O buffer; returns a rank in
    /// `0..=i64::MAX` (smaller leaves first) or a negative value
    /// ([`crate::RANK_FAULT`]) when the request does not decode.
    pub const RANK: Func = func("pronto_rank", &[], &[I64]);
    /// Exports every guest has.
    pub const REQUIRED: [Func; 2] = [ABI_VERSION, IO_BUFFER];
    /// Exports of which a policy module has at least one: its entry points
    /// ([`SELECT_V2`] only beside [`SELECT`]).
    pub const ENTRY_POINTS: [Func; 4] = [SELECT, SELECT_V2, COST, AGGREGATE];
    /// Exports a scheduler module has (all of them): its entry points.
    pub const SCHEDULER_ENTRY_POINTS: [Func; 1] = [RANK];
}

/// Host functions a guest may import, each granted only with its capability.
pub mod import {
    use super::{Func, ValType::*, func};

    /// Import module name of every host function.
    pub const MODULE: &str = "pronto";
    /// `pronto.log(level: i32, ptr: i32, len: i32)`: a UTF-8 message (host decodes
    /// lossily, truncates at [`MAX_LOG_LEN`]) at a [`crate::LogLevel`]; capability
    /// [`LOG_CAPABILITY`]. Out-of-bounds pointers trap the call.
    pub const LOG: Func = func("log", &[I32, I32, I32], &[]);
    /// `pronto.now_ms() -> i64`: host monotonic milliseconds; capability
    /// [`CLOCK_CAPABILITY`].
    pub const NOW_MS: Func = func("now_ms", &[], &[I64]);
    /// Capability name (manifest `capabilities`) that grants [`LOG`].
    pub const LOG_CAPABILITY: &str = "log";
    /// Capability name that grants [`NOW_MS`].
    pub const CLOCK_CAPABILITY: &str = "clock";
    /// Longest log message the host accepts, bytes.
    pub const MAX_LOG_LEN: usize = 1024;
    /// Every import a guest may have, with the capability that grants it.
    pub const ALL: [(Func, &str); 2] = [(LOG, LOG_CAPABILITY), (NOW_MS, CLOCK_CAPABILITY)];
}

/// Severity of a `pronto.log` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum LogLevel {
    /// Something failed.
    Error = 1,
    /// Something looks wrong.
    Warn = 2,
    /// Normal operation.
    Info = 3,
    /// Detail for debugging.
    Debug = 4,
    /// Very detailed.
    Trace = 5,
}

impl LogLevel {
    /// Parses the raw `level` argument of `pronto.log`; `None` for unknown values
    /// (a host should treat those as a guest fault or clamp them).
    #[must_use]
    pub const fn from_i32(value: i32) -> Option<Self> {
        match value {
            1 => Some(Self::Error),
            2 => Some(Self::Warn),
            3 => Some(Self::Info),
            4 => Some(Self::Debug),
            5 => Some(Self::Trace),
            _ => None,
        }
    }
}
