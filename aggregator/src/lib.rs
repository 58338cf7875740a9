//! The aggregator: stores the samples agents push, knows accounts, licences and
//! caps, bills every account's daily overage, and replays conformance cases.
//!
//! The modules are layers; each uses only those below it (ARCHITECTURE.md
//! states the rules and `tests/layers.rs` checks them):
//!
//! - `app`: start-up, the server, the background jobs' supervision.
//! - `http`: the router, the routes table, errors, authorization, handlers.
//! - `commands`: what the binary does besides serving (replay, demo, …).
//! - `delivery`: bill lines to the webhook, notices by webhook or email.
//! - `billing`: the run, the 02:00 job, each account's lifecycle step.
//! - `console`: the console's pages as HTML, its languages and catalogues.
//! - `reports`: daily reports (JSON, CSV, HTML), statements and exports.
//! - `ingest`: the writer that batches agents' samples into the store.
//! - `metrics`: the service's Prometheus metrics.
//! - `state`: what every part of the running service can reach (`AppState`).
//! - `security`: tokens, signatures, TLS.
//! - `store`: the tables, behind the `db` adapter.
//! - `config`: the settings; imports nothing from the rest.

pub mod app;
pub mod background;
pub mod billing;
pub mod commands;
pub mod config;
pub mod console;
pub mod delivery;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod reports;
pub mod security;
pub mod state;
pub mod store;

#[cfg(test)]
mod layers;

#[cfg(test)]
mod docs;
