//! The admin listener: health, readiness, metrics, the purge API, and the dashboard's routes
//! (`crate::ui`).
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
use corral_cluster::hub::Hub;
use corral_core::invalidation::SelectorLimits;
use corral_core::{Cause, Mode, Purge, Selectors};
use corral_http::access::Token;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde_json::json;

use crate::feed::Feed;
use crate::ui::journal::Journal;

/// What the admin handlers share.
pub struct AdminState {
    pub hub: Arc<Hub>,
    /// The numbered feed of events applied here (`GET /_corral/v1/subscribe`), a subscriber
    /// of the hub.
    pub feed: Arc<Feed>,
    /// The last purges applied here, for the dashboard and `corral top`; a subscriber of the hub.
    pub journal: Arc<Journal>,
    /// Peer discovery's health, when a cluster is configured.
    pub discovery: Option<Arc<corral_discovery::Health>>,
    /// Every configured upstream, in configuration order.
    pub upstreams: Vec<Arc<corral_http::Upstream>>,
    /// How long `"wait": true` purges wait for peers at most.
    pub wait_timeout: std::time::Duration,
    pub gateway: Arc<corral_http::Gateway>,
    pub registry: Registry,
    pub token: Option<Token>,
    pub ready: AtomicBool,
    /// Set while the start-up warm-up from peers runs (readiness says so).
    pub warming: AtomicBool,
    /// Warm-up from peers: this replica's donations, and its own at start.
    pub warmup: Option<Arc<corral_cluster::warmup::Warmup>>,
    /// The plain proxy listener, where a fill for a peer (owner routing) is run.
    pub listen: Option<SocketAddr>,
    pub instance: String,
    /// The dashboard's ring of metric samples (`crate::ui`).
    pub samples: crate::ui::state::Samples,
    /// `[[sources]]`: change streams, their leader and position (`GET /sources`).
    pub sources: Arc<crate::sources::Sources>,
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
        .route("/sources", get(sources))
        .route(corral_cluster::EVENTS_PATH, post(peer_events).get(peer_log))
        .route(corral_cluster::warmup::WARMUP_PATH, get(warmup_donate))
        .route(corral_cluster::shard::FILL_PATH, post(fill_for_peer))
        .route("/_corral/v1/subscribe", get(subscribe))
        .merge(crate::ui::routes())
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

async fn readyz(State(s): State<Arc<AdminState>>) -> Response {
    if !s.ready.load(Ordering::Acquire) {
        let why = if s.warming.load(Ordering::Acquire) {
            "starting: warming up from peers\n"
        } else {
            "draining\n"
        };
        return (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
    }
    // Silent peers do not make this replica unready (it serves correctly), but an operator
    // must be able to see that invalidations may have stopped arriving.
    let silent = s
        .hub
        .cluster()
        .map(|c| c.silent_peers())
        .unwrap_or_default();
    if silent.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let list: Vec<String> = silent.iter().map(ToString::to_string).collect();
        (
            StatusCode::OK,
            format!("ready; no word from peers: {}\n", list.join(", ")),
        )
            .into_response()
    }
}

async fn metrics(State(s): State<Arc<AdminState>>) -> Response {
    // Exact counts, read without housekeeping: a scrape must cost the same at any size.
    let store = s.gateway.store();
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
pub(crate) fn refuse_unauthorized(s: &AdminState, headers: &HeaderMap) -> Option<Response> {
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

/// The gate every state-changing endpoint passes: the token first (a refused request learns
/// nothing about its body), then the body.
fn admit<T>(
    s: &AdminState,
    headers: &HeaderMap,
    body: Result<Json<T>, JsonRejection>,
) -> Result<T, Box<Response>> {
    if let Some(refusal) = refuse_unauthorized(s, headers) {
        return Err(Box::new(refusal));
    }
    body.map(|Json(b)| b).map_err(|r| Box::new(body_error(r)))
}

/// Validates every selector, then applies: nothing is applied from a request that fails.
fn apply(
    s: &AdminState,
    peer: SocketAddr,
    purge: Purge,
) -> Result<corral_http::PurgeReport, String> {
    purge.selectors.validate(&SelectorLimits::default())?;
    let done = s
        .hub
        .invalidate(purge, Cause::Admin, &peer.ip().to_string());
    Ok(crate::invalidation::report(&done))
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
    /// `"soft": true` marks stale instead of dropping.
    #[serde(
        default,
        rename = "soft",
        with = "corral_core::invalidation::soft_flag"
    )]
    mode: Mode,
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
    let b = match admit(&s, &headers, body) {
        Ok(b) => b,
        Err(refusal) => return *refusal,
    };
    let selectors = Selectors {
        urls: b.urls,
        tags: b.tags,
        prefixes: b.prefixes,
        all: b.all,
    };
    let report = match apply(&s, peer, Purge::new(selectors, b.mode)) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let mut answer = json!({"purged": report.purged, "event": report.event});
    if b.wait {
        let acks = match s.hub.cluster() {
            Some(c) => c.wait_acked(report.seq, s.wait_timeout).await,
            None => corral_cluster::Acks {
                acknowledged: vec![],
                pending: vec![],
            },
        };
        answer["acknowledged"] = json!(acks.acknowledged);
        answer["pending"] = json!(acks.pending);
    }
    Json(answer).into_response()
}

/// `POST /_corral/v1/events`: a signed batch from a peer.
async fn peer_events(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some(cluster) = s.hub.cluster() else {
        return error(
            StatusCode::NOT_FOUND,
            "no cluster is configured on this replica",
        );
    };
    match cluster.receive(&headers, &body).await {
        Ok(v) => Json(v).into_response(),
        Err((status, msg)) => error(status, msg),
    }
}

/// `GET /_corral/v1/events?since=N`: this replica's retained events, for peers that missed some.
async fn peer_log(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let Some(cluster) = s.hub.cluster() else {
        return error(
            StatusCode::NOT_FOUND,
            "no cluster is configured on this replica",
        );
    };
    let pq = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    match cluster.log_page(&headers, pq) {
        Ok(v) => Json(v).into_response(),
        Err((status, msg)) => error(status, msg),
    }
}

/// `GET /_corral/v1/warmup?max_bytes=N&max_entries=M`: this replica's hottest entries for a
/// warming peer, signed like every peer call, streamed and paced (`corral_cluster::warmup`).
async fn warmup_donate(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let (Some(cluster), Some(warmup)) = (s.hub.cluster(), s.warmup.as_ref()) else {
        return error(
            StatusCode::NOT_FOUND,
            "no cluster is configured on this replica",
        );
    };
    let pq = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    match warmup.donate(cluster, &headers, pq) {
        Ok(stream) => (
            [("content-type", "application/octet-stream")],
            axum::body::Body::from_stream(stream),
        )
            .into_response(),
        Err((status, msg)) => error(status, msg),
    }
}

/// `POST /_corral/v1/fill`: a peer asks this replica, the key's owner, for an entry (owner
/// routing, `crate::owner_tier`). Signed; answered with a `wire` record, or 204 when nothing
/// could be stored.
async fn fill_for_peer(
    State(s): State<Arc<AdminState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (Some(cluster), Some(listen)) = (s.hub.cluster(), s.listen) else {
        return error(
            StatusCode::NOT_FOUND,
            "no cluster or no plain listener here",
        );
    };
    if let Err((status, msg)) = cluster.verify_fill(&headers, &body) {
        return error(status, msg);
    }
    let fill: corral_cluster::shard::FillRequest = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad fill request: {e}")),
    };
    let store = s.gateway.store();
    match crate::owner_tier::fill_for_peer(cluster, store, listen, &fill).await {
        Ok(Some(record)) => {
            ([("content-type", "application/octet-stream")], record).into_response()
        }
        Ok(None) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

/// `GET /_corral/v1/subscribe`: server-sent events, one per invalidation applied here (local,
/// peer, bus), each with an id; `Last-Event-ID` resumes after it from the replay window, or
/// gets `event: gap`. `?tag=` and `?prefix=` narrow the stream. Wire format: `docs/feed.md`.
///
/// Who may subscribe: anyone when no token is configured; with a token, a request from
/// loopback (the co-located app) may omit it, any other must carry it, and a wrong token is
/// refused from anywhere (401), so a misconfigured client learns it at once.
async fn subscribe(
    State(s): State<Arc<AdminState>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: Result<
        axum::extract::Query<Vec<(String, String)>>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Response {
    let presented = headers.contains_key(axum::http::header::AUTHORIZATION);
    if presented || !peer.ip().is_loopback() {
        if let Some(refusal) = refuse_unauthorized(&s, &headers) {
            return refusal;
        }
    }
    let params = match query {
        Ok(axum::extract::Query(p)) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let filter = match crate::feed::Filter::parse(&params) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let last = match headers.get("last-event-id").map(|v| v.to_str()) {
        None => None,
        Some(Ok(v)) => Some(v.to_string()),
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "Last-Event-ID is not visible ASCII",
            )
        }
    };
    let body = crate::feed::stream(s.feed.clone(), filter, last.as_deref());
    (
        [
            ("content-type", "text/event-stream"),
            ("cache-control", "no-cache"),
            ("x-accel-buffering", "no"),
        ],
        axum::body::Body::from_stream(body),
    )
        .into_response()
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
    let b = match admit(&s, &headers, body) {
        Ok(b) => b,
        Err(refusal) => return *refusal,
    };
    match apply(&s, peer, Purge::hard().tag(b.key)) {
        Ok(report) => Json(json!({"purged": report.purged, "event": report.event})).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e.replace("tags[0]", "key")),
    }
}

async fn upstreams(State(s): State<Arc<AdminState>>) -> Response {
    Json(upstreams_doc(&s)).into_response()
}

/// The `/upstreams` document (also part of `/ui/state`).
pub(crate) fn upstreams_doc(s: &AdminState) -> serde_json::Value {
    let routes = s.gateway.router().routes();
    let list: Vec<_> = s
        .upstreams
        .iter()
        .map(|u| {
            let mut doc = u.json();
            doc["routes"] = json!(routes
                .iter()
                .filter(|r| Arc::ptr_eq(&r.upstream, u))
                .map(|r| r.name.clone())
                .collect::<Vec<_>>());
            doc
        })
        .collect();
    json!({"upstreams": list})
}

async fn sources(State(s): State<Arc<AdminState>>) -> Response {
    Json(s.sources.json()).into_response()
}

async fn peers(State(s): State<Arc<AdminState>>) -> Response {
    Json(peers_doc(&s)).into_response()
}

/// The `/peers` document (also part of `/ui/state`).
pub(crate) fn peers_doc(s: &AdminState) -> serde_json::Value {
    if let Some(c) = s.hub.cluster() {
        let mut doc = c.peers_json();
        if let Some(h) = &s.discovery {
            doc["discovery"] = h.json();
        }
        return doc;
    }
    let src = s.hub.source();
    json!({
        "self": {"origin": s.instance, "epoch": src.epoch(), "last_seq": src.last_seq()},
        "peers": [],
        "cluster": "not configured",
    })
}
