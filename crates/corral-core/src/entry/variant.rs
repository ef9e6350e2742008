//! The secondary key of a stored response (RFC 9111 §4.1): the request header values a
//! response was selected by, and whether a later request selects it.

use http::header::{HeaderMap, HeaderName, ACCEPT_LANGUAGE, CONTENT_LANGUAGE, VARY};

use crate::policy::language;

/// The request header through which the gateway puts what a trusted proxy told it (its
/// `X-Forwarded-Host`, `Forwarded` ... values) into the secondary key. Every variant is
/// selected by it, present or absent: a response fetched without a forwarding context is
/// never served to a request that has one, nor the other way round. Absent (the common
/// case) it costs a stored entry nothing.
pub const KEY_CONTEXT: HeaderName = HeaderName::from_static("corral-key-context");

/// Where a variant selected by `Accept-Language` keeps its response's `Content-Language`, so
/// that a request whose first preference selects that language reuses it. Never a request
/// header: matching skips it.
const SERVED_LANGUAGE: HeaderName = HeaderName::from_static("corral-served-language");

/// The secondary key of a stored response: for each header named by the response's `Vary`
/// (and the configured key headers, and [`KEY_CONTEXT`] when the request had one), the
/// normalised value the original request carried.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Variant {
    /// `None` when nothing selects (the common case). Boxed twice so the field is one thin
    /// pointer: every stored `Entry` pays for it, few have a `Vary`.
    #[allow(clippy::redundant_allocation)]
    fields: Option<Box<Box<[Field]>>>,
}

/// A selecting header and the normalised value the original request carried.
type Field = (HeaderName, Option<Box<str>>);

impl Variant {
    fn new(fields: Vec<Field>) -> Variant {
        Variant {
            fields: (!fields.is_empty()).then(|| Box::new(fields.into_boxed_slice())),
        }
    }
}

impl Variant {
    /// The variant of `request` for a response whose headers are `response` and for the
    /// configured `key_headers`.
    pub fn of(request: &HeaderMap, response: &HeaderMap, key_headers: &[HeaderName]) -> Variant {
        let mut names: Vec<HeaderName> = key_headers.to_vec();
        if request.contains_key(KEY_CONTEXT) {
            names.push(KEY_CONTEXT);
        }
        for v in response.get_all(VARY) {
            for name in v.as_bytes().split(|&b| b == b',') {
                if let Ok(n) = HeaderName::from_bytes(name.trim_ascii()) {
                    if !names.contains(&n) {
                        names.push(n);
                    }
                }
            }
        }
        let served = response
            .get(CONTENT_LANGUAGE)
            .and_then(|v| v.to_str().ok())
            .filter(|_| names.contains(&ACCEPT_LANGUAGE));
        if served.is_some() {
            names.push(SERVED_LANGUAGE);
        }
        names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        let fields: Vec<Field> = names
            .into_iter()
            .map(|n| {
                let v = if n == SERVED_LANGUAGE {
                    served.map(Box::from)
                } else {
                    normalized_value(request, &n)
                };
                (n, v)
            })
            .collect();
        Variant::new(fields)
    }

    /// True when `request` selects this variant (RFC 9111 §4.1): every selecting header has
    /// the stored normalised value, or, for `Accept-Language`, the request's first preference
    /// selects the stored response's `Content-Language` ([`language::selects`]).
    pub fn matches(&self, request: &HeaderMap) -> bool {
        let fields = self.fields();
        let context_known = fields.iter().any(|(n, _)| *n == KEY_CONTEXT);
        let served = fields
            .iter()
            .find(|(n, _)| *n == SERVED_LANGUAGE)
            .and_then(|(_, v)| v.as_deref());
        (context_known || !request.contains_key(KEY_CONTEXT))
            && fields.iter().all(|(n, v)| {
                if *n == SERVED_LANGUAGE {
                    return true;
                }
                let asked = normalized_value(request, n);
                asked.as_deref() == v.as_deref()
                    || (*n == ACCEPT_LANGUAGE
                        && served
                            .zip(asked.as_deref())
                            .is_some_and(|(lang, asked)| language::selects(asked, lang)))
            })
    }

    /// The request header names this variant was selected by.
    pub fn names(&self) -> impl Iterator<Item = &HeaderName> {
        self.fields()
            .iter()
            .map(|(n, _)| n)
            .filter(|n| **n != SERVED_LANGUAGE)
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_none()
    }

    /// The selecting header names and the normalised values the original request carried
    /// (`None`: the request did not have the header). For serialising a variant (the L2 tier).
    pub fn fields(&self) -> &[(HeaderName, Option<Box<str>>)] {
        self.fields.as_deref().map_or(&[], |f| &f[..])
    }

    /// A variant from fields as [`Variant::fields`] gave them (sorted by name here).
    pub fn from_fields(mut fields: Vec<(HeaderName, Option<Box<str>>)>) -> Variant {
        fields.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        Variant::new(fields)
    }

    pub(super) fn size(&self) -> usize {
        self.fields()
            .iter()
            .map(|(n, v)| n.as_str().len() + v.as_ref().map_or(0, |v| v.len()) + 24)
            .sum()
    }
}

/// A header's value for Vary matching: all field lines joined by `,`, each list member
/// trimmed, runs of whitespace collapsed; `Accept-Language` in its normalised form
/// ([`language::normalize`]) when it parses. Absent is distinct from empty.
fn normalized_value(headers: &HeaderMap, name: &HeaderName) -> Option<Box<str>> {
    let joined = joined_value(headers, name)?;
    if *name == ACCEPT_LANGUAGE {
        if let Some(n) = language::normalize(&joined) {
            return Some(n.into_boxed_str());
        }
    }
    Some(joined)
}

fn joined_value(headers: &HeaderMap, name: &HeaderName) -> Option<Box<str>> {
    let mut values = headers.get_all(name).iter().peekable();
    values.peek()?;
    let mut out = String::new();
    for v in values {
        for member in String::from_utf8_lossy(v.as_bytes()).split(',') {
            let member = member.split_whitespace().collect::<Vec<_>>().join(" ");
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(&member);
        }
    }
    Some(out.into_boxed_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::header_map as h;

    #[test]
    fn vary_matching_normalises() {
        let resp = h(&[("vary", "Accept-Encoding, accept-language")]);
        let v = Variant::of(&h(&[("accept-encoding", "gzip,  br")]), &resp, &[]);
        assert!(v.matches(&h(&[("accept-encoding", "gzip, br")])));
        assert!(v.matches(&h(&[
            ("accept-encoding", "gzip"),
            ("accept-encoding", "br")
        ])));
        assert!(!v.matches(&h(&[("accept-encoding", "br, gzip")])));
        assert!(!v.matches(&h(&[
            ("accept-encoding", "gzip, br"),
            ("accept-language", "en")
        ])));
    }

    #[test]
    fn absent_differs_from_empty() {
        let resp = h(&[("vary", "x-a")]);
        let v = Variant::of(&h(&[]), &resp, &[]);
        assert!(v.matches(&h(&[])));
        assert!(!v.matches(&h(&[("x-a", "")])));
    }

    #[test]
    fn key_headers_split_like_vary() {
        let key = [HeaderName::from_static("x-tenant")];
        let v = Variant::of(&h(&[("x-tenant", "a")]), &h(&[]), &key);
        assert!(v.matches(&h(&[("x-tenant", "a")])));
        assert!(!v.matches(&h(&[("x-tenant", "b")])));
    }

    #[test]
    fn equivalent_language_preferences_share_a_variant() {
        let resp = h(&[("vary", "accept-language"), ("content-language", "en-US")]);
        let v = Variant::of(&h(&[("accept-language", "en-US, fr;q=0.5")]), &resp, &[]);
        assert!(v.matches(&h(&[("accept-language", "fr;q=0.50,EN-us")])));
        assert!(
            v.matches(&h(&[("accept-language", "en-us;q=1.0")])),
            "selects en-US"
        );
        assert!(
            v.matches(&h(&[("accept-language", "en")])),
            "en selects en-US"
        );
        assert!(!v.matches(&h(&[("accept-language", "fr, en-US;q=0.9")])));
        assert!(!v.matches(&h(&[])));
        assert_eq!(v.names().collect::<Vec<_>>(), [&ACCEPT_LANGUAGE]);
        let round_trip = Variant::from_fields(v.fields().to_vec());
        assert!(round_trip.matches(&h(&[("accept-language", "en")])));
    }

    #[test]
    fn content_language_counts_only_under_vary_accept_language() {
        let resp = h(&[("vary", "accept-encoding"), ("content-language", "en")]);
        let v = Variant::of(&h(&[("accept-encoding", "gzip")]), &resp, &[]);
        assert_eq!(v.fields().len(), 1);
    }
}
