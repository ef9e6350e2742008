//! Targeted cache control (RFC 9213): `CDN-Cache-Control`, `Corral-Cache-Control` and any
//! other field named in `[cache] targeted_fields`, in order of precedence.
//!
//! The first listed field that is present with a valid, non-empty value decides Corral's
//! storage and freshness *instead of* `Cache-Control` and `Expires` (§2.2). A targeted field
//! is a Structured Fields Dictionary (RFC 8941 §3.2): one that does not parse is ignored as a
//! whole, and the next field (finally `Cache-Control`) decides. Within a valid dictionary:
//!
//! * members with no value (`no-store`) or `?1` set a directive; `?0` leaves it unset;
//! * `max-age`, `s-maxage`, `stale-while-revalidate` and `stale-if-error` take an Integer;
//!   a negative one, or a value of another type, makes the directive invalid (for `max-age`
//!   and `s-maxage`: stale on arrival, as an invalid `Cache-Control` argument does);
//! * `no-cache` and `private` may name fields with a String or an Inner List of Strings or
//!   Tokens; parameters are ignored, and so are unknown members (extensions).

use http::header::{HeaderMap, HeaderName};

use crate::cache_control::{Delta, ResponseDirectives, DELTA_SECONDS_MAX};

/// `CDN-Cache-Control`: targeted at every CDN, Corral included, and forwarded to clients
/// unchanged for any CDN in front of Corral.
pub const CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");

/// Corral's own targeted field (the default name).
pub const CORRAL_CACHE_CONTROL: HeaderName = HeaderName::from_static("corral-cache-control");

/// Which targeted fields Corral obeys, and whether its own are shown to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetedFields {
    /// In order of precedence: the first present and valid one decides.
    pub fields: Vec<HeaderName>,
    /// Forward the fields that target Corral alone (every listed field but
    /// `CDN-Cache-Control`) to clients. Off by default: they are instructions to Corral.
    pub expose_own: bool,
}

impl Default for TargetedFields {
    fn default() -> Self {
        TargetedFields {
            fields: vec![CORRAL_CACHE_CONTROL, CDN_CACHE_CONTROL],
            expose_own: false,
        }
    }
}

impl TargetedFields {
    /// The listed fields that target Corral alone, removed from what clients receive unless
    /// `expose_own`.
    pub fn own(&self) -> impl Iterator<Item = &HeaderName> {
        self.fields
            .iter()
            .filter(move |f| !self.expose_own && **f != CDN_CACHE_CONTROL)
    }

    /// The directives that decide for Corral: the first targeted field present with a valid,
    /// non-empty value, else `Cache-Control` (RFC 9213 §2.2).
    pub fn directives(&self, headers: &HeaderMap) -> ResponseDirectives {
        self.decided_by(headers)
            .map(|(_, d)| d)
            .unwrap_or_else(|| ResponseDirectives::from_headers(headers))
    }

    /// The targeted field that decides, with its directives; `None` when `Cache-Control` does.
    pub fn decided_by(&self, headers: &HeaderMap) -> Option<(&HeaderName, ResponseDirectives)> {
        self.fields.iter().find_map(|name| {
            let d = parse(headers, name)?;
            Some((name, d))
        })
    }
}

/// The directives of targeted field `name` in `headers`: `None` when it is absent, empty or
/// not a valid Dictionary.
pub fn parse(headers: &HeaderMap, name: &HeaderName) -> Option<ResponseDirectives> {
    let mut joined = Vec::new();
    for v in headers.get_all(name) {
        if !joined.is_empty() {
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    let members = dictionary(&joined)?;
    if members.is_empty() {
        return None;
    }
    let mut d = ResponseDirectives {
        targeted: Some(name.clone()),
        ..Default::default()
    };
    for (key, item) in &members {
        apply(&mut d, key, item);
    }
    Some(d)
}

fn apply(d: &mut ResponseDirectives, key: &str, item: &Item) {
    let on = matches!(item, Item::Bool(true));
    match key {
        "max-age" => d.max_age = delta(item),
        "s-maxage" => d.s_maxage = delta(item),
        "stale-while-revalidate" => d.stale_while_revalidate = delta(item),
        "stale-if-error" => d.stale_if_error = delta(item),
        "no-store" => d.no_store = on,
        "public" => d.public = on,
        "must-revalidate" => d.must_revalidate = on,
        "proxy-revalidate" => d.proxy_revalidate = on,
        "must-understand" => d.must_understand = on,
        "no-transform" => d.no_transform = on,
        "immutable" => d.immutable = on,
        "no-cache" => match field_names(item) {
            Some(f) => d.no_cache_fields = f,
            None => d.no_cache = on,
        },
        "private" => match field_names(item) {
            Some(f) => d.private_fields = f,
            None => d.private = on,
        },
        _ => {} // extensions Corral does not know are ignored (§2.1)
    }
}

fn delta(item: &Item) -> Delta {
    match item {
        Item::Integer(n) if *n >= 0 => Delta::Seconds(
            u32::try_from(*n).map_or(DELTA_SECONDS_MAX, |n| n.min(DELTA_SECONDS_MAX)),
        ),
        _ => Delta::Invalid,
    }
}

fn field_names(item: &Item) -> Option<Vec<String>> {
    let names: Vec<String> = match item {
        Item::String(s) => s
            .split(',')
            .map(|f| f.trim().to_ascii_lowercase())
            .collect(),
        Item::List(items) => items
            .iter()
            .filter_map(|i| match i {
                Item::String(s) | Item::Token(s) => Some(s.trim().to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => return None,
    };
    Some(names.into_iter().filter(|n| !n.is_empty()).collect())
}

/// A Structured Fields value, as far as directives need it.
#[derive(Debug, Clone, PartialEq)]
enum Item {
    Integer(i64),
    Decimal,
    String(String),
    Token(String),
    Bytes,
    Bool(bool),
    List(Vec<Item>),
}

/// Parses a Dictionary (RFC 8941 §4.2.2); `None` on any syntax error. A key repeated later
/// overrides the earlier member, as the algorithm says.
fn dictionary(input: &[u8]) -> Option<Vec<(String, Item)>> {
    let mut p = Parser { s: input, at: 0 };
    p.skip_sp();
    let mut members: Vec<(String, Item)> = Vec::new();
    while !p.done() {
        let key = p.key()?;
        let item = if p.eat(b'=') {
            p.item_or_inner_list()?
        } else {
            p.parameters()?;
            Item::Bool(true)
        };
        members.retain(|(k, _)| *k != key);
        members.push((key, item));
        p.skip_ows();
        if p.done() {
            break;
        }
        if !p.eat(b',') {
            return None;
        }
        p.skip_ows();
        if p.done() {
            return None; // a trailing comma
        }
    }
    Some(members)
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn done(&self) -> bool {
        // Trailing spaces are discarded before parsing (§4.2).
        self.s[self.at..].iter().all(|&b| b == b' ')
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        let hit = self.peek() == Some(b);
        if hit {
            self.at += 1;
        }
        hit
    }

    fn skip_sp(&mut self) {
        while self.peek() == Some(b' ') {
            self.at += 1;
        }
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.at += 1;
        }
    }

    fn key(&mut self) -> Option<String> {
        let start = self.at;
        match self.peek()? {
            b'a'..=b'z' | b'*' => self.at += 1,
            _ => return None,
        }
        while matches!(
            self.peek(),
            Some(b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' | b'*')
        ) {
            self.at += 1;
        }
        Some(String::from_utf8_lossy(&self.s[start..self.at]).into_owned())
    }

    fn item_or_inner_list(&mut self) -> Option<Item> {
        if !self.eat(b'(') {
            let item = self.bare_item()?;
            self.parameters()?;
            return Some(item);
        }
        let mut items = Vec::new();
        loop {
            self.skip_sp();
            if self.eat(b')') {
                self.parameters()?;
                return Some(Item::List(items));
            }
            items.push(self.bare_item()?);
            self.parameters()?;
            if !matches!(self.peek(), Some(b' ' | b')')) {
                return None;
            }
        }
    }

    fn parameters(&mut self) -> Option<()> {
        while self.eat(b';') {
            self.skip_sp();
            self.key()?;
            if self.eat(b'=') {
                self.bare_item()?;
            }
        }
        Some(())
    }

    fn bare_item(&mut self) -> Option<Item> {
        match self.peek()? {
            b'-' | b'0'..=b'9' => self.number(),
            b'"' => self.string(),
            b'?' => {
                self.at += 1;
                let v = match self.peek()? {
                    b'1' => true,
                    b'0' => false,
                    _ => return None,
                };
                self.at += 1;
                Some(Item::Bool(v))
            }
            b':' => {
                self.at += 1;
                let len = self.s[self.at..].iter().position(|&b| b == b':')?;
                let body = &self.s[self.at..self.at + len];
                let base64 = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=');
                body.iter().all(base64).then_some(())?;
                self.at += len + 1;
                Some(Item::Bytes)
            }
            b'a'..=b'z' | b'A'..=b'Z' | b'*' => Some(Item::Token(self.token())),
            _ => None,
        }
    }

    fn token(&mut self) -> String {
        let start = self.at;
        self.at += 1;
        while let Some(b) = self.peek() {
            let tchar = b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&b);
            if !tchar {
                break;
            }
            self.at += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.at]).into_owned()
    }

    fn string(&mut self) -> Option<Item> {
        self.at += 1;
        let mut out = String::new();
        loop {
            let b = self.peek()?;
            self.at += 1;
            match b {
                b'"' => return Some(Item::String(out)),
                b'\\' => {
                    let e = self.peek()?;
                    if e != b'"' && e != b'\\' {
                        return None;
                    }
                    self.at += 1;
                    out.push(e as char);
                }
                0x20..=0x7e => out.push(b as char),
                _ => return None,
            }
        }
    }

    /// Integer (up to 15 digits) or Decimal (up to 12 integer and 3 fraction digits).
    fn number(&mut self) -> Option<Item> {
        let negative = self.eat(b'-');
        let start = self.at;
        let mut dot = None;
        while let Some(b) = self.peek() {
            match b {
                b'0'..=b'9' => {}
                b'.' if dot.is_none() => dot = Some(self.at - start),
                _ => break,
            }
            self.at += 1;
        }
        let text = std::str::from_utf8(&self.s[start..self.at]).ok()?;
        if text.is_empty() || !text.as_bytes()[0].is_ascii_digit() {
            return None;
        }
        match dot {
            None if text.len() <= 15 => {
                let n: i64 = text.parse().ok()?;
                Some(Item::Integer(if negative { -n } else { n }))
            }
            Some(i) if i <= 12 && (1..=3).contains(&(text.len() - i - 1)) => Some(Item::Decimal),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionaries_parse_as_rfc_8941_says() {
        let d = dictionary(b"a=1, b;x=?0, c=(\"x\" y);p, d=\"q\\\"\", e=1.5, f=:AQ==:").unwrap();
        let keys: Vec<&str> = d.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["a", "b", "c", "d", "e", "f"]);
        assert_eq!(d[0].1, Item::Integer(1));
        assert_eq!(d[1].1, Item::Bool(true));
        assert_eq!(
            d[2].1,
            Item::List(vec![Item::String("x".into()), Item::Token("y".into())])
        );
        assert_eq!(d[3].1, Item::String("q\"".into()));
        for bad in [
            &b"a=1,"[..],
            b"A=1",
            b"a=1 b=2",
            b"a=\"open",
            b"a=1234567890123456",
            b"a=1.2345",
            b"a=?2",
            b"a=(1 2",
            b",a",
        ] {
            assert!(
                dictionary(bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            dictionary(b"a=1, a=2").unwrap(),
            vec![("a".into(), Item::Integer(2))]
        );
    }
}
