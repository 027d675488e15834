//! Guest side (wasm32 only): the static I/O buffer, the two exports every module
//! has, the glue the export macros call (policies and schedulers), wrappers over host imports and the panic
//! handler.
//!
//! This is the only `unsafe` a policy author's module contains, and it lives here
//! so authors' crates keep `unsafe_code` denied.

use core::cell::{RefCell, UnsafeCell};

use crate::{
    ABI_VERSION, Candidate, DECISION_FAULT, Decision, FlowRequest, IoBuffer, MAX_CANDIDATES,
    RANK_FAULT, RankRequest, rank_to_raw,
};

/// The I/O buffer, written by the host between calls.
struct IoCell(UnsafeCell<IoBuffer>);

// SAFETY: wasm32-unknown-unknown without the `atomics` feature has exactly one
// thread, so no two threads can ever reach the cell.
#[expect(unsafe_code, reason = "single-threaded wasm instance; see SAFETY")]
unsafe impl Sync for IoCell {}

static IO: IoCell = IoCell(UnsafeCell::new(IoBuffer::ZEROED));

/// `pronto_abi_version`: the ABI this guest was built against.
#[expect(unsafe_code, reason = "a wasm export needs an unmangled name")]
#[unsafe(no_mangle)]
pub extern "C" fn pronto_abi_version() -> u32 {
    ABI_VERSION
}

/// `pronto_io_buffer`: address of the I/O buffer in linear memory.
#[expect(unsafe_code, reason = "a wasm export needs an unmangled name")]
#[unsafe(no_mangle)]
pub extern "C" fn pronto_io_buffer() -> i32 {
    // Pointers are 32 bits on wasm32, so this is lossless.
    IO.0.get() as usize as i32
}

/// Runs `f` on the I/O buffer's request and first `n` candidates.
fn with_io<R>(n: i32, f: impl FnOnce(&FlowRequest, &[Candidate]) -> R) -> Option<R> {
    let n = usize::try_from(n).ok().filter(|n| *n <= MAX_CANDIDATES)?;
    // SAFETY: the host writes the buffer only between calls, never during one, and
    // the guest never writes it, so no mutable access overlaps this shared borrow,
    // which ends before the export returns. Every field is plain old data, so any
    // bytes the host wrote are a valid `IoBuffer`.
    #[expect(unsafe_code, reason = "reading the host-written buffer; see SAFETY")]
    let io: &IoBuffer = unsafe { &*IO.0.get() };
    let candidates = io.candidates.get(..n)?;
    Some(f(&io.request, candidates))
}

/// Glue behind `pronto_select_v2`: the request from its argument words, the
/// candidates from the I/O buffer; see [`crate::export_policy!`].
pub fn run_select_v2(
    n: i32,
    words: [i64; FlowRequest::WORDS],
    f: impl FnOnce(&FlowRequest, &[Candidate]) -> Decision,
) -> i32 {
    let request = FlowRequest::from_words(words.map(|w| w as u64));
    with_io(n, |_, candidates| {
        f(&request, candidates).to_raw(candidates.len())
    })
    .unwrap_or(DECISION_FAULT)
}

/// Glue behind `pronto_select`; see [`crate::export_policy!`].
pub fn run_select(n: i32, f: impl FnOnce(&FlowRequest, &[Candidate]) -> Decision) -> i32 {
    with_io(n, |request, candidates| {
        f(request, candidates).to_raw(candidates.len())
    })
    .unwrap_or(DECISION_FAULT)
}

/// Glue behind `pronto_aggregate`; see [`crate::export_aggregate!`].
pub fn run_aggregate(n: i32, g: impl FnOnce(&[Candidate]) -> f64) -> f64 {
    with_io(n, |_, candidates| g(candidates)).unwrap_or(f64::NAN)
}

/// Glue behind `pronto_rank`; see [`crate::export_scheduler!`].
pub fn run_rank(f: impl FnOnce(&RankRequest) -> u64) -> i64 {
    // SAFETY: as in `with_io`, the host writes the buffer only between calls and
    // the guest never writes it, so this shared borrow overlaps no mutable access.
    // `RankRequest` is plain old data (integers only), 64 bytes with alignment 8,
    // and sits at offset 0 of the 8-aligned, 10 296-byte `IoBuffer` (asserted in
    // `rank.rs`), so the cast pointer is in bounds, aligned, and any bytes are a
    // valid value.
    #[expect(unsafe_code, reason = "reading the host-written buffer; see SAFETY")]
    let request: &RankRequest = unsafe { &*IO.0.get().cast::<RankRequest>() };
    if request.validate().is_err() {
        return RANK_FAULT;
    }
    rank_to_raw(f(request))
}

/// Per-instance mutable state for a policy (e.g. a cached lookup table), usable
/// from a `static` without `unsafe` in the author's crate.
///
/// Re-entrant use (impossible with the ABI's exports, which never call back into
/// the guest) returns `None` instead of aliasing.
pub struct InstanceCell<T>(RefCell<T>);

impl<T> core::fmt::Debug for InstanceCell<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("InstanceCell")
    }
}

// SAFETY: as for `IoCell`: one thread per wasm instance, so the `RefCell` is never
// reached from two threads.
#[expect(unsafe_code, reason = "single-threaded wasm instance; see SAFETY")]
unsafe impl<T> Sync for InstanceCell<T> {}

impl<T> InstanceCell<T> {
    /// Wraps the initial state.
    pub const fn new(value: T) -> Self {
        Self(RefCell::new(value))
    }

    /// Runs `f` with exclusive access to the state.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        let mut state = self.0.try_borrow_mut().ok()?;
        Some(f(&mut state))
    }
}

/// Safe wrappers over the `pronto` host imports. A module imports a host function
/// only if it calls the wrapper, and the host instantiates it only if the module's
/// manifest was granted the matching capability.
pub mod host {
    use crate::LogLevel;
    use crate::import::MAX_LOG_LEN;

    #[expect(unsafe_code, reason = "declaring host imports")]
    #[link(wasm_import_module = "pronto")]
    unsafe extern "C" {
        #[link_name = "log"]
        fn pronto_log(level: i32, ptr: i32, len: i32);
        #[link_name = "now_ms"]
        fn pronto_now_ms() -> i64;
    }

    /// Logs `message` (truncated to [`MAX_LOG_LEN`] bytes) through the host;
    /// needs capability `log`.
    pub fn log(level: LogLevel, message: &str) {
        let len = message.len().min(MAX_LOG_LEN);
        // SAFETY: `pronto.log` only reads `len` bytes at `ptr`, which lie inside
        // `message`; pointers and lengths fit in i32 on wasm32.
        #[expect(unsafe_code, reason = "calling a host import; see SAFETY")]
        unsafe {
            pronto_log(level as i32, message.as_ptr() as usize as i32, len as i32);
        }
    }

    /// Host monotonic clock in milliseconds; needs capability `clock`.
    #[must_use]
    pub fn now_ms() -> u64 {
        // SAFETY: `pronto.now_ms` takes nothing and returns a plain integer.
        #[expect(unsafe_code, reason = "calling a host import; see SAFETY")]
        let raw = unsafe { pronto_now_ms() };
        raw as u64
    }
}

#[cfg(feature = "panic-handler")]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    // A trap fails this call only; the host falls back and counts the fault.
    core::arch::wasm32::unreachable()
}
