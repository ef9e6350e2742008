//! A circuit breaker that opens on error rate *or* latency, so a partially sick Redis (some
//! errors, or slow answers) is cut off as surely as a dead one.
//!
//! A run of consecutive failures opens it too, so a Redis that dies or hangs under heavy
//! traffic is cut off within a few calls, however many successes the window holds.
//!
//! Calls are counted in a sliding window of one-second buckets: calls, errors (timeouts
//! included) and slow calls (slower than the latency threshold). "p99 over the threshold" is
//! exactly "more than 1 % of calls slower than the threshold", so no latency histogram is
//! needed. Open: every call is refused at once (no Redis wait at all). After `open_for`, one
//! probe call is let through (half-open); its success closes the breaker, its failure opens it
//! again.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Breaker tuning.
#[derive(Debug, Clone)]
pub struct BreakerConfig {
    /// Sliding window the rates are computed over.
    pub window: Duration,
    /// No decision before this many calls in the window.
    pub min_calls: u32,
    /// Open when errors / calls reaches this (0.0..=1.0).
    pub error_rate: f64,
    /// Open when the window's p99 latency exceeds this.
    pub latency_p99: Duration,
    /// How long to stay open before probing.
    pub open_for: Duration,
    /// Open after this many failures in a row (whatever the window says).
    pub consecutive: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            window: Duration::from_secs(10),
            min_calls: 20,
            error_rate: 0.10,
            latency_p99: Duration::from_millis(10),
            open_for: Duration::from_secs(2),
            consecutive: 5,
        }
    }
}

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }

    /// The gauge value: 0 closed, 1 open, 2 half-open.
    pub fn as_gauge(self) -> i64 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Bucket {
    second: u64,
    calls: u32,
    errors: u32,
    slow: u32,
}

#[derive(Debug)]
struct Inner {
    state: State,
    opened_at: Instant,
    probe_in_flight: bool,
    buckets: Vec<Bucket>,
    failures_in_row: u32,
}

/// What a call was allowed as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    Normal,
    Probe,
}

/// A state change, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
}

/// The breaker. Cheap: one short mutex section per call.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    start: Instant,
    inner: Mutex<Inner>,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Breaker {
        let n = config.window.as_secs().max(1) as usize;
        Breaker {
            config,
            start: Instant::now(),
            inner: Mutex::new(Inner {
                state: State::Closed,
                opened_at: Instant::now(),
                probe_in_flight: false,
                buckets: vec![Bucket::default(); n],
                failures_in_row: 0,
            }),
        }
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    pub fn state(&self) -> State {
        self.inner.lock().state
    }

    /// May a call go ahead? `None`: refused (open, or half-open with the probe out).
    /// A transition to half-open is returned alongside.
    pub fn allow(&self) -> (Option<Permit>, Option<Transition>) {
        let mut g = self.inner.lock();
        match g.state {
            State::Closed => (Some(Permit::Normal), None),
            State::Open => {
                if g.opened_at.elapsed() >= self.config.open_for {
                    g.state = State::HalfOpen;
                    g.probe_in_flight = true;
                    (
                        Some(Permit::Probe),
                        Some(Transition {
                            from: State::Open,
                            to: State::HalfOpen,
                        }),
                    )
                } else {
                    (None, None)
                }
            }
            State::HalfOpen => {
                if g.probe_in_flight {
                    (None, None)
                } else {
                    g.probe_in_flight = true;
                    (Some(Permit::Probe), None)
                }
            }
        }
    }

    /// Records a call's result. Returns the transition it caused, if any.
    pub fn record(&self, permit: Permit, ok: bool, latency: Duration) -> Option<Transition> {
        let slow = latency > self.config.latency_p99;
        let second = self.start.elapsed().as_secs();
        let mut g = self.inner.lock();
        if permit == Permit::Probe {
            g.probe_in_flight = false;
            let from = g.state;
            if ok && !slow {
                g.state = State::Closed;
                g.failures_in_row = 0;
                for b in g.buckets.iter_mut() {
                    *b = Bucket::default();
                }
            } else {
                g.state = State::Open;
                g.opened_at = Instant::now();
            }
            return (from != g.state).then_some(Transition { from, to: g.state });
        }
        if g.state != State::Closed {
            return None;
        }
        let n = g.buckets.len();
        let b = &mut g.buckets[(second as usize) % n];
        if b.second != second {
            *b = Bucket {
                second,
                ..Default::default()
            };
        }
        b.calls += 1;
        b.errors += u32::from(!ok);
        b.slow += u32::from(slow);
        let horizon = second.saturating_sub(n as u64 - 1);
        let (mut calls, mut errors, mut slows) = (0u32, 0u32, 0u32);
        for b in g.buckets.iter().filter(|b| b.second >= horizon) {
            calls += b.calls;
            errors += b.errors;
            slows += b.slow;
        }
        g.failures_in_row = if ok { 0 } else { g.failures_in_row + 1 };
        let in_row = g.failures_in_row >= self.config.consecutive.max(1);
        if calls < self.config.min_calls && !in_row {
            return None;
        }
        let error_rate = f64::from(errors) / f64::from(calls);
        let slow_rate = f64::from(slows) / f64::from(calls);
        let judged = calls >= self.config.min_calls;
        if in_row || (judged && (error_rate >= self.config.error_rate || slow_rate > 0.01)) {
            g.failures_in_row = 0;
            g.state = State::Open;
            g.opened_at = Instant::now();
            return Some(Transition {
                from: State::Closed,
                to: State::Open,
            });
        }
        None
    }

    /// Gives a probe permit back unused (the call was never made).
    pub fn release_probe(&self) {
        self.inner.lock().probe_in_flight = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            window: Duration::from_secs(10),
            min_calls: 20,
            error_rate: 0.1,
            latency_p99: Duration::from_millis(10),
            open_for: Duration::from_millis(50),
            consecutive: 5,
        }
    }

    #[test]
    fn a_run_of_failures_opens_it_despite_a_busy_window() {
        let b = Breaker::new(cfg());
        for _ in 0..10_000 {
            b.record(Permit::Normal, true, Duration::from_millis(1));
        }
        for _ in 0..4 {
            b.record(Permit::Normal, false, Duration::from_millis(20));
        }
        assert_eq!(b.state(), State::Closed);
        assert!(b
            .record(Permit::Normal, false, Duration::from_millis(20))
            .is_some());
        assert_eq!(b.state(), State::Open);
    }

    #[test]
    fn opens_on_partial_errors_and_not_below_threshold() {
        let b = Breaker::new(cfg());
        let fast = Duration::from_millis(1);
        // 5 % errors (never two in a row): stays closed.
        for i in 0..100 {
            b.record(Permit::Normal, i % 20 != 0, fast);
        }
        assert_eq!(b.state(), State::Closed);
        // 15 % errors: opens.
        let b = Breaker::new(cfg());
        let mut opened = false;
        for i in 0..100 {
            opened |= b.record(Permit::Normal, i % 7 != 0, fast).is_some();
        }
        assert!(opened);
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.allow().0, None);
    }

    #[test]
    fn opens_on_latency_alone() {
        let b = Breaker::new(cfg());
        for i in 0..100 {
            let lat = if i % 10 == 0 { 30 } else { 1 };
            b.record(Permit::Normal, true, Duration::from_millis(lat));
        }
        assert_eq!(b.state(), State::Open);
    }

    #[test]
    fn half_opens_then_closes_or_reopens() {
        let b = Breaker::new(cfg());
        for _ in 0..30 {
            b.record(Permit::Normal, false, Duration::ZERO);
        }
        assert_eq!(b.state(), State::Open);
        std::thread::sleep(Duration::from_millis(60));
        let (p, t) = b.allow();
        assert_eq!(p, Some(Permit::Probe));
        assert_eq!(t.unwrap().to, State::HalfOpen);
        assert_eq!(b.allow().0, None, "one probe at a time");
        b.record(Permit::Probe, false, Duration::ZERO);
        assert_eq!(b.state(), State::Open);
        std::thread::sleep(Duration::from_millis(60));
        let (p, _) = b.allow();
        let t = b
            .record(p.unwrap(), true, Duration::from_millis(1))
            .unwrap();
        assert_eq!(t.to, State::Closed);
        assert_eq!(b.allow().0, Some(Permit::Normal));
    }
}
