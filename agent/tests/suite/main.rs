//! The agent's integration tests, one binary: the daemon against a test
//! aggregator, the hostPath spool handed over by `prepare-spool`, and TLS;
//! all sharing `support`, compiled and linked once.

mod support;

mod daemon;
mod hostpath_spool;
mod tls;
