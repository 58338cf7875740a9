//! The billing schedule: run at start-up (catch-up), then at each 02:00 in the billing zone; the step itself is `run_billing`. Retention follows each successful run.

use std::time::Duration;

use tokio::sync::watch;

use crate::state::AppState;
use shared::bill::BillLine;
use std::sync::Arc;

use crate::billing::run_billing;
use crate::metrics::{KindLabels, TableLabels};
use crate::store::{Horizon, Pruned, StoreError, PRUNE_BATCH_ROWS};

/// How often the job looks at the clock while waiting: the machine's clock
/// can be stepped (NTP, a resumed VM), so the wait for 02:00 is cut into
/// naps no longer than this. A test's manual clock wakes it when moved.
pub const DEFAULT_POLL: Duration = Duration::from_secs(30);

/// The job, as its passes are counted.
pub const NAME: &str = "billing job";

pub async fn run(state: Arc<AppState>, poll: Duration, mut stop: watch::Receiver<bool>) {
    // Days missed while the service was down are billed now.
    state.passes.begin(NAME);
    lead_run(&state).await;
    let zone = state.config.billing.zone;
    loop {
        state.passes.begin(NAME);
        let now = state.clock.now();
        // The next 02:00 (03:00 on a spring-forward day): the due time of the
        // first day not yet due.
        let next = zone.due_at(zone.first_day_not_due(now));
        let nap = until(now, next).min(poll);
        let woke = crate::background::nap(&*state.clock, nap, &mut stop, std::future::pending());
        if woke.await == crate::background::Woke::Stop {
            return;
        }
        if state.clock.now() >= next || run_unfinished(&state).await {
            lead_run(&state).await;
        }
    }
}

/// Whether the last 02:00 passed without a run finishing after it: another
/// replica was running it and died, or this one could not run it.
async fn run_unfinished(state: &Arc<AppState>) -> bool {
    let zone = state.config.billing.zone;
    let last_due = zone.due_at(zone.last_due_day(state.clock.now()));
    match state
        .reader
        .blocking(|s| s.billing().last_billing_run())
        .await
    {
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
async fn lead_run(state: &Arc<AppState>) {
    match state
        .store
        .blocking(|s| s.billing().try_lead_billing())
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            tracing::debug!("another replica is running billing");
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot take the billing lead; retried at the next poll");
            return;
        }
    }
    tracing::info!(at = %state.clock.now(), "this replica leads the billing run");
    run_once(state).await;
    if let Err(e) = state
        .store
        .blocking(|s| s.billing().end_billing_lead())
        .await
    {
        tracing::error!(error = %e, "cannot hand back the billing lead");
    }
}

async fn run_once(state: &Arc<AppState>) {
    match run_billing_now(state).await {
        Ok(lines) => tracing::info!(lines = lines.len(), "billing run finished"),
        Err(e) => {
            tracing::error!(error = %e, "billing run failed; it is retried at the next run");
            // The lifecycle and pruning wait for a run that succeeded: a day
            // is billed before its account can be stopped or deleted.
            return;
        }
    }
    match run_lifecycle_now(state).await {
        Ok(changed) => tracing::info!(accounts = changed.len(), "lifecycle step finished"),
        Err(e) => {
            tracing::error!(error = %e, "lifecycle step failed; it is retried at the next run")
        }
    }
    if let Err(e) = prune(state, PRUNE_BATCH_ROWS).await {
        tracing::error!(error = %e, "retention failed; it is retried after the next billing run");
    }
}

/// Steps every account through the runs up to the clock's now, then removes
/// the data of accounts that reached `deleted`, a bounded batch per
/// transaction.
pub async fn run_lifecycle_now(
    state: &Arc<AppState>,
) -> Result<Vec<crate::store::StepOutcome>, StoreError> {
    let (now, zone, price) = (
        state.clock.now(),
        state.config.billing.zone,
        state.config.licence_price_per_core_month,
    );
    let changed = state
        .store
        .blocking(move |s| crate::billing::lifecycle::run_lifecycle(s, now, &zone, price))
        .await?;
    for step in &changed {
        let m = &state.metrics;
        if let Some(error) = &step.error {
            m.lifecycle_step_failures.inc();
            tracing::error!(account = %step.account, %error, "lifecycle step failed for this account; it is tried again at the next run");
            continue;
        }
        if let Some(st) = step.state {
            m.account_state_changes
                .get_or_create(&crate::metrics::StateLabels {
                    state: st.as_str().to_string(),
                })
                .inc();
        }
        for kind in &step.notices {
            m.notices_issued
                .get_or_create(&KindLabels { kind: kind.clone() })
                .inc();
        }
        m.licence_renewals.inc_by(step.renewed.len() as u64);
        tracing::info!(account = %step.account, day = ?step.day, state = ?step.state, notices = ?step.notices, renewed = ?step.renewed, "lifecycle step");
    }
    loop {
        let removed = state
            .store
            .blocking(move |s| {
                s.billing()
                    .purge_deleted_data(crate::billing::lifecycle::PURGE_BATCH_ROWS, now)
            })
            .await?;
        if removed == 0 {
            break;
        }
    }
    state.notice_wake.notify_waiters();
    Ok(changed)
}

/// Runs billing at the clock's now, counts it, and wakes the outbox.
pub async fn run_billing_now(state: &Arc<AppState>) -> Result<Vec<BillLine>, StoreError> {
    let now = state.clock.now();
    let config = state.config.billing.clone();
    let issued = state
        .store
        .blocking(move |s| run_billing(s, now, &config))
        .await?;
    state.metrics.billing_runs.inc();
    state.metrics.last_billing_run.set(now.timestamp() as f64);
    for line in &issued {
        state
            .metrics
            .billing_lines
            .get_or_create(&KindLabels {
                kind: line.kind.as_str().to_string(),
            })
            .inc();
    }
    if !issued.is_empty() {
        state.outbox_wake.notify_one();
    }
    // A day billed may have issued a notice.
    state.notice_wake.notify_waiters();
    Ok(issued)
}

/// The retention step: prunes raw samples and rejections before the horizon
/// (`retention_days` before today in the billing zone), one bounded
/// transaction at a time. The store is taken per batch, so admin writes and
/// billing wait for one batch at most, and ingest (its own connection) for
/// one batch's write lock. Bill lines are never pruned.
pub async fn prune(state: &Arc<AppState>, batch_rows: usize) -> Result<Pruned, StoreError> {
    let billing = &state.config.billing;
    let (zone, reach_hours) = (billing.zone, billing.rules.reach_hours());
    let horizon = Horizon::at(
        &zone,
        state.clock.now(),
        state.config.retention_days,
        reach_hours,
    );
    let now = state.clock.now();
    let (targets, mut total) = state
        .store
        .blocking(move |s| {
            let mut billing = s.billing();
            billing.make_months_ahead(now)?;
            let targets = billing.plan_pruning(&horizon, &zone, reach_hours)?;
            let dropped = billing.drop_past_months(&targets)?;
            Ok::<_, StoreError>((targets, dropped))
        })
        .await?;
    state
        .metrics
        .retention_pruned_rows
        .get_or_create(&TableLabels {
            table: "samples".to_string(),
        })
        .inc_by(total.samples);
    for target in targets {
        loop {
            let batch = state
                .store
                .blocking(move |s| s.billing().prune_batch(&target, batch_rows))
                .await?;
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
            if !batch.full {
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
