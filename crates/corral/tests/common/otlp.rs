//! A small OTLP/HTTP receiver for tests: accepts `POST /v1/traces` with JSON encoding (what
//! corral's exporter sends), decodes every span and keeps it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::Value;

/// One decoded span.
#[derive(Debug, Clone)]
pub struct Span {
    pub trace_id: String,
    pub span_id: String,
    pub parent: Option<String>,
    pub name: String,
    pub kind: i64,
    pub start: u128,
    pub end: u128,
    pub attributes: HashMap<String, Value>,
    /// The resource's `service.instance.id`: which replica sent it.
    pub instance: String,
    pub error: bool,
}

impl Span {
    pub fn str(&self, key: &str) -> Option<&str> {
        self.attributes.get(key)?.get("stringValue")?.as_str()
    }
    pub fn bool(&self, key: &str) -> Option<bool> {
        self.attributes.get(key)?.get("boolValue")?.as_bool()
    }
    pub fn int(&self, key: &str) -> Option<i64> {
        self.attributes
            .get(key)?
            .get("intValue")?
            .as_str()?
            .parse()
            .ok()
    }
}

/// Makes requests until one reaches Redis through `c`'s L2 tier: the tier connects after the
/// replica is ready, and a lookup made before that is answered without Redis (no L2 or
/// lease phase to see).
pub async fn prime_l2(c: &super::Corral) {
    let mut n = 0;
    let connected = super::eventually(std::time::Duration::from_secs(15), async || {
        n += 1;
        let _ = c.get(&format!("/prime/{n}")).await;
        c.metric("corral_redis_calls_total{kind=\"ok\"}").await >= 1.0
    })
    .await;
    assert!(connected, "no Redis call worked on {}", c.admin);
}

pub struct Receiver {
    pub addr: SocketAddr,
    spans: Arc<Mutex<Vec<Span>>>,
    /// Bodies that were not a valid export request (the test fails on any).
    pub rejected: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
        let rejected: Arc<Mutex<Vec<String>>> = Arc::default();
        let (s, r) = (spans.clone(), rejected.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (s, r) = (s.clone(), r.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<Incoming>| {
                        let (s, r) = (s.clone(), r.clone());
                        async move { Ok::<_, Infallible>(receive(req, &s, &r).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Receiver {
            addr,
            spans,
            rejected,
        }
    }

    /// The endpoint as configured (`otlp_endpoint`): the signal path is corral's to add.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn spans(&self) -> Vec<Span> {
        assert!(
            self.rejected.lock().is_empty(),
            "the receiver got invalid exports: {:?}",
            self.rejected.lock()
        );
        self.spans.lock().clone()
    }

    pub fn trace(&self, trace_id: &str) -> Vec<Span> {
        self.spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect()
    }
}

async fn receive(
    req: http::Request<Incoming>,
    spans: &Mutex<Vec<Span>>,
    rejected: &Mutex<Vec<String>>,
) -> http::Response<Full<Bytes>> {
    let ok_path = req.method() == http::Method::POST && req.uri().path() == "/v1/traces";
    let json = req
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let decoded = if ok_path && json {
        decode(&body)
    } else {
        Err("not a POST /v1/traces with application/json".to_string())
    };
    match decoded {
        Ok(mut got) => {
            spans.lock().append(&mut got);
            http::Response::new(Full::new(Bytes::from_static(b"{}")))
        }
        Err(e) => {
            rejected.lock().push(e);
            let mut r = http::Response::new(Full::new(Bytes::new()));
            *r.status_mut() = http::StatusCode::BAD_REQUEST;
            r
        }
    }
}

fn hex_id(v: &Value, len: usize) -> Result<String, String> {
    let s = v.as_str().ok_or("an id is not a string")?;
    if s.len() != len || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("bad id {s:?}"));
    }
    Ok(s.to_string())
}

fn nanos(v: &Value) -> Result<u128, String> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad time {v}"))
}

fn decode(body: &[u8]) -> Result<Vec<Span>, String> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for rs in doc["resourceSpans"].as_array().ok_or("no resourceSpans")? {
        let instance = rs["resource"]["attributes"]
            .as_array()
            .and_then(|a| a.iter().find(|kv| kv["key"] == "service.instance.id"))
            .and_then(|kv| kv["value"]["stringValue"].as_str())
            .ok_or("no service.instance.id")?
            .to_string();
        for ss in rs["scopeSpans"].as_array().ok_or("no scopeSpans")? {
            for s in ss["spans"].as_array().ok_or("no spans")? {
                let attributes = s["attributes"]
                    .as_array()
                    .ok_or("no attributes")?
                    .iter()
                    .map(|kv| {
                        (
                            kv["key"].as_str().unwrap_or("").to_string(),
                            kv["value"].clone(),
                        )
                    })
                    .collect();
                out.push(Span {
                    trace_id: hex_id(&s["traceId"], 32)?,
                    span_id: hex_id(&s["spanId"], 16)?,
                    parent: match s.get("parentSpanId") {
                        Some(p) => Some(hex_id(p, 16)?),
                        None => None,
                    },
                    name: s["name"].as_str().ok_or("no name")?.to_string(),
                    kind: s["kind"].as_i64().ok_or("no kind")?,
                    start: nanos(&s["startTimeUnixNano"])?,
                    end: nanos(&s["endTimeUnixNano"])?,
                    attributes,
                    instance: instance.clone(),
                    error: s["status"]["code"] == 2,
                });
            }
        }
    }
    Ok(out)
}
