//! Revocation kept in a CA directory (`pronto ca revoke`): `revoked`, the
//! record (one certificate serial per line, lowercase hex, as `pronto module
//! inspect` prints it), and `crl.pem`, a CRL over every serial of the record,
//! signed by the CA and issued anew on each call, which routers read through
//! `[modules] crls`.
//!
//! A CRL past its nextUpdate refuses every chain it covers
//! ([`crate::trust::TrustAnchors::add_crl_pem`]), so the operator re-issues it
//! (the same command with no new serial) before `days` run out. Both files are
//! replaced atomically (written beside, then renamed): a router that reads
//! them meanwhile sees the old or the new list, never none.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::ca::{CaError, CertificateAuthority};
use crate::trust::hex;

/// File name of the record in the CA directory.
pub const RECORD_FILE: &str = "revoked";
/// File name of the CRL in the CA directory.
pub const CRL_FILE: &str = "crl.pem";
/// Most serials one CA's record holds.
pub const MAX_REVOKED: usize = 10_000;
/// Longest serial accepted, bytes (RFC 5280 allows 20 octets).
pub const MAX_SERIAL_LEN: usize = 20;
/// Longest validity of a CRL, days.
pub const MAX_CRL_DAYS: u32 = 366;

/// What [`revoke`] did.
#[derive(Debug, Clone)]
pub struct Revocation {
    /// The CRL written.
    pub crl: PathBuf,
    /// Every serial it revokes (the record), in the order revoked.
    pub serials: Vec<String>,
    /// How many of them this call added.
    pub added: usize,
    /// When the CRL must have been re-issued.
    pub next_update: SystemTime,
}

/// Add `serials` (hex) to the record of the CA in `dir` and issue a CRL over
/// the whole record, valid for `days`. Serials already revoked are kept once;
/// no serial re-issues the CRL alone (to renew it before it goes stale).
pub fn revoke(dir: &Path, serials: &[String], days: u32) -> Result<Revocation, CaError> {
    if days == 0 || days > MAX_CRL_DAYS {
        return Err(CaError::Validity {
            reason: "a CRL is valid for 1 to 366 days",
        });
    }
    let ca = CertificateAuthority::load(dir)?;
    let record_path = dir.join(RECORD_FILE);
    let mut record = read_record(&record_path)?;
    let mut added = 0;
    for s in serials {
        let canonical = hex(&parse_serial(s)?);
        if !record.contains(&canonical) {
            if record.len() >= MAX_REVOKED {
                return Err(CaError::Revocation {
                    reason: format!("the record already holds {MAX_REVOKED} serials"),
                });
            }
            record.push(canonical);
            added += 1;
        }
    }
    let bytes: Vec<Vec<u8>> = record
        .iter()
        .map(|s| parse_serial(s))
        .collect::<Result<_, _>>()?;
    let refs: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
    let now = SystemTime::now();
    let next_update = now + Duration::from_secs(u64::from(days) * 86_400);
    let pem = ca.revocation_list(&refs, now, next_update)?;
    let crl = dir.join(CRL_FILE);
    let mut text = record.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    // The record first: a CRL never revokes what the record does not hold.
    replace(&record_path, text.as_bytes())?;
    replace(&crl, pem.as_bytes())?;
    tracing::info!(dir = %dir.display(), added, revoked = record.len(), "CRL issued");
    Ok(Revocation {
        crl,
        serials: record,
        added,
        next_update,
    })
}

/// A serial as hex (`:` separators and a `0x` prefix allowed) to its bytes,
/// leading zero octets dropped as a DER INTEGER's content has them (but for
/// one that keeps a set top bit positive).
pub fn parse_serial(text: &str) -> Result<Vec<u8>, CaError> {
    let bad = |why: &str| CaError::Revocation {
        reason: format!("serial {text:?}: {why}"),
    };
    let t = text.trim();
    let t = t.strip_prefix("0x").unwrap_or(t);
    let digits: String = t.chars().filter(|c| *c != ':').collect();
    if digits.is_empty() || !digits.len().is_multiple_of(2) {
        return Err(bad("needs an even number of hex digits"));
    }
    let mut bytes = Vec::with_capacity(digits.len() / 2);
    for pair in digits.as_bytes().chunks(2) {
        let s = std::str::from_utf8(pair).map_err(|_| bad("not hex"))?;
        bytes.push(u8::from_str_radix(s, 16).map_err(|_| bad("not hex"))?);
    }
    while bytes.len() > 1 && bytes[0] == 0 && bytes[1] & 0x80 == 0 {
        bytes.remove(0);
    }
    if bytes.len() > MAX_SERIAL_LEN + 1 {
        return Err(bad("longer than 20 octets"));
    }
    Ok(bytes)
}

fn read_record(path: &Path) -> Result<Vec<String>, CaError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CaError::Io {
                op: "reading",
                path: path.to_owned(),
                source,
            });
        }
    };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if out.len() >= MAX_REVOKED {
            return Err(CaError::Revocation {
                reason: format!("{} holds more than {MAX_REVOKED} serials", path.display()),
            });
        }
        let serial = parse_serial(line).map_err(|e| CaError::Revocation {
            reason: format!("{} line {}: {e}", path.display(), i + 1),
        })?;
        out.push(hex(&serial));
    }
    Ok(out)
}

/// Write `bytes` beside `path` and rename over it (mode 0644).
fn replace(path: &Path, bytes: &[u8]) -> Result<(), CaError> {
    let io = |op, source| CaError::Io {
        op,
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)
        .map_err(|e| io("creating", e))?;
    f.write_all(bytes).map_err(|e| io("writing", e))?;
    f.sync_all().map_err(|e| io("syncing", e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("renaming", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_parse_in_the_forms_tools_print_them() {
        assert_eq!(parse_serial("0a:1b").unwrap(), vec![0x0a, 0x1b]);
        assert_eq!(parse_serial("0x0A1B").unwrap(), vec![0x0a, 0x1b]);
        // Leading zero octets go, but not the one that keeps 0x80.. positive.
        assert_eq!(parse_serial("00000a").unwrap(), vec![0x0a]);
        assert_eq!(parse_serial("0080").unwrap(), vec![0x00, 0x80]);
        for bad in ["", "abc", "zz", "0x", &"ab".repeat(22)] {
            assert!(parse_serial(bad).is_err(), "{bad:?}");
        }
    }
}
