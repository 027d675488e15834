//! `exec-env`: Pronto's execution environments (DESIGN.md §6).
//!
//! Owns: the signed module format (core wasm + manifest + signature with an X.509
//! chain, all in custom sections), signature and certificate checks against an
//! environment's own trust anchors (and CRLs; the operator's CA, its
//! certificates and revocation list are issued here too), the wasmtime VM (no WASI, host functions per
//! capability, memory and CPU bounds per call), and the environment manager
//! (install, list, remove, hot swap, rollback, quarantine) whose policies plug into
//! the engine through [`router_core::policy::Policy`].
//!
//! It must never: compile or run bytes whose signature and chain did not verify,
//! deserialize precompiled code it did not compile itself, let a module fault
//! become a router fault (every trap, timeout or invalid answer fails that call
//! only and is counted), or leave a window during a swap in which no policy is
//! installed.
#![warn(missing_docs)]

pub mod ca;
pub mod crl;
pub mod format;
pub mod host;
pub mod limits;
pub mod manager;
pub mod manifest;
pub mod role;
pub mod scheduler;
pub mod sign;
pub mod trust;
pub mod verified;
pub mod vm;
