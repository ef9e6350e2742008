//! Peer discovery sources against servers that speak their real protocols: a fake Kubernetes
//! API server (list/watch, resourceVersion, bookmarks, 410 Gone), a fake Consul agent
//! (blocking queries), and a watched file. The replica under test is the real binary; its
//! `/peers` shows what it discovered.

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::{broadcast, Notify};

const SECRET: &str = "discovery-test-secret-0123456789";

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(v: Value) -> Body {
    BodyExt::boxed(Full::new(Bytes::from(v.to_string())))
}

/// Serves `handler` on a loopback port.
async fn serve<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(http::Request<hyper::body::Incoming>) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = http::Response<Body>> + Send,
{
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let h = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let h = h.clone();
                    async move { Ok::<_, Infallible>(h(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// The peers a replica currently knows, sorted.
async fn peers(c: &Corral) -> Vec<String> {
    let v: Value = c.admin_json("/peers").await;
    let mut out: Vec<String> = v["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["address"].as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

async fn wait_for_peers(c: &Corral, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while Instant::now() < deadline {
        got = peers(c).await;
        if got == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("peers {got:?}, expected {want:?}");
}

async fn observer(discovery: &str) -> Corral {
    let cfg = format!(
        "[cluster]\nadvertise = \"127.0.0.1:1\"\nheartbeat = \"60s\"\ndiscovery = {discovery}\n"
    );
    Corral::start_with_env(&cfg, &[("CORRAL_CLUSTER_SECRET", SECRET)]).await
}

// ---------------------------------------------------------------- Kubernetes

/// A fake API server for EndpointSlices: LIST returns the current state and resourceVersion;
/// WATCH streams JSON-line events from the requested version; versions older than `compacted`
/// get `410 Gone`, as after etcd compaction.
#[derive(Default)]
struct FakeKube {
    state: Mutex<KubeState>,
}

#[derive(Default)]
struct KubeState {
    rv: u64,
    compacted: u64,
    slices: BTreeMap<String, Value>,
    lists: usize,
    watches: usize,
    /// Answer 503 to everything (the API server is unavailable).
    down: bool,
}

fn slice(name: &str, ips: &[(&str, bool)]) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "shop", "labels": {"kubernetes.io/service-name": "corral-headless"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "admin", "port": 9090, "protocol": "TCP"}],
        "endpoints": ips.iter().map(|(ip, ready)| json!({"addresses": [ip], "conditions": {"ready": ready, "serving": ready, "terminating": false}})).collect::<Vec<_>>(),
    })
}

impl FakeKube {
    async fn start(events: broadcast::Sender<Value>) -> (Arc<FakeKube>, SocketAddr) {
        let fake = Arc::new(FakeKube::default());
        let f = fake.clone();
        let addr = serve(move |req: http::Request<hyper::body::Incoming>| {
            let (f, events) = (f.clone(), events.clone());
            async move { f.handle(req, events) }
        })
        .await;
        (fake, addr)
    }

    fn handle(
        &self,
        req: http::Request<hyper::body::Incoming>,
        events: broadcast::Sender<Value>,
    ) -> http::Response<Body> {
        let uri = req.uri().to_string();
        assert!(
            uri.starts_with("/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3Dcorral-headless"),
            "{uri}"
        );
        let q = |k: &str| {
            uri.split(&format!("{k}="))
                .nth(1)
                .map(|v| v.split('&').next().unwrap().to_string())
        };
        let mut st = self.state.lock();
        if st.down {
            let mut r = http::Response::new(full(json!({"kind": "Status", "code": 503})));
            *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            return r;
        }
        if q("watch").as_deref() != Some("true") {
            st.lists += 1;
            let items: Vec<Value> = st.slices.values().cloned().collect();
            return http::Response::new(full(
                json!({"kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1", "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
            ));
        }
        st.watches += 1;
        assert_eq!(q("allowWatchBookmarks").as_deref(), Some("true"));
        let from: u64 = q("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if from < st.compacted {
            let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Expired", "code": 410, "message": "too old resource version"}});
            return http::Response::new(BodyExt::boxed(Full::new(Bytes::from(format!(
                "{gone}\n"
            )))));
        }
        let rx = events.subscribe();
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(Value::Null) | Err(_) => None, // Null: the server ends this watch
                Ok(ev) => Some((
                    Ok::<_, Infallible>(Frame::data(Bytes::from(format!("{ev}\n")))),
                    rx,
                )),
            }
        });
        http::Response::new(BodyExt::boxed(StreamBody::new(stream)))
    }

    /// Applies a change and returns the watch event that announces it.
    fn change(&self, kind: &str, mut obj: Value) -> Value {
        let mut st = self.state.lock();
        st.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        if kind == "DELETED" {
            st.slices.remove(&name);
        } else {
            st.slices.insert(name, obj.clone());
        }
        json!({"type": kind, "object": obj})
    }
}

#[tokio::test]
async fn kubernetes_endpointslices_list_watch_bookmarks_and_410() {
    let (events, _keep) = broadcast::channel::<Value>(64);
    let (fake, api) = FakeKube::start(events.clone()).await;
    fake.change(
        "ADDED",
        slice("corral-abc", &[("10.0.0.1", true), ("10.0.0.2", false)]),
    );
    let c = observer(&format!(
        "{{ kind = \"kubernetes\", namespace = \"shop\", service = \"corral-headless\", port_name = \"admin\", api_server = \"http://{api}\" }}"
    ))
    .await;
    // The initial list, every endpoint whatever its readiness, on the named port.
    wait_for_peers(&c, &["10.0.0.1:9090", "10.0.0.2:9090"]).await;

    // Watch events: a new slice, a modification, a bookmark, a deletion.
    let wait_watch = async || {
        let deadline = Instant::now() + Duration::from_secs(5);
        while events.receiver_count() < 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    wait_watch().await;
    events
        .send(fake.change("ADDED", slice("corral-def", &[("10.0.0.3", true)])))
        .unwrap();
    wait_for_peers(&c, &["10.0.0.1:9090", "10.0.0.2:9090", "10.0.0.3:9090"]).await;
    events
        .send(fake.change("MODIFIED", slice("corral-abc", &[("10.0.0.1", true)])))
        .unwrap();
    wait_for_peers(&c, &["10.0.0.1:9090", "10.0.0.3:9090"]).await;
    let rv = fake.state.lock().rv;
    events.send(json!({"type": "BOOKMARK", "object": {"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1", "metadata": {"resourceVersion": (rv + 5).to_string()}}})).unwrap();
    events
        .send(fake.change("DELETED", slice("corral-def", &[])))
        .unwrap();
    wait_for_peers(&c, &["10.0.0.1:9090"]).await;
    let lists_before = fake.state.lock().lists;

    // The watch ends normally: the source resumes from the last version (no relist).
    events.send(Value::Null).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        fake.state.lock().lists,
        lists_before,
        "a normal end resumes the watch"
    );
    assert!(fake.state.lock().watches >= 2);

    // History compacted while changes happened: the resumed watch gets 410 and the source
    // lists again, picking up the change it never saw as an event.
    {
        let mut st = fake.state.lock();
        st.compacted = st.rv + 100;
    }
    fake.change("ADDED", slice("corral-ghi", &[("10.0.0.4", true)]));
    events.send(Value::Null).unwrap();
    wait_for_peers(&c, &["10.0.0.1:9090", "10.0.0.4:9090"]).await;
    assert!(
        fake.state.lock().lists > lists_before,
        "410 Gone made it list again"
    );
}

#[tokio::test]
async fn kubernetes_api_down_keeps_the_last_peers() {
    let (events, _keep) = broadcast::channel::<Value>(8);
    let (fake, api) = FakeKube::start(events.clone()).await;
    fake.change("ADDED", slice("corral-abc", &[("10.0.0.1", true)]));
    let dead = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    // A replica pointed at a dead API server starts and serves with no peers.
    let c0 = observer(&format!("{{ kind = \"kubernetes\", namespace = \"shop\", service = \"corral-headless\", port = 9090, api_server = \"http://{dead}\" }}")).await;
    assert_eq!(peers(&c0).await, Vec::<String>::new());
    assert_eq!(
        client()
            .get(c0.admin_url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    drop(c0);
    let c = observer(&format!("{{ kind = \"kubernetes\", namespace = \"shop\", service = \"corral-headless\", port = 9090, api_server = \"http://{api}\" }}")).await;
    wait_for_peers(&c, &["10.0.0.1:9090"]).await;
    // The API server's watch breaks and every request fails: the set stays.
    // Wait until the source has tried the dead API server and failed, then look at the set.
    let noticed = c
        .discovery_fails_after(|| {
            fake.state.lock().down = true;
            events.send(Value::Null).unwrap();
        })
        .await;
    assert!(noticed, "the failing API server was never noticed");
    assert_eq!(peers(&c).await, ["10.0.0.1:9090"]);
    // ... and the failure is visible.
    let doc: Value = c.admin_json("/peers").await;
    assert_eq!(doc["discovery"]["kind"], "kubernetes");
    assert!(doc["discovery"]["failures"].as_u64().unwrap() > 0, "{doc}");
    assert!(
        doc["discovery"]["last_error"]
            .as_str()
            .unwrap()
            .contains("503"),
        "{doc}"
    );
    assert!(c.metric("corral_discovery_failures_total").await > 0.0);
}

// ---------------------------------------------------------------- Consul

#[derive(Default)]
struct FakeConsul {
    index: Mutex<(u64, Vec<(String, u16)>)>,
    changed: Notify,
    blocked_queries: Mutex<usize>,
}

impl FakeConsul {
    fn set(&self, index: u64, services: &[(&str, u16)]) {
        *self.index.lock() = (
            index,
            services.iter().map(|(a, p)| (a.to_string(), *p)).collect(),
        );
        self.changed.notify_waiters();
    }

    async fn handle(&self, req: http::Request<hyper::body::Incoming>) -> http::Response<Body> {
        let uri = req.uri().to_string();
        assert!(
            uri.starts_with("/v1/health/service/corral?passing=true"),
            "{uri}"
        );
        let index: u64 = uri
            .split("index=")
            .nth(1)
            .and_then(|v| v.split('&').next()?.parse().ok())
            .unwrap_or(0);
        assert!(uri.contains("wait="), "blocking query: {uri}");
        if index > 0 && self.index.lock().0 == index {
            *self.blocked_queries.lock() += 1;
            let _ = tokio::time::timeout(Duration::from_secs(30), self.changed.notified()).await;
        }
        let (idx, list) = self.index.lock().clone();
        let entries: Vec<Value> = list
            .iter()
            .map(|(a, p)| json!({"Node": {"Node": "n", "Address": "10.9.9.9"}, "Service": {"ID": a, "Service": "corral", "Address": a, "Port": p, "Weights": {"Passing": 1}}, "Checks": []}))
            .collect();
        let mut resp = http::Response::new(full(json!(entries)));
        resp.headers_mut()
            .insert("x-consul-index", idx.to_string().parse().unwrap());
        resp
    }
}

#[tokio::test]
async fn consul_blocking_queries_follow_changes() {
    let fake = Arc::new(FakeConsul::default());
    fake.set(10, &[("10.1.0.1", 9090)]);
    let f = fake.clone();
    let addr = serve(move |req| {
        let f = f.clone();
        async move { f.handle(req).await }
    })
    .await;
    let c = observer(&format!(
        "{{ kind = \"consul\", address = \"http://{addr}\", service = \"corral\" }}"
    ))
    .await;
    wait_for_peers(&c, &["10.1.0.1:9090"]).await;
    // The source is now blocked on index 10; a change wakes it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while *fake.blocked_queries.lock() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        *fake.blocked_queries.lock() > 0,
        "uses blocking queries, not polling"
    );
    fake.set(11, &[("10.1.0.1", 9090), ("10.1.0.2", 9091)]);
    wait_for_peers(&c, &["10.1.0.1:9090", "10.1.0.2:9091"]).await;
    // Consul restarted: the index goes backwards; the source starts over and still follows.
    fake.set(3, &[("10.1.0.2", 9091)]);
    wait_for_peers(&c, &["10.1.0.2:9091"]).await;
}

// ---------------------------------------------------------------- File

#[tokio::test]
async fn file_is_reloaded_and_a_bad_file_keeps_the_last_peers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("peers.json");
    std::fs::write(&path, r#"["10.2.0.1:9090", "10.2.0.2:9090"]"#).unwrap();
    let c = observer(&format!(
        "{{ kind = \"file\", path = \"{}\" }}",
        path.display()
    ))
    .await;
    wait_for_peers(&c, &["10.2.0.1:9090", "10.2.0.2:9090"]).await;
    std::fs::write(
        &path,
        r#"{"addresses": ["10.2.0.2:9090", "10.2.0.3:9090"]}"#,
    )
    .unwrap();
    wait_for_peers(&c, &["10.2.0.2:9090", "10.2.0.3:9090"]).await;
    // Wait until the source has read the bad file and rejected it, then look at the set.
    let rejected = c
        .discovery_fails_after(|| std::fs::write(&path, "not a list").unwrap())
        .await;
    assert!(rejected, "a rejected file counts as a failure");
    assert_eq!(peers(&c).await, ["10.2.0.2:9090", "10.2.0.3:9090"]);
    std::fs::write(&path, "addresses = [\"10.2.0.9:9090\"]").unwrap();
    wait_for_peers(&c, &["10.2.0.9:9090"]).await;
}
