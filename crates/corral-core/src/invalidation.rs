//! The invalidation event: the one type every purge becomes, whoever asked for it.
//!
//! An admin `POST /purge`, a `PURGE` request, an unsafe method's write-through invalidation and
//! a peer's broadcast all produce an [`InvalidationEvent`]. The store applies it; the cluster
//! layer numbers, signs and broadcasts it; subscribers (SSE, webhooks) receive it. Events are
//! idempotent: applying one twice purges nothing more.

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
            if crate::store::url_target(u).is_none() {
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

/// One invalidation, as applied locally and broadcast to peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvalidationEvent {
    /// Globally unique: `{origin}-{epoch}-{seq}`. Receivers dedupe on it.
    pub id: String,
    /// The replica that created the event (its instance name).
    pub origin: String,
    /// The origin's epoch: a restarted replica starts a new one (a new epoch is not a gap).
    pub epoch: u64,
    /// Sequence number within (origin, epoch), from 1, without holes.
    pub seq: u64,
    pub selectors: Selectors,
    /// Soft: mark stale (revalidate next time; stale-if-error may still serve) instead of drop.
    pub soft: bool,
    /// Creation time, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    pub cause: Cause,
}

impl InvalidationEvent {
    /// The canonical event id.
    pub fn make_id(origin: &str, epoch: u64, seq: u64) -> String {
        format!("{origin}-{epoch:x}-{seq}")
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
    pub fn next(&self, selectors: Selectors, soft: bool, cause: Cause) -> InvalidationEvent {
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1;
        InvalidationEvent {
            id: InvalidationEvent::make_id(&self.origin, self.epoch, seq),
            origin: self.origin.clone(),
            epoch: self.epoch,
            seq,
            selectors,
            soft,
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
        let a = s.next(Selectors::default(), false, Cause::Admin);
        let b = s.next(Selectors::default(), true, Cause::Admin);
        assert_eq!((a.seq, b.seq), (1, 2));
        assert_ne!(a.id, b.id);
        let json = serde_json::to_string(&b).unwrap();
        let back: InvalidationEvent = serde_json::from_str(&json).unwrap();
        assert_eq!(back, b);
    }
}
