//! Corral's OpenTelemetry traces.
//!
//! Off unless [`install`] is called (the binary does when `[telemetry] otlp_endpoint` is set).
//! Off, every entry point ([`RequestSpan::start`], [`phase`], [`inject`], …) is one load of a
//! `OnceLock` that finds nothing and returns `None`: the hit path allocates no span and reads
//! no clock.
//!
//! On, a proxied request gets a server span (continuing the client's W3C `traceparent` when
//! it parses), its phases get child spans, the origin request and the peers' event fan-out
//! carry `traceparent`, and finished spans go to a small hand-written OTLP/HTTP JSON exporter
//! ([`export`]): a bounded queue, batches, a counter for what it drops. It is written here
//! rather than taken from the `opentelemetry` crates because those bring a large dependency
//! tree (the SDK, protobuf/tonic or reqwest) for what is, for us, one JSON POST; the wire
//! format is OTLP's own, so any collector reads it.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::registry::Registry;

pub mod context;
pub mod export;
mod span;

pub use context::{SpanContext, SpanId, TraceId, TRACEPARENT};
pub use export::TelemetryMetrics;
pub use span::{
    current, event_span, inject, phase, remember_event, remote_span, Kind, MaybeSpan, RequestSpan,
    Span, SpanData, Value,
};

/// What the exporter needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where spans are POSTed: the collector's `…/v1/traces` (see [`traces_url`]).
    pub endpoint: http::Uri,
    /// The resource's `service.name`.
    pub service_name: String,
    /// The resource's `service.instance.id` (this replica).
    pub instance: String,
    /// Share of new traces recorded (a client's `traceparent` decides for its own).
    pub sample_ratio: f64,
    /// Finished spans waiting for export, at most; beyond that they are dropped and counted.
    pub queue_size: usize,
    /// How often a partial batch is sent.
    pub export_interval: Duration,
    /// How long one export request may take.
    pub export_timeout: Duration,
}

/// The traces URL for an OTLP/HTTP endpoint as operators write it: `http://host:4318` (the
/// signal path `/v1/traces` is appended, as OpenTelemetry's `OTEL_EXPORTER_OTLP_ENDPOINT`
/// does) or a full `http://host:4318/v1/traces`. Plain HTTP only: the exporter talks to a
/// collector or agent nearby.
pub fn traces_url(endpoint: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = endpoint.parse().map_err(|e| format!("not a URL ({e})"))?;
    if uri.scheme_str() != Some("http") {
        return Err("expected an http:// URL of an OTLP/HTTP collector, e.g. \"http://127.0.0.1:4318\" (https is not supported: run a collector or agent beside corral)".into());
    }
    let Some(authority) = uri.authority() else {
        return Err("expected a host, e.g. \"http://127.0.0.1:4318\"".into());
    };
    if uri.query().is_some() {
        return Err("expected no query string".into());
    }
    let path = uri.path().trim_end_matches('/');
    let path = if path.ends_with("/v1/traces") {
        path.to_string()
    } else {
        format!("{path}/v1/traces")
    };
    format!("http://{authority}{path}")
        .parse()
        .map_err(|e| format!("not a URL ({e})"))
}

pub(crate) struct Tracer {
    exporter: export::Exporter,
    sample_ratio: f64,
}

impl Tracer {
    pub(crate) fn submit(&self, span: SpanData) {
        self.exporter.submit(span);
    }

    pub(crate) fn sample(&self) -> bool {
        self.sample_ratio >= 1.0 || rand::random::<f64>() < self.sample_ratio
    }
}

static TRACER: OnceLock<Tracer> = OnceLock::new();

pub(crate) fn tracer() -> Option<&'static Tracer> {
    TRACER.get()
}

/// Whether traces are on in this process.
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// Turns traces on for this process: registers the exporter's metrics and starts its task
/// (inside a Tokio runtime). Once per process; a second call is an error.
pub fn install(config: Config, registry: &mut Registry) -> Result<(), String> {
    if TRACER.get().is_some() {
        return Err("telemetry is already installed in this process".into());
    }
    let metrics = TelemetryMetrics::register(registry);
    let tracer = Tracer {
        exporter: export::Exporter::start(&config, metrics),
        sample_ratio: config.sample_ratio,
    };
    TRACER
        .set(tracer)
        .map_err(|_| "telemetry is already installed in this process".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn off_every_entry_point_is_a_no_op() {
        // Nothing installed in this test binary: what the hit path sees with no [telemetry].
        assert!(!enabled());
        let req = http::Request::get("/x")
            .header(
                TRACEPARENT,
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .body(())
            .unwrap();
        assert!(RequestSpan::start(&req).is_none());
        assert!(phase("lookup").is_none());
        assert!(current().is_none());
        let mut headers = req.headers().clone();
        inject(&mut headers, None);
        assert_eq!(
            headers,
            *req.headers(),
            "the client's traceparent passes unchanged"
        );
        remember_event("e1");
        assert!(event_span("peer.send", ["e1"]).is_none());
        assert!(remote_span("peer.receive", req.headers()).is_none());
    }

    #[test]
    fn traces_url_appends_the_signal_path_once() {
        let cases = [
            (
                "http://127.0.0.1:4318",
                Ok("http://127.0.0.1:4318/v1/traces"),
            ),
            (
                "http://127.0.0.1:4318/",
                Ok("http://127.0.0.1:4318/v1/traces"),
            ),
            (
                "http://otel:4318/v1/traces",
                Ok("http://otel:4318/v1/traces"),
            ),
            (
                "http://otel:4318/base",
                Ok("http://otel:4318/base/v1/traces"),
            ),
            ("https://otel:4318", Err("https")),
            ("otel:4318", Err("http://")),
            ("http://otel:4318/?a=b", Err("query")),
            ("not a url", Err("URL")),
        ];
        for (input, want) in cases {
            match (traces_url(input), want) {
                (Ok(got), Ok(w)) => assert_eq!(got.to_string(), w, "{input}"),
                (Err(e), Err(w)) => assert!(e.contains(w), "{input}: {e}"),
                (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
    }
}
