//! The live dashboard, end to end: a real headless Chromium (Debian's `chromium`; scripts/test.sh
//! installs it) driven over the DevTools protocol loads `/ui` from a cluster of three real
//! replicas, takes the admin token the page asks for, purges a tag through the page's own form
//! and reads from the page's DOM that the purge appeared, acknowledged by every peer. A
//! screenshot is saved as `target/tmp/ui-screenshot.png`.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "ui-test-cluster-secret-0123456789";
const TOKEN: &str = "ui-test-admin-token";

fn tagged(s: &Seen) -> Reply {
    let id = s.uri.rsplit('/').next().unwrap_or("").to_string();
    Reply::ok(format!("item {id}"))
        .header("cache-control", "max-age=300")
        .header("surrogate-key", &format!("item-{id} items"))
}

/// Three replicas on 127.0.0.11..13, one admin port, every one with the admin token.
async fn cluster(origin: &Origin, n: usize) -> (Vec<Corral>, u16) {
    let (proxy_port, admin_port) = (replica_port(), replica_port());
    let mut nodes = Vec::new();
    for i in 0..n {
        nodes.push(replica(origin, i, n, proxy_port, admin_port).await);
    }
    (nodes, admin_port)
}

/// Replica `i` of `n` (peers found through a static list of all `n`).
async fn replica(origin: &Origin, i: usize, n: usize, proxy_port: u16, admin_port: u16) -> Corral {
    let ip = |i: usize| format!("127.0.0.{}", 11 + i);
    let peers: Vec<String> = (0..n)
        .map(|i| format!("\"{}:{admin_port}\"", ip(i)))
        .collect();
    let config = format!(
        "[upstream]\nurl = \"{}\"\n[cluster]\ndiscovery = {{ kind = \"static\", addresses = [{}] }}\nheartbeat = \"300ms\"\n",
        origin.url(),
        peers.join(", ")
    );
    let addr = |port: u16| -> SocketAddr { format!("{}:{port}", ip(i)).parse().unwrap() };
    Corral::start_on(
        addr(proxy_port),
        addr(admin_port),
        &config,
        &[
            ("CORRAL_CLUSTER_SECRET", SECRET),
            ("CORRAL_ADMIN_TOKEN", TOKEN),
        ],
    )
    .await
}

/// A headless Chromium and one page of it, driven over the DevTools protocol.
struct Browser {
    child: Child,
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    session: String,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn launch() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(profile.path().join("chromium.log")).unwrap();
        let child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
                "--remote-debugging-address=127.0.0.1",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("chromium is installed (scripts/test.sh installs it)");
        // Chromium writes its DevTools port and browser path here once it listens.
        let active = profile.path().join("DevToolsActivePort");
        let mut endpoint = None;
        let found = eventually(Duration::from_secs(60), async || {
            endpoint = std::fs::read_to_string(&active).ok().and_then(|t| {
                let mut lines = t.lines();
                Some((lines.next()?.to_string(), lines.next()?.to_string()))
            });
            endpoint.is_some()
        })
        .await;
        assert!(found, "chromium did not open its DevTools port");
        let (port, path) = endpoint.unwrap();
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}{path}"))
            .await
            .expect("DevTools websocket");
        let mut b = Browser {
            child,
            ws,
            session: String::new(),
            next_id: 0,
            _profile: profile,
        };
        let target = b
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let attached = b
            .call(
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        b.session = attached["sessionId"].as_str().unwrap().to_string();
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1280, "height": 1200, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
        b
    }

    /// Sends one command (to the page once attached) and returns its result; panics on an error.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        let answer = self.send(method, params).await;
        assert!(answer["error"].is_null(), "{method}: {}", answer["error"]);
        answer["result"].clone()
    }

    /// Sends one command and waits for its answer (result or error), skipping events.
    async fn send(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .await
            .expect("DevTools send");
        let answer = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(m) = self.ws.next().await {
                let Ok(Message::Text(t)) = m else { continue };
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["id"] == json!(id) {
                    return v;
                }
            }
            panic!("DevTools connection closed");
        })
        .await
        .unwrap_or_else(|_| panic!("{method}: no answer from chromium within 30 s"));
        answer
    }

    /// Evaluates `js` in the page and returns its value.
    async fn eval(&mut self, js: &str) -> Value {
        self.try_eval(js)
            .await
            .unwrap_or_else(|e| panic!("{js}: {e}"))
    }

    /// Evaluates `js` in the page: its value, or what went wrong (no page yet while it
    /// navigates, an exception).
    async fn try_eval(&mut self, js: &str) -> Result<Value, String> {
        let params = json!({"expression": js, "returnByValue": true, "awaitPromise": true});
        let answer = self.send("Runtime.evaluate", params).await;
        let r = &answer["result"];
        if !answer["error"].is_null() || !r["exceptionDetails"].is_null() {
            return Err(format!("{} {}", answer["error"], r["exceptionDetails"]));
        }
        Ok(r["result"]["value"].clone())
    }

    /// Waits until `js` evaluates to true in the page (a page still loading counts as not yet).
    async fn until(&mut self, within: Duration, js: &str, what: &str) {
        let ok = eventually(within, async || {
            self.try_eval(js).await.is_ok_and(|v| v == json!(true))
        })
        .await;
        let page = self.eval("document.body.innerText").await;
        assert!(ok, "{what}: `{js}` never held; the page shows:\n{page}");
    }

    async fn screenshot(&mut self, path: &std::path::Path) {
        let shot = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn the_dashboard_shows_a_purge_the_page_made_acknowledged_by_every_peer() {
    let origin = Origin::start(tagged).await;
    let (nodes, admin_port) = cluster(&origin, 3).await;
    let mut b = Browser::launch().await;
    let ui = format!("http://127.0.0.11:{admin_port}/ui");
    b.call("Page.navigate", json!({"url": ui})).await;
    // The replica has a token: the page asks for it before it shows anything.
    b.until(
        Duration::from_secs(30),
        "document.getElementById('auth') && !document.getElementById('auth').hidden",
        "the page asks for the admin token",
    )
    .await;
    assert_eq!(
        b.eval("document.getElementById('peer-rows').children.length")
            .await,
        json!(0)
    );
    b.eval(&format!(
        "document.getElementById('token').value = '{TOKEN}'; \
         document.getElementById('token-save').click(); true"
    ))
    .await;
    b.until(
        Duration::from_secs(30),
        "document.querySelectorAll('#peer-rows tr[data-peer]').length === 2",
        "both peers listed",
    )
    .await;
    assert_eq!(
        b.eval(&format!("location.href.includes('{TOKEN}')")).await,
        json!(false),
        "the token never goes into a URL"
    );
    // Every peer is up: the connect errors of the start (peers not yet listening) are gone.
    b.until(
        Duration::from_secs(30),
        "[...document.querySelectorAll('#peer-rows tr[data-peer] td:last-child')]
           .every(td => td.textContent === '–')",
        "no stale last error once every peer answers",
    )
    .await;
    // Traffic on the first replica, now (within the minute the figures cover): one miss, one
    // hit. The others store the URL too, for the purge to cover.
    for n in &nodes {
        n.get("/items/1").await;
    }
    assert!(nodes[0].get("/items/1").await.is_hit());
    b.until(
        Duration::from_secs(30),
        "document.getElementById('hit-ratio').textContent === '50.0 %'",
        "the hit ratio of one miss and one hit",
    )
    .await;
    assert_eq!(
        b.eval("document.getElementById('entries').textContent")
            .await,
        json!("1")
    );

    // Purge the tag through the page's form: it asks first.
    b.eval(
        "document.getElementById('purge-kind').value = 'tags'; \
         document.getElementById('purge-value').value = 'items'; \
         document.getElementById('purge-start').click(); true",
    )
    .await;
    b.until(
        Duration::from_secs(10),
        "!document.getElementById('purge-confirm').hidden && \
         document.getElementById('purge-confirm-text').textContent.includes('items')",
        "the form asks for confirmation",
    )
    .await;
    assert!(
        nodes[1].get("/items/1").await.is_hit(),
        "nothing is purged before the confirmation"
    );
    b.eval("document.getElementById('purge-confirm-yes').click(); true")
        .await;
    b.until(
        Duration::from_secs(30),
        "document.getElementById('purge-result').dataset.state === 'done'",
        "the purge was accepted",
    )
    .await;
    let event = b
        .eval("document.getElementById('purge-result').dataset.event")
        .await;
    let event = event.as_str().expect("the event id").to_string();

    // The stream shows it, with every peer's acknowledgement.
    let row = format!("document.querySelector('#purge-rows tr[data-event=\"{event}\"]')");
    b.until(
        Duration::from_secs(30),
        &format!("{row} !== null && {row}.dataset.fanout === 'acknowledged' && {row}.dataset.peers === '2'"),
        "the purge acknowledged by both peers",
    )
    .await;
    let cells = b
        .eval(&format!("[...{row}.children].map(td => td.textContent)"))
        .await;
    let cells: Vec<&str> = cells
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(cells[1], "local", "{cells:?}");
    assert!(cells[2].starts_with("admin · 127."), "who: {cells:?}");
    assert_eq!(cells[3], "tag items", "{cells:?}");
    assert_eq!(cells[4], "1", "entries covered here: {cells:?}");
    assert!(cells[5].starts_with("all 2 in "), "{cells:?}");
    // And it was really applied everywhere.
    for n in &nodes[1..] {
        assert!(!n.get("/items/1").await.is_hit(), "purged on {}", n.proxy);
    }

    // Some traffic across a few samples, so that the screenshot shows the series drawn.
    let proxy = nodes[0].url("/items/2");
    let traffic = tokio::spawn(async move {
        loop {
            let _ = client().get(&proxy).send().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    b.until(
        Duration::from_secs(30),
        "document.querySelectorAll('#chart-rps polyline, #chart-hit polyline').length >= 2",
        "the series drawn",
    )
    .await;
    traffic.abort();
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshot.png");
    b.screenshot(&shot).await;
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "a real page"
    );
    eprintln!("screenshot: {}", shot.display());
}

#[tokio::test]
async fn the_page_holds_no_data_and_its_state_needs_the_token() {
    let origin = Origin::start(tagged).await;
    let c = Corral::start_with_env(&config(&origin, ""), &[("CORRAL_ADMIN_TOKEN", TOKEN)]).await;
    let page = client().get(c.admin_url("/ui")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(policy.contains("default-src 'none'") && policy.contains("frame-ancestors 'none'"));
    let html = page.text().await.unwrap();
    for external in ["src=\"http", "href=\"http", "src=\"//", "href=\"//"] {
        assert!(!html.contains(external), "no external asset: {external}");
    }
    for asset in ["/ui/app.js", "/ui/app.css"] {
        let r = client().get(c.admin_url(asset)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{asset} is embedded");
    }
    let state = |token: Option<&str>| {
        let mut r = client().get(c.admin_url("/ui/state"));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    assert_eq!(state(None).await.unwrap().status(), 401);
    assert_eq!(state(Some("wrong")).await.unwrap().status(), 401);
    let doc: Value = state(Some(TOKEN)).await.unwrap().json().await.unwrap();
    assert_eq!(doc["store"]["max_bytes"], json!(256u64 << 20));
    assert!(doc["traffic"]["points"].is_array());
    assert!(doc["redis"].is_null(), "no Redis tier configured");
    assert_eq!(
        doc["upstreams"]["upstreams"][0]["endpoints"][0]["address"],
        json!(origin.addr.to_string())
    );
}

#[tokio::test]
async fn a_peers_start_up_error_clears_once_it_answers() {
    let origin = Origin::start(tagged).await;
    let (proxy_port, admin_port) = (replica_port(), replica_port());
    let first = replica(&origin, 0, 2, proxy_port, admin_port).await;
    let last_error = async || {
        let doc: Value = first.admin_json("/peers").await;
        doc["peers"][0]["last_error"].clone()
    };
    assert!(
        eventually(Duration::from_secs(20), async || !last_error()
            .await
            .is_null())
        .await,
        "a heartbeat to a peer not yet listening fails"
    );
    let _second = replica(&origin, 1, 2, proxy_port, admin_port).await;
    // No purge is sent: only heartbeats reach the peer, and their success must clear it.
    assert!(
        eventually(Duration::from_secs(20), async || last_error()
            .await
            .is_null())
        .await,
        "the error still shows: {}",
        last_error().await
    );
}

#[tokio::test]
async fn the_redis_tiers_breaker_state_is_shown_as_it_opens_and_closes() {
    let redis = Redis::start().await;
    let origin = Origin::start(tagged).await;
    let cfg = format!(
        "[upstream]\nurl = \"{}\"\n[cache.l2]\nkind = \"redis\"\nurl = \"{}\"\ntimeout = \"300ms\"\nbreaker_open_for = \"2s\"\nbreaker_latency_p99 = \"10s\"\n",
        origin.url(),
        redis.url()
    );
    let c = Corral::start(&cfg).await;
    let breaker = async || {
        let doc: Value = c.admin_json("/ui/state").await;
        doc["redis"]["breaker"]
            .as_str()
            .unwrap_or("none")
            .to_string()
    };
    assert!(
        eventually(Duration::from_secs(10), async || breaker().await
            == "closed")
        .await
    );
    // The tier connects after the replica is ready: wait until a call really reached Redis,
    // so the calls below time out against a live connection rather than wait for one.
    let mut p = 0;
    assert!(
        eventually(Duration::from_secs(30), async || {
            p += 1;
            c.get(&format!("/prime/{p}")).await;
            c.metric("corral_redis_calls_total{kind=\"ok\"}").await >= 1.0
        })
        .await,
        "no Redis call worked"
    );
    redis.signal(libc::SIGSTOP);
    assert!(
        wait_for_process_state(redis.pid(), true).await,
        "Redis did not stop"
    );
    // Cold URLs: each consults Redis until the breaker opens.
    let mut n = 0;
    let opened = eventually(Duration::from_secs(30), async || {
        n += 1;
        c.get(&format!("/cold/{n}")).await;
        breaker().await == "open"
    })
    .await;
    assert!(
        opened,
        "the page shows the breaker open: {}",
        breaker().await
    );
    redis.signal(libc::SIGCONT);
    assert!(
        wait_for_process_state(redis.pid(), false).await,
        "Redis did not resume"
    );
    let closed = eventually(Duration::from_secs(30), async || {
        n += 1;
        c.get(&format!("/cold/{n}")).await;
        breaker().await == "closed"
    })
    .await;
    assert!(closed, "and closed again: {}", breaker().await);
}

#[tokio::test]
async fn the_dashboard_shows_a_sources_leader_and_its_transactions() {
    use corral_testkit::postgres::Postgres;
    let pg = Postgres::start();
    pg.psql("CREATE TABLE packages (id int PRIMARY KEY, name text); ALTER TABLE packages OWNER TO corral; INSERT INTO packages VALUES (1, 'a');");
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("pg-password");
    std::fs::write(&password, Postgres::PASSWORD).unwrap();
    let origin = Origin::start(tagged).await;
    let cfg = format!(
        "[upstream]\nurl = \"{}\"\n[[sources]]\nname = \"shop\"\nkind = \"postgres\"\ndsn = \"{}\"\n\
         password_file = \"{}\"\nrules = [ {{ table = \"packages\", tags = [\"item-{{id}}\"] }} ]\n",
        origin.url(),
        pg.dsn(),
        password.display()
    );
    let c = Corral::start_with_env(&cfg, &[("CORRAL_ADMIN_TOKEN", TOKEN)]).await;
    let mut b = Browser::launch().await;
    b.call("Page.navigate", json!({"url": c.admin_url("/ui")}))
        .await;
    b.until(
        Duration::from_secs(30),
        "document.getElementById('auth') && !document.getElementById('auth').hidden",
        "the page asks for the admin token",
    )
    .await;
    b.eval(&format!(
        "document.getElementById('token').value = '{TOKEN}'; \
         document.getElementById('token-save').click(); true"
    ))
    .await;
    let row = "document.querySelector('#source-rows tr[data-source=\"shop\"]')";
    b.until(
        Duration::from_secs(30),
        &format!("!document.getElementById('sources').hidden && {row} && {row}.textContent.includes('streaming')"),
        "the source is listed, streaming, with this replica as its leader",
    )
    .await;
    assert!(b
        .eval(&format!("{row}.textContent.includes('(this replica)')"))
        .await
        .as_bool()
        .unwrap());
    pg.psql("UPDATE packages SET name = 'b' WHERE id = 1;");
    b.until(
        Duration::from_secs(30),
        &format!("{row}.querySelector('td.transactions').textContent === '1'"),
        "the committed transaction is counted on the page",
    )
    .await;
}
