//! A token bucket with jitter, for L2 re-fills after Redis comes back: every replica refilling
//! everything at once would be a second stampede (on Redis, and through it on everyone).

use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::Rng;

/// Allows `rate` operations per second with bursts of `burst`, only during `window` after
/// [`Limiter::start_recovery`]; unlimited otherwise.
#[derive(Debug)]
pub struct Limiter {
    rate: f64,
    burst: f64,
    window: Duration,
    max_jitter: Duration,
    inner: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    until: Option<Instant>,
}

impl Limiter {
    pub fn new(rate: u32, window: Duration, max_jitter: Duration) -> Limiter {
        let rate = f64::from(rate.max(1));
        Limiter {
            rate,
            burst: (rate / 10.0).max(1.0),
            window,
            max_jitter,
            inner: Mutex::new(Bucket {
                tokens: 0.0,
                last: Instant::now(),
                until: None,
            }),
        }
    }

    /// Redis just came back: limit from now on, for the window, starting with an empty bucket.
    pub fn start_recovery(&self) {
        let mut b = self.inner.lock();
        b.tokens = 0.0;
        b.last = Instant::now();
        b.until = Some(Instant::now() + self.window);
    }

    pub fn recovering(&self) -> bool {
        self.inner.lock().until.is_some_and(|u| Instant::now() < u)
    }

    /// `Some(delay)`: go ahead after this jitter; `None`: skip this write (the rate is spent).
    pub fn admit(&self) -> Option<Duration> {
        let mut b = self.inner.lock();
        let Some(until) = b.until else {
            return Some(Duration::ZERO);
        };
        let now = Instant::now();
        if now >= until {
            b.until = None;
            return Some(Duration::ZERO);
        }
        let elapsed = now.duration_since(b.last).as_secs_f64();
        b.last = now;
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        if b.tokens < 1.0 {
            return None;
        }
        b.tokens -= 1.0;
        let jitter = rand::thread_rng().gen_range(0..=self.max_jitter.as_millis() as u64);
        Some(Duration::from_millis(jitter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_until_recovery_then_rate_bound() {
        let l = Limiter::new(100, Duration::from_secs(60), Duration::from_millis(50));
        for _ in 0..1000 {
            assert_eq!(l.admit(), Some(Duration::ZERO));
        }
        l.start_recovery();
        let admitted = (0..1000).filter(|_| l.admit().is_some()).count();
        assert!(
            admitted <= 12,
            "admitted {admitted} at once during recovery"
        );
        std::thread::sleep(Duration::from_millis(100));
        let later = (0..1000).filter(|_| l.admit().is_some()).count();
        assert!((1..=12).contains(&later), "{later}");
    }
}
