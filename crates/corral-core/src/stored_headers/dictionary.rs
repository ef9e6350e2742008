//! Header values that recur across responses (`content-type: application/json`,
//! `cache-control: public, max-age=60`), stored once per process and referred to by a 2-byte
//! number.
//!
//! Append-only and bounded: at most [`CAPACITY`] values of at most [`MAX_LEN`] bytes (so at
//! most 512 KiB, whatever the origins send); once full, new values are simply stored inline.
//! Reads are lock-free (one atomic load), so replaying a response never contends with other
//! cores; only interning a value not seen before takes a lock.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use bytes::Bytes;
use http::HeaderValue;

/// The most values kept.
pub(super) const CAPACITY: usize = 4096;
/// The longest value kept.
pub(super) const MAX_LEN: usize = 128;

static VALUES: [OnceLock<HeaderValue>; CAPACITY] = [const { OnceLock::new() }; CAPACITY];
static INDEX: OnceLock<Mutex<HashMap<&'static [u8], u16>>> = OnceLock::new();

/// The number of `value`, interning it if there is room. `None` when it is too long or the
/// dictionary is full.
pub(super) fn intern(value: &HeaderValue) -> Option<u16> {
    let bytes = value.as_bytes();
    if bytes.len() > MAX_LEN {
        return None;
    }
    let mut index = INDEX
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(&id) = index.get(bytes) {
        return Some(id);
    }
    let id = index.len();
    if id >= CAPACITY {
        return None;
    }
    // Leaked on purpose: the dictionary lives as long as the process and is bounded, and a
    // static `Bytes` is cloned without touching a shared reference count.
    let stored: &'static [u8] = Box::leak(Box::from(bytes));
    let value = HeaderValue::from_maybe_shared(Bytes::from_static(stored)).ok()?;
    VALUES[id].set(value).ok()?;
    index.insert(stored, id as u16);
    Some(id as u16)
}

/// The value numbered `id`; `None` for a number never handed out.
pub(super) fn get(id: u16) -> Option<HeaderValue> {
    VALUES.get(usize::from(id))?.get().cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_value_same_number() {
        let a = intern(&HeaderValue::from_static("application/x-dictionary-test")).unwrap();
        let b = intern(&HeaderValue::from_static("application/x-dictionary-test")).unwrap();
        assert_eq!(a, b);
        assert_eq!(get(a).unwrap(), "application/x-dictionary-test");
        let long = HeaderValue::from_str(&"x".repeat(MAX_LEN + 1)).unwrap();
        assert_eq!(intern(&long), None);
    }
}
