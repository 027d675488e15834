//! The wasmtime VM of one environment: compile verified modules, check them
//! against ABI v1, and run their entry points with bounded memory and CPU.
//!
//! * One [`Vm`] per environment owns one `wasmtime::Engine` configured with fuel
//!   (deterministic per-call accounting, optional) *and* epoch interruption (a
//!   wall-clock bound that also covers time spent outside wasm instructions),
//!   plus a background ticker thread that advances the epoch every
//!   [`VmConfig::epoch_tick`]. The thread stops when the last user of the engine
//!   (the environment and every instance compiled by it) is dropped.
//! * [`Vm::compile`] takes a [`VerifiedModule`](crate::verified::VerifiedModule)
//!   only, checks its imports and exports against `sdk::{export, import}`
//!   *before* compiling ([`check_interface`]), compiles with
//!   `Module::from_binary` (never `Module::deserialize`, never WAT text) and
//!   links exactly the host functions of the capabilities the module requested
//!   and the environment granted.
//! * A [`PolicyInstance`] is one instance in its own `Store` with a memory cap,
//!   one table, one instance; each call gets a fresh fuel budget and epoch
//!   deadline. It implements [`Policy`](router_core::policy::Policy) and
//!   [`CostModel`](router_core::policy::CostModel). A select passes the
//!   request as arguments of `pronto_select_v2` (or, for modules without it,
//!   writes it into the guest's I/O buffer for `pronto_select`) and rewrites
//!   the candidates only when they differ from the ones the last call left
//!   there.
//!
//! Faults map to [`PolicyError`](router_core::policy::PolicyError) as follows: a
//! trap (including a host function refusing a bad pointer and a stack overflow)
//! is `Trap`; fuel or epoch exhaustion is `Timeout`; a result that is not a
//! valid answer (index out of range, negative other than reject, a candidate
//! that is not UP, NaN from F or G, a negative rank) is `OutOfRange`, with
//! `index == usize::MAX` when the result was not an index at all
//! (`manager::ModuleRankHandle` maps faults to `RankError` instead); fuel cut short
//! by the caller's CPU share, too many candidates or an instance that cannot be
//! rebuilt are `Unavailable`. After any fault but the last kind the instance is
//! rebuilt from its `InstancePre`, since a trap may leave guest memory
//! half-written.
//!
//! Files, one job each:
//!
//! | file | what |
//! | --- | --- |
//! | `config.rs` | [`VmConfig`], the bounds and knobs |
//! | `error.rs` | [`VmError`] (load), [`Fault`] (call), [`CallOutcome`] |
//! | `clock.rs` | coarse clocks and the epoch ticker thread |
//! | `engine.rs` | [`Vm`]: the engine, compile and load; [`CompiledModule`] |
//! | `interface.rs` | [`precheck`] / [`check_interface`]: imports and exports against ABI v1 |
//! | `live.rs` | one live instance: store, entry points, I/O buffer, resident candidates |
//! | `instance.rs` | [`PolicyInstance`]: the lock and `run`, the frame of every call |
//! | `select.rs` | policy calls (`pronto_select`) |
//! | `cost.rs` | rank and cost calls (`pronto_rank`, F, G) |

mod clock;
mod config;
mod cost;
mod engine;
mod error;
mod instance;
mod interface;
mod live;
mod select;

pub use clock::{monotonic_ns, unix_secs};
pub use config::VmConfig;
pub use engine::{CompiledModule, Vm};
pub use error::{CallOutcome, Fault, FaultKind, TimeoutCause, VmError};
pub use instance::{InstanceStats, PolicyInstance};
pub use interface::{EntryPoints, Interface, check_interface, precheck};
