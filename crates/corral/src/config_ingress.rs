//! The keys that decide what of a client's request is trusted, forwarded and keyed:
//! `[server] trusted_proxies`, `get_body`, `override_headers`, and per route (`[cache]` or a
//! route's `cache = { ... }`) `default_ttl_statuses`, `unkeyed_headers`,
//! `forward_override_headers`, `max_key_length`. Also what `corral check-config` prints of
//! them, so an operator sees the effective key and forwarding policy of every route.

use std::fmt::Write as _;

use corral_core::CachePolicy;
use corral_http::{ForwardingPolicy, GetBody, IngressPolicy};

use crate::config::{bad, positive, Config, ConfigError, RawCache, RawServer};
use crate::config_cache::{header_names, patterns};

/// Resolves the `[server]` keys of the ingress step.
pub fn ingress(s: &RawServer, listen_port: u16) -> Result<IngressPolicy, ConfigError> {
    let mut p = IngressPolicy {
        listen_port,
        ..IngressPolicy::default()
    };
    if let Some(list) = &s.trusted_proxies {
        p.forwarding = ForwardingPolicy {
            trusted_proxies: cidrs("server.trusted_proxies", list)?,
        };
    }
    p.get_body = match s.get_body.as_deref().unwrap_or("pass") {
        "pass" => GetBody::Pass,
        "reject" => GetBody::Reject,
        other => {
            return Err(bad(
                "server.get_body",
                other,
                "allowed: \"pass\", \"reject\"",
            ))
        }
    };
    if let Some(list) = &s.override_headers {
        p.override_headers = header_names("server.override_headers", list)?;
    }
    Ok(p)
}

/// Resolves a `[cache]` table's (or a route's) ingress-related keys into `p`.
pub fn policy(prefix: &str, c: &RawCache, p: &mut CachePolicy) -> Result<(), ConfigError> {
    let k = |name: &str| format!("{prefix}.{name}");
    if let Some(list) = &c.default_ttl_statuses {
        if let Some(s) = list
            .iter()
            .find(|s| !(200..600).contains(*s) || **s == 206 || **s == 304)
        {
            return Err(bad(
                &k("default_ttl_statuses"),
                s,
                "statuses must be final (200-599), not 206 or 304",
            ));
        }
        p.default_ttl_statuses = list.clone();
    }
    if let Some(list) = &c.unkeyed_headers {
        p.unkeyed_headers = patterns(&k("unkeyed_headers"), list)?
            .into_iter()
            .map(|n| corral_core::key::NamePattern::new(n.as_str().to_ascii_lowercase()))
            .collect();
    }
    if let Some(f) = c.forward_override_headers {
        p.forward_override_headers = f;
    }
    if let Some(n) = c.max_key_length {
        p.max_key_length = positive(&k("max_key_length"), n)?;
    }
    Ok(())
}

/// A list of CIDRs (or single addresses), each error naming `key[i]`.
pub(crate) fn cidrs(key: &str, list: &[String]) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, n)| {
            n.parse::<ipnet::IpNet>()
                .or_else(|_| n.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    bad(
                        &format!("{key}[{i}]"),
                        n,
                        "expected a CIDR like \"10.0.0.0/8\" or an IP address",
                    )
                })
        })
        .collect()
}

/// What `corral check-config` prints: per route, what is keyed, what is forwarded, what
/// makes a request pass.
pub fn describe(cfg: &Config) -> String {
    let mut out = String::new();
    let i = &cfg.ingress;
    let trusted = &i.forwarding.trusted_proxies;
    let _ = writeln!(
        out,
        "forwarding headers: {}",
        if trusted.is_empty() {
            "set by corral from what it saw (no trusted proxies)".to_string()
        } else {
            let list: Vec<String> = trusted.iter().map(|n| n.to_string()).collect();
            format!(
                "kept and keyed from {}; set by corral for everyone else",
                list.join(", ")
            )
        }
    );
    let _ = writeln!(
        out,
        "GET/HEAD with a body: {}",
        match i.get_body {
            GetBody::Pass => "passed uncached, body intact",
            GetBody::Reject => "refused with 400",
        }
    );
    let overrides: Vec<&str> = i.override_headers.iter().map(|h| h.as_str()).collect();
    for r in &cfg.routes {
        let p = &r.policy;
        let _ = writeln!(
            out,
            "route {:?} ({}{}) -> upstream {:?}",
            r.name,
            r.host.as_deref().unwrap_or("any host"),
            r.path_prefix,
            r.upstream
        );
        if !p.enabled {
            let _ = writeln!(out, "  cache: off (every request passes)");
            continue;
        }
        let mut key = vec!["host".to_string(), "normalised path".to_string()];
        key.push(match (&p.query.allow, p.query.ignore.is_empty()) {
            (Some(a), _) => format!(
                "query (only {})",
                a.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ")
            ),
            (None, true) => "query (sorted)".into(),
            (None, false) => format!(
                "query (sorted, without {})",
                p.query
                    .ignore
                    .iter()
                    .map(|n| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
        if !p.key_headers.is_empty() {
            let names: Vec<&str> = p.key_headers.iter().map(|h| h.as_str()).collect();
            key.push(format!("headers {}", names.join(", ")));
        }
        key.push("Vary".into());
        if !trusted.is_empty() {
            key.push("a trusted proxy's forwarding headers".into());
        }
        let _ = writeln!(out, "  key: {}", key.join(" + "));
        let mut allowed: Vec<&str> = corral_core::policy::unkeyed::DEFAULT.to_vec();
        allowed.extend(p.unkeyed_headers.iter().map(|n| n.as_str()));
        let _ = writeln!(
            out,
            "  unkeyed headers forwarded (never change an answer): {}",
            allowed.join(", ")
        );
        let _ = writeln!(
            out,
            "  any other request header: forwarded, and the response is not stored unless it varies on it"
        );
        let _ = writeln!(
            out,
            "  override headers ({}): {}",
            overrides.join(", "),
            if p.forward_override_headers {
                "forwarded; the request passes"
            } else {
                "removed"
            }
        );
        let statuses: Vec<String> = p.default_ttl_statuses.iter().map(u16::to_string).collect();
        let _ = writeln!(
            out,
            "  default_ttl: {} for statuses {}; errors stored only with the origin's explicit freshness",
            p.default_ttl
                .map_or("none".to_string(), |d| humantime::format_duration(d).to_string()),
            statuses.join(", ")
        );
        let _ = writeln!(
            out,
            "  passes: methods other than {}, bodies on GET/HEAD, keys over {} bytes",
            r.cache_methods
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join("/"),
            p.max_key_length
        );
    }
    out
}
