//! Host functions a module may import, each linked only when its capability was
//! both requested by the module's manifest and granted by the environment.
//!
//! | import | capability | what it does |
//! | --- | --- | --- |
//! | `pronto.log(level, ptr, len)` | `log` | one record to `tracing`, target `pronto::module`, message `module log`, the module's text in field `text`, escaped and cut at [`MAX_LOGGED_LEN`] bytes ([`escape_log_text`]), fields `module` and `truncated`; at most [`sdk::import::MAX_LOG_LEN`] bytes read, rate-limited per module |
//! | `pronto.now_ms() -> i64` | `clock` | monotonic milliseconds since the environment started |
//!
//! Nothing here reads or writes anything but the calling instance's own memory;
//! a pointer outside it traps that call (the VM then re-instantiates the module).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sdk::{LogLevel, export, import};
use wasmtime::{Caller, Extern, Linker, StoreLimits};

use crate::manifest::Capability;

/// How many `pronto.log` lines one module may emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimit {
    /// Lines allowed per window; further lines in the window are counted and
    /// dropped.
    pub lines: u32,
    /// Window length.
    pub window: Duration,
}

impl Default for LogLimit {
    /// 20 lines per second: enough to debug a policy, too few to flood the log
    /// from a per-flow call.
    fn default() -> Self {
        Self {
            lines: 20,
            window: Duration::from_secs(1),
        }
    }
}

/// Counters of a module's host-function use.
#[derive(Debug, Default)]
pub struct HostCounters {
    /// `pronto.log` lines emitted.
    pub log_lines: AtomicU64,
    /// `pronto.log` lines dropped by the rate limit.
    pub log_suppressed: AtomicU64,
    /// `pronto.log` messages cut at [`sdk::import::MAX_LOG_LEN`].
    pub log_truncated: AtomicU64,
    /// `pronto.log` calls that trapped (pointer out of bounds, negative length).
    pub log_faults: AtomicU64,
}

/// A snapshot of [`HostCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostStats {
    /// `pronto.log` lines emitted.
    pub log_lines: u64,
    /// `pronto.log` lines dropped by the rate limit.
    pub log_suppressed: u64,
    /// `pronto.log` messages truncated.
    pub log_truncated: u64,
    /// `pronto.log` calls that trapped.
    pub log_faults: u64,
}

impl HostCounters {
    /// Current values.
    pub fn snapshot(&self) -> HostStats {
        HostStats {
            log_lines: self.log_lines.load(Ordering::Relaxed),
            log_suppressed: self.log_suppressed.load(Ordering::Relaxed),
            log_truncated: self.log_truncated.load(Ordering::Relaxed),
            log_faults: self.log_faults.load(Ordering::Relaxed),
        }
    }
}

/// Fixed-window rate limit state.
#[derive(Debug)]
struct Window {
    start: Instant,
    used: u32,
    /// Lines dropped in the window that `start` opened; reported once when the
    /// next window opens, so a flood costs one summary line, not one per drop.
    dropped: u64,
}

/// What every instance of one module shares with the host: its name for logs, the
/// log rate limit (per module, so re-instantiation does not reset it), the clock
/// origin and counters.
#[derive(Debug)]
pub struct HostContext {
    module: Arc<str>,
    limit: LogLimit,
    window: Mutex<Window>,
    clock_origin: Instant,
    counters: HostCounters,
}

impl HostContext {
    /// Context for module `name`; `clock_origin` is what `pronto.now_ms` counts from.
    pub fn new(name: &str, limit: LogLimit, clock_origin: Instant) -> Self {
        Self {
            module: Arc::from(name),
            limit,
            window: Mutex::new(Window {
                start: Instant::now(),
                used: 0,
                dropped: 0,
            }),
            clock_origin,
            counters: HostCounters::default(),
        }
    }

    /// Module name used in log lines.
    pub fn module(&self) -> &str {
        &self.module
    }

    /// Host-function counters.
    pub fn counters(&self) -> &HostCounters {
        &self.counters
    }

    /// Whether one more line may be emitted now.
    fn admit_line(&self) -> bool {
        let now = Instant::now();
        // A poisoned lock only means another thread panicked while counting; the
        // counts are still plain integers, so keep using them.
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        if now.duration_since(w.start) >= self.limit.window {
            if w.dropped > 0 {
                tracing::warn!(target: "pronto::module", module = %self.module,
                    dropped = w.dropped, "module log lines dropped by the rate limit");
            }
            *w = Window {
                start: now,
                used: 0,
                dropped: 0,
            };
        }
        if w.used < self.limit.lines {
            w.used += 1;
            true
        } else {
            w.dropped = w.dropped.saturating_add(1);
            false
        }
    }
}

/// Data of one instance's `wasmtime::Store`.
#[derive(Debug)]
pub struct HostState {
    /// Memory, table and instance caps (the store's `ResourceLimiter`).
    pub limits: StoreLimits,
    /// Shared per-module context.
    pub context: Arc<HostContext>,
}

/// Defines in `linker` exactly the host functions for `capabilities`; the caller
/// has already checked that the module requested them and the environment granted
/// them.
pub fn link(
    linker: &mut Linker<HostState>,
    capabilities: &[Capability],
) -> Result<(), wasmtime::Error> {
    for capability in capabilities {
        match capability {
            Capability::Log => {
                linker.func_wrap(import::MODULE, import::LOG.name, log)?;
            }
            Capability::Clock => {
                linker.func_wrap(import::MODULE, import::NOW_MS.name, now_ms)?;
            }
        }
    }
    Ok(())
}

/// Longest module log text written to the router's log, bytes after escaping
/// (the marker of a cut included).
pub const MAX_LOGGED_LEN: usize = 512;

/// Appended to a module's log text cut at [`MAX_LOGGED_LEN`].
pub const TRUNCATION_MARKER: &str = "...[truncated]";

/// Module-supplied log text made safe to write: see [`escape_log_text`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EscapedLog {
    /// The escaped text, at most the bound asked for.
    pub text: String,
    /// Whether it was cut (and ends with [`TRUNCATION_MARKER`]).
    pub truncated: bool,
}

/// Escapes `text` so it holds no control character and is at most `max` bytes:
/// `\n`, `\r`, `\t` and `\\` as such, every other C0 control, DEL, C1
/// control and the Unicode line and paragraph separators as `\u{..}` (some log
/// readers break lines at those); a text longer than `max` is cut on a
/// character boundary (never inside an escape) and ends with
/// [`TRUNCATION_MARKER`]. What a module logs therefore stays one line and
/// cannot forge a record of the router.
pub fn escape_log_text(text: &str, max: usize) -> EscapedLog {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(text.len());
    // Length of `out` when the last character that fits before the marker was
    // written: where to cut, so no escape is split.
    let room = max.saturating_sub(TRUNCATION_MARKER.len());
    let mut cut = 0;
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
        if out.len() <= room {
            cut = out.len();
        }
        // The input is bounded (sdk::import::MAX_LOG_LEN), but stop escaping
        // once the result can only be cut.
        if out.len() > max {
            break;
        }
    }
    if out.len() <= max {
        return EscapedLog {
            text: out,
            truncated: false,
        };
    }
    out.truncate(cut);
    out.push_str(TRUNCATION_MARKER);
    EscapedLog {
        text: out,
        truncated: true,
    }
}

/// `pronto.now_ms() -> i64`.
fn now_ms(caller: Caller<'_, HostState>) -> i64 {
    let elapsed = caller.data().context.clock_origin.elapsed();
    i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
}

/// `pronto.log(level, ptr, len)`.
fn log(
    mut caller: Caller<'_, HostState>,
    level: i32,
    ptr: i32,
    len: i32,
) -> Result<(), wasmtime::Error> {
    let context = Arc::clone(&caller.data().context);
    let Some(Extern::Memory(memory)) = caller.get_export(export::MEMORY) else {
        context.counters.log_faults.fetch_add(1, Ordering::Relaxed);
        return Err(wasmtime::format_err!(
            "pronto.log: module exports no memory"
        ));
    };
    // Guest addresses are unsigned 32-bit; a negative length is a guest bug.
    let start = ptr as u32 as usize;
    let Ok(full_len) = usize::try_from(len) else {
        context.counters.log_faults.fetch_add(1, Ordering::Relaxed);
        return Err(wasmtime::format_err!("pronto.log: negative length {len}"));
    };
    let data = memory.data(&caller);
    // The whole message must lie in memory even if only a prefix is printed: the
    // guest should not learn less about its own bug because of truncation.
    if start
        .checked_add(full_len)
        .is_none_or(|end| end > data.len())
    {
        context.counters.log_faults.fetch_add(1, Ordering::Relaxed);
        return Err(wasmtime::format_err!(
            "pronto.log: message {start:#x}+{full_len} outside memory of {} bytes",
            data.len()
        ));
    }
    if !context.admit_line() {
        context
            .counters
            .log_suppressed
            .fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    let shown = full_len.min(import::MAX_LOG_LEN);
    if shown < full_len {
        context
            .counters
            .log_truncated
            .fetch_add(1, Ordering::Relaxed);
    }
    let bytes = data.get(start..start + shown).unwrap_or_default();
    let escaped = escape_log_text(&String::from_utf8_lossy(bytes), MAX_LOGGED_LEN);
    let truncated = shown < full_len || escaped.truncated;
    if escaped.truncated && shown == full_len {
        context
            .counters
            .log_truncated
            .fetch_add(1, Ordering::Relaxed);
    }
    let module = context.module();
    let text = escaped.text.as_str();
    // The module's text is a field, never the message: a subscriber prints it
    // quoted or as `text=...` after the router's own message, and escaped, so
    // it cannot pass for a line of the router. Unknown levels are clamped to
    // info (sdk: "treat as a fault or clamp"): a wrong level number is not
    // worth failing a routing decision for.
    match LogLevel::from_i32(level).unwrap_or(LogLevel::Info) {
        LogLevel::Error => {
            tracing::error!(target: "pronto::module", module, truncated, text, "module log");
        }
        LogLevel::Warn => {
            tracing::warn!(target: "pronto::module", module, truncated, text, "module log");
        }
        LogLevel::Info => {
            tracing::info!(target: "pronto::module", module, truncated, text, "module log");
        }
        LogLevel::Debug => {
            tracing::debug!(target: "pronto::module", module, truncated, text, "module log");
        }
        LogLevel::Trace => {
            tracing::trace!(target: "pronto::module", module, truncated, text, "module log");
        }
    }
    context.counters.log_lines.fetch_add(1, Ordering::Relaxed);
    Ok(())
}
