//! `router-core`: Pronto's service-independent forwarding engine.
//!
//! It owns the wire formats (zero-copy views), the classifier and virtual-subnet
//! table, the flow table of pinned flows, tunnels, the per-packet [`engine`], and the
//! API boundary ([`api`]) that execution environments program.
//!
//! It must never know a service: which server is "best" arrives through the
//! [`policy::Policy`] trait. The core is sans-IO: it never reads a clock, a socket or
//! netlink; bytes and a timestamp go in, verdicts come out. The established-flow path
//! never allocates and never makes a syscall.

pub mod classify;
pub mod policy;
pub mod wire;
