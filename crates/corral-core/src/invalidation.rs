//! The invalidation event: the one type every purge becomes, whoever asked for it.
//!
//! An admin `POST /purge`, a `PURGE` request, an unsafe method's write-through invalidation and
//! a peer's broadcast all produce an [`InvalidationEvent`]. The store applies it; the cluster
//! layer numbers, signs and broadcasts it; subscribers (SSE, webhooks) receive it. Events are
//! idempotent: applying one twice purges nothing more.

use std::sync::{Arc, Weak};

use serde::{Deserialize, Serialize};

/// What to purge. Several selectors in one event are applied together, atomically with respect
/// to lookups (they share one purge sequence number).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selectors {
    /// URLs: a path with optional query (`/a?b=1`, every host) or an absolute
    /// `http://host/path` (that host only). Every stored variant goes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// Surrogate keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Path prefixes (`/api/catalog/`), every host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefixes: Vec<String>,
    /// Everything.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
}

impl Selectors {
    /// True when the event selects nothing.
    pub fn is_empty(&self) -> bool {
        self.urls.is_empty() && self.tags.is_empty() && self.prefixes.is_empty() && !self.all
    }

    /// The number of individual selectors, for limits.
    pub fn len(&self) -> usize {
        self.urls.len() + self.tags.len() + self.prefixes.len() + usize::from(self.all)
    }

    /// Checks every selector, naming the first bad one. Nothing is applied from an event that
    /// fails this: a purge is all or nothing.
    pub fn validate(&self, limits: &SelectorLimits) -> Result<(), String> {
        if self.is_empty() {
            return Err("nothing to purge: give urls, tags, prefixes or all".into());
        }
        if self.len() > limits.max_selectors {
            return Err(format!(
                "too many selectors: {} (at most {})",
                self.len(),
                limits.max_selectors
            ));
        }
        for (field, list) in [
            ("urls", &self.urls),
            ("tags", &self.tags),
            ("prefixes", &self.prefixes),
        ] {
            for (i, s) in list.iter().enumerate() {
                if s.is_empty() {
                    return Err(format!("{field}[{i}] is empty"));
                }
                if s.len() > limits.max_selector_len {
                    return Err(format!(
                        "{field}[{i}] is {} bytes long (at most {})",
                        s.len(),
                        limits.max_selector_len
                    ));
                }
                if s.chars().any(char::is_control) {
                    return Err(format!("{field}[{i}] contains control characters"));
                }
            }
        }
        for (i, u) in self.urls.iter().enumerate() {
            if crate::key::UrlTarget::parse(u).is_none() {
                return Err(format!(
                    "urls[{i}] = {u:?} is not a path (/...) or an http(s):// URL"
                ));
            }
        }
        for (i, p) in self.prefixes.iter().enumerate() {
            if !p.starts_with('/') {
                return Err(format!("prefixes[{i}] = {p:?} must start with '/'"));
            }
        }
        Ok(())
    }
}

/// Bounds on one event's selectors.
#[derive(Debug, Clone)]
pub struct SelectorLimits {
    pub max_selectors: usize,
    pub max_selector_len: usize,
}

impl Default for SelectorLimits {
    fn default() -> Self {
        SelectorLimits {
            max_selectors: 1000,
            max_selector_len: 2048,
        }
    }
}

/// Why an invalidation happened. On the wire and in the feed a plain string: `admin`,
/// `purge_method`, `unsafe_method`, or `source:<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// `POST /purge` or `POST /invalidate` on the admin API.
    Admin,
    /// A `PURGE` request on the proxy listener.
    PurgeMethod,
    /// A successful unsafe request (POST, PUT, PATCH, DELETE) through the proxy (RFC 9111 §4.4).
    UnsafeMethod,
    /// A committed change in a database's change stream (`[[sources]]`), by source name.
    Source(String),
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::Admin => f.write_str("admin"),
            Cause::PurgeMethod => f.write_str("purge_method"),
            Cause::UnsafeMethod => f.write_str("unsafe_method"),
            Cause::Source(name) => write!(f, "source:{name}"),
        }
    }
}

impl std::str::FromStr for Cause {
    type Err = String;

    fn from_str(s: &str) -> Result<Cause, String> {
        match s {
            "admin" => Ok(Cause::Admin),
            "purge_method" => Ok(Cause::PurgeMethod),
            "unsafe_method" => Ok(Cause::UnsafeMethod),
            _ => match s.strip_prefix("source:") {
                Some(name) if !name.is_empty() => Ok(Cause::Source(name.to_owned())),
                _ => Err(format!("unknown cause {s:?}")),
            },
        }
    }
}

impl Serialize for Cause {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cause {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Cause, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Whether a purge drops what it covers or only marks it stale.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Drop: covered entries are never served again.
    #[default]
    Hard,
    /// Mark stale: revalidate next time; `stale-if-error` may still serve it.
    Soft,
}

impl Mode {
    /// The mode a wire format's `soft` boolean names.
    pub fn from_soft(soft: bool) -> Mode {
        if soft {
            Mode::Soft
        } else {
            Mode::Hard
        }
    }

    /// True for [`Mode::Soft`]: the wire formats' `soft` boolean.
    pub fn is_soft(self) -> bool {
        self == Mode::Soft
    }

    /// `"hard"` or `"soft"`, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Hard => "hard",
            Mode::Soft => "soft",
        }
    }
}

/// Serde for a [`Mode`] that travels as the `soft` boolean of the wire formats (events, the
/// admin API body, the feed): `#[serde(rename = "soft", with = "soft_flag")]`.
pub mod soft_flag {
    use super::Mode;

    pub fn serialize<S: serde::Serializer>(mode: &Mode, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bool(mode.is_soft())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Mode, D::Error> {
        <bool as serde::Deserialize>::deserialize(d).map(Mode::from_soft)
    }
}

/// One purge: what it selects and how ([`Mode`]). Built like
/// `Purge::soft().tag("product:42").url("/a")`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Purge {
    pub selectors: Selectors,
    pub mode: Mode,
}

impl Purge {
    /// A purge of `selectors` in `mode`.
    pub fn new(selectors: Selectors, mode: Mode) -> Purge {
        Purge { selectors, mode }
    }

    /// An empty hard purge, to add selectors to.
    pub fn hard() -> Purge {
        Purge::new(Selectors::default(), Mode::Hard)
    }

    /// An empty soft purge, to add selectors to.
    pub fn soft() -> Purge {
        Purge::new(Selectors::default(), Mode::Soft)
    }

    /// Adds a URL selector (see [`Selectors::urls`]).
    pub fn url(mut self, url: impl Into<String>) -> Purge {
        self.selectors.urls.push(url.into());
        self
    }

    /// Adds a surrogate key.
    pub fn tag(mut self, tag: impl Into<String>) -> Purge {
        self.selectors.tags.push(tag.into());
        self
    }

    /// Adds a path prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Purge {
        self.selectors.prefixes.push(prefix.into());
        self
    }

    /// Selects everything.
    pub fn all(mut self) -> Purge {
        self.selectors.all = true;
        self
    }

    /// True for a soft purge.
    pub fn is_soft(&self) -> bool {
        self.mode.is_soft()
    }
}

/// Where an invalidation made elsewhere is applied: the one trait for that, whoever delivers
/// and whatever holds the entries. Peers' fan-out (`corral-cluster`), the Redis bus
/// (`corral-redis`) and the sidecar's feed (`corral-cache`) deliver into an applier; the
/// gateway's invalidation hub and each of `corral-cache`'s caches are one, and [`Appliers`]
/// is one made of several. An applier never re-broadcasts what it applies: a remote event is
/// its origin's to fan out.
///
/// The other roles have their own traits: `corral-http`'s `InvalidationSink` and
/// `corral-cache`'s `Publish` *originate* invalidations (applied here, then sent to the
/// others), and the hub's `Subscriber` *observes* every invalidation applied (journal, feed).
pub trait Applier: Send + Sync + 'static {
    /// Applies another replica's event here (the transport has checked its signature and
    /// deduplicated it where it can).
    fn apply_remote(&self, event: &InvalidationEvent);
    /// Events were missed and cannot be recovered: purge everything held here. What is held
    /// in a tier shared with the replicas (an L2) stays: the replicas that applied the missed
    /// events purged it there. `reason` says what was missed; the transport that found the
    /// gap logs it ([`purge_after_unrecoverable_gap`]), an applier need not.
    fn purge_everything(&self, reason: &str);
}

/// What a transport does when it finds a gap no log can fill: logs it under the target the
/// binary has always used (`corral::invalidation`, so one `CORRAL_LOG` filter shows every
/// transport's), then has `applier` purge everything it holds.
pub fn purge_after_unrecoverable_gap(applier: &dyn Applier, reason: &str) {
    tracing::warn!(
        target: "corral::invalidation",
        reason,
        "purging everything: missed invalidations could not be recovered"
    );
    applier.purge_everything(reason);
}

/// A set of appliers that is itself one: what a transport delivers into when it serves several
/// caches. Holds them weakly, so a cache dropped by its owner is skipped (and forgotten at the
/// next [`Appliers::add`]) rather than kept alive by the transport.
#[derive(Default)]
pub struct Appliers(parking_lot::RwLock<Vec<Weak<dyn Applier>>>);

impl Appliers {
    /// Delivers to `applier` too, from now on.
    pub fn add(&self, applier: Weak<dyn Applier>) {
        let mut all = self.0.write();
        all.retain(|a| a.strong_count() > 0);
        all.push(applier);
    }

    /// The appliers still alive, collected first so that none is called under the lock (an
    /// applier may add to the set).
    fn live(&self) -> Vec<Arc<dyn Applier>> {
        self.0.read().iter().filter_map(Weak::upgrade).collect()
    }
}

impl Applier for Appliers {
    fn apply_remote(&self, event: &InvalidationEvent) {
        for a in self.live() {
            a.apply_remote(event);
        }
    }

    fn purge_everything(&self, reason: &str) {
        for a in self.live() {
            a.purge_everything(reason);
        }
    }
}

impl std::fmt::Debug for Appliers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Appliers")
            .field("live", &self.live().len())
            .finish()
    }
}

/// One invalidation, as applied locally and broadcast to peers. On the wire (peers, the feed,
/// webhooks) its purge is two fields, `selectors` and the `soft` boolean, as it always was.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "EventWire")]
pub struct InvalidationEvent {
    /// Globally unique: `{origin}-{epoch}-{seq}`. Receivers dedupe on it.
    pub id: String,
    /// The replica that created the event (its instance name).
    pub origin: String,
    /// The origin's epoch: a restarted replica starts a new one (a new epoch is not a gap).
    pub epoch: u64,
    /// Sequence number within (origin, epoch), from 1, without holes.
    pub seq: u64,
    /// What to purge, and whether to drop or mark stale.
    pub purge: Purge,
    /// Creation time, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    pub cause: Cause,
}

/// An event as it arrives (`soft` a boolean).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventWire {
    id: String,
    origin: String,
    epoch: u64,
    seq: u64,
    selectors: Selectors,
    soft: bool,
    timestamp_ms: u64,
    cause: Cause,
}

/// An event as it leaves: the same fields in the same order, borrowed (an event is serialized
/// for every peer and subscriber).
#[derive(Serialize)]
struct EventOut<'a> {
    id: &'a str,
    origin: &'a str,
    epoch: u64,
    seq: u64,
    selectors: &'a Selectors,
    soft: bool,
    timestamp_ms: u64,
    cause: &'a Cause,
}

impl From<EventWire> for InvalidationEvent {
    fn from(w: EventWire) -> InvalidationEvent {
        InvalidationEvent {
            id: w.id,
            origin: w.origin,
            epoch: w.epoch,
            seq: w.seq,
            purge: Purge::new(w.selectors, Mode::from_soft(w.soft)),
            timestamp_ms: w.timestamp_ms,
            cause: w.cause,
        }
    }
}

impl Serialize for InvalidationEvent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        EventOut {
            id: &self.id,
            origin: &self.origin,
            epoch: self.epoch,
            seq: self.seq,
            selectors: &self.purge.selectors,
            soft: self.purge.is_soft(),
            timestamp_ms: self.timestamp_ms,
            cause: &self.cause,
        }
        .serialize(s)
    }
}

impl InvalidationEvent {
    /// The canonical event id.
    pub fn make_id(origin: &str, epoch: u64, seq: u64) -> String {
        format!("{origin}-{epoch:x}-{seq}")
    }

    /// The event's selectors (`self.purge.selectors`).
    pub fn selectors(&self) -> &Selectors {
        &self.purge.selectors
    }
}

/// Produces this replica's events: one origin name, one epoch per process, gapless sequence.
#[derive(Debug)]
pub struct EventSource {
    origin: String,
    epoch: u64,
    seq: std::sync::atomic::AtomicU64,
}

impl EventSource {
    /// A new source; the epoch is random so a restart never reuses one.
    pub fn new(origin: impl Into<String>) -> Self {
        EventSource {
            origin: origin.into(),
            epoch: rand::random::<u64>() >> 1,
            seq: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The sequence number of the last event made.
    pub fn last_seq(&self) -> u64 {
        self.seq.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Makes the next event.
    pub fn next(&self, purge: Purge, cause: Cause) -> InvalidationEvent {
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1;
        InvalidationEvent {
            id: InvalidationEvent::make_id(&self.origin, self.epoch, seq),
            origin: self.origin.clone(),
            epoch: self.epoch,
            seq,
            purge,
            timestamp_ms: now_ms(),
            cause,
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_travel_as_plain_strings() {
        for (cause, text) in [
            (Cause::Admin, "\"admin\""),
            (Cause::UnsafeMethod, "\"unsafe_method\""),
            (Cause::Source("shop".into()), "\"source:shop\""),
        ] {
            assert_eq!(serde_json::to_string(&cause).unwrap(), text);
            assert_eq!(serde_json::from_str::<Cause>(text).unwrap(), cause);
        }
        assert!(serde_json::from_str::<Cause>("\"source:\"").is_err());
        assert!(serde_json::from_str::<Cause>("\"bogus\"").is_err());
    }

    #[test]
    fn validation_names_the_problem() {
        let l = SelectorLimits::default();
        assert!(Selectors::default().validate(&l).is_err());
        let s = Selectors {
            prefixes: vec!["api".into()],
            ..Default::default()
        };
        assert!(s.validate(&l).unwrap_err().contains("prefixes[0]"));
        let s = Selectors {
            urls: vec!["ftp://x/y".into()],
            ..Default::default()
        };
        assert!(s.validate(&l).unwrap_err().contains("urls[0]"));
        let s = Selectors {
            tags: vec!["a".into(), "".into()],
            ..Default::default()
        };
        assert!(s.validate(&l).unwrap_err().contains("tags[1]"));
    }

    #[test]
    fn sources_number_without_gaps() {
        let s = EventSource::new("r1");
        let a = s.next(Purge::hard(), Cause::Admin);
        let b = s.next(Purge::soft().tag("t"), Cause::Admin);
        assert_eq!((a.seq, b.seq), (1, 2));
        assert_ne!(a.id, b.id);
        let json = serde_json::to_string(&b).unwrap();
        let back: InvalidationEvent = serde_json::from_str(&json).unwrap();
        assert_eq!(back, b);
    }

    #[test]
    fn the_mode_travels_as_the_soft_boolean() {
        let text = r#"{"id":"a-1-1","origin":"a","epoch":1,"seq":1,"selectors":{"tags":["t"]},"soft":true,"timestamp_ms":5,"cause":"admin"}"#;
        let e: InvalidationEvent = serde_json::from_str(text).unwrap();
        assert_eq!(e.purge, Purge::soft().tag("t"));
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            text,
            "byte for byte, as before"
        );
        let hard = text.replace("true", "false");
        let e: InvalidationEvent = serde_json::from_str(&hard).unwrap();
        assert_eq!(e.purge.mode, Mode::Hard);
        assert_eq!(serde_json::to_string(&e).unwrap(), hard);
        for bad in [
            text.replace("\"soft\"", "\"mode\""),
            text.replace(",\"soft\":true", ""),
        ] {
            assert!(
                serde_json::from_str::<InvalidationEvent>(&bad).is_err(),
                "{bad}"
            );
        }
    }

    /// Counts what reaches it, as a cache would apply it.
    #[derive(Default)]
    struct Counting {
        applied: std::sync::atomic::AtomicUsize,
        emptied: std::sync::atomic::AtomicUsize,
    }

    impl Applier for Counting {
        fn apply_remote(&self, _: &InvalidationEvent) {
            self.applied
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        fn purge_everything(&self, _: &str) {
            self.emptied
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[test]
    fn appliers_deliver_to_each_live_member_and_skip_dropped_ones() {
        use std::sync::atomic::Ordering::Relaxed;
        let (kept, dropped) = (Arc::new(Counting::default()), Arc::new(Counting::default()));
        let set = Appliers::default();
        for a in [&kept, &dropped] {
            let a: Arc<dyn Applier> = a.clone();
            set.add(Arc::downgrade(&a));
        }
        let event = InvalidationEvent {
            id: InvalidationEvent::make_id("a", 1, 1),
            origin: "a".into(),
            epoch: 1,
            seq: 1,
            purge: Purge::hard().tag("t"),
            timestamp_ms: 5,
            cause: Cause::Admin,
        };
        set.apply_remote(&event);
        let dropped_seen = dropped.applied.load(Relaxed);
        drop(dropped);
        set.apply_remote(&event);
        set.purge_everything("a gap");
        assert_eq!(
            kept.applied.load(Relaxed),
            2,
            "the live member gets every event"
        );
        assert_eq!(kept.emptied.load(Relaxed), 1, "and the purge of everything");
        assert_eq!(dropped_seen, 1, "a member gets events while it lives");
        assert_eq!(format!("{set:?}"), "Appliers { live: 1 }");
    }
}
