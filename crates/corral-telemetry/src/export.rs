//! The OTLP/HTTP exporter: spans go into a bounded queue (a full queue drops the span and
//! counts it, so the request path never waits), and one task sends them in batches as
//! OTLP/HTTP with JSON encoding (`POST …/v1/traces`, `application/json`), every
//! `export_interval` or whenever a batch is full. A failed export is counted and its spans
//! dropped: traces are best effort, requests are not.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde_json::{json, Value as Json};
use tokio::sync::mpsc;

use crate::span::{SpanData, Value};
use crate::Config;

/// Spans sent in one request at most.
const MAX_BATCH: usize = 512;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// The exporter's metrics (`corral_telemetry_…`).
#[derive(Clone)]
pub struct TelemetryMetrics {
    pub exported: Counter,
    /// By reason: `queue_full` (the request path did not wait), `export_failed`.
    pub dropped: Family<ReasonLabel, Counter>,
    pub export_failures: Counter,
}

impl TelemetryMetrics {
    pub fn register(r: &mut Registry) -> TelemetryMetrics {
        let m = TelemetryMetrics {
            exported: Counter::default(),
            dropped: Family::default(),
            export_failures: Counter::default(),
        };
        for reason in ["queue_full", "export_failed"] {
            let _ = m.dropped.get_or_create(&ReasonLabel { reason });
        }
        r.register(
            "corral_telemetry_spans_exported",
            "Trace spans accepted by the OTLP endpoint",
            m.exported.clone(),
        );
        r.register(
            "corral_telemetry_spans_dropped",
            "Trace spans dropped: the export queue was full, or their export failed",
            m.dropped.clone(),
        );
        r.register(
            "corral_telemetry_export_failures",
            "OTLP export requests that failed (no answer, or not 2xx)",
            m.export_failures.clone(),
        );
        m
    }

    fn drop_spans(&self, reason: &'static str, n: usize) {
        self.dropped
            .get_or_create(&ReasonLabel { reason })
            .inc_by(n as u64);
    }
}

/// The request path's end of the queue.
pub(crate) struct Exporter {
    tx: mpsc::Sender<SpanData>,
    metrics: TelemetryMetrics,
}

impl Exporter {
    /// Starts the export task (needs a Tokio runtime).
    pub(crate) fn start(config: &Config, metrics: TelemetryMetrics) -> Exporter {
        let (tx, rx) = mpsc::channel(config.queue_size.max(1));
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(Duration::from_secs(2)));
        http.set_nodelay(true);
        let sender = Sender {
            client: Client::builder(TokioExecutor::new()).build(http),
            endpoint: config.endpoint.clone(),
            timeout: config.export_timeout,
            resource: resource(config),
            metrics: metrics.clone(),
        };
        tokio::spawn(sender.run(rx, config.export_interval));
        Exporter { tx, metrics }
    }

    /// Queues a finished span, or drops it (counted) when the queue is full.
    pub(crate) fn submit(&self, span: SpanData) {
        if self.tx.try_send(span).is_err() {
            self.metrics.drop_spans("queue_full", 1);
        }
    }
}

struct Sender {
    client: Client<HttpConnector, Full<Bytes>>,
    endpoint: http::Uri,
    timeout: Duration,
    resource: Json,
    metrics: TelemetryMetrics,
}

impl Sender {
    async fn run(self, mut rx: mpsc::Receiver<SpanData>, every: Duration) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                span = rx.recv() => match span {
                    Some(s) => {
                        batch.push(s);
                        if batch.len() >= MAX_BATCH {
                            self.export(std::mem::take(&mut batch)).await;
                        }
                    }
                    None => {
                        self.export(batch).await;
                        return;
                    }
                },
                _ = tick.tick() => {
                    if !batch.is_empty() {
                        self.export(std::mem::take(&mut batch)).await;
                    }
                }
            }
        }
    }

    async fn export(&self, spans: Vec<SpanData>) {
        if spans.is_empty() {
            return;
        }
        let n = spans.len();
        match self.post(encode(&self.resource, &spans)).await {
            Ok(()) => {
                self.metrics.exported.inc_by(n as u64);
            }
            Err(e) => {
                self.metrics.export_failures.inc();
                self.metrics.drop_spans("export_failed", n);
                tracing::debug!(endpoint = %self.endpoint, error = %e, spans = n, "OTLP export failed");
            }
        }
    }

    async fn post(&self, body: Vec<u8>) -> Result<(), String> {
        let req = http::Request::post(self.endpoint.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let call = async {
            let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            // Read the (small) answer so the connection can be reused.
            let _ = resp.into_body().collect().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("answered {status}"))
            }
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))?
    }
}

fn resource(config: &Config) -> Json {
    json!({
        "attributes": [
            attribute("service.name", &Value::Str(config.service_name.clone())),
            attribute("service.instance.id", &Value::Str(config.instance.clone())),
            attribute("service.version", &Value::Str(env!("CARGO_PKG_VERSION").to_string())),
        ]
    })
}

/// An `ExportTraceServiceRequest` in OTLP's JSON encoding (ids in hex, times as strings of
/// nanoseconds since the epoch).
pub(crate) fn encode(resource: &Json, spans: &[SpanData]) -> Vec<u8> {
    let spans: Vec<Json> = spans.iter().map(span_json).collect();
    let doc = json!({
        "resourceSpans": [{
            "resource": resource,
            "scopeSpans": [{
                "scope": { "name": "corral", "version": env!("CARGO_PKG_VERSION") },
                "spans": spans,
            }]
        }]
    });
    serde_json::to_vec(&doc).expect("JSON values serialize")
}

fn span_json(s: &SpanData) -> Json {
    let mut j = json!({
        "traceId": s.trace_id.to_hex(),
        "spanId": s.span_id.to_hex(),
        "name": s.name,
        "kind": s.kind as i32,
        "startTimeUnixNano": nanos(s.start),
        "endTimeUnixNano": nanos(s.end),
        "attributes": s.attributes.iter().map(|(k, v)| attribute(k, v)).collect::<Vec<_>>(),
        // STATUS_CODE_ERROR = 2, STATUS_CODE_UNSET = 0.
        "status": if s.error { json!({"code": 2}) } else { json!({}) },
    });
    if let Some(p) = s.parent {
        j["parentSpanId"] = Json::String(p.to_hex());
    }
    j
}

fn attribute(key: &str, v: &Value) -> Json {
    let value = match v {
        Value::Str(s) => json!({ "stringValue": s }),
        // int64 is a string in proto3's JSON mapping.
        Value::Int(n) => json!({ "intValue": n.to_string() }),
        Value::Bool(b) => json!({ "boolValue": b }),
    };
    json!({ "key": key, "value": value })
}

fn nanos(t: SystemTime) -> String {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::{SpanId, TraceId};
    use crate::span::Kind;

    #[test]
    fn a_span_encodes_as_otlp_json() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        let span = SpanData {
            trace_id: TraceId([0xab; 16]),
            span_id: SpanId([0x01; 8]),
            parent: Some(SpanId([0x02; 8])),
            name: "lookup".into(),
            kind: Kind::Internal,
            start,
            end: start + Duration::from_micros(5),
            attributes: vec![
                ("corral.cache.hit", Value::Bool(true)),
                ("http.response.status_code", Value::Int(200)),
            ],
            error: false,
        };
        let body = encode(&json!({"attributes": []}), &[span]);
        let doc: Json = serde_json::from_slice(&body).unwrap();
        let s = &doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(s["traceId"], "ab".repeat(16));
        assert_eq!(s["spanId"], "0101010101010101");
        assert_eq!(s["parentSpanId"], "0202020202020202");
        assert_eq!(s["kind"], 1);
        assert_eq!(s["startTimeUnixNano"], "1700000000123456789");
        assert_eq!(s["endTimeUnixNano"], "1700000000123461789");
        assert_eq!(s["attributes"][0]["value"]["boolValue"], true);
        assert_eq!(s["attributes"][1]["value"]["intValue"], "200");
    }
}
