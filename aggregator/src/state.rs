//! What every part of the running service can reach: the store
//! connections, the ingest queue, the settings, the clock, the metrics.

use std::sync::Arc;

use prometheus_client::registry::Registry;
use shared::clock::Clock;

use crate::config::Config;
use crate::ingest::IngestQueue;
use crate::metrics::ServiceMetrics;
use crate::security::tokens::AdminToken;
use crate::store::{Connection, LegacyNames};

/// What every handler can reach.
pub struct AppState {
    /// The connection that writes (admin changes, billing); ingest writes through `queue`.
    pub store: Arc<Connection>,
    /// A second connection for reads (audit, bills, reports, exports), so reads never wait on a commit.
    pub reader: Arc<Connection>,
    /// A third for token look-ups and readiness alone: a long report on the
    /// reader never holds up an agent's push or a probe.
    pub tokens: Arc<Connection>,
    pub queue: IngestQueue,
    pub config: Config,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<ServiceMetrics>,
    pub registry: Arc<Registry>,
    /// The admin token's hash, replaced when its file changes.
    pub admin_token: AdminToken,
    /// Wakes the outbox worker when lines were issued.
    pub outbox_wake: Arc<tokio::sync::Notify>,
    /// Wakes the notice workers after a billing or lifecycle run, which may
    /// have issued notices.
    pub notice_wake: Arc<tokio::sync::Notify>,
    pub faults: Arc<Faults>,
    /// Names stored before their domain was written, still reachable.
    pub legacy_names: LegacyNames,
    /// The passes the background loops have begun.
    pub passes: Arc<crate::background::Passes>,
}

impl AppState {
    /// The store connections, for liveness and the panic metrics.
    pub fn connections(&self) -> [&Arc<Connection>; 3] {
        [&self.store, &self.reader, &self.tokens]
    }
}

/// The fault hook behind the tests of panic containment: a handler panics
/// on purpose. Nothing in the service sets it (`app::FaultHooks` does,
/// for tests).
#[derive(Debug, Default)]
pub struct Faults {
    pub panic_in_next_request: std::sync::atomic::AtomicBool,
}
