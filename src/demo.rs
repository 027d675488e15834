//! `pronto demo`: the engine in-process on synthetic traffic.

use anyhow::Result;

/// Options of `pronto demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// Number of synthetic flows to open.
    #[arg(long, default_value_t = 4000)]
    pub(crate) flows: u32,
}

pub(crate) fn run(_args: &DemoArgs) -> Result<()> {
    Ok(())
}
