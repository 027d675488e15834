//! `pronto-sim`: the deterministic in-process simulator of an SLR hierarchy.
//!
//! Owns the simulated links, sessions, clients and hosts around the real router
//! node (`signaling::node::Node`, the type the daemon runs), so a scenario test
//! exercises the daemon's code ([`sim`]); [`demo`] is the scenario `pronto demo`
//! prints. It must never open a socket, read the wall clock inside a simulation,
//! or use randomness other than the seeded generator, so that a seed always gives
//! the same run. A package of its own so the binary can run the demo without
//! linking the test suites.
#![warn(missing_docs)]

pub mod demo;
pub mod sim;
