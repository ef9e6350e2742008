//! Upstreams: where misses go. A pooled keep-alive client with connect, first-byte and total
//! timeouts, and errors that say which of them failed.

use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::body::Body;

/// Upstream timeouts.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// From sending the request to receiving the response head.
    pub first_byte: Duration,
    /// From sending the request to the end of the response body.
    pub total: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            first_byte: Duration::from_secs(30),
            total: Duration::from_secs(300),
        }
    }
}

/// Why an upstream request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamError {
    /// The connection could not be made (refused, unreachable, connect timeout).
    Connect(String),
    /// No response head within the first-byte timeout.
    FirstByteTimeout(Duration),
    /// The connection failed after it was made (reset, malformed response).
    Protocol(String),
}

impl UpstreamError {
    /// The status a client gets: 504 for timeouts, 502 otherwise.
    pub fn status(&self) -> http::StatusCode {
        match self {
            UpstreamError::FirstByteTimeout(_) => http::StatusCode::GATEWAY_TIMEOUT,
            _ => http::StatusCode::BAD_GATEWAY,
        }
    }

    /// A short token for metrics and `Cache-Status` detail.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "connect",
            UpstreamError::FirstByteTimeout(_) => "timeout",
            UpstreamError::Protocol(_) => "protocol",
        }
    }
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Connect(e) => write!(f, "could not connect to the upstream: {e}"),
            UpstreamError::FirstByteTimeout(t) => write!(
                f,
                "the upstream sent no response within the first-byte timeout ({}s)",
                t.as_secs_f64()
            ),
            UpstreamError::Protocol(e) => write!(f, "the upstream connection failed: {e}"),
        }
    }
}

/// A named upstream reached over HTTP/1.1 with pooled keep-alive connections, spreading
/// requests round robin over its endpoints.
#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    scheme: Scheme,
    endpoints: Vec<Authority>,
    next: std::sync::atomic::AtomicUsize,
    client: Client<HttpConnector, Body>,
    pub timeouts: Timeouts,
}

impl Upstream {
    /// An upstream at `bases` (`http://host:port` each; a path in them is not used).
    pub fn new(
        name: impl Into<String>,
        bases: &[Uri],
        timeouts: Timeouts,
    ) -> Result<Upstream, String> {
        let mut endpoints = Vec::new();
        for base in bases {
            let scheme = base.scheme().cloned().unwrap_or(Scheme::HTTP);
            if scheme != Scheme::HTTP {
                return Err(format!("scheme {scheme} is not supported (use http://)"));
            }
            endpoints.push(
                base.authority()
                    .cloned()
                    .ok_or_else(|| format!("{base} has no host"))?,
            );
        }
        if endpoints.is_empty() {
            return Err("an upstream needs at least one endpoint".into());
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeouts.connect));
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .timer(hyper_util::rt::TokioTimer::new())
            .build(connector);
        Ok(Upstream {
            name: name.into(),
            scheme: Scheme::HTTP,
            endpoints,
            next: std::sync::atomic::AtomicUsize::new(0),
            client,
            timeouts,
        })
    }

    /// The first endpoint's `host:port` (for `host_header = "upstream"`).
    pub fn authority(&self) -> &Authority {
        &self.endpoints[0]
    }

    /// Every endpoint.
    pub fn endpoints(&self) -> &[Authority] {
        &self.endpoints
    }

    fn pick(&self) -> &Authority {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        &self.endpoints[i % self.endpoints.len()]
    }

    /// Sends `req` (whose URI holds only a path and query) to the upstream.
    pub async fn send(&self, mut req: Request<Body>) -> Result<Response<Incoming>, UpstreamError> {
        let pq = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.pick().clone())
            .path_and_query(pq)
            .build()
            .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
        match tokio::time::timeout(self.timeouts.first_byte, self.client.request(req)).await {
            Err(_) => Err(UpstreamError::FirstByteTimeout(self.timeouts.first_byte)),
            Ok(Err(e)) if e.is_connect() => Err(UpstreamError::Connect(error_chain(&e))),
            Ok(Err(e)) => Err(UpstreamError::Protocol(error_chain(&e))),
            Ok(Ok(r)) => Ok(r),
        }
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
