//! `Cache-Control` parsing (RFC 9111 §5.2), for requests and responses.
//!
//! The parser is total: any byte sequence yields a directive set, never a panic. It survives the
//! mess real origins send:
//!
//! * several `Cache-Control` field lines are one comma-separated list (RFC 9110 §5.3);
//! * directive names are case-insensitive; unknown directives are ignored;
//! * arguments may be tokens or quoted strings (`max-age="60"` is accepted, as §5.2 asks);
//! * commas inside quoted strings (`no-cache="a, b"`) do not split directives;
//! * a duplicated delta-seconds directive keeps its *first* occurrence (§4.2.1 allows either
//!   that or treating the response as stale), unless a later duplicate is invalid;
//! * an invalid delta-seconds (`max-age=a1`, `max-age=-1`, `max-age=1.5`) poisons that
//!   directive: for `max-age` and `s-maxage` the response is treated as already stale, which is
//!   what the conformance suites expect of a careful cache;
//! * delta-seconds beyond 2^31 saturate at 2147483648 (§1.2.2).

use http::header::{HeaderMap, CACHE_CONTROL, PRAGMA};

/// The largest delta-seconds value a cache must represent (RFC 9111 §1.2.2).
pub const DELTA_SECONDS_MAX: u32 = 2_147_483_648;

/// A delta-seconds argument as it was found in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Delta {
    /// The directive was absent.
    #[default]
    Absent,
    /// The directive was present with a valid argument.
    Seconds(u32),
    /// The directive was present but its argument was missing or not a delta-seconds.
    Invalid,
}

impl Delta {
    /// The value, if present and valid.
    pub fn seconds(self) -> Option<u32> {
        match self {
            Delta::Seconds(s) => Some(s),
            _ => None,
        }
    }

    /// True when the directive appeared at all, valid or not.
    pub fn is_present(self) -> bool {
        !matches!(self, Delta::Absent)
    }

    /// Keeps the first valid occurrence; an invalid occurrence anywhere poisons the directive.
    fn merge(&mut self, next: Delta) {
        match (*self, next) {
            (Delta::Absent, n) => *self = n,
            (_, Delta::Invalid) => *self = Delta::Invalid,
            _ => {}
        }
    }
}

/// Directives of a response's `Cache-Control` that a shared cache acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseDirectives {
    pub max_age: Delta,
    pub s_maxage: Delta,
    /// `no-cache` without field names: every reuse needs validation.
    pub no_cache: bool,
    /// `no-cache="Field, ..."`: those fields must not be sent on a reused response.
    pub no_cache_fields: Vec<String>,
    pub no_store: bool,
    /// `private` without field names: a shared cache must not store the response.
    pub private: bool,
    /// `private="Field, ..."`: a shared cache may store the response without those fields.
    pub private_fields: Vec<String>,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub must_understand: bool,
    pub no_transform: bool,
    pub immutable: bool,
    pub stale_while_revalidate: Delta,
    pub stale_if_error: Delta,
    /// The targeted field (RFC 9213) these directives were read from; `None` for
    /// `Cache-Control`. A targeted field replaces `Expires` as well (see
    /// [`crate::policy::targeted`]).
    pub targeted: Option<http::HeaderName>,
}

/// Directives of a request's `Cache-Control` (RFC 9111 §5.2.1, RFC 5861).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestDirectives {
    pub max_age: Delta,
    /// `max-stale` without a value accepts any staleness: `Some(None)`.
    pub max_stale: Option<Option<u32>>,
    pub min_fresh: Delta,
    pub no_cache: bool,
    pub no_store: bool,
    pub only_if_cached: bool,
    pub stale_if_error: Delta,
}

impl ResponseDirectives {
    /// Parses every `Cache-Control` field line of `headers`.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut d = ResponseDirectives::default();
        for value in headers.get_all(CACHE_CONTROL) {
            for (name, arg) in Directives::new(value.as_bytes()) {
                d.apply(name, arg);
            }
        }
        d
    }

    fn apply(&mut self, name: &[u8], arg: Option<Arg<'_>>) {
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        if is("max-age") {
            self.max_age.merge(delta(arg));
        } else if is("s-maxage") {
            self.s_maxage.merge(delta(arg));
        } else if is("no-cache") {
            match arg {
                Some(a) if !a.text().trim().is_empty() => field_list(a, &mut self.no_cache_fields),
                _ => self.no_cache = true,
            }
        } else if is("no-store") {
            self.no_store = true;
        } else if is("private") {
            match arg {
                Some(a) if !a.text().trim().is_empty() => field_list(a, &mut self.private_fields),
                _ => self.private = true,
            }
        } else if is("public") {
            self.public = true;
        } else if is("must-revalidate") {
            self.must_revalidate = true;
        } else if is("proxy-revalidate") {
            self.proxy_revalidate = true;
        } else if is("must-understand") {
            self.must_understand = true;
        } else if is("no-transform") {
            self.no_transform = true;
        } else if is("immutable") {
            self.immutable = true;
        } else if is("stale-while-revalidate") {
            self.stale_while_revalidate.merge(delta(arg));
        } else if is("stale-if-error") {
            self.stale_if_error.merge(delta(arg));
        }
    }

    /// True when a shared cache may not serve the response stale under any circumstances
    /// (`must-revalidate`, `proxy-revalidate`, or `s-maxage`, which implies the latter).
    pub fn forbids_stale(&self) -> bool {
        self.must_revalidate || self.proxy_revalidate || self.s_maxage.is_present()
    }
}

impl RequestDirectives {
    /// Parses every `Cache-Control` field line of `headers`; `Pragma: no-cache` counts as
    /// `no-cache` only when no `Cache-Control` is present (RFC 9111 §5.4).
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut d = RequestDirectives::default();
        let mut any = false;
        for value in headers.get_all(CACHE_CONTROL) {
            any = true;
            for (name, arg) in Directives::new(value.as_bytes()) {
                d.apply(name, arg);
            }
        }
        if !any {
            d.no_cache = headers
                .get_all(PRAGMA)
                .iter()
                .flat_map(|v| Directives::new(v.as_bytes()))
                .any(|(name, _)| name.eq_ignore_ascii_case(b"no-cache"));
        }
        d
    }

    fn apply(&mut self, name: &[u8], arg: Option<Arg<'_>>) {
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        if is("max-age") {
            self.max_age.merge(delta(arg));
        } else if is("max-stale") {
            let v = match arg {
                None => None,
                Some(a) => match parse_delta(a.text().as_bytes()) {
                    Some(s) => Some(s),
                    // An unparsable max-stale is ignored rather than widened to "any".
                    None => return,
                },
            };
            if self.max_stale.is_none() {
                self.max_stale = Some(v);
            }
        } else if is("min-fresh") {
            self.min_fresh.merge(delta(arg));
        } else if is("no-cache") {
            self.no_cache = true;
        } else if is("no-store") {
            self.no_store = true;
        } else if is("only-if-cached") {
            self.only_if_cached = true;
        } else if is("stale-if-error") {
            self.stale_if_error.merge(delta(arg));
        }
    }

    /// True when the request carries nothing that constrains reuse.
    pub fn is_empty(&self) -> bool {
        *self == RequestDirectives::default()
    }
}

/// A directive argument: the raw bytes, and whether they came from a quoted string.
#[derive(Debug, Clone, Copy)]
struct Arg<'a> {
    raw: &'a [u8],
    quoted: bool,
}

impl Arg<'_> {
    fn text(&self) -> std::borrow::Cow<'_, str> {
        if self.quoted {
            // Undo quoted-pair escapes.
            let mut out = Vec::with_capacity(self.raw.len());
            let mut bytes = self.raw.iter();
            while let Some(&b) = bytes.next() {
                if b == b'\\' {
                    if let Some(&n) = bytes.next() {
                        out.push(n);
                    }
                } else {
                    out.push(b);
                }
            }
            std::borrow::Cow::Owned(String::from_utf8_lossy(&out).into_owned())
        } else {
            String::from_utf8_lossy(self.raw)
        }
    }
}

fn delta(arg: Option<Arg<'_>>) -> Delta {
    match arg {
        None => Delta::Invalid,
        Some(a) => match parse_delta(a.text().as_bytes()) {
            Some(s) => Delta::Seconds(s),
            None => Delta::Invalid,
        },
    }
}

/// `delta-seconds = 1*DIGIT`, saturating at [`DELTA_SECONDS_MAX`].
pub fn parse_delta(s: &[u8]) -> Option<u32> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        v = v * 10 + u64::from(b - b'0');
        if v >= u64::from(DELTA_SECONDS_MAX) {
            return Some(DELTA_SECONDS_MAX);
        }
    }
    Some(v as u32)
}

fn field_list(arg: Arg<'_>, out: &mut Vec<String>) {
    for f in arg.text().split(',') {
        let f = f.trim();
        if !f.is_empty() {
            out.push(f.to_ascii_lowercase());
        }
    }
}

/// Iterator over `name[=arg]` items of one field line. Splits on commas outside quotes.
struct Directives<'a> {
    rest: &'a [u8],
}

impl<'a> Directives<'a> {
    fn new(line: &'a [u8]) -> Self {
        Directives { rest: line }
    }
}

impl<'a> Iterator for Directives<'a> {
    type Item = (&'a [u8], Option<Arg<'a>>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.rest = trim_start(self.rest);
            if self.rest.is_empty() {
                return None;
            }
            if self.rest[0] == b',' {
                self.rest = &self.rest[1..];
                continue;
            }
            let name_end = self
                .rest
                .iter()
                .position(|&b| b == b'=' || b == b',')
                .unwrap_or(self.rest.len());
            let name = trim_end(&self.rest[..name_end]);
            self.rest = &self.rest[name_end..];
            let arg = if self.rest.first() == Some(&b'=') {
                self.rest = trim_start(&self.rest[1..]);
                Some(self.take_arg())
            } else {
                None
            };
            if name.is_empty() {
                continue;
            }
            return Some((name, arg));
        }
    }
}

impl<'a> Directives<'a> {
    fn take_arg(&mut self) -> Arg<'a> {
        if self.rest.first() == Some(&b'"') {
            let body = &self.rest[1..];
            let mut i = 0;
            while i < body.len() {
                match body[i] {
                    b'\\' => i += 2,
                    b'"' => break,
                    _ => i += 1,
                }
            }
            let end = i.min(body.len());
            let raw = &body[..end];
            // Skip the closing quote and anything up to the next comma.
            let after = &body[(end + 1).min(body.len())..];
            let next = after.iter().position(|&b| b == b',').unwrap_or(after.len());
            self.rest = &after[next..];
            Arg { raw, quoted: true }
        } else {
            let end = self
                .rest
                .iter()
                .position(|&b| b == b',')
                .unwrap_or(self.rest.len());
            let raw = trim_end(&self.rest[..end]);
            self.rest = &self.rest[end..];
            Arg { raw, quoted: false }
        }
    }
}

fn trim_start(s: &[u8]) -> &[u8] {
    let i = s
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(s.len());
    &s[i..]
}

fn trim_end(s: &[u8]) -> &[u8] {
    let i = s
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(0, |i| i + 1);
    &s[..i]
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn resp(lines: &[&str]) -> ResponseDirectives {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append(CACHE_CONTROL, HeaderValue::from_str(l).unwrap());
        }
        ResponseDirectives::from_headers(&h)
    }

    fn req(lines: &[(&str, &str)]) -> RequestDirectives {
        let mut h = HeaderMap::new();
        for (n, v) in lines {
            h.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        RequestDirectives::from_headers(&h)
    }

    #[test]
    fn basic_response_directives() {
        let d = resp(&["public, max-age=60, s-maxage=120, stale-while-revalidate=30"]);
        assert!(d.public);
        assert_eq!(d.max_age, Delta::Seconds(60));
        assert_eq!(d.s_maxage, Delta::Seconds(120));
        assert_eq!(d.stale_while_revalidate, Delta::Seconds(30));
        assert!(d.forbids_stale(), "s-maxage implies proxy-revalidate");
    }

    #[test]
    fn multiple_lines_and_case() {
        let d = resp(&["Max-Age=10", "NO-STORE", "Private"]);
        assert_eq!(d.max_age, Delta::Seconds(10));
        assert!(d.no_store && d.private);
    }

    #[test]
    fn quoted_values_and_commas_in_quotes() {
        let d = resp(&[r#"no-cache="set-cookie, x-foo", max-age="30""#]);
        assert!(!d.no_cache);
        assert_eq!(d.no_cache_fields, vec!["set-cookie", "x-foo"]);
        assert_eq!(d.max_age, Delta::Seconds(30));
    }

    #[test]
    fn invalid_numbers_poison() {
        for bad in [
            "max-age=a1",
            "max-age=-1",
            "max-age=1.5",
            "max-age=",
            "max-age",
            "max-age=+5",
        ] {
            assert_eq!(resp(&[bad]).max_age, Delta::Invalid, "{bad}");
        }
        assert_eq!(resp(&["max-age=5, max-age=x"]).max_age, Delta::Invalid);
    }

    #[test]
    fn duplicates_keep_first() {
        assert_eq!(resp(&["max-age=5, max-age=50"]).max_age, Delta::Seconds(5));
        assert_eq!(
            resp(&["max-age=5", "max-age=50"]).max_age,
            Delta::Seconds(5)
        );
    }

    #[test]
    fn huge_values_saturate() {
        assert_eq!(
            resp(&["max-age=99999999999999999999999"]).max_age,
            Delta::Seconds(DELTA_SECONDS_MAX)
        );
    }

    #[test]
    fn unknown_and_junk_ignored() {
        let d = resp(&[",,, foo=bar, =x, \"weird, max-age=3 ,"]);
        assert_eq!(d.max_age, Delta::Seconds(3));
        let d = resp(&["private=\"unterminated"]);
        assert!(!d.private);
        assert_eq!(d.private_fields, vec!["unterminated"]);
    }

    #[test]
    fn request_directives() {
        let d = req(&[("cache-control", "max-stale, min-fresh=5, only-if-cached")]);
        assert_eq!(d.max_stale, Some(None));
        assert_eq!(d.min_fresh, Delta::Seconds(5));
        assert!(d.only_if_cached);
        let d = req(&[("cache-control", "max-stale=10")]);
        assert_eq!(d.max_stale, Some(Some(10)));
    }

    #[test]
    fn pragma_only_without_cache_control() {
        assert!(req(&[("pragma", "no-cache")]).no_cache);
        assert!(!req(&[("pragma", "no-cache"), ("cache-control", "max-age=5")]).no_cache);
    }
}
