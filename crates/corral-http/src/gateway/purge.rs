//! `PURGE <url>` on the proxy listener, and the URL selector every purge of a request URL
//! is built with.

use super::*;

impl Gateway {
    /// The URL selector for a host and path, with the query normalised as the route keys it.
    pub(super) fn url_selector(
        &self,
        host: &str,
        path: &str,
        query: Option<&str>,
        route: &Route,
    ) -> String {
        corral_core::key::purge_url(host, path, query, &route.policy.query)
    }

    /// `PURGE <path>`: every stored variant of the URL, for clients in `purge_allow` or
    /// holding the admin token.
    pub(super) fn purge_method(
        &self,
        req: &Request<Incoming>,
        target: &Arrival,
        client: SocketAddr,
    ) -> Response<Body> {
        if !self.config.purge.permits(client.ip(), req.headers()) {
            tracing::warn!(client = %client.ip(), uri = %req.uri(), "PURGE refused");
            return deliver::json(
                StatusCode::FORBIDDEN,
                &serde_json::json!({"error": "PURGE is allowed from purge_allow addresses or with the admin token"}),
            );
        }
        let (host, path, query) = (&*target.host, &*target.path, target.query.as_deref());
        let url = match self.router.route(host, path) {
            Some(route) => self.url_selector(host, path, query, route),
            None => match query {
                Some(q) => format!("http://{host}{path}?{q}"),
                None => format!("http://{host}{path}"),
            },
        };
        let soft = req
            .headers()
            .get("soft-purge")
            .is_some_and(|v| v.as_bytes() == b"1" || v.as_bytes().eq_ignore_ascii_case(b"true"));
        let purge = Purge::new(Selectors::default(), Mode::from_soft(soft)).url(url);
        let report = self
            .sink
            .invalidate(purge, Cause::PurgeMethod, &client.ip().to_string());
        deliver::json(
            StatusCode::OK,
            &serde_json::json!({"purged": report.purged, "event": report.event}),
        )
    }
}
