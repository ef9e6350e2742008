//! Spans: one per proxied request (kind server), one per phase inside it (lookup, coalesce
//! wait, fetch, store, L2, lease), and the peers' fan-out (kind client on the sender, server on
//! the receiver), all in the trace the client's `traceparent` names, or a new one.
//!
//! The request's span context travels in a task-local, so a phase opens its span with
//! [`phase`] and no handle passed down the call chain. Off (nothing installed), every entry
//! point here is one load of a `OnceLock` and returns `None`: no allocation, no clock read.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::time::SystemTime;

use http::{HeaderMap, HeaderValue, Request, Response};
use parking_lot::Mutex;

use crate::context::{SpanContext, SpanId, TraceId, TRACEPARENT};
use crate::tracer;

tokio::task_local! {
    /// The request span of the request this task is answering.
    static CURRENT: SpanContext;
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Str(s.to_string())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Str(s)
    }
}
impl From<i64> for Value {
    fn from(n: i64) -> Value {
        Value::Int(n)
    }
}
impl From<u64> for Value {
    fn from(n: u64) -> Value {
        Value::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}
impl From<usize> for Value {
    fn from(n: usize) -> Value {
        Value::from(n as u64)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}

/// OTLP's span kinds (the numbers are the protocol's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Internal = 1,
    Server = 2,
    Client = 3,
}

/// A finished span, as exported.
#[derive(Debug, Clone)]
pub struct SpanData {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent: Option<SpanId>,
    pub name: Cow<'static, str>,
    pub kind: Kind,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, Value)>,
    /// The span's status is an error (a 5xx, an upstream failure).
    pub error: bool,
}

/// A span being recorded; exported when dropped.
pub struct Span {
    data: Option<Box<SpanData>>,
}

impl Span {
    fn start(
        trace_id: TraceId,
        parent: Option<SpanId>,
        name: Cow<'static, str>,
        kind: Kind,
    ) -> Span {
        Span {
            data: Some(Box::new(SpanData {
                trace_id,
                span_id: SpanId::random(),
                parent,
                name,
                kind,
                start: SystemTime::now(),
                end: SystemTime::UNIX_EPOCH,
                attributes: Vec::new(),
                error: false,
            })),
        }
    }

    fn child_of(parent: SpanContext, name: &'static str, kind: Kind) -> Span {
        Span::start(parent.trace_id, Some(parent.span_id), name.into(), kind)
    }

    /// This span as a parent (for `traceparent`).
    pub fn context(&self) -> SpanContext {
        let d = self.data.as_ref().expect("a live span has its data");
        SpanContext {
            trace_id: d.trace_id,
            span_id: d.span_id,
            sampled: true,
        }
    }

    /// Sets an attribute (OpenTelemetry semantic-convention names where one exists).
    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        if let Some(d) = self.data.as_mut() {
            d.attributes.push((key, value.into()));
        }
    }

    /// Marks the span's status as an error.
    pub fn fail(&mut self) {
        if let Some(d) = self.data.as_mut() {
            d.error = true;
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let (Some(mut d), Some(t)) = (self.data.take(), tracer()) {
            d.end = SystemTime::now();
            t.submit(*d);
        }
    }
}

/// Attributes on a span that may not exist (tracing off, or this request not sampled).
pub trait MaybeSpan {
    fn set(&mut self, key: &'static str, value: impl Into<Value>);
}

impl MaybeSpan for Option<Span> {
    fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        if let Some(s) = self {
            s.set(key, value);
        }
    }
}

/// The span of one proxied request; phases opened while [`RequestSpan::run`] runs are its
/// children.
pub struct RequestSpan(Span);

impl RequestSpan {
    /// A span for `req`, continuing the client's trace when its `traceparent` parses (and
    /// following its sampled flag), else a new trace sampled at the configured ratio. `None`
    /// when tracing is off or the request is not sampled.
    pub fn start<B>(req: &Request<B>) -> Option<RequestSpan> {
        let t = tracer()?;
        let parent = incoming(req.headers());
        let sampled = parent.map_or_else(|| t.sample(), |p| p.sampled);
        if !sampled {
            return None;
        }
        let trace_id = parent.map_or_else(TraceId::random, |p| p.trace_id);
        let name = Cow::Owned(req.method().as_str().to_string());
        let mut span = Span::start(trace_id, parent.map(|p| p.span_id), name, Kind::Server);
        span.set("http.request.method", req.method().as_str());
        // Not the query: it may carry credentials, and spans leave the process.
        span.set("url.path", req.uri().path());
        Some(RequestSpan(span))
    }

    /// Runs the request's handling with this span current, then records the response: its
    /// status and its `Cache-Status` (the outcome, `fwd`, `stored`, `collapsed`, `ttl`, `detail`).
    pub async fn run<B, F>(mut self, handle: F) -> Response<B>
    where
        F: Future<Output = Response<B>>,
    {
        let resp = CURRENT.scope(self.0.context(), handle).await;
        let status = resp.status().as_u16();
        self.0.set("http.response.status_code", i64::from(status));
        if status >= 500 {
            self.0.fail();
        }
        if let Some(cs) = resp.headers().get("cache-status") {
            cache_status_attributes(&mut self.0, cs);
        }
        resp
    }
}

/// RFC 9211 `Cache-Status` as attributes: `corral.cache_status` (the whole value) and one per
/// parameter Corral sets.
fn cache_status_attributes(span: &mut Span, value: &HeaderValue) {
    let Ok(text) = value.to_str() else {
        return;
    };
    span.set("corral.cache_status", text);
    let mut hit = false;
    for param in text.split(';').skip(1).map(str::trim) {
        let (name, val) = param.split_once('=').unwrap_or((param, ""));
        let val = val.trim_matches('"');
        match name {
            "hit" => hit = true,
            "fwd" => span.set("corral.cache.fwd", val),
            "fwd-status" => {
                if let Ok(n) = val.parse::<i64>() {
                    span.set("corral.cache.fwd_status", n);
                }
            }
            "stored" => span.set("corral.cache.stored", true),
            "collapsed" => span.set("corral.cache.collapsed", true),
            "ttl" => {
                if let Ok(n) = val.parse::<i64>() {
                    span.set("corral.cache.ttl", n);
                }
            }
            "detail" => span.set("corral.cache.detail", val),
            _ => {}
        }
    }
    span.set("corral.cache.hit", hit);
}

fn incoming(headers: &HeaderMap) -> Option<SpanContext> {
    SpanContext::parse(headers.get(TRACEPARENT)?.as_bytes())
}

/// A child span of the current request (`None` outside a traced request).
pub fn phase(name: &'static str) -> Option<Span> {
    tracer()?;
    let parent = CURRENT.try_with(|c| *c).ok()?;
    Some(Span::child_of(parent, name, Kind::Internal))
}

/// The current request's span context, if this task answers a traced request.
pub fn current() -> Option<SpanContext> {
    tracer()?;
    CURRENT.try_with(|c| *c).ok()
}

/// Sets `traceparent` on a request we send (to an origin) to `span`, or else to the current
/// request's span. Nothing when tracing is off or the request is not traced: the client's own
/// header, if any, then passes unchanged.
pub fn inject(headers: &mut HeaderMap, span: Option<&Span>) {
    let Some(ctx) = span.map(Span::context).or_else(current) else {
        return;
    };
    headers.insert(TRACEPARENT, ctx.header());
}

/// A server span continuing the trace a peer's request names in its `traceparent`; `None`
/// when tracing is off or the header is absent, invalid or not sampled.
pub fn remote_span(name: &'static str, headers: &HeaderMap) -> Option<Span> {
    tracer()?;
    let parent = incoming(headers).filter(|p| p.sampled)?;
    Some(Span::child_of(parent, name, Kind::Server))
}

/// How many invalidation events remember the trace that made them (oldest forgotten first).
const REMEMBERED_EVENTS: usize = 1024;

type EventTraces = (HashMap<String, SpanContext>, VecDeque<String>);
static EVENT_TRACES: Mutex<Option<EventTraces>> = Mutex::new(None);

/// Remembers that invalidation event `id` was made by the current traced request, so that
/// its fan-out to peers, which runs later on other tasks, joins the same trace.
pub fn remember_event(id: &str) {
    let Some(ctx) = current() else {
        return;
    };
    let mut guard = EVENT_TRACES.lock();
    let (map, order) = guard.get_or_insert_with(Default::default);
    if map.insert(id.to_string(), ctx).is_none() {
        order.push_back(id.to_string());
    }
    while order.len() > REMEMBERED_EVENTS {
        if let Some(old) = order.pop_front() {
            map.remove(&old);
        }
    }
}

/// A client span for delivering events to a peer, in the trace of the first of `ids` that a
/// traced request made; `None` when none was.
pub fn event_span<'a>(name: &'static str, ids: impl IntoIterator<Item = &'a str>) -> Option<Span> {
    tracer()?;
    let parent = {
        let guard = EVENT_TRACES.lock();
        let (map, _) = guard.as_ref()?;
        ids.into_iter().find_map(|id| map.get(id).copied())?
    };
    Some(Span::child_of(parent, name, Kind::Client))
}
