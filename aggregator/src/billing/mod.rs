//! The billing run of SPEC section 6: bill every due day once, and adjust billed days that late samples changed.

pub mod job;
pub mod lifecycle;

use std::time::{Duration, Instant};

use chrono::{DateTime, Days, NaiveDate, TimeDelta, Utc};
use shared::bill::BillLine;
use shared::overage::{overage_with, NodeSample};
use shared::zone::{next_day, Timeline};

use crate::config::BillingConfig;
use crate::store::db::Dialect;
use crate::store::{Account, Store, StoreError, Terms, Window};

/// The most days one account's samples are loaded for at once.
const CHUNK_DAYS: u64 = 7;

/// Accounts billed together on PostgreSQL: their terms, samples and lines
/// are read, and their lines written, in one statement per table.
const SET_SIZE: usize = 8;

/// Accounts whose due days span fewer days than this (`last - first`, so
/// at most two days) are billed with their set; the others (after an
/// outage, or a change to days long billed) a chunk of days at a time, so
/// that no set holds many days of samples at once.
const SET_DAYS: i64 = 2;

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
    let last_run = store.billing().last_billing_run()?;
    let now = match last_run {
        Some(last) if last > now => {
            tracing::warn!(%now, %last, "billing asked to run before the last run; running at the last run's instant");
            last
        }
        _ => now,
    };
    let mut issued = Vec::new();
    // Marks a replica's ingest left as rows count from this run on.
    store.billing().fold_recompute_marks()?;
    let accounts_listed = store.accounts().all()?;
    let mut accounts = accounts_listed.iter().peekable();
    // SQLite answers in the process: a set would only hold more samples at once.
    let set_size = match store.dialect() {
        Dialect::Sqlite => 1,
        Dialect::Postgres => SET_SIZE,
    };
    while accounts.peek().is_some() {
        // Accounts are billed in batches, one commit each: a commit of the
        // durable store waits for the disk, and a commit per account made that
        // wait most of a run. A batch ends after BATCH_HOLD so that ingest,
        // which waits for the write lock, is never held up for long.
        store.billing().in_write_batch(|store| {
            // Timed from when the lock is held, so a batch bills at least one set.
            let batch_started = Instant::now();
            while batch_started.elapsed() < BATCH_HOLD {
                let set: Vec<&Account> = accounts.by_ref().take(set_size).collect();
                if set.is_empty() {
                    break;
                }
                issued.extend(bill_set(store, &set, last_run, now, config)?);
            }
            Ok(())
        })?;
    }
    store.billing().finish_billing_run(now)?;
    // In the order of the accounts as listed; stable, so each account's
    // lines stay in the order of their days.
    let position: std::collections::HashMap<&str, usize> = accounts_listed
        .iter()
        .enumerate()
        .map(|(i, a)| (a.id.as_str(), i))
        .collect();
    issued.sort_by_key(|l| position.get(l.account.as_str()).copied());
    Ok(issued)
}

/// Bills a set of accounts inside the caller's write batch: what each has
/// due, their terms read together, the accounts with a few days due
/// billed together and the others a chunk of days at a time; then their
/// marks are moved past the last due day.
fn bill_set(
    store: &mut Store,
    set: &[&Account],
    last_run: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    config: &BillingConfig,
) -> Result<Vec<BillLine>, StoreError> {
    let zone = &config.zone;
    let last_due = zone.last_due_day(now);
    let reach = TimeDelta::hours(i64::from(config.rules.reach_hours()));
    let mut due: Vec<(&Account, NaiveDate)> = Vec::new();
    for &account in set {
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
                due.push((account, first));
            }
        }
    }
    // An account with many days due (its first run, or a change to days
    // long billed) starts at its first sample, which often leaves few.
    let long: Vec<(&Account, DateTime<Utc>)> = due
        .iter()
        .filter(|(_, first)| (last_due - *first).num_days() >= SET_DAYS)
        .map(|&(account, first)| (account, zone.day_start(first) - reach))
        .collect();
    let mut firsts = store.billing().first_sample_days_from(&long)?.into_iter();
    due.retain_mut(|(_, first)| {
        if (last_due - *first).num_days() < SET_DAYS {
            return true;
        }
        match firsts.next().expect("one per long account") {
            Some(next) => {
                *first = (*first).max(zone.day_of(next));
                *first <= last_due
            }
            // Nothing there can be billed.
            None => false,
        }
    });
    let accounts: Vec<&Account> = due.iter().map(|d| d.0).collect();
    let terms = store.billing().terms_of(&accounts)?;
    let mut issued = Vec::new();
    let (mut windows, mut timelines, mut their_terms) = (Vec::new(), Vec::new(), Vec::new());
    for ((account, first), terms) in due.into_iter().zip(&terms) {
        if (last_due - first).num_days() < SET_DAYS {
            let timeline = Timeline::new(zone, first, last_due, config.rules.reach_hours());
            windows.push(Window {
                account,
                window_ms: timeline.span_ms(),
            });
            timelines.push(timeline);
            their_terms.push(terms);
        } else {
            issued.extend(bill_account(
                store, account, terms, first, last_due, now, config,
            )?);
        }
    }
    let compute = |i: usize, samples: &[NodeSample]| {
        let terms: &Terms = their_terms[i];
        overage_with(
            zone,
            &timelines[i],
            samples,
            &terms.licences,
            &terms.caps,
            &terms.unbilled,
            &config.rules,
        )
    };
    issued.extend(
        store
            .billing()
            .bill_windows(&windows, compute, &config.currency, now)?,
    );
    // Everything up to the last due day is done; later days keep the mark.
    store
        .billing()
        .advance_recompute_of(set, zone.day_start(next_day(last_due)) + reach)?;
    Ok(issued)
}

/// Bills `first..=last` of one account, a chunk of days at a time, skipping
/// stretches without samples.
fn bill_account(
    store: &mut Store,
    account: &Account,
    terms: &Terms,
    first: NaiveDate,
    last: NaiveDate,
    now: DateTime<Utc>,
    config: &BillingConfig,
) -> Result<Vec<BillLine>, StoreError> {
    let zone = &config.zone;
    let reach = TimeDelta::hours(i64::from(config.rules.reach_hours()));
    let Terms {
        licences,
        caps,
        unbilled,
    } = terms;
    let mut issued = Vec::new();
    let mut chunk_start = first;
    while chunk_start <= last {
        // Jump over days without samples: nothing there can be billed.
        let Some(next) = store
            .billing()
            .first_sample_day_from(account, zone.day_start(chunk_start) - reach)?
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
                licences,
                caps,
                unbilled,
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
