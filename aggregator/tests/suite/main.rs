//! The aggregator's integration tests, one binary: each module is a suite
//! (named after what it tests), all sharing `support` (the test kit) and
//! `pki` (the throwaway CA), compiled and linked once.

mod support;

mod admin_token_file;
mod audit;
mod backup;
mod billing;
mod billing_interleavings;
mod billing_replica_skew;
mod billing_sets;
mod console;
mod disk_full;
mod domains;
mod export;
mod http_edges;
mod images;
mod ingest_fuzz;
mod ingest_side_by_side;
mod issued_tokens;
mod lifecycle;
mod lifecycle_runs;
mod log_storage;
mod migrate_store;
mod notice_delivery;
mod pagination;
mod panics;
mod postgres_connection;
mod postgres_tls;
mod quiet_runs;
mod replay_cli;
mod replicas;
mod report;
mod resends;
mod retention;
mod roles;
mod route_fuzz;
mod service;
mod statements;
mod supplied_tokens;
mod tls;
mod webhook_signatures;
