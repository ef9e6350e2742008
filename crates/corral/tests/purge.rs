//! Surrogate keys and the purge API, end to end.

mod common;

use std::process::Command;

use common::*;
use serde_json::{json, Value};

/// An origin whose responses carry tags and validators; `/p/N` is tagged `product-N` and
/// `products`, and answers 304 to a matching If-None-Match.
async fn tagged_origin() -> Origin {
    Origin::start(|s| {
        let path = s.uri.split('?').next().unwrap().to_string();
        let id = path.rsplit('/').next().unwrap().to_string();
        let etag = format!("\"v-{id}\"");
        if s.headers.get("if-none-match").and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
            return Reply::ok("")
                .status(304)
                .header("etag", &etag)
                .header("cache-control", "max-age=60");
        }
        Reply::ok(format!("body of {path}"))
            .header("cache-control", "max-age=60")
            .header("etag", &etag)
            .header("surrogate-key", &format!("product-{id} products"))
            .header(
                "cache-tag",
                &format!("section-{}", path.split('/').nth(1).unwrap_or("")),
            )
    })
    .await
}

async fn post_purge(c: &Corral, body: Value, token: Option<&str>) -> (u16, Value) {
    let mut r = client().post(c.admin_url("/purge")).json(&body);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn warm(c: &Corral, paths: &[&str]) {
    for p in paths {
        c.get(p).await;
        assert!(c.get(p).await.is_hit(), "{p} is cached");
    }
}

#[tokio::test]
async fn tags_are_stored_and_stripped_from_clients() {
    let origin = tagged_origin().await;
    let c = Corral::start(&config(&origin, "")).await;
    let r = c.get("/p/1").await;
    assert!(r.header("surrogate-key").is_none());
    assert!(r.header("cache-tag").is_none());
    assert!(c.get("/p/1").await.header("surrogate-key").is_none());
    let c2 = Corral::start(&config(&origin, "expose_tags = true")).await;
    assert_eq!(
        c2.get("/p/1").await.header("surrogate-key"),
        Some("product-1 products")
    );
}

#[tokio::test]
async fn purge_by_tag_url_prefix_and_all() {
    let origin = tagged_origin().await;
    let c = Corral::start(&config(&origin, "")).await;
    warm(&c, &["/p/1", "/p/2", "/q/3", "/q/4?x=1", "/r/5"]).await;

    let (s, v) = post_purge(&c, json!({"tags": ["product-1"]}), None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["purged"], 1);
    assert!(v["event"].as_str().is_some_and(|e| !e.is_empty()));
    assert!(!c.get("/p/1").await.is_hit());
    assert!(c.get("/p/2").await.is_hit(), "other tags untouched");

    // Cache-Tag (comma-separated) tags too.
    let (s, _) = post_purge(&c, json!({"tags": ["section-q"]}), None).await;
    assert_eq!(s, 200);
    assert!(!c.get("/q/3").await.is_hit());
    assert!(c.get("/r/5").await.is_hit());

    // URL: a path purges every host's variants; the query is normalised like the key.
    warm(&c, &["/q/4?x=1&y=2"]).await;
    let (s, v) = post_purge(&c, json!({"urls": ["/q/4?y=2&x=1"]}), None).await;
    assert_eq!(s, 200);
    assert_eq!(v["purged"], 1);
    assert!(!c.get("/q/4?x=1&y=2").await.is_hit());

    // Prefix.
    warm(&c, &["/p/1", "/p/2"]).await;
    let (_, v) = post_purge(&c, json!({"prefixes": ["/p/"]}), None).await;
    assert_eq!(v["purged"], 2);
    assert!(!c.get("/p/1").await.is_hit());
    assert!(!c.get("/p/2").await.is_hit());
    assert!(c.get("/r/5").await.is_hit());

    // Several selectors in one event.
    warm(&c, &["/p/1", "/q/3"]).await;
    let (s, _) = post_purge(&c, json!({"tags": ["product-1"], "urls": ["/q/3"]}), None).await;
    assert_eq!(s, 200);
    assert!(!c.get("/p/1").await.is_hit());
    assert!(!c.get("/q/3").await.is_hit());

    // Everything.
    warm(&c, &["/p/1", "/r/5"]).await;
    post_purge(&c, json!({"all": true}), None).await;
    assert!(!c.get("/p/1").await.is_hit());
    assert!(!c.get("/r/5").await.is_hit());
    assert!(c.metric("corral_purges_total{kind=\"tag\"}").await >= 3.0);
    assert!(c.metric("corral_purges_total{kind=\"all\"}").await >= 1.0);
}

#[tokio::test]
async fn soft_purge_revalidates_and_can_still_serve_stale_on_error() {
    let origin = tagged_origin().await;
    let c = Corral::start(&config(&origin, "stale_if_error = \"60s\"")).await;
    warm(&c, &["/p/7"]).await;
    let before = origin.count("/p/7");
    let (s, _) = post_purge(&c, json!({"tags": ["product-7"], "soft": true}), None).await;
    assert_eq!(s, 200);
    let r = c.get("/p/7").await;
    assert_eq!(r.text(), "body of /p/7");
    assert!(
        r.cache_status().contains("fwd=stale") && r.cache_status().contains("fwd-status=304"),
        "{}",
        r.cache_status()
    );
    assert_eq!(origin.count("/p/7"), before + 1);
    assert_eq!(
        origin.last("/p/7").unwrap().headers["if-none-match"],
        "\"v-7\"",
        "revalidated conditionally"
    );
    assert!(c.get("/p/7").await.is_hit(), "fresh again after the 304");

    // Soft-purged, and the origin fails: the stale copy stands in.
    post_purge(&c, json!({"urls": ["/p/7"], "soft": true}), None).await;
    origin.set(|_| Reply::ok("down").status(503));
    let r = c.get("/p/7").await;
    assert_eq!(r.status, 200, "{}", r.cache_status());
    assert_eq!(r.text(), "body of /p/7");
    assert!(r.cache_status().contains("stale-if-error"));
}

/// The older `POST /invalidate {"key": tag}` form, without a token.
async fn invalidate_compat(c: &Corral, tag: &str) -> reqwest::Response {
    client()
        .post(c.admin_url("/invalidate"))
        .json(&json!({ "key": tag }))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn invalidate_compat_form_purges_a_tag() {
    let origin = tagged_origin().await;
    let c = Corral::start(&config(&origin, "")).await;
    warm(&c, &["/p/9"]).await;
    let r = invalidate_compat(&c, "product-9").await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["purged"], 1);
    assert!(!c.get("/p/9").await.is_hit());
}

#[tokio::test]
async fn token_is_required_when_configured_and_rejections_change_nothing() {
    let origin = tagged_origin().await;
    let c = Corral::start_with_env(&config(&origin, ""), &[("CORRAL_ADMIN_TOKEN", "s3cret")]).await;
    warm(&c, &["/p/1"]).await;
    for token in [None, Some("wrong"), Some("s3cre")] {
        let (s, v) = post_purge(&c, json!({"all": true}), token).await;
        assert_eq!(s, 401, "{token:?}");
        assert!(v["error"].as_str().unwrap().contains("token"));
    }
    let r = invalidate_compat(&c, "products").await;
    assert_eq!(r.status(), 401);
    assert!(
        c.get("/p/1").await.is_hit(),
        "nothing purged by rejected requests"
    );
    let (s, _) = post_purge(&c, json!({"tags": ["products"]}), Some("s3cret")).await;
    assert_eq!(s, 200);
    assert!(!c.get("/p/1").await.is_hit());
}

#[tokio::test]
async fn malformed_unknown_and_oversized_bodies() {
    let origin = tagged_origin().await;
    let c = Corral::start(&config(&origin, "")).await;
    warm(&c, &["/p/1"]).await;
    // Each case a request to the admin API, the status it must get and what its JSON error
    // must name.
    let json_to = |path: &str, body: Value| client().post(c.admin_url(path)).json(&body);
    let raw_purge = |body: String| {
        client()
            .post(c.admin_url("/purge"))
            .header("content-type", "application/json")
            .body(body)
    };
    let too_large = format!("{{\"tags\": [\"{}\"]}}", "a".repeat(2 << 20));
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (raw_purge("{not json".into()), 400, ""),
        (json_to("/purge", json!({"tagz": ["x"]})), 400, "tagz"),
        (json_to("/purge", json!({"tags": "products"})), 400, "tags"),
        (json_to("/purge", json!({})), 400, "nothing to purge"),
        (
            json_to("/purge", json!({"prefixes": ["nope"]})),
            400,
            "prefixes[0]",
        ),
        (
            json_to("/purge", json!({"tags": ["products"], "urls": ["ftp://x"]})),
            400,
            "urls[0]",
        ),
        (json_to("/invalidate", json!({"key": ""})), 400, "key"),
        (raw_purge(too_large), 413, "too large"),
    ];
    for (req, status, needle) in cases {
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "the case naming {needle:?}");
        let v: Value = r.json().await.unwrap();
        let msg = v["error"].as_str().expect("a JSON error");
        assert!(msg.contains(needle), "{msg:?} should name {needle:?}");
    }
    assert!(
        c.get("/p/1").await.is_hit(),
        "no partial purge from a rejected request"
    );
    assert_eq!(c.metric("corral_purges_total").await, 0.0);
}

#[tokio::test]
async fn purge_method_acl_and_token() {
    let origin = tagged_origin().await;
    // Loopback is not in purge_allow here: only the token opens PURGE.
    let c = Corral::start_with_env(
        &format!(
            "{}\n[admin]\npurge_allow = [\"10.9.9.0/24\"]\n",
            config(&origin, "")
        ),
        &[("CORRAL_ADMIN_TOKEN", "tok")],
    )
    .await;
    warm(&c, &["/p/3"]).await;
    let purge = reqwest::Method::from_bytes(b"PURGE").unwrap();
    let r = client()
        .request(purge.clone(), c.url("/p/3"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(c.get("/p/3").await.is_hit());
    let r = client()
        .request(purge.clone(), c.url("/p/3"))
        .bearer_auth("tok")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["purged"], 1);
    assert!(!c.get("/p/3").await.is_hit());

    // Default purge_allow is loopback: PURGE from 127.0.0.1 works without a token.
    let c2 = Corral::start(&config(&origin, "")).await;
    warm(&c2, &["/p/4"]).await;
    let r = client()
        .request(purge, c2.url("/p/4"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(!c2.get("/p/4").await.is_hit());
}

#[tokio::test(flavor = "multi_thread")]
async fn corral_purge_cli() {
    let origin = tagged_origin().await;
    let c =
        Corral::start_with_env(&config(&origin, ""), &[("CORRAL_ADMIN_TOKEN", "clitoken")]).await;
    warm(&c, &["/p/1", "/p/2"]).await;
    let admin = format!("http://{}", c.admin);
    let dir = tempfile::tempdir().unwrap();
    let tf = dir.path().join("token");
    std::fs::write(&tf, "clitoken\n").unwrap();
    let run = |args: &[&str], env_token: Option<&str>| {
        let mut cmd = Command::new(bin());
        cmd.arg("purge")
            .arg("--admin")
            .arg(&admin)
            .args(args)
            .env_remove("CORRAL_ADMIN_TOKEN");
        if let Some(t) = env_token {
            cmd.env("CORRAL_ADMIN_TOKEN", t);
        }
        cmd.output().unwrap()
    };
    let out = tokio::task::block_in_place(|| run(&["--tag", "product-1"], None));
    assert!(!out.status.success(), "no token: refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    let out = tokio::task::block_in_place(|| {
        run(
            &["--tag", "product-1", "--token-file", tf.to_str().unwrap()],
            None,
        )
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("purged 1"));
    assert!(!c.get("/p/1").await.is_hit());
    let out = tokio::task::block_in_place(|| run(&["--url", "/p/2", "--soft"], Some("clitoken")));
    assert!(out.status.success());
    let out = tokio::task::block_in_place(|| run(&[], Some("clitoken")));
    assert!(!out.status.success(), "nothing to purge is an error");
}

#[tokio::test]
async fn purge_races_with_an_in_flight_fill() {
    // The origin answers slowly; a purge issued while the fill is in flight must win: the
    // response fetched before the purge is not served from cache afterwards.
    let origin = Origin::start(|_| {
        Reply::ok("old")
            .header("cache-control", "max-age=60")
            .header("surrogate-key", "race")
            .delay(std::time::Duration::from_millis(600))
    })
    .await;
    let c = Corral::start(&config(&origin, "")).await;
    let url = c.url("/race");
    let fill = tokio::spawn(async move {
        client()
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (s, _) = post_purge(&c, json!({"tags": ["race"]}), None).await;
    assert_eq!(s, 200);
    assert_eq!(fill.await.unwrap(), "old");
    let r = c.get("/race").await;
    assert!(
        !r.is_hit(),
        "a fill that started before the purge is not served: {}",
        r.cache_status()
    );
}

/// A hard purge frees what it covered in the background (the reclaim thread), and the store's
/// counts follow; entries the purge did not cover stay.
#[tokio::test]
async fn a_hard_purge_is_reclaimed_in_the_background() {
    let origin = tagged_origin().await;
    let c = Corral::start(&config(&origin, "")).await;
    for i in 0..200 {
        c.get(&format!("/p/{i}")).await;
    }
    warm(&c, &["/r/keep"]).await;
    assert_eq!(c.metric("corral_cache_entries").await, 201.0);
    let bytes_before = c.metric("corral_cache_bytes").await;
    let (s, v) = post_purge(&c, json!({"tags": ["section-p"]}), None).await;
    assert_eq!((s, v["purged"].as_u64()), (200, Some(200)));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while c.metric("corral_cache_entries").await > 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "purged entries not reclaimed: {} left",
            c.metric("corral_cache_entries").await
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(c.metric("corral_cache_bytes").await < bytes_before / 100.0);
    assert!(c.get("/r/keep").await.is_hit());
}
