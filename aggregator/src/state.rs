//! What every part of the running service can reach: the store
//! connections, the ingest queue, the settings, the clock, the metrics.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, TimeDelta, Utc};
use rustc_hash::FxHashMap;

use prometheus_client::registry::Registry;
use shared::clock::Clock;

use crate::config::Config;
use crate::ingest::IngestQueue;
use crate::metrics::ServiceMetrics;
use crate::security::tokens::AdminToken;
use crate::store::{ClusterIdentity, Connection, LegacyNames};

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
    /// The cluster tokens this replica found lately.
    pub cluster_tokens: ClusterTokens,
}

/// The cluster tokens found lately, by their hash, so that a fleet's
/// pushes do not each look their token up: a cluster's nodes share one.
/// An entry is used for [`ClusterTokens::FRESH`] on the service's clock;
/// a rotation through this replica forgets every entry at once, so the old
/// token stops here at once and on the other replicas within that time.
#[derive(Default)]
pub struct ClusterTokens {
    found: Mutex<Found>,
}

/// The tokens found, and how many times they were all forgotten: a
/// look-up that began before a rotation is not kept after it.
#[derive(Default)]
struct Found {
    tokens: FxHashMap<[u8; 32], FoundAt>,
    generation: u64,
}

/// A token's cluster and when it was looked up.
type FoundAt = (ClusterIdentity, DateTime<Utc>);

impl ClusterTokens {
    /// How long a look-up is used.
    pub const FRESH: TimeDelta = TimeDelta::seconds(1);
    /// The most tokens kept; more, and every entry is forgotten.
    pub const MAX: usize = 10_000;

    /// The identity of the token with this hash, if found less than
    /// [`ClusterTokens::FRESH`] ago (and not in the future: a clock set back).
    /// The identity found lately, or the generation to hand to
    /// [`ClusterTokens::put`] with what the look-up finds.
    pub fn get(&self, hash: &[u8; 32], now: DateTime<Utc>) -> Result<ClusterIdentity, u64> {
        let found = self.found.lock().unwrap_or_else(|e| e.into_inner());
        found
            .tokens
            .get(hash)
            .filter(|(_, at)| *at <= now && now - *at < Self::FRESH)
            .map(|(identity, _)| identity.clone())
            .ok_or(found.generation)
    }

    /// Keeps a look-up's answer, unless the tokens were forgotten since it
    /// began (`generation`, from [`ClusterTokens::get`]).
    pub fn put(
        &self,
        hash: [u8; 32],
        identity: ClusterIdentity,
        now: DateTime<Utc>,
        generation: u64,
    ) {
        let mut found = self.found.lock().unwrap_or_else(|e| e.into_inner());
        if found.generation != generation {
            return;
        }
        if found.tokens.len() >= Self::MAX {
            found.tokens.clear();
        }
        found.tokens.insert(hash, (identity, now));
    }

    /// Forgets every token: one was rotated.
    pub fn forget_all(&self) {
        let mut found = self.found.lock().unwrap_or_else(|e| e.into_inner());
        found.tokens.clear();
        found.generation += 1;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(cluster: &str) -> ClusterIdentity {
        ClusterIdentity {
            account: "acme".to_string(),
            cluster: cluster.to_string(),
        }
    }

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_800_000_000_000 + ms).unwrap()
    }

    #[test]
    fn a_token_found_is_used_for_a_second_and_never_from_a_clock_set_back() {
        let tokens = ClusterTokens::default();
        tokens.put([1; 32], identity("prod"), at(0), 0);
        assert_eq!(tokens.get(&[1; 32], at(0)), Ok(identity("prod")));
        assert_eq!(tokens.get(&[1; 32], at(999)), Ok(identity("prod")));
        assert_eq!(tokens.get(&[1; 32], at(1_000)), Err(0), "a second later");
        assert_eq!(tokens.get(&[1; 32], at(-1)), Err(0), "the clock set back");
        assert_eq!(tokens.get(&[2; 32], at(0)), Err(0), "another token");
    }

    #[test]
    fn a_rotation_forgets_every_token_and_a_full_cache_starts_again() {
        let tokens = ClusterTokens::default();
        let before = tokens.get(&[1; 32], at(0)).unwrap_err();
        tokens.put([1; 32], identity("prod"), at(0), before);
        // A look-up that began before the rotation answers after it.
        let began = tokens.get(&[2; 32], at(0)).unwrap_err();
        tokens.forget_all();
        tokens.put([2; 32], identity("old"), at(0), began);
        assert_eq!(tokens.get(&[1; 32], at(0)), Err(1));
        assert_eq!(tokens.get(&[2; 32], at(0)), Err(1), "not kept");
        for i in 0..ClusterTokens::MAX {
            let mut hash = [0; 32];
            hash[..8].copy_from_slice(&(i as u64).to_le_bytes());
            tokens.put(hash, identity("prod"), at(0), 1);
        }
        tokens.put([0xff; 32], identity("edge"), at(0), 1);
        assert_eq!(
            tokens.get(&[0; 32], at(0)),
            Err(1),
            "the full cache was emptied"
        );
        assert_eq!(tokens.get(&[0xff; 32], at(0)), Ok(identity("edge")));
        assert_eq!(tokens.found.lock().unwrap().tokens.len(), 1);
    }
}
