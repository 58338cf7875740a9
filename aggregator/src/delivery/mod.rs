//! Delivery: bill lines to the billing webhook, notices by webhook or email,
//! each from a queue in the store, retried with backoff until acknowledged:
//! `worker` works both queues the same way.

pub mod notices;
pub mod webhook;
mod worker;
