//! Retries: which requests may be sent again, and how many retries the upstream can afford.
//!
//! A request is retried on another endpoint only when it is idempotent (RFC 9110 §9.2.2) and
//! its body can be sent again (empty or held in memory), and only after a connect error, a
//! connection that failed before a response arrived, or a 502/503 answer. Retries are bounded
//! per request (`retries`) and across the upstream by a budget (Envoy's model): retries in
//! progress may not exceed `budget` × requests in progress, with a floor of
//! [`MIN_CONCURRENT_RETRIES`] so a quiet upstream can still retry.

use std::sync::atomic::{AtomicU64, Ordering};

use http::{Method, StatusCode};

/// Retries in progress always allowed, whatever the budget.
pub const MIN_CONCURRENT_RETRIES: u64 = 3;

/// The per-upstream retry settings.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Further attempts after the first, each on an endpoint not tried yet.
    pub retries: u32,
    /// Retries in progress as a fraction of requests in progress.
    pub budget: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries: 2,
            budget: 0.2,
        }
    }
}

/// RFC 9110 §9.2.2: methods whose repetition has no further effect.
pub fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Statuses that mean "this endpoint could not take it; another may".
pub fn retry_status(s: StatusCode) -> bool {
    s == StatusCode::BAD_GATEWAY || s == StatusCode::SERVICE_UNAVAILABLE
}

/// Live counts for the budget.
#[derive(Debug, Default)]
pub struct Budget {
    requests: AtomicU64,
    retries: AtomicU64,
}

impl Budget {
    /// Counts a request in progress until the guard drops.
    pub fn request(&self) -> BudgetGuard<'_> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        BudgetGuard {
            budget: self,
            retries: 0,
        }
    }
}

pub struct BudgetGuard<'a> {
    budget: &'a Budget,
    retries: u64,
}

impl BudgetGuard<'_> {
    /// Takes one retry from the budget, if it allows.
    pub fn try_retry(&mut self, fraction: f64) -> bool {
        let b = self.budget;
        let live = b.requests.load(Ordering::Relaxed);
        let allowed = ((live as f64 * fraction) as u64).max(MIN_CONCURRENT_RETRIES);
        if b.retries.fetch_add(1, Ordering::Relaxed) >= allowed {
            b.retries.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        self.retries += 1;
        true
    }
}

impl Drop for BudgetGuard<'_> {
    fn drop(&mut self) {
        self.budget.requests.fetch_sub(1, Ordering::Relaxed);
        self.budget
            .retries
            .fetch_sub(self.retries, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_has_a_floor_and_a_fraction() {
        let b = Budget::default();
        let mut guards: Vec<_> = (0..100).map(|_| b.request()).collect();
        // 100 live requests at 10%: 10 retries, then no more.
        let granted = guards
            .iter_mut()
            .map(|g| g.try_retry(0.1))
            .filter(|ok| *ok)
            .count();
        assert_eq!(granted, 10);
        drop(guards);
        let mut one = b.request();
        assert!((0..3).all(|_| one.try_retry(0.1)), "the floor allows 3");
        assert!(!one.try_retry(0.1));
    }

    #[test]
    fn methods() {
        assert!(idempotent(&Method::GET) && idempotent(&Method::PUT));
        assert!(!idempotent(&Method::POST) && !idempotent(&Method::PATCH));
    }
}
