//! [`UrlTarget`]: what a URL purge names, normalised as request targets are, in the form the
//! store's and the Redis L2's URL marks are keyed by.

use std::borrow::Borrow;
use std::fmt;

use super::{Key, MethodClass, QueryPolicy, Scheme};

/// The target of a URL purge: `host|path?query` for an absolute URL (one host), or
/// `path?query` for a bare path (every host). The host and path are normalised as request
/// targets are (see [`crate::target`]) and the query as every key's is, so a purge covers
/// every spelling of the URL that maps to the same key (`/a/../b`, `/%62`, `HOST:80`, `?b&a`).
///
/// Its string ([`UrlTarget::as_str`]) is the mark key, the `u:` mark name in Redis: a key is
/// covered by the marks of its [`target`](super::KeyRef::target) and of its
/// [`path_and_query`](super::KeyRef::path_and_query).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct UrlTarget(Box<str>);

impl UrlTarget {
    /// The target of a purge URL: a bare path (`/...`) or an `http://` or `https://` URL.
    /// `None` for anything else, or for a URL whose host or path a request could not have.
    pub fn parse(url: &str) -> Option<UrlTarget> {
        if url.starts_with('/') {
            return normalize_path_and_query(url).map(|pq| UrlTarget(pq.into()));
        }
        let (rest, default_port) = match url.strip_prefix("http://") {
            Some(r) => (r, 80),
            None => (url.strip_prefix("https://")?, 443),
        };
        let (host, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let host = crate::target::normalize_host(host, default_port).ok()?;
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        let pq = normalize_path_and_query(&path)?;
        Some(UrlTarget(format!("{host}|{pq}").into()))
    }

    /// The host it names; `None` for a bare path, which names every host. (A bare path
    /// starts with `/`, a host never does; a path may hold `|`, a host never does.)
    pub fn host(&self) -> Option<&str> {
        self.split().0
    }

    /// The normalised path and query.
    pub fn path_and_query(&self) -> &str {
        self.split().1
    }

    fn split(&self) -> (Option<&str>, &str) {
        if self.0.starts_with('/') {
            return (None, &self.0);
        }
        match self.0.split_once('|') {
            Some((host, pq)) => (Some(host), pq),
            None => (None, &self.0), // never made by `parse`
        }
    }

    /// The mark key: `host|path?query` or `path?query`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The primary keys it names on `host` (its own host, if it has one): the one method
    /// class whose responses are stored, under either scheme (a URL purge covers both).
    pub fn keys_on(&self, host: &str) -> [Key; 2] {
        let host = self.host().unwrap_or(host);
        let pq = self.path_and_query();
        Scheme::ALL.map(|scheme| {
            let mut key = String::with_capacity(4 + host.len() + pq.len());
            scheme.push_tag(MethodClass::Get, &mut key);
            key.push('|');
            key.push_str(host);
            key.push('|');
            key.push_str(pq);
            Key::from_encoded(key)
        })
    }
}

/// Marks are found by the `&str` a key's parts give, without building a target.
impl Borrow<str> for UrlTarget {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UrlTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host() {
            Some(host) => write!(f, "{host}{}", self.path_and_query()),
            None => f.write_str(&self.0),
        }
    }
}

impl fmt::Debug for UrlTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// Normalises the path as request paths are, sorts the query and drops empty parameters, as
/// every key does, so a purge URL matches whatever spelling and order it was given in.
fn normalize_path_and_query(pq: &str) -> Option<String> {
    let (path, query) = match pq.split_once('?') {
        None => (pq, None),
        Some((path, query)) => (path, Some(query)),
    };
    let path = crate::target::normalize_path(path).ok()?;
    let q = query.map(|q| QueryPolicy::default().normalize(q));
    Some(match q {
        Some(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path.into_owned(),
    })
}
