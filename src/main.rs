//! `pronto`: the router daemon and operator CLI. Wires the crates together; all
//! packet and protocol logic lives in the libraries.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod cli_module;
mod cli_query;
mod config;
mod demo;
mod demo_hierarchy;
mod host;
mod lab;
mod mgmt;
mod recovery;
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
    /// Signed module files: sign, inspect, verify; on a running router
    /// (`--router URL`): load, swap, rollback, remove.
    Module(cli_module::ModuleArgs),
    /// Ask a running router (`--router URL`): summary, flows, table, peers,
    /// modules, queues, counters, metrics.
    Query(cli_query::QueryArgs),
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
    // `pronto module load|swap|rollback|remove` talk to a router; the other
    // module subcommands are local file tools with their own parser.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if cli_query::is_remote_module_op(&argv) {
        return cli_query::run_remote_module(&argv);
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Ca(args) => cli_module::run_ca(&args),
        Command::Module(args) => cli_module::run_module(&args),
        Command::Query(args) => cli_query::run_query(&args),
        Command::Router(args) => router::run(&args),
        Command::Host(args) => host::run(&args),
        Command::Lab(args) => lab::run(&args),
    }
}
