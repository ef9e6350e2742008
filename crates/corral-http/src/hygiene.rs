//! Proxy hygiene: what a forwarding intermediary must remove and add (RFC 9110 §7.6).

use std::net::IpAddr;

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE, VIA,
};

/// Hop-by-hop fields, removed on every hop whether or not `Connection` names them.
const HOP_BY_HOP: [&str; 4] = [
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Removes hop-by-hop headers: the fixed set and every field named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("").split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in [CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE] {
        headers.remove(n);
    }
    for n in HOP_BY_HOP {
        headers.remove(n);
    }
}

/// Appends this hop to `Via` (RFC 9110 §7.6.3).
pub fn add_via(headers: &mut HeaderMap, version: http::Version) {
    let proto = match version {
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        _ => "1.1",
    };
    let hop = format!("{proto} corral");
    let value = match headers.get(VIA).and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {hop}"),
        None => hop,
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(VIA, v);
    }
}

/// Appends the client to `X-Forwarded-For` and sets `X-Forwarded-Proto` if absent.
pub fn add_forwarded(headers: &mut HeaderMap, client: IpAddr) {
    let xff = HeaderName::from_static("x-forwarded-for");
    let value = match headers.get(&xff).and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {client}"),
        None => client.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(xff, v);
    }
    let proto = HeaderName::from_static("x-forwarded-proto");
    if !headers.contains_key(&proto) {
        headers.insert(proto, HeaderValue::from_static("http"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_named_and_fixed() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, "close, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn via_and_xff_append() {
        let mut h = HeaderMap::new();
        h.insert(VIA, "1.1 edge".parse().unwrap());
        h.insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
        add_via(&mut h, http::Version::HTTP_11);
        add_forwarded(&mut h, "127.0.0.1".parse().unwrap());
        assert_eq!(h[VIA], "1.1 edge, 1.1 corral");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
    }
}
