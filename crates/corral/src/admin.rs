//! The admin listener: health, readiness, metrics, and the purge API.
//!
//! State-changing endpoints need `Authorization: Bearer <token>` whenever a token is
//! configured (and one must be whenever the listener is not loopback-only). Rejected requests
//! change nothing: bodies are parsed and every selector validated before anything is applied.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{rejection::JsonRejection, DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use corral_core::invalidation::SelectorLimits;
use corral_core::{Cause, Selectors};
use corral_http::access::Token;
use corral_http::InvalidationSink;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde_json::json;

use crate::invalidation::Hub;

/// What the admin handlers share.
pub struct AdminState {
    pub hub: Arc<Hub>,
    pub gateway: Arc<corral_http::Gateway>,
    pub registry: Registry,
    pub token: Option<Token>,
    pub ready: AtomicBool,
    pub instance: String,
}

/// The admin API's routes.
pub fn router(state: Arc<AdminState>, max_body: usize) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/purge", post(purge))
        .route("/invalidate", post(invalidate))
        .route("/upstreams", get(upstreams))
        .route("/peers", get(peers))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

async fn readyz(State(s): State<Arc<AdminState>>) -> Response {
    if s.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    }
}

async fn metrics(State(s): State<Arc<AdminState>>) -> Response {
    let store = s.gateway.store();
    store.run_pending_tasks();
    let m = s.gateway.metrics();
    m.cache_entries.set(store.entry_count() as i64);
    m.cache_bytes.set(store.weighted_size() as i64);
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &s.registry).is_err() {
        return (StatusCode::INTERNAL_SERVER_ERROR, "encoding failed").into_response();
    }
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({"error": msg.into()}))).into_response()
}

/// The 401 answer, unless the request carries the token (when one is configured).
fn refuse_unauthorized(s: &AdminState, headers: &HeaderMap) -> Option<Response> {
    match &s.token {
        Some(t) if !t.authorizes(headers) => Some(error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (Authorization: Bearer <CORRAL_ADMIN_TOKEN>)",
        )),
        _ => None,
    }
}

/// Turns axum's JSON rejections into the contract's answers: 413 for oversized bodies, 400
/// with the parser's message for everything else.
fn body_error(r: JsonRejection) -> Response {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    }
    error(StatusCode::BAD_REQUEST, r.body_text())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeBody {
    #[serde(default)]
    urls: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    prefixes: Vec<String>,
    #[serde(default)]
    all: bool,
    #[serde(default)]
    soft: bool,
    /// Wait for every peer's acknowledgement (meaningful once the cluster is configured).
    #[serde(default)]
    wait: bool,
}

async fn purge(
    State(s): State<Arc<AdminState>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Json<PurgeBody>, JsonRejection>,
) -> Response {
    if let Some(refusal) = refuse_unauthorized(&s, &headers) {
        return refusal;
    }
    let Json(b) = match body {
        Ok(b) => b,
        Err(r) => return body_error(r),
    };
    let selectors = Selectors {
        urls: b.urls,
        tags: b.tags,
        prefixes: b.prefixes,
        all: b.all,
    };
    if let Err(e) = selectors.validate(&SelectorLimits::default()) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let _ = b.wait; // no peers to wait for until the cluster layer is configured
    let report = s
        .hub
        .invalidate(selectors, b.soft, Cause::Admin, &peer.ip().to_string());
    Json(json!({"purged": report.purged, "event": report.event})).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InvalidateBody {
    key: String,
}

async fn invalidate(
    State(s): State<Arc<AdminState>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Json<InvalidateBody>, JsonRejection>,
) -> Response {
    if let Some(refusal) = refuse_unauthorized(&s, &headers) {
        return refusal;
    }
    let Json(b) = match body {
        Ok(b) => b,
        Err(r) => return body_error(r),
    };
    let selectors = Selectors {
        tags: vec![b.key],
        ..Default::default()
    };
    if let Err(e) = selectors.validate(&SelectorLimits::default()) {
        return error(StatusCode::BAD_REQUEST, e.replace("tags[0]", "key"));
    }
    let report = s
        .hub
        .invalidate(selectors, false, Cause::Admin, &peer.ip().to_string());
    Json(json!({"purged": report.purged, "event": report.event})).into_response()
}

async fn upstreams(State(s): State<Arc<AdminState>>) -> Response {
    let mut seen = Vec::new();
    let mut list = Vec::new();
    for r in s.gateway.router().routes() {
        let u = &r.upstream;
        if seen.contains(&u.name) {
            continue;
        }
        seen.push(u.name.clone());
        list.push(json!({
            "name": u.name,
            "endpoints": u.endpoints().iter().map(|a| json!({
                "address": a.to_string(), "source": "static", "weight": 1, "healthy": true, "ejected": false,
            })).collect::<Vec<_>>(),
        }));
    }
    Json(json!({"upstreams": list})).into_response()
}

async fn peers(State(s): State<Arc<AdminState>>) -> Response {
    let src = s.hub.source();
    Json(json!({
        "self": {"instance": s.instance, "epoch": src.epoch(), "last_seq": src.last_seq()},
        "peers": [],
    }))
    .into_response()
}
