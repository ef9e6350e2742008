//! # corral-origin
//!
//! The bundled example origin, used by `corral demo`, `corral origin`, the integration tests and
//! the benchmarks (`bench/`). It is a plain HTTP/1.1 (and h2c) server on hyper 1 with keep-alive,
//! fast enough that it is never the bottleneck of a cache benchmark: synthetic bodies are slices
//! of one shared buffer, counters are atomics.
//!
//! ## Routes
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /packages` | the lab-test package catalogue (JSON), `max-age=300`, tag `packages` |
//! | `GET /packages/{id}` | one package `{id, name, inclusions, price_cents, currency, providers}`; `max-age=300`, tags `package-{id} packages`, an `ETag` derived from the content and `Last-Modified` (304 on a match) |
//! | `POST /admin/packages/{id}/price` | body `{"price_cents": N}`: changes the price in memory, then asks Corral to purge tag `package-{id}` (when `purge_url` is set); answers `{"package": {...}, "purge_acknowledged": bool, "purge": ...}` |
//! | `GET /bytes/{n}` | `n` deterministic bytes (`abc…zabc…`), `max-age=3600` (or `?ttl=N`), tags `bytes bytes-{n}` |
//! | `GET /stream/{n}?ttl=N` | `n` bytes (up to 1 GiB) streamed in 64 KiB frames of one shared buffer with a `Content-Length` (flat memory), `max-age=3600` (or `?ttl=`); kind `stream` |
//! | `POST /bytes/{n}` | reads and drops the request body (≤ 64 MiB, else 413), answers `n` bytes with `Cache-Control: no-store`; kind `post` |
//! | `GET /key/{anything}?size=N&ttl=N&tag=T` | `N` bytes (default 1024) for that key, for Zipf mixes and purge benchmarks; tags `key-{anything}` and `T` |
//! | `GET /slow/{ms}/{anything}` | 1 KiB, cacheable (`max-age=3600` or `?ttl=`), answered after `ms` milliseconds (≤ 60 s); tag `slow` |
//! | `GET /ranged/{n}?ttl=N&v=V` | `n` pattern bytes, strong `ETag` `"r{n}-{V}"`; a single byte range (suffix and open-ended too) is answered `206` with `Content-Range`, honouring `If-Range`; several ranges get the whole `200` |
//! | `GET /lang?ttl=N` | `hello`, `bonjour` or `hallo` by `Accept-Language`, with `Content-Language` and `Vary: Accept-Language` |
//! | `GET /_origin/stats` | `{"total": N, "by_kind": {"bytes": N, "key": N, ...}, "connections": N}`: requests served per route kind, and TCP connections accepted (how many a proxy in front opened) |
//! | `DELETE /_origin/stats` | resets those counters (connections included) |
//! | `GET /health` | 200 `ok` |
//!
//! `HEAD` is answered like `GET` without a body. Every cacheable answer carries
//! `Cache-Control: public, max-age=…`, `ETag`, `Last-Modified`, `Date` and `Surrogate-Key`, and
//! `If-None-Match` (or, without it, `If-Modified-Since`) is answered with `304 Not Modified`
//! carrying the same validators and cache headers.
//!
//! Route kinds counted in the stats: `packages`, `admin`, `bytes`, `key`, `slow`, `ranged`,
//! `lang`, `stream`, `post`, `other` (anything unknown). `/health` and `/_origin/*` are not counted and never delayed by
//! [`OriginConfig::delay`].
//!
//! ## Example
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! let config = corral_origin::OriginConfig {
//!     purge_url: Some("http://127.0.0.1:9090".into()),
//!     ..Default::default()
//! };
//! corral_origin::serve(listener, config, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await
//! # }
//! ```
#![warn(missing_docs)]

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;

mod catalogue;
mod forwarding;
mod semantics;

pub use catalogue::{catalogue, Package};

pub use forwarding::{MAX_POST, MAX_STREAM};

/// How the origin behaves.
#[derive(Clone, Default)]
pub struct OriginConfig {
    /// Added to every response (stampede tests); `/health` and `/_origin/*` are exempt.
    pub delay: Duration,
    /// A Corral admin base URL (`http://127.0.0.1:9090`): price changes purge through it.
    pub purge_url: Option<String>,
    /// Bearer token for that admin API.
    pub admin_token: Option<String>,
}

impl std::fmt::Debug for OriginConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OriginConfig")
            .field("delay", &self.delay)
            .field("purge_url", &self.purge_url)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The route kinds the origin counts, in the order of [`OriginStats`]' counters.
pub const KINDS: [&str; 10] = [
    "packages", "admin", "bytes", "key", "slow", "other", "ranged", "lang", "stream", "post",
];

#[derive(Clone, Copy)]
enum Kind {
    Packages = 0,
    Admin = 1,
    Bytes = 2,
    Key = 3,
    Slow = 4,
    Other = 5,
    Ranged = 6,
    Lang = 7,
    Stream = 8,
    Post = 9,
}

/// Request counts per route kind (see [`KINDS`]); share one with [`serve_with_stats`] to read
/// them in-process, or read `GET /_origin/stats`.
#[derive(Debug, Default)]
pub struct OriginStats {
    counts: [AtomicU64; KINDS.len()],
    connections: AtomicU64,
}

impl OriginStats {
    fn hit(&self, kind: Kind) {
        self.counts[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Requests served, by kind (`packages`, `admin`, `bytes`, `key`, `slow`, `other`); every
    /// kind is present, zero when unseen.
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        KINDS
            .iter()
            .zip(&self.counts)
            .map(|(k, c)| (*k, c.load(Ordering::Relaxed)))
            .collect()
    }

    /// Requests served of one kind (0 for an unknown kind).
    pub fn get(&self, kind: &str) -> u64 {
        KINDS
            .iter()
            .position(|k| *k == kind)
            .map_or(0, |i| self.counts[i].load(Ordering::Relaxed))
    }

    /// Requests served, all kinds together.
    pub fn total(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// TCP connections accepted: how many connections a proxy in front has opened.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Sets every counter back to zero.
    pub fn reset(&self) {
        for c in &self.counts {
            c.store(0, Ordering::Relaxed);
        }
        self.connections.store(0, Ordering::Relaxed);
    }
}

struct Stored {
    package: Package,
    modified: SystemTime,
}

struct State {
    config: OriginConfig,
    stats: Arc<OriginStats>,
    packages: Mutex<HashMap<u32, Stored>>,
    started: SystemTime,
}

/// Every answer: a body in memory, or one streamed from the shared buffer.
type Body = http_body_util::Either<Full<Bytes>, forwarding::Stream>;

fn full(b: impl Into<Bytes>) -> Body {
    Body::Left(Full::new(b.into()))
}

/// Largest synthetic body (`/bytes/{n}`, `?size=`).
pub const MAX_BODY: usize = 64 << 20;
/// Bodies up to this size are zero-copy slices of one shared buffer.
const SHARED: usize = 1 << 20;
/// Largest admin request body.
const MAX_ADMIN_BODY: usize = 64 << 10;
/// How long in-flight connections get to finish after `shutdown` resolves.
const DRAIN: Duration = Duration::from_secs(5);

/// The deterministic content of `/bytes/{n}`: `n` bytes `abc…zabc…`.
pub fn body_bytes(n: usize) -> Bytes {
    static BUF: OnceLock<Bytes> = OnceLock::new();
    let n = n.min(MAX_BODY);
    if n <= SHARED {
        BUF.get_or_init(|| pattern(SHARED)).slice(..n)
    } else {
        pattern(n)
    }
}

fn pattern(n: usize) -> Bytes {
    (0..n)
        .map(|i| b'a' + (i % 26) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// Serves until `shutdown` resolves. Uses hyper 1 (HTTP/1.1 keep-alive, or h2c) directly for
/// speed; after `shutdown`, open connections get a few seconds to finish.
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
        packages: Mutex::new(
            catalogue()
                .into_iter()
                .map(|p| {
                    let modified = SystemTime::now();
                    (
                        p.id,
                        Stored {
                            package: p,
                            modified,
                        },
                    )
                })
                .collect(),
        ),
        started: SystemTime::now(),
    });
    let builder = Arc::new(hyper_util::server::conn::auto::Builder::new(
        TokioExecutor::new(),
    ));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                // Out of file descriptors and the like: back off instead of spinning or dying.
                Err(e) if is_transient(&e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                Err(e) => return Err(e),
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        state.stats.connections.fetch_add(1, Ordering::Relaxed);
        let state = state.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, req).await) }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            let _ = watcher.watch(conn).await;
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(DRAIN, graceful.shutdown()).await;
    Ok(())
}

fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock | OutOfMemory
    ) || matches!(e.raw_os_error(), Some(23 | 24)) // ENFILE, EMFILE
}

async fn route(state: &State, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    match (req.method(), segs.as_slice()) {
        (_, ["health"]) if read => return text(StatusCode::OK, "ok\n"),
        (_, ["_origin", "stats"]) if read => {
            return json(
                StatusCode::OK,
                &serde_json::json!({
                    "total": state.stats.total(),
                    "by_kind": state.stats.snapshot(),
                    "connections": state.stats.connections(),
                }),
            )
        }
        (&Method::DELETE, ["_origin", "stats"]) => {
            state.stats.reset();
            return text(StatusCode::OK, "reset\n");
        }
        _ => {}
    }
    if !state.config.delay.is_zero() {
        tokio::time::sleep(state.config.delay).await;
    }
    let headers = req.headers();
    match (req.method(), segs.as_slice()) {
        (_, ["bytes", n]) if read => {
            state.stats.hit(Kind::Bytes);
            let Ok(n) = n.parse::<usize>() else {
                return text(StatusCode::BAD_REQUEST, "bad size\n");
            };
            let n = n.min(MAX_BODY);
            let ttl = param(&query, "ttl").unwrap_or(3600);
            synthetic(
                state,
                headers,
                n,
                ttl,
                &format!("bytes bytes-{n}"),
                &format!("\"b{n}\""),
            )
        }
        (_, ["stream", n]) if read => {
            state.stats.hit(Kind::Stream);
            let Ok(n) = n.parse::<u64>() else {
                return text(StatusCode::BAD_REQUEST, "bad size\n");
            };
            forwarding::stream(n, param(&query, "ttl").unwrap_or(3600))
        }
        (&Method::POST, ["bytes", n]) => {
            state.stats.hit(Kind::Post);
            let Ok(n) = n.parse::<usize>() else {
                return text(StatusCode::BAD_REQUEST, "bad size\n");
            };
            forwarding::post(n.min(MAX_BODY), req.into_body()).await
        }
        (_, ["key", rest @ ..]) if read && !rest.is_empty() => {
            state.stats.hit(Kind::Key);
            let k = rest.join("/");
            let size = param(&query, "size")
                .map_or(1024, |s| s as usize)
                .min(MAX_BODY);
            let ttl = param(&query, "ttl").unwrap_or(3600);
            // `tag=T` adds a shared tag (purge benchmarks tag many keys alike).
            let extra = query
                .split('&')
                .find_map(|p| p.strip_prefix("tag="))
                .unwrap_or("");
            let tags = format!("key-{k} {extra}");
            synthetic(
                state,
                headers,
                size,
                ttl,
                tags.trim(),
                &format!("\"k{size}\""),
            )
        }
        (_, ["ranged", n]) if read => {
            state.stats.hit(Kind::Ranged);
            let Ok(n) = n.parse::<usize>() else {
                return text(StatusCode::BAD_REQUEST, "bad size\n");
            };
            let ttl = param(&query, "ttl").unwrap_or(3600);
            let v = param(&query, "v").unwrap_or(1);
            semantics::ranged(headers, n.min(MAX_BODY), ttl, v, state.started)
        }
        (_, ["lang"]) if read => {
            state.stats.hit(Kind::Lang);
            semantics::lang(headers, param(&query, "ttl").unwrap_or(3600), state.started)
        }
        (_, ["slow", ms, ..]) if read => {
            state.stats.hit(Kind::Slow);
            let ms: u64 = ms.parse().unwrap_or(0).min(60_000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            let ttl = param(&query, "ttl").unwrap_or(3600);
            synthetic(state, headers, 1024, ttl, "slow", "\"slow\"")
        }
        (_, ["packages"] | ["packages", ""]) if read => {
            state.stats.hit(Kind::Packages);
            let (list, modified) = {
                let pkgs = state.packages.lock();
                let mut list: Vec<Package> = pkgs.values().map(|s| s.package.clone()).collect();
                list.sort_by_key(|p| p.id);
                let modified = pkgs.values().map(|s| s.modified).max();
                (list, modified.unwrap_or(state.started))
            };
            let body =
                serde_json::to_vec(&serde_json::json!({ "packages": list })).unwrap_or_default();
            json_document(headers, body, "packages", 'l', modified)
        }
        (_, ["packages", id]) if read => {
            state.stats.hit(Kind::Packages);
            let found = id.parse::<u32>().ok().and_then(|id| {
                state
                    .packages
                    .lock()
                    .get(&id)
                    .map(|s| (s.package.clone(), s.modified))
            });
            let Some((pkg, modified)) = found else {
                return text(StatusCode::NOT_FOUND, "no such package\n");
            };
            let body = serde_json::to_vec(&pkg).unwrap_or_default();
            let tags = format!("package-{} packages", pkg.id);
            json_document(headers, body, &tags, 'p', modified)
        }
        (&Method::POST, ["admin", "packages", id, "price"]) => {
            state.stats.hit(Kind::Admin);
            let id = (*id).to_owned();
            change_price(state, &id, req).await
        }
        _ => {
            state.stats.hit(Kind::Other);
            text(StatusCode::NOT_FOUND, "not found\n")
        }
    }
}

async fn change_price(state: &State, id: &str, req: Request<Incoming>) -> Response<Body> {
    let Ok(id) = id.parse::<u32>() else {
        return error(StatusCode::BAD_REQUEST, "package id must be a number");
    };
    let body = match Limited::new(req.into_body(), MAX_ADMIN_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "body over 64 KiB"),
    };
    let price = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("price_cents")?.as_u64());
    let Some(price) = price else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected a JSON body {\"price_cents\": N} with N a non-negative integer",
        );
    };
    let pkg = {
        let mut pkgs = state.packages.lock();
        let Some(s) = pkgs.get_mut(&id) else {
            return error(StatusCode::NOT_FOUND, "no such package");
        };
        s.package.price_cents = price;
        s.modified = SystemTime::now();
        s.package.clone()
    };
    let tag = format!("package-{id}");
    let (ack, detail) = match &state.config.purge_url {
        Some(url) => match purge_tag(url, state.config.admin_token.as_deref(), &tag).await {
            Ok(answer) => {
                tracing::info!(%tag, "price changed; purge acknowledged");
                (true, answer)
            }
            Err(e) => {
                tracing::warn!(%tag, error = %e, "price changed; purge failed");
                (false, serde_json::Value::String(e))
            }
        },
        None => (
            false,
            serde_json::Value::String("no purge_url configured".into()),
        ),
    };
    json(
        StatusCode::OK,
        &serde_json::json!({"package": pkg, "purge_acknowledged": ack, "purge": detail}),
    )
}

/// Asks a Corral admin API (`POST {base}/purge`) to purge a tag; the answer's JSON on success.
async fn purge_tag(
    base: &str,
    token: Option<&str>,
    tag: &str,
) -> Result<serde_json::Value, String> {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    // `wait`: answered once every peer acknowledged (Corral's coherence); ignored otherwise.
    let body = serde_json::json!({"tags": [tag], "wait": true}).to_string();
    let mut req = Request::post(format!("{}/purge", base.trim_end_matches('/')))
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("bad purge_url {base:?}: {e}"))?;
    let resp = tokio::time::timeout(Duration::from_secs(10), async {
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), 1 << 20)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((status, bytes))
    })
    .await
    .map_err(|_| "purge timed out after 10s".to_string())?;
    let (status, bytes) = resp.map_err(|e| format!("purge request failed: {e}"))?;
    if !status.is_success() {
        return Err(format!(
            "purge answered {status}: {}",
            String::from_utf8_lossy(&bytes).trim()
        ));
    }
    Ok(serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into())))
}

/// A JSON document with an ETag derived from its content (FNV-1a), `max-age=300`.
fn json_document(
    req: &HeaderMap,
    body: Vec<u8>,
    tags: &str,
    etag_prefix: char,
    modified: SystemTime,
) -> Response<Body> {
    let etag = format!("\"{etag_prefix}{:016x}\"", fnv1a(&body));
    let mut r = if fresh(req, &etag, modified) {
        not_modified()
    } else {
        let mut r = Response::new(full(Bytes::from(body)));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    };
    cacheable(&mut r, 300, tags, &etag, modified);
    r
}

fn synthetic(
    state: &State,
    req: &HeaderMap,
    n: usize,
    ttl: u64,
    tags: &str,
    etag: &str,
) -> Response<Body> {
    let mut r = if fresh(req, etag, state.started) {
        not_modified()
    } else {
        let mut r = Response::new(full(body_bytes(n)));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        r
    };
    cacheable(&mut r, ttl, tags, etag, state.started);
    r
}

fn not_modified() -> Response<Body> {
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::NOT_MODIFIED;
    r
}

/// Whether the request's validators match (RFC 9110 13.1.2 and 13.1.3: `If-None-Match` with
/// weak comparison wins over `If-Modified-Since`).
fn fresh(req: &HeaderMap, etag: &str, modified: SystemTime) -> bool {
    let opaque = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    let inm: Vec<&HeaderValue> = req.get_all(header::IF_NONE_MATCH).iter().collect();
    if !inm.is_empty() {
        let mine = opaque(etag);
        return inm
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim() == "*" || opaque(t) == mine);
    }
    req.get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .is_some_and(|since| seconds(modified) <= seconds(since))
}

fn seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn cacheable(r: &mut Response<Body>, ttl: u64, tags: &str, etag: &str, modified: SystemTime) {
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={ttl}")) {
        h.insert(header::CACHE_CONTROL, v);
    }
    if let Ok(v) = HeaderValue::from_str(tags) {
        h.insert("surrogate-key", v);
    }
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(modified)) {
        h.insert(header::LAST_MODIFIED, v);
    }
    if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(SystemTime::now())) {
        h.insert(header::DATE, v);
    }
}

fn param(query: &str, name: &str) -> Option<u64> {
    query
        .split('&')
        .find_map(|p| p.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
}

fn text(status: StatusCode, s: &'static str) -> Response<Body> {
    let mut r = Response::new(full(Bytes::from_static(s.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn error(status: StatusCode, msg: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "error": msg }))
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(full(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

#[cfg(test)]
mod tests;
