//! Coherence by joining the cluster directly: the same signed HTTP fan-out as the gateway
//! ([`corral_cluster`]), with peers from any [`corral_discovery::Spec`].
//!
//! A [`Member`] listens on its own address for `POST /_corral/v1/events` (signed batches from
//! peers) and `GET /_corral/v1/events?since=N` (its log, for peers that missed events), numbers
//! and broadcasts every invalidation of the attached caches to every discovered peer, retries
//! until acknowledged, and detects and recovers from gaps. Peers may be other services using
//! this library or Corral gateways: the protocol is the same, so a purge on any Corral of the
//! cluster reaches the service's caches too.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use corral_cache::{cluster::{Member, MemberConfig}, Cache};
//! use corral_discovery::Spec;
//! let prices: Cache<u64, u32> = Cache::builder("prices").build()?;
//! let member = Member::start(MemberConfig {
//!     listen: "10.1.2.3:7946".parse()?,
//!     advertise: None,
//!     instance: "booking-1".into(),
//!     secret: std::env::var("CORRAL_CLUSTER_SECRET")?,
//!     peers: Spec::Dns { name: "booking-headless".into(), port: 7946, srv: false,
//!                        nameserver: None, refresh: std::time::Duration::from_secs(5) },
//! }).await?;
//! member.attach(&prices);
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Json;
use corral_cluster::{Cluster, ClusterConfig, ClusterMetrics, Secret};
use corral_core::{Appliers, Cause, EventSource, Purge};
use corral_discovery::{DiscoveryMetrics, Spec};
use prometheus_client::registry::Registry;

use crate::{Cache, Key, Publish};

/// How a [`Member`] joins.
#[derive(Debug, Clone)]
pub struct MemberConfig {
    /// Where to listen for peers' events.
    pub listen: SocketAddr,
    /// The address peers reach this member at (default: `listen`); excluded from the peers.
    pub advertise: Option<SocketAddr>,
    /// This member's name in events (unique in the cluster, e.g. the pod name).
    pub instance: String,
    /// The cluster's signing secret (at least 16 bytes), shared by every member.
    pub secret: String,
    /// How to find the peers.
    pub peers: Spec,
}

/// Why a member could not start.
#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    #[error("cluster secret: {0}")]
    Secret(String),
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
}

/// A member of the cluster. See the [module docs](self). Stops when dropped.
pub struct Member {
    /// The attached caches: where the cluster delivers peers' events (and, after an
    /// unrecoverable gap, the purge of everything, which `corral-cluster` logs).
    caches: Arc<Appliers>,
    core: Arc<Core>,
    server: tokio::task::JoinHandle<()>,
    addr: SocketAddr,
}

struct Core {
    cluster: Arc<Cluster>,
    source: EventSource,
    registry: parking_lot::Mutex<Registry>,
}

impl Member {
    /// Binds, starts discovery and the fan-out.
    pub async fn start(cfg: MemberConfig) -> Result<Member, MemberError> {
        let secret = Secret::new(&cfg.secret).map_err(MemberError::Secret)?;
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| MemberError::Listen(cfg.listen, e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| MemberError::Listen(cfg.listen, e))?;
        let advertise = cfg.advertise.unwrap_or(addr);
        let source = EventSource::new(cfg.instance.clone());
        let mut registry = Registry::default();
        let dm = DiscoveryMetrics::register(&mut registry);
        let cm = ClusterMetrics::register(&mut registry);
        let peers =
            corral_cluster::peers::discovered(&cfg.peers, dm.source("peers", cfg.peers.kind()));
        let caches = Arc::new(Appliers::default());
        let cluster = Cluster::start(
            ClusterConfig::new(secret, advertise, cfg.instance, source.epoch()),
            peers,
            caches.clone(),
            cm,
        );
        let core = Arc::new(Core {
            cluster,
            source,
            registry: parking_lot::Mutex::new(registry),
        });
        let app = axum::Router::new()
            .route(corral_cluster::EVENTS_PATH, post(receive).get(log_page))
            .with_state(core.clone());
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "cluster member listener failed");
            }
        });
        Ok(Member {
            caches,
            core,
            server,
            addr,
        })
    }

    /// The address the member listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Applies peers' invalidations to `cache` and broadcasts `cache`'s own.
    pub fn attach<K: Key, V: Clone + Send + Sync + 'static>(&self, cache: &Cache<K, V>) {
        self.caches.add(cache.applier());
        cache.attach_publisher(Arc::new(Publisher(Arc::downgrade(&self.core))));
    }

    /// `/peers`-style JSON: each peer, its acknowledged sequence, queue and failures.
    pub fn peers_json(&self) -> serde_json::Value {
        self.core.cluster.peers_json()
    }

    /// The cluster and discovery metrics (`corral_peer_*`, `corral_discovery_*`) in the
    /// Prometheus text format.
    pub fn metrics_text(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.core.registry.lock());
        out
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn answer(r: Result<serde_json::Value, (StatusCode, String)>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err((status, msg)) => (status, Json(serde_json::json!({ "error": msg }))).into_response(),
    }
}

async fn receive(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    answer(core.cluster.receive(&headers, &body).await)
}

async fn log_page(State(core): State<Arc<Core>>, headers: HeaderMap, uri: Uri) -> Response {
    let pq = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    answer(core.cluster.log_page(&headers, pq))
}

struct Publisher(Weak<Core>);

impl Publish for Publisher {
    fn publish(&self, purge: Purge) {
        if let Some(core) = self.0.upgrade() {
            let event = core.source.next(purge, Cause::Admin);
            core.cluster.publish(Arc::new(event));
        }
    }
}
