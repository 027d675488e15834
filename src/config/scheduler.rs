//! `[scheduler]`: the userspace egress stage on one link, whose link scheduler
//! ranks packets with a built-in rank function or a bound scheduler module.

use router_core::VirtualSubnet;
use serde::Deserialize;

use super::{Check, ConfigError};

/// `[scheduler]`: packets leaving `link` are captured, queued per class (by
/// source prefix), ranked and paced to `rate_mbit` in userspace, then sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SchedulerFile {
    link: String,
    rate_mbit: u64,
    #[serde(default = "default_tun")]
    tun: String,
    #[serde(default = "default_mark")]
    mark: u32,
    default_class: u16,
    #[serde(default)]
    rank: BuiltinRank,
    #[serde(default = "default_limit_packets")]
    limit_packets: u32,
    #[serde(default = "default_limit_bytes")]
    limit_bytes: u64,
    class: Vec<SchedulerClassFile>,
}

/// `[[scheduler.class]]`: one leaf.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SchedulerClassFile {
    id: u16,
    weight: u32,
    #[serde(default)]
    priority: u8,
    #[serde(default)]
    sources: Vec<String>,
}

fn default_tun() -> String {
    "pronto-egress".into()
}
fn default_mark() -> u32 {
    0x5052_4f45
}
fn default_limit_packets() -> u32 {
    1024
}
fn default_limit_bytes() -> u64 {
    2 << 20
}

/// The rank function the stage uses while no scheduler module is bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum BuiltinRank {
    /// Start-time fair queueing by class weight.
    #[default]
    Sfq,
    /// Class priority first (0 served first).
    StrictPriority,
    /// Arrival order.
    Fifo,
}

/// One class of the stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SchedulerClass {
    /// The operator's id (names it in `query queues`).
    pub(crate) id: u16,
    /// SFQ weight among the classes.
    pub(crate) weight: u32,
    /// Priority for strict-priority ranks (0 first).
    pub(crate) priority: u8,
    /// Source prefixes classified into it.
    pub(crate) sources: Vec<VirtualSubnet>,
}

/// A validated `[scheduler]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SchedulerConfig {
    /// The egress link.
    pub(crate) link: String,
    /// Rate the stage paces to, bit/s.
    pub(crate) rate_bps: u64,
    /// The capture TUN the stage creates.
    pub(crate) tun: String,
    /// fwmark of the stage's own sends.
    pub(crate) mark: u32,
    /// Class of unclassified packets.
    pub(crate) default_class: u16,
    /// The built-in rank function.
    pub(crate) rank: BuiltinRank,
    /// Per-class queue bounds.
    pub(crate) limit_packets: u32,
    /// Per-class queue bounds, bytes.
    pub(crate) limit_bytes: u64,
    /// The classes.
    pub(crate) classes: Vec<SchedulerClass>,
}

/// Most classes of the stage.
const MAX_CLASSES: usize = 64;

impl SchedulerConfig {
    pub(super) fn from_file(c: &Check<'_>, f: &SchedulerFile) -> Result<Self, ConfigError> {
        let link = c.tun_name("scheduler.link", &f.link)?;
        let tun = c.tun_name("scheduler.tun", &f.tun)?;
        if f.rate_mbit == 0 || f.rate_mbit > 100_000 {
            return Err(c.err("scheduler.rate_mbit", "must be 1 to 100000 (Mbit/s)"));
        }
        if f.class.is_empty() || f.class.len() > MAX_CLASSES {
            return Err(c.err(
                "scheduler.class",
                format!("give 1 to {MAX_CLASSES} [[scheduler.class]] entries"),
            ));
        }
        if f.mark == 0 {
            return Err(c.err(
                "scheduler.mark",
                "must not be 0 (it tells the stage's own sends apart)",
            ));
        }
        c.range("scheduler.limit_packets", f.limit_packets, 1, 65_536)?;
        c.range("scheduler.limit_bytes", f.limit_bytes, 1500, 1 << 30)?;
        let mut classes: Vec<SchedulerClass> = Vec::new();
        for (i, class) in f.class.iter().enumerate() {
            if class.weight == 0 {
                return Err(c.err(format!("scheduler.class[{i}].weight"), "must be at least 1"));
            }
            if classes.iter().any(|k| k.id == class.id) {
                return Err(c.err(format!("scheduler.class[{i}].id"), "ids must be unique"));
            }
            let sources = class
                .sources
                .iter()
                .enumerate()
                .map(|(j, s)| c.subnet(&format!("scheduler.class[{i}].sources[{j}]"), s))
                .collect::<Result<Vec<_>, _>>()?;
            classes.push(SchedulerClass {
                id: class.id,
                weight: class.weight,
                priority: class.priority,
                sources,
            });
        }
        if !classes.iter().any(|k| k.id == f.default_class) {
            return Err(c.err(
                "scheduler.default_class",
                format!("{} is not the id of a [[scheduler.class]]", f.default_class),
            ));
        }
        Ok(Self {
            link,
            rate_bps: f.rate_mbit * 1_000_000,
            tun,
            mark: f.mark,
            default_class: f.default_class,
            rank: f.rank,
            limit_packets: f.limit_packets,
            limit_bytes: f.limit_bytes,
            classes,
        })
    }
}
