//! Gateway core, end to end: the real binary in front of a real origin, asserting on what the
//! origin saw.

mod common;

use std::time::Duration;

use common::*;

fn cacheable(body: &str) -> Reply {
    Reply::ok(body.to_string()).header("cache-control", "max-age=60")
}

/// `n` GETs of `url` sent at once, their answers in order.
async fn concurrent_gets(url: &str, n: usize) -> Vec<Resp> {
    let client = common::client();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let request = client.get(url).send();
            tokio::spawn(async move { Resp::from(request.await.unwrap()).await })
        })
        .collect();
    let mut answers = Vec::with_capacity(n);
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    answers
}

#[tokio::test]
async fn miss_then_hit_with_age_and_cache_status() {
    let origin = Origin::start(|_| cacheable("hello")).await;
    let c = Corral::start(&config(&origin, "")).await;
    let r1 = c.get("/a").await;
    assert_eq!(r1.status, 200);
    assert_eq!(r1.text(), "hello");
    assert!(
        r1.cache_status().starts_with("corral; fwd=miss"),
        "{}",
        r1.cache_status()
    );
    assert!(r1.cache_status().contains("stored"));
    let r2 = c.get("/a").await;
    assert!(r2.is_hit(), "{}", r2.cache_status());
    assert!(r2.cache_status().contains("ttl="));
    assert_eq!(r2.text(), "hello");
    assert!(r2.header("age").is_some(), "a cached answer carries Age");
    assert_eq!(origin.count("/a"), 1);
    // HEAD shares the stored GET.
    let head = common::client().head(c.url("/a")).send().await.unwrap();
    assert_eq!(head.headers()["content-length"], "5");
    assert_eq!(origin.count("/a"), 1);
}

#[tokio::test]
async fn hundred_concurrent_misses_make_one_origin_request() {
    let origin = Origin::start(|_| cacheable("slow").delay(Duration::from_millis(400))).await;
    let c = Corral::start(&config(&origin, "")).await;
    let mut collapsed = 0;
    for r in concurrent_gets(&c.url("/stampede"), 100).await {
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "slow");
        collapsed += usize::from(r.cache_status().contains("collapsed"));
    }
    assert_eq!(
        origin.count("/stampede"),
        1,
        "coalescing makes exactly one origin request"
    );
    assert!(collapsed > 0, "coalesced answers say collapsed");
    assert!(c.metric("corral_coalesced_requests_total").await >= collapsed as f64);
}

/// In a full cache of popular entries, a cold key's fill is refused by admission (it was
/// asked for less often than what it would evict); the requests that waited on that fill are
/// still answered by it: one origin request, not one per waiter.
#[tokio::test]
async fn waiters_on_a_fill_the_cache_refuses_share_it() {
    let origin = Origin::start(|s| {
        let delay = if s.uri.starts_with("/cold") { 300 } else { 0 };
        cacheable(&"x".repeat(4000)).delay(Duration::from_millis(delay))
    })
    .await;
    let c = Corral::start(&config(
        &origin,
        "max_size = \"1MiB\"\nmax_object_size = \"64KiB\"",
    ))
    .await;
    // ~180 entries of 4 KB fit; 300 keys asked for 8 times each fill it with popular ones.
    for round in 0..8 {
        for i in 0..300 {
            let r = c.get(&format!("/hot/{i}")).await;
            assert_eq!(r.status, 200, "round {round}");
        }
    }
    assert!(c.metric("corral_cache_bytes").await <= 1024.0 * 1024.0);
    for r in concurrent_gets(&c.url("/cold"), 3).await {
        assert_eq!((r.status, r.text().len()), (200, 4000));
    }
    assert_eq!(origin.count("/cold"), 1, "one fill answers every waiter");
    assert!(
        !c.get("/cold").await.is_hit(),
        "the cold key was not admitted over the popular ones"
    );
}

#[tokio::test]
async fn failed_fetch_does_not_poison_waiters() {
    // The first request fails (500, not storable); waiters must not hang and must get an answer.
    let origin = Origin::start(|_| {
        Reply::ok("boom")
            .status(500)
            .delay(Duration::from_millis(300))
    })
    .await;
    let c = Corral::start(&config(&origin, "")).await;
    let client = common::client();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (client, url) = (client.clone(), c.url("/fail"));
            tokio::spawn(async move { client.get(url).send().await.unwrap().status().as_u16() })
        })
        .collect();
    for t in tasks {
        let status = tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .expect("no hang")
            .unwrap();
        assert_eq!(status, 500);
    }
}

/// Each response here must not be stored: asked twice, the origin sees two requests.
#[tokio::test]
async fn responses_that_must_not_be_stored() {
    let origin = Origin::start(|s| {
        let r = Reply::ok("x");
        match s.uri.as_str() {
            "/no-store" => r.header("cache-control", "no-store, max-age=60"),
            "/private" => r.header("cache-control", "private, max-age=60"),
            "/cookie" => r
                .header("cache-control", "max-age=60")
                .header("set-cookie", "id=1"),
            "/auth" => r.header("cache-control", "max-age=60"),
            "/pub-auth" => r.header("cache-control", "public, max-age=60"),
            "/error" => r.status(500),
            "/no-freshness" => r.status(302).header("location", "/x"),
            "/vary-star" => r.header("cache-control", "max-age=60").header("vary", "*"),
            "/partial" => r
                .status(206)
                .header("content-range", "bytes 0-0/10")
                .header("cache-control", "max-age=60"),
            _ => r,
        }
    })
    .await;
    let c = Corral::start(&config(&origin, "")).await;
    for path in [
        "/no-store",
        "/private",
        "/cookie",
        "/error",
        "/no-freshness",
        "/vary-star",
        "/partial",
    ] {
        for _ in 0..2 {
            let r = c.get(path).await;
            assert!(!r.is_hit(), "{path}: {}", r.cache_status());
        }
        assert_eq!(origin.count(path), 2, "{path} must not be stored");
    }
    // The Set-Cookie response still reaches the client that caused it.
    assert_eq!(c.get("/cookie").await.header("set-cookie"), Some("id=1"));
    // Authorization: not shared unless the response says public (or s-maxage/must-revalidate).
    for _ in 0..2 {
        c.get_with("/auth", &[("authorization", "Bearer a")]).await;
        c.get_with("/pub-auth", &[("authorization", "Bearer a")])
            .await;
    }
    assert_eq!(origin.count("/auth"), 2);
    assert_eq!(origin.count("/pub-auth"), 1);
    // A request's no-store: answered, but nothing stored.
    c.get_with("/req-no-store", &[("cache-control", "no-store")])
        .await;
    c.get("/req-no-store").await;
    assert_eq!(origin.count("/req-no-store"), 2);
}

#[tokio::test]
async fn strip_set_cookie_switch_stores_without_the_cookie() {
    let origin = Origin::start(|_| cacheable("x").header("set-cookie", "id=1")).await;
    let c = Corral::start(&config(&origin, "strip_set_cookie = true")).await;
    let first = c.get("/c").await;
    assert_eq!(first.header("set-cookie"), Some("id=1"));
    let second = c.get("/c").await;
    assert!(second.is_hit());
    assert_eq!(
        second.header("set-cookie"),
        None,
        "a stored response never replays Set-Cookie"
    );
    assert_eq!(origin.count("/c"), 1);
}

#[tokio::test]
async fn query_is_normalised() {
    let origin = Origin::start(|_| cacheable("q")).await;
    let c = Corral::start(&config(&origin, "ignore_query = [\"utm_*\", \"fbclid\"]")).await;
    c.get("/q?b=2&a=1").await;
    let r = c.get("/q?a=1&&b=2&utm_source=x&fbclid=9").await;
    assert!(r.is_hit(), "{}", r.cache_status());
    assert_eq!(origin.count("/q"), 1);
    let r = c.get("/q?a=1&b=3").await;
    assert!(!r.is_hit());
    assert_eq!(origin.count("/q"), 2);
}

#[tokio::test]
async fn unsafe_methods_invalidate_target_and_location() {
    let origin = Origin::start(|s| match s.method.as_str() {
        "POST" => Reply::ok("created")
            .status(201)
            .header("location", "/items/2"),
        "DELETE" => Reply::ok("").status(500),
        _ => cacheable("item"),
    })
    .await;
    let c = Corral::start(&config(&origin, "")).await;
    for p in ["/items/1", "/items/2"] {
        c.get(p).await;
        assert!(c.get(p).await.is_hit());
    }
    let r = Resp::from(
        common::client()
            .post(c.url("/items/1"))
            .body("data")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 201);
    assert_eq!(
        origin.last("/items/1").unwrap().body_len,
        4,
        "the body reached the origin"
    );
    assert!(!c.get("/items/1").await.is_hit(), "target URI invalidated");
    assert!(!c.get("/items/2").await.is_hit(), "Location invalidated");
    // A failed write invalidates nothing.
    assert!(c.get("/items/1").await.is_hit());
    common::client()
        .delete(c.url("/items/1"))
        .send()
        .await
        .unwrap();
    assert!(c.get("/items/1").await.is_hit());
}

#[tokio::test]
async fn bodies_over_max_object_size_stream_through_unstored() {
    let origin = Origin::start(|_| {
        Reply::ok("")
            .header("cache-control", "max-age=60")
            .stream(3 << 20)
    })
    .await;
    let c = Corral::start(&config(&origin, "max_object_size = \"1MiB\"")).await;
    for _ in 0..2 {
        let r = c.get("/big").await;
        assert_eq!(r.body.len(), 3 << 20);
        assert!(r.body.iter().all(|&b| b == b'x'));
    }
    assert_eq!(origin.count("/big"), 2);
}

/// A body far larger than memory allowances passes with flat memory.
#[tokio::test]
async fn huge_body_streams_with_flat_memory() {
    let size: u64 = 512 << 20;
    let origin = Origin::start(move |_| {
        Reply::ok("")
            .header("cache-control", "max-age=60")
            .stream(size)
    })
    .await;
    let c = Corral::start(&config(&origin, "max_object_size = \"8MiB\"")).await;
    let mut resp = common::client().get(c.url("/huge")).send().await.unwrap();
    let mut total = 0u64;
    while let Some(chunk) = resp.chunk().await.unwrap() {
        total += chunk.len() as u64;
    }
    assert_eq!(total, size);
    let status = std::fs::read_to_string(format!("/proc/{}/status", c.pid())).unwrap();
    let hwm_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(
        hwm_kb < 128 * 1024,
        "peak RSS {hwm_kb} KiB while streaming {size} bytes"
    );
}

#[tokio::test]
async fn metrics_count_hits_misses_and_origin_requests() {
    let origin = Origin::start(|_| cacheable("m")).await;
    let c = Corral::start(&config(&origin, "")).await;
    c.get("/m1").await;
    c.get("/m1").await;
    c.get("/m1").await;
    c.get("/m2").await;
    assert_eq!(c.metric("corral_requests_total{cache=\"hit\"}").await, 2.0);
    assert_eq!(c.metric("corral_requests_total{cache=\"miss\"}").await, 2.0);
    assert_eq!(c.metric("corral_origin_requests_total").await, 2.0);
    assert_eq!(c.metric("corral_cache_entries").await, 2.0);
    assert!(c.metric("corral_cache_bytes").await > 0.0);
    let text = c.admin_text("/metrics").await;
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        assert!(
            line.starts_with("corral_"),
            "every metric is corral_*: {line}"
        );
    }
}

#[tokio::test]
async fn proxy_hygiene() {
    let origin = Origin::start(|_| {
        Reply::ok("h")
            .header("cache-control", "max-age=60")
            .header("connection", "x-hop")
            .header("x-hop", "1")
    })
    .await;
    let c = Corral::start(&config(&origin, "")).await;
    let r = c
        .get_with(
            "/h",
            &[
                ("x-forwarded-for", "10.0.0.1"),
                ("connection", "x-secret"),
                ("x-secret", "s"),
            ],
        )
        .await;
    assert!(
        r.header("x-hop").is_none(),
        "hop-by-hop named by Connection is removed"
    );
    let seen = origin.last("/h").unwrap();
    assert_eq!(
        seen.headers["x-forwarded-for"], "127.0.0.1",
        "an untrusted client's X-Forwarded-For is replaced, not appended to"
    );
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert!(seen.headers["via"].to_str().unwrap().contains("corral"));
    assert!(seen.headers.get("x-secret").is_none());
    assert_eq!(
        seen.headers["host"],
        c.proxy.to_string(),
        "Host is preserved by default"
    );
}

#[tokio::test]
async fn upstream_failures_say_which() {
    let dead = format!("http://127.0.0.1:{}", free_port("127.0.0.1"));
    let c = Corral::start(&format!("[upstream]\nurl = \"{dead}\"\n")).await;
    let r = c.get("/x").await;
    assert_eq!(r.status, 502);
    assert!(r.text().contains("connect"), "{}", r.text());
    assert!(r.cache_status().contains("detail=connect"));

    let origin = Origin::start(|_| cacheable("late").delay(Duration::from_secs(3))).await;
    let c = Corral::start(&format!(
        "[upstream]\nurl = \"{}\"\nfirst_byte_timeout = \"500ms\"\n",
        origin.url()
    ))
    .await;
    let r = c.get("/slow").await;
    assert_eq!(r.status, 504);
    assert!(r.text().contains("first-byte timeout"), "{}", r.text());
}

#[tokio::test]
async fn oversized_request_heads_are_refused() {
    let origin = Origin::start(|_| cacheable("ok")).await;
    let c = Corral::start(&config(&origin, "")).await;
    let big = "a".repeat(100 * 1024);
    let r = common::client()
        .get(c.url("/x"))
        .header("x-big", big)
        .send()
        .await;
    // A refusal is an error status or a closed connection.
    if let Ok(r) = r {
        assert!(r.status().is_client_error(), "{}", r.status());
    }
    assert_eq!(origin.count("/x"), 0);
}

#[tokio::test]
async fn slowloris_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = Origin::start(|_| cacheable("ok")).await;
    let c = Corral::start(&format!(
        "header_read_timeout = \"1s\"\n{}",
        config(&origin, "")
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(c.proxy).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("the server closes a slow request head");
    // Either an error status or a closed connection.
    let n = n.unwrap_or(0);
    assert!(
        n == 0
            || String::from_utf8_lossy(&buf[..n]).contains("408")
            || String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 4")
    );
}

#[tokio::test]
async fn graceful_drain_finishes_in_flight_requests() {
    let origin = Origin::start(|_| Reply::ok("done").delay(Duration::from_millis(1500))).await;
    let mut c = Corral::start(&format!(
        "shutdown_grace = \"10s\"\n{}",
        config(&origin, "")
    ))
    .await;
    let url = c.url("/slow");
    let inflight =
        tokio::spawn(
            async move { Resp::from(common::client().get(url).send().await.unwrap()).await },
        );
    tokio::time::sleep(Duration::from_millis(300)).await;
    unsafe { libc::kill(c.pid(), libc::SIGTERM) };
    // Readiness turns 503 while draining.
    let mut saw_503 = false;
    for _ in 0..40 {
        match common::client().get(c.admin_url("/readyz")).send().await {
            Ok(r) if r.status() == 503 => {
                saw_503 = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
    assert!(saw_503, "readyz answers 503 while draining");
    let r = inflight.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "done");
    let status = tokio::task::spawn_blocking(move || c.child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "exit 0 after drain, got {status}");
}

#[tokio::test]
async fn no_route_is_404_with_a_clear_body() {
    let c = Corral::start("").await;
    let r = c.get("/anything").await;
    assert_eq!(r.status, 404);
    assert!(r.text().contains("no route"), "{}", r.text());
    assert!(r.cache_status().starts_with("corral"));
}
