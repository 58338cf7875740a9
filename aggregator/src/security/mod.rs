//! Tokens, webhook signatures and TLS: what proves who is calling and keeps
//! the wire private.

pub mod signature;
pub mod tls;
pub mod tokens;

use std::sync::Arc;
use std::time::Duration;

use shared::clock::Clock;

/// The file watchers, as their passes are counted.
pub const TLS_FILES: &str = "tls files";
pub const ADMIN_TOKEN_FILE: &str = "admin token file";

/// How a file watcher (the TLS files, the admin token's file) waits between
/// looks: every `poll`, or at once when the clock moves, until `stop`.
pub struct Watch {
    pub clock: Arc<dyn Clock>,
    pub poll: Duration,
    pub passes: Arc<crate::background::Passes>,
    pub stop: tokio::sync::watch::Receiver<bool>,
}

impl Watch {
    /// Counts a pass of `name` and naps until the next look; false when
    /// the service stops.
    async fn nap(&mut self, name: &'static str) -> bool {
        self.passes.begin(name);
        let woke = crate::background::nap(
            &*self.clock,
            self.poll,
            &mut self.stop,
            std::future::pending(),
        )
        .await;
        woke == crate::background::Woke::Look
    }
}
