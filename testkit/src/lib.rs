//! The test kit every suite and bench shares, whatever crate it tests: it
//! depends on no crate of the workspace, so the aggregator's, the agent's
//! and the end-to-end tests can all use it.
//!
//! - [`pki`]: the one throwaway certificate authority.
//! - [`eventually`], [`eventually_async`]: wait, with a deadline, for what a
//!   test expects.
//! - [`ports::HeldPort`]: a free port held until a process has it.
//! - [`skip`]: a test that cannot run here says why, or fails where it
//!   must run (`CORE_METER_REQUIRE_*`).

mod eventually;
pub mod pki;
pub mod ports;
mod skip;

pub use eventually::{eventually, eventually_async};
pub use skip::skip;
