//! Owner routing (`[cluster] shard`), wired as the gateway's shared tier: the coalescing
//! leader of a replica that does not own a key asks the owner for it before the origin
//! (`corral_cluster::shard`), and the owner's side of that request, `POST /_corral/v1/fill`.
//!
//! With `[cache.l2]` too, the L2 sits behind owner routing: a key this replica owns (or a
//! request an owner forwarded here) goes through the L2 and its fill lease as without
//! sharding, so the owner's fill is the cluster's one and lands in Redis; a key another
//! replica owns is that owner's to look up and lease, and the L2 is asked only when the owner
//! cannot answer (a replica that falls back fetches without the lease, as without L2).

use std::net::SocketAddr;
use std::sync::Arc;

use corral_cluster::shard::{FillRequest, ShardConfig, MARKER};
use corral_cluster::Cluster;
use corral_core::entry::wire;
use corral_core::judge::Verdict;
use corral_core::{CachePolicy, Entry, Key, KeyRef, Lookup, MethodClass, Scheme, Store};
use corral_http::{FillLease, LeaseOutcome, SharedEntry, SharedLookup, SharedTier};
use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The shared tier that asks a key's owner.
pub struct OwnerTier {
    pub cluster: Arc<Cluster>,
    pub store: Arc<Store>,
    pub shard: ShardConfig,
    pub limits: wire::Limits,
    /// The Redis L2 behind owner routing, when configured.
    pub l2: Option<Arc<dyn SharedTier>>,
}

/// Where the leader's question about a key goes.
enum Route {
    /// Another replica owns the key.
    Owner(SocketAddr),
    /// This replica's own business (it owns the key, or the request was forwarded to it,
    /// or the key is not one owners fill).
    Here,
}

/// Whether owners fill `key` for their peers: only plain GET keys, since the owner fetches
/// through its plain listener.
fn owners_fill(key: KeyRef<'_>) -> bool {
    key.class() == MethodClass::Get && key.scheme() == Scheme::Http
}

impl OwnerTier {
    fn route(&self, key: KeyRef<'_>, request: Option<&HeaderMap>) -> Route {
        if !owners_fill(key) || request.is_some_and(|r| self.cluster.is_forwarded(r, key)) {
            return Route::Here;
        }
        match self.cluster.owner_of(key) {
            Some(owner) if owner != self.cluster.advertise() => Route::Owner(owner),
            _ => Route::Here,
        }
    }

    /// The owner's answer, or the L2's when there is no owner to ask or it cannot answer.
    async fn lookup_key(
        &self,
        key: KeyRef<'_>,
        request: &HeaderMap,
        policy: &CachePolicy,
        purge_seq: u64,
    ) -> SharedLookup {
        let unanswered = match self.route(key, Some(request)) {
            Route::Owner(owner) => match self.ask_owner(owner, key, request).await {
                SharedLookup::Unavailable => SharedLookup::Unavailable,
                answered => return answered,
            },
            Route::Here => SharedLookup::Miss,
        };
        match &self.l2 {
            Some(l2) => l2.lookup(key, request, policy, purge_seq).await,
            None => unanswered,
        }
    }

    /// The owner's entry for `key`, or why there is none.
    async fn ask_owner(
        &self,
        owner: SocketAddr,
        key: KeyRef<'_>,
        request: &HeaderMap,
    ) -> SharedLookup {
        let fill = FillRequest {
            key: key.as_str().to_string(),
            headers: request
                .iter()
                .filter(|(n, _)| n.as_str() != MARKER)
                .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
                .collect(),
        };
        match self
            .cluster
            .fill_from(owner, &fill, self.shard.timeout)
            .await
        {
            Ok(Some(record)) => self.entry_of(key, &record),
            // The owner fetched it and could not store it: the origin it is.
            Ok(None) => SharedLookup::Miss,
            Err(e) => {
                tracing::info!(%owner, error = %e, "owner did not fill; fetching from the origin");
                SharedLookup::Unavailable
            }
        }
    }

    /// The owner's record as an entry of this store, judged like a warmed one (the owner's
    /// fetch may have started before a purge applied here).
    fn entry_of(&self, key: KeyRef<'_>, record: &[u8]) -> SharedLookup {
        let Ok(record) = wire::decode(record, self.limits) else {
            return SharedLookup::Unavailable;
        };
        if record.key != key {
            return SharedLookup::Unavailable;
        }
        let allowance = self.cluster.config().replay_window;
        let started = record.fetch_started().checked_sub(allowance);
        let seq = self
            .store
            .seq_before(started.unwrap_or(std::time::SystemTime::UNIX_EPOCH));
        SharedLookup::Found(SharedEntry {
            entry: record.into_entry(seq),
            // Judged by this store's marks when inserted (`seq`), like a warmed entry.
            verdict: Verdict::Fresh,
        })
    }
}

impl SharedTier for OwnerTier {
    fn lookup<'a>(
        &'a self,
        key: KeyRef<'a>,
        request: &'a HeaderMap,
        policy: &'a CachePolicy,
        purge_seq: u64,
    ) -> BoxFuture<'a, SharedLookup> {
        Box::pin(self.lookup_key(key, request, policy, purge_seq))
    }

    /// A fill made here (this replica owns the key, or its owner failed) goes to the L2;
    /// without one there is nothing to write behind: an owner stored its own fill.
    fn store(&self, key: KeyRef<'_>, entry: Entry, lease: Option<Box<dyn FillLease>>) {
        if let Some(l2) = &self.l2 {
            l2.store(key, entry, lease);
        }
    }

    /// The L2's lease for a key this replica fills for the cluster; none for a key another
    /// replica owns (its owner leases it: asking again after a lease would only ask the
    /// owner twice).
    fn lease<'a>(&'a self, key: KeyRef<'a>) -> BoxFuture<'a, LeaseOutcome> {
        match (&self.l2, self.route(key, None)) {
            (Some(l2), Route::Here) => l2.lease(key),
            _ => Box::pin(async { LeaseOutcome::Proceed }),
        }
    }
}

/// The owner's side: runs the peer's request through this replica's own proxy listener
/// (its coalescing, its one origin fetch, its store), marked so that it is not forwarded
/// again, then answers with the stored entry. `None`: nothing stored to share.
pub async fn fill_for_peer(
    cluster: &Cluster,
    store: &Store,
    listen: SocketAddr,
    fill: &FillRequest,
) -> Result<Option<Vec<u8>>, String> {
    let key = Key::parse(&fill.key).ok_or("not a cache key")?;
    if !owners_fill(key.view()) || !key.path_and_query().starts_with('/') {
        return Err("only GET keys over http are filled for peers".into());
    }
    let mut headers = HeaderMap::new();
    for (n, v) in &fill.headers {
        let (Ok(n), Ok(v)) = (
            HeaderName::try_from(n.as_str()),
            HeaderValue::try_from(v.as_str()),
        ) else {
            return Err(format!("bad header {n:?}"));
        };
        headers.append(n, v);
    }
    // The key's host is what the fetch is for, whatever the peer's Host header said.
    headers.insert(
        http::header::HOST,
        HeaderValue::try_from(key.host()).map_err(|_| "bad host")?,
    );
    headers.insert(MARKER, cluster.marker(key.view()));
    let to = if listen.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), listen.port())
    } else {
        listen
    };
    let mut req = http::Request::get(format!("http://{to}{}", key.path_and_query()));
    if let Some(h) = req.headers_mut() {
        *h = headers.clone();
    }
    let req = req
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let client = Client::builder(TokioExecutor::new()).build_http();
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    // Read to the end: the fill is stored once its body has passed.
    resp.into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(match store.lookup(key.view(), &headers) {
        Lookup::Found(entry) if !entry.is_soft_purged() => {
            let mut out = Vec::new();
            wire::encode(&entry, &mut out);
            Some(out)
        }
        _ => None,
    })
}
