//! The node agent: counts the node's cores every hour, keeps each sample on disk until the aggregator has it, and pushes.

pub mod daemon;
pub mod identity;
pub mod images;
pub mod log_retention;
pub mod metrics;
pub mod prepare;
pub mod pusher;
pub mod sampler;
pub mod schedule;
pub mod server;
pub mod spool;
pub mod tls;
