//! Authentication of server flow advertisements (DESIGN.md §5): HMAC-SHA256 keyed
//! within the trust domain, a timestamp window and a bounded replay cache.
//!
//! Host agents sign with [`AdvertAuth::sign`] / [`AdvertAuth::echo_request`];
//! routers check with [`AdvertAuth::verify`] before anything moves. Both read
//! the same key file ([`parse_advert_keys`]): one `id:hex-secret` per line.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ring::hmac;
use router_core::wire::flowad::{
    AdvertError, AdvertFields, FlowAdvert, MAC_LEN, build_echo_request, emit_advert,
};
use tracing::debug;

/// Shortest secret accepted, in bytes (128 bits).
pub const MIN_SECRET_LEN: usize = 16;
/// Longest secret accepted, in bytes (one SHA-256 block).
pub const MAX_SECRET_LEN: usize = 64;
/// Most keys one file or one [`AdvertAuth`] holds (rollover needs two or three).
pub const MAX_ADVERT_KEYS: usize = 64;
/// Largest key file read, in bytes.
pub const MAX_KEY_FILE_LEN: usize = 64 * 1024;

/// One trust-domain key: its id (carried in each advertisement) and its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct AdvertKey {
    /// The key id.
    pub id: u32,
    secret: Vec<u8>,
}

impl fmt::Debug for AdvertKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        f.debug_struct("AdvertKey")
            .field("id", &self.id)
            .field("secret", &format_args!("<{} bytes>", self.secret.len()))
            .finish()
    }
}

impl AdvertKey {
    /// A key with `secret` of [`MIN_SECRET_LEN`]..=[`MAX_SECRET_LEN`] bytes.
    pub fn new(id: u32, secret: &[u8]) -> Result<Self, KeyFileError> {
        check_secret_len(0, secret.len())?;
        Ok(Self {
            id,
            secret: secret.to_vec(),
        })
    }
}

fn check_secret_len(line: usize, len: usize) -> Result<(), KeyFileError> {
    if len < MIN_SECRET_LEN {
        return Err(KeyFileError::ShortSecret {
            line,
            len,
            min: MIN_SECRET_LEN,
        });
    }
    if len > MAX_SECRET_LEN {
        return Err(KeyFileError::LongSecret {
            line,
            len,
            max: MAX_SECRET_LEN,
        });
    }
    Ok(())
}

/// Why a key file (or a key) was refused. Line numbers are 1-based (0: not from a
/// file).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The file could not be read.
    #[error("cannot read advertisement key file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The path is a FIFO, socket, device or directory (a FIFO would block the
    /// read until someone writes to it).
    #[error("advertisement key file {} is not a regular file", path.display())]
    NotRegular {
        /// The file.
        path: PathBuf,
    },
    /// The file is larger than [`MAX_KEY_FILE_LEN`].
    #[error("key file is {len} bytes; the limit is {limit}")]
    TooLarge {
        /// Its size.
        len: u64,
        /// The limit.
        limit: usize,
    },
    /// A line is not `id:hex-secret`.
    #[error(
        "line {line}: {reason} (expected `id:hex-secret`, e.g. `1:00112233445566778899aabbccddeeff`)"
    )]
    Syntax {
        /// The line.
        line: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// The id is not a decimal u32.
    #[error("line {line}: key id is not a decimal number 0..=4294967295")]
    BadId {
        /// The line.
        line: usize,
    },
    /// The secret is not hex (an even number of 0-9a-fA-F).
    #[error("line {line}: secret is not an even number of hex digits")]
    BadHex {
        /// The line.
        line: usize,
    },
    /// The secret is too short to be safe.
    #[error("line {line}: secret is {len} bytes; use at least {min} (e.g. `openssl rand -hex 32`)")]
    ShortSecret {
        /// The line.
        line: usize,
        /// Its length.
        len: usize,
        /// The minimum.
        min: usize,
    },
    /// The secret is longer than the limit.
    #[error("line {line}: secret is {len} bytes; at most {max}")]
    LongSecret {
        /// The line.
        line: usize,
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// The same id appears twice.
    #[error("line {line}: key id {id} already defined")]
    DuplicateId {
        /// The line.
        line: usize,
        /// The id.
        id: u32,
    },
    /// More keys than [`MAX_ADVERT_KEYS`].
    #[error("more than {limit} keys")]
    TooManyKeys {
        /// The limit.
        limit: usize,
    },
    /// No key at all.
    #[error("no key in the key file")]
    Empty,
}

/// Parses a key file: one `id:hex-secret` per line, `#` starts a comment (a whole
/// line or the rest of one), blank lines ignored; ids are unique decimal u32.
pub fn parse_advert_keys(text: &str) -> Result<Vec<AdvertKey>, KeyFileError> {
    if text.len() > MAX_KEY_FILE_LEN {
        return Err(KeyFileError::TooLarge {
            len: text.len() as u64,
            limit: MAX_KEY_FILE_LEN,
        });
    }
    let mut keys: Vec<AdvertKey> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let body = raw.split('#').next().unwrap_or("").trim();
        if body.is_empty() {
            continue;
        }
        let Some((id, hex)) = body.split_once(':') else {
            return Err(KeyFileError::Syntax {
                line,
                reason: "no ':' between id and secret",
            });
        };
        let (id, hex) = (id.trim(), hex.trim());
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(KeyFileError::BadId { line });
        }
        let id: u32 = id.parse().map_err(|_| KeyFileError::BadId { line })?;
        let secret = decode_hex(hex).ok_or(KeyFileError::BadHex { line })?;
        check_secret_len(line, secret.len())?;
        if keys.iter().any(|k| k.id == id) {
            return Err(KeyFileError::DuplicateId { line, id });
        }
        if keys.len() == MAX_ADVERT_KEYS {
            return Err(KeyFileError::TooManyKeys {
                limit: MAX_ADVERT_KEYS,
            });
        }
        keys.push(AdvertKey { id, secret });
    }
    if keys.is_empty() {
        return Err(KeyFileError::Empty);
    }
    Ok(keys)
}

/// Reads and parses a key file (a regular file of at most [`MAX_KEY_FILE_LEN`]
/// bytes).
pub fn read_advert_keys(path: &Path) -> Result<Vec<AdvertKey>, KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(KeyFileError::NotRegular {
            path: path.to_owned(),
        });
    }
    let len = meta.len();
    if len > MAX_KEY_FILE_LEN as u64 {
        return Err(KeyFileError::TooLarge {
            len,
            limit: MAX_KEY_FILE_LEN,
        });
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    parse_advert_keys(&text)
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    // The file is bounded (MAX_KEY_FILE_LEN), so decoding a long secret before its
    // length check allocates little.
    let b = s.as_bytes();
    if b.is_empty() || !b.len().is_multiple_of(2) {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    b.chunks_exact(2)
        .map(|p| Some(nib(p[0])? << 4 | nib(p[1])?))
        .collect()
}

/// Timing and bounds of advertisement checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdvertAuthConfig {
    /// Largest accepted difference between the advertisement's timestamp and our
    /// wall clock, either way.
    pub max_skew: Duration,
    /// Most (key id, nonce) pairs remembered against replay (0 turns replay
    /// protection off; when full, the entry expiring soonest is dropped and
    /// counted).
    pub replay_capacity: usize,
}

impl Default for AdvertAuthConfig {
    fn default() -> Self {
        Self {
            max_skew: Duration::from_secs(30),
            replay_capacity: 65_536,
        }
    }
}

/// Why an advertisement was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdvertReject {
    /// No key with this id is configured.
    #[error("unknown advertisement key id {key_id}")]
    UnknownKey {
        /// The id carried.
        key_id: u32,
    },
    /// The MAC does not match (forged or corrupted).
    #[error("advertisement MAC does not verify")]
    BadMac,
    /// Older than the allowed skew.
    #[error("advertisement is {age_ms} ms old")]
    Stale {
        /// How old.
        age_ms: u64,
    },
    /// Further in the future than the allowed skew.
    #[error("advertisement is {ahead_ms} ms in the future")]
    Future {
        /// How far ahead.
        ahead_ms: u64,
    },
    /// Its (key id, nonce) was already accepted within the window.
    #[error("advertisement replayed")]
    Replay,
}

/// Why an advertisement could not be signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// No key with this id is configured.
    #[error("no advertisement key with id {key_id}")]
    UnknownKey {
        /// The id asked for.
        key_id: u32,
    },
    /// The fields or buffer do not make an advertisement.
    #[error(transparent)]
    Wire(#[from] AdvertError),
}

/// Counters of advertisement checks; one per reject reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdvertAuthStats {
    /// Advertisements that passed every check.
    pub verified: u64,
    /// Refused: unknown key id.
    pub unknown_key: u64,
    /// Refused: bad MAC.
    pub bad_mac: u64,
    /// Refused: too old.
    pub stale: u64,
    /// Refused: too far in the future.
    pub future: u64,
    /// Refused: replayed nonce.
    pub replay: u64,
    /// The replay cache was full: the entry expiring soonest was dropped.
    pub replay_evictions: u64,
}

/// HMAC-SHA256 keys by id, a timestamp window and a bounded replay cache.
pub struct AdvertAuth {
    cfg: AdvertAuthConfig,
    keys: BTreeMap<u32, hmac::Key>,
    seen: HashSet<(u32, u64)>,
    /// (expiry unix ms, key id, nonce), soonest first.
    expiry: BTreeSet<(u64, u32, u64)>,
    stats: AdvertAuthStats,
}

impl fmt::Debug for AdvertAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdvertAuth")
            .field("cfg", &self.cfg)
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .field("replay_entries", &self.seen.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl AdvertAuth {
    /// Checks and signs with `keys` (at most [`MAX_ADVERT_KEYS`]; later duplicates
    /// of an id replace earlier ones).
    pub fn new(keys: Vec<AdvertKey>, cfg: AdvertAuthConfig) -> Self {
        let mut a = Self {
            cfg,
            keys: BTreeMap::new(),
            seen: HashSet::new(),
            expiry: BTreeSet::new(),
            stats: AdvertAuthStats::default(),
        };
        a.set_keys(keys);
        a
    }

    /// Replaces the keys (rollover); the replay cache is kept.
    pub fn set_keys(&mut self, keys: Vec<AdvertKey>) {
        self.keys = keys
            .into_iter()
            .take(MAX_ADVERT_KEYS)
            .map(|k| (k.id, hmac::Key::new(hmac::HMAC_SHA256, &k.secret)))
            .collect();
    }

    /// The configured key ids.
    pub fn key_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.keys.keys().copied()
    }

    /// The MAC of `signed` under key `key_id`, if configured.
    pub fn mac(&self, key_id: u32, signed: &[u8]) -> Option<[u8; MAC_LEN]> {
        let key = self.keys.get(&key_id)?;
        let tag = hmac::sign(key, signed);
        <[u8; MAC_LEN]>::try_from(tag.as_ref()).ok()
    }

    fn signer(&self, key_id: u32) -> Result<impl FnOnce(&[u8]) -> [u8; MAC_LEN] + '_, SignError> {
        let key = self
            .keys
            .get(&key_id)
            .ok_or(SignError::UnknownKey { key_id })?;
        Ok(move |b: &[u8]| {
            let tag = hmac::sign(key, b);
            let mut out = [0u8; MAC_LEN];
            // SHA-256 tags are exactly MAC_LEN bytes.
            out.copy_from_slice(&tag.as_ref()[..MAC_LEN]);
            out
        })
    }

    /// Writes the signed advertisement for `fields` (key `fields.key_id`) into
    /// `out`; returns its length.
    pub fn sign(&self, fields: &AdvertFields, out: &mut [u8]) -> Result<usize, SignError> {
        let mac = self.signer(fields.key_id)?;
        Ok(emit_advert(fields, out, mac)?)
    }

    /// Writes a complete signed echo request (VIP to client) into `buf`; returns
    /// its length.
    pub fn echo_request(
        &self,
        buf: &mut [u8],
        fields: &AdvertFields,
        ident: u16,
        seq: u16,
    ) -> Result<usize, SignError> {
        let mac = self.signer(fields.key_id)?;
        Ok(build_echo_request(buf, fields, ident, seq, mac)?)
    }

    /// Checks `adv` at wall-clock `now_unix_ms`: known key, MAC (constant time),
    /// timestamp within the skew, nonce not seen. On success the nonce is
    /// remembered and the fields returned.
    pub fn verify<T: AsRef<[u8]>>(
        &mut self,
        adv: &FlowAdvert<T>,
        now_unix_ms: u64,
    ) -> Result<AdvertFields, AdvertReject> {
        let r = self.check(adv, now_unix_ms);
        match &r {
            Ok(_) => self.stats.verified += 1,
            Err(e) => {
                match e {
                    AdvertReject::UnknownKey { .. } => self.stats.unknown_key += 1,
                    AdvertReject::BadMac => self.stats.bad_mac += 1,
                    AdvertReject::Stale { .. } => self.stats.stale += 1,
                    AdvertReject::Future { .. } => self.stats.future += 1,
                    AdvertReject::Replay => self.stats.replay += 1,
                }
                debug!(reason = %e, key_id = adv.key_id(), "flow advertisement refused");
            }
        }
        r
    }

    fn check<T: AsRef<[u8]>>(
        &mut self,
        adv: &FlowAdvert<T>,
        now: u64,
    ) -> Result<AdvertFields, AdvertReject> {
        let key_id = adv.key_id();
        let key = self
            .keys
            .get(&key_id)
            .ok_or(AdvertReject::UnknownKey { key_id })?;
        hmac::verify(key, adv.signed_bytes(), adv.mac()).map_err(|_| AdvertReject::BadMac)?;
        let skew = u64::try_from(self.cfg.max_skew.as_millis()).unwrap_or(u64::MAX);
        let ts = adv.timestamp_ms();
        if ts < now && now - ts > skew {
            return Err(AdvertReject::Stale { age_ms: now - ts });
        }
        if ts > now && ts - now > skew {
            return Err(AdvertReject::Future { ahead_ms: ts - now });
        }
        self.expire(now);
        let id = (key_id, adv.nonce());
        if self.seen.contains(&id) {
            return Err(AdvertReject::Replay);
        }
        if self.cfg.replay_capacity == 0 {
            return Ok(adv.fields());
        }
        if self.seen.len() >= self.cfg.replay_capacity
            && let Some(first) = self.expiry.pop_first()
        {
            // Full: the soonest-expiring entry is the one whose replay window is
            // nearly closed anyway.
            self.seen.remove(&(first.1, first.2));
            self.stats.replay_evictions += 1;
        }
        self.seen.insert(id);
        self.expiry.insert((ts.saturating_add(skew), id.0, id.1));
        Ok(adv.fields())
    }

    /// Forgets nonces whose timestamps are now outside the window (they would be
    /// refused as stale anyway).
    fn expire(&mut self, now: u64) {
        while let Some(&first) = self.expiry.first() {
            if first.0 >= now {
                break;
            }
            self.expiry.pop_first();
            self.seen.remove(&(first.1, first.2));
        }
    }

    /// Nonces currently remembered.
    pub fn replay_entries(&self) -> usize {
        self.seen.len()
    }

    /// Counters.
    pub fn stats(&self) -> &AdvertAuthStats {
        &self.stats
    }
}
