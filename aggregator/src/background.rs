//! What the background loops (the 02:00 billing job, the delivery workers,
//! the file watchers) share: their nap, measured on the service's clock, and
//! the count of their passes.
//!
//! A nap ends when its time is up, when `stop` says so, or when the clock
//! is moved: with a test's manual clock, what waits for a time looks again
//! the moment the test moves the clock there, so tests advance time instead
//! of sleeping. The system clock is never moved, so in production a nap is
//! a plain sleep.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use shared::clock::Clock;
use tokio::sync::watch;

/// Why a nap ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woke {
    /// Its time was up, the clock moved, or `also` happened: look again.
    Look,
    /// The service is stopping.
    Stop,
}

/// Naps for `nap`, or until the clock moves, `also` resolves or `stop`
/// changes.
pub async fn nap(
    clock: &dyn Clock,
    nap: Duration,
    stop: &mut watch::Receiver<bool>,
    also: impl Future<Output = ()>,
) -> Woke {
    tokio::select! {
        () = tokio::time::sleep(nap) => Woke::Look,
        () = clock.moved() => Woke::Look,
        () = also => Woke::Look,
        _ = stop.changed() => Woke::Stop,
    }
}

/// How many passes each background loop has begun, by the loop's name.
/// A test waits on it for "nothing more happened": once every loop has
/// begun two passes since a moment, one whole pass looked at the state of
/// that moment, so what it would have done is done.
#[derive(Debug, Default)]
pub struct Passes(Mutex<BTreeMap<&'static str, u64>>);

impl Passes {
    /// `name` is a loop that will run: until its first pass it counts 0,
    /// so a wait for its passes does not pass it by.
    pub fn expect(&self, name: &'static str) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(name)
            .or_default();
    }

    /// `name` begins a pass.
    pub fn begin(&self, name: &'static str) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(name)
            .or_default() += 1;
    }

    /// The passes begun so far, by loop.
    pub fn counts(&self) -> BTreeMap<&'static str, u64> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use shared::clock::ManualClock;

    #[tokio::test]
    async fn a_nap_ends_when_the_clock_moves_long_before_its_time() {
        let clock = std::sync::Arc::new(ManualClock::new(Utc.timestamp_opt(0, 0).unwrap()));
        let (_tx, mut stop) = watch::channel(false);
        let mover = {
            let clock = clock.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                clock.advance(chrono::TimeDelta::hours(1));
            })
        };
        let started = std::time::Instant::now();
        let woke = nap(
            &*clock,
            Duration::from_secs(600),
            &mut stop,
            std::future::pending(),
        )
        .await;
        assert_eq!(woke, Woke::Look);
        assert!(started.elapsed() < Duration::from_secs(60));
        mover.await.unwrap();
    }

    #[tokio::test]
    async fn a_nap_ends_with_stop() {
        let clock = shared::clock::SystemClock;
        let (tx, mut stop) = watch::channel(false);
        tx.send(true).unwrap();
        let woke = nap(
            &clock,
            Duration::from_secs(600),
            &mut stop,
            std::future::pending(),
        )
        .await;
        assert_eq!(woke, Woke::Stop);
    }

    #[test]
    fn passes_are_counted_by_loop() {
        let passes = Passes::default();
        passes.begin("a");
        passes.begin("a");
        passes.begin("b");
        assert_eq!(passes.counts(), BTreeMap::from([("a", 2), ("b", 1)]));
    }
}
