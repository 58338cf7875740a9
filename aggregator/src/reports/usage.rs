//! A month of an account's total cores, day by day: what the console's
//! usage chart draws. A day a billing run has figured is read from its
//! summary (one row); a day it has not (today, yesterday before 02:00, a
//! day billed before the summaries were kept) is figured here from its
//! samples by the bill's own function, so the chart and the bill agree.

use std::collections::BTreeMap;

use chrono::{DateTime, Months, NaiveDate, TimeDelta, Utc};
use rust_decimal::Decimal;
use shared::overage::{cap_at_day_end, overage_with};
use shared::zone::{next_day, Timeline};

use crate::config::BillingConfig;
use crate::store::{Store, StoreError};

/// One day of the chart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayOfCores {
    pub day: NaiveDate,
    /// The account's total cores averaged over the day's hours (over the
    /// hours so far, today), one place.
    pub average_cores: Decimal,
    /// The largest total of an hour.
    pub peak_cores: u64,
    /// Cores of the licences that count at the day's end.
    pub licensed_cores: u64,
    /// The elastic cap at the day's end.
    pub cap_cores: u64,
    /// What the day was billed, adjustments included; `None` before it is.
    pub billed: Option<Decimal>,
    /// The day is not yet due: its figures may still change.
    pub provisional: bool,
}

/// Hours, core-hours and peak of one day.
type Figured = (u32, u64, u64);

/// The days of `month` up to today (none for a month still to come).
pub fn month_of_cores(
    store: &mut Store,
    config: &BillingConfig,
    account: &str,
    month: NaiveDate,
    now: DateTime<Utc>,
) -> Result<Vec<DayOfCores>, StoreError> {
    let zone = &config.zone;
    let acct = store
        .accounts()
        .account(account)?
        .ok_or_else(|| StoreError::UnknownAccount(account.to_string()))?;
    let today = zone.day_of(now);
    let last = (month + Months::new(1))
        .pred_opt()
        .expect("a month's last day")
        .min(today);
    if last < month {
        return Ok(Vec::new());
    }
    let mut figured: BTreeMap<NaiveDate, Figured> = store
        .reads()
        .core_days(&acct, (month, last))?
        .into_iter()
        .map(|d| (d.day, (d.hours, d.core_hours, d.peak_cores)))
        .collect();
    let billed = store.reads().billed_days(&acct, (month, last))?;
    let licences = store.accounts().licences(&acct)?;
    let caps = store.accounts().caps(&acct)?;
    let missing: Vec<NaiveDate> = month
        .iter_days()
        .take_while(|d| *d <= last)
        .filter(|d| !figured.contains_key(d))
        .collect();
    if !missing.is_empty() {
        let unbilled = store.billing().unbilled_periods(&acct)?;
        let reach = config.rules.reach_hours();
        for (first, end) in runs(&missing) {
            let timeline = Timeline::new(zone, first, end, reach);
            let (from, to) = timeline.span_ms();
            let samples = store.billing().samples_between(
                &acct,
                DateTime::from_timestamp_millis(from).expect("in range"),
                DateTime::from_timestamp_millis(to).expect("in range"),
            )?;
            let figures = overage_with(
                zone,
                &timeline,
                &samples,
                &licences,
                &caps,
                &unbilled,
                &config.rules,
            );
            for f in figures.into_iter().filter(|f| f.sampled) {
                figured.insert(f.day, (f.hours, f.total_core_hours, f.peak_total_cores));
            }
        }
    }
    let last_due = zone.last_due_day(now);
    Ok(month
        .iter_days()
        .take_while(|d| *d <= last)
        .map(|day| {
            let day_end = zone.day_end(day);
            let (hours, core_hours, peak_cores) = figured.get(&day).copied().unwrap_or_default();
            // Today is averaged over the hours begun so far.
            let hours = if day == today {
                let begun = (now - zone.day_start(day)).num_minutes().div_euclid(60) + 1;
                u32::try_from(begun).unwrap_or(1).clamp(1, hours.max(1))
            } else {
                hours.max(1)
            };
            DayOfCores {
                day,
                average_cores: (Decimal::from(core_hours) / Decimal::from(hours)).round_dp(1),
                peak_cores,
                licensed_cores: licences
                    .iter()
                    .filter(|l| l.start < day_end && l.end >= day_end)
                    .map(|l| u64::from(l.cores))
                    .sum(),
                cap_cores: u64::from(cap_at_day_end(
                    &caps,
                    day_end,
                    config.rules.default_cap_cores,
                )),
                billed: billed.get(&day).copied(),
                provisional: day > last_due,
            }
        })
        .collect())
}

/// Consecutive days as (first, last) pairs.
fn runs(days: &[NaiveDate]) -> Vec<(NaiveDate, NaiveDate)> {
    let mut out: Vec<(NaiveDate, NaiveDate)> = Vec::new();
    for &day in days {
        match out.last_mut() {
            Some((_, end)) if next_day(*end) == day => *end = day,
            _ => out.push((day, day)),
        }
    }
    out
}

/// How long a node may stay silent before it is taken as gone (scaled
/// down, replaced) and no longer counted among an account's silent nodes.
pub const GONE_AFTER: TimeDelta = TimeDelta::days(7);

/// The window of last-seen instants that makes a node silent at `now`: no
/// sample for the hours gap bridging reaches (its absence is no longer
/// bridged), and not yet gone.
pub fn silent_window(config: &BillingConfig, now: DateTime<Utc>) -> (i64, i64) {
    let quiet = TimeDelta::hours(i64::from(config.rules.reach_hours()));
    (
        (now - GONE_AFTER).timestamp_millis(),
        (now - quiet).timestamp_millis() + 1,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn consecutive_days_make_one_run_and_a_gap_starts_another() {
        let days = [
            d("2026-03-01"),
            d("2026-03-02"),
            d("2026-03-04"),
            d("2026-03-31"),
        ];
        assert_eq!(
            runs(&days),
            vec![
                (d("2026-03-01"), d("2026-03-02")),
                (d("2026-03-04"), d("2026-03-04")),
                (d("2026-03-31"), d("2026-03-31")),
            ]
        );
        assert!(runs(&[]).is_empty());
    }
}
