//! Freshness end to end on a manual clock: the gateway in process, serving on loopback, in front
//! of a real origin on loopback, with the store's [`ManualClock`] moved forward by the seconds
//! each test means instead of sleeping through them. The origin dates its responses by the same
//! clock, as a real origin's clock agrees with ours.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use corral_core::clock::{Clock, ManualClock};
use corral_core::invalidation::{Cause, Purge};
use corral_core::policy::CachePolicy;
use corral_core::store::{Store, StoreConfig};
use corral_http::server::Listener;
use corral_http::{
    Gateway, GatewayConfig, InvalidationSink, Metrics, PurgeReport, Route, Router, ServerLimits,
    Timeouts, Upstream,
};
use corral_testkit::eventually;
use http::{HeaderMap, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

type Reply = Response<Full<Bytes>>;
type Handler = Arc<dyn Fn(&http::request::Parts) -> Reply + Send + Sync>;

/// A real HTTP/1.1 origin on loopback that records what reached it. Responses may be held at
/// a gate the test opens, so "did not wait for the origin" is observed, not timed.
struct Origin {
    addr: SocketAddr,
    handler: Arc<Mutex<Handler>>,
    seen: Arc<Mutex<Vec<(String, HeaderMap)>>>,
    gate: Arc<Semaphore>,
}

impl Origin {
    async fn start(
        clock: Arc<ManualClock>,
        reply: impl Fn(&http::request::Parts) -> Reply + Send + Sync + 'static,
    ) -> Origin {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = Origin {
            addr: tcp.local_addr().unwrap(),
            handler: Arc::new(Mutex::new(Arc::new(reply))),
            seen: Arc::default(),
            gate: Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)),
        };
        let (handler, seen, gate) = (
            origin.handler.clone(),
            origin.seen.clone(),
            origin.gate.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = tcp.accept().await else {
                    return;
                };
                let (handler, seen, gate, clock) =
                    (handler.clone(), seen.clone(), gate.clone(), clock.clone());
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (handler, seen, gate, clock) =
                        (handler.clone(), seen.clone(), gate.clone(), clock.clone());
                    async move {
                        let (parts, _) = req.into_parts();
                        seen.lock()
                            .unwrap()
                            .push((parts.uri.path().to_string(), parts.headers.clone()));
                        let reply = handler.lock().unwrap().clone();
                        let _pass = gate.acquire().await.unwrap();
                        let mut resp = reply(&parts);
                        let date = httpdate::fmt_http_date(clock.now());
                        resp.headers_mut()
                            .insert(http::header::DATE, date.parse().unwrap());
                        Ok::<_, Infallible>(resp)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(sock), service),
                );
            }
        });
        origin
    }

    fn set(&self, reply: impl Fn(&http::request::Parts) -> Reply + Send + Sync + 'static) {
        *self.handler.lock().unwrap() = Arc::new(reply);
    }

    fn count(&self, path: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .count()
    }

    fn last(&self, path: &str) -> HeaderMap {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .rev()
            .find(|(p, _)| p == path)
            .map(|(_, h)| h.clone())
            .unwrap()
    }

    /// Holds every response until [`Origin::open`].
    fn close(&self) {
        self.gate.forget_permits(Semaphore::MAX_PERMITS);
    }

    fn open(&self) {
        self.gate
            .add_permits(Semaphore::MAX_PERMITS - self.gate.available_permits());
    }
}

fn reply(status: u16, body: &'static str, headers: &[(&str, &str)]) -> Reply {
    let mut r = Response::builder().status(status);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

/// No cluster here: a purge is applied to the store only.
struct LocalSink(Arc<Store>);

impl InvalidationSink for LocalSink {
    fn invalidate(&self, purge: Purge, _: Cause, _: &str) -> PurgeReport {
        let outcome = self.0.purge(&purge);
        PurgeReport {
            purged: outcome.covered,
            event: String::new(),
            seq: 0,
        }
    }
}

/// The gateway in process on a manual clock, listening on loopback.
struct Corral {
    addr: SocketAddr,
    clock: Arc<ManualClock>,
    registry: prometheus_client::registry::Registry,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
}

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn cache_status(&self) -> &str {
        self.headers
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    fn is_hit(&self) -> bool {
        self.cache_status().contains("hit")
    }
}

impl Corral {
    async fn start(origin: &Origin, clock: Arc<ManualClock>, policy: CachePolicy) -> Corral {
        let store = Arc::new(Store::with_clock(StoreConfig::default(), clock.clone()));
        let base = format!("http://{}", origin.addr).parse().unwrap();
        let route = Route {
            name: "all".into(),
            host: None,
            path_prefix: "/".into(),
            upstream: Upstream::new("origin", &[base], Timeouts::default()).unwrap(),
            policy: Arc::new(policy),
            cache_methods: vec![Method::GET, Method::HEAD],
        };
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Metrics::register(&mut registry);
        let sink = Arc::new(LocalSink(store.clone()));
        let gateway = Gateway::new(
            store,
            Router::new(vec![route]),
            GatewayConfig::default(),
            metrics,
            sink,
        );
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let listeners = vec![Listener::plain(tcp)];
        tokio::spawn(corral_http::serve(
            listeners,
            gateway,
            ServerLimits::default(),
            std::future::pending(),
            Duration::ZERO,
        ));
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        Corral {
            addr,
            clock,
            registry,
            client,
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.request(Method::GET, path, &[]).await
    }

    async fn request(&self, method: Method, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = self
            .client
            .request(req.body(Full::default()).unwrap())
            .await
            .unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    /// A sample's value from the gateway's registry, as `/metrics` would show it.
    fn metric(&self, sample: &str) -> f64 {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Time passes: only this moves the clock.
    fn wait(&self, secs: u64) {
        self.clock.advance(Duration::from_secs(secs));
    }
}

async fn pair(
    reply: impl Fn(&http::request::Parts) -> Reply + Send + Sync + 'static,
) -> (Origin, Corral) {
    pair_with(CachePolicy::default(), reply).await
}

async fn pair_with(
    policy: CachePolicy,
    reply: impl Fn(&http::request::Parts) -> Reply + Send + Sync + 'static,
) -> (Origin, Corral) {
    let clock = ManualClock::starting_now();
    let origin = Origin::start(clock.clone(), reply).await;
    let corral = Corral::start(&origin, clock, policy).await;
    (origin, corral)
}

const LM: &str = "Mon, 02 Jan 2006 15:04:05 GMT";

#[tokio::test]
async fn a_stale_entry_is_revalidated_and_a_304_freshens_it() {
    let (origin, c) = pair(|p| {
        if p.headers
            .get("if-none-match")
            .is_some_and(|v| v == "\"e1\"")
        {
            return reply(
                304,
                "",
                &[
                    ("etag", "\"e1\""),
                    ("cache-control", "max-age=10"),
                    ("x-version", "2"),
                ],
            );
        }
        reply(
            200,
            "validated body",
            &[
                ("etag", "\"e1\""),
                ("last-modified", LM),
                ("cache-control", "max-age=10"),
                ("x-version", "1"),
            ],
        )
    })
    .await;
    c.get("/v").await;
    c.wait(9);
    assert!(c.get("/v").await.is_hit(), "fresh for ten seconds");
    c.wait(2);
    let r = c.get("/v").await;
    assert_eq!((r.status, r.body.as_str()), (200, "validated body"));
    assert!(
        r.cache_status().contains("fwd=stale"),
        "{}",
        r.cache_status()
    );
    assert!(
        r.cache_status().contains("fwd-status=304"),
        "{}",
        r.cache_status()
    );
    let seen = origin.last("/v");
    assert_eq!(seen["if-none-match"], "\"e1\"");
    assert_eq!(seen["if-modified-since"], LM);
    assert_eq!(
        r.headers["x-version"], "2",
        "304 headers replace stored ones (§4.3.4)"
    );
    c.wait(9);
    assert!(
        c.get("/v").await.is_hit(),
        "freshened for another ten seconds"
    );
    assert_eq!(origin.count("/v"), 2);
    assert_eq!(
        c.metric("corral_requests_total{cache=\"revalidated\"}"),
        1.0
    );
}

#[tokio::test]
async fn stale_while_revalidate_answers_without_waiting_and_refreshes_once() {
    let (origin, c) = pair(|_| {
        reply(
            200,
            "fresh",
            &[("cache-control", "max-age=1, stale-while-revalidate=30")],
        )
    })
    .await;
    c.get("/swr").await;
    c.wait(2);
    origin.close();
    // Ten stale answers while the origin holds its response: none of them waits for it.
    for _ in 0..10 {
        let r = c.get("/swr").await;
        assert!(
            r.cache_status().contains("stale-while-revalidate"),
            "{}",
            r.cache_status()
        );
    }
    assert!(
        eventually(Duration::from_secs(10), async || origin.count("/swr") == 2).await,
        "one background refresh"
    );
    origin.open();
    // The refresh completes in the background: poll what a client sees, bounded.
    let refreshed = eventually(Duration::from_secs(10), async || {
        c.get("/swr").await.is_hit()
    })
    .await;
    assert!(refreshed, "the refresh was stored");
    assert_eq!(origin.count("/swr"), 2, "one refresh for ten stale answers");
    c.wait(31);
    assert!(
        !c.get("/swr").await.is_hit(),
        "the refreshed entry ages like any other"
    );
}

#[tokio::test]
async fn stale_if_error_covers_errors_unless_must_revalidate() {
    let (origin, c) = pair(|p| {
        let cc = match p.uri.path() {
            "/mr" => "max-age=1, stale-if-error=60, must-revalidate",
            _ => "max-age=1, stale-if-error=60",
        };
        reply(200, "good", &[("cache-control", cc)])
    })
    .await;
    c.get("/sie").await;
    c.get("/mr").await;
    c.wait(2);
    origin.set(|_| reply(500, "bad", &[]));
    let r = c.get("/sie").await;
    assert_eq!((r.status, r.body.as_str()), (200, "good"));
    assert!(
        r.cache_status().contains("stale-if-error"),
        "{}",
        r.cache_status()
    );
    assert_eq!(
        c.get("/mr").await.status,
        500,
        "must-revalidate forbids serving it stale"
    );
    c.wait(60);
    assert_eq!(
        c.get("/sie").await.status,
        500,
        "past stale-if-error's window"
    );
}

#[tokio::test]
async fn max_stale_accepts_a_stale_entry_within_its_bound() {
    let (origin, c) = pair(|_| reply(200, "s", &[("cache-control", "max-age=1")])).await;
    c.get("/s").await;
    c.wait(5);
    let r = c
        .request(Method::GET, "/s", &[("cache-control", "max-stale=60")])
        .await;
    assert!(
        r.is_hit() && r.cache_status().contains("detail=stale"),
        "{}",
        r.cache_status()
    );
    assert_eq!(origin.count("/s"), 1);
    let r = c
        .request(Method::GET, "/s", &[("cache-control", "max-stale=2")])
        .await;
    assert!(
        !r.is_hit(),
        "four seconds stale is more than max-stale=2: {}",
        r.cache_status()
    );
    assert_eq!(origin.count("/s"), 2);
}

#[tokio::test]
async fn s_maxage_wins_over_max_age_in_a_shared_cache() {
    let (origin, c) =
        pair(|_| reply(200, "s", &[("cache-control", "max-age=1, s-maxage=60")])).await;
    c.get("/sm").await;
    c.wait(30);
    assert!(c.get("/sm").await.is_hit(), "s-maxage overrides max-age");
    c.wait(31);
    assert!(
        !c.get("/sm").await.is_hit(),
        "and it ends after sixty seconds"
    );
    assert_eq!(origin.count("/sm"), 2);
}

/// With `keep = 0` nothing outlives its freshness: the next request after max-age is a miss.
fn keep_nothing() -> CachePolicy {
    CachePolicy {
        keep: Duration::ZERO,
        ..CachePolicy::default()
    }
}

#[tokio::test]
async fn an_entry_expires_at_max_age() {
    let (origin, c) = pair_with(keep_nothing(), |_| {
        reply(200, "e", &[("cache-control", "max-age=5")])
    })
    .await;
    c.get("/e").await;
    c.wait(4);
    assert!(c.get("/e").await.is_hit());
    c.wait(2);
    let r = c.get("/e").await;
    assert!(!r.is_hit(), "{}", r.cache_status());
    assert_eq!(origin.count("/e"), 2);
}

#[tokio::test]
async fn max_ttl_caps_what_the_origin_allows() {
    let policy = CachePolicy {
        max_ttl: Duration::from_secs(10),
        ..keep_nothing()
    };
    let (origin, c) = pair_with(policy, |_| {
        reply(200, "t", &[("cache-control", "max-age=86400")])
    })
    .await;
    let r = c.get("/t").await;
    assert!(r.cache_status().contains("ttl=10"), "{}", r.cache_status());
    c.wait(9);
    assert!(c.get("/t").await.is_hit());
    c.wait(2);
    assert!(!c.get("/t").await.is_hit());
    assert_eq!(origin.count("/t"), 2);
}

#[tokio::test]
async fn the_configured_stale_if_error_applies_when_the_origin_gives_none() {
    let policy = CachePolicy {
        stale_if_error: Duration::from_secs(60),
        ..CachePolicy::default()
    };
    let (origin, c) = pair_with(policy, |_| {
        reply(200, "good", &[("cache-control", "max-age=1")])
    })
    .await;
    c.get("/d").await;
    c.wait(2);
    origin.set(|_| reply(502, "", &[]));
    let r = c.get("/d").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "good"),
        "{}",
        r.cache_status()
    );
    assert_eq!(
        origin.count("/d"),
        2,
        "the stale copy was served only after the origin failed"
    );
    c.wait(60);
    let r = c.get("/d").await;
    assert_eq!(
        r.status, 502,
        "past the configured window the error is passed on"
    );
}

#[tokio::test]
async fn a_head_response_freshens_or_drops_the_stored_get() {
    let (origin, c) = pair(|p| {
        let head = p.method == Method::HEAD;
        let cc = if head { "max-age=60" } else { "max-age=1" };
        let etag = if p.uri.path() == "/changed" && head {
            "\"new\""
        } else {
            "\"same\""
        };
        reply(200, "get body", &[("cache-control", cc), ("etag", etag)])
    })
    .await;
    for p in ["/same", "/changed"] {
        c.get(p).await;
    }
    c.wait(2);
    for p in ["/same", "/changed"] {
        assert_eq!(c.request(Method::HEAD, p, &[]).await.status, 200);
    }
    let r = c.get("/same").await;
    assert!(
        r.is_hit(),
        "a HEAD with the same validator freshened the stored GET: {}",
        r.cache_status()
    );
    assert_eq!(r.body, "get body");
    let r = c.get("/changed").await;
    assert!(
        !r.is_hit(),
        "a HEAD with another validator dropped it: {}",
        r.cache_status()
    );
    // One GET each to fill, one HEAD each, and the dropped one's refill.
    assert_eq!(origin.count("/same"), 2);
    assert_eq!(origin.count("/changed"), 3);
}
