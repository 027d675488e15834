//! Zero-copy wire views (placeholder until the wire module lands).
