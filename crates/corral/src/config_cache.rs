//! `[cache]` (and a route's `cache = { ... }` overrides) resolved into a `CachePolicy`, and the
//! tag headers into a `TagPolicy`.

use std::time::Duration;

use corral_core::key::NamePattern;
use corral_core::tags::TagPolicy;
use corral_core::CachePolicy;

use crate::config::{bad, parse_duration, parse_size, positive, ConfigError, RawCache};

/// Resolves a `[cache]` table (or a route's overrides) over `base`.
pub(crate) fn policy(
    prefix: &str,
    c: &RawCache,
    base: &CachePolicy,
) -> Result<CachePolicy, ConfigError> {
    let k = |name: &str| format!("{prefix}.{name}");
    let d = |name: &str, v: &Option<String>, default: Duration| -> Result<Duration, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) => parse_duration(&k(name), s),
        }
    };
    let mut p = base.clone();
    p.enabled = c.enabled.unwrap_or(base.enabled);
    if let Some(s) = &c.max_object_size {
        p.max_object_size = parse_size(&k("max_object_size"), s)? as usize;
    }
    p.max_ttl = d("max_ttl", &c.max_ttl, base.max_ttl)?;
    if p.max_ttl.is_zero() {
        return Err(bad(
            &k("max_ttl"),
            c.max_ttl.as_deref().unwrap_or(""),
            "must be more than 0s",
        ));
    }
    if let Some(s) = &c.default_ttl {
        let t = parse_duration(&k("default_ttl"), s)?;
        p.default_ttl = (!t.is_zero()).then_some(t);
    }
    p.stale_while_revalidate = d(
        "stale_while_revalidate",
        &c.stale_while_revalidate,
        base.stale_while_revalidate,
    )?;
    p.stale_if_error = d("stale_if_error", &c.stale_if_error, base.stale_if_error)?;
    p.keep = d("keep", &c.keep, base.keep)?;
    p.heuristic_max = d("heuristic_max", &c.heuristic_max, base.heuristic_max)?;
    if let Some(f) = c.heuristic_fraction {
        if !(0.0..=1.0).contains(&f) {
            return Err(bad(
                &k("heuristic_fraction"),
                f,
                "must be between 0.0 and 1.0",
            ));
        }
        p.heuristic_fraction = f;
    }
    if let Some(q) = &c.ignore_query {
        p.query.ignore = patterns(&k("ignore_query"), q)?;
    }
    if let Some(q) = &c.allow_query {
        p.query.allow = Some(patterns(&k("allow_query"), q)?);
    }
    if let Some(h) = &c.key_headers {
        p.key_headers = header_names(&k("key_headers"), h)?;
    }
    p.strip_set_cookie = c.strip_set_cookie.unwrap_or(base.strip_set_cookie);
    if let Some(ignore) = c.ignore_client_no_cache {
        p.honor_request_no_cache = !ignore;
    }
    if let Some(s) = &c.cacheable_statuses {
        if let Some(bad_status) = s
            .iter()
            .find(|s| !(200..600).contains(*s) || **s == 206 || **s == 304)
        {
            return Err(bad(
                &k("cacheable_statuses"),
                bad_status,
                "statuses must be final (200-599), not 206 or 304",
            ));
        }
        p.cacheable_statuses = Some(s.clone());
    }
    if let Some(t) = &c.cacheable_content_types {
        p.cacheable_content_types = Some(t.clone());
    }
    if let Some(v) = c.max_variants {
        p.max_variants = positive(&k("max_variants"), v)?;
    }
    crate::config_ingress::policy(prefix, c, &mut p)?;
    Ok(p)
}

pub(crate) fn tag_policy(c: &RawCache) -> Result<TagPolicy, ConfigError> {
    let mut t = TagPolicy::default();
    if let Some(h) = &c.tag_headers {
        t.space_separated = header_names("cache.tag_headers", h)?;
    }
    if let Some(h) = &c.tag_headers_comma {
        t.comma_separated = header_names("cache.tag_headers_comma", h)?;
    }
    if let Some(n) = c.max_tags {
        t.max_tags = positive("cache.max_tags", n)?;
    }
    if let Some(n) = c.max_tag_length {
        t.max_tag_len = positive("cache.max_tag_length", n)?;
    }
    t.expose = c.expose_tags.unwrap_or(false);
    Ok(t)
}

pub(crate) fn patterns(key: &str, list: &[String]) -> Result<Vec<NamePattern>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, p)| {
            if p.is_empty() || p.contains(['&', '=']) {
                Err(bad(
                    &format!("{key}[{i}]"),
                    p,
                    "expected a parameter name, '*' as wildcard",
                ))
            } else {
                Ok(NamePattern::new(p.clone()))
            }
        })
        .collect()
}

/// A list of header names, each error naming `key[i]`.
pub(crate) fn header_names(
    key: &str,
    list: &[String],
) -> Result<Vec<http::HeaderName>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, n)| {
            http::HeaderName::from_bytes(n.as_bytes())
                .map_err(|_| bad(&format!("{key}[{i}]"), n, "expected a header name"))
        })
        .collect()
}
