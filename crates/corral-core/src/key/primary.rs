//! The primary key as a type: [`Key`] (owned) and [`KeyRef`] (borrowed), which alone know the
//! key's encoding.
//!
//! # Encoding
//! `class|host|path?query`: the method class and scheme as one tag (`G` for GET over http,
//! `Gs` over https), the lower-cased host, then the path and the normalised query. The string
//! itself is what Redis keys, entry records and peer fill requests carry, byte for byte, so it
//! never changes shape; everything else reads its parts through these methods. Hosts never
//! contain `|` (`crate::target::normalize_host` admits none), so the first two `|` are always
//! the separators.

use std::fmt;
use std::sync::Arc;

use super::{MethodClass, Scheme, UrlTarget};

/// A primary key, owned. Cloning it is one reference-count increment: the gateway holds it
/// across the phases of a request and in its coalescing table, while the store keeps its own
/// copy inside each [`crate::Entry`]'s allocation (no extra allocation per entry).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(Arc<str>);

/// A primary key, borrowed: from a [`Key`], or from the copy an [`crate::Entry`] holds.
/// `Copy`, and its parts borrow from the string, not from the view.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyRef<'a>(&'a str);

impl Key {
    /// Builds a key from its encoded form, as [`super::primary_key`] does, without checking.
    pub(super) fn from_encoded(encoded: String) -> Key {
        Key(Arc::from(encoded))
    }

    /// A key read back from Redis, an entry record or a peer: `None` unless it has the shape
    /// [`super::primary_key`] gives (a known class tag, a host field, a path and query).
    pub fn parse(encoded: &str) -> Option<Key> {
        KeyRef::parse(encoded).map(KeyRef::to_key)
    }

    /// The borrowed view, whose parts outlive the call.
    #[inline]
    pub fn view(&self) -> KeyRef<'_> {
        KeyRef(&self.0)
    }

    /// The encoded string: what Redis keys, entry records and peer requests carry.
    #[inline]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The host it was keyed under (lower-cased, with a non-default port).
    pub fn host(&self) -> &str {
        self.view().host()
    }

    /// The path and normalised query, as keyed (what is requested upstream).
    pub fn path_and_query(&self) -> &str {
        self.view().path_and_query()
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.view().path()
    }

    /// The `host|path?query` form URL purge marks are raised under (see [`KeyRef::target`]).
    pub fn target(&self) -> &str {
        self.view().target()
    }

    /// The scheme the request arrived by.
    pub fn scheme(&self) -> Scheme {
        self.view().scheme()
    }
}

impl<'a> KeyRef<'a> {
    /// Views an encoded key, checking its shape as [`Key::parse`] does.
    pub fn parse(encoded: &'a str) -> Option<KeyRef<'a>> {
        let (tag, rest) = encoded.split_once('|')?;
        let (_host, _path_and_query) = rest.split_once('|')?;
        parse_tag(tag)?;
        Some(KeyRef(encoded))
    }

    /// Views a string the crate itself encoded as a key (an entry's copy of its key).
    pub(crate) fn trusted(encoded: &'a str) -> KeyRef<'a> {
        debug_assert!(KeyRef::parse(encoded).is_some(), "not a key: {encoded:?}");
        KeyRef(encoded)
    }

    /// An owned copy.
    pub fn to_key(self) -> Key {
        Key(Arc::from(self.0))
    }

    /// The encoded string: what Redis keys, entry records and peer requests carry.
    #[inline]
    pub fn as_str(self) -> &'a str {
        self.0
    }

    /// The tag field and the rest (`host|path?query`). A key that lost its separators (never
    /// made by this module) reads as an empty host and path.
    fn split(self) -> (&'a str, &'a str) {
        self.0.split_once('|').unwrap_or(("", ""))
    }

    /// The host it was keyed under (lower-cased, with a non-default port).
    pub fn host(self) -> &'a str {
        self.target().split_once('|').map_or("", |(host, _)| host)
    }

    /// The path and normalised query, as keyed (what is requested upstream).
    pub fn path_and_query(self) -> &'a str {
        self.target().split_once('|').map_or("", |(_, pq)| pq)
    }

    /// The path without the query, for prefix purges.
    pub fn path(self) -> &'a str {
        let pq = self.path_and_query();
        pq.split_once('?').map_or(pq, |(path, _)| path)
    }

    /// The key without its class and scheme: `host|path?query`, the form URL purge marks are
    /// raised under, the same for both schemes (a [`UrlTarget`] for one host has it).
    pub fn target(self) -> &'a str {
        self.split().1
    }

    /// Whether a purge of `target` covers this key: the same path and query on this host, or
    /// on every host.
    pub fn is_covered_by(self, target: &UrlTarget) -> bool {
        target.as_str() == self.target() || target.as_str() == self.path_and_query()
    }

    /// The method class whose responses it stores.
    pub fn class(self) -> MethodClass {
        parse_tag(self.split().0).map_or(MethodClass::Get, |(class, _)| class)
    }

    /// The scheme the request arrived by.
    pub fn scheme(self) -> Scheme {
        parse_tag(self.split().0).map_or(Scheme::Http, |(_, scheme)| scheme)
    }
}

/// The class and scheme a tag field names (see [`Scheme::push_tag`]).
fn parse_tag(tag: &str) -> Option<(MethodClass, Scheme)> {
    match tag {
        "G" => Some((MethodClass::Get, Scheme::Http)),
        "Gs" => Some((MethodClass::Get, Scheme::Https)),
        _ => None,
    }
}

impl<'a> From<&'a Key> for KeyRef<'a> {
    fn from(key: &'a Key) -> KeyRef<'a> {
        key.view()
    }
}

impl PartialEq<KeyRef<'_>> for Key {
    fn eq(&self, other: &KeyRef<'_>) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<Key> for KeyRef<'_> {
    fn eq(&self, other: &Key) -> bool {
        self.as_str() == other.as_str()
    }
}

/// For humans: `host/path?query` (the scheme is left out, as logs always showed it).
impl fmt::Display for KeyRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.host(), self.path_and_query())
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.view().fmt(f)
    }
}

/// The encoded form, so that a key in a debug dump is the key Redis holds.
impl fmt::Debug for KeyRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0, f)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{primary_key, QueryPolicy};
    use super::*;
    use proptest::prelude::*;

    fn key(scheme: Scheme, host: &str, path: &str, query: Option<&str>) -> Key {
        let policy = QueryPolicy::default();
        primary_key(MethodClass::Get, scheme, host, path, query, &policy)
    }

    #[test]
    fn a_key_names_its_parts() {
        let k = key(
            Scheme::Https,
            "Shop.Example:8443",
            "/p/a|b",
            Some("y=2&x=1"),
        );
        assert_eq!(
            k.as_str(),
            "Gs|shop.example:8443|/p/a|b?x=1&y=2",
            "the wire form"
        );
        assert_eq!(k.host(), "shop.example:8443");
        assert_eq!(
            k.path_and_query(),
            "/p/a|b?x=1&y=2",
            "a `|` in the path stays in it"
        );
        assert_eq!(k.path(), "/p/a|b");
        assert_eq!(k.target(), "shop.example:8443|/p/a|b?x=1&y=2");
        assert_eq!(
            (k.view().class(), k.scheme()),
            (MethodClass::Get, Scheme::Https)
        );
        assert_eq!(k.to_string(), "shop.example:8443/p/a|b?x=1&y=2");
        assert_eq!(format!("{k:?}"), "\"Gs|shop.example:8443|/p/a|b?x=1&y=2\"");
    }

    #[test]
    fn parse_refuses_what_no_request_is_keyed_as() {
        for not_a_key in ["", "G", "G|h", "X|h|/a", "g|h|/a", "GS|h|/a", "|h|/a", "/a"] {
            assert_eq!(Key::parse(not_a_key), None, "{not_a_key:?}");
        }
        for key in ["G|h|/a", "Gs|h|/a?b", "G|h|", "G||/"] {
            assert_eq!(
                Key::parse(key).map(|k| k.as_str().to_owned()),
                Some(key.into())
            );
        }
    }

    #[test]
    fn a_view_and_its_key_agree() {
        let k = key(Scheme::Http, "h", "/a", Some("q"));
        let v = KeyRef::parse(k.as_str()).unwrap();
        assert_eq!(v, k);
        assert_eq!(v.to_key(), k);
        assert_eq!(KeyRef::from(&k), v);
    }

    proptest! {
        /// Whatever the host, path and query, the key gives back each part as it was keyed,
        /// and parsing its string gives the same key and the same parts.
        #[test]
        fn parts_round_trip_through_the_wire_form(
            host in "[A-Za-z0-9][A-Za-z0-9.-]{0,20}(:[0-9]{1,5})?",
            path in "/[!-~&&[^?]]{0,40}",
            query in proptest::option::of("[!-~]{0,30}"),
            https in any::<bool>(),
        ) {
            let scheme = if https { Scheme::Https } else { Scheme::Http };
            let k = key(scheme, &host, &path, query.as_deref());
            let q = query.as_deref().map(|q| QueryPolicy::default().normalize(q));
            let pq = match q.as_deref() {
                Some(q) if !q.is_empty() => format!("{path}?{q}"),
                _ => path.clone(),
            };
            let host = host.to_ascii_lowercase();
            let back = Key::parse(k.as_str()).expect("a built key parses");
            prop_assert_eq!(&back, &k);
            for k in [&k, &back] {
                prop_assert_eq!(k.host(), host.as_str());
                prop_assert_eq!(k.path_and_query(), pq.as_str());
                prop_assert_eq!(k.path(), path.as_str());
                prop_assert_eq!(k.target(), format!("{host}|{pq}"));
                prop_assert_eq!(k.scheme(), scheme);
                prop_assert_eq!(k.to_string(), format!("{host}{pq}"));
            }
        }

        /// A URL purge of a request's URL, absolute or a bare path, covers its key under
        /// either scheme, and names it among the keys it covers on that host.
        #[test]
        fn a_url_target_covers_the_key_of_its_url(
            host in "[a-z][a-z0-9]{0,10}(\\.[a-z]{2,3})?",
            path in "(/[a-z0-9_|~-]{1,8}){0,4}/?",
            query in proptest::option::of("[a-z]{1,3}=[a-z0-9]{0,3}(&[a-z]{1,3}=[a-z0-9]{0,3}){0,3}"),
        ) {
            let path = if path.is_empty() { "/".to_owned() } else { path };
            let pq = match &query { Some(q) => format!("{path}?{q}"), None => path.clone() };
            let absolute = UrlTarget::parse(&format!("http://{host}{pq}")).unwrap();
            let bare = UrlTarget::parse(&pq).unwrap();
            prop_assert_eq!(absolute.host(), Some(host.as_str()));
            prop_assert_eq!(bare.host(), None);
            for scheme in Scheme::ALL {
                let k = key(scheme, &host, &path, query.as_deref());
                prop_assert!(k.view().is_covered_by(&absolute) && k.view().is_covered_by(&bare));
                prop_assert!(absolute.keys_on("elsewhere").contains(&k));
                prop_assert!(bare.keys_on(&host).contains(&k));
            }
        }
    }
}
