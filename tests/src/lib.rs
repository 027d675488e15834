//! `pronto-tests`: cross-crate integration of Pronto.
//!
//! Owns the deterministic in-process simulator of an SLR hierarchy ([`sim`]) that
//! the integration tests in `tests/` drive. It must never open a socket, read the
//! wall clock inside a simulation, or use randomness other than the seeded
//! generator, so that a seed always gives the same run. [`demo`] is the scenario
//! `pronto demo` prints.
#![warn(missing_docs)]

pub mod demo;
pub mod sim;
