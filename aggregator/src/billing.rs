//! The billing run of SPEC section 6: bill every due day once, and adjust billed days that late samples changed.

use chrono::{DateTime, Days, NaiveDate, TimeDelta, Utc};
use shared::bill::{BillLine, DEFAULT_CURRENCY};
use shared::overage::{daily_overage, sample_window, Rules};
use shared::sample::AgeLimits;
use shared::zone::BillingZone;

use crate::store::{Account, Store, StoreError};

/// The most days one account's samples are loaded for at once.
const CHUNK_DAYS: u64 = 7;

/// Everything that decides how samples become bills.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillingConfig {
    pub zone: BillingZone,
    pub rules: Rules,
    pub limits: AgeLimits,
    pub currency: String,
}

impl Default for BillingConfig {
    fn default() -> Self {
        BillingConfig {
            zone: BillingZone::default(),
            rules: Rules::default(),
            limits: AgeLimits::default(),
            currency: DEFAULT_CURRENCY.to_string(),
        }
    }
}

/// Runs billing at instant `now` and returns the lines it issued.
///
/// For each account it looks at the days from the earlier of: the day the
/// account was marked from (the earliest sample stored, licence or cap set
/// since the last run) and the first day that was not yet due at the last
/// run; up to the last day due at `now`. Each such day with samples gets its daily line if it
/// has none, or an adjustment if its amount now differs from what was issued.
/// A second run at the same instant finds nothing to do.
pub fn run_billing(
    store: &mut Store,
    now: DateTime<Utc>,
    config: &BillingConfig,
) -> Result<Vec<BillLine>, StoreError> {
    let zone = &config.zone;
    let last_run = store.last_billing_run()?;
    let last_due = zone.last_due_day(now);
    let reach = TimeDelta::hours(i64::from(config.rules.reach_hours()));
    let mut issued = Vec::new();
    for account in store.accounts()? {
        let starts = [
            // A change at `from` reaches back through gap bridging.
            account.recompute_from.map(|from| zone.day_of(from - reach)),
            last_run.map(|l| zone.first_day_not_due(l)),
        ];
        // Nothing before the account's first sample can be billed.
        let earliest = store
            .earliest_sample_at(&account)?
            .map(|at| zone.day_of(at));
        if let (Some(first), Some(earliest)) = (starts.into_iter().flatten().min(), earliest) {
            let first = first.max(earliest);
            if first <= last_due {
                issued.extend(bill_account(store, &account, first, last_due, now, config)?);
            }
        }
        store.clear_recompute(&account)?;
    }
    store.finish_billing_run(now)?;
    Ok(issued)
}

fn bill_account(
    store: &mut Store,
    account: &Account,
    first: NaiveDate,
    last: NaiveDate,
    now: DateTime<Utc>,
    config: &BillingConfig,
) -> Result<Vec<BillLine>, StoreError> {
    let licences = store.licences(account)?;
    let caps = store.caps(account)?;
    let mut issued = Vec::new();
    let mut chunk_start = first;
    while chunk_start <= last {
        let chunk_end = chunk_start
            .checked_add_days(Days::new(CHUNK_DAYS - 1))
            .expect("date in range")
            .min(last);
        let (from_ms, to_ms) = sample_window(&config.zone, chunk_start, chunk_end, &config.rules);
        let samples = store.billing_samples(account, from_ms, to_ms, now)?;
        let figures: Vec<_> = daily_overage(
            &config.zone,
            chunk_start,
            chunk_end,
            &samples,
            &licences,
            &caps,
            &config.rules,
        )
        .into_iter()
        .filter(|f| f.sampled)
        .collect();
        issued.extend(store.issue_lines(account, &figures, &config.currency, now)?);
        chunk_start = shared::zone::next_day(chunk_end);
    }
    Ok(issued)
}
