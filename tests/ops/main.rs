//! The operators' interface end to end (root): a namespace lab whose system
//! router serves the management API; the `pronto` CLI loads, swaps, rolls back
//! and removes modules on it while a stream of HTTP connections flows through
//! it, queries it, and is refused without a client certificate or with an
//! unsigned or wrongly signed module, or with a certificate of the trust domain
//! that lacks the role (a host's and a router's certificate are refused with
//! 403 and a hint, a viewer may query but not change modules); `/metrics` is
//! scraped and parsed with a Prometheus parser.
//!
//! `runtime.rs` continues on the same lab: bindings of two subnets at runtime
//! and across a restart, then tenant environments.
//!
//! This test belongs to the root package (`cargo test -p pronto --test ops`), like
//! tests/lab.rs. Needs root: prints SKIP otherwise, and fails when CI=true.
#![cfg(target_os = "linux")]
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failure is a test failure"
)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use router_core::linux::in_netns;

#[path = "../support/mod.rs"]
mod support;
use support::{pronto, root_or_skip};

mod runtime;
use runtime::{
    bindings_govern_their_subnets_at_once_and_survive_a_restart,
    tenants_stay_within_their_subnets_and_names,
};

const VIP: Ipv4Addr = Ipv4Addr::new(192, 200, 0, 10);
const MGMT: &str = "https://127.0.0.1:7900";

/// A lab whose system router was restarted with a `[management]` section; torn
/// down on drop.
struct OpsLab {
    dir: PathBuf,
    prefix: String,
    sys: Option<Child>,
}

impl OpsLab {
    fn up() -> Self {
        let prefix = format!("o{}", std::process::id() % 100_000);
        let dir = std::env::temp_dir().join(format!("pronto-ops-{prefix}"));
        let mut lab = Self {
            dir: dir.clone(),
            prefix: prefix.clone(),
            sys: None,
        };
        let out = pronto()
            .args(["lab", "up", "--dir"])
            .arg(&dir)
            .args(["--prefix", &prefix, "--timeout-secs", "60"])
            .args(["--policy-module", "least_load"])
            // The swaps below happen with pinned packets on the kernel's path.
            .args(["--fast-path", "bpf"])
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pronto lab up failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        lab.restart_sys_with_management();
        lab
    }

    fn ns(&self, node: &str) -> String {
        format!("{}-{node}", self.prefix)
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca")
    }

    /// Stop the lab's system router and start it again from the same
    /// configuration plus `[management]` (src/lab.rs writes none).
    fn restart_sys_with_management(&mut self) {
        let state: toml::Table = std::fs::read_to_string(self.dir.join("lab.toml"))
            .unwrap()
            .parse()
            .unwrap();
        let sys = state["daemons"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"].as_str() == Some("sys"))
            .unwrap();
        let pid = i32::try_from(sys["pid"].as_integer().unwrap()).unwrap();
        stop_pid(nix::unistd::Pid::from_raw(pid));
        let conf = self.dir.join("conf").join("sys.toml");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str("\n[management]\nlisten = \"127.0.0.1:7900\"\n");
        std::fs::write(&conf, text).unwrap();
        self.spawn_sys("sys-mgmt.log");
    }

    /// Stop the management-enabled system router and start it again, as an
    /// operator's restart would.
    fn restart_sys(&mut self) {
        let mut child = self.sys.take().unwrap();
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let status = child.wait().unwrap();
        eprintln!("sys router stopped: {status}");
        self.spawn_sys("sys-mgmt-restarted.log");
    }

    fn spawn_sys(&mut self, log: &str) {
        let conf = self.dir.join("conf").join("sys.toml");
        let log = std::fs::File::create(self.dir.join("logs").join(log)).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns("sys")])
            .arg(env!("CARGO_BIN_EXE_pronto"))
            .args(["router", "run", "--config"])
            .arg(&conf)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.sys = Some(child);
    }

    /// Waits until the (re)started system router answers and offers both
    /// sites for each of `subnets`.
    fn wait_sites(&self, subnets: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.run(&["query", "table", "--json"], &[], true);
            if out.status.success() {
                let t: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                let up = |subnet: &str| {
                    t["subnets"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter(|s| s["subnet"] == subnet)
                        .flat_map(|s| s["next_hops"].as_array().unwrap().clone())
                        .filter(|h| h["up"] == true)
                        .count()
                };
                if subnets.iter().all(|s| up(s) == 2) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the system router never offered both sites for {subnets:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `pronto ARGS` in the system router's namespace.
    fn cli(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns("sys")])
            .arg(env!("CARGO_BIN_EXE_pronto"))
            .args(args)
            .env("RUST_LOG", "warn")
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap()
    }

    /// `--cert`/`--key` of the lab CA's certificate for `name`.
    fn cert_of(&self, name: &str) -> Vec<String> {
        let ca = self.ca();
        vec![
            "--cert".to_owned(),
            ca.join(format!("peer-{name}.pem")).display().to_string(),
            "--key".to_owned(),
            ca.join(format!("peer-{name}.key")).display().to_string(),
        ]
    }

    /// `pronto CMD... <conn without cert> --cert/--key of NAME EXTRA...`.
    fn run_as(&self, name: &str, cmd: &[&str], extra: &[&str]) -> Output {
        let mut flags = self.cert_of(name);
        flags.extend(extra.iter().map(|s| (*s).to_owned()));
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        self.run(cmd, &flags, false)
    }

    /// Connection flags of the operator (`pronto lab up` issues
    /// `peer-operator.lab`, role operator).
    fn conn(&self, with_cert: bool) -> Vec<String> {
        let ca = self.ca();
        let mut v = vec![
            "--router".to_owned(),
            MGMT.to_owned(),
            "--server-name".to_owned(),
            "sys.lab".to_owned(),
            "--ca".to_owned(),
            ca.join("ca.pem").display().to_string(),
        ];
        if with_cert {
            v.extend(self.cert_of("operator.lab"));
        }
        v
    }

    /// `pronto CMD... <conn> EXTRA...`; panics with its output unless it succeeds.
    fn ok(&self, cmd: &[&str], extra: &[&str]) -> String {
        let out = self.run(cmd, extra, true);
        assert!(
            out.status.success(),
            "pronto {cmd:?} {extra:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn run(&self, cmd: &[&str], extra: &[&str], with_cert: bool) -> Output {
        let conn = self.conn(with_cert);
        let mut args: Vec<&str> = cmd.to_vec();
        args.extend(conn.iter().map(String::as_str));
        args.extend(extra);
        self.cli(&args)
    }

    fn json(&self, what: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["query", what, "--json"], &[])).unwrap()
    }

    /// The `least_load` module's row in `query modules`.
    fn least_load(&self) -> serde_json::Value {
        self.module("least_load")
    }

    /// Module `name`'s row in `query modules`.
    fn module(&self, name: &str) -> serde_json::Value {
        let m = self.json("modules");
        m["environments"][0]["modules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no module {name}: {m}"))
    }
}

impl Drop for OpsLab {
    fn drop(&mut self) {
        if let Some(mut c) = self.sys.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(c.id()).unwrap_or(0)),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(5);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let out = pronto()
            .args(["lab", "down", "--dir"])
            .arg(&self.dir)
            .args(["--prefix", &self.prefix])
            .output();
        match out {
            Ok(o) if o.status.success() => {
                let _ = std::fs::remove_dir_all(&self.dir);
            }
            Ok(o) => eprintln!(
                "pronto lab down failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("pronto lab down: {e}"),
        }
    }
}

/// HTTP GETs to the VIP from the client namespace, one connection each, until
/// stopped; counts answers and failures.
struct Stream {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Stream {
    fn start(ns: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let (s, o, f) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
        let thread = std::thread::spawn(move || {
            in_netns(&ns, || {
                while !s.load(Ordering::Relaxed) {
                    if get().is_ok() {
                        o.fetch_add(1, Ordering::Relaxed);
                    } else {
                        f.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
            .unwrap();
        });
        Self {
            stop,
            ok,
            failed,
            thread: Some(thread),
        }
    }

    fn counts(&self) -> (u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    /// Waits until `n` more answers arrived (the stream flows), or panics.
    fn flows(&self, n: u64, what: &str) {
        let (start, _) = self.counts();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.counts().0 < start + n {
            assert!(
                Instant::now() < deadline,
                "the stream stopped {what}: {:?}",
                self.counts()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stop(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.counts()
    }
}

/// SIGTERM to `pid`, waiting up to 10 s for it to go.
fn stop_pid(pid: nix::unistd::Pid) {
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while nix::sys::signal::kill(pid, None).is_ok() {
        assert!(Instant::now() < deadline, "sys router did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One HTTP/1.0 GET of the VIP; Ok when a 200 answer came back.
fn get() -> std::io::Result<()> {
    get_to(VIP)
}

/// One HTTP/1.0 GET of `vip`.
fn get_to(vip: Ipv4Addr) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&SocketAddr::from((vip, 80)), Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: vip\r\n\r\n")?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)?;
    if answer.starts_with(b"HTTP/1.1 200") || answer.starts_with(b"HTTP/1.0 200") {
        Ok(())
    } else {
        Err(std::io::Error::other("not a 200 answer"))
    }
}

/// Sign the shipped module `name` as `version` using the CA in `ca_dir`.
fn sign(ca_dir: &Path, name: &str, version: &str, out: &Path) {
    sign_for(ca_dir, name, version, &[], out);
}

/// As [`sign`], its manifest claiming `subnets` (a tenant's module must).
fn sign_for(ca_dir: &Path, name: &str, version: &str, subnets: &[&str], out: &Path) {
    let wasm = shipped(name);
    let shipped_manifest = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("slr-policy-wasm/manifests")
        .join(format!("{name}.toml"));
    let text = std::fs::read_to_string(shipped_manifest).unwrap();
    let manifest = out.with_extension("toml");
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("version") {
                format!("version = \"{version}\"\nsubnets = {subnets:?}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&manifest, text).unwrap();
    let o = pronto()
        .args(["module", "sign", "--key"])
        .arg(ca_dir.join("signer.key"))
        .arg("--chain")
        .arg(ca_dir.join("signer.pem"))
        .arg("--manifest")
        .arg(&manifest)
        .arg(&wasm)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("slr-policy-wasm/modules")
        .join(format!("{name}.wasm"))
}

#[test]
fn operators_load_swap_roll_back_and_query_a_running_router_while_packets_flow() {
    if !root_or_skip("operators_load_swap_roll_back_and_query_a_running_router_while_packets_flow")
    {
        return;
    }
    let lab = OpsLab::up();
    let work = lab.dir.join("ops");
    std::fs::create_dir_all(&work).unwrap();
    // A viewer: may query, may not change modules.
    let o = pronto()
        .args(["ca", "issue-peer", "--dir"])
        .arg(lab.ca())
        .args(["--name", "noc.lab", "--role", "viewer"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // The restarted router answers once its sites registered again.
    lab.wait_sites(&["192.200.0.0/24"]);
    let table = lab.ok(&["query", "table"], &[]);
    eprintln!("{table}");
    assert!(
        table.contains("192.200.0.0/24") && table.contains("site-a.lab"),
        "{table}"
    );
    let peers = lab.json("peers");
    let names: Vec<&str> = peers["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(
        names.contains(&"site-a.lab") && names.contains(&"site-b.lab"),
        "{peers}"
    );
    assert!(
        peers["peers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["last_update_ms_ago"]
                .as_u64()
                .is_some_and(|ms| ms < 5_000)),
        "every site sent a state update lately: {peers}"
    );

    // The module the configuration loaded, bound to the VIP subnet.
    let first = lab.least_load();
    assert_eq!(first["active"]["version"], "0.1.0");
    assert_eq!(first["bound"][0], "policy 192.200.0.0/24");
    eprintln!("{}", lab.ok(&["query", "modules"], &[]));

    let stream = Stream::start(lab.ns("client"));
    stream.flows(20, "before any module operation");
    let calls_before = lab.least_load()["calls"].as_u64().unwrap();

    // Load a second module, swap least_load to a new version, roll back, remove:
    // the stream keeps flowing through each step.
    let ca = lab.ca();
    let hash = work.join("consistent_hash.signed.wasm");
    sign(&ca, "consistent_hash", "1.0.0", &hash);
    let out = lab.ok(&["module", "load"], &[hash.to_str().unwrap()]);
    assert!(out.contains("loaded consistent_hash 1.0.0"), "{out}");
    stream.flows(20, "after the load");
    let m = lab.json("modules");
    assert!(
        m["environments"][0]["modules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "consistent_hash" && r["active"]["state"] == "serving"),
        "{m}"
    );
    let again = lab.run(&["module", "load"], &[hash.to_str().unwrap()], true);
    assert!(!again.status.success());
    let e = String::from_utf8_lossy(&again.stderr);
    assert!(
        e.contains("already installed") && e.contains("pronto module swap"),
        "{e}"
    );

    let v2 = work.join("least_load-1.1.0.signed.wasm");
    sign(&ca, "least_load", "1.1.0", &v2);
    let out = lab.ok(&["module", "swap"], &[v2.to_str().unwrap()]);
    assert!(out.contains("swapped least_load 0.1.0 -> 1.1.0"), "{out}");
    stream.flows(30, "after the swap");
    let swapped = lab.least_load();
    assert_eq!(swapped["active"]["version"], "1.1.0");
    assert_eq!(swapped["previous"]["version"], "0.1.0");
    assert_eq!(swapped["swaps"], 1);
    let calls_swapped = swapped["calls"].as_u64().unwrap();
    assert!(
        calls_swapped > calls_before,
        "the new version places the stream's flows: {calls_before} -> {calls_swapped}"
    );
    assert_eq!(swapped["faults"], 0);

    let out = lab.ok(&["module", "rollback"], &["least_load"]);
    assert!(
        out.contains("rolled least_load back: 1.1.0 -> 0.1.0"),
        "{out}"
    );
    stream.flows(30, "after the rollback");
    let back = lab.least_load();
    assert_eq!(back["active"]["version"], "0.1.0");
    assert_eq!(back["rollbacks"], 1);
    assert!(back["calls"].as_u64().unwrap() > calls_swapped);

    let out = lab.ok(&["module", "remove"], &["consistent_hash"]);
    assert!(out.contains("removed consistent_hash"), "{out}");
    stream.flows(20, "after the remove");

    // Refusals: unsigned, signed by another CA, no client certificate.
    let unsigned = work.join("unsigned.wasm");
    {
        let manifest = exec_env::format::parse_manifest(
            "name = \"least_load\"\nversion = \"9.0.0\"\nkind = \"policy\"\ncapabilities = []\n",
        )
        .unwrap();
        let bytes = exec_env::format::embed_manifest(
            &std::fs::read(shipped("least_load")).unwrap(),
            &manifest,
        )
        .unwrap();
        std::fs::write(&unsigned, bytes).unwrap();
    }
    let out = lab.run(&["module", "swap"], &[unsigned.to_str().unwrap()], true);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    eprintln!("unsigned: {e}");
    assert!(
        e.contains("unsigned") && e.contains("pronto module sign"),
        "{e}"
    );

    let other_ca = work.join("other-ca");
    let o = pronto()
        .args(["ca", "init", "--dir"])
        .arg(&other_ca)
        .args(["--name", "Someone else"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let foreign = work.join("foreign.signed.wasm");
    sign(&other_ca, "least_load", "9.0.0", &foreign);
    let out = lab.run(&["module", "swap"], &[foreign.to_str().unwrap()], true);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    eprintln!("foreign: {e}");
    assert!(
        e.contains("not trusted") && e.contains("trust_anchors"),
        "{e}"
    );
    assert_eq!(
        lab.least_load()["active"]["version"],
        "0.1.0",
        "refusals change nothing"
    );

    let out = lab.run(&["query", "summary"], &[], false);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    eprintln!("no certificate: {e}");
    assert!(
        e.contains("requires a client certificate") && e.contains("--cert/--key"),
        "{e}"
    );
    // A certificate from another trust domain, and a router name that does
    // not match the certificate: refused, and said so.
    let o = pronto()
        .args(["ca", "issue-peer", "--dir"])
        .arg(&other_ca)
        .args(["--name", "intruder.lab"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let intruder = [
        "--cert",
        other_ca.join("peer-intruder.lab.pem").to_str().unwrap(),
        "--key",
        other_ca.join("peer-intruder.lab.key").to_str().unwrap(),
    ]
    .map(str::to_owned);
    let intruder: Vec<&str> = intruder.iter().map(String::as_str).collect();
    let out = lab.run(&["query", "summary"], &intruder, false);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    eprintln!("foreign client: {e}");
    assert!(e.contains("does not trust our certificate"), "{e}");
    let ca_pem = lab.ca().join("ca.pem");
    let out = lab.cli(&[
        "query",
        "summary",
        "--router",
        MGMT,
        "--ca",
        ca_pem.to_str().unwrap(),
    ]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("--server-name"), "{e}");
    let out = lab.run(
        &["query", "summary"],
        &["--cert", "/nonexistent.pem", "--key", "/x"],
        false,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cert"));

    // Roles: certificates of the trust domain without the operator role.
    let refused = |name: &str, cmd: &[&str], extra: &[&str], needs: &str| {
        let out = lab.run_as(name, cmd, extra);
        assert!(!out.status.success(), "{name} allowed {cmd:?}");
        let e = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!("{name} {cmd:?}: {e}");
        assert!(e.contains("403") && e.contains(needs), "{e}");
        assert!(
            e.contains("pronto ca issue-peer") && e.contains("--role"),
            "hint: {e}"
        );
        e
    };
    let e = refused(
        "a1.lab",
        &["module", "rollback"],
        &["least_load"],
        "operator role",
    );
    assert!(e.contains("host certificate"), "{e}");
    refused(
        "a1.lab",
        &["module", "remove"],
        &["least_load"],
        "operator role",
    );
    refused(
        "a1.lab",
        &["module", "swap"],
        &[v2.to_str().unwrap()],
        "operator role",
    );
    let e = refused(
        "a1.lab",
        &["query", "summary"],
        &[],
        "viewer or operator role",
    );
    assert!(e.contains("host certificate"), "{e}");
    let e = refused(
        "site-a.lab",
        &["module", "rollback"],
        &["least_load"],
        "operator role",
    );
    assert!(e.contains("router certificate"), "{e}");
    let out = lab.run_as("noc.lab", &["query", "summary"], &[]);
    assert!(
        out.status.success(),
        "a viewer queries: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e = refused(
        "noc.lab",
        &["module", "remove"],
        &["least_load"],
        "operator role",
    );
    assert!(e.contains("viewer"), "{e}");
    assert_eq!(
        lab.least_load()["active"]["version"],
        "0.1.0",
        "refusals change nothing"
    );

    // Queries while the stream runs.
    let flows: serde_json::Value = serde_json::from_str(&lab.ok(
        &["query", "flows", "--json"],
        &["--vip", "192.200.0.0/24", "--limit", "5"],
    ))
    .unwrap();
    assert!(flows["matched"].as_u64().unwrap() > 0, "{flows}");
    assert!(flows["flows"].as_array().unwrap().len() <= 5);
    assert!(
        !flows["by_next_hop"]["groups"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    eprintln!("{}", lab.ok(&["query", "flows"], &["--limit", "3"]));
    eprintln!("{}", lab.ok(&["query", "peers"], &[]));
    eprintln!("{}", lab.ok(&["query", "queues"], &[]));
    eprintln!("{}", lab.ok(&["query", "summary"], &[]));

    // The metrics endpoint parses as Prometheus text.
    let text = lab.ok(&["query", "metrics"], &[]);
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let value = |name: &str, label: Option<(&str, &str)>| -> f64 {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                prometheus_parse::Value::Histogram(h) => h.last().map_or(0.0, |b| b.count),
                prometheus_parse::Value::Summary(_) => f64::NAN,
            })
            .unwrap_or_else(|| panic!("no sample {name} {label:?}"))
    };
    assert!(value("pronto_engine_packets_total", None) > 0.0);
    // The stream's pinned packets crossed the kernel fast path meanwhile, so
    // the swaps above happened with it on.
    assert!(
        value("pronto_forwarded_pinned_total", Some(("path", "kernel"))) > 0.0,
        "the fast path forwarded nothing"
    );
    assert!(value("pronto_engine_forwarded_new_total", None) > 0.0);
    assert!(
        value("pronto_new_flow_decision_seconds", None) > 0.0,
        "decisions timed"
    );
    assert!(value("pronto_module_call_seconds", Some(("call", "select"))) > 0.0);
    assert!(value("pronto_module_calls_total", Some(("module", "least_load"))) > 0.0);
    assert!(
        value(
            "pronto_module_rollbacks_total",
            Some(("module", "least_load"))
        ) >= 1.0
    );
    assert!(value("pronto_mgmt_unauthenticated_total", None) >= 1.0);
    assert!(value("pronto_mgmt_untrusted_total", None) >= 1.0);
    let forbidden = |reason| value("pronto_mgmt_forbidden_total", Some(("reason", reason)));
    assert!(
        forbidden("host_certificate") >= 4.0,
        "host refusals counted"
    );
    assert!(forbidden("router_certificate") >= 1.0);
    assert!(forbidden("viewer_only") >= 1.0);
    assert_eq!(forbidden("no_role"), 0.0);
    assert!(
        value("pronto_env_refused_total", None) >= 2.0,
        "unsigned and foreign"
    );
    assert!(value("pronto_control_registrations_total", None) >= 2.0);
    // The recovery counters of the stats file are in the scrape too (`value`
    // panics on a missing sample): no takeover happened, WHOHAS is counted.
    assert_eq!(value("pronto_control_recovery_taken_over", None), 0.0);
    assert!(value("pronto_control_recovery_queries_total", None) >= 0.0);
    let families = scrape.docs.len();
    let counters = lab.ok(&["query", "counters"], &[]);
    eprintln!(
        "{}",
        counters
            .lines()
            .filter(|l| l.contains("seconds"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    let (ok, failed) = stream.stop();
    eprintln!("stream: {ok} answers, {failed} failures; {families} metric families");
    assert_eq!(
        failed, 0,
        "no connection failed across load, swap, rollback and remove"
    );

    let mut lab = bindings_govern_their_subnets_at_once_and_survive_a_restart(lab, &hash);
    tenants_stay_within_their_subnets_and_names(&mut lab);
}
