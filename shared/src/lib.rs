//! The rules of core-meter, shared by the agent and the aggregator: samples and
//! their validation, hours and days in the billing zone, the daily overage and
//! bill lines. Pure: no IO, no clock, no async runtime.

#![deny(clippy::float_arithmetic)]

pub mod bill;
pub mod money;
pub mod overage;
pub mod sample;
pub mod zone;

pub use chrono_tz::Tz;
