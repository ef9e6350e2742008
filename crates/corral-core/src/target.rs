//! The request target, normalised: the one place that decides how a host and a path are
//! spelled for routing, for the cache key, for the fetch and for purges.
//!
//! The invariant this module exists for: **what is keyed is what is fetched**. The gateway
//! routes on, keys on and sends upstream the normalised forms returned here, never the raw
//! bytes the client sent, so two spellings of one URL share an entry only when the origin is
//! asked for exactly one of them. Forms that different servers read differently are refused
//! (the caller answers 400) rather than guessed at.
//!
//! Hosts (RFC 9110 §4.2.3, §7.2): lower-cased; the scheme's default port and a trailing `.`
//! dropped; only letters, digits, `-`, `.`, `_` (and bracketed IPv6 literals) accepted; no
//! user info; at most 255 bytes.
//!
//! Paths (RFC 3986 §6.2.2): must start with `/`;
//! * a percent-escape of an unreserved character (`%41`, `%7e`, `%2E`) is decoded;
//! * every other escape is kept, its hex digits upper-cased (`%2f` → `%2F`): an encoded
//!   slash or backslash stays encoded, so it is never a segment separator here, and the
//!   origin receives it exactly as keyed;
//! * runs of `/` are merged (`//a` → `/a`), then dot-segments are removed (`/a/../b` →
//!   `/b`, after decoding, so `%2e%2e` counts);
//! * refused: a malformed escape (`%`, `%zz`), NUL (raw or `%00`), a raw backslash, control
//!   characters, a space.
//!
//! Path parameters (`/account;x.css`) and file extensions mean nothing here: they are part of
//! the path like any other byte, and nothing is ever cached *because of* them.

use std::borrow::Cow;
use std::fmt;

/// Why a request target was refused. Each is answered with 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetError {
    /// No `Host` header and no authority in the request line.
    MissingHost,
    /// More than one `Host` header line.
    DuplicateHost,
    /// A host that is not a plausible `name[:port]`.
    InvalidHost,
    /// An absolute-form (or HTTP/2 `:authority`) target naming another host than `Host`.
    HostMismatch,
    /// A path that is not origin-form (`/...`).
    NotOriginForm,
    /// A `%` not followed by two hex digits.
    MalformedEscape,
    /// NUL, a control character, a space or a raw backslash in the path.
    ForbiddenByte,
}

impl TargetError {
    /// A short token for logs and `Cache-Status` details.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetError::MissingHost => "missing-host",
            TargetError::DuplicateHost => "duplicate-host",
            TargetError::InvalidHost => "invalid-host",
            TargetError::HostMismatch => "host-mismatch",
            TargetError::NotOriginForm => "not-origin-form",
            TargetError::MalformedEscape => "malformed-escape",
            TargetError::ForbiddenByte => "forbidden-byte",
        }
    }
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetError::MissingHost => "missing Host",
            TargetError::DuplicateHost => "more than one Host header",
            TargetError::InvalidHost => "invalid Host",
            TargetError::HostMismatch => "the request target's authority differs from Host",
            TargetError::NotOriginForm => "the request path must start with '/'",
            TargetError::MalformedEscape => "malformed percent-encoding in the path",
            TargetError::ForbiddenByte => {
                "the path holds NUL, a control character, a space or a backslash"
            }
        })
    }
}

/// A request's target as it is routed, keyed and fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    /// The normalised authority (`example.com`, `example.com:8080`, `[::1]:9000`).
    pub host: Cow<'a, str>,
    /// The normalised path.
    pub path: Cow<'a, str>,
    /// The raw query (normalised later, by the route's [`crate::key::QueryPolicy`]).
    pub query: Option<&'a str>,
}

impl<'a> Target<'a> {
    /// The target of a request from its URI and `Host` header lines. An authority in the
    /// URI (absolute form, HTTP/2) must name the same host as `Host` when both are present.
    pub fn of(
        uri: &'a http::Uri,
        host_lines: &mut dyn Iterator<Item = &'a [u8]>,
        default_port: u16,
    ) -> Result<Target<'a>, TargetError> {
        let first = host_lines.next();
        if host_lines.next().is_some() {
            return Err(TargetError::DuplicateHost);
        }
        let header_host = first
            .map(|h| std::str::from_utf8(h).map_err(|_| TargetError::InvalidHost))
            .transpose()?
            .map(|h| normalize_host(h, default_port))
            .transpose()?;
        let host = match (uri.authority(), header_host) {
            (Some(a), header) => {
                let named = normalize_host(a.as_str(), default_port)?;
                if header.is_some_and(|h| h != named) {
                    return Err(TargetError::HostMismatch);
                }
                named
            }
            (None, Some(h)) => h,
            (None, None) => return Err(TargetError::MissingHost),
        };
        Ok(Target {
            host,
            path: normalize_path(uri.path())?,
            query: uri.query(),
        })
    }

    /// The path and raw query, as sent upstream for a passed request.
    pub fn path_and_query(&self) -> Cow<'_, str> {
        match self.query {
            None => Cow::Borrowed(&*self.path),
            Some(q) => Cow::Owned(format!("{}?{q}", self.path)),
        }
    }
}

/// Normalises a `host[:port]`: lower case, no default port, no trailing dot.
pub fn normalize_host(host: &str, default_port: u16) -> Result<Cow<'_, str>, TargetError> {
    if host.is_empty() || host.len() > 255 {
        return Err(TargetError::InvalidHost);
    }
    let (name, port) = split_port(host)?;
    let name_ok = if let Some(v6) = name.strip_prefix('[') {
        let inner = v6.strip_suffix(']').ok_or(TargetError::InvalidHost)?;
        !inner.is_empty()
            && inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
    } else {
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    };
    if !name_ok {
        return Err(TargetError::InvalidHost);
    }
    if !name.bytes().any(|b| b.is_ascii_alphanumeric()) {
        return Err(TargetError::InvalidHost);
    }
    let keep_port = match port {
        Some("") | None => None,
        Some(p) => {
            let n: u16 = p
                .parse()
                .ok()
                .filter(|_| p.bytes().all(|b| b.is_ascii_digit()))
                .ok_or(TargetError::InvalidHost)?;
            (n != default_port).then_some(p)
        }
    };
    let name = match name.strip_suffix('.') {
        Some(n) if !name.starts_with('[') => n,
        _ => name,
    };
    // Empty labels (`a..b`, `.a`, `a..`) name no host: refused, so that normalising is
    // idempotent (found by the fuzz target `request_target`).
    if !name.starts_with('[')
        && (name.starts_with('.') || name.ends_with('.') || name.contains(".."))
    {
        return Err(TargetError::InvalidHost);
    }
    // The common case borrows: nothing to lower-case, drop or trim.
    let same_port = keep_port.is_some() == port.is_some();
    let same_len = name.len() + keep_port.map_or(0, |p| p.len() + 1) == host.len();
    if same_port && same_len && !host.bytes().any(|b| b.is_ascii_uppercase()) {
        return Ok(Cow::Borrowed(host));
    }
    let mut out = name.to_ascii_lowercase();
    if let Some(p) = keep_port {
        out.push(':');
        out.push_str(p);
    }
    Ok(Cow::Owned(out))
}

/// `(name, port)`; the port may be empty (`host:`).
fn split_port(host: &str) -> Result<(&str, Option<&str>), TargetError> {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(i) if i + 1 == host.len() => Ok((host, None)),
            Some(i) if host.as_bytes()[i + 1] == b':' => Ok((&host[..=i], Some(&host[i + 2..]))),
            _ => Err(TargetError::InvalidHost),
        };
    }
    Ok(match host.split_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (host, None),
    })
}

/// Normalises a request path (see the module documentation for the rules).
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, TargetError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(TargetError::NotOriginForm);
    }
    if bytes.iter().any(|&b| forbidden(b)) {
        return Err(TargetError::ForbiddenByte);
    }
    // The common case: nothing to decode, merge or resolve.
    if !bytes.contains(&b'%') && !path.contains("//") && !has_dot_segment(path) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(bytes)?;
    let merged = merge_slashes(&decoded);
    Ok(Cow::Owned(remove_dot_segments(&merged)))
}

/// A prefix purge's path, normalised like request paths; `None` when it would be refused.
/// A trailing slash is kept (`/a/./` → `/a/`).
pub fn normalize_prefix(prefix: &str) -> Option<String> {
    normalize_path(prefix).ok().map(Cow::into_owned)
}

fn forbidden(b: u8) -> bool {
    b < 0x21 || b == 0x7f || b == b'\\'
}

fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|s| s == "." || s == "..")
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Decodes escapes of unreserved characters, upper-cases the others, refuses NUL.
fn decode_unreserved(bytes: &[u8]) -> Result<String, TargetError> {
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            // The input is a &str, and every byte pushed here is copied whole: pushing the
            // bytes of one UTF-8 sequence in order keeps the string valid.
            let len = utf8_len(b);
            out.push_str(std::str::from_utf8(&bytes[i..i + len]).unwrap_or("\u{fffd}"));
            i += len;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(TargetError::MalformedEscape);
        };
        let v = hi << 4 | lo;
        if v == 0 {
            return Err(TargetError::ForbiddenByte);
        }
        if is_unreserved(v) {
            out.push(v as char);
        } else {
            out.push('%');
            out.push(char::from_digit(u32::from(hi), 16).map_or('0', |c| c.to_ascii_uppercase()));
            out.push(char::from_digit(u32::from(lo), 16).map_or('0', |c| c.to_ascii_uppercase()));
        }
        i += 3;
    }
    Ok(out)
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xf0..=0xff => 4,
        0xe0..=0xef => 3,
        0xc0..=0xdf => 2,
        _ => 1,
    }
}

fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    out
}

/// RFC 3986 §5.2.4, on a path that starts with `/` and has no empty segments.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let parts: Vec<&str> = path[1..].split('/').collect();
    let last = parts.len() - 1;
    let mut trailing_slash = false;
    for (i, s) in parts.iter().enumerate() {
        match *s {
            "." => trailing_slash = i == last,
            ".." => {
                segments.pop();
                trailing_slash = i == last;
            }
            s => {
                segments.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn path(p: &str) -> Result<String, TargetError> {
        normalize_path(p).map(Cow::into_owned)
    }

    #[test]
    fn paths_that_stay_as_they_are() {
        for p in [
            "/",
            "/a",
            "/a/b/",
            "/a;x.css",
            "/%2F",
            "/a%20b",
            "/caf%C3%A9",
            "/é",
        ] {
            assert_eq!(path(p).unwrap(), p, "{p}");
        }
    }

    #[test]
    fn paths_that_normalise() {
        let cases = [
            ("/%61%62c", "/abc"),
            ("/%7euser", "/~user"),
            ("/a%2fb", "/a%2Fb"),
            ("/a%5cb", "/a%5Cb"),
            ("//a///b", "/a/b"),
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/../../a", "/a"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/a/%2e%2e/b", "/b"),
            ("/a/%2E/b", "/a/b"),
            ("/static/..%2faccount", "/static/..%2Faccount"),
            ("/a/..//b", "/b"),
        ];
        for (raw, want) in cases {
            assert_eq!(path(raw).unwrap(), want, "{raw}");
        }
    }

    #[test]
    fn paths_that_are_refused() {
        let cases = [
            ("a", TargetError::NotOriginForm),
            ("*", TargetError::NotOriginForm),
            ("", TargetError::NotOriginForm),
            ("/a%", TargetError::MalformedEscape),
            ("/a%g1", TargetError::MalformedEscape),
            ("/a%2", TargetError::MalformedEscape),
            ("/a%00", TargetError::ForbiddenByte),
            ("/a\\b", TargetError::ForbiddenByte),
            ("/a\0", TargetError::ForbiddenByte),
            ("/a b", TargetError::ForbiddenByte),
            ("/a\tb", TargetError::ForbiddenByte),
        ];
        for (raw, want) in cases {
            assert_eq!(path(raw), Err(want), "{raw:?}");
        }
    }

    #[test]
    fn hosts() {
        let ok = [
            ("example.com", "example.com"),
            ("Example.COM", "example.com"),
            ("example.com:80", "example.com"),
            ("example.com:", "example.com"),
            ("example.com.", "example.com"),
            ("example.com:8080", "example.com:8080"),
            ("[::1]", "[::1]"),
            ("[::1]:80", "[::1]"),
            ("[::1]:9000", "[::1]:9000"),
            ("127.0.0.1:3000", "127.0.0.1:3000"),
        ];
        for (raw, want) in ok {
            assert_eq!(normalize_host(raw, 80).unwrap(), want, "{raw}");
        }
        for bad in [
            "",
            "a b",
            "user@host",
            "host:99999",
            "host:8x",
            "host:+80",
            "[::1",
            "[]",
            "[::1]x",
            "evil.example/x",
            ".",
            "a..",
            "a..b",
            ".a",
        ] {
            assert_eq!(
                normalize_host(bad, 80),
                Err(TargetError::InvalidHost),
                "{bad:?}"
            );
        }
    }

    fn target<'a>(uri: &'a http::Uri, hosts: &'a [&'a str]) -> Result<Target<'a>, TargetError> {
        Target::of(uri, &mut hosts.iter().map(|h| h.as_bytes()), 80)
    }

    #[test]
    fn absolute_form_must_agree_with_host() {
        let abs: http::Uri = "http://a.example/x".parse().unwrap();
        assert_eq!(target(&abs, &["a.example"]).unwrap().host, "a.example");
        assert_eq!(target(&abs, &["A.example:80"]).unwrap().host, "a.example");
        assert_eq!(target(&abs, &[]).unwrap().host, "a.example");
        assert_eq!(target(&abs, &["b.example"]), Err(TargetError::HostMismatch));
        let origin: http::Uri = "/x?q=1".parse().unwrap();
        let t = target(&origin, &["h"]).unwrap();
        assert_eq!((&*t.host, &*t.path, t.query), ("h", "/x", Some("q=1")));
        assert_eq!(target(&origin, &[]), Err(TargetError::MissingHost));
        assert_eq!(
            target(&origin, &["h", "h"]),
            Err(TargetError::DuplicateHost)
        );
        assert_eq!(target(&origin, &["h/x"]), Err(TargetError::InvalidHost));
    }

    proptest! {
        /// Normalising twice changes nothing, and never panics on any input.
        #[test]
        fn idempotent(p in "/[a-zA-Z0-9%./;~_-]{0,40}") {
            if let Ok(once) = path(&p) {
                prop_assert_eq!(path(&once).unwrap(), once.clone());
                prop_assert!(once.starts_with('/'));
                prop_assert!(!once.contains("//"));
            }
        }

        /// Escaping an unreserved character never makes another path.
        #[test]
        fn escapes_of_unreserved_characters_do_not_matter(p in "/[a-z0-9./~-]{0,24}") {
            let escaped: String = p
                .chars()
                .map(|c| if c == '/' { "/".to_string() } else { format!("%{:02x}", c as u32) })
                .collect();
            prop_assert_eq!(path(&escaped), path(&p));
        }

        /// A request and its normalised form get the same key, and a purge of the URL names
        /// that key (the fuzz target `request_target` checks the same on arbitrary bytes).
        #[test]
        fn normalised_requests_and_purges_share_the_key(
            path in "/[a-zA-Z0-9%./;~_-]{0,30}",
            query in proptest::option::of("[a-z0-9=&%]{0,12}"),
            host in "[a-zA-Z.]{1,8}(\\.[a-z]{2,3})?\\.?\\.?(:[0-9]{2,4})?",
        ) {
            use crate::key::{primary_key, MethodClass, QueryPolicy, Scheme};
            let raw = match &query { Some(q) => format!("{path}?{q}"), None => path.clone() };
            let Ok(uri) = raw.parse::<http::Uri>() else { return Ok(()) };
            let hosts = [host.as_str()];
            let Ok(t) = target(&uri, &hosts) else { return Ok(()) };
            let policy = QueryPolicy::default();
            let key = primary_key(MethodClass::Get, Scheme::Http, &t.host, &t.path, t.query, &policy);
            let again: http::Uri = t.path_and_query().parse().unwrap();
            let hosts2 = [&*t.host];
            let t2 = target(&again, &hosts2).unwrap();
            prop_assert_eq!(
                primary_key(MethodClass::Get, Scheme::Http, &t2.host, &t2.path, t2.query, &policy),
                key.clone()
            );
            let purge = crate::key::UrlTarget::parse(&format!("http://{host}{raw}")).unwrap();
            prop_assert_eq!(purge.as_str(), key.target());
            prop_assert!(key.view().is_covered_by(&purge));
        }

        #[test]
        fn total_on_hosts(h in ".{0,40}") {
            let _ = normalize_host(&h, 80);
        }
    }
}
