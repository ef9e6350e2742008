//! The origin on a real loopback socket, driven by a real HTTP client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use corral_origin::{serve, serve_with_stats, OriginConfig, OriginStats};
use corral_testkit::origin::Origin;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
    }
}

async fn send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .expect("answer within 20s")
        .expect("request");
    let (parts, body) = resp.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    send(addr, Method::GET, path, &[], "").await
}

/// A GET carrying one request header: the conditional requests (`If-None-Match`,
/// `If-Modified-Since`) the validation tests send.
async fn get_with(addr: SocketAddr, path: &str, header: (&str, &str)) -> Reply {
    send(addr, Method::GET, path, &[header], "").await
}

/// `POST /admin/packages/{package}/price` with `body` and no headers: the origin's own price
/// change, which is what may purge the package's tag through Corral's admin API.
async fn change_price(addr: SocketAddr, package: &str, body: &str) -> Reply {
    let path = format!("/admin/packages/{package}/price");
    send(addr, Method::POST, &path, &[], body).await
}

/// A valid price change that must be accepted: the origin's JSON answer (the package, and
/// what became of the purge).
async fn change_price_ok(addr: SocketAddr, package: &str, price_cents: i64) -> Value {
    let r = change_price(
        addr,
        package,
        &json!({ "price_cents": price_cents }).to_string(),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "price of package {package} changed"
    );
    r.json()
}

async fn start(config: OriginConfig) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(serve(l, config, std::future::pending()));
    addr
}

#[tokio::test]
async fn health_stats_and_unknown_routes() {
    let addr = start(OriginConfig::default()).await;
    let r = get(addr, "/health").await;
    assert_eq!((r.status, &r.body[..]), (StatusCode::OK, &b"ok\n"[..]));
    assert_eq!(get(addr, "/nope").await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        get(addr, "/bytes/ten").await.status,
        StatusCode::BAD_REQUEST
    );
    let s = get(addr, "/_origin/stats").await.json();
    assert_eq!(s["by_kind"]["other"], 1);
    assert_eq!(s["by_kind"]["bytes"], 1);
    assert_eq!(s["by_kind"]["key"], 0);
    assert_eq!(s["total"], 2, "health and stats are not counted: {s}");
    let r = send(addr, Method::DELETE, "/_origin/stats", &[], "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(get(addr, "/_origin/stats").await.json()["total"], 0);
}

#[tokio::test]
async fn bytes_are_deterministic_and_cacheable() {
    let addr = start(OriginConfig::default()).await;
    let r = get(addr, "/bytes/1024").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), 1024);
    assert_eq!(&r.body[..28], b"abcdefghijklmnopqrstuvwxyzab");
    assert_eq!(r.header("cache-control"), "public, max-age=3600");
    assert_eq!(r.header("surrogate-key"), "bytes bytes-1024");
    assert_eq!(r.header("content-length"), "1024");
    let etag = r.header("etag").to_owned();
    let lm = r.header("last-modified").to_owned();
    assert!(httpdate::parse_http_date(&lm).is_ok());
    r.header("date");
    assert_eq!(get(addr, "/bytes/1024").await.body, r.body, "same content");
    let big = get(addr, "/bytes/2000000").await;
    assert_eq!(big.body.len(), 2_000_000);
    assert_eq!(big.body[1_999_999], b'a' + (1_999_999 % 26) as u8);
    assert_eq!(
        get(addr, "/bytes/10?ttl=7").await.header("cache-control"),
        "public, max-age=7"
    );
    // Validation.
    let r = get_with(addr, "/bytes/1024", ("if-none-match", &etag)).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), etag);
    assert_eq!(r.header("cache-control"), "public, max-age=3600");
    let r = get_with(addr, "/bytes/1024", ("if-modified-since", &lm)).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    let r = get_with(addr, "/bytes/1024", ("if-none-match", "\"other\"")).await;
    assert_eq!(r.status, StatusCode::OK);
    // HEAD: the headers, no body.
    let r = send(addr, Method::HEAD, "/bytes/1024", &[], "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-length"), "1024");
    assert!(r.body.is_empty());
}

#[tokio::test]
async fn keys_carry_their_tags() {
    let addr = start(OriginConfig::default()).await;
    let r = get(addr, "/key/user-42?size=100&tag=batch7&ttl=60").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), 100);
    assert_eq!(r.header("surrogate-key"), "key-user-42 batch7");
    assert_eq!(r.header("cache-control"), "public, max-age=60");
    let r = get(addr, "/key/a/b/c").await;
    assert_eq!(r.body.len(), 1024, "default size");
    assert_eq!(r.header("surrogate-key"), "key-a/b/c");
    assert_eq!(get(addr, "/key/").await.status, StatusCode::OK);
    let s = get(addr, "/_origin/stats").await.json();
    assert_eq!(s["by_kind"]["key"], 3);
}

#[tokio::test]
async fn slow_answers_late_and_delay_adds_up() {
    let addr = start(OriginConfig::default()).await;
    let t = Instant::now();
    let r = get(addr, "/slow/150/x").await;
    assert!(t.elapsed() >= Duration::from_millis(150));
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), 1024);
    assert_eq!(r.header("cache-control"), "public, max-age=3600");
    assert_eq!(
        get(addr, "/_origin/stats").await.json()["by_kind"]["slow"],
        1
    );

    let delayed = start(OriginConfig {
        delay: Duration::from_millis(120),
        ..Default::default()
    })
    .await;
    let t = Instant::now();
    get(delayed, "/bytes/1").await;
    assert!(t.elapsed() >= Duration::from_millis(120));
    let t = Instant::now();
    get(delayed, "/health").await;
    get(delayed, "/_origin/stats").await;
    assert!(
        t.elapsed() < Duration::from_millis(120),
        "control routes are not delayed"
    );
}

#[tokio::test]
async fn packages_with_content_etags() {
    let addr = start(OriginConfig::default()).await;
    let list = get(addr, "/packages").await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.header("surrogate-key"), "packages");
    assert_eq!(list.header("cache-control"), "public, max-age=300");
    let v = list.json();
    assert_eq!(v["packages"].as_array().unwrap().len(), 4);
    assert_eq!(v["packages"][0]["id"], 1);

    let r = get(addr, "/packages/2").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(r.header("surrogate-key"), "package-2 packages");
    assert_eq!(r.header("cache-control"), "public, max-age=300");
    let p = r.json();
    for field in [
        "id",
        "name",
        "inclusions",
        "price_cents",
        "currency",
        "providers",
    ] {
        assert!(p.get(field).is_some(), "{field} in {p}");
    }
    assert_eq!(p["price_cents"], 5499);
    let etag = r.header("etag").to_owned();
    assert_ne!(etag, get(addr, "/packages/1").await.header("etag"));
    let r = get_with(addr, "/packages/2", ("if-none-match", &etag)).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert_eq!(r.header("etag"), etag);
    assert_eq!(r.header("surrogate-key"), "package-2 packages");
    let weak = format!("\"zzz\", W/{etag}");
    let r = get_with(addr, "/packages/2", ("if-none-match", &weak)).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);

    assert_eq!(
        get(addr, "/packages/99").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(get(addr, "/packages/x").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn price_change_without_purge_url() {
    let addr = start(OriginConfig::default()).await;
    let before = get(addr, "/packages/1").await;
    let old_etag = before.header("etag").to_owned();
    let r = send(
        addr,
        Method::POST,
        "/admin/packages/1/price",
        &[("content-type", "application/json")],
        r#"{"price_cents": 4999}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(v["package"]["price_cents"], 4999);
    assert_eq!(v["purge_acknowledged"], false);
    let after = get(addr, "/packages/1").await;
    assert_eq!(after.json()["price_cents"], 4999);
    assert_ne!(after.header("etag"), old_etag, "ETag follows the content");
    let r = get_with(addr, "/packages/1", ("if-none-match", &old_etag)).await;
    assert_eq!(r.status, StatusCode::OK, "old validator no longer matches");
    let list = get(addr, "/packages").await.json();
    assert_eq!(list["packages"][0]["price_cents"], 4999);

    for (path, body, status) in [
        ("/admin/packages/1/price", "{}", StatusCode::BAD_REQUEST),
        ("/admin/packages/1/price", "nope", StatusCode::BAD_REQUEST),
        (
            "/admin/packages/1/price",
            r#"{"price_cents": -3}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/admin/packages/9/price",
            r#"{"price_cents": 3}"#,
            StatusCode::NOT_FOUND,
        ),
        (
            "/admin/packages/x/price",
            r#"{"price_cents": 3}"#,
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let r = send(addr, Method::POST, path, &[], body).await;
        assert_eq!(r.status, status, "{path} {body}");
        assert!(r.json()["error"].is_string());
    }
    let huge = "x".repeat(100 << 10);
    let r = change_price(addr, "1", &huge).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        get(addr, "/_origin/stats").await.json()["by_kind"]["admin"],
        7
    );
}

/// A stand-in for Corral's admin API (the testkit's scripted origin), answering every request
/// with `status`.
async fn fake_admin(status: StatusCode) -> Origin {
    Origin::start(move |_| {
        let answer = json!({"purged": 1, "event": "e-1"}).to_string();
        corral_testkit::origin::Reply::ok(answer).status(status.as_u16())
    })
    .await
}

/// The purges `admin` received: each a `POST /purge`, its headers and JSON body.
fn purges(admin: &Origin) -> Vec<(HeaderMap, Value)> {
    let requests = admin.requests();
    for r in &requests {
        assert_eq!((r.method.as_str(), r.uri.as_str()), ("POST", "/purge"));
    }
    requests
        .into_iter()
        .map(|r| (r.headers, serde_json::from_slice(&r.body).unwrap()))
        .collect()
}

#[tokio::test]
async fn price_change_purges_the_tag_through_the_admin_api() {
    let admin = fake_admin(StatusCode::OK).await;
    let addr = start(OriginConfig {
        purge_url: Some(format!("{}/", admin.url())),
        admin_token: Some("t0ken".into()),
        ..Default::default()
    })
    .await;
    let v = change_price_ok(addr, "3", 100).await;
    assert_eq!(v["purge_acknowledged"], true, "{v}");
    assert_eq!(v["purge"]["purged"], 1);
    assert_eq!(v["package"]["price_cents"], 100);
    let seen = purges(&admin);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0["authorization"], "Bearer t0ken");
    assert_eq!(seen[0].1["tags"], json!(["package-3"]));
}

#[tokio::test]
async fn a_failing_purge_still_changes_the_price() {
    let admin = fake_admin(StatusCode::UNAUTHORIZED).await;
    let addr = start(OriginConfig {
        purge_url: Some(admin.url()),
        ..Default::default()
    })
    .await;
    let v = change_price_ok(addr, "2", 1).await;
    assert_eq!(v["purge_acknowledged"], false);
    assert!(v["purge"].as_str().unwrap().contains("401"), "{v}");
    assert!(
        purges(&admin)[0].0.get("authorization").is_none(),
        "no token configured"
    );

    // Nothing listening at all.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let addr = start(OriginConfig {
        purge_url: Some(format!("http://{closed}")),
        ..Default::default()
    })
    .await;
    let v = change_price_ok(addr, "2", 2).await;
    assert_eq!(v["purge_acknowledged"], false);
    assert_eq!(get(addr, "/packages/2").await.json()["price_cents"], 2);
}

#[tokio::test]
async fn shares_stats_and_stops_on_shutdown() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let stats = Arc::new(OriginStats::default());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_with_stats(
        l,
        OriginConfig::default(),
        stats.clone(),
        async move {
            let _ = rx.await;
        },
    ));
    get(addr, "/key/a").await;
    get(addr, "/packages/1").await;
    assert_eq!(stats.get("key"), 1);
    assert_eq!(stats.get("packages"), 1);
    assert_eq!(stats.total(), 2);
    tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("serve returns after shutdown")
        .unwrap()
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed"
    );
}

#[tokio::test]
async fn many_concurrent_keep_alive_requests() {
    let addr = start(OriginConfig::default()).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let uri = format!("http://{addr}/key/{i}?size={i}").parse().unwrap();
            let r = client.get(uri).await.unwrap();
            r.into_body().collect().await.unwrap().to_bytes().len()
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), i);
    }
    assert_eq!(
        get(addr, "/_origin/stats").await.json()["by_kind"]["key"],
        200
    );
}
