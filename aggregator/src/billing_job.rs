//! The billing schedule: run at start-up (catch-up), then at each 02:00 in the billing zone; the step itself is `run_billing`. Retention follows each successful run.

use std::time::Duration;

use tokio::sync::watch;

use crate::routes::{admin_run_billing, blocking, run_lifecycle_now, ApiError, State};
use crate::service_metrics::TableLabels;
use crate::store::{Horizon, Pruned, PRUNE_BATCH_ROWS};

/// How often the job looks at the clock while waiting. A manual clock in
/// tests moves without waking anyone, so the wait is cut into short naps.
pub const DEFAULT_POLL: Duration = Duration::from_secs(30);

pub async fn run(state: State, poll: Duration, mut stop: watch::Receiver<bool>) {
    // Days missed while the service was down are billed now.
    lead_run(&state).await;
    let zone = state.config.billing.zone;
    loop {
        let now = state.clock.now();
        // The next 02:00 (03:00 on a spring-forward day): the due time of the
        // first day not yet due.
        let next = zone.due_at(zone.first_day_not_due(now));
        let nap = until(now, next).min(poll);
        tokio::select! {
            _ = tokio::time::sleep(nap) => {}
            _ = stop.changed() => return,
        }
        if state.clock.now() >= next || run_unfinished(&state).await {
            lead_run(&state).await;
        }
    }
}

/// Whether the last 02:00 passed without a run finishing after it: another
/// replica was running it and died, or this one could not run it.
async fn run_unfinished(state: &State) -> bool {
    let zone = state.config.billing.zone;
    let last_due = zone.due_at(zone.last_due_day(state.clock.now()));
    match blocking(&state.reader, |s| s.last_billing_run()).await {
        Ok(last) => last.is_none_or(|l| l < last_due),
        Err(_) => false,
    }
}

/// Runs billing, the lifecycle and retention if this replica leads: one
/// replica at a time does (PostgreSQL's session advisory lock, released when
/// the run ends or its connection dies). The others skip, and look again at
/// their next poll in case the leader died before finishing. Correctness
/// does not rest on the lead: a day's lines are written under the write
/// lock and keyed (account, day, seq), so two runs never issue a line twice;
/// the lead only saves the others the work.
async fn lead_run(state: &State) {
    match blocking(&state.store, |s| s.try_lead_billing()).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::debug!("another replica is running billing");
            return;
        }
        Err(e) => {
            tracing::error!(error = %e.message, "cannot take the billing lead; retried at the next poll");
            return;
        }
    }
    tracing::info!(at = %state.clock.now(), "this replica leads the billing run");
    run_once(state).await;
    if let Err(e) = blocking(&state.store, |s| s.end_billing_lead()).await {
        tracing::error!(error = %e.message, "cannot hand back the billing lead");
    }
}

async fn run_once(state: &State) {
    match admin_run_billing(state).await {
        Ok(lines) => tracing::info!(lines = lines.len(), "billing run finished"),
        Err(e) => {
            tracing::error!(error = %e.message, "billing run failed; it is retried at the next run");
            // The lifecycle and pruning wait for a run that succeeded: a day
            // is billed before its account can be stopped or deleted.
            return;
        }
    }
    match run_lifecycle_now(state).await {
        Ok(changed) => tracing::info!(accounts = changed.len(), "lifecycle step finished"),
        Err(e) => {
            tracing::error!(error = %e.message, "lifecycle step failed; it is retried at the next run")
        }
    }
    if let Err(e) = prune(state, PRUNE_BATCH_ROWS).await {
        tracing::error!(error = %e.message, "retention failed; it is retried after the next billing run");
    }
}

/// The retention step: prunes raw samples and rejections before the horizon
/// (`retention_days` before today in the billing zone), one bounded
/// transaction at a time. The store is taken per batch, so admin writes and
/// billing wait for one batch at most, and ingest (its own connection) for
/// one batch's write lock. Bill lines are never pruned.
pub async fn prune(state: &State, batch_rows: usize) -> Result<Pruned, ApiError> {
    let billing = &state.config.billing;
    let (zone, reach_hours) = (billing.zone, billing.rules.reach_hours());
    let horizon = Horizon::at(
        &zone,
        state.clock.now(),
        state.config.retention_days,
        reach_hours,
    );
    let targets = blocking(&state.store, move |s| {
        s.plan_pruning(&horizon, &zone, reach_hours)
    })
    .await?;
    let mut total = Pruned::default();
    for target in targets {
        loop {
            let batch = blocking(&state.store, move |s| s.prune_batch(&target, batch_rows)).await?;
            total.add(batch);
            for (table, rows) in [("samples", batch.samples), ("rejections", batch.rejections)] {
                state
                    .metrics
                    .retention_pruned_rows
                    .get_or_create(&TableLabels {
                        table: table.to_string(),
                    })
                    .inc_by(rows);
            }
            if batch.rows() < batch_rows as u64 {
                break;
            }
        }
    }
    tracing::info!(
        first_kept_day = %horizon.first_kept_day,
        pruned_before = %horizon.prune_before,
        samples = total.samples,
        rejections = total.rejections,
        transactions = total.transactions,
        "retention pruned raw samples"
    );
    Ok(total)
}

/// How long from `now` until `at` (zero once it has passed).
fn until(now: chrono::DateTime<chrono::Utc>, at: chrono::DateTime<chrono::Utc>) -> Duration {
    (at - now).to_std().unwrap_or_default()
}
