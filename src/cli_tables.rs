//! The human tables of `pronto query ...`: one printer per answer of the
//! management API (the JSON schema is qre's).

use std::net::SocketAddr;

use qre::metrics::MetricValue;
use qre::response::{
    CountersResponse, EgressRow, FlowsResponse, GroupCounts, ModulesResponse, PeersResponse,
    QueuesResponse, RouterSummary, TableResponse,
};

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = width.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = width.get(i).copied().unwrap_or(0)))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(header.iter().map(|h| (*h).to_owned()).collect());
    for r in rows {
        line(r.clone());
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn num(v: f64) -> String {
    format!("{v:.3}")
}

pub(crate) fn print_summary(s: &RouterSummary) {
    println!("router      {} ({} level), pid {}", s.name, s.level, s.pid);
    println!(
        "uptime      {:.1} s, memory {} KiB",
        s.uptime_ms as f64 / 1000.0,
        s.rss_kib
    );
    println!(
        "flows       {} pinned of {} slots",
        s.flows, s.flow_capacity
    );
    println!("subnets     {}", s.subnets);
    println!(
        "peers       {} below, upper level {}",
        s.downstream_peers,
        if s.upstream_registered {
            "registered"
        } else {
            "not registered"
        }
    );
    println!("modules     {}", s.modules);
    println!("packets     {} (engine)", s.packets);
    println!(
        "fast path   {}, {} packets forwarded in the kernel",
        s.fast_path, s.fast_path_forwarded
    );
}

fn print_groups(title: &str, g: &GroupCounts) {
    let mut parts: Vec<String> = g
        .groups
        .iter()
        .take(8)
        .map(|x| format!("{} {}", x.key, x.flows))
        .collect();
    if g.groups.len() > 8 {
        let rest: u64 = g.groups.iter().skip(8).map(|x| x.flows).sum();
        parts.push(format!("{} more keys {rest}", g.groups.len() - 8));
    }
    if g.other > 0 {
        parts.push(format!("others {}", g.other));
    }
    println!(
        "{title:<12}{}",
        if parts.is_empty() {
            "-".into()
        } else {
            parts.join(", ")
        }
    );
}

pub(crate) fn print_flows(r: &FlowsResponse) {
    println!(
        "{} of {} pinned flows match (table capacity {}){}",
        r.matched,
        r.scanned,
        r.capacity,
        if r.truncated {
            format!("; first {} listed", r.flows.len())
        } else {
            String::new()
        }
    );
    print_groups("by next hop", &r.by_next_hop);
    print_groups("by VIP", &r.by_vip);
    print_groups("by client", &r.by_client);
    if r.flows.is_empty() {
        return;
    }
    println!();
    let rows: Vec<Vec<String>> = r
        .flows
        .iter()
        .map(|f| {
            vec![
                match f.proto {
                    6 => "tcp".into(),
                    17 => "udp".into(),
                    p => p.to_string(),
                },
                SocketAddr::new(f.client, f.client_port).to_string(),
                SocketAddr::new(f.vip, f.vip_port).to_string(),
                f.next_hop.to_string(),
                f.state.clone(),
                f.packets.to_string(),
                f.bytes.to_string(),
                format!("{:.1}", f.age_ms as f64 / 1000.0),
                format!("{:.1}", f.idle_ms as f64 / 1000.0),
            ]
        })
        .collect();
    table(
        &[
            "PROTO", "CLIENT", "VIP", "NEXT HOP", "STATE", "PACKETS", "BYTES", "AGE s", "IDLE s",
        ],
        &rows,
    );
}

pub(crate) fn print_table(t: &TableResponse) {
    println!("cost model {}", t.cost_model);
    if t.subnets.is_empty() {
        println!("no virtual subnets (no lower level has advertised one yet, none is static)");
    }
    for s in &t.subnets {
        println!(
            "\n{} ({}, policy {}, advertised load {})",
            s.subnet,
            s.source,
            s.policy,
            opt(s.aggregate.map(num))
        );
        let rows: Vec<Vec<String>> = s
            .next_hops
            .iter()
            .map(|h| {
                vec![
                    if h.best { "*".into() } else { String::new() },
                    h.address.to_string(),
                    opt(h.peer.as_deref()),
                    num(h.load),
                    num(h.route_cost),
                    h.cost.map_or_else(|| "unreachable".into(), num),
                    if h.up { "up".into() } else { "down".into() },
                ]
            })
            .collect();
        table(
            &[
                "",
                "NEXT HOP",
                "PEER",
                "LOAD",
                "ROUTE COST",
                "COST F",
                "STATE",
            ],
            &rows,
        );
    }
    if t.omitted > 0 {
        println!(
            "({} more subnets not shown; query one with --subnet)",
            t.omitted
        );
    }
}

pub(crate) fn print_peers(p: &PeersResponse) {
    println!("lower-level peers are {}s", p.downstream_role);
    let rows: Vec<Vec<String>> = p
        .peers
        .iter()
        .map(|r| {
            vec![
                opt(r.name.as_deref()),
                r.direction.clone(),
                r.remote.clone(),
                if r.registered {
                    "yes".into()
                } else {
                    "no".into()
                },
                opt(r.up.map(|u| if u { "up" } else { "down" })),
                opt(r.tunnel),
                opt(r.route_cost.map(num)),
                opt(r
                    .last_update_ms_ago
                    .map(|ms| format!("{:.1} s ago", ms as f64 / 1000.0))),
                r.updates.to_string(),
                opt(r.last_seq),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "DIRECTION",
            "REMOTE",
            "REGISTERED",
            "TABLE",
            "TUNNEL",
            "ROUTE COST",
            "LAST UPDATE",
            "UPDATES",
            "SEQ",
        ],
        &rows,
    );
}

pub(crate) fn print_modules(m: &ModulesResponse) {
    if m.environments.is_empty() {
        println!("no execution environment (the configuration has no [modules] section)");
    }
    for e in &m.environments {
        println!(
            "environment {} ({}, on failure {}): {} installs, {} refused, {} removals, {} bindings refused",
            e.name, e.scope, e.failure_policy, e.installs, e.refused, e.removals, e.bind_refused
        );
        let rows: Vec<Vec<String>> = e
            .modules
            .iter()
            .map(|r| {
                vec![
                    r.name.clone(),
                    r.active.version.clone(),
                    r.active.state.clone(),
                    r.active.signer.clone(),
                    r.active.digest.chars().take(16).collect(),
                    r.calls.to_string(),
                    r.faults.to_string(),
                    r.fallbacks.to_string(),
                    r.throttled.to_string(),
                    r.cpu_used.to_string(),
                    opt(r.previous.as_ref().map(|p| p.version.clone())),
                    if r.bound.is_empty() {
                        "-".into()
                    } else {
                        r.bound.join("; ")
                    },
                ]
            })
            .collect();
        table(
            &[
                "NAME",
                "VERSION",
                "STATE",
                "SIGNER",
                "DIGEST",
                "CALLS",
                "FAULTS",
                "FALLBACKS",
                "THROTTLED",
                "CPU",
                "PREVIOUS",
                "BOUND",
            ],
            &rows,
        );
    }
}

pub(crate) fn print_queues(q: &QueuesResponse, previous: Option<&EgressRow>) {
    if let Some(e) = &q.egress {
        print_egress(e, previous);
    }
    for t in &q.share_trees {
        println!("{} ({}), {} bit/s", t.link, t.realisation, t.rate_bps);
        let rows: Vec<Vec<String>> = t
            .classes
            .iter()
            .map(|c| {
                vec![
                    c.handle.clone(),
                    c.weight.to_string(),
                    format!("{:.1}%", c.share * 100.0),
                    c.rate_bps.to_string(),
                    if c.default {
                        "default".into()
                    } else {
                        String::new()
                    },
                    c.subnets.join(", "),
                ]
            })
            .collect();
        table(
            &["CLASS", "WEIGHT", "SHARE", "RATE bit/s", "", "SUBNETS"],
            &rows,
        );
    }
    println!("{}", q.note);
}

/// The egress stage; `previous` (an answer a second earlier) gives the shares
/// of the last second.
fn print_egress(e: &EgressRow, previous: Option<&EgressRow>) {
    println!(
        "egress stage on {} at {} bit/s: rank {}{}, {} swaps, {} rank faults, {} packets queued",
        e.link,
        e.rate_bps,
        e.rank,
        e.module
            .as_ref()
            .map_or_else(|| " (built-in)".to_owned(), |m| format!(" (module {m})")),
        e.swaps,
        e.rank_faults,
        e.queued_packets
    );
    let sent_before = |id: u16| {
        previous
            .and_then(|p| p.classes.iter().find(|c| c.id == id))
            .map_or(0, |c| c.sent_bytes)
    };
    let delta: Vec<u64> = e
        .classes
        .iter()
        .map(|c| c.sent_bytes.saturating_sub(sent_before(c.id)))
        .collect();
    let total: u64 = delta.iter().sum();
    let rows: Vec<Vec<String>> = e
        .classes
        .iter()
        .zip(&delta)
        .map(|(c, d)| {
            vec![
                c.id.to_string(),
                c.weight.to_string(),
                c.priority.to_string(),
                if total == 0 {
                    "-".into()
                } else {
                    format!("{:.1}%", *d as f64 * 100.0 / total as f64)
                },
                format!("{:.1}", *d as f64 * 8.0 / 1e6),
                c.sent_packets.to_string(),
                c.queued.to_string(),
                c.drops.to_string(),
                c.sources.join(", "),
            ]
        })
        .collect();
    table(
        &[
            "CLASS",
            "WEIGHT",
            "PRIO",
            "SHARE 1s",
            "Mbit 1s",
            "SENT PKTS",
            "QUEUED",
            "DROPS",
            "SOURCES",
        ],
        &rows,
    );
}

pub(crate) fn print_counters(c: &CountersResponse) {
    for f in &c.families {
        for s in &f.samples {
            let labels = if s.labels.is_empty() {
                String::new()
            } else {
                let l: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("{{{}}}", l.join(","))
            };
            let value = match &s.value {
                MetricValue::Counter(v) => v.to_string(),
                MetricValue::Gauge(v) => format!("{v}"),
                MetricValue::Histogram(h) => {
                    let us = |v: Option<f64>| match v {
                        Some(x) if x.is_finite() => format!("{:.1} us", x * 1e6),
                        Some(_) => "overflow".into(),
                        None => "-".into(),
                    };
                    format!(
                        "count {}, mean {}, p50 <= {}, p99 <= {}",
                        h.count,
                        us(h.mean()),
                        us(h.quantile_bound(0.5)),
                        us(h.quantile_bound(0.99))
                    )
                }
            };
            println!("{}{labels} {value}", f.name);
        }
    }
}
