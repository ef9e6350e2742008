//! RFC 9111 / 9110 / 5861 behaviours, end to end (origin request counts and headers asserted).

mod common;

use common::*;

const LM: &str = "Mon, 02 Jan 2006 15:04:05 GMT";

/// Validators on everything; 304 when the request's validator matches.
fn validating(
    etag: &'static str,
    cc: &'static str,
) -> impl Fn(&Seen) -> Reply + Send + Sync + 'static {
    move |s: &Seen| {
        if s.headers.get("if-none-match").and_then(|v| v.to_str().ok()) == Some(etag) {
            return Reply::ok("")
                .status(304)
                .header("etag", etag)
                .header("cache-control", cc)
                .header("x-version", "2");
        }
        Reply::ok("validated body")
            .header("etag", etag)
            .header("last-modified", LM)
            .header("cache-control", cc)
            .header("x-version", "1")
    }
}

#[tokio::test]
async fn no_cache_responses_are_stored_but_always_validated() {
    let origin = Origin::start(validating("\"n\"", "no-cache")).await;
    let c = Corral::start(&config(&origin, "")).await;
    c.get("/n").await;
    let r = c.get("/n").await;
    assert!(!r.is_hit());
    assert!(
        r.cache_status().contains("fwd-status=304"),
        "{}",
        r.cache_status()
    );
    assert_eq!(origin.count("/n"), 2);
}

#[tokio::test]
async fn client_conditionals_are_answered_from_cache() {
    let origin = Origin::start(validating("\"c1\"", "max-age=60")).await;
    let c = Corral::start(&config(&origin, "")).await;
    c.get("/c").await;
    let r = c
        .get_with("/c", &[("if-none-match", "W/\"c1\", \"other\"")])
        .await;
    assert_eq!(r.status, 304);
    assert_eq!(r.header("etag"), Some("\"c1\""));
    assert!(r.body.is_empty());
    let r = c
        .get_with(
            "/c",
            &[("if-modified-since", "Tue, 03 Jan 2006 00:00:00 GMT")],
        )
        .await;
    assert_eq!(r.status, 304);
    let r = c
        .get_with(
            "/c",
            &[("if-modified-since", "Sun, 01 Jan 2006 00:00:00 GMT")],
        )
        .await;
    assert_eq!(r.status, 200);
    let r = c
        .get_with(
            "/c",
            &[
                ("if-none-match", "\"nope\""),
                ("if-modified-since", "Tue, 03 Jan 2006 00:00:00 GMT"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "If-None-Match takes precedence");
    assert_eq!(origin.count("/c"), 1, "all answered from cache");
    // A client's conditional on a miss is not forwarded: we fetch the whole thing to store it.
    let r = c.get_with("/c2", &[("if-none-match", "\"c1\"")]).await;
    assert_eq!(r.status, 304);
    assert!(origin
        .last("/c2")
        .unwrap()
        .headers
        .get("if-none-match")
        .is_none());
}

#[tokio::test]
async fn request_directives() {
    let origin = Origin::start(|_| Reply::ok("r").header("cache-control", "max-age=60")).await;
    let c = Corral::start(&config(&origin, "")).await;
    c.get("/r").await;
    // only-if-cached: 504 when nothing is stored, a hit otherwise.
    assert_eq!(
        c.get_with("/nothing", &[("cache-control", "only-if-cached")])
            .await
            .status,
        504
    );
    assert_eq!(origin.count("/nothing"), 0);
    assert!(c
        .get_with("/r", &[("cache-control", "only-if-cached")])
        .await
        .is_hit());
    // no-cache and max-age=0 force a forward.
    let r = c.get_with("/r", &[("cache-control", "no-cache")]).await;
    assert!(
        r.cache_status().contains("fwd=request"),
        "{}",
        r.cache_status()
    );
    let r = c.get_with("/r", &[("pragma", "no-cache")]).await;
    assert!(r.cache_status().contains("fwd=request"));
    let r = c.get_with("/r", &[("cache-control", "max-age=0")]).await;
    assert!(!r.is_hit());
    // min-fresh beyond the remaining lifetime forces a forward too.
    assert!(!c
        .get_with("/r", &[("cache-control", "min-fresh=3600")])
        .await
        .is_hit());
    assert!(c
        .get_with("/r", &[("cache-control", "min-fresh=1")])
        .await
        .is_hit());
    assert_eq!(origin.count("/r"), 5);
}

#[tokio::test]
async fn ignore_client_no_cache_switch() {
    let origin = Origin::start(|_| Reply::ok("r").header("cache-control", "max-age=60")).await;
    let c = Corral::start(&config(&origin, "ignore_client_no_cache = true")).await;
    c.get("/r").await;
    assert!(c
        .get_with("/r", &[("cache-control", "no-cache")])
        .await
        .is_hit());
    assert_eq!(origin.count("/r"), 1);
}

#[tokio::test]
async fn vary_stores_variants_side_by_side() {
    let origin = Origin::start(|s| {
        let lang = s
            .headers
            .get("accept-language")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_string();
        Reply::ok(format!("lang={lang}"))
            .header("cache-control", "max-age=60")
            .header("vary", "Accept-Language")
    })
    .await;
    let c = Corral::start(&config(&origin, "")).await;
    assert_eq!(
        c.get_with("/v", &[("accept-language", "en")]).await.text(),
        "lang=en"
    );
    let r = c.get_with("/v", &[("accept-language", "fr")]).await;
    assert_eq!(r.text(), "lang=fr");
    assert!(
        r.cache_status().contains("fwd=vary-miss"),
        "{}",
        r.cache_status()
    );
    assert_eq!(
        c.get_with("/v", &[("accept-language", "en")]).await.text(),
        "lang=en"
    );
    assert_eq!(
        c.get_with("/v", &[("accept-language", "fr")]).await.text(),
        "lang=fr"
    );
    assert!(c
        .get_with("/v", &[("accept-language", "fr")])
        .await
        .is_hit());
    assert_eq!(c.get("/v").await.text(), "lang=none");
    assert_eq!(origin.count("/v"), 3);
    // A purge of the URL drops every variant.
    client()
        .post(c.admin_url("/purge"))
        .json(&serde_json::json!({"urls": ["/v"]}))
        .send()
        .await
        .unwrap();
    assert!(!c
        .get_with("/v", &[("accept-language", "en")])
        .await
        .is_hit());
    assert!(!c
        .get_with("/v", &[("accept-language", "fr")])
        .await
        .is_hit());
}

#[tokio::test]
async fn key_headers_split_the_key() {
    let origin = Origin::start(|s| {
        let t = s
            .headers
            .get("x-tenant")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string();
        Reply::ok(t).header("cache-control", "max-age=60")
    })
    .await;
    let c = Corral::start(&config(&origin, "key_headers = [\"X-Tenant\"]")).await;
    assert_eq!(c.get_with("/t", &[("x-tenant", "a")]).await.text(), "a");
    assert_eq!(c.get_with("/t", &[("x-tenant", "b")]).await.text(), "b");
    assert!(c.get_with("/t", &[("x-tenant", "a")]).await.is_hit());
    assert_eq!(origin.count("/t"), 2);
}

#[tokio::test]
async fn heuristic_freshness_only_with_last_modified() {
    let origin = Origin::start(|s| match s.uri.as_str() {
        "/lm" => Reply::ok("lm").header("last-modified", LM),
        _ => Reply::ok("plain"),
    })
    .await;
    let c = Corral::start(&config(&origin, "")).await;
    c.get("/lm").await;
    assert!(
        c.get("/lm").await.is_hit(),
        "10% of a long-ago Last-Modified is fresh"
    );
    c.get("/plain").await;
    assert!(
        !c.get("/plain").await.is_hit(),
        "no Last-Modified, no explicit freshness: stale at once"
    );
}

#[tokio::test]
async fn age_from_upstream_counts() {
    let origin = Origin::start(|_| {
        Reply::ok("aged")
            .header("cache-control", "max-age=100")
            .header("age", "90")
    })
    .await;
    let c = Corral::start(&config(&origin, "")).await;
    let r = c.get("/aged").await;
    assert!(
        r.cache_status().contains("ttl=10") || r.cache_status().contains("ttl=9"),
        "{}",
        r.cache_status()
    );
    let r = c.get("/aged").await;
    let age: u64 = r.header("age").unwrap().parse().unwrap();
    assert!(age >= 90, "Age includes the upstream's Age: {age}");
}

#[tokio::test]
async fn expires_zero_and_invalid_dates_mean_stale() {
    let origin = Origin::start(|s| match s.uri.as_str() {
        "/x0" => Reply::ok("x").header("expires", "0"),
        "/xbad" => Reply::ok("x").header("expires", "tomorrow"),
        _ => Reply::ok("x").header("cache-control", "max-age=a100"),
    })
    .await;
    let c = Corral::start(&config(&origin, "")).await;
    for p in ["/x0", "/xbad", "/badmaxage"] {
        c.get(p).await;
        assert!(!c.get(p).await.is_hit(), "{p}");
        assert_eq!(origin.count(p), 2, "{p}");
    }
}

#[tokio::test]
async fn ranges_are_served_from_a_complete_stored_response() {
    let origin = Origin::start(|_| {
        Reply::ok("0123456789")
            .header("cache-control", "max-age=60")
            .header("etag", "\"r\"")
    })
    .await;
    let c = Corral::start(&config(&origin, "")).await;
    c.get("/range").await;
    let r = c.get_with("/range", &[("range", "bytes=2-4")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.text(), "234");
    assert_eq!(r.header("content-range"), Some("bytes 2-4/10"));
    let r = c.get_with("/range", &[("range", "bytes=-3")]).await;
    assert_eq!(r.text(), "789");
    let r = c.get_with("/range", &[("range", "bytes=20-")]).await;
    assert_eq!(r.status, 416);
    let r = c
        .get_with(
            "/range",
            &[("range", "bytes=0-1"), ("if-range", "\"other\"")],
        )
        .await;
    assert_eq!((r.status, r.text().as_str()), (200, "0123456789"));
    assert_eq!(origin.count("/range"), 1);
    // A single range that misses is asked for as it is; an origin that ignores Range sends
    // the whole 200, which is stored like any other (parts: semantics_edges.rs).
    let r = c.get_with("/other", &[("range", "bytes=0-1")]).await;
    assert_eq!(r.status, 200, "our origin ignores Range");
    assert_eq!(origin.last("/other").unwrap().headers["range"], "bytes=0-1");
    assert!(c.get("/other").await.is_hit());
    assert_eq!(origin.count("/other"), 1);
}
