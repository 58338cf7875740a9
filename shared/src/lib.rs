//! The rules of core-meter, shared by the agent and the aggregator: samples and
//! their validation, hours and days in the billing zone, the daily overage,
//! bill lines, and the wire format between agent and aggregator. Pure: no IO,
//! no async runtime, and no rule reads the clock (time is an argument; the
//! `clock` module holds the one `Clock` trait the binaries use).

#![deny(clippy::float_arithmetic)]

pub mod bill;
pub mod clock;
pub mod domain;
pub mod images;
pub mod lifecycle;
pub mod logs;
pub mod money;
pub mod overage;
pub mod sample;
pub mod wire;
pub mod zone;

pub use chrono_tz::Tz;
