//! The edges of HTTP caching semantics, end to end against a real `corral`: targeted cache
//! control (RFC 9213), partial content, language variants, conditionals answered from the
//! store, lenient dates and malformed `Age`. Origin request counts are asserted, so a test
//! that passes proves where the answer came from.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::*;
use corral_origin::{body_bytes, OriginConfig, OriginStats};

/// The bundled origin (`/ranged/{n}`, `/lang` ...) in-process, counting requests per route.
async fn bundled_origin() -> (SocketAddr, Arc<OriginStats>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(OriginStats::default());
    let s = stats.clone();
    tokio::spawn(async move {
        corral_origin::serve_with_stats(
            listener,
            OriginConfig::default(),
            s,
            std::future::pending(),
        )
        .await
    });
    (addr, stats)
}

fn bundled_config(addr: SocketAddr, cache: &str) -> String {
    format!("[upstream]\nurl = \"http://{addr}\"\n[cache]\n{cache}\n")
}

/// The `ttl` of a `Cache-Status`.
fn ttl(cache_status: &str) -> i64 {
    cache_status
        .split(';')
        .find_map(|p| p.trim().strip_prefix("ttl=")?.parse().ok())
        .unwrap_or(i64::MIN)
}

/// The same instant in the three HTTP-date forms: IMF-fixdate, RFC 850, asctime.
fn date_forms(t: std::time::SystemTime) -> [String; 3] {
    let imf = httpdate::fmt_http_date(t);
    let p: Vec<&str> = imf.split(' ').collect(); // ["Tue,", "14", "Nov", "2023", "22:13:20", "GMT"]
    let day = &p[0][..3];
    let long = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ]
    .into_iter()
    .find(|d| d.starts_with(day))
    .unwrap();
    let rfc850 = format!("{long}, {}-{}-{} {} GMT", p[1], p[2], &p[3][2..], p[4]);
    let asctime = format!(
        "{day} {} {:>2} {} {}",
        p[2],
        p[1].trim_start_matches('0'),
        p[4],
        p[3]
    );
    [imf, rfc850, asctime]
}

/// Browsers are told not to store it; Corral is told to keep it ten minutes.
fn targeted_origin() -> impl Fn(&Seen) -> Reply + Send + Sync + 'static {
    |_: &Seen| {
        Reply::ok("targeted")
            .header("cache-control", "no-store")
            .header("corral-cache-control", "max-age=600")
            .header("cdn-cache-control", "max-age=300")
    }
}

#[tokio::test]
async fn corrals_targeted_field_decides_and_stays_with_corral() {
    let origin = Origin::start(targeted_origin()).await;
    let c = Corral::start(&config(&origin, "")).await;
    let first = c.get("/t").await;
    assert_eq!(first.text(), "targeted");
    let cs = first.cache_status();
    assert!(cs.contains("stored") && ttl(cs) >= 590, "{cs}");
    assert!(cs.contains("targeted=corral-cache-control"), "{cs}");
    assert_eq!(
        first.header("corral-cache-control"),
        None,
        "Corral's own field is not forwarded"
    );
    assert_eq!(
        first.header("cdn-cache-control"),
        Some("max-age=300"),
        "forwarded for CDNs in front"
    );
    assert_eq!(
        first.header("cache-control"),
        Some("no-store"),
        "the browser's instructions are untouched"
    );

    let second = c.get("/t").await;
    assert!(
        second.is_hit(),
        "Cache-Control: no-store was replaced: {}",
        second.cache_status()
    );
    assert!(second
        .cache_status()
        .contains("targeted=corral-cache-control"));
    assert_eq!(
        second.header("corral-cache-control"),
        None,
        "not replayed either"
    );
    assert_eq!(second.header("cdn-cache-control"), Some("max-age=300"));
    assert_eq!(origin.count("/t"), 1);
}

#[tokio::test]
async fn targeted_fields_follow_the_configured_order_and_can_be_exposed() {
    let origin = Origin::start(targeted_origin()).await;
    let cache = "targeted_fields = [\"CDN-Cache-Control\", \"Corral-Cache-Control\"]\nexpose_targeted_fields = true";
    let c = Corral::start(&config(&origin, cache)).await;
    let r = c.get("/t").await;
    let cs = r.cache_status();
    assert!(
        (290..=300).contains(&ttl(cs)) && cs.contains("targeted=cdn-cache-control"),
        "{cs}"
    );
    assert_eq!(
        r.header("corral-cache-control"),
        Some("max-age=600"),
        "exposed"
    );
    assert!(c.get("/t").await.is_hit());
    assert_eq!(origin.count("/t"), 1);
}

#[tokio::test]
async fn an_invalid_targeted_field_is_ignored_as_a_whole() {
    let origin = Origin::start(|s: &Seen| {
        let targeted = if s.uri.starts_with("/bad") {
            "max-age=600,"
        } else {
            "no-store"
        };
        Reply::ok("x")
            .header("cache-control", "max-age=600")
            .header("corral-cache-control", targeted)
    })
    .await;
    let c = Corral::start(&config(&origin, "")).await;
    // An invalid dictionary: Cache-Control decides (max-age=600), no targeted= in Cache-Status.
    let r = c.get("/bad").await;
    assert!(
        !r.cache_status().contains("targeted="),
        "{}",
        r.cache_status()
    );
    assert!(c.get("/bad").await.is_hit());
    assert_eq!(
        r.header("corral-cache-control"),
        None,
        "still Corral's: not forwarded"
    );
    // A valid targeted no-store wins over Cache-Control's max-age.
    let r = c.get("/nostore").await;
    assert!(
        r.cache_status().contains("detail=no-store"),
        "{}",
        r.cache_status()
    );
    assert!(!c.get("/nostore").await.is_hit());
    assert_eq!(origin.count("/bad"), 1);
    assert_eq!(origin.count("/nostore"), 2);
}

#[tokio::test]
async fn partial_content_is_stored_answered_and_completed() {
    let (addr, stats) = bundled_origin().await;
    let c = Corral::start(&bundled_config(addr, "")).await;
    let whole = body_bytes(1000);

    let first = c
        .get_with("/ranged/1000", &[("range", "bytes=0-499")])
        .await;
    assert_eq!(first.status, 206);
    assert_eq!(first.header("content-range"), Some("bytes 0-499/1000"));
    assert_eq!(first.body, whole.slice(0..500));
    assert!(
        first.cache_status().contains("stored"),
        "{}",
        first.cache_status()
    );

    // Ranges within the stored part come from it: single, and the stored part replayed.
    let inner = c
        .get_with("/ranged/1000", &[("range", "bytes=100-199")])
        .await;
    assert_eq!(
        (inner.status, inner.is_hit()),
        (206, true),
        "{}",
        inner.cache_status()
    );
    assert_eq!(inner.header("content-range"), Some("bytes 100-199/1000"));
    assert_eq!(inner.body, whole.slice(100..200));
    let again = c
        .get_with("/ranged/1000", &[("range", "bytes=0-499")])
        .await;
    assert!(again.is_hit());
    assert_eq!(
        again.header("content-range"),
        Some("bytes 0-499/1000"),
        "stored exactly"
    );
    assert_eq!(again.header("etag"), first.header("etag"));
    assert_eq!(stats.get("ranged"), 1);

    // A suffix beyond the part: Corral asks only for the rest, validated by If-Range.
    let tail = c.get_with("/ranged/1000", &[("range", "bytes=-10")]).await;
    assert_eq!(tail.status, 206, "{}", tail.cache_status());
    assert_eq!(tail.header("content-range"), Some("bytes 990-999/1000"));
    assert_eq!(tail.body, whole.slice(990..1000));
    assert!(
        tail.cache_status().contains("fwd=partial"),
        "{}",
        tail.cache_status()
    );
    assert_eq!(stats.get("ranged"), 2);

    // Now whole: every request, ranged or not, is a hit.
    let all = c.get("/ranged/1000").await;
    assert_eq!(
        (all.status, all.is_hit()),
        (200, true),
        "{}",
        all.cache_status()
    );
    assert_eq!(all.body, whole);
    assert_eq!(all.header("content-range"), None);
    let open = c.get_with("/ranged/1000", &[("range", "bytes=950-")]).await;
    assert_eq!((open.status, open.is_hit()), (206, true));
    assert_eq!(open.body, whole.slice(950..1000));
    assert_eq!(stats.get("ranged"), 2);
}

#[tokio::test]
async fn a_whole_request_completes_a_stored_prefix() {
    let (addr, stats) = bundled_origin().await;
    let c = Corral::start(&bundled_config(addr, "")).await;
    let whole = body_bytes(2000);
    let first = c
        .get_with("/ranged/2000", &[("range", "bytes=0-999")])
        .await;
    assert_eq!(first.status, 206);
    let all = c.get("/ranged/2000").await;
    assert_eq!(all.status, 200, "{}", all.cache_status());
    assert_eq!(all.body, whole);
    assert!(
        all.cache_status().contains("fwd=partial"),
        "{}",
        all.cache_status()
    );
    assert!(c.get("/ranged/2000").await.is_hit());
    assert_eq!(stats.get("ranged"), 2);
}

#[tokio::test]
async fn parts_are_bounded_by_max_object_size_and_multipart_passes() {
    let (addr, stats) = bundled_origin().await;
    let c = Corral::start(&bundled_config(addr, "max_object_size = \"1KiB\"")).await;
    let whole = body_bytes(5000);
    let part = c
        .get_with("/ranged/5000", &[("range", "bytes=0-499")])
        .await;
    assert_eq!(part.status, 206);
    // The rest would exceed the bound: the client still gets the whole, nothing is stored.
    let all = c.get("/ranged/5000").await;
    assert_eq!((all.status, all.body.len()), (200, 5000));
    assert_eq!(all.body, whole);
    let all = c.get("/ranged/5000").await;
    assert!(!all.is_hit(), "{}", all.cache_status());
    // Several ranges pass through to the origin (which answers the whole here).
    let before = stats.get("ranged");
    let multi = c
        .get_with("/ranged/100", &[("range", "bytes=0-1,5-6")])
        .await;
    assert_eq!(multi.status, 200);
    assert!(
        multi.cache_status().contains("fwd=bypass"),
        "{}",
        multi.cache_status()
    );
    assert_eq!(stats.get("ranged"), before + 1);
}

#[tokio::test]
async fn language_variants_are_shared_by_equivalent_and_selecting_preferences() {
    let (addr, stats) = bundled_origin().await;
    let c = Corral::start(&bundled_config(addr, "")).await;
    let get = async |al: &str| c.get_with("/lang", &[("accept-language", al)]).await;

    let fr = get("fr-CH, fr;q=0.9, en;q=0.5").await;
    assert_eq!(fr.text(), "bonjour\n");
    assert_eq!(fr.header("content-language"), Some("fr"));
    assert!(!fr.is_hit());
    // The same preferences spelled differently: one variant.
    let same = get("FR-ch,en;q=0.50 , fr;q=0.90").await;
    assert!(same.is_hit(), "{}", same.cache_status());
    assert_eq!(same.text(), "bonjour\n");
    assert_eq!(stats.get("lang"), 1);

    // Different preferences whose first choice selects the stored Content-Language.
    let plain = get("fr").await;
    assert!(plain.is_hit(), "{}", plain.cache_status());
    assert_eq!(plain.text(), "bonjour\n");
    assert_eq!(stats.get("lang"), 1);

    // Another first choice is another variant.
    let de = get("de, fr;q=0.9").await;
    assert_eq!((de.text().as_str(), de.is_hit()), ("hallo\n", false));
    let en = get("en-GB, fr;q=0.5").await;
    assert_eq!((en.text().as_str(), en.is_hit()), ("hello\n", false));
    assert_eq!(stats.get("lang"), 3);
    assert!(get("de").await.is_hit());
    assert!(get("en-gb,fr;q=0.5").await.is_hit());
    assert_eq!(stats.get("lang"), 3);
}

#[tokio::test]
async fn if_modified_since_is_answered_from_the_store_against_date() {
    let now = std::time::SystemTime::now();
    let [imf, rfc850, asctime] = date_forms(now);
    let date = imf.clone();
    let origin = Origin::start(move |_: &Seen| {
        // No Last-Modified and no ETag: the stored Date is what If-Modified-Since is compared with.
        Reply::ok("dated")
            .header("cache-control", "max-age=600")
            .header("date", &date)
    })
    .await;
    let c = Corral::start(&config(&origin, "")).await;
    assert_eq!(c.get("/d").await.status, 200);
    let earlier = httpdate::fmt_http_date(now - std::time::Duration::from_secs(1));
    let lower = imf.to_ascii_lowercase();
    for (since, status) in [
        (imf.as_str(), 304),
        (rfc850.as_str(), 304),
        (asctime.as_str(), 304),
        (lower.as_str(), 304),   // case-insensitive
        (earlier.as_str(), 200), // a second earlier: modified since
        ("garbage", 200),        // not a date: ignored
    ] {
        let r = c.get_with("/d", &[("if-modified-since", since)]).await;
        assert_eq!(r.status, status, "If-Modified-Since: {since}");
        assert!(
            r.cache_status().contains("hit"),
            "{since}: {}",
            r.cache_status()
        );
    }
    assert_eq!(origin.count("/d"), 1);
}

#[tokio::test]
async fn a_malformed_age_makes_the_response_stale() {
    let origin = Origin::start(|s: &Seen| {
        let age = if s.uri.starts_with("/list") {
            "10, 20"
        } else {
            "10s"
        };
        Reply::ok("aged")
            .header("cache-control", "max-age=600")
            .header("age", age)
    })
    .await;
    let c = Corral::start(&config(&origin, "")).await;
    for path in ["/list", "/suffix"] {
        c.get(path).await;
        let r = c.get(path).await;
        assert!(!r.is_hit(), "{path}: {}", r.cache_status());
        assert!(
            r.cache_status().contains("fwd=stale"),
            "{path}: {}",
            r.cache_status()
        );
        assert_eq!(origin.count(path), 2, "{path}");
    }
}

#[tokio::test]
async fn expires_in_obsolete_forms_is_honoured_and_invalid_is_expired() {
    let [_, rfc850, asctime] =
        date_forms(std::time::SystemTime::now() + std::time::Duration::from_secs(3600));
    let origin = Origin::start(move |s: &Seen| {
        let expires = match s.uri.as_str() {
            "/asctime" => asctime.clone(),
            "/rfc850" => rfc850.clone(),
            _ => "next tuesday".to_string(),
        };
        Reply::ok("e").header("expires", &expires)
    })
    .await;
    let c = Corral::start(&config(&origin, "")).await;
    for path in ["/asctime", "/rfc850", "/invalid"] {
        c.get(path).await;
        let r = c.get(path).await;
        assert_eq!(
            r.is_hit(),
            path != "/invalid",
            "{path}: {}",
            r.cache_status()
        );
    }
    assert_eq!(origin.count("/asctime") + origin.count("/rfc850"), 2);
    assert_eq!(origin.count("/invalid"), 2);
}

#[tokio::test]
async fn a_post_response_for_its_own_target_answers_later_gets() {
    let origin = Origin::start(|s: &Seen| {
        if s.method != "POST" {
            return Reply::ok("from a GET").header("cache-control", "max-age=60");
        }
        let reply = Reply::ok("the new cart").header("content-type", "text/plain");
        match s.uri.as_str() {
            "/cart?id=1" => reply
                .header("content-location", "/cart?id=1")
                .header("cache-control", "max-age=60"),
            "/elsewhere" => reply
                .header("content-location", "/orders/7")
                .header("cache-control", "max-age=60"),
            _ => reply.header("content-location", "/unfresh"), // no explicit freshness
        }
    })
    .await;
    let c = Corral::start(&config(&origin, "")).await;
    let post = |path: &str| {
        client()
            .post(c.url(path))
            .header("content-type", "application/json")
            .body("{\"add\": 1}")
            .send()
    };
    let r = Resp::from(post("/cart?id=1").await.unwrap()).await;
    assert_eq!(r.text(), "the new cart");
    assert!(r.cache_status().contains("stored"), "{}", r.cache_status());
    let get = c.get("/cart?id=1").await;
    assert!(get.is_hit(), "{}", get.cache_status());
    assert_eq!(get.text(), "the new cart");
    assert_eq!(origin.count("/cart"), 1, "only the POST reached the origin");

    for path in ["/elsewhere", "/unfresh"] {
        Resp::from(post(path).await.unwrap()).await;
        let get = c.get(path).await;
        assert_eq!(get.text(), "from a GET", "{path}");
        assert_eq!(origin.count(path), 2, "{path}");
    }
}

/// A raw-socket origin that answers every request with `103 Early Hints` and then a final,
/// cacheable `200` (hyper's server cannot send an interim response, so this one is written
/// by hand). Counts the requests it read.
async fn early_hints_origin() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(n) = s.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                    while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        head.drain(..end + 4);
                        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let answer = "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n\
                            HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 5\r\n\r\nfinal";
                        if s.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, count)
}

#[tokio::test]
async fn interim_responses_are_never_stored_and_the_final_one_is() {
    let (addr, count) = early_hints_origin().await;
    let c = Corral::start(&bundled_config(addr, "")).await;
    let first = c.get("/hinted").await;
    assert_eq!((first.status, first.text().as_str()), (200, "final"));
    assert!(
        first.cache_status().contains("stored"),
        "{}",
        first.cache_status()
    );
    let second = c.get("/hinted").await;
    assert!(second.is_hit(), "{}", second.cache_status());
    assert_eq!((second.status, second.text().as_str()), (200, "final"));
    assert_eq!(
        second.header("link"),
        None,
        "the 103's fields are not part of the stored 200"
    );
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = Origin::start(|s: &Seen| Reply::ok(format!("got {} bytes", s.body_len))).await;
    let c = Corral::start(&config(&origin, "")).await;
    let mut s = tokio::net::TcpStream::connect(c.proxy).await.unwrap();
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    // Nothing of the body is sent until the interim response arrives.
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let interim = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before 100 Continue");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(interim.is_ok(), "no interim response");
    assert!(
        got.starts_with(b"HTTP/1.1 100 Continue\r\n"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    s.write_all(b"hello").await.unwrap();
    let mut rest = Vec::new();
    while !String::from_utf8_lossy(&rest).contains("got 5 bytes") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&rest));
        rest.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&rest).contains("HTTP/1.1 200"));
    assert_eq!(origin.count("/upload"), 1);
}
