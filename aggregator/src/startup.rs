//! Building and running the service: the store connections, the admin token, the ingest writer, the billing job, the outbox worker and the HTTP server.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use prometheus_client::registry::Registry;
use shared::clock::Clock;
use tokio::sync::watch;

use crate::auth::hash_token;
use crate::config::Config;
use crate::ingest_writer::IngestQueue;
use crate::routes::{router, AppState, State};
use crate::service_metrics::ServiceMetrics;
use crate::store::{Durability, Store};

/// Knobs tests turn; production uses the defaults.
#[derive(Debug, Clone)]
pub struct Timing {
    pub billing_poll: Duration,
    pub outbox_poll: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            billing_poll: crate::billing_job::DEFAULT_POLL,
            outbox_poll: Duration::from_secs(30),
        }
    }
}

pub struct Application {
    listener: tokio::net::TcpListener,
    state: State,
    writer: std::thread::JoinHandle<()>,
    timing: Timing,
    /// The admin token, when this start generated it (shown once).
    pub generated_admin_token: Option<String>,
}

impl Application {
    /// Opens the database (creating it and its directory), binds the listen
    /// address, and prepares everything; nothing runs until [`Application::run`].
    pub async fn build(
        config: Config,
        clock: Arc<dyn Clock>,
        timing: Timing,
    ) -> anyhow::Result<Application> {
        if let Some(dir) = config
            .database
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("create the database directory {}", dir.display()))?;
        }
        let mut store = Store::open(&config.database, Durability::Durable)
            .with_context(|| format!("open the database {}", config.database.display()))?;
        let reader = Store::open(&config.database, Durability::Durable)
            .context("open a reading connection")?;
        let (admin_token_hash, generated_admin_token) = match &config.admin_token {
            Some(t) => (hash_token(t).to_vec(), None),
            None => {
                let generated = store.generate_admin_token(clock.now())?;
                let hash = store
                    .admin_token_hash()?
                    .context("the admin token hash was just stored")?;
                (hash, generated)
            }
        };
        let metrics = Arc::new(ServiceMetrics::default());
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let store = Arc::new(Mutex::new(store));
        let (queue, writer) =
            IngestQueue::start(store.clone(), config.billing.limits, metrics.clone());
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listen on {}", config.listen))?;
        let state = Arc::new(AppState {
            store,
            reader: Arc::new(Mutex::new(reader)),
            queue,
            config,
            clock,
            metrics,
            registry: Arc::new(registry),
            admin_token_hash,
            outbox_wake: Arc::new(tokio::sync::Notify::new()),
        });
        Ok(Application {
            listener,
            state,
            writer,
            timing,
            generated_admin_token,
        })
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
            ..
        } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        let billing = tokio::spawn(crate::billing_job::run(
            state.clone(),
            timing.billing_poll,
            stop_rx.clone(),
        ));
        let delivery = state.config.webhook.clone().map(|webhook| {
            tokio::spawn(crate::outbox::run(
                state.clone(),
                webhook,
                timing.outbox_poll,
                stop_rx.clone(),
            ))
        });
        tracing::info!(listen = %listener.local_addr()?, database = %state.config.database.display(), zone = state.config.billing.zone.name(), "aggregator serving");
        let app = router(state.clone());
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await;
        let _ = stop_tx.send(true);
        let _ = billing.await;
        if let Some(d) = delivery {
            let _ = d.await;
        }
        // The last handle to the queue goes with the state: the writer drains and stops.
        drop(state);
        tokio::task::spawn_blocking(move || writer.join())
            .await
            .ok();
        served.context("serve HTTP")
    }
}

/// Resolves on SIGTERM or Ctrl-C.
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
