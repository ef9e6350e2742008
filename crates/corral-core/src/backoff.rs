//! One retry backoff for every loop that retries: exponential, capped, jittered.
//!
//! Each pause is drawn uniformly from the upper half of the current step (`step/2 ..= step`),
//! then the step doubles up to the cap. The jitter keeps many replicas that lost the same peer
//! (or Redis, or the API server) at the same moment from retrying in lockstep; the floor of
//! half a step keeps a retry from coming back almost at once. A success calls
//! [`Backoff::reset`].

use std::time::Duration;

/// An exponential, capped, jittered backoff.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    /// Starts at `initial` and doubles up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        let initial = initial.max(Duration::from_millis(1));
        Backoff {
            initial,
            max: max.max(initial),
            step: initial,
        }
    }

    /// The next pause (jittered), and the step doubles.
    pub fn next_pause(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let half = step / 2;
        half + half.mul_f64(rand::random::<f64>())
    }

    /// Back to the first step, after a success.
    pub fn reset(&mut self) {
        self.step = self.initial;
    }

    /// The current step (the most the next pause can be).
    pub fn step(&self) -> Duration {
        self.step
    }

    /// Sleeps for [`Backoff::next_pause`].
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_pause()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_cap_within_the_upper_half_of_each_step() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(700));
        let steps = [100, 200, 400, 700, 700];
        for want in steps {
            let step = Duration::from_millis(want);
            assert_eq!(b.step(), step);
            let p = b.next_pause();
            assert!(
                p >= step / 2 && p <= step,
                "{p:?} not in the upper half of {step:?}"
            );
        }
        b.reset();
        assert_eq!(b.step(), Duration::from_millis(100));
    }

    #[test]
    fn pauses_are_jittered() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20 {
            let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
            seen.insert(b.next_pause());
        }
        assert!(
            seen.len() > 10,
            "twenty replicas would retry in lockstep: {seen:?}"
        );
    }
}
