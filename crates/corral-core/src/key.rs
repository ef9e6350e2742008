//! Cache keys: the one place that decides which requests share a stored response.
//!
//! A request maps to a **primary key** — method class, host and path with a normalised query —
//! under which every stored [variant](crate::entry::Variant) of that URL lives. What splits a URL
//! into variants (the response's `Vary`, and the configured `key_headers`) is a secondary key
//! matched among the variants, never part of the primary key: so a URL purge always finds every
//! variant, and `Vary` is honoured exactly rather than guessed.
//!
//! Query normalisation: parameters are sorted (stably, by their raw `name=value` bytes), empty
//! parameters (`&&`) are dropped, and parameters whose *name* matches an ignore pattern
//! (`utm_*`, `fbclid`) are removed. With an allow-list, only the listed names remain.

use std::fmt::Write as _;

/// Which methods share stored responses. GET and HEAD do (RFC 9110 §9.3.2: HEAD is GET
/// without the body); nothing else is looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MethodClass {
    Get,
}

impl MethodClass {
    /// The class of a request method, `None` for methods whose responses are never reused.
    pub fn of(method: &http::Method) -> Option<MethodClass> {
        if method == http::Method::GET || method == http::Method::HEAD {
            Some(MethodClass::Get)
        } else {
            None
        }
    }

    fn tag(self) -> char {
        match self {
            MethodClass::Get => 'G',
        }
    }
}

/// The scheme a request arrived by: the transport of the listener that accepted it, never
/// what the client wrote in its request line or `:scheme`. It splits the primary key, so a
/// response fetched for an `https` request is never served to an `http` one, nor the other
/// way round (`docs/security.md`): the two may differ (HSTS, redirects,
/// `Secure` cookies, mixed-content rewrites). A listener configured to share entries keys its
/// requests as `Http`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Scheme {
    #[default]
    Http,
    Https,
}

impl Scheme {
    /// Both schemes: what a URL purge covers.
    pub const ALL: [Scheme; 2] = [Scheme::Http, Scheme::Https];

    /// The key's first field: the method class, then `s` for https. Plain-HTTP keys keep
    /// their old shape (`G|host|path`).
    fn push_tag(self, class: MethodClass, key: &mut String) {
        key.push(class.tag());
        if self == Scheme::Https {
            key.push('s');
        }
    }
}

/// A glob over query parameter names: `*` matches any run of characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePattern(String);

impl NamePattern {
    pub fn new(pattern: impl Into<String>) -> Self {
        NamePattern(pattern.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Glob match of `name` against the pattern (`*` only; everything else literal).
    pub fn matches(&self, name: &str) -> bool {
        glob(self.0.as_bytes(), name.as_bytes())
    }
}

/// Glob match with `*` as the only wildcard (used for query names and header names alike).
pub(crate) fn glob(p: &[u8], s: &[u8]) -> bool {
    // Iterative wildcard match with single-star backtracking: linear in practice.
    let (mut pi, mut si) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while si < s.len() {
        if pi < p.len() && p[pi] != b'*' && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            pi += 1;
            mark = si;
        } else if let Some(sp) = star {
            pi = sp + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// How query strings enter the key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryPolicy {
    /// Parameter names dropped from the key.
    pub ignore: Vec<NamePattern>,
    /// When set, only these parameter names are kept (applied before `ignore`).
    pub allow: Option<Vec<NamePattern>>,
}

impl QueryPolicy {
    fn keeps(&self, name: &str) -> bool {
        if let Some(allow) = &self.allow {
            if !allow.iter().any(|p| p.matches(name)) {
                return false;
            }
        }
        !self.ignore.iter().any(|p| p.matches(name))
    }

    /// Writes the normalised form of `query` (without `?`) into `out`.
    pub fn normalize_into(&self, query: &str, out: &mut String) {
        let trivial = self.ignore.is_empty() && self.allow.is_none();
        if trivial && !query.contains('&') {
            out.push_str(query);
            return;
        }
        let mut params: Vec<&str> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .filter(|p| self.keeps(param_name(p)))
            .collect();
        params.sort_unstable();
        for (i, p) in params.iter().enumerate() {
            if i > 0 {
                out.push('&');
            }
            out.push_str(p);
        }
    }

    /// The normalised query as a new string.
    pub fn normalize(&self, query: &str) -> String {
        let mut s = String::with_capacity(query.len());
        self.normalize_into(query, &mut s);
        s
    }
}

fn param_name(p: &str) -> &str {
    p.split_once('=').map_or(p, |(n, _)| n)
}

/// Builds the primary key of a request.
///
/// Hosts compare case-insensitively, so the host is lowercased; the path is kept byte for
/// byte (origins may distinguish `%2F` from `/`).
pub fn primary_key(
    class: MethodClass,
    scheme: Scheme,
    host: &str,
    path: &str,
    query: Option<&str>,
    policy: &QueryPolicy,
) -> String {
    let mut key = String::with_capacity(5 + host.len() + path.len() + query.map_or(0, str::len));
    scheme.push_tag(class, &mut key);
    key.push('|');
    push_url(&mut key, host, "|", path, query, policy);
    key
}

/// The URL a purge of this request's target names (`http://host/path?query`, the query
/// normalised as the route keys it): the same host, path and query [`primary_key`] keys, so
/// the purge finds exactly what the request would have stored, under either scheme.
pub fn purge_url(host: &str, path: &str, query: Option<&str>, policy: &QueryPolicy) -> String {
    let mut url = String::with_capacity(8 + host.len() + path.len() + query.map_or(0, str::len));
    url.push_str("http://");
    push_url(&mut url, host, "", path, query, policy);
    url
}

/// Host (lower-cased), `between`, path (`/` when empty) and the normalised query (dropped
/// when nothing of it remains): the part of a key and of a purge URL that must agree.
fn push_url(
    out: &mut String,
    host: &str,
    between: &str,
    path: &str,
    query: Option<&str>,
    policy: &QueryPolicy,
) {
    for c in host.chars() {
        out.push(c.to_ascii_lowercase());
    }
    out.push_str(between);
    out.push_str(if path.is_empty() { "/" } else { path });
    if let Some(q) = query {
        let mark = out.len();
        out.push('?');
        policy.normalize_into(q, out);
        if out.len() == mark + 1 {
            out.truncate(mark);
        }
    }
}

/// The primary keys a URL purge target `host|path?query` names (see `store::url_target`): the
/// one method class whose responses are stored, under either scheme (a URL purge covers both).
pub fn keys_of_target(host_and_path_and_query: &str) -> [String; 2] {
    Scheme::ALL.map(|scheme| {
        let mut key = String::with_capacity(3 + host_and_path_and_query.len());
        scheme.push_tag(MethodClass::Get, &mut key);
        key.push('|');
        key.push_str(host_and_path_and_query);
        key
    })
}

/// A key without its first field (method class and scheme): `host|path?query`, the form URL
/// purge marks are raised under, the same for both schemes.
pub fn key_target(key: &str) -> &str {
    key.split_once('|').map_or("", |(_, rest)| rest)
}

/// The parts of a primary key, for purges and logs.
#[derive(Debug, PartialEq, Eq)]
pub struct KeyParts<'a> {
    pub host: &'a str,
    /// Path and normalised query, as it was keyed.
    pub path_and_query: &'a str,
}

/// Splits a key made by [`primary_key`] back into its parts.
pub fn key_parts(key: &str) -> Option<KeyParts<'_>> {
    let mut it = key.splitn(3, '|');
    let _class = it.next()?;
    let host = it.next()?;
    let path_and_query = it.next()?;
    Some(KeyParts {
        host,
        path_and_query,
    })
}

/// The path of a keyed URL (without query), for prefix purges.
pub fn key_path(key: &str) -> &str {
    let pq = key_parts(key).map_or("", |p| p.path_and_query);
    pq.split_once('?').map_or(pq, |(p, _)| p)
}

/// Renders a key for humans (`host/path?query`).
pub fn display_key(key: &str) -> String {
    let mut s = String::new();
    if let Some(p) = key_parts(key) {
        let _ = write!(s, "{}{}", p.host, p.path_and_query);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pol(ignore: &[&str]) -> QueryPolicy {
        QueryPolicy {
            ignore: ignore.iter().map(|s| NamePattern::new(*s)).collect(),
            allow: None,
        }
    }

    #[test]
    fn sorts_and_drops() {
        let p = pol(&["utm_*", "fbclid"]);
        assert_eq!(
            p.normalize("b=2&&a=1&utm_source=x&fbclid=9&utm=keep"),
            "a=1&b=2&utm=keep"
        );
        assert_eq!(p.normalize(""), "");
        assert_eq!(p.normalize("&&&"), "");
    }

    #[test]
    fn allow_list() {
        let p = QueryPolicy {
            ignore: vec![],
            allow: Some(vec![NamePattern::new("page"), NamePattern::new("q")]),
        };
        assert_eq!(p.normalize("z=1&q=a&page=2&x=3"), "page=2&q=a");
    }

    #[test]
    fn key_shapes() {
        let p = QueryPolicy::default();
        assert_eq!(
            primary_key(MethodClass::Get, Scheme::Http, "Ex.COM", "/a", None, &p),
            "G|ex.com|/a"
        );
        assert_eq!(
            primary_key(MethodClass::Get, Scheme::Http, "h", "/a", Some(""), &p),
            "G|h|/a"
        );
        assert_eq!(
            primary_key(MethodClass::Get, Scheme::Http, "h", "/a", Some("b&a"), &p),
            "G|h|/a?a&b"
        );
        let k = primary_key(MethodClass::Get, Scheme::Http, "h", "/p/q", Some("x=1"), &p);
        assert_eq!(key_path(&k), "/p/q");
        assert_eq!(display_key(&k), "h/p/q?x=1");
    }

    #[test]
    fn the_scheme_splits_the_key_and_a_url_purge_names_both() {
        let p = QueryPolicy::default();
        let plain = primary_key(MethodClass::Get, Scheme::Http, "h", "/a", Some("x"), &p);
        let tls = primary_key(MethodClass::Get, Scheme::Https, "h", "/a", Some("x"), &p);
        assert_ne!(plain, tls, "http and https never share an entry");
        assert_eq!(
            key_parts(&plain),
            key_parts(&tls),
            "same host, path and query"
        );
        assert_eq!(key_path(&tls), "/a");
        assert_eq!(display_key(&tls), "h/a?x");
        assert_eq!((key_target(&plain), key_target(&tls)), ("h|/a?x", "h|/a?x"));
        assert_eq!(keys_of_target("h|/a?x"), [plain, tls]);
    }

    #[test]
    fn a_purge_url_names_what_the_key_keys() {
        let policy = QueryPolicy::default();
        for (host, path, query) in [
            ("Shop.Example", "/p/1", Some("b=2&a=1")),
            ("h", "", None),
            ("h", "/x", Some("")),
            ("h", "/x", Some("&&")),
        ] {
            let key = primary_key(MethodClass::Get, Scheme::Http, host, path, query, &policy);
            assert_eq!(
                purge_url(host, path, query, &policy),
                format!("http://{}", display_key(&key))
            );
        }
    }

    #[test]
    fn globs() {
        assert!(NamePattern::new("utm_*").matches("utm_source"));
        assert!(NamePattern::new("*id").matches("fbclid"));
        assert!(NamePattern::new("a*b*c").matches("aXXbYYc"));
        assert!(!NamePattern::new("a*b*c").matches("aXXbYY"));
        assert!(NamePattern::new("*").matches(""));
        assert!(!NamePattern::new("utm").matches("utm_source"));
    }

    proptest! {
        /// Reordering parameters or inserting empty ones never changes the key.
        #[test]
        fn order_and_empties_do_not_matter(
            params in proptest::collection::vec("[a-z]{1,4}(=[a-z0-9]{0,3})?", 0..8),
            seed in any::<u64>(),
        ) {
            let p = pol(&["utm_*"]);
            let q1 = params.join("&");
            let mut shuffled = params.clone();
            // Deterministic shuffle from the seed.
            let n = shuffled.len();
            for i in (1..n).rev() {
                let j = (seed.wrapping_mul(i as u64 + 7) % (i as u64 + 1)) as usize;
                shuffled.swap(i, j);
            }
            let q2 = format!("&{}&&", shuffled.join("&&"));
            prop_assert_eq!(p.normalize(&q1), p.normalize(&q2));
        }

        /// Ignored parameters never influence the key, whatever their values.
        #[test]
        fn ignored_parameters_vanish(base in "[a-z]{1,3}=[0-9]{1,3}", junk in "[a-z0-9]{0,8}") {
            let p = pol(&["utm_*"]);
            let with = format!("{base}&utm_source={junk}");
            prop_assert_eq!(p.normalize(&with), p.normalize(&base));
        }

        /// Normalisation is idempotent, and distinct kept parameter sets give distinct keys.
        #[test]
        fn idempotent(q in "[a-z=&]{0,24}") {
            let p = pol(&[]);
            let once = p.normalize(&q);
            prop_assert_eq!(p.normalize(&once), once.clone());
        }

        /// Arbitrary bytes never panic the key builder.
        #[test]
        fn total(host in ".{0,16}", path in ".{0,32}", q in proptest::option::of(".{0,32}")) {
            let k = primary_key(MethodClass::Get, Scheme::Http, &host, &path, q.as_deref(), &pol(&["*x*"]));
            prop_assert!(k.starts_with("G|"));
        }
    }
}
