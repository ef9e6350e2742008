//! Hostile traffic, end to end: a real `corral` in front of a real origin that, like many
//! origins written without a cache in mind, builds links from `X-Forwarded-Host`/`-Proto`,
//! routes on `X-Original-URL` and honours `X-HTTP-Method-Override`, and reflects everything
//! it received into a cacheable response. Each test sends the attacker's request, then a
//! victim's clean one, and the victim's answer must carry no trace of the attacker.

mod common;

use std::time::Duration;

use common::*;

/// The naive origin: everything it was told ends up in a cacheable page.
fn reflect(s: &Seen) -> Reply {
    let h = |n: &str| {
        s.headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let host = Some(h("x-forwarded-host"))
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| h("host"));
    let proto = Some(h("x-forwarded-proto"))
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "http".into());
    let path = Some(h("x-original-url"))
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| s.uri.clone());
    let method = Some(h("x-http-method-override"))
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| s.method.clone());
    let mut page = format!("<a href=\"{proto}://{host}/static/app.js\"> {method} {path}\n");
    for (n, v) in &s.headers {
        page.push_str(&format!("{n}: {}\n", v.to_str().unwrap_or("?")));
    }
    page.push_str(&format!("body: {}\n", String::from_utf8_lossy(&s.body)));
    Reply::ok(page).header("cache-control", "max-age=300")
}

async fn gateway(origin: &Origin, extra_server: &str, cache: &str) -> Corral {
    Corral::start(&format!("{extra_server}\n{}", config(origin, cache))).await
}

fn assert_clean(victim: &Resp, what: &str) {
    let body = victim.text();
    assert!(
        !body.contains("evil") && !body.contains("/admin") && !body.contains("DELETE"),
        "{what}: the victim got the attacker's page:\n{body}"
    );
}

#[tokio::test]
async fn forwarding_headers_from_a_client_never_poison_the_cache() {
    let origin = Origin::start(reflect).await;
    let c = gateway(&origin, "", "").await;
    let attacks: &[(&str, &str)] = &[
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-proto", "evil"),
        ("x-forwarded-port", "6666"),
        ("x-forwarded-prefix", "/evil"),
        ("x-forwarded-server", "evil.example"),
        ("x-forwarded-scheme", "evil"),
        ("forwarded", "for=6.6.6.6;host=evil.example;proto=https"),
        ("x-host", "evil.example"),
        ("x-original-host", "evil.example"),
        ("x-forwarded-for", "6.6.6.6, evil"),
        ("x-real-ip", "6.6.6.6-evil"),
    ];
    for (i, (name, value)) in attacks.iter().enumerate() {
        let path = format!("/page/{i}");
        let attacker = c.get_with(&path, &[(name, value)]).await;
        assert_eq!(attacker.status, 200);
        assert!(
            !attacker.text().contains("evil"),
            "{name} reached the origin"
        );
        let victim = c.get(&path).await;
        assert!(
            victim.is_hit(),
            "{name}: the attacker's fill was stored for everyone"
        );
        assert_clean(&victim, name);
    }
    // What the origin saw instead: Corral's own account of the request.
    let seen = origin.last("/page/0").unwrap();
    let host = c.proxy.to_string();
    assert_eq!(seen.headers["x-forwarded-host"], host.as_str());
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(
        seen.headers["x-forwarded-port"],
        c.proxy.port().to_string().as_str()
    );
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(
        seen.headers["forwarded"],
        format!("for=127.0.0.1;host={host};proto=http").as_str()
    );
}

#[tokio::test]
async fn a_trusted_proxys_forwarding_headers_are_kept_and_keyed() {
    let origin = Origin::start(reflect).await;
    let c = gateway(&origin, "trusted_proxies = [\"127.0.0.0/8\"]", "").await;
    let a = c.get_with("/p", &[("x-forwarded-host", "a.example")]).await;
    assert!(a.text().contains("http://a.example/"), "{}", a.text());
    let b = c.get_with("/p", &[("x-forwarded-host", "b.example")]).await;
    assert!(!b.is_hit(), "another forwarded host is another entry");
    assert!(b.text().contains("http://b.example/"), "{}", b.text());
    let plain = c.get("/p").await;
    assert!(
        !plain.is_hit(),
        "no forwarding context is another entry again"
    );
    assert!(!plain.text().contains(".example/"), "{}", plain.text());
    assert!(c
        .get_with("/p", &[("x-forwarded-host", "a.example")])
        .await
        .is_hit());
    assert!(c.get("/p").await.is_hit());
    assert_eq!(origin.count("/p"), 3);
    let seen = origin.last("/p").unwrap();
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    let xff = c
        .get_with("/xff", &[("x-forwarded-for", "198.51.100.7")])
        .await;
    assert!(
        xff.text()
            .contains("x-forwarded-for: 198.51.100.7, 127.0.0.1"),
        "{}",
        xff.text()
    );
    // A URL purge covers every forwarding context's copy.
    let purged = purge_url(&c, "/p").await;
    assert_eq!(purged, 3, "every variant of the URL");
    assert!(!c
        .get_with("/p", &[("x-forwarded-host", "a.example")])
        .await
        .is_hit());
}

async fn purge_url(c: &Corral, url: &str) -> u64 {
    let v = purge(c, serde_json::json!({ "urls": [url] })).await;
    v["purged"].as_u64().unwrap()
}

#[tokio::test]
async fn override_headers_are_removed_or_make_the_request_pass() {
    let origin = Origin::start(reflect).await;
    let overrides: &[(&str, &str)] = &[
        ("x-original-url", "/admin"),
        ("x-rewrite-url", "/admin"),
        ("x-http-method-override", "DELETE"),
        ("x-http-method", "DELETE"),
        ("x-method-override", "DELETE"),
    ];
    let c = gateway(&origin, "", "").await;
    for (i, (name, value)) in overrides.iter().enumerate() {
        let path = format!("/o/{i}");
        c.get_with(&path, &[(name, value)]).await;
        assert!(
            origin.last(&path).unwrap().headers.get(*name).is_none(),
            "{name} reached the origin"
        );
        assert_clean(&c.get(&path).await, name);
    }
    // A route that forwards them: the request passes, never stored, never served from cache.
    let fwd = gateway(&origin, "", "forward_override_headers = true").await;
    fwd.get("/f").await;
    for (name, value) in overrides {
        let attacker = fwd.get_with("/f", &[(name, value)]).await;
        assert!(
            attacker.cache_status().contains("fwd=bypass"),
            "{name}: {}",
            attacker.cache_status()
        );
        assert!(attacker.cache_status().contains("detail=override-header"));
        assert_eq!(origin.last("/f").unwrap().headers[*name], *value);
        let victim = fwd.get("/f").await;
        assert!(victim.is_hit());
        assert_clean(&victim, name);
    }
}

#[tokio::test]
async fn a_get_with_a_body_is_passed_with_its_body_never_shared() {
    let origin = Origin::start(reflect).await;
    let c = gateway(&origin, "", "").await;
    c.get("/b").await;
    let attacker = client()
        .get(c.url("/b"))
        .body("evil=1")
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("a GET with a body is answered, not left hanging");
    let cs = attacker.headers()["cache-status"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        cs.contains("fwd=bypass") && cs.contains("detail=request-body"),
        "{cs}"
    );
    assert!(
        attacker.text().await.unwrap().contains("body: evil=1"),
        "the body is forwarded intact"
    );
    assert_eq!(origin.last("/b").unwrap().method, "GET");
    let victim = c.get("/b").await;
    assert!(victim.is_hit());
    assert_clean(&victim, "GET body");
}

#[tokio::test]
async fn a_get_with_a_body_can_be_refused() {
    let origin = Origin::start(reflect).await;
    let c = gateway(&origin, "get_body = \"reject\"", "").await;
    let before = origin.requests().len();
    let resp = client()
        .get(c.url("/r"))
        .body("evil=1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let head = client().head(c.url("/r")).body("x").send().await.unwrap();
    assert_eq!(head.status(), 400);
    assert_eq!(origin.requests().len(), before, "refused before the origin");
    assert_eq!(
        c.get("/r").await.status,
        200,
        "a GET without a body is served"
    );
    assert!(c.metric("corral_refused_requests_total").await >= 2.0);
}

#[tokio::test]
async fn every_spelling_of_a_path_is_keyed_and_fetched_as_one() {
    let origin = Origin::start(reflect).await;
    let c = gateway(&origin, "", "").await;
    let first = c.get("/cat/item").await;
    assert!(!first.is_hit());
    for alias in [
        "/cat/./item",
        "/cat/x/../item",
        "//cat//item",
        "/%63at/%69tem",
        "/cat/%2e/item",
    ] {
        let r = c.get(alias).await;
        assert!(r.is_hit(), "{alias} is the same URL: {}", r.cache_status());
    }
    assert_eq!(origin.count("/cat/item"), 1);
    assert_eq!(
        origin.requests().len(),
        1,
        "no other spelling reached the origin"
    );
    // An encoded slash is not a separator: its own key, fetched exactly as keyed.
    let enc = c.get("/cat%2fitem").await;
    assert!(!enc.is_hit());
    assert_eq!(origin.last("/cat%2F").unwrap().uri, "/cat%2Fitem");
    // A purge in any spelling covers the one key.
    assert_eq!(purge_url(&c, "/cat/./%69tem").await, 1);
    assert!(!c.get("/cat/item").await.is_hit());
    // Hosts: case and the default port do not matter.
    let port = c.proxy.port();
    let upper = c
        .get_with("/h", &[("host", &format!("LOCALHOST:{port}"))])
        .await;
    let lower = c
        .get_with("/h", &[("host", &format!("localhost:{port}"))])
        .await;
    assert!(!upper.is_hit() && lower.is_hit());
    assert_eq!(
        origin.last("/h").unwrap().headers["host"],
        format!("localhost:{port}").as_str()
    );
}

#[tokio::test]
async fn cache_deception_paths_are_never_cached_for_their_extension() {
    // An origin that serves the account page, privately, under any path below /account.
    let origin = Origin::start(|s: &Seen| {
        if s.uri.starts_with("/account") {
            Reply::ok("account of alice").header("cache-control", "private")
        } else {
            Reply::ok("static").header("cache-control", "max-age=300")
        }
    })
    .await;
    let c = gateway(&origin, "", "").await;
    for path in [
        "/account/x.css",
        "/account;x.css",
        "/account%2Fx.css",
        "/account/.js",
        "/account/x.png?v=1",
    ] {
        let cookie = [("cookie", "session=alice")];
        assert_eq!(c.get_with(path, &cookie).await.text(), "account of alice");
        let before = origin.requests().len();
        let victim = c.get(path).await;
        assert!(!victim.is_hit(), "{path} was cached for its extension");
        assert_eq!(origin.requests().len(), before + 1, "{path}");
    }
}

#[tokio::test]
async fn an_error_is_not_made_everyones_answer() {
    // CPDoS: the origin fails on a header only the attacker sends, without cache headers.
    let origin = Origin::start(|s: &Seen| {
        if s.headers.contains_key("x-oversized-evil") {
            Reply::ok("bad request").status(400)
        } else {
            Reply::ok("good")
        }
    })
    .await;
    let c = gateway(&origin, "", "default_ttl = \"60s\"").await;
    let attacker = c.get_with("/e", &[("x-oversized-evil", "1")]).await;
    assert_eq!(attacker.status, 400);
    let victim = c.get("/e").await;
    assert_eq!((victim.status, victim.text().as_str()), (200, "good"));
    assert!(
        c.get("/e").await.is_hit(),
        "the default TTL still applies to 200"
    );
    // Oversized headers are refused by Corral itself, so no origin error exists to store.
    let before = origin.requests().len();
    let huge = "x".repeat(70 * 1024);
    let r = client()
        .get(c.url("/e2"))
        .header("x-big", huge)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    assert_eq!(origin.requests().len(), before);
    assert_eq!(c.get("/e2").await.text(), "good");
}

#[tokio::test]
async fn an_unkeyed_header_never_shapes_a_stored_answer() {
    let origin = Origin::start(reflect).await;
    let c = gateway(&origin, "", "unkeyed_headers = [\"x-trace-*\"]").await;
    let attacker = c.get_with("/u", &[("x-device", "evil-phone")]).await;
    assert!(
        attacker.cache_status().contains("detail=unkeyed-header"),
        "{}",
        attacker.cache_status()
    );
    let victim = c.get("/u").await;
    assert!(!victim.is_hit());
    assert_clean(&victim, "x-device");
    assert!(c.get("/u").await.is_hit(), "the clean fill was stored");
    // An allow-listed header does not prevent storing.
    let traced = c.get_with("/t", &[("x-trace-id", "1")]).await;
    assert!(
        traced.cache_status().contains("stored"),
        "{}",
        traced.cache_status()
    );
    assert!(c.get("/t").await.is_hit());
}

#[tokio::test]
async fn sizes_a_client_chooses_are_bounded() {
    let origin = Origin::start(|s: &Seen| {
        Reply::ok(format!("v {}", s.uri))
            .header("cache-control", "max-age=300")
            .header("vary", "accept-language")
    })
    .await;
    let c = gateway(&origin, "", "max_key_length = 200\nmax_variants = 4").await;
    let long = format!("/k?{}", "a".repeat(300));
    let r = c.get(&long).await;
    assert!(
        r.cache_status().contains("detail=key-too-long"),
        "{}",
        r.cache_status()
    );
    assert!(!c.get(&long).await.is_hit());
    for i in 0..20 {
        c.get_with("/v", &[("accept-language", &format!("l{i}"))])
            .await;
    }
    // Only the newest four variants remain: an older one is a miss, a newer one a hit.
    assert!(c
        .get_with("/v", &[("accept-language", "l19")])
        .await
        .is_hit());
    assert!(!c
        .get_with("/v", &[("accept-language", "l0")])
        .await
        .is_hit());
    assert!(purge_url(&c, "/v").await <= 4);
}

#[tokio::test]
async fn check_config_prints_the_key_and_forwarding_policy() {
    let dir = tempfile::tempdir().unwrap();
    let out = check_config(&config_file(
        dir.path(),
        "[server]\ntrusted_proxies = [\"10.0.0.0/8\"]\n[upstream]\nurl = \"http://127.0.0.1:3000\"\n[cache]\nignore_query = [\"utm_*\"]\nkey_headers = [\"x-tenant\"]\n",
    ));
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "forwarding headers: kept and keyed from 10.0.0.0/8",
        "key: host + normalised path + query (sorted, without utm_*) + headers x-tenant + Vary",
        "override headers (x-original-url",
        "errors stored only with the origin's explicit freshness",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    let bad = check_config(&config_file(
        dir.path(),
        "[server]\nget_body = \"sometimes\"\n",
    ));
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("server.get_body"));
}

#[tokio::test]
async fn a_client_cannot_evict_an_entry_by_asking_not_to_store() {
    let origin = Origin::start(reflect).await;
    let c = gateway(&origin, "", "").await;
    c.get("/keep").await;
    // Each attacker request forces a fetch (`no-cache`) whose response cannot be stored for a
    // reason of the request's own making.
    for (name, value) in [
        ("cache-control", "no-store"),
        ("authorization", "Bearer evil"),
        ("x-device", "evil"),
    ] {
        let before = origin.count("/keep");
        let mut headers = vec![(name, value), ("pragma", "no-cache")];
        if name == "cache-control" {
            headers = vec![(name, "no-cache, no-store")];
        }
        c.get_with("/keep", &headers).await;
        assert_eq!(
            origin.count("/keep"),
            before + 1,
            "{name}: the attacker's request was fetched"
        );
        let victim = c.get("/keep").await;
        assert!(victim.is_hit(), "{name} evicted the stored entry");
        assert_clean(&victim, name);
    }
}
