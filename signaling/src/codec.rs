//! Framing and the binary codec.
//!
//! A frame is an 8-byte header followed by a postcard body (an [`Envelope`]):
//!
//! ```text
//!  0      2        3        4                8
//!  +------+--------+--------+----------------+-----------------+
//!  | "PS" | version| flags  | body length BE | body (postcard) |
//!  +------+--------+--------+----------------+-----------------+
//! ```
//!
//! The header is checked (magic, version, zero flags, length within
//! [`MAX_FRAME_LEN`]) before a byte of the body is buffered; list lengths inside the
//! body are checked before their storage is allocated. Nothing here panics on input.

use crate::message::{Envelope, Message, take_invalid_reason};

/// Frame magic: ASCII "PS" (Pronto Signalling).
pub const MAGIC: [u8; 2] = *b"PS";
/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Header length in bytes.
pub const HEADER_LEN: usize = 8;
/// Largest frame, header included (64 KiB).
pub const MAX_FRAME_LEN: usize = 64 * 1024;
/// Largest body.
pub const MAX_BODY_LEN: usize = MAX_FRAME_LEN - HEADER_LEN;

/// Why bytes are not a valid frame, or a message cannot be framed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The frame (or the encoded message) exceeds the size limit; the stream cannot
    /// be resynchronised, close the session.
    #[error("frame of {len} bytes exceeds the {limit}-byte limit")]
    Oversize {
        /// Declared or encoded length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The input ends inside a frame (one-shot decoding only; the streaming decoder
    /// waits for more bytes instead).
    #[error("input ends inside a frame: {have} of {need} bytes")]
    Truncated {
        /// Bytes available.
        have: usize,
        /// Bytes the frame needs.
        need: usize,
    },
    /// The peer speaks another protocol version; upgrade one side.
    #[error("unknown protocol version {got} (this side speaks {VERSION})")]
    UnknownVersion {
        /// Version found.
        got: u8,
    },
    /// Not a Pronto signalling stream (wrong port or protocol).
    #[error("bad frame magic {got:02x?}")]
    BadMagic {
        /// The two bytes found.
        got: [u8; 2],
    },
    /// The frame is well delimited but its body is not a valid message.
    #[error("malformed frame body: {reason}")]
    Malformed {
        /// What was wrong.
        reason: &'static str,
    },
}

impl CodecError {
    /// True when the byte stream cannot continue after this error.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, Self::Malformed { .. } | Self::Truncated { .. })
    }
}

/// Counters per codec outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CodecStats {
    /// Frames decoded.
    pub frames: u64,
    /// [`CodecError::Oversize`] seen.
    pub oversize: u64,
    /// [`CodecError::Truncated`] seen.
    pub truncated: u64,
    /// [`CodecError::UnknownVersion`] seen.
    pub unknown_version: u64,
    /// [`CodecError::BadMagic`] seen.
    pub bad_magic: u64,
    /// [`CodecError::Malformed`] seen.
    pub malformed: u64,
}

impl CodecStats {
    /// Counts one error.
    pub fn record(&mut self, e: &CodecError) {
        let c = match e {
            CodecError::Oversize { .. } => &mut self.oversize,
            CodecError::Truncated { .. } => &mut self.truncated,
            CodecError::UnknownVersion { .. } => &mut self.unknown_version,
            CodecError::BadMagic { .. } => &mut self.bad_magic,
            CodecError::Malformed { .. } => &mut self.malformed,
        };
        *c += 1;
    }
}

/// Appends one frame carrying `env` to `out`. On error `out` is left as it was.
pub fn encode(env: &Envelope, out: &mut Vec<u8>) -> Result<(), CodecError> {
    env.message
        .validate()
        .map_err(|reason| CodecError::Malformed { reason })?;
    // postcard bounds nothing on encode; the size is checked before `out` grows.
    let body = postcard::to_allocvec(env).map_err(|_| CodecError::Malformed {
        reason: "serialization failed",
    })?;
    let too_big = || CodecError::Oversize {
        len: body.len().saturating_add(HEADER_LEN),
        limit: MAX_FRAME_LEN,
    };
    if body.len() > MAX_BODY_LEN {
        return Err(too_big());
    }
    let len = u32::try_from(body.len()).map_err(|_| too_big())?;
    out.reserve(HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(0);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body);
    Ok(())
}

/// Convenience: one frame for `message` from epoch `epoch`.
pub fn encode_message(
    epoch: crate::Epoch,
    message: &Message,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    // Cloning keeps `Envelope` owning its message; framing is off the packet path.
    encode(
        &Envelope {
            epoch,
            message: message.clone(),
        },
        out,
    )
}

/// Checks a header; returns the body length.
fn check_header(h: &[u8; HEADER_LEN]) -> Result<usize, CodecError> {
    if h[0..2] != MAGIC {
        return Err(CodecError::BadMagic { got: [h[0], h[1]] });
    }
    if h[2] != VERSION {
        return Err(CodecError::UnknownVersion { got: h[2] });
    }
    if h[3] != 0 {
        return Err(CodecError::Malformed {
            reason: "reserved flags set",
        });
    }
    let len = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > MAX_BODY_LEN {
        return Err(CodecError::Oversize {
            len: len.saturating_add(HEADER_LEN),
            limit: MAX_FRAME_LEN,
        });
    }
    Ok(len)
}

fn decode_body(body: &[u8]) -> Result<Envelope, CodecError> {
    // Clear any reason left over from an earlier failure on this thread.
    let _ = take_invalid_reason();
    let (env, rest) =
        postcard::take_from_bytes::<Envelope>(body).map_err(|e| CodecError::Malformed {
            reason: take_invalid_reason().unwrap_or(match e {
                postcard::Error::DeserializeUnexpectedEnd => "body ends early",
                postcard::Error::DeserializeBadVarint => "bad varint",
                postcard::Error::DeserializeBadBool => "bad bool",
                postcard::Error::DeserializeBadUtf8 => "bad utf-8",
                // serde reports an out-of-range variant index as a custom error.
                postcard::Error::DeserializeBadEnum | postcard::Error::SerdeDeCustom => {
                    "unknown message or enum variant"
                }
                postcard::Error::DeserializeBadOption => "bad option tag",
                _ => "undecodable body",
            }),
        })?;
    if !rest.is_empty() {
        return Err(CodecError::Malformed {
            reason: "trailing bytes after message",
        });
    }
    env.message
        .validate()
        .map_err(|reason| CodecError::Malformed { reason })?;
    Ok(env)
}

/// Decodes the first frame of `bytes`; returns it and the bytes it used.
pub fn decode(bytes: &[u8]) -> Result<(Envelope, usize), CodecError> {
    let Some(h) = bytes.first_chunk::<HEADER_LEN>() else {
        // A short prefix that is already wrong says so rather than "truncated".
        if bytes.len() >= 2 && bytes[0..2] != MAGIC {
            return Err(CodecError::BadMagic {
                got: [bytes[0], bytes[1]],
            });
        }
        return Err(CodecError::Truncated {
            have: bytes.len(),
            need: HEADER_LEN,
        });
    };
    let len = check_header(h)?;
    let need = HEADER_LEN + len;
    let Some(body) = bytes.get(HEADER_LEN..need) else {
        return Err(CodecError::Truncated {
            have: bytes.len(),
            need,
        });
    };
    Ok((decode_body(body)?, need))
}

/// Streaming decoder: feed it whatever the socket gave, take out whole messages.
///
/// It buffers at most one frame ([`MAX_FRAME_LEN`] bytes); [`Decoder::feed`] takes
/// only what fits and says how much, so a caller loops `feed` / `next_message`.
/// After a fatal error it discards all further input.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    start: usize,
    poisoned: bool,
    stats: CodecStats,
}

impl Decoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Buffers a prefix of `bytes`; returns how many were taken (all of them once
    /// the decoder is poisoned, which discards them).
    pub fn feed(&mut self, bytes: &[u8]) -> usize {
        if self.poisoned {
            return bytes.len();
        }
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let room = MAX_FRAME_LEN.saturating_sub(self.buf.len());
        let take = room.min(bytes.len());
        self.buf.extend_from_slice(&bytes[..take]);
        take
    }

    /// The next whole message, `Ok(None)` if more bytes are needed.
    ///
    /// A [`CodecError::Malformed`] body is skipped (the framing is intact); any other
    /// error poisons the decoder.
    pub fn next_message(&mut self) -> Result<Option<Envelope>, CodecError> {
        if self.poisoned {
            return Ok(None);
        }
        let avail = &self.buf[self.start..];
        let Some(h) = avail.first_chunk::<HEADER_LEN>() else {
            // Reject a wrong magic as soon as two bytes are in.
            if avail.len() >= 2 && avail[0..2] != MAGIC {
                return Err(self.fail(CodecError::BadMagic {
                    got: [avail[0], avail[1]],
                }));
            }
            return Ok(None);
        };
        let len = match check_header(h) {
            Ok(len) => len,
            Err(e) => {
                // Without a trusted header the frame boundary is unknown.
                self.poisoned = true;
                return Err(self.fail(e));
            }
        };
        let need = HEADER_LEN + len;
        let Some(body) = avail.get(HEADER_LEN..need) else {
            return Ok(None);
        };
        let res = decode_body(body);
        self.start += need;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        match res {
            Ok(env) => {
                self.stats.frames += 1;
                Ok(Some(env))
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    fn fail(&mut self, e: CodecError) -> CodecError {
        self.stats.record(&e);
        if e.is_fatal() || self.poisoned {
            self.poisoned = true;
            self.buf = Vec::new();
            self.start = 0;
        }
        e
    }

    /// Bytes buffered and not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// True after a fatal error.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Counters so far.
    pub fn stats(&self) -> &CodecStats {
        &self.stats
    }
}
