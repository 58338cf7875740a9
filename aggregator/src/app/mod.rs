//! Building and running the service: the store connections, the admin token, the ingest writer, the billing job, the outbox workers (bill lines, notices) and the HTTP server.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use prometheus_client::registry::Registry;
use shared::clock::Clock;
use tokio::sync::{watch, Semaphore};

use crate::config::Config;
use crate::config::Database;
use crate::http::automatic_errors::{Answered, Answers, Rewriting};
use crate::http::{router, MAX_HEAD_BYTES};
use crate::ingest::IngestQueue;
use crate::metrics::ServiceMetrics;
use crate::security::tls::{self, Tls};
use crate::security::tokens::hash_token;
use crate::state::AppState;
use crate::store::{Connection, Durability, Store};

/// Connections served at once at most. Past it the service stops accepting
/// (the kernel's backlog holds the rest) until one closes; an idle one closes
/// within the header read timeout. Without a cap, idle or slow connections
/// pinned a descriptor each until the open-files limit, and then neither a
/// probe nor SQLite could open anything.
pub const MAX_CONNECTIONS: usize = 4_096;
/// Descriptors left for the database, its journal and the rest when a low
/// open-files limit lowers the cap.
const RESERVED_DESCRIPTORS: usize = 64;

/// Knobs tests turn; production uses the defaults.
#[derive(Debug, Clone)]
pub struct Timing {
    pub billing_poll: Duration,
    pub outbox_poll: Duration,
    /// How often the TLS files and the admin token's file are looked at for a change.
    pub file_poll: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            billing_poll: crate::billing::job::DEFAULT_POLL,
            outbox_poll: Duration::from_secs(30),
            file_poll: crate::security::tls::DEFAULT_RELOAD_POLL,
        }
    }
}

pub struct Application {
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    writer: std::thread::JoinHandle<()>,
    timing: Timing,
    tls: Option<Arc<Tls>>,
    /// The admin token, when this start generated it (shown once).
    pub generated_admin_token: Option<String>,
}

/// The background loops `run` starts for `config`, by the names their
/// passes are counted under.
fn background_loops(config: &Config, tls: bool) -> Vec<&'static str> {
    let notices = &config.notices;
    [
        (true, crate::billing::job::NAME),
        (
            config.webhook.is_some(),
            crate::delivery::webhook::BILL_LINES,
        ),
        (
            notices.webhook.is_some(),
            crate::delivery::notices::BY_WEBHOOK,
        ),
        (notices.smtp.is_some(), crate::delivery::notices::BY_EMAIL),
        (tls, crate::security::TLS_FILES),
        (
            config.admin_token_file.is_some(),
            crate::security::ADMIN_TOKEN_FILE,
        ),
    ]
    .into_iter()
    .filter_map(|(runs, name)| runs.then_some(name))
    .collect()
}

impl Application {
    /// Opens the database (creating it and its directory), binds the listen
    /// address, and prepares everything; nothing runs until [`Application::run`].
    pub async fn build(
        config: Config,
        clock: Arc<dyn Clock>,
        timing: Timing,
    ) -> anyhow::Result<Application> {
        Application::build_on(config, clock, timing, None).await
    }

    /// [`Application::build`], serving `handed` (a listening socket handed
    /// over by a supervisor, whose address is `config.listen`) when given
    /// instead of binding the address.
    pub async fn build_on(
        config: Config,
        clock: Arc<dyn Clock>,
        timing: Timing,
        handed: Option<std::net::TcpListener>,
    ) -> anyhow::Result<Application> {
        if let Database::Sqlite(path) = &config.database {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("create the database directory {}", dir.display()))?;
            }
        }
        // PostgreSQL's client blocks: the store is only ever used off the async workers.
        let (opened, config) = {
            let clock = clock.clone();
            tokio::task::spawn_blocking(move || {
                let opened = open_stores(&config, clock.now());
                (opened, config)
            })
            .await
            .context("open the database")?
        };
        let (store, reader, tokens, admin_token_hash, generated_admin_token) = opened?;
        let legacy = {
            let reader = reader.clone();
            tokio::task::spawn_blocking(move || reader.with(|s| s.reads().names_outside_domain()))
                .await
                .context("read the names outside their domain")??
        };
        let tls = config
            .tls
            .clone()
            .map(Tls::load)
            .transpose()
            .context("HTTPS")?
            .map(Arc::new);
        let metrics = Arc::new(ServiceMetrics::default());
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let (queue, writer) =
            IngestQueue::start(store.clone(), config.billing.limits, metrics.clone());
        let listener = match handed {
            Some(handed) => {
                handed
                    .set_nonblocking(true)
                    .context("the socket handed over")?;
                tokio::net::TcpListener::from_std(handed).context("the socket handed over")?
            }
            None => tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("listen on {}", config.listen))?,
        };
        let state = Arc::new(AppState {
            store,
            reader,
            tokens,
            queue,
            config,
            clock,
            metrics,
            registry: Arc::new(registry),
            admin_token: crate::security::tokens::AdminToken::from_hash(admin_token_hash),
            outbox_wake: Arc::new(tokio::sync::Notify::new()),
            notice_wake: Arc::new(tokio::sync::Notify::new()),
            faults: Arc::default(),
            legacy_names: crate::store::LegacyNames::new(legacy),
            passes: Arc::default(),
            cluster_tokens: Default::default(),
        });
        for name in background_loops(&state.config, tls.is_some()) {
            state.passes.expect(name);
        }
        Ok(Application {
            listener,
            state,
            writer,
            timing,
            tls,
            generated_admin_token,
        })
    }

    /// The passes its background loops have begun (each expected from the
    /// start, see [`background_loops`]), for tests that wait
    /// until every loop has looked again.
    pub fn passes(&self) -> Arc<crate::background::Passes> {
        self.state.passes.clone()
    }

    /// The fault hooks of this service, for tests of panic containment.
    pub fn fault_hooks(&self) -> FaultHooks {
        FaultHooks {
            faults: self.state.faults.clone(),
            connections: self.state.connections().map(Arc::clone),
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish,
    /// stops the background jobs and waits for the ingest writer to commit
    /// what it holds.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Application {
            listener,
            state,
            writer,
            timing,
            tls,
            ..
        } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        let billing = {
            let (state, stop) = (state.clone(), stop_rx.clone());
            supervise(
                "billing",
                stop_rx.clone(),
                state.metrics.clone(),
                move || crate::billing::job::run(state.clone(), timing.billing_poll, stop.clone()),
            )
        };
        let delivery = state.config.webhook.clone().map(|webhook| {
            let (state, stop) = (state.clone(), stop_rx.clone());
            supervise(
                "outbox",
                stop_rx.clone(),
                state.metrics.clone(),
                move || {
                    crate::delivery::webhook::run(
                        state.clone(),
                        webhook.clone(),
                        timing.outbox_poll,
                        stop.clone(),
                    )
                },
            )
        });
        let notices = &state.config.notices;
        let notice_delivery = (notices.webhook.is_some() || notices.smtp.is_some()).then(|| {
            let (state, stop) = (state.clone(), stop_rx.clone());
            supervise(
                "notices",
                stop_rx.clone(),
                state.metrics.clone(),
                move || {
                    crate::delivery::notices::run(state.clone(), timing.outbox_poll, stop.clone())
                },
            )
        });
        let reload = tls.clone().map(|tls| {
            tokio::spawn(crate::security::tls::watch_files(
                tls,
                state.metrics.clone(),
                crate::security::Watch {
                    clock: state.clock.clone(),
                    poll: timing.file_poll,
                    passes: state.passes.clone(),
                    stop: stop_rx.clone(),
                },
            ))
        });
        let admin_token_watch = state.config.admin_token_file.clone().map(|path| {
            tokio::spawn(crate::security::tokens::watch_admin_token_file(
                state.admin_token.clone(),
                path,
                crate::security::Watch {
                    clock: state.clock.clone(),
                    poll: timing.file_poll,
                    passes: state.passes.clone(),
                    stop: stop_rx.clone(),
                },
            ))
        });
        let limits = ConnectionLimits {
            max_connections: connection_cap(),
            header_read_timeout: state.config.request_timeout,
        };
        let listen = listener.local_addr()?;
        match &tls {
            Some(tls) => tracing::info!(
                listen = %listen,
                scheme = "https",
                cert = %tls.files().cert.display(),
                client_certificates = if tls.requires_client_certificate() { "required to push" } else { "not asked" },
                database = %state.config.database,
                zone = state.config.billing.zone.name(),
                max_connections = limits.max_connections,
                "aggregator serving"
            ),
            None => {
                tracing::info!(listen = %listen, scheme = "http", database = %state.config.database, zone = state.config.billing.zone.name(), max_connections = limits.max_connections, "aggregator serving");
            }
        }
        for hop in &state.config.plaintext_hops {
            tracing::warn!(hop = %hop, "clear text beyond this machine (insecure_plaintext): tokens, bills or notices cross this hop unencrypted unless something in between encrypts them");
        }
        let app = router(state.clone());
        let app = match &tls {
            Some(tls) if tls.requires_client_certificate() => {
                app.layer(axum::middleware::from_fn_with_state(
                    state.metrics.clone(),
                    crate::http::transport::require_client_certificate_to_push,
                ))
            }
            _ => app,
        };
        let transport = Transport {
            tls,
            metrics: state.metrics.clone(),
        };
        serve(listener, app, shutdown, limits, transport).await;
        let _ = stop_tx.send(true);
        for watch in [reload, admin_token_watch].into_iter().flatten() {
            let _ = watch.await;
        }
        let _ = billing.await;
        if let Some(d) = delivery {
            let _ = d.await;
        }
        if let Some(d) = notice_delivery {
            let _ = d.await;
        }
        // The last handle to the queue goes with the state: the writer drains and stops.
        drop(state);
        tokio::task::spawn_blocking(move || writer.join())
            .await
            .ok();
        Ok(())
    }
}

/// Runs a background job (billing, delivery) and starts it again when it
/// panics, a second later, until the service stops: a bug in a job's own
/// loop (its store work is already contained by `Connection`) must not end
/// billing for good while liveness stays green. Each restart is counted in
/// `core_meter_panics_caught_total{place="job:NAME"}` and logged.
fn supervise<F, Fut>(
    name: &'static str,
    stop: watch::Receiver<bool>,
    metrics: Arc<ServiceMetrics>,
    job: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            match tokio::spawn(job()).await {
                Ok(()) => return,
                Err(e) if e.is_panic() => {
                    let message = crate::store::panic_message(e.into_panic().as_ref());
                    metrics
                        .panics
                        .get_or_create(&crate::metrics::PlaceLabels {
                            place: format!("job:{name}"),
                        })
                        .inc();
                    tracing::error!(job = name, panic = %message, "a background job panicked; it starts again in a second");
                    if *stop.borrow() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(_) => return,
            }
        }
    })
}

/// Makes the running service panic on purpose, where a bug would: in a
/// request handler, or while a store connection is held. Only tests call it.
#[derive(Clone)]
pub struct FaultHooks {
    faults: Arc<crate::state::Faults>,
    connections: [Arc<Connection>; 3],
}

impl FaultHooks {
    /// The next request's handler panics.
    pub fn panic_in_next_request(&self) {
        self.faults
            .panic_in_next_request
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// The next use of the named connection (`writer`, `reader` or `tokens`)
    /// panics while holding it.
    pub fn panic_in_next_use_of(&self, connection: &str) {
        self.connections
            .iter()
            .find(|c| c.name() == connection)
            .unwrap_or_else(|| panic!("no store connection named {connection:?}"))
            .panic_on_next_use();
    }
}

/// The writing, reading and token connections, and the admin token's hash
/// (with the token when this start generated it).
type Opened = (
    Arc<Connection>,
    Arc<Connection>,
    Arc<Connection>,
    [u8; 32],
    Option<String>,
);

fn open_stores(config: &Config, now: chrono::DateTime<chrono::Utc>) -> anyhow::Result<Opened> {
    // Notices (billing's licence_short, the lifecycle's) are issued through the writer.
    let channels = config.notices.channels();
    let (trial_images, log_storage) = (config.trial_image_authorizations, config.log_storage);
    let open = move |database: &Database, writes: bool| {
        let mut store = Store::connect(database, Durability::Durable)?;
        store.set_trial_image_authorizations(trial_images);
        store.set_log_storage_terms(log_storage);
        if writes {
            store.set_notice_channels(channels);
        }
        Ok(store)
    };
    let connection = |name: &'static str, writes: bool| -> anyhow::Result<Arc<Connection>> {
        let store = open(&config.database, writes)
            .with_context(|| format!("open the {name} connection to {}", config.database))?;
        let database = config.database.clone();
        Ok(Arc::new(Connection::new(store, name, move || {
            open(&database, writes)
        })))
    };
    let store = connection("writer", true)?;
    let reader = connection("reader", false)?;
    let tokens = connection("tokens", false)?;
    let (admin_token_hash, generated_admin_token) = match &config.admin_token {
        Some(t) => (hash_token(t.expose()), None),
        None => {
            let (generated, hash) = store.with(|s| {
                Ok((
                    s.tokens().generate_admin_token(now)?,
                    s.tokens().admin_token_hash()?,
                ))
            })?;
            let hash = hash.context("the admin token hash was just stored")?;
            let hash = <[u8; 32]>::try_from(hash.as_slice())
                .context("the stored admin token hash is not 32 bytes")?;
            (hash, generated)
        }
    };
    Ok((
        store,
        reader,
        tokens,
        admin_token_hash,
        generated_admin_token,
    ))
}

/// How connections are spoken: TLS when set, plain HTTP otherwise.
struct Transport {
    tls: Option<Arc<Tls>>,
    metrics: Arc<ServiceMetrics>,
}

/// What one client may hold of the server.
#[derive(Debug, Clone, Copy)]
struct ConnectionLimits {
    max_connections: usize,
    /// A request's head must arrive within this, and an idle kept-alive
    /// connection is closed after it. It is `request_timeout_secs`, which
    /// bounds the rest of the request (the body and the answer).
    header_read_timeout: Duration,
}

/// [`MAX_CONNECTIONS`], or fewer when the open-files limit is lower.
fn connection_cap() -> usize {
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| open_files_soft_limit(&t));
    soft.map_or(MAX_CONNECTIONS, |n| {
        n.saturating_sub(RESERVED_DESCRIPTORS)
            .clamp(1, MAX_CONNECTIONS)
    })
}

/// The soft "Max open files" of `/proc/self/limits`; `None` when unlimited.
fn open_files_soft_limit(limits: &str) -> Option<usize> {
    let rest = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?;
    rest.split_whitespace().next()?.parse().ok()
}

/// Serves HTTP/1 until `shutdown` resolves, then lets the connections finish
/// what they are doing. `axum::serve` sets no timer, so hyper's header read
/// timeout never fired: a client sending its head a byte a second held its
/// connection for ever. Here the head has a deadline and connections a cap.
async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: ConnectionLimits,
    transport: Transport,
) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut shutdown = pin!(shutdown);
    let mut full = false;
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                full = false;
                slot
            }
            Err(_) => {
                if !full {
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "connection cap reached; accepting again when one closes"
                    );
                    full = true;
                }
                tokio::select! {
                    slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                    () = &mut shutdown => break,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => (stream, peer),
                Err(e) => {
                    if !is_connection_error(&e) {
                        // Out of descriptors or memory: wait rather than spin.
                        tracing::warn!(error = %e, "cannot accept a connection; trying again in a second");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let watcher = graceful.watcher();
        let app = app.clone();
        match &transport.tls {
            None => {
                let app = tower_http::add_extension::AddExtension::new(
                    app,
                    tls::Transport {
                        client_certificate: false,
                        peer: Some(peer),
                    },
                );
                tokio::spawn(async move {
                    serve_connection(stream, app, limits, watcher).await;
                    drop(slot);
                });
            }
            Some(tls) => {
                let acceptor = tls.acceptor();
                let metrics = transport.metrics.clone();
                tokio::spawn(async move {
                    // The handshake has the head's deadline: a client that
                    // opens and says nothing holds a slot no longer.
                    let shaken =
                        tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream))
                            .await;
                    match shaken {
                        Ok(Ok(stream)) => {
                            let client_certificate =
                                stream.get_ref().1.peer_certificates().is_some();
                            let app = tower_http::add_extension::AddExtension::new(
                                app,
                                tls::Transport {
                                    client_certificate,
                                    peer: Some(peer),
                                },
                            );
                            serve_connection(stream, app, limits, watcher).await;
                        }
                        Ok(Err(e)) => {
                            metrics.tls_handshake_failures.inc();
                            tracing::debug!(error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            metrics.tls_handshake_failures.inc();
                            tracing::debug!("TLS handshake timed out");
                        }
                    }
                    drop(slot);
                });
            }
        }
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Serves one connection's HTTP/1 requests until it closes or the server stops.
async fn serve_connection<S>(
    stream: S,
    app: tower_http::add_extension::AddExtension<axum::Router, tls::Transport>,
    limits: ConnectionLimits,
    watcher: hyper_util::server::graceful::Watcher,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // hyper answers a head it cannot parse itself; the writer gives those
    // answers the API's error body (`automatic_errors`).
    let answers = Answers::default();
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(
            TokioIo::new(Rewriting::new(stream, answers.clone())),
            Answered::new(TowerToHyperService::new(app), answers),
        );
    if let Err(e) = watcher.watch(connection).await {
        tracing::debug!(error = %e, "connection closed");
    }
}

/// An error of one connection that the next accept does not share.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::ConnectionRefused | K::ConnectionAborted | K::ConnectionReset
    )
}

/// Resolves on SIGTERM or Ctrl-C.
/// The settings as `Config::load` reads them, PostgreSQL URLs read as the
/// store's driver reads them (the transport policy's one question about them).
pub fn load_config(
    flags: &crate::config::Flags,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Config> {
    Config::load(flags, env, &crate::store::db::postgres_is_private)
}

pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = terminate => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("stopping: finishing requests in flight");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_job_that_panics_is_started_again_and_counted() {
        let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let metrics = Arc::new(ServiceMetrics::default());
        let (_stop_tx, stop) = watch::channel(false);
        let counted = runs.clone();
        let job = supervise("test", stop, metrics.clone(), move || {
            let counted = counted.clone();
            async move {
                if counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                    panic!("a bug in the job's loop");
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), job)
            .await
            .expect("the job ran again and ended")
            .unwrap();
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 2);
        let restarts = metrics
            .panics
            .get_or_create(&crate::metrics::PlaceLabels {
                place: "job:test".into(),
            })
            .get();
        assert_eq!(restarts, 1);
    }

    #[test]
    fn the_connection_cap_follows_a_low_open_files_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             63704                63704                processes \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(open_files_soft_limit(limits), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files     \n";
        assert_eq!(open_files_soft_limit(unlimited), None);
        assert_eq!(open_files_soft_limit(""), None);
        assert!((1..=MAX_CONNECTIONS).contains(&connection_cap()));
    }

    /// The settings as `load_config` reads them (the store's reading of
    /// PostgreSQL URLs).
    fn load(
        file: Option<&str>,
        env: &[(&str, &str)],
        flags: crate::config::Flags,
    ) -> anyhow::Result<Config> {
        crate::config::tests::load_reading(file, env, flags, &crate::store::db::postgres_is_private)
    }

    #[test]
    fn postgres_beyond_loopback_needs_sslmode_require_unless_insecure_plaintext() {
        for private in [
            "postgres://core:pw@127.0.0.1:5432/core",
            "postgres://core@localhost/core",
            "postgresql://core@[::1]:5432/core",
            "postgres://core:pw@db.internal:5432/core?sslmode=require",
            "postgres://core@db.internal/core?sslmode=require&sslrootcert=/ca/ca.crt",
            "postgres://core@/core?host=/var/run/postgresql",
        ] {
            assert!(crate::store::db::postgres_is_private(private), "{private}");
            let c = load(
                None,
                &[("CORE_METER_DATABASE", private)],
                crate::config::Flags::default(),
            );
            assert!(c.is_ok(), "{private}: {:?}", c.err());
        }
        for public in [
            "postgres://core:pw@db.internal:5432/core",
            "postgres://core@10.0.0.7/core?sslmode=prefer",
            "postgres://core@127.0.0.1,db.internal/core",
        ] {
            assert!(!crate::store::db::postgres_is_private(public), "{public}");
            let e = load(
                None,
                &[("CORE_METER_DATABASE", public)],
                crate::config::Flags::default(),
            )
            .unwrap_err()
            .to_string();
            assert!(
                e.starts_with("setting database") && e.contains("sslmode=require"),
                "{e}"
            );
            assert!(!e.contains(":pw@"), "the password stays out: {e}");
            let c = load(
                None,
                &[
                    ("CORE_METER_DATABASE", public),
                    ("CORE_METER_INSECURE_PLAINTEXT", "true"),
                ],
                crate::config::Flags::default(),
            );
            assert!(c.is_ok(), "{public}");
        }
    }

    #[test]
    fn the_hops_insecure_plaintext_lets_through_are_named_for_a_warning_at_start() {
        let c = load(
            Some(
                "listen = \"0.0.0.0:8080\"\ninsecure_plaintext = true\n\
                 database = \"postgres://core:pw@db.internal/core?sslmode=require&sslmode=disable\"\n\
                 [notices]\nsmtp_relay = \"smtp://relay.internal:587?tls=opportunistic&tls=required\"\n\
                 smtp_from = \"billing@example.com\"\n",
            ),
            &[],
            crate::config::Flags::default(),
        )
        .unwrap();
        assert_eq!(
            c.plaintext_hops,
            [
                "listen: plain HTTP on 0.0.0.0:8080",
                "notices.smtp_relay: mail in clear text to relay.internal",
                "database: PostgreSQL without sslmode=require",
            ]
        );
        // Read as the drivers read them, neither URL is encrypted: without the
        // switch both are refused.
        for (key, env) in [
            (
                "setting database",
                (
                    "CORE_METER_DATABASE",
                    "postgres://core@db.internal/core?sslmode=require&sslmode=disable",
                ),
            ),
            (
                "setting database",
                (
                    "CORE_METER_DATABASE",
                    "postgres://core@db.internal/core?host=/var/run/postgresql",
                ),
            ),
        ] {
            let e = load(None, &[env], crate::config::Flags::default())
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(key), "{e}");
        }
        let e = load(
            None,
            &[
                (
                    "CORE_METER_NOTICES_SMTP_RELAY",
                    "smtp://relay.internal:587?tls=opportunistic&tls=required",
                ),
                ("CORE_METER_NOTICES_SMTP_FROM", "billing@example.com"),
            ],
            crate::config::Flags::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("setting notices.smtp_relay"), "{e}");
        assert!(load(None, &[], crate::config::Flags::default())
            .unwrap()
            .plaintext_hops
            .is_empty());
    }
}
