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
//!
//! The key is a type, [`Key`] (borrowed: [`KeyRef`]), which alone knows its encoding
//! (`primary.rs`); what a URL purge names is a [`UrlTarget`] (`url_target.rs`).

mod primary;
mod url_target;

pub use primary::{Key, KeyRef};
pub use url_target::UrlTarget;

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
) -> Key {
    let mut key = String::with_capacity(5 + host.len() + path.len() + query.map_or(0, str::len));
    scheme.push_tag(class, &mut key);
    key.push('|');
    push_url(&mut key, host, "|", path, query, policy);
    Key::from_encoded(key)
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
        let key =
            |host, path, query| primary_key(MethodClass::Get, Scheme::Http, host, path, query, &p);
        assert_eq!(key("Ex.COM", "/a", None).as_str(), "G|ex.com|/a");
        assert_eq!(key("h", "/a", Some("")).as_str(), "G|h|/a");
        assert_eq!(key("h", "/a", Some("b&a")).as_str(), "G|h|/a?a&b");
        let k = key("h", "/p/q", Some("x=1"));
        assert_eq!(k.path(), "/p/q");
        assert_eq!(k.to_string(), "h/p/q?x=1");
    }

    #[test]
    fn the_scheme_splits_the_key_and_a_url_purge_names_both() {
        let p = QueryPolicy::default();
        let plain = primary_key(MethodClass::Get, Scheme::Http, "h", "/a", Some("x"), &p);
        let tls = primary_key(MethodClass::Get, Scheme::Https, "h", "/a", Some("x"), &p);
        assert_ne!(plain, tls, "http and https never share an entry");
        assert_eq!(tls.as_str(), "Gs|h|/a?x");
        assert_eq!(
            (plain.host(), plain.path_and_query()),
            (tls.host(), tls.path_and_query()),
            "same host, path and query"
        );
        assert_eq!(
            (plain.scheme(), tls.scheme()),
            (Scheme::Http, Scheme::Https)
        );
        assert_eq!(tls.path(), "/a");
        assert_eq!(tls.to_string(), "h/a?x");
        assert_eq!((plain.target(), tls.target()), ("h|/a?x", "h|/a?x"));
        let target = UrlTarget::parse("http://h/a?x").unwrap();
        assert_eq!(target.keys_on("elsewhere"), [plain.clone(), tls.clone()]);
        let bare = UrlTarget::parse("/a?x").unwrap();
        assert_eq!(bare.keys_on("h"), [plain.clone(), tls.clone()]);
        assert!(plain.view().is_covered_by(&target) && tls.view().is_covered_by(&bare));
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
                format!("http://{key}")
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
            prop_assert!(k.as_str().starts_with("G|"));
        }
    }
}
