//! `lab up` and `lab down`: the state file, starting and stopping the daemons,
//! and waiting until the hierarchy answers.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::configs::{certificates, host_config, router_config, sign_shipped_module};
use super::topology::{Names, UpOptions, hosts, ip, lab_namespaces, network, site_letter};
use super::{NETNS_DIR, VIP, VIP_SUBNET, recovery};

/// What `lab down` needs, written by `lab up` before anything is created.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct LabState {
    pub(super) prefix: String,
    pub(super) namespaces: Vec<String>,
    pub(super) daemons: Vec<DaemonState>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct DaemonState {
    pub(super) name: String,
    pub(super) namespace: String,
    pub(super) pid: u32,
    pub(super) config: PathBuf,
    pub(super) log: PathBuf,
    pub(super) stats: PathBuf,
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join("lab.toml")
}

pub(super) fn read_state(dir: &Path) -> Result<Option<LabState>> {
    let p = state_path(dir);
    match std::fs::read_to_string(&p) {
        Ok(t) => Ok(Some(toml::from_str(&t).with_context(|| {
            format!("{}: not a lab state file", p.display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

pub(super) fn write_state(dir: &Path, s: &LabState) -> Result<()> {
    let p = state_path(dir);
    std::fs::write(&p, toml::to_string(s)?).with_context(|| format!("writing {}", p.display()))
}

pub(super) fn up(dir: &Path, o: &UpOptions) -> Result<()> {
    let p = &o.prefix;
    if p.is_empty() || p.len() > 8 || !p.bytes().all(|b| b.is_ascii_alphanumeric()) {
        bail!("--prefix {p:?}: use 1-8 letters or digits");
    }
    if read_state(dir)?.is_some() {
        bail!(
            "a lab is already up in {}; run `pronto lab down --dir {}` first",
            dir.display(),
            dir.display()
        );
    }
    for ns in lab_namespaces(p, o.recovery) {
        if Path::new(NETNS_DIR).join(&ns).exists() {
            bail!(
                "namespace {ns} exists; run `pronto lab down --prefix {p}` (or choose another --prefix)"
            );
        }
    }
    for sub in ["ca", "conf", "logs", "stats", "load"] {
        let d = dir.join(sub);
        if d.exists() {
            std::fs::remove_dir_all(&d).with_context(|| format!("clearing {}", d.display()))?;
        }
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    let mut state = LabState {
        prefix: p.clone(),
        namespaces: lab_namespaces(p, o.recovery),
        daemons: Vec::new(),
    };
    // Written first, so `down` can clean up whatever part of `up` succeeded.
    write_state(dir, &state)?;
    let result = build(dir, o, &mut state);
    if result.is_err() {
        eprintln!("lab up failed; logs are in {}", dir.join("logs").display());
    }
    result
}

fn build(dir: &Path, o: &UpOptions, state: &mut LabState) -> Result<()> {
    let p = &o.prefix;
    let started = Instant::now();
    certificates(dir)?;
    if let Some(m) = &o.policy_module {
        sign_shipped_module(dir, m)?;
    }
    if o.recovery {
        recovery::prepare(dir)?;
    }
    network(p, o.recovery)?;
    for h in hosts() {
        let load = o
            .loads
            .iter()
            .rev()
            .find(|(n, _)| *n == h.short)
            .map_or(0.0, |(_, l)| *l);
        std::fs::write(dir.join("load").join(&h.short), format!("{load}\n"))?;
    }
    let exe = std::env::current_exe().context("locating the pronto binary")?;
    let n = Names::new(p);
    let mut start = |name: &str, ns: &str, kind: &str, text: String| -> Result<()> {
        let config = dir.join("conf").join(format!("{name}.toml"));
        std::fs::write(&config, text)?;
        let log = dir.join("logs").join(format!("{name}.log"));
        let d = spawn_daemon(&exe, name, ns, kind, &config, &log, dir)?;
        state.daemons.push(d);
        write_state(dir, state)
    };
    start("sys", &n.sys, "router", router_config(dir, o, None))?;
    for site in 1..=2 {
        let name = format!("site-{}", site_letter(site));
        start(
            &name,
            &Names::site(p, site),
            "router",
            router_config(dir, o, Some(site)),
        )?;
    }
    for h in hosts() {
        start(
            &h.short,
            &Names::host(p, &h),
            "host",
            host_config(dir, o, &h),
        )?;
    }
    if o.recovery {
        start(
            "spare-a",
            &recovery::spare_namespace(p),
            "router",
            recovery::spare_config(dir, o),
        )?;
        start(
            "sys2",
            &recovery::sys2_namespace(p),
            "router",
            recovery::sys2_config(dir, o),
        )?;
    }
    wait_ready(dir, state, o.timeout)?;
    if o.recovery {
        recovery::wait_ready(state, o.timeout)?;
    }
    println!(
        "lab up in {:.1} s: {} namespaces, {} daemons, policy {}, shortcuts {}",
        started.elapsed().as_secs_f64(),
        state.namespaces.len(),
        state.daemons.len(),
        o.policy_module
            .as_deref()
            .map_or(o.policy.config_name().to_owned(), |m| format!(
                "module {m} (signed)"
            )),
        if o.shortcuts { "on" } else { "off" },
    );
    println!("  try:    ip netns exec {} curl http://{VIP}/", n.client);
    println!("  status: pronto lab status --dir {}", dir.display());
    let ca = dir.join("ca");
    println!(
        "  operator certificate (management API): --cert {} --key {}",
        ca.join(format!("peer-{}.pem", super::configs::OPERATOR))
            .display(),
        ca.join(format!("peer-{}.key", super::configs::OPERATOR))
            .display()
    );
    println!("  down:   pronto lab down --dir {}", dir.display());
    Ok(())
}

pub(super) fn spawn_daemon(
    exe: &Path,
    name: &str,
    ns: &str,
    kind: &str,
    config: &Path,
    log: &Path,
    dir: &Path,
) -> Result<DaemonState> {
    use std::os::unix::process::CommandExt;
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(exe)
        .args([kind, "run", "--config"])
        .arg(config)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        // Plain text in the log files.
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // Its own process group: a Ctrl-C at the terminal of `lab up` does not
        // reach the daemons; `lab down` stops them.
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let stats = dir.join("stats").join(format!("{}.toml", name));
    Ok(DaemonState {
        name: name.to_owned(),
        namespace: ns.to_owned(),
        pid: child.id(),
        config: config.to_owned(),
        log: log.to_owned(),
        stats,
    })
}

/// A daemon's stats snapshot, parsed loosely (missing means not written yet).
pub(super) fn stats_of(d: &DaemonState) -> Option<toml::Table> {
    std::fs::read_to_string(&d.stats).ok()?.parse().ok()
}

pub(super) fn up_candidates(t: &toml::Table) -> usize {
    t.get("subnets")
        .and_then(|s| s.as_array())
        .and_then(|subs| {
            subs.iter()
                .find(|s| s.get("subnet").and_then(|v| v.as_str()) == Some(VIP_SUBNET))
        })
        .and_then(|s| s.get("candidates"))
        .and_then(|c| c.as_array())
        .map_or(0, |c| {
            c.iter()
                .filter(|x| x.get("up").and_then(toml::Value::as_bool) == Some(true))
                .count()
        })
}

pub(super) fn alive(pid: u32) -> bool {
    // A zombie (exited, not yet reaped by its new parent) is not alive.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|st| st != "Z"))
        })
        .unwrap_or(false)
}

/// Every router offers both next hops for the VIP subnet, then a real request
/// from the client namespace succeeds.
fn wait_ready(dir: &Path, state: &LabState, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let client = Names::new(&state.prefix).client;
    loop {
        if let Some(dead) = state.daemons.iter().find(|d| !alive(d.pid)) {
            bail!(
                "{} exited during start-up; see {}:\n{}",
                dead.name,
                dead.log.display(),
                tail(&dead.log, 20)
            );
        }
        let routers_ready = state
            .daemons
            .iter()
            .filter(|d| d.name == "sys" || d.name.starts_with("site-"))
            .all(|d| stats_of(d).is_some_and(|t| up_candidates(&t) == 2));
        if routers_ready && http_get(&client, VIP, Duration::from_secs(2)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let mut why = String::new();
            for d in &state.daemons {
                why.push_str(&format!(
                    "--- {} ({})\n{}\n",
                    d.name,
                    d.log.display(),
                    tail(&d.log, 5)
                ));
            }
            bail!(
                "the lab in {} was not ready within {} s (every router must offer 2 next hops \
                 for {VIP_SUBNET} and http://{VIP}/ must answer from {client}):\n{why}",
                dir.display(),
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(super) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One HTTP/1.0 GET from inside namespace `ns`; returns the body.
fn http_get(ns: &str, vip: Ipv4Addr, timeout: Duration) -> Result<String> {
    router_core::linux::in_netns(ns, || -> Result<String> {
        let mut s = TcpStream::connect_timeout(&SocketAddr::from((vip, 80)), timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.write_all(b"GET / HTTP/1.0\r\nHost: lab\r\n\r\n")?;
        let mut resp = Vec::new();
        s.take(64 * 1024).read_to_end(&mut resp)?;
        let text = String::from_utf8_lossy(&resp);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .context("no HTTP header in the answer")?;
        if !head.starts_with("HTTP/1.1 200") {
            bail!("answer: {head}");
        }
        Ok(body.trim().to_owned())
    })
    .with_context(|| format!("entering {ns}"))?
}

pub(super) fn down(dir: &Path, prefix: &str) -> Result<()> {
    let state = read_state(dir)?;
    let prefix = state
        .as_ref()
        .map_or(prefix, |s| s.prefix.as_str())
        .to_owned();
    let mut stopped = 0;
    if let Some(s) = &state {
        let ours: Vec<&DaemonState> = s.daemons.iter().filter(|d| is_our_daemon(d)).collect();
        for d in &ours {
            signal(d.pid, nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while ours.iter().any(|d| alive(d.pid)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        for d in &ours {
            if alive(d.pid) {
                eprintln!(
                    "{} (pid {}) did not stop on SIGTERM; killing it",
                    d.name, d.pid
                );
                signal(d.pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
        stopped = ours.len();
    }
    let mut deleted = 0;
    let mut names: Vec<String> = state.map(|s| s.namespaces).unwrap_or_default();
    names.extend(lab_namespaces(&prefix, true));
    names.sort();
    names.dedup();
    for ns in names {
        if Path::new(NETNS_DIR).join(&ns).exists() {
            ip(&["netns", "del", &ns])?;
            deleted += 1;
        }
    }
    for sub in ["ca", "conf"] {
        let d = dir.join(sub);
        if d.exists() {
            std::fs::remove_dir_all(&d).with_context(|| format!("removing {}", d.display()))?;
        }
    }
    let sp = state_path(dir);
    if sp.exists() {
        std::fs::remove_file(&sp).with_context(|| format!("removing {}", sp.display()))?;
    }
    println!(
        "lab down: {stopped} daemons stopped, {deleted} namespaces deleted (logs and stats kept in {})",
        dir.display()
    );
    Ok(())
}

/// The pid still runs the daemon we started (pids are reused).
pub(super) fn is_our_daemon(d: &DaemonState) -> bool {
    let Ok(cmd) = std::fs::read(format!("/proc/{}/cmdline", d.pid)) else {
        return false;
    };
    let config = d.config.as_os_str().as_encoded_bytes();
    cmd.split(|b| *b == 0).any(|arg| arg == config) && alive(d.pid)
}

pub(super) fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    if let Ok(p) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), sig);
    }
}
