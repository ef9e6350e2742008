//! Upstreams: where misses go. Timeouts and the errors that say which of them failed; the pool
//! itself (endpoints, balancing, health, retries) is [`crate::pool`].

use std::time::Duration;

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
    /// No endpoint to send to (discovery found none).
    Unavailable(String),
    /// TLS to the upstream failed: the certificate was refused (which check, and why) or the
    /// handshake failed.
    Tls(crate::tls::client::TlsFailure),
}

impl UpstreamError {
    /// The status a client gets: 504 for timeouts, 502 otherwise.
    pub fn status(&self) -> http::StatusCode {
        match self {
            UpstreamError::FirstByteTimeout(_) => http::StatusCode::GATEWAY_TIMEOUT,
            UpstreamError::Unavailable(_) => http::StatusCode::SERVICE_UNAVAILABLE,
            _ => http::StatusCode::BAD_GATEWAY,
        }
    }

    /// A short token for metrics and `Cache-Status` detail.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "connect",
            UpstreamError::FirstByteTimeout(_) => "timeout",
            UpstreamError::Protocol(_) => "protocol",
            UpstreamError::Unavailable(_) => "unavailable",
            UpstreamError::Tls(_) => "tls",
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
            UpstreamError::Unavailable(e) => write!(f, "the upstream has {e}"),
            UpstreamError::Tls(e) => write!(f, "TLS to the upstream failed: {e}"),
        }
    }
}

pub use crate::pool::Upstream;
