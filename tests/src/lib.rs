//! Helpers for core-meter's end-to-end tests: the fleet generator and the comparison of replay output with expected results.

pub mod containerd;
pub mod expect;
pub mod fleet;
pub mod postgres;
pub mod procs;
