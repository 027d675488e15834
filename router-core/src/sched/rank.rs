//! Rank functions: the trait and the built-ins (FIFO, strict priority, SFQ, a
//! closure).

use std::fmt;

use super::{PacketMeta, RankContext, RankError, SFQ_TAG_SHIFT};

/// A rank function: given a packet and where in the tree it is being queued,
/// the packet's rank there; smaller leaves first, equal ranks in arrival order.
///
/// Called once per level on the packet's path, leaf first, only for packets the
/// queue accepts. Implementations may keep per-flow or per-class state (bounded).
pub trait Rank: Send {
    /// Short name for logs and counters.
    fn name(&self) -> &str;
    /// The rank of `packet` at `at.node`.
    fn rank(&mut self, packet: &PacketMeta, at: &RankContext) -> Result<u64, RankError>;
}

impl fmt::Debug for dyn Rank {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Rank({})", self.name())
    }
}

/// Arrival order everywhere: one FIFO for the whole link.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fifo;

impl Rank for Fifo {
    fn name(&self) -> &str {
        "fifo"
    }

    fn rank(&mut self, _: &PacketMeta, _: &RankContext) -> Result<u64, RankError> {
        Ok(0)
    }
}

/// Strict priority: a class serves its child of the smallest priority number
/// first, equal priorities and packets inside a class in arrival order.
#[derive(Debug, Clone, Copy, Default)]
pub struct StrictPriority;

impl Rank for StrictPriority {
    fn name(&self) -> &str {
        "strict_priority"
    }

    fn rank(&mut self, _: &PacketMeta, at: &RankContext) -> Result<u64, RankError> {
        Ok(if at.is_leaf() {
            0
        } else {
            u64::from(at.priority)
        })
    }
}

/// Advance of an SFQ tag for `len` bytes at `weight`: `len * 2^16 / weight`,
/// resource-mgr's `tag_len` at 16 fractional bits.
pub fn sfq_tag_len(len: u32, weight: u32) -> u64 {
    (u64::from(len) << SFQ_TAG_SHIFT) / u64::from(weight.max(1))
}

#[derive(Debug, Clone, Copy, Default)]
struct SfqTag {
    busy_period: u64,
    finish: u64,
}

/// Start-time fair queuing (Goyal, Vin, Cheng, SIGCOMM'96) between the children
/// of every class, by weight; arrival order inside a class (as resource-mgr's
/// share tree: FIFO leaves).
///
/// A packet reaching `node` through `child` gets the rank `S = max(v, F[child])`
/// and sets `F[child] = S + len * 2^16 / weight(child)`, where `v` is the node's
/// virtual time. `F` from an earlier busy period of the node counts as 0: the
/// node was empty since, and SFQ's rule (at the end of a busy period `v` becomes
/// the largest finish tag) makes every child start level, which is the same.
/// Ranks restart with every busy period, so they saturate at `u64::MAX` only after
/// one busy period of `2^48 * W / w_min` bytes without the class ever emptying,
/// where `W` is the busy children's total weight (for weights 20/30/50 all busy,
/// 1.4 * 10^16 bytes: 130 days of a saturated 10 Gbit/s link); past that, ranks
/// tie and the class serves in arrival order until it next empties.
///
/// Tags are kept per class index (`max_classes` of them, 16 bytes each); a class
/// beyond that ranks at the node's virtual time.
#[derive(Debug, Clone)]
pub struct Sfq {
    tags: Vec<SfqTag>,
}

impl Sfq {
    /// Tags for classes with index below `max_classes`.
    pub fn new(max_classes: usize) -> Self {
        Self {
            tags: vec![SfqTag::default(); max_classes],
        }
    }
}

impl Rank for Sfq {
    fn name(&self) -> &str {
        "sfq"
    }

    fn rank(&mut self, packet: &PacketMeta, at: &RankContext) -> Result<u64, RankError> {
        if at.is_leaf() {
            return Ok(0);
        }
        let Some(tag) = self.tags.get_mut(at.child.index() as usize) else {
            return Ok(at.vtime);
        };
        let finish = if tag.busy_period == at.busy_period {
            tag.finish
        } else {
            0
        };
        let start = at.vtime.max(finish);
        *tag = SfqTag {
            busy_period: at.busy_period,
            finish: start.saturating_add(sfq_tag_len(packet.len, at.weight)),
        };
        Ok(start)
    }
}

/// A closure as a rank function (tests, experiments).
pub struct FnRank<F> {
    name: String,
    f: F,
}

impl<F> FnRank<F>
where
    F: FnMut(&PacketMeta, &RankContext) -> u64 + Send,
{
    /// Wraps `f` under `name`.
    pub fn new(name: impl Into<String>, f: F) -> Self {
        Self {
            name: name.into(),
            f,
        }
    }
}

impl<F> fmt::Debug for FnRank<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FnRank({})", self.name)
    }
}

impl<F> Rank for FnRank<F>
where
    F: FnMut(&PacketMeta, &RankContext) -> u64 + Send,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn rank(&mut self, packet: &PacketMeta, at: &RankContext) -> Result<u64, RankError> {
        Ok((self.f)(packet, at))
    }
}
