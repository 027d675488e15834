//! The demo HTTP server's request reader (`[http_demo]`, listening on a VIP, so
//! anyone who reaches the VIP feeds it): it reads a request head up to its blank
//! line, at most [`MAX_REQUEST_HEAD`] bytes, and the server answers once it is
//! complete, too long, or the client stops sending.
//!
//! Sans-IO: the server hands it what each read returned; the fuzz target
//! `host_http` hands it arbitrary bytes in arbitrary chunks. Each byte is looked
//! at once however the head is split (a head of one-byte segments costs no more
//! than one segment), and nothing past the bound or past the blank line is kept.

/// Longest HTTP request head the demo server reads.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// The blank line that ends a request head (RFC 9112 §2.1).
const END: &[u8; 4] = b"\r\n\r\n";

/// Where reading a request head stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadProgress {
    /// No blank line yet and under the bound: read more.
    NeedMore,
    /// The head ends with its blank line; bytes after it were not kept.
    Complete,
    /// [`MAX_REQUEST_HEAD`] bytes and no blank line among them.
    TooLong,
}

/// One request head being read.
#[derive(Debug, Clone)]
pub struct RequestHead {
    head: Vec<u8>,
    progress: HeadProgress,
}

impl Default for RequestHead {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestHead {
    /// Nothing read yet.
    pub fn new() -> Self {
        Self {
            head: Vec::with_capacity(512),
            progress: HeadProgress::NeedMore,
        }
    }

    /// Takes what one read returned. Once the head is complete or too long,
    /// further bytes are ignored and the answer stays the same.
    pub fn feed(&mut self, bytes: &[u8]) -> HeadProgress {
        if self.progress != HeadProgress::NeedMore {
            return self.progress;
        }
        // Only the last three bytes already held can start the blank line.
        let from = self.head.len().saturating_sub(END.len() - 1);
        let room = MAX_REQUEST_HEAD - self.head.len();
        self.head
            .extend_from_slice(bytes.get(..room).unwrap_or(bytes));
        if let Some(at) = self.head[from..].windows(END.len()).position(|w| w == END) {
            self.head.truncate(from + at + END.len());
            self.progress = HeadProgress::Complete;
        } else if self.head.len() == MAX_REQUEST_HEAD {
            self.progress = HeadProgress::TooLong;
        }
        self.progress
    }

    /// Where reading stands.
    pub fn progress(&self) -> HeadProgress {
        self.progress
    }

    /// The bytes kept: the whole head with its blank line once
    /// [`HeadProgress::Complete`], else everything read up to the bound.
    pub fn bytes(&self) -> &[u8] {
        &self.head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_split_anywhere_completes_at_its_blank_line() {
        let req = b"GET / HTTP/1.1\r\nHost: vip\r\n\r\nbody";
        for split in 0..req.len() {
            let mut h = RequestHead::new();
            let first = h.feed(&req[..split]);
            let second = h.feed(&req[split..]);
            let head_len = req.len() - 4;
            if split >= head_len {
                assert_eq!(first, HeadProgress::Complete, "split {split}");
            }
            assert_eq!(second, HeadProgress::Complete, "split {split}");
            assert_eq!(h.bytes(), &req[..head_len]);
        }
        let mut h = RequestHead::new();
        for b in req {
            let _ = h.feed(std::slice::from_ref(b));
        }
        assert_eq!(h.progress(), HeadProgress::Complete);
        assert_eq!(h.bytes(), &req[..req.len() - 4]);
    }

    #[test]
    fn a_head_without_blank_line_stops_at_the_bound() {
        let mut h = RequestHead::new();
        assert_eq!(h.feed(b"GET / HTTP/1.1\r\n"), HeadProgress::NeedMore);
        assert_eq!(h.feed(&[b'a'; 5000]), HeadProgress::NeedMore);
        assert_eq!(h.feed(&[b'a'; 5000]), HeadProgress::TooLong);
        assert_eq!(h.bytes().len(), MAX_REQUEST_HEAD);
        // The answer is final: a blank line after the bound changes nothing.
        assert_eq!(h.feed(b"\r\n\r\n"), HeadProgress::TooLong);
        assert_eq!(h.bytes().len(), MAX_REQUEST_HEAD);
        // A blank line ending exactly at the bound still counts.
        let mut h = RequestHead::new();
        let mut req = vec![b'a'; MAX_REQUEST_HEAD - 4];
        req.extend_from_slice(END);
        req.extend_from_slice(b"more");
        assert_eq!(h.feed(&req), HeadProgress::Complete);
        assert_eq!(h.bytes().len(), MAX_REQUEST_HEAD);
    }
}
