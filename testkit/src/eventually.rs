//! Waiting for what a test expects to happen: polled, with a deadline, and
//! a failure that says what never happened.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is looked at.
const POLL: Duration = Duration::from_millis(25);

/// Returns once `check` holds; panics naming `what` when it has not within
/// `within`.
pub fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting until {what}"
        );
        std::thread::sleep(POLL);
    }
}

/// [`eventually`] for a check that awaits (a request to the service).
pub async fn eventually_async<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting until {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}
