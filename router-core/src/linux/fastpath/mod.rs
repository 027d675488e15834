//! The kernel fast path (DESIGN.md §3, STYLE.md 16): eBPF programs at tc
//! ingress that forward pinned flows at kernel speed, and their loader.
//!
//! The programs are C (`router-core/bpf/`), built by `scripts/build-bpf.sh` into
//! objects this module embeds and loads with aya (a pure-Rust loader: no libbpf
//! or clang at run time):
//!
//! - [`RouterFastPath`] (`router_fast.c`): a packet of a pinned flow is
//!   encapsulated (or, a tunnel to us from the level above, re-addressed) toward
//!   the flow's next hop and redirected; everything else goes on to the stack
//!   and the engine. The shell mirrors the engine's flow table into its hash maps
//!   from the table's journal ([`crate::flow::FlowChange`]) and reads the
//!   activity the program records back before idle flows expire.
//! - [`HostFastPath`] (`host_decap.c`): IP-in-IP to a served subnet is
//!   decapsulated and handed to the local stack; the host agent's userspace
//!   endpoint stays the fallback for the rest.
//!
//! Which path runs is configuration ([`FastPathMode`]); [`start`] turns a mode
//! into a running fast path or the userspace path, with the reason
//! ([`FastPathStatus`]) the daemon logs and reports.
//!
//! Attachments are TCX links (kernel >= 6.6; a clsact filter before) owned by
//! this process: they go when it exits, however it exits. A new daemon puts its
//! program first in the chain and removes legacy filters of the same name, so
//! leftovers never stand in its way.

mod abi;
mod host;
mod router;

pub use abi::FastPathCounter;
pub use host::{HostFastPath, HostFastPathConfig};
pub use router::{
    FastPathSync, JOURNAL_CAPACITY, RouterFastPath, RouterFastPathConfig, SyncCounters,
    SyncSnapshot,
};

use aya::programs::tc::{self, NlOptions, TcAttachOptions};
use aya::programs::{LinkOrder, ProgramError, SchedClassifier, TcAttachType};
use aya::util::KernelVersion;
use std::sync::Arc;

/// Which forwarding path a daemon uses for pinned flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FastPathMode {
    /// The eBPF fast path if the kernel loads and attaches it, else userspace
    /// (with one log line saying why).
    #[default]
    Auto,
    /// The eBPF fast path; failing to start it is an error naming the cause.
    Bpf,
    /// Userspace only (the engine forwards every packet).
    Userspace,
}

impl FastPathMode {
    /// The configuration word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Bpf => "bpf",
            Self::Userspace => "userspace",
        }
    }
}

impl std::str::FromStr for FastPathMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "bpf" => Ok(Self::Bpf),
            "userspace" => Ok(Self::Userspace),
            other => Err(format!(
                "fast_path = {other:?}: use \"auto\", \"bpf\" or \"userspace\""
            )),
        }
    }
}

/// Which path a daemon ended up with, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FastPathStatus {
    /// The eBPF fast path, attached to these links.
    Bpf {
        /// The links the program is attached to.
        links: Vec<String>,
    },
    /// The userspace path.
    Userspace {
        /// Why (configuration, or what the kernel refused).
        reason: String,
    },
}

impl FastPathStatus {
    /// `"bpf"` or `"userspace"`.
    pub fn path(&self) -> &'static str {
        match self {
            Self::Bpf { .. } => "bpf",
            Self::Userspace { .. } => "userspace",
        }
    }
}

impl std::fmt::Display for FastPathStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Bpf { links } => write!(f, "bpf (tc ingress of {})", links.join(", ")),
            Self::Userspace { reason } => write!(f, "userspace ({reason})"),
        }
    }
}

/// Why the fast path could not start (or a map operation failed).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FastPathError {
    /// The object could not be parsed or its maps created.
    #[error("cannot load the {program} object: {source}")]
    Object {
        /// The program.
        program: &'static str,
        /// What aya said.
        #[source]
        source: Box<aya::EbpfError>,
    },
    /// The kernel refused the program: the verifier, or a missing feature.
    #[error("the kernel refused the {program} program (verifier or missing BPF feature): {reason}")]
    Refused {
        /// The program.
        program: &'static str,
        /// The error and the verifier log's last lines.
        reason: String,
    },
    /// The object lacks a program or map this loader needs (a stale object).
    #[error("the {program} object has no {what} (rebuild it: scripts/build-bpf.sh)")]
    Missing {
        /// The program.
        program: &'static str,
        /// The missing part.
        what: &'static str,
    },
    /// A map operation failed.
    #[error("fast path map {map}: {source}")]
    Map {
        /// The map.
        map: &'static str,
        /// What the kernel said.
        #[source]
        source: Box<aya::maps::MapError>,
    },
    /// The program could not be attached to a link.
    #[error("cannot attach {program} at tc ingress of {link}: {source}")]
    Attach {
        /// The program.
        program: &'static str,
        /// The link.
        link: String,
        /// What the kernel said.
        #[source]
        source: Box<ProgramError>,
    },
    /// No link to attach to.
    #[error("no link to attach the fast path to ({reason})")]
    NoLinks {
        /// Why none.
        reason: String,
    },
}

impl FastPathError {
    pub(crate) fn map(map: &'static str, e: aya::maps::MapError) -> Self {
        Self::Map {
            map,
            source: Box::new(e),
        }
    }
}

/// Load one program's object and the program in it (the verifier runs here).
fn load_object(
    program: &'static str,
    bytes: &[u8],
    max_entries: &[(&'static str, u32)],
) -> Result<aya::Ebpf, FastPathError> {
    let mut loader = aya::EbpfLoader::new();
    for (map, n) in max_entries {
        loader.map_max_entries(map, (*n).max(1));
    }
    let mut ebpf = loader.load(bytes).map_err(|e| match e {
        // Map creation refused (e.g. no BPF at all).
        aya::EbpfError::MapError(m) => FastPathError::Refused {
            program,
            reason: m.to_string(),
        },
        e => FastPathError::Object {
            program,
            source: Box::new(e),
        },
    })?;
    let prog: &mut SchedClassifier = ebpf
        .program_mut(program)
        .ok_or(FastPathError::Missing {
            program,
            what: "program",
        })?
        .try_into()
        .map_err(|_| FastPathError::Missing {
            program,
            what: "tc (classifier) program",
        })?;
    prog.load().map_err(|e| FastPathError::Refused {
        program,
        reason: refusal(&e),
    })?;
    Ok(ebpf)
}

/// The error and the last lines of the verifier log, if any.
fn refusal(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let tail: Vec<&str> = log
                .lines()
                .rev()
                .filter(|l| !l.trim().is_empty())
                .take(3)
                .collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!("{io_error}; verifier: {}", tail.join(" | "))
        }
        other => other.to_string(),
    }
}

/// Attach `program` at tc ingress of `link`, first in its chain: a legacy tc
/// filter of the same name (an older loader's leftover) is removed first, and a
/// TCX program of the same name still attached (an old daemon not gone yet)
/// then runs after ours.
fn attach_ingress(
    ebpf: &mut aya::Ebpf,
    program: &'static str,
    link: &str,
) -> Result<(), FastPathError> {
    match tc::qdisc_detach_program(link, TcAttachType::Ingress, program) {
        Ok(()) => tracing::info!(%link, program, "removed a leftover tc filter of this program"),
        Err(e) => tracing::trace!(%link, error = %e, "no leftover tc filter"),
    }
    let prog: &mut SchedClassifier = ebpf
        .program_mut(program)
        .and_then(|p| p.try_into().ok())
        .ok_or(FastPathError::Missing {
            program,
            what: "program",
        })?;
    let tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
    let options = if tcx {
        TcAttachOptions::TcxOrder(LinkOrder::first())
    } else {
        // Before TCX: a clsact qdisc carries the filter (already there is fine).
        if let Err(e) = tc::qdisc_add_clsact(link) {
            tracing::trace!(%link, error = %e, "clsact qdisc");
        }
        TcAttachOptions::Netlink(NlOptions::default())
    };
    prog.attach_with_options(link, TcAttachType::Ingress, options)
        .map_err(|e| FastPathError::Attach {
            program,
            link: link.to_owned(),
            source: Box::new(e),
        })?;
    if tcx && let Ok((_, progs)) = SchedClassifier::query_tcx(link, TcAttachType::Ingress) {
        let ours = progs
            .iter()
            .filter(|p| p.name_as_str() == Some(program))
            .count();
        if ours > 1 {
            tracing::warn!(%link, program, others = ours - 1,
                "another instance of this program is still attached (an old daemon?); ours runs first");
        }
    }
    Ok(())
}

/// Sum a per-CPU counter array.
fn read_counters(
    map: &aya::maps::PerCpuArray<aya::maps::MapData, u64>,
) -> [u64; FastPathCounter::COUNT] {
    let mut out = [0u64; FastPathCounter::COUNT];
    for (i, slot) in out.iter_mut().enumerate() {
        let Ok(index) = u32::try_from(i) else {
            continue;
        };
        if let Ok(values) = map.get(&index, 0) {
            *slot = values.iter().fold(0u64, |a, v| a.wrapping_add(*v));
        }
    }
    out
}

/// A snapshot of a fast path's counters, one per [`FastPathCounter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastPathCounters(pub [u64; FastPathCounter::COUNT]);

impl FastPathCounters {
    /// One counter.
    pub fn get(&self, c: FastPathCounter) -> u64 {
        self.0[c as usize]
    }

    /// Packets the program forwarded (router) or decapsulated (host).
    pub fn forwarded(&self) -> u64 {
        self.get(FastPathCounter::FwdEncap)
            + self.get(FastPathCounter::FwdRetunnel)
            + self.get(FastPathCounter::HostDecap)
    }

    /// Every counter with its name.
    pub fn iter(&self) -> impl Iterator<Item = (FastPathCounter, u64)> + '_ {
        FastPathCounter::ALL.iter().map(|c| (*c, self.get(*c)))
    }
}

/// A cloneable reader of a running fast path's counters (any thread; one
/// map read per counter).
#[derive(Clone)]
pub struct FastPathReader {
    counters: Arc<aya::maps::PerCpuArray<aya::maps::MapData, u64>>,
}

impl std::fmt::Debug for FastPathReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastPathReader").finish_non_exhaustive()
    }
}

impl FastPathReader {
    /// The counters now.
    pub fn counters(&self) -> FastPathCounters {
        FastPathCounters(read_counters(&self.counters))
    }
}

/// Take the per-CPU counter map out of an object.
fn take_counters(
    ebpf: &mut aya::Ebpf,
    program: &'static str,
) -> Result<FastPathReader, FastPathError> {
    let map = ebpf.take_map("counters").ok_or(FastPathError::Missing {
        program,
        what: "counters map",
    })?;
    let counters =
        aya::maps::PerCpuArray::try_from(map).map_err(|e| FastPathError::map("counters", e))?;
    Ok(FastPathReader {
        counters: Arc::new(counters),
    })
}

/// What a daemon reports of its fast path: which path, the program's
/// counters, and (router) how the maps were kept in step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FastPathSnapshot {
    /// Which path, and why.
    pub status: FastPathStatus,
    /// The program's counters (none on the userspace path).
    pub counters: Option<FastPathCounters>,
    /// The router's map upkeep (none on a host or the userspace path).
    pub sync: Option<SyncSnapshot>,
    /// The kernel ids of the router's flow maps (IPv4, IPv6).
    pub flow_maps: Option<[u32; 2]>,
}

/// A daemon's fast path as other threads see it: the status, and readers of
/// the counters.
#[derive(Debug, Clone)]
pub struct FastPathInfo {
    /// Which path, and why.
    pub status: FastPathStatus,
    /// The program's counters.
    pub reader: Option<FastPathReader>,
    /// The router's map upkeep.
    pub sync: Option<Arc<SyncCounters>>,
    /// The kernel ids of the router's flow maps (IPv4, IPv6).
    pub flow_maps: Option<[u32; 2]>,
}

impl FastPathInfo {
    /// Read everything now.
    pub fn snapshot(&self) -> FastPathSnapshot {
        FastPathSnapshot {
            status: self.status.clone(),
            counters: self.reader.as_ref().map(FastPathReader::counters),
            sync: self.sync.as_ref().map(|s| s.snapshot()),
            flow_maps: self.flow_maps,
        }
    }
}

/// Start a fast path as `mode` says: `userspace` starts nothing; `bpf` starts
/// it or fails; `auto` starts it or falls back to userspace with the reason.
pub fn start<T>(
    mode: FastPathMode,
    start: impl FnOnce() -> Result<(T, Vec<String>), FastPathError>,
) -> Result<(Option<T>, FastPathStatus), FastPathError> {
    match mode {
        FastPathMode::Userspace => Ok((
            None,
            FastPathStatus::Userspace {
                reason: "fast_path = \"userspace\" in the configuration".into(),
            },
        )),
        FastPathMode::Bpf => start().map(|(t, links)| (Some(t), FastPathStatus::Bpf { links })),
        FastPathMode::Auto => Ok(match start() {
            Ok((t, links)) => (Some(t), FastPathStatus::Bpf { links }),
            Err(e) => (
                None,
                FastPathStatus::Userspace {
                    reason: format!("fast_path = \"auto\" and the eBPF fast path failed: {e}"),
                },
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_choose() {
        for m in [
            FastPathMode::Auto,
            FastPathMode::Bpf,
            FastPathMode::Userspace,
        ] {
            assert_eq!(m.as_str().parse::<FastPathMode>(), Ok(m));
        }
        assert!("xdp".parse::<FastPathMode>().is_err());
        let fails = || -> Result<((), Vec<String>), FastPathError> {
            Err(FastPathError::NoLinks {
                reason: "test".into(),
            })
        };
        let (none, st) = start(FastPathMode::Auto, fails).unwrap();
        assert!(none.is_none());
        assert_eq!(st.path(), "userspace");
        assert!(st.to_string().contains("no link"), "{st}");
        assert!(start(FastPathMode::Bpf, fails).is_err());
        let (none, st) = start(
            FastPathMode::Userspace,
            || -> Result<((), Vec<String>), _> { unreachable!("userspace starts nothing") },
        )
        .unwrap();
        assert!(none.is_none());
        assert!(st.to_string().contains("userspace"));
        let ok = || Ok::<_, FastPathError>(((), vec!["eth0".to_owned()]));
        let (some, st) = start(FastPathMode::Auto, ok).unwrap();
        assert!(some.is_some());
        assert_eq!(st.to_string(), "bpf (tc ingress of eth0)");
    }
}
