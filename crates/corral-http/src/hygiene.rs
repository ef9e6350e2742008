//! Proxy hygiene: what a forwarding intermediary must remove and add (RFC 9110 §7.6), and
//! whose word about a request's origin Corral takes (`X-Forwarded-*`, `Forwarded`, RFC 7239).

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

/// Headers that say where a request came from or how it reached us. From a client that is
/// not a trusted proxy every one of them is a lie we cannot check, and origins build links,
/// redirects and access decisions from them (the classic unkeyed inputs of cache poisoning),
/// so they are removed on arrival and Corral sets its own.
pub const FORWARDING_HEADERS: [&str; 14] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "x-real-ip",
    "x-client-ip",
    "x-host",
    "x-original-host",
    "front-end-https",
];

/// Of [`FORWARDING_HEADERS`], those that name the client rather than the request: they never
/// enter the key (that would make every client's copy its own).
const CLIENT_IDENTITY: [&str; 3] = ["x-forwarded-for", "x-real-ip", "x-client-ip"];

/// The request header that carries the forwarding context into the secondary key (see
/// `corral_core::entry::KEY_CONTEXT`): never accepted from a client, never sent upstream.
pub use corral_core::entry::KEY_CONTEXT;

/// Which peers may tell us where a request came from.
#[derive(Debug, Clone, Default)]
pub struct ForwardingPolicy {
    /// Proxies whose forwarding headers are kept (and keyed). Empty: nobody's.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl ForwardingPolicy {
    pub fn trusts(&self, peer: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(&peer))
    }

    /// On arrival: drops forwarding headers from an untrusted peer; from a trusted one keeps
    /// them and records those that may change the answer as the key's forwarding context.
    /// Any client-sent key context is removed first, whoever sent it.
    pub fn on_arrival(&self, headers: &mut HeaderMap, peer: IpAddr) {
        headers.remove(KEY_CONTEXT);
        if !self.trusts(peer) {
            for name in FORWARDING_HEADERS {
                headers.remove(name);
            }
            return;
        }
        let mut context = String::new();
        for name in FORWARDING_HEADERS {
            if CLIENT_IDENTITY.contains(&name) {
                continue;
            }
            for v in headers.get_all(name) {
                let value = if name == "forwarded" {
                    forwarded_without_identity(v.as_bytes())
                } else {
                    String::from_utf8_lossy(v.as_bytes())
                        .trim()
                        .to_ascii_lowercase()
                };
                if !value.is_empty() {
                    context.push_str(name);
                    context.push('=');
                    context.push_str(&value);
                    context.push(';');
                }
            }
        }
        if let Ok(v) = HeaderValue::from_str(&context) {
            if !context.is_empty() {
                headers.insert(KEY_CONTEXT, v);
            }
        }
    }

    /// Before forwarding: sets the forwarding headers from what Corral saw, appending to a
    /// trusted proxy's chain, replacing everything else.
    pub fn set_forwarded(&self, headers: &mut HeaderMap, seen: &Seen<'_>) {
        headers.remove(KEY_CONTEXT);
        let trusted = self.trusts(seen.client);
        let client = seen.client.to_string();
        let node = match seen.client {
            IpAddr::V6(_) => format!("\"[{client}]\""),
            IpAddr::V4(_) => client.clone(),
        };
        let xff = HeaderName::from_static("x-forwarded-for");
        let fwd = HeaderName::from_static("forwarded");
        let chain = |h: &HeaderMap, n: &HeaderName| {
            h.get(n)
                .and_then(|v| v.to_str().ok())
                .filter(|_| trusted)
                .map(str::to_string)
        };
        let ours = format!("for={node};host={};proto={}", seen.host, seen.proto);
        let values = [
            (
                xff.clone(),
                chain(headers, &xff).map_or(client.clone(), |p| format!("{p}, {client}")),
            ),
            (
                fwd.clone(),
                chain(headers, &fwd).map_or(ours.clone(), |p| format!("{p}, {ours}")),
            ),
        ];
        for (name, value) in values {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        }
        if trusted {
            return;
        }
        let port = seen.port.to_string();
        for (name, value) in [
            ("x-forwarded-host", seen.host),
            ("x-forwarded-proto", seen.proto),
            ("x-forwarded-port", port.as_str()),
        ] {
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.insert(HeaderName::from_static(name), v);
            }
        }
    }
}

/// What Corral itself saw of a request, for the forwarding headers it sets.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    pub client: IpAddr,
    /// The normalised host the request named.
    pub host: &'a str,
    /// The scheme of the listener it arrived on.
    pub proto: &'a str,
    /// The port of the listener it arrived on.
    pub port: u16,
}

/// A `Forwarded` value without its `for=` and `by=` parameters (which name hops, not the
/// request), lower-cased: what of it may change an answer.
fn forwarded_without_identity(v: &[u8]) -> String {
    let text = String::from_utf8_lossy(v).to_ascii_lowercase();
    let mut out: Vec<&str> = Vec::new();
    for element in text.split(',') {
        for pair in element.split(';') {
            let pair = pair.trim();
            if pair.is_empty() || pair.starts_with("for=") || pair.starts_with("by=") {
                continue;
            }
            out.push(pair);
        }
    }
    out.join(";")
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
    fn via_appends() {
        let mut h = HeaderMap::new();
        h.insert(VIA, "1.1 edge".parse().unwrap());
        add_via(&mut h, http::Version::HTTP_11);
        assert_eq!(h[VIA], "1.1 edge, 1.1 corral");
    }

    fn hostile() -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-port", "1234"),
            ("x-forwarded-prefix", "/evil"),
            ("forwarded", "for=6.6.6.6;host=evil.example;proto=https"),
            ("x-host", "evil.example"),
            ("corral-key-context", "forged"),
        ] {
            h.insert(HeaderName::from_static(n), v.parse().unwrap());
        }
        h
    }

    fn seen(client: &str) -> Seen<'static> {
        Seen {
            client: client.parse().unwrap(),
            host: "shop.example",
            proto: "http",
            port: 8080,
        }
    }

    #[test]
    fn an_untrusted_client_cannot_say_where_it_came_from() {
        let policy = ForwardingPolicy::default();
        let mut h = hostile();
        policy.on_arrival(&mut h, "203.0.113.9".parse().unwrap());
        assert!(h.is_empty(), "{h:?}");
        policy.set_forwarded(&mut h, &seen("203.0.113.9"));
        assert_eq!(h["x-forwarded-for"], "203.0.113.9");
        assert_eq!(h["x-forwarded-host"], "shop.example");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-port"], "8080");
        assert_eq!(
            h["forwarded"],
            "for=203.0.113.9;host=shop.example;proto=http"
        );
        assert!(!h.contains_key("x-forwarded-prefix"));
        assert!(!h.contains_key(KEY_CONTEXT));
    }

    #[test]
    fn a_trusted_proxy_is_kept_appended_to_and_keyed() {
        let policy = ForwardingPolicy {
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
        };
        let mut h = hostile();
        policy.on_arrival(&mut h, "10.1.2.3".parse().unwrap());
        let ctx = h[KEY_CONTEXT].to_str().unwrap().to_string();
        assert!(ctx.contains("x-forwarded-host=evil.example;"), "{ctx}");
        assert!(
            ctx.contains("forwarded=host=evil.example;proto=https;"),
            "{ctx}"
        );
        assert!(
            !ctx.contains("6.6.6.6"),
            "client identity is not keyed: {ctx}"
        );
        policy.set_forwarded(&mut h, &seen("10.1.2.3"));
        assert_eq!(h["x-forwarded-for"], "6.6.6.6, 10.1.2.3");
        assert_eq!(h["x-forwarded-host"], "evil.example");
        assert_eq!(
            h["forwarded"],
            "for=6.6.6.6;host=evil.example;proto=https, for=10.1.2.3;host=shop.example;proto=http"
        );
        assert!(
            !h.contains_key(KEY_CONTEXT),
            "the context never goes upstream"
        );
    }

    #[test]
    fn ipv6_clients_are_quoted_in_forwarded() {
        let mut h = HeaderMap::new();
        ForwardingPolicy::default().set_forwarded(&mut h, &seen("::1"));
        assert_eq!(h["forwarded"], "for=\"[::1]\";host=shop.example;proto=http");
    }
}
