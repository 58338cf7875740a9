//! The billing run of SPEC section 6: bill every due day once, and adjust billed days that late samples changed.

pub mod job;
pub mod lifecycle;

use std::time::{Duration, Instant};

use chrono::{DateTime, Days, NaiveDate, TimeDelta, Utc};
use shared::bill::BillLine;
use shared::overage::{overage_with, NodeSample};
use shared::zone::{next_day, Timeline};

use crate::config::BillingConfig;
use crate::store::{Account, Store, StoreError};

/// The most days one account's samples are loaded for at once.
const CHUNK_DAYS: u64 = 7;

/// How long one batch of accounts may hold the write lock before it commits
/// (a batch always bills at least one account).
const BATCH_HOLD: Duration = Duration::from_millis(50);

/// Runs billing at instant `now` and returns the lines it issued.
///
/// For each account it looks at the days from the earlier of: the day the
/// account was marked from (less the hours gap bridging reaches back: the
/// earliest sample stored, licence or cap set since the last run) and the
/// first day that was not yet due at the last run; up to the last day due at
/// `now`. Each such day with samples gets its daily line if it has none, or an
/// adjustment if its amount now differs from what was issued. A second run at
/// the same instant finds nothing to do. A run never goes back in time: asked
/// for an instant before the last run, it runs at the last run's instant.
pub fn run_billing(
    store: &mut Store,
    now: DateTime<Utc>,
    config: &BillingConfig,
) -> Result<Vec<BillLine>, StoreError> {
    let zone = &config.zone;
    let last_run = store.billing().last_billing_run()?;
    let now = match last_run {
        Some(last) if last > now => {
            tracing::warn!(%now, %last, "billing asked to run before the last run; running at the last run's instant");
            last
        }
        _ => now,
    };
    let last_due = zone.last_due_day(now);
    let reach = TimeDelta::hours(i64::from(config.rules.reach_hours()));
    let mut issued = Vec::new();
    // Marks a replica's ingest left as rows count from this run on.
    store.billing().fold_recompute_marks()?;
    let mut accounts = store.accounts().all()?.into_iter().peekable();
    while accounts.peek().is_some() {
        // Accounts are billed in batches, one commit each: a commit of the
        // durable store waits for the disk, and a commit per account made that
        // wait most of a run. A batch ends after BATCH_HOLD so that ingest,
        // which waits for the write lock, is never held up for long.
        store.billing().in_write_batch(|store| {
            // Timed from when the lock is held, so a batch bills at least one account.
            let batch_started = Instant::now();
            while batch_started.elapsed() < BATCH_HOLD {
                let Some(account) = accounts.next() else {
                    break;
                };
                let starts = [
                    account.recompute_from.map(|from| zone.day_of(from - reach)),
                    last_run.map(|l| zone.first_day_not_due(l)),
                ];
                // Days before a deletion of the account's data are never billed again.
                let floor = account.data_deleted_before.map(|at| zone.day_of(at));
                if let Some(first) = starts
                    .into_iter()
                    .flatten()
                    .min()
                    .map(|f| f.max(floor.unwrap_or(f)))
                {
                    if first <= last_due {
                        issued.extend(bill_account(store, &account, first, last_due, now, config)?);
                    }
                }
                // Everything up to the last due day is done; later days keep the mark.
                store
                    .billing()
                    .advance_recompute(&account, zone.day_start(next_day(last_due)) + reach)?;
            }
            Ok(())
        })?;
    }
    store.billing().finish_billing_run(now)?;
    Ok(issued)
}

/// Bills `first..=last` of one account, a chunk of days at a time, skipping
/// stretches without samples.
fn bill_account(
    store: &mut Store,
    account: &Account,
    first: NaiveDate,
    last: NaiveDate,
    now: DateTime<Utc>,
    config: &BillingConfig,
) -> Result<Vec<BillLine>, StoreError> {
    let zone = &config.zone;
    let reach = TimeDelta::hours(i64::from(config.rules.reach_hours()));
    let licences = store.accounts().licences(account)?;
    let caps = store.accounts().caps(account)?;
    let unbilled = store.billing().unbilled_periods(account)?;
    let mut issued = Vec::new();
    let mut chunk_start = first;
    while chunk_start <= last {
        // Jump over days without samples: nothing there can be billed.
        let Some(next) = store
            .billing()
            .first_sample_at(account, zone.day_start(chunk_start) - reach)?
        else {
            break;
        };
        chunk_start = chunk_start.max(zone.day_of(next));
        if chunk_start > last {
            break;
        }
        let chunk_end = chunk_start
            .checked_add_days(Days::new(CHUNK_DAYS - 1))
            .expect("date in range")
            .min(last);
        let timeline = Timeline::new(zone, chunk_start, chunk_end, config.rules.reach_hours());
        let compute = |samples: &[NodeSample]| {
            overage_with(
                zone,
                &timeline,
                samples,
                &licences,
                &caps,
                &unbilled,
                &config.rules,
            )
        };
        issued.extend(store.billing().bill_days(
            account,
            timeline.span_ms(),
            compute,
            &config.currency,
            now,
        )?);
        chunk_start = next_day(chunk_end);
    }
    Ok(issued)
}
