//! Caller-owned packet buffers with headroom, so tunnels prepend and strip headers
//! in place (STYLE.md §3: no allocation, no copy of the payload per packet).

/// Headroom the shells reserve in front of every received packet: enough for an
/// IPv6 outer header plus an ICMPv6 error header with room to spare.
pub const HEADROOM: usize = 64;

/// Errors of packet buffer manipulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BufError {
    /// Not enough headroom to prepend `need` bytes.
    #[error("need {need} bytes of headroom, have {have}")]
    NoHeadroom {
        /// Bytes requested.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// The requested range lies outside the buffer.
    #[error("range {start}..{end} outside a buffer of {len} bytes")]
    OutOfBounds {
        /// Start of the range.
        start: usize,
        /// End of the range.
        end: usize,
        /// Buffer length.
        len: usize,
    },
}

/// A packet occupying `buf[start..end]`, with headroom before `start`.
#[derive(Debug)]
pub struct PacketBuf<'a> {
    buf: &'a mut [u8],
    start: usize,
    end: usize,
}

impl<'a> PacketBuf<'a> {
    /// Wrap `len` bytes of packet stored at `buf[start..start + len]`.
    pub fn new(buf: &'a mut [u8], start: usize, len: usize) -> Result<Self, BufError> {
        let end = start.checked_add(len).ok_or(BufError::OutOfBounds {
            start,
            end: usize::MAX,
            len: buf.len(),
        })?;
        if end > buf.len() {
            return Err(BufError::OutOfBounds {
                start,
                end,
                len: buf.len(),
            });
        }
        Ok(Self { buf, start, end })
    }

    /// The packet bytes.
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// The packet bytes, mutable.
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.end]
    }

    /// Packet length in bytes.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Whether the packet is empty.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Offset of the packet's first byte in the underlying buffer.
    pub fn start(&self) -> usize {
        self.start
    }

    /// Bytes available in front of the packet.
    pub fn headroom(&self) -> usize {
        self.start
    }

    /// Grow the packet at the front by `n` bytes and return the new front bytes.
    pub fn prepend(&mut self, n: usize) -> Result<&mut [u8], BufError> {
        if n > self.start {
            return Err(BufError::NoHeadroom {
                need: n,
                have: self.start,
            });
        }
        self.start -= n;
        Ok(&mut self.buf[self.start..self.start + n])
    }

    /// Remove `n` bytes from the front (e.g. a terminated tunnel header).
    pub fn strip_front(&mut self, n: usize) -> Result<(), BufError> {
        if n > self.len() {
            return Err(BufError::OutOfBounds {
                start: self.start,
                end: self.start.saturating_add(n),
                len: self.end,
            });
        }
        self.start += n;
        Ok(())
    }

    /// Shorten the packet to `len` bytes (e.g. drop link-layer padding).
    pub fn truncate(&mut self, len: usize) {
        if len < self.len() {
            self.end = self.start + len;
        }
    }

    /// Re-frame the packet as `buf[start..start + len]` of the same storage.
    pub fn reframe(&mut self, start: usize, len: usize) -> Result<(), BufError> {
        let end = start
            .checked_add(len)
            .filter(|&e| e <= self.buf.len())
            .ok_or(BufError::OutOfBounds {
                start,
                end: start.saturating_add(len),
                len: self.buf.len(),
            })?;
        self.start = start;
        self.end = end;
        Ok(())
    }

    /// The whole underlying storage, for writers that build a reply in place.
    pub fn storage_mut(&mut self) -> &mut [u8] {
        self.buf
    }
}
