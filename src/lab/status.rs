//! `lab status`: each daemon's liveness and counters.

use std::io::Write;
use std::path::Path;

use anyhow::Result;

use super::process::{alive, read_state, stats_of, up_candidates};

pub(super) fn status(dir: &Path) -> Result<()> {
    // A closed pipe (`| head`) ends the listing quietly.
    let mut out = std::io::stdout().lock();
    let Some(state) = read_state(dir)? else {
        let _ = writeln!(out, "no lab in {}", dir.display());
        return Ok(());
    };
    let get = |t: &toml::Table, a: &str, b: &str| {
        t.get(a)
            .and_then(|x| x.get(b))
            .and_then(toml::Value::as_integer)
            .unwrap_or(0)
    };
    let path = |t: &toml::Table| {
        let fp = t.get("fast_path");
        let name = fp
            .and_then(|f| f.get("path"))
            .and_then(toml::Value::as_str)
            .unwrap_or("userspace");
        let n = fp
            .and_then(|f| f.get("forwarded"))
            .and_then(toml::Value::as_integer)
            .unwrap_or(0);
        format!("fast path {name:<9} kernel {n:>9}")
    };
    for d in &state.daemons {
        let up = if alive(d.pid) { "running" } else { "STOPPED" };
        let Some(t) = stats_of(d) else {
            let _ = writeln!(out, "{:<7} pid {:<7} {up:<8} (no stats yet)", d.name, d.pid);
            continue;
        };
        if t.contains_key("engine") {
            let _ = writeln!(
                out,
                "{:<7} pid {:<7} {up:<8} {}  packets {:>8}  new flows {:>6}  pinned {:>8}  drops {:>6}  shortcuts in/out {}/{}  next hops up {}  rss {} KiB",
                d.name,
                d.pid,
                path(&t),
                get(&t, "engine", "packets"),
                get(&t, "engine", "forwarded_new"),
                get(&t, "engine", "forwarded_pinned"),
                get(&t, "engine", "dropped_total"),
                get(&t, "control", "shortcuts_installed"),
                get(&t, "control", "shortcuts_originated"),
                up_candidates(&t),
                t.get("rss_kib")
                    .and_then(toml::Value::as_integer)
                    .unwrap_or(0),
            );
        } else {
            let load = t
                .get("agent")
                .and_then(|a| a.get("load"))
                .and_then(toml::Value::as_float)
                .unwrap_or(0.0);
            let _ = writeln!(
                out,
                "{:<7} pid {:<7} {up:<8} {}  http requests {:>6}  tunnel packets {:>8}  drops {:>4}  load {load:.2}",
                d.name,
                d.pid,
                path(&t),
                t.get("http_requests")
                    .and_then(toml::Value::as_integer)
                    .unwrap_or(0),
                get(&t, "tunnel", "injected"),
                get(&t, "tunnel", "bad_tunnel")
                    + get(&t, "tunnel", "not_served")
                    + get(&t, "tunnel", "nested"),
            );
        }
    }
    Ok(())
}
