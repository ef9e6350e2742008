//! Health: active checks (the pool asks each endpoint) and passive checks with outlier
//! ejection (the pool watches real traffic).
//!
//! Active: every `interval` (every `unhealthy_interval` while an endpoint is unhealthy) a `GET
//! path` goes to each endpoint; an answer whose status is in `statuses` is a success, any other
//! status, a connect failure or no answer within `timeout` is a failure. `unhealthy_after`
//! consecutive failures take the endpoint out of rotation — requests already in flight on it
//! finish, new ones go elsewhere (the graceful shutdown of a draining pod) — and
//! `healthy_after` consecutive successes bring it back.
//!
//! Passive: `consecutive_failures` failures of real requests in a row (connect, protocol,
//! timeout or a 5xx), or a `failure_rate` of at least `min_requests` requests within `window`,
//! eject the endpoint for `ejection_time`, doubling with each ejection up to
//! `max_ejection_time`, unless that would eject more than `max_ejected_percent` of the
//! endpoints (at least one may always be ejected).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Weak;
use std::time::{Duration, Instant};

use http::{Request, StatusCode};

use super::{EndpointState, Upstream};
use crate::body::Body;

/// Active health-check settings.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub unhealthy_interval: Duration,
    pub timeout: Duration,
    pub healthy_after: u32,
    pub unhealthy_after: u32,
    /// Statuses that count as healthy; empty means any 2xx or 3xx.
    pub statuses: Vec<u16>,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            path: "/health".into(),
            interval: Duration::from_secs(5),
            unhealthy_interval: Duration::from_secs(2),
            timeout: Duration::from_secs(2),
            healthy_after: 2,
            unhealthy_after: 3,
            statuses: Vec::new(),
        }
    }
}

impl HealthCheck {
    fn healthy_status(&self, s: StatusCode) -> bool {
        if self.statuses.is_empty() {
            s.is_success() || s.is_redirection()
        } else {
            self.statuses.contains(&s.as_u16())
        }
    }
}

/// Passive health and outlier-ejection settings.
#[derive(Debug, Clone)]
pub struct Outlier {
    /// Failures in a row that eject an endpoint; 0 turns this rule off.
    pub consecutive_failures: u32,
    /// Failed fraction of the requests in a window that ejects an endpoint; 0 turns it off.
    pub failure_rate: f64,
    /// Requests a window needs before its failure rate counts.
    pub min_requests: u32,
    /// The failure-rate window.
    pub window: Duration,
    pub ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejected_percent: u32,
}

impl Default for Outlier {
    fn default() -> Self {
        Outlier {
            consecutive_failures: 5,
            failure_rate: 0.5,
            min_requests: 20,
            window: Duration::from_secs(10),
            ejection_time: Duration::from_secs(10),
            max_ejection_time: Duration::from_secs(300),
            max_ejected_percent: 50,
        }
    }
}

/// Runs active checks for `upstream` until it is dropped.
pub(crate) async fn run(upstream: Weak<Upstream>, check: HealthCheck) {
    let tick = check
        .interval
        .min(check.unhealthy_interval)
        .max(Duration::from_millis(50));
    let mut next: HashMap<SocketAddr, Instant> = HashMap::new();
    loop {
        let Some(up) = upstream.upgrade() else { return };
        let now = Instant::now();
        let endpoints = up.snapshot().endpoints.clone();
        next.retain(|a, _| endpoints.iter().any(|e| e.addr == *a));
        let mut checks = Vec::new();
        for e in endpoints {
            let due = next.get(&e.addr).is_none_or(|t| *t <= now);
            if !due {
                continue;
            }
            let every = if e.is_healthy() {
                check.interval
            } else {
                check.unhealthy_interval
            };
            next.insert(e.addr, now + every);
            let up = up.clone();
            let check = check.clone();
            checks.push(tokio::spawn(async move {
                let result = probe(&up, &e, &check).await;
                let ok = result.is_ok();
                if let Err(why) = &result {
                    e.note_error(format!("health check: {why}"));
                }
                if let Some(healthy) = e.checked(ok, check.healthy_after, check.unhealthy_after) {
                    if healthy {
                        tracing::info!(upstream = %up.name, endpoint = %e.addr, "endpoint healthy again");
                    } else {
                        tracing::warn!(upstream = %up.name, endpoint = %e.addr, error = result.err().unwrap_or_default(), "endpoint unhealthy: no new requests go to it");
                    }
                }
            }));
        }
        drop(up);
        for c in checks {
            let _ = c.await;
        }
        tokio::time::sleep(tick).await;
    }
}

async fn probe(up: &Upstream, ep: &EndpointState, check: &HealthCheck) -> Result<(), String> {
    // The pool's own connections: an https upstream is checked over the same TLS.
    let req = Request::get(check.path.as_str())
        .header(http::header::HOST, ep.authority.as_str())
        .header(http::header::USER_AGENT, "corral-health-check")
        .body(Body::empty())
        .map_err(|e| e.to_string())?;
    let answer = async {
        let resp = up
            .exchange(ep, req, None)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        // Read to its end, so that the connection goes back to the pool.
        http_body_util::BodyExt::collect(resp.into_body())
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(status)
    };
    match tokio::time::timeout(check.timeout, answer).await {
        Err(_) => Err(format!("no answer within {:?}", check.timeout)),
        Ok(Err(e)) => Err(e),
        Ok(Ok(status)) if check.healthy_status(status) => Ok(()),
        Ok(Ok(status)) => Err(format!("answered {status}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_decide_health() {
        let any = HealthCheck::default();
        assert!(any.healthy_status(StatusCode::OK) && any.healthy_status(StatusCode::FOUND));
        assert!(!any.healthy_status(StatusCode::SERVICE_UNAVAILABLE));
        assert!(!any.healthy_status(StatusCode::NOT_FOUND));
        let listed = HealthCheck {
            statuses: vec![204, 404],
            ..HealthCheck::default()
        };
        assert!(listed.healthy_status(StatusCode::NOT_FOUND));
        assert!(!listed.healthy_status(StatusCode::OK));
    }
}
