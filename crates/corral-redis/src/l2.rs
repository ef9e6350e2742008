//! The shared L2 tier: entries in Redis hashes (one per primary key, a field per variant),
//! written behind the client's back, with a TTL equal to the entry's usable life.
//!
//! # Purges reach L2 in O(1) per selector
//! A purge never scans Redis. It writes one *mark* per selector (tag, URL, prefix, or
//! everything), holding the purge's time in milliseconds; a read judges the entry it found
//! against the marks of its tags, its URL, the prefixes and `all`: a hard mark newer than the
//! entry's fetch start hides it (and deletes it), a soft mark newer than that serves it as
//! stale (revalidate first). Marks are kept as long as an entry can live in L2 and only move
//! forward (a script keeps the maximum), so every replica may write the marks of every event
//! it applies: idempotent, and a replica never reads L2 while its own marks are unwritten.
//!
//! All marks share one Redis Cluster hash slot (`{m}` in their keys), so one round trip
//! reads them in a Redis Cluster too.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use corral_core::entry::Entry;
use corral_core::judge::{judge, Verdict, WallMs};
use corral_core::key::{KeyRef, UrlTarget};
use corral_core::{Backoff, Mode, Purge};
use http::HeaderMap;
use parking_lot::Mutex;
use redis::Value;
use tokio::sync::Notify;

use crate::client::RedisClient;
use crate::codec::{self, FORMAT};
use crate::metrics::RedisMetrics;

/// L2 settings.
#[derive(Debug, Clone)]
pub struct L2Config {
    /// Key prefix; the format version is appended (`corral` → `corral:v2:`).
    pub prefix: String,
    /// Bodies larger than this are not written to L2.
    pub max_object_size: usize,
    /// No entry lives longer than this in L2 (marks live this long, plus a minute).
    pub max_ttl: Duration,
    /// Variants kept per URL in L2 (others are evicted at random on write).
    pub max_variants: usize,
}

impl Default for L2Config {
    fn default() -> Self {
        L2Config {
            prefix: "corral".into(),
            max_object_size: 1 << 20,
            max_ttl: Duration::from_secs(24 * 3600),
            max_variants: 8,
        }
    }
}

/// An entry found in L2.
#[derive(Debug)]
pub struct Found {
    pub entry: Entry,
    /// How L2's marks judge it: [`Verdict::Fresh`], or [`Verdict::Stale`] when a soft purge
    /// covers it (serve only after revalidation). Never [`Verdict::Gone`]: a hard-purged entry
    /// is not found.
    pub verdict: Verdict,
}

type After = Box<dyn FnOnce() + Send>;

struct PendingMark {
    purge: Purge,
    at_ms: u64,
    after: Option<After>,
}

/// The L2 tier.
pub struct L2 {
    client: Arc<RedisClient>,
    config: L2Config,
    prefix: String,
    pending: Mutex<VecDeque<PendingMark>>,
    flush: Notify,
}

const MAX_PENDING: usize = 1000;

/// Raises a mark to ARGV[1] unless it is already higher.
const RAISE: &str = "local c = redis.call('GET', KEYS[1]) \
if (not c) or tonumber(c) < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end return 1";
/// Writes a variant, sets the hash's TTL, and keeps at most ARGV[4] variants.
const PUT: &str = "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) \
redis.call('PEXPIRE', KEYS[1], ARGV[3]) \
local n = redis.call('HLEN', KEYS[1]) \
while n > tonumber(ARGV[4]) do \
  local f = redis.call('HRANDFIELD', KEYS[1]) \
  if f ~= ARGV[1] then redis.call('HDEL', KEYS[1], f) n = n - 1 end \
end return 1";
/// Same, for a field of the prefix-marks hash.
const RAISE_FIELD: &str = "local c = redis.call('HGET', KEYS[1], ARGV[1]) \
if (not c) or tonumber(c) < tonumber(ARGV[2]) then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end \
redis.call('PEXPIRE', KEYS[1], ARGV[3]) return 1";

/// The prefix-marks hash's field prefix for `mode`: `h:/path` or `s:/path`.
fn prefix_field(mode: Mode) -> &'static str {
    match mode {
        Mode::Hard => "h",
        Mode::Soft => "s",
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl L2 {
    pub fn start(client: Arc<RedisClient>, config: L2Config) -> Arc<L2> {
        let prefix = format!("{}:v{FORMAT}:", config.prefix);
        let l2 = Arc::new(L2 {
            client,
            config,
            prefix,
            pending: Mutex::new(VecDeque::new()),
            flush: Notify::new(),
        });
        tokio::spawn(l2.clone().flusher());
        l2
    }

    pub fn client(&self) -> &Arc<RedisClient> {
        &self.client
    }

    fn metrics(&self) -> &RedisMetrics {
        self.client.metrics()
    }

    /// The versioned key prefix (`corral:v2:`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The Redis key of `key`'s hash: the prefix, `e:`, and the key as encoded.
    pub fn entry_key(&self, key: KeyRef<'_>) -> String {
        format!("{}e:{}", self.prefix, key.as_str())
    }

    fn mark_key(&self, what: &str, mode: Mode) -> String {
        let suffix = match mode {
            Mode::Hard => "",
            Mode::Soft => ":s",
        };
        format!("{}{{m}}:{what}{suffix}", self.prefix)
    }

    fn mark_ttl_ms(&self) -> u64 {
        (self.config.max_ttl + Duration::from_secs(60)).as_millis() as u64
    }

    /// Looks `key` up for `request`. `Ok(None)` on a miss; an error when Redis could not answer
    /// (error, timeout, breaker open) or while purge marks of this replica are still unwritten
    /// (L2 might not know about them yet).
    pub async fn get(
        &self,
        key: KeyRef<'_>,
        request: &HeaderMap,
        purge_seq: u64,
        keep: Duration,
    ) -> Result<Option<Found>, crate::client::CallError> {
        if !self.pending.lock().is_empty() {
            RedisMetrics::inc(&self.metrics().l2_lookups, "skipped");
            return Err(crate::client::CallError::Refused);
        }
        let start = Instant::now();
        let out = self.get_inner(key, request, purge_seq, keep).await;
        self.metrics()
            .l2_latency
            .observe(start.elapsed().as_secs_f64());
        let kind = match &out {
            Ok(Some(_)) => "hit",
            Ok(None) => "miss",
            Err(crate::client::CallError::Refused) => "skipped",
            Err(_) => "error",
        };
        RedisMetrics::inc(&self.metrics().l2_lookups, kind);
        out
    }

    async fn get_inner(
        &self,
        key: KeyRef<'_>,
        request: &HeaderMap,
        purge_seq: u64,
        keep: Duration,
    ) -> Result<Option<Found>, crate::client::CallError> {
        let ekey = self.entry_key(key);
        let fields: Vec<(String, Vec<u8>)> =
            self.client.call(redis::cmd("HGETALL").arg(&ekey)).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let now = SystemTime::now();
        let mut best: Option<(String, Entry)> = None;
        for (field, bytes) in fields {
            let Ok(mut record) = codec::decode(&bytes, self.config.max_object_size) else {
                continue; // unreadable: treat as absent (it expires by TTL)
            };
            // A record stored under another key's name is not this key's, whoever wrote it.
            if record.key != key || !record.variant.matches(request) {
                continue;
            }
            record.beyond = keep; // how long it stays usable is the reader's policy
            let entry = record.into_entry(purge_seq);
            if entry.expires_at() <= now {
                continue;
            }
            if best
                .as_ref()
                .is_none_or(|(_, b)| b.timing().response_time < entry.timing().response_time)
            {
                best = Some((field, entry));
            }
        }
        let Some((field, entry)) = best else {
            return Ok(None);
        };
        // Judge it against the purge marks.
        let mut names = vec![
            self.mark_key("all", Mode::Hard),
            self.mark_key("all", Mode::Soft),
        ];
        for t in entry.tags() {
            names.push(self.mark_key(&format!("t:{t}"), Mode::Hard));
            names.push(self.mark_key(&format!("t:{t}"), Mode::Soft));
        }
        // A bare path's mark (every host), then this host's: as `UrlTarget::as_str` names them.
        for u in [key.path_and_query(), key.target()] {
            names.push(self.mark_key(&format!("u:{u}"), Mode::Hard));
            names.push(self.mark_key(&format!("u:{u}"), Mode::Soft));
        }
        let mut p = redis::pipe();
        p.cmd("MGET").arg(&names);
        p.cmd("HGETALL").arg(self.mark_key("prefixes", Mode::Hard));
        let (marks, prefixes): (Vec<Option<u64>>, Vec<(String, u64)>) =
            self.client.pipe(&p).await?;
        let fetched = WallMs::of(entry.timing().request_time);
        // MGET answers in the order asked: each name's hard mark, then its soft one.
        let mode_of = |i: usize| {
            if i.is_multiple_of(2) {
                Mode::Hard
            } else {
                Mode::Soft
            }
        };
        let named =
            (marks.iter().enumerate()).filter_map(|(i, m)| Some((mode_of(i), WallMs((*m)?))));
        let path = key.path();
        let by_prefix = prefixes.iter().filter_map(|(field, at)| {
            let mode = match field.split_once(':')? {
                ("h", pre) if path.starts_with(pre) => Mode::Hard,
                ("s", pre) if path.starts_with(pre) => Mode::Soft,
                _ => return None,
            };
            Some((mode, WallMs(*at)))
        });
        let verdict = judge(fetched, named.chain(by_prefix));
        if verdict == Verdict::Gone {
            let client = self.client.clone();
            tokio::spawn(async move {
                let _: Result<Value, _> =
                    client.call(redis::cmd("HDEL").arg(ekey).arg(field)).await;
            });
            return Ok(None);
        }
        Ok(Some(Found { entry, verdict }))
    }

    /// Writes `entry` behind the caller's back (never awaited by a client), then runs `after`
    /// (releasing the fill lease, which wakes the replicas waiting for this fill). When the
    /// entry is not written, `after` is dropped unrun (a lease releases itself on drop).
    pub fn put(
        self: &Arc<Self>,
        key: KeyRef<'_>,
        entry: Entry,
        after: Option<futures_util::future::BoxFuture<'static, ()>>,
    ) {
        if entry.body_bytes().len() > self.config.max_object_size {
            RedisMetrics::inc(&self.metrics().l2_writes, "too_large");
            return; // the lease, if any, is released by its drop
        }
        let Some(delay) = self.client.limiter.admit() else {
            RedisMetrics::inc(&self.metrics().l2_writes, "rate_limited");
            return;
        };
        let ttl = entry
            .expires_at()
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .min(self.config.max_ttl);
        if ttl < Duration::from_millis(10) {
            return;
        }
        let me = self.clone();
        let ekey = self.entry_key(key);
        tokio::spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let bytes = codec::encode(&entry);
            let mut p = redis::pipe();
            p.cmd("EVAL")
                .arg(PUT)
                .arg(1)
                .arg(&ekey)
                .arg(codec::variant_field(entry.variant()))
                .arg(&bytes[..])
                .arg(ttl.as_millis() as u64)
                .arg(me.config.max_variants.max(1))
                .ignore();
            let r: Result<(), _> = me.client.pipe(&p).await;
            let kind = match r {
                Ok(()) => "stored",
                Err(crate::client::CallError::Refused) => "skipped",
                Err(_) => "error",
            };
            RedisMetrics::inc(&me.metrics().l2_writes, kind);
            if let Some(after) = after {
                after.await;
            }
        });
    }

    /// Records a purge in L2 (marks), at `at_ms` (the event's time). `after` runs once the marks
    /// are written. Until then, and while Redis cannot take them, L2 is not read.
    pub fn purge(&self, purge: &Purge, at_ms: u64, after: Option<After>) {
        let mut q = self.pending.lock();
        if q.len() >= MAX_PENDING {
            // Too much to remember: one mark for everything covers it all.
            let afters: Vec<After> = q.drain(..).filter_map(|m| m.after).collect();
            q.push_back(PendingMark {
                purge: Purge::hard().all(),
                at_ms: now_ms(),
                after: Some(Box::new(move || afters.into_iter().for_each(|f| f()))),
            });
        }
        q.push_back(PendingMark {
            purge: purge.clone(),
            at_ms,
            after,
        });
        self.metrics().marks_pending.set(q.len() as i64);
        drop(q);
        self.flush.notify_one();
    }

    async fn flusher(self: Arc<Self>) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
        loop {
            let next = {
                let q = self.pending.lock();
                q.front().map(|m| (m.purge.clone(), m.at_ms))
            };
            let Some((purge, at)) = next else {
                self.flush.notified().await;
                continue;
            };
            match self.write_marks(&purge, at).await {
                Ok(()) => {
                    let done = self.pending.lock().pop_front();
                    self.metrics()
                        .marks_pending
                        .set(self.pending.lock().len() as i64);
                    if let Some(f) = done.and_then(|m| m.after) {
                        f();
                    }
                    backoff.reset();
                }
                Err(e) => {
                    tracing::debug!(error = %e, "purge marks not written yet; retrying");
                    backoff.wait().await;
                }
            }
        }
    }

    async fn write_marks(&self, purge: &Purge, at: u64) -> Result<(), crate::client::CallError> {
        let (s, mode) = (&purge.selectors, purge.mode);
        let ttl = self.mark_ttl_ms();
        let mut p = redis::pipe();
        let mut raise = |what: String| {
            p.cmd("EVAL")
                .arg(RAISE)
                .arg(1)
                .arg(self.mark_key(&what, mode))
                .arg(at)
                .arg(ttl)
                .ignore();
        };
        if s.all {
            raise("all".into());
        }
        for t in &s.tags {
            raise(format!("t:{t}"));
        }
        for u in &s.urls {
            if let Some(target) = UrlTarget::parse(u) {
                raise(format!("u:{}", target.as_str()));
            }
        }
        for pre in &s.prefixes {
            // Normalised as request paths are, as the in-process store does.
            let pre = corral_core::target::normalize_prefix(pre).unwrap_or_else(|| pre.clone());
            p.cmd("EVAL")
                .arg(RAISE_FIELD)
                .arg(1)
                .arg(self.mark_key("prefixes", Mode::Hard))
                .arg(format!("{}:{pre}", prefix_field(mode)))
                .arg(at)
                .arg(ttl)
                .ignore();
        }
        self.client.pipe(&p).await
    }
}
