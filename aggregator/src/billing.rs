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
/// For each account it looks at the days from the earliest of: the day of the
/// earliest sample stored since the last run, the first day that was not yet
/// due at the last run, and the day a licence or cap change marked; up to the
/// last day due at `now`. Each such day with samples gets its daily line if it
/// has none, or an adjustment if its amount now differs from what was issued.
/// A second run at the same instant finds nothing to do.
pub fn run_billing(
    store: &mut Store,
    now: DateTime<Utc>,
    config: &BillingConfig,
) -> Result<Vec<BillLine>, StoreError> {
    let zone = &config.zone;
    let state = store.billing_state()?;
    let watermark = store.max_sample_id()?;
    let fresh = store.fresh_samples_earliest_at(state.sample_watermark, watermark)?;
    let last_due = zone.last_due_day(now);
    // Licence and cap changes reach back no further than a late sample could.
    let horizon =
        now - config.limits.max_age - TimeDelta::hours(i64::from(config.rules.reach_hours()));

    let mut issued = Vec::new();
    for account in store.accounts()? {
        let starts = [
            fresh
                .get(&account.reference())
                .map(|&ms| zone.day_of(crate::store::from_ms(ms))),
            state.last_run.map(|l| zone.first_day_not_due(l)),
            account
                .recompute_from
                .map(|from| zone.day_of(from.max(horizon))),
        ];
        if let Some(first) = starts.into_iter().flatten().min() {
            if first <= last_due {
                issued.extend(bill_account(store, &account, first, last_due, now, config)?);
            }
        }
        store.clear_recompute(&account)?;
    }
    store.finish_billing_run(now, watermark)?;
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
