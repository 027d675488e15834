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
        // PRONTO_LAB_FAST_PATH=userspace|bpf|auto runs a suite on that path
        // (CI runs the lab suites on the fast path and on userspace).
        let mut fast_path: Vec<String> = match std::env::var("PRONTO_LAB_FAST_PATH") {
            Ok(p) if !args.contains(&"--fast-path") => vec!["--fast-path".into(), p],
            _ => Vec::new(),
        };
        // PRONTO_LAB_ENGINE_THREADS=N: every router with N engine threads.
        if let Ok(n) = std::env::var("PRONTO_LAB_ENGINE_THREADS")
            && !args.contains(&"--engine-threads")
        {
            fast_path.extend(["--engine-threads".into(), n]);
        }
        let out = pronto()
            .args(["lab", "up", "--dir"])
            .arg(&dir)
            .args(["--prefix", &prefix, "--timeout-secs", "60"])
            .args(args)
            .args(&fast_path)
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

/// The value at `path` in a snapshot; panics naming the path and the keys that
/// are there when it is absent (a renamed or dropped counter must fail the test,
/// not read as 0).
pub(crate) fn value<'a>(t: &'a toml::Table, path: &[&str]) -> &'a toml::Value {
    let (first, rest) = path.split_first().expect("a non-empty path");
    let mut v = t.get(*first).unwrap_or_else(|| {
        panic!(
            "snapshot has no `{first}`; keys: {:?}",
            t.keys().collect::<Vec<_>>()
        )
    });
    for (i, k) in rest.iter().enumerate() {
        v = v.get(*k).unwrap_or_else(|| {
            let keys: Vec<&String> = v.as_table().map(|t| t.keys().collect()).unwrap_or_default();
            panic!(
                "snapshot has no `{}`; keys of `{}`: {keys:?}",
                path[..=i + 1].join("."),
                path[..=i].join(".")
            )
        });
    }
    v
}

/// The integer at `path` in a snapshot (a boolean reads as 0 or 1); panics when
/// it is absent or of another type.
pub(crate) fn int(t: &toml::Table, path: &[&str]) -> i64 {
    let v = value(t, path);
    v.as_integer()
        .or_else(|| v.as_bool().map(i64::from))
        .unwrap_or_else(|| panic!("snapshot `{}` is not an integer: {v}", path.join(".")))
}

/// Poll `f` every 50 ms until it holds; panics naming `what` after `timeout`.
pub(crate) fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
