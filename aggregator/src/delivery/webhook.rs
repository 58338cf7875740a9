//! Bill delivery: every issued line is POSTed to the billing backend's webhook with its idempotency key and a signature (`security/signature.rs`), and retried with backoff until a 2xx; the queue is the store's outbox, so it survives restarts.

use std::sync::Arc;
use std::time::Duration;

/// The bill lines' queue, as its worker names it.
pub const BILL_LINES: &str = "bill lines";

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use super::worker::{self, post_signed, Queue};
use crate::config::WebhookConfig;
use crate::state::AppState;
use crate::store::{Delivery, Store, StoreError};

/// Delivers bill lines to `webhook` until `stop`; woken when lines are issued.
pub async fn run(
    state: Arc<AppState>,
    webhook: WebhookConfig,
    poll: Duration,
    stop: watch::Receiver<bool>,
) {
    let client = match worker::webhook_client(&webhook) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook client; bill lines stay in the outbox");
            return;
        }
    };
    tracing::info!(url = %webhook.url, "delivering bill lines");
    let wake = Some(state.outbox_wake.clone());
    let lines = Arc::new(BillLines { client, webhook });
    worker::run(state, lines, poll, wake, stop).await;
}

/// The outbox of bill lines, sent to the billing webhook.
struct BillLines {
    client: reqwest::Client,
    webhook: WebhookConfig,
}

impl Queue for BillLines {
    type Item = Delivery;

    fn what(&self) -> &'static str {
        BILL_LINES
    }

    fn timeout(&self) -> Duration {
        self.webhook.timeout
    }

    fn max_backoff(&self) -> Duration {
        self.webhook.max_backoff
    }

    fn attempts(item: &Delivery) -> u32 {
        item.attempts
    }

    fn claim(
        &self,
        store: &mut Store,
        now: DateTime<Utc>,
        limit: usize,
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<Delivery>, StoreError> {
        store.delivery().claim_deliveries(now, limit, lease_until)
    }

    fn release(
        &self,
        store: &mut Store,
        items: &[Delivery],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        store.delivery().release_deliveries(items, now)
    }

    fn next_due(&self, store: &mut Store) -> Result<Option<DateTime<Utc>>, StoreError> {
        store.delivery().next_delivery_at()
    }

    fn mark_delivered(
        &self,
        store: &mut Store,
        item: &Delivery,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        store.delivery().mark_delivered(&item.line, now)
    }

    fn mark_failed(
        &self,
        store: &mut Store,
        item: &Delivery,
        error: &str,
        retry_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        store.delivery().mark_failed(&item.line, error, retry_at)
    }

    async fn send(&self, item: &Delivery, now: DateTime<Utc>) -> Result<(), String> {
        let body =
            serde_json::to_vec(&item.line).map_err(|e| format!("cannot encode the line: {e}"))?;
        let result = post_signed(
            &self.client,
            &self.webhook,
            &item.line.idempotency_key,
            body,
            now,
        )
        .send()
        .await;
        match result {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("the webhook answered {}", r.status())),
            Err(e) => Err(format!("cannot reach the webhook: {e}")),
        }
    }

    fn delivered(&self, state: &AppState, item: &Delivery) {
        state.metrics.outbox_delivered.inc();
        tracing::info!(key = %item.line.idempotency_key, "bill line delivered");
    }

    fn failed(&self, state: &AppState, item: &Delivery, error: &str, wait: Duration) {
        state.metrics.outbox_failures.inc();
        tracing::warn!(key = %item.line.idempotency_key, attempts = item.attempts + 1, %error, retry_in_ms = wait.as_millis() as u64, "bill line not delivered");
    }
}
