//! Routes: which upstream and which cache policy serve a request (longest path prefix wins,
//! then declaration order; a route may be narrowed to one host).

use std::sync::Arc;

use corral_core::CachePolicy;

use crate::upstream::Upstream;

/// One route.
#[derive(Debug, Clone)]
pub struct Route {
    /// A name for logs and errors (`routes[2]` or the configured name).
    pub name: String,
    /// Only requests for this host (case-insensitive, port ignored) match, when set.
    pub host: Option<String>,
    pub path_prefix: String,
    pub upstream: Arc<Upstream>,
    pub policy: Arc<CachePolicy>,
    /// Methods whose responses this route caches (GET and HEAD by default); other requests
    /// are passed.
    pub cache_methods: Vec<http::Method>,
}

impl Route {
    /// Whether a request with this method may be answered from (and stored in) the cache.
    pub fn caches(&self, method: &http::Method) -> bool {
        self.policy.enabled && self.cache_methods.contains(method)
    }
}

impl Route {
    fn matches(&self, host: &str, path: &str) -> bool {
        if !path.starts_with(&self.path_prefix) {
            return false;
        }
        match &self.host {
            None => true,
            Some(h) => without_port(host).eq_ignore_ascii_case(h),
        }
    }
}

/// `host` without a trailing `:port`.
pub fn without_port(host: &str) -> &str {
    host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.chars().all(|c| c.is_ascii_digit()) {
            h
        } else {
            host
        }
    })
}

/// The route table.
#[derive(Debug, Clone, Default)]
pub struct Router {
    /// Sorted: longest prefix first, host-specific before host-agnostic, then declaration order.
    /// Shared so a request holds its route by reference count, not by copy.
    routes: Vec<Arc<Route>>,
}

impl Router {
    pub fn new(routes: Vec<Route>) -> Router {
        let mut routes: Vec<(usize, Route)> = routes.into_iter().enumerate().collect();
        routes.sort_by(|(ia, a), (ib, b)| {
            b.path_prefix
                .len()
                .cmp(&a.path_prefix.len())
                .then(b.host.is_some().cmp(&a.host.is_some()))
                .then(ia.cmp(ib))
        });
        Router {
            routes: routes.into_iter().map(|(_, r)| Arc::new(r)).collect(),
        }
    }

    /// The route for a request, if any.
    pub fn route(&self, host: &str, path: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| r.matches(host, path))
    }

    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }
}
