//! The one delivery worker. Both queues in the store (bill lines for the
//! billing webhook, notices for each channel) are worked the same way:
//! claim what is due for this replica, send each item, record the answer,
//! retry a failure with backoff, then nap until the next item is due.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::{watch, Notify};

use crate::config::WebhookConfig;
use crate::security::signature;
use crate::state::AppState;
use crate::store::{Store, StoreError};

/// Items attempted per pass.
const BATCH: usize = 50;

/// How much longer than a send's timeout a claimed item stays this
/// replica's: the time to record the answer.
const CLAIM_MARGIN: TimeDelta = TimeDelta::seconds(30);

/// A delivery queue: where its items wait in the store, and how one is sent.
pub(crate) trait Queue: Send + Sync + 'static {
    type Item: Clone + Send + Sync + 'static;

    /// What the queue delivers, for logs ("bill lines", "notices by email").
    fn what(&self) -> &'static str;
    /// The longest one send may take.
    fn timeout(&self) -> Duration;
    /// The cap of the backoff between failed attempts.
    fn max_backoff(&self) -> Duration;
    /// Failed attempts of `item` so far.
    fn attempts(item: &Self::Item) -> u32;

    /// Claims up to `limit` items due at `now` until `lease_until`.
    fn claim(
        &self,
        store: &mut Store,
        now: DateTime<Utc>,
        limit: usize,
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<Self::Item>, StoreError>;
    /// Hands claimed items back undelivered, due at `now`.
    fn release(
        &self,
        store: &mut Store,
        items: &[Self::Item],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// When the next item is due, if there is one.
    fn next_due(&self, store: &mut Store) -> Result<Option<DateTime<Utc>>, StoreError>;
    fn mark_delivered(
        &self,
        store: &mut Store,
        item: &Self::Item,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    fn mark_failed(
        &self,
        store: &mut Store,
        item: &Self::Item,
        error: &str,
        retry_at: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// One attempt at `now`; `Err` says why it failed, for the item's
    /// `last_error`.
    fn send(
        &self,
        item: &Self::Item,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// Counts and logs a delivery.
    fn delivered(&self, state: &AppState, item: &Self::Item);
    /// Counts and logs a failed attempt, retried after `wait`.
    fn failed(&self, state: &AppState, item: &Self::Item, error: &str, wait: Duration);
}

/// Works `queue` until `stop`: a pass claims what is due, attempts each
/// item, and goes on at once while passes come back full; then it naps
/// until the next item is due, at most `poll` (so an item queued meanwhile
/// waits no longer), or until `wake`.
pub(crate) async fn run<Q: Queue>(
    state: Arc<AppState>,
    queue: Arc<Q>,
    poll: Duration,
    wake: Option<Arc<Notify>>,
    mut stop: watch::Receiver<bool>,
) {
    // A claim outlasts the send: no other replica sends the item meanwhile.
    let lease = TimeDelta::from_std(queue.timeout()).unwrap_or(TimeDelta::MAX) + CLAIM_MARGIN;
    loop {
        state.passes.begin(queue.what());
        // Made before the pass, so a wake-up during it is not lost (a
        // `Notified` receives `notify_waiters` from its creation on).
        let notified = wake.as_deref().map(Notify::notified);
        tokio::pin!(notified);
        let now = state.clock.now();
        let q = queue.clone();
        let due = match state
            .store
            .blocking(move |s| q.claim(s, now, BATCH, now + lease))
            .await
        {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(queue = queue.what(), error = %e, "cannot read the delivery queue");
                Vec::new()
            }
        };
        for (i, item) in due.iter().enumerate() {
            // A send under way finishes (and is recorded) before a stop, so
            // a restart does not send it again; the rest of the claim is
            // handed back for the next start or another replica.
            if *stop.borrow() {
                let (q, rest, now) = (queue.clone(), due[i..].to_vec(), state.clock.now());
                let _ = state
                    .store
                    .blocking(move |s| q.release(s, &rest, now))
                    .await;
                return;
            }
            attempt(&state, &queue, item).await;
        }
        if due.len() == BATCH {
            continue;
        }
        let q = queue.clone();
        let next = state
            .reader
            .blocking(move |s| q.next_due(s))
            .await
            .ok()
            .flatten();
        let nap = next
            .map(|at| (at - state.clock.now()).to_std().unwrap_or_default())
            .unwrap_or(poll)
            .min(poll);
        let woken = async {
            match notified.as_mut().as_pin_mut() {
                Some(notified) => notified.await,
                None => std::future::pending().await,
            }
        };
        let woke = crate::background::nap(&*state.clock, nap, &mut stop, woken);
        if woke.await == crate::background::Woke::Stop {
            return;
        }
    }
}

async fn attempt<Q: Queue>(state: &Arc<AppState>, queue: &Arc<Q>, item: &Q::Item) {
    match queue.send(item, state.clock.now()).await {
        Ok(()) => {
            let (q, it, now) = (queue.clone(), item.clone(), state.clock.now());
            if let Err(e) = state
                .store
                .blocking(move |s| q.mark_delivered(s, &it, now))
                .await
            {
                tracing::error!(queue = queue.what(), error = %e, "cannot record a delivery; it will be sent again");
            }
            queue.delivered(state, item);
        }
        Err(error) => {
            let wait = backoff(Q::attempts(item), queue.max_backoff());
            queue.failed(state, item, &error, wait);
            let retry_at =
                state.clock.now() + TimeDelta::from_std(wait).unwrap_or(TimeDelta::seconds(1));
            let (q, it) = (queue.clone(), item.clone());
            if let Err(e) = state
                .store
                .blocking(move |s| q.mark_failed(s, &it, &error, retry_at))
                .await
            {
                tracing::error!(queue = queue.what(), error = %e, "cannot record a failed delivery");
            }
        }
    }
}

/// The HTTP client of a webhook: its timeout, and never a redirect (a 307
/// would re-send the signed body to a URL no setting names, perhaps in
/// clear text).
pub(crate) fn webhook_client(webhook: &WebhookConfig) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(webhook.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("core-meter-aggregator/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// A POST of the JSON `body` to `webhook` with its idempotency key, signed
/// at `now` (the service's clock at this attempt, so a retry is signed anew).
pub(crate) fn post_signed(
    client: &reqwest::Client,
    webhook: &WebhookConfig,
    idempotency_key: &str,
    body: Vec<u8>,
    now: DateTime<Utc>,
) -> reqwest::RequestBuilder {
    let signature = signature::sign(&webhook.secret, now, &body);
    client
        .post(&webhook.url)
        .header("Idempotency-Key", idempotency_key)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(signature::HEADER, signature)
        .body(body)
}

/// Exponential backoff with full jitter: uniform in `[1 ms, min(cap, 1 s *
/// 2^attempts)]`. Never 0: a retry due at its failure's own instant would be
/// sent again at once, signed with the same timestamp.
pub(crate) fn backoff(attempts: u32, cap: Duration) -> Duration {
    let ceiling = Duration::from_secs(1)
        .saturating_mul(1u32 << attempts.min(20))
        .min(cap);
    Duration::from_millis(fastrand::u64(
        1..=u64::try_from(ceiling.as_millis())
            .unwrap_or(u64::MAX)
            .max(1),
    ))
}
