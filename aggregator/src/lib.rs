//! The aggregator: stores the samples agents push, knows accounts, licences and
//! caps, bills every account's daily overage, and replays conformance cases.

pub mod auth;
pub mod automatic_errors;
pub mod billing;
pub mod billing_job;
pub mod config;
pub mod csv_out;
pub mod demo;
pub mod export;
pub mod ingest_writer;
pub mod lifecycle;
pub mod notice_outbox;
pub mod outbox;
pub mod replay;
pub mod report;
pub mod report_html;
pub mod routes;
pub mod secret_file;
pub mod service_metrics;
pub mod signature;
pub mod startup;
pub mod store;
pub mod tls;
