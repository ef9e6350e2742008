//! The live dashboard on the admin listener: `GET /ui` (one page of HTML, CSS and a little JS,
//! embedded in the binary: no external assets, no build step), and `GET /ui/state`, the JSON it
//! polls — the same document `corral top` renders.
//!
//! Who may read what: the page itself holds no data, so anyone who reaches the admin listener
//! may load it; `/ui/state` shows who purged what and every peer's state, so it needs the
//! admin token whenever one is configured (the page asks for it and sends it as a Bearer
//! header, keeping it in the tab's session storage, never in a URL). The purge form posts to
//! `POST /purge` under that endpoint's own rules.

pub mod journal;
pub mod state;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use corral_core::store::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use serde_json::json;

use crate::admin::AdminState;

const PAGE: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("app.css");

/// The page may run its own script and style and talk to its own origin, nothing else; it
/// may not be framed (a purge button inside someone else's page is a clickjacking target).
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                      connect-src 'self'; img-src 'self'; base-uri 'none'; \
                      form-action 'none'; frame-ancestors 'none'";

/// The dashboard's routes, merged into the admin router.
pub fn routes() -> Router<Arc<AdminState>> {
    Router::new()
        .route(
            "/ui",
            get(|| async { asset("text/html; charset=utf-8", PAGE) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/ui/app.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route("/ui/state", get(state_handler))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            ("content-type", content_type),
            ("content-security-policy", POLICY),
            ("x-frame-options", "DENY"),
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "no-referrer"),
            ("cache-control", "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn state_handler(State(s): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
    if let Some(refusal) = crate::admin::refuse_unauthorized(&s, &headers) {
        return refusal;
    }
    (
        StatusCode::OK,
        [("cache-control", "no-store")],
        Json(document(&s)),
    )
        .into_response()
}

/// The `/ui/state` document: everything the dashboard and `corral top` show.
pub fn document(s: &AdminState) -> serde_json::Value {
    let store = s.gateway.store();
    json!({
        "instance": s.instance,
        "version": crate::VERSION,
        "now_ms": corral_core::invalidation::now_ms(),
        "traffic": s.samples.traffic(),
        "store": {
            "bytes": store.weighted_size(),
            "max_bytes": store.max_bytes(),
            "entries": store.entry_count(),
            "admissions_refused": store.admissions_refused(),
        },
        "redis": s.samples.breaker().map(|b| json!({"breaker": b})),
        "purges": s.journal.recent(),
        "cluster": crate::admin::peers_doc(s),
        "upstreams": crate::admin::upstreams_doc(s),
        "sources": s.sources.json()["sources"],
    })
}

/// Samples the registry every [`state::INTERVAL`] for the "last minutes" series.
pub async fn run_sampler(s: Arc<AdminState>) {
    let mut tick = tokio::time::interval(state::INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        s.samples.take(&s.registry);
    }
}

/// The store's numbers that only the store knows, read at each scrape: the bound and the
/// admissions refused (nothing is counted twice, nothing kept in sync by hand).
#[derive(Debug)]
pub struct StoreCollector(pub Arc<Store>);

impl Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let refused = ConstCounter::new(self.0.admissions_refused());
        refused.encode(encoder.encode_descriptor(
            "corral_cache_admissions_refused",
            "New keys the store's admission turned away (asked for less often than what they would evict)",
            None,
            refused.metric_type(),
        )?)?;
        let bound = ConstGauge::new(i64::try_from(self.0.max_bytes()).unwrap_or(i64::MAX));
        bound.encode(encoder.encode_descriptor(
            "corral_cache_max_bytes",
            "The store's byte bound (max_size)",
            None,
            bound.metric_type(),
        )?)
    }
}
