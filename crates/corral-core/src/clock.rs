//! The wall clock the store and the gateway read.
//!
//! Freshness (RFC 9111 §4.2) is arithmetic on wall-clock times: when a response was requested
//! and received, its `Date`, and now. Reading `SystemTime::now()` in each of those places made
//! every freshness test sleep for the lifetime it tested. The store owns one [`Clock`] and every
//! part of the request path reads the time through it, so production runs on [`SystemClock`]
//! and a test drives a [`ManualClock`] forward by exactly the seconds it means.
//!
//! Marks and purge sequence numbers do not read a clock at all (see `store::marks`): only
//! lifetimes do.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A source of wall-clock time.
pub trait Clock: Send + Sync + Debug {
    fn now(&self) -> SystemTime;
}

/// The operating system's clock (production).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[inline]
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// The system clock, shared.
pub fn system() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

/// A clock that moves only when told to (tests).
#[derive(Debug)]
pub struct ManualClock {
    at: parking_lot::Mutex<SystemTime>,
}

impl ManualClock {
    /// A clock stopped at `at`.
    pub fn at(at: SystemTime) -> Arc<ManualClock> {
        Arc::new(ManualClock {
            at: parking_lot::Mutex::new(at),
        })
    }

    /// A clock stopped at the system's time now.
    pub fn starting_now() -> Arc<ManualClock> {
        ManualClock::at(SystemTime::now())
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        *self.at.lock() += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.at.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_advanced() {
        let clock = ManualClock::starting_now();
        let t0 = clock.now();
        assert_eq!(clock.now(), t0);
        clock.advance(Duration::from_secs(90));
        assert_eq!(clock.now(), t0 + Duration::from_secs(90));
    }
}
