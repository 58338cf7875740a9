//! Tokens, webhook signatures and TLS: what proves who is calling and keeps
//! the wire private.

pub mod signature;
pub mod statement_key;
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

/// Bytes as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Exactly `len` bytes written as `2 * len` hex digits (either case).
pub fn unhex(text: &str, len: usize) -> Option<Vec<u8>> {
    // `from_str_radix` alone would take a `+` as a sign.
    if text.len() != 2 * len || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}
