//! The billing schedule: run at start-up (catch-up), then at each 02:00 in the billing zone; the step itself is `run_billing`.

use std::time::Duration;

use tokio::sync::watch;

use crate::routes::{admin_run_billing, State};

/// How often the job looks at the clock while waiting. A manual clock in
/// tests moves without waking anyone, so the wait is cut into short naps.
pub const DEFAULT_POLL: Duration = Duration::from_secs(30);

pub async fn run(state: State, poll: Duration, mut stop: watch::Receiver<bool>) {
    // Days missed while the service was down are billed now.
    run_once(&state).await;
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
        if state.clock.now() >= next {
            run_once(&state).await;
        }
    }
}

async fn run_once(state: &State) {
    match admin_run_billing(state).await {
        Ok(lines) => tracing::info!(lines = lines.len(), "billing run finished"),
        Err(e) => {
            tracing::error!(error = %e.message, "billing run failed; it is retried at the next run")
        }
    }
}

/// How long from `now` until `at` (zero once it has passed).
fn until(now: chrono::DateTime<chrono::Utc>, at: chrono::DateTime<chrono::Utc>) -> Duration {
    (at - now).to_std().unwrap_or_default()
}
