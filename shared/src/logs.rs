//! The log-storage add-on (SPEC 10.1 and 10.4): what an order and an
//! expansion cost, the quota, and which log days a usage report must purge.
//! Pure: the store holds the orders and the usage and asks these rules.

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::lifecycle::State;
use crate::money::cents;

/// One GB of log storage, in bytes (SPEC 10.1: 2^30).
pub const GB: u64 = 1 << 30;
/// An order buys at least this many GB, in steps of as many.
pub const STEP_GB: u32 = 10;
/// The most GB one order buys (a typo guard, not a business limit): 1 PB.
pub const MAX_ORDER_GB: u32 = 1_000_000;
/// GB a trial may use without buying (the default).
pub const TRIAL_GB: u32 = 10;
/// `log_storage_high` goes out when the bytes used first reach this share
/// of the quota, in percent.
pub const HIGH_PERCENT: u64 = 80;
/// The most log days one usage report names (about 27 years of days).
pub const MAX_REPORT_DAYS: usize = 10_000;
/// The largest usage report body, in bytes (10,000 days fit with room).
pub const MAX_REPORT_BYTES: usize = 1 << 20;
/// The path the log service reports its usage to.
pub const USAGE_PATH: &str = "/v1/log-storage/usage";

/// The default price: 0.25 USD per GB per month.
pub fn default_price_per_gb_month() -> Decimal {
    Decimal::new(25, 2)
}

/// What log storage costs and what a trial gets (settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terms {
    pub price_per_gb_month: Decimal,
    pub trial_gb: u32,
}

impl Default for Terms {
    fn default() -> Self {
        Terms {
            price_per_gb_month: default_price_per_gb_month(),
            trial_gb: TRIAL_GB,
        }
    }
}

/// Why a number of GB cannot be ordered, as a sentence for the field `gb`.
pub fn check_order_gb(gb: u64) -> Result<u32, String> {
    match u32::try_from(gb) {
        Ok(g) if (STEP_GB..=MAX_ORDER_GB).contains(&g) && g % STEP_GB == 0 => Ok(g),
        _ => Err(format!(
            "gb {gb} must be at least {STEP_GB}, a multiple of {STEP_GB}, and at most {MAX_ORDER_GB}"
        )),
    }
}

/// What `gb` for `months` costs: G × months × price, to the cent.
pub fn order_price(gb: u32, months: u32, per_gb_month: Decimal) -> Decimal {
    cents(Decimal::from(gb) * Decimal::from(months) * per_gb_month)
}

/// What `gb` more cost from a day with `days_left` of a term of `months`
/// that is `days_in_term` long: G × price × months × days_left /
/// days_in_term, half up to the cent (SPEC 10.1).
pub fn expansion_price(
    gb: u32,
    per_gb_month: Decimal,
    months: u32,
    days_left: u32,
    days_in_term: u32,
) -> Decimal {
    let whole = Decimal::from(gb) * per_gb_month * Decimal::from(months);
    cents(whole * Decimal::from(days_left) / Decimal::from(days_in_term.max(1)))
}

/// One log day and the bytes the log service holds for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayBytes {
    pub day: NaiveDate,
    pub bytes: u64,
}

/// `PUT /v1/log-storage/usage`: the bytes of each log day, as of `at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageReport {
    pub at: chrono::DateTime<chrono::Utc>,
    pub days: Vec<DayBytes>,
}

/// The answer to a usage report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageAnswer {
    pub quota_bytes: u64,
    pub used_bytes: u64,
    /// The log storage's state (SPEC 10.4): `active`, `grace`, `stopped`, ….
    pub state: State,
    pub accept_writes: bool,
    /// The days to delete, oldest first.
    pub purge: Vec<NaiveDate>,
    /// The newest day alone exceeds the quota: nothing more can be purged.
    pub over_quota: bool,
}

/// What a report's days call for under `quota_bytes` in `state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub used_bytes: u64,
    pub accept_writes: bool,
    /// Oldest first.
    pub purge: Vec<DayBytes>,
    pub over_quota: bool,
}

impl Plan {
    pub fn purged_bytes(&self) -> u64 {
        self.purge.iter().map(|d| d.bytes).sum()
    }
}

/// Whether the storage in `state` takes new logs: everything but a stopped
/// or deleted one (and one never bought: there is nowhere to write).
pub fn accepts_writes(state: State) -> bool {
    !matches!(state, State::Stopped | State::Deleted | State::Unlicensed)
}

/// The days to purge (SPEC 10.4): when the bytes exceed the quota, the
/// oldest days, oldest first, until the rest fit, never the newest day
/// (`over_quota` when it alone is too big). A stopped storage purges
/// nothing yet; a deleted one purges every day. `days` may come in any
/// order; each day is named once (the caller checks).
pub fn plan(days: &[DayBytes], quota_bytes: u64, state: State) -> Plan {
    let mut sorted: Vec<DayBytes> = days.to_vec();
    sorted.sort_by_key(|d| d.day);
    let used_bytes = sorted.iter().map(|d| d.bytes).sum::<u64>();
    let accept_writes = accepts_writes(state);
    match state {
        State::Deleted => {
            return Plan {
                used_bytes,
                accept_writes,
                purge: sorted,
                over_quota: false,
            }
        }
        State::Stopped => {
            return Plan {
                used_bytes,
                accept_writes,
                purge: Vec::new(),
                over_quota: used_bytes > quota_bytes,
            }
        }
        _ => {}
    }
    let mut rest = used_bytes;
    let mut purge = Vec::new();
    let newest = sorted.len().saturating_sub(1);
    for (i, d) in sorted.iter().enumerate() {
        if rest <= quota_bytes || i == newest {
            break;
        }
        rest -= d.bytes;
        purge.push(*d);
    }
    Plan {
        used_bytes,
        accept_writes,
        purge,
        over_quota: rest > quota_bytes,
    }
}

/// Whether `used` bytes are at or above the high mark of `quota`.
pub fn is_high(used: u64, quota: u64) -> bool {
    quota > 0 && u128::from(used) * 100 >= u128::from(quota) * u128::from(HIGH_PERCENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(n: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 12, n).unwrap()
    }

    fn days(bytes: &[u64]) -> Vec<DayBytes> {
        bytes
            .iter()
            .enumerate()
            .map(|(i, &b)| DayBytes {
                day: day(u32::try_from(i).unwrap() + 1),
                bytes: b,
            })
            .collect()
    }

    #[test]
    fn an_order_is_ten_gb_or_more_in_steps_of_ten() {
        assert_eq!(check_order_gb(10), Ok(10));
        assert_eq!(check_order_gb(20), Ok(20));
        for bad in [0, 5, 15, 25, u64::from(MAX_ORDER_GB) + 10, u64::MAX] {
            assert!(check_order_gb(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn twenty_gb_for_a_month_cost_five_dollars_and_an_expansion_is_pro_rata() {
        let p = default_price_per_gb_month();
        assert_eq!(order_price(20, 1, p).to_string(), "5.00");
        assert_eq!(order_price(10, 12, p).to_string(), "30.00");
        // 10 GB more with 15 of 31 days left of a one-month term:
        // 10 × 0.25 × 15 / 31 = 1.2096… → 1.21.
        assert_eq!(expansion_price(10, p, 1, 15, 31).to_string(), "1.21");
        assert_eq!(expansion_price(10, p, 1, 31, 31).to_string(), "2.50");
    }

    #[test]
    fn within_the_quota_nothing_is_purged() {
        let p = plan(&days(&[3, 3, 3]), 10, State::Active);
        assert_eq!((p.used_bytes, p.purge.len(), p.over_quota), (9, 0, false));
        assert!(p.accept_writes);
    }

    #[test]
    fn over_the_quota_the_oldest_days_go_first_until_the_rest_fit() {
        let mut report = days(&[4, 4, 4, 4]);
        report.reverse();
        let p = plan(&report, 9, State::Active);
        assert_eq!(
            p.purge.iter().map(|d| d.day).collect::<Vec<_>>(),
            vec![day(1), day(2)]
        );
        assert_eq!(p.purged_bytes(), 8);
        assert!(!p.over_quota);
    }

    #[test]
    fn the_newest_day_is_never_purged_and_alone_too_big_is_over_quota() {
        let p = plan(&days(&[1, 2, 50]), 10, State::Active);
        assert_eq!(
            p.purge.iter().map(|d| d.day).collect::<Vec<_>>(),
            vec![day(1), day(2)]
        );
        assert!(p.over_quota);
    }

    #[test]
    fn stopped_refuses_writes_and_purges_nothing_and_deleted_purges_every_day() {
        let p = plan(&days(&[8, 8]), 10, State::Stopped);
        assert!(!p.accept_writes && p.purge.is_empty());
        let p = plan(&days(&[1, 0, 2]), 10, State::Deleted);
        assert!(!p.accept_writes);
        assert_eq!(
            p.purge.iter().map(|d| d.day).collect::<Vec<_>>(),
            vec![day(1), day(2), day(3)]
        );
        assert!(plan(&days(&[1]), 10, State::Grace).accept_writes);
    }

    #[test]
    fn the_high_mark_is_eighty_percent() {
        assert!(!is_high(79, 100));
        assert!(is_high(80, 100));
        assert!(!is_high(0, 0));
        assert!(is_high(u64::MAX, u64::MAX));
    }
}
