//! The `[scheduler]` egress stage of a running router: router-core's userspace
//! stage on the configured link, ranked by the configured built-in or by the
//! scheduler module bound in the operator environment (`[modules] scheduler`,
//! `pronto module bind NAME --role scheduler`). A new binding swaps the rank
//! function between two packets: queued packets keep their ranks, none is
//! dropped for it.

use std::sync::{Mutex, PoisonError};

use anyhow::{Context, Result};
use exec_env::manager::ModuleRankHandle;
use qre::response::{EgressClassRow, EgressRow};
use router_core::linux::egress::{EgressClass, EgressConfig, EgressStage};
use router_core::sched::{ClassId, Fifo, Rank, Sfq, StrictPriority};
use tracing::info;

use crate::config::{BuiltinRank, SchedulerConfig};

/// The stage and what it was configured with.
pub(crate) struct Egress {
    stage: EgressStage,
    cfg: SchedulerConfig,
    /// Scheduler ids by configured class, in configuration order.
    ids: Vec<ClassId>,
    /// The bound module's name, while one ranks.
    module: Mutex<Option<String>>,
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress")
            .field("link", &self.cfg.link)
            .finish_non_exhaustive()
    }
}

impl Egress {
    /// Starts the stage with `module`'s rank function, or the built-in.
    pub(crate) fn start(cfg: &SchedulerConfig, module: Option<ModuleRankHandle>) -> Result<Self> {
        let ids = EgressConfig::class_ids(cfg.classes.len());
        let class = |id: u16| {
            cfg.classes
                .iter()
                .position(|c| c.id == id)
                .and_then(|i| ids.get(i).copied())
        };
        let default_class =
            class(cfg.default_class).context("[scheduler] default_class names no class")?;
        let classes = cfg
            .classes
            .iter()
            .zip(&ids)
            .map(|(c, id)| EgressClass {
                id: *id,
                weight: c.weight,
                priority: c.priority,
                sources: c.sources.clone(),
            })
            .collect();
        let stage_cfg = EgressConfig {
            link: cfg.link.clone(),
            tun: cfg.tun.clone(),
            rate_bps: cfg.rate_bps,
            classes,
            default_class,
            mark: cfg.mark,
            limit_packets: cfg.limit_packets,
            limit_bytes: cfg.limit_bytes,
        };
        let name = module.as_ref().map(|m| m.name().to_owned());
        let rank: Box<dyn Rank> = match module {
            Some(m) => Box::new(m),
            None => builtin(cfg.rank, cfg.classes.len()),
        };
        let stage = EgressStage::start(stage_cfg, rank)
            .with_context(|| format!("[scheduler]: starting the egress stage on {}", cfg.link))?;
        info!(
            link = %cfg.link,
            rate_bps = cfg.rate_bps,
            classes = cfg.classes.len(),
            rank = name.as_deref().unwrap_or(builtin_name(cfg.rank)),
            "egress stage started: packets leaving the link are queued, ranked and paced in userspace"
        );
        Ok(Self {
            stage,
            cfg: cfg.clone(),
            ids,
            module: Mutex::new(name),
        })
    }

    /// Rank with the bound module `handle` from the next packet on.
    pub(crate) fn use_module(&self, handle: ModuleRankHandle) -> Result<()> {
        let name = handle.name().to_owned();
        let old = self.stage.set_rank(Box::new(handle))?;
        info!(link = %self.cfg.link, from = old.name(), to = %name, "egress rank function swapped");
        *self.module.lock().unwrap_or_else(PoisonError::into_inner) = Some(name);
        Ok(())
    }

    /// Rank with the configured built-in from the next packet on.
    pub(crate) fn use_builtin(&self) -> Result<()> {
        let old = self
            .stage
            .set_rank(builtin(self.cfg.rank, self.cfg.classes.len()))?;
        info!(link = %self.cfg.link, from = old.name(), to = builtin_name(self.cfg.rank),
            "egress rank function back to the built-in");
        *self.module.lock().unwrap_or_else(PoisonError::into_inner) = None;
        Ok(())
    }

    /// What `query queues` shows of the stage.
    pub(crate) fn row(&self) -> Result<EgressRow> {
        let snap = self.stage.snapshot()?;
        let classes = self
            .cfg
            .classes
            .iter()
            .zip(&self.ids)
            .map(|(c, id)| {
                let s = snap.classes.iter().find(|s| s.id == *id);
                EgressClassRow {
                    id: c.id,
                    weight: c.weight,
                    priority: c.priority,
                    sources: c.sources.iter().map(ToString::to_string).collect(),
                    enqueued: s.map_or(0, |s| s.enqueued),
                    sent_packets: s.map_or(0, |s| s.sent_packets),
                    sent_bytes: s.map_or(0, |s| s.sent_bytes),
                    drops: s.map_or(0, |s| s.drops.iter().sum::<u64>() + s.send_errors),
                    queued: s.map_or(0, |s| u64::from(s.queued_packets)),
                }
            })
            .collect();
        Ok(EgressRow {
            link: self.cfg.link.clone(),
            rate_bps: self.cfg.rate_bps,
            rank: snap.rank.clone(),
            module: self
                .module
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            swaps: snap.rank_swaps,
            rank_faults: snap.rank_faults,
            queued_packets: snap.queued_packets,
            queued_bytes: snap.queued_bytes,
            classes,
        })
    }
}

/// The built-in rank function `b` for `classes` classes under the root.
fn builtin(b: BuiltinRank, classes: usize) -> Box<dyn Rank> {
    match b {
        BuiltinRank::Sfq => Box::new(Sfq::new(classes + 1)),
        BuiltinRank::StrictPriority => Box::new(StrictPriority),
        BuiltinRank::Fifo => Box::new(Fifo),
    }
}

fn builtin_name(b: BuiltinRank) -> &'static str {
    match b {
        BuiltinRank::Sfq => "builtin sfq",
        BuiltinRank::StrictPriority => "builtin strict priority",
        BuiltinRank::Fifo => "builtin fifo",
    }
}
