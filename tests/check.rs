//! `pronto router check` / `pronto host check` as an operator runs them (no
//! root needed): a valid configuration passes; each thing `run` refuses at
//! start fails `check` with an error that names it (another node's key, a
//! missing module file or trust anchor, a missing management certificate, a
//! key others may read when `[security] key_permissions = "refuse"`); a FIFO
//! given as the configuration or a certificate is refused at once rather than
//! hanging; user errors print one line and no backtrace, even with
//! `RUST_BACKTRACE=1`. Every run is bounded: a hang fails the test.
//!
//! This file belongs to the root package (`cargo test -p pronto --test check`).
#![cfg(target_os = "linux")]
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failure is a test failure"
)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod support;
use support::pronto;

/// Longest a check may take (it reads a handful of small files).
const PROMPT: Duration = Duration::from_secs(20);

/// A temporary directory with a CA and the certificates of `site-a.lab` and
/// `other.lab`, made with `pronto ca`; removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!("pronto-check-bin-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let ca = d.join("ca");
        let ok = |o: Output| assert!(o.status.success(), "{}", text(&o.stderr));
        ok(bounded(pronto().args(["ca", "init", "--dir"]).arg(&ca)));
        for name in ["site-a.lab", "other.lab"] {
            ok(bounded(
                pronto()
                    .args(["ca", "issue-peer", "--dir"])
                    .arg(&ca)
                    .args(["--name", name, "--role", "router"]),
            ));
        }
        Self(d)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn fifo(&self, name: &str) -> PathBuf {
        let p = self.0.join(name);
        let _ = std::fs::remove_file(&p);
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `cmd` to completion, failing the test (and killing it) if it takes
/// longer than [`PROMPT`].
fn bounded(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("RUST_LOG")
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > PROMPT {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{cmd:?} still running after {PROMPT:?} (a FIFO read blocking?)\n{}",
                text(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

const ROUTER: &str = r#"
level = "site"
name = "site-a.lab"
listen = "127.0.0.1:7800"

[tunnel]
local_v4 = "10.1.0.2"

[upstream]
address = "10.1.0.1:7800"
name = "sys.lab"
"#;

fn tls(cert: &str, key: &str) -> String {
    format!("[tls]\ntrust_anchors = [\"ca/ca.pem\"]\ncert = \"{cert}\"\nkey = \"{key}\"\n")
}

fn valid() -> String {
    format!(
        "{ROUTER}{}",
        tls("ca/peer-site-a.lab.pem", "ca/peer-site-a.lab.key")
    )
}

fn router_check(config: &Path) -> Output {
    bounded(pronto().args(["router", "check", "--config"]).arg(config))
}

/// `router check` of `config` must fail naming every one of `parts`.
fn refused(config: &Path, parts: &[&str]) {
    let out = router_check(config);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "check passed:\n{err}");
    for p in parts {
        assert!(err.contains(p), "{p:?} not in:\n{err}");
    }
    assert!(
        err.starts_with("error: ") || err.contains("\nerror: "),
        "{err}"
    );
}

#[test]
fn a_valid_configuration_passes() {
    let d = Dir::new("valid");
    let out = router_check(&d.write("router.toml", &valid()));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("site router site-a.lab is valid"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn check_fails_on_each_configuration_run_refuses() {
    let d = Dir::new("refused");
    // Another node's key.
    let other = format!(
        "{ROUTER}{}",
        tls("ca/peer-site-a.lab.pem", "ca/peer-other.lab.key")
    );
    refused(
        &d.write("other-key.toml", &other),
        &[
            "tls.key",
            "peer-other.lab.key",
            "is not the private key of tls.cert",
        ],
    );
    // Module files and their trust anchors.
    let modules = |anchor: &str| {
        format!(
            "{}\n[modules]\ntrust_anchors = [\"{anchor}\"]\nfiles = [\"least_load.signed.wasm\"]\n\
             subnet = \"192.200.0.0/16\"\npolicy = \"least_load\"\n",
            valid()
        )
    };
    refused(
        &d.write("no-module.toml", &modules("ca/ca.pem")),
        &["modules.files[0]", "least_load.signed.wasm", "No such file"],
    );
    refused(
        &d.write("no-anchor.toml", &modules("ca/modules.pem")),
        &["modules.trust_anchors[0]", "ca/modules.pem", "No such file"],
    );
    // The management API's certificate.
    let mgmt = format!(
        "{}\n[management]\nlisten = \"127.0.0.1:7900\"\ncert = \"ca/mgmt.pem\"\n",
        valid()
    );
    refused(
        &d.write("no-mgmt-cert.toml", &mgmt),
        &["management.cert", "ca/mgmt.pem", "No such file"],
    );
}

#[test]
fn fifos_are_refused_at_once() {
    let d = Dir::new("fifo");
    let started = Instant::now();
    refused(
        &d.fifo("router.toml"),
        &["router.toml is a FIFO, not a regular file"],
    );
    d.fifo("cert.pem");
    refused(
        &d.write(
            "fifo-cert.toml",
            &format!("{ROUTER}{}", tls("cert.pem", "ca/peer-site-a.lab.key")),
        ),
        &["tls.cert", "cert.pem is a FIFO"],
    );
    // Each is refused without waiting for a writer (PROMPT bounds each run;
    // this bounds the two together, well under one blocked read).
    assert!(started.elapsed() < PROMPT, "{:?}", started.elapsed());
    let host = d.fifo("host.toml");
    let out = bounded(pronto().args(["host", "check", "--config"]).arg(&host));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("host.toml is a FIFO"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn keys_readable_by_others_warn_or_are_refused_when_asked() {
    let d = Dir::new("perms");
    let key = d.0.join("ca/peer-site-a.lab.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = router_check(&d.write("router.toml", &valid()));
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("private key readable by group and others"),
        "{err}"
    );
    assert!(err.contains("peer-site-a.lab.key"), "{err}");
    let strict = format!("{}\n[security]\nkey_permissions = \"refuse\"\n", valid());
    refused(
        &d.write("strict.toml", &strict),
        &[
            "tls.key",
            "peer-site-a.lab.key is a private key readable by group and others (mode 0644)",
            "chmod 600",
        ],
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = router_check(&d.0.join("strict.toml"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains("readable by"));
}

#[test]
fn user_errors_print_no_backtrace() {
    let missing = std::env::temp_dir().join(format!("pronto-absent-{}.toml", std::process::id()));
    let out = bounded(
        pronto()
            .args(["router", "check", "--config"])
            .arg(&missing)
            .env("RUST_BACKTRACE", "1"),
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.to_lowercase().contains("stack backtrace"), "{err}");
    assert!(!err.contains("Caused by"), "{err}");
    let line = format!("error: cannot open {}: No such file", missing.display());
    assert!(err.starts_with(&line), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}
