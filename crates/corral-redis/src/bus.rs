//! The Redis Streams invalidation bus: every replica appends its own invalidation events to one
//! stream (`XADD … MAXLEN ~ N`) and reads everyone's from its last seen id (`XREAD BLOCK`).
//!
//! * **Nothing lost within retention.** A reader that reconnects resumes from its last id. If the
//!   stream was trimmed past that id (its position is older than the stream's first entry: it was
//!   away longer than the stream's retention), it cannot
//!   know what it missed and purges all of L1 — the conservative answer — and counts it
//!   (`corral_bus_resets_total{kind="trimmed"}`). A stream that was lost with its Redis (restart
//!   without persistence) is resumed from its start (`kind="recreated"`): publishers keep every
//!   event queued until Redis takes it, so what was published during the outage arrives.
//! * **Same trust as the HTTP bus.** Entries carry the event, a timestamp and an HMAC-SHA256 with
//!   the cluster secret; unsigned or forged entries are refused and counted. Events are applied
//!   through the cluster's dedupe, so the HTTP fan-out and the Redis bus can both run.

use corral_core::Backoff;
use std::sync::Arc;
use std::time::Duration;

use corral_cluster::sign::{SIGNATURE, TIMESTAMP};
use corral_cluster::Secret;
use corral_core::{Applier, InvalidationEvent};
use http::{HeaderMap, HeaderValue};
use redis::aio::MultiplexedConnection;
use redis::streams::StreamReadReply;
use redis::{AsyncConnectionConfig, Value};
use tokio::sync::mpsc;

use crate::client::{open_client, redact, RedisConfig, Target};
use crate::metrics::RedisMetrics;

/// Bus settings.
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// The Redis server (`redis://…`); credentials from `redis.password`/`username`.
    pub redis: RedisConfig,
    pub stream: String,
    /// Approximate stream length kept (retention).
    pub maxlen: u64,
    /// How long one XREAD blocks.
    pub block: Duration,
    /// Signed entries older than this are refused (replays); at least the retention you expect.
    pub replay_window: Duration,
}

/// The bus of one replica.
pub struct Bus {
    tx: mpsc::Sender<Arc<InvalidationEvent>>,
    metrics: RedisMetrics,
}

fn parse_id(id: &str) -> (u64, u64) {
    let (a, b) = id.split_once('-').unwrap_or((id, "0"));
    (a.parse().unwrap_or(0), b.parse().unwrap_or(0))
}

struct Shared {
    config: BusConfig,
    secret: Secret,
    origin: String,
    sink: Arc<dyn Applier>,
    metrics: RedisMetrics,
}

impl Bus {
    /// Starts the publisher and the reader.
    pub fn start(
        config: BusConfig,
        secret: Secret,
        origin: String,
        sink: Arc<dyn Applier>,
        metrics: RedisMetrics,
    ) -> Arc<Bus> {
        let (tx, rx) = mpsc::channel(10_000);
        let shared = Arc::new(Shared {
            config,
            secret,
            origin,
            sink,
            metrics: metrics.clone(),
        });
        tokio::spawn(shared.clone().publisher(rx));
        tokio::spawn(shared.reader());
        Arc::new(Bus { tx, metrics })
    }

    /// Queues one of this replica's events for the stream (kept until Redis takes it).
    pub fn publish(&self, event: Arc<InvalidationEvent>) {
        if self.tx.try_send(event).is_err() {
            self.metrics.bus_publish_failures.inc();
            tracing::warn!("Redis bus queue full: an event was dropped (peers recover through the HTTP bus or purge on their own)");
        }
    }
}

impl Shared {
    async fn connect(
        &self,
        response_timeout: Duration,
    ) -> redis::RedisResult<MultiplexedConnection> {
        match &self.config.redis.target {
            Target::Url(u) => self.open(u, response_timeout).await,
            Target::Nodes(seeds) => self.connect_to_owner(seeds, response_timeout).await,
        }
    }

    async fn open(
        &self,
        url: &str,
        response_timeout: Duration,
    ) -> redis::RedisResult<MultiplexedConnection> {
        let client = open_client(url, &self.config.redis)?;
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(self.config.redis.connect_timeout)
            .set_response_timeout(response_timeout);
        tokio::time::timeout(
            self.config.redis.connect_timeout * 2,
            client.get_multiplexed_async_connection_with_config(&cfg),
        )
        .await
        .map_err(|_| redis::RedisError::from((redis::ErrorKind::IoError, "connect timed out")))?
    }

    /// On a Redis Cluster the stream is one key, so it lives in one slot on one master: ask the
    /// seeds in turn, follow their `MOVED` to that master, and talk to it alone (a blocking
    /// `XREAD` then holds no connection other commands need). After a failover the old
    /// master's connection fails and the next connect finds the promoted replica.
    async fn connect_to_owner(
        &self,
        seeds: &[String],
        response_timeout: Duration,
    ) -> redis::RedisResult<MultiplexedConnection> {
        let mut last_error = None;
        for seed in seeds {
            let mut url = seed.clone();
            for _redirect in 0..3 {
                let mut conn = match self.open(&url, response_timeout).await {
                    Ok(c) => c,
                    Err(e) => {
                        last_error = Some(e);
                        break;
                    }
                };
                let owns: redis::RedisResult<i64> = redis::cmd("XLEN")
                    .arg(&self.config.stream)
                    .query_async(&mut conn)
                    .await;
                match owns {
                    Ok(_) => return Ok(conn),
                    Err(e) => match e.redirect_node() {
                        Some((host, port)) if e.kind() == redis::ErrorKind::Moved => {
                            url = node_url(seed, host, port);
                        }
                        _ => {
                            last_error = Some(e);
                            break;
                        }
                    },
                }
            }
        }
        Err(last_error.unwrap_or_else(|| {
            redis::RedisError::from((
                redis::ErrorKind::IoError,
                "no Redis Cluster node serves the stream",
            ))
        }))
    }

    /// After an append on a Redis Cluster: waits (up to the call timeout) until a replica has
    /// it, so an event survives its master's failover. A master without replicas answers 0;
    /// that is counted, not retried.
    async fn replicated(&self, conn: &mut MultiplexedConnection) {
        if !matches!(self.config.redis.target, Target::Nodes(_)) {
            return;
        }
        let wait: redis::RedisResult<i64> = redis::cmd("WAIT")
            .arg(1)
            .arg(self.config.redis.timeout.as_millis() as u64)
            .query_async(conn)
            .await;
        if !matches!(wait, Ok(n) if n >= 1) {
            self.metrics.bus_unreplicated.inc();
        }
    }

    async fn publisher(self: Arc<Self>, mut rx: mpsc::Receiver<Arc<InvalidationEvent>>) {
        let mut conn: Option<MultiplexedConnection> = None;
        while let Some(event) = rx.recv().await {
            let body = match serde_json::to_vec(&*event) {
                Ok(b) => b,
                Err(_) => continue,
            };
            let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
            loop {
                if conn.is_none() {
                    conn = self.connect(Duration::from_secs(1)).await.ok();
                }
                if let Some(c) = conn.as_mut() {
                    let [(_, ts), (_, sig)] = self.secret.sign("XADD", &self.config.stream, &body);
                    let r: redis::RedisResult<Value> = redis::cmd("XADD")
                        .arg(&self.config.stream)
                        .arg("MAXLEN")
                        .arg("~")
                        .arg(self.config.maxlen)
                        .arg("*")
                        .arg("e")
                        .arg(&body[..])
                        .arg("t")
                        .arg(&ts)
                        .arg("s")
                        .arg(&sig)
                        .query_async(c)
                        .await;
                    match r {
                        Ok(_) => {
                            self.replicated(c).await;
                            self.metrics.bus_published.inc();
                            break;
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "Redis bus append failed; retrying");
                            conn = None;
                        }
                    }
                }
                self.metrics.bus_publish_failures.inc();
                backoff.wait().await;
            }
        }
    }

    async fn reader(self: Arc<Self>) {
        let mut last: Option<String> = None;
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(2));
        loop {
            let session = self.read_session(&mut last).await;
            // A session that got as far as following the stream starts the retries afresh.
            if self.metrics.bus_connected.get() == 1 {
                backoff.reset();
            }
            if let Err(e) = session {
                self.metrics.bus_connected.set(0);
                tracing::debug!(error = %e, stream = %self.config.stream, "Redis bus reader disconnected; reconnecting");
            }
            backoff.wait().await;
        }
    }

    /// One connection's worth of reading: position, then XREAD until an error.
    async fn read_session(&self, last: &mut Option<String>) -> redis::RedisResult<()> {
        let mut conn = self
            .connect(self.config.block + Duration::from_secs(2))
            .await?;
        let stream = &self.config.stream;
        match last.clone() {
            None => {
                let newest: Vec<(String, Value)> = redis::cmd("XREVRANGE")
                    .arg(stream)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut conn)
                    .await?;
                *last = Some(
                    newest
                        .first()
                        .map_or("0-0".to_string(), |(id, _)| id.clone()),
                );
            }
            Some(pos) => self.check_position(&mut conn, &pos, last).await?,
        }
        self.metrics.bus_connected.set(1);
        tracing::info!(stream = %stream, redis = %redact(&format!("{:?}", self.config.redis.target)), "Redis bus reading");
        loop {
            let pos = last.clone().unwrap_or_else(|| "0-0".into());
            let reply: Option<StreamReadReply> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(256)
                .arg("BLOCK")
                .arg(self.config.block.as_millis() as u64)
                .arg("STREAMS")
                .arg(stream)
                .arg(&pos)
                .query_async(&mut conn)
                .await?;
            let Some(reply) = reply else { continue };
            for k in reply.keys {
                for entry in k.ids {
                    *last = Some(entry.id.clone());
                    self.handle(&entry.map);
                }
            }
        }
    }

    /// After a reconnect: was the stream trimmed past us, or lost altogether?
    async fn check_position(
        &self,
        conn: &mut MultiplexedConnection,
        pos: &str,
        last: &mut Option<String>,
    ) -> redis::RedisResult<()> {
        let info: redis::RedisResult<std::collections::HashMap<String, Value>> =
            redis::cmd("XINFO")
                .arg("STREAM")
                .arg(&self.config.stream)
                .query_async(conn)
                .await;
        let info = match info {
            Ok(i) => i,
            Err(e) if e.kind() == redis::ErrorKind::ResponseError => {
                // No such key: the stream is gone (Redis restarted without persistence).
                self.reset("recreated", last, "0-0".into());
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let text = |k: &str| match info.get(k) {
            Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(Value::SimpleString(s)) => s.clone(),
            _ => "0-0".into(),
        };
        let generated = parse_id(&text("last-generated-id"));
        let first = parse_id(&text("recorded-first-entry-id"));
        let int = |k: &str| match info.get(k) {
            Some(Value::Int(n)) => *n,
            _ => 0,
        };
        let length = int("length");
        // Nothing ever removed (entries-added is Redis 7's count of every append).
        let removed = int("entries-added") > length;
        let at = parse_id(pos);
        if generated < at {
            self.reset("recreated", last, "0-0".into());
        } else if removed && ((length == 0 && generated > at) || (length > 0 && first > at)) {
            // Our position was trimmed away: what came after it may have been too.
            let reason = format!(
                "the Redis stream {} was trimmed past this replica's position {pos}",
                self.config.stream
            );
            corral_core::invalidation::purge_after_unrecoverable_gap(&*self.sink, &reason);
            self.reset("trimmed", last, pos.to_string());
        }
        Ok(())
    }

    fn reset(&self, kind: &'static str, last: &mut Option<String>, to: String) {
        RedisMetrics::inc(&self.metrics.bus_resets, kind);
        tracing::warn!(stream = %self.config.stream, kind, from = ?last, to = %to, "Redis bus position reset");
        *last = Some(to);
    }

    fn handle(&self, map: &std::collections::HashMap<String, Value>) {
        let bytes = |k: &str| match map.get(k) {
            Some(Value::BulkString(b)) => Some(b.clone()),
            Some(Value::SimpleString(s)) => Some(s.as_bytes().to_vec()),
            _ => None,
        };
        let (Some(body), Some(ts), Some(sig)) = (bytes("e"), bytes("t"), bytes("s")) else {
            self.metrics.bus_rejected.inc();
            return;
        };
        let mut h = HeaderMap::new();
        if let (Ok(ts), Ok(sig)) = (HeaderValue::from_bytes(&ts), HeaderValue::from_bytes(&sig)) {
            h.insert(TIMESTAMP, ts);
            h.insert(SIGNATURE, sig);
        }
        if let Err(r) = self.secret.verify(
            &h,
            "XADD",
            &self.config.stream,
            &body,
            self.config.replay_window,
        ) {
            self.metrics.bus_rejected.inc();
            tracing::warn!(reason = r.as_str(), "Redis bus entry refused");
            return;
        }
        let Ok(event) = serde_json::from_slice::<InvalidationEvent>(&body) else {
            self.metrics.bus_rejected.inc();
            return;
        };
        if event.origin == self.origin {
            return;
        }
        self.metrics.bus_received.inc();
        let lag_ms = corral_core::invalidation::now_ms().saturating_sub(event.timestamp_ms);
        self.metrics.bus_lag.observe(lag_ms as f64 / 1000.0);
        self.sink.apply_remote(&event);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_compare_numerically() {
        assert!(super::parse_id("10-0") > super::parse_id("9-5"));
        assert!(super::parse_id("10-2") > super::parse_id("10-1"));
        assert_eq!(super::parse_id("garbage"), (0, 0));
    }
}

/// A cluster node's URL: the seed's scheme and credentials, the node's address.
fn node_url(seed: &str, host: &str, port: u16) -> String {
    let (scheme, rest) = seed.split_once("://").unwrap_or(("redis", seed));
    let auth = rest.rfind('@').map_or("", |at| &rest[..=at]);
    format!("{scheme}://{auth}{host}:{port}")
}

#[cfg(test)]
mod node_url_tests {
    #[test]
    fn keeps_scheme_and_credentials() {
        assert_eq!(
            super::node_url("redis://127.0.0.1:7000", "127.0.0.1", 7002),
            "redis://127.0.0.1:7002"
        );
        assert_eq!(
            super::node_url("rediss://u:p@a:1/0", "b", 2),
            "rediss://u:p@b:2"
        );
    }
}
