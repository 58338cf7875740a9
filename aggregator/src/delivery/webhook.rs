//! Bill delivery: every issued line is POSTed to the billing backend's webhook with its idempotency key and a signature (`signature.rs`), and retried with backoff until a 2xx; the queue is the store's outbox, so it survives restarts.

use std::time::Duration;

use chrono::TimeDelta;
use tokio::sync::watch;

use crate::config::WebhookConfig;
use crate::security::signature;
use crate::state::AppState;
use crate::store::Delivery;
use std::sync::Arc;

/// Lines sent per pass.
const BATCH: usize = 50;
/// How much longer than the webhook's timeout a claimed line stays this
/// replica's: the time to record the answer.
pub(crate) const CLAIM_MARGIN: TimeDelta = TimeDelta::seconds(30);

pub async fn run(
    state: Arc<AppState>,
    webhook: WebhookConfig,
    poll: Duration,
    mut stop: watch::Receiver<bool>,
) {
    // Never follow a redirect: a 307 would re-send the signed line to a
    // URL no setting names, perhaps in clear text.
    let client = match reqwest::Client::builder()
        .timeout(webhook.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("core-meter-aggregator/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook client; bill lines stay in the outbox");
            return;
        }
    };
    tracing::info!(url = %webhook.url, "delivering bill lines");
    // A claim outlasts the POST: no other replica posts the line meanwhile.
    let lease = TimeDelta::from_std(webhook.timeout).unwrap_or(TimeDelta::MAX) + CLAIM_MARGIN;
    loop {
        let now = state.clock.now();
        let due = state
            .store
            .blocking(move |s| s.claim_deliveries(now, BATCH, now + lease))
            .await
            .unwrap_or_default();
        for d in &due {
            deliver(&state, &client, &webhook, d).await;
        }
        if due.len() == BATCH {
            continue;
        }
        let next = state
            .reader
            .blocking(|s| s.next_delivery_at())
            .await
            .ok()
            .flatten();
        let nap = next
            .map(|at| (at - state.clock.now()).to_std().unwrap_or_default())
            .unwrap_or(poll)
            .min(poll);
        tokio::select! {
            _ = tokio::time::sleep(nap) => {}
            _ = state.outbox_wake.notified() => {}
            _ = stop.changed() => return,
        }
    }
}

async fn deliver(
    state: &Arc<AppState>,
    client: &reqwest::Client,
    webhook: &WebhookConfig,
    d: &Delivery,
) {
    let failure = match serde_json::to_vec(&d.line) {
        Ok(body) => {
            let result = post_signed(
                client,
                webhook,
                &d.line.idempotency_key,
                body,
                state.clock.now(),
            )
            .send()
            .await;
            match result {
                Ok(r) if r.status().is_success() => None,
                Ok(r) => Some(format!("the webhook answered {}", r.status())),
                Err(e) => Some(format!("cannot reach the webhook: {e}")),
            }
        }
        Err(e) => Some(format!("cannot encode the line: {e}")),
    };
    let line = d.line.clone();
    match failure {
        None => {
            let now = state.clock.now();
            if let Err(e) = state
                .store
                .blocking(move |s| s.mark_delivered(&line, now))
                .await
            {
                tracing::error!(error = %e, "cannot record a delivery; the line will be sent again");
            }
            state.metrics.outbox_delivered.inc();
            tracing::info!(key = %d.line.idempotency_key, "bill line delivered");
        }
        Some(error) => {
            state.metrics.outbox_failures.inc();
            let wait = backoff(d.attempts, webhook.max_backoff);
            let retry_at =
                state.clock.now() + TimeDelta::from_std(wait).unwrap_or(TimeDelta::seconds(1));
            tracing::warn!(key = %d.line.idempotency_key, attempts = d.attempts + 1, %error, retry_in_ms = wait.as_millis() as u64, "bill line not delivered");
            if let Err(e) = state
                .store
                .blocking(move |s| s.mark_failed(&line, &error, retry_at))
                .await
            {
                tracing::error!(error = %e, "cannot record a failed delivery");
            }
        }
    }
}

/// A POST of the JSON `body` to `webhook` with its idempotency key, signed
/// at `now` (the service's clock at this attempt, so a retry is signed anew).
pub(crate) fn post_signed(
    client: &reqwest::Client,
    webhook: &WebhookConfig,
    idempotency_key: &str,
    body: Vec<u8>,
    now: chrono::DateTime<chrono::Utc>,
) -> reqwest::RequestBuilder {
    let signature = signature::sign(&webhook.secret, now, &body);
    client
        .post(&webhook.url)
        .header("Idempotency-Key", idempotency_key)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(signature::HEADER, signature)
        .body(body)
}

/// Exponential backoff with full jitter: uniform in `[0, min(cap, 1 s * 2^attempts)]`.
pub(crate) fn backoff(attempts: u32, cap: Duration) -> Duration {
    let ceiling = Duration::from_secs(1)
        .saturating_mul(1u32 << attempts.min(20))
        .min(cap);
    Duration::from_millis(fastrand::u64(
        0..=u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX),
    ))
}
