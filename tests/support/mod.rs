//! What the root (namespace) tests share: the root check, the `pronto` binary, a
//! lab that is brought up and torn down around a test, and snapshot readers.

#![allow(dead_code, reason = "each test crate uses its own part of the helpers")]

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// One lab at a time: two cores, up to eleven daemons each.
static LABS: Mutex<()> = Mutex::new(());
static SEQ: AtomicUsize = AtomicUsize::new(0);

/// Whether the test may run; without root it is skipped, except under CI=true,
/// where CI runs as root and a skip is a failure.
pub(crate) fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    let msg = format!("SKIP {test}: needs root (network namespaces, TUN, raw sockets)");
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{msg}; CI=true runs as root, so a skip is a failure"
    );
    eprintln!("{msg}");
    false
}

/// The `pronto` binary under test.
pub(crate) fn pronto() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pronto"))
}

/// A running `pronto lab`, torn down on drop (also when the test fails).
pub(crate) struct Lab {
    /// The lab's directory (configs, stats, logs).
    pub(crate) dir: PathBuf,
    /// Namespace prefix.
    pub(crate) prefix: String,
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl Lab {
    /// `pronto lab up` with `args`; `tag` starts the namespace prefix, `rust_log`
    /// sets the daemons' log filter.
    pub(crate) fn up(tag: &str, args: &[&str], rust_log: &str) -> Self {
        let serial = LABS.lock().unwrap_or_else(|e| e.into_inner());
        let prefix = format!(
            "{tag}{}{}",
            std::process::id() % 10_000,
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(format!("pronto-lab-{prefix}"));
        let lab = Self {
            dir: dir.clone(),
            prefix: prefix.clone(),
            _serial: serial,
        };
        let out = pronto()
            .args(["lab", "up", "--dir"])
            .arg(&dir)
            .args(["--prefix", &prefix, "--timeout-secs", "60"])
            .args(args)
            .env("RUST_LOG", rust_log)
            .output()
            .expect("run pronto lab up");
        assert!(
            out.status.success(),
            "pronto lab up failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
        lab
    }

    /// The namespace of a lab node.
    pub(crate) fn ns(&self, node: &str) -> String {
        format!("{}-{node}", self.prefix)
    }

    /// A daemon's counters snapshot (rewritten every 100 ms).
    pub(crate) fn stats(&self, node: &str) -> toml::Table {
        let p = self.dir.join("stats").join(format!("{node}.toml"));
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        text.parse()
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
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

/// An integer at `path` in a snapshot (0 when absent).
pub(crate) fn int(t: &toml::Table, path: &[&str]) -> i64 {
    let mut v: Option<&toml::Value> = None;
    for (i, k) in path.iter().enumerate() {
        v = if i == 0 {
            t.get(*k)
        } else {
            v.and_then(|x| x.get(*k))
        };
    }
    v.and_then(toml::Value::as_integer).unwrap_or(0)
}

/// Poll `f` every 50 ms until it holds; panics naming `what` after `timeout`.
pub(crate) fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
