//! Group commit: one writer thread takes every waiting ingest request and stores them in one transaction, so a herd of agents costs one fsync per group, not per request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use shared::sample::{AgeLimits, Rejection};
use tokio::sync::oneshot;

use crate::metrics::ServiceMetrics;
use crate::store::db::Dialect;
use crate::store::{Connection, Incoming, Outcome, Unwritable};

/// Requests waiting for the writer at most; beyond, ingest answers 503.
const QUEUE_REQUESTS: usize = 1_024;
/// Samples stored by one commit at most.
const GROUP_SAMPLES: usize = 50_000;

/// PostgreSQL, while pushes come several at a time: a group smaller than
/// this waits for more, up to [`LINGER_LONGEST`]. A commit there costs
/// about 1.4 ms of CPU whatever its size (its statements' round trips and
/// planning, the WAL flush), and replicas split a herd's groups among
/// them: without the wait three replicas committed 15 to 20 samples at a
/// time where one committed 80 to 130. SQLite's one writer gathers its
/// groups while the last one syncs, and does not wait.
const LINGER_SAMPLES: usize = 256;
/// The longest a group waits: a latency bound, on the monotonic clock like
/// the billing run's batch hold, not an instant of the service's `Clock`.
/// A herd's pushes wait for their answers, so each millisecond here is a
/// millisecond more for each of them: in the herd bench three replicas
/// took 9,100 samples/s at 40 ms, 10,600 at 20 ms, 11,600 at 10 ms,
/// 10,300 at 5 ms and 7,300 without waiting (medians of 3 to 6 rounds).
const LINGER_LONGEST: Duration = Duration::from_millis(10);

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
    reply: oneshot::Sender<Result<Vec<Outcome>, CommitFailure>>,
}

/// Why a commit failed; every request of the group gets a copy.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct CommitFailure {
    /// Set when the disk is to blame (full or failing): worth a retry later.
    pub unwritable: Option<Unwritable>,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the ingest queue is full; try again shortly")]
    Busy,
    #[error("the ingest writer has stopped")]
    Stopped,
    #[error("storing the samples failed: {0}")]
    Store(CommitFailure),
}

/// The database's disk as the writer last found it: failing since when, and why.
#[derive(Debug, Clone)]
pub struct WriteFailure {
    pub cause: Unwritable,
    /// The error of the last failed commit.
    pub error: String,
    pub since: Instant,
    /// Commits that failed in a row.
    pub commits: u64,
}

impl WriteFailure {
    /// One line for a response or a log.
    pub fn describe(&self) -> String {
        format!(
            "{}: {} commit(s) failed in a row over {} s, the last with \"{}\"",
            self.cause.cause(),
            self.commits,
            self.since.elapsed().as_secs(),
            self.error
        )
    }
}

#[derive(Clone)]
pub struct IngestQueue {
    tx: SyncSender<Job>,
    /// Set by the writer while commits fail for the disk's sake; readiness reads it.
    failing: Arc<Mutex<Option<WriteFailure>>>,
    /// True while the writer thread runs; liveness reads it.
    running: Arc<AtomicBool>,
}

/// Clears the writer's `running` flag however its thread ends.
struct Running(Arc<AtomicBool>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl IngestQueue {
    /// Starts the writer thread. It stops once every `IngestQueue` clone is
    /// dropped and the queue is drained.
    pub fn start(
        store: Arc<Connection>,
        limits: AgeLimits,
        metrics: Arc<ServiceMetrics>,
    ) -> (IngestQueue, std::thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::sync_channel(QUEUE_REQUESTS);
        let failing = Arc::new(Mutex::new(None));
        let health = failing.clone();
        let running = Arc::new(AtomicBool::new(true));
        let flag = Running(running.clone());
        let lingers = store.dialect() == Dialect::Postgres;
        let handle = std::thread::Builder::new()
            .name("ingest-writer".into())
            .spawn(move || {
                let _running = flag;
                writer(rx, store, limits, metrics, health, lingers)
            })
            .expect("start the ingest writer");
        (
            IngestQueue {
                tx,
                failing,
                running,
            },
            handle,
        )
    }

    /// Whether the writer thread still runs (it stops only at shutdown).
    pub fn writer_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// Why the last commit failed, if it did because of the disk; `None` once
    /// a commit succeeds again.
    pub fn write_failure(&self) -> Option<WriteFailure> {
        self.failing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
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

/// The pushes waiting in the queue, taken into `jobs` while the group is
/// under GROUP_SAMPLES; `samples` counts what `jobs` holds.
fn take_waiting(rx: &Receiver<Job>, jobs: &mut Vec<Job>, samples: &mut usize) {
    while *samples < GROUP_SAMPLES {
        match rx.try_recv() {
            Ok(job) => {
                *samples += job.samples.len();
                jobs.push(job);
            }
            Err(_) => break,
        }
    }
}

/// Waits for more pushes while the group is under LINGER_SAMPLES, for
/// LINGER_LONGEST at most.
fn linger(rx: &Receiver<Job>, jobs: &mut Vec<Job>, samples: &mut usize) {
    let until = Instant::now() + LINGER_LONGEST;
    while *samples < LINGER_SAMPLES {
        let left = until.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(job) => {
                *samples += job.samples.len();
                jobs.push(job);
                take_waiting(rx, jobs, samples);
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
        }
    }
}

/// How the writer gathers a commit's group.
struct Gathering {
    /// Whether a small group waits for more (PostgreSQL).
    lingers: bool,
    /// Whether the last group held more than one push: pushes come several
    /// at a time, and more are likely on their way. A lone client's pushes
    /// never wait.
    several: bool,
}

impl Gathering {
    /// `first` and everything that queued up while the last commit was
    /// syncing, and on PostgreSQL what comes soon after; the group's samples.
    fn group(&mut self, rx: &Receiver<Job>, first: Job) -> (Vec<Job>, usize) {
        let mut samples = first.samples.len();
        let mut jobs = vec![first];
        take_waiting(rx, &mut jobs, &mut samples);
        if self.lingers && self.several {
            linger(rx, &mut jobs, &mut samples);
        }
        self.several = jobs.len() > 1;
        (jobs, samples)
    }
}

fn writer(
    rx: Receiver<Job>,
    store: Arc<Connection>,
    limits: AgeLimits,
    metrics: Arc<ServiceMetrics>,
    failing: Arc<Mutex<Option<WriteFailure>>>,
    lingers: bool,
) {
    let mut gathering = Gathering {
        lingers,
        several: false,
    };
    while let Ok(first) = rx.recv() {
        let (jobs, _) = gathering.group(&rx, first);
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
        // A panic (here or in another holder of the connection) answers
        // this group 500 and leaves the writer and the connection working.
        let result = store.with(|s| s.ingest().insert(&incoming, &limits));
        drop(incoming);
        match result {
            Ok(outcomes) => {
                if let Some(was) = failing
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take()
                {
                    tracing::info!(
                        failed_commits = was.commits,
                        failing_secs = was.since.elapsed().as_secs(),
                        "the database takes writes again"
                    );
                }
                metrics.ingest_commits.inc();
                metrics.ingest_commit_samples.observe(outcomes.len() as f64);
                let mut rest = outcomes.into_iter();
                for job in jobs {
                    let mine: Vec<Outcome> = rest.by_ref().take(job.samples.len()).collect();
                    warn_of_conflicting_resends(&job, &mine);
                    let _ = job.reply.send(Ok(mine));
                }
            }
            Err(e) => {
                let failure = CommitFailure {
                    unwritable: e.unwritable(),
                    message: e.to_string(),
                };
                if let Some(cause) = failure.unwritable {
                    note_failure(&failing, cause, &failure.message);
                }
                tracing::error!(error = %e, requests = jobs.len(), "ingest commit failed; nothing of it was stored");
                for job in jobs {
                    let _ = job.reply.send(Err(failure.clone()));
                }
            }
        }
    }
}

/// One line per request that held conflicting resends, however many: an
/// agent that hands a seq out twice is a bug worth seeing, not worth a line
/// per sample.
fn warn_of_conflicting_resends(job: &Job, outcomes: &[Outcome]) {
    let conflicting = Outcome::Rejected(Rejection::ConflictingResend);
    let mut found = outcomes
        .iter()
        .zip(&job.samples)
        .filter(|(o, _)| **o == conflicting);
    let Some((_, first)) = found.next() else {
        return;
    };
    let count = 1 + found.count();
    tracing::warn!(
        account = %job.account,
        cluster = %job.cluster,
        count,
        first_node = %first.node,
        first_seq = first.seq,
        "rejected {count} conflicting resend(s): a (node, seq) already stored with other cores or another instant; the stored samples stand (the agent or its spool handed a seq out twice)"
    );
}

/// Records a commit that failed for the disk's sake; the first of a run is
/// logged as the start of an outage.
fn note_failure(failing: &Mutex<Option<WriteFailure>>, cause: Unwritable, error: &str) {
    let mut failing = failing.lock().unwrap_or_else(PoisonError::into_inner);
    match failing.as_mut() {
        Some(f) => {
            f.cause = cause;
            f.error = error.to_string();
            f.commits += 1;
        }
        None => {
            tracing::error!(
                error,
                cause = cause.cause(),
                "the database cannot write; pushes are answered 503 and /readyz fails until it can"
            );
            *failing = Some(WriteFailure {
                cause,
                error: error.to_string(),
                since: Instant::now(),
                commits: 1,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Durability, Store};

    fn batch(node: &str, seqs: std::ops::Range<i64>, at: DateTime<Utc>) -> Vec<OwnedSample> {
        seqs.map(|seq| OwnedSample {
            node: node.to_string(),
            cores: Some(8),
            at: Some(at),
            seq: Some(seq),
            agent_version: None,
        })
        .collect()
    }

    fn started(dir: &std::path::Path) -> (Arc<Connection>, IngestQueue) {
        let mut store = Store::open(&dir.join("db.sqlite"), Durability::Durable).unwrap();
        store.accounts().create_account("acme", Utc::now()).unwrap();
        let store = Arc::new(Connection::single(store, "writer"));
        let metrics = Arc::new(ServiceMetrics::default());
        let (queue, _writer) = IngestQueue::start(store.clone(), AgeLimits::default(), metrics);
        (store, queue)
    }

    /// Everything logged at WARN and above while `f` runs on this thread.
    fn logged(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = buffer.0.lock().unwrap().clone();
        String::from_utf8(text).unwrap()
    }

    #[test]
    fn conflicting_resends_are_logged_once_per_request_with_the_first_node_and_seq() {
        let now = Utc::now();
        let (reply, _answer) = oneshot::channel();
        let mut samples = batch("node-1", 1..4, now);
        samples.extend(batch("node-2", 7..9, now));
        let job = Job {
            account: "acme".into(),
            cluster: "prod".into(),
            received_at: now,
            samples,
            reply,
        };
        let conflicting = Outcome::Rejected(Rejection::ConflictingResend);
        let outcomes = [
            Outcome::Accepted,
            conflicting,
            Outcome::Duplicate,
            conflicting,
            conflicting,
        ];
        let log = logged(|| warn_of_conflicting_resends(&job, &outcomes));
        assert_eq!(log.lines().count(), 1, "{log}");
        for part in [
            "account=acme",
            "cluster=prod",
            "count=3",
            "first_node=node-1",
            "first_seq=2",
        ] {
            assert!(log.contains(part), "{part} in {log}");
        }
        let none = [Outcome::Accepted, Outcome::Duplicate, Outcome::Accepted];
        assert_eq!(logged(|| warn_of_conflicting_resends(&job, &none)), "");
    }

    /// A push of `samples` samples for the writer's queue; its answer is dropped.
    fn job(samples: usize) -> Job {
        let now = Utc::now();
        Job {
            account: "acme".into(),
            cluster: "c1".into(),
            received_at: now,
            samples: batch("node-1", 0..i64::try_from(samples).unwrap(), now),
            reply: oneshot::channel().0,
        }
    }

    #[test]
    fn a_lone_push_is_committed_at_once_and_pushes_that_come_several_at_a_time_wait_for_more() {
        let (tx, rx) = mpsc::sync_channel(QUEUE_REQUESTS);
        let mut gathering = Gathering {
            lingers: true,
            several: false,
        };
        // One client, one push at a time: no wait.
        let started = Instant::now();
        let (jobs, samples) = gathering.group(&rx, job(1));
        assert_eq!((jobs.len(), samples), (1, 1));
        assert!(
            started.elapsed() < LINGER_LONGEST,
            "{:?}",
            started.elapsed()
        );

        // Two pushes queued together: this group is taken at once...
        tx.send(job(1)).unwrap();
        let started = Instant::now();
        let (jobs, _) = gathering.group(&rx, job(1));
        assert_eq!(jobs.len(), 2);
        assert!(
            started.elapsed() < LINGER_LONGEST,
            "{:?}",
            started.elapsed()
        );

        // ...and the next, still under LINGER_SAMPLES with what is queued,
        // waits all of LINGER_LONGEST for more.
        tx.send(job(3)).unwrap();
        let started = Instant::now();
        let (jobs, samples) = gathering.group(&rx, job(1));
        let waited = started.elapsed();
        assert_eq!((jobs.len(), samples), (2, 4));
        assert!(waited >= LINGER_LONGEST, "waited {waited:?} for more");
        assert!(waited < LINGER_LONGEST * 20, "waited {waited:?}");

        // SQLite's writer never waits, however pushes come.
        let mut sqlite = Gathering {
            lingers: false,
            several: true,
        };
        let started = Instant::now();
        let (jobs, _) = sqlite.group(&rx, job(1));
        assert_eq!(jobs.len(), 1);
        assert!(
            started.elapsed() < LINGER_LONGEST,
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_waiting_group_takes_what_comes_until_it_is_large_enough_and_no_group_passes_its_size() {
        let (tx, rx) = mpsc::sync_channel(QUEUE_REQUESTS);
        // What comes while it waits joins it, with what queued behind.
        tx.send(job(2)).unwrap();
        tx.send(job(3)).unwrap();
        let (mut jobs, mut samples) = (vec![job(1)], 1);
        linger(&rx, &mut jobs, &mut samples);
        assert_eq!((jobs.len(), samples), (3, 6));

        // Once it holds LINGER_SAMPLES it waits no longer.
        tx.send(job(LINGER_SAMPLES)).unwrap();
        let started = Instant::now();
        let (mut jobs, mut samples) = (vec![job(1)], 1);
        linger(&rx, &mut jobs, &mut samples);
        assert_eq!((jobs.len(), samples), (2, LINGER_SAMPLES + 1));
        assert!(
            started.elapsed() < LINGER_LONGEST,
            "{:?}",
            started.elapsed()
        );

        // A group stops taking at GROUP_SAMPLES; the rest waits its turn.
        for n in [GROUP_SAMPLES / 2, GROUP_SAMPLES / 2, 1] {
            tx.send(job(n)).unwrap();
        }
        let mut gathering = Gathering {
            lingers: true,
            several: true,
        };
        let (jobs, samples) = gathering.group(&rx, job(1));
        assert_eq!((jobs.len(), samples), (3, GROUP_SAMPLES + 1));
        assert_eq!(rx.try_recv().map(|j| j.samples.len()).ok(), Some(1));
    }

    fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn a_full_disk_fails_the_commit_as_unwritable_and_the_writer_takes_the_same_samples_once_there_is_room(
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (store, queue) = started(dir.path());
        let now = Utc::now();
        let push = |seqs| {
            block_on(queue.submit("acme".into(), "c1".into(), now, batch("node-1", seqs, now)))
        };
        let cap = |capped| {
            store
                .with(|s| {
                    s.cap_size_for_tests(capped);
                    Ok(())
                })
                .unwrap()
        };
        cap(true);
        for attempt in 1..=2 {
            match push(1..501) {
                Err(SubmitError::Store(f)) => {
                    assert_eq!(f.unwritable, Some(Unwritable::DiskFull), "{f}")
                }
                other => panic!("expected a failed commit, got {other:?}"),
            }
            let failure = queue.write_failure().expect("the failure is recorded");
            assert_eq!(failure.cause, Unwritable::DiskFull);
            assert_eq!(failure.commits, attempt);
            assert!(
                failure.describe().contains("disk is full"),
                "{}",
                failure.describe()
            );
        }

        cap(false);
        let outcomes = push(1..501).expect("the writer is still there and commits");
        assert!(outcomes.iter().all(|o| *o == Outcome::Accepted));
        assert!(
            queue.write_failure().is_none(),
            "a commit clears the failure"
        );
        // Nothing of the failed attempts was stored: the resend is not a duplicate of them.
        let again = push(1..501).unwrap();
        assert!(again.iter().all(|o| *o == Outcome::Duplicate));
    }

    #[test]
    fn a_panic_while_the_writer_holds_the_connection_fails_that_group_only() {
        let dir = tempfile::tempdir().unwrap();
        let (store, queue) = started(dir.path());
        let now = Utc::now();
        let push = |node: &str| {
            block_on(queue.submit("acme".into(), "c1".into(), now, batch(node, 1..3, now)))
        };
        store.panic_on_next_use();
        match push("node-1") {
            Err(SubmitError::Store(f)) => assert!(f.message.contains("panic"), "{f}"),
            other => panic!("expected the group to fail, got {other:?}"),
        }
        assert!(queue.writer_running(), "the writer thread survives");
        assert_eq!(
            push("node-1").unwrap(),
            vec![Outcome::Accepted, Outcome::Accepted],
            "nothing of the failed group was stored"
        );
    }

    #[test]
    fn a_handler_that_panicked_holding_the_connection_does_not_stop_ingest() {
        let dir = tempfile::tempdir().unwrap();
        let (store, queue) = started(dir.path());
        let held = store.clone();
        let caught = std::thread::spawn(move || {
            held.with(|_| -> Result<(), crate::store::StoreError> {
                panic!("a handler fails while it holds the store")
            })
        })
        .join()
        .expect("the panic is caught where the connection is held");
        assert!(caught.is_err());
        let now = Utc::now();
        let outcomes =
            block_on(queue.submit("acme".into(), "c1".into(), now, batch("node-1", 1..3, now)))
                .unwrap();
        assert_eq!(outcomes, vec![Outcome::Accepted, Outcome::Accepted]);
    }

    #[test]
    fn a_run_of_disk_failures_keeps_its_start_its_count_and_the_last_cause() {
        let failing = Mutex::new(None);
        note_failure(&failing, Unwritable::DiskError, "disk I/O error");
        note_failure(&failing, Unwritable::DiskFull, "database or disk is full");
        let f = failing.lock().unwrap().clone().unwrap();
        assert_eq!((f.cause, f.commits), (Unwritable::DiskFull, 2));
    }
}
