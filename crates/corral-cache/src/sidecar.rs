//! Coherence through the local Corral sidecar, for pods that already run one.
//!
//! A [`Sidecar`] follows the sidecar's `GET /_corral/v1/subscribe` feed (server-sent events of
//! every invalidation the sidecar applies: its own, its peers', the bus's) and applies each to
//! the attached caches; and it sends the caches' own invalidations to the sidecar's
//! `POST /purge` (in order, several merged into one request when they queue up, retried with
//! backoff), which broadcasts them to the cluster. The service then needs no cluster
//! secret, no discovery and no listener of its own.
//!
//! The feed also carries this pod's own invalidations back (the sidecar applies and
//! broadcasts them like any other). They were applied here before they were sent, and applying
//! them again would drop what the pod wrote since — the fresh value of a
//! [`Cache::write_through`]. So the sidecar skips its own echoes: `POST /purge` answers with the
//! event's id, and an event whose id it published is not applied again. An echo that outruns
//! the answer is recognised by coming from the sidecar itself (the origin in the ids it
//! answers with) with exactly the selectors of a request still in flight (first match only).
//! Every other event is applied, whoever sent it.
//!
//! Whatever a cache holds while the feed is not followed may have missed events: on every
//! connection (the first one too) and on a `reset` event (the feed lagged), every attached cache
//! is invalidated. So attach caches first, and warm them after [`Sidecar::wait_connected`].
//! TTL stays the safety net.
//!
//! ```no_run
//! # async fn f() {
//! use corral_cache::{sidecar::Sidecar, Cache};
//! let prices: Cache<u64, u32> = Cache::builder("prices").build().unwrap();
//! let sidecar = Sidecar::connect("http://127.0.0.1:9090", None);
//! sidecar.attach(&prices);
//! sidecar.wait_connected(std::time::Duration::from_secs(5)).await;
//! prices.invalidate(&7); // reaches every pod's `prices` cache through the cluster
//! # }
//! ```

use corral_core::Backoff;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use corral_core::{Applier, Appliers, InvalidationEvent, Purge, Selectors};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{mpsc, Notify};

/// Invalidations queued for the sidecar before new ones are refused (and counted).
const OUTBOX: usize = 10_000;

use crate::{Cache, Key, Publish};

/// A connection to the local Corral's invalidation feed. See the [module docs](self).
pub struct Sidecar {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
    sender: tokio::task::JoinHandle<()>,
}

struct Shared {
    admin: String,
    token: Option<String>,
    client: reqwest::Client,
    /// The attached caches, where the feed's events go.
    caches: Appliers,
    connected: AtomicBool,
    connected_notify: Notify,
    applied: Counter,
    reconnects: Counter,
    outbox: mpsc::Sender<Purge>,
    published: Counter,
    publish_failures: Counter,
    connected_gauge: Gauge,
    echo: parking_lot::Mutex<Echo>,
    echoes_skipped: Counter,
    next_request: AtomicU64,
}

/// How long the id of a published event is remembered (its echo comes within milliseconds).
const ECHO_WINDOW: Duration = Duration::from_secs(60);

/// This pod's published invalidations, to recognise their echoes on the feed.
#[derive(Default)]
struct Echo {
    /// Requests not answered yet: (request, selectors, soft, id of the echo already skipped).
    in_flight: Vec<(u64, Purge, Option<String>)>,
    /// Ids the sidecar answered with, whose echo has not come yet.
    own: HashMap<String, std::time::Instant>,
    /// The sidecar's instance name (from the ids it answers with): only its events can be
    /// echoes.
    origin: Option<String>,
}

impl Shared {
    /// True if `e` is the echo of an invalidation this pod published (then it is not applied).
    fn is_echo(&self, e: &InvalidationEvent) -> bool {
        let mut echo = self.echo.lock();
        if echo.own.remove(&e.id).is_some() {
            return true;
        }
        if echo.origin.as_ref().is_some_and(|o| *o != e.origin) {
            return false;
        }
        if let Some(f) = echo
            .in_flight
            .iter_mut()
            .find(|f| f.2.is_none() && f.1 == e.purge)
        {
            f.2 = Some(e.id.clone());
            return true;
        }
        false
    }

    fn request_started(&self, purge: &Purge) -> u64 {
        let n = self.next_request.fetch_add(1, Ordering::Relaxed);
        self.echo.lock().in_flight.push((n, purge.clone(), None));
        n
    }

    /// The request is over; `id` is the event the sidecar made of it, if it answered.
    fn request_done(&self, n: u64, id: Option<String>) {
        let mut echo = self.echo.lock();
        let Some(i) = echo.in_flight.iter().position(|f| f.0 == n) else {
            return;
        };
        let (_, _, echoed) = echo.in_flight.swap_remove(i);
        if let Some(id) = id {
            // `{origin}-{epoch:x}-{seq}`.
            if let Some(origin) = id.rsplitn(3, '-').nth(2) {
                if echo.origin.as_deref() != Some(origin) {
                    echo.origin = Some(origin.to_string());
                }
            }
            if echoed.as_deref() != Some(id.as_str()) {
                let now = std::time::Instant::now();
                echo.own
                    .retain(|_, at| now.duration_since(*at) < ECHO_WINDOW);
                echo.own.insert(id, now);
            }
        }
    }
}

impl Sidecar {
    /// Follows the feed of the Corral whose admin listener is `admin_url`
    /// (`http://127.0.0.1:9090`). `token` is the admin bearer token, if one is configured
    /// (needed to publish). Reconnects with backoff until dropped.
    pub fn connect(admin_url: &str, token: Option<String>) -> Sidecar {
        let (outbox, rx) = mpsc::channel(OUTBOX);
        let shared = Arc::new(Shared {
            admin: admin_url.trim_end_matches('/').to_string(),
            token,
            client: reqwest::Client::builder()
                .no_proxy()
                .connect_timeout(Duration::from_secs(2))
                .build()
                .expect("an HTTP client builds"),
            caches: Appliers::default(),
            connected: AtomicBool::new(false),
            connected_notify: Notify::new(),
            applied: Counter::default(),
            reconnects: Counter::default(),
            outbox,
            published: Counter::default(),
            publish_failures: Counter::default(),
            connected_gauge: Gauge::default(),
            echo: parking_lot::Mutex::default(),
            echoes_skipped: Counter::default(),
            next_request: AtomicU64::new(0),
        });
        let task = tokio::spawn(follow(shared.clone()));
        let sender = tokio::spawn(send_loop(Arc::downgrade(&shared), rx));
        Sidecar {
            shared,
            task,
            sender,
        }
    }

    /// Applies the feed to `cache`, and publishes `cache`'s invalidations through the sidecar.
    pub fn attach<K: Key, V: Clone + Send + Sync + 'static>(&self, cache: &Cache<K, V>) {
        self.shared.caches.add(cache.applier());
        cache.attach_publisher(Arc::new(Publisher(Arc::downgrade(&self.shared))));
    }

    /// True while the feed is connected.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    /// Waits until the feed is connected, at most `timeout`. True if connected.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let n = self.shared.connected_notify.notified();
            if self.is_connected() {
                return true;
            }
            if tokio::time::timeout_at(deadline, n).await.is_err() {
                return self.is_connected();
            }
        }
    }

    /// Registers this sidecar connection's metrics: `corral_library_sidecar_connected`,
    /// `corral_library_sidecar_events_applied_total`, `corral_library_sidecar_reconnects_total`,
    /// `corral_library_sidecar_published_total`, `corral_library_sidecar_publish_failures_total`.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        let r = registry.sub_registry_with_prefix("corral_library_sidecar");
        let s = &self.shared;
        r.register(
            "connected",
            "1 while the invalidation feed is connected",
            s.connected_gauge.clone(),
        );
        r.register(
            "events_applied",
            "Invalidations applied from the feed",
            s.applied.clone(),
        );
        r.register(
            "reconnects",
            "Feed reconnections (each empties the attached caches)",
            s.reconnects.clone(),
        );
        r.register(
            "published",
            "Purge requests the sidecar accepted",
            s.published.clone(),
        );
        r.register(
            "publish_failures",
            "Invalidations not handed to the sidecar (other pods keep them until TTL)",
            s.publish_failures.clone(),
        );
        r.register(
            "echoes_skipped",
            "This pod's own invalidations coming back on the feed, not applied again",
            s.echoes_skipped.clone(),
        );
    }

    /// This pod's own invalidations that came back on the feed and were not applied again.
    pub fn echoes_skipped(&self) -> u64 {
        self.shared.echoes_skipped.get()
    }

    /// Events applied from the feed so far.
    pub fn applied(&self) -> u64 {
        self.shared.applied.get()
    }

    /// Purge requests the sidecar accepted (one request may carry several invalidations).
    pub fn published(&self) -> u64 {
        self.shared.published.get()
    }

    /// Invalidations that could not be handed to the sidecar (outbox full, refused, or every
    /// retry failed): other pods keep those entries until their TTL.
    pub fn publish_failures(&self) -> u64 {
        self.shared.publish_failures.get()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.task.abort();
        self.sender.abort();
    }
}

async fn follow(shared: Arc<Shared>) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut first = true;
    loop {
        let url = format!("{}/_corral/v1/subscribe", shared.admin);
        match shared
            .client
            .get(&url)
            .header("accept", "text/event-stream")
            .send()
            .await
        {
            Ok(mut resp) if resp.status().is_success() => {
                // Whatever was cached while not following the feed (before the first
                // connection, or while away) may have missed events.
                shared
                    .caches
                    .purge_everything("the feed was not followed until now");
                if !first {
                    shared.reconnects.inc();
                }
                first = false;
                backoff.reset();
                shared.connected.store(true, Ordering::Release);
                shared.connected_gauge.set(1);
                shared.connected_notify.notify_waiters();
                let mut buf = String::new();
                while let Ok(Some(chunk)) = resp.chunk().await {
                    buf.push_str(&String::from_utf8_lossy(&chunk));
                    while let Some(end) = buf.find("\n\n") {
                        let block: String = buf.drain(..end + 2).collect();
                        handle_block(&shared, &block);
                    }
                }
                shared.connected.store(false, Ordering::Release);
                shared.connected_gauge.set(0);
                tracing::warn!(url, "invalidation feed closed; reconnecting");
            }
            Ok(resp) => {
                tracing::warn!(url, status = %resp.status(), "invalidation feed refused");
            }
            Err(e) => {
                tracing::debug!(url, error = %e, "invalidation feed unreachable");
            }
        }
        backoff.wait().await;
    }
}

/// One SSE event block: `event:` and `data:` lines.
fn handle_block(shared: &Shared, block: &str) {
    let mut event = "message";
    let mut data = String::new();
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            event = v.trim();
        } else if let Some(v) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    match event {
        "invalidation" => match serde_json::from_str::<InvalidationEvent>(&data) {
            Ok(e) => {
                if shared.is_echo(&e) {
                    shared.echoes_skipped.inc();
                    return;
                }
                shared.caches.apply_remote(&e);
                shared.applied.inc();
            }
            Err(err) => {
                tracing::warn!(error = %err, "unreadable invalidation on the feed; invalidating everything");
                shared
                    .caches
                    .purge_everything("an unreadable invalidation on the feed");
            }
        },
        "reset" => shared
            .caches
            .purge_everything("the feed lagged: the sidecar sent a reset"),
        _ => {}
    }
}

struct Publisher(Weak<Shared>);

impl Publish for Publisher {
    fn publish(&self, purge: Purge) {
        let Some(shared) = self.0.upgrade() else {
            return;
        };
        if shared.outbox.try_send(purge).is_err() {
            shared.publish_failures.inc();
            tracing::error!("sidecar outbox full: invalidation not sent; other pods rely on TTL");
        }
    }
}

/// Most selectors merged into one `POST /purge`.
const MAX_MERGED: usize = 200;

/// Sends queued invalidations to the sidecar in order, merging those waiting together (same
/// softness) into one request, each retried with backoff.
async fn send_loop(shared: Weak<Shared>, mut rx: mpsc::Receiver<Purge>) {
    while let Some(mut merged) = rx.recv().await {
        let mut next = None;
        while merged.selectors.len() < MAX_MERGED {
            match rx.try_recv() {
                Ok(p) if p.mode == merged.mode => {
                    let (sel, s) = (&mut merged.selectors, p.selectors);
                    sel.urls.extend(s.urls);
                    sel.tags.extend(s.tags);
                    sel.prefixes.extend(s.prefixes);
                    sel.all |= s.all;
                }
                Ok(other) => {
                    next = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        let Some(sh) = shared.upgrade() else {
            return;
        };
        let len = merged.selectors.len();
        if len > 1 && send(&sh, &merged).await == Sent::Refused {
            // One bad selector must not take the others down with it: one at a time.
            let mode = merged.mode;
            for one in split(merged.selectors) {
                send(&sh, &Purge::new(one, mode)).await;
            }
        } else if len <= 1 {
            send(&sh, &merged).await;
        }
        if let Some(p) = next {
            send(&sh, &p).await;
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Sent {
    Ok,
    Refused,
    Failed,
}

fn split(s: Selectors) -> Vec<Selectors> {
    let mut out = Vec::new();
    let one = |f: &dyn Fn(&mut Selectors)| {
        let mut x = Selectors::default();
        f(&mut x);
        x
    };
    for u in s.urls {
        out.push(one(&|x| x.urls.push(u.clone())));
    }
    for t in s.tags {
        out.push(one(&|x| x.tags.push(t.clone())));
    }
    for p in s.prefixes {
        out.push(one(&|x| x.prefixes.push(p.clone())));
    }
    if s.all {
        out.push(one(&|x| x.all = true));
    }
    out
}

async fn send(shared: &Shared, purge: &Purge) -> Sent {
    let selectors = &purge.selectors;
    let body = serde_json::json!({
        "urls": selectors.urls,
        "tags": selectors.tags,
        "prefixes": selectors.prefixes,
        "all": selectors.all,
        "soft": purge.is_soft(),
    });
    let request = shared.request_started(purge);
    let sent = send_request(shared, &body, selectors.len()).await;
    let id = match &sent {
        Ok(id) => id.clone(),
        Err(_) => None,
    };
    shared.request_done(request, id);
    match sent {
        Ok(_) => Sent::Ok,
        Err(s) => s,
    }
}

/// One request with its retries: the event id of the answer, if it names one.
async fn send_request(
    shared: &Shared,
    body: &serde_json::Value,
    selectors: usize,
) -> Result<Option<String>, Sent> {
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    for attempt in 0..6 {
        let mut req = shared
            .client
            .post(format!("{}/purge", shared.admin))
            .timeout(Duration::from_secs(5))
            .json(body);
        if let Some(t) = &shared.token {
            req = req.bearer_auth(t);
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => {
                shared.published.inc();
                let answer: Option<serde_json::Value> = r.json().await.ok();
                let id = answer
                    .as_ref()
                    .and_then(|a| a.get("event"))
                    .and_then(|e| e.as_str())
                    .map(str::to_string);
                return Ok(id);
            }
            Ok(r) if r.status().is_client_error() => {
                let status = r.status();
                let why = r.text().await.unwrap_or_default();
                tracing::error!(%status, why, "the sidecar refused an invalidation");
                if selectors == 1 {
                    shared.publish_failures.inc();
                }
                return Err(Sent::Refused);
            }
            Ok(r) => {
                tracing::warn!(status = %r.status(), attempt, "sidecar purge failed; retrying")
            }
            Err(e) => tracing::warn!(error = %e, attempt, "sidecar purge failed; retrying"),
        }
        backoff.wait().await;
    }
    shared.publish_failures.inc();
    tracing::error!("invalidation not delivered to the sidecar; other pods rely on TTL");
    Err(Sent::Failed)
}
