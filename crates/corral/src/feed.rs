//! The invalidation feed for co-located apps (`GET /_corral/v1/subscribe`, wire format in
//! `docs/feed.md`): every event applied on this replica, numbered in the order it was applied,
//! kept in a bounded replay window so a subscriber that reconnects with `Last-Event-ID` gets
//! exactly what it missed, or an `event: gap` when that is no longer possible. It is a
//! [`Subscriber`] of the invalidation hub (`corral_cluster::hub`), added before any event can
//! be applied, so it numbers every one: local, from peers, resets.
//!
//! Invariants:
//! * Feed sequence numbers start at 1 and have no holes; the window holds the newest events, at
//!   most `capacity` of them and [`MAX_WINDOW_BYTES`] of their JSON.
//! * An id is `{epoch:x}:{seq}`, the epoch being this process's (random, see
//!   [`corral_core::EventSource`]): an id from another process, or one older than the window,
//!   can never be mistaken for a position in this one.
//! * A stream sends each retained event after its starting position once, in order; when it
//!   falls behind the window it says `gap` and goes on from the newest event.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use corral_cluster::hub::{Applied, Subscriber};
use corral_core::InvalidationEvent;
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

/// The most JSON the replay window holds, whatever its event count.
pub const MAX_WINDOW_BYTES: usize = 32 << 20;

/// Events read from the window in one step of a stream.
const BATCH: usize = 256;

/// `[admin] feed_replay` and `feed_keepalive`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedConfig {
    /// Events kept for resumption.
    pub replay: usize,
    /// How often an idle stream sends a comment (and carries its position, when filtered).
    pub keepalive: Duration,
}

impl Default for FeedConfig {
    fn default() -> Self {
        FeedConfig {
            replay: 4096,
            keepalive: Duration::from_secs(15),
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// `corral_feed_*`: who follows the feed and how often it could not resume.
#[derive(Clone, Default)]
pub struct FeedMetrics {
    subscribers: Gauge,
    resumed: Counter,
    gaps: Family<ReasonLabel, Counter>,
}

impl FeedMetrics {
    pub fn register(r: &mut Registry) -> FeedMetrics {
        let m = FeedMetrics::default();
        r.register(
            "corral_feed_subscribers",
            "Open GET /_corral/v1/subscribe streams",
            m.subscribers.clone(),
        );
        r.register(
            "corral_feed_resumed",
            "Subscribe streams that resumed from Last-Event-ID with nothing missed",
            m.resumed.clone(),
        );
        r.register(
            "corral_feed_gaps",
            "Gaps sent to subscribers, by reason (too_old, other_instance, unknown_id, lagged)",
            m.gaps.clone(),
        );
        m
    }

    fn gap(&self, reason: GapReason) {
        self.gaps
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .inc();
    }
}

/// The replay window and the head position subscribers wait on.
pub struct Feed {
    epoch: u64,
    instance: String,
    capacity: usize,
    keepalive: Duration,
    metrics: FeedMetrics,
    window: Mutex<Window>,
    head: watch::Sender<u64>,
}

#[derive(Default)]
struct Window {
    events: VecDeque<Entry>,
    bytes: usize,
    last: u64,
}

#[derive(Clone)]
struct Entry {
    seq: u64,
    event: Arc<InvalidationEvent>,
    json: Arc<str>,
}

/// Why a stream could not resume where its subscriber asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapReason {
    /// The id is older than the replay window.
    TooOld,
    /// The id comes from another process (a restart, another replica).
    OtherInstance,
    /// The id is not one this feed makes, or names a position it has not reached.
    UnknownId,
    /// The subscriber read more slowly than events arrived and fell behind the window.
    Lagged,
}

impl GapReason {
    pub fn as_str(self) -> &'static str {
        match self {
            GapReason::TooOld => "too_old",
            GapReason::OtherInstance => "other_instance",
            GapReason::UnknownId => "unknown_id",
            GapReason::Lagged => "lagged",
        }
    }
}

/// Where a new stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// No `Last-Event-ID`: from now on.
    Fresh,
    /// After this position, replaying what the window holds.
    Resume(u64),
    /// From now on, after telling the subscriber why it cannot resume.
    Gap(GapReason),
}

impl Feed {
    pub fn new(epoch: u64, instance: String, config: FeedConfig, metrics: FeedMetrics) -> Feed {
        Feed {
            epoch,
            instance,
            capacity: config.replay,
            keepalive: config.keepalive,
            metrics,
            window: Mutex::default(),
            head: watch::channel(0).0,
        }
    }

    /// Numbers `event` and keeps it in the window (dropping the oldest beyond the bounds).
    pub fn publish(&self, event: &Arc<InvalidationEvent>) {
        let json: Arc<str> = match serde_json::to_string(&**event) {
            Ok(j) => j.into(),
            Err(_) => return,
        };
        let seq = {
            let mut w = self.window.lock();
            w.last += 1;
            let seq = w.last;
            w.bytes += json.len();
            w.events.push_back(Entry {
                seq,
                event: event.clone(),
                json,
            });
            while w.events.len() > self.capacity.max(1)
                || (w.bytes > MAX_WINDOW_BYTES && w.events.len() > 1)
            {
                if let Some(old) = w.events.pop_front() {
                    w.bytes -= old.json.len();
                }
            }
            seq
        };
        self.head.send_replace(seq);
    }

    /// The id of position `seq`.
    pub fn id(&self, seq: u64) -> String {
        format!("{:x}:{seq}", self.epoch)
    }

    /// The newest position.
    pub fn head(&self) -> u64 {
        self.window.lock().last
    }

    /// Where a stream whose subscriber sent `last_event_id` starts.
    pub fn start(&self, last_event_id: Option<&str>) -> Start {
        let Some(id) = last_event_id.map(str::trim).filter(|s| !s.is_empty()) else {
            return Start::Fresh;
        };
        let Some((epoch, seq)) = id.split_once(':') else {
            return Start::Gap(GapReason::UnknownId);
        };
        let (Ok(epoch), Ok(seq)) = (u64::from_str_radix(epoch, 16), seq.parse::<u64>()) else {
            return Start::Gap(GapReason::UnknownId);
        };
        if epoch != self.epoch {
            return Start::Gap(GapReason::OtherInstance);
        }
        let w = self.window.lock();
        if seq > w.last {
            return Start::Gap(GapReason::UnknownId);
        }
        // Resumable when every event after `seq` is still held.
        let oldest = w.events.front().map_or(w.last + 1, |e| e.seq);
        if seq + 1 < oldest {
            return Start::Gap(GapReason::TooOld);
        }
        Start::Resume(seq)
    }

    /// Up to `max` events after position `after`, or `Err(())` when some of them have left
    /// the window.
    fn after(&self, after: u64, max: usize) -> Result<Vec<Entry>, ()> {
        let w = self.window.lock();
        let Some(first) = w.events.front() else {
            return Ok(Vec::new());
        };
        if after + 1 < first.seq {
            return Err(());
        }
        let skip = (after + 1 - first.seq) as usize;
        Ok(w.events.iter().skip(skip).take(max).cloned().collect())
    }

    /// The first lines of a stream: `hello`, then `gap` if it cannot resume, and the position
    /// it goes on from.
    fn opening(&self, start: Start, last_event_id: Option<&str>) -> (String, u64) {
        let head = self.head();
        let (from, hello_id) = match start {
            Start::Fresh => (head, Some(head)),
            Start::Resume(seq) => (seq, Some(seq)),
            Start::Gap(_) => (head, None),
        };
        let hello = serde_json::json!({
            "instance": self.instance,
            "epoch": format!("{:x}", self.epoch),
            "head": self.id(head),
            "replay_window": self.capacity,
            "keepalive_ms": self.keepalive.as_millis() as u64,
            "resumed": matches!(start, Start::Resume(_)),
        });
        let mut out = String::new();
        block(
            &mut out,
            "hello",
            hello_id.map(|s| self.id(s)),
            &hello.to_string(),
        );
        match start {
            Start::Fresh => {}
            Start::Resume(_) => {
                self.metrics.resumed.inc();
            }
            Start::Gap(reason) => {
                self.metrics.gap(reason);
                let data = serde_json::json!({
                    "reason": reason.as_str(),
                    "last_event_id": last_event_id,
                    "resume_from": self.id(head),
                });
                block(&mut out, "gap", Some(self.id(head)), &data.to_string());
            }
        }
        (out, from)
    }
}

/// Every event the hub applies is numbered, whatever its provenance.
impl Subscriber for Feed {
    fn applied(&self, applied: &Applied<'_>) {
        self.publish(applied.event);
    }
}

/// Writes one SSE block.
fn block(out: &mut String, event: &str, id: Option<String>, data: &str) {
    let _ = writeln!(out, "event: {event}");
    if let Some(id) = id {
        let _ = writeln!(out, "id: {id}");
    }
    let _ = write!(out, "data: {data}\n\n");
}

/// Which events a subscriber wants (`?tag=`, `?prefix=`); empty = all of them.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// Exact tags, or tag prefixes (a pattern ending in `*`).
    tags: Vec<(String, bool)>,
    prefixes: Vec<String>,
}

/// Bounds on a subscriber's filters.
const MAX_FILTERS: usize = 100;
const MAX_FILTER_LEN: usize = 2048;

impl Filter {
    /// Parses the query parameters, naming the first bad one.
    pub fn parse(params: &[(String, String)]) -> Result<Filter, String> {
        let mut f = Filter::default();
        if params.len() > MAX_FILTERS {
            return Err(format!(
                "too many filters: {} (at most {MAX_FILTERS})",
                params.len()
            ));
        }
        for (name, value) in params {
            if value.is_empty() || value.len() > MAX_FILTER_LEN {
                return Err(format!(
                    "{name} must be 1 to {MAX_FILTER_LEN} bytes long, got {}",
                    value.len()
                ));
            }
            if value.chars().any(char::is_control) {
                return Err(format!("{name} = {value:?} contains control characters"));
            }
            match name.as_str() {
                "tag" => {
                    let (text, glob) = match value.strip_suffix('*') {
                        Some(p) => (p, true),
                        None => (value.as_str(), false),
                    };
                    if text.contains('*') {
                        return Err(format!(
                            "tag = {value:?}: `*` may only end a pattern (price-*)"
                        ));
                    }
                    f.tags.push((text.to_string(), glob));
                }
                "prefix" => {
                    if !value.starts_with('/') {
                        return Err(format!("prefix = {value:?} must be a path starting with /"));
                    }
                    f.prefixes.push(value.clone());
                }
                other => {
                    return Err(format!(
                        "unknown parameter {other:?}: the feed takes `tag` and `prefix`"
                    ))
                }
            }
        }
        Ok(f)
    }

    fn is_empty(&self) -> bool {
        self.tags.is_empty() && self.prefixes.is_empty()
    }

    /// True when the event could touch what the filter names: an `all` event always; a tag
    /// equal to (or starting with) a tag pattern; a URL whose path starts with a prefix; a
    /// prefix selector inside a filter prefix or covering it.
    pub fn matches(&self, e: &InvalidationEvent) -> bool {
        let s = e.selectors();
        if self.is_empty() || s.all {
            return true;
        }
        let tag_hit = s.tags.iter().any(|t| {
            self.tags.iter().any(|(p, glob)| {
                if *glob {
                    t.starts_with(p.as_str())
                } else {
                    t == p
                }
            })
        });
        tag_hit
            || s.urls.iter().any(|u| {
                let path = url_path(u);
                self.prefixes.iter().any(|p| path.starts_with(p.as_str()))
            })
            || s.prefixes.iter().any(|sp| {
                self.prefixes
                    .iter()
                    .any(|p| sp.starts_with(p.as_str()) || p.starts_with(sp.as_str()))
            })
    }
}

/// The path (and query) of a purge URL: itself when it is a path, else what follows the host.
fn url_path(u: &str) -> &str {
    if u.starts_with('/') {
        return u;
    }
    let rest = u
        .strip_prefix("http://")
        .or_else(|| u.strip_prefix("https://"))
        .unwrap_or(u);
    rest.find('/').map_or("/", |i| &rest[i..])
}

/// One subscriber's stream.
struct Stream {
    feed: Arc<Feed>,
    filter: Filter,
    /// The position read up to.
    cursor: u64,
    /// The position whose id the subscriber last received.
    told: u64,
    head: watch::Receiver<u64>,
    keepalive: tokio::time::Interval,
    opening: Option<String>,
}

/// The body of a subscription: SSE text, ending only when the client goes away.
pub fn stream(
    feed: Arc<Feed>,
    filter: Filter,
    last_event_id: Option<&str>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> {
    let start = feed.start(last_event_id);
    // Subscribed before the opening is written: nothing published after it is missed.
    let head = feed.head.subscribe();
    let (opening, from) = feed.opening(start, last_event_id);
    feed.metrics.subscribers.inc();
    let mut keepalive = tokio::time::interval(feed.keepalive);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let st = Stream {
        feed,
        filter,
        cursor: from,
        told: from,
        head,
        keepalive,
        opening: Some(opening),
    };
    futures_util::stream::unfold(st, |mut st| async move {
        let chunk = st.next().await?;
        Some((Ok(Bytes::from(chunk)), st))
    })
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.feed.metrics.subscribers.dec();
    }
}

impl Stream {
    async fn next(&mut self) -> Option<String> {
        if let Some(o) = self.opening.take() {
            // The first tick of an interval is immediate; the opening stands for it.
            self.keepalive.tick().await;
            return Some(o);
        }
        loop {
            self.head.borrow_and_update();
            match self.feed.after(self.cursor, BATCH) {
                Ok(entries) if !entries.is_empty() => {
                    let mut out = String::new();
                    for e in entries {
                        self.cursor = e.seq;
                        if self.filter.matches(&e.event) {
                            block(&mut out, "invalidation", Some(self.feed.id(e.seq)), &e.json);
                            self.told = e.seq;
                        }
                    }
                    if !out.is_empty() {
                        return Some(out);
                    }
                    continue;
                }
                Ok(_) => {}
                Err(()) => {
                    self.feed.metrics.gap(GapReason::Lagged);
                    let head = self.feed.head();
                    let data = serde_json::json!({
                        "reason": GapReason::Lagged.as_str(),
                        "last_event_id": self.feed.id(self.told),
                        "resume_from": self.feed.id(head),
                    });
                    let mut out = String::new();
                    block(&mut out, "gap", Some(self.feed.id(head)), &data.to_string());
                    // For consumers that predate `gap` (corral-cache's sidecar).
                    block(&mut out, "reset", None, "{\"missed\": true}");
                    self.cursor = head;
                    self.told = head;
                    return Some(out);
                }
            }
            tokio::select! {
                changed = self.head.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                _ = self.keepalive.tick() => {
                    // Filtered-out events still move the subscriber's position: an id-only
                    // block carries it, so a reconnect resumes from here, not from before them.
                    if self.told < self.cursor {
                        self.told = self.cursor;
                        return Some(format!(": keep-alive\nid: {}\n\n", self.feed.id(self.cursor)));
                    }
                    return Some(": keep-alive\n\n".to_string());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_core::{Cause, EventSource, Selectors};

    fn event(
        src: &EventSource,
        tags: &[&str],
        urls: &[&str],
        prefixes: &[&str],
    ) -> Arc<InvalidationEvent> {
        let selectors = Selectors {
            tags: tags.iter().map(|s| s.to_string()).collect(),
            urls: urls.iter().map(|s| s.to_string()).collect(),
            prefixes: prefixes.iter().map(|s| s.to_string()).collect(),
            all: false,
        };
        Arc::new(src.next(
            corral_core::Purge::new(selectors, corral_core::Mode::Hard),
            Cause::Admin,
        ))
    }

    #[test]
    fn resuming_is_possible_exactly_while_the_window_holds_what_follows() {
        let src = EventSource::new("a");
        let feed = Feed::new(
            src.epoch(),
            "a".into(),
            FeedConfig {
                replay: 3,
                ..FeedConfig::default()
            },
            FeedMetrics::default(),
        );
        let id = |s| feed.id(s);
        assert_eq!(feed.start(None), Start::Fresh);
        assert_eq!(feed.start(Some(&id(0))), Start::Resume(0));
        assert_eq!(
            feed.start(Some(&id(1))),
            Start::Gap(GapReason::UnknownId),
            "not reached yet"
        );
        for _ in 0..5 {
            feed.publish(&event(&src, &["t"], &[], &[]));
        }
        // Window: 3, 4, 5.
        assert_eq!(feed.start(Some(&id(2))), Start::Resume(2));
        assert_eq!(feed.start(Some(&id(5))), Start::Resume(5));
        assert_eq!(feed.start(Some(&id(1))), Start::Gap(GapReason::TooOld));
        let other = format!("{:x}:2", src.epoch() ^ 1);
        assert_eq!(
            feed.start(Some(&other)),
            Start::Gap(GapReason::OtherInstance)
        );
        for bad in ["garbage", "zz:1", "1:-3", "a-1-2"] {
            assert_eq!(
                feed.start(Some(bad)),
                Start::Gap(GapReason::UnknownId),
                "{bad}"
            );
        }
        let seqs: Vec<u64> = feed.after(2, 10).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![3, 4, 5]);
        assert!(feed.after(1, 10).is_err());
    }

    /// Reads a stream's next chunk as text.
    async fn chunk(
        s: &mut (impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + Unpin),
    ) -> String {
        use futures_util::StreamExt;
        let b = s.next().await.unwrap().unwrap();
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_stream_that_falls_behind_the_window_says_gap_then_reset_and_goes_on() {
        let src = EventSource::new("a");
        let feed = Arc::new(Feed::new(
            src.epoch(),
            "a".into(),
            FeedConfig {
                replay: 2,
                ..FeedConfig::default()
            },
            FeedMetrics::default(),
        ));
        let mut s = Box::pin(stream(feed.clone(), Filter::default(), None));
        let hello = chunk(&mut s).await;
        assert!(hello.starts_with("event: hello\n"), "{hello}");
        assert!(hello.contains("\"keepalive_ms\":15000"), "{hello}");
        // Three events while the stream is not read: the first has left a window of two.
        for t in ["a", "b", "c"] {
            feed.publish(&event(&src, &[t], &[], &[]));
        }
        let text = chunk(&mut s).await;
        assert!(text.starts_with("event: gap\n"), "{text}");
        assert!(text.contains(&format!("id: {}\n", feed.id(3))), "{text}");
        assert!(text.contains("\"reason\":\"lagged\""), "{text}");
        assert!(text.contains("event: reset\n"), "{text}");
        feed.publish(&event(&src, &["d"], &[], &[]));
        let text = chunk(&mut s).await;
        assert!(text.starts_with("event: invalidation\n"), "{text}");
        assert!(text.contains(&format!("id: {}\n", feed.id(4))), "{text}");
        assert!(text.contains("\"tags\":[\"d\"]"), "{text}");
    }

    #[test]
    fn filters_match_tags_prefixes_and_urls_as_documented() {
        let src = EventSource::new("a");
        let q = |pairs: &[(&str, &str)]| {
            Filter::parse(
                &pairs
                    .iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect::<Vec<_>>(),
            )
        };
        let f = q(&[
            ("tag", "price-*"),
            ("tag", "stock"),
            ("prefix", "/packages/"),
        ])
        .unwrap();
        // (tags, urls, prefixes, matches)
        type Case<'a> = (&'a [&'a str], &'a [&'a str], &'a [&'a str], bool);
        let cases: &[Case] = &[
            (&["price-1"], &[], &[], true),
            (&["price-"], &[], &[], true),
            (&["prices"], &[], &[], false),
            (&["stock"], &[], &[], true),
            (&["stock-1"], &[], &[], false),
            (&[], &["/packages/7"], &[], true),
            (&[], &["http://shop.test/packages/7?x=1"], &[], true),
            (&[], &["/package"], &[], false),
            (&[], &[], &["/packages/7/"], true),
            (&[], &[], &["/"], true),
            (&[], &[], &["/users/"], false),
            (&["other"], &["/users/1"], &[], false),
        ];
        for (tags, urls, prefixes, want) in cases {
            let e = event(&src, tags, urls, prefixes);
            assert_eq!(f.matches(&e), *want, "{tags:?} {urls:?} {prefixes:?}");
        }
        let mut all = (*event(&src, &[], &[], &[])).clone();
        all.purge.selectors.all = true;
        assert!(
            f.matches(&all),
            "a purge of everything reaches every subscriber"
        );
        assert!(q(&[]).unwrap().matches(&event(&src, &["x"], &[], &[])));
        assert!(q(&[("tag", "a*b")]).unwrap_err().contains("may only end"));
        assert!(q(&[("prefix", "packages")])
            .unwrap_err()
            .contains("starting with /"));
        assert!(q(&[("key", "x")])
            .unwrap_err()
            .contains("unknown parameter"));
        assert!(q(&[("tag", "")]).is_err());
    }
}
