//! `pronto`: the router daemon and operator CLI (the `pronto` library's [`Cli`]).

use clap::Parser;
use pronto::Cli;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    Cli::parse().run()
}
