//! The test kit every suite and bench shares, whatever crate it tests: it
//! depends on no crate of the workspace, so the aggregator's, the agent's
//! and the end-to-end tests can all use it.
//!
//! - [`pki`]: the one throwaway certificate authority.

pub mod pki;
