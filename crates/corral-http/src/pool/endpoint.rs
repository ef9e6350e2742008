//! One endpoint of an upstream and everything the pool knows about it: discovery's view
//! (weight, ready, serving), active health, passive health and ejection, requests in flight and
//! recent errors.
//!
//! Reads on the request path are atomics only; the mutexes guard state that changes on
//! failures and health checks.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use http::uri::Authority;
use parking_lot::Mutex;

use super::idle::Idle;
use super::metrics::EndpointMetrics;

/// Milliseconds since the first call (a monotonic clock in an atomic).
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

const RECENT_ERRORS: usize = 8;

/// Passive health: failures of real traffic and the ejection they caused.
#[derive(Debug, Default)]
struct Passive {
    consecutive_failures: u32,
    /// Requests and failures in the current failure-rate window, which began at `window_start`.
    window_requests: u32,
    window_failures: u32,
    window_start: Option<Instant>,
    /// Ejections in the current run (the next one lasts base × 2^ejections).
    ejections: u32,
    last_ejected: Option<Instant>,
}

/// Active health: consecutive check results.
#[derive(Debug, Default)]
struct Active {
    successes: u32,
    failures: u32,
}

pub struct EndpointState {
    pub addr: SocketAddr,
    pub authority: Authority,
    pub weight: u32,
    /// Discovery says ready (new traffic welcome).
    pub ready: bool,
    /// Discovery says serving (draining but answering).
    pub serving: bool,
    /// Active health verdict (true until checks say otherwise).
    healthy: AtomicBool,
    /// Ejected by outlier detection until this `now_ms()`; 0 = not ejected.
    ejected_until: AtomicU64,
    in_flight: AtomicU64,
    passive: Mutex<Passive>,
    active: Mutex<Active>,
    recent_errors: Mutex<VecDeque<(SystemTime, String)>>,
    pub(crate) metrics: EndpointMetrics,
    /// Idle connections, shared by the copies discovery makes of this endpoint.
    pub(crate) idle: Arc<Idle>,
}

impl std::fmt::Debug for EndpointState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointState")
            .field("addr", &self.addr)
            .field("weight", &self.weight)
            .finish_non_exhaustive()
    }
}

impl EndpointState {
    pub(crate) fn new(e: &corral_discovery::Endpoint, metrics: EndpointMetrics) -> EndpointState {
        let authority = Authority::try_from(e.addr.to_string().as_str())
            .expect("a socket address is a valid authority");
        metrics.healthy.set(1);
        EndpointState {
            addr: e.addr,
            authority,
            weight: e.weight.max(1),
            ready: e.ready,
            serving: e.serving,
            healthy: AtomicBool::new(true),
            ejected_until: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            passive: Mutex::default(),
            active: Mutex::default(),
            recent_errors: Mutex::default(),
            metrics,
            idle: Arc::default(),
        }
    }

    /// A copy with discovery's new view of weight and conditions, keeping health and history.
    pub(crate) fn rediscovered(&self, e: &corral_discovery::Endpoint) -> EndpointState {
        EndpointState {
            addr: self.addr,
            authority: self.authority.clone(),
            weight: e.weight.max(1),
            ready: e.ready,
            serving: e.serving,
            healthy: AtomicBool::new(self.is_healthy()),
            ejected_until: AtomicU64::new(self.ejected_until.load(Ordering::Relaxed)),
            in_flight: AtomicU64::new(0),
            passive: Mutex::new(Passive {
                consecutive_failures: self.passive.lock().consecutive_failures,
                ejections: self.passive.lock().ejections,
                last_ejected: self.passive.lock().last_ejected,
                ..Passive::default()
            }),
            active: Mutex::default(),
            recent_errors: Mutex::new(self.recent_errors.lock().clone()),
            metrics: self.metrics.clone(),
            idle: self.idle.clone(),
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now
    }

    /// Healthy and not ejected: may take new requests (given discovery's conditions).
    pub fn is_usable(&self, now: u64) -> bool {
        self.is_healthy() && !self.is_ejected(now)
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the guard drops: the guard travels with the
    /// response body, so a request streaming a long body still counts for least-request.
    pub(crate) fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.metrics.in_flight.inc();
        self.metrics.requests.inc();
        InFlight(self.clone())
    }

    pub(crate) fn note_error(&self, what: String) {
        let mut errs = self.recent_errors.lock();
        if errs.len() == RECENT_ERRORS {
            errs.pop_front();
        }
        errs.push_back((SystemTime::now(), what));
    }

    /// Passive health: records one request's outcome; returns true when the endpoint has now
    /// failed `rule.consecutive_failures` times in a row, or at least `rule.failure_rate` of at
    /// least `rule.min_requests` requests in the current window (the caller decides whether
    /// ejection is allowed).
    pub(crate) fn passive(&self, failed: bool, rule: &super::Outlier) -> bool {
        let mut p = self.passive.lock();
        if p.window_start.is_none_or(|t| t.elapsed() > rule.window) {
            p.window_start = Some(Instant::now());
            p.window_requests = 0;
            p.window_failures = 0;
        }
        p.window_requests += 1;
        if !failed {
            p.consecutive_failures = 0;
            return false;
        }
        p.window_failures += 1;
        p.consecutive_failures += 1;
        let run =
            rule.consecutive_failures > 0 && p.consecutive_failures >= rule.consecutive_failures;
        let rate = rule.failure_rate > 0.0
            && p.window_requests >= rule.min_requests
            && f64::from(p.window_failures) >= rule.failure_rate * f64::from(p.window_requests);
        run || rate
    }

    /// Ejects for `base × 2^n` (at most `max`), where n counts the ejections since the endpoint
    /// last went `max` without one. Returns how long.
    pub(crate) fn eject(&self, base: Duration, max: Duration) -> Duration {
        let mut p = self.passive.lock();
        if p.last_ejected.is_some_and(|t| t.elapsed() > max + base) {
            p.ejections = 0;
        }
        let time = base
            .saturating_mul(1u32 << p.ejections.min(16))
            .min(max.max(base));
        p.ejections += 1;
        p.last_ejected = Some(Instant::now());
        p.consecutive_failures = 0;
        p.window_start = None;
        self.ejected_until
            .store(now_ms() + time.as_millis() as u64, Ordering::Relaxed);
        self.metrics.ejections.inc();
        time
    }

    /// Active health: records one check; returns the new verdict when it changed.
    pub(crate) fn checked(
        &self,
        ok: bool,
        healthy_after: u32,
        unhealthy_after: u32,
    ) -> Option<bool> {
        let mut a = self.active.lock();
        if ok {
            a.successes += 1;
            a.failures = 0;
        } else {
            a.failures += 1;
            a.successes = 0;
        }
        let healthy = self.is_healthy();
        let flip = if healthy && a.failures >= unhealthy_after {
            Some(false)
        } else if !healthy && a.successes >= healthy_after {
            Some(true)
        } else {
            None
        };
        if let Some(h) = flip {
            self.healthy.store(h, Ordering::Relaxed);
            self.metrics.healthy.set(i64::from(h));
            if h {
                // A recovered endpoint starts with a clean slate.
                self.ejected_until.store(0, Ordering::Relaxed);
            }
        }
        flip
    }

    /// The endpoint's entry in `GET /upstreams`.
    pub fn json(&self, source: &str, now: u64) -> serde_json::Value {
        let ago = |t: SystemTime| t.elapsed().map_or(0, |d| d.as_millis() as u64);
        let until = self.ejected_until.load(Ordering::Relaxed);
        let p = self.passive.lock();
        serde_json::json!({
            "address": self.addr.to_string(),
            "source": source,
            "weight": self.weight,
            "ready": self.ready,
            "serving": self.serving,
            "healthy": self.is_healthy(),
            "ejected": until > now,
            "ejected_for_ms": until.saturating_sub(now),
            "ejections": p.ejections,
            "consecutive_failures": p.consecutive_failures,
            "in_flight": self.in_flight(),
            "requests": self.metrics.requests.get(),
            "failures": self.metrics.failures.get(),
            "recent_errors": self.recent_errors.lock().iter().rev().map(|(t, e)| serde_json::json!({
                "error": e, "ms_ago": ago(*t),
            })).collect::<Vec<_>>(),
        })
    }
}

/// A request in flight on an endpoint.
/// One request counted in flight on an endpoint; dropping it ends the count.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<EndpointState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.in_flight.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::Outlier;

    fn ep() -> EndpointState {
        let e = corral_discovery::Endpoint::new("127.0.0.1:1".parse().unwrap());
        EndpointState::new(&e, EndpointMetrics::default())
    }

    #[test]
    fn consecutive_failures_and_failure_rate() {
        let rule = Outlier {
            consecutive_failures: 3,
            failure_rate: 0.5,
            min_requests: 10,
            ..Outlier::default()
        };
        let e = ep();
        assert!(!e.passive(true, &rule) && !e.passive(true, &rule));
        assert!(e.passive(true, &rule), "third failure in a row");
        // Alternating failures never make a run of 3, but half of 10+ requests failed.
        let e = ep();
        let verdicts: Vec<bool> = (0..10).map(|i| e.passive(i % 2 == 0, &rule)).collect();
        assert_eq!(
            verdicts.iter().filter(|v| **v).count(),
            0,
            "under min_requests or a success"
        );
        assert!(e.passive(true, &rule), "6 of 11 failed");
    }

    #[test]
    fn ejection_time_doubles_up_to_the_maximum() {
        let e = ep();
        let (base, max) = (Duration::from_secs(10), Duration::from_secs(35));
        assert_eq!(e.eject(base, max), Duration::from_secs(10));
        assert_eq!(e.eject(base, max), Duration::from_secs(20));
        assert_eq!(e.eject(base, max), Duration::from_secs(35));
        assert!(e.is_ejected(now_ms()) && !e.is_usable(now_ms()));
    }

    #[test]
    fn active_checks_flip_after_thresholds() {
        let e = ep();
        assert_eq!(e.checked(false, 2, 2), None);
        assert_eq!(e.checked(false, 2, 2), Some(false));
        assert_eq!(e.checked(true, 2, 2), None);
        assert_eq!(
            e.checked(false, 2, 2),
            None,
            "a failure restarts the success count"
        );
        assert_eq!(e.checked(true, 2, 2), None);
        assert_eq!(e.checked(true, 2, 2), Some(true));
    }
}
