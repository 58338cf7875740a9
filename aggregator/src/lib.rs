//! The aggregator: stores the samples agents push, knows accounts, licences and
//! caps, bills every account's daily overage, and replays conformance cases.

pub mod auth;
pub mod billing;
pub mod config;
pub mod ingest_writer;
pub mod replay;
pub mod service_metrics;
pub mod store;
