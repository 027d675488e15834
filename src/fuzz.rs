//! Entry points for the fuzz targets (`fuzz/fuzz_targets/`): the parsers of
//! untrusted bytes that live in this crate rather than in a library crate. Each
//! is the code the daemon runs, not a copy; nothing else should use them.

pub use crate::host::http::{HeadProgress, MAX_REQUEST_HEAD, RequestHead};

