//! cargo xtask: setup, build, test, testbed, run, demo and bench for ntma.

fn main() {}
