//! `pronto`: the router daemon and operator CLI. Wires the crates together; all
//! packet and protocol logic lives in the libraries.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod cli_module;
mod config;
mod demo;
mod demo_hierarchy;
mod host;
mod lab;
mod router;

/// Pronto: a programmable router for service level routing.
#[derive(Debug, Parser)]
#[command(name = "pronto", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the engine in-process on synthetic traffic and print where flows went.
    Demo(demo::DemoArgs),
    /// Certificate authority for module signers and signalling peers.
    Ca(cli_module::CaArgs),
    /// Signed module files: sign, inspect, verify.
    Module(cli_module::ModuleArgs),
    /// The SLR daemon: `pronto router run --config FILE`.
    Router(router::RouterArgs),
    /// The host server agent: `pronto host run --config FILE`.
    Host(host::HostArgs),
    /// A namespace lab of the whole hierarchy (root): up, down, status.
    Lab(lab::LabArgs),
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Ca(args) => cli_module::run_ca(&args),
        Command::Module(args) => cli_module::run_module(&args),
        Command::Router(args) => router::run(&args),
        Command::Host(args) => host::run(&args),
        Command::Lab(args) => lab::run(&args),
    }
}
