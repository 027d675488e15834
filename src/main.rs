//! `pronto`: the router daemon and operator CLI.
fn main() {}
