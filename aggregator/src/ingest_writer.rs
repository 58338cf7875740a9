//! Group commit: one writer thread takes every waiting ingest request and stores them in one transaction, so a herd of agents costs one fsync per group, not per request.

use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use shared::sample::AgeLimits;
use tokio::sync::oneshot;

use crate::service_metrics::ServiceMetrics;
use crate::store::{Incoming, Outcome, Store};

/// Requests waiting for the writer at most; beyond, ingest answers 503.
const QUEUE_REQUESTS: usize = 1_024;
/// Samples stored by one commit at most.
const GROUP_SAMPLES: usize = 50_000;

/// One sample of a request, owned.
#[derive(Debug, Clone)]
pub struct OwnedSample {
    pub node: String,
    pub cores: Option<u32>,
    pub at: Option<DateTime<Utc>>,
    pub seq: Option<i64>,
    pub agent_version: Option<String>,
}

/// One request's samples, with the identity its token gave them.
pub struct Job {
    pub account: String,
    pub cluster: String,
    pub received_at: DateTime<Utc>,
    pub samples: Vec<OwnedSample>,
    reply: oneshot::Sender<Result<Vec<Outcome>, String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the ingest queue is full; try again shortly")]
    Busy,
    #[error("the ingest writer has stopped")]
    Stopped,
    #[error("storing the samples failed: {0}")]
    Store(String),
}

#[derive(Clone)]
pub struct IngestQueue {
    tx: SyncSender<Job>,
}

impl IngestQueue {
    /// Starts the writer thread. It stops once every `IngestQueue` clone is
    /// dropped and the queue is drained.
    pub fn start(
        store: Arc<Mutex<Store>>,
        limits: AgeLimits,
        metrics: Arc<ServiceMetrics>,
    ) -> (IngestQueue, std::thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::sync_channel(QUEUE_REQUESTS);
        let handle = std::thread::Builder::new()
            .name("ingest-writer".into())
            .spawn(move || writer(rx, store, limits, metrics))
            .expect("start the ingest writer");
        (IngestQueue { tx }, handle)
    }

    /// Queues a request's samples and waits until they are committed.
    pub async fn submit(
        &self,
        account: String,
        cluster: String,
        received_at: DateTime<Utc>,
        samples: Vec<OwnedSample>,
    ) -> Result<Vec<Outcome>, SubmitError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            account,
            cluster,
            received_at,
            samples,
            reply,
        };
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(SubmitError::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(SubmitError::Stopped),
        }
        match answer.await {
            Ok(Ok(outcomes)) => Ok(outcomes),
            Ok(Err(e)) => Err(SubmitError::Store(e)),
            Err(_) => Err(SubmitError::Stopped),
        }
    }
}

fn writer(
    rx: Receiver<Job>,
    store: Arc<Mutex<Store>>,
    limits: AgeLimits,
    metrics: Arc<ServiceMetrics>,
) {
    while let Ok(first) = rx.recv() {
        // Everything that queued up while the last commit was syncing goes in this one.
        let mut jobs = vec![first];
        let mut samples = jobs[0].samples.len();
        while samples < GROUP_SAMPLES {
            match rx.try_recv() {
                Ok(job) => {
                    samples += job.samples.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let incoming: Vec<Incoming<'_>> = jobs
            .iter()
            .flat_map(|job| {
                job.samples.iter().map(move |s| Incoming {
                    account: &job.account,
                    cluster: &job.cluster,
                    node: &s.node,
                    cores: s.cores,
                    at: s.at,
                    seq: s.seq,
                    agent_version: s.agent_version.as_deref(),
                    received_at: job.received_at,
                })
            })
            .collect();
        let result = store.lock().expect("store lock").ingest(&incoming, &limits);
        drop(incoming);
        match result {
            Ok(outcomes) => {
                metrics.ingest_commits.inc();
                metrics.ingest_commit_samples.observe(outcomes.len() as f64);
                let mut rest = outcomes.into_iter();
                for job in jobs {
                    let mine: Vec<Outcome> = rest.by_ref().take(job.samples.len()).collect();
                    let _ = job.reply.send(Ok(mine));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, requests = jobs.len(), "ingest commit failed; nothing of it was stored");
                for job in jobs {
                    let _ = job.reply.send(Err(e.to_string()));
                }
            }
        }
    }
}
