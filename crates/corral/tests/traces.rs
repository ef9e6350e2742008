//! OpenTelemetry traces: real corral processes export to an OTLP/HTTP receiver started here,
//! which decodes what it gets; the origin and the peers see the trace in `traceparent`.

mod common;

use std::time::Duration;

use common::*;

#[path = "common/otlp.rs"]
mod otlp;

const SECRET: &str = "traces-test-cluster-secret-0123456789";

fn telemetry(otlp: &otlp::Receiver) -> String {
    format!(
        "[telemetry]\notlp_endpoint = \"{}\"\nexport_interval = \"100ms\"\n",
        otlp.url()
    )
}

fn traceparent(trace: &str, span: &str) -> String {
    format!("00-{trace}-{span}-01")
}

/// The trace id and parent span id the origin saw in `traceparent` on its last request to
/// `path`.
fn origin_saw(origin: &Origin, path: &str) -> (String, String) {
    let seen = origin.last(path).expect("the origin saw the request");
    let tp = seen
        .headers
        .get("traceparent")
        .expect("the origin got a traceparent")
        .to_str()
        .unwrap()
        .to_string();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {tp:?}");
    assert_eq!(parts[0], "00");
    (parts[1].to_string(), parts[2].to_string())
}

/// Waits until the receiver holds spans named `names` in `trace`, and returns the trace.
async fn wait_for(otlp: &otlp::Receiver, trace: &str, names: &[&str]) -> Vec<otlp::Span> {
    let complete = eventually(Duration::from_secs(20), async || {
        let got = otlp.trace(trace);
        names.iter().all(|n| got.iter().any(|s| s.name == *n))
    })
    .await;
    let got = otlp.trace(trace);
    assert!(
        complete,
        "trace {trace}: wanted spans {names:?}, got {:?}",
        got.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    got
}

fn named<'a>(spans: &'a [otlp::Span], name: &str) -> &'a otlp::Span {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no {name} span"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_and_a_hit_export_their_span_trees_and_the_origin_continues_the_trace() {
    let origin = Origin::start(|_| Reply::ok("body").header("cache-control", "max-age=60")).await;
    let redis = Redis::start().await;
    let otlp = otlp::Receiver::start().await;
    let cfg = format!(
        "{}[cache.l2]\nkind = \"redis\"\nurl = \"{}\"\n{}",
        config(&origin, ""),
        redis.url(),
        telemetry(&otlp)
    );
    let c = Corral::start(&cfg).await;
    otlp::prime_l2(&c).await;

    // A miss, in the client's trace.
    let (trace, client_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let r = c
        .get_with("/doc", &[("traceparent", &traceparent(trace, client_span))])
        .await;
    assert!(
        r.cache_status().contains("fwd=miss"),
        "{}",
        r.cache_status()
    );
    let (origin_trace, origin_parent) = origin_saw(&origin, "/doc");
    assert_eq!(
        origin_trace, trace,
        "the origin continues the client's trace"
    );

    let spans = wait_for(
        &otlp,
        trace,
        &["GET", "lookup", "l2", "lease", "fetch", "store"],
    )
    .await;
    let root = named(&spans, "GET");
    assert_eq!(root.kind, 2, "the request span is a server span");
    assert_eq!(
        root.parent.as_deref(),
        Some(client_span),
        "child of the client's span"
    );
    assert_eq!(root.str("http.request.method"), Some("GET"));
    assert_eq!(root.str("url.path"), Some("/doc"));
    assert_eq!(root.int("http.response.status_code"), Some(200));
    assert_eq!(root.str("corral.cache_status"), Some(r.cache_status()));
    assert_eq!(root.bool("corral.cache.hit"), Some(false));
    assert_eq!(root.str("corral.cache.fwd"), Some("miss"));
    assert_eq!(root.bool("corral.cache.stored"), Some(true));
    for phase in ["lookup", "l2", "lease", "fetch", "store"] {
        let s = named(&spans, phase);
        assert_eq!(
            s.parent.as_ref(),
            Some(&root.span_id),
            "{phase} is a child of the request"
        );
        assert_eq!(s.kind, 1, "{phase} is internal");
        assert!(
            s.start >= root.start && s.end >= s.start,
            "{phase}: times in order"
        );
    }
    let fetch = named(&spans, "fetch");
    assert_eq!(
        origin_parent, fetch.span_id,
        "the origin's parent is the fetch span"
    );
    assert!(
        fetch.end <= root.end,
        "the head is answered after the fetch"
    );
    assert_eq!(named(&spans, "store").str("corral.fill"), Some("complete"));

    // A hit, in another trace: the request and its lookup, nothing sent to the origin.
    let before = origin.count("/doc");
    let hit_trace = "0af7651916cd43dd8448eb211c80319c";
    let r = c
        .get_with(
            "/doc",
            &[("traceparent", &traceparent(hit_trace, "b7ad6b7169203331"))],
        )
        .await;
    assert!(r.is_hit(), "{}", r.cache_status());
    let spans = wait_for(&otlp, hit_trace, &["GET", "lookup"]).await;
    assert_eq!(origin.count("/doc"), before);
    let root = named(&spans, "GET");
    assert_eq!(root.bool("corral.cache.hit"), Some(true));
    assert!(root.int("corral.cache.ttl").is_some_and(|t| t > 0));
    assert!(
        !spans
            .iter()
            .any(|s| ["fetch", "store", "l2"].contains(&s.name.as_str())),
        "a hit has no fetch, store or L2 span: {:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_traceparent_starts_a_new_trace_and_a_waiting_request_records_its_wait() {
    let origin = Origin::start(|s| {
        let r = Reply::ok("slow").header("cache-control", "max-age=60");
        if s.uri == "/slow" {
            r.delay(Duration::from_secs(3))
        } else {
            r
        }
    })
    .await;
    let otlp = otlp::Receiver::start().await;
    let c = Corral::start(&format!("{}{}", config(&origin, ""), telemetry(&otlp))).await;

    // Uppercase hex is not a traceparent: ignored, and the request starts its own trace.
    let bad = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01";
    c.get_with("/new", &[("traceparent", bad)]).await;
    let (trace, parent) = origin_saw(&origin, "/new");
    assert_ne!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
    let spans = wait_for(&otlp, &trace, &["GET", "fetch"]).await;
    assert_eq!(
        named(&spans, "GET").parent,
        None,
        "a new trace has a root span"
    );
    assert_eq!(named(&spans, "fetch").span_id, parent);

    // Two requests for one key: the second waits for the first's fetch.
    let lead = "11111111111111111111111111111111";
    let follow = "22222222222222222222222222222222";
    let first = {
        let url = c.url("/slow");
        let tp = traceparent(lead, "1111111111111111");
        tokio::spawn(async move { client().get(url).header("traceparent", tp).send().await })
    };
    assert!(
        eventually(Duration::from_secs(10), async || origin.count("/slow") == 1).await,
        "the leader's fetch reached the origin"
    );
    let r = c
        .get_with(
            "/slow",
            &[("traceparent", &traceparent(follow, "2222222222222222"))],
        )
        .await;
    first.await.unwrap().unwrap();
    assert!(
        r.cache_status().contains("collapsed"),
        "{}",
        r.cache_status()
    );
    assert_eq!(origin.count("/slow"), 1);
    let spans = wait_for(&otlp, follow, &["GET", "lookup", "coalesce"]).await;
    let root = named(&spans, "GET");
    assert_eq!(root.bool("corral.cache.collapsed"), Some(true));
    let wait = named(&spans, "coalesce");
    assert_eq!(wait.parent.as_ref(), Some(&root.span_id));
    assert!(
        !spans.iter().any(|s| s.name == "fetch"),
        "the follower fetched nothing"
    );
    wait_for(&otlp, lead, &["GET", "fetch", "store"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_fans_out_to_peers_in_the_purges_trace() {
    let origin = Origin::start(|_| Reply::ok("x")).await;
    let otlp = otlp::Receiver::start().await;
    let (proxy_port, admin_port) = (replica_port(), replica_port());
    let admin = |i: u8| format!("127.0.0.{i}:{admin_port}");
    let cfg = format!(
        "[upstream]\nurl = \"{}\"\n[cluster]\ndiscovery = {{ kind = \"static\", addresses = [\"{}\", \"{}\"] }}\nheartbeat = \"300ms\"\n{}",
        origin.url(),
        admin(11),
        admin(12),
        telemetry(&otlp)
    );
    let start = |i: u8| {
        let cfg = cfg.clone();
        async move {
            let proxy = format!("127.0.0.{i}:{proxy_port}").parse().unwrap();
            let admin = admin(i).parse().unwrap();
            Corral::start_on(proxy, admin, &cfg, &[("CORRAL_CLUSTER_SECRET", SECRET)]).await
        }
    };
    let a = start(11).await;
    let b = start(12).await;

    let trace = "33333333333333333333333333333333";
    let resp = client()
        .request(
            reqwest::Method::from_bytes(b"PURGE").unwrap(),
            a.url("/page"),
        )
        .header("traceparent", traceparent(trace, "3333333333333333"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let spans = wait_for(&otlp, trace, &["PURGE", "peer.send", "peer.receive"]).await;
    let root = named(&spans, "PURGE");
    let send = named(&spans, "peer.send");
    let recv = named(&spans, "peer.receive");
    assert_eq!(send.kind, 3, "the fan-out is a client span");
    assert_eq!(send.parent.as_ref(), Some(&root.span_id));
    assert_eq!(send.str("server.address"), Some(admin(12).as_str()));
    assert_eq!(recv.kind, 2, "the peer's side is a server span");
    assert_eq!(
        recv.parent.as_ref(),
        Some(&send.span_id),
        "the POST carried traceparent"
    );
    assert_eq!(root.instance, send.instance);
    assert_ne!(
        recv.instance, send.instance,
        "the peer exported its own span"
    );
    assert!(b.metric("corral_peer_events_received_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passed_request_carries_the_trace_to_the_origin() {
    let origin = Origin::start(|_| Reply::ok("done")).await;
    let otlp = otlp::Receiver::start().await;
    let c = Corral::start(&format!("{}{}", config(&origin, ""), telemetry(&otlp))).await;
    let trace = "44444444444444444444444444444444";
    let r = client()
        .post(c.url("/orders"))
        .header("traceparent", traceparent(trace, "4444444444444444"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (origin_trace, origin_parent) = origin_saw(&origin, "/orders");
    assert_eq!(origin_trace, trace);
    let spans = wait_for(&otlp, trace, &["POST"]).await;
    let root = named(&spans, "POST");
    assert_eq!(
        origin_parent, root.span_id,
        "a pass has no fetch span: the request is the parent"
    );
    assert_eq!(
        root.str("corral.cache.fwd"),
        Some("bypass"),
        "{:?}",
        root.attributes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_telemetry_the_clients_traceparent_passes_unchanged() {
    let origin = Origin::start(|_| Reply::ok("x")).await;
    let c = Corral::start(&config(&origin, "")).await;
    let tp = traceparent("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    c.get_with("/off", &[("traceparent", &tp)]).await;
    let seen = origin.last("/off").unwrap();
    assert_eq!(seen.headers.get("traceparent").unwrap(), tp.as_str());
    c.get("/off2").await;
    assert!(origin
        .last("/off2")
        .unwrap()
        .headers
        .get("traceparent")
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_costs_spans_not_requests() {
    let origin = Origin::start(|_| Reply::ok("x").header("cache-control", "max-age=60")).await;
    let closed = free_port("127.0.0.1");
    let cfg = format!(
        "{}[telemetry]\notlp_endpoint = \"http://127.0.0.1:{closed}\"\nexport_interval = \"100ms\"\nexport_timeout = \"1s\"\n",
        config(&origin, "")
    );
    let c = Corral::start(&cfg).await;
    for _ in 0..5 {
        assert_eq!(c.get("/x").await.status, 200);
    }
    let dropped = eventually(Duration::from_secs(20), async || {
        c.metric("corral_telemetry_spans_dropped_total{reason=\"export_failed\"}")
            .await
            >= 5.0
    })
    .await;
    assert!(dropped, "failed exports are counted as dropped spans");
    assert!(c.metric("corral_telemetry_export_failures_total").await >= 1.0);
    assert_eq!(c.metric("corral_telemetry_spans_exported_total").await, 0.0);
}

#[test]
fn bad_telemetry_settings_are_refused_at_start_naming_the_key() {
    let cases = [
        (
            "otlp_endpoint = \"https://otel:4318\"",
            "telemetry.otlp_endpoint",
        ),
        ("otlp_endpoint = \"otel:4318\"", "telemetry.otlp_endpoint"),
        (
            "otlp_endpoint = \"http://otel:4318\"\nsample_ratio = 1.5",
            "telemetry.sample_ratio",
        ),
        (
            "otlp_endpoint = \"http://otel:4318\"\nqueue_size = 0",
            "telemetry.queue_size",
        ),
        (
            "otlp_endpoint = \"http://otel:4318\"\nexport_interval = \"0s\"",
            "telemetry.export_interval",
        ),
        ("otlp_endpont = \"http://otel:4318\"", "otlp_endpont"),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (table, key) in cases {
        let out = check_config(&config_file(dir.path(), &format!("[telemetry]\n{table}\n")));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{table}: {err}");
        assert!(err.contains(key), "{table}: the error names {key}: {err}");
    }
    let ok = "[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318\"\n";
    let out = check_config(&config_file(dir.path(), ok));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
