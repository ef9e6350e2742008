//! recv's first step: what Corral accepts of a request before it routes, keys or forwards
//! it. Everything here runs on every request, hits included, and decides alone what of the
//! client's input can reach the origin (see `docs/security.md`):
//!
//! * the target is normalised once ([`corral_core::target`]): the host and path routed on,
//!   keyed on and fetched are the same bytes; an ambiguous target is refused with 400;
//! * hop-by-hop headers go, and forwarding headers from anyone but a trusted proxy
//!   ([`ForwardingPolicy`]);
//! * a `GET`/`HEAD` with a body is passed with its body, or refused ([`GetBody`]);
//! * override headers (`X-Original-URL`, `X-HTTP-Method-Override`...) are removed, unless
//!   the route forwards them, and then the request passes.

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request};
use http_body::Body as _;
use hyper::body::Incoming;

use corral_core::target::{Target, TargetError};

use crate::hygiene::{self, ForwardingPolicy};

/// What to do with a `GET` or `HEAD` that carries a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GetBody {
    /// Forward it uncached, body intact (the default): the origin decides what it means, and
    /// no answer built from a body is shared.
    #[default]
    Pass,
    /// Answer 400.
    Reject,
}

/// The headers that ask an origin to act on another URL or method than the request line's.
pub const OVERRIDE_HEADERS: [&str; 5] = [
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// The gateway-wide rules of this step.
#[derive(Debug, Clone)]
pub struct IngressPolicy {
    pub forwarding: ForwardingPolicy,
    pub get_body: GetBody,
    /// Override headers ([`OVERRIDE_HEADERS`] by default).
    pub override_headers: Vec<HeaderName>,
    /// The port of the plain listener, for `X-Forwarded-Port`.
    pub listen_port: u16,
}

impl Default for IngressPolicy {
    fn default() -> Self {
        IngressPolicy {
            forwarding: ForwardingPolicy::default(),
            get_body: GetBody::Pass,
            override_headers: OVERRIDE_HEADERS
                .iter()
                .map(|h| HeaderName::from_static(h))
                .collect(),
            listen_port: 8080,
        }
    }
}

/// A request that passed this step: its target normalised, its headers cleaned.
#[derive(Debug)]
pub struct Arrival {
    pub host: String,
    pub path: String,
    pub query: Option<String>,
    /// A `GET`/`HEAD` with a body, to be passed (refused ones never get here).
    pub has_body: bool,
}

/// Why a request was refused here (answered 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Target(TargetError),
    /// A `GET`/`HEAD` with a body under [`GetBody::Reject`].
    BodyOnSafeMethod,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Target(e) => e.fmt(f),
            Refusal::BodyOnSafeMethod => f.write_str("a GET or HEAD request must not carry a body"),
        }
    }
}

impl IngressPolicy {
    /// Normalises the target and cleans the headers of `req` as it arrived from `client`.
    pub fn admit(
        &self,
        req: &mut Request<Incoming>,
        client: std::net::IpAddr,
    ) -> Result<Arrival, Refusal> {
        let target = {
            let mut hosts = req
                .headers()
                .get_all(header::HOST)
                .iter()
                .map(|v| v.as_bytes());
            Target::of(req.uri(), &mut hosts, 80).map_err(Refusal::Target)?
        };
        let arrival = Arrival {
            host: target.host.into_owned(),
            path: target.path.into_owned(),
            query: target.query.map(str::to_string),
            has_body: is_safe(req.method()) && !req.body().is_end_stream(),
        };
        if arrival.has_body && self.get_body == GetBody::Reject {
            return Err(Refusal::BodyOnSafeMethod);
        }
        let headers = req.headers_mut();
        hygiene::strip_hop_by_hop(headers);
        self.forwarding.on_arrival(headers, client);
        // The origin is asked for the host that was keyed, spelled as it was keyed.
        if let Ok(v) = HeaderValue::from_str(&arrival.host) {
            headers.insert(header::HOST, v);
        }
        Ok(arrival)
    }

    /// Whether the request carries an override header.
    pub fn carries_override(&self, headers: &http::HeaderMap) -> bool {
        self.override_headers
            .iter()
            .any(|h| headers.contains_key(h))
    }

    /// Removes every override header.
    pub fn strip_overrides(&self, headers: &mut http::HeaderMap) {
        for h in &self.override_headers {
            headers.remove(h);
        }
    }
}

fn is_safe(m: &Method) -> bool {
    *m == Method::GET || *m == Method::HEAD
}

/// The request's URI rewritten to its normalised path and raw query (what a passed request
/// is forwarded with).
pub fn normalized_uri(arrival: &Arrival) -> Option<http::Uri> {
    let pq = match &arrival.query {
        Some(q) => format!("{}?{q}", arrival.path),
        None => arrival.path.clone(),
    };
    pq.parse().ok()
}
