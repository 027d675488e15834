//! Reading the files a configuration names: the configuration itself,
//! certificates, private keys, trust anchors, module files, advertisement keys.
//!
//! One way in for all of them ([`read_file`], [`read_private`]): the file is
//! opened with `O_NONBLOCK`, so a FIFO (or a device) never blocks the daemon or
//! `check`; `fstat` on the open descriptor then refuses anything that is not a
//! regular file; the read is bounded. Private keys are also checked for
//! group/other read permission: a warning by default, a refusal with
//! `[security] key_permissions = "refuse"`.

use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Deserialize;
use tracing::warn;

/// Permission bits that let someone other than the owner read a file.
const READABLE_BY_OTHERS: u32 = 0o044;

/// Why a file named by a configuration was not read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum FileError {
    /// It could not be opened (absent, no permission, ...).
    #[error("cannot open {}: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// It is a FIFO, socket, device or directory.
    #[error("{} is a {kind}, not a regular file; name the file itself", path.display())]
    NotRegular {
        /// The file.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// It is larger than the bound for its kind.
    #[error("{} is larger than {limit} bytes", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The bound.
        limit: u64,
    },
    /// Reading failed after the open.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A private key others may read, refused by `[security] key_permissions`.
    #[error(
        "{} is a private key readable by {} (mode {mode:04o}), refused by [security] \
         key_permissions = \"refuse\"; chmod 600 it",
        path.display(),
        readers(*mode)
    )]
    KeyReadable {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// `[security] key_permissions`: what to do with a private key file that its
/// group or others may read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum KeyPermissions {
    /// Log a warning (once per file) and use it.
    #[default]
    Warn,
    /// Refuse to start (and `check` fails).
    Refuse,
}

fn readers(mode: u32) -> &'static str {
    match (mode & 0o040 != 0, mode & 0o004 != 0) {
        (true, true) => "group and others",
        (true, false) => "its group",
        _ => "others",
    }
}

fn kind_of(t: std::fs::FileType) -> &'static str {
    if t.is_fifo() {
        "FIFO"
    } else if t.is_socket() {
        "socket"
    } else if t.is_dir() {
        "directory"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else {
        "special file"
    }
}

/// Opens `path` without blocking and checks it is a regular file.
fn open_regular(path: &Path) -> Result<(std::fs::File, std::fs::Metadata), FileError> {
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path);
    let file = match opened {
        Ok(f) => f,
        Err(source) => {
            // A socket cannot be opened at all (ENXIO): say what it is.
            if let Ok(m) = std::fs::metadata(path)
                && !m.is_file()
            {
                return Err(FileError::NotRegular {
                    path: path.to_owned(),
                    kind: kind_of(m.file_type()),
                });
            }
            return Err(FileError::Open {
                path: path.to_owned(),
                source,
            });
        }
    };
    // fstat of what was opened, not a second lookup of the name.
    let meta = file.metadata().map_err(|source| FileError::Read {
        path: path.to_owned(),
        source,
    })?;
    if !meta.is_file() {
        return Err(FileError::NotRegular {
            path: path.to_owned(),
            kind: kind_of(meta.file_type()),
        });
    }
    Ok((file, meta))
}

fn read_open(path: &Path, file: std::fs::File, limit: u64) -> Result<Vec<u8>, FileError> {
    let mut buf = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|source| FileError::Read {
            path: path.to_owned(),
            source,
        })?;
    if buf.len() as u64 > limit {
        return Err(FileError::TooLarge {
            path: path.to_owned(),
            limit,
        });
    }
    Ok(buf)
}

/// The contents of the regular file `path`, at most `limit` bytes.
pub(crate) fn read_file(path: &Path, limit: u64) -> Result<Vec<u8>, FileError> {
    let (file, _) = open_regular(path)?;
    read_open(path, file, limit)
}

/// The contents of the private key (or other secret) file `path`, at most
/// `limit` bytes; a file its group or others may read is refused or warned of,
/// as `policy` says.
pub(crate) fn read_private(
    path: &Path,
    limit: u64,
    policy: KeyPermissions,
) -> Result<Vec<u8>, FileError> {
    let (file, meta) = open_regular(path)?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & READABLE_BY_OTHERS != 0 {
        match policy {
            KeyPermissions::Refuse => {
                return Err(FileError::KeyReadable {
                    path: path.to_owned(),
                    mode,
                });
            }
            KeyPermissions::Warn => warn_once(path, mode),
        }
    }
    read_open(path, file, limit)
}

/// Paths already warned of: the daemon reads its key more than once at start
/// (signalling, recovery sessions, management).
static WARNED: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

fn warn_once(path: &Path, mode: u32) {
    let first = WARNED
        .lock()
        .map_or(true, |mut w| w.insert(path.to_owned()));
    if first {
        warn!(
            file = %path.display(),
            mode = format!("{mode:04o}"),
            "private key readable by {}; chmod 600 it (set [security] key_permissions = \"refuse\" to refuse such keys)",
            readers(mode)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pronto-files-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn regular_files_are_read_within_their_bound() {
        let d = dir("regular");
        let p = d.join("a.pem");
        std::fs::write(&p, b"hello").unwrap();
        assert_eq!(read_file(&p, 5).unwrap(), b"hello");
        let e = read_file(&p, 4).unwrap_err();
        assert!(matches!(e, FileError::TooLarge { limit: 4, .. }), "{e}");
        let e = read_file(&d.join("absent.pem"), 5).unwrap_err();
        assert!(matches!(e, FileError::Open { .. }), "{e}");
        assert!(e.to_string().contains("absent.pem"), "{e}");
        let e = read_file(&d, 5).unwrap_err();
        assert!(
            matches!(
                e,
                FileError::NotRegular {
                    kind: "directory",
                    ..
                }
            ),
            "{e}"
        );
        let e = read_file(Path::new("/dev/zero"), 5).unwrap_err();
        assert!(
            matches!(
                e,
                FileError::NotRegular {
                    kind: "character device",
                    ..
                }
            ),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_fifo_is_refused_at_once() {
        let d = dir("fifo");
        let p = d.join("cert.pem");
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let t = Instant::now();
        let e = read_file(&p, 1 << 20).unwrap_err();
        assert!(
            matches!(e, FileError::NotRegular { kind: "FIFO", .. }),
            "{e}"
        );
        let e = read_private(&p, 1 << 20, KeyPermissions::Refuse).unwrap_err();
        assert!(
            matches!(e, FileError::NotRegular { kind: "FIFO", .. }),
            "{e}"
        );
        assert!(e.to_string().contains("cert.pem is a FIFO"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(2));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn keys_readable_by_others_are_refused_when_asked_and_warned_of_otherwise() {
        let d = dir("keys");
        let p = d.join("peer.key");
        std::fs::write(&p, b"secret").unwrap();
        chmod(&p, 0o600);
        assert_eq!(
            read_private(&p, 64, KeyPermissions::Refuse).unwrap(),
            b"secret"
        );
        for (mode, who) in [
            (0o644, "group and others"),
            (0o640, "its group"),
            (0o604, "others"),
        ] {
            chmod(&p, mode);
            let e = read_private(&p, 64, KeyPermissions::Refuse).unwrap_err();
            assert!(matches!(e, FileError::KeyReadable { .. }), "{e}");
            let text = e.to_string();
            assert!(text.contains(&format!("readable by {who}")), "{text}");
            assert!(text.contains(&format!("{mode:04o}")), "{text}");
            assert_eq!(
                read_private(&p, 64, KeyPermissions::Warn).unwrap(),
                b"secret"
            );
        }
        // Writable but not readable by others is not a disclosure.
        chmod(&p, 0o622);
        assert!(read_private(&p, 64, KeyPermissions::Refuse).is_ok());
        let _ = std::fs::remove_dir_all(&d);
    }
}
