//! The subscribe feed's resumption contract (docs/feed.md), with real `corral` processes:
//! `Last-Event-ID` replays exactly what was missed, an id the window no longer covers gets
//! `event: gap`, filters narrow the stream, and who may subscribe.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// A reader of one SSE response, block by block: `(event, id, data)`; a comment-only block
/// (keep-alive) has an empty event.
struct Sse {
    resp: reqwest::Response,
    buf: String,
}

impl Sse {
    async fn open(c: &Corral, query: &str, last_event_id: Option<&str>) -> Sse {
        let mut r = client().get(c.admin_url(&format!("/_corral/v1/subscribe{query}")));
        if let Some(id) = last_event_id {
            r = r.header("last-event-id", id);
        }
        let resp = r.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        Sse {
            resp,
            buf: String::new(),
        }
    }

    /// The next block, within 10 s.
    async fn block(&mut self) -> (String, Option<String>, Value) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let text: String = self.buf.drain(..end + 2).collect();
                let (mut event, mut id, mut data) = (String::new(), None, String::new());
                for l in text.lines() {
                    if let Some(v) = l.strip_prefix("event: ") {
                        event = v.to_string();
                    } else if let Some(v) = l.strip_prefix("id: ") {
                        id = Some(v.to_string());
                    } else if let Some(v) = l.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                return (
                    event,
                    id,
                    serde_json::from_str(&data).unwrap_or(Value::Null),
                );
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, self.resp.chunk())
                .await
                .expect("a block within 10 s")
                .unwrap()
                .expect("the stream stays open");
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// The next block that carries a position: an event, or the keep-alive that moves the
    /// position past events the filter left out. Id-less keep-alives are skipped.
    async fn positioned(&mut self) -> (String, String, Value) {
        loop {
            if let (event, Some(id), data) = self.block().await {
                return (event, id, data);
            }
        }
    }

    /// The next block that is an event (keep-alives skipped).
    async fn event(&mut self) -> (String, Option<String>, Value) {
        loop {
            let b = self.block().await;
            if !b.0.is_empty() {
                return b;
            }
        }
    }
}

fn tags_of(v: &Value) -> Vec<String> {
    v["selectors"]["tags"]
        .as_array()
        .map(|a| a.iter().map(|t| t.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_reconnect_with_last_event_id_gets_exactly_the_missed_events() {
    let origin = Origin::start(|_| Reply::ok("x")).await;
    let c = Corral::start(&config(&origin, "")).await;
    let mut s = Sse::open(&c, "", None).await;
    let (event, hello_id, hello) = s.event().await;
    assert_eq!(event, "hello");
    assert_eq!(hello["resumed"], json!(false));
    assert!(
        hello_id.is_some(),
        "a fresh stream's hello carries the position"
    );
    purge(&c, json!({"tags": ["seen"]})).await;
    let (event, seen_id, data) = s.event().await;
    assert_eq!(
        (event.as_str(), tags_of(&data)),
        ("invalidation", vec!["seen".to_string()])
    );
    drop(s); // the connection drops; two purges happen while away
    purge(&c, json!({"tags": ["missed-1"]})).await;
    purge(&c, json!({"tags": ["missed-2"]})).await;
    let mut s = Sse::open(&c, "", seen_id.as_deref()).await;
    let (event, _, hello) = s.event().await;
    assert_eq!((event.as_str(), &hello["resumed"]), ("hello", &json!(true)));
    purge(&c, json!({"tags": ["live"]})).await;
    let mut got = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (event, id, data) = s.event().await;
        assert_eq!(event, "invalidation");
        got.extend(tags_of(&data));
        ids.push(id.unwrap());
    }
    assert_eq!(
        got,
        ["missed-1", "missed-2", "live"],
        "each missed event once, in order"
    );
    ids.dedup();
    assert_eq!(ids.len(), 3, "distinct ids");
}

#[tokio::test]
async fn an_id_the_window_no_longer_covers_gets_a_gap_then_the_live_feed() {
    let origin = Origin::start(|_| Reply::ok("x")).await;
    let c = Corral::start(&format!(
        "[admin]\nfeed_replay = 2\n{}",
        config(&origin, "")
    ))
    .await;
    let mut s = Sse::open(&c, "", None).await;
    let (_, start, _) = s.event().await;
    drop(s);
    for i in 0..3 {
        purge(&c, json!({"tags": [format!("t{i}")]})).await;
    }
    let mut s = Sse::open(&c, "", start.as_deref()).await;
    let (event, hello_id, hello) = s.event().await;
    assert_eq!(
        (event.as_str(), hello_id),
        ("hello", None),
        "no position before the gap"
    );
    assert_eq!(hello["resumed"], json!(false));
    let (event, gap_id, gap) = s.event().await;
    assert_eq!(event, "gap");
    assert_eq!(gap["reason"], json!("too_old"));
    assert_eq!(gap["last_event_id"], json!(start.unwrap()));
    purge(&c, json!({"tags": ["after"]})).await;
    let (event, _, data) = s.event().await;
    assert_eq!(
        (event.as_str(), tags_of(&data)),
        ("invalidation", vec!["after".to_string()])
    );
    drop(s);
    // The gap's id is a position: resuming from it replays what came after.
    let mut s = Sse::open(&c, "", gap_id.as_deref()).await;
    assert_eq!(s.event().await.2["resumed"], json!(true));
    assert_eq!(tags_of(&s.event().await.2), ["after"]);
    // Ids of another process (a restarted replica) or of no process are gaps too.
    for (id, reason) in [
        ("1234abcd:1", "other_instance"),
        ("not-an-id", "unknown_id"),
    ] {
        let mut s = Sse::open(&c, "", Some(id)).await;
        s.event().await;
        let (event, _, gap) = s.event().await;
        assert_eq!(
            (event.as_str(), &gap["reason"]),
            ("gap", &json!(reason)),
            "{id}"
        );
        assert!(c.metric("corral_feed_subscribers").await >= 1.0);
    }
    for reason in ["too_old", "other_instance", "unknown_id"] {
        let m = format!("corral_feed_gaps_total{{reason=\"{reason}\"}}");
        assert_eq!(c.metric(&m).await, 1.0, "{m}");
    }
    assert_eq!(c.metric("corral_feed_resumed_total").await, 1.0);
}

#[tokio::test]
async fn filters_narrow_the_feed_and_keepalives_carry_the_position() {
    let origin = Origin::start(|_| Reply::ok("x")).await;
    let cfg = format!(
        "[admin]\nfeed_replay = 3\nfeed_keepalive = \"200ms\"\n{}",
        config(&origin, "")
    );
    let c = Corral::start(&cfg).await;
    let mut s = Sse::open(&c, "?tag=price-*&prefix=/packages/", None).await;
    assert_eq!(s.event().await.0, "hello");
    // One purge at a time, each waited for: the window holds three, and a subscriber the
    // purges outran would (rightly) get a gap instead of what this test reads. Every purge
    // moves the position once, as the event it is or as a keep-alive's id if filtered out.
    let mut got = Vec::new();
    let mut position = String::new();
    for (body, wanted) in [
        (json!({"tags": ["stock-1"]}), false),
        (json!({"tags": ["price-1"]}), true),
        (json!({"urls": ["/users/1"]}), false),
        (json!({"urls": ["/packages/1?currency=eur"]}), true),
        (json!({"prefixes": ["/"]}), true),
        (json!({"all": true}), true),
    ] {
        purge(&c, body.clone()).await;
        let (event, id, data) = s.positioned().await;
        let kind = if wanted { "invalidation" } else { "" };
        assert_eq!(event, kind, "{body}: event or keep-alive");
        assert_ne!(id, position, "{body} moved the position");
        position = id;
        if wanted {
            got.push(data["selectors"].clone());
        }
    }
    assert_eq!(
        got,
        [
            json!({"tags": ["price-1"]}),
            json!({"urls": ["/packages/1?currency=eur"]}),
            json!({"prefixes": ["/"]}),
            json!({"all": true}),
        ]
    );
    // Four events nobody here wants, more than the window holds: the keep-alive moves the
    // subscriber's position past them, so a reconnect resumes instead of getting a gap.
    for i in 0..4 {
        purge(&c, json!({"tags": [format!("stock-{i}")]})).await;
        let (event, id, _) = s.positioned().await;
        assert_eq!(event, "", "stock-{i} is filtered out");
        position = id;
    }
    drop(s);
    let mut s = Sse::open(&c, "?tag=price-*", Some(&position)).await;
    assert_eq!(s.event().await.2["resumed"], json!(true));
    purge(&c, json!({"tags": ["price-2"]})).await;
    assert_eq!(tags_of(&s.event().await.2), ["price-2"]);
    // A malformed filter is refused with its name.
    for (q, says) in [
        ("?tag=a*b", "may only end"),
        ("?prefix=x", "starting with /"),
        ("?key=1", "unknown parameter"),
    ] {
        let r = client()
            .get(c.admin_url(&format!("/_corral/v1/subscribe{q}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{q}");
        assert!(r.text().await.unwrap().contains(says), "{q}");
    }
}

#[tokio::test]
async fn with_a_token_loopback_may_omit_it_but_a_wrong_one_is_refused() {
    let origin = Origin::start(|_| Reply::ok("x")).await;
    let c = Corral::start_with_env(
        &config(&origin, ""),
        &[("CORRAL_ADMIN_TOKEN", "feed-token-1")],
    )
    .await;
    let url = c.admin_url("/_corral/v1/subscribe");
    let wrong = client().get(&url).bearer_auth("nope").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.text().await.unwrap().contains("bearer token"));
    let right = client()
        .get(&url)
        .bearer_auth("feed-token-1")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    let none = client().get(&url).send().await.unwrap();
    assert_eq!(none.status(), 200, "the co-located app on loopback");
}

#[test]
fn bad_feed_settings_are_refused_with_their_names() {
    let dir = tempfile::tempdir().unwrap();
    for (line, key) in [
        ("feed_replay = 0", "admin.feed_replay"),
        ("feed_keepalive = \"10ms\"", "admin.feed_keepalive"),
        ("feed_keepalive = \"soon\"", "admin.feed_keepalive"),
    ] {
        let out = check_config(&config_file(dir.path(), &format!("[admin]\n{line}\n")));
        let text = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(2), "{line}: {text}");
        assert!(text.contains(key), "{line}: {text}");
    }
}
