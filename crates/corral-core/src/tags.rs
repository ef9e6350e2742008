//! Surrogate keys (tags): read from response headers, bounded, and stored with the entry.
//!
//! `Surrogate-Key` is space-separated (Fastly); `Cache-Tag` is comma-separated (Cloudflare).
//! Tags are case-sensitive, as both conventions have it.

use std::sync::Arc;

use http::HeaderMap;

/// One surrogate key.
pub type Tag = Arc<str>;

/// Where tags come from and how many are kept.
#[derive(Debug, Clone)]
pub struct TagPolicy {
    /// Header names whose values are space-separated tags.
    pub space_separated: Vec<http::HeaderName>,
    /// Header names whose values are comma-separated tags.
    pub comma_separated: Vec<http::HeaderName>,
    /// Tags beyond this count are ignored (and counted).
    pub max_tags: usize,
    /// Tags longer than this are ignored.
    pub max_tag_len: usize,
    /// Pass the tag headers on to clients (off by default: they are the origin's business).
    pub expose: bool,
}

impl Default for TagPolicy {
    fn default() -> Self {
        TagPolicy {
            space_separated: vec![http::HeaderName::from_static("surrogate-key")],
            comma_separated: vec![http::HeaderName::from_static("cache-tag")],
            max_tags: 64,
            max_tag_len: 256,
            expose: false,
        }
    }
}

/// Tags read from a response, and how many were dropped by the limits.
#[derive(Debug, Default)]
pub struct ParsedTags {
    pub tags: Vec<Tag>,
    pub dropped: usize,
}

impl TagPolicy {
    /// Reads the tags of a response (deduplicated, order kept).
    pub fn parse(&self, headers: &HeaderMap) -> ParsedTags {
        let mut out = ParsedTags::default();
        let mut add = |t: &str| {
            let t = t.trim();
            if t.is_empty() || out.tags.iter().any(|x| &**x == t) {
                return;
            }
            if t.len() > self.max_tag_len || out.tags.len() >= self.max_tags {
                out.dropped += 1;
                return;
            }
            out.tags.push(Arc::from(t));
        };
        for name in &self.space_separated {
            for v in headers.get_all(name) {
                String::from_utf8_lossy(v.as_bytes())
                    .split_ascii_whitespace()
                    .for_each(&mut add);
            }
        }
        for name in &self.comma_separated {
            for v in headers.get_all(name) {
                String::from_utf8_lossy(v.as_bytes())
                    .split(',')
                    .for_each(&mut add);
            }
        }
        out
    }

    /// Removes the tag headers from what the client receives, unless exposed.
    pub fn strip(&self, headers: &mut HeaderMap) {
        if self.expose {
            return;
        }
        for name in self.space_separated.iter().chain(&self.comma_separated) {
            headers.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_conventions_deduped_and_bounded() {
        let mut h = HeaderMap::new();
        h.insert("surrogate-key", "a b  c a".parse().unwrap());
        h.append("cache-tag", "c, d,,e".parse().unwrap());
        let p = TagPolicy {
            max_tags: 4,
            ..Default::default()
        };
        let t = p.parse(&h);
        let names: Vec<&str> = t.tags.iter().map(|t| &**t).collect();
        assert_eq!(names, ["a", "b", "c", "d"]);
        assert_eq!(t.dropped, 1);
    }

    #[test]
    fn long_tags_dropped() {
        let mut h = HeaderMap::new();
        h.insert(
            "surrogate-key",
            format!("ok {}", "x".repeat(300)).parse().unwrap(),
        );
        let t = TagPolicy::default().parse(&h);
        assert_eq!(t.tags.len(), 1);
        assert_eq!(t.dropped, 1);
    }
}
