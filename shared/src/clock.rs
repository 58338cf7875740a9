//! Time as an input: one `Clock` trait, the system clock for production, a manual clock for tests.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use chrono::{DateTime, TimeDelta, Utc};

/// Where "now" comes from. The rules never ask it; the binaries pass its
/// answer in.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;

    /// Resolves when the clock is set or moved on, which only a manual
    /// clock is; the system clock's never resolves. A timer waits on it
    /// beside its sleep, so that when a test moves time, what is waiting
    /// for that time wakes at once instead of at its next look.
    fn moved(&self) -> Moved {
        Moved::never()
    }
}

/// The future of [`Clock::moved`].
pub struct Moved {
    signal: Option<Arc<Signal>>,
    seen: u64,
}

impl Moved {
    /// A future that never resolves (a clock that only time moves).
    pub fn never() -> Moved {
        Moved {
            signal: None,
            seen: 0,
        }
    }
}

impl Future for Moved {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(signal) = &self.signal else {
            return Poll::Pending;
        };
        let mut state = signal.0.lock().expect("clock signal lock");
        if state.0 != self.seen {
            return Poll::Ready(());
        }
        if !state.1.iter().any(|w| w.will_wake(cx.waker())) {
            state.1.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// How many times a manual clock moved, and who waits for the next.
#[derive(Debug, Default)]
struct Signal(Mutex<(u64, Vec<Waker>)>);

impl Signal {
    fn notify(&self) {
        let waiting = {
            let mut state = self.0.lock().expect("clock signal lock");
            state.0 += 1;
            std::mem::take(&mut state.1)
        };
        for waker in waiting {
            waker.wake();
        }
    }
}

/// The machine's wall clock: the one place the product reads it.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that moves only when told to; what waits on it (`moved`) wakes
/// when it does.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<DateTime<Utc>>,
    signal: Arc<Signal>,
}

impl ManualClock {
    pub fn new(at: DateTime<Utc>) -> ManualClock {
        ManualClock {
            now: Mutex::new(at),
            signal: Arc::default(),
        }
    }

    pub fn set(&self, at: DateTime<Utc>) {
        *self.now.lock().expect("clock lock") = at;
        self.signal.notify();
    }

    pub fn advance(&self, by: TimeDelta) {
        *self.now.lock().expect("clock lock") += by;
        self.signal.notify();
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().expect("clock lock")
    }

    fn moved(&self) -> Moved {
        let seen = self.signal.0.lock().expect("clock signal lock").0;
        Moved {
            signal: Some(self.signal.clone()),
            seen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(f: &mut Moved) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(f).poll(&mut cx).is_ready()
    }

    #[test]
    fn what_waits_on_a_manual_clock_wakes_when_it_moves_and_not_before() {
        let clock = ManualClock::new(DateTime::UNIX_EPOCH);
        let mut waiting = clock.moved();
        assert!(!ready(&mut waiting));
        clock.advance(TimeDelta::seconds(1));
        assert!(ready(&mut waiting));
        let mut next = clock.moved();
        assert!(
            !ready(&mut next),
            "a wait begun after the move waits for the next"
        );
        clock.set(DateTime::UNIX_EPOCH);
        assert!(ready(&mut next));
    }

    #[test]
    fn the_system_clock_never_wakes_a_waiter() {
        assert!(!ready(&mut SystemClock.moved()));
    }
}
