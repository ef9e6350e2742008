//! # corral-origin
//!
//! The bundled example origin, used by `corral demo`, the integration tests and the
//! benchmarks. It serves:
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /packages` | the catalogue (JSON), tag `packages` |
//! | `GET /packages/{id}` | one lab-test package: inclusions, price, providers; `max-age=300`, `ETag` (304 on match), tags `package-{id} packages` |
//! | `POST /admin/packages/{id}/price` | `{"price_cents": N}` changes the price, then asks Corral to purge tag `package-{id}` (when `purge_url` is set) |
//! | `GET /bytes/{n}` | n deterministic bytes, `max-age=3600` (or `?ttl=`), tags `bytes bytes-{n}` |
//! | `GET /key/{k}?size=N&tag=T` | N bytes for key k (Zipf mixes), tags `key-{k}` and `T` |
//! | `GET /slow/{ms}/{anything}` | cacheable, answered after `ms` milliseconds |
//! | `GET /_origin/stats` | request counts per route kind (tests assert on them) |
//! | `GET /health` | 200 |

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use serde::Serialize;

/// How the origin behaves.
#[derive(Debug, Clone, Default)]
pub struct OriginConfig {
    /// Added to every response (stampede tests).
    pub delay: Duration,
    /// A Corral admin base URL (`http://127.0.0.1:9090`): price changes purge through it.
    pub purge_url: Option<String>,
    /// Bearer token for that admin API.
    pub admin_token: Option<String>,
}

/// Request counts per route kind.
#[derive(Debug, Default)]
pub struct OriginStats {
    counts: Mutex<BTreeMap<&'static str, u64>>,
    total: AtomicU64,
}

impl OriginStats {
    fn hit(&self, kind: &'static str) {
        self.total.fetch_add(1, Ordering::Relaxed);
        *self.counts.lock().entry(kind).or_default() += 1;
    }

    /// Requests served, by kind (`packages`, `bytes`, `key`, `slow`, `admin`, ...).
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        self.counts.lock().clone()
    }
}

/// A lab-test package.
#[derive(Debug, Clone, Serialize)]
pub struct Package {
    pub id: u32,
    pub name: String,
    pub inclusions: Vec<String>,
    pub price_cents: u64,
    pub currency: String,
    pub providers: Vec<String>,
}

fn catalogue() -> HashMap<u32, Package> {
    let p = |id, name: &str, inc: &[&str], price, prov: &[&str]| Package {
        id,
        name: name.into(),
        inclusions: inc.iter().map(|s| s.to_string()).collect(),
        price_cents: price,
        currency: "EUR".into(),
        providers: prov.iter().map(|s| s.to_string()).collect(),
    };
    [
        p(
            1,
            "Basic health check",
            &["Complete blood count", "Lipid panel", "Fasting glucose"],
            3999,
            &["Labcorp North", "City Diagnostics"],
        ),
        p(
            2,
            "Thyroid panel",
            &["TSH", "Free T4", "Free T3"],
            5499,
            &["City Diagnostics"],
        ),
        p(
            3,
            "Vitamin check",
            &["Vitamin D", "Vitamin B12", "Folate"],
            4499,
            &["Labcorp North", "Riverside Lab"],
        ),
        p(
            4,
            "Diabetes screen",
            &["HbA1c", "Fasting glucose", "Insulin"],
            2999,
            &["Riverside Lab"],
        ),
    ]
    .into_iter()
    .map(|p| (p.id, p))
    .collect()
}

struct State {
    config: OriginConfig,
    stats: Arc<OriginStats>,
    packages: Mutex<HashMap<u32, Package>>,
    started: SystemTime,
}

type Body = Full<Bytes>;

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: OriginConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_stats(listener, config, Arc::default(), shutdown).await
}

/// Like [`serve`], sharing `stats` with the caller.
pub async fn serve_with_stats(
    listener: tokio::net::TcpListener,
    config: OriginConfig,
    stats: Arc<OriginStats>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = Arc::new(State {
        config,
        stats,
        packages: Mutex::new(catalogue()),
        started: SystemTime::now(),
    });
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => r?,
            () = &mut shutdown => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn route(state: &State, req: Request<Incoming>) -> Response<Body> {
    if !state.config.delay.is_zero() {
        tokio::time::sleep(state.config.delay).await;
    }
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (req.method().clone(), segs.as_slice()) {
        (Method::GET, ["health"]) => text(StatusCode::OK, "ok\n"),
        (Method::GET, ["_origin", "stats"]) => json(
            StatusCode::OK,
            &serde_json::json!({"total": state.stats.total.load(Ordering::Relaxed), "by_kind": state.stats.snapshot()}),
        ),
        (Method::GET, ["bytes", n]) => {
            state.stats.hit("bytes");
            let Ok(n) = n.parse::<usize>() else {
                return text(StatusCode::BAD_REQUEST, "bad size\n");
            };
            let ttl = param(&query, "ttl").unwrap_or(3600);
            bytes_reply(
                state,
                n.min(64 << 20),
                ttl,
                &format!("bytes bytes-{n}"),
                &format!("\"b{n}\""),
            )
        }
        (Method::GET, ["key", k]) => {
            state.stats.hit("key");
            let size = param(&query, "size").unwrap_or(1024) as usize;
            let ttl = param(&query, "ttl").unwrap_or(3600);
            // `tag=T` adds a shared tag (purge benchmarks tag many keys alike).
            let extra = query
                .split('&')
                .find_map(|p| p.strip_prefix("tag="))
                .unwrap_or("");
            let tags = format!("key-{k} {extra}");
            let etag = format!("\"k{k}-{size}\"");
            bytes_reply(state, size.min(64 << 20), ttl, tags.trim(), &etag)
        }
        (Method::GET, ["slow", ms, ..]) => {
            state.stats.hit("slow");
            let ms: u64 = ms.parse().unwrap_or(0).min(60_000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            bytes_reply(state, 1024, 3600, "slow", "\"slow\"")
        }
        (Method::GET, ["packages"]) => {
            state.stats.hit("packages");
            let mut list: Vec<Package> = state.packages.lock().values().cloned().collect();
            list.sort_by_key(|p| p.id);
            let mut r = json(StatusCode::OK, &serde_json::json!({"packages": list}));
            cacheable(&mut r, 300, "packages", None);
            r
        }
        (Method::GET, ["packages", id]) => {
            state.stats.hit("packages");
            let pkg = id
                .parse::<u32>()
                .ok()
                .and_then(|id| state.packages.lock().get(&id).cloned());
            let Some(pkg) = pkg else {
                return text(StatusCode::NOT_FOUND, "no such package\n");
            };
            let body = serde_json::to_vec(&pkg).unwrap_or_default();
            let etag = format!("\"p{}-{}\"", pkg.id, pkg.price_cents);
            if req
                .headers()
                .get(header::IF_NONE_MATCH)
                .and_then(|v| v.to_str().ok())
                == Some(etag.as_str())
            {
                let mut r = Response::new(Full::new(Bytes::new()));
                *r.status_mut() = StatusCode::NOT_MODIFIED;
                cacheable(
                    &mut r,
                    300,
                    &format!("package-{} packages", pkg.id),
                    Some(&etag),
                );
                return r;
            }
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            cacheable(
                &mut r,
                300,
                &format!("package-{} packages", pkg.id),
                Some(&etag),
            );
            r
        }
        (Method::POST, ["admin", "packages", id, "price"]) => {
            state.stats.hit("admin");
            change_price(state, id, req).await
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

async fn change_price(state: &State, id: &str, req: Request<Incoming>) -> Response<Body> {
    let Ok(id) = id.parse::<u32>() else {
        return text(StatusCode::BAD_REQUEST, "bad id\n");
    };
    let Ok(body) = req.into_body().collect().await else {
        return text(StatusCode::BAD_REQUEST, "bad body\n");
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body.to_bytes()) else {
        return text(StatusCode::BAD_REQUEST, "expected {\"price_cents\": N}\n");
    };
    let Some(price) = v.get("price_cents").and_then(|p| p.as_u64()) else {
        return text(StatusCode::BAD_REQUEST, "expected {\"price_cents\": N}\n");
    };
    let pkg = {
        let mut pkgs = state.packages.lock();
        let Some(p) = pkgs.get_mut(&id) else {
            return text(StatusCode::NOT_FOUND, "no such package\n");
        };
        p.price_cents = price;
        p.clone()
    };
    let purged = match &state.config.purge_url {
        Some(url) => {
            purge_tag(
                url,
                state.config.admin_token.as_deref(),
                &format!("package-{id}"),
            )
            .await
        }
        None => Err("no purge_url configured".into()),
    };
    let (ack, detail) = match purged {
        Ok(answer) => (true, answer),
        Err(e) => {
            tracing::warn!(error = %e, "purge after price change failed");
            (false, serde_json::Value::String(e))
        }
    };
    json(
        StatusCode::OK,
        &serde_json::json!({"package": pkg, "purge_acknowledged": ack, "purge": detail}),
    )
}

/// Asks a Corral admin API to purge a tag.
async fn purge_tag(
    base: &str,
    token: Option<&str>,
    tag: &str,
) -> Result<serde_json::Value, String> {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let body = serde_json::json!({"tags": [tag], "wait": true}).to_string();
    let mut req = Request::post(format!("{}/purge", base.trim_end_matches('/')))
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| "purge timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!(
            "purge answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

fn bytes_reply(state: &State, n: usize, ttl: u64, tags: &str, etag: &str) -> Response<Body> {
    let body: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    cacheable(&mut r, ttl, tags, Some(etag));
    r.headers_mut().insert(
        header::LAST_MODIFIED,
        header::HeaderValue::from_str(&httpdate::fmt_http_date(state.started)).unwrap(),
    );
    r
}

fn cacheable(r: &mut Response<Body>, ttl: u64, tags: &str, etag: Option<&str>) {
    let h = r.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_str(&format!("public, max-age={ttl}")).unwrap(),
    );
    if let Ok(v) = header::HeaderValue::from_str(tags) {
        h.insert("surrogate-key", v);
    }
    if let Some(e) = etag.and_then(|e| header::HeaderValue::from_str(e).ok()) {
        h.insert(header::ETAG, e);
    }
    h.insert(
        header::DATE,
        header::HeaderValue::from_str(&httpdate::fmt_http_date(SystemTime::now())).unwrap(),
    );
}

fn param(query: &str, name: &str) -> Option<u64> {
    query
        .split('&')
        .find_map(|p| p.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
}

fn text(status: StatusCode, s: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(s.as_bytes())));
    *r.status_mut() = status;
    r
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: std::net::SocketAddr, path: &str) -> (StatusCode, http::HeaderMap, Bytes) {
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .build_http::<Full<Bytes>>();
        let resp = client
            .get(format!("http://{addr}{path}").parse().unwrap())
            .await
            .unwrap();
        let (parts, body) = resp.into_parts();
        (
            parts.status,
            parts.headers,
            body.collect().await.unwrap().to_bytes(),
        )
    }

    #[tokio::test]
    async fn serves_packages_bytes_and_stats() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(serve(l, OriginConfig::default(), std::future::pending()));
        let (s, h, b) = get(addr, "/packages/1").await;
        assert_eq!(s, 200);
        assert_eq!(h["surrogate-key"], "package-1 packages");
        let p: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(p["price_cents"], 3999);
        let (s, _, b) = get(addr, "/bytes/100").await;
        assert_eq!((s, b.len()), (StatusCode::OK, 100));
        let (_, _, b) = get(addr, "/_origin/stats").await;
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["by_kind"]["packages"], 1);
        assert_eq!(v["by_kind"]["bytes"], 1);
    }
}
