//! Keys: anything hashable with a stable text form, so an invalidation can name it on the wire.

use std::hash::Hash;

/// A cache key. Its text form ([`Key::encode`]) is what travels between pods in an
/// invalidation (`/{namespace}/{key}`), and [`Key::decode`] turns it back into a key on the
/// receiving side. Implemented for `String` and the integer types; implement it for your own
/// key types (a tuple of ids joined with `:` is typical).
pub trait Key: Hash + Eq + Clone + Send + Sync + 'static {
    /// The key's text form. Must round-trip through [`Key::decode`].
    fn encode(&self) -> String;
    /// Parses a text form made by [`Key::encode`]; `None` if it is not one.
    fn decode(text: &str) -> Option<Self>;
}

impl Key for String {
    fn encode(&self) -> String {
        self.clone()
    }
    fn decode(text: &str) -> Option<Self> {
        Some(text.to_string())
    }
}

macro_rules! int_key {
    ($($t:ty),*) => {$(
        impl Key for $t {
            fn encode(&self) -> String {
                self.to_string()
            }
            fn decode(text: &str) -> Option<Self> {
                text.parse().ok()
            }
        }
    )*};
}
int_key!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize);

/// Percent-encodes a key's text form for a path segment: everything but `A-Z a-z 0-9 - . _ ~`.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reverses [`escape`]; `None` on a malformed escape or invalid UTF-8.
pub(crate) fn unescape(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn escaping_round_trips(s in ".*") {
            let e = escape(&s);
            prop_assert!(!e.contains('/') && !e.contains('?') && !e.chars().any(char::is_control));
            prop_assert_eq!(unescape(&e), Some(s));
        }
    }

    #[test]
    fn integer_keys_round_trip() {
        assert_eq!(u64::decode(&42u64.encode()), Some(42));
        assert_eq!(i32::decode("x"), None);
        assert_eq!(unescape("%zz"), None);
        assert_eq!(unescape("%4"), None);
    }
}
