//! `pronto query ...` and `pronto module load|swap|rollback|remove --router URL`:
//! the client of a router's management API (src/mgmt.rs, qre's schema).
//!
//! Output is a human table by default and the API's JSON with `--json`. Errors
//! say what failed and what to do: a refused TLS handshake, a certificate that
//! does not match, an API error's message and hint.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use qre::response::{
    CountersResponse, FlowsResponse, ModuleOpReport, ModulesResponse, PeersResponse,
    QueuesResponse, RouterSummary, TableResponse,
};
use qre::{AddrMatch, FlowQuery};

mod client;
mod render;

use client::{Conn, request};
use render::{
    print_counters, print_flows, print_modules, print_peers, print_queues, print_summary,
    print_table,
};

/// `pronto query ...`.
#[derive(Debug, Args)]
pub(crate) struct QueryArgs {
    #[command(subcommand)]
    what: QueryCommand,
}

#[derive(Debug, Subcommand)]
enum QueryCommand {
    /// Who the router is and its main figures.
    Summary(Plain),
    /// Pinned flows: counts by VIP, client and next hop, and a page of flows.
    Flows {
        #[command(flatten)]
        common: Plain,
        /// Only flows to this VIP or VIP prefix.
        #[arg(long)]
        vip: Option<AddrMatch>,
        /// Only flows from this client address or prefix.
        #[arg(long)]
        client: Option<AddrMatch>,
        /// Only flows pinned to this next hop.
        #[arg(long)]
        next_hop: Option<AddrMatch>,
        /// Flows listed (the counts cover all), at most 1000.
        #[arg(long, default_value_t = qre::query::DEFAULT_PAGE)]
        limit: usize,
    },
    /// The next-hop table: per virtual subnet, the next hops with loads and costs.
    Table {
        #[command(flatten)]
        common: Plain,
        /// Only this subnet (or the one containing this address).
        #[arg(long)]
        subnet: Option<AddrMatch>,
    },
    /// Signalling peers and hosts, with their last state update.
    Peers(Plain),
    /// Modules per environment: version, signer, digest, calls, faults, CPU, state.
    Modules(Plain),
    /// Queues and scheduler shares.
    Queues(Plain),
    /// Every counter and histogram.
    Counters(Plain),
    /// The Prometheus exposition text (as /metrics serves it).
    Metrics {
        #[command(flatten)]
        conn: Conn,
    },
}

/// Connection options and `--json`.
#[derive(Debug, Args)]
struct Plain {
    #[command(flatten)]
    conn: Conn,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// `pronto module load|swap|rollback|remove --router URL ...`.
#[derive(Debug, Parser)]
#[command(
    name = "pronto module",
    about = "Module operations on a running router"
)]
struct RemoteModuleCli {
    #[command(subcommand)]
    op: RemoteOp,
}

#[derive(Debug, Subcommand)]
enum RemoteOp {
    /// Install a signed module whose name is not installed yet.
    Load {
        #[command(flatten)]
        common: Plain,
        /// The signed module file.
        file: PathBuf,
    },
    /// Replace an installed module by a new signed version, atomically, while
    /// packets flow; the old version stays as the rollback target.
    Swap {
        #[command(flatten)]
        common: Plain,
        /// The signed module file.
        file: PathBuf,
    },
    /// Make a module's previous version active again.
    Rollback {
        #[command(flatten)]
        common: Plain,
        /// Module name.
        name: String,
    },
    /// Remove a module (flows it would place fall back to the built-in policy).
    Remove {
        #[command(flatten)]
        common: Plain,
        /// Module name.
        name: String,
    },
}

/// Module subcommands that talk to a router (the rest are local file tools in
/// src/cli_module.rs).
pub(crate) const REMOTE_MODULE_OPS: [&str; 4] = ["load", "swap", "rollback", "remove"];

/// Whether `args` (the whole argv) is `pronto module load|swap|rollback|remove`.
pub(crate) fn is_remote_module_op(args: &[OsString]) -> bool {
    args.get(1).is_some_and(|a| a == "module")
        && args
            .get(2)
            .and_then(|a| a.to_str())
            .is_some_and(|a| REMOTE_MODULE_OPS.contains(&a))
}

/// Run `pronto module load|swap|rollback|remove ...` from the whole argv.
pub(crate) fn run_remote_module(args: &[OsString]) -> Result<()> {
    let mut argv = vec![OsString::from("pronto module")];
    argv.extend(args.iter().skip(2).cloned());
    let cli = RemoteModuleCli::parse_from(argv);
    let (common, method, path, body, what) = match &cli.op {
        RemoteOp::Load { common, file } => (
            common,
            "POST",
            "/v1/modules/load".to_owned(),
            read_module(file)?,
            file.display().to_string(),
        ),
        RemoteOp::Swap { common, file } => (
            common,
            "POST",
            "/v1/modules/swap".to_owned(),
            read_module(file)?,
            file.display().to_string(),
        ),
        RemoteOp::Rollback { common, name } => (
            common,
            "POST",
            format!("/v1/modules/{name}/rollback"),
            Vec::new(),
            name.clone(),
        ),
        RemoteOp::Remove { common, name } => (
            common,
            "DELETE",
            format!("/v1/modules/{name}"),
            Vec::new(),
            name.clone(),
        ),
    };
    let text = request(&common.conn, method, &path, body)
        .with_context(|| format!("module operation on {what} at {}", common.conn.router))?;
    if common.json {
        println!("{text}");
        return Ok(());
    }
    let r: ModuleOpReport = decode(&text)?;
    let active = r.active.as_deref().unwrap_or("-");
    match r.op.as_str() {
        "load" => println!(
            "loaded {} {active} into environment {}",
            r.name, r.environment
        ),
        "swap" => println!(
            "swapped {} {} -> {active} in environment {} (previous kept for rollback)",
            r.name,
            r.replaced.as_deref().unwrap_or("-"),
            r.environment
        ),
        "rollback" => println!(
            "rolled {} back: {} -> {active} in environment {}",
            r.name,
            r.replaced.as_deref().unwrap_or("-"),
            r.environment
        ),
        _ => println!(
            "removed {} {} from environment {}",
            r.name,
            r.replaced.as_deref().unwrap_or("-"),
            r.environment
        ),
    }
    if let (Some(d), Some(s)) = (&r.digest, &r.signer) {
        println!("  signer {s}\n  digest {d}");
    }
    Ok(())
}

fn read_module(p: &Path) -> Result<Vec<u8>> {
    let f = std::fs::File::open(p).with_context(|| format!("cannot read {}", p.display()))?;
    let mut bytes = Vec::new();
    f.take(qre::api::MAX_BODY as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", p.display()))?;
    if bytes.len() > qre::api::MAX_BODY {
        bail!(
            "{} is larger than the API's {} byte limit for module files",
            p.display(),
            qre::api::MAX_BODY
        );
    }
    Ok(bytes)
}

/// Run `pronto query ...`.
pub(crate) fn run_query(args: &QueryArgs) -> Result<()> {
    match &args.what {
        QueryCommand::Summary(p) => show::<RouterSummary>(p, "/v1/summary", print_summary),
        QueryCommand::Flows {
            common,
            vip,
            client,
            next_hop,
            limit,
        } => {
            let q = FlowQuery {
                vip: *vip,
                client: *client,
                next_hop: *next_hop,
                limit: *limit,
            };
            show::<FlowsResponse>(
                common,
                &format!("/v1/flows?{}", q.to_query_string()),
                print_flows,
            )
        }
        QueryCommand::Table { common, subnet } => {
            let path = match subnet {
                Some(s) => format!("/v1/table?subnet={s}"),
                None => "/v1/table".to_owned(),
            };
            show::<TableResponse>(common, &path, print_table)
        }
        QueryCommand::Peers(p) => show::<PeersResponse>(p, "/v1/peers", print_peers),
        QueryCommand::Modules(p) => show::<ModulesResponse>(p, "/v1/modules", print_modules),
        QueryCommand::Queues(p) => show::<QueuesResponse>(p, "/v1/queues", print_queues),
        QueryCommand::Counters(p) => show::<CountersResponse>(p, "/v1/counters", print_counters),
        QueryCommand::Metrics { conn } => {
            print!("{}", request(conn, "GET", "/metrics", Vec::new())?);
            Ok(())
        }
    }
}

fn show<T: serde::de::DeserializeOwned>(p: &Plain, path: &str, print: fn(&T)) -> Result<()> {
    let text = request(&p.conn, "GET", path, Vec::new())?;
    if p.json {
        println!("{text}");
    } else {
        print(&decode(&text)?);
    }
    Ok(())
}

fn decode<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    serde_json::from_str(text).context(
        "the router's answer does not match this client's schema (is the router the same pronto version?)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_module_ops_are_recognised_and_local_ones_are_not() {
        let argv = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(is_remote_module_op(&argv(&[
            "pronto", "module", "swap", "--router", "x"
        ])));
        assert!(!is_remote_module_op(&argv(&["pronto", "module", "sign"])));
        assert!(!is_remote_module_op(&argv(&["pronto", "query", "swap"])));
    }
}
