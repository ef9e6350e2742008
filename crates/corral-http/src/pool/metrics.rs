//! Upstream metrics, per upstream and per endpoint. Every name starts with `corral_upstream_`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabel {
    pub upstream: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabel {
    pub upstream: String,
    pub endpoint: String,
}

/// Families registered once; each upstream and endpoint takes its handles from them.
#[derive(Clone, Default)]
pub struct PoolMetrics {
    requests: Family<EndpointLabel, Counter>,
    failures: Family<EndpointLabel, Counter>,
    ejections: Family<EndpointLabel, Counter>,
    in_flight: Family<EndpointLabel, Gauge>,
    healthy: Family<EndpointLabel, Gauge>,
    retries: Family<UpstreamLabel, Counter>,
    budget_exhausted: Family<UpstreamLabel, Counter>,
    panic: Family<UpstreamLabel, Gauge>,
    panic_requests: Family<UpstreamLabel, Counter>,
    endpoints: Family<UpstreamLabel, Gauge>,
}

impl PoolMetrics {
    pub fn register(r: &mut Registry) -> PoolMetrics {
        let m = PoolMetrics::default();
        r.register(
            "corral_upstream_requests",
            "Requests sent to an upstream endpoint (each retry counts)",
            m.requests.clone(),
        );
        r.register(
            "corral_upstream_failures",
            "Failed requests to an upstream endpoint (connect, protocol, timeout or 5xx)",
            m.failures.clone(),
        );
        r.register(
            "corral_upstream_ejections",
            "Outlier ejections of an upstream endpoint",
            m.ejections.clone(),
        );
        r.register(
            "corral_upstream_in_flight",
            "Requests in flight to an upstream endpoint (until the response head)",
            m.in_flight.clone(),
        );
        r.register(
            "corral_upstream_endpoint_healthy",
            "1 when active health checks consider the endpoint healthy",
            m.healthy.clone(),
        );
        r.register(
            "corral_upstream_retries",
            "Requests retried on another endpoint",
            m.retries.clone(),
        );
        r.register(
            "corral_upstream_retry_budget_exhausted",
            "Retries refused because the retry budget was spent",
            m.budget_exhausted.clone(),
        );
        r.register(
            "corral_upstream_panic",
            "1 while every endpoint of the upstream is unhealthy and traffic goes to all of them",
            m.panic.clone(),
        );
        r.register(
            "corral_upstream_panic_requests",
            "Requests routed in panic mode",
            m.panic_requests.clone(),
        );
        r.register(
            "corral_upstream_endpoints",
            "Endpoints discovered for the upstream",
            m.endpoints.clone(),
        );
        m
    }

    pub(crate) fn upstream(&self, name: &str) -> UpstreamMetrics {
        let l = UpstreamLabel {
            upstream: name.to_string(),
        };
        UpstreamMetrics {
            name: name.to_string(),
            families: self.clone(),
            retries: self.retries.get_or_create(&l).clone(),
            budget_exhausted: self.budget_exhausted.get_or_create(&l).clone(),
            panic: self.panic.get_or_create(&l).clone(),
            panic_requests: self.panic_requests.get_or_create(&l).clone(),
            endpoints: self.endpoints.get_or_create(&l).clone(),
        }
    }
}

/// One upstream's handles.
#[derive(Clone)]
pub(crate) struct UpstreamMetrics {
    name: String,
    families: PoolMetrics,
    pub retries: Counter,
    pub budget_exhausted: Counter,
    pub panic: Gauge,
    pub panic_requests: Counter,
    pub endpoints: Gauge,
}

impl UpstreamMetrics {
    fn label(&self, addr: &std::net::SocketAddr) -> EndpointLabel {
        EndpointLabel {
            upstream: self.name.clone(),
            endpoint: addr.to_string(),
        }
    }

    pub fn endpoint(&self, addr: &std::net::SocketAddr) -> EndpointMetrics {
        let l = self.label(addr);
        let f = &self.families;
        EndpointMetrics {
            requests: f.requests.get_or_create(&l).clone(),
            failures: f.failures.get_or_create(&l).clone(),
            ejections: f.ejections.get_or_create(&l).clone(),
            in_flight: f.in_flight.get_or_create(&l).clone(),
            healthy: f.healthy.get_or_create(&l).clone(),
        }
    }

    /// Drops the series of an endpoint discovery no longer reports.
    pub fn forget(&self, addr: &std::net::SocketAddr) {
        let l = self.label(addr);
        let f = &self.families;
        f.requests.remove(&l);
        f.failures.remove(&l);
        f.ejections.remove(&l);
        f.in_flight.remove(&l);
        f.healthy.remove(&l);
    }
}

/// One endpoint's handles, cloned out of their families once so the request path never takes
/// a family lock.
#[derive(Clone, Default)]
pub(crate) struct EndpointMetrics {
    pub requests: Counter,
    pub failures: Counter,
    pub ejections: Counter,
    pub in_flight: Gauge,
    pub healthy: Gauge,
}
