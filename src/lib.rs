//! `pronto`: the router daemon and operator CLI. Wires the crates together; all
//! packet and protocol logic lives in the libraries.
//!
//! A library with a thin binary (`src/main.rs`) so the fuzz targets (`fuzz/`)
//! reach the parsers of untrusted bytes that live here through [`fuzz`]. [`Cli`]
//! is what the binary runs; everything else is private to the crate.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod cli_module;
mod cli_query;
mod cli_tables;
mod config;
mod demo;
mod demo_hierarchy;
mod host;
mod lab;
mod mgmt;
mod recovery;
mod router;

pub mod fuzz;

/// Pronto: a programmable router for service level routing.
#[derive(Debug, Parser)]
#[command(name = "pronto", version, about)]
pub struct Cli {
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

impl Cli {
    /// Run the command the arguments name.
    pub fn run(self) -> Result<()> {
        match self.command {
            Command::Demo(args) => demo::run(&args),
            Command::Ca(args) => cli_module::run_ca(&args),
            Command::Module(args) => cli_module::run_module(&args),
            Command::Query(args) => cli_query::run_query(&args),
            Command::Router(args) => router::run(&args),
            Command::Host(args) => host::run(&args),
            Command::Lab(args) => lab::run(&args),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn one_clap_tree_whose_module_help_lists_the_router_operations() {
        Cli::command().debug_assert();
        let mut cli = Cli::command();
        let module = cli
            .find_subcommand_mut("module")
            .expect("pronto module exists");
        let help = module.render_help().to_string();
        for op in [
            "sign", "inspect", "verify", "load", "swap", "rollback", "remove",
        ] {
            assert!(
                module.find_subcommand(op).is_some(),
                "pronto module {op} is missing:\n{help}"
            );
            assert!(help.contains(op), "{help}");
        }
        // Router operations take the connection flags they always took.
        let swap = Cli::try_parse_from([
            "pronto",
            "module",
            "swap",
            "--router",
            "https://sys.lab:7900",
            "--ca",
            "ca.pem",
            "--cert",
            "c.pem",
            "--key",
            "k.pem",
            "--json",
            "m.wasm",
        ]);
        assert!(swap.is_ok(), "{swap:?}");
        let missing = Cli::try_parse_from(["pronto", "module", "rollback", "least_load"]);
        assert!(missing.is_err(), "--router and --ca are required");
    }
}
