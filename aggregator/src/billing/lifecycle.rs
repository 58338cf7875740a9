//! The lifecycle step of each 02:00 run (LIFECYCLE.md): every account is
//! stepped through each run it has not been through yet, the quiet runs a
//! batch of accounts at a time and the others one account at a time, in
//! batches of accounts per commit like billing; then the data of deleted
//! accounts is removed in bounded batches.

use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use shared::lifecycle::run_day_at;
use shared::zone::{next_day, prev_day, BillingZone};

use crate::store::audit::{Actor, ChangeBy};
use crate::store::{Account, StepOutcome, Store, StoreError};

/// How long one batch of accounts may hold the write lock before it commits.
const BATCH_HOLD: Duration = Duration::from_millis(50);

/// Rows of a deleted account's data removed per transaction.
pub const PURGE_BATCH_ROWS: usize = 5_000;

/// Accounts whose quiet runs are read, decided and recorded together.
const QUIET_BATCH: usize = 500;

/// Steps every account through every run up to the last one at or before
/// `now`; returns what changed (renewals, states, notices), account by
/// account in the order of their ids.
///
/// The runs that change nothing for an account (most runs of most
/// accounts) are recorded a batch of accounts at a time
/// (`Billing::step_quiet_runs`). Each account left with a run that does
/// something is stepped through that run alone; then the batch's quiet
/// runs are looked for again, until every account is through.
pub fn run_lifecycle(
    store: &mut Store,
    now: DateTime<Utc>,
    zone: &BillingZone,
    price_per_core_month: Decimal,
) -> Result<Vec<StepOutcome>, StoreError> {
    let last = run_day_at(zone, now);
    let mut changed = Vec::new();
    for batch in store.accounts().all_as_created()?.chunks(QUIET_BATCH) {
        let mut pending: Vec<&Account> = batch.iter().collect();
        // Cleared when the batch's facts cannot be read: its accounts are
        // then stepped on their own, each step finding and reporting what
        // could not be read.
        let mut quiet_runs = true;
        while !pending.is_empty() {
            let all_loud = || (0..pending.len()).map(|i| (i, None)).collect();
            let loud = if quiet_runs {
                store.billing().in_write_batch(|store| {
                    let quiet = store.billing().in_savepoint(|store| {
                        store.billing().step_quiet_runs(&pending, last, zone)
                    });
                    match quiet {
                        Ok(loud) => Ok(loud),
                        Err(e) if e.unwritable().is_some() => Err(e),
                        Err(e) => {
                            tracing::warn!(error = %e, "the quiet runs of a batch of accounts could not be read; stepping each on its own");
                            quiet_runs = false;
                            Ok(all_loud())
                        }
                    }
                })?
            } else {
                all_loud()
            };
            let mut loud = loud
                .into_iter()
                .map(|(i, day)| (pending[i], day))
                .peekable();
            let mut next = Vec::new();
            while loud.peek().is_some() {
                store.billing().in_write_batch(|store| {
                    let started = Instant::now();
                    while started.elapsed() < BATCH_HOLD {
                        let Some((account, day)) = loud.next() else {
                            break;
                        };
                        // One account whose step fails (a value stored that
                        // cannot be read, say) must not hold up every account
                        // after it: its step is undone, it is reported, and it
                        // is tried again at the next run. A disk that cannot
                        // write stops the run.
                        let step = store.billing().in_savepoint(|store| {
                            step_next(
                                store,
                                &account.id,
                                day,
                                last,
                                zone,
                                price_per_core_month,
                                now,
                            )
                        });
                        match step {
                            Ok((step, through)) => {
                                changed.extend(step);
                                if !through {
                                    next.push(account);
                                }
                            }
                            Err(e) if e.unwritable().is_some() => return Err(e),
                            Err(e) => changed.push(StepOutcome {
                                account: account.id.clone(),
                                error: Some(e.to_string()),
                                ..StepOutcome::default()
                            }),
                        }
                    }
                    Ok(())
                })?;
            }
            pending = next;
        }
    }
    // In the order of the accounts' ids as the database sorts them; stable,
    // so each account's steps stay in the order of their runs.
    let position: std::collections::HashMap<String, usize> = store
        .accounts()
        .all()?
        .into_iter()
        .enumerate()
        .map(|(i, a)| (a.id, i))
        .collect();
    changed.sort_by_key(|c| position.get(&c.account).copied());
    Ok(changed)
}

/// Steps one account through its next run, `day` when the caller knows it,
/// up to `last`; returns the step if it changed something, and whether the
/// account is now through `last`.
fn step_next(
    store: &mut Store,
    account: &str,
    day: Option<NaiveDate>,
    last: NaiveDate,
    zone: &BillingZone,
    price_per_core_month: Decimal,
    now: DateTime<Utc>,
) -> Result<(Option<StepOutcome>, bool), StoreError> {
    let day = match day {
        Some(day) => day,
        None => next_day(
            store
                .billing()
                .stepped_through(account, zone)?
                .unwrap_or(prev_day(last)),
        ),
    };
    if day > last {
        return Ok((None, true));
    }
    // What the step changes (renewals, the state, notices) is the system's,
    // in the audit log beside what people changed.
    let by = ChangeBy {
        actor: Actor::system("lifecycle"),
        source: String::new(),
        action: format!("lifecycle step of {day}"),
    };
    let step = store.audited_if_changed(&by, account, now, |store| {
        store
            .billing()
            .step_account(account, day, day == last, zone, price_per_core_month, now)
    })?;
    let changed = step.state.is_some() || !step.notices.is_empty() || !step.renewed.is_empty();
    Ok((changed.then_some(step), day == last))
}
