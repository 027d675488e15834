//! Running code inside a named network namespace (`ip netns add NAME`).
//!
//! `setns(2)` with `CLONE_NEWNET` moves only the calling thread, so [`in_netns`]
//! runs the closure on a fresh scoped thread: sockets, TUN devices and netlink
//! connections it opens belong to that namespace for their whole life, wherever
//! they are used afterwards, and threads it spawns start there too.

use nix::sched::{CloneFlags, setns};
use std::fs::File;
use std::io;
use std::path::PathBuf;

/// Where iproute2 keeps named namespaces.
pub const NETNS_RUN_DIR: &str = "/var/run/netns";

/// Errors entering a namespace.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetnsError {
    /// The namespace file could not be opened (does `ip netns list` show it?).
    #[error("cannot open network namespace {path}: {source}")]
    Open {
        /// The file tried.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `setns` refused (needs CAP_SYS_ADMIN).
    #[error("setns({path}) failed: {source}")]
    Setns {
        /// The namespace file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The closure panicked.
    #[error("the task run in network namespace {name} panicked")]
    Panicked {
        /// The namespace.
        name: String,
    },
}

/// The file of namespace `name`: a path as given if it contains '/', else under
/// [`NETNS_RUN_DIR`].
pub fn netns_path(name: &str) -> PathBuf {
    if name.contains('/') {
        PathBuf::from(name)
    } else {
        PathBuf::from(NETNS_RUN_DIR).join(name)
    }
}

/// Run `f` on a thread inside network namespace `name` and return its result.
pub fn in_netns<R: Send>(name: &str, f: impl FnOnce() -> R + Send) -> Result<R, NetnsError> {
    let path = netns_path(name);
    let file = File::open(&path).map_err(|source| NetnsError::Open {
        path: path.clone(),
        source,
    })?;
    std::thread::scope(|s| {
        let t = s.spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| NetnsError::Setns {
                path,
                source: io::Error::from(e),
            })?;
            Ok(f())
        });
        t.join().map_err(|_| NetnsError::Panicked {
            name: name.to_owned(),
        })?
    })
}
