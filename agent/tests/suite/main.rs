//! The agent's integration tests, one binary: the daemon against a test
//! aggregator, the hostPath spool handed over by `prepare-spool`, TLS, and
//! `log-retention` against a log-storage endpoint; all sharing `support`,
//! compiled and linked once.

mod support;

mod daemon;
mod hostpath_spool;
mod log_retention;
mod tls;
