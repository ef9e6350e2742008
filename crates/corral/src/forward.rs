//! `[[forward]]`: every invalidation this replica applies (local, from peers, from the bus) is
//! POSTed to the co-located app, so an app in any language with its own in-memory cache and
//! its own purge endpoint stays coherent without speaking Corral's protocol.
//!
//! The body (and URL) are templates. `{tag}`, `{url}` and `{prefix}` make one request per tag,
//! URL or prefix of the event (only the selector kinds the template names are sent);
//! `{event}` is the whole event as JSON, `{soft}` is `true`/`false`, `{id}` the event id. A
//! template that names none of `{tag}`, `{url}`, `{prefix}` gets one request per event. A
//! purge of everything is sent with `all_body` when it is set (else skipped and counted:
//! per-key endpoints cannot express it). Values are JSON-escaped in the body and
//! percent-encoded in the URL.
//!
//! Delivery: a bounded queue per target (full: the request is dropped and counted), requests
//! in order, each retried with exponential backoff on a connection error, a timeout, a 5xx or
//! a 429; any other 4xx is final. Metrics: `corral_forward_requests_total{target,outcome}`,
//! `corral_forward_failures_total{target}`, `corral_forward_dropped_total{target,reason}`,
//! `corral_forward_queue_depth{target}`.

use corral_core::Backoff;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use corral_core::InvalidationEvent;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};

use crate::config::{bad, parse_duration, ConfigError};

/// One `[[forward]]` entry as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForward {
    pub url: Option<String>,
    pub body: Option<String>,
    pub all_body: Option<String>,
    pub method: Option<String>,
    pub content_type: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub timeout: Option<String>,
    pub retries: Option<u32>,
    pub backoff: Option<String>,
    pub queue: Option<usize>,
}

/// One validated forward target.
#[derive(Debug, Clone)]
pub struct ForwardSpec {
    pub url: String,
    pub body: String,
    pub all_body: Option<String>,
    pub method: http::Method,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub timeout: Duration,
    pub retries: u32,
    pub backoff: Duration,
    pub queue: usize,
}

const PLACEHOLDERS: [&str; 6] = ["{tag}", "{url}", "{prefix}", "{event}", "{soft}", "{id}"];

/// Checks every `[[forward]]` entry, naming the first bad value.
pub fn resolve(raw: &[RawForward]) -> Result<Vec<ForwardSpec>, ConfigError> {
    raw.iter()
        .enumerate()
        .map(|(i, f)| {
            let key = |k: &str| format!("forward[{i}].{k}");
            let url = f
                .url
                .clone()
                .ok_or_else(|| bad(&key("url"), "", "required: the app's endpoint, http://host:port/path"))?;
            let parsed: http::Uri = url.replace(['{', '}'], "").parse().map_err(|_| {
                bad(&key("url"), &url, "expected an http:// URL")
            })?;
            if parsed.scheme_str() != Some("http") || parsed.authority().is_none() {
                return Err(bad(&key("url"), &url, "expected an http:// URL with a host (https is not supported for the co-located app)"));
            }
            let body = f.body.clone().unwrap_or_else(|| "{event}".into());
            for (name, t) in [("url", &url), ("body", &body)] {
                check_template(&key(name), t)?;
            }
            if let Some(a) = &f.all_body {
                check_template(&key("all_body"), a)?;
            }
            let method = match f.method.as_deref().unwrap_or("POST") {
                m @ ("POST" | "PUT" | "DELETE" | "PATCH" | "GET") => m.parse().expect("a method"),
                m => return Err(bad(&key("method"), m, "one of POST, PUT, PATCH, DELETE, GET")),
            };
            let mut headers = Vec::new();
            let ct = f.content_type.clone().unwrap_or_else(|| "application/json".into());
            headers.push((
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_str(&ct)
                    .map_err(|_| bad(&key("content_type"), &ct, "a valid header value"))?,
            ));
            for (n, v) in &f.headers {
                let name = http::HeaderName::from_bytes(n.as_bytes())
                    .map_err(|_| bad(&key("headers"), n, "a valid header name"))?;
                let value = http::HeaderValue::from_str(v)
                    .map_err(|_| bad(&key(&format!("headers.{n}")), v, "a valid header value"))?;
                headers.push((name, value));
            }
            let timeout = parse_duration(&key("timeout"), f.timeout.as_deref().unwrap_or("5s"))?;
            let backoff = parse_duration(&key("backoff"), f.backoff.as_deref().unwrap_or("200ms"))?;
            let retries = f.retries.unwrap_or(5);
            if retries > 20 {
                return Err(bad(&key("retries"), retries, "at most 20"));
            }
            let queue = f.queue.unwrap_or(10_000);
            if queue == 0 || queue > 1_000_000 {
                return Err(bad(&key("queue"), queue, "between 1 and 1000000"));
            }
            Ok(ForwardSpec {
                url,
                body,
                all_body: f.all_body.clone(),
                method,
                headers,
                timeout,
                retries,
                backoff,
                queue,
            })
        })
        .collect()
}

fn check_template(key: &str, t: &str) -> Result<(), ConfigError> {
    let mut rest = t;
    while let Some(i) = rest.find('{') {
        let after = &rest[i..];
        if let Some(p) = PLACEHOLDERS.iter().find(|p| after.starts_with(*p)) {
            rest = &after[p.len()..];
            continue;
        }
        // Literal braces (JSON) are fine; only `{name}` that looks like a placeholder is not.
        let word: String = after[1..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !word.is_empty() && after[1 + word.len()..].starts_with('}') {
            return Err(bad(
                key,
                t,
                &format!(
                    "unknown placeholder {{{word}}}; known: {}",
                    PLACEHOLDERS.join(" ")
                ),
            ));
        }
        rest = &after[1..];
    }
    Ok(())
}

/// One request to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub url: String,
    pub body: String,
}

/// The requests one event becomes for `spec`; `None` when it cannot be expressed (a purge of
/// everything without `all_body`).
pub fn render(spec: &ForwardSpec, e: &InvalidationEvent) -> Option<Vec<Request>> {
    let event_json = serde_json::to_string(e).unwrap_or_default();
    let fill = |t: &str, kind: &str, value: &str, json: bool| -> String {
        let esc = |v: &str| {
            if json {
                let s = serde_json::to_string(v).unwrap_or_default();
                s[1..s.len() - 1].to_string()
            } else {
                percent(v)
            }
        };
        let mut out = t.to_string();
        for k in ["tag", "url", "prefix"] {
            let v = if k == kind { value } else { "" };
            out = out.replace(&format!("{{{k}}}"), &esc(v));
        }
        out.replace("{soft}", if e.purge.is_soft() { "true" } else { "false" })
            .replace("{id}", &esc(&e.id))
            .replace("{event}", if json { &event_json } else { "" })
    };
    let s = e.selectors();
    if s.all {
        let body = spec.all_body.as_ref()?;
        return Some(vec![Request {
            url: fill(&spec.url, "", "", false),
            body: fill(body, "", "", true),
        }]);
    }
    let uses = |p: &str| spec.url.contains(p) || spec.body.contains(p);
    let per: Vec<(&str, &Vec<String>)> =
        [("tag", &s.tags), ("url", &s.urls), ("prefix", &s.prefixes)]
            .into_iter()
            .filter(|(k, _)| uses(&format!("{{{k}}}")))
            .collect();
    if per.is_empty() {
        return Some(vec![Request {
            url: fill(&spec.url, "", "", false),
            body: fill(&spec.body, "", "", true),
        }]);
    }
    Some(
        per.into_iter()
            .flat_map(|(k, list)| {
                list.iter().map(move |v| Request {
                    url: fill(&spec.url, k, v, false),
                    body: fill(&spec.body, k, v, true),
                })
            })
            .collect(),
    )
}

fn percent(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabel {
    target: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    target: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabel {
    target: String,
    reason: &'static str,
}

/// Forward metrics, shared by every target.
#[derive(Clone, Default)]
pub struct ForwardMetrics {
    requests: Family<OutcomeLabel, Counter>,
    failures: Family<TargetLabel, Counter>,
    dropped: Family<DropLabel, Counter>,
    depth: Family<TargetLabel, Gauge>,
}

impl ForwardMetrics {
    pub fn register(r: &mut Registry) -> ForwardMetrics {
        let m = ForwardMetrics::default();
        r.register(
            "corral_forward_requests",
            "Requests to forward targets by outcome (ok, retry, failed)",
            m.requests.clone(),
        );
        r.register(
            "corral_forward_failures",
            "Invalidations not delivered to a forward target after every retry",
            m.failures.clone(),
        );
        r.register(
            "corral_forward_dropped",
            "Invalidations not forwarded: queue_full, lagged, or all (no all_body)",
            m.dropped.clone(),
        );
        r.register(
            "corral_forward_queue_depth",
            "Requests queued for a forward target",
            m.depth.clone(),
        );
        m
    }
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

struct Target {
    spec: ForwardSpec,
    tx: mpsc::Sender<Request>,
    label: String,
}

/// Starts one delivery task per target and follows `events` (the hub's feed).
pub fn start(
    specs: Vec<ForwardSpec>,
    mut events: broadcast::Receiver<Arc<InvalidationEvent>>,
    metrics: ForwardMetrics,
) {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_connect_timeout(Some(Duration::from_secs(2)));
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(http);
    let targets: Vec<Target> = specs
        .into_iter()
        .map(|spec| {
            let (tx, rx) = mpsc::channel(spec.queue);
            let label = spec.url.clone();
            tokio::spawn(deliver(spec.clone(), rx, client.clone(), metrics.clone()));
            Target { spec, tx, label }
        })
        .collect();
    tokio::spawn(async move {
        loop {
            let event = match events.recv().await {
                Ok(e) => e,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    // Events were missed: the only safe message is "everything".
                    tracing::warn!(missed = n, "forward fell behind the invalidation feed");
                    for t in &targets {
                        metrics
                            .dropped
                            .get_or_create(&DropLabel {
                                target: t.label.clone(),
                                reason: "lagged",
                            })
                            .inc_by(n);
                    }
                    Arc::new(InvalidationEvent {
                        id: format!("forward-lagged-{}", corral_core::invalidation::now_ms()),
                        origin: String::new(),
                        epoch: 0,
                        seq: 0,
                        purge: corral_core::Purge::hard().all(),
                        timestamp_ms: corral_core::invalidation::now_ms(),
                        cause: corral_core::Cause::Admin,
                    })
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            for t in &targets {
                let Some(reqs) = render(&t.spec, &event) else {
                    metrics
                        .dropped
                        .get_or_create(&DropLabel {
                            target: t.label.clone(),
                            reason: "all",
                        })
                        .inc();
                    continue;
                };
                for r in reqs {
                    if t.tx.try_send(r).is_err() {
                        metrics
                            .dropped
                            .get_or_create(&DropLabel {
                                target: t.label.clone(),
                                reason: "queue_full",
                            })
                            .inc();
                    } else {
                        metrics
                            .depth
                            .get_or_create(&TargetLabel {
                                target: t.label.clone(),
                            })
                            .inc();
                    }
                }
            }
        }
    });
}

async fn deliver(
    spec: ForwardSpec,
    mut rx: mpsc::Receiver<Request>,
    client: HttpClient,
    metrics: ForwardMetrics,
) {
    let target = spec.url.clone();
    let outcome = |o: &'static str| {
        metrics
            .requests
            .get_or_create(&OutcomeLabel {
                target: target.clone(),
                outcome: o,
            })
            .inc();
    };
    let depth = metrics
        .depth
        .get_or_create(&TargetLabel {
            target: target.clone(),
        })
        .clone();
    let failures = metrics
        .failures
        .get_or_create(&TargetLabel {
            target: target.clone(),
        })
        .clone();
    while let Some(r) = rx.recv().await {
        depth.dec();
        let mut backoff = Backoff::new(spec.backoff, Duration::from_secs(30));
        let mut attempt = 0;
        loop {
            let result = send(&client, &spec, &r).await;
            match result {
                Ok(()) => {
                    outcome("ok");
                    break;
                }
                Err((retryable, why)) if retryable && attempt < spec.retries => {
                    outcome("retry");
                    tracing::debug!(url = %r.url, attempt, why, "forward failed; retrying");
                    backoff.wait().await;
                    attempt += 1;
                }
                Err((_, why)) => {
                    outcome("failed");
                    failures.inc();
                    tracing::warn!(url = %r.url, why, "invalidation not forwarded");
                    break;
                }
            }
        }
    }
}

/// One attempt. `Err((retryable, why))`.
async fn send(client: &HttpClient, spec: &ForwardSpec, r: &Request) -> Result<(), (bool, String)> {
    let mut b = http::Request::builder()
        .method(spec.method.clone())
        .uri(&r.url);
    for (n, v) in &spec.headers {
        b = b.header(n, v);
    }
    let req = b
        .body(Full::new(Bytes::from(r.body.clone())))
        .map_err(|e| (false, format!("bad request: {e}")))?;
    match tokio::time::timeout(spec.timeout, client.request(req)).await {
        Err(_) => Err((true, "timed out".into())),
        Ok(Err(e)) => Err((true, e.to_string())),
        Ok(Ok(resp)) => {
            let s = resp.status();
            if s.is_success() {
                Ok(())
            } else {
                Err((
                    s.is_server_error() || s == http::StatusCode::TOO_MANY_REQUESTS,
                    format!("status {s}"),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_core::{Cause, Mode, Purge, Selectors};

    fn spec(url: &str, body: &str) -> ForwardSpec {
        resolve(&[RawForward {
            url: Some(url.into()),
            body: Some(body.into()),
            ..Default::default()
        }])
        .unwrap()
        .remove(0)
    }

    fn event(s: Selectors) -> InvalidationEvent {
        corral_core::EventSource::new("r1").next(Purge::new(s, Mode::Hard), Cause::Admin)
    }

    #[test]
    fn one_request_per_tag_json_escaped() {
        let s = spec(
            "http://127.0.0.1:3000/invalidate-cache",
            r#"{"key": "{tag}"}"#,
        );
        let e = event(Selectors {
            tags: vec!["a".into(), "b\"c".into()],
            urls: vec!["/x".into()],
            ..Default::default()
        });
        let r = render(&s, &e).unwrap();
        assert_eq!(
            r.len(),
            2,
            "urls are not sent: the template names only {{tag}}"
        );
        assert_eq!(r[0].body, r#"{"key": "a"}"#);
        assert_eq!(r[1].body, r#"{"key": "b\"c"}"#);
    }

    #[test]
    fn url_templates_and_whole_events() {
        let s = spec("http://127.0.0.1:3000/purge?path={url}", "");
        let e = event(Selectors {
            urls: vec!["/a b".into()],
            ..Default::default()
        });
        assert_eq!(
            render(&s, &e).unwrap()[0].url,
            "http://127.0.0.1:3000/purge?path=/a%20b"
        );
        let s = spec("http://127.0.0.1:3000/hook", "{event}");
        let r = render(&s, &e).unwrap();
        assert_eq!(r.len(), 1);
        let back: InvalidationEvent = serde_json::from_str(&r[0].body).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn purge_all_needs_all_body() {
        let all = event(Selectors {
            all: true,
            ..Default::default()
        });
        assert_eq!(
            render(&spec("http://h:1/x", r#"{"key": "{tag}"}"#), &all),
            None
        );
        let mut s = spec("http://h:1/x", r#"{"key": "{tag}"}"#);
        s.all_body = Some(r#"{"all": true}"#.into());
        assert_eq!(render(&s, &all).unwrap()[0].body, r#"{"all": true}"#);
    }

    #[test]
    fn bad_entries_are_named() {
        let e = |f: RawForward| resolve(&[f]).unwrap_err().0;
        assert!(e(RawForward::default()).contains("forward[0].url"));
        let m = e(RawForward {
            url: Some("ftp://x/y".into()),
            ..Default::default()
        });
        assert!(m.contains("forward[0].url") && m.contains("http://"), "{m}");
        let m = e(RawForward {
            url: Some("http://x:1/y".into()),
            body: Some(r#"{"key": "{tags}"}"#.into()),
            ..Default::default()
        });
        assert!(m.contains("forward[0].body") && m.contains("{tags}"), "{m}");
        let m = e(RawForward {
            url: Some("http://x:1/y".into()),
            timeout: Some("soon".into()),
            ..Default::default()
        });
        assert!(m.contains("forward[0].timeout"), "{m}");
        let m = e(RawForward {
            url: Some("http://x:1/y".into()),
            method: Some("BREW".into()),
            ..Default::default()
        });
        assert!(m.contains("forward[0].method"), "{m}");
    }
}
