//! `agent run`: sample at start and then every interval, spool each sample, push what is pending, serve health and metrics, stop cleanly on SIGTERM.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::SubsecRound;
use prometheus_client::registry::Registry;
use shared::clock::Clock;
use shared::sample::Rejection;
use shared::wire::{AgentSample, SampleStatus, MAX_BATCH_SAMPLES};
use tokio::time::Instant;

use crate::identity::TokenSource;
use crate::metrics::Metrics;
use crate::pusher::{Backoff, PushError, Pusher};
use crate::sampler::Machine;
use crate::schedule::{next_tick, offset_secs, wait};
use crate::spool::{AppendError, Spool};
use crate::tls::ClientTls;

pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Everything `agent run` is told.
#[derive(Debug, Clone)]
pub struct Settings {
    pub aggregator: String,
    /// What an `https://` aggregator is verified against, and the client certificate.
    pub tls: ClientTls,
    pub token: TokenSource,
    pub node: String,
    pub spool_dir: PathBuf,
    pub machine: Machine,
    pub interval_secs: u64,
    pub spread_secs: u64,
    pub listen: SocketAddr,
    pub max_spool_samples: usize,
    /// Samples kept in memory while the spool refuses writes.
    pub max_memory_samples: usize,
    pub batch_size: usize,
    pub push_timeout: Duration,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// How long the last push on SIGTERM may take.
    pub shutdown_grace: Duration,
    /// Whether the node's images are listed with each sample (SPEC 10.2).
    pub images: ImagesMode,
}

/// `--images`: off; on, through this socket or the first runtime socket
/// found; or auto, on whenever a runtime socket is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImagesMode {
    Off,
    On(Option<PathBuf>),
    Auto,
}

/// How long listing the images may take.
const IMAGES_TIMEOUT: Duration = Duration::from_secs(30);
/// The node's newest list not yet taken by the aggregator, in the spool's directory.
const PENDING_IMAGES: &str = "images.json";

/// The samples of one batch rejected for one reason.
struct Rejected {
    count: u64,
    first_seq: u64,
    last_seq: u64,
    example_at: chrono::DateTime<chrono::Utc>,
}

impl Rejected {
    fn first(sample: &AgentSample) -> Rejected {
        Rejected {
            count: 1,
            first_seq: sample.seq,
            last_seq: sample.seq,
            example_at: sample.at,
        }
    }

    fn add(&mut self, sample: &AgentSample) {
        self.count += 1;
        self.first_seq = self.first_seq.min(sample.seq);
        self.last_seq = self.last_seq.max(sample.seq);
    }
}

/// The agent's state between ticks.
struct Agent {
    settings: Settings,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    spool: Option<Spool>,
    /// Samples that could not be written to disk, by seq; pushed all the same.
    memory: BTreeMap<u64, AgentSample>,
    /// The last seq `memory_seq` handed out, so that it never repeats one in
    /// this process even after that sample was delivered.
    last_memory_seq: u64,
    pusher: Pusher,
    /// When the next sample is due, and this node's offset in the interval.
    next_sample: chrono::DateTime<chrono::Utc>,
    offset: u64,
    /// False once stopping: the last push takes no more samples.
    sampling: bool,
    /// The newest image list the aggregator has not taken yet.
    pending_images: Option<serde_json::Value>,
    /// The last listing's failure, said once while it lasts.
    images_fault: Option<String>,
    /// What `/readyz` says of the images.
    images_status: Arc<std::sync::Mutex<String>>,
}

/// Runs until SIGTERM or SIGINT, then tries one last push and returns.
pub async fn run(settings: Settings, clock: Arc<dyn Clock>) -> anyhow::Result<()> {
    anyhow::ensure!(
        settings.interval_secs > 0,
        "--interval-secs must be at least 1"
    );
    anyhow::ensure!(
        (1..=MAX_BATCH_SAMPLES).contains(&settings.batch_size),
        "--batch-size must be 1 to {MAX_BATCH_SAMPLES}"
    );
    anyhow::ensure!(
        settings.max_spool_samples > 0,
        "--max-spool-samples must be at least 1"
    );
    let metrics = Arc::new(Metrics::default());
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| anyhow::anyhow!("listen on {}: {e}", settings.listen))?;
    tracing::info!(listen = %listener.local_addr()?, "serving /healthz, /readyz and /metrics");
    let images_status = Arc::new(std::sync::Mutex::new(match &settings.images {
        ImagesMode::Off => "images: off".to_string(),
        _ => "images: not listed yet".to_string(),
    }));
    tokio::spawn(crate::server::serve(
        listener,
        Arc::new(registry),
        ready.clone(),
        images_status.clone(),
    ));

    let offset = offset_secs(&settings.node, settings.spread_secs, settings.interval_secs);
    metrics
        .offset_seconds
        .set(i64::try_from(offset).unwrap_or(i64::MAX));
    tracing::info!(
        node = %settings.node,
        aggregator = %settings.aggregator,
        verify_against = %settings.tls.roots(),
        client_cert = settings.tls.has_client_cert(),
        interval_secs = settings.interval_secs,
        offset_secs = offset,
        version = AGENT_VERSION,
        "agent started"
    );
    let pusher = Pusher::with_tls(&settings.aggregator, settings.push_timeout, &settings.tls)?;
    let mut agent = Agent {
        spool: None,
        memory: BTreeMap::new(),
        last_memory_seq: 0,
        pusher,
        next_sample: clock.now(),
        offset,
        sampling: true,
        pending_images: None,
        images_fault: None,
        images_status,
        clock,
        metrics,
        ready,
        settings,
    };
    agent.pending_images = std::fs::read(agent.settings.spool_dir.join(PENDING_IMAGES))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    agent.open_spool();

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut backoff = Backoff::new(agent.settings.backoff_base, agent.settings.backoff_cap);
    let mut retry_at: Option<Instant> = None;
    loop {
        let now = agent.clock.now();
        let until_sample = wait(now, agent.next_sample);
        let retry_wall = retry_at.and_then(|at| {
            let retry_in =
                chrono::TimeDelta::from_std(at.saturating_duration_since(Instant::now()));
            now.checked_add_signed(retry_in.ok()?)
        });
        let next_push = retry_wall.map_or(agent.next_sample, |r| r.min(agent.next_sample));
        agent.metrics.next_push.set(next_push.timestamp());
        let retry = retry_at.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
        let (push_now, sampled) = tokio::select! {
            _ = tokio::time::sleep(until_sample) => {
                agent.take_due_sample();
                (true, true)
            }
            _ = tokio::time::sleep_until(retry), if retry_at.is_some() => (true, false),
            // A manual clock moved: look again at what is due.
            () = agent.clock.moved() => (false, false),
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        if push_now {
            // A push may wait on a slow aggregator; SIGTERM must not.
            let pushed = tokio::select! {
                r = agent.push_pending() => r,
                _ = terminate.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
            };
            retry_at = match pushed {
                Ok(()) => {
                    backoff.reset();
                    None
                }
                Err(e @ PushError::Tls(_)) => {
                    // Never accepted and never quiet: a certificate this
                    // agent cannot verify may be someone else's.
                    let pause = backoff.next_wait();
                    tracing::error!(error = %e, attempt = backoff.attempts(), retry_in_ms = pause.as_millis() as u64, pending = agent.pending(), "push failed in TLS; samples stay in the spool, will retry");
                    Some(Instant::now() + pause)
                }
                Err(e) if e.retryable() => {
                    let pause = backoff.next_wait();
                    tracing::warn!(error = %e, attempt = backoff.attempts(), retry_in_ms = pause.as_millis() as u64, "push failed; will retry");
                    Some(Instant::now() + pause)
                }
                Err(e) => {
                    // Retrying at once will not help: say so loudly, keep the
                    // samples, and try again at the next sample.
                    tracing::error!(error = %e, "push refused; samples kept until the next interval");
                    None
                }
            };
            // The images come after the samples, so they never hold one back.
            if sampled {
                tokio::select! {
                    () = agent.list_images() => {}
                    _ = terminate.recv() => break,
                }
            }
            if retry_at.is_none() {
                tokio::select! {
                    () = agent.push_images() => {}
                    _ = terminate.recv() => break,
                }
            }
        }
    }

    tracing::info!(
        grace_ms = agent.settings.shutdown_grace.as_millis() as u64,
        "stopping: one last push"
    );
    agent.ready.store(false, Ordering::Relaxed);
    agent.sampling = false;
    match tokio::time::timeout(agent.settings.shutdown_grace, agent.push_pending()).await {
        Ok(Ok(())) => tracing::info!("stopped; nothing pending"),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, pending = agent.pending(), "stopped; samples stay in the spool")
        }
        Err(_) => tracing::warn!(
            pending = agent.pending(),
            "stopped; the last push ran out of time, samples stay in the spool"
        ),
    }
    if !agent.memory.is_empty() {
        tracing::error!(
            lost = agent.memory.len(),
            "samples that never reached the disk are lost at exit"
        );
    }
    Ok(())
}

impl Agent {
    /// Lists the node's images, when `--images` says so, and keeps the list
    /// (in the spool's directory, so a restart still sends it) until the
    /// aggregator takes it. A failure is said once while it lasts, in the
    /// log, the metrics and `/readyz`, and the listing tried at the next sample.
    async fn list_images(&mut self) {
        let socket = match &self.settings.images {
            ImagesMode::Off => return,
            ImagesMode::On(Some(socket)) => Some(socket.clone()),
            ImagesMode::On(None) | ImagesMode::Auto => {
                crate::images::find_socket(std::path::Path::new("/"))
            }
        };
        let listed = match socket {
            Some(socket) => crate::images::list(&socket, IMAGES_TIMEOUT).await,
            None if self.settings.images == ImagesMode::Auto => {
                self.set_images_status("images: auto, and no container runtime socket found");
                return;
            }
            None => Err(crate::images::ImagesError::NoSocket),
        };
        match listed {
            Ok((images, cut)) => {
                if cut > 0 {
                    tracing::warn!(
                        cut,
                        kept = images.len(),
                        "more images than a list holds; the first by ID are sent"
                    );
                }
                if self.images_fault.take().is_some() {
                    tracing::info!("the container runtime answers again");
                }
                self.metrics
                    .images_listed
                    .set(i64::try_from(images.len()).unwrap_or(i64::MAX));
                self.metrics.image_lists("listed");
                self.set_images_status(&format!("images: {} listed", images.len()));
                let mut images = images;
                let at = self.clock.now().trunc_subsecs(3);
                let mut list =
                    serde_json::json!({"node": self.settings.node, "at": at, "images": images});
                // At most 4 MiB, as the aggregator takes: the last by ID go.
                while list.to_string().len() > shared::wire::MAX_IMAGE_LIST_BYTES
                    && !images.is_empty()
                {
                    let keep = images.len() - images.len().div_ceil(10);
                    images.truncate(keep);
                    tracing::warn!(
                        kept = images.len(),
                        "the image list is over 4 MiB; the last by ID are left out"
                    );
                    list =
                        serde_json::json!({"node": self.settings.node, "at": at, "images": images});
                }
                let path = self.settings.spool_dir.join(PENDING_IMAGES);
                let tmp = path.with_extension("json.tmp");
                let kept = std::fs::write(&tmp, list.to_string())
                    .and_then(|()| std::fs::rename(&tmp, &path));
                if let Err(e) = kept {
                    tracing::warn!(error = %e, "cannot keep the image list on disk; it is kept in memory");
                }
                self.pending_images = Some(list);
            }
            Err(e) => {
                self.metrics.images_error(e.kind());
                let fault = e.to_string();
                if self.images_fault.as_ref() != Some(&fault) {
                    tracing::error!(error = %fault, "cannot list the node's images; samples go on, and the images are tried again at the next sample");
                }
                self.set_images_status(&format!("images: {fault}"));
                self.images_fault = Some(fault);
            }
        }
    }

    fn set_images_status(&self, status: &str) {
        if let Ok(mut s) = self.images_status.lock() {
            *s = status.to_string();
        }
    }

    /// Sends the pending image list; the aggregator's answer (stored, stale,
    /// or rejected) takes it off the node either way.
    async fn push_images(&mut self) {
        let Some(list) = self.pending_images.clone() else {
            return;
        };
        let token = match self.settings.token.current() {
            Ok(token) => token,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot read the cluster token; the image list waits");
                return;
            }
        };
        match self.pusher.push_images(&list, token.expose()).await {
            Ok(answer) => {
                self.metrics
                    .image_lists(answer["status"].as_str().unwrap_or("answered"));
                tracing::info!(status = %answer["status"], new = %answer["new_images"], "image list delivered");
                self.pending_images = None;
                let _ = std::fs::remove_file(self.settings.spool_dir.join(PENDING_IMAGES));
            }
            Err(e) => {
                self.metrics.images_error("push");
                tracing::warn!(error = %e, "cannot deliver the image list; it is sent again after the next push");
            }
        }
    }

    fn open_spool(&mut self) {
        if self.spool.is_some() {
            return;
        }
        match Spool::open(&self.settings.spool_dir, self.settings.max_spool_samples) {
            Ok(spool) => {
                // The samples held in memory meanwhile have seqs from the
                // clock (`memory_seq`), in the billions; the spool's own
                // count, one a sample, stays far below them.
                self.spool = Some(spool);
                self.ready.store(true, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot open the spool; samples are kept in memory");
                self.ready.store(false, Ordering::Relaxed);
            }
        }
        self.update_gauges();
    }

    fn pending(&self) -> usize {
        self.spool.as_ref().map_or(0, Spool::len) + self.memory.len()
    }

    fn update_gauges(&self) {
        let m = &self.metrics;
        m.samples_pending
            .set(i64::try_from(self.pending()).unwrap_or(i64::MAX));
        m.spool_bytes.set(
            self.spool
                .as_ref()
                .map_or(0, |s| i64::try_from(s.bytes()).unwrap_or(i64::MAX)),
        );
    }

    /// Counts the node's cores now and keeps the sample: on disk if it can,
    /// in memory if it cannot.
    fn take_sample(&mut self) {
        self.open_spool();
        let count = match self.settings.machine.cores() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "no sample this time");
                return;
            }
        };
        // Milliseconds are all the aggregator keeps.
        let at = self.clock.now().trunc_subsecs(3);
        self.metrics.samples_taken.inc();
        self.metrics.node_cores.set(i64::from(count.cores));
        let node = self.settings.node.clone();
        let appended = self
            .spool
            .as_mut()
            .map(|spool| spool.append(&node, count.cores, at, AGENT_VERSION));
        let kept_as = match appended {
            Some(Ok((sample, appended))) => {
                if appended.dropped > 0 {
                    tracing::warn!(
                        dropped = appended.dropped,
                        bound = self.settings.max_spool_samples,
                        "spool full; dropped the oldest samples"
                    );
                    self.metrics.dropped("spool_full", appended.dropped);
                }
                self.ready.store(true, Ordering::Relaxed);
                tracing::info!(seq = sample.seq, cores = count.cores, at = %at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true), "sample taken");
                None
            }
            Some(Err(AppendError::NotWritten { seq, source })) => {
                // The seq is reserved on disk: the sample keeps it, and only it.
                tracing::error!(seq, error = %source, "cannot write the sample to the spool; keeping it in memory under its reserved seq");
                Some(seq)
            }
            Some(Err(e @ AppendError::NoSeq { .. })) => {
                let seq = self.memory_seq(at);
                tracing::error!(seq, error = %e, "cannot write the seq to the spool; keeping the sample in memory under a seq from the clock (Unix seconds), which no restart hands out again");
                Some(seq)
            }
            None => Some(self.memory_seq(at)),
        };
        if let Some(seq) = kept_as {
            self.metrics.spool_write_errors.inc();
            self.ready.store(false, Ordering::Relaxed);
            tracing::info!(seq, cores = count.cores, at = %at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true), "sample taken (in memory only)");
            self.memory.insert(
                seq,
                AgentSample {
                    node,
                    cores: count.cores,
                    at,
                    seq,
                    agent_version: AGENT_VERSION.to_string(),
                },
            );
            while self.memory.len() > self.settings.max_memory_samples {
                self.memory.pop_first();
                self.metrics.dropped("memory_full", 1);
            }
        }
        self.update_gauges();
    }

    /// A seq when the spool cannot keep one (none could be opened, or its
    /// `seq` file refuses writes): above anything handed out before, and
    /// above the Unix time in seconds, so that an agent that restarts without
    /// its spool still never repeats one (unless the clock goes back).
    fn memory_seq(&mut self, at: chrono::DateTime<chrono::Utc>) -> u64 {
        let last = self
            .memory
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
            .max(self.last_memory_seq);
        let seq = (last + 1).max(u64::try_from(at.timestamp()).unwrap_or(0));
        self.last_memory_seq = seq;
        seq
    }

    /// Takes the sample now due and schedules the next.
    fn take_due_sample(&mut self) {
        self.take_sample();
        self.next_sample = next_tick(self.clock.now(), self.settings.interval_secs, self.offset);
    }

    /// Pushes every pending sample, oldest first, in batches.
    async fn push_pending(&mut self) -> Result<(), PushError> {
        loop {
            let batch = self.next_batch();
            if batch.is_empty() {
                self.update_gauges();
                return Ok(());
            }
            let token = match self.settings.token.current() {
                Ok(token) => token,
                Err(e) => {
                    let e = PushError::Token(format!("{e:#}"));
                    self.metrics.push_error(e.kind());
                    return Err(e);
                }
            };
            // A push can wait up to its timeout for an answer; the sample
            // that falls due meanwhile is taken on time all the same.
            let pusher = self.pusher.clone();
            let push = pusher.push(&batch, token.expose());
            tokio::pin!(push);
            let answer = loop {
                let until_sample = wait(self.clock.now(), self.next_sample);
                tokio::select! {
                    answer = &mut push => break answer,
                    _ = tokio::time::sleep(until_sample), if self.sampling => self.take_due_sample(),
                    () = self.clock.moved() => {}
                }
            };
            let results = match answer {
                Ok(r) => r,
                Err(e) => {
                    self.metrics.push_error(e.kind());
                    if matches!(e, PushError::Tls(_)) {
                        self.metrics.tls_errors.inc();
                    }
                    return Err(e);
                }
            };
            let mut rejected: BTreeMap<Option<Rejection>, Rejected> = BTreeMap::new();
            for (sample, result) in batch.iter().zip(&results) {
                match result.status {
                    SampleStatus::Accepted | SampleStatus::Duplicate => {
                        self.metrics.samples_pushed.inc();
                    }
                    SampleStatus::Rejected => {
                        rejected
                            .entry(result.reason)
                            .and_modify(|r| r.add(sample))
                            .or_insert_with(|| Rejected::first(sample));
                    }
                }
                self.forget(sample.seq);
            }
            for (reason, r) in &rejected {
                self.report_rejected(*reason, r);
            }
            if let Some(spool) = &self.spool {
                if let Err(e) = spool.sync() {
                    tracing::warn!(error = %e, "cannot sync the spool directory");
                }
            }
            self.metrics
                .last_push_success
                .set(self.clock.now().timestamp() as f64);
            self.update_gauges();
        }
    }

    /// One log line per rejection reason of a batch, however many samples it
    /// held: a node whose clock is wrong would otherwise write one line per
    /// sample and never say why.
    fn report_rejected(&self, reason: Option<Rejection>, r: &Rejected) {
        let node = &self.settings.node;
        let name = reason.map_or("unknown", Rejection::as_str);
        self.metrics.dropped("rejected", r.count);
        self.metrics.rejected(name, r.count);
        let example_at = r
            .example_at
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let node_now = self
            .clock
            .now()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let (count, first_seq, last_seq) = (r.count, r.first_seq, r.last_seq);
        let samples = if count == 1 { "sample" } else { "samples" };
        match reason {
            Some(Rejection::InFuture) => tracing::error!(
                %node, reason = name, count, first_seq, last_seq, %example_at, %node_now,
                "the aggregator refused {count} {samples} as in the future: this node's clock is ahead of the aggregator's; fix NTP on node {node}; dropped"
            ),
            Some(Rejection::TooOld) => tracing::error!(
                %node, reason = name, count, first_seq, last_seq, %example_at, %node_now,
                "the aggregator refused {count} {samples} as too old: this node's clock is behind the aggregator's (fix NTP on node {node}), or they waited longer than the aggregator's maximum age; dropped"
            ),
            Some(Rejection::ServiceStopped) => tracing::warn!(
                %node, reason = name, count, first_seq, last_seq, %example_at,
                "the aggregator refused {count} {samples}: this account's service is stopped (its licence or trial ended); dropped"
            ),
            Some(Rejection::ConflictingResend) => tracing::error!(
                %node, reason = name, count, first_seq, last_seq, %example_at,
                "the aggregator already holds other cores or another instant under the same node and seq for {count} {samples}: a seq was handed out twice (a bug in the agent, or a spool restored from an older copy or shared by two agents of node {node}); the stored samples stand, these are dropped"
            ),
            _ => tracing::warn!(
                %node, reason = name, count, first_seq, last_seq, %example_at,
                "the aggregator rejected {count} {samples} as {name}; dropped"
            ),
        }
    }

    fn next_batch(&mut self) -> Vec<AgentSample> {
        let size = self.settings.batch_size;
        let mut batch: Vec<AgentSample> = self.memory.values().take(size).cloned().collect();
        if let Some(spool) = self.spool.as_mut() {
            let loaded = spool.load(size);
            if loaded.corrupt > 0 {
                self.metrics.dropped("corrupt", loaded.corrupt);
            }
            batch.extend(loaded.samples);
        }
        batch.sort_by_key(|s| s.seq);
        batch.truncate(size);
        batch
    }

    fn forget(&mut self, seq: u64) {
        if self.memory.remove(&seq).is_some() {
            return;
        }
        if let Some(spool) = self.spool.as_mut() {
            if let Err(e) = spool.remove(seq) {
                tracing::error!(error = %e, seq, "cannot remove an acknowledged sample; it will be sent again");
            }
        }
    }
}
