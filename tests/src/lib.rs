//! `pronto-tests`: the cross-crate suites (hierarchy, recovery, adversarial,
//! hot swap, scale) over the simulator, re-exported here from `pronto-sim`.
//! It owns no logic of its own: the suites are in `tests/tests/`.
#![warn(missing_docs)]

pub use pronto_sim::{demo, sim};
